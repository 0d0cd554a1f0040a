//! Helpers for the end-to-end tests: the real server on loopback and a real
//! headless Chromium driven over WebDriver (chromedriver + fantoccini).
//!
//! Chromium is always closed, even when a test panics: [`with_browser`] catches
//! the panic, ends the WebDriver session, then re-raises; dropping
//! [`ChromeDriver`] kills the driver process (and with it any browser left).

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder};
use futures::FutureExt;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where test artifacts (screenshots) go; ignored by git.
pub fn artifacts_dir() -> PathBuf {
    let dir = repo_root().join("tests/artifacts");
    std::fs::create_dir_all(&dir).expect("create tests/artifacts");
    dir
}

/// The Trunk-built web app; a clear failure (not a skip) when it is missing.
pub fn web_dir() -> PathBuf {
    let dir =
        std::env::var_os("BORSCHT_WEB_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("frontend/dist"));
    assert!(
        dir.join("index.html").is_file(),
        "the web app is not built ({} has no index.html): run scripts/test.sh, which builds it with trunk",
        dir.display()
    );
    dir
}

/// The bundled demo model the app serves by default.
pub fn demo_model_dir() -> PathBuf {
    repo_root().join("models/demo")
}

/// Starts `borscht serve` (web app + demo model) on a free loopback port inside this
/// test's runtime, and waits until the model is loaded.
pub async fn start_server() -> SocketAddr {
    start_server_with(|_| {}).await
}

/// [`start_server`] with a config `adjust` changes first.
pub async fn start_server_with(adjust: impl FnOnce(&mut borscht_server::ServerConfig)) -> SocketAddr {
    let (addr, state) = serve_demo_model(adjust, None, Default::default());
    ready(addr, state).await
}

/// Waits until the server's model is loaded.
async fn ready(addr: SocketAddr, state: borscht_server::AppState) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match state.worker.status() {
            borscht_server::worker::ModelStatus::Ready { .. } => break,
            borscht_server::worker::ModelStatus::Failed(e) => panic!("the demo model does not load: {e}"),
            borscht_server::worker::ModelStatus::Loading => {}
        }
        assert!(Instant::now() < deadline, "the demo model did not load within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    addr
}

/// A server whose demo model loads only once the test sends on (or drops) the gate it
/// returns: requests made before wait in its queue, as on a server still loading.
pub fn start_held_server(
    adjust: impl FnOnce(&mut borscht_server::ServerConfig),
) -> (SocketAddr, std::sync::mpsc::Sender<()>) {
    let (gate, wait) = std::sync::mpsc::channel();
    let (addr, _) = serve_demo_model(adjust, Some(wait), Default::default());
    (addr, gate)
}

/// Serves the web app and the demo model, which loads once `gate` (if any) opens,
/// keeping examples and versions as `teaching` says.
fn serve_demo_model(
    adjust: impl FnOnce(&mut borscht_server::ServerConfig),
    gate: Option<std::sync::mpsc::Receiver<()>>,
    teaching: std::sync::Arc<borscht_server::finetune::Teaching>,
) -> (SocketAddr, borscht_server::AppState) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = borscht_server::ServerConfig::new(addr, web_dir());
    adjust(&mut config);
    let model = demo_model_dir();
    let load_engine = |dir: &std::path::Path| {
        borscht_pipelines::Engine::load(dir, &candle_core::Device::Cpu, candle_core::DType::F32)
    };
    let loader = borscht_server::worker::DeviceLoader {
        device: "default".into(),
        load: Box::new(move || {
            // A gate dropped unopened (its test is over): no model, no work left behind.
            if let Some(gate) = gate {
                gate.recv().map_err(|_| anyhow::anyhow!("the test ended before the model was let load"))?;
            }
            Ok((load_engine(&model)?, "demo".into()))
        }),
        load_version: Some(Box::new(load_engine)),
    };
    let server = borscht_server::Server::start_teaching(&config, vec![loader], teaching);
    let header_timeout = config.limits.header_timeout();
    tokio::spawn(borscht_server::serve_on(listener, server.router, std::future::pending(), header_timeout));
    (addr, server.state)
}

/// The admin token of [`start_teaching_server`].
pub const ADMIN_TOKEN: &str = "browser-admin-token";

/// Serves the web app and the demo model, keeping examples and model versions in `dir`
/// (`dir/dataset`, `dir/models`) with [`ADMIN_TOKEN`], fine-tuning as `borscht serve` does;
/// waits until the model is loaded.
pub async fn start_teaching_server(dir: &std::path::Path) -> SocketAddr {
    use std::sync::Arc;
    let dataset = borscht_server::dataset::Dataset::open(&dir.join("dataset"), 100, 1 << 30).unwrap();
    let versions = borscht_server::versions::Versions::open(&dir.join("models"), &demo_model_dir()).unwrap();
    let teaching = borscht_server::finetune::Teaching::new(
        Some(Arc::new(dataset)),
        Some(Arc::new(versions)),
        Some(borscht::teaching::starter()),
        None,
    );
    let admin = |config: &mut borscht_server::ServerConfig| config.admin_token = Some(ADMIN_TOKEN.into());
    let (addr, state) = serve_demo_model(admin, None, Arc::new(teaching));
    ready(addr, state).await
}

/// A stand-in for a load balancer in front of replicas: it forwards every connection to
/// its current replica until [`Failover::kill_current`], which cuts each of them at once
/// (to its clients the replica has died) and sends new connections to the next one.
pub struct Failover {
    pub addr: SocketAddr,
    route: std::sync::Arc<std::sync::Mutex<Route>>,
}

struct Route {
    target: SocketAddr,
    links: Vec<tokio::task::AbortHandle>,
}

impl Failover {
    pub async fn start(target: SocketAddr) -> Failover {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let route = std::sync::Arc::new(std::sync::Mutex::new(Route { target, links: Vec::new() }));
        let routes = route.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut route = routes.lock().unwrap();
                let target = route.target;
                let link = tokio::spawn(async move {
                    if let Ok(mut replica) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut replica).await;
                    }
                });
                route.links.push(link.abort_handle());
            }
        });
        Failover { addr, route }
    }

    /// The current replica dies as its clients see it; `next` takes over.
    pub fn kill_current(&self, next: SocketAddr) {
        let mut route = self.route.lock().unwrap();
        route.target = next;
        for link in route.links.drain(..) {
            link.abort();
        }
    }
}

/// Fails when browsers reported anything the server's Content-Security-Policy blocked
/// (the server counts the reports in `/metrics`).
pub fn assert_no_csp_violations(addr: SocketAddr) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("server up");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let line = text.lines().find(|l| l.starts_with("borscht_csp_violations_total")).expect("the CSP counter");
    assert_eq!(line, "borscht_csp_violations_total 0", "the page broke its Content-Security-Policy");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// A running chromedriver; killed on drop.
pub struct ChromeDriver {
    child: Child,
    pub url: String,
}

impl ChromeDriver {
    pub fn start() -> Result<Self> {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {binary} (install chromium-driver: scripts/setup.sh)"))?;
        let driver = ChromeDriver { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not listen on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(driver)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test's Chromium is launched.
#[derive(Debug, Clone, Default)]
pub struct BrowserOptions {
    /// A `.y4m` file the fake camera plays; `None` gives Chromium's own test pattern.
    pub fake_camera: Option<PathBuf>,
    /// Answer camera permission prompts with "deny" instead of "allow".
    pub deny_camera: bool,
    /// Window size (width, height); phones are the main users.
    pub window: Option<(u32, u32)>,
}

fn chromium_binary() -> String {
    std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/lib/chromium/chromium".into())
}

/// Runs `test` against a fresh headless Chromium and always closes the browser.
pub async fn with_browser<F, Fut>(options: BrowserOptions, test: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let driver = ChromeDriver::start().expect("chromedriver starts");
    let profile = tempfile::tempdir().expect("temp profile dir");
    let (width, height) = options.window.unwrap_or((412, 915));
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        format!("--window-size={width},{height}"),
        format!("--user-data-dir={}", profile.path().display()),
        "--use-fake-device-for-media-stream".into(),
    ];
    if options.deny_camera {
        args.push("--deny-permission-prompts".into());
    } else {
        args.push("--use-fake-ui-for-media-stream".into());
    }
    if let Some(video) = &options.fake_camera {
        args.push(format!("--use-file-for-fake-video-capture={}", video.display()));
    }
    let capabilities = serde_json::json!({
        "goog:chromeOptions": { "binary": chromium_binary(), "args": args }
    });
    let serde_json::Value::Object(capabilities) = capabilities else { unreachable!() };
    let client = ClientBuilder::native()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium");

    let outcome = AssertUnwindSafe(test(client.clone())).catch_unwind().await;
    let closed = client.close().await;
    drop(driver);
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(error)) => panic!("browser test failed: {error:?}"),
        Ok(Ok(())) => closed.expect("close the WebDriver session"),
    }
}

/// Polls `script` (a JS expression's body returning a value) until `accept` holds.
pub async fn wait_for<T>(
    client: &Client,
    what: &str,
    timeout: Duration,
    script: &str,
    accept: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    loop {
        last = client.execute(script, vec![]).await.unwrap_or(last);
        if let Some(value) = accept(&last) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last value: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `data-state` of the element matching `selector` until it equals `state`.
pub async fn wait_for_state(client: &Client, selector: &str, state: &str, timeout: Duration) -> Result<()> {
    let script = format!(
        "const e = document.querySelector({selector:?}); return e ? [e.dataset.state || '', e.textContent] : null;"
    );
    wait_for(client, &format!("{selector} to be {state:?}"), timeout, &script, |v| {
        (v.get(0).and_then(|s| s.as_str()) == Some(state)).then_some(())
    })
    .await
}

/// Saves a screenshot under `tests/artifacts/NAME.png`.
pub async fn screenshot(client: &Client, name: &str) -> Result<PathBuf> {
    let png = client.screenshot().await?;
    let path = artifacts_dir().join(format!("{name}.png"));
    std::fs::write(&path, png)?;
    Ok(path)
}

/// Makes a y4m clip of a still picture for Chromium's fake camera (needs ffmpeg).
pub fn still_to_y4m(picture: &Path, out: &Path) -> Result<()> {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-loop", "1", "-i"])
        .arg(picture)
        .args(["-t", "1", "-r", "10", "-pix_fmt", "yuv420p"])
        .arg(out)
        .status()
        .context("cannot run ffmpeg (install it: scripts/setup.sh)")?;
    if !status.success() {
        bail!("ffmpeg failed to convert {} to y4m ({status})", picture.display());
    }
    Ok(())
}
