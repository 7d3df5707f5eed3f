//! Keys worth a warning: short ones, and the samples printed in the
//! examples and docs, which anyone can read. They are still accepted (the
//! original's files use a sample key and must keep loading); the server
//! warns about them at start, on reload and when the admin API adds one.

use crate::ServerConfig;

/// Fewer characters than this, and a key is warned about.
pub const MIN_KEY_CHARS: usize = 16;

/// Keys shipped as examples: in `etc/`, `deploy/`, the docs, the README,
/// the benchmarks, and the original project's README.
const SAMPLE_KEYS: &[&str] = &[
    // The original's README, etc/notrd.yaml, etc/config.yaml, docs/gateway.md.
    "client server exchange key",
    // etc/opennotrd.yaml, etc/opennotr.yaml, deploy/docker/notrd.yaml.
    "change-this-shared-key",
    // README.md.
    "a long random shared key",
    // docs/gateway.md.
    "change me",
    // docs/configuration.md, etc/opennotrd.yaml.
    "alice's secret",
    "alice's own key",
    // bench/run.py.
    "bench-key",
    // docs/admin.md (admin.token).
    "a long random token, 16 characters or more",
];

/// What is wrong with `key`: nothing (empty), or why it is weak. Never
/// includes the key.
pub fn key_weaknesses(key: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if key.chars().count() < MIN_KEY_CHARS {
        out.push("shorter than 16 characters");
    }
    let normalized = key.trim().to_lowercase();
    if SAMPLE_KEYS.contains(&normalized.as_str()) {
        out.push("a sample key printed in opennotr's examples and documentation");
    }
    out
}

/// One weak key of a server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakKey {
    /// Where it is: `server.authKey`, `admin.token`, or `clients` for a
    /// credential's key.
    pub field: &'static str,
    /// The credential's name, for a credential's key.
    pub client: Option<String>,
    /// Why it is weak ([`key_weaknesses`]).
    pub reasons: Vec<&'static str>,
}

impl std::fmt::Display for WeakKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.client {
            Some(name) => write!(f, "the key of client {name:?}")?,
            None => write!(f, "{}", self.field)?,
        }
        write!(f, " is weak ({})", self.reasons.join("; "))
    }
}

/// The weak keys of `cfg`: `server.authKey`, each credential's key,
/// `admin.token` and `cluster.key`, in that order.
pub fn weak_keys(cfg: &ServerConfig) -> Vec<WeakKey> {
    let mut out = Vec::new();
    let mut check = |field, client: Option<&str>, key: &str| {
        let reasons = key_weaknesses(key);
        if !reasons.is_empty() {
            out.push(WeakKey { field, client: client.map(str::to_string), reasons });
        }
    };
    if let Some(k) = &cfg.server.auth_key {
        check("server.authKey", None, k.expose());
    }
    for c in &cfg.clients {
        check("clients", Some(&c.name), c.key.expose());
    }
    if let Some(a) = &cfg.admin {
        check("admin.token", None, a.token.expose());
    }
    if let Some(c) = &cfg.cluster {
        check("cluster.key", None, c.key.expose());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_sample_keys_are_weak() {
        assert!(key_weaknesses("9f86d081884c7d659a2feaa0c55ad015").is_empty());
        assert_eq!(key_weaknesses("0123456789abcde"), ["shorter than 16 characters"]);
        assert_eq!(key_weaknesses("k").len(), 1);
        // Characters, not bytes: 16 of them is enough.
        assert!(key_weaknesses("ключключключключ").is_empty());
        for sample in ["client server exchange key", "Change-This-Shared-Key", " a long random shared key "] {
            let r = key_weaknesses(sample);
            assert_eq!(r, ["a sample key printed in opennotr's examples and documentation"], "{sample}");
        }
        assert_eq!(key_weaknesses("change me").len(), 2);
    }

    #[test]
    fn every_key_of_a_file_is_checked_and_none_is_shown() {
        let yaml = "server:\n  listen: \":1\"\n  authKey: \"client server exchange key\"\n  domain: z.test\n\
                    dhcp:\n  cidr: 100.64.0.1/24\n\
                    clients:\n  - name: alice\n    key: \"a fine long key for alice\"\n\
                    \x20 - name: bob\n    key: \"bob-k\"\n\
                    admin:\n  token: \"a long random token, 16 characters or more\"\n";
        let cfg = crate::parse_server(yaml).unwrap();
        let weak = weak_keys(&cfg);
        let shown: Vec<String> = weak.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            shown,
            [
                "server.authKey is weak (a sample key printed in opennotr's examples and documentation)",
                "the key of client \"bob\" is weak (shorter than 16 characters)",
                "admin.token is weak (a sample key printed in opennotr's examples and documentation)",
            ]
        );
        assert_eq!(weak[1].client.as_deref(), Some("bob"));
        let all = format!("{shown:?} {weak:?}");
        assert!(!all.contains("client server exchange key") && !all.contains("bob-k"), "{all}");
    }
}
