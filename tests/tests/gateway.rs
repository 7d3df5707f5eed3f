//! The embedded gateway (`http`, `h2c`): real servers and clients in
//! process, visited with real `curl`, a small WebSocket client and Python's
//! gRPC.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opennotr_gateway::Gateway;
use opennotr_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A server whose `http` and `h2c` gateways listen on loopback, and its router.
async fn gateway_server(extra: &[(&str, &str)]) -> (TestServer, Arc<Gateway>) {
    let mut spec = ServerSpec::default()
        .plugin("http", r#"{"listen": "127.0.0.1:0", "headerTimeout": 5, "idleTimeout": 30}"#)
        .plugin("h2c", r#"{"listen": "127.0.0.1:0"}"#);
    for (name, json) in extra {
        spec = spec.plugin(name, json);
    }
    let mut registry = builtin_plugins();
    let gateway = opennotr_gateway::register(&mut registry);
    (TestServer::start_with(spec.config(), &registry).await, gateway)
}

fn dom(label: &str) -> String {
    format!("{label}.{ZONE}")
}

// ------------------------------------------------------------ services

/// An HTTP/1.1 + HTTP/2 service: `/download/N` streams N pattern bytes
/// (chunked), `/upload` answers `<len> <sha256>` of the body, anything else
/// answers its name, the request's version and headers.
async fn http_service(name: &'static str) -> Service {
    tcp_service(move |s| async move {
        let svc = hyper::service::service_fn(move |req| respond(name, req));
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(s), svc)
            .await;
    })
    .await
}

async fn respond(name: &'static str, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(n) = path.strip_prefix("/download/") {
        let n: usize = n.parse().unwrap_or(0);
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
        tokio::spawn(async move {
            let data = pattern(7, n);
            for chunk in data.chunks(65536) {
                if tx.send_data(Bytes::copy_from_slice(chunk)).await.is_err() {
                    return;
                }
            }
        });
        return Ok(Response::new(body.boxed()));
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                len += data.len();
                ctx.update(&data);
            }
        }
        return Ok(Response::new(full(format!("{len} {}", hex(ctx.finish().as_ref())))));
    }
    let mut text = format!("service={name}\nversion={:?}\npath={path}\n", req.version());
    for (k, v) in req.headers() {
        text += &format!("{k}: {}\n", v.to_str().unwrap_or("?"));
    }
    Ok(Response::new(full(text)))
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).boxed()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind(local(0)).await.unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- curl

struct Curl {
    status: u16,
    body: String,
    stderr: String,
}

/// Runs curl with `args` resolving `domain:port` to loopback; the status is
/// the last response's.
async fn curl(domain: &str, port: u16, args: &[&str]) -> Curl {
    let resolve = format!("{domain}:{port}:127.0.0.1");
    let out = within(
        Duration::from_secs(30),
        "curl",
        Command::new(opennotr_tests::tools::need("curl"))
            .args(["-sS", "--noproxy", "*", "--max-time", "20", "--resolve", &resolve, "-w", "\n%{http_code}"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Curl {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn url(domain: &str, port: u16, path: &str) -> String {
    format!("http://{domain}:{port}{path}")
}

fn header_of(body: &str, name: &str) -> Option<String> {
    body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
}

async fn connect_http(server: &TestServer, domain: &str, local: u16) -> (TestClient, u16) {
    let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(domain).forward(http_fwd(local)));
    let reg = c.connected().await;
    (c, public_port(&reg, 0))
}

// --------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_domains_share_one_port_routed_by_host() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let (sa, sb) = (http_service("A").await, http_service("B").await);
        let (da, db) = (dom("alpha"), dom("beta"));
        let (_ca, pa) = connect_http(&server, &da, sa.addr.port()).await;
        let (_cb, pb) = connect_http(&server, &db, sb.addr.port()).await;
        assert_eq!(pa, pb, "both domains share the gateway's port");

        let a = curl(&da, pa, &[&url(&da, pa, "/a")]).await;
        assert_eq!(a.status, 200, "{}{}", a.body, a.stderr);
        assert!(a.body.starts_with("service=A\n"), "{}", a.body);
        let b = curl(&db, pa, &[&url(&db, pa, "/b"), "-H", "X-Forwarded-For: 203.0.113.9"]).await;
        assert!(b.body.starts_with("service=B\n"), "{}", b.body);

        // Forwarded headers, as the client's service sees them.
        assert_eq!(header_of(&a.body, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(header_of(&b.body, "x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
        assert_eq!(header_of(&a.body, "x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(header_of(&a.body, "x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(header_of(&a.body, "x-forwarded-host"), Some(format!("{da}:{pa}")));
        assert_eq!(header_of(&a.body, "host"), Some(format!("{da}:{pa}")));

        // Host is case-insensitive.
        let upper = da.to_uppercase();
        let r = curl(&upper, pa, &[&url(&upper, pa, "/")]).await;
        assert!(r.body.starts_with("service=A\n"), "{}", r.body);

        // Unknown domain: a 404 page naming it.
        let unknown = dom("nobody");
        let r = curl(&unknown, pa, &[&url(&unknown, pa, "/")]).await;
        assert_eq!(r.status, 404);
        assert!(r.body.contains(&unknown), "{}", r.body);

        // Keep-alive: two requests on one connection.
        let r = curl(&da, pa, &["-v", &url(&da, pa, "/1"), &url(&da, pa, "/2")]).await;
        assert!(r.stderr.contains("Re-using existing connection"), "{}", r.stderr);
        assert_eq!(r.body.matches("service=A").count(), 2, "{}", r.body);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_stream_both_ways() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let svc = http_service("A").await;
        let d = dom("bulk");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let dir = std::env::temp_dir().join(format!("opennotr-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let n = 3 * 1024 * 1024 + 17;
        let down = dir.join("down.bin");
        let r =
            curl(&d, port, &["-o", down.to_str().unwrap(), "-D", "-", &url(&d, port, &format!("/download/{n}"))]).await;
        assert_eq!(r.status, 200, "{}", r.stderr);
        assert!(r.body.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{}", r.body);
        let got = std::fs::read(&down).unwrap();
        assert_eq!(got.len(), n);
        assert_eq!(sha256(&got), sha256(&pattern(7, n)));

        let up = dir.join("up.bin");
        let data = pattern(11, 2 * 1024 * 1024 + 5);
        std::fs::write(&up, &data).unwrap();
        let file = format!("@{}", up.display());
        let r =
            curl(&d, port, &["-H", "Transfer-Encoding: chunked", "--data-binary", &file, &url(&d, port, "/upload")])
                .await;
        assert_eq!(r.status, 200, "{}", r.stderr);
        assert_eq!(r.body, format!("{} {}", data.len(), sha256(&data)));
        let _ = std::fs::remove_dir_all(&dir);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_service_is_a_bad_gateway() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let d = dom("refusing");
        let (_c, port) = connect_http(&server, &d, closed_port().await).await;
        let r = curl(&d, port, &[&url(&d, port, "/")]).await;
        assert_eq!(r.status, 502, "{}", r.body);
        assert!(r.body.contains("bad gateway"), "{}", r.body);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_take_the_route_and_a_gone_client_is_503() {
    run_test(async {
        let (server, gw) = gateway_server(&[]).await;
        let svc = http_service("A").await;
        let proxy = Proxy::start(server.addr).await;
        let d = dom("again");
        let mut c = TestClient::start(&ClientSpec::new(proxy.addr).domain(&d).forward(http_fwd(svc.addr.port())));
        let port = public_port(&c.connected().await, 0);
        assert_eq!(curl(&d, port, &[&url(&d, port, "/")]).await.status, 200);
        let first = gw.routes();
        assert_eq!(first.len(), 1, "{first:?}");

        // The connection drops; the client comes back (same client id).
        proxy.cut_all();
        let reg = c.connected().await;
        assert_eq!(public_port(&reg, 0), port);
        let g = gw.clone();
        wait_until("the route to move to the new session", || {
            let r = g.routes();
            r.len() == 1 && r[0].2 != first[0].2
        })
        .await;
        let r = curl(&d, port, &[&url(&d, port, "/")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.starts_with("service=A\n"));

        // The client goes: the route goes, visitors get 503 at once.
        c.stop().await;
        server.wait_no_sessions().await;
        assert!(gw.routes().is_empty(), "{:?}", gw.routes());
        let t = Instant::now();
        let r = curl(&d, port, &[&url(&d, port, "/")]).await;
        assert!(matches!(r.status, 502 | 503), "{} {}", r.status, r.body);
        assert!(r.body.contains("client not connected"), "{}", r.body);
        assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_names_route_and_admin_url_is_refused() {
    run_test(async {
        // h2c in the original's external mode, its admin API not running:
        // the registration fails and the forward is refused with the reason.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let h2c =
            format!(r#"{{"adminUrl": "http://127.0.0.1:{closed}/upstreams", "adminSecret": "0123456789abcdef"}}"#);
        let spec =
            ServerSpec::default().plugin("http", r#"{"listen": "127.0.0.1:0", "wildcard": true}"#).plugin("h2c", &h2c);
        let server = TestServer::start(&spec).await;
        let svc = http_service("A").await;
        let d = dom("wild");
        let mut c = TestClient::start(
            &ClientSpec::new(server.addr).domain(&d).forward(http_fwd(svc.addr.port())).forward(h2c_fwd(1)),
        );
        let reg = c.connected().await;
        let port = public_port(&reg, 0);
        let err = reg.forwards[1].error.clone().expect("h2c refused");
        assert!(err.contains("external gateway") && err.contains(&format!("127.0.0.1:{closed}")), "{err}");
        assert_eq!(reg.forwards[0].url.as_deref(), Some(format!("http://{d}:{port}").as_str()));

        // Wildcard: any name below the domain routes to it.
        let below = format!("x.y.{d}");
        let r = curl(&below, port, &[&url(&below, port, "/")]).await;
        assert!(r.body.starts_with("service=A\n"), "{} {}", r.status, r.body);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let svc = http_service("H2").await;
        let d = dom("grpc");
        let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(&d).forward(h2c_fwd(svc.addr.port())));
        let port = public_port(&c.connected().await, 0);
        let r = curl(
            &d,
            port,
            &["--http2-prior-knowledge", "-w", "\n%{http_version}\n%{http_code}", &url(&d, port, "/h2")],
        )
        .await;
        // curl keeps the last -w: the version curl spoke, then the status
        // the harness reads.
        assert_eq!(r.status, 200, "{}{}", r.body, r.stderr);
        assert!(r.body.starts_with("service=H2\nversion=HTTP/2.0\npath=/h2\n"), "{}", r.body);
        assert!(r.body.ends_with("\n2"), "curl did not speak HTTP/2: {}", r.body);
        assert_eq!(header_of(&r.body, "x-forwarded-host"), Some(format!("{d}:{port}")));

        let n = 1024 * 1024 + 3;
        let r = curl(
            &d,
            port,
            &[
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}\n%{http_code}",
                &url(&d, port, &format!("/download/{n}")),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(r.body.ends_with(&n.to_string()), "{}", r.body);
        server.stop().await;
    })
    .await;
}

// ----------------------------------------------------------- websocket

fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn ws_accept(key: &str) -> String {
    let s = format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes()).as_ref())
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).await.unwrap() == 0 {
            break;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        lines.push(l);
    }
    lines
}

/// Reads one frame: (opcode, payload), unmasking if masked.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.unwrap();
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        len = u64::from(r.read_u16().await.unwrap());
    } else if len == 127 {
        len = r.read_u64().await.unwrap();
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await.unwrap();
    }
    let mut p = vec![0u8; len as usize];
    r.read_exact(&mut p).await.unwrap();
    if masked {
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    (h[0] & 0x0f, p)
}

fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A WebSocket echo server: answers the handshake, echoes text frames.
async fn ws_echo() -> Service {
    tcp_service(|s| async move {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let head = read_head(&mut r).await;
        let key = head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
        });
        let Some(key) = key else { return };
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            ws_accept(&key)
        );
        w.write_all(resp.as_bytes()).await.unwrap();
        loop {
            let (op, p) = read_frame(&mut r).await;
            if op == 8 {
                let _ = w.write_all(&frame(8, &p, None)).await;
                return;
            }
            w.write_all(&frame(op, &p, None)).await.unwrap();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_round_trip() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let svc = ws_echo().await;
        let d = dom("ws");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;

        let s = TcpStream::connect(local(port)).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let key = base64(b"0123456789abcdef");
        let req = format!(
            "GET /chat HTTP/1.1\r\nHost: {d}:{port}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        w.write_all(req.as_bytes()).await.unwrap();
        let head = within(WAIT, "the 101", read_head(&mut r)).await;
        assert!(head[0].starts_with("HTTP/1.1 101"), "{head:?}");
        let accept = head
            .iter()
            .find_map(|l| l.strip_prefix("sec-websocket-accept: ").or(l.strip_prefix("Sec-WebSocket-Accept: ")));
        assert_eq!(accept, Some(ws_accept(&key).as_str()), "{head:?}");
        for (i, msg) in ["hello", "through the gateway", &"x".repeat(70_000)].iter().enumerate() {
            w.write_all(&frame(1, msg.as_bytes(), Some([1, 2, 3, i as u8]))).await.unwrap();
            let (op, p) = within(WAIT, "an echoed frame", read_frame(&mut r)).await;
            assert_eq!(op, 1);
            assert_eq!(p, msg.as_bytes());
        }
        w.write_all(&frame(8, &[3, 232], Some([9, 9, 9, 9]))).await.unwrap();
        let (op, _) = within(WAIT, "the close frame", read_frame(&mut r)).await;
        assert_eq!(op, 8);
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------- gRPC

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_over_h2c() {
    python_with_grpc();
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let (mut grpc_server, local_port) = grpc_echo_server().await;

        let d = dom("rpc");
        let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(&d).forward(h2c_fwd(local_port)));
        let port = public_port(&c.connected().await, 0);
        run_grpc_client(port, &d, None).await;
        drop(grpc_server.stdin.take());
        let _ = grpc_server.kill().await;
        server.stop().await;
    })
    .await;
}

/// Requests of keep-alive visitors reuse pooled connections to the
/// client's service (one tunnel stream each) instead of opening a stream
/// and a connection per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let svc = tcp_service(move |s| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let svc = hyper::service::service_fn(move |req| respond("P", req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            }
        })
        .await;
        let d = dom("pooled");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let u = url(&d, port, "/");
        for _ in 0..3 {
            // One visitor connection, five requests on it.
            let r = curl(&d, port, &[&u, &u, &u, &u, &u]).await;
            assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
            assert_eq!(r.body.matches("service=P").count(), 5, "{}", r.body);
        }
        let n = accepted.load(Ordering::SeqCst);
        assert!((1..=4).contains(&n), "15 requests took {n} connections to the service");
        server.stop().await;
    })
    .await;
}

// ------------------------------------------------------------ timeouts

/// A server whose `http` gateway has these timeouts (seconds). The one a
/// test is not about is set far beyond [`CLOSE_GUARD`], so that only the
/// other can close a connection within it.
async fn timeouts_server(header_timeout: u64, idle_timeout: u64) -> TestServer {
    let http =
        format!(r#"{{"listen": "127.0.0.1:0", "headerTimeout": {header_timeout}, "idleTimeout": {idle_timeout}}}"#);
    TestServer::start(&ServerSpec::default().plugin("http", &http)).await
}

/// Reads until what was read contains `needle`, failing if the connection
/// closes first.
async fn read_until<R: AsyncReadExt + Unpin>(r: &mut R, got: &mut Vec<u8>, needle: &str) {
    within(WAIT, needle, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(got).contains(needle) {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    panic!("the connection closed before {needle:?}; read: {:?}", String::from_utf8_lossy(got))
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

/// One complete request on `s`; returns the response's status line and body
/// (the service answers with a Content-Length).
async fn request_once(s: &mut BufReader<TcpStream>, host: &str, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    let head = within(WAIT, "the response head", read_head(s)).await;
    let len: usize = head
        .iter()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = vec![0u8; len];
    within(WAIT, "the response body", s.read_exact(&mut body)).await.unwrap();
    (head[0].clone(), String::from_utf8_lossy(&body).into_owned())
}

/// A visitor that starts a request head and never finishes it (still
/// sending a byte now and then, as a slowloris does) is cut off after
/// `headerTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_request_head_is_cut_after_the_header_timeout() {
    run_test(async {
        let server = timeouts_server(1, 600).await;
        let svc = http_service("A").await;
        let d = dom("slowhead");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;

        let s = TcpStream::connect(local(port)).await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(format!("GET / HTTP/1.1\r\nHost: {d}\r\nX-Slow: ").as_bytes()).await.unwrap();
        // Pacing only: the bytes keep the connection busy, so the idle
        // timer has no part in what closes it. Stops when writes fail.
        let trickle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if w.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let got = read_until_closed(&mut r).await;
        trickle.abort();
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "expected the connection closed (or a 408), got {:?}",
            String::from_utf8_lossy(&got)
        );
        server.stop().await;
    })
    .await;
}

/// A keep-alive visitor that went silent after a complete request is
/// closed after `idleTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    run_test(async {
        // hyper's header timeout also runs while it waits for the next
        // request's head: set beyond the guard, only the idle timer is left.
        let server = timeouts_server(600, 1).await;
        let svc = http_service("A").await;
        let d = dom("idle");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;

        let mut s = BufReader::new(TcpStream::connect(local(port)).await.unwrap());
        let (status, body) = request_once(&mut s, &d, "/one").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(body.starts_with("service=A\n"), "{body}");
        let rest = read_until_closed(&mut s).await;
        assert!(rest.is_empty(), "nothing more was asked for: {:?}", String::from_utf8_lossy(&rest));
        server.stop().await;
    })
    .await;
}

type BodySender = http_body_util::channel::Sender<Bytes, Infallible>;

/// An HTTP/1.1 service: `/slow` streams (chunked) what the test sends
/// through the sender it hands out, one per request; other paths answer
/// like [`http_service`].
async fn streaming_service() -> (Service, tokio::sync::mpsc::UnboundedReceiver<BodySender>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let svc = tcp_service(move |s| {
        let tx = tx.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    if req.uri().path() != "/slow" {
                        return respond("S", req).await;
                    }
                    let (sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
                    let _ = tx.send(sender);
                    Ok(Response::new(body.boxed()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        }
    })
    .await;
    (svc, rx)
}

/// A response still streaming keeps its visitor connection open, however
/// long the stream pauses: the idle timer counts only connections with no
/// request in flight. Without a clock: a second visitor connection, quiet
/// after the first one's last byte, is closed by the idle timer first.
/// The first one then still serves a request pipelined behind the stream
/// (a gateway closing it, even gracefully, would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_is_not_cut_by_the_idle_timeout() {
    run_test(async {
        let server = timeouts_server(600, 1).await;
        let (svc, mut senders) = streaming_service().await;
        let d = dom("stream");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;

        let mut a = TcpStream::connect(local(port)).await.unwrap();
        a.write_all(format!("GET /slow HTTP/1.1\r\nHost: {d}\r\n\r\n").as_bytes()).await.unwrap();
        let mut sender = within(WAIT, "the service to get /slow", senders.recv()).await.unwrap();
        sender.send_data(Bytes::from_static(b"first-chunk\n")).await.unwrap();
        let mut got = Vec::new();
        read_until(&mut a, &mut got, "first-chunk").await;
        assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));

        // B's last byte comes after A's: once B is closed as idle, A has
        // been without traffic for longer than idleTimeout.
        let mut b = BufReader::new(TcpStream::connect(local(port)).await.unwrap());
        let (status, _) = request_once(&mut b, &d, "/b").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(read_until_closed(&mut b).await.is_empty());

        a.write_all(format!("GET /after HTTP/1.1\r\nHost: {d}\r\n\r\n").as_bytes()).await.unwrap();
        sender.send_data(Bytes::from_static(b"last-chunk\n")).await.unwrap();
        drop(sender);
        read_until(&mut a, &mut got, "path=/after\n").await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("last-chunk\n") && text.contains("0\r\n\r\n"), "{text}");
        server.stop().await;
    })
    .await;
}

// ------------------------------------------------- the direct HTTP/1.1 path

/// What a scripted service saw of one request: its head's lines and body.
type Seen = Arc<std::sync::Mutex<Vec<(Vec<String>, Vec<u8>)>>>;

/// An HTTP/1.1 service that answers from a script, byte for byte, so that
/// the tests choose the framing and headers the gateway gets: `/len`
/// (Content-Length, hop-by-hop headers), `/chunked` (chunks and a trailer),
/// `/head` (HEAD: a length and no body), `/close` (HTTP/1.0, the body ends
/// with the connection), `/once` (a length, then the connection closes
/// without saying so: the keep-alive race).
async fn scripted_service() -> (Service, Seen, Arc<std::sync::atomic::AtomicUsize>) {
    let seen: Seen = Default::default();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (log, count) = (seen.clone(), accepted.clone());
    let svc = tcp_service(move |s| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = log.clone();
        async move {
            let mut s = BufReader::new(s);
            loop {
                let head = read_head(&mut s).await;
                let Some(line) = head.first().cloned() else { return };
                let len = head
                    .iter()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                    .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await.unwrap();
                log.lock().unwrap().push((head, body));
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let answer: &[u8] = match path.as_str() {
                    "/len" => {
                        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
                                Keep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello"
                    }
                    "/chunked" => {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
                                    3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n"
                    }
                    "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                    "/close" => b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
                    "/once" => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce",
                    _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                };
                s.get_mut().write_all(answer).await.unwrap();
                if path == "/close" || path == "/once" {
                    return;
                }
            }
        }
    })
    .await;
    (svc, seen, accepted)
}

/// Sends `GET path` for `host` on the kept-alive connection `s` and reads
/// the response.
async fn get(s: &mut BufReader<TcpStream>, host: &str, path: &str) -> (Vec<String>, Vec<u8>) {
    s.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    read_response(s, false).await
}

/// One response from `r`: head lines and body (by Content-Length, chunked
/// with the trailer kept, or to the connection's end).
async fn read_response<R: AsyncBufReadExt + Unpin>(r: &mut R, head_request: bool) -> (Vec<String>, Vec<u8>) {
    within(WAIT, "a response", async {
        let head = read_head(r).await;
        assert!(!head.is_empty(), "the connection closed before a response");
        let field = |name: &str| {
            head.iter().find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
            })
        };
        let mut body = Vec::new();
        if head_request {
        } else if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            // Chunk-size lines and data lines alternate (the scripts' data
            // has no line breaks); after the last chunk, trailers up to an
            // empty line.
            let mut size_line = true;
            let mut last = false;
            loop {
                let mut l = String::new();
                assert!(r.read_line(&mut l).await.unwrap() > 0, "the chunked body ended early");
                body.extend_from_slice(l.as_bytes());
                if last && l == "\r\n" {
                    break;
                }
                if size_line && l.split(';').next().is_some_and(|n| n.trim() == "0") {
                    last = true;
                }
                size_line = !size_line || last;
            }
        } else if let Some(len) = field("content-length") {
            body.resize(len.parse().unwrap(), 0);
            r.read_exact(&mut body).await.unwrap();
        } else {
            r.read_to_end(&mut body).await.unwrap();
        }
        (head, body)
    })
    .await
}

/// Pipelined requests of every framing on one keep-alive connection: each
/// response arrives whole and in order, hop-by-hop headers go both ways,
/// forwarding headers are added, and a body-less end waits for the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framing_and_headers_on_one_connection() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let (svc, seen, _) = scripted_service().await;
        let d = dom("framing");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;

        let mut s = BufReader::new(TcpStream::connect(local(port)).await.unwrap());
        let requests = format!(
            "GET /len HTTP/1.1\r\nHost: {d}\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: keep-alive, X-Hop\r\n\
             X-Hop: secret\r\nProxy-Authorization: Basic eA==\r\nX-Real-IP: 6.6.6.6\r\nTE: trailers, gzip\r\n\r\n\
             POST /len HTTP/1.1\r\nHost: {d}\r\nContent-Length: 3\r\n\r\nabc\
             HEAD /head HTTP/1.1\r\nHost: {d}\r\n\r\n\
             GET /chunked HTTP/1.1\r\nHost: {d}\r\n\r\n"
        );
        s.get_mut().write_all(requests.as_bytes()).await.unwrap();

        let (head, body) = read_response(&mut s, false).await;
        assert_eq!(head[0], "HTTP/1.1 200 OK");
        assert_eq!(body, b"hello");
        let lower: Vec<String> = head.iter().map(|l| l.to_ascii_lowercase()).collect();
        for gone in ["connection:", "x-private:", "keep-alive:"] {
            assert!(!lower.iter().any(|l| l.starts_with(gone)), "{gone} reached the visitor: {head:?}");
        }
        let (head, body) = read_response(&mut s, false).await;
        assert_eq!((head[0].as_str(), &body[..]), ("HTTP/1.1 200 OK", &b"hello"[..]));
        let (head, _) = read_response(&mut s, true).await;
        assert_eq!(head[0], "HTTP/1.1 200 OK");
        assert!(head.iter().any(|l| l == "Content-Length: 100"), "{head:?}");
        let (head, body) = read_response(&mut s, false).await;
        assert!(head.iter().any(|l| l == "Transfer-Encoding: chunked"), "{head:?}");
        assert_eq!(body, b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n");

        // A body that ends with the service's connection: the visitor's
        // connection ends after it too (it has no other end).
        let (head, body) = get(&mut s, &d, "/close").await;
        assert_eq!(head[0], "HTTP/1.1 200 OK");
        assert!(head.iter().any(|l| l.eq_ignore_ascii_case("connection: close")), "{head:?}");
        assert_eq!(body, b"until the end");

        let seen = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen.iter().map(|(h, _)| h[0].as_str()).collect();
        assert_eq!(
            paths,
            [
                "GET /len HTTP/1.1",
                "POST /len HTTP/1.1",
                "HEAD /head HTTP/1.1",
                "GET /chunked HTTP/1.1",
                "GET /close HTTP/1.1"
            ]
        );
        let first: Vec<String> = seen[0].0.iter().map(|l| l.to_ascii_lowercase()).collect();
        let has = |l: &str| first.iter().any(|x| x == l);
        assert!(has("x-forwarded-for: 203.0.113.9, 127.0.0.1"), "{first:?}");
        assert!(has("x-real-ip: 127.0.0.1") && has("x-forwarded-proto: http"), "{first:?}");
        assert!(has(&format!("x-forwarded-host: {d}")) && has("te: trailers"), "{first:?}");
        for gone in ["x-hop:", "connection:", "proxy-authorization:", "x-real-ip: 6.6.6.6"] {
            assert!(!first.iter().any(|l| l.starts_with(gone)), "{gone} reached the service: {first:?}");
        }
        assert_eq!(seen[1].1, b"abc");
        server.stop().await;
    })
    .await;
}

/// A service that closes its connection after every response without
/// saying so: the gateway notices the pooled connection is gone (or, in
/// the race, sends a GET again on a fresh one) so no visitor sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_service_closed_is_not_reused() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let (svc, _, accepted) = scripted_service().await;
        let d = dom("once");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let mut s = BufReader::new(TcpStream::connect(local(port)).await.unwrap());
        for i in 0..20 {
            let (head, body) = get(&mut s, &d, "/once").await;
            assert_eq!((head[0].as_str(), &body[..]), ("HTTP/1.1 200 OK", &b"once"[..]), "request {i}");
        }
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 20);
        server.stop().await;
    })
    .await;
}

/// A request the direct path leaves to hyper (a body over its limit) is
/// served, and so are the requests after it on the same connection; a
/// refused service is a 502 that keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_hands_the_connection_over_and_errors_keep_it() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let svc = http_service("A").await;
        let d = dom("handover");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let bad = dom("refused");
        let (_c2, _) = connect_http(&server, &bad, closed_port().await).await;

        let mut s = BufReader::new(TcpStream::connect(local(port)).await.unwrap());
        let (head, body) = get(&mut s, &bad, "/x").await;
        assert!(head[0].starts_with("HTTP/1.1 502"), "{head:?}");
        assert!(String::from_utf8_lossy(&body).contains("bad gateway"));

        let data = pattern(3, 200 * 1024);
        let req = format!("POST /upload HTTP/1.1\r\nHost: {d}\r\nContent-Length: {}\r\n\r\n", data.len());
        s.get_mut().write_all(req.as_bytes()).await.unwrap();
        s.get_mut().write_all(&data).await.unwrap();
        let (head, body) = read_response(&mut s, false).await;
        assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
        assert_eq!(String::from_utf8_lossy(&body), format!("{} {}", data.len(), sha256(&data)));

        let (head, body) = get(&mut s, &d, "/after").await;
        assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
        assert!(String::from_utf8_lossy(&body).contains("path=/after"));
        server.stop().await;
    })
    .await;
}

/// A client that does not multiplex (`multiplex: false`, or an older
/// opennotr) gets a data channel per upstream connection, pooled the same
/// way, with the same results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_multiplexing_is_served_the_same() {
    run_test(async {
        let (server, _gw) = gateway_server(&[]).await;
        let (svc, seen, accepted) = scripted_service().await;
        let d = dom("plainstreams");
        let mut spec = ClientSpec::new(server.addr).domain(&d).forward(http_fwd(svc.addr.port()));
        spec.multiplex = false;
        let mut c = TestClient::start(&spec);
        let port = public_port(&c.connected().await, 0);

        let mut s = BufReader::new(TcpStream::connect(local(port)).await.unwrap());
        for path in ["/len", "/chunked", "/len"] {
            let (head, _) = get(&mut s, &d, path).await;
            assert_eq!(head[0], "HTTP/1.1 200 OK", "{path}");
        }
        let (_, body) = get(&mut s, &d, "/once").await;
        assert_eq!(body, b"once");
        assert_eq!(seen.lock().unwrap().len(), 4);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one pooled connection for the first three");
        server.stop().await;
    })
    .await;
}
