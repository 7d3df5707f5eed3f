//! The direct path and the hyper path side by side: the same bytes from a
//! visitor, through each, to a service that records what it parsed. Both
//! must forward the same requests or refuse alike (`rules` decides for
//! both; the guard holds hyper to it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use opennotr_plugin::{async_trait, CancellationToken, Lifecycle, OpenError, StreamProtocol, Tunnel, TunnelStream};
use opennotr_transport::Channel;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::GatewayConfig;
use crate::ctx::{Ctx, Settings};
use crate::gateway::Gateway;
use crate::io::{Replay, TimedIo};
use crate::route::{Scheme, Upstream};
use crate::serve::{serve_connection, serve_http1, Start};

const HOST: &str = "app.example.test";

/// What the service parsed: a request (method, target, fields sorted and
/// lowercased, body), or bytes it could not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    Request { method: String, target: String, fields: Vec<(String, Vec<u8>)>, body: Vec<u8> },
    Garbage(Vec<u8>),
}

/// A service that parses leniently (as many do: trims, reads any
/// `Transfer-Encoding` naming chunked) and records every request; each gets
/// `200` with its target as the body.
async fn recording_service() -> (SocketAddr, Arc<Mutex<Vec<Parsed>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            tokio::spawn(record(s, l.clone()));
        }
    });
    (addr, log)
}

async fn record(mut s: TcpStream, log: Arc<Mutex<Vec<Parsed>>>) {
    let mut buf = BytesMut::new();
    loop {
        let parsed = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut fields: Vec<(String, Vec<u8>)> =
                        req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
                    fields.sort();
                    break Some((n, req.method.unwrap_or("").to_string(), req.path.unwrap_or("").to_string(), fields));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => break None,
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        };
        let Some((n, method, target, fields)) = parsed else {
            log.lock().unwrap().push(Parsed::Garbage(buf.to_vec()));
            return;
        };
        let _ = buf.split_to(n);
        if target == "/ws101" {
            // An upgrade the service accepts: then it echoes.
            log.lock().unwrap().push(Parsed::Request { method, target, fields, body: Vec::new() });
            let _ =
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await;
            let _ = s.write_all(&buf).await;
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        let field =
            |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).to_string());
        let mut body = Vec::new();
        if field("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let Some(line) = read_line(&mut s, &mut buf).await else { return };
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
                if size == 0 {
                    while read_line(&mut s, &mut buf).await.is_some_and(|l| !l.is_empty()) {}
                    break;
                }
                while buf.len() < size + 2 {
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                body.extend_from_slice(&buf.split_to(size + 2)[..size]);
            }
        } else if let Some(len) = field("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
            while buf.len() < len {
                if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            body = buf.split_to(len).to_vec();
        }
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}", target.len());
        log.lock().unwrap().push(Parsed::Request { method, target, fields, body });
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_line(s: &mut TcpStream, buf: &mut BytesMut) -> Option<String> {
    loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(i + 1);
            return Some(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string());
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// A client session whose streams are plain TCP connections to `service`.
#[derive(Debug)]
struct DirectTunnel {
    service: SocketAddr,
}

#[async_trait]
impl Tunnel for DirectTunnel {
    async fn open_stream(
        &self,
        _: StreamProtocol,
        _: SocketAddr,
        _: Option<opennotr_plugin::Visitor>,
    ) -> Result<TunnelStream, OpenError> {
        let s = TcpStream::connect(self.service).await.map_err(|e| OpenError::Refused(e.to_string()))?;
        Ok(TunnelStream::new(Channel::Plain(s), None))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Hyper,
}

/// What a visitor saw (statuses in order, informational ones too) and what
/// the service parsed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    statuses: Vec<u16>,
    parsed: Vec<Parsed>,
}

/// Sends `bytes` through `path` on one connection and reads answers until
/// the gateway closes it.
/// A gateway routing `app.example.test` to a new recording service: a
/// visitor connection's context, and what the service parses.
async fn rig() -> (Ctx, Arc<Mutex<Vec<Parsed>>>) {
    let (service, log) = recording_service().await;
    let gateway = Gateway::new();
    let up = Upstream {
        tunnel: Arc::new(DirectTunnel { service }),
        target: service,
        forward: 1,
        client_id: "c".into(),
        kill: CancellationToken::new(),
        access: None,
    };
    gateway.insert(Scheme::Http, HOST, up).unwrap();
    let cfg = GatewayConfig::parse(
        "http",
        &serde_json::json!({"listen": "127.0.0.1:0", "headerTimeout": 3, "idleTimeout": 3, "bodyTimeout": 3}),
    )
    .unwrap();
    let settings = Arc::new(Settings::new(Scheme::Http, &cfg));
    (Ctx::new(gateway, settings, "192.0.2.7:5555".parse().unwrap(), Lifecycle::default(), None), log)
}

async fn run(bytes: &[u8], path: Path) -> Outcome {
    let (ctx, log) = rig().await;
    let send_timeout = ctx.settings.send_timeout;
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let served = tokio::spawn(async move {
        match path {
            Path::Direct => serve_connection(server, ctx, Start::Http1).await,
            Path::Hyper => {
                let io = Replay::new(BytesMut::new(), TimedIo::new(server, send_timeout));
                serve_http1(io, &ctx).await
            }
        }
    });
    client.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the gateway did not close the connection: {:?}", String::from_utf8_lossy(&got));
    let _ = served.await;
    let parsed = log.lock().unwrap().clone();
    Outcome { statuses: statuses(&got), parsed }
}

/// The statuses of the responses in `bytes`.
fn statuses(mut bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(bytes) else { return out };
        let code = resp.code.unwrap_or(0);
        out.push(code);
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let chunked = resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        bytes = &bytes[n..];
        if (100..200).contains(&code) {
            continue;
        }
        if chunked {
            let mut c = crate::rules::Chunked::default();
            match c.scan(bytes) {
                Ok(Some(end)) => bytes = &bytes[end..],
                _ => return out,
            }
        } else {
            bytes = &bytes[len.min(bytes.len())..];
        }
    }
}

/// The request that ends every exchange: it closes the connection once
/// the requests before it are answered.
const LAST: &str = "GET /last HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n";

fn with_last(case: &[u8]) -> Vec<u8> {
    let mut b = case.to_vec();
    b.extend_from_slice(LAST.as_bytes());
    b
}

async fn both(case: &[u8]) -> Outcome {
    let bytes = with_last(case);
    let direct = run(&bytes, Path::Direct).await;
    let hyper = run(&bytes, Path::Hyper).await;
    assert_eq!(direct, hyper, "the paths differ on {:?}", String::from_utf8_lossy(case));
    direct
}

fn targets(o: &Outcome) -> Vec<&str> {
    o.parsed
        .iter()
        .map(|p| match p {
            Parsed::Request { target, .. } => target.as_str(),
            Parsed::Garbage(_) => "<garbage>",
        })
        .collect()
}

#[tokio::test]
async fn a_rejected_request_after_a_good_one_is_answered_after_it() {
    let o = both(b"GET /a HTTP/1.1\r\nHost: app.example.test\r\n\r\nGET /b HTTP/1.1\r\nHost: app.example.test\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(o.statuses, vec![200, 400]);
    assert_eq!(targets(&o), vec!["/a"]);
}

#[tokio::test]
async fn the_reported_smuggling_case_reaches_nothing() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.example.test\r\nX-Pad: ";
    let case = format!(
        "GET /a HTTP/1.1\r\nHost: app.example.test\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let o = both(case.as_bytes()).await;
    assert_eq!(o.statuses, vec![400]);
    assert!(o.parsed.is_empty(), "{:?}", o.parsed);
}

#[tokio::test]
async fn a_broken_chunk_reaches_nothing_and_closes() {
    for body in ["0x5\r\nhello\r\n0\r\n\r\n", "ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n", "5\nhello\r\n0\r\n\r\n"] {
        let case = format!("POST /c HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let o = both(case.as_bytes()).await;
        assert_eq!(o.statuses, vec![400], "{body:?}");
        assert!(o.parsed.is_empty(), "{body:?}: {:?}", o.parsed);
    }
}

#[tokio::test]
async fn chunked_bodies_are_forwarded_whole() {
    let case = b"POST /c HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\nContent-Length: 9\r\n\r\n";
    let o = both(case).await;
    assert_eq!(o.statuses, vec![200, 200]);
    let Parsed::Request { body, .. } = &o.parsed[0] else { panic!("{:?}", o.parsed) };
    assert_eq!(body, b"hello");
}

#[tokio::test]
async fn an_upgrade_the_service_declines_goes_on_as_http() {
    let o =
        both(b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").await;
    assert_eq!(o.statuses, vec![200, 200]);
    assert_eq!(targets(&o), vec!["/ws", "/last"]);
}

/// An upgrade pipelined behind another request: the guard holds it for its
/// own answer (not the request's before it), then passes the upgraded
/// bytes through.
#[tokio::test]
async fn a_pipelined_upgrade_waits_for_its_own_answer() {
    for path in [Path::Direct, Path::Hyper] {
        let (ctx, log) = rig().await;
        let send_timeout = ctx.settings.send_timeout;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            match path {
                Path::Direct => serve_connection(server, ctx, Start::Http1).await,
                Path::Hyper => {
                    serve_http1(Replay::new(BytesMut::new(), TimedIo::new(server, send_timeout)), &ctx).await
                }
            }
        });
        client
            .write_all(
                b"GET /a HTTP/1.1\r\nHost: app.example.test\r\n\r\n\
                  GET /ws101 HTTP/1.1\r\nHost: app.example.test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nping",
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        let echoed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"ping") {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "{path:?}: closed: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(echoed.is_ok(), "{path:?}: no echo: {:?}", String::from_utf8_lossy(&got));
        assert_eq!(statuses(&got)[..2], [200, 101], "{path:?}");
        let parsed = log.lock().unwrap().clone();
        assert_eq!(targets(&Outcome { statuses: vec![], parsed }), vec!["/a", "/ws101"], "{path:?}");
    }
}

/// HTTP/2 requests get the same field rules on their way to an HTTP/1.1
/// service: managed fields and their aliases replaced, targets and
/// methods held to the same rules.
#[tokio::test]
async fn http2_requests_get_the_same_rules() {
    let (ctx, log) = rig().await;
    let (client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(serve_connection(server, ctx, Start::Http2));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(client),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let send = |req: hyper::Request<http_body_util::Empty<bytes::Bytes>>| {
        let mut sender = sender.clone();
        async move { sender.send_request(req).await.unwrap().status().as_u16() }
    };
    let get = |path: &str| hyper::Request::get(format!("http://{HOST}{path}"));
    let req = get("/a")
        .header("x_forwarded_for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("content_length", "5")
        .header("expect", "100-continue")
        .header("proxy-authorization", "Basic eA==")
        .header("http2-settings", "AAA")
        .header("cookie", "c=1")
        .body(http_body_util::Empty::new())
        .unwrap();
    assert_eq!(send(req).await, 200);
    let Parsed::Request { fields, .. } = log.lock().unwrap()[0].clone() else { panic!("not a request") };
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    for gone in ["x_forwarded_for", "forwarded", "content_length", "expect", "proxy-authorization", "http2-settings"] {
        assert!(!names.contains(&gone), "{gone} reached the service: {names:?}");
    }
    let value = |n: &str| fields.iter().find(|(f, _)| f == n).map(|(_, v)| v.clone());
    assert_eq!(value("x-real-ip"), Some(b"192.0.2.7".to_vec()));
    assert_eq!(value("x-forwarded-for"), Some(b"192.0.2.7".to_vec()));
    assert_eq!(value("cookie"), Some(b"c=1".to_vec()));
    assert_eq!(send(get("/a\\b").body(http_body_util::Empty::new()).unwrap()).await, 400);
    let connect = hyper::Request::connect(format!("{HOST}:443")).body(http_body_util::Empty::new()).unwrap();
    assert_eq!(send(connect).await, 405);
    let other_host = get("/").header("host", "other.example.test").body(http_body_util::Empty::new()).unwrap();
    assert_eq!(send(other_host).await, 400);
    assert_eq!(log.lock().unwrap().len(), 1, "only the first request reached the service");
}

// Request heads built from the pieces that break parsers, in any order:
// whatever the direct path does with one, the hyper path does too. Most
// are well-formed apart from one or two pieces, so that both refusals and
// forwarded requests are compared.
fn pick(common: &'static [&'static str], rare: &'static [&'static str]) -> BoxedStrategy<&'static str> {
    prop_oneof![6 => prop::sample::select(common), 1 => prop::sample::select(rare)].boxed()
}

prop_compose! {
    pub(crate) fn request()(
        method in pick(&["GET", "POST", "PUT"], &["HEAD", "OPTIONS", "get", "CONNECT", "DELETE"]),
        target in pick(&["/", "/a?b=1"], &["*", "http://app.example.test/x", "http://other.example.test/", "/a#f", "/%0d%0a"]),
        version in pick(&["HTTP/1.1"], &["HTTP/1.0", "HTTP/1.2"]),
        host in pick(&["Host: app.example.test", "Host: APP.example.test:80"], &[
            "Host: other.example.test", "Host: a@app.example.test", "Host:", "Host: app.example.test\r\nHost: app.example.test", "",
        ]),
        framing in pick(&["", "Content-Length: {n}", "Transfer-Encoding: chunked"], &[
            "Content-Length: +{n}", "Content-Length: {n}, {n}", "Content-Length:  {n} ", "Content-Length: {n}\r\nContent-Length: {n}",
            "Content_Length: {n}", "Transfer-Encoding: Chunked", "Transfer-Encoding: xchunked", "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked, chunked", "Transfer-Encoding:\tchunked", " Transfer-Encoding: chunked",
            "Transfer-Encoding : chunked", "Transfer-Encoding: chunked\r\nContent-Length: {n}",
        ]),
        fields in prop::collection::vec(pick(&["X-A: 1", "Cookie: c=1", "Accept: */*"], &[
            "Connection: close", "Connection: keep-alive", "Connection: content-length", "Connection: host", "Connection: x-a",
            "Expect: 100-continue", "Expect: nothing", "Upgrade: websocket", "Connection: upgrade", "TE: trailers",
            "X-Forwarded-For: 203.0.113.1", "X: a\u{0}b", "X: a\rb", "Content-Type: application/grpc", "X_Forwarded_For: 1.1.1.1",
        ]), 0..4),
        body in pick(&["", "hello", "5\r\nhello\r\n0\r\n\r\n"], &[
            "0x5\r\nhello\r\n0\r\n\r\n", "5;a=b\r\nhello\r\n0\r\n\r\n", "5\nhello\r\n0\r\n\r\n",
            "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", "5 \r\nhello\r\n0\r\n\r\n",
        ]),
    ) -> Vec<u8> {
        let n = body.len().to_string();
        let mut head = format!("{method} {target} {version}\r\n");
        for f in std::iter::once(host).chain(std::iter::once(framing)).chain(fields).filter(|f| !f.is_empty()) {
            head.push_str(&f.replace("{n}", &n));
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.push_str(body);
        head.into_bytes()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn both_paths_forward_the_same_requests_or_refuse_alike(case in request()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(both(&case));
    }
}
