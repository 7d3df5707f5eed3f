//! Node links: how the nodes of a cluster carry visitors to each other.
//!
//! A visitor may reach any node: a name of the gateway resolves to every
//! live node, and a program on any node's host may dial any client's VIP.
//! When the client is on another node, the connection is carried there
//! over a node link, one hop, and that node serves it as its own visitor's.
//!
//! A link is the tunnel protocol again: the node that needs it connects to
//! the other's control port and runs the tunnel's handshake under the name
//! `node:<its node>` with `cluster.key`, so a link is authenticated both
//! ways (key confirmation) and encrypted with the keys derived from it, and
//! a wrong key is one more failed guess of its source. On the encrypted
//! channel runs the multiplexer of the gateway's streams
//! ([`opennotr_transport::mux`]): each carried connection is a stream that
//! starts with its header ([`NodeStream`]), the visitor's bytes following
//! at once — no round trip per connection between nodes. A link is opened
//! when first needed and kept while it lives; a node has at most
//! [`MAX_LINKS`] to another (each of up to [`MAX_STREAMS`] streams).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use opennotr_config::Secret;
use opennotr_plugin::{async_trait, Carried, CarriedPort, Elsewhere, StreamProtocol, Tunnel, Visitor};
use opennotr_proto::message::GatewayPort;
use opennotr_proto::NodeStream;
use opennotr_transport::hello::HelloError;
use opennotr_transport::mux::{Mux, MuxStream, MAX_STREAMS};
use opennotr_transport::{read_frame_exact, timed, SecureStream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, info_span, Instrument};

use crate::cluster::Cluster;
use crate::Shared;

/// What a node's name is prefixed with in the tunnel's handshake; no
/// client name can have it (a client name has no `:`).
pub(crate) const NODE_NAME_PREFIX: &str = "node:";

/// Links one node keeps to another, at most.
pub(crate) const MAX_LINKS: usize = 8;

/// Connecting to another node, and its handshake, each.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed dial to a node, how long opens to it fail at once
/// rather than dial again (visitors do not queue behind a dead node).
const DIAL_BACKOFF: Duration = Duration::from_secs(3);
/// How long a link may hold data the other node does not acknowledge
/// (`TCP_USER_TIMEOUT`): a node that vanished without a word is noticed
/// in this time, not TCP's quarter of an hour.
const LINK_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// The links to one node, and its last failed dial.
#[derive(Default)]
struct Peer {
    links: Vec<Mux>,
    failed: Option<(tokio::time::Instant, String)>,
}

/// A link's socket: no delay, keepalive probes, and a bound on data left
/// unacknowledged (either end of a link).
pub(crate) fn link_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    opennotr_transport::keep_alive(tcp, opennotr_transport::SPARE_KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(LINK_USER_TIMEOUT));
}

/// The node a handshake's name says the peer is, if it is a node's name.
pub(crate) fn node_of_name(name: Option<&str>) -> Option<&str> {
    name?.strip_prefix(NODE_NAME_PREFIX)
}

/// This node's links to the other nodes of its cluster.
pub(crate) struct Links {
    me: String,
    key: Secret,
    cluster: Arc<Cluster>,
    peers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Peer>>>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("me", &self.me).finish_non_exhaustive()
    }
}

impl Links {
    /// The links of node `cluster.node()`, authenticated with `key`.
    pub(crate) fn new(cluster: Arc<Cluster>, key: Secret) -> Links {
        Links { me: cluster.node().to_string(), key, cluster, peers: Mutex::default() }
    }

    /// A new stream to `node` carrying `header`'s connection: on a link
    /// that has room, else on a new one.
    pub(crate) async fn open(&self, node: &str, header: &NodeStream) -> io::Result<MuxStream> {
        let Some(advertise) = self.cluster.routes().nodes.get(node).cloned() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("node {node} is not in the cluster")));
        };
        let peer = self.peers.lock().unwrap_or_else(|e| e.into_inner()).entry(node.to_string()).or_default().clone();
        // One dial at a time to a node: the others wait for its link (at
        // most a dial's time), and fail at once for a while after it failed.
        let mut p = tokio::time::timeout(DIAL_TIMEOUT * 2, peer.lock())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("node {node}: its link is being dialed")))?;
        if let Some((at, why)) = &p.failed {
            if at.elapsed() < DIAL_BACKOFF {
                return Err(io::Error::other(why.clone()));
            }
        }
        p.links.retain(|m| !m.is_closed());
        // The stream is opened under the lock: no other open takes the
        // room it saw.
        let room = |m: &Mux| if m.streams() < MAX_STREAMS { m.open().ok() } else { None };
        let mut stream = match p.links.iter().find_map(room) {
            Some(s) => s,
            None if p.links.len() < MAX_LINKS => {
                let m = match self.dial(node, &advertise).await {
                    Ok(m) => m,
                    Err(e) => {
                        p.failed = Some((tokio::time::Instant::now(), e.to_string()));
                        return Err(e);
                    }
                };
                p.failed = None;
                p.links.push(m.clone());
                m.open()?
            }
            None => return Err(io::Error::other(format!("every link to node {node} is full"))),
        };
        drop(p);
        let mut first = BytesMut::new();
        opennotr_proto::frame::encode_frame(&header.to_bytes(), &mut first).map_err(io::Error::other)?;
        stream.write_all(&first).await?;
        Ok(stream)
    }

    /// A new link to `node` at `advertise`: the tunnel's handshake as
    /// `node:<me>`, then the multiplexer on the encrypted channel.
    async fn dial(&self, node: &str, advertise: &str) -> io::Result<Mux> {
        let unreachable = |what: &str, e: String| io::Error::other(format!("node {node} at {advertise}: {what}: {e}"));
        let mut tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(advertise))
            .await
            .map_err(|_| unreachable("connecting", "timed out".into()))?
            .map_err(|e| unreachable("connecting", e.to_string()))?;
        link_socket(&tcp);
        let name = format!("{NODE_NAME_PREFIX}{}", self.me);
        let who = opennotr_transport::hello::Hello {
            key: self.key.expose().as_bytes(),
            name: Some(&name),
            plaintext: false,
            software: crate::conn::SOFTWARE,
            limit: DIAL_TIMEOUT,
        };
        let keys = opennotr_transport::hello::hello(&mut tcp, who, None).await.map_err(|e| match e {
            HelloError::BadKey => unreachable("handshake", format!("{e} (is cluster.key the same on both nodes?)")),
            e => unreachable("handshake", e.to_string()),
        })?;
        info!(node, %advertise, "node link up");
        let chan = SecureStream::new(tcp, &keys.control.c2s, &keys.control.s2c, BytesMut::new());
        Ok(Mux::opener(chan, None))
    }
}

#[async_trait]
impl Elsewhere for Links {
    fn node_of(&self, domain: &str) -> Option<String> {
        self.cluster.routes().domains.get(domain).cloned()
    }

    async fn carry(
        &self,
        node: &str,
        port: CarriedPort,
        visitor: SocketAddr,
        reached: Option<SocketAddr>,
    ) -> io::Result<Box<dyn Carried>> {
        let port = match port {
            CarriedPort::Http => GatewayPort::Http,
            CarriedPort::H2c => GatewayPort::H2c,
            _ => GatewayPort::Tls,
        };
        let s = self.open(node, &NodeStream::Gateway { port, visitor, reached }).await?;
        Ok(Box::new(s))
    }
}

/// Most a node's answer with its sessions may hold (a few kB a session).
const MAX_SESSIONS_ANSWER: u64 = 256 * 1024 * 1024;

/// Bound of asking another node for its sessions.
pub(crate) const SESSIONS_TIMEOUT: Duration = Duration::from_secs(3);

impl Links {
    /// Node `node`'s live sessions, as it answers over its link.
    pub(crate) async fn sessions_of(&self, node: &str) -> Result<Vec<opennotr_admin::SessionView>, String> {
        let ask = async {
            let mut s = self.open(node, &NodeStream::Sessions {}).await.map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            let mut json = Vec::new();
            let mut limited = tokio::io::AsyncReadExt::take(&mut s, MAX_SESSIONS_ANSWER + 1);
            tokio::io::AsyncReadExt::read_to_end(&mut limited, &mut json).await.map_err(|e| e.to_string())?;
            if json.len() as u64 > MAX_SESSIONS_ANSWER {
                return Err("its answer is too large".to_string());
            }
            serde_json::from_slice(&json).map_err(|e| format!("its answer does not parse: {e}"))
        };
        tokio::time::timeout(SESSIONS_TIMEOUT, ask).await.unwrap_or_else(|_| Err("no answer in time".into()))
    }
}

/// Serves a link node `node` opened to this one (its handshake done, on
/// the encrypted channel `chan`): each stream it carries, until the link
/// closes or the server stops.
pub(crate) async fn serve(shared: Arc<Shared>, chan: SecureStream<TcpStream>, node: String, peer: SocketAddr) {
    info!(node, %peer, "node link from another node");
    let (mux, mut streams) = Mux::acceptor(chan);
    loop {
        let stream = tokio::select! {
            s = streams.recv() => s,
            _ = shared.kill.cancelled() => None,
        };
        let Some(stream) = stream else { break };
        if shared.draining.is_cancelled() {
            // Leaving: its claims go with its lease; what comes meanwhile
            // is refused (reset) rather than kept past the grace period.
            stream.reset("the node is shutting down");
            continue;
        }
        let span = info_span!("carried", from = %node);
        shared.streams.spawn(carried(shared.clone(), stream).instrument(span));
    }
    mux.close();
    debug!(node, "node link closed");
}

/// One stream of a link: its header, then the connection it carries.
async fn carried(shared: Arc<Shared>, mut stream: MuxStream) {
    let limit = shared.cfg.server.handshake_timeout;
    let header = match timed(limit, "the stream's header", read_frame_exact(&mut stream)).await {
        Ok(f) => NodeStream::from_bytes(&f),
        Err(e) => return debug!(error = %e, "carried stream without a header; closed"),
    };
    match header {
        Ok(NodeStream::Gateway { port, visitor, reached }) => {
            let names: &[&str] = match port {
                GatewayPort::Http => &["http"],
                GatewayPort::Tls => &["https", "tls"],
                GatewayPort::H2c => &["h2c"],
            };
            let mut io: Box<dyn Carried> = Box::new(stream);
            for name in names {
                let Some(p) = shared.plugin(name) else { continue };
                match p.serve_carried(io, visitor, reached).await {
                    Ok(()) => return,
                    Err(back) => io = back,
                }
            }
            debug!(?port, %visitor, "no gateway port here for a carried connection; closed");
        }
        Ok(NodeStream::Vip { vip, port, visitor, udp }) => vip_conn(&shared, stream, vip, port, visitor, udp).await,
        Ok(NodeStream::Sessions {}) => {
            let json = serde_json::to_vec(&crate::admin::sessions(&shared)).unwrap_or_default();
            if stream.write_all(&json).await.is_ok() {
                let _ = stream.shutdown().await;
            }
        }
        Err(e) => debug!(error = %e, "carried stream with a bad header; closed"),
    }
}

/// A connection (or, with `udp`, a UDP flow, its datagrams framed as on a
/// tunnel stream) from another node's host to a VIP of this node's client,
/// as [`crate::vlan`] serves one from this host.
async fn vip_conn(
    shared: &Shared,
    mut stream: MuxStream,
    vip: std::net::Ipv4Addr,
    port: u16,
    visitor: SocketAddr,
    udp: bool,
) {
    let dst = SocketAddr::from((vip, port));
    let protocol = if udp { StreamProtocol::Udp } else { StreamProtocol::Tcp };
    let Some((session, target)) = crate::holdings::Holder::here(shared, vip, port, protocol) else {
        return debug!(%dst, "nothing exported there; closed");
    };
    if !crate::access::admit_vip(shared, &session, protocol, port, visitor.ip()) {
        return debug!(%dst, "refused by the access rules; closed");
    }
    let kill = session.kill.clone();
    let tunnel =
        crate::session::SessionTunnel(session.clone(), session.vip_counters.clone(), shared.channel_stats.clone());
    let opened = tokio::select! {
        s = tunnel.open_stream(protocol, target, Some(Visitor::new(visitor).reached(Some(dst)))) => s,
        _ = kill.cancelled() => return,
    };
    let mut there = match opened {
        Ok(s) => s,
        Err(e) => return debug!(%dst, error = %e, "client cannot reach its service; closed"),
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut stream, &mut there) => match r {
            Ok((up, down)) => debug!(%dst, up, down, "carried VIP connection closed"),
            Err(e) => debug!(%dst, error = %e, "carried VIP connection ended with an error"),
        },
        _ = kill.cancelled() => {}
    }
}
