//! The one decoding loop of every sampler (captions, text continuations, image codes):
//! the prompts run once, each row gets its copy of a prompt's cache, then every step
//! feeds one id per row and returns each row's logits; rows leave as their sampler drops
//! them. The samplers bring their own policy (what to draw, when a row is done, progress,
//! cancelling); this module owns the KV cache and how a step runs.
//!
//! A step runs eagerly (the CPU; and wherever graphs are off), or on a GPU as a static
//! step lent by the engine's [`StepPool`]: a KV cache of a fixed number of rows, captured
//! once as a CUDA graph and replayed at every step of every later request of its kind.
//! Rows that finish stay in a static step (their results are ignored), so its shapes and
//! addresses never change.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::Engine;
use borscht_model::graph::{self, StepGraph};
use borscht_model::masks::{causal_mask, t2t_attention_mask};
use borscht_model::transformer::{Head, KvCache, LayerMasks};

/// The sample mask a generation decodes under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// Lower-triangular (captions, image codes).
    Causal,
    /// `get_t2t_attention_mask`: l_text only (text continuation).
    TextToText,
}

/// What a decoding reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeSpec {
    pub mask: MaskKind,
    /// The vocabulary whose logits the steps compute ...
    pub head: Head,
    /// ... and the ids of it the sampler draws from (relative to the head).
    pub vocab: Range<usize>,
    /// Positions the cache holds (prompt + every step).
    pub capacity: usize,
}

fn sample_mask(engine: &Engine, kind: MaskKind) -> Result<Tensor> {
    let cfg = engine.model.config();
    Ok(match kind {
        MaskKind::Causal => causal_mask(cfg, 1, &engine.device)?,
        MaskKind::TextToText => t2t_attention_mask(cfg, 1, &engine.device)?,
    })
}

/// Rows decoding in lock step.
pub struct Decoding<'e> {
    engine: &'e Engine,
    spec: DecodeSpec,
    masks: LayerMasks,
    runner: Runner,
    /// The row (as first given) that each active row is.
    rows: Vec<usize>,
    /// Position of the next id fed.
    position: usize,
}

enum Runner {
    Eager(KvCache),
    Static(Box<StaticStep>),
    /// The static step went back to the pool (while dropping).
    Returned,
}

impl<'e> Decoding<'e> {
    /// Runs each prompt once (`prompts` of equal length) and gives row `k` a copy of
    /// prompt `row_prompts[k]`'s cache. Returns the decoding and each row's logits for
    /// the position after its prompt.
    pub fn start(
        engine: &'e Engine,
        spec: DecodeSpec,
        prompts: &[Vec<u32>],
        row_prompts: &[usize],
    ) -> Result<(Self, Vec<Vec<f32>>)> {
        let model = &engine.model;
        let prompt_len = prompts.first().map_or(0, Vec::len);
        if prompt_len == 0 || prompts.iter().any(|p| p.len() != prompt_len) {
            anyhow::bail!("prompts of one decoding must be non-empty and of one length");
        }
        let masks = model.layer_masks(&sample_mask(engine, spec.mask)?)?;
        let mut cache = model.new_cache_with_capacity(spec.capacity);
        let ids = Tensor::from_vec(prompts.concat(), (prompts.len(), prompt_len), &engine.device)?;
        let hidden = model.forward_masked(&ids, &masks, Some(&mut cache))?;
        let logits = model.head_logits(&hidden.narrow(1, prompt_len - 1, 1)?, spec.head)?.squeeze(1)?;
        let prompt_rows = host_rows(&logits, &spec.vocab)?;
        let expand: Vec<u32> = row_prompts.iter().map(|&p| p as u32).collect();
        cache.select(&Tensor::from_vec(expand, row_prompts.len(), &engine.device)?)?;
        let runner = match engine.steps.lend(engine, &spec, row_prompts.len(), prompt_len)? {
            Some(mut step) => {
                cache.copy_into(&mut step.cache)?;
                Runner::Static(step)
            }
            None => Runner::Eager(cache),
        };
        let first = row_prompts.iter().map(|&p| prompt_rows[p].clone()).collect();
        let decoding =
            Decoding { engine, spec, masks, runner, rows: (0..row_prompts.len()).collect(), position: prompt_len };
        Ok((decoding, first))
    }

    /// How many rows are still decoding.
    pub fn active(&self) -> usize {
        self.rows.len()
    }

    /// Keeps only the active rows at `keep` (indices into the active rows, in order).
    pub fn keep(&mut self, keep: &[usize]) -> Result<()> {
        if keep.len() == self.rows.len() {
            return Ok(());
        }
        self.rows = keep.iter().map(|&k| self.rows[k]).collect();
        if let Runner::Eager(cache) = &mut self.runner {
            let indices: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
            cache.select(&Tensor::from_vec(indices, keep.len(), &self.engine.device)?)?;
        }
        Ok(())
    }

    /// Feeds `ids` (one per active row) at the next position; returns each active row's
    /// logits for the position after it.
    pub fn step(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let engine = self.engine;
        let capture = !engine.steps.no_capture.load(Ordering::Relaxed);
        let logits = match &mut self.runner {
            Runner::Eager(cache) => {
                let ids = Tensor::from_vec(ids.to_vec(), (ids.len(), 1), &engine.device)?;
                let hidden = engine.model.forward_masked(&ids, &self.masks, Some(cache))?;
                engine.model.head_logits(&hidden, self.spec.head)?.squeeze(1)?
            }
            Runner::Static(step) => {
                let mut all = vec![0u32; step.batch];
                for (&row, &id) in self.rows.iter().zip(ids) {
                    all[row] = id;
                }
                let logits = step.run(engine, &all, self.position, capture)?;
                let rows: Vec<u32> = self.rows.iter().map(|&r| r as u32).collect();
                logits.index_select(&Tensor::from_vec(rows, self.rows.len(), &engine.device)?, 0)?
            }
            Runner::Returned => anyhow::bail!("decoding already ended"),
        };
        self.position += 1;
        host_rows(&logits, &self.spec.vocab)
    }
}

impl Drop for Decoding<'_> {
    fn drop(&mut self) {
        if let Runner::Static(step) = std::mem::replace(&mut self.runner, Runner::Returned) {
            self.engine.steps.give_back(*step);
        }
    }
}

/// `[rows, head vocab]` logits to the host, the sampler's part of each row.
fn host_rows(logits: &Tensor, vocab: &Range<usize>) -> Result<Vec<Vec<f32>>> {
    let part = logits.narrow(1, vocab.start, vocab.len())?;
    Ok(part.to_dtype(DType::F32)?.to_vec2()?)
}

/// Rows of the static steps: a decoding takes the smallest that holds its rows (more
/// rows than the largest run eagerly).
const STEP_BATCHES: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];
/// Static steps kept (each holds a KV cache and its graph).
const MAX_STEPS: usize = 6;

/// The static steps of one engine, lent to one decoding at a time.
#[derive(Default)]
pub struct StepPool {
    idle: Mutex<Vec<StaticStep>>,
    /// Static steps on the CPU too (run eagerly): tests compare them with ordinary ones.
    on_cpu: AtomicBool,
    /// Off: static steps run eagerly instead of being captured (`device-check` compares
    /// a replayed graph with them).
    no_capture: AtomicBool,
    /// Graphs captured so far.
    captured: AtomicUsize,
}

impl StepPool {
    /// Decodes with static steps on the CPU too (run eagerly).
    pub fn set_static_on_cpu(&self, on: bool) {
        self.on_cpu.store(on, Ordering::Relaxed);
    }

    /// Captures static steps as CUDA graphs (the default) or runs them eagerly; drops the
    /// steps kept so far.
    pub fn set_capture(&self, on: bool) {
        self.no_capture.store(!on, Ordering::Relaxed);
        self.idle.lock().expect("step pool lock").clear();
    }

    /// How many CUDA graphs this engine has captured.
    pub fn captured(&self) -> usize {
        self.captured.load(Ordering::Relaxed)
    }
}

impl StepPool {
    /// A static step for `rows` rows of `spec` whose steps start at `position`, or None
    /// where steps run eagerly (the CPU, graphs off, too many rows).
    fn lend(
        &self,
        engine: &Engine,
        spec: &DecodeSpec,
        rows: usize,
        position: usize,
    ) -> Result<Option<Box<StaticStep>>> {
        let wanted = match engine.device {
            Device::Cuda(_) => graph::graphs_enabled(),
            _ => self.on_cpu.load(Ordering::Relaxed),
        };
        if !wanted {
            return Ok(None);
        }
        let Some(&batch) = STEP_BATCHES.iter().find(|&&b| b >= rows) else { return Ok(None) };
        let segment = engine.model.config().segment_of(position);
        let mut idle = self.idle.lock().expect("step pool lock");
        if let Some(k) = idle.iter().position(|s| s.batch == batch && s.spec == *spec && s.segment == segment) {
            return Ok(Some(Box::new(idle.remove(k))));
        }
        if idle.len() >= MAX_STEPS {
            idle.remove(0);
        }
        drop(idle);
        Ok(Some(Box::new(StaticStep::new(engine, spec, batch, segment)?)))
    }

    fn give_back(&self, step: StaticStep) {
        let mut idle = self.idle.lock().expect("step pool lock");
        if idle.len() >= MAX_STEPS {
            idle.remove(0);
        }
        idle.push(step);
    }
}

/// One decoding step with every shape and address fixed: `batch` rows of a static KV
/// cache, their ids in a device buffer, the position in the cache. Captured as a CUDA
/// graph at its first step; eager where capture is not possible.
struct StaticStep {
    spec: DecodeSpec,
    batch: usize,
    /// The segment its steps embed in (l_text, image or r_text: 0, 1, 2).
    segment: usize,
    /// The graph's output (declared before the graph: freed first).
    output: Option<Tensor>,
    graph: Option<StepGraph>,
    /// Capture was tried and is not possible here: run eagerly.
    eager: bool,
    ids: Tensor,
    masks: LayerMasks,
    cache: KvCache,
}

impl StaticStep {
    fn new(engine: &Engine, spec: &DecodeSpec, batch: usize, segment: usize) -> Result<Self> {
        let model = &engine.model;
        let masks = model.layer_masks(&sample_mask(engine, spec.mask)?)?.narrowed_to(spec.capacity)?;
        Ok(StaticStep {
            spec: spec.clone(),
            batch,
            segment,
            output: None,
            graph: None,
            eager: false,
            ids: Tensor::zeros((batch, 1), DType::U32, &engine.device)?,
            masks,
            cache: model.static_cache(batch, spec.capacity)?,
        })
    }

    /// The head's logits `[batch, vocab]` after feeding `ids` at `position`.
    fn run(&mut self, engine: &Engine, ids: &[u32], position: usize, capture: bool) -> Result<Tensor> {
        self.ids.slice_set(&Tensor::from_vec(ids.to_vec(), (self.batch, 1), &engine.device)?, 0, 0)?;
        self.cache.set_step_position(position)?;
        if capture && self.graph.is_none() && !self.eager {
            if let Err(e) = self.capture(engine) {
                tracing::warn!("decoding step of {} rows runs eagerly: CUDA graph capture failed: {e:#}", self.batch);
                self.eager = true;
            }
            self.cache.set_step_position(position)?;
        }
        match (&self.graph, &self.output) {
            (Some(graph), Some(output)) => {
                graph.launch()?;
                Ok(output.clone())
            }
            _ => Ok(engine.model.forward_step(&self.ids, &self.masks, &mut self.cache, self.spec.head)?),
        }
    }

    /// Two eager steps (every kernel loaded, every small upload cached), then the capture.
    fn capture(&mut self, engine: &Engine) -> Result<()> {
        let (model, head) = (&engine.model, self.spec.head);
        let position = self.cache.len();
        graph::with_upload_cache(&engine.device, || {
            for _ in 0..2 {
                self.cache.set_step_position(position)?;
                model.forward_step(&self.ids, &self.masks, &mut self.cache, head)?;
            }
            self.cache.set_step_position(position)
        })?;
        let (ids, masks, cache) = (&self.ids, &self.masks, &mut self.cache);
        match graph::capture(&engine.device, || model.forward_step(ids, masks, cache, head))? {
            Some((graph, output)) => {
                self.graph = Some(graph);
                self.output = Some(output);
                engine.steps.captured.fetch_add(1, Ordering::Relaxed);
            }
            None => self.eager = true,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use borscht_model::transformer::Head;

    fn max_relative_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = a.iter().flatten().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Static steps (a fixed number of rows over the whole cache, the position in device
    /// memory: what a GPU captures as a graph) give every row the logits ordinary steps
    /// give it, in every segment, while rows leave.
    #[test]
    fn static_steps_equal_ordinary_steps() {
        let engine = crate::random_model::random_engine("tiny", &candle_core::Device::Cpu, DType::F32).unwrap();
        let cfg = engine.model.config().clone();
        let (l, i) = (cfg.l_text_seq_length, cfg.image_seq_length());
        let codes: Vec<u32> = (0..i as u32).map(|k| k * 7 % 512).collect();
        let cases = [
            // Captions: two photos' prompts, three rows; r_text steps.
            (
                DecodeSpec {
                    mask: MaskKind::Causal,
                    head: Head::Text,
                    vocab: 0..cfg.text_vocab(),
                    capacity: cfg.total_seq_length(),
                },
                vec![
                    [vec![0; l], codes.clone(), vec![2, 40]].concat(),
                    [vec![0; l], codes.iter().map(|c| (c + 1) % 512).collect(), vec![2, 41]].concat(),
                ],
                vec![0, 1, 1],
            ),
            // Image codes: image steps.
            (
                DecodeSpec {
                    mask: MaskKind::Causal,
                    head: Head::Image,
                    vocab: 0..cfg.image_vocab_size,
                    capacity: l + i,
                },
                vec![(0..l as u32).map(|k| if k < 5 { 2 + k * 9 } else { 0 }).collect()],
                vec![0, 0],
            ),
            // Text continuation: l_text steps, pads (id 0) fed too.
            (
                DecodeSpec { mask: MaskKind::TextToText, head: Head::Text, vocab: 0..cfg.text_vocab(), capacity: l },
                vec![vec![2, 17, 33]],
                vec![0, 0, 0],
            ),
        ];
        for (spec, prompts, row_prompts) in cases {
            let steps = (spec.capacity - prompts[0].len()).min(6);
            let run = |static_steps: bool| {
                engine.steps.set_static_on_cpu(static_steps);
                let (mut decoding, first) = Decoding::start(&engine, spec.clone(), &prompts, &row_prompts).unwrap();
                assert_eq!(matches!(decoding.runner, Runner::Static(_)), static_steps);
                let mut all = vec![first];
                for step in 0..steps {
                    if step == 3 && decoding.active() > 1 {
                        decoding.keep(&(1..decoding.active()).collect::<Vec<_>>()).unwrap();
                    }
                    let ids: Vec<u32> = (0..decoding.active() as u32).map(|k| (k * 5 + step as u32 * 3) % 7).collect();
                    all.push(decoding.step(&ids).unwrap());
                }
                all
            };
            let (ordinary, fixed) = (run(false), run(true));
            for (k, (a, b)) in ordinary.iter().zip(&fixed).enumerate() {
                let diff = max_relative_diff(a, b);
                assert!(diff < 1e-5, "{spec:?}, step {k}: relative difference {diff}");
            }
        }
        // The pool keeps the static steps for the next decodings.
        assert!(!engine.steps.idle.lock().unwrap().is_empty());
    }
}
