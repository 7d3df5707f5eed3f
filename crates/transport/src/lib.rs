//! Channels between client and server, above TCP.
//!
//! # Layout
//! - [`secure`]: [`SecureStream`], an encrypted, authenticated byte stream
//!   made of [`opennotr_proto::record`] records.
//! - [`channel`]: [`Channel`] (plain or sealed TCP) and [`TunnelStream`], the
//!   stream a plugin gets for one proxied connection.
//! - [`quic`]: QUIC endpoint configurations, a QUIC stream as a byte
//!   stream, and UDP flows as QUIC datagrams.
//! - [`framed`]: reading and writing control messages with timeouts.
//! - [`relay`]: copying between a visitor and a tunnel stream, with half-close.
//! - [`accept`]: an accept loop that backs off on errors instead of dying
//!   and keeps [`fds`]' reserve of file descriptors.
//! - [`source`]: where a connection comes from, for per-source caps.

pub mod accept;
pub mod channel;
pub mod fds;
pub mod framed;
pub mod mux;
pub mod quic;
pub mod relay;
pub mod secure;
pub mod source;

pub use accept::{listen, Acceptor};
pub use channel::{Channel, Counters, TunnelStream};
pub use fds::Priority;
pub use framed::{read_frame_exact, read_preface, timed, write_frame, FrameReader, FrameWriter, TransportError};
pub use secure::SecureStream;
pub use source::Source;

/// Sets the socket options every tunnel TCP connection wants.
pub fn tune_tcp(s: &tokio::net::TcpStream) {
    // Control messages and interactive streams must not wait for Nagle;
    // bulk transfers write 64 KiB at a time, so they lose nothing.
    let _ = s.set_nodelay(true);
}

/// Keeps at most `bytes` not yet sent in the kernel's queue of `s`
/// (`TCP_NOTSENT_LOWAT`; bytes in flight are not counted): a multiplexed
/// connection's writer then keeps the rest in its own queues, where the
/// streams take turns, instead of behind one another in the kernel's.
pub fn limit_unsent(s: Option<&tokio::net::TcpStream>, bytes: u32) {
    let Some(s) = s else { return };
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    let _ = socket2::SockRef::from(s).set_tcp_notsent_lowat(bytes);
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    let _ = (s, bytes);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn unsent_bytes_are_limited() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        super::limit_unsent(Some(&s), 128 * 1024);
        assert_eq!(socket2::SockRef::from(&s).tcp_notsent_lowat().unwrap(), 128 * 1024);
    }
}
