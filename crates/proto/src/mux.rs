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
