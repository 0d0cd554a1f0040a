//! Encoding 10k captions with the fixture vocabulary (compare: youtokentome, see README).

use borscht_model::tokenizer::TextTokenizer;
use criterion::{criterion_group, Criterion, Throughput};
use std::path::Path;

fn captions() -> Vec<String> {
    let corpus =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/corpus.txt"))
            .expect("tokenizer fixtures");
    corpus.lines().cycle().take(10_000).map(str::to_owned).collect()
}

fn encode_10k_captions(c: &mut Criterion) {
    let tokenizer =
        TextTokenizer::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/reference.model"))
            .unwrap();
    let captions = captions();
    let mut group = c.benchmark_group("tokenizer");
    group.throughput(Throughput::Elements(captions.len() as u64));
    group.bench_function("encode_text 10k captions (seq 64)", |b| {
        b.iter(|| captions.iter().map(|t| tokenizer.encode_text(t, 64)).collect::<Vec<_>>())
    });
    group.finish();
}

criterion_group!(benches, encode_10k_captions);
borscht::bench_main!(benches);
