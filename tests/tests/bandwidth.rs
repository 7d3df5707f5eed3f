//! Bandwidth limits (docs/bandwidth.md): a limited forward and a limited
//! client cannot go faster than their rate, the client may only lower the
//! server's value, UDP over the limit is dropped and counted, and the admin
//! API shows it all.
//!
//! Rates are only ever checked from below: a transfer of N bytes at R
//! bytes a second takes at least (N - burst - buffers) / R, however slow
//! the machine; how fast an unlimited one goes is never asserted.

use std::time::{Duration, Instant};

use opennotr_admin::Backend;
use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// What one stream may pass beyond its rate: the burst a bucket saves
/// while idle (`MIN_BURST` for these rates) and one relay buffer of debt
/// per direction and stream.
const SLACK_PER_STREAM: u64 = 64 * 1024 + 2 * 64 * 1024;

/// Sends `n` bytes through the echo at `public` and reads them back;
/// returns how long the whole took.
async fn echo_transfer(public: std::net::SocketAddr, n: usize) -> Duration {
    let payload = pattern(7, n);
    let start = Instant::now();
    let s = TcpStream::connect(public).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move { wr.write_all(&sent).await.map(|_| wr) });
    let mut got = vec![0u8; n];
    within(Duration::from_secs(60), "the limited echo", rd.read_exact(&mut got)).await.unwrap();
    let elapsed = start.elapsed();
    drop(writer.await.unwrap().unwrap());
    assert!(got == payload, "the echo differs");
    elapsed
}

/// At least this long for `bytes` at `rate` with `streams` streams.
fn floor(bytes: u64, rate: u64, streams: u64) -> Duration {
    Duration::from_secs_f64(bytes.saturating_sub(SLACK_PER_STREAM * streams) as f64 / rate as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_forward_cannot_exceed_its_rate() {
    run_test(async {
        const RATE: u64 = 400_000;
        const N: usize = 1_200_000;
        let spec = ServerSpec { limits: vec![("forwardBandwidth", RATE)], ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let echo = tcp_echo().await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, echo.addr.port())));
        let reg = client.connected().await;
        // The client is told the limit in force; the session has none.
        assert_eq!(reg.forwards[0].bandwidth, Some(RATE));
        assert_eq!(reg.bandwidth, None);
        let elapsed = echo_transfer(local(public_port(&reg, 0)), N).await;
        assert!(elapsed >= floor(N as u64, RATE, 1), "{N} bytes at {RATE} B/s in {elapsed:?}");

        // The admin API shows the limit and that it held the stream back.
        let s = &Backend::sessions(&server.handle)[0];
        let f = &s.forwards[0];
        assert_eq!((f.bandwidth, s.bandwidth), (Some(RATE), None));
        assert!(f.throttled_ms > 0, "{f:?}");
        assert_eq!((f.bytes_in, f.bytes_out), (N as u64, N as u64));
        let metrics = server.handle.metrics();
        assert!(metrics.contains("opennotr_bandwidth_limit_bytes{client=\"\""), "{metrics}");
        assert!(metrics
            .contains(&format!("scope=\"forward\",protocol=\"tcp\",port=\"{}\"}} {RATE}", f.public_port.unwrap())));
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_limit_is_shared_by_its_forwards() {
    run_test(async {
        const RATE: u64 = 500_000;
        const N: usize = 800_000;
        let spec = ServerSpec {
            extra_yaml: format!("clients:\n  - name: alice\n    key: \"alice's key\"\n    bandwidth: {RATE}\n"),
            ..ServerSpec::default()
        };
        let server = TestServer::start(&spec).await;
        let echo = tcp_echo().await;
        let client_spec = ClientSpec::new(server.addr)
            .credential("alice", "alice's key")
            .forward(tcp_fwd(0, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()));
        let mut client = TestClient::start(&client_spec);
        let reg = client.connected().await;
        assert_eq!(reg.bandwidth, Some(RATE));
        assert_eq!((reg.forwards[0].bandwidth, reg.forwards[1].bandwidth), (None, None));
        let (a, b) = (local(public_port(&reg, 0)), local(public_port(&reg, 1)));
        let start = Instant::now();
        let (ta, tb) = tokio::join!(echo_transfer(a, N), echo_transfer(b, N));
        let elapsed = start.elapsed();
        // Both forwards drew on one bucket: 2N at RATE, not N each.
        assert!(elapsed >= floor(2 * N as u64, RATE, 2), "2 x {N} bytes at {RATE} B/s in {elapsed:?} ({ta:?}, {tb:?})");
        let s = &Backend::sessions(&server.handle)[0];
        assert_eq!(s.bandwidth, Some(RATE));
        assert!(s.throttled_ms > 0, "{s:?}");
        let c = server.handle.clients().into_iter().find(|c| c.name == "alice").unwrap();
        assert_eq!((c.bandwidth, c.forward_bandwidth), (Some(RATE), None));
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_may_only_lower_the_servers_limits() {
    run_test(async {
        let spec = ServerSpec {
            limits: vec![("forwardBandwidth", 300_000), ("clientBandwidth", 2_000_000)],
            ..ServerSpec::default()
        };
        let server = TestServer::start(&spec).await;
        let echo = tcp_echo().await;
        let mut cfg = ClientSpec::new(server.addr)
            .forward(tcp_fwd(0, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port()))
            .config();
        // Above the server's value: clamped; below: taken; none: the server's.
        cfg.forwards[0].bandwidth = Some(10_000_000);
        cfg.forwards[1].bandwidth = Some(100_000);
        cfg.bandwidth = Some(50_000_000);
        let mut client = TestClient::start_config(cfg);
        let reg = client.connected().await;
        let got: Vec<_> = reg.forwards.iter().map(|f| f.bandwidth).collect();
        assert_eq!(got, [Some(300_000), Some(100_000), Some(300_000)]);
        assert_eq!(reg.bandwidth, Some(2_000_000));
        let lines = reg.lines();
        assert!(lines.contains(&"bandwidth: 2MB/s each way for this client".to_string()), "{lines:?}");
        let port = public_port(&reg, 1);
        assert!(lines.contains(&format!("bandwidth: 100KB/s each way for tcp://{}:{port}", reg.domain)), "{lines:?}");
        client.stop().await;

        // Without server limits, the client's wish is the limit.
        let server2 = TestServer::start(&ServerSpec::default()).await;
        let mut cfg = ClientSpec::new(server2.addr).forward(tcp_fwd(0, echo.addr.port())).config();
        cfg.bandwidth = Some(1_000_000);
        let mut client = TestClient::start_config(cfg);
        let reg = client.connected().await;
        assert_eq!((reg.bandwidth, reg.forwards[0].bandwidth), (Some(1_000_000), None));
        let s = &Backend::sessions(&server2.handle)[0];
        assert_eq!((s.bandwidth, s.forwards[0].bandwidth), (Some(1_000_000), None));
        client.stop().await;
        server.stop().await;
        server2.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_over_the_limit_is_dropped_and_counted() {
    run_test(async {
        const RATE: u64 = 70_000;
        let spec = ServerSpec { limits: vec![("forwardBandwidth", RATE)], ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let echo = udp_echo().await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(udp_fwd(0, echo.addr.port())));
        let reg = client.connected().await;
        let public = local(public_port(&reg, 0));
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The flow first: one datagram answered.
        within(WAIT, "a first echo", async {
            let mut buf = [0u8; 64];
            loop {
                sock.send_to(b"hello", public).await.unwrap();
                if tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await.is_ok() {
                    break;
                }
            }
        })
        .await;
        // 1 MB at once: at 70 kB/s with a 64 KiB burst, most of it cannot
        // pass within the 14 s it would take.
        let datagram = vec![0x5a; 1000];
        for _ in 0..1000 {
            sock.send_to(&datagram, public).await.unwrap();
        }
        let dropped = || Backend::sessions(&server.handle)[0].forwards[0].dropped_datagrams;
        wait_until("datagrams dropped for the limit", || dropped() > 0).await;
        let f = &Backend::sessions(&server.handle)[0].forwards[0];
        assert_eq!(f.dropped_bytes, f.dropped_datagrams * 1000, "{f:?}");
        assert!(f.bytes_in < 1_000_000, "{f:?}");
        let metrics = server.handle.metrics();
        assert!(metrics.contains("opennotr_bandwidth_dropped_datagrams_total{"), "{metrics}");
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_forwards_show_no_limit() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let (_echo, client, public) = tcp_echo_client(server.addr).await;
        assert_echo(public, &pattern(3, 200_000)).await;
        let s = &Backend::sessions(&server.handle)[0];
        let f = &s.forwards[0];
        assert_eq!((s.bandwidth, f.bandwidth, s.throttled_ms, f.throttled_ms), (None, None, 0, 0));
        assert!(!server.handle.metrics().contains("opennotr_bandwidth_"));
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_adds_a_credential_with_limits() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let new = |bandwidth: &str| opennotr_admin::NewClient {
            name: "bob".into(),
            key: "bob's key".into(),
            domains: vec![],
            ports: vec![],
            protocols: vec![],
            bandwidth: Some(bandwidth.into()),
            forward_bandwidth: Some("512KiB".into()),
        };
        match server.handle.add_client(new("10mb")) {
            Err(opennotr_admin::BackendError::Invalid { field, .. }) => assert_eq!(field, "bandwidth"),
            other => panic!("{other:?}"),
        }
        let c = server.handle.add_client(new("80Mbit")).unwrap();
        assert_eq!((c.bandwidth, c.forward_bandwidth), (Some(10_000_000), Some(524_288)));
        // A client of that credential runs under them.
        let echo = tcp_echo().await;
        let spec = ClientSpec::new(server.addr).credential("bob", "bob's key").forward(tcp_fwd(0, echo.addr.port()));
        let mut client = TestClient::start(&spec);
        let reg = client.connected().await;
        assert_eq!((reg.bandwidth, reg.forwards[0].bandwidth), (Some(10_000_000), Some(524_288)));
        client.stop().await;
        server.stop().await;
    })
    .await;
}

/// A plaintext tunnel is relayed inside the kernel (splice) when unlimited;
/// a limited one must be copied, or its bytes would pass the limiter by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_plaintext_forward_is_not_spliced_past_the_limiter() {
    run_test(async {
        const RATE: u64 = 400_000;
        const N: usize = 1_000_000;
        let spec =
            ServerSpec { allow_plaintext: true, limits: vec![("forwardBandwidth", RATE)], ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let echo = tcp_echo().await;
        let client_spec = ClientSpec { plaintext: true, multiplex: false, ..ClientSpec::new(server.addr) }
            .forward(tcp_fwd(0, echo.addr.port()));
        let mut client = TestClient::start(&client_spec);
        let reg = client.connected().await;
        assert!(Backend::sessions(&server.handle)[0].plaintext);
        let elapsed = echo_transfer(local(public_port(&reg, 0)), N).await;
        assert!(elapsed >= floor(N as u64, RATE, 1), "{N} bytes at {RATE} B/s in {elapsed:?}");
        let f = &Backend::sessions(&server.handle)[0].forwards[0];
        assert_eq!((f.bytes_in, f.bytes_out), (N as u64, N as u64));
        client.stop().await;
        server.stop().await;
    })
    .await;
}
