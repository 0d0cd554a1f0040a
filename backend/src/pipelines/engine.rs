//! The model bundle every pipeline runs on.
//!
//! A model directory holds the three parts side by side:
//! `config.json` + `model.safetensors` (or `pytorch_model.bin`) for RUDOLPH,
//! `bpe.model` for the tokenizer and `vqgan/` (config.json + weights) for the VQGAN.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::DynamicImage;
use std::path::Path;

use super::decoder::StepPool;
use crate::imaging;
use crate::model::tokenizer::TextTokenizer;
use crate::model::transformer::Rudolph;
use crate::model::vqgan::{load_vqgan, load_vqgan_file, Vqgan, VqganConfig};
use crate::model::weights::{
    hub_file, is_hub_id, load_model, local_model, resolve_model, HubOptions, OFFICIAL_BPE, OFFICIAL_VQGAN,
};

pub const BPE_FILE: &str = "bpe.model";
pub const VQGAN_DIR: &str = "vqgan";

pub struct Engine {
    pub model: Rudolph,
    pub tokenizer: TextTokenizer,
    pub vqgan: Vqgan,
    pub device: Device,
    /// Static decoding steps (CUDA graphs) kept between requests.
    pub(crate) steps: StepPool,
}

/// The VQGAN runs in f32 whatever the transformer's dtype, as the reference keeps it: in
/// half precision its pixels drift by about 1.4 % of full scale (`borscht device-check`),
/// and it is a small part of the work.
pub const VQGAN_DTYPE: DType = DType::F32;

impl Engine {
    /// Loads a model directory (see the module docs).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let model = load_model(&local_model(dir)?, device, dtype)?;
        let tokenizer = TextTokenizer::load(dir.join(BPE_FILE))
            .with_context(|| format!("model directory {} needs its tokenizer", dir.display()))?;
        let vqgan = load_vqgan(&dir.join(VQGAN_DIR), device, VQGAN_DTYPE)
            .with_context(|| format!("model directory {} needs its VQGAN in {VQGAN_DIR}/", dir.display()))?;
        Self::from_parts(model, tokenizer, vqgan)
    }

    /// A model directory, or a hub id such as `sberbank-ai/RuDOLPH-350M`: the transformer
    /// from that repository, the tokenizer from its repository or the official one, and
    /// the official Sber VQGAN. Downloads happen once; the hub cache serves them offline.
    pub fn resolve(spec: &str, hub: &HubOptions, device: &Device, dtype: DType) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() || !is_hub_id(spec) {
            return Self::load(path, device, dtype);
        }
        let files = resolve_model(spec, hub)?;
        let model = load_model(&files, device, dtype)?;
        let bpe = hub_file(spec, BPE_FILE, hub).or_else(|_| hub_file(OFFICIAL_BPE.0, OFFICIAL_BPE.1, hub))?;
        let tokenizer = TextTokenizer::load(&bpe).with_context(|| format!("cannot read {}", bpe.display()))?;
        let ckpt = hub_file(OFFICIAL_VQGAN.0, OFFICIAL_VQGAN.1, hub)?;
        let vqgan = load_vqgan_file(&ckpt, &VqganConfig::sber(), device, VQGAN_DTYPE)?;
        Self::from_parts(model, tokenizer, vqgan)
    }

    /// Checks that the three parts fit together.
    pub fn from_parts(model: Rudolph, tokenizer: TextTokenizer, vqgan: Vqgan) -> Result<Self> {
        let cfg = model.config();
        if tokenizer.vocab_size() + cfg.l_text_seq_length > cfg.text_vocab() {
            bail!(
                "the tokenizer has {} ids but the model's text vocabulary {} leaves room for only {} besides the {} l_text pad ids",
                tokenizer.vocab_size(),
                cfg.text_vocab(),
                cfg.text_vocab() - cfg.l_text_seq_length,
                cfg.l_text_seq_length
            );
        }
        if vqgan.config().n_embed != cfg.image_vocab_size {
            bail!("the VQGAN has {} codes but the model expects {}", vqgan.config().n_embed, cfg.image_vocab_size);
        }
        let device = model.device().clone();
        Ok(Engine { model, tokenizer, vqgan, device, steps: StepPool::default() })
    }

    /// Side of the square photos are prepared at (codes per side x the VQGAN's factor).
    pub fn image_size(&self) -> u32 {
        (self.model.config().image_tokens_per_dim * self.vqgan.config().downsample_factor()) as u32
    }

    /// The photo's image codes `[1, I]` (argmax codes, deterministic).
    pub fn image_codes(&self, image: &DynamicImage) -> Result<Tensor> {
        let prepared = imaging::prepare(image, self.image_size(), &self.device)?.unsqueeze(0)?;
        Ok(self.vqgan.encode(&prepared.to_dtype(VQGAN_DTYPE)?)?)
    }

    /// The photo's codes as the pipelines take them (one photo, `I` codes).
    pub fn photo_codes(&self, image: &DynamicImage) -> Result<Vec<u32>> {
        Ok(self.image_codes(image)?.squeeze(0)?.to_vec1()?)
    }

    /// `text` as the reference feeds it: lower-cased, trimmed, `[BOS] ids [EOS]` padded to `len`.
    pub fn encode_text(&self, text: &str, len: usize) -> Vec<u32> {
        self.tokenizer.encode_text(text.to_lowercase().trim(), len)
    }

    /// Refuses a text holding characters the tokenizer has no id for: each run of them
    /// reads as one unknown token, so the model would answer about nothing (Latin dish
    /// names, say, for a model trained on Russian captions).
    pub fn check_known(&self, text: &str) -> std::result::Result<(), UnknownCharacters> {
        let unknown = self.tokenizer.bpe().unknown_chars(text.to_lowercase().trim());
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(UnknownCharacters { text: text.to_string(), chars: unknown })
        }
    }
}

/// A text the model cannot read: these characters are not in its vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCharacters {
    pub text: String,
    pub chars: Vec<char>,
}

impl std::fmt::Display for UnknownCharacters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chars: Vec<String> = self.chars.iter().map(|c| format!("«{c}»")).collect();
        write!(
            f,
            "«{}»: the model's vocabulary has no {}; write it the way the model's captions are written \
             (in Russian for RUDOLPH and the demo model)",
            self.text,
            chars.join(", ")
        )
    }
}

impl std::error::Error for UnknownCharacters {}
