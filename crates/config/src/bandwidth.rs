//! Bandwidth values: `clients[i].bandwidth`, `limits.clientBandwidth`, the
//! client's `bandwidth`, … (docs/bandwidth.md).
//!
//! A rate per second, each way: a number and a unit with nothing between
//! them but optional spaces, e.g. `10MB`, `80Mbit`, `512KiB`, `1.5GB`. Units,
//! case as written:
//! - bytes: `B`, `KB` (1000), `MB`, `GB`, `KiB` (1024), `MiB`, `GiB`;
//! - bits: `bit`, `Kbit` (1000 bits), `Mbit`, `Gbit`.
//!
//! An optional `/s` may follow (`10MB/s`). A bare YAML integer is bytes a
//! second. The value must come to at least 1 byte a second and at most
//! 2^53 (8 PB/s); `0`, negative numbers, other units (`mb`, `Mb`, `Mbps`)
//! and anything else are errors naming the key.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The largest rate accepted, bytes a second: far above any link, small
/// enough that every computation on it stays exact.
pub const MAX_RATE: u64 = 1 << 53;

const UNITS: &[(&str, f64)] = &[
    ("B", 1.0),
    ("KB", 1e3),
    ("MB", 1e6),
    ("GB", 1e9),
    ("KiB", 1024.0),
    ("MiB", 1024.0 * 1024.0),
    ("GiB", 1024.0 * 1024.0 * 1024.0),
    ("bit", 1.0 / 8.0),
    ("Kbit", 1e3 / 8.0),
    ("Mbit", 1e6 / 8.0),
    ("Gbit", 1e9 / 8.0),
];

/// Parses a bandwidth (see the module doc) to bytes a second.
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let usage = "expected a rate such as 10MB, 80Mbit or 512KiB (units B, KB, MB, GB, KiB, MiB, GiB, bit, Kbit, Mbit, Gbit; optional /s)";
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim_start());
    let valid_num = !num.is_empty()
        && num.matches('.').count() <= 1
        && !num.starts_with('.')
        && !num.ends_with('.')
        && num.len() <= 24;
    if !valid_num {
        return Err(format!("{s:?}: {usage}"));
    }
    let Some(&(_, factor)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(format!("{s:?}: unknown unit {unit:?}; {usage}"));
    };
    let value: f64 = num.parse().map_err(|_| format!("{s:?}: {usage}"))?;
    let bytes = (value * factor).round();
    if bytes < 1.0 {
        return Err(format!("{s:?} is less than 1 byte a second (omit the key for no limit)"));
    }
    if bytes > MAX_RATE as f64 {
        return Err(format!("{s:?} is more than {MAX_RATE} bytes a second"));
    }
    Ok(bytes as u64)
}

/// Shows a rate in the largest byte unit it is a whole number of, or in
/// bits when it is a whole number of megabits (as it was most likely
/// written): `10MB`, `512KiB`, `80Mbit`, `1234B`.
pub fn format_bandwidth(rate: u64) -> String {
    for (unit, factor) in [("GB", 1_000_000_000u64), ("GiB", 1 << 30), ("MB", 1_000_000), ("MiB", 1 << 20)] {
        if rate.is_multiple_of(factor) {
            return format!("{}{unit}", rate / factor);
        }
    }
    if let Some(bits) = rate.checked_mul(8).filter(|b| b.is_multiple_of(1_000_000)) {
        return format!("{}Mbit", bits / 1_000_000);
    }
    for (unit, factor) in [("KB", 1000u64), ("KiB", 1024)] {
        if rate.is_multiple_of(factor) {
            return format!("{}{unit}", rate / factor);
        }
    }
    format!("{rate}B")
}

/// A bandwidth as written in a file: a string, or an integer of bytes a
/// second; anything else is kept so the error can name the key.
#[derive(Debug, Clone)]
pub(crate) enum BandwidthText {
    Text(String),
    Number(u64),
    Other(&'static str),
}

impl BandwidthText {
    /// Bytes a second; errors name `key`.
    pub(crate) fn rate(&self, key: &str) -> Result<u64, crate::ConfigError> {
        let r = match self {
            BandwidthText::Text(s) => parse_bandwidth(s),
            BandwidthText::Number(0) => Err("0 is no bandwidth (omit the key for no limit)".to_string()),
            BandwidthText::Number(n) if *n > MAX_RATE => Err(format!("{n} is more than {MAX_RATE} bytes a second")),
            BandwidthText::Number(n) => Ok(*n),
            BandwidthText::Other(what) => Err(format!("expected a rate such as \"10MB\", got {what}")),
        };
        r.map_err(|m| crate::ConfigError::invalid(key, m))
    }
}

/// Checks an optional bandwidth; errors name `key`.
pub(crate) fn optional(key: &str, v: Option<&BandwidthText>) -> Result<Option<u64>, crate::ConfigError> {
    v.map(|b| b.rate(key)).transpose()
}

impl<'de> Deserialize<'de> for BandwidthText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BandwidthText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as \"10MB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BandwidthText, E> {
                Ok(BandwidthText::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BandwidthText, E> {
                Ok(if v < 0 { BandwidthText::Other("a negative number") } else { BandwidthText::Number(v as u64) })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<BandwidthText, E> {
                Ok(BandwidthText::Other("a fraction without a unit"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BandwidthText, E> {
                Ok(BandwidthText::Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<BandwidthText, E> {
                Ok(BandwidthText::Other("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<BandwidthText, E> {
                Ok(BandwidthText::Other("nothing"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<BandwidthText, A::Error> {
                while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(BandwidthText::Other("a map"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<BandwidthText, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(BandwidthText::Other("a list"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        for (text, bytes) in [
            ("10MB", 10_000_000),
            ("80Mbit", 10_000_000),
            ("512KiB", 524_288),
            ("1.5GB", 1_500_000_000),
            ("2 MiB/s", 2_097_152),
            ("  100B ", 100),
            ("8bit", 1),
            ("1Gbit", 125_000_000),
            ("64KB/s", 64_000),
        ] {
            assert_eq!(parse_bandwidth(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "10",
            "MB",
            "10mb",
            "10Mb",
            "10Mbps",
            "1.2.3MB",
            ".5MB",
            "5.MB",
            "-1MB",
            "0MB",
            "1bit",
            "10 M B",
            "1e3MB",
            "9999999999PB",
            "99999999999GB",
            "10MB/s/s",
        ] {
            assert!(parse_bandwidth(bad).is_err(), "{bad:?} was accepted");
        }
        let e = BandwidthText::Number(0).rate("limits.clientBandwidth").unwrap_err();
        assert_eq!(e.key(), Some("limits.clientBandwidth"));
        assert!(BandwidthText::Number(MAX_RATE + 1).rate("x").is_err());
        assert!(BandwidthText::Other("a boolean").rate("x").is_err());
        assert_eq!(BandwidthText::Number(1000).rate("x").unwrap(), 1000);
    }

    #[test]
    fn formats_as_written() {
        for (rate, text) in [
            (10_000_000, "10MB"),
            (524_288, "512KiB"),
            (1 << 30, "1GiB"),
            (12_500_000, "100Mbit"),
            (64_000, "64KB"),
            (1234, "1234B"),
        ] {
            assert_eq!(format_bandwidth(rate), text);
            assert_eq!(parse_bandwidth(text), Ok(rate));
        }
    }
}
