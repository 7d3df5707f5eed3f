//! The gateway plugins: `http` and `h2c` here, `https` and `tls` in
//! [`crate::tls`], the external (OpenResty) mode in [`crate::external`];
//! [`register`] adds them to a registry around one shared [`Gateway`].
//!
//! A plugin is set up from its config (by the server's start, or anew by a
//! reload) and commits in [`Plugin::start`]: only then does it take over
//! its port, so a reload refused half-way changes nothing. A port (one
//! `listen` address) outlives the plugins on it: a reload's new plugin
//! takes the bound listener over, new connections get the new settings,
//! and the old plugin's connections finish the request in flight and close
//! while its pooled and multiplexed connections to services are closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use opennotr_plugin::{
    async_trait, CancellationToken, Carried, Endpoint, ForwardContext, ForwardMeta, Lifecycle, Plugin, PluginError,
    PluginFactory, Registry, ServerInfo,
};
use tracing::{debug, info};

use crate::config::{GatewayConfig, Mode};
use crate::ctx::{Ctx, Settings};
use crate::gateway::{Gateway, HttpListener};
use crate::limits::ConnLimits;
use crate::route::{Scheme, Upstream};
use crate::serve::{accept_loop, serve_connection, Start};

/// What the gateway plugins of one server share.
struct Shared {
    gateway: Arc<Gateway>,
    http_ports: Mutex<HashMap<(Scheme, SocketAddr), Weak<HttpPort>>>,
    /// The TLS ports (`https` and `tls` plugins), one per `listen` address,
    /// shared when both plugins name the same one.
    tls_ports: crate::tls::TlsPorts,
    /// The plugins in external mode (`adminUrl`).
    external_peers: Arc<crate::external::Peers>,
}

/// Adds the gateway plugins (`http`, `h2c`, `https`, `tls`) to `registry`,
/// sharing one new [`Gateway`], which is returned (for tests and the admin
/// API).
pub fn register(registry: &mut Registry) -> Arc<Gateway> {
    let shared = Arc::new(Shared {
        gateway: Gateway::new(),
        http_ports: Default::default(),
        tls_ports: Default::default(),
        external_peers: Default::default(),
    });
    for scheme in Scheme::ALL {
        registry.register(GatewayFactory { scheme, shared: shared.clone() });
    }
    shared.gateway.clone()
}

/// Creates one gateway plugin on a shared router.
pub struct GatewayFactory {
    scheme: Scheme,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GatewayFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayFactory").field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl PluginFactory for GatewayFactory {
    fn name(&self) -> &'static str {
        self.scheme.name()
    }

    fn setup(&self, config: &serde_json::Value) -> Result<Arc<dyn Plugin>, PluginError> {
        let cfg = GatewayConfig::parse(self.scheme.name(), config)?;
        if let (Scheme::Https | Scheme::Tls, Mode::Embedded { listen }) = (self.scheme, &cfg.mode) {
            return crate::tls::setup(self.scheme, &self.shared.gateway, &self.shared.tls_ports, *listen, &cfg);
        }
        let shutdown = CancellationToken::new();
        let external = match &cfg.mode {
            Mode::External { admin_url, secret } => crate::external::External::new(
                self.scheme.name(),
                admin_url,
                secret.as_ref(),
                config,
                shutdown.clone(),
                &self.shared.external_peers,
            )?,
            _ => None,
        };
        let port = match cfg.mode {
            Mode::Embedded { listen } => Some(self.shared.http_port(self.scheme, listen)),
            _ => None,
        };
        Ok(Arc::new_cyclic(|me| GatewayPlugin {
            scheme: self.scheme,
            gateway: self.shared.gateway.clone(),
            settings: Arc::new(Settings::new(self.scheme, &cfg)),
            cfg,
            port,
            life: OnceLock::new(),
            external,
            shutdown,
            me: me.clone(),
        }))
    }
}

impl Shared {
    /// The port of `listen` for `scheme`: the live one, or a new one (not
    /// bound until a forward needs it).
    fn http_port(&self, scheme: Scheme, listen: SocketAddr) -> Arc<HttpPort> {
        let mut ports = self.http_ports.lock().unwrap_or_else(|e| e.into_inner());
        ports.retain(|_, w| w.strong_count() > 0);
        if let Some(p) = ports.get(&(scheme, listen)).and_then(Weak::upgrade) {
            return p;
        }
        let p = Arc::new(HttpPort {
            scheme,
            addr: listen,
            gateway: self.gateway.clone(),
            settings: Arc::new(RwLock::new(None)),
            limits: ConnLimits::new(scheme.name(), listen, 0, 0),
            bound: tokio::sync::OnceCell::new(),
            shutdown: CancellationToken::new(),
        });
        ports.insert((scheme, listen), Arc::downgrade(&p));
        p
    }
}

/// One `http` or `h2c` listen address.
pub(crate) struct HttpPort {
    scheme: Scheme,
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    /// The settings new connections get: the newest started plugin's.
    settings: Arc<RwLock<Option<Arc<Settings>>>>,
    limits: Arc<ConnLimits>,
    bound: tokio::sync::OnceCell<u16>,
    /// Cancelled when the last plugin on the port is gone.
    shutdown: CancellationToken,
}

impl Drop for HttpPort {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl HttpPort {
    fn install(&self, settings: Arc<Settings>, cfg: &GatewayConfig) {
        self.limits.set(cfg.max_connections, cfg.max_connections_per_ip);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Some(settings);
    }

    /// Binds the listener, once; its port.
    async fn listen(&self, life: Lifecycle) -> Result<u16, PluginError> {
        self.bound
            .get_or_try_init(|| async {
                let addr = self.addr;
                let listener = opennotr_transport::listen(addr)
                    .map_err(|e| PluginError::Refused(format!("the gateway cannot listen on {addr}: {e}")))?;
                let port = listener.local_addr().map(|a| a.port()).unwrap_or(addr.port());
                info!(plugin = self.scheme.name(), addr = %addr, port, "gateway listening");
                if let Ok(a) = listener.local_addr() {
                    self.limits.set_bound(a);
                }
                self.gateway.add_listener(&self.limits);
                let (gateway, slot, conn_life) = (self.gateway.clone(), self.settings.clone(), life.clone());
                let start = if self.scheme == Scheme::H2c { Start::Detect } else { Start::Http1 };
                let serve = move |stream, peer, admitted| {
                    let settings = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
                    let ctx = settings.map(|s| Ctx::new(gateway.clone(), s, peer, conn_life.clone(), Some(admitted)));
                    async move {
                        if let Some(ctx) = ctx {
                            serve_connection(stream, ctx, start).await;
                        }
                    }
                };
                let label = self.scheme.name();
                let plain = self.scheme == Scheme::Http;
                tokio::spawn(accept_loop(
                    listener,
                    self.limits.clone(),
                    life,
                    self.shutdown.clone(),
                    label,
                    plain,
                    serve,
                ));
                Ok(port)
            })
            .await
            .copied()
    }
}

/// The embedded `http` or `h2c` plugin (or either in external mode).
struct GatewayPlugin {
    scheme: Scheme,
    gateway: Arc<Gateway>,
    cfg: GatewayConfig,
    settings: Arc<Settings>,
    port: Option<Arc<HttpPort>>,
    /// The server's lifecycle, from [`Plugin::start`].
    life: OnceLock<Lifecycle>,
    /// The external mode (`adminUrl`): registrations with the gateway.
    external: Option<crate::external::External>,
    /// Cancelled when the plugin is dropped (the server is gone, or a
    /// reload replaced it).
    shutdown: CancellationToken,
    /// Itself, for ACME's HTTP-01 answers (the router holds it weakly).
    me: Weak<GatewayPlugin>,
}

impl Drop for GatewayPlugin {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.settings.retire();
    }
}

impl GatewayPlugin {
    fn life(&self) -> Lifecycle {
        self.life.get().cloned().unwrap_or_default()
    }
}

#[async_trait]
impl HttpListener for GatewayPlugin {
    async fn ensure_listening(&self) -> Result<u16, String> {
        match &self.port {
            Some(p) => p.listen(self.life()).await.map_err(|e| e.to_string()),
            None => Err("HTTP-01 needs the embedded http gateway (plugin.http.listen)".into()),
        }
    }
}

#[async_trait]
impl Plugin for GatewayPlugin {
    fn start(&self, server: &ServerInfo) {
        let _ = self.life.set(server.lifecycle.clone());
        self.settings.follow(server.lifecycle.draining.clone());
        if let Some(port) = &self.port {
            port.install(self.settings.clone(), &self.cfg);
            if self.scheme == Scheme::Http {
                let me: Weak<dyn HttpListener> = self.me.clone();
                self.gateway.set_http_listener(me);
            }
        }
        if let Some(ext) = &self.external {
            ext.start(Some(server.vip_pool));
        }
        if let Some(e) = &server.elsewhere {
            self.gateway.set_elsewhere(e.clone());
            // Any node serves any name in a cluster: the port opens now,
            // not with this node's first forward.
            if let Some(port) = self.port.clone() {
                let life = server.lifecycle.clone();
                tokio::spawn(async move {
                    if let Err(e) = port.listen(life).await {
                        tracing::warn!(error = %e, "a gateway port of this cluster node cannot open");
                    }
                });
            }
        }
    }

    /// Another node's visitor for a name of this node's, on the `http` or
    /// `h2c` port: served as if it had come here (never carried on again).
    async fn serve_carried(
        &self,
        io: Box<dyn Carried>,
        visitor: SocketAddr,
        _reached: Option<SocketAddr>,
    ) -> Result<(), Box<dyn Carried>> {
        let start = match self.scheme {
            Scheme::Http => Start::Http1,
            Scheme::H2c => Start::Detect,
            _ => return Err(io),
        };
        let Some(port) = self.port.as_ref().filter(|p| p.bound.get().is_some()) else {
            return Err(io);
        };
        let settings = port.settings.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(settings) = settings else { return Err(io) };
        self.gateway.count_carried_in();
        // Under this port's caps too, by the visitor's own address: a
        // visitor spread over many nodes gets no more here than it would
        // coming here alone. Refused: closed, as the accept loop does.
        let Ok(slot) = port.limits.admit(visitor.ip()) else {
            debug!(%visitor, "carried visitor connection refused by this port's caps");
            return Ok(());
        };
        let ctx = Ctx::new(self.gateway.clone(), settings, visitor, self.life(), Some(Arc::new(slot))).carried();
        let kill = ctx.life.kill.clone();
        tokio::select! {
            _ = serve_connection(io, ctx, start) => {}
            _ = kill.cancelled() => {}
        }
        Ok(())
    }

    async fn run_proxy(&self, meta: &ForwardMeta, ctx: ForwardContext) -> Result<Endpoint, PluginError> {
        if let Some(ext) = &self.external {
            if ctx.access.is_some() {
                // OpenResty proxies the requests: the server sees neither
                // the visitor's address nor its credentials.
                return Err(PluginError::Refused(
                    "access rules (allow, deny, basicAuth) need the embedded gateway; this server's is external".into(),
                ));
            }
            return ext.register(meta, &ctx).await;
        }
        let Some(port) = &self.port else {
            let name = self.scheme.name();
            return Err(PluginError::Refused(match &self.cfg.mode {
                Mode::External { secret: None, .. } => format!(
                    "the external gateway is not usable for {name}: plugin.{name}.adminSecret is not set on this \
                     server (the gateway's admin API needs it); nothing was registered"
                ),
                _ => format!("the {name} gateway is not configured on this server (plugin.{name}.listen)"),
            }));
        };
        if self.life.get().is_none() {
            // Not started: the server set it up but runs another one.
            port.install(self.settings.clone(), &self.cfg);
        }
        let port = port.listen(self.life()).await?;
        let domain = meta.domain.to_ascii_lowercase();
        self.gateway.insert(self.scheme, &domain, Upstream::of(meta, &ctx)).map_err(PluginError::Refused)?;
        let url = if port == 80 { format!("http://{domain}") } else { format!("http://{domain}:{port}") };
        Ok(Endpoint { public_port: Some(port), url })
    }

    async fn stop_proxy(&self, meta: &ForwardMeta) {
        if let Some(ext) = &self.external {
            return ext.unregister(meta).await;
        }
        self.gateway.remove(self.scheme, &meta.domain, meta.id);
    }

    /// The embedded gateway is configured and the domain's route is free
    /// (an empty domain is one the server would draw: free). The external
    /// gateway is not asked; its listener is not bound ahead of need.
    async fn check_proxy(&self, meta: &ForwardMeta) -> Result<(), PluginError> {
        if self.external.is_some() {
            return Ok(());
        }
        if self.port.is_none() {
            // `run_proxy`'s refusals, word for word.
            let name = self.scheme.name();
            return Err(PluginError::Refused(match &self.cfg.mode {
                Mode::External { secret: None, .. } => format!(
                    "the external gateway is not usable for {name}: plugin.{name}.adminSecret is not set on this \
                     server (the gateway's admin API needs it)"
                ),
                _ => format!("the {name} gateway is not configured on this server (plugin.{name}.listen)"),
            }));
        }
        if meta.domain.is_empty() {
            return Ok(());
        }
        self.gateway.check_free(self.scheme, &meta.domain).map_err(PluginError::Refused)
    }

    fn metrics(&self, out: &mut String) {
        // One family for every scheme, so one plugin writes it: the `http`
        // plugin, which every server with the gateway has.
        if self.scheme == Scheme::Http {
            self.gateway.write_metrics(out);
        }
    }
}
