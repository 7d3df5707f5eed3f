//! What a visitor connection needs to be served: its plugin's settings
//! ([`Settings`]) and its place in the server's life ([`Ctx`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opennotr_plugin::{CancellationToken, Lifecycle};

use crate::config::GatewayConfig;
use crate::gateway::Gateway;
use crate::limits::Admitted;
use crate::pool::Pool;
use crate::route::Scheme;

/// One gateway plugin's settings, shared by its connections.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) scheme: Scheme,
    pub(crate) wildcard: bool,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) send_timeout: Duration,
    /// Connections to clients' services, for reuse.
    pub(crate) pool: Arc<Pool>,
    /// Cancelled when the plugin that made these settings is replaced (a
    /// reload), or the server starts draining ([`Settings::follow`]): its
    /// connections finish the request in flight and close.
    pub(crate) retired: CancellationToken,
}

impl Settings {
    pub(crate) fn new(scheme: Scheme, cfg: &GatewayConfig) -> Settings {
        Settings {
            scheme,
            wildcard: cfg.wildcard,
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            body_timeout: cfg.body_timeout,
            response_timeout: cfg.response_timeout,
            send_timeout: cfg.send_timeout,
            pool: Arc::new(Pool::new()),
            retired: CancellationToken::new(),
        }
    }

    /// Retires the settings' connections when the server starts draining
    /// too (so a connection has one token to watch, not two).
    pub(crate) fn follow(&self, draining: CancellationToken) {
        let retired = self.retired.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = draining.cancelled() => retired.cancel(),
                _ = retired.cancelled() => {}
            }
        });
    }

    /// Retires the settings' connections and drops the connections kept
    /// to services.
    pub(crate) fn retire(&self) {
        self.retired.cancel();
        self.pool.close();
    }
}

/// One visitor connection's context.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) peer: SocketAddr,
    /// The visitor's address as the forwarding fields give it (an
    /// IPv4-mapped IPv6 address as IPv4).
    pub(crate) ip: String,
    pub(crate) life: Lifecycle,
    /// The connection's slot under the listener's caps, held as long as
    /// anything serves it (an upgraded connection outlives its task).
    pub(crate) slot: Option<Arc<Admitted>>,
    /// Another node of the cluster carried the connection here: it is not
    /// carried on again.
    pub(crate) carried: bool,
}

impl Ctx {
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        settings: Arc<Settings>,
        peer: SocketAddr,
        life: Lifecycle,
        slot: Option<Arc<Admitted>>,
    ) -> Ctx {
        Ctx { gateway, settings, peer, ip: peer.ip().to_canonical().to_string(), life, slot, carried: false }
    }

    /// The context of a connection another node carried here.
    pub(crate) fn carried(mut self) -> Ctx {
        self.carried = true;
        self
    }

    /// No new request should start on the connection: the server is
    /// shutting down, or the plugin was replaced.
    pub(crate) fn closing(&self) -> bool {
        self.settings.retired.is_cancelled()
    }

    /// Ready once [`Ctx::closing`] holds.
    pub(crate) async fn until_closing(&self) {
        self.settings.retired.cancelled().await
    }

    pub(crate) fn visitor(&self) -> crate::rules::Visitor<'_> {
        crate::rules::Visitor {
            ip: &self.ip,
            proto: if self.settings.scheme == Scheme::Https { "https" } else { "http" },
        }
    }
}
