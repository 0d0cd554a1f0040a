//! The embeddable widget (`/embed`): snap or upload, the result card, and the result
//! posted to the host page (`static/widget.js` listens for it).

use leptos::prelude::*;
use serde::Serialize;

use super::recognize::Recognize;
use crate::connection::Connection;

/// Posts `{type, data}` to the page embedding us (any origin may listen: the data is
/// the person's own result, and which sites may embed us is the server's
/// `frame-ancestors` setting).
pub fn post_to_host<T: Serialize>(kind: &str, data: &T) {
    let Some(window) = web_sys::window() else { return };
    let Ok(Some(parent)) = window.parent() else { return };
    if parent == window {
        return;
    }
    let payload = serde_json::json!({ "type": kind, "data": data }).to_string();
    if let Ok(value) = js_sys::JSON::parse(&payload) {
        let _ = parent.post_message(&value, "*");
    }
}

#[component]
pub fn Embed(connection: Connection) -> impl IntoView {
    let photo = RwSignal::new(None::<String>);
    view! {
        <main class="screen embed">
            <Recognize connection=connection photo=photo embedded=true />
        </main>
    }
}
