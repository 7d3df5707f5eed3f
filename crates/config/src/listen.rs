//! Go-style listen addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::util::parse_port;

const USAGE: &str = "expected \":port\", \"ip:port\", \"[ipv6]:port\" or \"localhost:port\"";

/// See [`crate::parse_listen`].
pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    // Go's `net.Listen` treats an empty host as "all interfaces"; the
    // original files rely on it (`listen: ":10100"`).
    if let Some(port) = s.strip_prefix(':') {
        let port = parse_port(port).ok_or_else(|| bad_port(s, port))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` has no port; {USAGE}"));
    };
    let port = parse_port(port).ok_or_else(|| bad_port(s, port))?;
    // `localhost` is the one name allowed: resolving names here would make
    // the bind address depend on the resolver at start-up.
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!("`{s}`: IPv6 addresses need brackets, e.g. \"[::]:{port}\""));
    }
    Err(format!("`{s}`: host must be an IP address or localhost; {USAGE}"))
}

fn bad_port(s: &str, port: &str) -> String {
    format!("`{s}`: `{port}` is not a port number 0-65535; {USAGE}")
}
