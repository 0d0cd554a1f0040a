//! The answer: dish, values per 100 g with a macro chart, a portion in grams, the
//! Atwater check shown honestly, alternatives to pick from, and an edit step before
//! the meal is saved to the history.

use borscht_protocol::nutrition::{atwater, DishOption, Nutrition};
use borscht_protocol::Recognition;
use leptos::prelude::*;

use crate::i18n::{tr, use_lang, Lang};
use crate::storage::{self, Meal};

const PORTION_PRESETS: [u32; 4] = [100, 150, 250, 350];

fn number(text: &str) -> Option<f32> {
    text.trim().replace(',', ".").parse::<f32>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

fn show(value: Option<f32>) -> String {
    value.map_or("—".into(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") })
}

#[component]
pub fn ResultCard(recognition: Recognition, #[prop(optional)] embedded: bool) -> impl IntoView {
    let lang = use_lang();
    let history = expect_context::<RwSignal<Vec<Meal>>>();
    let options: Vec<DishOption> = recognition.best.iter().cloned().chain(recognition.alternatives.clone()).collect();
    if options.is_empty() {
        return view! {
            <div id="result-card" class="result-card" data-dish="">
                <p>{move || tr(lang.get(), "Блюдо не распознано — попробуйте другой ракурс.", "No dish recognised; try another angle.")}</p>
            </div>
        }
        .into_any();
    }
    let options = StoredValue::new(options);
    let selected = RwSignal::new(0usize);
    let dish = RwSignal::new(String::new());
    let fields: [RwSignal<String>; 4] = std::array::from_fn(|_| RwSignal::new(String::new()));
    let grams = RwSignal::new(100.0f32);
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
    let per_100g = move || Nutrition {
        dish: Some(dish.get()),
        protein_g: number(&fields[0].get()),
        fat_g: number(&fields[1].get()),
        carbs_g: number(&fields[2].get()),
        kcal: number(&fields[3].get()),
    };
    let portion = move || per_100g().for_portion(grams.get());
    let confidence = move || options.with_value(|o| o[selected.get()].confidence);

    let save = move |_| {
        let p = portion();
        let meal = Meal {
            date: storage::today(),
            dish: dish.get_untracked(),
            grams: grams.get_untracked(),
            protein_g: p.protein_g.unwrap_or(0.0),
            fat_g: p.fat_g.unwrap_or(0.0),
            carbs_g: p.carbs_g.unwrap_or(0.0),
            kcal: p.kcal.unwrap_or(0.0),
        };
        if embedded {
            super::embed::post_to_host("borscht:saved", &meal);
        }
        history.update(|h| {
            h.push(meal);
            storage::save_history(h);
        });
        saved.set(true);
    };

    let labels = |lang: Lang| {
        [
            tr(lang, "Белки, г", "Protein, g"),
            tr(lang, "Жиры, г", "Fat, g"),
            tr(lang, "Углеводы, г", "Carbs, g"),
            tr(lang, "Ккал", "kcal"),
        ]
    };

    view! {
        <article id="result-card" class="result-card" data-dish=move || dish.get()>
            <header class="result-head">
                <h2 id="result-dish">{move || dish.get()}</h2>
                <span id="result-confidence" class="confidence">
                    {move || format!("{}: {:.0}%", tr(lang.get(), "уверенность", "confidence"), confidence() * 100.0)}
                </span>
            </header>
            <MacroChart nutrition=Signal::derive(per_100g) />
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
                            {move || labels(lang.get())[i]}
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
            <AtwaterNote nutrition=Signal::derive(per_100g) />
            <fieldset class="portion">
                <legend>{move || tr(lang.get(), "Порция", "Portion")}</legend>
                <div class="presets" role="group">
                    {PORTION_PRESETS.iter().map(|&g| view! {
                        <button
                            class="chip"
                            class:active=move || grams.get() == g as f32
                            aria-pressed=move || (grams.get() == g as f32).to_string()
                            on:click=move |_| grams.set(g as f32)
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
                        prop:value=move || grams.get().to_string()
                        on:input=move |e| if let Some(g) = number(&event_target_value(&e)).filter(|g| *g > 0.0) { grams.set(g) }
                    />
                </label>
                <p id="portion-values" class="portion-values" data-kcal=move || portion().kcal.map(|k| format!("{k:.1}")).unwrap_or_default()>
                    {move || {
                        let p = portion();
                        let l = lang.get();
                        format!(
                            "{} {} {}: {} {} · {} {} · {} {} · {} {}",
                            tr(l, "На", "For"), grams.get(), tr(l, "г", "g"),
                            show(p.kcal), tr(l, "ккал", "kcal"),
                            show(p.protein_g), tr(l, "г белков", "g protein"),
                            show(p.fat_g), tr(l, "г жиров", "g fat"),
                            show(p.carbs_g), tr(l, "г углеводов", "g carbs"),
                        )
                    }}
                </p>
            </fieldset>
            <div class="alternatives" class:hidden=move || options.with_value(|o| o.len() < 2)>
                <h3>{move || tr(lang.get(), "Или это:", "Or is it:")}</h3>
                {move || options.with_value(|o| o.iter().enumerate().map(|(i, option)| {
                    let label = format!("{} ({:.0}%)", option.dish, option.confidence * 100.0);
                    view! {
                        <button class="chip alternative" class:active=move || selected.get() == i on:click=move |_| choose(i)>{label}</button>
                    }
                }).collect_view())}
            </div>
            <button id="save-meal" class="primary" on:click=save disabled=move || saved.get()>
                {move || if saved.get() { tr(lang.get(), "Сохранено ✓", "Saved ✓") } else { tr(lang.get(), "Сохранить в дневник", "Save to history") }}
            </button>
        </article>
    }
    .into_any()
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

/// Whether the kcal agree with 4P + 9F + 4C, said plainly either way.
#[component]
fn AtwaterNote(nutrition: Signal<Nutrition>) -> impl IntoView {
    let lang = use_lang();
    let check = move || atwater(&nutrition.get());
    view! {
        <p
            id="atwater"
            class="atwater"
            data-consistent=move || check().map(|c| c.consistent.to_string()).unwrap_or_default()
        >
            {move || match check() {
                None => tr(lang.get(), "Проверка калорийности: не хватает чисел.", "Calorie check: some numbers are missing.").to_string(),
                Some(c) => format!(
                    "{} {} = {:.0}, {} {:.0} — {} ({:.0}%)",
                    tr(lang.get(), "Проверка калорийности:", "Calorie check:"),
                    tr(lang.get(), "4·Б + 9·Ж + 4·У", "4·P + 9·F + 4·C"),
                    c.expected_kcal,
                    tr(lang.get(), "указано", "stated"),
                    c.stated_kcal,
                    if c.consistent { tr(lang.get(), "сходится", "consistent") } else { tr(lang.get(), "не сходится, проверьте числа", "inconsistent, check the numbers") },
                    c.relative_error * 100.0
                ),
            }}
        </p>
    }
}
