//! Token sampling as the reference does it: divide by the temperature, keep the
//! top-k, then the nucleus (transformers 4.x `top_k_top_p_filtering`), softmax,
//! draw one id. Runs on the host over one row of logits per sequence.

use rand::Rng;

/// The seed a request draws with unless it names one (the same photo, the same answer).
pub const DEFAULT_SEED: u64 = 42;

/// How candidates are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Keep the `top_k` most likely ids (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of ids whose probability reaches `top_p` (1.0 = no limit).
    pub top_p: f32,
    pub temperature: f32,
}

impl SamplingParams {
    /// The article's settings for captions.
    pub const ARTICLE: SamplingParams = SamplingParams { top_k: 16, top_p: 0.6, temperature: 0.8 };
    /// Text-to-image, as the reference's `generate_codebooks` examples draw.
    pub const IMAGE: SamplingParams = SamplingParams { top_k: 512, top_p: 0.99, temperature: 1.0 };
    /// Continuing a text (`generate_texts`).
    pub const TEXT: SamplingParams = SamplingParams { top_k: 32, top_p: 0.8, temperature: 1.0 };
    /// Always the most likely id.
    pub const GREEDY: SamplingParams = SamplingParams { top_k: 1, top_p: 1.0, temperature: 1.0 };

    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be positive, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// Sets every logit outside the top-k and then outside the nucleus to -inf, exactly as
/// transformers 4.x `top_k_top_p_filtering(logits, top_k, top_p)` (min_tokens_to_keep 1).
pub fn filter_top_k_top_p(logits: &mut [f32], top_k: usize, top_p: f32) {
    let n = logits.len();
    if n == 0 {
        return;
    }
    if top_k > 0 {
        let k = top_k.min(n);
        let mut sorted: Vec<f32> = logits.to_vec();
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let kth = sorted[k - 1];
        // Ties with the k-th value survive, as with torch's `logits < kth`.
        for l in logits.iter_mut() {
            if *l < kth {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if top_p < 1.0 {
        // Ids already at -inf weigh nothing and stay removed, so only the others are
        // ordered: after a top-k that is a few dozen ids, not the whole vocabulary (the
        // full sort of 16k logits per row was most of a 350M decoding step on a GPU).
        let mut order: Vec<usize> = (0..n).filter(|&i| logits[i] != f32::NEG_INFINITY).collect();
        if order.is_empty() {
            return;
        }
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let max = logits[order[0]];
        let exps: Vec<f64> = order.iter().map(|&i| ((logits[i] - max) as f64).exp()).collect();
        let total: f64 = exps.iter().sum();
        let mut cumulative = 0.0;
        let mut remove = vec![false; order.len()];
        for (rank, &e) in exps.iter().enumerate() {
            cumulative += e / total;
            // Shifted right by one: the token that crosses top_p is kept, and always the first.
            if rank + 1 < order.len() {
                remove[rank + 1] = cumulative > top_p as f64;
            }
        }
        for (rank, &i) in order.iter().enumerate() {
            if remove[rank] {
                logits[i] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Draws one id from `logits` (one row) with `params`.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut impl Rng) -> u32 {
    let mut scaled: Vec<f32> = logits.iter().map(|l| l / params.temperature).collect();
    filter_top_k_top_p(&mut scaled, params.top_k, params.top_p);
    // The ids the filter kept, in id order (the others weigh exactly 0).
    let kept: Vec<usize> = (0..scaled.len()).filter(|&i| scaled[i] != f32::NEG_INFINITY).collect();
    let max = kept.iter().map(|&i| scaled[i]).fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = kept.iter().map(|&i| ((scaled[i] - max) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut target = rng.random::<f64>() * total;
    for (&i, w) in kept.iter().zip(&weights) {
        if *w > 0.0 {
            if target < *w {
                return i as u32;
            }
            target -= w;
        }
    }
    // Rounding left a sliver: the last id with weight.
    weights.iter().rposition(|w| *w > 0.0).map_or(0, |k| kept[k]) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn top_k_keeps_ties_and_top_p_keeps_the_crossing_token() {
        let mut l = vec![1.0, 3.0, 3.0, 2.0, 0.0];
        filter_top_k_top_p(&mut l, 2, 1.0);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 2);
        let mut l = vec![1.0, 3.0, 2.0, 2.0, 0.0];
        filter_top_k_top_p(&mut l, 2, 1.0);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 3, "ties with the k-th survive");
        // Probabilities ~ [0.64, 0.24, 0.09, ...]: p = 0.5 keeps only the first.
        let mut l = vec![3.0, 2.0, 1.0, 0.0];
        filter_top_k_top_p(&mut l, 0, 0.5);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 1);
        let mut l = vec![3.0, 2.0, 1.0, 0.0];
        filter_top_k_top_p(&mut l, 0, 0.7);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 2);
    }

    /// transformers' filter as written: the whole row sorted, every id weighed.
    fn filter_whole_row(logits: &mut [f32], top_k: usize, top_p: f32) {
        let n = logits.len();
        if top_k > 0 {
            let mut sorted = logits.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[top_k.min(n) - 1];
            logits.iter_mut().filter(|l| **l < kth).for_each(|l| *l = f32::NEG_INFINITY);
        }
        if top_p < 1.0 {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let max = logits[order[0]];
            let exps: Vec<f64> = order.iter().map(|&i| ((logits[i] - max) as f64).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut cumulative = 0.0;
            let mut remove = vec![false; n];
            for rank in 0..n - 1 {
                cumulative += exps[rank] / total;
                remove[rank + 1] = cumulative > top_p as f64;
            }
            order.iter().zip(remove).filter(|(_, r)| *r).for_each(|(&i, _)| logits[i] = f32::NEG_INFINITY);
        }
    }

    fn sample_whole_row(logits: &[f32], params: &SamplingParams, rng: &mut impl Rng) -> u32 {
        let mut scaled: Vec<f32> = logits.iter().map(|l| l / params.temperature).collect();
        filter_whole_row(&mut scaled, params.top_k, params.top_p);
        let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = scaled.iter().map(|&l| ((l - max) as f64).exp()).collect();
        let mut target = rng.random::<f64>() * weights.iter().sum::<f64>();
        for (i, w) in weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
            if target < *w {
                return i as u32;
            }
            target -= w;
        }
        weights.iter().rposition(|w| *w > 0.0).unwrap_or(0) as u32
    }

    #[test]
    fn filtering_only_the_surviving_ids_changes_no_draw() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..200 {
            let n = [5, 64, 1000][round % 3];
            // Coarse values, so that ties (at the k-th value and in the nucleus) occur.
            let logits: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 40.0).round() / 4.0).collect();
            let params = SamplingParams {
                top_k: [0, 1, 16, 512][round % 4],
                top_p: [1.0, 0.99, 0.6, 0.1][(round / 4) % 4],
                temperature: [1.0, 0.8][round % 2],
            };
            let (mut ours, mut whole) = (logits.clone(), logits.clone());
            filter_top_k_top_p(&mut ours, params.top_k, params.top_p);
            filter_whole_row(&mut whole, params.top_k, params.top_p);
            assert_eq!(ours, whole, "{params:?}");
            let seed = rng.random::<u64>();
            let (mut a, mut b) = (rand::rngs::StdRng::seed_from_u64(seed), rand::rngs::StdRng::seed_from_u64(seed));
            for _ in 0..20 {
                assert_eq!(sample(&logits, &params, &mut a), sample_whole_row(&logits, &params, &mut b), "{params:?}");
            }
        }
    }

    #[test]
    fn sampling_respects_the_filter_and_the_seed() {
        let logits = vec![0.0, 5.0, 4.9, -2.0, 1.0];
        let params = SamplingParams { top_k: 2, top_p: 1.0, temperature: 1.0 };
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..200).map(|_| sample(&logits, &params, &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert!(a.iter().all(|&id| id == 1 || id == 2));
        assert!(a.contains(&1) && a.contains(&2));
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
    }
}
