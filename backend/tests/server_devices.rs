//! Several devices in one process (`borscht serve --device cuda:0,cuda:1`): one model
//! worker per device, all fed by the one queue, each request answered once, `/metrics`
//! counting what each device ran, and a device that fails to load leaving the work to the
//! others.

mod common;
use common::*;

use borscht_protocol::{ClientMessage, ServerMessage};
use std::sync::{mpsc, Arc, Barrier};

/// The tiny model, loaded when the test opens `wait`, reported ready only once every
/// worker of `together` has loaded: all workers then take their first jobs at once.
fn tiny_model_together(wait: mpsc::Receiver<()>, together: Arc<Barrier>) -> borscht_server::worker::EngineLoader {
    let load = gated_tiny_model(wait);
    Box::new(move || {
        let loaded = load();
        together.wait();
        loaded
    })
}

fn device_count(metrics: &str, worker: usize, device: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("borscht_device_requests_total{")
                && l.contains(&format!("worker=\"{worker}\""))
                && l.contains(&format!("device=\"{device}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_serves_the_one_queue_and_each_request_is_answered_once() {
    let together = Arc::new(Barrier::new(2));
    let (gates, loaders): (Vec<_>, Vec<_>) = ["cuda:0", "cuda:1"]
        .iter()
        .map(|device| {
            let (gate, wait) = mpsc::channel::<()>();
            (gate, (device.to_string(), tiny_model_together(wait, together.clone())))
        })
        .unzip();
    let mut server = TestServer::start_workers(|_| {}, loaders, gates).await;
    let (status, body) = reqwest_get(server.addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    // Eight requests from two clients wait while both workers load.
    let mut clients = [server.connect_from("127.0.0.1").await, server.connect_from("127.0.0.2").await];
    for (c, ws) in clients.iter_mut().enumerate() {
        for k in 0..4u64 {
            let id = c as u64 * 10 + k;
            send(ws, &ClientMessage::GenerateText { id, prompt: "блюдо:".into(), n: Some(4) }).await;
        }
    }
    server.open();
    for (c, ws) in clients.iter_mut().enumerate() {
        let ids: Vec<u64> = (0..4u64).map(|k| c as u64 * 10 + k).collect();
        for frames in until_finals(ws, &ids).await {
            assert!(matches!(frames.last(), Some(ServerMessage::Texts { .. })), "{frames:?}");
        }
    }
    let (status, body) = reqwest_get(server.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"{"device":"cuda:0","status":"ready"}"#), "{body}");
    assert!(body.contains(r#"{"device":"cuda:1","status":"ready"}"#), "{body}");
    let metrics = server.metrics().await;
    let (first, second) = (device_count(&metrics, 0, "cuda:0"), device_count(&metrics, 1, "cuda:1"));
    assert_eq!(first + second, 8.0, "every request counted once, on one device:\n{metrics}");
    assert!(first > 0.0 && second > 0.0, "both devices served ({first} and {second}):\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_fails_to_load_leaves_the_work_to_the_others() {
    let (gate, wait) = mpsc::channel::<()>();
    let broken: borscht_server::worker::EngineLoader = Box::new(|| anyhow::bail!("cannot open CUDA device 7"));
    let loaders = vec![("cuda:7".to_string(), broken), ("cpu".to_string(), gated_tiny_model(wait))];
    let mut server = TestServer::start_workers(|_| {}, loaders, vec![gate]).await;
    let mut ws = server.connect().await;
    for id in 1..=4 {
        send(&mut ws, &ClientMessage::GenerateText { id, prompt: "блюдо:".into(), n: Some(2) }).await;
    }
    // Not ready while the working device still loads, whatever the broken one did.
    assert_eq!(reqwest_get(server.addr, "/readyz").await.0, 503);
    server.open();
    for frames in until_finals(&mut ws, &[1, 2, 3, 4]).await {
        assert!(
            matches!(frames.last(), Some(ServerMessage::Texts { .. })),
            "answered by the working device: {frames:?}"
        );
    }
    let (status, body) = reqwest_get(server.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"{"device":"cuda:7","message":"cannot open CUDA device 7","status":"failed"}"#), "{body}");
    assert_eq!(device_count(&server.metrics().await, 1, "cpu"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_device_fails_the_waiting_requests_are_told_so() {
    let failing =
        |message: &'static str| -> borscht_server::worker::EngineLoader { Box::new(move || anyhow::bail!(message)) };
    let loaders = vec![("cuda:0".to_string(), failing("no GPU 0")), ("cuda:1".to_string(), failing("no GPU 1"))];
    let server = TestServer::start_workers(|_| {}, loaders, Vec::new()).await;
    let mut ws = server.connect().await;
    send(&mut ws, &ClientMessage::GenerateText { id: 1, prompt: "блюдо:".into(), n: Some(2) }).await;
    match until_final(&mut ws, 1).await.pop() {
        Some(ServerMessage::Error { message, .. }) => {
            assert!(message.contains("cuda:0: no GPU 0") && message.contains("cuda:1: no GPU 1"), "{message}")
        }
        other => panic!("expected an error naming both devices, got {other:?}"),
    }
    let (status, body) = reqwest_get(server.addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("failed"), "{body}");
}
