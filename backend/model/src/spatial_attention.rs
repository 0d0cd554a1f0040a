//! The VQGAN's single-head attention over image positions: [`attend`] picks our CPU
//! kernel for inference, candle's ops otherwise (training, GPUs).
//!
//! Done as three tensor ops, it writes a `[positions, positions]` score matrix per
//! image (4 MB at 32x32), reads it back for the softmax, writes the probabilities and
//! reads them again for the product with v: three attention blocks were a third of a
//! decode, mostly memory traffic. Here each task takes a block of query positions,
//! computes its rows of scores, softmax and output while they sit in the cache, and
//! never writes the whole matrix.

use crate::fused::{self, contiguous_f32, product_overwriting, View};
use crate::vector_math::{exp_shifted_in_place, vectorized};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Query positions per task: 128 rows of 1024 scores (512 KB) stay in L2.
const QUERY_BLOCK: usize = 128;

/// `softmax(qᵀk / √c) vᵀ` per image for `q`, `k`, `v` of shape `[b, c, n]`, as
/// `[b, n, c]` (position-major): the fused kernel for CPU inference, else three ops
/// (differentiable with `train`).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, train: bool) -> Result<Tensor> {
    if !train && fused::applies(q) {
        return spatial_attention(q, k, v);
    }
    let c = q.dim(1)?;
    // q as [b, hw, c], scaled rather than the scores: hw*c multiplies instead of hw*hw.
    let weights = (q.transpose(1, 2)? * (c as f64).powf(-0.5))?.matmul(k)?;
    let weights = fused::softmax_last_dim(&weights, train)?;
    // out[b, j, c] = sum_i w[b, j, i] * v[b, c, i]: the product reads the big weights
    // matrix in its own layout (no packing of a transpose).
    weights.matmul(&v.transpose(1, 2)?)
}

/// The fused kernel: contiguous f32 CPU tensors only, no gradient.
pub fn spatial_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &SpatialAttention)
}

struct SpatialAttention;

impl CustomOp3 for SpatialAttention {
    fn name(&self) -> &'static str {
        "spatial-attention"
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
        let (q, k, v) = (
            contiguous_f32(s1, l1, "spatial attention")?,
            contiguous_f32(s2, l2, "spatial attention")?,
            contiguous_f32(s3, l3, "spatial attention")?,
        );
        let (b, c, n) = l1.shape().dims3()?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            candle_core::bail!("spatial attention: q {:?}, k {:?}, v {:?} differ", l1.shape(), l2.shape(), l3.shape());
        }
        let scale = (c as f32).powf(-0.5);
        let blocks_per_image = n.div_ceil(QUERY_BLOCK);
        let mut out = vec![0f32; b * n * c];
        // Tasks own whole blocks of output rows; an image's last block may be shorter.
        let tasks: Vec<(usize, usize, &mut [f32])> = out
            .chunks_mut(n * c)
            .enumerate()
            .flat_map(|(image, rows)| {
                rows.chunks_mut(QUERY_BLOCK * c).enumerate().map(move |(block, dst)| (image, block, dst))
            })
            .collect();
        debug_assert_eq!(tasks.len(), b * blocks_per_image);
        tasks.into_par_iter().for_each_init(
            || vec![0f32; QUERY_BLOCK * n],
            |scores, (image, block, dst)| {
                let rows = dst.len() / c;
                let first = block * QUERY_BLOCK;
                let plane = image * c * n;
                let scores = &mut scores[..rows * n];
                // qᵀ rows first..first+rows ([n, c], column stride n) times k ([c, n]).
                let q_t = View { data: &q[plane + first..], rs: 1, cs: n };
                let keys = View { data: &k[plane..], rs: n, cs: 1 };
                product_overwriting(scores, n, (rows, n, c), q_t, keys, scale, false);
                // Softmax's division waits for the output: c values a row instead of n.
                let mut sums = [0f32; QUERY_BLOCK];
                vectorized(
                    #[inline(always)]
                    || {
                        for (row, sum) in scores.chunks_mut(n).zip(&mut sums) {
                            *sum = exp_shifted_in_place(row);
                        }
                    },
                );
                // out[j, :] = Σ_i e[j, i] · v[:, i] / Σ_i e[j, i]
                let weights = View { data: scores, rs: n, cs: 1 };
                let v_t = View { data: &v[plane..], rs: 1, cs: n };
                product_overwriting(dst, c, (rows, c, n), weights, v_t, 1.0, false);
                for (row, sum) in dst.chunks_mut(c).zip(sums) {
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|d| *d *= inv);
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn equals_the_three_tensor_ops() {
        let dev = Device::Cpu;
        // 300 positions: two full query blocks and a short one.
        for (b, c, n) in [(2, 8, 300), (1, 32, 64), (3, 4, 1)] {
            let q = Tensor::randn(0f32, 1.0, (b, c, n), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, c, n), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, c, n), &dev).unwrap();
            let scores = (q.transpose(1, 2).unwrap().matmul(&k).unwrap() / (c as f64).sqrt()).unwrap();
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            let expected = probs.matmul(&v.transpose(1, 2).unwrap()).unwrap();
            let ours = spatial_attention(&q, &k, &v).unwrap();
            assert_eq!(ours.dims(), &[b, n, c]);
            let diff = crate::test_support::max_diff(&ours, &expected);
            assert!(diff < 1e-5, "b {b} c {c} n {n}: differs by {diff}");
        }
    }
}
