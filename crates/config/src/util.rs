//! Value checks shared by the server and client files.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::ConfigError;

/// A duration written as a number of seconds. Deserialized by hand because
/// serde-saphyr would turn a quoted `"10"` into an `f64`; a duration written
/// as a string is a type error here, like any other wrong type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seconds(pub(crate) f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;
        impl Visitor<'_> for SecondsVisitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds such as 10 or 0.5")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
        }
        deserializer.deserialize_any(SecondsVisitor)
    }
}

/// Converts an optional `Seconds` to a `Duration`, `default` when absent.
pub(crate) fn duration(key: &str, value: Option<Seconds>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(Seconds(secs)) = value else {
        return Ok(default);
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(ConfigError::invalid(key, format!("must be a positive number of seconds, got {secs}")));
    }
    // A tiny positive value would round to zero nanoseconds and turn a
    // timeout into "expire immediately".
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ConfigError::invalid(key, format!("{secs} seconds is too small"))),
        Err(_) => Err(ConfigError::invalid(key, format!("{secs} seconds is too large"))),
    }
}

/// A positive count from `limits.*`, `default` when absent.
pub(crate) fn positive(key: &str, value: Option<u64>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(ConfigError::invalid(key, "must be greater than 0")),
        Some(n) => usize::try_from(n).map_err(|_| ConfigError::invalid(key, format!("{n} is too large"))),
    }
}

/// An optional whole number from 0 to `max`, `default` when absent.
pub(crate) fn at_most(key: &str, value: Option<u64>, default: u64, max: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(ConfigError::invalid(key, format!("{n} is more than {max}"))),
    }
}

/// Most spare data channels per client (`spareChannels`,
/// `limits.spareChannels`): each is a descriptor on the server for as long as
/// the client lives, and a few cover a burst of visitors while more are
/// opened behind them.
pub(crate) const MAX_SPARES: u64 = 64;

/// Most runtime threads a `workers` key takes: far beyond any core count,
/// low enough that a typo (`workers: 40000`) is caught before start-up.
const MAX_WORKERS: u64 = 1024;

/// An optional `workers` key: threads of the async runtime, `None` = tokio's
/// default (`TOKIO_WORKER_THREADS`, else one per core).
pub(crate) fn workers(key: &str, value: Option<u64>) -> Result<Option<usize>, ConfigError> {
    match value {
        Some(n) if n > MAX_WORKERS => Err(ConfigError::invalid(key, format!("{n} threads; at most {MAX_WORKERS}"))),
        Some(n) => positive(key, Some(n), 0).map(Some),
        None => Ok(None),
    }
}

/// Checks and lowercases a DNS name. One trailing dot (absolute form) is
/// dropped so `example.com.` and `example.com` mean the same zone.
pub(crate) fn dns_name(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() {
        return Err("must be a DNS name such as open.notr.tech".to_owned());
    }
    if name.len() > 253 {
        return Err(format!("`{s}` is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("`{s}` is not a DNS name: each label must be 1-63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(format!("`{s}` is not a DNS name: labels may only hold letters, digits and '-'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{s}` is not a DNS name: a label cannot start or end with '-'"));
        }
    }
    Ok(name)
}

/// Plugin and protocol names: `[a-z0-9_-]+`.
pub(crate) fn is_plugin_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks a dialable `host:port`: host is a DNS name, an IPv4 address or a
/// bracketed IPv6 address, port is 1-65535.
pub(crate) fn host_port(s: &str) -> Result<(), String> {
    let usage = "expected host:port such as demo.notr.tech:10100, 192.0.2.1:10100 or [2001:db8::1]:10100";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` has no port; {usage}"));
    };
    match parse_port(port) {
        Some(0) | None => return Err(format!("`{port}` is not a port number 1-65535; {usage}")),
        Some(_) => {}
    }
    if let Some(inner) = host.strip_prefix('[') {
        let valid = inner.strip_suffix(']').is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
        return if valid { Ok(()) } else { Err(format!("`{host}` is not a bracketed IPv6 address; {usage}")) };
    }
    if host.contains(':') {
        return Err(format!("IPv6 addresses need brackets: `[{host}]:{port}`"));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    dns_name(host).map(|_| ()).map_err(|e| format!("bad host: {e}"))
}

/// Decimal digits only: `u16::from_str` would also take `+80`.
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The closest candidate to a misspelt key, if one is close enough to be a
/// plausible typo (case differences count as typos: YAML keys are
/// case-sensitive but people write `authkey`).
pub(crate) fn closest<'a>(wrong: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let wrong_lower = wrong.to_ascii_lowercase();
    // A cut-off key (`prot` for `protocol`) is far in edit distance but an
    // obvious match.
    if wrong.len() >= 3 {
        if let Some(c) = candidates.iter().find(|c| c.to_ascii_lowercase().starts_with(&wrong_lower)) {
            return Some(c);
        }
    }
    let mut best: Option<(usize, &'a str)> = None;
    for &candidate in candidates {
        let distance = levenshtein(&wrong_lower, &candidate.to_ascii_lowercase());
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    let (distance, candidate) = best?;
    let allowed = (wrong.chars().count().max(candidate.chars().count()) / 3).max(2);
    (distance <= allowed).then_some(candidate)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb { diagonal } else { 1 + diagonal.min(above).min(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// One key or value of a `ports` map, kept loose so that every port problem
/// is reported by validation under the single key `forwards[i].ports`.
#[derive(Debug, Clone)]
pub(crate) enum PortText {
    Number(i128),
    Text(String),
    /// Anything else, described for the error message.
    Other(&'static str),
}

impl fmt::Display for PortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortText::Number(n) => write!(f, "{n}"),
            PortText::Text(s) => write!(f, "\"{s}\""),
            PortText::Other(what) => f.write_str(what),
        }
    }
}

impl PortText {
    /// The port number, or why it is not one.
    pub(crate) fn port(&self) -> Result<u16, String> {
        let n = match self {
            PortText::Number(n) => *n,
            // The original accepted `"2222"`, so quoted ports are numbers too.
            PortText::Text(s) => match parse_port(s) {
                Some(p) => return Ok(p),
                None => return Err(format!("{self} is not a port number")),
            },
            PortText::Other(what) => return Err(format!("expected a port number, found {what}")),
        };
        u16::try_from(n).map_err(|_| format!("port {n} is out of range 0-65535"))
    }
}

impl<'de> Deserialize<'de> for PortText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl<'de> Visitor<'de> for PortVisitor {
            type Value = PortText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortText, E> {
                Ok(PortText::Number(i128::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortText, E> {
                Ok(PortText::Number(i128::from(v)))
            }
            // serde-saphyr also reads `010` and `1e3` as floats; a port is
            // written as a plain decimal integer, so all of these are refused.
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<PortText, E> {
                Ok(PortText::Other("a number that is not a plain decimal integer"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortText, E> {
                Ok(PortText::Text(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<PortText, E> {
                Ok(PortText::Other("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<PortText, E> {
                Ok(PortText::Other("nothing (null)"))
            }
            fn visit_none<E: de::Error>(self) -> Result<PortText, E> {
                Ok(PortText::Other("nothing (null)"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PortText, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(PortText::Other("a mapping"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PortText, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PortText::Other("a list"))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// A `ports` mapping in file order (a `BTreeMap` would sort it, and the
/// contract promises file order).
#[derive(Debug, Clone, Default)]
pub(crate) struct PortMap(pub(crate) Vec<(PortText, PortText)>);

impl<'de> Deserialize<'de> for PortMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = PortMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of public port to local port, such as `2222: 22`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PortMap, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<PortText, PortText>()? {
                    pairs.push(pair);
                }
                Ok(PortMap(pairs))
            }
            // `ports:` with nothing after it; validation reports it as empty.
            fn visit_unit<E: de::Error>(self) -> Result<PortMap, E> {
                Ok(PortMap::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<PortMap, E> {
                Ok(PortMap::default())
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert_eq!(dns_name("Open.Notr.Tech").as_deref(), Ok("open.notr.tech"));
        assert_eq!(dns_name("open.notr.tech.").as_deref(), Ok("open.notr.tech"));
        assert_eq!(dns_name("localhost").as_deref(), Ok("localhost"));
        for bad in ["", ".", "a..b", "-a.b", "a-.b", "a_b.c", "a b", &"a".repeat(64), "é.com"] {
            assert!(dns_name(bad).is_err(), "{bad:?} accepted");
        }
        let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
        assert_eq!(long.len(), 254);
        assert!(dns_name(&long).is_err());
        assert!(dns_name(&long[1..]).is_ok());
    }

    #[test]
    fn host_ports() {
        for ok in ["demo.notr.tech:10100", "127.0.0.1:1", "[::1]:65535", "localhost:80"] {
            assert_eq!(host_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "demo.notr.tech",
            "demo.notr.tech:",
            "demo:0",
            "demo:65536",
            "demo:+80",
            ":80",
            "::1:80",
            "[::1:80",
            "[nope]:80",
            "a_b:80",
            "demo: 80",
        ] {
            assert!(host_port(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn suggestions() {
        let keys = ["listen", "authKey", "domain", "tcplisten", "udplisten"];
        assert_eq!(closest("listne", &keys), Some("listen"));
        assert_eq!(closest("authkey", &keys), Some("authKey"));
        assert_eq!(closest("tcpListen", &keys), Some("tcplisten"));
        assert_eq!(closest("prot", &["protocol", "ports"]), Some("protocol"));
        assert_eq!(closest("completely", &keys), None);
    }

    #[test]
    fn durations() {
        let d = |v: f64| duration("k", Some(Seconds(v)), Duration::ZERO);
        assert_eq!(d(0.5).ok(), Some(Duration::from_millis(500)));
        assert_eq!(d(10.0).ok(), Some(Duration::from_secs(10)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-12, 1e30] {
            assert_eq!(d(bad).err().as_ref().and_then(ConfigError::key), Some("k"), "{bad}");
        }
        assert_eq!(duration("k", None, Duration::from_secs(3)).ok(), Some(Duration::from_secs(3)));
    }
}
