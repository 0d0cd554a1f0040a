//! `borscht train`: the article's fine-tuning recipe as a robust command, also
//! training from scratch (the demo model has no pretrained start).
//!
//! Each step feeds `[zeros (L) | image codes | caption (R)]` with the plain causal
//! mask, takes the weighted loss (article: 0.01 / 1 / 7), clips gradients by global
//! norm, sets the OneCycle learning rate and beta1, and steps AdamW over the
//! unfrozen weights. The output directory is always a complete model directory
//! (weights, config, tokenizer, VQGAN) plus the optimiser state, so training can be
//! resumed exactly and the result served at once.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::augment::{Augmentation, StyleChanges};
use crate::data::{read_csv, Dataset, Sample};
use crate::dropout::DropoutDraw;
use crate::loss::{loss_against, LossWeights};
use crate::optim::{clip_grad_norm, AdamW, OneCycle};
use crate::{progress_bar, write_atomically};
use borscht_model::checkpoint::{write_all_atomically, FileWriter};
use borscht_model::config::RudolphConfig;
use borscht_model::masks::causal_mask;
use borscht_model::tokenizer::TextTokenizer;
use borscht_model::transformer::{Dropout, Rudolph};
use borscht_model::vqgan::{load_vqgan, Vqgan};
use borscht_model::weights::{self, CONFIG_FILE, SAFETENSORS_FILE};
use borscht_pipelines::engine::{BPE_FILE, VQGAN_DIR};
use borscht_pipelines::generation::{caption, CaptionOptions};
use borscht_pipelines::imaging::{self, ImageLimits};
use borscht_pipelines::nutrition::{atwater, parse_caption};
use borscht_pipelines::sampling::SamplingParams;
use borscht_pipelines::Engine;

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "train_state.json";
const LOG_FILE: &str = "train_log.csv";
const CURVE_FILE: &str = "loss_curve.png";

/// Which weight groups stay fixed (the article freezes attention and MLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub embeddings: bool,
    /// Only the image-code embeddings (`image_embeddings.weight`).
    pub image_embeddings: bool,
    pub layernorms: bool,
    pub attention: bool,
    pub mlp: bool,
    pub other: bool,
}

impl Freeze {
    pub const NOTHING: Freeze = Freeze {
        embeddings: false,
        image_embeddings: false,
        layernorms: false,
        attention: false,
        mlp: false,
        other: false,
    };
    /// The article's `freeze(...)` call. (Its name test `'attn' in name` never matches
    /// `attention.*`, so attention actually trained there; here it is frozen as intended.)
    pub const ARTICLE: Freeze = Freeze {
        embeddings: false,
        image_embeddings: false,
        layernorms: false,
        attention: true,
        mlp: true,
        other: false,
    };

    pub fn is_frozen(&self, name: &str) -> bool {
        if name.starts_with("image_embeddings.") {
            self.embeddings || self.image_embeddings
        } else if name.contains("layernorm") || name.starts_with("to_logits.0") {
            self.layernorms
        } else if name.contains("embeddings") {
            self.embeddings
        } else if name.contains(".mlp.") {
            self.mlp
        } else if name.contains(".attention.") {
            self.attention
        } else {
            self.other
        }
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub csv: PathBuf,
    pub images: PathBuf,
    pub out: PathBuf,
    /// A table of English dish names (columns `dish` and `en`) for the model's dish list.
    pub dish_names: Option<PathBuf>,
    /// Start from this model directory; `None` starts from scratch with `config`.
    pub init: Option<PathBuf>,
    /// For training from scratch: the shape, plus the tokenizer and VQGAN to use.
    pub config: Option<RudolphConfig>,
    pub tokenizer: Option<PathBuf>,
    pub vqgan: Option<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub max_lr: f64,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
    pub weight_decay: f64,
    pub clip: f64,
    pub loss_weights: LossWeights,
    pub freeze: Freeze,
    pub seed: u64,
    pub val_fraction: f64,
    /// Validate after every N-th epoch (0: only after the last one, which always is).
    pub validate_every: usize,
    pub save_every: usize,
    pub resume: bool,
    pub show_progress: bool,
    /// Set to stop after the current step (Ctrl-C): a checkpoint is written first.
    pub stop: Arc<AtomicBool>,
    /// Stop after this many optimiser steps in total (tests use it to simulate a crash).
    pub max_steps: Option<usize>,
    /// Share of training rows that also carry their dish name as left text, so the
    /// model learns text-to-image (the rest keep an empty left text, as captioning
    /// sees it). 0 trains exactly as the article does.
    pub left_text_share: f64,
    /// Augmented renderings per training picture (0: the pictures as they are); each
    /// epoch shows every picture as itself or one of them.
    pub augment: usize,
    /// Those renderings also change the drawing style now and then (outlines, flat
    /// colours, blur, hue; `StyleChanges::MIXED`).
    pub augment_styles: bool,
    /// Corrupts the input image codes during training (the targets stay clean).
    pub code_noise: CodeNoise,
    /// From scratch: how the image-code embeddings start.
    pub image_embeddings: ImageEmbeddingInit,
    /// Dropout probability for embeddings, attention and outputs alike; None uses the
    /// model config's three probabilities (the reference trains with 0.1).
    pub dropout: Option<f64>,
}

/// Input image-code corruption, a denoising objective: another drawing style of the same
/// dish changes many of its codes, so a model that still reads the dish with some codes
/// replaced should depend less on the exact codes of the styles it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CodeNoise {
    /// Probability that each input image code is replaced (0: none).
    pub rate: f64,
    /// 0: by any code, uniformly; k > 0: by one of the k codes nearest to it in the
    /// VQGAN's codebook (a look-alike patch).
    pub neighbours: usize,
}

/// How a model trained from scratch initialises its image-code embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ImageEmbeddingInit {
    /// normal(0, 0.02), like every other weight.
    Random,
    /// The VQGAN's codebook, standardised and carried to the hidden size by a seeded
    /// random projection (which keeps distances), with this standard deviation: codes
    /// that look alike start alike, so what the model learns of one code carries over
    /// to its neighbours, e.g. to the same food drawn in another style.
    Codebook { std: f64 },
}

/// One line of the training log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    pub loss: f32,
    pub l_text_loss: f32,
    pub image_loss: f32,
    pub r_text_loss: f32,
}

/// What validation measured after an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub epoch: usize,
    pub samples: usize,
    /// Greedy caption names the right dish.
    pub dish_accuracy: f64,
    /// Mean absolute kcal error where the caption states kcal (None if none did).
    pub kcal_mae: Option<f64>,
    /// Greedy captions whose numbers break the Atwater check.
    pub atwater_violations: usize,
}

impl Validation {
    /// One line for a log: `epoch 3: dish accuracy 80.0%, kcal MAE 12.5, Atwater violations 0/10`.
    pub fn summary(&self) -> String {
        format!(
            "epoch {}: dish accuracy {:.1}%, kcal MAE {}, Atwater violations {}/{}",
            self.epoch,
            self.dish_accuracy * 100.0,
            self.kcal_mae.map_or("n/a".into(), |m| format!("{m:.1}")),
            self.atwater_violations,
            self.samples
        )
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub validations: Vec<Validation>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub state: TrainState,
    pub interrupted: bool,
    pub logs: Vec<StepLog>,
}

struct Parts {
    cfg: RudolphConfig,
    tokenizer: TextTokenizer,
    vqgan: Vqgan,
    vqgan_dir: PathBuf,
    tokenizer_file: PathBuf,
}

fn parts(options: &TrainOptions, device: &Device) -> Result<Parts> {
    let (cfg, tokenizer_file, vqgan_dir) = match &options.init {
        Some(dir) => (weights::local_model(dir)?.config, dir.join(BPE_FILE), dir.join(VQGAN_DIR)),
        None => (
            options.config.clone().context("training from scratch needs a model config")?,
            options.tokenizer.clone().context("training from scratch needs --tokenizer")?,
            options.vqgan.clone().context("training from scratch needs --vqgan")?,
        ),
    };
    let tokenizer = TextTokenizer::load(&tokenizer_file)?;
    let vqgan = load_vqgan(&vqgan_dir, device, DType::F32)?;
    Ok(Parts { cfg, tokenizer, vqgan, vqgan_dir, tokenizer_file })
}

/// Each readable sample with the image codes of the picture and of its `augment`
/// renderings (index 0 is the picture itself), computed once per VQGAN and cached in
/// the output folder. A sample whose image cannot be decoded is reported and dropped.
fn encode_samples(
    samples: Vec<Sample>,
    parts: &Parts,
    cfg: &RudolphConfig,
    options: &TrainOptions,
    device: &Device,
) -> Result<Vec<(Sample, Vec<Vec<u32>>)>> {
    let cache_path = options.out.join("image_codes.safetensors");
    let mut cache: HashMap<String, Tensor> = if cache_path.is_file() {
        candle_core::safetensors::load(&cache_path, &Device::Cpu).unwrap_or_else(|e| {
            eprintln!(
                "the cached image codes in {} are unreadable ({e}); encoding the pictures again",
                cache_path.display()
            );
            HashMap::new()
        })
    } else {
        HashMap::new()
    };
    // A cached entry is trusted only if it is what the VQGAN gives: one code per image
    // position, each a code of its codebook.
    let (positions, codebook) = (cfg.image_seq_length(), parts.vqgan.config().n_embed);
    let valid = |codes: &Tensor| {
        codes.dtype() == DType::U32
            && codes.dims() == [positions]
            && codes.to_vec1::<u32>().is_ok_and(|c| c.iter().all(|&code| (code as usize) < codebook))
    };
    let cached = cache.len();
    cache.retain(|_, codes| valid(codes));
    if cache.len() < cached {
        eprintln!(
            "{} cached image codes in {} are not codes of this VQGAN (a damaged file?); encoding them again",
            cached - cache.len(),
            cache_path.display()
        );
    }
    let mut changed = cache.len() < cached;
    let size = borscht_model::image_side(cfg, parts.vqgan.config());
    let vqgan_stamp = std::fs::metadata(parts.vqgan_dir.join(borscht_model::vqgan::VQGAN_WEIGHTS_FILE))
        .or_else(|_| std::fs::metadata(&parts.vqgan_dir))
        .map(|m| format!("{}-{:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    let augmentation = Augmentation {
        styles: if options.augment_styles { StyleChanges::MIXED } else { StyleChanges::default() },
        ..Augmentation::default()
    };
    let style_key = if options.augment_styles { "-styles" } else { "" };
    let bar = progress_bar(samples.len() as u64, "image codes");
    if !options.show_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut encoded = Vec::with_capacity(samples.len());
    for sample in samples {
        bar.inc(1);
        // Augmented renderings depend on the seed and the picture, not on the CSV order.
        let keys: Vec<String> = (0..=options.augment)
            .map(|v| match v {
                0 => format!("{}|{size}|{vqgan_stamp}", sample.image.display()),
                v => format!("{}|{size}|{vqgan_stamp}|augment{style_key}-{}-{v}", sample.image.display(), options.seed),
            })
            .collect();
        if keys.iter().any(|k| !cache.contains_key(k)) {
            let image = match imaging::open_image(&sample.image, ImageLimits::default()) {
                Ok(image) => image.to_rgb8(),
                Err(e) => {
                    bar.suspend(|| eprintln!("skipping line {}: {}: {e}", sample.line, sample.image.display()));
                    continue;
                }
            };
            let path_hash = borscht_model::init::fnv1a(sample.image.to_string_lossy().as_bytes());
            let mut pictures = Vec::with_capacity(keys.len());
            for v in 0..keys.len() {
                let rendering = match v {
                    0 => image.clone(),
                    v => augmentation.apply(
                        &image,
                        &mut rand::rngs::StdRng::seed_from_u64(options.seed ^ path_hash ^ ((v as u64) << 48)),
                    ),
                };
                pictures.push(imaging::prepare(&image::DynamicImage::ImageRgb8(rendering), size, device)?);
            }
            // A few at a time: the VQGAN's activations grow with the batch.
            let mut codes = Vec::with_capacity(keys.len());
            for chunk in pictures.chunks(8) {
                codes.extend(parts.vqgan.encode(&Tensor::stack(chunk, 0)?)?.to_vec2::<u32>()?);
            }
            for (key, c) in keys.iter().zip(&codes) {
                cache.insert(key.clone(), Tensor::new(c.as_slice(), &Device::Cpu)?);
            }
            changed = true;
        }
        let codes = keys.iter().map(|k| cache[k].to_vec1::<u32>()).collect::<candle_core::Result<Vec<_>>>()?;
        encoded.push((sample, codes));
    }
    bar.finish_and_clear();
    if changed {
        write_atomically(&cache_path, |p| Ok(candle_core::safetensors::save(&cache, p)?))?;
    }
    Ok(encoded)
}

/// Trains; returns the final state. The output directory holds a loadable model.
/// Runs the article's fine-tuning (or training from scratch) as `options` say, resuming
/// from the checkpoint in `options.out` when asked.
pub fn train(options: &TrainOptions, device: &Device) -> Result<TrainOutcome> {
    check(options)?;
    Trainer::new(Arc::new(options.clone()), device)?.run()
}

/// What [`TrainingRun::advance`] did.
#[derive(Debug, Clone)]
pub enum Advance {
    /// One optimiser step.
    Step(StepLog),
    /// An epoch ended: its validation when one was due; a checkpoint was written.
    EpochEnd(Option<Validation>),
    /// Every epoch is done; nothing happened.
    Finished,
}

/// A run taken one piece at a time, for a caller that interleaves training with other
/// work on the same device (the server fine-tunes between request batches). It makes
/// exactly the steps [`train`] makes.
pub struct TrainingRun(Trainer);

impl TrainingRun {
    /// Reads and encodes the data and builds (or, with `resume`, restores) the model and
    /// the optimiser, as [`train`] does before its first step.
    pub fn new(options: TrainOptions, device: &Device) -> Result<Self> {
        check(&options)?;
        Ok(TrainingRun(Trainer::new(Arc::new(options), device)?))
    }

    pub fn advance(&mut self) -> Result<Advance> {
        self.0.advance()
    }

    /// Writes a checkpoint of where the run stands (`resume` continues from it exactly).
    pub fn save(&mut self) -> Result<()> {
        self.0.save()
    }

    /// The model as it stands, greedy-captioning the held-out rows.
    pub fn validate_now(&self) -> Result<Option<Validation>> {
        self.0.validate_now()
    }

    pub fn state(&self) -> &TrainState {
        &self.0.state
    }

    /// Optimiser steps the whole run makes.
    pub fn total_steps(&self) -> usize {
        self.0.schedule.total_steps
    }

    /// Rows trained on and held out.
    pub fn rows(&self) -> (usize, usize) {
        (self.0.data.rows(), self.0.data.validation.len())
    }
}

/// Refuses options that cannot make a run, before anything is read.
fn check(options: &TrainOptions) -> Result<()> {
    if options.batch_size == 0 || options.epochs == 0 {
        bail!("batch size and epochs must be positive");
    }
    if options.init.is_some() && options.image_embeddings != ImageEmbeddingInit::Random {
        bail!("--image-embeddings codebook is for training from scratch; a fine-tuned model keeps its own");
    }
    if let Some(p) = options.dropout.filter(|p| !(0.0..1.0).contains(p)) {
        bail!("dropout must be at least 0 and below 1, not {p}");
    }
    if !(0.0..=1.0).contains(&options.code_noise.rate) {
        bail!("the code-noise rate must be between 0 and 1, not {}", options.code_noise.rate);
    }
    if options.augment_styles && options.augment == 0 {
        bail!("--augment-styles changes the augmented renderings: give --augment N as well");
    }
    if !(0.0..=1.0).contains(&options.left_text_share) {
        bail!("the left-text share must be between 0 and 1, not {}", options.left_text_share);
    }
    Ok(())
}

/// The rows a run trains and validates on, encoded once.
struct TrainingData {
    /// Each training row's caption as right-text ids.
    captions: Vec<Vec<u32>>,
    /// Each training row's image codes: the picture's, then its augmented renderings'.
    codes: Vec<Vec<Vec<u32>>>,
    /// The dish name as left text, for the rows that may get one (captions without a
    /// dish get none).
    dish_texts: Vec<Option<Vec<u32>>>,
    /// Validation rows with the codes of their pictures as they are.
    validation: Vec<Sample>,
    val_codes: Vec<Vec<u32>>,
}

impl TrainingData {
    /// Writes the model's dish list, encodes every picture and splits off validation
    /// (the same split for the same seed).
    fn prepare(dataset: Dataset, options: &TrainOptions, parts: &Parts, device: &Device) -> Result<Self> {
        let cfg = &parts.cfg;
        std::fs::create_dir_all(&options.out).with_context(|| format!("cannot create {}", options.out.display()))?;
        // The dishes the model will know: what its captions name.
        let english = match &options.dish_names {
            Some(table) => borscht_pipelines::dishes::english_names(table)?,
            None => Default::default(),
        };
        let mut dishes =
            borscht_pipelines::dishes::dishes_of(dataset.samples.iter().map(|s| s.caption.as_str()), &english);
        // A fine-tuned model still knows the dishes it started with.
        if let Some(init) = &options.init {
            let known = borscht_pipelines::dishes::load(init).unwrap_or_default();
            let new: Vec<_> = dishes.into_iter().filter(|d| !known.iter().any(|k| k.name == d.name)).collect();
            dishes = known.into_iter().chain(new).collect();
            dishes.sort_by(|a, b| a.name.cmp(&b.name));
        }
        borscht_pipelines::dishes::save(&options.out, &dishes)?;
        let mut encoded = encode_samples(dataset.samples, parts, cfg, options, device)?;
        if encoded.is_empty() {
            bail!("no readable images among the rows of {}", options.csv.display());
        }
        // Deterministic split: shuffle once with the seed, the tail is validation.
        encoded.shuffle(&mut rand::rngs::StdRng::seed_from_u64(options.seed));
        let val_count =
            ((encoded.len() as f64 * options.val_fraction).round() as usize).min(encoded.len().saturating_sub(1));
        // Validation reads the pictures as they are.
        let (validation, val_codes): (Vec<Sample>, Vec<Vec<u32>>) =
            encoded.split_off(encoded.len() - val_count).into_iter().map(|(s, mut c)| (s, c.swap_remove(0))).unzip();
        let (samples, codes): (Vec<Sample>, Vec<Vec<Vec<u32>>>) = encoded.into_iter().unzip();
        let captions = samples.iter().map(|s| parts.tokenizer.encode_text(&s.caption, cfg.r_text_seq_length)).collect();
        let l = cfg.l_text_seq_length;
        let dish_texts = samples
            .iter()
            .map(|s| parse_caption(&s.caption).dish.map(|dish| parts.tokenizer.encode_text(&dish, l)))
            .collect();
        Ok(TrainingData { captions, codes, dish_texts, validation, val_codes })
    }

    fn rows(&self) -> usize {
        self.captions.len()
    }
}

/// One run: its data, the model as trainable variables, the optimiser, where it is, and
/// its log. Every random draw of a step is seeded by the step, so a resumed run repeats
/// the steps it missed exactly.
struct Trainer {
    options: Arc<TrainOptions>,
    device: Device,
    parts: Parts,
    data: TrainingData,
    varmap: VarMap,
    model: Rudolph,
    optimizer: AdamW,
    schedule: OneCycle,
    state: TrainState,
    logs: Vec<StepLog>,
    replacements: Option<CodeReplacements>,
    mask: Tensor,
    /// The step of the checkpoint on disk, so that a failed save can say what is intact.
    last_saved: Option<usize>,
    /// The current epoch's row order (drawn from the seed and the epoch).
    epoch_order: Option<(usize, Vec<usize>)>,
}

impl Trainer {
    /// Prepares the data, builds (or restores) the model and the optimiser.
    fn new(options: Arc<TrainOptions>, device: &Device) -> Result<Self> {
        let dataset = read_csv(&options.csv, &options.images)?;
        eprintln!("data: {}", dataset.summary());
        let parts = parts(&options, device)?;
        let data = TrainingData::prepare(dataset, &options, &parts, device)?;
        let cfg = parts.cfg.clone();
        let resume_from = options.out.join(SAFETENSORS_FILE);
        let resuming = options.resume && resume_from.is_file();
        let (mut varmap, mut model) = match (&options.init, resuming) {
            (Some(dir), false) => weights::load_trainable(&weights::local_model(dir)?, device)?,
            _ => {
                let varmap = VarMap::new();
                let model = Rudolph::new(
                    &cfg,
                    borscht_model::init::seeded_var_builder(&varmap, options.seed, DType::F32, device),
                )?;
                if let ImageEmbeddingInit::Codebook { std } = options.image_embeddings {
                    init_image_embeddings_from_codebook(&varmap, &parts.vqgan, std, options.seed)?;
                }
                (varmap, model)
            }
        };
        if resuming {
            varmap.load(&resume_from).with_context(|| format!("cannot resume from {}", resume_from.display()))?;
        }
        model.freeze_blocks(options.freeze.attention, options.freeze.mlp);
        let mut named: Vec<(String, Var)> =
            varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let trainable: Vec<(String, Var)> =
            named.into_iter().filter(|(name, _)| !options.freeze.is_frozen(name)).collect();
        if trainable.is_empty() {
            bail!("every weight is frozen: nothing to train");
        }
        let mut optimizer = AdamW::new(trainable, options.max_lr, options.weight_decay)?;
        let mut state = TrainState::default();
        if resuming {
            let saved = candle_core::safetensors::load(options.out.join(OPTIMIZER_FILE), device)
                .context("cannot read the optimiser state to resume")?;
            optimizer.load_state(&saved)?;
            state = serde_json::from_str(&std::fs::read_to_string(options.out.join(STATE_FILE))?)?;
        }
        let schedule = OneCycle {
            total_steps: data.rows().div_ceil(options.batch_size) * options.epochs,
            max_lr: options.max_lr,
            pct_start: options.pct_start,
            div_factor: options.div_factor,
            final_div_factor: options.final_div_factor,
        };
        let replacements = if options.code_noise.rate > 0.0 {
            Some(CodeReplacements::new(parts.vqgan.codebook(), options.code_noise.neighbours)?)
        } else {
            None
        };
        let mask = causal_mask(&cfg, 1, device)?;
        let mut logs = read_log(&options.out.join(LOG_FILE)).unwrap_or_default();
        if !resuming {
            logs.clear();
        }
        let last_saved = resuming.then_some(state.step);
        Ok(Trainer {
            options,
            device: device.clone(),
            parts,
            data,
            varmap,
            model,
            optimizer,
            schedule,
            state,
            logs,
            replacements,
            mask,
            last_saved,
            epoch_order: None,
        })
    }

    /// Epochs of shuffled batches from where the state stands, validating and saving
    /// after each epoch; Ctrl-C or `max_steps` saves and stops after the current step.
    fn run(mut self) -> Result<TrainOutcome> {
        let options = self.options.clone();
        let bar = progress_bar(self.schedule.total_steps as u64, "train");
        if !options.show_progress {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_position(self.state.step as u64);
        let mut interrupted = false;
        loop {
            match self.advance()? {
                Advance::Finished => break,
                Advance::Step(log) => {
                    bar.inc(1);
                    bar.set_message(format!("epoch {} loss {:.4} lr {:.2e}", log.epoch, log.loss, log.lr));
                    if options.stop.load(Ordering::SeqCst) || options.max_steps.is_some_and(|m| self.state.step >= m) {
                        interrupted = true;
                        self.save()?;
                        break;
                    }
                }
                // Printed even when the bar is hidden (stderr not a terminal).
                Advance::EpochEnd(Some(report)) => bar.suspend(|| eprintln!("{}", report.summary())),
                Advance::EpochEnd(None) => {}
            }
        }
        bar.finish_and_clear();
        Ok(TrainOutcome { state: self.state, interrupted, logs: self.logs })
    }

    /// The next piece of the run: one optimiser step (saving when `save_every` says), or
    /// the end of an epoch (validation when due, then a checkpoint).
    fn advance(&mut self) -> Result<Advance> {
        let options = self.options.clone();
        if self.state.epoch >= options.epochs {
            return Ok(Advance::Finished);
        }
        let epoch = self.state.epoch;
        if self.epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.data.rows()).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(options.seed.wrapping_add(1 + epoch as u64)));
            self.epoch_order = Some((epoch, order));
        }
        let order = &self.epoch_order.as_ref().expect("set above").1;
        let start = self.state.batch_in_epoch * options.batch_size;
        if start < order.len() {
            let batch = order[start..(start + options.batch_size).min(order.len())].to_vec();
            let log = self.step(&batch)?;
            if options.save_every > 0 && self.state.step.is_multiple_of(options.save_every) {
                self.save()?;
            }
            return Ok(Advance::Step(log));
        }
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
        let report = self.validate_if_due()?;
        self.save()?;
        Ok(Advance::EpochEnd(report))
    }

    /// The batch's rows as ids `[b, S]`, and the inputs the model reads when code noise
    /// corrupts them (the ids stay the targets).
    fn batch_ids(&self, batch: &[usize]) -> Result<(Tensor, Option<Tensor>)> {
        let (options, cfg, data) = (&self.options, &self.parts.cfg, &self.data);
        let l = cfg.l_text_seq_length;
        // Seeded by step, so a resumed run draws the same left texts.
        let mut left_rng = rand::rngs::StdRng::seed_from_u64(options.seed ^ (0x1e57 + self.state.step as u64));
        let rows: Vec<u32> = batch
            .iter()
            .flat_map(|&k| {
                let left = match &data.dish_texts[k] {
                    Some(text) if left_rng.random_bool(options.left_text_share) => text.clone(),
                    _ => vec![0u32; l],
                };
                let variant = if data.codes[k].len() > 1 { left_rng.random_range(0..data.codes[k].len()) } else { 0 };
                [left, data.codes[k][variant].clone(), data.captions[k].clone()].concat()
            })
            .collect();
        let seq = cfg.total_seq_length();
        let inputs = match &self.replacements {
            // Seeded by step too, so a resumed run corrupts the same codes.
            Some(replacements) => {
                let mut noise_rng =
                    rand::rngs::StdRng::seed_from_u64(options.seed ^ (0xc0de_0000 + self.state.step as u64));
                let mut corrupted = rows.clone();
                for row in corrupted.chunks_mut(seq) {
                    replacements.corrupt(
                        &mut row[l..l + cfg.image_seq_length()],
                        options.code_noise.rate,
                        &mut noise_rng,
                    );
                }
                Some(Tensor::from_vec(corrupted, (batch.len(), seq), &self.device)?)
            }
            None => None,
        };
        Ok((Tensor::from_vec(rows, (batch.len(), seq), &self.device)?, inputs))
    }

    /// This step's dropout, seeded by the step like the left texts: a resumed run drops
    /// the same units.
    fn dropout(&self) -> Option<Arc<dyn Dropout>> {
        let mut draw =
            DropoutDraw::from_config(&self.parts.cfg, self.options.seed ^ (0xd409_0000 + self.state.step as u64));
        if let Some(p) = self.options.dropout {
            (draw.embedding, draw.attention, draw.output) = (p, p, p);
        }
        (draw.embedding + draw.attention + draw.output > 0.0).then(|| Arc::new(draw) as Arc<dyn Dropout>)
    }

    /// One optimiser step on `batch`: the loss, its gradients clipped, AdamW at the
    /// schedule's rate; logged.
    fn step(&mut self, batch: &[usize]) -> Result<StepLog> {
        let options = self.options.clone();
        let (ids, inputs) = self.batch_ids(batch)?;
        self.model.set_dropout(self.dropout());
        let losses =
            loss_against(&self.model, inputs.as_ref().unwrap_or(&ids), &ids, &self.mask, options.loss_weights)?;
        let loss_value: f32 = losses.loss.to_scalar()?;
        if !loss_value.is_finite() {
            bail!("the loss became {loss_value} at step {}; lower the learning rate", self.state.step);
        }
        let mut grads = losses.loss.backward()?;
        let vars: Vec<&Var> = self.optimizer.params().iter().map(|(_, v)| v).collect();
        clip_grad_norm(&mut grads, &vars, options.clip)?;
        let (lr, beta1) = self.schedule.at(self.state.step.min(self.schedule.total_steps - 1));
        self.optimizer.lr = lr;
        self.optimizer.beta1 = beta1;
        self.optimizer.step(&grads)?;
        let log = StepLog {
            step: self.state.step + 1,
            epoch: self.state.epoch + 1,
            lr,
            loss: loss_value,
            l_text_loss: losses.l_text,
            image_loss: losses.image,
            r_text_loss: losses.r_text,
        };
        self.logs.push(log.clone());
        self.state.step += 1;
        self.state.batch_in_epoch += 1;
        Ok(log)
    }

    /// Greedy-captions the validation rows after the epoch just ended, when it is due
    /// (every `validate_every`-th epoch, and always the last).
    fn validate_if_due(&mut self) -> Result<Option<Validation>> {
        let (options, epoch) = (self.options.clone(), self.state.epoch);
        let due = epoch == options.epochs || (options.validate_every > 0 && epoch % options.validate_every == 0);
        if self.data.validation.is_empty() || !due {
            return Ok(None);
        }
        let report = self.validate_now()?.expect("validation rows exist");
        self.state.validations.push(report.clone());
        Ok(Some(report))
    }

    /// The model as it stands, on the held-out rows (None without any).
    fn validate_now(&self) -> Result<Option<Validation>> {
        if self.data.validation.is_empty() {
            return Ok(None);
        }
        validate(&self.model, &self.parts, &self.data.validation, &self.data.val_codes, self.state.epoch).map(Some)
    }

    /// Writes the checkpoint; when that fails, says which earlier one is intact.
    fn save(&mut self) -> Result<()> {
        let (options, step) = (self.options.clone(), self.state.step);
        save_checkpoint(&options, &self.parts, &self.parts.cfg, &self.state, &self.optimizer, &self.varmap, &self.logs)
            .with_context(|| {
                let out = options.out.display();
                match self.last_saved {
                    Some(saved) => format!(
                        "could not save the checkpoint of step {step}; the one of step {saved} in {out} is intact \
                         (continue from it with --resume once the disk is fixed)"
                    ),
                    None => format!("could not save the checkpoint of step {step}; nothing was saved in {out} yet"),
                }
            })?;
        self.last_saved = Some(step);
        Ok(())
    }
}

/// What `CodeNoise` may put in place of each image code.
struct CodeReplacements {
    codes: u32,
    /// Per code, its nearest other codes (empty: any code will do).
    nearest: Vec<Vec<u32>>,
}

impl CodeReplacements {
    fn new(codebook: &Tensor, neighbours: usize) -> Result<Self> {
        let codebook = codebook.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let (codes, _) = codebook.dims2()?;
        if neighbours >= codes {
            bail!("--code-noise-neighbours {neighbours} must be below the VQGAN's {codes} codes");
        }
        let mut nearest = Vec::new();
        if neighbours > 0 {
            // Squared distances |a|^2 + |b|^2 - 2ab, one matrix product.
            let norms = codebook.sqr()?.sum_keepdim(1)?;
            let distances =
                norms.broadcast_add(&norms.t()?)?.sub(&(codebook.matmul(&codebook.t()?)? * 2.0)?)?.to_vec2::<f32>()?;
            for (code, row) in distances.iter().enumerate() {
                let mut order: Vec<u32> = (0..codes as u32).filter(|&c| c as usize != code).collect();
                order.sort_by(|&a, &b| row[a as usize].total_cmp(&row[b as usize]).then(a.cmp(&b)));
                order.truncate(neighbours);
                nearest.push(order);
            }
        }
        Ok(CodeReplacements { codes: codes as u32, nearest })
    }

    /// Replaces each code of `image` with probability `rate`.
    fn corrupt(&self, image: &mut [u32], rate: f64, rng: &mut impl Rng) {
        for code in image {
            if rng.random_bool(rate) {
                *code = match self.nearest.get(*code as usize) {
                    Some(near) => near[rng.random_range(0..near.len())],
                    None => rng.random_range(0..self.codes),
                };
            }
        }
    }
}

/// Sets the first `n_embed` rows of `image_embeddings.weight` (the codes; the rest are
/// special tokens) to the VQGAN codebook, standardised per dimension and projected by a
/// seeded Gaussian matrix, scaled to standard deviation `std`.
fn init_image_embeddings_from_codebook(varmap: &VarMap, vqgan: &Vqgan, std: f64, seed: u64) -> Result<()> {
    use rand_distr::{Distribution, Normal};
    let data = varmap.data().lock().expect("varmap lock");
    let var = data.get("image_embeddings.weight").context("the model has no image_embeddings.weight")?;
    let (rows, hidden) = var.dims2()?;
    let codebook = vqgan.codebook().to_dtype(DType::F32)?.to_device(var.device())?;
    let (codes, dim) = codebook.dims2()?;
    if codes > rows {
        bail!("the VQGAN has {codes} codes but the model only {rows} image tokens");
    }
    let centred = codebook.broadcast_sub(&codebook.mean_keepdim(0)?)?;
    let spread = centred.sqr()?.mean_keepdim(0)?.sqrt()?.clamp(1e-6f32, f32::MAX)?;
    let standardised = centred.broadcast_div(&spread)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xc0de_b00c);
    // Entries N(0, 1/dim): each projected value has unit variance.
    let normal = Normal::new(0.0f32, (1.0 / dim as f64).sqrt() as f32).expect("valid normal");
    let projection: Vec<f32> = (0..dim * hidden).map(|_| normal.sample(&mut rng)).collect();
    let projection = Tensor::from_vec(projection, (dim, hidden), var.device())?;
    let projected = (standardised.matmul(&projection)? * std)?;
    let rest = var.as_tensor().narrow(0, codes, rows - codes)?;
    var.set(&Tensor::cat(&[&projected, &rest], 0)?)?;
    Ok(())
}

/// Greedy captions of the validation images, scored against their true captions.
fn validate(
    model: &Rudolph,
    parts: &Parts,
    samples: &[Sample],
    codes: &[Vec<u32>],
    epoch: usize,
) -> Result<Validation> {
    // Inference never reads the training step's dropout.
    let engine = Engine::from_parts(model.clone(), parts.tokenizer.clone(), parts.vqgan.clone())?;
    let greedy = CaptionOptions { count: 1, sampling: SamplingParams::GREEDY, ..Default::default() };
    let (mut right, mut kcal_errors, mut violations) = (0, Vec::new(), 0);
    for (sample, codes) in samples.iter().zip(codes) {
        let truth = parse_caption(&sample.caption);
        let generated = caption(&engine, codes, &greedy, |_| {})?.into_iter().next().unwrap_or_default();
        let guess = parse_caption(&generated);
        if guess.dish.is_some() && guess.dish == truth.dish {
            right += 1;
        }
        if let (Some(a), Some(b)) = (guess.kcal, truth.kcal) {
            kcal_errors.push((a - b).abs() as f64);
        }
        if atwater(&guess).is_some_and(|c| !c.consistent) {
            violations += 1;
        }
    }
    Ok(Validation {
        epoch,
        samples: samples.len(),
        dish_accuracy: right as f64 / samples.len() as f64,
        kcal_mae: (!kcal_errors.is_empty()).then(|| kcal_errors.iter().sum::<f64>() / kcal_errors.len() as f64),
        atwater_violations: violations,
    })
}

fn save_checkpoint(
    options: &TrainOptions,
    parts: &Parts,
    cfg: &RudolphConfig,
    state: &TrainState,
    optimizer: &AdamW,
    varmap: &VarMap,
    logs: &[StepLog],
) -> Result<()> {
    let out = &options.out;
    // What a resume reads, as one: all of it written before any of it replaces the last
    // checkpoint, the state (the step it is at) last.
    let files: Vec<(PathBuf, FileWriter)> = vec![
        (out.join(SAFETENSORS_FILE), Box::new(|p: &Path| Ok(varmap.save(p)?))),
        (out.join(OPTIMIZER_FILE), Box::new(|p: &Path| Ok(candle_core::safetensors::save(&optimizer.state()?, p)?))),
        (out.join(CONFIG_FILE), Box::new(|p: &Path| Ok(std::fs::write(p, serde_json::to_string_pretty(cfg)?)?))),
        (out.join(LOG_FILE), Box::new(|p: &Path| write_log(p, logs))),
        (out.join(STATE_FILE), Box::new(|p: &Path| Ok(std::fs::write(p, serde_json::to_string_pretty(state)?)?))),
    ];
    write_all_atomically(files)?;
    // A complete model directory: the tokenizer and the VQGAN travel with the weights.
    if parts.tokenizer_file != out.join(BPE_FILE) {
        std::fs::copy(&parts.tokenizer_file, out.join(BPE_FILE))?;
    }
    let vqgan_out = out.join(VQGAN_DIR);
    if parts.vqgan_dir != vqgan_out {
        std::fs::create_dir_all(&vqgan_out)?;
        for entry in std::fs::read_dir(&parts.vqgan_dir)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(&path, vqgan_out.join(path.file_name().expect("a file name")))?;
            }
        }
    }
    plot_losses(&out.join(CURVE_FILE), logs)
}

fn write_log(path: &Path, logs: &[StepLog]) -> Result<()> {
    let mut writer = csv::Writer::from_path(path)?;
    for log in logs {
        writer.serialize(log)?;
    }
    writer.flush()?;
    Ok(())
}

fn read_log(path: &Path) -> Result<Vec<StepLog>> {
    let mut reader = csv::Reader::from_path(path)?;
    Ok(reader.deserialize().collect::<std::result::Result<Vec<StepLog>, _>>()?)
}

/// The loss per step (no text: the build has no fonts), total loss in dark red.
fn plot_losses(path: &Path, logs: &[StepLog]) -> Result<()> {
    use plotters::prelude::*;
    if logs.len() < 2 {
        return Ok(());
    }
    let max = logs.iter().map(|l| l.loss).fold(0f32, f32::max).max(1e-6);
    let temp = path.with_file_name(".loss_curve.tmp.png");
    {
        let root = BitMapBackend::new(&temp, (800, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart =
            ChartBuilder::on(&root).margin(20).build_cartesian_2d(0f32..logs.len() as f32, 0f32..max * 1.05)?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_labels(0).draw()?;
        chart.draw_series(LineSeries::new(
            logs.iter().enumerate().map(|(i, l)| (i as f32, l.loss)),
            RGBColor(142, 27, 43).stroke_width(2),
        ))?;
        root.present()?;
    }
    std::fs::rename(temp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_noise_replaces_codes_by_their_nearest_look_alikes() {
        // Six codes on a line; nearest other codes: 0->1, 1->0 (a tie with 2; the lower
        // wins), 2->1, 10->11, 11->10, 30->11.
        let codebook = Tensor::new(&[[0f32], [1.], [2.], [10.], [11.], [30.]], &Device::Cpu).unwrap();
        let nearest = CodeReplacements::new(&codebook, 1).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut codes = vec![0, 1, 2, 3, 4, 5];
        nearest.corrupt(&mut codes, 1.0, &mut rng);
        assert_eq!(codes, [1, 0, 1, 4, 3, 4]);
        let two = CodeReplacements::new(&codebook, 2).unwrap();
        for _ in 0..20 {
            let mut far = vec![5];
            two.corrupt(&mut far, 1.0, &mut rng);
            assert!([4, 3].contains(&far[0]), "30's two nearest are 11 and 10, not {}", far[0]);
        }
        let mut kept = vec![0, 1, 2, 3, 4, 5];
        nearest.corrupt(&mut kept, 0.0, &mut rng);
        assert_eq!(kept, [0, 1, 2, 3, 4, 5]);
        assert!(CodeReplacements::new(&codebook, 6).is_err(), "more neighbours than other codes");
    }

    #[test]
    fn uniform_code_noise_replaces_about_the_rate_with_valid_codes() {
        let codebook = Tensor::zeros((16, 4), DType::F32, &Device::Cpu).unwrap();
        let any = CodeReplacements::new(&codebook, 0).unwrap();
        let original: Vec<u32> = (0..20_000).map(|i| i % 16).collect();
        let mut codes = original.clone();
        any.corrupt(&mut codes, 0.25, &mut rand::rngs::StdRng::seed_from_u64(3));
        let changed = codes.iter().zip(&original).filter(|(a, b)| a != b).count() as f64 / codes.len() as f64;
        // A replacement draws the same code 1 time in 16.
        assert!((0.22..0.25).contains(&changed), "changed {changed}");
        assert!(codes.iter().all(|&c| c < 16));
    }
}
