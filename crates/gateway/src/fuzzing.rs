//! Entry points for the fuzz targets (`crates/fuzz-targets`, `fuzz/`):
//! the crate's decoders of what visitors, services and CAs send are
//! private, and the targets call them here the way the paths do. Not an
//! API: nothing else uses it, and it may change with the targets.

use std::time::SystemTime;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::rules::{self, BodyFraming, Framing, MAX_HEADERS};

pub use crate::h2peek::{scan as h2_first_name, Scan as H2Scan, Scanner as H2Scanner};

/// The h2c peek's filter of the client's first SETTINGS ack, over `pieces`
/// (frames, no preface): what passes, and how many bytes it holds back (an
/// incomplete frame header).
pub fn h2_ack_filter<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, usize) {
    let mut f = crate::h2peek::AckFilter::new(0);
    let mut out = Vec::new();
    for p in pieces {
        f.feed(p, &mut out);
    }
    (out, f.held())
}

/// Where a message's body ends, as the rules decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// This many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// At the connection's end (responses only).
    Close,
}

impl From<BodyFraming> for Body {
    fn from(f: BodyFraming) -> Body {
        match f {
            BodyFraming::None => Body::None,
            BodyFraming::Length(n) => Body::Length(n),
            BodyFraming::Chunked => Body::Chunked,
        }
    }
}

/// A request head the rules took.
#[derive(Debug)]
pub struct Request {
    /// Length of the head in the input.
    pub head_len: usize,
    /// The body's framing.
    pub body: Body,
    /// The name it routes by.
    pub route: String,
    /// The target in origin form.
    pub path: String,
    /// The visitor's connection ends after it.
    pub close: bool,
    /// It asks for an upgrade.
    pub upgrade: bool,
    /// The head the direct path sends the service.
    pub rewritten: Vec<u8>,
    /// What the hyper path's rules make of the same fields in a
    /// `HeaderMap` (framing, route, upgrade, or the refusal's status);
    /// `None` when a field is not one a `HeaderMap` holds.
    pub hyper: Option<Result<(Body, String, bool), u16>>,
}

/// The request head at the start of `buf`, as the direct path and the
/// guard parse and check it: `Ok(None)` while incomplete, the refusal's
/// status if it breaks a rule.
pub fn request(buf: &[u8]) -> Result<Option<Request>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(head_len) = rules::parse_request(buf, &mut req).map_err(|r| r.status)? else {
        return Ok(None);
    };
    let info = rules::check_request(&req).map_err(|r| r.status)?;
    let mut rewritten = Vec::new();
    let visitor = rules::Visitor { ip: "192.0.2.1", proto: "http" };
    rules::write_request_head(&info, req.headers, visitor, &mut rewritten);
    let hyper = header_map(req.headers).map(|mut map| {
        let (method, target) = (info.method, req.path.unwrap_or_default());
        rules::rewrite_parts(method, target, info.http10, &mut map, visitor)
            .map(|rw| (rw.framing.into(), rw.name, rw.upgrade))
            .map_err(|r| r.status)
    });
    Ok(Some(Request {
        head_len,
        body: info.framing.into(),
        route: info.route_name(),
        path: info.path.to_string(),
        close: info.close,
        upgrade: info.upgrade.is_some(),
        rewritten,
        hyper,
    }))
}

/// The fields as hyper's parser would hand them over.
fn header_map(fields: &[httparse::Header<'_>]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for h in fields {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        map.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some(map)
}

/// A response head the rules took.
#[derive(Debug)]
pub struct Response {
    /// Length of the head in the input.
    pub head_len: usize,
    /// Its status.
    pub status: u16,
    /// The body's framing.
    pub body: Body,
    /// The connection to the service may carry another exchange.
    pub reusable: bool,
    /// The head the visitor gets.
    pub rewritten: Vec<u8>,
}

/// The response head at the start of `buf`, as the direct path reads a
/// service's answer: `Ok(None)` while incomplete, why if it breaks a rule.
pub fn response(buf: &[u8], head_request: bool, upgrade: bool) -> Result<Option<Response>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("unparsable response head"),
    };
    let info = rules::check_response(&resp, head_request, upgrade).map_err(|r| r.reason)?;
    let mut rewritten = Vec::new();
    rules::write_response_head(&buf[..head_len], &mut rewritten, info.framing, info.reusable);
    let body = match info.framing {
        Framing::Empty => Body::None,
        Framing::Length(n) => Body::Length(n),
        Framing::Chunked => Body::Chunked,
        Framing::Close => Body::Close,
    };
    Ok(Some(Response { head_len, status: info.status, body, reusable: info.reusable, rewritten }))
}

/// The strict chunked-body scanner.
#[derive(Debug, Default)]
pub struct Chunked(rules::Chunked);

impl Chunked {
    /// Consumes `buf`: `Some(n)` if the body ends after its first `n`
    /// bytes; the refusal's status if it breaks the grammar.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, u16> {
        self.0.scan(buf).map_err(|r| r.status)
    }
}

pub use crate::tls::{HelloPeek, Peek};

/// The end of validity of a certificate chain a CA sent for `key_pem`,
/// checked as an order's certificate is before it is stored.
pub fn acme_certificate(chain_pem: &[u8], key_pem: &[u8]) -> Result<SystemTime, String> {
    crate::acme::parse_pair(chain_pem, key_pem).map(|issued| issued.not_after)
}

/// Whether a CA's problem document says it does not accept the account.
pub fn acme_account_rejected(problem: &instant_acme::Problem) -> bool {
    crate::acme::account_rejected(problem)
}
