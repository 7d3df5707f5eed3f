//! `opennotrd`, the server: authenticates clients, gives each a session with
//! a virtual IP and a domain, and runs its forwards through plugins.
//!
//! # Layout
//! - [`Server`]: binds, accepts, shuts down with a grace period.
//! - `conn`: one accepted connection: preface, then either a control
//!   handshake (a new session) or a data channel (a stream of a session).
//! - `quic`: the QUIC endpoint (`server.quic`): the same handshake on a
//!   connection's first stream, bound to its TLS; a stream per visitor
//!   stream, UDP flows as datagrams.
//! - `session`: a live session: control loop, keepalive, opening streams,
//!   clean-up.
//! - `sources`: per source address, unauthenticated connections, live
//!   sessions and the penalties of failed handshakes.
//! - `state`: who holds which VIP, domain and session; leases that give a
//!   reconnecting client its VIP, domain and ports back.
//! - [`vip`]: the VIP pool.
//! - [`plugins`]: the built-in `tcp` and `udp` plugins.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opennotr_config::ServerConfig;
use opennotr_plugin::{Plugin, Registry, TaskTracker};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod access;
mod admin;
mod bandwidth;
mod check;
mod cluster;
mod conn;
mod creds;
mod group;
mod holdings;
mod links;
pub mod plugins;
mod quic;
mod session;
mod sources;
mod state;
pub mod vip;
mod vlan;

/// Protocol names reserved for plugins that later versions ship (the
/// gateway plugins `http`, `https`, `h2c` and `tls` are built in). A config
/// naming one is accepted with a warning; forwards asking for it are refused
/// with a reason.
pub const RESERVED_PLUGINS: &[&str] = &["dummy"];

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid (exit code 64); `key` names the field.
    #[error("{key}: {message}")]
    Config {
        /// Dotted key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A session as seen from outside (tests, logs, later the admin API).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The client's id.
    pub client_id: String,
    /// The client's domain.
    pub domain: String,
    /// The client's virtual IP.
    pub vip: Ipv4Addr,
    /// The client's address (over QUIC: where it is now).
    pub remote: SocketAddr,
    /// How the client reaches the server: `tcp` or `quic`.
    pub transport: &'static str,
    /// When the session started.
    pub connected_at: SystemTime,
    /// Whether the tunnel is unencrypted.
    pub plaintext: bool,
    /// Running forwards.
    pub forwards: Vec<ForwardInfo>,
    /// Streams (visitor connections and UDP flows) open now.
    pub open_streams: usize,
}

/// A running forward.
#[derive(Debug, Clone)]
pub struct ForwardInfo {
    /// Plugin name.
    pub protocol: String,
    /// Public port, if any.
    pub public_port: Option<u16>,
    /// Where visitors reach it.
    pub url: String,
    /// What the client dials.
    pub target: SocketAddr,
}

impl Shared {
    /// Publishes the live domains to the DNS server and the etcd publisher.
    pub(crate) fn publish_names(&self) {
        self.names_changed.notify_one();
    }

    fn send_names(&self) {
        // On a node of a cluster, a domain is published once it is claimed.
        let names = self.state().names(self.cluster.is_some());
        self.names.send_replace(Arc::new(names));
    }

    /// The state lock. A panic while holding it cannot leave the maps half
    /// updated in a way worse than losing the server, so poison is ignored.
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plugin serving `protocol` now.
    pub(crate) fn plugin(&self, protocol: &str) -> Option<Arc<dyn Plugin>> {
        self.plugins.read().unwrap_or_else(|e| e.into_inner()).get(protocol).cloned()
    }

    /// Every plugin, by name.
    pub(crate) fn plugins(&self) -> BTreeMap<String, Arc<dyn Plugin>> {
        self.plugins.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What plugins are told when they start ([`Plugin::start`]).
    pub(crate) fn server_info(&self) -> opennotr_plugin::ServerInfo {
        opennotr_plugin::ServerInfo::new(self.cfg.dhcp.cidr)
            .with_lifecycle(opennotr_plugin::Lifecycle {
                draining: self.draining.clone(),
                kill: self.kill.clone(),
                tracker: self.streams.clone(),
            })
            .with_elsewhere(self.links.clone().map(|l| l as Arc<dyn opennotr_plugin::Elsewhere>))
    }

    /// The limits in force now.
    pub(crate) fn limits(&self) -> opennotr_config::Limits {
        self.limits.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies new limits: new sessions, forwards and handshakes get them;
    /// live sessions keep their stream limit.
    pub(crate) fn set_limits(&self, next: opennotr_config::Limits) {
        let mut slot = self.limits.write().unwrap_or_else(|e| e.into_inner());
        let resize = |sem: &tokio::sync::Semaphore, old: usize, new: usize| {
            if new > old {
                sem.add_permits(new - old);
            } else {
                // Only slots free right now can be taken away; with every
                // slot busy, the limit shrinks by less than asked.
                sem.forget_permits(old - new);
            }
        };
        resize(&self.handshake_slots, slot.max_handshakes, next.max_handshakes);
        resize(&self.queued, slot.max_handshakes.saturating_mul(4), next.max_handshakes.saturating_mul(4));
        self.state().set_max_clients(next.max_clients);
        self.sources.set_limits(&next);
        opennotr_transport::fds::set_reserve(next.fd_reserve);
        *slot = next;
    }

    /// The credentials in force now.
    pub(crate) fn creds(&self) -> Arc<creds::Creds> {
        self.creds.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a refusal for the admin API, the dashboard and the metrics.
    pub(crate) fn refused(
        &self,
        remote: SocketAddr,
        client: Option<&str>,
        code: impl std::fmt::Display,
        message: &str,
    ) {
        self.refusals.record(creds::Refusal {
            at: SystemTime::now(),
            remote: remote.to_string(),
            client: client.map(str::to_string),
            code: code.to_string(),
            message: message.to_string(),
        });
    }

    /// Counts a finished control handshake by its result.
    pub(crate) fn handshake_result(&self, result: &'static str) {
        *self.handshakes.lock().unwrap_or_else(|e| e.into_inner()).entry(result).or_default() += 1;
    }

    /// Replaces the credentials and closes the sessions of every client
    /// whose entry changed or went (and of the shared key's clients if the
    /// shared key changed). Returns how many sessions were closed.
    pub(crate) fn set_creds(&self, next: creds::Creds) -> usize {
        let mut slot = self.creds.write().unwrap_or_else(|e| e.into_inner());
        let changed = slot.changed_names(&next);
        // A new shared key is a rotation: clients of the old one go too.
        let shared_changed = slot.shared_key != next.shared_key;
        let next = Arc::new(next);
        *slot = next.clone();
        drop(slot);
        let doomed: Vec<_> = self
            .state()
            .sessions
            .values()
            .filter(|s| match &s.client {
                Some(c) => changed.contains(c),
                None => shared_changed || !next.shared_allows(&s.domain, s.domain_requested),
            })
            .cloned()
            .collect();
        for s in &doomed {
            info!(client = s.client.as_deref().unwrap_or(""), domain = %s.domain, "credential changed or revoked; closing its session");
            s.close("credential changed or revoked");
        }
        doomed.len()
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    /// The plugins by name; an entry is replaced when a reload changes its
    /// config.
    pub(crate) plugins: std::sync::RwLock<BTreeMap<String, Arc<dyn Plugin>>>,
    /// What sets plugins up again on reload.
    pub(crate) registry: Registry,
    /// Each plugin's config as in force now (`{}` for one the file leaves
    /// out), to tell which ones a reload changes.
    pub(crate) plugin_cfgs: std::sync::Mutex<BTreeMap<String, serde_json::Value>>,
    pub(crate) state: std::sync::Mutex<state::State>,
    pub(crate) next_forward: std::sync::atomic::AtomicU64,
    /// Sessions and handshakes.
    pub(crate) sessions: TaskTracker,
    /// Visitor connections and flows, drained at shutdown.
    pub(crate) streams: TaskTracker,
    /// Cancelled at shutdown: no new sessions, listeners close.
    pub(crate) draining: CancellationToken,
    /// Cancelled when the grace period ends: everything stops.
    pub(crate) kill: CancellationToken,
    pub(crate) handshake_slots: Arc<tokio::sync::Semaphore>,
    /// Live domains and VIPs, for the DNS server and the etcd publisher.
    pub(crate) names: tokio::sync::watch::Sender<Arc<opennotr_dns::Names>>,
    /// A session came or went: `names` is to be rebuilt (`publish_names`).
    names_changed: tokio::sync::Notify,
    /// The virtual LAN's rules, when it is on.
    pub(crate) vlan: std::sync::Mutex<Option<Arc<opennotr_tproxy::Rules>>>,
    /// Connections accepted and not yet past their hello, or waiting for
    /// a handshake slot.
    pub(crate) queued: Arc<tokio::sync::Semaphore>,
    /// Per source: unauthenticated connections, sessions, penalties.
    pub(crate) sources: Arc<sources::Sources>,
    /// `limits`, replaceable by a reload; sessions keep the limits they
    /// started with, new sessions and forwards take the current ones.
    pub(crate) limits: std::sync::RwLock<opennotr_config::Limits>,
    /// Who may connect; replaced whole on reload or an API change.
    pub(crate) creds: std::sync::RwLock<Arc<creds::Creds>>,
    pub(crate) refusals: creds::Refusals,
    /// Control handshakes by result.
    pub(crate) handshakes: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    /// How streams got their data channel.
    pub(crate) channel_stats: Arc<session::ChannelStats>,
    pub(crate) dns_stats: Option<Arc<opennotr_dns::DnsStats>>,
    /// The file to re-read on reload.
    pub(crate) config_path: std::sync::Mutex<Option<std::path::PathBuf>>,
    /// Replaces the admin API's token on reload, when the API is on.
    pub(crate) admin_token: std::sync::OnceLock<opennotr_admin::TokenHandle>,
    /// Load-balanced groups of forwards.
    pub(crate) groups: Arc<group::Groups>,
    /// How the UDP datagrams of QUIC sessions travelled.
    pub(crate) quic_stats: Arc<opennotr_transport::quic::DatagramStats>,
    /// Visitors refused by access rules, and the bound on password checks.
    pub(crate) access: Arc<access::Guard>,
    /// This server's membership of a cluster (`cluster`), when it is a node.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
    /// Links to the other nodes of the cluster, when this server is a node.
    pub(crate) links: Option<Arc<links::Links>>,
}

/// The longest a burst of registrations waits for its names: the live names
/// are rebuilt (in O(sessions)) at once after a quiet spell, then at most
/// this often while sessions keep coming, so ten thousand clients
/// connecting together cost a few hundred rebuilds, not ten thousand.
const NAMES_GAP: Duration = Duration::from_millis(25);

/// Publishes the live names (domain → VIP) to the DNS server and the etcd
/// publisher whenever sessions come or go, until `stop`, then once more.
async fn publish_names(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = shared.names_changed.notified() => {}
            _ = stop.cancelled() => break,
        }
        shared.send_names();
        tokio::select! {
            _ = tokio::time::sleep(NAMES_GAP) => {}
            _ = stop.cancelled() => break,
        }
    }
    shared.send_names();
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    quic: Option<opennotr_transport::quic::quinn::Endpoint>,
    shared: Arc<Shared>,
    vlan: Option<vlan::Setup>,
    dns: Option<opennotr_dns::DnsServer>,
    etcd: Option<opennotr_dns::etcd::EtcdPublisher>,
    admin: Option<opennotr_admin::AdminServer>,
}

/// A cheap handle to look at a running server.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// The cluster this server is a node of, as it last read it from etcd;
    /// `None` for a single server.
    pub fn cluster(&self) -> Option<opennotr_admin::ClusterView> {
        let c = self.shared.cluster.as_ref()?;
        let v = c.view();
        Some(opennotr_admin::ClusterView {
            node: c.node().to_string(),
            registered: v.registered,
            error: v.error,
            held_by: v.held_by,
            nodes: v
                .nodes
                .into_iter()
                .map(|n| opennotr_admin::NodeView { node: n.node, advertise: n.advertise, started: n.started })
                .collect(),
            domains: v.domains.into_iter().map(|(domain, node)| opennotr_admin::ClaimView { domain, node }).collect(),
        })
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

/// The registry of built-in plugins (`tcp`, `udp`, and the embedded
/// gateway's `http` and `h2c`, sharing one router).
pub fn builtin_plugins() -> Registry {
    let mut r = Registry::new();
    r.register(plugins::tcp::TcpFactory).register(plugins::udp::UdpFactory);
    opennotr_gateway::register(&mut r);
    r
}

/// Sets up every plugin: the configured ones with their JSON, the other
/// registered ones with `{}`. Fails on an invalid plugin config or an
/// unknown plugin name, before anything is bound.
pub fn setup_plugins(
    cfg: &ServerConfig,
    registry: &Registry,
) -> Result<BTreeMap<String, Arc<dyn Plugin>>, ServerError> {
    let mut out = BTreeMap::new();
    for (name, conf) in &cfg.plugins {
        match registry.setup(name, conf) {
            Some(Ok(p)) => {
                out.insert(name.clone(), p);
            }
            Some(Err(e)) => return Err(plugin_config_error(name, e)),
            None if RESERVED_PLUGINS.contains(&name.as_str()) => {
                warn!(plugin = %name, "plugin is not built into this server yet; forwards asking for it will be refused");
            }
            None => {
                let known: Vec<_> = registry.names().collect();
                return Err(ServerError::Config {
                    key: format!("plugin.{name}"),
                    message: format!("unknown plugin {name:?} (this server has: {})", known.join(", ")),
                });
            }
        }
    }
    for name in registry.names() {
        if !out.contains_key(name) {
            match registry.setup(name, &serde_json::json!({})) {
                Some(Ok(p)) => {
                    out.insert(name.to_string(), p);
                }
                Some(Err(e)) => return Err(plugin_config_error(name, e)),
                None => {}
            }
        }
    }
    Ok(out)
}

/// Every registered plugin's effective config: its `plugin.<name>` entry,
/// or `{}`.
pub(crate) fn plugin_configs(cfg: &ServerConfig, registry: &Registry) -> BTreeMap<String, serde_json::Value> {
    registry
        .names()
        .map(|n| (n.to_string(), cfg.plugins.get(n).cloned().unwrap_or_else(|| serde_json::json!({}))))
        .collect()
}

pub(crate) fn plugin_config_error(name: &str, e: opennotr_plugin::PluginError) -> ServerError {
    match e {
        opennotr_plugin::PluginError::Config { key, message } => ServerError::Config { key, message },
        other => ServerError::Config { key: format!("plugin.{name}"), message: other.to_string() },
    }
}

/// The public addresses client domains resolve to: `server.publicIP`, or
/// the address the control listener is bound to when it is a specific one.
/// Never looked up on the internet.
fn public_addresses(cfg: &ServerConfig) -> Result<Vec<std::net::IpAddr>, ServerError> {
    if !cfg.server.public_ips.is_empty() {
        return Ok(cfg.server.public_ips.clone());
    }
    let ip = cfg.server.listen.ip();
    if !ip.is_unspecified() {
        return Ok(vec![ip]);
    }
    if cfg.dns.is_some() || !cfg.etcd_endpoints.is_empty() {
        return Err(ServerError::Config {
            key: "server.publicIP".into(),
            message: "required for DNS when server.listen is bound to all interfaces (which address is public?)".into(),
        });
    }
    Ok(Vec::new())
}

impl Server {
    /// The DNS server's address, when it is on.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|d| d.local_addr())
    }

    /// Sets up the plugins (a config error comes back before anything is
    /// bound) and binds the control listener.
    pub async fn bind(cfg: ServerConfig, registry: &Registry) -> Result<Server, ServerError> {
        creds::warn_weak(&opennotr_config::weak_keys(&cfg));
        let plugins = setup_plugins(&cfg, registry)?;
        // Without the capability (or nft, or Linux), the virtual LAN is off
        // and everything else works: one warning says so.
        let vlan = vlan::setup(&cfg).unwrap_or_else(|reason| {
            warn!(%reason, "virtual LAN off (it needs Linux, CAP_NET_ADMIN and the nft command); the tcp and udp plugins work as usual");
            None
        });
        let public = public_addresses(&cfg)?;
        let cluster_endpoints = match &cfg.cluster {
            None => None,
            Some(c) => {
                let e = cluster::endpoints(c).map_err(|(key, message)| ServerError::Config { key, message })?;
                if cluster::advertise(&cfg, cfg.server.listen).is_none() {
                    return Err(ServerError::Config {
                        key: "cluster.advertise".into(),
                        message: "required when server.listen is bound to all interfaces and server.publicIP is \
                                  unset (where do clients and other nodes reach this node?)"
                            .into(),
                    });
                }
                Some(e)
            }
        };
        let addr = cfg.server.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let quic = match &cfg.server.quic {
            None => None,
            Some(q) => Some(quic::bind(&cfg, q, listener.local_addr().unwrap_or(addr))?),
        };
        let dns = match &cfg.dns {
            None => None,
            Some(d) => {
                let zone = opennotr_dns::ZoneConfig {
                    zone: cfg.server.domain.clone(),
                    public: public.clone(),
                    ttl: d.ttl,
                    wildcard: d.wildcard,
                    nameserver: d.nameserver.clone(),
                };
                let server = opennotr_dns::DnsServer::bind(d.listen, zone)
                    .await
                    .map_err(|source| ServerError::Bind { addr: d.listen, source })?;
                Some(server)
            }
        };
        let etcd = (!cfg.etcd_endpoints.is_empty()).then(|| {
            opennotr_dns::etcd::EtcdPublisher::new(opennotr_dns::etcd::EtcdConfig {
                endpoints: cfg.etcd_endpoints.clone(),
                prefix: cfg.etcd_prefix.clone(),
                lease_ttl: Duration::from_secs(cfg.etcd_lease_ttl),
                public: public.clone(),
                record_ttl: cfg.dns.as_ref().map(|d| d.ttl).unwrap_or(60),
                // Unique per server even when several share one etcd, zone
                // and port: their public addresses differ.
                owner: format!(
                    "opennotrd {} {} {}",
                    cfg.server.domain,
                    cfg.server.listen,
                    public.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
                ),
            })
        });
        let cluster = match (&cfg.cluster, cluster_endpoints) {
            (Some(c), Some(endpoints)) => {
                let control = listener.local_addr().unwrap_or(addr);
                let advertise = cluster::advertise(&cfg, control).unwrap_or_else(|| control.to_string());
                // What DNS answers for its clients' domains on every node:
                // the addresses this node's own DNS answers with, else the
                // advertised one.
                let public = match public.is_empty() {
                    false => public.clone(),
                    true => advertise.parse::<SocketAddr>().map(|a| vec![a.ip()]).unwrap_or_default(),
                };
                Some(Arc::new(cluster::Cluster::new(c.clone(), endpoints, advertise, public)))
            }
            _ => None,
        };
        let mut state = state::State::new(&cfg);
        if let Some(c) = &cluster {
            let c = c.clone();
            state.vips.avoid(move |ip| c.routes().vips.contains_key(&ip));
        }
        opennotr_transport::fds::set_reserve(cfg.limits.fd_reserve);
        let handshake_slots = Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_handshakes));
        let shared = Arc::new(Shared {
            plugins: std::sync::RwLock::new(plugins),
            registry: registry.clone(),
            plugin_cfgs: std::sync::Mutex::new(plugin_configs(&cfg, registry)),
            state: std::sync::Mutex::new(state),
            next_forward: 1.into(),
            sessions: TaskTracker::new(),
            streams: TaskTracker::new(),
            draining: CancellationToken::new(),
            kill: CancellationToken::new(),
            vlan: std::sync::Mutex::new(None),
            names: tokio::sync::watch::Sender::new(Arc::new(opennotr_dns::Names::new())),
            names_changed: tokio::sync::Notify::new(),
            queued: Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_handshakes.saturating_mul(4))),
            handshake_slots,
            sources: sources::Sources::new(&cfg.limits),
            creds: std::sync::RwLock::new(Arc::new(creds::Creds::from_config(&cfg))),
            limits: std::sync::RwLock::new(cfg.limits.clone()),
            refusals: creds::Refusals::default(),
            handshakes: Default::default(),
            channel_stats: Default::default(),
            dns_stats: dns.as_ref().map(|d| d.stats()),
            config_path: Default::default(),
            admin_token: Default::default(),
            quic_stats: Arc::default(),
            groups: Arc::default(),
            access: Arc::default(),
            links: cluster
                .as_ref()
                .zip(cfg.cluster.as_ref())
                .map(|(c, s)| Arc::new(links::Links::new(c.clone(), s.key.clone()))),
            cluster,
            cfg,
        });
        if let Some(v) = &vlan {
            *shared.vlan.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.rules.clone());
        }
        let admin = match &shared.cfg.admin {
            None => None,
            Some(a) => {
                let backend = Arc::new(ServerHandle { shared: shared.clone() });
                let server = opennotr_admin::AdminServer::bind(a.listen, a.token.expose().to_string(), backend)
                    .await
                    .map_err(|source| ServerError::Bind { addr: a.listen, source })?;
                let _ = shared.admin_token.set(server.token_handle());
                Some(server)
            }
        };
        Ok(Server { listener, quic, shared, vlan, dns, etcd, admin })
    }

    /// The admin API's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// The control listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.shared.cfg.server.listen)
    }

    /// The QUIC endpoint's address, when `server.quic` is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// A handle for looking at the server while it runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { shared: self.shared.clone() }
    }

    /// Serves until `shutdown` is cancelled, then stops accepting new
    /// clients and visitors, lets open connections drain for
    /// `server.shutdownGrace`, closes every session and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let shared = self.shared;
        info!(addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening for clients");
        for p in shared.plugins().values() {
            p.start(&shared.server_info());
        }
        let accept_stop = CancellationToken::new();
        let accept = tokio::spawn(conn::accept_loop(self.listener, shared.clone(), accept_stop.clone()));
        let quic_accept = self.quic.map(|endpoint| {
            info!(addr = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening for QUIC clients");
            tokio::spawn(quic::accept_loop(endpoint, shared.clone(), accept_stop.clone()))
        });
        if let Some(v) = self.vlan {
            vlan::spawn(v, shared.clone(), shared.kill.clone());
        }
        let cluster_stop = CancellationToken::new();
        let cluster = shared.cluster.clone().map(|c| {
            // A node that lost its place in the cluster (its claims) closes
            // its sessions: their clients reconnect, here once it is back,
            // or on another server.
            let mut losses = c.losses();
            let (sh, stop) = (shared.clone(), cluster_stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = losses.changed() => if r.is_err() { break },
                        _ = stop.cancelled() => break,
                    }
                    let sessions: Vec<_> = sh.state().sessions.values().cloned().collect();
                    for s in sessions {
                        s.close("this server lost its place in the cluster (etcd out of reach); reconnect");
                    }
                }
            });
            // Another node asks to end a session of a client that came to
            // it: the same client (its id) under the same credential.
            if let Some(mut takeovers) = c.takeovers() {
                let (sh, stop) = (shared.clone(), cluster_stop.clone());
                tokio::spawn(async move {
                    loop {
                        let t = tokio::select! {
                            t = takeovers.recv() => match t { Some(t) => t, None => break },
                            _ = stop.cancelled() => break,
                        };
                        let sessions: Vec<_> = sh.state().sessions.values().cloned().collect();
                        let taken = sessions.into_iter().filter(|s| {
                            hex::encode(s.id) == t.session
                                && s.client == t.name
                                && cluster::client_key(&s.client_id) == t.client
                        });
                        for s in taken {
                            info!(domain = %s.domain, node = %t.by, "the client connected to another node; closing its session here");
                            s.close(&format!("this client connected to node {}", t.by));
                        }
                    }
                });
            }
            tokio::spawn(c.run(cluster_stop.clone()))
        });
        let publisher_stop = CancellationToken::new();
        let publisher = tokio::spawn(publish_names(shared.clone(), publisher_stop.clone()));
        let names_stop = CancellationToken::new();
        let mut name_tasks = Vec::new();
        if let Some(mut dns) = self.dns {
            info!(addr = %dns.local_addr(), "listening for DNS queries");
            if let Some(c) = &shared.cluster {
                // Every node answers for the domains of every node's clients.
                dns = dns.with_remote(c.remote_names());
            }
            name_tasks.push(tokio::spawn(dns.run(shared.names.subscribe(), names_stop.clone())));
        }
        if let Some(etcd) = self.etcd {
            name_tasks.push(tokio::spawn(etcd.run(shared.names.subscribe(), names_stop.clone())));
        }
        if let Some(admin) = self.admin {
            info!(addr = %admin.local_addr(), "admin API listening");
            name_tasks.push(tokio::spawn(admin.run(names_stop.clone())));
        }

        shutdown.cancelled().await;
        if let Some(c) = &shared.cluster {
            // The sessions' claims go with the lease's revocation at the
            // end, not one delete each on the way out.
            c.leave();
        }
        let grace = shared.cfg.server.shutdown_grace;
        info!(grace_secs = grace.as_secs_f64(), "shutting down: refusing new clients, draining open connections");
        shared.draining.cancel();
        shared.streams.close();
        if tokio::time::timeout(grace, shared.streams.wait()).await.is_err() {
            warn!("grace period over; closing the connections still open");
        }
        shared.kill.cancel();
        accept_stop.cancel();
        let _ = accept.await;
        if let Some(q) = quic_accept {
            let _ = q.await;
        }
        shared.sessions.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.sessions.wait()).await;
        // The last names (none, once every session is gone) reach DNS and
        // etcd before they stop.
        publisher_stop.cancel();
        let _ = publisher.await;
        // Its clients are gone: the node leaves the cluster.
        cluster_stop.cancel();
        if let Some(c) = cluster {
            let _ = c.await;
        }
        names_stop.cancel();
        for t in name_tasks {
            let _ = t.await;
        }
        if let Some(rules) = shared.vlan.lock().unwrap_or_else(|e| e.into_inner()).take() {
            rules.remove();
            info!("virtual LAN rules removed");
        }
        info!("stopped");
        Ok(())
    }
}

impl ServerHandle {
    /// Where [`reload`](ServerHandle::reload) re-reads the configuration.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        *self.shared.config_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let sessions: Vec<_> = self.shared.state().sessions.values().cloned().collect();
        sessions.iter().map(|s| s.info()).collect()
    }

    /// Whether `vip` is held by a session.
    pub fn vip_in_use(&self, vip: Ipv4Addr) -> bool {
        self.shared.state().vips.is_used(vip)
    }

    /// Every live node's sessions, asked over node links, as
    /// `GET /api/v1/cluster/sessions` answers; `None` for a single server.
    pub async fn cluster_sessions(&self) -> Option<Vec<opennotr_admin::NodeSessions>> {
        self.shared.cluster.as_ref()?;
        Some(admin::cluster_sessions(&self.shared).await)
    }

    /// `/metrics` as the admin API serves it.
    pub fn metrics_text(&self) -> String {
        admin::metrics(&self.shared)
    }
}

/// A server on loopback with the built-in plugins (tcp bound to 127.0.0.1),
/// for the unit tests that need the whole of one.
#[cfg(test)]
pub(crate) async fn test_server() -> Server {
    let yaml = "server:\n  listen: \"127.0.0.1:0\"\n  authKey: \"a key for the unit tests\"\n  domain: \"z.test\"\n\
                dhcp:\n  cidr: \"100.64.242.1/24\"\nplugin:\n  tcp: |\n    {\"bind\": \"127.0.0.1\"}\n";
    let cfg = opennotr_config::parse_server(yaml).expect("the test server's configuration");
    Server::bind(cfg, &builtin_plugins()).await.expect("a test server")
}
