//! What the server tests share: a server on loopback with a tiny random model whose
//! loading waits on a gate the test opens (so requests can be queued deterministically
//! before the worker serves them), WebSocket and raw HTTP clients, and request builders.
#![allow(dead_code)] // each test file uses part of it

use base64::Engine as _;
use borscht_protocol::{decode_server_message, encode, ClientMessage, ServerMessage, PROTOCOL_VERSION};
use borscht_server::limits::Limits;
use borscht_server::{serve_on, Server, ServerConfig};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct TestServer {
    pub addr: SocketAddr,
    /// One gate per model worker.
    gates: Vec<mpsc::Sender<()>>,
    pub state: borscht_server::AppState,
}

/// A tiny random model that finishes loading when `wait` receives (or its sender drops).
pub fn gated_tiny_model(wait: mpsc::Receiver<()>) -> borscht_server::worker::EngineLoader {
    Box::new(move || {
        let _ = wait.recv();
        let mut engine =
            borscht_pipelines::random_model::random_engine("tiny", &candle_core::Device::Cpu, candle_core::DType::F32)?;
        engine.dishes = vec![borscht_protocol::Dish { name: "борщ".into(), en: Some("borscht".into()) }];
        Ok((engine, "tiny-random".into()))
    })
}

/// The bundled demo model (models/demo), loaded when `wait` receives: a model that names
/// a dish for its own icons, where a random one rarely does.
pub fn gated_demo_model(wait: mpsc::Receiver<()>) -> borscht_server::worker::EngineLoader {
    Box::new(move || {
        let _ = wait.recv();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
        let engine = borscht_pipelines::Engine::load(&dir, &candle_core::Device::Cpu, candle_core::DType::F32)?;
        Ok((engine, "demo".into()))
    })
}

/// A demo-model icon the model answers with its dish: pizza, twemoji style.
pub fn pizza_icon_png() -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo/images/twemoji/1f355-0.png"))
        .unwrap()
}

impl TestServer {
    pub async fn start(limits: Limits) -> TestServer {
        TestServer::start_with(|config| config.limits = limits).await
    }

    /// A server whose config `adjust` changes first.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        TestServer::start_model(adjust, gated_tiny_model).await
    }

    /// A server on the demo model, serving at once.
    pub async fn start_demo() -> TestServer {
        let mut server = TestServer::start_model(|_| {}, gated_demo_model).await;
        server.open();
        server
    }

    async fn start_model(
        adjust: impl FnOnce(&mut ServerConfig),
        model: fn(mpsc::Receiver<()>) -> borscht_server::worker::EngineLoader,
    ) -> TestServer {
        let (gate, wait) = mpsc::channel::<()>();
        TestServer::start_workers(adjust, vec![("default".into(), model(wait))], vec![gate]).await
    }

    /// A server whose workers load what `loaders` load, each once the test opens its gate.
    pub async fn start_workers(
        adjust: impl FnOnce(&mut ServerConfig),
        loaders: Vec<(String, borscht_server::worker::EngineLoader)>,
        gates: Vec<mpsc::Sender<()>>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServerConfig::new(addr, std::env::temp_dir().join("borscht-no-web-app"));
        adjust(&mut config);
        let loaders = loaders
            .into_iter()
            .map(|(device, load)| borscht_server::worker::DeviceLoader { device, load, load_version: None })
            .collect();
        TestServer::start_loaders(config, listener, loaders, gates, Default::default()).await
    }

    /// A server keeping examples and versions as `teaching` says, on the demo model
    /// (serving at once), whose worker can load other versions of it.
    pub async fn start_teaching(
        adjust: impl FnOnce(&mut ServerConfig),
        teaching: std::sync::Arc<borscht_server::finetune::Teaching>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServerConfig::new(addr, std::env::temp_dir().join("borscht-no-web-app"));
        adjust(&mut config);
        let (gate, wait) = mpsc::channel::<()>();
        let load_version: borscht_server::worker::VersionLoader = Box::new(|dir: &std::path::Path| {
            borscht_pipelines::Engine::load(dir, &candle_core::Device::Cpu, candle_core::DType::F32)
        });
        let loader = borscht_server::worker::DeviceLoader {
            device: "cpu".into(),
            load: gated_demo_model(wait),
            load_version: Some(load_version),
        };
        let mut server = TestServer::start_loaders(config, listener, vec![loader], vec![gate], teaching).await;
        server.open();
        server
    }

    async fn start_loaders(
        config: ServerConfig,
        listener: tokio::net::TcpListener,
        loaders: Vec<borscht_server::worker::DeviceLoader>,
        gates: Vec<mpsc::Sender<()>>,
        teaching: std::sync::Arc<borscht_server::finetune::Teaching>,
    ) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let server = Server::start_teaching(&config, loaders, teaching);
        let header_timeout = config.limits.header_timeout();
        tokio::spawn(serve_on(listener, server.router, std::future::pending(), header_timeout));
        TestServer { addr, gates, state: server.state }
    }

    /// Lets the model finish loading (on every worker); queued requests are served from
    /// now on.
    pub fn open(&mut self) {
        for gate in self.gates.drain(..) {
            let _ = gate.send(());
        }
    }

    pub async fn connect(&self) -> Socket {
        self.connect_from("127.0.0.1").await
    }

    /// A WebSocket from another loopback address (127.0.0.2 ...): another client.
    pub async fn connect_from(&self, local_ip: &str) -> Socket {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local_ip}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(
            format!("ws://{}/ws?protocol={PROTOCOL_VERSION}", self.addr),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .unwrap();
        assert!(matches!(next(&mut ws).await, ServerMessage::Hello { protocol_version: PROTOCOL_VERSION, .. }));
        ws
    }

    pub async fn metrics(&self) -> String {
        reqwest_get(self.addr, "/metrics").await.1
    }
}

/// A loopback port nobody listens on now (for a server process the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status of a GET, or None while nothing listens.
pub async fn reqwest_get_maybe(addr: SocketAddr, path: &str) -> Option<u16> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(reqwest_get(addr, path).await.0)
}

/// A plain HTTP GET over a raw TCP stream (no HTTP client needed for two lines).
pub async fn reqwest_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "", &[]).await
}

pub async fn http(addr: SocketAddr, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let (status, _, body) = http_raw(addr, method, path, content_type, body).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    http_with(addr, method, path, "", content_type, body).await
}

/// As [`http_raw`], with `extra` header lines (each ending in `\r\n`).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = response[split + 4..].to_vec();
    if head.to_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

pub async fn next(ws: &mut Socket) -> ServerMessage {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("server answered in time")
            .expect("stream open")
            .expect("valid frame");
        if let WsMessage::Text(text) = frame {
            return decode_server_message(text.as_str()).expect("server frames decode");
        }
    }
}

/// Every frame of request `id` up to and including its final one (frames of other
/// requests are skipped: use [`until_finals`] when several are in flight).
pub async fn until_final(ws: &mut Socket, id: u64) -> Vec<ServerMessage> {
    until_finals(ws, &[id]).await.pop().expect("one id, one list")
}

/// The frames of each of `ids` up to its final one, in the order of `ids`, whatever
/// order the requests finish in (one batch may finish them in any order).
pub async fn until_finals(ws: &mut Socket, ids: &[u64]) -> Vec<Vec<ServerMessage>> {
    let mut frames: Vec<Vec<ServerMessage>> = vec![Vec::new(); ids.len()];
    let mut open = ids.len();
    while open > 0 {
        let message = next(ws).await;
        let Some(slot) = ids.iter().position(|&id| message.request_id() == Some(id)) else { continue };
        if frames[slot].last().is_some_and(ServerMessage::is_final) {
            panic!("a frame after the final one: {message:?}");
        }
        if message.is_final() {
            open -= 1;
        }
        frames[slot].push(message);
    }
    frames
}

pub async fn send(ws: &mut Socket, message: &ClientMessage) {
    ws.send(WsMessage::Text(encode(message).into())).await.unwrap();
}

pub fn icon_png() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo/images/twemoji/1f33d-0.png");
    std::fs::read(path).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn recognize(id: u64, image: &[u8], n: u32) -> ClientMessage {
    ClientMessage::Recognize { id, image: b64(image), template: None, n: Some(n), portion_g: Some(250.0) }
}

/// The value of a metric line such as `borscht_batch_requests_count`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
}
