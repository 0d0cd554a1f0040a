//! `borscht caption`, `classify`, `generate` and `texts`: the pipelines from the
//! command line. Human-readable output by default, one JSON object with `--json`.

use anyhow::{Context, Result};
use std::path::PathBuf;

use borscht_model::device::{parse_device, parse_dtype};
use borscht_pipelines::generation::{
    generate_image, generate_texts, CaptionOptions, GenerationEvent, ImageOptions, TextOptions,
};
use borscht_pipelines::generation::{CAPTION_TEMPLATE, DEFAULT_CAPTIONS};
use borscht_pipelines::imaging::{open_image, ImageLimits};
use borscht_pipelines::recognize::recognize;
use borscht_pipelines::sampling::{SamplingParams, DEFAULT_SEED};
use borscht_pipelines::scoring::{classify_with, default_class_template, DEFAULT_BATCH};
use borscht_pipelines::Engine;
use borscht_protocol::{ClassifyMethod, Verdict};

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Model directory (config.json + weights, bpe.model, vqgan/) or a hub id such as
    /// sberbank-ai/RuDOLPH-350M; the bundled demo model by default.
    #[arg(long, env = "BORSCHT_MODEL", default_value = super::DEFAULT_MODEL_DIR)]
    pub model: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl EngineArgs {
    pub fn load(&self) -> Result<Engine> {
        super::load_engine(&self.model, &parse_device(&self.device)?, parse_dtype(&self.dtype)?)
    }
}

/// The sampling flags every generating command shares; those not given take the
/// command's preset (captions: the article's 16 / 0.6 / 0.8; images: 512 / 0.99 / 1.0;
/// texts: 32 / 0.8 / 1.0).
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// Keep the K most likely ids (0: no limit) [default: the command's preset].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely ids up to this probability [default: the command's preset].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// [default: the command's preset]
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

impl SamplingArgs {
    /// `preset` with the flags given put over it.
    fn over(&self, preset: SamplingParams) -> SamplingParams {
        SamplingParams {
            top_k: self.top_k.unwrap_or(preset.top_k),
            top_p: self.top_p.unwrap_or(preset.top_p),
            temperature: self.temperature.unwrap_or(preset.temperature),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The photo of the meal.
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long, default_value = CAPTION_TEMPLATE)]
    pub template: String,
    /// How many captions to sample.
    #[arg(long, default_value_t = DEFAULT_CAPTIONS)]
    pub n: usize,
    /// Also give the values for a portion of this many grams.
    #[arg(long)]
    pub portion_g: Option<f32>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run_caption(args: CaptionArgs) -> Result<()> {
    let engine = args.engine.load()?;
    let photo = open_image(&args.image, ImageLimits::default()).with_context(|| args.image.display().to_string())?;
    let codes = engine.photo_codes(&photo)?;
    let options = CaptionOptions {
        template: args.template.clone(),
        count: args.n,
        sampling: args.sampling.over(SamplingParams::ARTICLE),
        seed: args.sampling.seed,
        ..Default::default()
    };
    let quiet = args.engine.json;
    let recognition = recognize(&engine, &codes, &options, |event| {
        if let (GenerationEvent::Text { text, .. }, false) = (&event, quiet) {
            eprintln!("  candidate: {text}");
        }
    })?;
    // The same answer the server gives, in the same words.
    let answer = borscht_server::wire::recognition(&recognition, args.portion_g);
    if args.engine.json {
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(());
    }
    let probability = if answer.calibrated { "probability right" } else { "of the samples agreed" };
    match (&answer.best, answer.verdict) {
        (None, _) => println!("No dish recognised ({} captions, none named a dish).", answer.candidates.len()),
        (Some(best), Verdict::NotFood) => {
            println!("Probably not food (the closest dish, {}, fits the photo poorly).", best.dish)
        }
        (Some(best), Verdict::NotSure) => println!(
            "Not sure: perhaps {} ({:.0}% {probability}), but no dish is likely enough to name.",
            best.dish,
            answer.confidence * 100.0
        ),
        (Some(best), Verdict::Dish) => {
            let show = |v: Option<f32>| v.map_or("?".to_string(), |x| format!("{x:.1}"));
            println!("{} ({:.0}% {probability})", best.dish, answer.confidence * 100.0);
            let n = &best.nutrition;
            println!(
                "  per 100 g: protein {} g, fat {} g, carbohydrate {} g, {} kcal",
                show(n.protein_g),
                show(n.fat_g),
                show(n.carbs_g),
                show(n.kcal)
            );
            if let Some(check) = best.atwater {
                let verdict = if check.consistent { "consistent" } else { "inconsistent" };
                println!(
                    "  Atwater: 4P + 9F + 4C = {:.0} kcal vs {:.0} stated ({verdict})",
                    check.expected_kcal, check.stated_kcal
                );
            }
            if let (Some(g), Some(p)) = (args.portion_g, &answer.portion) {
                println!(
                    "  for {g} g: protein {} g, fat {} g, carbohydrate {} g, {} kcal",
                    show(p.protein_g),
                    show(p.fat_g),
                    show(p.carbs_g),
                    show(p.kcal)
                );
            }
            for alt in &answer.alternatives {
                println!("  or: {} ({:.0}% of the evidence)", alt.dish, alt.confidence * 100.0);
            }
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long)]
    pub image: PathBuf,
    /// Comma-separated dishes to choose from.
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    /// How each class is written; `{}` stands for it (default: `блюдо: {};` for
    /// caption-fit, `блюдо: {}` for zero-shot, the dish alone for image-fit, as training
    /// writes left texts).
    #[arg(long)]
    pub template: Option<String>,
    /// `caption-fit` (the class whose caption start fits the photo best, its end not
    /// scored), `zero-shot` (the reference's zs_clf) or `image-fit` (the class under
    /// which the photo's codes are most likely).
    #[arg(long, default_value = "caption-fit", value_parser = parse_method)]
    pub method: ClassifyMethod,
}

fn parse_method(text: &str) -> std::result::Result<ClassifyMethod, String> {
    match text {
        "caption-fit" => Ok(ClassifyMethod::CaptionFit),
        "zero-shot" => Ok(ClassifyMethod::ZeroShot),
        "image-fit" => Ok(ClassifyMethod::ImageFit),
        other => Err(format!("unknown method {other:?}: caption-fit, zero-shot or image-fit")),
    }
}

pub fn run_classify(args: ClassifyArgs) -> Result<()> {
    let engine = args.engine.load()?;
    let classes: Vec<String> = args.classes.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    let photo = open_image(&args.image, ImageLimits::default()).with_context(|| args.image.display().to_string())?;
    let codes = engine.photo_codes(&photo)?;
    let template = args.template.as_deref().unwrap_or(default_class_template(args.method));
    let result = classify_with(args.method, &engine, &codes, &classes, template, DEFAULT_BATCH)?;
    if args.engine.json {
        println!(
            "{}",
            serde_json::json!({
                "label": result.label,
                "class": classes[result.label],
                "classes": classes,
                "scores": result.scores,
                "perplexities": result.perplexities,
                "none_of_these": result.none_of_these,
            })
        );
    } else {
        let mut ranked: Vec<(usize, f32)> = result.scores.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
        if result.none_of_these {
            println!("none of these (the closest, {}, fits the photo poorly)", classes[result.label]);
        } else {
            println!("{}", classes[result.label]);
        }
        for (i, score) in ranked {
            println!("  {:<30} score {score:.4}  perplexity {:.2}", classes[i], result.perplexities[i]);
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// What to draw.
    #[arg(long)]
    pub text: String,
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Each picture is the best of this many drawn, by how well the text fits it as a
    /// caption (1: keep every drawing).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub best_of: u32,
    /// Folder for image-N.png.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let engine = args.engine.load()?;
    let options = ImageOptions {
        count: args.n,
        best_of: args.best_of as usize,
        sampling: args.sampling.over(SamplingParams::IMAGE),
        seed: args.sampling.seed,
        preview_every_rows: 0,
        stop: None,
    };
    let result = generate_image(&engine, &args.text, &options, |_| {})?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut paths = Vec::new();
    for (i, png) in result.pngs.iter().enumerate() {
        let path = args.out.join(format!("image-{}.png", i + 1));
        std::fs::write(&path, png)?;
        paths.push(path.display().to_string());
    }
    if args.engine.json {
        println!(
            "{}",
            serde_json::json!({ "images": paths, "codes": result.codes, "caption_fit": result.caption_fit })
        );
    } else {
        for (p, fit) in paths.iter().zip(&result.caption_fit) {
            println!("{p}\tcaption fit {fit:.2}");
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct TextsArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run_texts(args: TextsArgs) -> Result<()> {
    let engine = args.engine.load()?;
    let sampling = args.sampling.over(SamplingParams::TEXT);
    let options = TextOptions { count: args.n, sampling, seed: args.sampling.seed, stop: None };
    let ranked = generate_texts(&engine, &args.prompt, &options, |_| {})?;
    if args.engine.json {
        let list: Vec<_> = ranked.iter().map(|r| serde_json::json!({ "text": r.text, "ppl": r.ppl })).collect();
        println!("{}", serde_json::json!({ "texts": list }));
    } else {
        for r in ranked {
            println!("{:>10.2}  {}", r.ppl, r.text);
        }
    }
    Ok(())
}
