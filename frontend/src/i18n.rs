//! Russian first (the users), English on a switch; the choice is remembered.

use leptos::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ru => "ru",
            Lang::En => "en",
        }
    }

    /// `?lang=en` wins, then the saved choice, then Russian.
    pub fn initial() -> Lang {
        let from_query = web_sys::window()
            .and_then(|w| w.location().search().ok())
            .and_then(|q| q.split(['?', '&']).find_map(|p| p.strip_prefix("lang=").map(str::to_string)));
        match from_query.or_else(|| crate::storage::get("borscht.lang")).as_deref() {
            Some("en") => Lang::En,
            _ => Lang::Ru,
        }
    }

    pub fn save(self) {
        crate::storage::set("borscht.lang", self.code());
        if let Some(root) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.document_element()) {
            let _ = root.set_attribute("lang", self.code());
        }
    }
}

/// The text in the chosen language.
pub fn tr(lang: Lang, ru: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Ru => ru,
        Lang::En => en,
    }
}

/// The app-wide language signal.
pub fn use_lang() -> RwSignal<Lang> {
    expect_context::<RwSignal<Lang>>()
}
