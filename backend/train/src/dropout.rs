//! Dropout as the reference trains with it: each step draws its masks from the step's
//! seed and each site's place in the network (`DropoutSite`), so a resumed run draws
//! exactly the masks it would have. The model only says where dropout applies.

use borscht_model::config::RudolphConfig;
use borscht_model::transformer::{Dropout, DropoutSite};
use candle_core::{Device, Result, Tensor};

/// One training step's dropout, as the reference trains (embeddings, attention
/// probabilities, attention and MLP outputs). Every mask is drawn from `seed` and its
/// place in the network, so a resumed run draws exactly the masks it would have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutDraw {
    pub seed: u64,
    pub embedding: f64,
    pub attention: f64,
    pub output: f64,
}

impl DropoutDraw {
    /// The config's probabilities with this step's seed.
    pub fn from_config(cfg: &RudolphConfig, seed: u64) -> Self {
        DropoutDraw {
            seed,
            embedding: cfg.embedding_dropout_prob,
            attention: cfg.attention_dropout_prob,
            output: cfg.output_dropout_prob,
        }
    }

    /// Zeroes each element of `x` with probability `p` and scales the rest by 1/(1-p),
    /// drawn from the seed and the site's index.
    fn drop_units(&self, x: &Tensor, p: f64, site: u64) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if p >= 1.0 {
            return x.zeros_like();
        }
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ (site + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let threshold = (p * 4_294_967_296.0) as u64;
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if (rng.next_u32() as u64) < threshold { 0.0 } else { keep }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?.to_device(x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

impl Dropout for DropoutDraw {
    fn apply(&self, x: &Tensor, site: DropoutSite) -> Result<Tensor> {
        let p = match site {
            DropoutSite::Embeddings => self.embedding,
            DropoutSite::AttentionProbs { .. } => self.attention,
            DropoutSite::AttentionOutput { .. } | DropoutSite::MlpOutput { .. } => self.output,
        };
        self.drop_units(x, p, site.index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use borscht_model::transformer::Rudolph;
    use candle_core::DType;
    use candle_nn::VarBuilder;
    use std::sync::Arc;

    fn draw(seed: u64, p: f64) -> DropoutDraw {
        DropoutDraw { seed, embedding: p, attention: p, output: p }
    }

    #[test]
    fn dropout_zeroes_about_p_and_rescales_the_rest() {
        let x = Tensor::ones((64, 1024), DType::F32, &Device::Cpu).unwrap();
        let values = draw(1, 0.3).drop_units(&x, 0.3, 5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dropped = values.iter().filter(|v| **v == 0.0).count() as f64 / values.len() as f64;
        assert!((0.28..0.32).contains(&dropped), "dropped {dropped}");
        assert!(values.iter().all(|v| *v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        assert_eq!(
            draw(1, 0.3).drop_units(&x, 0.0, 5).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
            65536.0
        );
    }

    #[test]
    fn dropout_masks_follow_the_seed_and_leave_inference_alone() {
        let cfg = crate::small_test_config();
        let vb = VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &Device::Cpu);
        let mut model = Rudolph::new(&cfg, vb).unwrap();
        let n = cfg.total_seq_length();
        let ids: Vec<u32> = (0..n as u32).map(|i| i % 16).collect();
        let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
        let mask = Tensor::tril2(n, DType::F32, &Device::Cpu).unwrap().reshape((1, 1, n, n)).unwrap();
        let run = |model: &Rudolph, train: bool| {
            model.forward_t(&ids, &mask, train).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let inference = run(&model, false);
        model.set_dropout(Some(Arc::new(draw(9, 0.2))));
        assert_eq!(run(&model, false), inference, "inference never drops");
        // Dropout is a training matter.
        model.set_dropout(None);
        let plain = run(&model, true);
        model.set_dropout(Some(Arc::new(draw(9, 0.2))));
        let (a, again) = (run(&model, true), run(&model, true));
        model.set_dropout(Some(Arc::new(draw(10, 0.2))));
        let other = run(&model, true);
        model.set_dropout(None);
        assert_eq!(a, again, "the same seed draws the same masks");
        assert_ne!(a, plain, "dropout changes the output");
        assert_ne!(a, other, "another seed draws other masks");
        assert_eq!(run(&model, true), plain, "no dropout once it is switched off");
    }

    /// With attention and MLP frozen, f32 on the CPU trains through the frozen blocks'
    /// kernels and the projection's fused cross-entropy; f64 takes candle's op-by-op path.
    /// The same weights and dropout draw give the same loss and gradients on both.
    #[test]
    fn frozen_block_kernels_train_as_the_op_by_op_path_with_dropout() {
        let cfg = crate::small_test_config();
        let dev = Device::Cpu;
        let build = |dtype: DType, from: Option<&candle_nn::VarMap>| {
            let varmap = candle_nn::VarMap::new();
            let mut model =
                Rudolph::new(&cfg, borscht_model::init::seeded_var_builder(&varmap, 3, dtype, &dev)).unwrap();
            if let Some(from) = from {
                let source = from.data().lock().unwrap();
                for (name, var) in varmap.data().lock().unwrap().iter() {
                    var.set(&source[name].as_tensor().to_dtype(dtype).unwrap()).unwrap();
                }
            }
            model.freeze_blocks(true, true);
            model.set_dropout(Some(Arc::new(draw(5, 0.2))));
            (varmap, model)
        };
        let (fused_vars, fused) = build(DType::F32, None);
        let (composite_vars, composite) = build(DType::F64, Some(&fused_vars));
        let n = cfg.total_seq_length();
        let ids: Vec<u32> = (0..2 * n as u32).map(|i| (i * 7 + 1) % 16).collect();
        let ids = Tensor::from_vec(ids, (2, n), &dev).unwrap();
        let mask = Tensor::tril2(n, DType::F32, &dev).unwrap().reshape((1, 1, n, n)).unwrap();
        let weights = crate::loss::LossWeights { l_text: 0.5, image: 1.0, r_text: 2.0 };
        let run = |model: &Rudolph, dtype: DType| {
            let losses = crate::loss::loss(model, &ids, &mask.to_dtype(dtype).unwrap(), weights).unwrap();
            let grads = losses.loss.backward().unwrap();
            (losses.loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), grads)
        };
        let ((fused_loss, fused_grads), (composite_loss, composite_grads)) =
            (run(&fused, DType::F32), run(&composite, DType::F64));
        assert!((fused_loss - composite_loss).abs() < 1e-5 * composite_loss, "{fused_loss} vs {composite_loss}");
        let (fused_vars, composite_vars) = (fused_vars.data().lock().unwrap(), composite_vars.data().lock().unwrap());
        let mut compared = 0;
        for (name, var) in fused_vars.iter() {
            let (Some(a), Some(b)) = (fused_grads.get(var), composite_grads.get(&composite_vars[name])) else {
                assert!(name.contains(".attention.") || name.contains(".mlp."), "{name} has no gradient");
                continue;
            };
            let b = b.to_dtype(DType::F32).unwrap();
            let diff: f32 =
                (a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            let scale: f32 = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(diff <= 1e-4 * scale.max(1e-3), "{name}: gradients differ by {diff} (scale {scale})");
            compared += 1;
        }
        assert!(compared >= 10, "only {compared} gradients compared");
    }
}
