//! The transformer against rudolph 0.0.1rc4 (fixtures: scripts/fixtures/transformer_fixtures.py).

use borscht_model::config::RudolphConfig;
use borscht_model::masks::{attention_mask, layer_mask_kind, layer_masks, t2t_attention_mask};
use borscht_model::transformer::Rudolph;
use borscht_model::weights::{load_model, load_trainable, local_model, ModelFiles};
use borscht_train::loss::{loss, LossWeights};
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
        let losses = loss(&model, &input_ids(), &sample_masks(), weights).unwrap();
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
        model.freeze_blocks(frozen, frozen);
        let weights = LossWeights { l_text: 0.01, image: 1.0, r_text: 7.0 };
        let losses = loss(&model, &input_ids(), &sample_masks(), weights).unwrap();
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

/// RUDOLPH-350M's layout at hidden size 32 (scripts/fixtures/geometry_fixtures.py): the
/// 16x16 grid, 64 + 64 text, kernels 7 and 9 and all 24 layers, so masks the small
/// fixture above never builds.
mod geometry_350m {
    use super::*;
    use std::collections::HashMap;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/geometry_350m")
    }

    fn files() -> ModelFiles {
        let files = local_model(&dir()).unwrap();
        // The fixture only tests 350M if all but its sizes are the preset's.
        let c = &files.config;
        let sized = RudolphConfig {
            hidden_size: c.hidden_size,
            num_attention_heads: c.num_attention_heads,
            vocab_size: c.vocab_size,
            image_vocab_size: c.image_vocab_size,
            ..RudolphConfig::rudolph_350m()
        };
        assert_eq!(*c, sized, "fixture config differs from the 350M preset beyond its sizes");
        files
    }

    fn npy(name: &str) -> Tensor {
        Tensor::read_npy(dir().join(name)).unwrap()
    }

    /// `(row, col)` of every position where two square 0/1 masks differ.
    fn differences(ours: &[f32], reference: &[f32], size: usize) -> Vec<(usize, usize)> {
        assert_eq!(ours.len(), reference.len());
        (0..ours.len()).filter(|&i| ours[i] != reference[i]).map(|i| (i / size, i % size)).collect()
    }

    #[test]
    fn the_350m_layer_masks_equal_the_reference_buffers() {
        let cfg = files().config;
        let reference: HashMap<String, Tensor> =
            Tensor::read_npz(dir().join("masks.npz")).unwrap().into_iter().collect();
        let kinds: Vec<i64> = (0..cfg.num_layers).map(|i| layer_mask_kind(i, cfg.num_layers) as i64).collect();
        assert_eq!(kinds, reference["layer_kinds"].to_vec1::<i64>().unwrap(), "per-layer mask kinds");
        let (l, grid) = (cfg.l_text_seq_length, cfg.image_tokens_per_dim);
        for (name, mask) in ["row", "col", "conv", "last_conv"].iter().zip(layer_masks(&cfg).iter()) {
            let want: Vec<f32> =
                reference[*name].to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let diffs = differences(&mask.data, &want, mask.size);
            // Name the first difference as image cells too, where it lies in the grid.
            let cell = |p: usize| (p >= l && p < l + grid * grid).then(|| ((p - l) / grid, (p - l) % grid));
            if let Some(&(row, col)) = diffs.first() {
                panic!(
                    "{name} mask: {} entries differ, first at ({row}, {col}) (image cells {:?} -> {:?}): ours {}, reference {}",
                    diffs.len(),
                    cell(row),
                    cell(col),
                    mask.get(row, col),
                    want[row * mask.size + col]
                );
            }
        }
    }

    /// The model in `dtype`, the input ids, the per-sample attention mask, the reference
    /// logits and their largest magnitude.
    fn case(dtype: DType) -> (Rudolph, Tensor, Tensor, Tensor, f32) {
        let files = files();
        let model = load_model(&files, &Device::Cpu, dtype).unwrap();
        let r_text_masks: Vec<Vec<f32>> = npy("r_text_masks.npy").to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        let mask = attention_mask(&files.config, &r_text_masks, &Device::Cpu).unwrap();
        let ids = npy("input_ids.npy").to_dtype(DType::U32).unwrap();
        let reference = npy("logits.npy");
        let scale = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        (model, ids, mask, reference, scale)
    }

    #[test]
    fn the_350m_mask_geometry_matches_the_reference_logits() {
        let (model, ids, mask, reference, scale) = case(DType::F32);
        let logits = model.forward(&ids, &mask, None).unwrap();
        let diff = max_abs_diff(&logits, &reference);
        assert!(diff <= 1e-4 * scale, "max abs diff {diff} (largest reference logit {scale})");
    }

    /// Generation reads the mask rows a position at a time: single image tokens at the
    /// grid's first cells, a row's end, the next row's start and the last cell, chunks
    /// across rows, then all of r_text.
    #[test]
    fn cached_decoding_at_the_350m_geometry_matches_the_reference() {
        let (model, ids, mask, reference, scale) = case(DType::F32);
        let mut cache = model.new_cache();
        let mut pieces = Vec::new();
        let mut start = 0;
        for len in [64, 1, 1, 13, 1, 1, 16, 100, 122, 1, 64] {
            pieces.push(model.forward(&ids.narrow(1, start, len).unwrap(), &mask, Some(&mut cache)).unwrap());
            start += len;
        }
        let diff = max_abs_diff(&Tensor::cat(&pieces, 1).unwrap(), &reference);
        assert!(diff <= 1e-4 * scale, "max abs diff {diff} (largest reference logit {scale})");
    }

    /// f16 takes the op-by-op path, which spreads the layer masks to the scores' shape.
    #[test]
    fn the_op_by_op_path_at_the_350m_geometry_matches_the_reference() {
        let (model, ids, mask, reference, scale) = case(DType::F16);
        let logits = model.forward(&ids, &mask, None).unwrap().to_dtype(DType::F32).unwrap();
        let diff = max_abs_diff(&logits, &reference);
        assert!(diff <= 1e-2 * scale, "max abs diff {diff} (largest reference logit {scale})");
    }
}
