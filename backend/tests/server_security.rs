//! The server against clients that try to take more than their share: pictures that
//! hold memory, clients that stop reading or dribble their requests, one client flooding
//! the queue, pages from other sites, and requests built to provoke inconsistent or
//! amplified answers.

mod common;
use common::*;

use borscht_protocol::{ClientMessage, ErrorCode, ServerMessage};
use borscht_server::limits::Limits;
use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A PNG of `side` x `side` 16-bit RGBA of one colour: small on the wire, `side² * 8`
/// bytes decoded.
fn flat_png(side: u32) -> Vec<u8> {
    let image = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_pixel(
        side,
        side,
        image::Rgba([40_000, 9_000, 700, 65_535]),
    );
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba16(image)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_pictures_are_shrunk_and_the_queue_is_bounded_by_bytes() {
    // While the model loads, pictures wait shrunk to 512 x 512 RGB: 786 432 bytes each.
    let side = borscht_server::job::LOADING_SIDE as usize;
    let limits = Limits { queue_max_bytes: 2 * side * side * 3, ..Limits::default() };
    let mut server = TestServer::start(limits).await;
    let mut ws = server.connect().await;
    let png = flat_png(1500);
    for id in 1..=2 {
        send(&mut ws, &recognize(id, &png, 2)).await;
        assert!(matches!(next(&mut ws).await, ServerMessage::Accepted { .. }));
    }
    assert_eq!(metric(&server.metrics().await, "borscht_queue_bytes") as usize, 2 * side * side * 3);
    // A third picture would pass the byte bound (the count bound is 64).
    send(&mut ws, &recognize(3, &png, 2)).await;
    match next(&mut ws).await {
        ServerMessage::Error { id: Some(3), code: ErrorCode::Busy, retry_after_s: Some(_), .. } => {}
        other => panic!("expected busy, got {other:?}"),
    }
    // A text request holds no picture and still fits.
    send(&mut ws, &ClientMessage::GenerateText { id: 4, prompt: "блюдо:".into(), n: Some(1) }).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Accepted { id: 4, .. }));
    server.open();
    let finals = until_finals(&mut ws, &[1, 2, 4]).await;
    assert!(finals.iter().all(|f| !matches!(f.last(), Some(ServerMessage::Error { .. }))), "{finals:?}");
    assert_eq!(metric(&server.metrics().await, "borscht_queue_bytes"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_let_go_and_its_work_cancelled() {
    let limits = Limits { send_timeout_s: 1, outbox_max_bytes: 64 << 10, ..Limits::default() };
    let server = TestServer::start(limits).await;
    // A client that never reads, with a small receive buffer so the server's answers
    // back up quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/ws", server.addr);
    let (mut ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    // One request waits for the model (still loading) and must be cancelled.
    send(&mut ws, &ClientMessage::GenerateText { id: 1, prompt: "блюдо:".into(), n: Some(1) }).await;
    let started = Instant::now();
    let frame = ClientMessage::Ping { nonce: u64::MAX };
    let text = borscht_protocol::encode(&frame);
    let mut refused = false;
    'sending: while started.elapsed() < Duration::from_secs(20) {
        // Pings answered with pongs the client never reads, a thousand at a time.
        for _ in 0..1000 {
            let sent =
                tokio::time::timeout(Duration::from_secs(1), ws.send(WsMessage::Text(text.clone().into()))).await;
            match sent {
                Ok(Ok(())) => {}
                // Refused (the server closed), or stuck (the server stopped reading).
                Ok(Err(_)) => {
                    refused = true;
                    break 'sending;
                }
                Err(_) => break,
            }
        }
        if metric(&server.metrics().await, "borscht_websocket_connections") == 0.0 {
            refused = true;
            break;
        }
    }
    let waited = started.elapsed();
    assert!(refused, "the server still held the connection after {waited:?}");
    assert!(waited < Duration::from_secs(10), "let go only after {waited:?}");
    assert!(server.state.queue.depth() <= 1);
    // The connection's request was cancelled: the worker drops it when it gets to it.
    let flag_raised = tokio::time::timeout(Duration::from_secs(5), async {
        while metric(&server.metrics().await, "borscht_websocket_connections") != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(flag_raised.is_ok(), "the connection is still counted");
    let mut server = server;
    server.open();
    let cancelled = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = server.metrics().await;
            if text.contains(r#"borscht_requests_total{kind="generate_text",outcome="cancelled"} 1"#) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the request of the client that left was not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_only_a_short_prefix_of_the_input() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let mut ws = server.connect().await;
    // 100 000 DEL characters: escaped twice they were a 700 KB answer.
    let long = "\u{7f}".repeat(100_000);
    let frames = [
        format!(r#"{{"type":"{long}"}}"#),
        format!(r#"{{"type":"ping","nonce":"{long}"}}"#),
        format!(r#"{{"type":{{"x":"{long}"}}}}"#),
        format!("{{\"type\":\"ping\",\"nonce\":1,{long}"),
    ];
    for frame in frames {
        ws.send(WsMessage::Text(frame.into())).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.unwrap().unwrap().unwrap();
        let WsMessage::Text(text) = answer else { panic!("expected a text frame") };
        assert!(text.len() < 1000, "an error of {} bytes: {}", text.len(), &text[..200]);
        assert!(matches!(borscht_protocol::decode_server_message(text.as_str()).unwrap(), ServerMessage::Error { .. }));
    }
}

/// Seconds from sending `request` to its final frame.
async fn latency(ws: &mut Socket, request: &ClientMessage) -> (f64, ServerMessage) {
    let id = request.request_id().unwrap();
    let started = Instant::now();
    send(ws, request).await;
    let last = until_final(ws, id).await.pop().unwrap();
    (started.elapsed().as_secs_f64(), last)
}

fn drawing(id: u64) -> ClientMessage {
    ClientMessage::GenerateImage { id, text: "борщ".into(), n: Some(4), seed: None }
}

fn text(id: u64) -> ClientMessage {
    ClientMessage::GenerateText { id, prompt: "блюдо:".into(), n: Some(1) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_starve_a_polite_one() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let mut polite = server.connect_from("127.0.0.2").await;
    let mut flooder = server.connect().await;
    // Alone: the polite request, and one of the flooder's costly ones.
    let mut idle = Vec::new();
    for id in 1..=3 {
        idle.push(latency(&mut polite, &text(id)).await.0);
    }
    idle.sort_by(f64::total_cmp);
    let idle = idle[1];
    let (job, last) = latency(&mut flooder, &drawing(1)).await;
    assert!(matches!(last, ServerMessage::Images { .. }), "{last:?}");

    // The flooder fills its share: 4 connections with 4 drawings each (16, its cap).
    let mut floods = vec![flooder];
    for _ in 0..3 {
        floods.push(server.connect().await);
    }
    let (mut flood_ids, mut early_frames): (Vec<Vec<u64>>, Vec<Vec<ServerMessage>>) = (Vec::new(), Vec::new());
    for (k, ws) in floods.iter_mut().enumerate() {
        let ids: Vec<u64> = (0..4).map(|j| 100 + 4 * k as u64 + j).collect();
        let mut early = Vec::new();
        for &id in &ids {
            send(ws, &drawing(id)).await;
            // The connection's earlier drawings may be running already, and their frames
            // come before this one's answer when the machine is slow: kept for the end.
            let answer = loop {
                let message = next(ws).await;
                if message.request_id() == Some(id) {
                    break message;
                }
                early.push(message);
            };
            assert!(matches!(answer, ServerMessage::Accepted { .. }), "drawing {id}: {answer:?}");
        }
        flood_ids.push(ids);
        early_frames.push(early);
    }
    // Past its cap the flooder is refused, over the WebSocket and over HTTP alike.
    let mut extra = server.connect().await;
    send(&mut extra, &drawing(999)).await;
    assert!(matches!(next(&mut extra).await, ServerMessage::Error { code: ErrorCode::TooManyRequests, .. }));
    let (status, body) =
        http(server.addr, "POST", "/api/v1/generate", "application/json", r#"{"text":"борщ"}"#.as_bytes()).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_requests"), "{body}");

    // The polite client waits for the drawing that is running, not for all of them.
    let (flooded, last) = latency(&mut polite, &text(50)).await;
    assert!(matches!(last, ServerMessage::Texts { .. }), "{last:?}");
    let bound = idle + 2.0 * job + 0.5;
    assert!(flooded <= bound, "polite request took {flooded:.2} s with the flood (alone {idle:.3} s, a drawing {job:.2} s; bound {bound:.2} s)");
    // The flood itself is served in full, drawings that finished early included.
    for ((ws, ids), early) in floods.iter_mut().zip(&flood_ids).zip(&early_frames) {
        let finished: Vec<&ServerMessage> = early.iter().filter(|m| m.is_final()).collect();
        let pending: Vec<u64> =
            ids.iter().copied().filter(|&id| !finished.iter().any(|m| m.request_id() == Some(id))).collect();
        let lasts = until_finals(ws, &pending).await.into_iter().filter_map(|mut frames| frames.pop());
        for last in lasts.chain(finished.into_iter().cloned()) {
            assert!(matches!(last, ServerMessage::Images { .. }), "{last:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let limits = Limits { header_timeout_s: 1, body_timeout_s: 1, ..Limits::default() };
    let mut server = TestServer::start(limits).await;
    server.open();
    // Headers dribbled a line every 300 ms: closed about a second in.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if stream.write_all(b"X-Dribble: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
            // The server answered (408) or closed.
            closed = read.is_err() || read.is_ok_and(|n| n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"));
            if closed {
                break;
            }
        }
    }
    assert!(closed, "a client dribbling its headers was still connected after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "cut off only after {:?}", started.elapsed());

    // A body that stops arriving: 408 with a JSON error.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head =
        "POST /api/v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(br#"{"text":"#).await.unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "a stalled body was still waited for after 10 s");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("did not arrive in time"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// The status of a WebSocket upgrade sent with `origin`.
async fn upgrade_status(server: &TestServer, origin: Option<&str>) -> u16 {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n",
        server.addr
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_servers_own_pages_and_named_origins_may_open_the_websocket() {
    let mut server = TestServer::start_with(|config| {
        config.ws_origins = vec!["https://partner.example".into()];
        config.embed_ancestors = vec!["https://recipes.example".into()];
    })
    .await;
    server.open();
    let own = format!("http://{}", server.addr);
    assert_eq!(upgrade_status(&server, Some(&own)).await, 101);
    assert_eq!(upgrade_status(&server, Some("https://partner.example")).await, 101);
    assert_eq!(upgrade_status(&server, Some("https://recipes.example")).await, 101);
    assert_eq!(upgrade_status(&server, None).await, 101, "clients that are not browsers send no Origin");
    assert_eq!(upgrade_status(&server, Some("https://evil.example")).await, 403);
    assert_eq!(upgrade_status(&server, Some("null")).await, 403);
    assert_eq!(upgrade_status(&server, Some("http://127.0.0.1:1")).await, 403, "another port is another origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_get_a_strict_policy_and_caches_get_honest_headers() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<html><script type=\"module\">start()</script></html>").unwrap();
    std::fs::write(web.path().join("app-0123456789abcdef.js"), "start()").unwrap();
    std::fs::write(web.path().join("widget.js"), "mount()").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), web.path().join("leak.txt")).unwrap();
    let web_dir = web.path().to_path_buf();
    let mut server = TestServer::start_with(|config| {
        config.web_dir = web_dir;
        config.embed_ancestors = vec!["https://recipes.example".into()];
    })
    .await;
    server.open();
    let header = |head: &str, name: &str| -> String {
        head.lines()
            .find_map(|l| {
                l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let (status, head, _) = http_raw(server.addr, "GET", "/", "", b"").await;
    assert_eq!(status, 200);
    let csp = header(&head, "content-security-policy");
    let hash = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"start()"))
    };
    for directive in [
        "default-src 'self'".to_string(),
        format!("script-src 'self' 'wasm-unsafe-eval' 'sha256-{hash}'"),
        "connect-src 'self'".into(),
        "img-src 'self' data: blob:".into(),
        "object-src 'none'".into(),
        "base-uri 'none'".into(),
        "frame-ancestors 'self'".into(),
    ] {
        assert!(csp.contains(&directive), "{directive} missing in {csp}");
    }
    assert_eq!(header(&head, "permissions-policy"), "camera=(self)");
    assert_eq!(header(&head, "cache-control"), "no-cache");
    let (_, head, _) = http_raw(server.addr, "GET", "/app-0123456789abcdef.js", "", b"").await;
    assert_eq!(header(&head, "cache-control"), "public, max-age=31536000, immutable");
    let (_, head, _) = http_raw(server.addr, "GET", "/widget.js", "", b"").await;
    assert_eq!(header(&head, "cache-control"), "no-cache");
    let (status, head, _) = http_raw(server.addr, "POST", "/api/v1/generate", "application/json", b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(header(&head, "cache-control"), "no-store");
    // The widget alone may be framed by the named sites, and only at its exact path.
    let (_, head, _) = http_raw(server.addr, "GET", "/embed", "", b"").await;
    assert!(header(&head, "content-security-policy").ends_with("frame-ancestors https://recipes.example"));
    let (_, head, _) = http_raw(server.addr, "GET", "/embedXYZ", "", b"").await;
    assert!(header(&head, "content-security-policy").ends_with("frame-ancestors 'self'"));
    // A symbolic link out of the web folder is not followed.
    let (status, _, body) = http_raw(server.addr, "GET", "/leak.txt", "", b"").await;
    assert_eq!(status, 404);
    assert!(!String::from_utf8_lossy(&body).contains("secret"));
    // Compressed for browsers that ask.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let big = "start();".repeat(1000);
    std::fs::write(web.path().join("big-0123456789abcdef.js"), &big).unwrap();
    let request =
        "GET /big-0123456789abcdef.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let head =
        String::from_utf8_lossy(&response[..response.windows(4).position(|w| w == b"\r\n\r\n").unwrap()]).to_string();
    assert_eq!(header(&head, "content-encoding"), "gzip");
    assert!(response.len() < big.len() / 4, "{} bytes for {}", response.len(), big.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_json_and_named_for_what_went_wrong() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let json_error = |status: u16, head: &str, body: &[u8]| -> String {
        assert!(head.to_lowercase().contains("content-type: application/json"), "{status}: {head}");
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        value["error"]["code"].as_str().unwrap().to_string()
    };
    // A bad query string.
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/recognize?n=many", "image/png", &icon_png()).await;
    assert_eq!((status, json_error(status, &head, &body).as_str()), (422, "invalid_request"));
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/classify?colour=red", "image/png", &icon_png()).await;
    assert_eq!((status, json_error(status, &head, &body).as_str()), (422, "invalid_request"));
    // A multipart body that ends before its closing boundary is malformed, not too large.
    let cut = b"--XYZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n\x89PNG";
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/recognize", "multipart/form-data; boundary=XYZ", cut).await;
    assert_eq!((status, json_error(status, &head, &body).as_str()), (400, "invalid_message"));
    // Media types are case-insensitive: the form is read as a form.
    let form = |n: &str| {
        let mut form = b"--XYZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n".to_vec();
        form.extend_from_slice(&icon_png());
        form.extend_from_slice(
            format!("\r\n--XYZ\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n{n}\r\n--XYZ--\r\n").as_bytes(),
        );
        form
    };
    let capitals = "Multipart/Form-Data; boundary=XYZ";
    let (status, head, body) = http_raw(server.addr, "POST", "/api/v1/recognize", capitals, &form("0")).await;
    assert_eq!(
        (status, json_error(status, &head, &body).as_str()),
        (422, "invalid_request"),
        "the form's n=0 was read"
    );
    let (status, _, body) = http_raw(server.addr, "POST", "/api/v1/recognize", capitals, &form("2")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(answer["candidates"].as_array().is_some_and(|c| c.len() <= 2), "{answer}");
}

/// Log lines at WARN and above, from every test of this binary.
static WARNINGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Warnings;

impl std::io::Write for Warnings {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        WARNINGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_bad_requests_are_not_the_operators_warnings() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_writer(|| Warnings).try_init();
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let mut ws = server.connect().await;
    // Texts the model cannot spell are refused by the worker, one by one.
    for id in 1..=20 {
        let request = ClientMessage::GenerateText { id, prompt: format!("pizza{id}"), n: Some(1) };
        send(&mut ws, &request).await;
        match until_final(&mut ws, id).await.pop() {
            Some(ServerMessage::Error { code: ErrorCode::UnknownCharacters, .. }) => {}
            other => panic!("expected unknown_characters, got {other:?}"),
        }
    }
    let warnings = String::from_utf8_lossy(&WARNINGS.lock().unwrap()).into_owned();
    assert!(!warnings.contains("pizza"), "client errors logged as warnings:\n{warnings}");
}

/// A WebSocket from `local_ip` that the server refuses: its one text frame (the reason)
/// and the close frame's code and reason.
async fn refused_connection(server: &TestServer, local_ip: &str) -> (String, u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local_ip}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws?protocol={}", server.addr, borscht_protocol::PROTOCOL_VERSION),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let (mut text, mut close) = (String::new(), None);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match frame {
            WsMessage::Text(t) => text = t.to_string(),
            WsMessage::Close(frame) => {
                close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            _ => {}
        }
    }
    let (code, reason) = close.expect("a close frame with a reason");
    (text, code, reason)
}

/// Open WebSockets are capped in total and per client address: one more is told why and
/// closed with 1013 ("try again later"), and a closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_caps_are_told_why_and_closed() {
    let limits = Limits { max_connections: 3, max_connections_per_ip: 2, ..Limits::default() };
    let mut server = TestServer::start(limits).await;
    server.open();
    let first = server.connect().await;
    let _second = server.connect().await;
    let (text, code, reason) = refused_connection(&server, "127.0.0.1").await;
    assert_eq!(code, 1013);
    assert!(reason.contains("2 connections from your address"), "{reason}");
    assert!(text.contains("\"unavailable\"") && text.contains("2 connections"), "{text}");
    let _third = server.connect_from("127.0.0.2").await;
    let (_, code, reason) = refused_connection(&server, "127.0.0.3").await;
    assert_eq!(code, 1013);
    assert!(reason.contains("most connections (3)"), "{reason}");
    assert_eq!(metric(&server.metrics().await, "borscht_rejected_connections_total"), 2.0);
    // One closes; its place is free again once the server has let it go.
    drop(first);
    tokio::time::timeout(Duration::from_secs(30), async {
        while metric(&server.metrics().await, "borscht_websocket_connections") != 2.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the closed connection is let go");
    let _again = server.connect_from("127.0.0.3").await;
}

/// A raw HTTP GET from `local_ip`: the status and the head.
async fn get_from(server: &TestServer, local_ip: &str, path: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local_ip}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    (text.split_whitespace().nth(1).unwrap().parse().unwrap(), text)
}

/// The HTTP API allows each client address its burst, then answers 429 with the seconds
/// to wait; another address is not affected, and pages outside the API are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_beyond_a_clients_rate_are_told_when_to_come_back() {
    let mut server = TestServer::start(Limits { api_requests_per_minute: 2, ..Limits::default() }).await;
    server.open();
    tokio::time::timeout(Duration::from_secs(60), async {
        while reqwest_get(server.addr, "/readyz").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the model loads");
    for _ in 0..2 {
        assert_eq!(get_from(&server, "127.0.0.1", "/api/v1/dishes").await.0, 200);
    }
    let (status, response) = get_from(&server, "127.0.0.1", "/api/v1/dishes").await;
    assert_eq!(status, 429, "{response}");
    let lower = response.to_lowercase();
    let retry_after: u32 = lower
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {response}"));
    assert!((1..=30).contains(&retry_after), "one call comes back every 30 s: {retry_after}");
    assert!(response.contains("too_many_requests") && response.contains("try again in"), "{response}");
    assert_eq!(get_from(&server, "127.0.0.2", "/api/v1/dishes").await.0, 200, "another address");
    assert_eq!(get_from(&server, "127.0.0.1", "/healthz").await.0, 200, "health checks are not rate limited");
    assert_eq!(metric(&server.metrics().await, "borscht_rejected_rate_total"), 1.0);
}

/// Clients at their address's cap of requests in flight may send their next ones the
/// moment they read their answers: the places are given back as the answers go out, not
/// when the batch they ran in is cleared away (behind a load balancer every client may be
/// one address, so late places refuse honest clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_at_their_cap_may_ask_again_as_soon_as_they_are_answered() {
    const CLIENTS: usize = 8;
    let mut server = TestServer::start(Limits { max_requests_per_ip: CLIENTS, ..Limits::default() }).await;
    server.open();
    let mut sockets = Vec::new();
    for _ in 0..CLIENTS {
        sockets.push(server.connect().await);
    }
    let clients = sockets.into_iter().map(|mut ws| {
        tokio::spawn(async move {
            let mut refused = 0;
            for id in 1..=15 {
                send(&mut ws, &recognize(id, &icon_png(), 2)).await;
                let frames = until_final(&mut ws, id).await;
                refused += matches!(frames.last(), Some(ServerMessage::Error { code: ErrorCode::TooManyRequests, .. }))
                    as usize;
            }
            refused
        })
    });
    let refused: usize = futures::future::join_all(clients).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(refused, 0, "requests sent right after an answer were refused");
}
