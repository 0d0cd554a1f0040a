//! Borscht: recognise a dish and its nutrition from a photo with RUDOLPH.
//!
//! Module map (one room per part of the architecture):
//! - [`cli`]: the `borscht` command and its subcommands.
//! - [`server`]: the axum HTTP/WebSocket service that hosts the model.
//!
//! Rooms to come, each with its issue: `model/` (tokenizer, transformer,
//! vqgan), `pipelines/`, `train/` and `nutrition`.

pub mod cli;
pub mod server;
