//! The Atwater check said in words.

use borscht_protocol::nutrition::{atwater, Nutrition, ATWATER_TOLERANCE_KCAL};
use leptos::prelude::*;

use crate::i18n::{tr, use_lang, Lang};

/// Whether the kcal agree with 4P + 9F + 4C, said in words either way: how far the stated
/// energy is from what the macronutrients give, and which way.
#[component]
pub(super) fn AtwaterNote(nutrition: Signal<Nutrition>) -> impl IntoView {
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
