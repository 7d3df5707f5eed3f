//! Multiplexed streams: the frame codec, and a connection's state as the
//! peer's frames drive it.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use opennotr_proto::mux::{decode, encode, window_increment, Kind, MuxError, HEADER_LEN, MAX_DATA, MAX_REASON};
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
