//! Three `borscht serve` replicas on the demo model behind nginx, configured as an
//! operator would (`deploy/nginx/`): a load spreads over them, and a replica killed,
//! stopped or restarted under load costs its clients retries, never a request.
//!
//! Everything listens on loopback; every process a test starts is stopped when it ends.
//! The tests take turns: twelve servers at once would only measure the machine.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use borscht::cli::loadtest::{self, LoadReport, LoadTestArgs};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A GET that may find nobody listening: its status, or `None`.
async fn status_of(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.ok()?.ok()?;
    String::from_utf8_lossy(&response).split_whitespace().nth(1)?.parse().ok()
}

/// One `borscht serve` process on the demo model.
struct Replica {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Replica {
    /// A replica that drains for up to 30 s on SIGTERM.
    fn start(port: u16, logs: &Path) -> Replica {
        Replica::start_draining(port, logs, 30)
    }

    fn start_draining(port: u16, logs: &Path, drain_timeout_s: u32) -> Replica {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = logs.join(format!("replica-{port}-{nth}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_borscht"))
            .current_dir(repo())
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--web-dir"])
            .arg(logs)
            .args(["--client-ip-header", "X-Real-IP", "--drain-timeout-s", &drain_timeout_s.to_string()])
            .env_remove("BORSCHT_MODEL")
            .env("BORSCHT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Replica { port, child, log }
    }

    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while status_of(self.port, "/readyz").await != Some(200) {
            assert!(self.child.try_wait().unwrap().is_none(), "replica {} died: {}", self.port, self.log_text());
            assert!(Instant::now() < deadline, "replica {} never became ready", self.port);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: &str) {
        assert!(Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success());
    }

    /// Waits for the process to end (at most `limit`).
    async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "replica {} still runs after {limit:?}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Recognitions this replica answered, from its own `/metrics`.
    async fn answered(&self) -> f64 {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let (_, text) = reqwest_get(addr, "/metrics").await;
        text.lines()
            .filter(|l| l.starts_with("borscht_requests_total{") && l.contains("kind=\"recognize\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx in front of the replicas, with the committed configuration: only the ports
/// and the places for its files are the test's.
struct Balancer {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Balancer {
    async fn start(replicas: &[u16]) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let deploy = repo().join("deploy/nginx");
        let mut upstream = std::fs::read_to_string(deploy.join("upstream.conf")).unwrap();
        let committed: Vec<String> = (1..=3).map(|k| format!("server 127.0.0.1:808{k} ")).collect();
        for line in &committed {
            assert!(upstream.contains(line.as_str()), "upstream.conf lists {line}");
        }
        for (k, line) in committed.iter().enumerate() {
            let replace =
                replicas.get(k).map(|p| format!("server 127.0.0.1:{p} ")).unwrap_or_else(|| format!("# {line}"));
            upstream = upstream.replace(line.as_str(), &replace);
        }
        let site = std::fs::read_to_string(deploy.join("borscht.conf")).unwrap();
        assert!(site.contains("listen 8080;"));
        let site = site.replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(dir.path().join("upstream.conf"), upstream).unwrap();
        std::fs::write(dir.path().join("borscht.conf"), site).unwrap();
        let d = dir.path().display();
        // As root, nginx's workers would switch to a user who cannot write the temp folders.
        let user = if is_root() { "user root;" } else { "" };
        let main = format!(
            "{user}\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             include {d}/upstream.conf;\n  include {d}/borscht.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(nginx())
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx runs (scripts/install-tools.sh installs it)");
        let balancer = Balancer { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while status_of(port, "/healthz").await != Some(200) {
            assert!(Instant::now() < deadline, "nginx never answered: {}", balancer.errors());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        balancer
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Balancer {
    /// SIGTERM: nginx's master stops its workers first (SIGKILL would leave them serving).
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or("nginx".into())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Three ready replicas and nginx before them.
async fn cluster(logs: &Path) -> (Vec<Replica>, Balancer) {
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(free_port(), logs)).collect();
    for replica in &mut replicas {
        replica.ready().await;
    }
    let balancer = Balancer::start(&replicas.iter().map(|r| r.port).collect::<Vec<_>>()).await;
    (replicas, balancer)
}

fn load(balancer: &Balancer, clients: usize, requests: usize) -> LoadTestArgs {
    LoadTestArgs {
        url: balancer.ws_url(),
        image: repo().join("data/demo/images/twemoji/1f355-0.png"),
        clients,
        requests,
        n: 4,
        duration: None,
        sample_every: 10.0,
        seed: 1,
        // About 15 s of retries: longer than a replica's restart.
        retries: 12,
    }
}

/// Every request ended in its answer: none lost, refused or failed.
fn assert_all_answered(report: &LoadReport, balancer: &Balancer) {
    let expected = report.clients * (report.requests / report.clients);
    assert_eq!(
        (report.completed, report.lost, report.busy, report.errors),
        (expected, 0, 0, 0),
        "{report:?}\nnginx: {}",
        balancer.errors()
    );
}

/// Waits until every replica has answered at least one recognition of the load.
async fn until_each_serves(replicas: &[Replica]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for replica in replicas {
        while replica.answered().await < 1.0 {
            assert!(Instant::now() < deadline, "replica {} never got work", replica.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_through_nginx_spreads_over_every_replica() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let logs = tempfile::tempdir().unwrap();
    let (replicas, balancer) = cluster(logs.path()).await;
    let report = loadtest::run(&load(&balancer, 6, 5)).await.unwrap();
    assert_all_answered(&report, &balancer);
    assert_eq!(report.retried, 0, "nothing failed, so nothing was sent twice: {report:?}");
    let mut answered = Vec::new();
    for replica in &replicas {
        answered.push(replica.answered().await);
    }
    assert_eq!(answered.iter().sum::<f64>(), 30.0, "{answered:?}");
    assert!(answered.iter().all(|&a| a >= 5.0), "every replica carries its share: {answered:?}");
    // Stopped means stopped: no nginx worker is left serving the port.
    let port = balancer.port;
    drop(balancer);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nginx still serves {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_costs_its_clients_a_retry_and_nothing_else() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let logs = tempfile::tempdir().unwrap();
    let (mut replicas, balancer) = cluster(logs.path()).await;
    let args = load(&balancer, 6, 12);
    let running = tokio::spawn(async move { loadtest::run(&args).await.unwrap() });
    until_each_serves(&replicas).await;
    replicas[0].signal("-KILL");
    assert!(!replicas[0].exit(Duration::from_secs(10)).await.success());
    let report = running.await.unwrap();
    assert_all_answered(&report, &balancer);
    // Its two clients lost their connection with requests left to send: each was sent
    // again, through nginx, to a replica that lives.
    assert!(report.retried >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_replica_then_it_exits_zero() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let logs = tempfile::tempdir().unwrap();
    let (mut replicas, balancer) = cluster(logs.path()).await;
    // Work in flight on the replica to stop: four drawings, a few seconds of work.
    let (mut direct, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws?protocol=3", replicas[0].port)).await.unwrap();
    next(&mut direct).await; // hello
    let draw =
        borscht_protocol::ClientMessage::GenerateImage { id: 1, text: "борщ".into(), n: Some(4), seed: None };
    send(&mut direct, &draw).await;
    assert!(matches!(next(&mut direct).await, borscht_protocol::ServerMessage::Accepted { id: 1, .. }));

    let args = load(&balancer, 6, 8);
    let running = tokio::spawn(async move { loadtest::run(&args).await.unwrap() });
    until_each_serves(&replicas[1..]).await;
    // Stop the replica while the drawing is half drawn.
    while !matches!(next(&mut direct).await, borscht_protocol::ServerMessage::ImagePreview { .. }) {}
    replicas[0].signal("-TERM");
    // At once: not ready, so balancers and Kubernetes send new work elsewhere.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(replicas[0].port, "/readyz").await != Some(503) {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New WebSockets are refused with 503, which nginx takes as "try the next replica".
    let refused = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", replicas[0].port)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a draining replica took a new WebSocket: {:?}", other.map(|(_, r)| r.status())),
    }
    // The drawing in flight still ends in its pictures, then the socket is closed as a
    // restart (1012), telling the client to connect again.
    let frames = until_final(&mut direct, 1).await;
    assert!(matches!(frames.last(), Some(borscht_protocol::ServerMessage::Images { .. })), "{frames:?}");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(&mut direct)).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1012));
    let status = replicas[0].exit(Duration::from_secs(60)).await;
    assert!(status.success(), "exit {status}: {}", replicas[0].log_text());
    assert!(replicas[0].log_text().contains("shutdown requested"));
    let report = running.await.unwrap();
    assert_all_answered(&report, &balancer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_bounds_a_shutdown() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut replica = Replica::start_draining(port, logs.path(), 1);
    replica.ready().await;
    // Four drawings of four pictures: several seconds of work, far past the timeout.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?protocol=3")).await.unwrap();
    next(&mut ws).await;
    for id in 1..=4 {
        send(
            &mut ws,
            &borscht_protocol::ClientMessage::GenerateImage { id, text: "борщ".into(), n: Some(4), seed: None },
        )
        .await;
    }
    assert!(matches!(next(&mut ws).await, borscht_protocol::ServerMessage::Accepted { .. }));
    replica.signal("-TERM");
    let status = replica.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status}: {}", replica.log_text());
    // Had the drain waited for the work, every drawing would have been answered.
    let mut answered = 0;
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut ws)).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            if matches!(
                borscht_protocol::decode_server_message(text.as_str()),
                Ok(borscht_protocol::ServerMessage::Images { .. })
            ) {
                answered += 1;
            }
        }
    }
    assert!(answered < 4, "the shutdown waited for all the work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let logs = tempfile::tempdir().unwrap();
    let (mut replicas, balancer) = cluster(logs.path()).await;
    let args = load(&balancer, 6, 60);
    let running = tokio::spawn(async move { loadtest::run(&args).await.unwrap() });
    until_each_serves(&replicas).await;
    for replica in &mut replicas {
        replica.signal("-TERM");
        let status = replica.exit(Duration::from_secs(60)).await;
        assert!(status.success(), "exit {status}: {}", replica.log_text());
        *replica = Replica::start(replica.port, logs.path());
        replica.ready().await;
        // As a rolling update's `minReadySeconds`: nginx sees it serve before the next goes.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Else the last restarts happened after the load and proved nothing.
    assert!(!running.is_finished(), "the load ended before the restarts did");
    let report = running.await.unwrap();
    assert_all_answered(&report, &balancer);
}
