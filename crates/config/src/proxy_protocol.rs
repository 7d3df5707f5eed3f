//! `forwards[i].proxyProtocol`: the PROXY protocol header the client
//! writes to a forward's local service (docs/proxy-protocol.md).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::{ConfigError, ForwardConfig, ProxyProtocol};

/// The key's value for a forward of `protocol`, checked against what that
/// plugin can carry.
pub(crate) fn parse(key: &str, protocol: &str, raw: Option<String>) -> Result<Option<ProxyProtocol>, ConfigError> {
    let Some(text) = raw else { return Ok(None) };
    let version = match text.as_str() {
        "v1" => ProxyProtocol::V1,
        "v2" => ProxyProtocol::V2,
        other => return Err(ConfigError::invalid(key, format!("`{other}` is neither v1 nor v2"))),
    };
    match (protocol, version) {
        ("tcp" | "tls", _) | ("udp", ProxyProtocol::V2) => Ok(Some(version)),
        ("udp", ProxyProtocol::V1) => {
            Err(ConfigError::invalid(key, "v1 has no UDP form; use v2 (a DGRAM header in front of every datagram)"))
        }
        // The gateway keeps connections to the service open across
        // visitors, so a header at a connection's start would name the
        // wrong one for every request after the first.
        ("http" | "https" | "h2c", _) => Err(ConfigError::invalid(
            key,
            format!(
                "not for {protocol} forwards: the gateway pools connections to the service across visitors; \
                 it sends the visitor's address in X-Forwarded-For and X-Real-IP instead"
            ),
        )),
        _ => Err(ConfigError::invalid(key, format!("only tcp, udp and tls forwards can send it, not {protocol}"))),
    }
}

/// The client looks the header up by what it dials (transport and
/// address), so forwards sharing a local service must agree on it.
pub(crate) fn check_shared_targets(forwards: &[ForwardConfig]) -> Result<(), ConfigError> {
    // (udp?, target) -> (forward index, its setting)
    let mut seen: HashMap<(bool, SocketAddr), (usize, Option<ProxyProtocol>)> = HashMap::new();
    for (i, f) in forwards.iter().enumerate() {
        let udp = f.protocol == "udp";
        for &(_, port) in &f.ports {
            let target = SocketAddr::new(f.local_ip, port);
            let (first, theirs) = *seen.entry((udp, target)).or_insert((i, f.proxy_protocol));
            if theirs != f.proxy_protocol {
                let name = |p: Option<ProxyProtocol>| p.map_or("none", ProxyProtocol::as_str);
                return Err(ConfigError::invalid(
                    format!("forwards[{i}].proxyProtocol"),
                    format!(
                        "{} here, but forwards[{first}] reaches the same service {target}/{} with {}; \
                         a service gets the same header on every connection",
                        name(f.proxy_protocol),
                        if udp { "udp" } else { "tcp" },
                        name(theirs),
                    ),
                ));
            }
        }
    }
    Ok(())
}
