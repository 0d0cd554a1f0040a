//! 2-D convolution for the VQGAN, with faster CPU paths.
//!
//! candle's CPU conv2d cuts the image into small tiles and runs a small matrix
//! product per tile, where packing the operands costs more than the arithmetic.
//! On contiguous f32 CPU tensors, inference goes one tile of output positions at a
//! time ([`TiledConv`]: im2col columns kept in L2, multiplied straight into the
//! output); training lays out the whole batch as one im2col matrix and runs one large
//! product, with the adjoint (col2im) as backward, since candle's own conv2d backward
//! goes through a slow conv_transpose2d. Other devices and dtypes use candle's conv2d.

use crate::fused::{self, contiguous_f32};
use crate::vector_math::vectorized;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

pub mod depthwise;
mod winograd;

/// Largest im2col matrix built at once; bigger batches are split by image.
const IM2COL_BUDGET_BYTES: usize = 512 << 20;

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    /// The kernels' Winograd transform, made at the first inference that uses it.
    winograd: OnceLock<Arc<Vec<f32>>>,
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
        Ok(Conv2d { weight, bias, stride, padding, winograd: OnceLock::new() })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_within(x, train, IM2COL_BUDGET_BYTES)
    }

    /// [`Conv2d::forward`] with whole-batch im2col matrices of at most `budget` bytes.
    fn forward_within(&self, x: &Tensor, train: bool, budget: usize) -> Result<Tensor> {
        let (out_c, in_c, k, _) = self.weight.dims4()?;
        let (b, _, h, w) = x.dims4()?;
        if !fused::applies(x) {
            return x
                .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
                .broadcast_add(&self.bias.reshape((1, out_c, 1, 1))?);
        }
        if !train {
            if k == 3 && self.stride == 1 && self.padding == 1 && winograd::worth_it(in_c, out_c, (h, w)) {
                let op = winograd::WinogradConv { weights: self.winograd_weights()?, out_c };
                return x.contiguous()?.apply_op2_no_bwd(&self.bias.contiguous()?, &op);
            }
            let op = TiledConv { stride: self.stride, padding: self.padding };
            return x.contiguous()?.apply_op3_no_bwd(&self.weight, &self.bias, &op);
        }
        let op = Im2Col { kernel: k, stride: self.stride, padding: self.padding };
        let (out_h, out_w) = op.output_size(h, w);
        // The im2col matrix is k*k times the input: for a big batch of large pictures
        // (16 Sber-VQGAN photos at 256 px: 4.8 GB for one convolution) go a few at a time.
        let per_image = in_c * k * k * out_h * out_w * std::mem::size_of::<f32>();
        let images_at_once = (budget / per_image.max(1)).max(1);
        if b > images_at_once {
            let parts = (0..b)
                .step_by(images_at_once)
                .map(|start| self.forward_within(&x.narrow(0, start, images_at_once.min(b - start))?, train, budget))
                .collect::<Result<Vec<_>>>()?;
            return Tensor::cat(&parts, 0);
        }
        let x = x.contiguous()?;
        // [in*k*k, b*out_h*out_w]: one product for the whole batch, and the bias added
        // along rows, so neither gradient needs a strided reduction.
        let cols = x.apply_op1(op)?;
        let y = self
            .weight
            .reshape((out_c, in_c * k * k))?
            .matmul(&cols)?
            .broadcast_add(&self.bias.reshape((out_c, 1))?)?;
        y.reshape((out_c, b, out_h, out_w))?.transpose(0, 1)?.contiguous()
    }

    /// The kernels' Winograd transform: kept from the first call, except for weights
    /// that are being trained (a variable changes between calls; a tensor cannot).
    fn winograd_weights(&self) -> Result<Arc<Vec<f32>>> {
        let transform = || -> Result<Arc<Vec<f32>>> {
            let (out_c, in_c, _, _) = self.weight.dims4()?;
            let weight = self.weight.flatten_all()?.to_vec1::<f32>()?;
            Ok(Arc::new(winograd::transform_weights(&weight, out_c, in_c)))
        };
        if self.weight.is_variable() {
            return transform();
        }
        if let Some(weights) = self.winograd.get() {
            return Ok(weights.clone());
        }
        let weights = transform()?;
        Ok(self.winograd.get_or_init(|| weights).clone())
    }

    /// candle's own conv2d, for checking the fast paths against it.
    #[cfg(test)]
    fn forward_with_candle(&self, x: &Tensor) -> Result<Tensor> {
        let out_c = self.weight.dim(0)?;
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?.broadcast_add(&self.bias.reshape((1, out_c, 1, 1))?)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x, false)
    }
}

/// Inference: the convolution one tile of output positions at a time. Each task lays
/// out its tile's im2col columns (`[c*k*k, tile]`, sized to stay in L2) and multiplies
/// them straight into the output, which starts as the bias. The whole-batch im2col
/// matrix, nine times the input, never goes to memory and back, and the output needs
/// no transposing or separate bias pass.
#[derive(Debug, Clone, Copy)]
struct TiledConv {
    stride: usize,
    padding: usize,
}

/// Bytes of im2col columns per tile: what L2 holds beside the weights. Tiles have at
/// least 256 positions, so that wide convolutions (Sber's 128 to 512 channels) still
/// multiply enough columns per repacking of their weight.
const TILE_BYTES: usize = 256 << 10;

/// A pointer into a buffer that parallel tasks share; each writes its own disjoint part
/// (here a tile's columns of the output).
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: the tasks sharing one write disjoint parts of its buffer.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl CustomOp3 for TiledConv {
    fn name(&self) -> &'static str {
        "tiled-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "conv2d")?;
        let weight = contiguous_f32(s2, l2, "conv2d")?;
        let bias = contiguous_f32(s3, l3, "conv2d")?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let (out_c, in_c, k, k2) = l2.shape().dims4()?;
        if in_c != c || k2 != k || bias.len() != out_c {
            candle_core::bail!(
                "conv2d: weight {:?} / bias {:?} do not fit input {:?}",
                l2.shape(),
                l3.shape(),
                l1.shape()
            );
        }
        let geometry = Im2Col { kernel: k, stride: self.stride, padding: self.padding };
        let (out_h, out_w) = geometry.output_size(h, w);
        let positions = out_h * out_w;
        let depth = c * k * k;
        let tile = (TILE_BYTES / (depth * 4)).clamp(256, 1024).min(positions.next_multiple_of(16));
        // A 1x1 convolution with stride 1 reads the input in place: its im2col is the input.
        let direct = k == 1 && self.stride == 1 && self.padding == 0;
        let tasks: Vec<(usize, usize)> =
            (0..b).flat_map(|image| (0..positions).step_by(tile).map(move |first| (image, first))).collect();
        let write = |out: &mut [MaybeUninit<f32>]| {
            let out_ptr = SharedPtr(out.as_mut_ptr().cast::<f32>());
            tasks.into_par_iter().for_each_init(
                || vec![0f32; if direct { 0 } else { depth * tile }],
                |cols, (image, first)| {
                    let n = tile.min(positions - first);
                    let plane = &x[image * c * h * w..(image + 1) * c * h * w];
                    let (rhs, rhs_rs) = if direct {
                        (plane[first..].as_ptr(), positions as isize)
                    } else {
                        let cols = &mut cols[..depth * n];
                        vectorized(
                            #[inline(always)]
                            || fill_tile(cols, plane, (c, h, w), out_w, geometry, first, n),
                        );
                        (cols.as_ptr(), n as isize)
                    };
                    // Rebound so the closure captures the whole `SharedPtr` (which is Send), not
                    // its raw-pointer field.
                    #[allow(clippy::redundant_locals)]
                    let out_ptr = out_ptr;
                    // SAFETY: this task alone writes columns first..first+n of image `image`'s
                    // `[out_c, positions]` block; the reads stay inside `weight` ([out_c,
                    // depth]) and `rhs` ([depth, n] with row stride rhs_rs, in `plane` or
                    // `cols`).
                    unsafe {
                        let dst = out_ptr.0.add(image * out_c * positions + first);
                        for (o, &bias) in bias.iter().enumerate() {
                            let row = dst.add(o * positions).cast::<MaybeUninit<f32>>();
                            std::slice::from_raw_parts_mut(row, n).fill(MaybeUninit::new(bias));
                        }
                        gemm::gemm(
                            out_c,
                            n,
                            depth,
                            dst,
                            1,
                            positions as isize,
                            true,
                            weight.as_ptr(),
                            1,
                            depth as isize,
                            rhs,
                            1,
                            rhs_rs,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                },
            )
        };
        // SAFETY: the tasks cover every image's positions, and each writes its positions'
        // values for every output channel (the bias, which its product then adds to).
        let out = unsafe { fused::written_once(b * out_c * positions, write) };
        Ok((CpuStorage::F32(out), Shape::from((b, out_c, out_h, out_w))))
    }
}

/// The im2col columns of output positions `first..first + n` of one image: row
/// `(channel, ky, kx)` holds that tap for each position, zero in the padding.
#[inline(always)]
fn fill_tile(
    cols: &mut [f32],
    plane: &[f32],
    (c, h, w): (usize, usize, usize),
    out_w: usize,
    geometry: Im2Col,
    first: usize,
    n: usize,
) {
    let k = geometry.kernel;
    let runs = output_runs(first, n, out_w);
    for (row, dst) in cols.chunks_mut(n).enumerate().take(c * k * k) {
        let channel = row / (k * k);
        let channel_plane = &plane[channel * h * w..(channel + 1) * h * w];
        fill_tap(dst, channel_plane, (h, w), &runs, geometry, row % (k * k));
    }
}

/// The output rows that positions `first..first + n` (row-major) cover, as `(oy, first
/// ox, length)`: worked out once per tile, not again for each of its c*k*k rows.
fn output_runs(first: usize, n: usize, out_w: usize) -> Vec<(usize, usize, usize)> {
    let mut runs = Vec::with_capacity(n / out_w + 2);
    let mut done = 0;
    while done < n {
        let (oy, ox0) = ((first + done) / out_w, (first + done) % out_w);
        let run = (out_w - ox0).min(n - done);
        runs.push((oy, ox0, run));
        done += run;
    }
    runs
}

/// One channel's `tap` (`ky * k + kx`) for the output positions of `runs` (see
/// [`output_runs`]), zero where it falls in the padding.
#[inline(always)]
fn fill_tap(
    dst: &mut [f32],
    channel_plane: &[f32],
    (h, w): (usize, usize),
    runs: &[(usize, usize, usize)],
    geometry: Im2Col,
    tap: usize,
) {
    let Im2Col { kernel: k, stride, padding } = geometry;
    let (ky, kx, pad) = ((tap / k) as isize, (tap % k) as isize, padding as isize);
    // One output row (a run of ox) at a time.
    let mut done = 0;
    for &(oy, ox0, run) in runs {
        let dst = &mut dst[done..done + run];
        done += run;
        let iy = (oy * stride) as isize + ky - pad;
        if iy < 0 || iy >= h as isize {
            dst.fill(0.0);
            continue;
        }
        let src_row = &channel_plane[iy as usize * w..(iy as usize + 1) * w];
        if stride == 1 {
            // ix = ox + kx - pad: the taps inside the image are one contiguous run.
            let offset = ox0 as isize + kx - pad;
            let start = (-offset).clamp(0, run as isize) as usize;
            let end = (w as isize - offset).clamp(start as isize, run as isize) as usize;
            dst[..start].fill(0.0);
            let from = (offset + start as isize) as usize;
            dst[start..end].copy_from_slice(&src_row[from..from + end - start]);
            dst[end..].fill(0.0);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                let ix = ((ox0 + i) * stride) as isize + kx - pad;
                *d = if ix >= 0 && ix < w as isize { src_row[ix as usize] } else { 0.0 };
            }
        }
    }
}

/// `[b, c, h, w]` -> `[c*k*k, b*out_h*out_w]`, zero padding, row (c, ky, kx) holding
/// that tap for every image and output position.
#[derive(Debug, Clone, Copy)]
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
        let x = contiguous_f32(storage, layout, "im2col")?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let k = self.kernel;
        let (out_h, out_w) = self.output_size(h, w);
        let positions = out_h * out_w;
        let mut cols = vec![0f32; c * k * k * b * positions];
        let runs = output_runs(0, positions, out_w);
        cols.par_chunks_mut(b * positions).enumerate().for_each(|(row, dst)| {
            let (channel, tap) = (row / (k * k), row % (k * k));
            vectorized(
                #[inline(always)]
                || {
                    for (image, dst) in dst.chunks_mut(positions).enumerate() {
                        let plane = &x[(image * c + channel) * h * w..(image * c + channel + 1) * h * w];
                        fill_tap(dst, plane, (h, w), &runs, *self, tap);
                    }
                },
            )
        });
        Ok((CpuStorage::F32(cols), Shape::from((c * k * k, b * positions))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let op = Col2Im { forward: *self, images: b, channels: c, height: h, width: w };
        let grad = grad_res.contiguous()?.apply_op1_no_bwd(&op)?;
        Ok(Some(grad))
    }
}

/// The adjoint of [`Im2Col`]: `[c*k*k, b*out_h*out_w]` -> `[b, c, h, w]`, each tap's
/// value added back onto the pixel it was read from.
struct Col2Im {
    forward: Im2Col,
    images: usize,
    channels: usize,
    height: usize,
    width: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(storage, layout, "col2im")?;
        let (rows, columns) = layout.shape().dims2()?;
        let Im2Col { kernel: k, stride, padding } = self.forward;
        let (b, c, h, w) = (self.images, self.channels, self.height, self.width);
        let (out_h, out_w) = self.forward.output_size(h, w);
        let positions = out_h * out_w;
        if rows != c * k * k || columns != b * positions {
            candle_core::bail!("col2im: {rows}x{columns} columns do not fit {b} images of {c}x{h}x{w}");
        }
        let mut image = vec![0f32; b * c * h * w];
        let pad = padding as isize;
        // One plane (image, channel) per task.
        image.par_chunks_mut(h * w).enumerate().for_each(|(plane_index, plane)| {
            let (image_index, channel) = (plane_index / c, plane_index % c);
            for tap in 0..k * k {
                let (ky, kx) = ((tap / k) as isize, (tap % k) as isize);
                let start = (channel * k * k + tap) * columns + image_index * positions;
                let src = &cols[start..start + positions];
                for oy in 0..out_h {
                    let iy = (oy * stride) as isize + ky - pad;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst_row = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                    for (ox, &value) in src[oy * out_w..(oy + 1) * out_w].iter().enumerate() {
                        let ix = (ox * stride) as isize + kx - pad;
                        if ix >= 0 && ix < w as isize {
                            dst_row[ix as usize] += value;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(image), Shape::from((b, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::{DType, Device};

    fn random_conv(out_c: usize, in_c: usize, k: usize, stride: usize, padding: usize) -> (Conv2d, Device) {
        let dev = Device::Cpu;
        let conv = Conv2d {
            weight: Tensor::randn(0f32, 1.0, (out_c, in_c, k, k), &dev).unwrap(),
            bias: Tensor::randn(0f32, 1.0, out_c, &dev).unwrap(),
            stride,
            padding,
            winograd: OnceLock::new(),
        };
        (conv, dev)
    }

    #[test]
    fn winograd_equals_candle_conv2d() {
        // Odd and even sides (half blocks at the edges), one and several images; the last
        // goes in chunks of rows of blocks, one of them spanning two images.
        let shapes = [(128, 128, 1, 16, 16), (160, 128, 3, 17, 19), (128, 136, 2, 1, 257), (128, 128, 2, 33, 64)];
        for (out_c, in_c, b, h, w) in shapes {
            let (conv, dev) = random_conv(out_c, in_c, 3, 1, 1);
            assert!(winograd::worth_it(in_c, out_c, (h, w)));
            let x = Tensor::randn(0f32, 1.0, (b, in_c, h, w), &dev).unwrap();
            let reference = conv.forward_with_candle(&x).unwrap();
            let op = winograd::WinogradConv { weights: conv.winograd_weights().unwrap(), out_c };
            let ours = x.apply_op2_no_bwd(&conv.bias, &op).unwrap();
            // Rounding only: against the convolution in f64, no more than a few times the
            // error of the direct (im2col) path. Values are sums of 9 * in_c products of
            // N(0, 1) numbers, about 35 in size.
            let f64_conv = Conv2d {
                weight: conv.weight.to_dtype(DType::F64).unwrap(),
                bias: conv.bias.to_dtype(DType::F64).unwrap(),
                stride: 1,
                padding: 1,
                winograd: OnceLock::new(),
            };
            let exact = f64_conv.forward_with_candle(&x.to_dtype(DType::F64).unwrap()).unwrap();
            let exact = exact.to_dtype(DType::F32).unwrap();
            let direct = x.apply_op3_no_bwd(&conv.weight, &conv.bias, &TiledConv { stride: 1, padding: 1 }).unwrap();
            let (ours_error, direct_error) = (max_diff(&ours, &exact), max_diff(&direct, &exact));
            assert!(
                ours_error < 4.0 * direct_error.max(1e-6),
                "{out_c}x{in_c}, {b} of {h}x{w}: {ours_error} vs {direct_error}"
            );
            // Inference takes it, from the second call on with the kept transform.
            for _ in 0..2 {
                assert!(max_diff(&conv.forward(&x, false).unwrap(), &reference) < 2e-3);
            }
            assert!(conv.winograd.get().is_some());
        }
    }

    #[test]
    fn fast_paths_equal_candle_conv2d() {
        // The last two span several output tiles, the last one short and runs of
        // positions crossing output rows.
        let shapes =
            [(3, 1, 1, 9, 7), (3, 2, 0, 9, 9), (3, 1, 0, 5, 6), (1, 1, 0, 4, 5), (3, 1, 1, 40, 30), (3, 2, 1, 81, 67)];
        for (k, stride, padding, h, w) in shapes {
            let (conv, dev) = random_conv(5, 3, k, stride, padding);
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let reference = conv.forward_with_candle(&x).unwrap();
            for train in [false, true] {
                let diff = max_diff(&conv.forward(&x, train).unwrap(), &reference);
                assert!(diff < 1e-4, "k {k} stride {stride} padding {padding}: {diff}");
            }
        }
    }

    #[test]
    fn a_batch_too_big_for_one_im2col_goes_in_parts() {
        // 5 images of 8 channels at 16x16: 72 x 256 floats (72 KiB) each in the training
        // path's whole-batch im2col; a budget of two images takes them in parts of 2, 2, 1.
        let (conv, dev) = random_conv(2, 8, 3, 1, 1);
        let x = Tensor::randn(0f32, 1.0, (5, 8, 16, 16), &dev).unwrap();
        let reference = conv.forward_with_candle(&x).unwrap();
        let per_image = 8 * 9 * 16 * 16 * std::mem::size_of::<f32>();
        for budget in [per_image * 2, per_image, 1, usize::MAX] {
            let ours = conv.forward_within(&x, true, budget).unwrap();
            assert_eq!(ours.dims(), &[5, 2, 16, 16]);
            let diff = max_diff(&ours, &reference);
            assert!(diff < 1e-4, "budget {budget}: differs by {diff}");
        }
    }

    #[test]
    fn gradients_equal_candle_conv2d() {
        for (k, stride, padding) in [(3, 1, 1), (3, 2, 0), (1, 1, 0)] {
            let (conv, dev) = random_conv(4, 3, k, stride, padding);
            let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 9, 7), &dev).unwrap();
            let weight = candle_core::Var::from_tensor(&conv.weight).unwrap();
            let conv = Conv2d { weight: weight.as_tensor().clone(), ..conv };
            // A loss that weighs every output differently, so misplaced gradients show.
            let probe = |y: &Tensor| (y * y.ones_like().unwrap().cumsum(3).unwrap()).unwrap().sum_all().unwrap();
            let ours = probe(&conv.forward(x.as_tensor(), true).unwrap()).backward().unwrap();
            let theirs = probe(&conv.forward_with_candle(x.as_tensor()).unwrap()).backward().unwrap();
            for var in [x.as_tensor(), weight.as_tensor()] {
                let diff = max_diff(ours.get(var).unwrap(), theirs.get(var).unwrap());
                assert!(diff < 1e-3, "k {k} stride {stride} padding {padding}: gradient differs by {diff}");
            }
        }
    }
}
