//! Model versions (`borscht serve --models-dir DIR`): the model the server was started
//! with is `base`; every fine-tune writes a complete model directory `DIR/v1`, `DIR/v2`, …
//! with its record ([`RunRecord`], `run.json`: settings, progress, held-out metrics before
//! and after). The admin promotes a finished version and the workers swap to it between
//! batches, or rolls back to the one before. Which one serves is kept in
//! `DIR/versions.json`, so a restart serves it again.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// The name of the model the server was started with.
pub const BASE: &str = "base";
const REGISTRY_FILE: &str = "versions.json";
pub const RECORD_FILE: &str = "run.json";

/// What the held-out rows say of a model: greedy captions against the true ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeldOut {
    pub samples: usize,
    /// Share of captions naming the right dish.
    pub dish_accuracy: f64,
    /// Mean absolute kcal error where the caption states kcal.
    pub kcal_mae: Option<f64>,
}

/// Where a fine-tune stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Queued or training (after a restart it continues from its last checkpoint).
    Running,
    /// Stopped by the admin; its checkpoint can be resumed.
    Cancelled,
    Failed,
    /// A complete model version, ready to promote.
    Finished,
}

/// How a fine-tune trains: `borscht train`'s recipe with these settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSettings {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Peak learning rate (OneCycle).
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Weight groups kept fixed: `article` (attention and MLP, the article's recipe),
    /// `none`, or a list as `borscht train --freeze` takes it.
    #[serde(default = "default_freeze")]
    pub freeze: String,
    /// Train on the operator's base data set too (`--finetune-base-csv`), not only on
    /// the taught examples.
    #[serde(default)]
    pub include_base: bool,
    /// Share of the rows held out to measure the versions on.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_epochs() -> usize {
    5
}
fn default_lr() -> f64 {
    2e-5
}
fn default_batch_size() -> usize {
    10
}
fn default_freeze() -> String {
    "article".into()
}
fn default_val_fraction() -> f64 {
    0.2
}

impl Default for FinetuneSettings {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl FinetuneSettings {
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.epochs) {
            return Err(format!("epochs must be 1 to 1000, not {}", self.epochs));
        }
        if !(1..=256).contains(&self.batch_size) {
            return Err(format!("batch_size must be 1 to 256, not {}", self.batch_size));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 1.0) {
            return Err(format!("lr must be above 0 and at most 1, not {}", self.lr));
        }
        if !(0.0..0.9).contains(&self.val_fraction) {
            return Err(format!("val_fraction must be at least 0 and below 0.9, not {}", self.val_fraction));
        }
        if self.freeze.len() > 100 {
            return Err("freeze is too long".into());
        }
        Ok(())
    }
}

/// One fine-tune and the version it makes (`DIR/<version>/run.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub version: String,
    /// The version it started from.
    pub parent: String,
    pub status: RunStatus,
    pub settings: FinetuneSettings,
    /// Taught examples, and base rows, in its training set.
    pub examples: usize,
    pub base_rows: usize,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub step: usize,
    pub total_steps: usize,
    /// The last step's loss.
    pub loss: Option<f32>,
    /// The parent and this version on the same held-out rows.
    pub before: Option<HeldOut>,
    pub after: Option<HeldOut>,
    /// Seconds spent training so far (preparing the data included).
    pub train_seconds: f64,
    /// The steps it continued from, each time it was resumed (after a restart or a cancel).
    #[serde(default)]
    pub resumed_at: Vec<usize>,
    pub error: Option<String>,
}

impl RunRecord {
    /// A run about to start from `parent`: running, nothing trained or measured yet.
    pub fn new(
        version: String,
        parent: String,
        settings: FinetuneSettings,
        (examples, base_rows): (usize, usize),
        started_at: String,
    ) -> RunRecord {
        RunRecord {
            version,
            parent,
            status: RunStatus::Running,
            settings,
            examples,
            base_rows,
            started_at,
            finished_at: None,
            step: 0,
            total_steps: 0,
            loss: None,
            before: None,
            after: None,
            train_seconds: 0.0,
            resumed_at: Vec::new(),
            error: None,
        }
    }
}

/// Which version serves, and the ones rolled back to in turn.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Registry {
    active: String,
    /// Versions promoted before the active one, oldest first.
    previous: Vec<String>,
}

/// The version the workers should serve: a change bumps `generation`.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub generation: u64,
    pub name: String,
    /// The model directory (for `base`, the model the server was started with).
    pub path: PathBuf,
}

/// The versions in `--models-dir`.
pub struct Versions {
    dir: PathBuf,
    base: PathBuf,
    registry: Mutex<Registry>,
    wanted: RwLock<Wanted>,
    generation: AtomicU64,
}

impl Versions {
    /// Opens `dir` (creating it); `base` is the model the server was started with. The
    /// version promoted last serves again.
    pub fn open(dir: &Path, base: &Path) -> Result<Versions> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the models folder {}", dir.display()))?;
        let registry_path = dir.join(REGISTRY_FILE);
        let mut registry: Registry = match std::fs::read_to_string(&registry_path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a version registry", registry_path.display()))?,
            Err(_) => Registry { active: BASE.into(), previous: Vec::new() },
        };
        let version_dir = |name: &str| if name == BASE { base.to_path_buf() } else { dir.join(name) };
        if registry.active != BASE && !version_dir(&registry.active).join(RECORD_FILE).is_file() {
            tracing::warn!("the promoted version {} is missing; serving {BASE}", registry.active);
            registry = Registry { active: BASE.into(), previous: Vec::new() };
        }
        let wanted = Wanted { generation: 0, name: registry.active.clone(), path: version_dir(&registry.active) };
        Ok(Versions {
            dir: dir.to_path_buf(),
            base: base.to_path_buf(),
            registry: Mutex::new(registry),
            wanted: RwLock::new(wanted),
            generation: AtomicU64::new(0),
        })
    }

    /// The model directory of a version.
    pub fn path(&self, name: &str) -> PathBuf {
        if name == BASE {
            self.base.clone()
        } else {
            self.dir.join(name)
        }
    }

    pub fn wanted(&self) -> Wanted {
        self.wanted.read().expect("versions lock").clone()
    }

    /// The generation workers compare against theirs (cheap, every loop).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> String {
        self.registry.lock().expect("versions lock").active.clone()
    }

    /// Every fine-tune's record, oldest first.
    pub fn records(&self) -> Result<Vec<RunRecord>> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path().join(RECORD_FILE);
            if path.is_file() {
                match read_record(&path) {
                    Ok(record) => records.push(record),
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        }
        records.sort_by_key(|r| version_number(&r.version));
        Ok(records)
    }

    pub fn record(&self, name: &str) -> Result<Option<RunRecord>> {
        if !valid_name(name) || name == BASE {
            return Ok(None);
        }
        let path = self.dir.join(name).join(RECORD_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        read_record(&path).map(Some)
    }

    /// Writes a run's record (whole, or not at all).
    pub fn save_record(&self, record: &RunRecord) -> Result<()> {
        let dir = self.dir.join(&record.version);
        std::fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec_pretty(record)?;
        borscht_pipelines::write_atomically(&dir.join(RECORD_FILE), |p| Ok(std::fs::write(p, &json)?))
    }

    /// The name the next fine-tune gets: one past the highest so far.
    pub fn next_name(&self) -> Result<String> {
        let highest = self.records()?.iter().map(|r| version_number(&r.version)).max().unwrap_or(0);
        Ok(format!("v{}", highest + 1))
    }

    /// Serves `name` from the next batch on; the one serving now can be rolled back to.
    pub fn promote(&self, name: &str) -> Result<Wanted> {
        if name != BASE {
            match self.record(name)? {
                Some(record) if record.status == RunStatus::Finished => {}
                Some(record) => bail!("{name} is {:?}, not finished: only a finished version can serve", record.status),
                None => bail!("there is no version {name}"),
            }
        }
        let mut registry = self.registry.lock().expect("versions lock");
        if registry.active == name {
            return Ok(self.wanted());
        }
        let mut next = registry.clone();
        next.previous.push(std::mem::replace(&mut next.active, name.to_string()));
        self.commit(&mut registry, next)
    }

    /// Serves the version promoted before the active one again.
    pub fn rollback(&self) -> Result<Wanted> {
        let mut registry = self.registry.lock().expect("versions lock");
        let mut next = registry.clone();
        let Some(previous) = next.previous.pop() else {
            bail!("nothing to roll back to: {} is the first", next.active)
        };
        next.active = previous;
        self.commit(&mut registry, next)
    }

    /// Serves `base` again, forgetting the promotions (the version promoted last no
    /// longer loads).
    pub fn reset_to_base(&self) -> Result<Wanted> {
        let mut registry = self.registry.lock().expect("versions lock");
        self.commit(&mut registry, Registry { active: BASE.into(), previous: Vec::new() })
    }

    fn commit(&self, registry: &mut Registry, next: Registry) -> Result<Wanted> {
        let json = serde_json::to_vec_pretty(&next)?;
        borscht_pipelines::write_atomically(&self.dir.join(REGISTRY_FILE), |p| Ok(std::fs::write(p, &json)?))?;
        *registry = next;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let wanted = Wanted { generation, name: registry.active.clone(), path: self.path(&registry.active) };
        *self.wanted.write().expect("versions lock") = wanted.clone();
        Ok(wanted)
    }
}

fn read_record(path: &Path) -> Result<RunRecord> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a run record", path.display()))
}

fn version_number(name: &str) -> u64 {
    name.strip_prefix('v').and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Version names are ours (`base`, `v<n>`): anything else is refused before it meets a path.
pub fn valid_name(name: &str) -> bool {
    name == BASE || (name.len() <= 12 && version_number(name) > 0 && name[1..].bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, status: RunStatus) -> RunRecord {
        let started = "2026-12-05T00:00:00Z".to_string();
        let record = RunRecord::new(version.into(), BASE.into(), FinetuneSettings::default(), (3, 0), started);
        RunRecord { status, total_steps: 1, ..record }
    }

    #[test]
    fn promotion_and_rollback_are_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("demo");
        let versions = Versions::open(&dir.path().join("models"), &base).unwrap();
        assert_eq!((versions.active(), versions.wanted().path), (BASE.to_string(), base.clone()));
        assert_eq!(versions.next_name().unwrap(), "v1");
        versions.save_record(&record("v1", RunStatus::Finished)).unwrap();
        versions.save_record(&record("v2", RunStatus::Running)).unwrap();
        assert_eq!(versions.next_name().unwrap(), "v3");
        let error = versions.promote("v2").unwrap_err().to_string();
        assert!(error.contains("not finished"), "{error}");
        assert!(versions.promote("v7").unwrap_err().to_string().contains("no version v7"));
        let wanted = versions.promote("v1").unwrap();
        assert_eq!((wanted.generation, wanted.name.as_str()), (1, "v1"));
        assert_eq!(wanted.path, dir.path().join("models/v1"));

        let reopened = Versions::open(&dir.path().join("models"), &base).unwrap();
        assert_eq!(reopened.active(), "v1");
        let back = reopened.rollback().unwrap();
        assert_eq!((back.name.as_str(), back.path), (BASE, base));
        assert!(reopened.rollback().unwrap_err().to_string().contains("nothing to roll back"));
    }

    #[test]
    fn names_never_reach_a_path_unchecked() {
        for good in ["base", "v1", "v12"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "v", "v0", "v1/..", "../v1", "vx", "base2", "v1.json"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let settings: Result<FinetuneSettings, _> = serde_json::from_str(r#"{"epochs": 3, "path": "/etc"}"#);
        assert!(settings.is_err(), "unknown settings are refused");
        assert!(FinetuneSettings { epochs: 0, ..Default::default() }.check().is_err());
        assert!(FinetuneSettings { lr: f64::NAN, ..Default::default() }.check().is_err());
        assert!(FinetuneSettings::default().check().is_ok());
    }
}
