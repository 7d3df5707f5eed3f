//! The fuzz targets' bodies: one `fn(&[u8])` per decoder of network
//! input, each asserting what must hold for any input besides "does not
//! panic". `fuzz/` runs them under libFuzzer (cargo fuzz); this crate's
//! `tests/replay.rs` runs every committed corpus file through them in the
//! ordinary test suite, so what fuzzing found stays fixed on stable Rust
//! without cargo fuzz. See docs/fuzzing.md.
//!
//! Many targets read their first byte as a control byte (how to split
//! the rest into reads, which flags to pass): the same bytes then test
//! the decoder under every way a socket may deliver them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

mod access;
mod acme;
mod dns;
mod etcd;
mod frame;
mod h2c;
mod handshake;
mod http;
mod message;
mod mux;
mod quic;
mod record;
mod tls;

pub use access::access_rules;
pub use acme::acme_reply;
pub use dns::dns_query;
pub use etcd::etcd_reply;
pub use frame::{datagram, frame};
pub use h2c::h2c_name;
pub use handshake::handshake;
pub use http::{chunked, http_request, http_response};
pub use message::message;
pub use mux::{mux_frame, mux_session, mux_state};
pub use quic::quic_framing;
pub use record::record;
pub use tls::tls_hello;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and
/// its corpus directory `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("message", message),
    ("handshake", handshake),
    ("record", record),
    ("datagram", datagram),
    ("mux_frame", mux_frame),
    ("mux_session", mux_session),
    ("mux_state", mux_state),
    ("http_request", http_request),
    ("http_response", http_response),
    ("chunked", chunked),
    ("tls_hello", tls_hello),
    ("h2c_name", h2c_name),
    ("dns_query", dns_query),
    ("etcd_reply", etcd_reply),
    ("acme_reply", acme_reply),
    ("quic_framing", quic_framing),
    ("access_rules", access_rules),
];

/// The first byte (the control byte) and the rest.
fn split_ctl(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((c, rest)) => (*c, rest),
        None => (0, data),
    }
}

/// The sizes of the reads a socket delivers `data` in: all at once for
/// `ctl` 0, else pieces of 1 to 32 bytes, varying with `ctl`.
fn pieces(data: &[u8], ctl: u8) -> Vec<&[u8]> {
    if ctl == 0 || data.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut rest = data;
    let mut k = usize::from(ctl);
    while !rest.is_empty() {
        let n = (k % 32 + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
        k = k.wrapping_mul(31).wrapping_add(7);
    }
    out
}

/// An in-memory socket that returns its bytes in the given pieces, then
/// end of stream; it is never pending.
struct Reads<'a> {
    pieces: std::collections::VecDeque<&'a [u8]>,
}

impl<'a> Reads<'a> {
    fn new(data: &'a [u8], ctl: u8) -> Reads<'a> {
        Reads { pieces: pieces(data, ctl).into_iter().filter(|p| !p.is_empty()).collect() }
    }

    /// What was not read yet.
    fn rest(&self) -> Vec<u8> {
        self.pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }
}

impl AsyncRead for Reads<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(p) = self.pieces.pop_front() {
            let n = p.len().min(buf.remaining());
            buf.put_slice(&p[..n]);
            if n < p.len() {
                self.pieces.push_front(&p[n..]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Runs a future over in-memory I/O, which never waits, to its end.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory I/O never waits"),
    }
}
