//! Helpers of the root-only tests that run in network namespaces
//! (`vlan.rs`, `openresty.rs`): bounded command runners, a poller, and the
//! [`Lan`] guard (a server namespace joined to client namespaces by veth
//! pairs).

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::{Proc, Src, TempDir, WAIT};

// ------------------------------------------------------------------ preflight

pub(crate) fn on_path(tool: &str) -> bool {
    super::tools::find(tool).is_some()
}

pub(crate) fn is_root() -> bool {
    let uid = Command::new("id").arg("-u").output().expect("cannot run `id -u`");
    String::from_utf8_lossy(&uid.stdout).trim() == "0"
}

/// False (after printing `skipped: needs root`) when not root; panics
/// naming the package when root lacks one of `tools`.
pub(crate) fn root_with(tools: &[&str]) -> bool {
    if !is_root() {
        eprintln!("skipped: needs root");
        return false;
    }
    for tool in tools {
        super::tools::need(tool);
    }
    true
}

// ------------------------------------------------------------------ commands

/// What a bounded command run produced.
pub(crate) struct Out {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn show(&self) -> String {
        format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub(crate) fn run_bounded(mut cmd: Command, timeout: Duration) -> Out {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let read = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} still running after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Out { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

pub(crate) fn cmd(prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// A command run inside the namespace `ns`.
pub(crate) fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]).args(args);
    c
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn check(c: Command) -> String {
    let shown = format!("{c:?}");
    let out = run_bounded(c, WAIT);
    assert_eq!(out.code, Some(0), "{shown} failed: {}", out.show());
    out.stdout
}

/// The real Python interpreter (not a pyenv shim), found once.
pub(crate) fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = check(cmd("python3", &["-c", "import sys; print(sys.executable)"]));
        let exe = out.trim().to_string();
        if exe.is_empty() {
            "python3".into()
        } else {
            exe
        }
    })
}

/// `python3 -m http.server` on 127.0.0.1:`port` of `ns`, serving `dir`.
pub(crate) fn http_server(ns: &str, dir: &std::path::Path, port: u16) -> super::Proc {
    let port = port.to_string();
    let args = ["-u", "-m", "http.server", &port, "--bind", "127.0.0.1", "--directory", dir.to_str().unwrap()];
    let mut p = super::Proc::spawn_named("http.server", in_ns(ns, python(), &args), dir);
    p.expect(super::Src::Out, "`Serving HTTP`", |l| l.starts_with("Serving HTTP"));
    p
}

/// etcd started in `ns` with `args` (its name is `default`), its data
/// under `dir`.
pub(crate) fn etcd_in(ns: &str, args: &[&str], dir: &super::TempDir) -> super::Proc {
    let etcd = super::tools::need("etcd");
    let mut all = vec!["--name", "default"];
    all.extend_from_slice(args);
    super::Proc::spawn_named("etcd", in_ns(ns, etcd.to_str().unwrap(), &all), &dir.0)
}

/// Polls `cond` every `every` until it holds, for at most `timeout`.
pub(crate) fn poll_every(every: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

// ------------------------------------------------------------------ namespaces

/// A server namespace and `n` client namespaces, each client joined to the
/// server by its own veth pair on `10.A.B+i.0/24` (server `.1`, client `.2`).
/// Deleted on drop.
pub(crate) struct Lan {
    pub(crate) server: String,
    pub(crate) clients: Vec<String>,
    created: Vec<String>,
    net: (u8, u8),
}

impl Lan {
    /// `idx` (0-63) is unique per test, so that the subnets of tests running
    /// in parallel differ too.
    pub(crate) fn new(tag: &str, idx: u8, n: usize) -> Lan {
        assert!(idx < 64 && n <= 4);
        Self::on_subnet(tag, idx * 4, n)
    }

    /// Like [`Lan::new`], with the clients on `10.A.b.0/24`, `10.A.b+1.0/24`, ….
    pub(crate) fn on_subnet(tag: &str, b: u8, n: usize) -> Lan {
        assert!(usize::from(b) + n <= 256);
        let pid = std::process::id();
        let mut lan = Lan {
            server: format!("onr{pid}{tag}s"),
            clients: (0..n).map(|i| format!("onr{pid}{tag}c{i}")).collect(),
            created: Vec::new(),
            net: (200 + (pid % 56) as u8, b),
        };
        for ns in std::iter::once(lan.server.clone()).chain(lan.clients.clone()) {
            // A namespace of the same name can only be a leftover of an
            // earlier run that had our pid and crashed.
            let _ = run_bounded(cmd("ip", &["netns", "del", &ns]), WAIT);
            check(cmd("ip", &["netns", "add", &ns]));
            lan.created.push(ns.clone());
            check(cmd("ip", &["-n", &ns, "link", "set", "lo", "up"]));
        }
        for (i, c) in lan.clients.clone().iter().enumerate() {
            // Created directly inside the namespaces: the host never sees
            // them. The names stay under 15 characters.
            let (vs, vc) = (format!("v{pid}{tag}s{i}"), format!("v{pid}{tag}c{i}"));
            assert!(vs.len() <= 15, "veth name {vs} too long");
            check(cmd(
                "ip",
                &["link", "add", "name", &vs, "netns", &lan.server, "type", "veth", "peer", "name", &vc, "netns", c],
            ));
            check(cmd("ip", &["-n", &lan.server, "addr", "add", &format!("{}/24", lan.server_ip(i)), "dev", &vs]));
            check(cmd("ip", &["-n", c, "addr", "add", &format!("{}/24", lan.client_ip(i)), "dev", &vc]));
            check(cmd("ip", &["-n", &lan.server, "link", "set", &vs, "up"]));
            check(cmd("ip", &["-n", c, "link", "set", &vc, "up"]));
        }
        if n > 0 {
            // A default route, as a real host has: without the virtual
            // LAN's rules, a connection to a VIP would then time out (the
            // client host drops it) rather than fail with "network
            // unreachable", so "refused at once" proves the rules work.
            check(cmd("ip", &["-n", &lan.server, "route", "add", "default", "via", &lan.client_ip(0).to_string()]));
        }
        lan
    }

    pub(crate) fn server_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net.0, self.net.1 + i as u8, 1)
    }

    pub(crate) fn client_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net.0, self.net.1 + i as u8, 2)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.created {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

// ------------------------------------------------------------------ UDP echo

const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
"#;

/// A UDP echo on 127.0.0.1:`port` of `ns`.
pub(crate) fn udp_echo(ns: &str, dir: &TempDir, port: u16) -> Proc {
    let mut p = Proc::spawn_named("udp echo", in_ns(ns, python(), &["-u", "-c", UDP_ECHO, &port.to_string()]), &dir.0);
    p.expect(Src::Out, "`ready`", |l| l == "ready");
    p
}

const UDP_PROBE: &str = r#"
import os, socket, sys
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fixed = [1, 2, 3, 17, 100, 512, 1200, 1400, 1472, 1473, 1500, 2000, 4096, 8192, 9000, 16384, 32768, 50000, 65000, 65507]
sizes = (fixed + [1 + (i * 7919) % 3000 for i in range(count)])[:count]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.connect((ip, port))
s.settimeout(2.0)
retries = 0
for i, n in enumerate(sizes):
    payload = bytes([i]) + os.urandom(n - 1)
    for attempt in range(5):
        s.send(payload)
        try:
            while True:
                d = s.recv(70000)
                if d == payload:
                    break
                if d[:1] and d[0] < i:
                    continue  # a late echo of a retransmission
                print("datagram %d (%d bytes): echo differs (%d bytes)" % (i, n, len(d)))
                sys.exit(1)
            break
        except socket.timeout:
            retries += 1
    else:
        print("datagram %d (%d bytes): no echo after 5 tries" % (i, n))
        sys.exit(1)
print("ok %d datagrams, %d bytes, %d retries" % (len(sizes), sum(sizes), retries))
"#;

/// Sends `count` datagrams of various sizes (1 to 65507 bytes) to
/// `ip:port` from `ns`; each must come back unchanged.
pub(crate) fn udp_echo_probe(ns: &str, ip: Ipv4Addr, port: u16, count: usize) {
    let out = run_bounded(
        in_ns(ns, python(), &["-c", UDP_PROBE, &ip.to_string(), &port.to_string(), &count.to_string()]),
        WAIT * 2,
    );
    assert_eq!(out.code, Some(0), "udp echo via {ip}:{port}: {}", out.show());
    assert!(out.stdout.starts_with(&format!("ok {count} datagrams")), "{}", out.show());
    eprintln!("udp {ip}:{port}: {}", out.stdout.trim());
}
