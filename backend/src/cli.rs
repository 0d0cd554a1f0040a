//! The `borscht` command line.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::model::tokenizer::{Bpe, TextTokenizer};
use crate::server::{self, ServerConfig};
use anyhow::Context;

#[derive(Debug, Parser)]
#[command(name = "borscht", version, about = "Recognise a dish and its nutrition from a photo (RUDOLPH)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the web app, the WebSocket protocol (/ws) and the HTTP API.
    Serve(ServeArgs),
    /// Tokenize text lines from stdin with a YouTokenToMe BPE model; one JSON object per line.
    Tokenize(TokenizeArgs),
    /// Learn a BPE vocabulary from a text corpus and write it in YouTokenToMe's format.
    TokenizerTrain(TokenizerTrainArgs),
}

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

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BORSCHT_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Folder holding the Trunk-built web app (index.html, wasm, static files).
    #[arg(long, env = "BORSCHT_WEB_DIR", default_value = "frontend/dist")]
    pub web_dir: PathBuf,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        init_tracing();
        match self.command {
            Command::Serve(args) => {
                let runtime = tokio::runtime::Runtime::new()?;
                runtime.block_on(server::serve(ServerConfig { addr: args.addr, web_dir: args.web_dir }))
            }
            Command::Tokenize(args) => tokenize(args),
            Command::TokenizerTrain(args) => tokenizer_train(args),
        }
    }
}

fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
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

fn tokenizer_train(args: TokenizerTrainArgs) -> anyhow::Result<()> {
    let corpus = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("cannot read corpus {}", args.corpus.display()))?;
    let bpe = Bpe::train(&corpus, args.vocab_size)?;
    bpe.save(&args.out)?;
    eprintln!("wrote {} ({} ids)", args.out.display(), bpe.vocab_size());
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BORSCHT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    // A second init (e.g. in tests) is harmless; ignore its error.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}
