//! TCP forwards: echo, many connections, half-close, close, isolation of
//! streams, port rules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server, a client with one TCP forward to `target`, and the public address.
async fn tunnel_to(target: std::net::SocketAddr) -> (TestServer, TestClient, std::net::SocketAddr) {
    let server = TestServer::start(&ServerSpec::default()).await;
    let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, target.port())));
    let reg = client.connected().await;
    let public = local(public_port(&reg, 0));
    (server, client, public)
}

async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within(WAIT, "reading from a tunnelled connection", s.read_exact(&mut buf)).await.expect("read");
    buf
}

async fn expect_eof(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 16];
    let n = within(WAIT, what, s.read(&mut buf)).await.unwrap_or_else(|e| panic!("{what}: read error {e}"));
    assert_eq!(n, 0, "{what}: expected EOF, got {:?}", &buf[..n]);
}

/// Connects to `public` and expects the connection to be reset (or closed)
/// without a byte of data; the reset may already fail the connect.
async fn assert_turned_away(public: std::net::SocketAddr, what: &str) {
    let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
    let mut visitor = match TcpStream::connect(public).await {
        Ok(v) => v,
        Err(e) if reset(&e) => return,
        Err(e) => panic!("{what}: cannot connect: {e}"),
    };
    let _ = visitor.write_all(b"anyone?").await;
    let mut buf = [0u8; 16];
    match within(WAIT, what, visitor.read(&mut buf)).await {
        Ok(0) => {}
        Err(e) if reset(&e) => {}
        other => panic!("{what}: expected a reset or EOF, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_encrypted() {
    run_test(async {
        let echo = tcp_echo().await;
        let (server, mut client, public) = tunnel_to(echo.addr).await;
        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1);
        assert!(!sessions[0].plaintext);
        assert_echo(public, b"hello through the tunnel").await;
        assert_echo(public, &pattern(1, 300_000)).await;
        assert!(client.pending_events().is_empty(), "unexpected events: {:?}", client.history);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_plaintext() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&ServerSpec { allow_plaintext: true, ..Default::default() }).await;
        let mut spec = ClientSpec::new(server.addr).forward(tcp_fwd(0, echo.addr.port()));
        spec.plaintext = true;
        let mut client = TestClient::start(&spec);
        let public = local(public_port(&client.connected().await, 0));
        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1);
        assert!(sessions[0].plaintext, "the session should be unencrypted");
        assert_echo(public, b"plain hello").await;
        assert_echo(public, &pattern(2, 300_000)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_refused_unless_allowed() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut spec = ClientSpec::new(server.addr);
        spec.plaintext = true;
        let mut client = TestClient::start(&spec);
        let e = client.wait_event("a refusal", |e| matches!(e, Event::Refused { .. })).await;
        let Event::Refused { code, message } = e else { unreachable!() };
        assert_eq!(code, RefuseCode::PlaintextNotAllowed);
        assert!(message.contains("allowPlaintext"), "{message}");
        assert!(server.handle.sessions().is_empty());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_each_echo_their_own_payload() {
    run_test(async {
        let echo = tcp_echo().await;
        let (_server, _client, public) = tunnel_to(echo.addr).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            tasks.spawn(async move {
                let payload = pattern(1000 + i, 1000 + (i as usize * 97) % 20_000);
                let back = echo_once(public, &payload).await;
                (i, back == payload)
            });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            let (i, same) = r.expect("connection task panicked");
            assert!(same, "connection {i} got someone else's bytes back");
            ok += 1;
        }
        assert_eq!(ok, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_visitor() {
    run_test(async {
        let (svc, mut accepted) = tcp_accepting().await;
        let (_server, _client, public) = tunnel_to(svc.addr).await;
        let mut visitor = TcpStream::connect(public).await.unwrap();
        visitor.write_all(b"request").await.unwrap();
        visitor.shutdown().await.unwrap();
        let mut service = within(WAIT, "the client to dial the service", accepted.recv()).await.unwrap();
        assert_eq!(read_exactly(&mut service, 7).await, b"request");
        expect_eof(&mut service, "service sees the visitor's half-close").await;
        // The other direction still works after the half-close.
        service.write_all(b"reply after your FIN").await.unwrap();
        assert_eq!(read_exactly(&mut visitor, 20).await, b"reply after your FIN");
        service.shutdown().await.unwrap();
        expect_eof(&mut visitor, "visitor sees the service's close").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_service() {
    run_test(async {
        let (svc, mut accepted) = tcp_accepting().await;
        let (_server, _client, public) = tunnel_to(svc.addr).await;
        let mut visitor = TcpStream::connect(public).await.unwrap();
        let mut service = within(WAIT, "the client to dial the service", accepted.recv()).await.unwrap();
        service.write_all(b"banner").await.unwrap();
        service.shutdown().await.unwrap();
        assert_eq!(read_exactly(&mut visitor, 6).await, b"banner");
        expect_eof(&mut visitor, "visitor sees the service's half-close").await;
        // The visitor can still talk, and the service hears it.
        visitor.write_all(b"still talking").await.unwrap();
        assert_eq!(read_exactly(&mut service, 13).await, b"still talking");
        visitor.shutdown().await.unwrap();
        expect_eof(&mut service, "service sees the visitor's close").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_by_the_service_reaches_the_visitor() {
    run_test(async {
        let (svc, mut accepted) = tcp_accepting().await;
        let (_server, _client, public) = tunnel_to(svc.addr).await;
        let mut visitor = TcpStream::connect(public).await.unwrap();
        visitor.write_all(b"x").await.unwrap();
        let mut service = within(WAIT, "the client to dial the service", accepted.recv()).await.unwrap();
        assert_eq!(read_exactly(&mut service, 1).await, b"x");
        service.write_all(b"bye").await.unwrap();
        drop(service);
        assert_eq!(read_exactly(&mut visitor, 3).await, b"bye");
        expect_eof(&mut visitor, "visitor sees the service's close").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_by_the_visitor_reaches_the_service() {
    run_test(async {
        let (svc, mut accepted) = tcp_accepting().await;
        let (_server, _client, public) = tunnel_to(svc.addr).await;
        let mut visitor = TcpStream::connect(public).await.unwrap();
        visitor.write_all(b"hello").await.unwrap();
        let mut service = within(WAIT, "the client to dial the service", accepted.recv()).await.unwrap();
        assert_eq!(read_exactly(&mut service, 5).await, b"hello");
        drop(visitor);
        expect_eof(&mut service, "service sees the visitor's close").await;
    })
    .await
}

/// Connection A's service never reads; the visitor keeps pushing into A
/// until its writes block. Connection B of the same forward (and a new
/// connection C) echo all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_block_another() {
    run_test(async {
        // First byte 'S': never read again. 'E': echo.
        let svc = tcp_service(|mut s| async move {
            let mut kind = [0u8; 1];
            if s.read_exact(&mut kind).await.is_err() {
                return;
            }
            if kind[0] == b'S' {
                // Holds the connection, reading nothing more.
                return std::future::pending::<()>().await;
            }
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        })
        .await;
        let (_server, _client, public) = tunnel_to(svc.addr).await;

        let written = Arc::new(AtomicU64::new(0));
        let mut a = TcpStream::connect(public).await.unwrap();
        a.write_all(b"S").await.unwrap();
        let w = written.clone();
        let pusher = tokio::spawn(async move {
            let chunk = vec![0x5a; 16 * 1024];
            // Far more than every buffer on the way can hold.
            for _ in 0..(4u64 << 30) / chunk.len() as u64 {
                if a.write_all(&chunk).await.is_err() {
                    return;
                }
                w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        });

        let mut b = TcpStream::connect(public).await.unwrap();
        b.write_all(b"E").await.unwrap();
        // Echo on B until A has pushed several MB and then made no progress
        // during 100 consecutive round trips of B: A is stalled, B is not.
        let mut still = 0;
        let mut round = 0u64;
        while still < 100 {
            let before = written.load(Ordering::SeqCst);
            let msg = pattern(round, 1000);
            b.write_all(&msg).await.unwrap();
            assert_eq!(read_exactly(&mut b, msg.len()).await, msg, "B's echo, round {round}");
            let after = written.load(Ordering::SeqCst);
            still = if after == before && after >= 4 << 20 { still + 1 } else { 0 };
            round += 1;
        }
        assert!(!pusher.is_finished(), "A's writes never blocked");
        // A new connection is served too while A is stuck.
        let mut c = TcpStream::connect(public).await.unwrap();
        c.write_all(b"Enew connection").await.unwrap();
        assert_eq!(read_exactly(&mut c, 14).await, b"new connection");
        assert!(!pusher.is_finished());
        eprintln!("A stalled after {} bytes; B did {round} round trips", written.load(Ordering::SeqCst));
        pusher.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_out_of_range_is_refused_while_the_others_work() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&ServerSpec::default()).await;
        let spec = ClientSpec::new(server.addr)
            .forward(tcp_fwd(PORT_RANGE.0 - 1, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()));
        let mut client = TestClient::start(&spec);
        let reg = client.connected().await;
        assert_eq!(reg.forwards.len(), 2);
        let refused = &reg.forwards[0];
        let error = refused.error.as_deref().expect("the out-of-range forward should be refused");
        assert!(error.contains("outside"), "{error}");
        assert_eq!(refused.public_port, None);
        let port = public_port(&reg, 1);
        assert!((PORT_RANGE.0..=PORT_RANGE.1).contains(&port), "{port} is outside the range");
        assert_echo(local(port), b"the other forward works").await;
        let sessions = server.handle.sessions();
        assert_eq!(sessions[0].forwards.len(), 1, "only the working forward runs");
    })
    .await
}

/// Nothing listens on the client's target: the client refuses the stream
/// and the visitor's connection is reset at once (long before the
/// server's connectTimeout of 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_resets_the_visitor_at_once() {
    run_test(async {
        let gone = std::net::TcpListener::bind(local(0)).unwrap();
        let port = gone.local_addr().unwrap().port();
        drop(gone);
        let server = TestServer::start(&ServerSpec { connect_timeout: Some(30.0), ..Default::default() }).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, port)));
        let public = local(public_port(&client.connected().await, 0));
        assert_turned_away(public, "the visitor's connection to end").await;
        // The session is unharmed.
        assert_eq!(server.handle.sessions().len(), 1);
        assert!(client.pending_events().is_empty(), "{:?}", client.history);
    })
    .await
}

/// maxStreamsPerClient: a visitor beyond the limit is turned away at once;
/// when a stream ends, its slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_per_client_turns_away_the_extra_visitor() {
    run_test(async {
        let echo = tcp_echo().await;
        let spec =
            ServerSpec { connect_timeout: Some(30.0), limits: vec![("maxStreamsPerClient", 2)], ..Default::default() };
        let server = TestServer::start(&spec).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        let mut open = Vec::new();
        for k in 0..2u8 {
            let mut v = TcpStream::connect(public).await.unwrap();
            v.write_all(&[k]).await.unwrap();
            assert_eq!(read_exactly(&mut v, 1).await, [k]);
            open.push(v);
        }
        assert_turned_away(public, "the third visitor to be turned away").await;
        // Close one stream; a new visitor gets through once its slot is free.
        let mut first = open.remove(0);
        first.shutdown().await.unwrap();
        expect_eof(&mut first, "the first stream to end").await;
        drop(first);
        within(WAIT, "a new visitor to get through", async {
            loop {
                if let Ok(mut v) = TcpStream::connect(public).await {
                    let mut b = [0u8; 1];
                    if v.write_all(b"4").await.is_ok() && matches!(v.read(&mut b).await, Ok(1)) {
                        assert_eq!(&b, b"4");
                        return;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    })
    .await
}

/// Every closed visitor connection gives its stream back: nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_release_their_streams() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        for i in 0..50u64 {
            assert_echo(public, &pattern(i, 1000)).await;
        }
        let handle = server.handle.clone();
        wait_until("all streams released", || handle.sessions()[0].open_streams == 0).await;
    })
    .await
}
