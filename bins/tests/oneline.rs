//! Black-box tests of the file-less ways to run the binaries
//! (docs/cli.md): `opennotrd init` and the client command it prints,
//! forwards on the client's command line, `opennotrd --domain --key-file`,
//! and `opennotr check` with each of its exit codes.
//!
//! No fixed port: servers listen on `127.0.0.1:0` (the address is read
//! from their JSON log), the test file's port range covers the ephemeral
//! ports so a requested public port can be one the system just handed
//! out, and every wait reads output or polls with a deadline.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    json_fields, parse_forward, read_registration, tcp_echo, tcp_echo_on, udp_echo, Proc, Src, TempDir, CLIENT, SERVER,
    WAIT,
};

const ADMIN_TOKEN: &str = "oneline-test-admin-token";

/// A command for `bin` whose environment holds no OPENNOTR* variable but
/// those given.
fn cmd(bin: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin);
    c.env("NO_COLOR", "1");
    for v in ["OPENNOTR_SERVER", "OPENNOTR_KEY", "OPENNOTR_NAME", "OPENNOTRD_KEY"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(bin: &str, env: &[(&str, &str)], args: &[&str], cwd: &Path) -> (ExitStatus, Proc) {
    let mut p = Proc::spawn_cmd(cmd(bin, env), args, cwd);
    let st = p.wait_exit(WAIT);
    (st, p)
}

fn start_server(dir: &TempDir, env: &[(&str, &str)], args: &[&str]) -> (Proc, SocketAddr) {
    let mut all = args.to_vec();
    all.extend(["--log-level", "info", "--log-json"]);
    let mut p = Proc::spawn_cmd(cmd(SERVER, env), &all, &dir.0);
    let line = p.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let addr = json_fields(&line, "listening for clients").unwrap()["addr"].as_str().unwrap().parse().unwrap();
    (p, addr)
}

/// A port the system considers free right now (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An HTTP service that answers every request with `hello <path>`.
fn http_service() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let path = String::from_utf8_lossy(&req).split_whitespace().nth(1).unwrap_or("").to_string();
                let body = format!("hello {path}");
                let _ =
                    write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    port
}

fn tcp_round_trip(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"one line").unwrap();
    let mut got = [0u8; 8];
    s.read_exact(&mut got).unwrap_or_else(|e| panic!("tcp echo through port {port}: {e}"));
    assert_eq!(&got, b"one line");
}

fn udp_round_trip(port: u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        s.send_to(b"datagram", (Ipv4Addr::LOCALHOST, port)).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"datagram");
            return;
        }
    }
    panic!("no udp echo through port {port}");
}

fn http_get(port: u16, host: &str, path: &str, auth: Option<&str>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `opennotr_sessions` of the server's `/metrics`.
fn sessions(admin: u16) -> u64 {
    let m = http_get(admin, "127.0.0.1", "/metrics", Some(ADMIN_TOKEN));
    let line = m.lines().find(|l| l.starts_with("opennotr_sessions ")).unwrap_or_else(|| panic!("{m}"));
    line["opennotr_sessions ".len()..].trim().parse().unwrap()
}

/// Replaces `from` (which must occur exactly once) by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected exactly one {from:?} in:\n{text}");
    text.replacen(from, to, 1)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The value after `export OPENNOTR_KEY=` and the words of the client
/// command `opennotrd init` printed.
fn printed_client(init: &Proc) -> (String, Vec<String>) {
    let out = init.lines(Src::Out);
    let key = out.iter().find_map(|l| l.trim().strip_prefix("export OPENNOTR_KEY=")).expect("no OPENNOTR_KEY line");
    let client = out.iter().find(|l| l.trim().starts_with("opennotr ")).expect("no client command");
    (key.to_string(), client.split_whitespace().skip(1).map(String::from).collect())
}

fn check(env: &[(&str, &str)], args: &[&str], dir: &TempDir) -> (i32, Vec<String>) {
    let mut all = vec!["check"];
    all.extend(args);
    let (st, p) = run(CLIENT, env, &all, &dir.0);
    let lines = p.lines(Src::Out);
    (st.code().unwrap_or(-1), lines)
}

fn assert_check(got: &(i32, Vec<String>), code: i32, failing: &str) {
    let (c, lines) = got;
    let text = lines.join("\n");
    assert_eq!(*c, code, "exit status; output:\n{text}");
    let fails: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAIL ")).collect();
    match failing {
        "" => assert!(fails.is_empty(), "{text}"),
        f => assert!(fails.iter().any(|l| l.contains(f)), "no FAIL line with {f:?}:\n{text}"),
    }
    assert!(lines.iter().all(|l| l.starts_with("ok   ") || l.starts_with("FAIL ")), "{text}");
}

// ------------------------------------------------------------------ init + one-line client + check

#[test]
fn init_then_one_line_client_then_check() {
    let dir = TempDir::new("oneline");
    let conf = dir.path("notrd.yaml");
    let init_args = ["init", "--domain", "oneline.test", "--listen", "127.0.0.1:0", "--out", "notrd.yaml"];

    // init: a private file, the client command, no overwrite without --force.
    let (st, first) = run(SERVER, &[], &init_args, &dir.0);
    assert_eq!(st.code(), Some(0), "{}", first.transcript());
    assert_eq!(mode(&conf), 0o600);
    let (key, words) = printed_client(&first);
    assert!(key.len() >= 32 && key.bytes().all(|b| b.is_ascii_alphanumeric()), "key {key:?}");
    assert_eq!(words, ["tcp", "8080", "--server", "oneline.test:0"]);
    let written = std::fs::read_to_string(&conf).unwrap();
    let (st, again) = run(SERVER, &[], &init_args, &dir.0);
    assert_eq!(st.code(), Some(64), "{}", again.transcript());
    assert!(again.stderr_text().contains("--force"), "{}", again.transcript());
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), written, "overwritten without --force");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut forced = init_args.to_vec();
    forced.push("--force");
    let (st, third) = run(SERVER, &[], &forced, &dir.0);
    assert_eq!(st.code(), Some(0), "{}", third.transcript());
    assert_eq!(mode(&conf), 0o600, "--force left the old mode");
    let (key, words) = printed_client(&third);
    assert_ne!(std::fs::read_to_string(&conf).unwrap(), written, "--force wrote the same key");

    // The file as written, on loopback, with a port range that holds the
    // ephemeral ports, the http gateway and the admin API.
    let mut s = std::fs::read_to_string(&conf).unwrap();
    s = replace_once(
        &s,
        "    PortMin: 10000\n    PortMax: 20000",
        "    PortMin: 1024\n    PortMax: 65535\n    bind: \"127.0.0.1\"",
    );
    s = replace_once(
        &s,
        "    PortMin: 20000\n    PortMax: 30000",
        "    PortMin: 1024\n    PortMax: 65535\n    bind: \"127.0.0.1\"",
    );
    s = replace_once(&s, "  # http:\n  #   listen: \"0.0.0.0:80\"", "  http:\n    listen: \"127.0.0.1:0\"");
    s = replace_once(
        &s,
        "# admin:\n#   listen: \"127.0.0.1:7070\"\n#   token: \"a long random string, 16 characters or more\"",
        &format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: \"{ADMIN_TOKEN}\""),
    );
    s = replace_once(&s, "  domain: \"oneline.test\"\n", "  domain: \"oneline.test\"\n  quic: true\n");
    std::fs::write(&conf, s).unwrap();
    let (mut server, addr) = start_server(&dir, &[], &["-c", "notrd.yaml"]);
    let admin_line =
        server.expect(Src::Err, "`admin API listening`", |l| json_fields(l, "admin API listening").is_some());
    let admin_addr = json_fields(&admin_line, "admin API listening").unwrap()["addr"].as_str().unwrap().to_string();
    let admin = admin_addr.parse::<SocketAddr>().unwrap().port();
    assert_eq!(sessions(admin), 0);

    // The printed command, pointed at this server and the test's services,
    // plus more forwards in the same command; the key only in OPENNOTR_KEY.
    let (echo, uecho, web, public) = (tcp_echo(), udp_echo(), http_service(), free_port());
    let mut args: Vec<String> = words
        .iter()
        .map(|w| match w.as_str() {
            "oneline.test:0" => addr.to_string(),
            "8080" => echo.to_string(),
            other => other.to_string(),
        })
        .collect();
    for w in [format!("{public}:{echo}"), "udp".into(), uecho.to_string(), "http".into(), web.to_string()] {
        args.push(w);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("OPENNOTR_KEY", key.as_str())];
    let mut client = Proc::spawn_cmd(cmd(CLIENT, &env), &args, &dir.0);
    let reg = read_registration(&mut client, 4);
    assert!(reg.domain.ends_with(".oneline.test"), "{}", reg.domain);
    let (tcp_any, local) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    assert_eq!(local, echo);
    assert_eq!(parse_forward(&reg.forwards[1], "tcp", &reg.domain), (public, echo));
    let (udp_pub, local) = parse_forward(&reg.forwards[2], "udp", &reg.domain);
    assert_eq!(local, uecho);
    let (gateway, local) = parse_forward(&reg.forwards[3], "http", &reg.domain);
    assert_eq!(local, web);
    tcp_round_trip(tcp_any);
    tcp_round_trip(public);
    udp_round_trip(udp_pub);
    let answer = http_get(gateway, &reg.domain, "/through/the/gateway", None);
    assert!(answer.ends_with("hello /through/the/gateway"), "{answer}");
    assert_eq!(sessions(admin), 1);
    let server_arg = addr.to_string();

    // check: all ok.
    let free = free_port();
    let ok_args =
        ["tcp", &echo.to_string(), &format!("{free}:{echo}"), "udp", &uecho.to_string(), "--server", &server_arg];
    let ok_args: Vec<&str> = ok_args.iter().map(|s| &**s).collect();
    let got = check(&env, &ok_args, &dir);
    assert_check(&got, 0, "");
    assert!(got.1.iter().any(|l| l.starts_with("ok   authenticated")), "{:?}", got.1);
    assert!(got.1.iter().any(|l| l.contains(&format!("public port {free}")) && l.ends_with("would be accepted")));
    // It took nothing: no session, and its public port is still free.
    assert_eq!(sessions(admin), 1, "a check left a session behind");
    TcpListener::bind(("127.0.0.1", free)).unwrap_or_else(|e| panic!("port {free} taken after the check: {e}"));
    // The same over QUIC.
    let mut quic = ok_args.clone();
    quic.extend(["--transport", "quic"]);
    let got = check(&env, &quic, &dir);
    assert_check(&got, 0, "");
    assert!(got.1.iter().any(|l| l.starts_with("ok   server reachable over QUIC")), "{:?}", got.1);
    assert_eq!(sessions(admin), 1, "a check over QUIC left a session behind");

    // A port the running client holds, and one outside PortMin..PortMax:
    // the server would refuse (65).
    let held = format!("{public}:{echo}");
    let got = check(&env, &["tcp", &held, "--server", &server_arg], &dir);
    assert_check(&got, 65, "already in use");
    let got = check(&env, &["tcp", &format!("1000:{echo}"), "--server", &server_arg], &dir);
    assert_check(&got, 65, "outside the allowed range 1024-65535");
    // The running client's domain for http: taken (65).
    let got = check(&env, &["http", &web.to_string(), "--domain", &reg.domain, "--server", &server_arg], &dir);
    assert_check(&got, 65, "held by another connected client");

    // A local target that is down (66); the server part passes.
    let down = free_port();
    let got = check(&env, &["tcp", &down.to_string(), "--server", &server_arg], &dir);
    assert_check(&got, 66, &format!("local tcp 127.0.0.1:{down}"));

    // The server unreachable (69), and a bad configuration (64).
    let got = check(&env, &["tcp", &echo.to_string(), "--server", &format!("127.0.0.1:{}", free_port())], &dir);
    assert_check(&got, 69, "server reachable");
    let got = check(&env, &["tcp", "70000", "--server", &server_arg], &dir);
    assert_check(&got, 64, "tcp 70000");

    // check reads a file too: the client file of the same forward.
    let file = dir.write(
        "config.yaml",
        format!("serverAddr: \"{addr}\"\nkey: \"{key}\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: {echo}\n"),
    );
    let got = check(&[], &["-c", file.to_str().unwrap()], &dir);
    assert_check(&got, 0, "");
    // A `vipPorts` target is dialed like a forward's: one that is down fails.
    let text = std::fs::read_to_string(&file).unwrap() + &format!("vipPorts:\n  - port: {down}\n");
    let with_vip = dir.write("vip.yaml", text);
    let got = check(&[], &["-c", with_vip.to_str().unwrap()], &dir);
    assert_check(&got, 66, &format!("local tcp 127.0.0.1:{down}"));

    // Last, as it counts against 127.0.0.1: a wrong key (77).
    let got = check(
        &[("OPENNOTR_KEY", "not-the-key-of-this-server")],
        &["tcp", &echo.to_string(), "--server", &server_arg],
        &dir,
    );
    assert_check(&got, 77, "authenticated");

    assert_eq!(sessions(admin), 1);
    assert!(client.child.try_wait().unwrap().is_none(), "client exited\n{}", client.transcript());
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
}

// ------------------------------------------------------------------ errors

#[test]
fn one_line_errors_exit_64_naming_the_flag() {
    let dir = TempDir::new("oneline-errors");
    let key = [("OPENNOTR_KEY", "a key long enough to pass")];
    // (environment, arguments, what stderr must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case<'_>] = &[
        (&key, &["tcp", "8080"], "--server"),
        (&[], &["tcp", "8080", "--server", "127.0.0.1:1"], "--key-file"),
        (&key, &["tcp", "70000", "--server", "127.0.0.1:1"], "forward \"tcp 70000\""),
        (&key, &["tcp", "10022:0", "--server", "127.0.0.1:1"], "forward \"tcp 10022:0\""),
        (&key, &["8080", "--server", "127.0.0.1:1"], "forward \"8080\""),
        (&key, &["tcp", "8080", "--server", "no-port"], "--server"),
        (&key, &["tcp", "8080", "--server", "127.0.0.1:1", "--transport", "sctp"], "--transport"),
        (&key, &["tcp", "8080", "--server", "127.0.0.1:1", "--domain", "a b"], "--domain"),
        (&key, &["tcp", "8080", "--server", "127.0.0.1:1", "--key-file", "/nonexistent/key"], "--key-file"),
        (&key, &["--server", "127.0.0.1:1"], "--server: only with forwards"),
        (&key, &["-c", "x.yaml", "tcp", "8080"], "--config"),
    ];
    for (env, args, flag) in cases {
        let (st, p) = run(CLIENT, env, args, &dir.0);
        assert_eq!(st.code(), Some(64), "opennotr {args:?}: {st:?}\n{}", p.transcript());
        assert!(p.stderr_text().contains(flag), "opennotr {args:?}: no {flag:?} in:\n{}", p.transcript());
    }
    // The key never appears in what the client prints.
    let (_, p) = run(CLIENT, &key, &["tcp", "70000", "--server", "127.0.0.1:1"], &dir.0);
    assert!(!p.transcript().contains("a key long enough"), "{}", p.transcript());

    for (env, args, flag) in [
        (&[][..], &["--domain", "flags.test"][..], "--key-file"),
        (&[], &["--key-file", "k"], "only with --domain"),
        (&[("OPENNOTRD_KEY", "abcdefghijklmnopqrstuvwxyz")], &["--domain", "bad domain"], "--domain"),
        (&[("OPENNOTRD_KEY", "abcdefghijklmnopqrstuvwxyz")], &["--domain", "f.test", "--listen", "nope"], "--listen"),
    ] {
        let (st, p) = run(SERVER, env, args, &dir.0);
        assert_eq!(st.code(), Some(64), "opennotrd {args:?}: {st:?}\n{}", p.transcript());
        assert!(p.stderr_text().contains(flag), "opennotrd {args:?}: no {flag:?} in:\n{}", p.transcript());
    }
}

// ------------------------------------------------------------------ server without a file

#[test]
fn server_from_flags_and_client_from_env() {
    let dir = TempDir::new("oneline-flags");
    let keyfile = dir.write("key", "a-long-random-key-for-this-test\n");
    let (mut server, addr) =
        start_server(&dir, &[], &["--domain", "flags.test", "--key-file", "key", "--listen", "127.0.0.1:0"]);
    let echo = tcp_echo();
    // Everything from the environment but the forward; the key from a file.
    let env = [("OPENNOTR_SERVER", addr.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A local host other than 127.0.0.1, and an http forward this server
    // (no gateway) would refuse: `check` says so, naming the key to set.
    let other = tcp_echo_on("127.0.0.2");
    let keyfile_arg = keyfile.to_str().unwrap();
    let got = check(&env, &["tcp", &format!("127.0.0.2:{other}"), "--key-file", keyfile_arg], &dir);
    assert_check(&got, 0, "");
    assert!(got.1.iter().any(|l| l == &format!("ok   local tcp 127.0.0.2:{other} accepts connections")), "{:?}", got.1);
    let got = check(&env, &["http", "3000", "--key-file", keyfile_arg], &dir);
    assert_check(&got, 65, "the http gateway is not configured on this server (plugin.http.listen)");
    let mut client =
        Proc::spawn_cmd(cmd(CLIENT, &env), &["tcp", &format!("127.0.0.2:{other}"), "--key-file", keyfile_arg], &dir.0);
    let reg = read_registration(&mut client, 1);
    let line = &reg.forwards[0];
    let public: u16 = line
        .strip_prefix(&format!("tcp://{}:", reg.domain))
        .and_then(|r| r.strip_suffix(&format!(" => 127.0.0.2:{other}")))
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    tcp_round_trip(public);
    drop(client);

    let mut client = Proc::spawn_cmd(
        cmd(CLIENT, &env),
        &["tcp", &echo.to_string(), "--key-file", keyfile.to_str().unwrap()],
        &dir.0,
    );
    let reg = read_registration(&mut client, 1);
    assert!(reg.domain.ends_with(".flags.test"), "{}", reg.domain);
    let (public, local) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    assert_eq!(local, echo);
    assert!((10000..=20000).contains(&public), "tcp port {public}: not the documented default range");
    tcp_round_trip(public);
    drop(client);

    // etc/opennotr.env names what the client reads: its variables, with
    // this test's values, make a client that connects.
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/opennotr.env")).unwrap();
    let vars: Vec<(String, String)> = example
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, _) = l.split_once('=').unwrap_or_else(|| panic!("not VAR=value: {l:?}"));
            let v = match k {
                "OPENNOTR_SERVER" => addr.to_string(),
                "OPENNOTR_KEY" => "a-long-random-key-for-this-test".into(),
                other => panic!("etc/opennotr.env sets {other}, which this test does not know"),
            };
            (k.to_string(), v)
        })
        .collect();
    assert_eq!(vars.len(), 2, "{example}");
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut client = Proc::spawn_cmd(cmd(CLIENT, &env), &["tcp", &echo.to_string()], &dir.0);
    let reg = read_registration(&mut client, 1);
    let (public, _) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    tcp_round_trip(public);
    drop(client);
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
}

// ------------------------------------------------------------------ check under a credential

#[test]
fn check_applies_the_credential_rules() {
    let dir = TempDir::new("oneline-cred");
    let (lo, hi) = (free_port(), free_port());
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let conf = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  domain: \"cred.test\"\ndhcp:\n  cidr: \"100.64.242.1/24\"\n\
         plugin:\n  tcp:\n    PortMin: 1024\n    PortMax: 65535\n    bind: \"127.0.0.1\"\n  udp:\n    PortMin: 1024\n    PortMax: 65535\n    bind: \"127.0.0.1\"\n\
         clients:\n  - name: alice\n    key: \"alice's key for the check test\"\n    domains: [\"alice.cred.test\"]\n\
         \x20   ports: [\"{lo}-{hi}\"]\n    protocols: [tcp]\n"
    );
    dir.write("notrd.yaml", conf);
    let (mut server, addr) = start_server(&dir, &[], &["-c", "notrd.yaml"]);
    let echo = tcp_echo();
    let server_arg = addr.to_string();
    // The name from OPENNOTR_NAME, the key from OPENNOTR_KEY.
    let env = [("OPENNOTR_NAME", "alice"), ("OPENNOTR_KEY", "alice's key for the check test")];
    let got = check(&env, &["tcp", &format!("{lo}:{echo}"), "--server", &server_arg], &dir);
    assert_check(&got, 0, "");
    assert!(got.1.iter().any(|l| l == "ok   authenticated as client \"alice\""), "{:?}", got.1);
    let outside = if lo > 1025 { lo - 1 } else { hi + 1 };
    let got = check(&env, &["tcp", &format!("{outside}:{echo}"), "--server", &server_arg], &dir);
    assert_check(&got, 65, "client alice may not use public port");
    let got = check(&env, &["udp", &format!("{lo}:{echo}"), "--server", &server_arg], &dir);
    assert_check(&got, 65, "client alice may not use protocol");
    let got = check(&env, &["tcp", &echo.to_string(), "--domain", "bob.cred.test", "--server", &server_arg], &dir);
    assert_check(&got, 65, "client alice may not claim bob.cred.test");
    let got = check(&env, &["tcp", &echo.to_string(), "--name", "mallory", "--server", &server_arg], &dir);
    assert_check(&got, 77, "authenticated");
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
}
