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
    let read = |p: &Path| -> Result<Vec<(String, Tensor)>> {
        check_torch_file(p, state_key)?;
        Ok(match state_key {
            Some(key) => candle_core::pickle::read_all_with_key(p, Some(key)),
            None => candle_core::pickle::read_all(p),
        }?)
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
    let open = |p: &Path| -> Result<candle_core::pickle::PthTensors> {
        check_torch_file(p, state_key)?;
        Ok(candle_core::pickle::PthTensors::new(p, state_key)?)
    };
    match open(path) {
        Ok(tensors) => Ok((tensors, None)),
        Err(first) => {
            let copy = readable_copy(path)
                .with_context(|| format!("cannot read torch checkpoint {}: {first}", path.display()))?;
            let tensors =
                open(copy.path()).with_context(|| format!("cannot read torch checkpoint {}", path.display()))?;
            Ok((tensors, Some(copy)))
        }
    }
}

/// Largest pickle a checkpoint may hold: a real one takes some 150 bytes a tensor.
const MAX_PICKLE_BYTES: u64 = 16 << 20;
/// Most memory the objects candle builds from a pickle may take (as [`scan_pickle`]
/// estimates it): a few times the pickle's size for a real checkpoint.
const MAX_PICKLE_OBJECT_BYTES: u64 = 512 << 20;
/// Deepest nesting of pickled objects (candle clones and drops them recursively); a
/// state dict nests some ten deep.
const MAX_PICKLE_DEPTH: u32 = 256;

/// Checks a torch zip checkpoint before candle reads it. Candle's pickle reader trusts
/// the file: it allocates a string's or a tensor's claimed length before reading it,
/// clones memoised objects however often they are referenced, recurses as deep as they
/// nest, and panics on short argument tuples. A corrupt or hostile file is refused here
/// with an error instead.
pub fn check_torch_file(path: &Path, state_key: Option<&str>) -> Result<()> {
    let file_len = std::fs::metadata(path)?.len();
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path)?).context("not a torch zip checkpoint")?;
    for i in 0..archive.len() {
        let entry = archive.by_index(i)?;
        if entry.name()?.ends_with("data.pkl") {
            scan_pickle(&read_pickle(entry)?)?;
        }
    }
    // The pickle now builds within bounds; what candle still panics on becomes an error.
    let infos = std::panic::catch_unwind(|| candle_core::pickle::read_pth_tensor_info(path, false, state_key))
        .map_err(|_| anyhow::anyhow!("malformed pickle: a tensor's arguments are not what torch writes"))??;
    let (mut claimed, mut stored) = (0u64, std::collections::HashMap::new());
    for info in infos {
        let entry = archive.by_name(&info.path).with_context(|| format!("tensor `{}`'s data", info.name))?;
        // A stored entry (torch compresses none) gives at most its compressed bytes, and
        // those lie in the file.
        let available = entry.size().min(entry.compressed_size()).min(file_len);
        // Products of the nonzero sides (candle forms them checking contiguity) must fit too.
        let elements = info
            .layout
            .dims()
            .iter()
            .try_fold(1u64, |product, &side| product.checked_mul(side.max(1) as u64))
            .map(|product| if info.layout.dims().contains(&0) { 0 } else { product });
        let needed = elements
            .and_then(|n| n.checked_mul(info.dtype.size_in_bytes() as u64))
            .and_then(|n| n.checked_add(info.layout.start_offset() as u64));
        match needed {
            Some(needed) if needed <= available => {
                claimed += needed;
                stored.insert(info.path, available);
            }
            _ => anyhow::bail!(
                "tensor `{}` claims shape {:?} from offset {}, more than the {available} bytes of its data",
                info.name,
                info.layout.dims(),
                info.layout.start_offset()
            ),
        }
    }
    // Views may share storage (tied weights), but not without bound.
    let stored: u64 = stored.values().sum();
    anyhow::ensure!(claimed <= stored.saturating_mul(4), "tensors claim {claimed} bytes of {stored} stored");
    Ok(())
}

/// A pickle entry's bytes, up to [`MAX_PICKLE_BYTES`].
fn read_pickle(entry: impl Read) -> Result<Vec<u8>> {
    let mut pickle = Vec::new();
    entry.take(MAX_PICKLE_BYTES + 1).read_to_end(&mut pickle)?;
    anyhow::ensure!(pickle.len() as u64 <= MAX_PICKLE_BYTES, "the pickle is over {MAX_PICKLE_BYTES} bytes");
    Ok(pickle)
}

/// What [`scan_pickle`] knows of an object candle would build.
#[derive(Clone, Copy)]
struct Built {
    /// About its memory, its parts included.
    bytes: u64,
    depth: u32,
    mark: bool,
}

impl Built {
    /// About one candle `Object`.
    const OBJECT: u64 = 64;

    fn leaf(extra: u64) -> Built {
        Built { bytes: Built::OBJECT + extra, depth: 1, mark: false }
    }

    fn parent(parts: &[Built]) -> Built {
        Built {
            bytes: Built::OBJECT + parts.iter().map(|p| p.bytes).sum::<u64>(),
            depth: 1 + parts.iter().map(|p| p.depth).max().unwrap_or(0),
            mark: false,
        }
    }
}

fn malformed(what: &str) -> anyhow::Error {
    anyhow::anyhow!("malformed pickle: {what}")
}

/// The next `n` bytes of the pickle.
fn take<'a>(pickle: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
    let bytes = pickle.get(*at..at.saturating_add(n)).ok_or_else(|| malformed("an argument runs past its end"))?;
    *at += n;
    Ok(bytes)
}

fn take_u32(pickle: &[u8], at: &mut usize) -> Result<u32> {
    Ok(u32::from_le_bytes(take(pickle, at, 4)?.try_into().expect("four bytes")))
}

fn pop(stack: &mut Vec<Built>, n: usize) -> Result<Vec<Built>> {
    anyhow::ensure!(stack.len() >= n, malformed("an opcode pops an empty stack"));
    Ok(stack.split_off(stack.len() - n))
}

fn pop_to_mark(stack: &mut Vec<Built>) -> Result<Vec<Built>> {
    let mark = stack.iter().rposition(|b| b.mark).ok_or_else(|| malformed("no MARK to pop to"))?;
    let parts = stack.split_off(mark + 1);
    stack.pop();
    Ok(parts)
}

/// Runs a pickle's opcodes as candle's reader does (the ones it knows), building only
/// each object's size and depth, and refuses it when an argument runs past its end or
/// the objects would take over [`MAX_PICKLE_OBJECT_BYTES`] or nest over
/// [`MAX_PICKLE_DEPTH`]. What candle refuses (an unknown opcode, an empty stack) is
/// refused too.
fn scan_pickle(pickle: &[u8]) -> Result<()> {
    let mut stack: Vec<Built> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Built> = std::collections::HashMap::new();
    // Bytes of the objects built so far, clones for the memo included.
    let mut built = 0u64;
    let mut at = 0usize;
    loop {
        let op = take(pickle, &mut at, 1).map_err(|_| malformed("it ends before STOP"))?[0];
        let pushed = match op {
            0x80 => {
                take(pickle, &mut at, 1)?;
                None
            }
            b'c' => {
                // Module and class, a line each.
                let mut length = 0;
                for _ in 0..2 {
                    let rest = &pickle[at..];
                    let line = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |n| n + 1);
                    take(pickle, &mut at, line)?;
                    length += line as u64;
                }
                Some(Built::leaf(length))
            }
            b'K' | b'M' | b'J' | b'G' => {
                let width = match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                };
                take(pickle, &mut at, width)?;
                Some(Built::leaf(0))
            }
            b'X' => {
                let length = take_u32(pickle, &mut at)?;
                take(pickle, &mut at, length as usize)?;
                Some(Built::leaf(length as u64))
            }
            0x8a => {
                let length = take(pickle, &mut at, 1)?[0];
                take(pickle, &mut at, length as usize)?;
                Some(Built::leaf(0))
            }
            b'N' | 0x88 | 0x89 | b'}' | b'd' | b')' | b']' => Some(Built::leaf(0)),
            b'(' => Some(Built { mark: true, ..Built::leaf(0) }),
            0x85..=0x87 => Some(Built::parent(&pop(&mut stack, (op - 0x84) as usize)?)),
            b'Q' => Some(Built::parent(&pop(&mut stack, 1)?)),
            b'R' | 0x81 | b'b' => Some(Built::parent(&pop(&mut stack, 2)?)),
            b't' => Some(Built::parent(&pop_to_mark(&mut stack)?)),
            b'a' | b's' | b'e' | b'u' => {
                let parts = match op {
                    b'a' => pop(&mut stack, 1)?,
                    b's' => pop(&mut stack, 2)?,
                    _ => pop_to_mark(&mut stack)?,
                };
                // Added to the list or dict below them.
                let items = Built::parent(&parts);
                let last = stack.last_mut().ok_or_else(|| malformed("nothing to add items to"))?;
                last.bytes += items.bytes - Built::OBJECT;
                last.depth = last.depth.max(items.depth);
                anyhow::ensure!(last.depth <= MAX_PICKLE_DEPTH, malformed("objects nest too deep"));
                None
            }
            b'h' | b'j' => {
                let id = if op == b'h' { take(pickle, &mut at, 1)?[0] as u32 } else { take_u32(pickle, &mut at)? };
                let object = *memo.get(&id).ok_or_else(|| malformed("a memo reference to nothing"))?;
                built += object.bytes; // candle clones it
                Some(object)
            }
            b'q' | b'r' => {
                let id = if op == b'q' { take(pickle, &mut at, 1)?[0] as u32 } else { take_u32(pickle, &mut at)? };
                let object = *stack.last().ok_or_else(|| malformed("memoising an empty stack"))?;
                built += object.bytes; // candle clones it
                memo.insert(id, object);
                None
            }
            b'.' => return Ok(()),
            other => return Err(malformed(&format!("unknown opcode {other:#04x}"))),
        };
        if let Some(object) = pushed {
            built += Built::OBJECT;
            anyhow::ensure!(object.depth <= MAX_PICKLE_DEPTH, malformed("objects nest too deep"));
            stack.push(object);
        }
        anyhow::ensure!(built <= MAX_PICKLE_OBJECT_BYTES, malformed("its objects would take too much memory"));
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves half a checkpoint.
pub fn write_atomically(target: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    write_all_atomically(vec![(target.to_path_buf(), Box::new(write))])
}

/// How one file of a [`write_all_atomically`] set is written (to the path it is given).
pub type FileWriter<'a> = Box<dyn FnOnce(&Path) -> Result<()> + 'a>;

/// Writes several files as one: each goes to a temporary beside it first, and only when
/// all are written are they moved into place, in order (so the last, a training state
/// say, lands last). A failure while writing (a full disk, a permission) removes the
/// temporaries and leaves every file as it was.
pub fn write_all_atomically(files: Vec<(std::path::PathBuf, FileWriter<'_>)>) -> Result<()> {
    let mut written: Vec<(std::path::PathBuf, std::path::PathBuf)> = Vec::with_capacity(files.len());
    for (target, write) in files {
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
        let temp = target.with_file_name(format!(".{name}.tmp"));
        if let Err(e) = write(&temp).with_context(|| format!("cannot write {}", target.display())) {
            let _ = std::fs::remove_file(&temp);
            for (temp, _) in &written {
                let _ = std::fs::remove_file(temp);
            }
            return Err(e);
        }
        written.push((temp, target));
    }
    for (temp, target) in written {
        std::fs::rename(&temp, &target).with_context(|| format!("cannot move {} into place", target.display()))?;
    }
    Ok(())
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
            let pickle = read_pickle(entry)?;
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
