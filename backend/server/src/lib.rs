//! The HTTP and WebSocket service, shaped like an inference router:
//!
//! - [`ws`]: the `/ws` protocol endpoint (frames defined in `borscht-protocol`);
//! - [`api`]: the HTTP API (`/api/v1/recognize`, `/classify`, `/generate`, `/dishes`),
//!   described by [`openapi`] at `/api/v1/openapi.json`;
//! - [`job`]: requests validated into jobs; [`limits`]: what a client may ask;
//! - [`queue`]: the bounded, fair queue ("busy" when full; one lane per client, see
//!   [`client`]); [`worker`]: the thread that owns the model and batches recognise
//!   requests; [`metrics`]: Prometheus counters;
//! - [`wire`]: the pipelines' results as the protocol's messages;
//! - [`origin`]: which pages may open `/ws`; [`headers`]: CSP, permissions and caching;
//! - teaching: [`dataset`] (the examples users send), [`finetune`] (fine-tunes trained
//!   by the workers between batches), [`versions`] (model versions, promotion and
//!   rollback), [`teach_api`] (their routes, the admin's behind `--admin-token`);
//! - static files: the Trunk-built web app, with `index.html` as the SPA fallback;
//!   `/healthz` (the process is up), `/readyz` (the model is loaded), `/metrics`.

pub mod api;
pub mod caps;
pub mod client;
pub mod dataset;
pub mod finetune;
pub mod headers;
pub mod job;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod origin;
pub mod queue;
pub mod shutdown;
pub mod teach_api;
pub mod versions;
pub mod wire;
pub mod worker;
pub mod ws;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
pub use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use self::client::{ClientKey, ClientSlot, ClientSlots};
use self::finetune::Teaching;
use self::headers::SecurityHeaders;
use self::job::Job;
use self::limits::Limits;
use self::metrics::Metrics;
use self::origin::OriginPolicy;
use self::queue::{Queue, SubmitError};
use self::worker::{spawn_workers, DeviceLoader, EngineLoader, ModelStatus, WorkerHandle};

/// Everything `borscht serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub web_dir: PathBuf,
    pub limits: Limits,
    /// Origins allowed to call the HTTP API from a browser (`*` for any).
    pub cors_origins: Vec<String>,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Sites allowed to frame the `/embed` widget (CSP `frame-ancestors` sources; `*` for any).
    pub embed_ancestors: Vec<String>,
    /// Origins besides the server's own whose pages may open `/ws` (`*` for any).
    pub ws_origins: Vec<String>,
    /// A header holding the client's address, set by the operator's reverse proxy
    /// (e.g. `X-Forwarded-For`); without it a client is the connection's peer.
    pub client_ip_header: Option<String>,
    /// The side the model reads pictures at, when known before it loads (from its
    /// configs): pictures sent while it loads are then shrunk to it at once, as later.
    pub input_side: Option<u32>,
    /// The token the admin routes ask for (`Authorization: Bearer …`); None turns them off.
    pub admin_token: Option<String>,
}

impl ServerConfig {
    pub fn new(addr: SocketAddr, web_dir: PathBuf) -> Self {
        ServerConfig {
            addr,
            web_dir,
            limits: Limits::default(),
            cors_origins: vec!["*".into()],
            drain_timeout: Duration::from_secs(60),
            embed_ancestors: vec!["*".into()],
            ws_origins: Vec::new(),
            client_ip_header: None,
            input_side: None,
            admin_token: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    pub worker: WorkerHandle,
    pub metrics: Metrics,
    pub limits: Arc<Limits>,
    pub shutdown: shutdown::Shutdown,
    /// Pictures being decoded at once ([`Limits::max_decodes`]).
    pub decodes: Arc<tokio::sync::Semaphore>,
    /// Requests each client has in flight ([`Limits::max_requests_per_ip`]).
    pub clients: ClientSlots,
    pub client_ip_header: Option<Arc<str>>,
    pub origins: Arc<OriginPolicy>,
    /// Connections open and API calls made ([`caps`]).
    pub caps: caps::Caps,
    /// Examples, fine-tunes and model versions ([`finetune`]).
    pub teaching: Arc<Teaching>,
    pub admin_token: Option<Arc<str>>,
}

impl AppState {
    /// Why no request can be served now, if so.
    pub fn unavailable(&self) -> Option<String> {
        if self.shutdown.is_draining() {
            return Some("the server is shutting down".into());
        }
        match self.worker.status() {
            // Requests made while the model loads wait in the queue.
            ModelStatus::Ready { .. } | ModelStatus::Loading => None,
            ModelStatus::Failed(e) => Some(format!("no model is loaded: {e}")),
        }
    }

    /// Who sent a request.
    pub fn client(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<&axum::extract::ConnectInfo<SocketAddr>>,
    ) -> ClientKey {
        ClientKey::of(headers, peer, self.client_ip_header.as_deref())
    }

    /// A place for one more request of `client`, or the refusal to send when it has
    /// [`Limits::max_requests_per_ip`] in flight.
    pub fn admit(&self, client: &ClientKey) -> Result<ClientSlot, String> {
        self.clients.take(client).ok_or_else(|| {
            format!(
                "{} requests from your address are already queued or running; wait for one to finish",
                self.clients.max()
            )
        })
    }

    /// Decodes a picture off the async threads, at most [`Limits::max_decodes`] at once:
    /// `decode` gets the side the model reads pictures at.
    pub async fn decode<T: Send + 'static>(
        &self,
        decode: impl FnOnce(u32) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let _permit = self.decodes.acquire().await.expect("the decode semaphore is never closed");
        let side = self.worker.input_side();
        tokio::task::spawn_blocking(move || decode(side)).await
    }

    /// Queues a job, counting it as in flight until the worker ends it.
    pub fn submit(&self, job: Job) -> Result<usize, SubmitError> {
        self.worker.job_started();
        self.queue.submit(job).inspect_err(|_| self.worker.job_refused())
    }

    /// Waits until no job is queued or running and every WebSocket has been closed (each
    /// closes itself once its own requests are answered, see [`shutdown`]), or `timeout`
    /// passes.
    pub async fn drained(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let busy = || self.worker.in_flight() > 0 || self.metrics.connections.get() > 0;
        while busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The running service: its router, shared state and the model worker threads.
pub struct Server {
    pub router: Router,
    pub state: AppState,
    pub worker_threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts one worker on one device (which loads the model in the background) and
    /// builds the router.
    pub fn start(config: &ServerConfig, load: EngineLoader) -> Server {
        Server::start_on(config, vec![DeviceLoader { device: "default".into(), load, load_version: None }])
    }

    /// Starts one worker per device, all serving the one queue, and builds the router.
    pub fn start_on(config: &ServerConfig, loaders: Vec<DeviceLoader>) -> Server {
        Server::start_teaching(config, loaders, Default::default())
    }

    /// As [`Server::start_on`], keeping examples, fine-tunes and versions as `teaching` says.
    pub fn start_teaching(config: &ServerConfig, loaders: Vec<DeviceLoader>, teaching: Arc<Teaching>) -> Server {
        let metrics = Metrics::new();
        let limits = &config.limits;
        let (queue, receiver) = Queue::new(limits.queue_capacity, limits.queue_max_bytes, metrics.clone());
        let (worker, worker_threads) =
            spawn_workers(loaders, receiver, metrics.clone(), limits.max_batch, config.input_side, teaching.clone());
        let state = AppState {
            queue,
            worker,
            metrics,
            limits: Arc::new(limits.clone()),
            shutdown: shutdown::Shutdown::default(),
            decodes: Arc::new(tokio::sync::Semaphore::new(limits.max_decodes.max(1))),
            clients: ClientSlots::new(limits.max_requests_per_ip),
            client_ip_header: config.client_ip_header.as_deref().map(Arc::from),
            origins: Arc::new(OriginPolicy::new(&config.ws_origins, &config.embed_ancestors)),
            caps: caps::Caps::new(limits),
            teaching,
            admin_token: config.admin_token.as_deref().map(Arc::from),
        };
        Server { router: router(config, state.clone()), state, worker_threads }
    }
}

/// The whole application as a router, without binding a socket (tests use it directly).
pub fn router(config: &ServerConfig, state: AppState) -> Router {
    let index = config.web_dir.join("index.html");
    let body_limit = config.limits.max_upload_bytes + 64 * 1024;
    let api = Router::new()
        .route("/api/v1/recognize", post(api::recognize))
        .route("/api/v1/classify", post(api::classify))
        .route("/api/v1/generate", post(api::generate))
        .route("/api/v1/dishes", get(api::dishes))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route(
            "/api/v1/examples",
            post(teach_api::add_example)
                .layer(DefaultBodyLimit::max(config.limits.max_upload_bytes / 3 * 4 + 64 * 1024)),
        )
        .merge(admin_routes(&state))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), api::rate_limit))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(config.limits.body_timeout()))
        .layer(cors(&config.cors_origins));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/csp-report", post(csp_report).layer(DefaultBodyLimit::max(16 * 1024)))
        .route("/ws", get(ws::upgrade))
        .merge(api)
        .with_state(state);
    let app = if index.is_file() {
        // Unknown paths fall back to index.html so client-side routes survive a reload.
        app.fallback_service(ServeDir::new(&config.web_dir).fallback(ServeFile::new(index)))
    } else {
        tracing::warn!(web_dir = %config.web_dir.display(), "web app not built: {} is missing", index.display());
        let message = format!(
            "The Borscht web app is not built: {} is missing. Build it with `trunk build --release` in frontend/ \
             (scripts/setup.sh does this).\n",
            index.display()
        );
        app.fallback(move || async move { (StatusCode::SERVICE_UNAVAILABLE, message) })
    };
    let header = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    let security = Arc::new(SecurityHeaders::new(&config.web_dir, &config.embed_ancestors));
    app.layer(axum::middleware::from_fn_with_state(security, headers::apply))
        .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header(header::REFERRER_POLICY, "no-referrer"))
        // gzip or brotli for the wasm, JS and CSS (and JSON answers) when the browser asks.
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
}

/// The admin's routes, each behind the admin token ([`teach_api::require_admin`]).
fn admin_routes(state: &AppState) -> Router<AppState> {
    use axum::routing::delete;
    Router::new()
        .route("/api/v1/examples", get(teach_api::list_examples))
        .route("/api/v1/examples/export", get(teach_api::export_examples))
        .route("/api/v1/examples/{id}", delete(teach_api::delete_example))
        .route("/api/v1/examples/{id}/photo", get(teach_api::example_photo))
        .route("/api/v1/finetune", post(teach_api::start_finetune).get(teach_api::list_finetunes))
        .route("/api/v1/finetune/cancel", post(teach_api::cancel_finetune))
        .route("/api/v1/finetune/resume", post(teach_api::resume_finetune))
        .route("/api/v1/finetune/events", get(teach_api::finetune_events))
        .route("/api/v1/models", get(teach_api::list_models))
        .route("/api/v1/models/rollback", post(teach_api::rollback_model))
        .route("/api/v1/models/{name}/promote", post(teach_api::promote_model))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), teach_api::require_admin))
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-borscht-seed")])
        .max_age(Duration::from_secs(3600))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_version": borscht_protocol::PROTOCOL_VERSION,
    }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (status, body) = match state.worker.status() {
        _ if state.shutdown.is_draining() => {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "shutting_down" }))
        }
        ModelStatus::Ready { name, .. } => (
            StatusCode::OK,
            serde_json::json!({
                "status": "ready",
                "model": name,
                "version": state.teaching.versions.as_ref().map(|v| v.active()),
                "devices": device_statuses(&state),
            }),
        ),
        ModelStatus::Loading => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "loading" })),
        ModelStatus::Failed(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "failed", "message": e }))
        }
    };
    (status, Json(body))
}

/// Each model worker's device and status, for `/readyz` (a device that failed while
/// others serve is named here and in the log).
fn device_statuses(state: &AppState) -> Vec<serde_json::Value> {
    state
        .worker
        .device_statuses()
        .into_iter()
        .map(|(device, status)| match status {
            ModelStatus::Ready { .. } => serde_json::json!({ "device": device, "status": "ready" }),
            ModelStatus::Loading => serde_json::json!({ "device": device, "status": "loading" }),
            ModelStatus::Failed(message) => {
                serde_json::json!({ "device": device, "status": "failed", "message": message })
            }
        })
        .collect()
}

/// A browser's report of what the Content-Security-Policy blocked: counted, and logged
/// at debug level (any page can post here).
async fn csp_report(State(state): State<AppState>, body: axum::body::Bytes) -> StatusCode {
    state.metrics.csp_violations.inc();
    tracing::debug!("CSP violation: {}", borscht_protocol::clip(&String::from_utf8_lossy(&body), 300));
    StatusCode::NO_CONTENT
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.metrics.queue_depth.set(state.queue.depth() as i64);
    state.metrics.queue_bytes.set(state.queue.bytes() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// Binds `config.addr` and serves until Ctrl-C / SIGTERM. Shutdown refuses new requests,
/// lets those in flight finish (up to `drain_timeout`), then closes.
pub async fn serve(config: ServerConfig, loaders: Vec<DeviceLoader>, teaching: Arc<Teaching>) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(config.addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    tracing::info!("Borscht listening on http://{}", listener.local_addr()?);
    teaching.resume_interrupted()?;
    let server = Server::start_teaching(&config, loaders, teaching.clone());
    let state = server.state.clone();
    let drain = config.drain_timeout;
    let shutdown = async move {
        shutdown_signal().await;
        state.shutdown.begin();
        state.drained(drain).await;
    };
    serve_on(listener, server.router, shutdown, config.limits.header_timeout()).await?;
    // A fine-tune in training writes its checkpoint where it stands: the next start
    // continues there.
    teaching.pause(Duration::from_secs(60)).await;
    tracing::info!("server stopped");
    Ok(())
}

/// How long open HTTP connections may take to end once the drain is over.
const HTTP_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on an already bound listener until `shutdown` completes, then waits for
/// open requests to end. Each connection's peer address reaches the handlers as
/// `ConnectInfo`; a client gets `header_timeout` to send a request's headers (a socket
/// that dribbles them is closed).
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = socket.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(socket), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    // HTTP requests whose work outlived the drain get a last moment to answer, not for ever.
    if tokio::time::timeout(HTTP_CLOSE_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("closing HTTP connections still open {HTTP_CLOSE_GRACE:?} after the drain");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutdown requested; finishing open requests");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app(web_dir: PathBuf) -> Router {
        let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), web_dir);
        Server::start(&config, Box::new(|| anyhow::bail!("no model in this test"))).router
    }

    async fn get_text(app: Router, uri: &str) -> (StatusCode, String) {
        let response = app.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_reports_ok_and_protocol_version() {
        let dir = tempfile::tempdir().unwrap();
        let (status, body) = get_text(app(dir.path().into()), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["protocol_version"], borscht_protocol::PROTOCOL_VERSION);
    }

    #[tokio::test]
    async fn serves_the_web_app_with_spa_fallback() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<html>borscht app</html>").unwrap();
        std::fs::write(dir.path().join("app.js"), "console.log(1)").unwrap();
        let app = app(dir.path().into());
        assert_eq!(get_text(app.clone(), "/").await, (StatusCode::OK, "<html>borscht app</html>".into()));
        assert_eq!(get_text(app.clone(), "/app.js").await, (StatusCode::OK, "console.log(1)".into()));
        assert_eq!(get_text(app, "/history").await, (StatusCode::OK, "<html>borscht app</html>".into()));
    }

    #[tokio::test]
    async fn only_the_widget_may_be_framed_by_the_configured_sites() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<html>borscht app</html>").unwrap();
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
        config.embed_ancestors = vec!["https://recipes.example".into()];
        let app = Server::start(&config, Box::new(|| anyhow::bail!("no model"))).router;
        let policy = |response: &axum::response::Response| {
            response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_string()
        };
        let page = app.clone().oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
        assert!(policy(&page).ends_with("; frame-ancestors 'self'"), "{}", policy(&page));
        let embed = app.clone().oneshot(Request::get("/embed").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(embed.status(), StatusCode::OK);
        assert!(policy(&embed).ends_with("; frame-ancestors https://recipes.example"), "{}", policy(&embed));
        // Only /embed itself: a longer path that starts the same is framed by nobody else.
        for path in ["/embedXYZ", "/embed-example.html", "/embed/"] {
            let other = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
            assert!(policy(&other).ends_with("; frame-ancestors 'self'"), "{path}: {}", policy(&other));
        }
    }

    #[tokio::test]
    async fn missing_web_app_is_a_clear_503() {
        let dir = tempfile::tempdir().unwrap();
        let (status, body) = get_text(app(dir.path().join("dist")), "/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("index.html is missing"), "{body}");
    }

    #[tokio::test]
    async fn a_model_that_fails_to_load_is_reported_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path().into());
        // The loader runs on its own thread: however long it takes to fail, wait for it.
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let answer = get_text(app.clone(), "/readyz").await;
                if answer.1.contains("failed") {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the failed load is reported");
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.1.contains("no model in this test"), "{}", answer.1);
    }
}
