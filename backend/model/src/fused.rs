//! The transformer's fused ops. Each is one function that picks its implementation from
//! its inputs, so callers never branch on the device ([`path`]):
//! - our CPU kernels for f32 on the CPU: one parallel pass over rows, each with its own
//!   backward pass (training through candle's composite ops spent four fifths of a step in
//!   single-threaded element-wise backward ops);
//! - our CUDA kernels (`backend/model/kernels/transformer.cu`) on a GPU: one launch where the
//!   op-by-op path takes three to five (a decoding step is bound by launches, not
//!   arithmetic);
//! - candle's composite ops otherwise (other dtypes on the CPU, or with the CUDA kernels
//!   switched off by [`set_cuda_kernels`] / `BORSCHT_CUDA_KERNELS=0`).
//!
//! The VQGAN's softmax, convolution and GroupNorm kernels share the CPU helpers here.

use crate::vector_math::{exp, exp_shifted_in_place, lane_dot, lane_max, lane_sum, lane_sum_f64, tanh, vectorized};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

mod frozen_blocks;
mod linear_cross_entropy;
pub use frozen_blocks::{frozen_attention, frozen_mlp, FrozenLinear};
pub use linear_cross_entropy::linear_cross_entropy;

/// Masked attention scores are pushed to this (not -inf), as the reference does.
pub const MASK_VALUE: f32 = 10000.0;

/// Where an op runs for given inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Our CPU kernels (f32 on the CPU).
    Cpu,
    /// Our CUDA kernels (f32, f16, bf16 on a GPU).
    Cuda,
    /// candle's op-by-op implementation.
    Composite,
}

/// 0: not read yet, 1: on, 2: off.
static CUDA_KERNELS: AtomicU8 = AtomicU8::new(0);

/// Whether our CUDA kernels are used on GPUs (default on; `BORSCHT_CUDA_KERNELS=0` turns
/// them off, to compare with candle's ops).
pub fn cuda_kernels() -> bool {
    match CUDA_KERNELS.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("BORSCHT_CUDA_KERNELS").map_or(true, |v| v != "0");
            CUDA_KERNELS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
        state => state == 1,
    }
}

/// Turns our CUDA kernels on or off for the whole process (`device-check` compares both).
pub fn set_cuda_kernels(on: bool) {
    CUDA_KERNELS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// The implementation the fused ops take for `x`.
pub fn path(x: &Tensor) -> Path {
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32) => Path::Cpu,
        (Device::Cuda(_), DType::F32 | DType::F16 | DType::BF16) if cfg!(feature = "cuda") && cuda_kernels() => {
            Path::Cuda
        }
        _ => Path::Composite,
    }
}

/// Whether the CPU kernels apply to this tensor (the VQGAN's convolution, GroupNorm and
/// attention have CPU kernels only); each op asks it itself.
pub(crate) fn applies(x: &Tensor) -> bool {
    path(x) == Path::Cpu
}

/// The f32 data of a contiguous CPU tensor (what the CPU kernels here and in
/// [`crate::conv`] and [`crate::group_norm`] take).
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{what} expects f32") };
    contiguous_part(data, layout, what)
}

/// The part of a CPU tensor's data that a contiguous layout covers.
fn contiguous_part<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} expects a contiguous input"),
    }
}

/// A vector of `len` values that `write` gives each of, once: a kernel's output, not
/// zeroed first (zeroing is a pass over memory of its own). Debug builds (the tests)
/// fill it with NaN first, so that a value the kernel misses shows.
///
/// # Safety
/// `write` writes every element of the slice it gets.
pub(crate) unsafe fn written_once(len: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut buffer = Vec::with_capacity(len);
    if cfg!(debug_assertions) {
        buffer.spare_capacity_mut()[..len].fill(MaybeUninit::new(f32::NAN));
    }
    write(&mut buffer.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `write` wrote the first `len` elements.
    unsafe { buffer.set_len(len) };
    buffer
}

/// `len` zeros, written by all of the pool's threads. `vec![0.0; len]` zeroes on the
/// calling thread alone: for the blocks' large outputs, a pass over memory that the other
/// threads waited for (8 % of the training forward's samples in `perf`).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    const PART: usize = 64 * 1024;
    if len <= PART {
        return vec![0.0; len];
    }
    // SAFETY: every part is filled.
    unsafe { written_once(len, |all| all.par_chunks_mut(PART).for_each(|part| part.fill(MaybeUninit::new(0.0)))) }
}

/// `rows` copies of `row`, one after another, written by all of the pool's threads: a
/// layer's output starts as its bias, which its product then adds to (one pass over the
/// output instead of zeroing it and then copying the bias in).
pub(crate) fn repeated_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let part = (64 * 1024 / row.len().max(1)).max(1) * row.len().max(1);
    let write = |all: &mut [MaybeUninit<f32>]| {
        all.par_chunks_mut(part).for_each(|part| {
            // Row by row: zipped with `row.iter().cycle()`, the copy went a value at a time.
            for values in part.chunks_mut(row.len().max(1)) {
                for (value, &bias) in values.iter_mut().zip(row) {
                    value.write(bias);
                }
            }
        })
    };
    // SAFETY: each part is a whole number of rows, each written in full.
    unsafe { written_once(row.len() * rows, write) }
}

/// Rows per parallel task: enough work to amortise the scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// A strided matrix in `data`: element `(r, c)` at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl View<'_> {
    pub(crate) fn at(self, offset: usize) -> Self {
        View { data: &self.data[offset..], ..self }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst += scale * lhs · rhs` (`[m, k]` times `[k, n]`; `dst` row-major with row stride
/// `dst_rs`), on all threads with `parallel`.
pub(crate) fn product(
    dst: &mut [f32],
    dst_rs: usize,
    dims: (usize, usize, usize),
    lhs: View,
    rhs: View,
    scale: f32,
    parallel: bool,
) {
    gemm_checked(dst, dst_rs, dims, (lhs, rhs), (scale, true), parallel);
}

/// `dst = scale * lhs · rhs`, whatever `dst` held (as [`product`], without reading it).
pub(crate) fn product_overwriting(
    dst: &mut [f32],
    dst_rs: usize,
    dims: (usize, usize, usize),
    lhs: View,
    rhs: View,
    scale: f32,
    parallel: bool,
) {
    gemm_checked(dst, dst_rs, dims, (lhs, rhs), (scale, false), parallel);
}

fn gemm_checked(
    dst: &mut [f32],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    (lhs, rhs): (View, View),
    (scale, accumulate): (f32, bool),
    parallel: bool,
) {
    assert!(lhs.fits(m, k) && rhs.fits(k, n) && (m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len()));
    let parallelism =
        if parallel { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
    // SAFETY: the assertion keeps every element the strides reach inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Masked softmax

/// Largest mask (in bytes) that the composite path spreads to the scores' full shape.
const SPREAD_MASK_BYTES: usize = 256 << 20;

/// One layer kind's attention mask for the new positions, made once per forward and
/// shared by the layers of that kind: `keep` is 1 where a position may be seen.
///
/// Our kernels read it as `[b or 1, 1, n, past + n]`. The composite path instead spreads
/// it (and `penalty = 10000 * (1 - keep)`) to the scores' `[b, heads, n, past + n]` (up to
/// [`SPREAD_MASK_BYTES`]): candle's kernels for broadcast operands index every element
/// through per-dimension strides, and on an H100 those masking products took 96 of the
/// 246 ms of kernel time in a profiled 350M bench forward.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    keep: Tensor,
    penalty: Option<Tensor>,
}

impl AttentionMask {
    pub fn new(keep: &Tensor, batch: usize, heads: usize) -> Result<Self> {
        if path(keep) != Path::Composite {
            return Ok(AttentionMask { keep: keep.contiguous()?, penalty: None });
        }
        let (_, _, n, total) = keep.dims4()?;
        let spread_bytes = batch * heads * n * total * keep.dtype().size_in_bytes();
        let keep = if spread_bytes <= SPREAD_MASK_BYTES {
            keep.broadcast_as((batch, heads, n, total))?.contiguous()?
        } else {
            keep.clone()
        };
        let penalty = ((keep.ones_like()? - &keep)? * MASK_VALUE as f64)?;
        Ok(AttentionMask { keep, penalty: Some(penalty) })
    }

    /// The 0/1 mask as given (`[b or 1, 1, n, t]`, or spread on the composite path).
    pub fn keep(&self) -> &Tensor {
        &self.keep
    }
}

/// `softmax(scores * m - 10000 * (1 - m))` over the last dim. `scores`: `[b, h, n, t]`.
/// Equal to the reference's masking followed by softmax (the PB-relax shift by a
/// per-matrix constant leaves a softmax unchanged). With `train`, differentiable.
pub fn masked_softmax(scores: &Tensor, mask: &AttentionMask, train: bool) -> Result<Tensor> {
    match &mask.penalty {
        None => {
            let scores = scores.contiguous()?;
            if train {
                scores.apply_op2(&mask.keep, MaskedSoftmax)
            } else {
                scores.apply_op2_no_bwd(&mask.keep, &MaskedSoftmax)
            }
        }
        Some(penalty) => {
            let masked = scores.broadcast_mul(&mask.keep)?.broadcast_sub(penalty)?;
            if train {
                candle_nn::ops::softmax(&masked, D::Minus1)
            } else {
                candle_nn::ops::softmax_last_dim(&masked)
            }
        }
    }
}

struct MaskedSoftmax;

/// `(b, h, n, t, mask batch)` of a scores/mask pair, checked.
fn attention_dims(scores: &Layout, mask: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, h, n, t) = scores.shape().dims4()?;
    let (mb, one, mn, mt) = mask.shape().dims4()?;
    if !(mb == 1 || mb == b) || one != 1 || mn != n || mt != t {
        candle_core::bail!("masked softmax: mask {:?} does not fit scores {:?}", mask.shape(), scores.shape());
    }
    Ok((b, h, n, t, mb))
}

/// The mask row for row `row` of the flattened `[b*h*n, t]` scores.
#[inline(always)]
fn mask_row(mask: &[f32], row: usize, (h, n, t, mb): (usize, usize, usize, usize)) -> &[f32] {
    let (sample, position) = (row / (h * n), row % n);
    let sample = if mb == 1 { 0 } else { sample };
    &mask[(sample * n + position) * t..(sample * n + position + 1) * t]
}

/// One row of scores becomes its probabilities, in place: `softmax(s * m - 10000 * (1 - m))`.
#[inline(always)]
fn masked_softmax_in_place(row: &mut [f32], keep: &[f32]) {
    for (s, &m) in row.iter_mut().zip(keep) {
        *s = *s * m - MASK_VALUE * (1.0 - m);
    }
    normalise_exp(row);
}

/// One row's gradient of the probabilities becomes that of the scores, in place:
/// `m * p * (g - Σ p * g)`.
#[inline(always)]
fn masked_softmax_grad_in_place(grad: &mut [f32], probs: &[f32], keep: &[f32]) {
    let dot = lane_dot(probs, grad);
    for ((g, &p), &m) in grad.iter_mut().zip(probs).zip(keep) {
        *g = m * p * (*g - dot);
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(s1, l1, "masked softmax")?;
        let mask = contiguous_f32(s2, l2, "masked softmax")?;
        let (_, h, n, t, mb) = attention_dims(l1, l2)?;
        let mut out = scores.to_vec();
        let chunk = rows_per_task(t) * t;
        out.par_chunks_mut(chunk).enumerate().for_each(|(task, dst)| {
            let first_row = task * chunk / t;
            vectorized(
                #[inline(always)]
                || {
                    for (i, d) in dst.chunks_mut(t).enumerate() {
                        masked_softmax_in_place(d, mask_row(mask, first_row + i, (h, n, t, mb)));
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda_kernels::masked_softmax(s1, l1, s2, l2, attention_dims(l1, l2)?)
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        mask: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = probs.apply_op3_no_bwd(&grad.contiguous()?, mask, &MaskedSoftmaxBackward)?;
        Ok((Some(grad), None))
    }
}

/// `d scores = m * p * (g - sum(p * g))` per row.
struct MaskedSoftmaxBackward;

impl CustomOp3 for MaskedSoftmaxBackward {
    fn name(&self) -> &'static str {
        "masked-softmax-backward"
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
        let probs = contiguous_f32(s1, l1, "masked softmax backward")?;
        let grad = contiguous_f32(s2, l2, "masked softmax backward")?;
        let mask = contiguous_f32(s3, l3, "masked softmax backward")?;
        let (_, h, n, t, mb) = attention_dims(l1, l3)?;
        let mut out = grad.to_vec();
        let chunk = rows_per_task(t) * t;
        out.par_chunks_mut(chunk).enumerate().for_each(|(task, dst)| {
            let first = task * chunk;
            vectorized(
                #[inline(always)]
                || {
                    for (i, d) in dst.chunks_mut(t).enumerate() {
                        let row = first / t + i;
                        masked_softmax_grad_in_place(
                            d,
                            &probs[row * t..(row + 1) * t],
                            mask_row(mask, row, (h, n, t, mb)),
                        );
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = attention_dims(l1, l3)?;
        crate::cuda_kernels::masked_softmax_backward((s1, l1), (s2, l2), (s3, l3), dims)
    }
}

/// `row = exp(row - max(row)) / sum`, in place.
#[inline(always)]
pub(crate) fn normalise_exp(row: &mut [f32]) {
    let inv = 1.0 / exp_shifted_in_place(row);
    for d in row.iter_mut() {
        *d *= inv;
    }
}

// ---------------------------------------------------------------------------------------
// Softmax

/// Softmax over the last dim (the VQGAN's attention): our CPU kernel with a one-pass
/// backward, or candle's softmax elsewhere.
pub fn softmax_last_dim(x: &Tensor, train: bool) -> Result<Tensor> {
    match (applies(x), train) {
        (true, true) => x.contiguous()?.apply_op1(Softmax),
        (true, false) => x.contiguous()?.apply_op1_no_bwd(&Softmax),
        (false, true) => candle_nn::ops::softmax(x, D::Minus1),
        (false, false) => candle_nn::ops::softmax_last_dim(x),
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous_f32(storage, layout, "softmax")?.to_vec();
        let t = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        out.par_chunks_mut(rows_per_task(t) * t).for_each(|rows| {
            vectorized(
                #[inline(always)]
                || {
                    for row in rows.chunks_mut(t) {
                        normalise_exp(row);
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, probs: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(probs.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?))
    }
}

/// `d x = p * (g - sum(p * g))` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-last-dim-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let probs = contiguous_f32(s1, l1, "softmax backward")?;
        let grad = contiguous_f32(s2, l2, "softmax backward")?;
        let t = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; probs.len()];
        let chunk = rows_per_task(t) * t;
        out.par_chunks_mut(chunk).zip(probs.par_chunks(chunk).zip(grad.par_chunks(chunk))).for_each(|(dst, (p, g))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((d, p), g) in dst.chunks_mut(t).zip(p.chunks(t)).zip(g.chunks(t)) {
                        let dot = lane_dot(p, g);
                        for (d, (&p, &g)) in d.iter_mut().zip(p.iter().zip(g)) {
                            *d = p * (g - dot);
                        }
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// LayerNorm

/// LayerNorm over the last dim with torch's semantics (biased variance, eps inside the
/// root). With `train`, differentiable in all three inputs through our kernels' backward
/// (candle's own fused LayerNorm has none); otherwise candle's fused forward.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, train: bool) -> Result<Tensor> {
    match (train, path(x)) {
        (true, Path::Cpu | Path::Cuda) => {
            x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNorm { eps: eps as f32 })
        }
        (true, Path::Composite) => candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32),
        (false, _) => candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32),
    }
}

struct LayerNorm {
    eps: f32,
}

/// Mean and 1/std of one row (biased variance, eps inside the root), summed in lanes.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let len = row.len() as f64;
    let mean = (lane_sum_f64(row, |v| v) / len) as f32;
    let var = (lane_sum_f64(row, |v| (v - mean) * (v - mean)) / len) as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let x = contiguous_f32(s1, l1, "layer norm")?;
        let (w, b) = (contiguous_f32(s2, l2, "layer norm")?, contiguous_f32(s3, l3, "layer norm")?);
        let h = w.len();
        if h == 0 || l1.shape().dims().last() != Some(&h) || b.len() != h {
            candle_core::bail!("layer norm: weight {:?} does not fit input {:?}", l2.shape(), l1.shape());
        }
        let chunk = rows_per_task(h) * h;
        let write = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(dst, src)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (d, s) in dst.chunks_mut(h).zip(src.chunks(h)) {
                            let (mean, rstd) = row_stats(s, self.eps);
                            for (((d, &s), &w), &b) in d.iter_mut().zip(s).zip(w).zip(b) {
                                d.write((s - mean) * rstd * w + b);
                            }
                        }
                    },
                )
            })
        };
        // SAFETY: the parts of `out` and `x` pair up one to one, rows of `h` values each
        // (`x.len()` is a multiple of `h`, the shape's last dimension).
        let out = unsafe { written_once(x.len(), write) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape().dims().last() != Some(&l2.shape().elem_count()) {
            candle_core::bail!("layer norm: weight {:?} does not fit input {:?}", l2.shape(), l1.shape());
        }
        crate::cuda_kernels::layer_norm((s1, l1), (s2, l2), (s3, l3), self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = weight.elem_count();
        let rows = x.elem_count() / h;
        let grad = grad.contiguous()?;
        if x.device().is_cuda() {
            // [dx, g * xhat]; the parameters' gradients are column sums.
            let packed = x.apply_op3_no_bwd(weight, &grad, &LayerNormBackward { eps: self.eps })?;
            let dx = packed.get(0)?.reshape(x.shape())?;
            let dw = packed.get(1)?.sum(0)?;
            let db = grad.reshape((rows, h))?.sum(0)?;
            return Ok((Some(dx), Some(dw), Some(db)));
        }
        let packed = x.apply_op3_no_bwd(weight, &grad, &LayerNormBackward { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows * h)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows * h, h)?;
        let db = packed.narrow(0, rows * h + h, h)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// On the CPU, packs `[dx (rows*h), dw (h), db (h)]` into one vector; on a GPU,
/// `[dx, g * xhat]` as `[2, rows, h]`.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
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
        let x = contiguous_f32(s1, l1, "layer norm backward")?;
        let w = contiguous_f32(s2, l2, "layer norm backward")?;
        let grad = contiguous_f32(s3, l3, "layer norm backward")?;
        let h = w.len();
        let chunk = rows_per_task(h) * h;
        // Each task returns its partial dw, db; they are summed after.
        let mut partials: Vec<Vec<f32>> = Vec::new();
        let write = |out: &mut [MaybeUninit<f32>]| {
            let (dx, tail) = out.split_at_mut(x.len());
            tail.fill(MaybeUninit::new(0.0));
            partials = dx
                .par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
                .map(|(dst, (src, g))| {
                    let mut acc = vec![0f32; 2 * h];
                    let (dw, db) = acc.split_at_mut(h);
                    // Per row: x̂ and g·w, their means in lanes, then element-wise passes only,
                    // so that every loop vectorises.
                    let (mut xhat, mut gw) = (vec![0f32; h], vec![0f32; h]);
                    vectorized(
                        #[inline(always)]
                        || {
                            for ((d, s), g) in dst.chunks_mut(h).zip(src.chunks(h)).zip(g.chunks(h)) {
                                let (mean, rstd) = row_stats(s, self.eps);
                                for ((((xhat, gw), &s), &g), &w) in xhat.iter_mut().zip(&mut gw).zip(s).zip(g).zip(w) {
                                    *xhat = (s - mean) * rstd;
                                    *gw = g * w;
                                }
                                let mean_gw = lane_sum(&gw) / h as f32;
                                let mean_gw_xhat = lane_dot(&gw, &xhat) / h as f32;
                                for ((((dw, db), &xhat), &g), (d, &gw)) in
                                    dw.iter_mut().zip(db.iter_mut()).zip(&xhat).zip(g).zip(d.iter_mut().zip(&gw))
                                {
                                    *dw += g * xhat;
                                    *db += g;
                                    d.write(rstd * (gw - mean_gw - xhat * mean_gw_xhat));
                                }
                            }
                        },
                    );
                    acc
                })
                .collect();
        };
        // SAFETY: the parts of `dx`, `x` and `grad` pair up one to one, rows of `h` values
        // each, and the tail is zeroed.
        let mut out = unsafe { written_once(x.len() + 2 * h, write) };
        let tail = &mut out[x.len()..];
        for partial in partials {
            tail.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda_kernels::layer_norm_backward((s1, l1), (s2, l2), (s3, l3), self.eps)
    }
}

// ---------------------------------------------------------------------------------------
// Residual + sandwich norms (inference)

/// A LayerNorm's weight and bias.
#[derive(Debug, Clone, Copy)]
pub struct NormWeights<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
}

/// What a layer does after its attention or MLP output `y`: `r = x + LN_a(y + bias)` (the
/// bias and the sandwich norm `LN_a` optional), then `n = LN_b(r)`, the next block's
/// input. Returns `(r, n)`; one kernel at inference on a GPU.
pub fn residual_norm(
    x: &Tensor,
    y: &Tensor,
    bias: Option<&Tensor>,
    norm_a: Option<NormWeights>,
    norm_b: NormWeights,
    eps: f64,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    if !train && path(x) == Path::Cuda {
        let op = ResidualNorm {
            bias: bias.cloned(),
            norm_a: norm_a.map(|n| (n.weight.clone(), n.bias.clone())),
            norm_b: (norm_b.weight.clone(), norm_b.bias.clone()),
            eps: eps as f32,
        };
        let packed = x.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &op)?;
        return Ok((packed.get(0)?.reshape(x.shape())?, packed.get(1)?.reshape(x.shape())?));
    }
    let mut a = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y.clone(),
    };
    if let Some(n) = norm_a {
        a = layer_norm(&a, n.weight, n.bias, eps, train)?;
    }
    let r = (x + a)?;
    let n = layer_norm(&r, norm_b.weight, norm_b.bias, eps, train)?;
    Ok((r, n))
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the CUDA launch only
struct ResidualNorm {
    bias: Option<Tensor>,
    norm_a: Option<(Tensor, Tensor)>,
    norm_b: (Tensor, Tensor),
    eps: f32,
}

impl CustomOp2 for ResidualNorm {
    fn name(&self) -> &'static str {
        "residual-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("residual-norm runs on GPUs only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("residual norm: {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let params = crate::cuda_kernels::ResidualNormParams {
            bias: self.bias.as_ref(),
            norm_a: self.norm_a.as_ref().map(|(w, b)| (w, b)),
            norm_b: (&self.norm_b.0, &self.norm_b.1),
            eps: self.eps,
        };
        crate::cuda_kernels::residual_norm((s1, l1), (s2, l2), &params)
    }
}

// ---------------------------------------------------------------------------------------
// The q/k/v split into a KV cache (inference)

/// The attention's q/k/v split at inference: `qkv` `[b, n, 3 * heads * d]` (the product
/// before its bias) gives q `[b, heads, n, d]` times `q_scale`, and writes k and v into
/// `kv` `[2, cache_b, heads, capacity, d]` at positions `position..position + n`.
/// `position` is a one-element u32 tensor on the model's device, so a captured CUDA graph
/// replays with the position of each step. One kernel on a GPU.
pub fn qkv_split(
    qkv: &Tensor,
    bias: &Tensor,
    kv: &Tensor,
    position: &Tensor,
    heads: usize,
    q_scale: f64,
) -> Result<Tensor> {
    let (b, n, three_hd) = qkv.dims3()?;
    let d = three_hd / (3 * heads);
    if path(qkv) == Path::Cuda {
        let op = QkvSplit { bias: bias.contiguous()?, kv: kv.clone(), position: position.clone(), heads, q_scale };
        return qkv.contiguous()?.apply_op1_no_bwd(&op);
    }
    let qkv = qkv.broadcast_add(bias)?.reshape((b, n, 3, heads, d))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
    let q = if q_scale == 1.0 { qkv.get(0)? } else { (qkv.get(0)? * q_scale)? };
    let start = position.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u32>()?[0] as usize;
    kv.slice_set(&qkv.narrow(0, 1, 2)?, 3, start)?;
    Ok(q)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the CUDA launch only
struct QkvSplit {
    bias: Tensor,
    kv: Tensor,
    position: Tensor,
    heads: usize,
    q_scale: f64,
}

impl CustomOp1 for QkvSplit {
    fn name(&self) -> &'static str {
        "qkv-split"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("qkv-split runs on GPUs only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let params = crate::cuda_kernels::QkvSplitParams {
            bias: &self.bias,
            kv: &self.kv,
            position: &self.position,
            heads: self.heads,
            q_scale: self.q_scale as f32,
        };
        crate::cuda_kernels::qkv_split(s, l, &params)
    }
}

// ---------------------------------------------------------------------------------------
// Product with a frozen weight

/// `x · weightᵀ` for `x` `[rows, in]` and `weight` `[out, in]`, whose backward gives the
/// input's gradient only (candle's matmul would compute the weight's as well; elsewhere
/// than our CPU kernels it does, and the weight's is dropped).
pub fn frozen_product(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if applies(x) && applies(weight) {
        x.contiguous()?.apply_op1(FrozenProduct { weight: weight.detach().contiguous()? })
    } else {
        x.matmul(&weight.detach().t()?)
    }
}

struct FrozenProduct {
    weight: Tensor,
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-product"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "frozen product")?;
        let (rows, inputs) = layout.shape().dims2()?;
        let (outputs, weight_inputs) = self.weight.dims2()?;
        if weight_inputs != inputs {
            candle_core::bail!(
                "frozen product: weight {:?} does not fit input {:?}",
                self.weight.dims(),
                layout.dims()
            );
        }
        let (weight, weight_layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(weight) = &*weight else {
            candle_core::bail!("frozen product: weight not on the CPU")
        };
        let weight = contiguous_f32(weight, weight_layout, "frozen product")?;
        // Straight into the output: a candle matmul here took copies of the input and
        // the output, a quarter of a training step's forward pass.
        let mut out = vec![0f32; rows * outputs];
        let x = View { data: x, rs: inputs, cs: 1 };
        let weight_t = View { data: weight, rs: 1, cs: inputs };
        product_overwriting(&mut out, outputs, (rows, outputs, inputs), x, weight_t, 1.0, true);
        Ok((CpuStorage::F32(out), Shape::from((rows, outputs))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

// ---------------------------------------------------------------------------------------
// GELU (tanh approximation, the reference's gelu_jit)

const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044715;

/// The tanh of [`gelu_tanh`], which its derivative shares.
#[inline(always)]
fn gelu_inner_tanh(v: f32) -> f32 {
    tanh(SQRT_TWO_OVER_PI * v * (1.0 + GELU_CUBIC * v * v))
}

/// `gelu(v)`, tanh approximation.
#[inline(always)]
fn gelu_tanh(v: f32) -> f32 {
    gelu_from_tanh(v, gelu_inner_tanh(v))
}

#[inline(always)]
fn gelu_from_tanh(v: f32, tanh: f32) -> f32 {
    0.5 * v * (1.0 + tanh)
}

/// `gelu'(v)` of [`gelu_tanh`].
#[inline(always)]
fn gelu_tanh_grad(v: f32) -> f32 {
    gelu_grad_from_tanh(v, gelu_inner_tanh(v))
}

#[inline(always)]
fn gelu_grad_from_tanh(v: f32, tanh: f32) -> f32 {
    let inner = SQRT_TWO_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * v * v);
    0.5 * (1.0 + tanh) + 0.5 * v * (1.0 - tanh * tanh) * inner
}

/// `gelu(x)` of each value, in parallel.
fn gelu_of(x: &[f32]) -> Vec<f32> {
    let write = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(16 * 1024).zip(x.par_chunks(16 * 1024)).for_each(|(d, s)| {
            vectorized(
                #[inline(always)]
                || {
                    // A `for` loop, not `for_each`: the latter's fold is not inlined into
                    // the closure, so it would not be compiled for this CPU's SIMD.
                    for (d, &v) in d.iter_mut().zip(s) {
                        d.write(gelu_tanh(v));
                    }
                },
            )
        })
    };
    // SAFETY: the parts of `out` and `x` pair up one to one, of the same lengths.
    unsafe { written_once(x.len(), write) }
}

/// `gelu(x)` of each value, returned, and `gelu'(x)` in place of `x`, from one tanh
/// each: a frozen MLP keeps the derivative for its backward, which then only multiplies
/// (the tanh was a tenth of a training step, half of it the backward's).
pub(crate) fn gelu_keeping_grad(x: &mut [f32]) -> Vec<f32> {
    let len = x.len();
    let write = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(16 * 1024).zip(x.par_chunks_mut(16 * 1024)).for_each(|(d, s)| {
            vectorized(
                #[inline(always)]
                || {
                    for (d, v) in d.iter_mut().zip(s) {
                        let tanh = gelu_inner_tanh(*v);
                        d.write(gelu_from_tanh(*v, tanh));
                        *v = gelu_grad_from_tanh(*v, tanh);
                    }
                },
            )
        })
    };
    // SAFETY: the parts of `out` and `x` pair up one to one, of the same lengths.
    unsafe { written_once(len, write) }
}

/// `values *= factors`, element-wise (as far as `values` goes); inlined, so that it
/// runs at the SIMD level of the [`vectorized`] loop around it.
#[inline(always)]
pub(crate) fn multiply_in_place(values: &mut [f32], factors: &[f32]) {
    for (v, &f) in values.iter_mut().zip(factors) {
        *v *= f;
    }
}

/// `grad *= gelu'(x)`, element-wise and in parallel.
fn times_gelu_grad(grad: &mut [f32], x: &[f32]) {
    grad.par_chunks_mut(16 * 1024).zip(x.par_chunks(16 * 1024)).for_each(|(g, s)| {
        vectorized(
            #[inline(always)]
            || {
                for (g, &v) in g.iter_mut().zip(s) {
                    *g *= gelu_tanh_grad(v);
                }
            },
        )
    });
}

/// The tanh GELU, differentiable (our kernels with their backward, or candle's).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    match path(x) {
        Path::Cpu | Path::Cuda => x.contiguous()?.apply_op1(Gelu),
        Path::Composite => x.gelu(),
    }
}

/// `gelu(x + bias)` for `x` `[rows, cols]` and `bias` `[cols]`: one kernel at inference on
/// a GPU (the MLP's first product, its bias and the activation).
pub fn bias_gelu(x: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
    if !train && path(x) == Path::Cuda {
        return x.contiguous()?.apply_op1_no_bwd(&BiasGelu { bias: bias.contiguous()? });
    }
    gelu(&x.broadcast_add(bias)?)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the CUDA launch only
struct BiasGelu {
    bias: Tensor,
}

impl CustomOp1 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("bias-gelu runs on GPUs only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda_kernels::bias_gelu(s, l, &self.bias)
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "gelu")?;
        let out = gelu_of(x);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda_kernels::gelu((s, l), None)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?))
    }
}

struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-tanh-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "gelu backward")?;
        let mut out = contiguous_f32(s2, l2, "gelu backward")?.to_vec();
        times_gelu_grad(&mut out, x);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda_kernels::gelu((s1, l1), Some((s2, l2)))
    }
}

// ---------------------------------------------------------------------------------------
// Cross-entropy over a slice of the vocabulary per position (the training loss)

/// Per-position cross-entropy `[b, n]` of `logits` `[b, n, v]` against `labels` `[b, n]`,
/// each position over its own slice of the vocabulary: position `p` reads
/// `logits[.., p, vocab[p]]`, and its label counts from `vocab[p].start`. A position
/// with an empty slice gives 0 (and no gradient). Differentiable in `logits`.
///
/// The CPU kernel reads the logits where they lie and writes the gradient in one pass
/// (`g * (softmax - onehot)` inside each slice). The composite path narrows the logits to
/// each run of positions sharing a slice; each narrow's backward spreads a zero-padded
/// copy of the whole logits, which candle then adds up.
pub fn sliced_cross_entropy(logits: &Tensor, labels: &Tensor, vocab: &[Range<usize>]) -> Result<Tensor> {
    let (b, n, v) = logits.dims3()?;
    if labels.dims() != [b, n] || vocab.len() != n || vocab.iter().any(|r| r.end > v) {
        candle_core::bail!(
            "cross-entropy: labels {:?} and {} vocabulary slices do not fit logits {:?}",
            labels.dims(),
            vocab.len(),
            logits.dims()
        );
    }
    let labels = labels.to_dtype(DType::U32)?.contiguous()?;
    if applies(logits) {
        return logits.contiguous()?.apply_op2(&labels, SlicedCrossEntropy { vocab: vocab.to_vec() });
    }
    let mut parts = Vec::new();
    let mut start = 0;
    for run in vocab.chunk_by(|a, b| a == b) {
        let (len, slice) = (run.len(), &run[0]);
        parts.push(if slice.is_empty() {
            Tensor::zeros((b, len), DType::F32, logits.device())?
        } else {
            let log_probs = candle_nn::ops::log_softmax(
                &logits.narrow(1, start, len)?.narrow(2, slice.start, slice.len())?.to_dtype(DType::F32)?,
                D::Minus1,
            )?;
            log_probs
                .gather(&labels.narrow(1, start, len)?.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?
                .squeeze(D::Minus1)?
                .neg()?
        });
        start += len;
    }
    Tensor::cat(&parts, 1)
}

struct SlicedCrossEntropy {
    vocab: Vec<Range<usize>>,
}

impl SlicedCrossEntropy {
    /// The position's slice of one `[v]` row and its label inside it, or `None` for an
    /// empty slice; a label outside the slice is an error.
    fn slice<'a>(&self, row: &'a [f32], position: usize, label: u32) -> Result<Option<(&'a [f32], usize)>> {
        let range = &self.vocab[position];
        if range.is_empty() {
            return Ok(None);
        }
        Ok(Some((&row[range.clone()], label_in_slice(label, position, range)?)))
    }
}

/// A position's label as an index into its slice, or an error when it falls outside.
fn label_in_slice(label: u32, position: usize, slice: &Range<usize>) -> Result<usize> {
    let label = label as usize;
    if label >= slice.len() {
        candle_core::bail!("cross-entropy: label {label} at position {position} outside its {} ids", slice.len());
    }
    Ok(label)
}

/// One row's logits (its slice) become the gradient of `g` times its cross-entropy, in
/// place: `g * (softmax - onehot(label))`.
#[inline(always)]
fn cross_entropy_grad_in_place(row: &mut [f32], label: usize, g: f32) {
    vectorized(
        #[inline(always)]
        || {
            let (max, sum) = exp_sum(row);
            let scale = g / sum;
            for d in row.iter_mut() {
                *d = exp(*d - max) * scale;
            }
        },
    );
    row[label] -= g;
}

/// `(max, Σ exp(x - max))` of a row: its log-sum-exp is `max + ln(sum)`.
#[inline(always)]
fn exp_sum(row: &[f32]) -> (f32, f32) {
    let max = lane_max(row);
    let mut lanes = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&x| exp(x - max)).sum();
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l += exp(x - max);
        }
    }
    (max, lanes.iter().sum::<f32>() + tail)
}

impl CustomOp2 for SlicedCrossEntropy {
    fn name(&self) -> &'static str {
        "sliced-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = contiguous_f32(s1, l1, "cross-entropy")?;
        let CpuStorage::U32(labels) = s2 else { candle_core::bail!("cross-entropy expects u32 labels") };
        let labels = contiguous_part(labels, l2, "cross-entropy")?;
        let (n, v) = (self.vocab.len(), l1.shape().dims()[2]);
        let rows = labels.len();
        let out: Vec<f32> = (0..rows)
            .into_par_iter()
            .map(|row| {
                let Some((slice, label)) = self.slice(&logits[row * v..(row + 1) * v], row % n, labels[row])? else {
                    return Ok(0.0);
                };
                let (max, sum) = vectorized(
                    #[inline(always)]
                    || exp_sum(slice),
                );
                Ok(max + sum.ln() - slice[label])
            })
            .collect::<Result<_>>()?;
        Ok((CpuStorage::F32(out), Shape::from(&l2.shape().dims()[..2])))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let backward = SlicedCrossEntropyBackward { forward: SlicedCrossEntropy { vocab: self.vocab.clone() } };
        Ok((Some(logits.apply_op3_no_bwd(labels, &grad.contiguous()?, &backward)?), None))
    }
}

/// `d logits = g * (softmax - onehot(label))` inside each position's slice, 0 outside.
struct SlicedCrossEntropyBackward {
    forward: SlicedCrossEntropy,
}

impl CustomOp3 for SlicedCrossEntropyBackward {
    fn name(&self) -> &'static str {
        "sliced-cross-entropy-backward"
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
        let logits = contiguous_f32(s1, l1, "cross-entropy backward")?;
        let CpuStorage::U32(labels) = s2 else { candle_core::bail!("cross-entropy expects u32 labels") };
        let labels = contiguous_part(labels, l2, "cross-entropy backward")?;
        let grad = contiguous_f32(s3, l3, "cross-entropy backward")?;
        let (n, v) = (self.forward.vocab.len(), l1.shape().dims()[2]);
        let mut out = vec![0f32; logits.len()];
        out.par_chunks_mut(v).enumerate().try_for_each(|(row, dst)| -> Result<()> {
            let Some((slice, label)) = self.forward.slice(&logits[row * v..(row + 1) * v], row % n, labels[row])?
            else {
                return Ok(());
            };
            let dst = &mut dst[self.forward.vocab[row % n].clone()];
            dst.copy_from_slice(slice);
            cross_entropy_grad_in_place(dst, label, grad[row]);
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::{Device, Var, D};

    /// Forward values and gradients (of every var) of `fused` and `composite` agree, under
    /// a loss weighing every output differently, so a misplaced gradient shows.
    fn same_values_and_gradients(vars: &[&Var], fused: impl Fn() -> Tensor, composite: impl Fn() -> Tensor, tol: f32) {
        let (a, b) = (fused(), composite());
        assert!(max_diff(&a, &b) < tol, "forward differs by {}", max_diff(&a, &b));
        let weights = Tensor::randn(0f32, 1.0, a.shape(), a.device()).unwrap();
        let ga = (a * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, var) in vars.iter().enumerate() {
            let diff = max_diff(ga.get(var.as_tensor()).unwrap(), gb.get(var.as_tensor()).unwrap());
            assert!(diff < tol, "gradient of input {i} differs by {diff}");
        }
    }

    #[test]
    fn masked_softmax_equals_mask_then_softmax() {
        let dev = Device::Cpu;
        for mask_batch in [1, 2] {
            let scores = Var::randn(0f32, 3.0, (2, 3, 5, 7), &dev).unwrap();
            let mask = Tensor::rand(0f32, 1.0, (mask_batch, 1, 5, 7), &dev).unwrap().ge(0.3).unwrap();
            let mask = mask.to_dtype(DType::F32).unwrap();
            same_values_and_gradients(
                &[&scores],
                || masked_softmax(scores.as_tensor(), &AttentionMask::new(&mask, 2, 3).unwrap(), true).unwrap(),
                || {
                    let penalty = ((mask.ones_like().unwrap() - &mask).unwrap() * MASK_VALUE as f64).unwrap();
                    let masked = scores.broadcast_mul(&mask).unwrap().broadcast_sub(&penalty).unwrap();
                    candle_nn::ops::softmax(&masked, D::Minus1).unwrap()
                },
                1e-5,
            );
        }
    }

    #[test]
    fn layer_norm_equals_the_composite() {
        let dev = Device::Cpu;
        let x = Var::randn(0.3f32, 2.0, (3, 4, 16), &dev).unwrap();
        let w = Var::randn(1f32, 0.5, 16, &dev).unwrap();
        let b = Var::randn(0f32, 0.5, 16, &dev).unwrap();
        same_values_and_gradients(
            &[&x, &w, &b],
            || layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5, true).unwrap(),
            || candle_nn::ops::layer_norm_slow(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap(),
            1e-4,
        );
    }

    #[test]
    fn frozen_product_gives_the_input_gradient_only() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (6, 5), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        same_values_and_gradients(
            &[&x],
            || frozen_product(x.as_tensor(), w.as_tensor()).unwrap(),
            || x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap(),
            1e-5,
        );
        let grads = frozen_product(x.as_tensor(), w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(w.as_tensor()).is_none(), "no gradient for the frozen weight");
    }

    #[test]
    fn softmax_equals_candles() {
        let dev = Device::Cpu;
        // 37 columns: lane loops with a remainder; large values: the max shift matters.
        let x = Var::randn(0f32, 30.0, (3, 5, 37), &dev).unwrap();
        same_values_and_gradients(
            &[&x],
            || softmax_last_dim(x.as_tensor(), true).unwrap(),
            || candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn gelu_equals_candles() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 3.0, (4, 300), &dev).unwrap();
        same_values_and_gradients(&[&x], || gelu(x.as_tensor()).unwrap(), || x.as_tensor().gelu().unwrap(), 1e-5);
    }

    #[test]
    fn sliced_cross_entropy_equals_log_softmax_of_each_slice() {
        let dev = Device::Cpu;
        // 37 + 20 ids: slices with lane remainders; large logits: the max shift matters.
        let logits = Var::randn(0f32, 8.0, (2, 6, 57), &dev).unwrap();
        let vocab = [0..37, 0..37, 37..57, 37..57, 0..37, 0..0];
        let labels = Tensor::new(&[[3u32, 36, 0, 19, 7, 0], [0, 1, 5, 5, 36, 0]], &dev).unwrap();
        // The same loss written out: each position's slice, log-softmax, the label's entry.
        let by_position = || {
            let rows: Vec<Tensor> = (0..6)
                .map(|p| {
                    let r = &vocab[p];
                    if r.is_empty() {
                        return Tensor::zeros((2, 1), DType::F32, &dev).unwrap();
                    }
                    let slice = logits.as_tensor().narrow(1, p, 1).unwrap().narrow(2, r.start, r.len()).unwrap();
                    let log_probs = candle_nn::ops::log_softmax(&slice, D::Minus1).unwrap();
                    let label = labels.narrow(1, p, 1).unwrap().unsqueeze(2).unwrap().contiguous().unwrap();
                    log_probs.gather(&label, 2).unwrap().squeeze(2).unwrap().neg().unwrap()
                })
                .collect();
            Tensor::cat(&rows, 1).unwrap()
        };
        same_values_and_gradients(
            &[&logits],
            || sliced_cross_entropy(logits.as_tensor(), &labels, &vocab).unwrap(),
            by_position,
            1e-5,
        );
        // The composite path (taken off the CPU or for other dtypes) gives the same.
        let composite =
            sliced_cross_entropy(&logits.as_tensor().to_dtype(DType::F64).unwrap(), &labels, &vocab).unwrap();
        assert!(max_diff(&composite.to_dtype(DType::F32).unwrap(), &by_position()) < 1e-5);
        // A label outside its slice is refused.
        let wrong = Tensor::new(&[[37u32, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], &dev).unwrap();
        assert!(sliced_cross_entropy(logits.as_tensor(), &wrong, &vocab).is_err());
    }
}
