//! One full forward and one cached decode step of a small RUDOLPH (random weights, CPU f32).
//! The PyTorch reference on the same config: scripts/fixtures/bench_reference.py.

use borscht_model::config::RudolphConfig;
use borscht_model::init::random_weights;
use borscht_model::masks::causal_mask;
use borscht_model::transformer::Rudolph;
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, Criterion};

/// The demo-model scale: 8 layers, hidden 256, 64x64 images (8x8 codes), 32 + 32 text.
pub fn small_config() -> RudolphConfig {
    RudolphConfig {
        num_layers: 8,
        hidden_size: 256,
        num_attention_heads: 4,
        l_text_seq_length: 32,
        image_tokens_per_dim: 8,
        r_text_seq_length: 32,
        vocab_size: 2048 + 32,
        image_vocab_size: 1024,
        ..RudolphConfig::rudolph_350m()
    }
}

fn bench(c: &mut Criterion) {
    let cfg = small_config();
    let device = Device::Cpu;
    let weights = random_weights(DType::F32, &device, |vb| Rudolph::new(&cfg, vb).map(|_| ())).unwrap();
    let model = Rudolph::new(&cfg, weights).unwrap();
    let s = cfg.total_seq_length();
    let ids: Vec<u32> = (0..s as u32).map(|i| if (32..96).contains(&i) { i % 1024 } else { 4 + i % 2000 }).collect();
    let ids = Tensor::from_vec(ids, (1, s), &device).unwrap();
    let mask = causal_mask(&cfg, 1, &device).unwrap();

    let mut group = c.benchmark_group("transformer (8 layers, hidden 256, seq 128)");
    group.bench_function("full forward, batch 1", |b| b.iter(|| model.forward(&ids, &mask, None).unwrap()));
    let mut prefilled = model.new_cache();
    model.forward(&ids.narrow(1, 0, s - 1).unwrap(), &mask, Some(&mut prefilled)).unwrap();
    let last = ids.narrow(1, s - 1, 1).unwrap();
    // Each step writes the last position again: the cache is cut back after it.
    group.bench_function("cached decode step (last position)", |b| {
        b.iter(|| {
            let logits = model.forward(&last, &mask, Some(&mut prefilled)).unwrap();
            prefilled.truncate(s - 1);
            logits
        })
    });
    group.finish();
}

criterion_group!(benches, bench);

borscht::bench_main!(benches);
