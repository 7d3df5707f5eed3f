//! Load-balanced groups with the real binaries: three `opennotr` clients
//! serving one public TCP port, each with a local service that answers its
//! own name; health checks taking a member out and back in; `kill -9` of a
//! member; an HTTP group on one domain through the gateway; wrong group
//! keys refused.
//!
//! No fixed ports (everything binds 127.0.0.1:0; public ports come from the
//! clients' stdout), no sleeps as synchronisation: each step waits for the
//! server's log line that says the state changed, with a deadline.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use support::{json_fields, read_registration, Proc, Src, TempDir, CLIENT, SERVER, WAIT};

const KEY: &str = "the shared key of the group tests";

fn server_yaml() -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  authKey: \"{KEY}\"\n  domain: \"open.notr.test\"\n  publicIP: \"127.0.0.1\"\n\
         dhcp:\n  cidr: \"100.64.242.1/24\"\n\
         plugin:\n  tcp: |\n    {{\"bind\": \"127.0.0.1\"}}\n  http: |\n    {{\"listen\": \"127.0.0.1:0\"}}\n  h2c: |\n    {{\"listen\": \"127.0.0.1:0\"}}\n"
    )
}

fn start_server(dir: &TempDir) -> (Proc, SocketAddr) {
    let conf = dir.write("opennotrd.yaml", server_yaml());
    let mut p = Proc::spawn(SERVER, &["-conf", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0);
    let line = p.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let addr = json_fields(&line, "listening for clients").unwrap()["addr"].as_str().unwrap().parse().unwrap();
    (p, addr)
}

fn start_client(dir: &TempDir, name: &str, yaml: &str) -> Proc {
    let conf = dir.write(&format!("{name}.yaml"), yaml);
    Proc::spawn(CLIENT, &["-conf", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0)
}

/// A local service answering every connection with `answer` and closing;
/// `stop` makes it close its listener (the port refuses connections), and
/// [`Service::start`] opens it again on the same port.
struct Service {
    port: u16,
    answer: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl Service {
    fn new(answer: impl Into<Vec<u8>>) -> Service {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = Service { port: l.local_addr().unwrap().port(), answer: answer.into(), stop: Arc::default() };
        s.serve(l);
        s
    }

    fn serve(&mut self, l: TcpListener) {
        self.stop = Arc::default();
        let (stop, answer) = (self.stop.clone(), self.answer.clone());
        thread::spawn(move || {
            for c in l.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = c else { continue };
                let answer = answer.clone();
                thread::spawn(move || {
                    // An HTTP request is read up to its end before answering
                    // (a health check, or the gateway's request).
                    c.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let _ = c.write_all(&answer);
                });
            }
        });
    }

    /// Closes the listener: new connections to the port are refused.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "service on {} did not stop", self.port);
            thread::yield_now();
        }
    }

    fn start(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.serve(l);
    }
}

/// One visitor connection to 127.0.0.1:`port`: what it reads to the end.
fn visit(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("visitor on port {port}: {e}"));
    out
}

/// `n` visitors; what each got.
fn visits(port: u16, n: usize) -> Vec<String> {
    (0..n).map(|_| visit(port)).collect()
}

/// Waits for the server's log line `message` whose fields satisfy `pred`.
fn server_logs(server: &mut Proc, message: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    server.expect(Src::Err, message, |l| json_fields(l, message).is_some_and(|f| pred(&f)));
}

fn tcp_member(addr: SocketAddr, local: u16, group_key: &str) -> String {
    format!(
        "serverAddr: \"{addr}\"\nkey: \"{KEY}\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: {local}\n\
         \x20   group: web\n    groupKey: \"{group_key}\"\n\
         \x20   healthCheck: {{ type: tcp, interval: 0.2, timeout: 1, failures: 1, passes: 1 }}\n"
    )
}

/// The public port of the client's only forward, from its stdout line
/// `tcp://<domain>:<port> => 127.0.0.1:<local>`.
fn public_port(client: &mut Proc) -> (String, u16) {
    let reg = read_registration(client, 1);
    let line = &reg.forwards[0];
    assert!(!line.contains("refused"), "forward refused: {line}");
    let port = line.split(" => ").next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    (line.clone(), port)
}

#[test]
fn three_clients_share_a_tcp_port_with_health_checks_and_failover() {
    let dir = TempDir::new("group-tcp");
    let (mut server, addr) = start_server(&dir);
    let mut services: Vec<Service> = ["a", "b", "c"].into_iter().map(Service::new).collect();

    let mut a = start_client(&dir, "a", &tcp_member(addr, services[0].port, "group secret"));
    let (_, port) = public_port(&mut a);
    server_logs(&mut server, "member joined the group", |_| true);
    let mut b = start_client(&dir, "b", &tcp_member(addr, services[1].port, "group secret"));
    assert_eq!(public_port(&mut b).1, port, "b joined another port");
    server_logs(&mut server, "member joined the group", |_| true);
    let mut c = start_client(&dir, "c", &tcp_member(addr, services[2].port, "group secret"));
    assert_eq!(public_port(&mut c).1, port, "c joined another port");
    server_logs(&mut server, "member joined the group", |_| true);

    // Round robin: consecutive visitors go to each member in turn.
    let got = visits(port, 9);
    for name in ["a", "b", "c"] {
        assert_eq!(got.iter().filter(|g| *g == name).count(), 3, "round robin over a, b, c: {got:?}");
    }

    // A wrong key is refused for that forward, and counts as a refusal.
    let mut stranger = start_client(&dir, "x", &tcp_member(addr, services[0].port, "a guess"));
    let reg = read_registration(&mut stranger, 1);
    assert!(reg.forwards[0].contains("refused: wrong key for group web"), "{}", reg.forwards[0]);
    assert!(!stranger.transcript().contains("a guess"), "the client logs its group key");
    assert!(!server.transcript().contains("group secret"), "the server logs a group key");
    drop(stranger);

    // b's service stops: its health check takes it out, and every visitor
    // is served by a or c.
    services[1].stop();
    let target_b = format!("127.0.0.1:{}", services[1].port);
    server_logs(&mut server, "member health changed", |f| f["healthy"] == false && f["target"] == target_b);
    let got = visits(port, 6);
    assert!(got.iter().all(|g| g == "a" || g == "c"), "an unhealthy member served, or a visitor failed: {got:?}");
    assert!(got.iter().any(|g| g == "a") && got.iter().any(|g| g == "c"), "{got:?}");

    // It comes back: b is in the rotation again.
    services[1].start();
    server_logs(&mut server, "member health changed", |f| f["healthy"] == true && f["target"] == target_b);
    let got = visits(port, 3);
    assert!(got.iter().any(|g| g == "b"), "b is not back: {got:?}");

    // kill -9 of c: once the server has seen its session end, every visitor
    // is served by a or b.
    c.signal("KILL");
    server_logs(&mut server, "member left the group", |f| f["members"] == 2);
    let got = visits(port, 8);
    assert!(got.iter().all(|g| g == "a" || g == "b"), "a visitor failed after c was gone: {got:?}");
    assert!(got.iter().any(|g| g == "a") && got.iter().any(|g| g == "b"), "{got:?}");

    // The last member leaving stops the group and frees its port.
    drop(a);
    server_logs(&mut server, "member left the group", |f| f["members"] == 1);
    drop(b);
    server_logs(&mut server, "group stopped: its last member left", |_| true);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the group's port is still open");
}

fn http_member(addr: SocketAddr, local: u16, group_key: &str) -> String {
    format!(
        "serverAddr: \"{addr}\"\nkey: \"{KEY}\"\ndomain: \"site.example.test\"\n\
         forwards:\n  - protocol: http\n    ports:\n      0: {local}\n\
         \x20   group: site\n    groupKey: \"{group_key}\"\n    balance: least_conn\n\
         \x20   healthCheck: {{ type: http, path: /health, status: 200, interval: 0.2 }}\n"
    )
}

fn http_service(name: &str) -> Service {
    let body = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}", name.len());
    Service::new(body)
}

/// GET / of `host` through the gateway at `gateway`; the body.
fn get(gateway: SocketAddr, host: &str) -> String {
    let mut s = TcpStream::connect(gateway).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[test]
fn two_clients_serve_one_domain_through_the_gateway() {
    let dir = TempDir::new("group-http");
    let (mut server, addr) = start_server(&dir);
    let (one, two) = (http_service("one"), http_service("two"));

    let mut first = start_client(&dir, "one", &http_member(addr, one.port, "site key"));
    let reg = read_registration(&mut first, 1);
    assert_eq!(reg.domain, "site.example.test");
    let url = reg.forwards[0].split(" => ").next().unwrap().to_string();
    let gateway: SocketAddr =
        url.strip_prefix("http://site.example.test:").map(|p| format!("127.0.0.1:{p}")).unwrap().parse().unwrap();
    server_logs(&mut server, "member joined the group", |_| true);

    // The same domain, held by two live clients: the second proves the
    // group key.
    let mut second = start_client(&dir, "two", &http_member(addr, two.port, "site key"));
    let reg = read_registration(&mut second, 1);
    assert_eq!(reg.domain, "site.example.test");
    assert!(reg.forwards[0].starts_with(&url), "{} is not {url}", reg.forwards[0]);
    server_logs(&mut server, "member joined the group", |_| true);

    let got: Vec<String> = (0..6).map(|_| get(gateway, "site.example.test")).collect();
    assert!(got.iter().any(|g| g == "one") && got.iter().any(|g| g == "two"), "not spread: {got:?}");

    // A third member may not route another scheme of the shared domain
    // to itself alone.
    let third =
        format!("{}  - protocol: h2c\n    ports:\n      0: {}\n", http_member(addr, two.port, "site key"), two.port);
    let mut third = start_client(&dir, "three", &third);
    let reg = read_registration(&mut third, 2);
    assert!(!reg.forwards[0].contains("refused"), "{}", reg.forwards[0]);
    assert!(reg.forwards[1].contains("refused: domain site.example.test is shared"), "{}", reg.forwards[1]);
    drop(third);
    server_logs(&mut server, "member left the group", |f| f["members"] == 2);

    // Without the key the domain is still taken.
    let mut stranger = start_client(&dir, "x", &http_member(addr, one.port, "not the key"));
    stranger.expect(Src::Out, "`refused by server (domain_taken)`", |l| l.contains("domain_taken"));
    drop(stranger);

    // One member leaves: the other serves the domain alone, and holds it.
    drop(first);
    server_logs(&mut server, "member left the group", |f| f["members"] == 1);
    for _ in 0..4 {
        assert_eq!(get(gateway, "site.example.test"), "two");
    }
    let mut stranger = start_client(&dir, "y", &http_member(addr, one.port, "not the key"));
    stranger.expect(Src::Out, "`refused by server (domain_taken)`", |l| l.contains("domain_taken"));
}

/// A UDP service answering every datagram with `name`.
fn udp_service(name: &'static str) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(name.as_bytes(), from);
        }
    });
    port
}

/// One UDP visitor (a flow of its own): what it is answered, resending
/// while the flow is set up.
fn udp_visit(port: u16) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        s.send_to(b"who", ("127.0.0.1", port)).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no answer through udp port {port} within {WAIT:?}");
}

#[test]
fn two_clients_share_a_udp_port() {
    let dir = TempDir::new("group-udp");
    let (mut server, addr) = start_server(&dir);
    let member = |local: u16| {
        format!(
            "serverAddr: \"{addr}\"\nkey: \"{KEY}\"\nforwards:\n  - protocol: udp\n    ports:\n      0: {local}\n\
             \x20   group: dns\n    groupKey: \"k\"\n"
        )
    };
    let mut one = start_client(&dir, "one", &member(udp_service("one")));
    let (_, port) = public_port(&mut one);
    server_logs(&mut server, "member joined the group", |_| true);
    let mut two = start_client(&dir, "two", &member(udp_service("two")));
    assert_eq!(public_port(&mut two).1, port);
    server_logs(&mut server, "member joined the group", |_| true);
    // Each flow goes to one member, in turn.
    let got: Vec<String> = (0..4).map(|_| udp_visit(port)).collect();
    assert_eq!(got.iter().filter(|g| *g == "one").count(), 2, "{got:?}");
    assert_eq!(got.iter().filter(|g| *g == "two").count(), 2, "{got:?}");
}
