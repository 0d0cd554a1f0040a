//! "Which dish?": the person lists dishes (the model's own as suggestions), the model
//! picks among them for the photo shown above the list, or says none of them fits.

use borscht_protocol::{Classification, ClientMessage, Dish, RequestId, ServerMessage};
use leptos::prelude::*;

use super::retry_notice::RetryNotice;
use crate::connection::Connection;
use crate::i18n::{dish_name, error_text, tr, use_dishes, use_lang};

/// Dishes the list starts with when the model knows them.
const FAVOURITES: [&str; 6] = ["борщ", "пельмени", "пицца", "гамбургер", "суп с лапшой", "овощной салат"];
/// How many the list starts with.
const DEFAULT_COUNT: usize = 4;

/// A starting list of dishes the model knows: favourites first, then the rest in order.
fn default_list(dishes: &[Dish]) -> String {
    let mut list: Vec<&str> =
        FAVOURITES.iter().copied().filter(|name| dishes.iter().any(|d| d.name == *name)).collect();
    for dish in dishes {
        if list.len() >= DEFAULT_COUNT {
            break;
        }
        if !list.contains(&dish.name.as_str()) {
            list.push(&dish.name);
        }
    }
    list.truncate(DEFAULT_COUNT);
    list.join(", ")
}

#[component]
pub fn WhichDish(connection: Connection, photo: RwSignal<Option<String>>) -> impl IntoView {
    let lang = use_lang();
    let known = use_dishes();
    let dishes = RwSignal::new(String::new());
    // The model's own dishes as soon as the server names them (and the person has typed nothing).
    Effect::new(move || {
        let known = known.get();
        if !known.is_empty() && dishes.get_untracked().trim().is_empty() {
            dishes.set(default_list(&known));
        }
    });
    let adding = RwSignal::new(String::new());
    let add = move || {
        let name = adding.get_untracked().trim().to_lowercase();
        if name.is_empty() {
            return;
        }
        dishes.update(|list| {
            if !list.split(',').any(|d| d.trim() == name) {
                if !list.trim().is_empty() {
                    list.push_str(", ");
                }
                list.push_str(&name);
            }
        });
        adding.set(String::new());
    };
    let answer = RwSignal::new(None::<Classification>);
    let status = RwSignal::new(String::new());
    let request = RwSignal::new(None::<RequestId>);
    // A new photo makes the old answer about another picture.
    Effect::new(move || {
        photo.track();
        answer.set(None);
    });
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
        match sent {
            Ok(id) => request.set(Some(id)),
            Err(e) => status.set(e),
        }
    };
    view! {
        <section class="which-dish" aria-labelledby="which-title">
            <h2 id="which-title">{move || tr(lang.get(), "Какое из этих блюд?", "Which of these dishes?")}</h2>
            {move || match photo.get() {
                Some(src) => view! { <img id="which-photo" class="which-photo" src=src alt=move || tr(lang.get(), "Снимок, который сравниваем", "The photo being compared") /> }.into_any(),
                None => view! {
                    <p id="which-no-photo" class="muted">
                        {move || tr(lang.get(), "Сначала сфотографируйте или загрузите блюдо на вкладке «Снимок».", "First take or upload a photo on the Snap tab.")}
                    </p>
                }.into_any(),
            }}
            <label for="dish-list">{move || tr(lang.get(), "Блюда через запятую", "Dishes, in Russian (the model reads Russian), separated by commas")}</label>
            <textarea id="dish-list" rows="3" prop:value=move || dishes.get() on:input=move |e| dishes.set(event_target_value(&e))></textarea>
            <div class="add-dish">
                <input
                    id="add-dish"
                    type="text"
                    list="known-dishes"
                    placeholder=move || tr(lang.get(), "Добавить блюдо, которое знает модель", "Add a dish the model knows")
                    prop:value=move || adding.get()
                    on:input=move |e| adding.set(event_target_value(&e))
                    on:change=move |_| add()
                />
                <button id="add-dish-button" class="secondary small" on:click=move |_| add()>{move || tr(lang.get(), "Добавить", "Add")}</button>
            </div>
            <button id="classify" class="primary" on:click=ask>{move || tr(lang.get(), "Определить", "Decide")}</button>
            <p class="status-line" role="status">{move || status.get()}</p>
            <RetryNotice connection=connection request=request />
            {move || answer.get().map(|a| {
                // Best first; each bar shows how close the dish comes to the best fit (full bar)
                // from the worst (a sliver), so near ties look like ties.
                let mut ranked: Vec<(String, f32)> = a.classes.iter().cloned().zip(a.relative_fit()).collect();
                ranked.sort_by(|x, y| y.1.total_cmp(&x.1));
                let best = a.classes[a.label].clone();
                let none_of_these = a.none_of_these;
                let label = if none_of_these { String::new() } else { best.clone() };
                view! {
                    <p id="classification" class="answer" data-label=label data-none=none_of_these.to_string()>
                        {move || {
                            let shown = dish_name(lang.get(), &best, &known.get());
                            if none_of_these {
                                match lang.get() {
                                    crate::i18n::Lang::Ru => format!("Ни одно из этих (ближе всех — {shown}, но и оно не подходит)"),
                                    crate::i18n::Lang::En => format!("None of these (the closest, {shown}, fits poorly too)"),
                                }
                            } else {
                                shown
                            }
                        }}
                    </p>
                    <ol class="ranking">
                        {ranked.into_iter().map(|(class, fit)| {
                            let dish = class.clone();
                            view! {
                            <li data-fit=format!("{fit:.3}") data-dish=dish>
                                <span>{move || dish_name(lang.get(), &class, &known.get())}</span>
                                <span
                                    class="fit"
                                    role="img"
                                    aria-label=move || format!("{} {:.0}%", tr(lang.get(), "соответствие", "fit"), 100.0 * fit)
                                    style=format!("width: {:.1}%", 3.0 + 97.0 * fit)
                                ></span>
                            </li>
                            }
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

/// The dishes the model knows, as suggestions for any dish field (`list="known-dishes"`),
/// labelled in English in English.
#[component]
pub fn KnownDishes() -> impl IntoView {
    let lang = use_lang();
    let known = use_dishes();
    view! {
        <datalist id="known-dishes">
            {move || known.get().into_iter().map(|d| {
                let label = dish_name(lang.get(), &d.name, &known.get_untracked());
                view! { <option value=d.name>{label}</option> }
            }).collect_view()}
        </datalist>
    }
}
