//! Per-client credentials: `clients` in the server file, or the file
//! `clientsFile` names (a YAML list of the same entries).

use std::path::Path;

use serde::Deserialize;

use crate::bandwidth::{optional, BandwidthText};
use crate::util::{dns_name, is_plugin_name, PortText};
use crate::{yaml, ConfigError, Credential, PortRange, ReservedNames, Secret};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClient {
    name: Option<String>,
    key: Option<String>,
    domains: Option<Vec<String>>,
    ports: Option<Vec<PortText>>,
    protocols: Option<Vec<String>>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    #[serde(rename = "basicAuth")]
    basic_auth: Option<Vec<crate::access::RawBasicAuth>>,
    bandwidth: Option<BandwidthText>,
    #[serde(rename = "forwardBandwidth")]
    forward_bandwidth: Option<BandwidthText>,
}

/// Validates the entries under `prefix` (`clients` or `clientsFile`).
pub(crate) fn validate(
    prefix: &str,
    raw: Vec<RawClient>,
    names: &ReservedNames,
) -> Result<Vec<Credential>, ConfigError> {
    let mut out: Vec<Credential> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        let name = c.name.ok_or_else(|| ConfigError::invalid(format!("{at}.name"), "required"))?;
        let key = c.key.ok_or_else(|| ConfigError::invalid(format!("{at}.key"), "required"))?;
        let ports: Vec<String> = c.ports.unwrap_or_default().iter().map(port_text).collect();
        let access = crate::access::validate(&at, c.allow, c.deny, c.basic_auth)?;
        let mut cred = credential(
            &at,
            CredentialText {
                name,
                key,
                domains: c.domains.unwrap_or_default(),
                ports,
                protocols: c.protocols.unwrap_or_default(),
                bandwidth: optional(&format!("{at}.bandwidth"), c.bandwidth.as_ref())?,
                forward_bandwidth: optional(&format!("{at}.forwardBandwidth"), c.forward_bandwidth.as_ref())?,
            },
            names,
        )?;
        cred.access = access;
        if out.iter().any(|o| o.name == cred.name) {
            return Err(ConfigError::invalid(format!("{at}.name"), format!("{:?} is listed twice", cred.name)));
        }
        out.push(cred);
    }
    Ok(out)
}

fn port_text(p: &PortText) -> String {
    match p {
        PortText::Number(n) => n.to_string(),
        PortText::Text(s) => s.clone(),
        PortText::Other(what) => format!("<{what}>"),
    }
}

/// A credential as text, from a file or from the admin API.
#[derive(Clone, Default)]
pub struct CredentialText {
    pub name: String,
    pub key: String,
    pub domains: Vec<String>,
    /// `"8080"` or `"20000-20100"`.
    pub ports: Vec<String>,
    pub protocols: Vec<String>,
    /// Bytes a second each way, already checked (see [`crate::parse_bandwidth`]).
    pub bandwidth: Option<u64>,
    pub forward_bandwidth: Option<u64>,
}

impl std::fmt::Debug for CredentialText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialText").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Checks one credential; errors name `{at}.field`. `names` are the
/// server's own names, which no credential may list; their zone
/// (`server.domain`) makes the default domain `<name>.<zone>`.
pub fn credential(at: &str, c: CredentialText, names: &ReservedNames) -> Result<Credential, ConfigError> {
    let name = c.name;
    // The first character is a letter or digit so that no name is `.` or
    // `..`, which URLs (the admin API's `/clients/{name}`) would rewrite.
    if name.is_empty()
        || name.len() > 63
        || !name.as_bytes()[0].is_ascii_alphanumeric()
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ConfigError::invalid(
            format!("{at}.name"),
            format!(
                "{name:?} is not a client name: 1-63 of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
            ),
        ));
    }
    if c.key.is_empty() {
        return Err(ConfigError::invalid(format!("{at}.key"), "must not be empty"));
    }
    let mut domains = domain_patterns(&format!("{at}.domains"), &c.domains)?;
    names.check(&format!("{at}.domains"), &domains)?;
    if domains.is_empty() {
        let default = default_domain(&name, names);
        if let Some(why) = names.why(&default) {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                format!("without domains, {name:?} gets {default}, which no client may hold: {why}"),
            ));
        }
        domains.push(default);
    }
    let mut ports = Vec::with_capacity(c.ports.len());
    for (j, p) in c.ports.iter().enumerate() {
        let range = PortRange::parse(p).map_err(|m| ConfigError::invalid(format!("{at}.ports[{j}]"), m))?;
        ports.push(range);
    }
    for (j, p) in c.protocols.iter().enumerate() {
        if !is_plugin_name(p) {
            return Err(ConfigError::invalid(format!("{at}.protocols[{j}]"), format!("{p:?} is not a protocol name")));
        }
    }
    Ok(Credential {
        name,
        key: Secret::new(c.key),
        domains,
        ports,
        protocols: c.protocols,
        access: Default::default(),
        bandwidth: c.bandwidth,
        forward_bandwidth: c.forward_bandwidth,
    })
}

/// The domain of a credential that lists none: `<name>.<server.domain>`,
/// with `_` and `.` made `-` so that it is one label.
pub(crate) fn default_domain(name: &str, names: &ReservedNames) -> String {
    format!("{}.{}", name.replace(['_', '.'], "-"), names.zone())
}

/// Reads `clientsFile`: a YAML list of entries.
pub(crate) fn load_file(path: &Path, names: &ReservedNames) -> Result<Vec<Credential>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
    let raw: Vec<RawClient> = yaml::from_str(&text)
        .map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                let key = if key.starts_with('[') { format!("clientsFile{key}") } else { "clientsFile".to_string() };
                ConfigError::Invalid { key, message: format!("{message} (in {})", path.display()) }
            }
            other => other,
        })?
        .unwrap_or_default();
    validate("clientsFile", raw, names)
}

impl PortRange {
    /// `"8080"` or `"20000-20100"`.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let num = |t: &str| crate::util::parse_port(t.trim()).filter(|p| *p != 0);
        let bad = || format!("{s:?} is not a port (1-65535) or a range such as 20000-20100");
        match s.split_once('-') {
            None => num(s).map(|p| PortRange { first: p, last: p }).ok_or_else(bad),
            Some((a, b)) => match (num(a), num(b)) {
                (Some(first), Some(last)) if first <= last => Ok(PortRange { first, last }),
                _ => Err(bad()),
            },
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Checks a list of domains a client may claim (`key` is the list's, e.g.
/// `clients[0].domains`): DNS names, or `*.<name>` for any name below one.
/// Lowercased, trailing dots dropped.
pub(crate) fn domain_patterns(key: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(j, d)| {
            let bad = |m| ConfigError::invalid(format!("{key}[{j}]"), m);
            match d.strip_prefix("*.") {
                Some(rest) => Ok(format!("*.{}", dns_name(rest).map_err(bad)?)),
                None => dns_name(d).map_err(bad),
            }
        })
        .collect()
}

/// Whether `domain` (already lowercase, no trailing dot) matches one of
/// `patterns`. `*.example.com` covers names below example.com, not
/// example.com itself.
pub fn domain_allowed(patterns: &[String], domain: &str) -> bool {
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        Some(suffix) => {
            domain.len() > suffix.len() + 1 && domain.ends_with(suffix) && {
                let cut = domain.len() - suffix.len();
                domain.as_bytes()[cut - 1] == b'.'
            }
        }
        None => p == domain,
    })
}

impl Credential {
    /// Whether this client may hold `domain` (see [`domain_allowed`]).
    pub fn allows_domain(&self, domain: &str) -> bool {
        domain_allowed(&self.domains, domain)
    }

    /// Whether this client may ask for public port `port` (0, "any", is
    /// always allowed: the server picks). No `ports` list = any port.
    pub fn allows_port(&self, port: u16) -> bool {
        port == 0 || self.ports.is_empty() || self.ports.iter().any(|r| r.contains(port))
    }

    /// Whether this client may use plugin `protocol`. No list = every one.
    pub fn allows_protocol(&self, protocol: &str) -> bool {
        self.protocols.is_empty() || self.protocols.iter().any(|p| p == protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(domains: &[&str], ports: &[&str], protocols: &[&str]) -> Result<Credential, ConfigError> {
        credential(
            "clients[0]",
            CredentialText {
                name: "alice".into(),
                key: "k".into(),
                domains: domains.iter().map(|s| s.to_string()).collect(),
                ports: ports.iter().map(|s| s.to_string()).collect(),
                protocols: protocols.iter().map(|s| s.to_string()).collect(),
                bandwidth: None,
                forward_bandwidth: None,
            },
            &ReservedNames::new("notr.test", None),
        )
    }

    #[test]
    fn defaults_and_patterns() {
        let c = cred(&[], &[], &[]).unwrap();
        assert_eq!(c.domains, ["alice.notr.test"]);
        assert!(c.allows_domain("alice.notr.test") && !c.allows_domain("bob.notr.test"));
        assert!(c.allows_port(1) && c.allows_protocol("udp"));

        let c = cred(&["*.Alice.Example.com", "x.example.com."], &["8080", "20000-20100"], &["tcp"]).unwrap();
        assert!(c.allows_domain("a.alice.example.com") && c.allows_domain("b.a.alice.example.com"));
        assert!(!c.allows_domain("alice.example.com") && !c.allows_domain("xalice.example.com"));
        assert!(c.allows_domain("x.example.com"));
        assert!(c.allows_port(8080) && c.allows_port(20050) && c.allows_port(0) && !c.allows_port(8081));
        assert!(c.allows_protocol("tcp") && !c.allows_protocol("udp"));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(cred(&["bad domain"], &[], &[]).unwrap_err().key(), Some("clients[0].domains[0]"));
        assert_eq!(cred(&[], &["9-1"], &[]).unwrap_err().key(), Some("clients[0].ports[0]"));
        assert_eq!(cred(&[], &["0"], &[]).unwrap_err().key(), Some("clients[0].ports[0]"));
        assert_eq!(cred(&[], &[], &["T C P"]).unwrap_err().key(), Some("clients[0].protocols[0]"));
        let e = credential(
            "clients[1]",
            CredentialText { name: "Bad Name".into(), key: "k".into(), ..Default::default() },
            &ReservedNames::new("z", None),
        );
        assert_eq!(e.unwrap_err().key(), Some("clients[1].name"));
        for name in [".", "..", "-a", "_a", ".a"] {
            let text = CredentialText { name: name.into(), key: "k".into(), ..Default::default() };
            let e = credential("clients[1]", text, &ReservedNames::new("z", None)).unwrap_err();
            assert_eq!(e.key(), Some("clients[1].name"), "{name}");
        }
    }

    #[test]
    fn the_servers_own_names_cannot_be_listed() {
        for (domains, key) in [
            (&["ok.notr.test", "Notr.Test."][..], "clients[0].domains[1]"),
            (&["ns1.notr.test"], "clients[0].domains[0]"),
            (&["a.vip.notr.test"], "clients[0].domains[0]"),
            (&["*.vip.notr.test"], "clients[0].domains[0]"),
        ] {
            let e = cred(domains, &[], &[]).unwrap_err();
            assert_eq!(e.key(), Some(key), "{domains:?}: {e}");
            assert!(e.to_string().contains("no client may claim it"), "{e}");
        }
        // A pattern that covers them among others is fine: admission
        // refuses the reserved names themselves.
        assert!(cred(&["*.notr.test"], &[], &[]).is_ok());
        // A name whose default domain is one of them needs a list.
        for name in ["ns1", "vip"] {
            let text = CredentialText { name: name.into(), key: "k".into(), ..Default::default() };
            let e = credential("clients[2]", text.clone(), &ReservedNames::new("notr.test", None)).unwrap_err();
            assert_eq!(e.key(), Some("clients[2].name"), "{e}");
            let listed = CredentialText { domains: vec![format!("{name}-box.notr.test")], ..text };
            assert!(credential("clients[2]", listed, &ReservedNames::new("notr.test", None)).is_ok());
        }
    }
}
