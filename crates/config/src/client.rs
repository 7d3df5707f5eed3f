//! `opennotr` configuration file.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::Deserialize;

use crate::bandwidth::BandwidthText;
use crate::server::check_keepalive;
use crate::util::{at_most, dns_name, duration, host_port, is_plugin_name, workers, PortMap, Seconds, MAX_SPARES};
use crate::{yaml, ClientConfig, ConfigError, ForwardConfig, Secret, VipPortConfig};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    server_addr: Option<ServerAddrs>,
    name: Option<String>,
    key: Option<String>,
    domain: Option<String>,
    forwards: Option<Vec<RawForward>>,
    plaintext: Option<bool>,
    transport: Option<String>,
    multiplex: Option<bool>,
    spare_channels: Option<u64>,
    keepalive_interval: Option<Seconds>,
    keepalive_timeout: Option<Seconds>,
    handshake_timeout: Option<Seconds>,
    reconnect_max_delay: Option<Seconds>,
    vip_ports: Option<Vec<RawVipPort>>,
    workers: Option<u64>,
    bandwidth: Option<BandwidthText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVipPort {
    port: Option<u32>,
    protocol: Option<String>,
    #[serde(rename = "localIP")]
    local_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    protocol: Option<String>,
    ports: Option<PortMap>,
    // The original's Go field names, hence not camelCase for `IP`.
    #[serde(rename = "localIP")]
    local_ip: Option<String>,
    #[serde(rename = "rawConfig")]
    raw_config: Option<String>,
    #[serde(rename = "proxyProtocol")]
    proxy_protocol: Option<String>,
    group: Option<String>,
    #[serde(rename = "groupKey")]
    group_key: Option<String>,
    balance: Option<String>,
    #[serde(rename = "healthCheck")]
    health_check: Option<crate::group::RawHealthCheck>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    #[serde(rename = "basicAuth")]
    basic_auth: Option<Vec<crate::access::RawBasicAuth>>,
    bandwidth: Option<BandwidthText>,
}

/// `serverAddr`: one `host:port`, several separated by commas (as the
/// command line and `OPENNOTR_SERVER` give them), or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum ServerAddrs {
    One(String),
    Many(Vec<String>),
}

/// More would only lengthen the time to notice that none answers.
const MAX_SERVERS: usize = 16;

fn servers(raw: Option<ServerAddrs>) -> Result<Vec<String>, ConfigError> {
    let list: Vec<String> = match raw.ok_or_else(|| ConfigError::invalid("serverAddr", "required"))? {
        ServerAddrs::One(s) => s.split(',').map(|a| a.trim().to_string()).collect(),
        ServerAddrs::Many(v) => v.into_iter().map(|a| a.trim().to_string()).collect(),
    };
    if list.is_empty() {
        return Err(ConfigError::invalid("serverAddr", "required"));
    }
    if list.len() > MAX_SERVERS {
        return Err(ConfigError::invalid("serverAddr", format!("{} servers; at most {MAX_SERVERS}", list.len())));
    }
    for (i, a) in list.iter().enumerate() {
        host_port(a).map_err(|m| ConfigError::invalid("serverAddr", m))?;
        if list[..i].contains(a) {
            return Err(ConfigError::invalid("serverAddr", format!("`{a}` is listed twice")));
        }
    }
    Ok(list)
}

pub(crate) fn parse(text: &str) -> Result<ClientConfig, ConfigError> {
    let raw: RawFile = yaml::from_str(text)?.unwrap_or_default();
    validate(raw)
}

fn validate(raw: RawFile) -> Result<ClientConfig, ConfigError> {
    let servers = servers(raw.server_addr)?;

    let name = raw.name.filter(|n| !n.is_empty());
    if let Some(n) = &name {
        if n.len() > 63 {
            return Err(ConfigError::invalid("name", "longer than 63 characters"));
        }
    }
    let key = raw.key.ok_or_else(|| ConfigError::invalid("key", "required"))?;
    if key.is_empty() {
        return Err(ConfigError::invalid("key", "must not be empty"));
    }

    // Go's zero value: an empty domain asks the server to pick one.
    let domain = match raw.domain.filter(|d| !d.is_empty()) {
        None => None,
        Some(d) => Some(dns_name(&d).map_err(|m| ConfigError::invalid("domain", m))?),
    };

    let mut forwards = Vec::new();
    // (protocol, public port) -> index of the forward that claimed it first.
    let mut claimed: HashMap<(String, u16), usize> = HashMap::new();
    for (i, f) in raw.forwards.unwrap_or_default().into_iter().enumerate() {
        forwards.push(forward(i, f, &mut claimed)?);
    }
    crate::proxy_protocol::check_shared_targets(&forwards)?;

    let keepalive_interval = duration("keepaliveInterval", raw.keepalive_interval, Duration::from_secs(5))?;
    let keepalive_timeout = duration("keepaliveTimeout", raw.keepalive_timeout, Duration::from_secs(15))?;
    check_keepalive("keepaliveTimeout", keepalive_interval, keepalive_timeout)?;

    let mut vip_ports = Vec::new();
    for (i, v) in raw.vip_ports.unwrap_or_default().into_iter().enumerate() {
        let key = |field: &str| format!("vipPorts[{i}].{field}");
        let port = match v.port {
            Some(p @ 1..=65535) => p as u16,
            Some(p) => return Err(ConfigError::invalid(key("port"), format!("{p} is not a port (1-65535)"))),
            None => return Err(ConfigError::invalid(key("port"), "required")),
        };
        let protocol = v.protocol.unwrap_or_else(|| "tcp".into());
        if protocol != "tcp" && protocol != "udp" {
            return Err(ConfigError::invalid(key("protocol"), format!("`{protocol}` is neither tcp nor udp")));
        }
        let local_ip = match v.local_ip.filter(|ip| !ip.is_empty()) {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(text) => text
                .parse()
                .map_err(|_| ConfigError::invalid(key("localIP"), format!("`{text}` is not an IP address")))?,
        };
        vip_ports.push(VipPortConfig { port, udp: protocol == "udp", local_ip });
    }

    let transport = match raw.transport.as_deref() {
        None | Some("tcp") => crate::Transport::Tcp,
        Some("quic") => crate::Transport::Quic,
        Some(other) => return Err(ConfigError::invalid("transport", format!("`{other}` is neither tcp nor quic"))),
    };
    // QUIC encrypts the tunnel itself; a plaintext QUIC session does not
    // exist, and saying so would only mislead.
    if transport == crate::Transport::Quic && raw.plaintext == Some(true) {
        return Err(ConfigError::invalid(
            "plaintext",
            "not with transport: quic (QUIC is always encrypted, and nothing is encrypted twice)",
        ));
    }

    Ok(ClientConfig {
        transport,
        vip_ports,
        servers,
        key: Secret::new(key),
        name,
        domain,
        forwards,
        plaintext: raw.plaintext.unwrap_or(false),
        multiplex: raw.multiplex.unwrap_or(true),
        spare_channels: at_most("spareChannels", raw.spare_channels, 4, MAX_SPARES)? as usize,
        keepalive_interval,
        keepalive_timeout,
        handshake_timeout: duration("handshakeTimeout", raw.handshake_timeout, Duration::from_secs(10))?,
        reconnect_max_delay: duration("reconnectMaxDelay", raw.reconnect_max_delay, Duration::from_secs(30))?,
        workers: workers("workers", raw.workers)?,
        bandwidth: crate::bandwidth::optional("bandwidth", raw.bandwidth.as_ref())?,
    })
}

fn forward(
    i: usize,
    raw: RawForward,
    claimed: &mut HashMap<(String, u16), usize>,
) -> Result<ForwardConfig, ConfigError> {
    let key = |field: &str| format!("forwards[{i}].{field}");

    let protocol = raw.protocol.ok_or_else(|| ConfigError::invalid(key("protocol"), "required"))?;
    if protocol.is_empty() {
        return Err(ConfigError::invalid(key("protocol"), "must not be empty"));
    }
    if !is_plugin_name(&protocol) {
        return Err(ConfigError::invalid(
            key("protocol"),
            format!("`{protocol}` is not a plugin name (lowercase letters, digits, '_' and '-')"),
        ));
    }

    let pairs = raw.ports.unwrap_or_default().0;
    if pairs.is_empty() {
        return Err(ConfigError::invalid(
            key("ports"),
            "must map at least one public port to a local port, e.g. `0: 8080`",
        ));
    }
    let mut ports = Vec::with_capacity(pairs.len());
    for (public, local) in &pairs {
        let bad = |m: String| ConfigError::invalid(key("ports"), m);
        let public = public.port().map_err(|m| bad(format!("public port: {m}")))?;
        let local = local.port().map_err(|m| bad(format!("local port: {m}")))?;
        if local == 0 {
            return Err(bad(format!("local port of public port {public} must be 1-65535, not 0")));
        }
        // Public port 0 means "server chooses", so any number of them may coexist.
        if public != 0 {
            if let Some(first) = claimed.insert((protocol.clone(), public), i) {
                let whose = if first == i { "earlier in this map".to_owned() } else { format!("by forwards[{first}]") };
                return Err(bad(format!("public port {public}/{protocol} is already used {whose}")));
            }
        }
        ports.push((public, local));
    }

    let local_ip = match raw.local_ip.filter(|ip| !ip.is_empty()) {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(text) => {
            text.parse().map_err(|_| ConfigError::invalid(key("localIP"), format!("`{text}` is not an IP address")))?
        }
    };

    let proxy_protocol = crate::proxy_protocol::parse(&key("proxyProtocol"), &protocol, raw.proxy_protocol)?;
    let group = crate::group::group(&key, raw.group, raw.group_key, raw.balance, raw.health_check)?;
    let access = crate::access::validate(&format!("forwards[{i}]"), raw.allow, raw.deny, raw.basic_auth)?;
    crate::access::for_protocol(&format!("forwards[{i}]"), &protocol, &access)?;
    let bandwidth = crate::bandwidth::optional(&key("bandwidth"), raw.bandwidth.as_ref())?;
    Ok(ForwardConfig {
        protocol,
        ports,
        local_ip,
        raw_config: raw.raw_config.filter(|c| !c.is_empty()),
        proxy_protocol,
        group,
        access,
        bandwidth,
    })
}
