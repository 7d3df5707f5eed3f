//! Configuration of `opennotrd` (server) and `opennotr` (client).
//!
//! The original Go project's YAML files (`notrd.yaml`, `config.yaml`) parse
//! unchanged; new keys are additions. Parsing is strict: an unknown key, a
//! wrong type or an invalid value is a [`ConfigError`] naming the key, and the
//! binaries exit with [`EXIT_USAGE`] before anything binds.
//!
//! CONTRACT (used by the server, client and binaries — keep these names):
//! the public types and functions below. Implementation is free.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub mod access;
mod bandwidth;
mod client;
mod clients;
mod cmdline;
mod group;
mod keys;
mod listen;
mod proxy_protocol;
mod reserved;
mod server;
mod util;
mod yaml;

/// Exit code for a configuration error (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What went wrong, always naming the key (dotted path such as `server.listen`
/// or `forwards[1].ports`) where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
    /// The key at fault, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Io { .. } => None,
        }
    }
}

// ---------------------------------------------------------------- server

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub server: ServerSection,
    pub dhcp: DhcpSection,
    /// `plugin.<name>`: the plugin's configuration as JSON (the original
    /// writes a string holding JSON; a YAML mapping is accepted too).
    pub plugins: BTreeMap<String, serde_json::Value>,
    pub limits: Limits,
    /// `resolver.etcdEndpoints` (original key); empty = DNS publishing off.
    pub etcd_endpoints: Vec<String>,
    /// `resolver.etcdPrefix` (default `/skydns`): where CoreDNS's etcd
    /// plugin looks for records.
    pub etcd_prefix: String,
    /// `resolver.leaseTtl` seconds (default 30): records vanish this long
    /// after opennotrd stops renewing them (it died).
    pub etcd_lease_ttl: u64,
    /// `dns`: the embedded authoritative DNS server; `None` = off.
    pub dns: Option<DnsSection>,
    /// `clients` and the entries of `clientsFile`: per-client credentials.
    pub clients: Vec<Credential>,
    /// `clientsFile`: where more credentials are read from (at start and on
    /// every reload), relative to the server file's directory.
    pub clients_file: Option<std::path::PathBuf>,
    /// `admin`: the admin API and dashboard; `None` = off.
    pub admin: Option<AdminSection>,
    /// `access`: who may reach the forwards of shared-key clients (those
    /// without a `clients` entry, whose own rules are `clients[i].allow`...).
    pub access: Access,
    /// `cluster`: this server as a node of a cluster on etcd; `None` = a
    /// single server.
    pub cluster: Option<ClusterSection>,
}

/// The `cluster` section (docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSection {
    /// `cluster.node`: this node's name, unique in the cluster.
    pub node: String,
    /// `cluster.etcdEndpoints`: where the cluster's state is kept.
    pub etcd_endpoints: Vec<String>,
    /// `cluster.prefix` (default `/opennotr/cluster`).
    pub prefix: String,
    /// `cluster.leaseTtl` (default 10 s): a node that stops renewing its
    /// lease (it died, or lost etcd) leaves the cluster this long after.
    pub lease_ttl: Duration,
    /// `cluster.advertise`: `host:port` where clients (and other nodes)
    /// reach this node's control port. Default: the first `server.publicIP`
    /// (else the listen address) with the control port.
    pub advertise: Option<String>,
    /// `cluster.key`: the secret every node shares; it authenticates the
    /// node links (a node is one more name in the tunnel's handshake).
    pub key: Secret,
}

/// One client's own credential: it authenticates with `name` and `key`
/// and may claim only what the entry allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `clients[i].name`: what the client sends as its `name`.
    pub name: String,
    /// `clients[i].key`.
    pub key: Secret,
    /// `clients[i].domains`: names (`app.example.com`) and patterns
    /// (`*.example.com`) it may claim. Default `<name>.<server.domain>`.
    pub domains: Vec<String>,
    /// `clients[i].ports`: public ports it may ask for; empty = any.
    pub ports: Vec<PortRange>,
    /// `clients[i].protocols`: plugins it may use; empty = all.
    pub protocols: Vec<String>,
    /// `clients[i].allow`, `.deny`, `.basicAuth`: who may reach every
    /// forward of the client (a client's own rules only narrow them).
    pub access: Access,
    /// `clients[i].bandwidth`: bytes a second each way for the whole
    /// client; `None` = `limits.clientBandwidth`.
    pub bandwidth: Option<u64>,
    /// `clients[i].forwardBandwidth`: bytes a second each way per forward;
    /// `None` = `limits.forwardBandwidth`.
    pub forward_bandwidth: Option<u64>,
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

pub use access::{Access, BasicAuth};
pub use bandwidth::{format_bandwidth, parse_bandwidth, MAX_RATE};
pub use clients::{credential, domain_allowed, CredentialText};
pub use cmdline::{
    client_from_args, random_key, server_from_args, server_template, ClientArgs, ForwardArg, ServerTemplate,
};
pub use group::{check_group_name, GroupBalance, GroupConfig, HealthCheck, HealthKind, MAX_GROUP_NAME};
pub use keys::{key_weaknesses, weak_keys, WeakKey, MIN_KEY_CHARS};
pub use reserved::ReservedNames;

/// The `admin` section.
#[derive(Debug, Clone)]
pub struct AdminSection {
    /// `admin.listen` (default `127.0.0.1:7070`).
    pub listen: SocketAddr,
    /// `admin.token`: the bearer token every request but `/healthz` needs.
    pub token: Secret,
}

/// The `dns` section.
#[derive(Debug, Clone)]
pub struct DnsSection {
    /// `dns.listen`: UDP and TCP address (required in the section).
    pub listen: SocketAddr,
    /// `dns.ttl` seconds (default 60) of the answers.
    pub ttl: u32,
    /// `dns.wildcard` (default false): a client's domain also answers for
    /// every name below it (`*.app.example.com`).
    pub wildcard: bool,
    /// `dns.nameserver` (default `ns1.<server.domain>`): the zone's NS name.
    pub nameserver: String,
}

#[derive(Debug, Clone)]
pub struct ServerSection {
    /// `server.listen`, Go style `":10100"` means all interfaces.
    pub listen: SocketAddr,
    /// `server.publicIP`: the server's public address(es), IPv4 and/or
    /// IPv6, published in DNS for client domains. Default: the address
    /// `server.listen` is bound to, if it is a specific one.
    pub public_ips: Vec<IpAddr>,
    /// `server.authKey`: the key of clients that send no name. Optional
    /// when per-client credentials are configured.
    pub auth_key: Option<Secret>,
    /// `server.domain`: zone under which client domains are generated.
    pub domain: String,
    /// `server.tcplisten` (or the original HEAD's `tcpforward.listen`).
    pub tcp_listen: Option<SocketAddr>,
    /// `server.udplisten` (or `udpforward.listen`).
    pub udp_listen: Option<SocketAddr>,
    /// `server.allowPlaintext` (default false): accept clients that ask for
    /// an unencrypted tunnel. Authentication is never skipped.
    pub allow_plaintext: bool,
    /// `server.vlanAllowRemote` (default false): let other hosts that route
    /// the VIP range through this server reach clients' exported VIP ports.
    /// Off, only programs on the server host can.
    pub vlan_allow_remote: bool,
    /// `server.handshakeTimeout` seconds (default 10).
    pub handshake_timeout: Duration,
    /// `server.helloTimeout` seconds (default 5): a new connection must send
    /// its first message this soon.
    pub hello_timeout: Duration,
    /// `server.keepaliveInterval` seconds (default 5).
    pub keepalive_interval: Duration,
    /// `server.keepaliveTimeout` seconds (default 15): a peer silent this long is dead.
    pub keepalive_timeout: Duration,
    /// `server.connectTimeout` seconds (default 10): how long a visitor waits
    /// for the client to open the stream.
    pub connect_timeout: Duration,
    /// `server.shutdownGrace` seconds (default 10).
    pub shutdown_grace: Duration,
    /// `server.authKeyDomains`: the domains clients of the shared key may
    /// ask for (names, or `*.<name>`); `None` = any. A client that asks
    /// for none gets `<random>.<domain>` either way.
    pub auth_key_domains: Option<Vec<String>>,
    /// `server.workers`: threads of the async runtime; `None` = tokio's
    /// default (`TOKIO_WORKER_THREADS`, else one per core).
    pub workers: Option<usize>,
    /// `server.quic` / `server.quicListen` / `server.quicCert` /
    /// `server.quicKey`: the QUIC endpoint beside the TCP control
    /// listener; `None` = off.
    pub quic: Option<QuicSection>,
}

/// The server's QUIC endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicSection {
    /// `server.quicListen`: its UDP address; `None` = the address and
    /// port the TCP control listener is bound to.
    pub listen: Option<SocketAddr>,
    /// `server.quicCert` and `server.quicKey`: a PEM certificate chain and
    /// its key; `None` = a self-signed certificate made at start (clients
    /// do not check it: the handshake is bound to the TLS connection).
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// How the client reaches the server (`transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TCP: a control connection, and a data channel per stream.
    #[default]
    Tcp,
    /// QUIC: one connection; a stream per visitor stream, UDP as datagrams.
    Quic,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        })
    }
}

#[derive(Debug, Clone)]
pub struct DhcpSection {
    /// `dhcp.cidr` as written, e.g. `100.64.242.1/24` (IPv4).
    pub cidr: ipnet::Ipv4Net,
    /// `dhcp.ip`: the server's own address in the pool, never handed out.
    pub ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// `limits.maxClients` (default 1024).
    pub max_clients: usize,
    /// `limits.maxForwardsPerClient` (default 64).
    pub max_forwards_per_client: usize,
    /// `limits.maxStreamsPerClient` (default 4096).
    pub max_streams_per_client: usize,
    /// `limits.maxUdpFlowsPerForward` (default 1024).
    pub max_udp_flows_per_forward: usize,
    /// `limits.maxHandshakes` (default 256): connections in handshake at once.
    pub max_handshakes: usize,
    /// `limits.maxHandshakesPerIp` (default 32): unauthenticated connections
    /// from one source (an IPv4 address, an IPv6 /64) at once.
    pub max_handshakes_per_ip: usize,
    /// `limits.authFailures` (default 5, 0 = off): failed handshakes from
    /// one source before its new handshakes are refused for a penalty.
    pub auth_failures: u32,
    /// `limits.authPenalty` seconds (default 30): the first penalty; each
    /// next one doubles.
    pub auth_penalty: Duration,
    /// `limits.authPenaltyMax` seconds (default 600): the longest penalty.
    pub auth_penalty_max: Duration,
    /// `limits.penaltySources` (default 65536): sources the penalty table
    /// remembers.
    pub penalty_sources: usize,
    /// `limits.fdReserve` (default 128): file descriptors public listeners
    /// leave free for the control port and the admin API.
    pub fd_reserve: usize,
    /// `limits.spareChannels` (default 4, at most 64, 0 = none): idle,
    /// authenticated data channels a client may keep open to the server,
    /// so a visitor's stream starts without a round trip to the client.
    pub spare_channels: usize,
    /// `limits.clientBandwidth` (default none): bytes a second each way for
    /// a client without its own `clients[i].bandwidth` (and every client of
    /// the shared key).
    pub client_bandwidth: Option<u64>,
    /// `limits.forwardBandwidth` (default none): bytes a second each way per
    /// forward, for clients without `clients[i].forwardBandwidth`.
    pub forward_bandwidth: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 1024,
            max_forwards_per_client: 64,
            max_streams_per_client: 4096,
            max_udp_flows_per_forward: 1024,
            max_handshakes: 256,
            max_handshakes_per_ip: 32,
            auth_failures: 5,
            auth_penalty: Duration::from_secs(30),
            auth_penalty_max: Duration::from_secs(600),
            penalty_sources: 65_536,
            fd_reserve: 128,
            spare_channels: 4,
            client_bandwidth: None,
            forward_bandwidth: None,
        }
    }
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `serverAddr`: `host:port` of opennotrd, or of several servers (the
    /// nodes of a cluster, or a standby): the client uses the first that
    /// answers, and moves on to the next when it loses its server.
    pub servers: Vec<String>,
    /// `key`: the server's `authKey`, or with `name` the client's own key.
    pub key: Secret,
    /// `name`: the client's credential name on the server (`clients` of
    /// the server file); `None` = authenticate with the shared `authKey`.
    pub name: Option<String>,
    /// `domain`: requested domain; `None` = the server picks a random label.
    pub domain: Option<String>,
    pub forwards: Vec<ForwardConfig>,
    /// `plaintext` (default false): ask for an unencrypted tunnel.
    pub plaintext: bool,
    /// `transport` (default tcp): TCP or QUIC to the server.
    pub transport: Transport,
    /// `multiplex` (default true): take the gateway's HTTP/1.1 traffic as
    /// many streams in one tunnel stream per route.
    pub multiplex: bool,
    /// `spareChannels` (default 4, at most 64, 0 = none): data channels kept
    /// open and authenticated ahead of need, so a visitor's stream costs no
    /// round trip from here to the server; the server may grant fewer.
    pub spare_channels: usize,
    /// `keepaliveInterval` / `keepaliveTimeout` seconds (defaults 5 / 15).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// `handshakeTimeout` seconds (default 10), also the dial timeout.
    pub handshake_timeout: Duration,
    /// `reconnectMaxDelay` seconds (default 30): cap of the backoff.
    pub reconnect_max_delay: Duration,
    /// `vipPorts`: ports reachable only at the client's virtual IP, on the
    /// server host, besides the local ports of its forwards.
    pub vip_ports: Vec<VipPortConfig>,
    /// `workers`: threads of the async runtime; `None` = tokio's default.
    pub workers: Option<usize>,
    /// `bandwidth`: bytes a second each way the client asks its whole
    /// session be limited to (the server may hold it lower).
    pub bandwidth: Option<u64>,
}

/// One entry of `vipPorts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipPortConfig {
    /// `vipPorts[i].port`: the port at the VIP, and the port the client dials.
    pub port: u16,
    /// `vipPorts[i].protocol` is `udp` (default `tcp`).
    pub udp: bool,
    /// `vipPorts[i].localIP` (default 127.0.0.1): the host the client dials.
    pub local_ip: IpAddr,
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// `forwards[i].protocol`: plugin name (`tcp`, `udp`, ...).
    pub protocol: String,
    /// `forwards[i].ports`: public port -> local port, in file order
    /// (public port 0 = let the server choose).
    pub ports: Vec<(u16, u16)>,
    /// `forwards[i].localIP` (default 127.0.0.1): host the client dials.
    pub local_ip: IpAddr,
    /// `forwards[i].rawConfig`: opaque string handed to the plugin.
    pub raw_config: Option<String>,
    /// `forwards[i].proxyProtocol` (`v1` | `v2`, default none): the PROXY
    /// protocol header the client writes to the local service (tcp, tls;
    /// udp: v2 only).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `forwards[i].group` and its keys: the load-balanced group the
    /// forward joins (docs/load-balancing.md).
    pub group: Option<GroupConfig>,
    /// `forwards[i].allow`, `.deny`, `.basicAuth`: who may reach it, sent
    /// to the server (which adds its own rules).
    pub access: Access,
    /// `forwards[i].bandwidth`: bytes a second each way the client asks
    /// its forward be limited to (the server may hold it lower).
    pub bandwidth: Option<u64>,
}

/// A PROXY protocol version (`forwards[i].proxyProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    /// `v1`: the text line.
    V1,
    /// `v2`: the binary form.
    V2,
}

impl ProxyProtocol {
    /// The key's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

// ---------------------------------------------------------------- loading

/// Parses and validates a server file (see `docs/configuration.md`).
/// A relative `clientsFile` is read from the current directory.
pub fn parse_server(yaml: &str) -> Result<ServerConfig, ConfigError> {
    server::parse(yaml, None)
}
/// Reads and validates a server file, and the `clientsFile` it names
/// (relative to the file's directory).
pub fn load_server(path: &Path) -> Result<ServerConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
    server::parse(&text, path.parent())
}
/// Parses and validates a client file (see `docs/configuration.md`).
pub fn parse_client(yaml: &str) -> Result<ClientConfig, ConfigError> {
    client::parse(yaml)
}
pub fn load_client(path: &Path) -> Result<ClientConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
    parse_client(&text)
}

/// Parses a Go-style listen address: `":10100"` = all IPv4 interfaces,
/// `"127.0.0.1:80"`, `"[::1]:80"`, `"localhost:80"` (= 127.0.0.1). Port 0
/// is allowed (bind to any free port). The error is a message without the
/// key; the caller adds it.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    listen::parse_listen(s)
}
