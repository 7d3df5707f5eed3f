//! Multiplexed streams: the frame codec, and a connection's state as the
//! peer's frames drive it.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use std::collections::HashMap;

use opennotr_proto::mux::{
    decode, encode, window_increment, Conn, Event, Header, Kind, MuxError, StateError, GROWTH_BUDGET, HEADER_LEN,
    INITIAL_WINDOW, MAX_DATA, MAX_REASON, MAX_WINDOW,
};
use opennotr_transport::mux::{Mux, MAX_STREAMS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::split_ctl;

/// `proto::mux::decode` over a run of frames: each header keeps to its
/// kind's length rule, each frame re-encodes to its bytes, a frame is
/// never reported before all of it is there, and an error names a rule
/// the header breaks.
pub fn mux_frame(data: &[u8]) {
    let mut rest = data;
    loop {
        match decode(rest) {
            Ok(Some(h)) => {
                let ok = match h.kind {
                    Kind::Open | Kind::Fin => h.len == 0,
                    Kind::Data => (1..=MAX_DATA).contains(&h.len),
                    Kind::Reset => h.len <= MAX_REASON,
                    Kind::Window => h.len == 4,
                };
                assert!(ok, "{h:?}");
                let (frame, after) = rest.split_at(HEADER_LEN + h.len);
                let payload = &frame[HEADER_LEN..];
                let mut again = Vec::new();
                encode(&mut again, h.id, h.kind, payload);
                assert_eq!(again, frame);
                if h.kind == Kind::Window {
                    assert_eq!(window_increment(payload).to_be_bytes(), payload);
                }
                assert_eq!(decode(&frame[..frame.len() - 1]), Ok(None), "a frame reported before it is whole");
                rest = after;
            }
            Ok(None) => {
                assert!(rest.len() < HEADER_LEN || rest.len() < HEADER_LEN + len_field(rest));
                return;
            }
            Err(MuxError::UnknownKind(k)) => return assert!(k > 4 && rest[4] == k),
            Err(MuxError::BadLength { len, .. }) => return assert_eq!(len as usize, len_field(rest)),
        }
    }
}

/// `proto::mux::Conn`, the streams' state and windows, driven by a run of
/// operations read from the input: the peer's frames (any id, kind and
/// length the codec allows) and this side's opens, reads, writes, FINs,
/// resets and drops. After every step: at most `MAX_STREAMS` streams;
/// every window between the initial one and `MAX_WINDOW`, their growth
/// adding up to the connection's, within `GROWTH_BUDGET`; the bytes the
/// peer may still send, plus those delivered and not read, plus those
/// read and not granted back, make the window (so no window goes below
/// zero or past its bound); data beyond the window or after FIN is
/// refused, frames of unknown streams are let go, a stream is opened once.
pub fn mux_state(data: &[u8]) {
    let (ctl, mut ops) = split_ctl(data);
    let accepting = ctl & 1 != 0;
    let mut conn: Conn<()> = Conn::new(accepting);
    // Bytes delivered to each stream's reader and not read yet.
    let mut unread: HashMap<u32, usize> = HashMap::new();
    let mut next = |n: usize| -> Option<&[u8]> {
        let (a, b) = ops.split_at_checked(n)?;
        ops = b;
        Some(a)
    };
    while let Some(&[op, id, a, b]) = next(4) {
        let id = u32::from(id % 16);
        let arg = usize::from(u16::from_be_bytes([a, b]));
        match op % 8 {
            0 if !accepting => {
                let before = conn.len();
                match conn.open(()) {
                    Some(id) => {
                        assert_eq!(conn.len(), before + 1);
                        unread.insert(id, 0);
                    }
                    None => assert!(before >= MAX_STREAMS),
                }
            }
            0..=2 => {
                let kind = [Kind::Open, Kind::Data, Kind::Fin, Kind::Reset, Kind::Window][usize::from(a) % 5];
                let payload: Vec<u8> = match kind {
                    Kind::Open | Kind::Fin => Vec::new(),
                    Kind::Data => vec![0; 1 + (arg * 7 + usize::from(op)) % MAX_DATA],
                    Kind::Reset => vec![b'x'; arg % (MAX_REASON + 1)],
                    Kind::Window => (u32::from_be_bytes([a, b, op, id as u8]) >> (op % 32)).to_be_bytes().to_vec(),
                };
                let before = conn.get(id).map(|s| (s.recv_window(), s.fin_in(), s.is_reset()));
                let got = conn.receive(Header { id, kind, len: payload.len() }, &payload, || ());
                match (kind, before, got) {
                    (Kind::Open, None, Ok(Event::Opened)) => {
                        assert!(accepting);
                        unread.insert(id, 0);
                    }
                    (Kind::Open, None, Ok(Event::Refused)) => assert!(conn.len() >= MAX_STREAMS),
                    (Kind::Open, None, Err(StateError::OpenFromAcceptor)) => assert!(!accepting),
                    (Kind::Open, Some(_), Err(e)) => {
                        assert!(matches!(e, StateError::OpenedTwice(_) | StateError::OpenFromAcceptor));
                        return;
                    }
                    (_, None, Ok(Event::Ignored)) if kind != Kind::Open => {}
                    (Kind::Data, Some((recv, fin, reset)), Ok(Event::Data { deliver })) => {
                        assert!(!fin && payload.len() <= recv as usize && deliver != reset);
                        assert_eq!(conn.get(id).map(|s| s.recv_window()), Some(recv - payload.len() as u32));
                        if deliver {
                            *unread.entry(id).or_default() += payload.len();
                        }
                    }
                    (Kind::Data, Some((recv, fin, _)), Err(StateError::BeyondWindow(_))) => {
                        assert!(fin || payload.len() > recv as usize);
                        return;
                    }
                    (Kind::Fin, Some(_), Ok(Event::Fin)) => assert!(conn.get(id).is_some_and(|s| s.fin_in())),
                    (Kind::Reset, Some((_, _, was)), Ok(Event::Reset { first })) => assert_eq!(first, !was),
                    (Kind::Window, Some(_), Ok(Event::Window)) => {}
                    other => panic!("{kind:?} for stream {id}: {other:?}"),
                }
            }
            3 => {
                let have = unread.get(&id).copied().unwrap_or(0);
                let n = arg % (have + 1);
                if conn.get(id).is_some() && n > 0 {
                    unread.insert(id, have - n);
                    let _ = conn.read(id, n, have - n);
                }
            }
            4 => {
                if let Some(s) = conn.get_mut(id) {
                    let n = (arg as u32).min(s.send_window());
                    s.sent(n);
                }
            }
            5 => {
                if let Some(s) = conn.get_mut(id) {
                    let (was_out, was_reset) = (s.fin_out(), s.is_reset());
                    assert_eq!(s.finish(), !was_out && !was_reset);
                }
            }
            6 => {
                if let Some(s) = conn.get_mut(id) {
                    let was = s.is_reset();
                    assert_eq!(s.reset(), !was);
                }
            }
            _ => {
                let had = conn.get(id).is_some();
                assert_eq!(conn.remove(id).is_some(), had);
                unread.remove(&id);
            }
        }
        check(&conn, &unread);
    }
}

fn check(conn: &Conn<()>, unread: &HashMap<u32, usize>) {
    assert!(conn.len() <= MAX_STREAMS);
    let mut grown = 0;
    for (id, s) in conn.iter() {
        assert!((INITIAL_WINDOW..=MAX_WINDOW).contains(&s.window()), "window {}", s.window());
        grown += (s.window() - INITIAL_WINDOW) as usize;
        if !s.is_reset() {
            let held =
                u64::from(s.recv_window()) + unread.get(&id).copied().unwrap_or(0) as u64 + u64::from(s.unacked());
            assert_eq!(held, u64::from(s.window()), "stream {id}: the window does not add up");
        }
    }
    assert_eq!(grown, conn.grown());
    assert!(grown <= GROWTH_BUDGET);
}

/// Whether the run of frames holds one `decode` refuses.
fn breaks_the_codec(mut rest: &[u8]) -> bool {
    loop {
        match decode(rest) {
            Ok(Some(h)) => rest = &rest[HEADER_LEN + h.len..],
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

fn len_field(h: &[u8]) -> usize {
    u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize
}

/// A real `Mux` fed the input as its peer's bytes. Bit 0 of the control
/// byte: this side is the opener (it opened streams 0 to 7 first), else
/// the acceptor; bit 1: this side reads every stream it has, bit 2: it
/// writes to them. Whatever the peer sends, nothing panics, the
/// connection holds at most `MAX_STREAMS` streams, and a connection that
/// the peer broke the rules on is closed.
pub fn mux_session(data: &[u8]) {
    let (ctl, frames) = split_ctl(data);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let (mux, mut incoming, mut streams) = if ctl & 1 != 0 {
            let mux = Mux::opener(ours, None);
            let streams: Vec<_> = (0..8).map(|_| mux.open().expect("a fresh connection opens streams")).collect();
            (mux, None, streams)
        } else {
            let (mux, rx) = Mux::acceptor(ours);
            (mux, Some(rx), Vec::new())
        };
        let _ = peer.write_all(frames).await;
        // The reader and writer tasks take all of it.
        settle().await;
        if let Some(rx) = incoming.as_mut() {
            while let Ok(s) = rx.try_recv() {
                streams.push(s);
            }
        }
        assert!(mux.streams() <= MAX_STREAMS);
        if breaks_the_codec(frames) {
            assert!(mux.is_closed(), "a frame that breaks the codec's rules left the connection open");
        }
        for s in streams.iter_mut() {
            if ctl & 2 != 0 {
                let mut buf = [0u8; 4096];
                once(s.read(&mut buf)).await;
            }
            if ctl & 4 != 0 {
                once(s.write_all(b"answer")).await;
                once(s.shutdown()).await;
            }
        }
        drop(streams);
        let _ = peer.shutdown().await;
        settle().await;
        assert!(mux.streams() <= MAX_STREAMS);
        let _ = mux.is_closed();
    });
}

/// Lets every other task run until it waits.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Polls `f` once: what it can do without waiting.
async fn once<F: Future>(f: F) {
    let mut f = pin!(f);
    poll_fn(|cx| {
        let _ = f.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await
}
