//! The connecting side of the tunnel's handshake, over any stream: what a
//! client does toward a server, and a cluster node toward another node.

use std::time::Duration;

use bytes::BytesMut;
use opennotr_proto::handshake::{ClientHandshake, HandshakeError, SessionKeys};
use opennotr_proto::message::RefuseCode;
use opennotr_proto::{ClientMessage, ServerMessage, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::framed::{read_frame_exact, timed, write_frame, TransportError};

/// Who connects: its key, its name (`None`: the shared key), what it asks
/// for and calls itself, and the bound on each step.
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    pub key: &'a [u8],
    pub name: Option<&'a str>,
    pub plaintext: bool,
    pub software: &'a str,
    pub limit: Duration,
}

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The other side refused, and said why.
    #[error("refused ({code}): {message}")]
    Refused { code: RefuseCode, message: String },
    /// Key confirmation failed on this side: the keys differ.
    #[error("the other side does not know our key")]
    BadKey,
    /// The other side sent something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed, or a step took too long.
    #[error("{0}")]
    Transport(#[from] TransportError),
}

/// The handshake on `s`: the preface and hello (in one write), the
/// challenge, key confirmation. `binding` ties the transcript to the secure
/// channel underneath (QUIC's TLS exporter): a relay that terminated TLS
/// holds another binding, so its MAC fails here exactly like a wrong key.
pub async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    who: Hello<'_>,
    binding: Option<&[u8]>,
) -> Result<SessionKeys, HelloError> {
    let (hs, spake) = ClientHandshake::start(who.key, who.name, who.plaintext);
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        spake,
        plaintext: who.plaintext,
        software: who.software.into(),
        name: who.name.map(str::to_string),
    };
    timed(who.limit, "sending hello", async {
        let mut first = BytesMut::from(&opennotr_proto::frame::preface()[..]);
        opennotr_proto::frame::encode_frame(&hello.to_bytes(), &mut first)?;
        s.write_all(&first).await?;
        Ok(())
    })
    .await?;
    let reply = timed(who.limit, "waiting for the challenge", read_frame_exact(&mut *s)).await?;
    let (keys, mac) = match ServerMessage::from_bytes(&reply).map_err(TransportError::from)? {
        ServerMessage::Challenge { version, spake, mac, software } => {
            if version != PROTOCOL_VERSION {
                return Err(HelloError::Protocol(format!(
                    "the other side speaks protocol {version}, we speak {PROTOCOL_VERSION}"
                )));
            }
            tracing::debug!(%software, "the other side");
            match hs.finish_bound(&spake, &mac, binding) {
                Ok(x) => x,
                Err(HandshakeError::BadKey) => return Err(HelloError::BadKey),
                Err(e) => return Err(HelloError::Protocol(e.to_string())),
            }
        }
        ServerMessage::Refused { code, message } => return Err(HelloError::Refused { code, message }),
        other => return Err(HelloError::Protocol(format!("unexpected message {other:?}"))),
    };
    timed(who.limit, "sending confirm", write_frame(&mut *s, &ClientMessage::Confirm { mac }.to_bytes())).await?;
    Ok(keys)
}
