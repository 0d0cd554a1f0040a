//! The examples users sent: how many, each with its caption, who sent it and when;
//! export (the article's CSV and the photos, a zip) and delete.

use leptos::prelude::*;
use serde_json::Value;

use super::use_admin;
use crate::i18n::{tr, use_lang};

#[component]
pub(super) fn Examples() -> impl IntoView {
    let lang = use_lang();
    let admin = use_admin();
    let examples = RwSignal::new(Vec::<Value>::new());
    Effect::new(move || {
        admin.reload.track();
        let token = admin.token.get();
        leptos::task::spawn_local(async move {
            match crate::http::json::<Value>("GET", "/api/v1/examples", token.as_deref(), None).await {
                Ok(list) => examples.set(list["examples"].as_array().cloned().unwrap_or_default()),
                Err(message) => admin.failed(message),
            }
        });
    });
    let export = move |_| {
        let token = admin.token();
        leptos::task::spawn_local(async move {
            if let Err(message) =
                crate::http::download("/api/v1/examples/export", token.as_deref(), "borscht-examples.zip").await
            {
                admin.failed(message);
            }
        });
    };
    let delete = move |id: String| {
        let token = admin.token();
        leptos::task::spawn_local(async move {
            match crate::http::json::<Value>("DELETE", &format!("/api/v1/examples/{id}"), token.as_deref(), None).await
            {
                Ok(_) => admin.refresh(),
                Err(message) => admin.failed(message),
            }
        });
    };
    view! {
        <section class="admin-section" aria-labelledby="examples-title">
            <h2 id="examples-title">
                {move || tr(lang.get(), "Примеры пользователей", "Examples from users")}
                " (" <span id="examples-count">{move || examples.get().len()}</span> ")"
            </h2>
            <button id="export-examples" class="secondary small" on:click=export>
                {move || tr(lang.get(), "Скачать (CSV и снимки, zip)", "Download (CSV and photos, zip)")}
            </button>
            <table class="admin-table">
                <tbody>
                    {move || examples.get().into_iter().map(|example| {
                        let id = example["id"].as_str().unwrap_or_default().to_string();
                        let remove = id.clone();
                        view! {
                            <tr class="example-row" data-id=id>
                                <td>{example["caption"].as_str().unwrap_or_default().to_string()}</td>
                                <td class="muted">{format!("{} · {} · {}",
                                    example["created_at"].as_str().unwrap_or_default(),
                                    example["source"].as_str().unwrap_or_default(),
                                    example["client"].as_str().unwrap_or_default())}</td>
                                <td><button class="secondary small delete-example" on:click=move |_| delete(remove.clone())>
                                    {move || tr(lang.get(), "Удалить", "Delete")}
                                </button></td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
}
