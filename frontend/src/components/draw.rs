//! Text to dish (for desktop users): type a dish, watch the picture appear row by
//! row, download the PNG. The server draws several and keeps the one that best fits the
//! name, so the finished picture may differ from the preview.

use borscht_protocol::{ClientMessage, RequestId, ServerMessage};
use leptos::prelude::*;

use super::recognize::error_text;
use crate::connection::Connection;
use crate::i18n::{tr, use_lang};

#[component]
pub fn Draw(connection: Connection) -> impl IntoView {
    let lang = use_lang();
    let text = RwSignal::new(String::from("пицца"));
    let picture = RwSignal::new(None::<String>);
    let done = RwSignal::new(false);
    let status = RwSignal::new(String::new());
    let request = RwSignal::new(None::<RequestId>);
    let draw = move |_| {
        let lang = lang.get_untracked();
        let prompt = text.get_untracked();
        picture.set(None);
        done.set(false);
        status.set(tr(lang, "Рисуем…", "Drawing…").into());
        let sent = connection.request(
            |id| ClientMessage::GenerateImage { id, text: prompt, n: Some(1) },
            move |message| match message {
                ServerMessage::ImagePreview { images, rows_done, rows_total, .. } => {
                    if let Some(png) = images.first() {
                        picture.set(Some(format!("data:image/png;base64,{png}")));
                    }
                    status.set(format!(
                        "{} {rows_done}/{rows_total}; {}",
                        tr(lang, "Строк готово:", "Rows done:"),
                        tr(lang, "покажем лучший из нескольких рисунков", "the best of several drawings will be shown")
                    ));
                }
                ServerMessage::Images { images, .. } => {
                    if let Some(png) = images.first() {
                        picture.set(Some(format!("data:image/png;base64,{png}")));
                    }
                    done.set(true);
                    status.set(String::new());
                }
                ServerMessage::Cancelled { .. } => status.set(tr(lang, "Отменено.", "Cancelled.").into()),
                ServerMessage::Error { code, message, .. } => status.set(error_text(lang, code, &message)),
                _ => {}
            },
        );
        match sent {
            Ok(id) => request.set(Some(id)),
            Err(e) => status.set(e),
        }
    };
    view! {
        <section class="draw" aria-labelledby="draw-title">
            <h2 id="draw-title">{move || tr(lang.get(), "Нарисовать блюдо", "Draw a dish")}</h2>
            <label for="draw-text">{move || tr(lang.get(), "Название блюда", "Name of the dish")}</label>
            <input id="draw-text" type="text" maxlength="200" prop:value=move || text.get() on:input=move |e| text.set(event_target_value(&e)) />
            <div class="capture-actions">
                <button id="draw-button" class="primary" on:click=draw>{move || tr(lang.get(), "Нарисовать", "Draw")}</button>
                <button class="secondary" on:click=move |_| if let Some(id) = request.get_untracked() { connection.cancel(id) }>
                    {move || tr(lang.get(), "Отмена", "Cancel")}
                </button>
            </div>
            <p class="status-line" role="status">{move || status.get()}</p>
            {move || picture.get().map(|src| view! {
                <figure class="drawing">
                    <img id="drawn-image" src=src.clone() data-done=move || done.get().to_string() alt=move || text.get() />
                    <a class="button secondary" class:hidden=move || !done.get() href=src download="borscht-dish.png">
                        {move || tr(lang.get(), "Скачать PNG", "Download PNG")}
                    </a>
                </figure>
            })}
        </section>
    }
}
