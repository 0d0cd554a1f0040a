//! `borscht evaluate`: how well a model recognises the pictures of a CSV, measured
//! the way the product answers (sampled captions, re-ranked, grouped by dish) and by
//! zero-shot choice among a few dishes.

use anyhow::{bail, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::data::Sample;
use crate::imaging::{open_image, ImageLimits};
use crate::nutrition::parse_caption;
use crate::pipelines::generation::CaptionOptions;
use crate::pipelines::recognize::recognize;
use crate::pipelines::scoring::{classify_with, default_class_template, DEFAULT_BATCH};
use crate::pipelines::Engine;
use borscht_protocol::ClassifyMethod;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub captions: CaptionOptions,
    /// Dishes offered per zero-shot question (the true one included); 0 skips zero-shot.
    pub zero_shot_classes: usize,
    /// How the dishes are written; None: each method's default
    /// ([`crate::pipelines::scoring::default_class_template`]).
    pub class_template: Option<String>,
    pub seed: u64,
}

/// One picture's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalItem {
    pub image: String,
    pub dish: String,
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
    pub items: Vec<EvalItem>,
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
        let codes = engine.photo_codes(&photo)?;
        let recognition = recognize(engine, &codes, &options.captions, |_| {})?;
        let best = recognition.answer.map(|a| a.best);
        let (zero_shot_choice, image_fit_choice, caption_fit_choice) = if options.zero_shot_classes > 0 {
            let others: Vec<&String> = dishes.iter().filter(|d| !same_dish(d, &dish)).collect();
            let mut classes: Vec<String> = others
                .choose_multiple(&mut rng, options.zero_shot_classes.saturating_sub(1))
                .map(|d| d.to_string())
                .collect();
            classes.push(dish.clone());
            classes.shuffle(&mut rng);
            let choose = |method| -> Result<Option<String>> {
                let template = options.class_template.as_deref().unwrap_or(default_class_template(method));
                let choice = classify_with(method, engine, &codes, &classes, template, DEFAULT_BATCH)?;
                Ok(Some(classes[choice.label].clone()))
            };
            (choose(ClassifyMethod::ZeroShot)?, choose(ClassifyMethod::ImageFit)?, choose(ClassifyMethod::CaptionFit)?)
        } else {
            (None, None, None)
        };
        let item = EvalItem {
            image: sample.image.display().to_string(),
            dish,
            kcal,
            predicted_dish: best.as_ref().map(|b| b.dish.clone()),
            predicted_kcal: best.as_ref().and_then(|b| b.nutrition.kcal),
            zero_shot_choice,
            image_fit_choice,
            caption_fit_choice,
        };
        on_item(&item);
        items.push(item);
    }
    let count = items.len().max(1) as f64;
    let right = items.iter().filter(|i| i.predicted_dish.as_deref().is_some_and(|p| same_dish(p, &i.dish))).count();
    let kcal_errors: Vec<f64> = items.iter().filter_map(|i| Some((i.predicted_kcal? - i.kcal?).abs() as f64)).collect();
    let share_right = |choice: fn(&EvalItem) -> &Option<String>| {
        let right = items.iter().filter(|i| choice(i).as_deref().is_some_and(|c| same_dish(c, &i.dish))).count();
        (options.zero_shot_classes > 0).then(|| right as f64 / count)
    };
    Ok(EvalReport {
        samples: items.len(),
        dish_top1: right as f64 / count,
        kcal_mae: (!kcal_errors.is_empty()).then(|| kcal_errors.iter().sum::<f64>() / kcal_errors.len() as f64),
        kcal_answers: kcal_errors.len(),
        zero_shot_accuracy: share_right(|i| &i.zero_shot_choice),
        image_fit_accuracy: share_right(|i| &i.image_fit_choice),
        caption_fit_accuracy: share_right(|i| &i.caption_fit_choice),
        zero_shot_classes: options.zero_shot_classes,
        items,
    })
}
