//! The virtual LAN: programs on the server host reach a client at
//! `VIP:port` as if it were on a local network.
//!
//! Firewall rules (`opennotr_tproxy::rules`) divert connections and
//! datagrams addressed to an exported `VIP:port` into a transparent TCP
//! listener (`server.tcplisten`) and a transparent UDP socket
//! (`server.udplisten`); everything else addressed to the VIP range is
//! refused by the rules themselves. Here the original destination picks the
//! session (by VIP) and the target (by port), and the traffic goes down that
//! client's tunnel like a visitor's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opennotr_config::ServerConfig;
use opennotr_plugin::{StreamProtocol, Tunnel, Visitor};
use opennotr_tproxy::{Proto, RuleSpec, Rules, TransparentUdp};
use opennotr_transport::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::holdings::Holder;
use crate::plugins::udp::{FlowEnds, FlowTable, FlowTo};
use crate::session::{Session, SessionTunnel};
use crate::Shared;

/// Idle time after which a UDP flow to a VIP is dropped.
const UDP_IDLE: Duration = Duration::from_secs(30);

/// The transparent sockets and the rules feeding them.
pub(crate) struct Setup {
    pub(crate) rules: Arc<Rules>,
    tcp: TcpListener,
    udp: Option<TransparentUdp>,
}

/// Binds the transparent sockets and installs the rules, or says why not.
pub(crate) fn setup(cfg: &ServerConfig) -> Result<Option<Setup>, String> {
    let Some(tcp_addr) = cfg.server.tcp_listen else { return Ok(None) };
    let tcp = opennotr_tproxy::transparent_tcp_listener(tcp_addr)
        .map_err(|e| format!("cannot open the transparent TCP listener on {tcp_addr}: {e}"))?;
    let udp = match cfg.server.udp_listen {
        Some(a) => {
            Some(TransparentUdp::bind(a).map_err(|e| format!("cannot open the transparent UDP socket on {a}: {e}"))?)
        }
        None => None,
    };
    let spec = RuleSpec {
        cidr: cfg.dhcp.cidr,
        tcp: tcp.local_addr().unwrap_or(tcp_addr),
        udp: udp.as_ref().and_then(|u| u.local_addr().ok()),
        allow_remote: cfg.server.vlan_allow_remote,
    };
    let rules = Rules::install(&spec).map_err(|e| format!("cannot install the firewall rules: {e}"))?;
    info!(
        cidr = %cfg.dhcp.cidr.trunc(),
        tcp = %spec.tcp,
        udp = ?spec.udp,
        allow_remote = spec.allow_remote,
        "virtual LAN on: programs on this host reach clients at their VIPs"
    );
    Ok(Some(Setup { rules: Arc::new(rules), tcp, udp }))
}

pub(crate) fn proto(p: StreamProtocol) -> Proto {
    match p {
        StreamProtocol::Tcp | StreamProtocol::Mux => Proto::Tcp,
        StreamProtocol::Udp => Proto::Udp,
    }
}

/// Makes a session's exports reachable at its VIP (`on`), or not.
pub(crate) async fn export(shared: &Shared, s: &Session, on: bool) {
    let Some(rules) = shared.vlan.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
    let ports = if on { s.exports.keys().map(|&(p, port)| (proto(p), port)).collect() } else { Vec::new() };
    if let Err(e) = rules.export(s.vip, ports).await {
        warn!(vip = %s.vip, error = %e, "cannot update the exported VIP ports");
    }
}

/// On a node of a cluster, keeps the other nodes' clients' VIPs exported
/// here too (their ports as their claims say), until `stop`: a program on
/// this host reaches them through node links ([`crate::links`]).
async fn export_elsewhere(shared: Arc<Shared>, stop: CancellationToken) {
    let (Some(cluster), Some(rules)) =
        (shared.cluster.clone(), shared.vlan.lock().unwrap_or_else(|e| e.into_inner()).clone())
    else {
        return;
    };
    let mut changes = cluster.routes_changes();
    let mut exported: std::collections::HashMap<std::net::Ipv4Addr, Vec<(Proto, u16)>> = Default::default();
    loop {
        let routes = changes.borrow_and_update().clone();
        let want: std::collections::HashMap<_, _> =
            routes.vips.iter().map(|(ip, (_, ports))| (*ip, ports.clone())).collect();
        for ip in exported.keys().filter(|ip| !want.contains_key(ip)).copied().collect::<Vec<_>>() {
            // A VIP of this node's own client is exported by its session.
            if shared.state().by_vip(ip).is_none() {
                if let Err(e) = rules.export(ip, Vec::new()).await {
                    warn!(vip = %ip, error = %e, "cannot update the exported VIP ports");
                }
            }
            exported.remove(&ip);
        }
        for (ip, ports) in want {
            if exported.get(&ip) != Some(&ports) {
                if let Err(e) = rules.export(ip, ports.clone()).await {
                    warn!(vip = %ip, error = %e, "cannot export another node's VIP here");
                }
                exported.insert(ip, ports);
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// Serves the transparent sockets until `stop`.
pub(crate) fn spawn(setup: Setup, shared: Arc<Shared>, stop: CancellationToken) {
    tokio::spawn(export_elsewhere(shared.clone(), stop.clone()).instrument(info_span!("vlan_elsewhere")));
    tokio::spawn(tcp_loop(setup.tcp, shared.clone(), stop.clone()).instrument(info_span!("vlan_tcp")));
    if let Some(udp) = setup.udp {
        tokio::spawn(udp_loop(udp, shared, stop).instrument(info_span!("vlan_udp")));
    }
}

async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut acceptor = Acceptor::new(listener);
    while let Some((sock, peer)) = acceptor.next(&stop).await {
        let span = info_span!("vip_conn", %peer);
        shared.streams.spawn(tcp_conn(shared.clone(), sock, peer).instrument(span));
    }
}

fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

async fn tcp_conn(shared: Arc<Shared>, mut sock: TcpStream, peer: SocketAddr) {
    let Ok(dst) = sock.local_addr() else { return };
    // The rules let only exported ports through; a miss here is a session
    // that just ended, or a direct connection to the listener itself.
    let (session, target) = match Holder::of(&shared, dst, StreamProtocol::Tcp) {
        Some(Holder::Here(session, target)) => (session, target),
        Some(Holder::Node(node)) => return elsewhere(&shared, sock, peer, dst, node).await,
        None => {
            debug!(%dst, "nothing exported there; reset");
            return reset(&sock);
        }
    };
    if !crate::access::admit_vip(&shared, &session, StreamProtocol::Tcp, dst.port(), peer.ip()) {
        debug!(%dst, "refused by the access rules; reset");
        return reset(&sock);
    }
    let kill = session.kill.clone();
    let tunnel = SessionTunnel(session.clone(), session.vip_counters.clone(), shared.channel_stats.clone());
    let opened = tokio::select! {
        s = tunnel.open_stream(StreamProtocol::Tcp, target, Some(Visitor::new(peer).reached(Some(dst)))) => s,
        _ = kill.cancelled() => return reset(&sock),
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            debug!(%dst, error = %e, "client cannot reach its service; reset");
            return reset(&sock);
        }
    };
    tokio::select! {
        r = stream.relay_with(&mut sock) => match r {
            Ok((up, down)) => debug!(%dst, up, down, "VIP connection closed"),
            Err(e) => debug!(%dst, error = %e, "VIP connection ended with an error"),
        },
        _ = kill.cancelled() => {}
    }
}

/// A connection to a VIP another node's client holds: carried to that
/// node.
async fn elsewhere(shared: &Shared, mut sock: TcpStream, peer: SocketAddr, dst: SocketAddr, node: String) {
    let (Some(links), SocketAddr::V4(v4)) = (&shared.links, dst) else { return reset(&sock) };
    let header = opennotr_proto::NodeStream::Vip { vip: *v4.ip(), port: v4.port(), visitor: peer, udp: false };
    let mut there = match links.open(&node, &header).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%dst, %node, error = %e, "cannot carry the connection to its node; reset");
            return reset(&sock);
        }
    };
    let kill = shared.kill.clone();
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut sock, &mut there) => match r {
            Ok((up, down)) => debug!(%dst, %node, up, down, "VIP connection carried to its node closed"),
            Err(e) => debug!(%dst, %node, error = %e, "VIP connection carried to its node ended with an error"),
        },
        _ = kill.cancelled() => {}
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut there).await;
}

/// Where a UDP flow to `dst`, a VIP another node's client holds, goes: to
/// that node.
fn udp_elsewhere(shared: &Shared, peer: SocketAddr, dst: SocketAddr, holder: Holder) -> Option<FlowTo> {
    let (Holder::Node(node), Some(links), SocketAddr::V4(v4)) = (holder, &shared.links, dst) else { return None };
    let header = opennotr_proto::NodeStream::Vip { vip: *v4.ip(), port: v4.port(), visitor: peer, udp: true };
    Some(FlowTo::Node(links.clone(), node, header))
}

type FlowKey = (SocketAddr, SocketAddr);

async fn udp_loop(sock: TransparentUdp, shared: Arc<Shared>, stop: CancellationToken) {
    let mut flows: FlowTable<FlowKey> = FlowTable::new();
    let mut buf = vec![0u8; opennotr_proto::datagram::MAX_DATAGRAM];
    let max_flows = shared.limits().max_udp_flows_per_forward;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = flows.reap() => {}
            r = sock.recv(&mut buf) => {
                let (n, peer, dst) = match r {
                    Ok(x) => x,
                    Err(e) => { debug!(error = %e, "recv failed"); continue; }
                };
                let key = (peer, dst);
                if !flows.contains(&key) {
                    let holder = Holder::of(&shared, dst, StreamProtocol::Udp);
                    let Some(Holder::Here(session, target)) = holder else {
                        // Another node's client's VIP: a flow over the link.
                        if let Some(to) = holder.and_then(|h| udp_elsewhere(&shared, peer, dst, h)) {
                            if flows.keys().filter(|(_, d)| d.ip() == dst.ip()).count() >= max_flows {
                                continue;
                            }
                            let reply = match opennotr_tproxy::reply_socket(dst) {
                                Ok(r) => Arc::new(r),
                                Err(e) => { warn!(%dst, error = %e, "cannot open a reply socket at the VIP"); continue; }
                            };
                            flows.start(key, FlowEnds { reply, peer, to }, UDP_IDLE, shared.kill.child_token(), &shared.streams);
                            flows.send(&key, &buf[..n]);
                        } else {
                            debug!(%dst, "nothing exported there; datagram dropped");
                        }
                        continue;
                    };
                    if !crate::access::admit_vip(&shared, &session, StreamProtocol::Udp, dst.port(), peer.ip()) {
                        continue;
                    }
                    if flows.keys().filter(|(_, d)| d.ip() == dst.ip()).count() >= max_flows {
                        debug!(%dst, "UDP flow limit of this VIP reached; datagram dropped");
                        continue;
                    }
                    let reply = match opennotr_tproxy::reply_socket(dst) {
                        Ok(r) => Arc::new(r),
                        Err(e) => { warn!(%dst, error = %e, "cannot open a reply socket at the VIP"); continue; }
                    };
                    let tunnel = Arc::new(SessionTunnel(session.clone(), session.vip_counters.clone(), shared.channel_stats.clone()));
                    let ends = FlowEnds { reply, peer, to: FlowTo::Client(tunnel, target) };
                    flows.start(key, ends, UDP_IDLE, session.kill.child_token(), &shared.streams);
                }
                // A full queue: the flow is slower than its sender; drop.
                flows.send(&key, &buf[..n]);
            }
        }
    }
}
