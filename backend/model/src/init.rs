//! Seeded weights for models trained from scratch. Candle's `Init` draws from an
//! unseeded generator, so a model built on a plain `VarMap` starts differently every run;
//! `seeded_var_builder` draws each new variable from a generator seeded by the run's seed
//! and the variable's name, so the same seed gives the same model whatever the build order.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

/// FNV-1a: a hash that stays the same across Rust versions and platforms (std's
/// `DefaultHasher` promises neither), for deriving seeds from names and paths.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A `VarBuilder` whose new variables go into `varmap` (to train and save them), drawn
/// from `seed`: same distributions as candle's `Init`, reproducible values.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SeededVarMap { varmap: varmap.clone(), seed }), dtype, device.clone())
}

struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut vars = self.varmap.data().lock().expect("varmap lock");
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!("shape mismatch on {name}: {shape:?} <> {:?}", var.shape())
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()));
        let values = draw(&init, &shape, &mut rng)?;
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> Result<Tensor> {
        candle_core::bail!("`{name}`: a seeded VarMap creates variables and needs their shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("varmap lock").contains_key(name)
    }
}

/// The two distributions every random `Init` comes down to.
enum Spread {
    Normal { mean: f64, std: f64 },
    Uniform { lo: f64, up: f64 },
}

/// `shape.elem_count()` values from `init`'s distribution (the same parameters as
/// `Init::var`, Kaiming's fan and gain included).
fn draw(init: &Init, shape: &Shape, rng: &mut rand::rngs::StdRng) -> Result<Vec<f32>> {
    let n = shape.elem_count();
    let spread = match *init {
        Init::Const(value) => return Ok(vec![value as f32; n]),
        Init::Randn { mean, stdev } => Spread::Normal { mean, std: stdev },
        Init::Uniform { lo, up } => Spread::Uniform { lo, up },
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => Spread::Normal { mean: 0.0, std },
                NormalOrUniform::Uniform => Spread::Uniform { lo: -3f64.sqrt() * std, up: 3f64.sqrt() * std },
            }
        }
    };
    Ok(match spread {
        Spread::Normal { mean, std } => {
            let d = Normal::new(mean as f32, std as f32).map_err(candle_core::Error::wrap)?;
            (0..n).map(|_| d.sample(rng)).collect()
        }
        Spread::Uniform { lo, up } => {
            let d = Uniform::new(lo as f32, up as f32).map_err(candle_core::Error::wrap)?;
            (0..n).map(|_| d.sample(rng)).collect()
        }
    })
}

/// Random weights as plain tensors, as a loaded checkpoint has them (built with
/// `build`'s initialisers). Variables would make every op keep its inputs for a backward
/// pass and take the training paths.
pub fn random_weights(
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<VarBuilder<'static>> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, dtype, device))?;
    let tensors: std::collections::HashMap<String, Tensor> =
        varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64) -> (VarMap, Vec<Vec<f32>>) {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
        let inits = [
            Init::Const(0.5),
            Init::Randn { mean: 1.0, stdev: 0.1 },
            Init::Uniform { lo: -0.2, up: 0.2 },
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        ];
        let values = inits
            .iter()
            .enumerate()
            .map(|(i, init)| {
                vb.get_with_hints((64, 50), &format!("w{i}"), *init).unwrap().flatten_all().unwrap().to_vec1().unwrap()
            })
            .collect();
        (varmap, values)
    }

    fn mean_std(v: &[f32]) -> (f32, f32) {
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt())
    }

    #[test]
    fn the_same_seed_builds_the_same_weights_with_init_s_distributions() {
        let (varmap, a) = build(3);
        // The draws of seed 3, pinned: a change to the sampling (the RNG, its seeding from
        // the name, the order of draws) would silently change every seeded training run.
        let checksum: Vec<u64> = a.iter().map(|v| v.iter().map(|x| x.to_bits() as u64).sum()).collect();
        assert_eq!(
            checksum,
            [3382286745600, 3408091778745, 6787595555161, 6827903843720],
            "seed 3 draws other weights"
        );
        assert_eq!(a, build(3).1, "same seed, same weights");
        assert_ne!(a[1], build(4).1[1], "another seed, other weights");
        assert_ne!(a[1], a[3], "each variable its own draw");
        assert_eq!(varmap.all_vars().len(), 4, "the variables are kept for training");

        assert!(a[0].iter().all(|&x| x == 0.5));
        let (mean, std) = mean_std(&a[1]);
        assert!((mean - 1.0).abs() < 0.01 && (std - 0.1).abs() < 0.01, "normal: {mean} {std}");
        assert!(a[2].iter().all(|x| x.abs() <= 0.2));
        let (mean, std) = mean_std(&a[2]);
        assert!(mean.abs() < 0.01 && (std - 0.4 / 12f32.sqrt()).abs() < 0.01, "uniform: {mean} {std}");
        // Kaiming normal, fan-in 50, ReLU gain.
        let (mean, std) = mean_std(&a[3]);
        assert!(mean.abs() < 0.01 && (std - 2f32.sqrt() / 50f32.sqrt()).abs() < 0.01, "kaiming: {mean} {std}");
    }

    #[test]
    fn an_existing_variable_is_reused_and_its_shape_checked() {
        let (varmap, a) = build(3);
        let vb = seeded_var_builder(&varmap, 99, DType::F32, &Device::Cpu);
        let again: Vec<f32> = vb.get((64, 50), "w1").unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(again, a[1]);
        let err = vb.get((50, 64), "w1").unwrap_err().to_string();
        assert!(err.contains("shape mismatch on w1"), "{err}");
    }
}
