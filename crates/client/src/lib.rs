//! `opennotr`, the client: keeps one authenticated, encrypted control
//! connection to `opennotrd`, reconnecting forever with backoff, and for each
//! stream the server asks for, dials the local target and a data channel to
//! the server and relays between them.
//!
//! The client dials only targets declared in its own configuration: a
//! server (or anyone posing as one) cannot make it connect anywhere else.
//!
//! # Layout
//! - [`Client`]: the reconnect loop and the events it reports.
//! - `session`: one connection: handshake, registration, control loop.
//! - `stream`: one stream: local dial, data channel, relay (TCP) or pump (UDP).
//! - `spare`: data channels opened ahead of need, so a stream waits for no
//!   round trip to the server.
//! - `check`: `opennotr check`, every step tried once without registering.
//! - `quic`: the same over QUIC (`transport: quic`): the handshake bound
//!   to the connection's TLS, the streams the server opens, UDP datagrams.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opennotr_config::{ClientConfig, Transport};
use opennotr_proto::message::{ForwardResult, RefuseCode, StreamProtocol};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod check;
mod dial;
mod health;
mod proxy;
mod quic;
mod session;
mod spare;
mod stream;

pub use check::{check, CheckFailure, CheckLine};
pub use quic::QuicEndpoint;

/// What happened, for the user and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The session is up.
    Connected(Registration),
    /// The server refused the client.
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// What the server said.
        message: String,
    },
    /// The connection failed or ended.
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt is made.
        retry_in: Duration,
    },
}

/// What the server gave this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The virtual IP.
    pub vip: std::net::Ipv4Addr,
    /// The domain.
    pub domain: String,
    /// One result per requested forward.
    pub forwards: Vec<ForwardResult>,
    /// The session's bandwidth limit in force, bytes a second each way.
    pub bandwidth: Option<u64>,
}

impl Registration {
    /// The original opennotr's connect lines, plus one per refused forward.
    pub fn lines(&self) -> Vec<String> {
        let mut out =
            vec!["connect success".to_string(), format!("vhost: {}", self.vip), format!("domain: {}", self.domain)];
        for f in &self.forwards {
            let r = &f.request;
            let public = match f.public_port {
                Some(p) => format!("{}://{}:{}", r.protocol, self.domain, p),
                None => f.url.clone().unwrap_or_else(|| format!("{}://{}", r.protocol, self.domain)),
            };
            let local = SocketAddr::new(r.local_ip, r.local_port);
            match &f.error {
                None => out.push(format!("{public} => {local}")),
                Some(e) => {
                    out.push(format!("{}://{}:{} => {local} refused: {e}", r.protocol, self.domain, r.public_port))
                }
            }
        }
        // The limits in force, after the lines the original printed.
        let rate = |b: u64| format!("{}/s each way", opennotr_config::format_bandwidth(b));
        if let Some(b) = self.bandwidth {
            out.push(format!("bandwidth: {} for this client", rate(b)));
        }
        for f in self.forwards.iter().filter(|f| f.error.is_none()) {
            if let (Some(b), Some(p)) = (f.bandwidth, f.public_port) {
                out.push(format!("bandwidth: {} for {}://{}:{p}", rate(b), f.request.protocol, self.domain));
            } else if let (Some(b), Some(url)) = (f.bandwidth, &f.url) {
                out.push(format!("bandwidth: {} for {url}", rate(b)));
            }
        }
        out
    }
}

/// Receives [`Event`]s.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server said no.
    #[error("refused by the server ({code}): {message}")]
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// What the server said.
        message: String,
    },
    /// Key confirmation failed on our side.
    #[error(
        "authentication failed: the server does not know our key (check `key` against the server's authKey, \
         or `name` and `key` against its clients list)"
    )]
    BadKey,
    /// The connection or its protocol failed.
    #[error("{0}")]
    Transport(#[from] opennotr_transport::TransportError),
    /// The server sent something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server stopped answering keepalives.
    #[error("server silent for {0:?}")]
    Silent(Duration),
    /// The server is shutting down.
    #[error("server going away: {0}")]
    GoingAway(String),
}

/// The targets this client's config declares; nothing else is ever dialed.
/// Beside them, the PROXY protocol headers their services want.
#[derive(Debug, Clone, Default)]
pub(crate) struct Allowed(HashSet<(StreamProtocol, SocketAddr)>, proxy::Headers);

impl Allowed {
    fn from_config(cfg: &ClientConfig) -> Self {
        let mut set = HashSet::new();
        for f in &cfg.forwards {
            let proto = if f.protocol == "udp" { StreamProtocol::Udp } else { StreamProtocol::Tcp };
            for &(_, local) in &f.ports {
                set.insert((proto, SocketAddr::new(f.local_ip, local)));
            }
        }
        for v in &cfg.vip_ports {
            let proto = if v.udp { StreamProtocol::Udp } else { StreamProtocol::Tcp };
            set.insert((proto, SocketAddr::new(v.local_ip, v.port)));
        }
        Allowed(set, proxy::Headers::from_config(cfg))
    }

    /// The PROXY protocol headers of the declared targets.
    pub(crate) fn headers(&self) -> &proxy::Headers {
        &self.1
    }

    pub(crate) fn permits(&self, proto: StreamProtocol, target: SocketAddr) -> bool {
        self.0.contains(&(proto.dialed(), target))
    }
}

/// The client: configuration, identity and event sink.
pub struct Client {
    cfg: Arc<ClientConfig>,
    client_id: String,
    events: EventSink,
    allowed: Arc<Allowed>,
    quic: QuicEndpoint,
    servers: dial::Servers,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("servers", &self.cfg.servers).finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `cfg`, reporting to `events`. Its id is random, so one
    /// process keeps its VIP, domain and ports across reconnects.
    pub fn new(cfg: ClientConfig, events: EventSink) -> Self {
        let allowed = Arc::new(Allowed::from_config(&cfg));
        Client {
            servers: dial::Servers::new(cfg.servers.clone()),
            cfg: Arc::new(cfg),
            client_id: hex::encode(rand::random::<[u8; 16]>()),
            events,
            allowed,
            quic: QuicEndpoint::default(),
        }
    }

    /// The same client registering with `client_id` instead of a random
    /// one (tests; the server refuses an unusable id with the reason).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The QUIC endpoint of the session, when `transport: quic`: a handle
    /// that can move it to a new socket (connection migration).
    pub fn quic_endpoint(&self) -> QuicEndpoint {
        self.quic.clone()
    }

    /// Connects, serves, and reconnects with exponential backoff and jitter
    /// until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        let cap = self.cfg.reconnect_max_delay;
        let base = Duration::from_millis(500).min(cap);
        let mut attempt = 0u32;
        info!(server = %self.cfg.servers.join(", "), transport = %self.cfg.transport, "connecting to the server");
        while !shutdown.is_cancelled() {
            let started = tokio::time::Instant::now();
            let (cfg, id, allowed, events) = (&self.cfg, &self.client_id, &self.allowed, &self.events);
            let attempt_once = async {
                match cfg.transport {
                    Transport::Tcp => {
                        session::connect_and_serve(cfg, &self.servers, id, allowed, events, &shutdown).await
                    }
                    Transport::Quic => {
                        quic::connect_and_serve(cfg, &self.servers, id, allowed, events, &shutdown, &self.quic).await
                    }
                }
            };
            let r = tokio::select! {
                r = attempt_once => r,
                _ = shutdown.cancelled() => break,
            };
            if shutdown.is_cancelled() {
                break;
            }
            // A session that lived a while was healthy: start over from the
            // shortest delay.
            if started.elapsed() > Duration::from_secs(30) {
                attempt = 0;
            }
            let exp = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
            let delay = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
            attempt = attempt.saturating_add(1);
            let reason = match &r {
                Ok(()) => "connection closed".to_string(),
                Err(e) => e.to_string(),
            };
            if let Err(ClientError::Refused { code, message }) = &r {
                (self.events)(&Event::Refused { code: *code, message: message.clone() });
            }
            warn!(%reason, retry_in_ms = delay.as_millis() as u64, "disconnected");
            (self.events)(&Event::Disconnected { reason, retry_in: delay });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        info!("client stopped");
    }
}
