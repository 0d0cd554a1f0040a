//! The fine-tuning recipe's optimisation pieces, with torch's exact semantics:
//! AdamW with its state kept by us (so a run can be resumed exactly), gradient
//! clipping by global norm, and the OneCycle schedule (learning rate and the Adam
//! beta1 it cycles).

use anyhow::{bail, Context, Result};
use borscht_model::fused::{self, Path};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
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
        // Tensors of their own (not clones sharing storage): the CPU update writes them in place.
        let zeros = || params.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>();
        let (first, second) = (zeros()?, zeros()?);
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
        let coefficients = Coefficients {
            beta1: self.beta1,
            beta2: self.beta2,
            decay: 1.0 - self.lr * self.weight_decay,
            inv_bias2_sqrt: 1.0 / (1.0 - self.beta2.powi(t)).sqrt(),
            eps: self.eps,
            step_size: self.lr / (1.0 - self.beta1.powi(t)),
        };
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(var) else { continue };
            let grad = grad.to_dtype(var.dtype())?;
            if fused::path(var) == Path::Cpu {
                update_in_place(var, &grad, &self.first[i], &self.second[i], coefficients)?;
            } else {
                let moments = (&self.first[i], &self.second[i]);
                let (param, first, second) = update_by_tensor_ops(var, &grad, moments, coefficients)?;
                (self.first[i], self.second[i]) = (first, second);
                var.set(&param)?;
            }
        }
        Ok(())
    }

    /// The moments and the step count, keyed for a safetensors file (copies: the moments
    /// change in place at the next step).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            state.insert(format!("exp_avg.{name}"), self.first[i].copy()?);
            state.insert(format!("exp_avg_sq.{name}"), self.second[i].copy()?);
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
                // A copy of its own: the CPU update writes the moments in place.
                *slot = tensor.to_device(var.device())?.to_dtype(var.dtype())?.copy()?;
            }
        }
        Ok(())
    }
}

/// One step's numbers of AdamW, the same for every parameter.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    beta1: f64,
    beta2: f64,
    /// `1 - lr * weight_decay`.
    decay: f64,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_bias2_sqrt: f64,
    eps: f64,
    /// `lr / (1 - beta1^t)`.
    step_size: f64,
}

/// The update as tensor ops (any device and dtype): the new parameter and moments.
fn update_by_tensor_ops(
    param: &Tensor,
    grad: &Tensor,
    (first, second): (&Tensor, &Tensor),
    c: Coefficients,
) -> Result<(Tensor, Tensor, Tensor)> {
    let decayed = (param * c.decay)?;
    let first = ((first * c.beta1)? + (grad * (1.0 - c.beta1))?)?;
    let second = ((second * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
    let denom = ((second.sqrt()? * c.inv_bias2_sqrt)? + c.eps)?;
    let update = ((&first / denom)? * c.step_size)?;
    Ok(((decayed - update)?, first, second))
}

/// The update on f32 CPU tensors, written in place: one pass over each moment and one
/// over the parameter, where the tensor ops made a dozen tensors per parameter. The
/// arithmetic is theirs, operation for operation (candle's `x * a` is `x * a + 0` in
/// f32), so both give the same bits.
fn update_in_place(param: &Tensor, grad: &Tensor, first: &Tensor, second: &Tensor, c: Coefficients) -> Result<()> {
    let grad = grad.contiguous()?;
    let (beta1, one_minus_beta1) = (c.beta1 as f32, (1.0 - c.beta1) as f32);
    let (beta2, one_minus_beta2) = (c.beta2 as f32, (1.0 - c.beta2) as f32);
    first.inplace_op2(
        &grad,
        &InPlace("adamw-first-moment", |m: &mut [f32], [g]: [&[f32]; 1]| {
            for (m, &g) in m.iter_mut().zip(g) {
                *m = (*m * beta1 + 0.0) + (g * one_minus_beta1 + 0.0);
            }
        }),
    )?;
    second.inplace_op2(
        &grad,
        &InPlace("adamw-second-moment", |v: &mut [f32], [g]: [&[f32]; 1]| {
            for (v, &g) in v.iter_mut().zip(g) {
                *v = (*v * beta2 + 0.0) + ((g * g) * one_minus_beta2 + 0.0);
            }
        }),
    )?;
    let (decay, inv_bias2_sqrt, eps, step_size) =
        (c.decay as f32, c.inv_bias2_sqrt as f32, c.eps as f32, c.step_size as f32);
    param.inplace_op3(
        first,
        second,
        &InPlace("adamw-update", |p: &mut [f32], [m, v]: [&[f32]; 2]| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                let denom = (v.sqrt() * inv_bias2_sqrt + 0.0) * 1.0 + eps;
                *p = (*p * decay + 0.0) - ((m / denom) * step_size + 0.0);
            }
        }),
    )?;
    Ok(())
}

/// An element-wise update of a contiguous f32 CPU tensor from others of its size.
struct InPlace<F>(&'static str, F);

impl<F> InPlace<F> {
    fn run<const N: usize>(
        &self,
        dst: &mut CpuStorage,
        dst_layout: &Layout,
        srcs: [(&CpuStorage, &Layout); N],
        f: impl Fn(&mut [f32], [&[f32]; N]),
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(dst), Some((start, end))) = (dst, dst_layout.contiguous_offsets()) else {
            candle_core::bail!("{}: expects a contiguous f32 tensor", self.0)
        };
        let dst = &mut dst[start..end];
        let mut inputs = [&[][..]; N];
        for (input, (storage, layout)) in inputs.iter_mut().zip(srcs) {
            *input = match (storage, layout.contiguous_offsets()) {
                (CpuStorage::F32(data), Some((start, end))) if end - start == dst.len() => &data[start..end],
                _ => candle_core::bail!("{}: inputs must be contiguous f32 of the same size", self.0),
            };
        }
        f(dst, inputs);
        Ok(())
    }
}

impl<F: Fn(&mut [f32], [&[f32]; 1])> InplaceOp2 for InPlace<F> {
    fn name(&self) -> &'static str {
        self.0
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, l1: &Layout, src: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        self.run(dst, l1, [(src, l2)], &self.1)
    }
}

impl<F: Fn(&mut [f32], [&[f32]; 2])> InplaceOp3 for InPlace<F> {
    fn name(&self) -> &'static str {
        self.0
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        self.run(dst, l1, [(s2, l2), (s3, l3)], &self.1)
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[&Var], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for var in vars {
        if let Some(g) = grads.get(var) {
            total += squared_norm(g)?;
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

/// `Σ g²` in f64: read in place from a contiguous f32 CPU tensor, by tensor ops otherwise.
fn squared_norm(g: &Tensor) -> Result<f64> {
    if fused::path(g) == Path::Cpu {
        let (storage, layout) = g.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(data[start..end].iter().map(|&v| (v as f64) * (v as f64)).sum());
        }
    }
    Ok(g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// Three steps of the optimiser (CPU f32: the in-place update) against the tensor
    /// ops applied by hand: the same bits, for the parameter and both moments.
    #[test]
    fn the_in_place_update_gives_the_tensor_ops_bits() {
        let dev = candle_core::Device::Cpu;
        let var = Var::randn(0f32, 1.0, (7, 13), &dev).unwrap();
        let mut expected = (var.as_tensor().copy().unwrap(), var.zeros_like().unwrap(), var.zeros_like().unwrap());
        let mut adamw = AdamW::new(vec![("w".into(), var.clone())], 1e-2, 0.1).unwrap();
        for step in 1..=3 {
            let loss = (var.as_tensor().sqr().unwrap() * Tensor::randn(0f32, 1.0, (7, 13), &dev).unwrap()).unwrap();
            let grads = loss.sum_all().unwrap().backward().unwrap();
            let c = Coefficients {
                beta1: 0.9,
                beta2: 0.999,
                decay: 1.0 - 1e-2 * 0.1,
                inv_bias2_sqrt: 1.0 / (1.0 - 0.999f64.powi(step)).sqrt(),
                eps: 1e-8,
                step_size: 1e-2 / (1.0 - 0.9f64.powi(step)),
            };
            let grad = grads.get(&var).unwrap();
            expected = update_by_tensor_ops(&expected.0, grad, (&expected.1, &expected.2), c).unwrap();
            adamw.step(&grads).unwrap();
            assert_eq!(bits(var.as_tensor()), bits(&expected.0), "parameter, step {step}");
            assert_eq!(bits(&adamw.first[0]), bits(&expected.1), "first moment, step {step}");
            assert_eq!(bits(&adamw.second[0]), bits(&expected.2), "second moment, step {step}");
        }
    }

    /// A saved state stays as it was when the moments change in place afterwards.
    #[test]
    fn a_saved_state_is_not_changed_by_later_steps() {
        let dev = candle_core::Device::Cpu;
        let var = Var::randn(0f32, 1.0, 5, &dev).unwrap();
        let mut adamw = AdamW::new(vec![("w".into(), var.clone())], 1e-2, 0.0).unwrap();
        let step = |adamw: &mut AdamW| {
            let grads = var.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            adamw.step(&grads).unwrap();
        };
        step(&mut adamw);
        let state = adamw.state().unwrap();
        let saved = bits(&state["exp_avg.w"]);
        step(&mut adamw);
        assert_eq!(bits(&state["exp_avg.w"]), saved);
        assert_ne!(bits(&adamw.first[0]), saved);
        // Loaded back, the state is the optimiser's own copy too.
        adamw.load_state(&state).unwrap();
        step(&mut adamw);
        assert_eq!(bits(&state["exp_avg.w"]), saved);
    }

    #[test]
    fn one_cycle_peaks_at_the_end_of_warmup() {
        let s = OneCycle { total_steps: 100, max_lr: 1.0, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 };
        assert!((s.at(0).0 - 0.04).abs() < 1e-12);
        assert!((s.at(29).0 - 1.0).abs() < 1e-12);
        assert!((s.at(99).0 - 0.04 / 1e4).abs() < 1e-12);
        assert!((s.at(29).1 - 0.85).abs() < 1e-12 && (s.at(0).1 - 0.95).abs() < 1e-12);
    }
}
