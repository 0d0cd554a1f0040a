//! The tokenizer against youtokentome 1.0.6 (fixtures: scripts/fixtures/tokenizer_fixtures.py).

use borscht::model::tokenizer::{Bpe, TextTokenizer};
use serde::Deserialize;
use std::path::{Path, PathBuf};

const SEQ_LEN: usize = 64;
const VOCAB_SIZE: usize = 700;

#[derive(Debug, Deserialize)]
struct Expected {
    raw: Vec<u32>,
    encoded: Vec<u32>,
    decoded: String,
    decoded_all: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn cases() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap()).unwrap()
}

fn expected(name: &str) -> Vec<Expected> {
    std::fs::read_to_string(fixtures().join(name)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every case must give youtokentome's ids and texts, to the last id.
fn assert_matches_youtokentome(model: &str, jsonl: &str) {
    let tokenizer = TextTokenizer::load(fixtures().join(model)).unwrap();
    let cases = cases();
    let expected = expected(jsonl);
    assert_eq!(cases.len(), expected.len());
    assert!(cases.len() >= 250, "fixtures should hold hundreds of cases");
    let mut mismatches = Vec::new();
    for (text, want) in cases.iter().zip(&expected) {
        let raw = tokenizer.bpe().encode(text);
        let encoded = tokenizer.encode_text(text, SEQ_LEN);
        let decoded = tokenizer.decode_text(&encoded).unwrap();
        let decoded_all = tokenizer.bpe().decode(&raw, &[]).unwrap();
        if raw != want.raw || encoded != want.encoded || decoded != want.decoded || decoded_all != want.decoded_all {
            mismatches.push(format!("{text:?}\n  ours {raw:?} {decoded:?}\n  yttm {:?} {:?}", want.raw, want.decoded));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} cases differ:\n{}", mismatches.len(), cases.len(), mismatches.join("\n"));
}

#[test]
fn encodes_and_decodes_like_youtokentome() {
    assert_matches_youtokentome("reference.model", "reference.jsonl");
}

#[test]
fn the_fixtures_exercise_unknown_characters_and_truncation() {
    let expected = expected("reference.jsonl");
    assert!(expected.iter().any(|e| e.raw.contains(&TextTokenizer::UNK)), "some case must hit UNK");
    assert!(expected.iter().any(|e| e.raw.len() + 2 > SEQ_LEN), "some case must be cut to the sequence length");
    assert!(expected.iter().any(|e| e.raw.is_empty()), "some case must encode to nothing");
    assert!(expected.iter().any(|e| e.decoded_all.contains("<UNK>")));
}

#[test]
fn our_trained_vocabulary_is_reproducible_and_encodes_like_youtokentome() {
    let corpus = std::fs::read_to_string(fixtures().join("corpus.txt")).unwrap();
    let trained = Bpe::train(&corpus, VOCAB_SIZE).unwrap();
    let committed = std::fs::read_to_string(fixtures().join("ours.model")).unwrap();
    assert_eq!(trained.to_model_string(), committed, "training must be deterministic");
    assert_eq!(trained.vocab_size(), VOCAB_SIZE);
    // youtokentome loaded our file and produced these; we must agree with it.
    assert_matches_youtokentome("ours.model", "ours.jsonl");
}

#[test]
fn cli_tokenize_prints_json_lines() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_borscht"))
        .args(["tokenize", "--bpe"])
        .arg(fixtures().join("reference.model"))
        .args(["--seq-len", "64"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all("борщ со сметаной\n\n".as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let tokenizer = TextTokenizer::load(fixtures().join("reference.model")).unwrap();
    assert_eq!(lines[0]["raw"], serde_json::json!(tokenizer.bpe().encode("борщ со сметаной")));
    assert_eq!(lines[0]["encoded"].as_array().unwrap().len(), 64);
    assert_eq!(lines[0]["decoded"], "борщ со сметаной");
    assert_eq!(lines[1]["raw"], serde_json::json!([]));
}

#[test]
fn cli_reports_a_malformed_model_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bpe.model");
    std::fs::write(&bad, "1 1\n9601 4\n4 4 oops\n1 0 2 3\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_borscht"))
        .args(["tokenize", "--bpe"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3") && stderr.contains("bpe.model"), "{stderr}");
}
