//! `borscht forward`, `borscht loss` and `borscht convert`: the transformer from the
//! command line, to cross-check a checkpoint against PyTorch with .npy files.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

use borscht_model::config::RudolphConfig;
use borscht_model::device::{parse_device, parse_dtype};
use borscht_model::masks::{attention_mask, causal_mask, t2t_attention_mask};
use borscht_model::weights::{self, HubOptions, ModelFiles};
use borscht_train::loss::{self as training_loss, LossWeights};

/// Which model, where, in which precision.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A model directory (config.json + model.safetensors or pytorch_model.bin), or a
    /// Hugging Face hub id such as `sberbank-ai/RuDOLPH-350M` (downloaded once, cached).
    #[arg(long, env = "BORSCHT_MODEL")]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (half precision on GPUs only pays off there).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Where hub downloads are cached (default: the Hugging Face cache, $HF_HOME/hub).
    #[arg(long, env = "BORSCHT_HUB_CACHE")]
    pub hub_cache: Option<PathBuf>,
}

impl ModelArgs {
    fn files(&self) -> Result<ModelFiles> {
        weights::resolve_model(&self.model, &HubOptions { cache_dir: self.hub_cache.clone(), endpoint: None })
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MaskKind {
    /// Lower-triangular, rows after each sample's r_text end zeroed (`get_attention_mask`).
    Default,
    /// Text-to-text: every row from l_text's end on zeroed (`get_t2t_attention_mask`).
    T2t,
}

/// The sequences to run, as .npy files.
#[derive(Debug, clap::Args)]
pub struct InputArgs {
    /// Input ids `[batch, n]` (int): for `forward` n ≤ the full sequence (a prefix is
    /// fine), for `loss` full sequences.
    #[arg(long)]
    pub input_ids: PathBuf,
    /// r_text masks `[batch, r_text_seq_length]` (1 = token, 0 = padding) for the default mask.
    #[arg(long)]
    pub r_text_masks: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value = "default")]
    pub mask: MaskKind,
    /// Where to write the logits `[batch, n, text_vocab + image_vocab]` (float32 .npy).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct LossArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Loss weights l_text,image,r_text (the article uses 0.01,1,7).
    #[arg(long, default_value = "1,7,1")]
    pub weights: String,
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The RUDOLPH checkpoint to convert (directory or hub id).
    #[arg(long, conflicts_with = "vqgan", required_unless_present = "vqgan")]
    pub model: Option<String>,
    /// A VQGAN directory to convert instead (config.json + *.ckpt).
    #[arg(long)]
    pub vqgan: Option<PathBuf>,
    /// Output directory (config.json + model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, env = "BORSCHT_HUB_CACHE")]
    pub hub_cache: Option<PathBuf>,
}

fn read_ids(path: &PathBuf, device: &Device) -> Result<Tensor> {
    let ids = Tensor::read_npy(path).with_context(|| format!("cannot read {}", path.display()))?;
    if ids.rank() != 2 || ids.dtype().is_float() {
        bail!("{}: expected a 2-D integer array [batch, n], got {:?} {:?}", path.display(), ids.dtype(), ids.dims());
    }
    let values: Vec<i64> = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    if let Some(bad) = values.iter().find(|&&v| v < 0 || v > u32::MAX as i64) {
        bail!("{}: id {bad} is out of range", path.display());
    }
    Ok(ids.to_dtype(DType::U32)?.to_device(device)?)
}

fn sample_mask(cfg: &RudolphConfig, batch: usize, r_text_masks: &Option<PathBuf>, device: &Device) -> Result<Tensor> {
    let Some(path) = r_text_masks else { return Ok(causal_mask(cfg, batch, device)?) };
    let masks = Tensor::read_npy(path).with_context(|| format!("cannot read {}", path.display()))?;
    if masks.dims() != [batch, cfg.r_text_seq_length] {
        bail!("{}: expected shape [{batch}, {}], got {:?}", path.display(), cfg.r_text_seq_length, masks.dims());
    }
    Ok(attention_mask(cfg, &masks.to_dtype(DType::F32)?.to_vec2()?, device)?)
}

/// Checks ids against the segment vocabularies so a bad file fails with a message, not an index error.
fn check_ids(cfg: &RudolphConfig, ids: &Tensor) -> Result<()> {
    let rows: Vec<Vec<u32>> = ids.to_device(&Device::Cpu)?.to_vec2()?;
    let (l, i) = (cfg.l_text_seq_length, cfg.image_seq_length());
    for (b, row) in rows.iter().enumerate() {
        if row.len() > cfg.total_seq_length() {
            bail!("sample {b} has {} ids; the model's sequence is {}", row.len(), cfg.total_seq_length());
        }
        for (p, &id) in row.iter().enumerate() {
            let limit = if (l..l + i).contains(&p) { cfg.image_vocab() } else { cfg.text_vocab() };
            if id as usize >= limit {
                bail!("sample {b}, position {p}: id {id} is outside its vocabulary (size {limit})");
            }
        }
    }
    Ok(())
}

pub fn forward(args: ForwardArgs) -> Result<()> {
    let device = parse_device(&args.model.device)?;
    let files = args.model.files()?;
    let model = weights::load_model(&files, &device, parse_dtype(&args.model.dtype)?)?;
    let ids = read_ids(&args.input.input_ids, &device)?;
    check_ids(&files.config, &ids)?;
    let batch = ids.dim(0)?;
    let mask = match args.mask {
        MaskKind::Default => sample_mask(&files.config, batch, &args.input.r_text_masks, &device)?,
        MaskKind::T2t => t2t_attention_mask(&files.config, batch, &device)?,
    };
    let mask = mask.to_dtype(parse_dtype(&args.model.dtype)?)?;
    let logits = model.forward(&ids, &mask, None)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    logits.write_npy(&args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote logits {:?} to {}", logits.dims(), args.out.display());
    Ok(())
}

pub fn loss(args: LossArgs) -> Result<()> {
    let weights: LossWeights = args.weights.parse().map_err(anyhow::Error::msg)?;
    let device = parse_device(&args.model.device)?;
    let dtype = parse_dtype(&args.model.dtype)?;
    let files = args.model.files()?;
    let model = weights::load_model(&files, &device, dtype)?;
    let ids = read_ids(&args.input.input_ids, &device)?;
    check_ids(&files.config, &ids)?;
    let mask = sample_mask(&files.config, ids.dim(0)?, &args.input.r_text_masks, &device)?.to_dtype(dtype)?;
    let losses = training_loss::loss(&model, &ids, &mask, weights)?;
    let json = serde_json::json!({
        "loss": losses.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        "l_text_loss": losses.l_text,
        "image_loss": losses.image,
        "r_text_loss": losses.r_text,
    });
    println!("{json}");
    Ok(())
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    match (&args.model, &args.vqgan) {
        (_, Some(vqgan)) => borscht_model::vqgan::convert_vqgan(vqgan, &args.out, dtype)?,
        (Some(model), None) => {
            let files = weights::resolve_model(model, &HubOptions { cache_dir: args.hub_cache, endpoint: None })?;
            weights::convert(&files, &args.out, dtype)?;
        }
        (None, None) => bail!("give --model or --vqgan"),
    }
    eprintln!("wrote {} ({})", args.out.display(), args.dtype);
    Ok(())
}
