//! `borscht train-vqgan`: our own image tokenizer for the demo model.
//!
//! Two ways to train the quantiser, both giving the reference's gumbel VQGAN layout
//! (inference takes `argmax quantize.proj(features)`):
//! - `nearest` (the default): VQ-VAE training, each position takes its nearest
//!   codebook vector, gradients pass straight through, unused codes are restarted
//!   from recent features; `quantize.proj` is then set so its argmax is the nearest
//!   code. Learns sharp codes in a short CPU training.
//! - `gumbel`: the reference's relaxation (soft one-hot at a temperature annealed
//!   towards hard choices) with its KL term to a uniform prior. It needs far longer
//!   training: in 620 CPU steps the demo's codes only kept colour blobs.
//!
//! The loss is L1 reconstruction plus the quantiser's terms, and with `--perceptual` a
//! distance in an ImageNet network's features ([`crate::perceptual`]), as taming adds LPIPS.
//! Each epoch writes a checkpoint (atomically: weights, the optimiser's moments and the
//! code-usage counts, so `--resume` continues exactly) and a PNG of originals above their
//! hard-code reconstructions, so progress can be seen, not only read.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::optim::AdamW;
use crate::perceptual::{EfficientNetLite0, PerceptualLoss};
use crate::{list_images, progress_bar};
use borscht_model::checkpoint::{write_all_atomically, FileWriter};
use borscht_model::vqgan::{Vqgan, VqganConfig, VQGAN_CONFIG_FILE, VQGAN_WEIGHTS_FILE};
use borscht_pipelines::imaging::{self, ImageLimits};

/// How many images the per-epoch picture shows.
const GRID_IMAGES: usize = 8;
const STATE_FILE: &str = "training_state.json";
/// The optimiser's moments, beside the weights (a training file, not part of the model).
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// How the codes are learnt (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quantizer {
    Nearest,
    Gumbel,
}

/// Nearest-code training restarts codes no position picked, every this many steps.
const RESTART_EVERY: usize = 25;
/// ... but not in the last share of the steps, so the decoder settles on the final codebook.
const NO_RESTART_TAIL: f64 = 0.2;

#[derive(Debug, Clone)]
pub struct VqganTraining {
    pub data: PathBuf,
    pub out: PathBuf,
    pub model: VqganConfig,
    pub image_size: u32,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Gumbel-softmax temperature at the first and the last step (annealed geometrically).
    pub temperature: (f64, f64),
    pub kl_weight: f64,
    /// Decode hard codes with straight-through gradients (see [`Vqgan::reconstruct`]).
    pub straight_through: bool,
    /// Weight of the codebook-usage term ([`borscht_model::vqgan::Reconstruction::usage_kl`]).
    pub usage_weight: f64,
    pub quantizer: Quantizer,
    /// Weight of the nearest-code commitment term (VQ-VAE's beta).
    pub commitment_weight: f64,
    /// Continue from `out/` exactly where it stopped instead of starting afresh.
    pub resume: bool,
    /// Stop once this many epochs are done, as an interrupted run would (the checkpoint
    /// then continues with `resume`).
    pub stop_after_epochs: Option<usize>,
    pub show_progress: bool,
    /// A perceptual distance added to the L1 loss (see [`crate::perceptual`]).
    pub perceptual: Option<Perceptual>,
}

/// `train-vqgan --perceptual`: the network's weights, the distance's weight in the loss,
/// and how many times pictures are enlarged before the network.
#[derive(Debug, Clone)]
pub struct Perceptual {
    pub weights: PathBuf,
    pub weight: f64,
    pub upscale: usize,
}

/// What one epoch achieved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub loss: f64,
    /// L1 error of hard-code reconstructions of the grid images, on the [0, 1] scale.
    pub hard_l1: f64,
    /// Distinct codes those images use.
    pub codes_used: usize,
    pub temperature: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainingState {
    epochs_done: usize,
    steps_done: usize,
    history: Vec<EpochReport>,
    /// How often each code was picked since the last restart (nearest-code training).
    #[serde(default)]
    code_usage: Vec<usize>,
}

fn load_images(training: &VqganTraining, device: &Device) -> Result<Tensor> {
    let paths = list_images(&training.data)?;
    let mut tensors = Vec::with_capacity(paths.len());
    for path in &paths {
        match imaging::open_image(path, ImageLimits::default()) {
            Ok(image) => tensors.push(imaging::prepare(&image, training.image_size, device)?),
            Err(e) => eprintln!("skipping {}: {e}", path.display()),
        }
    }
    if tensors.is_empty() {
        bail!("no usable images under {}", training.data.display());
    }
    Ok(Tensor::stack(&tensors, 0)?)
}

/// Trains (or continues training) and returns the report of every epoch run so far.
pub fn train_vqgan(training: &VqganTraining, device: &Device) -> Result<Vec<EpochReport>> {
    let factor = training.model.downsample_factor() as u32;
    if !training.image_size.is_multiple_of(factor) {
        bail!("image size {} is not a multiple of the VQGAN's downsampling factor {factor}", training.image_size);
    }
    if training.batch_size == 0 || training.epochs == 0 {
        bail!("batch size and epochs must be positive");
    }
    let images = load_images(training, device)?;
    let count = images.dim(0)?;
    let perceptual = match &training.perceptual {
        Some(p) => Some((PerceptualLoss::new(EfficientNetLite0::load(&p.weights, device)?, p.upscale), p.weight)),
        None => None,
    };
    std::fs::create_dir_all(training.out.join("reconstructions"))
        .with_context(|| format!("cannot create {}", training.out.display()))?;

    let mut varmap = VarMap::new();
    let model = Vqgan::new(
        &training.model,
        borscht_model::init::seeded_var_builder(&varmap, training.seed, DType::F32, device),
    )?;
    let mut state = TrainingState { epochs_done: 0, steps_done: 0, history: Vec::new(), code_usage: Vec::new() };
    let mut params: Vec<(String, candle_core::Var)> =
        varmap.data().lock().expect("varmap lock").iter().map(|(name, var)| (name.clone(), var.clone())).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut optimizer = AdamW::new(params, training.learning_rate, 0.0)?;
    let weights = training.out.join(VQGAN_WEIGHTS_FILE);
    if training.resume && weights.is_file() {
        varmap.load(&weights).with_context(|| format!("cannot resume from {}", weights.display()))?;
        let state_path = training.out.join(STATE_FILE);
        if let Ok(text) = std::fs::read_to_string(&state_path) {
            state = serde_json::from_str(&text).with_context(|| format!("{} is corrupt", state_path.display()))?;
        }
        let moments = training.out.join(OPTIMIZER_FILE);
        if moments.is_file() {
            let saved = candle_core::safetensors::load(&moments, device)
                .with_context(|| format!("cannot read {}", moments.display()))?;
            optimizer.load_state(&saved).with_context(|| format!("{} does not fit this model", moments.display()))?;
        } else {
            eprintln!("{} is missing: the optimiser starts afresh", moments.display());
        }
    }

    let steps_per_epoch = count.div_ceil(training.batch_size);
    let total_steps = (steps_per_epoch * training.epochs).max(1);
    let (t_start, t_end) = training.temperature;
    let grid_count = count.min(GRID_IMAGES);
    let grid_originals = images.narrow(0, 0, grid_count)?;
    // How often each code was picked since the last restart (nearest-code training).
    let mut usage = std::mem::take(&mut state.code_usage);
    usage.resize(training.model.n_embed, 0);

    for epoch in state.epochs_done..training.epochs {
        let mut rng = rand::rngs::StdRng::seed_from_u64(training.seed.wrapping_add(epoch as u64));
        let mut order: Vec<u32> = (0..count as u32).collect();
        order.shuffle(&mut rng);
        let bar = progress_bar(steps_per_epoch as u64, &format!("vqgan epoch {}/{}", epoch + 1, training.epochs));
        if !training.show_progress {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let (mut loss_sum, mut temperature) = (0.0, t_start);
        for batch in order.chunks(training.batch_size) {
            let progress = state.steps_done as f64 / total_steps as f64;
            temperature = t_start * (t_end / t_start).powf(progress.min(1.0));
            let index = Tensor::new(batch, device)?;
            let target = images.index_select(&index, 0)?;
            // Decoded pictures in [-1, 1] and the quantiser's own loss terms.
            let (decoded, quantizer_loss) = match training.quantizer {
                Quantizer::Gumbel => {
                    let rec = model.reconstruct(
                        &target,
                        temperature,
                        training.seed ^ (state.steps_done as u64 + 1),
                        training.straight_through,
                        true,
                    )?;
                    (rec.images, ((&rec.kl * training.kl_weight)? + (&rec.usage_kl * training.usage_weight)?)?)
                }
                Quantizer::Nearest => {
                    let rec = model.reconstruct_nearest(&target, true)?;
                    for code in rec.codes.flatten_all()?.to_vec1::<u32>()? {
                        usage[code as usize] += 1;
                    }
                    let step = state.steps_done + 1;
                    if (step == 1 || step.is_multiple_of(RESTART_EVERY))
                        && (step as f64) < total_steps as f64 * (1.0 - NO_RESTART_TAIL)
                    {
                        restart_unused_codes(&varmap, &mut usage, &rec.features, training.seed ^ step as u64)?;
                    }
                    (rec.images, (rec.codebook_loss + (rec.commitment * training.commitment_weight)?)?)
                }
            };
            let target = ((&target * 2.0)? - 1.0)?;
            let mut loss = ((&decoded - &target)?.abs()?.mean_all()? + quantizer_loss)?;
            if let Some((distance, weight)) = &perceptual {
                loss = (loss + (distance.distance(&decoded, &target)? * *weight)?)?;
            }
            optimizer.step(&loss.backward()?)?;
            let value: f32 = loss.to_scalar()?;
            if !value.is_finite() {
                bail!("the loss became {value} at step {}; lower the learning rate", state.steps_done);
            }
            loss_sum += value as f64;
            state.steps_done += 1;
            bar.inc(1);
            bar.set_message(match training.quantizer {
                Quantizer::Gumbel => format!("loss {value:.4} T {temperature:.3}"),
                Quantizer::Nearest => format!("loss {value:.4}"),
            });
        }
        bar.finish_and_clear();
        if training.quantizer == Quantizer::Nearest {
            set_nearest_projection(&model, &varmap)?;
        }

        // Hard codes, as inference uses them.
        let codes = model.encode(&grid_originals)?;
        let rebuilt = model.decode(&codes)?;
        let hard_l1 = (&rebuilt - &grid_originals)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
        let mut used: Vec<u32> = codes.flatten_all()?.to_vec1()?;
        used.sort_unstable();
        used.dedup();
        let report = EpochReport {
            epoch: epoch + 1,
            loss: loss_sum / steps_per_epoch as f64,
            hard_l1,
            codes_used: used.len(),
            temperature,
        };
        let temperature = match training.quantizer {
            Quantizer::Gumbel => format!(", temperature {:.3}", report.temperature),
            Quantizer::Nearest => String::new(),
        };
        eprintln!(
            "epoch {}: loss {:.4}, hard-code L1 {:.4}, {} codes in use{temperature}",
            report.epoch, report.loss, report.hard_l1, report.codes_used
        );
        let originals: Vec<_> = (0..grid_count)
            .map(|i| imaging::to_rgb_image(&grid_originals.get(i)?))
            .collect::<candle_core::Result<_>>()?;
        let rebuilt: Vec<_> =
            (0..grid_count).map(|i| imaging::to_rgb_image(&rebuilt.get(i)?)).collect::<candle_core::Result<_>>()?;
        let picture = imaging::grid(&[originals, rebuilt].concat(), grid_count);
        picture.save(training.out.join("reconstructions").join(format!("epoch-{:03}.png", epoch + 1)))?;

        state.epochs_done = epoch + 1;
        state.history.push(report);
        state.code_usage = usage.clone();
        save_checkpoint(training, &varmap, &optimizer, &state)?;
        if training.stop_after_epochs.is_some_and(|stop| state.epochs_done >= stop) {
            break;
        }
    }
    Ok(state.history)
}

/// Moves every code that no position picked since the last restart onto a random
/// feature vector of the current batch, where it will be picked.
fn restart_unused_codes(varmap: &VarMap, usage: &mut [usize], features: &Tensor, seed: u64) -> Result<()> {
    use rand::Rng;
    let embed = varmap.data().lock().expect("varmap lock")["quantize.embed.weight"].clone();
    let mut rows: Vec<Vec<f32>> = embed.as_tensor().to_vec2()?;
    let features: Vec<Vec<f32>> = features.to_vec2()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (row, count) in rows.iter_mut().zip(usage.iter()) {
        if *count == 0 {
            *row = features[rng.random_range(0..features.len())].clone();
        }
    }
    usage.fill(0);
    embed.set(&Tensor::new(rows, embed.device())?)?;
    Ok(())
}

/// Writes `quantize.proj` so inference's argmax picks the nearest code.
fn set_nearest_projection(model: &Vqgan, varmap: &VarMap) -> Result<()> {
    let (weight, bias) = model.nearest_code_projection()?;
    let data = varmap.data().lock().expect("varmap lock");
    data["quantize.proj.weight"].set(&weight)?;
    data["quantize.proj.bias"].set(&bias)?;
    Ok(())
}

fn save_checkpoint(training: &VqganTraining, varmap: &VarMap, optimizer: &AdamW, state: &TrainingState) -> Result<()> {
    let out = &training.out;
    // All of it written before any of it replaces the last checkpoint, the state last.
    let files: Vec<(PathBuf, FileWriter)> = vec![
        (out.join(VQGAN_WEIGHTS_FILE), Box::new(|p: &Path| Ok(varmap.save(p)?))),
        (out.join(OPTIMIZER_FILE), Box::new(|p: &Path| Ok(candle_core::safetensors::save(&optimizer.state()?, p)?))),
        (
            out.join(VQGAN_CONFIG_FILE),
            Box::new(|p: &Path| Ok(std::fs::write(p, serde_json::to_string_pretty(&training.model)?)?)),
        ),
        (out.join(STATE_FILE), Box::new(|p: &Path| Ok(std::fs::write(p, serde_json::to_string_pretty(state)?)?))),
    ];
    write_all_atomically(files).with_context(|| {
        format!(
            "could not save the checkpoint of epoch {} in {}; the one before it is intact",
            state.epochs_done,
            out.display()
        )
    })
}
