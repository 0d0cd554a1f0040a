//! Calls to the HTTP API (`/api/v1/*`) for what the WebSocket does not carry: examples
//! sent to teach the model, and the admin page's routes (with the admin token), including
//! the fine-tune's event stream read from a `fetch` body (an `EventSource` cannot send
//! the token).

use serde::de::DeserializeOwned;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// An admin token, when the call needs one.
pub type Token<'a> = Option<&'a str>;

fn request(method: &str, url: &str, token: Token, body: Option<&str>) -> Result<web_sys::Request, String> {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    let headers = web_sys::Headers::new().map_err(js_error)?;
    if let Some(token) = token {
        headers.set("Authorization", &format!("Bearer {token}")).map_err(js_error)?;
    }
    if let Some(body) = body {
        headers.set("Content-Type", "application/json").map_err(js_error)?;
        init.set_body(&JsValue::from_str(body));
    }
    init.set_headers(&headers);
    web_sys::Request::new_with_str_and_init(url, &init).map_err(js_error)
}

fn js_error(e: JsValue) -> String {
    e.as_string().or_else(|| js_sys::JSON::stringify(&e).ok().and_then(|s| s.as_string())).unwrap_or_default()
}

async fn send(method: &str, url: &str, token: Token<'_>, body: Option<&str>) -> Result<web_sys::Response, String> {
    let window = web_sys::window().ok_or("no window")?;
    let response = JsFuture::from(window.fetch_with_request(&request(method, url, token, body)?))
        .await
        .map_err(|_| "the server cannot be reached".to_string())?;
    let response: web_sys::Response = response.unchecked_into();
    if response.ok() {
        return Ok(response);
    }
    // The API's errors are `{"error": {"code", "message"}}`.
    let text = match response.text() {
        Ok(promise) => JsFuture::from(promise).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {}", response.status()));
    Err(message)
}

/// Calls `url` and reads its JSON answer (`T = serde_json::Value` for a body to ignore).
pub async fn json<T: DeserializeOwned>(
    method: &str,
    url: &str,
    token: Token<'_>,
    body: Option<&str>,
) -> Result<T, String> {
    let response = send(method, url, token, body).await?;
    let text =
        JsFuture::from(response.text().map_err(js_error)?).await.map_err(js_error)?.as_string().unwrap_or_default();
    // An answer without a body (204, or 202 for a cancel) reads as null.
    let text = if text.trim().is_empty() { "null" } else { &text };
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Fetches `url` and saves its body as `file_name` (the browser's download).
pub async fn download(url: &str, token: Token<'_>, file_name: &str) -> Result<(), String> {
    let response = send("GET", url, token, None).await?;
    let blob: web_sys::Blob =
        JsFuture::from(response.blob().map_err(js_error)?).await.map_err(js_error)?.unchecked_into();
    let href = web_sys::Url::create_object_url_with_blob(&blob).map_err(js_error)?;
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let link: web_sys::HtmlAnchorElement = document.create_element("a").map_err(js_error)?.unchecked_into();
    link.set_href(&href);
    link.set_download(file_name);
    link.click();
    let _ = web_sys::Url::revoke_object_url(&href);
    Ok(())
}

/// Reads the server-sent events of `url` and hands each event's data to `on_event`,
/// until the stream ends or fails (the error comes back), or `stopped` says so (the
/// stream is then cancelled, freeing its connection).
pub async fn events(
    url: &str,
    token: Token<'_>,
    on_event: impl Fn(&str),
    stopped: impl Fn() -> bool,
) -> Result<(), String> {
    let response = send("GET", url, token, None).await?;
    let body = response.body().ok_or("the event stream has no body")?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let decoder = web_sys::TextDecoder::new().map_err(js_error)?;
    // A character split between two chunks is decoded once its second half arrives.
    let streaming = web_sys::TextDecodeOptions::new();
    streaming.set_stream(true);
    let mut pending = String::new();
    loop {
        if stopped() {
            let _ = reader.cancel();
            return Ok(());
        }
        let chunk = JsFuture::from(reader.read()).await.map_err(js_error)?;
        if js_sys::Reflect::get(&chunk, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true) {
            return Ok(());
        }
        let bytes: js_sys::Uint8Array =
            js_sys::Reflect::get(&chunk, &"value".into()).map_err(js_error)?.unchecked_into();
        pending.push_str(&decoder.decode_with_js_u8_array_and_options(&bytes, &streaming).map_err(js_error)?);
        // Events end with a blank line; each `data:` line is the event's JSON.
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    on_event(data.trim_start());
                }
            }
        }
    }
}
