//! Names of opennotr clients.
//!
//! - [`DnsServer`]: an embedded authoritative DNS server (UDP and TCP) for
//!   the zone `server.domain` and the custom domains of live clients.
//! - [`etcd::EtcdPublisher`]: SkyDNS records in etcd, as CoreDNS's `etcd`
//!   plugin reads them (the original opennotr's integration, fixed).
//!
//! Both follow one [`Names`] snapshot that the server replaces whenever a
//! session starts or ends, through a `tokio::sync::watch` channel.
//!
//! CONTRACT (the server codes against these names; keep them):
//! `Names`, `ZoneConfig`, `DnsServer::{bind, local_addr, run}`, `answer`,
//! `vip_name`, `etcd::EtcdPublisher::{new, run}`, `etcd::EtcdConfig`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod answer;
pub mod etcd;
mod server;

/// The live clients' domains (lowercase, no trailing dot) and their VIPs.
pub type Names = BTreeMap<String, Ipv4Addr>;

/// The cluster's answers (lowercase, no trailing dot → the A/AAAA
/// addresses): the domains clients of other nodes hold, with those nodes'
/// public addresses, and the domains every node serves (gateway forwards
/// only), with every live node's. A domain in [`Names`] too is answered as
/// ours, unless its entry names this node among others.
pub type RemoteNames = BTreeMap<String, Vec<IpAddr>>;

/// What the DNS server answers with.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// `server.domain`: the zone (lowercase, no trailing dot).
    pub zone: String,
    /// The server's public addresses: A/AAAA answers for client domains.
    pub public: Vec<IpAddr>,
    /// TTL of answers, seconds.
    pub ttl: u32,
    /// Whether `*.<client domain>` answers like the domain itself.
    pub wildcard: bool,
    /// The zone's NS (and SOA MNAME) host name.
    pub nameserver: String,
}

/// The name under which `domain`'s VIP is published: the part of the
/// domain left of the zone (or the whole domain, if it is a custom one),
/// dots turned into dashes, then `.vip.<zone>`.
/// `abc.open.notr.tech` → `abc.vip.open.notr.tech`;
/// `cloud.example.com` → `cloud-example-com.vip.open.notr.tech`.
/// The result is lowercase, without a trailing dot.
pub fn vip_name(domain: &str, zone: &str) -> String {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let left = match domain.strip_suffix(zone.as_str()).and_then(|l| l.strip_suffix('.')) {
        Some(l) if !l.is_empty() => l,
        _ => domain.as_str(),
    };
    format!("{}.vip.{zone}", left.replace('.', "-"))
}

/// The answer to one DNS query (wire format), or `None` to send nothing
/// (unparseable garbage, a response, ...). `max_len` is the largest answer
/// the transport may carry (512 or the EDNS size for UDP, 65535 for TCP);
/// a longer answer is truncated with TC set. The UDP server does not call
/// this with a fixed size: it applies the query's own EDNS size (see
/// docs/dns.md). Builds the per-snapshot index each call; the server keeps
/// one per snapshot instead.
pub fn answer(query: &[u8], names: &Names, cfg: &ZoneConfig, max_len: usize) -> Option<Vec<u8>> {
    let index = answer::Index::new(names, &RemoteNames::new(), cfg, server::serial_now());
    answer::respond(query, names, cfg, &index, answer::Limit::Fixed(max_len)).map(|r| r.bytes)
}

/// [`answer`] as the UDP server answers: within the query's own EDNS size
/// (512 bytes without EDNS), never more than we advertise. For the fuzz
/// targets (`crates/fuzz-targets`); the server calls the same code.
#[doc(hidden)]
pub fn answer_udp(query: &[u8], names: &Names, cfg: &ZoneConfig) -> Option<Vec<u8>> {
    let index = answer::Index::new(names, &RemoteNames::new(), cfg, server::serial_now());
    answer::respond(query, names, cfg, &index, answer::Limit::Udp).map(|r| r.bytes)
}

/// The embedded DNS server, bound and ready to run.
#[derive(Debug)]
pub struct DnsServer {
    cfg: ZoneConfig,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    addr: SocketAddr,
    stats: std::sync::Arc<DnsStats>,
    remote: Option<watch::Receiver<Arc<RemoteNames>>>,
}

/// Queries answered, by transport and response code, for the metrics.
#[derive(Debug, Default)]
pub struct DnsStats {
    counts: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
}

impl DnsStats {
    pub(crate) fn count(&self, proto: &'static str, rcode: hickory_proto::op::ResponseCode) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((proto, rcode.into())).or_default() += 1;
    }

    /// `((transport, rcode mnemonic), queries)`, e.g. `(("udp", "NOERROR"), 3)`.
    pub fn snapshot(&self) -> Vec<((&'static str, String), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(&(proto, code), &n)| ((proto, mnemonic(code)), n)).collect()
    }
}

/// The RFC 1035/2136 mnemonic (`NOERROR`, `NXDOMAIN`, ...), as dig prints it.
fn mnemonic(code: u16) -> String {
    let name = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        other => return other.to_string(),
    };
    name.into()
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (port 0: one free port for both).
    pub async fn bind(listen: SocketAddr, cfg: ZoneConfig) -> std::io::Result<DnsServer> {
        let (udp, tcp, addr) = server::bind(listen).await?;
        Ok(DnsServer { cfg, udp, tcp, addr, stats: Default::default(), remote: None })
    }

    /// Answers for the domains other nodes of a cluster hold too, from the
    /// latest `remote`.
    pub fn with_remote(mut self, remote: watch::Receiver<Arc<RemoteNames>>) -> DnsServer {
        self.remote = Some(remote);
        self
    }

    /// Its query counters (they keep counting while it runs).
    pub fn stats(&self) -> std::sync::Arc<DnsStats> {
        self.stats.clone()
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop`, answering from the latest `names`.
    pub async fn run(self, names: watch::Receiver<Arc<Names>>, stop: CancellationToken) {
        server::run(self, names, stop).await
    }
}
