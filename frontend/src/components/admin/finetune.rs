//! Fine-tuning on the examples: the settings, start, and the run as it goes (status,
//! step, loss, the held-out measure before and after) from the server's event stream;
//! cancel, and resume a cancelled run.

use leptos::prelude::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{accuracy, use_admin};
use crate::i18n::{tr, use_lang};

/// Waits `ms` milliseconds.
async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(window) = web_sys::window() {
            let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

#[component]
pub(super) fn Finetune() -> impl IntoView {
    let lang = use_lang();
    let admin = use_admin();
    let run = RwSignal::new(Value::Null);
    let (epochs, lr, batch, freeze, include_base) = (
        RwSignal::new("5".to_string()),
        RwSignal::new("0.00002".to_string()),
        RwSignal::new("10".to_string()),
        RwSignal::new("article".to_string()),
        RwSignal::new(false),
    );
    // The event stream: a snapshot, then every step; opened again a moment after it ends
    // (a restarted server), closed when the admin signs out or leaves.
    Effect::new(move || {
        let Some(token) = admin.token.get() else { return };
        let closed = Arc::new(AtomicBool::new(false));
        on_cleanup({
            let closed = closed.clone();
            move || closed.store(true, Ordering::Relaxed)
        });
        leptos::task::spawn_local(async move {
            let on_event = move |data: &str| {
                if let Ok(event) = serde_json::from_str::<Value>(data) {
                    if !event["run"].is_null() {
                        run.set(event["run"].clone());
                    }
                    if matches!(event["kind"].as_str(), Some("finished" | "promoted" | "cancelled" | "failed")) {
                        admin.refresh();
                    }
                }
            };
            while !closed.load(Ordering::Relaxed) {
                let stopped = || closed.load(Ordering::Relaxed);
                if let Err(message) =
                    crate::http::events("/api/v1/finetune/events", Some(&token), on_event, stopped).await
                {
                    admin.failed(message);
                }
                sleep_ms(3_000).await;
            }
        });
    });
    let call = move |path: &'static str, body: Option<String>| {
        let token = admin.token();
        leptos::task::spawn_local(async move {
            match crate::http::json::<Value>("POST", path, token.as_deref(), body.as_deref()).await {
                Ok(record) if record.is_object() => run.set(record),
                Ok(_) => {}
                Err(message) => admin.failed(message),
            }
        });
    };
    let start = move |_| {
        let settings = json!({
            "epochs": epochs.get_untracked().trim().parse::<u64>().unwrap_or(5),
            "lr": lr.get_untracked().trim().parse::<f64>().unwrap_or(2e-5),
            "batch_size": batch.get_untracked().trim().parse::<u64>().unwrap_or(10),
            "freeze": freeze.get_untracked(),
            "include_base": include_base.get_untracked(),
        });
        admin.error.set(None);
        call("/api/v1/finetune", Some(settings.to_string()));
    };
    let status = move || run.with(|r| r["status"].as_str().unwrap_or("none").to_string());
    let running = move || status() == "running";
    let field = |label: (&'static str, &'static str), id: &'static str, value: RwSignal<String>| {
        view! {
            <label>
                {move || tr(lang.get(), label.0, label.1)}
                <input id=id type="text" inputmode="decimal" prop:value=move || value.get() on:input=move |e| value.set(event_target_value(&e)) />
            </label>
        }
    };
    view! {
        <section class="admin-section" aria-labelledby="finetune-title">
            <h2 id="finetune-title">{move || tr(lang.get(), "Дообучение", "Fine-tuning")}</h2>
            <fieldset class="values">
                {field(("Эпохи", "Epochs"), "finetune-epochs", epochs)}
                {field(("Скорость обучения", "Learning rate"), "finetune-lr", lr)}
                {field(("Пакет", "Batch size"), "finetune-batch", batch)}
                <label>
                    {move || tr(lang.get(), "Заморозить", "Freeze")}
                    <select id="finetune-freeze" on:change=move |e| freeze.set(event_target_value(&e))>
                        <option value="article" selected=true>{move || tr(lang.get(), "как в статье (внимание и MLP)", "as the article (attention and MLP)")}</option>
                        <option value="none">{move || tr(lang.get(), "ничего", "nothing")}</option>
                    </select>
                </label>
                <label class="consent">
                    <input id="finetune-include-base" type="checkbox" on:change=move |e| include_base.set(event_target_checked(&e)) />
                    {move || tr(lang.get(), "Добавить базовый набор данных сервера", "Add the server's base data set")}
                </label>
            </fieldset>
            <button id="finetune-start" class="primary" disabled=running on:click=start>
                {move || tr(lang.get(), "Начать дообучение", "Start fine-tuning")}
            </button>
            <div id="finetune-status" class="run" data-status=status data-version=move || run.with(|r| r["version"].as_str().unwrap_or_default().to_string())
                class:hidden=move || run.with(Value::is_null)>
                <p>
                    <strong>{move || run.with(|r| r["version"].as_str().unwrap_or_default().to_string())}</strong>
                    " · " <span id="finetune-state">{status}</span>
                    " · " <span id="finetune-step">{move || run.with(|r| format!("{} / {}", r["step"], r["total_steps"]))}</span>
                    " · loss " {move || run.with(|r| r["loss"].as_f64().map_or("—".into(), |l| format!("{l:.4}")))}
                </p>
                <progress max=move || run.with(|r| r["total_steps"].as_u64().unwrap_or(1).max(1)) value=move || run.with(|r| r["step"].as_u64().unwrap_or(0))></progress>
                <p id="finetune-measure">
                    {move || run.with(|r| format!(
                        "{}: {} → {}",
                        tr(lang.get(), "Блюдо названо верно (отложенная выборка)", "Dish named right (held-out rows)"),
                        accuracy(&r["before"]),
                        accuracy(&r["after"]),
                    ))}
                </p>
                <p class="field-error" class:hidden=move || run.with(|r| r["error"].is_null())>
                    {move || run.with(|r| r["error"].as_str().unwrap_or_default().to_string())}
                </p>
                <button id="finetune-cancel" class="secondary small" class:hidden=move || !running() on:click=move |_| call("/api/v1/finetune/cancel", None)>
                    {move || tr(lang.get(), "Остановить", "Cancel")}
                </button>
                <button id="finetune-resume" class="secondary small" class:hidden=move || status() != "cancelled" on:click=move |_| call("/api/v1/finetune/resume", None)>
                    {move || tr(lang.get(), "Продолжить", "Resume")}
                </button>
            </div>
        </section>
    }
}
