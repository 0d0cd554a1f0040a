//! The model workers: one OS thread per device owns a copy of the model, and all of
//! them serve the one queue (`borscht serve --device cuda:0,cuda:1`). Each takes its
//! own batches, so a batch never spans devices.
//!
//! Recognise requests waiting together form one batch: their captions are rows of
//! the same forward passes ([`caption_batch`]), each request keeping its own random
//! stream and getting its candidates as they finish. Other requests run one at a
//! time between batches. Cancelled requests (or ones whose client left) are dropped
//! at the next decoding step.

use anyhow::{Context, Result};
use base64::Engine as _;
use borscht_protocol::{ErrorCode, ServerMessage};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::finetune::{ActiveRun, Teaching};
use super::job::{Job, Task};
use super::metrics::Metrics;
use super::queue::{Next, QueueReceiver};
use super::wire;
use borscht_pipelines::engine::UnknownCharacters;
use borscht_pipelines::generation::{
    caption_batch, generate_image, generate_texts, Cancelled, CaptionJob, CaptionOptions, GenerationEvent,
    ImageOptions, TextOptions,
};
use borscht_pipelines::nutrition::parse_caption;
use borscht_pipelines::recognize::answers;
use borscht_pipelines::sampling::{SamplingParams, DEFAULT_SEED};
use borscht_pipelines::scoring::{classify_with, DEFAULT_BATCH};
use borscht_pipelines::Engine;

/// Whether the model can serve (`/readyz`).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelStatus {
    Loading,
    /// Serving `name`, which knows `dishes`.
    Ready {
        name: String,
        dishes: Arc<Vec<borscht_protocol::Dish>>,
    },
    Failed(String),
}

/// The workers' state as the rest of the server sees it: ready once one device has
/// loaded the model (the others join as they load), failed when every device failed.
#[derive(Clone)]
pub struct WorkerHandle {
    /// Each device's status, in the order the devices were given.
    statuses: Arc<Vec<RwLock<ModelStatus>>>,
    devices: Arc<Vec<String>>,
    /// Workers that have not failed; the last one to fail answers what waits.
    alive: Arc<AtomicUsize>,
    /// Jobs queued or running; shutdown waits for it to reach zero.
    in_flight: Arc<AtomicUsize>,
    /// The side of the square pictures the model reads (0 while it loads).
    input_side: Arc<AtomicU32>,
    /// Each device's model version: the generation it serves ([`super::versions`]),
    /// and the last swap that failed there.
    loaded: Arc<Vec<RwLock<Loaded>>>,
}

/// The model version a worker serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub generation: u64,
    /// The generation it could not swap to, and why.
    pub failed: Option<(u64, String)>,
}

impl WorkerHandle {
    pub fn status(&self) -> ModelStatus {
        let statuses = self.device_statuses();
        if let Some((_, ready)) = statuses.iter().find(|(_, s)| matches!(s, ModelStatus::Ready { .. })) {
            return ready.clone();
        }
        if statuses.iter().all(|(_, s)| matches!(s, ModelStatus::Failed(_))) {
            let several = statuses.len() > 1;
            let messages: Vec<String> = statuses
                .into_iter()
                .map(|(device, status)| match status {
                    ModelStatus::Failed(message) if several => format!("{device}: {message}"),
                    ModelStatus::Failed(message) => message,
                    _ => unreachable!("all failed"),
                })
                .collect();
            return ModelStatus::Failed(messages.join("; "));
        }
        ModelStatus::Loading
    }

    /// Each device with its worker's status, in the order the devices were given.
    pub fn device_statuses(&self) -> Vec<(String, ModelStatus)> {
        self.devices
            .iter()
            .cloned()
            .zip(self.statuses.iter().map(|status| status.read().expect("status lock").clone()))
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The side uploads are shrunk to: the model's input side once it is loaded.
    pub fn input_side(&self) -> u32 {
        match self.input_side.load(Ordering::Relaxed) {
            0 => super::job::LOADING_SIDE,
            side => side,
        }
    }

    /// Each device's model version, in the order the devices were given.
    pub fn loaded(&self) -> Vec<Loaded> {
        self.loaded.iter().map(|l| l.read().expect("loaded lock").clone()).collect()
    }

    /// Call when a job is queued; the worker counts it down when the job ends.
    pub fn job_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    pub fn job_refused(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Builds the engine on the worker thread (loading can take a while) and names it.
pub type EngineLoader = Box<dyn FnOnce() -> Result<(Engine, String)> + Send>;

/// Loads another model version (a directory) on the worker's device, for a hot swap.
pub type VersionLoader = Box<dyn Fn(&std::path::Path) -> Result<Engine> + Send>;

/// One device's worker: what it is called in logs and metrics, and how it loads its
/// copy of the model (and other versions of it, when the server keeps versions).
pub struct DeviceLoader {
    pub device: String,
    pub load: EngineLoader,
    pub load_version: Option<VersionLoader>,
}

/// Starts one worker thread per device; each ends when every queue sender is gone.
pub fn spawn_workers(
    loaders: Vec<DeviceLoader>,
    receiver: QueueReceiver,
    metrics: Metrics,
    max_batch: usize,
    input_side: Option<u32>,
    teaching: Arc<Teaching>,
) -> (WorkerHandle, Vec<std::thread::JoinHandle<()>>) {
    assert!(!loaders.is_empty(), "at least one device");
    let handle = WorkerHandle {
        statuses: Arc::new(loaders.iter().map(|_| RwLock::new(ModelStatus::Loading)).collect()),
        devices: Arc::new(loaders.iter().map(|l| l.device.clone()).collect()),
        alive: Arc::new(AtomicUsize::new(loaders.len())),
        in_flight: Arc::new(AtomicUsize::new(0)),
        input_side: Arc::new(AtomicU32::new(input_side.unwrap_or(0))),
        loaded: Arc::new(loaders.iter().map(|_| RwLock::new(Loaded::default())).collect()),
    };
    let threads = loaders
        .into_iter()
        .enumerate()
        .map(|(index, DeviceLoader { device, load, load_version })| {
            let worker = Worker {
                receiver: receiver.clone(),
                metrics: metrics.clone(),
                max_batch: max_batch.max(1),
                handle: handle.clone(),
                index,
                device,
                teaching: teaching.clone(),
                load_version,
            };
            std::thread::Builder::new()
                .name(format!("model-worker-{index}"))
                .spawn(move || match compute_pool(index) {
                    Ok(pool) => pool.install(|| worker.run(load)),
                    Err(e) => {
                        tracing::warn!("model worker {index} runs without a thread pool of its own: {e}");
                        worker.run(load)
                    }
                })
                .expect("the model worker thread starts")
        })
        .collect();
    (handle, threads)
}

/// A worker's own rayon pool, as many threads as the CPUs: the worker's loop runs on one
/// of them, so the kernels' and matrix products' parallel parts start there and the
/// others steal them (handing every part over from outside a pool made the tiny preset's
/// captioning twice as slow). Its own pool, not the global one, because the loop waits
/// for requests: waiting on a global pool's thread would hold that thread from everyone
/// else's parallel work.
fn compute_pool(index: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().thread_name(move |i| format!("model-worker-{index}-{i}")).build()
}

struct Worker {
    receiver: QueueReceiver,
    metrics: Metrics,
    max_batch: usize,
    handle: WorkerHandle,
    /// This worker's place among the devices, and its device.
    index: usize,
    device: String,
    teaching: Arc<Teaching>,
    load_version: Option<VersionLoader>,
}

impl Worker {
    fn set_status(&self, status: ModelStatus) {
        *self.handle.statuses[self.index].write().expect("status lock") = status;
    }

    /// Counts a request this worker ended, under its device.
    fn count_on_device(&self, kind: &str) {
        let worker = self.index.to_string();
        self.metrics.device_requests.with_label_values(&[&worker, &self.device, kind]).inc();
    }

    fn run(mut self, load: EngineLoader) {
        // A promoted fine-tune serves again after a restart; should it no longer load,
        // the model the server was started with serves, and the versions say so.
        let promoted = self.teaching.versions.as_ref().map(|v| v.wanted()).filter(|w| w.name != super::versions::BASE);
        let loaded = match promoted.map(|wanted| (self.load_version(&wanted.path), wanted)) {
            Some((Ok(engine), wanted)) => {
                self.set_loaded(Loaded { generation: wanted.generation, failed: None });
                Ok((engine, format!("{} ({})", wanted.path.display(), wanted.name)))
            }
            Some((Err(e), wanted)) => {
                tracing::error!(device = %self.device, version = %wanted.name, "the promoted version does not load ({e:#}); serving the model the server was started with");
                if let Some(versions) = self.teaching.versions.as_ref() {
                    if let Err(e) = versions.reset_to_base() {
                        tracing::error!("{e:#}");
                    }
                    self.set_loaded(Loaded { generation: versions.generation(), failed: None });
                }
                load()
            }
            None => load(),
        };
        let mut engine = match loaded {
            Ok((engine, name)) => {
                tracing::info!(model = %name, device = %self.device, "model loaded");
                self.handle.input_side.store(engine.image_size(), Ordering::Relaxed);
                self.set_status(ModelStatus::Ready { name, dishes: Arc::new(engine.dishes.clone()) });
                engine
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(device = %self.device, "cannot load the model: {message}");
                self.set_status(ModelStatus::Failed(message.clone()));
                if self.handle.alive.fetch_sub(1, Ordering::SeqCst) > 1 {
                    // Another device serves (or may yet): leave the queue to it.
                    return;
                }
                let message = match self.handle.status() {
                    ModelStatus::Failed(every_device) => every_device,
                    _ => message,
                };
                while let Some(job) = self.receiver.blocking_next() {
                    self.finish(&job, Outcome::Error(ErrorCode::Unavailable, format!("no model loaded: {message}")));
                }
                return;
            }
        };
        let is_recognize = |job: &Job| matches!(job.task, Task::Recognize { .. });
        let mut training: Option<ActiveRun> = None;
        loop {
            self.swap_if_promoted(&mut engine);
            // With a fine-tune to train, a look at the queue; on a server that keeps
            // versions, a wait woken now and then to see whether one was started or
            // promoted; otherwise a wait for the next request.
            let wait = match (&training, &self.teaching.versions) {
                (Some(_), _) => Some(Duration::ZERO),
                (None, Some(_)) => Some(IDLE_CHECK),
                (None, None) => None,
            };
            match self.receiver.next_within(wait) {
                Next::Closed => break,
                Next::Idle => {}
                Next::Job(first) if !is_recognize(&first) => self.run_one(&engine, *first),
                Next::Job(first) => {
                    // Recognise requests waiting now join this batch (in the queue's fair
                    // order); others wait their turn.
                    let mut batch = vec![*first];
                    while batch.len() < self.max_batch {
                        match self.receiver.try_next_where(is_recognize) {
                            Some(job) => batch.push(job),
                            None => break,
                        }
                    }
                    self.run_recognize_batch(&engine, batch);
                }
            }
            // One training step between batches.
            training = self.teaching.work(&engine, training.take());
        }
        if let Some(run) = training {
            self.teaching.park(run);
        }
        tracing::info!(device = %self.device, "model worker stopped");
    }

    fn load_version(&self, path: &std::path::Path) -> Result<Engine> {
        let load = self.load_version.as_ref().ok_or_else(|| anyhow::anyhow!("this worker cannot load versions"))?;
        load(path).with_context(|| format!("cannot load the model version in {}", path.display()))
    }

    fn set_loaded(&self, loaded: Loaded) {
        *self.handle.loaded[self.index].write().expect("loaded lock") = loaded;
    }

    /// Swaps to the version the admin promoted, between batches: what ran finished on
    /// the old model, what comes next gets the new one. A version that fails to load
    /// leaves the old one serving and says why.
    fn swap_if_promoted(&self, engine: &mut Engine) {
        let Some(versions) = self.teaching.versions.as_ref() else { return };
        let current = self.handle.loaded[self.index].read().expect("loaded lock").clone();
        let generation = versions.generation();
        if generation == current.generation || current.failed.as_ref().is_some_and(|(g, _)| *g == generation) {
            return;
        }
        let wanted = versions.wanted();
        match self.load_version(&wanted.path) {
            Ok(new) => {
                *engine = new;
                tracing::info!(device = %self.device, version = %wanted.name, "now serving model version {}", wanted.name);
                let name = match self.handle.status() {
                    ModelStatus::Ready { name, .. } => name,
                    _ => wanted.name.clone(),
                };
                self.set_status(ModelStatus::Ready { name, dishes: Arc::new(engine.dishes.clone()) });
                self.set_loaded(Loaded { generation: wanted.generation, failed: None });
            }
            Err(e) => {
                tracing::error!(device = %self.device, version = %wanted.name, "cannot swap: {e:#}");
                self.set_loaded(Loaded { failed: Some((wanted.generation, format!("{e:#}"))), ..current });
            }
        }
    }

    fn finish(&self, job: &Job, outcome: Outcome) {
        let kind = job.task.kind();
        let (label, message) = match outcome {
            Outcome::Done(message) => ("ok", *message),
            Outcome::Cancelled => ("cancelled", ServerMessage::Cancelled { id: job.id }),
            Outcome::Error(code, text) => ("error", ServerMessage::request_error(job.id, code, text)),
        };
        if let ServerMessage::Error { code, message: text, .. } = &message {
            // The server's own failures are for the operator; a client's bad request is
            // its own business (one connection can send thousands a second).
            if matches!(code, ErrorCode::Internal) {
                tracing::warn!(id = job.id, kind, client = %job.client, "request failed: {text}");
            } else {
                tracing::debug!(id = job.id, kind, client = %job.client, "request refused ({code:?}): {text}");
            }
        }
        // Counted before the answer goes out, so a client that reads it sees the metrics agree.
        self.metrics.requests.with_label_values(&[kind, label]).inc();
        self.count_on_device(kind);
        self.metrics.latency.with_label_values(&[kind]).observe(job.enqueued.elapsed().as_secs_f64());
        job.release_slot();
        job.send(message);
        self.handle.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn started(&self, job: &Job) {
        self.metrics.queue_wait.observe(job.enqueued.elapsed().as_secs_f64());
    }

    fn run_recognize_batch(&self, engine: &Engine, batch: Vec<Job>) {
        let mut live: Vec<(Job, Vec<u32>, CaptionOptions, Option<f32>)> = Vec::new();
        for job in batch {
            self.started(&job);
            if job.is_cancelled() {
                self.finish(&job, Outcome::Cancelled);
                continue;
            }
            let Task::Recognize { image, template, n, portion_g } = &job.task else {
                unreachable!("batch of recognise")
            };
            let codes = engine.photo_codes(image);
            match codes {
                Ok(codes) => {
                    // A fixed seed: the same photo gets the same answer.
                    let options = CaptionOptions {
                        template: template.clone(),
                        count: *n,
                        seed: DEFAULT_SEED,
                        ..Default::default()
                    };
                    let portion = *portion_g;
                    live.push((job, codes, options, portion));
                }
                Err(e) => self.finish(&job, Outcome::Error(ErrorCode::Internal, format!("{e:#}"))),
            }
        }
        if live.is_empty() {
            return;
        }
        self.metrics.batch_requests.observe(live.len() as f64);
        let jobs: Vec<CaptionJob> = live
            .iter()
            .map(|(job, codes, options, _)| CaptionJob { codes, options, stop: Some(job.cancel.as_ref()) })
            .collect();
        let results = caption_batch(engine, &jobs, |k, event| {
            let job = &live[k].0;
            match event {
                GenerationEvent::Text { text, .. } => {
                    let nutrition = parse_caption(&text);
                    job.send(ServerMessage::Candidate { id: job.id, text, nutrition });
                }
                GenerationEvent::Progress { step, total, .. } => {
                    job.send(ServerMessage::Progress { id: job.id, step: step as u32, total: total as u32 });
                }
                GenerationEvent::ImagePreview { .. } => {}
            }
            if job.events.is_closed() {
                job.cancel.store(true, Ordering::Relaxed);
            }
        });
        // The captions of every request that got them are re-ranked in shared batches too.
        let (mut sampled, mut photos) = (Vec::new(), Vec::new());
        for ((job, codes, _, portion_g), captions) in live.iter().zip(results) {
            match captions {
                Ok(captions) => {
                    sampled.push((job, *portion_g));
                    photos.push((codes.as_slice(), captions));
                }
                Err(e) => self.finish(job, Outcome::of(Err(e))),
            }
        }
        if sampled.is_empty() {
            return;
        }
        match answers(engine, photos) {
            Ok(recognitions) => {
                for ((job, portion_g), result) in sampled.into_iter().zip(recognitions) {
                    let recognition = wire::recognition(&result, portion_g);
                    self.finish(job, Outcome::Done(Box::new(ServerMessage::Result { id: job.id, recognition })));
                }
            }
            Err(e) => {
                for (job, _) in sampled {
                    self.finish(job, Outcome::Error(ErrorCode::Internal, format!("{e:#}")));
                }
            }
        }
    }

    fn run_one(&self, engine: &Engine, job: Job) {
        self.started(&job);
        if job.is_cancelled() {
            self.finish(&job, Outcome::Cancelled);
            return;
        }
        self.metrics.batch_requests.observe(1.0);
        self.finish(&job, Outcome::of(self.serve(engine, &job)));
    }

    fn serve(&self, engine: &Engine, job: &Job) -> Result<ServerMessage> {
        let id = job.id;
        let progress = |event: GenerationEvent| match event {
            GenerationEvent::Progress { step, total, .. } => {
                job.send(ServerMessage::Progress { id, step: step as u32, total: total as u32 })
            }
            GenerationEvent::ImagePreview { rows_done, rows_total, pngs } => job.send(ServerMessage::ImagePreview {
                id,
                rows_done: rows_done as u32,
                rows_total: rows_total as u32,
                images: pngs.iter().map(|p| base64_png(p)).collect(),
            }),
            GenerationEvent::Text { .. } => {}
        };
        Ok(match &job.task {
            Task::Recognize { .. } => unreachable!("recognise requests run in batches"),
            Task::Classify { image, classes, template, method } => {
                let codes = engine.photo_codes(image)?;
                let result = classify_with(*method, engine, &codes, classes, template, DEFAULT_BATCH)?;
                ServerMessage::Classification { id, classification: wire::classification(classes, result) }
            }
            Task::GenerateImage { text, n, best_of, seed } => {
                // A fresh seed unless the client asks to repeat one: each press draws anew.
                // (Seeds stay below 2^53, so JavaScript clients keep them exact.)
                let seed = seed.unwrap_or_else(|| rand::random::<u32>() as u64);
                let rows = engine.model.config().image_tokens_per_dim;
                let options = ImageOptions {
                    count: *n,
                    best_of: *best_of,
                    sampling: SamplingParams::IMAGE,
                    seed,
                    preview_every_rows: (rows / 4).max(1),
                    stop: Some(job.cancel.clone()),
                };
                let images = generate_image(engine, text, &options, progress)?;
                ServerMessage::Images {
                    id,
                    images: images.pngs.iter().map(|p| base64_png(p)).collect(),
                    seed: Some(seed),
                }
            }
            Task::GenerateText { prompt, n } => {
                let options = TextOptions { count: *n, seed: id, stop: Some(job.cancel.clone()), ..Default::default() };
                let ranked = generate_texts(engine, prompt, &options, progress)?;
                if job.is_cancelled() {
                    return Err(Cancelled.into());
                }
                ServerMessage::Texts { id, texts: wire::ranked_texts(ranked) }
            }
        })
    }
}

enum Outcome {
    Done(Box<ServerMessage>),
    Cancelled,
    Error(ErrorCode, String),
}

impl Outcome {
    /// A pipeline's result: its final frame, a cancellation, or a model failure.
    fn of(result: Result<ServerMessage>) -> Outcome {
        match result {
            Ok(message) => Outcome::Done(Box::new(message)),
            Err(e) if e.is::<Cancelled>() => Outcome::Cancelled,
            // The request's text, not the model, is at fault.
            Err(e) if e.is::<UnknownCharacters>() => Outcome::Error(ErrorCode::UnknownCharacters, e.to_string()),
            Err(e) => Outcome::Error(ErrorCode::Internal, format!("{e:#}")),
        }
    }
}

/// How often an idle worker looks for a fine-tune or a promoted version.
const IDLE_CHECK: Duration = Duration::from_millis(200);

fn base64_png(png: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Queue;
    use std::sync::Mutex;

    #[test]
    fn each_worker_runs_on_a_thread_of_a_pool_of_its_own() {
        let metrics = Metrics::new();
        let (queue, receiver) = Queue::new(4, 1 << 20, metrics.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let loaders = (0..2)
            .map(|index| {
                let seen = seen.clone();
                let load: EngineLoader = Box::new(move || {
                    let thread = std::thread::current().name().map(String::from);
                    seen.lock().unwrap().push((index, thread, rayon::current_thread_index()));
                    anyhow::bail!("no model here")
                });
                DeviceLoader { device: format!("cpu{index}"), load, load_version: None }
            })
            .collect();
        let (_handle, threads) = spawn_workers(loaders, receiver, metrics, 1, None, Arc::new(Teaching::default()));
        drop(queue);
        for thread in threads {
            thread.join().unwrap();
        }
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen.len(), 2);
        for (index, thread, pool_index) in seen {
            // The global pool's threads are unnamed: a name of the worker's own says the pool.
            let thread = thread.expect("a pool thread has a name");
            assert!(thread.starts_with(&format!("model-worker-{index}-")), "worker {index} ran on {thread}");
            assert!(pool_index.is_some(), "worker {index} ran outside its pool");
        }
    }
}
