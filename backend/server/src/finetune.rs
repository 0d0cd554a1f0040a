//! Fine-tuning inside the server: the admin starts a run on the taught examples, and a
//! model worker trains it one optimiser step at a time between request batches, on its
//! own device, so serving goes on (each step makes the requests waiting then wait one
//! step longer). Progress goes to subscribers ([`Teaching::subscribe`], the admin page's
//! event stream) and into the run's record; every epoch, and every
//! [`CHECKPOINT_EVERY`] steps, a checkpoint is written, so a restart continues the run
//! where the last one stopped and the steps it makes are the ones it would have made.
//!
//! How a run trains is the command's business (`borscht train`'s recipe): the server
//! sees it as a [`FinetuneRun`] built by a [`RunStarter`].

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::broadcast;

use super::dataset::Dataset;
use super::versions::{FinetuneSettings, HeldOut, RunRecord, RunStatus, Versions};
use borscht_pipelines::Engine;

/// Steps between checkpoints (an epoch's end always writes one).
pub const CHECKPOINT_EVERY: usize = 25;

/// What a run trains on and where it writes.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub version: String,
    /// The version's model directory (checkpoints included).
    pub out: PathBuf,
    /// The model it starts from.
    pub parent: PathBuf,
    /// Its training set: the article's CSV and the folder its paths start from.
    pub csv: PathBuf,
    pub images: PathBuf,
    pub settings: FinetuneSettings,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
}

/// What one [`FinetuneRun::advance`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum RunProgress {
    Step {
        step: usize,
        loss: f32,
    },
    /// An epoch ended (a checkpoint was written), with its held-out measure when due.
    EpochEnd(Option<HeldOut>),
    Finished,
}

/// A fine-tune as a worker drives it.
pub trait FinetuneRun: Send {
    /// One optimiser step, or an epoch's end.
    fn advance(&mut self) -> Result<RunProgress>;
    /// Writes a checkpoint of where it stands.
    fn save(&mut self) -> Result<()>;
    /// The model as it stands on the held-out rows (None without any).
    fn held_out(&self) -> Result<Option<HeldOut>>;
    fn step(&self) -> usize;
    fn total_steps(&self) -> usize;
}

/// Builds a run on a worker's device (reading and encoding its data there).
pub type RunStarter = Arc<dyn Fn(&RunSpec, &Engine) -> Result<Box<dyn FinetuneRun>> + Send + Sync>;

/// What the admin page hears.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TeachEvent {
    /// `started`, `step`, `epoch`, `finished`, `cancelled`, `failed`, `promoted`, `snapshot`.
    pub kind: String,
    /// The run it is about, as its record now stands.
    pub run: Option<RunRecord>,
    /// The version serving.
    pub active: String,
}

/// A run a worker is training.
pub struct ActiveRun {
    spec: RunSpec,
    run: Box<dyn FinetuneRun>,
    record: RunRecord,
    /// When this process started on it, and the seconds it had before.
    since: Instant,
    seconds_before: f64,
}

/// The teaching side of the server: the example store, the versions, and the run a
/// worker may pick up.
pub struct Teaching {
    pub dataset: Option<Arc<Dataset>>,
    pub versions: Option<Arc<Versions>>,
    starter: Option<RunStarter>,
    /// The operator's base data set (`--finetune-base-csv`), with its images folder.
    pub base_data: Option<(PathBuf, PathBuf)>,
    /// A run waiting for a worker.
    order: Mutex<Option<RunSpec>>,
    /// The version of the run queued or training (`starting` while a start writes its
    /// folder), if any.
    busy: Mutex<Option<String>>,
    cancel: AtomicBool,
    /// The server is stopping: a run in training writes its checkpoint and pauses.
    pausing: AtomicBool,
    /// A worker holds a run in training.
    training: AtomicBool,
    events: broadcast::Sender<TeachEvent>,
}

/// Nothing to teach with: no dataset, versions or trainer.
impl Default for Teaching {
    fn default() -> Self {
        Teaching::new(None, None, None, None)
    }
}

impl Teaching {
    pub fn new(
        dataset: Option<Arc<Dataset>>,
        versions: Option<Arc<Versions>>,
        starter: Option<RunStarter>,
        base_data: Option<(PathBuf, PathBuf)>,
    ) -> Teaching {
        Teaching {
            dataset,
            versions,
            starter,
            base_data,
            order: Mutex::new(None),
            busy: Mutex::new(None),
            cancel: AtomicBool::new(false),
            pausing: AtomicBool::new(false),
            training: AtomicBool::new(false),
            events: broadcast::channel(256).0,
        }
    }

    /// Why a fine-tune cannot start on this server, if so.
    pub fn unavailable(&self) -> Option<&'static str> {
        match (&self.dataset, &self.versions, &self.starter) {
            (None, _, _) => Some("this server keeps no examples: start it with --dataset DIR"),
            (_, None, _) => Some("this server keeps no model versions: start it with --models-dir DIR"),
            (_, _, None) => Some("this server cannot fine-tune"),
            _ => None,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TeachEvent> {
        self.events.subscribe()
    }

    /// The version of the run queued or training.
    pub fn busy(&self) -> Option<String> {
        self.busy.lock().expect("teaching lock").clone()
    }

    fn active_version(&self) -> String {
        self.versions.as_ref().map(|v| v.active()).unwrap_or_default()
    }

    pub fn announce(&self, kind: &str, run: Option<RunRecord>) {
        let _ = self.events.send(TeachEvent { kind: kind.into(), run, active: self.active_version() });
    }

    /// Claims the one place for a run before anything is written for it; refused while
    /// another is queued, runs or is being started.
    pub fn reserve(&self) -> Result<(), String> {
        let mut busy = self.busy.lock().expect("teaching lock");
        if let Some(version) = busy.as_ref() {
            return Err(format!("the fine-tune {version} is still running; cancel it or wait for it"));
        }
        *busy = Some("starting".into());
        Ok(())
    }

    /// Gives back a place [`Teaching::reserve`] claimed for a run that did not start.
    pub fn release(&self) {
        *self.busy.lock().expect("teaching lock") = None;
    }

    /// Queues a run, in the place reserved for it, for the first worker free.
    pub fn queue(&self, spec: RunSpec, record: &RunRecord) {
        *self.busy.lock().expect("teaching lock") = Some(spec.version.clone());
        self.cancel.store(false, Ordering::SeqCst);
        *self.order.lock().expect("teaching lock") = Some(spec);
        self.announce("started", Some(record.clone()));
    }

    /// Asks the run queued or training to stop (after its current step, with a
    /// checkpoint); false when there is none. A run no worker has taken up yet ends at once.
    pub fn cancel(&self) -> bool {
        let busy = self.busy.lock().expect("teaching lock");
        if busy.is_none() {
            return false;
        }
        if let Some(spec) = self.order.lock().expect("teaching lock").take() {
            drop(busy);
            if let Some(mut record) = self.versions.as_ref().and_then(|v| v.record(&spec.version).ok().flatten()) {
                record.status = RunStatus::Cancelled;
                if let Some(versions) = &self.versions {
                    let _ = versions.save_record(&record);
                }
                self.announce("cancelled", Some(record));
            }
            self.release();
            return true;
        }
        self.cancel.store(true, Ordering::SeqCst);
        true
    }

    /// For shutdown: the run in training writes its checkpoint and pauses (its record
    /// stays `running`, so the next start continues it exactly there). Waits for that up
    /// to `timeout`.
    pub async fn pause(&self, timeout: std::time::Duration) {
        self.pausing.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.training.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The run marked running in the records (the process stopped during it) continues;
    /// should several be (a crash while one was starting), the others are marked
    /// cancelled, to resume later.
    pub fn resume_interrupted(&self) -> Result<()> {
        let Some(versions) = &self.versions else { return Ok(()) };
        if self.unavailable().is_some() {
            return Ok(());
        }
        let mut running: Vec<RunRecord> =
            versions.records()?.into_iter().filter(|r| r.status == RunStatus::Running).collect();
        let Some(latest) = running.pop() else { return Ok(()) };
        for mut other in running {
            tracing::warn!(version = %other.version, "an interrupted fine-tune is left cancelled; resume it later");
            other.status = RunStatus::Cancelled;
            versions.save_record(&other)?;
        }
        tracing::info!(version = %latest.version, step = latest.step, "continuing the interrupted fine-tune");
        self.reserve().map_err(anyhow::Error::msg)?;
        self.queue(self.spec_of(&latest, true), &latest);
        Ok(())
    }

    /// The run a record describes, its data already in its folder.
    pub fn spec_of(&self, record: &RunRecord, resume: bool) -> RunSpec {
        let versions = self.versions.as_ref().expect("versions");
        let out = versions.path(&record.version);
        RunSpec {
            version: record.version.clone(),
            parent: versions.path(&record.parent),
            csv: out.join("data").join("food.csv"),
            images: out.join("data"),
            out,
            settings: record.settings.clone(),
            resume,
        }
    }

    /// For a worker between batches: takes up a queued run, or trains the one it has a
    /// step further. Returns the run still to train, if any.
    pub fn work(&self, engine: &Engine, active: Option<ActiveRun>) -> Option<ActiveRun> {
        let active = self.work_unmarked(engine, active);
        self.training.store(active.is_some(), Ordering::SeqCst);
        active
    }

    fn work_unmarked(&self, engine: &Engine, active: Option<ActiveRun>) -> Option<ActiveRun> {
        let pausing = self.pausing.load(Ordering::SeqCst);
        let mut active = match active {
            Some(active) if pausing => {
                self.park(active);
                return None;
            }
            Some(active) => active,
            None if pausing => return None,
            None => {
                let spec = self.order.lock().expect("teaching lock").take()?;
                return self.start(spec, engine);
            }
        };
        if self.cancel.load(Ordering::SeqCst) {
            let saved = active.run.save();
            active.record.status = RunStatus::Cancelled;
            if let Err(e) = saved {
                active.record.error = Some(format!("the last checkpoint could not be written: {e:#}"));
            }
            self.end(active, "cancelled");
            return None;
        }
        // A panic in training fails the run, never the worker that serves.
        let advanced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| active.run.advance()))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the training step panicked")));
        match advanced {
            Ok(RunProgress::Step { step, loss }) => {
                active.record.step = step;
                active.record.loss = Some(loss);
                if step.is_multiple_of(CHECKPOINT_EVERY) {
                    if let Err(e) = active.run.save() {
                        return self.fail(active, e.context("cannot write a checkpoint"));
                    }
                    self.persist(&mut active);
                }
                self.announce("step", Some(active.record.clone()));
                Some(active)
            }
            Ok(RunProgress::EpochEnd(held_out)) => {
                if held_out.is_some() {
                    active.record.after = held_out;
                }
                self.persist(&mut active);
                self.announce("epoch", Some(active.record.clone()));
                Some(active)
            }
            Ok(RunProgress::Finished) => {
                active.record.status = RunStatus::Finished;
                active.record.finished_at = Some(now());
                self.end(active, "finished");
                None
            }
            Err(e) => self.fail(active, e),
        }
    }

    /// A worker stopping (the server shuts down) leaves its run to the next start: a
    /// checkpoint now, the record still `running`.
    pub fn park(&self, mut active: ActiveRun) {
        match active.run.save() {
            Ok(()) => {
                tracing::info!(version = %active.spec.version, step = active.run.step(), "fine-tune checkpoint written; it continues at the next start")
            }
            Err(e) => tracing::warn!(version = %active.spec.version, "cannot write the fine-tune's checkpoint: {e:#}"),
        }
        self.persist(&mut active);
    }

    fn start(&self, spec: RunSpec, engine: &Engine) -> Option<ActiveRun> {
        let versions = self.versions.as_ref().expect("a queued run has versions");
        let mut record = match versions.record(&spec.version) {
            Ok(Some(record)) => record,
            Ok(None) | Err(_) => {
                tracing::error!(version = %spec.version, "the fine-tune's record is gone");
                *self.busy.lock().expect("teaching lock") = None;
                return None;
            }
        };
        let since = Instant::now();
        let seconds_before = record.train_seconds;
        let starter = self.starter.as_ref().expect("a queued run has a trainer");
        let start = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| starter(&spec, engine)));
        let built = start().unwrap_or_else(|_| Err(anyhow::anyhow!("preparing the run panicked"))).and_then(|run| {
            // The parent on the held-out rows, once: the run's first measure.
            if record.before.is_none() {
                record.before = run.held_out().context("cannot measure the model it starts from")?;
            }
            Ok(run)
        });
        let run = match built {
            Ok(run) => run,
            Err(e) => {
                record.status = RunStatus::Failed;
                record.error = Some(format!("{e:#}"));
                let _ = versions.save_record(&record);
                *self.busy.lock().expect("teaching lock") = None;
                tracing::warn!(version = %spec.version, "the fine-tune cannot start: {e:#}");
                self.announce("failed", Some(record));
                return None;
            }
        };
        record.step = run.step();
        record.total_steps = run.total_steps();
        if spec.resume {
            record.resumed_at.push(record.step);
        }
        let mut active = ActiveRun { spec, run, record, since, seconds_before };
        self.persist(&mut active);
        self.announce("step", Some(active.record.clone()));
        Some(active)
    }

    fn persist(&self, active: &mut ActiveRun) {
        active.record.train_seconds = active.seconds_before + active.since.elapsed().as_secs_f64();
        if let Some(versions) = &self.versions {
            if let Err(e) = versions.save_record(&active.record) {
                tracing::warn!(version = %active.spec.version, "cannot write the run's record: {e:#}");
            }
        }
    }

    fn fail(&self, mut active: ActiveRun, error: anyhow::Error) -> Option<ActiveRun> {
        tracing::warn!(version = %active.spec.version, "the fine-tune failed: {error:#}");
        active.record.status = RunStatus::Failed;
        active.record.error = Some(format!("{error:#}"));
        self.end(active, "failed");
        None
    }

    fn end(&self, mut active: ActiveRun, kind: &str) {
        self.persist(&mut active);
        tracing::info!(version = %active.spec.version, step = active.record.step, "fine-tune {kind}");
        *self.busy.lock().expect("teaching lock") = None;
        self.announce(kind, Some(active.record));
    }
}

/// Now, as RFC 3339 in UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use borscht_pipelines::random_model::random_engine;
    use candle_core::{DType, Device};
    use std::sync::atomic::AtomicUsize;

    /// What the scripted run does at each `advance`.
    #[derive(Clone, Copy)]
    enum Scripted {
        Step,
        Panic,
        Fail,
    }

    /// A run that follows a script and counts its checkpoints.
    struct ScriptedRun {
        script: Vec<Scripted>,
        step: usize,
        saves: Arc<AtomicUsize>,
    }

    impl FinetuneRun for ScriptedRun {
        fn advance(&mut self) -> Result<RunProgress> {
            let Some(&next) = self.script.get(self.step) else { return Ok(RunProgress::Finished) };
            match next {
                Scripted::Step => {
                    self.step += 1;
                    Ok(RunProgress::Step { step: self.step, loss: 1.0 / self.step as f32 })
                }
                Scripted::Panic => panic!("a training step went wrong"),
                Scripted::Fail => anyhow::bail!("out of memory"),
            }
        }
        fn save(&mut self) -> Result<()> {
            self.saves.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn held_out(&self) -> Result<Option<HeldOut>> {
            Ok(None)
        }
        fn step(&self) -> usize {
            self.step
        }
        fn total_steps(&self) -> usize {
            self.script.len()
        }
    }

    /// A server's teaching side over a temporary models folder. Its runs follow
    /// `scripts`, one each in turn (`None`: preparing that run panics).
    struct Fixture {
        _dir: tempfile::TempDir,
        teaching: Teaching,
        engine: Engine,
        starts: Arc<AtomicUsize>,
        saves: Arc<AtomicUsize>,
    }

    impl Fixture {
        fn new(scripts: Vec<Option<Vec<Scripted>>>) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let versions = Arc::new(Versions::open(&dir.path().join("models"), &dir.path().join("base")).unwrap());
            let (starts, saves) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (counted, run_saves) = (starts.clone(), saves.clone());
            let starter: RunStarter = Arc::new(move |_spec: &RunSpec, _engine: &Engine| {
                let started = counted.fetch_add(1, Ordering::SeqCst);
                let script = scripts[started].clone().expect("preparing the run went wrong");
                Ok(Box::new(ScriptedRun { script, step: 0, saves: run_saves.clone() }) as Box<dyn FinetuneRun>)
            });
            let teaching = Teaching::new(None, Some(versions), Some(starter), None);
            let engine = random_engine("tiny", &Device::Cpu, DType::F32).unwrap();
            Fixture { _dir: dir, teaching, engine, starts, saves }
        }

        /// Queues a run as the admin route does; returns its version.
        fn queue(&self) -> String {
            let versions = self.teaching.versions.as_ref().unwrap();
            self.teaching.reserve().unwrap();
            let record = RunRecord::new(
                versions.next_name().unwrap(),
                versions.active(),
                FinetuneSettings::default(),
                (3, 0),
                now(),
            );
            versions.save_record(&record).unwrap();
            self.teaching.queue(self.teaching.spec_of(&record, false), &record);
            record.version
        }

        fn record(&self, version: &str) -> RunRecord {
            self.teaching.versions.as_ref().unwrap().record(version).unwrap().unwrap()
        }

        /// Drives the run as a worker does between batches, at most `rounds` times.
        fn work(&self, mut active: Option<ActiveRun>, rounds: usize) -> Option<ActiveRun> {
            for _ in 0..rounds {
                active = self.teaching.work(&self.engine, active);
                if active.is_none() {
                    break;
                }
            }
            active
        }
    }

    fn kinds(events: &mut broadcast::Receiver<TeachEvent>) -> Vec<String> {
        std::iter::from_fn(|| events.try_recv().ok()).map(|event| event.kind).collect()
    }

    #[test]
    fn a_run_trains_to_its_end_and_frees_the_place() {
        let fixture = Fixture::new(vec![Some(vec![Scripted::Step; 3])]);
        let mut events = fixture.teaching.subscribe();
        let version = fixture.queue();
        assert!(fixture.work(None, 10).is_none());
        let record = fixture.record(&version);
        assert_eq!(record.status, RunStatus::Finished);
        assert_eq!((record.step, record.total_steps), (3, 3));
        assert_eq!(kinds(&mut events), ["started", "step", "step", "step", "step", "finished"]);
        assert_eq!(fixture.teaching.busy(), None);
        fixture.teaching.reserve().expect("the next run may start");
    }

    #[test]
    fn a_panicking_training_step_fails_the_run_not_the_worker() {
        let fixture =
            Fixture::new(vec![Some(vec![Scripted::Step, Scripted::Panic, Scripted::Step]), Some(vec![Scripted::Step])]);
        let mut events = fixture.teaching.subscribe();
        let version = fixture.queue();
        // The panic is caught inside `work`: the worker's thread goes on serving.
        assert!(fixture.work(None, 10).is_none());
        let record = fixture.record(&version);
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(record.step, 1);
        assert_eq!(record.error.as_deref(), Some("the training step panicked"));
        assert_eq!(kinds(&mut events).last().map(String::as_str), Some("failed"));
        assert_eq!(fixture.teaching.busy(), None);
        // The next run starts and finishes as if nothing had happened.
        let next = fixture.queue();
        assert!(fixture.work(None, 10).is_none());
        assert_eq!(fixture.record(&next).status, RunStatus::Finished);
    }

    #[test]
    fn an_error_in_a_step_is_kept_in_the_record() {
        let fixture = Fixture::new(vec![Some(vec![Scripted::Fail])]);
        let version = fixture.queue();
        assert!(fixture.work(None, 10).is_none());
        let record = fixture.record(&version);
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(record.error.as_deref(), Some("out of memory"));
    }

    #[test]
    fn a_panic_while_preparing_the_run_fails_it() {
        let fixture = Fixture::new(vec![None]);
        let version = fixture.queue();
        assert!(fixture.work(None, 10).is_none());
        let record = fixture.record(&version);
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(record.error.as_deref(), Some("preparing the run panicked"));
        assert_eq!(fixture.teaching.busy(), None);
    }

    #[test]
    fn a_queued_run_cancelled_before_a_worker_takes_it_never_starts() {
        let fixture = Fixture::new(vec![Some(vec![Scripted::Step; 3])]);
        let mut events = fixture.teaching.subscribe();
        let version = fixture.queue();
        assert!(fixture.teaching.cancel());
        assert_eq!(fixture.record(&version).status, RunStatus::Cancelled);
        assert_eq!(fixture.teaching.busy(), None);
        assert!(fixture.work(None, 10).is_none(), "nothing is left to train");
        assert_eq!(fixture.starts.load(Ordering::SeqCst), 0);
        assert_eq!(kinds(&mut events), ["started", "cancelled"]);
        assert!(!fixture.teaching.cancel(), "nothing is left to cancel");
    }

    #[test]
    fn a_run_cancelled_while_training_writes_its_checkpoint_and_stops() {
        let fixture = Fixture::new(vec![Some(vec![Scripted::Step; 10])]);
        let version = fixture.queue();
        let active = fixture.work(None, 3).expect("still training");
        assert!(fixture.teaching.cancel());
        assert_eq!(fixture.saves.load(Ordering::SeqCst), 0);
        assert!(fixture.work(Some(active), 10).is_none());
        let record = fixture.record(&version);
        assert_eq!(record.status, RunStatus::Cancelled);
        assert_eq!(record.step, 2, "the start and two steps, then the cancel");
        assert_eq!(fixture.saves.load(Ordering::SeqCst), 1);
        assert_eq!(fixture.teaching.busy(), None);
    }

    #[test]
    fn pausing_parks_the_run_with_a_checkpoint_and_its_record_still_running() {
        let fixture = Fixture::new(vec![Some(vec![Scripted::Step; 10])]);
        let version = fixture.queue();
        let active = fixture.work(None, 4).expect("still training");
        fixture.teaching.pausing.store(true, Ordering::SeqCst);
        assert!(fixture.work(Some(active), 1).is_none());
        assert!(!fixture.teaching.training.load(Ordering::SeqCst));
        let record = fixture.record(&version);
        assert_eq!((record.status, record.step), (RunStatus::Running, 3));
        assert_eq!(fixture.saves.load(Ordering::SeqCst), 1);
        assert_eq!(fixture.teaching.busy(), Some(version), "the run is the next start's to continue");
    }

    #[test]
    fn a_checkpoint_is_written_every_few_steps() {
        let fixture = Fixture::new(vec![Some(vec![Scripted::Step; 2 * CHECKPOINT_EVERY + 1])]);
        fixture.queue();
        let active = fixture.work(None, 2 * CHECKPOINT_EVERY + 1).expect("one step left");
        assert_eq!(fixture.saves.load(Ordering::SeqCst), 2);
        assert!(fixture.work(Some(active), 10).is_none());
    }
}
