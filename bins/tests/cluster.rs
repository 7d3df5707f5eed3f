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

use support::netns::{check, cmd, in_ns, poll_every, root_with, run_bounded, Lan};
use support::{http_get, json_fields, read_registration, Proc, Src, TempDir, CLIENT, SERVER, WAIT};

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
             cluster:\n  node: {node}\n  etcdEndpoints: [\"{etcd}\"]\n  leaseTtl: 2\n  key: cluster-test-key-0123456789\n"
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
    let answer = http_get(first, DOMAIN, "/", "");
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
    let answer = http_get(now, DOMAIN, "/", "");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("served"), "{answer}");
}

// ------------------------------------------------------- network namespaces

/// GET / of the domain at `gateway` from namespace `ns`, with curl: the
/// HTTP status and the body (`000` and nothing when nothing answers).
fn curl_in(ns: &str, gateway: &str) -> (String, String) {
    let url = format!("http://{gateway}/");
    let args = ["-s", "-m", "3", "-H", &format!("Host: {DOMAIN}"), "-w", "\n%{http_code}", &url];
    let out = run_bounded(in_ns(ns, "curl", &args), WAIT);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
    (code.trim().to_string(), body.to_string())
}

/// The nodes (by index) the client in `ns` holds a session with: its
/// established connections to a control port.
fn holder(ns: &str, lan: &Lan) -> Vec<usize> {
    let out = run_bounded(in_ns(ns, "ss", &["-Htn", "state", "established", "( dport = :10100 )"]), WAIT);
    (0..3).filter(|&i| out.stdout.contains(&format!("{}:10100", lan.client_ip(i)))).collect()
}

/// GET / of the client's service at its VIP (port 8000, the forward's
/// local port) from namespace `ns`: the HTTP status and the body.
fn vip_in(ns: &str, vip: &std::net::Ipv4Addr) -> (String, String) {
    let url = format!("http://{vip}:8000/");
    let out = run_bounded(in_ns(ns, "curl", &["-s", "-m", "3", "-w", "\n%{http_code}", &url]), WAIT);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
    (code.trim().to_string(), body.to_string())
}

/// Three nodes in namespaces of their own (each with its virtual LAN) and
/// the client in a fourth, all joined through a hub namespace that holds
/// etcd and the visitor. The client, on node-a, is reached through every
/// node's gateway, and at its VIP (TCP and UDP) from every other node's
/// host, over node links. node-a's link is cut (a partition): node-a,
/// unable to renew its lease, gives up its place and closes its session
/// (it stops serving the domain); the client, which lists the three nodes,
/// notices its silent server and gets its domain on another node once
/// node-a's claim has expired, reached there the same ways; when the link
/// is back, node-a rejoins, serves the domain through its link, and does
/// not take the client back.
#[test]
fn a_partitioned_node_stops_serving_and_another_takes_its_domain() {
    if !root_with(&["ip", "ss", "nft", "etcd", "curl", "python3"]) {
        return;
    }
    let dir = TempDir::new("cluster-netns");
    let lan = Lan::new("cl", 30, 4);
    let hub = lan.server.clone();
    // The hub routes between the nodes (without sysctl, which a minimal
    // machine may lack): the namespace's own /proc/sys.
    check(in_ns(&hub, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]));
    for (i, ns) in lan.clients.iter().enumerate() {
        check(cmd("ip", &["-n", ns, "route", "add", "default", "via", &lan.server_ip(i).to_string()]));
    }

    // etcd in the hub, on every address of it.
    let data = dir.path("etcd-data");
    let etcd_args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client-urls",
        "http://0.0.0.0:2379",
        "--advertise-client-urls",
        "http://127.0.0.1:2379",
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
    ];
    let etcd = support::netns::etcd_in(&hub, &etcd_args, &dir);
    let healthy = poll_every(std::time::Duration::from_millis(100), WAIT, || {
        run_bounded(in_ns(&hub, "curl", &["-s", "-m", "1", "http://127.0.0.1:2379/health"]), WAIT)
            .stdout
            .contains("true")
    });
    assert!(healthy, "etcd not healthy:\n{}", etcd.transcript());

    let mut nodes: Vec<Proc> = ["node-a", "node-b", "node-c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ip = lan.client_ip(i);
            let conf = dir.write(
                &format!("{name}.yaml"),
                format!(
                    "server:\n  listen: \"{ip}:10100\"\n  authKey: \"{KEY}\"\n  domain: \"open.notr.test\"\n  publicIP: \"{ip}\"\n\
                     \x20 tcplisten: \"127.0.0.1:4398\"\n  udplisten: \"127.0.0.1:4399\"\n\
                     dhcp:\n  cidr: \"100.64.242.1/24\"\n\
                     plugin:\n  http: |\n    {{\"listen\": \"{ip}:8080\"}}\n\
                     cluster:\n  node: {name}\n  etcdEndpoints: [\"http://{}:2379\"]\n  leaseTtl: 2\n  key: cluster-test-key-0123456789\n",
                    lan.server_ip(i)
                ),
            );
            let args = ["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"];
            let mut p = Proc::spawn_named(name, in_ns(&lan.clients[i], SERVER, &args), &dir.0);
            p.expect(Src::Err, "`joined the cluster`", |l| json_fields(l, "joined the cluster").is_some());
            p
        })
        .collect();

    // The client, in the fourth namespace, with its service there.
    let client_ns = lan.clients[3].clone();
    std::fs::write(dir.path("index.html"), "served").unwrap();
    let _service = support::netns::http_server(&client_ns, &dir.0, 8000);
    let _echo = support::netns::udp_echo(&client_ns, &dir, 5353);
    let servers: Vec<String> = (0..3).map(|i| format!("{}:10100", lan.client_ip(i))).collect();
    let conf = dir.write(
        "opennotr.yaml",
        format!(
            "serverAddr: \"{}\"\nkey: \"{KEY}\"\ndomain: \"{DOMAIN}\"\nreconnectMaxDelay: 1\n\
             keepaliveInterval: 0.5\nkeepaliveTimeout: 2\n\
             forwards:\n  - protocol: http\n    ports:\n      0: 8000\n\
             vipPorts:\n  - port: 5353\n    protocol: udp\n",
            servers.join(", ")
        ),
    );
    let mut client = Proc::spawn_named("opennotr", in_ns(&client_ns, CLIENT, &["-c", conf.to_str().unwrap()]), &dir.0);
    let reg = read_registration(&mut client, 1);
    assert_eq!(reg.domain, DOMAIN);
    assert_eq!(holder(&client_ns, &lan), vec![0], "the client is on node-a, its first server");
    let a_gateway = format!("{}:8080", lan.client_ip(0));
    assert_eq!(curl_in(&hub, &a_gateway), ("200".into(), "served".into()), "through node-a");
    // Every node's gateway serves the domain, and every node's virtual LAN
    // reaches the client's VIP: node-b and node-c carry to node-a.
    for i in 1..3 {
        // Once node i has read node-a's claims (its watch, within a moment).
        let gateway = format!("{}:8080", lan.client_ip(i));
        let seen = poll_every(std::time::Duration::from_millis(100), WAIT, || curl_in(&hub, &gateway).0 == "200");
        assert!(seen, "node {i} does not serve the domain: {:?}", curl_in(&hub, &gateway));
        assert_eq!(curl_in(&hub, &gateway), ("200".into(), "served".into()), "through node {i}");
        let reached =
            poll_every(std::time::Duration::from_millis(100), WAIT, || vip_in(&lan.clients[i], &reg.vip).0 == "200");
        assert!(reached, "VIP from node {i}: {:?}", vip_in(&lan.clients[i], &reg.vip));
        support::netns::udp_echo_probe(&lan.clients[i], reg.vip, 5353, 20);
    }

    // The partition: node-a's only link goes down.
    let link = format!("v{}cls0", std::process::id());
    check(cmd("ip", &["-n", &hub, "link", "set", &link, "down"]));
    nodes[0].expect(Src::Err, "node-a to give up its place", |l| l.contains("this node lost its place"));
    // node-a no longer serves the domain, even to a visitor beside it.
    let (code, _) = curl_in(&lan.clients[0], &a_gateway);
    assert_ne!(code, "200", "the partitioned node still serves the domain");

    // The client moves to node-b or node-c; both serve the domain, one
    // of them through its link to the other, and the other one's virtual
    // LAN reaches the client's VIP.
    let reg = read_registration(&mut client, 1);
    assert_eq!(reg.domain, DOMAIN);
    let on = holder(&client_ns, &lan);
    assert!(on == [1] || on == [2], "the client is on exactly one of node-b and node-c: {on:?}");
    for i in 1..3 {
        let gateway = format!("{}:8080", lan.client_ip(i));
        let seen = poll_every(std::time::Duration::from_millis(100), WAIT, || curl_in(&hub, &gateway).0 == "200");
        assert!(seen, "node {i} does not serve the domain: {:?}", curl_in(&hub, &gateway));
    }
    let other = 3 - on[0];
    let reached =
        poll_every(std::time::Duration::from_millis(100), WAIT, || vip_in(&lan.clients[other], &reg.vip).0 == "200");
    assert!(reached, "VIP from node {other}: {:?}", vip_in(&lan.clients[other], &reg.vip));
    support::netns::udp_echo_probe(&lan.clients[other], reg.vip, 5353, 20);

    // The link is back: node-a rejoins, serves the domain through its link,
    // and the client stays where it is.
    check(cmd("ip", &["-n", &hub, "link", "set", &link, "up"]));
    nodes[0].expect(Src::Err, "node-a to rejoin", |l| json_fields(l, "joined the cluster").is_some());
    let served = poll_every(std::time::Duration::from_millis(200), WAIT, || curl_in(&hub, &a_gateway).0 == "200");
    assert!(served, "node-a does not serve the domain through its link");
    assert_eq!(holder(&client_ns, &lan), on, "the client moved back");
    drop(client);
    nodes.clear();
}
