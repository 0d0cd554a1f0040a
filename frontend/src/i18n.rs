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

/// The page's title in the language (the browser tab, bookmarks).
pub fn set_title(lang: Lang) {
    if let Some(document) = web_sys::window().and_then(|w| w.document()) {
        document.set_title(tr(lang, "Borscht — что у вас на тарелке?", "Borscht — what's on your plate?"));
    }
}

/// A server error in the person's language, from its code (the server's own message is
/// English and written for developers; it is kept only where it names what to fix).
pub fn error_text(lang: Lang, code: borscht_protocol::ErrorCode, message: &str) -> String {
    use borscht_protocol::ErrorCode as E;
    let text = match code {
        E::Busy => {
            tr(lang, "Сервер занят — попробуйте через пару секунд.", "The server is busy; try again in a few seconds.")
        }
        E::Unavailable => tr(
            lang,
            "Сервер сейчас недоступен — попробуйте позже.",
            "The server is unavailable right now; try again later.",
        ),
        E::InvalidImage => tr(
            lang,
            "Не удалось прочитать снимок — попробуйте другой.",
            "The photo could not be read; try another one.",
        ),
        E::ImageTooLarge => {
            tr(lang, "Снимок слишком большой — выберите поменьше.", "The photo is too large; choose a smaller one.")
        }
        E::FrameTooLarge => tr(lang, "Запрос слишком большой.", "The request is too large."),
        E::InvalidRequest => tr(
            lang,
            "Сервер не принял запрос: проверьте введённое.",
            "The server refused the request: check what you entered.",
        ),
        E::TooManyRequests => tr(
            lang,
            "Слишком много запросов сразу — дождитесь ответа на прежние.",
            "Too many requests at once; wait for the earlier ones to finish.",
        ),
        E::ProtocolMismatch => {
            tr(lang, "Сервер обновился — перезагрузите страницу.", "The server was updated; please reload the page.")
        }
        E::Internal => tr(
            lang,
            "На сервере что-то сломалось — попробуйте ещё раз.",
            "Something broke on the server; please try again.",
        ),
        // The HTTP API's own: the admin page shows the server's words.
        E::Unauthorized | E::NotFound | E::Conflict => return message.to_string(),
        E::UnknownCharacters => {
            // The server quotes the text, then each character it cannot spell, in «».
            let quoted: Vec<&str> = message.split('«').skip(1).filter_map(|s| s.split('»').next()).collect();
            let chars = if quoted.len() > 1 { quoted[1..].join(" ") } else { String::new() };
            return format!(
                "{} {chars}",
                tr(
                    lang,
                    "Модель читает по-русски и не знает этих знаков:",
                    "The model reads Russian and does not know these characters:"
                )
            )
            .trim_end()
            .to_string();
        }
        E::MalformedJson | E::UnknownMessageType | E::InvalidMessage | E::DuplicateId => tr(
            lang,
            "Приложение и сервер не поняли друг друга — перезагрузите страницу.",
            "The app and the server misunderstood each other; please reload the page.",
        ),
    };
    text.to_string()
}

/// The dishes the model knows (from the server's hello), for names and suggestions.
pub fn use_dishes() -> ReadSignal<Vec<borscht_protocol::Dish>> {
    expect_context::<ReadSignal<Vec<borscht_protocol::Dish>>>()
}

/// A dish as the person reads it: its English name in English when the model's data set
/// gives one, else as the model writes it.
pub fn dish_name(lang: Lang, name: &str, dishes: &[borscht_protocol::Dish]) -> String {
    if lang == Lang::En {
        let key = name.trim().to_lowercase();
        if let Some(en) = dishes.iter().find(|d| d.name == key).and_then(|d| d.en.clone()) {
            return en;
        }
    }
    name.to_string()
}
