//! Randomly initialised models for tests, benchmarks and load tests: the reference
//! harness's `tiny` preset and the 350M geometry, with a small food vocabulary, so no
//! weights need downloading.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

use borscht_model::config::RudolphConfig;
use borscht_model::init::random_weights;
use borscht_model::tokenizer::{Bpe, TextTokenizer};
use borscht_model::transformer::Rudolph;
use borscht_model::vqgan::{DdConfig, Vqgan, VqganConfig};

use crate::engine::VQGAN_DTYPE;
use crate::Engine;

/// The reference harness's `tiny` model: 4 layers, hidden 128, L = R = 16, 8x8 codes.
pub fn tiny_configs() -> (RudolphConfig, VqganConfig) {
    let model = RudolphConfig {
        num_layers: 4,
        hidden_size: 128,
        num_attention_heads: 4,
        l_text_seq_length: 16,
        image_tokens_per_dim: 8,
        r_text_seq_length: 16,
        vocab_size: 1024 + 16,
        image_vocab_size: 512,
        ..RudolphConfig::rudolph_350m()
    };
    let vqgan = VqganConfig {
        ddconfig: DdConfig {
            ch: 32,
            out_ch: 3,
            ch_mult: vec![1, 1, 2, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![32],
            z_channels: 256,
            resolution: 64,
            in_channels: 3,
            double_z: false,
            dropout: 0.0,
            norm_groups: 32,
        },
        n_embed: 512,
        embed_dim: 256,
    };
    (model, vqgan)
}

/// A vocabulary of at most `size` ids learnt from a built-in food corpus.
fn bench_tokenizer(size: usize) -> Result<TextTokenizer> {
    let dishes = "борщ щи пельмени блины сырники оливье винегрет шаурма плов солянка гречка котлета каша уха окрошка \
                  картошка селёдка творог хачапури пицца суши гамбургер яблоко банан яйцо рис хлеб сыр брокколи";
    let mut corpus = String::new();
    for (i, dish) in dishes.split_whitespace().enumerate() {
        for j in 0..20 {
            corpus.push_str(&format!(
                "блюдо: {dish}; белков: {}.{}; жиров: {}; углеводов: {},{}; ккал: {};\n",
                i % 30,
                j,
                (i * 7 + j) % 40,
                (i * 3 + j) % 60,
                j % 10,
                (i * 37 + j * 11) % 500
            ));
        }
    }
    Ok(TextTokenizer::new(Bpe::train(&corpus, size)?))
}

/// Builds a random engine for a preset: `tiny` or `350M` (with the Sber VQGAN).
pub fn random_engine(preset: &str, device: &Device, dtype: DType) -> Result<Engine> {
    let (model_cfg, vqgan_cfg) = match preset {
        "tiny" => tiny_configs(),
        "350M" => (RudolphConfig::rudolph_350m(), VqganConfig::sber()),
        other => bail!("unknown bench preset {other:?}: use tiny or 350M"),
    };
    let model =
        Rudolph::new(&model_cfg, random_weights(dtype, device, |vb| Rudolph::new(&model_cfg, vb).map(|_| ()))?)?;
    let vqgan =
        Vqgan::new(&vqgan_cfg, random_weights(VQGAN_DTYPE, device, |vb| Vqgan::new(&vqgan_cfg, vb).map(|_| ()))?)?;
    let tokenizer = bench_tokenizer(model_cfg.vocab_size - model_cfg.l_text_seq_length)?;
    Engine::from_parts(model, tokenizer, vqgan)
}
