//! A request on its way to the model: what to do, where its answers go, and how it
//! is cancelled. The WebSocket and the HTTP API both turn requests into [`Job`]s.

use base64::Engine as _;
use borscht_protocol::{ClassifyMethod, ClientMessage, ErrorCode, RequestId, ServerMessage};
use image::DynamicImage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

use super::client::{ClientKey, ClientSlot};
use super::limits::Limits;
use borscht_pipelines::generation::CAPTION_TEMPLATE;
use borscht_pipelines::imaging::{decode_image, ImageInputError};
use borscht_pipelines::scoring::default_class_template;

pub const DEFAULT_CAPTIONS: u32 = borscht_pipelines::generation::DEFAULT_CAPTIONS as u32;
pub const DEFAULT_IMAGES: u32 = 1;
pub const DEFAULT_TEXTS: u32 = 8;

#[derive(Debug)]
pub enum Task {
    Recognize {
        image: DynamicImage,
        template: String,
        n: usize,
        portion_g: Option<f32>,
    },
    Classify {
        image: DynamicImage,
        classes: Vec<String>,
        template: String,
        method: ClassifyMethod,
    },
    /// `n` pictures, each the best of `best_of` drawn (the server's `--image-best-of`),
    /// from `seed` (a fresh one when None).
    GenerateImage {
        text: String,
        n: usize,
        best_of: usize,
        seed: Option<u64>,
    },
    GenerateText {
        prompt: String,
        n: usize,
    },
}

impl Task {
    /// What the request costs the model, in units of about one recognition: the fair
    /// queue gives a client's lane one unit per turn ([`super::queue`]).
    pub fn cost(&self) -> u32 {
        match self {
            Task::Recognize { .. } | Task::Classify { .. } => 1,
            Task::GenerateImage { n, best_of, .. } => ((n * best_of) as u32 / 4).max(1),
            Task::GenerateText { n, .. } => 1 + *n as u32 / 8,
        }
    }

    /// Bytes of picture the request holds while it waits.
    pub fn bytes(&self) -> usize {
        match self {
            Task::Recognize { image, .. } | Task::Classify { image, .. } => image.as_bytes().len(),
            _ => 0,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Task::Recognize { .. } => "recognize",
            Task::Classify { .. } => "classify",
            Task::GenerateImage { .. } => "generate_image",
            Task::GenerateText { .. } => "generate_text",
        }
    }
}

/// A validated request's refusal: the code and a message for the person.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

impl From<ImageInputError> for Rejection {
    fn from(e: ImageInputError) -> Self {
        let code = match e {
            ImageInputError::TooManyBytes { .. } | ImageInputError::TooManyPixels { .. } => ErrorCode::ImageTooLarge,
            _ => ErrorCode::InvalidImage,
        };
        Rejection::new(code, e.to_string())
    }
}

/// Cancels a job when raised; shared by the job and whoever may cancel it.
pub type CancelFlag = Arc<AtomicBool>;

pub struct Job {
    pub id: RequestId,
    pub task: Task,
    pub events: mpsc::UnboundedSender<ServerMessage>,
    pub cancel: CancelFlag,
    pub enqueued: Instant,
    /// Whose request it is: its lane in the fair queue.
    pub client: ClientKey,
    /// Its place in the client's count of requests in flight, given back as its final
    /// answer goes out ([`Job::release_slot`]) or when it is dropped.
    slot: std::sync::Mutex<Option<ClientSlot>>,
    /// Picture bytes it holds ([`Task::bytes`]), counted by the queue's byte bound.
    pub bytes: usize,
}

impl Job {
    pub fn new(id: RequestId, task: Task) -> (Job, mpsc::UnboundedReceiver<ServerMessage>) {
        Job::for_client(id, task, ClientKey(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)), None)
    }

    /// A job of `client`, holding `slot` until it ends.
    pub fn for_client(
        id: RequestId,
        task: Task,
        client: ClientKey,
        slot: Option<ClientSlot>,
    ) -> (Job, mpsc::UnboundedReceiver<ServerMessage>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let bytes = task.bytes();
        let job = Job {
            id,
            task,
            events,
            cancel: Arc::new(AtomicBool::new(false)),
            enqueued: Instant::now(),
            client,
            slot: std::sync::Mutex::new(slot),
            bytes,
        };
        (job, receiver)
    }

    /// Cancelled, or nobody is listening any more.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }

    /// Gives the client's place back, just before the final answer goes out: a client
    /// that sends its next request the moment it reads the answer finds its place free.
    pub fn release_slot(&self) {
        self.slot.lock().expect("slot lock").take();
    }

    pub fn send(&self, message: ServerMessage) {
        // A closed receiver means the client left; the job is then cancelled anyway.
        let _ = self.events.send(message);
    }
}

/// Decodes a base64 picture (a `data:` URL prefix is allowed) within the limits, and
/// shrinks it to the model's `side` ([`decode_picture`]).
pub fn decode_base64_image(data: &str, limits: &Limits, side: u32) -> Result<DynamicImage, Rejection> {
    decode_picture(&base64_bytes(data, limits)?, limits, side)
}

/// The bytes of a base64 picture or data URL, within the upload limit (undecoded).
pub fn base64_bytes(data: &str, limits: &Limits) -> Result<Vec<u8>, Rejection> {
    let payload = match data.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => data,
    };
    let payload = payload.trim();
    // Checked before decoding: base64 is 4/3 of the bytes.
    if payload.len() / 4 * 3 > limits.max_upload_bytes + 3 {
        return Err(Rejection::new(
            ErrorCode::ImageTooLarge,
            format!("the image is over the limit of {} bytes", limits.max_upload_bytes),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| Rejection::new(ErrorCode::InvalidImage, format!("the image is not valid base64: {e}")))
}

/// Side a picture is shrunk to while the model (whose input side decides) still loads and
/// its side was not known beforehand ([`crate::ServerConfig::input_side`]). Such a
/// picture, if larger, is resampled twice (to this side, then to the model's), so its
/// answer may differ slightly from the same picture sent later.
pub const LOADING_SIDE: u32 = 512;

/// Decodes an uploaded picture within the limits (bytes, then header pixels) and shrinks
/// it at once to what the model reads ([`borscht_pipelines::imaging::square_rgb`] at `side`): a
/// 40-megapixel 16-bit PNG takes some 300 MB decoded, but waits in the queue as
/// `side * side * 3` bytes.
pub fn decode_picture(bytes: &[u8], limits: &Limits, side: u32) -> Result<DynamicImage, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(ErrorCode::InvalidImage, "the image is empty"));
    }
    let decoded = decode_image(bytes, limits.image_limits())?;
    // Never enlarge: a picture smaller than `side` keeps its pixels, and the model's own
    // preparation enlarges it just as it would have, whatever side was known when it came.
    let side = side.min(decoded.width().min(decoded.height()));
    Ok(DynamicImage::ImageRgb8(borscht_pipelines::imaging::square_rgb(&decoded, side)))
}

fn check_text(what: &str, text: &str, limits: &Limits) -> Result<String, Rejection> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Rejection::new(ErrorCode::InvalidRequest, format!("the {what} is empty")));
    }
    let chars = text.chars().count();
    if chars > limits.max_text_chars {
        return Err(Rejection::new(
            ErrorCode::InvalidRequest,
            format!("the {what} has {chars} characters; the limit is {}", limits.max_text_chars),
        ));
    }
    Ok(text.to_string())
}

fn check_count(what: &str, n: Option<u32>, default: u32, max: u32) -> Result<usize, Rejection> {
    match n.unwrap_or(default) {
        0 => Err(Rejection::new(ErrorCode::InvalidRequest, format!("ask for at least one {what}"))),
        n if n > max => Err(Rejection::new(ErrorCode::InvalidRequest, format!("at most {max} {what}s per request"))),
        n => Ok(n as usize),
    }
}

/// Recognise: the picture, its template and count, within the limits.
pub fn recognize_task(
    image: DynamicImage,
    template: Option<&str>,
    n: Option<u32>,
    portion_g: Option<f32>,
    limits: &Limits,
) -> Result<Task, Rejection> {
    let template = check_text("template", template.unwrap_or(CAPTION_TEMPLATE), limits)?;
    let n = check_count("caption", n, DEFAULT_CAPTIONS, limits.max_captions)?;
    if let Some(g) = portion_g {
        if !(g.is_finite() && g > 0.0 && g <= 10_000.0) {
            return Err(Rejection::new(ErrorCode::InvalidRequest, "the portion must be between 0 and 10000 g"));
        }
    }
    Ok(Task::Recognize { image, template, n, portion_g })
}

pub fn classify_task(
    image: DynamicImage,
    classes: &[String],
    template: Option<&str>,
    method: ClassifyMethod,
    limits: &Limits,
) -> Result<Task, Rejection> {
    let classes: Vec<String> = classes.iter().map(|c| c.trim()).filter(|c| !c.is_empty()).map(str::to_string).collect();
    if classes.len() < 2 {
        return Err(Rejection::new(ErrorCode::InvalidRequest, "give at least two dishes to choose from"));
    }
    if classes.len() > limits.max_classes {
        return Err(Rejection::new(
            ErrorCode::InvalidRequest,
            format!("{} dishes given; the limit is {}", classes.len(), limits.max_classes),
        ));
    }
    let classes = classes.iter().map(|c| check_text("dish name", c, limits)).collect::<Result<Vec<_>, _>>()?;
    let template = check_text("template", template.unwrap_or(default_class_template(method)), limits)?;
    Ok(Task::Classify { image, classes, template, method })
}

pub fn generate_image_task(text: &str, n: Option<u32>, seed: Option<u64>, limits: &Limits) -> Result<Task, Rejection> {
    Ok(Task::GenerateImage {
        text: check_text("text", text, limits)?,
        n: check_count("image", n, DEFAULT_IMAGES, limits.max_images)?,
        best_of: limits.image_best_of as usize,
        seed,
    })
}

pub fn generate_text_task(prompt: &str, n: Option<u32>, limits: &Limits) -> Result<Task, Rejection> {
    Ok(Task::GenerateText {
        prompt: check_text("prompt", prompt, limits)?,
        n: check_count("text", n, DEFAULT_TEXTS, limits.max_texts)?,
    })
}

/// The task a WebSocket request asks for (`None` for messages that are not requests).
/// Decoding the picture is CPU work: call this off the async threads.
pub fn task_of(message: &ClientMessage, limits: &Limits, side: u32) -> Option<Result<Task, Rejection>> {
    Some(match message {
        ClientMessage::Recognize { image, template, n, portion_g, .. } => decode_base64_image(image, limits, side)
            .and_then(|image| recognize_task(image, template.as_deref(), *n, *portion_g, limits)),
        ClientMessage::Classify { image, classes, template, method, .. } => decode_base64_image(image, limits, side)
            .and_then(|image| classify_task(image, classes, template.as_deref(), method.unwrap_or_default(), limits)),
        ClientMessage::GenerateImage { text, n, seed, .. } => generate_image_task(text, *n, *seed, limits),
        ClientMessage::GenerateText { prompt, n, .. } => generate_text_task(prompt, *n, limits),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawing_request_takes_the_servers_best_of() {
        let limits = Limits { image_best_of: 3, ..Limits::default() };
        match generate_image_task("борщ", Some(2), Some(9), &limits) {
            Ok(Task::GenerateImage { text, n, best_of, seed }) => {
                assert_eq!((text.as_str(), n, best_of, seed), ("борщ", 2, 3, Some(9)))
            }
            other => panic!("{:?}", other.map(|t| t.kind())),
        }
    }
}
