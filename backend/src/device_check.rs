//! `borscht device-check`: does this device (and dtype) compute what the reference does?
//!
//! Runs the committed reference fixtures (a small RUDOLPH and a small VQGAN, made by the
//! PyTorch reference: `scripts/fixtures/`) on the chosen device and compares with the
//! reference's own numbers and with our CPU f32 result. Made for the GPU machine, which
//! has no Rust toolchain: the same binary that serves checks itself there. The dtype is
//! the transformer's; the VQGAN always runs in f32 ([`VQGAN_DTYPE`]).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::path::Path;

use crate::model::masks::attention_mask;
use crate::model::vqgan::load_vqgan;
use crate::model::weights::{load_model, local_model};
use crate::pipelines::engine::VQGAN_DTYPE;

/// How far one device/dtype may drift from the reference: the absolute error,
/// relative to the largest reference magnitude (so logits and pixels share a rule).
pub fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 1e-2,
        // 8 mantissa bits: about 4e-3 per rounding, a few roundings deep.
        _ => 4e-2,
    }
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub what: String,
    /// max |ours - reference| / max |reference|
    pub relative_to_reference: f32,
    /// max |ours - ours on the CPU in f32| / max |reference|
    pub relative_to_cpu_f32: f32,
    pub tolerance: f32,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub dtype: String,
    pub checks: Vec<Comparison>,
    /// Share of the reference VQGAN codes reproduced by encoding on this device.
    pub vqgan_code_agreement: f32,
    pub ok: bool,
}

fn max_abs(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_scalar()?)
}

fn compare(what: &str, ours: &Tensor, cpu: &Tensor, reference: &Tensor, dtype: DType) -> Result<Comparison> {
    let ours = ours.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let reference = reference.to_dtype(DType::F32)?;
    anyhow::ensure!(
        ours.dims() == reference.dims(),
        "{what}: shape {:?}, reference {:?}",
        ours.dims(),
        reference.dims()
    );
    let scale = max_abs(&reference)?.max(1e-6);
    let relative_to_reference = max_abs(&(&ours - &reference)?)? / scale;
    let relative_to_cpu_f32 = max_abs(&(&ours - cpu)?)? / scale;
    let tolerance = tolerance(dtype);
    Ok(Comparison {
        what: what.into(),
        relative_to_reference,
        relative_to_cpu_f32,
        tolerance,
        ok: relative_to_reference <= tolerance,
    })
}

fn npy(dir: &Path, name: &str) -> Result<Tensor> {
    let path = dir.join(name);
    Tensor::read_npy(&path).with_context(|| format!("cannot read the fixture {}", path.display()))
}

/// `fixtures`: the folder holding `transformer/` and `vqgan/` (backend/tests/fixtures).
pub fn run(fixtures: &Path, device: &Device, dtype: DType) -> Result<Report> {
    let mut checks = Vec::new();

    let dir = fixtures.join("transformer");
    let files = local_model(&dir)?;
    let ids = npy(&dir, "input_ids.npy")?.to_dtype(DType::U32)?;
    let r_text_masks: Vec<Vec<f32>> = npy(&dir, "r_text_masks.npy")?.to_dtype(DType::F32)?.to_vec2()?;
    let logits_on = |device: &Device, dtype: DType| -> Result<Tensor> {
        let model = load_model(&files, device, dtype)?;
        let mask = attention_mask(&files.config, &r_text_masks, device)?.to_dtype(dtype)?;
        Ok(model.forward(&ids.to_device(device)?, &mask, None)?)
    };
    let cpu = logits_on(&Device::Cpu, DType::F32)?;
    let ours = logits_on(device, dtype)?;
    checks.push(compare("transformer logits", &ours, &cpu, &npy(&dir, "logits.npy")?, dtype)?);

    let dir = fixtures.join("vqgan");
    let codes = npy(&dir, "codes.npy")?.to_dtype(DType::U32)?;
    let cpu = load_vqgan(&dir, &Device::Cpu, DType::F32)?.decode(&codes)?;
    let vqgan = load_vqgan(&dir, device, VQGAN_DTYPE)?;
    let ours = vqgan.decode(&codes.to_device(device)?)?;
    checks.push(compare("vqgan decode (f32)", &ours, &cpu, &npy(&dir, "decoded.npy")?, VQGAN_DTYPE)?);
    let images = npy(&dir, "images.npy")?.to_device(device)?;
    let encoded: Vec<u32> = vqgan.encode(&images)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let expected: Vec<u32> = codes.flatten_all()?.to_vec1()?;
    let same = encoded.iter().zip(&expected).filter(|(a, b)| a == b).count();
    let vqgan_code_agreement = same as f32 / expected.len().max(1) as f32;

    let ok = checks.iter().all(|c| c.ok) && vqgan_code_agreement == 1.0;
    Ok(Report {
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}").to_lowercase(),
        checks,
        vqgan_code_agreement,
        ok,
    })
}
