//! `borscht bench`: the pipelines timed on a randomly initialised model (no files),
//! under the keys the reference harness uses, so the numbers can sit side by side.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;

use borscht_model::config::RudolphConfig;
use borscht_model::transformer::Rudolph;
use borscht_pipelines::generation::{caption, generate_codes, CaptionOptions, ImageOptions, CAPTION_TEMPLATE};
use borscht_pipelines::random_model::random_engine;
use borscht_pipelines::sampling::SamplingParams;
use borscht_pipelines::scoring::{classify, rerank_by_image, DEFAULT_BATCH};

/// One fine-tuning step as the article takes it: batch 10, attention and MLP frozen,
/// weighted loss, backward, clipping, AdamW.
struct TrainingStep {
    model: Rudolph,
    optimizer: borscht_train::optim::AdamW,
    ids: Tensor,
    mask: Tensor,
    weights: borscht_train::loss::LossWeights,
}

impl TrainingStep {
    fn new(cfg: &RudolphConfig, device: &Device, dtype: DType) -> Result<Self> {
        use borscht_model::masks::causal_mask;
        use borscht_train::loss::LossWeights;
        use borscht_train::optim::AdamW;
        use borscht_train::rudolph::Freeze;
        let varmap = VarMap::new();
        let mut model = Rudolph::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?;
        model.freeze_blocks(Freeze::ARTICLE.attention, Freeze::ARTICLE.mlp);
        let mut named: Vec<(String, candle_core::Var)> =
            varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let trainable = named.into_iter().filter(|(n, _)| !Freeze::ARTICLE.is_frozen(n)).collect();
        let optimizer = AdamW::new(trainable, 2e-5, 0.0)?;
        let (l, i, r) = (cfg.l_text_seq_length, cfg.image_seq_length(), cfg.r_text_seq_length);
        let row: Vec<u32> = (0..l)
            .map(|_| 0)
            .chain((0..i).map(|k| (k * 7 % cfg.image_vocab_size) as u32))
            .chain((0..r).map(|k| (4 + k * 13 % 900) as u32))
            .collect();
        let ids = Tensor::from_vec(row.repeat(10), (10, l + i + r), device)?;
        let mask = causal_mask(cfg, 1, device)?.to_dtype(dtype)?;
        let weights = LossWeights { l_text: 0.01, image: 1.0, r_text: 7.0 };
        Ok(TrainingStep { model, optimizer, ids, mask, weights })
    }

    fn loss(&self) -> Result<Tensor> {
        Ok(borscht_train::loss::loss(&self.model, &self.ids, &self.mask, self.weights)?.loss)
    }

    fn gradients(&self) -> Result<candle_core::backprop::GradStore> {
        Ok(self.loss()?.backward()?)
    }

    fn step(&mut self) -> Result<()> {
        let mut grads = self.gradients()?;
        let vars: Vec<&candle_core::Var> = self.optimizer.params().iter().map(|(_, v)| v).collect();
        borscht_train::optim::clip_grad_norm(&mut grads, &vars, 1.0)?;
        self.optimizer.step(&grads)
    }
}

/// Median and minimum seconds of `runs` timed calls after one warm-up. GPU work is
/// asynchronous: each call counts until the device has finished it.
fn time(device: &Device, runs: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<[f64; 2]> {
    f()?;
    device.synchronize()?;
    let mut seconds = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(|a, b| a.total_cmp(b));
    Ok([seconds[seconds.len() / 2], seconds[0]])
}

/// Runs every benchmark; the JSON maps each key to `[median_s, min_s]`, and on the CPU
/// `simd` to the SIMD levels that ran. `only` names the keys to run (all when empty).
pub fn run(preset: &str, device: &Device, dtype: DType, runs: usize, only: &[String]) -> Result<serde_json::Value> {
    let wanted = |key: &str| only.is_empty() || only.iter().any(|k| k == key);
    let engine = random_engine(preset, device, dtype)?;
    let cfg = engine.model.config().clone();
    let size = engine.image_size() as usize;
    let photo = Tensor::rand(0f32, 1f32, (1, 3, size, size), device)?;
    let codes: Vec<u32> = engine.vqgan.encode(&photo)?.squeeze(0)?.to_vec1()?;
    let article = SamplingParams::ARTICLE;
    // The reference samples every r_text position; so do these runs.
    let captions = |count: usize, seed: u64| CaptionOptions {
        template: CAPTION_TEMPLATE.into(),
        count,
        sampling: article,
        seed,
        stop_at_eos: false,
    };
    let texts: Vec<String> = (0..16).map(|i| format!("блюдо: кандидат {i}; белков: {i}; ккал: {};", i * 10)).collect();
    let classes: Vec<String> = (0..20).map(|i| format!("блюдо номер {i}")).collect();
    let images_16 = Tensor::rand(0f32, 1f32, (16, 3, size, size), device)?;
    let codes_4 = Tensor::from_vec(codes.repeat(4), (4, cfg.image_seq_length()), device)?;

    let mut report = serde_json::Map::new();
    if device.is_cpu() {
        // The same binary runs different code on different CPUs: say which.
        let simd = borscht_model::vector_math::simd_levels();
        eprintln!("CPU SIMD: kernels {}, matrix products {}", simd.kernels, simd.matrix_products);
        report.insert("simd".into(), serde_json::to_value(simd)?);
    }
    let mut record = |key: &str, bench: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        if !wanted(key) {
            return Ok(());
        }
        borscht_model::device::reset_memory_peak(device);
        let value = time(device, runs, bench)?;
        match borscht_model::device::memory_peak(device) {
            // On a GPU: [median, min, peak bytes allocated].
            Some(peak) => {
                eprintln!(
                    "{key:<26} median {:>9.4} s   min {:>9.4} s   peak {:>7.0} MiB",
                    value[0],
                    value[1],
                    peak as f64 / (1u64 << 20) as f64
                );
                report.insert(key.to_string(), serde_json::json!([value[0], value[1], peak]));
            }
            None => {
                eprintln!("{key:<26} median {:>9.4} s   min {:>9.4} s", value[0], value[1]);
                report.insert(key.to_string(), serde_json::json!(value));
            }
        }
        Ok(())
    };
    record("captions_16", &mut || caption(&engine, &codes, &captions(16, 1), |_| {}).map(|_| ()))?;
    // The product's recognition: 16 captions, then all of them re-ranked by the photo.
    record("captions_16_rerank", &mut || {
        let sampled = caption(&engine, &codes, &captions(16, 1), |_| {})?;
        borscht_pipelines::recognize::answer(&engine, &codes, sampled).map(|_| ())
    })?;
    record("captions_4_seed_settings", &mut || caption(&engine, &codes, &captions(4, 42), |_| {}).map(|_| ()))?;
    record("rerank_by_image_16", &mut || rerank_by_image(&engine, &texts, &codes, DEFAULT_BATCH).map(|_| ()))?;
    record("zs_clf_20", &mut || classify(&engine, &codes, &classes, "{}", DEFAULT_BATCH).map(|_| ()))?;
    let image_options = ImageOptions {
        count: 4,
        best_of: 1,
        sampling: SamplingParams::IMAGE,
        seed: 1,
        preview_every_rows: 0,
        stop: None,
    };
    record("codebooks_4", &mut || generate_codes(&engine, "борщ", &image_options, |_| {}).map(|_| ()))?;
    record("vae_decode_4", &mut || Ok(engine.vqgan.decode(&codes_4).map(|_| ())?))?;
    record("vae_encode_16", &mut || Ok(engine.vqgan.encode(&images_16).map(|_| ())?))?;
    if ["train_step_bs10", "train_loss_bs10", "train_loss_backward_bs10"].iter().any(|k| wanted(k)) {
        let mut training = TrainingStep::new(&cfg, device, dtype)?;
        record("train_step_bs10", &mut || training.step())?;
        // Diagnostics with no reference number: the step's forward, and forward + backward.
        record("train_loss_bs10", &mut || training.loss().map(|_| ()))?;
        record("train_loss_backward_bs10", &mut || training.gradients().map(|_| ()))?;
    }
    // Diagnostic: one step of a 16-row decoding as the samplers run it (on a GPU a static
    // step replayed from a CUDA graph: next to decode_step_16, the launch overhead saved),
    // the logits copied to the host included.
    if wanted("decode_step_16_static") {
        use borscht_model::transformer::Head;
        use borscht_pipelines::decoder::{DecodeSpec, Decoding, MaskKind};
        let (l, i) = (cfg.l_text_seq_length, cfg.image_seq_length());
        let spec =
            DecodeSpec { mask: MaskKind::Causal, head: Head::Image, vocab: 0..cfg.image_vocab_size, capacity: l + i };
        let (mut decoding, _) = Decoding::start(&engine, spec, &[vec![0; l]], &[0; 16])?;
        record("decode_step_16_static", &mut || decoding.step(&[5; 16]).map(|_| ()))?;
    }
    // Diagnostics: the transformer alone, to tell its time from the work around it
    // (sampling, masks, copies to the host).
    if !wanted("forward_16_rows") && !wanted("decode_step_16") {
        return Ok(serde_json::Value::Object(report));
    }
    let rows = Tensor::from_vec(
        (0..16 * cfg.total_seq_length()).map(|k| (k % 500) as u32).collect::<Vec<u32>>(),
        (16, cfg.total_seq_length()),
        device,
    )?;
    let mask = borscht_model::masks::causal_mask(&cfg, 1, device)?;
    record("forward_16_rows", &mut || Ok(engine.model.forward(&rows, &mask, None).map(|_| ())?))?;
    if wanted("decode_step_16") {
        let past = cfg.total_seq_length() - 1;
        let mut cache = engine.model.new_cache();
        engine.model.forward(&rows.narrow(0, 0, 1)?.narrow(1, 0, past)?, &mask, Some(&mut cache))?;
        cache.repeat_batch(16)?;
        let last = rows.narrow(1, past, 1)?;
        // One cached step of 16 sequences at the last position (each call writes the same
        // position again: the cache is cut back after it).
        record("decode_step_16", &mut || {
            let step = engine.model.forward(&last, &mask, Some(&mut cache)).map(|_| ());
            cache.truncate(past);
            Ok(step?)
        })?;
    }
    Ok(serde_json::Value::Object(report))
}
