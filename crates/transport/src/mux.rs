//! Many streams over one tunnel stream ([`opennotr_proto::mux`] frames),
//! for traffic made of many small exchanges: the gateway's HTTP/1.1
//! requests. One reader task demultiplexes; one writer task sends what all
//! streams queued since it last ran in one write — it yields once before
//! taking the queues, so the other tasks that are ready add their frames
//! first. Each stream queues its own bytes, and a write takes at most
//! [`QUANTUM`] of each in turn, so a large transfer shares the connection
//! with small exchanges instead of queueing them behind it. Each stream
//! has a window both ways, so a stream whose reader stalls stalls alone.
//!
//! What one connection can make this side hold is bounded: a stream's
//! window starts at [`wire::INITIAL_WINDOW`] and grows, up to
//! [`MAX_WINDOW`], only while its reader keeps up and the window is what
//! holds the sender back, and only within [`GROWTH_BUDGET`] for all the
//! connection's streams; what a stream may queue for sending is capped at
//! [`MAX_WINDOW`], and all streams' queues at [`QUEUE_BUDGET`], whatever
//! windows the peer grants.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use opennotr_proto::mux::{self as wire, Kind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::Counters;

/// Streams one multiplexed connection carries at once, at most.
pub const MAX_STREAMS: usize = 1024;
/// Unsent bytes a carrier's socket may hold ([`crate::limit_unsent`]):
/// enough to keep a fast link busy between two writes, little enough that
/// a small exchange is not queued behind a large one for long.
pub const CARRIER_UNSENT: u32 = 128 * 1024;

/// Bytes of one stream per turn in a write.
pub const QUANTUM: usize = 16 * 1024;
/// A write stops taking turns at this size.
const BATCH: usize = 256 * 1024;
/// Largest receive window a stream grows to, and most bytes one stream
/// queues for sending.
pub const MAX_WINDOW: u32 = 4 * 1024 * 1024;
/// How far the windows of one connection's streams may grow beyond
/// [`wire::INITIAL_WINDOW`], together (64 streams at [`MAX_WINDOW`]): with
/// [`MAX_STREAMS`] streams whose readers all stall, this side holds at most
/// 64 MiB of their initial windows plus this. A grown window stays while
/// its stream lives, idle in a pool too, so the budget is generous.
pub const GROWTH_BUDGET: usize = 256 * 1024 * 1024;
/// Bytes all streams of one connection may queue for sending together,
/// whatever windows the peer grants.
pub const QUEUE_BUDGET: usize = 64 * 1024 * 1024;

#[derive(Debug)]
struct Slot {
    inbuf: BytesMut,
    /// The peer sent FIN.
    fin_in: bool,
    /// This side sent FIN.
    fin_out: bool,
    /// The stream was aborted (by either side), and why.
    reset: Option<String>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Bytes this side may still send.
    send_window: u32,
    /// Bytes the peer may still send.
    recv_window: u32,
    /// The receive window this side keeps granting: unread plus unsent
    /// bytes of the peer's, at most.
    window: u32,
    /// The peer came near the end of its window since the last WINDOW.
    starved: bool,
    /// Bytes read here and not yet announced with WINDOW.
    unacked: u32,
    /// Bytes written here, waiting for the writer task.
    outq: BytesMut,
    /// FIN goes out after `outq`.
    fin_queued: bool,
    /// In `State::ready`.
    queued: bool,
    /// Its [`MuxStream`] is gone after a clean close; the slot stays until
    /// its last bytes are out.
    detached: bool,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            inbuf: BytesMut::new(),
            fin_in: false,
            fin_out: false,
            reset: None,
            read_waker: None,
            write_waker: None,
            send_window: wire::INITIAL_WINDOW,
            recv_window: wire::INITIAL_WINDOW,
            window: wire::INITIAL_WINDOW,
            starved: false,
            unacked: 0,
            outq: BytesMut::new(),
            fin_queued: false,
            queued: false,
            detached: false,
        }
    }

    /// After a read: the increment to announce with WINDOW, once half the
    /// window has been read. `grown` is the connection's growth so far.
    fn grant(&mut self, grown: &mut usize) -> Option<u32> {
        if self.unacked < self.window / 2 || self.fin_in {
            return None;
        }
        let mut inc = std::mem::take(&mut self.unacked);
        // The peer nearly ran out of window while this reader kept up: the
        // window holds the stream back, not the reader, so it doubles. A
        // reader that falls behind has bytes waiting here and gets no more.
        if self.starved && self.inbuf.len() <= self.window as usize / 4 && self.window < MAX_WINDOW {
            let more = self.window.min(MAX_WINDOW - self.window);
            if *grown + more as usize <= GROWTH_BUDGET {
                *grown += more as usize;
                self.window += more;
                inc += more;
            }
        }
        self.starved = false;
        self.recv_window += inc;
        Some(inc)
    }

    fn wake(&mut self, wakers: &mut Vec<Waker>) {
        wakers.extend(self.read_waker.take());
        wakers.extend(self.write_waker.take());
    }
}

#[derive(Debug, Default)]
struct State {
    /// OPEN, RESET and WINDOW frames: they go first in the next write.
    ctrl: Vec<u8>,
    /// Streams with bytes (or a FIN) queued, in turn order.
    ready: std::collections::VecDeque<u32>,
    streams: HashMap<u32, Slot>,
    /// Why the connection is gone, once it is.
    closed: Option<String>,
    next_id: u32,
    /// Sum of the streams' windows beyond the initial one.
    grown: usize,
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
    fn idle(&self) -> bool {
        self.ctrl.is_empty() && self.ready.is_empty()
    }

    /// Puts a stream in line for the writer; true if the writer was idle.
    fn enqueue(&mut self, id: u32) -> bool {
        let idle = self.idle();
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.queued {
                s.queued = true;
                self.ready.push_back(id);
            }
        }
        idle
    }

    /// Forgets a stream, and what its window took of the growth budget.
    fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            self.grown -= (s.window - wire::INITIAL_WINDOW) as usize;
            self.queued -= s.outq.len();
        }
    }

    /// Drops what a stream queued for sending (it was reset).
    fn discard_queue(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            self.queued -= s.outq.len();
            s.outq.clear();
            s.fin_queued = false;
        }
    }

    /// Takes the next write: control frames, then turns of the streams'
    /// bytes. False when there is nothing. Writers waiting for room in
    /// their queue go to `wakers`.
    fn take_batch(&mut self, batch: &mut Vec<u8>, wakers: &mut Vec<Waker>) -> bool {
        batch.append(&mut self.ctrl);
        while batch.len() < BATCH {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(s) = self.streams.get_mut(&id) else { continue };
            if s.reset.is_some() {
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
            if s.detached {
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
            for s in st.streams.values_mut() {
                s.wake(&mut wakers);
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
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake_writer: Notify::new(), counters });
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
            if st.streams.len() >= MAX_STREAMS {
                return Err(io::Error::other("too many multiplexed streams"));
            }
            let id = st.next_id;
            st.next_id = st.next_id.wrapping_add(1);
            st.streams.insert(id, Slot::new());
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
    match h.kind {
        Kind::Open => {
            let Some(tx) = accept else { return Err("OPEN from the accepting side".into()) };
            if st.streams.contains_key(&h.id) {
                return Err(format!("stream {} opened twice", h.id));
            }
            if st.streams.len() >= MAX_STREAMS {
                after.notify |= shared.queue(st, h.id, Kind::Reset, b"too many multiplexed streams");
                return Ok(());
            }
            st.streams.insert(h.id, Slot::new());
            if let Err(e) = tx.send(MuxStream::new(h.id, shared.clone())) {
                after.rejected.push(e.0);
            }
        }
        Kind::Data => {
            // Frames of a stream this side dropped are let go.
            let Some(s) = st.streams.get_mut(&h.id) else { return Ok(()) };
            let len = payload.len() as u32;
            if s.fin_in || len > s.recv_window {
                return Err(format!("stream {}: data beyond its window or end", h.id));
            }
            s.recv_window -= len;
            s.starved |= s.recv_window <= s.window / 4;
            if s.reset.is_none() {
                s.inbuf.extend_from_slice(payload);
                wakers.extend(s.read_waker.take());
            }
        }
        Kind::Fin => {
            if let Some(s) = st.streams.get_mut(&h.id) {
                s.fin_in = true;
                wakers.extend(s.read_waker.take());
            }
        }
        Kind::Reset => {
            let Some(s) = st.streams.get_mut(&h.id) else { return Ok(()) };
            if s.reset.is_none() {
                let why = String::from_utf8_lossy(payload);
                s.reset = Some(if why.is_empty() { "stream reset by the peer".into() } else { why.into_owned() });
            }
            s.wake(wakers);
            // Nobody will read or send on a stream dropped here already.
            if s.detached {
                st.remove(h.id);
            } else {
                st.discard_queue(h.id);
            }
        }
        Kind::Window => {
            if let Some(s) = st.streams.get_mut(&h.id) {
                s.send_window = s.send_window.saturating_add(wire::window_increment(payload));
                wakers.extend(s.write_waker.take());
            }
        }
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
                .get(&self.id)
                .is_some_and(|s| !s.fin_in && !s.fin_out && s.reset.is_none() && s.inbuf.is_empty())
    }

    /// Aborts the stream, telling the peer why.
    pub fn reset(&self, why: &str) {
        let notify = {
            let mut st = self.shared.lock();
            let Some(s) = st.streams.get_mut(&self.id) else { return };
            if s.reset.is_some() {
                return;
            }
            s.reset = Some(why.to_string());
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
            let State { ctrl, ready, streams, closed, grown, .. } = &mut *guard;
            let Some(s) = streams.get_mut(&self.id) else {
                return Poll::Ready(Err(reset_error("stream gone")));
            };
            if !s.inbuf.is_empty() {
                let n = buf.remaining().min(s.inbuf.len());
                buf.put_slice(&s.inbuf[..n]);
                s.inbuf.advance(n);
                if let Some(c) = &self.shared.counters {
                    c.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                s.unacked += n as u32;
                if let Some(inc) = s.grant(grown) {
                    notify = ctrl.is_empty() && ready.is_empty();
                    wire::encode_window(ctrl, self.id, inc);
                }
                Poll::Ready(Ok(()))
            } else if let Some(why) = &s.reset {
                Poll::Ready(Err(reset_error(why)))
            } else if s.fin_in {
                Poll::Ready(Ok(()))
            } else if let Some(why) = closed {
                Poll::Ready(Err(reset_error(why)))
            } else {
                s.read_waker = Some(cx.waker().clone());
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
            let Some(s) = st.streams.get_mut(&self.id) else {
                return Poll::Ready(Err(reset_error("stream gone")));
            };
            if let Some(why) = &s.reset {
                return Poll::Ready(Err(reset_error(why)));
            }
            if s.fin_out {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            // The window bounds what a stream queues here too: its bytes
            // wait in this queue or in the peer's buffer, never more; and
            // a peer that grants windows without reading the connection
            // still gets no more than MAX_WINDOW queued per stream and
            // QUEUE_BUDGET in all.
            let room = (s.send_window as usize).min((MAX_WINDOW as usize).saturating_sub(s.outq.len())).min(budget);
            if room == 0 {
                s.write_waker = Some(cx.waker().clone());
                if budget == 0 && !st.budget_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.budget_wakers.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let n = data.len().min(room);
            s.send_window -= n as u32;
            s.outq.extend_from_slice(&data[..n]);
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
            let Some(s) = st.streams.get_mut(&self.id) else { return Poll::Ready(Ok(())) };
            if s.fin_out || s.reset.is_some() {
                return Poll::Ready(Ok(()));
            }
            s.fin_out = true;
            s.fin_queued = true;
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
            let Some(s) = st.streams.get_mut(&self.id) else { return };
            if s.reset.is_some() || closed {
                st.remove(self.id);
                false
            } else if s.fin_in && s.fin_out {
                // A clean close: what is still queued goes out first.
                if s.queued {
                    s.detached = true;
                } else {
                    st.remove(self.id);
                }
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
            (st.streams[&r.id].window, st.grown)
        };
        assert!(window > wire::INITIAL_WINDOW && window <= MAX_WINDOW, "window {window}");
        assert_eq!(grown, (window - wire::INITIAL_WINDOW) as usize);
        drop(r);
        drop(writer.await.unwrap());
        assert_eq!(acceptor.shared.lock().grown, 0);
    }

    /// When a window grows: only once half of it was read, only if the
    /// peer nearly used it up while little waits unread, by doubling, up
    /// to MAX_WINDOW and within the connection's budget.
    #[test]
    fn windows_grow_only_for_readers_that_keep_up() {
        let slot = |starved: bool, unread: usize| {
            let mut s = Slot::new();
            s.recv_window = 0;
            s.unacked = wire::INITIAL_WINDOW - unread as u32;
            s.inbuf.extend_from_slice(&vec![0u8; unread]);
            s.starved = starved;
            s
        };
        let w = wire::INITIAL_WINDOW;
        let mut grown = 0;
        // Kept up with a sender the window held back: doubles.
        let mut s = slot(true, 0);
        assert_eq!(s.grant(&mut grown), Some(2 * w));
        assert_eq!((s.window, s.recv_window, grown, s.starved), (2 * w, 2 * w, w as usize, false));
        // Behind: half the window still unread.
        let mut grown = 0;
        let mut s = slot(true, w as usize / 2);
        assert_eq!(s.grant(&mut grown), Some(w / 2));
        assert_eq!((s.window, grown), (w, 0));
        // The sender had window to spare: it is not the limit.
        assert_eq!(slot(false, 0).grant(&mut grown), Some(w));
        // Not half read yet: nothing to announce.
        let mut s = slot(true, 0);
        s.unacked = w / 2 - 1;
        assert_eq!(s.grant(&mut grown), None);
        // The budget is spent.
        let mut grown = GROWTH_BUDGET;
        let mut s = slot(true, 0);
        assert_eq!(s.grant(&mut grown), Some(w));
        assert_eq!(s.window, w);
        // At the cap.
        let mut grown = 0;
        let mut s = slot(true, 0);
        s.window = MAX_WINDOW;
        s.unacked = MAX_WINDOW;
        assert_eq!(s.grant(&mut grown), Some(MAX_WINDOW));
        assert_eq!((s.window, grown), (MAX_WINDOW, 0));
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
        while opener.shared.lock().streams[&s.id].send_window <= wire::INITIAL_WINDOW {
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
        assert!(opener.shared.lock().streams[&s.id].outq.len() <= MAX_WINDOW as usize);
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
        let granted = |o: &Mux| o.shared.lock().streams.values().all(|s| s.send_window > wire::INITIAL_WINDOW);
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
            assert_eq!(st.queued, st.streams.values().map(|s| s.outq.len()).sum::<usize>());
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
            Arc::new(Shared { state: Mutex::new(State::default()), wake_writer: Notify::new(), counters: None });
        let mut st = State::default();
        let mut slot = Slot::new();
        slot.outq.extend_from_slice(&[1u8; 1000]);
        slot.window = 2 * wire::INITIAL_WINDOW;
        slot.detached = true;
        st.streams.insert(5, slot);
        st.enqueue(5);
        st.queued = 1000;
        st.grown = wire::INITIAL_WINDOW as usize;
        let h = wire::Header { id: 5, kind: Kind::Reset, len: 0 };
        on_frame(&shared, &mut st, h, &[], None, &mut After::default()).unwrap();
        assert!(st.streams.is_empty());
        assert_eq!((st.queued, st.grown), (0, 0));
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
        let mut st = State::default();
        for id in [1, 2] {
            st.streams.insert(id, Slot::new());
        }
        st.streams.get_mut(&1).unwrap().outq.extend_from_slice(&vec![1u8; 200 * 1024]);
        st.enqueue(1);
        st.streams.get_mut(&2).unwrap().outq.extend_from_slice(b"small");
        st.streams.get_mut(&2).unwrap().fin_queued = true;
        st.enqueue(2);
        st.queued = 200 * 1024 + 5;
        let mut batch = Vec::new();
        assert!(st.take_batch(&mut batch, &mut Vec::new()));
        let mut frames = Vec::new();
        let mut rest = &batch[..];
        while let Some(h) = wire::decode(rest).unwrap() {
            frames.push((h.id, h.kind, h.len));
            rest = &rest[wire::HEADER_LEN + h.len..];
        }
        assert_eq!(frames[..3], [(1, Kind::Data, QUANTUM), (2, Kind::Data, 5), (2, Kind::Fin, 0)]);
        assert!(frames[3..].iter().all(|f| f.0 == 1));
        // Everything else of stream 1 follows, in turns of QUANTUM.
        let mut total: usize = frames.iter().filter(|f| f.0 == 1).map(|f| f.2).sum();
        batch.clear();
        while st.take_batch(&mut batch, &mut Vec::new()) {
            let mut rest = &batch[..];
            while let Some(h) = wire::decode(rest).unwrap() {
                assert_eq!((h.id, h.kind), (1, Kind::Data));
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
