//! `borscht train` on a tiny synthetic set: it must learn the captions, resume exactly
//! and report bad rows.

use borscht_model::config::RudolphConfig;
use borscht_model::tokenizer::Bpe;
use borscht_model::transformer::Rudolph;
use borscht_pipelines::generation::{caption, CaptionOptions};
use borscht_pipelines::sampling::SamplingParams;
use borscht_pipelines::Engine;
use borscht_train::loss::LossWeights;
use borscht_train::rudolph::{train, CodeNoise, Freeze, ImageEmbeddingInit, TrainOptions};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const DISHES: [(&str, &str, &str, &str, &str); 10] = [
    ("борщ", "1.1", "2.3", "5.4", "47"),
    ("пицца", "11", "10", "33", "270"),
    ("рис", "2.7", "0.3", "28", "130"),
    ("сыр", "25", "33", "1.3", "402"),
    ("банан", "1.1", "0.3", "23", "89"),
    ("яблоко", "0.3", "0.2", "14", "52"),
    ("хлеб", "9", "3.2", "49", "265"),
    ("яйцо", "13", "11", "1.1", "155"),
    ("суши", "5.8", "0.6", "28", "143"),
    ("чай", "0", "0", "0.3", "1"),
];

fn vqgan_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/vqgan")
}

/// Ten images of different colours and stripes, the article's CSV (with two bad rows) and a vocabulary.
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let mut csv = String::from("index,protein,fat,carbs,kcal,name,path\n");
    for (i, (name, p, f, c, k)) in DISHES.iter().enumerate() {
        let colour = Rgb([(i * 25) as u8, 255 - (i * 20) as u8, ((i * 70) % 255) as u8]);
        RgbImage::from_fn(32, 32, |x, y| {
            if (x / (2 + i as u32) + y / 4).is_multiple_of(2) {
                colour
            } else {
                Rgb([250, 250, 250])
            }
        })
        .save(dir.join(format!("{i}.png")))
        .unwrap();
        csv.push_str(&format!("{i},{p},{f},{c},{k},{name},{i}.png\n"));
    }
    csv.push_str("10,1,1,1,1,призрак,missing.png\n11,много,1,1,1,суп,0.png\n");
    let csv_path = dir.join("food.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let corpus: String = DISHES
        .iter()
        .map(|(n, p, f, c, k)| format!("блюдо: {n}; белков: {p}; жиров: {f}; углеводов: {c}; ккал: {k};\n"))
        .collect();
    let bpe = dir.join("bpe.model");
    Bpe::train(&corpus, 160).unwrap().save(&bpe).unwrap();
    (csv_path, bpe)
}

fn tiny_config(bpe: &Path) -> RudolphConfig {
    let vocab = borscht_model::tokenizer::TextTokenizer::load(bpe).unwrap().vocab_size();
    RudolphConfig {
        num_layers: 2,
        hidden_size: 64,
        num_attention_heads: 2,
        l_text_seq_length: 24,
        image_tokens_per_dim: 4,
        r_text_seq_length: 24,
        vocab_size: vocab + 24,
        image_vocab_size: 64,
        ..RudolphConfig::rudolph_350m()
    }
}

/// `borscht train` arguments for a from-scratch run of the tiny config on the synthetic set.
fn scratch_cli_args(dir: &Path, csv: &Path, bpe: &Path, out: &Path) -> Vec<String> {
    let config = dir.join("tiny.json");
    std::fs::write(&config, serde_json::to_string(&tiny_config(bpe)).unwrap()).unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    ["train", "--csv", &p(csv), "--images", &p(dir), "--out", &p(out), "--config", &p(&config)]
        .into_iter()
        .map(String::from)
        .chain(["--tokenizer".into(), p(bpe), "--vqgan".into(), p(&vqgan_fixture())])
        .collect()
}

fn options(dir: &Path, csv: &Path, out: &Path) -> TrainOptions {
    TrainOptions {
        dish_names: None,
        csv: csv.to_path_buf(),
        images: dir.to_path_buf(),
        out: out.to_path_buf(),
        init: None,
        config: None,
        tokenizer: None,
        vqgan: None,
        epochs: 100,
        batch_size: 5,
        max_lr: 5e-3,
        pct_start: 0.2,
        div_factor: 25.0,
        final_div_factor: 100.0,
        weight_decay: 0.0,
        clip: 1.0,
        loss_weights: LossWeights { l_text: 0.01, image: 1.0, r_text: 7.0 },
        freeze: Freeze::NOTHING,
        seed: 7,
        val_fraction: 0.0,
        validate_every: 1,
        save_every: 0,
        resume: false,
        show_progress: false,
        stop: Arc::new(AtomicBool::new(false)),
        max_steps: None,
        left_text_share: 0.0,
        augment: 0,
        augment_styles: false,
        code_noise: CodeNoise::default(),
        image_embeddings: ImageEmbeddingInit::Random,
        dropout: Some(0.0),
    }
}

#[test]
fn a_tiny_model_learns_its_captions_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    let out = dir.path().join("model");
    let mut opts = options(dir.path(), &csv, &out);
    opts.config = Some(tiny_config(&bpe));
    opts.tokenizer = Some(bpe);
    opts.vqgan = Some(vqgan_fixture());
    let outcome = train(&opts, &Device::Cpu).unwrap();
    assert!(!outcome.interrupted);
    assert_eq!(outcome.state.step, 200, "10 samples, batch 5, 100 epochs");
    let (first, last) = (&outcome.logs[0], outcome.logs.last().unwrap());
    assert!(last.r_text_loss < 0.05 * first.r_text_loss, "caption loss {} -> {}", first.r_text_loss, last.r_text_loss);
    for file in [
        "model.safetensors",
        "optimizer.safetensors",
        "config.json",
        "bpe.model",
        "vqgan/config.json",
        "train_log.csv",
        "loss_curve.png",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }

    // The output is a model directory: greedy captions reproduce the training captions.
    let engine = Engine::load(&out, &Device::Cpu, DType::F32).unwrap();
    let greedy = CaptionOptions {
        count: 1,
        sampling: SamplingParams { top_k: 1, top_p: 1.0, temperature: 1.0 },
        ..Default::default()
    };
    let mut correct = 0;
    for (i, (name, p, f, c, k)) in DISHES.iter().enumerate() {
        let photo = image::open(dir.path().join(format!("{i}.png"))).unwrap();
        let codes: Vec<u32> = engine.image_codes(&photo).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let got = caption(&engine, &codes, &greedy, |_| {}).unwrap().remove(0);
        let want = format!("блюдо: {name}; белков: {p}; жиров: {f}; углеводов: {c}; ккал: {k};");
        correct += (got == want) as usize;
    }
    assert_eq!(correct, 10, "greedy captions must reproduce every training caption");
}

#[test]
fn the_same_seed_trains_the_same_model_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    let train_with = |seed: u64, name: &str| {
        let out = dir.path().join(name);
        let mut opts = options(dir.path(), &csv, &out);
        (opts.config, opts.tokenizer, opts.vqgan) = (Some(tiny_config(&bpe)), Some(bpe.clone()), Some(vqgan_fixture()));
        (opts.seed, opts.epochs, opts.dropout) = (seed, 2, Some(0.1));
        train(&opts, &Device::Cpu).unwrap();
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let first = train_with(3, "a");
    assert!(first == train_with(3, "b"), "same seed, same starting weights, dropout and order: same model");
    assert!(first != train_with(4, "c"), "another seed, another model");
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    // A fixed starting point so both runs begin equal.
    let init = dir.path().join("init");
    std::fs::create_dir_all(init.join("vqgan")).unwrap();
    let cfg = tiny_config(&bpe);
    let varmap = VarMap::new();
    Rudolph::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    varmap.save(init.join("model.safetensors")).unwrap();
    std::fs::write(init.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    std::fs::copy(&bpe, init.join("bpe.model")).unwrap();
    for f in ["config.json", "model.ckpt"] {
        std::fs::copy(vqgan_fixture().join(f), init.join("vqgan").join(f)).unwrap();
    }

    let run = |name: &str, max_steps: Option<usize>, resume: bool, freeze: Freeze| {
        let noise = if name == "clean" { CodeNoise::default() } else { CodeNoise { rate: 0.2, neighbours: 3 } };
        let mut opts = options(dir.path(), &csv, &dir.path().join(name));
        opts.init = Some(init.clone());
        opts.epochs = 4;
        opts.batch_size = 3;
        opts.val_fraction = 0.2;
        opts.freeze = freeze;
        opts.max_steps = max_steps;
        opts.resume = resume;
        opts.augment = 2;
        // The config's dropout (0.1) and the code noise: their draws, seeded by step,
        // must come back on resume.
        opts.dropout = None;
        opts.code_noise = noise;
        opts.validate_every = 3;
        train(&opts, &Device::Cpu).unwrap()
    };
    // The article's freeze, and everything training (attention and MLP moments too).
    for (freeze, tag) in [(Freeze::ARTICLE, "article"), (Freeze::NOTHING, "all")] {
        let straight = run(&format!("straight-{tag}"), None, false, freeze);
        let stopped = run(&format!("resumed-{tag}"), Some(5), false, freeze);
        assert!(stopped.interrupted && stopped.state.step == 5);
        let resumed = run(&format!("resumed-{tag}"), None, true, freeze);
        assert_eq!(resumed.state.step, straight.state.step);
        let validated: Vec<usize> = resumed.state.validations.iter().map(|v| v.epoch).collect();
        assert_eq!(validated, [3, 4], "validation every third epoch and after the last");
        let load = |name: String| candle_core::safetensors::load(dir.path().join(name), &Device::Cpu).unwrap();
        let a = load(format!("straight-{tag}/model.safetensors"));
        let b = load(format!("resumed-{tag}/model.safetensors"));
        for (name, tensor) in &a {
            let diff: f32 =
                (tensor - &b[name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert_eq!(diff, 0.0, "{tag}: {name} differs after resuming");
        }
    }
    let a =
        candle_core::safetensors::load(dir.path().join("straight-article/model.safetensors"), &Device::Cpu).unwrap();
    // The same run without code noise trains other weights: the noise reaches training.
    run("clean", None, false, Freeze::ARTICLE);
    let clean = candle_core::safetensors::load(dir.path().join("clean/model.safetensors"), &Device::Cpu).unwrap();
    let name = "image_embeddings.weight";
    let moved: f32 =
        (&a[name] - &clean[name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert!(moved > 0.0, "code noise changed nothing");
    // The article's freeze kept attention and MLP weights as they started.
    let start = candle_core::safetensors::load(init.join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "transformer.layers.0.mlp.dense_h_to_4h.weight";
    let moved: f32 = (&a[name] - &start[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert_eq!(moved, 0.0, "frozen weights must not move");
    // Each picture was encoded as itself and as two augmented renderings, which differ.
    let cache =
        candle_core::safetensors::load(dir.path().join("straight-article/image_codes.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(cache.len(), 30, "10 pictures x (1 + 2 renderings)");
    let codes = |key: &str| cache[key].to_vec1::<u32>().unwrap();
    let original = cache.keys().find(|k| !k.contains("|augment-")).unwrap().clone();
    assert_ne!(codes(&original), codes(&format!("{original}|augment-7-1")));
}

/// Pearson correlation of two equally long series.
fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let mean = |x: &[f32]| x.iter().sum::<f32>() / x.len() as f32;
    let (ma, mb) = (mean(a), mean(b));
    let cov: f32 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let var = |x: &[f32], m: f32| x.iter().map(|v| (v - m) * (v - m)).sum::<f32>();
    cov / (var(a, ma) * var(b, mb)).sqrt()
}

/// Squared distances between all pairs of rows of `[n, d]`.
fn pairwise_distances(rows: &candle_core::Tensor) -> Vec<f32> {
    let rows = rows.to_vec2::<f32>().unwrap();
    let mut out = Vec::new();
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            out.push(rows[i].iter().zip(&rows[j]).map(|(a, b)| (a - b) * (a - b)).sum());
        }
    }
    out
}

#[test]
fn codebook_initialised_image_embeddings_mirror_the_vqgan_and_can_stay_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    let run = |name: &str, steps: usize| {
        let mut opts = options(dir.path(), &csv, &dir.path().join(name));
        opts.config = Some(tiny_config(&bpe));
        opts.tokenizer = Some(bpe.clone());
        opts.vqgan = Some(vqgan_fixture());
        opts.image_embeddings = ImageEmbeddingInit::Codebook { std: 0.1 };
        opts.freeze = Freeze { image_embeddings: true, ..Freeze::NOTHING };
        opts.max_steps = Some(steps);
        train(&opts, &Device::Cpu).unwrap();
        candle_core::safetensors::load(dir.path().join(name).join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (early, late) = (run("early", 1), run("late", 6));
    let key = "image_embeddings.weight";
    let codebook =
        borscht_model::vqgan::load_vqgan(&vqgan_fixture(), &Device::Cpu, DType::F32).unwrap().codebook().clone();
    let n_embed = codebook.dim(0).unwrap();
    let embeddings = late[key].narrow(0, 0, n_embed).unwrap();
    // Codes close in the codebook are close as embeddings (a random init gives about 0;
    // per-dimension standardising and the projection keep it below 1).
    let r = correlation(&pairwise_distances(&codebook), &pairwise_distances(&embeddings));
    assert!(r > 0.6, "distance correlation {r}");
    let std: f32 = embeddings.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar().unwrap();
    assert!((0.07..0.13).contains(&std), "embedding scale {std}");
    // Frozen: five more steps left them exactly as they started, while the rest trained.
    let moved = |name: &str| -> f32 {
        (&late[name] - &early[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    };
    assert_eq!(moved(key), 0.0);
    assert!(moved("text_embeddings.weight") > 0.0);
}

#[test]
fn the_cli_reports_bad_rows_and_writes_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    let out = dir.path().join("cli-model");
    let mut args = scratch_cli_args(dir.path(), &csv, &bpe, &out);
    args.extend(
        ["--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--freeze", "none", "--val-fraction", "0.2"]
            .map(String::from),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_borscht")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("10 samples, 2 rows skipped"), "{stderr}");
    assert!(stderr.contains("line 12: missing image") && stderr.contains("line 13: non-numeric"), "{stderr}");
    assert!(stderr.contains("dish accuracy"), "validation is reported: {stderr}");
    assert!(out.join("model.safetensors").is_file());

    let refused = |extra: [&str; 2]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_borscht"))
            .args(scratch_cli_args(dir.path(), &csv, &bpe, &out))
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    refused(["--freeze", "wings"]);
    let stderr = refused(["--dropout", "1.5"]);
    assert!(stderr.contains("dropout must be at least 0 and below 1, not 1.5"), "{stderr}");
    let stderr = refused(["--code-noise", "1.5"]);
    assert!(stderr.contains("the code-noise rate must be between 0 and 1, not 1.5"), "{stderr}");
    let stderr = refused(["--augment-styles", "--augment=0"]);
    assert!(stderr.contains("give --augment N as well"), "{stderr}");
}

/// Ctrl-C finishes the step, saves, and says where it stopped; `--resume` from there ends
/// with the same weights, to the byte, as a run that was never stopped (the checkpoint is
/// the interrupt's own: without `--save-every` nothing else saves mid-epoch).
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes_exactly() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    let command = |out: &Path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_borscht"));
        command.args(scratch_cli_args(dir.path(), &csv, &bpe, out)).args([
            "--epochs",
            "20",
            "--batch-size",
            "3",
            "--val-fraction",
            "0",
        ]);
        command
    };
    let out = dir.path().join("interrupted");
    let child = command(&out).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // The image codes are cached just before the first step.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("image_codes.safetensors").is_file() {
        assert!(Instant::now() < deadline, "training never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stopped_at: u64 = stderr
        .split("stopped at step ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'stopped at step N' in {stderr}"));
    assert!(stderr.contains("--resume"), "{stderr}");
    let state = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("train_state.json")).unwrap()).unwrap()
    };
    let total = 20 * 4;
    assert!((1..total).contains(&stopped_at), "stopped at step {stopped_at} of {total}");
    assert_eq!(state(&out)["step"].as_u64(), Some(stopped_at), "the checkpoint is the step it stopped at");

    let resumed = command(&out).arg("--resume").output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let straight = dir.path().join("straight");
    let uninterrupted = command(&straight).output().unwrap();
    assert!(uninterrupted.status.success(), "{}", String::from_utf8_lossy(&uninterrupted.stderr));
    assert_eq!(state(&out)["step"], state(&straight)["step"]);
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(weights(&out) == weights(&straight), "resumed from step {stopped_at}, the weights differ");
}

/// A checkpoint that cannot be written (here the optimiser's file: its temporary's place is
/// taken, as a full disk or a permission would refuse it) leaves the previous checkpoint
/// whole and loadable, says which step that is, and the run continues from it exactly.
#[test]
fn a_failed_save_leaves_the_previous_checkpoint_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    let run_until = |name: &str, epochs: usize, resume: bool, max_steps: Option<usize>| {
        let mut opts = options(dir.path(), &csv, &dir.path().join(name));
        opts.config = Some(tiny_config(&bpe));
        opts.tokenizer = Some(bpe.clone());
        opts.vqgan = Some(vqgan_fixture());
        (opts.epochs, opts.batch_size, opts.resume, opts.max_steps) = (epochs, 5, resume, max_steps);
        train(&opts, &Device::Cpu)
    };
    let run = |name: &str, epochs: usize, resume: bool| run_until(name, epochs, resume, None);
    let out = dir.path().join("faulty");
    // Two steps an epoch; stopped after the first step, the next save is at step 2.
    assert!(run_until("faulty", 3, false, Some(1)).unwrap().interrupted);
    let saved = std::fs::read(out.join("model.safetensors")).unwrap();
    std::fs::create_dir(out.join(".optimizer.safetensors.tmp")).unwrap();
    let error = format!("{:#}", run("faulty", 3, true).unwrap_err());
    assert!(error.contains("could not save the checkpoint of step 2"), "{error}");
    assert!(error.contains("the one of step 1") && error.contains("is intact"), "{error}");
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() == saved, "the weights of step 1 were replaced");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 1);
    assert!(!out.join(".model.safetensors.tmp").exists(), "the written temporaries are removed");
    // Fixed, the run continues from step 1 to the same weights as one never interrupted.
    std::fs::remove_dir(out.join(".optimizer.safetensors.tmp")).unwrap();
    run("faulty", 3, true).unwrap();
    run("straight", 3, false).unwrap();
    let weights = |name: &str| std::fs::read(dir.path().join(name).join("model.safetensors")).unwrap();
    assert!(weights("faulty") == weights("straight"), "the resumed run differs");
}

/// Cached image codes that are not codes of the VQGAN (a damaged file) are encoded again,
/// not trained on; an unreadable cache file is rebuilt.
#[test]
fn damaged_cached_codes_are_encoded_again() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, bpe) = dataset(dir.path());
    let run = |name: &str| {
        let mut opts = options(dir.path(), &csv, &dir.path().join(name));
        opts.config = Some(tiny_config(&bpe));
        opts.tokenizer = Some(bpe.clone());
        opts.vqgan = Some(vqgan_fixture());
        (opts.epochs, opts.batch_size) = (1, 5);
        train(&opts, &Device::Cpu).unwrap();
        std::fs::read(dir.path().join(name).join("model.safetensors")).unwrap()
    };
    let clean = run("clean");
    let cache = |name: &str| dir.path().join(name).join("image_codes.safetensors");
    let mut codes = candle_core::safetensors::load(cache("clean"), &Device::Cpu).unwrap();
    // Damage every entry: codes beyond the codebook, and one of the wrong length.
    for (k, (_, tensor)) in codes.iter_mut().enumerate() {
        let n = if k == 0 { 3 } else { tensor.dims()[0] };
        *tensor = candle_core::Tensor::new(vec![60_000u32; n], &Device::Cpu).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("damaged")).unwrap();
    candle_core::safetensors::save(&codes, cache("damaged")).unwrap();
    assert!(run("damaged") == clean, "trained on the damaged codes");
    std::fs::create_dir_all(dir.path().join("unreadable")).unwrap();
    std::fs::write(cache("unreadable"), b"not a safetensors file").unwrap();
    assert!(run("unreadable") == clean, "the unreadable cache was not rebuilt");
}
