//! The one place where the pipelines' results become the protocol's messages (the
//! WebSocket frames, the HTTP API's JSON and `borscht caption --json` all say the same).

use borscht_pipelines::generation::ContinuedText;
use borscht_pipelines::nutrition::parse_caption;
use borscht_pipelines::recognize::PhotoAnswer;
use borscht_pipelines::scoring::ClassScores;
use borscht_protocol::nutrition::Nutrition;
use borscht_protocol::{Classification, RankedCaption, RankedText, Recognition};

/// The answer as clients get it, with the values of a `portion_g` portion of the best dish.
pub fn recognition(photo: &PhotoAnswer, portion_g: Option<f32>) -> Recognition {
    let mut candidates: Vec<RankedCaption> = photo
        .candidates
        .iter()
        .map(|c| RankedCaption {
            text: c.caption.clone(),
            nutrition: parse_caption(&c.caption),
            perplexity: c.ppl_image,
        })
        .collect();
    candidates.sort_by(|a, b| a.perplexity.total_cmp(&b.perplexity));
    let (best, alternatives) = match &photo.answer {
        Some(answer) => (Some(answer.best.clone()), answer.alternatives.clone()),
        None => (None, Vec::new()),
    };
    let portion: Option<Nutrition> = match (&best, portion_g) {
        (Some(best), Some(g)) => Some(best.nutrition.for_portion(g)),
        _ => None,
    };
    Recognition {
        verdict: photo.assessment.verdict,
        confidence: photo.assessment.confidence,
        calibrated: photo.assessment.calibrated,
        atwater: best.as_ref().and_then(|b| b.atwater),
        best,
        alternatives,
        portion,
        candidates,
    }
}

/// A zero-shot answer over `classes`.
pub fn classification(classes: &[String], scores: ClassScores) -> Classification {
    Classification {
        classes: classes.to_vec(),
        scores: scores.scores,
        perplexities: scores.perplexities,
        label: scores.label,
        none_of_these: scores.none_of_these,
    }
}

/// Continued texts, best first, with their perplexities.
pub fn ranked_texts(texts: Vec<ContinuedText>) -> Vec<RankedText> {
    texts.into_iter().map(|t| RankedText { text: t.text, perplexity: t.ppl }).collect()
}
