//! The meal history kept in this browser, with totals per day.

use leptos::prelude::*;

use crate::i18n::{tr, use_lang};
use crate::storage::{self, Meal};

#[component]
pub fn History() -> impl IntoView {
    let lang = use_lang();
    let history = expect_context::<RwSignal<Vec<Meal>>>();
    let clear = move |_| {
        history.set(Vec::new());
        storage::save_history(&[]);
    };
    view! {
        <section class="history" aria-labelledby="history-title">
            <h2 id="history-title">{move || tr(lang.get(), "Дневник питания", "Meal history")}</h2>
            <p class="muted" class:hidden=move || !history.get().is_empty()>
                {move || tr(lang.get(), "Пока пусто: сохраните распознанное блюдо.", "Nothing yet: save a recognised dish.")}
            </p>
            {move || storage::daily_totals(&history.get()).into_iter().map(|(date, kcal, p, f, c)| {
                let meals: Vec<Meal> = history.get().into_iter().filter(|m| m.date == date).collect();
                view! {
                    <div class="day" data-date=date.clone()>
                        <h3>
                            {date.clone()} " — "
                            <span class="day-total" data-kcal=format!("{kcal:.0}")>{format!("{kcal:.0} ккал · Б {p:.0} · Ж {f:.0} · У {c:.0}")}</span>
                        </h3>
                        <ul>
                            {meals.into_iter().map(|m| view! {
                                <li>{format!("{} — {:.0} г, {:.0} ккал", m.dish, m.grams, m.kcal)}</li>
                            }).collect_view()}
                        </ul>
                    </div>
                }
            }).collect_view()}
            <button class="secondary small" on:click=clear class:hidden=move || history.get().is_empty()>
                {move || tr(lang.get(), "Очистить", "Clear")}
            </button>
        </section>
    }
}
