//! HTTP/1.1 message rules: which requests and responses the gateway takes,
//! where their bodies end, and how their heads are rewritten for the next
//! hop. No I/O. The direct path (`direct`), the guard in front of hyper
//! (`guard`) and the hyper path (`general`) all decide with these
//! functions, so they cannot disagree on where a message ends: a service
//! behind the gateway never sees bytes of one visitor's request as the
//! start of another's.
//!
//! The rules are RFC 9112's and RFC 9110's MUSTs, and where the RFCs leave
//! a choice, the strict one:
//! - `Content-Length` is 1*DIGIT (no sign, no list); repeated lines must be
//!   equal. `Transfer-Encoding` is `chunked` and nothing else (another
//!   coding: 501; a request with both: 400). The gateway never copies a
//!   framing field: it writes the framing of what it sends itself.
//! - Exactly one `Host` on HTTP/1.1, a valid `uri-host[:port]`; an
//!   absolute-form target names the host instead (RFC 9112 §3.2.2).
//! - `Connection` may not name `Host`, `Content-Length` or
//!   `Transfer-Encoding` (a proxy removes what it names: it would strip
//!   the framing the service reads).
//! - Heads: no obs-fold, no whitespace before a colon, no CR, LF or NUL in
//!   a value, no bare CR (httparse, with hyper's settings, enforces these;
//!   both paths parse with it), at most [`MAX_HEADERS`] fields and
//!   [`MAX_REQUEST_HEAD`] bytes.
//! - Chunked bodies ([`Chunked`]): sizes are hex digits without a prefix,
//!   overflow checked; extensions follow the grammar and are bounded;
//!   trailers are field lines under the same rules; every line ends in
//!   CRLF.
//!
//! A request that breaks a rule gets its status ([`Reject`]) and the
//! connection closes; nothing of it reaches the service. A response that
//! breaks one closes the connection to the service, which is never reused.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// Longest request head (request line and fields), like nginx's
/// `large_client_header_buffers` (4 × 8 KiB).
pub(crate) const MAX_REQUEST_HEAD: usize = 32 * 1024;
/// Longest request target.
pub(crate) const MAX_TARGET: usize = 8 * 1024;
/// Most fields in a head or a trailer section (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest response head accepted from a service.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (size and extensions).
pub(crate) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Longest trailer section.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// Most `Connection` options a request may name.
pub(crate) const MAX_CONNECTION_OPTIONS: usize = 16;
/// Longest `Host`.
const MAX_HOST: usize = 262;

/// Why a message is refused, and the status a request gets for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
}

const fn bad(reason: &'static str) -> Reject {
    Reject { status: 400, reason }
}

/// The gateway is not a forward proxy: `CONNECT`, on any version.
const CONNECT_REFUSED: Reject = Reject { status: 405, reason: "CONNECT is not served (this is not a forward proxy)" };

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason)
    }
}

pub(crate) fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The elements of a comma-separated list field, trimmed of OWS; empty
/// elements are skipped (RFC 9110 §5.6.1). `None` if the value is not
/// ASCII.
fn elements(v: &[u8]) -> Option<impl Iterator<Item = &str>> {
    let s = std::str::from_utf8(v).ok().filter(|s| s.is_ascii())?;
    Some(s.split(',').map(|t| t.trim_matches([' ', '\t'])).filter(|t| !t.is_empty()))
}

/// RFC 9110 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

// ---------------------------------------------------------------- requests

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (a request without `Content-Length` or `Transfer-Encoding`).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

/// A request that passed the rules, borrowing from its head.
#[derive(Debug)]
pub(crate) struct RequestInfo<'a> {
    pub(crate) method: &'a str,
    /// The target in origin form for the service (`/path?query`, or `*`).
    pub(crate) path: &'a str,
    /// The request said HTTP/1.0.
    pub(crate) http10: bool,
    /// The authority: `Host`, or the absolute-form target's.
    pub(crate) host: &'a str,
    /// The target was absolute-form: its authority replaces `Host`.
    pub(crate) absolute: bool,
    pub(crate) framing: BodyFraming,
    /// The visitor's connection ends after this exchange.
    pub(crate) close: bool,
    pub(crate) expect_continue: bool,
    /// `Upgrade`'s value, when `Connection: upgrade` asks for it (HTTP/1.1).
    pub(crate) upgrade: Option<&'a [u8]>,
    /// `TE: trailers`, which gRPC needs end to end.
    pub(crate) te_trailers: bool,
    /// `Content-Type: application/grpc…`.
    pub(crate) grpc: bool,
    named: [&'a str; MAX_CONNECTION_OPTIONS],
    n_named: usize,
}

impl<'a> RequestInfo<'a> {
    /// The fields `Connection` names (removed on the way).
    pub(crate) fn named(&self) -> &[&'a str] {
        &self.named[..self.n_named]
    }

    /// Whether a field of the visitor's request is sent on as it is. Hop
    /// by hop fields, those `Connection` names, the forwarding fields (the
    /// gateway writes its own), framing (written from [`BodyFraming`]) and
    /// `Expect` (the gateway answers it) are not; nor is `Host` when an
    /// absolute-form target named the host.
    pub(crate) fn forwards(&self, name: &str) -> bool {
        !(managed(name)
            || FRAMING.iter().any(|h| eq(name, h))
            || (self.absolute && eq(name, "host"))
            || self.named().iter().any(|t| eq(name, t)))
    }

    /// Whether the visitor's own `X-Forwarded-For` values go on (before
    /// its address): not when `Connection` named the field.
    fn keeps_forwarded_for(&self) -> bool {
        !self.named().iter().any(|t| eq(t, "x-forwarded-for"))
    }

    /// The name the request routes by: the host without port, lowercase,
    /// without a trailing dot.
    pub(crate) fn route_name(&self) -> String {
        route_name(self.host)
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Safe to send again on a fresh connection if a pooled one turns out
    /// closed before any response byte (the keep-alive race).
    pub(crate) fn idempotent(&self) -> bool {
        matches!(self.method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
    }
}

/// Fields that concern one hop only (RFC 9110 §7.6.1; `HTTP2-Settings`
/// belongs to the h2c upgrade, which is not passed on). `Trailer` is not
/// one: it names the trailer fields end to end (and hyper sends only the
/// trailers it names).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
    "http2-settings",
];
/// What the gateway says about the visitor, replacing what the visitor
/// said about itself (`X-Forwarded-For` is appended to, not replaced;
/// RFC 7239's `Forwarded` is dropped, as services that trust it would
/// take the visitor's word).
const FORWARDING: [&str; 5] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "forwarded"];
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];
/// What `Connection` may never remove.
const PROTECTED: [&str; 3] = ["host", "content-length", "transfer-encoding"];

/// A field whose name, with `_` read as `-`, is one the gateway manages
/// (framing, routing, hop-by-hop, forwarding): many services (CGI, WSGI,
/// PHP) read `Content_Length` as `Content-Length`, so such a field would
/// say to the service what the gateway never checked. Dropped, as nginx
/// drops every field with an underscore by default.
fn aliases_a_managed_field(name: &str) -> bool {
    if !name.contains('_') {
        return false;
    }
    let same = |h: &&str| {
        h.len() == name.len()
            && h.bytes().zip(name.bytes()).all(|(a, b)| a == if b == b'_' { b'-' } else { b.to_ascii_lowercase() })
    };
    PROTECTED.iter().chain(&HOP_BY_HOP).chain(&FORWARDING).chain(&["expect"]).any(same)
}

/// A field the gateway manages on every path, HTTP/1.1 and HTTP/2 alike:
/// hop-by-hop, forwarding, `Expect` (the gateway answers it), and their
/// underscore aliases. Never sent on as the visitor wrote it.
fn managed(name: &str) -> bool {
    HOP_BY_HOP.iter().chain(&FORWARDING).chain(&["expect"]).any(|h| eq(name, h)) || aliases_a_managed_field(name)
}

/// Whether a trailer field a visitor sent goes on: not one the gateway
/// manages, nor framing, routing or `Content-Type` (RFC 9110 §6.5.1:
/// trailers never stand in for such fields).
pub(crate) fn forwards_trailer(name: &str) -> bool {
    !(managed(name) || PROTECTED.iter().chain(&["content-type"]).any(|h| eq(name, h)))
}

/// Maps an httparse error on a request head to its answer.
fn request_parse_error(e: httparse::Error) -> Reject {
    match e {
        httparse::Error::TooManyHeaders => Reject { status: 431, reason: "too many header fields" },
        httparse::Error::Version => Reject { status: 505, reason: "only HTTP/1.0 and HTTP/1.1 are served" },
        httparse::Error::HeaderName => bad("malformed header field name (or whitespace before the colon, or obs-fold)"),
        httparse::Error::HeaderValue => bad("malformed header field value (CR, LF or NUL)"),
        httparse::Error::NewLine => bad("bare CR or malformed line ending"),
        httparse::Error::Token => bad("malformed request line"),
        _ => bad("malformed request head"),
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else its length. `headers` receives the fields.
pub(crate) fn parse_request<'b, 'h>(
    buf: &'b [u8],
    req: &mut httparse::Request<'h, 'b>,
) -> Result<Option<usize>, Reject> {
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST_HEAD => {
            Err(Reject { status: 431, reason: "request head too large" })
        }
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        // Still no end of the request line: the target is what is too long.
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD && !buf.contains(&b'\n') => {
            Err(Reject { status: 414, reason: "request target too long" })
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            Err(Reject { status: 431, reason: "request head too large" })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::Version) if !names_a_version(buf) => Err(bad("malformed request line")),
        Err(e) => Err(request_parse_error(e)),
    }
}

/// Whether the request line is well formed but for its version being one
/// not served (`HTTP/2.0`, `HTTP/1.2`): 505 then, else 400.
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(_), Some(_), Some(v), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    matches!(v, [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
}

/// Applies the rules to a parsed HTTP/1 request head.
pub(crate) fn check_request<'a>(req: &httparse::Request<'_, 'a>) -> Result<RequestInfo<'a>, Reject> {
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed request line"));
    };
    check(method, target, version == 0, req.headers.iter().map(|h| (h.name, h.value)))
}

/// The same rules over a request hyper parsed (HTTP/1): the fields of a
/// [`HeaderMap`] keep their order within one name, which is all the rules
/// look at.
pub(crate) fn check_parts<'a>(
    method: &'a str,
    target: &'a str,
    http10: bool,
    headers: &'a HeaderMap,
) -> Result<RequestInfo<'a>, Reject> {
    check(method, target, http10, headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

fn check<'a>(
    method: &'a str,
    target: &'a str,
    http10: bool,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<RequestInfo<'a>, Reject> {
    if method == "CONNECT" {
        return Err(CONNECT_REFUSED);
    }
    let mut info = RequestInfo {
        method,
        path: target,
        http10,
        host: "",
        absolute: false,
        framing: BodyFraming::None,
        close: http10,
        expect_continue: false,
        upgrade: None,
        te_trailers: false,
        grpc: false,
        named: [""; MAX_CONNECTION_OPTIONS],
        n_named: 0,
    };
    parse_target(&mut info, target)?;
    let mut hosts = 0;
    let mut framing = FramingFields::default();
    let mut upgrade_value = None;
    let mut upgrade_token = false;
    let mut keep_alive = false;
    for (name, value) in fields {
        if eq(name, "host") {
            hosts += 1;
            if hosts > 1 {
                return Err(bad("more than one Host"));
            }
            let host = std::str::from_utf8(value).map_err(|_| bad("malformed Host"))?;
            valid_host(host)?;
            if !info.absolute {
                info.host = host;
            }
        } else if framing.read(name, value, http10).map_err(bad)? {
            // Content-Length or Transfer-Encoding, read.
        } else if eq(name, "connection") {
            for option in elements(value).ok_or(bad("malformed Connection"))? {
                if !is_token(option) {
                    return Err(bad("malformed Connection"));
                }
                if PROTECTED.iter().any(|p| eq(option, p)) {
                    return Err(bad("Connection names a framing or routing field"));
                }
                if eq(option, "close") {
                    info.close = true;
                } else if eq(option, "keep-alive") {
                    keep_alive = true;
                } else {
                    upgrade_token |= eq(option, "upgrade");
                    if info.n_named == MAX_CONNECTION_OPTIONS {
                        return Err(bad("too many Connection options"));
                    }
                    info.named[info.n_named] = option;
                    info.n_named += 1;
                }
            }
        } else if eq(name, "upgrade") {
            upgrade_value = Some(value);
        } else if eq(name, "expect") {
            // An HTTP/1.0 request's expectation is ignored (RFC 9110 §10.1.1).
            if !http10 {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(Reject { status: 417, reason: "the only expectation served is 100-continue" });
                }
                info.expect_continue = true;
            }
        } else if eq(name, "te") {
            let mut te = elements(value).ok_or(bad("malformed TE"))?;
            info.te_trailers |= te.any(|t| eq(t, "trailers"));
        } else if eq(name, "content-type") {
            info.grpc |= value.get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"));
        }
    }
    if info.host.is_empty() {
        return Err(bad(if hosts == 0 { "no Host" } else { "empty Host" }));
    }
    if hosts == 0 && !http10 {
        return Err(bad("no Host"));
    }
    let te = framing.transfer_coded();
    info.framing = match framing.length {
        Some(_) if te => return Err(bad("both Content-Length and Transfer-Encoding")),
        // RFC 9112 §6.3: a request whose last coding is not chunked has no
        // reliable length.
        _ if te && !framing.last_chunked => return Err(bad("Transfer-Encoding does not end in chunked")),
        _ if te && framing.other => {
            return Err(Reject { status: 501, reason: "a transfer coding other than chunked" });
        }
        _ if te => BodyFraming::Chunked,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::None,
    };
    if http10 && keep_alive {
        info.close = false;
    }
    // The h2c upgrade (RFC 7540 §3.2, gone from RFC 9113) would turn the
    // connection into an HTTP/2 tunnel the gateway cannot see into: the
    // request goes on as a plain one.
    let h2c = upgrade_value.and_then(elements).is_some_and(|mut p| p.any(|p| eq(p, "h2c")));
    // An upgrade is a request without a body on a connection that stays
    // open (a WebSocket handshake is): with a body, the new protocol's
    // bytes would begin where the body's framing says, which the service
    // may answer before; with `close`, there is no connection to upgrade.
    let bodiless = matches!(info.framing, BodyFraming::None | BodyFraming::Length(0));
    if !http10 && upgrade_token && !h2c && bodiless && !info.close {
        info.upgrade = upgrade_value;
    }
    Ok(info)
}

/// A message's framing fields (`Content-Length`, `Transfer-Encoding`),
/// read the same way in requests and responses.
#[derive(Default)]
struct FramingFields {
    length: Option<u64>,
    /// How many times `chunked` was named.
    chunked: usize,
    /// Another coding was named.
    other: bool,
    last_chunked: bool,
}

impl FramingFields {
    /// Reads `name: value` if it is a framing field (then true); the
    /// reason if its value breaks a rule: `Content-Length` is digits,
    /// repeated only with the same value; `Transfer-Encoding` is a list of
    /// codings (tokens, with parameters), not in HTTP/1.0, naming
    /// `chunked` once at most.
    fn read(&mut self, name: &str, value: &[u8], http10: bool) -> Result<bool, &'static str> {
        if eq(name, "content-length") {
            let n = content_length(value).ok_or("malformed Content-Length")?;
            if self.length.is_some_and(|l| l != n) {
                return Err("differing Content-Length values");
            }
            self.length = Some(n);
        } else if eq(name, "transfer-encoding") {
            if http10 {
                return Err("Transfer-Encoding in HTTP/1.0");
            }
            let mut any = false;
            for coding in elements(value).ok_or("malformed Transfer-Encoding")? {
                let token = coding.split(';').next().unwrap_or("").trim_matches([' ', '\t']);
                if !is_token(token) {
                    return Err("malformed Transfer-Encoding");
                }
                let chunked = eq(coding, "chunked");
                any = true;
                self.chunked += usize::from(chunked);
                self.other |= !chunked;
                self.last_chunked = chunked;
            }
            if !any {
                return Err("empty Transfer-Encoding");
            }
            if self.chunked > 1 {
                return Err("chunked applied more than once");
            }
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    fn transfer_coded(&self) -> bool {
        self.chunked > 0 || self.other
    }
}

/// Validates the request target and sets the path (and, for an
/// absolute-form target, the host) from it.
fn parse_target<'a>(info: &mut RequestInfo<'a>, target: &'a str) -> Result<(), Reject> {
    if target.len() > MAX_TARGET {
        return Err(Reject { status: 414, reason: "request target too long" });
    }
    check_target_bytes(target)?;
    if target.starts_with('/') {
        return Ok(());
    }
    if target == "*" {
        return if info.method == "OPTIONS" { Ok(()) } else { Err(bad("asterisk-form target without OPTIONS")) };
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|s| target.get(..s.len()).filter(|p| p.eq_ignore_ascii_case(s)).map(|_| &target[s.len()..]))
        .ok_or(bad("malformed request target"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    valid_host(authority)?;
    info.host = authority;
    info.absolute = true;
    info.path = match path.as_bytes().first() {
        None => "/",
        Some(b'/') => path,
        // "http://a?q": the path is empty, so "/" with the query; the
        // service gets the query without its path, which is the same
        // resource as "/?q" (RFC 9112 §3.2.1).
        _ => return Err(bad("absolute-form target with a query but no path")),
    };
    Ok(())
}

/// What a target may hold: visible ASCII (httparse lets UTF-8 through),
/// no fragment (not part of a request target, RFC 9112 §3.2), and no
/// backslash: not a URI character, and read as `/` by some services (IIS,
/// some frameworks) but not others, so a path that means one thing to a
/// rule in front and another behind it.
fn check_target_bytes(target: &str) -> Result<(), Reject> {
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("a request target that is not visible ASCII"));
    }
    if target.contains('#') {
        return Err(bad("a fragment in the request target"));
    }
    if target.contains('\\') {
        return Err(bad("a backslash in the request target"));
    }
    Ok(())
}

/// `uri-host [ ":" port ]` of a name the gateway can route: a DNS name or
/// IPv4 address, or an IPv6 literal in brackets, and a port of digits.
fn valid_host(host: &str) -> Result<(), Reject> {
    const BAD: Reject = bad("malformed Host");
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(BAD);
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(BAD)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| BAD)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(BAD)?),
        };
        (None, port)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(BAD);
        }
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BAD);
        }
        port.parse::<u16>().map_err(|_| BAD)?;
    }
    Ok(())
}

/// A `Content-Length` value: 1*DIGIT that fits in a u64.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(
        0u64,
        |n, &b| if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None },
    )
}

/// `Host` without port, lowercase, without a trailing dot (IPv6 literals
/// without their brackets).
pub(crate) fn route_name(host: &str) -> String {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Who the visitor is, for the forwarding fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Visitor<'a> {
    /// Its address, as text (IPv4-mapped IPv6 shown as IPv4).
    pub(crate) ip: &'a str,
    /// `http` or `https`.
    pub(crate) proto: &'static str,
}

/// Writes the head the service gets for `info` into `out`: the request
/// line in origin form, the fields sent on, the framing, and the
/// forwarding fields (`X-Forwarded-For` appended to the visitor's own).
pub(crate) fn write_request_head(
    info: &RequestInfo<'_>,
    fields: &[httparse::Header<'_>],
    visitor: Visitor<'_>,
    out: &mut Vec<u8>,
) {
    out.clear();
    for part in [info.method, " ", info.path, " HTTP/1.1\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    if info.absolute {
        for part in [b"Host: ", info.host.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    for h in fields.iter().filter(|h| info.forwards(h.name)) {
        for part in [h.name.as_bytes(), b": ", h.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    match info.framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if let Some(u) = info.upgrade {
        for part in [b"Connection: upgrade\r\nUpgrade: ", u, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    if info.te_trailers {
        out.extend_from_slice(b"TE: trailers\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in fields.iter().filter(|h| info.keeps_forwarded_for() && eq(h.name, "x-forwarded-for")) {
        out.extend_from_slice(h.value);
        out.extend_from_slice(b", ");
    }
    for part in [visitor.ip, "\r\nX-Forwarded-Proto: ", visitor.proto, "\r\nX-Forwarded-Host: ", info.host] {
        out.extend_from_slice(part.as_bytes());
    }
    for part in ["\r\nX-Real-IP: ", visitor.ip, "\r\n\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// What [`rewrite_parts`] found.
#[derive(Debug)]
pub(crate) struct Rewritten {
    /// The name the request routes by.
    pub(crate) name: String,
    /// The origin-form target, when the request's was absolute-form.
    pub(crate) path: Option<String>,
    /// The authority as sent (with its port), for `X-Forwarded-Host`.
    pub(crate) host: String,
    pub(crate) framing: BodyFraming,
    pub(crate) upgrade: bool,
}

/// The rules for a request hyper parsed (HTTP/1): checks it, then rewrites
/// its fields in place as [`write_request_head`] writes them (framing
/// fields go: hyper's client writes the framing of what it sends).
pub(crate) fn rewrite_parts(
    method: &str,
    target: &str,
    http10: bool,
    headers: &mut HeaderMap,
    visitor: Visitor<'_>,
) -> Result<Rewritten, Reject> {
    let (out, drop, upgrade, te_trailers, xff) = {
        let info = check_parts(method, target, http10, headers)?;
        let drop: Vec<HeaderName> = headers.keys().filter(|n| !info.forwards(n.as_str())).cloned().collect();
        let prior = headers.get_all("x-forwarded-for").iter().filter(|_| info.keeps_forwarded_for());
        let xff = forwarded_for(prior.map(|v| v.as_bytes()), visitor.ip);
        let out = Rewritten {
            name: info.route_name(),
            path: info.absolute.then(|| info.path.to_string()),
            host: info.host.to_string(),
            framing: info.framing,
            upgrade: info.upgrade.is_some(),
        };
        (out, drop, info.upgrade.and_then(|u| HeaderValue::from_bytes(u).ok()), info.te_trailers, xff)
    };
    for n in drop {
        headers.remove(n);
    }
    if let Ok(h) = HeaderValue::from_str(&out.host) {
        headers.insert(hyper::header::HOST, h);
    }
    add_visitor_fields(headers, visitor, &out.host, xff);
    if let Some(u) = upgrade {
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(hyper::header::UPGRADE, u);
    }
    if te_trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
    if let BodyFraming::Length(n) = out.framing {
        headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(out)
}

/// The visitor's `X-Forwarded-For` values, in order, then its address.
fn forwarded_for<'v>(prior: impl Iterator<Item = &'v [u8]>, ip: &str) -> Option<HeaderValue> {
    let mut v = Vec::new();
    for p in prior {
        v.extend_from_slice(p);
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(ip.as_bytes());
    HeaderValue::from_bytes(&v).ok()
}

/// The forwarding fields: `X-Forwarded-For` (`xff`), `-Proto`, `-Host`
/// (the authority the visitor asked for) and `X-Real-IP`.
fn add_visitor_fields(headers: &mut HeaderMap, visitor: Visitor<'_>, host: &str, xff: Option<HeaderValue>) {
    if let Some(v) = xff {
        headers.insert("x-forwarded-for", v);
    }
    if let Ok(h) = HeaderValue::from_str(host) {
        headers.insert("x-forwarded-host", h);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(visitor.proto));
    if let Ok(v) = HeaderValue::from_str(visitor.ip) {
        headers.insert("x-real-ip", v);
    }
}

/// The rules for an HTTP/2 request (hyper's h2 server already refused
/// connection-specific fields and checks `content-length` against the
/// DATA): the method and target as for HTTP/1.1, one `Host` at most
/// naming the same host as `:authority`, and the managed fields (and
/// their aliases) replaced, as [`RequestInfo::forwards`] does. Rewrites
/// the fields for the service; the route name and the authority.
pub(crate) fn rewrite_h2(
    method: &str,
    path: &str,
    authority: Option<&str>,
    headers: &mut HeaderMap,
    visitor: Visitor<'_>,
) -> Result<(String, String), Reject> {
    if method == "CONNECT" {
        return Err(CONNECT_REFUSED);
    }
    if path != "*" && !path.starts_with('/') {
        return Err(bad("malformed :path"));
    }
    check_target_bytes(path)?;
    let mut hosts = headers.get_all(hyper::header::HOST).iter();
    let host = hosts.next().map(|h| h.to_str().map_err(|_| bad("malformed Host"))).transpose()?;
    if hosts.next().is_some() {
        return Err(bad("more than one Host"));
    }
    let authority = match (authority, host) {
        (Some(a), Some(h)) if route_name(a) != route_name(h) => return Err(bad(":authority and Host differ")),
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Err(bad("no :authority")),
    };
    valid_host(authority)?;
    let authority = authority.to_string();
    let xff = forwarded_for(headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()), visitor.ip);
    let te_trailers = headers
        .get_all(hyper::header::TE)
        .iter()
        .any(|v| elements(v.as_bytes()).is_some_and(|mut t| t.any(|t| eq(t, "trailers"))));
    let drop: Vec<HeaderName> = headers.keys().filter(|n| managed(n.as_str())).cloned().collect();
    for n in drop {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
    add_visitor_fields(headers, visitor, &authority, xff);
    Ok((route_name(&authority), authority))
}

// --------------------------------------------------------------- responses

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the connection's end (the visitor's connection must end too).
    Close,
}

/// A response head that passed the rules.
#[derive(Debug)]
pub(crate) struct ResponseInfo {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The service may send another response on this connection: HTTP/1.1
    /// without `close` (or 1.0 with `keep-alive`), framed unambiguously.
    pub(crate) reusable: bool,
}

fn bad_response(reason: &'static str) -> Reject {
    Reject { status: 502, reason }
}

/// Applies the rules to a response head for a request (`head_request`: it
/// was HEAD; `upgrade`: it asked for an upgrade).
pub(crate) fn check_response(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
    upgrade: bool,
) -> Result<ResponseInfo, Reject> {
    let status = resp.code.ok_or(bad_response("no status"))?;
    let http10 = resp.version != Some(1);
    check_response_fields(status, http10, head_request, upgrade, resp.headers.iter().map(|h| (h.name, h.value)))
}

/// The same rules over a response hyper's client parsed.
pub(crate) fn check_response_map(
    status: u16,
    http10: bool,
    head_request: bool,
    headers: &HeaderMap,
) -> Result<ResponseInfo, Reject> {
    check_response_fields(status, http10, head_request, true, headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

fn check_response_fields<'a>(
    status: u16,
    http10: bool,
    head_request: bool,
    upgrade: bool,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<ResponseInfo, Reject> {
    if !(100..=999).contains(&status) {
        return Err(bad_response("malformed status"));
    }
    if status == 101 && !upgrade {
        return Err(bad_response("101 without an upgrade request"));
    }
    let mut framing = FramingFields::default();
    let mut close = http10;
    for (name, value) in fields {
        if framing.read(name, value, http10).map_err(bad_response)? {
            // Content-Length or Transfer-Encoding, read.
        } else if eq(name, "connection") {
            for option in elements(value).ok_or(bad_response("malformed Connection"))? {
                if eq(option, "close") {
                    close = true;
                } else if eq(option, "keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    // Both: Transfer-Encoding wins, and the connection is not trusted
    // with another message (RFC 9112 §6.3).
    let te = framing.transfer_coded();
    let ambiguous = te && framing.length.is_some();
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match framing.length {
            // A coding after chunked: the body ends when the connection
            // does (RFC 9112 §6.3).
            _ if te && framing.last_chunked => Framing::Chunked,
            _ if te => Framing::Close,
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    // A response that has no body by the rules (to HEAD, a 204 or 304) yet
    // declares one: a service that writes that body anyway, late, would
    // have it read as the next visitor's response on this connection.
    let unsure = body == Framing::Empty && (te || framing.length.is_some_and(|n| n > 0));
    Ok(ResponseInfo { status, framing: body, reusable: !close && !ambiguous && !unsure && body != Framing::Close })
}

/// The head for the visitor: the service's status and fields, less the hop
/// by hop ones, with one `Content-Length` where the body has a length
/// (none beside chunked) and `Connection: close` unless `keep`. The body
/// is copied as it came, so `Transfer-Encoding` stays as the service sent
/// it.
pub(crate) fn write_response_head(raw: &[u8], out: &mut Vec<u8>, framing: Framing, keep: bool) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    // Parsed once already: this cannot fail.
    let _ = resp.parse(raw);
    let mut named = [""; MAX_CONNECTION_OPTIONS];
    let mut n_named = 0;
    for h in resp.headers.iter().filter(|h| eq(h.name, "connection")) {
        for t in elements(h.value).into_iter().flatten() {
            if n_named < named.len() && !PROTECTED.iter().any(|p| eq(t, p)) {
                named[n_named] = t;
                n_named += 1;
            }
        }
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa(u64::from(resp.code.unwrap_or(502)), &mut [0; 20]));
    out.extend_from_slice(b" ");
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    for h in resp.headers.iter() {
        let n = h.name;
        if eq(n, "content-length") {
            length = Some(h.value);
            continue;
        }
        // Transfer-Encoding stays as the service sent it: the body is
        // copied as it came (chunked, or to the connection's end).
        if HOP_BY_HOP.iter().any(|x| eq(n, x)) || named[..n_named].iter().any(|t| eq(n, t)) {
            continue;
        }
        for part in [n.as_bytes(), b": ", h.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::Close => {}
        // What a HEAD or 304 response's length would have been; a 204 and
        // 1xx have none.
        Framing::Empty => {
            if let Some(v) = length.filter(|_| !matches!(resp.code, Some(204) | Some(100..=199))) {
                for part in [b"Content-Length: ", v, b"\r\n"] {
                    out.extend_from_slice(part);
                }
            }
        }
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Removes the hop-by-hop fields of a response hyper's client parsed (and
/// those its `Connection` names, except framing), as
/// [`write_response_head`] does; `Content-Length` stays only where it
/// describes the body hyper will send (or a HEAD's or 304's), and
/// `Transfer-Encoding` as the service sent it (hyper's server frames the
/// body by it again).
pub(crate) fn strip_response(headers: &mut HeaderMap, framing: Framing) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| elements(v.as_bytes()))
        .flatten()
        .filter(|t| !PROTECTED.iter().any(|p| eq(t, p)))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    if matches!(framing, Framing::Chunked | Framing::Close) {
        headers.remove(hyper::header::CONTENT_LENGTH);
    }
}

// ----------------------------------------------------------------- chunked

/// A strict chunked-body scanner (RFC 9112 §7.1): finds where the body
/// ends in the bytes that pass, however they are split, and refuses any
/// deviation from the grammar.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// The first hex digit of a size.
    #[default]
    SizeStart,
    Size,
    /// Whitespace after the size, before a `;`.
    SizeBws,
    /// Before an extension's name.
    NameBws,
    Name,
    /// Whitespace after a name, before `=` or `;`.
    NameEnd,
    /// Before an extension's value.
    ValueBws,
    Token,
    Quoted,
    QuotedEscape,
    /// Whitespace after a value, before the next `;`.
    ValueEnd,
    /// The LF ending a size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line (CR: the body's last line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    LastLf,
}

impl Chunked {
    /// Consumes `buf`: `Some(n)` if the body ends after its first `n` bytes.
    /// The error's status is for a request body; a response body with it
    /// is a bad gateway.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, Reject> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            if self.state == Data {
                let n = self.size.min((buf.len() - i) as u64);
                self.size -= n;
                i += n as usize;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let ws = b == b' ' || b == b'\t';
            match self.state {
                SizeStart | Size | SizeBws | NameBws | Name | NameEnd | ValueBws | Token | Quoted | QuotedEscape
                | ValueEnd => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(bad("chunk size line too long"));
                    }
                }
                TrailerStart | TrailerName | TrailerValue | TrailerLf | LastLf => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(bad("trailer section too large"));
                    }
                }
                _ => {}
            }
            self.state = match (self.state, b) {
                (SizeStart | Size, _) if b.is_ascii_hexdigit() => {
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .ok_or(bad("chunk size overflows"))?;
                    Size
                }
                (SizeStart, _) => return Err(bad("malformed chunk size")),
                (Size, b'\r') => SizeLf,
                (Size | SizeBws, _) if ws => SizeBws,
                (Size | SizeBws | Name | NameEnd | Token | ValueEnd, b';') => NameBws,
                (NameBws, _) if ws => NameBws,
                (NameBws | Name, _) if is_tchar(b) => Name,
                (Name | NameEnd, _) if ws => NameEnd,
                (Name | NameEnd, b'=') => ValueBws,
                (Name | Token, b'\r') => SizeLf,
                (ValueBws, _) if ws => ValueBws,
                (ValueBws, b'"') => Quoted,
                (ValueBws | Token, _) if is_tchar(b) => Token,
                (Token | ValueEnd, _) if ws => ValueEnd,
                (Quoted, b'"') => ValueEnd,
                (Quoted, b'\\') => QuotedEscape,
                (Quoted, _) if ws || (b >= 0x21 && b != 0x7f) => Quoted,
                (QuotedEscape, _) if ws || (b >= 0x21 && b != 0x7f) => Quoted,
                (ValueEnd, b'\r') => SizeLf,
                (
                    Size | SizeBws | NameBws | Name | NameEnd | ValueBws | Token | Quoted | QuotedEscape | ValueEnd,
                    _,
                ) => return Err(bad("malformed chunk extension")),
                (SizeLf, b'\n') => {
                    self.line = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (SizeLf, _) => return Err(bad("chunk size line not ended by CRLF")),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (DataCr | DataLf, _) => return Err(bad("chunk data not followed by CRLF")),
                (TrailerStart, b'\r') => LastLf,
                (TrailerStart, _) if is_tchar(b) => {
                    self.line += 1;
                    if self.line > MAX_HEADERS {
                        return Err(bad("too many trailer fields"));
                    }
                    TrailerName
                }
                (TrailerName, _) if is_tchar(b) => TrailerName,
                (TrailerName, b':') => TrailerValue,
                (TrailerValue, b'\r') => TrailerLf,
                (TrailerValue, _) if ws || (b >= 0x21 && b != 0x7f) => TrailerValue,
                (TrailerLf, b'\n') => TrailerStart,
                (TrailerStart | TrailerName | TrailerValue | TrailerLf, _) => {
                    return Err(bad("malformed trailer field"))
                }
                (LastLf, b'\n') => return Ok(Some(i + 1)),
                (LastLf, _) => return Err(bad("chunked body not ended by CRLF")),
                (Data, _) => unreachable!("handled above"),
            };
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
