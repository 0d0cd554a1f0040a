//! `exp` and reductions for the CPU kernels, in a form the compiler turns into SIMD code.
//!
//! glibc's `expf` is a call per value, so every loop that used it (softmax, swish,
//! GELU) ran one value at a time: an eighth of a VQGAN decode. [`exp`] is plain
//! arithmetic with no branches or calls, and [`vectorized`] runs a loop compiled for
//! the widest instruction set this CPU has (AVX-512, AVX2, ...), picked at run time,
//! so the same binary still runs on older machines.

/// Runs `f` compiled for the best SIMD level of this CPU. Only code inlined into `f`
/// benefits: mark `f` itself `#[inline(always)]`, keep the loop inside it and the math
/// in `#[inline(always)]` helpers.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The SIMD code this build runs on this CPU: our own loops ([`vectorized`]) and the
/// matrix products (the `gemm` crate behind candle's CPU matmul).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SimdLevels {
    pub kernels: &'static str,
    pub matrix_products: &'static str,
}

/// What [`vectorized`] and the matrix products pick here; AVX-512 only in a build with
/// the `avx512` feature.
pub fn simd_levels() -> SimdLevels {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(feature = "avx512")]
        let (kernels_512, gemm_512) =
            (pulp::x86::V4::try_new().is_some(), std::arch::is_x86_feature_detected!("avx512f"));
        #[cfg(not(feature = "avx512"))]
        let (kernels_512, gemm_512) = (false, false);
        let kernels = match (kernels_512, pulp::x86::V3::try_new().is_some()) {
            (true, _) => "AVX-512",
            (false, true) => "AVX2+FMA",
            (false, false) => "SSE2",
        };
        let matrix_products = match (gemm_512, std::arch::is_x86_feature_detected!("fma")) {
            (true, _) => "AVX-512",
            (false, true) => "AVX2+FMA",
            (false, false) => "SSE2",
        };
        SimdLevels { kernels, matrix_products }
    }
    #[cfg(target_arch = "aarch64")]
    {
        SimdLevels { kernels: "NEON", matrix_products: "NEON" }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        SimdLevels { kernels: "scalar", matrix_products: "scalar" }
    }
}

// The range [`exp`] computes (outside it e^x is 0 or +inf in f32).
const EXP_MAX: f32 = 88.722_83;
const EXP_MIN: f32 = -87.336_55;

/// `e^x` for f32, within 2 ulp of the exact value over the whole range; 0 below
/// ln(smallest normal), +inf above ln(f32::MAX), NaN for NaN.
#[inline(always)]
// `x - x` is 0 for a number and NaN for NaN.
#[allow(clippy::eq_op)]
pub fn exp(x: f32) -> f32 {
    let (e_r, n) = reduced_exp(x.clamp(EXP_MIN, EXP_MAX));
    // 2^n built in the exponent bits; n + 127 stays in 1..=255 after the clamp, and
    // 2^128 (n = 128) is split into two factors so it does not overflow the bits.
    let half = n >> 1;
    let scale_a = f32::from_bits(((half + 127) as u32) << 23);
    let scale_b = f32::from_bits(((n - half + 127) as u32) << 23);
    let y = e_r * scale_a * scale_b;
    if x < EXP_MIN {
        0.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        y + (x - x) // keeps NaN a NaN
    }
}

/// [`exp`] for `x <= 0` (or NaN), as softmax takes it of `score - max`: the same
/// value bit for bit, in about two thirds of the instructions, as nothing can
/// overflow and `2^n` is a single normal factor (`n >= -126` after the clamp).
#[inline(always)]
pub fn exp_of_nonpositive(x: f32) -> f32 {
    // A NaN fails the test and stays a NaN.
    let (e_r, n) = reduced_exp(if x < EXP_MIN { EXP_MIN } else { x });
    let y = e_r * f32::from_bits(((n + 127) as u32) << 23);
    if x < EXP_MIN {
        0.0
    } else {
        y
    }
}

/// `(e^r, n)` with `x = n ln2 + r`, `|r| <= ln2 / 2`, so that `e^x = 2^n e^r`, for `x`
/// in [`EXP_MIN`]..=[`EXP_MAX`].
#[inline(always)]
// Cephes' coefficients as published (the last one rounds to 0.5000001 in f32).
#[allow(clippy::excessive_precision)]
fn reduced_exp(x: f32) -> (f32, i32) {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 * 2^23 rounds to the nearest integer without a call
    // (`round`/`floor` are library calls on baseline x86-64).
    const ROUNDER: f32 = 12_582_912.0;
    let shifted = x * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes' minimax polynomial for e^r on [-ln2/2, ln2/2].
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    // `shifted` is 1.5 * 2^23 + n, where consecutive floats are one apart, so n is the
    // difference of the bit patterns: `n as i32` would be a saturating conversion, which
    // the compiler does one lane at a time (it made exp several times slower).
    (p * r * r + r + 1.0, shifted.to_bits() as i32 - ROUNDER.to_bits() as i32)
}

/// `row = exp(row - max(row))`, in place, returning the sum of the new values (in the
/// lanes and order of [`lane_sum`]): softmax without its division, for callers that
/// divide something smaller instead.
#[inline(always)]
pub fn exp_shifted_in_place(row: &mut [f32]) -> f32 {
    let max = lane_max(row);
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (l, d) in lanes.iter_mut().zip(chunk) {
            *d = exp_of_nonpositive(*d - max);
            *l += *d;
        }
    }
    let mut tail = 0f32;
    for d in chunks.into_remainder() {
        *d = exp_of_nonpositive(*d - max);
        tail += *d;
    }
    lanes.iter().sum::<f32>() + tail
}

/// `x * sigmoid(x)` (taming's `nonlinearity`, PyTorch's SiLU).
#[inline(always)]
pub fn swish(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// tanh through one [`exp`]; absolute error near 1e-7, which GELU's `1 + tanh` needs.
#[inline(always)]
pub fn tanh(u: f32) -> f32 {
    let e = exp(2.0 * u.clamp(-10.0, 10.0));
    (e - 1.0) / (e + 1.0)
}

// Reductions in 16 independent lanes, which the compiler vectorises.

/// A sum in 16 lanes (a plain `.sum()` is one serial chain the compiler must keep in order).
#[inline(always)]
pub fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest value, in 16 lanes (NaNs are skipped as `f32::max` skips them).
#[inline(always)]
pub fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = if v > *l { v } else { *l };
        }
    }
    lanes.iter().fold(tail, |a, &b| a.max(b))
}

/// `Σ a·b` in 16 lanes, as [`lane_sum`].
#[inline(always)]
pub fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for (l, (&a, &b)) in lanes.iter_mut().zip(a.iter().zip(b)) {
            *l += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ f(v)` with 16 f32 lanes (which the compiler vectorises), folded in f64: as
/// accurate as an f64 sum for groups of up to a few hundred thousand values.
#[inline(always)]
pub fn lane_sum_f64(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let body = values.len() - values.len() % 16;
    let mut total: f64 = values[body..].iter().map(|&v| f(v) as f64).sum();
    // 1024 values per lane at most before folding, so each f32 partial sum stays short.
    for block in values[..body].chunks(16 * 1024) {
        let mut lanes = [0f32; 16];
        for chunk in block.chunks_exact(16) {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += f(v);
            }
        }
        total += lanes.iter().map(|&l| l as f64).sum::<f64>();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0;
        let mut x = -87.3f32;
        while x < 88.7 {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), exact));
            x += 0.000_73;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_handles_the_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        for x in [88.7f32, -87.3] {
            assert!(ulps(exp(x), (x as f64).exp() as f32) <= 2, "exp({x})");
        }
    }

    /// `f` of each of `xs` in a loop compiled by [`vectorized`].
    fn vectorized_map(xs: &[f32], f: impl Fn(f32) -> f32) -> Vec<f32> {
        let mut ys = xs.to_vec();
        vectorized(
            #[inline(always)]
            || ys.iter_mut().for_each(|y| *y = f(*y)),
        );
        ys
    }

    #[test]
    fn the_vectorized_loop_gives_the_scalar_values() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let ys = vectorized_map(&xs, exp);
        for (x, y) in xs.iter().zip(&ys) {
            assert_eq!(exp(*x).to_bits(), y.to_bits(), "exp({x})");
        }
    }

    #[test]
    fn exp_of_nonpositive_is_exp_bit_for_bit() {
        let mut xs: Vec<f32> = (0..=200_000).map(|i| -100.0 + i as f32 * 0.0005).collect();
        xs.extend([0.0, -0.0, -87.336_55, -87.336_56, f32::MIN, f32::NEG_INFINITY, -1e-30]);
        let ys = vectorized_map(&xs, exp_of_nonpositive);
        for (x, y) in xs.iter().zip(&ys) {
            assert_eq!(exp(*x).to_bits(), y.to_bits(), "exp({x})");
            assert_eq!(exp_of_nonpositive(*x).to_bits(), y.to_bits(), "exp({x}) scalar");
        }
        assert!(exp_of_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn exp_shifted_in_place_returns_the_sum_of_what_it_wrote() {
        for len in [1, 15, 16, 17, 1000] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37) % 101) as f32 * 0.3 - 12.0).collect();
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut shifted = row.clone();
            let sum = exp_shifted_in_place(&mut shifted);
            let expected: Vec<f32> = row.iter().map(|&v| exp(v - max)).collect();
            assert_eq!(shifted, expected, "len {len}");
            assert_eq!(sum.to_bits(), lane_sum(&expected).to_bits(), "len {len}");
        }
    }

    #[test]
    fn swish_and_tanh_match_the_library_functions() {
        for i in -400..400 {
            let x = i as f32 * 0.05;
            assert!((swish(x) - x / (1.0 + (-x).exp())).abs() <= 1e-6 * x.abs().max(1.0), "swish({x})");
            assert!((tanh(x) - x.tanh()).abs() <= 2e-7, "tanh({x})");
        }
    }
}
