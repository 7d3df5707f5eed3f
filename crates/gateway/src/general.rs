//! The hyper path: requests hyper's servers parse (HTTP/2 visitors, and the
//! HTTP/1 requests the direct path hands over: upgrades, streamed bodies,
//! HTTP/1.0, gRPC, ACME challenges, unknown or departed hosts), sent on
//! with hyper's clients: HTTP/1.1 to `http` and `https` forwards, HTTP/2 to
//! `h2c` forwards. The message rules and the head rewriting are the same
//! as the direct path's ([`crate::rules`]); hyper's HTTP/1 server reads a
//! visitor only through the guard ([`crate::guard`]).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opennotr_plugin::{CancellationToken, StreamProtocol};
use tracing::{debug, Instrument};

use crate::ctx::Ctx;
use crate::error::GatewayError;
use crate::guard::GuardShared;
use crate::io::{Activity, InFlight, Stall, TimedIo};
use crate::pool::{open_upstream, Body, BoxError};
use crate::route::{Lookup, Scheme, Upstream};
use crate::rules::{self, BodyFraming};

/// Most of a request body read before anything is sent to the service: a
/// body that ends within it (most do) reaches the service only once it
/// passed the rules whole; a longer one streams.
const PREFETCH: usize = 64 * 1024;

/// One connection hyper serves.
pub(crate) struct Conn {
    pub(crate) ctx: Ctx,
    pub(crate) activity: Arc<Activity>,
    /// The guard in front of hyper's HTTP/1 server (none for HTTP/2).
    pub(crate) guard: Option<Arc<GuardShared>>,
    /// Requests handled so far: on HTTP/1, hyper answers them in the order
    /// the guard passed them on, so this numbers them as the guard does.
    pub(crate) handled: std::sync::atomic::AtomicU64,
}

/// How the gateway speaks to a client's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamProto {
    /// HTTP/1.1 (with upgrades).
    H1,
    /// HTTP/2 with prior knowledge.
    H2,
}

/// Answers one request.
pub(crate) async fn handle(req: Request<Incoming>, conn: Arc<Conn>) -> Response<Body> {
    let in_flight = conn.activity.begin();
    let seq = conn.handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let mut upgrade = Upgrade { guard: conn.guard.clone(), seq, upgraded: false, on: None };
    let http10 = req.version() == Version::HTTP_10;
    let resp = match route(req, &conn, &mut upgrade).await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(error = %e, origin = e.origin().name(), "request failed");
            conn.ctx.gateway.count_error(&e);
            error_response(&e)
        }
    };
    drop(upgrade);
    if let Some(g) = &conn.guard {
        // Read to the connection's end by an HTTP/1.0 visitor: nothing
        // may be written after it.
        if http10 && !resp.headers().contains_key(header::CONTENT_LENGTH) && resp.body().size_hint().exact().is_none() {
            g.last_response_unbounded();
        }
    }
    conn.ctx.gateway.count_request(conn.ctx.settings.scheme, resp.status().as_u16());
    resp.map(|body| {
        body.map_frame(move |f| {
            let _held: &InFlight = &in_flight;
            f
        })
        .boxed_unsync()
    })
}

/// Tells the guard how the request numbered `seq` ended (not upgraded,
/// unless set), whatever way the handler returns.
struct Upgrade {
    guard: Option<Arc<GuardShared>>,
    seq: u64,
    upgraded: bool,
    /// hyper hands the connection over to this once it ends, for any
    /// request that carried an `Upgrade` field.
    on: Option<hyper::upgrade::OnUpgrade>,
}

impl Drop for Upgrade {
    fn drop(&mut self) {
        if let Some(g) = &self.guard {
            g.resolve_upgrade(self.seq, self.upgraded);
        }
        if let Some(on) = self.on.take() {
            // Not upgraded: when the connection ends, hyper still hands it
            // over here instead of shutting it down; the shutdown (which
            // writes a rejection the guard holds) is done here then.
            tokio::spawn(async move {
                if let Ok(io) = on.await {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut TokioIo::new(io)).await;
                }
            });
        }
    }
}

fn error_response(e: &GatewayError) -> Response<Body> {
    let page = e.page();
    let mut r = Response::new(full(page.html()));
    *r.status_mut() = page.status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.closes() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let GatewayError::Unauthorized(realm) = e {
        // The realm is the forward's domain: DNS characters only.
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The forward's access rules for one request: the TCP peer's address
/// (never `X-Forwarded-For`, which a visitor writes), then the basic auth
/// credentials, which are the gateway's own and so are not passed on.
async fn check_access(
    access: &dyn opennotr_plugin::Access,
    peer: std::net::SocketAddr,
    headers: &mut HeaderMap,
) -> Result<(), GatewayError> {
    access.admit(peer.ip()).map_err(|_| GatewayError::Forbidden)?;
    let Some(realm) = access.basic_auth_realm() else { return Ok(()) };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    // Two values: which one the service would read is anyone's guess.
    let value = match (values.next(), values.next()) {
        (v, None) => v.map(HeaderValue::as_bytes),
        _ => None,
    };
    match access.authorize(value).await {
        Ok(()) => {
            headers.remove(header::AUTHORIZATION);
            Ok(())
        }
        Err(opennotr_plugin::Refusal::Busy) => Err(GatewayError::AuthBusy),
        Err(_) => Err(GatewayError::Unauthorized(realm.to_string())),
    }
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

async fn route(req: Request<Incoming>, conn: &Conn, upgrade: &mut Upgrade) -> Result<Response<Body>, GatewayError> {
    let ctx = &conn.ctx;
    let settings = &ctx.settings;
    let scheme = settings.scheme;
    let mut req = req;
    if req.headers().contains_key(header::UPGRADE) {
        upgrade.on = Some(hyper::upgrade::on(&mut req));
    }
    if let Some(r) = crate::acme::http01_answer(&ctx.gateway, scheme, req.uri().path()) {
        return Ok(r.map(full));
    }
    let (mut parts, body) = req.into_parts();
    let h2 = parts.version == Version::HTTP_2;
    let is_head = parts.method == hyper::Method::HEAD;
    // The rules, and the fields rewritten for the service.
    let (name, host, framing, wants_upgrade, path) = if h2 {
        let authority = parts.uri.authority().map(|a| a.as_str().to_string());
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let (name, host) =
            rules::rewrite_h2(parts.method.as_str(), &path, authority.as_deref(), &mut parts.headers, ctx.visitor())
                .map_err(GatewayError::bad_request)?;
        (name, host, None, false, None)
    } else {
        let target = parts.uri.to_string();
        let rw = rules::rewrite_parts(
            parts.method.as_str(),
            &target,
            parts.version == Version::HTTP_10,
            &mut parts.headers,
            ctx.visitor(),
        )
        .map_err(GatewayError::bad_request)?;
        (rw.name, rw.host, Some(rw.framing), rw.upgrade, rw.path)
    };
    let grpc = is_grpc(&parts.headers);

    // Which routes serve this scheme, in order, and how each speaks to the
    // client's service: `https` terminates TLS for `https` forwards
    // (HTTP/1.1 to the service) and `h2c` forwards (HTTP/2: gRPC over TLS),
    // gRPC requests preferring an `h2c` forward.
    let candidates: &[(Scheme, UpstreamProto)] = match scheme {
        Scheme::Http => &[(Scheme::Http, UpstreamProto::H1)],
        Scheme::H2c => &[(Scheme::H2c, UpstreamProto::H2)],
        Scheme::Https if grpc => &[(Scheme::H2c, UpstreamProto::H2), (Scheme::Https, UpstreamProto::H1)],
        Scheme::Https => &[(Scheme::Https, UpstreamProto::H1), (Scheme::H2c, UpstreamProto::H2)],
        _ => &[],
    };
    let mut found = Lookup::Unknown;
    let mut proto = UpstreamProto::H1;
    for (s, p) in candidates {
        match ctx.gateway.lookup(*s, &name, settings.wildcard) {
            Lookup::Found(up) => {
                found = Lookup::Found(up);
                proto = *p;
                break;
            }
            Lookup::Gone => found = Lookup::Gone,
            Lookup::Unknown => {}
        }
    }
    if scheme == Scheme::Https && matches!(found, Lookup::Unknown) {
        // A passthrough domain whose client is gone (the handshake came
        // here because its route is not live).
        if let Lookup::Gone = ctx.gateway.lookup(Scheme::Tls, &name, settings.wildcard) {
            found = Lookup::Gone;
        }
    }
    let up = match found {
        Lookup::Found(up) => up,
        Lookup::Gone => return Err(GatewayError::ClientGone(name)),
        Lookup::Unknown => return Err(GatewayError::NoRoute(name)),
    };
    if let Some(access) = &up.access {
        check_access(access.as_ref(), ctx.peer, &mut parts.headers).await?;
    }

    // The body: from an HTTP/1 visitor, read ahead (up to PREFETCH) under
    // the body timeout; from an HTTP/2 visitor (gRPC streams both ways),
    // streamed as it comes.
    // (No body, as most requests: nothing to watch, no token.)
    let bodiless = framing == Some(BodyFraming::None) || (framing.is_none() && body.is_end_stream());
    let watch = (!bodiless).then(|| (Arc::new(Failure::default()), CancellationToken::new()));
    let body = match (&watch, framing) {
        (None, _) => empty(),
        (Some((failed, sent)), Some(_)) => {
            let b = VisitorBody::new(body, settings.body_timeout, failed.clone(), conn.guard.clone(), sent.clone());
            prefetch(b, failed).await?
        }
        // HTTP/2: gRPC streams may last as long as the call does; any
        // other body has the body timeout.
        (Some((failed, sent)), None) => {
            let limit = if grpc { Duration::MAX } else { settings.body_timeout };
            VisitorBody::new(body, limit, failed.clone(), None, sent.clone()).boxed_unsync()
        }
    };
    let upgrade_requested = wants_upgrade && proto == UpstreamProto::H1;
    match proto {
        UpstreamProto::H1 => {
            parts.version = Version::HTTP_11;
            if h2 || path.is_some() {
                // The service gets origin form, and the host in Host.
                let pq = path.unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string());
                parts.uri = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
                if let Ok(v) = HeaderValue::from_str(&host) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        UpstreamProto::H2 => {
            parts.version = Version::HTTP_2;
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(host.as_str())
                .path_and_query(pq)
                .build()
                .map_err(|_| GatewayError::BadRequest { status: 400, reason: "malformed authority" })?;
            parts.headers.remove(header::HOST);
        }
    }
    let req = Request::from_parts(parts, body);
    let exchange = async {
        match proto {
            UpstreamProto::H1 => send_h1(ctx, &up, &name, req, upgrade_requested).await,
            UpstreamProto::H2 => send_h2(ctx, &up, &name, req).await.map(|r| (r, None)),
        }
    };
    // The response timeout starts once the request is sent whole.
    tokio::pin!(exchange);
    let sent_at = async {
        if let Some((_, sent)) = &watch {
            sent.cancelled().await;
        }
        tokio::time::sleep(settings.response_timeout).await;
    };
    let result = tokio::select! {
        r = &mut exchange => r,
        _ = sent_at => Err(GatewayError::ServiceTimeout),
        _ = up.kill.cancelled() => Err(GatewayError::ClientGone(name.clone())),
    };
    let (mut resp, give_back) = match result {
        Ok(r) => r,
        // The visitor's body failed the exchange: say so, not "bad gateway".
        Err(e) => return Err(watch.and_then(|(failed, _)| failed.take()).unwrap_or(e)),
    };
    let info =
        rules::check_response_map(resp.status().as_u16(), resp.version() == Version::HTTP_10, is_head, resp.headers())
            .map_err(|r| GatewayError::ServiceMalformed(r.reason))?;

    if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        let Some(visitor_upgrade) = upgrade.on.take_if(|_| upgrade_requested) else {
            return Err(GatewayError::ServiceMalformed("101 without an upgrade request"));
        };
        upgrade.upgraded = true;
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        // The upgraded connection is in flight until it ends: shutdown
        // waits for it for the grace period, and it keeps its slot under
        // the listener's caps.
        let ends = Ends {
            up: up.clone(),
            kill: ctx.life.kill.clone(),
            activity: conn.activity.clone(),
            idle: settings.idle_timeout,
            _slot: ctx.slot.clone(),
        };
        ctx.life.tracker.spawn(splice(visitor_upgrade, upstream_upgrade, ends).in_current_span());
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, empty()));
    }
    rules::strip_response(resp.headers_mut(), info.framing);
    let give_back = give_back.filter(|_| info.reusable);
    Ok(resp.map(|body| ServiceBody::new(body, settings.response_timeout, give_back).boxed_unsync()))
}

/// What failed a request's body on the visitor's side, if anything did.
#[derive(Default)]
struct Failure(Mutex<Option<GatewayError>>);

impl Failure {
    fn set(&self, e: GatewayError) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn take(&self) -> Option<GatewayError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A visitor's request body on its way to the service: bounded in time,
/// its failures told apart from the service's, and `sent` cancelled at its
/// end.
struct VisitorBody {
    inner: Incoming,
    /// When the body must have come whole, and the timer for it (made the
    /// first time the body keeps the sender waiting).
    deadline: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    failed: Arc<Failure>,
    guard: Option<Arc<GuardShared>>,
    sent: CancellationToken,
}

impl VisitorBody {
    fn new(
        inner: Incoming,
        timeout: Duration,
        failed: Arc<Failure>,
        guard: Option<Arc<GuardShared>>,
        sent: CancellationToken,
    ) -> VisitorBody {
        let deadline = (timeout != Duration::MAX).then(|| tokio::time::Instant::now() + timeout);
        VisitorBody { inner, deadline, timer: None, failed, guard, sent }
    }

    fn fail(&mut self, e: GatewayError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let msg = e.to_string();
        self.failed.set(e);
        self.sent.cancel();
        Poll::Ready(Some(Err(msg.into())))
    }
}

impl hyper::body::Body for VisitorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.sent.cancel();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(f))) => {
                if self.inner.is_end_stream() {
                    self.sent.cancel();
                }
                let f = match f.into_trailers() {
                    Ok(mut trailers) => {
                        let managed: Vec<_> =
                            trailers.keys().filter(|n| !rules::forwards_trailer(n.as_str())).cloned().collect();
                        for n in managed {
                            trailers.remove(n);
                        }
                        Frame::trailers(trailers)
                    }
                    Err(f) => f,
                };
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                let rejected = self.guard.as_ref().and_then(|g| g.take_body_rejection());
                match rejected {
                    Some(r) => self.fail(GatewayError::bad_request(r)),
                    None => self.fail(GatewayError::VisitorIo(e.to_string())),
                }
            }
            Poll::Pending => {
                let Some(deadline) = self.deadline else { return Poll::Pending };
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => self.fail(GatewayError::VisitorTimeout("request body")),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads up to [`PREFETCH`] of the body: a body that ends there is sent
/// whole (with its trailers); a longer one streams on from where the read
/// stopped.
async fn prefetch(mut body: VisitorBody, failed: &Failure) -> Result<Body, GatewayError> {
    let mut data = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(Prefetched { data: Some(data.freeze()), trailers: None, rest: None }.boxed_unsync()),
            Some(Err(e)) => return Err(failed.take().unwrap_or(GatewayError::VisitorIo(e.to_string()))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    data.extend_from_slice(&d);
                    if data.len() > PREFETCH && !body.is_end_stream() {
                        let rest = Some(body);
                        return Ok(Prefetched { data: Some(data.freeze()), trailers: None, rest }.boxed_unsync());
                    }
                }
                Err(f) => {
                    let trailers = f.into_trailers().ok();
                    return Ok(Prefetched { data: Some(data.freeze()), trailers, rest: None }.boxed_unsync());
                }
            },
        }
    }
}

/// A body read ahead, then the rest of it.
struct Prefetched {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<VisitorBody>,
}

impl hyper::body::Body for Prefetched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(rest) = &mut self.rest {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Ready(None) => self.rest = None,
                other => return other,
            }
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(|d| d.is_empty()) && self.rest.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.rest, &self.trailers) {
            (d, None, None) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

/// A service's response body on its way to the visitor: a pause longer
/// than the response timeout fails it; at its end, the connection it came
/// on goes back to the pool.
struct ServiceBody {
    inner: Incoming,
    stall: Stall,
    give_back: Option<GiveBack>,
}

impl ServiceBody {
    fn new(inner: Incoming, timeout: Duration, give_back: Option<GiveBack>) -> ServiceBody {
        ServiceBody { inner, stall: Stall::new(timeout), give_back }
    }

    fn finish(&mut self) {
        if let Some(b) = self.give_back.take() {
            b.pool.put_h1(&b.up, b.sender);
        }
    }
}

impl hyper::body::Body for ServiceBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                if self.stall.poll_waiting(cx).is_ready() {
                    return Poll::Ready(Some(Err(GatewayError::ServiceTimeout.to_string().into())));
                }
                Poll::Pending
            }
            Poll::Ready(r) => {
                self.stall.moved();
                match &r {
                    None => self.finish(),
                    Some(Ok(_)) if self.inner.is_end_stream() => self.finish(),
                    _ => {}
                }
                Poll::Ready(r.map(|f| f.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ServiceBody {
    fn drop(&mut self) {
        // Bodiless responses (HEAD, 204, 304) may never be polled; a body
        // dropped half-read leaves its connection unusable (hyper closes it).
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

/// A connection to return to the pool when its response has been read.
struct GiveBack {
    pool: Arc<crate::pool::Pool>,
    up: Upstream,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

fn hyper_failure(e: hyper::Error) -> GatewayError {
    debug!(error = %e, "the client's service failed");
    match std::error::Error::source(&e) {
        Some(s) => GatewayError::ServiceFailed(format!("{e}: {s}")),
        None => GatewayError::ServiceFailed(e.to_string()),
    }
}

/// A new HTTP/1.1 connection to the client's service.
async fn connect_h1(
    ctx: &Ctx,
    up: &Upstream,
    name: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, GatewayError> {
    let stream = open_upstream(up, StreamProtocol::Tcp, ctx.peer, name).await?;
    // A service that stops reading the request fails it, as one that
    // stops answering does.
    let io = TokioIo::new(TimedIo::new(stream, ctx.settings.response_timeout));
    let (sender, c) = hyper::client::conn::http1::handshake(io).await.map_err(hyper_failure)?;
    spawn_upstream(c.with_upgrades(), up.kill.clone());
    Ok(sender)
}

/// Sends a request over HTTP/1.1: on a fresh connection for upgrades, else
/// on an idle pooled one (a new one if there is none, or if the pooled one
/// closed before the request went out). The connection comes back with
/// the response, to return to the pool once the body has been read.
async fn send_h1(
    ctx: &Ctx,
    up: &Upstream,
    name: &str,
    req: Request<Body>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Option<GiveBack>), GatewayError> {
    if upgrade {
        let mut sender = connect_h1(ctx, up, name).await?;
        return sender.send_request(req).await.map(|r| (r, None)).map_err(hyper_failure);
    }
    let pool = &ctx.settings.pool;
    let mut req = req;
    let mut sender = loop {
        let Some(mut sender) = pool.take_h1(up) else {
            break connect_h1(ctx, up, name).await?;
        };
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, Some(GiveBack { pool: pool.clone(), up: up.clone(), sender }))),
            Err(mut e) => match e.take_message() {
                // Not sent: the pooled connection had closed; try another.
                Some(r) => req = r,
                None => return Err(hyper_failure(e.into_error())),
            },
        }
    };
    let resp = sender.send_request(req).await.map_err(hyper_failure)?;
    Ok((resp, Some(GiveBack { pool: pool.clone(), up: up.clone(), sender })))
}

/// Sends a request over the route's shared HTTP/2 connection, making it
/// first if there is none (or it closed).
async fn send_h2(ctx: &Ctx, up: &Upstream, name: &str, req: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
    let pool = &ctx.settings.pool;
    let mut req = req;
    if let Some(mut sender) = pool.h2(up) {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(r) => req = r,
                None => return Err(hyper_failure(e.into_error())),
            },
        }
    }
    let stream = open_upstream(up, StreamProtocol::Tcp, ctx.peer, name).await?;
    let io = TokioIo::new(TimedIo::new(stream, ctx.settings.response_timeout));
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.adaptive_window(true);
    let (mut sender, c) = b.handshake(io).await.map_err(hyper_failure)?;
    spawn_upstream(c, up.kill.clone());
    pool.put_h2(up, sender.clone());
    sender.send_request(req).await.map_err(hyper_failure)
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

/// What ends an upgraded connection, and what it holds meanwhile.
struct Ends {
    /// Its session (gone: the connection goes).
    up: Upstream,
    /// The server's end of the grace period.
    kill: CancellationToken,
    /// The visitor's traffic, both ways (the upgraded connection's too).
    activity: Arc<Activity>,
    /// How long it may stay without traffic.
    idle: Duration,
    _slot: Option<Arc<crate::limits::Admitted>>,
}

/// Copies both ways between an upgraded visitor connection and the
/// upgraded connection to the client's service, until both end, nothing
/// moves for the idle timeout, the session is gone or the server's grace
/// period is over.
async fn splice(visitor: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, ends: Ends) {
    let (v, u) = match tokio::try_join!(visitor, upstream) {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut v, mut u) = (TokioIo::new(v), TokioIo::new(u));
    let idle = async {
        loop {
            let left = ends.idle.saturating_sub(ends.activity.idle_for());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut v, &mut u) => match r {
            Ok((up_bytes, down_bytes)) => debug!(up = up_bytes, down = down_bytes, "upgraded connection closed"),
            Err(e) => debug!(error = %e, "upgraded connection ended with an error"),
        },
        _ = idle => debug!("upgraded connection idle; closing it"),
        _ = ends.up.kill.cancelled() => debug!("session closed; dropping upgraded connection"),
        _ = ends.kill.cancelled() => debug!("server stopped; dropping upgraded connection"),
    }
}
