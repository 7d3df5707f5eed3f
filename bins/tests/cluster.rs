//! A cluster with the real binaries (docs/cluster.md): a real etcd, three
//! `opennotrd` nodes, and an `opennotr` client that lists all three, with
//! an http forward on its own domain. `kill -9` of the node it is on: the
//! client moves to another node and its domain answers through that node's
//! gateway again, once the dead node's claim has expired with its lease.
//!
//! Everything on loopback with free ports; each step waits for the line
//! (a log line, the client's registration) that says it happened, under the
//! suite's deadline.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Instant;

use support::{json_fields, read_registration, Proc, Src, TempDir, CLIENT, SERVER, WAIT};

const KEY: &str = "the shared key of the cluster test";
const DOMAIN: &str = "app.example.test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A single-member etcd on free loopback ports, answering `/health`.
fn start_etcd(dir: &TempDir) -> (Proc, String) {
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.path("etcd-data");
    let args = [
        "--name",
        "default",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &format!("default={peer_url}"),
    ];
    let etcd = Proc::spawn_cmd(Command::new(support::tools::need("etcd")), &args, &dir.0);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", client)) {
            let _ = write!(s, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.contains("\"health\":\"true\"") {
                return (etcd, client_url);
            }
        }
        assert!(Instant::now() < deadline, "etcd not healthy within {WAIT:?}:\n{}", etcd.transcript());
        thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Node `node`, with a lease of 2 s; its control address.
fn start_node(dir: &TempDir, etcd: &str, node: &str) -> (Proc, SocketAddr) {
    let conf = dir.write(
        &format!("{node}.yaml"),
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  authKey: \"{KEY}\"\n  domain: \"open.notr.test\"\n  publicIP: \"127.0.0.1\"\n\
             dhcp:\n  cidr: \"100.64.242.1/24\"\n\
             plugin:\n  http: |\n    {{\"listen\": \"127.0.0.1:0\"}}\n\
             cluster:\n  node: {node}\n  etcdEndpoints: [\"{etcd}\"]\n  leaseTtl: 2\n"
        ),
    );
    let mut p = Proc::spawn(SERVER, &["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0);
    let line = p.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let addr = json_fields(&line, "listening for clients").unwrap()["addr"].as_str().unwrap().parse().unwrap();
    p.expect(Src::Err, "`joined the cluster`", |l| json_fields(l, "joined the cluster").is_some());
    (p, addr)
}

/// A local HTTP service answering `name` to every request.
fn http_service(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf);
                let _ =
                    write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}", name.len());
            });
        }
    });
    port
}

/// The gateway address of a registration's http forward
/// (`http://app.example.test:<port> => ...`).
fn gateway(forward: &str) -> SocketAddr {
    let url = forward.split(" => ").next().unwrap();
    let port = url.rsplit(':').next().unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// GET / of the domain through `gateway`; the status line and body.
fn get(gateway: SocketAddr) -> String {
    let mut s = TcpStream::connect(gateway).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_killed_nodes_client_serves_its_domain_from_another_node() {
    let dir = TempDir::new("cluster");
    let (_etcd, etcd) = start_etcd(&dir);
    let (a, a_addr) = start_node(&dir, &etcd, "node-a");
    let (_b, b_addr) = start_node(&dir, &etcd, "node-b");
    let (_c, c_addr) = start_node(&dir, &etcd, "node-c");
    let service = http_service("served");

    let conf = dir.write(
        "opennotr.yaml",
        format!(
            "serverAddr: \"{a_addr}, {b_addr}, {c_addr}\"\nkey: \"{KEY}\"\ndomain: \"{DOMAIN}\"\nreconnectMaxDelay: 1\n\
             forwards:\n  - protocol: http\n    ports:\n      0: {service}\n"
        ),
    );
    let mut client = Proc::spawn(CLIENT, &["-c", conf.to_str().unwrap()], &dir.0);
    let reg = read_registration(&mut client, 1);
    assert_eq!(reg.domain, DOMAIN);
    let first = gateway(&reg.forwards[0]);
    let answer = get(first);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("served"), "{answer}");

    // The client is on node-a, the first it lists. kill -9 of node-a (the
    // drop of its process): the client moves on, is refused the domain
    // while node-a's claim lives (domain_taken, naming node-a), and gets it
    // once the claim has expired with node-a's lease (2 s).
    drop(a);
    let reg = read_registration(&mut client, 1);
    let refusals: Vec<String> = client.lines(Src::Out).into_iter().filter(|l| l.contains("refused")).collect();
    assert!(refusals.iter().all(|l| l.contains("domain_taken") && l.contains("node-a")), "{refusals:#?}");
    assert_eq!(reg.domain, DOMAIN);
    let now = gateway(&reg.forwards[0]);
    assert_ne!(now, first, "another node's gateway");
    let answer = get(now);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("served"), "{answer}");
}
