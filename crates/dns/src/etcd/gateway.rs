//! A small client of etcd's v3 JSON gateway (etcd 3.4 and later): HTTP/1.1
//! POSTs of JSON with base64 keys and values, 64-bit integers as strings.
//! Every request has a timeout; nothing in an answer can make it panic.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{json, Value};

use super::records::{Expect, Kv};

/// Bound of one request, connecting included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of one answer's body.
const MAX_BODY: usize = 64 << 20;
/// Keys per page when listing.
const PAGE: i64 = 500;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: refused, timed out, cut, or not HTTP.
    #[error("{endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// etcd answered with an error.
    #[error("{endpoint}: etcd error (code {code}): {message}")]
    Etcd { endpoint: String, code: i64, message: String },
    /// An answer that is not what the gateway sends.
    #[error("{endpoint}: unexpected answer to {path}: {reason}")]
    Protocol { endpoint: String, path: &'static str, reason: String },
    /// Our lease is gone (expired, revoked, or etcd lost its data).
    #[error("the etcd lease expired")]
    LeaseLost,
}

impl Error {
    /// gRPC code 5: the lease (or key) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Etcd { code: 5, .. })
    }
}

/// A lease granted by etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Seconds, as granted.
    pub ttl: i64,
}

/// What a conditional put found.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// Written; the key's new mod revision.
    Done(i64),
    /// Not written: the key is not as expected. What it holds now, if anything.
    Refused(Option<Kv>),
}

/// `http://host:port` (no trailing `/`) from an endpoint as configured:
/// `http://host:port`, `host:port`, with or without a trailing `/`.
pub fn endpoint_base(endpoint: &str) -> Result<String, String> {
    let e = endpoint.trim();
    let rest = match e.find("://") {
        Some(i) if e[..i].eq_ignore_ascii_case("http") => &e[i + 3..],
        Some(_) => return Err(format!("`{endpoint}`: only http:// endpoints are supported (no TLS)")),
        None => e,
    };
    let rest = rest.trim_end_matches('/');
    let bad = || format!("`{endpoint}` is not an etcd endpoint like http://127.0.0.1:2379");
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad());
    }
    let base = format!("http://{rest}");
    match format!("{base}/v3/kv/range").parse::<Uri>() {
        Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => Ok(base),
        _ => Err(bad()),
    }
}

/// The JSON gateway of one etcd cluster, through its endpoints in order.
pub struct Gateway {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoints: Vec<String>,
    /// The endpoint that answered last; requests start there.
    current: usize,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

impl Gateway {
    /// `endpoints` as returned by [`endpoint_base`]; at least one.
    pub fn new(endpoints: Vec<String>) -> Gateway {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(http);
        Gateway { client, endpoints, current: 0 }
    }

    /// The endpoint requests go to first.
    pub fn endpoint(&self) -> &str {
        self.endpoints.get(self.current).map(String::as_str).unwrap_or("")
    }

    /// Makes the next request try the endpoints from the first again.
    pub fn rewind(&mut self) {
        self.current = 0;
    }

    /// POSTs `body` to `path`, trying the endpoints in order from the
    /// current one until one answers.
    async fn call(&mut self, path: &'static str, body: &Value) -> Result<Value, Error> {
        let bytes = Bytes::from(body.to_string());
        let n = self.endpoints.len();
        let mut last = Error::Unreachable { endpoint: String::new(), reason: "no etcd endpoint".into() };
        for i in 0..n {
            let idx = (self.current + i) % n;
            match self.post(idx, path, bytes.clone()).await {
                Err(e @ Error::Unreachable { .. }) => last = e,
                answered => {
                    self.current = idx;
                    return answered;
                }
            }
        }
        Err(last)
    }

    async fn post(&self, idx: usize, path: &'static str, body: Bytes) -> Result<Value, Error> {
        let endpoint = self.endpoints.get(idx).cloned().unwrap_or_default();
        let unreachable = |reason: String| Error::Unreachable { endpoint: endpoint.clone(), reason };
        let uri: Uri = format!("{endpoint}{path}").parse().map_err(|e| unreachable(format!("bad URL: {e}")))?;
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| unreachable(format!("bad request: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| unreachable(chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(unreachable(format!("no answer to {path} within {REQUEST_TIMEOUT:?}"))),
        };
        parse_answer(status, &body).map_err(|a| match a {
            Answer::Etcd { code, message } => Error::Etcd { endpoint: endpoint.clone(), code, message },
            Answer::Garbage(reason) => Error::Protocol { endpoint: endpoint.clone(), path, reason },
        })
    }

    fn protocol(&self, path: &'static str, reason: impl Into<String>) -> Error {
        Error::Protocol { endpoint: self.endpoint().to_owned(), path, reason: reason.into() }
    }

    /// A new lease of `ttl` seconds.
    pub async fn grant(&mut self, ttl: i64) -> Result<Lease, Error> {
        const PATH: &str = "/v3/lease/grant";
        let v = self.call(PATH, &json!({ "TTL": ttl.to_string() })).await?;
        let id = int(&v, "ID").map_err(|r| self.protocol(PATH, r))?;
        let granted = int(&v, "TTL").map_err(|r| self.protocol(PATH, r))?;
        if id == 0 || granted <= 0 {
            return Err(self.protocol(PATH, format!("no lease in {}", snippet(v.to_string().as_bytes()))));
        }
        Ok(Lease { id, ttl: granted })
    }

    /// Renews the lease; its remaining TTL, 0 or less if it is gone.
    pub async fn keepalive(&mut self, id: i64) -> Result<i64, Error> {
        const PATH: &str = "/v3/lease/keepalive";
        match self.call(PATH, &json!({ "ID": id.to_string() })).await {
            Ok(v) => int(&v, "TTL").map_err(|r| self.protocol(PATH, r)),
            Err(e) if e.is_not_found() => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Revokes the lease: its keys vanish at once. A lease already gone is fine.
    pub async fn revoke(&mut self, id: i64) -> Result<(), Error> {
        match self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() })).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// Every key-value pair in `[start, end)`, one consistent snapshot,
    /// page by page.
    pub async fn list(&mut self, start: &[u8], end: &[u8]) -> Result<Vec<Kv>, Error> {
        Ok(self.list_at(start, end).await?.0)
    }

    /// [`list`](Self::list), and the revision of its snapshot: where a
    /// [`watch`](Self::watch) continues.
    pub async fn list_at(&mut self, start: &[u8], end: &[u8]) -> Result<(Vec<Kv>, i64), Error> {
        const PATH: &str = "/v3/kv/range";
        let mut out = Vec::new();
        let mut from = start.to_vec();
        let mut revision = 0;
        loop {
            let mut req = json!({
                "key": B64.encode(&from),
                "range_end": B64.encode(end),
                "limit": PAGE.to_string(),
            });
            if revision > 0 {
                req["revision"] = json!(revision.to_string());
            }
            let v = self.call(PATH, &req).await?;
            if revision == 0 {
                revision = v.get("header").map(|h| int(h, "revision")).unwrap_or(Ok(0)).unwrap_or(0);
            }
            let kvs = kvs(&v).map_err(|r| self.protocol(PATH, r))?;
            let more = v.get("more").and_then(Value::as_bool).unwrap_or(false);
            let next = kvs.last().map(|kv| {
                let mut k = kv.key.clone();
                k.push(0);
                k
            });
            out.extend(kvs);
            match next {
                Some(next) if more => {
                    if next <= from {
                        return Err(self.protocol(PATH, "a page did not advance"));
                    }
                    from = next;
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// Watches `[start, end)` from revision `from`: every change after it,
    /// as etcd streams them, until the stream breaks. The current endpoint
    /// only: a broken watch is started again by whoever holds it, after a
    /// `list_at` that may move to another endpoint.
    pub async fn watch(&mut self, start: &[u8], end: &[u8], from: i64) -> Result<Watch, Error> {
        const PATH: &str = "/v3/watch";
        let endpoint = self.endpoint().to_owned();
        let unreachable = |reason: String| Error::Unreachable { endpoint: endpoint.clone(), reason };
        let uri: Uri = format!("{endpoint}{PATH}").parse().map_err(|e| unreachable(format!("bad URL: {e}")))?;
        let body = json!({ "create_request": {
            "key": B64.encode(start),
            "range_end": B64.encode(end),
            "start_revision": from.to_string(),
        }});
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| unreachable(format!("bad request: {e}")))?;
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req)).await {
            Ok(r) => r.map_err(|e| unreachable(chain(&e)))?,
            Err(_) => return Err(unreachable(format!("no answer to {PATH} within {REQUEST_TIMEOUT:?}"))),
        };
        if resp.status() != StatusCode::OK {
            return Err(self.protocol(PATH, format!("HTTP {}", resp.status())));
        }
        Ok(Watch { body: resp.into_body(), buf: Vec::new(), endpoint })
    }

    /// Writes `key` = `value` attached to `lease` if the key is as expected.
    pub async fn put_if(&mut self, key: &str, value: &[u8], lease: i64, expect: Expect) -> Result<Put, Error> {
        const PATH: &str = "/v3/kv/txn";
        let k = B64.encode(key);
        let req = json!({
            "compare": [compare(&k, expect)],
            "success": [{ "request_put": { "key": k, "value": B64.encode(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": k } }],
        });
        let v = self.call(PATH, &req).await?;
        let parsed = if succeeded(&v) {
            revision(&v).map(Put::Done)
        } else {
            first_response(&v, "response_range").and_then(kvs).map(|kvs| Put::Refused(kvs.into_iter().next()))
        };
        parsed.map_err(|r| self.protocol(PATH, r))
    }

    /// Deletes `key` if it was last modified at `mod_revision` (it is still
    /// the record we know). Whether it was deleted.
    pub async fn delete_if(&mut self, key: &str, mod_revision: i64) -> Result<bool, Error> {
        let k = B64.encode(key);
        let req = json!({
            "compare": [compare(&k, Expect::ModRevision(mod_revision))],
            "success": [{ "request_delete_range": { "key": k } }],
        });
        let v = self.call("/v3/kv/txn", &req).await?;
        Ok(succeeded(&v))
    }
}

/// A watch's stream of changes (see [`Gateway::watch`]).
pub struct Watch {
    body: hyper::body::Incoming,
    /// Bytes of the message being received.
    buf: Vec<u8>,
    endpoint: String,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// One change a watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was written (its new value, lease and revision).
    Put(Kv),
    /// The key was deleted (or expired with its lease).
    Delete(Vec<u8>),
}

impl Watch {
    /// The next changes, in order (empty for etcd's own messages: the
    /// watch's creation, progress). An error when the stream breaks, etcd
    /// cancels the watch (its revision was compacted away), or a message
    /// is not what etcd sends; the watcher then reads everything again.
    pub async fn next(&mut self) -> Result<Vec<Change>, Error> {
        const PATH: &str = "/v3/watch";
        let broken = |reason: String| Error::Unreachable { endpoint: self.endpoint.clone(), reason };
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let garbage = |reason: String| Error::Protocol { endpoint: self.endpoint.clone(), path: PATH, reason };
                let v: Value =
                    serde_json::from_slice(&line).map_err(|_| garbage(format!("not JSON: {}", snippet(&line))))?;
                if let Some(e) = v.get("error") {
                    return Err(garbage(format!("etcd ended the watch: {}", snippet(e.to_string().as_bytes()))));
                }
                let result = v.get("result").ok_or_else(|| garbage("no result in a watch message".into()))?;
                if result.get("canceled").and_then(Value::as_bool).unwrap_or(false) {
                    return Err(garbage("etcd canceled the watch (compacted?)".into()));
                }
                return changes(result).map_err(garbage);
            }
            if self.buf.len() > MAX_BODY {
                return Err(broken("a watch message over the size bound".into()));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(broken(format!("the watch broke: {e}"))),
                None => return Err(broken("etcd closed the watch".into())),
            }
        }
    }
}

/// The changes of one watch message's `result`.
fn changes(result: &Value) -> Result<Vec<Change>, String> {
    let events = match result.get("events") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(events)) => events,
        Some(_) => return Err("events is not a list".into()),
    };
    events
        .iter()
        .map(|e| {
            let kv = e.get("kv").ok_or("an event without kv")?;
            match e.get("type").and_then(Value::as_str) {
                None | Some("PUT") => Ok(Change::Put(Kv {
                    key: bytes(kv, "key")?,
                    value: bytes(kv, "value")?,
                    lease: int(kv, "lease")?,
                    mod_revision: int(kv, "mod_revision")?,
                })),
                Some("DELETE") => Ok(Change::Delete(bytes(kv, "key")?)),
                Some(other) => Err(format!("an event of type {}", snippet(other.as_bytes()))),
            }
        })
        .collect()
}

/// A txn comparison: the key does not exist, or has this mod revision.
fn compare(key_b64: &str, expect: Expect) -> Value {
    match expect {
        Expect::Absent => json!({ "key": key_b64, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }),
        Expect::ModRevision(r) => {
            json!({ "key": key_b64, "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string() })
        }
    }
}

/// Why an answer is not a result.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Etcd { code: i64, message: String },
    Garbage(String),
}

/// The result in an answer: the JSON object, or the `result` of a stream
/// message (keepalive); etcd's errors, in the unary (`{"error": "...",
/// "code": n}`) and the stream (`{"error": {"grpc_code": n, ...}}`) forms.
fn parse_answer(status: StatusCode, body: &[u8]) -> Result<Value, Answer> {
    // A stream may carry several messages; the first one is ours.
    let first = serde_json::Deserializer::from_slice(body).into_iter::<Value>().next();
    let v = match first {
        Some(Ok(v)) => v,
        _ if status.is_success() => return Err(Answer::Garbage(format!("not JSON: {}", snippet(body)))),
        _ => return Err(Answer::Garbage(format!("HTTP {status}: {}", snippet(body)))),
    };
    if let Some(err) = v.get("error") {
        let message = err
            .as_str()
            .or_else(|| err.get("message").and_then(Value::as_str))
            .or_else(|| v.get("message").and_then(Value::as_str))
            .unwrap_or("(no message)")
            .to_owned();
        let code = v
            .get("code")
            .or_else(|| err.get("grpc_code"))
            .and_then(|c| int_value(c).ok())
            .unwrap_or(if status.is_success() { 2 } else { i64::from(status.as_u16()) });
        return Err(Answer::Etcd { code, message });
    }
    if !status.is_success() {
        return Err(Answer::Garbage(format!("HTTP {status}: {}", snippet(body))));
    }
    match v {
        Value::Object(mut o) => match o.remove("result") {
            Some(r @ Value::Object(_)) => Ok(r),
            Some(other) => {
                Err(Answer::Garbage(format!("result is not an object: {}", snippet(other.to_string().as_bytes()))))
            }
            None => Ok(Value::Object(o)),
        },
        other => Err(Answer::Garbage(format!("not a JSON object: {}", snippet(other.to_string().as_bytes())))),
    }
}

/// A 64-bit integer field: a string (how the gateway writes them) or a
/// number; absent means 0 (proto3 leaves zeros out).
fn int(v: &Value, field: &str) -> Result<i64, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(x) => int_value(x).map_err(|r| format!("{field}: {r}")),
    }
}

fn int_value(x: &Value) -> Result<i64, String> {
    match x {
        Value::String(s) => s.parse().map_err(|_| format!("`{}` is not an integer", snippet(s.as_bytes()))),
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{n} is not a 64-bit integer")),
        other => Err(format!("{} is not an integer", snippet(other.to_string().as_bytes()))),
    }
}

fn bytes(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|e| format!("{field}: not base64: {e}")),
        Some(_) => Err(format!("{field} is not a string")),
    }
}

fn kvs(v: &Value) -> Result<Vec<Kv>, String> {
    let list = match v.get("kvs") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("kvs is not a list".into()),
    };
    list.iter()
        .map(|kv| {
            Ok(Kv {
                key: bytes(kv, "key")?,
                value: bytes(kv, "value")?,
                lease: int(kv, "lease")?,
                mod_revision: int(kv, "mod_revision")?,
            })
        })
        .collect()
}

fn succeeded(v: &Value) -> bool {
    v.get("succeeded").and_then(Value::as_bool).unwrap_or(false)
}

/// The revision in the header (of a txn: the revision it wrote).
fn revision(v: &Value) -> Result<i64, String> {
    let r = v.get("header").map(|h| int(h, "revision")).unwrap_or(Ok(0))?;
    if r <= 0 {
        return Err("no revision in the header".into());
    }
    Ok(r)
}

/// `responses[0].<kind>` of a txn answer.
fn first_response<'a>(v: &'a Value, kind: &str) -> Result<&'a Value, String> {
    v.get("responses")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(|r| r.get(kind))
        .ok_or_else(|| format!("no {kind} in the txn answer"))
}

/// An error and its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The start of a body, printable, for messages.
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if body.len() > 200 {
        format!("{s}...")
    } else {
        s
    }
}

#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_endpoints_accept_urls_and_host_port() {
        assert_eq!(endpoint_base("http://127.0.0.1:2379").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(endpoint_base(" http://127.0.0.1:2379/ ").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(endpoint_base("HTTP://etcd:2379").unwrap(), "http://etcd:2379");
        assert_eq!(endpoint_base("127.0.0.1:2379").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(endpoint_base("[::1]:2379").unwrap(), "http://[::1]:2379");
        assert_eq!(endpoint_base("etcd.local:2379").unwrap(), "http://etcd.local:2379");
        assert!(endpoint_base("https://127.0.0.1:2379").unwrap_err().contains("only http://"));
        assert!(endpoint_base("unix:///run/etcd.sock").is_err());
        assert!(endpoint_base("http://").is_err());
        assert!(endpoint_base("a b:1").is_err());
    }

    fn ok(body: &str) -> Result<Value, Answer> {
        parse_answer(StatusCode::OK, body.as_bytes())
    }

    #[test]
    fn etcd_answers_of_the_real_gateway_parse() {
        // As etcd 3.4.23 answers.
        let grant =
            ok(r#"{"header":{"cluster_id":"151","revision":"1"},"ID":"4111120277473784326","TTL":"5"}"#).unwrap();
        assert_eq!(int(&grant, "ID"), Ok(4111120277473784326));
        assert_eq!(int(&grant, "TTL"), Ok(5));
        let ka = ok(r#"{"result":{"header":{"revision":"1"},"ID":"12","TTL":"5"}}"#).unwrap();
        assert_eq!(int(&ka, "TTL"), Ok(5));
        // An unknown lease: the keepalive result has no TTL.
        let gone = ok(r#"{"result":{"header":{"revision":"1"},"ID":"12345"}}"#).unwrap();
        assert_eq!(int(&gone, "TTL"), Ok(0));
        let notfound = parse_answer(
            StatusCode::NOT_FOUND,
            br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
        );
        assert_eq!(notfound, Err(Answer::Etcd { code: 5, message: "etcdserver: requested lease not found".into() }));
        let range = ok(r#"{"header":{"revision":"2"},"kvs":[{"key":"L3NreWRucy9h","create_revision":"2","mod_revision":"2","version":"1","value":"eA==","lease":"4111"}],"count":"1"}"#).unwrap();
        assert_eq!(
            kvs(&range).unwrap(),
            vec![Kv { key: b"/skydns/a".to_vec(), value: b"x".to_vec(), lease: 4111, mod_revision: 2 }]
        );
        let empty = ok(r#"{"header":{"revision":"1"}}"#).unwrap();
        assert_eq!(kvs(&empty).unwrap(), vec![]);
        let put = ok(r#"{"header":{"revision":"4"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"4"}}}]}"#).unwrap();
        assert!(succeeded(&put));
        assert_eq!(revision(&put), Ok(4));
        let refused = ok(r#"{"header":{"revision":"4"},"responses":[{"response_range":{"header":{"revision":"4"},"kvs":[{"key":"L3NreWRucy9h","mod_revision":"4","value":"eA=="}],"count":"1"}}]}"#).unwrap();
        assert!(!succeeded(&refused));
        let kv = kvs(first_response(&refused, "response_range").unwrap()).unwrap();
        assert_eq!(kv[0].lease, 0);
        assert_eq!(kv[0].mod_revision, 4);
    }

    #[test]
    fn etcd_stream_errors_parse() {
        let e = ok(
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
        );
        assert_eq!(e, Err(Answer::Etcd { code: 14, message: "etcdserver: no leader".into() }));
    }

    /// Watch messages as etcd 3.4's gateway streams them (one JSON object
    /// a line): creation, a put, a delete; and what is not one.
    #[test]
    fn etcd_watch_messages_parse() {
        let result = |line: &str| -> Value { serde_json::from_str::<Value>(line).unwrap()["result"].clone() };
        let created =
            r#"{"result":{"header":{"cluster_id":"3","member_id":"3","revision":"1","raft_term":"2"},"created":true}}"#;
        assert_eq!(changes(&result(created)), Ok(vec![]));
        let put = r#"{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"L3AvYQ==","create_revision":"2","mod_revision":"2","version":"1","value":"aGk=","lease":"7"}}]}}"#;
        let kv = Kv { key: b"/p/a".to_vec(), value: b"hi".to_vec(), lease: 7, mod_revision: 2 };
        assert_eq!(changes(&result(put)), Ok(vec![Change::Put(kv)]));
        let delete = r#"{"result":{"header":{"revision":"3"},"events":[{"type":"DELETE","kv":{"key":"L3AvYQ==","mod_revision":"3"}}]}}"#;
        assert_eq!(changes(&result(delete)), Ok(vec![Change::Delete(b"/p/a".to_vec())]));
        for bad in [
            r#"{"result":{"events":{}}}"#,
            r#"{"result":{"events":[{"type":"PUT"}]}}"#,
            r#"{"result":{"events":[{"type":"EXPLODE","kv":{"key":"L3A="}}]}}"#,
            r#"{"result":{"events":[{"kv":{"key":"!!!"}}]}}"#,
        ] {
            assert!(changes(&result(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn etcd_garbage_answers_are_errors_not_panics() {
        let garbage: &[&[u8]] = &[
            b"",
            b"<html>hello</html>",
            b"\xff\xfe\x00",
            b"[]",
            b"42",
            b"null",
            br#"{"result": 5}"#,
            br#"{"error": 5}"#,
            br#"{"error": null, "code": "x"}"#,
            &[b'{'; 10000],
        ];
        for body in garbage {
            for status in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR, StatusCode::NOT_FOUND] {
                let _ = parse_answer(status, body);
            }
        }
        assert!(matches!(ok(""), Err(Answer::Garbage(_))));
        assert!(matches!(parse_answer(StatusCode::BAD_GATEWAY, b"{}"), Err(Answer::Garbage(_))));
        let weird = json!({
            "ID": {"a": 1}, "TTL": "9999999999999999999999", "kvs": [{"key": 5}], "header": "x",
            "responses": [5], "succeeded": "yes"
        });
        assert!(int(&weird, "ID").is_err());
        assert!(int(&weird, "TTL").is_err());
        assert!(kvs(&weird).is_err());
        assert!(revision(&weird).is_err());
        assert!(!succeeded(&weird));
        assert!(first_response(&weird, "response_range").is_err());
        assert!(kvs(&json!({"kvs": [{"key": "!!!"}]})).is_err());
        assert!(kvs(&json!({"kvs": "x"})).is_err());
        assert_eq!(int(&json!({"n": 7}), "n"), Ok(7));
        assert_eq!(int(&json!({"n": -1}), "n"), Ok(-1));
        assert!(int(&json!({"n": 1.5}), "n").is_err());
    }

    #[test]
    fn etcd_snippets_are_short_and_printable() {
        assert_eq!(snippet(b"a\nb"), "a b");
        assert_eq!(snippet(&[b'x'; 300]).len(), 203);
        let _ = snippet("é".repeat(150).as_bytes());
    }
}
