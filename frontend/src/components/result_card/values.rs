//! The values per 100 g as editable fields, and how numbers are read and shown.

use leptos::prelude::*;

use crate::i18n::{tr, use_lang, Lang};

/// A value typed by the user: a decimal point or comma, finite and not negative.
pub(super) fn number(text: &str) -> Option<f32> {
    text.trim().replace(',', ".").parse::<f32>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// The four values per 100 g, as the page's fields name them.
pub(super) const VALUE_FIELDS: [&str; 4] = ["protein", "fat", "carbs", "kcal"];

pub(super) fn show(value: Option<f32>) -> String {
    value.map_or("—".into(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") })
}

/// The four values' labels, in the order of [`VALUE_FIELDS`].
pub(super) fn value_labels(lang: Lang) -> [&'static str; 4] {
    [
        tr(lang, "Белки, г", "Protein, g"),
        tr(lang, "Жиры, г", "Fat, g"),
        tr(lang, "Углеводы, г", "Carbs, g"),
        tr(lang, "Ккал", "kcal"),
    ]
}

/// The dish's name and its four values per 100 g, each a field the user may correct.
#[component]
pub(super) fn Values(dish: RwSignal<String>, fields: [RwSignal<String>; 4]) -> impl IntoView {
    let lang = use_lang();
    view! {
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
                            data-field=VALUE_FIELDS[i]
                            type="text"
                            inputmode="decimal"
                            prop:value=move || field.get()
                            on:input=move |e| field.set(event_target_value(&e))
                        />
                    </label>
                }
            }).collect_view()}
        </fieldset>
    }
}
