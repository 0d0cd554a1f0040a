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
    pub rejected_busy: IntCounter,
    pub connections: IntGauge,
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
        let rejected_busy = IntCounter::new("rejected_busy_total", "Requests refused because the queue was full")
            .expect("valid metric");
        let connections = IntGauge::new("websocket_connections", "Open WebSocket connections").expect("valid metric");
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
            Box::new(rejected_busy.clone()),
            Box::new(connections.clone()),
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
            rejected_busy,
            connections,
            csp_violations,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
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
