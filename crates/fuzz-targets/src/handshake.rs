//! The SPAKE2 handshake with arbitrary peer messages.

use opennotr_proto::handshake::{ClientHandshake, HandshakeError, ServerHandshake};

use crate::split_ctl;

const KEY: &[u8] = b"fuzz key";

/// Input: a flags byte (bit 0: plaintext, bit 1: a credential name),
/// a length byte and the name, a length byte and the peer's SPAKE2
/// message, then a MAC. `ServerHandshake::respond` takes any SPAKE2 bytes
/// without panicking, and then no MAC that the input can carry confirms
/// (nor a challenge made of them at a client); a genuine client under
/// the same name and flag completes.
pub fn handshake(data: &[u8]) {
    let (flags, rest) = split_ctl(data);
    let plaintext = flags & 1 != 0;
    let (name, rest) = take(rest);
    let name = (flags & 2 != 0).then(|| String::from_utf8_lossy(name).into_owned());
    let (spake, mac) = take(rest);

    if let Ok((server, msg, server_mac)) = ServerHandshake::respond(KEY, name.as_deref(), spake, plaintext) {
        assert_eq!((msg.len(), server_mac.len()), (33, 32));
        assert_eq!(server.verify(mac).unwrap_err(), HandshakeError::BadKey);
    }
    let (client, _) = ClientHandshake::start(KEY, name.as_deref(), plaintext);
    assert!(client.finish(spake, mac).is_err());

    // Only when the flags ask for it: a genuine exchange costs four
    // scalar multiplications.
    if flags & 4 != 0 {
        let (client, hello) = ClientHandshake::start(KEY, name.as_deref(), plaintext);
        let (server, msg, server_mac) =
            ServerHandshake::respond(KEY, name.as_deref(), &hello, plaintext).expect("genuine hello");
        let (keys, confirm) = client.finish(&msg, &server_mac).expect("genuine challenge");
        let mut forged = confirm.clone();
        if let Some(b) = forged.get_mut(usize::from(flags) % 32) {
            *b ^= flags | 1;
        }
        assert_ne!(keys.control.c2s, keys.control.s2c);
        assert!(server.verify(&forged).is_err(), "a changed confirmation MAC is refused");
    }
}

/// A length byte and that many bytes (fewer if the input ends), and the rest.
fn take(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return (&[], &[]) };
    rest.split_at(usize::from(n).min(rest.len()))
}
