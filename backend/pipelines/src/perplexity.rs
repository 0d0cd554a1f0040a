//! Perplexities as rudolph's pipelines compute them.

use candle_core::{DType, Result, Tensor, D};

/// `ce_to_ppl`: each non-zero per-token cross-entropy becomes its perplexity `exp(ce)`,
/// averaged over the non-zero entries of the row (ignored positions have ce = 0).
/// A mean of per-token perplexities, not exp of the mean; a row with no entries gives NaN.
pub fn ce_to_ppl(ce: &[Vec<f32>]) -> Vec<f32> {
    ce.iter()
        .map(|row| {
            let (sum, count) =
                row.iter().filter(|&&v| v != 0.0).fold((0f32, 0usize), |(s, c), &v| (s + v.exp(), c + 1));
            sum / count as f32
        })
        .collect()
}

/// Per-token cross-entropy of `logits` `[b, n, c]` against `labels` `[b, n]`, with
/// entries whose label is `ignore` set to 0 (torch's `reduction='none'` with `ignore_index`).
pub fn token_ce(logits: &Tensor, labels: &Tensor, ignore: Option<u32>) -> Result<Vec<Vec<f32>>> {
    let ce = token_cross_entropy(&logits.to_dtype(candle_core::DType::F32)?, labels)?;
    let ce = match ignore {
        Some(id) => (ce * labels.ne(id)?.to_dtype(candle_core::DType::F32)?)?,
        None => ce,
    };
    ce.to_device(&candle_core::Device::Cpu)?.to_vec2()
}

/// Per-token cross-entropy `[b, n]` (labels of any value in range; no ignoring).
pub fn token_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs.gather(&labels.to_dtype(DType::U32)?.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?;
    picked.squeeze(D::Minus1)?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_per_token_perplexities_over_non_zero_entries() {
        let ppl = ce_to_ppl(&[vec![0.5, 0.0, 1.5, 0.0], vec![2.0, 0.25, 0.0, 0.0]]);
        assert!((ppl[0] - (0.5f32.exp() + 1.5f32.exp()) / 2.0).abs() < 1e-6);
        assert!((ppl[1] - (2.0f32.exp() + 0.25f32.exp()) / 2.0).abs() < 1e-6);
    }
}
