//! The built-in plugins. They use only the public plugin API, like any
//! third-party plugin would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use opennotr_plugin::{CancellationToken, Endpoint, ForwardMeta, PluginError};
use rand::Rng;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub mod tcp;
pub mod udp;

/// Port rules shared by `tcp` and `udp`: `PortMin`/`PortMax` (the original
/// documented them and never read them) and the address to bind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortRules {
    /// Only for `udp`: idle seconds before a flow is dropped (default 30).
    #[serde(rename = "sessionTimeout", default)]
    pub(crate) session_timeout: Option<f64>,
    #[serde(rename = "PortMin", default)]
    port_min: Option<u16>,
    #[serde(rename = "PortMax", default)]
    port_max: Option<u16>,
    /// Address public listeners bind, default all IPv4 interfaces.
    #[serde(default)]
    bind: Option<IpAddr>,
}

impl PortRules {
    pub(crate) fn validate(&self, plugin: &str) -> Result<(), PluginError> {
        let err = |k: &str, m: String| PluginError::Config { key: format!("plugin.{plugin}.{k}"), message: m };
        match (self.port_min, self.port_max) {
            (Some(0), _) => Err(err("PortMin", "must be 1 to 65535".into())),
            (_, Some(0)) => Err(err("PortMax", "must be 1 to 65535".into())),
            (Some(a), Some(b)) if a > b => Err(err("PortMax", format!("{b} is below PortMin {a}"))),
            _ => Ok(()),
        }
    }

    fn range(&self) -> Option<(u16, u16)> {
        match (self.port_min, self.port_max) {
            (None, None) => None,
            (a, b) => Some((a.unwrap_or(1), b.unwrap_or(u16::MAX))),
        }
    }

    fn bind_ip(&self) -> IpAddr {
        self.bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Binds a public socket for a requested port: the port itself if it
    /// is allowed, or for 0 a free port from the range (the kernel's choice
    /// when there is no range).
    pub(crate) async fn bind_with<T, F, Fut>(&self, requested: u16, mut bind: F) -> Result<T, PluginError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<T>>,
    {
        let ip = self.bind_ip();
        let in_use = |p: u16, e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                PluginError::Refused(format!("port {p} is already in use"))
            } else {
                PluginError::Refused(format!("cannot listen on port {p}: {e}"))
            }
        };
        match (requested, self.range()) {
            (p, Some((lo, hi))) if p != 0 && !(lo..=hi).contains(&p) => {
                Err(PluginError::Refused(format!("port {p} is outside the allowed range {lo}-{hi}")))
            }
            (0, Some((lo, hi))) => {
                let span = u32::from(hi - lo) + 1;
                let start = rand::rng().random_range(0..span);
                // Random start, then a bounded scan: finds a free port fast in
                // a mostly free range without trying every port of a full one.
                for i in 0..span.min(512) {
                    let p = lo + ((start + i) % span) as u16;
                    if let Ok(s) = bind(SocketAddr::new(ip, p)).await {
                        return Ok(s);
                    }
                }
                Err(PluginError::Refused(format!("no free port in the range {lo}-{hi}")))
            }
            (p, _) => bind(SocketAddr::new(ip, p)).await.map_err(|e| in_use(p, e)),
        }
    }
}

/// The forwards a plugin runs, each a task serving its public socket.
#[derive(Default)]
pub(crate) struct Running(std::sync::Mutex<std::collections::HashMap<u64, (CancellationToken, JoinHandle<()>)>>);

impl Running {
    /// Serves `meta`'s forward with `fut` (which must end when `ctx.stop` is
    /// cancelled) and returns its endpoint.
    pub(crate) fn start<F>(
        &self,
        meta: &ForwardMeta,
        stop: CancellationToken,
        port: u16,
        scheme: &str,
        fut: F,
    ) -> Endpoint
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let task = tokio::spawn(fut.instrument(tracing::info_span!("forward", protocol = scheme, port)));
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(meta.id, (stop, task));
        Endpoint { public_port: Some(port), url: format!("{scheme}://{}:{port}", meta.domain) }
    }

    /// Stops a forward and waits for its task, so its socket is closed (and
    /// the port free for a reconnecting client) when this returns.
    pub(crate) async fn stop(&self, meta: &ForwardMeta) {
        let entry = self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&meta.id);
        if let Some((stop, task)) = entry {
            stop.cancel();
            let _ = task.await;
        }
    }
}

pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(
    plugin: &str,
    v: &serde_json::Value,
) -> Result<T, PluginError> {
    let v = if v.is_null() { serde_json::json!({}) } else { v.clone() };
    serde_json::from_value(v)
        .map_err(|e| PluginError::Config { key: format!("plugin.{plugin}"), message: e.to_string() })
}
