//! Attention and MLP blocks whose weights are not trained (fine-tuning as the article
//! does, and Borscht's teaching by default), each as one CPU op whose backward pass
//! gives the input's gradient only.
//!
//! Through candle's ops, every intermediate of a block (products, bias additions, the
//! query/key/value split and its head views, scores, probabilities) is a node of the
//! graph, and candle's backward gives each a zeroed gradient buffer and adds into it:
//! in the tiny model that bookkeeping took about as long as the matrix products
//! themselves. Here a block's forward keeps what its backward needs (the projected
//! queries, keys and values and the probabilities of attention; the GELU's derivative
//! at the MLP's first product), and its backward is a handful of matrix products.

use super::{
    applies, contiguous_f32, gelu_keeping_grad, mask_row, masked_softmax_grad_in_place, masked_softmax_in_place,
    multiply_in_place, product, product_overwriting, repeated_rows, zeros, AttentionMask, View,
};
use crate::vector_math::vectorized;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::OnceLock;

/// A linear layer that is not trained: `weight` `[out, in]`, `bias` `[out]`.
#[derive(Clone, Copy)]
pub struct FrozenLinear<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
}

/// A frozen layer's tensors (contiguous, on the CPU) and sizes.
struct LinearData {
    weight: Tensor,
    bias: Tensor,
    out: usize,
    inputs: usize,
}

impl LinearData {
    fn new(linear: FrozenLinear) -> Result<Self> {
        let (out, inputs) = linear.weight.dims2()?;
        if linear.bias.dims() != [out] {
            candle_core::bail!(
                "frozen block: bias {:?} does not fit weight {:?}",
                linear.bias.dims(),
                linear.weight.dims()
            );
        }
        if !applies(linear.weight) || !applies(linear.bias) {
            candle_core::bail!("frozen block: weights are not f32 on the CPU, as the input is");
        }
        let (weight, bias) = (linear.weight.detach().contiguous()?, linear.bias.detach().contiguous()?);
        Ok(LinearData { weight, bias, out, inputs })
    }

    /// Runs `f` on the layer's weight and bias data, read in place.
    fn with<R>(&self, f: impl FnOnce(Linear) -> R) -> Result<R> {
        let (weight, weight_layout) = self.weight.storage_and_layout();
        let (bias, bias_layout) = self.bias.storage_and_layout();
        let (candle_core::Storage::Cpu(weight), candle_core::Storage::Cpu(bias)) = (&*weight, &*bias) else {
            candle_core::bail!("frozen block: weights not on the CPU")
        };
        Ok(f(Linear {
            weight: contiguous_f32(weight, weight_layout, "frozen block")?,
            bias: contiguous_f32(bias, bias_layout, "frozen block")?,
            out: self.out,
            inputs: self.inputs,
        }))
    }
}

/// A frozen layer's data: weight `[out, in]` and bias `[out]`.
#[derive(Clone, Copy)]
struct Linear<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    out: usize,
    inputs: usize,
}

impl Linear<'_> {
    /// The output `[rows, out]` as it starts: the bias in every row ([`Linear::add_product`]
    /// completes it).
    fn bias_rows(self, rows: usize) -> Vec<f32> {
        repeated_rows(self.bias, rows)
    }

    /// `out += x · weightᵀ` for `x` `[rows, in]`, `out` `[rows, out]`: with `out` from
    /// [`Linear::bias_rows`], the layer's output.
    fn add_product(self, x: &[f32], out: &mut [f32], parallel: bool) {
        let rows = x.len() / self.inputs;
        let x = View { data: x, rs: self.inputs, cs: 1 };
        let weight_t = View { data: self.weight, rs: 1, cs: self.inputs };
        product(out, self.out, (rows, self.out, self.inputs), x, weight_t, 1.0, parallel);
    }

    /// The input's gradient `dx = grad · weight` for `grad` `[rows, out]`, `dx` `[rows, in]`.
    fn backward_into(self, grad: &[f32], dx: &mut [f32], parallel: bool) {
        let rows = grad.len() / self.out;
        let grad = View { data: grad, rs: self.out, cs: 1 };
        let weight = View { data: self.weight, rs: self.inputs, cs: 1 };
        product_overwriting(dx, self.inputs, (rows, self.inputs, self.out), grad, weight, 1.0, parallel);
    }
}

/// How a block's work splits between the pool's threads: `items` (rows or samples) in
/// chunks of the returned size, one chunk per thread, each running a whole block on
/// its own (one fork and join per block instead of one per step, and no step left on
/// a single thread). The products inside a chunk run in parallel only where there are
/// fewer chunks than threads.
fn chunking(items: usize, smallest: usize) -> (usize, bool) {
    let threads = rayon::current_num_threads().max(1);
    let chunks = (items / smallest.max(1)).clamp(1, threads);
    (items.div_ceil(chunks).max(1), chunks < threads)
}

/// `x` as contiguous f32 data, when the CPU kernels apply. The ops read it as `[rows,
/// in]` and give their output `x`'s shape with its last dimension changed: reshaping
/// around them would add two nodes to the graph, whose backward passes each zero a
/// gradient buffer the size of the activations and add into it.
fn kernel_input(x: &Tensor) -> Result<Option<Tensor>> {
    Ok(if applies(x) { Some(x.contiguous()?) } else { None })
}

/// A contiguous f32 tensor's data on the CPU, read in place (the gradient a backward
/// pass gets, without copying it out).
fn cpu_data<'a, Guard: std::ops::Deref<Target = candle_core::Storage>>(
    (storage, layout): &'a (Guard, &Layout),
    what: &str,
) -> Result<&'a [f32]> {
    let candle_core::Storage::Cpu(storage) = &**storage else { candle_core::bail!("{what}: data not on the CPU") };
    contiguous_f32(storage, layout, what)
}

/// `layout`'s shape with its last dimension `last`.
fn with_last_dim(layout: &Layout, last: usize) -> Shape {
    let mut dims = layout.dims().to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

// ---------------------------------------------------------------------------------------
// MLP

/// `gelu(x · upᵀ + up_bias) · downᵀ + down_bias` for `x` `[.., h]`, the transformer's MLP
/// with its weights fixed; differentiable in `x`. `None` where the CPU kernel does not
/// apply (the caller's op-by-op path runs instead).
pub fn frozen_mlp(x: &Tensor, up: FrozenLinear, down: FrozenLinear) -> Result<Option<Tensor>> {
    let Some(input) = kernel_input(x)? else { return Ok(None) };
    let (up, down) = (LinearData::new(up)?, LinearData::new(down)?);
    if up.inputs != input.dim(D::Minus1)? || down.inputs != up.out {
        candle_core::bail!("frozen MLP: weights do not fit input {:?}", x.dims());
    }
    Ok(Some(input.apply_op1(FrozenMlp { up, down, gelu_grad: OnceLock::new() })?))
}

struct FrozenMlp {
    up: LinearData,
    down: LinearData,
    /// The GELU's derivative at the forward's `x · upᵀ + up_bias`, for the backward.
    gelu_grad: OnceLock<Vec<f32>>,
}

impl CustomOp1 for FrozenMlp {
    fn name(&self) -> &'static str {
        "frozen-mlp"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "frozen MLP")?;
        let (inputs, hidden, outputs) = (self.up.inputs, self.up.out, self.down.out);
        let rows = x.len() / inputs;
        let (chunk, parallel) = chunking(rows, MLP_ROWS_PER_CHUNK);
        let (gelu_grad, out) = self.up.with(|up| {
            self.down.with(|down| {
                let (mut first, mut out) = (up.bias_rows(rows), down.bias_rows(rows));
                (
                    first.par_chunks_mut(chunk * hidden),
                    out.par_chunks_mut(chunk * outputs),
                    x.par_chunks(chunk * inputs),
                )
                    .into_par_iter()
                    .for_each(|(first, out, x)| {
                        up.add_product(x, first, parallel);
                        // `first` becomes the GELU's derivative there.
                        down.add_product(&gelu_keeping_grad(first), out, parallel);
                    });
                (first, out)
            })
        })??;
        // One forward per op: the op is made for it.
        let _ = self.gelu_grad.set(gelu_grad);
        Ok((CpuStorage::F32(out), with_last_dim(layout, outputs)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(gelu_grad) = self.gelu_grad.get() else { candle_core::bail!("frozen MLP: backward before forward") };
        let grad = grad.contiguous()?;
        let grad_storage = grad.storage_and_layout();
        let grad = cpu_data(&grad_storage, "frozen MLP")?;
        let (inputs, hidden, outputs) = (self.up.inputs, self.up.out, self.down.out);
        let rows = grad.len() / outputs;
        let mut dx = zeros(rows * inputs);
        let (chunk, parallel) = chunking(rows, MLP_ROWS_PER_CHUNK);
        self.up.with(|up| {
            self.down.with(|down| {
                (
                    dx.par_chunks_mut(chunk * inputs),
                    grad.par_chunks(chunk * outputs),
                    gelu_grad.par_chunks(chunk * hidden),
                )
                    .into_par_iter()
                    .for_each(|(dx, grad, gelu_grad)| {
                        let mut d_first = zeros(gelu_grad.len());
                        down.backward_into(grad, &mut d_first, parallel);
                        vectorized(
                            #[inline(always)]
                            || multiply_in_place(&mut d_first, gelu_grad),
                        );
                        up.backward_into(&d_first, dx, parallel);
                    })
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Fewest rows a chunk of the MLP takes: fewer make the products inefficient.
const MLP_ROWS_PER_CHUNK: usize = 32;

// ---------------------------------------------------------------------------------------
// Attention

/// The attention block with its weights fixed: `x` `[b, n, h]` (normalised) through
/// `query_key_value`, `heads` heads of masked softmax attention (scores scaled by
/// `1/√head_dim`), the step's dropout of the probabilities (`probs_dropout` gives it as
/// `[b, heads, n, n]` factors, 0 or 1/(1-p), or None; it is asked only where the kernel
/// runs) and `dense`, its bias included. Differentiable in `x`. `None` where the CPU
/// kernel does not apply (the caller's op-by-op path runs instead).
pub fn frozen_attention(
    x: &Tensor,
    query_key_value: FrozenLinear,
    dense: FrozenLinear,
    mask: &AttentionMask,
    heads: usize,
    probs_dropout: impl FnOnce() -> Result<Option<Tensor>>,
) -> Result<Option<Tensor>> {
    let (b, n, h) = x.dims3()?;
    let Some(input) = kernel_input(x)? else { return Ok(None) };
    if mask.penalty.is_some() || !applies(&mask.keep) {
        return Ok(None);
    }
    let (mb, one, mn, mt) = mask.keep.dims4()?;
    if !(mb == 1 || mb == b) || one != 1 || mn != n || mt != n || h % heads != 0 {
        candle_core::bail!(
            "frozen attention: mask {:?} or {heads} heads do not fit input {:?}",
            mask.keep.dims(),
            x.dims()
        );
    }
    let (qkv, dense) = (LinearData::new(query_key_value)?, LinearData::new(dense)?);
    if qkv.inputs != h || qkv.out != 3 * h || dense.inputs != h {
        candle_core::bail!("frozen attention: weights do not fit input {:?}", x.dims());
    }
    let dropout = match probs_dropout()? {
        Some(d) if d.dims() == [b, heads, n, n] => Some(d.flatten_all()?.to_vec1::<f32>()?),
        Some(d) => candle_core::bail!("frozen attention: dropout {:?} does not fit [{b}, {heads}, {n}, {n}]", d.dims()),
        None => None,
    };
    let keep = mask.keep.flatten_all()?.to_vec1::<f32>()?;
    let op = FrozenAttention {
        qkv,
        dense,
        key_limits: key_limits(&keep, n),
        keep,
        mask_batch: mb,
        dropout,
        geometry: Geometry { batch: b, n, heads, head_dim: h / heads },
        saved: OnceLock::new(),
    };
    Ok(Some(input.apply_op1(op)?))
}

/// Query rows per block of [`key_limits`].
const QUERY_ROWS: usize = 32;

/// For each mask sample and each block of [`QUERY_ROWS`] query rows, how many keys,
/// from the first, its rows see: the keys after the last one any of them keeps are
/// left out of its products and softmax (a causal mask hides about half of them). A
/// left-out key's probability is `exp(-10000 - max)`, zero in f32 as long as the row
/// sees a score above -9900; a row that sees no key at all has a uniform softmax over
/// every key, so its block keeps them all.
fn key_limits(keep: &[f32], n: usize) -> Vec<usize> {
    keep.chunks(n * n)
        .flat_map(|sample| sample.chunks(QUERY_ROWS * n))
        .map(|block| {
            let last_seen = |row: &[f32]| row.iter().rposition(|&m| m != 0.0).map_or(n, |last| last + 1);
            block.chunks(n).map(last_seen).max().unwrap_or(n)
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    n: usize,
    heads: usize,
    head_dim: usize,
}

impl Geometry {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Offset in `[rows, 3h]` of part `part` (0 q, 1 k, 2 v) of head `head`, sample `sample`.
    fn part(&self, sample: usize, head: usize, part: usize) -> usize {
        sample * self.n * 3 * self.hidden() + part * self.hidden() + head * self.head_dim
    }

    /// Block `local` of the `(sample, head)` blocks of chunk `chunk` (chunks of `samples`
    /// samples): its sample within the chunk, its head, and its index among all blocks
    /// (which the mask and dropout rows go by).
    fn block(&self, chunk: usize, samples: usize, local: usize) -> (usize, usize, usize) {
        (local / self.heads, local % self.heads, chunk * samples * self.heads + local)
    }
}

struct FrozenAttention {
    qkv: LinearData,
    dense: LinearData,
    /// `[mask batch, 1, n, n]`, 1 where a position may be seen.
    keep: Vec<f32>,
    /// [`key_limits`] of `keep`.
    key_limits: Vec<usize>,
    mask_batch: usize,
    dropout: Option<Vec<f32>>,
    geometry: Geometry,
    /// The forward's queries, keys and values `[rows, 3h]` and probabilities `[b, heads,
    /// n, n]` (before dropout), for the backward.
    saved: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl FrozenAttention {
    /// The mask row of row `row` of the flattened `[b*heads*n, n]` scores.
    #[inline(always)]
    fn keep_row(&self, row: usize) -> &[f32] {
        let g = self.geometry;
        mask_row(&self.keep, row, (g.heads, g.n, g.n, self.mask_batch))
    }

    /// The blocks of query rows of `(sample, head)` block `task`, as `(first row, rows,
    /// keys seen)`.
    fn row_blocks(&self, task: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (n, blocks) = (self.geometry.n, self.geometry.n.div_ceil(QUERY_ROWS));
        let mask_sample = if self.mask_batch == 1 { 0 } else { task / self.geometry.heads };
        self.key_limits[mask_sample * blocks..(mask_sample + 1) * blocks]
            .iter()
            .enumerate()
            .map(move |(block, &keys)| (block * QUERY_ROWS, QUERY_ROWS.min(n - block * QUERY_ROWS), keys))
    }

    /// The probabilities as the values see them (after dropout), of one `(sample, head)`:
    /// `probs` itself without dropout.
    #[inline(always)]
    fn dropped<'a>(&self, probs: &'a [f32], task: usize) -> Cow<'a, [f32]> {
        let size = probs.len();
        match &self.dropout {
            Some(d) => Cow::Owned(probs.iter().zip(&d[task * size..(task + 1) * size]).map(|(p, d)| p * d).collect()),
            None => Cow::Borrowed(probs),
        }
    }
}

impl CustomOp1 for FrozenAttention {
    fn name(&self) -> &'static str {
        "frozen-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "frozen attention")?;
        let g = self.geometry;
        let (n, d, h, outputs) = (g.n, g.head_dim, g.hidden(), self.dense.out);
        let scale = 1.0 / (d as f32).sqrt();
        // Each chunk of samples: its queries, keys and values, each head's scores,
        // probabilities (in place) and context, then the dense layer.
        let (samples, parallel) = chunking(g.batch, 1);
        let (qkv, probs, out) = self.qkv.with(|qkv_layer| {
            self.dense.with(|dense| {
                let (mut qkv, mut out) = (qkv_layer.bias_rows(g.batch * n), dense.bias_rows(g.batch * n));
                let mut probs = zeros(g.batch * g.heads * n * n);
                (
                    x.par_chunks(samples * n * h),
                    qkv.par_chunks_mut(samples * n * 3 * h),
                    probs.par_chunks_mut(samples * g.heads * n * n),
                    out.par_chunks_mut(samples * n * outputs),
                )
                    .into_par_iter()
                    .enumerate()
                    .for_each(|(chunk, (x, qkv, probs, out))| {
                        qkv_layer.add_product(x, qkv, parallel);
                        let mut context = zeros(x.len());
                        // The heads' loop compiled for this CPU's SIMD (the mask, softmax, dropout).
                        vectorized(
                            #[inline(always)]
                            || {
                                for (local, p) in probs.chunks_mut(n * n).enumerate() {
                                    let (sample, head, task) = g.block(chunk, samples, local);
                                    let all = View { data: qkv, rs: 3 * h, cs: 1 };
                                    let keys_t = View { data: qkv, rs: 1, cs: 3 * h }.at(g.part(sample, head, 1));
                                    let queries = all.at(g.part(sample, head, 0));
                                    // Each block of rows over the keys it sees; the rest of
                                    // its probabilities stay the zeros they started as.
                                    for (first, rows, keys) in self.row_blocks(task) {
                                        let p = &mut p[first * n..(first + rows) * n];
                                        let queries = queries.at(first * 3 * h);
                                        product_overwriting(p, n, (rows, keys, d), queries, keys_t, scale, parallel);
                                        for (i, row) in p.chunks_mut(n).enumerate() {
                                            let keep = &self.keep_row(task * n + first + i)[..keys];
                                            masked_softmax_in_place(&mut row[..keys], keep);
                                        }
                                    }
                                    let dropped = self.dropped(p, task);
                                    let values = all.at(g.part(sample, head, 2));
                                    // Straight into the head's columns of `[rows, h]`.
                                    let at = sample * n * h + head * d;
                                    for (first, rows, keys) in self.row_blocks(task) {
                                        let probs = View { data: &dropped, rs: n, cs: 1 }.at(first * n);
                                        let context = &mut context[at + first * h..];
                                        product_overwriting(context, h, (rows, d, keys), probs, values, 1.0, parallel);
                                    }
                                }
                            },
                        );
                        dense.add_product(&context, out, parallel);
                    });
                (qkv, probs, out)
            })
        })??;
        let _ = self.saved.set((qkv, probs));
        Ok((CpuStorage::F32(out), with_last_dim(layout, outputs)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some((qkv, probs)) = self.saved.get() else {
            candle_core::bail!("frozen attention: backward before forward")
        };
        let g = self.geometry;
        let (n, d, h, outputs) = (g.n, g.head_dim, g.hidden(), self.dense.out);
        let scale = 1.0 / (d as f32).sqrt();
        let grad = grad.contiguous()?;
        let grad_storage = grad.storage_and_layout();
        let grad = cpu_data(&grad_storage, "frozen attention")?;
        let mut dx = zeros(g.batch * n * h);
        // Each chunk of samples: the context's gradient, then each head's gradients of
        // its queries, keys and values, then the input's.
        let (samples, parallel) = chunking(g.batch, 1);
        self.qkv.with(|qkv_layer| {
            self.dense.with(|dense| {
                (
                    dx.par_chunks_mut(samples * n * h),
                    grad.par_chunks(samples * n * outputs),
                    qkv.par_chunks(samples * n * 3 * h),
                    probs.par_chunks(samples * g.heads * n * n),
                )
                    .into_par_iter()
                    .enumerate()
                    .for_each(|(chunk, (dx, grad, qkv, probs))| {
                        let mut d_context = zeros(dx.len());
                        dense.backward_into(grad, &mut d_context, parallel);
                        let (mut d_qkv, mut dp) = (zeros(qkv.len()), zeros(n * n));
                        vectorized(
                            #[inline(always)]
                            || {
                                for (local, p) in probs.chunks(n * n).enumerate() {
                                    let (sample, head, task) = g.block(chunk, samples, local);
                                    let all = View { data: qkv, rs: 3 * h, cs: 1 };
                                    let dc = View { data: &d_context, rs: h, cs: 1 }.at(sample * n * h + head * d);
                                    let dropped = self.dropped(p, task);
                                    let dropped_t = View { data: &dropped, rs: 1, cs: n };
                                    let at = |part| g.part(sample, head, part);
                                    let values_t = View { data: qkv, rs: 1, cs: 3 * h }.at(at(2));
                                    // Each block of rows over the keys it sees (as the forward):
                                    // the queries' gradient rows are the block's own, the keys'
                                    // and values' gradients sums over the blocks (`d_qkv`
                                    // starts at zero).
                                    for (first, rows, keys) in self.row_blocks(task) {
                                        // d values += dropped probsᵀ · d context
                                        let (dc, probs_t) = (dc.at(first * h), dropped_t.at(first * n));
                                        let d_values = &mut d_qkv[at(2)..];
                                        product(d_values, 3 * h, (keys, d, rows), probs_t, dc, 1.0, parallel);
                                        // d probs = (d context · valuesᵀ) ⊙ dropout
                                        let d_scores = &mut dp[first * n..(first + rows) * n];
                                        product_overwriting(d_scores, n, (rows, keys, d), dc, values_t, 1.0, parallel);
                                        for (i, row) in d_scores.chunks_mut(n).enumerate() {
                                            let (row, index) = (&mut row[..keys], task * n + first + i);
                                            if let Some(dropout) = &self.dropout {
                                                multiply_in_place(row, &dropout[index * n..]);
                                            }
                                            // d scores = m * p * (d probs - Σ p * d probs)
                                            let p = &p[(first + i) * n..][..keys];
                                            masked_softmax_grad_in_place(row, p, &self.keep_row(index)[..keys]);
                                        }
                                        let ds = View { data: d_scores, rs: n, cs: 1 };
                                        let ds_t = View { data: d_scores, rs: 1, cs: n };
                                        let (queries, k) = (all.at(at(0) + first * 3 * h), all.at(at(1)));
                                        let d_queries = &mut d_qkv[at(0) + first * 3 * h..];
                                        product_overwriting(d_queries, 3 * h, (rows, d, keys), ds, k, scale, parallel);
                                        let d_keys = &mut d_qkv[at(1)..];
                                        product(d_keys, 3 * h, (keys, d, rows), ds_t, queries, scale, parallel);
                                    }
                                }
                            },
                        );
                        qkv_layer.backward_into(&d_qkv, dx, parallel);
                    })
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{frozen_product, gelu, masked_softmax};
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::{DType, Device, Var};

    /// Values and the input's gradient, under a loss weighing every output differently.
    fn values_and_gradient(x: &Var, f: impl Fn(&Tensor) -> Tensor, weighing: &Tensor) -> (Tensor, Tensor) {
        let y = f(x.as_tensor());
        let grads = (&y * weighing).unwrap().sum_all().unwrap().backward().unwrap();
        (y, grads.get(x.as_tensor()).unwrap().clone())
    }

    fn linear(out: usize, inputs: usize, dev: &Device) -> (Tensor, Tensor) {
        let weight = Tensor::randn(0f32, 0.3, (out, inputs), dev).unwrap();
        (weight, Tensor::randn(0f32, 0.3, out, dev).unwrap())
    }

    fn composite_linear(x: &Tensor, (weight, bias): &(Tensor, Tensor)) -> Tensor {
        let (b, n, h) = x.dims3().unwrap();
        frozen_product(&x.reshape((b * n, h)).unwrap(), weight)
            .unwrap()
            .broadcast_add(bias)
            .unwrap()
            .reshape((b, n, weight.dim(0).unwrap()))
            .unwrap()
    }

    #[test]
    fn frozen_mlp_equals_its_products_and_gelu() {
        let dev = Device::Cpu;
        // Enough rows for the work to split into chunks of different sizes.
        let (b, n, h) = (3, 25, 12);
        let x = Var::randn(0f32, 1.0, (b, n, h), &dev).unwrap();
        let (up, down) = (linear(4 * h, h, &dev), linear(h, 4 * h, &dev));
        let weighing = Tensor::randn(0f32, 1.0, (b, n, h), &dev).unwrap();
        let fused = values_and_gradient(
            &x,
            |x| {
                let up = FrozenLinear { weight: &up.0, bias: &up.1 };
                frozen_mlp(x, up, FrozenLinear { weight: &down.0, bias: &down.1 }).unwrap().unwrap()
            },
            &weighing,
        );
        let composite =
            values_and_gradient(&x, |x| composite_linear(&gelu(&composite_linear(x, &up)).unwrap(), &down), &weighing);
        assert!(max_diff(&fused.0, &composite.0) < 1e-5, "values differ by {}", max_diff(&fused.0, &composite.0));
        assert!(max_diff(&fused.1, &composite.1) < 1e-5, "gradients differ by {}", max_diff(&fused.1, &composite.1));
    }

    #[test]
    fn key_limits_end_at_the_last_key_a_block_sees() {
        let n = 2 * QUERY_ROWS + 5;
        // Causal, but one row of the second block sees nothing, and the third block's
        // rows stop short of their diagonal.
        let mut keep = vec![0f32; n * n];
        for i in 0..n {
            let seen = if i >= 2 * QUERY_ROWS { 2 * QUERY_ROWS } else { i + 1 };
            keep[i * n..i * n + seen].fill(1.0);
        }
        keep[(QUERY_ROWS + 3) * n..(QUERY_ROWS + 4) * n].fill(0.0);
        assert_eq!(key_limits(&keep, n), [QUERY_ROWS, n, 2 * QUERY_ROWS]);
        // Two mask samples: each its own limits.
        let mut two = vec![1f32; n * n];
        two.extend(&keep);
        assert_eq!(key_limits(&two, n), [n, n, n, QUERY_ROWS, n, 2 * QUERY_ROWS]);
    }

    #[test]
    fn frozen_attention_equals_the_op_by_op_attention() {
        // Three samples: on two threads, chunks of two samples and of one. 7 positions are
        // one block of query rows; 2 * QUERY_ROWS + 5 are three, of which a causal mask
        // lets the first two skip keys.
        for n in [7, 2 * QUERY_ROWS + 5] {
            frozen_attention_matches_at(n);
        }
    }

    fn frozen_attention_matches_at(n: usize) {
        let dev = Device::Cpu;
        let (b, heads, d) = (3, 3, 4);
        let h = heads * d;
        let x = Var::randn(0f32, 1.0, (b, n, h), &dev).unwrap();
        let (qkv, dense) = (linear(3 * h, h, &dev), linear(h, h, &dev));
        let weighing = Tensor::randn(0f32, 1.0, (b, n, h), &dev).unwrap();
        // A causal mask with a hole, per sample or shared, and (last) one whose second
        // row sees nothing (a uniform softmax over all keys); dropout of about a third.
        for (mask_batch, blind_row) in [(1, false), (b, false), (1, true)] {
            let keep = Tensor::tril2(n, DType::F32, &dev).unwrap();
            let hole = Tensor::rand(0f32, 1.0, (mask_batch, 1, n, n), &dev).unwrap().ge(0.2).unwrap();
            let keep = keep.broadcast_mul(&hole.to_dtype(DType::F32).unwrap()).unwrap();
            let diagonal = Tensor::eye(n, DType::F32, &dev).unwrap().broadcast_as(keep.shape()).unwrap();
            let mut keep = keep.maximum(&diagonal).unwrap();
            if blind_row {
                let rows: Vec<f32> = (0..n * n).map(|k| if k / n == 1 { 0.0 } else { 1.0 }).collect();
                keep = keep.broadcast_mul(&Tensor::from_vec(rows, (n, n), &dev).unwrap()).unwrap();
            }
            let mask = AttentionMask::new(&keep, b, heads).unwrap();
            let drop = Tensor::rand(0f32, 1.0, (b, heads, n, n), &dev).unwrap().ge(0.3).unwrap();
            let dropout = (drop.to_dtype(DType::F32).unwrap() * 1.5).unwrap();
            for probs_dropout in [None, Some(&dropout)] {
                let fused = values_and_gradient(
                    &x,
                    |x| {
                        let (q, dn) = (
                            FrozenLinear { weight: &qkv.0, bias: &qkv.1 },
                            FrozenLinear { weight: &dense.0, bias: &dense.1 },
                        );
                        frozen_attention(x, q, dn, &mask, heads, || Ok(probs_dropout.cloned())).unwrap().unwrap()
                    },
                    &weighing,
                );
                let composite = values_and_gradient(
                    &x,
                    |x| {
                        let all = composite_linear(x, &qkv).reshape((b, n, 3, heads, d)).unwrap();
                        let part = |i: usize| all.narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap();
                        let (q, k, v) = (part(0), part(1), part(2));
                        let scores = (q.contiguous().unwrap().matmul(&k.t().unwrap().contiguous().unwrap()).unwrap()
                            / (d as f64).sqrt())
                        .unwrap();
                        let mut probs = masked_softmax(&scores, &mask, true).unwrap();
                        if let Some(dropout) = probs_dropout {
                            probs = (probs * dropout).unwrap();
                        }
                        let context = probs.matmul(&v.contiguous().unwrap()).unwrap();
                        composite_linear(&context.transpose(1, 2).unwrap().reshape((b, n, h)).unwrap(), &dense)
                    },
                    &weighing,
                );
                let (values, gradient) = (max_diff(&fused.0, &composite.0), max_diff(&fused.1, &composite.1));
                let case = format!("n {n}, mask batch {mask_batch}, blind row {blind_row}");
                assert!(values < 1e-5, "{case}: values differ by {values}");
                assert!(gradient < 1e-5, "{case}: gradients differ by {gradient}");
            }
        }
    }
}
