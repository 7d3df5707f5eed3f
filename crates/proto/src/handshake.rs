//! Mutual authentication with the shared key, by SPAKE2 (a password-
//! authenticated key exchange) followed by key confirmation.
//!
//! Why a PAKE: the key is often a human-chosen string. With SPAKE2 the key
//! never crosses the wire, a passive eavesdropper learns nothing to test
//! guesses against offline, and an active attacker gets one guess per
//! connection. Both sides contribute fresh randomness, so a recorded
//! handshake replayed later derives different keys and fails confirmation.
//!
//! ```text
//! client                                   server
//!   hello{spake_A}                 ──▶
//!                                  ◀──    challenge{spake_B, mac_S}
//!   (verifies mac_S: server knows the key)
//!   confirm{mac_C}                 ──▶    (verifies mac_C)
//! ```
//! `mac_S` and `mac_C` are HMACs of the transcript under keys derived from the
//! SPAKE2 output; the same output yields the channel keys.

use ring::{hkdf, hmac};
use spake2::{Ed25519Group, Identity, Password, Spake2};

const ID_CLIENT: &[u8] = b"opennotr client";

/// The client's SPAKE2 identity: with a credential name, the name is part
/// of it, so a MITM cannot replay one client's exchange under another name.
fn client_identity(name: Option<&str>) -> Vec<u8> {
    let mut id = ID_CLIENT.to_vec();
    if let Some(n) = name {
        id.push(b'/');
        id.extend_from_slice(n.as_bytes());
    }
    id
}
const ID_SERVER: &[u8] = b"opennotr server";
const TRANSCRIPT_LABEL: &[u8] = b"opennotr/1 handshake";
const TLS_BINDING_LABEL: &[u8] = b"tls exporter";

/// Why a handshake failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's SPAKE2 message is malformed.
    #[error("malformed key-exchange message")]
    BadMessage,
    /// Key confirmation failed: the peers hold different keys.
    #[error("key confirmation failed: the keys differ")]
    BadKey,
}

/// A 32-byte symmetric key whose `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

/// Keys of one encrypted channel, one per direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelKeys {
    /// Client → server.
    pub c2s: Key,
    /// Server → client.
    pub s2c: Key,
}

/// Everything a session derives from the handshake.
#[derive(Debug, Clone)]
pub struct SessionKeys {
    /// Keys of the control channel.
    pub control: ChannelKeys,
    data_secret: Key,
}

/// The transcript, bound to the secure channel underneath when there is
/// one (QUIC: the TLS exporter's output, `crate::quic::EXPORTER_LABEL`).
fn transcript_bound(client_msg: &[u8], server_msg: &[u8], plaintext: bool, binding: Option<&[u8]>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(TRANSCRIPT_LABEL);
    for m in [client_msg, server_msg] {
        ctx.update(&(m.len() as u32).to_be_bytes());
        ctx.update(m);
    }
    ctx.update(&[plaintext as u8]);
    if let Some(b) = binding {
        ctx.update(TLS_BINDING_LABEL);
        ctx.update(&(b.len() as u32).to_be_bytes());
        ctx.update(b);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn expand(prk: &hkdf::Prk, info: &[&[u8]]) -> Key {
    let mut out = [0u8; 32];
    // 32 bytes is the output length of HKDF_SHA256's KeyType, so neither call can fail.
    if let Ok(okm) = prk.expand(info, hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out);
    }
    Key(out)
}

struct Derived {
    server_confirm: hmac::Key,
    client_confirm: hmac::Key,
    session: SessionKeys,
    transcript: [u8; 32],
}

fn derive(shared: &[u8], th: [u8; 32]) -> Derived {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &th).extract(shared);
    let sc = expand(&prk, &[b"server confirm"]);
    let cc = expand(&prk, &[b"client confirm"]);
    Derived {
        server_confirm: hmac::Key::new(hmac::HMAC_SHA256, &sc.0),
        client_confirm: hmac::Key::new(hmac::HMAC_SHA256, &cc.0),
        session: SessionKeys {
            control: ChannelKeys { c2s: expand(&prk, &[b"control c2s"]), s2c: expand(&prk, &[b"control s2c"]) },
            data_secret: expand(&prk, &[b"data channels"]),
        },
        transcript: th,
    }
}

/// The client's side of the handshake.
pub struct ClientHandshake {
    spake: Spake2<Ed25519Group>,
    msg: Vec<u8>,
    plaintext: bool,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake").field("plaintext", &self.plaintext).finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// Starts a handshake; returns the state and the SPAKE2 message for `hello`.
    /// `name` is the client's credential name (`None` for the shared key);
    /// it is bound into the exchange, so a key only works with its name.
    pub fn start(key: &[u8], name: Option<&str>, plaintext: bool) -> (Self, Vec<u8>) {
        let (spake, msg) = Spake2::<Ed25519Group>::start_a(
            &Password::new(key),
            &Identity::new(&client_identity(name)),
            &Identity::new(ID_SERVER),
        );
        (ClientHandshake { spake, msg: msg.clone(), plaintext }, msg)
    }

    /// Processes the server's `challenge`; on success returns the session
    /// keys and the MAC to send in `confirm`.
    pub fn finish(self, server_spake: &[u8], server_mac: &[u8]) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
        self.finish_bound(server_spake, server_mac, None)
    }

    /// [`finish`](Self::finish) for a handshake run inside a secure channel
    /// (QUIC's TLS): `binding` is what both ends export from it, so a man
    /// in the middle who terminates that channel with its own certificate
    /// holds a different binding on each side and fails confirmation.
    pub fn finish_bound(
        self,
        server_spake: &[u8],
        server_mac: &[u8],
        binding: Option<&[u8]>,
    ) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
        let shared = self.spake.finish(server_spake).map_err(|_| HandshakeError::BadMessage)?;
        let d = derive(&shared, transcript_bound(&self.msg, server_spake, self.plaintext, binding));
        hmac::verify(&d.server_confirm, &d.transcript, server_mac).map_err(|_| HandshakeError::BadKey)?;
        let mac = hmac::sign(&d.client_confirm, &d.transcript).as_ref().to_vec();
        Ok((d.session, mac))
    }
}

/// The server's side, after it answered `hello`, waiting for `confirm`.
pub struct ServerHandshake {
    derived: Derived,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake").finish_non_exhaustive()
    }
}

impl ServerHandshake {
    /// Answers a client's `hello`: returns the state, the SPAKE2 message and
    /// the server's confirmation MAC for `challenge`.
    pub fn respond(
        key: &[u8],
        name: Option<&str>,
        client_spake: &[u8],
        plaintext: bool,
    ) -> Result<(Self, Vec<u8>, Vec<u8>), HandshakeError> {
        Self::respond_bound(key, name, client_spake, plaintext, None)
    }

    /// [`respond`](Self::respond) inside a secure channel whose exported
    /// `binding` enters the transcript (see [`ClientHandshake::finish_bound`]).
    pub fn respond_bound(
        key: &[u8],
        name: Option<&str>,
        client_spake: &[u8],
        plaintext: bool,
        binding: Option<&[u8]>,
    ) -> Result<(Self, Vec<u8>, Vec<u8>), HandshakeError> {
        let (spake, msg) = Spake2::<Ed25519Group>::start_b(
            &Password::new(key),
            &Identity::new(&client_identity(name)),
            &Identity::new(ID_SERVER),
        );
        let shared = spake.finish(client_spake).map_err(|_| HandshakeError::BadMessage)?;
        let derived = derive(&shared, transcript_bound(client_spake, &msg, plaintext, binding));
        let mac = hmac::sign(&derived.server_confirm, &derived.transcript).as_ref().to_vec();
        Ok((ServerHandshake { derived }, msg, mac))
    }

    /// Checks the client's `confirm`.
    pub fn verify(self, client_mac: &[u8]) -> Result<SessionKeys, HandshakeError> {
        hmac::verify(&self.derived.client_confirm, &self.derived.transcript, client_mac)
            .map_err(|_| HandshakeError::BadKey)?;
        Ok(self.derived.session)
    }
}

impl SessionKeys {
    fn data_auth_key(&self) -> hmac::Key {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"opennotr/1 data").extract(&self.data_secret.0);
        hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, &[b"data hello"]).0)
    }

    fn data_hello_input(session: &[u8], stream: u64, nonce: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(session.len() + nonce.len() + 12);
        v.extend_from_slice(&(session.len() as u16).to_be_bytes());
        v.extend_from_slice(session);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(nonce);
        v
    }

    /// MAC a client puts in `data_hello` for `stream`.
    pub fn data_hello_mac(&self, session: &[u8], stream: u64, nonce: &[u8]) -> Vec<u8> {
        hmac::sign(&self.data_auth_key(), &Self::data_hello_input(session, stream, nonce)).as_ref().to_vec()
    }

    /// Checks a `data_hello` MAC in constant time.
    pub fn verify_data_hello(&self, session: &[u8], stream: u64, nonce: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.data_auth_key(), &Self::data_hello_input(session, stream, nonce), mac).is_ok()
    }

    fn spare_auth_key(&self) -> hmac::Key {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"opennotr/1 data").extract(&self.data_secret.0);
        hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, &[b"spare hello"]).0)
    }

    /// MAC a client puts in `spare_hello` for its spare channel `channel`.
    /// A key of its own: a spare hello is never a valid `data_hello`.
    pub fn spare_hello_mac(&self, session: &[u8], channel: u64, nonce: &[u8]) -> Vec<u8> {
        hmac::sign(&self.spare_auth_key(), &Self::data_hello_input(session, channel, nonce)).as_ref().to_vec()
    }

    /// Checks a `spare_hello` MAC in constant time.
    pub fn verify_spare_hello(&self, session: &[u8], channel: u64, nonce: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.spare_auth_key(), &Self::data_hello_input(session, channel, nonce), mac).is_ok()
    }

    /// Keys of spare channel `channel`: labelled apart from the streams'
    /// channels, and the nonce is fresh, so no two channels share keys.
    pub fn spare_channel_keys(&self, channel: u64, nonce: &[u8]) -> ChannelKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, nonce).extract(&self.data_secret.0);
        let id = channel.to_be_bytes();
        ChannelKeys { c2s: expand(&prk, &[b"spare c2s", &id]), s2c: expand(&prk, &[b"spare s2c", &id]) }
    }

    /// Keys of the data channel carrying `stream`. Each stream id is used
    /// once per session and the client's nonce is fresh, so no two channels
    /// share keys.
    pub fn data_channel_keys(&self, stream: u64, nonce: &[u8]) -> ChannelKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, nonce).extract(&self.data_secret.0);
        let id = stream.to_be_bytes();
        ChannelKeys { c2s: expand(&prk, &[b"data c2s", &id]), s2c: expand(&prk, &[b"data s2c", &id]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_works_only_under_its_name() {
        let attempt = |cn: Option<&str>, sn: Option<&str>| {
            let (c, hello) = ClientHandshake::start(b"k", cn, false);
            let (s, spake_b, mac_s) = ServerHandshake::respond(b"k", sn, &hello, false).unwrap();
            c.finish(&spake_b, &mac_s).and_then(|(_, mac)| s.verify(&mac).map(|_| ()))
        };
        assert!(attempt(Some("alice"), Some("alice")).is_ok());
        assert!(matches!(attempt(Some("alice"), Some("bob")), Err(HandshakeError::BadKey)));
        assert!(matches!(attempt(None, Some("alice")), Err(HandshakeError::BadKey)));
        assert!(matches!(attempt(Some("alice"), None), Err(HandshakeError::BadKey)));
    }

    fn run(client_key: &[u8], server_key: &[u8]) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let (c, hello) = ClientHandshake::start(client_key, None, false);
        let (s, spake_b, mac_s) = ServerHandshake::respond(server_key, None, &hello, false)?;
        let (ck, mac_c) = c.finish(&spake_b, &mac_s)?;
        let sk = s.verify(&mac_c)?;
        Ok((ck, sk))
    }

    #[test]
    fn same_key_agrees() {
        let (c, s) = run(b"secret", b"secret").unwrap();
        assert_eq!(c.control, s.control);
        assert_ne!(c.control.c2s, c.control.s2c);
        let mac = c.data_hello_mac(b"sess", 7, b"nonce");
        assert!(s.verify_data_hello(b"sess", 7, b"nonce", &mac));
        assert!(!s.verify_data_hello(b"sess", 8, b"nonce", &mac));
        assert_eq!(c.data_channel_keys(7, b"n"), s.data_channel_keys(7, b"n"));
        assert_ne!(c.data_channel_keys(7, b"n"), s.data_channel_keys(8, b"n"));
        let spare = c.spare_hello_mac(b"sess", 7, b"nonce");
        assert!(s.verify_spare_hello(b"sess", 7, b"nonce", &spare));
        assert!(!s.verify_data_hello(b"sess", 7, b"nonce", &spare), "a spare hello is no data hello");
        assert!(!s.verify_spare_hello(b"sess", 7, b"nonce", &mac), "and the other way round");
        assert_eq!(c.spare_channel_keys(7, b"n"), s.spare_channel_keys(7, b"n"));
        assert_ne!(c.spare_channel_keys(7, b"n"), s.data_channel_keys(7, b"n"));
    }

    #[test]
    fn different_key_is_detected_by_the_client() {
        assert_eq!(run(b"secret", b"other").unwrap_err(), HandshakeError::BadKey);
    }

    #[test]
    fn fresh_keys_every_time() {
        let (a, _) = run(b"k", b"k").unwrap();
        let (b, _) = run(b"k", b"k").unwrap();
        assert_ne!(a.control, b.control);
    }

    #[test]
    fn replayed_client_messages_fail() {
        // An attacker replays a recorded hello and confirm to a server.
        let (c, hello) = ClientHandshake::start(b"k", None, false);
        let (_s, spake_b, mac_s) = ServerHandshake::respond(b"k", None, &hello, false).unwrap();
        let (_, recorded_confirm) = c.finish(&spake_b, &mac_s).unwrap();
        let (s2, _, _) = ServerHandshake::respond(b"k", None, &hello, false).unwrap();
        assert_eq!(s2.verify(&recorded_confirm).unwrap_err(), HandshakeError::BadKey);
    }

    #[test]
    fn plaintext_flag_is_bound_to_the_transcript() {
        // A man in the middle flipping `plaintext` breaks confirmation.
        let (c, hello) = ClientHandshake::start(b"k", None, false);
        let (_s, spake_b, mac_s) = ServerHandshake::respond(b"k", None, &hello, true).unwrap();
        assert_eq!(c.finish(&spake_b, &mac_s).unwrap_err(), HandshakeError::BadKey);
    }

    #[test]
    fn the_binding_is_part_of_the_transcript() {
        // A relay that terminates TLS on both sides holds two bindings.
        let attempt = |client: Option<&[u8]>, server: Option<&[u8]>| {
            let (c, hello) = ClientHandshake::start(b"k", None, false);
            let (s, spake_b, mac_s) = ServerHandshake::respond_bound(b"k", None, &hello, false, server).unwrap();
            c.finish_bound(&spake_b, &mac_s, client).and_then(|(_, mac)| s.verify(&mac).map(|_| ()))
        };
        assert!(attempt(Some(&[1; 32]), Some(&[1; 32])).is_ok());
        assert_eq!(attempt(Some(&[1; 32]), Some(&[2; 32])), Err(HandshakeError::BadKey));
        assert_eq!(attempt(None, Some(&[1; 32])), Err(HandshakeError::BadKey));
        assert_eq!(attempt(Some(&[1; 32]), None), Err(HandshakeError::BadKey));
        assert!(attempt(None, None).is_ok());
    }

    #[test]
    fn garbage_spake_message() {
        assert!(ServerHandshake::respond(b"k", None, b"junk", false).is_err());
        let (c, _) = ClientHandshake::start(b"k", None, false);
        assert_eq!(c.finish(&[0u8; 3], &[0u8; 32]).unwrap_err(), HandshakeError::BadMessage);
    }

    #[test]
    fn debug_hides_keys() {
        let (c, _) = run(b"k", b"k").unwrap();
        let s = format!("{c:?}");
        assert!(s.contains("***"));
        assert!(!s.contains(&format!("{:?}", c.control.c2s.0)));
    }
}
