//! The byte streams tunnel traffic runs on.

use std::any::Any;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::bandwidth::{Direction, Throttles};
use crate::SecureStream;

/// A TCP connection between client and server, encrypted or not
/// (plaintext only where both configs say so).
#[derive(Debug)]
pub enum Channel {
    /// No encryption.
    Plain(TcpStream),
    /// AEAD records.
    Sealed(Box<SecureStream<TcpStream>>),
    /// A stream (or UDP flow) of a QUIC connection, which TLS encrypts.
    Quic(Box<crate::quic::QuicChannel>),
}

impl Channel {
    /// The TCP connection underneath, if it is one.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Channel::Plain(s) => Some(s),
            Channel::Sealed(s) => Some(s.get_ref()),
            Channel::Quic(_) => None,
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
            Channel::Quic($s) => {
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
    counters: Option<Arc<Counters>>,
    /// Bandwidth limits it is paced by; `None` = unlimited.
    shaping: Option<Box<Shaping>>,
}

/// A stream's bandwidth limits, and per direction its timer and since
/// when it has been held back.
struct Shaping {
    limits: Throttles,
    timers: [Option<(Pin<Box<tokio::time::Sleep>>, tokio::time::Instant)>; 2],
}

impl Shaping {
    /// Ready once every limit of `dir` is out of debt; counts the time it
    /// held the stream back.
    fn poll_wait(&mut self, dir: Direction, cx: &mut Context<'_>) -> Poll<()> {
        let slot = &mut self.timers[dir as usize];
        loop {
            let now = tokio::time::Instant::now();
            let wait = self.limits.wait(dir, now.into_std());
            if wait.is_zero() {
                if let Some((_, since)) = slot.take() {
                    self.limits.waited(now - since);
                }
                return Poll::Ready(());
            }
            let (sleep, _) = slot.get_or_insert_with(|| (Box::pin(tokio::time::sleep(wait)), now));
            sleep.as_mut().reset(now + wait);
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// Traffic of the streams of one forward (or of a session's VIP traffic),
/// as seen from the server: shown by the admin API and the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes written to the streams: from visitors toward the client.
    pub bytes_in: AtomicU64,
    /// Bytes read from the streams: from the client toward visitors.
    pub bytes_out: AtomicU64,
    /// Streams open now.
    pub open: AtomicU64,
    /// Streams opened since the forward started.
    pub opened: AtomicU64,
    /// The forward's bandwidth limit, if it has one: every stream and flow
    /// of the forward is under it (see [`crate::bandwidth`]).
    pub limit: std::sync::OnceLock<Arc<crate::bandwidth::Throttle>>,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream").field("chan", &self.chan).finish_non_exhaustive()
    }
}

impl TunnelStream {
    /// Wraps a channel; `guard` lives as long as the stream.
    pub fn new(chan: Channel, guard: Option<Box<dyn Any + Send + Sync>>) -> Self {
        TunnelStream { chan, _guard: guard, counters: None, shaping: None }
    }

    /// Paces this stream by `limits` (none: it stays unlimited, and
    /// [`TunnelStream::relay_with`] may move its bytes inside the kernel).
    pub fn limited(mut self, limits: Throttles) -> Self {
        self.shaping = (!limits.is_empty()).then(|| Box::new(Shaping { limits, timers: [None, None] }));
        self
    }

    /// Stops pacing this stream and hands its limits over (to a UDP flow,
    /// which drops the datagrams over them instead: see
    /// [`crate::bandwidth`]).
    pub fn take_limits(&mut self) -> Throttles {
        self.shaping.take().map(|s| s.limits).unwrap_or_default()
    }

    /// Keeps `guard` alive as long as the stream too, besides the guard it
    /// has.
    pub fn guarded(mut self, guard: Box<dyn Any + Send + Sync>) -> Self {
        self._guard = Some(Box::new((self._guard.take(), guard)));
        self
    }

    /// Counts this stream's traffic in `c` (and the stream itself while it
    /// is open).
    pub fn counted(mut self, c: Arc<Counters>) -> Self {
        c.open.fetch_add(1, Ordering::Relaxed);
        c.opened.fetch_add(1, Ordering::Relaxed);
        self.counters = Some(c);
        self
    }

    /// Stops counting this stream and hands its counters over (to the
    /// multiplexed streams it carries, which count themselves).
    pub fn take_counters(&mut self) -> Option<Arc<Counters>> {
        let c = self.counters.take()?;
        c.open.fetch_sub(1, Ordering::Relaxed);
        Some(c)
    }

    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Relays `peer` (a visitor) and this stream until both directions are
    /// done, counting as reads and writes do: inside the kernel when the
    /// channel is plaintext (Linux), else by copying. Returns the bytes
    /// `peer → stream` and `stream → peer`.
    pub async fn relay_with(&mut self, peer: &mut TcpStream) -> io::Result<(u64, u64)> {
        // A limited stream is copied: splice would move its bytes past
        // the limiter.
        #[cfg(target_os = "linux")]
        if let (Channel::Plain(t), None) = (&self.chan, &self.shaping) {
            if let Some(pipes) = crate::splice::pipes_or_copy() {
                let c = self.counters.as_deref();
                let count = |field: fn(&Counters) -> &AtomicU64| {
                    move |n| {
                        if let Some(c) = c {
                            field(c).fetch_add(n, Ordering::Relaxed);
                        }
                    }
                };
                return crate::splice::relay(peer, t, pipes, count(|c| &c.bytes_in), count(|c| &c.bytes_out)).await;
            }
        }
        crate::relay::relay(peer, self).await
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if let Some(c) = &self.counters {
            c.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(s) = &mut this.shaping {
            std::task::ready!(s.poll_wait(Direction::Down, cx));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.chan).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = (buf.filled().len() - before) as u64;
            if let Some(c) = &this.counters {
                c.bytes_out.fetch_add(n, Ordering::Relaxed);
            }
            if let Some(s) = &this.shaping {
                s.limits.charge(Direction::Down, n, std::time::Instant::now());
            }
        }
        r
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(s) = &mut this.shaping {
            std::task::ready!(s.poll_wait(Direction::Up, cx));
        }
        let r = Pin::new(&mut this.chan).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            if let Some(c) = &this.counters {
                c.bytes_in.fetch_add(*n as u64, Ordering::Relaxed);
            }
            if let Some(s) = &this.shaping {
                s.limits.charge(Direction::Up, *n as u64, std::time::Instant::now());
            }
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().chan).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().chan).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::bandwidth::Throttle;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A limited plaintext stream is relayed by copying, paced: splice
    /// would move its bytes past the limiter. Only a lower bound on time.
    #[tokio::test]
    async fn a_limited_plain_stream_is_paced_through_relay_with() {
        const RATE: u64 = 200_000;
        const N: usize = 400_000;
        let (mut visitor, visitor_side) = pair().await;
        let (tunnel_side, mut service) = pair().await;
        let limit = Arc::new(Throttle::new(RATE));
        let mut stream =
            TunnelStream::new(Channel::Plain(tunnel_side), None).limited(Throttles::new([Some(limit.clone())]));
        let relay = tokio::spawn(async move {
            let mut visitor_side = visitor_side;
            stream.relay_with(&mut visitor_side).await
        });
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            visitor.write_all(&vec![7u8; N]).await.unwrap();
            visitor.shutdown().await.unwrap();
            visitor
        });
        let mut got = Vec::new();
        service.read_to_end(&mut got).await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(got.len(), N);
        let floor = Duration::from_secs_f64((N - 3 * 64 * 1024) as f64 / RATE as f64);
        assert!(elapsed >= floor, "{N} bytes at {RATE} B/s in {elapsed:?}");
        assert!(limit.throttled_nanos.load(Ordering::Relaxed) > 0);
        drop(service);
        drop(writer.await.unwrap());
        let (up, _) = relay.await.unwrap().unwrap();
        assert_eq!(up, N as u64);
    }
}
