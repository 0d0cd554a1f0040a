//! Scoring texts against images and images against texts by perplexity.

use anyhow::{bail, Result};
use borscht_protocol::ClassifyMethod;
use candle_core::Tensor;

use super::perplexity::{ce_to_ppl, token_ce};
use super::Engine;
use borscht_model::masks::{attention_mask, t2t_attention_mask};
use borscht_model::tokenizer::TextTokenizer;
use borscht_model::transformer::Head;

/// Forward passes run at most this many sequences at once.
pub const DEFAULT_BATCH: usize = 64;

/// Perplexities of one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct TextImageScore {
    /// Of the text positions (l_text for re-ranking by image, r_text by text).
    pub ppl_text: f32,
    /// Of the image positions: how well the image fits the text (lower is better).
    pub ppl_image: f32,
    /// Re-ranking by image only: of the text again as right text after the photo, its end
    /// included: how sure the model is of the text given the photo alone (the right text
    /// does not see the left). NaN where not measured.
    pub ppl_caption: f32,
}

/// The zero-shot answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScores {
    pub label: usize,
    /// Softmax of the L2-normalised perplexities: the answer has the lowest score.
    pub scores: Vec<f32>,
    /// Each class's perplexity as scored, which the scores keep only up to a factor.
    pub perplexities: Vec<f32>,
    /// Even the chosen class fits poorly (by the model's calibration): "none of these".
    pub none_of_these: bool,
}

fn r_text_mask(encoded: &[u32]) -> Vec<f32> {
    encoded.iter().map(|&id| if id != 0 { 1.0 } else { 0.0 }).collect()
}

/// How many right-text positions a batch's forward needs: through the last token of its
/// longest text. The positions after it are padding, whose targets are not scored and
/// which no earlier position attends to, so the forward stops there (a dish name is a
/// few tokens of the 128 the right text holds: most of the work was padding).
fn scored_r_text_len<'a>(encoded: impl IntoIterator<Item = &'a [u32]>) -> usize {
    let used = |e: &[u32]| e.iter().rposition(|&id| id != 0).map_or(0, |last| last + 1);
    encoded.into_iter().map(|e| used(e).max(2).min(e.len())).max().unwrap_or(0)
}

fn ids_tensor(engine: &Engine, rows: &[Vec<u32>]) -> Result<Tensor> {
    let n = rows.first().map_or(0, Vec::len);
    Ok(Tensor::from_vec(rows.concat(), (rows.len(), n), &engine.device)?)
}

/// Runs the model on full sequences with per-sample masks and returns the hidden states
/// (each scorer computes the logits of the positions and vocabulary it reads only).
fn hidden(engine: &Engine, rows: &[Vec<u32>], masks: &[Vec<f32>]) -> Result<Tensor> {
    let cfg = engine.model.config();
    let mask = attention_mask(cfg, masks, &engine.device)?;
    Ok(engine.model.forward_hidden(&ids_tensor(engine, rows)?, &mask, None)?)
}

/// The logits of `head` at positions `start..start + len` of `hidden`.
fn logits_at(engine: &Engine, hidden: &Tensor, start: usize, len: usize, head: Head) -> Result<Tensor> {
    Ok(engine.model.head_logits(&hidden.narrow(1, start, len)?, head)?)
}

/// Image perplexity over positions `L+1..L+I` (the image logits of `L..L+I-1`).
fn image_ppl(engine: &Engine, hidden: &Tensor, ids: &Tensor) -> Result<Vec<f32>> {
    let cfg = engine.model.config();
    let (l, i) = (cfg.l_text_seq_length, cfg.image_seq_length());
    let image_logits = logits_at(engine, hidden, l, i - 1, Head::Image)?;
    Ok(ce_to_ppl(&token_ce(&image_logits, &ids.narrow(1, l + 1, i - 1)?, None)?))
}

/// `self_reranking_by_image`: each text on both sides of the photo's codes.
/// Returns the scores in the order of `texts`; rank by `ppl_image` ascending.
pub fn rerank_by_image(engine: &Engine, texts: &[String], codes: &[u32], batch: usize) -> Result<Vec<TextImageScore>> {
    let pairs: Vec<(&str, &[u32])> = texts.iter().map(|text| (text.as_str(), codes)).collect();
    rerank_pairs(engine, &pairs, batch)
}

/// [`rerank_by_image`] for texts of several photos at once: each `(text, codes)` pair is
/// one row, so the candidates of many requests share each forward (the server's batches).
pub fn rerank_pairs(engine: &Engine, pairs: &[(&str, &[u32])], batch: usize) -> Result<Vec<TextImageScore>> {
    let cfg = engine.model.config();
    let (l, r) = (cfg.l_text_seq_length, cfg.r_text_seq_length);
    for (_, codes) in pairs {
        check_codes(engine, codes)?;
    }
    let mut scores = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let rights: Vec<Vec<u32>> = chunk.iter().map(|(text, _)| engine.encode_text(text, r)).collect();
        let kept = scored_r_text_len(rights.iter().map(Vec::as_slice));
        let mut rows = Vec::with_capacity(chunk.len());
        let mut masks = Vec::with_capacity(chunk.len());
        for ((text, codes), right) in chunk.iter().zip(&rights) {
            rows.push([engine.encode_text(text, l), codes.to_vec(), right[..kept].to_vec()].concat());
            masks.push(r_text_mask(right));
        }
        let hidden = hidden(engine, &rows, &masks)?;
        let ids = ids_tensor(engine, &rows)?;
        let ppl_image = image_ppl(engine, &hidden, &ids)?;
        let l_text_logits = logits_at(engine, &hidden, 0, l - 1, Head::Text)?;
        let ppl_text = ce_to_ppl(&token_ce(&l_text_logits, &ids.narrow(1, 1, l - 1)?, Some(0))?);
        let ppl_caption = r_text_ppl(engine, &hidden, &ids, cfg.total_seq_length() - r, true)?;
        scores.extend(
            ppl_text
                .into_iter()
                .zip(ppl_image)
                .zip(ppl_caption)
                .map(|((ppl_text, ppl_image), ppl_caption)| TextImageScore { ppl_text, ppl_image, ppl_caption }),
        );
    }
    Ok(scores)
}

/// `self_reranking_by_text`: how well each image (as codes) fits `text` on the right.
pub fn rerank_by_text(
    engine: &Engine,
    text: &str,
    codebooks: &[Vec<u32>],
    batch: usize,
) -> Result<Vec<TextImageScore>> {
    score_images_by_text(engine, text, codebooks, batch, true)
}

/// Caption fit of pictures: the r_text perplexity of `caption` after each picture, its
/// end of text not scored (as [`ClassifyMethod::CaptionFit`] does), lower is better.
/// Text-to-image keeps the drawings that best fit their dish this way.
pub fn caption_fit_of_images(engine: &Engine, caption: &str, codebooks: &[Vec<u32>], batch: usize) -> Result<Vec<f32>> {
    let scores = score_images_by_text(engine, caption, codebooks, batch, false)?;
    Ok(scores.into_iter().map(|s| s.ppl_text).collect())
}

fn score_images_by_text(
    engine: &Engine,
    text: &str,
    codebooks: &[Vec<u32>],
    batch: usize,
    score_end: bool,
) -> Result<Vec<TextImageScore>> {
    let cfg = engine.model.config();
    let (l, r) = (cfg.l_text_seq_length, cfg.r_text_seq_length);
    let encoded = engine.encode_text(text, r);
    let kept = scored_r_text_len([encoded.as_slice()]);
    let mut scores = Vec::with_capacity(codebooks.len());
    for chunk in codebooks.chunks(batch.max(1)) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|codes| {
                check_codes(engine, codes)?;
                Ok([vec![0; l], codes.clone(), encoded[..kept].to_vec()].concat())
            })
            .collect::<Result<_>>()?;
        let masks = vec![r_text_mask(&encoded); rows.len()];
        let hidden = hidden(engine, &rows, &masks)?;
        let ids = ids_tensor(engine, &rows)?;
        let ppl_image = image_ppl(engine, &hidden, &ids)?;
        let ppl_text = r_text_ppl(engine, &hidden, &ids, cfg.total_seq_length() - r, score_end)?;
        scores.extend(ppl_text.into_iter().zip(ppl_image).map(|(ppl_text, ppl_image)| TextImageScore {
            ppl_text,
            ppl_image,
            ppl_caption: f32::NAN,
        }));
    }
    Ok(scores)
}

/// The right text's perplexity in rows whose right text starts at position `start` of
/// `ids` and `hidden` and runs to their end (all of it, or as many positions as
/// [`scored_r_text_len`] keeps).
fn r_text_ppl(engine: &Engine, hidden: &Tensor, ids: &Tensor, start: usize, score_end: bool) -> Result<Vec<f32>> {
    let kept = ids.dim(1)? - start;
    let r_logits = logits_at(engine, hidden, start, kept - 1, Head::Text)?;
    let labels = scored_labels(ids.narrow(1, start + 1, kept - 1)?, score_end)?;
    Ok(ce_to_ppl(&token_ce(&r_logits, &labels, Some(0))?))
}

/// Right-text labels as scored: without `score_end`, EOS becomes padding, which the
/// cross-entropy skips.
fn scored_labels(labels: Tensor, score_end: bool) -> Result<Tensor> {
    if score_end {
        return Ok(labels);
    }
    Ok(labels.eq(TextTokenizer::EOS)?.where_cond(&labels.zeros_like()?, &labels)?)
}

/// `zs_clf`: which class text fits the photo best. `template` holds `{}` for the class.
pub fn classify(
    engine: &Engine,
    codes: &[u32],
    classes: &[String],
    template: &str,
    batch: usize,
) -> Result<ClassScores> {
    classify_as_caption(engine, codes, classes, template, batch, true)
}

/// The class texts as right text after the photo, ranked by perplexity: `zs_clf` when
/// `score_end`, caption fit otherwise. Caption fit leaves the text's end out: a caption
/// goes on after its dish (`блюдо: пицца; белков: …`), so a model trained on captions
/// finds any early end unlikely, and that penalty, not the dish, would decide.
fn classify_as_caption(
    engine: &Engine,
    codes: &[u32],
    classes: &[String],
    template: &str,
    batch: usize,
    score_end: bool,
) -> Result<ClassScores> {
    let texts = class_texts(engine, classes, template)?;
    Ok(class_scores_of(&class_text_perplexities(engine, codes, &texts, batch, score_end)?))
}

/// Perplexity of each text as right text after the photo (with or without its EOS).
///
/// Every text shares `[l_text | image]`, and the per-sample masks only differ in the
/// r_text rows, so that prefix runs once and its KV cache serves all of them.
fn class_text_perplexities(
    engine: &Engine,
    codes: &[u32],
    texts: &[String],
    batch: usize,
    score_end: bool,
) -> Result<Vec<f32>> {
    check_codes(engine, codes)?;
    let cfg = engine.model.config();
    let (l, r) = (cfg.l_text_seq_length, cfg.r_text_seq_length);
    let prefix: Vec<u32> = [vec![0; l], codes.to_vec()].concat();
    let mut prefix_cache = engine.model.new_cache();
    let causal = attention_mask(cfg, &[vec![1.0; r]], &engine.device)?;
    engine.model.forward_hidden(&ids_tensor(engine, &[prefix])?, &causal, Some(&mut prefix_cache))?;
    let mut ppl = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        let encoded: Vec<Vec<u32>> = chunk.iter().map(|text| engine.encode_text(text, r)).collect();
        let masks: Vec<Vec<f32>> = encoded.iter().map(|e| r_text_mask(e)).collect();
        let kept = scored_r_text_len(encoded.iter().map(Vec::as_slice));
        let rows: Vec<Vec<u32>> = encoded.iter().map(|e| e[..kept].to_vec()).collect();
        let mut cache = prefix_cache.repeated(rows.len())?;
        let ids = ids_tensor(engine, &rows)?;
        let hidden =
            engine.model.forward_hidden(&ids, &attention_mask(cfg, &masks, &engine.device)?, Some(&mut cache))?;
        // The rows are the right texts alone (the prefix is in the cache).
        ppl.extend(r_text_ppl(engine, &hidden, &ids, 0, score_end)?);
    }
    Ok(ppl)
}

/// How a dish is written for `zs_clf`, which scores it as right text (a caption): the
/// start of the article's caption.
pub const CLASS_TEMPLATE: &str = "блюдо: {}";
/// How a dish is written for caption fit: the caption's start up to the `;` that ends
/// the dish, so a dish that begins another (`мороженое`, `мороженое в рожке`) is told apart.
pub const CAPTION_CLASS_TEMPLATE: &str = "блюдо: {};";
/// How a dish is written for the image-fit choice, which puts it in the left text: as
/// `borscht train --left-text-share` writes left texts, the dish name alone.
pub const LEFT_CLASS_TEMPLATE: &str = "{}";

/// The template a method reads a dish in when the caller names none.
pub fn default_class_template(method: ClassifyMethod) -> &'static str {
    match method {
        ClassifyMethod::CaptionFit => CAPTION_CLASS_TEMPLATE,
        ClassifyMethod::ZeroShot => CLASS_TEMPLATE,
        ClassifyMethod::ImageFit => LEFT_CLASS_TEMPLATE,
    }
}

/// Each class written with `template` (`{}` stands for the class; without it, the class
/// alone), every one readable by the model.
fn class_texts(engine: &Engine, classes: &[String], template: &str) -> Result<Vec<String>> {
    if classes.is_empty() {
        bail!("no classes to choose from");
    }
    let template = if template.contains("{}") { template } else { "{}" };
    // Checked apart, so a refusal names the class or the template as the caller wrote it.
    engine.check_known(&template.replace("{}", ""))?;
    for class in classes {
        engine.check_known(class)?;
    }
    Ok(classes.iter().map(|c| template.replace("{}", c)).collect())
}

/// `zs_clf`'s scoring of perplexities: divided by their L2 norm, softmaxed; the
/// lowest wins.
fn class_scores_of(ppl: &[f32]) -> ClassScores {
    let norm = ppl.iter().map(|p| p * p).sum::<f32>().sqrt();
    let normalised: Vec<f32> = ppl.iter().map(|p| p / norm).collect();
    let max = normalised.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = normalised.iter().map(|p| (p - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    let scores: Vec<f32> = exps.iter().map(|e| e / total).collect();
    let label = scores.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    ClassScores { label, scores, perplexities: ppl.to_vec(), none_of_these: false }
}

/// Zero-shot by image fit: each class text around the photo (`self_reranking_by_image`),
/// the class under which the photo's codes are most likely wins; scored like `zs_clf`.
/// Models trained with dish names as left text (the demo model) answer better this way
/// than by `zs_clf`, which also scores the class text's own ending.
pub fn classify_by_image(
    engine: &Engine,
    codes: &[u32],
    classes: &[String],
    template: &str,
    batch: usize,
) -> Result<ClassScores> {
    let texts = class_texts(engine, classes, template)?;
    let ppl: Vec<f32> = rerank_by_image(engine, &texts, codes, batch)?.iter().map(|s| s.ppl_image).collect();
    Ok(class_scores_of(&ppl))
}

/// "Which of these dishes?" by either method. With caption fit (the default) and a
/// calibrated model, the answer is "none of these" when even the chosen dish's caption
/// fits the photo worse than the calibration allows.
pub fn classify_with(
    method: ClassifyMethod,
    engine: &Engine,
    codes: &[u32],
    classes: &[String],
    template: &str,
    batch: usize,
) -> Result<ClassScores> {
    let mut result = match method {
        ClassifyMethod::CaptionFit => classify_as_caption(engine, codes, classes, template, batch, false)?,
        ClassifyMethod::ZeroShot => classify(engine, codes, classes, template, batch)?,
        ClassifyMethod::ImageFit => classify_by_image(engine, codes, classes, template, batch)?,
    };
    let threshold = engine.calibration.as_ref().and_then(|c| c.none_of_these_above);
    if let (ClassifyMethod::CaptionFit, Some(threshold)) = (method, threshold) {
        let best = result.perplexities.get(result.label).copied().unwrap_or(f32::INFINITY);
        result.none_of_these = best.ln() > threshold;
    }
    Ok(result)
}

/// `generate_texts`' ranking: l_text perplexity of each text alone (text-to-text mask).
pub fn text_perplexities(engine: &Engine, texts: &[String], batch: usize) -> Result<Vec<f32>> {
    let cfg = engine.model.config();
    let l = cfg.l_text_seq_length;
    let mut ppl = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|t| engine.encode_text(t, l)).collect();
        let ids = ids_tensor(engine, &rows)?;
        let mask = t2t_attention_mask(cfg, rows.len(), &engine.device)?;
        let hidden = engine.model.forward_hidden(&ids, &mask, None)?;
        let l_logits = logits_at(engine, &hidden, 0, l - 1, Head::Text)?;
        ppl.extend(ce_to_ppl(&token_ce(&l_logits, &ids.narrow(1, 1, l - 1)?, Some(0))?));
    }
    Ok(ppl)
}

/// Refuses a code sequence of the wrong length or with ids outside the image vocabulary.
pub(crate) fn check_codes(engine: &Engine, codes: &[u32]) -> Result<()> {
    let cfg = engine.model.config();
    if codes.len() != cfg.image_seq_length() {
        bail!("expected {} image codes, got {}", cfg.image_seq_length(), codes.len());
    }
    if let Some(bad) = codes.iter().find(|&&c| c as usize >= cfg.image_vocab()) {
        bail!("image code {bad} is outside the image vocabulary ({})", cfg.image_vocab());
    }
    Ok(())
}
