//! UDP datagrams on a stream: a 2-byte big-endian length, then the datagram.
//! A datagram is at most 65535 bytes, so the length always fits.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest datagram that can be carried.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Appends one framed datagram to `dst`; `None` if it is too large to carry.
pub fn encode(datagram: &[u8], dst: &mut BytesMut) -> Option<()> {
    let len = u16::try_from(datagram.len()).ok()?;
    dst.reserve(2 + datagram.len());
    dst.put_u16(len);
    dst.put_slice(datagram);
    Some(())
}

/// Takes one datagram off the front of `src` if it is whole.
pub fn decode(src: &mut BytesMut) -> Option<Bytes> {
    if src.len() < 2 {
        return None;
    }
    let len = u16::from_be_bytes([src[0], src[1]]) as usize;
    if src.len() < 2 + len {
        src.reserve(2 + len - src.len());
        return None;
    }
    src.advance(2);
    Some(src.split_to(len).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn boundaries_survive_any_split(dgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..6), cut in any::<prop::sample::Index>()) {
            let mut wire = BytesMut::new();
            for d in &dgs { encode(d, &mut wire).unwrap(); }
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(chunk);
                while let Some(d) = decode(&mut buf) { got.push(d.to_vec()); }
            }
            prop_assert_eq!(got, dgs);
        }
    }

    #[test]
    fn too_large_is_refused() {
        assert!(encode(&vec![0; MAX_DATAGRAM + 1], &mut BytesMut::new()).is_none());
        assert!(encode(&vec![0; MAX_DATAGRAM], &mut BytesMut::new()).is_some());
    }
}
