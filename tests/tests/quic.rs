//! The QUIC transport (`server.quic`, client `transport: quic`): TCP and
//! UDP forwards, refusals, authentication and its binding to the TLS
//! connection, migration, clean-up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use opennotr_plugin::StreamProtocol;
use opennotr_tests::*;
use opennotr_transport::quic::{self as q, quinn, QuicTiming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

const TOKEN: &str = "quic test admin token 0123";

fn quic_server() -> ServerSpec {
    ServerSpec {
        server_yaml: "  quic: true\n".into(),
        extra_yaml: format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n"),
        ..ServerSpec::default()
    }
}

fn quic_client(server: &TestServer) -> ClientSpec {
    let addr = server.quic.expect("the server has a QUIC endpoint");
    ClientSpec { transport: Some("quic"), multiplex: false, ..ClientSpec::new(addr) }
}

async fn metrics(server: &TestServer) -> String {
    admin_metrics(server.admin.expect("admin API"), TOKEN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_forward_echoes_and_half_closes() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&quic_server()).await;
        // By default QUIC listens on the TCP control port's address, on UDP.
        assert_eq!(server.quic, Some(server.addr));
        let mut client = TestClient::start(&quic_client(&server).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        // echo_once writes, half-closes, and reads the echo to its end: the
        // half-close crossed the tunnel and the reply direction stayed open.
        assert_echo(public, &pattern(1, 300_000)).await;
        assert_echo(public, b"").await;
        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1);
        assert!(!sessions[0].plaintext, "a QUIC session is not reported as plaintext");
        let m = metrics(&server).await;
        assert_eq!(metric(&m, "opennotr_handshakes_total{result=\"ok\"}"), Some(1), "{m}");
        // No data channels over QUIC, spare or dialed: QUIC streams only.
        assert_eq!(metric(&m, "opennotr_spare_channels"), Some(0), "{m}");
        assert_eq!(metric(&m, "opennotr_stream_channels_total{via=\"spare\"}"), Some(0), "{m}");
        assert_eq!(metric(&m, "opennotr_stream_channels_total{via=\"dialed\"}"), Some(0), "{m}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_goes_as_datagrams_and_large_ones_on_the_stream() {
    run_test(async {
        let echo = udp_echo().await;
        let server = TestServer::start(&quic_server()).await;
        let mut client = TestClient::start(&quic_client(&server).forward(udp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        let sock = UdpSocket::bind(local(0)).await.unwrap();
        sock.connect(public).await.unwrap();
        let mut buf = vec![0u8; 65536];
        // Above any path MTU quinn probes (1452 at most by default), so
        // above max_datagram_size: it takes the flow's stream.
        let large = pattern(3, 4000);
        for d in [pattern(2, 100), large.clone(), pattern(4, 1), Vec::new()] {
            sock.send(&d).await.unwrap();
            let n = within(WAIT, "the echo of a datagram", sock.recv(&mut buf)).await.unwrap();
            assert!(buf[..n] == d[..], "a {}-byte datagram came back as {n} different bytes", d.len());
        }
        let m = metrics(&server).await;
        let count = |r: &str| metric(&m, &format!("opennotr_quic_datagrams_total{{result=\"{r}\"}}")).unwrap_or(0);
        // The small ones each way as datagrams, but the server's first one,
        // sent before the client has answered the flow's header, which takes
        // the stream behind it (a datagram could outrun the header and find
        // no flow); the large one both ways on the stream (the server counts
        // what it sends and receives).
        assert!(count("sent") >= 2 && count("received") >= 3, "{m}");
        assert!((1..=2).contains(&count("fallback")), "{m}");
        assert_eq!(count("dropped"), 0, "{m}");
    })
    .await
}

/// A declared target, an undeclared one, and the declared one again.
fn undeclared_probes(declared: SocketAddr) -> Vec<(&'static str, StreamProtocol, SocketAddr)> {
    let undeclared = SocketAddr::new(declared.ip(), declared.port() ^ 1);
    vec![
        ("declared", StreamProtocol::Tcp, declared),
        ("undeclared", StreamProtocol::Tcp, undeclared),
        ("declared again", StreamProtocol::Tcp, declared),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_target_is_refused() {
    run_test(async {
        let echo = tcp_echo().await;
        let (tx, mut results) = mpsc::unbounded_channel();
        let mut registry = builtin_plugins();
        registry.register(ProbeFactory(tx, undeclared_probes));
        let server = TestServer::start_with(quic_server().config(), &registry).await;
        let spec = quic_client(&server).forward(Fwd { protocol: "probe".into(), public: 0, local: echo.addr.port() });
        let mut client = TestClient::start(&spec);
        client.connected().await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(within(WAIT, "a probe result", results.recv()).await.expect("probe results"));
        }
        assert_eq!(got[0], ("declared", Ok(())), "{got:?}");
        let e = got[1].1.as_ref().expect_err("the client dialed an undeclared target");
        assert_eq!(e, "refused: the client refused the stream");
        assert_eq!(got[2], ("declared again", Ok(())), "the session survives a refusal: {got:?}");
        // Its reason came on the control stream, where the server counts it.
        let refused = || {
            let m = opennotr_admin::Backend::metrics(&server.handle);
            metric(&m, "opennotr_streams_refused_total").unwrap()
        };
        wait_until("the client's refusal", || refused() == 1).await;
        assert!(client.pending_events().is_empty(), "{:?}", client.history);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_turns_the_visitor_away() {
    run_test(async {
        let gone = std::net::TcpListener::bind(local(0)).unwrap();
        let port = gone.local_addr().unwrap().port();
        drop(gone);
        let server = TestServer::start(&quic_server()).await;
        let mut client = TestClient::start(&quic_client(&server).forward(tcp_fwd(0, port)));
        let public = local(public_port(&client.connected().await, 0));
        // Turned away: reset (perhaps already at connect) or closed, no data.
        match TcpStream::connect(public).await {
            Ok(mut visitor) => {
                let got = read_until_closed(&mut visitor).await;
                assert!(got.is_empty(), "{got:?}");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        let h = server.handle.clone();
        wait_until("the refused stream to be released", || h.sessions()[0].open_streams == 0).await;
        assert!(client.pending_events().is_empty(), "{:?}", client.history);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_fails_and_earns_a_penalty() {
    run_test(async {
        let spec = ServerSpec { limits: vec![("authFailures", 2)], ..quic_server() };
        let server = TestServer::start(&spec).await;
        let mut client_spec = quic_client(&server);
        client_spec.key = "not the server's key".into();
        let mut client = TestClient::start(&client_spec);
        for _ in 0..2 {
            let reason = client.disconnected().await;
            assert!(reason.contains("authentication failed"), "{reason}");
        }
        let e = client.wait_event("the penalty", |e| matches!(e, Event::Refused { .. })).await;
        assert!(matches!(e, Event::Refused { code: RefuseCode::TooManyFailures, .. }), "{e:?}");
        let m = metrics(&server).await;
        assert!(metric(&m, "opennotr_auth_failures_total").unwrap() >= 2, "{m}");
        assert_eq!(metric(&m, "opennotr_auth_penalties_total"), Some(1), "{m}");
        assert!(server.handle.sessions().is_empty());
    })
    .await
}

/// A man in the middle with a certificate of its own: it terminates the
/// client's QUIC connection and opens its own to the server, relaying the
/// control stream's bytes both ways untouched.
async fn relay(server: SocketAddr, relayed: Arc<AtomicUsize>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let timing = QuicTiming {
        keepalive_interval: std::time::Duration::from_secs(5),
        idle_timeout: std::time::Duration::from_secs(15),
    };
    let (chain, key) = q::self_signed().unwrap();
    let front = quinn::Endpoint::server(q::server_config(chain, key, timing, 16).unwrap(), local(0)).unwrap();
    let addr = front.local_addr().unwrap();
    let mut back = quinn::Endpoint::client(local(0)).unwrap();
    back.set_default_client_config(q::client_config(timing).unwrap());
    let task = tokio::spawn(async move {
        while let Some(incoming) = front.accept().await {
            let (back, relayed) = (back.clone(), relayed.clone());
            tokio::spawn(async move {
                let Ok(client) = incoming.await else { return };
                let Ok(upstream) = back.connect(server, "opennotr").unwrap().await else { return };
                let Ok((cs, cr)) = client.accept_bi().await else { return };
                let Ok((us, ur)) = upstream.open_bi().await else { return };
                relayed.fetch_add(1, Ordering::SeqCst);
                let (mut a, mut b) = (q::QuicStream::new(cs, cr), q::QuicStream::new(us, ur));
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_terminates_tls_fails_key_confirmation() {
    run_test(async {
        let server = TestServer::start(&quic_server()).await;
        let relayed = Arc::new(AtomicUsize::new(0));
        let (mitm, task) = relay(server.quic.unwrap(), relayed.clone()).await;
        let spec = ClientSpec { transport: Some("quic"), ..ClientSpec::new(mitm) };
        let mut client = TestClient::start(&spec);
        // The right key, through the relay: the server's MAC covers its own
        // TLS connection (to the relay), which the client's is not.
        let reason = client.disconnected().await;
        assert!(reason.contains("authentication failed"), "{reason}");
        assert!(relayed.load(Ordering::SeqCst) >= 1, "the relay carried the handshake");
        assert!(!client.history.iter().any(|e| matches!(e, Event::Connected(_))));
        assert!(server.handle.sessions().is_empty());
        let h = server.handle.clone();
        let admin = server.admin.unwrap();
        within(WAIT, "the server to count the failure", async {
            loop {
                let m = admin_metrics(admin, TOKEN).await;
                if metric(&m, "opennotr_auth_failures_total").unwrap_or(0) >= 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(h.sessions().is_empty());
        // The same client straight to the server gets in.
        client.stop().await;
        task.abort();
        let mut direct = TestClient::start(&quic_client(&server));
        direct.connected().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_goes_on_when_the_client_moves_to_a_new_address() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&quic_server()).await;
        let mut client = TestClient::start(&quic_client(&server).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        let before = server.handle.sessions();
        let mut visitor = TcpStream::connect(public).await.unwrap();
        let mut buf = vec![0u8; 5000];
        visitor.write_all(&pattern(5, 5000)).await.unwrap();
        within(WAIT, "the echo before the move", visitor.read_exact(&mut buf)).await.unwrap();
        assert_eq!(buf, pattern(5, 5000));

        let old = client.quic.local_addr().unwrap();
        let new = client.quic.rebind().unwrap();
        assert_ne!(old.port(), new.port());

        // The old socket is gone: only the migrated path can carry this.
        visitor.write_all(&pattern(6, 5000)).await.unwrap();
        within(WAIT, "the echo after the move", visitor.read_exact(&mut buf)).await.unwrap();
        assert_eq!(buf, pattern(6, 5000));
        assert_echo(public, &pattern(7, 100_000)).await;
        let after = server.handle.sessions();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].connected_at, before[0].connected_at, "the same session");
        assert_eq!(after[0].vip, before[0].vip);
        // The operator sees where the client is now, and how it connects.
        assert_eq!((before[0].remote.port(), after[0].remote.port()), (old.port(), new.port()));
        assert_eq!(after[0].transport, "quic");
        assert!(client.pending_events().is_empty(), "no reconnect: {:?}", client.history);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_session_frees_its_streams_vip_and_ports() {
    run_test(async {
        let echo = tcp_echo().await;
        let udp = udp_echo().await;
        let server = TestServer::start(&quic_server()).await;
        let spec = quic_client(&server).forward(tcp_fwd(0, echo.addr.port())).forward(udp_fwd(0, udp.addr.port()));
        let mut client = TestClient::start(&spec);
        let reg = client.connected().await;
        let (tcp_port, udp_port) = (public_port(&reg, 0), public_port(&reg, 1));
        let mut visitor = TcpStream::connect(local(tcp_port)).await.unwrap();
        visitor.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        within(WAIT, "an echo", visitor.read_exact(&mut buf)).await.unwrap();
        let h = server.handle.clone();
        wait_until("the stream to be counted", || h.sessions()[0].open_streams == 1).await;

        client.stop().await;
        server.wait_no_sessions().await;
        read_until_closed(&mut visitor).await;
        assert!(!server.handle.vip_in_use(reg.vip), "the VIP is free");
        std::net::TcpListener::bind(local(tcp_port)).expect("the tcp port is free");
        std::net::UdpSocket::bind(local(udp_port)).expect("the udp port is free");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_each_echo_their_own() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&quic_server()).await;
        let mut client = TestClient::start(&quic_client(&server).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        let tasks: Vec<_> = (0..200u64)
            .map(|i| tokio::spawn(async move { assert_echo(public, &pattern(100 + i, 1000 + i as usize * 97)).await }))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let h = server.handle.clone();
        wait_until("every stream to be released", || h.sessions()[0].open_streams == 0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shutdown_reaches_the_client_as_going_away() {
    run_test(async {
        let server = TestServer::start(&quic_server()).await;
        let mut client = TestClient::start(&quic_client(&server));
        client.connected().await;
        server.stop().await;
        let reason = client.disconnected().await;
        assert!(reason.contains("server going away"), "{reason}");
    })
    .await
}

/// An HTTP/1.1 service answering every request on a connection with its
/// path, until the connection closes.
async fn http_paths() -> Service {
    tcp_service(|s| async move {
        let mut s = tokio::io::BufReader::new(s);
        loop {
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                match tokio::io::AsyncBufReadExt::read_line(&mut s, &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => head.push(line),
                }
            }
            let path = head.first().and_then(|l| l.split(' ').nth(1)).unwrap_or("?").to_string();
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len());
            if s.get_mut().write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// The gateway's requests to a QUIC client take a stream each (the client
/// is not asked to multiplex, whatever its `multiplex` says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_a_quic_client() {
    run_test(async {
        let service = http_paths().await;
        let spec = quic_server().plugin("http", r#"{"listen": "127.0.0.1:0"}"#);
        let server = TestServer::start(&spec).await;
        let domain = format!("web.{ZONE}");
        let client_spec = ClientSpec { multiplex: true, ..quic_client(&server) }
            .domain(&domain)
            .forward(http_fwd(service.addr.port()));
        let mut client = TestClient::start(&client_spec);
        let port = public_port(&client.connected().await, 0);
        let mut visitor = TcpStream::connect(local(port)).await.unwrap();
        for path in ["/one", "/two"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {domain}\r\n\r\n");
            visitor.write_all(req.as_bytes()).await.unwrap();
            let want = format!("\r\n\r\n{path}");
            let mut got = Vec::new();
            within(WAIT, "the gateway's answer", async {
                let mut buf = [0u8; 1024];
                while !String::from_utf8_lossy(&got).ends_with(&want) {
                    let n = visitor.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
            })
            .await;
            assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        }
    })
    .await
}

/// A QUIC connection to `server` that is not an opennotr client (yet).
async fn stranger(server: SocketAddr) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let timing = QuicTiming {
        keepalive_interval: std::time::Duration::from_secs(5),
        idle_timeout: std::time::Duration::from_secs(15),
    };
    let mut ep = quinn::Endpoint::client(local(0)).unwrap();
    ep.set_default_client_config(q::client_config(timing).unwrap());
    let conn = ep.connect(server, "opennotr").unwrap().await?;
    Ok((ep, conn))
}

/// The control port's pre-authentication bounds hold on QUIC: the
/// per-source cap refuses a connection attempt outright, a silent
/// connection is closed after helloTimeout, garbage and an oversized
/// handshake frame are closed and counted as failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_bounded_before_authentication() {
    run_test(async {
        let spec = ServerSpec {
            server_yaml: "  quic: true\n  helloTimeout: 1\n".into(),
            limits: vec![("maxHandshakesPerIp", 2)],
            ..quic_server()
        };
        let server = TestServer::start(&spec).await;
        let addr = server.quic.unwrap();
        let a = stranger(addr).await.expect("a first stranger gets a QUIC connection");
        let b = stranger(addr).await.expect("and a second");
        let c = stranger(addr).await;
        assert!(matches!(c, Err(quinn::ConnectionError::ConnectionClosed(_))), "a third is refused: {c:?}");
        within(CLOSE_GUARD, "silent strangers to be closed after helloTimeout", async {
            a.1.closed().await;
            b.1.closed().await;
        })
        .await;

        let not_a_client = stranger(addr).await.expect("room again");
        let (mut send, _recv) = not_a_client.1.open_bi().await.unwrap();
        send.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        within(CLOSE_GUARD, "garbage to be closed", not_a_client.1.closed()).await;

        let oversized = stranger(addr).await.expect("room again");
        let (mut send, _recv) = oversized.1.open_bi().await.unwrap();
        let mut first = b"NOTR\x01".to_vec();
        first.extend_from_slice(&5000u32.to_be_bytes());
        send.write_all(&first).await.unwrap();
        within(CLOSE_GUARD, "an oversized hello to be closed", oversized.1.closed()).await;

        let admin = server.admin.unwrap();
        within(WAIT, "the server to count both failures", async {
            loop {
                let m = admin_metrics(admin, TOKEN).await;
                if metric(&m, "opennotr_handshakes_total{result=\"protocol_error\"}") == Some(2) {
                    assert_eq!(metric(&m, "opennotr_auth_failures_total"), Some(2), "{m}");
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        // A real client still gets in.
        let mut client = TestClient::start(&quic_client(&server));
        client.connected().await;
    })
    .await
}
