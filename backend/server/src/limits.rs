//! What one client may ask of the server. Every limit has a flag and an environment
//! variable (`borscht serve --help`), and every breach gets a named error.

use std::time::Duration;

use borscht_pipelines::imaging::ImageLimits;

/// What one client may ask of the server; `borscht serve` sets each from a flag or an
/// environment variable, and [`Limits::DEFAULT`] holds the defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest picture upload in bytes (after base64 decoding).
    pub max_upload_bytes: usize,
    /// Largest picture in pixels, checked from the header before decoding (decompression bombs).
    pub max_pixels: u64,
    /// Longest text (characters) for prompts, templates and class names.
    pub max_text_chars: usize,
    pub max_classes: usize,
    /// Most captions one recognise request may sample.
    pub max_captions: u32,
    pub max_images: u32,
    /// Text-to-image draws this many pictures for each one it returns and keeps those that
    /// best fit the dish's name (1: keep every drawing).
    pub image_best_of: u32,
    pub max_texts: u32,
    /// Requests one WebSocket connection may have in flight.
    pub max_requests_per_connection: usize,
    /// Requests waiting for the model; beyond it clients are told "busy".
    pub queue_capacity: usize,
    /// Most recognise requests the worker runs as one batch.
    pub max_batch: usize,
    /// Seconds a busy client is told to wait.
    pub retry_after_s: u32,
    /// Seconds a WebSocket may stay silent with nothing in flight before it is closed.
    pub idle_timeout_s: u64,
    /// Seconds a client may take to accept one frame before it counts as gone.
    pub send_timeout_s: u64,
    /// Pictures decoded at once (a large one takes hundreds of MB while it decodes; each
    /// is then shrunk to what the model reads).
    pub max_decodes: usize,
    /// Bytes of pictures the queue may hold; beyond them clients are told "busy".
    pub queue_max_bytes: usize,
    /// Requests one client (IP address) may have queued or running, over all its
    /// WebSocket connections and the HTTP API.
    pub max_requests_per_ip: usize,
    /// Bytes of answers waiting for one WebSocket client; its requests wait beyond them.
    pub outbox_max_bytes: usize,
    /// Seconds a client may take to send a request's headers.
    pub header_timeout_s: u64,
    /// Seconds a client may take to send a request's body.
    pub body_timeout_s: u64,
    /// WebSocket connections open at once; beyond them a new one is told to come back
    /// later (close code 1013).
    pub max_connections: usize,
    /// WebSocket connections one client (IP address) may hold open.
    pub max_connections_per_ip: usize,
    /// HTTP API requests one client (IP address) may make a minute: a burst of this many,
    /// refilled evenly; beyond it 429 with Retry-After. 0: no limit.
    pub api_requests_per_minute: u32,
}

impl Limits {
    /// Every default, named once: the CLI's flags take theirs from here.
    pub const DEFAULT: Limits = Limits {
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
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
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
