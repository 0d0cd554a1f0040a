//! The admin page (`/admin`): with the server's admin token, the examples users sent
//! ([`examples`]), fine-tuning on them with live progress ([`finetune`]), and the model
//! versions to promote or roll back ([`versions`]). The token stays in this tab only
//! (sessionStorage); every call sends it.

mod examples;
mod finetune;
mod versions;

use leptos::prelude::*;

use crate::i18n::{tr, use_lang};
use examples::Examples;
use finetune::Finetune;
use versions::Versions;

const TOKEN_KEY: &str = "borscht.admin-token";

/// The admin token in use, and a counter that tells every section to load again.
#[derive(Clone, Copy)]
pub struct Admin {
    pub token: RwSignal<Option<String>>,
    pub reload: RwSignal<u32>,
    /// The last failure of any call, shown at the top.
    pub error: RwSignal<Option<String>>,
}

impl Admin {
    pub fn token(&self) -> Option<String> {
        self.token.get_untracked()
    }

    /// Every section loads again.
    pub fn refresh(&self) {
        self.reload.update(|n| *n += 1);
    }

    /// Shows a failed call's message; a refused token signs out.
    pub fn failed(&self, message: String) {
        if message.contains("admin token") {
            self.token.set(None);
            session_set(None);
        }
        self.error.set(Some(message));
    }
}

/// A held-out measure's dish accuracy as a percentage ("—" when there is none).
pub fn accuracy(measure: &serde_json::Value) -> String {
    measure["dish_accuracy"].as_f64().map_or("—".into(), |a| format!("{:.0}%", a * 100.0))
}

pub fn use_admin() -> Admin {
    expect_context::<Admin>()
}

fn session() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok()?
}

fn session_set(token: Option<&str>) {
    if let Some(storage) = session() {
        let _ = match token {
            Some(token) => storage.set_item(TOKEN_KEY, token),
            None => storage.remove_item(TOKEN_KEY),
        };
    }
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let lang = use_lang();
    let saved = session().and_then(|s| s.get_item(TOKEN_KEY).ok().flatten());
    let admin = Admin { token: RwSignal::new(saved), reload: RwSignal::new(0), error: RwSignal::new(None) };
    provide_context(admin);
    let typed = RwSignal::new(String::new());
    let sign_in = move |_| {
        let token = typed.get_untracked().trim().to_string();
        if !token.is_empty() {
            session_set(Some(&token));
            admin.error.set(None);
            admin.token.set(Some(token));
        }
    };
    let sign_out = move |_| {
        session_set(None);
        admin.token.set(None);
    };
    view! {
        <header class="top-bar">
            <h1 class="brand">"Borscht · admin"</h1>
            <button id="admin-sign-out" class="secondary small" class:hidden=move || admin.token.get().is_none() on:click=sign_out>
                {move || tr(lang.get(), "Выйти", "Sign out")}
            </button>
        </header>
        <main class="screen admin">
            <p id="admin-error" class="field-error" role="alert" class:hidden=move || admin.error.get().is_none()>
                {move || admin.error.get().unwrap_or_default()}
            </p>
            <form class="values" class:hidden=move || admin.token.get().is_some() on:submit=move |e| { e.prevent_default(); sign_in(()); }>
                <label>
                    {move || tr(lang.get(), "Токен администратора", "Admin token")}
                    <input id="admin-token" type="password" autocomplete="current-password"
                        prop:value=move || typed.get() on:input=move |e| typed.set(event_target_value(&e)) />
                </label>
                <button id="admin-sign-in" class="primary" type="submit">{move || tr(lang.get(), "Войти", "Sign in")}</button>
            </form>
            <Show when=move || admin.token.get().is_some()>
                <Finetune />
                <Versions />
                <Examples />
            </Show>
        </main>
    }
}
