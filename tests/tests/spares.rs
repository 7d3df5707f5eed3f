//! Spare data channels: a client keeps a few authenticated data channels
//! open ahead of need, and a visitor's stream takes one instead of waiting
//! for the client to dial (the round trip a WAN makes expensive).

use opennotr_admin::Backend;
use opennotr_proto::frame::preface;
use opennotr_proto::message::ClientMessage;
use opennotr_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn value(server: &TestServer, series: &str) -> u64 {
    let m = server.handle.metrics();
    metric(&m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"))
}

fn spares(server: &TestServer) -> u64 {
    value(server, "opennotr_spare_channels")
}

fn via(server: &TestServer, how: &str) -> u64 {
    value(server, &format!("opennotr_stream_channels_total{{via=\"{how}\"}}"))
}

fn client(server: &TestServer, spare_channels: Option<u32>) -> ClientSpec {
    ClientSpec { multiplex: false, spare_channels, ..ClientSpec::new(server.addr) }
}

#[tokio::test]
async fn a_visitor_stream_starts_on_a_spare_channel() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let echo = tcp_echo().await;
        let mut c = TestClient::start(&client(&server, None).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&c.connected().await, 0));
        wait_until("the client's four spare channels", || spares(&server) == 4).await;

        assert_echo(public, &pattern(1, 100_000)).await;
        assert_eq!((via(&server, "spare"), via(&server, "dialed")), (1, 0));
        wait_until("the spare taken to be replaced", || spares(&server) == 4).await;

        // More visitors at once than there are spares: every one is
        // served, the first ones on spares, the rest dialed or on spares
        // opened meanwhile.
        let visitors: Vec<_> = (0..20).map(|i| tokio::spawn(assert_echo(public, pattern(i, 10_000).leak()))).collect();
        for v in visitors {
            v.await.unwrap();
        }
        assert_eq!(via(&server, "spare") + via(&server, "dialed"), 21);
        assert!(via(&server, "spare") >= 5, "the four idle spares served the first visitors");
        wait_until("the pool to be full again", || spares(&server) == 4).await;
        c.stop().await;
        server.wait_no_sessions().await;
        assert_eq!(spares(&server), 0, "a session's spares end with it");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn either_side_can_turn_spares_off() {
    run_test(async {
        // The client asks for none.
        let server = TestServer::start(&ServerSpec::default()).await;
        let echo = tcp_echo().await;
        let mut c = TestClient::start(&client(&server, Some(0)).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&c.connected().await, 0));
        assert_echo(public, b"dialed").await;
        assert_eq!((via(&server, "spare"), via(&server, "dialed"), spares(&server)), (0, 1, 0));
        c.stop().await;
        server.stop().await;

        // The server grants none: the client opens none and dials.
        let spec = ServerSpec { limits: vec![("spareChannels", 0)], ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let mut c = TestClient::start(&client(&server, Some(8)).forward(tcp_fwd(0, echo.addr.port())));
        let public = local(public_port(&c.connected().await, 0));
        assert_echo(public, b"dialed").await;
        assert_eq!((via(&server, "spare"), via(&server, "dialed"), spares(&server)), (0, 1, 0));
        c.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_spare_to_a_service_that_is_down_closes_the_visitor_and_nothing_else() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let echo = tcp_echo().await;
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spec = client(&server, Some(2)).forward(tcp_fwd(0, down)).forward(tcp_fwd(0, echo.addr.port()));
        let mut c = TestClient::start(&spec);
        let reg = c.connected().await;
        let (dead, live) = (local(public_port(&reg, 0)), local(public_port(&reg, 1)));
        wait_until("two spares", || spares(&server) == 2).await;

        let mut visitor = within(WAIT, "connecting", TcpStream::connect(dead)).await.unwrap();
        visitor.write_all(b"hello?").await.unwrap();
        assert!(read_until_closed(&mut visitor).await.is_empty(), "nothing answers for a service that is down");
        assert_eq!(via(&server, "spare"), 1);

        // The session, its other forward and its pool go on.
        wait_until("the spare replaced", || spares(&server) == 2).await;
        assert_echo(live, b"still here").await;
        assert_eq!(server.handle.sessions().len(), 1);
        assert!(c.pending_events().is_empty(), "the client did not reconnect");
        c.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_forged_spare_hello_is_a_failed_guess_and_joins_nothing() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut c = TestClient::start(&client(&server, Some(1)));
        c.connected().await;
        wait_until("one spare", || spares(&server) == 1).await;
        let id = Backend::sessions(&server.handle)[0].id.clone();
        let session: Vec<u8> =
            (0..id.len()).step_by(2).map(|i| u8::from_str_radix(&id[i..i + 2], 16).unwrap()).collect();

        for (session, what) in [(vec![0u8; 16], "no such session"), (session, "a bad MAC")] {
            let mut tcp = within(WAIT, "connecting", TcpStream::connect(server.addr)).await.unwrap();
            let hello = ClientMessage::SpareHello { session, channel: 99, nonce: vec![1; 16], mac: vec![2; 32] };
            let mut first = preface().to_vec();
            first.extend_from_slice(&(hello.to_bytes().len() as u32).to_be_bytes());
            first.extend_from_slice(&hello.to_bytes());
            tcp.write_all(&first).await.unwrap();
            assert!(read_until_closed(&mut tcp).await.is_empty(), "{what}: closed without a word");
        }
        assert_eq!(spares(&server), 1, "neither joined the pool");
        assert_eq!(value(&server, "opennotr_auth_failures_total"), 1, "the bad MAC counts as a guess");
        c.stop().await;
        server.stop().await;
    })
    .await;
}
