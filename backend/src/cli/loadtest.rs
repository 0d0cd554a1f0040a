//! `borscht loadtest`: N concurrent WebSocket clients against a server; reports
//! throughput, latency percentiles and what became of every request as JSON.
//!
//! Two shapes of load:
//! - by count (the default): each client sends `--requests` recognise requests one after
//!   another;
//! - a soak (`--duration S`): each client keeps a mixed load going until the time is up
//!   (recognise, classify, draw, texts, a request cancelled at once, and a client that
//!   hangs up mid-request and comes back), while the server's resident memory is sampled
//!   from its `/metrics`. Every request must end in its answer, `cancelled` or "busy";
//!   one that ends otherwise, or never, is counted as lost.
//!
//! A request whose connection dies before its final frame, or that a replica shutting
//! down refuses (`unavailable`), is sent again on a new connection (`--retries` times, as
//! the web app does): behind a load balancer that connection reaches another replica.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use borscht_protocol::{
    decode_server_message, encode, ClassifyMethod, ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
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
    /// Requests per client, sent one after another (without --duration).
    #[arg(long, default_value_t = 4)]
    pub requests: usize,
    /// Captions per request.
    #[arg(long, default_value_t = 8)]
    pub n: u32,
    /// Seconds of mixed load (a soak) instead of a count of recognitions.
    #[arg(long)]
    pub duration: Option<f64>,
    /// During a soak, seconds between samples of the server's memory.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// Seeds each client's choice of requests in a soak.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many times a request is sent again on a new connection after its connection
    /// died before the answer or its server was shutting down (0: never).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadReport {
    pub clients: usize,
    pub requests: usize,
    pub completed: usize,
    pub busy: usize,
    /// Requests that ended in an error frame other than "busy".
    pub errors: usize,
    /// Those errors by their code.
    pub errors_by_code: BTreeMap<String, usize>,
    /// Requests cancelled on purpose that ended `cancelled` (or finished first).
    pub cancelled: usize,
    /// Requests whose client hung up on purpose before the answer.
    pub abandoned: usize,
    /// Requests that ended in nothing they should: no final frame, or a closed connection,
    /// after every retry.
    pub lost: usize,
    /// Completed requests that were sent more than once (their connection died, or their
    /// server was shutting down).
    pub retried: usize,
    pub wall_s: f64,
    /// Completed requests per second.
    pub throughput_rps: f64,
    pub latency_p50_s: f64,
    pub latency_p95_s: f64,
    pub latency_p99_s: f64,
    pub latency_max_s: f64,
    /// Latency of the retried requests alone, from their first sending (what a dead or
    /// restarting replica cost them).
    pub retried_latency_p50_s: f64,
    pub retried_latency_max_s: f64,
    /// Completed requests by kind (a soak).
    pub completed_by_kind: BTreeMap<&'static str, usize>,
    /// The server's resident memory in MiB over the run: (seconds since the start, MiB).
    pub server_memory_mib: Vec<(f64, f64)>,
}

/// What a soak's client asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Recognize,
    Classify,
    Draw,
    Texts,
    /// A recognition cancelled right after it is sent.
    Cancel,
    /// A recognition whose client hangs up before the answer, then connects again.
    HangUp,
}

impl Kind {
    const MIX: [Kind; 6] = [Kind::Recognize, Kind::Classify, Kind::Draw, Kind::Texts, Kind::Cancel, Kind::HangUp];

    fn name(self) -> &'static str {
        match self {
            Kind::Recognize => "recognize",
            Kind::Classify => "classify",
            Kind::Draw => "draw",
            Kind::Texts => "texts",
            Kind::Cancel => "cancel",
            Kind::HangUp => "hang_up",
        }
    }
}

enum Outcome {
    /// Answered, after this long since the first sending; whether it was sent again.
    Completed(Kind, Duration, bool),
    Busy,
    Failed(String),
    Cancelled,
    Abandoned,
    Lost,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The URL with this client's protocol named, so the hello lists the model's dishes.
fn ws_url(url: &str) -> String {
    if url.contains('?') {
        url.to_string()
    } else {
        format!("{url}?protocol={PROTOCOL_VERSION}")
    }
}

/// Connects and reads the hello: the dishes the model knows.
async fn connect(url: &str) -> Result<(Socket, Vec<String>)> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(url).await.with_context(|| format!("cannot connect to {url}"))?;
    let dishes = loop {
        match next_message(&mut ws).await? {
            ServerMessage::Hello { dishes, .. } => break dishes.into_iter().map(|d| d.name).collect(),
            ServerMessage::Error { message, .. } => bail!("the server refused the connection: {message}"),
            _ => continue,
        }
    };
    Ok((ws, dishes))
}

async fn next_message(ws: &mut Socket) -> Result<ServerMessage> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(600), ws.next())
            .await
            .context("no answer within 10 minutes")?
            .context("the server closed the connection")??;
        if let Message::Text(text) = frame {
            return decode_server_message(text.as_str()).map_err(anyhow::Error::msg);
        }
    }
}

/// The connection died before the request's final frame, or the server would not take
/// it because it is shutting down: worth sending again on a new connection.
struct Dropped;

/// Sends one request and waits for its final frame.
async fn ask(ws: &mut Socket, request: &ClientMessage, kind: Kind, cancel: bool) -> Result<Outcome, Dropped> {
    let Some(id) = request.request_id() else { return Ok(Outcome::Failed("no request id".into())) };
    ws.send(Message::Text(encode(request).into())).await.map_err(|_| Dropped)?;
    if cancel {
        ws.send(Message::Text(encode(&ClientMessage::Cancel { id }).into())).await.map_err(|_| Dropped)?;
    }
    loop {
        let message = next_message(ws).await.map_err(|_| Dropped)?;
        if message.request_id() != Some(id) || !message.is_final() {
            continue;
        }
        return Ok(match message {
            ServerMessage::Cancelled { .. } if cancel => Outcome::Cancelled,
            // A cancel may arrive after the work is done: the answer still comes.
            _ if cancel && !matches!(message, ServerMessage::Error { .. }) => Outcome::Cancelled,
            ServerMessage::Result { .. }
            | ServerMessage::Classification { .. }
            | ServerMessage::Images { .. }
            | ServerMessage::Texts { .. } => Outcome::Completed(kind, Duration::ZERO, false),
            ServerMessage::Error { code: ErrorCode::Busy, .. } => Outcome::Busy,
            ServerMessage::Error { code: ErrorCode::Unavailable, .. } => return Err(Dropped),
            ServerMessage::Error { code, .. } => Outcome::Failed(format!("{code:?}")),
            _ => Outcome::Lost,
        });
    }
}

/// A client's connection, made again when it dies.
struct Link {
    url: String,
    socket: Option<Socket>,
    retries: u32,
}

impl Link {
    /// Connects now: the first connection must work (a wrong URL is an error, not lost requests).
    async fn open(url: &str, retries: u32) -> Result<(Link, Vec<String>)> {
        let (socket, dishes) = connect(url).await?;
        Ok((Link { url: url.to_string(), socket: Some(socket), retries }, dishes))
    }

    /// Sends `request` until it is answered, connecting again (after a short, growing
    /// pause) when its connection drops, up to `retries` times.
    async fn ask(&mut self, request: &ClientMessage, kind: Kind, cancel: bool) -> Outcome {
        let started = Instant::now();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            let socket = match self.socket.as_mut() {
                Some(socket) => socket,
                None => match connect(&self.url).await {
                    Ok((socket, _)) => self.socket.insert(socket),
                    Err(_) => continue,
                },
            };
            match ask(socket, request, kind, cancel).await {
                Ok(Outcome::Completed(kind, _, _)) => return Outcome::Completed(kind, started.elapsed(), attempt > 0),
                Ok(outcome) => return outcome,
                Err(Dropped) => self.socket = None,
            }
        }
        Outcome::Lost
    }

    /// Hangs up, as a user closing the page does.
    async fn hang_up(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            let _ = socket.close(None).await;
        }
    }
}

async fn counted_client(url: String, image: String, requests: usize, n: u32, retries: u32) -> Result<Vec<Outcome>> {
    let (mut link, _) = Link::open(&url, retries).await?;
    let mut outcomes = Vec::with_capacity(requests);
    for id in 1..=requests as u64 {
        let request =
            ClientMessage::Recognize { id, image: image.clone(), template: None, n: Some(n), portion_g: None };
        outcomes.push(link.ask(&request, Kind::Recognize, false).await);
    }
    link.hang_up().await;
    Ok(outcomes)
}

async fn soak_client(
    url: String,
    image: String,
    n: u32,
    until: Instant,
    seed: u64,
    retries: u32,
) -> Result<Vec<Outcome>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut link, dishes) = Link::open(&url, retries).await?;
    let dishes = if dishes.len() >= 3 { dishes } else { vec!["борщ".into(), "рис".into(), "суп".into()] };
    let mut outcomes = Vec::new();
    let mut id = 0u64;
    while Instant::now() < until {
        id += 1;
        let kind = Kind::MIX[rng.random_range(0..Kind::MIX.len())];
        let dish = dishes[rng.random_range(0..dishes.len())].clone();
        let recognize =
            ClientMessage::Recognize { id, image: image.clone(), template: None, n: Some(n), portion_g: None };
        let outcome = match kind {
            Kind::Recognize => link.ask(&recognize, kind, false).await,
            Kind::Cancel => link.ask(&recognize, kind, true).await,
            Kind::Classify => {
                let mut classes: Vec<String> =
                    (0..3).map(|_| dishes[rng.random_range(0..dishes.len())].clone()).collect();
                classes.sort();
                classes.dedup();
                if classes.len() < 2 {
                    classes = dishes[..2].to_vec();
                }
                let request = ClientMessage::Classify {
                    id,
                    image: image.clone(),
                    classes,
                    template: None,
                    method: Some(ClassifyMethod::CaptionFit),
                };
                link.ask(&request, kind, false).await
            }
            Kind::Draw => {
                let request = ClientMessage::GenerateImage { id, text: dish, n: Some(1), seed: None };
                link.ask(&request, kind, false).await
            }
            Kind::Texts => {
                let request = ClientMessage::GenerateText { id, prompt: "блюдо:".into(), n: Some(2) };
                link.ask(&request, kind, false).await
            }
            Kind::HangUp => {
                if let Some(socket) = link.socket.as_mut() {
                    let _ = socket.send(Message::Text(encode(&recognize).into())).await;
                }
                link.hang_up().await;
                Outcome::Abandoned
            }
        };
        outcomes.push(outcome);
    }
    link.hang_up().await;
    Ok(outcomes)
}

/// The server's host and port, from its WebSocket URL (plain `ws://` only).
fn server_host(ws_url: &str) -> Option<String> {
    Some(ws_url.strip_prefix("ws://")?.split('/').next()?.to_string())
}

/// The server's resident memory in MiB, from its `/metrics`.
async fn server_memory_mib(host: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let line = response.lines().find(|l| l.starts_with("borscht_process_resident_bytes "))?;
    let bytes: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(bytes / (1024.0 * 1024.0))
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
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if args.duration.is_some_and(|d| !positive(d)) || !positive(args.sample_every) {
        bail!("--duration and --sample-every must be positive");
    }
    let bytes = std::fs::read(&args.image).with_context(|| format!("cannot read {}", args.image.display()))?;
    let image = base64::engine::general_purpose::STANDARD.encode(bytes);
    let url = ws_url(&args.url);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|k| match args.duration {
            Some(seconds) => tokio::spawn(soak_client(
                url.clone(),
                image.clone(),
                args.n,
                started + Duration::from_secs_f64(seconds),
                args.seed.wrapping_mul(1000).wrapping_add(k as u64),
                args.retries,
            )),
            None => tokio::spawn(counted_client(url.clone(), image.clone(), args.requests, args.n, args.retries)),
        })
        .collect();
    // The server's memory, sampled while the clients run (a soak only).
    let mut memory = Vec::new();
    if let (Some(_), Some(host)) = (args.duration, server_host(&url)) {
        let every = Duration::from_secs_f64(args.sample_every);
        loop {
            if let Some(mib) = server_memory_mib(&host).await {
                memory.push((started.elapsed().as_secs_f64(), mib));
            }
            if tasks.iter().all(|t| t.is_finished()) {
                break;
            }
            tokio::time::sleep(every).await;
        }
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await??);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = Vec::new();
    let mut retried: Vec<f64> = Vec::new();
    let mut completed_by_kind = BTreeMap::new();
    for outcome in &outcomes {
        if let Outcome::Completed(kind, d, again) = outcome {
            latencies.push(d.as_secs_f64());
            if *again {
                retried.push(d.as_secs_f64());
            }
            *completed_by_kind.entry(kind.name()).or_insert(0) += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    retried.sort_by(f64::total_cmp);
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    Ok(LoadReport {
        clients: args.clients,
        requests: outcomes.len(),
        completed: latencies.len(),
        busy: count(|o| matches!(o, Outcome::Busy)),
        errors: count(|o| matches!(o, Outcome::Failed(_))),
        errors_by_code: outcomes.iter().fold(BTreeMap::new(), |mut codes, o| {
            if let Outcome::Failed(code) = o {
                *codes.entry(code.clone()).or_insert(0) += 1;
            }
            codes
        }),
        cancelled: count(|o| matches!(o, Outcome::Cancelled)),
        abandoned: count(|o| matches!(o, Outcome::Abandoned)),
        lost: count(|o| matches!(o, Outcome::Lost)),
        retried: retried.len(),
        wall_s,
        throughput_rps: latencies.len() as f64 / wall_s,
        latency_p50_s: percentile(&latencies, 0.5),
        latency_p95_s: percentile(&latencies, 0.95),
        latency_p99_s: percentile(&latencies, 0.99),
        latency_max_s: latencies.last().copied().unwrap_or(0.0),
        retried_latency_p50_s: percentile(&retried, 0.5),
        retried_latency_max_s: retried.last().copied().unwrap_or(0.0),
        completed_by_kind,
        server_memory_mib: memory,
    })
}

pub fn main(args: LoadTestArgs) -> Result<()> {
    let report = tokio::runtime::Runtime::new()?.block_on(run(&args))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
