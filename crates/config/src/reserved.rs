//! Names in the server's zone that the server answers for itself (see
//! `crates/dns`), so no client may hold them: a client holding the apex,
//! the name server or a VIP name would change what the server's own DNS
//! answers say about itself.

use crate::{ConfigError, ServerConfig};

/// The names no client may claim: the zone's apex (`server.domain`), its
/// name server (`dns.nameserver`, default `ns1.<zone>`), and `vip.<zone>`
/// with every name below it (the VIP names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedNames {
    zone: String,
    nameserver: String,
    vip: String,
}

impl ReservedNames {
    /// For `zone` (lowercase, no trailing dot) and its name server; `None`
    /// = the default `ns1.<zone>`, reserved even while the DNS server is
    /// off, so turning it on never finds a client on its name.
    pub fn new(zone: &str, nameserver: Option<&str>) -> ReservedNames {
        ReservedNames {
            zone: zone.to_string(),
            nameserver: nameserver.map_or_else(|| format!("ns1.{zone}"), str::to_string),
            vip: format!("vip.{zone}"),
        }
    }

    /// Those of a parsed server file.
    pub fn of(cfg: &ServerConfig) -> ReservedNames {
        ReservedNames::new(&cfg.server.domain, cfg.dns.as_ref().map(|d| d.nameserver.as_str()))
    }

    /// `server.domain`.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Why no client may hold `domain` (lowercase, no trailing dot), or
    /// `None` if it is not reserved.
    pub fn why(&self, domain: &str) -> Option<String> {
        if domain == self.zone {
            Some(format!("{domain} is the server's own zone (server.domain), which it answers for itself"))
        } else if domain == self.nameserver {
            Some(format!("{domain} is the zone's name server (dns.nameserver), which the server answers for itself"))
        } else if within(domain, &self.vip) {
            Some(format!("{domain} is under {}, where the server publishes the clients' virtual IPs", self.vip))
        } else {
            None
        }
    }

    /// Why a pattern of `domains` (a name, or `*.<name>`) is refused: a
    /// name that is reserved, or a pattern all of whose names are. A
    /// pattern that merely covers some reserved names (`*.<zone>`) is fine:
    /// admission refuses those names.
    pub(crate) fn why_pattern(&self, pattern: &str) -> Option<String> {
        match pattern.strip_prefix("*.") {
            Some(suffix) if within(suffix, &self.vip) => {
                Some(format!("every name it covers is under {}, where the server publishes VIP names", self.vip))
            }
            Some(_) => None,
            None => self.why(pattern),
        }
    }

    /// Checks a list of patterns as [`crate::clients::domain_patterns`]
    /// made them; errors name `{key}[j]`.
    pub(crate) fn check(&self, key: &str, patterns: &[String]) -> Result<(), ConfigError> {
        for (j, p) in patterns.iter().enumerate() {
            if let Some(why) = self.why_pattern(p) {
                return Err(ConfigError::invalid(format!("{key}[{j}]"), format!("{why}; no client may claim it")));
            }
        }
        Ok(())
    }
}

impl ReservedNames {
    /// Why `c` would claim one of these names, naming the field
    /// (`{at}.domains[j]`, or `{at}.name` for its default domain); `None`
    /// if it claims none. Malformed domains are left to
    /// [`crate::credential`]. The admin API tells this refusal (a
    /// collision with the server's own names, 409) from a malformed
    /// request (400).
    pub fn claimed_by(&self, at: &str, c: &crate::CredentialText) -> Option<ConfigError> {
        for (j, d) in c.domains.iter().enumerate() {
            let Ok(p) = crate::clients::domain_patterns("", std::slice::from_ref(d)) else { continue };
            if let Some(why) = p.first().and_then(|p| self.why_pattern(p)) {
                return Some(ConfigError::invalid(
                    format!("{at}.domains[{j}]"),
                    format!("{why}; no client may claim it"),
                ));
            }
        }
        if c.domains.is_empty() {
            let default = crate::clients::default_domain(&c.name, self);
            if let Some(why) = self.why(&default) {
                return Some(ConfigError::invalid(
                    format!("{at}.name"),
                    format!("without domains, {:?} gets {default}, which no client may hold: {why}", c.name),
                ));
            }
        }
        None
    }
}

/// Whether `name` is `parent` or below it.
fn within(name: &str, parent: &str) -> bool {
    name.strip_suffix(parent).is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_names_are_reserved() {
        let r = ReservedNames::new("open.notr.tech", None);
        for name in ["open.notr.tech", "ns1.open.notr.tech", "vip.open.notr.tech", "abc.vip.open.notr.tech"] {
            assert!(r.why(name).is_some(), "{name} is not reserved");
        }
        for name in ["abc.open.notr.tech", "ns2.open.notr.tech", "xvip.open.notr.tech", "notr.tech", "vip.example"] {
            assert_eq!(r.why(name), None, "{name} is reserved");
        }
        let custom = ReservedNames::new("open.notr.tech", Some("ns.example.net"));
        assert!(custom.why("ns.example.net").unwrap().contains("dns.nameserver"));
        assert_eq!(custom.why("ns1.open.notr.tech"), None);
    }

    #[test]
    fn patterns_are_refused_only_when_all_they_cover_is_reserved() {
        let r = ReservedNames::new("z.test", None);
        assert!(r.why_pattern("*.vip.z.test").is_some());
        assert!(r.why_pattern("*.a.vip.z.test").is_some());
        assert!(r.why_pattern("ns1.z.test").is_some());
        assert_eq!(r.why_pattern("*.z.test"), None);
        assert_eq!(r.why_pattern("*.test"), None);
        assert_eq!(r.why_pattern("app.z.test"), None);
        let e = r.check("clients[0].domains", &["a.z.test".into(), "z.test".into()]).unwrap_err();
        assert_eq!(e.key(), Some("clients[0].domains[1]"));
    }

    #[test]
    fn claimed_by_names_the_field_and_leaves_malformed_domains_alone() {
        let r = ReservedNames::new("z.test", None);
        let text = |name: &str, domains: &[&str]| crate::CredentialText {
            name: name.into(),
            key: "k".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ports: vec![],
            protocols: vec![],
            bandwidth: None,
            forward_bandwidth: None,
        };
        let key = |name, domains| r.claimed_by("x", &text(name, domains)).map(|e| e.key().unwrap().to_string());
        assert_eq!(key("a", &["bad domain", "NS1.z.test."]), Some("x.domains[1]".into()));
        assert_eq!(key("a", &["*.vip.z.test"]), Some("x.domains[0]".into()));
        assert_eq!(key("ns1", &[]), Some("x.name".into()));
        assert_eq!(key("vip", &[]), Some("x.name".into()));
        assert_eq!(key("ns1", &["ns1-box.z.test"]), None);
        assert_eq!(key("a", &["bad domain", "*.z.test"]), None);
    }
}
