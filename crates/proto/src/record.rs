//! Encrypted records: how a channel is protected after the handshake.
//!
//! ```text
//! record    = length:u16be  ciphertext[length]      (length includes the tag)
//! plaintext = kind:u8 payload                        (kind 0 = data, 1 = end)
//! ```
//! AES-256-GCM with one key per direction and a 64-bit record counter as the
//! nonce, so nonces never repeat under a key and records cannot be dropped,
//! reordered or replayed without failing authentication. `end` is the
//! authenticated half-close: a bare TCP FIN without it means truncation.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::handshake::Key;

/// Length of the record header.
pub const HEADER_LEN: usize = 2;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Largest payload of one record.
pub const MAX_PAYLOAD: usize = u16::MAX as usize - TAG_LEN - 1;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Application bytes.
    Data,
    /// The sender will write nothing more (half-close).
    End,
}

/// Why a record was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// Too short to hold a kind byte and a tag.
    #[error("record too short")]
    TooShort,
    /// Authentication failed: tampered, reordered, or wrong key.
    #[error("record failed authentication")]
    BadRecord,
    /// Unknown record kind.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
}

fn key(k: &Key) -> LessSafeKey {
    // AES-256 takes exactly 32 bytes, which `Key` always is.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k.0).unwrap_or_else(|_| unreachable!("32-byte key")))
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Encrypts records in one direction.
pub struct Sealer {
    key: LessSafeKey,
    seq: u64,
}

impl Sealer {
    /// A sealer for the direction whose key is `k`.
    pub fn new(k: &Key) -> Self {
        Sealer { key: key(k), seq: 0 }
    }

    /// Appends a record holding `payload` (at most [`MAX_PAYLOAD`] bytes; the
    /// caller splits larger writes) to `out`.
    pub fn seal(&mut self, kind: RecordKind, payload: &[u8], out: &mut Vec<u8>) {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
        let start = out.len();
        let len = (1 + payload.len() + TAG_LEN) as u16;
        out.reserve(HEADER_LEN + len as usize);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(match kind {
            RecordKind::Data => 0,
            RecordKind::End => 1,
        });
        out.extend_from_slice(payload);
        let body = &mut out[start + HEADER_LEN..];
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.seq), Aad::empty(), body)
            .unwrap_or_else(|_| unreachable!("payload is within AES-GCM limits"));
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
    }
}

/// Decrypts records in one direction.
pub struct Opener {
    key: LessSafeKey,
    seq: u64,
}

impl Opener {
    /// An opener for the direction whose key is `k`.
    pub fn new(k: &Key) -> Self {
        Opener { key: key(k), seq: 0 }
    }

    /// Length of the record body announced by a header.
    pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, RecordError> {
        let len = u16::from_be_bytes(header) as usize;
        if len < 1 + TAG_LEN {
            return Err(RecordError::TooShort);
        }
        Ok(len)
    }

    /// Decrypts a record body (without its header) in place and returns
    /// the kind and the range of the payload within `body`.
    pub fn open(&mut self, body: &mut [u8]) -> Result<(RecordKind, std::ops::Range<usize>), RecordError> {
        if body.len() < 1 + TAG_LEN {
            return Err(RecordError::TooShort);
        }
        let plain = self.key.open_in_place(nonce(self.seq), Aad::empty(), body).map_err(|_| RecordError::BadRecord)?;
        self.seq += 1;
        let kind = match plain[0] {
            0 => RecordKind::Data,
            1 => RecordKind::End,
            k => return Err(RecordError::UnknownKind(k)),
        };
        Ok((kind, 1..plain.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (Sealer, Opener) {
        let k = Key([9; 32]);
        (Sealer::new(&k), Opener::new(&k))
    }

    fn open_all(o: &mut Opener, mut wire: &[u8]) -> Result<Vec<(RecordKind, Vec<u8>)>, RecordError> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let len = Opener::body_len([wire[0], wire[1]])?;
            let mut body = wire[2..2 + len].to_vec();
            let (kind, r) = o.open(&mut body)?;
            out.push((kind, body[r].to_vec()));
            wire = &wire[2 + len..];
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..5)) {
            let (mut s, mut o) = pair();
            let mut wire = Vec::new();
            for p in &payloads { s.seal(RecordKind::Data, p, &mut wire); }
            s.seal(RecordKind::End, &[], &mut wire);
            let got = open_all(&mut o, &wire).unwrap();
            prop_assert_eq!(got.len(), payloads.len() + 1);
            for (g, p) in got.iter().zip(&payloads) { prop_assert_eq!(&g.1, p); }
            prop_assert_eq!(got.last().unwrap().0, RecordKind::End);
        }

        #[test]
        fn any_bit_flip_is_caught(p in proptest::collection::vec(any::<u8>(), 1..200), bit in any::<prop::sample::Index>()) {
            let (mut s, mut o) = pair();
            let mut wire = Vec::new();
            s.seal(RecordKind::Data, &p, &mut wire);
            let i = 2 + bit.index((wire.len() - 2) * 8) / 8;
            wire[i] ^= 1 << (bit.index(8));
            prop_assert!(open_all(&mut o, &wire).is_err());
        }
    }

    #[test]
    fn replay_and_reorder_fail() {
        let (mut s, mut o) = pair();
        let mut a = Vec::new();
        s.seal(RecordKind::Data, b"one", &mut a);
        let mut b = Vec::new();
        s.seal(RecordKind::Data, b"two", &mut b);
        assert_eq!(open_all(&mut o, &b), Err(RecordError::BadRecord));
        let (_, mut o) = pair();
        open_all(&mut o, &a).unwrap();
        assert_eq!(open_all(&mut o, &a), Err(RecordError::BadRecord));
    }

    #[test]
    fn short_header_rejected() {
        assert_eq!(Opener::body_len([0, 5]), Err(RecordError::TooShort));
    }
}
