//! The product's question, "what is this dish?": sample captions of the photo,
//! re-rank them by how well they explain it, and group them into an answer.

use anyhow::Result;

use super::generation::{caption, CaptionOptions, GenerationEvent};
use super::scoring::{rerank_pairs, DEFAULT_BATCH};
use super::Engine;
use crate::nutrition::{final_answer, Answer, ScoredCaption};

#[derive(Debug, Clone, PartialEq)]
pub struct Recognition {
    /// Every distinct caption, in the order sampling finished them, with its image perplexity.
    pub candidates: Vec<ScoredCaption>,
    /// `None` when no caption named a dish.
    pub answer: Option<Answer>,
}

/// Captions for the photo's `codes`, reported through `on_event` as they finish, then
/// re-ranked and grouped by dish.
pub fn recognize(
    engine: &Engine,
    codes: &[u32],
    options: &CaptionOptions,
    on_event: impl FnMut(GenerationEvent),
) -> Result<Recognition> {
    let captions = caption(engine, codes, options, on_event)?;
    answer(engine, codes, captions)
}

/// Re-ranks captions already sampled for the photo's `codes` and groups them by dish.
pub fn answer(engine: &Engine, codes: &[u32], captions: Vec<String>) -> Result<Recognition> {
    Ok(answers(engine, vec![(codes, captions)])?.remove(0))
}

/// [`answer`] for several photos: all their captions are re-ranked in shared batches.
pub fn answers(engine: &Engine, photos: Vec<(&[u32], Vec<String>)>) -> Result<Vec<Recognition>> {
    let pairs: Vec<(&str, &[u32])> =
        photos.iter().flat_map(|(codes, captions)| captions.iter().map(move |c| (c.as_str(), *codes))).collect();
    let mut scores = rerank_pairs(engine, &pairs, DEFAULT_BATCH)?.into_iter();
    Ok(photos
        .into_iter()
        .map(|(_, captions)| {
            let candidates: Vec<ScoredCaption> = captions
                .into_iter()
                .zip(scores.by_ref())
                .map(|(caption, score)| ScoredCaption { caption, ppl_image: score.ppl_image })
                .collect();
            let answer = final_answer(&candidates);
            Recognition { candidates, answer }
        })
        .collect())
}
