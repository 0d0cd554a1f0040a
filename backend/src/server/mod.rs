//! The HTTP and WebSocket service.
//!
//! - [`ws`]: the `/ws` protocol endpoint (frames defined in `borscht-protocol`).
//! - static files: the Trunk-built web app, with `index.html` as the SPA fallback.

pub mod ws;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
pub use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

/// Everything `borscht serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub web_dir: PathBuf,
}

/// The whole application as a router, without binding a socket (tests use it directly).
pub fn router(config: &ServerConfig) -> Router {
    let index = config.web_dir.join("index.html");
    let app = Router::new().route("/healthz", get(healthz)).route("/ws", get(ws::upgrade));
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
    app.layer(SetResponseHeaderLayer::if_not_present(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ))
    .layer(TraceLayer::new_for_http())
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_version": borscht_protocol::PROTOCOL_VERSION,
    }))
}

/// Binds `config.addr` and serves until Ctrl-C / SIGTERM, letting open requests finish.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(config.addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    tracing::info!("Borscht listening on http://{}", listener.local_addr()?);
    serve_on(listener, router(&config), shutdown_signal()).await?;
    tracing::info!("server stopped");
    Ok(())
}

/// Serves `app` on an already bound listener until `shutdown` completes.
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
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

    fn config(web_dir: PathBuf) -> ServerConfig {
        ServerConfig { addr: "127.0.0.1:0".parse().unwrap(), web_dir }
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
        let (status, body) = get_text(router(&config(dir.path().into())), "/healthz").await;
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
        let app = router(&config(dir.path().into()));
        assert_eq!(get_text(app.clone(), "/").await, (StatusCode::OK, "<html>borscht app</html>".into()));
        assert_eq!(get_text(app.clone(), "/app.js").await, (StatusCode::OK, "console.log(1)".into()));
        assert_eq!(get_text(app, "/history").await, (StatusCode::OK, "<html>borscht app</html>".into()));
    }

    #[tokio::test]
    async fn missing_web_app_is_a_clear_503() {
        let dir = tempfile::tempdir().unwrap();
        let (status, body) = get_text(router(&config(dir.path().join("dist"))), "/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("index.html is missing"), "{body}");
    }
}
