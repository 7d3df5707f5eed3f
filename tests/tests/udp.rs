//! UDP forwards: datagrams keep their boundaries and content.

use std::collections::HashMap;

use opennotr_tests::*;
use tokio::net::UdpSocket;

/// Datagram `i`: its index, then bytes depending on it; 1 to 8000 bytes.
fn datagram(i: u32) -> Vec<u8> {
    let len = 1 + (i as usize * 7919) % 8000;
    let mut d = pattern(u64::from(i) + 77, len);
    for (k, b) in i.to_be_bytes().iter().enumerate().take(len) {
        d[k] = *b;
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_keeps_every_datagram_whole() {
    run_test(async {
        const COUNT: u32 = 2000;
        const WINDOW: u32 = 16;
        let echo = udp_echo().await;
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(udp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));

        let sock = UdpSocket::bind(local(0)).await.unwrap();
        sock.connect(public).await.unwrap();
        let mut sizes = std::collections::BTreeSet::new();
        let mut buf = vec![0u8; 65536];
        // Windows of WINDOW datagrams; each window must come back whole
        // before the next is sent, so no buffer on loopback overflows.
        for start in (0..COUNT).step_by(WINDOW as usize) {
            let ids: Vec<u32> = (start..(start + WINDOW).min(COUNT)).collect();
            let mut expected: HashMap<u32, Vec<u8>> = HashMap::new();
            for &i in &ids {
                let d = datagram(i);
                sizes.insert(d.len());
                sock.send(&d).await.unwrap();
                expected.insert(i, d);
            }
            while !expected.is_empty() {
                let what = format!("echo of datagrams {start}..; missing {:?}", expected.keys().collect::<Vec<_>>());
                let n = within(WAIT, &what, sock.recv(&mut buf)).await.unwrap();
                let got = &buf[..n];
                // Datagrams of 1 to 3 bytes hold part of the index only.
                let i = match n {
                    4.. => u32::from_be_bytes([got[0], got[1], got[2], got[3]]),
                    _ => {
                        *expected
                            .iter()
                            .find(|(_, d)| d.len() == n)
                            .unwrap_or_else(|| panic!("unexpected {n}-byte datagram"))
                            .0
                    }
                };
                let want = expected.remove(&i).unwrap_or_else(|| panic!("datagram {i} unexpected or duplicated"));
                assert!(want == got, "datagram {i}: sent {} bytes, got {n} different bytes", want.len());
            }
        }
        assert!(sizes.contains(&1) && sizes.iter().any(|&s| s >= 7990), "sizes cover 1..8000");
        assert_eq!(server.handle.sessions()[0].forwards[0].protocol, "udp");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_peers_get_their_own_flows() {
    run_test(async {
        let echo = udp_echo().await;
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(udp_fwd(0, echo.addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        let mut socks = Vec::new();
        for k in 0..8u64 {
            let s = UdpSocket::bind(local(0)).await.unwrap();
            s.connect(public).await.unwrap();
            socks.push((k, s));
        }
        for (k, s) in &socks {
            s.send(&pattern(*k, 100 + *k as usize)).await.unwrap();
        }
        let mut buf = vec![0u8; 2048];
        for (k, s) in &socks {
            let n = within(WAIT, "echo to each peer", s.recv(&mut buf)).await.unwrap();
            assert_eq!(&buf[..n], &pattern(*k, 100 + *k as usize)[..], "peer {k}");
        }
    })
    .await
}

/// `NoPorts` of `/proc/net/snmp`: datagrams that found no socket (and
/// made the kernel answer with ICMP port unreachable).
#[cfg(target_os = "linux")]
fn udp_no_ports() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("read /proc/net/snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next().expect("Udp header"), lines.next().expect("Udp values"));
    let i = names.split_whitespace().position(|n| n == "NoPorts").expect("NoPorts column");
    values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).expect("NoPorts value")
}

/// The local UDP service goes away for a moment: datagrams sent meanwhile
/// are lost (the kernel answers the client's socket with ICMP port
/// unreachable), but the flow survives and carries on, from the same
/// source address, once the service is back.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_survives_its_service_going_away_for_a_moment() {
    run_test(async {
        let service = UdpSocket::bind(local(0)).await.unwrap();
        let service_addr = service.local_addr().unwrap();
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(udp_fwd(0, service_addr.port())));
        let public = local(public_port(&client.connected().await, 0));
        let visitor = UdpSocket::bind(local(0)).await.unwrap();
        visitor.connect(public).await.unwrap();
        let mut buf = vec![0u8; 2048];

        visitor.send(b"one").await.unwrap();
        let (n, flow_addr) = within(WAIT, "the first datagram", service.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"one");

        // The service goes away; the next datagram finds nobody.
        drop(service);
        let before = udp_no_ports();
        visitor.send(b"two").await.unwrap();
        wait_until("the client's datagram to hit the closed port", || udp_no_ports() > before).await;

        // The service is back on the same port.
        let service = UdpSocket::bind(service_addr).await.unwrap();
        visitor.send(b"three").await.unwrap();
        let (n, got) =
            within(WAIT, "a datagram after the service came back", service.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"three");
        assert_eq!(got, flow_addr, "the flow was torn down and opened again");
        service.send_to(b"reply", got).await.unwrap();
        let n = within(WAIT, "the reply", visitor.recv(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"reply");
    })
    .await
}

/// An idle flow is dropped after `sessionTimeout` with its stream (the
/// server's open-stream count returns to 0) and the client's socket (the next
/// datagram from the same peer reaches the service from a new source port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flows_are_freed() {
    run_test(async {
        // Answers each datagram with the address it came from.
        let whoami = UdpSocket::bind(local(0)).await.unwrap();
        let service = whoami.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((_, peer)) = whoami.recv_from(&mut buf).await {
                let _ = whoami.send_to(peer.to_string().as_bytes(), peer).await;
            }
        });
        let spec = ServerSpec { udp_session_timeout: Some(0.3), ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(udp_fwd(0, service.port())));
        let public = local(public_port(&client.connected().await, 0));
        let peer = UdpSocket::bind(local(0)).await.unwrap();
        peer.connect(public).await.unwrap();
        let mut buf = vec![0u8; 256];

        peer.send(b"first").await.unwrap();
        let n = within(WAIT, "first reply", peer.recv(&mut buf)).await.unwrap();
        let first_source = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(server.handle.sessions()[0].open_streams, 1, "one flow open");

        let handle = server.handle.clone();
        wait_until("the idle flow is dropped", || handle.sessions()[0].open_streams == 0).await;

        peer.send(b"second").await.unwrap();
        let n = within(WAIT, "second reply", peer.recv(&mut buf)).await.unwrap();
        let second_source = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_ne!(first_source, second_source, "a new flow uses a new socket on the client");
    })
    .await
}
