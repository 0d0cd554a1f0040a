//! Opening checkpoint files of any of our formats as a candle `VarBuilder` backend,
//! with errors that name the file, the tensor and the expected shape.
//!
//! Formats: safetensors; `torch.save` zip pickles (`pytorch_model.bin`); PyTorch
//! Lightning checkpoints (`*.ckpt`: weights under `state_dict`). Lightning pickles
//! an `AttributeDict` (a dict subclass) in `hyper_parameters`, which candle's pickle
//! reader cannot rebuild, failing the whole file: [`readable_copy`] rewrites that
//! one construct into a plain `OrderedDict` in a temporary copy.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::io::{Read, Write};
use std::path::Path;

/// Wraps a backend so that a missing or mis-shaped tensor names the file and the shape wanted.
struct NamedFile {
    inner: Box<dyn SimpleBackend>,
    file: String,
    /// A readable copy the inner backend reads from (deleted when the backend goes).
    _copy: Option<tempfile::NamedTempFile>,
}

impl SimpleBackend for NamedFile {
    fn get(&self, shape: Shape, name: &str, hints: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.inner.contains_tensor(name) {
            candle_core::bail!("{}: missing tensor `{name}` (expected shape {:?})", self.file, shape.dims());
        }
        self.inner.get(shape.clone(), name, hints, dtype, dev).map_err(|e| {
            candle_core::Error::Msg(format!("{}: tensor `{name}` (expected shape {:?}): {e}", self.file, shape.dims()))
        })
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// A `VarBuilder` over a checkpoint; `state_key` picks a nested dict (`state_dict` for Lightning).
pub fn var_builder(path: &Path, state_key: Option<&str>, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let (inner, copy): (Box<dyn SimpleBackend>, _) = if path.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: the mapped file is only read, and we never write checkpoints in place.
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
        (Box::new(tensors), None)
    } else {
        let (tensors, copy) = open_pth(path, state_key)?;
        (Box::new(tensors), copy)
    };
    let backend: Box<dyn SimpleBackend> = Box::new(NamedFile { inner, file: path.display().to_string(), _copy: copy });
    Ok(VarBuilder::from_backend(backend, dtype, device.clone()))
}

/// All tensors of a checkpoint (for conversion), as stored.
pub fn read_all(path: &Path, state_key: Option<&str>) -> Result<Vec<(String, Tensor)>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(candle_core::safetensors::load(path, &Device::Cpu)?.into_iter().collect());
    }
    let read = |p: &Path| match state_key {
        Some(key) => candle_core::pickle::read_all_with_key(p, Some(key)),
        None => candle_core::pickle::read_all(p),
    };
    match read(path) {
        Ok(tensors) => Ok(tensors),
        Err(first) => {
            let copy = readable_copy(path)
                .with_context(|| format!("cannot read torch checkpoint {}: {first}", path.display()))?;
            read(copy.path()).with_context(|| format!("cannot read torch checkpoint {}", path.display()))
        }
    }
}

/// The tensors of a torch zip pickle, and the readable copy they live in when one was needed
/// (PthTensors reopens its file for every tensor, so the copy must outlive it).
fn open_pth(
    path: &Path,
    state_key: Option<&str>,
) -> Result<(candle_core::pickle::PthTensors, Option<tempfile::NamedTempFile>)> {
    match candle_core::pickle::PthTensors::new(path, state_key) {
        Ok(tensors) => Ok((tensors, None)),
        Err(first) => {
            let copy = readable_copy(path)
                .with_context(|| format!("cannot read torch checkpoint {}: {first}", path.display()))?;
            let tensors = candle_core::pickle::PthTensors::new(copy.path(), state_key)
                .with_context(|| format!("cannot read torch checkpoint {}", path.display()))?;
            Ok((tensors, Some(copy)))
        }
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves half a checkpoint.
pub fn write_atomically(target: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    let temp = target.with_file_name(format!(".{name}.tmp"));
    write(&temp)?;
    std::fs::rename(&temp, target).with_context(|| format!("cannot move {} into place", target.display()))
}

/// Dict subclasses that checkpoints pickle and candle cannot rebuild.
const DICT_SUBCLASSES: &[(&str, &str)] = &[
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),
    ("lightning_fabric.utilities.data", "AttributeDict"),
    ("lightning.fabric.utilities.data", "AttributeDict"),
];

/// Copies the checkpoint zip into a temporary file whose pickle builds the dict
/// subclasses above as `collections.OrderedDict` (`GLOBAL cls; [PUT]; EMPTY_TUPLE;
/// NEWOBJ` becomes `GLOBAL OrderedDict; [PUT]; EMPTY_TUPLE; REDUCE`).
pub fn readable_copy(path: &Path) -> Result<tempfile::NamedTempFile> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path)?).context("not a torch zip checkpoint")?;
    let copy = tempfile::Builder::new().prefix("borscht-ckpt-").suffix(".pt").tempfile()?;
    let mut writer = zip::ZipWriter::new(copy.reopen()?);
    let mut changed = false;
    for i in 0..archive.len() {
        let entry = archive.by_index(i)?;
        let name = entry.name()?.into_owned();
        if name.ends_with("data.pkl") {
            let mut pickle = Vec::new();
            entry.take(u64::MAX).read_to_end(&mut pickle)?;
            let rewritten = rewrite_dict_subclasses(&pickle);
            changed |= rewritten != pickle;
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            writer.start_file(name, options)?;
            writer.write_all(&rewritten)?;
        } else {
            writer.raw_copy_file(entry)?;
        }
    }
    writer.finish()?;
    anyhow::ensure!(changed, "its pickle holds an object candle cannot read, and not a known dict subclass");
    Ok(copy)
}

fn rewrite_dict_subclasses(pickle: &[u8]) -> Vec<u8> {
    let mut out = pickle.to_vec();
    for (module, class) in DICT_SUBCLASSES {
        let global = format!("c{module}\n{class}\n").into_bytes();
        let replacement = b"ccollections\nOrderedDict\n".to_vec();
        let mut memo_refs: Vec<Vec<u8>> = Vec::new();
        let mut search = 0;
        while let Some(at) = find(&out[search..], &global).map(|i| i + search) {
            out.splice(at..at + global.len(), replacement.iter().copied());
            let mut pos = at + replacement.len();
            // BINPUT n / LONG_BINPUT n memoises the class: later uses are BINGET n / LONG_BINGET n.
            match out.get(pos) {
                Some(b'q') if pos + 1 < out.len() => {
                    memo_refs.push(vec![b'h', out[pos + 1]]);
                    pos += 2;
                }
                Some(b'r') if pos + 4 < out.len() => {
                    memo_refs.push([&[b'j'][..], &out[pos + 1..pos + 5]].concat());
                    pos += 5;
                }
                _ => {}
            }
            if out.get(pos) == Some(&b')') && out.get(pos + 1) == Some(&0x81) {
                out[pos + 1] = b'R';
            }
            search = pos;
        }
        for memo in memo_refs {
            let pattern = [memo.as_slice(), b")\x81"].concat();
            let mut search = 0;
            while let Some(at) = find(&out[search..], &pattern).map(|i| i + search) {
                let end = at + pattern.len();
                out[end - 1] = b'R';
                search = end;
            }
        }
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_newobj_of_attribute_dict_and_its_memo_references() {
        let pickle = b"\x80\x02}q\x00(X\x01\x00\x00\x00acpytorch_lightning.utilities.parsing\nAttributeDict\nq\x07)\x81q\x08Xbh\x07)\x81q\x09u.";
        let out = rewrite_dict_subclasses(pickle);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("ccollections\nOrderedDict\nq\x07)R"), "{text:?}");
        assert!(text.contains("h\x07)Rq\x09"), "{text:?}");
        assert!(!text.contains("AttributeDict"));
    }
}
