//! VQGAN encode/decode on CPU (random weights). The PyTorch reference on the same
//! configs: scripts/fixtures/bench_reference.py.

use borscht_model::init::random_weights;
use borscht_model::vqgan::{Vqgan, VqganConfig};
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, Criterion};

fn bench(c: &mut Criterion) {
    let device = Device::Cpu;
    for (name, cfg, size, encode_batch, decode_batch) in
        [("small (demo), 64px", VqganConfig::small(), 64, 16, 4), ("sber f8, 128px", VqganConfig::sber(), 128, 1, 1)]
    {
        let weights = random_weights(DType::F32, &device, |vb| Vqgan::new(&cfg, vb).map(|_| ())).unwrap();
        let vqgan = Vqgan::new(&cfg, weights).unwrap();
        let images = Tensor::rand(0f32, 1f32, (encode_batch, 3, size, size), &device).unwrap();
        let codes = vqgan.encode(&images.narrow(0, 0, decode_batch).unwrap()).unwrap();
        let mut group = c.benchmark_group(format!("vqgan {name}"));
        group.sample_size(10);
        group.bench_function(format!("encode {encode_batch}"), |b| b.iter(|| vqgan.encode(&images).unwrap()));
        group.bench_function(format!("decode {decode_batch}"), |b| b.iter(|| vqgan.decode(&codes).unwrap()));
        group.finish();
    }
}

criterion_group!(benches, bench);

borscht::bench_main!(benches);
