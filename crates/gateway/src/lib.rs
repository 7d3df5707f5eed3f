//! The embedded HTTP gateway of `opennotrd`: the `http`, `https`, `h2c`
//! and `tls` plugins.
//!
//! Many clients share one public port per scheme (80 for `http`, 443 for
//! `https` and `tls`, 980 for `h2c` in the original); the gateway routes
//! each request by its `Host`
//! (HTTP/1.1) or `:authority` (HTTP/2) to the client whose domain it names,
//! and proxies it over a stream opened straight to that client's session.
//!
//! # Layout
//! - [`Gateway`]: the router shared by every gateway plugin of one server:
//!   domain → per-scheme [`Upstream`].
//! - [`register`]: adds the `http`, `h2c`, `https` and `tls` factories,
//!   sharing one router, to a plugin registry.
//! - `config`: the plugins' JSON (`listen` or the original's `adminUrl`,
//!   `wildcard`, timeouts).
//! - `external`: the external gateway mode (`adminUrl`): registrations with
//!   an OpenResty gateway (`deploy/openresty/`), awaited, removed when the
//!   session ends, re-pushed periodically; stale mappings into the VIP pool
//!   (left by a crashed opennotrd) removed from the server's start on.
//! - `serve`: hyper 1 connections on the shared listeners, per-request
//!   routing, header rewriting, upgrades, error pages.
//! - `acme`: automatic certificates for the `https` plugin (HTTP-01 on the
//!   `http` plugin's port or TLS-ALPN-01), stored on disk and renewed.
//! - `tls`: the TLS ports of the embedded `https` (termination, certificates
//!   by SNI, reload) and `tls` (SNI passthrough) plugins, one listener per
//!   address shared by both.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opennotr_plugin::{
    async_trait, CancellationToken, Endpoint, ForwardContext, ForwardMeta, Plugin, PluginError, PluginFactory,
    Registry, ServerInfo, Tunnel,
};
use tracing::info;

mod acme;
mod config;
mod external;
mod h1;
mod serve;
mod tls;

pub use acme::{AcmeConfig, Challenge};
pub use config::{CertFiles, GatewayConfig, Mode};

/// A scheme the gateway serves; each has its own listener and its own
/// routes (a domain may have an `http` and an `h2c` forward at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scheme {
    /// HTTP/1.1 (with upgrades) to an HTTP/1.1 service.
    Http,
    /// Cleartext HTTP/2 with prior knowledge (gRPC) to an HTTP/2 service.
    H2c,
    /// TLS terminated at the gateway, then HTTP/1.1 to the service (and
    /// HTTP/2 to `h2c` forwards of the same domain: gRPC over TLS).
    Https,
    /// SNI passthrough: the visitor's TLS stream, untouched, to the
    /// client's own TLS service.
    Tls,
}

impl Scheme {
    /// The plugin (protocol) name.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::H2c => "h2c",
            Scheme::Https => "https",
            Scheme::Tls => "tls",
        }
    }
}

/// Where requests for one domain and scheme go: a forward of a live session.
#[derive(Clone)]
pub struct Upstream {
    /// Opens streams to the client.
    pub tunnel: Arc<dyn Tunnel>,
    /// What the client dials (`localIP:localPort` of the forward).
    pub target: SocketAddr,
    /// The forward's id ([`ForwardMeta::id`]).
    pub forward: u64,
    /// The client's id.
    pub client_id: String,
    /// Cancelled when the session is gone.
    pub kill: CancellationToken,
}

impl Upstream {
    /// The route to `meta`'s forward on its session.
    pub fn of(meta: &ForwardMeta, ctx: &ForwardContext) -> Upstream {
        Upstream {
            tunnel: ctx.tunnel.clone(),
            target: meta.target(),
            forward: meta.id,
            client_id: meta.client_id.clone(),
            kill: ctx.kill.clone(),
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("target", &self.target)
            .field("forward", &self.forward)
            .field("client_id", &self.client_id)
            .field("live", &!self.kill.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// How many domains whose client went away are remembered, so that their
/// visitors get "client not connected" (503) rather than "unknown" (404).
const GONE_MEMORY: usize = 4096;

#[derive(Default)]
struct Routes {
    live: HashMap<String, BTreeMap<Scheme, Upstream>>,
    gone: HashSet<(Scheme, String)>,
    gone_order: VecDeque<(Scheme, String)>,
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A live forward.
    Found(Upstream),
    /// The domain had a forward of this scheme whose client is gone.
    Gone,
    /// Nothing is routed for the name.
    Unknown,
}

/// The router shared by all gateway plugins of one server.
#[derive(Default)]
pub struct Gateway {
    routes: Mutex<Routes>,
    /// The TLS ports (`https` and `tls` plugins), one per `listen` address,
    /// shared when both plugins name the same one.
    tls_ports: Mutex<HashMap<SocketAddr, std::sync::Weak<tls::TlsPort>>>,
    /// Pending ACME HTTP-01 challenges: token → key authorization, answered
    /// on the `http` plugin's port.
    acme_tokens: Mutex<HashMap<String, String>>,
    /// The embedded `http` plugin, whose listener HTTP-01 needs.
    http_plugin: Mutex<std::sync::Weak<GatewayPlugin>>,
    /// Requests answered, for the metrics.
    requests: RequestCounts,
    /// The plugins in external mode (`adminUrl`).
    external_peers: Arc<external::Peers>,
}

/// Requests answered by scheme and status (100-999): one relaxed atomic add
/// per request, no lock shared by every visitor connection.
struct RequestCounts(Box<[std::sync::atomic::AtomicU64]>);

const SCHEMES: [Scheme; 4] = [Scheme::Http, Scheme::H2c, Scheme::Https, Scheme::Tls];
const STATUSES: usize = 900;

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts((0..SCHEMES.len() * STATUSES).map(|_| Default::default()).collect())
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("routes", &self.routes()).finish()
    }
}

impl Gateway {
    /// An empty router.
    pub fn new() -> Arc<Gateway> {
        Arc::new(Gateway::default())
    }

    fn count_request(&self, scheme: Scheme, status: u16) {
        let Some(s) = SCHEMES.iter().position(|x| *x == scheme) else { return };
        if let Some(c) = usize::from(status).checked_sub(100).filter(|i| *i < STATUSES) {
            self.requests.0[s * STATUSES + c].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The request counters as one Prometheus family.
    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str(
            "# HELP opennotr_gateway_requests_total Requests the embedded gateway answered, by scheme and status.\n\
             # TYPE opennotr_gateway_requests_total counter\n",
        );
        for (i, c) in self.requests.0.iter().enumerate() {
            let n = c.load(std::sync::atomic::Ordering::Relaxed);
            if n > 0 {
                let (scheme, status) = (SCHEMES[i / STATUSES].name(), 100 + i % STATUSES);
                let _ = writeln!(out, "opennotr_gateway_requests_total{{scheme=\"{scheme}\",status=\"{status}\"}} {n}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes `domain` (any case) for `scheme` to `up`. A route held by
    /// another live forward refuses, unless it belongs to the same client
    /// (a reconnect whose old session is not cleaned up yet) or its session
    /// is gone.
    pub fn insert(&self, scheme: Scheme, domain: &str, up: Upstream) -> Result<(), String> {
        let domain = domain.to_ascii_lowercase();
        let mut r = self.lock();
        let per = r.live.entry(domain.clone()).or_default();
        if let Some(old) = per.get(&scheme) {
            if old.forward != up.forward && !old.kill.is_cancelled() && old.client_id != up.client_id {
                return Err(format!(
                    "domain {domain} is already routed for {} by another client's forward",
                    scheme.name()
                ));
            }
        }
        per.insert(scheme, up);
        let key = (scheme, domain);
        if r.gone.remove(&key) {
            r.gone_order.retain(|k| k != &key);
        }
        Ok(())
    }

    /// Removes the route of `domain` for `scheme` if it is still forward
    /// `forward`'s. Returns whether it removed it.
    pub fn remove(&self, scheme: Scheme, domain: &str, forward: u64) -> bool {
        let domain = domain.to_ascii_lowercase();
        let mut r = self.lock();
        let Some(per) = r.live.get_mut(&domain) else { return false };
        if per.get(&scheme).is_none_or(|u| u.forward != forward) {
            return false;
        }
        per.remove(&scheme);
        if per.is_empty() {
            r.live.remove(&domain);
        }
        if r.gone_order.len() >= GONE_MEMORY {
            if let Some(old) = r.gone_order.pop_front() {
                r.gone.remove(&old);
            }
        }
        let key = (scheme, domain);
        if r.gone.insert(key.clone()) {
            r.gone_order.push_back(key);
        }
        true
    }

    /// Finds the route for `host` (lowercase, no port). With `wildcard`, a
    /// name below a routed domain routes to it (the nearest one wins).
    pub fn lookup(&self, scheme: Scheme, host: &str, wildcard: bool) -> Lookup {
        let r = self.lock();
        let mut name = host;
        loop {
            if let Some(up) = r.live.get(name).and_then(|per| per.get(&scheme)) {
                return if up.kill.is_cancelled() { Lookup::Gone } else { Lookup::Found(up.clone()) };
            }
            if r.gone.contains(&(scheme, name.to_string())) {
                return Lookup::Gone;
            }
            if !wildcard {
                return Lookup::Unknown;
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => return Lookup::Unknown,
            }
        }
    }

    pub(crate) fn acme_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.acme_tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the embedded `http` plugin's listener (HTTP-01 answers there)
    /// if no `http` forward did yet; its port.
    pub(crate) async fn ensure_http_listener(&self) -> Result<u16, String> {
        let plugin = self.http_plugin.lock().unwrap_or_else(|e| e.into_inner()).upgrade();
        let Some(plugin) = plugin else {
            return Err("HTTP-01 needs the embedded http gateway (plugin.http.listen)".into());
        };
        match plugin.cfg.mode {
            Mode::Embedded { listen } => plugin.listen(listen).await.map_err(|e| e.to_string()),
            _ => Err("HTTP-01 needs the embedded http gateway (plugin.http.listen)".into()),
        }
    }

    /// Every live route: scheme, domain, forward id.
    pub fn routes(&self) -> Vec<(Scheme, String, u64)> {
        let r = self.lock();
        let mut out: Vec<_> =
            r.live.iter().flat_map(|(d, per)| per.iter().map(move |(s, u)| (*s, d.clone(), u.forward))).collect();
        out.sort();
        out
    }
}

/// Adds the gateway plugins (`http`, `h2c`, `https`, `tls`) to `registry`,
/// sharing one new [`Gateway`], which is returned (for tests and later the
/// admin API).
pub fn register(registry: &mut Registry) -> Arc<Gateway> {
    let gateway = Gateway::new();
    for scheme in [Scheme::Http, Scheme::H2c, Scheme::Https, Scheme::Tls] {
        registry.register(GatewayFactory { scheme, gateway: gateway.clone() });
    }
    gateway
}

/// Creates one gateway plugin (`http` or `h2c`) on a shared router.
#[derive(Debug)]
pub struct GatewayFactory {
    scheme: Scheme,
    gateway: Arc<Gateway>,
}

impl GatewayFactory {
    /// A factory for `scheme` routing through `gateway`.
    pub fn new(scheme: Scheme, gateway: Arc<Gateway>) -> GatewayFactory {
        GatewayFactory { scheme, gateway }
    }
}

impl PluginFactory for GatewayFactory {
    fn name(&self) -> &'static str {
        self.scheme.name()
    }

    fn setup(&self, config: &serde_json::Value) -> Result<Arc<dyn Plugin>, PluginError> {
        let cfg = GatewayConfig::parse(self.scheme.name(), config)?;
        if let (Scheme::Https | Scheme::Tls, Mode::Embedded { listen }) = (self.scheme, &cfg.mode) {
            return tls::setup(self.scheme, &self.gateway, *listen, &cfg);
        }
        let shutdown = CancellationToken::new();
        let external = match &cfg.mode {
            Mode::External { admin_url } => Some(external::External::new(
                self.scheme.name(),
                admin_url,
                config,
                shutdown.clone(),
                &self.gateway.external_peers,
            )?),
            _ => None,
        };
        let plugin = Arc::new(GatewayPlugin {
            scheme: self.scheme,
            gateway: self.gateway.clone(),
            settings: Arc::new(serve::Settings::new(self.scheme, &cfg)),
            cfg,
            listener: tokio::sync::OnceCell::new(),
            external,
            shutdown,
        });
        if self.scheme == Scheme::Http && matches!(plugin.cfg.mode, Mode::Embedded { .. }) {
            *self.gateway.http_plugin.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&plugin);
        }
        Ok(plugin)
    }
}

struct GatewayPlugin {
    scheme: Scheme,
    gateway: Arc<Gateway>,
    cfg: GatewayConfig,
    settings: Arc<serve::Settings>,
    /// The bound port, once the first forward bound the listener. The
    /// listener then lives as long as the plugin.
    listener: tokio::sync::OnceCell<u16>,
    /// The external mode (`adminUrl`): registrations with the gateway.
    external: Option<external::External>,
    /// Cancelled when the plugin is dropped (the server is gone).
    shutdown: CancellationToken,
}

impl Drop for GatewayPlugin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl GatewayPlugin {
    async fn listen(&self, addr: SocketAddr) -> Result<u16, PluginError> {
        self.listener
            .get_or_try_init(|| async {
                let listener = bind(addr)
                    .map_err(|e| PluginError::Refused(format!("the gateway cannot listen on {addr}: {e}")))?;
                let port = listener.local_addr().map(|a| a.port()).unwrap_or(addr.port());
                info!(plugin = self.scheme.name(), addr = %addr, port, "gateway listening");
                tokio::spawn(serve::accept_loop(
                    listener,
                    self.gateway.clone(),
                    self.settings.clone(),
                    self.shutdown.clone(),
                ));
                Ok(port)
            })
            .await
            .copied()
    }
}

#[async_trait]
impl Plugin for GatewayPlugin {
    fn start(&self, server: &ServerInfo) {
        if let Some(ext) = &self.external {
            ext.start(Some(server.vip_pool));
        }
    }

    async fn run_proxy(&self, meta: &ForwardMeta, ctx: ForwardContext) -> Result<Endpoint, PluginError> {
        let addr = match &self.cfg.mode {
            Mode::Embedded { listen } => *listen,
            Mode::External { .. } => {
                return match &self.external {
                    Some(ext) => ext.register(meta, &ctx).await,
                    None => Err(PluginError::Refused("the external gateway is not set up".into())),
                }
            }
            Mode::Off => {
                return Err(PluginError::Refused(format!(
                    "the {} gateway is not configured on this server (plugin.{}.listen)",
                    self.scheme.name(),
                    self.scheme.name()
                )))
            }
        };
        let port = self.listen(addr).await?;
        let domain = meta.domain.to_ascii_lowercase();
        let up = Upstream::of(meta, &ctx);
        self.gateway.insert(self.scheme, &domain, up).map_err(PluginError::Refused)?;
        let url = if port == 80 { format!("http://{domain}") } else { format!("http://{domain}:{port}") };
        Ok(Endpoint { public_port: Some(port), url })
    }

    async fn stop_proxy(&self, meta: &ForwardMeta) {
        if let Some(ext) = &self.external {
            return ext.unregister(meta).await;
        }
        self.gateway.remove(self.scheme, &meta.domain, meta.id);
    }

    fn metrics(&self, out: &mut String) {
        // One family for every scheme, so one plugin writes it: the `http`
        // plugin, which every server with the gateway has.
        if self.scheme == Scheme::Http {
            self.gateway.write_metrics(out);
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoTunnel;

    #[async_trait]
    impl Tunnel for NoTunnel {
        async fn open_stream(
            &self,
            _: opennotr_plugin::StreamProtocol,
            _: SocketAddr,
            _: Option<SocketAddr>,
        ) -> Result<opennotr_plugin::TunnelStream, opennotr_plugin::OpenError> {
            Err(opennotr_plugin::OpenError::SessionClosed)
        }
    }

    fn up(forward: u64, client: &str) -> Upstream {
        Upstream {
            tunnel: Arc::new(NoTunnel),
            target: "127.0.0.1:80".parse().unwrap(),
            forward,
            client_id: client.into(),
            kill: CancellationToken::new(),
        }
    }

    #[test]
    fn routes_by_scheme_and_domain() {
        let g = Gateway::new();
        g.insert(Scheme::Http, "App.Example", up(1, "a")).unwrap();
        g.insert(Scheme::H2c, "app.example", up(2, "a")).unwrap();
        assert!(matches!(g.lookup(Scheme::Http, "app.example", false), Lookup::Found(u) if u.forward == 1));
        assert!(matches!(g.lookup(Scheme::H2c, "app.example", false), Lookup::Found(u) if u.forward == 2));
        assert!(matches!(g.lookup(Scheme::Http, "x.app.example", false), Lookup::Unknown));
        assert!(matches!(g.lookup(Scheme::Http, "x.y.app.example", true), Lookup::Found(u) if u.forward == 1));
        assert!(matches!(g.lookup(Scheme::Http, "example", true), Lookup::Unknown));
    }

    #[test]
    fn another_live_client_cannot_take_a_domain() {
        let g = Gateway::new();
        g.insert(Scheme::Http, "a.example", up(1, "a")).unwrap();
        let e = g.insert(Scheme::Http, "a.example", up(2, "b")).unwrap_err();
        assert!(e.contains("already routed"), "{e}");
        // The same client (a reconnect) takes it over; the old forward's
        // stop then leaves it alone.
        g.insert(Scheme::Http, "a.example", up(3, "a")).unwrap();
        assert!(!g.remove(Scheme::Http, "a.example", 1));
        assert!(matches!(g.lookup(Scheme::Http, "a.example", false), Lookup::Found(u) if u.forward == 3));
        // A dead session's route is taken over by anyone.
        let dead = up(4, "c");
        dead.kill.cancel();
        g.insert(Scheme::Http, "b.example", dead).unwrap();
        assert!(matches!(g.lookup(Scheme::Http, "b.example", false), Lookup::Gone));
        g.insert(Scheme::Http, "b.example", up(5, "d")).unwrap();
        assert!(g.remove(Scheme::Http, "b.example", 5));
        assert!(matches!(g.lookup(Scheme::Http, "b.example", false), Lookup::Gone));
        assert_eq!(g.routes(), vec![(Scheme::Http, "a.example".to_string(), 3)]);
    }
}
