//! The external gateway mode (`adminUrl`, the original's OpenResty route).
//!
//! The `http`, `https` and `h2c` plugins do not serve visitors themselves:
//! each forward is registered with an OpenResty-compatible gateway through
//! the original's admin API, and the gateway proxies to `VIP:localPort`,
//! which reaches the client through the virtual LAN (`server.tcplisten`).
//!
//! Every request carries `Authorization: Bearer <adminSecret>` (the
//! shipped gateway answers nothing without it); a plugin without a secret
//! sends nothing at all and its forwards are refused.
//!
//! - `POST adminUrl` with `{"scheme", "host", "ip", "port"}` (port as a
//!   string, like the original) when a forward starts; it is awaited, and a
//!   failure refuses the forward with the reason (the client prints it).
//! - `DELETE adminUrl?host=<domain>&scheme=<scheme>` when it stops.
//! - When the server starts, and then every `reconcileInterval` (default
//!   10 s): the gateway's mappings are listed (`GET adminUrl`) and those
//!   whose upstream lies in this server's VIP pool but that no live forward
//!   here holds are DELETEd — an opennotrd that crashed left them, and a
//!   VIP they name may be another client's now; every live mapping is
//!   POSTed again (a restarted gateway has lost its in-memory table); and
//!   failed DELETEs are retried, so a mapping never outlives its client for
//!   long. Mappings outside the pool belong to someone else and are never
//!   touched; a gateway that cannot list (404/405/501) only gets the
//!   re-pushes.
//!
//! Operations on one domain are serialised (a reconnect's POST cannot be
//! overtaken by the old session's DELETE); no lock is held across a request
//! for other domains.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opennotr_config::Secret;
use opennotr_plugin::{CancellationToken, Endpoint, ForwardContext, ForwardMeta, Ipv4Net, PluginError};
use tracing::{debug, info, warn};

/// Bound of one admin request, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of an admin answer's body (only logged).
const MAX_BODY: usize = 64 << 10;
/// Bound of the list of mappings (`GET adminUrl`): a full 10 MiB
/// `lua_shared_dict` of the shipped config lists in less.
const MAX_LIST: usize = 16 << 20;
/// Default of `reconcileInterval`, seconds.
const DEFAULT_RECONCILE: u64 = 10;
/// How long after the first registration the virtual LAN is probed.
const PROBE_DELAY: Duration = Duration::from_secs(2);

/// The JSON key this module reads besides `adminUrl`.
pub(crate) const RECONCILE_KEY: &str = "reconcileInterval";

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("{method} answered {status}: {body}")]
    Status { method: Method, status: StatusCode, body: String },
    #[error("{method} answered {status}: the gateway refused adminSecret (it must equal the gateway's admin secret)")]
    Denied { method: Method, status: StatusCode },
    #[error("the list of mappings is not a JSON array: {0}")]
    BadList(String),
}

/// A small HTTP/1.1 client of the admin API.
struct Admin {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    /// `Bearer <adminSecret>`, marked sensitive (kept out of hyper's
    /// `Debug` output).
    auth: header::HeaderValue,
}

impl Admin {
    fn new(url: String, secret: &Secret) -> Result<Admin, String> {
        let mut auth = header::HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
            .map_err(|_| "not usable in an HTTP header".to_string())?;
        auth.set_sensitive(true);
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(http);
        Ok(Admin { client, url, auth })
    }

    /// Sends one request; the body of a 2xx answer (at most `limit` bytes),
    /// else why not.
    async fn call(&self, method: Method, uri: &str, body: Option<String>, limit: usize) -> Result<Bytes, AdminError> {
        let parsed: Uri = uri.parse().map_err(|e| AdminError::Url(format!("{uri}: {e}")))?;
        let mut req = Request::builder().method(method.clone()).uri(parsed).header(header::AUTHORIZATION, &self.auth);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| AdminError::Url(format!("{uri}: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| AdminError::Transport(chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), limit).collect().await.map(|b| b.to_bytes());
            Ok::<_, AdminError>((status, body))
        };
        let (status, body) =
            tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| AdminError::Timeout)??;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(AdminError::Denied { method, status });
        }
        if status.is_success() {
            // Only a listing's body matters; the others' are "OK".
            body.or_else(|e| match method {
                Method::GET => Err(AdminError::Transport(format!("reading the answer: {e}"))),
                _ => Ok(Bytes::new()),
            })
        } else {
            let body = body.unwrap_or_default();
            let shown: String = String::from_utf8_lossy(&body).trim().chars().take(200).collect();
            Err(AdminError::Status { method, status, body: shown })
        }
    }

    async fn post(&self, m: &Mapping) -> Result<(), AdminError> {
        let body = serde_json::json!({
            "scheme": m.scheme,
            "host": m.host,
            "ip": m.ip.to_string(),
            "port": m.port.to_string(),
        });
        self.call(Method::POST, &self.url, Some(body.to_string()), MAX_BODY).await.map(|_| ())
    }

    async fn delete(&self, scheme: &str, host: &str) -> Result<(), AdminError> {
        self.call(Method::DELETE, &query_url(&self.url, host, scheme), None, MAX_BODY).await.map(|_| ())
    }

    /// Every mapping the gateway holds (`GET adminUrl`).
    async fn list(&self) -> Result<Vec<Listed>, AdminError> {
        let body = self.call(Method::GET, &self.url, None, MAX_LIST).await?;
        parse_listing(&body).map_err(AdminError::BadList)
    }
}

/// One mapping as the gateway lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    scheme: String,
    host: String,
    /// `None` when it is not an IPv4 address (so in no VIP pool).
    ip: Option<Ipv4Addr>,
}

/// Parses the answer to `GET adminUrl`: a JSON array of `{"scheme",
/// "host", "ip", "port"}`. Entries without a string scheme and host are
/// skipped: the gateway may hold entries this module never wrote.
fn parse_listing(body: &[u8]) -> Result<Vec<Listed>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let serde_json::Value::Array(items) = v else {
        let shown: String = String::from_utf8_lossy(body).chars().take(100).collect();
        return Err(shown);
    };
    Ok(items
        .iter()
        .filter_map(|m| {
            let scheme = m.get("scheme")?.as_str()?;
            let host = norm_host(m.get("host")?.as_str()?);
            if scheme.is_empty() || host.is_empty() {
                return None;
            }
            let ip = m.get("ip").and_then(|ip| ip.as_str()).and_then(|ip| ip.parse().ok());
            Some(Listed { scheme: scheme.to_string(), host, ip })
        })
        .collect())
}

/// A domain as the gateway keys it: lowercase, no trailing dot.
fn norm_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
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
    /// The server's VIP pool, known once the server starts.
    pool: OnceLock<Ipv4Net>,
    /// The external plugins of the same server.
    peers: Arc<Peers>,
    /// The gateway answered the listing with 404/405/501: it only has the
    /// original's POST and DELETE, so passes only re-push.
    cannot_list: AtomicBool,
    /// The last listing failed (warned once until it works again).
    list_failing: AtomicBool,
}

/// The external plugins of one server, so that each knows which schemes
/// another one registers at the same admin URL (those it must leave to
/// it), and which mappings a plugin it replaced on a reload still holds
/// until its sessions end.
#[derive(Default)]
pub(crate) struct Peers(Mutex<Vec<Weak<Inner>>>);

impl Peers {
    fn add(&self, inner: &Arc<Inner>) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(inner));
    }

    /// The live plugins registering at `url`, oldest first.
    fn at(&self, url: &str) -> Vec<Arc<Inner>> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().filter_map(Weak::upgrade).filter(|i| i.admin.url == url).collect()
    }
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

    /// One reconciliation pass: remove stale mappings into the VIP pool,
    /// re-POST live mappings, retry DELETEs.
    async fn reconcile(&self) {
        if let Some(pool) = self.pool.get() {
            self.prune(*pool).await;
        }
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

    /// Lists the gateway's mappings and DELETEs those whose upstream is in
    /// `pool` and that no live forward of this server holds: an opennotrd
    /// that crashed left them, and their VIP may be another client's now.
    /// This plugin's scheme is checked against its table under the domain's
    /// lock (a registration cannot be undone), and against the tables of the
    /// instances a reload replaced it for, whose sessions are ending (they
    /// register nothing any more, and do not prune); schemes no external
    /// plugin of this server registers at this URL are removed by the first
    /// one. Mappings outside the pool, or of another plugin, are left alone.
    async fn prune(&self, pool: Ipv4Net) {
        if self.cannot_list.load(Ordering::SeqCst) {
            return;
        }
        let Some(peers) = self.pruning_peers() else { return };
        let listed = match self.admin.list().await {
            Ok(l) => {
                if self.list_failing.swap(false, Ordering::SeqCst) {
                    info!(plugin = self.scheme, admin = %self.admin.url, "the external gateway lists its mappings again");
                }
                l
            }
            Err(AdminError::Status { status, .. })
                if matches!(
                    status,
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
                ) =>
            {
                self.cannot_list.store(true, Ordering::SeqCst);
                info!(plugin = self.scheme, admin = %self.admin.url, %status, "the external gateway does not list its mappings (GET); live mappings are re-pushed, but stale ones left by an earlier opennotrd are not removed");
                return;
            }
            Err(e) => {
                if self.list_failing.swap(true, Ordering::SeqCst) {
                    debug!(plugin = self.scheme, error = %e, "cannot list the external gateway's mappings");
                } else {
                    warn!(plugin = self.scheme, admin = %self.admin.url, error = %e, "cannot list the external gateway's mappings; stale ones are removed once it answers");
                }
                return;
            }
        };
        let first = peers.iter().map(|p| p.scheme).min().is_none_or(|s| s == self.scheme);
        for m in listed {
            if !m.ip.is_some_and(|ip| pool.contains(&ip)) {
                continue;
            }
            if m.scheme == self.scheme {
                let lock = self.domain_lock(&m.host);
                let replaced = {
                    let _g = lock.lock().await;
                    // Again: a reload may have replaced this plugin meanwhile.
                    match self.pruning_peers() {
                        None => true,
                        Some(now) => {
                            let mut holders = now.iter().filter(|p| p.scheme == self.scheme);
                            if !holders.any(|p| p.table().live.contains_key(&m.host)) {
                                self.remove_stale(&m).await;
                            }
                            false
                        }
                    }
                };
                self.release_lock(&m.host, lock);
                if replaced {
                    return;
                }
            } else if first && !peers.iter().any(|p| p.scheme == m.scheme) {
                self.remove_stale(&m).await;
            }
        }
    }

    /// The live plugins at this URL, or `None` when a reload replaced this
    /// one: only the newest of a scheme prunes, the old one winds down.
    fn pruning_peers(&self) -> Option<Vec<Arc<Inner>>> {
        let peers = self.peers.at(&self.admin.url);
        let newest = peers.iter().rev().find(|p| p.scheme == self.scheme).is_none_or(|p| std::ptr::eq(&**p, self));
        newest.then_some(peers)
    }

    async fn remove_stale(&self, m: &Listed) {
        let upstream = m.ip.map(|ip| ip.to_string()).unwrap_or_default();
        match self.admin.delete(&m.scheme, &m.host).await {
            Ok(()) => {
                info!(plugin = self.scheme, scheme = %m.scheme, host = %m.host, %upstream, "stale mapping removed from the external gateway: its upstream is in this server's VIP pool and no live forward has it");
                if m.scheme == self.scheme {
                    self.table().stale.remove(&m.host);
                }
            }
            Err(e) => {
                warn!(plugin = self.scheme, scheme = %m.scheme, host = %m.host, %upstream, error = %e, "cannot remove a stale mapping from the external gateway; retrying later")
            }
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
    /// Checks the config (`adminUrl` and `adminSecret` as parsed,
    /// `reconcileInterval` from the raw JSON) of plugin `scheme`, one of
    /// the server's `peers`. `None` without a secret: nothing can be
    /// registered (the caller refuses the forwards, naming the key), and
    /// nothing is sent to the gateway.
    pub(crate) fn new(
        scheme: &'static str,
        admin_url: &str,
        secret: Option<&Secret>,
        raw: &serde_json::Value,
        shutdown: CancellationToken,
        peers: &Arc<Peers>,
    ) -> Result<Option<External>, PluginError> {
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
        let Some(secret) = secret else {
            warn!(plugin = scheme, admin = %admin_url, "plugin.{scheme}.adminSecret is not set: the external gateway's admin API needs its secret, so this plugin's forwards are refused until it is");
            return Ok(None);
        };
        let admin = Admin::new(admin_url.to_string(), secret).map_err(|m| err("adminSecret", m))?;
        let inner = Arc::new(Inner {
            scheme,
            admin,
            table: Mutex::default(),
            pool: OnceLock::new(),
            peers: peers.clone(),
            cannot_list: AtomicBool::new(false),
            list_failing: AtomicBool::new(false),
        });
        peers.add(&inner);
        Ok(Some(External {
            inner,
            interval,
            started: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            shutdown,
        }))
    }

    /// Starts the reconciliation loop (once, inside the runtime): a pass at
    /// once, then one every interval. With the server's VIP `pool` (given
    /// when the server starts), passes also remove stale mappings into it:
    /// a restart after a crash is exactly when they exist.
    pub(crate) fn start(&self, pool: Option<Ipv4Net>) {
        if let Some(pool) = pool {
            let _ = self.inner.pool.set(pool);
        }
        if tokio::runtime::Handle::try_current().is_err() || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.interval;
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        self.start(None);
        let inner = &self.inner;
        let host = norm_host(&meta.domain);
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
        let host = norm_host(&meta.domain);
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

    fn secret() -> Secret {
        Secret::new("an-admin-secret-0123")
    }

    fn ext(scheme: &'static str, url: &str, j: &serde_json::Value, p: &Arc<Peers>) -> Result<External, PluginError> {
        External::new(scheme, url, Some(&secret()), j, CancellationToken::new(), p).map(|e| e.expect("a secret"))
    }

    #[test]
    fn config_is_checked() {
        let p = Arc::new(Peers::default());
        let j = serde_json::json!({});
        assert!(ext("http", "http://127.0.0.1:81/upstreams", &j, &p).is_ok());
        assert!(ext("http", "https://127.0.0.1:81/upstreams", &j, &p).is_err());
        let j = serde_json::json!({"reconcileInterval": 0});
        assert!(ext("http", "http://127.0.0.1:81/upstreams", &j, &p).is_err());
        let j = serde_json::json!({"reconcileInterval": 2.5});
        assert_eq!(ext("h2c", "http://x/u", &j, &p).unwrap().interval, Duration::from_millis(2500));
        // Without a secret: checked all the same, then nothing to run.
        let c = CancellationToken::new();
        let j = serde_json::json!({});
        assert!(External::new("http", "http://x/u", None, &j, c.clone(), &p).unwrap().is_none());
        assert!(External::new("http", "https://x/u", None, &j, c, &p).is_err());
        assert!(p.at("http://x/u").iter().all(|i| i.scheme == "h2c"), "a plugin without a secret is no peer");
    }

    #[test]
    fn the_secret_is_sent_and_never_shown() {
        let admin = Admin::new("http://x/u".into(), &secret()).unwrap();
        assert_eq!(admin.auth.to_str().unwrap(), "Bearer an-admin-secret-0123");
        assert!(admin.auth.is_sensitive());
        assert!(!format!("{:?}", admin.auth).contains("0123"));
        let denied = AdminError::Denied { method: Method::POST, status: StatusCode::FORBIDDEN };
        assert!(denied.to_string().contains("adminSecret"), "{denied}");
    }

    #[test]
    fn peers_are_the_live_plugins_at_a_url() {
        let p = Arc::new(Peers::default());
        let j = serde_json::json!({});
        let schemes = |url| p.at(url).iter().map(|i| i.scheme).collect::<Vec<_>>();
        let http = ext("http", "http://a/u", &j, &p).unwrap();
        let h2c = ext("h2c", "http://a/u", &j, &p).unwrap();
        let other = ext("https", "http://b/u", &j, &p).unwrap();
        // A reload sets `http` up anew while the old one winds down.
        let newer = ext("http", "http://a/u", &j, &p).unwrap();
        assert_eq!(schemes("http://a/u"), ["http", "h2c", "http"]);
        assert!(Arc::ptr_eq(&p.at("http://a/u")[2], &newer.inner));
        drop((http, h2c));
        assert_eq!(schemes("http://a/u"), ["http"]);
        assert_eq!(schemes("http://b/u"), ["https"]);
        drop((newer, other));
    }

    #[test]
    fn listings_are_parsed_leniently() {
        let body = br#"[{"scheme": "http", "host": "App.Example.", "ip": "100.64.242.2", "port": "80"},
                        {"scheme": "h2c", "host": "b.example", "ip": "gateway.local"},
                        {"scheme": "http", "ip": "100.64.242.3"},
                        {"scheme": 7, "host": "c.example"},
                        "junk"]"#;
        assert_eq!(
            parse_listing(body).unwrap(),
            vec![
                Listed { scheme: "http".into(), host: "app.example".into(), ip: Some(Ipv4Addr::new(100, 64, 242, 2)) },
                Listed { scheme: "h2c".into(), host: "b.example".into(), ip: None },
            ]
        );
        assert_eq!(parse_listing(b"[]").unwrap(), vec![]);
        assert!(parse_listing(b"{}").is_err());
        assert!(parse_listing(b"<html>").is_err());
    }
}
