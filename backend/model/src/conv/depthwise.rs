//! Depthwise 2-D convolution (one k x k filter per channel, as MobileNet and EfficientNet
//! use), with a gradient for the input. candle runs a grouped convolution as one
//! convolution per group, which for a thousand channels is a thousand small ops forward
//! and backward; on contiguous f32 CPU tensors this walks each channel's plane directly.
//! Other devices and dtypes use candle's grouped conv2d.

use super::SharedPtr;
use crate::fused::{self, contiguous_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Zero padding on each side: (top, bottom, left, right).
pub type Padding = (usize, usize, usize, usize);

/// TensorFlow's "same" padding of one side length: the output is `ceil(size / stride)`
/// long, the extra row or column (when the total is odd) goes after. EfficientNet-Lite's
/// ImageNet weights were trained with it.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// `x` `[b, c, h, w]` convolved per channel with `weight` `[c, 1, k, k]`, plus `bias` `[c]`.
/// Differentiable in `x` only (the weights are treated as constants).
pub fn depthwise_conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: Padding) -> Result<Tensor> {
    let (c, one, k, k2) = weight.dims4()?;
    if one != 1 || k != k2 || x.dim(1)? != c || bias.dims1()? != c {
        candle_core::bail!(
            "depthwise conv: weight {:?} / bias {:?} do not fit input {:?}",
            weight.shape(),
            bias.shape(),
            x.shape()
        );
    }
    if !fused::applies(x) {
        let (top, bottom, left, right) = padding;
        let padded = x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let out = padded.conv2d(weight, 0, stride, 1, c)?;
        return out.broadcast_add(&bias.reshape((1, c, 1, 1))?);
    }
    let op = Depthwise {
        weight: Arc::new(weight.flatten_all()?.to_vec1()?),
        bias: Arc::new(bias.to_vec1()?),
        kernel: k,
        stride,
        padding,
    };
    x.contiguous()?.apply_op1(op)
}

#[derive(Clone)]
struct Depthwise {
    /// `[c, k, k]`.
    weight: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    kernel: usize,
    stride: usize,
    padding: Padding,
}

impl Depthwise {
    fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (top, bottom, left, right) = self.padding;
        let (ph, pw) = (h + top + bottom, w + left + right);
        if ph < self.kernel || pw < self.kernel {
            candle_core::bail!(
                "depthwise conv: a {h}x{w} input is smaller than its {}x{} kernel",
                self.kernel,
                self.kernel
            );
        }
        Ok(((ph - self.kernel) / self.stride + 1, (pw - self.kernel) / self.stride + 1))
    }

    /// Calls `tap(input index, output index, weight)` for each tap of channel `channel`
    /// that falls inside an `h` x `w` input plane.
    #[inline(always)]
    fn for_each_tap(
        &self,
        channel: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        mut tap: impl FnMut(usize, usize, f32),
    ) {
        let k = self.kernel;
        let (top, _, left, _) = self.padding;
        let filter = &self.weight[channel * k * k..(channel + 1) * k * k];
        for oy in 0..oh {
            for ky in 0..k {
                let Some(iy) = (oy * self.stride + ky).checked_sub(top).filter(|&iy| iy < h) else { continue };
                for kx in 0..k {
                    let weight = filter[ky * k + kx];
                    for ox in 0..ow {
                        if let Some(ix) = (ox * self.stride + kx).checked_sub(left).filter(|&ix| ix < w) {
                            tap(iy * w + ix, oy * ow + ox, weight);
                        }
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "depthwise conv")?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = self.output_size(h, w)?;
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).enumerate().for_each(|(plane, (out, x))| {
            let channel = plane % c;
            out.fill(self.bias[channel]);
            self.for_each_tap(channel, (h, w), (oh, ow), |i, o, weight| out[o] += weight * x[i]);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let op = DepthwiseInputGrad { conv: self.clone(), input_size: (h, w) };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
    }
}

/// The adjoint of [`Depthwise`] in its input: each output's gradient spread back over the
/// input positions its taps read.
struct DepthwiseInputGrad {
    conv: Depthwise,
    input_size: (usize, usize),
}

impl CustomOp1 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(storage, layout, "depthwise conv gradient")?;
        let (b, c, oh, ow) = layout.shape().dims4()?;
        let (h, w) = self.input_size;
        if self.conv.output_size(h, w)? != (oh, ow) {
            candle_core::bail!("depthwise conv gradient: {:?} is not the output of a {h}x{w} input", layout.shape());
        }
        let mut dx = vec![0f32; b * c * h * w];
        let dx_ptr = SharedPtr(dx.as_mut_ptr());
        (0..b * c).into_par_iter().for_each(|plane| {
            #[allow(clippy::redundant_locals)]
            let dx_ptr = dx_ptr;
            // SAFETY: each task writes only its own plane of `dx`.
            let dx = unsafe { std::slice::from_raw_parts_mut(dx_ptr.0.add(plane * h * w), h * w) };
            let grad = &grad[plane * oh * ow..(plane + 1) * oh * ow];
            self.conv.for_each_tap(plane % c, (h, w), (oh, ow), |i, o, weight| dx[i] += weight * grad[o]);
        });
        Ok((CpuStorage::F32(dx), Shape::from((b, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut state = seed;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// The op against candle's grouped convolution of the padded input, values and input
    /// gradients, for EfficientNet's kernels and strides and an odd size (uneven padding).
    #[test]
    fn depthwise_matches_a_grouped_convolution_forward_and_backward() {
        for (k, stride, size) in [(3, 1, 9), (3, 2, 10), (5, 2, 11), (5, 1, 8)] {
            let (c, b) = (6, 2);
            let x = Var::from_tensor(&random(&[b, c, size, size], k as u64)).unwrap();
            let weight = random(&[c, 1, k, k], 7 + stride as u64);
            let bias = random(&[c], 3);
            let (top, bottom) = same_padding(size, k, stride);
            let padding = (top, bottom, top, bottom);
            let ours = depthwise_conv2d(x.as_tensor(), &weight, &bias, stride, padding).unwrap();
            let padded = x.pad_with_zeros(2, top, bottom).unwrap().pad_with_zeros(3, top, bottom).unwrap();
            let theirs = padded
                .conv2d(&weight, 0, stride, 1, c)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "k {k} stride {stride} size {size}");
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "k {k} stride {stride}: outputs differ by {diff}");
            // A loss that weighs every output differently, so a misplaced gradient shows.
            let probe = random(ours.dims(), 11);
            let ours_grad = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let theirs_grad = (&theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (ours_grad.get(&x).unwrap(), theirs_grad.get(&x).unwrap());
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "k {k} stride {stride}: input gradients differ by {diff}");
        }
    }

    #[test]
    fn same_padding_is_tensorflows() {
        // 224 px, 3x3, stride 2: out 112, total (111 * 2 + 3) - 224 = 1, after the picture.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(16, 5, 2), (1, 2));
        assert_eq!(same_padding(16, 5, 1), (2, 2));
        assert_eq!(same_padding(1, 3, 2), (1, 1));
    }
}
