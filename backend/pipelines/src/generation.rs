//! Sampling with the KV cache: captions of a photo, continuations of a text, and
//! images drawn from a text. Results are reported through a callback the moment
//! they exist (a caption when it reaches EOS, image previews every few rows), so a
//! server can stream them.
//!
//! All candidates of one request share one batched forward per step; the prompt is
//! run once and its cache repeated. Finished captions leave the batch.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::decoder::{DecodeSpec, Decoding, MaskKind};
use super::sampling::{sample, SamplingParams, DEFAULT_SEED};
use super::scoring::{caption_fit_of_images, check_codes, text_perplexities, CAPTION_CLASS_TEMPLATE, DEFAULT_BATCH};
use super::Engine;
use borscht_model::tokenizer::TextTokenizer;
use borscht_model::transformer::Head;

/// What a generation reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// `step` of `total` decoding steps done; `active` sequences still running.
    Progress { step: usize, total: usize, active: usize },
    /// A new distinct caption or text (in order of completion).
    Text { index: usize, text: String },
    /// Partial images (PNG) while codes are sampled: rows above are final, the rest repeat
    /// the last finished row.
    ImagePreview { rows_done: usize, rows_total: usize, pngs: Vec<Vec<u8>> },
}

/// The article's caption template: every caption continues it.
pub const CAPTION_TEMPLATE: &str = "блюдо:";
/// Captions a recognition samples unless asked for another number.
pub const DEFAULT_CAPTIONS: usize = 16;

/// Captioning options (the article: template `блюдо:`, 4 captions, top-k 16, top-p 0.6, T 0.8).
#[derive(Debug, Clone)]
pub struct CaptionOptions {
    pub template: String,
    pub count: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Drop a sequence from the batch at its first EOS (the product); `false` samples the
    /// full r_text like the reference (for benchmarks).
    pub stop_at_eos: bool,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        CaptionOptions {
            template: CAPTION_TEMPLATE.into(),
            count: DEFAULT_CAPTIONS,
            sampling: SamplingParams::ARTICLE,
            seed: 0,
            stop_at_eos: true,
        }
    }
}

/// Draws one text id per row; ids from `pad_start` on (the l_text pad-position range)
/// become EOS, as the reference does.
fn sample_text(rows: &[Vec<f32>], params: &SamplingParams, rng: &mut impl rand::Rng, pad_start: usize) -> Vec<u32> {
    rows.iter()
        .map(|row| {
            let id = sample(row, params, rng);
            if id as usize >= pad_start {
                TextTokenizer::EOS
            } else {
                id
            }
        })
        .collect()
}

/// Decodes `tokens` up to the first EOS and, when the text is new and not empty,
/// records it and reports it.
fn record_text(
    engine: &Engine,
    tokens: &[u32],
    seen: &mut Vec<String>,
    on_event: &mut impl FnMut(GenerationEvent),
) -> Result<()> {
    // A text ends at EOS, or at an id the tokenizer lacks: `generate_texts` keeps the first
    // l_text pad id (the reference's `>` threshold), which decodes to nothing.
    let vocab = engine.tokenizer.vocab_size() as u32;
    let end = tokens.iter().position(|&t| t == TextTokenizer::EOS || t >= vocab).unwrap_or(tokens.len());
    let text = engine.tokenizer.decode_text(&tokens[..end])?.trim().to_string();
    if !text.is_empty() && !seen.contains(&text) {
        seen.push(text.clone());
        on_event(GenerationEvent::Text { index: seen.len() - 1, text });
    }
    Ok(())
}

/// `generate_captions`: the photo's codes, the template as the start of r_text, then
/// sampled text tokens until EOS or the end of r_text. Ids of the l_text pad range
/// become EOS, as in the reference. Returns the distinct non-empty captions.
///
/// Unlike the reference (whose `limit_eos` counts EOS tokens instead of finding the
/// first), a caption ends at its first EOS.
pub fn caption(
    engine: &Engine,
    codes: &[u32],
    options: &CaptionOptions,
    mut on_event: impl FnMut(GenerationEvent),
) -> Result<Vec<String>> {
    let job = CaptionJob { codes, options, stop: None };
    caption_batch(engine, &[job], |_, event| on_event(event)).remove(0)
}

/// One photo to caption inside [`caption_batch`].
#[derive(Debug, Clone)]
pub struct CaptionJob<'a> {
    pub codes: &'a [u32],
    pub options: &'a CaptionOptions,
    /// Set from outside to drop this job's sequences at the next step.
    pub stop: Option<&'a AtomicBool>,
}

/// Returned by a job whose `stop` flag was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// Captions several photos at once: every job's candidates are rows of one batch, so
/// each decoding step is one forward for all of them (the server's dynamic batching).
/// Each job keeps its own random stream, so its captions are those [`caption`] gives
/// it alone. Events carry the job's index; each job gets its own result.
pub fn caption_batch(
    engine: &Engine,
    jobs: &[CaptionJob],
    mut on_event: impl FnMut(usize, GenerationEvent),
) -> Vec<Result<Vec<String>>> {
    let mut results: Vec<Option<Result<Vec<String>>>> = jobs.iter().map(|_| None).collect();
    let r = engine.model.config().r_text_seq_length;
    // Each job's template without its EOS (and padding): BOS + its ids. Prompts of one
    // group must have the same length; templates of different length run apart.
    let mut templates: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let checked = job
            .options
            .sampling
            .validate()
            .map_err(anyhow::Error::msg)
            .and_then(|_| check_codes(engine, job.codes))
            .and_then(|_| Ok(engine.check_known(&job.options.template)?))
            .and_then(|_| if job.options.count == 0 { bail!("ask for at least one caption") } else { Ok(()) });
        if let Err(e) = checked {
            results[index] = Some(Err(e));
            continue;
        }
        let mut template = engine.encode_text(&job.options.template, r);
        let template_len = template.iter().filter(|&&t| t != 0).count().saturating_sub(1).max(1);
        template.truncate(template_len);
        templates[index] = template;
        match groups.iter_mut().find(|(len, _)| *len == template_len) {
            Some((_, members)) => members.push(index),
            None => groups.push((template_len, vec![index])),
        }
    }
    for (_, members) in groups {
        let mut texts: Vec<Vec<String>> = vec![Vec::new(); members.len()];
        let outcome = caption_group(engine, jobs, &members, &templates, &mut texts, &mut on_event);
        for (k, &index) in members.iter().enumerate() {
            let stopped = jobs[index].stop.is_some_and(|s| s.load(Ordering::Relaxed));
            results[index] = Some(match &outcome {
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
                Ok(()) if stopped => Err(Cancelled.into()),
                Ok(()) => Ok(std::mem::take(&mut texts[k])),
            });
        }
    }
    results.into_iter().map(|r| r.expect("every job has an outcome")).collect()
}

/// The decoding of [`caption_batch`] for jobs whose prompts have the same length: every
/// job's candidates are rows of one [`Decoding`].
fn caption_group(
    engine: &Engine,
    jobs: &[CaptionJob],
    members: &[usize],
    templates: &[Vec<u32>],
    texts: &mut [Vec<String>],
    on_event: &mut impl FnMut(usize, GenerationEvent),
) -> Result<()> {
    let cfg = engine.model.config();
    let (l, r) = (cfg.l_text_seq_length, cfg.r_text_seq_length);
    let total_steps = r - templates[members[0]].len();
    let prompts: Vec<Vec<u32>> =
        members.iter().map(|&j| [vec![0; l], jobs[j].codes.to_vec(), templates[j].clone()].concat()).collect();
    // One row per candidate: (member, tokens so far).
    let mut rows: Vec<(usize, Vec<u32>)> = Vec::new();
    for (m, &j) in members.iter().enumerate() {
        rows.extend((0..jobs[j].options.count).map(|_| (m, templates[j].clone())));
    }
    let row_prompts: Vec<usize> = rows.iter().map(|(m, _)| *m).collect();
    let spec = DecodeSpec {
        mask: MaskKind::Causal,
        head: Head::Text,
        vocab: 0..cfg.text_vocab(),
        capacity: cfg.total_seq_length(),
    };
    let (mut decoding, mut last_rows) = Decoding::start(engine, spec, &prompts, &row_prompts)?;
    let mut rngs: Vec<rand::rngs::StdRng> =
        members.iter().map(|&j| rand::rngs::StdRng::seed_from_u64(jobs[j].options.seed)).collect();
    let stopped = |m: usize| jobs[members[m]].stop.is_some_and(|s| s.load(Ordering::Relaxed));

    for step in 0..total_steps {
        // Each member samples its own rows, in order, from its own stream.
        let mut next = vec![0u32; rows.len()];
        for (m, rng) in rngs.iter_mut().enumerate() {
            let mine: Vec<usize> = (0..rows.len()).filter(|&k| rows[k].0 == m).collect();
            let logits: Vec<Vec<f32>> = mine.iter().map(|&k| last_rows[k].clone()).collect();
            let sampled = sample_text(&logits, &jobs[members[m]].options.sampling, rng, cfg.text_vocab() - l);
            for (&k, id) in mine.iter().zip(sampled) {
                next[k] = id;
            }
        }
        let last_step = step + 1 == total_steps;
        let mut keep = Vec::with_capacity(rows.len());
        for (k, ((m, tokens), &id)) in rows.iter_mut().zip(&next).enumerate() {
            if stopped(*m) {
                continue;
            }
            tokens.push(id);
            let options = jobs[members[*m]].options;
            if (id == TextTokenizer::EOS && options.stop_at_eos) || last_step {
                record_text(engine, tokens, &mut texts[*m], &mut |event| on_event(members[*m], event))?;
            } else {
                keep.push(k);
            }
        }
        for (m, &job) in members.iter().enumerate() {
            if !stopped(m) {
                let active = keep.iter().filter(|&&k| rows[k].0 == m).count();
                on_event(job, GenerationEvent::Progress { step: step + 1, total: total_steps, active });
            }
        }
        if keep.is_empty() || last_step {
            break;
        }
        decoding.keep(&keep)?;
        rows = keep.iter().map(|&k| rows[k].clone()).collect();
        let ids: Vec<u32> = keep.iter().map(|&k| next[k]).collect();
        last_rows = decoding.step(&ids)?;
    }
    Ok(())
}

/// A continuation of the prompt with its l_text perplexity.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuedText {
    pub text: String,
    pub ppl: f32,
}

/// Text continuation options.
#[derive(Debug, Clone)]
pub struct TextOptions {
    pub count: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Raised from outside to stop sampling (the result is then [`Cancelled`]).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions { count: 8, sampling: SamplingParams::TEXT, seed: DEFAULT_SEED, stop: None }
    }
}

/// `generate_texts`: continue `prompt` in l_text (text-to-text mask), then rank the
/// distinct texts by perplexity, lowest first. Sampled ids above the l_text pad
/// threshold become EOS (the reference uses `>` here, `>=` for captions).
pub fn generate_texts(
    engine: &Engine,
    prompt: &str,
    options: &TextOptions,
    mut on_event: impl FnMut(GenerationEvent),
) -> Result<Vec<ContinuedText>> {
    let TextOptions { count, ref sampling, seed, ref stop } = *options;
    let stopped = || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
    sampling.validate().map_err(anyhow::Error::msg)?;
    engine.check_known(prompt)?;
    let cfg = engine.model.config();
    let l = cfg.l_text_seq_length;
    let encoded = engine.encode_text(prompt, l);
    let prompt_len = encoded.iter().filter(|&&t| t != 0).count().saturating_sub(1).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut texts: Vec<String> = Vec::new();
    let total_steps = l - prompt_len;
    let spec = DecodeSpec { mask: MaskKind::TextToText, head: Head::Text, vocab: 0..cfg.text_vocab(), capacity: l };
    for chunk_start in (0..count).step_by(DEFAULT_BATCH) {
        let n = (count - chunk_start).min(DEFAULT_BATCH);
        let prompt = encoded[..prompt_len].to_vec();
        let (mut decoding, mut rows) =
            Decoding::start(engine, spec.clone(), std::slice::from_ref(&prompt), &vec![0; n])?;
        let mut sequences: Vec<Vec<u32>> = vec![prompt; n];
        for step in 0..total_steps {
            if stopped() {
                return Err(Cancelled.into());
            }
            // The reference compares with `>` here (`>=` for captions).
            let next = sample_text(&rows, sampling, &mut rng, cfg.text_vocab() - l + 1);
            for (sequence, &id) in sequences.iter_mut().zip(&next) {
                sequence.push(id);
            }
            on_event(GenerationEvent::Progress { step: step + 1, total: total_steps, active: n });
            if step + 1 == total_steps || sequences.iter().all(|s| s.contains(&TextTokenizer::EOS)) {
                break;
            }
            rows = decoding.step(&next)?;
        }
        for sequence in sequences {
            record_text(engine, &sequence, &mut texts, &mut on_event)?;
        }
    }
    let ppl = text_perplexities(engine, &texts, DEFAULT_BATCH)?;
    let mut ranked: Vec<ContinuedText> =
        texts.into_iter().zip(ppl).map(|(text, ppl)| ContinuedText { text, ppl }).collect();
    ranked.sort_by(|a, b| a.ppl.total_cmp(&b.ppl));
    Ok(ranked)
}

/// Text-to-image options.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub count: usize,
    /// Each kept picture is the best of this many drawn: `count * best_of` are drawn and
    /// the `count` that best fit the text as a caption ([`caption_fit_of_images`]) are
    /// kept. 1 keeps every drawing.
    pub best_of: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Emit a preview after every this many rows of codes (0 = none).
    pub preview_every_rows: usize,
    /// Raised from outside to stop sampling (the result is then [`Cancelled`]).
    pub stop: Option<Arc<AtomicBool>>,
}

/// Images drawn from a text: codes and PNGs, best first.
#[derive(Debug, Clone)]
pub struct GeneratedImages {
    pub codes: Vec<Vec<u32>>,
    pub pngs: Vec<Vec<u8>>,
    /// Caption fit of the text after each picture (r_text perplexity, lower is better).
    pub caption_fit: Vec<f32>,
}

/// Text-to-image: [`generate_codes`] (`count * best_of` drawings), the `count` that best
/// fit the text as the caption `блюдо: {text};` kept, then the VQGAN draws them.
pub fn generate_image(
    engine: &Engine,
    text: &str,
    options: &ImageOptions,
    on_event: impl FnMut(GenerationEvent),
) -> Result<GeneratedImages> {
    if options.best_of == 0 {
        bail!("best_of must be at least 1");
    }
    let drawn = draw_codes(engine, text, options, options.count * options.best_of, on_event)?;
    let caption = CAPTION_CLASS_TEMPLATE.replace("{}", text.trim());
    let fit = caption_fit_of_images(engine, &caption, &drawn, DEFAULT_BATCH)?;
    let mut order: Vec<usize> = (0..drawn.len()).collect();
    order.sort_by(|&a, &b| fit[a].total_cmp(&fit[b]));
    order.truncate(options.count);
    let codes: Vec<Vec<u32>> = order.iter().map(|&k| drawn[k].clone()).collect();
    let pngs = decode_pngs(engine, &codes)?;
    Ok(GeneratedImages { codes, pngs, caption_fit: order.iter().map(|&k| fit[k]).collect() })
}

/// `generate_codebooks`: the text as l_text, `options.count` sets of image codes sampled
/// from the image logits (plain causal mask; the layer masks still apply).
pub fn generate_codes(
    engine: &Engine,
    text: &str,
    options: &ImageOptions,
    on_event: impl FnMut(GenerationEvent),
) -> Result<Vec<Vec<u32>>> {
    draw_codes(engine, text, options, options.count, on_event)
}

/// Samples `n` sets of codes; previews show the first `options.count`.
fn draw_codes(
    engine: &Engine,
    text: &str,
    options: &ImageOptions,
    n: usize,
    mut on_event: impl FnMut(GenerationEvent),
) -> Result<Vec<Vec<u32>>> {
    options.sampling.validate().map_err(anyhow::Error::msg)?;
    engine.check_known(text)?;
    let cfg = engine.model.config();
    let (l, i, t) = (cfg.l_text_seq_length, cfg.image_seq_length(), cfg.image_tokens_per_dim);
    if n == 0 {
        bail!("ask for at least one image");
    }
    let encoded = engine.encode_text(text, l);
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    // Only real codes are drawn (rc10 models add image special tokens after them).
    let spec =
        DecodeSpec { mask: MaskKind::Causal, head: Head::Image, vocab: 0..cfg.image_vocab_size, capacity: l + i };
    let (mut decoding, mut rows) = Decoding::start(engine, spec, &[encoded], &vec![0; n])?;
    let mut codes: Vec<Vec<u32>> = vec![Vec::with_capacity(i); n];
    for position in 0..i {
        let next: Vec<u32> = rows.iter().map(|row| sample(row, &options.sampling, &mut rng)).collect();
        for (c, &id) in codes.iter_mut().zip(&next) {
            c.push(id);
        }
        if options.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(Cancelled.into());
        }
        let done = position + 1;
        on_event(GenerationEvent::Progress { step: done, total: i, active: n });
        if options.preview_every_rows > 0 && done % (t * options.preview_every_rows) == 0 && done < i {
            let shown = codes.iter().take(options.count).map(|c| complete_rows(c, t)).collect::<Vec<_>>();
            let pngs = decode_pngs(engine, &shown)?;
            on_event(GenerationEvent::ImagePreview { rows_done: done / t, rows_total: t, pngs });
        }
        if done == i {
            break;
        }
        rows = decoding.step(&next)?;
    }
    Ok(codes)
}

/// Fills the rows not sampled yet with the last finished row, for a preview.
fn complete_rows(codes: &[u32], per_row: usize) -> Vec<u32> {
    let done_rows = codes.len() / per_row;
    let mut full = codes[..done_rows * per_row].to_vec();
    let last_row = full[full.len().saturating_sub(per_row)..].to_vec();
    while full.len() < per_row * per_row {
        full.extend_from_slice(&last_row);
    }
    full
}

fn decode_pngs(engine: &Engine, codes: &[Vec<u32>]) -> Result<Vec<Vec<u8>>> {
    let n = codes[0].len();
    let tensor = Tensor::from_vec(codes.concat(), (codes.len(), n), &engine.device)?;
    let images = engine.vqgan.decode(&tensor)?;
    (0..codes.len()).map(|k| Ok(crate::imaging::encode_png(&crate::imaging::to_rgb_image(&images.get(k)?)?))).collect()
}

#[cfg(test)]
mod text_end_tests {
    use super::*;

    #[test]
    fn a_text_ends_at_eos_or_at_an_id_outside_the_tokenizer() {
        let engine =
            crate::random_model::random_engine("tiny", &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let vocab = engine.tokenizer.vocab_size() as u32;
        let body = engine.encode_text("борщ", 8);
        let ids: Vec<u32> = body.iter().copied().filter(|&t| t > TextTokenizer::EOS).collect();
        let expected = engine.tokenizer.decode_text(&ids).unwrap().trim().to_string();
        for stop in [TextTokenizer::EOS, vocab, vocab + 3] {
            let tokens = [ids.clone(), vec![stop, ids[0]]].concat();
            let (mut seen, mut events) = (Vec::new(), Vec::new());
            record_text(&engine, &tokens, &mut seen, &mut |e| events.push(e)).unwrap();
            assert_eq!(seen, vec![expected.clone()], "stop id {stop}");
        }
    }
}
