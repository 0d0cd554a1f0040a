//! `borscht serve` itself, as an operator starts it: flags and `BORSCHT_*` variables
//! reach the server, a restricted `--cors-origins` admits only its sites, and SIGTERM
//! stops it cleanly.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_command_takes_flags_and_variables_and_stops_on_sigterm() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<!doctype html><title>t</title>the web app").unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_borscht"))
            .args(["serve", "--model", "random:tiny", "--web-dir"])
            .arg(web.path())
            .args(["--cors-origins", "https://recipes.example"])
            .env("BORSCHT_ADDR", addr.to_string())
            .env("BORSCHT_MAX_CLASSES", "2")
            .env_remove("BORSCHT_MODEL")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Listening (BORSCHT_ADDR) and ready once the model has loaded.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() && reqwest_get(addr, "/readyz").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the server never became ready on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // --web-dir
    let (status, body) = reqwest_get(addr, "/").await;
    assert_eq!((status, body.contains("the web app")), (200, true), "{body}");
    // BORSCHT_MAX_CLASSES=2: three dishes are refused, naming the limit.
    let (status, body) = http(
        addr,
        "POST",
        &format!(
            "/api/v1/classify?classes={}",
            percent_encoding::utf8_percent_encode("рис,суп,чай", percent_encoding::NON_ALPHANUMERIC)
        ),
        "image/png",
        &icon_png(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("the limit is 2"), "{body}");
    // --cors-origins: the named site may call the API from a browser, another may not.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /api/v1/recognize HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        )
    };
    let allowed = raw_exchange(addr, &preflight("https://recipes.example")).await.to_lowercase();
    assert!(allowed.contains("access-control-allow-origin: https://recipes.example"), "{allowed}");
    let other = raw_exchange(addr, &preflight("https://elsewhere.example")).await.to_lowercase();
    assert!(!other.contains("access-control-allow-origin"), "{other}");

    // SIGTERM: the server stops, cleanly, and says so.
    let pid = serving.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serving.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running a minute after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(serving.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("shutdown requested"), "{stderr}");
}

/// Sends a raw HTTP request and returns the whole response.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_one_worker_per_device_and_refuses_an_unknown_one() {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_borscht"))
            .args(["serve", "--model", "random:tiny", "--device", "cpu,cpu", "--addr", &addr.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (status, body) = reqwest_get(addr, "/readyz").await;
            if status == 200 && !body.contains("loading") {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "the server never became ready on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body.matches(r#"{"device":"cpu","status":"ready"}"#).count(), 2, "{body}");

    let refused = Command::new(env!("CARGO_BIN_EXE_borscht"))
        .args(["serve", "--model", "random:tiny", "--device", "cpu,gpu", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(r#"unknown device "gpu""#), "{stderr}");
}
