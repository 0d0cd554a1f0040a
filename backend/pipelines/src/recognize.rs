//! The product's question, "what is this dish?": sample captions of the photo,
//! re-rank them by how well they explain it, and group them into an answer.

use anyhow::Result;

use super::generation::{caption, CaptionOptions, GenerationEvent};
use super::honesty::{uncalibrated, Assessment, Evidence};
use super::scoring::{rerank_by_text, rerank_pairs, DEFAULT_BATCH};
use super::Engine;
use crate::nutrition::{final_answer, parse_caption, Answer, ScoredCaption};

#[derive(Debug, Clone, PartialEq)]
pub struct PhotoAnswer {
    /// Every distinct caption, in the order sampling finished them, with its image perplexity.
    pub candidates: Vec<ScoredCaption>,
    /// `None` when no caption named a dish.
    pub answer: Option<Answer>,
    /// What the model measured about its answer (`None` without one).
    pub evidence: Option<Evidence>,
    /// The verdict and the probability that the answer is right.
    pub assessment: Assessment,
}

/// Captions for the photo's `codes`, reported through `on_event` as they finish, then
/// re-ranked and grouped by dish.
pub fn recognize(
    engine: &Engine,
    codes: &[u32],
    options: &CaptionOptions,
    on_event: impl FnMut(GenerationEvent),
) -> Result<PhotoAnswer> {
    let captions = caption(engine, codes, options, on_event)?;
    answer(engine, codes, captions)
}

/// Re-ranks captions already sampled for the photo's `codes` and groups them by dish.
pub fn answer(engine: &Engine, codes: &[u32], captions: Vec<String>) -> Result<PhotoAnswer> {
    Ok(answers(engine, vec![(codes, captions)])?.remove(0))
}

/// [`answer`] for several photos: all their captions are re-ranked in shared batches.
pub fn answers(engine: &Engine, photos: Vec<(&[u32], Vec<String>)>) -> Result<Vec<PhotoAnswer>> {
    let pairs: Vec<(&str, &[u32])> =
        photos.iter().flat_map(|(codes, captions)| captions.iter().map(move |c| (c.as_str(), *codes))).collect();
    let mut scores = rerank_pairs(engine, &pairs, DEFAULT_BATCH)?.into_iter();
    // Each photo's image perplexity with no text at all: how typical its codes are,
    // whatever the dish (the baseline the best caption's fit is measured against).
    let codebooks: Vec<Vec<u32>> = photos.iter().map(|(codes, _)| codes.to_vec()).collect();
    let plain = rerank_by_text(engine, "", &codebooks, DEFAULT_BATCH)?;
    Ok(photos
        .into_iter()
        .zip(plain)
        .map(|((codes, captions), plain)| {
            let candidates: Vec<ScoredCaption> = captions
                .into_iter()
                .zip(scores.by_ref())
                .map(|(caption, score)| ScoredCaption {
                    caption,
                    ppl_image: score.ppl_image,
                    ppl_caption: score.ppl_caption,
                })
                .collect();
            let answer = final_answer(&candidates);
            let evidence = answer.as_ref().and_then(|a| evidence_of(a, &candidates, plain.ppl_image, codes));
            let assessment = match (&engine.calibration, &evidence) {
                (Some(calibration), Some(evidence)) => calibration.assess(evidence),
                _ => uncalibrated(answer.as_ref().map(|a| a.best.confidence)),
            };
            PhotoAnswer { candidates, answer, evidence, assessment }
        })
        .collect())
}

/// The best dish's share of the evidence, and how well its best caption explains the
/// photo (the caption whose image perplexity is lowest, and that caption's own
/// perplexity after the photo).
fn evidence_of(answer: &Answer, candidates: &[ScoredCaption], ppl_image_plain: f32, codes: &[u32]) -> Option<Evidence> {
    let mut distinct = codes.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let best = candidates
        .iter()
        .filter(|c| parse_caption(&c.caption).dish.as_deref() == Some(answer.best.dish.as_str()))
        .filter(|c| c.ppl_image.is_finite() && c.ppl_image > 0.0)
        .min_by(|a, b| a.ppl_image.total_cmp(&b.ppl_image))?;
    Some(Evidence {
        share: answer.best.confidence,
        log_ppl_image: best.ppl_image.ln(),
        log_ppl_caption: best.ppl_caption.ln(),
        log_ppl_image_plain: ppl_image_plain.ln(),
        distinct_codes: distinct.len() as f32 / codes.len().max(1) as f32,
    })
}
