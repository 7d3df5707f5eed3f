//! Reconnects: after a server restart, after a cut connection (same VIP,
//! domain and ports), replacing a stale session, and dead peer detection.

use opennotr_tests::*;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_a_server_restart() {
    run_test(async {
        let echo = tcp_echo().await;
        let first = TestServer::start(&ServerSpec::default()).await;
        let addr = first.addr;
        let mut client = TestClient::start(&ClientSpec::new(addr).forward(tcp_fwd(0, echo.addr.port())));
        let reg = client.connected().await;
        assert_echo(local(public_port(&reg, 0)), b"before the restart").await;

        first.stop().await;
        let reason = client.disconnected().await;
        assert!(reason.contains("server going away"), "the server should say it is shutting down: {reason}");

        // A new server on the same control address.
        let second = TestServer::start(&ServerSpec { listen: addr, ..Default::default() }).await;
        assert_eq!(second.addr, addr);
        let reg = client.connected().await;
        assert_echo(local(public_port(&reg, 0)), b"after the restart").await;
        assert_eq!(second.handle.sessions().len(), 1);
    })
    .await
}

/// The client's connection is cut (both ends see it); it reconnects by
/// itself and gets the same VIP, domain and auto-allocated ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_vip_domain_and_ports() {
    run_test(async {
        let echo = tcp_echo().await;
        let udp = udp_echo().await;
        let server = TestServer::start(&ServerSpec::default()).await;
        let proxy = Proxy::start(server.addr).await;
        let spec =
            ClientSpec::new(proxy.addr).forward(tcp_fwd(0, echo.addr.port())).forward(udp_fwd(0, udp.addr.port()));
        let mut client = TestClient::start(&spec);
        let first = client.connected().await;
        assert!(first.domain.ends_with(ZONE), "{}", first.domain);
        assert_echo(local(public_port(&first, 0)), b"first").await;

        proxy.cut_all();
        client.disconnected().await;
        let second = client.connected().await;
        assert_eq!(second.vip, first.vip, "VIP");
        assert_eq!(second.domain, first.domain, "domain");
        assert_eq!(public_port(&second, 0), public_port(&first, 0), "tcp port");
        assert_eq!(public_port(&second, 1), public_port(&first, 1), "udp port");
        assert_echo(local(public_port(&second, 0)), b"second").await;
        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].vip, first.vip);
    })
    .await
}

/// Only the client's side of the connection dies; the server still holds
/// the old session (its keepalive timeout is a minute away). The client's
/// new registration replaces its own stale session at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_replaces_its_stale_session_at_once() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&ServerSpec { keepalive: Some((5.0, 60.0)), ..Default::default() }).await;
        let proxy = Proxy::start(server.addr).await;
        let spec = ClientSpec::new(proxy.addr).domain("stale.e2e.notr.test").forward(tcp_fwd(0, echo.addr.port()));
        let mut client = TestClient::start(&spec);
        let first = client.connected().await;
        let old_remote = server.handle.sessions()[0].remote;

        proxy.drop_client_side();
        client.disconnected().await;
        // Well before the server's keepalive timeout (60 s): WAIT is 10 s.
        let second = client.connected().await;
        let refusals: Vec<_> = client.history.iter().filter(|e| matches!(e, Event::Refused { .. })).collect();
        assert!(refusals.is_empty(), "the new registration was refused first: {refusals:?}");
        assert_eq!(second.domain, "stale.e2e.notr.test");
        assert_eq!(second.vip, first.vip);
        assert_eq!(public_port(&second, 0), public_port(&first, 0));
        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1, "the stale session is gone");
        assert_ne!(sessions[0].remote, old_remote, "the live session is the new connection");
        assert_echo(local(public_port(&second, 0)), b"replaced").await;
    })
    .await
}

/// The path between client and server goes silent without closing. Both
/// ends notice through their keepalives; the server frees everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_detected_and_its_session_freed() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&ServerSpec { keepalive: Some((0.2, 1.0)), ..Default::default() }).await;
        let proxy = Proxy::start(server.addr).await;
        let mut spec = ClientSpec::new(proxy.addr).forward(tcp_fwd(0, echo.addr.port()));
        spec.keepalive = Some((0.2, 1.0));
        spec.handshake_timeout = Some(2.0);
        let mut client = TestClient::start(&spec);
        let reg = client.connected().await;
        let port = public_port(&reg, 0);
        assert_echo(local(port), b"alive").await;
        assert!(server.handle.vip_in_use(reg.vip));

        // New connections go nowhere either, so the client cannot come back.
        proxy.set_blackhole(true);
        proxy.freeze_all();

        let reason = client.disconnected().await;
        assert!(reason.contains("silent"), "client's reason: {reason}");
        server.wait_no_sessions().await;
        assert!(!server.handle.vip_in_use(reg.vip), "VIP still held");
        let l = TcpListener::bind(local(port)).await;
        assert!(l.is_ok(), "public port {port} still bound: {:?}", l.err());
    })
    .await
}

/// A server shutting down tells each client so (`going_away`) before it
/// closes their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_client_it_is_going_away() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut clients = Vec::new();
        for _ in 0..8 {
            let mut c = TestClient::start(&ClientSpec::new(server.addr));
            c.connected().await;
            clients.push(c);
        }
        server.stop().await;
        for (i, c) in clients.iter_mut().enumerate() {
            let reason = c.disconnected().await;
            assert!(reason.contains("server going away"), "client {i}: {reason}");
        }
    })
    .await
}

/// A client that never pings (an older or minimal one) is pinged by the
/// server once it has been silent for a keepalive interval, answers, and
/// keeps its session past many keepalive timeouts. (Clients that do ping
/// are not pinged: the server's timer restarts on every frame it hears.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_a_client_that_does_not() {
    use bytes::BytesMut;
    use opennotr_proto::message::{ClientMessage, ServerMessage};
    use opennotr_transport::{read_frame_exact, write_frame, Channel, FrameReader, FrameWriter, SecureStream};

    run_test(async {
        let server = TestServer::start(&ServerSpec { keepalive: Some((0.1, 0.5)), ..Default::default() }).await;
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let hs = send_hello(&mut tcp, KEY, "silent").await;
        let challenge = ServerMessage::from_bytes(&read_frame_exact(&mut tcp).await.unwrap()).unwrap();
        let ServerMessage::Challenge { spake, mac, .. } = challenge else {
            panic!("expected challenge: {challenge:?}")
        };
        let (keys, mac) = hs.finish(&spake, &mac).unwrap();
        write_frame(&mut tcp, &ClientMessage::Confirm { mac }.to_bytes()).await.unwrap();
        let chan =
            Channel::Sealed(Box::new(SecureStream::new(tcp, &keys.control.c2s, &keys.control.s2c, BytesMut::new())));
        let (rd, wr) = tokio::io::split(chan);
        let (mut reader, mut writer) = (FrameReader::new(rd), FrameWriter::new(wr));
        let register = ClientMessage::Register {
            client_id: "silent-client".into(),
            domain: None,
            forwards: Vec::new(),
            vip_ports: Vec::new(),
            mux: false,
            bandwidth: None,
        };
        writer.send(&register.to_bytes()).await.unwrap();
        let mut next =
            async || ServerMessage::from_bytes(&within(WAIT, "a server message", reader.next()).await.unwrap());
        assert!(matches!(next().await, Ok(ServerMessage::Registered { .. })));
        // Twenty pings a tenth of a second apart: four times the 0.5 s
        // after which a client the server does not hear from is dropped.
        for expected in 1..=20u64 {
            match next().await {
                Ok(ServerMessage::Ping { seq }) => {
                    assert_eq!(seq, expected);
                    writer.send(&ClientMessage::Pong { seq }.to_bytes()).await.unwrap();
                }
                other => panic!("expected the server's ping {expected}, got {other:?}"),
            }
        }
        assert_eq!(server.handle.sessions().len(), 1, "the silent client kept its session");
    })
    .await
}

/// `serverAddr` with several servers: a client passes over one that is
/// down, and when its server goes away it moves to the next and gets its
/// forward back there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_several_servers_moves_to_the_next() {
    run_test(async {
        let echo = tcp_echo().await;
        let down = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let a = TestServer::start(&ServerSpec::default()).await;
        let b = TestServer::start(&ServerSpec::default()).await;
        let spec = ClientSpec::new(a.addr).forward(tcp_fwd(0, echo.addr.port()));
        let servers = format!("serverAddr: \"{down}, {}, {}\"\n", a.addr, b.addr);
        let yaml = spec.yaml().replace(&format!("serverAddr: \"{}\"\n", a.addr), &servers);
        let mut client = TestClient::start_config(opennotr_config::parse_client(&yaml).unwrap());

        let reg = client.connected().await;
        assert_eq!(a.handle.sessions().len(), 1, "the server that is down is passed over");
        assert_echo(local(public_port(&reg, 0)), b"on the first live server").await;

        a.stop().await;
        let reason = client.disconnected().await;
        assert!(reason.contains("going away"), "{reason}");
        let reg = client.connected().await;
        assert_eq!(b.handle.sessions().len(), 1, "the next server after the one lost");
        assert_echo(local(public_port(&reg, 0)), b"on the next server").await;
        client.stop().await;
        b.stop().await;
    })
    .await
}
