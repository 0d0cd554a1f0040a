//! The Sber VQGAN (gumbel, f8): rudalle 1.1.3's `VQGanGumbelVAE` on taming's
//! Encoder/Decoder, in candle. Images become grids of codes (RUDOLPH's image
//! tokens) and codes become images again.
//!
//! Structs mirror taming's modules and `vb.pp(...)` its state-dict keys
//! (`encoder.down.0.block.1.norm1.weight`, `quantize.embed.weight`, ...).
//! Every op used has a backward pass, so the same code trains our demo VQGAN.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

use crate::conv::Conv2d;
use crate::group_norm::GroupNorm;
use crate::spatial_attention::attend;
use serde::{Deserialize, Serialize};

/// taming's `ddconfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdConfig {
    pub ch: usize,
    #[serde(default = "three")]
    pub out_ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Feature-map sizes (counted from `resolution`) that get self-attention.
    pub attn_resolutions: Vec<usize>,
    pub z_channels: usize,
    /// The size the network was built for; it places the attention, any input size works.
    pub resolution: usize,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default)]
    pub double_z: bool,
    #[serde(default)]
    pub dropout: f64,
    /// GroupNorm groups (taming's `Normalize` always uses 32). A narrow network needs
    /// fewer: with one channel a group, the decoder's last norm erases each channel's
    /// mean over the picture, and with it the picture's overall colour.
    #[serde(default = "taming_norm_groups")]
    pub norm_groups: usize,
}

fn three() -> usize {
    3
}

fn taming_norm_groups() -> usize {
    32
}

/// What `borscht vqgan --vqgan DIR` reads from `DIR/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqganConfig {
    pub ddconfig: DdConfig,
    pub n_embed: usize,
    pub embed_dim: usize,
}

impl VqganConfig {
    /// `vqgan.gumbelf8-sber.config.yml`.
    pub fn sber() -> Self {
        VqganConfig {
            ddconfig: DdConfig {
                ch: 128,
                out_ch: 3,
                ch_mult: vec![1, 1, 2, 4],
                num_res_blocks: 2,
                attn_resolutions: vec![32],
                z_channels: 256,
                resolution: 256,
                in_channels: 3,
                double_z: false,
                dropout: 0.0,
                norm_groups: 32,
            },
            n_embed: 8192,
            embed_dim: 256,
        }
    }

    /// The demo model's tokenizer: f8 like Sber's, narrower, 1024 codes, for 64x64 pictures.
    pub fn small() -> Self {
        VqganConfig {
            ddconfig: DdConfig {
                ch: 64,
                out_ch: 3,
                ch_mult: vec![1, 1, 2, 2],
                num_res_blocks: 1,
                attn_resolutions: vec![8],
                z_channels: 64,
                resolution: 64,
                in_channels: 3,
                double_z: false,
                dropout: 0.0,
                norm_groups: 32,
            },
            n_embed: 1024,
            embed_dim: 64,
        }
    }

    /// How many pixels one code covers along a side (8 for the Sber f8 model).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.ddconfig.ch_mult.len() - 1)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let d = &self.ddconfig;
        let mut problems = Vec::new();
        if d.ch_mult.is_empty() || d.num_res_blocks == 0 {
            problems.push("ch_mult must not be empty and num_res_blocks must be positive".to_string());
        }
        for mult in d.ch_mult.iter().chain([&1]) {
            if d.norm_groups == 0 || !(d.ch * mult).is_multiple_of(d.norm_groups) {
                problems.push(format!(
                    "channel width {} is not a multiple of {} (GroupNorm groups)",
                    d.ch * mult,
                    d.norm_groups
                ));
            }
        }
        if d.double_z {
            problems.push("double_z is not used by the gumbel VQGAN".into());
        }
        // GumbelQuantize's projection is built for z_channels but fed quant_conv's embed_dim channels.
        if self.embed_dim != d.z_channels {
            problems.push(format!("embed_dim {} must equal z_channels {}", self.embed_dim, d.z_channels));
        }
        if self.n_embed == 0 {
            problems.push("n_embed must be positive".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// taming's `Normalize`: GroupNorm with 32 groups, eps 1e-6.
const GROUP_NORM_EPS: f64 = 1e-6;

fn group_norm(channels: usize, groups: usize, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(channels, groups, GROUP_NORM_EPS, vb)
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, padding: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(input, output, kernel, stride, padding, vb)
}

#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(input: usize, output: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(ResnetBlock {
            norm1: group_norm(input, groups, vb.pp("norm1"))?,
            conv1: conv(input, output, 3, 1, 1, vb.pp("conv1"))?,
            norm2: group_norm(output, groups, vb.pp("norm2"))?,
            conv2: conv(output, output, 3, 1, 1, vb.pp("conv2"))?,
            nin_shortcut: (input != output).then(|| conv(input, output, 1, 1, 0, vb.pp("nin_shortcut"))).transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, diff: bool) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true, diff)?, diff)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, true, diff)?, diff)?;
        let shortcut = match &self.nin_shortcut {
            Some(c) => c.forward(x, diff)?,
            None => x.clone(),
        };
        shortcut + h
    }
}

/// Single-head self-attention over all positions of a feature map.
#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(AttnBlock {
            norm: group_norm(channels, groups, vb.pp("norm"))?,
            q: conv(channels, channels, 1, 1, 0, vb.pp("q"))?,
            k: conv(channels, channels, 1, 1, 0, vb.pp("k"))?,
            v: conv(channels, channels, 1, 1, 0, vb.pp("v"))?,
            proj_out: conv(channels, channels, 1, 1, 0, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x, false, train)?;
        let q = self.q.forward(&normed, train)?.reshape((b, c, h * w))?; // b, c, hw
        let k = self.k.forward(&normed, train)?.reshape((b, c, h * w))?;
        let v = self.v.forward(&normed, train)?.reshape((b, c, h * w))?;
        let attended = attend(&q, &k, &v, train)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&attended, train)?
    }
}

/// One resolution level: residual blocks, each optionally followed by attention.
#[derive(Debug, Clone)]
struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    /// Downsample (encoder) or upsample (decoder) conv, absent at the last level.
    resample: Option<Conv2d>,
}

impl Level {
    fn forward_blocks(&self, mut h: Tensor, diff: bool) -> Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, diff)?;
            if let Some(attn) = self.attns.get(i) {
                h = attn.forward(&h, diff)?;
            }
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
struct Middle {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Middle {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Middle {
            block_1: ResnetBlock::new(channels, channels, groups, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(channels, groups, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(channels, channels, groups, vb.pp("block_2"))?,
        })
    }

    fn forward(&self, x: &Tensor, diff: bool) -> Result<Tensor> {
        self.block_2.forward(&self.attn_1.forward(&self.block_1.forward(x, diff)?, diff)?, diff)
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: Middle,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &DdConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.ch_mult.len();
        let mut curr_res = cfg.resolution;
        let mut block_in = cfg.ch;
        let mut down = Vec::with_capacity(levels);
        for (level, mult) in cfg.ch_mult.iter().enumerate() {
            let vb = vb.pp("down").pp(level);
            let block_out = cfg.ch * mult;
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for i in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(block_in, block_out, cfg.norm_groups, vb.pp("block").pp(i))?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&curr_res) {
                    attns.push(AttnBlock::new(block_in, cfg.norm_groups, vb.pp("attn").pp(i))?);
                }
            }
            let resample = (level != levels - 1)
                .then(|| conv(block_in, block_in, 3, 2, 0, vb.pp("downsample").pp("conv")))
                .transpose()?;
            if resample.is_some() {
                curr_res /= 2;
            }
            down.push(Level { blocks, attns, resample });
        }
        Ok(Encoder {
            conv_in: conv(cfg.in_channels, cfg.ch, 3, 1, 1, vb.pp("conv_in"))?,
            mid: Middle::new(block_in, cfg.norm_groups, vb.pp("mid"))?,
            norm_out: group_norm(block_in, cfg.norm_groups, vb.pp("norm_out"))?,
            conv_out: conv(block_in, cfg.z_channels, 3, 1, 1, vb.pp("conv_out"))?,
            down,
        })
    }

    fn forward(&self, x: &Tensor, diff: bool) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x, diff)?;
        for level in &self.down {
            h = level.forward_blocks(h, diff)?;
            if let Some(downsample) = &level.resample {
                // No asymmetric padding in conv: pad right and bottom by one, then stride 2.
                h = downsample.forward(&h.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?, diff)?;
            }
        }
        let h = self.mid.forward(&h, diff)?;
        self.conv_out.forward(&self.norm_out.forward(&h, true, diff)?, diff)
    }
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid: Middle,
    /// Indexed by level (0 = full resolution), run from the last level down.
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &DdConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        let mut curr_res = cfg.resolution >> (levels - 1);
        let conv_in = conv(cfg.z_channels, block_in, 3, 1, 1, vb.pp("conv_in"))?;
        let mid = Middle::new(block_in, cfg.norm_groups, vb.pp("mid"))?;
        let mut up: Vec<Option<Level>> = vec![None; levels];
        for level in (0..levels).rev() {
            let vb = vb.pp("up").pp(level);
            let block_out = cfg.ch * cfg.ch_mult[level];
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for i in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(block_in, block_out, cfg.norm_groups, vb.pp("block").pp(i))?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&curr_res) {
                    attns.push(AttnBlock::new(block_in, cfg.norm_groups, vb.pp("attn").pp(i))?);
                }
            }
            let resample =
                (level != 0).then(|| conv(block_in, block_in, 3, 1, 1, vb.pp("upsample").pp("conv"))).transpose()?;
            if resample.is_some() {
                curr_res *= 2;
            }
            up[level] = Some(Level { blocks, attns, resample });
        }
        Ok(Decoder {
            conv_in,
            mid,
            up: up.into_iter().map(|l| l.expect("every level built")).collect(),
            norm_out: group_norm(block_in, cfg.norm_groups, vb.pp("norm_out"))?,
            conv_out: conv(block_in, cfg.out_ch, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor, diff: bool) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z, diff)?, diff)?;
        for level in self.up.iter().rev() {
            h = level.forward_blocks(h, diff)?;
            if let Some(upsample) = &level.resample {
                let (_, _, height, width) = h.dims4()?;
                h = upsample.forward(&h.upsample_nearest2d(height * 2, width * 2)?, diff)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h, true, diff)?, diff)
    }
}

/// The encoder-side output of one training step.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// Decoded images in [-1, 1] (unclamped, for the loss).
    pub images: Tensor,
    /// KL divergence of the code distribution to the uniform prior (mean over positions).
    pub kl: Tensor,
    /// KL divergence of the batch's average code distribution to the uniform prior:
    /// low when the batch uses many codes. Short trainings collapse onto a handful of
    /// codes without it (the per-position `kl` does not see usage across positions).
    pub usage_kl: Tensor,
    /// The codes picked (argmax of the relaxed sample), `[b, h*w]`.
    pub codes: Tensor,
}

/// The whole VQGAN.
#[derive(Debug, Clone)]
pub struct Vqgan {
    cfg: VqganConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    /// `quantize.proj`: features -> code logits.
    proj: Conv2d,
    /// `quantize.embed`: the codebook.
    embed: Embedding,
}

impl Vqgan {
    pub fn new(cfg: &VqganConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d = &cfg.ddconfig;
        let embed = vb.pp("quantize").pp("embed").get_with_hints(
            (cfg.n_embed, cfg.embed_dim),
            "weight",
            candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 },
        )?;
        Ok(Vqgan {
            encoder: Encoder::new(d, vb.pp("encoder"))?,
            decoder: Decoder::new(d, vb.pp("decoder"))?,
            quant_conv: conv(d.z_channels, cfg.embed_dim, 1, 1, 0, vb.pp("quant_conv"))?,
            post_quant_conv: conv(cfg.embed_dim, d.z_channels, 1, 1, 0, vb.pp("post_quant_conv"))?,
            proj: conv(d.z_channels, cfg.n_embed, 1, 1, 0, vb.pp("quantize").pp("proj"))?,
            embed: Embedding::new(embed, cfg.embed_dim),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VqganConfig {
        &self.cfg
    }

    /// The codebook `[n_embed, embed_dim]`.
    pub fn codebook(&self) -> &Tensor {
        self.embed.embeddings()
    }

    /// Code logits `[b, n_embed, h, w]` of images `[b, 3, H, W]` in [0, 1].
    pub fn code_logits(&self, images: &Tensor) -> Result<Tensor> {
        self.code_logits_t(images, false)
    }

    /// [`Vqgan::code_logits`], train with `train` (candle-nn's `ModuleT` flag).
    fn code_logits_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        self.proj.forward(&self.features(images, train)?, train)
    }

    /// Images `[b, 3, H, W]` in [0, 1] -> codes `[b, (H/f) * (W/f)]` (u32), by argmax
    /// (the reference's `disable_gumbel_softmax=True`).
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        self.code_logits(images)?.argmax(1)?.flatten_from(1)
    }

    /// Like [`Vqgan::encode`] but draws each code from the gumbel-perturbed logits,
    /// as the reference does by default (reproducible through `seed`).
    pub fn encode_sampled(&self, images: &Tensor, seed: u64) -> Result<Tensor> {
        let logits = self.code_logits(images)?;
        let noise = gumbel_noise(logits.shape(), seed, logits.device())?.to_dtype(logits.dtype())?;
        (logits + noise)?.argmax(1)?.flatten_from(1)
    }

    /// Codes `[b, n]` (n a square) -> images `[b, 3, H, W]` in [0, 1].
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let decoded = self.decode_raw(codes)?;
        (decoded.clamp(-1.0, 1.0)? + 1.0)? * 0.5
    }

    fn decode_raw(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, n) = codes.dims2()?;
        let side = (n as f64).sqrt().round() as usize;
        if side * side != n {
            candle_core::bail!("{n} codes do not form a square grid");
        }
        let z = self.embed.forward(&codes.to_dtype(DType::U32)?)?; // b, n, d
        let z = z.reshape((b, side, side, self.cfg.embed_dim))?.permute((0, 3, 1, 2))?.contiguous()?;
        self.decoder.forward(&self.post_quant_conv.forward(&z, false)?, false)
    }

    /// One training pass: gumbel-softmax relaxation at `temperature` (soft codes, so
    /// gradients reach the encoder), decode, and the KL term of the reference.
    ///
    /// `straight_through` decodes the hard one-hot choice while the gradient flows
    /// through the soft one (taming's `straight_through`): the decoder then trains on
    /// what inference gives it, which a short training needs.
    pub fn reconstruct(
        &self,
        images: &Tensor,
        temperature: f64,
        seed: u64,
        straight_through: bool,
        train: bool,
    ) -> Result<Reconstruction> {
        let logits = self.code_logits_t(images, train)?; // b, n, h, w
        let (b, n, h, w) = logits.dims4()?;
        let noise = gumbel_noise(logits.shape(), seed, logits.device())?;
        let soft = candle_nn::ops::softmax(&((&logits + noise)? / temperature)?, 1)?;
        let picked = soft.argmax(1)?; // b, h, w
        let codes = picked.reshape((b, h * w))?;
        let soft = if straight_through {
            let hard =
                candle_nn::encoding::one_hot(picked, n, 1f32, 0f32)?.permute((0, 3, 1, 2))?.to_dtype(soft.dtype())?;
            ((hard - soft.detach())? + &soft)?
        } else {
            soft
        };
        // z_q = sum_n soft[b, n, h, w] * embed[n, d]
        let flat = soft.permute((0, 2, 3, 1))?.reshape((b * h * w, n))?;
        let z = flat.matmul(self.embed.embeddings())?.reshape((b, h, w, self.cfg.embed_dim))?.permute((0, 3, 1, 2))?;
        let decoded = self.decoder.forward(&self.post_quant_conv.forward(&z.contiguous()?, train)?, train)?;
        // KL(q || uniform) = sum q * log(q * n_embed), averaged over positions.
        let q = candle_nn::ops::softmax(&logits, 1)?;
        let kl = (&q * ((&q * n as f64)? + 1e-10)?.log()?)?.sum(1)?.mean_all()?;
        let mean_q = q.permute((1, 0, 2, 3))?.reshape((n, b * h * w))?.mean(1)?;
        let usage_kl = (&mean_q * ((&mean_q * n as f64)? + 1e-10)?.log()?)?.sum_all()?;
        Ok(Reconstruction { images: decoded, kl, usage_kl, codes })
    }
}

/// One nearest-code training step's outputs ([`Vqgan::reconstruct_nearest`]).
#[derive(Debug, Clone)]
pub struct NearestReconstruction {
    /// Decoded images in [-1, 1] (unclamped, for the loss).
    pub images: Tensor,
    /// Mean squared distance of the picked codebook vectors to the (fixed) features:
    /// moves the codebook.
    pub codebook_loss: Tensor,
    /// The same distance seen from the encoder (codebook fixed): keeps the features
    /// near their codes.
    pub commitment: Tensor,
    /// The codes picked, `[b, h*w]`.
    pub codes: Tensor,
    /// The encoder features `[b*h*w, embed_dim]` (no gradient), to restart unused codes.
    pub features: Tensor,
}

impl Vqgan {
    /// Encoder features `[b, embed_dim, h, w]`: what `quantize.proj` reads.
    fn features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let x = ((images * 2.0)? - 1.0)?;
        self.quant_conv.forward(&self.encoder.forward(&x, train)?, train)
    }

    /// One training pass of the nearest-code quantiser (VQ-VAE): each position takes
    /// the codebook vector nearest its features; the decoder reads that vector, with
    /// the gradient passed straight through to the encoder. No relaxation, so the
    /// decoder trains on exactly what inference gives it, and a short CPU training
    /// learns sharp codes where the gumbel relaxation blurs them.
    ///
    /// Inference still takes `argmax(quantize.proj(features))`: after training,
    /// [`Vqgan::nearest_code_projection`] makes that argmax the nearest code.
    pub fn reconstruct_nearest(&self, images: &Tensor, train: bool) -> Result<NearestReconstruction> {
        let h = self.features(images, train)?;
        let (b, d, height, width) = h.dims4()?;
        let flat = h.permute((0, 2, 3, 1))?.reshape((b * height * width, d))?;
        let codebook = self.embed.embeddings();
        let codes = self.nearest_codes(&flat.detach())?;
        let picked = codebook.index_select(&codes, 0)?;
        let codebook_loss = (&picked - flat.detach())?.sqr()?.mean_all()?;
        let commitment = (&flat - picked.detach())?.sqr()?.mean_all()?;
        let straight_through = (&flat + (&picked - &flat)?.detach())?;
        let z = straight_through.reshape((b, height, width, d))?.permute((0, 3, 1, 2))?.contiguous()?;
        let decoded = self.decoder.forward(&self.post_quant_conv.forward(&z, train)?, train)?;
        Ok(NearestReconstruction {
            images: decoded,
            codebook_loss,
            commitment,
            codes: codes.reshape((b, height * width))?,
            features: flat.detach(),
        })
    }

    /// `quantize.proj`'s weight `[n_embed, embed_dim, 1, 1]` and bias `[n_embed]` that
    /// make its argmax the nearest code: `|h - e_k|^2 = |h|^2 - (2 e_k . h - |e_k|^2)`,
    /// so the logits `2 e_k . h - |e_k|^2` rank the codes by distance.
    pub fn nearest_code_projection(&self) -> Result<(Tensor, Tensor)> {
        let codebook = self.embed.embeddings().detach();
        let (n, d) = codebook.dims2()?;
        let weight = (&codebook * 2.0)?.reshape((n, d, 1, 1))?;
        let bias = codebook.sqr()?.sum(1)?.neg()?;
        Ok((weight, bias))
    }

    /// The nearest code of each row of `features` `[m, embed_dim]`, ranked by the same
    /// logits [`Vqgan::nearest_code_projection`] gives inference.
    fn nearest_codes(&self, features: &Tensor) -> Result<Tensor> {
        let (weight, bias) = self.nearest_code_projection()?;
        let (n, d, _, _) = weight.dims4()?;
        features.matmul(&weight.reshape((n, d))?.t()?)?.broadcast_add(&bias.unsqueeze(0)?)?.argmax(1)
    }
}

/// Standard Gumbel noise `-log(-log(u))`, reproducible from `seed` on any device.
fn gumbel_noise(shape: &candle_core::Shape, seed: u64, device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            let u: f32 = rng.random_range(f32::EPSILON..1.0);
            -(-u.ln()).ln()
        })
        .collect();
    Tensor::from_vec(values, shape, device)
}

/// `DIR/config.json` of a VQGAN directory.
pub const VQGAN_CONFIG_FILE: &str = "config.json";
/// Our converted weights; the Sber `*.ckpt` Lightning file is found too.
pub const VQGAN_WEIGHTS_FILE: &str = "model.safetensors";

/// Reads `DIR/config.json` (`{"ddconfig": {...}, "n_embed", "embed_dim"}`).
pub fn read_vqgan_config(dir: &std::path::Path) -> anyhow::Result<VqganConfig> {
    read_vqgan_config_file(&dir.join(VQGAN_CONFIG_FILE))
}

/// A VQGAN config file by its own name (e.g. `scripts/demo-model/vqgan.json`).
pub fn read_vqgan_config_file(path: &std::path::Path) -> anyhow::Result<VqganConfig> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: VqganConfig =
        serde_json::from_str(&text).with_context(|| format!("{} is not a VQGAN config", path.display()))?;
    cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(cfg)
}

/// The weights file of a VQGAN directory: `model.safetensors`, else the one `*.ckpt`.
pub fn find_vqgan_weights(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let safetensors = dir.join(VQGAN_WEIGHTS_FILE);
    if safetensors.is_file() {
        return Ok(safetensors);
    }
    let mut ckpts: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read VQGAN directory {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .collect();
    ckpts.sort();
    match ckpts.len() {
        1 => Ok(ckpts.remove(0)),
        0 => anyhow::bail!("{} holds neither {VQGAN_WEIGHTS_FILE} nor a *.ckpt checkpoint", dir.display()),
        _ => anyhow::bail!(
            "{} holds several *.ckpt files; keep one or convert it to {VQGAN_WEIGHTS_FILE}",
            dir.display()
        ),
    }
}

/// Loads a VQGAN directory onto `device`.
pub fn load_vqgan(dir: &std::path::Path, device: &Device, dtype: DType) -> anyhow::Result<Vqgan> {
    load_vqgan_file(&find_vqgan_weights(dir)?, &read_vqgan_config(dir)?, device, dtype)
}

/// Where the weights sit in the file: under `state_dict` in a Lightning `.ckpt`.
fn state_key(weights: &std::path::Path) -> Option<&'static str> {
    weights.extension().is_some_and(|e| e == "ckpt").then_some("state_dict")
}

/// Loads VQGAN weights (safetensors or a Lightning `.ckpt`) of a known shape.
pub fn load_vqgan_file(
    weights: &std::path::Path,
    cfg: &VqganConfig,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<Vqgan> {
    let vb = crate::checkpoint::var_builder(weights, state_key(weights), dtype, device)?;
    Ok(Vqgan::new(cfg, vb)?)
}

/// Writes `out_dir/config.json` + `out_dir/model.safetensors` (loss.* and other extras dropped).
pub fn convert_vqgan(dir: &std::path::Path, out_dir: &std::path::Path, dtype: DType) -> anyhow::Result<()> {
    let cfg = read_vqgan_config(dir)?;
    let weights = find_vqgan_weights(dir)?;
    // The tensors the model reads, with their shapes; everything else (loss.*) is dropped.
    let varmap = candle_nn::VarMap::new();
    Vqgan::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let wanted: std::collections::HashMap<String, Vec<usize>> =
        varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    let tensors: std::collections::HashMap<String, Tensor> =
        crate::checkpoint::read_all(&weights, state_key(&weights))?
            .into_iter()
            .filter(|(name, _)| wanted.contains_key(name))
            .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
            .collect::<anyhow::Result<_>>()?;
    let mut names: Vec<&String> = wanted.keys().collect();
    names.sort();
    for name in names {
        let shape = &wanted[name];
        match tensors.get(name) {
            None => anyhow::bail!("{}: missing tensor `{name}` (expected shape {shape:?})", weights.display()),
            Some(t) if t.dims() != shape.as_slice() => {
                anyhow::bail!("{}: tensor `{name}` has shape {:?}, expected {shape:?}", weights.display(), t.dims())
            }
            Some(_) => {}
        }
    }
    std::fs::create_dir_all(out_dir)?;
    crate::checkpoint::write_atomically(&out_dir.join(VQGAN_WEIGHTS_FILE), |p| {
        Ok(candle_core::safetensors::save(&tensors, p)?)
    })?;
    std::fs::write(out_dir.join(VQGAN_CONFIG_FILE), serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json_groups: &str) -> std::result::Result<VqganConfig, String> {
        let json = format!(
            r#"{{"ddconfig": {{"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                "z_channels": 16, "resolution": 16{json_groups}}}, "n_embed": 8, "embed_dim": 16}}"#
        );
        let cfg: VqganConfig = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        cfg.validate().map(|()| cfg)
    }

    #[test]
    fn group_norm_groups_default_to_tamings_and_must_divide_every_width() {
        assert_eq!(config("").unwrap().ddconfig.norm_groups, 32, "taming's Normalize");
        assert_eq!(config(r#", "norm_groups": 8"#).unwrap().ddconfig.norm_groups, 8);
        let err = config(r#", "norm_groups": 24"#).unwrap_err();
        assert!(err.contains("channel width 32 is not a multiple of 24"), "{err}");
        assert!(config(r#", "norm_groups": 0"#).is_err());
    }
}
