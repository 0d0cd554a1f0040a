//! Fetching models from the Hugging Face hub into its cache.
//!
//! The cache is huggingface_hub's own layout (`models--owner--name/` with `blobs/`,
//! `snapshots/<commit>/`, `refs/main` and `.no_exist/<commit>/`), so Python and we share
//! what either fetched. hf-hub 0.4 downloads (resuming from a `.part` file) and reuses
//! cached files; this module adds what it leaves out:
//! - `HF_TOKEN` and `HF_HUB_OFFLINE` (hf-hub reads only the token file);
//! - remembering that a repository lacks a file, so a cached model makes no request at all;
//! - checking each download against the sha256 the hub lists for it;
//! - errors that name the repository and the file and say what to do.

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{read_config, HubOptions, ModelFiles, CONFIG_FILE, PTH_FILE, SAFETENSORS_FILE};
use crate::config::RudolphConfig;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Tries after a download breaks off; each resumes where the last one stopped. (Ours, not
/// hf-hub's: its retry loop reports failure even when the last try succeeds, leaving a
/// complete `.part` that every later run asks the rest of, and is refused.)
pub const RETRIES: usize = 3;

/// A hub client over one cache, set up as huggingface_hub sets itself up from the environment.
pub struct Hub {
    api: Api,
    cache: Cache,
    endpoint: String,
    offline: bool,
    token: bool,
}

/// What the cache knows about a file.
enum Cached {
    File(PathBuf),
    /// The hub said the repository has no such file (at the cached commit).
    Absent,
    Unknown,
}

/// How asking the hub for a file went, short of an error to report at once.
enum Fetched {
    File(PathBuf),
    Absent,
    /// No connection: a later candidate may still be in the cache.
    Unreachable(anyhow::Error),
}

impl Hub {
    /// `--hub-cache`, else `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
    /// the endpoint from the options, else `$HF_ENDPOINT`; the token from `$HF_TOKEN`, else
    /// the token file `huggingface-cli login` writes.
    pub fn new(options: &HubOptions) -> Result<Self> {
        let cache = match (&options.cache_dir, env("HF_HUB_CACHE")) {
            (Some(dir), _) => Cache::new(dir.clone()),
            (None, Some(dir)) => Cache::new(dir.into()),
            (None, None) => Cache::from_env(),
        };
        let endpoint =
            options.endpoint.clone().or_else(|| env("HF_ENDPOINT")).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let token = env("HF_TOKEN").or_else(|| Cache::from_env().token());
        let api = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(endpoint.clone())
            .with_token(token.clone())
            .with_retries(0)
            .with_progress(true)
            .build()
            .context("cannot set up the Hugging Face hub client")?;
        let offline =
            env("HF_HUB_OFFLINE").is_some_and(|v| ["1", "on", "yes", "true"].contains(&v.to_lowercase().as_str()));
        Ok(Hub { api, cache, endpoint, offline, token: token.is_some() })
    }

    /// A RUDOLPH repository's weights and config: its `config.json`, or the preset of an
    /// official repository (those ship none). The config comes first so that an unknown
    /// repository without one fails before gigabytes download.
    pub fn model(&self, repo: &str) -> Result<ModelFiles> {
        let config = match self.optional(repo, CONFIG_FILE)? {
            Some(path) => read_config(&path)?,
            None => RudolphConfig::for_hub_repo(repo).ok_or_else(|| {
                if self.offline {
                    self.not_found(repo, CONFIG_FILE)
                } else {
                    anyhow!("{repo} has no {CONFIG_FILE} and is not an official RUDOLPH repository")
                }
            })?,
        };
        let weights = self.first_of(&[(repo, SAFETENSORS_FILE), (repo, PTH_FILE)])?;
        Ok(ModelFiles { config, weights })
    }

    /// A file that must be there: from the cache, or downloaded now.
    pub fn file(&self, repo: &str, file: &str) -> Result<PathBuf> {
        self.first_of(&[(repo, file)])
    }

    /// A file the repository may lack: `None` if the hub says so, or said so before.
    pub fn optional(&self, repo: &str, file: &str) -> Result<Option<PathBuf>> {
        self.find(&[(repo, file)], false)
    }

    /// The first of `candidates` (repository, file) that exists, from the cache or
    /// downloaded now; the last one must.
    pub fn first_of(&self, candidates: &[(&str, &str)]) -> Result<PathBuf> {
        self.find(candidates, true)?.ok_or_else(|| {
            let (repo, _) = candidates.last().expect("at least one candidate");
            let names: Vec<&str> = candidates.iter().filter(|(r, _)| r == repo).map(|(_, f)| *f).collect();
            self.not_found(repo, &names.join(" or "))
        })
    }

    /// A candidate the cache knows nothing about is asked for before later ones are looked
    /// at: a model's own tokenizer must win over the official one even when only the
    /// latter is cached. One the hub said it lacks is skipped without asking, except the
    /// last of a `required` list (what the hub lacked once it may have now). Offline (or
    /// with the hub out of reach) only cached files count.
    fn find(&self, candidates: &[(&str, &str)], required: bool) -> Result<Option<PathBuf>> {
        let mut unreachable = None;
        for (i, &(repo, file)) in candidates.iter().enumerate() {
            let ask_anyway = required && i + 1 == candidates.len();
            match self.cached(repo, file) {
                Cached::File(path) => return Ok(Some(path)),
                Cached::Absent if !ask_anyway => continue,
                _ if self.offline || unreachable.is_some() => continue,
                _ => match self.download(repo, file)? {
                    Fetched::File(path) => return Ok(Some(path)),
                    Fetched::Absent => continue,
                    Fetched::Unreachable(error) => unreachable = Some(error),
                },
            }
        }
        unreachable.map_or(Ok(None), Err)
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache.path().join(Repo::model(repo.to_string()).folder_name())
    }

    fn cached(&self, repo: &str, file: &str) -> Cached {
        let dir = self.repo_dir(repo);
        let Ok(commit) = std::fs::read_to_string(dir.join("refs").join("main")) else {
            return Cached::Unknown;
        };
        let commit = commit.trim();
        let pointer = dir.join("snapshots").join(commit).join(file);
        if pointer.exists() {
            return Cached::File(pointer);
        }
        if pointer.symlink_metadata().is_ok() {
            // A link whose blob was deleted: hf-hub would fail to link the new download.
            let _ = std::fs::remove_file(&pointer);
        }
        if dir.join(".no_exist").join(commit).join(file).exists() {
            return Cached::Absent;
        }
        Cached::Unknown
    }

    /// Marks `file` absent at `commit`, as huggingface_hub does, so later runs need not ask.
    fn remember_absent(&self, repo: &str, commit: &str, file: &str) {
        let dir = self.repo_dir(repo);
        let marker = dir.join(".no_exist").join(commit).join(file);
        let written =
            marker.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&marker, b""));
        let ref_path = dir.join("refs").join("main");
        if written.is_ok() && !ref_path.exists() {
            let _ = self.cache.model(repo.to_string()).create_ref(commit);
        }
    }

    fn download(&self, repo: &str, file: &str) -> Result<Fetched> {
        let mut tries = 1;
        loop {
            match self.api.model(repo.to_string()).download(file) {
                Ok(pointer) => {
                    verify_download(repo, file, &pointer)?;
                    return Ok(Fetched::File(pointer));
                }
                // The bytes stopped coming: hf-hub kept them in a `.part` file and resumes.
                Err(ApiError::IoError(_)) if tries <= RETRIES => {
                    std::thread::sleep(std::time::Duration::from_millis(250 << (tries - 1)));
                    tries += 1;
                }
                Err(error) => return self.failure(repo, file, error, tries),
            }
        }
    }

    /// What a failed download means for the user.
    fn failure(&self, repo: &str, file: &str, error: ApiError, tries: usize) -> Result<Fetched> {
        let url = format!("{}/{repo}/resolve/main/{file}", self.endpoint);
        // A `.part` as long as the file or longer (a run stopped between its last byte and
        // the rename): hf-hub would ask for bytes past the end on every run.
        let past_the_end = matches!(&error, ApiError::InvalidResume)
            || matches!(&error, ApiError::RequestError(e) if matches!(**e, ureq::Error::Status(416, _)));
        if past_the_end {
            bail!(
                "the partial download of {file} from {repo} is as long as the file or longer: delete the .part \
                 files in {} and run again",
                self.repo_dir(repo).join("blobs").display()
            );
        }
        let response = match error {
            ApiError::IoError(e) => {
                let times = if tries > 1 { format!(" {tries} times") } else { String::new() };
                bail!("the download of {file} from {repo} broke off{times} ({e}); {}", self.resume_hint(repo))
            }
            ApiError::LockAcquisition(lock) => bail!(
                "another process is downloading {file} from {repo} (it holds {}); wait for it to finish, \
                 or delete that lock file if none is running",
                lock.display()
            ),
            ApiError::RequestError(e) => *e,
            other => bail!("{url} is not answered as the Hugging Face hub answers ({other}): check HF_ENDPOINT"),
        };
        match response {
            ureq::Error::Transport(transport) => Ok(Fetched::Unreachable(anyhow!(
                "cannot reach the hub at {} for {file} from {repo} ({transport}): check the network connection \
                 (and HF_ENDPOINT or proxy settings); files already in the cache ({}) load with HF_HUB_OFFLINE=1",
                self.endpoint,
                self.cache.path().display()
            ))),
            ureq::Error::Status(404, answer) if answer.header("x-error-code") != Some("RepoNotFound") => {
                if let Some(commit) = answer.header("x-repo-commit") {
                    self.remember_absent(repo, commit, file);
                }
                Ok(Fetched::Absent)
            }
            ureq::Error::Status(code, answer) => Err(self.status_error(repo, file, code, &answer)),
        }
    }

    fn status_error(&self, repo: &str, file: &str, code: u16, answer: &ureq::Response) -> anyhow::Error {
        let said = answer.header("x-error-message").map(|m| format!(" (the hub says: {m})")).unwrap_or_default();
        let what = format!("the hub answered {code} {} for {file} from {repo}{said}", answer.status_text());
        let page = format!("{}/{repo}", self.endpoint);
        let login = format!("set HF_TOKEN to an access token from {}/settings/tokens", self.endpoint);
        match code {
            401 if self.token => anyhow!(
                "{what}: the repository does not exist, or the token (HF_TOKEN or the saved login) may not read it. \
                 Check the repo id ({page}) and the token"
            ),
            401 | 404 => anyhow!(
                "{what}: the repository does not exist, or it is private or gated and needs a login. \
                 Check the repo id ({page}); to log in, {login} (or run `huggingface-cli login`)"
            ),
            403 => anyhow!(
                "{what}: the repository is gated or your account has no access. Request access on {page} \
                 with the account whose token is in HF_TOKEN"
            ),
            429 => anyhow!("{what}: too many requests from this address; try again in a few minutes (or {login})"),
            500..=599 => anyhow!("{what}: a problem on the hub's side; try again later"),
            _ => anyhow!("{what}"),
        }
    }

    fn not_found(&self, repo: &str, what: &str) -> anyhow::Error {
        if self.offline {
            anyhow!(
                "HF_HUB_OFFLINE is set and the hub cache {} holds no {what} from {repo}: run once without \
                 HF_HUB_OFFLINE to download it, or pass a local model directory",
                self.cache.path().display()
            )
        } else {
            anyhow!("the hub has no {what} in {repo} (404 Not Found): check the repo id ({}/{repo})", self.endpoint)
        }
    }

    /// How much of a broken-off download is kept, and that the next run resumes it.
    fn resume_hint(&self, repo: &str) -> String {
        let blobs = self.repo_dir(repo).join("blobs");
        let kept = std::fs::read_dir(&blobs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
            .filter_map(|e| e.metadata().ok().map(|m| (m.modified().ok(), m.len(), e.path())))
            .max();
        match kept {
            Some((_, bytes, part)) if bytes > 0 => {
                format!("{bytes} bytes are kept in {}: run again to resume from there", part.display())
            }
            _ => "run again to retry".into(),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The blob a cache pointer links to, and the sha256 the hub listed for it: large files
/// (Git LFS, every weight file) are stored under their sha256, small ones under a git
/// hash this check does not cover.
fn lfs_blob(pointer: &Path) -> Option<(PathBuf, String)> {
    let target = std::fs::read_link(pointer).ok()?;
    let blob = pointer.parent()?.join(target);
    let name = blob.file_name()?.to_str()?.to_string();
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then_some((blob, name.to_ascii_lowercase()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes a cached file (its link and its blob) so that the next run downloads it anew.
fn evict(pointer: &Path, blob: &Path) {
    let _ = std::fs::remove_file(blob);
    let _ = std::fs::remove_file(pointer);
}

/// A download whose bytes are not those the hub listed (cut short, padded, altered on the
/// way) is removed and refused.
fn verify_download(repo: &str, file: &str, pointer: &Path) -> Result<()> {
    let Some((blob, listed)) = lfs_blob(pointer) else { return Ok(()) };
    let found = sha256_file(&blob)?;
    if found != listed {
        let size = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
        evict(pointer, &blob);
        bail!(
            "the download of {file} from {repo} is damaged: its {size} bytes have sha256 {found}, the hub lists \
             {listed}. It was removed from the cache: run again to download it anew"
        );
    }
    Ok(())
}

/// Adds to a failure to load `path` whether the file, if it came from the hub cache, is
/// still what the hub served. A damaged one is removed so that the next run fetches it.
pub fn explain_load_failure(path: &Path, error: anyhow::Error) -> anyhow::Error {
    let Some((blob, listed)) = lfs_blob(path) else { return error };
    match sha256_file(&blob) {
        Ok(found) if found != listed => {
            evict(path, &blob);
            error.context(format!(
                "{} in the hub cache is damaged (sha256 {found}, the hub lists {listed}); it was removed: \
                 run again to download it anew",
                path.display()
            ))
        }
        Ok(_) => error.context(format!("{} is intact, as the hub serves it, but cannot be used", path.display())),
        Err(_) => error,
    }
}
