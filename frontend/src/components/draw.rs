//! Text to dish (for desktop users): type a dish (the model's own are suggested), choose
//! how many variants, watch them appear row by row, download the ones you like. The
//! server draws several for each and keeps those that best fit the name, so a finished
//! picture may differ from its preview. Each press draws new pictures; the seed shown
//! draws the same ones again.

use borscht_protocol::{ClientMessage, RequestId, ServerMessage};
use leptos::prelude::*;

use super::retry_notice::RetryNotice;
use crate::connection::Connection;
use crate::i18n::{error_text, tr, use_lang};

/// How many variants one may ask for (the server's `--max-images` defaults to 4).
const VARIANT_CHOICES: [u32; 3] = [1, 2, 4];
const DEFAULT_VARIANTS: u32 = 4;

#[component]
pub fn Draw(connection: Connection) -> impl IntoView {
    let lang = use_lang();
    let text = RwSignal::new(String::from("пицца"));
    // Several variants by default: the drawings vary, and one may show the dish best.
    let count = RwSignal::new(DEFAULT_VARIANTS);
    let pictures = RwSignal::new(Vec::<String>::new());
    let done = RwSignal::new(false);
    let status = RwSignal::new(String::new());
    let request = RwSignal::new(None::<RequestId>);
    // The seed of the pictures on screen (what draws them again).
    let seed = RwSignal::new(None::<u64>);
    let draw = move |repeat: Option<u64>| {
        let lang = lang.get_untracked();
        let prompt = text.get_untracked();
        pictures.set(Vec::new());
        seed.set(None);
        done.set(false);
        status.set(tr(lang, "Рисуем…", "Drawing…").into());
        let as_urls = |images: Vec<String>| images.iter().map(|png| format!("data:image/png;base64,{png}")).collect();
        let sent = connection.request(
            |id| ClientMessage::GenerateImage { id, text: prompt, n: Some(count.get_untracked()), seed: repeat },
            move |message| match message {
                ServerMessage::ImagePreview { images, rows_done, rows_total, .. } => {
                    pictures.set(as_urls(images));
                    status.set(format!(
                        "{} {rows_done}/{rows_total}; {}",
                        tr(lang, "Строк готово:", "Rows done:"),
                        tr(
                            lang,
                            "покажем лучшие из нескольких набросков",
                            "the best of several drawings will be shown"
                        )
                    ));
                }
                ServerMessage::Images { images, seed: drawn_from, .. } => {
                    pictures.set(as_urls(images));
                    seed.set(drawn_from);
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
            <label for="draw-text">{move || tr(lang.get(), "Название блюда", "Name of the dish, in Russian (the model reads Russian)")}</label>
            <input id="draw-text" type="text" maxlength="200" list="known-dishes" prop:value=move || text.get() on:input=move |e| text.set(event_target_value(&e)) />
            <div class="presets" role="group" aria-labelledby="variants-label">
                <span id="variants-label" class="muted">{move || tr(lang.get(), "Вариантов:", "Variants:")}</span>
                {VARIANT_CHOICES
                    .into_iter()
                    .map(|n| view! {
                        <button class="chip variants" class:active=move || count.get() == n aria-pressed=move || (count.get() == n).to_string() on:click=move |_| count.set(n)>
                            {n.to_string()}
                        </button>
                    })
                    .collect_view()}
            </div>
            <div class="capture-actions">
                <button id="draw-button" class="primary" on:click=move |_| draw(None)>{move || tr(lang.get(), "Нарисовать", "Draw")}</button>
                <button class="secondary" on:click=move |_| if let Some(id) = request.get_untracked() { connection.cancel(id) }>
                    {move || tr(lang.get(), "Отмена", "Cancel")}
                </button>
            </div>
            <p class="status-line" role="status">{move || status.get()}</p>
            <RetryNotice connection=connection request=request />
            <p id="draw-seed" class="muted small-print" class:hidden=move || seed.get().is_none() data-seed=move || seed.get().map(|s| s.to_string()).unwrap_or_default()>
                {move || format!("{} {}", tr(lang.get(), "Номер рисунка:", "Drawing number:"), seed.get().unwrap_or_default())}
                " "
                <button id="draw-again" class="secondary small" on:click=move |_| draw(seed.get_untracked())>
                    {move || tr(lang.get(), "Нарисовать эти же снова", "Draw these again")}
                </button>
            </p>
            <div class="drawings">
                {move || pictures.get().into_iter().enumerate().map(|(i, src)| view! {
                    <figure class="drawing">
                        <img class="drawn-image" src=src.clone() data-done=move || done.get().to_string() alt=move || text.get() />
                        <a class="button secondary" class:hidden=move || !done.get() href=src download=format!("borscht-dish-{}.png", i + 1)>
                            {move || tr(lang.get(), "Скачать PNG", "Download PNG")}
                        </a>
                    </figure>
                }).collect_view()}
            </div>
        </section>
    }
}
