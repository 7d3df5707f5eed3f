//! The byte streams tunnel traffic runs on.

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::SecureStream;

/// A TCP connection between client and server, encrypted or not
/// (plaintext only where both configs say so).
#[derive(Debug)]
pub enum Channel {
    /// No encryption.
    Plain(TcpStream),
    /// AEAD records.
    Sealed(Box<SecureStream<TcpStream>>),
}

impl Channel {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Channel::Plain(s) => s,
            Channel::Sealed(s) => s.get_ref(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Channel::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Channel::Sealed($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Channel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Channel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, data))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// One proxied connection to the client's side: bytes written here come out
/// of the client's connection to its local target, and the other way round.
///
/// Shutting down the write side is a half-close; the local target sees a
/// FIN. Dropping it closes both directions. It may hold a guard (such as a
/// stream-limit permit) that is released when it is dropped.
pub struct TunnelStream {
    chan: Channel,
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream").field("chan", &self.chan).finish_non_exhaustive()
    }
}

impl TunnelStream {
    /// Wraps a channel; `guard` lives as long as the stream.
    pub fn new(chan: Channel, guard: Option<Box<dyn Any + Send + Sync>>) -> Self {
        TunnelStream { chan, _guard: guard }
    }

    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().chan).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().chan).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().chan).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().chan).poll_shutdown(cx)
    }
}
