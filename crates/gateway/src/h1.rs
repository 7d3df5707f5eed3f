//! The direct HTTP/1.1 path: most keep-alive traffic through the `http` and
//! `https` gateways is plain requests with small or no bodies, and hyper's
//! server + client pair costs more CPU per such request than the relaying
//! itself (two dispatchers, a header map built and re-encoded twice, a task
//! hand-over to the upstream connection and back). Here the visitor's task
//! parses the head once, writes it to a pooled stream with the hop-by-hop
//! headers dropped and the forwarding headers added, and copies the
//! response through by its framing.
//!
//! Anything this path does not take — Upgrade, `Expect`, chunked or large
//! request bodies, HTTP/1.0, gRPC, absolute-form targets, ACME challenges,
//! unknown or departed hosts, heads it cannot parse — is handed to hyper
//! with the bytes read so far, and hyper serves the connection from there
//! on (so every error page and edge case has one implementation).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use hyper::StatusCode;
use opennotr_plugin::{CancellationToken, TunnelStream};
use opennotr_transport::mux::MuxStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use crate::serve::{route_name, Page, PoolKey, Settings};
use crate::{Gateway, Lookup, Scheme, Upstream};

/// Most headers a request may have here (more: hyper's turn, up to its 100).
const MAX_HEADERS: usize = 64;
/// Most headers accepted in a response (hyper's client limit).
const MAX_RESPONSE_HEADERS: usize = 100;
/// Longest request head read here; a longer one goes to hyper, which
/// accepts up to its own limit.
const MAX_REQUEST_HEAD: usize = 32 * 1024;
/// Longest response head accepted from a client's service.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest request body taken here (it is read whole, then sent with the
/// head); larger and chunked bodies stream through hyper, which reads the
/// response while it still sends.
const MAX_BODY: usize = 64 * 1024;

/// A stream that first yields `prefix` (bytes already read from it): how a
/// connection is handed over with what was read of it.
pub(crate) struct Replay<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Replay<S> {
    pub(crate) fn new(prefix: impl Into<BytesMut>, inner: S) -> Replay<S> {
        Replay { prefix: prefix.into(), inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// A request this path proxies.
struct Planned {
    head_len: usize,
    body_len: usize,
    /// The visitor asked to close after this request.
    close: bool,
    /// A HEAD request: the response has no body, whatever it says.
    head: bool,
    /// Safe to send again on a fresh connection if a pooled one turns out
    /// closed before any response byte (the keep-alive race).
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
    Proxy(Planned),
}

/// Serves requests on `visitor` until it closes, times out or the gateway
/// shuts down (`None`), or until a request this path does not take: then
/// the connection, with the bytes read of it, is returned for hyper.
pub(crate) async fn serve<S>(
    mut visitor: S,
    peer: SocketAddr,
    gateway: &Gateway,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Option<Replay<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ip = peer.ip().to_canonical().to_string();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // The head (and body) for the service, then the head for the visitor.
    let mut out = Vec::with_capacity(4 * 1024);
    let mut ubuf = BytesMut::with_capacity(16 * 1024);
    // The first head is due within the header timeout of the accept (as
    // nginx's client_header_timeout); later ones within it of their first
    // byte, after an idle wait.
    let mut deadline = Instant::now() + settings.header_timeout;
    loop {
        if buf.is_empty() && !wait_for_request(&mut visitor, &mut buf, settings, shutdown, &mut deadline).await {
            return None;
        }
        let planned = loop {
            match plan(&buf, &mut out, &ip, gateway, settings) {
                Plan::Proxy(p) => break p,
                Plan::Handoff => return Some(Replay::new(buf, visitor)),
                Plan::Partial if buf.len() >= MAX_REQUEST_HEAD => return Some(Replay::new(buf, visitor)),
                Plan::Partial => {}
            }
            match tokio::time::timeout_at(deadline, read_more(&mut visitor, &mut buf)).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(_) => {
                    debug!("request head not complete within the header timeout; closing");
                    return None;
                }
            }
        };
        buf.advance(planned.head_len);
        while buf.len() < planned.body_len {
            match tokio::time::timeout(settings.idle_timeout, read_more(&mut visitor, &mut buf)).await {
                Ok(true) => {}
                _ => return None,
            }
        }
        out.extend_from_slice(&buf[..planned.body_len]);
        buf.advance(planned.body_len);

        let mut answered = false;
        let result = tokio::select! {
            r = exchange(&mut visitor, peer, &planned, &mut out, &mut ubuf, settings, shutdown, &mut answered) => r,
            _ = planned.upstream.kill.cancelled() => {
                Err(Page::unavailable(format!("client not connected: {}", planned.name)))
            }
        };
        let (status, keep) = match result {
            Ok(done) => done,
            Err(_) if answered => {
                // Part of a response went out: the visitor cannot be told.
                gateway.count_request(settings.scheme, StatusCode::BAD_GATEWAY.as_u16());
                return None;
            }
            Err(page) => {
                let keep = !planned.close && !shutdown.is_cancelled();
                out.clear();
                page.write_http1(&mut out, keep);
                if visitor.write_all(&out).await.is_err() || visitor.flush().await.is_err() {
                    return None;
                }
                (page.status.as_u16(), keep)
            }
        };
        gateway.count_request(settings.scheme, status);
        if !keep {
            let _ = visitor.shutdown().await;
            return None;
        }
        deadline = Instant::now() + settings.header_timeout;
    }
}

/// Waits, up to the idle timeout, for the first byte of the next request.
async fn wait_for_request<S: AsyncRead + Unpin>(
    visitor: &mut S,
    buf: &mut BytesMut,
    settings: &Settings,
    shutdown: &CancellationToken,
    deadline: &mut Instant,
) -> bool {
    tokio::select! {
        more = read_more(visitor, buf) => {
            *deadline = Instant::now() + settings.header_timeout;
            more
        }
        _ = tokio::time::sleep(settings.idle_timeout) => {
            debug!("visitor connection idle; closing it");
            false
        }
        _ = shutdown.cancelled() => false,
    }
}

/// Reads what is there into `buf`; false at the end or on an error.
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> bool {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8 * 1024);
    }
    matches!(s.read_buf(buf).await, Ok(n) if n > 0)
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Headers that concern one hop only (RFC 9110 §7.6.1), never forwarded as
/// they are; `TE: trailers` is put back (gRPC needs it end to end).
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "upgrade"]
        .iter()
        .any(|h| eq(name, h))
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(v).unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Decides what to do with the request at the start of `buf` and, if it is
/// proxied here, writes its head for the service into `out`.
fn plan(buf: &[u8], out: &mut Vec<u8>, ip: &str, gateway: &Gateway, settings: &Settings) -> Plan {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Plan::Partial,
        Err(_) => return Plan::Handoff,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Plan::Handoff;
    };
    if !path.starts_with('/') || path.starts_with("/.well-known/acme-challenge/") || method == "CONNECT" {
        return Plan::Handoff;
    }
    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    let mut te_trailers = false;
    let mut named = [""; 8];
    let mut n_named = 0;
    for h in req.headers.iter() {
        let n = h.name;
        if eq(n, "host") {
            if host.is_some() {
                return Plan::Handoff;
            }
            host = std::str::from_utf8(h.value).ok();
        } else if eq(n, "content-length") {
            let len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            match (body_len, len) {
                (None, Some(len)) if len <= MAX_BODY => body_len = Some(len),
                _ => return Plan::Handoff,
            }
        } else if eq(n, "transfer-encoding") || eq(n, "upgrade") || eq(n, "expect") {
            return Plan::Handoff;
        } else if eq(n, "content-type") {
            if h.value.get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")) {
                return Plan::Handoff;
            }
        } else if eq(n, "te") {
            te_trailers |= tokens(h.value).any(|t| eq(t, "trailers"));
        } else if eq(n, "connection") {
            for t in tokens(h.value) {
                if eq(t, "close") {
                    close = true;
                } else if eq(t, "upgrade") || n_named == named.len() {
                    return Plan::Handoff;
                } else if !eq(t, "keep-alive") {
                    named[n_named] = t;
                    n_named += 1;
                }
            }
        }
    }
    let Some(host) = host.filter(|h| !h.is_empty()) else { return Plan::Handoff };
    let name = route_name(host);
    let Lookup::Found(upstream) = gateway.lookup(settings.scheme, &name, settings.wildcard) else {
        return Plan::Handoff;
    };

    out.clear();
    for part in [method, " ", path, " HTTP/1.1\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    for h in req.headers.iter() {
        let n = h.name;
        if hop_by_hop(n)
            || eq(n, "x-forwarded-for")
            || eq(n, "x-forwarded-proto")
            || eq(n, "x-forwarded-host")
            || eq(n, "x-real-ip")
            || named[..n_named].iter().any(|t| eq(n, t))
        {
            continue;
        }
        for part in [n.as_bytes(), b": ", h.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    // Earlier hops' addresses first, in order, then this visitor's.
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in req.headers.iter().filter(|h| eq(h.name, "x-forwarded-for")) {
        out.extend_from_slice(h.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if te_trailers {
        out.extend_from_slice(b"TE: trailers\r\n");
    }
    let proto: &[u8] = if settings.scheme == Scheme::Https { b"https" } else { b"http" };
    for part in [b"X-Forwarded-Proto: ", proto, b"\r\nX-Forwarded-Host: ", host.as_bytes(), b"\r\nX-Real-IP: "] {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Plan::Proxy(Planned {
        head_len,
        body_len: body_len.unwrap_or(0),
        close,
        head: method == "HEAD",
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
        name,
        upstream,
    })
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the connection's end (the visitor's connection must end too).
    Close,
}

/// What a response head said, beyond what is copied.
struct ResponseHead {
    len: usize,
    status: u16,
    framing: Framing,
    /// The service keeps its connection open after this response.
    reusable: bool,
}

/// Sends the planned request (in `out`) on a pooled or new stream and
/// copies the response to the visitor. Ok: the status and whether the
/// visitor's connection stays open; Err before `answered`: the error page.
#[allow(clippy::too_many_arguments)]
async fn exchange<S: AsyncWrite + Unpin>(
    visitor: &mut S,
    peer: SocketAddr,
    req: &Planned,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    settings: &Settings,
    shutdown: &CancellationToken,
    answered: &mut bool,
) -> Result<(u16, bool), Page> {
    let up = &req.upstream;
    let key = PoolKey::direct(up);
    let pool = &settings.pool;
    let (mut stream, head) = loop {
        let (mut stream, pooled) = match pool.take_direct(&key, &up.kill) {
            Some(s) => (s, true),
            None => (pool.upstream(&key, up, peer, &req.name).await?, false),
        };
        ubuf.clear();
        let sent = async { stream.write_all(out).await.and(stream.flush().await) }.await;
        let head = match sent {
            Ok(()) => read_response_head(&mut stream, ubuf, visitor, req.head, answered).await,
            Err(e) => Err(HeadError::Io(e)),
        };
        match head {
            Ok(h) => break (stream, h),
            // The keep-alive race: the service closed the pooled connection
            // as the request went out; nothing of it was answered.
            Err(HeadError::Io(_)) if pooled && ubuf.is_empty() && !*answered && req.idempotent => continue,
            Err(e) => {
                debug!(error = %e, "the client's service failed");
                return Err(Page::bad_gateway(e));
            }
        }
    };

    let keep = !req.close && head.framing != Framing::Close && !shutdown.is_cancelled();
    out.clear();
    response_head(&ubuf[..head.len], out, head.framing, keep);
    ubuf.advance(head.len);
    *answered = true;
    let complete = copy_body(&mut stream, ubuf, visitor, out, head.framing).await;
    if complete && head.reusable && ubuf.is_empty() {
        pool.put_direct(key, &up.kill, stream);
    }
    if complete || head.framing == Framing::Close {
        Ok((head.status, keep && complete))
    } else {
        Err(Page::bad_gateway("the response ended early"))
    }
}

#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("invalid response head: {0}")]
    Invalid(&'static str),
}

/// Reads the service's response head into `ubuf`; informational (1xx)
/// responses are passed on to the visitor as they come.
async fn read_response_head<U, S>(
    stream: &mut U,
    ubuf: &mut BytesMut,
    visitor: &mut S,
    head_request: bool,
    answered: &mut bool,
) -> Result<ResponseHead, HeadError>
where
    U: AsyncRead + Unpin,
    S: AsyncWrite + Unpin,
{
    loop {
        let parsed = parse_response(ubuf, head_request)?;
        match parsed {
            Some(h) if (100..200).contains(&h.status) => {
                if h.status == 101 {
                    return Err(HeadError::Invalid("101 without an upgrade request"));
                }
                *answered = true;
                visitor.write_all(&ubuf[..h.len]).await.map_err(HeadError::Io)?;
                ubuf.advance(h.len);
                continue;
            }
            Some(h) => return Ok(h),
            None if ubuf.len() >= MAX_RESPONSE_HEAD => return Err(HeadError::Invalid("too long")),
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

fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Invalid("unparsable")),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = !http11;
    for h in resp.headers.iter() {
        if eq(h.name, "content-length") {
            let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            match (length, v) {
                (_, None) => return Err(HeadError::Invalid("bad Content-Length")),
                (Some(a), Some(b)) if a != b => return Err(HeadError::Invalid("conflicting Content-Length")),
                (_, v) => length = v,
            }
        } else if eq(h.name, "transfer-encoding") {
            chunked = Some(tokens(h.value).last().is_some_and(|t| eq(t, "chunked")));
        } else if eq(h.name, "connection") {
            for t in tokens(h.value) {
                if eq(t, "close") {
                    close = true;
                } else if eq(t, "keep-alive") && !http11 {
                    close = false;
                }
            }
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    Ok(Some(ResponseHead { len, status, framing, reusable: !close && framing != Framing::Close }))
}

/// The head for the visitor: the service's status and headers, less the
/// hop-by-hop ones, as HTTP/1.1.
fn response_head(raw: &[u8], out: &mut Vec<u8>, framing: Framing, keep: bool) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    // Parsed once already: this cannot fail.
    let _ = resp.parse(raw);
    let mut named = [""; 8];
    let mut n_named = 0;
    for h in resp.headers.iter().filter(|h| eq(h.name, "connection")) {
        for t in tokens(h.value) {
            if n_named < named.len() {
                named[n_named] = t;
                n_named += 1;
            }
        }
    }
    let code = resp.code.unwrap_or(502).to_string();
    for part in [b"HTTP/1.1 ", code.as_bytes(), b" ", resp.reason.unwrap_or("").as_bytes(), b"\r\n"] {
        out.extend_from_slice(part);
    }
    for h in resp.headers.iter() {
        let n = h.name;
        // Transfer-Encoding stays with a chunked body, which is copied as
        // is; a Content-Length beside it is wrong and goes (RFC 9112 §6.3).
        if hop_by_hop(n)
            || (eq(n, "transfer-encoding") && framing != Framing::Chunked)
            || (eq(n, "content-length") && framing == Framing::Chunked)
            || named[..n_named].iter().any(|t| eq(n, t))
        {
            continue;
        }
        for part in [n.as_bytes(), b": ", h.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Copies the response body from the service to the visitor by its
/// framing, `out` (the head) first; what was read past the body stays in
/// `ubuf`. True if the body came whole.
async fn copy_body<U, S>(
    stream: &mut U,
    ubuf: &mut BytesMut,
    visitor: &mut S,
    out: &mut Vec<u8>,
    framing: Framing,
) -> bool
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
                Err(()) => return false,
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
            return false;
        }
        ubuf.advance(take);
        if done {
            return true;
        }
        // Large bodies move in reads (and visitor writes) of up to 64 KiB.
        if ubuf.capacity() - ubuf.len() < 16 * 1024 {
            ubuf.reserve(64 * 1024);
        }
        match stream.read_buf(ubuf).await {
            Ok(0) => return framing == Framing::Close,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Finds the end of a chunked body in the bytes that pass (the body itself
/// is copied unchanged: sizes, extensions, trailers).
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk's size.
    #[default]
    Size,
    /// After the size: extensions up to the line's end.
    SizeLine,
    /// The chunk's data (`size` bytes left).
    Data,
    /// The CR LF after a chunk's data.
    DataEnd,
    /// The start of a trailer line (an empty one ends the body).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The LF of the final empty line.
    Last,
}

impl Chunked {
    /// Consumes `buf`: `Some(n)` if the body ends after its first `n` bytes.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.size = self.size.checked_mul(16).and_then(|s| s.checked_add(u64::from(d))).ok_or(())?;
                    }
                    None if b == b';' || b == b' ' || b == b'\t' || b == b'\r' => self.state = ChunkState::SizeLine,
                    None if b == b'\n' => self.end_size_line(),
                    None => return Err(()),
                },
                ChunkState::SizeLine => {
                    if b == b'\n' {
                        self.end_size_line();
                    }
                }
                ChunkState::Data => {
                    let n = self.size.min((buf.len() - i) as u64);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    continue;
                }
                ChunkState::DataEnd => match b {
                    b'\r' => {}
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(()),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::Last,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::Trailer => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::Last => return if b == b'\n' { Ok(Some(i + 1)) } else { Err(()) },
            }
            i += 1;
        }
        Ok(None)
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
    }
}

/// A stream to a client's service: on the route's multiplexed connection,
/// or a tunnel stream of its own (a client that cannot multiplex).
pub(crate) enum UpStream {
    Plain(TunnelStream),
    Muxed(MuxStream),
}

impl UpStream {
    /// Fit for another exchange: open, and nothing unexpected to read.
    pub(crate) fn is_reusable(&mut self) -> bool {
        match self {
            UpStream::Plain(s) => {
                // No end, no bytes: a read would wait.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut b = [0u8; 1];
                let mut rb = ReadBuf::new(&mut b);
                matches!(Pin::new(s).poll_read(&mut cx, &mut rb), Poll::Pending)
            }
            UpStream::Muxed(s) => s.is_reusable(),
        }
    }
}

impl AsyncRead for UpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Muxed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Muxed(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Muxed(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Muxed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(pieces: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut c = Chunked::default();
        let mut total = 0;
        for p in pieces {
            if let Some(n) = c.scan(p)? {
                return Ok(Some(total + n));
            }
            total += p.len();
        }
        Ok(None)
    }

    #[test]
    fn chunked_ends_are_found() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(scan_all(&[body]), Ok(Some(body.len() - 4)));
        // The same, byte by byte.
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan_all(&pieces), Ok(Some(body.len() - 4)));
        // Trailers.
        let t = b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nX-A: b\r\n\r\n";
        assert_eq!(scan_all(&[t]), Ok(Some(t.len())));
        // Not yet complete.
        assert_eq!(scan_all(&[b"5\r\nhel"]), Ok(None));
        assert_eq!(scan_all(&[b"0\r\n"]), Ok(None));
        // Broken framing.
        assert_eq!(scan_all(&[b"zz\r\n"]), Err(()));
        assert_eq!(scan_all(&[b"3\r\nabcX\r\n"]), Err(()));
        assert_eq!(scan_all(&[b"ffffffffffffffffff\r\n"]), Err(()));
    }

    #[test]
    fn response_framing() {
        let p = |s: &str, head| parse_response(s.as_bytes(), head).unwrap().unwrap();
        let h = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!((h.status, h.framing, h.reusable), (200, Framing::Length(5), true));
        let h = p("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Chunked);
        let h = p("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.reusable), (Framing::Close, false));
        let h = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let h = p("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Empty);
        let h = p("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!h.reusable);
        let h = p("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false);
        assert!(h.reusable);
        let h = p("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!h.reusable);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Len", false).unwrap().is_none());
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers() {
        let raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n\
                    Content-Length: 2\r\nX-Kept: yes\r\n\r\n";
        let mut out = Vec::new();
        response_head(raw, &mut out, Framing::Length(2), true);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\n");
        out.clear();
        response_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            &mut out,
            Framing::Chunked,
            false,
        );
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    }

    // What a client's service sends is input from the network: the parsers
    // must give an answer for any bytes, however they arrive.
    proptest::proptest! {
        #[test]
        fn chunked_scan_does_not_depend_on_how_bytes_arrive(
            // Mostly the bytes chunked framing is made of, so that many
            // inputs get past the first byte.
            bytes in proptest::collection::vec(proptest::sample::select(b"0123456789abcdefABCDEF\r\n\r\n; \tx=".to_vec()), 0..512),
            cuts in proptest::collection::vec(0usize..512, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&bytes[at..c]);
                at = c;
            }
            pieces.push(&bytes[at..]);
            proptest::prop_assert_eq!(scan_all(&pieces), scan_all(&[&bytes]));
        }

        #[test]
        fn any_chunked_body_ends_where_it_ends(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..300), 0..6),
            trailer in proptest::prelude::any::<bool>(),
            next in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(if trailer { b"0\r\nX-T: 1\r\n\r\n" as &[u8] } else { b"0\r\n\r\n" });
            let end = body.len();
            body.extend_from_slice(&next);
            proptest::prop_assert_eq!(scan_all(&[&body]), Ok(Some(end)));
            let bytewise: Vec<&[u8]> = body.chunks(1).collect();
            proptest::prop_assert_eq!(scan_all(&bytewise), Ok(Some(end)));
        }

        #[test]
        fn response_heads_never_panic(
            status in proptest::sample::select(vec!["HTTP/1.1 200 OK", "HTTP/1.0 204 No", "HTTP/1.1 304 X", "HTTP/2 200", "HTTP/1.1 99", "junk"]),
            headers in proptest::collection::vec(proptest::sample::select(vec![
                "Content-Length: 5", "Content-Length: x", "Content-Length: 99999999999999999999999",
                "Content-Length: 5, 5", "Transfer-Encoding: chunked", "Transfer-Encoding: gzip",
                "Connection: close", "Connection: keep-alive, X-A", "Keep-Alive: 1", "X-A: b", ": empty", "Bad Header",
            ]), 0..6),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32),
            head_request in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = format!("{status}\r\n{}\r\n\r\n", headers.join("\r\n")).into_bytes();
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend_from_slice(&noise);
            if let Ok(Some(h)) = parse_response(&bytes, head_request) {
                let mut out = Vec::new();
                response_head(&bytes, &mut out, h.framing, h.reusable);
                proptest::prop_assert!(out.ends_with(b"\r\n\r\n"));
            }
        }
    }
}
