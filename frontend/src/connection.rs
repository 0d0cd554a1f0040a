//! The WebSocket to the server: connects, greets, tracks its state and reconnects
//! with backoff when the server goes away (phones lose the network all the time).
//! Requests get ids here; each request's frames go to the listener it was sent with.
//!
//! Every request is idempotent, so none is lost to the network: one whose socket drops
//! before its final frame (a replica died, the phone changed networks) or that a server
//! shutting down refuses is sent again once the socket is back ("reconnecting…"), and
//! one answered "busy" is sent again after the server's `retry_after_s` with a visible
//! countdown. Both are bounded; past the bound the listener gets the error.

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
/// Times a request is sent again after its connection dropped or its server was stopping.
const MAX_RESENDS: u32 = 3;
/// Times a request answered "busy" is sent again.
pub const MAX_BUSY_TRIES: u32 = 5;
/// How long a request waits for the server to come back before it ends in an error.
const MAX_WAIT_FOR_SOCKET_MS: u32 = 60_000;

/// Why a request is waiting to be sent again (shown beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Its connection dropped: it goes again once the socket is back.
    Reconnecting,
    /// The server was busy: it goes again in `seconds`; this is try `attempt` of `of`.
    Busy { seconds: u32, attempt: u32, of: u32 },
}

/// Where an open request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// On the current socket, waiting for its frames.
    Sent,
    /// Waiting for a socket to be sent on.
    AwaitingSocket,
    /// Waiting out a "busy"; sent again when `seconds` reach 0.
    BusyWait { seconds: u32 },
}

/// An open request: its frame as sent, to send again.
struct Open {
    frame: String,
    stage: Stage,
    resends: u32,
    busy_tries: u32,
    /// The user cancelled it: it is never sent again, and ends `cancelled`.
    cancelled: bool,
}

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
    /// Whether the server keeps corrections as training examples (from its hello).
    pub teaching: ReadSignal<bool>,
    /// The requests waiting to be sent again, and why.
    retries: RwSignal<HashMap<RequestId, Retry>>,
    inner: StoredValue<Rc<Inner>, LocalStorage>,
}

type Listener = Rc<dyn Fn(ServerMessage)>;

/// A socket event handler kept alive as long as its socket.
type Handler = Closure<dyn FnMut(JsValue)>;

struct Inner {
    set_state: WriteSignal<ConnectionState>,
    set_dishes: WriteSignal<Vec<Dish>>,
    set_teaching: WriteSignal<bool>,
    retry_ms: Cell<u32>,
    /// Set once the server announced another protocol version: stop reconnecting.
    outdated: Cell<bool>,
    /// The live socket's event handlers; replaced (and so freed) on every reconnect.
    handlers: RefCell<Vec<Handler>>,
    socket: RefCell<Option<WebSocket>>,
    /// The current socket's server has greeted us in our protocol: requests may go.
    greeted: Cell<bool>,
    next_id: Cell<RequestId>,
    listeners: RefCell<HashMap<RequestId, Listener>>,
    open: RefCell<HashMap<RequestId, Open>>,
    retries: RwSignal<HashMap<RequestId, Retry>>,
}

impl Inner {
    /// Hands a frame to its request's listener (dropped after the final frame).
    fn dispatch(&self, id: RequestId, message: ServerMessage) {
        let listener = if message.is_final() {
            self.open.borrow_mut().remove(&id);
            self.listeners.borrow_mut().remove(&id)
        } else {
            self.listeners.borrow().get(&id).cloned()
        };
        self.publish();
        if let Some(listener) = listener {
            listener(message);
        }
    }

    /// A request's frame from the server: an error worth retrying starts the retry
    /// instead of reaching the listener.
    fn on_frame(self: &Rc<Self>, id: RequestId, message: ServerMessage) {
        let cancelled = self.open.borrow().get(&id).is_some_and(|open| open.cancelled);
        if cancelled && matches!(message, ServerMessage::Error { .. }) {
            // Busy, unavailable, or "no such request" after a resend: the user has let it go.
            return self.dispatch(id, ServerMessage::Cancelled { id });
        }
        match &message {
            ServerMessage::Error { code: ErrorCode::Busy, retry_after_s, .. } => {
                let waiting = self.open.borrow_mut().get_mut(&id).and_then(|open| {
                    (open.busy_tries < MAX_BUSY_TRIES).then(|| {
                        open.busy_tries += 1;
                        let seconds = retry_after_s.unwrap_or(2).clamp(1, 60);
                        open.stage = Stage::BusyWait { seconds };
                    })
                });
                if waiting.is_some() {
                    self.publish();
                    tick_busy_wait(self.clone(), id);
                    return;
                }
            }
            // Refused by a server shutting down (while tries are left, `await_socket` marks it
            // to go again): another replica takes it after the reconnect.
            ServerMessage::Error { code: ErrorCode::Unavailable, .. } if self.await_socket(id) => {
                // A draining server closes the socket once the work it still does for us is
                // over; one that stays open (a server without a model) is tried again soon.
                let finishing = self.open.borrow().values().any(|open| open.stage == Stage::Sent);
                if !finishing {
                    let inner = self.clone();
                    after_ms(FIRST_RETRY_MS, move || inner.send_waiting());
                }
                return;
            }
            _ => {}
        }
        let last = message.is_final();
        self.dispatch(id, message);
        if last {
            // Requests refused by a server still finishing this one's work go once it is done.
            let inner = self.clone();
            after_ms(FIRST_RETRY_MS, move || inner.send_waiting());
        }
    }

    /// Marks request `id` to be sent again on the next socket; false once it has been
    /// sent again [`MAX_RESENDS`] times.
    fn await_socket(&self, id: RequestId) -> bool {
        {
            let mut all = self.open.borrow_mut();
            let Some(open) = all.get_mut(&id) else { return false };
            if open.resends >= MAX_RESENDS {
                return false;
            }
            open.resends += 1;
            open.stage = Stage::AwaitingSocket;
        }
        self.publish();
        true
    }

    /// The socket is gone, and with it the server's work on every request sent on it:
    /// each goes again on the next one, or ends with `text` once out of tries.
    fn socket_lost(self: &Rc<Self>, text: &'static str) {
        self.greeted.set(false);
        let sent: Vec<(RequestId, bool)> = self
            .open
            .borrow()
            .iter()
            .filter(|(_, open)| open.stage == Stage::Sent)
            .map(|(id, open)| (*id, open.cancelled))
            .collect();
        for (id, cancelled) in sent {
            if cancelled {
                self.dispatch(id, ServerMessage::Cancelled { id });
            } else if self.await_socket(id) {
                // Not for ever: a server that does not come back ends it.
                let inner = self.clone();
                let resends = self.open.borrow().get(&id).map(|open| open.resends);
                after_ms(MAX_WAIT_FOR_SOCKET_MS, move || {
                    let waiting = inner.open.borrow().get(&id).map(|open| (open.stage, Some(open.resends)));
                    if waiting == Some((Stage::AwaitingSocket, resends)) {
                        inner.dispatch(id, ServerMessage::request_error(id, ErrorCode::Unavailable, text));
                    }
                });
            } else {
                self.dispatch(id, ServerMessage::request_error(id, ErrorCode::Unavailable, text));
            }
        }
    }

    /// Sends every request waiting for a socket, if one is open and its server has greeted us.
    fn send_waiting(&self) {
        let open = self.socket.borrow().clone().filter(|s| s.ready_state() == WebSocket::OPEN);
        let Some(socket) = open.filter(|_| self.greeted.get()) else {
            return;
        };
        for open in self.open.borrow_mut().values_mut().filter(|open| open.stage == Stage::AwaitingSocket) {
            if socket.send_with_str(&open.frame).is_ok() {
                open.stage = Stage::Sent;
            }
        }
        self.publish();
    }

    /// Ends every open request: the app is outdated and no socket will come back.
    fn fail_all(&self, text: &str) {
        let ids: Vec<RequestId> = self.open.borrow().keys().copied().collect();
        for id in ids {
            self.dispatch(id, ServerMessage::request_error(id, ErrorCode::Unavailable, text));
        }
    }

    /// Mirrors the waiting requests into the signal the page shows.
    fn publish(&self) {
        let waiting: HashMap<RequestId, Retry> = self
            .open
            .borrow()
            .iter()
            .filter_map(|(id, open)| {
                let retry = match open.stage {
                    Stage::Sent => return None,
                    Stage::AwaitingSocket => Retry::Reconnecting,
                    Stage::BusyWait { seconds } => {
                        Retry::Busy { seconds, attempt: open.busy_tries, of: MAX_BUSY_TRIES }
                    }
                };
                Some((*id, retry))
            })
            .collect();
        if self.retries.with_untracked(|shown| *shown != waiting) {
            self.retries.set(waiting);
        }
    }
}

/// Counts a busy wait down a second at a time, then sends the request again (or leaves
/// it for the next socket when there is none).
fn tick_busy_wait(inner: Rc<Inner>, id: RequestId) {
    after_ms(1_000, move || {
        let next = {
            let mut open = inner.open.borrow_mut();
            let Some(open) = open.get_mut(&id) else { return };
            let Stage::BusyWait { seconds } = open.stage else { return };
            open.stage = if seconds > 1 { Stage::BusyWait { seconds: seconds - 1 } } else { Stage::AwaitingSocket };
            open.stage
        };
        inner.publish();
        match next {
            Stage::BusyWait { .. } => tick_busy_wait(inner, id),
            _ => inner.send_waiting(),
        }
    });
}

fn after_ms(delay: u32, then: impl FnOnce() + 'static) {
    let callback = Closure::once_into_js(then);
    if let Some(window) = web_sys::window() {
        let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(callback.unchecked_ref(), delay as i32);
    }
}

impl Connection {
    pub fn open() -> Self {
        let (state, set_state) = signal(ConnectionState::Connecting);
        let (dishes, set_dishes) = signal(Vec::new());
        let (teaching, set_teaching) = signal(false);
        let retries = RwSignal::new(HashMap::new());
        let inner = Rc::new(Inner {
            set_state,
            set_dishes,
            set_teaching,
            retry_ms: Cell::new(FIRST_RETRY_MS),
            outdated: Cell::new(false),
            handlers: RefCell::new(Vec::new()),
            socket: RefCell::new(None),
            greeted: Cell::new(false),
            next_id: Cell::new(1),
            listeners: RefCell::new(HashMap::new()),
            open: RefCell::new(HashMap::new()),
            retries,
        });
        connect(inner.clone());
        Connection { state, dishes, teaching, retries, inner: StoredValue::new_local(inner) }
    }

    /// Why request `id` waits to be sent again, if it does (reactive).
    pub fn retry(&self, id: RequestId) -> Option<Retry> {
        self.retries.with(|waiting| waiting.get(&id).copied())
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
        let frame = encode(&build(id));
        if let Err(e) = socket.send_with_str(&frame) {
            return Err(format!("could not send: {e:?}"));
        }
        inner.listeners.borrow_mut().insert(id, Rc::new(listener));
        let open = Open { frame, stage: Stage::Sent, resends: 0, busy_tries: 0, cancelled: false };
        inner.open.borrow_mut().insert(id, open);
        Ok(id)
    }

    /// Asks the server to stop request `id` (it answers `cancelled`); one waiting to be
    /// sent again is simply dropped.
    pub fn cancel(&self, id: RequestId) {
        let inner = self.inner.get_value();
        let stage = inner.open.borrow().get(&id).map(|open| open.stage);
        match stage {
            Some(Stage::Sent) => {
                if let Some(open) = inner.open.borrow_mut().get_mut(&id) {
                    open.cancelled = true;
                }
                let socket = inner.socket.borrow().clone();
                if let Some(socket) = socket {
                    let _ = socket.send_with_str(&encode(&ClientMessage::Cancel { id }));
                }
            }
            Some(_) => inner.dispatch(id, ServerMessage::Cancelled { id }),
            None => {}
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
                Ok(ServerMessage::Hello { protocol_version, server, dishes, teaching, .. })
                    if protocol_version == PROTOCOL_VERSION =>
                {
                    inner.retry_ms.set(FIRST_RETRY_MS);
                    inner.set_dishes.set(dishes);
                    inner.set_teaching.set(teaching);
                    inner.set_state.set(ConnectionState::Connected { server });
                    inner.greeted.set(true);
                    inner.send_waiting();
                }
                Ok(ServerMessage::Hello { protocol_version, .. }) => {
                    inner.outdated.set(true);
                    inner.set_state.set(ConnectionState::Outdated { server_version: protocol_version });
                    inner.fail_all("the server was updated; reload the page");
                }
                Ok(ServerMessage::Error { id: None, code, message, .. }) => {
                    web_sys::console::warn_1(&format!("server error {code:?}: {message}").into());
                }
                Ok(ServerMessage::Pong { .. }) => {}
                Ok(message) => {
                    if let Some(id) = message.request_id() {
                        inner.on_frame(id, message);
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
            // An outdated app stays put: reconnecting cannot help until a reload.
            if inner.outdated.get() {
                inner.fail_all("the server was updated; reload the page");
            } else {
                inner.socket_lost("the connection to the server was lost; try again");
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
    after_ms(delay, move || connect(inner));
}
