//! What the kernels' tests share.

use candle_core::{DType, Tensor};

/// The largest absolute difference of two tensors of one shape, infinite where either
/// holds a NaN: `max` skips NaNs, and a value a kernel never wrote reads as NaN in
/// test builds (see `fused::written_once`).
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diffs = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().to_dtype(DType::F32).unwrap();
    diffs
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .fold(0.0, |most, d| if d.is_nan() { f32::INFINITY } else { most.max(d) })
}
