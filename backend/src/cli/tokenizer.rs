//! `borscht tokenize` and `borscht tokenizer-train`.

use anyhow::Context;
use std::path::PathBuf;

use borscht_model::tokenizer::{Bpe, TextTokenizer};

#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// The YTTM `bpe.model` file.
    #[arg(long)]
    pub bpe: PathBuf,
    /// Also print the model input: [BOS] ids [EOS], zero-padded or cut to this length.
    #[arg(long)]
    pub seq_len: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct TokenizerTrainArgs {
    /// Text corpus, one sentence per line.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Vocabulary size, special ids and characters included.
    #[arg(long)]
    pub vocab_size: usize,
    /// Where to write the model.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let tokenizer = TextTokenizer::load(&args.bpe)?;
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for (number, line) in stdin.lines().enumerate() {
        let line = line.with_context(|| format!("stdin line {} is not UTF-8 text", number + 1))?;
        let raw = tokenizer.bpe().encode(&line);
        let mut record = serde_json::json!({ "raw": raw, "decoded": tokenizer.decode_text(&raw)? });
        if let Some(seq_len) = args.seq_len {
            record["encoded"] = tokenizer.encode_text(&line, seq_len).into();
        }
        writeln!(stdout, "{record}")?;
    }
    stdout.flush()?;
    Ok(())
}

pub fn train(args: TokenizerTrainArgs) -> anyhow::Result<()> {
    let corpus = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("cannot read corpus {}", args.corpus.display()))?;
    let bpe = Bpe::train(&corpus, args.vocab_size)?;
    bpe.save(&args.out)?;
    eprintln!("wrote {} ({} ids)", args.out.display(), bpe.vocab_size());
    Ok(())
}
