//! Snap mode: the photo goes to the server, candidates appear as they stream, then
//! the result card. A cancel button stops the work on the server.

use borscht_protocol::{ClientMessage, Recognition, RequestId, ServerMessage};
use leptos::prelude::*;

use super::camera::Camera;
use super::result_card::ResultCard;
use super::retry_notice::RetryNotice;
use crate::connection::Connection;
use crate::host::embedded;
use crate::i18n::{error_text, tr, use_lang, Lang};

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
            ServerMessage::Accepted { queue_position, .. } => {
                // A request sent again streams its candidates again.
                candidates.set(Vec::new());
                phase.set(Phase::Queued(queue_position));
            }
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

/// Brings the result card into view (on a phone it is below the photo, out of sight).
fn show_result_card() {
    let Some(card) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("result-card"))
    else {
        return;
    };
    let options = web_sys::ScrollIntoViewOptions::new();
    options.set_behavior(web_sys::ScrollBehavior::Smooth);
    options.set_block(web_sys::ScrollLogicalPosition::Start);
    card.scroll_into_view_with_scroll_into_view_options(&options);
}

#[component]
pub fn Recognize(
    connection: Connection,
    /// The last photo (shared with "which dish?").
    photo: RwSignal<Option<String>>,
) -> impl IntoView {
    let lang = use_lang();
    let embedded = embedded();
    let phase = RwSignal::new(Phase::Idle);
    let candidates = RwSignal::new(Vec::<String>::new());
    let result = RwSignal::new(None::<Recognition>);
    let request = RwSignal::new(None::<RequestId>);
    // The answer's "Wrong? Tell us" sends this photo.
    provide_context(crate::teach::LastPhoto(photo));

    // A new photo is on its way: the old one's answer goes at once (a failed upload must
    // not leave the previous dish on screen, with its Save button).
    let on_attempt = move |_| {
        if let Some(id) = request.get_untracked() {
            connection.cancel(id);
        }
        request.set(None);
        photo.set(None);
        result.set(None);
        candidates.set(Vec::new());
        phase.set(Phase::Idle);
    };
    let on_photo = move |image: String| {
        photo.set(Some(image.clone()));
        let post = move |recognition: &Recognition| {
            if embedded {
                crate::host::post("borscht:result", recognition);
            }
        };
        request.set(start_recognition(connection, image, phase, candidates, result, lang.get_untracked(), post));
    };
    Effect::new(move || {
        if result.with(Option::is_some) {
            // After the card is drawn.
            request_animation_frame(show_result_card);
        }
    });
    let cancel = move |_| {
        if let Some(id) = request.get_untracked() {
            connection.cancel(id);
        }
    };
    let busy = move || matches!(phase.get(), Phase::Queued(_) | Phase::Running { .. });

    view! {
        <Camera on_photo=on_photo on_attempt=on_attempt />
        <section class="recognition" data-phase=move || phase.get().key() id="recognition">
            <div class="progress-row" class:hidden=move || !busy()>
                <progress
                    id="recognition-progress"
                    max=move || match phase.get() { Phase::Running { total, .. } => total.max(1), _ => 1 }
                    value=move || match phase.get() { Phase::Running { step, .. } => step, _ => 0 }
                ></progress>
                <button id="cancel-recognition" class="secondary small" on:click=cancel>
                    {move || tr(lang.get(), "Отмена", "Cancel")}
                </button>
            </div>
            // The one live region: what is happening now, in a sentence.
            <p id="recognition-status" class="status-line" role="status">
                {move || match (phase.get(), lang.get()) {
                    (Phase::Queued(0), l) => tr(l, "Распознаём…", "Recognising…").to_string(),
                    (Phase::Queued(n), Lang::Ru) => format!("В очереди: перед вами {n}"),
                    (Phase::Queued(n), Lang::En) => format!("Queued: {n} ahead of you"),
                    (Phase::Running { .. }, l) => tr(l, "Подбираем подписи…", "Writing captions…").to_string(),
                    (Phase::Cancelled, l) => tr(l, "Отменено.", "Cancelled.").to_string(),
                    (Phase::Failed(message), _) => message,
                    _ => String::new(),
                }}
            </p>
            <RetryNotice connection=connection request=request />
            <ul id="candidates" class="candidates" class:hidden=move || candidates.get().is_empty() || result.get().is_some()>
                <For each=move || candidates.get() key=|c| c.clone() let:candidate>
                    <li>{candidate}</li>
                </For>
            </ul>
            {move || result.get().map(|recognition| view! { <ResultCard recognition=recognition /> })}
        </section>
    }
}
