//! `borscht loadtest`: N concurrent WebSocket clients, each sending recognise requests
//! one after another; reports throughput and latency percentiles as JSON.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use borscht_protocol::{decode_server_message, encode, ClientMessage, ErrorCode, ServerMessage};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadTestArgs {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// The photo every request sends.
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Requests per client, sent one after another.
    #[arg(long, default_value_t = 4)]
    pub requests: usize,
    /// Captions per request.
    #[arg(long, default_value_t = 8)]
    pub n: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadReport {
    pub clients: usize,
    pub requests: usize,
    pub completed: usize,
    pub busy: usize,
    pub errors: usize,
    pub wall_s: f64,
    /// Completed requests per second.
    pub throughput_rps: f64,
    pub latency_p50_s: f64,
    pub latency_p95_s: f64,
    pub latency_max_s: f64,
}

enum Outcome {
    Completed(Duration),
    Busy,
    Failed,
}

async fn one_client(url: String, image: String, requests: usize, n: u32) -> Result<Vec<Outcome>> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(&url).await.with_context(|| format!("cannot connect to {url}"))?;
    let mut outcomes = Vec::with_capacity(requests);
    for id in 1..=requests as u64 {
        let request =
            ClientMessage::Recognize { id, image: image.clone(), template: None, n: Some(n), portion_g: None };
        let started = Instant::now();
        ws.send(Message::Text(encode(&request).into())).await?;
        let outcome = loop {
            let frame = tokio::time::timeout(Duration::from_secs(600), ws.next())
                .await
                .context("no answer within 10 minutes")?
                .context("the server closed the connection")??;
            let Message::Text(text) = frame else { continue };
            let message = decode_server_message(text.as_str()).map_err(anyhow::Error::msg)?;
            if message.request_id() != Some(id) || !message.is_final() {
                continue;
            }
            break match message {
                ServerMessage::Result { .. } => Outcome::Completed(started.elapsed()),
                ServerMessage::Error { code: ErrorCode::Busy, .. } => Outcome::Busy,
                _ => Outcome::Failed,
            };
        };
        outcomes.push(outcome);
    }
    let _ = ws.close(None).await;
    Ok(outcomes)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the load and measures it.
pub async fn run(args: &LoadTestArgs) -> Result<LoadReport> {
    if args.clients == 0 || args.requests == 0 {
        bail!("clients and requests must be positive");
    }
    let bytes = std::fs::read(&args.image).with_context(|| format!("cannot read {}", args.image.display()))?;
    let image = base64::engine::general_purpose::STANDARD.encode(bytes);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(one_client(args.url.clone(), image.clone(), args.requests, args.n)))
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await??);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| if let Outcome::Completed(d) = o { Some(d.as_secs_f64()) } else { None })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(LoadReport {
        clients: args.clients,
        requests: outcomes.len(),
        completed: latencies.len(),
        busy: outcomes.iter().filter(|o| matches!(o, Outcome::Busy)).count(),
        errors: outcomes.iter().filter(|o| matches!(o, Outcome::Failed)).count(),
        wall_s,
        throughput_rps: latencies.len() as f64 / wall_s,
        latency_p50_s: percentile(&latencies, 0.5),
        latency_p95_s: percentile(&latencies, 0.95),
        latency_max_s: latencies.last().copied().unwrap_or(0.0),
    })
}

pub fn main(args: LoadTestArgs) -> Result<()> {
    let report = tokio::runtime::Runtime::new()?.block_on(run(&args))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
