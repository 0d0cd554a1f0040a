//! The `/ws` endpoint: one task per connection speaking `borscht-protocol`.
//!
//! Only the server's own pages and the origins the operator names may connect
//! ([`super::origin`]). Frames are read in order; a request is validated (its picture
//! decoded off the async threads, a few at a time, and shrunk to what the model reads),
//! queued in its client's lane, and answered with `accepted` or an error (`busy` when the
//! queue is full, `too_many_requests` past the per-connection or per-address cap). A
//! forwarder task per request relays the worker's stream; one writer task owns the
//! socket, holding at most [`Limits::outbox_max_bytes`] of answers, so a client that
//! stops reading backs up only its own connection: after the send timeout the writer
//! gives up, the connection stops reading, its requests are cancelled and the socket is
//! closed (the close itself bounded by the same timeout). A bad frame is answered with an
//! `error` and the connection stays open. A closed socket cancels everything it had in
//! flight.
//!
//! [`Limits::outbox_max_bytes`]: super::limits::Limits::outbox_max_bytes

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use borscht_protocol::{
    decode_client_message, encode, ClientMessage, ErrorCode, RequestId, ServerMessage, OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::client::{ClientKey, Peer};
use super::job::{task_of, CancelFlag, Job};
use super::queue::SubmitError;
use super::AppState;

/// How often an idle connection is pinged so proxies and phones keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Frames waiting for the writer (their bytes are bounded apart, by the outbox budget).
const OUTBOX: usize = 1024;

/// `/ws?protocol=3`: the protocol the client speaks, so that the server's first frame is
/// one it reads (clients before protocol 3 send no query and get protocol 2's frames).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Connect {
    #[serde(default)]
    protocol: Option<u32>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    connect: Result<axum::extract::Query<Connect>, axum::extract::rejection::QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = state.origins.refusal(&headers) {
        tracing::debug!("refused a WebSocket: {refusal}");
        let body = serde_json::json!({ "error": { "code": ErrorCode::InvalidRequest, "message": refusal } });
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    if state.shutdown.is_draining() {
        // A balancer (nginx's `proxy_next_upstream http_503`) then tries another replica.
        let body = serde_json::json!({ "error": { "code": ErrorCode::Unavailable, "message": "the server is shutting down" } });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let client = state.client(&headers, peer.as_ref());
    let version = connect
        .ok()
        .and_then(|c| c.protocol)
        .unwrap_or(OLDEST_PROTOCOL_VERSION)
        .clamp(OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION);
    let permit = match state.caps.connect(&client) {
        Ok(permit) => permit,
        Err(reason) => {
            state.metrics.rejected_connections.inc();
            tracing::debug!(%client, "refused a WebSocket: {reason}");
            return ws.on_upgrade(move |socket| refuse_connection(socket, reason, version));
        }
    };
    // Frames up to twice the limit are read and refused politely; larger ones end the connection.
    ws.max_message_size(state.limits.max_frame_bytes() * 2)
        .on_upgrade(move |socket| handle_connection(socket, state, client, version, permit))
}

/// A connection over the caps: told why (an `unavailable` error a client shows, and the
/// close reason), then closed with 1013, "try again later".
async fn refuse_connection(mut socket: WebSocket, reason: String, version: u32) {
    let notice = frame(ServerMessage::error(ErrorCode::Unavailable, reason.clone()), version);
    let close = Message::Close(Some(axum::extract::ws::CloseFrame {
        code: 1013,
        // A close reason holds at most 123 bytes.
        reason: borscht_protocol::clip(&reason, 100).into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = socket.send(notice).await;
        let _ = socket.send(close).await;
    })
    .await;
}

type InFlight = Arc<Mutex<HashMap<RequestId, CancelFlag>>>;

/// A frame for the writer with its share of the outbox's byte budget.
type Outgoing = (Message, OwnedSemaphorePermit);

struct Connection {
    state: AppState,
    client: ClientKey,
    outbox: Outbox,
    in_flight: InFlight,
    /// Held by each request's forwarder until its last frame is queued: only one
    /// holder left means nothing of this connection's is still on its way.
    forwarders: Arc<()>,
}

/// A frame as the connection's client reads it ([`ServerMessage::for_version`]).
fn frame(message: ServerMessage, version: u32) -> Message {
    Message::Text(encode(&message.for_version(version)).into())
}

/// The writer's queue: frames in order, their bytes bounded by a budget that each frame
/// takes from before it is queued and gives back once it is on the socket.
#[derive(Clone)]
struct Outbox {
    frames: mpsc::Sender<Outgoing>,
    budget: Arc<Semaphore>,
    max_bytes: usize,
    /// The protocol the client speaks.
    version: u32,
}

impl Outbox {
    /// Queues `message`, waiting while the client holds the whole budget; an error once
    /// the writer has ended.
    async fn send(&self, message: Message) -> Result<(), ()> {
        let bytes = match &message {
            Message::Text(text) => text.len(),
            Message::Binary(data) => data.len(),
            _ => 0,
        };
        let permits = bytes.clamp(1, self.max_bytes) as u32;
        let permit = self.budget.clone().acquire_many_owned(permits).await.map_err(|_| ())?;
        self.frames.send((message, permit)).await.map_err(|_| ())
    }

    async fn closed(&self) {
        self.frames.closed().await
    }
}

async fn handle_connection(
    socket: WebSocket,
    state: AppState,
    client: ClientKey,
    version: u32,
    _permit: super::caps::ConnectionPermit,
) {
    state.metrics.connections.inc();
    let (mut sink, mut stream) = socket.split();
    let (frames, mut outgoing) = mpsc::channel::<Outgoing>(OUTBOX);
    let max_bytes = state.limits.outbox_max_bytes.clamp(1, u32::MAX as usize);
    let budget = Arc::new(Semaphore::new(max_bytes));
    let outbox = Outbox { frames, budget: budget.clone(), max_bytes, version };
    let send_timeout = state.limits.send_timeout();
    let writer = tokio::spawn(async move {
        while let Some((message, permit)) = outgoing.recv().await {
            match tokio::time::timeout(send_timeout, sink.send(message)).await {
                Ok(Ok(())) => drop(permit),
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::info!("closing a connection whose client stopped reading");
                    break;
                }
            }
        }
        // Whoever waits to queue a frame hears at once that the connection is over, and
        // the reading side stops too (it watches `closed`).
        budget.close();
        drop(outgoing);
        let _ = tokio::time::timeout(send_timeout, sink.close()).await;
    });
    let connection = Connection {
        state: state.clone(),
        client,
        outbox,
        in_flight: Arc::new(Mutex::new(HashMap::new())),
        forwarders: Arc::new(()),
    };
    let (model, dishes) = match state.worker.status() {
        super::worker::ModelStatus::Ready { name, dishes } => (Some(name), dishes.to_vec()),
        _ => (None, Vec::new()),
    };
    let hello = ServerMessage::Hello {
        protocol_version: version,
        server: server_name(),
        model,
        dishes,
        model_version: state.teaching.versions.as_ref().map(|v| v.active()),
        teaching: state.teaching.dataset.is_some(),
    };
    connection.send(hello).await;

    // Ticks often enough to notice a short idle timeout too.
    let tick = KEEP_ALIVE.min(state.limits.idle_timeout() / 2).max(Duration::from_millis(100));
    let mut keep_alive = tokio::time::interval(tick);
    keep_alive.tick().await; // the first tick fires at once
    let mut last_activity = Instant::now();
    let mut draining = false;
    // Whether this end closes the socket for a restart (then the drain waits for the close).
    let mut restarting = false;
    let mut drain_check = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            frame = stream.next() => {
                // Only the client's own messages count as activity: a browser answers our
                // pings by itself, so pongs would keep an abandoned tab open for ever.
                if let Some(Ok(Message::Text(_) | Message::Binary(_))) = &frame {
                    last_activity = Instant::now();
                }
                match frame {
                    Some(Ok(Message::Text(text))) => connection.on_text(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        connection.send(ServerMessage::error(
                            ErrorCode::MalformedJson,
                            "binary frames are not used; send JSON text frames with pictures in base64",
                        )).await;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::debug!("websocket closed with error: {e}");
                        break;
                    }
                }
            }
            _ = keep_alive.tick() => {
                let idle = connection.in_flight.lock().expect("in-flight lock").is_empty()
                    && last_activity.elapsed() > state.limits.idle_timeout();
                if idle {
                    connection.send(ServerMessage::error(ErrorCode::Unavailable, "closing an idle connection")).await;
                    break;
                }
                if connection.outbox.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = connection.outbox.closed() => break,
            _ = state.shutdown.begun(), if !draining => draining = true,
            _ = drain_check.tick(), if draining => {
                if Arc::strong_count(&connection.forwarders) == 1 {
                    let close = axum::extract::ws::CloseFrame {
                        code: super::shutdown::RESTART_CLOSE_CODE,
                        reason: "the server is restarting; connect again".into(),
                    };
                    let _ = connection.outbox.send(Message::Close(Some(close))).await;
                    restarting = true;
                    break;
                }
            }
        }
    }
    // The client is gone (or we closed on it): stop its work.
    for flag in connection.in_flight.lock().expect("in-flight lock").values() {
        flag.store(true, Ordering::SeqCst);
    }
    // A drain waits for this count: a connection closed for a restart counts until its
    // last answer and the close are on the wire, so the process does not end mid-flush.
    if !restarting {
        state.metrics.connections.dec();
    }
    drop(connection);
    // Flush what is queued for the socket (an idle notice), but never wait on a dead peer;
    // forwarders of cancelled requests end as soon as the worker drops them.
    let _ = tokio::time::timeout(send_timeout, writer).await;
    if restarting {
        state.metrics.connections.dec();
    }
}

impl Connection {
    async fn send(&self, message: ServerMessage) {
        let _ = self.outbox.send(frame(message, self.outbox.version)).await;
    }

    async fn on_text(&self, text: &str) {
        if text.len() > self.state.limits.max_frame_bytes() {
            let message = format!(
                "the frame is {} bytes; the limit is {} (pictures up to {} bytes)",
                text.len(),
                self.state.limits.max_frame_bytes(),
                self.state.limits.max_upload_bytes
            );
            return self.send(ServerMessage::error(ErrorCode::FrameTooLarge, message)).await;
        }
        let message = match decode_client_message(text) {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!("bad client frame: {e}");
                return self.send(e.into()).await;
            }
        };
        match message {
            ClientMessage::Hello { protocol_version }
                if (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) => {}
            ClientMessage::Hello { protocol_version } => {
                let text = format!(
                    "server speaks protocols {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}, client speaks \
                     {protocol_version}; reload the page"
                );
                self.send(ServerMessage::error(ErrorCode::ProtocolMismatch, text)).await
            }
            ClientMessage::Ping { nonce } => self.send(ServerMessage::Pong { nonce }).await,
            ClientMessage::Cancel { id } => {
                let flag = self.in_flight.lock().expect("in-flight lock").get(&id).cloned();
                match flag {
                    // The worker answers `cancelled` at its next step.
                    Some(flag) => flag.store(true, Ordering::SeqCst),
                    None => {
                        let text = format!("no request {id} is in flight on this connection");
                        self.send(ServerMessage::request_error(id, ErrorCode::InvalidRequest, text)).await
                    }
                }
            }
            request => self.on_request(request).await,
        }
    }

    async fn on_request(&self, request: ClientMessage) {
        let id = request.request_id().expect("requests carry ids");
        let refuse = |code, text: String| ServerMessage::request_error(id, code, text);
        let refusal = {
            let in_flight = self.in_flight.lock().expect("in-flight lock");
            if in_flight.contains_key(&id) {
                // Without an id: the frame must not end the live request of that id.
                let text = format!("request {id} is already in flight; use a new id");
                Some(ServerMessage::error(ErrorCode::DuplicateId, text))
            } else if in_flight.len() >= self.state.limits.max_requests_per_connection {
                let text = format!(
                    "{} requests are already in flight on this connection; wait for one to finish",
                    self.state.limits.max_requests_per_connection
                );
                Some(refuse(ErrorCode::TooManyRequests, text))
            } else {
                None
            }
        };
        if let Some(refusal) = refusal {
            return self.send(refusal).await;
        }
        if let Some(reason) = self.state.unavailable() {
            return self.send(refuse(ErrorCode::Unavailable, reason)).await;
        }
        let slot = match self.state.admit(&self.client) {
            Ok(slot) => slot,
            Err(text) => return self.send(refuse(ErrorCode::TooManyRequests, text)).await,
        };
        let limits = self.state.limits.clone();
        let task = match self.state.decode(move |side| task_of(&request, &limits, side)).await {
            Ok(Some(Ok(task))) => task,
            Ok(Some(Err(rejection))) => return self.send(refuse(rejection.code, rejection.message)).await,
            Ok(None) => unreachable!("on_request only gets requests"),
            Err(e) => return self.send(refuse(ErrorCode::Internal, format!("cannot read the request: {e}"))).await,
        };
        let (job, events) = Job::for_client(id, task, self.client.clone(), Some(slot));
        let cancel = job.cancel.clone();
        match self.state.submit(job) {
            Ok(queue_position) => {
                self.in_flight.lock().expect("in-flight lock").insert(id, cancel.clone());
                self.send(ServerMessage::Accepted { id, queue_position: queue_position as u32 }).await;
                let forwarding = Forwarding {
                    outbox: self.outbox.clone(),
                    in_flight: self.in_flight.clone(),
                    id,
                    cancel,
                    _alive: self.forwarders.clone(),
                };
                tokio::spawn(forwarding.run(events));
            }
            Err(SubmitError::Busy(_)) => {
                let retry = self.state.limits.retry_after_s;
                self.send(ServerMessage::Error {
                    id: Some(id),
                    code: ErrorCode::Busy,
                    message: format!("the server is busy; try again in {retry} s"),
                    retry_after_s: Some(retry),
                })
                .await
            }
            Err(SubmitError::Closed(_)) => {
                self.send(refuse(ErrorCode::Unavailable, "the server is shutting down".into())).await
            }
        }
    }
}

/// One request's stream on its way to the connection.
struct Forwarding {
    outbox: Outbox,
    in_flight: InFlight,
    id: RequestId,
    cancel: CancelFlag,
    /// The connection's count of live forwarders ([`Connection::forwarders`]).
    _alive: Arc<()>,
}

impl Forwarding {
    /// Relays the stream until its final frame.
    async fn run(self, mut events: mpsc::UnboundedReceiver<ServerMessage>) {
        let Forwarding { outbox, in_flight, id, cancel, .. } = &self;
        while let Some(message) = events.recv().await {
            let last = message.is_final();
            if last {
                // Free the slot first: a client may send its next request the moment it reads this.
                in_flight.lock().expect("in-flight lock").remove(id);
            }
            if outbox.send(frame(message, outbox.version)).await.is_err() {
                cancel.store(true, Ordering::SeqCst);
                break;
            }
            if last {
                return;
            }
        }
        in_flight.lock().expect("in-flight lock").remove(id);
    }
}

pub fn server_name() -> String {
    format!("borscht/{}", env!("CARGO_PKG_VERSION"))
}
