//! The IRCv3 WebSocket transport: one IRC line per WebSocket message, subprotocols
//! `text.ircv3.net` and `binary.ircv3.net`, bounded buffers, ping frames.

use std::io;
use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use keel_irc_proto::MAX_LINE;

use crate::conn::{Inbound, Transport};

/// Subprotocols offered, in order of preference.
pub const PROTOCOLS: [&str; 2] = ["text.ircv3.net", "binary.ircv3.net"];

/// IRC over an upgraded WebSocket.
pub struct WsTransport {
    socket: WebSocket,
    binary: bool,
}

impl WsTransport {
    pub fn new(socket: WebSocket) -> Self {
        let binary = socket
            .protocol()
            .is_some_and(|p| p.as_bytes() == b"binary.ircv3.net");
        Self { socket, binary }
    }
}

fn line(bytes: &[u8]) -> Inbound {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.len() >= MAX_LINE {
        Inbound::TooLong
    } else {
        Inbound::Line(BytesMut::from(bytes))
    }
}

impl Transport for WsTransport {
    async fn read(&mut self) -> io::Result<Inbound> {
        loop {
            return match self.socket.next().await {
                None | Some(Ok(WsMessage::Close(_))) => Ok(Inbound::Closed),
                Some(Err(e)) => Err(io::Error::other(e)),
                Some(Ok(WsMessage::Text(t))) => Ok(line(t.as_str().as_bytes())),
                Some(Ok(WsMessage::Binary(b))) => Ok(line(&b)),
                Some(Ok(WsMessage::Pong(_))) => Ok(Inbound::Alive),
                Some(Ok(WsMessage::Ping(_))) => continue,
            };
        }
    }

    async fn write(&mut self, lines: &[Arc<str>]) -> io::Result<()> {
        for l in lines {
            let msg = if self.binary {
                WsMessage::Binary(l.as_bytes().to_vec().into())
            } else {
                WsMessage::Text(l.to_string().into())
            };
            self.socket.feed(msg).await.map_err(io::Error::other)?;
        }
        self.socket.flush().await.map_err(io::Error::other)
    }

    async fn ping(&mut self) -> io::Result<()> {
        self.socket
            .send(WsMessage::Ping(bytes::Bytes::from_static(b"keel")))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.socket.send(WsMessage::Close(None)).await;
    }
}
