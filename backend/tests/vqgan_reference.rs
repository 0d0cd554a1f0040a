//! The VQGAN against rudalle 1.1.3 / taming 0.0.1 (fixtures: scripts/fixtures/vqgan_fixtures.py).

use borscht_model::checkpoint;
use borscht_model::vqgan::{convert_vqgan, load_vqgan, read_vqgan_config, Vqgan, VqganConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan")
}

fn npy(name: &str) -> Tensor {
    Tensor::read_npy(fixtures().join(name)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn lightning_checkpoint_encodes_to_the_reference_codes() {
    // The fixture checkpoint carries an AttributeDict in hyper_parameters, like the Sber file.
    let vqgan = load_vqgan(&fixtures(), &Device::Cpu, DType::F32).unwrap();
    let codes = vqgan.encode(&npy("images.npy")).unwrap();
    let expected: Vec<Vec<u32>> = npy("codes.npy").to_dtype(DType::U32).unwrap().to_vec2().unwrap();
    assert_eq!(codes.to_vec2::<u32>().unwrap(), expected);
}

#[test]
fn decoding_matches_the_reference_pixels() {
    let vqgan = load_vqgan(&fixtures(), &Device::Cpu, DType::F32).unwrap();
    for (codes, decoded) in [("codes.npy", "decoded.npy"), ("random_codes.npy", "random_decoded.npy")] {
        let images = vqgan.decode(&npy(codes).to_dtype(DType::U32).unwrap()).unwrap();
        let diff = max_abs_diff(&images, &npy(decoded));
        assert!(diff <= 1e-4, "{codes}: max abs diff {diff}");
    }
}

#[test]
fn decoder_output_before_the_clamp_matches_the_reference() {
    // Most fixture pixels are clamped to 0 or 1, where decoded.npy says nothing. Scaling
    // the decoder's last conv by a power of two scales its output exactly, brings it
    // inside the clamp, and undoing (x + 1) / 2 and the scale gives the raw output back.
    let scale = 1.0 / 16.0;
    let mut tensors: std::collections::HashMap<String, Tensor> =
        checkpoint::read_all(&fixtures().join("vqgan.ckpt"), Some("state_dict")).unwrap().into_iter().collect();
    for name in ["decoder.conv_out.weight", "decoder.conv_out.bias"] {
        let scaled = (&tensors[name] * scale).unwrap();
        tensors.insert(name.to_string(), scaled);
    }
    let cfg = read_vqgan_config(&fixtures()).unwrap();
    let vqgan = Vqgan::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap();
    for (codes, raw) in [("codes.npy", "decoded_raw.npy"), ("random_codes.npy", "random_decoded_raw.npy")] {
        let expected = npy(raw);
        let largest: f32 = expected.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(largest as f64 * scale < 1.0, "{raw}: |x| up to {largest} is clamped even at scale {scale}");
        let images = vqgan.decode(&npy(codes).to_dtype(DType::U32).unwrap()).unwrap();
        let unscaled = ((images * 2.0).unwrap() - 1.0).unwrap().affine(1.0 / scale, 0.0).unwrap();
        let diff = max_abs_diff(&unscaled, &expected);
        assert!(diff <= 1e-4, "{raw}: max abs diff {diff} (values up to {largest})");
    }
}

#[test]
fn converted_safetensors_behave_the_same() {
    let dir = tempfile::tempdir().unwrap();
    convert_vqgan(&fixtures(), dir.path(), DType::F32).unwrap();
    let st = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(!st.keys().any(|k| k.starts_with("loss.")), "training-only tensors are dropped");
    let vqgan = load_vqgan(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let expected: Vec<Vec<u32>> = npy("codes.npy").to_dtype(DType::U32).unwrap().to_vec2().unwrap();
    assert_eq!(vqgan.encode(&npy("images.npy")).unwrap().to_vec2::<u32>().unwrap(), expected);
}

#[test]
fn gumbel_sampling_is_reproducible_by_seed() {
    let vqgan = load_vqgan(&fixtures(), &Device::Cpu, DType::F32).unwrap();
    let images = npy("images.npy");
    let a = vqgan.encode_sampled(&images, 7).unwrap().to_vec2::<u32>().unwrap();
    let b = vqgan.encode_sampled(&images, 7).unwrap().to_vec2::<u32>().unwrap();
    let c = vqgan.encode_sampled(&images, 8).unwrap().to_vec2::<u32>().unwrap();
    let argmax = vqgan.encode(&images).unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed draws other codes");
    assert_ne!(a, argmax, "sampling is not the argmax");
}

#[test]
fn a_mismatched_checkpoint_names_the_tensor_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("config.json")).unwrap()).unwrap();
    config["n_embed"] = 65.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(fixtures().join("vqgan.ckpt"), dir.path().join("vqgan.ckpt")).unwrap();
    let err = load_vqgan(dir.path(), &Device::Cpu, DType::F32).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("vqgan.ckpt") && message.contains("quantize.") && message.contains("65"), "{message}");
    // Converting the same mismatched pair fails the same way, and writes nothing.
    let out = dir.path().join("converted");
    let message = format!("{:#}", convert_vqgan(dir.path(), &out, DType::F32).unwrap_err());
    assert!(message.contains("vqgan.ckpt") && message.contains("quantize.") && message.contains("65"), "{message}");
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn the_sber_preset_maps_128px_to_16x16_codes_and_back() {
    let cfg = VqganConfig::sber();
    let varmap = VarMap::new();
    let vqgan = Vqgan::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let image = Tensor::rand(0f32, 1f32, (1, 3, 128, 128), &Device::Cpu).unwrap();
    let codes = vqgan.encode(&image).unwrap();
    assert_eq!(codes.dims(), [1, 256]);
    let max: u32 = codes.max_all().unwrap().to_scalar().unwrap();
    assert!(max < 8192);
    let decoded = vqgan.decode(&codes).unwrap();
    assert_eq!(decoded.dims(), [1, 3, 128, 128]);
    let (lo, hi): (f32, f32) =
        (decoded.min_all().unwrap().to_scalar().unwrap(), decoded.max_all().unwrap().to_scalar().unwrap());
    assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));
}
