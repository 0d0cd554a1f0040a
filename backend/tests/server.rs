//! The server on loopback with a tiny random model: streaming, batching across
//! clients, cancellation, a flood beyond the queue, bad inputs, the HTTP API.
//!
//! The model loader waits on a gate the test opens, so requests can be queued
//! deterministically before the worker starts serving them.

mod common;
use common::*;

use borscht::server::limits::Limits;
use borscht::server::{serve_on, Server, ServerConfig};
use borscht_protocol::{encode, ClientMessage, ErrorCode, ServerMessage};
use futures::{SinkExt, StreamExt};
use std::sync::mpsc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_streamed_candidates_then_the_result() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let mut ws = server.connect().await;
    send(&mut ws, &recognize(1, &icon_png(), 6)).await;
    let frames = until_final(&mut ws, 1).await;
    assert!(matches!(frames[0], ServerMessage::Accepted { id: 1, .. }), "{:?}", frames[0]);
    let streamed: Vec<String> = frames
        .iter()
        .filter_map(|f| if let ServerMessage::Candidate { text, .. } = f { Some(text.clone()) } else { None })
        .collect();
    assert!(frames.iter().any(|f| matches!(f, ServerMessage::Progress { .. })));
    let ServerMessage::Result { recognition, .. } = frames.last().unwrap() else { panic!("{:?}", frames.last()) };
    assert!(!streamed.is_empty());
    let mut ranked: Vec<String> = recognition.candidates.iter().map(|c| c.text.clone()).collect();
    let mut streamed_sorted = streamed.clone();
    ranked.sort();
    streamed_sorted.sort();
    assert_eq!(ranked, streamed_sorted, "the result ranks exactly the streamed candidates");
    let perplexities: Vec<f32> = recognition.candidates.iter().map(|c| c.perplexity).collect();
    assert!(perplexities.windows(2).all(|w| w[0] <= w[1]), "best fitting first: {perplexities:?}");
    if let Some(best) = &recognition.best {
        assert_eq!(recognition.confidence, best.confidence);
        let portion = recognition.portion.as_ref().unwrap();
        if let (Some(p), Some(k)) = (portion.kcal, best.nutrition.kcal) {
            assert!((p - 2.5 * k).abs() < 1e-3, "250 g portion scales kcal: {p} vs {k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_waiting_together_share_one_batch() {
    let mut server = TestServer::start(Limits::default()).await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    send(&mut first, &recognize(1, &icon_png(), 4)).await;
    assert!(matches!(next(&mut first).await, ServerMessage::Accepted { id: 1, queue_position: 0 }));
    send(&mut second, &recognize(1, &icon_png(), 4)).await;
    assert!(matches!(next(&mut second).await, ServerMessage::Accepted { id: 1, queue_position: 1 }));
    server.open();
    let a = until_final(&mut first, 1).await;
    let b = until_final(&mut second, 1).await;
    assert!(matches!(a.last(), Some(ServerMessage::Result { .. })));
    assert!(matches!(b.last(), Some(ServerMessage::Result { .. })));
    // Same photo, same seed: same candidates, though they shared the batch.
    assert_eq!(a.last(), b.last());
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "borscht_batch_requests_count"), 1.0, "one batch\n{metrics}");
    assert_eq!(metric(&metrics, "borscht_batch_requests_sum"), 2.0, "of two requests\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_a_closed_socket_stop_work() {
    let mut server = TestServer::start(Limits::default()).await;
    let mut ws = server.connect().await;
    send(&mut ws, &recognize(1, &icon_png(), 4)).await;
    send(&mut ws, &recognize(2, &icon_png(), 4)).await;
    send(&mut ws, &ClientMessage::Cancel { id: 1 }).await;
    let mut leaving = server.connect().await;
    send(&mut leaving, &recognize(7, &icon_png(), 4)).await;
    assert!(matches!(next(&mut leaving).await, ServerMessage::Accepted { id: 7, .. }));
    leaving.close(None).await.unwrap();
    drop(leaving);
    // The server has let go of that connection (and cancelled its work) once the gauge drops.
    let mut closed = false;
    for _ in 0..500 {
        if metric(&server.metrics().await, "borscht_websocket_connections") == 1.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the server noticed the closed socket");
    server.open();
    let [cancelled, finished]: [Vec<ServerMessage>; 2] =
        until_finals(&mut ws, &[1, 2]).await.try_into().expect("two ids");
    assert_eq!(cancelled.last(), Some(&ServerMessage::Cancelled { id: 1 }));
    assert!(!cancelled.iter().any(|f| matches!(f, ServerMessage::Candidate { .. })), "no work for it");
    assert!(matches!(finished.last(), Some(ServerMessage::Result { .. })));
    // Cancelling what is not in flight is an error, not silence.
    send(&mut ws, &ClientMessage::Cancel { id: 99 }).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Error { id: Some(99), code: ErrorCode::InvalidRequest, .. }));
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "borscht_requests_total{kind=\"recognize\",outcome=\"cancelled\"}"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "borscht_requests_total{kind=\"recognize\",outcome=\"ok\"}"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_queue_is_told_busy_and_every_request_is_answered() {
    let limits = Limits { queue_capacity: 3, max_requests_per_connection: 4, ..Limits::default() };
    let mut server = TestServer::start(limits).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect().await);
    }
    // 3 clients x 2 requests = 6 requests for 3 queue places.
    for ws in clients.iter_mut() {
        send(ws, &recognize(1, &icon_png(), 2)).await;
        send(ws, &recognize(2, &icon_png(), 2)).await;
    }
    let mut accepted = 0;
    let mut busy = 0;
    let mut pending = Vec::new();
    for (c, ws) in clients.iter_mut().enumerate() {
        for _ in 0..2 {
            match next(ws).await {
                ServerMessage::Accepted { id, .. } => {
                    accepted += 1;
                    pending.push((c, id));
                }
                ServerMessage::Error { code: ErrorCode::Busy, retry_after_s: Some(s), id: Some(_), .. } => {
                    assert!(s > 0);
                    busy += 1;
                }
                other => panic!("expected accepted or busy, got {other:?}"),
            }
        }
    }
    assert_eq!((accepted, busy), (3, 3));
    // HTTP callers hear it too: 429 with Retry-After.
    let (status, head, body) = http_raw(server.addr, "POST", "/api/v1/recognize", "image/png", &icon_png()).await;
    assert_eq!(status, 429, "{head}");
    assert!(head.to_lowercase().contains("retry-after: 2"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"busy\""));
    server.open();
    for (c, ws) in clients.iter_mut().enumerate() {
        let ids: Vec<u64> = pending.iter().filter(|(client, _)| *client == c).map(|(_, id)| *id).collect();
        for frames in until_finals(ws, &ids).await {
            assert!(matches!(frames.last(), Some(ServerMessage::Result { .. })), "{:?}", frames.last());
        }
    }
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "borscht_rejected_busy_total"), 4.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_error_and_the_server_keeps_serving() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_pixels: 80 * 80, ..Limits::default() };
    // The model stays gated until the end: every refusal below happens before any work.
    let mut server = TestServer::start(limits.clone()).await;
    let mut ws = server.connect().await;
    let big_picture = {
        let image = image::RgbImage::from_pixel(100, 100, image::Rgb([200, 40, 40]));
        borscht::imaging::encode_png(&image)
    };
    let cases: Vec<(String, ErrorCode)> = vec![
        (encode(&recognize(1, b"\x89PNG\r\n\x1a\nnot really a png", 2)), ErrorCode::InvalidImage),
        (encode(&recognize(2, b"", 2)), ErrorCode::InvalidImage),
        (encode(&recognize(3, b"plain text, not a picture", 2)), ErrorCode::InvalidImage),
        (encode(&recognize(4, &big_picture, 2)), ErrorCode::ImageTooLarge),
        (encode(&recognize(5, &icon_png(), 1000)), ErrorCode::InvalidRequest),
        (r#"{"type":"recognize","id":6,"image":"%%% not base64 %%%"}"#.to_string(), ErrorCode::InvalidImage),
        (
            encode(&ClientMessage::Classify {
                id: 7,
                image: b64(&icon_png()),
                classes: vec!["борщ".into()],
                template: None,
                method: None,
            }),
            ErrorCode::InvalidRequest,
        ),
        (
            encode(&ClientMessage::GenerateImage { id: 8, text: "б".repeat(limits.max_text_chars + 1), n: None }),
            ErrorCode::InvalidRequest,
        ),
        ("{oops".to_string(), ErrorCode::MalformedJson),
        (r#"{"type":"teleport"}"#.to_string(), ErrorCode::UnknownMessageType),
        (r#"{"type":"recognize","id":"x"}"#.to_string(), ErrorCode::InvalidMessage),
        (r#"{"type":"hello","protocol_version":999}"#.to_string(), ErrorCode::ProtocolMismatch),
        (
            format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(limits.max_frame_bytes() + 10)),
            ErrorCode::FrameTooLarge,
        ),
    ];
    for (frame, expected) in cases {
        ws.send(WsMessage::Text(frame.clone().into())).await.unwrap();
        match next(&mut ws).await {
            ServerMessage::Error { code, message, .. } => {
                assert_eq!(code, expected, "{}: {message}", &frame[..frame.len().min(80)]);
                assert!(!message.is_empty());
            }
            other => panic!("{}: expected an error, got {other:?}", &frame[..frame.len().min(80)]),
        }
    }
    ws.send(WsMessage::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert!(matches!(next(&mut ws).await, ServerMessage::Error { code: ErrorCode::MalformedJson, .. }));

    // A duplicate id while the first is in flight (queued behind the gate).
    send(&mut ws, &recognize(20, &icon_png(), 2)).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Accepted { id: 20, .. }));
    send(&mut ws, &recognize(20, &icon_png(), 2)).await;
    // Refused without the id: an error for id 20 would be a second final frame for the
    // request that holds it.
    match next(&mut ws).await {
        ServerMessage::Error { id: None, code: ErrorCode::DuplicateId, message, .. } => assert!(message.contains("20")),
        other => panic!("expected a duplicate_id error without an id, got {other:?}"),
    }
    server.open();
    assert!(matches!(until_final(&mut ws, 20).await.last(), Some(ServerMessage::Result { id: 20, .. })));
    // Still serving, on this connection and others.
    send(&mut ws, &ClientMessage::Ping { nonce: 42 }).await;
    assert_eq!(next(&mut ws).await, ServerMessage::Pong { nonce: 42 });
    send(&mut ws, &ClientMessage::GenerateText { id: 21, prompt: "блюдо:".into(), n: Some(2) }).await;
    let last = until_final(&mut ws, 21).await.pop();
    assert!(matches!(last, Some(ServerMessage::Texts { .. })), "{last:?}");

    // Texts the model's vocabulary cannot spell (its captions are Russian) are refused by
    // name, not answered about nothing.
    let latin = [
        ClientMessage::Classify {
            id: 22,
            image: b64(&icon_png()),
            classes: vec!["борщ".into(), "pizza".into()],
            template: None,
            method: None,
        },
        ClientMessage::GenerateImage { id: 23, text: "pizza".into(), n: None },
        ClientMessage::GenerateText { id: 24, prompt: "dish:".into(), n: Some(2) },
    ];
    for request in latin {
        let id = request.request_id().unwrap();
        send(&mut ws, &request).await;
        match until_final(&mut ws, id).await.pop() {
            Some(ServerMessage::Error { code: ErrorCode::UnknownCharacters, message, .. }) => {
                assert!(message.contains("«p»") || message.contains("«d»"), "{message}")
            }
            other => panic!("request {id}: expected unknown_characters, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_recognises_classifies_and_draws() {
    let mut server = TestServer::start(Limits::default()).await;
    let (status, body) = reqwest_get(server.addr, "/readyz").await;
    assert_eq!((status, body.contains("loading")), (503, true), "{body}");
    server.open();
    let mut ready = false;
    for _ in 0..200 {
        if reqwest_get(server.addr, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready);

    let (status, body) =
        http(server.addr, "POST", "/api/v1/recognize?n=4&portion_g=150", "image/png", &icon_png()).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(!json["candidates"].as_array().unwrap().is_empty(), "{body}");

    let boundary = "XyZ";
    let mut form = Vec::new();
    form.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"classes\"\r\n\r\nборщ,шаурма,рис\r\n").bytes(),
    );
    form.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n")
            .bytes(),
    );
    form.extend(icon_png());
    form.extend(format!("\r\n--{boundary}--\r\n").bytes());
    let (status, body) =
        http(server.addr, "POST", "/api/v1/classify", &format!("multipart/form-data; boundary={boundary}"), &form)
            .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["classes"].as_array().unwrap().len(), 3);
    let scores: f64 = json["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).sum();
    assert!((scores - 1.0).abs() < 1e-4);
    let ppl: Vec<f64> = json["perplexities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    let lowest = (0..ppl.len()).min_by(|&a, &b| ppl[a].total_cmp(&ppl[b])).unwrap();
    assert_eq!((ppl.len(), json["label"].as_u64()), (3, Some(lowest as u64)), "{body}");

    let (status, head, png) =
        http_raw(server.addr, "POST", "/api/v1/generate", "application/json", r#"{"text":"борщ"}"#.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_lowercase().contains("content-type: image/png"));
    let picture = image::load_from_memory(&png).unwrap();
    assert_eq!(picture.width(), 64);
    // A dish the model cannot spell: 422 with the code and the characters named.
    let (status, body) =
        http(server.addr, "POST", "/api/v1/generate", "application/json", r#"{"text":"pizza"}"#.as_bytes()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("unknown_characters") && body.contains("«z»"), "{body}");

    // JSON errors with fitting statuses.
    let (status, body) = http(server.addr, "POST", "/api/v1/recognize", "image/png", b"garbage").await;
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("invalid_image"), "{body}");
    let (status, body) = http(server.addr, "POST", "/api/v1/recognize", "image/png", b"").await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = http(server.addr, "POST", "/api/v1/generate", "application/json", b"{\"txt\":1}").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(server.addr, "POST", "/api/v1/classify?classes=one", "image/png", &icon_png()).await;
    assert_eq!(status, 422, "{body}");

    let metrics = server.metrics().await;
    assert!(metric(&metrics, "borscht_request_seconds_count{kind=\"recognize\"}") >= 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "borscht_queue_depth"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_test_reports_every_request() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo/images/twemoji/1f33d-0.png");
    let args = borscht::cli::loadtest::LoadTestArgs {
        url: format!("ws://{}/ws", server.addr),
        image,
        clients: 3,
        requests: 2,
        n: 2,
    };
    let report = borscht::cli::loadtest::run(&args).await.unwrap();
    assert_eq!((report.requests, report.completed, report.busy, report.errors), (6, 6, 0, 0), "{report:?}");
    assert!(report.latency_p50_s > 0.0 && report.latency_p50_s <= report.latency_p95_s);
    assert!(report.latency_p95_s <= report.latency_max_s && report.throughput_rps > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_work_and_finishes_what_is_in_flight() {
    let (gate, wait) = mpsc::channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig::new(addr, std::env::temp_dir().join("borscht-no-web-app"));
    let server = Server::start(&config, gated_tiny_model(wait));
    let state = server.state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let serving = tokio::spawn(serve_on(
        listener,
        server.router,
        async move {
            let _ = stopped.await;
            drain_state.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
            drain_state.drained(Duration::from_secs(60)).await;
        },
        Duration::from_secs(15),
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    next(&mut ws).await; // hello
    send(&mut ws, &recognize(1, &icon_png(), 4)).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Accepted { id: 1, .. }));
    stop.send(()).unwrap();
    // Wait for the shutdown to begin (a loaded machine may take a while to run it).
    for _ in 0..500 {
        if state.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send(&mut ws, &recognize(2, &icon_png(), 4)).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Error { id: Some(2), code: ErrorCode::Unavailable, .. }));
    gate.send(()).unwrap();
    let frames = until_final(&mut ws, 1).await;
    assert!(matches!(frames.last(), Some(ServerMessage::Result { .. })), "in-flight work finishes");
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
    assert_eq!(state.worker.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_cors_preflights_for_allowed_origins() {
    let server = TestServer::start(Limits { ..Limits::default() }).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = "OPTIONS /api/v1/recognize HTTP/1.1\r\nHost: x\r\nOrigin: https://recipes.example\r\n\
                   Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let lower = response.to_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{response}");
    assert!(lower.contains("access-control-allow-origin: *"), "{response}");
    assert!(lower.contains("access-control-allow-methods"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_told_and_closed_after_the_idle_timeout() {
    let mut server = TestServer::start(Limits { idle_timeout_s: 1, ..Limits::default() }).await;
    server.open();
    let mut ws = server.connect().await;
    let started = std::time::Instant::now();
    // Reading answers the server's pings with pongs, as a browser does; they must not
    // count as activity.
    match tokio::time::timeout(Duration::from_secs(10), next(&mut ws)).await {
        Ok(ServerMessage::Error { code: ErrorCode::Unavailable, message, .. }) => assert!(message.contains("idle")),
        other => panic!("expected the idle notice, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before the timeout");
    // Then the server ends the connection.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection stayed open");
}
