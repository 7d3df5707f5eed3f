//! Client domains published to a real etcd (started here, on free loopback
//! ports) as SkyDNS records for CoreDNS's etcd plugin: written when a
//! client connects, deleted when it leaves, revoked at a clean stop,
//! expired when opennotrd dies, restored after etcd restarts (or loses its
//! data), and published once etcd comes up if it was down at start.
//!
//! Needs `/usr/bin/etcd` (Debian package `etcd-server`; CI installs it).
//! etcd is read back through its JSON gateway.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opennotr_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The prefix CoreDNS reads (the default of `resolver.etcdPrefix`).
const PREFIX: &str = "/skydns";
/// `resolver.leaseTtl` of the test servers, seconds.
const LEASE_TTL: u64 = 5;
/// Bound of waiting for etcd to change (lease expiry, reconnection).
const ETCD_WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ etcd

/// A single-member etcd on loopback, killed on drop.
struct Etcd {
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("free port address").port()
}

fn etcd_binary() -> PathBuf {
    opennotr_tests::tools::need("etcd")
}

impl Etcd {
    /// Ports for an etcd, not started yet.
    fn ports() -> Etcd {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "opennotr-etcd-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create the etcd test directory");
        Etcd { client_port: free_port(), peer_port: free_port(), dir, child: None }
    }

    /// An etcd, started and ready.
    async fn start() -> Etcd {
        let mut e = Etcd::ports();
        e.launch().await;
        e
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts etcd (again) on the same ports and data directory, and waits
    /// until it answers.
    async fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open the etcd log");
        let child = Command::new(etcd_binary())
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((200, body)) = http(self.client_port, "GET", "/health", "").await {
                if body.contains("true") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited ({status}) at start:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                panic!("etcd not ready within 20 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills etcd at once (SIGKILL), as a crash would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Deletes etcd's data (while it is not running).
    fn wipe(&self) {
        assert!(self.child.is_none(), "wipe a running etcd");
        std::fs::remove_dir_all(self.dir.join("data")).expect("delete the etcd data");
    }

    /// A JSON gateway call; `None` if etcd does not answer.
    async fn call(&self, path: &str, body: Value) -> Option<Value> {
        let (status, text) = http(self.client_port, "POST", path, &body.to_string()).await?;
        assert_eq!(status, 200, "{path} {body}: {text}");
        serde_json::from_str(&text).ok()
    }

    /// Every record under the prefix: key → (value, lease).
    async fn records(&self) -> BTreeMap<String, (Value, i64)> {
        let (start, end) = (format!("{PREFIX}/"), format!("{PREFIX}0"));
        let v = self
            .call("/v3/kv/range", json!({ "key": b64(start.as_bytes()), "range_end": b64(end.as_bytes()) }))
            .await
            .unwrap_or_else(|| panic!("etcd does not answer:\n{}", self.log_tail()));
        let mut out = BTreeMap::new();
        for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
            let key = String::from_utf8(unb64(kv["key"].as_str().unwrap_or(""))).expect("UTF-8 key");
            let value = serde_json::from_slice(&unb64(kv["value"].as_str().unwrap_or("")))
                .unwrap_or_else(|e| panic!("record {key} is not JSON: {e}"));
            out.insert(key, (value, int(&kv["lease"])));
        }
        out
    }

    /// Writes a record without a lease.
    async fn put(&self, key: &str, value: Value) {
        self.call("/v3/kv/put", json!({ "key": b64(key.as_bytes()), "value": b64(value.to_string().as_bytes()) }))
            .await
            .expect("etcd answers");
    }

    /// Remaining seconds of a lease, -1 if it does not exist.
    async fn lease_ttl(&self, id: i64) -> i64 {
        int(&self.call("/v3/lease/timetolive", json!({ "ID": id.to_string() })).await.expect("etcd answers")["TTL"])
    }

    /// Polls until the records under the prefix are `want`'s keys with
    /// their hosts, failing after [`ETCD_WAIT`].
    async fn wait_records(&self, what: &str, want: &BTreeMap<String, String>) -> BTreeMap<String, (Value, i64)> {
        let deadline = Instant::now() + ETCD_WAIT;
        loop {
            let now = self.records().await;
            let hosts: BTreeMap<String, String> =
                now.iter().map(|(k, (v, _))| (k.clone(), v["host"].as_str().unwrap_or("").to_owned())).collect();
            if hosts == *want {
                return now;
            }
            if Instant::now() > deadline {
                panic!("timed out after {ETCD_WAIT:?} waiting for {what}: want {want:#?}, etcd has {now:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.0 exchange (the answer ends at EOF, never chunked).
async fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(local(port)).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c).unwrap_or_else(|| panic!("not base64: {s}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A gateway integer: a string or a number, absent = 0.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not an integer: {s}")),
        Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an integer: {n}")),
        _ => 0,
    }
}

// --------------------------------------------------------------- opennotr

/// A test server's configuration publishing to `endpoint`.
fn server_config(endpoint: &str, public_ip: &str) -> ServerConfig {
    let yaml = ServerSpec::default().yaml().replacen("server:\n", &format!("server:\n  publicIP: {public_ip}\n"), 1)
        + &format!("resolver:\n  etcdEndpoints: [\"{endpoint}\"]\n  leaseTtl: {LEASE_TTL}\n");
    opennotr_config::parse_server(&yaml).unwrap_or_else(|e| panic!("bad test server config: {e}\n{yaml}"))
}

/// The owner field the server writes (`opennotrd <zone> <listen> <public IPs>`).
fn owner(cfg: &ServerConfig) -> String {
    let public: Vec<String> = cfg.server.public_ips.iter().map(|a| a.to_string()).collect();
    format!("opennotrd {} {} {}", cfg.server.domain, cfg.server.listen, public.join(","))
}

/// Where CoreDNS looks for `domain`.
fn key_of(domain: &str) -> String {
    let mut labels: Vec<&str> = domain.split('.').collect();
    labels.reverse();
    format!("{PREFIX}/{}", labels.join("/"))
}

fn want(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, h)| (k.to_string(), h.to_string())).collect()
}

async fn connect(server: std::net::SocketAddr, domain: Option<&str>) -> (TestClient, Registration) {
    let mut spec = ClientSpec::new(server);
    spec.domain = domain.map(str::to_owned);
    let mut client = TestClient::start(&spec);
    let reg = client.connected().await;
    (client, reg)
}

/// An opennotrd on a runtime of its own, so that it can die at once:
/// dropping the runtime drops every task, and nothing runs a clean stop.
struct Doomed {
    rt: Option<tokio::runtime::Runtime>,
}

impl Doomed {
    async fn start(cfg: ServerConfig) -> (Doomed, std::net::SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the server");
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            let server = Server::bind(cfg, &builtin_plugins()).await.unwrap_or_else(|e| panic!("server: {e}"));
            let _ = tx.send(server.local_addr());
            let _ = server.run(CancellationToken::new()).await;
        });
        let addr = within(WAIT, "the server to bind", rx).await.expect("server bound");
        (Doomed { rt: Some(rt) }, addr)
    }

    /// Everything of the server stops where it is.
    fn crash(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        self.crash();
    }
}

// ------------------------------------------------------------------ tests

/// (1) the record in CoreDNS's format, only for the client domain;
/// (2) removed when the client leaves; a clean stop revokes the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_domain_is_published_and_removed() {
    run_test(async {
        let etcd = Etcd::start().await;
        let cfg = server_config(&etcd.endpoint(), "127.0.0.2");
        let owner = owner(&cfg);
        let server = TestServer::start_with(cfg, &builtin_plugins()).await;

        let (client, reg) = connect(server.addr, None).await;
        assert!(reg.domain.ends_with(ZONE), "{}", reg.domain);
        let key = key_of(&reg.domain);
        let label = reg.domain.split('.').next().unwrap_or_default();
        assert_eq!(key, format!("/skydns/test/notr/e2e/{label}"));
        // Only the client's domain (no VIP names), with the public address.
        let records = etcd.wait_records("the client's record", &want(&[(&key, "127.0.0.2")])).await;
        let (value, lease) = &records[&key];
        assert_eq!(*value, json!({ "host": "127.0.0.2", "ttl": 60, "opennotr": owner }));
        assert_ne!(*lease, 0, "the record hangs on a lease");
        let left = etcd.lease_ttl(*lease).await;
        assert!(left > 0 && left <= LEASE_TTL as i64, "lease TTL {left}");

        client.stop().await;
        etcd.wait_records("the record to go with the client", &want(&[])).await;

        let (_client, reg2) = connect(server.addr, Some("second.e2e.notr.test")).await;
        assert_eq!(reg2.domain, "second.e2e.notr.test");
        let records = etcd
            .wait_records("the second client's record", &want(&[("/skydns/test/notr/e2e/second", "127.0.0.2")]))
            .await;
        let lease2 = records["/skydns/test/notr/e2e/second"].1;
        assert_eq!(lease2, *lease, "one lease for all records");

        // A clean stop revokes the lease: nothing is left, at once.
        server.stop().await;
        assert_eq!(etcd.records().await, BTreeMap::new());
        assert_eq!(etcd.lease_ttl(*lease).await, -1, "the lease is revoked");
    })
    .await
}

/// (3) opennotrd dies (no clean stop, no revocation): its records vanish
/// when the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_when_the_server_dies() {
    run_test(async {
        let etcd = Etcd::start().await;
        let (mut server, addr) = Doomed::start(server_config(&etcd.endpoint(), "127.0.0.2")).await;
        let (mut client, reg) = connect(addr, None).await;
        let key = key_of(&reg.domain);
        let records = etcd.wait_records("the client's record", &want(&[(&key, "127.0.0.2")])).await;
        let lease = records[&key].1;

        server.crash();
        client.disconnected().await;
        // Nobody deleted or revoked anything...
        assert_eq!(etcd.records().await.len(), 1, "the record outlives the server until its lease expires");
        assert!(etcd.lease_ttl(lease).await > 0);
        // ...and the lease expiry removes it.
        let died = Instant::now();
        etcd.wait_records("the lease to expire", &want(&[])).await;
        assert_eq!(etcd.lease_ttl(lease).await, -1);
        eprintln!("records gone {:?} after the crash (lease TTL {LEASE_TTL} s)", died.elapsed());
        client.stop().await;
    })
    .await
}

/// (4) etcd is killed and restarted: the records follow the clients that
/// came and went meanwhile; restarted with no data at all, everything is
/// published again on a new lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_restored_after_etcd_restarts() {
    run_test(async {
        let mut etcd = Etcd::start().await;
        let server = TestServer::start_with(server_config(&etcd.endpoint(), "127.0.0.2"), &builtin_plugins()).await;
        let (_a, a) = connect(server.addr, Some("a.e2e.notr.test")).await;
        let (b_client, b) = connect(server.addr, Some("b.e2e.notr.test")).await;
        let ip = "127.0.0.2";
        let ab = want(&[(&key_of(&a.domain), ip), (&key_of(&b.domain), ip)]);
        etcd.wait_records("a and b", &ab).await;

        // Down: b leaves, c comes.
        etcd.kill();
        b_client.stop().await;
        let (_c, c) = connect(server.addr, Some("c.e2e.notr.test")).await;
        let h = server.handle.clone();
        wait_until("the server to have a and c", || h.sessions().len() == 2).await;

        etcd.launch().await;
        let ac = want(&[(&key_of(&a.domain), ip), (&key_of(&c.domain), ip)]);
        let records = etcd.wait_records("a and c after the restart", &ac).await;
        let lease = records[&key_of(&a.domain)].1;
        assert!(records.values().all(|(_, l)| *l == lease), "one lease: {records:?}");
        assert!(etcd.lease_ttl(lease).await > 0);

        // Down again, and back without its data (lease and records gone).
        etcd.kill();
        etcd.wipe();
        etcd.launch().await;
        let records = etcd.wait_records("a and c on a blank etcd", &ac).await;
        let new_lease = records[&key_of(&a.domain)].1;
        assert!(etcd.lease_ttl(new_lease).await > 0, "a live lease");
        server.stop().await;
        assert_eq!(etcd.records().await, BTreeMap::new());
    })
    .await
}

/// (5) etcd down when opennotrd starts: clients connect as usual, and the
/// records appear once etcd is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_while_etcd_is_down() {
    run_test(async {
        let mut etcd = Etcd::ports();
        let server = TestServer::start_with(server_config(&etcd.endpoint(), "127.0.0.2"), &builtin_plugins()).await;
        let started = Instant::now();
        let (_client, reg) = within(Duration::from_secs(3), "a prompt connection", connect(server.addr, None)).await;
        eprintln!("connected in {:?} with etcd down", started.elapsed());

        etcd.launch().await;
        etcd.wait_records("the record once etcd is up", &want(&[(&key_of(&reg.domain), "127.0.0.2")])).await;
        server.stop().await;
        assert_eq!(etcd.records().await, BTreeMap::new());
    })
    .await
}

/// At start, records of ours (same owner) that are not live are deleted;
/// records of anyone else are never touched, even where a client's domain
/// wants the key. Several public addresses: one sub-key each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_records_of_ours_go_and_others_stay() {
    run_test(async {
        let etcd = Etcd::start().await;
        let cfg = server_config(&etcd.endpoint(), "[\"127.0.0.2\", \"::1\"]");
        let owner = owner(&cfg);
        let stale = json!({ "host": "127.0.0.9", "ttl": 60, "opennotr": owner });
        let foreign = json!({ "host": "10.0.0.1" });
        let other = json!({ "host": "10.0.0.2", "opennotr": "opennotrd elsewhere 0.0.0.0:10100" });
        etcd.put("/skydns/test/notr/e2e/stale", stale.clone()).await;
        etcd.put("/skydns/test/notr/e2e/gone/x1", stale).await;
        etcd.put("/skydns/test/notr/e2e/foreign", foreign.clone()).await;
        etcd.put("/skydns/test/notr/e2e/other", other.clone()).await;
        etcd.put("/skydns/test/notr/e2e/taken/x1", foreign.clone()).await;

        let server = TestServer::start_with(cfg, &builtin_plugins()).await;
        let (_taken, _) = connect(server.addr, Some("taken.e2e.notr.test")).await;
        let (_client, reg) = connect(server.addr, None).await;
        let key = key_of(&reg.domain);
        let others = [
            ("/skydns/test/notr/e2e/foreign", "10.0.0.1"),
            ("/skydns/test/notr/e2e/other", "10.0.0.2"),
            ("/skydns/test/notr/e2e/taken/x1", "10.0.0.1"),
        ];
        let mut expected = want(&others);
        expected.extend(want(&[
            ("/skydns/test/notr/e2e/taken/x2", "::1"),
            (&format!("{key}/x1"), "127.0.0.2"),
            (&format!("{key}/x2"), "::1"),
        ]));
        let records = etcd.wait_records("stale ones gone, ours written, others kept", &expected).await;
        assert_eq!(records["/skydns/test/notr/e2e/foreign"].0, foreign);
        assert_eq!(records["/skydns/test/notr/e2e/taken/x1"].0, foreign);
        assert_eq!(records["/skydns/test/notr/e2e/other"].0, other);
        assert_eq!(records[&format!("{key}/x2")].0, json!({ "host": "::1", "ttl": 60, "opennotr": owner }));

        server.stop().await;
        let left: BTreeMap<String, String> = etcd
            .records()
            .await
            .into_iter()
            .map(|(k, (v, _))| (k, v["host"].as_str().unwrap_or("").to_owned()))
            .collect();
        assert_eq!(left, want(&others), "only other owners' records are left");
    })
    .await
}

#[test]
fn base64_helpers_round_trip() {
    for s in ["", "a", "ab", "abc", "/skydns/", "{\"host\":\"127.0.0.2\"}"] {
        assert_eq!(unb64(&b64(s.as_bytes())), s.as_bytes(), "{s}");
    }
    assert_eq!(b64(b"/skydns/a"), "L3NreWRucy9h");
    assert_eq!(b64(b"x"), "eA==");
}

// ---------------------------------------------------------------- cluster

/// A test server that is node `node` of a cluster on `endpoint`, with a
/// lease of 2 s.
fn cluster_config(endpoint: &str, node: &str) -> ServerConfig {
    let yaml = ServerSpec::default().yaml()
        + &format!("cluster:\n  node: {node}\n  etcdEndpoints: [\"{endpoint}\"]\n  leaseTtl: 2\n  key: cluster-test-key-0123456789\n");
    opennotr_config::parse_server(&yaml).unwrap_or_else(|e| panic!("bad test server config: {e}\n{yaml}"))
}

/// The live nodes `server` sees, by name.
fn nodes(server: &ServerHandle) -> Vec<String> {
    server.cluster().map(|c| c.nodes.into_iter().map(|n| n.node).collect()).unwrap_or_default()
}

/// Nodes register under a lease and see each other; a node that dies
/// leaves when its lease expires, one that stops leaves at once; a second
/// process with a live node's name waits until the name is free, then
/// takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_join_see_each_other_and_leave() {
    run_test(async {
        let etcd = Etcd::start().await;
        let a = TestServer::start_with(cluster_config(&etcd.endpoint(), "node-a"), &builtin_plugins()).await;
        let (mut b, b_addr) = Doomed::start(cluster_config(&etcd.endpoint(), "node-b")).await;
        wait_until("node-a to see both nodes", || nodes(&a.handle) == ["node-a", "node-b"]).await;
        let view = a.handle.cluster().expect("a cluster node");
        assert_eq!(view.node, "node-a");
        assert!(view.registered && view.error.is_none(), "{view:?}");
        assert_eq!(view.nodes[0].advertise, a.addr.to_string(), "the control listener's address");
        assert_eq!(view.nodes[1].advertise, b_addr.to_string());

        // node-b dies: it leaves once its lease (2 s) expires.
        b.crash();
        wait_until("node-b's lease to expire", || nodes(&a.handle) == ["node-a"]).await;

        // A namesake of a live node waits...
        let namesake = TestServer::start_with(cluster_config(&etcd.endpoint(), "node-a"), &builtin_plugins()).await;
        let a_addr = a.addr.to_string();
        wait_until("the namesake to find the name held", || {
            namesake.handle.cluster().is_some_and(|c| c.held_by.as_deref() == Some(a_addr.as_str()))
        })
        .await;
        let held = namesake.handle.cluster().expect("a cluster node");
        assert!(!held.registered && held.nodes.is_empty(), "{held:?}");
        assert_eq!(nodes(&a.handle), ["node-a"]);
        assert_eq!(a.handle.cluster().map(|c| c.nodes[0].advertise.clone()), Some(a.addr.to_string()));
        // ...until the node stops (and revokes its lease): then it takes the name.
        a.stop().await;
        let addr = namesake.addr.to_string();
        wait_until("the namesake to take the name", || {
            namesake
                .handle
                .cluster()
                .is_some_and(|c| c.registered && c.nodes.len() == 1 && c.nodes[0].advertise == addr)
        })
        .await;
        namesake.stop().await;
    })
    .await
}

/// The node holding `domain`'s claim, as etcd says (`None`: no claim).
async fn claim_of(etcd: &Etcd, domain: &str) -> Option<String> {
    let key = format!("/opennotr/cluster/claims/domains/{domain}");
    let v = etcd.call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) })).await.expect("etcd answers");
    let kv = v["kvs"].as_array()?.first()?.clone();
    let claim: Value = serde_json::from_slice(&unb64(kv["value"].as_str()?)).ok()?;
    claim["node"].as_str().map(str::to_owned)
}

/// node-a of a cluster on `etcd`, joined, and a client of it holding
/// `domain` (claimed).
async fn node_a_with_client(etcd: &Etcd, domain: &str) -> (TestServer, TestClient) {
    let a = TestServer::start_with(cluster_config(&etcd.endpoint(), "node-a"), &builtin_plugins()).await;
    wait_until("node-a to join", || nodes(&a.handle) == ["node-a"]).await;
    let (x, _) = connect(a.addr, Some(domain)).await;
    assert_eq!(claim_of(etcd, domain).await.as_deref(), Some("node-a"));
    (a, x)
}

/// A domain is served by one node at a time: a client of another node
/// asking for it is refused (naming the holder) until the holder's client
/// leaves; then it gets it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_domain_claims_are_unique() {
    run_test(async {
        let etcd = Etcd::start().await;
        let a = TestServer::start_with(cluster_config(&etcd.endpoint(), "node-a"), &builtin_plugins()).await;
        let b = TestServer::start_with(cluster_config(&etcd.endpoint(), "node-b"), &builtin_plugins()).await;
        wait_until("both nodes to join", || nodes(&b.handle) == ["node-a", "node-b"]).await;
        let domain = "shop.e2e.notr.test";

        let (x, reg) = connect(a.addr, Some(domain)).await;
        assert_eq!(reg.domain, domain);
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-a"));
        wait_until("node-b to see node-a's claim", || {
            b.handle.cluster().is_some_and(|c| c.domains.iter().any(|d| d.domain == domain && d.node == "node-a"))
        })
        .await;

        let mut spec = ClientSpec::new(b.addr);
        spec.domain = Some(domain.into());
        let mut y = TestClient::start(&spec);
        let refused = y.wait_event("node-b to refuse the domain", |e| matches!(e, Event::Refused { .. })).await;
        let Event::Refused { code, message } = refused else { unreachable!() };
        assert_eq!(code, RefuseCode::DomainTaken);
        assert!(message.contains("node-a"), "{message}");
        assert!(b.handle.sessions().is_empty());

        // The holder leaves: its claim goes, and the waiting client gets the
        // domain on the other node.
        x.stop().await;
        let reg = y.connected().await;
        assert_eq!(reg.domain, domain);
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-b"));
        y.stop().await;
        wait_until("the claim to go with the last client", || a.handle.sessions().is_empty()).await;
        let deadline = Instant::now() + ETCD_WAIT;
        while claim_of(&etcd, domain).await.is_some() {
            assert!(Instant::now() < deadline, "the claim outlived its session");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        a.stop().await;
        b.stop().await;
    })
    .await
}

/// A node cut off from etcd for a whole lease TTL gives up its place: it
/// closes its sessions (their claims are gone) and refuses clients until
/// etcd is back; then its client comes back with its domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_stops_serving_its_claims() {
    run_test(async {
        let mut etcd = Etcd::start().await;
        let domain = "cut.e2e.notr.test";
        let (a, mut x) = node_a_with_client(&etcd, domain).await;

        etcd.kill();
        let reason = x.disconnected().await;
        assert!(reason.contains("lost its place in the cluster"), "{reason}");
        let refused = x.wait_event("a refusal while etcd is away", |e| matches!(e, Event::Refused { .. })).await;
        assert!(matches!(refused, Event::Refused { code: RefuseCode::ClusterUnavailable, .. }), "{refused:?}");

        etcd.launch().await;
        let reg = x.connected().await;
        assert_eq!(reg.domain, domain);
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-a"));
        x.stop().await;
        a.stop().await;
    })
    .await
}

/// `kill -9` of a node: its client, which lists both nodes, moves to the
/// other one and gets its domain back there once the dead node's lease
/// (and claim) expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_client_gets_its_domain_back_on_another_node() {
    run_test(async {
        let etcd = Etcd::start().await;
        let (mut a, a_addr) = Doomed::start(cluster_config(&etcd.endpoint(), "node-a")).await;
        let b = TestServer::start_with(cluster_config(&etcd.endpoint(), "node-b"), &builtin_plugins()).await;
        wait_until("both nodes to join", || nodes(&b.handle) == ["node-a", "node-b"]).await;
        let domain = "moves.e2e.notr.test";
        // Another client of node-a first: the moving ones' VIPs are not the
        // first of the pool, which node-b would draw anyway.
        let (_w, _) = connect(a_addr, Some("stays.e2e.notr.test")).await;
        let both = |spec: ClientSpec| {
            let yaml = spec
                .yaml()
                .replace(&format!("serverAddr: \"{a_addr}\""), &format!("serverAddr: \"{a_addr}, {}\"", b.addr));
            TestClient::start_config(opennotr_config::parse_client(&yaml).unwrap())
        };
        let mut x = both(ClientSpec::new(a_addr).domain(domain));
        let before = x.connected().await;
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-a"));
        // And one whose domain node-a drew.
        let mut y = both(ClientSpec::new(a_addr));
        let drawn = y.connected().await;

        a.crash();
        x.disconnected().await;
        let reg = x.connected().await;
        assert_eq!((reg.domain.as_str(), reg.vip), (domain, before.vip), "its domain and VIP back");
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-b"));
        y.disconnected().await;
        let reg = y.connected().await;
        assert_eq!((reg.domain, reg.vip), (drawn.domain, drawn.vip), "its drawn domain and VIP back");
        assert_eq!(b.handle.sessions().len(), 2);
        wait_until("node-a to leave with its lease", || nodes(&b.handle) == ["node-b"]).await;
        x.stop().await;
        y.stop().await;
        b.stop().await;
    })
    .await
}

/// Every node's embedded DNS answers for the domains of every node's
/// clients, with the address of the node that serves them; when the domain
/// moves, the answer follows. A domain with gateway forwards only is
/// answered with every node, since any node's gateway serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_dns_answers_with_the_node_holding_the_domain() {
    run_test(async {
        let etcd = Etcd::start().await;
        let node = |name: &str, public: &str| {
            let spec = ServerSpec {
                dns: Some(DnsSpec { public_ips: vec![public.into()], ..DnsSpec::default() }),
                ..Default::default()
            }
            .plugin("http", r#"{"listen": "127.0.0.1:0"}"#);
            let yaml = spec.yaml()
                + &format!("cluster:\n  node: {name}\n  etcdEndpoints: [\"{}\"]\n  leaseTtl: 2\n  key: cluster-test-key-0123456789\n", etcd.endpoint());
            opennotr_config::parse_server(&yaml).unwrap_or_else(|e| panic!("bad test server config: {e}\n{yaml}"))
        };
        let a = TestServer::start_with(node("node-a", "127.0.0.2"), &builtin_plugins()).await;
        let b = TestServer::start_with(node("node-b", "127.0.0.3"), &builtin_plugins()).await;
        let (a_dns, b_dns) = (a.dns.expect("node-a's DNS"), b.dns.expect("node-b's DNS"));
        let domain = "where.e2e.notr.test";
        let (x, _) = connect(a.addr, Some(domain)).await;
        assert_eq!(short(a_dns, domain, "A", false).await, ["127.0.0.2"]);
        // node-b learns of the claim at its next read of the cluster.
        within(WAIT, "node-b's DNS to answer for node-a's client", async {
            while short(b_dns, domain, "A", false).await != ["127.0.0.2"] {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert_eq!(short(b_dns, domain, "A", true).await, ["127.0.0.2"], "over TCP too");

        // The client moves to node-b: both answer with node-b.
        x.stop().await;
        let (_y, _) = connect(b.addr, Some(domain)).await;
        assert_eq!(short(b_dns, domain, "A", false).await, ["127.0.0.3"]);
        within(WAIT, "node-a's DNS to follow the domain", async {
            while short(a_dns, domain, "A", false).await != ["127.0.0.3"] {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;

        // A domain with gateway forwards only is served by every node (node
        // links carry its visitors): both answer with both nodes.
        let web = "web.e2e.notr.test";
        let mut z = TestClient::start(&ClientSpec::new(a.addr).domain(web).forward(http_fwd(9)));
        z.connected().await;
        for dns in [a_dns, b_dns] {
            within(WAIT, "the DNS to answer with every node", async {
                loop {
                    let mut got = short(dns, web, "A", false).await;
                    got.sort();
                    if got == ["127.0.0.2", "127.0.0.3"] {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
        }
    })
    .await
}

/// etcd loses its data (restarted empty): the node's lease and key are
/// gone, so it gives up its place (its session closes, its claims are
/// gone with the data) and joins again under a new lease; its client comes
/// back with its domain, claimed anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_etcd_lost_its_data_rejoins_and_claims_anew() {
    run_test(async {
        let mut etcd = Etcd::start().await;
        let domain = "wiped.e2e.notr.test";
        let (a, mut x) = node_a_with_client(&etcd, domain).await;

        etcd.kill();
        etcd.wipe();
        etcd.launch().await;
        let reason = x.disconnected().await;
        assert!(reason.contains("lost its place in the cluster"), "{reason}");
        let reg = x.connected().await;
        assert_eq!(reg.domain, domain);
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-a"));
        let view = a.handle.cluster().expect("a cluster node");
        assert!(view.registered && view.error.is_none(), "the client's claim needs the place back: {view:?}");
        x.stop().await;
        a.stop().await;
    })
    .await
}

// ------------------------------------------------------------ node links

/// A cluster node on `etcd` with the `http` gateway, the TLS port (`https`
/// with `pem`'s certificate for `*.ZONE`, `tls` beside it) and `h2c`, each
/// on a free loopback port ([`gateway_ports`]), and `key` as `cluster.key`.
fn gateway_node(etcd: &Etcd, node: &str, pem: &(PathBuf, PathBuf), key: &str) -> ServerConfig {
    let https = format!(r#"{{"listen": "127.0.0.1:0", "cert": "{}", "key": "{}"}}"#, pem.0.display(), pem.1.display());
    let yaml = ServerSpec::default()
        .plugin("http", r#"{"listen": "127.0.0.1:0"}"#)
        .plugin("https", &https)
        .plugin("tls", r#"{"listen": "127.0.0.1:0"}"#)
        .plugin("h2c", r#"{"listen": "127.0.0.1:0"}"#)
        .yaml()
        + &format!(
            "cluster:\n  node: {node}\n  etcdEndpoints: [\"{}\"]\n  leaseTtl: 2\n  key: {key}\n",
            etcd.endpoint()
        );
    opennotr_config::parse_server(&yaml).unwrap_or_else(|e| panic!("bad test server config: {e}\n{yaml}"))
}

/// The port `server`'s gateway listener `kind` (`http`, `tls`, `h2c`) is
/// bound to, as its metrics say (a cluster node binds them at start).
async fn gateway_port(server: &TestServer, kind: &str) -> u16 {
    let prefix = format!("opennotr_gateway_connections{{port=\"{kind}\",listen=\"127.0.0.1:");
    within(WAIT, "the gateway listener to be bound", async {
        loop {
            let m = server.handle.metrics_text();
            let port = m.lines().find_map(|l| l.strip_prefix(&prefix)?.split('"').next()?.parse::<u16>().ok());
            if let Some(p) = port.filter(|p| *p != 0) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The `http`, TLS and `h2c` ports of a [`gateway_node`].
async fn gateway_ports(server: &TestServer) -> (u16, u16, u16) {
    (gateway_port(server, "http").await, gateway_port(server, "tls").await, gateway_port(server, "h2c").await)
}

/// A directory `label` with a self-signed certificate for `*.ZONE`: the
/// directory, and the certificate's and key's files.
fn self_signed(label: &str) -> (PathBuf, (PathBuf, PathBuf)) {
    let dir = std::env::temp_dir().join(format!("opennotr-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec![format!("*.{ZONE}")]).unwrap();
    let pem = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&pem.0, cert.cert.pem()).unwrap();
    std::fs::write(&pem.1, cert.signing_key.serialize_pem()).unwrap();
    (dir, pem)
}

/// A service answering every HTTP/1.1 request with the request's head.
async fn echo_head_service() -> Service {
    tcp_service(|s| async move {
        let (r, mut w) = tokio::io::split(s);
        let mut r = tokio::io::BufReader::new(r);
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                head += &line;
            }
            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}", head.len());
            if w.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A GET of `http://host/` on `port`: the status line and the body.
async fn get_via(port: u16, host: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to a gateway");
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let resp = String::from_utf8_lossy(&read_until_closed(&mut s).await).to_string();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// curl over TLS to `https://domain/` on `port` (loopback), trusting `ca`:
/// the HTTP version, then the body.
async fn curl_https(ca: &std::path::Path, domain: &str, port: u16, http2: bool) -> String {
    let resolve = format!("{domain}:{port}:127.0.0.1");
    let out = tokio::process::Command::new(opennotr_tests::tools::need("curl"))
        .args(["-sS", "--noproxy", "*", "--max-time", "20", "--resolve", &resolve, "--cacert"])
        .arg(ca)
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["-w", "%{http_version}\n"])
        .arg(format!("https://{domain}:{port}/"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "curl failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let (body, version) = text.trim_end().rsplit_once('\n').unwrap_or(("", &text));
    format!("{version}\n{body}")
}

/// Any node's gateway serves any domain of the cluster: a visitor of
/// node-a, for a domain whose client is on node-b, is carried to node-b
/// over a node link and served there (on `http` by its first request's
/// `Host`, on the TLS port by SNI, with HTTP/1.1 and HTTP/2, on the `h2c`
/// port by the first HEADERS block, with a real gRPC client), with its own
/// address for the service. A node whose `cluster.key` differs cannot link
/// (its visitor gets a 502), and a name no node serves is not carried.
/// Every node's sessions are read over the links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_nodes_gateway_serves_any_domain() {
    run_test(async {
        let etcd = Etcd::start().await;
        let (dir, pem) = self_signed("links");
        let key = "cluster-test-key-0123456789";
        let a = TestServer::start_with(gateway_node(&etcd, "node-a", &pem, key), &builtin_plugins()).await;
        let b = TestServer::start_with(gateway_node(&etcd, "node-b", &pem, key), &builtin_plugins()).await;
        let c =
            TestServer::start_with(gateway_node(&etcd, "node-c", &pem, "another-key-0123456789"), &builtin_plugins())
                .await;
        wait_until("the nodes to join", || nodes(&a.handle) == ["node-a", "node-b", "node-c"]).await;
        let (pa, pb, pc) = (gateway_ports(&a).await, gateway_ports(&b).await, gateway_ports(&c).await);

        let svc = echo_head_service().await;
        let domain = format!("shop.{ZONE}");
        let https_fwd = Fwd { protocol: "https".into(), public: 0, local: svc.addr.port() };
        let spec = ClientSpec::new(b.addr).domain(&domain).forward(http_fwd(svc.addr.port())).forward(https_fwd);
        let mut x = TestClient::start(&spec);
        x.connected().await;
        for n in [&a, &c] {
            wait_until("the other nodes to see node-b's claim", || {
                n.handle.cluster().is_some_and(|v| v.domains.iter().any(|d| d.domain == domain && d.node == "node-b"))
            })
            .await;
        }

        // http, through node-b itself and through node-a.
        for port in [pb.0, pa.0] {
            let (status, body) = get_via(port, &domain).await;
            let body = body.to_ascii_lowercase();
            assert_eq!(status, "HTTP/1.1 200 OK", "via port {port}: {body}");
            assert!(body.contains(&format!("host: {domain}")), "{body}");
            assert!(body.contains("x-forwarded-for: 127.0.0.1"), "the visitor's own address: {body}");
        }
        // https, terminated by node-b with its certificate, through node-a.
        for http2 in [false, true] {
            let got = curl_https(&pem.0, &domain, pa.1, http2).await.to_ascii_lowercase();
            let want = if http2 { "2\n" } else { "1.1\n" };
            assert!(got.starts_with(want) && got.contains(&format!("host: {domain}")), "{got}");
            assert!(got.contains("x-forwarded-proto: https"), "{got}");
        }

        // h2c: a real gRPC client through node-a's h2c port, to a client of
        // node-b with an h2c forward (carried by its first HEADERS block).
        let (_grpc, grpc_port) = grpc_echo_server().await;
        let rpc = format!("rpc.{ZONE}");
        let h2c = Fwd { protocol: "h2c".into(), public: 0, local: grpc_port };
        let mut y = TestClient::start(&ClientSpec::new(b.addr).domain(&rpc).forward(h2c));
        y.connected().await;
        wait_until("node-a to see node-b's h2c claim", || {
            a.handle.cluster().is_some_and(|v| v.domains.iter().any(|d| d.domain == rpc && d.node == "node-b"))
        })
        .await;
        run_grpc_client(pa.2, &rpc, None).await;
        // And on node-b's own h2c port, where it is served locally (after
        // the same read of its first HEADERS block).
        run_grpc_client(pb.2, &rpc, None).await;

        // A name nobody serves is node-a's own 404, not carried.
        let (status, _) = get_via(pa.0, &format!("nobody.{ZONE}")).await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        // node-c's key differs: node-b does not accept its link.
        let (status, body) = get_via(pc.0, &domain).await;
        assert_eq!(status, "HTTP/1.1 502 Bad Gateway", "{body}");
        assert!(body.contains("node-b"), "{body}");

        // Every node's sessions, from node-a: node-b's over its link;
        // node-c, whose key differs, does not answer.
        let all = a.handle.cluster_sessions().await.expect("a cluster node");
        let by: Vec<(&str, usize, bool)> =
            all.iter().map(|n| (n.node.as_str(), n.sessions.len(), n.error.is_some())).collect();
        assert_eq!(by, [("node-a", 0, false), ("node-b", 2, false), ("node-c", 0, true)], "{all:?}");
        assert_eq!(all[1].sessions[0].domain, domain);

        let metrics = |s: &TestServer| s.handle.metrics_text();
        let carried = |m: &str, way: &str| metric(m, &format!("opennotr_gateway_carried_total{{way=\"{way}\"}}"));
        let (ma, mb, mc) = (metrics(&a), metrics(&b), metrics(&c));
        assert!(carried(&ma, "out").is_some_and(|n| n >= 4), "{ma}");
        assert_eq!(carried(&ma, "out"), carried(&mb, "in"), "{ma}\n{mb}");
        assert_eq!(carried(&mc, "failed"), Some(1), "{mc}");

        x.stop().await;
        y.stop().await;
        for s in [a, b, c] {
            s.stop().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}

/// A client whose path to its node goes silent moves to another node at
/// once: that node asks the first (which has not noticed yet) to end the
/// client's session, and gets the client's domain as soon as it has;
/// the client is never refused `domain_taken` on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_node_takes_its_session_over() {
    run_test(async {
        let etcd = Etcd::start().await;
        // node-a would notice a silent client only after a minute.
        let mut cfg = cluster_config(&etcd.endpoint(), "node-a");
        cfg.server.keepalive_interval = Duration::from_secs(30);
        cfg.server.keepalive_timeout = Duration::from_secs(60);
        let a = TestServer::start_with(cfg, &builtin_plugins()).await;
        let b = TestServer::start_with(cluster_config(&etcd.endpoint(), "node-b"), &builtin_plugins()).await;
        wait_until("both nodes to join", || nodes(&b.handle) == ["node-a", "node-b"]).await;
        let domain = "mover.e2e.notr.test";
        let proxy = Proxy::start(a.addr).await;
        let mut spec = ClientSpec::new(proxy.addr).domain(domain);
        spec.keepalive = Some((0.2, 1.0));
        spec.handshake_timeout = Some(2.0);
        let yaml = spec.yaml().replace(
            &format!("serverAddr: \"{}\"", proxy.addr),
            &format!("serverAddr: \"{}, {}\"", proxy.addr, b.addr),
        );
        let mut x = TestClient::start_config(opennotr_config::parse_client(&yaml).unwrap());
        x.connected().await;
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-a"));

        // The path to node-a goes silent: the client gives up on it and
        // comes to node-b, which takes its session over from node-a.
        proxy.set_blackhole(true);
        proxy.freeze_all();
        x.disconnected().await;
        let e =
            x.wait_event("the client's next step", |e| matches!(e, Event::Connected(_) | Event::Refused { .. })).await;
        let Event::Connected(reg) = e else { panic!("refused on the way: {e:?}") };
        assert_eq!(reg.domain, domain);
        assert_eq!(claim_of(&etcd, domain).await.as_deref(), Some("node-b"));
        assert!(a.handle.sessions().is_empty(), "node-a still holds the client's session");
        x.stop().await;
        a.stop().await;
        b.stop().await;
    })
    .await
}

/// etcd restarts (with its data): nothing is lost. The nodes keep their
/// places (etcd keeps leases across a restart), the client its session
/// and claims, and a visitor of another node's gateway is served all
/// along, during the outage too (routes are kept in memory); a client that
/// comes while etcd is down is refused `cluster_unavailable` and gets its
/// domain once etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_loses_nothing() {
    run_test(async {
        let mut etcd = Etcd::start().await;
        let (dir, pem) = self_signed("restart");
        let key = "cluster-test-key-0123456789";
        let node = |name: &str| {
            let mut cfg = gateway_node(&etcd, name, &pem, key);
            cfg.cluster.as_mut().unwrap().lease_ttl = Duration::from_secs(10);
            cfg
        };
        let a = TestServer::start_with(node("node-a"), &builtin_plugins()).await;
        let b = TestServer::start_with(node("node-b"), &builtin_plugins()).await;
        let (pa, pb) = (gateway_ports(&a).await, gateway_ports(&b).await);
        wait_until("both nodes to join", || nodes(&b.handle) == ["node-a", "node-b"]).await;
        let svc = echo_head_service().await;
        let domain = format!("steady.{ZONE}");
        let mut x = TestClient::start(&ClientSpec::new(a.addr).domain(&domain).forward(http_fwd(svc.addr.port())));
        x.connected().await;
        wait_until("node-b to see node-a's claim", || {
            b.handle.cluster().is_some_and(|v| v.domains.iter().any(|d| d.domain == domain))
        })
        .await;
        assert_eq!(get_via(pb.0, &domain).await.0, "HTTP/1.1 200 OK");

        etcd.kill();
        // Down: visitors are served from what the nodes know; a new client
        // cannot claim its domain.
        assert_eq!(get_via(pb.0, &domain).await.0, "HTTP/1.1 200 OK", "during the outage");
        let late = format!("late.{ZONE}");
        let mut y = TestClient::start(&ClientSpec::new(b.addr).domain(&late).forward(http_fwd(svc.addr.port())));
        let e = y.wait_event("the late client to be refused", |e| matches!(e, Event::Refused { .. })).await;
        assert!(matches!(e, Event::Refused { code: RefuseCode::ClusterUnavailable, .. }), "{e:?}");

        etcd.launch().await;
        let reg = y.connected().await;
        assert_eq!(reg.domain, late);
        assert_eq!(claim_of(&etcd, &domain).await.as_deref(), Some("node-a"), "the claim survived");
        assert_eq!(claim_of(&etcd, &late).await.as_deref(), Some("node-b"));
        assert!(x.pending_events().iter().all(|e| !matches!(e, Event::Disconnected { .. })), "the client was cut");
        wait_until("node-a to see node-b's new claim", || {
            a.handle.cluster().is_some_and(|v| v.domains.iter().any(|d| d.domain == late))
        })
        .await;
        for (port, name) in [(pa.0, &late), (pb.0, &domain)] {
            assert_eq!(get_via(port, name).await.0, "HTTP/1.1 200 OK", "{name} through the other node");
        }
        x.stop().await;
        y.stop().await;
        a.stop().await;
        b.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}

/// A GET of `http://host/` on the keep-alive connection `s`: what came
/// back first (nothing when the connection was closed).
async fn ask_keep_alive(s: &mut TcpStream, host: &str) -> String {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("an answer in time").unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// A connection carried to a node counts under that node's gateway caps
/// too, by the visitor's own address: with `maxConnectionsPerIp: 1` on
/// node-b, a visitor holding one connection through node-a gets a second
/// one closed, whichever node it comes through, until the first ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carried_connections_count_under_the_serving_nodes_caps() {
    run_test(async {
        let etcd = Etcd::start().await;
        let node = |name: &str, http: &str| {
            let yaml = ServerSpec::default().plugin("http", http).yaml()
                + &format!(
                    "cluster:\n  node: {name}\n  etcdEndpoints: [\"{}\"]\n  leaseTtl: 2\n  key: cluster-test-key-0123456789\n",
                    etcd.endpoint()
                );
            opennotr_config::parse_server(&yaml).unwrap_or_else(|e| panic!("bad test server config: {e}\n{yaml}"))
        };
        let a = TestServer::start_with(node("node-a", r#"{"listen": "127.0.0.1:0"}"#), &builtin_plugins()).await;
        let capped = r#"{"listen": "127.0.0.1:0", "maxConnectionsPerIp": 1}"#;
        let b = TestServer::start_with(node("node-b", capped), &builtin_plugins()).await;
        let pa = gateway_port(&a, "http").await;
        wait_until("both nodes to join", || nodes(&a.handle) == ["node-a", "node-b"]).await;
        let svc = echo_head_service().await;
        let domain = format!("capped.{ZONE}");
        let mut x = TestClient::start(&ClientSpec::new(b.addr).domain(&domain).forward(http_fwd(svc.addr.port())));
        x.connected().await;
        wait_until("node-a to see node-b's claim", || {
            a.handle.cluster().is_some_and(|v| v.domains.iter().any(|d| d.domain == domain))
        })
        .await;

        // One keep-alive connection through node-a, held open.
        let mut first = TcpStream::connect(("127.0.0.1", pa)).await.unwrap();
        assert!(ask_keep_alive(&mut first, &domain).await.starts_with("HTTP/1.1 200"), "the first connection");
        // A second one, through node-a: node-b refuses it (closed, no answer).
        let mut second = TcpStream::connect(("127.0.0.1", pa)).await.unwrap();
        assert_eq!(ask_keep_alive(&mut second, &domain).await, "", "a second connection of the same visitor");
        // The first one ends: the next one is served.
        drop(first);
        within(WAIT, "node-b to free the visitor's slot", async {
            loop {
                let mut third = TcpStream::connect(("127.0.0.1", pa)).await.unwrap();
                if ask_keep_alive(&mut third, &domain).await.starts_with("HTTP/1.1 200") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        x.stop().await;
        a.stop().await;
        b.stop().await;
    })
    .await
}
