//! Control messages (JSON in a frame), both directions, and the
//! data-channel hello's MAC check.

use std::sync::OnceLock;

use opennotr_proto::handshake::{ClientHandshake, ServerHandshake, SessionKeys};
use opennotr_proto::{ClientMessage, ServerMessage};

/// The keys of one genuine session, for the data hellos.
pub(crate) fn session_keys() -> &'static SessionKeys {
    static KEYS: OnceLock<SessionKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (c, hello) = ClientHandshake::start(b"fuzz key", None, false);
        let (s, spake, mac) = ServerHandshake::respond(b"fuzz key", None, &hello, false).expect("genuine hello");
        let (keys, confirm) = c.finish(&spake, &mac).expect("genuine challenge");
        s.verify(&confirm).expect("genuine confirm");
        keys
    })
}

/// `ClientMessage::from_bytes` and `ServerMessage::from_bytes`: whatever
/// parses serialises back to the same message; binary fields stay small;
/// a data hello's MAC verifies exactly when it is the session's MAC for
/// its fields.
pub fn message(data: &[u8]) {
    if let Ok(m) = ClientMessage::from_bytes(data) {
        assert_eq!(ClientMessage::from_bytes(&m.to_bytes()).as_ref(), Ok(&m), "round trip");
        match &m {
            ClientMessage::DataHello { session, stream, nonce, mac } => {
                assert!(session.len() <= 256 && nonce.len() <= 256 && mac.len() <= 256);
                let keys = session_keys();
                let genuine = keys.data_hello_mac(session, *stream, nonce);
                assert_eq!(keys.verify_data_hello(session, *stream, nonce, mac), *mac == genuine);
            }
            ClientMessage::Hello { spake, .. } => assert!(spake.len() <= 256),
            ClientMessage::Confirm { mac } => assert!(mac.len() <= 256),
            _ => {}
        }
    }
    // A node link's stream header (read only from an authenticated node,
    // but parsed as strictly).
    if let Ok(h) = opennotr_proto::NodeStream::from_bytes(data) {
        assert_eq!(opennotr_proto::NodeStream::from_bytes(&h.to_bytes()).as_ref(), Ok(&h), "round trip");
    }
    if let Ok(m) = ServerMessage::from_bytes(data) {
        assert_eq!(ServerMessage::from_bytes(&m.to_bytes()).as_ref(), Ok(&m), "round trip");
        if let ServerMessage::Challenge { spake, mac, .. } = &m {
            // A challenge nobody derived from our hello never confirms.
            let (c, _) = ClientHandshake::start(b"fuzz key", None, false);
            assert!(c.finish(spake, mac).is_err());
        }
    }
}
