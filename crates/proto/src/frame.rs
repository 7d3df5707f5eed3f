//! Frames: a 4-byte big-endian length, then that many bytes of body.
//!
//! Every connection starts with the 5-byte preface `NOTR` + version, sent by
//! the client. The frame format and the `refused` message are frozen across
//! versions, so a peer of any version can always be told why it was refused.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// First bytes of every connection, from the client.
pub const PREFACE_MAGIC: &[u8; 4] = b"NOTR";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Length of the preface: magic and version byte.
pub const PREFACE_LEN: usize = 5;
/// Hard cap of a frame body. Control messages are small; the cap bounds
/// what an unauthenticated peer can make us buffer.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Cap of a frame read before the peer is authenticated (hello, data
/// hello, challenge, confirm, a refusal): they are a few hundred bytes, and
/// whoever connects may send one, so it is checked before anything is
/// allocated.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 4096;

/// Why bytes could not be read as a frame or message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The connection does not start with `NOTR`.
    #[error("not an opennotr peer (bad preface)")]
    BadMagic,
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The preface a client sends first.
pub fn preface() -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..4].copy_from_slice(PREFACE_MAGIC);
    p[4] = PROTOCOL_VERSION;
    p
}

/// Checks a received preface and returns the peer's version.
pub fn parse_preface(p: &[u8; PREFACE_LEN]) -> Result<u8, FrameError> {
    if &p[..4] != PREFACE_MAGIC {
        return Err(FrameError::BadMagic);
    }
    Ok(p[4])
}

/// Appends one frame holding `body` to `dst`.
pub fn encode_frame(body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(body.len()));
    }
    dst.reserve(4 + body.len());
    dst.put_u32(body.len() as u32);
    dst.put_slice(body);
    Ok(())
}

/// Takes one whole frame off the front of `src`, if one is buffered.
///
/// Checks the length before anything is allocated, so a hostile length
/// prefix costs nothing; `Ok(None)` means more bytes are needed.
pub fn decode_frame(src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if src.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    if src.len() < 4 + len {
        src.reserve(4 + len - src.len());
        return Ok(None);
    }
    src.advance(4);
    Ok(Some(src.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn preface_round_trip() {
        assert_eq!(parse_preface(&preface()), Ok(PROTOCOL_VERSION));
        assert_eq!(parse_preface(b"GET /"), Err(FrameError::BadMagic));
    }

    #[test]
    fn oversized_length_rejected_before_body_arrives() {
        let mut b = BytesMut::new();
        b.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert_eq!(decode_frame(&mut b), Err(FrameError::TooLarge(MAX_FRAME_LEN + 1)));
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(decode_frame(&mut b).is_err());
        assert!(encode_frame(&vec![0; MAX_FRAME_LEN + 1], &mut BytesMut::new()).is_err());
    }

    proptest! {
        #[test]
        fn frames_split_at_every_byte(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5)) {
            let mut wire = BytesMut::new();
            for b in &bodies {
                encode_frame(b, &mut wire).unwrap();
            }
            let wire = wire.freeze();
            for cut in 0..=wire.len() {
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for chunk in [&wire[..cut], &wire[cut..]] {
                    buf.extend_from_slice(chunk);
                    while let Some(f) = decode_frame(&mut buf).unwrap() {
                        got.push(f.to_vec());
                    }
                }
                prop_assert_eq!(&got, &bodies);
                prop_assert!(buf.is_empty());
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = decode_frame(&mut buf) {}
        }
    }
}
