//! Bandwidth limits with the real binaries (docs/bandwidth.md): the server
//! file's limits and the client file's lower wishes, what the client
//! prints, a transfer that cannot beat its rate, the admin API and
//! `/metrics`; and config errors that name the key and stop the program
//! before anything binds.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use support::{json_fields, read_registration, tcp_echo, Proc, Src, TempDir, CLIENT, SERVER, WAIT};

const TOKEN: &str = "bandwidth-admin-token-0123456789";

fn admin_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn run_to_exit(bin: &str, args: &[&str], dir: &TempDir) -> (ExitStatus, Proc) {
    let mut p = Proc::spawn(bin, args, &dir.0);
    let st = p.wait_exit(WAIT);
    (st, p)
}

#[test]
fn the_servers_limits_and_the_clients_lower_wishes_hold_end_to_end() {
    const FORWARD_RATE: u64 = 300_000;
    const N: usize = 1_000_000;
    let dir = TempDir::new("bandwidth");
    let echo = tcp_echo();
    let conf = dir.write(
        "opennotrd.yaml",
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  authKey: \"a-shared-key-for-the-bandwidth-test\"\n  domain: \"open.notr.test\"\n\
             dhcp:\n  cidr: \"100.64.242.1/24\"\n\
             plugin:\n  tcp: '{{\"PortMin\": 20000, \"PortMax\": 40000, \"bind\": \"127.0.0.1\"}}'\n\
             limits:\n  forwardBandwidth: 300KB\n  clientBandwidth: 80Mbit\n\
             admin:\n  listen: \"127.0.0.1:0\"\n  token: \"{TOKEN}\"\n"
        ),
    );
    let mut server = Proc::spawn(SERVER, &["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0);
    let addr_of = |p: &mut Proc, msg: &str| -> SocketAddr {
        let l = p.expect(Src::Err, msg, |l| json_fields(l, msg).is_some());
        json_fields(&l, msg).unwrap()["addr"].as_str().unwrap().parse().unwrap()
    };
    let control = addr_of(&mut server, "listening for clients");
    let admin = addr_of(&mut server, "admin API listening");

    // The client asks for more than the server gives on the forward (held
    // at the server's) and for less on the whole session (taken).
    let client_conf = dir.write(
        "opennotr.yaml",
        format!(
            "serverAddr: \"{control}\"\nkey: \"a-shared-key-for-the-bandwidth-test\"\nbandwidth: 5MB\n\
             forwards:\n  - protocol: tcp\n    ports:\n      0: {echo}\n    bandwidth: 2MB/s\n"
        ),
    );
    let mut client = Proc::spawn(CLIENT, &["-c", client_conf.to_str().unwrap()], &dir.0);
    let reg = read_registration(&mut client, 1);
    let public: u16 = reg.forwards[0].split(" => ").next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    client.expect(Src::Out, "the session's limit", |l| l == "bandwidth: 5MB/s each way for this client");
    let forward_line = format!("bandwidth: 300KB/s each way for tcp://{}:{public}", reg.domain);
    client.expect(Src::Out, "the forward's limit", |l| l == forward_line);

    // N bytes there and back at 300 kB/s a direction: at least
    // (N - burst - buffers) / rate, however slow the machine.
    let payload: Vec<u8> = (0..N).map(|i| (i * 31 + i / 257) as u8).collect();
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", public)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let sent = payload.clone();
    let writer = thread::spawn(move || w.write_all(&sent));
    let mut got = vec![0u8; N];
    s.read_exact(&mut got).unwrap();
    let elapsed = start.elapsed();
    writer.join().unwrap().unwrap();
    assert!(got == payload, "the echo differs");
    let floor = Duration::from_secs_f64((N as u64 - 3 * 64 * 1024) as f64 / FORWARD_RATE as f64);
    assert!(elapsed >= floor, "{N} bytes at {FORWARD_RATE} B/s in {elapsed:?}");

    let sessions = admin_get(admin, "/api/v1/sessions");
    let body = &sessions[sessions.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v[0]["bandwidth"], 5_000_000, "{body}");
    assert_eq!(v[0]["forwards"][0]["bandwidth"], FORWARD_RATE, "{body}");
    assert!(v[0]["forwards"][0]["throttled_ms"].as_u64().unwrap() > 0, "{body}");
    let metrics = admin_get(admin, "/metrics");
    assert!(
        metrics.contains(&format!("scope=\"forward\",protocol=\"tcp\",port=\"{public}\"}} {FORWARD_RATE}")),
        "{metrics}"
    );
    assert!(metrics.contains("opennotr_bandwidth_throttled_seconds_total{"), "{metrics}");
}

#[test]
fn bad_bandwidths_exit_64_naming_the_key() {
    let dir = TempDir::new("badbw");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = |extra: &str| {
        format!(
            "server:\n  listen: \"{}\"\n  authKey: \"k\"\n  domain: \"open.notr.test\"\ndhcp:\n  cidr: \"100.64.242.1/24\"\n{extra}",
            held.local_addr().unwrap()
        )
    };
    for (extra, key) in [
        ("limits:\n  forwardBandwidth: 10mb\n", "limits.forwardBandwidth"),
        ("limits:\n  clientBandwidth: 0\n", "limits.clientBandwidth"),
        ("clients:\n  - name: alice\n    key: k2\n    bandwidth: fast\n", "clients[0].bandwidth"),
        ("clients:\n  - name: alice\n    key: k2\n    forwardBandwidth: 10Mbps\n", "clients[0].forwardBandwidth"),
    ] {
        let conf = dir.write("notrd.yaml", server(extra));
        let (st, p) = run_to_exit(SERVER, &["-c", conf.to_str().unwrap()], &dir);
        let err = p.stderr_text();
        assert_eq!(st.code(), Some(64), "{extra}: {st:?}\n{err}");
        assert!(err.contains(&format!("{key}:")), "stderr does not name {key}:\n{err}");
        assert!(!err.contains("listening for clients"), "{err}");
    }
    let client = "serverAddr: \"127.0.0.1:1\"\nkey: k\nforwards:\n  - protocol: tcp\n    ports:\n      0: 22\n    bandwidth: 1.5\n";
    let conf = dir.write("opennotr.yaml", client);
    let (st, p) = run_to_exit(CLIENT, &["-c", conf.to_str().unwrap()], &dir);
    assert_eq!(st.code(), Some(64), "{st:?}\n{}", p.transcript());
    assert!(p.stderr_text().contains("forwards[0].bandwidth:"), "{}", p.transcript());
}
