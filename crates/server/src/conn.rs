//! One accepted connection: the preface, then either a control handshake
//! that becomes a session, or a data channel that becomes a stream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use opennotr_proto::frame::{parse_preface, PROTOCOL_VERSION};
use opennotr_proto::handshake::ServerHandshake;
use opennotr_proto::message::{ClientMessage, RefuseCode, ServerMessage};
use opennotr_transport::{
    read_frame_exact, read_preface, timed, write_frame, Acceptor, Channel, FrameReader, FrameWriter, Priority,
    SecureStream, TransportError,
};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::session::{self, Session, OUTBOX};
use crate::sources::Unauthenticated;
use crate::state::AdmitError;
use crate::Shared;

pub(crate) const SOFTWARE: &str = concat!("opennotrd/", env!("CARGO_PKG_VERSION"));

/// Accepts clients and data channels until `stop`.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut acceptor = Acceptor::with_priority(listener, Priority::Control);
    while let Some((tcp, peer)) = acceptor.next(&stop).await {
        // Until its first message, a connection is a socket anyone can
        // open: each source may hold only a few (a source with a live
        // session, more), and all sources together four times
        // `maxHandshakes`; past either it is closed at once.
        let Some(unauthenticated) = shared.sources.unauthenticated(peer.ip()) else {
            debug!(%peer, "too many unauthenticated connections from this source; closing one");
            continue;
        };
        // The address of a live client has room of its own, within its
        // per-source cap: strangers filling the queue from many addresses
        // do not cut a client off from its data channels.
        let queued = match shared.queued.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if unauthenticated.trusted => None,
            Err(_) => {
                shared.sources.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "too many connections waiting for a handshake; closing one");
                continue;
            }
        };
        let span = info_span!("conn", %peer);
        shared.sessions.spawn(handle(shared.clone(), tcp, peer, queued, unauthenticated).instrument(span));
    }
}

async fn refuse(shared: &Shared, tcp: &mut TcpStream, peer: SocketAddr, code: RefuseCode, message: String) {
    // Garbage costs whoever sends it nothing and is unbounded per source
    // (penalties stop only hellos): it must not cost a log line each.
    // Metrics and the admin API's refusals still count it.
    if code == RefuseCode::ProtocolError {
        debug!(%code, %message, "refusing a peer");
    } else {
        info!(%code, %message, "refusing client");
    }
    shared.refused(peer, None, code, &message);
    let m = ServerMessage::Refused { code, message };
    let _ = tokio::time::timeout(Duration::from_secs(2), write_frame(tcp, &m.to_bytes())).await;
}

/// Counts a failed handshake against `peer`'s source, and logs once when
/// that starts a penalty.
pub(crate) fn failed(shared: &Shared, peer: SocketAddr) {
    if let Some((source, penalty)) = shared.sources.failed(peer.ip()) {
        warn!(
            %source,
            penalty_secs = penalty.as_secs(),
            "repeated failed handshakes from this source; refusing its handshakes for a while"
        );
    }
}

/// What a connection sends first.
pub(crate) enum First {
    /// Our version's preface and the first frame.
    Frame(bytes::Bytes),
    /// The preface of another version: only a refusal can be understood.
    Version(u8),
}

/// Whether the client has already closed its side (or reset) while its
/// hello waited: it gave up (its own handshake timeout, in a reconnect
/// storm) before any challenge was sent, so it learnt nothing and its
/// leaving is no guess. Only what has arrived counts: data, or nothing
/// yet, means it is still there. (A client that half-closes to read the
/// challenge anyway gets none.)
fn left_before_challenge(tcp: &TcpStream) -> bool {
    opennotr_transport::peer_closed(tcp)
}

/// The refusal a penalized source's hello gets, before any cryptography
/// (and without a log line each: it is logged when the penalty starts);
/// `None` when the source is not penalized.
pub(crate) fn penalty_refusal(shared: &Shared, peer: SocketAddr) -> Option<ServerMessage> {
    let left = shared.sources.penalized(peer.ip())?;
    shared.handshake_result("penalized");
    let message = format!(
        "too many failed handshakes from this address; retry in {} s (check the client's key and name)",
        left.as_secs() + 1
    );
    debug!(retry_secs = left.as_secs() + 1, "refusing a handshake from a penalized source");
    Some(ServerMessage::Refused { code: RefuseCode::TooManyFailures, message })
}

/// One of the `limits.maxHandshakes` slots for a hello's cryptography,
/// within `server.handshakeTimeout`; the connection leaves the shared
/// pre-authentication queue (`queued`) for it either way.
pub(crate) async fn handshake_slot(
    shared: &Shared,
    queued: Option<OwnedSemaphorePermit>,
) -> Option<OwnedSemaphorePermit> {
    let limit = shared.cfg.server.handshake_timeout;
    let slot = tokio::time::timeout(limit, shared.handshake_slots.clone().acquire_owned()).await;
    drop(queued);
    let Ok(Ok(permit)) = slot else {
        shared.handshake_result("busy");
        debug!("no handshake slot in time; dropping the connection");
        return None;
    };
    Some(permit)
}

/// The preface and the first message, under `server.helloTimeout`.
/// A first read that failed: a stranger's bytes count as its guess, a
/// silence or a close is only logged. Either way the connection just ends.
pub(crate) fn unreadable(shared: &Shared, peer: SocketAddr, e: TransportError) {
    if matches!(e, TransportError::Frame(_)) {
        shared.handshake_result("protocol_error");
        failed(shared, peer);
        return debug!(error = %e, "not an opennotr client");
    }
    debug!(error = %e, "no hello")
}

/// The first message, as every transport judges it: a message of our
/// version to act on, or the refusal to send (counted already).
pub(crate) fn opening(shared: &Shared, peer: SocketAddr, first: First) -> Result<ClientMessage, (RefuseCode, String)> {
    let frame = match first {
        First::Frame(f) => f,
        First::Version(v) => {
            shared.handshake_result("version_mismatch");
            return Err((
                RefuseCode::VersionMismatch,
                format!(
                    "protocol version mismatch: this server speaks version {PROTOCOL_VERSION}, the client version \
                     {v}; run the same opennotr release on both sides"
                ),
            ));
        }
    };
    match ClientMessage::from_bytes(&frame) {
        Ok(ClientMessage::Hello { version, .. }) if version != PROTOCOL_VERSION => {
            shared.handshake_result("version_mismatch");
            Err((
                RefuseCode::VersionMismatch,
                format!("protocol version mismatch: server {PROTOCOL_VERSION}, client {version}"),
            ))
        }
        Ok(m) => Ok(m),
        Err(e) => Err(unexpected(shared, peer, format!("malformed hello: {e}"))),
    }
}

/// A first message this transport does not take: a protocol error of its
/// source, refused with `message`.
pub(crate) fn unexpected(shared: &Shared, peer: SocketAddr, message: String) -> (RefuseCode, String) {
    shared.handshake_result("protocol_error");
    failed(shared, peer);
    (RefuseCode::ProtocolError, message)
}

async fn first(tcp: &mut TcpStream, limit: Duration) -> Result<First, TransportError> {
    timed(limit, "waiting for the hello", async {
        let preface = read_preface(tcp).await?;
        match parse_preface(&preface)? {
            PROTOCOL_VERSION => Ok(First::Frame(read_frame_exact(tcp).await?)),
            other => Ok(First::Version(other)),
        }
    })
    .await
}

async fn handle(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    queued: Option<OwnedSemaphorePermit>,
    unauthenticated: Unauthenticated,
) {
    let first = match first(&mut tcp, shared.cfg.server.hello_timeout).await {
        Ok(f) => f,
        Err(e) => return unreadable(&shared, peer, e),
    };
    let message = match opening(&shared, peer, first) {
        Ok(m) => m,
        Err((code, message)) => return refuse(&shared, &mut tcp, peer, code, message).await,
    };
    match message {
        ClientMessage::Hello { spake, plaintext, software, name, .. } => {
            debug!(%software, plaintext, name = name.as_deref().unwrap_or(""), "hello");
            if let Some(m) = penalty_refusal(&shared, peer) {
                let _ = tokio::time::timeout(Duration::from_secs(2), write_frame(&mut tcp, &m.to_bytes())).await;
                return;
            }
            let Some(permit) = handshake_slot(&shared, queued).await else { return };
            let hello = Hello { spake, plaintext, name };
            control(shared, tcp, peer, hello, permit, unauthenticated).await
        }
        // A data channel is checked at once (one MAC): it never waits
        // behind the handshakes of new clients.
        ClientMessage::DataHello { session, stream, nonce, mac } => {
            drop((queued, unauthenticated));
            data(&shared, tcp, peer, &session, stream, &nonce, &mac)
        }
        ClientMessage::SpareHello { session, channel, nonce, mac } => {
            drop((queued, unauthenticated));
            spare(&shared, tcp, peer, &session, channel, &nonce, &mac)
        }
        _ => {
            let message = "expected hello, data_hello or spare_hello as the first message".to_string();
            let (code, message) = unexpected(&shared, peer, message);
            refuse(&shared, &mut tcp, peer, code, message).await
        }
    }
}

/// What a client's hello asks for.
pub(crate) struct Hello {
    pub(crate) spake: Vec<u8>,
    pub(crate) plaintext: bool,
    pub(crate) name: Option<String>,
}

/// The live session a data or spare hello names, if its MAC (checked by
/// `verify`) proves the sender holds that session's keys; a bad MAC is a
/// failed guess of its source.
fn hello_session(
    shared: &Shared,
    peer: SocketAddr,
    what: &str,
    session: &[u8],
    nonce: &[u8],
    verify: impl FnOnce(&Session) -> bool,
) -> Option<Arc<Session>> {
    let Ok(id) = <[u8; 16]>::try_from(session) else {
        debug!("{what} with a malformed session id");
        return None;
    };
    if nonce.len() != 16 {
        debug!("{what} with a malformed nonce");
        return None;
    }
    let Some(s) = shared.state().sessions.get(&id).cloned() else {
        debug!("{what} for an unknown session");
        return None;
    };
    if !verify(&s) {
        failed(shared, peer);
        debug!("{what} with a bad MAC; dropped");
        return None;
    }
    Some(s)
}

/// A data channel claims the stream a visitor is waiting for.
fn data(shared: &Shared, tcp: TcpStream, peer: SocketAddr, session: &[u8], stream: u64, nonce: &[u8], mac: &[u8]) {
    let verify = |s: &Session| s.keys.verify_data_hello(session, stream, nonce, mac);
    let Some(s) = hello_session(shared, peer, "data hello", session, nonce, verify) else { return };
    // Claiming removes the stream, so a replayed hello finds nothing.
    let Some(waiter) = s.claim(stream) else {
        return debug!(stream, "data hello for a stream nobody waits for (expired or replayed)");
    };
    let _ = waiter.send(Ok(s.channel(tcp, |k| k.data_channel_keys(stream, nonce))));
}

/// A spare channel joins its session's pool, to carry a stream later.
fn spare(shared: &Shared, tcp: TcpStream, peer: SocketAddr, session: &[u8], channel: u64, nonce: &[u8], mac: &[u8]) {
    let verify = |s: &Session| s.keys.verify_spare_hello(session, channel, nonce, mac);
    let Some(s) = hello_session(shared, peer, "spare hello", session, nonce, verify) else { return };
    // Idle until a visitor comes, maybe for hours: probes keep NAT
    // mappings on the way and tell a vanished client apart.
    opennotr_transport::keep_alive(&tcp, opennotr_transport::SPARE_KEEPALIVE);
    // The MAC was checked on a nonce of 16 bytes (`hello_session`).
    let Ok(nonce) = <[u8; 16]>::try_from(nonce) else { return };
    if !s.spares.add(crate::session::Spare { id: channel, nonce, tcp }) {
        debug!(channel, "spare channel not kept (session ended, already full, or a repeated id)");
    }
}

/// The connection a client's hello came on, as the handshake sees it.
pub(crate) trait HelloConn: Send {
    /// What the handshake's frames travel on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send;
    fn io(&mut self) -> &mut Self::Io;
    /// The client has gone (it gave up while its hello waited for a slot):
    /// no cryptography, and no guess counted, for a client that left.
    fn gone(&self) -> bool;
    /// Tells the client why it is refused, so that it gets the message.
    fn refuse(
        &mut self,
        shared: &Shared,
        peer: SocketAddr,
        code: RefuseCode,
        message: String,
    ) -> impl std::future::Future<Output = ()> + Send;
}

impl HelloConn for TcpStream {
    type Io = TcpStream;
    fn io(&mut self) -> &mut TcpStream {
        self
    }
    fn gone(&self) -> bool {
        left_before_challenge(self)
    }
    async fn refuse(&mut self, shared: &Shared, peer: SocketAddr, code: RefuseCode, message: String) {
        refuse(shared, self, peer, code, message).await
    }
}

/// What key confirmation established.
pub(crate) struct Confirmed {
    pub(crate) keys: opennotr_proto::handshake::SessionKeys,
    pub(crate) name: Option<String>,
    /// The shared key it authenticated with (`None` under a name).
    pub(crate) shared_key: Option<opennotr_config::Secret>,
}

/// The server's side of the handshake after a hello, on either transport:
/// challenge, key confirmation, and every refusal and failed guess on the
/// way. `binding` ties the transcript to the secure channel underneath
/// (QUIC's TLS exporter); `None` over TCP. `None` back: the client was
/// refused or left, and that is logged and counted.
pub(crate) async fn authenticate<C: HelloConn>(
    shared: &Shared,
    conn: &mut C,
    peer: SocketAddr,
    hello: Hello,
    binding: Option<&[u8]>,
) -> Option<Confirmed> {
    let Hello { spake, plaintext, name } = hello;
    let cfg = &shared.cfg.server;
    let limit = cfg.handshake_timeout;
    let result = |r: &'static str| shared.handshake_result(r);
    if shared.draining.is_cancelled() {
        result("shutting_down");
        conn.refuse(shared, peer, RefuseCode::ShuttingDown, "the server is shutting down".into()).await;
        return None;
    }
    if plaintext && !cfg.allow_plaintext {
        result("plaintext_not_allowed");
        let msg = "the client asks for an unencrypted tunnel and this server does not allow it \
                   (set server.allowPlaintext: true on the server, or plaintext: false on the client)";
        conn.refuse(shared, peer, RefuseCode::PlaintextNotAllowed, msg.into()).await;
        return None;
    }
    // Waiting for a slot may have outlasted the client's patience: no
    // cryptography for a client that is gone.
    if conn.gone() {
        result("closed");
        debug!("client left before its challenge");
        return None;
    }
    // A node's name is `node:` and up to 63 characters (links.rs).
    let name = name.filter(|n| !n.is_empty() && n.len() <= 63 + crate::links::NODE_NAME_PREFIX.len());
    let node = crate::links::node_of_name(name.as_deref()).is_some();
    if node && plaintext {
        result("protocol_error");
        conn.refuse(shared, peer, RefuseCode::ProtocolError, "a node link is always encrypted".into()).await;
        return None;
    }
    let creds = shared.creds();
    if name.is_none() && creds.shared_key.is_none() {
        result("bad_key");
        let msg = "this server has no shared key: set `name` and `key` from the server's clients list";
        drop(creds);
        conn.refuse(shared, peer, RefuseCode::BadKey, msg.into()).await;
        return None;
    }
    // An unknown name runs the exchange with a random key, so it fails at
    // key confirmation exactly like a wrong key: names cannot be probed.
    let key = match node {
        // A node authenticates with the cluster's key; on a server that
        // is no node, like an unknown name.
        true => shared.cfg.cluster.as_ref().map(|c| c.key.expose().as_bytes().to_vec()),
        false => creds.key_for(name.as_deref()).map(|k| k.expose().as_bytes().to_vec()),
    };
    // What a shared-key session is checked against once it is in the
    // table: a reload in between is missed by the reload's sweep.
    let shared_key = if name.is_none() { creds.shared_key.clone() } else { None };
    drop(creds);
    let key = key.unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
    let responded = ServerHandshake::respond_bound(&key, name.as_deref(), &spake, plaintext, binding);
    drop(key);
    let (hs, spake_b, mac) = match responded {
        Ok(x) => x,
        Err(e) => {
            result("protocol_error");
            failed(shared, peer);
            conn.refuse(shared, peer, RefuseCode::ProtocolError, e.to_string()).await;
            return None;
        }
    };
    if conn.gone() {
        result("closed");
        debug!("client left before its challenge");
        return None;
    }
    let challenge =
        ServerMessage::Challenge { version: PROTOCOL_VERSION, spake: spake_b, mac, software: SOFTWARE.into() };
    if let Err(e) = timed(limit, "sending challenge", write_frame(conn.io(), &challenge.to_bytes())).await {
        result("closed");
        failed(shared, peer);
        debug!(error = %e, "handshake failed");
        return None;
    }
    // From here on, the client can tell from our MAC whether its key was
    // right (or, behind a relay, that the binding differs): whatever it
    // does but confirm is one guess spent.
    let confirm = match timed(limit, "waiting for key confirmation", read_frame_exact(conn.io())).await {
        Ok(f) => ClientMessage::from_bytes(&f),
        Err(e @ TransportError::Timeout(_)) => {
            result("timeout");
            failed(shared, peer);
            debug!(error = %e, "handshake failed");
            return None;
        }
        Err(_) => {
            result("bad_key");
            failed(shared, peer);
            let msg = "client closed during the handshake (its key probably differs from the server's)";
            shared.refused(peer, name.as_deref(), RefuseCode::BadKey, msg);
            info!("{msg}");
            return None;
        }
    };
    let keys = match confirm {
        Ok(ClientMessage::Confirm { mac }) => match hs.verify(&mac) {
            Ok(k) => k,
            Err(_) => {
                result("bad_key");
                failed(shared, peer);
                let msg = match &name {
                    None => "authentication failed: the client's key does not match the server's authKey",
                    Some(_) => "authentication failed: unknown client name or wrong key",
                };
                conn.refuse(shared, peer, RefuseCode::BadKey, msg.into()).await;
                return None;
            }
        },
        _ => {
            result("protocol_error");
            failed(shared, peer);
            conn.refuse(shared, peer, RefuseCode::ProtocolError, "expected confirm".into()).await;
            return None;
        }
    };
    result("ok");
    shared.sources.succeeded(peer.ip());
    Some(Confirmed { keys, name, shared_key })
}

async fn control(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    hello: Hello,
    permit: OwnedSemaphorePermit,
    unauthenticated: Unauthenticated,
) {
    let plaintext = hello.plaintext;
    let Some(Confirmed { keys, name, shared_key }) = authenticate(&shared, &mut tcp, peer, hello, None).await else {
        return;
    };
    drop(unauthenticated);
    if let Some(node) = crate::links::node_of_name(name.as_deref()).map(str::to_string) {
        drop(permit);
        crate::links::link_socket(&tcp);
        let chan = SecureStream::new(tcp, &keys.control.s2c, &keys.control.c2s, BytesMut::new());
        return crate::links::serve(shared, chan, node, peer).await;
    }
    // Held while this session lives: its source's data channels may come
    // in bursts past the per-source cap of strangers.
    let live = shared.sources.session(peer.ip());
    let chan = if plaintext {
        Channel::Plain(tcp)
    } else {
        Channel::Sealed(Box::new(SecureStream::new(tcp, &keys.control.s2c, &keys.control.c2s, BytesMut::new())))
    };
    let auth = Authenticated { peer, name, plaintext, keys, shared_key, quic: None };
    if let Some(session) = serve(shared.clone(), chan, auth, permit).await {
        shared.sessions.spawn(async move {
            let _live = live;
            session.await
        });
    }
}

/// A client that passed key confirmation, on either transport.
pub(crate) struct Authenticated {
    pub(crate) peer: SocketAddr,
    pub(crate) name: Option<String>,
    pub(crate) plaintext: bool,
    pub(crate) keys: opennotr_proto::handshake::SessionKeys,
    /// The shared key it authenticated with (`None` under a name).
    pub(crate) shared_key: Option<opennotr_config::Secret>,
    /// Its QUIC connection, when it came over QUIC.
    pub(crate) quic: Option<crate::quic::QuicSession>,
}

/// Registration on the control channel `chan`; then the session, which the
/// caller spawns as a task of its own: the task that lives as long as the
/// session then holds the session's state, not the larger one of the
/// handshake and registration (about 5 kB a session).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    chan: Channel,
    auth: Authenticated,
    permit: OwnedSemaphorePermit,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let Authenticated { peer, name, plaintext, keys, shared_key, quic } = auth;
    if crate::links::node_of_name(name.as_deref()).is_some() {
        // A node's link comes over TCP only (`control`); a node's name is
        // never a client's.
        debug!("a node's handshake where a client's session was expected; closed");
        return None;
    }
    let limit = shared.cfg.server.handshake_timeout;
    let (rd, wr) = tokio::io::split(chan);
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    let register =
        match timed(limit, "waiting for register", reader.next()).await.map(|f| ClientMessage::from_bytes(&f)) {
            Ok(Ok(ClientMessage::Register { client_id, domain, forwards, vip_ports, mux, bandwidth })) => {
                (client_id, domain, forwards, vip_ports, mux, bandwidth)
            }
            // `opennotr check`: answered, then closed; nothing is taken.
            Ok(Ok(ClientMessage::Check { domain, forwards })) => {
                let m = crate::check::answer(&shared, name.as_deref(), domain, &forwards).await;
                let _ = timed(limit, "sending checked", writer.send(&m.to_bytes())).await;
                let _ = timed(limit, "closing", writer.shutdown()).await;
                return None;
            }
            Ok(_) => {
                let m = ServerMessage::Refused { code: RefuseCode::ProtocolError, message: "expected register".into() };
                let _ = writer.send(&m.to_bytes()).await;
                return None;
            }
            Err(e) => {
                debug!(error = %e, "no register");
                return None;
            }
        };
    let (client_id, domain, forwards, vip_ports, mux, wished_bandwidth) = register;
    // QUIC streams are cheap: each gateway connection takes one of its own.
    let mux = mux && quic.is_none();
    let exports = session::exports(&forwards, &vip_ports);
    // Every node's gateway serves these forwards (node links carry their
    // visitors): in a cluster, DNS answers the domain with every node.
    let anywhere = !forwards.is_empty()
        && forwards.iter().all(|f| matches!(f.protocol.as_str(), "http" | "https" | "tls" | "h2c"));
    if let Err(message) = crate::state::check_client_id(&client_id, name.is_some()) {
        let m = ServerMessage::Refused { code: RefuseCode::ProtocolError, message };
        let _ = writer.send(&m.to_bytes()).await;
        return None;
    }
    let mut domain = domain.filter(|d| !d.is_empty());
    // The credential as it is now; if it changes before the session is in
    // the table, the change's sweep misses it, so that is checked below.
    let cred = match &name {
        None => None,
        Some(n) => match shared.creds().get(n).cloned() {
            Some(c) => Some(c),
            None => {
                let m = ServerMessage::Refused { code: RefuseCode::BadKey, message: "credential revoked".into() };
                let _ = writer.send(&m.to_bytes()).await;
                return None;
            }
        },
    };
    if let Some(message) = domain_refusal(&shared, cred.as_ref(), domain.as_deref()) {
        info!(%message, "refusing client");
        shared.refused(peer, name.as_deref(), RefuseCode::DomainNotAllowed, &message);
        let m = ServerMessage::Refused { code: RefuseCode::DomainNotAllowed, message };
        let _ = timed(limit, "sending refusal", writer.send(&m.to_bytes())).await;
        return None;
    }
    // Without a request, a named client gets its first exact name.
    if let (Some(c), None) = (&cred, &domain) {
        domain = c.domains.iter().find(|d| !d.starts_with("*.")).cloned();
    }
    // Client ids are the client's choice: under a name, they only ever
    // match (and replace) sessions of the same name.
    let client_id = match &name {
        Some(n) => format!("{n}/{client_id}"),
        None => client_id,
    };

    // Admission, replacing the client's own stale session if it has one.
    // Deciding and inserting happen under one lock, so two clients can never
    // both get the same domain or VIP.
    let session_id: [u8; 16] = rand::random();
    let (out, outbox) = mpsc::channel(OUTBOX);
    let mut keys = Some(keys);
    // What the client held on another node of the cluster, if it comes
    // from one: its VIP and domain, to take back here.
    let moved = shared.cluster.as_ref().and_then(|c| c.moved(&crate::cluster::client_key(&client_id)));
    let (session, leased_ports) = loop {
        let admitted = {
            let mut st = shared.state();
            let shares = |d: &str| crate::group::shares_domain(&shared, d, &forwards);
            st.admit_sharing(&client_id, domain.as_deref(), &shares, moved.clone()).map(|a| {
                let session = Arc::new(Session::new(
                    &shared,
                    session_id,
                    name.clone(),
                    client_id.clone(),
                    a.domain,
                    domain.is_some(),
                    a.vip,
                    peer,
                    plaintext,
                    mux,
                    keys.take().unwrap_or_else(|| unreachable!("admitted once")),
                    out.clone(),
                    exports.clone(),
                ));
                st.insert(session.clone());
                (session, a.ports)
            })
        };
        match admitted {
            Ok(x) => break x,
            Err(AdmitError::Replace(old)) => {
                info!(client = %client_id, "client reconnected; replacing its previous session");
                old.kill.cancel();
                if tokio::time::timeout(Duration::from_secs(15), old.finished.cancelled()).await.is_err() {
                    let m = ServerMessage::Refused {
                        code: RefuseCode::DomainTaken,
                        message: "the previous session of this client is still closing; retry".into(),
                    };
                    let _ = writer.send(&m.to_bytes()).await;
                    return None;
                }
            }
            Err(AdmitError::Refused(code, message)) => {
                info!(%code, %message, "refusing client");
                shared.refused(peer, name.as_deref(), code, &message);
                let m = ServerMessage::Refused { code, message };
                let _ = timed(limit, "sending refusal", writer.send(&m.to_bytes())).await;
                return None;
            }
        }
    };
    drop(out);
    drop(permit);
    // Before any forward starts, so every stream of the session takes it.
    // A QUIC session has no data channels: no spares either.
    if let Some(q) = quic {
        let _ = session.quic.set(q);
        session.spares.close();
    }
    // On a node of a cluster, what must be unique in it is claimed in etcd
    // before the session is served: two nodes never serve one domain.
    if let Err((code, message)) = crate::holdings::claim(&shared, &session, anywhere).await {
        info!(%code, %message, "refusing client");
        shared.refused(peer, name.as_deref(), code, &message);
        crate::holdings::release(&shared, &session).await;
        let m = ServerMessage::Refused { code, message };
        let _ = timed(limit, "sending refusal", writer.send(&m.to_bytes())).await;
        return None;
    }
    let server_bandwidth = crate::bandwidth::client_limit(cred.as_ref(), &shared.limits());
    let bandwidth = crate::bandwidth::effective(server_bandwidth, wished_bandwidth);
    if let Some(t) = crate::bandwidth::throttle(bandwidth) {
        let _ = session.bandwidth.set(t);
    }
    let creds = shared.creds();
    let changed = match &cred {
        Some(c) => creds.get(&c.name) != Some(c),
        None => creds.shared_key != shared_key || !creds.shared_allows(&session.domain, session.domain_requested),
    };
    drop(creds);
    if changed {
        info!(client = name.as_deref().unwrap_or(""), "credential changed while registering; closing the session");
        session.kill.cancel();
    }
    let who = name.clone().unwrap_or_else(|| short(&client_id).to_string());
    let span = info_span!("session", client = %who, domain = %session.domain, vip = %session.vip);
    async move {
        let transport = if session.quic.get().is_some() { "quic" } else { "tcp" };
        info!(%peer, plaintext, transport, "client connected");
        let results = session::start_forwards(&shared, &session, cred.as_ref(), &forwards, &leased_ports).await;
        crate::vlan::export(&shared, &session, true).await;
        shared.publish_names();
        let registered = ServerMessage::Registered {
            session: session_id.to_vec(),
            vip: session.vip,
            domain: session.domain.clone(),
            forwards: results,
            spares: if session.quic.get().is_some() { 0 } else { session.spares.limit.min(u16::MAX as usize) as u16 },
            bandwidth,
        };
        if let Err(e) = timed(limit, "sending registered", writer.send(&registered.to_bytes())).await {
            debug!(error = %e, "client gone before registration finished");
            crate::holdings::release(&shared, &session).await;
            return None;
        }
        let ends = session.clone();
        Some(async move {
            session::run(shared.clone(), session, reader, writer, outbox).await;
            crate::holdings::release(&shared, &ends).await;
        })
    }
    .instrument(span.clone())
    .await
    .map(|run| run.instrument(span))
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Why a client may not claim `domain` (as sent): the credential's
/// domains, or for the shared key `server.authKeyDomains`, do not allow
/// it. A malformed name is left to admission, which says what is wrong.
pub(crate) fn domain_refusal(
    shared: &Shared,
    cred: Option<&opennotr_config::Credential>,
    domain: Option<&str>,
) -> Option<String> {
    match (cred, domain.map(crate::state::normalize_domain)) {
        (Some(c), Some(Ok(d))) if !c.allows_domain(&d) => {
            Some(format!("client {} may not claim {d} (allowed: {})", c.name, c.domains.join(", ")))
        }
        (None, Some(Ok(d))) => {
            let creds = shared.creds();
            let allowed = creds.shared_domains.as_deref().unwrap_or_default();
            (!creds.shared_allows(&d, true)).then(|| match allowed {
                [] => format!("clients of the shared key may not choose their domain (asked for {d})"),
                _ => format!("clients of the shared key may not claim {d} (allowed: {})", allowed.join(", ")),
            })
        }
        _ => None,
    }
}
