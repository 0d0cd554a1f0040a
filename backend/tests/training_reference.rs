//! Training pieces against torch (fixtures: scripts/fixtures/training_fixtures.py).

use borscht_train::optim::{clip_grad_norm, AdamW, OneCycle};
use candle_core::{Device, Tensor, Var};
use serde_json::Value;
use std::path::Path;

fn expected() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor(v: &Value) -> Tensor {
    match &v.as_array().unwrap()[0] {
        Value::Array(_) => {
            let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
            Tensor::new(rows, &Device::Cpu).unwrap()
        }
        _ => Tensor::new(serde_json::from_value::<Vec<f32>>(v.clone()).unwrap(), &Device::Cpu).unwrap(),
    }
}

/// A GradStore holding exactly `grads` for `vars`: d(sum(v * g))/dv = g.
fn grad_store(vars: &[Var], grads: &[Tensor]) -> candle_core::backprop::GradStore {
    let objective = vars
        .iter()
        .zip(grads)
        .map(|(v, g)| (v.as_tensor() * g).unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    objective.backward().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn one_cycle_equals_torch() {
    for case in expected()["one_cycle"].as_array().unwrap() {
        let schedule = OneCycle {
            total_steps: case["total_steps"].as_u64().unwrap() as usize,
            max_lr: case["max_lr"].as_f64().unwrap(),
            pct_start: case["pct_start"].as_f64().unwrap(),
            div_factor: case["div_factor"].as_f64().unwrap(),
            final_div_factor: case["final_div_factor"].as_f64().unwrap(),
        };
        for (step, (lr, beta1)) in
            case["lr"].as_array().unwrap().iter().zip(case["beta1"].as_array().unwrap()).enumerate()
        {
            let (ours_lr, ours_beta1) = schedule.at(step);
            let (lr, beta1) = (lr.as_f64().unwrap(), beta1.as_f64().unwrap());
            assert!((ours_lr - lr).abs() <= 1e-12 * lr.max(1e-12) + 1e-18, "step {step}: lr {ours_lr} vs {lr}");
            assert!((ours_beta1 - beta1).abs() <= 1e-12, "step {step}: beta1 {ours_beta1} vs {beta1}");
        }
    }
}

#[test]
fn adamw_steps_equal_torch_and_resume_exactly() {
    let e = &expected()["adamw"];
    let starts: Vec<Tensor> = e["start"].as_array().unwrap().iter().map(tensor).collect();
    let make = || -> (Vec<Var>, AdamW) {
        let vars: Vec<Var> = starts.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let named = vars.iter().enumerate().map(|(i, v)| (format!("p{i}"), v.clone())).collect();
        (vars, AdamW::new(named, e["lr"].as_f64().unwrap(), e["weight_decay"].as_f64().unwrap()).unwrap())
    };
    let apply = |vars: &[Var], opt: &mut AdamW, step: &Value| {
        let grads: Vec<Tensor> = step.as_array().unwrap().iter().map(tensor).collect();
        opt.step(&grad_store(vars, &grads)).unwrap();
    };
    let steps = e["grads"].as_array().unwrap();
    let (vars, mut opt) = make();
    for step in steps {
        apply(&vars, &mut opt, step);
    }
    for (var, end) in vars.iter().zip(e["end"].as_array().unwrap()) {
        let diff = max_diff(var.as_tensor(), &tensor(end));
        assert!(diff <= 1e-6, "AdamW differs from torch by {diff}");
    }

    // Stop after one step, save the state, continue in a fresh optimiser: same result.
    let (vars2, mut first_half) = make();
    apply(&vars2, &mut first_half, &steps[0]);
    let state = first_half.state().unwrap();
    let weights: Vec<Tensor> = vars2.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
    let (vars3, mut resumed) = make();
    for (v, w) in vars3.iter().zip(&weights) {
        v.set(w).unwrap();
    }
    resumed.load_state(&state).unwrap();
    assert_eq!(resumed.steps(), 1);
    for step in &steps[1..] {
        apply(&vars3, &mut resumed, step);
    }
    for (a, b) in vars.iter().zip(&vars3) {
        assert_eq!(max_diff(a.as_tensor(), b.as_tensor()), 0.0, "resumed run must equal the uninterrupted one");
    }
}

#[test]
fn clipping_equals_torch() {
    let e = &expected()["clip"];
    let grads: Vec<Tensor> = e["grads"].as_array().unwrap().iter().map(tensor).collect();
    let vars: Vec<Var> =
        grads.iter().map(|g| Var::zeros(g.dims(), candle_core::DType::F32, &Device::Cpu).unwrap()).collect();
    let mut store = grad_store(&vars, &grads);
    let refs: Vec<&Var> = vars.iter().collect();
    let norm = clip_grad_norm(&mut store, &refs, e["max_norm"].as_f64().unwrap()).unwrap();
    assert!((norm - e["total_norm"].as_f64().unwrap()).abs() < 1e-4);
    for (var, clipped) in vars.iter().zip(e["clipped"].as_array().unwrap()) {
        assert!(max_diff(store.get(var).unwrap(), &tensor(clipped)) < 1e-6);
    }
}
