//! Channels between client and server, above TCP.
//!
//! # Layout
//! - [`secure`]: [`SecureStream`], an encrypted, authenticated byte stream
//!   made of [`opennotr_proto::record`] records.
//! - [`channel`]: [`Channel`] (plain or sealed TCP) and [`TunnelStream`], the
//!   stream a plugin gets for one proxied connection.
//! - [`framed`]: reading and writing control messages with timeouts.
//! - [`relay`]: copying between a visitor and a tunnel stream, with half-close.
//! - [`accept`]: an accept loop that backs off on errors instead of dying.

pub mod accept;
pub mod channel;
pub mod framed;
pub mod mux;
pub mod relay;
pub mod secure;

pub use accept::Acceptor;
pub use channel::{Channel, Counters, TunnelStream};
pub use framed::{read_frame_exact, read_preface, timed, write_frame, FrameReader, FrameWriter, TransportError};
pub use secure::SecureStream;

/// Sets the socket options every tunnel TCP connection wants.
pub fn tune_tcp(s: &tokio::net::TcpStream) {
    // Control messages and interactive streams must not wait for Nagle;
    // bulk transfers write 64 KiB at a time, so they lose nothing.
    let _ = s.set_nodelay(true);
}
