//! The server on loopback with a tiny random model: streaming, batching across
//! clients, cancellation, a flood beyond the queue, bad inputs, the HTTP API.
//!
//! The model loader waits on a gate the test opens, so requests can be queued
//! deterministically before the worker starts serving them.

mod common;
use common::*;

use borscht_protocol::{encode, ClientMessage, ErrorCode, ServerMessage};
use borscht_server::limits::Limits;
use borscht_server::{serve_on, Server, ServerConfig};
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
}

/// Every value of a portion is the dish's value per 100 g scaled by its grams.
fn assert_portion_scales(portion: &serde_json::Value, per_100g: &serde_json::Value, grams: f64) {
    for key in ["protein_g", "fat_g", "carbs_g", "kcal"] {
        let (p, v) = (portion[key].as_f64(), per_100g[key].as_f64());
        let (Some(p), Some(v)) = (p, v) else { panic!("{key} missing: {portion} / {per_100g}") };
        assert!((p - v * grams / 100.0).abs() < 1e-3 * v.max(1.0), "{grams} g of {key}: {p}, per 100 g {v}");
    }
}

/// The demo model names the pizza of its own icon, so the portion is always there to
/// check: over the WebSocket (250 g) and the HTTP API (150 g).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portions_scale_the_dishs_values_over_both_apis() {
    let server = TestServer::start_demo().await;
    let mut ws = server.connect().await;
    let request = ClientMessage::Recognize {
        id: 1,
        image: b64(&pizza_icon_png()),
        n: Some(8),
        template: None,
        portion_g: Some(250.0),
    };
    send(&mut ws, &request).await;
    let frames = until_final(&mut ws, 1).await;
    let ServerMessage::Result { recognition, .. } = frames.last().unwrap() else { panic!("{:?}", frames.last()) };
    let recognition = serde_json::to_value(recognition).unwrap();
    assert_eq!(recognition["best"]["dish"], "пицца", "{recognition:#}");
    assert_portion_scales(&recognition["portion"], &recognition["best"]["nutrition"], 250.0);

    let (status, body) =
        http(server.addr, "POST", "/api/v1/recognize?n=8&portion_g=150", "image/png", &pizza_icon_png()).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["best"]["dish"], "пицца", "{body}");
    assert_portion_scales(&json["portion"], &json["best"]["nutrition"], 150.0);
    // Without portion_g there is no portion.
    let (_, body) = http(server.addr, "POST", "/api/v1/recognize?n=8", "image/png", &pizza_icon_png()).await;
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["portion"].is_null(), "{body}");
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
        borscht_pipelines::imaging::encode_png(&image)
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
            encode(&ClientMessage::GenerateImage {
                id: 8,
                text: "б".repeat(limits.max_text_chars + 1),
                n: None,
                seed: None,
            }),
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
        ClientMessage::GenerateImage { id: 23, text: "pizza".into(), n: None, seed: None },
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

/// `borscht loadtest` against `server`: three clients sending two recognitions each.
fn load_test_args(server: &TestServer) -> borscht::cli::loadtest::LoadTestArgs {
    borscht::cli::loadtest::LoadTestArgs {
        url: format!("ws://{}/ws", server.addr),
        image: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo/images/twemoji/1f33d-0.png"),
        clients: 3,
        requests: 2,
        n: 2,
        duration: None,
        sample_every: 10.0,
        seed: 1,
        retries: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_test_reports_every_request() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let args = load_test_args(&server);
    let report = borscht::cli::loadtest::run(&args).await.unwrap();
    assert_eq!((report.requests, report.completed, report.busy, report.errors), (6, 6, 0, 0), "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert!(report.latency_p50_s > 0.0 && report.latency_p50_s <= report.latency_p95_s);
    assert!(report.latency_p95_s <= report.latency_max_s && report.throughput_rps > 0.0);
}

/// A soak: a mixed load for 20 seconds (every kind of request, cancels, clients hanging up
/// and coming back) where every request ends as it should and the server's memory is
/// sampled throughout. (`docs/soak.md` records a 30-minute run on the demo model.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_soak_loses_nothing() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let args = borscht::cli::loadtest::LoadTestArgs {
        clients: 4,
        duration: Some(20.0),
        sample_every: 2.0,
        seed: 7,
        retries: 0,
        ..load_test_args(&server)
    };
    let report = borscht::cli::loadtest::run(&args).await.unwrap();
    assert_eq!((report.lost, report.errors), (0, 0), "{report:#?}");
    assert_eq!(
        report.requests,
        report.completed + report.busy + report.cancelled + report.abandoned,
        "every request is accounted for: {report:#?}"
    );
    for kind in ["recognize", "classify", "draw", "texts"] {
        assert!(report.completed_by_kind.get(kind).is_some_and(|&n| n > 0), "no {kind} completed: {report:#?}");
    }
    assert!(report.cancelled > 0 && report.abandoned > 0, "{report:#?}");
    assert!(report.server_memory_mib.len() >= 5, "memory sampled every 2 s: {:?}", report.server_memory_mib);
    assert!(report.server_memory_mib.iter().all(|&(_, mib)| mib > 1.0));
    // What the hung-up clients left behind was let go: no connection is still counted.
    tokio::time::timeout(Duration::from_secs(30), async {
        while metric(&server.metrics().await, "borscht_websocket_connections") != 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every connection closed");
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.state.worker.in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the abandoned requests are let go too");
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
            drain_state.shutdown.begin();
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
    tokio::time::timeout(Duration::from_secs(60), async {
        state.shutdown.begun().await;
    })
    .await
    .expect("the shutdown never began");
    send(&mut ws, &recognize(2, &icon_png(), 4)).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Error { id: Some(2), code: ErrorCode::Unavailable, .. }));
    // The HTTP API refuses new work too: 503, not a queued request that never runs.
    let (status, body) = http(addr, "POST", "/api/v1/recognize?n=4", "image/png", &icon_png()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
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

/// A client that keeps talking stays connected; once it falls silent it is told and the
/// connection is closed. (No clock is read: the first half shows the notice is not sent
/// while the client is active, the second that silence brings it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_told_and_closed_after_the_idle_timeout() {
    let mut server = TestServer::start(Limits { idle_timeout_s: 2, ..Limits::default() }).await;
    server.open();
    let mut ws = server.connect().await;
    // Active for three idle timeouts: a ping every quarter of one, each answered.
    for nonce in 0..24 {
        send(&mut ws, &ClientMessage::Ping { nonce }).await;
        match next(&mut ws).await {
            ServerMessage::Pong { nonce: got } => assert_eq!(got, nonce),
            other => panic!("an active client got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Reading answers the server's pings with pongs, as a browser does; they must not
    // count as activity.
    match tokio::time::timeout(Duration::from_secs(20), next(&mut ws)).await {
        Ok(ServerMessage::Error { code: ErrorCode::Unavailable, message, .. }) => assert!(message.contains("idle")),
        other => panic!("expected the idle notice, got {other:?}"),
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_the_older_protocol_get_frames_they_can_read() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    while !matches!(server.state.worker.status(), borscht_server::worker::ModelStatus::Ready { .. }) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A protocol-2 client names no protocol when it connects, and says 2 in its hello.
    let (mut old, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await.unwrap();
    let raw = |frame: WsMessage| match frame {
        WsMessage::Text(text) => text.to_string(),
        other => panic!("{other:?}"),
    };
    let hello = raw(old.next().await.unwrap().unwrap());
    assert!(hello.contains(r#""protocol_version":2"#) && !hello.contains("dishes"), "{hello}");
    send(&mut old, &ClientMessage::Hello { protocol_version: 2 }).await;
    send(&mut old, &ClientMessage::Ping { nonce: 5 }).await;
    assert_eq!(next(&mut old).await, ServerMessage::Pong { nonce: 5 }, "protocol 2 is still spoken");
    send(&mut old, &ClientMessage::GenerateImage { id: 1, text: "борщ".into(), n: Some(1), seed: None }).await;
    let images = loop {
        let text = raw(old.next().await.unwrap().unwrap());
        if text.contains(r#""type":"images""#) {
            break text;
        }
    };
    // No `seed` field (the pictures' base64 may spell "seed" by chance: look at the keys).
    let frame: serde_json::Value = serde_json::from_str(&images).unwrap();
    assert!(frame.get("seed").is_none() && frame.get("images").is_some(), "{images}");
    // The current protocol: the dishes in the hello, the seed that draws the pictures again.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?protocol=3", server.addr)).await.unwrap();
    match next(&mut ws).await {
        ServerMessage::Hello { protocol_version: 3, dishes, .. } => {
            assert_eq!(dishes, vec![borscht_protocol::Dish { name: "борщ".into(), en: Some("borscht".into()) }])
        }
        other => panic!("{other:?}"),
    }
    let draw =
        |id: u64, seed: Option<u64>| ClientMessage::GenerateImage { id, text: "борщ".into(), n: Some(1), seed };
    send(&mut ws, &draw(2, None)).await;
    let Some(ServerMessage::Images { images: first, seed: Some(seed), .. }) = until_final(&mut ws, 2).await.pop()
    else {
        panic!("no seed with the pictures")
    };
    send(&mut ws, &draw(3, Some(seed))).await;
    let Some(ServerMessage::Images { images: again, seed: Some(same), .. }) = until_final(&mut ws, 3).await.pop()
    else {
        panic!("no pictures")
    };
    assert_eq!((again, same), (first.clone(), seed), "the same seed draws the same pictures");
    let mut fresh = Vec::new();
    for id in 4..7 {
        send(&mut ws, &draw(id, None)).await;
        if let Some(ServerMessage::Images { images, seed: Some(s), .. }) = until_final(&mut ws, id).await.pop() {
            fresh.push((s, images));
        }
    }
    assert!(fresh.iter().any(|(s, images)| *s != seed && *images != first), "each press draws anew");
    // The HTTP API: the dishes, and the seed of a drawing.
    let (status, body) = http(server.addr, "GET", "/api/v1/dishes", "", b"").await;
    assert_eq!(status, 200);
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["dishes"][0]["name"], "борщ");
    let body = format!(r#"{{"text":"борщ","seed":{seed}}}"#);
    let (status, head, png) =
        http_raw(server.addr, "POST", "/api/v1/generate", "application/json", body.as_bytes()).await;
    assert_eq!(status, 200);
    assert!(head.to_lowercase().contains(&format!("x-borscht-seed: {seed}")), "{head}");
    use base64::Engine as _;
    assert_eq!(base64::engine::general_purpose::STANDARD.encode(png), first[0], "the API draws the same picture");
}

/// The limits a client meets first: requests in flight per connection, dishes per
/// question, and requests per model batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connection_class_and_batch_limits_hold() {
    let limits = Limits { max_requests_per_connection: 2, max_classes: 3, max_batch: 2, ..Limits::default() };
    let mut server = TestServer::start(limits).await;
    let mut ws = server.connect().await;
    for id in 1..=3 {
        send(&mut ws, &recognize(id, &icon_png(), 2)).await;
    }
    for id in 1..=2 {
        assert!(matches!(next(&mut ws).await, ServerMessage::Accepted { id: got, .. } if got == id));
    }
    match next(&mut ws).await {
        ServerMessage::Error { id: Some(3), code: ErrorCode::TooManyRequests, message, .. } => {
            assert!(message.contains('2'), "{message}")
        }
        other => panic!("the third request in flight: {other:?}"),
    }
    // Four dishes against a limit of three, from another client.
    let mut asking = server.connect_from("127.0.0.2").await;
    let classes: Vec<String> = ["борщ", "рис", "суп", "чай"].map(String::from).to_vec();
    let classify = |id, classes: Vec<String>| ClientMessage::Classify {
        id,
        image: b64(&icon_png()),
        classes,
        template: None,
        method: None,
    };
    send(&mut asking, &classify(1, classes.clone())).await;
    match next(&mut asking).await {
        ServerMessage::Error { id: Some(1), code: ErrorCode::InvalidRequest, message, .. } => {
            assert!(message.contains("4 dishes given; the limit is 3"), "{message}")
        }
        other => panic!("four dishes: {other:?}"),
    }
    // A third client's recognition waits with the two: three requests, batches of two.
    send(&mut asking, &recognize(2, &icon_png(), 2)).await;
    assert!(matches!(next(&mut asking).await, ServerMessage::Accepted { id: 2, .. }));
    server.open();
    for frames in until_finals(&mut ws, &[1, 2]).await {
        assert!(matches!(frames.last(), Some(ServerMessage::Result { .. })), "{:?}", frames.last());
    }
    assert!(matches!(until_final(&mut asking, 2).await.last(), Some(ServerMessage::Result { .. })));
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "borscht_batch_requests_sum"), 3.0, "{metrics}");
    assert_eq!(metric(&metrics, "borscht_batch_requests_count"), 2.0, "two batches for three\n{metrics}");
    assert_eq!(metric(&metrics, "borscht_batch_requests_bucket{le=\"2\"}"), 2.0, "no batch above two\n{metrics}");
}

/// Percent-encodes a query value.
fn query_value(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// "Which dish?" takes its method and template over both APIs: each method scores its own
/// way, a template changes what is scored, and a method's default template is the one it
/// names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_takes_its_method_and_template_over_both_apis() {
    use borscht_protocol::ClassifyMethod;
    let mut server = TestServer::start(Limits::default()).await;
    let mut ws = server.connect().await;
    let classes = vec!["борщ".to_string(), "рис".to_string(), "суп".to_string()];
    // Asked before the model has loaded (the picture waits, shrunk, in the queue).
    let request = ClientMessage::Classify {
        id: 100,
        image: b64(&icon_png()),
        classes: classes.clone(),
        template: None,
        method: None,
    };
    send(&mut ws, &request).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Accepted { id: 100, .. }));
    server.open();
    let while_loading = match until_final(&mut ws, 100).await.pop() {
        Some(ServerMessage::Classification { classification, .. }) => classification.perplexities,
        other => panic!("{other:?}"),
    };
    let mut id = 0;
    let mut ask = async |method: Option<ClassifyMethod>, template: Option<&str>| -> Vec<f32> {
        id += 1;
        let request = ClientMessage::Classify {
            id,
            image: b64(&icon_png()),
            classes: classes.clone(),
            template: template.map(String::from),
            method,
        };
        send(&mut ws, &request).await;
        match until_final(&mut ws, id).await.pop() {
            Some(ServerMessage::Classification { classification, .. }) => classification.perplexities,
            other => panic!("{method:?} {template:?}: {other:?}"),
        }
    };
    let caption_fit = ask(None, None).await;
    assert_eq!(caption_fit, while_loading, "asked while the model loaded, the same answer");
    let zero_shot = ask(Some(ClassifyMethod::ZeroShot), None).await;
    let image_fit = ask(Some(ClassifyMethod::ImageFit), None).await;
    assert_ne!(caption_fit, zero_shot);
    assert_ne!(zero_shot, image_fit);
    assert_eq!(ask(Some(ClassifyMethod::CaptionFit), None).await, caption_fit, "caption fit is the default");
    let named = borscht_pipelines::scoring::default_class_template(ClassifyMethod::ZeroShot);
    assert_eq!(ask(Some(ClassifyMethod::ZeroShot), Some(named)).await, zero_shot, "its default: {named}");
    let other_template = ask(Some(ClassifyMethod::ZeroShot), Some("суп или {}")).await;
    assert_ne!(other_template, zero_shot, "the template is what is scored");

    // The HTTP API answers the same questions with the same numbers.
    let http_ask = async |query: String| -> Vec<f32> {
        let path = format!("/api/v1/classify?classes={}{query}", query_value("борщ,рис,суп"));
        let (status, body) = http(server.addr, "POST", &path, "image/png", &icon_png()).await;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["perplexities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect()
    };
    assert_eq!(http_ask(String::new()).await, caption_fit);
    assert_eq!(http_ask("&method=zero_shot".into()).await, zero_shot);
    assert_eq!(http_ask("&method=image_fit".into()).await, image_fit);
    let query = format!("&method=zero_shot&template={}", query_value("суп или {}"));
    assert_eq!(http_ask(query).await, other_template);
}

/// A drawing already under way stops when cancelled: the previews stop and the answer
/// is `cancelled`, not the pictures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_generation_under_way_stops_when_cancelled() {
    let mut server = TestServer::start(Limits::default()).await;
    server.open();
    let mut ws = server.connect().await;
    send(&mut ws, &ClientMessage::GenerateImage { id: 1, text: "борщ".into(), n: Some(4), seed: Some(1) }).await;
    loop {
        match next(&mut ws).await {
            ServerMessage::ImagePreview { id: 1, rows_done, rows_total, .. } => {
                assert!(rows_done < rows_total, "the first preview is not the last row");
                break;
            }
            ServerMessage::Accepted { .. } | ServerMessage::Progress { .. } => continue,
            other => panic!("before the first preview: {other:?}"),
        }
    }
    send(&mut ws, &ClientMessage::Cancel { id: 1 }).await;
    let frames = until_final(&mut ws, 1).await;
    assert_eq!(frames.last(), Some(&ServerMessage::Cancelled { id: 1 }), "{frames:?}");
    let metrics = server.metrics().await;
    let cancelled = "borscht_requests_total{kind=\"generate_image\",outcome=\"cancelled\"}";
    assert_eq!(metric(&metrics, cancelled), 1.0, "{metrics}");
    // The connection serves on.
    send(&mut ws, &ClientMessage::Ping { nonce: 5 }).await;
    assert_eq!(next(&mut ws).await, ServerMessage::Pong { nonce: 5 });
}
