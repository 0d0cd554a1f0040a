//! The fine-tuning recipe's optimisation pieces, with torch's exact semantics:
//! AdamW with its state kept by us (so a run can be resumed exactly), gradient
//! clipping by global norm, and the OneCycle schedule (learning rate and the Adam
//! beta1 it cycles).

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;
use std::f64::consts::PI;

/// torch's `OneCycleLR` with cosine annealing, two phases and momentum cycling
/// (base 0.85, max 0.95).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    pub total_steps: usize,
    pub max_lr: f64,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
}

const BASE_MOMENTUM: f64 = 0.85;
const MAX_MOMENTUM: f64 = 0.95;

fn anneal_cos(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0)
}

impl OneCycle {
    /// `(learning rate, beta1)` for optimiser step `step` (0-based).
    pub fn at(&self, step: usize) -> (f64, f64) {
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let warmup_end = self.pct_start * self.total_steps as f64 - 1.0;
        let last = self.total_steps as f64 - 1.0;
        let step = step as f64;
        if step <= warmup_end {
            let pct = step / warmup_end;
            (anneal_cos(initial, self.max_lr, pct), anneal_cos(MAX_MOMENTUM, BASE_MOMENTUM, pct))
        } else {
            let pct = (step - warmup_end) / (last - warmup_end);
            (anneal_cos(self.max_lr, min, pct), anneal_cos(BASE_MOMENTUM, MAX_MOMENTUM, pct))
        }
    }
}

/// AdamW (decoupled weight decay), as `torch.optim.AdamW`.
pub struct AdamW {
    params: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// Optimises `params` (name, variable); frozen weights are simply not given.
    pub fn new(params: Vec<(String, Var)>, lr: f64, weight_decay: f64) -> Result<Self> {
        let first = params.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let second = first.clone();
        Ok(AdamW { params, first, second, step: 0, lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay })
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with the gradients in `grads` (parameters without a gradient are skipped).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(var) else { continue };
            let grad = grad.to_dtype(var.dtype())?;
            let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            self.first[i] = ((&self.first[i] * self.beta1)? + (&grad * (1.0 - self.beta1))?)?;
            self.second[i] = ((&self.second[i] * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((self.second[i].sqrt()? / bias2_sqrt)? + self.eps)?;
            let update = ((&self.first[i] / denom)? * (self.lr / bias1))?;
            var.set(&(decayed - update)?)?;
        }
        Ok(())
    }

    /// The moments and the step count, keyed for a safetensors file.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            state.insert(format!("exp_avg.{name}"), self.first[i].clone());
            state.insert(format!("exp_avg_sq.{name}"), self.second[i].clone());
        }
        state.insert(
            "step".into(),
            Tensor::new(&[self.step as u32], self.first.first().map_or(&candle_core::Device::Cpu, |t| t.device()))?,
        );
        Ok(state)
    }

    /// Restores [`AdamW::state`]; every optimised parameter must have its moments.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let step = state.get("step").context("optimiser state has no step")?;
        self.step = step.to_dtype(DType::U32)?.to_vec1::<u32>()?[0] as usize;
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (prefix, slot) in [("exp_avg", &mut self.first[i]), ("exp_avg_sq", &mut self.second[i])] {
                let key = format!("{prefix}.{name}");
                let tensor = state.get(&key).with_context(|| format!("optimiser state lacks `{key}`"))?;
                if tensor.dims() != var.dims() {
                    bail!("optimiser state `{key}` has shape {:?}, the parameter {:?}", tensor.dims(), var.dims());
                }
                *slot = tensor.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        Ok(())
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[&Var], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for var in vars {
        if let Some(g) = grads.get(var) {
            total += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        for var in vars {
            if let Some(g) = grads.get(var) {
                let scaled = (g * coef)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cycle_peaks_at_the_end_of_warmup() {
        let s = OneCycle { total_steps: 100, max_lr: 1.0, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 };
        assert!((s.at(0).0 - 0.04).abs() < 1e-12);
        assert!((s.at(29).0 - 1.0).abs() < 1e-12);
        assert!((s.at(99).0 - 0.04 / 1e4).abs() < 1e-12);
        assert!((s.at(29).1 - 0.85).abs() < 1e-12 && (s.at(0).1 - 0.95).abs() < 1e-12);
    }
}
