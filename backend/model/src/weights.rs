//! Finding, checking, loading and converting RUDOLPH checkpoints.
//!
//! A model is a directory with `config.json` (our [`RudolphConfig`], or the
//! reference's `{"model_params": {...}}`) and `model.safetensors` or the hub's
//! `pytorch_model.bin` (a torch zip pickle). `--model owner/name` downloads the
//! official files from the Hugging Face hub into its cache ([`hub`], docs/hub.md; the
//! official repos ship no config: their preset is known).

use crate::config::RudolphConfig;
use crate::transformer::Rudolph;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub mod hub;

pub const CONFIG_FILE: &str = "config.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const PTH_FILE: &str = "pytorch_model.bin";

/// Where a model's files are.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: RudolphConfig,
    pub weights: PathBuf,
}

/// Reads a config file: ours, or the reference's `{"model_params": {...}}`.
pub fn read_config(path: &Path) -> Result<RudolphConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    if let Some(params) = value.get_mut("model_params") {
        value = params.take();
    }
    let config: RudolphConfig =
        serde_json::from_value(value).with_context(|| format!("{} is not a RUDOLPH config", path.display()))?;
    config.validate().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(config)
}

/// Finds the files of a local model directory.
pub fn local_model(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let weights = [SAFETENSORS_FILE, PTH_FILE]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{} holds neither {SAFETENSORS_FILE} nor {PTH_FILE}", dir.display()))?;
    Ok(ModelFiles { config, weights })
}

/// Options for fetching from the Hugging Face hub (see [`hub::Hub::new`] for the defaults).
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Cache folder (default: `$HF_HUB_CACHE`, or `$HF_HOME/hub`, as huggingface_hub uses).
    pub cache_dir: Option<PathBuf>,
    /// Hub address (default `$HF_ENDPOINT`, or `https://huggingface.co`).
    pub endpoint: Option<String>,
}

/// `spec` is a local directory, or a hub repository id like `sberbank-ai/RuDOLPH-350M`.
pub fn resolve_model(spec: &str, hub: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.exists() {
        return local_model(path);
    }
    if !is_hub_id(spec) {
        bail!("model {spec:?} is neither a directory nor a hub id of the form owner/name");
    }
    let files = hub::Hub::new(hub)?.model(spec)?;
    // Only the header is read: a damaged or mismatched download is reported here, with
    // whether the cached file is still what the hub served.
    check_checkpoint(&files.weights, &files.config).map_err(|e| hub::explain_load_failure(&files.weights, e))?;
    Ok(files)
}

/// `owner/name`, not a path (`./x/y`, `/x`, `~/x`).
pub fn is_hub_id(spec: &str) -> bool {
    spec.split('/').count() == 2 && !spec.starts_with(['.', '/', '~'])
}

/// One file of a hub repository: downloaded once, then read from the cache.
pub fn hub_file(repo: &str, file: &str, hub: &HubOptions) -> Result<PathBuf> {
    hub::Hub::new(hub)?.file(repo, file)
}

/// Where the official tokenizer and VQGAN live (RUDOLPH repositories hold only the transformer).
pub const OFFICIAL_BPE: (&str, &str) = ("shonenkov/rudalle-utils", "bpe.model");
pub const OFFICIAL_VQGAN: (&str, &str) = ("sberbank-ai/rudalle-utils", "vqgan.gumbelf8-sber.model.ckpt");

/// Every tensor the model reads, with its shape (mask buffers are rebuilt, not read).
pub fn expected_tensors(cfg: &RudolphConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let mut t = vec![
        ("text_embeddings.weight".to_string(), vec![cfg.text_vocab(), h]),
        ("image_embeddings.weight".into(), vec![cfg.image_vocab(), h]),
        ("l_text_pos_embeddings.weight".into(), vec![cfg.l_text_seq_length + 1, h]),
        ("r_text_pos_embeddings.weight".into(), vec![cfg.r_text_seq_length + 1, h]),
        ("image_row_embeddings.weight".into(), vec![cfg.image_tokens_per_dim, h]),
        ("image_col_embeddings.weight".into(), vec![cfg.image_tokens_per_dim, h]),
        ("to_logits.0.weight".into(), vec![h]),
        ("to_logits.0.bias".into(), vec![h]),
        ("to_logits.1.weight".into(), vec![cfg.total_vocab(), h]),
        ("to_logits.1.bias".into(), vec![cfg.total_vocab()]),
        ("transformer.final_layernorm.weight".into(), vec![h]),
        ("transformer.final_layernorm.bias".into(), vec![h]),
    ];
    let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
    if cfg.cogview_sandwich_layernorm {
        norms.extend(["before_first_addition_layernorm", "before_second_addition_layernorm"]);
    }
    for i in 0..cfg.num_layers {
        let p = format!("transformer.layers.{i}");
        for norm in &norms {
            t.push((format!("{p}.{norm}.weight"), vec![h]));
            t.push((format!("{p}.{norm}.bias"), vec![h]));
        }
        for (name, out, inp) in [
            ("attention.query_key_value", 3 * h, h),
            ("attention.dense", h, h),
            ("mlp.dense_h_to_4h", 4 * h, h),
            ("mlp.dense_4h_to_h", h, 4 * h),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![out, inp]));
            t.push((format!("{p}.{name}.bias"), vec![out]));
        }
    }
    t
}

/// Names and shapes of the tensors stored in a checkpoint file.
pub fn stored_tensor_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>> {
    if is_safetensors(path) {
        // SAFETY: the file is not modified while mapped (we only read it here).
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
        Ok(st.tensors().into_iter().map(|(name, view)| (name, view.shape().to_vec())).collect())
    } else {
        // Candle's pickle reader trusts the file: refuse what it would panic or run out of memory on.
        crate::checkpoint::check_torch_file(path, None)
            .with_context(|| format!("cannot read torch checkpoint {}", path.display()))?;
        let infos = candle_core::pickle::read_pth_tensor_info(path, false, None)
            .with_context(|| format!("cannot read torch checkpoint {}", path.display()))?;
        Ok(infos.into_iter().map(|i| (i.name, i.layout.shape().dims().to_vec())).collect())
    }
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Checks a checkpoint against the config before loading, naming the file, the key and
/// the expected shape of the first problem (and how many there are).
pub fn check_checkpoint(path: &Path, cfg: &RudolphConfig) -> Result<()> {
    let stored = stored_tensor_shapes(path)?;
    let mut problems = Vec::new();
    for (name, shape) in expected_tensors(cfg) {
        match stored.get(&name) {
            None => problems.push(format!("missing tensor `{name}` (expected shape {shape:?})")),
            Some(got) if *got != shape => {
                problems.push(format!("tensor `{name}` has shape {got:?}, expected {shape:?}"))
            }
            Some(_) => {}
        }
    }
    if let Some(first) = problems.first() {
        bail!(
            "checkpoint {} does not fit the config: {first}{}",
            path.display(),
            if problems.len() > 1 { format!(" (and {} more problems)", problems.len() - 1) } else { String::new() }
        );
    }
    Ok(())
}

/// Loads the model onto `device` in `dtype`.
pub fn load_model(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Rudolph> {
    check_checkpoint(&files.weights, &files.config)?;
    let vb = if is_safetensors(&files.weights) {
        // SAFETY: as above, the mapped file is only read.
        unsafe { VarBuilder::from_mmaped_safetensors(&[&files.weights], dtype, device)? }
    } else {
        VarBuilder::from_pth(&files.weights, dtype, device)?
    };
    Rudolph::new(&files.config, vb).with_context(|| format!("cannot build RUDOLPH from {}", files.weights.display()))
}

/// Writes `out_dir/config.json` + `out_dir/model.safetensors` in `dtype` (what `borscht convert` does).
pub fn convert(files: &ModelFiles, out_dir: &Path, dtype: DType) -> Result<()> {
    check_checkpoint(&files.weights, &files.config)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let tensors: HashMap<String, Tensor> = if is_safetensors(&files.weights) {
        candle_core::safetensors::load(&files.weights, &Device::Cpu)?
    } else {
        candle_core::pickle::read_all(&files.weights)?.into_iter().collect()
    };
    let wanted: HashMap<String, Vec<usize>> = expected_tensors(&files.config).into_iter().collect();
    let converted = tensors
        .into_iter()
        .filter(|(name, _)| wanted.contains_key(name))
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    crate::checkpoint::write_atomically(&out_dir.join(SAFETENSORS_FILE), |p| {
        Ok(candle_core::safetensors::save(&converted, p)?)
    })?;
    std::fs::write(out_dir.join(CONFIG_FILE), serde_json::to_string_pretty(&files.config)?)?;
    Ok(())
}

/// Loads the model with every weight as a trainable `Var` (for fine-tuning and gradients).
pub fn load_trainable(files: &ModelFiles, device: &Device) -> Result<(candle_nn::VarMap, Rudolph)> {
    check_checkpoint(&files.weights, &files.config)?;
    let mut varmap = candle_nn::VarMap::new();
    let model = Rudolph::new(&files.config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let stored: Vec<(String, Tensor)> = if is_safetensors(&files.weights) {
        candle_core::safetensors::load(&files.weights, device)?.into_iter().collect()
    } else {
        candle_core::pickle::read_all(&files.weights)?
    };
    let wanted: HashMap<String, Vec<usize>> = expected_tensors(&files.config).into_iter().collect();
    for (name, tensor) in stored.into_iter().filter(|(name, _)| wanted.contains_key(name)) {
        varmap.set_one(&name, tensor.to_dtype(DType::F32)?.to_device(device)?)?;
    }
    Ok((varmap, model))
}
