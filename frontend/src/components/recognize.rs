//! Snap mode: the photo goes to the server, candidates appear as they stream, then
//! the result card. A cancel button stops the work on the server.

use borscht_protocol::{ClientMessage, ErrorCode, Recognition, RequestId, ServerMessage};
use leptos::prelude::*;

use super::camera::Camera;
use super::result_card::ResultCard;
use crate::connection::Connection;
use crate::i18n::{tr, use_lang, Lang};

/// Captions asked for per photo.
const CAPTIONS: u32 = 12;

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Idle,
    Queued(u32),
    Running { step: u32, total: u32 },
    Done,
    Cancelled,
    Failed(String),
}

impl Phase {
    fn key(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Queued(_) => "queued",
            Phase::Running { .. } => "running",
            Phase::Done => "done",
            Phase::Cancelled => "cancelled",
            Phase::Failed(_) => "failed",
        }
    }
}

/// A server error in the person's words.
pub fn error_text(lang: Lang, code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::Busy => {
            tr(lang, "Сервер занят — попробуйте через пару секунд.", "The server is busy; try again in a few seconds.")
                .into()
        }
        ErrorCode::Unavailable => format!("{} ({message})", tr(lang, "Сервер недоступен", "The server is unavailable")),
        ErrorCode::InvalidImage => tr(
            lang,
            "Не удалось прочитать снимок — попробуйте другой.",
            "The photo could not be read; try another one.",
        )
        .into(),
        ErrorCode::ImageTooLarge => tr(lang, "Снимок слишком большой.", "The photo is too large.").into(),
        ErrorCode::UnknownCharacters => {
            // The server quotes the text, then each character it cannot spell, in «».
            let quoted: Vec<&str> = message.split('«').skip(1).filter_map(|s| s.split('»').next()).collect();
            let chars = if quoted.len() > 1 { quoted[1..].join(" ") } else { message.to_string() };
            format!(
                "{} {chars}",
                tr(
                    lang,
                    "Модель читает по-русски и не знает этих знаков:",
                    "The model reads Russian and does not know these characters:"
                )
            )
        }
        _ => message.to_string(),
    }
}

/// Sends `image` (a data URL) for recognition and streams into the given signals.
pub fn start_recognition(
    connection: Connection,
    image: String,
    phase: RwSignal<Phase>,
    candidates: RwSignal<Vec<String>>,
    result: RwSignal<Option<Recognition>>,
    lang: Lang,
    on_result: impl Fn(&Recognition) + 'static,
) -> Option<RequestId> {
    candidates.set(Vec::new());
    result.set(None);
    phase.set(Phase::Queued(0));
    let sent = connection.request(
        |id| ClientMessage::Recognize { id, image, template: None, n: Some(CAPTIONS), portion_g: None },
        move |message| match message {
            ServerMessage::Accepted { queue_position, .. } => phase.set(Phase::Queued(queue_position)),
            ServerMessage::Progress { step, total, .. } => phase.set(Phase::Running { step, total }),
            ServerMessage::Candidate { text, .. } => candidates.update(|c| c.push(text)),
            ServerMessage::Result { recognition, .. } => {
                on_result(&recognition);
                result.set(Some(recognition));
                phase.set(Phase::Done);
            }
            ServerMessage::Cancelled { .. } => phase.set(Phase::Cancelled),
            ServerMessage::Error { code, message, .. } => phase.set(Phase::Failed(error_text(lang, code, &message))),
            _ => {}
        },
    );
    match sent {
        Ok(id) => Some(id),
        Err(e) => {
            phase.set(Phase::Failed(format!(
                "{}: {e}",
                tr(lang, "Нет связи с сервером", "Not connected to the server")
            )));
            None
        }
    }
}

#[component]
pub fn Recognize(
    connection: Connection,
    /// The last photo (shared with "which dish?").
    photo: RwSignal<Option<String>>,
    /// Compact layout for the embedded widget; results are also posted to the host page.
    #[prop(optional)]
    embedded: bool,
) -> impl IntoView {
    let lang = use_lang();
    let phase = RwSignal::new(Phase::Idle);
    let candidates = RwSignal::new(Vec::<String>::new());
    let result = RwSignal::new(None::<Recognition>);
    let request = RwSignal::new(None::<RequestId>);

    let on_photo = move |image: String| {
        photo.set(Some(image.clone()));
        let post = move |recognition: &Recognition| {
            if embedded {
                super::embed::post_to_host("borscht:result", recognition);
            }
        };
        request.set(start_recognition(connection, image, phase, candidates, result, lang.get_untracked(), post));
    };
    let cancel = move |_| {
        if let Some(id) = request.get_untracked() {
            connection.cancel(id);
        }
    };
    let busy = move || matches!(phase.get(), Phase::Queued(_) | Phase::Running { .. });

    view! {
        <Camera on_photo=on_photo />
        <section class="recognition" aria-live="polite" data-phase=move || phase.get().key() id="recognition">
            <div class="progress-row" class:hidden=move || !busy()>
                <progress
                    id="recognition-progress"
                    max=move || match phase.get() { Phase::Running { total, .. } => total.max(1), _ => 1 }
                    value=move || match phase.get() { Phase::Running { step, .. } => step, _ => 0 }
                ></progress>
                <span class="muted">
                    {move || match (phase.get(), lang.get()) {
                        (Phase::Queued(0), l) => tr(l, "Распознаём…", "Recognising…").to_string(),
                        (Phase::Queued(n), Lang::Ru) => format!("В очереди: перед вами {n}"),
                        (Phase::Queued(n), Lang::En) => format!("Queued: {n} ahead of you"),
                        (_, l) => tr(l, "Подбираем подписи…", "Writing captions…").to_string(),
                    }}
                </span>
                <button id="cancel-recognition" class="secondary small" on:click=cancel>
                    {move || tr(lang.get(), "Отмена", "Cancel")}
                </button>
            </div>
            <p class="status-line" class:hidden=move || !matches!(phase.get(), Phase::Cancelled | Phase::Failed(_))>
                {move || match phase.get() {
                    Phase::Cancelled => tr(lang.get(), "Отменено.", "Cancelled.").to_string(),
                    Phase::Failed(message) => message,
                    _ => String::new(),
                }}
            </p>
            <ul id="candidates" class="candidates" class:hidden=move || candidates.get().is_empty() || result.get().is_some()>
                <For each=move || candidates.get() key=|c| c.clone() let:candidate>
                    <li>{candidate}</li>
                </For>
            </ul>
            {move || result.get().map(|recognition| view! { <ResultCard recognition=recognition embedded=embedded /> })}
        </section>
    }
}
