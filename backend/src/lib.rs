//! The `borscht` command. The layers it puts together, each its own crate:
//!
//! - `borscht-model`: RUDOLPH itself: tokenizer, transformer, VQGAN, kernels, weights;
//! - `borscht-pipelines`: captioning, re-ranking, zero-shot, text and image generation,
//!   the dish answer, nutrition and pictures;
//! - `borscht-train`: training our VQGAN and RUDOLPH, the demo data sets, evaluation;
//! - `borscht-server`: the HTTP/WebSocket service (queue, batching worker, API).
//!
//! Here: [`cli`], the command and its subcommands; [`bench`], `borscht bench`;
//! [`device_check`], `borscht device-check` (a GPU against the reference fixtures);
//! [`process`], allocator and thread-pool settings made at start-up; [`teaching`], the
//! server's fine-tunes as `borscht train` runs.

pub mod bench;
pub mod cli;
pub mod device_check;
pub mod process;
pub mod teaching;
