//! Black-box tests of the `opennotrd` and `opennotr` binaries: flags, config
//! errors and exit codes, the original Go project's files and the commented
//! examples end to end, signals, and a wrong key.
//!
//! Nothing here uses a fixed port: the server listens on `127.0.0.1:0` and
//! the test reads the real address from its JSON log on stderr; public ports
//! come from the client's stdout. Every wait reads child output (or polls a
//! socket) with a deadline; no sleep is used to synchronise.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    http_get, json_fields, parse_forward, read_registration, tcp_echo, udp_echo, Proc, Src, TempDir, CLIENT, SERVER,
    WAIT,
};

// ------------------------------------------------------------------ helpers

/// Runs a binary that is expected to exit on its own.
fn run_to_exit(bin: &str, args: &[&str], cwd: &Path) -> (ExitStatus, Proc) {
    let mut p = Proc::spawn(bin, args, cwd);
    let st = p.wait_exit(WAIT);
    (st, p)
}

/// Replaces `from` (which must occur exactly once) by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected exactly one {from:?} in:\n{text}");
    text.replacen(from, to, 1)
}

fn read_etc(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("etc").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Starts `opennotrd` with the original's `-conf` flag and returns it with
/// the control address it logged.
fn start_server(dir: &TempDir, conf: &Path) -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(SERVER, &["-conf", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0);
    let line = p.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let addr = json_fields(&line, "listening for clients").unwrap()["addr"].as_str().unwrap().parse().unwrap();
    (p, addr)
}

/// Whether `line` is a JSON log line at WARN level whose message holds `what`.
fn warns(line: &str, what: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return false };
    v["level"] == "WARN" && v["fields"]["message"].as_str().is_some_and(|m| m.contains(what))
}

fn start_client(dir: &TempDir, conf: &Path) -> Proc {
    Proc::spawn(CLIENT, &["-conf", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0)
}

/// Sends `len` bytes through 127.0.0.1:`port` and checks the echo.
fn check_tcp_echo(port: u16, len: usize) {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let sent = payload.clone();
    let writer = thread::spawn(move || w.write_all(&sent));
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).unwrap_or_else(|e| panic!("tcp echo through port {port}: {e}"));
    writer.join().unwrap().unwrap();
    assert!(got == payload, "tcp echo through port {port}: payload differs");
    // Closing our side ends the relay; the echo server then closes too.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "unexpected extra bytes after the echo");
}

/// Sends a datagram to 127.0.0.1:`port` until the echo comes back (UDP may
/// drop the first one while the flow is being set up).
fn check_udp_echo(port: u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let payload = b"opennotr udp echo \x00\x01\x02\xff";
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        s.send_to(payload, target).unwrap();
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, target, "echo came from another address");
                assert_eq!(&buf[..n], payload, "udp echo through port {port}: payload differs");
                return;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("udp echo through port {port}: {e}"),
        }
    }
    panic!("no udp echo through port {port} within {WAIT:?}");
}

fn assert_vip(vip: Ipv4Addr) {
    let o = vip.octets();
    assert_eq!(&o[..3], &[100, 64, 242], "vhost {vip} is outside dhcp.cidr 100.64.242.1/24");
    assert!((2..=254).contains(&o[3]), "vhost {vip}: .0, .1 (dhcp.ip) and .255 must not be handed out");
}

/// SIGTERM to the server: the client reports the disconnection, the server
/// exits 0; then SIGINT to the client: it exits 0.
fn shut_down(mut server: Proc, mut client: Proc) {
    let t = Instant::now();
    server.signal("TERM");
    client.expect(Src::Out, "`disconnected:`", |l| l.starts_with("disconnected: "));
    let st = server.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "server after SIGTERM: {st:?}\n{}", server.transcript());
    eprintln!("server stopped {:?} after SIGTERM", t.elapsed());
    assert!(client.child.try_wait().unwrap().is_none(), "client exited when the server went away");
    client.signal("INT");
    let st = client.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "client after SIGINT: {st:?}\n{}", client.transcript());
}

// ------------------------------------------------------------------ 1. flags

#[test]
fn version_and_help() {
    let dir = TempDir::new("flags");
    for (bin, name) in [(SERVER, "opennotrd"), (CLIENT, "opennotr")] {
        for flag in ["--version", "-V", "--help", "-h"] {
            let (st, p) = run_to_exit(bin, &[flag], &dir.0);
            assert_eq!(st.code(), Some(0), "{name} {flag}: {st:?}\n{}", p.transcript());
            let out = p.lines(Src::Out).join("\n");
            assert!(out.contains(name), "{name} {flag} does not print the name:\n{out}");
            if flag.starts_with("--v") || flag == "-V" {
                let expected = format!("{name} {}", env!("CARGO_PKG_VERSION"));
                assert_eq!(out.trim(), expected, "{name} {flag}");
            } else {
                assert!(out.contains(&format!("Usage: {name} [OPTIONS]")), "{name} {flag}: usage line:\n{out}");
                assert!(out.contains("--config"), "{name} {flag} does not document --config:\n{out}");
            }
        }
        // An unknown flag is a usage error (clap: 2), not a start-up.
        let (st, _) = run_to_exit(bin, &["--no-such-flag"], &dir.0);
        assert_eq!(st.code(), Some(2), "{name} --no-such-flag: {st:?}");
    }
}

#[test]
fn completions_need_no_config_file() {
    // An empty working directory: neither default file (notrd.yaml,
    // config.yaml) exists, so a script on stdout proves none was read.
    let dir = TempDir::new("completions");
    for (bin, name) in [(SERVER, "opennotrd"), (CLIENT, "opennotr")] {
        let (st, p) = run_to_exit(bin, &["--completions", "bash"], &dir.0);
        assert_eq!(st.code(), Some(0), "{name} --completions bash: {st:?}\n{}", p.transcript());
        let script = p.lines(Src::Out).join("\n");
        assert!(
            script.contains(&format!("_{name}()")) && script.contains(&format!("complete -F _{name} ")),
            "{name} --completions bash is not a bash completion script for {name}:\n{script}"
        );
        for opt in ["--config", "--log-level", "--log-json", "--completions"] {
            assert!(script.contains(opt), "{name}'s bash completions do not offer {opt}:\n{script}");
        }
        assert_eq!(script.contains("--demo"), bin == SERVER, "{name}: --demo is the server's flag only");
        assert!(p.stderr_text().is_empty(), "{name} --completions bash wrote to stderr:\n{}", p.stderr_text());

        // -h stays short; --help documents the flag.
        let (_, p) = run_to_exit(bin, &["-h"], &dir.0);
        assert!(!p.lines(Src::Out).join("\n").contains("--completions"), "{name} -h lists --completions");
        let (_, p) = run_to_exit(bin, &["--help"], &dir.0);
        assert!(p.lines(Src::Out).join("\n").contains("--completions <SHELL>"), "{name} --help omits --completions");

        // How each shell's script spells the long option --config.
        for (shell, config) in
            [("zsh", "--config=["), ("fish", "-l config"), ("elvish", "cand --config"), ("powershell", "'--config'")]
        {
            let (st, p) = run_to_exit(bin, &["--completions", shell], &dir.0);
            assert_eq!(st.code(), Some(0), "{name} --completions {shell}: {st:?}\n{}", p.transcript());
            let script = p.lines(Src::Out).join("\n");
            assert!(script.contains(name) && script.contains(config), "{name} --completions {shell}:\n{script}");
        }

        // A shell clap_complete does not know: a usage error naming the value
        // and the valid ones, nothing on stdout.
        let (st, p) = run_to_exit(bin, &["--completions", "nosuchshell"], &dir.0);
        assert_eq!(st.code(), Some(2), "{name} --completions nosuchshell: {st:?}\n{}", p.transcript());
        let err = p.stderr_text();
        assert!(
            err.contains("invalid value 'nosuchshell' for '--completions <SHELL>'")
                && err.contains("possible values: bash, elvish, fish, powershell, zsh"),
            "{name} --completions nosuchshell: unclear error:\n{err}"
        );
        assert!(p.lines(Src::Out).is_empty(), "{name}: unexpected stdout: {:?}", p.lines(Src::Out));

        // Not combinable: other flags would be silently ignored otherwise.
        let (st, _) = run_to_exit(bin, &["--completions", "bash", "--config", "x.yaml"], &dir.0);
        assert_eq!(st.code(), Some(2), "{name} --completions with --config: {st:?}");
    }
    let (st, _) = run_to_exit(SERVER, &["--completions", "bash", "--demo"], &dir.0);
    assert_eq!(st.code(), Some(2), "opennotrd --completions with --demo: {st:?}");
}

#[test]
fn plain_log_to_a_pipe_has_no_colour_codes() {
    // Logs go to files, journald or `docker logs` through a pipe: no ANSI
    // escapes there unless stderr is a terminal.
    let dir = TempDir::new("plainlog");
    let conf = dir.write("opennotrd.yaml", example_server_yaml());
    let mut cmd = Command::new(SERVER);
    cmd.env_remove("NO_COLOR");
    let mut server = Proc::spawn_cmd(cmd, &["--config", conf.to_str().unwrap()], &dir.0);
    let line = server.expect(Src::Err, "`listening for clients`", |l| l.contains("listening for clients"));
    assert!(!line.contains('\x1b'), "colour codes in a piped log line: {line:?}");
    assert!(line.contains(" INFO ") && line.contains("addr=127.0.0.1:"), "log line: {line:?}");
}

// ------------------------------------------------------------------ 2. bad configs

const GOOD_SERVER: &str = r#"server:
  listen: "LISTEN"
  authKey: "k"
  domain: "open.notr.test"
dhcp:
  cidr: "100.64.242.1/24"
"#;

/// Runs the server on `yaml` whose `LISTEN` is replaced by the address of a
/// port the test holds: if the server tried to bind before reporting the
/// config error, it would fail with a bind error (exit 1) instead.
fn server_config_error(yaml: &str, key: &str) {
    let dir = TempDir::new("badsrv");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = yaml.replace("LISTEN", &held.local_addr().unwrap().to_string());
    let conf = dir.write("notrd.yaml", &yaml);
    let (st, p) = run_to_exit(SERVER, &["-conf", conf.to_str().unwrap()], &dir.0);
    let err = p.stderr_text();
    assert_eq!(st.code(), Some(64), "config:\n{yaml}\nstatus {st:?}, stderr:\n{err}");
    assert!(err.contains(&format!("{key}:")), "stderr does not name `{key}`:\n{err}");
    assert!(!err.contains("listening for clients"), "server started:\n{err}");
    assert!(!err.contains("cannot listen"), "server tried to bind before the config check:\n{err}");
    assert!(p.lines(Src::Out).is_empty(), "unexpected stdout: {:?}", p.lines(Src::Out));
}

#[test]
fn server_bad_configs_exit_64_naming_the_key() {
    // The baseline is valid (held port aside): it must fail with a bind
    // error, exit 1, which proves the 64s below are not bind failures.
    {
        let dir = TempDir::new("busy");
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let conf = dir.write("notrd.yaml", GOOD_SERVER.replace("LISTEN", &held.local_addr().unwrap().to_string()));
        let (st, p) = run_to_exit(SERVER, &["--config", conf.to_str().unwrap()], &dir.0);
        assert_eq!(st.code(), Some(1), "busy port: {st:?}\n{}", p.transcript());
        assert!(p.stderr_text().contains("cannot listen"), "{}", p.transcript());
    }
    server_config_error(&GOOD_SERVER.replace("listen:", "listne:"), "server.listne");
    let with_cidr = |c: &str| GOOD_SERVER.replace("100.64.242.1/24", c);
    server_config_error(&with_cidr("100.64.242.1/31"), "dhcp.cidr");
    server_config_error(&with_cidr("not-a-cidr"), "dhcp.cidr");
    server_config_error(&with_cidr("fd00::1/64"), "dhcp.cidr");
    // Validated by the plugin after loading, still before binding.
    server_config_error(&format!("{GOOD_SERVER}plugin:\n  tcp: '{{\"PortMin\": 0}}'\n"), "plugin.tcp.PortMin");
    server_config_error(
        &format!("{GOOD_SERVER}plugin:\n  udp: |\n    {{\"PortMin\": 300, \"PortMax\": 200}}\n"),
        "plugin.udp.PortMax",
    );
    server_config_error(&format!("{GOOD_SERVER}plugin:\n  tcp: '{{\"PortMin\": 1'\n"), "plugin.tcp");
    server_config_error(&format!("{GOOD_SERVER}plugin:\n  tcp: '{{\"PortMn\": 1}}'\n"), "plugin.tcp");
    server_config_error(&format!("{GOOD_SERVER}plugin:\n  udp:\n    sessionTimeout: 0\n"), "plugin.udp.sessionTimeout");
    server_config_error(&format!("{GOOD_SERVER}plugin:\n  foo: '{{}}'\n"), "plugin.foo");
    // dhcp.ip outside the pool, a bad limit, a missing authKey.
    server_config_error(&format!("{GOOD_SERVER}  ip: \"10.0.0.1\"\n"), "dhcp.ip");
    server_config_error(&format!("{GOOD_SERVER}limits:\n  maxClients: 0\n"), "limits.maxClients");
    server_config_error(&GOOD_SERVER.replace("  authKey: \"k\"\n", ""), "server.authKey");
}

/// Runs the client on `yaml` whose `SERVER` is the address of a listener
/// the test holds, and checks nothing connected to it.
fn client_config_error(yaml: &str, key: &str) {
    let dir = TempDir::new("badcli");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = yaml.replace("SERVER", &held.local_addr().unwrap().to_string());
    let conf = dir.write("config.yaml", &yaml);
    let (st, p) = run_to_exit(CLIENT, &["-conf", conf.to_str().unwrap()], &dir.0);
    let err = p.stderr_text();
    assert_eq!(st.code(), Some(64), "config:\n{yaml}\nstatus {st:?}, stderr:\n{err}");
    assert!(err.contains(&format!(": {key}:")), "stderr does not name `{key}`:\n{err}");
    assert!(p.lines(Src::Out).is_empty(), "unexpected stdout: {:?}", p.lines(Src::Out));
    held.set_nonblocking(true).unwrap();
    assert!(held.accept().is_err(), "the client connected despite the config error");
}

#[test]
fn client_bad_configs_exit_64_naming_the_key() {
    let good = "serverAddr: \"SERVER\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 2222\n";
    client_config_error(&good.replace("key: \"k\"\n", ""), "key");
    client_config_error(&good.replace("0: 2222", "0: 0"), "forwards[0].ports");
    client_config_error(&good.replace("0: 2222", "70000: 22"), "forwards[0].ports");
    client_config_error(&good.replace("0: 2222", "2222: 22\n      \"2222\": 23"), "forwards[0].ports");
    client_config_error(&good.replace("key:", "kye:"), "kye");
    client_config_error(&good.replace("protocol: tcp", "protocol: \"TCP!\""), "forwards[0].protocol");
}

#[test]
fn missing_config_file_fails() {
    let dir = TempDir::new("missing");
    let missing = dir.0.join("no-such-file.yaml");
    for (bin, name) in [(SERVER, "opennotrd"), (CLIENT, "opennotr")] {
        let (st, p) = run_to_exit(bin, &["-conf", missing.to_str().unwrap()], &dir.0);
        assert!(!st.success(), "{name} with a missing file: {st:?}");
        let err = p.stderr_text();
        assert!(err.contains("no-such-file.yaml"), "{name}: stderr does not name the file:\n{err}");
        assert!(!err.contains("listening for clients"), "{name} started:\n{err}");
        // Without any flag: the default file (notrd.yaml / config.yaml) in
        // an empty working directory.
        let (st, p) = run_to_exit(bin, &[], &dir.0);
        assert!(!st.success(), "{name} without its default file: {st:?}");
        let default = if bin == SERVER { "notrd.yaml" } else { "config.yaml" };
        assert!(p.stderr_text().contains(default), "{name}: {}", p.stderr_text());
    }
}

// ------------------------------------------------------------------ 3. original files

#[test]
fn original_files_end_to_end() {
    let dir = TempDir::new("orig");
    // Server: the original notrd.yaml, listen on a free loopback port and
    // public listeners on loopback; PortMin/PortMax stay.
    let mut s = replace_once(&read_etc("notrd.yaml"), r#"listen: ":10100""#, r#"listen: "127.0.0.1:0""#);
    s = replace_once(&s, r#""PortMax": 20000"#, r#""PortMax": 20000, "bind": "127.0.0.1""#);
    s = replace_once(&s, r#""PortMax": 30000"#, r#""PortMax": 30000, "bind": "127.0.0.1""#);
    let (server, addr) = start_server(&dir, &dir.write("notrd.yaml", &s));
    // Its sample key still loads, with a warning that names the key's field
    // and never shows the key.
    assert!(
        server.lines(Src::Err).iter().any(|l| warns(l, "server.authKey is weak (a sample key")),
        "no warning about the sample authKey:\n{}",
        server.transcript()
    );
    assert!(!server.transcript().contains("client server exchange key"), "{}", server.transcript());
    // `http`, `https` and `h2c` are built in; the original file configures
    // them for the external OpenResty gateway (adminUrl
    // http://127.0.0.1:81/upstreams) without the adminSecret the gateway
    // now needs: the server starts, and their forwards are refused below
    // naming the key.

    // Client: the original config.yaml, pointed at the server and at the
    // test's echo servers, public ports chosen by the server.
    let (tcp_local, udp_local) = (tcp_echo(), udp_echo());
    let mut c = replace_once(&read_etc("config.yaml"), "demo.notr.tech:10100", &addr.to_string());
    c = replace_once(&c, "2222: 2222", &format!("0: {tcp_local}"));
    c = replace_once(&c, "53: 53", &format!("0: {udp_local}"));
    let mut client = start_client(&dir, &dir.write("config.yaml", &c));

    let reg = read_registration(&mut client, 5);
    assert_vip(reg.vip);
    assert_eq!(reg.domain, "cloud.dahuizong.com");
    let (tcp_pub, local) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    assert_eq!(local, tcp_local);
    assert!((10000..=20000).contains(&tcp_pub), "tcp public port {tcp_pub} outside 10000-20000");
    let (udp_pub, local) = parse_forward(&reg.forwards[1], "udp", &reg.domain);
    assert_eq!(local, udp_local);
    assert!((20000..=30000).contains(&udp_pub), "udp public port {udp_pub} outside 20000-30000");
    for (line, (proto, local)) in reg.forwards[2..].iter().zip([("http", 8080), ("https", 8081), ("h2c", 50052)]) {
        let prefix = format!("{proto}://cloud.dahuizong.com:0 => 127.0.0.1:{local} refused: ");
        assert!(line.starts_with(&prefix), "expected {prefix:?}..., got {line:?}");
        assert!(line.contains("external gateway"), "refusal without the gateway's reason: {line:?}");
        assert!(line.contains(&format!("plugin.{proto}.adminSecret")), "refusal without the key: {line:?}");
    }

    check_tcp_echo(tcp_pub, 200_000);
    check_tcp_echo(tcp_pub, 5);
    check_udp_echo(udp_pub);

    // 5. Signals.
    shut_down(server, client);
}

// ------------------------------------------------------------------ 4. commented examples

/// The commented example server file, on loopback.
fn example_server_yaml() -> String {
    let mut s = replace_once(&read_etc("opennotrd.yaml"), r#"listen: ":10100""#, r#"listen: "127.0.0.1:0""#);
    s = replace_once(&s, r#"listen: "127.0.0.1:5353""#, r#"listen: "127.0.0.1:0""#);
    s = replace_once(&s, r#""bind": "0.0.0.0""#, r#""bind": "127.0.0.1""#);
    replace_once(&s, r#"bind: "0.0.0.0""#, r#"bind: "127.0.0.1""#)
}

/// The commented examples running together: the server (on `server_yaml`),
/// the client with its forwards pointed at the test's echo servers, and the
/// public ports it printed (after checking its registration block).
struct ExamplePair {
    server: Proc,
    client: Proc,
    tcp_pub: u16,
    udp_pub: u16,
}

fn example_pair(dir: &TempDir, server_yaml: &str) -> ExamplePair {
    example_pair_with(dir, server_yaml, |c| c)
}

/// [`example_pair`] with the client file changed by `edit` first.
fn example_pair_with(dir: &TempDir, server_yaml: &str, edit: impl FnOnce(String) -> String) -> ExamplePair {
    let (server, addr) = start_server(dir, &dir.write("opennotrd.yaml", server_yaml));

    let (tcp_local, udp_local) = (tcp_echo(), udp_echo());
    let mut c = replace_once(&edit(read_etc("opennotr.yaml")), "127.0.0.1:10100", &addr.to_string());
    c = replace_once(&c, "0: 8080", &format!("0: {tcp_local}"));
    c = replace_once(&c, "0: 5353", &format!("0: {udp_local}"));
    let mut client = start_client(dir, &dir.write("opennotr.yaml", &c));

    let reg = read_registration(&mut client, 2);
    assert_vip(reg.vip);
    // No domain in the client file: <random>.open.notr.test.
    let label = reg.domain.strip_suffix(".open.notr.test").unwrap_or_else(|| panic!("domain {:?}", reg.domain));
    assert!(
        !label.is_empty()
            && !label.contains('.')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "random label {label:?}"
    );
    let (tcp_pub, local) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    assert_eq!(local, tcp_local);
    assert!((10000..=20000).contains(&tcp_pub), "tcp public port {tcp_pub} outside 10000-20000");
    let (udp_pub, local) = parse_forward(&reg.forwards[1], "udp", &reg.domain);
    assert_eq!(local, udp_local);
    assert!((20000..=30000).contains(&udp_pub), "udp public port {udp_pub} outside 20000-30000");
    ExamplePair { server, client, tcp_pub, udp_pub }
}

#[test]
fn commented_examples_end_to_end() {
    let dir = TempDir::new("examples");
    let pair = example_pair(&dir, &example_server_yaml());
    check_tcp_echo(pair.tcp_pub, 100_000);
    check_udp_echo(pair.udp_pub);
    check_tcp_echo(pair.tcp_pub, 1);
    shut_down(pair.server, pair.client);
}

/// The same examples with QUIC turned on at both ends: the client reaches
/// the server's control port on UDP, and says which transport it uses.
#[test]
fn commented_examples_over_quic() {
    let dir = TempDir::new("examples-quic");
    let server_yaml = replace_once(&example_server_yaml(), "quic: false", "quic: true");
    let mut pair = example_pair_with(&dir, &server_yaml, |c| replace_once(&c, "transport: tcp", "transport: quic"));
    // Logged before the registration, on the other pipe: already read, or next.
    if !pair.client.transcript().contains("quic") {
        pair.client.expect(Src::Err, "naming the client's transport", |l| l.contains("quic"));
    }
    check_tcp_echo(pair.tcp_pub, 100_000);
    check_udp_echo(pair.udp_pub);
    shut_down(pair.server, pair.client);
}

// ------------------------------------------------------------------ 5. signals

#[test]
fn signal_right_after_listening_exits_0() {
    // The listening line is the first moment a supervisor (or this test)
    // knows the server is up; a SIGTERM/SIGINT from then on must be a clean
    // shutdown, not death by the signal's default action. Repeated because
    // a race between the log line and installing the handlers shows up
    // only part of the time.
    let dir = TempDir::new("signals");
    let conf = dir.write("opennotrd.yaml", example_server_yaml());
    for i in 0..40 {
        let sig = if i % 2 == 0 { "TERM" } else { "INT" };
        let (mut server, _) = start_server(&dir, &conf);
        server.signal(sig);
        let st = server.wait_exit(WAIT);
        assert_eq!(st.code(), Some(0), "round {i}: server after SIG{sig} right after its listening line: {st:?}");
    }
}

/// The hard limit on open files of this process, which children inherit.
fn hard_nofile() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

#[test]
fn the_server_raises_its_open_file_limit_and_says_so() {
    // A relay holds descriptors per proxied connection: under the usual
    // soft limit of 1024 it would run out at a few hundred visitors.
    let Some(hard) = hard_nofile().filter(|&h| h > 256) else {
        return eprintln!("skipped: the hard open-file limit is not above 256 here");
    };
    let dir = TempDir::new("nofile");
    let conf = dir.write("opennotrd.yaml", example_server_yaml());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\"", SERVER]);
    cmd.args(["-conf", conf.to_str().unwrap(), "--log-level", "info", "--log-json"]);
    let mut server = Proc::spawn_named("opennotrd", cmd, &dir.0);
    let line = server
        .expect(Src::Err, "the open-file limit raised", |l| json_fields(l, "raised the open-file limit").is_some());
    let fields = json_fields(&line, "raised the open-file limit").unwrap();
    assert_eq!(fields["from"], 256);
    assert_eq!(fields["to"], hard.min(1 << 20));
    server.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn client_without_server_retries_and_stops_on_sigterm() {
    let dir = TempDir::new("noserver");
    // Nothing listens on this port once the listener is dropped.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let conf = dir.write("c.yaml", format!("serverAddr: \"{dead}\"\nkey: \"k\"\n"));
    // The original's `-conf=FILE` spelling.
    let mut client = Proc::spawn(CLIENT, &[&format!("-conf={}", conf.display()), "--log-json"], &dir.0);
    client.expect(Src::Out, "`disconnected:`", |l| l.starts_with("disconnected: "));
    client.expect(Src::Out, "a second `disconnected:`", |l| l.starts_with("disconnected: "));
    client.signal("TERM");
    let st = client.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "client after SIGTERM: {st:?}");
}

/// The `workers` keys of the commented examples, uncommented, set how many
/// threads each program runs (as the runtime itself counts them).
#[test]
fn workers_keys_set_the_runtime_threads() {
    let workers = |p: &Proc| {
        let line = p.lines(Src::Err).into_iter().find_map(|l| json_fields(&l, "runtime started"));
        line.unwrap_or_else(|| panic!("no `runtime started` line:\n{}", p.transcript()))["workers"].as_u64()
    };
    let dir = TempDir::new("workers");
    let yaml = replace_once(&example_server_yaml(), "# workers: 2", "workers: 3");
    let (server, addr) = start_server(&dir, &dir.write("opennotrd.yaml", yaml));
    assert_eq!(workers(&server), Some(3));

    let c = replace_once(&read_etc("opennotr.yaml"), "127.0.0.1:10100", &addr.to_string());
    let mut client = start_client(&dir, &dir.write("opennotr.yaml", replace_once(&c, "# workers: 1", "workers: 1")));
    read_registration(&mut client, 2);
    assert_eq!(workers(&client), Some(1));
    shut_down(server, client);
}

/// One byte through an open connection to the tcp echo.
fn round_trip(s: &mut TcpStream, b: u8) {
    s.write_all(&[b]).unwrap();
    let mut got = [0u8];
    s.read_exact(&mut got).unwrap_or_else(|e| panic!("round trip of {b}: {e}"));
    assert_eq!(got[0], b);
}

const DRAINING: &str = "shutting down: refusing new clients, draining open connections";

#[test]
fn open_connection_is_drained_and_second_signal_exits_130() {
    let dir = TempDir::new("drain130");
    let yaml = replace_once(&example_server_yaml(), "shutdownGrace: 10", "shutdownGrace: 60");
    let mut pair = example_pair(&dir, &yaml);
    let mut visitor = TcpStream::connect(("127.0.0.1", pair.tcp_pub)).unwrap();
    visitor.set_read_timeout(Some(WAIT)).unwrap();
    round_trip(&mut visitor, 1);

    let t = Instant::now();
    pair.server.signal("TERM");
    pair.server.expect(Src::Err, "draining", |l| json_fields(l, DRAINING).is_some());
    // The open connection keeps working during the grace period.
    round_trip(&mut visitor, 2);
    pair.server.signal("TERM");
    let st = pair.server.wait_exit(WAIT);
    assert_eq!(st.code(), Some(130), "server after a second SIGTERM: {st:?}");
    assert!(t.elapsed() < Duration::from_secs(50), "the second signal waited for the grace period");
}

#[test]
fn grace_period_over_closes_open_connections_and_exits_0() {
    let dir = TempDir::new("grace");
    let yaml = replace_once(&example_server_yaml(), "shutdownGrace: 10", "shutdownGrace: 0.5");
    let mut pair = example_pair(&dir, &yaml);
    let mut visitor = TcpStream::connect(("127.0.0.1", pair.tcp_pub)).unwrap();
    visitor.set_read_timeout(Some(WAIT)).unwrap();
    round_trip(&mut visitor, 1);

    pair.server.signal("TERM");
    pair.server.expect(Src::Err, "`grace period over`", |l| {
        json_fields(l, "grace period over; closing the connections still open").is_some()
    });
    let st = pair.server.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "server after the grace period: {st:?}");
    // The visitor's connection was cut: EOF or reset, not a hang.
    let mut buf = [0u8; 16];
    match visitor.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} unexpected bytes after the server stopped"),
        Err(e) => assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "visitor connection still open after the server stopped"
        ),
    }
    pair.client.expect(Src::Out, "`disconnected:`", |l| l.starts_with("disconnected: "));
    pair.client.signal("INT");
    assert_eq!(pair.client.wait_exit(WAIT).code(), Some(0));
}

// ------------------------------------------------------------------ 6. wrong key

#[test]
fn wrong_key_is_reported_and_retried() {
    let dir = TempDir::new("badkey");
    let (mut server, addr) = start_server(&dir, &dir.write("opennotrd.yaml", example_server_yaml()));
    let conf = dir.write("c.yaml", format!("serverAddr: \"{addr}\"\nkey: \"not the server's key\"\n"));
    let mut client = start_client(&dir, &conf);
    let about_key = |l: &str| {
        let l = l.to_ascii_lowercase();
        l.starts_with("disconnected: ") && (l.contains("key") || l.contains("authenticat"))
    };
    // Two failed attempts: it keeps retrying rather than exiting.
    let first = client.expect(Src::Out, "`disconnected:` about the key", about_key);
    client.expect(Src::Out, "a second `disconnected:` about the key", about_key);
    assert!(client.child.try_wait().unwrap().is_none(), "client exited after a wrong key");
    assert!(!client.lines(Src::Out).iter().any(|l| l == "connect success"), "connected with a wrong key");
    // The key itself is never printed, by either side.
    assert!(!first.contains("not the server's key"));
    assert!(!client.transcript().contains("not the server's key"), "client leaks its key");
    assert!(!server.transcript().contains("change-this-shared-key"), "server leaks its key");
    assert!(server.child.try_wait().unwrap().is_none(), "server exited");

    client.signal("INT");
    assert_eq!(client.wait_exit(WAIT).code(), Some(0));
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0));
}

// ------------------------------------------------------------------ reload

/// SIGHUP re-reads the file: a broken one is refused and changes nothing;
/// a changed key closes that client's session and refuses its reconnect,
/// while the server keeps running.
#[test]
fn sighup_reloads_and_a_broken_file_keeps_the_old_config() {
    let dir = TempDir::new("sighup");
    let with_key = |key: &str| {
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  domain: \"open.notr.test\"\n\
             dhcp:\n  cidr: \"100.64.242.1/24\"\n\
             clients:\n  - name: alice\n    key: \"{key}\"\n"
        )
    };
    let conf = dir.write("notrd.yaml", with_key("first key"));
    let (mut server, addr) = start_server(&dir, &conf);
    let short = |l: &str| warns(l, "the key of client \"alice\" is weak (shorter than 16 characters)");
    assert!(server.lines(Src::Err).iter().any(|l| short(l)), "no warning about alice's key:\n{}", server.transcript());
    let client_conf = dir.write(
        "config.yaml",
        format!("serverAddr: \"{addr}\"\nname: alice\nkey: \"first key\"\nreconnectMaxDelay: 1\n"),
    );
    let mut client = start_client(&dir, &client_conf);
    let reg = read_registration(&mut client, 0);
    assert_eq!(reg.domain, "alice.open.notr.test");

    dir.write("notrd.yaml", "server: [this is not a config");
    server.signal("HUP");
    server.expect(Src::Err, "`reload refused`", |l| l.contains("reload refused"));
    assert!(server.child.try_wait().unwrap().is_none(), "server exited on SIGHUP\n{}", server.transcript());

    dir.write("notrd.yaml", with_key("second key"));
    server.signal("HUP");
    // The new key is short too: the reload warns about it.
    let warned = server.expect(Src::Err, "a warning about alice's new key", short);
    assert!(!warned.contains("second key"), "{warned}");
    server.expect(Src::Err, "`configuration reloaded`", |l| l.contains("configuration reloaded"));
    client.expect(Src::Out, "`disconnected: server going away`", |l| l.starts_with("disconnected: server going away"));
    client.expect(Src::Out, "`authentication failed`", |l| l.contains("authentication failed"));
    assert!(server.child.try_wait().unwrap().is_none(), "server exited\n{}", server.transcript());
    shut_down(server, client);
}

// -------------------------------------------------------------------- demo

/// The README's first command: `opennotrd --demo` prints what to try, and
/// each of those works: the sample service through its public port, the
/// admin API with the printed token.
#[test]
fn demo_prints_what_to_try_and_it_works() {
    let dir = TempDir::new("demo");
    let mut demo = Proc::spawn(SERVER, &["--demo"], &dir.0);
    let reg = read_registration(&mut demo, 2);
    let curl = demo.expect(Src::Out, "`try:  curl`", |l| l.starts_with("try:  curl http://"));
    let url = curl.trim_start_matches("try:  curl http://").trim_end_matches('/');
    let answer = http_get(url.parse().unwrap(), "x", "/", "");
    assert!(answer.contains("hello from a service behind opennotr"), "{answer}");

    let open = demo.expect(Src::Out, "`open: http://`", |l| l.starts_with("open: http://"));
    let (addr, token) = open.trim_start_matches("open: http://").split_once("/#token=").unwrap();
    let token = token.split_whitespace().next().unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let sessions = http_get(addr, "x", "/api/v1/sessions", &format!("Authorization: Bearer {token}\r\n"));
    assert!(sessions.starts_with("HTTP/1.1 200"), "{sessions}");
    assert!(sessions.contains(&reg.domain), "{sessions}");
    assert!(http_get(addr, "x", "/api/v1/sessions", "").starts_with("HTTP/1.1 401"));
    demo.expect(Src::Out, "`Ctrl-C stops the demo.`", |l| l == "Ctrl-C stops the demo.");
    demo.signal("INT");
    let st = demo.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "demo after SIGINT: {st:?}\n{}", demo.transcript());
}
