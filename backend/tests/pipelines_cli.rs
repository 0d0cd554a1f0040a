//! `borscht caption / classify / generate / texts / bench` through the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_borscht")).args(args).env_remove("BORSCHT_MODEL").output().unwrap()
}

fn json(output: Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn caption_answers_with_ranked_candidates_the_same_for_the_same_seed() {
    let (m, photo) = (model(), model().join("photo.png"));
    let args = [
        "caption",
        "--model",
        p(&m),
        "--image",
        p(&photo),
        "--n",
        "8",
        "--top-k",
        "50",
        "--top-p",
        "0.95",
        "--temperature",
        "1",
        "--seed",
        "3",
        "--json",
    ];
    let first = json(run(&args));
    let candidates = first["candidates"].as_array().unwrap();
    assert!(!candidates.is_empty());
    assert!(candidates
        .iter()
        .all(|c| c["perplexity"].as_f64().unwrap() > 0.0 && c["text"].as_str().unwrap().starts_with("блюдо:")));
    let perplexities: Vec<f64> = candidates.iter().map(|c| c["perplexity"].as_f64().unwrap()).collect();
    assert!(perplexities.windows(2).all(|w| w[0] <= w[1]), "best fitting first: {perplexities:?}");
    assert_eq!(first, json(run(&args)), "same seed, same answer");
    let mut other_seed = args;
    other_seed[other_seed.iter().position(|a| *a == "3").unwrap()] = "4";
    assert_ne!(first["candidates"], json(run(&other_seed))["candidates"], "another seed samples other captions");
}

#[test]
fn classify_generate_and_texts() {
    let (m, photo) = (model(), model().join("photo.png"));
    let result =
        json(run(&["classify", "--model", p(&m), "--image", p(&photo), "--classes", "борщ, пицца,шаурма", "--json"]));
    assert_eq!(result["classes"].as_array().unwrap().len(), 3);
    let scores: Vec<f64> = result["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    // The perplexities are the ones scored: zs_clf's softmax of them, normalised, gives
    // the scores, and the answer has the lowest.
    let ppl: Vec<f64> = result["perplexities"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    let norm = ppl.iter().map(|p| p * p).sum::<f64>().sqrt();
    let exps: Vec<f64> = ppl.iter().map(|p| (p / norm).exp()).collect();
    let total: f64 = exps.iter().sum();
    for (score, e) in scores.iter().zip(&exps) {
        assert!((score - e / total).abs() < 1e-5, "scores {scores:?} from perplexities {ppl:?}");
    }
    let lowest = (0..3).min_by(|&a, &b| ppl[a].total_cmp(&ppl[b])).unwrap();
    assert_eq!(result["label"].as_u64(), Some(lowest as u64));

    let out = tempfile::tempdir().unwrap();
    let result =
        json(run(&["generate", "--model", p(&m), "--text", "борщ", "--n", "2", "--out", p(out.path()), "--json"]));
    assert_eq!(result["images"].as_array().unwrap().len(), 2);
    let image = image::open(out.path().join("image-2.png")).unwrap();
    assert_eq!((image.width(), image.height()), (32, 32));

    let result = json(run(&["texts", "--model", p(&m), "--prompt", "блюдо:", "--n", "4", "--json"]));
    let ppl: Vec<f64> = result["texts"].as_array().unwrap().iter().map(|t| t["ppl"].as_f64().unwrap()).collect();
    assert!(!ppl.is_empty() && ppl.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let m = model();
    let not_image = run(&["caption", "--model", p(&m), "--image", p(&m.join("config.json"))]);
    assert!(!not_image.status.success());
    assert!(String::from_utf8_lossy(&not_image.stderr).contains("not an image format"));
    let no_model = run(&["caption", "--model", "/no/such/model", "--image", p(&m.join("photo.png"))]);
    assert!(String::from_utf8_lossy(&no_model.stderr).contains("does not exist"));
    let no_classes = run(&["classify", "--model", p(&m), "--image", p(&m.join("photo.png")), "--classes", " , "]);
    assert!(String::from_utf8_lossy(&no_classes.stderr).contains("no classes"));
    let bad_sampling = run(&["caption", "--model", p(&m), "--image", p(&m.join("photo.png")), "--temperature", "0"]);
    assert!(String::from_utf8_lossy(&bad_sampling.stderr).contains("temperature must be positive"));
}

#[test]
fn bench_reports_every_key_as_median_and_min() {
    let report = json(run(&["bench", "--preset", "tiny", "--runs", "1"]));
    for key in [
        "captions_16",
        "captions_4_seed_settings",
        "rerank_by_image_16",
        "zs_clf_20",
        "codebooks_4",
        "vae_decode_4",
        "vae_encode_16",
    ] {
        let pair = report[key].as_array().unwrap_or_else(|| panic!("{key} missing"));
        let (median, min) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
        assert!(median > 0.0 && min > 0.0 && min <= median, "{key}: {pair:?}");
    }
    // The SIMD code that ran: this default build has the AVX-512 kernels.
    let simd = &report["simd"];
    #[cfg(target_arch = "x86_64")]
    {
        let expected = if std::arch::is_x86_feature_detected!("avx512f") { "AVX-512" } else { "AVX2+FMA" };
        assert_eq!(simd["matrix_products"], expected, "{simd}");
    }
    assert!(simd["kernels"].as_str().is_some_and(|level| !level.is_empty()), "{simd}");
    assert!(!run(&["bench", "--preset", "huge"]).status.success());

    // --only runs just the keys named.
    let only = json(run(&["bench", "--preset", "tiny", "--runs", "1", "--only", "zs_clf_20,vae_decode_4"]));
    let mut keys: Vec<&String> = only.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["simd", "vae_decode_4", "zs_clf_20"]);
    assert!(!run(&["bench", "--dtype", "f8"]).status.success());
}
