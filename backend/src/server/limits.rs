//! What one client may ask of the server. Every limit has a flag and an environment
//! variable (`borscht serve --help`), and every breach gets a named error.

use std::time::Duration;

use crate::imaging::ImageLimits;

#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest picture upload in bytes (after base64 decoding).
    #[arg(long, env = "BORSCHT_MAX_UPLOAD_BYTES", default_value_t = 8 << 20)]
    pub max_upload_bytes: usize,
    /// Largest picture in pixels, checked from the header before decoding (decompression bombs).
    #[arg(long, env = "BORSCHT_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Longest text (characters) for prompts, templates and class names.
    #[arg(long, env = "BORSCHT_MAX_TEXT_CHARS", default_value_t = 200)]
    pub max_text_chars: usize,
    #[arg(long, env = "BORSCHT_MAX_CLASSES", default_value_t = 50)]
    pub max_classes: usize,
    /// Most captions one recognise request may sample.
    #[arg(long, env = "BORSCHT_MAX_CAPTIONS", default_value_t = 32)]
    pub max_captions: u32,
    #[arg(long, env = "BORSCHT_MAX_IMAGES", default_value_t = 4)]
    pub max_images: u32,
    /// Text-to-image draws this many pictures for each one it returns and keeps those that
    /// best fit the dish's name (1: keep every drawing).
    #[arg(long, env = "BORSCHT_IMAGE_BEST_OF", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub image_best_of: u32,
    #[arg(long, env = "BORSCHT_MAX_TEXTS", default_value_t = 16)]
    pub max_texts: u32,
    /// Requests one WebSocket connection may have in flight.
    #[arg(long, env = "BORSCHT_MAX_REQUESTS_PER_CONNECTION", default_value_t = 4)]
    pub max_requests_per_connection: usize,
    /// Requests waiting for the model; beyond it clients are told "busy".
    #[arg(long, env = "BORSCHT_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,
    /// Most recognise requests the worker runs as one batch.
    #[arg(long, env = "BORSCHT_MAX_BATCH", default_value_t = 8)]
    pub max_batch: usize,
    /// Seconds a busy client is told to wait.
    #[arg(long, env = "BORSCHT_RETRY_AFTER_S", default_value_t = 2)]
    pub retry_after_s: u32,
    /// Seconds a WebSocket may stay silent with nothing in flight before it is closed.
    #[arg(long, env = "BORSCHT_IDLE_TIMEOUT_S", default_value_t = 300)]
    pub idle_timeout_s: u64,
    /// Seconds a client may take to accept one frame before it counts as gone.
    #[arg(long, env = "BORSCHT_SEND_TIMEOUT_S", default_value_t = 15)]
    pub send_timeout_s: u64,
    /// Pictures decoded at once (a large one takes hundreds of MB while it decodes; each
    /// is then shrunk to what the model reads).
    #[arg(long, env = "BORSCHT_MAX_DECODES", default_value_t = 2)]
    pub max_decodes: usize,
    /// Bytes of pictures the queue may hold; beyond them clients are told "busy".
    #[arg(long, env = "BORSCHT_QUEUE_MAX_BYTES", default_value_t = 64 << 20)]
    pub queue_max_bytes: usize,
    /// Requests one client (IP address) may have queued or running, over all its
    /// WebSocket connections and the HTTP API.
    #[arg(long, env = "BORSCHT_MAX_REQUESTS_PER_IP", default_value_t = 16)]
    pub max_requests_per_ip: usize,
    /// Bytes of answers waiting for one WebSocket client; its requests wait beyond them.
    #[arg(long, env = "BORSCHT_OUTBOX_MAX_BYTES", default_value_t = 8 << 20)]
    pub outbox_max_bytes: usize,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, env = "BORSCHT_HEADER_TIMEOUT_S", default_value_t = 15)]
    pub header_timeout_s: u64,
    /// Seconds a client may take to send a request's body.
    #[arg(long, env = "BORSCHT_BODY_TIMEOUT_S", default_value_t = 30)]
    pub body_timeout_s: u64,
    /// WebSocket connections open at once; beyond them a new one is told to come back
    /// later (close code 1013).
    #[arg(long, env = "BORSCHT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// WebSocket connections one client (IP address) may hold open.
    #[arg(long, env = "BORSCHT_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: usize,
    /// HTTP API requests one client (IP address) may make a minute: a burst of this many,
    /// refilled evenly; beyond it 429 with Retry-After. 0: no limit.
    #[arg(long, env = "BORSCHT_API_REQUESTS_PER_MINUTE", default_value_t = 120)]
    pub api_requests_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_bytes: 8 << 20,
            max_pixels: 40_000_000,
            max_text_chars: 200,
            max_classes: 50,
            max_captions: 32,
            max_images: 4,
            image_best_of: 8,
            max_texts: 16,
            max_requests_per_connection: 4,
            queue_capacity: 64,
            max_batch: 8,
            retry_after_s: 2,
            idle_timeout_s: 300,
            send_timeout_s: 15,
            max_decodes: 2,
            queue_max_bytes: 64 << 20,
            max_requests_per_ip: 16,
            outbox_max_bytes: 8 << 20,
            header_timeout_s: 15,
            body_timeout_s: 30,
            max_connections: 1024,
            max_connections_per_ip: 64,
            api_requests_per_minute: 120,
        }
    }
}

impl Limits {
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits { max_bytes: self.max_upload_bytes, max_pixels: self.max_pixels, ..ImageLimits::default() }
    }

    /// A WebSocket frame carries the picture in base64 (4/3 larger) plus a little JSON.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_upload_bytes / 3 * 4 + 64 * 1024
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_s)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_s)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_s)
    }
}
