//! Serving visitors on a shared gateway port with hyper 1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opennotr_plugin::{CancellationToken, OpenError, StreamProtocol, TunnelStream};
use opennotr_transport::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tracing::{debug, info_span, Instrument};

use crate::h1::{Replay, UpStream};
use crate::{Gateway, GatewayConfig, Lookup, Scheme, Upstream};
use opennotr_transport::mux::Mux;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What a plugin's connections need to know.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) scheme: Scheme,
    pub(crate) wildcard: bool,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// Idle connections to clients' services, for reuse.
    pub(crate) pool: Arc<Pool>,
}

impl Settings {
    pub(crate) fn new(scheme: Scheme, cfg: &GatewayConfig) -> Settings {
        Settings {
            scheme,
            wildcard: cfg.wildcard,
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            pool: Arc::new(Pool::new()),
        }
    }
}

/// Accepts visitors until `shutdown`; each connection is its own task (the
/// listener is shared by every session, so no session's tracker owns it).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let mut acceptor = Acceptor::new(listener);
    while let Some((visitor, peer)) = acceptor.next(&shutdown).await {
        let span = info_span!("visitor", scheme = settings.scheme.name(), %peer);
        tokio::spawn(
            serve_connection(visitor, peer, gateway.clone(), settings.clone(), shutdown.clone(), true).instrument(span),
        );
    }
}

// ------------------------------------------------------------ activity

/// When a visitor connection last moved a byte, and how many of its
/// requests are in flight (a response body still streaming counts).
#[derive(Debug)]
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity { base: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A socket that records its activity.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------- connections

struct Conn {
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    settings: Arc<Settings>,
    activity: Arc<Activity>,
}

/// Serves one visitor connection (plain, or already TLS-terminated for
/// `https`) with the scheme's HTTP versions. `http1` (not HTTP/2 by ALPN):
/// the direct HTTP/1.1 path takes the requests it can, hyper the rest.
pub(crate) async fn serve_connection<S>(
    visitor: S,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    http1: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let visitor = if http1 && matches!(settings.scheme, Scheme::Http | Scheme::Https) {
        match crate::h1::serve(visitor, peer, &gateway, &settings, &shutdown).await {
            Some(rest) => rest,
            None => return,
        }
    } else {
        Replay::new(bytes::BytesMut::new(), visitor)
    };
    let activity = Arc::new(Activity::new());
    activity.touch();
    let io = TokioIo::new(Tracked { inner: visitor, activity: activity.clone() });
    let conn = Arc::new(Conn { peer, gateway, settings: settings.clone(), activity: activity.clone() });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move {
            let resp = handle(req, conn.clone()).await;
            conn.gateway.count_request(conn.settings.scheme, resp.status().as_u16());
            Ok::<_, Infallible>(resp)
        }
    });
    match settings.scheme {
        Scheme::Http => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(settings.header_timeout).keep_alive(true);
            let c = b.serve_connection(io, service).with_upgrades();
            drive(c, |c| c.graceful_shutdown(), &activity, settings.idle_timeout, &shutdown).await;
        }
        Scheme::H2c => {
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
            b.http2().timer(TokioTimer::new()).adaptive_window(true).max_concurrent_streams(256);
            let c = b.serve_connection(io, service);
            drive(c, |c| c.graceful_shutdown(), &activity, settings.idle_timeout, &shutdown).await;
        }
        Scheme::Https => {
            // HTTP/1.1 (with upgrades) or HTTP/2, as ALPN chose; the
            // auto builder tells them apart by the HTTP/2 preface.
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_timeout).keep_alive(true);
            b.http2().timer(TokioTimer::new()).adaptive_window(true).max_concurrent_streams(256);
            let c = b.serve_connection_with_upgrades(io, service);
            drive(c, |c| c.graceful_shutdown(), &activity, settings.idle_timeout, &shutdown).await;
        }
        Scheme::Tls => {}
    }
}

/// Runs a visitor connection until it ends, is idle too long (no traffic
/// and no request in flight), or the gateway shuts down.
async fn drive<C, E>(
    conn: C,
    mut graceful_shutdown: impl FnMut(Pin<&mut C>),
    activity: &Activity,
    idle: Duration,
    shutdown: &CancellationToken,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let wait = match idle.saturating_sub(activity.idle_for()) {
            d if d.is_zero() => idle,
            d => d,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "visitor connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                graceful_shutdown(conn.as_mut());
                closing = true;
            }
            _ = tokio::time::sleep(wait), if !closing => {
                if activity.idle_for() >= idle && activity.in_flight.load(Ordering::SeqCst) == 0 {
                    debug!("visitor connection idle; closing it");
                    graceful_shutdown(conn.as_mut());
                    closing = true;
                }
            }
        }
    }
}

// ------------------------------------------------------------- requests

fn page_html(status: StatusCode, title: &str, detail: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><title>{status_code} {title}</title></head>\n\
         <body><h1>{status_code} {title}</h1><p>{detail}</p><hr><p>opennotr</p></body></html>\n",
        status_code = status.as_u16(),
        title = escape(title),
        detail = escape(detail),
    )
}

fn html(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let mut r = Response::new(full(page_html(status, title, detail)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An answer of the gateway's own: the service could not be reached.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    title: &'static str,
    detail: String,
}

impl Page {
    pub(crate) fn bad_gateway(reason: impl std::fmt::Display) -> Page {
        Page { status: StatusCode::BAD_GATEWAY, title: "Bad Gateway", detail: format!("bad gateway: {reason}") }
    }

    pub(crate) fn unavailable(detail: impl Into<String>) -> Page {
        Page { status: StatusCode::SERVICE_UNAVAILABLE, title: "Service Unavailable", detail: detail.into() }
    }

    fn response(&self) -> Response<Body> {
        html(self.status, self.title, &self.detail)
    }

    /// The page as a whole HTTP/1.1 response, the same as [`Page::response`].
    pub(crate) fn write_http1(&self, out: &mut Vec<u8>, keep: bool) {
        use std::io::Write as _;
        let body = page_html(self.status, self.title, &self.detail);
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n\
             content-length: {}\r\n{}\r\n{body}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(self.title),
            body.len(),
            if keep { "" } else { "connection: close\r\n" },
        );
    }
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).map_err(|never| match never {}).boxed_unsync()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The host a request names, as sent (`:authority` for HTTP/2, else `Host`).
fn authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string)
}

/// `Host` without port, lowercase, without a trailing dot.
pub(crate) fn route_name(host: &str) -> String {
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers (and those `Connection` names). With
/// `upgrade`, `Connection: upgrade` and `Upgrade` stay. `TE: trailers`
/// stays (gRPC needs it end to end).
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    // Header names are constants, not parsed per request: this runs twice
    // for every proxied request.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let te_trailers = h
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    let upgrade_value = if upgrade { h.get(header::UPGRADE).cloned() } else { None };
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(v) = upgrade_value {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, v);
    }
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

fn add_forwarded(h: &mut HeaderMap, peer: SocketAddr, host: &str, proto: &'static str) {
    let ip = peer.ip().to_canonical().to_string();
    let xff = {
        let mut previous = h.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).peekable();
        if previous.peek().is_none() {
            ip.clone()
        } else {
            let mut all = previous.collect::<Vec<_>>().join(", ");
            all.push_str(", ");
            all.push_str(&ip);
            all
        }
    };
    let set = |h: &mut HeaderMap, name: HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    set(h, X_FORWARDED_FOR, &xff);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    set(h, X_FORWARDED_HOST, host);
    set(h, X_REAL_IP, &ip);
}

/// How the gateway speaks to a client's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum UpstreamProto {
    /// HTTP/1.1 (with upgrades).
    H1,
    /// HTTP/2 with prior knowledge.
    H2,
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/grpc")))
}

async fn handle(mut req: Request<Incoming>, conn: Arc<Conn>) -> Response<Body> {
    let in_flight = conn.activity.begin();
    let scheme = conn.settings.scheme;
    if let Some(r) = crate::acme::http01_answer(&conn.gateway, scheme, req.uri().path()) {
        return r.map(full);
    }
    let mut upstream_proto = UpstreamProto::H1;
    let Some(host) = authority(&req) else {
        return html(StatusCode::BAD_REQUEST, "Bad Request", "The request names no host.");
    };
    let name = route_name(&host);
    // Which routes serve this scheme, in order, and how each speaks to the
    // client's service: `https` terminates TLS for `https` forwards
    // (HTTP/1.1 to the service) and `h2c` forwards (HTTP/2: gRPC over TLS),
    // gRPC requests preferring an `h2c` forward.
    let candidates: &[(Scheme, UpstreamProto)] = match scheme {
        Scheme::Http => &[(Scheme::Http, UpstreamProto::H1)],
        Scheme::H2c => &[(Scheme::H2c, UpstreamProto::H2)],
        Scheme::Https if is_grpc(&req) => &[(Scheme::H2c, UpstreamProto::H2), (Scheme::Https, UpstreamProto::H1)],
        Scheme::Https => &[(Scheme::Https, UpstreamProto::H1), (Scheme::H2c, UpstreamProto::H2)],
        Scheme::Tls => &[],
    };
    let mut found = Lookup::Unknown;
    for (s, proto) in candidates {
        match conn.gateway.lookup(*s, &name, conn.settings.wildcard) {
            Lookup::Found(up) => {
                found = Lookup::Found(up);
                upstream_proto = *proto;
                break;
            }
            Lookup::Gone => found = Lookup::Gone,
            Lookup::Unknown => {}
        }
    }
    if scheme == Scheme::Https && matches!(found, Lookup::Unknown) {
        // A passthrough domain whose client is gone (the handshake came
        // here because its route is not live).
        if let Lookup::Gone = conn.gateway.lookup(Scheme::Tls, &name, conn.settings.wildcard) {
            found = Lookup::Gone;
        }
    }
    let up = match found {
        Lookup::Found(up) => up,
        Lookup::Gone => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                &format!("client not connected: {name}"),
            )
        }
        Lookup::Unknown => {
            return html(StatusCode::NOT_FOUND, "Not Found", &format!("No service is routed for {name} here."));
        }
    };
    let upgrade = upstream_proto == UpstreamProto::H1 && wants_upgrade(&req);
    let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut(), upgrade);
    add_forwarded(req.headers_mut(), conn.peer, &host, if scheme == Scheme::Https { "https" } else { "http" });

    let sent = match upstream_proto {
        UpstreamProto::H1 => {
            *req.version_mut() = Version::HTTP_11;
            if req.uri().authority().is_some() {
                // An absolute-form request: the service gets origin form.
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
                *req.uri_mut() = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
                if let Ok(v) = HeaderValue::from_str(&host) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            send_h1(&conn, &up, &name, req, upgrade).await
        }
        UpstreamProto::H2 => {
            *req.version_mut() = Version::HTTP_2;
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
            match Uri::builder().scheme("http").authority(host.as_str()).path_and_query(pq).build() {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => return html(StatusCode::BAD_REQUEST, "Bad Request", "The request's host is not valid."),
            }
            req.headers_mut().remove(header::HOST);
            send_h2(&conn, &up, &name, req).await
        }
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(page) => return page,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(visitor_upgrade) = visitor_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice(visitor_upgrade, upstream_upgrade, up.clone()).in_current_span());
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync());
        }
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(|body| {
        body.map_frame(move |f| {
            let _held = &in_flight;
            f
        })
        .boxed_unsync()
    })
}

fn bad_gateway(e: hyper::Error) -> Response<Body> {
    debug!(error = %e, "the client's service failed");
    match std::error::Error::source(&e) {
        Some(s) => Page::bad_gateway(format_args!("{e}: {s}")).response(),
        None => Page::bad_gateway(e).response(),
    }
}

/// Drives the connection to the client's service until it is done or the
/// session is gone.
fn spawn_upstream<F, E>(conn: F, kill: CancellationToken)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(
        async move {
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "connection to the client's service ended") },
                _ = kill.cancelled() => debug!("session closed; dropping the connection to the client's service"),
            }
        }
        .in_current_span(),
    );
}

/// Copies both ways between an upgraded visitor connection and the
/// upgraded connection to the client's service, until both end or the
/// session is gone.
async fn splice(visitor: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, up: Upstream) {
    let (v, u) = match tokio::try_join!(visitor, upstream) {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut v, mut u) = (TokioIo::new(v), TokioIo::new(u));
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut v, &mut u) => match r {
            Ok((up_bytes, down_bytes)) => debug!(up = up_bytes, down = down_bytes, "upgraded connection closed"),
            Err(e) => debug!(error = %e, "upgraded connection ended with an error"),
        },
        _ = up.kill.cancelled() => debug!("session closed; dropping upgraded connection"),
    }
}

// ----------------------------------------------------------------- pool

/// Idle HTTP/1.1 connections kept per route, at most.
const POOL_MAX_IDLE: usize = 256;
/// How long an idle connection to a client's service is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which connections a request may reuse: those to the same forward of the
/// same session (the tunnel), spoken the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    tunnel: usize,
    forward: u64,
    target: SocketAddr,
    proto: UpstreamProto,
    /// Plain streams of the direct HTTP/1.1 path (`h1.rs`), not hyper's.
    direct: bool,
}

impl PoolKey {
    fn new(up: &Upstream, proto: UpstreamProto) -> PoolKey {
        PoolKey {
            tunnel: Arc::as_ptr(&up.tunnel) as *const () as usize,
            forward: up.forward,
            target: up.target,
            proto,
            direct: false,
        }
    }

    pub(crate) fn direct(up: &Upstream) -> PoolKey {
        PoolKey { direct: true, ..PoolKey::new(up, UpstreamProto::H1) }
    }
}

struct IdleH1 {
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
    since: Instant,
}

struct IdleStream {
    stream: UpStream,
    since: Instant,
}

enum PoolEntry {
    /// Idle HTTP/1.1 connections, the most recently used last.
    H1(Vec<IdleH1>),
    /// Idle streams of the direct HTTP/1.1 path, the most recently used last.
    Direct(Vec<IdleStream>),
    /// One shared HTTP/2 connection (it multiplexes).
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

struct Routes {
    entries: std::collections::HashMap<PoolKey, (PoolEntry, CancellationToken)>,
    sweeper: bool,
}

/// Connections to clients' services (streams through their tunnels) kept
/// for later requests of the same route, so that a keep-alive visitor does
/// not cost a new tunnel stream and connection per request. Entries go
/// when the session ends (its kill token), when the connection closes, or
/// after [`POOL_IDLE_TIMEOUT`] unused.
pub(crate) struct Pool {
    routes: std::sync::Mutex<Routes>,
    /// Each route's multiplexed connection, for the direct path.
    muxes: std::sync::Mutex<std::collections::HashMap<PoolKey, Muxed>>,
    /// Per route, held while its multiplexed connection is being opened,
    /// so that concurrent first requests make one, not one each (and a
    /// slow client delays only its own routes). Gone once it is open.
    opening: std::sync::Mutex<std::collections::HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
}

enum Muxing {
    Stream(UpStream),
    Full,
    None,
}

struct Muxed {
    mux: Mux,
    kill: CancellationToken,
    last_used: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool {
            routes: std::sync::Mutex::new(Routes { entries: Default::default(), sweeper: false }),
            muxes: Default::default(),
            opening: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle HTTP/1.1 connection of the route, ready for a request.
    fn take_h1(&self, key: &PoolKey) -> Option<hyper::client::conn::http1::SendRequest<Incoming>> {
        let mut routes = self.lock();
        let (entry, kill) = routes.entries.get_mut(key)?;
        if kill.is_cancelled() {
            routes.entries.remove(key);
            return None;
        }
        let PoolEntry::H1(idle) = entry else { return None };
        idle.retain(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && !c.sender.is_closed());
        // A connection whose last response body was just read may not have
        // noticed yet that it is free; it stays for a later request.
        let i = idle.iter().rposition(|c| c.sender.is_ready())?;
        Some(idle.remove(i).sender)
    }

    fn put_h1(
        self: &Arc<Self>,
        key: PoolKey,
        kill: &CancellationToken,
        sender: hyper::client::conn::http1::SendRequest<Incoming>,
    ) {
        if kill.is_cancelled() {
            return;
        }
        let mut routes = self.lock();
        let (entry, _) = routes.entries.entry(key).or_insert_with(|| (PoolEntry::H1(Vec::new()), kill.clone()));
        if let PoolEntry::H1(idle) = entry {
            idle.retain(|c| !c.sender.is_closed());
            if idle.len() < POOL_MAX_IDLE {
                idle.push(IdleH1 { sender, since: Instant::now() });
            }
        }
        self.start_sweeper(&mut routes);
    }

    /// An idle stream of the route that still looks open.
    pub(crate) fn take_direct(&self, key: &PoolKey, kill: &CancellationToken) -> Option<UpStream> {
        if kill.is_cancelled() {
            return None;
        }
        loop {
            let mut idle = {
                let mut routes = self.lock();
                let Some((PoolEntry::Direct(idle), _)) = routes.entries.get_mut(key) else { return None };
                idle.pop()?
            };
            if idle.since.elapsed() < POOL_IDLE_TIMEOUT && idle.stream.is_reusable() {
                return Some(idle.stream);
            }
        }
    }

    pub(crate) fn put_direct(self: &Arc<Self>, key: PoolKey, kill: &CancellationToken, stream: UpStream) {
        if kill.is_cancelled() {
            return;
        }
        let mut routes = self.lock();
        let (entry, _) = routes.entries.entry(key).or_insert_with(|| (PoolEntry::Direct(Vec::new()), kill.clone()));
        if let PoolEntry::Direct(idle) = entry {
            if idle.len() < POOL_MAX_IDLE {
                idle.push(IdleStream { stream, since: Instant::now() });
            }
        }
        self.start_sweeper(&mut routes);
    }

    /// A new stream to the route's service for the direct path: on the
    /// route's multiplexed connection (made on first use) if the client
    /// takes them, else a tunnel stream of its own.
    pub(crate) async fn upstream(
        self: &Arc<Self>,
        key: &PoolKey,
        up: &Upstream,
        peer: SocketAddr,
        name: &str,
    ) -> Result<UpStream, Page> {
        if !up.tunnel.multiplexes() {
            return open_upstream(up, StreamProtocol::Tcp, peer, name).await.map(UpStream::Plain);
        }
        let plain = || open_upstream(up, StreamProtocol::Tcp, peer, name);
        match self.open_muxed(key) {
            Muxing::Stream(s) => return Ok(s),
            // Beyond the multiplexed connection's streams, the rest get
            // data channels of their own.
            Muxing::Full => return plain().await.map(UpStream::Plain),
            Muxing::None => {}
        }
        let gate = self.opening.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let _opening = gate.lock().await;
        match self.open_muxed(key) {
            Muxing::Stream(s) => return Ok(s),
            Muxing::Full => return plain().await.map(UpStream::Plain),
            Muxing::None => {}
        }
        let opened = self.open_mux(key, up, peer, name).await;
        // Whoever waits already holds the gate and then finds the new
        // connection; after a failure the next request tries again.
        self.opening.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        opened
    }

    /// Opens the route's multiplexed connection and a first stream on it.
    async fn open_mux(
        self: &Arc<Self>,
        key: &PoolKey,
        up: &Upstream,
        peer: SocketAddr,
        name: &str,
    ) -> Result<UpStream, Page> {
        let mut carrier = open_upstream(up, StreamProtocol::Mux, peer, name).await?;
        opennotr_transport::limit_unsent(carrier.channel().tcp(), opennotr_transport::mux::CARRIER_UNSENT);
        let counters = carrier.take_counters();
        let mux = Mux::opener(carrier, counters);
        let stream = mux.open().map_err(|e| Page::unavailable(format!("client not connected: {name}: {e}")))?;
        let mut muxes = self.muxes.lock().unwrap_or_else(|e| e.into_inner());
        let old = muxes.insert(key.clone(), Muxed { mux, kill: up.kill.clone(), last_used: Instant::now() });
        drop(muxes);
        // A connection left out of the map would live, with its tasks,
        // until the client closed it.
        if let Some(old) = old {
            old.mux.close();
        }
        self.start_sweeper(&mut self.lock());
        Ok(UpStream::Muxed(stream))
    }

    /// A stream on the route's live multiplexed connection, if it has one
    /// (`Full` when it carries as many streams as it may).
    fn open_muxed(&self, key: &PoolKey) -> Muxing {
        let mut muxes = self.muxes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = muxes.get_mut(key) else { return Muxing::None };
        if m.mux.is_closed() || m.kill.is_cancelled() {
            m.mux.close();
            muxes.remove(key);
            return Muxing::None;
        }
        m.last_used = Instant::now();
        match m.mux.open() {
            Ok(s) => Muxing::Stream(UpStream::Muxed(s)),
            Err(_) => Muxing::Full,
        }
    }

    /// The route's shared HTTP/2 connection, if it is still usable.
    fn h2(&self, key: &PoolKey) -> Option<hyper::client::conn::http2::SendRequest<Incoming>> {
        let mut routes = self.lock();
        let (entry, kill) = routes.entries.get(key)?;
        match entry {
            PoolEntry::H2(s) if !kill.is_cancelled() && !s.is_closed() && s.is_ready() => Some(s.clone()),
            _ => {
                routes.entries.remove(key);
                None
            }
        }
    }

    fn put_h2(
        self: &Arc<Self>,
        key: PoolKey,
        kill: &CancellationToken,
        sender: hyper::client::conn::http2::SendRequest<Incoming>,
    ) {
        if kill.is_cancelled() {
            return;
        }
        let mut routes = self.lock();
        routes.entries.insert(key, (PoolEntry::H2(sender), kill.clone()));
        self.start_sweeper(&mut routes);
    }

    /// Starts, once, the task that drops expired and closed connections
    /// (it ends with the pool).
    fn start_sweeper(self: &Arc<Self>, routes: &mut Routes) {
        if routes.sweeper {
            return;
        }
        routes.sweeper = true;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POOL_IDLE_TIMEOUT / 4).await;
                let Some(pool) = weak.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    fn sweep(&self) {
        // Gates left by a request dropped while it opened a connection.
        self.opening.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, g| Arc::strong_count(g) > 1);
        // A multiplexed connection nobody used for the idle timeout (its
        // route went, or it has no traffic) is closed; the next request
        // opens a new one.
        self.muxes.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, m| {
            let keep = !m.mux.is_closed()
                && !m.kill.is_cancelled()
                && (m.last_used.elapsed() < POOL_IDLE_TIMEOUT || m.mux.streams() > 0);
            if !keep {
                m.mux.close();
            }
            keep
        });
        let mut routes = self.lock();
        routes.entries.retain(|_, (entry, kill)| {
            if kill.is_cancelled() {
                return false;
            }
            match entry {
                PoolEntry::H1(idle) => {
                    idle.retain(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && !c.sender.is_closed());
                    !idle.is_empty()
                }
                PoolEntry::Direct(idle) => {
                    idle.retain_mut(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && c.stream.is_reusable());
                    !idle.is_empty()
                }
                PoolEntry::H2(s) => !s.is_closed(),
            }
        });
    }
}

/// Opens a stream through the client's tunnel to the forward's target, or
/// the error page for the visitor.
pub(crate) async fn open_upstream(
    up: &Upstream,
    protocol: StreamProtocol,
    peer: SocketAddr,
    name: &str,
) -> Result<TunnelStream, Page> {
    let opened = tokio::select! {
        r = up.tunnel.open_stream(protocol, up.target, Some(peer)) => r,
        _ = up.kill.cancelled() => Err(OpenError::SessionClosed),
    };
    match opened {
        Ok(s) => Ok(s),
        Err(OpenError::Refused(reason)) => Err(Page::bad_gateway(reason)),
        Err(OpenError::TooManyStreams) => Err(Page::unavailable("too many streams for this client")),
        Err(e) => {
            debug!(error = %e, "cannot open a stream to the client");
            Err(Page::unavailable(format!("client not connected: {name}")))
        }
    }
}

/// A new HTTP/1.1 connection to the client's service.
async fn connect_h1(
    conn: &Conn,
    up: &Upstream,
    name: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, Response<Body>> {
    let io = TokioIo::new(open_upstream(up, StreamProtocol::Tcp, conn.peer, name).await.map_err(|p| p.response())?);
    let (sender, c) = hyper::client::conn::http1::handshake(io).await.map_err(bad_gateway)?;
    spawn_upstream(c.with_upgrades(), up.kill.clone());
    Ok(sender)
}

/// Sends a request over HTTP/1.1: on a fresh connection for upgrades, else
/// on an idle pooled one (a new one if there is none, or if the pooled one
/// closed before the request went out). The response's body hands the
/// connection back to the pool when it has been read to the end.
async fn send_h1(
    conn: &Conn,
    up: &Upstream,
    name: &str,
    req: Request<Incoming>,
    upgrade: bool,
) -> Result<Response<Body>, Response<Body>> {
    if upgrade {
        let mut sender = connect_h1(conn, up, name).await?;
        return sender.send_request(req).await.map(|r| r.map(boxed)).map_err(bad_gateway);
    }
    let pool = &conn.settings.pool;
    let key = PoolKey::new(up, UpstreamProto::H1);
    let mut req = req;
    let mut sender = loop {
        let Some(mut sender) = pool.take_h1(&key) else {
            break connect_h1(conn, up, name).await?;
        };
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(returning(resp, pool, key, &up.kill, sender)),
            Err(mut e) => match e.take_message() {
                // Not sent: the pooled connection had closed; try another.
                Some(r) => req = r,
                None => return Err(bad_gateway(e.into_error())),
            },
        }
    };
    let resp = sender.send_request(req).await.map_err(bad_gateway)?;
    Ok(returning(resp, pool, key, &up.kill, sender))
}

fn boxed(body: Incoming) -> Body {
    body.map_err(BoxError::from).boxed_unsync()
}

/// The response with a body that returns `sender` to the pool once read to
/// its end. A body dropped half-read leaves the connection unusable, so it
/// is not returned then (hyper closes it).
fn returning(
    resp: Response<Incoming>,
    pool: &Arc<Pool>,
    key: PoolKey,
    kill: &CancellationToken,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
) -> Response<Body> {
    let back = GiveBack { pool: pool.clone(), key, kill: kill.clone(), sender };
    resp.map(|body| OnEnd { inner: body, on_end: Some(back) }.map_err(BoxError::from).boxed_unsync())
}

struct GiveBack {
    pool: Arc<Pool>,
    key: PoolKey,
    kill: CancellationToken,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
}

/// A body that gives its connection back when it ends.
struct OnEnd {
    inner: Incoming,
    on_end: Option<GiveBack>,
}

impl OnEnd {
    fn finish(&mut self) {
        if let Some(b) = self.on_end.take() {
            b.pool.put_h1(b.key, &b.kill, b.sender);
        }
    }
}

impl hyper::body::Body for OnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        // Bodiless responses (HEAD, 204, 304) may never be polled.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

/// Sends a request over the route's shared HTTP/2 connection, making it
/// first if there is none (or it closed).
async fn send_h2(
    conn: &Conn,
    up: &Upstream,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let pool = &conn.settings.pool;
    let key = PoolKey::new(up, UpstreamProto::H2);
    let mut req = req;
    if let Some(mut sender) = pool.h2(&key) {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp.map(boxed)),
            Err(mut e) => match e.take_message() {
                Some(r) => req = r,
                None => return Err(bad_gateway(e.into_error())),
            },
        }
    }
    let io = TokioIo::new(open_upstream(up, StreamProtocol::Tcp, conn.peer, name).await.map_err(|p| p.response())?);
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.adaptive_window(true);
    let (mut sender, c) = b.handshake(io).await.map_err(bad_gateway)?;
    spawn_upstream(c, up.kill.clone());
    pool.put_h2(key, &up.kill, sender.clone());
    sender.send_request(req).await.map(|r| r.map(boxed)).map_err(bad_gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names() {
        assert_eq!(route_name("App.Example.com:8080"), "app.example.com");
        assert_eq!(route_name("app.example.com."), "app.example.com");
        assert_eq!(route_name("[::1]:80"), "::1");
        assert_eq!(route_name("a.b"), "a.b");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-private").is_none() && h.get("connection").is_none() && h.get("keep-alive").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");

        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, "[::ffff:192.0.2.7]:5000".parse().unwrap(), "a.example:8080", "http");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 192.0.2.7");
        assert_eq!(h.get("x-real-ip").unwrap(), "192.0.2.7");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example:8080");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }
}
