//! 2-D convolution for the VQGAN, with a faster CPU inference path.
//!
//! candle's CPU conv2d cuts the image into small tiles and runs a small matrix
//! product per tile, where packing the operands costs more than the arithmetic.
//! For inference on contiguous f32 CPU tensors we lay out the whole input as one
//! im2col matrix per image (built in parallel) and run one large product per
//! image. Training and other devices use candle's conv2d, which has gradients.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Weights `[out, in, k, k]` and bias `[out]`, initialised like torch's Conv2d.
    pub fn new(
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight =
            vb.get_with_hints((output, input, kernel, kernel), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let bound = 1.0 / ((input * kernel * kernel) as f64).sqrt();
        let bias = vb.get_with_hints(output, "bias", Init::Uniform { lo: -bound, up: bound })?;
        Ok(Conv2d { weight, bias, stride, padding })
    }

    pub fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        let (out_c, in_c, k, _) = self.weight.dims4()?;
        let fast = !differentiable && x.device().is_cpu() && x.dtype() == DType::F32 && k > 1;
        let y = if fast {
            let (b, _, h, w) = x.dims4()?;
            let op = Im2Col { kernel: k, stride: self.stride, padding: self.padding };
            let (out_h, out_w) = op.output_size(h, w);
            let cols = x.contiguous()?.apply_op1_no_bwd(&op)?; // [b, in*k*k, out_h*out_w]
            let kernel =
                self.weight.reshape((1, out_c, in_c * k * k))?.broadcast_as((b, out_c, in_c * k * k))?.contiguous()?;
            kernel.matmul(&cols)?.reshape((b, out_c, out_h, out_w))?
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        y.broadcast_add(&self.bias.reshape((1, out_c, 1, 1))?)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x, false)
    }
}

/// `[b, c, h, w]` -> `[b, c*k*k, out_h*out_w]`, zero padding, row (c, ky, kx) holding
/// that tap for every output position.
struct Im2Col {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Im2Col {
    fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.padding - self.kernel) / self.stride + 1, (w + 2 * self.padding - self.kernel) / self.stride + 1)
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("im2col expects f32") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("im2col expects a contiguous input")
        };
        let x = &data[start..end];
        let (b, c, h, w) = layout.shape().dims4()?;
        let k = self.kernel;
        let (out_h, out_w) = self.output_size(h, w);
        let positions = out_h * out_w;
        let mut cols = vec![0f32; b * c * k * k * positions];
        let (pad, stride) = (self.padding as isize, self.stride);
        cols.par_chunks_mut(positions).enumerate().for_each(|(row, dst)| {
            let (bc, tap) = (row / (k * k), row % (k * k));
            let (ky, kx) = ((tap / k) as isize, (tap % k) as isize);
            let plane = &x[bc * h * w..(bc + 1) * h * w];
            for oy in 0..out_h {
                let iy = (oy * stride) as isize + ky - pad;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src_row = &plane[iy as usize * w..(iy as usize + 1) * w];
                let dst_row = &mut dst[oy * out_w..(oy + 1) * out_w];
                for (ox, d) in dst_row.iter_mut().enumerate() {
                    let ix = (ox * stride) as isize + kx - pad;
                    if ix >= 0 && ix < w as isize {
                        *d = src_row[ix as usize];
                    }
                }
            }
        });
        Ok((CpuStorage::F32(cols), Shape::from((b, c * k * k, positions))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn im2col_path_equals_candle_conv2d() {
        let dev = Device::Cpu;
        for (stride, padding, h, w) in [(1, 1, 9, 7), (2, 0, 9, 9), (1, 0, 5, 6)] {
            let conv = Conv2d {
                weight: Tensor::randn(0f32, 1.0, (5, 3, 3, 3), &dev).unwrap(),
                bias: Tensor::randn(0f32, 1.0, 5, &dev).unwrap(),
                stride,
                padding,
            };
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let fast = conv.forward(&x, false).unwrap();
            let reference = conv.forward(&x, true).unwrap();
            assert_eq!(fast.dims(), reference.dims());
            let diff: f32 = (fast - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(diff < 1e-4, "stride {stride} padding {padding}: {diff}");
        }
    }
}
