//! The RUDOLPH model family, for inference (training lives in `borscht-train`).
//!
//! - [`tokenizer`]: YouTokenToMe BPE for the text segments.
//! - [`config`]: hyper-parameters under the reference's names, with presets.
//! - [`device`]: `--device` / `--dtype` parsing.
//! - [`masks`]: the sparse layer masks and the per-sample attention masks.
//! - [`transformer`]: the decoder itself and its KV cache (the training loss is
//!   `borscht-train`'s);
//!   [`fused`]: its CPU kernels (masked softmax, LayerNorm, GELU) with backward passes.
//! - [`conv`], [`group_norm`], [`spatial_attention`]: the VQGAN's CPU kernels.
//! - [`vector_math`]: a vectorisable `exp` and run-time SIMD dispatch for those kernels.
//! - [`weights`]: finding, checking, loading and converting checkpoints;
//!   [`checkpoint`]: the file formats; [`init`]: seeded and random weights.

pub mod checkpoint;
pub mod config;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda_kernels;
pub mod device;
pub mod fused;
pub mod graph;
pub mod group_norm;
pub mod init;
pub mod masks;
pub mod spatial_attention;
#[cfg(test)]
mod test_support;
pub mod tokenizer;
pub mod transformer;
pub mod vector_math;
pub mod vqgan;
pub mod weights;

/// Side of the square pictures a model reads: its image codes per side times the VQGAN's
/// downsampling factor.
pub fn image_side(model: &config::RudolphConfig, vqgan: &vqgan::VqganConfig) -> u32 {
    (model.image_tokens_per_dim * vqgan.downsample_factor()) as u32
}
