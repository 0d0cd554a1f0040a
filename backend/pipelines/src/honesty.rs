//! Answers that say when they are unsure.
//!
//! The raw answer is the dish most captions named, weighed by how well each caption
//! explains the photo. Its share of that evidence says how much the samples agreed, not
//! how likely the answer is: a model trained on food names *some* dish for a photo of an
//! astronaut, and its samples may well agree on it. What tells the cases apart is what
//! RUDOLPH itself measures ([`Evidence`]): how well the photo's image codes fit its best
//! caption (image perplexity; a picture unlike anything the model learnt fits no caption
//! well), and how much the captions agreed.
//!
//! A [`Calibration`] (`calibration.json` beside the model, written by `borscht evaluate
//! --calibrate` from held-out food pictures and non-food photos) turns these into a
//! probability that the answer is right and a verdict: the dish, "not sure", or "not
//! food". Without one, answers keep the raw share and name a dish whenever a caption did.

use anyhow::{Context, Result};
use borscht_protocol::Verdict;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Of the right answers a calibration may drop, the share "not food" may take (the rest
/// is "not sure"'s). Chosen among 1/2, 3/4 and 1 on the demo model (models/demo/README.md).
const NOT_FOOD_SHARE: f64 = 0.75;

/// The file a model directory keeps its calibration in.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// What RUDOLPH measured about its own answer to a photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The best dish's share of the evidence (the raw confidence, 0..1).
    pub share: f32,
    /// ln of the image perplexity under the best dish's best caption: how well the photo's
    /// codes fit what the model expects of that dish (higher fits worse).
    pub log_ppl_image: f32,
    /// ln of that caption's own perplexity after the photo: how sure the model is of the
    /// caption, seeing the photo alone.
    #[serde(default)]
    pub log_ppl_caption: f32,
    /// ln of the photo's image perplexity with no text: how typical its codes are,
    /// whatever the dish.
    #[serde(default)]
    pub log_ppl_image_plain: f32,
    /// Share of the photo's image codes that differ from each other: near 0 for a picture
    /// with nothing in it (one flat colour is one code repeated).
    #[serde(default)]
    pub distinct_codes: f32,
}

impl Evidence {
    /// What the probability is fitted on: a constant, the share, the fit, the content.
    fn features(&self) -> [f64; FEATURES] {
        [1.0, self.share as f64, self.log_ppl_image as f64, self.distinct_codes as f64]
    }
}

const FEATURES: usize = 4;

/// The verdict on an answer, with the probability that its dish is right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    pub verdict: Verdict,
    /// P(the dish is right), calibrated; the raw share without a calibration.
    pub confidence: f32,
    pub calibrated: bool,
}

/// How a model's evidence maps to probabilities and verdicts (`calibration.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// P(right) = 1 / (1 + exp(-(w0 + w1 share + w2 ln image perplexity + w3 distinct codes))).
    pub weights: [f64; FEATURES],
    /// Above this ln image perplexity the photo fits none of the model's dishes: "not food".
    pub not_food_above: f32,
    /// Below this share of distinct image codes the picture has nothing in it (one flat
    /// colour, say): "not food".
    pub not_food_distinct_below: f32,
    /// Below this probability the answer is "not sure".
    pub not_sure_below: f32,
    /// "Which dish?" answers "none of these" when even the best dish's caption-fit ln
    /// perplexity is above this (never without one).
    pub none_of_these_above: Option<f32>,
    /// What it was fitted on, and how well it did there.
    pub fitted_on: FitSummary,
}

/// The calibration set behind a [`Calibration`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitSummary {
    /// Food pictures, and how many of them the model answered right.
    pub food: usize,
    pub food_right: usize,
    /// Non-food pictures (photos and noise), and the share of them answered "not food"
    /// or "not sure".
    pub not_food: usize,
    pub not_food_flagged: f64,
    /// Expected calibration error of the fitted probabilities on the food pictures.
    pub ece: f64,
}

impl Calibration {
    /// The calibration in `dir`, if the model has one.
    pub fn load(dir: &Path) -> Result<Option<Calibration>> {
        let path = dir.join(CALIBRATION_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let calibration =
            serde_json::from_str(&text).with_context(|| format!("{} is not a calibration", path.display()))?;
        Ok(Some(calibration))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CALIBRATION_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// P(right) for this evidence.
    pub fn probability(&self, evidence: &Evidence) -> f32 {
        let z: f64 = self.weights.iter().zip(evidence.features()).map(|(w, x)| w * x).sum();
        (1.0 / (1.0 + (-z).exp())) as f32
    }

    pub fn assess(&self, evidence: &Evidence) -> Assessment {
        let confidence = self.probability(evidence);
        let verdict =
            if evidence.log_ppl_image > self.not_food_above || evidence.distinct_codes < self.not_food_distinct_below {
                Verdict::NotFood
            } else if confidence < self.not_sure_below {
                Verdict::NotSure
            } else {
                Verdict::Dish
            };
        Assessment { verdict, confidence, calibrated: true }
    }

    /// Fits the probability to the food pictures (evidence, whether the answer was right),
    /// and sets the thresholds so that `keep_right` of the right food answers stay
    /// answered: three quarters of the rest may fall to "not food" (the image perplexity's
    /// upper tail), the last quarter to "not sure". The probability is fitted on food
    /// alone: with the non-food pictures (never right) in the fit, it came out
    /// underconfident on food by 0.1 to 0.15 (expected calibration error); what tells the
    /// non-food apart is the "not food" rule, which `not_food` must show to work.
    pub fn fit(food: &[(Evidence, bool)], not_food: &[Evidence], keep_right: f64) -> Result<Calibration> {
        anyhow::ensure!(
            food.iter().any(|(_, right)| *right),
            "no food picture was answered right: nothing to calibrate"
        );
        anyhow::ensure!(!not_food.is_empty(), "calibration needs non-food pictures too");
        let examples: Vec<([f64; FEATURES], f64)> =
            food.iter().map(|(e, right)| (e.features(), if *right { 1.0 } else { 0.0 })).collect();
        let weights = logistic_regression(&examples, 1e-3);
        let right: Vec<&Evidence> = food.iter().filter(|(_, r)| *r).map(|(e, _)| e).collect();
        let quantile = |mut values: Vec<f32>, q: f64| {
            values.sort_by(f32::total_cmp);
            let at = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
            values[at]
        };
        let not_food_above =
            quantile(right.iter().map(|e| e.log_ppl_image).collect(), 1.0 - (1.0 - keep_right) * NOT_FOOD_SHARE);
        // Pictures with less than 60 % of the variety of the plainest right answer.
        let not_food_distinct_below = 0.6 * right.iter().map(|e| e.distinct_codes).fold(f32::INFINITY, f32::min);
        let mut calibration = Calibration {
            weights,
            not_food_above,
            not_food_distinct_below,
            not_sure_below: 0.0,
            none_of_these_above: None,
            fitted_on: FitSummary {
                food: food.len(),
                food_right: right.len(),
                not_food: not_food.len(),
                not_food_flagged: 0.0,
                ece: 0.0,
            },
        };
        // "Not sure": the largest probability that still keeps keep_right of all the right
        // answers, those "not food" took counted.
        let kept: Vec<f32> = right
            .iter()
            .filter(|e| e.log_ppl_image <= not_food_above && e.distinct_codes >= not_food_distinct_below)
            .map(|e| calibration.probability(e))
            .collect();
        let may_drop = right.len().saturating_sub((right.len() as f64 * keep_right).ceil() as usize);
        let left_to_drop = may_drop.saturating_sub(right.len() - kept.len());
        if left_to_drop > 0 && !kept.is_empty() {
            let mut kept = kept;
            kept.sort_by(f32::total_cmp);
            calibration.not_sure_below = kept[left_to_drop.min(kept.len() - 1)];
        }
        let predictions: Vec<(f32, bool)> = food.iter().map(|(e, r)| (calibration.probability(e), *r)).collect();
        calibration.fitted_on.ece = expected_calibration_error(&predictions, 10);
        let flagged = not_food.iter().filter(|e| calibration.assess(e).verdict != Verdict::Dish).count();
        calibration.fitted_on.not_food_flagged = flagged as f64 / not_food.len() as f64;
        Ok(calibration)
    }
}

/// The verdict without a calibration: the dish when a caption named one, its raw share
/// as the confidence.
pub fn uncalibrated(share: Option<f32>) -> Assessment {
    match share {
        Some(share) => Assessment { verdict: Verdict::Dish, confidence: share, calibrated: false },
        None => Assessment { verdict: Verdict::NotSure, confidence: 0.0, calibrated: false },
    }
}

/// Logistic regression by Newton's method with an L2 penalty `lambda` (the bias
/// unpenalised). Features are standardised for the solve and the weights mapped back.
fn logistic_regression(examples: &[([f64; FEATURES], f64)], lambda: f64) -> [f64; FEATURES] {
    let n = examples.len() as f64;
    let mut mean = [0.0; FEATURES];
    let mut sd = [1.0; FEATURES];
    for k in 1..FEATURES {
        mean[k] = examples.iter().map(|(x, _)| x[k]).sum::<f64>() / n;
        sd[k] = (examples.iter().map(|(x, _)| (x[k] - mean[k]).powi(2)).sum::<f64>() / n).sqrt().max(1e-9);
    }
    let scaled: Vec<([f64; FEATURES], f64)> = examples
        .iter()
        .map(|(x, y)| (std::array::from_fn(|k| if k == 0 { 1.0 } else { (x[k] - mean[k]) / sd[k] }), *y))
        .collect();
    let mut w = [0.0f64; FEATURES];
    for _ in 0..100 {
        let mut gradient = [0.0f64; FEATURES];
        let mut hessian = [[0.0f64; FEATURES]; FEATURES];
        for (x, y) in &scaled {
            let z: f64 = w.iter().zip(x).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            for i in 0..FEATURES {
                gradient[i] += (p - y) * x[i];
                for j in 0..FEATURES {
                    hessian[i][j] += p * (1.0 - p) * x[i] * x[j];
                }
            }
        }
        for i in 1..FEATURES {
            gradient[i] += lambda * n * w[i];
            hessian[i][i] += lambda * n;
        }
        let Some(step) = solve(hessian, gradient) else { break };
        for i in 0..FEATURES {
            w[i] -= step[i];
        }
        if step.iter().map(|s| s.abs()).fold(0.0, f64::max) < 1e-10 {
            break;
        }
    }
    // Back to the raw features: wk (xk - mk) / sk = (wk / sk) xk - wk mk / sk.
    let mut raw = [0.0; FEATURES];
    raw[0] = w[0] - (1..FEATURES).map(|k| w[k] * mean[k] / sd[k]).sum::<f64>();
    for k in 1..FEATURES {
        raw[k] = w[k] / sd[k];
    }
    raw
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting (None if singular).
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let pivot = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (above, below) = a.split_at_mut(col + 1);
        let pivot_row = &above[col];
        for (offset, row) in below.iter_mut().enumerate() {
            let factor = row[col] / pivot_row[col];
            for (value, pivot_value) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= factor * pivot_value;
            }
            b[col + 1 + offset] -= factor * b[col];
        }
    }
    let mut x = [0.0; N];
    for row in (0..N).rev() {
        let rest: f64 = (row + 1..N).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

/// Expected calibration error: predictions in `bins` equal-width bins of probability,
/// each bin's |share right - mean probability| weighed by its share of the predictions.
pub fn expected_calibration_error(predictions: &[(f32, bool)], bins: usize) -> f64 {
    if predictions.is_empty() {
        return 0.0;
    }
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for &(p, right) in predictions {
        let bin = ((p as f64 * bins as f64) as usize).min(bins - 1);
        sums[bin].0 += 1;
        sums[bin].1 += p as f64;
        sums[bin].2 += right as usize;
    }
    let n = predictions.len() as f64;
    sums.iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|&(count, p_sum, right)| (count as f64 / n) * (right as f64 / count as f64 - p_sum / count as f64).abs())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfectly_calibrated_forecast_has_no_error_and_an_overconfident_one_does() {
        let calibrated: Vec<(f32, bool)> = (0..100).map(|i| (0.75, i % 4 != 0)).collect();
        assert!(expected_calibration_error(&calibrated, 10) < 1e-9);
        let overconfident: Vec<(f32, bool)> = (0..100).map(|i| (1.0, i % 2 == 0)).collect();
        assert!((expected_calibration_error(&overconfident, 10) - 0.5).abs() < 1e-9);
    }

    fn evidence(share: f32, log_ppl_image: f32, distinct_codes: f32) -> Evidence {
        Evidence { share, log_ppl_image, log_ppl_caption: 0.0, log_ppl_image_plain: log_ppl_image, distinct_codes }
    }

    #[test]
    fn the_fitted_probability_follows_the_evidence_and_the_verdicts_follow_the_thresholds() {
        // Right answers: high share, low perplexity; wrong and non-food: the opposite.
        let mut food = Vec::new();
        for i in 0..200 {
            let t = i as f32 / 200.0;
            let right = i % 10 < 7;
            let share = if right { 0.6 + 0.4 * t } else { 0.2 + 0.5 * t };
            let log_ppl = if right { 3.0 + t } else { 3.5 + t };
            food.push((evidence(share, log_ppl, 0.6), right));
        }
        let not_food: Vec<Evidence> = (0..50)
            .map(|i| evidence(0.5 + i as f32 / 100.0, 6.0 + i as f32 / 50.0, if i % 5 == 0 { 0.05 } else { 0.6 }))
            .collect();
        let c = Calibration::fit(&food, &not_food, 0.9).unwrap();
        let sure = evidence(1.0, 3.0, 0.6);
        let doubtful = evidence(0.2, 4.4, 0.6);
        assert!(c.probability(&sure) > c.probability(&doubtful));
        assert_eq!(c.assess(&sure).verdict, Verdict::Dish);
        assert_eq!(c.assess(&evidence(1.0, 6.5, 0.6)).verdict, Verdict::NotFood, "fits no dish");
        assert_eq!(c.assess(&evidence(1.0, 3.0, 0.05)).verdict, Verdict::NotFood, "nothing in the picture");
        assert!(c.not_sure_below > 0.0, "a quarter of the allowance goes to \"not sure\"");
        assert_eq!(c.assess(&evidence(0.25, 3.6, 0.6)).verdict, Verdict::NotSure, "fits, but the samples disagree");
        let kept = food.iter().filter(|(e, r)| *r && c.assess(e).verdict == Verdict::Dish).count();
        assert!(kept as f64 >= 0.9 * 140.0, "{kept} of 140 right answers kept");
        assert!(kept < 140, "the thresholds drop some");
        assert!(c.fitted_on.ece < 0.1, "{}", c.fitted_on.ece);
        // Saved and read back as it was.
        let dir = tempfile::tempdir().unwrap();
        c.save(dir.path()).unwrap();
        assert_eq!(Calibration::load(dir.path()).unwrap(), Some(c));
        assert_eq!(Calibration::load(&dir.path().join("none")).unwrap(), None);
    }
}
