//! The PROXY protocol header a forward asks for (`proxyProtocol`), written
//! to the local service ahead of a stream's first byte (TCP) or in front of
//! every datagram (UDP, v2's DGRAM form): see docs/proxy-protocol.md.
//!
//! The header is found by what is dialed, `(transport, target)`, not by
//! the forward the visitor came through: the server names only the target,
//! and a service that expects a header expects it on every connection,
//! those of the virtual LAN (the VIP path) included. The configuration
//! makes forwards that share a target agree on it.

use std::collections::HashMap;
use std::net::SocketAddr;

use opennotr_config::{ClientConfig, ProxyProtocol};
use opennotr_proto::message::StreamProtocol;
use opennotr_proto::proxy_header::{self, Transport, Version};

/// Who a stream is for, as the server told it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Visitor {
    /// The visitor's address.
    pub(crate) peer: Option<SocketAddr>,
    /// The server address it reached.
    pub(crate) local: Option<SocketAddr>,
}

/// The targets whose service wants a header, and which.
#[derive(Debug, Clone, Default)]
pub(crate) struct Headers(HashMap<(StreamProtocol, SocketAddr), Version>);

impl Headers {
    pub(crate) fn from_config(cfg: &ClientConfig) -> Headers {
        let mut map = HashMap::new();
        for f in &cfg.forwards {
            let Some(p) = f.proxy_protocol else { continue };
            let proto = if f.protocol == "udp" { StreamProtocol::Udp } else { StreamProtocol::Tcp };
            let version = match p {
                ProxyProtocol::V1 => Version::V1,
                ProxyProtocol::V2 => Version::V2,
            };
            for &(_, local) in &f.ports {
                map.insert((proto, SocketAddr::new(f.local_ip, local)), version);
            }
        }
        Headers(map)
    }

    /// What to write first on a TCP connection to `target`, if anything.
    pub(crate) fn stream(&self, target: SocketAddr, v: Visitor) -> Option<Vec<u8>> {
        let version = *self.0.get(&(StreamProtocol::Tcp, target))?;
        Some(proxy_header::stream_header(version, v.peer, v.local))
    }

    /// What goes in front of every datagram to `target`, if anything
    /// (v2 only: the configuration refuses v1 on udp).
    pub(crate) fn datagram(&self, target: SocketAddr, v: Visitor) -> Option<Vec<u8>> {
        match self.0.get(&(StreamProtocol::Udp, target))? {
            Version::V2 => Some(proxy_header::v2(Transport::Datagram, v.peer, v.local)),
            Version::V1 => None,
        }
    }
}
