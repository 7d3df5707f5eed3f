//! Visitor connections on a gateway port: admitted under the listener's
//! caps ([`crate::limits`]), served by the direct path and then, for what
//! it hands over (and for HTTP/2), by hyper; each a task of the server's,
//! so shutdown stops accepting, lets requests in flight finish for the
//! grace period, then cuts what is left.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opennotr_plugin::{CancellationToken, Lifecycle};
use opennotr_transport::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info_span, Instrument};

use crate::ctx::Ctx;
use crate::direct::Next;
use crate::error::GatewayError;
use crate::general::{handle, Conn};
use crate::guard::Guard;
use crate::io::{AckFiltered, Activity, Replay, TimedIo};
use crate::limits::{Admitted, ConnLimits, Refused};
use crate::route::Scheme;
use opennotr_plugin::{CarriedPort, Elsewhere};

/// What a refused connection on a plain HTTP port is told.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Accepts visitors on `listener` until `stop` or the server drains. Each
/// connection `limits` admits is served by `serve` (with its slot, which
/// whatever outlives the task keeps) in a task on the server's tracker,
/// dropped when the server's grace period is over; one it refuses is
/// closed at once (on a plain HTTP port, after a `503`).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: Arc<ConnLimits>,
    life: Lifecycle,
    stop: CancellationToken,
    label: &'static str,
    plain_http: bool,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Arc<Admitted>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = Acceptor::new(listener);
    loop {
        let next = tokio::select! {
            n = acceptor.next(&stop) => n,
            _ = life.draining.cancelled() => None,
        };
        let Some((visitor, peer)) = next else { break };
        let admitted = match limits.admit(peer.ip()) {
            Ok(a) => Arc::new(a),
            Err(why) => {
                let cap = match why {
                    Refused::Listener => "maxConnections",
                    Refused::Source => "maxConnectionsPerIp",
                };
                debug!(%peer, listen = %limits.listen, cap, "visitor connection refused");
                if plain_http {
                    let _ = visitor.try_write(BUSY);
                }
                continue;
            }
        };
        let kill = life.kill.clone();
        let served = serve(visitor, peer, admitted.clone());
        let span = info_span!("visitor", port = label, %peer);
        life.tracker.spawn(
            async move {
                let _admitted = admitted;
                tokio::select! {
                    _ = served => {}
                    _ = kill.cancelled() => debug!("server stopped; connection cut"),
                }
            }
            .instrument(span),
        );
    }
    debug!(listen = %limits.listen, "gateway listener closed");
}

/// How a visitor connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// HTTP/1: the direct path first (`http`, and `https` unless ALPN
    /// chose h2).
    Http1,
    /// HTTP/2, as ALPN chose.
    Http2,
    /// Either, told apart by the HTTP/2 preface (`h2c`).
    Detect,
}

/// Serves one visitor connection (plain, or already TLS-terminated for
/// `https`).
pub(crate) async fn serve_connection<S>(visitor: S, ctx: Ctx, start: Start)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TimedIo::new(visitor, ctx.settings.send_timeout);
    match start {
        Start::Http1 => match crate::direct::serve(io, &ctx).await {
            Some(Next::Hyper(rest)) => serve_http1(rest, &ctx).await,
            Some(Next::Elsewhere(rest, elsewhere, node)) => carry_http(rest, &*elsewhere, &node, &ctx).await,
            None => {}
        },
        Start::Http2 => serve_http2(Replay::new(bytes::BytesMut::new(), io), &ctx).await,
        Start::Detect => {
            let mut io = io;
            let mut first = bytes::BytesMut::new();
            let read = async {
                while first.len() < PREFACE.len() && PREFACE.starts_with(&first) {
                    if io.read_buf(&mut first).await.ok()? == 0 {
                        return None;
                    }
                }
                Some(())
            };
            let got = tokio::select! {
                r = tokio::time::timeout(ctx.settings.header_timeout, read) => r.ok().flatten(),
                _ = ctx.until_closing() => None,
            };
            if got.is_none() {
                debug!("no request within the header timeout; closing");
                return;
            }
            if first.starts_with(PREFACE) && !ctx.carried && ctx.gateway.has_elsewhere() {
                // A cluster node: the first request's name, in its first
                // HEADERS block, decides which node serves the connection.
                // Some clients send none before the server's SETTINGS: an
                // empty one goes first, and the client's ack of it is taken
                // out for the server that serves the connection.
                if io.write_all(&crate::h2peek::EMPTY_SETTINGS).await.is_err() || io.flush().await.is_err() {
                    return;
                }
                let decided = h2c_elsewhere(&mut io, &mut first, &ctx).await;
                let mut filter = crate::h2peek::AckFilter::new(PREFACE.len());
                let mut read = Vec::with_capacity(first.len());
                filter.feed(&first, &mut read);
                let rest = Replay::new(&read[..], io.map(|s| AckFiltered::new(s, filter)));
                let (elsewhere, node) = match decided {
                    H2cTo::Here => return serve_http2(rest, &ctx).await,
                    H2cTo::Close => return debug!("no request on the h2c connection; closing"),
                    H2cTo::Node(e, node) => (e, node),
                };
                let kill = ctx.life.kill.clone();
                let carried =
                    crate::elsewhere::carry(rest, &*elsewhere, &node, CarriedPort::H2c, ctx.peer, None, &kill);
                let ok = carried.await.is_ok();
                if !ok {
                    debug!(%node, "cannot carry the connection to its node; closing");
                }
                ctx.gateway.count_carried(ok);
                return;
            }
            let io = Replay::new(first.clone(), io);
            if first.starts_with(PREFACE) {
                serve_http2(io, &ctx).await;
            } else {
                serve_http1(io, &ctx).await;
            }
        }
    }
}

/// Carries a visitor's connection on the `http` port, its first request
/// read, to the node serving that request's name; a `502` if that node
/// cannot be reached.
async fn carry_http<S>(rest: Replay<TimedIo<S>>, elsewhere: &dyn Elsewhere, node: &str, ctx: &Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let reached = None;
    match crate::elsewhere::carry(rest, elsewhere, node, CarriedPort::Http, ctx.peer, reached, &ctx.life.kill).await {
        Ok(()) => ctx.gateway.count_carried(true),
        Err((mut rest, why)) => {
            ctx.gateway.count_carried(false);
            // Why is for the log: the visitor learns the node's name only.
            debug!(%node, error = %why, "cannot carry the connection");
            let e = GatewayError::NodeUnreachable(node.to_string());
            ctx.gateway.count_error(&e);
            ctx.gateway.count_request(ctx.settings.scheme, e.status().as_u16());
            let mut page = Vec::new();
            e.page().write_http1(&mut page, false);
            if rest.write_all(&page).await.is_ok() {
                let _ = rest.shutdown().await;
            }
        }
    }
}

/// Where an h2c connection goes, by its first request's name.
enum H2cTo {
    /// Served here.
    Here,
    /// Carried to another node.
    Node(std::sync::Arc<dyn Elsewhere>, String),
    /// Closed: gone, or no request within the idle timeout.
    Close,
}

/// Reads an h2c connection (its preface read into `first`) up to its first
/// header block, within [`crate::h2peek::MAX_SCAN`]: another node serving
/// that block's name, or here. A client may open a connection well before
/// its first request: it has the idle timeout, as hyper would give it,
/// and is closed after it (it was neither here's nor another node's to
/// serve). Every byte read stays in `first`, for whoever serves it.
async fn h2c_elsewhere<S>(io: &mut TimedIo<S>, first: &mut bytes::BytesMut, ctx: &Ctx) -> H2cTo
where
    S: AsyncRead + Unpin,
{
    let mut scanner = crate::h2peek::Scanner::default();
    let read = async {
        loop {
            match scanner.scan(&first[PREFACE.len()..]) {
                crate::h2peek::Scan::More => {}
                crate::h2peek::Scan::Name(name) => return Some(name),
                crate::h2peek::Scan::Unreadable => return Some(None),
            }
            if io.read_buf(first).await.ok()? == 0 {
                return None;
            }
        }
    };
    let name = tokio::select! {
        r = tokio::time::timeout(ctx.settings.idle_timeout, read) => r.ok().flatten(),
        _ = ctx.until_closing() => None,
    };
    match name {
        None => H2cTo::Close,
        Some(None) => H2cTo::Here,
        Some(Some(name)) => match ctx.gateway.elsewhere(&[Scheme::H2c], &name, ctx.settings.wildcard) {
            Some((e, node)) => H2cTo::Node(e, node),
            None => H2cTo::Here,
        },
    }
}

/// The start of every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's HTTP/1 server on the rest of a connection, through the guard.
pub(crate) async fn serve_http1<S>(mut io: Replay<TimedIo<S>>, ctx: &Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    activity.touch();
    io.inner_mut().track(activity.clone());
    let (guard, shared) = Guard::new(io, activity.clone());
    let conn =
        Arc::new(Conn { ctx: ctx.clone(), activity: activity.clone(), guard: Some(shared.clone()), handled: 0.into() });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(ctx.settings.header_timeout).keep_alive(true);
    let c = b.serve_connection(TokioIo::new(guard), service).with_upgrades();
    drive(c, |c| c.graceful_shutdown(), &activity, ctx).await;
    if let Some(r) = shared.head_rejection() {
        // Answered by the guard, after hyper's last response.
        let e = GatewayError::bad_request(r);
        ctx.gateway.count_error(&e);
        ctx.gateway.count_request(ctx.settings.scheme, e.status().as_u16());
    }
}

/// hyper's HTTP/2 server on a connection.
async fn serve_http2<S>(mut io: Replay<TimedIo<S>>, ctx: &Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    activity.touch();
    io.inner_mut().track(activity.clone());
    let conn = Arc::new(Conn { ctx: ctx.clone(), activity: activity.clone(), guard: None, handled: 0.into() });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new()).adaptive_window(true).max_concurrent_streams(256);
    let c = b.serve_connection(TokioIo::new(io), service);
    drive(c, |c| c.graceful_shutdown(), &activity, ctx).await;
}

/// Runs a visitor connection until it ends, is idle too long (no traffic
/// and no request in flight), or the gateway closes it: on shutdown or a
/// reload that replaced its plugin, gracefully (requests in flight finish),
/// when the server's grace period is over, at once.
async fn drive<C, E>(conn: C, mut graceful_shutdown: impl FnMut(Pin<&mut C>), activity: &Activity, ctx: &Ctx)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let idle = ctx.settings.idle_timeout;
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
            _ = ctx.until_closing(), if !closing => {
                graceful_shutdown(conn.as_mut());
                closing = true;
            }
            _ = tokio::time::sleep(wait), if !closing => {
                if activity.idle_for() >= idle && activity.in_flight() == 0 {
                    debug!("visitor connection idle; closing it");
                    graceful_shutdown(conn.as_mut());
                    closing = true;
                }
            }
            _ = ctx.life.kill.cancelled() => return,
        }
    }
}
