//! Who gets in and with what: keys, versions, domains, VIPs, limits, and
//! what the server may ask the client to dial.

use std::net::SocketAddr;

use opennotr_plugin::StreamProtocol;
use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_with_the_reason() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut spec = ClientSpec::new(server.addr);
        spec.key = "not the server's key".into();
        let mut client = TestClient::start(&spec);
        let reason = client.disconnected().await;
        assert!(reason.contains("key"), "the reason should mention the key: {reason}");
        assert!(reason.contains("authentication failed"), "{reason}");
        assert!(!client.history.iter().any(|e| matches!(e, Event::Connected(_))));
        assert!(server.handle.sessions().is_empty());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_gets_a_refused_frame() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"NOTR\x63").await.unwrap();
        let mut len = [0u8; 4];
        within(WAIT, "the refused frame", s.read_exact(&mut len)).await.unwrap();
        let len = u32::from_be_bytes(len) as usize;
        assert!(len < 4096, "frame length {len}");
        let mut body = vec![0u8; len];
        within(WAIT, "the refused frame body", s.read_exact(&mut body)).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("the frame holds JSON");
        assert_eq!(v["type"], "refused", "{v}");
        assert_eq!(v["code"], "version_mismatch", "{v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains("99"), "the message names the client's version: {message}");
        // Then the server closes the connection.
        let mut rest = Vec::new();
        within(WAIT, "the server to close", s.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vip_is_released_when_the_client_leaves() {
    run_test(async {
        let echo = tcp_echo().await;
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, echo.addr.port())));
        let reg = client.connected().await;
        let port = public_port(&reg, 0);
        assert!(server.handle.vip_in_use(reg.vip));
        assert_eq!(server.handle.sessions()[0].vip, reg.vip);
        client.stop().await;
        server.wait_no_sessions().await;
        let h = server.handle.clone();
        wait_until("the VIP to be free", || !h.vip_in_use(reg.vip)).await;
        // The public port is closed too.
        assert!(tokio::net::TcpListener::bind(local(port)).await.is_ok(), "port {port} still bound");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_domain_is_refused() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut first = TestClient::start(&ClientSpec::new(server.addr).domain("app.e2e.notr.test"));
        let reg = first.connected().await;
        assert_eq!(reg.domain, "app.e2e.notr.test");

        // Another client (another id), same domain, any case.
        let mut second = TestClient::start(&ClientSpec::new(server.addr).domain("App.E2E.notr.test"));
        let e = second.wait_event("a refusal", |e| matches!(e, Event::Refused { .. })).await;
        let Event::Refused { code, message } = e else { unreachable!() };
        assert_eq!(code, RefuseCode::DomainTaken, "{message}");
        assert!(message.contains("app.e2e.notr.test"), "{message}");
        second.stop().await;

        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].domain, "app.e2e.notr.test");
        assert!(first.pending_events().is_empty(), "the first client was disturbed: {:?}", first.history);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_domain_gets_a_random_label() {
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut a = TestClient::start(&ClientSpec::new(server.addr));
        let mut b = TestClient::start(&ClientSpec::new(server.addr));
        let (ra, rb) = (a.connected().await, b.connected().await);
        for d in [&ra.domain, &rb.domain] {
            let label = d.strip_suffix(&format!(".{ZONE}")).unwrap_or_else(|| panic!("{d} is not under {ZONE}"));
            assert_eq!(label.len(), 16, "{d}");
            assert!(label.bytes().all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c)), "{d}");
        }
        assert_ne!(ra.domain, rb.domain);
        assert_ne!(ra.vip, rb.vip);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_per_client_refuses_the_extra_forward() {
    run_test(async {
        let echo = tcp_echo().await;
        let server =
            TestServer::start(&ServerSpec { limits: vec![("maxForwardsPerClient", 1)], ..Default::default() }).await;
        let spec = ClientSpec::new(server.addr)
            .forward(tcp_fwd(0, echo.addr.port()))
            .forward(tcp_fwd(0, echo.addr.port() ^ 1));
        let mut client = TestClient::start(&spec);
        let reg = client.connected().await;
        assert_echo(local(public_port(&reg, 0)), b"the first forward works").await;
        let error = reg.forwards[1].error.as_deref().expect("the second forward should be refused");
        assert!(error.contains("at most 1"), "{error}");
        assert_eq!(server.handle.sessions()[0].forwards.len(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_extra_client() {
    run_test(async {
        let server = TestServer::start(&ServerSpec { limits: vec![("maxClients", 1)], ..Default::default() }).await;
        let mut first = TestClient::start(&ClientSpec::new(server.addr));
        first.connected().await;
        let mut second = TestClient::start(&ClientSpec::new(server.addr));
        let e = second.wait_event("a refusal", |e| matches!(e, Event::Refused { .. })).await;
        let Event::Refused { code, message } = e else { unreachable!() };
        assert_eq!(code, RefuseCode::TooManyClients, "{message}");
        assert_eq!(server.handle.sessions().len(), 1);
        // Once the first leaves, the second gets in.
        first.stop().await;
        second.connected().await;
    })
    .await
}

// ------------------------------------------- the client dials only what it declares

/// A declared target, and targets (or a transport) the client never declared.
fn undeclared_probes(declared: SocketAddr) -> Vec<(&'static str, StreamProtocol, SocketAddr)> {
    vec![
        ("declared tcp", StreamProtocol::Tcp, declared),
        ("undeclared port", StreamProtocol::Tcp, SocketAddr::new(declared.ip(), declared.port() ^ 1)),
        ("undeclared host", StreamProtocol::Tcp, ([10, 9, 8, 7], declared.port()).into()),
        ("declared port as udp", StreamProtocol::Udp, declared),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cannot_make_the_client_dial_undeclared_targets() {
    run_test(async {
        let echo = tcp_echo().await;
        // Dialed streams learn the client's reason; a stream on a spare
        // channel sees only its close (the server counts the refusal).
        for spares in [Some(0), None] {
            let (tx, mut results) = mpsc::unbounded_channel();
            let mut registry = builtin_plugins();
            registry.register(ProbeFactory(tx, undeclared_probes));
            let server = TestServer::start_with(ServerSpec::default().config(), &registry).await;
            let spec = ClientSpec { spare_channels: spares, ..ClientSpec::new(server.addr) }.forward(Fwd {
                protocol: "probe".into(),
                public: 0,
                local: echo.addr.port(),
            });
            let mut client = TestClient::start(&spec);
            let reg = client.connected().await;
            assert_eq!(reg.forwards[0].error, None);
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(within(WAIT, "a probe result", results.recv()).await.expect("probe results"));
            }
            assert_eq!(got[0], ("declared tcp", Ok(())), "{got:?}");
            for (name, r) in &got[1..] {
                let e = r.as_ref().expect_err(&format!("{name}: the client dialed an undeclared target"));
                if spares == Some(0) {
                    assert!(e.starts_with("refused: ") && e.contains("not a target declared"), "{name}: {e}");
                } else {
                    assert_eq!(e, "opened, but no echo", "{name}");
                }
            }
            let refused = || {
                let m = opennotr_admin::Backend::metrics(&server.handle);
                metric(&m, "opennotr_streams_refused_total").unwrap()
            };
            wait_until("the client's three refusals", || refused() == 3).await;
            assert!(client.pending_events().is_empty(), "the session survives: {:?}", client.history);
            client.stop().await;
            server.stop().await;
        }
    })
    .await
}

// ------------------------------------------- names the server answers for itself

async fn refused(c: &mut TestClient) -> (RefuseCode, String) {
    match c.wait_event("a refusal", |e| matches!(e, Event::Refused { .. })).await {
        Event::Refused { code, message } => (code, message),
        _ => unreachable!(),
    }
}

/// The zone's apex, its name server and the VIP names are the server's own
/// (its DNS server answers for them): no client gets one, whether it uses
/// the shared key or a credential whose pattern covers them; and a
/// credential cannot list one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_names_cannot_be_claimed() {
    run_test(async {
        let carol = "carol's key, long enough";
        let spec = ServerSpec {
            dns: Some(DnsSpec::default()),
            extra_yaml: format!("clients:\n  - name: carol\n    key: {carol:?}\n    domains: [\"*.{ZONE}\"]\n"),
            ..ServerSpec::default()
        };
        let server = TestServer::start(&spec).await;
        let reserved = [ZONE.to_string(), format!("NS1.{ZONE}."), format!("vip.{ZONE}"), format!("x.vip.{ZONE}")];
        for (i, domain) in reserved.iter().enumerate() {
            let spec = ClientSpec::new(server.addr).domain(domain);
            let spec = if i % 2 == 0 { spec } else { spec.credential("carol", carol) };
            let mut c = TestClient::start(&spec);
            let (code, message) = refused(&mut c).await;
            assert_eq!(code, RefuseCode::DomainInvalid, "{domain}: {message}");
            assert!(message.contains("no client may claim it"), "{domain}: {message}");
            c.stop().await;
        }
        assert!(server.handle.sessions().is_empty());
        // The same credential gets the names around them.
        let mut c =
            TestClient::start(&ClientSpec::new(server.addr).credential("carol", carol).domain(&format!("ns2.{ZONE}")));
        assert_eq!(c.connected().await.domain, format!("ns2.{ZONE}"));
        c.stop().await;
        server.stop().await;

        // A credential listing one does not load, naming the field.
        for (domains, key) in [
            (format!("[\"ok.{ZONE}\", \"ns1.{ZONE}\"]"), "clients[0].domains[1]"),
            (format!("[\"*.vip.{ZONE}\"]"), "clients[0].domains[0]"),
        ] {
            let yaml = ServerSpec {
                extra_yaml: format!("clients:\n  - name: dave\n    key: \"dave's key\"\n    domains: {domains}\n"),
                ..ServerSpec::default()
            }
            .yaml();
            let e = opennotr_config::parse_server(&yaml).expect_err("a reserved name in a credential");
            assert_eq!(e.key(), Some(key), "{e}");
        }
    })
    .await
}

/// A named client's session is kept under `<name>/<client id>`. A client
/// of the shared key sending exactly that id is refused: it can take
/// neither the named client's live session nor its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_key_client_cannot_use_a_named_clients_id() {
    run_test(async {
        let alice_key = "alice's key for the id test";
        let spec = ServerSpec {
            extra_yaml: format!("clients:\n  - name: alice\n    key: {alice_key:?}\n"),
            ..Default::default()
        };
        let server = TestServer::start(&spec).await;
        let mut alice = TestClient::start(&ClientSpec::new(server.addr).credential("alice", alice_key));
        let reg = alice.connected().await;
        let id = server.handle.sessions()[0].client_id.clone();
        assert!(id.starts_with("alice/"), "{id}");

        let mut other = TestClient::start_with_id(&ClientSpec::new(server.addr), &id);
        let (code, message) = refused(&mut other).await;
        assert_eq!(code, RefuseCode::ProtocolError, "{message}");
        assert!(message.contains("may not use '/'"), "{message}");
        other.stop().await;
        assert!(alice.pending_events().is_empty(), "alice was disturbed: {:?}", alice.history);
        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!((sessions[0].client_id.as_str(), sessions[0].domain.as_str()), (id.as_str(), reg.domain.as_str()));

        // Gone, she leaves a lease under that id; it is not for the taking.
        alice.stop().await;
        server.wait_no_sessions().await;
        let mut other = TestClient::start_with_id(&ClientSpec::new(server.addr), &id);
        assert_eq!(refused(&mut other).await.0, RefuseCode::ProtocolError);
        other.stop().await;
        assert!(server.handle.sessions().is_empty());

        // An id without '/' is kept as sent.
        let mut plain = TestClient::start_with_id(&ClientSpec::new(server.addr), "plain-id");
        plain.connected().await;
        assert_eq!(server.handle.sessions()[0].client_id, "plain-id");
        plain.stop().await;
        server.stop().await;
    })
    .await
}
