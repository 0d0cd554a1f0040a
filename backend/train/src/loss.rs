//! The reference's training loss: cross-entropies of the left text, the image codes and
//! the right text, weighted (the article fine-tunes with 0.01 / 1 / 7). Inference never
//! needs it, so it lives here rather than in the model.

use borscht_model::transformer::Rudolph;
use candle_core::{DType, Result, Tensor};
use std::ops::Range;

/// Losses of one batch, as the reference reports them.
#[derive(Debug, Clone)]
pub struct Losses {
    /// The weighted mean that training minimises (a scalar tensor, differentiable).
    pub loss: Tensor,
    pub l_text: f32,
    pub image: f32,
    pub r_text: f32,
}

/// Weights of the three loss terms (the article fine-tunes with 0.01 / 1 / 7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    pub l_text: f64,
    pub image: f64,
    pub r_text: f64,
}

impl Default for LossWeights {
    /// The reference `forward`'s defaults.
    fn default() -> Self {
        LossWeights { l_text: 1.0, image: 7.0, r_text: 1.0 }
    }
}

impl std::str::FromStr for LossWeights {
    type Err = String;

    /// `l_text,image,r_text`, e.g. `0.01,1,7`.
    fn from_str(spec: &str) -> std::result::Result<Self, String> {
        let parts: Vec<f64> = spec
            .split(',')
            .map(|w| w.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| format!("loss weights {spec:?}: expected three numbers like 0.01,1,7"))?;
        let [l_text, image, r_text] = parts[..] else {
            return Err(format!("loss weights need exactly three numbers, got {}", parts.len()));
        };
        if [l_text, image, r_text].iter().any(|w| *w < 0.0) || l_text + image + r_text <= 0.0 {
            return Err("loss weights must be non-negative and not all zero".into());
        }
        Ok(LossWeights { l_text, image, r_text })
    }
}

/// The reference's training loss over full sequences `[b, S]`.
pub fn loss(model: &Rudolph, input_ids: &Tensor, attention_mask: &Tensor, weights: LossWeights) -> Result<Losses> {
    loss_against(model, input_ids, input_ids, attention_mask, weights)
}

/// The loss of reading `input_ids` and predicting `target_ids` (same shape): a
/// denoising objective when the inputs are corrupted copies of the targets.
pub fn loss_against(
    model: &Rudolph,
    input_ids: &Tensor,
    target_ids: &Tensor,
    attention_mask: &Tensor,
    weights: LossWeights,
) -> Result<Losses> {
    let cfg = model.config();
    let (l, i_len, r) = (cfg.l_text_seq_length, cfg.image_seq_length(), cfg.r_text_seq_length);
    let input_ids = input_ids.to_dtype(DType::U32)?;
    let target_ids = target_ids.to_dtype(DType::U32)?;
    let (_, s) = input_ids.dims2()?;
    if s != cfg.total_seq_length() {
        candle_core::bail!("the loss needs full sequences of {} ids, got {s}", cfg.total_seq_length());
    }
    if target_ids.dims() != input_ids.dims() {
        candle_core::bail!("targets {:?} do not match inputs {:?}", target_ids.dims(), input_ids.dims());
    }
    let text_vocab = cfg.text_vocab();

    // Labels as the reference builds them: cat(l_text[1:] (pads replaced), image, r_text).
    let l_text = target_ids.narrow(1, 0, l)?;
    let pad_ids = Tensor::arange((text_vocab - l) as u32, text_vocab as u32, model.device())?;
    let l_text = l_text.eq(0u32)?.where_cond(&pad_ids.unsqueeze(0)?.broadcast_as(l_text.shape())?, &l_text)?;
    let image = target_ids.narrow(1, l, i_len)?;
    let r_text = target_ids.narrow(1, l + i_len, r)?;
    let labels = Tensor::cat(&[&l_text.narrow(1, 1, l - 1)?, &image, &r_text], 1)?;

    // One cross-entropy over the whole logits, each position over its part of the
    // vocabulary: text ids for both texts, image ids for the image, none for the last
    // position (it predicts nothing).
    let text = 0..text_vocab;
    let vocab: Vec<Range<usize>> = std::iter::repeat_n(text.clone(), l)
        .chain(std::iter::repeat_n(text_vocab..text_vocab + cfg.image_vocab(), i_len))
        .chain(std::iter::repeat_n(text, r - 1))
        .chain(std::iter::once(0..0))
        .collect();
    let (b, _) = labels.dims2()?;
    let labels = Tensor::cat(&[&labels, &Tensor::zeros((b, 1), DType::U32, model.device())?], 1)?;
    let per_token = model.cross_entropy_t(&input_ids, attention_mask, &labels, &vocab)?;
    let lt = per_token.narrow(1, 0, l)?.mean_all()?;
    let img = per_token.narrow(1, l, i_len)?.mean_all()?;
    let rt = mean_skipping(&per_token.narrow(1, l + i_len, r - 1)?, &labels.narrow(1, l + i_len, r - 1)?, 0)?;

    let mut total = Tensor::zeros((), DType::F32, model.device())?;
    for (term, w) in [(&lt, weights.l_text), (&img, weights.image), (&rt, weights.r_text)] {
        if w != 0.0 {
            total = (total + (term * w)?)?;
        }
    }
    let loss = (total / (weights.l_text + weights.image + weights.r_text))?;
    Ok(Losses { loss, l_text: lt.to_scalar()?, image: img.to_scalar()?, r_text: rt.to_scalar()? })
}

/// The mean of `per_token` over the positions whose label is not `ignored` (torch's
/// `F.cross_entropy` with `ignore_index`).
fn mean_skipping(per_token: &Tensor, labels: &Tensor, ignored: u32) -> Result<Tensor> {
    let keep = labels.ne(ignored)?.to_dtype(DType::F32)?;
    (per_token * &keep)?.sum_all()? / keep.sum_all()?.to_scalar::<f32>()? as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn loss_against_reads_the_inputs_and_scores_the_targets() {
        let cfg = crate::small_test_config();
        let dev = &Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let model = Rudolph::new(&cfg, borscht_model::init::seeded_var_builder(&varmap, 1, DType::F32, dev)).unwrap();
        // Seeded weights, five times the initialisation's, so the logits favour some codes
        // and the targets matter. Candle's own initialisation is not seedable: with it,
        // some draws put the two image losses below within 1 % of each other.
        for var in varmap.all_vars() {
            var.set(&(var.as_tensor() * 5.0).unwrap()).unwrap();
        }
        let (l, i_len, n) = (cfg.l_text_seq_length, cfg.image_seq_length(), cfg.total_seq_length());
        let clean: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % 16).collect();
        // Half the image codes replaced, the texts untouched.
        let mut noisy = clean.clone();
        for code in noisy[l..l + i_len].iter_mut().step_by(2) {
            *code = (*code + 5) % 16;
        }
        let ids = |v: &[u32]| Tensor::from_vec(v.to_vec(), (1, n), dev).unwrap();
        let mask = Tensor::tril2(n, DType::F32, dev).unwrap().reshape((1, 1, n, n)).unwrap();
        let weights = LossWeights { l_text: 0.0, image: 1.0, r_text: 1.0 };
        let denoising = loss_against(&model, &ids(&noisy), &ids(&clean), &mask, weights).unwrap();
        let plain = loss(&model, &ids(&noisy), &mask, weights).unwrap();

        // The image term: logits of the noisy inputs against the clean sequence's next
        // tokens (each image position predicts the token after it, as the reference's
        // labels shift).
        let logits = model.forward_t(&ids(&noisy), &mask, true).unwrap();
        let image_logits = logits.narrow(1, l, i_len).unwrap().narrow(2, cfg.text_vocab(), cfg.image_vocab()).unwrap();
        let clean_image = ids(&clean).narrow(1, l + 1, i_len).unwrap();
        // Written out with the pipelines' log-softmax, not the loss's own op.
        let expected = borscht_pipelines::perplexity::token_cross_entropy(&image_logits, &clean_image)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((denoising.image - expected).abs() < 1e-4 * expected, "{} vs {expected}", denoising.image);
        assert!(
            (denoising.image - plain.image).abs() > 1e-2 * expected,
            "the clean codes are the targets, not the inputs: {} vs {}",
            denoising.image,
            plain.image
        );
        // The right text is the same in both, read after the same (noisy) picture.
        assert!((denoising.r_text - plain.r_text).abs() < 1e-6);
        assert!(loss_against(&model, &ids(&noisy), &ids(&clean).narrow(1, 0, n - 1).unwrap(), &mask, weights).is_err());
    }
}
