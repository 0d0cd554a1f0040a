//! The embeddable widget (`/embed`): snap or upload and the result card. Its results and
//! saved meals go to the host page ([`crate::host`]), and so does its height, so that the
//! host's frame grows with the card instead of scrolling.

use leptos::prelude::*;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::recognize::Recognize;
use crate::connection::Connection;

/// Tells the host page the page's height whenever it changes.
fn report_height() {
    let Some(document) = web_sys::window().and_then(|w| w.document()) else { return };
    let Some(root) = document.document_element() else { return };
    let post = Closure::<dyn FnMut()>::new(move || {
        if let Some(body) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.body()) {
            crate::host::post("borscht:height", &serde_json::json!({ "height": body.scroll_height() }));
        }
    });
    let callback = post.as_ref().unchecked_ref::<js_sys::Function>().clone();
    if let Ok(observer) = web_sys::ResizeObserver::new(&callback) {
        observer.observe(&root);
        // The observer lives as long as the page.
        std::mem::forget(observer);
    }
    post.forget();
}

#[component]
pub fn Embed(connection: Connection) -> impl IntoView {
    let photo = RwSignal::new(None::<String>);
    report_height();
    view! {
        <main class="screen embed">
            <Recognize connection=connection photo=photo />
        </main>
    }
}
