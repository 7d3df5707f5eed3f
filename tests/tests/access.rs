//! Access control per forward (docs/access-control.md), with real servers,
//! clients and services in process: allow and deny lists by visitor source
//! (loopback has 127.0.0.0/8, so visitors bound to 127.0.0.2 and 127.0.0.3
//! come from different sources), HTTP basic auth with argon2id and bcrypt
//! hashes (http and h2c), the TLS passthrough, server rules a client cannot
//! widen, refusals in `/metrics`, and the bound on password checks.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opennotr_config::{Access, BasicAuth};
use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const TOKEN: &str = "admin-token-0123456789";
const PASSED: &str = "127.0.0.2";
const REFUSED: &str = "127.0.0.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn admin_yaml() -> String {
    format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n")
}

/// A server with the admin API (for `/metrics`), the `http` gateway, and
/// `extra` appended to its file.
async fn server(extra: &str) -> TestServer {
    let spec = ServerSpec { extra_yaml: format!("{}{extra}", admin_yaml()), ..ServerSpec::default() }
        .plugin("http", r#"{"listen": "127.0.0.1:0", "headerTimeout": 5, "idleTimeout": 30}"#);
    let mut registry = builtin_plugins();
    opennotr_gateway::register(&mut registry);
    TestServer::start_with(spec.config(), &registry).await
}

/// Starts a client for `spec` whose forward `i` carries `access` (as its
/// file's `forwards[i].allow`... would), and waits for its registration.
async fn client_with(spec: &ClientSpec, access: &[(usize, Access)]) -> (TestClient, Registration) {
    let mut cfg = spec.config();
    for (i, a) in access {
        cfg.forwards[*i].access = a.clone();
    }
    let mut c = TestClient::start_config(cfg);
    let reg = c.connected().await;
    (c, reg)
}

fn cidrs(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

async fn refused(server: &TestServer, series: &str) -> u64 {
    metric(&admin_metrics(server.admin.unwrap(), TOKEN).await, series).unwrap_or(0)
}

/// Polls `/metrics` until `series` reaches `at_least`.
async fn wait_refused(server: &TestServer, series: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if refused(server, series).await >= at_least {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(ip(from), 0))?;
    s.connect(to).await
}

/// An echo service that counts the connections it gets.
async fn counted_echo() -> (Service, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let svc = tcp_service(move |mut s| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await;
    (svc, n)
}

/// Echoes through `public` from `from`.
async fn echo_from(from: &str, public: SocketAddr) {
    let mut s = within(WAIT, "connecting", connect_from(from, public)).await.expect("connect");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within(WAIT, "echo", s.read_exact(&mut buf)).await.expect("echo");
    assert_eq!(&buf, b"ping");
}

/// Expects a connection from `from` to be reset without a byte.
async fn turned_away_from(from: &str, public: SocketAddr) {
    let mut s = match connect_from(from, public).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(e) => panic!("connect: {e}"),
    };
    let _ = s.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    match within(WAIT, "a refused visitor's read", s.read(&mut buf)).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_visitors_are_allowed_and_denied_by_source() {
    run_test(async {
        // `access` is the server's rule for shared-key clients.
        let server = server("access:\n  allow: [\"127.0.0.0/8\"]\n  deny: [\"127.0.0.3/32\"]\n").await;
        let (echo, seen) = counted_echo().await;
        let spec = ClientSpec::new(server.addr).forward(tcp_fwd(0, echo.addr.port()));
        let (_client, reg) = client_with(&spec, &[]).await;
        let public = local(public_port(&reg, 0));
        echo_from(PASSED, public).await;
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        turned_away_from(REFUSED, public).await;
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="tcp",reason="denied"}"#, 1).await;
        // Nothing of the refused visitor reached the service.
        echo_from(PASSED, public).await;
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_narrows_the_server_rules_but_cannot_widen_them() {
    run_test(async {
        let key = "alice-key-0123456789abcdef";
        let server = server(&format!(
            "clients:\n  - name: alice\n    key: {key:?}\n    allow: [\"{PASSED}/32\", \"127.0.0.4/32\"]\n"
        ))
        .await;
        let (echo, _) = counted_echo().await;
        let spec = ClientSpec::new(server.addr)
            .credential("alice", key)
            .forward(tcp_fwd(0, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()));
        // Forward 0 tries to let everyone in; forward 1 denies 127.0.0.4.
        let widen = Access { allow: cidrs(&["0.0.0.0/0"]), ..Access::default() };
        let narrow = Access { deny: cidrs(&["127.0.0.4/32"]), ..Access::default() };
        let (_client, reg) = client_with(&spec, &[(0, widen), (1, narrow)]).await;
        let (wide, narrowed) = (local(public_port(&reg, 0)), local(public_port(&reg, 1)));
        echo_from(PASSED, wide).await;
        turned_away_from(REFUSED, wide).await;
        echo_from("127.0.0.4", wide).await;
        echo_from(PASSED, narrowed).await;
        turned_away_from("127.0.0.4", narrowed).await;
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="tcp",reason="not_allowed"}"#, 1).await;
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="tcp",reason="denied"}"#, 1).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_of_a_refused_source_are_dropped() {
    run_test(async {
        let server = server("").await;
        let echo = udp_echo().await;
        let spec = ClientSpec::new(server.addr).forward(udp_fwd(0, echo.addr.port()));
        let deny = Access { deny: cidrs(&[&format!("{REFUSED}/32")]), ..Access::default() };
        let (_client, reg) = client_with(&spec, &[(0, deny)]).await;
        let public = local(public_port(&reg, 0));
        let good = UdpSocket::bind((ip(PASSED), 0)).await.unwrap();
        good.send_to(b"hello", public).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = within(WAIT, "udp echo", good.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        let bad = UdpSocket::bind((ip(REFUSED), 0)).await.unwrap();
        for _ in 0..3 {
            bad.send_to(b"hello", public).await.unwrap();
        }
        // Each datagram is dropped (and counted) before any flow opens.
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="udp",reason="denied"}"#, 3).await;
        assert!(bad.try_recv_from(&mut buf).is_err(), "a refused source got an answer");
        // The allowed source still works after.
        good.send_to(b"again", public).await.unwrap();
        let (n, _) = within(WAIT, "udp echo", good.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"again");
    })
    .await
}

// ---------------------------------------------------------------- http

fn argon2id(password: &str, m_kib: u32, t: u32) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"a test salt 16b!").unwrap();
    let params = argon2::Params::new(m_kib, t, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    // A tiny base64 encoder: the tests crate has none.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let data = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// An HTTP/1.1 service that answers every request with its head as the
/// body, and closes.
async fn head_echo() -> Service {
    tcp_service(|mut s| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", head.len());
        let _ = s.write_all(reply.as_bytes()).await;
        let _ = s.write_all(&head).await;
    })
    .await
}

/// One GET of `domain` through the gateway at `port`, from `from`: the
/// status and the whole answer.
async fn get(from: &str, port: u16, domain: &str, authorization: Option<&str>) -> (u16, String) {
    let mut s = within(WAIT, "connecting to the gateway", connect_from(from, local(port))).await.unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let req = format!("GET /x HTTP/1.1\r\nHost: {domain}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let text =
        String::from_utf8_lossy(&within(WAIT, "reading the answer", read_until_closed(&mut s)).await).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// One keep-alive GET on `s`: the status and the answer (head and a
/// `content-length` body).
async fn exchange(s: &mut TcpStream, domain: &str, authorization: Option<&str>) -> (u16, String) {
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    s.write_all(format!("GET /x HTTP/1.1\r\nHost: {domain}\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + len {
                let text = String::from_utf8_lossy(&got).to_string();
                return (text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0), text);
            }
        }
        let n = within(WAIT, "reading an answer", s.read(&mut buf)).await.unwrap();
        assert!(n > 0, "the gateway closed the connection: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_by_source_and_asks_for_basic_auth() {
    // Boxed: the body's state is too large for a test thread's stack.
    run_test(Box::pin(async {
        let server = server("").await;
        let svc = head_echo().await;
        let domain = format!("guarded.{ZONE}");
        let spec = ClientSpec::new(server.addr).domain(&domain).forward(http_fwd(svc.addr.port()));
        let access = Access {
            deny: cidrs(&[&format!("{REFUSED}/32")]),
            basic_auth: vec![
                BasicAuth { user: "alice".into(), hash: argon2id("wonderland", 8192, 1) },
                BasicAuth { user: "bob".into(), hash: bcrypt::hash("builder", 4).unwrap() },
            ],
            ..Access::default()
        };
        let (_client, reg) = client_with(&spec, &[(0, access)]).await;
        let port = public_port(&reg, 0);

        let (status, _) = get(REFUSED, port, &domain, Some(&basic("alice", "wonderland"))).await;
        assert_eq!(status, 403, "a denied source, even with good credentials");
        let (status, text) = get(PASSED, port, &domain, None).await;
        assert_eq!(status, 401, "{text}");
        let challenge = format!("www-authenticate: Basic realm=\"{domain}\"");
        assert!(text.to_ascii_lowercase().contains(&challenge.to_ascii_lowercase()), "{text}");
        assert_eq!(get(PASSED, port, &domain, Some(&basic("alice", "wrong"))).await.0, 401);
        assert_eq!(get(PASSED, port, &domain, Some(&basic("mallory", "wonderland"))).await.0, 401);
        assert_eq!(get(PASSED, port, &domain, Some("Bearer abc")).await.0, 401);
        for (user, password) in [("alice", "wonderland"), ("bob", "builder"), ("alice", "wonderland")] {
            let (status, text) = get(PASSED, port, &domain, Some(&basic(user, password))).await;
            assert_eq!(status, 200, "{user}: {text}");
            // The gateway's own credentials are not the service's business.
            assert!(!text.to_ascii_lowercase().contains("authorization:"), "{text}");
            assert!(text.contains("GET /x HTTP/1.1"), "{text}");
        }
        // A browser's way: the 401 keeps the connection, which then carries
        // the request with credentials.
        let mut s = connect_from(PASSED, local(port)).await.unwrap();
        let (status, _) = exchange(&mut s, &domain, None).await;
        assert_eq!(status, 401);
        let (status, text) = exchange(&mut s, &domain, Some(&basic("bob", "builder"))).await;
        assert_eq!(status, 200, "{text}");
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="http",reason="denied"}"#, 1).await;
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="http",reason="unauthorized"}"#, 5).await;
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_gets_quick_refusals() {
    // Boxed: the body's state is too large for a test thread's stack.
    run_test(Box::pin(async {
        let server = server("").await;
        let svc = head_echo().await;
        let domain = format!("flooded.{ZONE}");
        let spec = ClientSpec::new(server.addr).domain(&domain).forward(http_fwd(svc.addr.port()));
        // The most expensive hash the server accepts: each check takes a
        // core for a while, and only a few run at once.
        let hash = argon2id("right", 65536, 10);
        let access = Access { basic_auth: vec![BasicAuth { user: "u".into(), hash }], ..Access::default() };
        let (_client, reg) = client_with(&spec, &[(0, access)]).await;
        let port = public_port(&reg, 0);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..24 {
            let domain = domain.clone();
            tasks.spawn(async move { get(PASSED, port, &domain, Some(&basic("u", &format!("wrong{i}")))).await.0 });
        }
        let mut statuses = Vec::new();
        while let Some(s) = within(Duration::from_secs(60), "the flood's answers", tasks.join_next()).await {
            statuses.push(s.unwrap());
        }
        assert!(statuses.iter().all(|s| *s == 401 || *s == 503), "{statuses:?}");
        assert!(statuses.contains(&503), "every wrong password waited for its hash: {statuses:?}");
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="http",reason="busy"}"#, 1).await;
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_rules_it_cannot_enforce_or_that_are_out_of_bounds() {
    // Boxed: the body's state is too large for a test thread's stack.
    run_test(Box::pin(async {
        let server = server("").await;
        let (echo, _) = counted_echo().await;
        let spec = ClientSpec::new(server.addr)
            .forward(tcp_fwd(0, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()));
        // What a client whose file check was skipped could send.
        let on_tcp = Access {
            basic_auth: vec![BasicAuth { user: "u".into(), hash: bcrypt::hash("p", 4).unwrap() }],
            ..Access::default()
        };
        let too_many = Access {
            allow: (0..300).map(|i| format!("10.{}.0.0/16", i % 256).parse().unwrap()).collect(),
            ..Access::default()
        };
        let slow = Access {
            basic_auth: vec![BasicAuth {
                user: "u".into(),
                hash: argon2id("p", 8192, 1).replace("m=8192", "m=4194304"),
            }],
            ..Access::default()
        };
        let (_client, reg) = client_with(&spec, &[(0, on_tcp), (1, too_many), (2, slow)]).await;
        let errors: Vec<String> = reg.forwards.iter().map(|f| f.error.clone().unwrap_or_default()).collect();
        assert!(errors[0].contains("access.basicAuth") && errors[0].contains("tcp forward"), "{errors:?}");
        assert!(errors[1].contains("access.allow") && errors[1].contains("more than 256"), "{errors:?}");
        assert!(errors[2].contains("access.basicAuth[0].hash") && errors[2].contains("bounds"), "{errors:?}");
    }))
    .await
}

#[test]
fn config_errors_name_the_field() {
    let base = "serverAddr: \"127.0.0.1:1\"\nkey: k\nforwards:\n";
    let fwd = |extra: &str| format!("  - protocol: http\n    ports: {{0: 80}}\n{extra}");
    let client = |extra: &str| {
        let y = format!("{base}{}{}{}", fwd(""), fwd(""), fwd(extra));
        opennotr_config::parse_client(&y).unwrap_err().to_string()
    };
    assert_eq!(
        client("    allow: [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"),
        r#"forwards[2].allow[1]: "10.0.0.0/33" is not a CIDR (e.g. 10.0.0.0/8)"#
    );
    let e = client("    basicAuth:\n      - user: alice\n        password: hunter2\n");
    assert!(e.starts_with("forwards[2].basicAuth[0].password: a plaintext password is refused"), "{e}");
    assert!(e.contains("htpasswd") && !e.contains("hunter2"), "{e}");
    let e = client("    basicAuth:\n      - user: alice\n        hash: hunter2\n");
    assert!(e.starts_with("forwards[2].basicAuth[0].hash: not an argon2id"), "{e}");
    let e = client("    basicAuth:\n      - user: \"a:b\"\n        hash: x\n");
    assert!(e.starts_with("forwards[2].basicAuth[0].user:"), "{e}");
    let tcp = format!(
        "{base}  - protocol: tcp\n    ports: {{0: 80}}\n    basicAuth:\n      - user: a\n        hash: \"{}\"\n",
        bcrypt::hash("p", 4).unwrap()
    );
    let e = opennotr_config::parse_client(&tcp).unwrap_err().to_string();
    assert!(e.starts_with("forwards[0].basicAuth: a tcp forward cannot ask for basic auth"), "{e}");

    let server = |extra: &str| {
        let spec = ServerSpec { extra_yaml: extra.into(), ..ServerSpec::default() };
        opennotr_config::parse_server(&spec.yaml()).unwrap_err().to_string()
    };
    let e = server("clients:\n  - name: a\n    key: k0123456789abcdef\n    deny: [\"nope\"]\n");
    assert_eq!(e, r#"clients[0].deny[0]: "nope" is not a CIDR (e.g. 10.0.0.0/8)"#);
    let e = server("access:\n  allow: [\"300.0.0.0/8\"]\n");
    assert!(e.starts_with("access.allow[0]:"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_asks_for_basic_auth_per_request() {
    run_test(Box::pin(async {
        let spec = ServerSpec { extra_yaml: admin_yaml(), ..ServerSpec::default() }
            .plugin("h2c", r#"{"listen": "127.0.0.1:0"}"#);
        let mut registry = builtin_plugins();
        opennotr_gateway::register(&mut registry);
        let server = TestServer::start_with(spec.config(), &registry).await;
        let svc = h2_service().await;
        let domain = format!("grpcish.{ZONE}");
        let spec = ClientSpec::new(server.addr).domain(&domain).forward(h2c_fwd(svc.addr.port()));
        let access = Access {
            basic_auth: vec![BasicAuth { user: "alice".into(), hash: argon2id("wonderland", 8192, 1) }],
            ..Access::default()
        };
        let (_client, reg) = client_with(&spec, &[(0, access)]).await;
        let port = public_port(&reg, 0);
        let curl = |user: Option<&'static str>| {
            let domain = domain.clone();
            async move {
                let resolve = format!("{domain}:{port}:127.0.0.1");
                let mut cmd = tokio::process::Command::new(opennotr_tests::tools::need("curl"));
                cmd.args(["-sS", "--noproxy", "*", "--max-time", "20", "--http2-prior-knowledge"]).args([
                    "--interface",
                    PASSED,
                    "--resolve",
                    &resolve,
                    "-w",
                    "\n%{http_code} %{http_version}",
                ]);
                if let Some(u) = user {
                    cmd.args(["-u", u]);
                }
                let out = within(WAIT, "curl", cmd.arg(format!("http://{domain}:{port}/")).output()).await.unwrap();
                String::from_utf8_lossy(&out.stdout).to_string()
            }
        };
        let out = curl(None).await;
        assert!(out.ends_with("\n401 2"), "{out}");
        assert!(curl(Some("alice:wrong")).await.ends_with("\n401 2"));
        let out = curl(Some("alice:wonderland")).await;
        assert!(out.ends_with("\n200 2"), "{out}");
        assert!(out.contains("version HTTP/2.0") && !out.contains("authorization"), "{out}");
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="h2c",reason="unauthorized"}"#, 2).await;
    }))
    .await
}

/// An HTTP/2 (and HTTP/1.1) service answering the request's version and
/// header names.
async fn h2_service() -> Service {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    tcp_service(|s| async move {
        let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
            let body = format!("version {:?}\nheaders {}\n", req.version(), names.join(" "));
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body))))
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_resets_a_refused_source() {
    run_test(Box::pin(async {
        let spec = ServerSpec { extra_yaml: admin_yaml(), ..ServerSpec::default() }
            .plugin("tls", r#"{"listen": "127.0.0.1:0"}"#);
        let mut registry = builtin_plugins();
        opennotr_gateway::register(&mut registry);
        let server = TestServer::start_with(spec.config(), &registry).await;
        // The client's "TLS service" records what reaches it: the
        // visitor's ClientHello, relayed untouched.
        let (svc, mut conns) = tcp_accepting().await;
        let domain = format!("passthrough.{ZONE}");
        let spec = ClientSpec::new(server.addr).domain(&domain).forward(tls_fwd(svc.addr.port()));
        let deny = Access { deny: cidrs(&[&format!("{REFUSED}/32")]), ..Access::default() };
        let (_client, reg) = client_with(&spec, &[(0, deny)]).await;
        let public = local(public_port(&reg, 0));
        let hello = client_hello(&domain);

        let mut good = connect_from(PASSED, public).await.unwrap();
        good.write_all(&hello).await.unwrap();
        let mut conn = within(WAIT, "the relayed connection", conns.recv()).await.unwrap();
        let mut got = vec![0u8; hello.len()];
        within(WAIT, "the relayed ClientHello", conn.read_exact(&mut got)).await.unwrap();
        assert_eq!(got, hello);

        let mut bad = connect_from(REFUSED, public).await.unwrap();
        bad.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 16];
        match within(WAIT, "the refused visitor's read", bad.read(&mut buf)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected a reset, got {other:?}"),
        }
        wait_refused(&server, r#"opennotr_visitors_refused_total{protocol="tls",reason="denied"}"#, 1).await;
        assert!(conns.try_recv().is_err(), "the refused visitor reached the service");
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_basic_auth_guards_http_forwards_and_a_client_list_narrows_it() {
    run_test(Box::pin(async {
        // Shared-key clients: the server's `access.basicAuth`.
        let (ops, alice) = (bcrypt::hash("ops-pw", 4).unwrap(), bcrypt::hash("alice-pw", 4).unwrap());
        let server = server(&format!(
            "access:\n  basicAuth:\n    - user: ops\n      hash: \"{ops}\"\n    - user: alice\n      hash: \"{alice}\"\n"
        ))
        .await;
        let (svc, echo) = (head_echo().await, counted_echo().await.0);
        let (open, narrowed) = (format!("open.{ZONE}"), format!("narrowed.{ZONE}"));
        // One client with only the server's rules (and a tcp forward, which
        // the server's users do not concern), one with its own list.
        let spec = ClientSpec::new(server.addr)
            .domain(&open)
            .forward(http_fwd(svc.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()));
        let (_a, reg) = client_with(&spec, &[]).await;
        let (port, tcp) = (public_port(&reg, 0), local(public_port(&reg, 1)));
        let spec = ClientSpec::new(server.addr).domain(&narrowed).forward(http_fwd(svc.addr.port()));
        let own = Access {
            basic_auth: vec![BasicAuth { user: "alice".into(), hash: argon2id("alice-pw", 8192, 1) }],
            ..Access::default()
        };
        let (_b, _) = client_with(&spec, &[(0, own)]).await;

        assert_eq!(get(PASSED, port, &open, None).await.0, 401);
        assert_eq!(get(PASSED, port, &open, Some(&basic("ops", "ops-pw"))).await.0, 200);
        assert_eq!(get(PASSED, port, &open, Some(&basic("alice", "alice-pw"))).await.0, 200);
        echo_from(PASSED, tcp).await;
        // Both lists must have the user: ops is in the server's only.
        assert_eq!(get(PASSED, port, &narrowed, Some(&basic("ops", "ops-pw"))).await.0, 401);
        assert_eq!(get(PASSED, port, &narrowed, Some(&basic("alice", "alice-pw"))).await.0, 200);
    }))
    .await
}
