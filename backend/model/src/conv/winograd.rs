//! 3x3 convolutions (stride 1, padding 1) for inference as Winograd F(2x2, 3x3): each 2x2
//! block of outputs comes from a 4x4 block of inputs through 16 products instead of 36.
//! The 16 products of all blocks are 16 matrix products, `[out, in] x [in, blocks]`, so
//! a convolution does 4/9 of the multiply-adds of im2col. Transforming the input and
//! the output costs a few additions per value, so it pays where the channels are many
//! (the Sber VQGAN's 128 to 512); see [`worth_it`].
//!
//! The transforms are Lavin and Gray's ("Fast Algorithms for Convolutional Neural
//! Networks", 2015): `U = G g Gᵀ` for each 3x3 kernel, `V = Bᵀ d B` for each 4x4 input
//! block, `Y = Aᵀ (U ⊙ V) A`. Their coefficients are 0, ±1 and ±1/2, so the results
//! differ from a direct convolution by rounding only.

use super::SharedPtr;
use crate::fused::{contiguous_f32, product_overwriting, View};
use crate::vector_math::vectorized;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;
use std::sync::Arc;

/// Values of the 16 transformed matrices kept at once (inputs and outputs of a group
/// of images); bigger batches go a group at a time.
const GROUP_VALUES: usize = 16 << 20;

/// Whether Winograd beats the im2col path for this convolution: the matrix products
/// must outweigh the transforms. Measured on the two VQGAN presets (2-core AMD EPYC,
/// 2026-12-05): with the Sber VQGAN's 128 to 512 channels a decode or encode took about
/// a fifth less time; with the tiny preset's 32 to 128 channels, or 8x8 pictures, longer.
pub(super) fn worth_it(in_c: usize, out_c: usize, (h, w): (usize, usize)) -> bool {
    in_c >= 128 && out_c >= 128 && h * w >= 256
}

/// `U = G g Gᵀ` of every kernel, as 16 matrices `[out, in]` (`[16, out, in]`).
pub(super) fn transform_weights(weight: &[f32], out_c: usize, in_c: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * out_c * in_c];
    for (kernel_index, g) in weight.chunks_exact(9).enumerate() {
        // G g: 4x3, G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
        let mut gg = [[0f32; 3]; 4];
        for c in 0..3 {
            let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
            gg[0][c] = g0;
            gg[1][c] = 0.5 * (g0 + g1 + g2);
            gg[2][c] = 0.5 * (g0 - g1 + g2);
            gg[3][c] = g2;
        }
        // (G g) Gᵀ: 4x4.
        for (r, [a, b, c]) in gg.into_iter().enumerate() {
            let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
            for (s, value) in row.into_iter().enumerate() {
                u[(r * 4 + s) * out_c * in_c + kernel_index] = value;
            }
        }
    }
    u
}

/// The convolution with the kernels transformed once ([`transform_weights`]); inputs:
/// the picture `[b, in, h, w]` and the bias `[out]`.
pub(super) struct WinogradConv {
    pub(super) weights: Arc<Vec<f32>>,
    pub(super) out_c: usize,
}

impl CustomOp2 for WinogradConv {
    fn name(&self) -> &'static str {
        "winograd-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "conv2d")?;
        let bias = contiguous_f32(s2, l2, "conv2d")?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let out_c = self.out_c;
        if self.weights.len() != 16 * out_c * c || bias.len() != out_c {
            candle_core::bail!("conv2d: {} kernels / bias {:?} do not fit input {:?}", out_c, l2.shape(), l1.shape());
        }
        // Blocks of 2x2 outputs; an odd side's last block reads zeros and writes half.
        let (tiles_h, tiles_w) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = tiles_h * tiles_w;
        let group = (GROUP_VALUES / (16 * (c + out_c) * tiles).max(1)).clamp(1, b.max(1));
        let mut out = vec![0f32; b * out_c * h * w];
        let mut v = vec![0f32; 16 * c * group * tiles];
        let mut m = vec![0f32; 16 * out_c * group * tiles];
        for first in (0..b).step_by(group) {
            let images = group.min(b - first);
            let columns = images * tiles;
            let v_ptr = SharedPtr(v.as_mut_ptr());
            // V = Bᵀ d B for every (image, channel) plane, into row `channel` of each of
            // the 16 matrices `[c, columns]`.
            (0..images * c).into_par_iter().for_each_init(
                || [(); 4].map(|_| vec![0f32; 2 * tiles_w + 2]),
                |rows, plane_index| {
                    let (image, channel) = (plane_index / c, plane_index % c);
                    let plane = &x[((first + image) * c + channel) * h * w..][..h * w];
                    // Rebound so the closure below captures the whole (Sync) pointer.
                    #[allow(clippy::redundant_locals)]
                    let v_ptr = v_ptr;
                    // SAFETY: this task alone writes columns image*tiles..(image+1)*tiles of
                    // row `channel` in each matrix, all inside `v` (16 * c * columns values).
                    let mut dst: Vec<&mut [f32]> = (0..16)
                        .map(|xi| unsafe {
                            std::slice::from_raw_parts_mut(
                                v_ptr.0.add((xi * c + channel) * columns + image * tiles),
                                tiles,
                            )
                        })
                        .collect();
                    vectorized(
                        #[inline(always)]
                        || transform_input(plane, (h, w), tiles_w, rows, &mut dst),
                    )
                },
            );
            // M = U ⊙ V: one product per point of the 4x4 block.
            for xi in 0..16 {
                // U [out_c, c] times V [c, columns] into M [out_c, columns].
                let u = View { data: &self.weights[xi * out_c * c..], rs: c, cs: 1 };
                let vx = View { data: &v[xi * c * columns..], rs: columns, cs: 1 };
                let mx = &mut m[xi * out_c * columns..(xi + 1) * out_c * columns];
                product_overwriting(mx, columns, (out_c, columns, c), u, vx, 1.0, true);
            }
            // Y = Aᵀ M A plus the bias, for every (image, output channel) plane.
            let m = &m;
            out[first * out_c * h * w..(first + images) * out_c * h * w].par_chunks_mut(h * w).enumerate().for_each(
                |(plane_index, plane)| {
                    let (image, channel) = (plane_index / out_c, plane_index % out_c);
                    let read = |xi: usize, tile: usize| m[(xi * out_c + channel) * columns + image * tiles + tile];
                    vectorized(
                        #[inline(always)]
                        || transform_output(plane, (h, w), (tiles_h, tiles_w), bias[channel], read),
                    )
                },
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((b, out_c, h, w))))
    }
}

/// `Bᵀ d B` of each 4x4 input block (rows 2ty-1..2ty+3, columns 2tx-1..2tx+3, zero
/// outside the plane) into `dst[point][tile]`. A row of blocks at a time: first the four
/// input rows combined (whole rows, contiguous), then each block's columns.
#[inline(always)]
fn transform_input(
    plane: &[f32],
    (h, w): (usize, usize),
    tiles_w: usize,
    rows: &mut [Vec<f32>; 4],
    dst: &mut [&mut [f32]],
) {
    let tiles_h = h.div_ceil(2);
    for ty in 0..tiles_h {
        // The four input rows, padded: column 0 is x = -1.
        for (r, row) in rows.iter_mut().enumerate() {
            row.fill(0.0);
            let y = (2 * ty + r) as isize - 1;
            if y >= 0 && (y as usize) < h {
                row[1..1 + w].copy_from_slice(&plane[y as usize * w..(y as usize + 1) * w]);
            }
        }
        // Bᵀ d: Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], in place
        // as rows 0..4 = (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
        let [r0, r1, r2, r3] = rows;
        for (((d0, d1), d2), d3) in r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(r3.iter_mut()) {
            let (a, b, c, d) = (*d0, *d1, *d2, *d3);
            (*d0, *d1, *d2, *d3) = (a - c, b + c, c - b, b - d);
        }
        // (Bᵀ d) B along each row, block by block.
        let first = ty * tiles_w;
        for (k, t) in rows.iter().enumerate() {
            let [v0, v1, v2, v3] = &mut dst[4 * k..4 * k + 4] else { unreachable!() };
            for tx in 0..tiles_w {
                let q = &t[2 * tx..2 * tx + 4];
                v0[first + tx] = q[0] - q[2];
                v1[first + tx] = q[1] + q[2];
                v2[first + tx] = q[2] - q[1];
                v3[first + tx] = q[1] - q[3];
            }
        }
    }
}

/// `Aᵀ M A + bias` of each block, `read(point, tile)` giving M, into the plane.
#[inline(always)]
fn transform_output(
    plane: &mut [f32],
    (h, w): (usize, usize),
    (tiles_h, tiles_w): (usize, usize),
    bias: f32,
    read: impl Fn(usize, usize) -> f32,
) {
    for ty in 0..tiles_h {
        for tx in 0..tiles_w {
            let tile = ty * tiles_w + tx;
            let mut mm = [[0f32; 4]; 4];
            for (r, row) in mm.iter_mut().enumerate() {
                for (s, value) in row.iter_mut().enumerate() {
                    *value = read(r * 4 + s, tile);
                }
            }
            // Aᵀ M: Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
            let mut s2 = [[0f32; 4]; 2];
            for s in 0..4 {
                s2[0][s] = mm[0][s] + mm[1][s] + mm[2][s];
                s2[1][s] = mm[1][s] - mm[2][s] - mm[3][s];
            }
            for (r, row) in s2.iter().enumerate() {
                let y = 2 * ty + r;
                if y >= h {
                    continue;
                }
                let values = [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
                for (s, value) in values.into_iter().enumerate() {
                    let x = 2 * tx + s;
                    if x < w {
                        plane[y * w + x] = value + bias;
                    }
                }
            }
        }
    }
}
