//! The first run with the official weights, without the internet: the hub's file API is
//! a stand-in on loopback (common_hub) serving the official repository ids and file
//! names, and the official 350M checkpoint's tensor names and shapes come from the
//! reference (scripts/fixtures/checkpoint_index_fixtures.py).
//!
//! The official repositories ship no config, so a hub id loads with the 350M preset and
//! Sber's VQGAN shape. The stand-in serves the small fixture bundle under the official
//! names: the tests fetch it exactly as `Engine::resolve` does ([`HubBundle::fetch`]),
//! then load it with the small bundle's configs ([`Engine::from_bundle`]). That the
//! preset fits the real checkpoint is checked against its index instead: the tensors
//! the model asks for, the header of a reference-written copy, and a full-size file's
//! header (a sparse file: nothing allocated, nothing on disk).

mod common_hub;

use borscht_model::config::RudolphConfig;
use borscht_model::transformer::Rudolph;
use borscht_model::vqgan::{read_vqgan_config, VqganConfig};
use borscht_model::weights::{
    check_checkpoint, expected_tensors, hub_file, read_config, resolve_model, stored_tensor_shapes, HubOptions,
};
use borscht_pipelines::engine::HubBundle;
use borscht_pipelines::Engine;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use common_hub::{commit_of, fixtures, sha256_hex, Fault, Request, StandIn, OFFICIAL_MODEL};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const BPE_REPO: &str = "shonenkov/rudalle-utils";
const VQGAN_REPO: &str = "sberbank-ai/rudalle-utils";
const VQGAN_FILE: &str = "vqgan.gumbelf8-sber.model.ckpt";

fn options(endpoint: &str, cache: &Path) -> HubOptions {
    // Read by the library in this process: set, the stand-in would never be asked.
    assert!(std::env::var_os("HF_HUB_OFFLINE").is_none(), "unset HF_HUB_OFFLINE to run the hub tests");
    HubOptions { cache_dir: Some(cache.to_path_buf()), endpoint: Some(endpoint.to_string()) }
}

/// An address nothing listens on.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn error_of<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

/// The small bundle's own configs, standing in for the presets the official ids get.
fn with_small_configs(mut bundle: HubBundle) -> HubBundle {
    let dir = fixtures().join("pipelines");
    bundle.model.config = read_config(&dir.join("config.json")).unwrap();
    bundle.vqgan_config = read_vqgan_config(&dir.join("vqgan")).unwrap();
    bundle
}

fn paths(requests: &[Request]) -> Vec<(String, String)> {
    requests.iter().map(|r| (r.path.clone(), r.range.clone().unwrap_or_default())).collect()
}

/// The hub's answers for one downloaded LFS file: headers (the redirect, then the
/// content server's size), then the bytes, through the same redirect.
fn lfs_download(repo: &str, file: &str, bytes: &[u8]) -> Vec<(String, String)> {
    let (resolve, blob) = (format!("/{repo}/resolve/main/{file}"), format!("/lfs/{}", sha256_hex(bytes)));
    [(&resolve, "bytes=0-0"), (&blob, "bytes=0-0"), (&resolve, "bytes=0-"), (&blob, "bytes=0-")]
        .into_iter()
        .map(|(p, r)| (p.clone(), r.to_string()))
        .collect()
}

fn absent(repo: &str, file: &str) -> (String, String) {
    (format!("/{repo}/resolve/main/{file}"), "bytes=0-0".into())
}

#[test]
fn the_official_bundle_downloads_once_then_loads_from_the_cache_alone() {
    let mut hub = StandIn::with_official_bundle();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&hub.endpoint, cache.path());

    let bundle = HubBundle::fetch(OFFICIAL_MODEL, &opts).unwrap();
    // The official ids get the presets: the repositories ship no config.
    assert_eq!(bundle.model.config, RudolphConfig::rudolph_350m());
    assert_eq!(bundle.vqgan_config, VqganConfig::sber());
    let (pth, bpe, vqgan) = (
        hub.bytes(OFFICIAL_MODEL, "pytorch_model.bin"),
        hub.bytes(BPE_REPO, "bpe.model"),
        hub.bytes(VQGAN_REPO, VQGAN_FILE),
    );
    let snapshot = |repo: &str, file: &str| {
        cache
            .path()
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots")
            .join(commit_of(repo))
            .join(file)
    };
    assert_eq!(bundle.model.weights, snapshot(OFFICIAL_MODEL, "pytorch_model.bin"));
    assert_eq!(bundle.bpe, snapshot(BPE_REPO, "bpe.model"));
    assert_eq!(bundle.vqgan, snapshot(VQGAN_REPO, VQGAN_FILE));
    assert_eq!(std::fs::read(&bundle.model.weights).unwrap(), pth);
    assert_eq!(std::fs::read(&bundle.bpe).unwrap(), bpe);
    assert_eq!(std::fs::read(&bundle.vqgan).unwrap(), vqgan);

    // What the first run asks: the model repository has no config, no safetensors and
    // no tokenizer of its own, so the official tokenizer is fetched.
    let mut expected = vec![absent(OFFICIAL_MODEL, "config.json"), absent(OFFICIAL_MODEL, "model.safetensors")];
    expected.extend(lfs_download(OFFICIAL_MODEL, "pytorch_model.bin", &pth));
    expected.push(absent(OFFICIAL_MODEL, "bpe.model"));
    expected.extend(lfs_download(BPE_REPO, "bpe.model", &bpe));
    expected.extend(lfs_download(VQGAN_REPO, VQGAN_FILE, &vqgan));
    assert_eq!(paths(&hub.take_requests()), expected);

    let engine = Engine::from_bundle(&with_small_configs(bundle.clone()), &Device::Cpu, DType::F32).unwrap();
    let photo = image::open(fixtures().join("pipelines/photo.png")).unwrap();
    assert_eq!(engine.photo_codes(&photo).unwrap().len(), engine.model.config().image_seq_length());

    // The second run finds everything, absent files included, in the cache: no request.
    let again = HubBundle::fetch(OFFICIAL_MODEL, &opts).unwrap();
    assert_eq!(hub.take_requests(), vec![]);
    assert_eq!((&again.model.weights, &again.bpe, &again.vqgan), (&bundle.model.weights, &bundle.bpe, &bundle.vqgan));

    // With the hub gone, the same.
    hub.stop();
    let offline = HubBundle::fetch(OFFICIAL_MODEL, &opts).unwrap();
    Engine::from_bundle(&with_small_configs(offline), &Device::Cpu, DType::F32).unwrap();
}

#[test]
fn a_download_cut_midway_resumes_where_it_stopped() {
    let hub = StandIn::with_official_bundle();
    let cache = tempfile::tempdir().unwrap();
    hub.fault(OFFICIAL_MODEL, "pytorch_model.bin", Fault::Cut { after: 100_000, times: 1 });
    let path = hub_file(OFFICIAL_MODEL, "pytorch_model.bin", &options(&hub.endpoint, cache.path())).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), hub.bytes(OFFICIAL_MODEL, "pytorch_model.bin"));
    // The retry asked only for the rest.
    let resumed: Vec<usize> = ranges_from(&hub.take_requests());
    assert!(resumed.len() == 2 && resumed[0] == 0 && resumed[1] > 0 && resumed[1] <= 100_000, "{resumed:?}");
}

/// Where each download GET (not the `bytes=0-0` header probes) to the content server started.
fn ranges_from(requests: &[Request]) -> Vec<usize> {
    requests
        .iter()
        .filter(|r| r.path.starts_with("/lfs/"))
        .filter_map(|r| r.range.as_deref()?.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .collect()
}

#[test]
fn a_download_cut_on_every_try_fails_naming_the_file_and_the_next_run_resumes() {
    let hub = StandIn::with_official_bundle();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&hub.endpoint, cache.path());
    hub.fault(OFFICIAL_MODEL, "pytorch_model.bin", Fault::Cut { after: 50_000, times: usize::MAX });
    let message = error_of(hub_file(OFFICIAL_MODEL, "pytorch_model.bin", &opts));
    assert_mentions(&message, &["pytorch_model.bin", OFFICIAL_MODEL, "bytes are kept", "run again to resume"]);
    let tries = ranges_from(&hub.take_requests());
    assert_eq!(tries.len(), 1 + borscht_model::weights::hub::RETRIES, "{tries:?}");
    assert!(tries.windows(2).all(|w| w[1] > w[0]), "each try resumes further on: {tries:?}");

    hub.clear_faults();
    let path = hub_file(OFFICIAL_MODEL, "pytorch_model.bin", &opts).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), hub.bytes(OFFICIAL_MODEL, "pytorch_model.bin"));
    let next_run = ranges_from(&hub.take_requests());
    assert!(next_run.len() == 1 && next_run[0] > *tries.last().unwrap(), "{next_run:?} after {tries:?}");
}

#[test]
fn a_partial_download_as_long_as_the_file_says_what_to_delete() {
    // A run stopped between a download's last byte and its rename leaves a whole `.part`.
    let hub = StandIn::with_official_bundle();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&hub.endpoint, cache.path());
    let bytes = hub.bytes(OFFICIAL_MODEL, "pytorch_model.bin");
    let blobs = cache.path().join("models--sberbank-ai--RuDOLPH-350M/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let part = blobs.join(format!("{}.part", sha256_hex(&bytes)));
    std::fs::write(&part, &bytes).unwrap();
    let message = error_of(hub_file(OFFICIAL_MODEL, "pytorch_model.bin", &opts));
    assert_mentions(
        &message,
        &["pytorch_model.bin", OFFICIAL_MODEL, "delete the .part files in", &blobs.display().to_string()],
    );
    std::fs::remove_file(part).unwrap();
    let path = hub_file(OFFICIAL_MODEL, "pytorch_model.bin", &opts).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
}

#[test]
fn damaged_downloads_are_refused_naming_the_file_and_fetched_anew() {
    let hub = StandIn::with_official_bundle();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&hub.endpoint, cache.path());

    // Fewer bytes than announced, or bytes changed on the way: the hub's sha256 disagrees.
    hub.fault(BPE_REPO, "bpe.model", Fault::Short(100));
    let message = error_of(HubBundle::fetch(OFFICIAL_MODEL, &opts));
    let size = hub.bytes(BPE_REPO, "bpe.model").len();
    assert_mentions(&message, &["bpe.model", BPE_REPO, "damaged", &format!("its {} bytes", size - 100), "run again"]);
    hub.clear_faults();
    hub.fault(VQGAN_REPO, VQGAN_FILE, Fault::Corrupt);
    let message = error_of(HubBundle::fetch(OFFICIAL_MODEL, &opts));
    assert_mentions(&message, &[VQGAN_FILE, VQGAN_REPO, "damaged", "sha256", "run again"]);

    // Nothing damaged stays in the cache: the run after each fetched the file again.
    hub.clear_faults();
    hub.take_requests();
    let bundle = HubBundle::fetch(OFFICIAL_MODEL, &opts).unwrap();
    assert_eq!(std::fs::read(&bundle.vqgan).unwrap(), hub.bytes(VQGAN_REPO, VQGAN_FILE));
    assert_eq!(std::fs::read(&bundle.bpe).unwrap(), hub.bytes(BPE_REPO, "bpe.model"));
    let requests = hub.take_requests();
    assert_eq!(ranges_from(&requests), vec![0], "{requests:?}");
    assert!(requests.iter().all(|r| r.path.contains(VQGAN_FILE) || r.path.starts_with("/lfs/")), "{requests:?}");

    // A cached file cut short later on (a full disk, a copy) is refused by name when it
    // fails to load, and removed, so the next run downloads it.
    let blob = std::fs::canonicalize(&bundle.model.weights).unwrap();
    let full = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &full[..full.len() / 2]).unwrap();
    let message = error_of(Engine::from_bundle(&with_small_configs(bundle.clone()), &Device::Cpu, DType::F32));
    assert_mentions(&message, &[&bundle.model.weights.display().to_string(), "damaged", "removed", "run again"]);
    let bundle = HubBundle::fetch(OFFICIAL_MODEL, &opts).unwrap();
    assert_eq!(ranges_from(&hub.take_requests()), vec![0]);
    Engine::from_bundle(&with_small_configs(bundle), &Device::Cpu, DType::F32).unwrap();
}

#[test]
fn hub_errors_say_which_repository_which_file_and_what_to_do() {
    let hub = StandIn::with_official_bundle();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&hub.endpoint, cache.path());

    // A mistyped id: the hub answers 401 for repositories it will not show.
    let message = error_of(HubBundle::fetch("sberbank-ai/RuDOLPH-35M", &opts));
    assert_mentions(&message, &["401", "config.json", "sberbank-ai/RuDOLPH-35M", "Check the repo id", "HF_TOKEN"]);

    // A repository without weights.
    hub.add_empty_repo("borscht-test/empty");
    hub.add_bytes(
        "borscht-test/empty",
        "config.json",
        std::fs::read(fixtures().join("pipelines/config.json")).unwrap(),
    );
    let message = error_of(resolve_model("borscht-test/empty", &opts));
    assert_mentions(
        &message,
        &["model.safetensors or pytorch_model.bin", "borscht-test/empty", "404", "check the repo id"],
    );

    // A missing file, and a hub in trouble.
    hub.fault(VQGAN_REPO, VQGAN_FILE, Fault::Status(500, "InternalError"));
    let message = error_of(HubBundle::fetch(OFFICIAL_MODEL, &opts));
    assert_mentions(&message, &["500", VQGAN_FILE, VQGAN_REPO, "try again later"]);
    hub.fault(VQGAN_REPO, VQGAN_FILE, Fault::Status(403, "GatedRepo"));
    let message = error_of(HubBundle::fetch(OFFICIAL_MODEL, &opts));
    assert_mentions(&message, &["403", VQGAN_FILE, "Request access", &format!("{}/{VQGAN_REPO}", hub.endpoint)]);
    hub.fault(VQGAN_REPO, VQGAN_FILE, Fault::Status(404, "EntryNotFound"));
    let message = error_of(HubBundle::fetch(OFFICIAL_MODEL, &opts));
    assert_mentions(&message, &[VQGAN_FILE, VQGAN_REPO, "404", "check the repo id"]);
    // A file the hub lacked once is still asked for when it is needed.
    hub.clear_faults();
    HubBundle::fetch(OFFICIAL_MODEL, &opts).unwrap();

    // No hub at all, nothing cached.
    let endpoint = dead_endpoint();
    let message = error_of(HubBundle::fetch(OFFICIAL_MODEL, &options(&endpoint, tempfile::tempdir().unwrap().path())));
    assert_mentions(&message, &["cannot reach the hub", &endpoint, "config.json", OFFICIAL_MODEL, "HF_HUB_OFFLINE=1"]);
}

// ---- Through the binary: the environment variables a user sets. ----

fn borscht(args: &[&str], env: &[(&str, &str)], home: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_borscht"));
    command.args(args);
    for name in ["BORSCHT_MODEL", "BORSCHT_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"] {
        command.env_remove(name);
    }
    // No saved login from the machine running the tests.
    command.env("HF_HOME", home);
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn transformer() -> PathBuf {
    fixtures().join("transformer")
}

/// `borscht forward` of the transformer fixture's batch; the largest difference from
/// the reference logits, or the failure's stderr.
fn forward(model: &str, cache: &Path, env: &[(&str, &str)], home: &Path) -> Result<f32, String> {
    let out = home.join("logits.npy");
    let (ids, masks) = (transformer().join("input_ids.npy"), transformer().join("r_text_masks.npy"));
    let args = [
        "forward",
        "--model",
        model,
        "--hub-cache",
        cache.to_str().unwrap(),
        "--input-ids",
        ids.to_str().unwrap(),
        "--r-text-masks",
        masks.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let output = borscht(&args, env, home);
    if !output.status.success() {
        return Err(stderr(&output));
    }
    let (got, want) = (Tensor::read_npy(&out).unwrap(), Tensor::read_npy(transformer().join("logits.npy")).unwrap());
    Ok((got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap())
}

#[test]
fn the_cli_downloads_once_then_runs_offline_and_logs_in_with_hf_token() {
    let mut hub = StandIn::start();
    for file in ["config.json", "pytorch_model.bin"] {
        hub.add("borscht-test/tiny-rudolph", file, transformer().join(file));
    }
    hub.add("borscht-test/no-config", "pytorch_model.bin", transformer().join("pytorch_model.bin"));
    hub.require_token("borscht-test/tiny-rudolph", "hf_stand_in_token");
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub-cache");
    let online = [("HF_ENDPOINT", hub.endpoint.as_str())];

    // A gated repository without a login, then with one.
    let message = forward("borscht-test/tiny-rudolph", &cache, &online, home.path()).unwrap_err();
    assert_mentions(&message, &["401", "borscht-test/tiny-rudolph", "config.json", "HF_TOKEN"]);
    hub.take_requests();
    let with_token = [online[0], ("HF_TOKEN", "hf_stand_in_token")];
    let diff = forward("borscht-test/tiny-rudolph", &cache, &with_token, home.path()).unwrap();
    assert!(diff <= 1e-4, "{diff}");
    let requests = hub.take_requests();
    assert!(requests.iter().any(|r| r.path.ends_with("pytorch_model.bin")), "{requests:?}");
    assert!(requests.iter().all(|r| r.authorization.as_deref() == Some("Bearer hf_stand_in_token")), "{requests:?}");

    let message = forward("borscht-test/no-config", &cache, &online, home.path()).unwrap_err();
    assert_mentions(&message, &["not an official RUDOLPH repository"]);

    // Offline now (nothing listens there): the cached files serve, without a request.
    hub.take_requests();
    let diff = forward("borscht-test/tiny-rudolph", &cache, &with_token, home.path()).unwrap();
    assert!(diff <= 1e-4, "{diff}");
    assert_eq!(hub.take_requests(), vec![]);
    hub.stop();
    let offline = [("HF_ENDPOINT", "http://127.0.0.1:9"), ("HF_HUB_OFFLINE", "1")];
    let diff = forward("borscht-test/tiny-rudolph", &cache, &offline, home.path()).unwrap();
    assert!(diff <= 1e-4, "{diff}");
    let message = forward(OFFICIAL_MODEL, &cache, &offline, home.path()).unwrap_err();
    assert_mentions(&message, &["HF_HUB_OFFLINE is set", &cache.display().to_string(), OFFICIAL_MODEL]);
}

// ---- The 350M preset against the official checkpoint's index. ----

/// name -> (shape, dtype), of the index's `parameters` or `buffers`.
fn index_entries(part: &str) -> BTreeMap<String, (Vec<usize>, String)> {
    let text = std::fs::read_to_string(fixtures().join("checkpoint_index/rudolph_350m.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = |e: &serde_json::Value| {
        (serde_json::from_value(e["shape"].clone()).unwrap(), e["dtype"].as_str().unwrap().into())
    };
    index[part].as_object().unwrap().iter().map(|(name, e)| (name.clone(), entry(e))).collect()
}

/// name -> shape.
fn index(part: &str) -> BTreeMap<String, Vec<usize>> {
    index_entries(part).into_iter().map(|(name, (shape, _))| (name, shape)).collect()
}

/// Equal tensor lists, or a panic listing only the differences.
fn assert_same_tensors(got: &BTreeMap<String, Vec<usize>>, want: &BTreeMap<String, Vec<usize>>, what: &str) {
    let mut differences = Vec::new();
    for (name, shape) in want {
        match got.get(name) {
            None => differences.push(format!("missing {name} {shape:?}")),
            Some(g) if g != shape => differences.push(format!("{name}: {g:?}, the reference has {shape:?}")),
            Some(_) => {}
        }
    }
    differences.extend(got.keys().filter(|n| !want.contains_key(*n)).map(|n| format!("extra {n} {:?}", got[n])));
    assert!(differences.is_empty(), "{what} differ from the reference index:\n{}", differences.join("\n"));
}

/// A VarBuilder backend that notes every tensor the model asks for and hands back one
/// byte broadcast to the shape: the 350M model is built without its 1.4 GB.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Tensors>>);

/// Tensor names with their shapes, in the order asked.
type Tensors = Vec<(String, Vec<usize>)>;

impl SimpleBackend for Recorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.lock().unwrap().push((name.to_string(), shape.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the model asked for a tensor without its shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[test]
fn the_350m_preset_reads_exactly_the_reference_checkpoints_tensors() {
    let parameters = index("parameters");
    let config = RudolphConfig::rudolph_350m();

    let recorder = Recorder::default();
    // u8: the few copies the model makes at load (transposed weights) stay small.
    let vb = candle_nn::VarBuilder::from_backend(Box::new(recorder.clone()), DType::U8, Device::Cpu);
    Rudolph::new(&config, vb).unwrap();
    let requested = recorder.0.lock().unwrap().clone();
    assert_eq!(requested.len(), parameters.len(), "each tensor is asked for once");
    assert_same_tensors(&requested.into_iter().collect(), &parameters, "the tensors the model asks for");

    // The list the loader checks a file against before loading says the same.
    assert_same_tensors(&expected_tensors(&config).into_iter().collect(), &parameters, "expected_tensors");
    let count: usize = parameters.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(count, 353_065_024);
    // What the checkpoint holds besides: the layer masks, which we rebuild.
    assert!(index_entries("parameters").values().all(|(_, dtype)| dtype == "float32"));
    let buffers: BTreeSet<String> = index("buffers").into_keys().collect();
    let masks = ["row_mask", "col_mask", "conv_mask", "last_conv_mask"].map(|m| format!("transformer.{m}"));
    assert_eq!(buffers, masks.into_iter().collect());
}

#[test]
fn the_reference_checkpoint_files_header_reads_back_as_the_index() {
    // Each tensor of this torch.save file is one element expanded to its shape, so the
    // loader's safety check refuses it (its tensors claim more bytes than it stores); its
    // header is read here as the loader reads it past that check.
    let shapes_only = fixtures().join("checkpoint_index/rudolph_350m_shapes.bin");
    let infos = candle_core::pickle::read_pth_tensor_info(&shapes_only, false, None).unwrap();
    let stored = infos.into_iter().map(|i| (i.name, i.layout.dims().to_vec())).collect();
    // candle passes over bool storages (the masks, which we rebuild) with a note on stderr.
    let buffers = index_entries("buffers");
    assert!(buffers.values().all(|(_, dtype)| dtype == "bool"), "{buffers:?}");
    assert_same_tensors(&stored, &index("parameters"), "the shapes in the file's header");
}

/// A safetensors file with the index's tensors, header only: the data is a hole in a
/// sparse file, so it takes no disk space and is never read.
fn sparse_safetensors(path: &Path, tensors: &BTreeMap<String, Vec<usize>>) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let end = offset + 2 * shape.iter().product::<usize>();
        header.insert(name.clone(), serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut file, &(header.len() as u64).to_le_bytes()).unwrap();
    std::io::Write::write_all(&mut file, &header).unwrap();
    file.set_len((8 + header.len() + offset) as u64).unwrap();
}

#[test]
fn a_full_size_350m_file_passes_the_preset_check_from_its_header_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    sparse_safetensors(&file, &index("parameters"));
    assert!(std::fs::metadata(&file).unwrap().len() > 700_000_000);

    let stored = stored_tensor_shapes(&file).unwrap().into_iter().collect();
    assert_same_tensors(&stored, &index("parameters"), "the shapes read back");
    check_checkpoint(&file, &RudolphConfig::rudolph_350m()).unwrap();
    // The check has teeth: v2's special tokens widen both vocabularies.
    let message = error_of(check_checkpoint(&file, &RudolphConfig::rudolph_350m_v2()));
    assert_mentions(&message, &["model.safetensors", "text_embeddings.weight", "[16448, 1024]", "[16832, 1024]"]);
}
