//! `borscht serve`'s limit flags, each mapped onto the server's [`Limits`] (whose
//! `DEFAULT` they show).

use borscht_server::limits::Limits;

#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest picture upload in bytes (after base64 decoding).
    #[arg(long, env = "BORSCHT_MAX_UPLOAD_BYTES", default_value_t = Limits::DEFAULT.max_upload_bytes)]
    pub max_upload_bytes: usize,
    /// Largest picture in pixels, checked from the header before decoding (decompression bombs).
    #[arg(long, env = "BORSCHT_MAX_PIXELS", default_value_t = Limits::DEFAULT.max_pixels)]
    pub max_pixels: u64,
    /// Longest text (characters) for prompts, templates and class names.
    #[arg(long, env = "BORSCHT_MAX_TEXT_CHARS", default_value_t = Limits::DEFAULT.max_text_chars)]
    pub max_text_chars: usize,
    #[arg(long, env = "BORSCHT_MAX_CLASSES", default_value_t = Limits::DEFAULT.max_classes)]
    pub max_classes: usize,
    /// Most captions one recognise request may sample.
    #[arg(long, env = "BORSCHT_MAX_CAPTIONS", default_value_t = Limits::DEFAULT.max_captions)]
    pub max_captions: u32,
    #[arg(long, env = "BORSCHT_MAX_IMAGES", default_value_t = Limits::DEFAULT.max_images)]
    pub max_images: u32,
    /// Text-to-image draws this many pictures for each one it returns and keeps those that
    /// best fit the dish's name (1: keep every drawing).
    #[arg(long, env = "BORSCHT_IMAGE_BEST_OF", default_value_t = Limits::DEFAULT.image_best_of, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub image_best_of: u32,
    #[arg(long, env = "BORSCHT_MAX_TEXTS", default_value_t = Limits::DEFAULT.max_texts)]
    pub max_texts: u32,
    /// Requests one WebSocket connection may have in flight.
    #[arg(long, env = "BORSCHT_MAX_REQUESTS_PER_CONNECTION", default_value_t = Limits::DEFAULT.max_requests_per_connection)]
    pub max_requests_per_connection: usize,
    /// Requests waiting for the model; beyond it clients are told "busy".
    #[arg(long, env = "BORSCHT_QUEUE_CAPACITY", default_value_t = Limits::DEFAULT.queue_capacity)]
    pub queue_capacity: usize,
    /// Most recognise requests the worker runs as one batch.
    #[arg(long, env = "BORSCHT_MAX_BATCH", default_value_t = Limits::DEFAULT.max_batch)]
    pub max_batch: usize,
    /// Seconds a busy client is told to wait.
    #[arg(long, env = "BORSCHT_RETRY_AFTER_S", default_value_t = Limits::DEFAULT.retry_after_s)]
    pub retry_after_s: u32,
    /// Seconds a WebSocket may stay silent with nothing in flight before it is closed.
    #[arg(long, env = "BORSCHT_IDLE_TIMEOUT_S", default_value_t = Limits::DEFAULT.idle_timeout_s)]
    pub idle_timeout_s: u64,
    /// Seconds a client may take to accept one frame before it counts as gone.
    #[arg(long, env = "BORSCHT_SEND_TIMEOUT_S", default_value_t = Limits::DEFAULT.send_timeout_s)]
    pub send_timeout_s: u64,
    /// Pictures decoded at once (a large one takes hundreds of MB while it decodes; each
    /// is then shrunk to what the model reads).
    #[arg(long, env = "BORSCHT_MAX_DECODES", default_value_t = Limits::DEFAULT.max_decodes)]
    pub max_decodes: usize,
    /// Bytes of pictures the queue may hold; beyond them clients are told "busy".
    #[arg(long, env = "BORSCHT_QUEUE_MAX_BYTES", default_value_t = Limits::DEFAULT.queue_max_bytes)]
    pub queue_max_bytes: usize,
    /// Requests one client (IP address) may have queued or running, over all its
    /// WebSocket connections and the HTTP API.
    #[arg(long, env = "BORSCHT_MAX_REQUESTS_PER_IP", default_value_t = Limits::DEFAULT.max_requests_per_ip)]
    pub max_requests_per_ip: usize,
    /// Bytes of answers waiting for one WebSocket client; its requests wait beyond them.
    #[arg(long, env = "BORSCHT_OUTBOX_MAX_BYTES", default_value_t = Limits::DEFAULT.outbox_max_bytes)]
    pub outbox_max_bytes: usize,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, env = "BORSCHT_HEADER_TIMEOUT_S", default_value_t = Limits::DEFAULT.header_timeout_s)]
    pub header_timeout_s: u64,
    /// Seconds a client may take to send a request's body.
    #[arg(long, env = "BORSCHT_BODY_TIMEOUT_S", default_value_t = Limits::DEFAULT.body_timeout_s)]
    pub body_timeout_s: u64,
    /// WebSocket connections open at once; beyond them a new one is told to come back
    /// later (close code 1013).
    #[arg(long, env = "BORSCHT_MAX_CONNECTIONS", default_value_t = Limits::DEFAULT.max_connections)]
    pub max_connections: usize,
    /// WebSocket connections one client (IP address) may hold open.
    #[arg(long, env = "BORSCHT_MAX_CONNECTIONS_PER_IP", default_value_t = Limits::DEFAULT.max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// HTTP API requests one client (IP address) may make a minute: a burst of this many,
    /// refilled evenly; beyond it 429 with Retry-After. 0: no limit.
    #[arg(long, env = "BORSCHT_API_REQUESTS_PER_MINUTE", default_value_t = Limits::DEFAULT.api_requests_per_minute)]
    pub api_requests_per_minute: u32,
}

impl From<LimitArgs> for Limits {
    fn from(args: LimitArgs) -> Self {
        Limits {
            max_upload_bytes: args.max_upload_bytes,
            max_pixels: args.max_pixels,
            max_text_chars: args.max_text_chars,
            max_classes: args.max_classes,
            max_captions: args.max_captions,
            max_images: args.max_images,
            image_best_of: args.image_best_of,
            max_texts: args.max_texts,
            max_requests_per_connection: args.max_requests_per_connection,
            queue_capacity: args.queue_capacity,
            max_batch: args.max_batch,
            retry_after_s: args.retry_after_s,
            idle_timeout_s: args.idle_timeout_s,
            send_timeout_s: args.send_timeout_s,
            max_decodes: args.max_decodes,
            queue_max_bytes: args.queue_max_bytes,
            max_requests_per_ip: args.max_requests_per_ip,
            outbox_max_bytes: args.outbox_max_bytes,
            header_timeout_s: args.header_timeout_s,
            body_timeout_s: args.body_timeout_s,
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            api_requests_per_minute: args.api_requests_per_minute,
        }
    }
}
