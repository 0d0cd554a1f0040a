//! Where the energy comes from, as bars.

use borscht_protocol::nutrition::Nutrition;
use leptos::prelude::*;

use crate::i18n::{tr, use_lang};

/// Bars of the energy from protein (4 kcal/g), fat (9) and carbohydrate (4).
#[component]
pub(super) fn MacroChart(nutrition: Signal<Nutrition>) -> impl IntoView {
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
