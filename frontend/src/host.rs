//! The page that embeds the widget: whether there is one (the app provides it as
//! context), and messages to it (`static/widget.js` listens for them).

use leptos::prelude::{provide_context, use_context};
use serde::Serialize;

/// Whether the app runs as the widget (provided as context by the app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded(pub bool);

/// Tells every component below whether the app runs as the widget.
pub fn provide_embedded(embedded: bool) {
    provide_context(Embedded(embedded));
}

/// True inside the widget.
pub fn embedded() -> bool {
    use_context::<Embedded>().is_some_and(|e| e.0)
}

/// Numbers in the events a host page gets, to one decimal: 268.4 kcal, not
/// 268.40000915527344 (f32 widened to JSON's doubles).
fn rounded(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            serde_json::json!((x * 10.0).round() / 10.0)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(rounded).collect()),
        Value::Object(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, rounded(v))).collect()),
        other => other,
    }
}

/// Posts `{type, data}` to the page embedding us (any origin may listen: the data is
/// the person's own result, and which sites may embed us is the server's
/// `frame-ancestors` setting). Nothing happens outside a frame.
pub fn post<T: Serialize>(kind: &str, data: &T) {
    let Some(window) = web_sys::window() else { return };
    let Ok(Some(parent)) = window.parent() else { return };
    if parent == window {
        return;
    }
    let Ok(data) = serde_json::to_value(data) else { return };
    let payload = serde_json::json!({ "type": kind, "data": rounded(data) }).to_string();
    if let Ok(value) = js_sys::JSON::parse(&payload) {
        let _ = parent.post_message(&value, "*");
    }
}
