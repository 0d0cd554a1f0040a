//! The meal history kept in this browser, with totals per day; a meal saved by mistake
//! can be removed on its own, and one kept with its photo can teach the model (on a
//! server that keeps examples).

use leptos::prelude::*;

use crate::i18n::{dish_name, tr, use_dishes, use_lang, Lang};
use crate::storage::{self, Meal};
use crate::teach::{consent_text, send_example, server_teaches, Source};

#[component]
pub fn History() -> impl IntoView {
    let lang = use_lang();
    let history = expect_context::<RwSignal<Vec<Meal>>>();
    let dishes = use_dishes();
    let remove = move |index: usize| {
        history.update(|meals| {
            if index < meals.len() {
                meals.remove(index);
            }
            storage::save_history(meals);
        });
    };
    let teach = move |index: usize| {
        let Some(meal) = history.with_untracked(|meals| meals.get(index).cloned()) else { return };
        let Some(photo) = meal.photo.clone() else { return };
        let lang = lang.get_untracked();
        // The consent is asked each time: it is the user's to give per photo.
        let question = format!(
            "{}\n\n{}",
            tr(lang, "Отправить снимок, чтобы дообучить модель?", "Send the photo to teach the model?"),
            consent_text(lang)
        );
        if !web_sys::window().and_then(|w| w.confirm_with_message(&question).ok()).unwrap_or(false) {
            return;
        }
        leptos::task::spawn_local(async move {
            match send_example(&photo, &meal.dish, meal.per_100g(), Source::History, lang).await {
                // The meal itself, wherever it is now (another may have been removed meanwhile).
                Ok(_) => history.update(|meals| {
                    if let Some(m) = meals.iter_mut().find(|m| **m == meal) {
                        m.taught = true;
                    }
                    storage::save_history(meals);
                }),
                Err(message) => {
                    if let Some(window) = web_sys::window() {
                        let _ = window
                            .alert_with_message(&format!("{} {message}", tr(lang, "Не сохранено:", "Not stored:")));
                    }
                }
            }
        });
    };
    let clear = move |_| {
        let question = tr(lang.get_untracked(), "Удалить весь дневник?", "Delete the whole history?");
        // Everything goes at once, so ask first.
        if web_sys::window().and_then(|w| w.confirm_with_message(question).ok()).unwrap_or(false) {
            history.set(Vec::new());
            storage::save_history(&[]);
        }
    };
    view! {
        <section class="history" aria-labelledby="history-title">
            <h2 id="history-title">{move || tr(lang.get(), "Дневник питания", "Meal history")}</h2>
            <p id="history-empty" class="muted" class:hidden=move || !history.get().is_empty()>
                {move || tr(lang.get(), "Пока пусто: сохраните распознанное блюдо.", "Nothing yet: save a recognised dish.")}
            </p>
            {move || {
                let meals = history.get();
                let lang = lang.get();
                let known = dishes.get();
                storage::daily_totals(&meals).into_iter().map(|(date, kcal, p, f, c)| {
                    // Each meal with its place in the whole history, which removal needs.
                    let day: Vec<(usize, Meal)> =
                        meals.iter().cloned().enumerate().filter(|(_, m)| m.date == date).collect();
                    view! {
                        <div class="day" data-date=date.clone()>
                            <h3>
                                {storage::long_date(&date, lang.code())} " — "
                                <span class="day-total" data-kcal=format!("{kcal:.0}")>{day_total(lang, kcal, p, f, c)}</span>
                            </h3>
                            <ul class="meals">
                                {day.into_iter().map(|(index, meal)| view! {
                                    <li>
                                        <span>{meal_line(lang, &meal, &dish_name(lang, &meal.dish, &known))}</span>
                                        <button
                                            class="teach-meal secondary small"
                                            class:hidden=!server_teaches() || meal.photo.is_none()
                                            disabled=meal.taught
                                            on:click=move |_| teach(index)
                                        >
                                            {if meal.taught { tr(lang, "Отправлено ✓", "Sent ✓") } else { tr(lang, "Научить модель", "Teach the model") }}
                                        </button>
                                        <button
                                            class="remove-meal"
                                            aria-label=format!("{} {}", tr(lang, "Удалить", "Remove"), dish_name(lang, &meal.dish, &known))
                                            on:click=move |_| remove(index)
                                        >
                                            "✕"
                                        </button>
                                    </li>
                                }).collect_view()}
                            </ul>
                        </div>
                    }
                }).collect_view()
            }}
            <button class="secondary small" on:click=clear class:hidden=move || history.get().is_empty()>
                {move || tr(lang.get(), "Очистить всё", "Clear all")}
            </button>
        </section>
    }
}

fn day_total(lang: Lang, kcal: f32, protein: f32, fat: f32, carbs: f32) -> String {
    match lang {
        Lang::Ru => format!("{kcal:.0} ккал · Б {protein:.0} · Ж {fat:.0} · У {carbs:.0}"),
        Lang::En => format!("{kcal:.0} kcal · P {protein:.0} · F {fat:.0} · C {carbs:.0}"),
    }
}

fn meal_line(lang: Lang, meal: &Meal, dish: &str) -> String {
    match lang {
        Lang::Ru => format!("{dish} — {:.0} г, {:.0} ккал", meal.grams, meal.kcal),
        Lang::En => format!("{dish} — {:.0} g, {:.0} kcal", meal.grams, meal.kcal),
    }
}
