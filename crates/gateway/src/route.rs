//! The routing table: domain and scheme → the forward of a live session.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opennotr_plugin::{Access, CancellationToken, ForwardContext, ForwardMeta, Tunnel};

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
    /// Every scheme.
    pub const ALL: [Scheme; 4] = [Scheme::Http, Scheme::H2c, Scheme::Https, Scheme::Tls];

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
    /// The forward's access rules, checked per request (streams to the
    /// service are pooled and shared by visitors); `None` = everyone.
    pub access: Option<Arc<dyn Access>>,
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
            access: ctx.access.clone(),
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
struct Table {
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

/// Domain and scheme → upstream, shared by every gateway plugin of one
/// server.
#[derive(Default)]
pub(crate) struct Router {
    table: Mutex<Table>,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes `domain` (any case) for `scheme` to `up`. A route held by
    /// another live forward refuses, unless it belongs to the same client
    /// (a reconnect whose old session is not cleaned up yet) or its session
    /// is gone.
    pub(crate) fn insert(&self, scheme: Scheme, domain: &str, up: Upstream) -> Result<(), String> {
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

    /// Whether [`Router::insert`] would route `domain` for `scheme` to a
    /// new client now (`opennotr check`): no live forward holds it.
    pub(crate) fn check_free(&self, scheme: Scheme, domain: &str) -> Result<(), String> {
        let domain = domain.to_ascii_lowercase();
        let r = self.lock();
        match r.live.get(&domain).and_then(|per| per.get(&scheme)) {
            Some(old) if !old.kill.is_cancelled() => {
                Err(format!("domain {domain} is already routed for {} by another client's forward", scheme.name()))
            }
            _ => Ok(()),
        }
    }

    /// Removes the route of `domain` for `scheme` if it is still forward
    /// `forward`'s. Returns whether it removed it.
    pub(crate) fn remove(&self, scheme: Scheme, domain: &str, forward: u64) -> bool {
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
    pub(crate) fn lookup(&self, scheme: Scheme, host: &str, wildcard: bool) -> Lookup {
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

    /// Every live route: scheme, domain, forward id.
    pub(crate) fn routes(&self) -> Vec<(Scheme, String, u64)> {
        let r = self.lock();
        let mut out: Vec<_> =
            r.live.iter().flat_map(|(d, per)| per.iter().map(move |(s, u)| (*s, d.clone(), u.forward))).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opennotr_plugin::async_trait;

    /// A tunnel whose session is gone.
    #[derive(Debug)]
    pub(crate) struct NoTunnel;

    #[async_trait]
    impl Tunnel for NoTunnel {
        async fn open_stream(
            &self,
            _: opennotr_plugin::StreamProtocol,
            _: SocketAddr,
            _: Option<opennotr_plugin::Visitor>,
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
            access: None,
        }
    }

    #[test]
    fn routes_by_scheme_and_domain() {
        let g = Router::default();
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
        let g = Router::default();
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
        // `check` sees the live route, and nothing where a dead one was.
        assert!(g.check_free(Scheme::Http, "A.example").unwrap_err().contains("already routed"));
        assert!(g.check_free(Scheme::H2c, "a.example").is_ok());
        assert!(g.check_free(Scheme::Http, "b.example").is_ok());
    }
}
