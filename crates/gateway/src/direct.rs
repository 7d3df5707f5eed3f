//! The direct HTTP/1.1 path: most keep-alive traffic through the `http` and
//! `https` gateways is plain requests with small or no bodies, and hyper's
//! server + client pair costs more CPU per such request than the relaying
//! itself (two dispatchers, a header map built and re-encoded twice, a task
//! hand-over to the upstream connection and back). Here the visitor's task
//! parses the head once, checks it against the message rules
//! ([`crate::rules`]), writes it to a pooled stream as the rules rewrite it,
//! and copies the response through by the framing the rules give it.
//!
//! A request that breaks a rule is answered here (its status, then the
//! connection closes). A valid request this path does not take — an
//! upgrade, `Expect`, a chunked or larger body, HTTP/1.0, gRPC, an ACME
//! challenge, an unknown or departed host — is handed to hyper with the
//! bytes read so far, through the guard that holds hyper to the same rules
//! ([`crate::guard`]); hyper serves the connection from there on.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use crate::ctx::Ctx;
use crate::error::GatewayError;
use crate::io::{read_more, Replay, Stall, TimedIo};
use crate::route::{Lookup, Scheme, Upstream};
use crate::rules::{self, BodyFraming, Chunked, Framing, ResponseInfo, MAX_HEADERS, MAX_RESPONSE_HEAD};
use opennotr_plugin::Elsewhere;

/// Largest request body taken here (it is read whole, then sent with the
/// head); larger and chunked bodies stream through hyper, which reads the
/// response while it still sends.
const MAX_BODY: u64 = 64 * 1024;

/// A request this path proxies.
struct Planned {
    head_len: usize,
    body_len: usize,
    /// The visitor asked to close after this request.
    close: bool,
    /// A HEAD request: the response has no body, whatever it says.
    head: bool,
    idempotent: bool,
    /// The routed name, for error pages.
    name: String,
    upstream: Upstream,
}

enum Plan {
    /// The head is not complete yet.
    Partial,
    /// Not for this path: hyper serves the connection from here.
    Handoff,
    /// The first request names a domain another node serves: the
    /// connection goes there.
    Elsewhere(Arc<dyn Elsewhere>, String),
    Proxy(Planned),
    Refuse(GatewayError),
}

/// Where a connection goes from the direct path, with the bytes read of it.
pub(crate) enum Next<S> {
    /// To hyper, which serves it from its current request on.
    Hyper(Replay<TimedIo<S>>),
    /// To the node serving its first request's name ([`crate::elsewhere`]).
    Elsewhere(Replay<TimedIo<S>>, Arc<dyn Elsewhere>, String),
}

/// Serves requests on `visitor` until it closes, times out or the gateway
/// shuts down (`None`), or until a request this path does not take: then
/// the connection, with the bytes read of it, is returned for hyper (or,
/// for the first request, for another node).
pub(crate) async fn serve<S>(mut visitor: TimedIo<S>, ctx: &Ctx) -> Option<Next<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &ctx.settings;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // The head (and body) for the service, then the head for the visitor.
    let mut out = Vec::with_capacity(4 * 1024);
    let mut ubuf = BytesMut::with_capacity(16 * 1024);
    // The first request, from its first byte on, is due within the header
    // timeout of the accept (nginx's client_header_timeout); later ones
    // may wait the idle timeout for their first byte, then have the header
    // timeout from it.
    let mut deadline = Some(Instant::now() + settings.header_timeout);
    let mut first = true;
    loop {
        if buf.is_empty() {
            // An idle connection keeps small buffers, whatever the last
            // exchange needed.
            shrink(&mut buf, &mut out, &mut ubuf);
            if !wait_for_request(&mut visitor, &mut buf, ctx, deadline).await {
                return None;
            }
        }
        let deadline_at = deadline.unwrap_or_else(|| Instant::now() + settings.header_timeout);
        deadline = None;
        let planned = loop {
            match plan(&buf, &mut out, ctx, first) {
                Plan::Proxy(p) => break p,
                Plan::Handoff => return Some(Next::Hyper(Replay::new(buf, visitor))),
                Plan::Elsewhere(e, node) => return Some(Next::Elsewhere(Replay::new(buf, visitor), e, node)),
                Plan::Refuse(e) => {
                    refuse(&mut visitor, ctx, &e).await;
                    return None;
                }
                Plan::Partial => {}
            }
            // A head ends with a newline: bytes without one (a visitor
            // dripping them) are not worth parsing the head again for.
            loop {
                let before = buf.len();
                match tokio::time::timeout_at(deadline_at, read_more(&mut visitor, &mut buf, 4096)).await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(_) => {
                        debug!("request head not complete within the header timeout; closing");
                        return None;
                    }
                }
                if buf[before..].contains(&b'\n') || buf.len() >= rules::MAX_REQUEST_HEAD {
                    break;
                }
            }
        };
        first = false;
        buf.advance(planned.head_len);
        if planned.body_len > 0 {
            let body_deadline = Instant::now() + settings.body_timeout;
            while buf.len() < planned.body_len {
                match tokio::time::timeout_at(body_deadline, read_more(&mut visitor, &mut buf, 16 * 1024)).await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(_) => {
                        refuse(&mut visitor, ctx, &GatewayError::VisitorTimeout("request body")).await;
                        return None;
                    }
                }
            }
            out.extend_from_slice(&buf[..planned.body_len]);
            buf.advance(planned.body_len);
        }

        let mut answered = false;
        let result = tokio::select! {
            r = exchange(&mut visitor, ctx, &planned, &mut out, &mut ubuf, &mut answered) => r,
            _ = planned.upstream.kill.cancelled() => Err(GatewayError::ClientGone(planned.name.clone())),
        };
        let (status, keep) = match result {
            Ok(done) => done,
            Err(e) => {
                debug!(error = %e, origin = e.origin().name(), "request failed");
                ctx.gateway.count_error(&e);
                if answered {
                    // Part of a response went out: the visitor cannot be told.
                    ctx.gateway.count_request(settings.scheme, e.status().as_u16());
                    return None;
                }
                let keep = !planned.close && !e.closes() && !ctx.closing();
                out.clear();
                e.page().write_http1(&mut out, keep);
                if visitor.write_all(&out).await.is_err() || visitor.flush().await.is_err() {
                    return None;
                }
                (e.status().as_u16(), keep)
            }
        };
        ctx.gateway.count_request(settings.scheme, status);
        if !keep {
            let _ = visitor.shutdown().await;
            return None;
        }
    }
}

/// Gives back what an exchange grew the buffers to, once it is over.
fn shrink(buf: &mut BytesMut, out: &mut Vec<u8>, ubuf: &mut BytesMut) {
    if buf.capacity() > 16 * 1024 {
        *buf = BytesMut::with_capacity(8 * 1024);
    }
    if out.capacity() > 16 * 1024 {
        *out = Vec::with_capacity(4 * 1024);
    }
    if ubuf.is_empty() && ubuf.capacity() > 32 * 1024 {
        *ubuf = BytesMut::with_capacity(16 * 1024);
    }
}

/// Answers a request the gateway refuses, and closes: what the visitor
/// sent after it cannot be trusted to start where it seems to.
async fn refuse<S: AsyncWrite + Unpin>(visitor: &mut TimedIo<S>, ctx: &Ctx, e: &GatewayError) {
    debug!(error = %e, "request refused");
    ctx.gateway.count_error(e);
    ctx.gateway.count_request(ctx.settings.scheme, e.status().as_u16());
    let mut page = Vec::new();
    e.page().write_http1(&mut page, false);
    if visitor.write_all(&page).await.is_ok() {
        let _ = visitor.shutdown().await;
    }
}

/// Waits for the first byte of the next request: up to `deadline` (the
/// first request's), else up to the idle timeout; false if none comes, or
/// the connection is closing.
async fn wait_for_request<S: AsyncRead + Unpin>(
    visitor: &mut S,
    buf: &mut BytesMut,
    ctx: &Ctx,
    deadline: Option<Instant>,
) -> bool {
    if ctx.closing() {
        return false;
    }
    let limit = deadline.unwrap_or_else(|| Instant::now() + ctx.settings.idle_timeout);
    tokio::select! {
        more = read_more(visitor, buf, 4096) => more,
        _ = tokio::time::sleep_until(limit) => {
            debug!(first = deadline.is_some(), "no request on the visitor connection in time; closing it");
            false
        }
        _ = ctx.until_closing() => false,
    }
}

/// Decides what to do with the request at the start of `buf` (the
/// connection's `first`?) and, if it is proxied here, writes its head for
/// the service into `out`.
fn plan(buf: &[u8], out: &mut Vec<u8>, ctx: &Ctx, first: bool) -> Plan {
    let settings = &ctx.settings;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match rules::parse_request(buf, &mut req) {
        Ok(Some(n)) => n,
        Ok(None) => return Plan::Partial,
        Err(r) => return Plan::Refuse(GatewayError::bad_request(r)),
    };
    let info = match rules::check_request(&req) {
        Ok(info) => info,
        Err(r) => return Plan::Refuse(GatewayError::bad_request(r)),
    };
    // Only a valid request is carried, and only on the `http` port: the
    // TLS port decides by SNI before any request is read.
    if first && !ctx.carried && settings.scheme == Scheme::Http {
        if let Some((e, node)) = ctx.gateway.elsewhere(&[Scheme::Http], &info.route_name(), settings.wildcard) {
            return Plan::Elsewhere(e, node);
        }
    }
    let body_len = match info.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(n) if n <= MAX_BODY && !info.expect_continue => n as usize,
        _ => return Plan::Handoff,
    };
    if info.http10
        || info.upgrade.is_some()
        || info.grpc
        || (settings.scheme == Scheme::Http && info.path.starts_with("/.well-known/acme-challenge/"))
    {
        return Plan::Handoff;
    }
    let name = info.route_name();
    let Lookup::Found(upstream) = ctx.gateway.lookup(settings.scheme, &name, settings.wildcard) else {
        return Plan::Handoff;
    };
    if upstream.access.is_some() {
        // Access rules are checked on the hyper path only, one place.
        return Plan::Handoff;
    }
    rules::write_request_head(&info, req.headers, ctx.visitor(), out);
    Plan::Proxy(Planned {
        head_len,
        body_len,
        close: info.close,
        head: info.is_head(),
        idempotent: info.idempotent(),
        name,
        upstream,
    })
}

/// Sends the planned request (in `out`) on a pooled or new stream and
/// copies the response to the visitor. Ok: the status and whether the
/// visitor's connection stays open. `answered`: something went out to the
/// visitor (an error can no longer be told).
async fn exchange<S: AsyncWrite + Unpin>(
    visitor: &mut TimedIo<S>,
    ctx: &Ctx,
    req: &Planned,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    answered: &mut bool,
) -> Result<(u16, bool), GatewayError> {
    let settings = &ctx.settings;
    let up = &req.upstream;
    let pool = &settings.pool;
    let (mut stream, head) = loop {
        let (mut stream, pooled) = match pool.take_direct(up) {
            Some(s) => (s, true),
            None => (pool.upstream(up, ctx.peer, &req.name).await?, false),
        };
        ubuf.clear();
        // One deadline for the service to take the request and start its
        // answer (a service that stops reading the request fails it, as one
        // that stops answering does).
        let exchanged = tokio::time::timeout(settings.response_timeout, async {
            match stream.write_all(out).await.and(stream.flush().await) {
                Ok(()) => read_response_head(&mut stream, ubuf, visitor, req.head, answered).await,
                Err(e) => Err(HeadError::Io(e)),
            }
        })
        .await;
        let Ok(head) = exchanged else { return Err(GatewayError::ServiceTimeout) };
        match head {
            Ok(h) => break (stream, h),
            // The keep-alive race: the service closed the pooled connection
            // as the request went out; nothing of it was answered.
            Err(HeadError::Io(_)) if pooled && ubuf.is_empty() && !*answered && req.idempotent => continue,
            Err(HeadError::Io(e)) => return Err(GatewayError::ServiceFailed(e.to_string())),
            Err(HeadError::Invalid(r)) => return Err(GatewayError::ServiceMalformed(r)),
            Err(HeadError::Visitor(e)) => return Err(GatewayError::VisitorIo(e.to_string())),
        }
    };

    let keep = !req.close && head.info.framing != Framing::Close && !ctx.closing();
    let head_len = head.len;
    rules::write_response_head(&ubuf[..head_len], out, head.info.framing, keep);
    ubuf.advance(head_len);
    *answered = true;
    let complete = copy_body(&mut stream, ubuf, visitor, out, head.info.framing, settings.response_timeout).await?;
    if complete && head.info.reusable && ubuf.is_empty() {
        pool.put_direct(up, stream);
    }
    Ok((head.info.status, keep && complete))
}

#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0}")]
    Visitor(std::io::Error),
}

/// A response head read from the service.
struct Head {
    len: usize,
    info: ResponseInfo,
}

/// Reads the service's response head into `ubuf`; informational (1xx)
/// responses are passed on to the visitor as they come.
async fn read_response_head<U, S>(
    stream: &mut U,
    ubuf: &mut BytesMut,
    visitor: &mut S,
    head_request: bool,
    answered: &mut bool,
) -> Result<Head, HeadError>
where
    U: AsyncRead + Unpin,
    S: AsyncWrite + Unpin,
{
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(ubuf) {
                Ok(httparse::Status::Complete(len)) => rules::check_response(&resp, head_request, false)
                    .map(|info| Some((len, info)))
                    .map_err(|r| HeadError::Invalid(r.reason))?,
                Ok(httparse::Status::Partial) => None,
                Err(_) => return Err(HeadError::Invalid("unparsable response head")),
            }
        };
        match parsed {
            Some((len, info)) if (100..200).contains(&info.status) => {
                *answered = true;
                visitor.write_all(&ubuf[..len]).await.map_err(HeadError::Visitor)?;
                ubuf.advance(len);
                continue;
            }
            Some((len, info)) => return Ok(Head { len, info }),
            None if ubuf.len() >= MAX_RESPONSE_HEAD => return Err(HeadError::Invalid("response head too large")),
            None => {}
        }
        if ubuf.capacity() - ubuf.len() < 4096 {
            ubuf.reserve(16 * 1024);
        }
        match stream.read_buf(ubuf).await {
            Ok(0) if ubuf.is_empty() => {
                return Err(HeadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(HeadError::Invalid("the connection closed within the head")),
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Copies the response body from the service to the visitor by its
/// framing, `out` (the head) first; what was read past the body stays in
/// `ubuf`. Ok(true) if the body came whole; Ok(false) if either side went
/// away; Err if the service broke the framing or stalled.
async fn copy_body<U, S>(
    stream: &mut U,
    ubuf: &mut BytesMut,
    visitor: &mut S,
    out: &mut Vec<u8>,
    framing: Framing,
    response_timeout: std::time::Duration,
) -> Result<bool, GatewayError>
where
    U: AsyncRead + Unpin,
    S: AsyncWrite + Unpin,
{
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunks = Chunked::default();
    let mut head = Some(out);
    let mut stall = Stall::new(response_timeout);
    loop {
        let (take, done) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = left.min(ubuf.len() as u64);
                left -= take;
                (take as usize, left == 0)
            }
            Framing::Chunked => match chunks.scan(ubuf) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (ubuf.len(), false),
                Err(r) => return Err(GatewayError::ServiceMalformed(r.reason)),
            },
            Framing::Close => (ubuf.len(), false),
        };
        // The head goes out with the body's first bytes, in one write.
        let data = match head.take() {
            Some(out) => {
                out.extend_from_slice(&ubuf[..take]);
                &out[..]
            }
            None => &ubuf[..take],
        };
        if !data.is_empty() && (visitor.write_all(data).await.is_err() || visitor.flush().await.is_err()) {
            return Ok(false);
        }
        ubuf.advance(take);
        if done {
            return Ok(true);
        }
        // Large bodies move in reads (and visitor writes) of up to 64 KiB.
        if ubuf.capacity() - ubuf.len() < 16 * 1024 {
            ubuf.reserve(64 * 1024);
        }
        match stall.step(stream.read_buf(ubuf)).await {
            Ok(Ok(0)) => return Ok(framing == Framing::Close),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Ok(false),
            Err(_) => return Err(GatewayError::ServiceTimeout),
        }
    }
}
