//! The opennotr wire protocol, with no IO: everything here is a pure
//! function of its inputs, so it is tested (and fuzzed) without sockets.
//!
//! # Layout
//! - [`frame`]: length-prefixed frames with a hard size cap, and the preface.
//! - [`message`]: one message enum per direction ([`ClientMessage`],
//!   [`ServerMessage`]), JSON bodies.
//! - [`handshake`]: SPAKE2 key agreement and key confirmation for the shared
//!   key; derives the session keys. The key never crosses the wire.
//! - [`record`]: AEAD records that encrypt a channel after the handshake.
//! - [`datagram`]: how UDP datagrams keep their boundaries on a stream.
//! - [`mux`]: many streams in one (the gateway's HTTP traffic): the frames,
//!   and the streams' state and windows as the frames move them
//!   ([`mux::Conn`]).
//! - [`quic`]: the QUIC transport's stream header, status byte and
//!   datagram framing.
//!
//! `docs/protocol.md` describes the same thing for people.
#![warn(missing_docs)]

pub mod datagram;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod mux;
pub mod proxy_header;
pub mod quic;
pub mod record;

pub use frame::{FrameError, MAX_FRAME_LEN, PREFACE_MAGIC, PROTOCOL_VERSION};
pub use message::{ClientMessage, NodeStream, ServerMessage};
