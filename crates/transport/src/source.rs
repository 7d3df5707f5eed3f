//! Where a connection comes from, as per-source caps and penalties count
//! it: an IPv4 address, or an IPv6 /64, which one host usually has whole.

use std::net::{IpAddr, Ipv6Addr};

/// A source: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The address.
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl Source {
    /// The source of `ip`; an IPv4-mapped IPv6 address is its IPv4 address.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Source::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            Source::V6(p) => write!(f, "{}/64", Ipv6Addr::from(u128::from(p) << 64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(a));
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(v6a), Source::of(v6b));
        assert_ne!(Source::of(v6a), Source::of(v6c));
        assert_eq!(Source::of(v6b).to_string(), "2001:db8:1:2::/64");
        assert_eq!(Source::of(a).to_string(), "192.0.2.1");
    }
}
