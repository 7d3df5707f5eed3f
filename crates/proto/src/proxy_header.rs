//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2) the client writes to a local service ahead of a visitor's bytes,
//! so the service sees the visitor's address rather than the client's.
//!
//! Only the encoder lives here: the client sends headers and never reads
//! one. The addresses are the visitor's (`peer`, the source) and the server
//! address it reached (`local`, the destination); both come from the server
//! and are only as true as it is.
//!
//! Normalisation, so that the two addresses share a family where they can:
//! an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 visitor) is written as the IPv4 address; an
//! unknown or unspecified destination (a UDP socket bound to `0.0.0.0`)
//! becomes the unspecified address of the source's family. A visitor that
//! is not known gives `PROXY UNKNOWN` (v1) or the LOCAL command (v2): the
//! service then uses the connection's own addresses. Families that still
//! differ (an IPv4 visitor that reached an IPv6 address) give `UNKNOWN` in
//! v1, which cannot mix them, and INET6 with the IPv4 address mapped in v2,
//! which keeps the visitor's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first 12 bytes of every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Longest version 1 header, CRLF included (the specification's bound).
pub const V1_MAX_LEN: usize = 107;

/// Longest version 2 header this module writes: 16 fixed bytes and two
/// IPv6 addresses with their ports.
pub const V2_MAX_LEN: usize = 16 + 36;

/// Which header a forward asks for (`forwards[i].proxyProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The human-readable line (`PROXY TCP4 …\r\n`); TCP only.
    V1,
    /// The binary form; TCP (STREAM) and UDP (DGRAM).
    V2,
}

/// What the service's socket carries (version 2's transport nibble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP connection: one header at its start.
    Stream,
    /// UDP: one header in front of every datagram.
    Datagram,
}

/// The header `version` writes for a TCP connection from `peer` that
/// reached `local`.
pub fn stream_header(version: Version, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Vec<u8> {
    match version {
        Version::V1 => v1(peer, local),
        Version::V2 => v2(Transport::Stream, peer, local),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address; anything else as it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Source and destination as written, or `None` when the visitor is not
/// known (see the module's comment for the rules).
fn endpoints(peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Option<(SocketAddr, SocketAddr)> {
    let src = canonical(peer?);
    let unspecified = |port| match src {
        SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
        SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
    };
    let dst = match local.map(canonical) {
        None => unspecified(0),
        Some(d) if d.ip().is_unspecified() => unspecified(d.port()),
        Some(d) => d,
    };
    Some((src, dst))
}

/// A version 1 header: `PROXY TCP4|TCP6 src dst sport dport\r\n`, or
/// `PROXY UNKNOWN\r\n`.
pub fn v1(peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Vec<u8> {
    let line = match endpoints(peer, local) {
        Some((s @ SocketAddr::V4(_), d @ SocketAddr::V4(_))) => {
            format!("PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port())
        }
        // Rust writes IPv6 addresses in RFC 5952's canonical form, which
        // the specification asks for; a mapped address never gets here.
        Some((s @ SocketAddr::V6(_), d @ SocketAddr::V6(_))) => {
            format!("PROXY TCP6 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port())
        }
        _ => "PROXY UNKNOWN\r\n".to_string(),
    };
    line.into_bytes()
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// A version 2 header: the PROXY command over INET or INET6 with
/// `transport`, or LOCAL (no addresses) when the visitor is not known.
pub fn v2(transport: Transport, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_MAX_LEN);
    out.extend_from_slice(&V2_SIGNATURE);
    let t = match transport {
        Transport::Stream => 0x1,
        Transport::Datagram => 0x2,
    };
    match endpoints(peer, local) {
        None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            out.extend_from_slice(&[0x21, 0x10 | t, 0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        Some((s, d)) => {
            out.extend_from_slice(&[0x21, 0x20 | t, 0, 36]);
            out.extend_from_slice(&v6(s.ip()).octets());
            out.extend_from_slice(&v6(d.ip()).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a strict receiver learns from a header.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        /// v1 UNKNOWN or v2 LOCAL: use the connection's own addresses.
        Unknown,
        Proxied {
            src: SocketAddr,
            dst: SocketAddr,
            dgram: bool,
        },
    }

    /// A v1 decoder written from the specification, independently of the
    /// encoder: the whole input must be exactly one header.
    fn decode_v1(b: &[u8]) -> Result<Seen, String> {
        if b.len() > V1_MAX_LEN {
            return Err("longer than 107 bytes".into());
        }
        let line = b.strip_suffix(b"\r\n").ok_or("no CRLF at the end")?;
        if line.contains(&b'\r') || line.contains(&b'\n') {
            return Err("CR or LF inside".into());
        }
        let line = std::str::from_utf8(line).map_err(|e| e.to_string())?;
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["PROXY", "UNKNOWN"] => Ok(Seen::Unknown),
            ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
                let ip = |s: &str| -> Result<IpAddr, String> {
                    let ip: IpAddr = s.parse().map_err(|_| format!("bad address {s}"))?;
                    if ip.is_ipv4() != (*fam == "TCP4") {
                        return Err(format!("{s} is not of {fam}"));
                    }
                    if ip.to_string() != s {
                        return Err(format!("{s} is not in canonical form"));
                    }
                    Ok(ip)
                };
                let port = |s: &str| -> Result<u16, String> {
                    if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
                        return Err(format!("bad port {s}"));
                    }
                    if !s.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(format!("bad port {s}"));
                    }
                    s.parse().map_err(|_| format!("bad port {s}"))
                };
                Ok(Seen::Proxied {
                    src: SocketAddr::new(ip(src)?, port(sport)?),
                    dst: SocketAddr::new(ip(dst)?, port(dport)?),
                    dgram: false,
                })
            }
            _ => Err(format!("not a v1 line: {line:?}")),
        }
    }

    /// A v2 decoder from the specification: the input must be exactly one
    /// header, with a known command, family and transport.
    fn decode_v2(b: &[u8]) -> Result<Seen, String> {
        if b.len() < 16 || b[..12] != V2_SIGNATURE {
            return Err("no signature".into());
        }
        if b[12] >> 4 != 2 {
            return Err("not version 2".into());
        }
        let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
        let body = &b[16..];
        if body.len() != len {
            return Err(format!("length {len}, {} bytes follow", body.len()));
        }
        match b[12] & 0xf {
            0 => return Ok(Seen::Unknown),
            1 => {}
            c => return Err(format!("command {c}")),
        }
        let dgram = match b[13] & 0xf {
            1 => false,
            2 => true,
            t => return Err(format!("transport {t}")),
        };
        let (src, dst) = match (b[13] >> 4, len) {
            (1, 12) => {
                let ip = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&body[o..o + 4]).unwrap());
                (ip(0), ip(4))
            }
            (2, 36) => {
                let ip = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&body[o..o + 16]).unwrap());
                (ip(0), ip(16))
            }
            (f, n) => return Err(format!("family {f} with {n} address bytes")),
        };
        let ports = &body[len - 4..];
        Ok(Seen::Proxied {
            src: SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
            dst: SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
            dgram,
        })
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(Ipv4Addr::from(a).into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(Ipv6Addr::from(a).into(), p)),
            // Mapped and unspecified addresses, which random bytes miss.
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(a, p)| SocketAddr::new(Ipv4Addr::from(a).to_ipv6_mapped().into(), p)),
            any::<u16>().prop_map(|p| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), p)),
            any::<u16>().prop_map(|p| SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), p)),
        ]
    }

    /// What the header should say, from the module's rules, worked out
    /// here rather than with the encoder's helpers.
    fn expected(peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Option<(SocketAddr, SocketAddr)> {
        let unmap = |a: SocketAddr| match a.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), a.port()),
                None => a,
            },
            IpAddr::V4(_) => a,
        };
        let src = unmap(peer?);
        let any: IpAddr = if src.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let dst = match local.map(unmap) {
            None => SocketAddr::new(any, 0),
            Some(d) if d.ip().is_unspecified() => SocketAddr::new(any, d.port()),
            Some(d) => d,
        };
        Some((src, dst))
    }

    proptest! {
        #[test]
        fn v1_reads_back(peer in proptest::option::of(addr()), local in proptest::option::of(addr())) {
            let wire = v1(peer, local);
            let seen = decode_v1(&wire).map_err(|e| TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&wire))))?;
            match expected(peer, local) {
                Some((src, dst)) if src.is_ipv4() == dst.is_ipv4() => {
                    prop_assert_eq!(seen, Seen::Proxied { src, dst, dgram: false })
                }
                _ => prop_assert_eq!(seen, Seen::Unknown),
            }
        }

        #[test]
        fn v2_reads_back(
            peer in proptest::option::of(addr()),
            local in proptest::option::of(addr()),
            dgram in any::<bool>(),
        ) {
            let transport = if dgram { Transport::Datagram } else { Transport::Stream };
            let wire = v2(transport, peer, local);
            prop_assert!(wire.len() <= V2_MAX_LEN);
            let seen = decode_v2(&wire).map_err(TestCaseError::fail)?;
            match expected(peer, local) {
                Some((src, dst)) if src.is_ipv4() == dst.is_ipv4() => {
                    prop_assert_eq!(seen, Seen::Proxied { src, dst, dgram })
                }
                // Mixed families: both as IPv6, the IPv4 one mapped.
                Some((src, dst)) => {
                    let six = |a: SocketAddr| SocketAddr::new(v6(a.ip()).into(), a.port());
                    prop_assert_eq!(seen, Seen::Proxied { src: six(src), dst: six(dst), dgram })
                }
                None => prop_assert_eq!(seen, Seen::Unknown),
            }
        }

        #[test]
        fn stream_header_is_the_versions_form(peer in proptest::option::of(addr()), local in proptest::option::of(addr())) {
            prop_assert_eq!(stream_header(Version::V1, peer, local), v1(peer, local));
            prop_assert_eq!(stream_header(Version::V2, peer, local), v2(Transport::Stream, peer, local));
        }
    }

    fn a(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn v1_layouts() {
        // The specification's examples (section 2.1) and its longest lines.
        assert_eq!(
            v1(a("192.168.0.1:56324"), a("192.168.0.11:443")),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        let max4 = v1(a("255.255.255.255:65535"), a("255.255.255.255:65535"));
        assert_eq!(max4, b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n");
        assert_eq!(max4.len(), 56);
        let f = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        assert_eq!(v1(a(f), a(f)).len(), 104);
        assert_eq!(
            v1(a("[2001:db8::1]:4000"), a("[2001:db8::2]:443")),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n"
        );
        assert_eq!(v1(None, a("10.0.0.1:80")), b"PROXY UNKNOWN\r\n");
        // Mixed families cannot be one v1 line.
        assert_eq!(v1(a("10.0.0.1:1"), a("[2001:db8::2]:443")), b"PROXY UNKNOWN\r\n");
        // A dual-stack socket's view of an IPv4 visitor.
        assert_eq!(
            v1(a("[::ffff:203.0.113.7]:5000"), a("10.0.0.1:80")),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5000 80\r\n"
        );
        assert_eq!(v1(a("203.0.113.7:5000"), a("[::]:80")), b"PROXY TCP4 203.0.113.7 0.0.0.0 5000 80\r\n");
        assert_eq!(v1(a("203.0.113.7:5000"), None), b"PROXY TCP4 203.0.113.7 0.0.0.0 5000 0\r\n");
    }

    #[test]
    fn v2_layouts() {
        // Section 2.2: signature, 0x21 (v2, PROXY), 0x11 (INET, STREAM),
        // length 12, src, dst, sport, dport.
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(v2(Transport::Stream, a("192.168.0.1:56324"), a("192.168.0.11:443")), want);
        want[13] = 0x12;
        assert_eq!(v2(Transport::Datagram, a("192.168.0.1:56324"), a("192.168.0.11:443")), want);

        let six = v2(Transport::Datagram, a("[2001:db8::1]:53000"), a("[2001:db8::2]:53"));
        assert_eq!(six.len(), 16 + 36);
        assert_eq!(&six[12..16], &[0x21, 0x22, 0x00, 0x24]);
        assert_eq!(&six[16..32], &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(&six[32..48], &"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(&six[48..], &[0xcf, 0x08, 0x00, 0x35]);

        // LOCAL: version 2, command 0, AF_UNSPEC/UNSPEC, no address block.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(v2(Transport::Stream, None, a("10.0.0.1:80")), local);

        // A mapped visitor is written as IPv4.
        assert_eq!(v2(Transport::Stream, a("[::ffff:192.168.0.1]:56324"), a("192.168.0.11:443"))[13], 0x11);
        // Mixed families: INET6, the IPv4 visitor mapped.
        let mixed = v2(Transport::Stream, a("192.168.0.1:56324"), a("[2001:db8::2]:443"));
        assert_eq!(mixed[13], 0x21);
        assert_eq!(&mixed[16..32], &Ipv4Addr::new(192, 168, 0, 1).to_ipv6_mapped().octets());
    }

    #[test]
    fn the_test_decoders_are_strict() {
        let good = v1(a("10.0.0.1:1"), a("10.0.0.2:2"));
        for bad in [
            &b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n"[..],
            b"PROXY TCP4 10.0.0.1 10.0.0.2 01 2\r\n",
            b"PROXY TCP6 10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4  10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 65536\r\n",
            b"PROXY UNKNOWN\r\nx",
        ] {
            assert!(decode_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(decode_v1(&good).is_ok());
        let good = v2(Transport::Stream, a("10.0.0.1:1"), a("10.0.0.2:2"));
        let mut long = good.clone();
        long.push(0);
        let mut v3 = good.clone();
        v3[12] = 0x31;
        let mut short = good.clone();
        short[15] = 11;
        for bad in [long, v3, short, good[..good.len() - 1].to_vec()] {
            assert!(decode_v2(&bad).is_err());
        }
    }
}
