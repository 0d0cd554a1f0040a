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

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of this protocol; both peers announce it in their `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Frames the browser (or any client) sends.
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
}

impl ClientMessage {
    /// The `"type"` tags this protocol version understands.
    pub const TYPES: &'static [&'static str] = &["hello", "ping"];
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// Sent as soon as a connection opens.
    Hello {
        protocol_version: u32,
        /// Server name and version, e.g. `borscht/0.1.0`, for logs and bug reports.
        server: String,
    },
    Pong {
        nonce: u64,
    },
    /// Something the client sent could not be served. The connection stays open
    /// unless the code says otherwise.
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ServerMessage {
    pub const TYPES: &'static [&'static str] = &["hello", "pong", "error"];

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error { code, message: message.into() }
    }
}

/// Machine-readable reason carried by [`ServerMessage::Error`].
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
        ServerMessage::Error { code: e.code, message: e.message }
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

fn decode<T: for<'de> Deserialize<'de>>(text: &str, known: &[&str]) -> Result<T, DecodeError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DecodeError {
        code: ErrorCode::MalformedJson,
        message: format!("frame is not valid JSON: {e}"),
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
                message: format!("\"type\" must be a string, got {other}"),
            })
        }
    };
    if !known.contains(&tag.as_str()) {
        return Err(DecodeError {
            code: ErrorCode::UnknownMessageType,
            message: format!("unknown message type {tag:?}; expected one of {known:?}"),
        });
    }
    serde_json::from_value(value)
        .map_err(|e| DecodeError { code: ErrorCode::InvalidMessage, message: format!("invalid {tag:?} message: {e}") })
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
        assert_eq!(text, r#"{"type":"hello","protocol_version":1}"#);
        assert_eq!(decode_client_message(&text).unwrap(), hello);

        let err = ServerMessage::error(ErrorCode::MalformedJson, "bad");
        let text = encode(&err);
        assert_eq!(text, r#"{"type":"error","code":"malformed_json","message":"bad"}"#);
        assert_eq!(decode_server_message(&text).unwrap(), err);
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
        for (tag, sample) in
            [("hello", r#"{"type":"hello","protocol_version":1}"#), ("ping", r#"{"type":"ping","nonce":3}"#)]
        {
            assert!(ClientMessage::TYPES.contains(&tag));
            decode_client_message(sample).unwrap();
        }
        assert_eq!(ClientMessage::TYPES.len(), 2);
        for sample in [
            encode(&ServerMessage::Hello { protocol_version: 1, server: "x".into() }),
            encode(&ServerMessage::Pong { nonce: 1 }),
            encode(&ServerMessage::error(ErrorCode::InvalidMessage, "m")),
        ] {
            decode_server_message(&sample).unwrap();
        }
        assert_eq!(ServerMessage::TYPES.len(), 3);
    }
}
