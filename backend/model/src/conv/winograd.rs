//! 3x3 convolutions (stride 1, padding 1) for inference as Winograd F(2x2, 3x3): each 2x2
//! block of outputs comes from a 4x4 block of inputs through 16 products instead of 36.
//! The 16 products of all blocks are 16 matrix products, `[out, in] x [in, blocks]`, so
//! a convolution does 4/9 of the multiply-adds of im2col. Transforming the input and
//! the output costs a few additions per value, so it pays where there are enough
//! channels and blocks; see [`worth_it`].
//!
//! The transforms are Lavin and Gray's ("Fast Algorithms for Convolutional Neural
//! Networks", 2015): `U = G g Gᵀ` for each 3x3 kernel, `V = Bᵀ d B` for each 4x4 input
//! block, `Y = Aᵀ (U ⊙ V) A`. Their coefficients are 0, ±1 and ±1/2, so the results
//! differ from a direct convolution by rounding only. Larger blocks (F(4x4, 3x3), F(3x3,
//! 3x3)) would save more products, but in f32 they round 6 to 20 times worse than the
//! direct convolution where this one rounds about twice as badly (128 channels, against
//! f64).
//!
//! The transformed inputs and products are four times the picture's size. Each task
//! therefore takes a row or a few of blocks of one image ([`TASK_BLOCKS`]) through all
//! three steps on one thread, so that they are read back from its core's own cache
//! (1 MB with 128 channels); done a step at a time over the whole picture, on all
//! threads, they went to the shared cache and back, and the 350M decode took a tenth
//! longer.

use super::SharedPtr;
use crate::fused::{contiguous_f32, product_overwriting, written_once, View};
use crate::vector_math::vectorized;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

/// Blocks a task takes (whole rows of blocks of one image, so at least one row; fewer
/// rows where the cores would otherwise wait): its products are `[out, in] x [in,
/// blocks]`. With 64 the 350M VQGAN decoded as fast as with 128 and encoded faster
/// than with 32 or 128 (2-core AMD EPYC, 2026-12-06).
const TASK_BLOCKS: usize = 64;

/// Whether Winograd beats the im2col path for this convolution: the matrix products
/// must outweigh the transforms. Measured on the two VQGAN presets (2-core AMD EPYC):
/// with the Sber VQGAN's 128 to 512 channels a decode or encode took about a fifth less
/// time (2026-12-05); since each task keeps its blocks in its core's cache, the tiny
/// preset's 32 to 128 channels gain too, 5-9 % (2026-12-06). On 8x8 pictures (16
/// blocks) it made no difference measurable on that machine, so they keep im2col.
pub(super) fn worth_it(in_c: usize, out_c: usize, (h, w): (usize, usize)) -> bool {
    in_c >= 32 && out_c >= 32 && h * w >= 256
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
        // Each task takes some rows of blocks of one image through all three steps, so
        // that its transformed inputs and products stay in the core's cache; fewer rows
        // where the picture is small and the cores many, so that every core has work.
        let enough_tasks = (b * tiles_h / (2 * rayon::current_num_threads())).max(1);
        let rows_per_task = TASK_BLOCKS.div_ceil(tiles_w).clamp(1, enough_tasks);
        let tasks: Vec<(usize, Range<usize>)> = (0..b)
            .flat_map(|image| {
                (0..tiles_h)
                    .step_by(rows_per_task)
                    .map(move |first| (image, first..(first + rows_per_task).min(tiles_h)))
            })
            .collect();
        let most_blocks = rows_per_task * tiles_w;
        let write = |out: &mut [MaybeUninit<f32>]| {
            let out_ptr = SharedPtr(out.as_mut_ptr().cast::<f32>());
            tasks.into_par_iter().for_each_init(
                || (InputRows::new(tiles_w), vec![0f32; 16 * c * most_blocks], vec![0f32; 16 * out_c * most_blocks]),
                |(rows, v, m), (image, block_rows)| {
                    let blocks = block_rows.len() * tiles_w;
                    // V = Bᵀ d B of each channel's blocks, into row `channel` of each of the 16
                    // matrices `[c, blocks]`.
                    let v = &mut v[..16 * c * blocks];
                    vectorized(
                        #[inline(always)]
                        || {
                            for channel in 0..c {
                                let plane = &x[(image * c + channel) * h * w..][..h * w];
                                let mut dst: Vec<&mut [f32]> = v.chunks_mut(blocks).skip(channel).step_by(c).collect();
                                transform_input(plane, (h, w), tiles_w, block_rows.clone(), rows, &mut dst);
                            }
                        },
                    );
                    // M = U ⊙ V: one product per point of the 4x4 block, U [out_c, c] times
                    // V [c, blocks] into M [out_c, blocks].
                    let m = &mut m[..16 * out_c * blocks];
                    for (xi, mx) in m.chunks_mut(out_c * blocks).enumerate() {
                        let u = View { data: &self.weights[xi * out_c * c..], rs: c, cs: 1 };
                        let vx = View { data: &v[xi * c * blocks..], rs: blocks, cs: 1 };
                        product_overwriting(mx, blocks, (out_c, blocks, c), u, vx, 1.0, false);
                    }
                    // Y = Aᵀ M A plus the bias, into each output plane's rows of these blocks.
                    #[allow(clippy::redundant_locals)]
                    let out_ptr = out_ptr;
                    let first_value = 2 * block_rows.start * w;
                    let values = (2 * block_rows.end * w).min(h * w) - first_value;
                    vectorized(
                        #[inline(always)]
                        || {
                            for (channel, &bias) in bias.iter().enumerate() {
                                let mut points: [&[f32]; 16] = [&[]; 16];
                                for (xi, point) in points.iter_mut().enumerate() {
                                    *point = &m[(xi * out_c + channel) * blocks..][..blocks];
                                }
                                // SAFETY: this task alone writes these rows of the plane.
                                let plane_rows = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        out_ptr.0.add((image * out_c + channel) * h * w + first_value).cast(),
                                        values,
                                    )
                                };
                                transform_output(plane_rows, w, tiles_w, bias, &points);
                            }
                        },
                    );
                },
            )
        };
        // SAFETY: the tasks cover every image's rows of blocks, and each writes every
        // value of those rows in every output channel.
        let out = unsafe { written_once(b * out_c * h * w, write) };
        Ok((CpuStorage::F32(out), Shape::from((b, out_c, h, w))))
    }
}

/// Scratch rows of [`transform_input`]: the four input rows of a row of blocks, each
/// split into its even and odd columns of the zero-padded row.
struct InputRows {
    even: [Vec<f32>; 4],
    odd: [Vec<f32>; 4],
}

impl InputRows {
    fn new(tiles_w: usize) -> Self {
        InputRows { even: [(); 4].map(|_| vec![0f32; tiles_w + 1]), odd: [(); 4].map(|_| vec![0f32; tiles_w + 1]) }
    }
}

/// `Bᵀ d B` of each 4x4 input block of rows `block_rows` of blocks (rows 2ty-1..2ty+3,
/// columns 2tx-1..2tx+3, zero outside the plane) into `dst[point][block]`, blocks
/// numbered from the first row's first. A row of blocks at a time: first the four
/// input rows combined, then each block's columns. The padded row `p` (`p[k]` = column
/// k - 1) is kept as its even and odd entries, so that every loop runs over contiguous
/// values, several blocks to a SIMD instruction.
#[inline(always)]
fn transform_input(
    plane: &[f32],
    (h, w): (usize, usize),
    tiles_w: usize,
    block_rows: Range<usize>,
    rows: &mut InputRows,
    dst: &mut [&mut [f32]],
) {
    for (index, ty) in block_rows.enumerate() {
        // even[j] = p[2j] = column 2j - 1, odd[j] = p[2j + 1] = column 2j.
        for (r, (even, odd)) in rows.even.iter_mut().zip(rows.odd.iter_mut()).enumerate() {
            let y = (2 * ty + r) as isize - 1;
            if y < 0 || y as usize >= h {
                even.fill(0.0);
                odd.fill(0.0);
                continue;
            }
            let row = &plane[y as usize * w..(y as usize + 1) * w];
            let pairs = w / 2;
            // The padding (column -1 and those past the row's end); the rest is the row.
            even[0] = 0.0;
            even[pairs + 1..].fill(0.0);
            odd[pairs..].fill(0.0);
            for ((pair, e), o) in row.chunks_exact(2).zip(&mut even[1..=pairs]).zip(&mut odd[..pairs]) {
                (*o, *e) = (pair[0], pair[1]);
            }
            if w % 2 == 1 {
                odd[pairs] = row[w - 1];
            }
        }
        // Bᵀ d: Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], in place
        // as rows 0..4 = (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
        for half in [&mut rows.even, &mut rows.odd] {
            let [r0, r1, r2, r3] = half;
            for (((d0, d1), d2), d3) in r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(r3.iter_mut()) {
                let (a, b, c, d) = (*d0, *d1, *d2, *d3);
                (*d0, *d1, *d2, *d3) = (a - c, b + c, c - b, b - d);
            }
        }
        // (Bᵀ d) B along each row: block tx reads p[2tx..2tx + 4] = even[tx], odd[tx],
        // even[tx + 1], odd[tx + 1].
        let blocks = index * tiles_w..(index + 1) * tiles_w;
        for (k, (even, odd)) in rows.even.iter().zip(&rows.odd).enumerate() {
            let [v0, v1, v2, v3] = &mut dst[4 * k..4 * k + 4] else { unreachable!() };
            // Every slice exactly tiles_w long, so the loop runs without bounds checks.
            let n = tiles_w;
            let (v0, v1, v2, v3) = (
                &mut v0[blocks.clone()][..n],
                &mut v1[blocks.clone()][..n],
                &mut v2[blocks.clone()][..n],
                &mut v3[blocks.clone()][..n],
            );
            let (e0, e1, o0, o1) = (&even[..n], &even[1..n + 1], &odd[..n], &odd[1..n + 1]);
            for tx in 0..n {
                v0[tx] = e0[tx] - e1[tx];
                v1[tx] = o0[tx] + e1[tx];
                v2[tx] = e1[tx] - o0[tx];
                v3[tx] = o0[tx] - o1[tx];
            }
        }
    }
}

/// Blocks of a row that [`output_blocks`] transforms at once.
const LANES: usize = 16;

/// `Aᵀ M A + bias` of each block into `plane_rows`, the output rows of some rows of
/// blocks; `points[point]` holds M's values for those blocks. A row of blocks at a time,
/// [`LANES`] blocks at once.
#[inline(always)]
fn transform_output(plane_rows: &mut [MaybeUninit<f32>], w: usize, tiles_w: usize, bias: f32, points: &[&[f32]; 16]) {
    for (ty, rows) in plane_rows.chunks_mut(2 * w).enumerate() {
        let mut row_points: [&[f32]; 16] = [&[]; 16];
        for (row, point) in row_points.iter_mut().zip(points) {
            *row = &point[ty * tiles_w..(ty + 1) * tiles_w];
        }
        let whole_lanes = tiles_w - tiles_w % LANES;
        for tx in (0..whole_lanes).step_by(LANES) {
            write_blocks(rows, w, tx, &output_blocks::<LANES>(&row_points, tx, bias));
        }
        for tx in whole_lanes..tiles_w {
            write_blocks(rows, w, tx, &output_blocks::<1>(&row_points, tx, bias));
        }
    }
}

/// The 2x2 outputs `[y0x0, y0x1, y1x0, y1x1]` of blocks `tx..tx + L` of a row.
#[inline(always)]
fn output_blocks<const L: usize>(points: &[&[f32]; 16], tx: usize, bias: f32) -> [[f32; L]; 4] {
    // Plain loops, not `std::array::from_fn`: that is not inlined here, so it would run
    // as a call per block, compiled for baseline x86-64 (a twentieth of a decode).
    let mut m = [[0f32; L]; 16];
    for (values, point) in m.iter_mut().zip(points) {
        values.copy_from_slice(&point[tx..tx + L]);
    }
    let mut out = [[0f32; L]; 4];
    for l in 0..L {
        // Aᵀ M: Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]; then (Aᵀ M) A.
        let (mut top, mut bottom) = ([0f32; 4], [0f32; 4]);
        for s in 0..4 {
            top[s] = m[s][l] + m[4 + s][l] + m[8 + s][l];
            bottom[s] = m[4 + s][l] - m[8 + s][l] - m[12 + s][l];
        }
        out[0][l] = top[0] + top[1] + top[2] + bias;
        out[1][l] = top[1] - top[2] - top[3] + bias;
        out[2][l] = bottom[0] + bottom[1] + bottom[2] + bias;
        out[3][l] = bottom[1] - bottom[2] - bottom[3] + bias;
    }
    out
}

/// Blocks `tx..tx + L` into `rows`, the one or two output rows of their row of blocks
/// (an odd side's last block writes only what lies inside the plane).
#[inline(always)]
fn write_blocks<const L: usize>(rows: &mut [MaybeUninit<f32>], w: usize, tx: usize, out: &[[f32; L]; 4]) {
    for (r, row) in rows.chunks_mut(w).enumerate() {
        let (left, right) = (&out[2 * r], &out[2 * r + 1]);
        let cut = (2 * (tx + L)).min(w);
        let dst = &mut row[2 * tx..cut];
        if dst.len() == 2 * L {
            for (pair, (a, b)) in dst.chunks_exact_mut(2).zip(left.iter().zip(right)) {
                pair[0].write(*a);
                pair[1].write(*b);
            }
        } else {
            for (x, value) in dst.iter_mut().enumerate() {
                value.write(if x % 2 == 0 { left[x / 2] } else { right[x / 2] });
            }
        }
    }
}
