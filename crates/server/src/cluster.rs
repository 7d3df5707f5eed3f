//! This server as a node of a cluster on etcd (docs/cluster.md).
//!
//! The node registers `<prefix>/nodes/<node>` under a lease of its own and
//! keeps the lease alive; a node that dies leaves the cluster when its lease
//! expires (`cluster.leaseTtl`), and a clean stop revokes the lease, so it
//! leaves at once. The registration is a create-if-absent transaction: two
//! live processes never hold one node name, and a restarted node waits for
//! the lease of its previous run to expire before it takes its name back.
//!
//! Every node keeps a view of the live nodes, read from etcd every third of
//! the lease TTL together with the keepalive. etcd being slow or down never
//! reaches the sessions: the view says since when it has been stale.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opennotr_config::ClusterSection;
use opennotr_dns::etcd::{endpoint_base, Change, Error, Expect, Gateway, Kv, Lease, Put, Watch};
use opennotr_tproxy::Proto;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// First wait after a failure; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Bound of the lease revocation at a clean stop.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A node record larger than this is not one of ours.
const MAX_RECORD: usize = 4096;
/// Bound of one claim or release against one endpoint that answers (the
/// gateway's own request bound, and a second): a client waits for it
/// before its registration is answered.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(6);
/// The gateway's connect timeout: what an endpoint that drops packets
/// costs before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts of one claim racing with other writers.
const CLAIM_ATTEMPTS: usize = 3;
/// Clients of other nodes remembered after their claims went.
const GONE_CLIENTS: usize = 4096;

/// What a client held on a node ([`Routes::clients`]): its VIP and domain.
type ClientHeld = (Ipv4Addr, String);

/// Clients of other nodes whose claims went, by key, and their keys oldest
/// first.
type Gone = (std::collections::HashMap<String, ClientHeld>, std::collections::VecDeque<String>);
/// How long a client coming to this node waits for the node holding its
/// previous session to end it.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// What a node writes about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NodeRecord {
    /// `cluster.node`.
    pub(crate) node: String,
    /// Where clients and other nodes reach its control port.
    pub(crate) advertise: String,
    /// When this process registered, seconds since the Unix epoch.
    pub(crate) started: u64,
    /// Random per process: tells a node's restart from its previous run.
    pub(crate) instance: String,
    /// Its public addresses: what DNS answers for the domains its clients
    /// hold.
    #[serde(default)]
    pub(crate) public: Vec<IpAddr>,
}

/// What the cluster holds unique: a domain (`<prefix>/claims/domains/<domain>`)
/// or a VIP (`<prefix>/claims/vips/<ip>`), each claimed by one node's
/// session under that node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Claimed {
    Domain(String),
    Vip(Ipv4Addr),
    /// A client (its id, hashed: [`client_key`]): one session of it in the
    /// cluster at a time.
    Client(String),
}

/// How a client id appears in etcd: the first 128 bits of its SHA-256, in
/// hex. The id itself is what lets a client replace its own session, so it
/// stays out of etcd; and a key of fixed shape holds any id.
pub(crate) fn client_key(client_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, client_id.as_bytes());
    hex::encode(&digest.as_ref()[..16])
}

impl Claimed {
    /// Its key below `<prefix>/claims/`.
    fn key(&self) -> String {
        match self {
            Claimed::Domain(d) => format!("domains/{d}"),
            Claimed::Vip(ip) => format!("vips/{ip}"),
            Claimed::Client(k) => format!("clients/{k}"),
        }
    }
}

impl std::fmt::Display for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claimed::Domain(d) => f.write_str(d),
            Claimed::Vip(ip) => write!(f, "VIP {ip}"),
            Claimed::Client(_) => f.write_str("the client's session"),
        }
    }
}

/// A claim's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ClaimRecord {
    node: String,
    /// The session, hex.
    session: String,
    /// A VIP's exported ports (`tcp`/`udp`, port): what every node's
    /// virtual LAN lets through to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<(String, u16)>,
    /// A domain whose forwards every node's gateway serves (http, https,
    /// tls): DNS answers it with every live node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    anywhere: bool,
    /// A client's credential name (none: the shared key): a takeover is
    /// honoured only for the same credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// A client's VIP and domain: what it takes back on the node it moves
    /// to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
}

/// A node asks the node holding a client's session to end it (the client
/// came to it): `<prefix>/takeovers/<client key>`, under the asking node's
/// lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct TakeoverRecord {
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The session to end (hex), as the client's claim names it: a later
    /// session of the client is never ended by a takeover left behind.
    session: String,
}

/// A takeover asked of this node: end the session of the client whose
/// [`client_key`] is `client`, if it has credential `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Takeover {
    pub(crate) client: String,
    pub(crate) name: Option<String>,
    /// The session to end, hex.
    pub(crate) session: String,
    /// The node the client is on now.
    pub(crate) by: String,
}

/// Why a domain or VIP was not claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    /// Another node holds it (for `session`, hex).
    #[error("{what} is held by a client of node {node}")]
    Held { what: Claimed, node: String, session: String },
    /// etcd is out of reach, or this node is not registered.
    #[error("this node cannot reach the cluster's state to claim {what}: {why}; retry")]
    Unavailable { what: Claimed, why: String },
}

/// The cluster as this node last read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// This node holds its name in etcd now.
    pub(crate) registered: bool,
    /// The live nodes, by name (this one included once registered).
    pub(crate) nodes: Vec<NodeRecord>,
    /// Why the last exchange with etcd failed, while it fails.
    pub(crate) error: Option<String>,
    /// Another process holds this node's name (it is waiting for it): where
    /// that one says it is reached.
    pub(crate) held_by: Option<String>,
    /// Every claimed domain in the cluster and the node holding it, by
    /// domain.
    pub(crate) domains: Vec<(String, String)>,
}

/// The etcd endpoints of `cfg` as the gateway client takes them; one that
/// is not a URL or `host:port` is an error naming it.
pub(crate) fn endpoints(cfg: &ClusterSection) -> Result<Vec<String>, (String, String)> {
    cfg.etcd_endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint_base(e).map_err(|m| (format!("cluster.etcdEndpoints[{i}]"), m)))
        .collect()
}

/// Where this node says it is reached: `cluster.advertise`, else the first
/// public address with the control port, else the control listener's
/// address when it is a specific one. `None`: none of these says it.
pub(crate) fn advertise(cfg: &opennotr_config::ServerConfig, control: std::net::SocketAddr) -> Option<String> {
    if let Some(a) = cfg.cluster.as_ref().and_then(|c| c.advertise.clone()) {
        return Some(a);
    }
    let ip = cfg.server.public_ips.first().copied().or((!control.ip().is_unspecified()).then_some(control.ip()))?;
    Some(std::net::SocketAddr::new(ip, control.port()).to_string())
}

/// This node's membership.
#[derive(Debug)]
pub(crate) struct Cluster {
    cfg: ClusterSection,
    record: NodeRecord,
    endpoints: Vec<String>,
    view: RwLock<View>,
    /// The place this node holds, while it holds it.
    place: std::sync::Mutex<Place>,
    /// Claims and releases, one at a time, on a gateway of their own (the
    /// membership loop holds the other).
    claims: tokio::sync::Mutex<Gateway>,
    /// The domains and VIPs this node holds a claim on.
    held: std::sync::Mutex<std::collections::HashMap<Claimed, Held>>,
    /// Bound of one claim or release, the wait for its turn included.
    claim_bound: Duration,
    /// Set once the node is leaving: releases are left to the revocation.
    leaving: std::sync::atomic::AtomicBool,
    /// Counts the times this node lost its place: its lease went unrenewed
    /// for a whole TTL, so its claims are gone (or going) and its sessions
    /// must end.
    losses: tokio::sync::watch::Sender<u64>,
    /// The domains other nodes' clients hold, with those nodes' public
    /// addresses, for the embedded DNS server.
    remote: tokio::sync::watch::Sender<Arc<opennotr_dns::RemoteNames>>,
    /// Where the other nodes' domains and VIPs are, for node links.
    routes: tokio::sync::watch::Sender<Arc<Routes>>,
    /// Counts the times the view was rebuilt: something in the cluster
    /// changed (a claim came or went).
    shown: tokio::sync::watch::Sender<u64>,
    /// Clients of other nodes whose claims went, with the VIP and domain
    /// they held, oldest first (at most [`GONE_CLIENTS`]).
    gone: std::sync::Mutex<Gone>,
    /// Takeovers asked of this node, and their receiver until the server
    /// takes it.
    takeovers: (
        tokio::sync::mpsc::UnboundedSender<Takeover>,
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Takeover>>>,
    ),
}

/// The other live nodes as node links need them: which one serves each
/// domain, and where each is reached.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Routes {
    /// Domain → the node whose client holds it (never this node).
    pub(crate) domains: std::collections::HashMap<String, String>,
    /// Node → its `advertise` address (this node left out).
    pub(crate) nodes: std::collections::HashMap<String, String>,
    /// VIP → the node whose client holds it, and the ports it exports
    /// (never this node's).
    pub(crate) vips: std::collections::HashMap<Ipv4Addr, (String, Vec<(Proto, u16)>)>,
    /// Client (its [`client_key`]) → the VIP and domain it holds on
    /// another node.
    pub(crate) clients: std::collections::HashMap<String, (Ipv4Addr, String)>,
}

/// The lease this node holds its name and claims under, while registered.
#[derive(Debug, Clone, Copy)]
struct Place {
    lease: Option<i64>,
    /// The lease's TTL as etcd granted it.
    ttl: Duration,
    /// When the last renewal that etcd confirmed was sent: etcd's clock
    /// for the lease started after it, so the lease lives at least until
    /// `renewed + ttl`.
    renewed: tokio::time::Instant,
    /// Changes each time the place is given up: a renewal of an older
    /// lease must not bring it back.
    epoch: u64,
}

/// A claim this node holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    lease: i64,
    revision: i64,
    /// Sessions of this node sharing it (the members of a group).
    count: usize,
}

/// A claim as listed from etcd.
#[derive(Debug, Clone)]
struct ClaimKv {
    what: Claimed,
    node: String,
    lease: i64,
    mod_revision: i64,
    /// A VIP's exported ports.
    ports: Vec<(Proto, u16)>,
    /// A domain every node serves ([`ClaimRecord::anywhere`]).
    anywhere: bool,
    /// A client's VIP and domain ([`ClaimRecord::vip`]).
    held: Option<(Ipv4Addr, String)>,
}

/// Part of the TTL given up early, so that this node stops serving before
/// etcd lets another node claim what it held.
const MARGIN: Duration = Duration::from_millis(200);

impl Cluster {
    /// The membership of node `cfg.node`, reachable at `advertise` (its
    /// clients' domains at `public`), through `endpoints` (from
    /// [`endpoints`]); nothing happens before [`run`](Self::run).
    pub(crate) fn new(cfg: ClusterSection, endpoints: Vec<String>, advertise: String, public: Vec<IpAddr>) -> Cluster {
        let record = NodeRecord {
            node: cfg.node.clone(),
            advertise,
            started: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            instance: hex::encode(rand::random::<[u8; 8]>()),
            public,
        };
        // An endpoint that drops packets costs a connect timeout before
        // the next is tried; a claim waits for that.
        let claim_bound = CLAIM_TIMEOUT + CONNECT_TIMEOUT * endpoints.len().saturating_sub(1) as u32;
        let place = Place { lease: None, ttl: cfg.lease_ttl, renewed: tokio::time::Instant::now(), epoch: 0 };
        Cluster {
            cfg,
            record,
            claims: tokio::sync::Mutex::new(Gateway::new(endpoints.clone())),
            endpoints,
            view: RwLock::new(View::default()),
            place: std::sync::Mutex::new(place),
            held: Default::default(),
            claim_bound,
            leaving: Default::default(),
            losses: tokio::sync::watch::Sender::new(0),
            remote: tokio::sync::watch::Sender::new(Arc::default()),
            routes: tokio::sync::watch::Sender::new(Arc::default()),
            shown: tokio::sync::watch::Sender::new(0),
            gone: Default::default(),
            takeovers: {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (tx, std::sync::Mutex::new(Some(rx)))
            },
        }
    }

    /// This node's name.
    pub(crate) fn node(&self) -> &str {
        &self.record.node
    }

    /// The cluster as last read.
    pub(crate) fn view(&self) -> View {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn key(&self) -> String {
        format!("{}/nodes/{}", self.cfg.prefix, self.record.node)
    }

    /// The domains other nodes' clients hold, with those nodes' public
    /// addresses, as last read.
    pub(crate) fn remote_names(&self) -> tokio::sync::watch::Receiver<Arc<opennotr_dns::RemoteNames>> {
        self.remote.subscribe()
    }

    /// Where the other nodes' domains and VIPs are, as last read.
    pub(crate) fn routes(&self) -> Arc<Routes> {
        self.routes.borrow().clone()
    }

    /// What client `key` ([`client_key`]) holds on another node, or held on
    /// one whose claims went: its VIP and domain, to take back here.
    /// A remembered one whose VIP another client holds now is not.
    pub(crate) fn moved(&self, key: &str) -> Option<(Ipv4Addr, String)> {
        let routes = self.routes();
        if let Some(h) = routes.clients.get(key) {
            return Some(h.clone());
        }
        let gone = self.gone.lock().unwrap_or_else(|e| e.into_inner()).0.get(key).cloned()?;
        (!routes.vips.contains_key(&gone.0)).then_some(gone)
    }

    /// [`routes`](Self::routes), each time they change.
    pub(crate) fn routes_changes(&self) -> tokio::sync::watch::Receiver<Arc<Routes>> {
        self.routes.subscribe()
    }

    /// Changes each time this node loses its place in the cluster (see
    /// [`run`](Self::run)): its sessions are to be closed.
    pub(crate) fn losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.losses.subscribe()
    }

    /// The node is leaving: its claims go with the lease's revocation, not
    /// one delete at a time.
    pub(crate) fn leave(&self) {
        self.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn place(&self) -> std::sync::MutexGuard<'_, Place> {
        self.place.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease the node holds its place under now, if it does.
    fn lease(&self) -> Option<i64> {
        self.place().lease
    }

    /// Registers, renews and reads the cluster until `stop`, then leaves it.
    ///
    /// A lease that goes unrenewed for a whole TTL (etcd out of reach, or
    /// this node cut off from it) has expired, or soon will, with every
    /// claim on it: the node then gives up its place at once, without
    /// waiting for etcd to say so, and so does it whenever etcd says the
    /// lease or the node's key is gone. Its sessions are closed (see
    /// [`losses`](Self::losses)), new clients are refused until it is back,
    /// and it comes back under a new lease, so no claim of the old one
    /// lives on. Two nodes never serve one domain, even across a partition.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut etcd = Gateway::new(self.endpoints.clone());
        let mut backoff = BACKOFF_MIN;
        let mut lease = None;
        loop {
            let r = tokio::select! {
                r = self.member(&mut etcd, &mut lease, &mut backoff, &stop) => r,
                _ = self.watchdog() => Err(Error::LeaseLost),
            };
            if stop.is_cancelled() {
                break;
            }
            let Err(e) = r else { continue };
            if self.failed(&e) {
                warn!(error = %e, "cluster: etcd failed; retrying");
            } else {
                debug!(error = %e, "cluster: etcd still failing");
            }
            if matches!(e, Error::LeaseLost) {
                self.give_up(&mut etcd, &mut lease).await;
            }
            etcd.rewind();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.watchdog() => self.give_up(&mut etcd, &mut lease).await,
                _ = stop.cancelled() => break,
            }
            // While it holds a place, a retry comes before the lease runs out.
            let cap = if self.lease().is_some() { self.cfg.lease_ttl / 4 } else { BACKOFF_MAX };
            backoff = (backoff * 2).min(cap.max(BACKOFF_MIN));
        }
        self.leave();
        self.place().lease = None;
        if let Some(l) = lease {
            // Leaving at once, claims and all, rather than when the lease
            // would expire.
            let _ = tokio::time::timeout(REVOKE_TIMEOUT, etcd.revoke(l.id)).await;
            info!(node = self.node(), "left the cluster");
        }
        self.view.write().unwrap_or_else(|e| e.into_inner()).registered = false;
    }

    /// Gives up the place and its lease: its claims must not outlive the
    /// place, so the lease is revoked now if etcd answers, else it expires.
    async fn give_up(&self, etcd: &mut Gateway, lease: &mut Option<Lease>) {
        self.lose();
        if let Some(old) = lease.take() {
            let _ = tokio::time::timeout(REVOKE_TIMEOUT, etcd.revoke(old.id)).await;
        }
    }

    /// Returns once the place this node holds has gone its whole TTL (less
    /// [`MARGIN`]) without a confirmed renewal; never while it holds none.
    async fn watchdog(&self) {
        loop {
            let p = *self.place();
            let tick = self.cfg.lease_ttl / 3;
            if p.lease.is_none() {
                tokio::time::sleep(tick).await;
                continue;
            }
            let due = p.renewed + p.ttl.saturating_sub(MARGIN);
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.min(tokio::time::Instant::now() + tick)).await;
        }
    }

    /// Records a failure; true for the first of an outage.
    fn failed(&self, e: &Error) -> bool {
        let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
        let first = v.error.is_none();
        v.error = Some(e.to_string());
        first
    }

    /// Gives up this node's place, if it holds one: no more claims, its
    /// sessions close.
    fn lose(&self) {
        {
            let mut p = self.place();
            if p.lease.take().is_none() {
                return;
            }
            p.epoch += 1;
        }
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.view.write().unwrap_or_else(|e| e.into_inner()).registered = false;
        warn!(
            node = self.node(),
            ttl_secs = self.cfg.lease_ttl.as_secs_f64(),
            "cluster: this node lost its place (its lease went unrenewed, or is gone); its claims are gone: \
             closing its sessions"
        );
        self.losses.send_modify(|n| *n += 1);
    }

    /// Sends the other nodes' domains to DNS, and their domains and VIPs to
    /// node links, if they changed.
    fn publish_remote(&self, nodes: &[NodeRecord], domains: &[(String, String)], claims: &[&ClaimKv]) {
        let at: std::collections::HashMap<&str, &Vec<IpAddr>> =
            nodes.iter().filter(|n| n.node != self.record.node).map(|n| (n.node.as_str(), &n.public)).collect();
        // A domain every node serves is answered with every live node (this
        // one too); another node's other domains with that node.
        let everywhere: Vec<IpAddr> = nodes.iter().flat_map(|n| n.public.iter().copied()).collect();
        let remote: opennotr_dns::RemoteNames = claims
            .iter()
            .filter_map(|c| {
                let Claimed::Domain(domain) = &c.what else { return None };
                let live = c.node == self.record.node || at.contains_key(c.node.as_str());
                let ips = match (c.anywhere, c.node == self.record.node) {
                    (true, _) if live => everywhere.clone(),
                    (false, false) => at.get(c.node.as_str())?.to_vec(),
                    _ => return None,
                };
                Some((domain.clone(), ips))
            })
            .filter(|(_, ips)| !ips.is_empty())
            .collect();
        self.remote.send_if_modified(|cur| {
            if **cur == remote {
                return false;
            }
            *cur = Arc::new(remote);
            true
        });
        let others = nodes.iter().filter(|n| n.node != self.record.node);
        let routes = Routes {
            nodes: others.map(|n| (n.node.clone(), n.advertise.clone())).collect(),
            domains: domains
                .iter()
                .filter(|(_, node)| *node != self.record.node && at.contains_key(node.as_str()))
                .cloned()
                .collect(),
            clients: claims
                .iter()
                .filter(|c| c.node != self.record.node)
                .filter_map(|c| match (&c.what, &c.held) {
                    (Claimed::Client(k), Some(h)) => Some((k.clone(), h.clone())),
                    _ => None,
                })
                .collect(),
            vips: claims
                .iter()
                .filter(|c| c.node != self.record.node && at.contains_key(c.node.as_str()))
                .filter_map(|c| match c.what {
                    Claimed::Vip(ip) => Some((ip, (c.node.clone(), c.ports.clone()))),
                    _ => None,
                })
                .collect(),
        };
        self.routes.send_if_modified(|cur| {
            if **cur == routes {
                return false;
            }
            // Clients whose claims went (their node died or let them go):
            // remembered, for the node they come to next.
            let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
            for (k, h) in cur.clients.iter().filter(|(k, _)| !routes.clients.contains_key(*k)) {
                if gone.0.len() >= GONE_CLIENTS {
                    if let Some(old) = gone.1.pop_front() {
                        gone.0.remove(&old);
                    }
                }
                if gone.0.insert(k.clone(), h.clone()).is_none() {
                    gone.1.push_back(k.clone());
                }
            }
            *cur = Arc::new(routes);
            true
        });
    }

    fn claim_key(&self, what: &Claimed) -> String {
        format!("{}/claims/{}", self.cfg.prefix, what.key())
    }

    /// Claims `domain` for a session (`session`, hex) of this node: a
    /// transaction that writes the claim only where there is none, under
    /// the lease of this node's place. A claim of this node's already there
    /// (a release that did not reach etcd, or one under its previous lease)
    /// is taken over; a domain this node holds already (a group's members
    /// share it) is counted once more. Each claim is
    /// [`release`](Self::release)d once. Bounded in time, the wait for its
    /// turn included.
    /// `anywhere`: every node's gateway serves all the session's forwards
    /// (http, https, tls), so DNS answers the domain with every live node.
    pub(crate) async fn claim(&self, domain: &str, session: &str, anywhere: bool) -> Result<(), ClaimError> {
        let record = ClaimRecord {
            node: self.record.node.clone(),
            session: session.into(),
            ports: Vec::new(),
            anywhere,
            name: None,
            vip: None,
            domain: None,
        };
        self.claim_bounded(Claimed::Domain(domain.to_string()), record).await
    }

    /// Claims `vip` for a session (`session`, hex) of this node, with the
    /// ports it exports at the VIP, as [`claim`](Self::claim) a domain.
    pub(crate) async fn claim_vip(
        &self,
        vip: Ipv4Addr,
        session: &str,
        ports: &[(Proto, u16)],
    ) -> Result<(), ClaimError> {
        let ports = ports.iter().map(|(p, port)| (proto_name(*p).to_string(), *port)).collect();
        let record = ClaimRecord {
            node: self.record.node.clone(),
            session: session.into(),
            ports,
            anywhere: false,
            name: None,
            vip: None,
            domain: None,
        };
        self.claim_bounded(Claimed::Vip(vip), record).await
    }

    /// Claims client `client_id`'s session for `session` (hex) of this
    /// node, under credential `name`. Held by another node (the client
    /// came here before that node noticed it gone): that node is asked to
    /// end it, and the claim is tried again as the view changes, for up to
    /// [`TAKEOVER_WAIT`].
    pub(crate) async fn claim_client(
        &self,
        client_id: &str,
        session: &str,
        name: Option<&str>,
        vip: Ipv4Addr,
        domain: &str,
    ) -> Result<(), ClaimError> {
        let key = client_key(client_id);
        let what = Claimed::Client(key.clone());
        let record = ClaimRecord {
            node: self.record.node.clone(),
            session: session.into(),
            ports: Vec::new(),
            anywhere: false,
            name: name.map(str::to_string),
            vip: Some(vip),
            domain: Some(domain.to_string()),
        };
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let mut changes = self.shown.subscribe();
        let mut asked = None;
        loop {
            match self.claim_bounded(what.clone(), record.clone()).await {
                Err(ClaimError::Held { node, session, .. }) if tokio::time::Instant::now() < deadline => {
                    if asked.is_none() {
                        info!(%node, "cluster: the client's session is on another node; asking it to end it");
                        asked = Some(self.ask_takeover(&key, name, &session).await);
                    }
                    let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
                }
                r => {
                    if let Some(Some(revision)) = asked {
                        self.end_takeover(&key, revision).await;
                    }
                    return r;
                }
            }
        }
    }

    /// Writes the takeover of client `key`: its revision, when this node
    /// wrote it (another node asking already is as good).
    async fn ask_takeover(&self, key: &str, name: Option<&str>, session: &str) -> Option<i64> {
        let lease = self.lease()?;
        let record =
            TakeoverRecord { node: self.record.node.clone(), name: name.map(str::to_string), session: session.into() };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let mut etcd = self.claims.lock().await;
        let at = self.takeover_key(key);
        let put = etcd.put_if(&at, &value, lease, Expect::Absent);
        match tokio::time::timeout(CLAIM_TIMEOUT, put).await {
            Ok(Ok(Put::Done(revision))) => Some(revision),
            Ok(Ok(Put::Refused(_))) => None,
            Ok(Err(e)) => {
                debug!(error = %e, "cluster: asking for a takeover failed");
                etcd.rewind();
                None
            }
            Err(_) => None,
        }
    }

    /// Deletes the takeover this node wrote (else it goes with the lease).
    async fn end_takeover(&self, key: &str, revision: i64) {
        let mut etcd = self.claims.lock().await;
        if let Ok(Err(e)) = tokio::time::timeout(CLAIM_TIMEOUT, etcd.delete_if(&self.takeover_key(key), revision)).await
        {
            debug!(error = %e, "cluster: deleting a takeover failed; it goes with the lease");
            etcd.rewind();
        }
    }

    fn takeover_key(&self, key: &str) -> String {
        format!("{}/takeovers/{key}", self.cfg.prefix)
    }

    /// The takeovers other nodes ask of this one, as they come.
    pub(crate) fn takeovers(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Takeover>> {
        self.takeovers.1.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    async fn claim_bounded(&self, what: Claimed, record: ClaimRecord) -> Result<(), ClaimError> {
        match tokio::time::timeout(self.claim_bound, self.claim_now(&what, &record)).await {
            Ok(r) => r,
            Err(_) => Err(ClaimError::Unavailable { what, why: "etcd did not answer in time".into() }),
        }
    }

    async fn claim_now(&self, what: &Claimed, record: &ClaimRecord) -> Result<(), ClaimError> {
        let unavailable = |why: String| ClaimError::Unavailable { what: what.clone(), why };
        let mut etcd = self.claims.lock().await;
        // The lease as it is once it is our turn.
        let lease = self.lease().ok_or_else(|| {
            unavailable("it does not hold its place in the cluster (etcd out of reach, or its name held)".into())
        })?;
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            match held.get_mut(what) {
                Some(h) if h.lease == lease => {
                    h.count += 1;
                    return Ok(());
                }
                // Of a place given up: not ours any more.
                Some(_) => {
                    held.remove(what);
                }
                None => {}
            }
        }
        let key = self.claim_key(what);
        let value = serde_json::to_vec(record).unwrap_or_default();
        let mut expect = Expect::Absent;
        for _ in 0..CLAIM_ATTEMPTS {
            match etcd.put_if(&key, &value, lease, expect).await {
                Err(e) => {
                    etcd.rewind();
                    return Err(unavailable(e.to_string()));
                }
                Ok(Put::Done(revision)) => {
                    if self.lease() != Some(lease) {
                        // The place was given up meanwhile: the claim goes
                        // with that lease.
                        return Err(unavailable("it lost its place in the cluster meanwhile".into()));
                    }
                    let held = Held { lease, revision, count: 1 };
                    self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(what.clone(), held);
                    return Ok(());
                }
                // Released meanwhile: try again.
                Ok(Put::Refused(None)) => expect = Expect::Absent,
                Ok(Put::Refused(Some(kv))) => match serde_json::from_slice::<ClaimRecord>(&kv.value) {
                    Ok(c) if c.node == self.record.node => expect = Expect::ModRevision(kv.mod_revision),
                    Ok(c) => return Err(ClaimError::Held { what: what.clone(), node: c.node, session: c.session }),
                    Err(_) => {
                        return Err(ClaimError::Held { what: what.clone(), node: "?".into(), session: String::new() })
                    }
                },
            }
        }
        Err(unavailable("the claim kept racing with other writers".into()))
    }

    /// Releases a session's claim on `domain`; the last one of this node
    /// deletes the claim in etcd, if it is still the one written. A delete
    /// that fails is left to the lease: the claim goes with this node, or
    /// its next session of the domain takes it over, or the next read of
    /// the claims deletes it (an orphan).
    pub(crate) async fn release(&self, what: &Claimed) {
        let key = self.claim_key(what);
        let release = async {
            let mut etcd = self.claims.lock().await;
            let held = {
                let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                match held.get_mut(what) {
                    Some(h) if h.count > 1 => {
                        h.count -= 1;
                        return;
                    }
                    Some(_) => held.remove(what),
                    // Lost with this node's place (its lease is gone).
                    None => return,
                }
            };
            let Some(h) = held else { return };
            if self.leaving.load(std::sync::atomic::Ordering::SeqCst) || self.lease() != Some(h.lease) {
                return;
            }
            if let Err(e) = etcd.delete_if(&key, h.revision).await {
                debug!(%what, error = %e, "cluster: releasing a claim failed; it goes with the lease");
                etcd.rewind();
            }
        };
        if tokio::time::timeout(self.claim_bound, release).await.is_err() {
            debug!(%what, "cluster: releasing a claim timed out; it goes with the lease");
        }
    }

    /// Deletes claims of this node under its lease that it does not know
    /// of: written by a claim whose answer never came (it timed out), so
    /// held by nobody. Skipped while a claim or release is under way.
    async fn delete_orphans(&self, claims: &[ClaimKv], lease: i64) {
        let Ok(mut etcd) = self.claims.try_lock() else { return };
        let orphans: Vec<&ClaimKv> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            claims
                .iter()
                .filter(|c| c.node == self.record.node && c.lease == lease && !held.contains_key(&c.what))
                .collect()
        };
        for c in orphans {
            debug!(what = %c.what, "cluster: deleting a claim nobody holds");
            let _ = tokio::time::timeout(CLAIM_TIMEOUT, etcd.delete_if(&self.claim_key(&c.what), c.mod_revision)).await;
        }
    }

    /// One stretch of membership: the lease (granted if `lease` is none),
    /// the node's name, then renewals every third of the TTL on their own
    /// timer (a slow read or watch never costs the place), and the
    /// cluster's keys read once and kept by a watch.
    async fn member(
        &self,
        etcd: &mut Gateway,
        lease: &mut Option<Lease>,
        backoff: &mut Duration,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let tick = self.cfg.lease_ttl / 3;
        let (l, granted_at) = match *lease {
            Some(l) => (l, None),
            None => {
                let sent = tokio::time::Instant::now();
                let l = etcd.grant(self.cfg.lease_ttl.as_secs().max(2) as i64).await?;
                *lease = Some(l);
                (l, Some(sent))
            }
        };
        let mut renewed = granted_at.unwrap_or_else(tokio::time::Instant::now);
        if self.lease() != Some(l.id) {
            let key = self.key();
            let value = serde_json::to_vec(&self.record).unwrap_or_default();
            let mut waiting_said = false;
            loop {
                match etcd.put_if(&key, &value, l.id, Expect::Absent).await.map_err(lease_lost)? {
                    Put::Done(_) => break,
                    // Ours already (registered before a failed read): keep it.
                    Put::Refused(Some(kv)) if kv.lease == l.id => break,
                    Put::Refused(held) => {
                        let holder = held.and_then(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok());
                        let advertise = holder.as_ref().map_or_else(|| "?".into(), |r| r.advertise.clone());
                        {
                            let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
                            v.held_by = Some(advertise);
                            v.error = None;
                        }
                        if !waiting_said {
                            let by = holder
                                .map(|r| format!("{} (instance {}, started {})", r.advertise, r.instance, r.started))
                                .unwrap_or_else(|| "a record not written by opennotrd".into());
                            warn!(
                                node = self.node(),
                                held_by = %by,
                                "cluster: this node's name is held by another process (a live namesake, or this \
                                 node's previous run until its lease expires); waiting for it"
                            );
                            waiting_said = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(tick) => {}
                            _ = stop.cancelled() => return Ok(()),
                        }
                        renewed = renew(etcd, l.id).await?;
                    }
                }
            }
            let ttl = Duration::from_secs(l.ttl.max(1) as u64).min(self.cfg.lease_ttl.max(Duration::from_secs(1)));
            {
                let mut p = self.place();
                p.lease = Some(l.id);
                p.ttl = ttl;
                p.renewed = renewed;
            }
            *backoff = BACKOFF_MIN;
            info!(node = self.node(), advertise = %self.record.advertise, "joined the cluster");
        }
        let epoch = self.place().epoch;
        let mut next_renewal = tokio::time::Instant::now();
        let mut renewals = 0u32;
        let mut cache: Option<Cache> = None;
        // The view is rebuilt (in O(claims)) at most every SHOW_GAP: a
        // burst of claims is one rebuild, not one per claim.
        let (mut dirty, mut shown) = (false, tokio::time::Instant::now());
        loop {
            let step = tokio::select! {
                _ = tokio::time::sleep_until(next_renewal) => Step::Renew,
                r = next_changes(&mut cache) => Step::Changes(r),
                _ = tokio::time::sleep_until(shown + SHOW_GAP), if dirty => Step::Show,
                _ = stop.cancelled() => return Ok(()),
            };
            match step {
                Step::Renew => {
                    let sent = renew(etcd, l.id).await?;
                    {
                        let mut p = self.place();
                        if p.epoch != epoch || p.lease != Some(l.id) {
                            // The place was given up meanwhile: never bring
                            // it back.
                            return Err(Error::LeaseLost);
                        }
                        p.renewed = sent;
                    }
                    *backoff = BACKOFF_MIN;
                    next_renewal = sent + tick;
                    renewals = renewals.wrapping_add(1);
                    // Read everything (and watch from there) when there is
                    // no watch, and now and then besides, as a check.
                    if cache.is_none() || renewals.is_multiple_of(RELIST_EVERY) {
                        match self.relist(etcd, l.id).await {
                            Ok(mut fresh) => {
                                self.hand_on_takeovers(&mut fresh);
                                cache = Some(fresh);
                                dirty = true;
                                let now = tokio::time::Instant::now();
                                shown = now.checked_sub(SHOW_GAP).unwrap_or(now);
                            }
                            // The view stays as last read, and says why; the
                            // lease is renewed on.
                            Err(e) => {
                                debug!(error = %e, "cluster: reading the cluster failed");
                                self.view.write().unwrap_or_else(|e| e.into_inner()).error = Some(e.to_string());
                                cache = None;
                            }
                        }
                    }
                }
                Step::Changes(Ok(changes)) => {
                    if let Some(c) = cache.as_mut() {
                        dirty |= !changes.is_empty();
                        for change in changes {
                            c.apply(change, &self.cfg.prefix);
                        }
                        self.hand_on_takeovers(c);
                    }
                }
                Step::Show => {}
                // Read again with the next renewal (at most a third of the
                // TTL away): a watch that keeps breaking costs one read a
                // tick, not a loop.
                Step::Changes(Err(e)) => {
                    debug!(error = %e, "cluster: the watch broke; reading the cluster again");
                    cache = None;
                    continue;
                }
            }
            if let Some(c) = &cache {
                if !c.nodes.values().any(|n| n.instance == self.record.instance) {
                    // etcd lost our key (its data was wiped, or someone
                    // deleted it): this place is gone.
                    return Err(Error::LeaseLost);
                }
                if dirty && shown + SHOW_GAP <= tokio::time::Instant::now() {
                    self.show(c);
                    (dirty, shown) = (false, tokio::time::Instant::now());
                }
            }
        }
    }

    /// Reads the cluster's keys, deletes this node's orphan claims, and
    /// starts watching from there.
    async fn relist(&self, etcd: &mut Gateway, lease: i64) -> Result<Cache, Error> {
        let (start, end) = (format!("{}/", self.cfg.prefix), format!("{}0", self.cfg.prefix));
        let (kvs, at) = etcd.list_at(start.as_bytes(), end.as_bytes()).await?;
        if at <= 0 {
            // A watch from nowhere would replay etcd's whole history.
            let endpoint = etcd.endpoint().to_owned();
            return Err(Error::Protocol { endpoint, path: "/v3/kv/range", reason: "no revision in the header".into() });
        }
        let mut cache =
            Cache { nodes: Default::default(), claims: Default::default(), watch: None, takeovers: Vec::new() };
        for kv in kvs {
            cache.apply(Change::Put(kv), &self.cfg.prefix);
        }
        let claims: Vec<ClaimKv> = cache.claims.values().cloned().collect();
        self.delete_orphans(&claims, lease).await;
        cache.watch = Some(etcd.watch(start.as_bytes(), end.as_bytes(), at + 1).await?);
        Ok(cache)
    }

    /// Hands the takeovers other nodes asked of this one to the server.
    fn hand_on_takeovers(&self, cache: &mut Cache) {
        for t in cache.takeovers.drain(..) {
            if t.by != self.record.node {
                let _ = self.takeovers.0.send(t);
            }
        }
    }

    /// Shows `cache` in the view, and the other nodes' domains to DNS.
    fn show(&self, cache: &Cache) {
        let mut nodes: Vec<NodeRecord> = cache.nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let claims: Vec<&ClaimKv> = cache.claims.values().collect();
        let mut domains: Vec<(String, String)> = claims
            .iter()
            .filter_map(|c| match &c.what {
                Claimed::Domain(d) => Some((d.clone(), c.node.clone())),
                _ => None,
            })
            .collect();
        domains.sort();
        self.publish_remote(&nodes, &domains, &claims);
        let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
        if v.error.take().is_some() {
            info!("cluster: etcd reachable again");
        }
        *v = View { registered: true, nodes, error: None, held_by: None, domains };
        drop(v);
        self.shown.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What the membership loop does next.
enum Step {
    Renew,
    Changes(Result<Vec<Change>, Error>),
    /// Time to show what changed.
    Show,
}

/// The most often the view (and DNS's view of other nodes) is rebuilt.
const SHOW_GAP: Duration = Duration::from_millis(100);

/// A full read of the cluster's keys every this many renewals, besides the
/// watch: a check that nothing was missed, and when orphan claims are
/// looked for.
const RELIST_EVERY: u32 = 30;

/// The cluster's keys as this node knows them: read once, then kept by the
/// watch.
struct Cache {
    /// By key.
    nodes: std::collections::BTreeMap<Vec<u8>, NodeRecord>,
    claims: std::collections::BTreeMap<Vec<u8>, ClaimKv>,
    watch: Option<Watch>,
    /// Takeovers read since they were last handed on.
    takeovers: Vec<Takeover>,
}

impl Cache {
    /// Applies one change of a key under `prefix`; a record that does not
    /// parse (not written by opennotrd), or a claim whose key is not a
    /// domain a client could hold, is passed over.
    fn apply(&mut self, change: Change, prefix: &str) {
        let nodes = format!("{prefix}/nodes/");
        let claims = format!("{prefix}/claims/");
        match change {
            Change::Put(kv) if kv.value.len() <= MAX_RECORD => {
                if let Some(client) = kv.key.strip_prefix(format!("{prefix}/takeovers/").as_bytes()) {
                    let record = serde_json::from_slice::<TakeoverRecord>(&kv.value);
                    if let (Ok(client), Ok(r)) = (std::str::from_utf8(client), record) {
                        if is_client_key(client) {
                            let t = Takeover { client: client.into(), name: r.name, session: r.session, by: r.node };
                            self.takeovers.push(t);
                        }
                    }
                } else if kv.key.starts_with(nodes.as_bytes()) {
                    match serde_json::from_slice::<NodeRecord>(&kv.value) {
                        Ok(n) => self.nodes.insert(kv.key, n),
                        Err(_) => self.nodes.remove(&kv.key),
                    };
                } else if kv.key.starts_with(claims.as_bytes()) {
                    match claim_of(&kv, claims.len()) {
                        Some(c) => self.claims.insert(kv.key, c),
                        None => self.claims.remove(&kv.key),
                    };
                }
            }
            Change::Put(kv) => {
                self.nodes.remove(&kv.key);
                self.claims.remove(&kv.key);
            }
            Change::Delete(key) => {
                self.nodes.remove(&key);
                self.claims.remove(&key);
            }
        }
    }
}

/// The claim a key under `<prefix>/claims/` (`skip` bytes long) holds: a
/// domain a client could hold, or a VIP (as `Ipv4Addr` writes it), each
/// with a record opennotrd wrote.
fn claim_of(kv: &Kv, skip: usize) -> Option<ClaimKv> {
    let rest = std::str::from_utf8(kv.key.get(skip..)?).ok()?;
    let what = if let Some(domain) = rest.strip_prefix("domains/") {
        if crate::state::normalize_domain(domain).ok()? != domain || !domain.contains('.') {
            return None;
        }
        Claimed::Domain(domain.to_string())
    } else if let Some(key) = rest.strip_prefix("clients/") {
        is_client_key(key).then(|| Claimed::Client(key.to_string()))?
    } else {
        let ip: Ipv4Addr = rest.strip_prefix("vips/")?.parse().ok()?;
        (ip.to_string() == rest["vips/".len()..]).then_some(Claimed::Vip(ip))?
    };
    let claim: ClaimRecord = serde_json::from_slice(&kv.value).ok()?;
    let ports = claim
        .ports
        .iter()
        .map(|(p, port)| match p.as_str() {
            "tcp" => Some((Proto::Tcp, *port)),
            "udp" => Some((Proto::Udp, *port)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let anywhere = claim.anywhere;
    let held = claim.vip.zip(claim.domain);
    Some(ClaimKv { what, node: claim.node, lease: kv.lease, mod_revision: kv.mod_revision, ports, anywhere, held })
}

/// A [`client_key`]: 32 lowercase hex digits.
fn is_client_key(k: &str) -> bool {
    k.len() == 32 && k.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// The next changes of `cache`'s watch; never, while there is none.
async fn next_changes(cache: &mut Option<Cache>) -> Result<Vec<Change>, Error> {
    match cache.as_mut().and_then(|c| c.watch.as_mut()) {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// etcd's "not found" about a lease is the lease being gone.
fn lease_lost(e: Error) -> Error {
    if e.is_not_found() {
        Error::LeaseLost
    } else {
        e
    }
}

/// Renews lease `id`; when the renewal was sent (the lease lives at least
/// its TTL from then), or `LeaseLost` if etcd no longer has it.
async fn renew(etcd: &mut Gateway, id: i64) -> Result<tokio::time::Instant, Error> {
    let sent = tokio::time::Instant::now();
    match etcd.keepalive(id).await.map_err(lease_lost)? {
        ttl if ttl > 0 => Ok(sent),
        _ => Err(Error::LeaseLost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> Kv {
        Kv { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), lease: 7, mod_revision: 9 }
    }

    /// Claims read from etcd: a domain a client could hold, or a VIP as
    /// `Ipv4Addr` writes it, with a record opennotrd wrote; anything else is
    /// passed over.
    #[test]
    fn claims_are_read_strictly() {
        let skip = "/p/claims/".len();
        let record = r#"{"node":"node-b","session":"00ff","ports":[["tcp",22],["udp",53]]}"#;
        let c = claim_of(&kv("/p/claims/vips/100.64.0.7", record), skip).expect("a VIP claim");
        assert_eq!((c.what, c.node.as_str()), (Claimed::Vip(Ipv4Addr::new(100, 64, 0, 7)), "node-b"));
        assert_eq!(c.ports, vec![(Proto::Tcp, 22), (Proto::Udp, 53)]);
        let c = claim_of(&kv("/p/claims/domains/shop.example.com", r#"{"node":"a","session":"01"}"#), skip);
        assert_eq!(c.map(|c| c.what), Some(Claimed::Domain("shop.example.com".into())));
        let key = client_key("a client's id");
        assert_eq!(key.len(), 32);
        let c =
            claim_of(&kv(&format!("/p/claims/clients/{key}"), r#"{"node":"a","session":"01","name":"alice"}"#), skip);
        assert_eq!(c.map(|c| c.what), Some(Claimed::Client(key.clone())));
        for (key, value) in [
            ("/p/claims/vips/100.64.0.07", record),
            ("/p/claims/vips/100.64.0.7 ", record),
            ("/p/claims/vips/::1", record),
            ("/p/claims/vips/100.64.0.7", r#"{"node":"b","session":"00","ports":[["sctp",1]]}"#),
            ("/p/claims/vips/100.64.0.7", r#"{"node":"b"}"#),
            ("/p/claims/domains/Shop.example.com", r#"{"node":"a","session":"01"}"#),
            ("/p/claims/domains/localhost", r#"{"node":"a","session":"01"}"#),
            ("/p/claims/ports/80", r#"{"node":"a","session":"01"}"#),
            ("/p/claims/clients/my-client", r#"{"node":"a","session":"01"}"#),
            ("/p/claims/clients/0123456789ABCDEF0123456789ABCDEF", r#"{"node":"a","session":"01"}"#),
        ] {
            assert!(claim_of(&kv(key, value), skip).is_none(), "{key} {value}");
        }
    }
}
