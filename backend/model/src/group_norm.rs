//! taming's `Normalize` (GroupNorm, 32 groups) optionally followed by swish, as one
//! pass on the CPU.
//!
//! candle runs element-wise ops one thread at a time and materialises every
//! intermediate, which made GroupNorm + swish most of the VQGAN's CPU time. For
//! inference on contiguous f32 CPU tensors, [`GroupNorm::forward`] computes the
//! statistics and the affine + swish in parallel over (sample, group) in a single
//! custom op. Training and other devices use the composite ops, which have gradients.

use crate::fused::{self, contiguous_f32};
use crate::vector_math::{lane_sum_f64, swish, vectorized};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(channels: usize, groups: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {channels} channels do not split into {groups} groups");
        }
        Ok(GroupNorm {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            groups,
            eps,
        })
    }

    /// `x`: `[b, c, ...]`. `swish` applies `x * sigmoid(x)` after the affine step.
    pub fn forward(&self, x: &Tensor, swish: bool, train: bool) -> Result<Tensor> {
        let fused = !train && fused::applies(x) && fused::applies(&self.weight);
        if fused {
            return x.contiguous()?.apply_op3_no_bwd(
                &self.weight,
                &self.bias,
                &FusedGroupNorm { groups: self.groups, eps: self.eps, swish },
            );
        }
        let y = self.composite(x)?;
        if swish {
            y.silu()
        } else {
            Ok(y)
        }
    }

    fn composite(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let dtype = x.dtype();
        let grouped = x.to_dtype(DType::F32)?.reshape((b, self.groups, ()))?;
        let mean = grouped.mean_keepdim(D::Minus1)?;
        let centred = grouped.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.reshape(dims.as_slice())?.to_dtype(dtype)?;
        let mut affine_shape = vec![1, c];
        affine_shape.resize(dims.len(), 1);
        normed
            .broadcast_mul(&self.weight.reshape(affine_shape.as_slice())?)?
            .broadcast_add(&self.bias.reshape(affine_shape.as_slice())?)
    }
}

struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    swish: bool,
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout, "fused group norm")?;
        let (CpuStorage::F32(w), CpuStorage::F32(bias)) = (weight, bias) else {
            candle_core::bail!("fused group norm expects f32 tensors");
        };
        let w = &w[weight_layout.start_offset()..];
        let bias = &bias[bias_layout.start_offset()..];
        let dims = x_layout.shape().dims();
        let (b, c) = (dims[0], dims[1]);
        let spatial: usize = dims[2..].iter().product();
        let per_group = c / self.groups;
        let group_len = per_group * spatial;
        let write = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(index, (dst, src))| {
                vectorized(
                    #[inline(always)]
                    || {
                        let group = index % self.groups;
                        // Two passes: the mean, then the (biased) variance, as torch computes them.
                        let mean = lane_sum_f64(src, |v| v) / group_len as f64;
                        let var = lane_sum_f64(src, |v| (v - mean as f32) * (v - mean as f32)) / group_len as f64;
                        let inv_std = 1.0 / (var + self.eps).sqrt();
                        for k in 0..per_group {
                            let channel = group * per_group + k;
                            let scale = (w[channel] as f64 * inv_std) as f32;
                            let shift = (bias[channel] as f64 - mean * w[channel] as f64 * inv_std) as f32;
                            let range = k * spatial..(k + 1) * spatial;
                            let (dst, src) = (&mut dst[range.clone()], &src[range]);
                            if self.swish {
                                for (d, &s) in dst.iter_mut().zip(src) {
                                    d.write(swish(s * scale + shift));
                                }
                            } else {
                                for (d, &s) in dst.iter_mut().zip(src) {
                                    d.write(s * scale + shift);
                                }
                            }
                        }
                    },
                )
            })
        };
        // SAFETY: `x` is whole groups (`b * c * spatial` values), and each group's part
        // of `out` is written channel by channel, every value of each.
        let out = unsafe { fused::written_once(x.len(), write) };
        debug_assert_eq!(out.len(), b * c * spatial);
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_equals_composite() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let gn = GroupNorm::new(64, 32, 1e-6, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let gn = GroupNorm {
            weight: Tensor::randn(1f32, 0.3, 64, &dev).unwrap(),
            bias: Tensor::randn(0f32, 0.3, 64, &dev).unwrap(),
            ..gn
        };
        let x = Tensor::randn(0.5f32, 2.0, (3, 64, 5, 7), &dev).unwrap();
        for swish in [false, true] {
            let fused = gn.forward(&x, swish, false).unwrap();
            let composite = gn.forward(&x, swish, true).unwrap();
            let diff = crate::test_support::max_diff(&fused, &composite);
            assert!(diff < 1e-5, "swish {swish}: {diff}");
        }
    }
}
