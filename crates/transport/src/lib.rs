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
//! - [`hello`]: the connecting side of the tunnel's handshake (a client's,
//!   and a cluster node's toward another node).
//! - [`relay`]: copying between a visitor and a tunnel stream, with half-close;
//!   `splice` does it inside the kernel for plaintext channels (Linux).
//! - [`accept`]: an accept loop that backs off on errors instead of dying
//!   and keeps [`fds`]' reserve of file descriptors.
//! - [`source`]: where a connection comes from, for per-source caps.

pub mod accept;
pub mod bandwidth;
pub mod channel;
pub mod fds;
pub mod framed;
pub mod hello;
pub mod mux;
pub mod quic;
pub mod relay;
pub mod secure;
pub mod source;
#[cfg(target_os = "linux")]
pub mod splice;

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

/// Whether the peer has closed `s` (or the socket failed), found without
/// reading: a peek that sees the end of the stream. Data waiting, or nothing
/// yet, means the peer is still there.
pub fn peer_closed(s: &tokio::net::TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(s).peek(&mut probe) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted,
    }
}

/// How often both sides probe an idle spare channel.
pub const SPARE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// Probes an idle connection every `idle` (TCP keepalive), so that a NAT on
/// the way keeps its mapping and a peer that vanished is noticed by the
/// kernel: for channels that stay silent until they are needed.
pub fn keep_alive(s: &tokio::net::TcpStream, idle: std::time::Duration) {
    let ka = socket2::TcpKeepalive::new().with_time(idle).with_interval(idle);
    #[cfg(not(any(target_os = "openbsd", target_os = "windows")))]
    let ka = ka.with_retries(3);
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
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

    #[tokio::test]
    async fn a_closed_peer_is_seen_without_reading() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut peer, _) = l.accept().await.unwrap();
        assert!(!super::peer_closed(&s), "nothing sent yet");
        peer.write_all(b"x").await.unwrap();
        s.readable().await.unwrap();
        assert!(!super::peer_closed(&s), "data waiting");
        let mut buf = [0u8; 1];
        s.try_read(&mut buf).unwrap();
        drop(peer);
        s.readable().await.unwrap();
        assert!(super::peer_closed(&s));
    }
}
