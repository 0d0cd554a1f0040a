//! The Borscht wire protocol: JSON text frames over the `/ws` WebSocket.
//!
//! Every frame is one JSON object whose `"type"` field names the message
//! (`snake_case`). Both sides decode with [`decode_client_message`] /
//! [`decode_server_message`], so the server and the web app agree on what a
//! malformed frame is and how it is reported.
//!
//! The server greets each connection with [`ServerMessage::Hello`]; a client
//! speaking another [`PROTOCOL_VERSION`] gets an [`ErrorCode::ProtocolMismatch`].
//! Bump the version whenever a change would make an older peer misread a frame.

pub mod nutrition;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of this protocol; both peers announce it in their `hello`.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest protocol a server still serves (its clients ignore what later versions
/// add).
pub const OLDEST_PROTOCOL_VERSION: u32 = 2;

/// Identifies one request on one connection. The client picks it (unique among its
/// requests in flight) and every answer to that request carries it.
pub type RequestId = u64;

/// Frames the browser (or any client) sends.
///
/// Pictures travel as standard base64 (with or without a `data:image/...;base64,`
/// prefix) inside the JSON frame; binary frames are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First frame of a client: which protocol it speaks.
    Hello { protocol_version: u32 },
    /// Liveness check; the server answers with a [`ServerMessage::Pong`] echoing `nonce`.
    Ping {
        #[serde(default)]
        nonce: u64,
    },
    /// What dish is in this photo? Candidates stream back, then a `result`.
    Recognize {
        id: RequestId,
        image: String,
        /// Start of every caption (default `блюдо:`).
        #[serde(default)]
        template: Option<String>,
        /// Captions to sample (default 16).
        #[serde(default)]
        n: Option<u32>,
        /// Also give the values for a portion of this many grams.
        #[serde(default)]
        portion_g: Option<f32>,
    },
    /// Which of these dishes is in the photo? Answered with a `classification`.
    Classify {
        id: RequestId,
        image: String,
        classes: Vec<String>,
        /// How a class is written, `{}` standing for it (default: `блюдо: {};` for
        /// `caption_fit`, `блюдо: {}` for `zero_shot`, the dish alone for `image_fit`).
        #[serde(default)]
        template: Option<String>,
        /// How to choose (default `caption_fit`).
        #[serde(default)]
        method: Option<ClassifyMethod>,
    },
    /// Draw the dish: previews while sampling, then `images`.
    GenerateImage {
        id: RequestId,
        text: String,
        #[serde(default)]
        n: Option<u32>,
        /// Draws the pictures of an earlier answer's `seed` again (protocol 3); without
        /// one every request draws new pictures.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
    },
    /// Continue a text: answered with `texts`, ranked by perplexity.
    GenerateText {
        id: RequestId,
        prompt: String,
        #[serde(default)]
        n: Option<u32>,
    },
    /// Stop a request; answered with `cancelled` (or nothing more if it already ended).
    Cancel { id: RequestId },
}

impl ClientMessage {
    /// The `"type"` tags this protocol version understands.
    pub const TYPES: &'static [&'static str] =
        &["hello", "ping", "recognize", "classify", "generate_image", "generate_text", "cancel"];

    /// The request id, for messages that start or stop work.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            ClientMessage::Hello { .. } | ClientMessage::Ping { .. } => None,
            ClientMessage::Recognize { id, .. }
            | ClientMessage::Classify { id, .. }
            | ClientMessage::GenerateImage { id, .. }
            | ClientMessage::GenerateText { id, .. }
            | ClientMessage::Cancel { id } => Some(*id),
        }
    }
}

/// How "which of these dishes?" is decided.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClassifyMethod {
    /// The class whose caption start (`блюдо: …;`) is most likely after the photo; unlike
    /// `zs_clf`, the text's ending is not scored (captions go on after the dish).
    #[default]
    CaptionFit,
    /// The class under which the photo's image codes are most likely (re-ranking by image).
    ImageFit,
    /// The reference's `zs_clf`: perplexity of each class text after the photo.
    ZeroShot,
}

/// A caption with its fit to the photo (lower perplexity fits better).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCaption {
    pub text: String,
    pub nutrition: nutrition::Nutrition,
    pub perplexity: f32,
}

/// A dish the model knows: one its training captions name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dish {
    /// As the captions write it (Russian for RUDOLPH and the demo model).
    pub name: String,
    /// Its English name, when the model's data set gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub en: Option<String>,
}

/// What the model makes of a photo.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// `best` is the dish (with `confidence` the probability that it is right).
    #[default]
    Dish,
    /// Looks like food, but no dish is likely enough to name; `best` is only a guess.
    NotSure,
    /// The photo fits none of the dishes the model knows: probably not food at all.
    NotFood,
}

/// The answer to a `recognize` request (also the HTTP API's JSON).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recognition {
    /// Whether to trust `best`: the dish, "not sure" or "not food". Servers before
    /// protocol 3 send none (read as `dish`).
    #[serde(default)]
    pub verdict: Verdict,
    /// The most likely dish; `None` when no caption named one. With a verdict other than
    /// `dish`, a guess to show as such (or not at all).
    pub best: Option<nutrition::DishOption>,
    pub alternatives: Vec<nutrition::DishOption>,
    /// The probability that `best` is the dish, when `calibrated`; otherwise the best
    /// dish's share of the evidence (how much the samples agreed). 0 without a dish.
    pub confidence: f32,
    /// Whether `confidence` is a calibrated probability (the model has a calibration).
    #[serde(default)]
    pub calibrated: bool,
    /// Whether the best dish's numbers agree with 4P + 9F + 4C.
    pub atwater: Option<nutrition::AtwaterCheck>,
    /// The best dish's values for the requested portion.
    pub portion: Option<nutrition::Nutrition>,
    /// Every distinct caption, best fitting first.
    pub candidates: Vec<RankedCaption>,
}

/// A zero-shot choice (also the HTTP API's JSON).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub classes: Vec<String>,
    /// Softmax over the normalised perplexities: the lowest is the answer.
    pub scores: Vec<f32>,
    /// Each class's perplexity as scored (lower fits better). The scores keep these only
    /// up to a factor, and lose them when one class fits far worse than the rest.
    #[serde(default)]
    pub perplexities: Vec<f32>,
    /// Index of the chosen class.
    pub label: usize,
    /// Even the chosen class fits the photo poorly (the model's calibration says how
    /// poorly is too poorly): the answer is "none of these".
    #[serde(default)]
    pub none_of_these: bool,
}

impl Classification {
    /// Each class's fit relative to the others, for display: 1 for the best, 0 for the
    /// worst, and between them linear in log-perplexity (the mean cross-entropy per token).
    /// All 1 when every class fits alike or the perplexities are missing.
    pub fn relative_fit(&self) -> Vec<f32> {
        let logs: Vec<f32> = self.perplexities.iter().map(|p| p.max(f32::MIN_POSITIVE).ln()).collect();
        let (best, worst) = logs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &l| (lo.min(l), hi.max(l)));
        if logs.len() != self.classes.len() || worst <= best {
            return vec![1.0; self.classes.len()];
        }
        logs.iter().map(|l| (worst - l) / (worst - best)).collect()
    }
}

/// A generated text with its perplexity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedText {
    pub text: String,
    pub perplexity: f32,
}

/// Frames the server sends.
///
/// Each request gets `accepted` (or an `error`), then its stream, then exactly one
/// final frame: `result`, `classification`, `images`, `texts`, `cancelled` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// Sent as soon as a connection opens.
    Hello {
        protocol_version: u32,
        /// Server name and version, e.g. `borscht/0.1.0`, for logs and bug reports.
        server: String,
        /// The model being served (a directory name or hub id); `None` while none is loaded.
        #[serde(default)]
        model: Option<String>,
        /// The dishes the model knows (protocol 3; sent to clients that connect to
        /// `/ws?protocol=3`, left out for older ones).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dishes: Vec<Dish>,
        /// The model version served (protocol 4): `base`, or a fine-tune the operator
        /// promoted (`v3`); `None` when the server keeps no versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_version: Option<String>,
        /// Whether the server stores corrections as training examples (protocol 4):
        /// the app then offers "Wrong? Tell us".
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        teaching: bool,
    },
    Pong {
        nonce: u64,
    },
    /// The request is queued; `queue_position` requests are ahead of it.
    Accepted {
        id: RequestId,
        queue_position: u32,
    },
    /// Work in progress: `step` of `total` decoding steps.
    Progress {
        id: RequestId,
        step: u32,
        total: u32,
    },
    /// A caption as soon as it is sampled (perplexity comes with the `result`).
    Candidate {
        id: RequestId,
        text: String,
        nutrition: nutrition::Nutrition,
    },
    /// Partial pictures (base64 PNG), rows above `rows_done` final.
    ImagePreview {
        id: RequestId,
        rows_done: u32,
        rows_total: u32,
        images: Vec<String>,
    },
    Result {
        id: RequestId,
        recognition: Recognition,
    },
    Classification {
        id: RequestId,
        classification: Classification,
    },
    /// The finished pictures (base64 PNG).
    Images {
        id: RequestId,
        images: Vec<String>,
        /// What draws these pictures again (protocol 3; left out for older clients).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
    },
    Texts {
        id: RequestId,
        texts: Vec<RankedText>,
    },
    Cancelled {
        id: RequestId,
    },
    /// Something the client sent could not be served. `id` names the request when
    /// there is one; the connection stays open unless the code says otherwise.
    Error {
        #[serde(default)]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
        /// For `busy`: when trying again makes sense.
        #[serde(default)]
        retry_after_s: Option<u32>,
    },
}

impl ServerMessage {
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "pong",
        "accepted",
        "progress",
        "candidate",
        "image_preview",
        "result",
        "classification",
        "images",
        "texts",
        "cancelled",
        "error",
    ];

    /// An error about the connection or a frame, not about one request.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error { id: None, code, message: message.into(), retry_after_s: None }
    }

    /// An error ending request `id`.
    pub fn request_error(id: RequestId, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error { id: Some(id), code, message: message.into(), retry_after_s: None }
    }

    /// The request this frame belongs to, if any.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            ServerMessage::Hello { .. } | ServerMessage::Pong { .. } => None,
            ServerMessage::Error { id, .. } => *id,
            ServerMessage::Accepted { id, .. }
            | ServerMessage::Progress { id, .. }
            | ServerMessage::Candidate { id, .. }
            | ServerMessage::ImagePreview { id, .. }
            | ServerMessage::Result { id, .. }
            | ServerMessage::Classification { id, .. }
            | ServerMessage::Images { id, .. }
            | ServerMessage::Texts { id, .. }
            | ServerMessage::Cancelled { id } => Some(*id),
        }
    }

    /// The frame as a client of protocol `version` reads it: what later versions added
    /// left out (a frame with fields a client does not know is one it refuses).
    pub fn for_version(self, version: u32) -> ServerMessage {
        if version >= 4 {
            return self;
        }
        if version == 3 {
            return match self {
                ServerMessage::Hello { protocol_version, server, model, dishes, .. } => ServerMessage::Hello {
                    protocol_version,
                    server,
                    model,
                    dishes,
                    model_version: None,
                    teaching: false,
                },
                other => other,
            };
        }
        match self {
            ServerMessage::Hello { protocol_version, server, model, .. } => ServerMessage::Hello {
                protocol_version,
                server,
                model,
                dishes: Vec::new(),
                model_version: None,
                teaching: false,
            },
            ServerMessage::Images { id, images, .. } => ServerMessage::Images { id, images, seed: None },
            other => other,
        }
    }

    /// True for the frame that ends a request.
    pub fn is_final(&self) -> bool {
        match self {
            ServerMessage::Error { id, .. } => id.is_some(),
            ServerMessage::Result { .. }
            | ServerMessage::Classification { .. }
            | ServerMessage::Images { .. }
            | ServerMessage::Texts { .. }
            | ServerMessage::Cancelled { .. } => true,
            _ => false,
        }
    }
}

/// Machine-readable reason carried by [`ServerMessage::Error`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON (or not text).
    MalformedJson,
    /// The frame is JSON but its `"type"` is missing or unknown.
    UnknownMessageType,
    /// A known message with missing, extra or ill-typed fields.
    InvalidMessage,
    /// The client speaks another protocol version.
    ProtocolMismatch,
    /// The frame is larger than the server accepts.
    FrameTooLarge,
    /// The picture cannot be decoded (corrupt, empty, or not an image).
    InvalidImage,
    /// The picture is too large (bytes or pixels).
    ImageTooLarge,
    /// A field is out of range: text too long, too many classes, n too large...
    InvalidRequest,
    /// A text holds characters the model's vocabulary lacks (the message names them).
    UnknownCharacters,
    /// Another request in flight on this connection already uses this id. Sent without
    /// an id: the id belongs to the live request, which still gets its own final frame.
    DuplicateId,
    /// This connection, or this client's address over all its connections and the HTTP
    /// API, has too many requests in flight.
    TooManyRequests,
    /// The queue is full: try again after `retry_after_s`.
    Busy,
    /// The server is shutting down or has no model loaded.
    Unavailable,
    /// The model failed; the message says how.
    Internal,
    /// An admin route without the server's admin token (HTTP API only).
    Unauthorized,
    /// No such example or model version, or the server does not keep them (HTTP API only).
    NotFound,
    /// The request clashes with what the server is doing: a fine-tune already runs, a
    /// version is not finished (HTTP API only).
    Conflict,
}
/// Why a frame could not be decoded; maps onto an [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for ServerMessage {
    fn from(e: DecodeError) -> Self {
        ServerMessage::error(e.code, e.message)
    }
}

/// Decodes a client frame, telling malformed JSON, unknown types and bad fields apart.
pub fn decode_client_message(text: &str) -> Result<ClientMessage, DecodeError> {
    decode(text, ClientMessage::TYPES)
}

/// Decodes a server frame (used by the web app and by tests).
pub fn decode_server_message(text: &str) -> Result<ServerMessage, DecodeError> {
    decode(text, ServerMessage::TYPES)
}

/// `text` cut to its first `max` characters (with "…" when cut): error messages quote a
/// client's input only this far, so an answer is never larger than the frame it answers.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Longest quote of a client's input in an error message.
const QUOTED: usize = 120;

fn decode<T: for<'de> Deserialize<'de>>(text: &str, known: &[&str]) -> Result<T, DecodeError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DecodeError {
        code: ErrorCode::MalformedJson,
        message: format!("frame is not valid JSON: {}", clip(&e.to_string(), QUOTED)),
    })?;
    let tag = match value.get("type") {
        None => {
            return Err(DecodeError {
                code: ErrorCode::UnknownMessageType,
                message: format!("frame has no \"type\" field; expected one of {known:?}"),
            })
        }
        Some(serde_json::Value::String(tag)) => tag.clone(),
        Some(other) => {
            return Err(DecodeError {
                code: ErrorCode::UnknownMessageType,
                message: format!("\"type\" must be a string, got {}", clip(&other.to_string(), QUOTED)),
            })
        }
    };
    if !known.contains(&tag.as_str()) {
        return Err(DecodeError {
            code: ErrorCode::UnknownMessageType,
            message: format!("unknown message type {:?}; expected one of {known:?}", clip(&tag, 40)),
        });
    }
    serde_json::from_value(value).map_err(|e| DecodeError {
        code: ErrorCode::InvalidMessage,
        message: format!("invalid {tag:?} message: {}", clip(&e.to_string(), QUOTED)),
    })
}

/// Encodes any protocol message as a JSON text frame.
pub fn encode<T: Serialize>(message: &T) -> String {
    // Serialising these plain enums cannot fail (no maps with non-string keys).
    serde_json::to_string(message).expect("protocol messages always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_snake_case_tags() {
        let hello = ClientMessage::Hello { protocol_version: PROTOCOL_VERSION };
        let text = encode(&hello);
        assert_eq!(text, format!(r#"{{"type":"hello","protocol_version":{PROTOCOL_VERSION}}}"#));
        assert_eq!(decode_client_message(&text).unwrap(), hello);

        let err = ServerMessage::error(ErrorCode::MalformedJson, "bad");
        let text = encode(&err);
        assert_eq!(text, r#"{"type":"error","id":null,"code":"malformed_json","message":"bad","retry_after_s":null}"#);
        assert_eq!(decode_server_message(&text).unwrap(), err);
    }

    #[test]
    fn relative_fit_is_linear_in_log_perplexity_from_best_to_worst() {
        let classification = |perplexities: &[f32]| Classification {
            classes: perplexities.iter().map(|p| p.to_string()).collect(),
            scores: vec![0.0; perplexities.len()],
            perplexities: perplexities.to_vec(),
            label: 0,
            none_of_these: false,
        };
        // One class far worse than the rest (a softmax of normalised perplexities all but
        // loses the others' differences there).
        let fit = classification(&[3.0, 2.0, 5000.0, 2.5]).relative_fit();
        let log_fit = |ppl: f32| (5000.0f32 / ppl).ln() / 2500.0f32.ln();
        for (got, want) in fit.iter().zip([log_fit(3.0), 1.0, 0.0, log_fit(2.5)]) {
            assert!((got - want).abs() < 1e-5, "{fit:?}");
        }
        assert!(fit[3] > fit[0], "2.5 fits better than 3");
        assert_eq!(classification(&[4.0, 4.0]).relative_fit(), vec![1.0, 1.0], "a tie fits alike");
        let old_server = Classification { perplexities: vec![], ..classification(&[1.0, 2.0]) };
        assert_eq!(old_server.relative_fit(), vec![1.0, 1.0], "without perplexities, no ranking to draw");
    }

    #[test]
    fn ping_nonce_defaults_to_zero() {
        assert_eq!(decode_client_message(r#"{"type":"ping"}"#).unwrap(), ClientMessage::Ping { nonce: 0 });
    }

    #[test]
    fn decode_errors_are_classified() {
        let code = |t: &str| decode_client_message(t).unwrap_err().code;
        assert_eq!(code("{not json"), ErrorCode::MalformedJson);
        assert_eq!(code(r#"{"nonce": 1}"#), ErrorCode::UnknownMessageType);
        assert_eq!(code(r#"{"type": 7}"#), ErrorCode::UnknownMessageType);
        assert_eq!(code(r#"{"type": "launch_rocket"}"#), ErrorCode::UnknownMessageType);
        assert_eq!(code(r#"{"type": "hello"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type": "ping", "nonce": "x"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type": "ping", "extra": 1}"#), ErrorCode::InvalidMessage);
        // A server-only message sent by a client is unknown to the server.
        assert_eq!(code(r#"{"type": "pong", "nonce": 1}"#), ErrorCode::UnknownMessageType);
    }

    #[test]
    fn known_type_lists_match_the_enums() {
        // Every listed tag must decode into its enum when the fields are right,
        // so the lists cannot silently drift from the variants.
        let clients = [
            r#"{"type":"hello","protocol_version":2}"#,
            r#"{"type":"ping","nonce":3}"#,
            r#"{"type":"recognize","id":1,"image":"aGk=","n":4,"portion_g":250}"#,
            r#"{"type":"classify","id":2,"image":"aGk=","classes":["борщ","шаурма"]}"#,
            r#"{"type":"generate_image","id":3,"text":"борщ"}"#,
            r#"{"type":"generate_text","id":4,"prompt":"блюдо:"}"#,
            r#"{"type":"cancel","id":1}"#,
        ];
        let mut tags: Vec<String> = Vec::new();
        for sample in clients {
            let message = decode_client_message(sample).unwrap();
            let value: serde_json::Value = serde_json::from_str(&encode(&message)).unwrap();
            tags.push(value["type"].as_str().unwrap().to_string());
        }
        assert_eq!(tags, ClientMessage::TYPES);

        let id = 9;
        let servers = [
            ServerMessage::Hello {
                protocol_version: 3,
                server: "x".into(),
                model: None,
                dishes: vec![Dish { name: "рис".into(), en: Some("rice".into()) }],
                model_version: Some("v2".into()),
                teaching: true,
            },
            ServerMessage::Pong { nonce: 1 },
            ServerMessage::Accepted { id, queue_position: 0 },
            ServerMessage::Progress { id, step: 1, total: 2 },
            ServerMessage::Candidate { id, text: "блюдо: рис;".into(), nutrition: Default::default() },
            ServerMessage::ImagePreview { id, rows_done: 4, rows_total: 8, images: vec![] },
            ServerMessage::Result {
                id,
                recognition: Recognition {
                    verdict: Verdict::NotFood,
                    best: None,
                    alternatives: vec![],
                    confidence: 0.0,
                    calibrated: true,
                    atwater: None,
                    portion: None,
                    candidates: vec![],
                },
            },
            ServerMessage::Classification {
                id,
                classification: Classification {
                    classes: vec!["a".into()],
                    scores: vec![1.0],
                    perplexities: vec![3.0],
                    label: 0,
                    none_of_these: true,
                },
            },
            ServerMessage::Images { id, images: vec![], seed: Some(7) },
            ServerMessage::Texts { id, texts: vec![] },
            ServerMessage::Cancelled { id },
            ServerMessage::request_error(id, ErrorCode::Busy, "m"),
        ];
        let mut tags: Vec<String> = Vec::new();
        for message in servers {
            let text = encode(&message);
            assert_eq!(decode_server_message(&text).unwrap(), message);
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            tags.push(value["type"].as_str().unwrap().to_string());
        }
        assert_eq!(tags, ServerMessage::TYPES);
    }

    /// Protocol 2 clients refuse frames with fields they do not know: what protocol 3
    /// added to `hello` and `images` is left out for them, and what it added inside the
    /// answers (which they read leniently) reads as before when an older server leaves it
    /// out.
    #[test]
    fn older_clients_get_frames_they_can_read() {
        let hello = ServerMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            server: "borscht".into(),
            model: None,
            dishes: vec![Dish { name: "рис".into(), en: None }],
            model_version: Some("v1".into()),
            teaching: true,
        };
        let images = ServerMessage::Images { id: 1, images: vec![], seed: Some(5) };
        for (frame, field) in [(hello.clone(), "dishes"), (images, "seed")] {
            assert!(encode(&frame.clone().for_version(3)).contains(field));
            let old = encode(&frame.for_version(2));
            assert!(!old.contains(field), "{old}");
        }
        for field in ["model_version", "teaching"] {
            assert!(encode(&hello.clone().for_version(4)).contains(field));
            let old = encode(&hello.clone().for_version(3));
            assert!(!old.contains(field) && old.contains("dishes"), "{old}");
        }
        let old_result = r#"{"type":"result","id":1,"recognition":{"best":null,"alternatives":[],"confidence":0.5,"atwater":null,"portion":null,"candidates":[]}}"#;
        match decode_server_message(old_result).unwrap() {
            ServerMessage::Result { recognition, .. } => {
                assert_eq!((recognition.verdict, recognition.calibrated), (Verdict::Dish, false));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_request_has_an_id_and_final_frames_are_marked() {
        let recognize = decode_client_message(r#"{"type":"recognize","id":7,"image":""}"#).unwrap();
        assert_eq!(recognize.request_id(), Some(7));
        assert_eq!(ClientMessage::Ping { nonce: 0 }.request_id(), None);
        assert!(ServerMessage::Cancelled { id: 7 }.is_final());
        assert!(ServerMessage::request_error(7, ErrorCode::Busy, "busy").is_final());
        assert!(!ServerMessage::error(ErrorCode::MalformedJson, "x").is_final());
        assert!(!ServerMessage::Accepted { id: 7, queue_position: 0 }.is_final());
    }
}
