//! The WebSocket to the server: connects, greets, tracks its state and reconnects
//! with backoff when the server goes away (phones lose the network all the time).
//! Requests get ids here; each request's frames go to the listener it was sent with,
//! and a lost connection ends every open request with an error.

use borscht_protocol::{
    decode_server_message, encode, ClientMessage, Dish, ErrorCode, RequestId, ServerMessage, PROTOCOL_VERSION,
};
use leptos::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

const FIRST_RETRY_MS: u32 = 1_000;
const MAX_RETRY_MS: u32 = 15_000;

#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    Connecting,
    /// The server greeted us with our protocol version.
    Connected {
        server: String,
    },
    /// The server speaks another protocol: reloading the page fetches the matching app.
    Outdated {
        server_version: u32,
    },
    Disconnected,
}

impl ConnectionState {
    /// Stable machine-readable name (exposed as `data-state` for tests and styling).
    pub fn key(&self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected { .. } => "connected",
            ConnectionState::Outdated { .. } => "outdated",
            ConnectionState::Disconnected => "disconnected",
        }
    }

    pub fn label(&self, lang: crate::i18n::Lang) -> String {
        use crate::i18n::Lang;
        match (self, lang) {
            (ConnectionState::Connecting, Lang::Ru) => "Подключаемся…".into(),
            (ConnectionState::Connecting, Lang::En) => "Connecting…".into(),
            (ConnectionState::Connected { .. }, Lang::Ru) => "В сети".into(),
            (ConnectionState::Connected { .. }, Lang::En) => "Online".into(),
            (ConnectionState::Outdated { .. }, Lang::Ru) => "Сервер обновился — перезагрузите страницу".into(),
            (ConnectionState::Outdated { server_version }, Lang::En) => {
                format!("The server was updated (protocol {server_version}); please reload the page")
            }
            (ConnectionState::Disconnected, Lang::Ru) => "Нет связи — переподключаемся…".into(),
            (ConnectionState::Disconnected, Lang::En) => "Offline — reconnecting…".into(),
        }
    }

    /// The server and protocol, for a tooltip (not worth the header's space).
    pub fn details(&self) -> String {
        match self {
            ConnectionState::Connected { server } => format!("{server}, protocol {PROTOCOL_VERSION}"),
            ConnectionState::Outdated { server_version } => format!("server protocol {server_version}"),
            _ => String::new(),
        }
    }
}

/// Handle owned by the app; copies share the same socket.
#[derive(Clone, Copy)]
pub struct Connection {
    pub state: ReadSignal<ConnectionState>,
    /// The dishes the served model knows (from the server's hello; empty until then).
    pub dishes: ReadSignal<Vec<Dish>>,
    inner: StoredValue<Rc<Inner>, LocalStorage>,
}

type Listener = Rc<dyn Fn(ServerMessage)>;

/// A socket event handler kept alive as long as its socket.
type Handler = Closure<dyn FnMut(JsValue)>;

struct Inner {
    set_state: WriteSignal<ConnectionState>,
    set_dishes: WriteSignal<Vec<Dish>>,
    retry_ms: Cell<u32>,
    /// Set once the server announced another protocol version: stop reconnecting.
    outdated: Cell<bool>,
    /// The live socket's event handlers; replaced (and so freed) on every reconnect.
    handlers: RefCell<Vec<Handler>>,
    socket: RefCell<Option<WebSocket>>,
    next_id: Cell<RequestId>,
    listeners: RefCell<HashMap<RequestId, Listener>>,
}

impl Inner {
    /// Hands a frame to its request's listener (dropped after the final frame).
    fn dispatch(&self, id: RequestId, message: ServerMessage) {
        let listener = if message.is_final() {
            self.listeners.borrow_mut().remove(&id)
        } else {
            self.listeners.borrow().get(&id).cloned()
        };
        if let Some(listener) = listener {
            listener(message);
        }
    }

    /// Ends every open request: the socket is gone and so is their work.
    fn fail_all(&self, text: &str) {
        let open: Vec<(RequestId, Listener)> = self.listeners.borrow_mut().drain().collect();
        for (id, listener) in open {
            listener(ServerMessage::request_error(id, ErrorCode::Unavailable, text));
        }
    }
}

impl Connection {
    pub fn open() -> Self {
        let (state, set_state) = signal(ConnectionState::Connecting);
        let (dishes, set_dishes) = signal(Vec::new());
        let inner = Rc::new(Inner {
            set_state,
            set_dishes,
            retry_ms: Cell::new(FIRST_RETRY_MS),
            outdated: Cell::new(false),
            handlers: RefCell::new(Vec::new()),
            socket: RefCell::new(None),
            next_id: Cell::new(1),
            listeners: RefCell::new(HashMap::new()),
        });
        connect(inner.clone());
        Connection { state, dishes, inner: StoredValue::new_local(inner) }
    }

    /// Sends the request `build` makes for a fresh id; its frames go to `listener`.
    pub fn request(
        &self,
        build: impl FnOnce(RequestId) -> ClientMessage,
        listener: impl Fn(ServerMessage) + 'static,
    ) -> Result<RequestId, String> {
        let inner = self.inner.get_value();
        let socket = inner.socket.borrow().clone().filter(|s| s.ready_state() == WebSocket::OPEN);
        let Some(socket) = socket else {
            return Err("not connected to the server".into());
        };
        let id = inner.next_id.get();
        inner.next_id.set(id + 1);
        inner.listeners.borrow_mut().insert(id, Rc::new(listener));
        if let Err(e) = socket.send_with_str(&encode(&build(id))) {
            inner.listeners.borrow_mut().remove(&id);
            return Err(format!("could not send: {e:?}"));
        }
        Ok(id)
    }

    /// Asks the server to stop request `id` (it answers `cancelled`).
    pub fn cancel(&self, id: RequestId) {
        let socket = self.inner.get_value().socket.borrow().clone();
        if let Some(socket) = socket {
            let _ = socket.send_with_str(&encode(&ClientMessage::Cancel { id }));
        }
    }
}

fn ws_url() -> String {
    let location = web_sys::window().expect("a browser window").location();
    let scheme = if location.protocol().as_deref() == Ok("https:") { "wss" } else { "ws" };
    let host = location.host().unwrap_or_default();
    // The protocol in the URL: the server's first frame is then one this app reads.
    format!("{scheme}://{host}/ws?protocol={PROTOCOL_VERSION}")
}

fn connect(inner: Rc<Inner>) {
    inner.set_state.set(ConnectionState::Connecting);
    let socket = match WebSocket::new(&ws_url()) {
        Ok(socket) => socket,
        Err(e) => {
            web_sys::console::warn_2(&"cannot open WebSocket".into(), &e);
            inner.set_state.set(ConnectionState::Disconnected);
            schedule_reconnect(inner);
            return;
        }
    };

    let on_open = {
        let socket = socket.clone();
        Handler::new(move |_: JsValue| {
            let hello = encode(&ClientMessage::Hello { protocol_version: PROTOCOL_VERSION });
            let _ = socket.send_with_str(&hello);
        })
    };
    let on_message = {
        let inner = inner.clone();
        Handler::new(move |event: JsValue| {
            let Some(text) = event.unchecked_into::<MessageEvent>().data().as_string() else { return };
            match decode_server_message(&text) {
                Ok(ServerMessage::Hello { protocol_version, server, dishes, .. })
                    if protocol_version == PROTOCOL_VERSION =>
                {
                    inner.retry_ms.set(FIRST_RETRY_MS);
                    inner.set_dishes.set(dishes);
                    inner.set_state.set(ConnectionState::Connected { server });
                }
                Ok(ServerMessage::Hello { protocol_version, .. }) => {
                    inner.outdated.set(true);
                    inner.set_state.set(ConnectionState::Outdated { server_version: protocol_version });
                }
                Ok(ServerMessage::Error { id: None, code, message, .. }) => {
                    web_sys::console::warn_1(&format!("server error {code:?}: {message}").into());
                }
                Ok(ServerMessage::Pong { .. }) => {}
                Ok(message) => {
                    if let Some(id) = message.request_id() {
                        inner.dispatch(id, message);
                    }
                }
                Err(e) => web_sys::console::warn_1(&format!("undecodable server frame: {e}").into()),
            }
        })
    };
    let on_close = {
        let inner = inner.clone();
        Handler::new(move |event: JsValue| {
            let code = event.dyn_ref::<CloseEvent>().map(|e| e.code()).unwrap_or_default();
            web_sys::console::info_1(&format!("WebSocket closed (code {code})").into());
            inner.socket.borrow_mut().take();
            inner.fail_all("the connection to the server was lost; try again");
            // An outdated app stays put: reconnecting cannot help until a reload.
            if !inner.outdated.get() {
                inner.set_state.set(ConnectionState::Disconnected);
                schedule_reconnect(inner.clone());
            }
        })
    };
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    // No onerror handler: `error` is always followed by `close`, which does the work.
    *inner.handlers.borrow_mut() = vec![on_open, on_message, on_close];
    *inner.socket.borrow_mut() = Some(socket);
}

fn schedule_reconnect(inner: Rc<Inner>) {
    let delay = inner.retry_ms.get();
    inner.retry_ms.set((delay * 2).min(MAX_RETRY_MS));
    let retry = Closure::once_into_js(move || connect(inner));
    if let Some(window) = web_sys::window() {
        let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(retry.unchecked_ref(), delay as i32);
    }
}
