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

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opennotr_config::ClusterSection;
use opennotr_dns::etcd::{endpoint_base, Error, Expect, Gateway, Lease, Put};
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
/// Bound of one claim or release: a client waits for it before its
/// registration is answered.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts of one claim racing with other writers.
const CLAIM_ATTEMPTS: usize = 3;

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

/// Who holds a domain in the cluster: `<prefix>/claims/domains/<domain>`,
/// under the holding node's lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DomainClaim {
    node: String,
    /// The session, hex.
    session: String,
}

/// Why a domain was not claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    /// Another node holds it.
    #[error("{domain} is held by a client of node {node}")]
    Held { domain: String, node: String },
    /// etcd is out of reach, or this node is not registered.
    #[error("this node cannot reach the cluster's state to claim {domain}: {why}; retry")]
    Unavailable { domain: String, why: String },
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
    /// The lease this node holds its name under, while it does: claims hang
    /// on it, so they go with the node.
    lease: std::sync::Mutex<Option<i64>>,
    /// Claims and releases, one at a time, on a gateway of their own (the
    /// membership loop holds the other).
    claims: tokio::sync::Mutex<Gateway>,
    /// The domains this node holds a claim on: the claim's revision, and
    /// how many of its sessions share it (the members of a group).
    held: std::sync::Mutex<std::collections::HashMap<String, (i64, usize)>>,
    /// When the lease was last renewed (or granted).
    renewed: std::sync::Mutex<tokio::time::Instant>,
    /// Counts the times this node lost its place: its lease went unrenewed
    /// for a whole TTL, so its claims are gone (or going) and its sessions
    /// must end.
    losses: tokio::sync::watch::Sender<u64>,
    /// The domains other nodes' clients hold, with those nodes' public
    /// addresses, for the embedded DNS server.
    remote: tokio::sync::watch::Sender<Arc<opennotr_dns::RemoteNames>>,
}

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
        Cluster {
            cfg,
            record,
            claims: tokio::sync::Mutex::new(Gateway::new(endpoints.clone())),
            endpoints,
            view: RwLock::new(View::default()),
            lease: std::sync::Mutex::new(None),
            held: Default::default(),
            renewed: std::sync::Mutex::new(tokio::time::Instant::now()),
            losses: tokio::sync::watch::Sender::new(0),
            remote: tokio::sync::watch::Sender::new(Arc::default()),
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

    /// Changes each time this node loses its place in the cluster (see
    /// [`run`](Self::run)): its sessions are to be closed.
    pub(crate) fn losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.losses.subscribe()
    }

    fn renewed_now(&self) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    }

    /// Registers, renews and reads the cluster until `stop`, then leaves it.
    ///
    /// A lease that goes unrenewed for a whole TTL (etcd out of reach, or
    /// this node cut off from it) has expired, or soon will, with every
    /// claim on it: the node then gives up its place at once, without
    /// waiting for etcd to say so. Its sessions are closed (see
    /// [`losses`](Self::losses)), new clients are refused until it is back,
    /// and it comes back under a new lease, so no claim of the old one
    /// lives on. Two nodes never serve one domain, even across a partition.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut etcd = Gateway::new(self.endpoints.clone());
        let mut backoff = BACKOFF_MIN;
        let mut lease = None;
        loop {
            // Fires when the place this node holds has gone a whole TTL
            // without a renewal.
            let watchdog = async {
                loop {
                    let due = *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) + self.cfg.lease_ttl;
                    tokio::time::sleep_until(due).await;
                    let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
                    let holding = self.lease.lock().unwrap_or_else(|e| e.into_inner()).is_some();
                    if holding && renewed + self.cfg.lease_ttl <= tokio::time::Instant::now() {
                        break;
                    }
                    if !holding {
                        tokio::time::sleep(self.cfg.lease_ttl / 3).await;
                    }
                }
            };
            let r = tokio::select! {
                r = self.member(&mut etcd, &mut lease, &stop) => r,
                _ = watchdog => {
                    self.lose();
                    Err(Error::LeaseLost)
                }
            };
            if stop.is_cancelled() {
                break;
            }
            if let Err(e) = r {
                let first = self.failed(&e);
                if first {
                    warn!(error = %e, "cluster: etcd failed; retrying");
                } else {
                    debug!(error = %e, "cluster: etcd still failing");
                }
                if matches!(e, Error::LeaseLost) {
                    if let Some(old) = lease.take() {
                        // Its claims must not outlive this place: revoked
                        // when etcd answers, else they expire with it.
                        let _ = tokio::time::timeout(REVOKE_TIMEOUT, etcd.revoke(old.id)).await;
                    }
                }
                etcd.rewind();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        self.set_lease(None);
        if let Some(l) = lease {
            // Leaving at once, rather than when the lease would expire.
            let _ = tokio::time::timeout(REVOKE_TIMEOUT, etcd.revoke(l.id)).await;
            info!(node = self.node(), "left the cluster");
        }
        self.view.write().unwrap_or_else(|e| e.into_inner()).registered = false;
    }

    /// Records a failure; true for the first of an outage.
    fn failed(&self, e: &Error) -> bool {
        let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
        let first = v.error.is_none();
        v.error = Some(e.to_string());
        if matches!(e, Error::LeaseLost) {
            v.registered = false;
            drop(v);
            self.set_lease(None);
        }
        first
    }

    /// Gives up this node's place: no more claims, its sessions close.
    fn lose(&self) {
        self.set_lease(None);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.view.write().unwrap_or_else(|e| e.into_inner()).registered = false;
        warn!(
            node = self.node(),
            ttl_secs = self.cfg.lease_ttl.as_secs_f64(),
            "cluster: the lease went unrenewed for its whole TTL; its claims are gone: closing this node's sessions"
        );
        self.losses.send_modify(|n| *n += 1);
    }

    /// Sends the other nodes' domains to DNS, if they changed.
    fn publish_remote(&self, nodes: &[NodeRecord], domains: &[(String, String)]) {
        let at: std::collections::HashMap<&str, &Vec<IpAddr>> =
            nodes.iter().filter(|n| n.node != self.record.node).map(|n| (n.node.as_str(), &n.public)).collect();
        let remote: opennotr_dns::RemoteNames = domains
            .iter()
            .filter_map(|(domain, node)| Some((domain.clone(), at.get(node.as_str())?.to_vec())))
            .filter(|(_, ips)| !ips.is_empty())
            .collect();
        self.remote.send_if_modified(|cur| {
            if **cur == remote {
                return false;
            }
            *cur = Arc::new(remote);
            true
        });
    }

    fn set_lease(&self, id: Option<i64>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    fn claim_key(&self, domain: &str) -> String {
        format!("{}/claims/domains/{domain}", self.cfg.prefix)
    }

    /// Claims `domain` for a session (`session`, hex) of this node: a
    /// transaction that writes the claim only where there is none, under
    /// this node's lease. A claim of this node's already there (a release
    /// that did not reach etcd) is taken over; a domain this node holds
    /// already (a group's members share it) is counted once more. Each
    /// claim is [`release`](Self::release)d once.
    pub(crate) async fn claim(&self, domain: &str, session: &str) -> Result<(), ClaimError> {
        let unavailable = |why: String| ClaimError::Unavailable { domain: domain.to_string(), why };
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).ok_or_else(|| {
            unavailable("it does not hold its place in the cluster (etcd out of reach, or its name held)".into())
        })?;
        let key = self.claim_key(domain);
        let value = serde_json::to_vec(&DomainClaim { node: self.record.node.clone(), session: session.into() })
            .unwrap_or_default();
        let mut etcd = self.claims.lock().await;
        if let Some((_, n)) = self.held.lock().unwrap_or_else(|e| e.into_inner()).get_mut(domain) {
            *n += 1;
            return Ok(());
        }
        let mut expect = Expect::Absent;
        for _ in 0..CLAIM_ATTEMPTS {
            let put = tokio::time::timeout(CLAIM_TIMEOUT, etcd.put_if(&key, &value, lease, expect)).await;
            match put.map_err(|_| unavailable("etcd did not answer in time".into()))? {
                Err(e) => {
                    etcd.rewind();
                    return Err(unavailable(e.to_string()));
                }
                Ok(Put::Done(revision)) => {
                    self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(domain.to_string(), (revision, 1));
                    return Ok(());
                }
                // Released meanwhile: try again.
                Ok(Put::Refused(None)) => expect = Expect::Absent,
                Ok(Put::Refused(Some(kv))) => {
                    let holder = serde_json::from_slice::<DomainClaim>(&kv.value).ok();
                    match holder {
                        Some(c) if c.node == self.record.node && kv.lease == lease => {
                            expect = Expect::ModRevision(kv.mod_revision)
                        }
                        Some(c) => return Err(ClaimError::Held { domain: domain.into(), node: c.node }),
                        None => return Err(ClaimError::Held { domain: domain.into(), node: "?".into() }),
                    }
                }
            }
        }
        Err(unavailable("the claim kept racing with other writers".into()))
    }

    /// Releases a session's claim on `domain`; the last one of this node
    /// deletes the claim in etcd, if it is still the one written. A delete
    /// that fails is left to the lease: the claim goes with this node, or
    /// its next session of the domain takes it over.
    pub(crate) async fn release(&self, domain: &str) {
        let key = self.claim_key(domain);
        let mut etcd = self.claims.lock().await;
        let revision = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            match held.get_mut(domain) {
                Some((_, n)) if *n > 1 => {
                    *n -= 1;
                    return;
                }
                Some(&mut (revision, _)) => {
                    held.remove(domain);
                    revision
                }
                // Lost with this node's place (its lease is gone).
                None => return,
            }
        };
        match tokio::time::timeout(CLAIM_TIMEOUT, etcd.delete_if(&key, revision)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(%domain, error = %e, "cluster: releasing a claim failed; it goes with the lease"),
            Err(_) => debug!(%domain, "cluster: releasing a claim timed out; it goes with the lease"),
        }
    }

    /// One stretch of membership: the lease (granted if `lease` is none),
    /// the node's name, then renewals and reads every third of the TTL.
    async fn member(
        &self,
        etcd: &mut Gateway,
        lease: &mut Option<Lease>,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let ttl = self.cfg.lease_ttl.as_secs().max(2) as i64;
        let tick = self.cfg.lease_ttl / 3;
        let l = match *lease {
            Some(l) => l,
            None => {
                let l = etcd.grant(ttl).await?;
                self.renewed_now();
                *lease = Some(l);
                l
            }
        };
        let key = self.key();
        let value = serde_json::to_vec(&self.record).unwrap_or_default();
        let mut waiting_said = false;
        loop {
            match etcd.put_if(&key, &value, l.id, Expect::Absent).await? {
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
                    etcd.keepalive(l.id).await?;
                    self.renewed_now();
                }
            }
        }
        self.set_lease(Some(l.id));
        info!(node = self.node(), advertise = %self.record.advertise, "joined the cluster");
        loop {
            let nodes = self.read_nodes(etcd).await?;
            let domains = self.read_claims(etcd).await?;
            if !nodes.iter().any(|n| n.instance == self.record.instance) {
                // etcd lost our key (its data was wiped, or someone deleted
                // it): register again.
                return Err(Error::LeaseLost);
            }
            {
                let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
                if v.error.take().is_some() {
                    info!("cluster: etcd reachable again");
                }
                self.publish_remote(&nodes, &domains);
                *v = View { registered: true, nodes, error: None, held_by: None, domains };
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.cancelled() => return Ok(()),
            }
            etcd.keepalive(l.id).await?;
            self.renewed_now();
        }
    }

    /// Every domain claim in the cluster: (domain, node), by domain; a claim
    /// that does not parse is passed over.
    async fn read_claims(&self, etcd: &mut Gateway) -> Result<Vec<(String, String)>, Error> {
        let start = format!("{}/claims/domains/", self.cfg.prefix);
        let end = format!("{}/claims/domains0", self.cfg.prefix);
        let kvs = etcd.list(start.as_bytes(), end.as_bytes()).await?;
        let mut out: Vec<(String, String)> = kvs
            .iter()
            .filter(|kv| kv.value.len() <= MAX_RECORD)
            .filter_map(|kv| {
                let domain = std::str::from_utf8(kv.key.get(start.len()..)?).ok()?.to_string();
                let claim: DomainClaim = serde_json::from_slice(&kv.value).ok()?;
                Some((domain, claim.node))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The live nodes' records, by name; a record that does not parse (not
    /// written by opennotrd) is passed over.
    async fn read_nodes(&self, etcd: &mut Gateway) -> Result<Vec<NodeRecord>, Error> {
        let start = format!("{}/nodes/", self.cfg.prefix);
        // The end of the prefix range: the same bytes with the last one
        // incremented ('/' + 1 = '0').
        let end = format!("{}/nodes0", self.cfg.prefix);
        let kvs = etcd.list(start.as_bytes(), end.as_bytes()).await?;
        let mut nodes: Vec<NodeRecord> = kvs
            .iter()
            .filter(|kv| kv.value.len() <= MAX_RECORD)
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }
}
