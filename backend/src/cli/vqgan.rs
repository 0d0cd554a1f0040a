//! `borscht vqgan encode|decode` (inspection against PyTorch, or for humans with
//! `--image`/`--png`) and `borscht train-vqgan`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

use borscht_model::device::{parse_device, parse_dtype};
use borscht_model::vqgan::{load_vqgan, read_vqgan_config, read_vqgan_config_file, VqganConfig};
use borscht_pipelines::imaging::{self, ImageLimits};
use borscht_train::vqgan::{train_vqgan, Perceptual, Quantizer, VqganTraining};

#[derive(Debug, clap::Subcommand)]
pub enum VqganCommand {
    /// Images -> codes.
    Encode(EncodeArgs),
    /// Codes -> images.
    Decode(DecodeArgs),
}

#[derive(Debug, clap::Args)]
pub struct VqganDirArgs {
    /// Directory with config.json and model.safetensors (or a Lightning *.ckpt).
    #[arg(long)]
    pub vqgan: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub vqgan: VqganDirArgs,
    /// Images `[b, 3, H, W]` float32 in [0, 1] (.npy).
    #[arg(long, conflicts_with = "image", required_unless_present = "image")]
    pub images: Option<PathBuf>,
    /// Photos (JPEG, PNG, ...), centre-cropped and resized to `--size`.
    #[arg(long, num_args = 1..)]
    pub image: Vec<PathBuf>,
    /// Side of the square the photos are prepared at (8 x codes per side).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Draw codes from the gumbel-perturbed logits with this seed instead of the argmax.
    #[arg(long)]
    pub gumbel_seed: Option<u64>,
    /// Codes `[b, n]` (int64 .npy).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub vqgan: VqganDirArgs,
    /// Codes `[b, n]` (int .npy), n a square.
    #[arg(long)]
    pub codes: PathBuf,
    /// Images `[b, 3, H, W]` float32 in [0, 1] (.npy).
    #[arg(long, required_unless_present = "png")]
    pub out: Option<PathBuf>,
    /// The images side by side as a PNG.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Pictures per row of the PNG (all in one row when absent).
    #[arg(long, requires = "png")]
    pub columns: Option<usize>,
}

pub fn run(command: VqganCommand) -> Result<()> {
    match command {
        VqganCommand::Encode(args) => encode(args),
        VqganCommand::Decode(args) => decode(args),
    }
}

fn encode(args: EncodeArgs) -> Result<()> {
    let device = parse_device(&args.vqgan.device)?;
    let dtype = parse_dtype(&args.vqgan.dtype)?;
    let vqgan = load_vqgan(&args.vqgan.vqgan, &device, dtype)?;
    let images = match &args.images {
        Some(path) => {
            let images = Tensor::read_npy(path).with_context(|| format!("cannot read {}", path.display()))?;
            if images.rank() != 4 || images.dim(1)? != 3 {
                bail!("{}: expected [batch, 3, H, W], got {:?}", path.display(), images.dims());
            }
            images
        }
        None => {
            let prepared = args
                .image
                .iter()
                .map(|p| {
                    let image =
                        imaging::open_image(p, ImageLimits::default()).with_context(|| p.display().to_string())?;
                    Ok(imaging::prepare(&image, args.size, &Device::Cpu)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&prepared, 0)?
        }
    };
    let factor = vqgan.config().downsample_factor();
    let (_, _, h, w) = images.dims4()?;
    if h % factor != 0 || w % factor != 0 {
        bail!("image size {h}x{w} is not a multiple of the VQGAN's factor {factor}");
    }
    let images = images.to_device(&device)?.to_dtype(dtype)?;
    let codes = match args.gumbel_seed {
        Some(seed) => vqgan.encode_sampled(&images, seed)?,
        None => vqgan.encode(&images)?,
    };
    codes.to_dtype(DType::I64)?.to_device(&Device::Cpu)?.write_npy(&args.out)?;
    eprintln!("wrote codes {:?} to {}", codes.dims(), args.out.display());
    Ok(())
}

fn decode(args: DecodeArgs) -> Result<()> {
    let device = parse_device(&args.vqgan.device)?;
    let vqgan = load_vqgan(&args.vqgan.vqgan, &device, parse_dtype(&args.vqgan.dtype)?)?;
    let codes = Tensor::read_npy(&args.codes).with_context(|| format!("cannot read {}", args.codes.display()))?;
    if codes.rank() != 2 || codes.dtype().is_float() {
        bail!(
            "{}: expected integer codes [batch, n], got {:?} {:?}",
            args.codes.display(),
            codes.dtype(),
            codes.dims()
        );
    }
    let max: i64 = codes.to_dtype(DType::I64)?.max_all()?.to_scalar()?;
    let min: i64 = codes.to_dtype(DType::I64)?.min_all()?.to_scalar()?;
    if min < 0 || max as usize >= vqgan.config().n_embed {
        bail!("codes must lie in 0..{}, found {min}..={max}", vqgan.config().n_embed);
    }
    let images = vqgan
        .decode(&codes.to_dtype(DType::U32)?.to_device(&device)?)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    if let Some(out) = &args.out {
        images.write_npy(out)?;
        eprintln!("wrote images {:?} to {}", images.dims(), out.display());
    }
    if let Some(png) = &args.png {
        let pictures = (0..images.dim(0)?)
            .map(|i| imaging::to_rgb_image(&images.get(i)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        imaging::grid(&pictures, args.columns.unwrap_or(pictures.len())).save(png)?;
        eprintln!("wrote {}", png.display());
    }
    Ok(())
}

/// `--quantizer`: how the codes are learnt (borscht-train's [`Quantizer`]).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum QuantizerArg {
    Nearest,
    Gumbel,
}

#[derive(Debug, clap::Args)]
pub struct TrainVqganArgs {
    /// Folder of training images (searched recursively).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: config.json, model.safetensors, training_state.json, optimizer.safetensors, reconstructions/.
    #[arg(long)]
    pub out: PathBuf,
    /// `sber` (the full f8 model), `small` (ch 64, f8, 1024 codes), a VQGAN config file or a folder holding config.json.
    #[arg(long, default_value = "small")]
    pub config: String,
    #[arg(long, default_value_t = 64)]
    pub image_size: u32,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gumbel-softmax temperature at the start and at the end.
    #[arg(long, default_value_t = 1.0)]
    pub temperature_start: f64,
    #[arg(long, default_value_t = 0.1)]
    pub temperature_end: f64,
    #[arg(long, default_value_t = 1e-3)]
    pub kl_weight: f64,
    /// Weight of the codebook-usage term (KL of the batch's mean code distribution to uniform).
    #[arg(long, default_value_t = 0.1)]
    pub usage_weight: f64,
    /// How codes are learnt: `nearest` (VQ-VAE, sharp codes in a short training) or
    /// `gumbel` (the reference's relaxation; the options below apply to it).
    #[arg(long, value_enum, default_value_t = QuantizerArg::Nearest)]
    pub quantizer: QuantizerArg,
    /// Weight of the nearest-code commitment term.
    #[arg(long, default_value_t = 0.25)]
    pub commitment: f64,
    /// Decode hard codes, with gradients through the soft ones (what inference decodes).
    #[arg(long)]
    pub straight_through: bool,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Add a perceptual distance to the L1 loss: EfficientNet-Lite0's ImageNet weights as
    /// safetensors (scripts/install-tools.sh puts them where $BORSCHT_EFFICIENTNET_LITE0 says).
    #[arg(long)]
    pub perceptual: Option<PathBuf>,
    /// The perceptual distance's weight beside the L1 loss. The distance (four stages, each
    /// up to 4) starts near 10 for a VQGAN's first reconstructions, the L1 loss near 0.5.
    #[arg(long, default_value_t = 0.1, requires = "perceptual")]
    pub perceptual_weight: f64,
    /// Pictures are enlarged this many times before the perceptual network.
    #[arg(long, default_value_t = 2, requires = "perceptual")]
    pub perceptual_upscale: usize,
}

pub fn train(args: TrainVqganArgs) -> Result<()> {
    let model = match args.config.as_str() {
        "sber" => VqganConfig::sber(),
        "small" => VqganConfig::small(),
        path => {
            let path = PathBuf::from(path);
            if path.is_dir() {
                read_vqgan_config(&path)?
            } else {
                read_vqgan_config_file(&path)?
            }
        }
    };
    let training = VqganTraining {
        data: args.data,
        out: args.out,
        model,
        image_size: args.image_size,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        seed: args.seed,
        temperature: (args.temperature_start, args.temperature_end),
        kl_weight: args.kl_weight,
        usage_weight: args.usage_weight,
        straight_through: args.straight_through,
        quantizer: match args.quantizer {
            QuantizerArg::Nearest => Quantizer::Nearest,
            QuantizerArg::Gumbel => Quantizer::Gumbel,
        },
        commitment_weight: args.commitment,
        resume: args.resume,
        stop_after_epochs: None,
        show_progress: true,
        perceptual: args.perceptual.map(|weights| Perceptual {
            weights,
            weight: args.perceptual_weight,
            upscale: args.perceptual_upscale,
        }),
    };
    let history = train_vqgan(&training, &parse_device(&args.device)?)?;
    if let Some(last) = history.last() {
        eprintln!("done: {} epochs, final hard-code L1 {:.4}", last.epoch, last.hard_l1);
    }
    Ok(())
}
