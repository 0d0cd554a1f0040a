use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::connection_status::ConnectionStatus;
use super::draw::Draw;
use super::embed::Embed;
use super::history::History;
use super::recognize::Recognize;
use super::which_dish::{KnownDishes, WhichDish};
use crate::connection::Connection;
use crate::i18n::{set_title, tr, Lang};
use crate::storage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tab {
    Snap,
    WhichDish,
    Draw,
    History,
}

impl Tab {
    const ALL: [Tab; 4] = [Tab::Snap, Tab::WhichDish, Tab::Draw, Tab::History];

    fn id(self) -> &'static str {
        match self {
            Tab::Snap => "tab-snap",
            Tab::WhichDish => "tab-which",
            Tab::Draw => "tab-draw",
            Tab::History => "tab-history",
        }
    }

    fn panel(self) -> &'static str {
        match self {
            Tab::Snap => "panel-snap",
            Tab::WhichDish => "panel-which",
            Tab::Draw => "panel-draw",
            Tab::History => "panel-history",
        }
    }

    fn label(self, lang: Lang) -> &'static str {
        match self {
            Tab::Snap => tr(lang, "Снимок", "Snap"),
            Tab::WhichDish => tr(lang, "Какое блюдо?", "Which dish?"),
            Tab::Draw => tr(lang, "Нарисовать", "Draw"),
            Tab::History => tr(lang, "Дневник", "History"),
        }
    }

    /// The tab `step` places away, wrapping round (arrow keys).
    fn step(self, step: isize) -> Tab {
        let at = Tab::ALL.iter().position(|t| *t == self).unwrap_or(0) as isize;
        Tab::ALL[(at + step).rem_euclid(Tab::ALL.len() as isize) as usize]
    }
}

fn is_admin() -> bool {
    web_sys::window().and_then(|w| w.location().pathname().ok()).is_some_and(|p| p == "/admin")
}

fn is_embed() -> bool {
    web_sys::window().and_then(|w| w.location().pathname().ok()).is_some_and(|p| p == "/embed")
}

/// The page: header (connection, language), the mode tabs, then the chosen screen.
/// `/embed` shows the compact widget instead.
#[component]
pub fn App() -> impl IntoView {
    let lang = RwSignal::new(Lang::initial());
    lang.get_untracked().save();
    provide_context(lang);
    provide_context(RwSignal::new(storage::load_history()));
    Effect::new(move || set_title(lang.get()));
    if is_admin() {
        return view! { <super::admin::AdminPage /> }.into_any();
    }
    let connection = Connection::open();
    provide_context(connection.dishes);
    provide_context(crate::teach::ServerTeaches(connection.teaching));
    crate::host::provide_embedded(is_embed());
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
    // Arrow keys move between the tabs (and focus the new one), as WAI-ARIA's tab
    // pattern has it; only the selected tab is in the Tab order.
    let on_key = move |event: web_sys::KeyboardEvent| {
        let next = match event.key().as_str() {
            "ArrowRight" => tab.get_untracked().step(1),
            "ArrowLeft" => tab.get_untracked().step(-1),
            "Home" => Tab::ALL[0],
            "End" => Tab::ALL[Tab::ALL.len() - 1],
            _ => return,
        };
        event.prevent_default();
        tab.set(next);
        if let Some(button) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id(next.id()))
        {
            let _ = button.unchecked_into::<web_sys::HtmlElement>().focus();
        }
    };
    let tab_button = move |which: Tab| {
        view! {
            <button
                id=which.id()
                role="tab"
                class="tab"
                aria-controls=which.panel()
                aria-selected=move || (tab.get() == which).to_string()
                tabindex=move || if tab.get() == which { "0" } else { "-1" }
                on:click=move |_| tab.set(which)
            >
                {move || which.label(lang.get())}
            </button>
        }
    };
    let panel = move |which: Tab, content: AnyView| {
        view! {
            <div id=which.panel() role="tabpanel" aria-labelledby=which.id() class:hidden=move || tab.get() != which>
                {content}
            </div>
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
        <nav class="tabs" role="tablist" aria-label=move || tr(lang.get(), "Разделы", "Sections") on:keydown=on_key>
            {Tab::ALL.map(tab_button).collect_view()}
        </nav>
        <KnownDishes />
        <main class="screen">
            {panel(Tab::Snap, view! { <Recognize connection=connection photo=photo /> }.into_any())}
            {panel(Tab::WhichDish, view! { <WhichDish connection=connection photo=photo /> }.into_any())}
            {panel(Tab::Draw, view! { <Draw connection=connection /> }.into_any())}
            {panel(Tab::History, view! { <History /> }.into_any())}
        </main>
    }
    .into_any()
}
