//! Root-only integration tests of the virtual LAN, in network namespaces.
//!
//! Each test builds its own "server host" namespace and one or two "client
//! host" namespaces joined by veth pairs, runs `opennotrd` in the server
//! namespace (with `server.tcplisten`/`udplisten`, so it installs its
//! nftables table and policy route there), `opennotr` and small Python
//! services in the client namespaces, and probes `VIP:port` from the server
//! namespace with curl and Python. Nothing touches the host's own network
//! namespace; fixed ports are used only inside the private namespaces.
//!
//! Not root: every test prints `skipped: needs root` and passes. Root
//! without `nft` (or `ip`, `curl`, `python3`): the test fails and says what
//! to install.
//!
//! Every wait reads child output or polls a condition with a deadline; no
//! sleep is used to synchronise.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::netns::{
    check, cmd, http_server, in_ns, on_path, poll_every, python, root_with, run_bounded, udp_echo, udp_echo_probe, Lan,
    Out,
};
use support::{json_fields, parse_forward, read_registration, Proc, Registration, Src, TempDir, CLIENT, SERVER, WAIT};

/// The priority of opennotrd's `ip rule` and the number of its routing table.
const ROUTE_TABLE: &str = "20047";

/// The VIP pool of every test's server.
const CIDR: &str = "100.64.242.1/24";

/// Ports inside the private namespaces.
const CONTROL_PORT: u16 = 10100;
const TPROXY_TCP: u16 = 4398;
const TPROXY_UDP: u16 = 4399;

// ------------------------------------------------------------------ preflight

/// False (after printing why) when the test must be skipped; panics when a
/// tool the test needs is missing on a root machine.
fn preflight() -> bool {
    root_with(&["nft", "ip", "ss", "curl", "python3"])
}

macro_rules! root_only {
    () => {
        if !preflight() {
            return;
        }
    };
}

/// Polls `cond` every 50 ms until it holds, for at most `timeout`.
fn poll(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(Duration::from_millis(50), timeout, cond)
}

// ------------------------------------------------------------------ opennotrd / opennotr

/// The server file of these tests: control listener on `listen`, the
/// virtual LAN on (unless the process lacks the capability), public ports
/// of the tcp and udp plugins on the server namespace's loopback.
fn server_yaml(listen: &str) -> String {
    format!(
        r#"server:
  listen: "{listen}"
  authKey: "k"
  domain: "vlan.notr.test"
  tcplisten: "127.0.0.1:{TPROXY_TCP}"
  udplisten: "127.0.0.1:{TPROXY_UDP}"
  shutdownGrace: 0.5
dhcp:
  cidr: "{CIDR}"
plugin:
  tcp: '{{"bind": "127.0.0.1", "PortMin": 20000, "PortMax": 20100}}'
  udp: '{{"bind": "127.0.0.1", "PortMin": 20000, "PortMax": 20100}}'
"#
    )
}

/// Starts `opennotrd` in `ns` (through `prefix`, e.g. setpriv, if given)
/// and waits for its `listening for clients` line.
fn start_server_with(ns: &str, dir: &TempDir, conf: &Path, prefix: &[&str], bin: &str) -> Proc {
    let mut args: Vec<&str> = prefix.to_vec();
    args.extend([bin, "-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"]);
    let mut p = Proc::spawn_named("opennotrd", in_ns(ns, args[0], &args[1..]), &dir.0);
    p.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    p
}

fn start_server(ns: &str, dir: &TempDir, yaml: &str) -> Proc {
    let conf = dir.write("opennotrd.yaml", yaml);
    let p = start_server_with(ns, dir, &conf, &[], SERVER);
    assert!(
        p.seen.iter().any(|(_, l)| l.contains("virtual LAN on")),
        "opennotrd did not turn the virtual LAN on:\n{}",
        p.transcript()
    );
    p
}

/// Starts `opennotr` in `ns` and reads its registration block:
/// `connect success`, `vhost: `, `domain: ` and one line per forward.
fn start_client(ns: &str, dir: &TempDir, name: &str, yaml: &str, n_forwards: usize) -> (Proc, Registration) {
    let conf = dir.write(name, yaml);
    let mut c = Proc::spawn_named(
        "opennotr",
        in_ns(ns, CLIENT, &["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"]),
        &dir.0,
    );
    let reg = read_registration(&mut c, n_forwards);
    let o = reg.vip.octets();
    assert!(o[..3] == [100, 64, 242] && (2..=254).contains(&o[3]), "VIP {} outside the pool {CIDR}", reg.vip);
    (c, reg)
}

/// SIGTERM: opennotrd exits 0 (after `shutdownGrace: 0.5`).
fn stop_server(mut server: Proc) {
    server.signal("TERM");
    let st = server.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "opennotrd after SIGTERM: {st:?}\n{}", server.transcript());
}

// ------------------------------------------------------------------ services (client namespaces)

// ------------------------------------------------------------------ probes (server namespace)

/// `curl URL` in `ns` with `-m max_secs`; body to `out` (or stdout), then
/// a newline and the HTTP status on stdout.
fn curl(ns: &str, url: &str, out: Option<&Path>, max_secs: u32) -> Out {
    let m = max_secs.to_string();
    let mut args = vec!["-sS", "-m", &m, "-w", "\n%{http_code}"];
    let o;
    if let Some(p) = out {
        o = p.to_str().unwrap().to_string();
        args.extend(["-o", &o]);
    }
    args.push(url);
    run_bounded(in_ns(ns, "curl", &args), Duration::from_secs(max_secs as u64) + WAIT)
}

/// The body at `url`, which must answer 200.
fn curl_body(ns: &str, url: &str) -> String {
    let out = curl(ns, url, None, 5);
    assert_eq!(out.code, Some(0), "curl {url} in {ns}: {}", out.show());
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "curl {url}: {}", out.show());
    body.to_string()
}

/// `url` is refused at once: curl exit 7 (cannot connect), not 28 (timeout).
fn curl_refused(ns: &str, url: &str) {
    let t = Instant::now();
    let out = curl(ns, url, None, 5);
    assert_eq!(out.code, Some(7), "curl {url} in {ns} should be refused (7), took {:?}: {}", t.elapsed(), out.show());
}

const UDP_REFUSED: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"probe 1")
    s.send(b"probe 2")
    print("REPLY %r" % s.recv(100))
except socket.timeout:
    print("silent")
except OSError as e:
    print("error %s" % e)
"#;

/// A datagram to `ip:port` from `ns` gets an error or no answer (timing is
/// not asserted).
fn udp_not_answered(ns: &str, ip: Ipv4Addr, port: u16) {
    let out = run_bounded(in_ns(ns, python(), &["-c", UDP_REFUSED, &ip.to_string(), &port.to_string()]), WAIT);
    assert_eq!(out.code, Some(0), "{}", out.show());
    let verdict = out.stdout.trim();
    assert!(verdict == "silent" || verdict.starts_with("error "), "udp {ip}:{port} answered: {}", out.show());
    eprintln!("udp {ip}:{port}: {verdict}");
}

// ------------------------------------------------------------------ rules

/// (tables `ip opennotr`, `ip rule` lines of priority 20047, routes in
/// table 20047) in `ns`.
fn vlan_state(ns: &str) -> (usize, usize, usize) {
    let tables = check(in_ns(ns, "nft", &["list", "tables"]));
    let tables = tables.lines().filter(|l| l.trim() == "table ip opennotr").count();
    let rules = check(cmd("ip", &["-n", ns, "rule", "show"]));
    let rules = rules.lines().filter(|l| l.starts_with(&format!("{ROUTE_TABLE}:"))).count();
    // `ip route show table N` fails when the table does not exist.
    let routes = run_bounded(cmd("ip", &["-n", ns, "route", "show", "table", ROUTE_TABLE]), WAIT);
    let routes =
        if routes.code == Some(0) { routes.stdout.lines().filter(|l| !l.trim().is_empty()).count() } else { 0 };
    (tables, rules, routes)
}

/// Polls until `ns` has no trace of the virtual LAN.
fn assert_rules_gone(ns: &str, when: &str) {
    let mut last = (0, 0, 0);
    let gone = poll(Duration::from_secs(10), || {
        last = vlan_state(ns);
        last == (0, 0, 0)
    });
    assert!(gone, "{when}: (tables, rules, routes) still {last:?} after 10 s");
}

/// The elements of the `exported` set, as printed by nft.
fn exported(ns: &str) -> String {
    let s = check(in_ns(ns, "nft", &["list", "set", "ip", "opennotr", "exported"]));
    match s.split_once("elements = {") {
        Some((_, rest)) => rest.split('}').next().unwrap().split_whitespace().collect::<Vec<_>>().join(" "),
        None => String::new(),
    }
}

/// Local addresses of the listening TCP (`-t`) or bound UDP (`-u`) sockets
/// of `ns`, as (address, port).
fn bound(ns: &str, flag: &str) -> BTreeSet<(String, u16)> {
    let out = check(in_ns(ns, "ss", &["-Hn", "-l", flag]));
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.rsplit_once(':').and_then(|(ip, p)| Some((ip.to_string(), p.parse().ok()?))))
        .collect()
}

// ------------------------------------------------------------------ 1. TCP

#[test]
fn curl_reaches_the_client_service_at_its_vip() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("a", 1, 1);
    let dir = TempDir::world_readable("curl");
    dir.write("www/index.html", "hello from the client host\n");
    let mut big = Vec::with_capacity(20 << 20);
    std::fs::File::open("/dev/urandom").unwrap().take(20 << 20).read_to_end(&mut big).unwrap();
    let big_path = dir.write("www/big.bin", &big);
    drop(big);

    let _web = http_server(&lan.clients[0], &dir.path("www"), 8000);
    let server = start_server(&lan.server, &dir, &server_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0))));
    let client_yaml = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\n",
        lan.server_ip(0)
    );
    let (_client, reg) = start_client(&lan.clients[0], &dir, "opennotr.yaml", &client_yaml, 1);
    let (_, local) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    assert_eq!(local, 8000);
    assert_eq!(exported(&lan.server), format!("{} . tcp . 8000", reg.vip));

    let body = curl_body(&lan.server, &format!("http://{}:8000/", reg.vip));
    assert_eq!(body, "hello from the client host\n");

    // 20 MB through the VIP, checked with sha256.
    let got = dir.path("got.bin");
    let t_big = Instant::now();
    let out = curl(&lan.server, &format!("http://{}:8000/big.bin", reg.vip), Some(&got), 60);
    assert_eq!(out.code, Some(0), "curl big.bin: {}", out.show());
    assert!(out.stdout.ends_with("200"), "curl big.bin: {}", out.show());
    let elapsed = t_big.elapsed();
    let sums = check(cmd("sha256sum", &[big_path.to_str().unwrap(), got.to_str().unwrap()]));
    let sums: Vec<&str> = sums.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(sums.len(), 2);
    assert_eq!(sums[0], sums[1], "sha256 of the file fetched via the VIP differs");
    assert_eq!(std::fs::metadata(&got).unwrap().len(), 20 << 20);
    eprintln!("20 MiB via the VIP in {elapsed:?}; sha256 {}", sums[0]);

    stop_server(server);
    assert_rules_gone(&lan.server, "after SIGTERM");
    eprintln!("test took {:?}", t.elapsed());
}

// ------------------------------------------------------------------ 2. UDP

#[test]
fn udp_echo_at_the_vip() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("b", 2, 1);
    let dir = TempDir::world_readable("udp");
    let _echo = udp_echo(&lan.clients[0], &dir, 5353);
    let _server = start_server(&lan.server, &dir, &server_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0))));
    let client_yaml = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: udp\n    ports:\n      0: 5353\n",
        lan.server_ip(0)
    );
    let (_client, reg) = start_client(&lan.clients[0], &dir, "opennotr.yaml", &client_yaml, 1);
    let (public, local) = parse_forward(&reg.forwards[0], "udp", &reg.domain);
    assert_eq!(local, 5353);
    assert_eq!(exported(&lan.server), format!("{} . udp . 5353", reg.vip));

    udp_echo_probe(&lan.server, reg.vip, 5353, 50);
    // The public port of the same forward still works too.
    udp_echo_probe(&lan.server, Ipv4Addr::LOCALHOST, public, 5);
    // A udp forward exports UDP only: TCP to the same port is refused.
    curl_refused(&lan.server, &format!("http://{}:5353/", reg.vip));
    eprintln!("test took {:?}", t.elapsed());
}

// ------------------------------------------------------------------ 3. refusals

#[test]
fn unexported_ports_and_unused_vips_are_refused_at_once() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("c", 3, 1);
    let dir = TempDir::world_readable("refused");
    dir.write("www/index.html", "exported\n");
    let c = &lan.clients[0];
    let _web = http_server(c, &dir.path("www"), 8000);
    // Services that do exist on the client host but are not exported.
    let _web2 = http_server(c, &dir.path("www"), 8001);
    let _echo = udp_echo(c, &dir, 5353);
    let _echo2 = udp_echo(c, &dir, 5354);
    let _server = start_server(&lan.server, &dir, &server_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0))));
    let client_yaml = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\n  - protocol: udp\n    ports:\n      0: 5353\n",
        lan.server_ip(0)
    );
    let (client, reg) = start_client(c, &dir, "opennotr.yaml", &client_yaml, 2);
    let vip = reg.vip;
    let unused = Ipv4Addr::new(100, 64, 242, if vip.octets()[3] == 77 { 78 } else { 77 });

    assert_eq!(curl_body(&lan.server, &format!("http://{vip}:8000/")), "exported\n");
    udp_echo_probe(&lan.server, vip, 5353, 3);

    curl_refused(&lan.server, &format!("http://{vip}:8001/"));
    curl_refused(&lan.server, &format!("http://{vip}:22/"));
    curl_refused(&lan.server, &format!("http://{unused}:8000/"));
    curl_refused(&lan.server, &format!("http://{unused}:8001/"));
    udp_not_answered(&lan.server, vip, 5354);
    udp_not_answered(&lan.server, unused, 5353);

    // Once the client is gone its VIP is unused too: its ports leave the
    // set and connections are refused.
    let mut client = client;
    client.child.kill().unwrap();
    client.wait_exit(WAIT);
    let mut left = String::new();
    let cleared = poll(Duration::from_secs(10), || {
        left = exported(&lan.server);
        left.is_empty()
    });
    assert!(cleared, "exports of a departed client still in the set after 10 s: {left}");
    curl_refused(&lan.server, &format!("http://{vip}:8000/"));
    udp_not_answered(&lan.server, vip, 5353);

    // A connection made to the transparent listener itself (not to a VIP)
    // is reset at once, not served or left hanging. (55: the reset came
    // so fast that curl's getpeername() after connecting already failed.)
    let out = curl(&lan.server, &format!("http://127.0.0.1:{TPROXY_TCP}/"), None, 5);
    assert!(
        matches!(out.code, Some(7 | 52 | 55 | 56)),
        "curl to the transparent listener directly should be reset: {}",
        out.show()
    );
    eprintln!("test took {:?}", t.elapsed());
}

// ------------------------------------------------------------------ 4. vipPorts

#[test]
fn vip_ports_are_reachable_only_at_the_vip() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("d", 4, 1);
    let dir = TempDir::world_readable("vipports");
    dir.write("www/index.html", "forwarded\n");
    dir.write("vip/index.html", "only at the VIP\n");
    let c = &lan.clients[0];
    let _web = http_server(c, &dir.path("www"), 8000);
    let _vipweb = http_server(c, &dir.path("vip"), 9000);
    let _echo = udp_echo(c, &dir, 5454);
    let _server = start_server(&lan.server, &dir, &server_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0))));
    let client_yaml = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\nvipPorts:\n  - port: 9000\n  - port: 5454\n    protocol: udp\n    localIP: 127.0.0.1\n",
        lan.server_ip(0)
    );
    let (client, reg) = start_client(c, &dir, "opennotr.yaml", &client_yaml, 1);
    let (public, _) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    let vip = reg.vip;

    assert_eq!(curl_body(&lan.server, &format!("http://{vip}:9000/")), "only at the VIP\n");
    assert_eq!(curl_body(&lan.server, &format!("http://{vip}:8000/")), "forwarded\n");
    udp_echo_probe(&lan.server, vip, 5454, 10);
    // vipPorts are per transport: tcp 5454 is not exported.
    curl_refused(&lan.server, &format!("http://{vip}:5454/"));

    // No public port: the registration lists the forward only, the server
    // host has no socket on 9000 or 5454, and its TCP listeners are the
    // control port, the transparent listener and the forward's public port.
    assert!(
        !client.lines(Src::Out).iter().any(|l| l.contains("9000") || l.contains("5454")),
        "the client printed a public port for a vipPorts entry:\n{}",
        client.transcript()
    );
    let tcp: BTreeSet<u16> = bound(&lan.server, "-t").into_iter().map(|(_, p)| p).collect();
    assert_eq!(tcp, BTreeSet::from([CONTROL_PORT, TPROXY_TCP, public]), "TCP listeners of the server host");
    // A UDP flow to the VIP has a reply socket bound at VIP:5454; nothing
    // else may use 5454 or 9000.
    let udp = bound(&lan.server, "-u");
    for (ip, port) in &udp {
        assert!(
            (*port != 9000 && *port != 5454) || *ip == vip.to_string(),
            "UDP socket {ip}:{port} on the server host: {udp:?}"
        );
    }
    curl_refused(&lan.server, "http://127.0.0.1:9000/");
    curl_refused(&lan.server, &format!("http://{}:9000/", lan.server_ip(0)));
    assert_eq!(curl_body(&lan.server, &format!("http://127.0.0.1:{public}/")), "forwarded\n");

    let elements = exported(&lan.server);
    for e in [format!("{vip} . tcp . 8000"), format!("{vip} . tcp . 9000"), format!("{vip} . udp . 5454")] {
        assert!(elements.contains(&e), "{e} missing from the exported set: {elements}");
    }
    eprintln!("test took {:?}", t.elapsed());
}

// ------------------------------------------------------------------ 5. two clients

#[test]
fn two_clients_are_isolated() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("e", 5, 2);
    let dir = TempDir::world_readable("two");
    let (a, b) = (&lan.clients[0], &lan.clients[1]);
    dir.write("a80/index.html", "A on 8000\n");
    dir.write("a81/index.html", "A on 8001\n");
    dir.write("b80/index.html", "B on 8000\n");
    dir.write("b82/index.html", "B on 8002\n");
    // Both client hosts have a service on 8000; each has one more.
    let _a80 = http_server(a, &dir.path("a80"), 8000);
    let _a81 = http_server(a, &dir.path("a81"), 8001);
    let _b80 = http_server(b, &dir.path("b80"), 8000);
    let _b82 = http_server(b, &dir.path("b82"), 8002);
    let _b81 = http_server(b, &dir.path("b80"), 8001);
    let _a82 = http_server(a, &dir.path("a80"), 8002);
    let _server = start_server(&lan.server, &dir, &server_yaml(&format!(":{CONTROL_PORT}")));
    let ya = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\n      20001: 8001\n",
        lan.server_ip(0)
    );
    let yb = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\nvipPorts:\n  - port: 8002\n",
        lan.server_ip(1)
    );
    let (_ca, ra) = start_client(a, &dir, "a.yaml", &ya, 2);
    let (_cb, rb) = start_client(b, &dir, "b.yaml", &yb, 1);
    let (va, vb) = (ra.vip, rb.vip);
    assert_ne!(va, vb, "two clients got the same VIP");
    assert_ne!(ra.domain, rb.domain);

    let get = |vip: Ipv4Addr, port: u16| curl_body(&lan.server, &format!("http://{vip}:{port}/"));
    assert_eq!(get(va, 8000), "A on 8000\n");
    assert_eq!(get(vb, 8000), "B on 8000\n");
    assert_eq!(get(va, 8001), "A on 8001\n");
    assert_eq!(get(vb, 8002), "B on 8002\n");
    // Each one's extra port is not the other's, although a service listens
    // there on the other client host.
    curl_refused(&lan.server, &format!("http://{vb}:8001/"));
    curl_refused(&lan.server, &format!("http://{va}:8002/"));

    let elements = exported(&lan.server);
    let mut listed: Vec<&str> = elements.split(", ").collect();
    listed.sort();
    let mut want = [
        format!("{va} . tcp . 8000"),
        format!("{va} . tcp . 8001"),
        format!("{vb} . tcp . 8000"),
        format!("{vb} . tcp . 8002"),
    ];
    want.sort();
    assert_eq!(listed, want.iter().map(String::as_str).collect::<Vec<_>>(), "exported set");
    eprintln!("test took {:?}", t.elapsed());
}

// ------------------------------------------------------------------ 6. rules lifecycle

#[test]
fn rules_are_removed_on_sigterm_and_not_duplicated_after_a_crash() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("f", 6, 1);
    let dir = TempDir::world_readable("rules");
    let s = &lan.server;
    let yaml = server_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0)));
    assert_eq!(vlan_state(s), (0, 0, 0), "fresh namespace");

    // Clean run: one table, one rule, one route; SIGTERM removes them.
    let mut server = start_server(s, &dir, &yaml);
    check(in_ns(s, "nft", &["list", "table", "ip", "opennotr"]));
    assert_eq!(vlan_state(s), (1, 1, 1), "(tables, rules, routes) while running");
    server.signal("TERM");
    let st = server.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "opennotrd after SIGTERM: {st:?}\n{}", server.transcript());
    assert!(server.seen.iter().any(|(_, l)| json_fields(l, "virtual LAN rules removed").is_some()));
    assert_rules_gone(s, "after SIGTERM");
    drop(server);

    // Crash with a client's export in the set: everything stays behind.
    let mut server = start_server(s, &dir, &yaml);
    let client_yaml = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\n",
        lan.server_ip(0)
    );
    let (client, reg) = start_client(&lan.clients[0], &dir, "opennotr.yaml", &client_yaml, 1);
    assert_eq!(exported(s), format!("{} . tcp . 8000", reg.vip));
    server.child.kill().unwrap();
    let st = server.wait_exit(WAIT);
    assert_eq!(st.code(), None, "opennotrd should have died of SIGKILL: {st:?}");
    drop(server);
    drop(client);
    assert_eq!(vlan_state(s), (1, 1, 1), "a SIGKILLed server leaves its rules (the precondition of this test)");

    // Restart: the leftovers are replaced, not duplicated, and the stale
    // export is gone.
    let server = start_server(s, &dir, &yaml);
    assert_eq!(vlan_state(s), (1, 1, 1), "(tables, rules, routes) after a restart over a crash's leftovers");
    assert_eq!(exported(s), "", "a crashed run's exports survived the restart");
    let rules = check(cmd("ip", &["-n", s, "rule", "show"]));
    let ours: Vec<&str> = rules.lines().filter(|l| l.starts_with(&format!("{ROUTE_TABLE}:"))).collect();
    assert_eq!(ours.len(), 1, "ip rule:\n{rules}");
    assert!(
        ours[0].contains("to 100.64.242.0/24") && ours[0].contains(&format!("lookup {ROUTE_TABLE}")),
        "{}",
        ours[0]
    );

    stop_server(server);
    assert_rules_gone(s, "after SIGTERM following a crash");
    eprintln!("test took {:?}", t.elapsed());
}

// ------------------------------------------------------------------ 7. no capability

#[test]
fn without_the_capability_it_warns_and_still_forwards() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("g", 7, 1);
    let dir = TempDir::world_readable("nocap");
    dir.write("www/index.html", "through the public port\n");
    let _web = http_server(&lan.clients[0], &dir.path("www"), 8000);

    let drop_privs: Vec<&str> = if on_path("setpriv") {
        vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    } else {
        assert!(on_path("runuser"), "neither setpriv nor runuser found: install util-linux");
        vec!["runuser", "-u", "nobody", "--"]
    };
    // The binary must be executable by nobody; copy it when its directory
    // is not reachable.
    let mut probe = drop_privs.clone();
    probe.extend([SERVER, "--version"]);
    let bin = if run_bounded(cmd(probe[0], &probe[1..]), WAIT).code == Some(0) {
        SERVER.to_string()
    } else {
        let copy = dir.path("opennotrd");
        std::fs::copy(SERVER, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy.to_str().unwrap().to_string()
    };
    let conf = dir.write("opennotrd.yaml", server_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0))));
    let mut server = start_server_with(&lan.server, &dir, &conf, &drop_privs, &bin);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    assert_eq!(uid.split_whitespace().next(), Some("65534"), "opennotrd does not run as nobody: Uid:{uid}");

    let client_yaml = format!(
        "serverAddr: \"{}:{CONTROL_PORT}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\n",
        lan.server_ip(0)
    );
    let (_client, reg) = start_client(&lan.clients[0], &dir, "opennotr.yaml", &client_yaml, 1);
    let (public, local) = parse_forward(&reg.forwards[0], "tcp", &reg.domain);
    assert_eq!(local, 8000);
    assert!((20000..=20100).contains(&public), "public port {public} outside 20000-20100");
    assert_eq!(curl_body(&lan.server, &format!("http://127.0.0.1:{public}/")), "through the public port\n");
    assert_eq!(vlan_state(&lan.server), (0, 0, 0), "rules installed without the capability");

    server.signal("TERM");
    let st = server.wait_exit(WAIT);
    assert_eq!(st.code(), Some(0), "opennotrd after SIGTERM: {st:?}\n{}", server.transcript());
    let warnings: Vec<String> = server.lines(Src::Err).into_iter().filter(|l| l.contains("virtual LAN off")).collect();
    assert_eq!(warnings.len(), 1, "expected one `virtual LAN off` warning:\n{}", server.transcript());
    assert!(warnings[0].contains("\"WARN\""), "not a warning: {}", warnings[0]);
    assert!(!server.transcript().contains("virtual LAN on"), "{}", server.transcript());
    eprintln!("test took {:?}", t.elapsed());
}

// ------------------------------------------------------------------ 8. other hosts

#[test]
fn other_hosts_reach_vips_only_with_vlan_allow_remote() {
    root_only!();
    let t = Instant::now();
    let lan = Lan::new("h", 8, 1);
    let dir = TempDir::world_readable("remote");
    dir.write("www/index.html", "exported\n");
    let c = &lan.clients[0];
    let _web = http_server(c, &dir.path("www"), 8000);
    let _web2 = http_server(c, &dir.path("www"), 8001);
    // The client host doubles as "another host" that routes the VIP range
    // to the server.
    check(cmd("ip", &["-n", c, "route", "add", "100.64.242.0/24", "via", &lan.server_ip(0).to_string()]));
    let listen = format!("{}:{CONTROL_PORT}", lan.server_ip(0));
    let client_yaml =
        format!("serverAddr: \"{listen}\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8000\n");

    // Default: only the server host reaches the VIP; other hosts' packets
    // are dropped (curl times out: exit 28).
    let server = start_server(&lan.server, &dir, &server_yaml(&listen));
    let (client, reg) = start_client(c, &dir, "opennotr.yaml", &client_yaml, 1);
    let vip = reg.vip;
    assert_eq!(curl_body(&lan.server, &format!("http://{vip}:8000/")), "exported\n");
    let out = curl(c, &format!("http://{vip}:8000/"), None, 2);
    assert_eq!(out.code, Some(28), "another host reached {vip}:8000 without vlanAllowRemote: {}", out.show());
    drop(client);
    stop_server(server);

    // vlanAllowRemote: exported ports are reachable from other hosts too;
    // other ports are still dropped.
    let yaml =
        server_yaml(&listen).replace("  shutdownGrace: 0.5\n", "  shutdownGrace: 0.5\n  vlanAllowRemote: true\n");
    let _server = start_server(&lan.server, &dir, &yaml);
    let (_client, reg) = start_client(c, &dir, "opennotr.yaml", &client_yaml, 1);
    let vip = reg.vip;
    assert_eq!(curl_body(c, &format!("http://{vip}:8000/")), "exported\n");
    assert_eq!(curl_body(&lan.server, &format!("http://{vip}:8000/")), "exported\n");
    let out = curl(c, &format!("http://{vip}:8001/"), None, 2);
    assert_eq!(out.code, Some(28), "another host reached unexported {vip}:8001: {}", out.show());
    curl_refused(&lan.server, &format!("http://{vip}:8001/"));
    eprintln!("test took {:?}", t.elapsed());
}
