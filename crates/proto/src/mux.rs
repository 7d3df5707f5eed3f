//! Multiplexed streams: many byte streams inside one tunnel stream.
//!
//! The gateway's HTTP/1.1 requests are small and many; on a data channel
//! per upstream connection every request and every response costs a
//! loopback or network send of its own at both ends. On one multiplexed
//! stream per route, one write carries the frames of all the visitors whose
//! requests are ready, and one read at the other end takes them all.
//!
//! A frame is a 9-byte header — stream id (u32), kind (u8), length (u32),
//! all big-endian — and `length` bytes of payload:
//!
//! | kind | payload | meaning |
//! |---|---|---|
//! | `OPEN` (0) | none | the opener starts stream `id` (ids are the opener's, never reused) |
//! | `DATA` (1) | 1..=[`MAX_DATA`] bytes | bytes of the stream, within the receiver's window |
//! | `FIN` (2) | none | the sender will send no more on the stream (half-close) |
//! | `RESET` (3) | UTF-8 reason, ≤ [`MAX_REASON`] bytes | the stream is aborted both ways |
//! | `WINDOW` (4) | u32 increment | the receiver consumed that many bytes: the sender may send as many more |
//!
//! Each side may send [`INITIAL_WINDOW`] bytes of a stream before it gets
//! `WINDOW` frames for it, so a visitor that reads slowly stalls its own
//! stream and never the others. A receiver may grant more than it consumed:
//! that is how a stream's window grows.
//!
//! [`Conn`] is one side's state of a connection, without I/O: which
//! streams are open, their half-closes and windows, and what each frame
//! from the peer does to them (or why it ends the connection). The
//! transport drives it and keeps the buffers beside it; the `mux_state`
//! fuzz target drives it with any sequence of frames and operations.

use std::collections::HashMap;

use thiserror::Error;

/// Header length.
pub const HEADER_LEN: usize = 9;
/// Largest `DATA` payload.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest `RESET` reason.
pub const MAX_REASON: usize = 1024;
/// Bytes of a stream either side may send before any `WINDOW` frame, as
/// in HTTP/2. It bounds what a stream whose reader stalls holds at the
/// receiver; receivers grow the window of streams that need more (a
/// stream moves at most a window per round trip of `WINDOW` frames).
pub const INITIAL_WINDOW: u32 = 64 * 1024;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new stream.
    Open,
    /// Bytes of a stream.
    Data,
    /// No more bytes from the sender.
    Fin,
    /// The stream is aborted; the payload says why.
    Reset,
    /// The receiver's window grows by the payload's u32.
    Window,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Open => 0,
            Kind::Data => 1,
            Kind::Fin => 2,
            Kind::Reset => 3,
            Kind::Window => 4,
        }
    }
}

/// A frame that breaks the rules: the multiplexed stream cannot go on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MuxError {
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A payload longer than its kind allows.
    #[error("{kind:?} frame of {len} bytes")]
    BadLength {
        /// The frame's kind.
        kind: Kind,
        /// Its length field.
        len: u32,
    },
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The stream.
    pub id: u32,
    /// What the frame says.
    pub kind: Kind,
    /// Payload length.
    pub len: usize,
}

/// Appends a frame to `out`.
pub fn encode(out: &mut Vec<u8>, id: u32, kind: Kind, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.push(kind.code());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a `WINDOW` frame.
pub fn encode_window(out: &mut Vec<u8>, id: u32, increment: u32) {
    encode(out, id, Kind::Window, &increment.to_be_bytes());
}

/// The header at the start of `buf`, if `buf` holds the whole frame.
pub fn decode(buf: &[u8]) -> Result<Option<Header>, MuxError> {
    let Some(h) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    let kind = match h[4] {
        0 => Kind::Open,
        1 => Kind::Data,
        2 => Kind::Fin,
        3 => Kind::Reset,
        4 => Kind::Window,
        k => return Err(MuxError::UnknownKind(k)),
    };
    let ok = match kind {
        Kind::Open | Kind::Fin => len == 0,
        Kind::Data => len >= 1 && len as usize <= MAX_DATA,
        Kind::Reset => len as usize <= MAX_REASON,
        Kind::Window => len == 4,
    };
    if !ok {
        return Err(MuxError::BadLength { kind, len });
    }
    let len = len as usize;
    Ok((buf.len() >= HEADER_LEN + len).then_some(Header { id, kind, len }))
}

/// The increment of a `WINDOW` payload.
pub fn window_increment(payload: &[u8]) -> u32 {
    payload.try_into().map_or(0, u32::from_be_bytes)
}

// ------------------------------------------------------------ the state

/// Streams one multiplexed connection carries at once, at most.
pub const MAX_STREAMS: usize = 1024;
/// Largest receive window a stream grows to (and, in the transport, most
/// bytes one stream queues for sending).
pub const MAX_WINDOW: u32 = 4 * 1024 * 1024;
/// How far the windows of one connection's streams may grow beyond
/// [`INITIAL_WINDOW`], together (64 streams at [`MAX_WINDOW`]): with
/// [`MAX_STREAMS`] streams whose readers all stall, a side holds at most
/// 64 MiB of their initial windows plus this. A grown window stays while
/// its stream lives, so the budget is generous.
pub const GROWTH_BUDGET: usize = 256 * 1024 * 1024;

/// A frame that breaks the rules of the connection's state: it cannot go on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    /// The side that accepts streams never opens one.
    #[error("OPEN from the accepting side")]
    OpenFromAcceptor,
    /// An id that is open already.
    #[error("stream {0} opened twice")]
    OpenedTwice(u32),
    /// More data than the window allows, or data after FIN.
    #[error("stream {0}: data beyond its window or end")]
    BeyondWindow(u32),
}

/// What a frame from the peer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The peer opened this stream.
    Opened,
    /// The peer opened a stream past [`MAX_STREAMS`]: answer with `RESET`.
    Refused,
    /// Data for the stream: to deliver unless it was reset.
    Data {
        /// The stream was not reset: the bytes go to its reader.
        deliver: bool,
    },
    /// The peer will send no more.
    Fin,
    /// The stream is aborted; `first` unless it was already.
    Reset {
        /// It was not reset before.
        first: bool,
    },
    /// The stream may send more.
    Window,
    /// A frame for a stream this side no longer has: let go.
    Ignored,
}

/// One stream's state and windows, and what the I/O side keeps for it.
#[derive(Debug)]
pub struct Stream<T> {
    /// The I/O side's part: buffers, wakers.
    pub io: T,
    fin_in: bool,
    fin_out: bool,
    reset: bool,
    /// Bytes this side may still send.
    send_window: u32,
    /// Bytes the peer may still send.
    recv_window: u32,
    /// The receive window this side keeps granting.
    window: u32,
    /// The peer came near the end of its window since the last grant.
    starved: bool,
    /// Bytes read here and not yet granted back.
    unacked: u32,
}

impl<T> Stream<T> {
    fn new(io: T) -> Stream<T> {
        Stream {
            io,
            fin_in: false,
            fin_out: false,
            reset: false,
            send_window: INITIAL_WINDOW,
            recv_window: INITIAL_WINDOW,
            window: INITIAL_WINDOW,
            starved: false,
            unacked: 0,
        }
    }

    /// The peer sent FIN.
    pub fn fin_in(&self) -> bool {
        self.fin_in
    }

    /// This side sent (or queued) FIN.
    pub fn fin_out(&self) -> bool {
        self.fin_out
    }

    /// The stream was aborted, by either side.
    pub fn is_reset(&self) -> bool {
        self.reset
    }

    /// Bytes this side may still send.
    pub fn send_window(&self) -> u32 {
        self.send_window
    }

    /// Bytes the peer may still send.
    pub fn recv_window(&self) -> u32 {
        self.recv_window
    }

    /// The receive window granted to the peer, in all.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Bytes read and not yet granted back.
    pub fn unacked(&self) -> u32 {
        self.unacked
    }

    /// This side aborts the stream; false if it was already.
    pub fn reset(&mut self) -> bool {
        !std::mem::replace(&mut self.reset, true)
    }

    /// This side sends FIN; false if it did already, or the stream was reset.
    pub fn finish(&mut self) -> bool {
        if self.fin_out || self.reset {
            return false;
        }
        self.fin_out = true;
        true
    }

    /// This side sends `n` bytes, at most [`Stream::send_window`].
    pub fn sent(&mut self, n: u32) {
        debug_assert!(n <= self.send_window);
        self.send_window = self.send_window.saturating_sub(n);
    }
}

/// The streams of one multiplexed connection and their windows, as both
/// sides' frames move them: the rules without the I/O, so they are
/// tested (and fuzzed) alone. `T` is what the I/O side keeps per stream.
#[derive(Debug)]
pub struct Conn<T> {
    accepting: bool,
    streams: HashMap<u32, Stream<T>>,
    next_id: u32,
    /// Sum of the streams' windows beyond the initial one.
    grown: usize,
}

impl<T> Conn<T> {
    /// The opening side's state (`accepting` false: it opens streams) or
    /// the accepting side's (the peer opens them).
    pub fn new(accepting: bool) -> Conn<T> {
        Conn { accepting, streams: HashMap::new(), next_id: 0, grown: 0 }
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// How far the windows grew beyond the initial one, together.
    pub fn grown(&self) -> usize {
        self.grown
    }

    /// A stream.
    pub fn get(&self, id: u32) -> Option<&Stream<T>> {
        self.streams.get(&id)
    }

    /// A stream.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Stream<T>> {
        self.streams.get_mut(&id)
    }

    /// Every stream.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Stream<T>)> {
        self.streams.iter().map(|(id, s)| (*id, s))
    }

    /// Every stream.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Stream<T>)> {
        self.streams.iter_mut().map(|(id, s)| (*id, s))
    }

    /// Opens a stream: its id, or `None` at [`MAX_STREAMS`]. Ids are not
    /// reused while the stream they name lives.
    pub fn open(&mut self, io: T) -> Option<u32> {
        if self.streams.len() >= MAX_STREAMS {
            return None;
        }
        while self.streams.contains_key(&self.next_id) {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.streams.insert(id, Stream::new(io));
        Some(id)
    }

    /// Forgets a stream, and what its window took of the growth budget.
    pub fn remove(&mut self, id: u32) -> Option<Stream<T>> {
        let s = self.streams.remove(&id)?;
        self.grown -= (s.window - INITIAL_WINDOW) as usize;
        Some(s)
    }

    /// Applies a frame from the peer (its payload checked by [`decode`]);
    /// `io` makes the I/O side's part of a stream the peer opens.
    pub fn receive(&mut self, h: Header, payload: &[u8], io: impl FnOnce() -> T) -> Result<Event, StateError> {
        if h.kind == Kind::Open {
            if !self.accepting {
                return Err(StateError::OpenFromAcceptor);
            }
            if self.streams.contains_key(&h.id) {
                return Err(StateError::OpenedTwice(h.id));
            }
            if self.streams.len() >= MAX_STREAMS {
                return Ok(Event::Refused);
            }
            self.streams.insert(h.id, Stream::new(io()));
            return Ok(Event::Opened);
        }
        let Some(s) = self.streams.get_mut(&h.id) else { return Ok(Event::Ignored) };
        Ok(match h.kind {
            Kind::Open => unreachable!("handled above"),
            Kind::Data => {
                let len = payload.len() as u32;
                if s.fin_in || len > s.recv_window {
                    return Err(StateError::BeyondWindow(h.id));
                }
                s.recv_window -= len;
                s.starved |= s.recv_window <= s.window / 4;
                Event::Data { deliver: !s.reset }
            }
            Kind::Fin => {
                s.fin_in = true;
                Event::Fin
            }
            Kind::Reset => Event::Reset { first: s.reset() },
            Kind::Window => {
                s.send_window = s.send_window.saturating_add(window_increment(payload));
                Event::Window
            }
        })
    }

    /// The reader of stream `id` took `n` bytes, and `unread` wait behind
    /// them: the increment to announce with `WINDOW`, once half the
    /// window has been read. The window doubles, up to [`MAX_WINDOW`] and
    /// within [`GROWTH_BUDGET`] for the connection, when the peer nearly
    /// ran out of it while this reader kept up: then the window holds the
    /// stream back, not the reader. A reader that falls behind has bytes
    /// waiting and gets no more.
    pub fn read(&mut self, id: u32, n: usize, unread: usize) -> Option<u32> {
        let s = self.streams.get_mut(&id)?;
        s.unacked = s.unacked.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if s.unacked < s.window / 2 || s.fin_in {
            return None;
        }
        let mut inc = std::mem::take(&mut s.unacked);
        if s.starved && unread <= s.window as usize / 4 && s.window < MAX_WINDOW {
            let more = s.window.min(MAX_WINDOW - s.window);
            if self.grown + more as usize <= GROWTH_BUDGET {
                self.grown += more as usize;
                s.window += more;
                inc += more;
            }
        }
        s.starved = false;
        s.recv_window += inc;
        Some(inc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        encode(&mut out, 7, Kind::Data, b"hello");
        encode(&mut out, 7, Kind::Fin, b"");
        encode_window(&mut out, 9, 65536);
        let h = decode(&out).unwrap().unwrap();
        assert_eq!(h, Header { id: 7, kind: Kind::Data, len: 5 });
        assert_eq!(&out[HEADER_LEN..HEADER_LEN + 5], b"hello");
        let rest = &out[HEADER_LEN + 5..];
        assert_eq!(decode(rest).unwrap().unwrap(), Header { id: 7, kind: Kind::Fin, len: 0 });
        let w = &rest[HEADER_LEN..];
        let h = decode(w).unwrap().unwrap();
        assert_eq!(h.kind, Kind::Window);
        assert_eq!(window_increment(&w[HEADER_LEN..HEADER_LEN + h.len]), 65536);
        // Incomplete: more bytes needed, not an error.
        assert_eq!(decode(&out[..HEADER_LEN + 2]), Ok(None));
        assert_eq!(decode(&out[..3]), Ok(None));
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(decode(&[0, 0, 0, 1, 9, 0, 0, 0, 0]), Err(MuxError::UnknownKind(9)));
        let empty_data = [0, 0, 0, 1, 1, 0, 0, 0, 0];
        assert!(matches!(decode(&empty_data), Err(MuxError::BadLength { kind: Kind::Data, len: 0 })));
        let huge = [0, 0, 0, 1, 1, 0xff, 0xff, 0xff, 0xff];
        assert!(decode(&huge).is_err());
        let open_with_payload = [0, 0, 0, 1, 0, 0, 0, 0, 1];
        assert!(decode(&open_with_payload).is_err());
    }

    fn frame(id: u32, kind: Kind, len: usize) -> Header {
        Header { id, kind, len }
    }

    /// When a window grows: only once half of it was read, only if the
    /// peer nearly used it up while little waits unread, by doubling, up
    /// to MAX_WINDOW and within the connection's budget.
    #[test]
    fn windows_grow_only_for_readers_that_keep_up() {
        let w = INITIAL_WINDOW;
        // A stream whose peer sent a whole window, of which `unread` waits.
        let conn = |starved: bool, grown: usize| {
            let mut c = Conn::new(false);
            let id = c.open(()).unwrap();
            let s = c.get_mut(id).unwrap();
            s.recv_window = 0;
            s.starved = starved;
            c.grown = grown;
            (c, id)
        };
        // Kept up with a sender the window held back: doubles.
        let (mut c, id) = conn(true, 0);
        assert_eq!(c.read(id, w as usize, 0), Some(2 * w));
        let s = c.get(id).unwrap();
        assert_eq!((s.window, s.recv_window, s.starved), (2 * w, 2 * w, false));
        assert_eq!(c.grown(), w as usize);
        assert_eq!(c.remove(id).map(|s| s.window), Some(2 * w));
        assert_eq!(c.grown(), 0, "the growth goes back with the stream");
        // Behind: half the window still unread.
        let (mut c, id) = conn(true, 0);
        assert_eq!(c.read(id, w as usize / 2, w as usize / 2), Some(w / 2));
        assert_eq!((c.get(id).unwrap().window, c.grown()), (w, 0));
        // The sender had window to spare: it is not the limit.
        let (mut c, id) = conn(false, 0);
        assert_eq!(c.read(id, w as usize, 0), Some(w));
        // Not half read yet: nothing to announce.
        let (mut c, id) = conn(true, 0);
        assert_eq!(c.read(id, w as usize / 2 - 1, 0), None);
        // The budget is spent.
        let (mut c, id) = conn(true, GROWTH_BUDGET);
        assert_eq!(c.read(id, w as usize, 0), Some(w));
        assert_eq!(c.get(id).unwrap().window, w);
        // At the cap.
        let (mut c, id) = conn(true, 0);
        let s = c.get_mut(id).unwrap();
        s.window = MAX_WINDOW;
        assert_eq!(c.read(id, MAX_WINDOW as usize, 0), Some(MAX_WINDOW));
        assert_eq!((c.get(id).unwrap().window, c.grown()), (MAX_WINDOW, 0));
    }

    #[test]
    fn frames_move_the_state_by_the_rules() {
        let mut opener: Conn<()> = Conn::new(false);
        assert_eq!(opener.receive(frame(1, Kind::Open, 0), &[], || ()), Err(StateError::OpenFromAcceptor));
        let mut c: Conn<()> = Conn::new(true);
        assert_eq!(c.receive(frame(1, Kind::Open, 0), &[], || ()), Ok(Event::Opened));
        assert_eq!(c.receive(frame(1, Kind::Open, 0), &[], || ()), Err(StateError::OpenedTwice(1)));
        // Frames of streams this side does not have are let go.
        for kind in [Kind::Data, Kind::Fin, Kind::Reset, Kind::Window] {
            assert_eq!(c.receive(frame(2, kind, 1), &[0], || ()), Ok(Event::Ignored));
        }
        let whole = vec![0u8; INITIAL_WINDOW as usize];
        assert_eq!(c.receive(frame(1, Kind::Data, whole.len()), &whole, || ()), Ok(Event::Data { deliver: true }));
        assert_eq!(c.receive(frame(1, Kind::Data, 1), &[0], || ()), Err(StateError::BeyondWindow(1)));
        assert_eq!(c.receive(frame(1, Kind::Window, 4), &u32::MAX.to_be_bytes(), || ()), Ok(Event::Window));
        assert_eq!(c.receive(frame(1, Kind::Window, 4), &u32::MAX.to_be_bytes(), || ()), Ok(Event::Window));
        assert_eq!(c.get(1).unwrap().send_window(), u32::MAX, "a window saturates");
        assert_eq!(c.receive(frame(1, Kind::Reset, 0), &[], || ()), Ok(Event::Reset { first: true }));
        assert_eq!(c.receive(frame(1, Kind::Reset, 0), &[], || ()), Ok(Event::Reset { first: false }));
        assert!(!c.get_mut(1).unwrap().finish(), "no FIN after a reset");
        assert_eq!(c.receive(frame(1, Kind::Fin, 0), &[], || ()), Ok(Event::Fin));
        assert_eq!(c.receive(frame(1, Kind::Data, 1), &[0], || ()), Err(StateError::BeyondWindow(1)));
        for id in 2..MAX_STREAMS as u32 + 1 {
            assert_eq!(c.receive(frame(id, Kind::Open, 0), &[], || ()), Ok(Event::Opened));
        }
        assert_eq!(c.receive(frame(0, Kind::Open, 0), &[], || ()), Ok(Event::Refused));
        assert_eq!(c.len(), MAX_STREAMS);
    }

    #[test]
    fn ids_are_not_reused_while_their_stream_lives() {
        let mut c: Conn<()> = Conn::new(false);
        c.next_id = u32::MAX;
        assert_eq!(c.open(()), Some(u32::MAX));
        assert_eq!(c.open(()), Some(0));
        c.next_id = u32::MAX;
        assert_eq!(c.open(()), Some(1), "the live ids are skipped");
        for _ in 4..=MAX_STREAMS {
            assert!(c.open(()).is_some());
        }
        assert_eq!(c.open(()), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_data_frame_decodes(id: u32, payload in proptest::collection::vec(any::<u8>(), 1..2048)) {
            let mut out = Vec::new();
            encode(&mut out, id, Kind::Data, &payload);
            let h = decode(&out).unwrap().unwrap();
            prop_assert_eq!(h, Header { id, kind: Kind::Data, len: payload.len() });
            prop_assert_eq!(&out[HEADER_LEN..], &payload[..]);
        }
    }
}
