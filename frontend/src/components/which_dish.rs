//! "Which dish?": the person lists dishes, the model picks among them for the photo.

use borscht_protocol::{Classification, ClientMessage, ServerMessage};
use leptos::prelude::*;

use super::recognize::error_text;
use crate::connection::Connection;
use crate::i18n::{tr, use_lang};

#[component]
pub fn WhichDish(connection: Connection, photo: RwSignal<Option<String>>) -> impl IntoView {
    let lang = use_lang();
    let dishes = RwSignal::new(String::from("борщ, пельмени, пицца, салат"));
    let answer = RwSignal::new(None::<Classification>);
    let status = RwSignal::new(String::new());
    let ask = move |_| {
        let lang = lang.get_untracked();
        let Some(image) = photo.get_untracked() else {
            status
                .set(tr(lang, "Сначала сфотографируйте или загрузите блюдо.", "Take or upload a photo first.").into());
            return;
        };
        let classes: Vec<String> =
            dishes.get_untracked().split([',', '\n']).map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect();
        answer.set(None);
        status.set(tr(lang, "Сравниваем…", "Comparing…").into());
        let sent = connection.request(
            |id| ClientMessage::Classify { id, image, classes, template: None, method: None },
            move |message| match message {
                ServerMessage::Classification { classification, .. } => {
                    status.set(String::new());
                    answer.set(Some(classification));
                }
                ServerMessage::Error { code, message, .. } => status.set(error_text(lang, code, &message)),
                _ => {}
            },
        );
        if let Err(e) = sent {
            status.set(e);
        }
    };
    view! {
        <section class="which-dish" aria-labelledby="which-title">
            <h2 id="which-title">{move || tr(lang.get(), "Какое из этих блюд?", "Which of these dishes?")}</h2>
            <label for="dish-list">{move || tr(lang.get(), "Блюда через запятую", "Dishes, in Russian (the model reads Russian), separated by commas")}</label>
            <textarea id="dish-list" rows="3" prop:value=move || dishes.get() on:input=move |e| dishes.set(event_target_value(&e))></textarea>
            <button id="classify" class="primary" on:click=ask>{move || tr(lang.get(), "Определить", "Decide")}</button>
            <p class="status-line" role="status">{move || status.get()}</p>
            {move || answer.get().map(|a| {
                // Best first; each bar shows how close the dish comes to the best fit (full bar)
                // from the worst (a sliver), so near ties look like ties.
                let mut ranked: Vec<(String, f32)> = a.classes.iter().cloned().zip(a.relative_fit()).collect();
                ranked.sort_by(|x, y| y.1.total_cmp(&x.1));
                let best = a.classes[a.label].clone();
                let label = best.clone();
                view! {
                    <p id="classification" class="answer" data-label=label>{best}</p>
                    <ol class="ranking">
                        {ranked.into_iter().map(|(class, fit)| view! {
                            <li data-fit=format!("{fit:.3}")>
                                <span>{class}</span>
                                <span
                                    class="fit"
                                    role="img"
                                    aria-label=move || format!("{} {:.0}%", tr(lang.get(), "соответствие", "fit"), 100.0 * fit)
                                    style=format!("width: {:.1}%", 3.0 + 97.0 * fit)
                                ></span>
                            </li>
                        }).collect_view()}
                    </ol>
                    <p class="muted small-print">
                        {move || tr(
                            lang.get(),
                            "Полоса — насколько название подходит к снимку: от худшего из списка к лучшему.",
                            "Each bar: how well the name fits the photo, from the list's worst to its best.",
                        )}
                    </p>
                }
            })}
        </section>
    }
}
