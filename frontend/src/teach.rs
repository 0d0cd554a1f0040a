//! Teaching the model: a photo and the right dish with its values per 100 g go to the
//! server as a training example (`POST /api/v1/examples`), only on a server that keeps
//! them and only with the user's consent, whose words travel with the example.

use leptos::prelude::*;
use serde::Serialize;

use crate::i18n::{tr, Lang};

/// Whether the server keeps examples (its hello says so), for the whole app.
#[derive(Clone, Copy)]
pub struct ServerTeaches(pub ReadSignal<bool>);

/// The photo last sent for recognition, as a data URL, for the answer's "Wrong?".
#[derive(Clone, Copy)]
pub struct LastPhoto(pub RwSignal<Option<String>>);

pub fn server_teaches() -> bool {
    use_context::<ServerTeaches>().is_some_and(|t| t.0.get())
}

/// What the user agrees to, in their language.
pub fn consent_text(lang: Lang) -> &'static str {
    tr(
        lang,
        "Я согласен(на): этот снимок и его подпись хранятся на сервере Borscht, чтобы дообучить модель; администратор может их просмотреть и удалить.",
        "I agree that this photo and its caption are kept on the Borscht server to teach the model; its administrator can see and delete them.",
    )
}

#[derive(Serialize)]
struct Example<'a> {
    photo: &'a str,
    dish: &'a str,
    protein_g: f32,
    fat_g: f32,
    carbs_g: f32,
    kcal: f32,
    source: &'a str,
    consent: &'a str,
}

/// Where in the app the example comes from.
#[derive(Clone, Copy)]
pub enum Source {
    Correction,
    History,
}

/// Sends an example; its training caption comes back.
pub async fn send_example(
    photo: &str,
    dish: &str,
    values: [f32; 4],
    source: Source,
    lang: Lang,
) -> Result<String, String> {
    let [protein_g, fat_g, carbs_g, kcal] = values;
    let body = serde_json::to_string(&Example {
        photo,
        dish,
        protein_g,
        fat_g,
        carbs_g,
        kcal,
        source: match source {
            Source::Correction => "correction",
            Source::History => "history",
        },
        consent: consent_text(lang),
    })
    .map_err(|e| e.to_string())?;
    let stored: serde_json::Value = crate::http::json("POST", "/api/v1/examples", None, Some(&body)).await?;
    Ok(stored["caption"].as_str().unwrap_or_default().to_string())
}
