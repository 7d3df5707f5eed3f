//! The external gateway mode (`adminUrl`, the original's OpenResty route).
//!
//! The `http`, `https` and `h2c` plugins do not serve visitors themselves:
//! each forward is registered with an OpenResty-compatible gateway through
//! the original's admin API, and the gateway proxies to `VIP:localPort`,
//! which reaches the client through the virtual LAN (`server.tcplisten`).
//!
//! - `POST adminUrl` with `{"scheme", "host", "ip", "port"}` (port as a
//!   string, like the original) when a forward starts; it is awaited, and a
//!   failure refuses the forward with the reason (the client prints it).
//! - `DELETE adminUrl?host=<domain>&scheme=<scheme>` when it stops.
//! - Every `reconcileInterval` (default 10 s) every live mapping is POSTed
//!   again (a restarted gateway has lost its in-memory table) and failed
//!   DELETEs are retried, so a mapping never outlives its client for long.
//!
//! Operations on one domain are serialised (a reconnect's POST cannot be
//! overtaken by the old session's DELETE); no lock is held across a request
//! for other domains.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opennotr_plugin::{CancellationToken, Endpoint, ForwardContext, ForwardMeta, PluginError};
use tracing::{debug, info, warn};

/// Bound of one admin request, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of an admin answer's body (only logged).
const MAX_BODY: usize = 64 << 10;
/// Default of `reconcileInterval`, seconds.
const DEFAULT_RECONCILE: u64 = 10;
/// How long after the first registration the virtual LAN is probed.
const PROBE_DELAY: Duration = Duration::from_secs(2);

/// The JSON key this module reads besides `adminUrl`.
pub(crate) const RECONCILE_KEY: &str = "reconcileInterval";

/// A small HTTP/1.1 client of the admin API.
struct Admin {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
}

impl Admin {
    fn new(url: String) -> Admin {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(http);
        Admin { client, url }
    }

    /// Sends one request; Ok(body) on a 2xx answer, else the reason.
    async fn call(&self, method: Method, uri: &str, body: Option<String>) -> Result<String, String> {
        let parsed: Uri = uri.parse().map_err(|e| format!("bad URL {uri}: {e}"))?;
        let mut req = Request::builder().method(method.clone()).uri(parsed);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| chain(&e))?;
            let status = resp.status();
            let body =
                Limited::new(resp.into_body(), MAX_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).trim().to_string()))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
        if status.is_success() {
            Ok(body)
        } else {
            let shown: String = body.chars().take(200).collect();
            Err(format!("{method} answered {status}: {shown}"))
        }
    }

    async fn post(&self, m: &Mapping) -> Result<(), String> {
        let body = serde_json::json!({
            "scheme": m.scheme,
            "host": m.host,
            "ip": m.ip.to_string(),
            "port": m.port.to_string(),
        });
        self.call(Method::POST, &self.url, Some(body.to_string())).await.map(|_| ())
    }

    async fn delete(&self, scheme: &str, host: &str) -> Result<(), String> {
        self.call(Method::DELETE, &query_url(&self.url, host, scheme), None).await.map(|_| ())
    }
}

/// `url?host=…&scheme=…` (or `&host=…` if `url` has a query already).
fn query_url(url: &str, host: &str, scheme: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}host={}&scheme={}", encode(host), encode(scheme))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its sources, e.g. "client error (Connect): tcp connect
/// error: Connection refused (os error 111)".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// One registration, as POSTed.
#[derive(Debug, Clone)]
struct Mapping {
    scheme: &'static str,
    host: String,
    ip: Ipv4Addr,
    port: u16,
    forward: u64,
    client_id: String,
    /// Cancelled when the session is gone.
    kill: CancellationToken,
}

#[derive(Default)]
struct Table {
    /// Domain → its live mapping.
    live: HashMap<String, Mapping>,
    /// Domains whose DELETE (or an uncertain POST) must be retried.
    stale: HashSet<String>,
    /// Per-domain locks serialising the requests about one domain.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

struct Inner {
    scheme: &'static str,
    admin: Admin,
    table: Mutex<Table>,
}

impl Inner {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn domain_lock(&self, domain: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.table().locks.entry(domain.to_string()).or_default().clone()
    }

    /// Forgets `domain`'s lock when nobody else holds or waits for it.
    fn release_lock(&self, domain: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut t = self.table();
        drop(lock);
        if t.locks.get(domain).is_some_and(|l| Arc::strong_count(l) == 1) {
            t.locks.remove(domain);
        }
    }

    /// One reconciliation pass: re-POST live mappings, retry DELETEs.
    async fn reconcile(&self) {
        let (live, stale): (Vec<Mapping>, Vec<String>) = {
            let t = self.table();
            (t.live.values().cloned().collect(), t.stale.iter().cloned().collect())
        };
        for m in live {
            if m.kill.is_cancelled() {
                continue;
            }
            let lock = self.domain_lock(&m.host);
            {
                let _g = lock.lock().await;
                let current = self.table().live.get(&m.host).is_some_and(|c| c.forward == m.forward);
                if current {
                    match self.admin.post(&m).await {
                        Ok(()) => debug!(plugin = self.scheme, host = %m.host, "mapping re-pushed"),
                        Err(e) => {
                            warn!(plugin = self.scheme, host = %m.host, error = %e, "cannot re-push the mapping to the external gateway; retrying later")
                        }
                    }
                }
            }
            self.release_lock(&m.host, lock);
        }
        for host in stale {
            let lock = self.domain_lock(&host);
            {
                let _g = lock.lock().await;
                let still = {
                    let t = self.table();
                    t.stale.contains(&host) && !t.live.contains_key(&host)
                };
                if still {
                    match self.admin.delete(self.scheme, &host).await {
                        Ok(()) => {
                            info!(plugin = self.scheme, %host, "stale mapping removed from the external gateway");
                            self.table().stale.remove(&host);
                        }
                        Err(e) => {
                            warn!(plugin = self.scheme, %host, error = %e, "cannot remove the mapping from the external gateway; retrying later")
                        }
                    }
                }
            }
            self.release_lock(&host, lock);
        }
    }
}

/// The external mode of one gateway plugin.
pub(crate) struct External {
    inner: Arc<Inner>,
    interval: Duration,
    started: AtomicBool,
    probed: AtomicBool,
    shutdown: CancellationToken,
}

impl External {
    /// Checks the config (`adminUrl` as parsed, `reconcileInterval` from
    /// the raw JSON) of plugin `scheme`.
    pub(crate) fn new(
        scheme: &'static str,
        admin_url: &str,
        raw: &serde_json::Value,
        shutdown: CancellationToken,
    ) -> Result<External, PluginError> {
        let err = |key: &str, message: String| PluginError::Config { key: format!("plugin.{scheme}.{key}"), message };
        if !admin_url.starts_with("http://") {
            return Err(err("adminUrl", format!("{admin_url:?}: only http:// admin URLs are supported")));
        }
        match admin_url.parse::<Uri>() {
            Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => {}
            _ => return Err(err("adminUrl", format!("{admin_url:?} is not a URL like http://127.0.0.1:81/upstreams"))),
        }
        let interval = match raw.get(RECONCILE_KEY) {
            None | Some(serde_json::Value::Null) => Duration::from_secs(DEFAULT_RECONCILE),
            Some(serde_json::Value::Number(n)) => match n.as_f64() {
                Some(s) if (0.1..=86_400.0).contains(&s) => Duration::from_secs_f64(s),
                _ => return Err(err(RECONCILE_KEY, format!("expected seconds in [0.1, 86400], got {n}"))),
            },
            Some(other) => return Err(err(RECONCILE_KEY, format!("expected a number of seconds, got {other}"))),
        };
        Ok(External {
            inner: Arc::new(Inner { scheme, admin: Admin::new(admin_url.to_string()), table: Mutex::default() }),
            interval,
            started: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            shutdown,
        })
    }

    /// Starts the reconciliation loop (once, inside the runtime).
    fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.interval;
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = inner.reconcile() => {}
                }
            }
        });
    }

    /// Warns (once) when `vip:port` cannot be reached from this host: the
    /// gateway could not reach it either (the virtual LAN is off).
    fn probe_once(&self, vip: Ipv4Addr, port: u16) {
        if self.probed.swap(true, Ordering::SeqCst) {
            return;
        }
        let scheme = self.inner.scheme;
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PROBE_DELAY) => {}
            }
            let addr = SocketAddr::from((vip, port));
            let reached = matches!(
                tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            );
            if !reached {
                warn!(plugin = scheme, upstream = %addr, "the external gateway proxies to the client's VIP, which this host cannot reach: is the virtual LAN on (server.tcplisten)? Registrations go on");
            }
        });
    }

    /// Registers a forward; the mapping is POSTed before this returns.
    pub(crate) async fn register(&self, meta: &ForwardMeta, ctx: &ForwardContext) -> Result<Endpoint, PluginError> {
        self.start();
        let inner = &self.inner;
        let host = meta.domain.trim_end_matches('.').to_ascii_lowercase();
        let m = Mapping {
            scheme: inner.scheme,
            host: host.clone(),
            ip: meta.vip,
            port: meta.local_port,
            forward: meta.id,
            client_id: meta.client_id.clone(),
            kill: ctx.kill.clone(),
        };
        let lock = inner.domain_lock(&host);
        let result = {
            let _g = lock.lock().await;
            let taken = {
                let mut t = inner.table();
                match t.live.get(&host) {
                    Some(old)
                        if old.forward != m.forward && old.client_id != m.client_id && !old.kill.is_cancelled() =>
                    {
                        true
                    }
                    _ => {
                        t.live.insert(host.clone(), m.clone());
                        t.stale.remove(&host);
                        false
                    }
                }
            };
            if taken {
                Err(PluginError::Refused(format!(
                    "domain {host} is already registered for {} by another client's forward",
                    inner.scheme
                )))
            } else {
                match inner.admin.post(&m).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let mut t = inner.table();
                        if t.live.get(&host).is_some_and(|c| c.forward == m.forward) {
                            t.live.remove(&host);
                            // It may have been stored (a timeout): remove it later.
                            t.stale.insert(host.clone());
                        }
                        Err(PluginError::Refused(format!(
                            "the external gateway ({}) did not register {}://{host}: {e}",
                            inner.admin.url, inner.scheme
                        )))
                    }
                }
            }
        };
        inner.release_lock(&host, lock);
        result?;
        info!(plugin = inner.scheme, %host, upstream = %SocketAddr::from((m.ip, m.port)), "registered with the external gateway");
        self.probe_once(m.ip, m.port);
        Ok(Endpoint { public_port: None, url: format!("{}://{host}", inner.scheme) })
    }

    /// Removes a forward's mapping, unless another forward (a reconnect)
    /// has taken the domain since.
    pub(crate) async fn unregister(&self, meta: &ForwardMeta) {
        let inner = &self.inner;
        let host = meta.domain.trim_end_matches('.').to_ascii_lowercase();
        let lock = inner.domain_lock(&host);
        {
            let _g = lock.lock().await;
            let ours = {
                let mut t = inner.table();
                if t.live.get(&host).is_some_and(|c| c.forward == meta.id) {
                    t.live.remove(&host);
                    true
                } else {
                    false
                }
            };
            if ours {
                match inner.admin.delete(inner.scheme, &host).await {
                    Ok(()) => info!(plugin = inner.scheme, %host, "unregistered from the external gateway"),
                    Err(e) => {
                        warn!(plugin = inner.scheme, %host, error = %e, "cannot remove the mapping from the external gateway; retrying later");
                        let mut t = inner.table();
                        if !t.live.contains_key(&host) {
                            t.stale.insert(host.clone());
                        }
                    }
                }
            }
        }
        inner.release_lock(&host, lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_encoded() {
        assert_eq!(query_url("http://h:81/upstreams", "a.b", "http"), "http://h:81/upstreams?host=a.b&scheme=http");
        assert_eq!(query_url("http://h/u?k=1", "a b&c", "h2c"), "http://h/u?k=1&host=a%20b%26c&scheme=h2c");
    }

    #[test]
    fn config_is_checked() {
        let c = CancellationToken::new();
        let j = serde_json::json!({});
        assert!(External::new("http", "http://127.0.0.1:81/upstreams", &j, c.clone()).is_ok());
        assert!(External::new("http", "https://127.0.0.1:81/upstreams", &j, c.clone()).is_err());
        let j = serde_json::json!({"reconcileInterval": 0});
        assert!(External::new("http", "http://127.0.0.1:81/upstreams", &j, c.clone()).is_err());
        let j = serde_json::json!({"reconcileInterval": 2.5});
        assert_eq!(External::new("h2c", "http://x/u", &j, c).unwrap().interval, Duration::from_millis(2500));
    }
}
