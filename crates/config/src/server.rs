//! `opennotrd` configuration file.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::util::{at_most, dns_name, duration, is_plugin_name, positive, workers, Seconds, MAX_SPARES};
use crate::{yaml, ConfigError, DhcpSection, DnsSection, Limits, ReservedNames, Secret, ServerConfig, ServerSection};

// Raw shapes of the file. Every field is optional so that a missing required
// key is reported by name (`server.listen: required`) by `validate`, rather
// than as serde's "missing field" against the parent section.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<RawServer>,
    dhcp: Option<RawDhcp>,
    plugin: Option<BTreeMap<String, serde_json::Value>>,
    limits: Option<RawLimits>,
    tcpforward: Option<RawTcpForward>,
    udpforward: Option<RawUdpForward>,
    resolver: Option<RawResolver>,
    dns: Option<RawDns>,
    clients: Option<Vec<crate::clients::RawClient>>,
    #[serde(rename = "clientsFile")]
    clients_file: Option<String>,
    admin: Option<RawAdmin>,
    access: Option<crate::access::RawAccess>,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    node: Option<String>,
    etcd_endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    lease_ttl: Option<Seconds>,
    advertise: Option<String>,
    key: Option<String>,
}

/// etcd endpoints (none empty) and a key prefix (`/…`, not ending in `/`;
/// `default` when unset), each error naming its key.
fn etcd_keys(
    (endpoints_key, endpoints): (&str, Vec<String>),
    (prefix_key, prefix, default): (&str, Option<String>, &str),
) -> Result<(Vec<String>, String), ConfigError> {
    if let Some(i) = endpoints.iter().position(|e| e.trim().is_empty()) {
        return Err(ConfigError::invalid(format!("{endpoints_key}[{i}]"), "must not be empty"));
    }
    let prefix = prefix.unwrap_or_else(|| default.into());
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        return Err(ConfigError::invalid(
            prefix_key,
            format!("must start with '/' and not end with it, e.g. {default}"),
        ));
    }
    Ok((endpoints, prefix))
}

/// The `cluster` section: every key a node needs to find the others.
fn cluster(raw: Option<RawCluster>) -> Result<Option<crate::ClusterSection>, ConfigError> {
    let Some(c) = raw else { return Ok(None) };
    let node = c.node.ok_or_else(|| ConfigError::invalid("cluster.node", "required"))?;
    let name_ok = !node.is_empty()
        && node.len() <= 63
        && node.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !node.starts_with('-')
        && !node.ends_with('-');
    if !name_ok {
        return Err(ConfigError::invalid(
            "cluster.node",
            format!("`{node}`: 1-63 lowercase letters, digits and inner hyphens, e.g. node-a"),
        ));
    }
    let etcd_endpoints = c.etcd_endpoints.unwrap_or_default();
    if etcd_endpoints.is_empty() {
        return Err(ConfigError::invalid(
            "cluster.etcdEndpoints",
            "required: at least one, e.g. http://127.0.0.1:2379",
        ));
    }
    let (etcd_endpoints, prefix) =
        etcd_keys(("cluster.etcdEndpoints", etcd_endpoints), ("cluster.prefix", c.prefix, "/opennotr/cluster"))?;
    let lease_ttl = duration("cluster.leaseTtl", c.lease_ttl, Duration::from_secs(10))?;
    if !(Duration::from_secs(2)..=Duration::from_secs(300)).contains(&lease_ttl) {
        return Err(ConfigError::invalid("cluster.leaseTtl", "must be between 2 and 300 seconds"));
    }
    if let Some(a) = &c.advertise {
        crate::util::host_port(a).map_err(|m| ConfigError::invalid("cluster.advertise", m))?;
    }
    // Node links carry visitors' traffic between nodes: no node without a
    // secret to authenticate them.
    let key = match c.key {
        Some(k) if !k.is_empty() => Secret::new(k),
        Some(_) => return Err(ConfigError::invalid("cluster.key", "must not be empty")),
        None => {
            return Err(ConfigError::invalid(
                "cluster.key",
                "required: the secret every node of the cluster shares, which authenticates the links \
                 between nodes (e.g. the output of `openssl rand -hex 32`)",
            ))
        }
    };
    Ok(Some(crate::ClusterSection { node, etcd_endpoints, prefix, lease_ttl, advertise: c.advertise, key }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDns {
    listen: Option<String>,
    ttl: Option<u64>,
    wildcard: Option<bool>,
    nameserver: Option<String>,
}

/// `server.publicIP`: one address or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServer {
    listen: Option<String>,
    auth_key: Option<String>,
    auth_key_domains: Option<Vec<String>>,
    domain: Option<String>,
    // The original spells these in lower case.
    #[serde(rename = "tcplisten")]
    tcp_listen: Option<String>,
    #[serde(rename = "udplisten")]
    udp_listen: Option<String>,
    allow_plaintext: Option<bool>,
    vlan_allow_remote: Option<bool>,
    #[serde(rename = "publicIP")]
    public_ip: Option<OneOrMany>,
    handshake_timeout: Option<Seconds>,
    hello_timeout: Option<Seconds>,
    keepalive_interval: Option<Seconds>,
    keepalive_timeout: Option<Seconds>,
    connect_timeout: Option<Seconds>,
    shutdown_grace: Option<Seconds>,
    workers: Option<u64>,
    quic: Option<bool>,
    quic_listen: Option<String>,
    quic_cert: Option<String>,
    quic_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDhcp {
    cidr: Option<String>,
    ip: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLimits {
    max_clients: Option<u64>,
    max_forwards_per_client: Option<u64>,
    max_streams_per_client: Option<u64>,
    max_udp_flows_per_forward: Option<u64>,
    max_handshakes: Option<u64>,
    max_handshakes_per_ip: Option<u64>,
    auth_failures: Option<u64>,
    auth_penalty: Option<Seconds>,
    auth_penalty_max: Option<Seconds>,
    penalty_sources: Option<u64>,
    fd_reserve: Option<u64>,
    spare_channels: Option<u64>,
    client_bandwidth: Option<crate::bandwidth::BandwidthText>,
    forward_bandwidth: Option<crate::bandwidth::BandwidthText>,
}

// The timeouts of the original's last version are parsed so its files load,
// and otherwise ignored: the new transport has its own keepalive.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTcpForward {
    listen: Option<String>,
    #[allow(dead_code)]
    read_timeout: Option<i64>,
    #[allow(dead_code)]
    write_timeout: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUdpForward {
    listen: Option<String>,
    #[allow(dead_code)]
    read_timeout: Option<i64>,
    #[allow(dead_code)]
    write_timeout: Option<i64>,
    #[allow(dead_code)]
    session_timeout: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawResolver {
    etcd_endpoints: Option<Vec<String>>,
    etcd_prefix: Option<String>,
    lease_ttl: Option<u64>,
}

pub(crate) fn parse(text: &str, base: Option<&std::path::Path>) -> Result<ServerConfig, ConfigError> {
    let raw: RawFile = yaml::from_str(text)?.unwrap_or_default();
    validate(raw, base)
}

fn validate(raw: RawFile, base: Option<&std::path::Path>) -> Result<ServerConfig, ConfigError> {
    let s = raw.server.unwrap_or_default();
    let quic = quic(&s, base)?;
    let listen = listen("server.listen", required("server.listen", s.listen)?.as_str())?;

    let auth_key = s.auth_key;
    if auth_key.as_deref() == Some("") {
        return Err(ConfigError::invalid("server.authKey", "must not be empty"));
    }
    if auth_key.is_none() && raw.clients.is_none() && raw.clients_file.is_none() {
        return Err(ConfigError::invalid("server.authKey", "required (unless clients or clientsFile is set)"));
    }
    let domain = required("server.domain", s.domain)?;
    let domain = dns_name(&domain).map_err(|m| ConfigError::invalid("server.domain", m))?;

    // The DNS section first: its name server is one of the names no client
    // may claim, which the credentials below are checked against.
    let dns = match raw.dns {
        None => None,
        Some(d) => {
            let dns_listen = self::listen("dns.listen", required("dns.listen", d.listen)?.as_str())?;
            let ttl = match d.ttl {
                None => 60,
                Some(t @ 0..=86_400) => t as u32,
                Some(t) => return Err(ConfigError::invalid("dns.ttl", format!("{t} is more than a day (86400)"))),
            };
            let nameserver = match d.nameserver {
                None => format!("ns1.{domain}"),
                Some(n) => dns_name(&n).map_err(|m| ConfigError::invalid("dns.nameserver", m))?,
            };
            Some(DnsSection { listen: dns_listen, ttl, wildcard: d.wildcard.unwrap_or(false), nameserver })
        }
    };
    let reserved = ReservedNames::new(&domain, dns.as_ref().map(|d| d.nameserver.as_str()));

    let mut clients = crate::clients::validate("clients", raw.clients.unwrap_or_default(), &reserved)?;
    let clients_file = raw.clients_file.filter(|f| !f.is_empty()).map(|f| match base {
        Some(dir) if std::path::Path::new(&f).is_relative() => dir.join(f),
        _ => std::path::PathBuf::from(f),
    });
    if let Some(path) = &clients_file {
        for c in crate::clients::load_file(path, &reserved)? {
            if clients.iter().any(|o| o.name == c.name) {
                return Err(ConfigError::invalid(
                    "clientsFile",
                    format!("client {:?} is also listed under clients", c.name),
                ));
            }
            clients.push(c);
        }
    }
    let admin = match raw.admin {
        None => None,
        Some(a) => {
            let listen = self::listen("admin.listen", a.listen.as_deref().unwrap_or("127.0.0.1:7070"))?;
            let token = required("admin.token", a.token)?;
            if token.len() < 16 {
                return Err(ConfigError::invalid("admin.token", "must be at least 16 characters"));
            }
            Some(crate::AdminSection { listen, token: Secret::new(token) })
        }
    };
    let access = raw.access.unwrap_or_default();
    let access = crate::access::validate("access", access.allow, access.deny, access.basic_auth)?;

    let tcp_listen = merge_listen(
        ("server.tcplisten", s.tcp_listen),
        ("tcpforward.listen", raw.tcpforward.unwrap_or_default().listen),
    )?;
    let udp_listen = merge_listen(
        ("server.udplisten", s.udp_listen),
        ("udpforward.listen", raw.udpforward.unwrap_or_default().listen),
    )?;

    let keepalive_interval = duration("server.keepaliveInterval", s.keepalive_interval, Duration::from_secs(5))?;
    let keepalive_timeout = duration("server.keepaliveTimeout", s.keepalive_timeout, Duration::from_secs(15))?;
    check_keepalive("server.keepaliveTimeout", keepalive_interval, keepalive_timeout)?;

    let public_ips = match s.public_ip {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    }
    .into_iter()
    .filter(|t| !t.is_empty())
    .map(|t| {
        t.parse::<IpAddr>().map_err(|_| ConfigError::invalid("server.publicIP", format!("`{t}` is not an IP address")))
    })
    .collect::<Result<Vec<_>, _>>()?;

    let server = ServerSection {
        quic,
        public_ips,
        listen,
        auth_key_domains: match s.auth_key_domains {
            Some(_) if auth_key.is_none() => {
                return Err(ConfigError::invalid(
                    "server.authKeyDomains",
                    "limits what clients of the shared key may claim, but server.authKey is not set",
                ))
            }
            Some(list) => {
                let list = crate::clients::domain_patterns("server.authKeyDomains", &list)?;
                reserved.check("server.authKeyDomains", &list)?;
                Some(list)
            }
            None => None,
        },
        auth_key: auth_key.map(Secret::new),
        domain,
        tcp_listen,
        udp_listen,
        allow_plaintext: s.allow_plaintext.unwrap_or(false),
        vlan_allow_remote: s.vlan_allow_remote.unwrap_or(false),
        handshake_timeout: duration("server.handshakeTimeout", s.handshake_timeout, Duration::from_secs(10))?,
        hello_timeout: duration("server.helloTimeout", s.hello_timeout, Duration::from_secs(5))?,
        keepalive_interval,
        keepalive_timeout,
        connect_timeout: duration("server.connectTimeout", s.connect_timeout, Duration::from_secs(10))?,
        shutdown_grace: duration("server.shutdownGrace", s.shutdown_grace, Duration::from_secs(10))?,
        workers: workers("server.workers", s.workers)?,
    };

    let dhcp = dhcp(raw.dhcp.unwrap_or_default())?;

    let mut plugins = BTreeMap::new();
    for (name, value) in raw.plugin.unwrap_or_default() {
        let key = format!("plugin.{name}");
        if !is_plugin_name(&name) {
            return Err(ConfigError::invalid(key, "plugin names may only hold lowercase letters, digits, '_' and '-'"));
        }
        let value = plugin_value(value).map_err(|m| ConfigError::invalid(&key, m))?;
        plugins.insert(name, value);
    }

    let l = raw.limits.unwrap_or_default();
    let d = Limits::default();
    let limits = Limits {
        max_clients: positive("limits.maxClients", l.max_clients, d.max_clients)?,
        max_forwards_per_client: positive(
            "limits.maxForwardsPerClient",
            l.max_forwards_per_client,
            d.max_forwards_per_client,
        )?,
        max_streams_per_client: positive(
            "limits.maxStreamsPerClient",
            l.max_streams_per_client,
            d.max_streams_per_client,
        )?,
        max_udp_flows_per_forward: positive(
            "limits.maxUdpFlowsPerForward",
            l.max_udp_flows_per_forward,
            d.max_udp_flows_per_forward,
        )?,
        max_handshakes: positive("limits.maxHandshakes", l.max_handshakes, d.max_handshakes)?,
        max_handshakes_per_ip: positive("limits.maxHandshakesPerIp", l.max_handshakes_per_ip, d.max_handshakes_per_ip)?,
        auth_failures: at_most("limits.authFailures", l.auth_failures, d.auth_failures.into(), 1000)? as u32,
        auth_penalty: duration("limits.authPenalty", l.auth_penalty, d.auth_penalty)?,
        auth_penalty_max: duration("limits.authPenaltyMax", l.auth_penalty_max, d.auth_penalty_max)?,
        penalty_sources: positive("limits.penaltySources", l.penalty_sources, d.penalty_sources)?,
        fd_reserve: at_most("limits.fdReserve", l.fd_reserve, d.fd_reserve as u64, 65_536)? as usize,
        spare_channels: at_most("limits.spareChannels", l.spare_channels, d.spare_channels as u64, MAX_SPARES)?
            as usize,
        client_bandwidth: crate::bandwidth::optional("limits.clientBandwidth", l.client_bandwidth.as_ref())?,
        forward_bandwidth: crate::bandwidth::optional("limits.forwardBandwidth", l.forward_bandwidth.as_ref())?,
    };
    if limits.auth_penalty_max < limits.auth_penalty {
        return Err(ConfigError::invalid("limits.authPenaltyMax", "must not be less than limits.authPenalty"));
    }

    let resolver = raw.resolver.unwrap_or_default();
    let (etcd_endpoints, etcd_prefix) = etcd_keys(
        ("resolver.etcdEndpoints", resolver.etcd_endpoints.unwrap_or_default()),
        ("resolver.etcdPrefix", resolver.etcd_prefix, "/skydns"),
    )?;
    let etcd_lease_ttl = match resolver.lease_ttl {
        None => 30,
        Some(t @ 5..=3600) => t,
        Some(t) => {
            return Err(ConfigError::invalid("resolver.leaseTtl", format!("{t} is not between 5 and 3600 seconds")))
        }
    };

    Ok(ServerConfig {
        server,
        dhcp,
        plugins,
        limits,
        etcd_endpoints,
        etcd_prefix,
        etcd_lease_ttl,
        dns,
        clients,
        clients_file,
        admin,
        access,
        cluster: cluster(raw.cluster)?,
    })
}

/// `server.quic` and the keys that go with it. `quicListen` alone turns
/// QUIC on; with `quic: false` it (like `quicCert`/`quicKey`) is an error
/// rather than silently unused.
fn quic(s: &RawServer, base: Option<&std::path::Path>) -> Result<Option<crate::QuicSection>, ConfigError> {
    let listen = match s.quic_listen.as_deref().filter(|l| !l.is_empty()) {
        Some(l) => Some(listen("server.quicListen", l)?),
        None => None,
    };
    let on = s.quic.unwrap_or(listen.is_some());
    let path = |p: &str| match base {
        Some(dir) if std::path::Path::new(p).is_relative() => dir.join(p),
        _ => std::path::PathBuf::from(p),
    };
    let cert = match (s.quic_cert.as_deref().filter(|c| !c.is_empty()), s.quic_key.as_deref().filter(|k| !k.is_empty()))
    {
        (None, None) => None,
        (Some(c), Some(k)) => Some((path(c), path(k))),
        (Some(_), None) => return Err(ConfigError::invalid("server.quicKey", "required with server.quicCert")),
        (None, Some(_)) => return Err(ConfigError::invalid("server.quicCert", "required with server.quicKey")),
    };
    if !on {
        let stray = [("server.quicListen", listen.is_some()), ("server.quicCert", cert.is_some())];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(ConfigError::invalid(
                *key,
                "set, but server.quic is false; set server.quic: true or remove it",
            ));
        }
        return Ok(None);
    }
    Ok(Some(crate::QuicSection { listen, cert }))
}

fn required(key: &str, value: Option<String>) -> Result<String, ConfigError> {
    value.ok_or_else(|| ConfigError::invalid(key, "required"))
}

fn listen(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    crate::listen::parse_listen(value).map_err(|m| ConfigError::invalid(key, m))
}

/// `server.tcplisten` (original README) and `tcpforward.listen` (original
/// HEAD) name the same listener; either may be used, both only if they agree.
fn merge_listen(
    (new_key, new): (&str, Option<String>),
    (old_key, old): (&str, Option<String>),
) -> Result<Option<SocketAddr>, ConfigError> {
    // An empty string was Go's zero value, i.e. "not configured".
    let parse = |key: &str, v: Option<String>| match v.filter(|v| !v.is_empty()) {
        Some(v) => listen(key, &v).map(Some),
        None => Ok(None),
    };
    let new_addr = parse(new_key, new)?;
    let old_addr = parse(old_key, old)?;
    match (new_addr, old_addr) {
        (Some(a), Some(b)) if a != b => {
            Err(ConfigError::invalid(old_key, format!("{b} contradicts {new_key} ({a}); set only one of them")))
        }
        (a, b) => Ok(a.or(b)),
    }
}

pub(crate) fn check_keepalive(key: &str, interval: Duration, timeout: Duration) -> Result<(), ConfigError> {
    if timeout <= interval {
        return Err(ConfigError::invalid(
            key,
            format!(
                "must be greater than keepaliveInterval ({}s), got {}s",
                interval.as_secs_f64(),
                timeout.as_secs_f64()
            ),
        ));
    }
    Ok(())
}

fn dhcp(raw: RawDhcp) -> Result<DhcpSection, ConfigError> {
    let text = required("dhcp.cidr", raw.cidr)?;
    let cidr: ipnet::Ipv4Net = text.parse().map_err(|_| {
        ConfigError::invalid("dhcp.cidr", format!("`{text}` is not an IPv4 CIDR such as 100.64.242.1/24"))
    })?;
    // /31 and /32 leave no address to hand out once the network and
    // broadcast addresses are set aside.
    if cidr.prefix_len() > 30 {
        return Err(ConfigError::invalid(
            "dhcp.cidr",
            format!("/{} is too small for an address pool; use /30 or larger", cidr.prefix_len()),
        ));
    }
    let ip = match raw.ip.filter(|ip| !ip.is_empty()) {
        None => None,
        Some(text) => {
            let ip: Ipv4Addr = text
                .parse()
                .map_err(|_| ConfigError::invalid("dhcp.ip", format!("`{text}` is not an IPv4 address")))?;
            if !cidr.contains(&ip) {
                return Err(ConfigError::invalid("dhcp.ip", format!("{ip} is outside dhcp.cidr {cidr}")));
            }
            Some(ip)
        }
    };
    Ok(DhcpSection { cidr, ip })
}

/// The original stores each plugin's configuration as a string holding JSON;
/// a YAML mapping is the friendlier spelling of the same thing.
fn plugin_value(value: serde_json::Value) -> Result<serde_json::Value, String> {
    let value = match value {
        serde_json::Value::Null => return Ok(serde_json::Value::Object(Default::default())),
        serde_json::Value::String(s) if s.trim().is_empty() => {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(&s)
            .map_err(|e| format!("invalid JSON: {e} (position within the value)"))?,
        other => other,
    };
    // Every plugin reads an object of settings; anything else is a mistake
    // better caught here than as a plugin start-up failure.
    if value.is_object() {
        Ok(value)
    } else {
        Err(format!("expected a JSON object (a string holding `{{...}}`) or a mapping, got {value}"))
    }
}
