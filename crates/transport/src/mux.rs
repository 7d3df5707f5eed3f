//! Many streams over one tunnel stream ([`opennotr_proto::mux`] frames),
//! for traffic made of many small exchanges: the gateway's HTTP/1.1
//! requests. One reader task demultiplexes; one writer task sends what all
//! streams queued since it last ran in one write — it yields once before
//! taking the queues, so the other tasks that are ready add their frames
//! first. Each stream queues its own bytes, and a write takes at most
//! [`QUANTUM`] of each in turn, so a large transfer shares the connection
//! with small exchanges instead of queueing them behind it. Each stream
//! has a window both ways, so a stream whose reader stalls stalls alone.
//! The streams' state and windows, and what the peer's frames do to them,
//! are [`opennotr_proto::mux::Conn`]'s rules, without I/O; this module
//! keeps the buffers and wakers beside them and moves the bytes.
//!
//! What one connection can make this side hold is bounded: a stream's
//! window starts at [`wire::INITIAL_WINDOW`] and grows, up to
//! [`MAX_WINDOW`], only while its reader keeps up and the window is what
//! holds the sender back, and only within [`GROWTH_BUDGET`] for all the
//! connection's streams; what a stream may queue for sending is capped at
//! [`MAX_WINDOW`], and all streams' queues at [`QUEUE_BUDGET`], whatever
//! windows the peer grants.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use opennotr_proto::mux::{self as wire, Conn, Event, Kind};
pub use opennotr_proto::mux::{GROWTH_BUDGET, MAX_STREAMS, MAX_WINDOW};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::Counters;

/// Unsent bytes a carrier's socket may hold ([`crate::limit_unsent`]):
/// enough to keep a fast link busy between two writes, little enough that
/// a small exchange is not queued behind a large one for long.
pub const CARRIER_UNSENT: u32 = 128 * 1024;

/// Bytes of one stream per turn in a write.
pub const QUANTUM: usize = 16 * 1024;
/// A write stops taking turns at this size.
const BATCH: usize = 256 * 1024;
/// Bytes all streams of one connection may queue for sending together,
/// whatever windows the peer grants.
pub const QUEUE_BUDGET: usize = 64 * 1024 * 1024;

/// What this side keeps for a stream beside its state ([`wire::Stream`]).
#[derive(Debug, Default)]
struct Slot {
    inbuf: BytesMut,
    /// Why the stream was aborted, once it is.
    why: String,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Bytes written here, waiting for the writer task.
    outq: BytesMut,
    /// FIN goes out after `outq`.
    fin_queued: bool,
    /// In `State::ready`.
    queued: bool,
    /// Its [`MuxStream`] is gone after a clean close; the slot stays until
    /// its last bytes are out.
    detached: bool,
    /// Its [`MuxStream`] was dropped after its shutdown, before the peer's
    /// FIN, as a socket closed after `shutdown`: the slot stays (its last
    /// bytes and FIN go out) until the peer's FIN or reset, and the peer's
    /// data, which nobody reads, is answered with a reset, so a peer still
    /// writing stops instead of waiting for a window forever.
    linger: bool,
}

impl Slot {
    fn wake(&mut self, wakers: &mut Vec<Waker>) {
        wakers.extend(self.read_waker.take());
        wakers.extend(self.write_waker.take());
    }
}

#[derive(Debug)]
struct State {
    /// OPEN, RESET and WINDOW frames: they go first in the next write.
    ctrl: Vec<u8>,
    /// Streams with bytes (or a FIN) queued, in turn order.
    ready: std::collections::VecDeque<u32>,
    streams: Conn<Slot>,
    /// Why the connection is gone, once it is.
    closed: Option<String>,
    /// Sum of the streams' `outq` lengths.
    queued: usize,
    /// Writers waiting for [`QUEUE_BUDGET`] room.
    budget_wakers: Vec<Waker>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake_writer: Notify,
    counters: Option<Arc<Counters>>,
}

impl State {
    fn new(accepting: bool) -> State {
        State {
            ctrl: Vec::new(),
            ready: Default::default(),
            streams: Conn::new(accepting),
            closed: None,
            queued: 0,
            budget_wakers: Vec::new(),
        }
    }

    fn idle(&self) -> bool {
        self.ctrl.is_empty() && self.ready.is_empty()
    }

    /// Puts a stream in line for the writer; true if the writer was idle.
    fn enqueue(&mut self, id: u32) -> bool {
        let idle = self.idle();
        if let Some(s) = self.streams.get_mut(id) {
            if !s.io.queued {
                s.io.queued = true;
                self.ready.push_back(id);
            }
        }
        idle
    }

    /// Forgets a stream, and what it took of the budgets.
    fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(id) {
            self.queued -= s.io.outq.len();
        }
    }

    /// Drops what a stream queued for sending (it was reset).
    fn discard_queue(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(id) {
            self.queued -= s.io.outq.len();
            s.io.outq.clear();
            s.io.fin_queued = false;
        }
    }

    /// Takes the next write: control frames, then turns of the streams'
    /// bytes. False when there is nothing. Writers waiting for room in
    /// their queue go to `wakers`.
    fn take_batch(&mut self, batch: &mut Vec<u8>, wakers: &mut Vec<Waker>) -> bool {
        batch.append(&mut self.ctrl);
        while batch.len() < BATCH {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(s) = self.streams.get_mut(id) else { continue };
            let reset = s.is_reset();
            let fin_in = s.fin_in();
            let s = &mut s.io;
            if reset {
                s.queued = false;
                if s.detached {
                    self.remove(id);
                }
                continue;
            }
            if !s.outq.is_empty() {
                let n = s.outq.len().min(QUANTUM);
                wire::encode(batch, id, Kind::Data, &s.outq[..n]);
                s.outq.advance(n);
                self.queued -= n;
                if s.outq.len() <= MAX_WINDOW as usize / 2 {
                    wakers.extend(s.write_waker.take());
                }
            }
            if !s.outq.is_empty() {
                self.ready.push_back(id);
                continue;
            }
            s.queued = false;
            if s.fin_queued {
                s.fin_queued = false;
                wire::encode(batch, id, Kind::Fin, &[]);
            }
            if s.detached && (!s.linger || fin_in) {
                self.remove(id);
            }
        }
        if self.queued <= QUEUE_BUDGET / 2 {
            wakers.append(&mut self.budget_wakers);
        }
        !batch.is_empty()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a control frame (under the lock the caller holds); true if
    /// the writer had nothing to do (it needs a wake-up).
    fn queue(&self, st: &mut State, id: u32, kind: Kind, payload: &[u8]) -> bool {
        let idle = st.idle();
        wire::encode(&mut st.ctrl, id, kind, payload);
        idle
    }

    fn close(&self, why: String) {
        let mut wakers = Vec::new();
        {
            let mut st = self.lock();
            if st.closed.is_none() {
                debug!(reason = %why, "multiplexed connection closed");
                st.closed = Some(why);
            }
            for (_, s) in st.streams.iter_mut() {
                s.io.wake(&mut wakers);
            }
        }
        wakers.into_iter().for_each(Waker::wake);
        self.wake_writer.notify_one();
    }
}

/// One multiplexed connection: cheap to clone; it lives while its tasks
/// run (until the carrying stream ends or every handle and stream is gone
/// and the peer closes).
#[derive(Debug, Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl Mux {
    /// The side that opens streams (the server). `counters` count the
    /// streams and their payload bytes (writes as `bytes_in`).
    pub fn opener<S>(io: S, counters: Option<Arc<Counters>>) -> Mux
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(io, counters, None)
    }

    /// The side that accepts streams (the client): the streams the peer
    /// opens come out of the receiver.
    pub fn acceptor<S>(io: S) -> (Mux, mpsc::UnboundedReceiver<MuxStream>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self::start(io, None, Some(tx)), rx)
    }

    fn start<S>(io: S, counters: Option<Arc<Counters>>, accept: Option<mpsc::UnboundedSender<MuxStream>>) -> Mux
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let state = Mutex::new(State::new(accept.is_some()));
        let shared = Arc::new(Shared { state, wake_writer: Notify::new(), counters });
        let (rd, wr) = tokio::io::split(io);
        tokio::spawn(read_loop(rd, shared.clone(), accept));
        tokio::spawn(write_loop(wr, shared.clone()));
        Mux { shared }
    }

    /// Streams open on it now.
    pub fn streams(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Opens a stream. The peer learns of it with the frames that follow,
    /// in the same write: no round trip.
    pub fn open(&self) -> io::Result<MuxStream> {
        let notify = {
            let mut st = self.shared.lock();
            if let Some(why) = &st.closed {
                return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
            }
            let Some(id) = st.streams.open(Slot::default()) else {
                return Err(io::Error::other("too many multiplexed streams"));
            };
            let notify = self.shared.queue(&mut st, id, Kind::Open, &[]);
            (id, notify)
        };
        if notify.1 {
            self.shared.wake_writer.notify_one();
        }
        Ok(MuxStream::new(notify.0, self.shared.clone()))
    }

    /// Ends the connection: every stream fails, the writer stops.
    pub fn close(&self) {
        self.shared.close("closed".into());
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    shared: Arc<Shared>,
    accept: Option<mpsc::UnboundedSender<MuxStream>>,
) {
    let mut buf = BytesMut::with_capacity(128 * 1024);
    let mut after = After::default();
    let why = loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "the tunnel stream ended".to_string(),
            Err(e) => break format!("the tunnel stream failed: {e}"),
            Ok(_) => {}
        }
        let mut st = shared.lock();
        let failed = loop {
            let h = match wire::decode(&buf) {
                Ok(Some(h)) => h,
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            };
            buf.advance(wire::HEADER_LEN);
            let payload = buf.split_to(h.len);
            if let Err(e) = on_frame(&shared, &mut st, h, &payload, accept.as_ref(), &mut after) {
                break Some(e);
            }
        };
        drop(st);
        after.wakers.drain(..).for_each(Waker::wake);
        after.rejected.clear();
        if std::mem::take(&mut after.notify) {
            shared.wake_writer.notify_one();
        }
        if let Some(e) = failed {
            break format!("protocol error: {e}");
        }
    };
    shared.close(why);
}

/// What the reader does once it has released the lock.
#[derive(Default)]
struct After {
    wakers: Vec<Waker>,
    /// Streams the peer opened that nobody takes: their drop (a RESET)
    /// takes the lock.
    rejected: Vec<MuxStream>,
    /// The writer has frames to send.
    notify: bool,
}

fn on_frame(
    shared: &Arc<Shared>,
    st: &mut State,
    h: wire::Header,
    payload: &[u8],
    accept: Option<&mpsc::UnboundedSender<MuxStream>>,
    after: &mut After,
) -> Result<(), String> {
    let wakers = &mut after.wakers;
    let event = st.streams.receive(h, payload, Slot::default).map_err(|e| e.to_string())?;
    let s = st.streams.get_mut(h.id);
    match (event, s) {
        (Event::Opened, _) => {
            // The state opens streams only on the accepting side, which has `accept`.
            if let Some(tx) = accept {
                if let Err(e) = tx.send(MuxStream::new(h.id, shared.clone())) {
                    after.rejected.push(e.0);
                }
            }
        }
        (Event::Refused, _) => {
            after.notify |= shared.queue(st, h.id, Kind::Reset, b"too many multiplexed streams");
        }
        // Nobody reads a lingering stream: the peer is told to stop.
        (Event::Data { deliver: true }, Some(s)) if s.io.linger => {
            st.remove(h.id);
            after.notify |= shared.queue(st, h.id, Kind::Reset, b"stream closed");
        }
        // Bytes of a stream this side reset are let go (the catch-all).
        (Event::Data { deliver: true }, Some(s)) => {
            s.io.inbuf.extend_from_slice(payload);
            wakers.extend(s.io.read_waker.take());
        }
        // Done both ways; the slot goes once its last bytes are out.
        (Event::Fin, Some(s)) if s.io.linger && !s.io.queued => st.remove(h.id),
        (Event::Fin, Some(s)) if s.io.linger => {}
        (Event::Fin, Some(s)) => wakers.extend(s.io.read_waker.take()),
        (Event::Reset { first }, Some(s)) => {
            if first {
                let why = String::from_utf8_lossy(payload);
                s.io.why = if why.is_empty() { "stream reset by the peer".into() } else { why.into_owned() };
            }
            s.io.wake(wakers);
            // Nobody will read or send on a stream dropped here already.
            if s.io.detached {
                st.remove(h.id);
            } else {
                st.discard_queue(h.id);
            }
        }
        (Event::Window, Some(s)) => wakers.extend(s.io.write_waker.take()),
        // Frames of a stream this side dropped are let go.
        _ => {}
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut wakers = Vec::new();
    let mut more = false;
    loop {
        if !more {
            shared.wake_writer.notified().await;
            // The other tasks that are ready now add their frames first: one
            // write for all of them instead of one each.
            tokio::task::yield_now().await;
        }
        {
            let mut st = shared.lock();
            if st.closed.is_some() {
                break;
            }
            if !st.take_batch(&mut batch, &mut wakers) {
                more = false;
                continue;
            }
            more = !st.idle();
        }
        wakers.drain(..).for_each(Waker::wake);
        if let Err(e) = async { wr.write_all(&batch).await.and(wr.flush().await) }.await {
            shared.close(format!("the tunnel stream failed: {e}"));
            break;
        }
        batch.clear();
        if batch.capacity() > 2 * BATCH {
            batch = Vec::with_capacity(64 * 1024);
        }
    }
    let _ = wr.shutdown().await;
}

/// One stream of a [`Mux`]. Dropping it before both sides sent FIN resets
/// it.
#[derive(Debug)]
pub struct MuxStream {
    id: u32,
    shared: Arc<Shared>,
}

impl MuxStream {
    fn new(id: u32, shared: Arc<Shared>) -> MuxStream {
        if let Some(c) = &shared.counters {
            c.open.fetch_add(1, Ordering::Relaxed);
            c.opened.fetch_add(1, Ordering::Relaxed);
        }
        MuxStream { id, shared }
    }

    /// Open both ways, with nothing unread: fit to carry a new exchange.
    pub fn is_reusable(&self) -> bool {
        let st = self.shared.lock();
        st.closed.is_none()
            && st
                .streams
                .get(self.id)
                .is_some_and(|s| !s.fin_in() && !s.fin_out() && !s.is_reset() && s.io.inbuf.is_empty())
    }

    /// Aborts the stream, telling the peer why.
    pub fn reset(&self, why: &str) {
        let notify = {
            let mut st = self.shared.lock();
            let Some(s) = st.streams.get_mut(self.id) else { return };
            if !s.reset() {
                return;
            }
            s.io.why = why.to_string();
            st.discard_queue(self.id);
            let why = &why.as_bytes()[..why.len().min(wire::MAX_REASON)];
            self.shared.queue(&mut st, self.id, Kind::Reset, why)
        };
        if notify {
            self.shared.wake_writer.notify_one();
        }
    }
}

fn reset_error(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, why.to_string())
}

impl AsyncRead for MuxStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut notify = false;
        let r = {
            let mut guard = self.shared.lock();
            let State { ctrl, ready, streams, closed, .. } = &mut *guard;
            let Some(s) = streams.get_mut(self.id) else {
                return Poll::Ready(Err(reset_error("stream gone")));
            };
            if !s.io.inbuf.is_empty() {
                let n = buf.remaining().min(s.io.inbuf.len());
                buf.put_slice(&s.io.inbuf[..n]);
                s.io.inbuf.advance(n);
                if let Some(c) = &self.shared.counters {
                    c.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                let unread = s.io.inbuf.len();
                if let Some(inc) = streams.read(self.id, n, unread) {
                    notify = ctrl.is_empty() && ready.is_empty();
                    wire::encode_window(ctrl, self.id, inc);
                }
                Poll::Ready(Ok(()))
            } else if s.is_reset() {
                Poll::Ready(Err(reset_error(&s.io.why)))
            } else if s.fin_in() {
                Poll::Ready(Ok(()))
            } else if let Some(why) = closed {
                Poll::Ready(Err(reset_error(why)))
            } else {
                s.io.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        };
        if notify {
            self.shared.wake_writer.notify_one();
        }
        r
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let notify = {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            if let Some(why) = &st.closed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())));
            }
            let budget = QUEUE_BUDGET.saturating_sub(st.queued);
            let Some(s) = st.streams.get_mut(self.id) else {
                return Poll::Ready(Err(reset_error("stream gone")));
            };
            if s.is_reset() {
                return Poll::Ready(Err(reset_error(&s.io.why)));
            }
            if s.fin_out() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            // The window bounds what a stream queues here too: its bytes
            // wait in this queue or in the peer's buffer, never more; and
            // a peer that grants windows without reading the connection
            // still gets no more than MAX_WINDOW queued per stream and
            // QUEUE_BUDGET in all.
            let room =
                (s.send_window() as usize).min((MAX_WINDOW as usize).saturating_sub(s.io.outq.len())).min(budget);
            if room == 0 {
                s.io.write_waker = Some(cx.waker().clone());
                if budget == 0 && !st.budget_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.budget_wakers.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let n = data.len().min(room);
            s.sent(n as u32);
            s.io.outq.extend_from_slice(&data[..n]);
            st.queued += n;
            if let Some(c) = &self.shared.counters {
                c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            (n, st.enqueue(self.id))
        };
        if notify.1 {
            self.shared.wake_writer.notify_one();
        }
        Poll::Ready(Ok(notify.0))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames go out as soon as the writer task runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let notify = {
            let mut st = self.shared.lock();
            let Some(s) = st.streams.get_mut(self.id) else { return Poll::Ready(Ok(())) };
            if !s.finish() {
                return Poll::Ready(Ok(()));
            }
            s.io.fin_queued = true;
            st.enqueue(self.id)
        };
        if notify {
            self.shared.wake_writer.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        if let Some(c) = &self.shared.counters {
            c.open.fetch_sub(1, Ordering::Relaxed);
        }
        let notify = {
            let mut st = self.shared.lock();
            let closed = st.closed.is_some();
            let Some(s) = st.streams.get_mut(self.id) else { return };
            if s.is_reset() || closed {
                st.remove(self.id);
                false
            } else if s.fin_in() && s.fin_out() {
                // A clean close: what is still queued goes out first.
                if s.io.queued {
                    s.io.detached = true;
                } else {
                    st.remove(self.id);
                }
                false
            } else if s.fin_out() {
                // Closed after a shutdown, as a socket: what is still
                // queued (and the FIN) goes out, then the slot lingers
                // until the peer's FIN ([`Slot::linger`]).
                s.io.detached = true;
                s.io.linger = true;
                s.io.inbuf.clear();
                false
            } else {
                st.remove(self.id);
                self.shared.queue(&mut st, self.id, Kind::Reset, b"")
            }
        };
        if notify {
            self.shared.wake_writer.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An opener and an acceptor over an in-memory pipe.
    fn pair() -> (Mux, Mux, mpsc::UnboundedReceiver<MuxStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let opener = Mux::opener(a, Some(Arc::new(Counters::default())));
        let (acceptor, incoming) = Mux::acceptor(b);
        (opener, acceptor, incoming)
    }

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_and_half_close() {
        let (opener, _acc, mut incoming) = pair();
        let mut a = opener.open().unwrap();
        let mut b = opener.open().unwrap();
        a.write_all(b"to a").await.unwrap();
        b.write_all(b"to b").await.unwrap();
        a.shutdown().await.unwrap();
        let mut ra = incoming.recv().await.unwrap();
        let mut rb = incoming.recv().await.unwrap();
        let mut got = Vec::new();
        ra.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"to a");
        let mut four = [0u8; 4];
        rb.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"to b");
        // After the opener's FIN the acceptor still answers on it.
        ra.write_all(b"reply").await.unwrap();
        ra.shutdown().await.unwrap();
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply");
        assert!(b.is_reusable() && !a.is_reusable());
        let c = opener.shared.counters.clone().unwrap();
        assert_eq!(c.bytes_in.load(Ordering::Relaxed), 8);
        assert_eq!(c.bytes_out.load(Ordering::Relaxed), 5);
        assert_eq!(c.open.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(c.open.load(Ordering::Relaxed), 1);
    }

    /// As a socket's close after its shutdown: a stream shut down and
    /// dropped before the peer's FIN still delivers what it wrote, then a
    /// clean end; the peer's writes after are answered with a reset (not
    /// left waiting for a window), and the connection lives on.
    #[tokio::test]
    async fn a_stream_shut_down_then_dropped_delivers_its_bytes() {
        let (opener, _acc, mut incoming) = pair();
        let mut a = opener.open().unwrap();
        a.write_all(b"request").await.unwrap();
        let mut r = incoming.recv().await.unwrap();
        let mut req = [0u8; 7];
        r.read_exact(&mut req).await.unwrap();
        // More than a window: the last bytes leave after the drop.
        let writer = tokio::spawn(async move {
            r.write_all(&vec![7u8; 200 * 1024]).await.unwrap();
            r.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, vec![7u8; 200 * 1024]);
        // The peer writing on, past a window, is told the stream is gone
        // rather than left waiting for a window forever.
        let late = a.write_all(&vec![1u8; 1024 * 1024]).await;
        assert!(late.is_err(), "the writer after the drop was not reset");
        drop(a);
        let mut b = opener.open().unwrap();
        b.write_all(b"next").await.unwrap();
        let mut rb = incoming.recv().await.unwrap();
        let mut four = [0u8; 4];
        rb.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"next");
    }

    #[tokio::test]
    async fn a_reset_carries_its_reason() {
        let (opener, _acc, mut incoming) = pair();
        let mut a = opener.open().unwrap();
        a.write_all(b"x").await.unwrap();
        let r = incoming.recv().await.unwrap();
        r.reset("cannot connect to 127.0.0.1:1: refused");
        let mut buf = [0u8; 8];
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert!(e.to_string().contains("cannot connect"), "{e}");
        // Dropping a stream resets it at the other end.
        let b = opener.open().unwrap();
        let mut rb = incoming.recv().await.unwrap();
        drop(b);
        assert!(rb.read(&mut buf).await.is_err());
    }

    /// A stream nobody reads stops at its window; the others go on.
    #[tokio::test]
    async fn a_stalled_stream_stalls_alone() {
        let (opener, _acc, mut incoming) = pair();
        let mut stalled = opener.open().unwrap();
        let mut other = opener.open().unwrap();
        let _unread = incoming.recv().await.unwrap();
        let mut peer = incoming.recv().await.unwrap();
        let big = vec![7u8; 4 * wire::INITIAL_WINDOW as usize];
        // Writes go through until the window is used up, then wait (a
        // write only queues, so one poll tells).
        let mut cx = Context::from_waker(Waker::noop());
        let mut sent = 0;
        while let Poll::Ready(n) = Pin::new(&mut stalled).poll_write(&mut cx, &big[sent..]) {
            sent += n.unwrap();
        }
        assert_eq!(sent, wire::INITIAL_WINDOW as usize);
        other.write_all(b"still moving").await.unwrap();
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still moving");
    }

    /// Reading grants more window: a transfer far beyond it completes, and
    /// as its reader keeps up, its window grows (fewer round trips of
    /// WINDOW frames); the connection gets the growth back when the stream
    /// goes.
    #[tokio::test]
    async fn windows_refill_and_grow_as_the_reader_reads() {
        let (opener, acceptor, mut incoming) = pair();
        let mut a = opener.open().unwrap();
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut r = incoming.recv().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert!(got == expect, "the bytes differ");
        let (window, grown) = {
            let st = acceptor.shared.lock();
            (st.streams.get(r.id).expect("the stream").window(), st.streams.grown())
        };
        assert!(window > wire::INITIAL_WINDOW && window <= MAX_WINDOW, "window {window}");
        assert_eq!(grown, (window - wire::INITIAL_WINDOW) as usize);
        drop(r);
        drop(writer.await.unwrap());
        assert_eq!(acceptor.shared.lock().streams.grown(), 0);
    }

    /// A peer that grants a huge window and stops reading the connection
    /// gets no more than MAX_WINDOW of a stream queued here (plus what the
    /// writer task already took).
    #[tokio::test]
    async fn a_peer_granting_without_reading_cannot_grow_the_queue() {
        let (a, mut b) = tokio::io::duplex(1024);
        let opener = Mux::opener(a, None);
        let mut s = opener.open().unwrap();
        let mut open = [0u8; wire::HEADER_LEN];
        b.read_exact(&mut open).await.unwrap();
        let mut grant = Vec::new();
        wire::encode_window(&mut grant, s.id, 1 << 30);
        b.write_all(&grant).await.unwrap();
        while opener.shared.lock().streams.get(s.id).expect("the stream").send_window() <= wire::INITIAL_WINDOW {
            tokio::task::yield_now().await;
        }
        let big = vec![1u8; 2 * MAX_WINDOW as usize];
        let mut cx = Context::from_waker(Waker::noop());
        let mut sent = 0;
        for _ in 0..8 {
            while let Poll::Ready(n) = Pin::new(&mut s).poll_write(&mut cx, &big[sent..]) {
                sent += n.unwrap();
            }
            tokio::task::yield_now().await;
        }
        assert!(sent >= MAX_WINDOW as usize && sent <= MAX_WINDOW as usize + BATCH, "queued {sent}");
        assert!(opener.shared.lock().streams.get(s.id).expect("the stream").io.outq.len() <= MAX_WINDOW as usize);
    }

    /// A peer that grants huge windows on many streams and stops reading
    /// the connection gets at most QUEUE_BUDGET queued here in all; once it
    /// reads again, the writers that waited for room go on.
    #[tokio::test]
    async fn all_streams_together_queue_at_most_the_budget() {
        let (a, mut b) = tokio::io::duplex(1024);
        let opener = Mux::opener(a, None);
        let n = QUEUE_BUDGET / MAX_WINDOW as usize + 4;
        let mut streams: Vec<MuxStream> = (0..n).map(|_| opener.open().unwrap()).collect();
        let mut grants = Vec::new();
        for s in &streams {
            wire::encode_window(&mut grants, s.id, 1 << 30);
        }
        b.write_all(&grants).await.unwrap();
        let granted = |o: &Mux| o.shared.lock().streams.iter().all(|(_, s)| s.send_window() > wire::INITIAL_WINDOW);
        while !granted(&opener) {
            tokio::task::yield_now().await;
        }
        let big = vec![3u8; MAX_WINDOW as usize + 1];
        let mut cx = Context::from_waker(Waker::noop());
        let mut sent = vec![0usize; n];
        for _ in 0..4 {
            for (s, sent) in streams.iter_mut().zip(&mut sent) {
                while *sent < big.len() {
                    match Pin::new(&mut *s).poll_write(&mut cx, &big[*sent..]) {
                        Poll::Ready(k) => *sent += k.unwrap(),
                        Poll::Pending => break,
                    }
                }
            }
            tokio::task::yield_now().await;
        }
        {
            let st = opener.shared.lock();
            assert_eq!(st.queued, st.streams.iter().map(|(_, s)| s.io.outq.len()).sum::<usize>());
            assert!(st.queued <= QUEUE_BUDGET, "queued {}", st.queued);
        }
        let total: usize = sent.iter().sum();
        assert!((QUEUE_BUDGET..=QUEUE_BUDGET + BATCH + 64 * 1024).contains(&total), "took {total}");
        // Some stream got less than it asked for: it waits for room.
        let i = sent.iter().position(|&k| k < big.len()).expect("a stream held back");
        let drain = tokio::spawn(async move { tokio::io::copy(&mut b, &mut tokio::io::sink()).await });
        streams[i].write_all(&big[sent[i]..]).await.unwrap();
        drop(streams);
        opener.close();
        let _ = drain.await;
    }

    /// A stream whose slot this side keeps only to send its last bytes
    /// goes, with what it took of the budgets, when the peer resets it.
    #[test]
    fn a_reset_frees_a_stream_kept_for_its_last_bytes() {
        let shared =
            Arc::new(Shared { state: Mutex::new(State::new(false)), wake_writer: Notify::new(), counters: None });
        let mut st = State::new(false);
        let id = st.streams.open(Slot::default()).unwrap();
        let slot = &mut st.streams.get_mut(id).unwrap().io;
        slot.outq.extend_from_slice(&[1u8; 1000]);
        slot.detached = true;
        st.enqueue(id);
        st.queued = 1000;
        let h = wire::Header { id, kind: Kind::Reset, len: 0 };
        on_frame(&shared, &mut st, h, &[], None, &mut After::default()).unwrap();
        assert!(st.streams.is_empty());
        assert_eq!((st.queued, st.streams.grown()), (0, 0));
        assert!(!st.take_batch(&mut Vec::new(), &mut Vec::new()));
    }

    /// Streams the peer opens after this side stopped taking them are
    /// reset (dropping one takes the lock the reader holds: it must not be
    /// dropped under it).
    #[tokio::test]
    async fn streams_nobody_takes_are_reset() {
        let (opener, _acc, incoming) = pair();
        drop(incoming);
        let mut a = opener.open().unwrap();
        a.write_all(b"anyone?").await.unwrap();
        let mut buf = [0u8; 8];
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert!(opener.open().is_ok());
    }

    /// A write takes turns: a small exchange queued behind a large
    /// transfer goes out in the first write, not after the transfer.
    #[test]
    fn writes_take_turns_between_streams() {
        let mut st = State::new(false);
        let (big, small) = (st.streams.open(Slot::default()).unwrap(), st.streams.open(Slot::default()).unwrap());
        st.streams.get_mut(big).unwrap().io.outq.extend_from_slice(&vec![1u8; 200 * 1024]);
        st.enqueue(big);
        st.streams.get_mut(small).unwrap().io.outq.extend_from_slice(b"small");
        st.streams.get_mut(small).unwrap().io.fin_queued = true;
        st.enqueue(small);
        st.queued = 200 * 1024 + 5;
        let mut batch = Vec::new();
        assert!(st.take_batch(&mut batch, &mut Vec::new()));
        let mut frames = Vec::new();
        let mut rest = &batch[..];
        while let Some(h) = wire::decode(rest).unwrap() {
            frames.push((h.id, h.kind, h.len));
            rest = &rest[wire::HEADER_LEN + h.len..];
        }
        assert_eq!(frames[..3], [(big, Kind::Data, QUANTUM), (small, Kind::Data, 5), (small, Kind::Fin, 0)]);
        assert!(frames[3..].iter().all(|f| f.0 == big));
        // Everything else of the big stream follows, in turns of QUANTUM.
        let mut total: usize = frames.iter().filter(|f| f.0 == big).map(|f| f.2).sum();
        batch.clear();
        while st.take_batch(&mut batch, &mut Vec::new()) {
            let mut rest = &batch[..];
            while let Some(h) = wire::decode(rest).unwrap() {
                assert_eq!((h.id, h.kind), (big, Kind::Data));
                total += h.len;
                rest = &rest[wire::HEADER_LEN + h.len..];
            }
            batch.clear();
        }
        assert_eq!(total, 200 * 1024);
        assert!(st.idle());
        assert_eq!(st.queued, 0);
    }

    /// A stream closed cleanly by both sides and dropped at once still
    /// delivers what it had queued.
    #[tokio::test]
    async fn a_clean_close_delivers_what_was_queued() {
        let (opener, _acc, mut incoming) = pair();
        let mut a = opener.open().unwrap();
        a.shutdown().await.unwrap();
        let mut r = incoming.recv().await.unwrap();
        let mut nothing = Vec::new();
        r.read_to_end(&mut nothing).await.unwrap();
        // All of it fits the window: it is queued when `r` goes.
        let data: Vec<u8> = (0..wire::INITIAL_WINDOW as usize - 7).map(|i| (i % 253) as u8).collect();
        r.write_all(&data).await.unwrap();
        r.shutdown().await.unwrap();
        drop(r);
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "got {} bytes", got.len());
    }

    #[tokio::test]
    async fn the_end_of_the_carrier_fails_every_stream() {
        let (a, b) = tokio::io::duplex(1024);
        let opener = Mux::opener(a, None);
        let mut s = opener.open().unwrap();
        drop(b);
        let mut buf = [0u8; 1];
        assert!(s.read(&mut buf).await.is_err());
        assert!(opener.is_closed());
        assert!(opener.open().is_err());
    }

    /// A peer that breaks the framing ends the connection.
    #[tokio::test]
    async fn a_bad_frame_closes_the_connection() {
        let (a, mut b) = tokio::io::duplex(1024);
        let opener = Mux::opener(a, None);
        let mut s = opener.open().unwrap();
        b.write_all(&[0, 0, 0, 0, 9, 0, 0, 0, 0]).await.unwrap();
        let mut buf = [0u8; 1];
        let e = s.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("protocol error"), "{e}");
    }
}
