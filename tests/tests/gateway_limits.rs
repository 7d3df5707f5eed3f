//! The gateway's timeouts, connection caps and lifecycle, against a real
//! `opennotrd` and client: a service that does not answer or stalls, a
//! visitor that does not read or sends its body too slowly, one host
//! holding many connections, a shutdown with requests in flight, and a
//! reload that replaces the `http` plugin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};

const TOKEN: &str = "admin-token-0123456789";

fn dom(label: &str) -> String {
    format!("{label}.{ZONE}")
}

/// A server with an `http` gateway (and `h2c`) with these extra settings,
/// and the admin API.
async fn server(http: &str, grace: f64) -> TestServer {
    let mut spec = ServerSpec {
        shutdown_grace: grace,
        extra_yaml: format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n"),
        ..ServerSpec::default()
    };
    spec = spec.plugin("http", &format!(r#"{{"listen": "127.0.0.1:0", {http}}}"#));
    spec = spec.plugin("h2c", &format!(r#"{{"listen": "127.0.0.1:0", {http}}}"#));
    TestServer::start(&spec).await
}

async fn connect_http(server: &TestServer, domain: &str, local_port: u16) -> (TestClient, u16) {
    let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(domain).forward(http_fwd(local_port)));
    let reg = c.connected().await;
    (c, public_port(&reg, 0))
}

/// A service answering every request `200 ok`, keep-alive.
async fn ok_service() -> Service {
    tcp_service(|mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                    return;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

fn status(resp: &[u8]) -> u16 {
    std::str::from_utf8(resp.get(9..12).unwrap_or_default()).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Sends one request and reads the answer to the end of the connection.
async fn exchange(port: u16, req: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(local(port)).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    read_until_closed(&mut s).await
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// Handed to hyper by the direct path (`Expect`), so it takes the hyper path.
fn get_via_hyper(host: &str, path: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
}

/// The final status in `resp`, past any `100 Continue`.
fn final_status(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.match_indices("HTTP/1.1 ").map(|(i, _)| status(&resp[i..])).find(|s| *s >= 200).unwrap_or(0)
}

async fn metrics(server: &TestServer) -> String {
    let admin = server.admin.expect("admin API");
    let out = within(
        WAIT,
        "curl /metrics",
        tokio::process::Command::new(opennotr_tests::tools::need("curl"))
            .args(["-sS", "-H", &format!("Authorization: Bearer {TOKEN}"), &format!("http://{admin}/metrics")])
            .output(),
    )
    .await
    .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The value of the metric line that has every one of `parts`.
fn metric(text: &str, parts: &[&str]) -> f64 {
    text.lines()
        .find(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric with {parts:?} in:\n{text}"))
}

// --------------------------------------------------------------- timeouts

/// A service that accepts and never answers: the visitor gets 504 after
/// `responseTimeout`, on either path, and the error counts as the service's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_does_not_answer_is_a_gateway_timeout() {
    run_test(async {
        let server = server(r#""responseTimeout": 1"#, 1.0).await;
        let (svc, _) = slow_tcp().await;
        let d = dom("mute");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let direct = exchange(port, &get(&d, "/")).await;
        assert_eq!(status(&direct), 504, "{}", String::from_utf8_lossy(&direct));
        let hyper = exchange(port, &get_via_hyper(&d, "/")).await;
        assert_eq!(final_status(&hyper), 504, "{}", String::from_utf8_lossy(&hyper));
        let m = metrics(&server).await;
        assert!(metric(&m, &["opennotr_gateway_errors_total{origin=\"service\"}"]) >= 2.0, "{m}");
        server.stop().await;
    })
    .await;
}

/// A service that sends part of a response and stalls: the visitor's
/// connection is cut after `responseTimeout` (the body never completes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_stalls_is_cut() {
    run_test(async {
        let server = server(r#""responseTimeout": 1"#, 1.0).await;
        let svc = tcp_service(|mut s| async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart").await;
            std::future::pending::<()>().await;
        })
        .await;
        let d = dom("stall");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        for req in [get(&d, "/"), get_via_hyper(&d, "/")] {
            let got = exchange(port, &req).await;
            let text = String::from_utf8_lossy(&got);
            assert!(text.contains("200 OK") && text.ends_with("part"), "{text}");
        }
        server.stop().await;
    })
    .await;
}

/// A visitor that asks for a large response and never reads it: after
/// `sendTimeout` the gateway drops the exchange, and the service sees its
/// connection end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_that_does_not_read_is_dropped_after_the_send_timeout() {
    run_test(async {
        let server = server(r#""sendTimeout": 1"#, 1.0).await;
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let svc = tcp_service(move |mut s| {
            let done = done_tx.clone();
            async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
                let chunk = [b'x'; 65536];
                let mut sent = 0usize;
                loop {
                    let frame = [b"10000\r\n".as_slice(), &chunk, b"\r\n"].concat();
                    if s.write_all(&frame).await.is_err() {
                        let _ = done.send(sent);
                        return;
                    }
                    sent += chunk.len();
                }
            }
        })
        .await;
        let d = dom("noread");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        for req in [get(&d, "/"), get_via_hyper(&d, "/")] {
            let mut s = TcpStream::connect(local(port)).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            // Never read: the service's writes end when the gateway gives up.
            let sent = within(CLOSE_GUARD, "the service's connection to end", done.recv()).await.unwrap();
            assert!(sent > 0, "{sent}");
            drop(s);
        }
        server.stop().await;
    })
    .await;
}

/// A request body that does not arrive within `bodyTimeout` gets 408, on
/// both paths, and nothing reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_comes_too_slowly_is_a_request_timeout() {
    run_test(async {
        let server = server(r#""bodyTimeout": 1, "headerTimeout": 30, "idleTimeout": 30"#, 1.0).await;
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let svc = tcp_service(move |_s| {
            h.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .await;
        let d = dom("slowbody");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let partial = [
            format!("POST / HTTP/1.1\r\nHost: {d}\r\nContent-Length: 10\r\n\r\nhello"),
            format!("POST / HTTP/1.1\r\nHost: {d}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
        ];
        for req in partial {
            let mut s = TcpStream::connect(local(port)).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let got = read_until_closed(&mut s).await;
            assert_eq!(final_status(&got), 408, "{}", String::from_utf8_lossy(&got));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "a request the body of which never came reached the service");
        server.stop().await;
    })
    .await;
}

/// A connection that sends nothing is closed after `headerTimeout`, on the
/// `http` and the `h2c` port alike (the idle timeout is far longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_must_start_within_the_header_timeout() {
    run_test(async {
        let server = server(r#""headerTimeout": 1, "idleTimeout": 600"#, 1.0).await;
        let svc = ok_service().await;
        let d = dom("silent");
        let mut c = TestClient::start(
            &ClientSpec::new(server.addr)
                .domain(&d)
                .forward(http_fwd(svc.addr.port()))
                .forward(h2c_fwd(svc.addr.port())),
        );
        let reg = c.connected().await;
        for port in [public_port(&reg, 0), public_port(&reg, 1)] {
            let mut s = TcpStream::connect(local(port)).await.unwrap();
            let got = read_until_closed(&mut s).await;
            assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        }
        server.stop().await;
    })
    .await;
}

// -------------------------------------------------------------------- caps

async fn connect_from(ip: &str, port: u16) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(local(port)).await.unwrap()
}

/// One host holding `maxConnectionsPerIp` slow connections (a slowloris)
/// gets no more, while another host is served; both show in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_take_every_connection() {
    run_test(async {
        let server = server(r#""maxConnectionsPerIp": 4, "headerTimeout": 60"#, 1.0).await;
        let svc = ok_service().await;
        let d = dom("loris");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = connect_from("127.0.0.1", port).await;
            s.write_all(format!("GET / HTTP/1.1\r\nHost: {d}\r\nX-Slow: ").as_bytes()).await.unwrap();
            held.push(s);
        }
        wait_until_metric(&server, "opennotr_gateway_connections{port=\"http\"", 4.0).await;
        let mut fifth = connect_from("127.0.0.1", port).await;
        let got = read_until_closed(&mut fifth).await;
        assert_eq!(status(&got), 503, "{}", String::from_utf8_lossy(&got));
        // Another host is served as usual.
        let mut other = connect_from("127.0.0.2", port).await;
        other.write_all(get(&d, "/").as_bytes()).await.unwrap();
        let got = read_until_closed(&mut other).await;
        assert_eq!(status(&got), 200, "{}", String::from_utf8_lossy(&got));
        let m = metrics(&server).await;
        let refused = ["opennotr_gateway_connections_refused_total{", "port=\"http\"", "reason=\"source\""];
        assert!(metric(&m, &refused) >= 1.0, "{m}");
        drop(held);
        server.stop().await;
    })
    .await;
}

/// Beyond `maxConnections`, any host's connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_cap_holds_for_every_host() {
    run_test(async {
        let server = server(r#""maxConnections": 3, "headerTimeout": 60"#, 1.0).await;
        let svc = ok_service().await;
        let d = dom("cap");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let held: Vec<_> = futures_join(["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|ip| connect_from(ip, port))).await;
        wait_until_metric(&server, "opennotr_gateway_connections{port=\"http\"", 3.0).await;
        let mut fourth = connect_from("127.0.0.4", port).await;
        let got = read_until_closed(&mut fourth).await;
        assert_eq!(status(&got), 503, "{}", String::from_utf8_lossy(&got));
        let m = metrics(&server).await;
        let refused = ["opennotr_gateway_connections_refused_total{", "port=\"http\"", "reason=\"listener\""];
        assert!(metric(&m, &refused) >= 1.0, "{m}");
        drop(held);
        server.stop().await;
    })
    .await;
}

async fn futures_join<F: std::future::Future<Output = TcpStream>>(fs: [F; 3]) -> Vec<TcpStream> {
    let [a, b, c] = fs;
    let (a, b, c) = tokio::join!(a, b, c);
    vec![a, b, c]
}

/// Polls the metrics until the gauge line starting with `prefix` sums to
/// at least `at_least` over the listeners.
async fn wait_until_metric(server: &TestServer, prefix: &str, at_least: f64) {
    within(WAIT, prefix, async {
        loop {
            let m = metrics(server).await;
            let sum: f64 = m
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if sum >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A service that reads a request's head and then neither reads the body
/// nor answers: the exchange ends after `responseTimeout` (the upload is
/// not given forever), on the hyper path that streams large bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_stops_reading_the_request_is_given_up() {
    run_test(async {
        let server = server(r#""responseTimeout": 1, "bodyTimeout": 600"#, 1.0).await;
        let svc = tcp_service(|mut s| async move {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            std::future::pending::<()>().await;
        })
        .await;
        let d = dom("deaf");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let s = TcpStream::connect(local(port)).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let len = 64 << 20;
        let head = format!("POST /up HTTP/1.1\r\nHost: {d}\r\nContent-Length: {len}\r\n\r\n");
        let upload = tokio::spawn(async move {
            w.write_all(head.as_bytes()).await?;
            let chunk = vec![b'u'; 1 << 16];
            for _ in 0..len / chunk.len() {
                w.write_all(&chunk).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let got = within(CLOSE_GUARD, "the gateway to give the exchange up", async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let status = final_status(&got);
        assert!(status == 0 || status >= 500, "{}", String::from_utf8_lossy(&got));
        assert!(upload.await.unwrap().is_err(), "the upload went through to a service that read none of it");
        server.stop().await;
    })
    .await;
}

/// An upgraded connection (WebSocket) keeps its slot under the caps while
/// it lives, and is closed once nothing moves on it for `idleTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_count_against_the_caps_and_idle_out() {
    run_test(async {
        let server = server(r#""maxConnectionsPerIp": 2, "idleTimeout": 1, "headerTimeout": 60"#, 1.0).await;
        let svc = tcp_service(|mut s| async move {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ =
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await;
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        })
        .await;
        let d = dom("upgraded");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let upgrade = format!("GET /ws HTTP/1.1\r\nHost: {d}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = connect_from("127.0.0.1", port).await;
            s.write_all(upgrade.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            within(WAIT, "the 101 and the echo", async {
                let mut buf = [0u8; 1024];
                s.write_all(b"ping").await.unwrap();
                while !got.ends_with(b"ping") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
            })
            .await;
            assert!(got.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&got));
            held.push(s);
        }
        // Both slots are taken by the upgraded connections.
        let mut third = connect_from("127.0.0.1", port).await;
        let got = read_until_closed(&mut third).await;
        assert_eq!(status(&got), 503, "{}", String::from_utf8_lossy(&got));
        // Silent for idleTimeout, they are closed, and give their slots back.
        for mut s in held {
            read_until_closed(&mut s).await;
        }
        // (Admitted again: the service answers a plain request with an
        // unasked-for 101, which the gateway turns into a 502.)
        let mut again = connect_from("127.0.0.1", port).await;
        again.write_all(get(&d, "/").as_bytes()).await.unwrap();
        let got = read_until_closed(&mut again).await;
        assert_eq!(status(&got), 502, "{}", String::from_utf8_lossy(&got));
        server.stop().await;
    })
    .await;
}

// --------------------------------------------------------------- lifecycle

/// A service whose `/slow` sends its head and first chunk, then waits for
/// the test's go before the rest; other paths answer `ok`.
async fn gated_service() -> (Service, Arc<Notify>) {
    let go = Arc::new(Notify::new());
    let g = go.clone();
    let svc = tcp_service(move |mut s| {
        let go = g.clone();
        async move {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            if !buf[..n].starts_with(b"GET /slow ") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n").await;
            go.notified().await;
            let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
        }
    })
    .await;
    (svc, go)
}

/// On shutdown the gateway stops accepting at once, lets a request in
/// flight finish (within `shutdownGrace`), and closes an idle keep-alive
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_stops_accepting() {
    run_test(async {
        let server = server(r#""idleTimeout": 600, "headerTimeout": 600"#, 30.0).await;
        let (svc, go) = gated_service().await;
        let d = dom("drain");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        // An idle keep-alive connection, and a request in flight.
        let mut idle = TcpStream::connect(local(port)).await.unwrap();
        idle.write_all(format!("GET /one HTTP/1.1\r\nHost: {d}\r\n\r\n").as_bytes()).await.unwrap();
        let mut first = [0u8; 64];
        let n = within(WAIT, "the first answer", idle.read(&mut first)).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).ends_with("ok"));
        let mut busy = TcpStream::connect(local(port)).await.unwrap();
        busy.write_all(format!("GET /slow HTTP/1.1\r\nHost: {d}\r\n\r\n").as_bytes()).await.unwrap();
        let mut got = Vec::new();
        within(WAIT, "the first chunk", async {
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("first") {
                let n = busy.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;

        let stopping = tokio::spawn(server.stop());
        wait_until("the gateway to stop accepting", || std::net::TcpStream::connect(local(port)).is_err()).await;
        // The idle connection is closed without waiting for the grace.
        assert!(read_until_closed(&mut idle).await.is_empty());
        // The request in flight goes on to its end.
        go.notify_one();
        got.extend(read_until_closed(&mut busy).await);
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("first") && text.contains("last") && text.ends_with("0\r\n\r\n"), "{text}");
        within(CLOSE_GUARD, "the server to stop", stopping).await.unwrap();
    })
    .await;
}

/// A request still in flight when `shutdownGrace` is over is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_what_outlives_the_grace_period() {
    run_test(async {
        let server = server(r#""idleTimeout": 600"#, 1.0).await;
        let (svc, go) = gated_service().await;
        let d = dom("cut");
        let (_c, port) = connect_http(&server, &d, svc.addr.port()).await;
        let mut busy = TcpStream::connect(local(port)).await.unwrap();
        busy.write_all(format!("GET /slow HTTP/1.1\r\nHost: {d}\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = within(WAIT, "the first chunk", busy.read(&mut buf)).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("first"));
        within(CLOSE_GUARD, "the server to stop", server.stop()).await;
        // Had the exchange outlived the grace period, the rest would come now.
        go.notify_one();
        let rest = read_until_closed(&mut busy).await;
        assert!(!String::from_utf8_lossy(&rest).contains("last"), "{}", String::from_utf8_lossy(&rest));
    })
    .await;
}

/// A reload that replaces the `http` plugin keeps its port: the old
/// plugin's keep-alive connections close once idle, the sessions come back
/// on the new plugin, and the same port serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_plugin_on_the_same_port() {
    run_test(async {
        let dir = std::env::temp_dir().join(format!("opennotr-gw-reload-port-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notrd.yaml");
        let spec = ServerSpec::default().plugin("http", r#"{"listen": "127.0.0.1:0", "idleTimeout": 600}"#);
        let yaml = spec.yaml();
        std::fs::write(&path, &yaml).unwrap();
        let server = TestServer::start_with(opennotr_config::load_server(&path).unwrap(), &builtin_plugins()).await;
        server.handle.set_config_path(path.clone());
        let svc = ok_service().await;
        let d = dom("reloaded");
        let (mut c, port) = connect_http(&server, &d, svc.addr.port()).await;

        let mut old = TcpStream::connect(local(port)).await.unwrap();
        old.write_all(format!("GET /one HTTP/1.1\r\nHost: {d}\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = within(WAIT, "the answer", old.read(&mut buf)).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok"));

        std::fs::write(&path, yaml.replace(r#""idleTimeout": 600"#, r#""idleTimeout": 601"#)).unwrap();
        let report = server.handle.reload().unwrap_or_else(|e| panic!("reload: {e}"));
        assert!(report.changed.contains(&"plugin.http".to_string()), "{report:?}");
        // The old plugin's idle connection goes.
        assert!(read_until_closed(&mut old).await.is_empty());
        // The session comes back, on the same port.
        c.disconnected().await;
        let reg = c.connected().await;
        assert_eq!(public_port(&reg, 0), port, "the port outlives the plugin");
        let got = exchange(port, &get(&d, "/two")).await;
        assert_eq!(status(&got), 200, "{}", String::from_utf8_lossy(&got));
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
