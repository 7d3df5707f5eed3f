//! PROXY protocol headers (`forwards[i].proxyProtocol`) on every path a
//! stream takes to the client: a data channel dialed for it, a spare
//! channel, a QUIC stream; v2's DGRAM form in front of each datagram; and
//! a TLS passthrough (`tls`) forward, the header before the ClientHello.
//! The visitor comes from 127.0.0.2, not the server's 127.0.0.1, so a
//! header naming the wrong end fails. The real-binary tests against nginx
//! are in bins/tests/proxy_protocol.rs.

use std::net::{IpAddr, SocketAddr};

use opennotr_admin::Backend;
use opennotr_config::ProxyProtocol;
use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;

const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// The v2 header the service should see, written out by hand.
fn v2(dgram: bool, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else { panic!("IPv4 only here") };
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, if dgram { 0x12 } else { 0x11 }, 0, 12]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
}

/// A visitor from 127.0.0.2 to `public`: sends `hello`, returns its address
/// and the connection.
async fn visit(public: SocketAddr) -> (SocketAddr, TcpStream) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).expect("bind 127.0.0.2 (Linux routes all of 127/8 to lo)");
    let mut s = within(WAIT, "connecting to the public port", sock.connect(public)).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    (s.local_addr().unwrap(), s)
}

/// What the service read first: exactly `expected.len()` bytes of header,
/// then the visitor's `hello`.
async fn service_saw(accepted: &mut mpsc::UnboundedReceiver<TcpStream>, expected: &[u8]) {
    let mut s = within(WAIT, "the service's connection", accepted.recv()).await.unwrap();
    let mut got = vec![0u8; expected.len() + 5];
    within(WAIT, "the header and the visitor's bytes", s.read_exact(&mut got)).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got[..expected.len()]),
        String::from_utf8_lossy(expected),
        "the header ({got:?})"
    );
    assert_eq!(&got[expected.len()..], b"hello", "the visitor's bytes right after the header");
}

fn via(server: &TestServer, how: &str) -> u64 {
    metric(&server.handle.metrics(), &format!("opennotr_stream_channels_total{{via=\"{how}\"}}")).unwrap_or(0)
}

/// A client of `spec` whose forwards send `versions[i]`.
fn with_headers(spec: &ClientSpec, versions: &[Option<ProxyProtocol>]) -> TestClient {
    let mut cfg = spec.config();
    for (f, v) in cfg.forwards.iter_mut().zip(versions) {
        f.proxy_protocol = *v;
    }
    TestClient::start_config(cfg)
}

#[tokio::test]
async fn tcp_headers_on_dialed_and_spare_channels() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let (svc1, mut one) = tcp_accepting().await;
        let (svc2, mut two) = tcp_accepting().await;
        for spares in [Some(0), None] {
            let spec = ClientSpec { multiplex: false, spare_channels: spares, ..ClientSpec::new(server.addr) }
                .forward(tcp_fwd(0, svc1.addr.port()))
                .forward(tcp_fwd(0, svc2.addr.port()));
            let mut c = with_headers(&spec, &[Some(ProxyProtocol::V1), Some(ProxyProtocol::V2)]);
            let reg = c.connected().await;
            let (p1, p2) = (local(public_port(&reg, 0)), local(public_port(&reg, 1)));
            let how = if spares.is_some() { "dialed" } else { "spare" };
            if spares.is_none() {
                let m = || metric(&server.handle.metrics(), "opennotr_spare_channels").unwrap_or(0);
                wait_until("the client's spare channels", || m() == 4).await;
            }
            let before = via(&server, how);
            let (from, _v) = visit(p1).await;
            service_saw(&mut one, &v1(from, p1)).await;
            let (from, _v) = visit(p2).await;
            service_saw(&mut two, &v2(false, from, p2)).await;
            assert_eq!(via(&server, how) - before, 2, "both streams went {how}");
            c.stop().await;
            server.wait_no_sessions().await;
        }
        server.stop().await;
    })
    .await;
}

/// A UDP service that parses the v2 DGRAM header of every datagram
/// strictly and answers the source it names, then the payload.
async fn udp_header_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind(local(0)).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { continue };
            let d = &buf[..n];
            let answer = if n >= 28 && d[..12] == SIGNATURE && d[12..16] == [0x21, 0x12, 0, 12] {
                let src = SocketAddr::new(
                    <[u8; 4]>::try_from(&d[16..20]).unwrap().into(),
                    u16::from_be_bytes([d[24], d[25]]),
                );
                let dst = SocketAddr::new(
                    <[u8; 4]>::try_from(&d[20..24]).unwrap().into(),
                    u16::from_be_bytes([d[26], d[27]]),
                );
                let mut a = format!("{src} {dst} ").into_bytes();
                a.extend_from_slice(&d[28..]);
                a
            } else {
                b"no header".to_vec()
            };
            let _ = sock.send_to(&answer, from).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_streams_and_datagrams_carry_the_header() {
    run_test(async {
        let spec = ServerSpec { server_yaml: "  quic: true\n".into(), ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let (svc, mut accepted) = tcp_accepting().await;
        let (udp, udp_task) = udp_header_echo().await;
        let quic = server.quic.expect("a QUIC endpoint");
        let spec = ClientSpec { transport: Some("quic"), multiplex: false, ..ClientSpec::new(quic) }
            .forward(tcp_fwd(0, svc.addr.port()))
            .forward(udp_fwd(0, udp.port()));
        let mut c = with_headers(&spec, &[Some(ProxyProtocol::V2), Some(ProxyProtocol::V2)]);
        let reg = c.connected().await;
        let (tcp, udp_public) = (local(public_port(&reg, 0)), public_port(&reg, 1));

        let (from, _v) = visit(tcp).await;
        service_saw(&mut accepted, &v2(false, from, tcp)).await;

        // The destination is the udp plugin's socket (the test server binds
        // its public ports to 127.0.0.1).
        let sock = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        sock.connect(local(udp_public)).await.unwrap();
        let from = sock.local_addr().unwrap();
        let mut buf = vec![0u8; 2048];
        for payload in [&b"first"[..], b"second"] {
            sock.send(payload).await.unwrap();
            let n = within(WAIT, "the service's answer", sock.recv(&mut buf)).await.unwrap();
            let want = format!("{from} 127.0.0.1:{udp_public} {}", String::from_utf8_lossy(payload));
            assert_eq!(String::from_utf8_lossy(&buf[..n]), want);
        }
        c.stop().await;
        server.stop().await;
        udp_task.abort();
    })
    .await;
}

#[tokio::test]
async fn tls_passthrough_gets_the_header_before_the_client_hello() {
    run_test(async {
        let spec = ServerSpec::default().plugin("tls", r#"{"listen": "127.0.0.1:0"}"#);
        let server = TestServer::start(&spec).await;
        let (svc, mut accepted) = tcp_accepting().await;
        let domain = format!("pp.{ZONE}");
        let spec = ClientSpec::new(server.addr).domain(&domain).forward(tls_fwd(svc.addr.port()));
        let mut c = with_headers(&spec, &[Some(ProxyProtocol::V1)]);
        let public = local(public_port(&c.connected().await, 0));

        let hello = client_hello(&domain);
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut visitor = within(WAIT, "connecting to the tls port", sock.connect(public)).await.unwrap();
        visitor.write_all(&hello).await.unwrap();
        let from = visitor.local_addr().unwrap();

        let mut s = within(WAIT, "the service's connection", accepted.recv()).await.unwrap();
        let header = v1(from, public);
        let mut got = vec![0u8; header.len() + hello.len()];
        within(WAIT, "the header and the ClientHello", s.read_exact(&mut got)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got[..header.len()]), String::from_utf8_lossy(&header));
        assert!(got[header.len()..] == hello[..], "the ClientHello, whole, right after the header");
        c.stop().await;
        server.stop().await;
    })
    .await;
}
