//! Test support for the in-process end-to-end tests under `tests/tests/`.
//!
//! - [`ServerSpec`] / [`TestServer`]: an `opennotrd` on `127.0.0.1:0`, built
//!   from a YAML file through `opennotr_config::parse_server`, with public
//!   ports bound on loopback in a fixed range.
//! - [`ClientSpec`] / [`TestClient`]: an `opennotr` client whose events come
//!   out of a channel, with helpers to wait for `Connected`.
//! - Local services: [`tcp_echo`], [`udp_echo`], [`slow_tcp`], [`tcp_accepting`].
//! - [`Proxy`]: a TCP proxy between client and server that can cut, freeze
//!   or half-drop the connections going through it.
//! - [`within`], [`wait_until`], [`run_test`]: bounded waits, so a hang fails
//!   a test instead of stalling it.
//! - gRPC: [`grpc_echo_server`] and the Python programs of [`GRPC_CLIENT`]
//!   (shared with `bins/tests/support/grpc.rs`).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use opennotr_client::{Client, Event, Registration};
pub use opennotr_config::{ClientConfig, ServerConfig};
pub use opennotr_proto::message::RefuseCode;
pub use opennotr_server::{builtin_plugins, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;

/// The key of every test server and (unless a test says otherwise) client.
pub const KEY: &str = "e2e shared test key";
/// `server.domain` of every test server.
pub const ZONE: &str = "e2e.notr.test";
/// Bound of a single wait (an event, a condition, a read).
pub const WAIT: Duration = Duration::from_secs(10);
/// Bound of a whole test body.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Range of public ports the test servers hand out. It lies below Linux's
/// default ephemeral range (32768-60999), so the kernel never gives one of
/// these ports to an outgoing connection, and a port a test expects back
/// (a reconnecting client's lease) or expects free cannot be taken that way.
pub const PORT_RANGE: (u16, u16) = (20000, 32000);

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn run_test<F: Future>(body: F) -> F::Output {
    init_tracing();
    match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Bound of a wait for the server to act on a timeout the test set (1 s,
/// typically): a hang guard, far above it, not a measure.
pub const CLOSE_GUARD: Duration = Duration::from_secs(20);

/// The admin API's `/metrics` at `admin`, fetched with `token` over a
/// plain HTTP/1.1 request (no curl needed); it must answer 200.
pub async fn admin_metrics(admin: SocketAddr, token: &str) -> String {
    let mut tcp = within(WAIT, "connecting to the admin API", TcpStream::connect(admin)).await.unwrap();
    let req =
        format!("GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let reply = String::from_utf8(read_until_closed(&mut tcp).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}

/// The value of `series` (name and labels, as printed) in a metrics text.
pub fn metric(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map(|v| v.trim().parse().unwrap())
}

/// A TCP echo service and a client of `server` that forwards a public
/// port to it, a data channel per visitor (`multiplex: false`); returns
/// them with the public address once the client is connected.
pub async fn tcp_echo_client(server: SocketAddr) -> (Service, TestClient, SocketAddr) {
    let echo = tcp_echo().await;
    let spec = ClientSpec { multiplex: false, ..ClientSpec::new(server) }.forward(tcp_fwd(0, echo.addr.port()));
    let mut client = TestClient::start(&spec);
    let public = local(public_port(&client.connected().await, 0));
    (echo, client, public)
}

/// Reads until the peer closes the connection (EOF, or a reset), under
/// [`CLOSE_GUARD`]; returns what it sent meanwhile.
pub async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    within(CLOSE_GUARD, "the gateway to close the connection", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

/// Polls `cond` until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(WAIT, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Deterministic bytes that differ with `seed` and position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ------------------------------------------------------------------ server

/// What a test server looks like; [`ServerSpec::yaml`] turns it into a
/// server configuration file.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `server.authKey`.
    pub key: String,
    /// `server.allowPlaintext`.
    pub allow_plaintext: bool,
    /// `server.keepaliveInterval` / `keepaliveTimeout`, seconds.
    pub keepalive: Option<(f64, f64)>,
    /// `server.connectTimeout`, seconds.
    pub connect_timeout: Option<f64>,
    /// `server.shutdownGrace`, seconds.
    pub shutdown_grace: f64,
    /// `PortMin`/`PortMax` of both `tcp` and `udp`.
    pub port_range: (u16, u16),
    /// `limits.<key>: <value>` lines.
    pub limits: Vec<(&'static str, u64)>,
    /// `sessionTimeout` of the `udp` plugin, seconds.
    pub udp_session_timeout: Option<f64>,
    /// The embedded DNS server (`dns` section, `server.publicIP`); off
    /// when `None`.
    pub dns: Option<DnsSpec>,
    /// More `plugin.<name>: '<json>'` entries, e.g.
    /// `("http", r#"{"listen": "127.0.0.1:0"}"#)`.
    pub plugins: Vec<(String, String)>,
    /// More top-level YAML (`clients:`, `admin:`), appended as is.
    pub extra_yaml: String,
    /// More keys under `server:` (indented lines, e.g. `"  helloTimeout: 1\n"`).
    pub server_yaml: String,
}

/// The `dns` section of a test server, on `127.0.0.1:0`.
#[derive(Debug, Clone)]
pub struct DnsSpec {
    /// `server.publicIP`: what client domains resolve to.
    pub public_ips: Vec<String>,
    /// `dns.wildcard`.
    pub wildcard: bool,
    /// `dns.ttl`, seconds.
    pub ttl: Option<u32>,
}

impl Default for DnsSpec {
    fn default() -> Self {
        DnsSpec { public_ips: vec!["127.0.0.2".into()], wildcard: false, ttl: None }
    }
}

impl Default for ServerSpec {
    fn default() -> Self {
        ServerSpec {
            listen: local(0),
            key: KEY.into(),
            allow_plaintext: false,
            keepalive: None,
            connect_timeout: None,
            shutdown_grace: 1.0,
            port_range: PORT_RANGE,
            limits: Vec::new(),
            udp_session_timeout: None,
            dns: None,
            plugins: Vec::new(),
            extra_yaml: String::new(),
            server_yaml: String::new(),
        }
    }
}

impl ServerSpec {
    /// The server configuration file.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        y += "server:\n";
        y += &format!("  listen: \"{}\"\n", self.listen);
        y += &format!("  authKey: {:?}\n", self.key);
        y += &format!("  domain: \"{ZONE}\"\n");
        y += &format!("  allowPlaintext: {}\n", self.allow_plaintext);
        y += &format!("  shutdownGrace: {}\n", self.shutdown_grace);
        if let Some((interval, timeout)) = self.keepalive {
            y += &format!("  keepaliveInterval: {interval}\n  keepaliveTimeout: {timeout}\n");
        }
        if let Some(t) = self.connect_timeout {
            y += &format!("  connectTimeout: {t}\n");
        }
        if let Some(dns) = &self.dns {
            y += &format!("  publicIP: {:?}\n", dns.public_ips);
        }
        y += &self.server_yaml;
        y += "dhcp:\n  cidr: \"100.64.242.1/24\"\n  ip: \"100.64.242.1\"\n";
        let (lo, hi) = self.port_range;
        y += "plugin:\n";
        y += &format!("  tcp: '{{\"PortMin\": {lo}, \"PortMax\": {hi}, \"bind\": \"127.0.0.1\"}}'\n");
        y += "  udp:\n";
        y += &format!("    PortMin: {lo}\n    PortMax: {hi}\n    bind: \"127.0.0.1\"\n");
        if let Some(t) = self.udp_session_timeout {
            y += &format!("    sessionTimeout: {t}\n");
        }
        for (name, json) in &self.plugins {
            y += &format!("  {name}: '{json}'\n");
        }
        if let Some(dns) = &self.dns {
            y += &format!("dns:\n  listen: \"127.0.0.1:0\"\n  wildcard: {}\n", dns.wildcard);
            if let Some(t) = dns.ttl {
                y += &format!("  ttl: {t}\n");
            }
        }
        if !self.limits.is_empty() {
            y += "limits:\n";
            for (k, v) in &self.limits {
                y += &format!("  {k}: {v}\n");
            }
        }
        y += &self.extra_yaml;
        y
    }

    /// Adds a `plugin.<name>` entry holding `json`.
    pub fn plugin(mut self, name: &str, json: &str) -> ServerSpec {
        self.plugins.push((name.into(), json.into()));
        self
    }

    /// The parsed configuration.
    pub fn config(&self) -> ServerConfig {
        let yaml = self.yaml();
        opennotr_config::parse_server(&yaml).unwrap_or_else(|e| panic!("bad test server config: {e}\n{yaml}"))
    }
}

/// A running server.
pub struct TestServer {
    /// The control address.
    pub addr: SocketAddr,
    /// For looking at sessions and VIPs.
    pub handle: ServerHandle,
    /// The embedded DNS server's address (UDP and TCP), when it is on.
    pub dns: Option<SocketAddr>,
    /// The admin API's address, when it is on.
    pub admin: Option<SocketAddr>,
    /// The QUIC endpoint's address, when `server.quic` is on.
    pub quic: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), opennotr_server::ServerError>>>,
}

impl TestServer {
    /// Starts a server with the built-in plugins.
    pub async fn start(spec: &ServerSpec) -> TestServer {
        TestServer::start_with(spec.config(), &builtin_plugins()).await
    }

    /// Starts a server with the given plugins.
    pub async fn start_with(cfg: ServerConfig, registry: &opennotr_plugin::Registry) -> TestServer {
        let server = Server::bind(cfg, registry).await.unwrap_or_else(|e| panic!("server does not start: {e}"));
        let addr = server.local_addr();
        let dns = server.dns_addr();
        let admin = server.admin_addr();
        let quic = server.quic_addr();
        let handle = server.handle();
        let shutdown = CancellationToken::new();
        let task = Some(tokio::spawn(server.run(shutdown.clone())));
        TestServer { addr, handle, dns, admin, quic, shutdown, task }
    }

    /// Shuts the server down and waits until `run` has returned.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within(Duration::from_secs(20), "server shutdown", task)
                .await
                .expect("server task panicked")
                .expect("server run failed");
        }
    }

    /// Polls until the server has no sessions.
    pub async fn wait_no_sessions(&self) {
        let h = self.handle.clone();
        wait_until("server has no sessions", || h.sessions().is_empty()).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ------------------------------------------------------------------ client

/// One requested forward: `protocol`, public port (0 = server picks), local port.
#[derive(Debug, Clone)]
pub struct Fwd {
    /// Plugin name.
    pub protocol: String,
    /// Public port, 0 = the server chooses.
    pub public: u16,
    /// Local port the client dials on 127.0.0.1.
    pub local: u16,
}

/// A `tcp` forward.
pub fn tcp_fwd(public: u16, local: u16) -> Fwd {
    Fwd { protocol: "tcp".into(), public, local }
}

/// A `udp` forward.
pub fn udp_fwd(public: u16, local: u16) -> Fwd {
    Fwd { protocol: "udp".into(), public, local }
}

/// An `http` forward (the embedded gateway) to a local port.
pub fn http_fwd(local: u16) -> Fwd {
    Fwd { protocol: "http".into(), public: 0, local }
}

/// An `h2c` forward (the embedded gateway) to a local port.
pub fn h2c_fwd(local: u16) -> Fwd {
    Fwd { protocol: "h2c".into(), public: 0, local }
}

/// A `tls` forward (SNI passthrough) to a local port.
pub fn tls_fwd(local: u16) -> Fwd {
    Fwd { protocol: "tls".into(), public: 0, local }
}

/// What a test client looks like; [`ClientSpec::yaml`] turns it into a
/// client configuration file.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// `serverAddr`.
    pub server: SocketAddr,
    /// `key`.
    pub key: String,
    /// `name`: the credential name; `None` = the shared key.
    pub name: Option<String>,
    /// `domain`.
    pub domain: Option<String>,
    /// `plaintext`.
    pub plaintext: bool,
    /// `multiplex`.
    pub multiplex: bool,
    /// `forwards`, one entry per forward.
    pub forwards: Vec<Fwd>,
    /// `keepaliveInterval` / `keepaliveTimeout`, seconds.
    pub keepalive: Option<(f64, f64)>,
    /// `handshakeTimeout`, seconds.
    pub handshake_timeout: Option<f64>,
    /// `reconnectMaxDelay`, seconds.
    pub reconnect_max_delay: f64,
    /// `spareChannels`; `None` = the default.
    pub spare_channels: Option<u32>,
    /// `transport`: `"tcp"` or `"quic"`; the default (tcp) when `None`.
    pub transport: Option<&'static str>,
}

impl ClientSpec {
    /// A client of `server` with the test key and no forwards.
    pub fn new(server: SocketAddr) -> ClientSpec {
        ClientSpec {
            server,
            key: KEY.into(),
            name: None,
            domain: None,
            plaintext: false,
            multiplex: true,
            forwards: Vec::new(),
            keepalive: None,
            handshake_timeout: None,
            reconnect_max_delay: 0.5,
            spare_channels: None,
            transport: None,
        }
    }

    /// Adds a forward.
    pub fn forward(mut self, f: Fwd) -> ClientSpec {
        self.forwards.push(f);
        self
    }

    /// Authenticates as credential `name` with `key`.
    pub fn credential(mut self, name: &str, key: &str) -> ClientSpec {
        self.name = Some(name.into());
        self.key = key.into();
        self
    }

    /// Asks for a domain.
    pub fn domain(mut self, d: &str) -> ClientSpec {
        self.domain = Some(d.into());
        self
    }

    /// The client configuration file.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        y += &format!("serverAddr: \"{}\"\n", self.server);
        y += &format!("key: {:?}\n", self.key);
        if let Some(n) = &self.name {
            y += &format!("name: {n:?}\n");
        }
        if let Some(d) = &self.domain {
            y += &format!("domain: \"{d}\"\n");
        }
        y += &format!("plaintext: {}\nmultiplex: {}\n", self.plaintext, self.multiplex);
        y += &format!("reconnectMaxDelay: {}\n", self.reconnect_max_delay);
        if let Some((interval, timeout)) = self.keepalive {
            y += &format!("keepaliveInterval: {interval}\nkeepaliveTimeout: {timeout}\n");
        }
        if let Some(t) = self.handshake_timeout {
            y += &format!("handshakeTimeout: {t}\n");
        }
        if let Some(n) = self.spare_channels {
            y += &format!("spareChannels: {n}\n");
        }
        if let Some(t) = self.transport {
            y += &format!("transport: {t}\n");
        }
        if !self.forwards.is_empty() {
            y += "forwards:\n";
            for f in &self.forwards {
                y += &format!("  - protocol: {}\n    ports:\n      {}: {}\n", f.protocol, f.public, f.local);
            }
        }
        y
    }

    /// The parsed configuration.
    pub fn config(&self) -> ClientConfig {
        let yaml = self.yaml();
        opennotr_config::parse_client(&yaml).unwrap_or_else(|e| panic!("bad test client config: {e}\n{yaml}"))
    }
}

/// A running client and the events it reports.
pub struct TestClient {
    /// The client's QUIC endpoint while it is on QUIC (to move it to a new
    /// socket: connection migration).
    pub quic: opennotr_client::QuicEndpoint,
    events: mpsc::UnboundedReceiver<Event>,
    /// Every event received so far, in order.
    pub history: Vec<Event>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestClient {
    /// Starts a client for `spec`.
    pub fn start(spec: &ClientSpec) -> TestClient {
        TestClient::start_config(spec.config())
    }

    /// Starts a client for `cfg` (a new client id).
    pub fn start_config(cfg: ClientConfig) -> TestClient {
        TestClient::start_with(cfg, |c| c)
    }

    /// Starts a client for `spec` that registers with `client_id`.
    pub fn start_with_id(spec: &ClientSpec, client_id: &str) -> TestClient {
        TestClient::start_with(spec.config(), |c| c.with_client_id(client_id))
    }

    fn start_with(cfg: ClientConfig, adjust: impl FnOnce(Client) -> Client) -> TestClient {
        let (tx, events) = mpsc::unbounded_channel();
        let client = adjust(Client::new(
            cfg,
            Arc::new(move |e: &Event| {
                let _ = tx.send(e.clone());
            }),
        ));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let quic = client.quic_endpoint();
        let task = Some(tokio::spawn(async move { client.run(token).await }));
        TestClient { quic, events, history: Vec::new(), shutdown, task }
    }

    /// The next event.
    pub async fn next_event(&mut self) -> Event {
        let e =
            within(WAIT, "waiting for a client event", self.events.recv()).await.expect("client event channel closed");
        self.history.push(e.clone());
        e
    }

    /// Waits for an event matching `pred`, skipping the others.
    pub async fn wait_event(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        let seen_before = self.history.len();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let e = self.events.recv().await.expect("client event channel closed");
                self.history.push(e.clone());
                if pred(&e) {
                    return e;
                }
            }
        })
        .await;
        match found {
            Ok(e) => e,
            Err(_) => panic!("timed out waiting for {what}; events meanwhile: {:#?}", &self.history[seen_before..]),
        }
    }

    /// Waits for the next `Connected`, skipping `Disconnected`/`Refused`.
    pub async fn connected(&mut self) -> Registration {
        match self.wait_event("the client to connect", |e| matches!(e, Event::Connected(_))).await {
            Event::Connected(r) => r,
            _ => unreachable!(),
        }
    }

    /// Waits for the next `Disconnected` and returns its reason.
    pub async fn disconnected(&mut self) -> String {
        match self.wait_event("the client to disconnect", |e| matches!(e, Event::Disconnected { .. })).await {
            Event::Disconnected { reason, .. } => reason,
            _ => unreachable!(),
        }
    }

    /// Events already queued, without waiting.
    pub fn pending_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            self.history.push(e.clone());
            out.push(e);
        }
        out
    }

    /// Stops the client and waits for its task to end.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within(WAIT, "client shutdown", task).await.expect("client task panicked");
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The public port of forward `i`, failing the test if it was refused.
pub fn public_port(reg: &Registration, i: usize) -> u16 {
    let f = &reg.forwards[i];
    assert_eq!(f.error, None, "forward {i} refused");
    f.public_port.unwrap_or_else(|| panic!("forward {i} has no public port: {f:?}"))
}

// ------------------------------------------------------------ local services

/// A background task, aborted when dropped.
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP echo server: copies back until EOF, then closes its write side.
pub async fn tcp_echo() -> Service {
    tcp_service(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// A TCP server running `handler` for each connection.
pub async fn tcp_service<F, Fut>(handler: F) -> Service
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(local(0)).await.expect("bind local service");
    let addr = listener.local_addr().expect("local service address");
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => { conns.spawn(handler(s)); }
                    Err(_) => continue,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Service { addr, task }
}

/// A TCP server that hands each accepted connection to the test.
pub async fn tcp_accepting() -> (Service, mpsc::UnboundedReceiver<TcpStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = tcp_service(move |s| {
        let _ = tx.send(s);
        async {}
    })
    .await;
    (svc, rx)
}

/// A TCP server that accepts and holds connections, never reading them.
/// Returns how many it has accepted.
pub async fn slow_tcp() -> (Service, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let svc = tcp_service(move |s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let _hold = s;
            std::future::pending::<()>().await
        }
    })
    .await;
    (svc, accepted)
}

/// A UDP echo server: each datagram goes back to its sender unchanged.
pub async fn udp_echo() -> Service {
    let sock = UdpSocket::bind(local(0)).await.expect("bind udp echo");
    let addr = sock.local_addr().expect("udp echo address");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], peer).await;
            }
        }
    });
    Service { addr, task }
}

/// Connects to `addr`, sends `payload`, half-closes, and returns all it
/// reads until EOF.
pub async fn echo_once(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    within(WAIT, "echo through the tunnel", async {
        let mut s = TcpStream::connect(addr).await.expect("connect to the public port");
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(payload).await.expect("write to the tunnel");
            w.shutdown().await.expect("half-close");
        };
        let recv = async {
            let mut back = Vec::with_capacity(payload.len());
            r.read_to_end(&mut back).await.expect("read from the tunnel");
            back
        };
        tokio::join!(send, recv).1
    })
    .await
}

/// Asserts that a TCP echo through `addr` returns `payload`.
pub async fn assert_echo(addr: SocketAddr, payload: &[u8]) {
    let back = echo_once(addr, payload).await;
    assert!(back == payload, "echo of {} bytes came back as {} different bytes", payload.len(), back.len());
}

// ------------------------------------------------------------------- proxy

#[derive(Default)]
struct ConnCtl {
    cut: CancellationToken,
    freeze: CancellationToken,
    drop_client: CancellationToken,
}

#[derive(Default)]
struct ProxyInner {
    conns: Mutex<Vec<Arc<ConnCtl>>>,
    blackhole: AtomicBool,
    release: CancellationToken,
    accepted: AtomicUsize,
}

/// A TCP proxy to `upstream` that can break the connections through it in
/// the ways a network does.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    inner: Arc<ProxyInner>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(local(0)).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let inner = Arc::new(ProxyInner::default());
        let i = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                i.accepted.fetch_add(1, Ordering::SeqCst);
                let release = i.release.clone();
                if i.blackhole.load(Ordering::SeqCst) {
                    tokio::spawn(async move {
                        let _hold = client;
                        release.cancelled().await;
                    });
                    continue;
                }
                let ctl = Arc::new(ConnCtl::default());
                if let Ok(mut c) = i.conns.lock() {
                    c.push(ctl.clone());
                }
                tokio::spawn(pipe(client, upstream, ctl, release));
            }
        });
        Proxy { addr, inner, task }
    }

    fn take_conns(&self) -> Vec<Arc<ConnCtl>> {
        self.inner.conns.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default()
    }

    /// Closes both sides of every current connection.
    pub fn cut_all(&self) {
        for c in self.take_conns() {
            c.cut.cancel();
        }
    }

    /// Closes the client side of every current connection and keeps the
    /// server side open, silent: the server does not notice.
    pub fn drop_client_side(&self) {
        for c in self.take_conns() {
            c.drop_client.cancel();
        }
    }

    /// Stops forwarding bytes on every current connection, keeping both
    /// sides open: a silently dead path.
    pub fn freeze_all(&self) {
        for c in self.take_conns() {
            c.freeze.cancel();
        }
    }

    /// While on, new connections are accepted and then ignored.
    pub fn set_blackhole(&self, on: bool) {
        self.inner.blackhole.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.release.cancel();
        self.task.abort();
    }
}

enum Break {
    Cut,
    Freeze,
    DropClient,
}

async fn pipe(client: TcpStream, upstream: SocketAddr, ctl: Arc<ConnCtl>, release: CancellationToken) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let action = {
        let up = async {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
            let _ = sw.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => return,
            _ = release.cancelled() => return,
            _ = ctl.cut.cancelled() => Break::Cut,
            _ = ctl.freeze.cancelled() => Break::Freeze,
            _ = ctl.drop_client.cancelled() => Break::DropClient,
        }
    };
    match action {
        Break::Cut => {}
        Break::Freeze => {
            release.cancelled().await;
            drop((cr, cw, sr, sw));
        }
        Break::DropClient => {
            drop((cr, cw));
            release.cancelled().await;
            drop((sr, sw));
        }
    }
}

// The gRPC programs are shared with the binaries' tests (gRPC through nginx).
#[path = "../../bins/tests/support/grpc.rs"]
mod grpc;
pub use grpc::{python_with_grpc, GRPC_CLIENT, GRPC_ECHO_SERVER};

// Found, or the test fails naming the Debian package to install.
#[path = "../../bins/tests/support/tools.rs"]
pub mod tools;

/// Runs [`GRPC_CLIENT`] against `127.0.0.1:port` for `domain` (TLS
/// trusting `ca` when given) and fails the test unless every call passed.
pub async fn run_grpc_client(port: u16, domain: &str, ca: Option<&str>) {
    let port = port.to_string();
    let mut args = vec!["-c", GRPC_CLIENT, &port, domain];
    args.extend(ca);
    let out = within(
        Duration::from_secs(40),
        "the gRPC client",
        tokio::process::Command::new(python_with_grpc()).args(&args).kill_on_drop(true).output(),
    )
    .await
    .expect("run the python gRPC client");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("grpc ok"), "gRPC client failed:\n{stdout}\n{stderr}");
}

/// Starts [`GRPC_ECHO_SERVER`]; returns the child (killed on drop; it also
/// stops when its stdin closes) and its port.
pub async fn grpc_echo_server() -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(python_with_grpc())
        .args(["-c", GRPC_ECHO_SERVER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the python gRPC server");
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    within(WAIT, "the gRPC server's port", out.read_line(&mut line)).await.expect("read the gRPC server's port");
    let port = line.trim().parse().unwrap_or_else(|_| panic!("gRPC server said {line:?}"));
    (child, port)
}

// ------------------------------------------------------------------ probes

/// What a probe found: `Ok` when the stream echoed, else why not
/// (`refused: …` when the tunnel or the client refused it).
pub type ProbeResult = (&'static str, Result<(), String>);

/// The probes a [`ProbeFactory`] plugin makes for a forward whose declared
/// target is the argument: name, transport, target.
pub type Probes = fn(SocketAddr) -> Vec<(&'static str, opennotr_plugin::StreamProtocol, SocketAddr)>;

/// A plugin (`probe`) that, for each forward, asks the client for the
/// streams `probes` lists once the session runs, and reports each result
/// on the channel: to show what the client dials and what it refuses.
pub struct ProbeFactory(pub mpsc::UnboundedSender<ProbeResult>, pub Probes);

struct Probe(mpsc::UnboundedSender<ProbeResult>, Probes);

impl opennotr_plugin::PluginFactory for ProbeFactory {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn setup(
        &self,
        _config: &serde_json::Value,
    ) -> Result<Arc<dyn opennotr_plugin::Plugin>, opennotr_plugin::PluginError> {
        Ok(Arc::new(Probe(self.0.clone(), self.1)))
    }
}

#[opennotr_plugin::async_trait]
impl opennotr_plugin::Plugin for Probe {
    async fn run_proxy(
        &self,
        meta: &opennotr_plugin::ForwardMeta,
        ctx: opennotr_plugin::ForwardContext,
    ) -> Result<opennotr_plugin::Endpoint, opennotr_plugin::PluginError> {
        let probes = (self.1)(meta.target());
        let report = self.0.clone();
        // Streams open once the session runs, after run_proxy returns.
        tokio::spawn(async move {
            for (name, proto, target) in probes {
                let r = match ctx.tunnel.open_stream(proto, target, None).await {
                    // A stream on a spare channel or over QUIC is open at
                    // once; the client's answer comes ahead of its bytes.
                    Ok(mut s) => {
                        // Prove it is the real service: an echo.
                        let mut buf = [0u8; 4];
                        let _ = s.write_all(b"ping").await;
                        match s.read_exact(&mut buf).await {
                            Ok(_) if &buf == b"ping" => Ok(()),
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(format!("refused: {e}")),
                            _ => Err("opened, but no echo".to_string()),
                        }
                    }
                    Err(opennotr_plugin::OpenError::Refused(reason)) => Err(format!("refused: {reason}")),
                    Err(e) => Err(format!("other error: {e}")),
                };
                let _ = report.send((name, r));
            }
        });
        Ok(opennotr_plugin::Endpoint { public_port: None, url: format!("probe://{}", meta.domain) })
    }

    async fn stop_proxy(&self, _meta: &opennotr_plugin::ForwardMeta) {}
}

/// Runs `dig @server -p PORT <args>` and returns its standard output.
pub async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(tools::need("dig"));
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=2"])
        .args(args)
        .kill_on_drop(true);
    let out = match within(WAIT, "dig", cmd.output()).await {
        Ok(out) => out,
        Err(e) => panic!("cannot run dig: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The records `dig +short` prints (comment lines dropped).
pub async fn short(server: SocketAddr, name: &str, qtype: &str, tcp: bool) -> Vec<String> {
    let mut args = vec![name, qtype, "+short"];
    if tcp {
        args.push("+tcp");
    }
    let mut lines: Vec<String> = dig(server, &args)
        .await
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// Writes the preface and a hello for `key` on `tcp`, as a client opens
/// its control connection; returns the handshake, to finish with the
/// server's challenge.
pub async fn send_hello(tcp: &mut TcpStream, key: &str, software: &str) -> opennotr_proto::handshake::ClientHandshake {
    use opennotr_proto::frame::{preface, PROTOCOL_VERSION};
    let (hs, spake) = opennotr_proto::handshake::ClientHandshake::start(key.as_bytes(), None, false);
    let hello = opennotr_proto::message::ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        spake,
        plaintext: false,
        software: software.into(),
        name: None,
    };
    let body = hello.to_bytes();
    let mut first = preface().to_vec();
    first.extend_from_slice(&(body.len() as u32).to_be_bytes());
    first.extend_from_slice(&body);
    tcp.write_all(&first).await.unwrap();
    hs
}

/// The first flight of a TLS client for `name` (a ClientHello with its
/// SNI), as a visitor's first bytes to a `tls` forward.
pub fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring's protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("a DNS name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server_name).expect("a TLS client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("writing to a Vec");
    }
    out
}

#[cfg(test)]
mod tool_list {
    use super::tools;

    /// Every program a test asks for by name is listed in .ci/test-deps
    /// with its package, so a machine without it gets told what to install.
    #[test]
    fn every_program_the_tests_need_is_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = 0;
        let mut dirs = vec![root.join("tests"), root.join("bins/tests"), root.join("crates")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source directory").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                for call in ["need(\"", "python_with(\""] {
                    for (at, _) in text.match_indices(call) {
                        let rest = &text[at + call.len()..];
                        let name = &rest[..rest.find('"').expect("a closing quote")];
                        tools::package_of(name);
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 10, "found only {seen} calls; is the scan looking in the right place?");
    }
}
