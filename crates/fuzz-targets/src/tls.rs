//! The TLS passthrough's peek at a ClientHello for its SNI.

use opennotr_gateway::fuzzing::{HelloPeek, Peek};

use crate::{pieces, split_ctl};

/// `HelloPeek` over the bytes in one read and in the pieces the control
/// byte picks: the same verdict either way; an SNI is a lowercase
/// printable ASCII name, so the route lookup sees what rustls checked.
pub fn tls_hello(data: &[u8]) {
    let (ctl, data) = split_ctl(data);
    let whole = HelloPeek::default().feed(data);
    let mut peek = HelloPeek::default();
    let mut split = Peek::More;
    for piece in pieces(data, ctl) {
        split = peek.feed(piece);
        if split != Peek::More {
            break;
        }
    }
    assert_eq!(split, whole, "the verdict depends on how the hello was split");
    if let Peek::Hello(Some(name)) = &whole {
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
        assert!(name.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()), "{name:?}");
    }
}
