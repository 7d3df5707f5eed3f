//! [`Gateway`]: what every gateway plugin of one server shares: the routes,
//! the counters, and the pending ACME HTTP-01 answers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use opennotr_plugin::async_trait;

use crate::error::{GatewayError, Origin};
use crate::limits::ConnLimits;
use crate::route::{Lookup, Router, Scheme, Upstream};
use opennotr_plugin::Elsewhere;

/// Binds the embedded `http` plugin's listener, for ACME's HTTP-01
/// answers (the plugin layer implements it).
#[async_trait]
pub(crate) trait HttpListener: Send + Sync {
    /// The port, bound now if it was not yet.
    async fn ensure_listening(&self) -> Result<u16, String>;
}

/// The router shared by all gateway plugins of one server, and their
/// counters.
#[derive(Default)]
pub struct Gateway {
    router: Router,
    /// Pending ACME HTTP-01 challenges: token → key authorization, answered
    /// on the `http` plugin's port.
    acme_tokens: Mutex<HashMap<String, String>>,
    /// The embedded `http` plugin, whose listener HTTP-01 needs.
    http_listener: Mutex<Option<Weak<dyn HttpListener>>>,
    requests: RequestCounts,
    errors: [AtomicU64; 3],
    /// Every listener's connection counts, for the metrics.
    listeners: Mutex<Vec<Weak<ConnLimits>>>,
    /// Where the names another node serves go (a cluster node's).
    elsewhere: std::sync::RwLock<Option<Arc<dyn Elsewhere>>>,
    /// Connections carried to another node, carried here, and that could
    /// not be carried (the node did not answer).
    carried: [AtomicU64; 3],
}

/// Requests answered by scheme and status (100-999): one relaxed atomic add
/// per request, no lock shared by every visitor connection.
struct RequestCounts(Box<[AtomicU64]>);

const STATUSES: usize = 900;

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts((0..Scheme::ALL.len() * STATUSES).map(|_| Default::default()).collect())
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

    /// Every live route: scheme, domain, forward id.
    pub fn routes(&self) -> Vec<(Scheme, String, u64)> {
        self.router.routes()
    }

    pub(crate) fn insert(&self, scheme: Scheme, domain: &str, up: Upstream) -> Result<(), String> {
        self.router.insert(scheme, domain, up)
    }

    pub(crate) fn check_free(&self, scheme: Scheme, domain: &str) -> Result<(), String> {
        self.router.check_free(scheme, domain)
    }

    pub(crate) fn remove(&self, scheme: Scheme, domain: &str, forward: u64) -> bool {
        self.router.remove(scheme, domain, forward)
    }

    pub(crate) fn lookup(&self, scheme: Scheme, host: &str, wildcard: bool) -> Lookup {
        self.router.lookup(scheme, host, wildcard)
    }

    /// Gives the gateway the names other nodes of the cluster serve: a
    /// visitor's connection for one of them is carried to its node.
    pub fn set_elsewhere(&self, e: Arc<dyn Elsewhere>) {
        *self.elsewhere.write().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// Whether this node is part of a cluster (names may be served elsewhere).
    pub(crate) fn has_elsewhere(&self) -> bool {
        self.elsewhere.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The node serving `host` and the way there, when another node does:
    /// from the name itself up (with `wildcard`), the first level that a
    /// live route of this node for one of `schemes` or another node's
    /// domain holds decides, so an exact name of another node's is never
    /// taken by a wildcard route of this one's (nor the other way round).
    pub(crate) fn elsewhere(
        &self,
        schemes: &[Scheme],
        host: &str,
        wildcard: bool,
    ) -> Option<(Arc<dyn Elsewhere>, String)> {
        let e = self.elsewhere.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let mut name = host;
        loop {
            if schemes.iter().any(|s| matches!(self.lookup(*s, name, false), Lookup::Found(_))) {
                return None;
            }
            if let Some(node) = e.node_of(name) {
                return Some((e, node));
            }
            if !wildcard {
                return None;
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => return None,
            }
        }
    }

    /// Counts a connection carried to another node (`ok`), or one that
    /// could not be.
    pub(crate) fn count_carried(&self, ok: bool) {
        self.carried[if ok { 0 } else { 2 }].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection another node carried here.
    pub(crate) fn count_carried_in(&self) {
        self.carried[1].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_request(&self, scheme: Scheme, status: u16) {
        let Some(s) = Scheme::ALL.iter().position(|x| *x == scheme) else { return };
        if let Some(c) = usize::from(status).checked_sub(100).filter(|i| *i < STATUSES) {
            self.requests.0[s * STATUSES + c].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request the gateway answered itself, by who failed.
    pub(crate) fn count_error(&self, e: &GatewayError) {
        if let Some(i) = Origin::ALL.iter().position(|o| *o == e.origin()) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_listener(&self, limits: &Arc<ConnLimits>) {
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|w| w.strong_count() > 0);
        l.push(Arc::downgrade(limits));
    }

    /// The gateway's counters in Prometheus' text format.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        out.push_str(
            "# HELP opennotr_gateway_requests_total Requests the embedded gateway answered, by scheme and status.\n\
             # TYPE opennotr_gateway_requests_total counter\n",
        );
        for (i, c) in self.requests.0.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let (scheme, status) = (Scheme::ALL[i / STATUSES].name(), 100 + i % STATUSES);
                let _ = writeln!(out, "opennotr_gateway_requests_total{{scheme=\"{scheme}\",status=\"{status}\"}} {n}");
            }
        }
        out.push_str(
            "# HELP opennotr_gateway_errors_total Requests the gateway answered itself, by who failed: the visitor \
             (a malformed, slow or unroutable request), the tunnel (client gone) or the client's service.\n\
             # TYPE opennotr_gateway_errors_total counter\n",
        );
        for (o, c) in Origin::ALL.iter().zip(&self.errors) {
            let _ =
                writeln!(out, "opennotr_gateway_errors_total{{origin=\"{}\"}} {}", o.name(), c.load(Ordering::Relaxed));
        }
        out.push_str(
            "# HELP opennotr_gateway_carried_total Visitor connections carried between the nodes of a cluster: \
             to the node serving their name (out), from another node (in), or not, as that node did not answer \
             (failed).\n\
             # TYPE opennotr_gateway_carried_total counter\n",
        );
        for (way, c) in ["out", "in", "failed"].iter().zip(&self.carried) {
            let _ = writeln!(out, "opennotr_gateway_carried_total{{way=\"{way}\"}} {}", c.load(Ordering::Relaxed));
        }
        let listeners: Vec<_> = {
            let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            l.iter().filter_map(Weak::upgrade).collect()
        };
        out.push_str(
            "# HELP opennotr_gateway_connections Visitor connections open, by listener.\n\
             # TYPE opennotr_gateway_connections gauge\n",
        );
        for l in &listeners {
            let _ = writeln!(
                out,
                "opennotr_gateway_connections{{port=\"{}\",listen=\"{}\"}} {}",
                l.kind,
                l.addr(),
                l.open()
            );
        }
        out.push_str(
            "# HELP opennotr_gateway_connections_refused_total Visitor connections closed at once, by listener and \
             the cap they met (maxConnections: listener, maxConnectionsPerIp: source).\n\
             # TYPE opennotr_gateway_connections_refused_total counter\n",
        );
        for l in &listeners {
            let (_, full, source) = l.counts();
            for (reason, n) in [("listener", full), ("source", source)] {
                let _ = writeln!(
                    out,
                    "opennotr_gateway_connections_refused_total{{port=\"{}\",listen=\"{}\",reason=\"{reason}\"}} {n}",
                    l.kind,
                    l.addr()
                );
            }
        }
    }

    pub(crate) fn acme_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.acme_tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_http_listener(&self, l: Weak<dyn HttpListener>) {
        *self.http_listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(l);
    }

    /// Binds the embedded `http` plugin's listener (HTTP-01 answers there)
    /// if no `http` forward did yet; its port.
    pub(crate) async fn ensure_http_listener(&self) -> Result<u16, String> {
        let l = self.http_listener.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(Weak::upgrade);
        match l {
            Some(l) => l.ensure_listening().await,
            None => Err("HTTP-01 needs the embedded http gateway (plugin.http.listen)".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opennotr_plugin::{CancellationToken, Carried, CarriedPort};

    /// Other nodes' domains, by name.
    #[derive(Debug)]
    struct Nodes(HashMap<String, String>);

    #[async_trait]
    impl Elsewhere for Nodes {
        fn node_of(&self, domain: &str) -> Option<String> {
            self.0.get(domain).cloned()
        }

        async fn carry(
            &self,
            _: &str,
            _: CarriedPort,
            _: std::net::SocketAddr,
            _: Option<std::net::SocketAddr>,
        ) -> std::io::Result<Box<dyn Carried>> {
            Err(std::io::Error::other("not in this test"))
        }
    }

    /// The nearest name decides, whichever node holds it: another node's
    /// exact name is not taken by a wildcard route here, and a route here
    /// is not taken by a wildcard name of another node's.
    #[test]
    fn the_nearest_name_decides_between_here_and_elsewhere() {
        let g = Gateway::new();
        let up = Upstream {
            tunnel: Arc::new(crate::route::tests::NoTunnel),
            target: "127.0.0.1:80".parse().unwrap(),
            forward: 1,
            client_id: "x".into(),
            kill: CancellationToken::new(),
            access: None,
        };
        g.insert(Scheme::Http, "x.example.com", up).unwrap();
        let nodes = [("shop.x.example.com", "node-b"), ("y.example.com", "node-c"), ("x.example.com", "node-d")];
        g.set_elsewhere(Arc::new(Nodes(nodes.iter().map(|(d, n)| (d.to_string(), n.to_string())).collect())));
        let at = |host: &str, wildcard: bool| g.elsewhere(&[Scheme::Http], host, wildcard).map(|(_, n)| n);
        assert_eq!(at("shop.x.example.com", true).as_deref(), Some("node-b"));
        assert_eq!(at("a.x.example.com", true), None, "this node's wildcard route");
        assert_eq!(at("x.example.com", true), None, "this node's own name");
        assert_eq!(at("deep.y.example.com", true).as_deref(), Some("node-c"));
        assert_eq!(at("deep.y.example.com", false), None);
        assert_eq!(g.elsewhere(&[Scheme::H2c], "x.example.com", false).map(|(_, n)| n).as_deref(), Some("node-d"));
    }
}
