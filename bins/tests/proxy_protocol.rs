//! PROXY protocol (`forwards[i].proxyProtocol`) with the real binaries and
//! a real nginx listening with `proxy_protocol`: nginx answers each request
//! with the address the header gave it (`$proxy_protocol_addr`,
//! `$proxy_protocol_port`) and the connection's own (`$remote_addr`).
//!
//! The visitor connects from 127.0.0.2, which is neither the server's nor
//! the client's address, so only a header carrying the visitor's address
//! passes. nginx refuses a connection without a header, so the header is
//! what lets a request through at all. UDP goes to a service here that
//! parses the v2 DGRAM header of every datagram strictly and answers with
//! the addresses it names. Without nginx the tests fail naming the package.
//! The last test (root only, in network namespaces) shows that a program
//! on the server host reaching the service at the client's VIP is
//! announced with a header too.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::netns::{in_ns, poll_every, python, root_with, run_bounded, Lan};
use support::{json_fields, parse_forward, read_registration, Proc, Src, TempDir, CLIENT, SERVER, WAIT};

const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Where visitors come from: not the server's address, not the client's.
const VISITOR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The nginx binary (Debian's is in /usr/sbin, not always on PATH).
fn nginx_bin() -> String {
    support::tools::need("nginx").display().to_string()
}

/// A port free on `ip` now (for nginx, which cannot report the port it took).
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

struct Nginx(Proc);

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.0.child.try_wait() {
            let _ = Command::new("kill").args(["-QUIT", &self.0.pid().to_string()]).status();
            poll_every(Duration::from_millis(20), Duration::from_secs(5), || {
                !matches!(self.0.child.try_wait(), Ok(None))
            });
        }
    }
}

/// nginx in the foreground, `listen 127.0.0.1:PORT proxy_protocol` on each
/// port, once every port accepts.
fn start_nginx(dir: &TempDir, ports: &[u16]) -> Nginx {
    let listens: String = ports.iter().map(|p| format!("    listen 127.0.0.1:{p} proxy_protocol;\n")).collect();
    let p = dir.0.to_str().unwrap();
    let conf = format!(
        "worker_processes 1;\n\
         error_log stderr info;\n\
         pid {p}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {p}/body;\n\
         \x20 proxy_temp_path {p}/proxy;\n\
         \x20 fastcgi_temp_path {p}/fastcgi;\n\
         \x20 uwsgi_temp_path {p}/uwsgi;\n\
         \x20 scgi_temp_path {p}/scgi;\n\
         \x20 server {{\n{listens}\
         \x20   location / {{\n\
         \x20     default_type text/plain;\n\
         \x20     return 200 \"$proxy_protocol_addr:$proxy_protocol_port $remote_addr\";\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n"
    );
    dir.write("nginx.conf", conf);
    let mut cmd = Command::new(nginx_bin());
    cmd.args(["-e", "stderr", "-p", p, "-c", "nginx.conf", "-g", "daemon off;"]);
    let mut proc = Proc::spawn_named("nginx", cmd, &dir.0);
    let up = poll_every(Duration::from_millis(20), WAIT, || {
        if let Ok(Some(st)) = proc.child.try_wait() {
            panic!("nginx exited: {st:?}\n{}", proc.transcript());
        }
        ports.iter().all(|&port| TcpStream::connect(("127.0.0.1", port)).is_ok())
    });
    assert!(up, "nginx did not listen within {WAIT:?}");
    Nginx(proc)
}

/// A UDP service on 127.0.0.1 that parses each datagram's v2 header
/// strictly (signature, version 2, PROXY, INET DGRAM, 12 address bytes)
/// and answers `src dst payload`, or `bad header` when it does not parse.
fn udp_service() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let d = &buf[..n];
            let answer = match d.get(..16) {
                Some(h) if h[..12] == SIGNATURE && h[12..] == [0x21, 0x12, 0, 12] && n >= 28 => {
                    let addr = |ip: &[u8], port: &[u8]| {
                        SocketAddr::from((<[u8; 4]>::try_from(ip).unwrap(), u16::from_be_bytes([port[0], port[1]])))
                    };
                    let (src, dst) = (addr(&d[16..20], &d[24..26]), addr(&d[20..24], &d[26..28]));
                    let mut a = format!("{src} {dst} ").into_bytes();
                    a.extend_from_slice(&d[28..]);
                    a
                }
                _ => b"bad header".to_vec(),
            };
            let _ = s.send_to(&answer, from);
        }
    });
    port
}

/// `opennotrd` with public ports bound to `bind`, and its control address.
fn start_server(dir: &TempDir, bind: &str) -> (Proc, SocketAddr) {
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  authKey: \"proxy-protocol-test-key-81f2\"\n  domain: \"open.notr.test\"\n\
         dhcp:\n  cidr: \"100.64.242.1/24\"\n\
         plugin:\n  tcp: '{{\"bind\": \"{bind}\"}}'\n  udp: '{{\"bind\": \"{bind}\"}}'\n"
    );
    let conf = dir.write("opennotrd.yaml", yaml);
    let mut p = Proc::spawn(SERVER, &["-conf", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0);
    let line = p.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let addr = json_fields(&line, "listening for clients").unwrap()["addr"].as_str().unwrap().parse().unwrap();
    (p, addr)
}

/// `opennotr` with `forwards` (YAML list items) and the public port of each.
fn start_client(dir: &TempDir, server: SocketAddr, forwards: &[(&str, u16, &str)]) -> (Proc, Vec<u16>) {
    let mut yaml = format!("serverAddr: \"{server}\"\nkey: \"proxy-protocol-test-key-81f2\"\nforwards:\n");
    for (protocol, local, version) in forwards {
        yaml += &format!("  - protocol: {protocol}\n    ports:\n      0: {local}\n    proxyProtocol: {version}\n");
    }
    let conf = dir.write("opennotr.yaml", yaml);
    let mut client = Proc::spawn(CLIENT, &["-conf", conf.to_str().unwrap(), "--log-json"], &dir.0);
    let reg = read_registration(&mut client, forwards.len());
    let publics = reg
        .forwards
        .iter()
        .zip(forwards)
        .map(|(line, (protocol, local, _))| {
            let (public, l) = parse_forward(line, protocol, &reg.domain);
            assert_eq!(l, *local);
            public
        })
        .collect();
    (client, publics)
}

/// A GET from `from` (port chosen) to `to`: the visitor's address and
/// everything nginx sent back.
fn get(from: IpAddr, to: SocketAddr) -> (SocketAddr, String) {
    let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect_timeout(&to.into(), WAIT).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: proxy.test\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    (s.local_addr().unwrap(), answer)
}

/// nginx's answer to a request through the tunnel: 200, and the body.
fn body(answer: &str) -> &str {
    assert!(answer.starts_with("HTTP/1.1 200"), "nginx refused the request: {answer:?}");
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_else(|| panic!("no body in {answer:?}"))
}

#[test]
fn nginx_sees_the_visitor_through_v1_and_v2_and_udp_gets_dgram_headers() {
    let dir = TempDir::world_readable("proxy");
    let (v1_port, v2_port) = (free_port(Ipv4Addr::LOCALHOST.into()), free_port(Ipv4Addr::LOCALHOST.into()));
    let _nginx = start_nginx(&dir, &[v1_port, v2_port]);
    let udp = udp_service();

    // nginx requires the header: a request without one gets no answer
    // (nginx logs "broken header" and closes) or a 400.
    let (_, direct) = get(VISITOR.into(), SocketAddr::from((Ipv4Addr::LOCALHOST, v1_port)));
    assert!(direct.is_empty() || direct.starts_with("HTTP/1.1 400"), "nginx answered without a header: {direct:?}");

    let (mut server, addr) = start_server(&dir, "127.0.0.1");
    let (mut client, publics) =
        start_client(&dir, addr, &[("tcp", v1_port, "v1"), ("tcp", v2_port, "v2"), ("udp", udp, "v2")]);
    for public in &publics[..2] {
        let (visitor, answer) = get(VISITOR.into(), SocketAddr::from((Ipv4Addr::LOCALHOST, *public)));
        // The header's address is the visitor's; the connection's own is
        // the client's (127.0.0.1).
        assert_eq!(body(&answer), format!("{visitor} 127.0.0.1"), "through public port {public}");
    }

    // UDP: every datagram carries the header; replies come back as sent.
    let s = UdpSocket::bind((VISITOR, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let public = SocketAddr::from((Ipv4Addr::LOCALHOST, publics[2]));
    let visitor = s.local_addr().unwrap();
    let mut buf = [0u8; 2048];
    for payload in ["one", "two"] {
        let deadline = Instant::now() + WAIT;
        let answer = loop {
            assert!(Instant::now() < deadline, "no answer through udp port {public} within {WAIT:?}");
            s.send_to(payload.as_bytes(), public).unwrap();
            match s.recv_from(&mut buf) {
                Ok((n, _)) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("udp through {public}: {e}"),
            }
        };
        assert_eq!(answer, format!("{visitor} {public} {payload}"));
    }

    client.signal("INT");
    assert_eq!(client.wait_exit(WAIT).code(), Some(0), "{}", client.transcript());
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
}

#[test]
fn nginx_sees_an_ipv6_visitor() {
    if TcpListener::bind("[::1]:0").is_err() {
        return eprintln!("skipped: no IPv6 loopback here");
    }
    let dir = TempDir::world_readable("proxy6");
    let port = free_port(Ipv4Addr::LOCALHOST.into());
    let _nginx = start_nginx(&dir, &[port]);
    // The public port on ::1: the visitor is IPv6, the service IPv4.
    let (mut server, addr) = start_server(&dir, "::1");
    let (mut client, publics) = start_client(&dir, addr, &[("tcp", port, "v2")]);
    let (visitor, answer) = get("::1".parse().unwrap(), SocketAddr::new("::1".parse().unwrap(), publics[0]));
    assert_eq!(body(&answer), format!("{}:{} 127.0.0.1", visitor.ip(), visitor.port()));
    client.signal("INT");
    assert_eq!(client.wait_exit(WAIT).code(), Some(0), "{}", client.transcript());
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
}

/// A TCP service on 127.0.0.1:`argv[1]` that reads a v1 header (up to its
/// CRLF) from each connection and sends it back.
const V1_ECHO: &str = r#"
import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1])))
l.listen()
print("ready", flush=True)
while True:
    c, _ = l.accept()
    got = b""
    while not got.endswith(b"\r\n") and len(got) < 108:
        d = c.recv(1)
        if not d:
            break
        got += d
    c.sendall(got)
    c.close()
"#;

/// Connects to `argv[1]:argv[2]`, prints its own address and what it reads.
const PROBE: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
me = c.getsockname()
got = b""
while True:
    d = c.recv(200)
    if not d:
        break
    got += d
print("%s %d %r" % (me[0], me[1], got))
"#;

#[test]
fn the_vip_path_gets_the_header_too() {
    if !root_with(&["nft", "ip", "python3"]) {
        return;
    }
    const PORT: u16 = 8000;
    let lan = Lan::on_subnet("pp", 240, 1);
    let dir = TempDir::world_readable("proxyvip");
    let (server_ns, client_ns) = (&lan.server, &lan.clients[0]);
    let mut svc =
        Proc::spawn_named("v1 echo", in_ns(client_ns, python(), &["-u", "-c", V1_ECHO, &PORT.to_string()]), &dir.0);
    svc.expect(Src::Out, "`ready`", |l| l == "ready");

    let yaml = format!(
        "server:\n  listen: \"{}:10100\"\n  authKey: \"k\"\n  domain: \"vlan.notr.test\"\n\
         \x20 tcplisten: \"127.0.0.1:4398\"\n  udplisten: \"127.0.0.1:4399\"\n  shutdownGrace: 0.5\n\
         dhcp:\n  cidr: \"100.64.242.1/24\"\n\
         plugin:\n  tcp: '{{\"bind\": \"127.0.0.1\"}}'\n  udp: '{{\"bind\": \"127.0.0.1\"}}'\n",
        lan.server_ip(0)
    );
    let conf = dir.write("opennotrd.yaml", yaml);
    let mut server = Proc::spawn_named(
        "opennotrd",
        in_ns(server_ns, SERVER, &["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"]),
        &dir.0,
    );
    server.expect(Src::Err, "`virtual LAN on`", |l| l.contains("virtual LAN on"));
    let client_yaml = format!(
        "serverAddr: \"{}:10100\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: {PORT}\n    proxyProtocol: v1\n",
        lan.server_ip(0)
    );
    let conf = dir.write("opennotr.yaml", client_yaml);
    let mut client = Proc::spawn_named("opennotr", in_ns(client_ns, CLIENT, &["-c", conf.to_str().unwrap()]), &dir.0);
    let reg = read_registration(&mut client, 1);

    // From the server host to VIP:8000: the header names the probe and the VIP.
    let out = run_bounded(in_ns(server_ns, python(), &["-c", PROBE, &reg.vip.to_string(), &PORT.to_string()]), WAIT);
    assert_eq!(out.code, Some(0), "probe: {}", out.show());
    let mut words = out.stdout.trim().splitn(3, ' ');
    let (ip, port, got) = (words.next().unwrap(), words.next().unwrap(), words.next().unwrap());
    assert_eq!(got, format!("b'PROXY TCP4 {ip} {} {port} {PORT}\\r\\n'", reg.vip), "probe: {}", out.show());

    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
}
