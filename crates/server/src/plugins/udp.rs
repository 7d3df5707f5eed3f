//! `udp`: a public UDP port per forward. Each remote peer is a flow with its
//! own stream to the client (datagram boundaries kept by
//! `opennotr_proto::datagram`); a flow idle for `sessionTimeout` seconds is
//! dropped with its stream, socket and tasks. When a flow cannot keep up,
//! datagrams are dropped, never queued without bound and never blocking
//! the other flows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use opennotr_plugin::{
    async_trait, CancellationToken, Carried, Endpoint, ForwardContext, ForwardMeta, Plugin, PluginError, PluginFactory,
    StreamProtocol, TaskTracker, Tunnel, Visitor,
};
use opennotr_proto::datagram;
use opennotr_transport::bandwidth::{Direction, Throttles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info_span, Instrument};

use super::{parse_config, PortRules, Running};

/// Datagrams waiting for a flow's stream; beyond this they are dropped.
const FLOW_QUEUE: usize = 512;
/// Largest batch of datagrams written to a stream at once.
const BATCH: usize = 64 * 1024;

/// Creates the `udp` plugin.
#[derive(Debug)]
pub struct UdpFactory;

impl PluginFactory for UdpFactory {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn setup(&self, config: &serde_json::Value) -> Result<Arc<dyn Plugin>, PluginError> {
        let rules: PortRules = parse_config("udp", config)?;
        rules.validate("udp")?;
        let idle = rules.session_timeout.unwrap_or(30.0);
        if !(idle.is_finite() && idle > 0.0 && idle <= 86_400.0) {
            return Err(PluginError::Config {
                key: "plugin.udp.sessionTimeout".into(),
                message: format!("{idle} is not a number of seconds between 0 and 86400"),
            });
        }
        Ok(Arc::new(UdpPlugin { rules, idle: Duration::from_secs_f64(idle), running: Running::default() }))
    }
}

struct UdpPlugin {
    rules: PortRules,
    idle: Duration,
    running: Running,
}

#[async_trait]
impl Plugin for UdpPlugin {
    async fn run_proxy(&self, meta: &ForwardMeta, ctx: ForwardContext) -> Result<Endpoint, PluginError> {
        let sock = self.rules.bind_with(meta.public_port, |a| async move { bind(a) }).await?;
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(meta.public_port);
        let serve = recv_loop(Arc::new(sock), meta.clone(), ctx.clone(), self.idle);
        Ok(self.running.start(meta, ctx.stop.clone(), port, "udp", serve))
    }

    async fn stop_proxy(&self, meta: &ForwardMeta) {
        self.running.stop(meta).await;
    }

    /// In range and free now: bound as `run_proxy` would, and dropped at
    /// once (port 0: some port of the range is free).
    async fn check_proxy(&self, meta: &ForwardMeta) -> Result<(), PluginError> {
        self.rules.bind_with(meta.public_port, |a| async move { bind(a) }).await.map(drop)
    }
}

/// Socket buffers asked for (the kernel caps them at `net.core.rmem_max`):
/// a burst that arrives while the receive loop is not scheduled waits here
/// instead of being dropped by the kernel.
const SOCKET_BUFFER: usize = 4 << 20;

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The live flows of one UDP socket, by key (the peer, or for the virtual
/// LAN the peer and the VIP:port it addressed). A flow that ends reports
/// itself; the table forgets it unless a newer flow took its key.
pub(crate) struct FlowTable<K> {
    flows: HashMap<K, (mpsc::Sender<Bytes>, u64, CancellationToken)>,
    ended_tx: mpsc::UnboundedSender<(K, u64)>,
    ended_rx: mpsc::UnboundedReceiver<(K, u64)>,
    generation: u64,
}

impl<K: Eq + std::hash::Hash + Clone + Send + std::fmt::Debug + 'static> FlowTable<K> {
    pub(crate) fn new() -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        FlowTable { flows: HashMap::new(), ended_tx, ended_rx, generation: 0 }
    }

    /// Waits for a flow to end and forgets it. Cancel-safe.
    pub(crate) async fn reap(&mut self) {
        if let Some((key, g)) = self.ended_rx.recv().await {
            if self.flows.get(&key).is_some_and(|f| f.1 == g) {
                self.flows.remove(&key);
            }
        }
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.flows.contains_key(key)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.flows.keys()
    }

    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    /// Starts a flow for `key` on `tracker`; it stops with `stop`.
    pub(crate) fn start(
        &mut self,
        key: K,
        ends: FlowEnds,
        idle: Duration,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) {
        self.generation += 1;
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let span = info_span!("flow", peer = %ends.peer, key = ?key);
        tracker.spawn(
            flow(ends, key.clone(), rx, idle, stop.clone(), self.ended_tx.clone(), self.generation).instrument(span),
        );
        self.flows.insert(key, (tx, self.generation, stop));
    }

    /// Queues a datagram for `key`'s flow; `false` if it was dropped (no
    /// such flow, or the flow is slower than its sender).
    pub(crate) fn send(&self, key: &K, datagram: &[u8]) -> bool {
        self.flows.get(key).is_some_and(|f| f.0.try_send(Bytes::copy_from_slice(datagram)).is_ok())
    }
}

impl<K> Drop for FlowTable<K> {
    fn drop(&mut self) {
        for (_, (_, _, stop)) in self.flows.drain() {
            stop.cancel();
        }
    }
}

async fn recv_loop(sock: Arc<UdpSocket>, meta: ForwardMeta, ctx: ForwardContext, idle: Duration) {
    let mut flows = FlowTable::new();
    let mut buf = vec![0u8; datagram::MAX_DATAGRAM];
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = flows.reap() => {}
            r = sock.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    // ICMP errors from earlier sends surface here; they
                    // concern one peer, not the socket.
                    Err(e) => { debug!(error = %e, "recv failed"); continue; }
                };
                if !flows.contains(&peer) {
                    // A refused source opens no flow: its datagrams are
                    // dropped here, each one counted, at the cost of a
                    // CIDR lookup.
                    if ctx.access.as_ref().is_some_and(|a| a.admit(peer.ip()).is_err()) {
                        continue;
                    }
                    if flows.len() >= ctx.limits.max_udp_flows {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            debug!(dropped, limit = ctx.limits.max_udp_flows, "flow limit reached; dropping datagrams of new peers");
                        }
                        continue;
                    }
                    let ends = FlowEnds { reply: sock.clone(), peer, to: FlowTo::Client(ctx.tunnel.clone(), meta.target()) };
                    flows.start(peer, ends, idle, ctx.kill.child_token(), &ctx.tracker);
                }
                if !flows.send(&peer, &buf[..n]) {
                    dropped += 1;
                }
            }
        }
    }
}

fn now_ms(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// Where a flow's datagrams come from and go to.
pub(crate) struct FlowEnds {
    /// Sends replies to the peer (for the plugin, its public socket; for the
    /// virtual LAN, a socket bound to the VIP).
    pub(crate) reply: Arc<UdpSocket>,
    /// The remote peer.
    pub(crate) peer: SocketAddr,
    /// Where the flow goes.
    pub(crate) to: FlowTo,
}

/// Where a flow's datagrams go.
pub(crate) enum FlowTo {
    /// To a session of this server: its tunnel, and what the client dials.
    Client(Arc<dyn Tunnel>, SocketAddr),
    /// To the node of a cluster whose client holds the VIP: a stream on the
    /// link to it, with its header (that node's limits apply there).
    Node(Arc<crate::links::Links>, String, opennotr_proto::NodeStream),
}

/// One flow: opens a stream to the client, then carries datagrams both ways
/// until it is idle for `idle`, either side closes, or `stop`. Reports its
/// end on `ended` as `(key, generation)` so the owner forgets it.
pub(crate) async fn flow<K: Send + 'static>(
    ends: FlowEnds,
    key: K,
    mut rx: mpsc::Receiver<Bytes>,
    idle: Duration,
    stop: CancellationToken,
    ended: mpsc::UnboundedSender<(K, u64)>,
    generation: u64,
) {
    let FlowEnds { reply: sock, peer, to } = ends;
    let visitor = Visitor::new(peer).reached(sock.local_addr().ok());
    let open = async {
        match to {
            FlowTo::Client(tunnel, target) => {
                let mut stream =
                    tunnel.open_stream(StreamProtocol::Udp, target, Some(visitor)).await.map_err(|e| e.to_string())?;
                // Datagrams over a bandwidth limit are dropped here, not
                // held back in the stream: late datagrams only add delay to
                // a protocol made for loss.
                let limits = stream.take_limits();
                Ok::<(Box<dyn Carried>, Throttles), String>((Box::new(stream), limits))
            }
            FlowTo::Node(links, node, header) => {
                let stream = links.open(&node, &header).await.map_err(|e| format!("node {node}: {e}"))?;
                Ok((Box::new(stream) as Box<dyn Carried>, Throttles::default()))
            }
        }
    };
    let opened = tokio::select! {
        s = open => s,
        _ = stop.cancelled() => { let _ = ended.send((key, generation)); return; }
    };
    let (stream, limits) = match opened {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "cannot open a flow to the client");
            let _ = ended.send((key, generation));
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let base = Instant::now();
    let last = AtomicU64::new(0);

    let to_client = async {
        let mut batch = BytesMut::with_capacity(BATCH);
        let passes =
            |d: &Bytes| limits.is_empty() || limits.police(Direction::Up, d.len() as u64, std::time::Instant::now());
        while let Some(d) = rx.recv().await {
            batch.clear();
            if passes(&d) {
                datagram::encode(&d, &mut batch);
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(d) if passes(&d) => {
                        datagram::encode(&d, &mut batch);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            last.store(now_ms(base), Ordering::Relaxed);
            if batch.is_empty() {
                continue;
            }
            if wr.write_all(&batch).await.is_err() {
                break;
            }
        }
    };
    let from_client = async {
        let mut buf = BytesMut::with_capacity(BATCH);
        loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while let Some(d) = datagram::decode(&mut buf) {
                last.store(now_ms(base), Ordering::Relaxed);
                if limits.is_empty() || limits.police(Direction::Down, d.len() as u64, std::time::Instant::now()) {
                    let _ = sock.send_to(&d, peer).await;
                }
            }
            buf.reserve(BATCH);
        }
    };
    let expiry = async {
        loop {
            let since = Duration::from_millis(now_ms(base) - last.load(Ordering::Relaxed).min(now_ms(base)));
            if since >= idle {
                break;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        _ = to_client => debug!("flow closed"),
        _ = from_client => debug!("client closed the flow"),
        _ = expiry => debug!(idle_secs = idle.as_secs_f64(), "flow idle; dropped"),
        _ = stop.cancelled() => {}
    }
    let _ = ended.send((key, generation));
}
