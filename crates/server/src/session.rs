//! A live session: its forwards, its control loop and its clean-up.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use opennotr_plugin::{
    async_trait, ForwardContext, ForwardLimits, ForwardMeta, OpenError, Plugin, StreamProtocol, Tunnel, TunnelStream,
    Visitor,
};
use opennotr_proto::handshake::{ChannelKeys, SessionKeys};
use opennotr_proto::message::{ClientMessage, ForwardRequest, ForwardResult, ServerMessage, VipPort};
use opennotr_transport::bandwidth::Throttles;
use opennotr_transport::{Channel, Counters, FrameReader, FrameWriter, SecureStream, TransportError};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{ForwardInfo, SessionInfo, Shared};

type Pending = oneshot::Sender<Result<Channel, OpenError>>;

/// How long a plugin may take to start or stop one forward.
pub(crate) const PLUGIN_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Control messages waiting to be written; a client this far behind is dead
/// or hostile, and opening streams waits rather than queueing more.
pub(crate) const OUTBOX: usize = 1024;
/// A queued control message, boxed: the queue's first block (32 slots,
/// allocated with the queue) then costs every session 32 pointers, not 32
/// of the largest message.
pub(crate) type Outgoing = Box<ServerMessage>;

/// A session's id: random, 16 bytes.
pub(crate) type SessionId = [u8; 16];

/// Identifies "the same forward" across reconnects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ForwardKey {
    pub(crate) protocol: String,
    pub(crate) requested_port: u16,
    pub(crate) local_ip: std::net::IpAddr,
    pub(crate) local_port: u16,
}

pub(crate) struct Session {
    pub(crate) id: SessionId,
    /// The credential name it authenticated with; `None` = shared key.
    pub(crate) client: Option<String>,
    pub(crate) client_id: String,
    pub(crate) domain: String,
    /// The client asked for its domain, or its credential's list gave it
    /// (else the server picked it).
    pub(crate) domain_requested: bool,
    pub(crate) vip: Ipv4Addr,
    pub(crate) remote: SocketAddr,
    pub(crate) plaintext: bool,
    /// The client accepts multiplexed streams.
    pub(crate) multiplex: bool,
    pub(crate) connected_at: SystemTime,
    pub(crate) keys: SessionKeys,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Idle, authenticated data channels the client opened ahead of need.
    pub(crate) spares: SparePool,
    next_stream: AtomicU64,
    out: mpsc::Sender<Outgoing>,
    /// Cancelled when the session ends: every stream stops.
    pub(crate) kill: CancellationToken,
    /// Cancelled when forwards must stop accepting (session end or drain).
    stop: CancellationToken,
    /// Cancelled when clean-up is complete: VIP, domain and ports are free.
    pub(crate) finished: CancellationToken,
    streams: Arc<Semaphore>,
    max_streams: usize,
    connect_timeout: Duration,
    forwards: Mutex<Vec<RunningForward>>,
    /// What the client exports at its VIP: (transport, port) → what it dials.
    pub(crate) exports: HashMap<(StreamProtocol, u16), SocketAddr>,
    /// Traffic to its VIP through the virtual LAN.
    pub(crate) vip_counters: Arc<Counters>,
    /// Its QUIC connection, when it came over QUIC: streams are opened on
    /// it instead of asking for data channels.
    pub(crate) quic: std::sync::OnceLock<crate::quic::QuicSession>,
    /// Its bandwidth limit (set before its forwards start), shared by all
    /// its streams and flows, VIP traffic included.
    pub(crate) bandwidth: std::sync::OnceLock<Arc<opennotr_transport::bandwidth::Throttle>>,
    /// It holds a claim on its domain in the cluster, to release when it ends.
    pub(crate) claimed: std::sync::OnceLock<()>,
    /// It holds a claim on its VIP in the cluster, likewise.
    pub(crate) vip_claimed: std::sync::OnceLock<()>,
    /// It holds the claim on its client in the cluster, likewise.
    pub(crate) client_claimed: std::sync::OnceLock<()>,
}

pub(crate) struct RunningForward {
    pub(crate) meta: ForwardMeta,
    plugin: Arc<dyn Plugin>,
    key: ForwardKey,
    pub(crate) info: ForwardInfo,
    pub(crate) counters: Arc<Counters>,
    /// Its access rules, for visitors that reach it through the VIP.
    pub(crate) access: Option<Arc<crate::access::Policy>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client_id", &self.client_id)
            .field("domain", &self.domain)
            .field("vip", &self.vip)
            .finish_non_exhaustive()
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: &Shared,
        id: SessionId,
        client: Option<String>,
        client_id: String,
        domain: String,
        domain_requested: bool,
        vip: Ipv4Addr,
        remote: SocketAddr,
        plaintext: bool,
        multiplex: bool,
        keys: SessionKeys,
        out: mpsc::Sender<Outgoing>,
        exports: HashMap<(StreamProtocol, u16), SocketAddr>,
    ) -> Self {
        let kill = shared.kill.child_token();
        let limits = shared.limits();
        let (max_streams, spare_limit) = (limits.max_streams_per_client, limits.spare_channels);
        Session {
            id,
            client,
            client_id,
            domain,
            domain_requested,
            vip,
            remote,
            plaintext,
            multiplex,
            connected_at: SystemTime::now(),
            keys,
            pending: Mutex::new(HashMap::new()),
            spares: SparePool::new(spare_limit),
            next_stream: AtomicU64::new(1),
            out,
            stop: shared.draining.child_token(),
            kill,
            finished: CancellationToken::new(),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            connect_timeout: shared.cfg.server.connect_timeout,
            forwards: Mutex::new(Vec::new()),
            exports,
            vip_counters: Arc::default(),
            quic: std::sync::OnceLock::new(),
            bandwidth: std::sync::OnceLock::new(),
            claimed: std::sync::OnceLock::new(),
            vip_claimed: std::sync::OnceLock::new(),
            client_claimed: std::sync::OnceLock::new(),
        }
    }

    /// Runs `f` on the running forwards.
    pub(crate) fn with_forwards<T>(&self, f: impl FnOnce(&[RunningForward]) -> T) -> T {
        let g = self.forwards.lock().unwrap_or_else(|e| e.into_inner());
        f(&g)
    }

    pub(crate) fn info(&self) -> SessionInfo {
        SessionInfo {
            client_id: self.client_id.clone(),
            domain: self.domain.clone(),
            vip: self.vip,
            remote: self.remote(),
            transport: self.transport(),
            connected_at: self.connected_at,
            plaintext: self.plaintext,
            forwards: self.forwards.lock().map(|f| f.iter().map(|r| r.info.clone()).collect()).unwrap_or_default(),
            open_streams: self.max_streams.saturating_sub(self.streams.available_permits()),
        }
    }

    /// Where the client is: over QUIC where its connection is now (it may
    /// have moved since it connected), else where it connected from.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.quic.get().map_or(self.remote, |q| q.remote())
    }

    /// How the client reaches the server.
    pub(crate) fn transport(&self) -> &'static str {
        if self.quic.get().is_some() {
            "quic"
        } else {
            "tcp"
        }
    }

    /// Closes the session from the server's side, telling the client why.
    /// Ends the session's streams and stops its forwards (each plugin
    /// within [`PLUGIN_STEP_TIMEOUT`]): the public ports they had, to be
    /// remembered for the client's return.
    pub(crate) async fn wind_down(&self) -> HashMap<ForwardKey, u16> {
        self.kill.cancel();
        self.stop.cancel();
        let forwards = self.forwards.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default();
        let mut ports = HashMap::new();
        for f in &forwards {
            if tokio::time::timeout(PLUGIN_STEP_TIMEOUT, f.plugin.stop_proxy(&f.meta)).await.is_err() {
                warn!(protocol = %f.meta.protocol, "plugin did not stop the forward in time");
            }
            if let Some(p) = f.info.public_port {
                ports.insert(f.key.clone(), p);
            }
        }
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        self.spares.close();
        ports
    }

    pub(crate) fn close(&self, reason: &str) {
        let _ = self.out.try_send(Box::new(ServerMessage::GoingAway { reason: reason.to_string() }));
        self.kill.cancel();
    }

    /// A data channel of this session on `tcp`: as it is for a plaintext
    /// session, else sealed with the keys `keys` derives (only then).
    pub(crate) fn channel(&self, tcp: TcpStream, keys: impl FnOnce(&SessionKeys) -> ChannelKeys) -> Channel {
        if self.plaintext {
            return Channel::Plain(tcp);
        }
        let k = keys(&self.keys);
        Channel::Sealed(Box::new(SecureStream::new(tcp, &k.s2c, &k.c2s, BytesMut::new())))
    }

    /// Hands a data channel to the visitor waiting for `stream`; `None` if
    /// no one waits (expired, already claimed, or never asked for).
    pub(crate) fn claim(&self, stream: u64) -> Option<Pending> {
        self.pending.lock().ok()?.remove(&stream)
    }

    fn refuse_pending(&self, stream: u64, reason: String) {
        if let Some(tx) = self.claim(stream) {
            let _ = tx.send(Err(OpenError::Refused(reason)));
        }
    }
}

/// A session's spare channels (`spare_hello`): idle, authenticated data
/// channels by the client's id, oldest first, that streams take so as not
/// to wait for the client to dial one.
#[derive(Debug)]
pub(crate) struct SparePool {
    /// How many it may hold (`limits.spareChannels` when the session began).
    pub(crate) limit: usize,
    /// `None` once the session has let them go.
    idle: Mutex<Option<VecDeque<Spare>>>,
}

/// An idle spare channel: its connection and what its keys derive from.
/// The cipher state (about 800 bytes) is made when a stream takes it, so
/// the spares of ten thousand idle sessions cost their sockets only.
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) id: u64,
    pub(crate) nonce: [u8; 16],
    pub(crate) tcp: TcpStream,
}

impl SparePool {
    pub(crate) fn new(limit: usize) -> Self {
        SparePool { limit, idle: Mutex::new(Some(VecDeque::new())) }
    }

    /// Keeps `chan` for a later stream. Refused (and so closed) once the
    /// pool is closed, or when it holds `limit` channels the client has not
    /// closed, or one with the same id: a client that follows the protocol
    /// never sends more than it was granted.
    pub(crate) fn add(&self, spare: Spare) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Some(idle) = idle.as_mut() else { return false };
        idle.retain(|s| !opennotr_transport::peer_closed(&s.tcp));
        if idle.len() >= self.limit || idle.iter().any(|s| s.id == spare.id) {
            return false;
        }
        idle.push_back(spare);
        true
    }

    /// The oldest spare the client has not closed.
    pub(crate) fn take(&self) -> Option<Spare> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let idle = idle.as_mut()?;
        while let Some(spare) = idle.pop_front() {
            if !opennotr_transport::peer_closed(&spare.tcp) {
                return Some(spare);
            }
        }
        None
    }

    /// Spares held now.
    pub(crate) fn len(&self) -> usize {
        self.idle.lock().map(|i| i.as_ref().map_or(0, VecDeque::len)).unwrap_or(0)
    }

    /// Closes every spare, and every one that arrives later.
    pub(crate) fn close(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// What a client exports at its VIP: the local port of each forward (its
/// transport is the forward's: `udp` for udp, TCP for every other plugin),
/// and its `vip_ports`. The first entry for a (transport, port) wins.
pub(crate) fn exports(
    forwards: &[ForwardRequest],
    vip_ports: &[VipPort],
) -> HashMap<(StreamProtocol, u16), SocketAddr> {
    let mut out = HashMap::new();
    for f in forwards {
        let proto = if f.protocol == "udp" { StreamProtocol::Udp } else { StreamProtocol::Tcp };
        out.entry((proto, f.local_port)).or_insert(SocketAddr::new(f.local_ip, f.local_port));
    }
    for v in vip_ports {
        out.entry((v.protocol, v.port)).or_insert(SocketAddr::new(v.local_ip, v.port));
    }
    out
}

/// The [`Tunnel`] plugins get: opens streams on this session, counted in
/// the forward's (or the VIP's) counters and in how streams got a channel.
#[derive(Debug)]
pub(crate) struct SessionTunnel(pub(crate) Arc<Session>, pub(crate) Arc<Counters>, pub(crate) Arc<ChannelStats>);

/// How streams got their data channel, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ChannelStats {
    /// A spare the client had opened ahead.
    pub(crate) spare: AtomicU64,
    /// Asked for over the control connection and dialed by the client.
    pub(crate) dialed: AtomicU64,
    /// Refused by the client (`stream_refused`): a target it does not
    /// declare, or a service it cannot reach.
    pub(crate) refused: AtomicU64,
}

impl SessionTunnel {
    /// The bandwidth limits a new stream of this tunnel is under: its
    /// session's and its forward's.
    fn limits(&self) -> Throttles {
        Throttles::new([self.0.bandwidth.get().cloned(), self.1.limit.get().cloned()])
    }
}

#[async_trait]
impl Tunnel for SessionTunnel {
    fn multiplexes(&self) -> bool {
        self.0.multiplex
    }

    async fn open_stream(
        &self,
        protocol: StreamProtocol,
        target: SocketAddr,
        visitor: Option<Visitor>,
    ) -> Result<TunnelStream, OpenError> {
        let s = &self.0;
        let (peer, local) = (visitor.map(|v| v.peer), visitor.and_then(|v| v.local));
        if s.kill.is_cancelled() {
            return Err(OpenError::SessionClosed);
        }
        if protocol == StreamProtocol::Mux && !s.multiplex {
            return Err(OpenError::Refused("the client cannot multiplex streams (an older opennotr)".into()));
        }
        let permit = s.streams.clone().try_acquire_owned().map_err(|_| OpenError::TooManyStreams)?;
        let stream = s.next_stream.fetch_add(1, Ordering::Relaxed);
        // QUIC: a stream of the session's connection; it has no data
        // channels, spare or dialed.
        if let Some(q) = s.quic.get() {
            let open = tokio::time::timeout(s.connect_timeout, q.open(stream, protocol, target, peer, local));
            let chan = tokio::select! {
                r = open => r.unwrap_or(Err(OpenError::Timeout)),
                _ = s.kill.cancelled() => Err(OpenError::SessionClosed),
            }?;
            return Ok(TunnelStream::new(chan, Some(Box::new(permit))).counted(self.1.clone()).limited(self.limits()));
        }
        // A spare channel: the stream starts now. The `connect` naming it
        // crosses to the client beside the stream's first bytes, so a visitor
        // waits for no round trip to the client. Should the client refuse
        // (undeclared target, service down), it closes the channel, and the
        // visitor sees the close it would have seen anyway.
        if let Some(Spare { id: channel, nonce, tcp }) = s.spares.take() {
            let chan = s.channel(tcp, |k| k.spare_channel_keys(channel, &nonce));
            let connect = ServerMessage::Connect { stream, protocol, target, peer, local, channel: Some(channel) };
            let sent = tokio::select! {
                r = tokio::time::timeout(s.connect_timeout, s.out.send(Box::new(connect))) => matches!(r, Ok(Ok(()))),
                _ = s.kill.cancelled() => false,
            };
            if !sent {
                return Err(OpenError::SessionClosed);
            }
            self.2.spare.fetch_add(1, Ordering::Relaxed);
            return Ok(TunnelStream::new(chan, Some(Box::new(permit))).counted(self.1.clone()).limited(self.limits()));
        }
        self.2.dialed.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        s.pending.lock().map_err(|_| OpenError::SessionClosed)?.insert(stream, tx);
        let ask = async {
            s.out
                .send(Box::new(ServerMessage::Connect { stream, protocol, target, peer, local, channel: None }))
                .await
                .map_err(|_| OpenError::SessionClosed)?;
            rx.await.map_err(|_| OpenError::SessionClosed)?
        };
        let result = tokio::select! {
            r = tokio::time::timeout(s.connect_timeout, ask) => r.unwrap_or(Err(OpenError::Timeout)),
            _ = s.kill.cancelled() => Err(OpenError::SessionClosed),
        };
        if result.is_err() {
            s.claim(stream);
        }
        Ok(TunnelStream::new(result?, Some(Box::new(permit))).counted(self.1.clone()).limited(self.limits()))
    }
}

/// Runs `meta`'s forward on the first of `ports` the plugin takes (a
/// reconnecting client's leased port, then the one asked for), each try
/// with a context of its own from `ctx` and under [`PLUGIN_STEP_TIMEOUT`].
pub(crate) async fn run_proxy_on(
    plugin: &dyn Plugin,
    meta: &mut ForwardMeta,
    ports: impl IntoIterator<Item = u16>,
    ctx: impl Fn() -> ForwardContext,
) -> Result<opennotr_plugin::Endpoint, String> {
    let mut outcome = Err("not started".to_string());
    for port in ports {
        meta.public_port = port;
        outcome = match tokio::time::timeout(PLUGIN_STEP_TIMEOUT, plugin.run_proxy(meta, ctx())).await {
            Ok(Ok(ep)) => Ok(ep),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the plugin did not start the forward in time".into()),
        };
        if outcome.is_ok() {
            break;
        }
    }
    outcome
}

/// Starts the requested forwards; one that fails does not stop the others.
pub(crate) async fn start_forwards(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    cred: Option<&opennotr_config::Credential>,
    requests: &[ForwardRequest],
    leased: &HashMap<ForwardKey, u16>,
) -> Vec<ForwardResult> {
    let mut results = Vec::with_capacity(requests.len());
    let limits = shared.limits();
    let max = limits.max_forwards_per_client;
    for (i, req) in requests.iter().enumerate() {
        let fail = |error: String| {
            let m = format!("{} forward (public port {}): {error}", req.protocol, req.public_port);
            shared.refused(session.remote, session.client.as_deref(), "forward_refused", &m);
            ForwardResult { request: req.clone(), public_port: None, url: None, error: Some(error), bandwidth: None }
        };
        if i >= max {
            results.push(fail(format!("the server allows at most {max} forwards per client")));
            continue;
        }
        if let Some(c) = cred {
            if !c.allows_protocol(&req.protocol) {
                results.push(fail(format!(
                    "client {} may not use protocol {:?} (allowed: {})",
                    c.name,
                    req.protocol,
                    c.protocols.join(", ")
                )));
                continue;
            }
            if !c.allows_port(req.public_port) {
                let ranges: Vec<String> = c.ports.iter().map(|r| r.to_string()).collect();
                results.push(fail(format!(
                    "client {} may not use public port {} (allowed: {})",
                    c.name,
                    req.public_port,
                    ranges.join(", ")
                )));
                continue;
            }
        }
        let access = match crate::access::for_forward(shared, session.client.as_deref(), &session.domain, cred, req) {
            Ok(a) => a,
            Err(e) => {
                results.push(fail(e));
                continue;
            }
        };
        let counters = Arc::new(Counters::default());
        let bandwidth = crate::bandwidth::effective(crate::bandwidth::forward_limit(cred, &limits), req.bandwidth);
        if let Some(t) = crate::bandwidth::throttle(bandwidth) {
            let _ = counters.limit.set(t);
        }
        let mut tunnel: Arc<dyn Tunnel> =
            Arc::new(SessionTunnel(session.clone(), counters.clone(), shared.channel_stats.clone()));
        if let Some(policy) = &access {
            tunnel = Arc::new(crate::access::AccessTunnel { inner: tunnel, policy: policy.clone() });
        }
        let Some(plugin) = shared.plugin(&req.protocol) else {
            let all = shared.plugins();
            let have: Vec<_> = all.keys().map(String::as_str).collect();
            results.push(fail(format!(
                "protocol {:?} is not available on this server (it has: {})",
                req.protocol,
                have.join(", ")
            )));
            continue;
        };
        let key = ForwardKey {
            protocol: req.protocol.clone(),
            requested_port: req.public_port,
            local_ip: req.local_ip,
            local_port: req.local_port,
        };
        let mut meta = ForwardMeta {
            id: shared.next_forward.fetch_add(1, Ordering::Relaxed),
            protocol: req.protocol.clone(),
            public_port: req.public_port,
            vip: session.vip,
            local_ip: req.local_ip,
            local_port: req.local_port,
            domain: session.domain.clone(),
            raw_config: req.raw_config.clone(),
            client_id: session.client_id.clone(),
        };
        let leased_port = if req.public_port == 0 { leased.get(&key).copied() } else { None };
        let mut outcome = Err("not started".to_string());
        // A grouped forward joins its group's forward instead of running one.
        let mut plugin = plugin;
        if let Some(group) = &req.group {
            // Port 0 joins the group's port: the credential must allow
            // that one, as it would had the client asked for it.
            let port = shared.groups.public_port(&req.protocol, &group.name);
            if let (Some(c), Some(p)) = (cred, port.filter(|p| *p != 0)) {
                if !c.allows_port(p) {
                    results
                        .push(fail(format!("client {} may not use public port {p}, group {}'s", c.name, group.name)));
                    continue;
                }
            }
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let join = crate::group::Join {
                session: session.id,
                index,
                group,
                meta: &meta,
                tunnel: tunnel.clone(),
                kill: session.kill.clone(),
                counters: counters.clone(),
                leased_port,
                access: access.clone(),
            };
            outcome = shared.groups.join(shared, &plugin, join).await.map(|(ep, member)| {
                plugin = member;
                ep
            });
        } else if let Err(e) = crate::group::check_alone(shared, session, &req.protocol) {
            results.push(fail(e));
            continue;
        }
        if req.group.is_none() {
            let ports = leased_port.into_iter().chain([req.public_port]);
            outcome = run_proxy_on(&*plugin, &mut meta, ports, || ForwardContext {
                tunnel: tunnel.clone(),
                stop: session.stop.child_token(),
                kill: session.kill.clone(),
                tracker: shared.streams.clone(),
                limits: ForwardLimits { max_udp_flows: limits.max_udp_flows_per_forward },
                access: access.clone().map(|a| a as Arc<dyn opennotr_plugin::Access>),
            })
            .await;
        }
        match outcome {
            Ok(ep) => {
                let info = ForwardInfo {
                    protocol: req.protocol.clone(),
                    public_port: ep.public_port,
                    url: ep.url.clone(),
                    target: meta.target(),
                };
                info!(protocol = %req.protocol, url = %ep.url, target = %meta.target(), "forward started");
                if let Ok(mut f) = session.forwards.lock() {
                    f.push(RunningForward { meta, plugin, key, info, counters, access });
                }
                results.push(ForwardResult {
                    request: req.clone(),
                    public_port: ep.public_port,
                    url: Some(ep.url),
                    error: None,
                    bandwidth,
                });
            }
            Err(e) => {
                info!(protocol = %req.protocol, public_port = req.public_port, error = %e, "forward refused");
                results.push(fail(e));
            }
        }
    }
    results
}

/// Why a session ended, for the log.
#[derive(Debug)]
enum End {
    ClientClosed,
    Silent(Duration),
    /// Closed from elsewhere (replaced by a reconnect, a failed write);
    /// whoever closed it logged why.
    Closed,
    Shutdown,
    Error(String),
}

/// Runs the control loop until the session ends, then cleans up.
pub(crate) async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    mut reader: FrameReader<ReadHalf<Channel>>,
    writer: FrameWriter<WriteHalf<Channel>>,
    outbox: mpsc::Receiver<Outgoing>,
) {
    let timeout = shared.cfg.server.keepalive_timeout;
    // The writer stops when this loop is done (not on `kill` itself): a
    // parting `going_away`, queued after `kill` fires, must still go out.
    let done = CancellationToken::new();
    let writer_task = tokio::spawn(write_loop(writer, outbox, session.kill.clone(), done.clone(), timeout));
    // Clients ping on their own; the server pings only a client it has not
    // heard from for a whole interval, so a live session costs one
    // exchange per interval, not two, and no wake-up of this task.
    let interval = shared.cfg.server.keepalive_interval;
    let ping = tokio::time::sleep(interval);
    tokio::pin!(ping);
    let mut seq = 0u64;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let end = loop {
        tokio::select! {
            frame = reader.next() => {
                let msg = match frame {
                    Ok(f) => ClientMessage::from_bytes(&f),
                    Err(TransportError::Closed) => break End::ClientClosed,
                    Err(e) => break End::Error(e.to_string()),
                };
                let now = Instant::now();
                deadline.as_mut().reset(now + timeout);
                ping.as_mut().reset(now + interval);
                match msg {
                    Ok(ClientMessage::Ping { seq }) => { let _ = session.out.try_send(Box::new(ServerMessage::Pong { seq })); }
                    Ok(ClientMessage::Pong { .. }) => {}
                    Ok(ClientMessage::ForwardHealth { forward, healthy }) => {
                        if !shared.groups.health(session.id, forward, healthy) {
                            debug!(forward, "health of a forward in no group; ignored");
                        }
                    }
                    Ok(ClientMessage::StreamRefused { stream, reason }) => {
                        debug!(stream, %reason, "client refused stream");
                        shared.channel_stats.refused.fetch_add(1, Ordering::Relaxed);
                        session.refuse_pending(stream, reason);
                    }
                    Ok(other) => break End::Error(format!("unexpected message {other:?}")),
                    Err(e) => break End::Error(e.to_string()),
                }
            }
            _ = &mut ping => {
                seq += 1;
                let _ = session.out.try_send(Box::new(ServerMessage::Ping { seq }));
                ping.as_mut().reset(Instant::now() + interval);
            }
            _ = &mut deadline => break End::Silent(timeout),
            _ = session.kill.cancelled() => {
                break if shared.kill.is_cancelled() { End::Shutdown } else { End::Closed };
            }
        }
    };
    match &end {
        End::ClientClosed => info!("client disconnected"),
        End::Silent(t) => warn!(timeout_secs = t.as_secs_f64(), "client silent too long; closing its session"),
        End::Closed => debug!("session closed by the server"),
        End::Shutdown => {
            let _ = session.out.try_send(Box::new(ServerMessage::GoingAway { reason: "server shutting down".into() }));
        }
        End::Error(e) => warn!(error = %e, "closing session after a protocol error"),
    }
    // The writer flushes what is queued (a parting `going_away`) and stops.
    drop(reader);
    session.kill.cancel();
    done.cancel();
    let _ = writer_task.await;
}

/// Writes queued messages until `done`, then flushes what is queued and
/// half-closes; cancels `kill` if the client stops taking them.
async fn write_loop(
    mut writer: FrameWriter<WriteHalf<Channel>>,
    mut outbox: mpsc::Receiver<Outgoing>,
    kill: CancellationToken,
    done: CancellationToken,
    timeout: Duration,
) {
    loop {
        let msg = tokio::select! {
            m = outbox.recv() => m,
            _ = done.cancelled() => {
                // Flush what is already queued (a parting `going_away`).
                while let Ok(m) = outbox.try_recv() {
                    if tokio::time::timeout(Duration::from_secs(1), writer.send(&m.to_bytes())).await.is_err() { break; }
                }
                None
            }
        };
        let Some(msg) = msg else { break };
        match tokio::time::timeout(timeout, writer.send(&msg.to_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "control write failed");
                kill.cancel();
                break;
            }
            Err(_) => {
                warn!("client stopped reading its control channel; closing its session");
                kill.cancel();
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair: the pool's end as a channel, and the client's end.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, client)
    }

    fn spare(id: u64, tcp: TcpStream) -> Spare {
        Spare { id, nonce: [0; 16], tcp }
    }

    #[tokio::test]
    async fn holds_at_most_its_limit_of_live_spares() {
        let pool = SparePool::new(2);
        let (a, _ca) = pair().await;
        assert!(pool.add(spare(1, a)));
        assert!(!pool.add(spare(1, pair().await.0)), "a repeated id");
        let (b, _cb) = pair().await;
        assert!(pool.add(spare(2, b)));
        assert!(!pool.add(spare(3, pair().await.0)), "over the limit");
        assert_eq!(pool.len(), 2);
        pool.take();
        // A spare the client closed makes room, and is never handed out.
        let (dead, cd) = pair().await;
        drop(cd);
        dead.readable().await.unwrap();
        assert!(pool.add(spare(4, dead)));
        let (e, _ce) = pair().await;
        assert!(pool.add(spare(5, e)), "the closed one made room");
        assert_eq!(pool.take().map(|s| s.id), Some(2));
        assert_eq!(pool.take().map(|s| s.id), Some(5));
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn a_closed_pool_keeps_nothing() {
        let pool = SparePool::new(4);
        let (a, mut ca) = pair().await;
        assert!(pool.add(spare(1, a)));
        pool.close();
        assert_eq!(pool.len(), 0);
        // The client sees its spare closed.
        let mut buf = [0u8; 1];
        assert_eq!(tokio::io::AsyncReadExt::read(&mut ca, &mut buf).await.unwrap(), 0);
        assert!(!pool.add(spare(2, pair().await.0)));
        assert!(pool.take().is_none());
    }
}
