//! The gateway against request smuggling and HTTP/1 parser differentials:
//! every case of the corpus (`gateway_desync/corpus.rs`, from the published
//! research) is sent on its own connection to a real `opennotrd` with a
//! real client, through each path the gateway has to a service:
//!
//! - `mux`: the direct path on a multiplexed stream,
//! - `plain`: the direct path on a pooled stream of its own (a client with
//!   `multiplex: false`),
//! - `hyper`: the hyper path (the connection is handed to hyper first, by
//!   a request with `Expect: 100-continue`, then the case follows on it).
//!
//! Each case is followed by a victim's request, with its own cookie, on a
//! new connection. The service parses leniently (as many do) and records
//! every request; the test asserts that it parsed exactly the requests
//! the case should make, and that the victim got its own answer. A second
//! corpus does the same for broken or ambiguous responses from the service.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "gateway_desync/corpus.rs"]
mod corpus;

const HOST: &str = "app.example.test";

/// One case: the bytes a visitor sends, then half-closes.
pub(crate) struct Case {
    id: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

pub(crate) enum Expect {
    /// Refused with this status (or cut before it could be read, for
    /// inputs too large to send whole); nothing reaches the service.
    Refuse(u16),
    /// The request never completes: nothing reaches the service and no
    /// success is answered.
    Incomplete,
    /// Exactly these requests reach the service, in order, each answered.
    Forward(&'static [Fwd]),
    /// These reach the service and are answered; the request after them
    /// is refused with the status.
    ForwardThen(&'static [Fwd], u16),
}

/// A request the service should parse.
pub(crate) struct Fwd {
    method: &'static str,
    target: &'static [u8],
    body: &'static [u8],
    /// Fields it must not carry (lowercase names).
    absent: &'static [&'static str],
    /// Fields it must carry, with these values.
    present: &'static [(&'static str, &'static [u8])],
}

pub(crate) const FWD: Fwd = Fwd { method: "POST", target: b"/", body: b"", absent: &[], present: &[] };

// ---------------------------------------------------------------- service

/// What the service parsed.
#[derive(Debug, Clone)]
struct Parsed {
    method: String,
    target: Vec<u8>,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Parsed {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..])
    }
}

#[derive(Default)]
struct Recorder {
    parsed: Mutex<Vec<Parsed>>,
    /// Bytes it could not parse as a request.
    garbage: Mutex<Vec<Vec<u8>>>,
}

/// Scripted answers: the target `/resp/<id>` gets these bytes, then (in a
/// write of their own, a moment later: a service that writes a body it
/// should not, late) the `late` ones, and the connection closes after them
/// when `close`.
type Script = &'static [Scripted];

struct Scripted {
    id: &'static str,
    bytes: &'static [u8],
    late: &'static [u8],
    close: bool,
}

const fn answer(id: &'static str, bytes: &'static [u8]) -> Scripted {
    Scripted { id, bytes, late: b"", close: false }
}

/// A service that parses requests leniently — a `Content-Length` as Rust's
/// integer parser reads it (a `+` passes), chunked when
/// `Transfer-Encoding` mentions it anywhere — and records them; each is
/// answered `200` with `<target>|<cookie>` (no body for HEAD), unless the
/// script answers it.
async fn service(script: Script) -> (Service, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let r = rec.clone();
    let svc = tcp_service(move |s| serve_lenient(s, r.clone(), script)).await;
    (svc, rec)
}

async fn serve_lenient(mut s: TcpStream, rec: Arc<Recorder>, script: Script) {
    let mut buf = BytesMut::new();
    loop {
        let head = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let fields: Vec<(String, Vec<u8>)> =
                        req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
                    let target = req.path.unwrap_or("").as_bytes().to_vec();
                    break Some((n, req.method.unwrap_or("").to_string(), target, fields));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => break None,
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                if !buf.is_empty() {
                    rec.garbage.lock().unwrap().push(buf.to_vec());
                }
                return;
            }
        };
        let Some((n, method, target, fields)) = head else {
            rec.garbage.lock().unwrap().push(buf.to_vec());
            return;
        };
        let _ = buf.split_to(n);
        let mut p = Parsed { method, target, fields, body: Vec::new() };
        let te = p.field("transfer-encoding").map(|v| String::from_utf8_lossy(v).to_ascii_lowercase());
        if te.is_some_and(|v| v.contains("chunked")) {
            loop {
                let Some(line) = read_line(&mut s, &mut buf).await else { return };
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
                if size == 0 {
                    while read_line(&mut s, &mut buf).await.is_some_and(|l| !l.is_empty()) {}
                    break;
                }
                if !fill(&mut s, &mut buf, size + 2).await {
                    return;
                }
                p.body.extend_from_slice(&buf.split_to(size + 2)[..size]);
            }
        } else if let Some(len) =
            p.field("content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
        {
            if !fill(&mut s, &mut buf, len).await {
                return;
            }
            p.body = buf.split_to(len).to_vec();
        }
        let scripted = script.iter().find(|a| p.target == format!("/resp/{}", a.id).as_bytes());
        let (answer, late, close) = match scripted {
            Some(a) => (a.bytes.to_vec(), a.late, a.close),
            None => {
                let cookie = p.field("cookie").unwrap_or_default();
                let mut body = p.target.clone();
                body.push(b'|');
                body.extend_from_slice(cookie);
                let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                if p.method != "HEAD" {
                    a.extend_from_slice(&body);
                }
                (a, &b""[..], false)
            }
        };
        rec.parsed.lock().unwrap().push(p);
        if s.write_all(&answer).await.is_err() {
            return;
        }
        if !late.is_empty() {
            // What the late bytes race: the next request on this connection.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if s.write_all(late).await.is_err() {
                return;
            }
        }
        if close {
            return;
        }
    }
}

async fn fill(s: &mut TcpStream, buf: &mut BytesMut, len: usize) -> bool {
    while buf.len() < len {
        if s.read_buf(buf).await.unwrap_or(0) == 0 {
            return false;
        }
    }
    true
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

// ------------------------------------------------------------------- paths

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Mux,
    Plain,
    Hyper,
}

/// A server whose `http` gateway routes `app.example.test` to a service,
/// through one of the paths.
struct Rig {
    path: Path,
    gateway: SocketAddr,
    rec: Arc<Recorder>,
    _service: Service,
    _client: TestClient,
    _server: TestServer,
}

async fn rig(path: Path, script: Script) -> Rig {
    let spec =
        ServerSpec::default().plugin("http", r#"{"listen": "127.0.0.1:0", "headerTimeout": 5, "bodyTimeout": 5}"#);
    let server = TestServer::start(&spec).await;
    let (svc, rec) = service(script).await;
    let mut spec = ClientSpec::new(server.addr).domain(HOST).forward(http_fwd(svc.addr.port()));
    spec.multiplex = path != Path::Plain;
    let mut client = TestClient::start(&spec);
    let reg = client.connected().await;
    let gateway = local(public_port(&reg, 0));
    Rig { path, gateway, rec, _service: svc, _client: client, _server: server }
}

/// Sent first on the hyper path: the direct path hands a request with
/// `Expect` to hyper, which then serves the connection.
const HANDOFF: &[u8] =
    b"POST /handoff HTTP/1.1\r\nHost: app.example.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";

/// The statuses of the responses in `bytes`, informational ones included,
/// with the body of the last.
fn responses(mut bytes: &[u8], head_request: bool) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(bytes) else { return out };
        let code = resp.code.unwrap_or(0);
        let field = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_string())
        };
        let len = field("content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = field("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        bytes = &bytes[n..];
        let body = if (100..200).contains(&code) || head_request || code == 204 || code == 304 {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            while let Some(i) = bytes.windows(2).position(|w| w == b"\r\n") {
                let size =
                    usize::from_str_radix(std::str::from_utf8(&bytes[..i]).unwrap_or("").trim(), 16).unwrap_or(0);
                bytes = &bytes[i + 2..];
                if size == 0 || bytes.len() < size + 2 {
                    bytes = &bytes[bytes.len().min(2)..];
                    break;
                }
                body.extend_from_slice(&bytes[..size]);
                bytes = &bytes[size + 2..];
            }
            body
        } else if let Some(len) = len {
            let b = bytes[..len.min(bytes.len())].to_vec();
            bytes = &bytes[len.min(bytes.len())..];
            b
        } else {
            let b = bytes.to_vec();
            bytes = &[];
            b
        };
        out.push((code, body));
    }
}

/// What a visitor got: the responses, the raw bytes, and whether all it
/// sent could be written.
struct Visit {
    responses: Vec<(u16, Vec<u8>)>,
    raw: Vec<u8>,
    written: bool,
}

/// Sends `bytes` on a new connection (after the hand-over request when
/// `handoff`), half-closes, and reads until the gateway closes.
async fn visit(gateway: SocketAddr, handoff: bool, bytes: &[u8], head_request: bool) -> Visit {
    let mut s = TcpStream::connect(gateway).await.expect("connect to the gateway");
    if handoff {
        s.write_all(HANDOFF).await.unwrap();
        let mut got = Vec::new();
        within(WAIT, "the hand-over request's answer", async {
            while !responses(&got, false).iter().any(|(c, _)| *c == 200) {
                assert!(s.read_buf(&mut got).await.unwrap() > 0, "closed before answering the hand-over request");
            }
        })
        .await;
    }
    let written = s.write_all(bytes).await.is_ok() && s.shutdown().await.is_ok();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway kept the connection open after the visitor's last byte");
    Visit { responses: responses(&got, head_request), raw: got, written }
}

/// A victim's request on a new connection, by the same path (on the hyper
/// path, after the hand-over: so it takes hyper's pooled connections): it
/// must get its own answer.
async fn victim(rig: &Rig, id: &str) {
    let req = format!("GET /victim HTTP/1.1\r\nHost: {HOST}\r\nCookie: v={id}\r\nConnection: close\r\n\r\n");
    let resp = visit(rig.gateway, rig.path == Path::Hyper, req.as_bytes(), false).await.responses;
    let want = format!("/victim|v={id}");
    assert!(
        matches!(resp.last(), Some((200, body)) if body == want.as_bytes()),
        "{:?} {id}: the victim got {:?} instead of its own answer",
        rig.path,
        resp.iter().map(|(c, b)| (c, String::from_utf8_lossy(b).to_string())).collect::<Vec<_>>()
    );
}

/// What the service parsed since `from`, less the hand-over request and
/// the victim's.
fn parsed_since(rig: &Rig, from: usize, id: &str) -> Vec<Parsed> {
    let mut all: Vec<Parsed> = rig.rec.parsed.lock().unwrap()[from..].to_vec();
    let last = all.pop().expect("the victim's request reached the service");
    assert_eq!(last.target, b"/victim", "{:?} {id}: the last request the service parsed is not the victim's", rig.path);
    assert_eq!(last.field("cookie"), Some(format!("v={id}").as_bytes()), "{:?} {id}: the victim's cookie", rig.path);
    if rig.path == Path::Hyper {
        // The case's hand-over request first, the victim's last.
        let victims = all.pop();
        assert!(victims.is_some_and(|p| p.target == b"/handoff"), "{:?} {id}: {all:?}", rig.path);
        assert!(all.first().is_some_and(|p| p.target == b"/handoff"), "{:?} {id}: {all:?}", rig.path);
        all.remove(0);
    }
    all
}

async fn run_case(rig: &Rig, case: &Case) {
    let from = rig.rec.parsed.lock().unwrap().len();
    let garbage = rig.rec.garbage.lock().unwrap().len();
    let Visit { responses: resp, written, .. } =
        visit(rig.gateway, rig.path == Path::Hyper, &case.bytes, case.bytes.starts_with(b"HEAD ")).await;
    victim(rig, case.id).await;
    let parsed = parsed_since(rig, from, case.id);
    let statuses: Vec<u16> = resp.iter().map(|(c, _)| *c).filter(|c| *c >= 200).collect();
    let id = format!("{:?} {}", rig.path, case.id);
    assert_eq!(rig.rec.garbage.lock().unwrap().len(), garbage, "{id}: the service was sent bytes it could not parse");
    match case.expect {
        Expect::Refuse(status) => {
            assert!(parsed.is_empty(), "{id}: refused, yet the service parsed {parsed:?}");
            assert!(
                statuses == [status] || (statuses.is_empty() && !written),
                "{id}: expected a {status} alone, got {statuses:?}"
            );
        }
        Expect::Incomplete => {
            assert!(parsed.is_empty(), "{id}: incomplete, yet the service parsed {parsed:?}");
            assert!(statuses.iter().all(|s| *s >= 400), "{id}: incomplete, yet answered {statuses:?}");
        }
        Expect::Forward(want) | Expect::ForwardThen(want, _) => {
            let mut statuses_want = vec![200; want.len()];
            if let Expect::ForwardThen(_, refused) = case.expect {
                statuses_want.push(refused);
            }
            assert_eq!(statuses, statuses_want, "{id}: statuses");
            assert_eq!(parsed.len(), want.len(), "{id}: the service parsed {parsed:?}");
            for (p, w) in parsed.iter().zip(want) {
                assert_eq!((p.method.as_str(), &p.target[..]), (w.method, w.target), "{id}");
                assert_eq!(p.body, w.body, "{id}: body");
                for a in w.absent {
                    assert!(p.field(a).is_none(), "{id}: {a} was forwarded: {p:?}");
                }
                for (n, v) in w.present {
                    assert_eq!(p.field(n), Some(*v), "{id}: {n} in {p:?}");
                }
            }
        }
    }
}

async fn run_corpus(path: Path) {
    let rig = rig(path, RESPONSES_SCRIPT).await;
    for case in corpus::cases() {
        run_case(&rig, &case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_corpus_on_multiplexed_streams() {
    run_test(run_corpus(Path::Mux)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_corpus_on_plain_streams() {
    run_test(run_corpus(Path::Plain)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_corpus_on_the_hyper_path() {
    run_test(run_corpus(Path::Hyper)).await;
}

#[test]
fn the_corpus_is_large_and_unique() {
    let cases = corpus::cases();
    assert!(cases.len() >= 40, "{}", cases.len());
    let mut ids: Vec<_> = cases.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), cases.len(), "duplicate case ids");
}

// -------------------------------------------------------------- responses

/// Broken and ambiguous responses from a service, by case id.
const RESPONSES_SCRIPT: Script = &[
    answer("cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    answer("cl-conflict", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 12\r\n\r\nokHTTP/1.1 2"),
    answer("cl-invalid", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"),
    answer("cl-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"),
    Scripted { close: true, ..answer("te-not-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz") },
    Scripted { close: true, ..answer("close-delimited", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok") },
    answer("204-with-body", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
    answer("304-with-cl", b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nContent-Length: 1000\r\n\r\n"),
    answer(
        "1xx-sequence",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ),
    answer("101-unrequested", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    answer("obs-fold", b"HTTP/1.1 200 OK\r\nX-Note: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
    answer("ws-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"),
    answer(
        "extra-bytes",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 302 Found\r\nLocation: //evil.example.test/\r\nContent-Length: 0\r\n\r\n",
    ),
    answer("bad-chunk-midstream", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0x10\r\n"),
    answer("te-on-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    answer("status-invalid", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok"),
    answer("chunked-to-http10", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    answer("upgrade-refused", b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n"),
    answer("early-redirect", b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"),
    answer("head-with-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    // A body the service should not send (to HEAD, with a 204 or 304),
    // written late: if the connection were reused, the next visitor would
    // read it as its response.
    Scripted { late: POISON, ..answer("head-late-body", b"HTTP/1.1 200 OK\r\nContent-Length: 51\r\n\r\n") },
    Scripted { late: POISON, ..answer("204-late-body", b"HTTP/1.1 204 No Content\r\nContent-Length: 51\r\n\r\n") },
    Scripted { late: POISON, ..answer("304-late-body", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 51\r\n\r\n") },
];

/// A complete response, for a late body to be taken for.
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!";

/// A response case: the request, and the final status and body the
/// visitor must get (`None`: a body cut short, never completed by the
/// gateway).
struct RespCase {
    id: &'static str,
    request: &'static str,
    expect: Option<(u16, &'static [u8])>,
}

fn get(id: &'static str, expect: Option<(u16, &'static [u8])>) -> RespCase {
    RespCase { id, request: "", expect }
}

fn response_cases() -> Vec<RespCase> {
    vec![
        // Both framings: chunked wins (RFC 9112 §6.3) and the connection
        // to the service is never used again.
        get("cl-and-te", Some((200, b"ok"))),
        get("cl-conflict", Some((502, b""))),
        get("cl-invalid", Some((502, b""))),
        get("cl-list", Some((502, b""))),
        // A coding not ending in chunked: the body runs to the close.
        get("te-not-chunked", Some((200, b"zz"))),
        get("close-delimited", Some((200, b"ok"))),
        get("204-with-body", Some((204, b""))),
        get("304-with-cl", Some((304, b""))),
        get("1xx-sequence", Some((200, b"ok"))),
        get("101-unrequested", Some((502, b""))),
        get("obs-fold", Some((502, b""))),
        get("ws-before-colon", Some((502, b""))),
        get("extra-bytes", Some((200, b"ok"))),
        get("bad-chunk-midstream", None),
        get("te-on-http10", Some((502, b""))),
        get("status-invalid", Some((502, b""))),
        RespCase {
            id: "chunked-to-http10",
            request: "GET /resp/chunked-to-http10 HTTP/1.0\r\nHost: app.example.test\r\n\r\n",
            expect: Some((200, b"ok")),
        },
        RespCase {
            id: "upgrade-refused",
            request: "GET /resp/upgrade-refused HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            expect: Some((426, b"")),
        },
        RespCase {
            id: "early-redirect",
            request: "POST /resp/early-redirect HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 10\r\n\r\nabcdefghij",
            expect: Some((302, b"")),
        },
        RespCase {
            id: "head-with-cl",
            request: "HEAD /resp/head-with-cl HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
            expect: Some((200, b"")),
        },
        RespCase {
            id: "head-late-body",
            request: "HEAD /resp/head-late-body HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
            expect: Some((200, b"")),
        },
        get("204-late-body", Some((204, b""))),
        get("304-late-body", Some((304, b""))),
    ]
}

async fn run_responses(path: Path) {
    let rig = rig(path, RESPONSES_SCRIPT).await;
    for case in response_cases() {
        let request = match case.request {
            "" => format!("GET /resp/{} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", case.id),
            r => r.to_string(),
        };
        let got = visit(rig.gateway, path == Path::Hyper, request.as_bytes(), request.starts_with("HEAD ")).await;
        let resp = got.responses;
        let finals: Vec<_> = resp.iter().filter(|(c, _)| *c >= 200).collect();
        match case.expect {
            // An error page's text is the gateway's; a response's body is
            // the service's, which must come through exactly.
            Some((status, body)) => assert!(
                matches!(finals.as_slice(), [(s, b)] if *s == status && (status >= 500 || b == body)),
                "{path:?} {}: expected {status} {:?}, got {:?}",
                case.id,
                String::from_utf8_lossy(body),
                resp.iter().map(|(c, b)| (c, String::from_utf8_lossy(b).to_string())).collect::<Vec<_>>()
            ),
            // The broken chunk never reaches the visitor, and the body it
            // sees never ends: it can tell it was cut.
            None => {
                let raw = String::from_utf8_lossy(&got.raw);
                let cut = !raw.contains("0x10") && !raw.ends_with("0\r\n\r\n");
                assert!(cut, "{path:?} {}: {raw:?}", case.id);
            }
        }
        // Whatever the service did, the next visitor gets its own answer.
        victim(&rig, case.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_corpus_on_multiplexed_streams() {
    run_test(run_responses(Path::Mux)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_corpus_on_plain_streams() {
    run_test(run_responses(Path::Plain)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_corpus_on_the_hyper_path() {
    run_test(run_responses(Path::Hyper)).await;
}
