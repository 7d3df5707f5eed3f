//! The QUIC endpoint beside the TCP control listener (`server.quic`).
//!
//! A client opens one connection and, on its first bidirectional stream,
//! runs the same preface, hello, challenge, confirm and register as over
//! TCP, under the same pre-authentication limits (per-source caps and
//! penalties, `helloTimeout`, handshake slots, 4 KiB frames); the SPAKE2
//! transcript is bound to the TLS connection, so a relay that terminates
//! TLS with its own certificate fails key confirmation. Once registered,
//! the server opens one stream per visitor stream ([`QuicSession::open`]);
//! UDP flows go as QUIC datagrams (`opennotr_transport::quic::QuicFlow`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opennotr_config::{QuicSection, ServerConfig};
use opennotr_plugin::{OpenError, StreamProtocol};
use opennotr_proto::frame::{parse_preface, PROTOCOL_VERSION};
use opennotr_proto::message::{ClientMessage, RefuseCode, ServerMessage};
use opennotr_proto::quic::{code, StreamHeader};
use opennotr_transport::quic::{self as q, quinn, QuicChannel, QuicLink, QuicStream, QuicTiming};
use opennotr_transport::{read_frame_exact, read_preface, timed, write_frame, Channel, TransportError};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::conn::{
    handshake_slot, opening, penalty_refusal, unexpected, unreadable, Authenticated, Confirmed, First, Hello, HelloConn,
};
use crate::sources::Unauthenticated;
use crate::{ServerError, Shared};

/// A session's QUIC connection: where its streams are opened.
#[derive(Debug)]
pub(crate) struct QuicSession {
    link: Arc<QuicLink>,
    /// The client negotiated `opennotr/2`: headers carry `local`.
    carries_local: bool,
}

fn closed(_: impl std::fmt::Debug) -> OpenError {
    OpenError::SessionClosed
}

impl QuicSession {
    /// Where the client's connection is now.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.link.connection().remote_address()
    }

    /// Opens the stream for `stream`: a header, and the stream is ready at
    /// once. The visitor's first bytes follow the header without waiting
    /// for the client's status byte, which is read ahead of the client's
    /// bytes: a refusal reaches the visitor as a closed stream (its reason
    /// comes as `stream_refused`), and a stream costs no round trip to the
    /// client. A UDP flow's datagrams are routed to it before the header
    /// goes out, since the client may answer with some at once.
    pub(crate) async fn open(
        &self,
        stream: u64,
        protocol: StreamProtocol,
        target: SocketAddr,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Result<Channel, OpenError> {
        if protocol == StreamProtocol::Mux {
            return Err(OpenError::Refused("multiplexed streams are not carried over QUIC".into()));
        }
        let (send, recv) = self.link.connection().open_bi().await.map_err(closed)?;
        let s = QuicStream::new(send, recv).with_status_due();
        let mut chan = match protocol {
            StreamProtocol::Udp => QuicChannel::Flow(self.link.flow(stream, s)),
            _ => QuicChannel::Stream(s),
        };
        let s = match &mut chan {
            QuicChannel::Stream(s) => s,
            QuicChannel::Flow(f) => f.stream_mut(),
        };
        let local = local.filter(|_| self.carries_local);
        let header = StreamHeader { stream, protocol, target, peer, local }.encode();
        s.parts().0.write_all(&header).await.map_err(closed)?;
        Ok(Channel::Quic(Box::new(chan)))
    }
}

/// The QUIC endpoint of `cfg`, on `quic.listen` or else the address the
/// TCP control listener is bound to (`tcp`), with its certificate or a
/// self-signed one.
pub(crate) fn bind(cfg: &ServerConfig, quic: &QuicSection, tcp: SocketAddr) -> Result<quinn::Endpoint, ServerError> {
    let (chain, key) = match &quic.cert {
        Some((cert, key)) => q::load_pem(cert, key)
            .map_err(|e| ServerError::Config { key: "server.quicCert".into(), message: e.to_string() })?,
        None => {
            q::self_signed().map_err(|e| ServerError::Config { key: "server.quic".into(), message: e.to_string() })?
        }
    };
    let timing =
        QuicTiming { keepalive_interval: cfg.server.keepalive_interval, idle_timeout: cfg.server.keepalive_timeout };
    let max_incoming = cfg.limits.max_handshakes.saturating_mul(4);
    let config = q::server_config(chain, key, timing, max_incoming)
        .map_err(|e| ServerError::Config { key: "server.quicCert".into(), message: e.to_string() })?;
    let addr = quic.listen.unwrap_or(tcp);
    quinn::Endpoint::server(config, addr).map_err(|source| ServerError::Bind { addr, source })
}

/// Accepts QUIC connections until `stop`, under the same per-source and
/// overall caps as the TCP control port.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let peer = incoming.remote_address();
        // An address first proves that it receives there (a stateless
        // retry: one round trip per connect, nothing kept here) before it
        // counts against its source: UDP sources are easily forged, and a
        // forged one could otherwise hold a victim's per-source slots (on
        // TCP too) or use the room a live client's address has beyond the
        // shared queue.
        if !incoming.remote_address_validated() {
            if !incoming.may_retry() {
                incoming.ignore();
            } else if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let Some(unauthenticated) = shared.sources.unauthenticated(peer.ip()) else {
            debug!(%peer, "too many unauthenticated connections from this source; refusing a QUIC connection");
            incoming.refuse();
            continue;
        };
        let queued = match shared.queued.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if unauthenticated.trusted => None,
            Err(_) => {
                shared.sources.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "too many connections waiting for a handshake; refusing a QUIC connection");
                incoming.refuse();
                continue;
            }
        };
        let span = info_span!("conn", %peer, transport = "quic");
        shared.sessions.spawn(handle(shared.clone(), incoming, peer, queued, unauthenticated).instrument(span));
    }
    // No new connections; the sessions' own connections close as each
    // session ends (after its parting `going_away`), and the endpoint with
    // the last of them.
    endpoint.set_server_config(None);
}

/// Writes a refusal on the control stream and waits (briefly) until the
/// client has it: closing the connection at once would discard it.
async fn refuse(shared: &Shared, s: &mut QuicStream, peer: SocketAddr, code: RefuseCode, message: String) {
    if code == RefuseCode::ProtocolError {
        debug!(%code, %message, "refusing a peer");
    } else {
        info!(%code, %message, "refusing client");
    }
    shared.refused(peer, None, code, &message);
    let m = ServerMessage::Refused { code, message };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        write_frame(s, &m.to_bytes()).await?;
        let (send, _) = s.parts();
        let _ = send.finish();
        let _ = send.stopped().await;
        Ok::<_, TransportError>(())
    })
    .await;
}

async fn handle(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    peer: SocketAddr,
    queued: Option<OwnedSemaphorePermit>,
    unauthenticated: Unauthenticated,
) {
    // The QUIC handshake, the control stream, the preface and the first
    // message all count against `helloTimeout`.
    let first = timed(shared.cfg.server.hello_timeout, "waiting for the hello", async {
        let conn = incoming.accept().map_err(q::io_error)?.await.map_err(q::io_error)?;
        // Datagrams are read (and dropped, until the session has flows)
        // from the start: unread, a stranger's would fill quinn's buffer.
        // The reader holds the connection, so it is closed explicitly when
        // this ends, whichever way.
        let closing = Closing(conn.clone());
        let link = QuicLink::new(conn.clone(), shared.quic_stats.clone());
        let (send, recv) = conn.accept_bi().await.map_err(q::io_error)?;
        let mut s = QuicStream::new(send, recv);
        let preface = read_preface(&mut s).await?;
        let first = match parse_preface(&preface)? {
            PROTOCOL_VERSION => First::Frame(read_frame_exact(&mut s).await?),
            other => First::Version(other),
        };
        Ok((link, closing, s, first))
    })
    .await;
    let (link, closing, mut s, first) = match first {
        Ok(x) => x,
        Err(e) => return unreadable(&shared, peer, e),
    };
    let conn = link.connection().clone();
    let message = match opening(&shared, peer, first) {
        Ok(m) => m,
        Err((code, message)) => return refuse(&shared, &mut s, peer, code, message).await,
    };
    match message {
        ClientMessage::Hello { spake, plaintext, software, name, .. } => {
            debug!(%software, name = name.as_deref().unwrap_or(""), "hello");
            if let Some(m) = penalty_refusal(&shared, peer) {
                let _ = tokio::time::timeout(Duration::from_secs(2), write_frame(&mut s, &m.to_bytes())).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                return;
            }
            // Nothing is sealed again inside QUIC: a plaintext session does
            // not exist there, and one asked for is a confused client.
            if plaintext {
                shared.handshake_result("plaintext_not_allowed");
                let msg = "plaintext is not offered over QUIC, which is always encrypted (set plaintext: false)";
                return refuse(&shared, &mut s, peer, RefuseCode::PlaintextNotAllowed, msg.into()).await;
            }
            let Some(permit) = handshake_slot(&shared, queued).await else { return };
            control(shared, link, closing, s, peer, spake, name, permit, unauthenticated).await
        }
        _ => {
            let message = "expected hello as the first message (data channels do not exist over QUIC)".to_string();
            let (code, message) = unexpected(&shared, peer, message);
            refuse(&shared, &mut s, peer, code, message).await
        }
    }
}

/// Closes a connection when dropped: its datagram reader holds a handle
/// too, so dropping ours would leave it open until its idle timeout, past
/// the per-source count of its handshake.
struct Closing(quinn::Connection);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close(quinn::VarInt::from_u32(code::SESSION_ENDED), b"");
    }
}

/// A QUIC connection and its control stream, in the handshake.
struct Control {
    conn: quinn::Connection,
    s: QuicStream,
}

impl HelloConn for Control {
    type Io = QuicStream;
    fn io(&mut self) -> &mut QuicStream {
        &mut self.s
    }
    fn gone(&self) -> bool {
        self.conn.close_reason().is_some()
    }
    async fn refuse(&mut self, shared: &Shared, peer: SocketAddr, code: RefuseCode, message: String) {
        refuse(shared, &mut self.s, peer, code, message).await
    }
}

#[allow(clippy::too_many_arguments)]
async fn control(
    shared: Arc<Shared>,
    link: Arc<QuicLink>,
    closing: Closing,
    s: QuicStream,
    peer: SocketAddr,
    spake: Vec<u8>,
    name: Option<String>,
    permit: OwnedSemaphorePermit,
    unauthenticated: Unauthenticated,
) {
    let conn = link.connection().clone();
    let Ok(binding) = opennotr_transport::quic::binding(&conn) else {
        shared.handshake_result("closed");
        return debug!("no TLS exporter on this connection");
    };
    let mut control = Control { conn, s };
    let hello = Hello { spake, plaintext: false, name };
    let Some(Confirmed { keys, name, shared_key }) =
        crate::conn::authenticate(&shared, &mut control, peer, hello, Some(&binding)).await
    else {
        return;
    };
    let Control { conn, s } = control;
    drop(unauthenticated);
    let live = shared.sources.session(peer.ip());
    opennotr_transport::quic::authenticated(&conn);
    let chan = Channel::Quic(Box::new(QuicChannel::Stream(s)));
    let carries_local = opennotr_transport::quic::carries_local(&conn);
    let quic = Some(QuicSession { link, carries_local });
    let auth = Authenticated { peer, name, plaintext: false, keys, shared_key, quic };
    let session = crate::conn::serve(shared.clone(), chan, auth, permit).await;
    let end = async move {
        let _closing = closing;
        if let Some(session) = session {
            let _live = live;
            session.await;
        }
        // A parting `going_away` is on its way: the client closes once it
        // has it; one that does not is cut shortly.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        conn.close(quinn::VarInt::from_u32(code::SESSION_ENDED), b"session ended");
    };
    shared.sessions.spawn(end.in_current_span());
}
