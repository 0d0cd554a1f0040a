//! The training loss's last projection and cross-entropy as one op, without the logits.
//!
//! Each position is scored over its own slice of the vocabulary (text ids for the texts,
//! image ids for the image), so most logits of a full projection are never read: a
//! 350M batch's logits are 1.3 GB, and in the tiny model their bias gradient, a strided
//! reduction over every row, and candle's zero-then-add accumulation of their gradient
//! at each of the three ops that touched them took a fifth of a training step. On the
//! CPU this op gathers the rows that share a slice, multiplies them by that slice's
//! weights alone, a bounded chunk of rows at a time, and keeps each row's loss. When all
//! the logits fit [`KEPT_LOGITS`] (the tiny and demo models' batches), the forward keeps
//! them for the backward; otherwise (a 350M batch) the backward computes each chunk's
//! logits again. Either way the backward turns them into the three gradients in place.

use super::{
    applies, contiguous_f32, cross_entropy_grad_in_place, exp_sum, label_in_slice, product, sliced_cross_entropy, View,
};
use crate::vector_math::vectorized;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Most logits one chunk holds (64 MB of f32).
const CHUNK_LOGITS: usize = 16 << 20;

/// Most logits the forward keeps for the backward (64 MB of f32), sparing it a
/// projection.
const KEPT_LOGITS: usize = 16 << 20;

/// How much memory the op may take: logits per chunk, logits kept for the backward.
#[derive(Debug, Clone, Copy)]
struct Budgets {
    chunk: usize,
    kept: usize,
}

/// Per-position cross-entropy `[b, n]` of the logits `x · weightᵀ + bias`, for `x`
/// `[b, n, h]`, `weight` `[v, h]` and `bias` `[v]`: position `p` over the ids
/// `vocab[p]` as in [`sliced_cross_entropy`] (an empty slice scores 0), `labels` `[b, n]`
/// counted from its slice's start. Differentiable in `x`, `weight` and `bias`.
pub fn linear_cross_entropy(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    labels: &Tensor,
    vocab: &[Range<usize>],
) -> Result<Tensor> {
    within(x, weight, bias, labels, vocab, Budgets { chunk: CHUNK_LOGITS, kept: KEPT_LOGITS })
}

/// [`linear_cross_entropy`] within the given budgets.
fn within(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    labels: &Tensor,
    vocab: &[Range<usize>],
    budgets: Budgets,
) -> Result<Tensor> {
    let (b, n, h) = x.dims3()?;
    let (v, weight_h) = weight.dims2()?;
    if weight_h != h || bias.dims() != [v] {
        candle_core::bail!(
            "linear cross-entropy: weight {:?} and bias {:?} do not fit input {:?}",
            weight.dims(),
            bias.dims(),
            x.dims()
        );
    }
    if !(applies(x) && applies(weight) && applies(bias)) {
        let logits = x.reshape((b * n, h))?.matmul(&weight.t()?)?.broadcast_add(bias)?.reshape((b, n, v))?;
        return sliced_cross_entropy(&logits, labels, vocab);
    }
    if labels.dims() != [b, n] || vocab.len() != n || vocab.iter().any(|r| r.end > v) {
        candle_core::bail!(
            "linear cross-entropy: labels {:?} and {} vocabulary slices do not fit input {:?} and {v} ids",
            labels.dims(),
            vocab.len(),
            x.dims()
        );
    }
    let labels = labels.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
    let groups = SliceGroups::new(&labels, vocab)?;
    let keep = groups.groups.iter().map(|g| g.rows.len() * g.slice.len()).sum::<usize>() <= budgets.kept;
    let op = LinearCrossEntropy {
        groups: Arc::new(groups),
        h,
        chunk_logits: budgets.chunk,
        kept: keep.then(|| Arc::new(Mutex::new(Vec::new()))),
    };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// The rows (flattened `b * n` indices) that share a slice, with their labels.
struct SliceGroup {
    slice: Range<usize>,
    rows: Vec<usize>,
    labels: Vec<usize>,
}

struct SliceGroups {
    groups: Vec<SliceGroup>,
    rows: usize,
}

impl SliceGroups {
    fn new(labels: &[u32], vocab: &[Range<usize>]) -> Result<Self> {
        let mut groups: Vec<SliceGroup> = Vec::new();
        for (row, &label) in labels.iter().enumerate() {
            let slice = &vocab[row % vocab.len()];
            if slice.is_empty() {
                continue;
            }
            let label = label_in_slice(label, row % vocab.len(), slice)?;
            let group = match groups.iter_mut().position(|g| g.slice == *slice) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(SliceGroup { slice: slice.clone(), rows: Vec::new(), labels: Vec::new() });
                    groups.last_mut().expect("just pushed")
                }
            };
            group.rows.push(row);
            group.labels.push(label);
        }
        Ok(SliceGroups { groups, rows: labels.len() })
    }

    /// Each group's rows in chunks of at most `logits` logits: `(group, rows)`.
    fn chunks(&self, logits: usize) -> impl Iterator<Item = (&SliceGroup, Range<usize>)> {
        self.groups.iter().flat_map(move |group| {
            let per_chunk = (logits / group.slice.len()).max(1);
            (0..group.rows.len())
                .step_by(per_chunk)
                .map(move |start| (group, start..(start + per_chunk).min(group.rows.len())))
        })
    }
}

/// `[rows, h]`: the chunk's rows of `x`, gathered.
fn gather_rows(x: &[f32], h: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * h);
    for &row in rows {
        out.extend_from_slice(&x[row * h..(row + 1) * h]);
    }
    out
}

/// The chunk's logits `[rows, slice]`: `bias + xs · weight[slice]ᵀ`.
fn chunk_logits(xs: &[f32], weight: &[f32], bias: &[f32], h: usize, slice: &Range<usize>) -> Vec<f32> {
    let (rows, s) = (xs.len() / h, slice.len());
    let mut logits = Vec::with_capacity(rows * s);
    for _ in 0..rows {
        logits.extend_from_slice(&bias[slice.clone()]);
    }
    let weight_t = View { data: &weight[slice.start * h..], rs: 1, cs: h };
    product(&mut logits, s, (rows, s, h), View { data: xs, rs: h, cs: 1 }, weight_t, 1.0, true);
    logits
}

#[derive(Clone)]
struct LinearCrossEntropy {
    groups: Arc<SliceGroups>,
    h: usize,
    chunk_logits: usize,
    /// Where the forward leaves each chunk's logits for the backward, when they fit the
    /// budget for that (the backward takes them).
    kept: Option<Arc<Mutex<Vec<Vec<f32>>>>>,
}

impl LinearCrossEntropy {
    fn inputs<'a>(
        &self,
        (s1, l1): (&'a CpuStorage, &Layout),
        (s2, l2): (&'a CpuStorage, &Layout),
        (s3, l3): (&'a CpuStorage, &Layout),
    ) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
        let x = contiguous_f32(s1, l1, "linear cross-entropy")?;
        let weight = contiguous_f32(s2, l2, "linear cross-entropy")?;
        let bias = contiguous_f32(s3, l3, "linear cross-entropy")?;
        if x.len() != self.groups.rows * self.h || weight.len() != bias.len() * self.h {
            candle_core::bail!(
                "linear cross-entropy: inputs {:?}, {:?}, {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        Ok((x, weight, bias))
    }
}

impl CustomOp3 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
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
        let (x, weight, bias) = self.inputs((s1, l1), (s2, l2), (s3, l3))?;
        let mut out = vec![0f32; self.groups.rows];
        for (group, chunk) in self.groups.chunks(self.chunk_logits) {
            let xs = gather_rows(x, self.h, &group.rows[chunk.clone()]);
            let logits = chunk_logits(&xs, weight, bias, self.h, &group.slice);
            let losses: Vec<f32> = logits
                .par_chunks(group.slice.len())
                .zip(&group.labels[chunk.clone()])
                .map(|(row, &label)| {
                    let (max, sum) = vectorized(
                        #[inline(always)]
                        || exp_sum(row),
                    );
                    max + sum.ln() - row[label]
                })
                .collect();
            for (&row, loss) in group.rows[chunk].iter().zip(losses) {
                out[row] = loss;
            }
            if let Some(kept) = &self.kept {
                kept.lock().expect("kept logits").push(logits);
            }
        }
        let dims = l1.dims();
        Ok((CpuStorage::F32(out), Shape::from((dims[0], dims[1]))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let backward =
            LinearCrossEntropyBackward { forward: self.clone(), grad: grad.flatten_all()?.to_vec1::<f32>()? };
        let packed = x.apply_op3_no_bwd(weight, bias, &backward)?;
        let (x_len, weight_len) = (x.elem_count(), weight.elem_count());
        Ok((
            Some(packed.narrow(0, 0, x_len)?.reshape(x.shape())?),
            Some(packed.narrow(0, x_len, weight_len)?.reshape(weight.shape())?),
            Some(packed.narrow(0, x_len + weight_len, bias.elem_count())?),
        ))
    }
}

/// The gradients of x, weight and bias, packed into one vector in that order. Each
/// chunk's logits become `d logits = g * (softmax - onehot(label))` in place.
struct LinearCrossEntropyBackward {
    forward: LinearCrossEntropy,
    /// The gradient of each row's loss.
    grad: Vec<f32>,
}

impl CustomOp3 for LinearCrossEntropyBackward {
    fn name(&self) -> &'static str {
        "linear-cross-entropy-backward"
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
        let (x, weight, bias) = self.forward.inputs((s1, l1), (s2, l2), (s3, l3))?;
        let h = self.forward.h;
        let mut packed = vec![0f32; x.len() + weight.len() + bias.len()];
        let (dx, rest) = packed.split_at_mut(x.len());
        let (dweight, dbias) = rest.split_at_mut(weight.len());
        // The forward's logits, chunk by chunk, where it kept them (a second backward
        // through the same graph computes them again).
        let mut kept =
            self.forward.kept.as_ref().map(|k| std::mem::take(&mut *k.lock().expect("kept logits")).into_iter());
        for (group, chunk) in self.forward.groups.chunks(self.forward.chunk_logits) {
            let rows = &group.rows[chunk.clone()];
            let s = group.slice.len();
            let xs = gather_rows(x, h, rows);
            let mut dlogits = match kept.as_mut().and_then(Iterator::next) {
                Some(logits) => logits,
                None => chunk_logits(&xs, weight, bias, h, &group.slice),
            };
            dlogits.par_chunks_mut(s).zip(rows).zip(&group.labels[chunk]).for_each(|((row, &r), &label)| {
                cross_entropy_grad_in_place(row, label, self.grad[r]);
            });
            let mut dxs = vec![0f32; rows.len() * h];
            let (dlogits, xs) = (View { data: &dlogits, rs: s, cs: 1 }, View { data: &xs, rs: h, cs: 1 });
            let slice_weight = View { data: &weight[group.slice.start * h..], rs: h, cs: 1 };
            product(&mut dxs, h, (rows.len(), h, s), dlogits, slice_weight, 1.0, true);
            // Added to the slice's rows: slices may overlap, and a slice spans chunks.
            let dlogits_t = View { rs: 1, cs: s, ..dlogits };
            product(&mut dweight[group.slice.start * h..], h, (s, h, rows.len()), dlogits_t, xs, 1.0, true);
            for (&row, dx_row) in rows.iter().zip(dxs.chunks(h)) {
                dx[row * h..(row + 1) * h].copy_from_slice(dx_row);
            }
            let dbias = &mut dbias[group.slice.clone()];
            for row in dlogits.data.chunks(s) {
                for (d, &g) in dbias.iter_mut().zip(row) {
                    *d += g;
                }
            }
        }
        Ok((CpuStorage::F32(packed), Shape::from(x.len() + weight.len() + bias.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::{Device, Var};

    /// Values and the gradients of x, weight and bias equal the projection followed by
    /// [`sliced_cross_entropy`], under a loss weighing each position differently.
    #[test]
    fn equals_the_projection_then_sliced_cross_entropy() {
        let dev = Device::Cpu;
        // 37 + 20 ids, overlapping slices (0..37 and 10..30) and an empty one.
        let (b, n, h, v) = (3, 7, 19, 57);
        let x = Var::randn(0f32, 1.0, (b, n, h), &dev).unwrap();
        let weight = Var::randn(0f32, 1.0, (v, h), &dev).unwrap();
        let bias = Var::randn(0f32, 1.0, v, &dev).unwrap();
        let vocab = [0..37, 0..37, 37..57, 37..57, 10..30, 0..37, 0..0];
        let labels =
            Tensor::new(&[[3u32, 36, 0, 19, 7, 1, 0], [0, 1, 5, 5, 19, 2, 0], [4, 4, 4, 4, 4, 4, 0]], &dev).unwrap();
        let weighing = Tensor::randn(0f32, 1.0, (b, n), &dev).unwrap();
        // `budgets`: None for the composite; a chunk of 40 logits splits each slice's rows
        // over chunks; a kept budget of 0 has the backward compute the logits again.
        let run = |budgets: Option<Budgets>| {
            let per_token = if let Some(budgets) = budgets {
                within(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), &labels, &vocab, budgets).unwrap()
            } else {
                let logits = x
                    .as_tensor()
                    .reshape((b * n, h))
                    .unwrap()
                    .matmul(&weight.as_tensor().t().unwrap())
                    .unwrap()
                    .broadcast_add(bias.as_tensor())
                    .unwrap()
                    .reshape((b, n, v))
                    .unwrap();
                sliced_cross_entropy(&logits, &labels, &vocab).unwrap()
            };
            let grads = (&per_token * &weighing).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |var: &Var| grads.get(var.as_tensor()).unwrap().clone();
            (per_token, grad(&x), grad(&weight), grad(&bias))
        };
        let composite = run(None);
        for (chunk, kept) in [(CHUNK_LOGITS, KEPT_LOGITS), (40, KEPT_LOGITS), (CHUNK_LOGITS, 0), (40, 0)] {
            let fused = run(Some(Budgets { chunk, kept }));
            assert!(max_diff(&fused.0, &composite.0) < 1e-5, "loss differs by {}", max_diff(&fused.0, &composite.0));
            for (name, a, b) in
                [("x", &fused.1, &composite.1), ("weight", &fused.2, &composite.2), ("bias", &fused.3, &composite.3)]
            {
                assert!(
                    max_diff(a, b) < 1e-5,
                    "chunk {chunk}, kept {kept}: gradient of {name} differs by {}",
                    max_diff(a, b)
                );
            }
        }
        let fused = run(Some(Budgets { chunk: CHUNK_LOGITS, kept: KEPT_LOGITS }));
        // The empty slice scores 0 and sends no gradient back to its rows.
        assert_eq!(
            fused.0.narrow(1, n - 1, 1).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
        // A label outside its slice is refused.
        let wrong = Tensor::new(&[[37u32, 0, 0, 0, 0, 0, 0], [0; 7], [0; 7]], &dev).unwrap();
        assert!(linear_cross_entropy(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), &wrong, &vocab).is_err());
    }
}
