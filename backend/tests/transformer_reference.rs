//! The transformer against rudolph 0.0.1rc4 (fixtures: scripts/fixtures/transformer_fixtures.py).

use borscht::model::masks::{attention_mask, layer_masks, t2t_attention_mask};
use borscht::model::transformer::{LossWeights, Rudolph};
use borscht::model::weights::{load_model, load_trainable, local_model, ModelFiles};
use candle_core::{DType, Device, IndexOp, Tensor};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transformer")
}

fn files() -> ModelFiles {
    local_model(&fixtures()).unwrap()
}

fn model() -> Rudolph {
    load_model(&files(), &Device::Cpu, DType::F32).unwrap()
}

fn npy(name: &str) -> Tensor {
    Tensor::read_npy(fixtures().join(name)).unwrap()
}

fn input_ids() -> Tensor {
    npy("input_ids.npy").to_dtype(DType::U32).unwrap()
}

fn sample_masks() -> Tensor {
    let r_text_masks: Vec<Vec<f32>> = npy("r_text_masks.npy").to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    attention_mask(&files().config, &r_text_masks, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn masks_equal_the_reference_buffers() {
    let cfg = files().config;
    let ours = layer_masks(&cfg);
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_npz(fixtures().join("masks.npz")).unwrap().into_iter().collect();
    for (name, mask) in ["row", "col", "conv", "last_conv"].iter().zip(ours.iter()) {
        let ours = mask.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&ours, &reference[*name]), 0.0, "{name} mask differs");
    }
}

#[test]
fn full_forward_matches_the_reference_logits() {
    let logits = model().forward(&input_ids(), &sample_masks(), None).unwrap();
    let diff = max_abs_diff(&logits, &npy("logits.npy"));
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

#[test]
fn prefix_forward_matches_the_reference() {
    let logits = model().forward(&input_ids().narrow(1, 0, 12).unwrap(), &sample_masks(), None).unwrap();
    let diff = max_abs_diff(&logits, &npy("logits_prefix.npy"));
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

#[test]
fn text_to_text_mask_matches_the_reference() {
    let model = model();
    let mask = t2t_attention_mask(model.config(), 3, &Device::Cpu).unwrap();
    let logits = model.forward(&input_ids(), &mask, None).unwrap();
    let diff = max_abs_diff(&logits, &npy("logits_t2t.npy"));
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

#[test]
fn cached_decoding_equals_the_full_forward() {
    let model = model();
    let (ids, mask) = (input_ids(), sample_masks());
    let full = model.forward(&ids, &mask, None).unwrap();
    // A prompt, then chunks of 1, 3 and the rest, across all three segments.
    let mut cache = model.new_cache();
    let mut pieces = Vec::new();
    let mut start = 0;
    for len in [4, 1, 1, 3, 1, 2, 8] {
        pieces.push(model.forward(&ids.narrow(1, start, len).unwrap(), &mask, Some(&mut cache)).unwrap());
        start += len;
        assert_eq!(cache.len(), start);
    }
    let cached = Tensor::cat(&pieces, 1).unwrap();
    let diff = max_abs_diff(&cached, &full);
    assert!(diff <= 1e-4, "max abs diff {diff}");
    assert!(model.forward(&ids.narrow(1, 0, 1).unwrap(), &mask, Some(&mut cache)).is_err(), "past the sequence end");
}

#[test]
fn a_batch_equals_its_samples_alone() {
    let model = model();
    let (ids, mask) = (input_ids(), sample_masks());
    let batch = model.forward(&ids, &mask, None).unwrap();
    for i in 0..3 {
        let alone = model.forward(&ids.i(i..i + 1).unwrap(), &mask.i(i..i + 1).unwrap(), None).unwrap();
        let diff = max_abs_diff(&alone, &batch.i(i..i + 1).unwrap());
        assert!(diff <= 1e-5, "sample {i}: {diff}");
    }
}

#[test]
fn losses_match_the_reference() {
    let model = model();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("losses.json")).unwrap()).unwrap();
    for key in ["article", "default"] {
        let e = &expected[key];
        let w: Vec<f64> = serde_json::from_value(e["weights"].clone()).unwrap();
        let weights = LossWeights { l_text: w[0], image: w[1], r_text: w[2] };
        let losses = model.loss(&input_ids(), &sample_masks(), weights).unwrap();
        let loss: f32 = losses.loss.to_scalar().unwrap();
        for (name, ours) in [
            ("loss", loss),
            ("l_text_loss", losses.l_text),
            ("image_loss", losses.image),
            ("r_text_loss", losses.r_text),
        ] {
            let want = e[name].as_f64().unwrap() as f32;
            assert!((ours - want).abs() <= 1e-5, "{key} {name}: ours {ours}, reference {want}");
        }
    }
}

#[test]
fn gradients_of_embeddings_and_layernorms_match_torch() {
    // Also with attention and MLP frozen (the article's fine-tuning): their weights then
    // get no gradient, and everything upstream of them still gets the same one.
    for frozen in [false, true] {
        let (varmap, mut model) = load_trainable(&files(), &Device::Cpu).unwrap();
        model.set_differentiable(true);
        model.freeze_blocks(frozen, frozen);
        let weights = LossWeights { l_text: 0.01, image: 1.0, r_text: 7.0 };
        let losses = model.loss(&input_ids(), &sample_masks(), weights).unwrap();
        let grads = losses.loss.backward().unwrap();
        let reference = Tensor::read_npz(fixtures().join("grads.npz")).unwrap();
        assert!(reference.len() >= 6 + 4 * 5 * 2, "fixture holds embeddings and every LayerNorm");
        let vars = varmap.data().lock().unwrap();
        for (name, want) in reference {
            let var = vars.get(&name).unwrap_or_else(|| panic!("no variable {name}"));
            let got = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
            let diff = max_abs_diff(got, &want);
            let scale: f32 = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(diff <= 1e-5, "frozen {frozen}, {name}: max abs diff {diff} (gradient scale {scale})");
        }
        for (name, var) in vars.iter().filter(|(name, _)| name.contains(".mlp.") || name.contains(".attention.")) {
            assert_eq!(grads.get(var).is_none(), frozen, "{name}: gradient present with frozen = {frozen}");
        }
    }
}

/// Devices and dtypes other than CPU f32 take the op-by-op path (masks spread to the
/// scores' shape, penalty made once per forward): in f16 (candle's CPU LayerNorm has no
/// f64) it must agree with the reference within half precision, with and without a cache.
#[test]
fn the_op_by_op_path_matches_the_reference() {
    let model = load_model(&files(), &Device::Cpu, DType::F16).unwrap();
    let (ids, mask) = (input_ids(), sample_masks());
    let reference = npy("logits.npy");
    let scale: f32 = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    let tolerance = 1e-2 * scale;
    let full = model.forward(&ids, &mask, None).unwrap().to_dtype(DType::F32).unwrap();
    let diff = max_abs_diff(&full, &reference);
    assert!(diff <= tolerance, "full forward: max abs diff {diff} > {tolerance}");
    let mut cache = model.new_cache();
    let mut pieces = Vec::new();
    let mut start = 0;
    for len in [5, 1, 2, 1, 11] {
        pieces.push(model.forward(&ids.narrow(1, start, len).unwrap(), &mask, Some(&mut cache)).unwrap());
        start += len;
    }
    let cached = Tensor::cat(&pieces, 1).unwrap().to_dtype(DType::F32).unwrap();
    let diff = max_abs_diff(&cached, &reference);
    assert!(diff <= tolerance, "cached: max abs diff {diff} > {tolerance}");
    let t2t = t2t_attention_mask(model.config(), 3, &Device::Cpu).unwrap();
    let logits = model.forward(&ids, &t2t, None).unwrap().to_dtype(DType::F32).unwrap();
    let diff = max_abs_diff(&logits, &npy("logits_t2t.npy"));
    assert!(diff <= tolerance, "text-to-text mask: max abs diff {diff} > {tolerance}");
}
