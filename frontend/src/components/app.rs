use leptos::prelude::*;

use super::connection_status::ConnectionStatus;
use super::draw::Draw;
use super::embed::Embed;
use super::history::History;
use super::recognize::Recognize;
use super::which_dish::WhichDish;
use crate::connection::Connection;
use crate::i18n::{tr, Lang};
use crate::storage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tab {
    Snap,
    WhichDish,
    Draw,
    History,
}

fn is_embed() -> bool {
    web_sys::window().and_then(|w| w.location().pathname().ok()).is_some_and(|p| p.starts_with("/embed"))
}

/// The page: header (connection, language), the mode tabs, then the chosen screen.
/// `/embed` shows the compact widget instead.
#[component]
pub fn App() -> impl IntoView {
    let lang = RwSignal::new(Lang::initial());
    lang.get_untracked().save();
    provide_context(lang);
    provide_context(RwSignal::new(storage::load_history()));
    let connection = Connection::open();
    if is_embed() {
        return view! {
            <header class="top-bar compact">
                <span class="brand">"Borscht"</span>
                <ConnectionStatus state=connection.state />
            </header>
            <Embed connection=connection />
        }
        .into_any();
    }
    let tab = RwSignal::new(Tab::Snap);
    let photo = RwSignal::new(None::<String>);
    let tab_button = move |which: Tab, id: &'static str, ru: &'static str, en: &'static str| {
        view! {
            <button
                id=id
                role="tab"
                class="tab"
                aria-selected=move || (tab.get() == which).to_string()
                on:click=move |_| tab.set(which)
            >
                {move || tr(lang.get(), ru, en)}
            </button>
        }
    };
    let switch_lang = move |_| {
        let next = if lang.get_untracked() == Lang::Ru { Lang::En } else { Lang::Ru };
        next.save();
        lang.set(next);
    };
    view! {
        <header class="top-bar">
            <h1 class="brand">"Borscht"</h1>
            <ConnectionStatus state=connection.state />
            <button id="lang-switch" class="lang" on:click=switch_lang aria-label="Язык / Language">
                {move || if lang.get() == Lang::Ru { "EN" } else { "RU" }}
            </button>
        </header>
        <nav class="tabs" role="tablist">
            {tab_button(Tab::Snap, "tab-snap", "Снимок", "Snap")}
            {tab_button(Tab::WhichDish, "tab-which", "Какое блюдо?", "Which dish?")}
            {tab_button(Tab::Draw, "tab-draw", "Нарисовать", "Draw")}
            {tab_button(Tab::History, "tab-history", "Дневник", "History")}
        </nav>
        <main class="screen">
            <div class:hidden=move || tab.get() != Tab::Snap role="tabpanel">
                <Recognize connection=connection photo=photo />
            </div>
            <div class:hidden=move || tab.get() != Tab::WhichDish role="tabpanel">
                <WhichDish connection=connection photo=photo />
            </div>
            <div class:hidden=move || tab.get() != Tab::Draw role="tabpanel">
                <Draw connection=connection />
            </div>
            <div class:hidden=move || tab.get() != Tab::History role="tabpanel">
                <History />
            </div>
        </main>
    }
    .into_any()
}
