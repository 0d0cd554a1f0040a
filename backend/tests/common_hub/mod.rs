//! A stand-in for the Hugging Face hub's file API, as hf-hub 0.4 (ureq) uses it, on loopback.
//!
//! hf-hub asks `GET {endpoint}/{repo}/resolve/main/{file}` twice per download: first with
//! `Range: bytes=0-0` and no redirects followed, for the headers (`X-Repo-Commit`, the
//! `X-Linked-Etag` or `ETag` that names the blob, and through a redirect's `Location`
//! the `Content-Range` that gives the size), then with `Range: bytes={kept}-` following
//! redirects, appending to its `.part` file. The stand-in answers as the hub does: large
//! files (Git LFS) redirect to a content server under their sha256 (`/lfs/{sha256}`),
//! small ones (`*.json`) are served directly; a missing file is 404 `EntryNotFound` with
//! the commit, an unknown repository 401 `RepoNotFound`. Every request is logged, and a
//! file can be given a fault.
#![allow(dead_code)] // each test uses part of it

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const OFFICIAL_MODEL: &str = "sberbank-ai/RuDOLPH-350M";

/// What the stand-in does wrong for one file.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answers every request for it with this status and the hub's `X-Error-Code`.
    Status(u16, &'static str),
    /// Drops the connection after `after` bytes of a download body, `times` times.
    Cut { after: usize, times: usize },
    /// Serves its size with one byte changed.
    Corrupt,
    /// Announces its size but serves this many bytes fewer (a consistent short body).
    Short(usize),
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Hub {
    /// repo -> file -> bytes.
    repos: HashMap<String, HashMap<String, Arc<Vec<u8>>>>,
    faults: HashMap<(String, String), Fault>,
    /// Repositories that need `Authorization: Bearer {token}` (gated).
    tokens: HashMap<String, String>,
    log: Vec<Request>,
}

type Shared = Arc<Mutex<Hub>>;

pub struct StandIn {
    pub endpoint: String,
    hub: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A repository's current commit (any 40 hex digits will do; fixed per repository).
pub fn commit_of(repo: &str) -> String {
    sha256_hex(repo.as_bytes())[..40].to_string()
}

impl StandIn {
    pub fn start() -> Self {
        let hub: Shared = Arc::default();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/{owner}/{name}/resolve/{rev}/{*file}", get(resolve))
            .route("/lfs/{sha}", get(lfs))
            .with_state((hub.clone(), endpoint.clone()));
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandIn { endpoint, hub, runtime: Some(runtime) }
    }

    /// The official file names, with the small fixture bundle's contents.
    pub fn with_official_bundle() -> Self {
        let stand_in = Self::start();
        let bundle = fixtures().join("pipelines");
        stand_in.add(OFFICIAL_MODEL, "pytorch_model.bin", bundle.join("pytorch_model.bin"));
        stand_in.add("shonenkov/rudalle-utils", "bpe.model", bundle.join("bpe.model"));
        stand_in.add("sberbank-ai/rudalle-utils", "vqgan.gumbelf8-sber.model.ckpt", bundle.join("vqgan/model.ckpt"));
        stand_in
    }

    pub fn add(&self, repo: &str, file: &str, from: impl AsRef<Path>) {
        self.add_bytes(repo, file, std::fs::read(from).unwrap());
    }

    pub fn add_bytes(&self, repo: &str, file: &str, bytes: Vec<u8>) {
        self.hub.lock().unwrap().repos.entry(repo.into()).or_default().insert(file.into(), Arc::new(bytes));
    }

    /// A repository that exists but holds none of the files asked for.
    pub fn add_empty_repo(&self, repo: &str) {
        self.hub.lock().unwrap().repos.entry(repo.into()).or_default();
    }

    pub fn bytes(&self, repo: &str, file: &str) -> Vec<u8> {
        self.hub.lock().unwrap().repos[repo][file].to_vec()
    }

    pub fn fault(&self, repo: &str, file: &str, fault: Fault) {
        self.hub.lock().unwrap().faults.insert((repo.into(), file.into()), fault);
    }

    pub fn clear_faults(&self) {
        self.hub.lock().unwrap().faults.clear();
    }

    pub fn require_token(&self, repo: &str, token: &str) {
        self.hub.lock().unwrap().tokens.insert(repo.into(), token.into());
    }

    /// The requests so far, and forgets them.
    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut self.hub.lock().unwrap().log)
    }

    /// Stops serving: the endpoint refuses connections from now on.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn log(hub: &Shared, path: String, headers: &HeaderMap) {
    let request = Request { path, range: header(headers, "range"), authorization: header(headers, "authorization") };
    hub.lock().unwrap().log.push(request);
}

fn error(status: u16, code: &str, message: &str, commit: Option<&str>) -> Response {
    let mut response = Response::builder()
        .status(status)
        .header("x-error-code", code)
        .header("x-error-message", message)
        .header("content-type", "application/json");
    if let Some(commit) = commit {
        response = response.header("x-repo-commit", commit);
    }
    response.body(Body::from(format!("{{\"error\":\"{message}\"}}"))).unwrap()
}

/// Git LFS holds every file but small text ones, as the hub's default `.gitattributes` does.
fn is_lfs(file: &str) -> bool {
    !file.ends_with(".json")
}

async fn resolve(
    State((hub, endpoint)): State<(Shared, String)>,
    UrlPath((owner, name, _revision, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{owner}/{name}");
    log(&hub, format!("/{repo}/resolve/main/{file}"), &headers);
    let (bytes, fault) = {
        let state = hub.lock().unwrap();
        let Some(files) = state.repos.get(&repo) else {
            return error(401, "RepoNotFound", "Repository not found", None);
        };
        if let Some(token) = state.tokens.get(&repo) {
            if header(&headers, "authorization") != Some(format!("Bearer {token}")) {
                return error(401, "GatedRepo", "Access to this model is restricted: log in", None);
            }
        }
        (files.get(&file).cloned(), state.faults.get(&(repo.clone(), file.clone())).copied())
    };
    let commit = commit_of(&repo);
    if let Some(Fault::Status(status, code)) = fault {
        return error(status, code, "The stand-in fails on purpose", Some(&commit));
    }
    let Some(bytes) = bytes else {
        return error(404, "EntryNotFound", "Entry not found", Some(&commit));
    };
    let sha = sha256_hex(&bytes);
    if is_lfs(&file) {
        // The hub names the blob by its sha256 and sends the bytes from a content server.
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", format!("{endpoint}/lfs/{sha}"))
            .header("x-repo-commit", &commit)
            .header("x-linked-etag", format!("\"{sha}\""))
            .header("x-linked-size", bytes.len())
            .header("etag", format!("\"{}\"", &sha[..40]))
            .body(Body::empty())
            .unwrap();
    }
    let etag = format!("\"{}\"", &sha[..40]);
    serve(&hub, &repo, &file, &bytes, fault, &headers, &[("x-repo-commit", commit), ("etag", etag)])
}

async fn lfs(State((hub, _)): State<(Shared, String)>, UrlPath(sha): UrlPath<String>, headers: HeaderMap) -> Response {
    log(&hub, format!("/lfs/{sha}"), &headers);
    let found = {
        let state = hub.lock().unwrap();
        state.repos.iter().find_map(|(repo, files)| {
            files.iter().find(|(_, bytes)| sha256_hex(bytes) == sha).map(|(file, bytes)| {
                let fault = state.faults.get(&(repo.clone(), file.clone())).copied();
                (repo.clone(), file.clone(), bytes.clone(), fault)
            })
        })
    };
    let Some((repo, file, bytes, fault)) = found else {
        return error(404, "EntryNotFound", "No such object", None);
    };
    serve(&hub, &repo, &file, &bytes, fault, &headers, &[("etag", format!("\"{sha}\""))])
}

/// The bytes a `Range` asks for (hf-hub always sends one), with the file's fault applied.
fn serve(
    hub: &Shared,
    repo: &str,
    file: &str,
    bytes: &[u8],
    fault: Option<Fault>,
    headers: &HeaderMap,
    extra: &[(&str, String)],
) -> Response {
    let total = bytes.len();
    let (start, end) = header(headers, "range")
        .and_then(|r| {
            let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, if b.is_empty() { total.saturating_sub(1) } else { b.parse().ok()? }))
        })
        .unwrap_or((0, total.saturating_sub(1)));
    if start >= total {
        return Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header("content-range", format!("bytes */{total}"))
            .body(Body::empty())
            .unwrap();
    }
    let mut body = bytes.to_vec();
    let mut end = end.min(total - 1);
    match fault {
        Some(Fault::Corrupt) => body[total / 2] ^= 0x55,
        Some(Fault::Short(missing)) => end = end.min(total - 1 - missing),
        _ => {}
    }
    let body = body[start..=end].to_vec();
    let mut response = Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("content-range", format!("bytes {start}-{end}/{total}"))
        .header("content-length", body.len());
    for (name, value) in extra {
        response = response.header(*name, value);
    }
    if let Some(Fault::Cut { after, times }) = fault {
        if times > 0 && body.len() > after {
            let left = Fault::Cut { after, times: times - 1 };
            hub.lock().unwrap().faults.insert((repo.into(), file.into()), left);
            // The first bytes go out, then the connection drops short of Content-Length.
            let first = Bytes::copy_from_slice(&body[..after]);
            let stream = futures::stream::unfold(0, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok(first), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Some((Err(std::io::Error::other("cut by the stand-in")), 2))
                        }
                        _ => None,
                    }
                }
            });
            return response.body(Body::from_stream(stream)).unwrap();
        }
    }
    response.body(Body::from(body)).unwrap()
}
