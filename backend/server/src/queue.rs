//! The bounded, fair queue between the request handlers and the model worker.
//!
//! Bounded twice: by requests and by the bytes their pictures hold; beyond either the
//! client hears "busy" at once, and nothing waits unboundedly. Fair: every client (its
//! IP address, see [`super::client`]) has a lane of its own, and the worker serves the
//! lanes in turn by deficit round robin, weighing each request by what it costs the
//! model ([`super::job::Task::cost`]). One client with many costly requests queued makes
//! the others wait for at most about one of them, not for all of them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::client::ClientKey;
use super::job::Job;
use super::metrics::Metrics;

/// Why a job was not queued; the job comes back so its sender can answer it.
pub enum SubmitError {
    Busy(Box<Job>),
    Closed(Box<Job>),
}

pub struct Queue {
    shared: Arc<Shared>,
    metrics: Metrics,
}

/// The workers' end (one clone per worker). Dropping every [`Queue`] handle closes the
/// queue: the workers take what is left, then hear `None`.
#[derive(Clone)]
pub struct QueueReceiver {
    shared: Arc<Shared>,
}

struct Shared {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    capacity: usize,
    max_bytes: usize,
    /// Queue handles alive (the receiver sees the end when it reaches 0).
    senders: AtomicUsize,
}

#[derive(Default)]
struct Lanes {
    /// Each client's waiting jobs, in arrival order.
    waiting: HashMap<ClientKey, VecDeque<Job>>,
    /// Clients with jobs waiting, in turn order.
    turns: VecDeque<ClientKey>,
    /// What each client may still spend in its current turn.
    deficit: HashMap<ClientKey, u32>,
    jobs: usize,
    bytes: usize,
}

impl Lanes {
    fn push(&mut self, job: Job) {
        let key = job.client.clone();
        self.jobs += 1;
        self.bytes += job.bytes;
        let lane = self.waiting.entry(key.clone()).or_default();
        if lane.is_empty() {
            self.turns.push_back(key);
        }
        lane.push_back(job);
    }

    /// The next job (of those `wanted` takes) by deficit round robin: the client whose turn
    /// it is gains one unit of credit per turn and is served once its credit covers its
    /// first job's cost.
    fn pop(&mut self, wanted: &dyn Fn(&Job) -> bool) -> Option<Job> {
        let candidates = self.turns.iter().filter(|k| self.waiting[*k].iter().any(wanted)).count();
        if candidates == 0 {
            return None;
        }
        loop {
            let key = self.turns.pop_front().expect("a client with waiting jobs");
            let lane = self.waiting.get_mut(&key).expect("every turn has a lane");
            let Some(index) = lane.iter().position(wanted) else {
                self.turns.push_back(key);
                continue;
            };
            let credit = self.deficit.entry(key.clone()).or_insert(0);
            *credit += 1;
            let cost = lane[index].task.cost();
            if *credit < cost {
                self.turns.push_back(key);
                continue;
            }
            *credit -= cost;
            let job = lane.remove(index).expect("index found above");
            if lane.is_empty() {
                self.waiting.remove(&key);
                self.deficit.remove(&key);
            } else {
                self.turns.push_back(key);
            }
            self.jobs -= 1;
            self.bytes -= job.bytes;
            return Some(job);
        }
    }
}

impl Queue {
    /// A queue of at most `capacity` requests holding at most `max_bytes` of pictures.
    pub fn new(capacity: usize, max_bytes: usize, metrics: Metrics) -> (Queue, QueueReceiver) {
        let shared = Arc::new(Shared {
            lanes: Mutex::new(Lanes::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            max_bytes,
            senders: AtomicUsize::new(1),
        });
        (Queue { shared: shared.clone(), metrics }, QueueReceiver { shared })
    }

    /// Queues `job`; returns how many requests wait ahead of it.
    pub fn submit(&self, job: Job) -> Result<usize, SubmitError> {
        let mut lanes = self.shared.lanes.lock().expect("queue lock");
        // One picture alone may always wait, however large the limit says it is.
        let over_bytes = lanes.jobs > 0 && lanes.bytes + job.bytes > self.shared.max_bytes;
        if lanes.jobs >= self.shared.capacity || over_bytes {
            self.metrics.rejected_busy.inc();
            return Err(SubmitError::Busy(Box::new(job)));
        }
        let ahead = lanes.jobs;
        lanes.push(job);
        self.metrics.queue_depth.set(lanes.jobs as i64);
        self.metrics.queue_bytes.set(lanes.bytes as i64);
        drop(lanes);
        self.shared.ready.notify_one();
        Ok(ahead)
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.shared.lanes.lock().expect("queue lock").jobs
    }

    /// Bytes of pictures waiting now.
    pub fn bytes(&self) -> usize {
        self.shared.lanes.lock().expect("queue lock").bytes
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.ready.notify_all();
        }
    }
}

/// Another handle, counted so the worker knows when the last one is gone.
impl Clone for Queue {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::SeqCst);
        Queue { shared: self.shared.clone(), metrics: self.metrics.clone() }
    }
}

impl QueueReceiver {
    fn take(&self, lanes: &mut Lanes, wanted: &dyn Fn(&Job) -> bool) -> Option<Job> {
        lanes.pop(wanted)
    }

    /// Waits for the next job in fair order; `None` once every queue handle is gone and
    /// nothing waits (shutdown).
    pub fn blocking_next(&mut self) -> Option<Job> {
        match self.next_within(None) {
            Next::Job(job) => Some(*job),
            Next::Closed => None,
            Next::Idle => unreachable!("waiting without a timeout never ends idle"),
        }
    }

    /// The next job in fair order, waiting for one at most `timeout` (the worker has
    /// other work), or for as long as it takes.
    pub fn next_within(&mut self, timeout: Option<std::time::Duration>) -> Next {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut lanes = self.shared.lanes.lock().expect("queue lock");
        loop {
            if let Some(job) = self.take(&mut lanes, &|_| true) {
                return Next::Job(Box::new(job));
            }
            if self.shared.senders.load(Ordering::SeqCst) == 0 {
                return Next::Closed;
            }
            lanes = match deadline {
                None => self.shared.ready.wait(lanes).expect("queue lock"),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Next::Idle;
                    }
                    self.shared.ready.wait_timeout(lanes, left).expect("queue lock").0
                }
            };
        }
    }

    /// The next waiting job that `wanted` takes, in fair order, if there is one now.
    pub fn try_next_where(&mut self, wanted: impl Fn(&Job) -> bool) -> Option<Job> {
        let mut lanes = self.shared.lanes.lock().expect("queue lock");
        self.take(&mut lanes, &wanted)
    }
}

/// What [`QueueReceiver::next_within`] found.
pub enum Next {
    Job(Box<Job>),
    /// Nothing came in time.
    Idle,
    /// Every sender is gone: the server is stopping.
    Closed,
}
