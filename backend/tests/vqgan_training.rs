//! `borscht vqgan encode|decode` through the binary, and VQGAN training on a tiny synthetic set.

use borscht_model::vqgan::{load_vqgan, DdConfig, VqganConfig};
use borscht_train::vqgan::{train_vqgan, Perceptual, Quantizer, VqganTraining};
use candle_core::{DType, Device, Tensor};
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan")
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_borscht")).args(args).output().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn cli_encode_and_decode_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (codes, images, png) =
        (dir.path().join("codes.npy"), dir.path().join("images.npy"), dir.path().join("grid.png"));
    let out = run(&[
        "vqgan",
        "encode",
        "--vqgan",
        p(&fixtures()),
        "--images",
        p(&fixtures().join("images.npy")),
        "--out",
        p(&codes),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours: Vec<Vec<i64>> = Tensor::read_npy(&codes).unwrap().to_vec2().unwrap();
    let reference: Vec<Vec<i64>> = Tensor::read_npy(fixtures().join("codes.npy")).unwrap().to_vec2().unwrap();
    assert_eq!(ours, reference);

    let out = run(&[
        "vqgan",
        "decode",
        "--vqgan",
        p(&fixtures()),
        "--codes",
        p(&codes),
        "--out",
        p(&images),
        "--png",
        p(&png),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let diff =
        max_abs_diff(&Tensor::read_npy(&images).unwrap(), &Tensor::read_npy(fixtures().join("decoded.npy")).unwrap());
    assert!(diff <= 1e-4, "{diff}");
    let grid = image::open(&png).unwrap();
    assert_eq!((grid.width(), grid.height()), (3 * 32 + 2 * 2, 32));
    let out =
        run(&["vqgan", "decode", "--vqgan", p(&fixtures()), "--codes", p(&codes), "--png", p(&png), "--columns", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grid = image::open(&png).unwrap();
    assert_eq!((grid.width(), grid.height()), (2 * 32 + 2, 2 * 32 + 2), "three pictures in rows of two");

    // A photo file instead of an array; out-of-range codes are refused.
    let photo = dir.path().join("photo.png");
    RgbImage::from_fn(48, 40, |x, y| Rgb([(x * 5) as u8, (y * 6) as u8, 90])).save(&photo).unwrap();
    let out =
        run(&["vqgan", "encode", "--vqgan", p(&fixtures()), "--image", p(&photo), "--size", "32", "--out", p(&codes)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Tensor::read_npy(&codes).unwrap().dims(), [1, 64]);
    Tensor::new(&[[70i64; 64]], &Device::Cpu).unwrap().write_npy(&codes).unwrap();
    let out = run(&["vqgan", "decode", "--vqgan", p(&fixtures()), "--codes", p(&codes), "--png", p(&png)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("codes must lie in 0..64"));
}

/// Flat-colour squares and stripes: easy to rebuild, so a few epochs must show learning.
fn synthetic_images(dir: &Path, count: usize) {
    let colours = [[220, 40, 40], [40, 180, 60], [40, 70, 200], [240, 200, 40], [250, 250, 250], [20, 20, 20]];
    for i in 0..count {
        let (a, b) = (colours[i % colours.len()], colours[(i / colours.len() + i + 1) % colours.len()]);
        let image =
            RgbImage::from_fn(
                16,
                16,
                |x, y| if (x / 8 + y / 8 + i as u32).is_multiple_of(2) { Rgb(a) } else { Rgb(b) },
            );
        image.save(dir.join(format!("{i:02}.png"))).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    std::fs::write(dir.join("broken.png"), b"\x89PNG garbage").unwrap();
}

/// `count` 16x16 pictures of scattered values in [0, 1], the same every run.
fn pseudo_random_images(count: usize) -> Tensor {
    let values: Vec<f32> = (0..count * 3 * 16 * 16).map(|i| ((i * 7919 + 13) % 1000) as f32 / 999.0).collect();
    Tensor::from_vec(values, (count, 3, 16, 16), &Device::Cpu).unwrap()
}

fn tiny_config() -> VqganConfig {
    VqganConfig {
        ddconfig: DdConfig {
            ch: 32,
            out_ch: 3,
            ch_mult: vec![1, 1],
            num_res_blocks: 1,
            attn_resolutions: vec![],
            z_channels: 32,
            resolution: 16,
            in_channels: 3,
            double_z: false,
            dropout: 0.0,
            norm_groups: 32,
        },
        n_embed: 16,
        embed_dim: 32,
    }
}

/// 8 epochs of batch 4 on the tiny config; the gumbel settings are ignored by `Nearest`.
fn training_options(data: &Path, out: &Path, quantizer: Quantizer) -> VqganTraining {
    VqganTraining {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        model: tiny_config(),
        image_size: 16,
        epochs: 8,
        batch_size: 4,
        learning_rate: 3e-3,
        seed: 1,
        temperature: (1.0, 0.2),
        kl_weight: 1e-3,
        usage_weight: 0.1,
        straight_through: false,
        quantizer,
        commitment_weight: 0.25,
        resume: false,
        stop_after_epochs: None,
        perceptual: None,
        show_progress: false,
    }
}

#[test]
fn training_lowers_the_loss_and_writes_checkpoints() {
    let data = tempfile::tempdir().unwrap();
    synthetic_images(data.path(), 12);
    let out = tempfile::tempdir().unwrap();
    let training = training_options(data.path(), out.path(), Quantizer::Gumbel);
    let history = train_vqgan(&training, &Device::Cpu).unwrap();
    assert_eq!(history.len(), 8);
    let (first, last) = (&history[0], &history[7]);
    assert!(last.loss < first.loss * 0.7, "loss {} -> {}", first.loss, last.loss);
    assert!(last.hard_l1 < first.hard_l1, "hard-code L1 {} -> {}", first.hard_l1, last.hard_l1);
    for file in ["model.safetensors", "config.json", "training_state.json", "reconstructions/epoch-008.png"] {
        assert!(out.path().join(file).is_file(), "{file} missing");
    }
    // The checkpoint loads as an ordinary VQGAN directory.
    let vqgan = load_vqgan(out.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        vqgan.encode(&Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap()).unwrap().dims(),
        [1, 64],
        "f2: a 16x16 image is 8x8 codes"
    );
}

/// A run stopped after some epochs and resumed ends with the same weights, to the bit, as
/// one that never stopped: the optimiser's moments, the step counter (temperature, gumbel
/// draws) and the code-usage counts behind the restarts all come back.
#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let data = tempfile::tempdir().unwrap();
    synthetic_images(data.path(), 12);
    for quantizer in [Quantizer::Nearest, Quantizer::Gumbel] {
        let run = |out: &Path, stop_after_epochs: Option<usize>, resume: bool| {
            let mut training = training_options(data.path(), out, quantizer);
            // 3 steps an epoch, so a restart (every 25 steps) falls after the stop.
            (training.epochs, training.stop_after_epochs, training.resume) = (12, stop_after_epochs, resume);
            train_vqgan(&training, &Device::Cpu).unwrap()
        };
        let (straight, interrupted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let full = run(straight.path(), None, false);
        assert_eq!(run(interrupted.path(), Some(5), false).len(), 5, "{quantizer:?}: stops after five epochs");
        let resumed = run(interrupted.path(), None, true);
        let losses = |h: &[borscht_train::vqgan::EpochReport]| h.iter().map(|e| e.loss).collect::<Vec<_>>();
        assert_eq!(losses(&resumed), losses(&full), "{quantizer:?}: the same losses, epoch by epoch");
        let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
        assert!(
            weights(straight.path()) == weights(interrupted.path()),
            "{quantizer:?}: weights differ after resuming"
        );
    }
}

#[test]
fn nearest_code_training_learns_and_inference_picks_the_nearest_codes() {
    let data = tempfile::tempdir().unwrap();
    synthetic_images(data.path(), 12);
    let out = tempfile::tempdir().unwrap();
    let training = training_options(data.path(), out.path(), Quantizer::Nearest);
    let history = train_vqgan(&training, &Device::Cpu).unwrap();
    let (first, last) = (&history[0], &history[7]);
    assert!(last.loss < first.loss * 0.7, "loss {} -> {}", first.loss, last.loss);
    assert!(last.hard_l1 < first.hard_l1, "hard-code L1 {} -> {}", first.hard_l1, last.hard_l1);
    assert!(last.codes_used > 1, "restarts keep several codes in use");
    // Inference's argmax of quantize.proj picks the same codes as training's nearest search.
    let vqgan = load_vqgan(out.path(), &Device::Cpu, DType::F32).unwrap();
    let images = pseudo_random_images(3);
    let inferred: Vec<Vec<u32>> = vqgan.encode(&images).unwrap().to_vec2().unwrap();
    let nearest: Vec<Vec<u32>> = vqgan.reconstruct_nearest(&images, false).unwrap().codes.to_vec2().unwrap();
    assert_eq!(inferred, nearest);
}

#[test]
fn the_same_seed_trains_the_same_vqgan() {
    let data = tempfile::tempdir().unwrap();
    synthetic_images(data.path(), 8);
    let train = |seed: u64| {
        let out = tempfile::tempdir().unwrap();
        let mut training = training_options(data.path(), out.path(), Quantizer::Gumbel);
        (training.seed, training.epochs) = (seed, 2);
        let losses: Vec<f64> = train_vqgan(&training, &Device::Cpu).unwrap().iter().map(|e| e.loss).collect();
        (losses, std::fs::read(out.path().join("model.safetensors")).unwrap())
    };
    let (first, again, other) = (train(7), train(7), train(8));
    assert_eq!(first, again, "same seed, same losses and weights");
    assert_ne!(first.1, other.1, "another seed starts elsewhere");
}

#[test]
fn training_refuses_a_folder_without_images() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("readme.txt"), "nothing").unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = run(&["train-vqgan", "--data", p(data.path()), "--out", p(out.path()), "--epochs", "1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no usable images"));
}

#[test]
fn straight_through_decodes_exactly_the_hard_codes() {
    let vqgan = load_vqgan(&fixtures(), &Device::Cpu, DType::F32).unwrap();
    let images = Tensor::read_npy(fixtures().join("images.npy")).unwrap().to_dtype(DType::F32).unwrap(); // [0, 1]
    let hard = vqgan.reconstruct(&images, 1.0, 3, true, false).unwrap();
    let decoded = vqgan.decode(&hard.codes).unwrap();
    // reconstruct returns [-1, 1]; decode maps to [0, 1].
    let rebuilt = ((&hard.images + 1.0).unwrap() / 2.0).unwrap().clamp(0f32, 1f32).unwrap();
    let diff = max_abs_diff(&rebuilt, &decoded);
    assert!(diff < 1e-4, "straight-through decodes what inference decodes: {diff}");
    let soft = vqgan.reconstruct(&images, 1.0, 3, false, false).unwrap();
    let soft_rebuilt = ((&soft.images + 1.0).unwrap() / 2.0).unwrap().clamp(0f32, 1f32).unwrap();
    let soft_diff = max_abs_diff(&soft_rebuilt, &vqgan.decode(&soft.codes).unwrap());
    assert!(soft_diff > 1e-3, "the relaxed decode differs from the hard one ({soft_diff})");
}

/// The training graph's gradients (custom convolution, GroupNorm and attention ops
/// included) agree with finite differences of the loss, for weights at each end.
#[test]
fn training_gradients_match_finite_differences() {
    use candle_nn::VarMap;
    let mut cfg = tiny_config();
    cfg.ddconfig.attn_resolutions = vec![8];
    let varmap = VarMap::new();
    let vb = borscht_model::init::seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
    let vqgan = borscht_model::vqgan::Vqgan::new(&cfg, vb).unwrap();
    let images = pseudo_random_images(2);
    let loss = |v: &borscht_model::vqgan::Vqgan| -> Tensor {
        // Soft codes at a fixed seed: a smooth function of every weight.
        let rec = v.reconstruct(&images, 1.0, 5, false, true).unwrap();
        rec.images.sqr().unwrap().mean_all().unwrap()
    };
    let grads = loss(&vqgan).backward().unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    let mut checked = 0;
    for name in [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.mid.attn_1.q.weight",
        "quantize.proj.weight",
        "decoder.up.1.block.0.conv1.weight",
        "decoder.mid.block_1.norm2.bias",
        "decoder.conv_out.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.conv_out.weight",
        "quant_conv.weight",
        "quantize.embed.weight",
        "post_quant_conv.weight",
        "decoder.conv_in.weight",
        "decoder.up.1.upsample.conv.weight",
    ] {
        let var = vars.get(name).unwrap_or_else(|| panic!("no {name}"));
        let analytic: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let original: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // The element with the largest gradient, where the relative check is meaningful.
        let i = (0..analytic.len()).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
        let at = |delta: f32| -> f32 {
            let mut values = original.clone();
            values[i] += delta;
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
            loss(&vqgan).to_scalar::<f32>().unwrap()
        };
        let eps = 1e-2;
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        var.set(&Tensor::from_vec(original, var.shape(), &Device::Cpu).unwrap()).unwrap();
        let error = (numeric - analytic[i]).abs() / analytic[i].abs().max(1e-6);
        assert!(error < 0.05, "{name}[{i}]: analytic {} numeric {numeric}", analytic[i]);
        checked += 1;
    }
    assert_eq!(checked, 14);
}

#[test]
fn the_cli_reads_a_config_file_by_its_own_name() {
    let data = tempfile::tempdir().unwrap();
    synthetic_images(data.path(), 4);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.ddconfig.norm_groups = 8;
    let config = dir.path().join("tiny-vqgan.json"); // no config.json beside it
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let out = dir.path().join("out");
    let output = run(&[
        "train-vqgan",
        "--data",
        p(data.path()),
        "--out",
        p(&out),
        "--config",
        p(&config),
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "4",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let written: VqganConfig =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(written, cfg);
}

/// `--perceptual` adds EfficientNet-Lite0's feature distance to the loss (from the same
/// start, the first epoch's loss is higher than without it) and the VQGAN still learns.
#[test]
fn perceptual_training_adds_the_distance_and_still_learns() {
    let weights = borscht_train::perceptual::installed_weights().unwrap();
    let data = tempfile::tempdir().unwrap();
    synthetic_images(data.path(), 12);
    let train = |perceptual: Option<Perceptual>| {
        let out = tempfile::tempdir().unwrap();
        let training = VqganTraining { perceptual, ..training_options(data.path(), out.path(), Quantizer::Nearest) };
        train_vqgan(&training, &Device::Cpu).unwrap()
    };
    let plain = train(None);
    let with = train(Some(Perceptual { weights, weight: 0.1, upscale: 2 }));
    assert!(
        with[0].loss > plain[0].loss + 0.01,
        "epoch 1: {} with the distance, {} without",
        with[0].loss,
        plain[0].loss
    );
    let (first, last) = (&with[0], &with[7]);
    assert!(last.loss < first.loss * 0.8, "loss {} -> {}", first.loss, last.loss);
    assert!(last.hard_l1 < first.hard_l1, "hard-code L1 {} -> {}", first.hard_l1, last.hard_l1);
}
