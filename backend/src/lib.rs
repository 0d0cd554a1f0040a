//! Borscht: recognise a dish and its nutrition from a photo with RUDOLPH.
//!
//! Module map (one room per part of the architecture):
//! - [`cli`]: the `borscht` command and its subcommands; [`bench`]: `borscht bench`;
//!   [`device_check`]: `borscht device-check` (a GPU against the reference fixtures).
//! - [`imaging`]: decoding photos safely, preparing them for the VQGAN, PNG output.
//! - [`model`]: RUDOLPH itself: tokenizer, transformer, VQGAN, checkpoints.
//! - [`nutrition`]: reading captions, the Atwater check, the final answer.
//! - [`pipelines`]: captioning, re-ranking, zero-shot, text and image generation.
//! - [`train`]: training our VQGAN and RUDOLPH, the demo data set, evaluation.
//! - [`process`]: allocator and thread-pool settings made at start-up.
//! - [`server`]: the axum HTTP/WebSocket service: bounded queue, batching model worker, API.

pub mod bench;
pub mod cli;
pub mod device_check;
pub mod imaging;
pub mod model;
pub mod nutrition;
pub mod pipelines;
pub mod process;
pub mod server;
pub mod train;
