//! The bounded queue between the request handlers and the model worker. A full queue
//! refuses at once (the client hears "busy"); nothing waits unboundedly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

use super::job::Job;
use super::metrics::Metrics;

#[derive(Clone)]
pub struct Queue {
    sender: mpsc::Sender<Job>,
    depth: Arc<AtomicUsize>,
    metrics: Metrics,
}

/// The worker's end.
pub struct QueueReceiver {
    receiver: mpsc::Receiver<Job>,
    depth: Arc<AtomicUsize>,
}

/// Why a job was not queued; the job comes back so its sender can answer it.
pub enum SubmitError {
    Busy(Box<Job>),
    Closed(Box<Job>),
}

impl Queue {
    pub fn new(capacity: usize, metrics: Metrics) -> (Queue, QueueReceiver) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        (Queue { sender, depth: depth.clone(), metrics }, QueueReceiver { receiver, depth })
    }

    /// Queues `job`; returns how many requests wait ahead of it.
    pub fn submit(&self, job: Job) -> Result<usize, SubmitError> {
        let ahead = self.depth.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(job) {
            Ok(()) => Ok(ahead),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                match e {
                    mpsc::error::TrySendError::Full(job) => {
                        self.metrics.rejected_busy.inc();
                        Err(SubmitError::Busy(Box::new(job)))
                    }
                    mpsc::error::TrySendError::Closed(job) => Err(SubmitError::Closed(Box::new(job))),
                }
            }
        }
    }

    /// Requests waiting now (exact: the gauge in `/metrics` is read from it).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

impl QueueReceiver {
    fn taken(&self, job: Option<Job>) -> Option<Job> {
        if job.is_some() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
        }
        job
    }

    /// Waits for the next job; `None` once every sender is gone (shutdown).
    pub fn blocking_next(&mut self) -> Option<Job> {
        let job = self.receiver.blocking_recv();
        self.taken(job)
    }

    /// The next job if one is waiting now.
    pub fn try_next(&mut self) -> Option<Job> {
        let job = self.receiver.try_recv().ok();
        self.taken(job)
    }
}
