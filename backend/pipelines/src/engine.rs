//! The model bundle every pipeline runs on.
//!
//! A model directory holds the three parts side by side:
//! `config.json` + `model.safetensors` (or `pytorch_model.bin`) for RUDOLPH,
//! `bpe.model` for the tokenizer and `vqgan/` (config.json + weights) for the VQGAN.
//! A hub id fetches the parts from their official repositories instead ([`HubBundle`],
//! docs/hub.md).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::DynamicImage;
use std::path::{Path, PathBuf};

use super::decoder::StepPool;
use super::honesty::Calibration;
use crate::imaging;
use borscht_model::tokenizer::TextTokenizer;
use borscht_model::transformer::Rudolph;
use borscht_model::vqgan::{load_vqgan, load_vqgan_file, Vqgan, VqganConfig};
use borscht_model::weights::hub::{explain_load_failure, Hub};
use borscht_model::weights::{
    is_hub_id, load_model, local_model, HubOptions, ModelFiles, OFFICIAL_BPE, OFFICIAL_VQGAN,
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
    /// How sure the model's answers are (`calibration.json` beside the model), if known.
    pub calibration: Option<Calibration>,
    /// The dishes the model knows (`dishes.json` beside the model; empty if unknown).
    pub dishes: Vec<borscht_protocol::Dish>,
}

/// The VQGAN runs in f32 whatever the transformer's dtype, as the reference keeps it: in
/// half precision its pixels drift by about 1.4 % of full scale (`borscht device-check`),
/// and it is a small part of the work.
pub const VQGAN_DTYPE: DType = DType::F32;

impl Engine {
    /// The static decoding steps kept between requests, for the device check to switch
    /// graphs and static steps on and off.
    pub fn static_steps(&self) -> &StepPool {
        &self.steps
    }

    /// Loads a model directory (see the module docs).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let model = load_model(&local_model(dir)?, device, dtype)?;
        let tokenizer = TextTokenizer::load(dir.join(BPE_FILE))
            .with_context(|| format!("model directory {} needs its tokenizer", dir.display()))?;
        let vqgan = load_vqgan(&dir.join(VQGAN_DIR), device, VQGAN_DTYPE)
            .with_context(|| format!("model directory {} needs its VQGAN in {VQGAN_DIR}/", dir.display()))?;
        let mut engine = Self::from_parts(model, tokenizer, vqgan)?;
        engine.calibration = Calibration::load(dir)?;
        engine.dishes = super::dishes::load(dir)?;
        Ok(engine)
    }

    /// A model directory, or a hub id such as `sberbank-ai/RuDOLPH-350M` (see [`HubBundle::fetch`]).
    /// Downloads happen once; the hub cache serves them offline.
    pub fn resolve(spec: &str, hub: &HubOptions, device: &Device, dtype: DType) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() || !is_hub_id(spec) {
            return Self::load(path, device, dtype);
        }
        Self::from_bundle(&HubBundle::fetch(spec, hub)?, device, dtype)
    }

    /// Loads fetched parts with the configs the bundle names. A part that will not load is
    /// checked against the hub's hash: a damaged cached file is removed and said so.
    pub fn from_bundle(bundle: &HubBundle, device: &Device, dtype: DType) -> Result<Self> {
        let model =
            load_model(&bundle.model, device, dtype).map_err(|e| explain_load_failure(&bundle.model.weights, e))?;
        let tokenizer = TextTokenizer::load(&bundle.bpe)
            .with_context(|| format!("cannot read the tokenizer {}", bundle.bpe.display()))
            .map_err(|e| explain_load_failure(&bundle.bpe, e))?;
        let vqgan = load_vqgan_file(&bundle.vqgan, &bundle.vqgan_config, device, VQGAN_DTYPE)
            .with_context(|| format!("cannot load the VQGAN {}", bundle.vqgan.display()))
            .map_err(|e| explain_load_failure(&bundle.vqgan, e))?;
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
        Ok(Engine {
            model,
            tokenizer,
            vqgan,
            device,
            steps: StepPool::default(),
            calibration: None,
            dishes: Vec::new(),
        })
    }

    /// Side of the square photos are prepared at (codes per side x the VQGAN's factor).
    pub fn image_size(&self) -> u32 {
        borscht_model::image_side(self.model.config(), self.vqgan.config())
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

/// A hub model's three parts, in the hub cache, not yet loaded.
#[derive(Debug, Clone)]
pub struct HubBundle {
    /// The transformer: weights from the model repository, with its config.json or the
    /// official preset (the official repositories ship none).
    pub model: ModelFiles,
    /// The repository's own bpe.model, or the official one.
    pub bpe: PathBuf,
    /// Sber's VQGAN checkpoint, shared by every RUDOLPH.
    pub vqgan: PathBuf,
    /// Its shape: known, as its repository ships no config either.
    pub vqgan_config: VqganConfig,
}

impl HubBundle {
    /// Finds in the hub cache, or downloads, what hub id `spec` needs: `config.json` (if
    /// any) and `model.safetensors` or `pytorch_model.bin` from `spec`, `bpe.model` from
    /// `spec` or else `shonenkov/rudalle-utils`, and `vqgan.gumbelf8-sber.model.ckpt`
    /// from `sberbank-ai/rudalle-utils`. Nothing is requested for files already cached
    /// or known to be absent.
    pub fn fetch(spec: &str, options: &HubOptions) -> Result<Self> {
        let hub = Hub::new(options)?;
        let model = hub.model(spec)?;
        let bpe = hub.first_of(&[(spec, BPE_FILE), OFFICIAL_BPE])?;
        let vqgan = hub.file(OFFICIAL_VQGAN.0, OFFICIAL_VQGAN.1)?;
        Ok(HubBundle { model, bpe, vqgan, vqgan_config: VqganConfig::sber() })
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
