//! `borscht forward / loss / convert` and checkpoint loading, end to end through the binary
//! (hub ids: tests/hub.rs).

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transformer")
}

fn borscht(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_borscht"));
    command.args(args).env_remove("BORSCHT_MODEL");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `borscht forward` on the fixture batch with `model` plus `extra` arguments and
/// returns the largest difference from the reference logits file `reference`.
fn forward_diff(model: &str, extra: &[&str], env: &[(&str, &str)], reference: &str) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.npy");
    let (ids, masks) = (fixtures().join("input_ids.npy"), fixtures().join("r_text_masks.npy"));
    let mut args = vec!["forward", "--model", model, "--input-ids", path(&ids), "--r-text-masks", path(&masks)];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", path(&out)]);
    ok(borscht(&args, env));
    let logits = Tensor::read_npy(&out).unwrap();
    assert_eq!(logits.dtype(), DType::F32, "logits are written as float32");
    max_abs_diff(&logits, &Tensor::read_npy(fixtures().join(reference)).unwrap())
}

#[test]
fn forward_writes_the_reference_logits() {
    let model = fixtures();
    let diff = forward_diff(path(&model), &[], &[], "logits.npy");
    assert!(diff <= 1e-4, "{diff}");
    let diff = forward_diff(path(&model), &["--mask", "t2t"], &[], "logits_t2t.npy");
    assert!(diff <= 1e-4, "{diff}");
}

#[test]
fn loss_prints_the_reference_losses_as_json() {
    let (model, ids, masks) = (fixtures(), fixtures().join("input_ids.npy"), fixtures().join("r_text_masks.npy"));
    let stdout = ok(borscht(
        &[
            "loss",
            "--model",
            path(&model),
            "--input-ids",
            path(&ids),
            "--r-text-masks",
            path(&masks),
            "--weights",
            "0.01,1,7",
        ],
        &[],
    ));
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("losses.json")).unwrap()).unwrap();
    for key in ["loss", "l_text_loss", "image_loss", "r_text_loss"] {
        let (g, e) = (got[key].as_f64().unwrap(), expected["article"][key].as_f64().unwrap());
        assert!((g - e).abs() <= 1e-5, "{key}: {g} vs {e}");
    }
    let bad = borscht(&["loss", "--model", path(&model), "--input-ids", path(&ids), "--weights", "1,2"], &[]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("exactly three numbers"));
}

#[test]
fn convert_to_safetensors_keeps_the_logits_and_halves_in_f16() {
    let dir = tempfile::tempdir().unwrap();
    let (f32_dir, f16_dir) = (dir.path().join("f32"), dir.path().join("f16"));
    ok(borscht(&["convert", "--model", path(&fixtures()), "--out", path(&f32_dir)], &[]));
    ok(borscht(&["convert", "--model", path(&fixtures()), "--out", path(&f16_dir), "--dtype", "f16"], &[]));
    let size = |d: &Path| std::fs::metadata(d.join("model.safetensors")).unwrap().len();
    assert!(size(&f16_dir) * 10 < size(&f32_dir) * 6, "f16 file should be about half the f32 one");
    let st = candle_core::safetensors::load(f16_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(st.values().all(|t| t.dtype() == DType::F16));
    assert!(!st.contains_key("transformer.row_mask"), "mask buffers are rebuilt, not stored");

    let diff = forward_diff(path(&f32_dir), &[], &[], "logits.npy");
    assert!(diff <= 1e-4, "{diff}");
}

#[test]
fn a_mismatched_checkpoint_names_the_file_key_and_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    ok(borscht(&["convert", "--model", path(&fixtures()), "--out", path(&model_dir)], &[]));
    let file = model_dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    tensors.insert(
        "transformer.layers.2.mlp.dense_h_to_4h.weight".into(),
        Tensor::zeros((7, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.remove("image_col_embeddings.weight");
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let ids = fixtures().join("input_ids.npy");
    let output =
        borscht(&["forward", "--model", path(&model_dir), "--input-ids", path(&ids), "--out", "/dev/null"], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model.safetensors"), "{stderr}");
    assert!(stderr.contains("image_col_embeddings.weight") && stderr.contains("[3, 32]"), "{stderr}");
    assert!(stderr.contains("1 more problem"), "{stderr}");

    let output = borscht(
        &["forward", "--model", path(&dir.path().join("nowhere")), "--input-ids", path(&ids), "--out", "x"],
        &[],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("neither a directory nor a hub id"));
}

#[test]
fn out_of_vocabulary_ids_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids.npy");
    Tensor::new(&[[2i64, 5, 999]], &Device::Cpu).unwrap().write_npy(&ids).unwrap();
    let output = borscht(&["forward", "--model", path(&fixtures()), "--input-ids", path(&ids), "--out", "x.npy"], &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("position 2: id 999"));
}

#[test]
fn half_precision_runs_and_stays_close_to_f32() {
    let model = fixtures();
    let reference = Tensor::read_npy(fixtures().join("logits.npy")).unwrap();
    let scale: f32 = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    // Relative to the largest logit, each within a few units of its own rounding (f16 keeps
    // 11 significant bits, bf16 8), as the reference tests bound the op-by-op path.
    for (dtype, bound) in [("f16", 1e-2), ("bf16", 5e-2)] {
        let relative = forward_diff(path(&model), &["--dtype", dtype], &[], "logits.npy") / scale;
        assert!(relative > 1e-5 && relative < bound, "{dtype}: max abs diff {relative} of the largest logit");
    }
    assert!(forward_diff(path(&model), &["--dtype", "f32"], &[], "logits.npy") / scale < 1e-5);
}

fn device_check(fixtures: &Path, dtype: &str) -> (bool, serde_json::Value) {
    let output = borscht(&["device-check", "--device", "cpu", "--dtype", dtype, "--fixtures", path(fixtures)], &[]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.success(), report)
}

#[test]
fn device_check_passes_on_the_reference_fixtures_and_fails_when_they_disagree() {
    let all = fixtures().parent().unwrap().to_path_buf();
    for dtype in ["f32", "f16"] {
        let (success, report) = device_check(&all, dtype);
        assert!(success && report["ok"] == true, "{dtype}: {report}");
        assert_eq!(report["checks"].as_array().unwrap().len(), 2);
        assert_eq!(report["vqgan_code_agreement"], 1.0);
        let logits = &report["checks"][0];
        let relative = logits["relative_to_reference"].as_f64().unwrap();
        assert!(relative <= logits["tolerance"].as_f64().unwrap(), "{dtype}: {logits}");
        // Half precision really ran: it rounds, f32 does not (beyond 1e-6).
        assert_eq!(dtype == "f16", relative > 1e-4, "{dtype}: {logits}");
    }

    // The same weights against reference logits nudged by 1 %: the check must fail.
    let tampered = tempfile::tempdir().unwrap();
    for part in ["transformer", "vqgan"] {
        let to = tampered.path().join(part);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(all.join(part)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let logits = tampered.path().join("transformer/logits.npy");
    (Tensor::read_npy(&logits).unwrap() * 1.01).unwrap().write_npy(&logits).unwrap();
    let (success, report) = device_check(tampered.path(), "f32");
    assert!(!success && report["ok"] == false, "{report}");
    assert_eq!(report["checks"][0]["ok"], false);
    assert_eq!(report["checks"][1]["ok"], true);
}
