//! The model versions: `base` and each finished fine-tune with its held-out measure
//! beside its parent's; promote one (served without a restart) or roll back.

use leptos::prelude::*;
use serde_json::Value;

use super::{accuracy, use_admin};
use crate::i18n::{tr, use_lang};

fn measure(run: &Value) -> String {
    if run.is_null() {
        return String::new();
    }
    format!("{} → {} ({} {})", accuracy(&run["before"]), accuracy(&run["after"]), run["examples"], "examples")
}

#[component]
pub(super) fn Versions() -> impl IntoView {
    let lang = use_lang();
    let admin = use_admin();
    let models = RwSignal::new(Value::Null);
    Effect::new(move || {
        admin.reload.track();
        let token = admin.token.get();
        leptos::task::spawn_local(async move {
            match crate::http::json::<Value>("GET", "/api/v1/models", token.as_deref(), None).await {
                Ok(list) => models.set(list),
                Err(message) => admin.failed(message),
            }
        });
    });
    let post = move |path: String| {
        let token = admin.token();
        leptos::task::spawn_local(async move {
            match crate::http::json::<Value>("POST", &path, token.as_deref(), None).await {
                Ok(list) => models.set(list),
                Err(message) => admin.failed(message),
            }
        });
    };
    let active = move || models.with(|m| m["active"].as_str().unwrap_or_default().to_string());
    view! {
        <section class="admin-section" aria-labelledby="versions-title">
            <h2 id="versions-title">{move || tr(lang.get(), "Версии модели", "Model versions")}</h2>
            <p>{move || tr(lang.get(), "Сейчас работает:", "Serving now:")} " " <strong id="active-version">{active}</strong></p>
            <table class="admin-table">
                <tbody>
                    {move || models.with(|m| m["versions"].as_array().cloned().unwrap_or_default()).into_iter().map(|version| {
                        let name = version["name"].as_str().unwrap_or_default().to_string();
                        let (promote_name, shown, row, button) = (name.clone(), name.clone(), name.clone(), name.clone());
                        let is_active = move || active() == name;
                        view! {
                            <tr class="version-row" data-version=row>
                                <td><strong>{shown}</strong></td>
                                <td>{measure(&version["run"])}</td>
                                <td>
                                    <button class="secondary small promote" data-version=button class:hidden=is_active
                                        on:click=move |_| post(format!("/api/v1/models/{promote_name}/promote"))>
                                        {move || tr(lang.get(), "Включить", "Promote")}
                                    </button>
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
            <button id="rollback" class="secondary small" on:click=move |_| post("/api/v1/models/rollback".into())>
                {move || tr(lang.get(), "Вернуть предыдущую", "Roll back")}
            </button>
        </section>
    }
}
