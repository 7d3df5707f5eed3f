//! A forward's load-balanced group (`group`, `groupKey`, `balance`,
//! `healthCheck` of a client's `forwards[i]`).

use std::time::Duration;

use serde::Deserialize;

use crate::util::{duration, Seconds};
use crate::{ConfigError, Secret};

/// Longest group name: a DNS label's length, so a name fits in the logs
/// and metrics labels it appears in.
pub const MAX_GROUP_NAME: usize = 63;

/// The group a forward joins.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// `forwards[i].group`: the group's name.
    pub name: String,
    /// `forwards[i].groupKey`: proves membership; every member has the same.
    pub key: Secret,
    /// `forwards[i].balance` (default `round_robin`).
    pub balance: GroupBalance,
    /// `forwards[i].healthCheck`; `None` = the member is healthy while its
    /// session lives.
    pub health_check: Option<HealthCheck>,
}

/// How a group spreads new connections over its healthy members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBalance {
    /// `round_robin`: each member in turn.
    RoundRobin,
    /// `least_conn`: the member with the fewest open streams.
    LeastConn,
}

/// What the client checks on the forward's local target.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// `healthCheck.type`: `tcp` (a connect) or `http` (a GET).
    pub kind: HealthKind,
    /// `healthCheck.interval` seconds (default 10) between checks.
    pub interval: Duration,
    /// `healthCheck.timeout` seconds (default 3) one check may take.
    pub timeout: Duration,
    /// `healthCheck.failures` (default 3): failed checks in a row that take
    /// a healthy member out.
    pub failures: u32,
    /// `healthCheck.passes` (default 1): passed checks in a row that bring
    /// an unhealthy member back.
    pub passes: u32,
}

/// The kind of check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// Passes when a TCP connection to the target opens.
    Tcp,
    /// Passes when `GET path` answers `status` (`None`: any 2xx).
    Http {
        /// `healthCheck.path` (default `/`).
        path: String,
        /// `healthCheck.status`.
        status: Option<u16>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<String>,
    status: Option<u64>,
    interval: Option<Seconds>,
    timeout: Option<Seconds>,
    failures: Option<u64>,
    passes: Option<u64>,
}

/// Checks a group name: 1 to 63 letters, digits, '_', '-' and '.'. The
/// server applies the same rule to what clients send.
pub fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(format!("a group name has 1 to {MAX_GROUP_NAME} characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Err(format!("`{name}` is not a group name (letters, digits, '_', '-' and '.')"));
    }
    Ok(())
}

/// Validates the group keys of `forwards[i]`; `key` names a field of it.
pub(crate) fn group(
    key: &dyn Fn(&str) -> String,
    name: Option<String>,
    group_key: Option<String>,
    balance: Option<String>,
    health: Option<RawHealthCheck>,
) -> Result<Option<GroupConfig>, ConfigError> {
    let Some(name) = name else {
        for (field, set) in
            [("groupKey", group_key.is_some()), ("balance", balance.is_some()), ("healthCheck", health.is_some())]
        {
            if set {
                return Err(ConfigError::invalid(key(field), "only with `group`"));
            }
        }
        return Ok(None);
    };
    check_group_name(&name).map_err(|m| ConfigError::invalid(key("group"), m))?;
    let group_key = match group_key {
        None => return Err(ConfigError::invalid(key("groupKey"), "required with `group`")),
        Some(k) if k.is_empty() => return Err(ConfigError::invalid(key("groupKey"), "must not be empty")),
        Some(k) => Secret::new(k),
    };
    let balance = match balance.as_deref() {
        None | Some("round_robin") => GroupBalance::RoundRobin,
        Some("least_conn") => GroupBalance::LeastConn,
        Some(other) => {
            return Err(ConfigError::invalid(
                key("balance"),
                format!("`{other}` is neither round_robin nor least_conn"),
            ))
        }
    };
    let health_check = health.map(|h| health_check(&|f: &str| key(&format!("healthCheck.{f}")), h)).transpose()?;
    Ok(Some(GroupConfig { name, key: group_key, balance, health_check }))
}

fn health_check(key: &dyn Fn(&str) -> String, raw: RawHealthCheck) -> Result<HealthCheck, ConfigError> {
    let http = match raw.kind.as_deref() {
        None | Some("tcp") => false,
        Some("http") => true,
        Some(other) => return Err(ConfigError::invalid(key("type"), format!("`{other}` is neither tcp nor http"))),
    };
    if !http {
        for (field, set) in [("path", raw.path.is_some()), ("status", raw.status.is_some())] {
            if set {
                return Err(ConfigError::invalid(key(field), "only with `type: http`"));
            }
        }
    }
    let kind = if http {
        let path = raw.path.unwrap_or_else(|| "/".into());
        // It goes into a request line as is.
        if !path.starts_with('/') || path.len() > 1024 || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                key("path"),
                format!("`{path}` is not a request path (starts with '/', at most 1024 visible ASCII characters)"),
            ));
        }
        let status = match raw.status {
            None => None,
            Some(s @ 100..=599) => Some(s as u16),
            Some(s) => return Err(ConfigError::invalid(key("status"), format!("{s} is not an HTTP status (100-599)"))),
        };
        HealthKind::Http { path, status }
    } else {
        HealthKind::Tcp
    };
    let count = |field: &str, v: Option<u64>, default: u32| match v {
        None => Ok(default),
        Some(n @ 1..=100) => Ok(n as u32),
        Some(n) => Err(ConfigError::invalid(key(field), format!("{n} is not 1-100"))),
    };
    Ok(HealthCheck {
        kind,
        interval: duration(&key("interval"), raw.interval, Duration::from_secs(10))?,
        timeout: duration(&key("timeout"), raw.timeout, Duration::from_secs(3))?,
        failures: count("failures", raw.failures, 3)?,
        passes: count("passes", raw.passes, 1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(extra: &str) -> Result<crate::ClientConfig, ConfigError> {
        crate::parse_client(&format!(
            "serverAddr: \"relay:10100\"\nkey: \"k\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: 8080\n{extra}"
        ))
    }

    fn error_key(extra: &str) -> String {
        forward(extra).err().and_then(|e| e.key().map(str::to_string)).unwrap_or_else(|| panic!("accepted: {extra}"))
    }

    #[test]
    fn a_group_with_defaults() {
        let c = forward("    group: web\n    groupKey: \"s3cret\"\n    healthCheck: {}\n").unwrap();
        let g = c.forwards[0].group.clone().unwrap();
        assert_eq!(g.name, "web");
        assert_eq!(g.key.expose(), "s3cret");
        assert!(!format!("{g:?}").contains("s3cret"), "the key shows in Debug");
        assert_eq!(g.balance, GroupBalance::RoundRobin);
        let h = g.health_check.unwrap();
        assert_eq!(h.kind, HealthKind::Tcp);
        assert_eq!(
            (h.interval, h.timeout, h.failures, h.passes),
            (Duration::from_secs(10), Duration::from_secs(3), 3, 1)
        );
        assert!(forward("").unwrap().forwards[0].group.is_none());
    }

    #[test]
    fn the_example_parses() {
        let c = crate::parse_client(include_str!("../../../etc/opennotr-group.yaml")).unwrap();
        let groups: Vec<_> = c.forwards.iter().map(|f| f.group.as_ref().map(|g| g.name.as_str())).collect();
        assert_eq!(groups, [Some("api"), Some("shop")]);
    }

    #[test]
    fn an_http_check() {
        let c = forward(
            "    group: web\n    groupKey: k\n    balance: least_conn\n    healthCheck:\n      type: http\n      path: /health\n      status: 204\n      interval: 0.5\n      failures: 2\n",
        )
        .unwrap();
        let g = c.forwards[0].group.clone().unwrap();
        assert_eq!(g.balance, GroupBalance::LeastConn);
        let h = g.health_check.unwrap();
        assert_eq!(h.kind, HealthKind::Http { path: "/health".into(), status: Some(204) });
        assert_eq!((h.interval, h.failures), (Duration::from_millis(500), 2));
    }

    #[test]
    fn errors_name_the_key() {
        for (extra, key) in [
            ("    groupKey: k\n", "forwards[0].groupKey"),
            ("    balance: round_robin\n", "forwards[0].balance"),
            ("    healthCheck: {}\n", "forwards[0].healthCheck"),
            ("    group: web\n", "forwards[0].groupKey"),
            ("    group: web\n    groupKey: \"\"\n", "forwards[0].groupKey"),
            ("    group: \"a b\"\n    groupKey: k\n", "forwards[0].group"),
            ("    group: web\n    groupKey: k\n    balance: random\n", "forwards[0].balance"),
            ("    group: web\n    groupKey: k\n    healthCheck: { type: icmp }\n", "forwards[0].healthCheck.type"),
            ("    group: web\n    groupKey: k\n    healthCheck: { path: /x }\n", "forwards[0].healthCheck.path"),
            (
                "    group: web\n    groupKey: k\n    healthCheck: { type: http, path: x }\n",
                "forwards[0].healthCheck.path",
            ),
            (
                "    group: web\n    groupKey: k\n    healthCheck: { type: http, status: 600 }\n",
                "forwards[0].healthCheck.status",
            ),
            ("    group: web\n    groupKey: k\n    healthCheck: { interval: 0 }\n", "forwards[0].healthCheck.interval"),
            ("    group: web\n    groupKey: k\n    healthCheck: { failures: 0 }\n", "forwards[0].healthCheck.failures"),
            ("    group: web\n    groupKey: k\n    healthCheck: { passes: 101 }\n", "forwards[0].healthCheck.passes"),
        ] {
            assert_eq!(error_key(extra), key, "{extra}");
        }
        // Unknown keys are refused, inside healthCheck too.
        assert!(forward("    group: web\n    groupKey: k\n    healthCheck: { port: 1 }\n").is_err());
    }
}
