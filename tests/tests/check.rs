//! `opennotr check` against a server older than the `check` message: one
//! that authenticates the client and then, expecting `register`, answers
//! `refused` with `protocol_error`. The check must say the server is too
//! old for it (exit status 76), not that the key or a forward is wrong.
//!
//! The old server is played here with the protocol crate's own handshake
//! and records, doing what `conn::serve` did before `check` existed.

use bytes::BytesMut;
use opennotr_client::CheckFailure;
use opennotr_proto::frame::{parse_preface, PROTOCOL_VERSION};
use opennotr_proto::handshake::ServerHandshake;
use opennotr_proto::message::{ClientMessage, RefuseCode, ServerMessage};
use opennotr_transport::{
    read_frame_exact, read_preface, write_frame, Channel, FrameReader, FrameWriter, SecureStream,
};
use tokio::net::TcpListener;

const KEY: &str = "the key of the old server";

/// Serves one client as a server without `check` would.
async fn old_server(listener: TcpListener) {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let preface = read_preface(&mut tcp).await.unwrap();
    assert_eq!(parse_preface(&preface).unwrap(), PROTOCOL_VERSION);
    let hello = ClientMessage::from_bytes(&read_frame_exact(&mut tcp).await.unwrap()).unwrap();
    let ClientMessage::Hello { spake, plaintext, name, .. } = hello else { panic!("expected hello, got {hello:?}") };
    let (hs, spake_b, mac) = ServerHandshake::respond(KEY.as_bytes(), name.as_deref(), &spake, plaintext).unwrap();
    let challenge =
        ServerMessage::Challenge { version: PROTOCOL_VERSION, spake: spake_b, mac, software: "opennotrd/0.0.1".into() };
    write_frame(&mut tcp, &challenge.to_bytes()).await.unwrap();
    let confirm = ClientMessage::from_bytes(&read_frame_exact(&mut tcp).await.unwrap()).unwrap();
    let ClientMessage::Confirm { mac } = confirm else { panic!("expected confirm") };
    let keys = hs.verify(&mac).unwrap();
    let chan = Channel::Sealed(Box::new(SecureStream::new(tcp, &keys.control.s2c, &keys.control.c2s, BytesMut::new())));
    let (rd, wr) = tokio::io::split(chan);
    let (mut reader, mut writer) = (FrameReader::new(rd), FrameWriter::new(wr));
    let first = reader.next().await.unwrap();
    // The message a newer client sends; an old server could not parse it.
    assert!(matches!(ClientMessage::from_bytes(&first), Ok(ClientMessage::Check { .. })));
    let m = ServerMessage::Refused { code: RefuseCode::ProtocolError, message: "expected register".into() };
    writer.send(&m.to_bytes()).await.unwrap();
    let _ = writer.shutdown().await;
}

#[tokio::test]
async fn check_against_an_older_server_says_it_is_too_old() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(old_server(listener));
    let cfg = opennotr_config::parse_client(&format!(
        "serverAddr: \"{addr}\"\nkey: \"{KEY}\"\nforwards:\n  - protocol: udp\n    ports:\n      0: 5353\n"
    ))
    .unwrap();
    let mut lines = Vec::new();
    let failed = opennotr_client::check(&cfg, |l| lines.push(l.to_string())).await;
    server.await.unwrap();
    let text = lines.join("\n");
    assert_eq!(failed, Some(CheckFailure::Protocol), "{text}");
    assert_eq!(CheckFailure::Protocol.exit_code(), 76);
    assert!(lines.iter().any(|l| l.starts_with("ok   authenticated")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("FAIL") && l.contains("too old for this check")), "{text}");
    // No forward verdict is made up.
    assert!(!lines.iter().any(|l| l.contains("would be accepted")), "{text}");
}

/// The limits a registration meets, as `check` reports them, with a real
/// server: `maxForwardsPerClient`, `maxClients`, a reserved or taken
/// domain; and a check leaves no session behind.
#[tokio::test]
async fn check_reports_the_server_limits_and_takes_nothing() {
    use opennotr_tests::{run_test, tcp_fwd, ClientSpec, ServerSpec, TestClient, TestServer, ZONE};
    run_test(async {
        let spec = ServerSpec { limits: vec![("maxForwardsPerClient", 2), ("maxClients", 1)], ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let run = |spec: ClientSpec| async move {
            let mut lines = Vec::new();
            let failed = opennotr_client::check(&spec.config(), |l| lines.push(l.to_string())).await;
            (failed, lines)
        };
        let client = ClientSpec::new(server.addr);

        // Three forwards where two are allowed: the third would be refused.
        let three = client.clone().forward(tcp_fwd(0, 1)).forward(tcp_fwd(0, 2)).forward(tcp_fwd(0, 3));
        let (failed, lines) = run(three).await;
        let text = lines.join("\n");
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        let fails: Vec<_> = lines.iter().filter(|l| l.starts_with("FAIL forward")).collect();
        assert_eq!(fails.len(), 1, "{text}");
        assert!(fails[0].contains("=> 127.0.0.1:3") && fails[0].contains("at most 2 forwards"), "{text}");
        assert!(server.handle.sessions().is_empty(), "a check left a session");

        // The zone itself is reserved.
        let (failed, lines) = run(client.clone().domain(ZONE)).await;
        assert_eq!(failed, Some(CheckFailure::WouldRefuse));
        assert!(lines.iter().any(|l| l.starts_with(&format!("FAIL domain {ZONE}"))), "{}", lines.join("\n"));

        // One client connected: the maximum. A check (which holds no
        // session) would be refused as a whole, and sees its domain taken.
        let mut live = TestClient::start(&client.clone().domain(&format!("live.{ZONE}")));
        let reg = live.connected().await;
        let (failed, lines) = run(client.clone().domain(&reg.domain)).await;
        let text = lines.join("\n");
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(lines.iter().any(|l| l.contains("maximum of 1 clients")), "{text}");
        assert!(lines.iter().any(|l| l.contains("held by another connected client")), "{text}");
        assert_eq!(server.handle.sessions().len(), 1);
        server.stop().await;
    })
    .await;
}

/// A check is a handshake like any other: failed ones count toward the
/// source's penalty, and a penalized source's check is refused before any
/// cryptography — `check` is no way around the limits.
#[tokio::test]
async fn checks_count_toward_the_auth_penalty() {
    use opennotr_tests::{run_test, ClientSpec, ServerSpec, TestServer};
    run_test(async {
        let spec = ServerSpec { limits: vec![("authFailures", 2)], ..ServerSpec::default() };
        let server = TestServer::start(&spec).await;
        let wrong = ClientSpec { key: "not the server's key".into(), ..ClientSpec::new(server.addr) }.config();
        for _ in 0..2 {
            let failed = opennotr_client::check(&wrong, |_| {}).await;
            assert_eq!(failed, Some(CheckFailure::Auth));
        }
        // Now even the right key is refused, for the penalty's time.
        let right = ClientSpec::new(server.addr).config();
        let mut lines = Vec::new();
        let failed = opennotr_client::check(&right, |l| lines.push(l.to_string())).await;
        let text = lines.join("\n");
        assert_eq!(failed, Some(CheckFailure::Auth), "{text}");
        assert!(lines.iter().any(|l| l.starts_with("FAIL authenticated") && l.contains("too_many_failures")), "{text}");
        server.stop().await;
    })
    .await;
}

/// A check judges a grouped forward as registering it would: a member with
/// the group's key would join the running group (whose port is held, by
/// the group), a wrong key or an explicit other port would be refused; and
/// a forward's own access rules are parsed and bounded as the server would.
#[tokio::test]
async fn check_judges_groups_and_access_rules_as_registering_would() {
    use opennotr_tests::{run_test, ServerSpec, TestClient, TestServer, KEY};
    run_test(async {
        let server = TestServer::start(&ServerSpec::default()).await;
        // The members' service: up, so that only the server's verdicts fail.
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = service.local_addr().unwrap().port();
        let file = |group_key: &str, public: u16, extra: &str| {
            opennotr_config::parse_client(&format!(
                "serverAddr: \"{}\"\nkey: \"{KEY}\"\nforwards:\n  \
                 - protocol: tcp\n    ports:\n      {public}: {local}\n    group: shop\n    groupKey: \"{group_key}\"\n{extra}",
                server.addr
            ))
            .unwrap()
        };
        let mut member = TestClient::start_config(file("the group key", 0, ""));
        let reg = member.connected().await;
        let port = reg.forwards[0].public_port.expect("the group's port");
        let run = |cfg: opennotr_config::ClientConfig| async move {
            let mut lines = Vec::new();
            let failed = opennotr_client::check(&cfg, |l| lines.push(l.to_string())).await;
            (failed, lines.join("\n"))
        };

        // The group's key, and its port or any: it would join.
        for public in [0, port] {
            let (failed, text) = run(file("the group key", public, "")).await;
            assert_eq!(failed, None, "{text}");
        }
        // A wrong key: refused.
        let (failed, text) = run(file("a guess", 0, "")).await;
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(text.contains("wrong key for group shop"), "{text}");
        // Another explicit port than the group's.
        let other = if port == u16::MAX { port - 1 } else { port + 1 };
        let (failed, text) = run(file("the group key", other, "")).await;
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(text.contains(&format!("serves public port {port}")), "{text}");
        // Rules over the server's bounds, as a client that skipped its own
        // validation would send them: 257 CIDRs.
        let mut cfg = file("the group key", 0, "");
        cfg.forwards[0].access.deny = (0..257).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap()).collect();
        let (failed, text) = run(cfg).await;
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(text.contains("invalid access rules"), "{text}");
        assert_eq!(server.handle.sessions().len(), 1, "a check left a session");
        server.stop().await;
    })
    .await;
}

/// On the gateway, a check also refuses what registering would: a member
/// whose access rules differ from its group's, and a new group on a domain
/// a group already shares.
#[tokio::test]
async fn check_judges_gateway_groups_as_registering_would() {
    use opennotr_server::builtin_plugins;
    use opennotr_tests::{run_test, ServerSpec, TestClient, TestServer, KEY, ZONE};
    run_test(async {
        let spec = ServerSpec::default().plugin("http", r#"{"listen": "127.0.0.1:0"}"#);
        let mut registry = builtin_plugins();
        opennotr_gateway::register(&mut registry);
        let server = TestServer::start_with(spec.config(), &registry).await;
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = service.local_addr().unwrap().port();
        let domain = format!("web.{ZONE}");
        let file = |group: &str, extra: &str| {
            opennotr_config::parse_client(&format!(
                "serverAddr: \"{}\"\nkey: \"{KEY}\"\ndomain: \"{domain}\"\nforwards:\n  \
                 - protocol: http\n    ports:\n      0: {local}\n    group: {group}\n    groupKey: \"k\"\n{extra}",
                server.addr
            ))
            .unwrap()
        };
        let deny = "    deny: [\"192.0.2.0/24\"]\n";
        let mut member = TestClient::start_config(file("web", deny));
        member.connected().await;
        let run = |cfg: opennotr_config::ClientConfig| async move {
            let mut lines = Vec::new();
            let failed = opennotr_client::check(&cfg, |l| lines.push(l.to_string())).await;
            (failed, lines.join("\n"))
        };
        // The same rules: it would join, on the shared domain.
        let (failed, text) = run(file("web", deny)).await;
        assert_eq!(failed, None, "{text}");
        // Other rules (none): refused, as registering is.
        let (failed, text) = run(file("web", "")).await;
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(text.contains("other access rules"), "{text}");
        // Alone, a group of its own would not get the domain at all.
        let (failed, text) = run(file("mine", deny)).await;
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(text.contains("held by another connected client"), "{text}");
        // Sharing the domain through the group, it may not start a group
        // of its own on it beside.
        let mine =
            format!("  - protocol: http\n    ports:\n      0: {local}\n    group: mine\n    groupKey: \"k\"\n{deny}");
        let (failed, text) = run(file("web", &format!("{deny}{mine}"))).await;
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(!text.contains("FAIL domain"), "{text}");
        assert!(text.contains("must join a running group"), "{text}");
        server.stop().await;
    })
    .await;
}

/// Joining a group with public port 0 takes the group's port: a credential
/// whose `ports` do not allow that one is refused, by register and check
/// alike, as if it had asked for it.
#[tokio::test]
async fn a_credential_joins_a_group_only_on_a_port_it_may_use() {
    use opennotr_tests::{run_test, ServerSpec, TestClient, TestServer, KEY};
    run_test(async {
        let spec = ServerSpec {
            extra_yaml: "clients:\n  - name: narrow\n    key: \"narrow client's key 0123\"\n    ports: [\"1-1023\"]\n"
                .into(),
            ..ServerSpec::default()
        };
        let server = TestServer::start(&spec).await;
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = service.local_addr().unwrap().port();
        let file = |who: &str| {
            opennotr_config::parse_client(&format!(
                "serverAddr: \"{}\"\n{who}forwards:\n  - protocol: tcp\n    ports:\n      0: {local}\n    \
                 group: pool\n    groupKey: \"k\"\n",
                server.addr
            ))
            .unwrap()
        };
        let mut member = TestClient::start_config(file(&format!("key: \"{KEY}\"\n")));
        let port = member.connected().await.forwards[0].public_port.expect("the group's port");
        assert!(port > 1023, "the test needs the group on a port the credential may not use");
        let narrow = file("name: narrow\nkey: \"narrow client's key 0123\"\n");
        let mut lines = Vec::new();
        let failed = opennotr_client::check(&narrow, |l| lines.push(l.to_string())).await;
        let text = lines.join("\n");
        assert_eq!(failed, Some(CheckFailure::WouldRefuse), "{text}");
        assert!(text.contains(&format!("may not use public port {port}, group pool's")), "{text}");
        let mut joining = TestClient::start_config(narrow);
        let reg = joining.connected().await;
        let error = reg.forwards[0].error.as_deref().unwrap_or_default();
        assert!(error.contains(&format!("may not use public port {port}")), "{:?}", reg.forwards);
        server.stop().await;
    })
    .await;
}
