//! "Wrong? Tell us": the user names the right dish (one the model knows, or a new one)
//! and its values per 100 g, agrees to the stated terms, and the photo as it was sent
//! goes to the server as a training example. Shown only where the server keeps them.

use leptos::prelude::*;

use super::values::{number, value_labels, VALUE_FIELDS};
use crate::i18n::{tr, use_dishes, use_lang};
use crate::teach::{consent_text, send_example, server_teaches, LastPhoto, Source};

#[derive(Debug, Clone, PartialEq)]
enum Sending {
    Idle,
    Busy,
    Sent(String),
    Failed(String),
}

impl Sending {
    fn key(&self) -> &'static str {
        match self {
            Sending::Idle => "idle",
            Sending::Busy => "sending",
            Sending::Sent(_) => "sent",
            Sending::Failed(_) => "failed",
        }
    }
}

#[component]
pub(super) fn Correction(dish: RwSignal<String>, fields: [RwSignal<String>; 4]) -> impl IntoView {
    let lang = use_lang();
    let dishes = use_dishes();
    let photo = use_context::<LastPhoto>();
    let open = RwSignal::new(false);
    let consent = RwSignal::new(false);
    let sending = RwSignal::new(Sending::Idle);
    // The correction's own copy, filled from the card when the form opens.
    let right_dish = RwSignal::new(String::new());
    let values: [RwSignal<String>; 4] = std::array::from_fn(|_| RwSignal::new(String::new()));
    let start = move |_| {
        right_dish.set(dish.get_untracked());
        for (value, field) in values.iter().zip(fields) {
            value.set(field.get_untracked());
        }
        sending.set(Sending::Idle);
        open.set(true);
    };
    let problem = move || {
        let l = lang.get();
        if right_dish.get().trim().is_empty() {
            return Some(tr(l, "Назовите блюдо.", "Name the dish."));
        }
        if values.iter().any(|v| number(&v.get()).is_none()) {
            return Some(tr(l, "Заполните все четыре числа.", "Fill in all four numbers."));
        }
        if !consent.get() {
            return Some(tr(l, "Нужно ваше согласие.", "Your consent is needed."));
        }
        None
    };
    let save = move |_| {
        let Some(photo) = photo.and_then(|p| p.0.get_untracked()) else { return };
        if problem().is_some() {
            return;
        }
        let numbers = values.map(|v| number(&v.get_untracked()).unwrap_or(0.0));
        let (dish, lang) = (right_dish.get_untracked(), lang.get_untracked());
        sending.set(Sending::Busy);
        leptos::task::spawn_local(async move {
            sending.set(match send_example(&photo, dish.trim(), numbers, Source::Correction, lang).await {
                Ok(caption) => Sending::Sent(caption),
                Err(message) => Sending::Failed(message),
            });
        });
    };
    let shown = move || server_teaches() && photo.is_some_and(|p| p.0.with(Option::is_some));
    view! {
        <div class="correction" class:hidden=move || !shown()>
            <button id="correction-open" class="secondary small" class:hidden=move || open.get() on:click=start>
                {move || tr(lang.get(), "Неверно? Подскажите", "Wrong? Tell us")}
            </button>
            <fieldset id="correction" class="values" class:hidden=move || !open.get() data-state=move || sending.get().key()>
                <legend>{move || tr(lang.get(), "Что на снимке на самом деле", "What the photo really shows")}</legend>
                <label>
                    {move || tr(lang.get(), "Блюдо", "Dish")}
                    <input id="correction-dish" type="text" list="correction-dishes" maxlength="60"
                        prop:value=move || right_dish.get() on:input=move |e| right_dish.set(event_target_value(&e)) />
                </label>
                <datalist id="correction-dishes">
                    {move || dishes.get().into_iter().map(|d| view! { <option value=d.name></option> }).collect_view()}
                </datalist>
                {(0..4).map(|i| {
                    let value = values[i];
                    view! {
                        <label>
                            {move || value_labels(lang.get())[i]}
                            <input class="value-input" data-correction=VALUE_FIELDS[i]
                                type="text" inputmode="decimal"
                                prop:value=move || value.get() on:input=move |e| value.set(event_target_value(&e)) />
                        </label>
                    }
                }).collect_view()}
                <label class="consent">
                    <input id="correction-consent" type="checkbox" prop:checked=move || consent.get()
                        on:change=move |e| consent.set(event_target_checked(&e)) />
                    {move || consent_text(lang.get())}
                </label>
                <p class="field-error" class:hidden=move || problem().is_none() || !matches!(sending.get(), Sending::Idle)>
                    {move || problem().unwrap_or_default()}
                </p>
                <button id="correction-save" class="primary"
                    disabled=move || problem().is_some() || matches!(sending.get(), Sending::Busy | Sending::Sent(_))
                    on:click=save>
                    {move || tr(lang.get(), "Отправить", "Send")}
                </button>
                <p id="correction-status" class="status-line" role="status">
                    {move || match sending.get() {
                        Sending::Sent(caption) => format!("{} {caption}", tr(lang.get(), "Спасибо! Сохранено:", "Thank you! Stored:")),
                        Sending::Failed(message) => format!("{} {message}", tr(lang.get(), "Не сохранено:", "Not stored:")),
                        Sending::Busy => tr(lang.get(), "Отправляем…", "Sending…").to_string(),
                        Sending::Idle => String::new(),
                    }}
                </p>
            </fieldset>
        </div>
    }
}
