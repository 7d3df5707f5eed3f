//! `opennotr check`: every step the client takes to come up, tried once
//! and reported one line each, without registering: the server name
//! resolves, the server is reachable, the key is accepted, the server
//! would accept the domain and each forward (asked with `check`, which
//! takes nothing), and each local target answers.

use std::net::SocketAddr;

use bytes::BytesMut;
use opennotr_config::ClientConfig;
use opennotr_proto::message::{ClientMessage, RefuseCode, ServerMessage, StreamProtocol};
use opennotr_transport::quic::{quinn, QuicChannel, QuicStream, QuicTiming};
use opennotr_transport::{timed, tune_tcp, Channel, FrameReader, FrameWriter, SecureStream, TransportError};
use tokio::net::TcpStream;

use crate::session::requests;
use crate::ClientError;

/// The kind of a failed check, in the order checks run; the first kind
/// that failed is the exit status (sysexits.h values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CheckFailure {
    /// The server's name does not resolve (68, `EX_NOHOST`).
    Resolve,
    /// The server cannot be reached (69, `EX_UNAVAILABLE`).
    Unreachable,
    /// The server refused the key or the name (77, `EX_NOPERM`).
    Auth,
    /// The server does not speak `check` (an older opennotrd) or broke the
    /// protocol (76, `EX_PROTOCOL`).
    Protocol,
    /// The server would refuse the client, its domain or a forward (65,
    /// `EX_DATAERR`).
    WouldRefuse,
    /// A local target does not accept connections (66, `EX_NOINPUT`).
    LocalDown,
}

impl CheckFailure {
    /// The process exit status for this failure.
    pub fn exit_code(self) -> u8 {
        match self {
            CheckFailure::Resolve => 68,
            CheckFailure::Unreachable => 69,
            CheckFailure::Auth => 77,
            CheckFailure::Protocol => 76,
            CheckFailure::WouldRefuse => 65,
            CheckFailure::LocalDown => 66,
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// `None` = passed; else why it failed.
    pub failure: Option<CheckFailure>,
    /// What was checked and what came of it.
    pub text: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.failure.is_some() { "FAIL" } else { "ok  " };
        write!(f, "{mark} {}", self.text)
    }
}

/// Runs every check of `cfg`, handing each line to `out` as it is known;
/// returns the first kind of failure (in [`CheckFailure`]'s order), if any.
pub async fn check(cfg: &ClientConfig, mut out: impl FnMut(&CheckLine)) -> Option<CheckFailure> {
    let mut worst: Option<CheckFailure> = None;
    let mut emit = |failure: Option<CheckFailure>, text: String| {
        if let Some(f) = failure {
            worst = Some(worst.map_or(f, |w| w.min(f)));
        }
        out(&CheckLine { failure, text });
    };
    // Each server a client may land on must take it.
    for server in &cfg.servers {
        server_checks(cfg, server, &mut emit).await;
    }
    local_checks(cfg, &mut emit).await;
    worst
}

async fn server_checks(cfg: &ClientConfig, server: &str, emit: &mut impl FnMut(Option<CheckFailure>, String)) {
    let limit = cfg.handshake_timeout;
    let addrs = match timed(limit, "resolving", async { Ok(tokio::net::lookup_host(server).await?) }).await {
        Ok(a) => a.collect::<Vec<SocketAddr>>(),
        Err(e) => return emit(Some(CheckFailure::Resolve), format!("server name: {server} does not resolve: {e}")),
    };
    if addrs.is_empty() {
        return emit(Some(CheckFailure::Resolve), format!("server name: {server} has no address"));
    }
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    emit(None, format!("server name: {server} resolves to {}", list.join(", ")));

    let connected = match cfg.transport {
        opennotr_config::Transport::Tcp => over_tcp(cfg, &addrs, emit).await,
        opennotr_config::Transport::Quic => over_quic(cfg, addrs[0], emit).await,
    };
    let Some((chan, quic)) = connected else { return };
    ask(cfg, chan, emit).await;
    if let Some((endpoint, conn)) = quic {
        conn.close(quinn::VarInt::from_u32(opennotr_proto::quic::code::SESSION_ENDED), b"check done");
        let _ = tokio::time::timeout(cfg.handshake_timeout, endpoint.wait_idle()).await;
    }
}

/// A QUIC endpoint and connection to close once the check is done.
type QuicConn = (quinn::Endpoint, quinn::Connection);

fn auth_failure(e: &ClientError) -> CheckFailure {
    match e {
        ClientError::BadKey | ClientError::Refused { code: RefuseCode::BadKey | RefuseCode::TooManyFailures, .. } => {
            CheckFailure::Auth
        }
        ClientError::Refused { code: RefuseCode::VersionMismatch, .. } => CheckFailure::Protocol,
        ClientError::Refused { .. } => CheckFailure::WouldRefuse,
        ClientError::Transport(_) => CheckFailure::Unreachable,
        _ => CheckFailure::Protocol,
    }
}

fn authenticated(cfg: &ClientConfig) -> String {
    match &cfg.name {
        Some(n) => format!("authenticated as client {n:?}"),
        None => "authenticated with the shared key".into(),
    }
}

/// The control connection over TCP, authenticated; `None` once a failure
/// is reported.
async fn over_tcp(
    cfg: &ClientConfig,
    addrs: &[SocketAddr],
    emit: &mut impl FnMut(Option<CheckFailure>, String),
) -> Option<(Channel, Option<QuicConn>)> {
    let limit = cfg.handshake_timeout;
    let mut tcp = None;
    let mut last = String::new();
    for a in addrs {
        match timed(limit, "connecting", async { Ok(TcpStream::connect(a).await?) }).await {
            Ok(s) => {
                tcp = Some((s, *a));
                break;
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    let Some((mut tcp, addr)) = tcp else {
        emit(Some(CheckFailure::Unreachable), format!("server reachable over TCP: {last}"));
        return None;
    };
    tune_tcp(&tcp);
    emit(None, format!("server reachable over TCP at {addr}"));
    let keys = match crate::session::handshake(cfg, &mut tcp, cfg.plaintext, None).await {
        Ok(k) => k,
        Err(e) => {
            emit(Some(auth_failure(&e)), format!("authenticated: {e}"));
            return None;
        }
    };
    emit(None, authenticated(cfg));
    let chan = if cfg.plaintext {
        Channel::Plain(tcp)
    } else {
        Channel::Sealed(Box::new(SecureStream::new(tcp, &keys.control.c2s, &keys.control.s2c, BytesMut::new())))
    };
    Some((chan, None))
}

/// The control stream of a QUIC connection, authenticated with the
/// connection's TLS binding, as the client's session opens it.
async fn over_quic(
    cfg: &ClientConfig,
    server: SocketAddr,
    emit: &mut impl FnMut(Option<CheckFailure>, String),
) -> Option<(Channel, Option<QuicConn>)> {
    let limit = cfg.handshake_timeout;
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let timing = QuicTiming { keepalive_interval: cfg.keepalive_interval, idle_timeout: cfg.keepalive_timeout };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string()).and_then(|mut e| {
        e.set_default_client_config(opennotr_transport::quic::client_config(timing).map_err(|e| e.to_string())?);
        Ok(e)
    });
    let endpoint = match endpoint {
        Ok(e) => e,
        Err(e) => {
            emit(Some(CheckFailure::Unreachable), format!("server reachable over QUIC: no local endpoint: {e}"));
            return None;
        }
    };
    let connected = timed(limit, "connecting over QUIC", async {
        let conn = endpoint
            .connect(server, "opennotr")
            .map_err(|e| TransportError::Io(std::io::Error::other(e.to_string())))?
            .await
            .map_err(opennotr_transport::quic::io_error)?;
        let (send, recv) = conn.open_bi().await.map_err(opennotr_transport::quic::io_error)?;
        Ok((conn, QuicStream::new(send, recv)))
    })
    .await;
    let (conn, mut s) = match connected {
        Ok(x) => x,
        Err(e) => {
            emit(Some(CheckFailure::Unreachable), format!("server reachable over QUIC (UDP) at {server}: {e}"));
            return None;
        }
    };
    emit(None, format!("server reachable over QUIC (UDP) at {server}"));
    let binding = match opennotr_transport::quic::binding(&conn) {
        Ok(b) => b,
        Err(e) => {
            emit(Some(CheckFailure::Protocol), format!("authenticated: {e}"));
            return None;
        }
    };
    match crate::session::handshake(cfg, &mut s, false, Some(&binding)).await {
        Ok(_) => emit(None, authenticated(cfg)),
        Err(e) => {
            emit(Some(auth_failure(&e)), format!("authenticated: {e}"));
            return None;
        }
    }
    Some((Channel::Quic(Box::new(QuicChannel::Stream(s))), Some((endpoint, conn))))
}

/// Sends `check` on the authenticated control channel and reports the
/// server's answer.
async fn ask(cfg: &ClientConfig, chan: Channel, emit: &mut impl FnMut(Option<CheckFailure>, String)) {
    let limit = cfg.handshake_timeout;
    let (rd, wr) = tokio::io::split(chan);
    let (mut reader, mut writer) = (FrameReader::new(rd), FrameWriter::new(wr));
    let reqs = requests(cfg);
    let ask = ClientMessage::Check { domain: cfg.domain.clone(), forwards: reqs.clone() };
    let reply = async {
        writer.send(&ask.to_bytes()).await?;
        let f = reader.next().await?;
        ServerMessage::from_bytes(&f).map_err(TransportError::from)
    };
    let (client_error, domain_error, results) = match timed(limit, "asking the server", reply).await {
        Ok(ServerMessage::Checked { client_error, domain_error, forwards }) => (client_error, domain_error, forwards),
        Ok(ServerMessage::Refused { code: RefuseCode::ProtocolError, .. }) => {
            return emit(
                Some(CheckFailure::Protocol),
                "server answers `check`: no, it is too old for this check (it expects a registration); \
                 forwards were not checked"
                    .into(),
            )
        }
        Ok(other) => return emit(Some(CheckFailure::Protocol), format!("server answers `check`: it sent {other:?}")),
        Err(e) => return emit(Some(CheckFailure::Protocol), format!("server answers `check`: {e}")),
    };
    let _ = writer.shutdown().await;
    match client_error {
        None => emit(None, "server would accept this client".into()),
        Some(e) => emit(Some(CheckFailure::WouldRefuse), format!("server would accept this client: {e}")),
    }
    let domain = cfg.domain.as_deref().unwrap_or("(the server's choice)");
    match domain_error {
        None => emit(None, format!("domain {domain} would be given")),
        Some(e) => emit(Some(CheckFailure::WouldRefuse), format!("domain {domain}: {e}")),
    }
    if results.len() != reqs.len() {
        let m = format!("server answered for {} forwards of {}", results.len(), reqs.len());
        return emit(Some(CheckFailure::Protocol), m);
    }
    for (req, r) in reqs.iter().zip(&results) {
        let what = format!("forward {} public port {} => {}", req.protocol, port_text(req.public_port), target(req));
        match &r.error {
            None => emit(None, format!("{what} would be accepted")),
            Some(e) => emit(Some(CheckFailure::WouldRefuse), format!("{what}: {e}")),
        }
    }
}

fn port_text(p: u16) -> String {
    if p == 0 {
        "any".into()
    } else {
        p.to_string()
    }
}

fn target(r: &opennotr_proto::message::ForwardRequest) -> SocketAddr {
    SocketAddr::new(r.local_ip, r.local_port)
}

/// Every target the client would dial: the forwards', then the
/// `vipPorts`', each once.
async fn local_checks(cfg: &ClientConfig, emit: &mut impl FnMut(Option<CheckFailure>, String)) {
    let forwards = requests(cfg).into_iter().map(|r| {
        let proto = if r.protocol == "udp" { StreamProtocol::Udp } else { StreamProtocol::Tcp };
        (proto, target(&r))
    });
    let vip_ports = cfg.vip_ports.iter().map(|v| {
        let proto = if v.udp { StreamProtocol::Udp } else { StreamProtocol::Tcp };
        (proto, SocketAddr::new(v.local_ip, v.port))
    });
    let mut done = std::collections::HashSet::new();
    for (proto, t) in forwards.chain(vip_ports) {
        if !done.insert((proto, t)) {
            continue;
        }
        if proto == StreamProtocol::Udp {
            // UDP has no handshake: only an answer would prove a service,
            // and no datagram is safe to send to an unknown one.
            emit(None, format!("local udp {t}: not verified (UDP cannot be checked without sending it data)"));
            continue;
        }
        match timed(cfg.handshake_timeout, "connecting", async { Ok(TcpStream::connect(t).await?) }).await {
            Ok(_) => emit(None, format!("local tcp {t} accepts connections")),
            Err(e) => emit(Some(CheckFailure::LocalDown), format!("local tcp {t}: {e}")),
        }
    }
}
