//! Training: our own VQGAN ([`vqgan`]), RUDOLPH ([`rudolph`]: the article's fine-tuning, or from
//! scratch), the demo data ([`demo_data`]) and measuring a model ([`evaluate`]).
//! Shared helpers live here: image folders, progress bars, atomic checkpoint writes.

pub mod augment;
pub mod data;
pub mod demo_data;
pub mod dropout;
pub mod evaluate;
pub mod loss;
pub mod non_food;
pub mod optim;
pub mod perceptual;
pub mod rudolph;
pub mod vqgan;

pub use borscht_model::checkpoint::write_atomically;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Image files under `dir` (recursively), sorted for reproducibility.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).with_context(|| format!("cannot read folder {}", folder.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "webp" | "bmp" | "gif")
            }) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A progress bar with loss and ETA (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// A two-layer model for unit tests: hidden 32 over 4 + 16 + 4 tokens.
#[cfg(test)]
pub(crate) fn small_test_config() -> borscht_model::config::RudolphConfig {
    borscht_model::config::RudolphConfig {
        num_layers: 2,
        hidden_size: 32,
        num_attention_heads: 2,
        l_text_seq_length: 4,
        image_tokens_per_dim: 4,
        r_text_seq_length: 4,
        vocab_size: 40,
        image_vocab_size: 16,
        ..borscht_model::config::RudolphConfig::rudolph_350m()
    }
}
