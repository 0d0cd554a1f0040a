//! The `/ws` endpoint: one task per connection speaking `borscht-protocol`.
//!
//! A bad frame is answered with an `error` message and the connection stays
//! open: a buggy or outdated client must never take the server down.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use borscht_protocol::{decode_client_message, encode, ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION};
use std::time::Duration;

/// How often an idle connection is pinged so proxies and phones keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Largest frame we accept; protocol frames are small (images come later, bounded separately).
const MAX_FRAME_BYTES: usize = 1 << 20;

pub async fn upgrade(ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_FRAME_BYTES).on_upgrade(handle_connection)
}

async fn handle_connection(mut socket: WebSocket) {
    let hello = ServerMessage::Hello { protocol_version: PROTOCOL_VERSION, server: server_name() };
    if send(&mut socket, &hello).await.is_err() {
        return;
    }
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await; // the first tick fires at once
    loop {
        tokio::select! {
            frame = socket.recv() => {
                let reply = match frame {
                    Some(Ok(Message::Text(text))) => respond(text.as_str()),
                    Some(Ok(Message::Binary(_))) => Some(ServerMessage::error(
                        ErrorCode::MalformedJson,
                        "binary frames are not part of this protocol version; send JSON text frames",
                    )),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::debug!("websocket closed with error: {e}");
                        break;
                    }
                };
                if let Some(reply) = reply {
                    if send(&mut socket, &reply).await.is_err() {
                        break;
                    }
                }
            }
            _ = keep_alive.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The protocol logic: what the server answers to one text frame.
pub fn respond(text: &str) -> Option<ServerMessage> {
    match decode_client_message(text) {
        Ok(ClientMessage::Hello { protocol_version }) if protocol_version == PROTOCOL_VERSION => None,
        Ok(ClientMessage::Hello { protocol_version }) => Some(ServerMessage::error(
            ErrorCode::ProtocolMismatch,
            format!("server speaks protocol {PROTOCOL_VERSION}, client speaks {protocol_version}; reload the page"),
        )),
        Ok(ClientMessage::Ping { nonce }) => Some(ServerMessage::Pong { nonce }),
        Err(e) => {
            tracing::debug!("bad client frame: {e}");
            Some(e.into())
        }
    }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    socket.send(Message::Text(encode(message).into())).await
}

fn server_name() -> String {
    format!("borscht/{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{router, serve_on, ServerConfig};
    use borscht_protocol::decode_server_message;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    async fn start_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServerConfig { addr, web_dir: std::env::temp_dir().join("borscht-no-web-app") };
        tokio::spawn(serve_on(listener, router(&config), std::future::pending()));
        addr
    }

    async fn next_message<S>(stream: &mut S) -> ServerMessage
    where
        S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("server answered in time")
                .expect("stream open")
                .expect("valid frame");
            if let WsMessage::Text(text) = frame {
                return decode_server_message(text.as_str()).expect("server frames decode");
            }
        }
    }

    #[tokio::test]
    async fn hello_ping_and_errors_keep_the_connection_open() {
        let addr = start_server().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();

        match next_message(&mut ws).await {
            ServerMessage::Hello { protocol_version, server } => {
                assert_eq!(protocol_version, PROTOCOL_VERSION);
                assert!(server.starts_with("borscht/"));
            }
            other => panic!("expected hello, got {other:?}"),
        }
        ws.send(WsMessage::Text(encode(&ClientMessage::Hello { protocol_version: PROTOCOL_VERSION }).into()))
            .await
            .unwrap();

        let bad_frames = [
            ("{oops", ErrorCode::MalformedJson),
            (r#"{"type":"teleport"}"#, ErrorCode::UnknownMessageType),
            (r#"{"type":"ping","nonce":"seven"}"#, ErrorCode::InvalidMessage),
            (r#"{"type":"hello","protocol_version":999}"#, ErrorCode::ProtocolMismatch),
        ];
        for (frame, expected) in bad_frames {
            ws.send(WsMessage::Text(frame.into())).await.unwrap();
            match next_message(&mut ws).await {
                ServerMessage::Error { code, message } => {
                    assert_eq!(code, expected, "{frame}: {message}");
                    assert!(!message.is_empty());
                }
                other => panic!("{frame}: expected an error, got {other:?}"),
            }
        }

        // Still alive after all that.
        ws.send(WsMessage::Text(r#"{"type":"ping","nonce":42}"#.into())).await.unwrap();
        assert_eq!(next_message(&mut ws).await, ServerMessage::Pong { nonce: 42 });

        // And a second client is served independently.
        let (mut other, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
        assert!(matches!(next_message(&mut other).await, ServerMessage::Hello { .. }));
    }

    #[tokio::test]
    async fn binary_frames_are_rejected_with_an_error() {
        let addr = start_server().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
        next_message(&mut ws).await; // hello
        ws.send(WsMessage::Binary(vec![1, 2, 3].into())).await.unwrap();
        assert!(matches!(next_message(&mut ws).await, ServerMessage::Error { code: ErrorCode::MalformedJson, .. }));
    }
}
