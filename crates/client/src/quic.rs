//! The client over QUIC (`transport: quic`): one connection; the
//! handshake on its first stream, bound to its TLS (so any certificate is
//! accepted: a relay with its own fails key confirmation); then the
//! server opens a stream per visitor stream, which is served here, and UDP
//! flows travel as QUIC datagrams.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opennotr_config::ClientConfig;
use opennotr_proto::message::{ClientMessage, StreamProtocol};
use opennotr_proto::quic::{code, StreamHeader, MAX_HEADER_LEN, MAX_REASON_LEN, STATUS_CONNECTED, STATUS_REFUSED};
use opennotr_transport::quic::{self as q, quinn, QuicChannel, QuicLink, QuicStream, QuicTiming};
use opennotr_transport::relay::relay;
use opennotr_transport::{timed, tune_tcp, Channel, TransportError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::dial::Servers;
use crate::{Allowed, ClientError, EventSink};

/// The client's QUIC endpoint while it has one, so that it can be moved to
/// a new socket ([`QuicEndpoint::rebind`]) as a host that changed networks
/// would: the session and its streams go on (QUIC connection migration).
#[derive(Debug, Clone, Default)]
pub struct QuicEndpoint(Arc<Mutex<Option<quinn::Endpoint>>>);

impl QuicEndpoint {
    fn set(&self, e: Option<quinn::Endpoint>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// The endpoint's local address now, if the client is on QUIC.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Moves the endpoint to a new UDP socket on the same address and a
    /// new port: to the server, the client's address changed.
    pub fn rebind(&self) -> io::Result<SocketAddr> {
        let endpoint = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let endpoint = endpoint.ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not on QUIC now"))?;
        let ip = endpoint.local_addr()?.ip();
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let addr = socket.local_addr()?;
        endpoint.rebind(socket)?;
        Ok(addr)
    }
}

fn other(e: impl std::fmt::Display) -> TransportError {
    TransportError::Io(io::Error::other(e.to_string()))
}

pub(crate) async fn connect_and_serve(
    cfg: &ClientConfig,
    servers: &Servers,
    client_id: &str,
    allowed: &Arc<Allowed>,
    events: &EventSink,
    shutdown: &CancellationToken,
    slot: &QuicEndpoint,
) -> Result<(), ClientError> {
    let limit = cfg.handshake_timeout;
    let candidates = servers.candidates(limit).await?;
    let timing = QuicTiming { keepalive_interval: cfg.keepalive_interval, idle_timeout: cfg.keepalive_timeout };
    let client_config = opennotr_transport::quic::client_config(timing).map_err(other)?;
    let connect = |server: SocketAddr| {
        let client_config = client_config.clone();
        async move {
            let bind: SocketAddr = if server.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let mut endpoint = quinn::Endpoint::client(bind).map_err(TransportError::from)?;
            endpoint.set_default_client_config(client_config);
            // The name only picks the certificate a server may have for
            // several; it is not checked (see the module's comment).
            let connecting = endpoint.connect(server, "opennotr").map_err(other)?;
            match connecting.await {
                Ok(conn) => Ok((endpoint, conn)),
                Err(e) => {
                    endpoint.close(quinn::VarInt::from_u32(code::SESSION_ENDED), b"");
                    Err(q::io_error(e))
                }
            }
        }
    };
    let (i, server, (endpoint, conn)) =
        servers.first(&candidates, limit, "connecting to the server over QUIC", connect).await?;
    if cfg.servers.len() > 1 {
        info!(server = servers.name(i), addr = %server, "connected");
    }
    slot.set(Some(endpoint.clone()));
    let r = session(cfg, client_id, allowed, events, shutdown, conn, server).await;
    slot.set(None);
    endpoint.close(quinn::VarInt::from_u32(code::SESSION_ENDED), b"client leaving");
    servers.lost(i);
    r
}

async fn session(
    cfg: &ClientConfig,
    client_id: &str,
    allowed: &Arc<Allowed>,
    events: &EventSink,
    shutdown: &CancellationToken,
    conn: quinn::Connection,
    server: SocketAddr,
) -> Result<(), ClientError> {
    let limit = cfg.handshake_timeout;
    let (send, recv) =
        timed(limit, "opening the control stream", async { conn.open_bi().await.map_err(q::io_error) }).await?;
    let mut s = QuicStream::new(send, recv);
    let binding = opennotr_transport::quic::binding(&conn).map_err(other)?;

    // Datagrams are read (and dropped, until a flow takes them) from the
    // start: the peer is not authenticated before the handshake ends, and
    // unread they would fill quinn's buffer.
    let link = QuicLink::new(conn.clone(), Arc::default());
    let keys = crate::session::handshake(cfg, &mut s, false, Some(&binding)).await?;
    let streams = Streams { link, timeout: limit };
    let chan = Channel::Quic(Box::new(QuicChannel::Stream(s)));
    let r =
        crate::session::serve_session(cfg, client_id, allowed, events, shutdown, (chan, server, keys), Some(streams))
            .await;
    conn.close(quinn::VarInt::from_u32(code::SESSION_ENDED), b"session ended");
    r
}

/// The streams the server opens on a session's QUIC connection.
pub(crate) struct Streams {
    link: Arc<QuicLink>,
    timeout: Duration,
}

impl Streams {
    /// Serves every stream the server opens until `kill`.
    pub(crate) fn spawn(self, allowed: Arc<Allowed>, out: mpsc::Sender<ClientMessage>, kill: CancellationToken) {
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    s = self.link.connection().accept_bi() => s,
                    _ = kill.cancelled() => break,
                };
                // The connection is gone: the control loop notices too.
                let Ok((send, recv)) = next else { break };
                let s = QuicStream::new(send, recv);
                let link = self.link.clone();
                tokio::spawn(serve(link, allowed.clone(), out.clone(), kill.clone(), s, self.timeout));
            }
        });
    }
}

/// Reads a header: its length byte first, refused before anything more
/// is read if it cannot be one, then exactly that many bytes.
async fn header(s: &mut QuicStream) -> Result<StreamHeader, String> {
    let (_, recv) = s.parts();
    let mut len = [0u8; 1];
    recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let n = StreamHeader::body_len(len[0]).map_err(|e| e.to_string())?;
    let mut body = [0u8; MAX_HEADER_LEN];
    recv.read_exact(&mut body[..n]).await.map_err(|e| e.to_string())?;
    StreamHeader::parse(&body[..n]).map_err(|e| e.to_string())
}

async fn serve(
    link: Arc<QuicLink>,
    allowed: Arc<Allowed>,
    out: mpsc::Sender<ClientMessage>,
    kill: CancellationToken,
    mut s: QuicStream,
    timeout: Duration,
) {
    let h = match tokio::time::timeout(timeout, header(&mut s)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            s.reset(code::PROTOCOL);
            return debug!(error = %e, "a stream without a valid header; reset");
        }
        Err(_) => {
            s.reset(code::PROTOCOL);
            return debug!("a stream without its header in time; reset");
        }
    };
    let span = info_span!("stream", id = h.stream, target = %h.target, peer = ?h.peer);
    tokio::select! {
        _ = kill.cancelled() => debug!(parent: &span, "session closed; stream dropped"),
        _ = connect(link, allowed, out, s, h, timeout).instrument(span.clone()) => {}
    }
}

/// Answers a refusal on the stream (for the server's open) and on the
/// control stream (for its log, as over TCP).
async fn refuse(s: &mut QuicStream, out: &mpsc::Sender<ClientMessage>, stream: u64, reason: String) {
    let mut cut = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut answer = vec![STATUS_REFUSED];
    answer.extend_from_slice(&reason.as_bytes()[..cut]);
    let _ = s.write_all(&answer).await;
    let _ = s.shutdown().await;
    let _ = out.send(ClientMessage::StreamRefused { stream, reason }).await;
}

async fn connect(
    link: Arc<QuicLink>,
    allowed: Arc<Allowed>,
    out: mpsc::Sender<ClientMessage>,
    mut s: QuicStream,
    h: StreamHeader,
    timeout: Duration,
) {
    let target = h.target;
    if !allowed.permits(h.protocol, target) {
        warn!("server asked for a target this client does not declare; refused");
        let reason = format!("{target} is not a target declared in the client's config");
        return refuse(&mut s, &out, h.stream, reason).await;
    }
    match h.protocol {
        StreamProtocol::Mux => {
            let reason = "multiplexed streams are not carried over QUIC".to_string();
            refuse(&mut s, &out, h.stream, reason).await
        }
        StreamProtocol::Tcp => {
            let dialed =
                timed(timeout, "connecting to the local service", async { Ok(TcpStream::connect(target).await?) });
            let mut local = match dialed.await {
                Ok(t) => t,
                Err(e) => {
                    debug!(error = %e, "local service unreachable");
                    return refuse(&mut s, &out, h.stream, format!("cannot connect to {target}: {e}")).await;
                }
            };
            tune_tcp(&local);
            let visitor = crate::proxy::Visitor { peer: h.peer, local: h.local };
            let header = allowed.headers().stream(target, visitor);
            if let Err(e) = crate::stream::write_header(&mut local, header, timeout).await {
                debug!(error = %e, "cannot write the PROXY protocol header");
                let reason = format!("cannot write the PROXY protocol header to {target}: {e}");
                return refuse(&mut s, &out, h.stream, reason).await;
            }
            if s.write_all(&[STATUS_CONNECTED]).await.is_err() {
                return debug!("the server gave up on the stream");
            }
            match relay(&mut local, &mut s).await {
                Ok((up, down)) => debug!(up, down, "stream closed"),
                Err(e) => debug!(error = %e, "stream ended with an error"),
            }
        }
        StreamProtocol::Udp => {
            let bind: SocketAddr = if target.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = match crate::stream::bind_udp(bind) {
                Ok(sock) => sock,
                Err(e) => return refuse(&mut s, &out, h.stream, format!("cannot open a UDP socket: {e}")).await,
            };
            if let Err(e) = sock.connect(target).await {
                return refuse(&mut s, &out, h.stream, format!("cannot reach {target}: {e}")).await;
            }
            // The flow takes its datagrams before the server learns that
            // it may send them.
            let mut flow = link.flow(h.stream, s);
            if flow.stream_mut().write_all(&[STATUS_CONNECTED]).await.is_err() {
                return debug!("the server gave up on the flow");
            }
            let chan = Channel::Quic(Box::new(QuicChannel::Flow(flow)));
            let visitor = crate::proxy::Visitor { peer: h.peer, local: h.local };
            let prefix = allowed.headers().datagram(target, visitor);
            if let Err(e) = crate::stream::pump_udp(sock, chan, prefix).await {
                debug!(error = %e, "flow ended with an error");
            }
        }
    }
}
