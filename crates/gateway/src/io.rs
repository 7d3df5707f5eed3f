//! I/O wrappers: a socket whose writes must make progress, with its
//! activity ([`TimedIo`]: the visitor's, and the service's on the hyper
//! path), a stream that replays bytes already read ([`Replay`]), and a
//! stream to a client's service ([`UpStream`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use opennotr_plugin::TunnelStream;
use opennotr_transport::mux::MuxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// ------------------------------------------------------------ activity

/// When a visitor connection last moved a byte, and how many of its
/// requests are in flight (a response body still streaming counts): what
/// the idle timer of a connection hyper serves looks at.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests whose response ended.
    completed: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
        })
    }

    pub(crate) fn touch(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Requests answered so far (their responses ended).
    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.completed.fetch_add(1, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

// -------------------------------------------------------------- stall

/// How long a run of steps (reads, writes, body frames) may wait for the
/// next one. The timer is made the first time a step waits and set again
/// only if steps were made since: a stream that keeps moving costs no timer
/// work per step.
pub(crate) struct Stall {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
}

impl Stall {
    pub(crate) fn new(timeout: Duration) -> Stall {
        Stall { timeout, timer: None, moved: false }
    }

    /// A step was made.
    pub(crate) fn moved(&mut self) {
        self.moved = true;
    }

    /// A step waits: ready once the wait has lasted the timeout.
    pub(crate) fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let moved = std::mem::take(&mut self.moved);
        let timer = match &mut self.timer {
            Some(t) => {
                if moved {
                    t.as_mut().reset(tokio::time::Instant::now() + self.timeout);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(self.timeout))),
        };
        timer.as_mut().poll(cx)
    }

    /// `step`, failing (`Err`) once it has waited for the timeout.
    pub(crate) async fn step<F: Future>(&mut self, step: F) -> Result<F::Output, ()> {
        tokio::pin!(step);
        std::future::poll_fn(|cx| match step.as_mut().poll(cx) {
            Poll::Ready(r) => {
                self.moved();
                Poll::Ready(Ok(r))
            }
            Poll::Pending => self.poll_waiting(cx).map(|()| Err(())),
        })
        .await
    }
}

// ----------------------------------------------------------- timed io

/// A socket whose writes must make progress. A write (or flush, or
/// shutdown) that makes none for the timeout fails: a visitor that stops
/// reading cannot hold a response, its stream and its buffers forever
/// (nginx's `send_timeout`), nor a service that stops reading a request
/// (`proxy_send_timeout`). On a visitor's socket hyper serves, reads and
/// writes also record their [`Activity`].
pub(crate) struct TimedIo<S> {
    inner: S,
    stall: Stall,
    activity: Option<Arc<Activity>>,
}

impl<S> TimedIo<S> {
    pub(crate) fn new(inner: S, send_timeout: Duration) -> TimedIo<S> {
        TimedIo { inner, stall: Stall::new(send_timeout), activity: None }
    }

    pub(crate) fn track(&mut self, activity: Arc<Activity>) {
        self.activity = Some(activity);
    }

    /// The same socket, read and written through `f`'s wrapper.
    pub(crate) fn map<T>(self, f: impl FnOnce(S) -> T) -> TimedIo<T> {
        TimedIo { inner: f(self.inner), stall: self.stall, activity: self.activity }
    }

    /// Passes on a write-side poll's result, failing it once the writes
    /// have waited for the send timeout.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>, progress: bool) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stall.poll_waiting(cx).map(|()| {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the peer took nothing within the send timeout"))
            }),
            Poll::Ready(r) => {
                if progress {
                    self.stall.moved();
                    if let Some(a) = &self.activity {
                        a.touch();
                    }
                }
                Poll::Ready(r)
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(a)) = (&r, &self.activity) {
            if buf.filled().len() > before {
                a.touch();
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        let progress = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.deadline(cx, r, progress)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let progress = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.deadline(cx, r, progress)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, r, true)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.deadline(cx, r, true)
    }
}

// -------------------------------------------------------------- replay

/// A stream that first yields `prefix` (bytes already read from it): how a
/// connection is handed over with what was read of it.
pub(crate) struct Replay<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Replay<S> {
    pub(crate) fn new(prefix: impl Into<BytesMut>, inner: S) -> Replay<S> {
        Replay { prefix: prefix.into(), inner }
    }

    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// `AsyncWrite` for a reading wrapper (`$t<S>` with field `inner`): every
/// write goes to the wrapped stream as it is.
macro_rules! write_through {
    ($t:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $t<S> {
            fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

write_through!(Replay);

// ------------------------------------------------------ settings ack

/// A visitor's HTTP/2 connection read without the client's first SETTINGS
/// acknowledgement ([`crate::h2peek::AckFilter`]); writes pass as they are.
pub(crate) struct AckFiltered<S> {
    inner: S,
    filter: crate::h2peek::AckFilter,
    /// Bytes read and filtered, not yet taken.
    ready: BytesMut,
}

impl<S> AckFiltered<S> {
    pub(crate) fn new(inner: S, filter: crate::h2peek::AckFilter) -> AckFiltered<S> {
        AckFiltered { inner, filter, ready: BytesMut::new() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AckFiltered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.ready.is_empty() {
                let n = buf.remaining().min(self.ready.len());
                buf.put_slice(&self.ready[..n]);
                self.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.filter.done() {
                return Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            let mut out = Vec::with_capacity(rb.filled().len());
            let this = &mut *self;
            this.filter.feed(rb.filled(), &mut out);
            this.ready.extend_from_slice(&out);
        }
    }
}

write_through!(AckFiltered);

// ------------------------------------------------------------ upstream

/// A stream to a client's service: on the route's multiplexed connection,
/// or a tunnel stream of its own (a client that cannot multiplex).
pub(crate) enum UpStream {
    Plain(TunnelStream),
    Muxed(MuxStream),
}

impl UpStream {
    /// Fit for another exchange: open, and nothing unexpected to read.
    pub(crate) fn is_reusable(&mut self) -> bool {
        match self {
            UpStream::Plain(s) => {
                // No end, no bytes: a read would wait.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut b = [0u8; 1];
                let mut rb = ReadBuf::new(&mut b);
                matches!(Pin::new(s).poll_read(&mut cx, &mut rb), Poll::Pending)
            }
            UpStream::Muxed(s) => s.is_reusable(),
        }
    }
}

impl AsyncRead for UpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Muxed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Muxed(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Muxed(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Muxed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads into `buf` what is there, with at least `room` bytes free first;
/// false at the end or on an error.
pub(crate) async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut, room: usize) -> bool {
    if buf.capacity() - buf.len() < room {
        buf.reserve(room.max(8 * 1024));
    }
    matches!(tokio::io::AsyncReadExt::read_buf(s, buf).await, Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replay_yields_the_prefix_first() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut r = Replay::new(&b"hello"[..], a);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn a_visitor_that_stops_reading_fails_the_write() {
        let (a, _b) = tokio::io::duplex(16);
        let mut v = TimedIo::new(a, Duration::from_secs(5));
        let err = v.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut v = TimedIo::new(a, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                match b.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        v.write_all(&[7u8; 64]).await.unwrap();
        v.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), vec![7u8; 64]);
    }
}
