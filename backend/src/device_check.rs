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

use borscht_model::masks::attention_mask;
use borscht_model::vqgan::load_vqgan;
use borscht_model::weights::{load_model, local_model};
use borscht_pipelines::engine::VQGAN_DTYPE;

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
    /// Each fused op with our kernels against candle's composite ops on the same device
    /// (`relative_to_reference`) and against the CPU in f32 (`relative_to_cpu_f32`),
    /// forward and backward.
    pub kernels: Vec<Comparison>,
    /// Decoding: static steps against ordinary steps, and replayed CUDA graphs against
    /// the same steps run eagerly (which must agree exactly).
    pub decoding: Vec<Comparison>,
    /// CUDA graphs captured by the decoding checks (0 on the CPU).
    pub graphs_captured: usize,
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

    let kernels = kernel_checks(device, dtype)?;
    let (decoding, graphs_captured) = decoding_checks(device, dtype)?;
    let graphs_expected = device.is_cuda() && borscht_model::graph::graphs_enabled();
    let ok = checks.iter().chain(&kernels).chain(&decoding).all(|c| c.ok)
        && vqgan_code_agreement == 1.0
        && (graphs_captured > 0 || !graphs_expected);
    Ok(Report {
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}").to_lowercase(),
        checks,
        kernels,
        decoding,
        graphs_captured,
        vqgan_code_agreement,
        ok,
    })
}

/// `max |a - b| / max |reference|` on the CPU in f32.
fn relative(a: &Tensor, b: &Tensor, reference: &Tensor) -> Result<f32> {
    let f32_cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
    let (a, b, reference) = (f32_cpu(a)?, f32_cpu(b)?, f32_cpu(reference)?);
    anyhow::ensure!(a.dims() == b.dims(), "shapes {:?} and {:?}", a.dims(), b.dims());
    Ok(max_abs(&(&a - &b)?)? / max_abs(&reference)?.max(1e-6))
}

/// One fused op: `run(device, dtype)` returns its outputs (forward values, then
/// gradients); ours on `device` is compared with the composite on `device` and with the
/// CPU in f32.
/// A fused op's named outputs on a device, in a dtype.
type OpOutputs<'a> = dyn Fn(&Device, DType) -> Result<Vec<(String, Tensor)>> + 'a;

fn kernel_comparisons(what: &str, device: &Device, dtype: DType, run: &OpOutputs) -> Result<Vec<Comparison>> {
    use borscht_model::fused::set_cuda_kernels;
    set_cuda_kernels(true);
    let ours = run(device, dtype);
    set_cuda_kernels(false);
    let composite = run(device, dtype);
    set_cuda_kernels(true);
    let cpu = run(&Device::Cpu, DType::F32)?;
    let (ours, composite) = (ours?, composite?);
    let tolerance = tolerance(dtype);
    let mut comparisons = Vec::new();
    for (((name, ours), (_, composite)), (_, cpu)) in ours.iter().zip(&composite).zip(&cpu) {
        let relative_to_reference = relative(ours, composite, cpu)?;
        let relative_to_cpu_f32 = relative(ours, cpu, cpu)?;
        comparisons.push(Comparison {
            what: format!("{what}: {name}"),
            relative_to_reference,
            relative_to_cpu_f32,
            tolerance,
            ok: relative_to_reference <= tolerance && relative_to_cpu_f32 <= tolerance,
        });
    }
    Ok(comparisons)
}

/// Seeded inputs, the same on every device (drawn on the CPU in f32, then moved).
fn input(shape: &[usize], seed: u64, scale: f32, device: &Device, dtype: DType) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

/// `sum(outputs * fixed weights)`'s gradients with respect to `inputs`.
fn gradients(output: &Tensor, inputs: &[&candle_core::Var], device: &Device, dtype: DType) -> Result<Vec<Tensor>> {
    let weights = input(output.dims(), 99, 1.0, device, dtype)?;
    let grads = (output * weights)?.to_dtype(DType::F32)?.sum_all()?.backward()?;
    inputs.iter().map(|v| grads.get(v.as_tensor()).cloned().ok_or_else(|| anyhow::anyhow!("no gradient"))).collect()
}

fn kernel_checks(device: &Device, dtype: DType) -> Result<Vec<Comparison>> {
    use borscht_model::fused::{self, AttentionMask, NormWeights};
    use candle_core::Var;
    let mut all = Vec::new();
    // Masked softmax over a decoding-like and a prefill-like shape, forward and backward.
    for (b, h, n, t) in [(3, 4, 1, 40), (2, 4, 9, 9)] {
        all.extend(kernel_comparisons(&format!("masked softmax [{b},{h},{n},{t}]"), device, dtype, &|dev, dt| {
            let scores = Var::from_tensor(&input(&[b, h, n, t], 1, 6.0, dev, dt)?)?;
            let keep = input(&[1, 1, n, t], 2, 1.0, dev, DType::F32)?.ge(-0.3)?.to_dtype(dt)?;
            let mask = AttentionMask::new(&keep, b, h)?;
            let probs = fused::masked_softmax(scores.as_tensor(), &mask, true)?;
            let grad = gradients(&probs, &[&scores], dev, dt)?.remove(0);
            let inference = fused::masked_softmax(scores.as_tensor(), &mask, false)?;
            Ok(vec![("forward".into(), probs), ("backward".into(), grad), ("inference".into(), inference)])
        })?);
    }
    all.extend(kernel_comparisons("layer norm (training)", device, dtype, &|dev, dt| {
        let x = Var::from_tensor(&(input(&[5, 48], 3, 2.0, dev, dt)? + 0.5)?)?;
        let w = Var::from_tensor(&(input(&[48], 4, 0.5, dev, dt)? + 1.0)?)?;
        let bias = Var::from_tensor(&input(&[48], 5, 0.5, dev, dt)?)?;
        let y = fused::layer_norm(x.as_tensor(), w.as_tensor(), bias.as_tensor(), 1e-5, true)?;
        let mut grads = gradients(&y, &[&x, &w, &bias], dev, dt)?;
        let db = grads.pop().expect("three");
        let dw = grads.pop().expect("three");
        Ok(vec![("forward".into(), y), ("dx".into(), grads.remove(0)), ("dw".into(), dw), ("db".into(), db)])
    })?);
    all.extend(kernel_comparisons("tanh GELU", device, dtype, &|dev, dt| {
        let x = Var::from_tensor(&input(&[7, 33], 6, 4.0, dev, dt)?)?;
        let y = fused::gelu(x.as_tensor())?;
        let grad = gradients(&y, &[&x], dev, dt)?.remove(0);
        let bias = input(&[33], 7, 1.0, dev, dt)?;
        let biased = fused::bias_gelu(x.as_tensor(), &bias, false)?;
        Ok(vec![("forward".into(), y), ("backward".into(), grad), ("bias + GELU".into(), biased)])
    })?);
    all.extend(kernel_comparisons("residual + norms", device, dtype, &|dev, dt| {
        let (x, y) = (input(&[2, 3, 64], 8, 3.0, dev, dt)?, input(&[2, 3, 64], 9, 3.0, dev, dt)?);
        let bias = input(&[64], 10, 1.0, dev, dt)?;
        let (wa, ba) = ((input(&[64], 11, 0.3, dev, dt)? + 1.0)?, input(&[64], 12, 0.3, dev, dt)?);
        let (wb, bb) = ((input(&[64], 13, 0.3, dev, dt)? + 1.0)?, input(&[64], 14, 0.3, dev, dt)?);
        let (a, b) = (NormWeights { weight: &wa, bias: &ba }, NormWeights { weight: &wb, bias: &bb });
        let (r, n) = fused::residual_norm(&x, &y, Some(&bias), Some(a), b, 1e-5, false)?;
        let (r_plain, n_plain) = fused::residual_norm(&x, &y, None, None, b, 1e-5, false)?;
        Ok(vec![
            ("residual".into(), r),
            ("norm".into(), n),
            ("residual, no bias or sandwich".into(), r_plain),
            ("norm, no bias or sandwich".into(), n_plain),
        ])
    })?);
    all.extend(kernel_comparisons("q/k/v split into the cache", device, dtype, &|dev, dt| {
        let (b, n, heads, d, capacity) = (2, 3, 4, 8, 16);
        let qkv = input(&[b, n, 3 * heads * d], 15, 2.0, dev, dt)?;
        let bias = input(&[3 * heads * d], 16, 0.5, dev, dt)?;
        let kv = Tensor::zeros((2, b, heads, capacity, d), dt, dev)?;
        let position = Tensor::new(&[5u32], dev)?;
        let q = fused::qkv_split(&qkv, &bias, &kv, &position, heads, 0.125)?;
        Ok(vec![("q".into(), q), ("k and v in the cache".into(), kv)])
    })?);
    Ok(all)
}

/// The tiny preset's decodings (captions' r_text steps, image codes, text continuation)
/// fed fixed ids: ordinary steps, static steps run eagerly, and static steps replayed
/// from CUDA graphs. Returns the comparisons and how many graphs were captured.
fn decoding_checks(device: &Device, dtype: DType) -> Result<(Vec<Comparison>, usize)> {
    use borscht_model::transformer::Head;
    use borscht_pipelines::decoder::{DecodeSpec, Decoding, MaskKind};
    let engine = borscht_pipelines::random_model::random_engine("tiny", device, dtype)?;
    let cfg = engine.model.config().clone();
    let (l, i) = (cfg.l_text_seq_length, cfg.image_seq_length());
    let codes: Vec<u32> = (0..i as u32).map(|k| k * 7 % 512).collect();
    let specs = [
        (
            "captions",
            DecodeSpec {
                mask: MaskKind::Causal,
                head: Head::Text,
                vocab: 0..cfg.text_vocab(),
                capacity: cfg.total_seq_length(),
            },
            vec![[vec![0; l], codes.clone(), vec![2, 40]].concat()],
            vec![0; 5],
        ),
        (
            "image codes",
            DecodeSpec { mask: MaskKind::Causal, head: Head::Image, vocab: 0..cfg.image_vocab_size, capacity: l + i },
            vec![(0..l as u32).map(|k| if k < 5 { 2 + k * 9 } else { 0 }).collect()],
            vec![0; 3],
        ),
        (
            "text continuation",
            DecodeSpec { mask: MaskKind::TextToText, head: Head::Text, vocab: 0..cfg.text_vocab(), capacity: l },
            vec![vec![2, 17, 33]],
            vec![0; 2],
        ),
    ];
    let decode = |spec: &DecodeSpec, prompts: &[Vec<u32>], rows: &[usize]| -> Result<Tensor> {
        let (mut decoding, first) = Decoding::start(&engine, spec.clone(), prompts, rows)?;
        let mut all = vec![first];
        for step in 0..6u32 {
            let ids: Vec<u32> = (0..decoding.active() as u32).map(|k| (k * 5 + step * 3) % 7 + 4).collect();
            all.push(decoding.step(&ids)?);
        }
        let flat: Vec<f32> = all.into_iter().flatten().flatten().collect();
        Ok(Tensor::new(flat, &Device::Cpu)?)
    };
    let graphs = borscht_model::graph::graphs_enabled();
    let mut comparisons = Vec::new();
    for (what, spec, prompts, rows) in specs {
        borscht_model::graph::set_graphs_enabled(false);
        engine.static_steps().set_static_on_cpu(false);
        let ordinary = decode(&spec, &prompts, &rows);
        borscht_model::graph::set_graphs_enabled(true);
        engine.static_steps().set_static_on_cpu(true);
        engine.static_steps().set_capture(false);
        let eager_static = decode(&spec, &prompts, &rows);
        engine.static_steps().set_capture(true);
        let replayed = decode(&spec, &prompts, &rows);
        engine.static_steps().set_static_on_cpu(false);
        borscht_model::graph::set_graphs_enabled(graphs);
        let (ordinary, eager_static, replayed) = (ordinary?, eager_static?, replayed?);
        let static_vs_ordinary = relative(&eager_static, &ordinary, &ordinary)?;
        comparisons.push(Comparison {
            what: format!("{what}: static steps vs ordinary steps"),
            relative_to_reference: static_vs_ordinary,
            relative_to_cpu_f32: static_vs_ordinary,
            tolerance: tolerance(dtype),
            ok: static_vs_ordinary <= tolerance(dtype),
        });
        let replay_vs_eager = relative(&replayed, &eager_static, &eager_static)?;
        comparisons.push(Comparison {
            what: format!("{what}: replayed graph vs the same steps run eagerly"),
            relative_to_reference: replay_vs_eager,
            relative_to_cpu_f32: replay_vs_eager,
            tolerance: 0.0,
            ok: replay_vs_eager == 0.0,
        });
    }
    Ok((comparisons, engine.static_steps().captured()))
}
