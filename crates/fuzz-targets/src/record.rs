//! AEAD records, as `SecureStream` reads them off a socket.

use opennotr_proto::handshake::Key;
use opennotr_proto::record::{Opener, RecordKind, Sealer, HEADER_LEN, MAX_PAYLOAD};
use opennotr_transport::SecureStream;
use tokio::io::AsyncReadExt;

use crate::{ready, split_ctl, Reads};

const KEY: Key = Key([7; 32]);

/// What reading a `SecureStream` to its end gives: the plaintext, and
/// whether it ended cleanly (an end record) or with which error kind.
fn read_secure(wire: &[u8], ctl: u8) -> (Vec<u8>, Result<(), std::io::ErrorKind>) {
    let mut s = SecureStream::new(Reads::new(wire, ctl), &Key([0; 32]), &KEY, Default::default());
    let mut out = Vec::new();
    let end = ready(s.read_to_end(&mut out)).map(|_| ()).map_err(|e| e.kind());
    (out, end)
}

/// Input: a control byte, then payloads separated by 0xff. Bit 0 of the
/// control byte: the raw bytes are records (nothing an attacker without
/// the key sends is accepted); otherwise the payloads are sealed, bit 1
/// ends them with an end record and bit 2 flips one bit of the sealed
/// bytes. Sealed bytes read back exactly; a flipped bit anywhere is an
/// error, after no more than the records before it.
pub fn record(data: &[u8]) {
    let (ctl, rest) = split_ctl(data);
    if ctl & 1 != 0 {
        let (plain, end) = read_secure(rest, ctl >> 1);
        assert!(plain.is_empty(), "a record forged without the key was accepted");
        assert!(end.is_err());
        let mut o = Opener::new(&KEY);
        if let Some(h) = rest.first_chunk::<HEADER_LEN>() {
            if let Ok(len) = Opener::body_len(*h) {
                if let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) {
                    assert!(o.open(&mut body.to_vec()).is_err());
                }
            }
        }
        return;
    }
    let payloads: Vec<&[u8]> = rest.split(|b| *b == 0xff).collect();
    let mut sealer = Sealer::new(&KEY);
    let mut wire = Vec::new();
    for p in &payloads {
        for piece in p.chunks(MAX_PAYLOAD) {
            sealer.seal(RecordKind::Data, piece, &mut wire);
        }
    }
    let clean_end = ctl & 2 != 0;
    if clean_end {
        sealer.seal(RecordKind::End, &[], &mut wire);
    }
    let sent: Vec<u8> = payloads.concat();
    let flip = ctl & 4 != 0 && !wire.is_empty();
    if flip {
        let at = (usize::from(ctl) * 7919 + rest.len()) % wire.len();
        wire[at] ^= 1 << (ctl % 8);
    }
    let (got, end) = read_secure(&wire, ctl >> 3);
    if flip {
        assert!(end.is_err(), "a flipped bit went unnoticed");
        assert!(sent.starts_with(&got), "bytes after a flipped bit were delivered");
    } else {
        assert_eq!(got, sent);
        assert_eq!(end, if clean_end { Ok(()) } else { Err(std::io::ErrorKind::UnexpectedEof) });
    }
}
