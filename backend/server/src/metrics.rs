//! Prometheus metrics (`GET /metrics`): queue depth, batch sizes, latencies, outcomes.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub queue_depth: IntGauge,
    /// Bytes of pictures waiting in the queue.
    pub queue_bytes: IntGauge,
    /// Requests per model batch (captioning runs of several clients share one).
    pub batch_requests: Histogram,
    /// Seconds from queueing to the final answer, by request kind.
    pub latency: HistogramVec,
    /// Seconds spent waiting in the queue.
    pub queue_wait: Histogram,
    /// Finished requests by kind and outcome (ok, cancelled, error).
    pub requests: IntCounterVec,
    /// Finished requests by the worker (and device) that ran them.
    pub device_requests: IntCounterVec,
    pub rejected_busy: IntCounter,
    /// API calls refused by the per-client rate, and WebSockets refused by the caps.
    pub rejected_rate: IntCounter,
    pub rejected_connections: IntCounter,
    pub connections: IntGauge,
    /// The server's resident memory, read when the metrics are (Linux).
    resident_bytes: IntGauge,
    /// What browsers reported the Content-Security-Policy blocked.
    pub csp_violations: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("borscht".into()), None).expect("valid prefix");
        let queue_depth = IntGauge::new("queue_depth", "Requests waiting for the model").expect("valid metric");
        let queue_bytes =
            IntGauge::new("queue_bytes", "Bytes of pictures waiting for the model").expect("valid metric");
        let batch_requests = Histogram::with_opts(
            HistogramOpts::new("batch_requests", "Requests served by one model batch")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]),
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("request_seconds", "Time from queueing to the final answer")
                .buckets(prometheus::exponential_buckets(0.01, 2.0, 14).expect("valid buckets")),
            &["kind"],
        )
        .expect("valid metric");
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new("queue_wait_seconds", "Time a request waited in the queue")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        let requests =
            IntCounterVec::new(Opts::new("requests_total", "Finished requests"), &["kind", "outcome"]).expect("valid");
        let device_requests = IntCounterVec::new(
            Opts::new("device_requests_total", "Finished requests by the model worker and device that ran them"),
            &["worker", "device", "kind"],
        )
        .expect("valid");
        let rejected_busy = IntCounter::new("rejected_busy_total", "Requests refused because the queue was full")
            .expect("valid metric");
        let rejected_rate =
            IntCounter::new("rejected_rate_total", "API calls refused because their client called too often")
                .expect("valid metric");
        let rejected_connections =
            IntCounter::new("rejected_connections_total", "WebSockets refused by the connection caps")
                .expect("valid metric");
        let connections = IntGauge::new("websocket_connections", "Open WebSocket connections").expect("valid metric");
        let resident_bytes =
            IntGauge::new("process_resident_bytes", "Resident memory of the server process").expect("valid metric");
        let csp_violations =
            IntCounter::new("csp_violations_total", "Content-Security-Policy violations browsers reported")
                .expect("valid metric");
        for metric in [
            Box::new(queue_depth.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queue_bytes.clone()),
            Box::new(batch_requests.clone()),
            Box::new(latency.clone()),
            Box::new(queue_wait.clone()),
            Box::new(requests.clone()),
            Box::new(device_requests.clone()),
            Box::new(rejected_busy.clone()),
            Box::new(rejected_rate.clone()),
            Box::new(rejected_connections.clone()),
            Box::new(connections.clone()),
            Box::new(resident_bytes.clone()),
            Box::new(csp_violations.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Metrics {
            registry,
            queue_depth,
            queue_bytes,
            batch_requests,
            latency,
            queue_wait,
            requests,
            device_requests,
            rejected_busy,
            rejected_rate,
            rejected_connections,
            connections,
            resident_bytes,
            csp_violations,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.resident_bytes.set(bytes as i64);
        }
        let mut buffer = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident memory of this process: the second field of `/proc/self/statm`, in pages.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}
