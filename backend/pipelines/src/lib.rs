//! What RUDOLPH is used for, built for streaming and batching rather than notebooks
//! (rudolph 0.0.1rc4 `pipelines` semantics):
//!
//! - [`engine`]: the model bundle (tokenizer + transformer + VQGAN) and image codes;
//! - [`decoder`]: the decoding loop every sampler runs on (KV cache, static CUDA-graph steps);
//! - [`sampling`]: temperature, top-k, top-p, multinomial;
//! - [`perplexity`]: `ce_to_ppl` and per-token cross-entropies;
//! - [`scoring`]: re-ranking by image or by text, zero-shot classification, text ranking;
//! - [`generation`]: captions, l-text continuation and text-to-image, with events as
//!   results appear;
//! - [`recognize`]: captions re-ranked and grouped into the dish answer;
//! - [`honesty`]: how sure that answer is ("not food", "not sure", calibrated confidence);
//! - [`dishes`]: the dishes a model knows; [`nutrition`]: reading captions, the Atwater
//!   check, portions; [`imaging`]: decoding photos safely, preparing them for the VQGAN;
//! - [`random_model`]: randomly initialised models for tests, benchmarks and load tests.

pub mod decoder;
pub mod dishes;
pub mod engine;
pub mod generation;
pub mod honesty;
pub mod imaging;
pub mod nutrition;
pub mod perplexity;
pub mod random_model;
pub mod recognize;
pub mod sampling;
pub mod scoring;

pub use borscht_model::checkpoint::write_atomically;
pub use engine::Engine;
