//! The portion: grams (presets or typed), its values, and saving the meal.

use borscht_protocol::nutrition::Nutrition;
use leptos::prelude::*;

use super::values::{number, show};
use crate::host::embedded;
use crate::i18n::{tr, use_lang, Lang};
use crate::storage::{self, Meal};

const PORTION_PRESETS: [u32; 4] = [100, 150, 250, 350];
/// The portions one may enter, in grams.
const MIN_GRAMS: f32 = 1.0;
const MAX_GRAMS: f32 = 5000.0;

/// What is wrong with the grams typed, if anything.
fn grams_problem(text: &str, lang: Lang) -> Option<&'static str> {
    if text.trim().is_empty() {
        return Some(tr(lang, "Введите вес порции в граммах.", "Enter the portion's weight in grams."));
    }
    match number(text) {
        None => Some(tr(lang, "Вес порции — это число граммов.", "The portion's weight is a number of grams.")),
        Some(g) if g < MIN_GRAMS => Some(tr(lang, "Порция — хотя бы 1 г.", "A portion is at least 1 g.")),
        Some(g) if g > MAX_GRAMS => Some(tr(lang, "Порция — не больше 5000 г.", "A portion is at most 5000 g.")),
        Some(_) => None,
    }
}

/// The portion in grams (presets or typed, 1 to 5000 g), its values, and saving the meal.
#[component]
pub(super) fn Portion(per_100g: Signal<Nutrition>, dish: RwSignal<String>, saved: RwSignal<bool>) -> impl IntoView {
    let lang = use_lang();
    let history = expect_context::<RwSignal<Vec<Meal>>>();
    let embedded = embedded();
    let grams_text = RwSignal::new(String::from("100"));
    let problem = move || grams_problem(&grams_text.get(), lang.get());
    // The last valid weight: the values shown while the field is being corrected.
    let grams = move || number(&grams_text.get()).filter(|g| (MIN_GRAMS..=MAX_GRAMS).contains(g)).unwrap_or(100.0);
    let portion = move || per_100g.get().for_portion(grams());
    let save = move |_| {
        if problem().is_some() {
            return;
        }
        let p = portion();
        let meal = Meal {
            date: storage::today(),
            dish: dish.get_untracked(),
            grams: grams(),
            protein_g: p.protein_g.unwrap_or(0.0),
            fat_g: p.fat_g.unwrap_or(0.0),
            carbs_g: p.carbs_g.unwrap_or(0.0),
            kcal: p.kcal.unwrap_or(0.0),
            photo: use_context::<crate::teach::LastPhoto>()
                .and_then(|photo| photo.0.get_untracked())
                .filter(|photo| photo.len() <= storage::MAX_KEPT_PHOTO),
            taught: false,
        };
        if embedded {
            // The widget's user has no history to look at: the site gets the meal.
            crate::host::post("borscht:saved", &meal);
        } else {
            history.update(|h| {
                h.push(meal);
                storage::save_history(h);
            });
        }
        saved.set(true);
    };
    let save_label = move || match (saved.get(), embedded) {
        (false, false) => tr(lang.get(), "Сохранить в дневник", "Save to history"),
        (true, false) => tr(lang.get(), "Сохранено ✓", "Saved ✓"),
        (false, true) => tr(lang.get(), "Передать сайту", "Send to the site"),
        (true, true) => tr(lang.get(), "Передано сайту ✓", "Sent to the site ✓"),
    };
    view! {
        <fieldset class="portion">
            <legend>{move || tr(lang.get(), "Порция", "Portion")}</legend>
            <div class="presets" role="group">
                {PORTION_PRESETS.iter().map(|&g| view! {
                    <button
                        class="chip"
                        class:active=move || problem().is_none() && grams() == g as f32
                        aria-pressed=move || (problem().is_none() && grams() == g as f32).to_string()
                        on:click=move |_| grams_text.set(g.to_string())
                    >{move || format!("{g} {}", tr(lang.get(), "г", "g"))}</button>
                }).collect_view()}
            </div>
            <label>
                {move || tr(lang.get(), "Граммы", "Grams")}
                <input
                    id="portion-grams"
                    type="number"
                    min="1"
                    max="5000"
                    inputmode="numeric"
                    aria-invalid=move || problem().is_some().to_string()
                    aria-describedby="portion-error"
                    prop:value=move || grams_text.get()
                    on:input=move |e| grams_text.set(event_target_value(&e))
                />
            </label>
            <p id="portion-error" class="field-error" class:hidden=move || problem().is_none()>{move || problem().unwrap_or_default()}</p>
            <p id="portion-values" class="portion-values" data-kcal=move || portion().kcal.map(|k| format!("{k:.1}")).unwrap_or_default()>
                {move || {
                    let p = portion();
                    let l = lang.get();
                    format!(
                        "{} {} {}: {} {} · {} {} · {} {} · {} {}",
                        tr(l, "На", "For"), grams(), tr(l, "г", "g"),
                        show(p.kcal), tr(l, "ккал", "kcal"),
                        show(p.protein_g), tr(l, "г белков", "g protein"),
                        show(p.fat_g), tr(l, "г жиров", "g fat"),
                        show(p.carbs_g), tr(l, "г углеводов", "g carbs"),
                    )
                }}
            </p>
        </fieldset>
        <button id="save-meal" class="primary" on:click=save disabled=move || saved.get() || problem().is_some()>
            {save_label}
        </button>
    }
}
