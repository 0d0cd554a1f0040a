//! The answer: what the model makes of the photo ("not food", "not sure", or the dish
//! with the probability that it is right), values per 100 g with a macro chart, a portion
//! in grams, the Atwater check said in words, alternatives to pick from, and an edit step
//! before the meal is saved (to the history, or to the host page in the widget).
//!
//! One part a file: [`values`] (the editable values), [`macro_chart`], [`atwater`],
//! [`portion`] (grams and saving), [`correction`] ("Wrong? Tell us", teaching the
//! model); the heading, the "not sure" note and the alternatives
//! are small enough to live here.

mod atwater;
mod correction;
mod macro_chart;
mod portion;
mod values;

use borscht_protocol::nutrition::{DishOption, Nutrition};
use borscht_protocol::{Recognition, Verdict};
use leptos::prelude::*;

use crate::i18n::{dish_name, tr, use_dishes, use_lang};
use atwater::AtwaterNote;
use correction::Correction;
use macro_chart::MacroChart;
use portion::Portion;
use values::{number, Values};

#[component]
pub fn ResultCard(recognition: Recognition) -> impl IntoView {
    let verdict = recognition.verdict;
    let options: Vec<DishOption> = recognition.best.iter().cloned().chain(recognition.alternatives.clone()).collect();
    if verdict == Verdict::NotFood || options.is_empty() {
        return view! { <NoDish not_food=verdict == Verdict::NotFood /> }.into_any();
    }
    let options = StoredValue::new(options);
    let selected = RwSignal::new(0usize);
    let dish = RwSignal::new(String::new());
    let fields: [RwSignal<String>; 4] = std::array::from_fn(|_| RwSignal::new(String::new()));
    let saved = RwSignal::new(false);
    let choose = move |index: usize| {
        let option = options.with_value(|o| o[index].clone());
        selected.set(index);
        dish.set(option.dish.clone());
        let n = &option.nutrition;
        for (field, value) in fields.iter().zip([n.protein_g, n.fat_g, n.carbs_g, n.kcal]) {
            field.set(value.map(|v| format!("{v}")).unwrap_or_default());
        }
        saved.set(false);
    };
    choose(0);
    let per_100g = Signal::derive(move || Nutrition {
        dish: Some(dish.get()),
        protein_g: number(&fields[0].get()),
        fat_g: number(&fields[1].get()),
        carbs_g: number(&fields[2].get()),
        kcal: number(&fields[3].get()),
    });
    view! {
        <article id="result-card" class="result-card" data-dish=move || dish.get() data-verdict=match verdict {
            Verdict::NotSure => "not_sure",
            _ => "dish",
        }>
            <Heading dish=dish confidence=recognition.confidence calibrated=recognition.calibrated />
            <NotSureNote shown=verdict == Verdict::NotSure />
            <MacroChart nutrition=per_100g />
            <Values dish=dish fields=fields />
            <AtwaterNote nutrition=per_100g />
            <Portion per_100g=per_100g dish=dish saved=saved />
            <Alternatives options=options selected=selected choose=choose />
            <Correction dish=dish fields=fields />
        </article>
    }
    .into_any()
}

/// The answer when there is no dish to show: not food, or nothing recognised.
#[component]
fn NoDish(not_food: bool) -> impl IntoView {
    let lang = use_lang();
    let (key, ru, en) = if not_food {
        (
            "not_food",
            "Похоже, на снимке не еда. Сфотографируйте блюдо поближе.",
            "This does not look like food. Take a closer photo of the dish.",
        )
    } else {
        ("none", "Блюдо не распознано — попробуйте другой ракурс.", "No dish recognised; try another angle.")
    };
    // A dish the model missed can still be taught.
    let (dish, fields) = (RwSignal::new(String::new()), std::array::from_fn(|_| RwSignal::new(String::new())));
    view! {
        <div id="result-card" class="result-card" data-dish="" data-verdict=key>
            <p class="verdict">{move || tr(lang.get(), ru, en)}</p>
            <Correction dish=dish fields=fields />
        </div>
    }
}

/// The dish's name and how sure the model is: the probability of its own best answer
/// when the model is calibrated, otherwise how many captions agreed.
#[component]
fn Heading(dish: RwSignal<String>, confidence: f32, calibrated: bool) -> impl IntoView {
    let lang = use_lang();
    let dishes = use_dishes();
    let shown_dish = move || dish_name(lang.get(), &dish.get(), &dishes.get());
    view! {
        <header class="result-head">
            <h2 id="result-dish">{shown_dish}</h2>
            <span id="result-confidence" class="confidence" data-confidence=format!("{confidence:.3}")>
                {move || {
                    let what = if calibrated {
                        tr(lang.get(), "вероятность", "probability it is right")
                    } else {
                        tr(lang.get(), "подписи согласны на", "captions agreed")
                    };
                    format!("{what}: {:.0}%", confidence * 100.0)
                }}
            </span>
        </header>
    }
}

#[component]
fn NotSureNote(shown: bool) -> impl IntoView {
    let lang = use_lang();
    view! {
        <p id="not-sure" class="verdict-note" class:hidden=!shown>
            {move || tr(
                lang.get(),
                "Модель не уверена. Проверьте блюдо: исправьте название или выберите ниже.",
                "The model is not sure. Check the dish: correct its name or pick one below.",
            )}
        </p>
    }
}

/// The other likely dishes; picking one fills the values with its own.
#[component]
fn Alternatives(
    options: StoredValue<Vec<DishOption>>,
    selected: RwSignal<usize>,
    choose: impl Fn(usize) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let lang = use_lang();
    let dishes = use_dishes();
    view! {
        <div class="alternatives" class:hidden=move || options.with_value(|o| o.len() < 2)>
            <h3>{move || tr(lang.get(), "Или это:", "Or is it:")}</h3>
            {move || options.with_value(|o| o.iter().enumerate().map(|(i, option)| {
                let label = format!("{} ({:.0}%)", dish_name(lang.get(), &option.dish, &dishes.get()), option.confidence * 100.0);
                view! {
                    <button class="chip alternative" class:active=move || selected.get() == i on:click=move |_| choose(i)>{label}</button>
                }
            }).collect_view())}
        </div>
    }
}
