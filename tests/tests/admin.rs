//! Per-client credentials and the admin API, with real clients: who may
//! connect and claim what, sessions appearing and going, closing and
//! revoking, reload, and the metrics counting a known transfer.

use std::net::SocketAddr;

use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "admin-token-0123456789";
const ALICE_KEY: &str = "alice's own key";
const BOB_KEY: &str = "bob's own key";

fn spec() -> ServerSpec {
    ServerSpec {
        extra_yaml: format!(
            "clients:\n\
             \x20 - name: alice\n    key: {ALICE_KEY:?}\n    protocols: [tcp]\n    ports: [\"20000-25000\"]\n\
             \x20 - name: bob\n    key: {BOB_KEY:?}\n    domains: [\"*.bob.example\"]\n\
             admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n"
        ),
        ..ServerSpec::default()
    }
}

struct Reply {
    status: u16,
    body: String,
}

/// One request to the admin API with curl: `token` None sends no header.
async fn api(admin: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    let mut cmd = tokio::process::Command::new(opennotr_tests::tools::need("curl"));
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("http://{admin}{path}"));
    let out = within(WAIT, "curl", cmd.output()).await.expect("curl runs (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply { status: code.trim().parse().unwrap_or(0), body: body.to_string() }
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

async fn refused(c: &mut TestClient) -> (RefuseCode, String) {
    match c.wait_event("a refusal", |e| matches!(e, Event::Refused { .. })).await {
        Event::Refused { code, message } => (code, message),
        _ => unreachable!(),
    }
}

/// A key the server does not accept: the client notices at key
/// confirmation (the server's proof does not verify) and gives up the
/// attempt itself.
async fn bad_key(c: &mut TestClient) {
    let reason = c.disconnected().await;
    let reason = if reason.starts_with("server going away") { c.disconnected().await } else { reason };
    assert!(reason.contains("authentication failed"), "{reason}");
}

#[tokio::test]
async fn credentials_decide_who_connects_and_what_it_may_claim() {
    run_test(async {
        let server = TestServer::start(&spec()).await;
        let echo = tcp_echo().await;
        let local = echo.addr.port();

        // Alice: her own name and key; she gets <name>.<zone> by default, her
        // tcp forward runs, udp and a port outside her range are refused.
        let alice = ClientSpec::new(server.addr)
            .credential("alice", ALICE_KEY)
            .forward(tcp_fwd(0, local))
            .forward(udp_fwd(0, local))
            .forward(tcp_fwd(26000, local));
        let mut a = TestClient::start(&alice);
        let reg = a.connected().await;
        assert_eq!(reg.domain, format!("alice.{ZONE}"));
        assert!(reg.forwards[0].error.is_none(), "{:?}", reg.forwards[0]);
        let udp_err = reg.forwards[1].error.clone().expect("udp refused");
        assert!(udp_err.contains("may not use protocol \"udp\""), "{udp_err}");
        let port_err = reg.forwards[2].error.clone().expect("port refused");
        assert!(port_err.contains("may not use public port 26000"), "{port_err}");
        let sessions = server.handle.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].transport, "tcp");

        // Bob may only claim names under bob.example.
        let mut b = TestClient::start(&ClientSpec::new(server.addr).credential("bob", BOB_KEY).domain("alice.e2e.x"));
        let (code, message) = refused(&mut b).await;
        assert_eq!(code, RefuseCode::DomainNotAllowed, "{message}");
        assert!(message.contains("*.bob.example"), "{message}");
        b.stop().await;
        let mut b =
            TestClient::start(&ClientSpec::new(server.addr).credential("bob", BOB_KEY).domain("www.bob.example"));
        assert_eq!(b.connected().await.domain, "www.bob.example");

        // A wrong key, a key under another name, an unknown name: all the
        // same refusal, so names cannot be probed.
        for (name, key) in [("alice", "wrong"), ("bob", ALICE_KEY), ("carol", ALICE_KEY)] {
            let mut c = TestClient::start(&ClientSpec::new(server.addr).credential(name, key));
            bad_key(&mut c).await;
            c.stop().await;
        }
        let r = opennotr_admin::Backend::refusals(&server.handle);
        assert_eq!(r.iter().filter(|r| r.code == "bad_key").count(), 3, "{r:?}");
        // The shared key still works without a name.
        let mut s = TestClient::start(&ClientSpec::new(server.addr));
        s.connected().await;

        for c in [a, b, s] {
            c.stop().await;
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn admin_api_sees_closes_and_revokes() {
    run_test(async {
        let server = TestServer::start(&spec()).await;
        let admin = server.admin.expect("admin API on");

        assert_eq!(api(admin, "GET", "/healthz", None, None).await.status, 200);
        assert_eq!(api(admin, "GET", "/api/v1/sessions", None, None).await.status, 401);
        assert_eq!(api(admin, "GET", "/api/v1/sessions", Some("wrong-token-wrong-token"), None).await.status, 401);
        let r = api(admin, "GET", "/api/v1/sessions", Some(TOKEN), None).await;
        assert_eq!((r.status, json(&r)), (200, serde_json::json!([])));

        let echo = tcp_echo().await;
        let mut a = TestClient::start(
            &ClientSpec::new(server.addr).credential("alice", ALICE_KEY).forward(tcp_fwd(0, echo.addr.port())),
        );
        let reg = a.connected().await;
        let r = api(admin, "GET", "/api/v1/sessions", Some(TOKEN), None).await;
        let list = json(&r);
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        let s = &list[0];
        assert_eq!(s["client"], "alice");
        assert_eq!(s["domain"], reg.domain);
        assert_eq!(s["vip"], reg.vip.to_string());
        assert_eq!(s["forwards"][0]["protocol"], "tcp");
        assert_eq!(s["forwards"][0]["public_port"], public_port(&reg, 0));
        let id = s["id"].as_str().expect("id").to_string();
        let one = api(admin, "GET", &format!("/api/v1/sessions/{id}"), Some(TOKEN), None).await;
        assert_eq!(json(&one)["id"], id);

        // Closing the session disconnects the client; it comes back as a
        // new session.
        let r = api(admin, "DELETE", &format!("/api/v1/sessions/{id}"), Some(TOKEN), None).await;
        assert_eq!(r.status, 204, "{}", r.body);
        let reason = a.disconnected().await;
        assert!(reason.contains("closed by the server's operator"), "{reason}");
        a.connected().await;
        let h = server.handle.clone();
        wait_until("a new session", || h.sessions().len() == 1).await;
        assert_ne!(hex_id(&server), id);
        assert_eq!(api(admin, "GET", &format!("/api/v1/sessions/{id}"), Some(TOKEN), None).await.status, 404);

        // Revoking alice closes her session and refuses her reconnect.
        let clients = json(&api(admin, "GET", "/api/v1/clients", Some(TOKEN), None).await);
        assert!(clients.to_string().contains("\"alice\"") && !clients.to_string().contains(ALICE_KEY));
        let r = api(admin, "DELETE", "/api/v1/clients/alice", Some(TOKEN), None).await;
        assert_eq!((r.status, json(&r)["sessions_closed"].clone()), (200, serde_json::json!(1)), "{}", r.body);
        bad_key(&mut a).await;
        server.wait_no_sessions().await;

        // Adding her back through the API lets her in again.
        let body = format!(r#"{{"name": "alice", "key": {ALICE_KEY:?}, "protocols": ["tcp"]}}"#);
        let r = api(admin, "POST", "/api/v1/clients", Some(TOKEN), Some(&body)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(!r.body.contains(ALICE_KEY));
        assert_eq!(json(&r)["source"], "api");
        a.connected().await;
        let bad = api(admin, "POST", "/api/v1/clients", Some(TOKEN), Some(r#"{"name": "x y", "key": "k"}"#)).await;
        assert_eq!(bad.status, 400, "{}", bad.body);
        assert!(bad.body.contains("name"), "{}", bad.body);
        // A credential that lists a name the server answers for itself.
        let body = format!(r#"{{"name": "eve", "key": "eve's key", "domains": ["eve.example", "vip.{ZONE}"]}}"#);
        let bad = api(admin, "POST", "/api/v1/clients", Some(TOKEN), Some(&body)).await;
        // Well-formed, but the server's own: a conflict, not a bad request.
        assert_eq!(bad.status, 409, "{}", bad.body);
        assert_eq!(json(&bad)["field"], "domains[1]", "{}", bad.body);
        assert!(bad.body.contains("no client may claim it"), "{}", bad.body);
        assert!(!json(&api(admin, "GET", "/api/v1/clients", Some(TOKEN), None).await).to_string().contains("eve"));
        // The same for the default domain of a name without domains.
        let bad = api(admin, "POST", "/api/v1/clients", Some(TOKEN), Some(r#"{"name": "ns1", "key": "k"}"#)).await;
        assert_eq!((bad.status, json(&bad)["field"].as_str()), (409, Some("name")), "{}", bad.body);
        // A reversed port range is well-formed but meaningless.
        let body = r#"{"name": "eve", "key": "k", "ports": ["8080", "20100-20000"]}"#;
        let bad = api(admin, "POST", "/api/v1/clients", Some(TOKEN), Some(body)).await;
        assert_eq!((bad.status, json(&bad)["field"].as_str()), (422, Some("ports[1]")), "{}", bad.body);
        // Past the schema's bounds.
        let body = format!(r#"{{"name": "eve", "key": "k", "protocols": {:?}}}"#, vec!["tcp"; 65]);
        let bad = api(admin, "POST", "/api/v1/clients", Some(TOKEN), Some(&body)).await;
        assert_eq!((bad.status, json(&bad)["field"].as_str()), (400, Some("protocols")), "{}", bad.body);
        let bad = api(admin, "POST", "/api/v1/clients", Some(TOKEN), Some(r#"{"name": ".", "key": "k"}"#)).await;
        assert_eq!((bad.status, json(&bad)["field"].as_str()), (400, Some("name")), "{}", bad.body);

        // Refusals are listed with their reasons.
        let refusals = api(admin, "GET", "/api/v1/refusals", Some(TOKEN), None).await;
        assert!(refusals.body.contains("bad_key"), "{}", refusals.body);

        // The client goes: its session leaves the list.
        a.stop().await;
        within(WAIT, "the session leaves the API's list", async {
            while json(&api(admin, "GET", "/api/v1/sessions", Some(TOKEN), None).await) != serde_json::json!([]) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        server.stop().await;
    })
    .await;
}

fn hex_id(server: &TestServer) -> String {
    let s = opennotr_admin::Backend::sessions(&server.handle);
    s.first().map(|s| s.id.clone()).unwrap_or_default()
}

/// Python's Prometheus parser (Debian python3-prometheus-client) reads the
/// scrape; the bytes of one known transfer are counted exactly.
#[tokio::test]
async fn metrics_parse_and_count_a_known_transfer() {
    run_test(async {
        let server = TestServer::start(&spec()).await;
        let admin = server.admin.expect("admin API on");
        let echo = tcp_echo().await;
        let mut a = TestClient::start(
            &ClientSpec::new(server.addr).credential("alice", ALICE_KEY).forward(tcp_fwd(0, echo.addr.port())),
        );
        let reg = a.connected().await;
        let port = public_port(&reg, 0);

        const N: usize = 300_001;
        let data = pattern(7, N);
        let mut v = tokio::net::TcpStream::connect(local(port)).await.expect("connect");
        v.write_all(&data).await.expect("write");
        let mut back = vec![0u8; N];
        within(WAIT, "echo", v.read_exact(&mut back)).await.expect("read");
        assert_eq!(back, data);
        drop(v);
        let h = server.handle.clone();
        wait_until("stream closed", || h.sessions()[0].open_streams == 0).await;

        let r = api(admin, "GET", "/metrics", Some(TOKEN), None).await;
        assert_eq!(r.status, 200);
        assert_eq!(api(admin, "GET", "/metrics", None, None).await.status, 401);
        let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
want = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        if s.name == "opennotr_forward_bytes_total" and s.labels.get("protocol") == "tcp":
            want[s.labels["direction"]] = int(s.value)
        if s.name == "opennotr_forward_streams_total" and s.labels.get("protocol") == "tcp":
            want["streams"] = int(s.value)
        if s.name == "opennotr_sessions":
            want["sessions"] = int(s.value)
        if s.name == "opennotr_handshakes_total" and s.labels.get("result") == "ok":
            want["ok"] = int(s.value)
        if s.name == "process_resident_memory_bytes":
            want["rss"] = s.value > 0
print(want["in"], want["out"], want["streams"], want["sessions"], want["ok"], want["rss"])
"#;
        let mut py = tokio::process::Command::new(opennotr_tests::tools::python_with("prometheus_client"))
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (Debian python3-prometheus-client)");
        py.stdin.take().expect("stdin").write_all(r.body.as_bytes()).await.expect("feed");
        let out = within(WAIT, "python parser", py.wait_with_output()).await.expect("python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "parser failed: {}\n{}", String::from_utf8_lossy(&out.stderr), r.body);
        assert_eq!(stdout.trim(), format!("{N} {N} 1 1 1 True"), "{}", r.body);

        a.stop().await;
        server.stop().await;
    })
    .await;
}

/// A server started from `yaml` written to a file of a new temporary
/// directory, which reloads re-read: the server, its admin address, the
/// directory (for the test to remove) and the file.
async fn file_server(tag: &str, yaml: &str) -> (TestServer, SocketAddr, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("opennotr-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notrd.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let cfg = opennotr_config::load_server(&path).expect("config");
    let server = TestServer::start_with(cfg, &builtin_plugins()).await;
    server.handle.set_config_path(path.clone());
    let admin = server.admin.expect("admin");
    (server, admin, dir, path)
}

/// A reload applies new credentials without touching other sessions; a
/// broken file changes nothing.
#[tokio::test]
async fn reload_applies_credentials_and_keeps_the_old_config_on_errors() {
    run_test(async {
        let spec = spec();
        let (server, admin, dir, path) = file_server("reload", &spec.yaml()).await;

        let mut a = TestClient::start(&ClientSpec::new(server.addr).credential("alice", ALICE_KEY));
        a.connected().await;
        let mut b = TestClient::start(&ClientSpec::new(server.addr).credential("bob", BOB_KEY));
        b.connected().await;
        let mut shared = TestClient::start(&ClientSpec::new(server.addr));
        shared.connected().await;

        std::fs::write(&path, "server: [broken").expect("write");
        let r = api(admin, "POST", "/api/v1/reload", Some(TOKEN), None).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(server.handle.sessions().len(), 3);

        // Bob's key changes: his session closes, alice's stays. A lower
        // forward limit applies to the next registration.
        let changed = spec.yaml().replace(BOB_KEY, "bob's new key") + "limits:\n  maxForwardsPerClient: 1\n";
        std::fs::write(&path, changed).expect("write");
        let r = api(admin, "POST", "/api/v1/reload", Some(TOKEN), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(json(&r)["sessions_closed"], 1, "{}", r.body);
        bad_key(&mut b).await;
        let h = server.handle.clone();
        wait_until("alice and the shared-key client left", || h.sessions().len() == 2).await;
        assert!(a.pending_events().iter().all(|e| !matches!(e, Event::Disconnected { .. })));
        assert!(shared.pending_events().iter().all(|e| !matches!(e, Event::Disconnected { .. })));
        let report = json(&r);
        assert!(report["changed"].to_string().contains("limits"), "{report}");
        let echo = tcp_echo().await;
        let p = echo.addr.port();
        let mut c = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, p)).forward(tcp_fwd(0, p)));
        let reg = c.connected().await;
        assert!(reg.forwards[0].error.is_none());
        let err = reg.forwards[1].error.clone().expect("second forward refused");
        assert!(err.contains("at most 1 forwards"), "{err}");
        c.stop().await;

        // The tcp plugin's port range changes: the session with a tcp
        // forward is closed and comes back with a port in the new range;
        // the session without one is not touched.
        let mut t = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, p)));
        let before = public_port(&t.connected().await, 0);
        let (lo, hi) = PORT_RANGE;
        let narrow = format!("\"PortMin\": {lo}, \"PortMax\": {}", lo + 99);
        let tcp_line = format!("\"PortMin\": {lo}, \"PortMax\": {hi}");
        let yaml = std::fs::read_to_string(&path).expect("read").replacen(&tcp_line, &narrow, 1);
        std::fs::write(&path, yaml).expect("write");
        let r = api(admin, "POST", "/api/v1/reload", Some(TOKEN), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(json(&r)["changed"].to_string().contains("plugin.tcp"), "{}", r.body);
        assert_eq!(json(&r)["sessions_closed"], 1, "{}", r.body);
        let reason = t.disconnected().await;
        assert!(reason.contains("plugin configuration changed"), "{reason}");
        let after = public_port(&t.connected().await, 0);
        if !(lo..=lo + 99).contains(&before) {
            assert_ne!(before, after);
        }
        assert!((lo..=lo + 99).contains(&after), "port {after} outside the new range");
        assert!(a.pending_events().iter().all(|e| !matches!(e, Event::Disconnected { .. })));
        t.stop().await;

        // A new shared key: its clients go (a rotation), alice stays.
        let yaml = std::fs::read_to_string(&path).expect("read").replace(KEY, "a rotated shared key");
        std::fs::write(&path, yaml).expect("write");
        let r = api(admin, "POST", "/api/v1/reload", Some(TOKEN), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(json(&r)["changed"].to_string().contains("server.authKey"), "{}", r.body);
        bad_key(&mut shared).await;
        assert!(a.pending_events().iter().all(|e| !matches!(e, Event::Disconnected { .. })));

        a.stop().await;
        b.stop().await;
        shared.stop().await;
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A reload that changes `admin.token` puts it in force at once: the old
/// token gets 401, the new one 200, and nothing needs a restart; moving
/// `admin.listen` still does.
#[tokio::test]
async fn reload_replaces_the_admin_token() {
    run_test(async {
        let spec = spec();
        let (server, admin, dir, path) = file_server("token", &spec.yaml()).await;
        let new_token = "a-rotated-admin-token-7f3e";
        std::fs::write(&path, spec.yaml().replace(TOKEN, new_token)).expect("write");
        let r = api(admin, "POST", "/api/v1/reload", Some(TOKEN), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let report = json(&r);
        assert_eq!(report["changed"], serde_json::json!(["admin.token"]), "{report}");
        assert_eq!(report["restart_required"], serde_json::json!([]), "{report}");
        assert!(!r.body.contains(new_token) && !r.body.contains(TOKEN), "{}", r.body);
        assert_eq!(api(admin, "GET", "/api/v1/sessions", Some(TOKEN), None).await.status, 401);
        assert_eq!(api(admin, "GET", "/api/v1/sessions", Some(new_token), None).await.status, 200);

        // The same file again: nothing changed.
        let r = api(admin, "POST", "/api/v1/reload", Some(new_token), None).await;
        assert_eq!(json(&r)["changed"], serde_json::json!([]), "{}", r.body);
        // A new listen address is for a restart; the token in the same
        // file still applies.
        let moved = spec
            .yaml()
            .replace("admin:\n  listen: \"127.0.0.1:0\"", "admin:\n  listen: \"127.0.0.1:1\"")
            .replace(TOKEN, "a-third-admin-token-0a9b");
        std::fs::write(&path, moved).expect("write");
        let r = api(admin, "POST", "/api/v1/reload", Some(new_token), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(json(&r)["restart_required"], serde_json::json!(["admin"]), "{}", r.body);
        assert_eq!(api(admin, "GET", "/api/v1/sessions", Some("a-third-admin-token-0a9b"), None).await.status, 200);
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// `server.authKeyDomains` limits what clients of the shared key may claim
/// (named clients keep their own lists); a reload that narrows it closes
/// the shared-key sessions it no longer allows, never one whose domain the
/// server picked.
#[tokio::test]
async fn auth_key_domains_limit_what_the_shared_key_claims() {
    run_test(async {
        let spec = spec();
        let with = |list: &str| spec.yaml().replacen("  domain: ", &format!("  authKeyDomains: {list}\n  domain: "), 1);
        let first = with(&format!("[\"*.apps.{ZONE}\", \"www.example.com\"]"));
        let (server, admin, dir, path) = file_server("keydomains", &first).await;

        let mut app = TestClient::start(&ClientSpec::new(server.addr).domain(&format!("one.apps.{ZONE}")));
        let mut www = TestClient::start(&ClientSpec::new(server.addr).domain("WWW.example.com"));
        let mut picked = TestClient::start(&ClientSpec::new(server.addr));
        let mut bob =
            TestClient::start(&ClientSpec::new(server.addr).credential("bob", BOB_KEY).domain("x.bob.example"));
        for c in [&mut app, &mut www, &mut picked, &mut bob] {
            c.connected().await;
        }
        // `*.apps.<zone>` covers names below it, not the name itself.
        let mut other = TestClient::start(&ClientSpec::new(server.addr).domain(&format!("apps.{ZONE}")));
        let (code, message) = refused(&mut other).await;
        assert_eq!(code, RefuseCode::DomainNotAllowed, "{message}");
        assert!(message.contains(&format!("may not claim apps.{ZONE}")), "{message}");
        assert!(message.contains(&format!("*.apps.{ZONE}, www.example.com")), "{message}");
        other.stop().await;
        assert_eq!(server.handle.sessions().len(), 4);

        // Narrowed to nothing: clients of the shared key may no longer
        // choose their domain. The two that chose go; the one the server
        // named and the named client stay.
        std::fs::write(&path, with("[]")).expect("write");
        let r = api(admin, "POST", "/api/v1/reload", Some(TOKEN), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let report = json(&r);
        assert!(report["changed"].to_string().contains("server.authKeyDomains"), "{report}");
        assert!(!report["restart_required"].to_string().contains("server"), "{report}");
        assert_eq!(report["sessions_closed"], 2, "{report}");
        for c in [&mut app, &mut www] {
            let reason = c.disconnected().await;
            assert!(reason.contains("credential changed"), "{reason}");
            let (code, message) = refused(c).await;
            assert_eq!(code, RefuseCode::DomainNotAllowed, "{message}");
            assert!(message.contains("may not choose their domain"), "{message}");
        }
        assert!(picked.pending_events().iter().all(|e| !matches!(e, Event::Disconnected { .. })));
        assert!(bob.pending_events().iter().all(|e| !matches!(e, Event::Disconnected { .. })));

        for c in [app, www, picked, bob] {
            c.stop().await;
        }
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// The dashboard of a real server, with a real client connected, renders
/// that client's session in Debian's headless Chromium.
#[tokio::test]
async fn dashboard_shows_a_real_session_in_chromium() {
    let Some(browser) = ["/usr/bin/chromium"].into_iter().find(|p| std::path::Path::new(p).is_file()) else {
        if std::env::var("OPENNOTR_SKIP_BROWSER").as_deref() == Ok("1") {
            return println!("skipped: no chromium");
        }
        panic!("needs Debian's chromium (apt-get install chromium; CI installs it)");
    };
    run_test(async {
        let server = TestServer::start(&spec()).await;
        let admin = server.admin.expect("admin");
        let echo = tcp_echo().await;
        // Its forward serves in a group and narrows who may connect.
        let cfg = opennotr_config::parse_client(&format!(
            "serverAddr: \"{}\"\nname: alice\nkey: {ALICE_KEY:?}\nforwards:\n  - protocol: tcp\n    ports:\n      \
             0: {}\n    group: web-pool\n    groupKey: \"the pool's key\"\n    deny: [\"192.0.2.0/24\"]\n",
            server.addr,
            echo.addr.port()
        ))
        .unwrap();
        let mut a = TestClient::start_config(cfg);
        let reg = a.connected().await;
        let profile = std::env::temp_dir().join(format!("opennotr-e2e-chromium-{}", std::process::id()));
        let out = tokio::process::Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=10000", "--dump-dom"])
            .arg(format!("http://{admin}/#token={TOKEN}"))
            .kill_on_drop(true)
            .output();
        // A hang guard, not a synchronisation.
        let out = within(std::time::Duration::from_secs(120), "chromium", out).await.expect("chromium runs");
        let _ = std::fs::remove_dir_all(&profile);
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(dom.contains(&reg.domain), "the dashboard does not show {}:\n{dom}", reg.domain);
        assert!(dom.contains(&format!(":{}", public_port(&reg, 0))), "no public port in:\n{dom}");
        assert!(dom.contains(">⇄ web-pool<"), "no group badge in:\n{dom}");
        assert!(dom.contains("client: deny 192.0.2.0/24"), "no access rules in:\n{dom}");
        let groups = dom.split("<table id=\"groups\">").nth(1).unwrap_or_default();
        assert!(groups.contains("<strong>web-pool</strong>") && groups.contains(">alice<"), "no group in:\n{dom}");
        a.stop().await;
        server.stop().await;
    })
    .await;
}

/// The gateway's requests by status and the DNS server's queries show up
/// in the scrape with exact counts.
#[tokio::test]
async fn metrics_count_gateway_requests_and_dns_queries() {
    run_test(async {
        let spec =
            ServerSpec { dns: Some(DnsSpec::default()), ..spec() }.plugin("http", r#"{"listen": "127.0.0.1:0"}"#);
        let server = TestServer::start(&spec).await;
        let admin = server.admin.expect("admin");
        let svc = tcp_service(|mut s| async move {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
        })
        .await;
        let mut a = TestClient::start(
            &ClientSpec::new(server.addr)
                .credential("bob", BOB_KEY)
                .domain("www.bob.example")
                .forward(http_fwd(svc.addr.port())),
        );
        let reg = a.connected().await;
        let port = public_port(&reg, 0);
        for (host, want) in [(reg.domain.as_str(), "200"), ("nobody.example", "404")] {
            let out = tokio::process::Command::new(opennotr_tests::tools::need("curl"))
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
                .arg(format!("Host: {host}"))
                .arg(format!("http://127.0.0.1:{port}/"))
                .output();
            let out = within(WAIT, "curl", out).await.expect("curl");
            assert_eq!(String::from_utf8_lossy(&out.stdout), want);
        }
        let dns = server.dns.expect("dns on");
        let out = tokio::process::Command::new(opennotr_tests::tools::need("dig"))
            .arg(format!("@{}", dns.ip()))
            .args(["-p", &dns.port().to_string(), "+time=2", "+tries=2", "+short", &reg.domain, "A"])
            .output();
        let out = within(WAIT, "dig (Debian bind9-dnsutils)", out).await.expect("dig");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.2");

        let m = api(admin, "GET", "/metrics", Some(TOKEN), None).await.body;
        for line in [
            "opennotr_gateway_requests_total{scheme=\"http\",status=\"200\"} 1",
            "opennotr_gateway_requests_total{scheme=\"http\",status=\"404\"} 1",
            "opennotr_dns_queries_total{transport=\"udp\",rcode=\"NOERROR\"} 1",
        ] {
            assert!(m.lines().any(|l| l == line), "no `{line}` in:\n{m}");
        }
        assert_eq!(m.matches("# TYPE opennotr_gateway_requests_total").count(), 1, "{m}");
        a.stop().await;
        server.stop().await;
    })
    .await;
}

/// Polls the API until `path` answers JSON for which `done` holds.
async fn api_until(admin: SocketAddr, path: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = api(admin, "GET", path, Some(TOKEN), None).await;
        if r.status == 200 && done(&json(&r)) {
            return r.body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} never showed in {path}: {}", r.body);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A load-balanced group of two real clients and access rules of the
/// server and of a client show up in the API: on each forward, in
/// `/api/v1/groups` and on the credential; a refused visitor is counted on
/// its forward; no key, group key digest or password hash appears anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_access_rules_show_without_secrets() {
    use opennotr_proto::message::GroupRequest;
    run_test(async {
        let group_key = "the web group's key";
        let digest = GroupRequest::digest("web", group_key);
        let hash = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(b"a test salt 16b!").unwrap();
            let params = argon2::Params::new(8, 1, 1, None).unwrap();
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(b"dave's password", &salt)
                .unwrap()
                .to_string()
        };
        let spec = ServerSpec {
            extra_yaml: format!(
                "access:\n  allow: [\"127.0.0.0/8\"]\n\
                 clients:\n  - name: alice\n    key: {ALICE_KEY:?}\n    deny: [\"192.0.2.0/24\"]\n    \
                 basicAuth:\n      - user: dave\n        hash: {hash:?}\n\
                 admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n"
            ),
            ..ServerSpec::default()
        };
        let server = TestServer::start(&spec).await;
        let admin = server.admin.expect("admin");
        let (one, two) = (tcp_echo().await, tcp_echo().await);
        // Two shared-key members of group `web`; the first denies 127.0.0.3.
        let member = |local: u16, extra: &str| {
            opennotr_config::parse_client(&format!(
                "serverAddr: \"{}\"\nkey: \"{KEY}\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: {local}\n    \
                 group: web\n    groupKey: \"{group_key}\"\n{extra}",
                server.addr
            ))
            .unwrap()
        };
        let mut first = TestClient::start_config(member(one.addr.port(), "    deny: [\"127.0.0.3/32\"]\n"));
        let port = public_port(&first.connected().await, 0);
        let mut second = TestClient::start_config(member(two.addr.port(), ""));
        assert_eq!(public_port(&second.connected().await, 0), port, "one port for the group");
        let sessions = json(&api(admin, "GET", "/api/v1/sessions", Some(TOKEN), None).await);
        let id_of = |target: SocketAddr| {
            let s = sessions.as_array().unwrap().iter().find(|s| s["forwards"][0]["target"] == target.to_string());
            s.expect("a member")["id"].as_str().unwrap().to_string()
        };
        let (first_id, second_id) = (id_of(one.addr), id_of(two.addr));

        // Visitors the first member denies: it refuses them (the group then
        // offers them to the second, which takes them), and its forward
        // counts them. Two, so that one is offered to it first whatever
        // the round robin's turn.
        for _ in 0..2 {
            within(WAIT, "a denied visitor", denied_visitor(port)).await;
        }
        let body = api_until(admin, &format!("/api/v1/sessions/{first_id}"), "the refusal", |v| {
            v["forwards"][0]["access"]["refused"]["denied"].as_u64() >= Some(1)
        })
        .await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let f = &v["forwards"][0];
        assert_eq!(f["group"], serde_json::json!({ "name": "web", "balance": "round_robin", "healthy": true }));
        let rules = |allow: &[&str], deny: &[&str]| serde_json::json!({ "allow": allow, "deny": deny, "users": [] });
        assert_eq!(f["access"]["server"], rules(&["127.0.0.0/8"], &[]), "the server's `access`: {body}");
        assert_eq!(f["access"]["client"], rules(&[], &["127.0.0.3/32"]), "the forward's own: {body}");
        let v = json(&api(admin, "GET", &format!("/api/v1/sessions/{second_id}"), Some(TOKEN), None).await);
        assert_eq!(v["forwards"][0]["group"]["name"], "web");
        assert_eq!(v["forwards"][0]["access"]["client"], serde_json::Value::Null, "it sent no rules");

        // The group: its port, its members (the order they joined).
        let groups = json(&api(admin, "GET", "/api/v1/groups", Some(TOKEN), None).await);
        let g = &groups[0];
        assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
        assert_eq!((g["protocol"].as_str(), g["name"].as_str()), (Some("tcp"), Some("web")));
        assert_eq!((g["balance"].as_str(), g["public_port"].as_u64()), (Some("round_robin"), Some(u64::from(port))));
        let members: Vec<(&str, &str, bool)> = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["session"].as_str().unwrap(), m["target"].as_str().unwrap(), m["healthy"] == true))
            .collect();
        let (t1, t2) = (one.addr.to_string(), two.addr.to_string());
        assert_eq!(members, [(first_id.as_str(), t1.as_str(), true), (second_id.as_str(), t2.as_str(), true)]);
        assert_eq!(g["members"][0]["client"], serde_json::Value::Null, "shared-key members have no name");

        // The credential's rules: user names, never hashes.
        let clients = json(&api(admin, "GET", "/api/v1/clients", Some(TOKEN), None).await);
        let alice = clients.as_array().unwrap().iter().find(|c| c["name"] == "alice").expect("alice");
        assert_eq!(alice["access"], serde_json::json!({ "allow": [], "deny": ["192.0.2.0/24"], "users": ["dave"] }));

        // No secret in any answer.
        let mut all = String::new();
        for path in ["/api/v1/sessions", "/api/v1/groups", "/api/v1/clients", "/metrics"] {
            all += &api(admin, "GET", path, Some(TOKEN), None).await.body;
        }
        for id in [&first_id, &second_id] {
            all += &api(admin, "GET", &format!("/api/v1/sessions/{id}"), Some(TOKEN), None).await.body;
        }
        for secret in [digest.as_str(), group_key, hash.as_str(), "$argon2", KEY, ALICE_KEY] {
            assert!(!all.contains(secret), "{secret:?} in an answer:\n{all}");
        }

        // A member leaving leaves the group at once; the last one ends it.
        second.stop().await;
        api_until(admin, "/api/v1/groups", "the member's leaving", |v| {
            v[0]["members"].as_array().map(Vec::len) == Some(1)
        })
        .await;
        first.stop().await;
        api_until(admin, "/api/v1/groups", "the group's end", |v| v.as_array().is_some_and(Vec::is_empty)).await;
        server.stop().await;
    })
    .await;
}

/// A visitor from 127.0.0.3 to `port`: whatever happens to it.
async fn denied_visitor(port: u16) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let Ok(mut c) = s.connect(local(port)).await else { return };
    let _ = c.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    let _ = c.read(&mut buf).await;
}
