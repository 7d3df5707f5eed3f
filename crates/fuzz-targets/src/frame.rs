//! Length-prefixed frames (the preface and control messages before and
//! around the handshake) and UDP datagrams on a stream.

use bytes::{Bytes, BytesMut};
use opennotr_proto::datagram as dg;
use opennotr_proto::frame::{
    decode_frame, encode_frame, parse_preface, FrameError, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN, PREFACE_LEN,
};
use opennotr_transport::{read_frame_exact, FrameReader, TransportError};

use crate::{pieces, ready, split_ctl, Reads};

/// Frames decoded from the front of `bytes` fed in `parts`, and the error
/// that stopped them, if one did.
fn decode_all(parts: &[&[u8]]) -> (Vec<Bytes>, Option<FrameError>, usize) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match decode_frame(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e), buf.len()),
            }
        }
    }
    (frames, None, buf.len())
}

/// `decode_frame`, `parse_preface`, and the transport's `FrameReader` and
/// `read_frame_exact`: no frame is larger than the cap, frames re-encode
/// to exactly the bytes they came from, and every way of reading the
/// same bytes finds the same frames.
pub fn frame(data: &[u8]) {
    let (ctl, data) = split_ctl(data);
    if let Some(p) = data.first_chunk::<PREFACE_LEN>() {
        match parse_preface(p) {
            Ok(v) => assert!(p.starts_with(b"NOTR") && v == p[4]),
            Err(e) => assert!(e == FrameError::BadMagic && !p.starts_with(b"NOTR")),
        }
    }

    let (frames, err, left) = decode_all(&[data]);
    for f in &frames {
        assert!(f.len() <= MAX_FRAME_LEN);
    }
    if let Some(e) = &err {
        assert!(matches!(e, FrameError::TooLarge(n) if *n > MAX_FRAME_LEN), "{e:?}");
    }
    let consumed = data.len() - left;
    let mut wire = BytesMut::new();
    for f in &frames {
        encode_frame(f, &mut wire).expect("a decoded frame is within the cap");
    }
    assert_eq!(&wire[..], &data[..consumed], "frames re-encode to their bytes");

    let (split, split_err, _) = decode_all(&pieces(data, ctl));
    assert_eq!(split, frames, "split reads find the same frames");
    assert_eq!(split_err, err);

    // The transport's readers over a socket delivering the same pieces.
    let mut reader = FrameReader::new(Reads::new(data, ctl));
    let mut got = Vec::new();
    let end = loop {
        match ready(reader.next()) {
            Ok(f) => got.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(got, frames);
    match (&end, &err) {
        (TransportError::Frame(a), Some(b)) => assert_eq!(a, b),
        (TransportError::Closed, None) => {}
        other => panic!("FrameReader ended with {other:?}"),
    }

    // read_frame_exact reads the frames before authentication: it refuses
    // a length over the handshake cap on the length alone.
    let first_len = data.first_chunk::<4>().map(|l| u32::from_be_bytes(*l) as usize);
    let mut socket = Reads::new(data, ctl);
    match (ready(read_frame_exact(&mut socket)), first_len) {
        (Ok(f), Some(len)) => {
            assert!(len <= MAX_HANDSHAKE_FRAME_LEN);
            assert_eq!(Some(&f), frames.first());
            assert_eq!(socket.rest(), &data[4 + f.len()..], "read_frame_exact reads one frame, not a byte more");
        }
        (Err(TransportError::Frame(FrameError::TooLarge(n))), Some(len)) => {
            assert!(n == len && len > MAX_HANDSHAKE_FRAME_LEN);
            assert_eq!(socket.rest(), &data[4..], "nothing of an oversized body is read");
        }
        (Err(TransportError::Closed), len) => {
            assert!(len.is_none_or(|l| l <= MAX_HANDSHAKE_FRAME_LEN && data.len() < 4 + l));
        }
        other => panic!("read_frame_exact: {other:?}"),
    }
}

/// UDP datagrams on a stream: each at most 65535 bytes, re-encoding to
/// the bytes it came from, the same however the stream is split.
pub fn datagram(data: &[u8]) {
    let (ctl, data) = split_ctl(data);
    let decode = |parts: Vec<&[u8]>| {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in parts {
            buf.extend_from_slice(part);
            while let Some(d) = dg::decode(&mut buf) {
                out.push(d);
            }
        }
        (out, buf)
    };
    let (whole, left) = decode(vec![data]);
    let mut wire = BytesMut::new();
    for d in &whole {
        assert!(d.len() <= dg::MAX_DATAGRAM);
        dg::encode(d, &mut wire).expect("a decoded datagram fits");
    }
    assert_eq!(&wire[..], &data[..data.len() - left.len()]);
    assert!(left.len() < 2 || left.len() < 2 + usize::from(u16::from_be_bytes([left[0], left[1]])));
    let (split, _) = decode(pieces(data, ctl));
    assert_eq!(split, whole);
}
