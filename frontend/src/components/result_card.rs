//! The answer: what the model makes of the photo ("not food", "not sure", or the dish
//! with the probability that it is right), values per 100 g with a macro chart, a portion
//! in grams, the Atwater check said in words, alternatives to pick from, and an edit step
//! before the meal is saved (to the history, or to the host page in the widget).

use borscht_protocol::nutrition::{atwater, DishOption, Nutrition, ATWATER_TOLERANCE_KCAL};
use borscht_protocol::{Recognition, Verdict};
use leptos::prelude::*;

use super::embed::embedded;
use crate::i18n::{dish_name, tr, use_dishes, use_lang, Lang};
use crate::storage::{self, Meal};

const PORTION_PRESETS: [u32; 4] = [100, 150, 250, 350];
/// The portions one may enter, in grams.
const MIN_GRAMS: f32 = 1.0;
const MAX_GRAMS: f32 = 5000.0;

fn number(text: &str) -> Option<f32> {
    text.trim().replace(',', ".").parse::<f32>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

fn show(value: Option<f32>) -> String {
    value.map_or("—".into(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") })
}

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

#[component]
pub fn ResultCard(recognition: Recognition) -> impl IntoView {
    let lang = use_lang();
    let verdict = recognition.verdict;
    let options: Vec<DishOption> = recognition.best.iter().cloned().chain(recognition.alternatives.clone()).collect();
    if verdict == Verdict::NotFood || options.is_empty() {
        let (key, ru, en) = if verdict == Verdict::NotFood {
            (
                "not_food",
                "Похоже, на снимке не еда. Сфотографируйте блюдо поближе.",
                "This does not look like food. Take a closer photo of the dish.",
            )
        } else {
            ("none", "Блюдо не распознано — попробуйте другой ракурс.", "No dish recognised; try another angle.")
        };
        return view! {
            <div id="result-card" class="result-card" data-dish="" data-verdict=key>
                <p class="verdict">{move || tr(lang.get(), ru, en)}</p>
            </div>
        }
        .into_any();
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
    // The confidence is the probability of the model's own best answer.
    let confidence = recognition.confidence;
    let calibrated = recognition.calibrated;
    let dishes = use_dishes();
    let shown_dish = move || dish_name(lang.get(), &dish.get(), &dishes.get());
    view! {
        <article id="result-card" class="result-card" data-dish=move || dish.get() data-verdict=match verdict {
            Verdict::NotSure => "not_sure",
            _ => "dish",
        }>
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
            <p id="not-sure" class="verdict-note" class:hidden=move || verdict != Verdict::NotSure>
                {move || tr(
                    lang.get(),
                    "Модель не уверена. Проверьте блюдо: исправьте название или выберите ниже.",
                    "The model is not sure. Check the dish: correct its name or pick one below.",
                )}
            </p>
            <MacroChart nutrition=per_100g />
            <fieldset class="values">
                <legend>{move || tr(lang.get(), "На 100 г (можно исправить)", "Per 100 g (you can correct them)")}</legend>
                <label>
                    {move || tr(lang.get(), "Блюдо", "Dish")}
                    <input id="edit-dish" type="text" prop:value=move || dish.get() on:input=move |e| dish.set(event_target_value(&e)) />
                </label>
                {(0..4).map(|i| {
                    let field = fields[i];
                    view! {
                        <label>
                            {move || value_labels(lang.get())[i]}
                            <input
                                class="value-input"
                                data-field=["protein", "fat", "carbs", "kcal"][i]
                                type="text"
                                inputmode="decimal"
                                prop:value=move || field.get()
                                on:input=move |e| field.set(event_target_value(&e))
                            />
                        </label>
                    }
                }).collect_view()}
            </fieldset>
            <AtwaterNote nutrition=per_100g />
            <Portion per_100g=per_100g dish=dish saved=saved />
            <div class="alternatives" class:hidden=move || options.with_value(|o| o.len() < 2)>
                <h3>{move || tr(lang.get(), "Или это:", "Or is it:")}</h3>
                {move || options.with_value(|o| o.iter().enumerate().map(|(i, option)| {
                    let label = format!("{} ({:.0}%)", dish_name(lang.get(), &option.dish, &dishes.get()), option.confidence * 100.0);
                    view! {
                        <button class="chip alternative" class:active=move || selected.get() == i on:click=move |_| choose(i)>{label}</button>
                    }
                }).collect_view())}
            </div>
        </article>
    }
    .into_any()
}

fn value_labels(lang: Lang) -> [&'static str; 4] {
    [
        tr(lang, "Белки, г", "Protein, g"),
        tr(lang, "Жиры, г", "Fat, g"),
        tr(lang, "Углеводы, г", "Carbs, g"),
        tr(lang, "Ккал", "kcal"),
    ]
}

/// The portion in grams (presets or typed, 1 to 5000 g), its values, and saving the meal.
#[component]
fn Portion(per_100g: Signal<Nutrition>, dish: RwSignal<String>, saved: RwSignal<bool>) -> impl IntoView {
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

/// Bars of the energy from protein (4 kcal/g), fat (9) and carbohydrate (4).
#[component]
fn MacroChart(nutrition: Signal<Nutrition>) -> impl IntoView {
    let lang = use_lang();
    let shares = move || {
        let n = nutrition.get();
        let energy = [4.0 * n.protein_g.unwrap_or(0.0), 9.0 * n.fat_g.unwrap_or(0.0), 4.0 * n.carbs_g.unwrap_or(0.0)];
        let total: f32 = energy.iter().sum();
        energy.map(|e| if total > 0.0 { e / total * 100.0 } else { 0.0 })
    };
    view! {
        <div class="macro-chart" role="img" aria-label=move || {
            let [p, f, c] = shares();
            format!("{}: {p:.0}% / {f:.0}% / {c:.0}%", tr(lang.get(), "Энергия из белков, жиров и углеводов", "Energy from protein, fat and carbs"))
        }>
            <span class="bar protein" style=move || format!("width: {:.1}%", shares()[0])></span>
            <span class="bar fat" style=move || format!("width: {:.1}%", shares()[1])></span>
            <span class="bar carbs" style=move || format!("width: {:.1}%", shares()[2])></span>
        </div>
        <p class="legend muted">
            <span class="dot protein"></span>{move || tr(lang.get(), "белки", "protein")}
            <span class="dot fat"></span>{move || tr(lang.get(), "жиры", "fat")}
            <span class="dot carbs"></span>{move || tr(lang.get(), "углеводы", "carbs")}
        </p>
    }
}

/// Whether the kcal agree with 4P + 9F + 4C, said in words either way: how far the stated
/// energy is from what the macronutrients give, and which way.
#[component]
fn AtwaterNote(nutrition: Signal<Nutrition>) -> impl IntoView {
    let lang = use_lang();
    let check = move || atwater(&nutrition.get());
    let words = move || {
        let l = lang.get();
        let Some(c) = check() else {
            return tr(l, "Проверка калорийности: не хватает чисел.", "Calorie check: some numbers are missing.")
                .to_string();
        };
        let formula = format!(
            "{} = {:.0} {}",
            tr(l, "4·Б + 9·Ж + 4·У", "4·P + 9·F + 4·C"),
            c.expected_kcal,
            tr(l, "ккал", "kcal")
        );
        let difference = c.difference_kcal();
        let how_far = if difference.abs() <= ATWATER_TOLERANCE_KCAL {
            match l {
                Lang::Ru => format!("в пределах {ATWATER_TOLERANCE_KCAL:.0} ккал от этого"),
                Lang::En => format!("within {ATWATER_TOLERANCE_KCAL:.0} kcal of that"),
            }
        } else {
            let percent = c.relative_error * 100.0;
            match (l, difference > 0.0) {
                (Lang::Ru, true) => format!("на {percent:.0}% больше"),
                (Lang::Ru, false) => format!("на {percent:.0}% меньше"),
                (Lang::En, true) => format!("{percent:.0}% more than that"),
                (Lang::En, false) => format!("{percent:.0}% less than that"),
            }
        };
        let verdict = if c.consistent {
            tr(l, "сходится", "consistent")
        } else {
            tr(l, "не сходится, проверьте числа", "inconsistent: check the numbers")
        };
        match l {
            Lang::Ru => {
                format!("Проверка калорийности: {formula}; указано {:.0} ккал, {how_far} — {verdict}.", c.stated_kcal)
            }
            Lang::En => format!("Calorie check: {formula}; stated {:.0} kcal, {how_far}: {verdict}.", c.stated_kcal),
        }
    };
    view! {
        <p id="atwater" class="atwater" data-consistent=move || check().map(|c| c.consistent.to_string()).unwrap_or_default()>
            {words}
        </p>
    }
}
