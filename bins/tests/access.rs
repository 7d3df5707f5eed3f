//! Access control with the real binaries (docs/access-control.md): the
//! server's `clients[i]` rules, a client file that tries to widen them and
//! one that narrows them, basic auth with a hash from `opennotr
//! hash-password`, visitors from 127.0.0.2, .3 and .4 (loopback has
//! 127.0.0.0/8), and the refusals in `/metrics`.
//!
//! No fixed port: the server listens on `127.0.0.1:0`, public ports come
//! from the client's stdout. Every wait reads child output or has a
//! deadline; no sleep synchronises.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;

use support::{json_fields, read_registration, Proc, Src, TempDir, CLIENT, SERVER};

const KEY: &str = "alice-key-0123456789abcdef";
const TOKEN: &str = "admin-token-0123456789";

/// A TCP service on 127.0.0.1 that answers any request with `200` and the
/// request's head as the body, or echoes bytes that are not HTTP.
fn service() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.starts_with(b"GET ") {
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", got.len());
                            let _ = c.write_all(head.as_bytes());
                            let _ = c.write_all(&got);
                            got.clear();
                        }
                    } else if !b"GET ".starts_with(&got[..got.len().min(4)]) {
                        let _ = c.write_all(&got);
                        got.clear();
                    }
                }
            });
        }
    });
    port
}

/// Sends `ping` to 127.0.0.1:`port` from `from` with Python (std cannot
/// bind before connecting) and returns what came back, or `reset`.
fn tcp_from(from: &str, port: u16) -> String {
    let script = [
        "import socket",
        "s = socket.socket()",
        "s.settimeout(20)",
        &format!("s.bind(('{from}', 0))"),
        "try:",
        &format!("    s.connect(('127.0.0.1', {port}))"),
        "    s.sendall(b'ping')",
        "    d = s.recv(4)",
        "    print(d.decode() if d else 'eof')",
        "except ConnectionResetError:",
        "    print('reset')",
    ]
    .join("\n");
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3 (package python3)");
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// curl from `from` to `domain` on the gateway `port`: the status.
fn curl(from: &str, domain: &str, port: u16, user: Option<&str>) -> (u16, String) {
    let resolve = format!("{domain}:{port}:127.0.0.1");
    let mut cmd = Command::new(support::tools::need("curl"));
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "20", "--interface", from, "--resolve", &resolve]).args([
        "-D",
        "-",
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let out = cmd.arg(format!("http://{domain}:{port}/x")).output().expect("curl (package curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn metrics(admin: SocketAddr) -> String {
    let out = Command::new(support::tools::need("curl"))
        .args(["-sS", "--noproxy", "*", "--max-time", "20", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("http://{admin}/metrics"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn hash_password(dir: &TempDir, password: &str) -> String {
    let mut p = Command::new(CLIENT)
        .arg("hash-password")
        .current_dir(&dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success(), "hash-password: {out:?}");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

#[test]
fn server_rules_and_a_client_file_enforced_by_the_real_binaries() {
    let dir = TempDir::new("access");
    let svc = service();
    let server_yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  domain: \"open.notr.test\"\ndhcp:\n  cidr: \"100.64.242.1/24\"\n\
         plugin:\n  tcp: '{{\"bind\": \"127.0.0.1\"}}'\n  http: '{{\"listen\": \"127.0.0.1:0\"}}'\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n\
         clients:\n  - name: alice\n    key: {KEY:?}\n    allow: [\"127.0.0.0/8\"]\n    deny: [\"127.0.0.3\"]\n"
    );
    let conf = dir.write("opennotrd.yaml", &server_yaml);
    let mut server =
        Proc::spawn(SERVER, &["--config", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0);
    let line =
        server.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let addr: SocketAddr =
        json_fields(&line, "listening for clients").unwrap()["addr"].as_str().unwrap().parse().unwrap();
    let line = server.expect(Src::Err, "`admin API listening`", |l| json_fields(l, "admin API listening").is_some());
    let admin: SocketAddr =
        json_fields(&line, "admin API listening").unwrap()["addr"].as_str().unwrap().parse().unwrap();

    let hash = hash_password(&dir, "wonderland");
    let client_yaml = format!(
        "serverAddr: \"{addr}\"\nname: alice\nkey: {KEY:?}\ndomain: \"alice.open.notr.test\"\nforwards:\n\
         \x20 - protocol: tcp\n    ports: {{0: {svc}}}\n    allow: [\"0.0.0.0/0\"]\n\
         \x20 - protocol: http\n    ports: {{0: {svc}}}\n    deny: [\"127.0.0.4/32\"]\n\
         \x20   basicAuth:\n      - user: alice\n        hash: \"{hash}\"\n"
    );
    let cconf = dir.write("opennotr.yaml", &client_yaml);
    let mut client = Proc::spawn(CLIENT, &["--config", cconf.to_str().unwrap()], &dir.0);
    let reg = read_registration(&mut client, 2);
    let port_of = |line: &str| -> u16 {
        let url = line.split_whitespace().next().unwrap();
        url.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no port in {line:?}"))
    };
    let (tcp, http) = (port_of(&reg.forwards[0]), port_of(&reg.forwards[1]));

    // TCP: the client's allow-all does not widen the server's deny.
    assert_eq!(tcp_from("127.0.0.2", tcp), "ping");
    assert_eq!(tcp_from("127.0.0.3", tcp), "reset");
    assert_eq!(tcp_from("127.0.0.4", tcp), "ping");

    // HTTP: the server's deny, the client's own deny, then basic auth.
    let domain = "alice.open.notr.test";
    assert_eq!(curl("127.0.0.3", domain, http, Some("alice:wonderland")).0, 403);
    assert_eq!(curl("127.0.0.4", domain, http, Some("alice:wonderland")).0, 403);
    let (status, text) = curl("127.0.0.2", domain, http, None);
    assert_eq!(status, 401, "{text}");
    assert!(text.to_ascii_lowercase().contains(&format!("www-authenticate: basic realm=\"{domain}\"")), "{text}");
    assert_eq!(curl("127.0.0.2", domain, http, Some("alice:wrong")).0, 401);
    let (status, text) = curl("127.0.0.2", domain, http, Some("alice:wonderland"));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("GET /x HTTP/1.1") && !text.to_ascii_lowercase().contains("authorization:"), "{text}");

    let m = metrics(admin);
    for series in [
        r#"opennotr_visitors_refused_total{protocol="tcp",reason="denied"} 1"#,
        r#"opennotr_visitors_refused_total{protocol="http",reason="denied"} 2"#,
        r#"opennotr_visitors_refused_total{protocol="http",reason="unauthorized"} 2"#,
    ] {
        assert!(m.contains(series), "{series} not in:\n{m}");
    }
    drop(client);
    drop(server);
}

/// The virtual LAN: programs on the server host reaching `VIP:port` pass
/// the server's rules and those of the forward whose local port it is,
/// over TCP (reset) and UDP (datagrams dropped).
/// Root only (network namespaces, nftables).
#[test]
fn vip_visitors_pass_the_server_and_forward_rules() {
    use support::netns::{http_server, in_ns, python, root_with, run_bounded, Lan};
    if !root_with(&["nft", "ip", "curl", "python3"]) {
        return;
    }
    // Two veth pairs: the server namespace has two addresses to visit from.
    let lan = Lan::new("acl", 20, 2);
    let (s0, s1) = (lan.server_ip(0), lan.server_ip(1));
    let dir = TempDir::world_readable("access-vip");
    dir.write("www/index.html", "hello\n");
    let _web0 = http_server(&lan.clients[0], &dir.path("www"), 8000);
    let _web1 = http_server(&lan.clients[0], &dir.path("www"), 8001);
    let echo = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('127.0.0.1', 5353))\n\
                print('ready', flush=True)\nwhile True:\n    d, a = s.recvfrom(65535)\n    s.sendto(d, a)\n";
    let mut udp_echo = Proc::spawn_named("udp echo", in_ns(&lan.clients[0], python(), &["-u", "-c", echo]), &dir.0);
    udp_echo.expect(Src::Out, "`ready`", |l| l == "ready");
    let server_yaml = format!(
        "server:\n  listen: \"{s0}:10100\"\n  authKey: \"k\"\n  domain: \"vlan.notr.test\"\n\
         \x20 tcplisten: \"127.0.0.1:4398\"\n  udplisten: \"127.0.0.1:4399\"\n  shutdownGrace: 0.5\n\
         dhcp:\n  cidr: \"100.64.242.1/24\"\n\
         plugin:\n  tcp: '{{\"bind\": \"127.0.0.1\"}}'\n  udp: '{{\"bind\": \"127.0.0.1\"}}'\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n\
         access:\n  deny: [\"{s1}/32\"]\n"
    );
    let conf = dir.write("opennotrd.yaml", &server_yaml);
    let mut server = Proc::spawn_named(
        "opennotrd",
        in_ns(&lan.server, SERVER, &["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"]),
        &dir.0,
    );
    let line = server.expect(Src::Err, "`admin API listening`", |l| json_fields(l, "admin API listening").is_some());
    let admin = json_fields(&line, "admin API listening").unwrap()["addr"].as_str().unwrap().to_string();
    assert!(server.seen.iter().any(|(_, l)| l.contains("virtual LAN on")), "{}", server.transcript());
    let client_yaml = format!(
        "serverAddr: \"{s0}:10100\"\nkey: \"k\"\nforwards:\n\
         \x20 - protocol: tcp\n    ports: {{0: 8000}}\n    allow: [\"0.0.0.0/0\"]\n\
         \x20 - protocol: tcp\n    ports: {{0: 8001}}\n    deny: [\"{s0}/32\"]\n\
         \x20 - protocol: udp\n    ports: {{0: 5353}}\n"
    );
    let cconf = dir.write("opennotr.yaml", &client_yaml);
    let mut client =
        Proc::spawn_named("opennotr", in_ns(&lan.clients[0], CLIENT, &["-c", cconf.to_str().unwrap()]), &dir.0);
    let reg = read_registration(&mut client, 3);
    let vip = reg.vip;
    let visit = |from: std::net::Ipv4Addr, port: u16| {
        let url = format!("http://{vip}:{port}/");
        let from = from.to_string();
        run_bounded(
            in_ns(&lan.server, "curl", &["-sS", "-m", "10", "--interface", &from, &url]),
            std::time::Duration::from_secs(30),
        )
    };
    // A refused visitor is reset: curl fails with 7 when the reset came
    // before it saw the connection up, 56 after (the port is exported:
    // the first visit got the page).
    let reset = |from, port, why: &str| {
        let out = visit(from, port);
        assert!(matches!(out.code, Some(7 | 56)), "{why}: {}", out.show());
    };
    let out = visit(s0, 8000);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "hello\n"), "{}", out.show());
    reset(s1, 8000, "the server's deny, whatever the forward allows");
    reset(s0, 8001, "the forward's own deny");
    reset(s1, 8001, "both");
    // UDP: three datagrams from each source, a second for each answer.
    let udp = |from: std::net::Ipv4Addr| {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{from}', 0))\n\
             s.settimeout(1)\ngot = 'silent'\nfor i in range(3):\n    s.sendto(b'ping', ('{vip}', 5353))\n\
             \x20   try:\n        if s.recv(64) == b'ping':\n            got = 'echo'\n            break\n\
             \x20   except socket.timeout:\n        pass\nprint(got)\n"
        );
        let out = run_bounded(in_ns(&lan.server, python(), &["-c", &script]), std::time::Duration::from_secs(30));
        assert_eq!(out.code, Some(0), "{}", out.show());
        out.stdout.trim().to_string()
    };
    assert_eq!(udp(s0), "echo");
    assert_eq!(udp(s1), "silent", "the server's deny drops the datagrams");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let url = format!("http://{admin}/metrics");
    let m = run_bounded(
        in_ns(&lan.server, "curl", &["-sS", "-m", "10", "-H", &auth, &url]),
        std::time::Duration::from_secs(30),
    );
    assert!(m.stdout.contains(r#"opennotr_visitors_refused_total{protocol="vip",reason="denied"} 6"#), "{}", m.show());
    drop(client);
    server.signal("TERM");
    let st = server.wait_exit(support::WAIT);
    assert_eq!(st.code(), Some(0), "{}", server.transcript());
}
