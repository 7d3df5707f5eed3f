//! Command-line values: a number for both directions or `A/B` for each.

use std::str::FromStr;
use std::time::Duration;

use crate::shaper::QueueLimit;
use crate::Error;

/// A value for each direction: `a→b` and `b→a`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerDir<T> {
    pub a_to_b: T,
    pub b_to_a: T,
}

impl<T: Copy> PerDir<T> {
    pub fn both(v: T) -> Self {
        PerDir { a_to_b: v, b_to_a: v }
    }
}

fn per_dir<T: Copy>(s: &str, one: impl Fn(&str) -> Result<T, Error>) -> Result<PerDir<T>, Error> {
    match s.split_once('/') {
        Some((a, b)) => Ok(PerDir { a_to_b: one(a.trim())?, b_to_a: one(b.trim())? }),
        None => Ok(PerDir::both(one(s.trim())?)),
    }
}

fn number(s: &str, what: &'static str) -> Result<f64, Error> {
    match f64::from_str(s) {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(Error::BadValue { what, value: s.to_string(), expected: "a number ≥ 0" }),
    }
}

/// Milliseconds, fractions allowed: `25`, `0.5`, `10/40`.
pub fn millis(s: &str) -> Result<PerDir<Duration>, Error> {
    per_dir(s, |v| Ok(Duration::from_secs_f64(number(v, "milliseconds")? / 1000.0)))
}

/// Percent, 0 to 100: `0.1`, `1/0`.
pub fn percent(s: &str) -> Result<PerDir<f64>, Error> {
    per_dir(s, |v| {
        let p = number(v, "percent")?;
        if p > 100.0 {
            return Err(Error::BadValue { what: "percent", value: v.to_string(), expected: "0 to 100" });
        }
        Ok(p / 100.0)
    })
}

/// Mbit/s, 0 for unlimited: `100`, `20/100`.
pub fn rate(s: &str) -> Result<PerDir<Option<u64>>, Error> {
    per_dir(s, |v| {
        let mbit = number(v, "Mbit/s")?;
        Ok((mbit > 0.0).then_some((mbit * 1e6) as u64))
    })
}

/// A queue as time at the rate (`50ms`) or as bytes (`64KiB`, `1MB`, `30000`).
pub fn queue(s: &str) -> Result<PerDir<QueueLimit>, Error> {
    per_dir(s, |v| {
        let bad =
            || Error::BadValue { what: "queue", value: v.to_string(), expected: "e.g. 50ms, 64KiB, 1MB or 30000" };
        let lower = v.to_ascii_lowercase();
        if let Some(n) = lower.strip_suffix("ms") {
            let ms = number(n.trim(), "queue").map_err(|_| bad())?;
            return Ok(QueueLimit::Time(Duration::from_secs_f64(ms / 1000.0)));
        }
        let (n, unit) = [("kib", 1024.0), ("mib", 1048576.0), ("kb", 1e3), ("mb", 1e6), ("b", 1.0)]
            .iter()
            .find_map(|(suffix, unit)| lower.strip_suffix(suffix).map(|n| (n, *unit)))
            .unwrap_or((lower.as_str(), 1.0));
        let bytes = number(n.trim(), "queue").map_err(|_| bad())? * unit;
        if bytes < 1.0 {
            return Err(bad());
        }
        Ok(QueueLimit::Bytes(bytes as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_and_per_direction() {
        assert_eq!(millis("25").unwrap(), PerDir::both(Duration::from_millis(25)));
        assert_eq!(
            millis("10/40").unwrap(),
            PerDir { a_to_b: Duration::from_millis(10), b_to_a: Duration::from_millis(40) }
        );
        assert_eq!(percent("1").unwrap(), PerDir::both(0.01));
        assert!(percent("101").is_err());
        assert!(millis("-1").is_err());
        assert!(millis("abc").is_err());
        assert_eq!(rate("0/100").unwrap(), PerDir { a_to_b: None, b_to_a: Some(100_000_000) });
        assert_eq!(queue("50ms").unwrap(), PerDir::both(QueueLimit::Time(Duration::from_millis(50))));
        assert_eq!(queue("64KiB").unwrap(), PerDir::both(QueueLimit::Bytes(65536)));
        assert_eq!(queue("30000").unwrap(), PerDir::both(QueueLimit::Bytes(30000)));
        assert!(queue("lots").is_err());
    }
}
