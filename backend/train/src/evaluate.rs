//! `borscht evaluate`: how well a model recognises the pictures of a CSV, measured
//! the way the product answers (sampled captions, re-ranked, grouped by dish) and by
//! zero-shot choice among a few dishes.

use anyhow::{bail, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::data::Sample;
use borscht_pipelines::generation::CaptionOptions;
use borscht_pipelines::honesty::{expected_calibration_error, Calibration, Evidence};
use borscht_pipelines::imaging::{open_image, ImageLimits};
use borscht_pipelines::nutrition::parse_caption;
use borscht_pipelines::recognize::recognize;
use borscht_pipelines::scoring::{classify_with, default_class_template, DEFAULT_BATCH};
use borscht_pipelines::Engine;
use borscht_protocol::{ClassifyMethod, Verdict};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub captions: CaptionOptions,
    /// Views of each non-food picture: the picture as the app sends it, then random
    /// square crops of it.
    pub non_food_views: usize,
    /// Dishes offered per zero-shot question (the true one included); 0 skips zero-shot.
    pub zero_shot_classes: usize,
    /// How the dishes are written; None: each method's default
    /// ([`borscht_pipelines::scoring::default_class_template`]).
    pub class_template: Option<String>,
    pub seed: u64,
}

/// One picture's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalItem {
    pub image: String,
    /// The true dish ("" for a non-food picture).
    pub dish: String,
    /// False for the non-food pictures (photos of other things, noise).
    #[serde(default = "food")]
    pub food: bool,
    /// What the model measured about its answer (the calibration's input).
    #[serde(default)]
    pub evidence: Option<Evidence>,
    /// The verdict and confidence the model's calibration gave (if it has one).
    #[serde(default)]
    pub verdict: Verdict,
    #[serde(default)]
    pub confidence: f32,
    /// ln perplexity of the class caption fit chose among the dishes offered.
    #[serde(default)]
    pub caption_fit_log_ppl: Option<f32>,
    /// Whether caption fit answered "none of these" (by the model's calibration).
    #[serde(default)]
    pub none_of_these: bool,
    pub kcal: Option<f32>,
    pub predicted_dish: Option<String>,
    pub predicted_kcal: Option<f32>,
    pub zero_shot_choice: Option<String>,
    /// The choice among the same dishes by image fit ([`classify_by_image`]).
    pub image_fit_choice: Option<String>,
    /// The choice among the same dishes by caption fit (the app's default).
    pub caption_fit_choice: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub samples: usize,
    /// Share whose best answer names the right dish.
    pub dish_top1: f64,
    /// Mean absolute kcal error of the best answer, over the answers that give kcal.
    pub kcal_mae: Option<f64>,
    pub kcal_answers: usize,
    /// Share of zero-shot questions (`zs_clf`) answered with the right dish.
    pub zero_shot_accuracy: Option<f64>,
    /// The same questions answered by image fit.
    pub image_fit_accuracy: Option<f64>,
    /// The same questions answered by caption fit.
    pub caption_fit_accuracy: Option<f64>,
    pub zero_shot_classes: usize,
    /// How honest the answers are (with the model's calibration).
    pub honesty: Honesty,
    pub items: Vec<EvalItem>,
}

/// How well the verdicts and confidences of a model's answers hold up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Honesty {
    /// Expected calibration error of the confidence (P(right)) over the food answers.
    pub ece: f64,
    /// Of the food answers that name the right dish, the share still answered (not "not
    /// sure" or "not food").
    pub right_kept: Option<f64>,
    /// Of the wrong food answers, the share flagged "not sure" or "not food".
    pub wrong_flagged: Option<f64>,
    /// Of the non-food pictures, the share answered "not food" or "not sure".
    pub not_food_flagged: Option<f64>,
    /// Of the non-food pictures, the share answered "not food".
    pub not_food_named: Option<f64>,
    /// Of the non-food questions "which of these dishes?", the share answered "none of these".
    pub none_of_these: Option<f64>,
    /// Of the food questions caption fit answered right, the share not "none of these".
    pub right_choice_kept: Option<f64>,
}

impl Honesty {
    pub fn of(items: &[EvalItem]) -> Honesty {
        let share = |of: &dyn Fn(&EvalItem) -> bool, pass: &dyn Fn(&EvalItem) -> bool| {
            let chosen: Vec<&EvalItem> = items.iter().filter(|i| of(i)).collect();
            (!chosen.is_empty()).then(|| chosen.iter().filter(|i| pass(i)).count() as f64 / chosen.len() as f64)
        };
        let predictions: Vec<(f32, bool)> = items
            .iter()
            .filter(|i| i.food && i.predicted_dish.is_some())
            .map(|i| (i.confidence, answered_right(i)))
            .collect();
        Honesty {
            ece: expected_calibration_error(&predictions, 10),
            right_kept: share(&|i| answered_right(i), &|i| i.verdict == Verdict::Dish),
            wrong_flagged: share(&|i| i.food && !answered_right(i), &|i| i.verdict != Verdict::Dish),
            not_food_flagged: share(&|i| !i.food, &|i| i.verdict != Verdict::Dish),
            not_food_named: share(&|i| !i.food, &|i| i.verdict == Verdict::NotFood),
            none_of_these: share(&|i| !i.food && i.caption_fit_choice.is_some(), &|i| i.none_of_these),
            right_choice_kept: share(&|i| right_choice(i), &|i| !i.none_of_these),
        }
    }
}

fn food() -> bool {
    true
}

fn same_dish(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

pub fn evaluate(
    engine: &Engine,
    samples: &[Sample],
    options: &EvalOptions,
    mut on_item: impl FnMut(&EvalItem),
) -> Result<EvalReport> {
    let truths: Vec<(String, Option<f32>)> = samples
        .iter()
        .filter_map(|s| {
            let n = parse_caption(&s.caption);
            n.dish.map(|d| (d, n.kcal))
        })
        .collect();
    if truths.len() != samples.len() {
        bail!("every evaluation caption must name a dish");
    }
    let mut dishes: Vec<String> = truths.iter().map(|t| t.0.clone()).collect();
    dishes.sort();
    dishes.dedup();
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut items = Vec::with_capacity(samples.len());
    for (sample, (dish, kcal)) in samples.iter().zip(truths) {
        let photo = open_image(&sample.image, ImageLimits::default())?;
        let item = evaluate_picture(
            engine,
            &photo,
            Truth { image: sample.image.display().to_string(), dish, kcal },
            &dishes,
            options,
            &mut rng,
        )?;
        on_item(&item);
        items.push(item);
    }
    Ok(report_of(items, options.zero_shot_classes))
}

/// What a picture is, as far as the evaluation knows.
struct Truth {
    image: String,
    /// "" for a non-food picture.
    dish: String,
    kcal: Option<f32>,
}

/// The product's answer to one picture, and its choices among `zero_shot_classes` dishes
/// (the true one among them, for food).
fn evaluate_picture(
    engine: &Engine,
    photo: &image::DynamicImage,
    truth: Truth,
    dishes: &[String],
    options: &EvalOptions,
    rng: &mut rand::rngs::StdRng,
) -> Result<EvalItem> {
    let codes = engine.photo_codes(photo)?;
    let recognition = recognize(engine, &codes, &options.captions, |_| {})?;
    let food = !truth.dish.is_empty();
    let (mut caption_fit_log_ppl, mut none_of_these) = (None, false);
    let (zero_shot_choice, image_fit_choice, caption_fit_choice) = if options.zero_shot_classes > 0 {
        let others: Vec<&String> = dishes.iter().filter(|d| !same_dish(d, &truth.dish)).collect();
        let offered = options.zero_shot_classes - usize::from(food);
        let mut classes: Vec<String> = others.choose_multiple(rng, offered).map(|d| d.to_string()).collect();
        if food {
            classes.push(truth.dish.clone());
        }
        classes.shuffle(rng);
        let mut choose = |method| -> Result<Option<String>> {
            let template = options.class_template.as_deref().unwrap_or(default_class_template(method));
            let choice = classify_with(method, engine, &codes, &classes, template, DEFAULT_BATCH)?;
            if method == ClassifyMethod::CaptionFit {
                caption_fit_log_ppl = choice.perplexities.get(choice.label).map(|p| p.ln());
                none_of_these = choice.none_of_these;
            }
            Ok(Some(classes[choice.label].clone()))
        };
        (choose(ClassifyMethod::ZeroShot)?, choose(ClassifyMethod::ImageFit)?, choose(ClassifyMethod::CaptionFit)?)
    } else {
        (None, None, None)
    };
    let best = recognition.answer.as_ref().map(|a| &a.best);
    Ok(EvalItem {
        image: truth.image,
        dish: truth.dish,
        food,
        evidence: recognition.evidence,
        verdict: recognition.assessment.verdict,
        confidence: recognition.assessment.confidence,
        caption_fit_log_ppl,
        none_of_these,
        kcal: truth.kcal,
        predicted_dish: best.map(|b| b.dish.clone()),
        predicted_kcal: best.and_then(|b| b.nutrition.kcal),
        zero_shot_choice,
        image_fit_choice,
        caption_fit_choice,
    })
}

/// Non-food pictures, each in `options.non_food_views` views (the picture itself, then
/// random square crops), with the food dishes of `samples` offered to the zero-shot
/// questions. Every view is an item of dish "".
pub fn evaluate_non_food(
    engine: &Engine,
    pictures: &[(String, image::DynamicImage)],
    dish_names: &[String],
    options: &EvalOptions,
    mut on_item: impl FnMut(&EvalItem),
) -> Result<Vec<EvalItem>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed ^ 0x6e6f_6e66);
    let mut items = Vec::new();
    for (name, picture) in pictures {
        for (view, crop) in views(picture, options.non_food_views.max(1), &mut rng).into_iter().enumerate() {
            let truth = Truth { image: format!("{name}#{view}"), dish: String::new(), kcal: None };
            let item = evaluate_picture(engine, &crop, truth, dish_names, options, &mut rng)?;
            on_item(&item);
            items.push(item);
        }
    }
    Ok(items)
}

/// The picture, then `n - 1` random square crops of 35 to 100 % of its short side.
fn views(picture: &image::DynamicImage, n: usize, rng: &mut rand::rngs::StdRng) -> Vec<image::DynamicImage> {
    use rand::Rng;
    let (w, h) = (picture.width(), picture.height());
    let short = w.min(h);
    let mut views = vec![picture.clone()];
    for _ in 1..n {
        let side = ((short as f64) * rng.random_range(0.35..=1.0)).round().max(8.0) as u32;
        let x = rng.random_range(0..=w - side);
        let y = rng.random_range(0..=h - side);
        views.push(picture.crop_imm(x, y, side, side));
    }
    views
}

/// Generated pictures that are nothing at all: `count` of noise, blotches and flat
/// colours (seeded), `size` pixels square.
pub fn noise_pictures(count: usize, size: u32, seed: u64) -> Vec<(String, image::DynamicImage)> {
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|k| {
            let kind = k % 3;
            let picture = match kind {
                // Every pixel its own colour.
                0 => image::RgbImage::from_fn(size, size, |_, _| image::Rgb(rng.random())),
                // Large blotches: a random 4x4 picture blown up.
                1 => {
                    let small = image::RgbImage::from_fn(4, 4, |_, _| image::Rgb(rng.random()));
                    image::imageops::resize(&small, size, size, image::imageops::FilterType::Triangle)
                }
                // One flat colour.
                _ => {
                    let colour: [u8; 3] = rng.random();
                    image::RgbImage::from_pixel(size, size, image::Rgb(colour))
                }
            };
            (format!("noise-{seed}-{k}"), image::DynamicImage::ImageRgb8(picture))
        })
        .collect()
}

/// The summary of `items` (food and non-food alike; the dish and zero-shot figures count
/// the food pictures only).
pub fn report_of(items: Vec<EvalItem>, zero_shot_classes: usize) -> EvalReport {
    let food: Vec<&EvalItem> = items.iter().filter(|i| i.food).collect();
    let count = food.len().max(1) as f64;
    let right = food.iter().filter(|i| answered_right(i)).count();
    let kcal_errors: Vec<f64> = food.iter().filter_map(|i| Some((i.predicted_kcal? - i.kcal?).abs() as f64)).collect();
    let share_right = |choice: fn(&EvalItem) -> &Option<String>| {
        let right = food.iter().filter(|i| choice(i).as_deref().is_some_and(|c| same_dish(c, &i.dish))).count();
        (zero_shot_classes > 0).then(|| right as f64 / count)
    };
    let honesty = Honesty::of(&items);
    EvalReport {
        samples: food.len(),
        dish_top1: right as f64 / count,
        kcal_mae: (!kcal_errors.is_empty()).then(|| kcal_errors.iter().sum::<f64>() / kcal_errors.len() as f64),
        kcal_answers: kcal_errors.len(),
        zero_shot_accuracy: share_right(|i| &i.zero_shot_choice),
        image_fit_accuracy: share_right(|i| &i.image_fit_choice),
        caption_fit_accuracy: share_right(|i| &i.caption_fit_choice),
        zero_shot_classes,
        honesty,
        items,
    }
}

/// Whether caption fit chose the picture's dish among those offered.
pub fn right_choice(item: &EvalItem) -> bool {
    item.food && item.caption_fit_choice.as_deref().is_some_and(|c| same_dish(c, &item.dish))
}

/// Whether the answer named the picture's dish.
pub fn answered_right(item: &EvalItem) -> bool {
    item.food && item.predicted_dish.as_deref().is_some_and(|p| same_dish(p, &item.dish))
}

/// Fits `items`' calibration (see [`Calibration::fit`]), the "none of these" threshold
/// keeping `keep_right` of the right caption-fit choices, and re-judges every item by it.
pub fn calibrate(items: &mut [EvalItem], keep_right: f64) -> Result<Calibration> {
    let food: Vec<(Evidence, bool)> =
        items.iter().filter(|i| i.food).filter_map(|i| Some((i.evidence?, answered_right(i)))).collect();
    let not_food: Vec<Evidence> = items.iter().filter(|i| !i.food).filter_map(|i| i.evidence).collect();
    let mut calibration = Calibration::fit(&food, &not_food, keep_right)?;
    let mut right_choices: Vec<f32> =
        items.iter().filter(|i| right_choice(i)).filter_map(|i| i.caption_fit_log_ppl).collect();
    right_choices.sort_by(f32::total_cmp);
    if let Some(last) = right_choices.len().checked_sub(1) {
        let at = ((right_choices.len() as f64 * keep_right).ceil() as usize).min(last + 1).saturating_sub(1);
        calibration.none_of_these_above = Some(right_choices[at]);
    }
    for item in items.iter_mut() {
        let assessment = match item.evidence {
            Some(evidence) => calibration.assess(&evidence),
            None => borscht_pipelines::honesty::uncalibrated(None),
        };
        item.verdict = assessment.verdict;
        item.confidence = assessment.confidence;
        item.none_of_these = item.caption_fit_log_ppl.zip(calibration.none_of_these_above).is_some_and(|(l, t)| l > t);
    }
    Ok(calibration)
}
