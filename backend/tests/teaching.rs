//! Teaching the model through the server: examples stored and exported exactly, the
//! admin routes behind their token, a fine-tune trained between request batches while
//! recognitions are answered, cancel and resume, promotion (a hot swap under load) and
//! rollback, and a run that continues after the process is killed.

mod common;

use base64::Engine as _;
use borscht_server::dataset::Dataset;
use borscht_server::finetune::Teaching;
use borscht_server::versions::Versions;
use common::{free_port, http_with, TestServer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-admin-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo_model() -> PathBuf {
    repo().join("models/demo")
}

/// The demo data set's pizza in several drawing styles (the demo model says "пицца").
fn pizza_pictures() -> Vec<Vec<u8>> {
    ["twemoji", "noto", "fluent-emoji-flat"]
        .iter()
        .flat_map(|style| (0..2).map(move |k| format!("data/demo/images/{style}/1f355-{k}.png")))
        .map(|path| std::fs::read(repo().join(path)).unwrap())
        .collect()
}

fn data_url(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

/// A server on the demo model keeping examples and versions in `dir`.
async fn teaching_server(dir: &Path) -> TestServer {
    teaching_server_with_base(dir, None).await
}

/// [`teaching_server`] with a base data set (its CSV and images folder) fine-tunes may add.
async fn teaching_server_with_base(dir: &Path, base_data: Option<(PathBuf, PathBuf)>) -> TestServer {
    let dataset = Arc::new(Dataset::open(&dir.join("dataset"), 100, 1 << 30).unwrap());
    let versions = Arc::new(Versions::open(&dir.join("models"), &demo_model()).unwrap());
    let teaching = Teaching::new(Some(dataset), Some(versions), Some(borscht::teaching::starter()), base_data);
    // The tests poll the admin routes faster than a client may call the API.
    let adjust = |config: &mut borscht_server::ServerConfig| {
        config.admin_token = Some(TOKEN.into());
        config.limits.api_requests_per_minute = 0;
    };
    TestServer::start_teaching(adjust, Arc::new(teaching)).await
}

async fn admin(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let (status, _, answer) = http_with(addr, method, path, &auth, "application/json", &body).await;
    (status, serde_json::from_slice(&answer).unwrap_or(Value::Null))
}

async fn add_example(addr: SocketAddr, png: &[u8], dish: &str) -> (u16, Value) {
    let body = json!({
        "photo": data_url(png), "dish": dish, "protein_g": 11, "fat_g": 8, "carbs_g": 40, "kcal": 280,
        "consent": "I agree that Borscht keeps this photo to learn from",
    });
    let (status, _, answer) =
        http_with(addr, "POST", "/api/v1/examples", "", "application/json", body.to_string().as_bytes()).await;
    (status, serde_json::from_slice(&answer).unwrap_or(Value::Null))
}

/// The dish the served model names for a picture (HTTP API, the answer's best option).
async fn recognized(addr: SocketAddr, png: &[u8]) -> String {
    let (status, _, body) = http_with(addr, "POST", "/api/v1/recognize?n=8", "", "image/png", png).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    answer["best"]["dish"].as_str().unwrap_or_default().to_string()
}

/// The run's record, polled until `done` holds (or four minutes pass).
async fn wait_for_run(addr: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (status, list) = admin(addr, "GET", "/api/v1/finetune", &Value::Null).await;
        assert_eq!(status, 200, "{list}");
        if let Some(run) = list["runs"].as_array().and_then(|runs| runs.last()) {
            if done(run) {
                return run.clone();
            }
            assert_ne!(run["status"], "failed", "{run}");
        }
        assert!(Instant::now() < deadline, "the run never got there: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_are_stored_and_exported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = teaching_server(dir.path()).await;
    let pictures = pizza_pictures();
    let mut ids = Vec::new();
    for (k, png) in pictures.iter().take(3).enumerate() {
        let (status, stored) = add_example(server.addr, png, &format!("ватрушка {k}")).await;
        assert_eq!(status, 201, "{stored}");
        assert_eq!(stored["caption"], format!("блюдо: ватрушка {k}; белков: 11; жиров: 8; углеводов: 40; ккал: 280;"));
        ids.push(stored["id"].as_str().unwrap().to_string());
    }
    // A broken one is refused and not kept.
    let (status, refused) = add_example(server.addr, b"not a picture", "суп").await;
    assert_eq!(status, 415, "{refused}");

    let (status, list) = admin(server.addr, "GET", "/api/v1/examples", &Value::Null).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list["examples"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids);
    assert_eq!(list["examples"][0]["client"], "127.0.0.1");
    assert!(list["examples"][0]["consent"].as_str().unwrap().contains("I agree"));

    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, head, zip) = http_with(server.addr, "GET", "/api/v1/examples/export", &auth, "", b"").await;
    assert_eq!(status, 200);
    assert!(head.to_lowercase().contains("content-type: application/zip"), "{head}");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut read = |name: &str| {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut archive.by_name(name).unwrap(), &mut bytes).unwrap();
        bytes
    };
    let csv = String::from_utf8(read("food.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "index,protein,fat,carbs,kcal,name,path");
    assert_eq!(rows.len(), 4, "{csv}");
    for (k, (row, png)) in rows[1..].iter().zip(&pictures).enumerate() {
        let path = format!("images/{}.png", ids[k]);
        assert_eq!(*row, format!("{k},11,8,40,280,ватрушка {k},{path}"));
        assert_eq!(&read(&path), png, "the photo exactly as sent");
    }
    // The export is a training set `borscht train` reads as it is.
    let unpacked = tempfile::tempdir().unwrap();
    std::fs::write(unpacked.path().join("food.csv"), &csv).unwrap();
    std::fs::create_dir(unpacked.path().join("images")).unwrap();
    for id in &ids {
        let name = format!("images/{id}.png");
        std::fs::write(unpacked.path().join(&name), read(&name)).unwrap();
    }
    let data = borscht_train::data::read_csv(&unpacked.path().join("food.csv"), unpacked.path()).unwrap();
    assert_eq!(data.samples.len(), 3);
    assert_eq!(data.samples[1].caption, "блюдо: ватрушка 1; белков: 11; жиров: 8; углеводов: 40; ккал: 280;");

    let (status, _) = admin(server.addr, "DELETE", &format!("/api/v1/examples/{}", ids[1]), &Value::Null).await;
    assert_eq!(status, 204);
    let (status, _) = admin(server.addr, "DELETE", &format!("/api/v1/examples/{}", ids[1]), &Value::Null).await;
    assert_eq!(status, 404);
    let (_, list) = admin(server.addr, "GET", "/api/v1/examples", &Value::Null).await;
    assert_eq!(list["examples"].as_array().unwrap().len(), 2);
    assert_eq!(std::fs::read_dir(dir.path().join("dataset")).unwrap().count(), 4, "two examples, two files each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_refuse_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = teaching_server(dir.path()).await;
    let routes = [
        ("GET", "/api/v1/examples"),
        ("GET", "/api/v1/examples/export"),
        ("DELETE", "/api/v1/examples/1-abc"),
        ("GET", "/api/v1/examples/1-abc/photo"),
        ("POST", "/api/v1/finetune"),
        ("GET", "/api/v1/finetune"),
        ("POST", "/api/v1/finetune/cancel"),
        ("POST", "/api/v1/finetune/resume"),
        ("GET", "/api/v1/finetune/events"),
        ("GET", "/api/v1/models"),
        ("POST", "/api/v1/models/rollback"),
        ("POST", "/api/v1/models/v1/promote"),
    ];
    for (method, path) in routes {
        for auth in ["", "Authorization: Bearer wrong\r\n", "Authorization: s3cret-admin-token\r\n"] {
            let (status, head, body) = http_with(server.addr, method, path, auth, "application/json", b"{}").await;
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{method} {path} {auth:?}"
            );
            assert!(head.to_lowercase().contains("www-authenticate: bearer"), "{head}");
        }
    }
    // With the token they answer (the models list, say).
    let (status, models) = admin(server.addr, "GET", "/api/v1/models", &Value::Null).await;
    assert_eq!((status, models["active"].as_str()), (200, Some("base")), "{models}");

    // A server without a token has no admin routes at all; sending examples is for users.
    let plain = TestServer::start_teaching(|_| {}, Arc::new(Teaching::default())).await;
    for (method, path) in routes {
        let auth = format!("Authorization: Bearer {TOKEN}\r\n");
        let (status, _, body) = http_with(plain.addr, method, path, &auth, "application/json", b"{}").await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("--admin-token"), "{body}");
    }
    let (status, body) = add_example(plain.addr, &pizza_pictures()[0], "пицца").await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].as_str().unwrap().contains("--dataset"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_trains_between_requests_and_promotion_swaps_answers_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = teaching_server(dir.path()).await;
    let addr = server.addr;
    let pictures = pizza_pictures();
    let pizza = pictures[0].clone();
    assert_eq!(recognized(addr, &pizza).await, "пицца");
    for png in &pictures {
        assert_eq!(add_example(addr, png, "ватрушка").await.0, 201);
    }
    let settings = json!({ "epochs": 15, "lr": 1e-3, "batch_size": 6, "freeze": "none", "val_fraction": 0.0 });
    let (status, run) = admin(addr, "POST", "/api/v1/finetune", &settings).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!((run["version"].as_str(), run["parent"].as_str()), (Some("v1"), Some("base")));
    let (status, busy) = admin(addr, "POST", "/api/v1/finetune", &settings).await;
    assert_eq!(status, 409, "one run at a time: {busy}");

    // Recognitions are answered while it trains, by the model serving (the old one).
    let mut during = 0;
    loop {
        let answer = recognized(addr, &pizza).await;
        let (_, list) = admin(addr, "GET", "/api/v1/finetune", &Value::Null).await;
        let run = &list["runs"][0];
        let step = run["step"].as_u64().unwrap();
        if run["status"] == "running" && step > 0 && step < run["total_steps"].as_u64().unwrap() {
            assert_eq!(answer, "пицца");
            during += 1;
        }
        if run["status"] != "running" {
            assert_eq!(run["status"], "finished", "{run}");
            break;
        }
    }
    assert!(during >= 1, "no recognition was answered while the fine-tune ran");
    // Finished is not promoted: the answers stay as they were.
    assert_eq!(recognized(addr, &pizza).await, "пицца");

    // Promotion under load: nothing lost, the old answer before, the new one after.
    let promoted_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let answered_once = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for png in &pictures[..3] {
        let (png, promoted_at, answered_once) = (png.clone(), promoted_at.clone(), answered_once.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let start = Instant::now();
            loop {
                let sent = Instant::now();
                let dish = recognized(addr, &png).await;
                answers.push((sent, Instant::now(), dish));
                if answers.len() == 1 {
                    answered_once.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let done = promoted_at.lock().unwrap().is_some_and(|at: Instant| sent > at);
                if done || start.elapsed() > Duration::from_secs(120) {
                    return answers;
                }
            }
        }));
    }
    // Every client has had an answer from the old model before the promotion starts.
    while answered_once.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promote_started = Instant::now();
    let (status, models) = admin(addr, "POST", "/api/v1/models/v1/promote", &Value::Null).await;
    assert_eq!((status, models["active"].as_str()), (200, Some("v1")), "{models}");
    *promoted_at.lock().unwrap() = Some(Instant::now());
    for client in clients {
        let answers = client.await.unwrap();
        let promoted = promoted_at.lock().unwrap().unwrap();
        for (sent, answered, dish) in &answers {
            if *answered < promote_started {
                assert_eq!(dish, "пицца", "changed before the promotion");
            }
            if *sent > promoted {
                assert_eq!(dish, "ватрушка", "still the old model after the promotion");
            }
        }
        assert!(answers.iter().any(|(_, answered, _)| *answered < promote_started), "no load before the promotion");
        assert!(answers.iter().any(|(sent, _, _)| *sent > promoted), "no load after the promotion");
    }
    // /readyz and the hello name the version.
    let (_, ready) = common::reqwest_get(addr, "/readyz").await;
    assert_eq!(serde_json::from_str::<Value>(&ready).unwrap()["version"], "v1", "{ready}");
    let url = format!("ws://{addr}/ws?protocol={}", borscht_protocol::PROTOCOL_VERSION);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    match common::next(&mut ws).await {
        borscht_protocol::ServerMessage::Hello { model_version, teaching, .. } => {
            assert_eq!((model_version.as_deref(), teaching), (Some("v1"), true));
        }
        other => panic!("{other:?}"),
    }

    // Rollback restores the old answers.
    let (status, models) = admin(addr, "POST", "/api/v1/models/rollback", &Value::Null).await;
    assert_eq!((status, models["active"].as_str()), (200, Some("base")), "{models}");
    assert_eq!(recognized(addr, &pizza).await, "пицца");
    let (status, refused) = admin(addr, "POST", "/api/v1/models/rollback", &Value::Null).await;
    assert_eq!(status, 409, "{refused}");
    let (status, _) = admin(addr, "POST", "/api/v1/models/v9/promote", &Value::Null).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_finetune_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = teaching_server(dir.path()).await;
    let addr = server.addr;
    for png in pizza_pictures() {
        assert_eq!(add_example(addr, &png, "ватрушка").await.0, 201);
    }
    let settings = json!({ "epochs": 20, "lr": 1e-3, "batch_size": 2, "freeze": "none", "val_fraction": 0.34 });
    assert_eq!(admin(addr, "POST", "/api/v1/finetune", &settings).await.0, 202);
    wait_for_run(addr, |run| run["step"].as_u64() >= Some(3)).await;
    assert_eq!(admin(addr, "POST", "/api/v1/finetune/cancel", &Value::Null).await.0, 202);
    let cancelled = wait_for_run(addr, |run| run["status"] == "cancelled").await;
    let stopped_at = cancelled["step"].as_u64().unwrap();
    let total = cancelled["total_steps"].as_u64().unwrap();
    assert_eq!(total, 40, "4 training rows in batches of 2, 20 epochs: {cancelled}");
    assert!((3..total).contains(&stopped_at), "{cancelled}");
    assert_eq!(admin(addr, "POST", "/api/v1/finetune/cancel", &Value::Null).await.0, 404, "nothing runs");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("models/v1/train_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64(), Some(stopped_at), "the checkpoint is where it stopped");

    let (status, resumed) = admin(addr, "POST", "/api/v1/finetune/resume", &Value::Null).await;
    assert_eq!((status, resumed["status"].as_str()), (202, Some("running")), "{resumed}");
    let finished = wait_for_run(addr, |run| run["status"] == "finished").await;
    assert_eq!(finished["step"].as_u64(), Some(total));
    assert_eq!(finished["resumed_at"], json!([stopped_at]), "it went on from where it stopped");
    // The parent and the version measured on the same two held-out rows.
    assert_eq!(finished["before"]["samples"], 2, "{finished}");
    assert_eq!(finished["after"]["samples"], 2, "{finished}");
    let log = std::fs::read_to_string(dir.path().join("models/v1/train_log.csv")).unwrap();
    let steps: Vec<u64> = log.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(steps, (1..=total).collect::<Vec<_>>(), "every step once, in order");
    let (_, models) = admin(addr, "GET", "/api/v1/models", &Value::Null).await;
    let names: Vec<&str> = models["versions"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base", "v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_may_add_the_base_data_set_to_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let settings = json!({ "epochs": 1, "batch_size": 10, "include_base": true, "val_fraction": 0.0 });
    // Without a base data set the server refuses to pretend it has one.
    let plain = teaching_server(&dir.path().join("plain")).await;
    assert_eq!(add_example(plain.addr, &pizza_pictures()[0], "ватрушка").await.0, 201);
    let (status, refused) = admin(plain.addr, "POST", "/api/v1/finetune", &settings).await;
    assert_eq!(status, 422, "{refused}");

    // Three rows of the demo data set, their paths relative to the CSV's folder.
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let table = std::fs::read_to_string(repo().join("data/demo/food.csv")).unwrap();
    let rows: Vec<&str> = table.lines().take(4).collect();
    std::fs::write(base.join("food.csv"), rows.join("\n") + "\n").unwrap();
    let server = teaching_server_with_base(dir.path(), Some((base.join("food.csv"), repo().join("data/demo")))).await;
    for png in &pizza_pictures()[..2] {
        assert_eq!(add_example(server.addr, png, "ватрушка").await.0, 201);
    }
    let (status, run) = admin(server.addr, "POST", "/api/v1/finetune", &settings).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!((run["examples"].as_u64(), run["base_rows"].as_u64()), (Some(2), Some(3)), "{run}");
    let finished = wait_for_run(server.addr, |run| run["status"] == "finished").await;
    assert_eq!(finished["total_steps"].as_u64(), Some(1), "five rows, one batch: {finished}");
    let data =
        borscht_train::data::read_csv(&dir.path().join("models/v1/data/food.csv"), &dir.path().join("models/v1/data"))
            .unwrap();
    let dishes: Vec<String> = data.samples.iter().map(|s| s.caption.split(';').next().unwrap().to_string()).collect();
    let base_dishes: Vec<String> =
        rows[1..].iter().map(|r| format!("блюдо: {}", r.split(',').nth(5).unwrap())).collect();
    assert_eq!(dishes[..2], ["блюдо: ватрушка", "блюдо: ватрушка"]);
    assert_eq!(dishes[2..], base_dishes[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_version_that_no_longer_loads_leaves_the_base_model_serving() {
    let dir = tempfile::tempdir().unwrap();
    // v1 was promoted, then its weights were lost.
    let versions = Versions::open(&dir.path().join("models"), &demo_model()).unwrap();
    let record = borscht_server::versions::RunRecord::new(
        "v1".into(),
        "base".into(),
        Default::default(),
        (1, 0),
        "2026-12-05T00:00:00Z".into(),
    );
    let finished =
        borscht_server::versions::RunRecord { status: borscht_server::versions::RunStatus::Finished, ..record };
    versions.save_record(&finished).unwrap();
    versions.promote("v1").unwrap();
    drop(versions);
    let server = teaching_server(dir.path()).await;
    ready(server.addr).await;
    let (_, ready) = common::reqwest_get(server.addr, "/readyz").await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!((ready["status"].as_str(), ready["version"].as_str()), (Some("ready"), Some("base")), "{ready}");
    assert_eq!(recognized(server.addr, &pizza_pictures()[0]).await, "пицца");
    let (_, models) = admin(server.addr, "GET", "/api/v1/models", &Value::Null).await;
    assert_eq!(models["active"], "base", "{models}");
}

/// `borscht serve` with teaching on, in the background.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, addr: SocketAddr) -> Serving {
    Serving(
        std::process::Command::new(env!("CARGO_BIN_EXE_borscht"))
            .args(["serve", "--model"])
            .arg(demo_model())
            .arg("--dataset")
            .arg(dir.join("dataset"))
            .arg("--models-dir")
            .arg(dir.join("models"))
            .args(["--addr", &addr.to_string()])
            .env("BORSCHT_ADMIN_TOKEN", TOKEN)
            .env("BORSCHT_API_REQUESTS_PER_MINUTE", "0")
            .env_remove("BORSCHT_MODEL")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while common::reqwest_get_maybe(addr, "/readyz").await != Some(200) {
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_stopped_or_killed_with_its_server_continues_after_the_restart_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut serving = serve(dir.path(), addr);
    ready(addr).await;
    for png in pizza_pictures() {
        assert_eq!(add_example(addr, &png, "ватрушка").await.0, 201);
    }
    let settings = json!({ "epochs": 10, "lr": 1e-3, "batch_size": 1, "freeze": "none", "val_fraction": 0.0 });
    assert_eq!(admin(addr, "POST", "/api/v1/finetune", &settings).await.0, 202);
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("models/v1").join(name)).unwrap()).unwrap()
    };

    // SIGTERM: the run writes its checkpoint where it stands, and the process exits 0.
    wait_for_run(addr, |run| run["step"].as_u64() >= Some(8)).await;
    unsafe { libc::kill(serving.0.id() as i32, libc::SIGTERM) };
    assert!(serving.0.wait().unwrap().success());
    drop(serving);
    let (record, state) = (read("run.json"), read("train_state.json"));
    assert_eq!(record["status"], "running", "it continues at the next start");
    let paused_at = state["step"].as_u64().unwrap();
    assert!(paused_at >= 8, "the checkpoint is where it stopped, not the last periodic one: {state}");
    assert_eq!(record["step"].as_u64(), Some(paused_at), "{record}");

    // SIGKILL later on: it goes on from its last periodic checkpoint.
    let mut serving = serve(dir.path(), addr);
    ready(addr).await;
    wait_for_run(addr, |run| run["step"].as_u64() >= Some(40)).await;
    serving.0.kill().unwrap();
    serving.0.wait().unwrap();
    drop(serving);

    let _serving = serve(dir.path(), addr);
    ready(addr).await;
    let finished = wait_for_run(addr, |run| run["status"] == "finished").await;
    assert_eq!(finished["step"].as_u64(), Some(60), "6 rows, one a batch, 10 epochs: {finished}");
    let resumed: Vec<u64> = finished["resumed_at"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
    assert_eq!(resumed.len(), 2, "{finished}");
    assert_eq!(resumed[0], paused_at);
    // Killed past step 40: the checkpoint of step 50 (every 25) or an epoch's end (every 6).
    assert!(resumed[1] >= 36 && (resumed[1].is_multiple_of(25) || resumed[1].is_multiple_of(6)), "{finished}");

    // The same run made by `borscht train` in one go trains the same weights.
    let spec = Teaching::new(
        None,
        Some(Arc::new(Versions::open(&dir.path().join("models"), &demo_model()).unwrap())),
        None,
        None,
    )
    .spec_of(&serde_json::from_value(finished).unwrap(), false);
    let straight = dir.path().join("straight");
    let args =
        borscht::teaching::train_args(&borscht_server::finetune::RunSpec { out: straight.clone(), ..spec }).unwrap();
    let options = borscht::cli::train::train_options(&args, Default::default()).unwrap();
    borscht_train::rudolph::train(&options, &candle_core::Device::Cpu).unwrap();
    let load =
        |dir: &Path| candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let (a, b) = (load(&straight), load(&dir.path().join("models/v1")));
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        let diff: f32 =
            (tensor - &b[name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert_eq!(diff, 0.0, "{name} differs from the run made in one go");
    }
}
