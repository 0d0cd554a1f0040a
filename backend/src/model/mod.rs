//! The RUDOLPH model family.
//!
//! - [`tokenizer`]: YouTokenToMe BPE for the text segments.
//! - [`config`]: hyper-parameters under the reference's names, with presets.
//! - [`device`]: `--device` / `--dtype` parsing.
//! - [`masks`]: the sparse layer masks and the per-sample attention masks.
//! - [`transformer`]: the decoder itself, its KV cache and its training loss;
//!   [`fused`]: its CPU kernels (masked softmax, LayerNorm, GELU) with backward passes.
//! - [`weights`]: finding, checking, loading and converting checkpoints.

pub mod checkpoint;
pub mod config;
pub mod conv;
pub mod device;
pub mod fused;
pub mod group_norm;
pub mod masks;
pub mod tokenizer;
pub mod transformer;
pub mod vqgan;
pub mod weights;
