//! The control port under attack from one host: key guessing, idle
//! connections, oversized and silent hellos. Each test shows a legitimate
//! client unaffected.
//!
//! The attacker connects from 127.0.0.2 (or shares 127.0.0.1 with the
//! client, where that is the point): loopback answers for all of 127/8, so
//! two sources need no network namespaces.

use std::net::SocketAddr;

use opennotr_proto::frame::{preface, MAX_HANDSHAKE_FRAME_LEN};
use opennotr_proto::message::{RefuseCode, ServerMessage};
use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TOKEN: &str = "hardening-admin-token";
const ATTACKER: &str = "127.0.0.2";

async fn connect_from(src: &str, server: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
    within(WAIT, "connecting", s.connect(server)).await.unwrap()
}

async fn send_frame(tcp: &mut TcpStream, body: &[u8]) {
    tcp.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
}

/// The server's next frame, or `None` if it closed first.
async fn recv_frame(tcp: &mut TcpStream) -> Option<ServerMessage> {
    let mut len = [0u8; 4];
    within(WAIT, "a frame from the server", tcp.read_exact(&mut len)).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    within(WAIT, "a frame's body", tcp.read_exact(&mut body)).await.ok()?;
    Some(ServerMessage::from_bytes(&body).expect("a server message"))
}

/// One online guess of the shared key from `src`, as a client would make
/// it, dropping the connection once the server's proof fails to verify.
/// Returns the server's answer to the hello.
async fn guess(server: SocketAddr, src: &str, key: &str) -> ServerMessage {
    let mut tcp = connect_from(src, server).await;
    let hs = send_hello(&mut tcp, key, "guesser").await;
    let reply = recv_frame(&mut tcp).await.expect("the server answers a hello");
    if let ServerMessage::Challenge { spake, mac, .. } = &reply {
        assert!(hs.finish(spake, mac).is_err(), "the guess was wrong");
    }
    reply
}

async fn metrics(admin: SocketAddr) -> String {
    admin_metrics(admin, TOKEN).await
}

/// The value of `series`, which must be there.
fn value(metrics: &str, series: &str) -> u64 {
    metric(metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

fn spec(limits: Vec<(&'static str, u64)>, server_yaml: &str) -> ServerSpec {
    ServerSpec {
        limits,
        server_yaml: server_yaml.to_string(),
        extra_yaml: format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n"),
        ..ServerSpec::default()
    }
}

#[tokio::test]
async fn key_guessing_earns_a_penalty_and_other_sources_are_untouched() {
    run_test(async {
        let server = TestServer::start(&spec(vec![("authFailures", 3), ("authPenalty", 600)], "")).await;
        let admin = server.admin.unwrap();

        // Sixteen guessers from one host, twenty guesses each: the server
        // evaluates the first three, and at most one more per guesser that
        // had passed the check when the penalty began. Every other hello
        // is refused before any cryptography.
        let mut guessers = Vec::new();
        for _ in 0..16 {
            let addr = server.addr;
            guessers.push(tokio::spawn(async move {
                let (mut evaluated, mut refused) = (0, 0);
                for _ in 0..20 {
                    match guess(addr, ATTACKER, "not the key").await {
                        ServerMessage::Challenge { .. } => evaluated += 1,
                        ServerMessage::Refused { code: RefuseCode::TooManyFailures, message } => {
                            assert!(message.contains("retry in"), "{message}");
                            refused += 1;
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
                (evaluated, refused)
            }));
        }
        let (mut evaluated, mut refused) = (0, 0);
        for g in guessers {
            let (e, r) = g.await.unwrap();
            evaluated += e;
            refused += r;
        }
        assert_eq!(evaluated + refused, 320);
        assert!(evaluated <= 3 + 15, "{evaluated} guesses evaluated");
        let m = metrics(admin).await;
        assert_eq!(value(&m, "opennotr_auth_penalties_total"), 1);
        assert_eq!(value(&m, "opennotr_penalized_sources"), 1);
        assert_eq!(value(&m, "opennotr_handshakes_total{result=\"penalized\"}"), refused);

        // A client on another source connects and serves as usual.
        let (_echo, client, public) = tcp_echo_client(server.addr).await;
        assert_echo(public, b"unaffected").await;
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_penalized_address_keeps_the_streams_of_its_live_session() {
    run_test(async {
        let server = TestServer::start(&spec(vec![("authFailures", 3), ("authPenalty", 600)], "")).await;
        let (_echo, client, public) = tcp_echo_client(server.addr).await;

        // Someone on the client's own address guesses the key.
        for _ in 0..3 {
            assert!(matches!(guess(server.addr, "127.0.0.1", "not the key").await, ServerMessage::Challenge { .. }));
        }
        assert!(matches!(
            guess(server.addr, "127.0.0.1", "not the key").await,
            ServerMessage::Refused { code: RefuseCode::TooManyFailures, .. }
        ));

        // The live session's visitors still get data channels from that
        // address (a MAC under the session's key, never penalized)...
        let visitors: Vec<_> =
            (0..20u8).map(|i| tokio::spawn(async move { assert_echo(public, &[i; 1000]).await })).collect();
        for v in visitors {
            v.await.unwrap();
        }
        // ...while a new handshake from it waits out the penalty, told why.
        let mut second = TestClient::start(&ClientSpec::new(server.addr));
        match second.wait_event("a refusal", |e| matches!(e, Event::Refused { .. })).await {
            Event::Refused { code, message } => {
                assert_eq!(code, RefuseCode::TooManyFailures);
                assert!(message.contains("retry in"), "{message}");
            }
            _ => unreachable!(),
        }
        assert_eq!(server.handle.sessions().len(), 1);
        second.stop().await;
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn idle_connections_from_one_host_do_not_starve_data_channels_or_clients() {
    run_test(async {
        // A long hello timeout: the idle connections stay as long as the
        // test runs, so only the per-source cap stops them.
        let spec = spec(vec![("maxHandshakesPerIp", 8)], "  helloTimeout: 60\n");
        let server = TestServer::start(&spec).await;
        let admin = server.admin.unwrap();
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(connect_from(ATTACKER, server.addr).await);
        }
        wait_until_metric(admin, "opennotr_control_connections_refused_total{reason=\"source\"}", 292).await;

        // A client from another address connects, and a burst of fifty
        // visitors gets fifty data channels at once (its address has a
        // live session, so the cap of strangers does not hold it).
        let (_echo, client, public) = tcp_echo_client(server.addr).await;
        let visitors: Vec<_> =
            (0..50u8).map(|i| tokio::spawn(async move { assert_echo(public, &[i; 2000]).await })).collect();
        for v in visitors {
            v.await.unwrap();
        }
        // Exactly the eight admitted idle connections are still open.
        let mut open = 0;
        for s in idle {
            let mut b = [0u8; 1];
            match s.try_read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                _ => {}
            }
        }
        assert_eq!(open, 8);
        client.stop().await;
        server.stop().await;
    })
    .await;
}

async fn wait_until_metric(admin: SocketAddr, series: &str, at_least: u64) {
    within(WAIT, series, async {
        loop {
            if value(&metrics(admin).await, series) >= at_least {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn oversized_and_silent_hellos_are_cut_off() {
    run_test(async {
        // A hello frame announcing 1 MiB is refused on its length, long
        // before the hello timeout: nothing is read or allocated for its
        // body.
        let patient = TestServer::start(&spec(Vec::new(), "  helloTimeout: 600\n")).await;
        let mut big = connect_from(ATTACKER, patient.addr).await;
        big.write_all(&preface()).await.unwrap();
        big.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        big.write_all(&[b'{'; 512]).await.unwrap();
        assert!(read_until_closed(&mut big).await.is_empty());
        // At the cap it is read (and refused as the garbage it is).
        let mut at_cap = connect_from(ATTACKER, patient.addr).await;
        at_cap.write_all(&preface()).await.unwrap();
        send_frame(&mut at_cap, &vec![b' '; MAX_HANDSHAKE_FRAME_LEN]).await;
        let reply = recv_frame(&mut at_cap).await;
        assert!(matches!(reply, Some(ServerMessage::Refused { code: RefuseCode::ProtocolError, .. })), "{reply:?}");
        patient.stop().await;

        // A connection that sends nothing, or only part of its preface, is
        // closed after helloTimeout.
        let server = TestServer::start(&spec(Vec::new(), "  helloTimeout: 0.5\n")).await;
        let mut silent = connect_from(ATTACKER, server.addr).await;
        let mut partial = connect_from(ATTACKER, server.addr).await;
        partial.write_all(b"NO").await.unwrap();
        assert!(read_until_closed(&mut silent).await.is_empty());
        assert!(read_until_closed(&mut partial).await.is_empty());

        let mut client = TestClient::start(&ClientSpec::new(server.addr));
        client.connected().await;
        client.stop().await;
        server.stop().await;
    })
    .await;
}

/// A hello with the right key from `src`; returns the connection.
async fn hello_from(src: &str, server: SocketAddr) -> TcpStream {
    let mut tcp = connect_from(src, server).await;
    send_hello(&mut tcp, KEY, "test").await;
    tcp
}

#[tokio::test]
async fn clients_that_give_up_before_their_challenge_are_not_penalized() {
    run_test(async {
        // A busy server, as in a reconnect storm: its two handshake slots
        // are held by handshakes from another address, waiting for their
        // confirmations.
        let server = TestServer::start(&spec(vec![("maxHandshakes", 2), ("authFailures", 3)], "")).await;
        let admin = server.admin.unwrap();
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut holder = hello_from("127.0.0.3", server.addr).await;
            assert!(matches!(recv_frame(&mut holder).await, Some(ServerMessage::Challenge { .. })));
            holders.push(holder);
        }

        // Six clients of ATTACKER's address send their hello and give up
        // (their handshakeTimeout) before the server gets to it.
        let mut gave_up = Vec::new();
        for _ in 0..6 {
            let mut tcp = hello_from(ATTACKER, server.addr).await;
            tcp.shutdown().await.unwrap();
            gave_up.push(tcp);
        }
        // The slots come free: the server takes their hellos, finds them
        // gone and answers nothing, so nobody learns anything from them...
        drop(holders);
        for mut tcp in gave_up {
            assert!(read_until_closed(&mut tcp).await.is_empty(), "a challenge went to a client that had left");
        }
        wait_until_metric(admin, "opennotr_handshakes_total{result=\"closed\"}", 6).await;
        // ...and they are not failed guesses: only the holders' are.
        let m = metrics(admin).await;
        assert_eq!(value(&m, "opennotr_auth_failures_total"), 2, "{m}");
        assert_eq!(metric(&m, "opennotr_auth_penalties_total").unwrap_or(0), 0, "{m}");
        // The address's next client gets its challenge.
        assert!(matches!(guess(server.addr, ATTACKER, "not the key").await, ServerMessage::Challenge { .. }));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn strangers_filling_the_queue_from_many_addresses_leave_a_clients_data_channels() {
    run_test(async {
        // maxHandshakes 2: four times that, eight connections, may wait
        // for their hello in all.
        let server = TestServer::start(&spec(vec![("maxHandshakes", 2)], "  helloTimeout: 600\n")).await;
        let admin = server.admin.unwrap();
        let (_echo, client, public) = tcp_echo_client(server.addr).await;

        // Sixteen idle strangers, each from an address of its own: eight
        // fill the queue, the others are closed at once.
        let mut idle = Vec::new();
        for i in 2..18 {
            idle.push(connect_from(&format!("127.0.0.{i}"), server.addr).await);
        }
        wait_until_metric(admin, "opennotr_control_connections_refused_total{reason=\"busy\"}", 8).await;

        // The client's address has room of its own: twenty visitors at
        // once get their twenty data channels.
        let visitors: Vec<_> =
            (0..20u8).map(|i| tokio::spawn(async move { assert_echo(public, &[i; 1000]).await })).collect();
        for v in visitors {
            v.await.unwrap();
        }
        drop(idle);
        client.stop().await;
        server.stop().await;
    })
    .await;
}
