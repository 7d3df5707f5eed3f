//! Who may connect: the shared `authKey` and per-client credentials, and
//! the record of recent refusals.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use opennotr_config::{Credential, Secret, ServerConfig, WeakKey};
use tracing::warn;

/// Where a credential came from: the config (replaced on reload) or the
/// admin API (kept across reloads, lost at restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Config,
    Api,
}

impl Source {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Creds {
    pub(crate) shared_key: Option<Secret>,
    /// `server.authKeyDomains`: what clients of the shared key may claim;
    /// `None` = any domain.
    pub(crate) shared_domains: Option<Vec<String>>,
    pub(crate) clients: BTreeMap<String, (Credential, Source)>,
    /// `access`: the rules for the forwards of shared-key clients.
    pub(crate) shared_access: opennotr_config::Access,
}

impl Creds {
    pub(crate) fn from_config(cfg: &ServerConfig) -> Creds {
        let clients = cfg.clients.iter().map(|c| (c.name.clone(), (c.clone(), Source::Config))).collect();
        Creds {
            shared_key: cfg.server.auth_key.clone(),
            shared_domains: cfg.server.auth_key_domains.clone(),
            clients,
            shared_access: cfg.access.clone(),
        }
    }

    /// The credentials after a reload: the new config's, plus those added
    /// through the API that the config does not now define itself.
    pub(crate) fn reloaded(&self, cfg: &ServerConfig) -> Creds {
        let mut next = Creds::from_config(cfg);
        for (name, (c, src)) in &self.clients {
            if *src == Source::Api && !next.clients.contains_key(name) {
                next.clients.insert(name.clone(), (c.clone(), Source::Api));
            }
        }
        next
    }

    /// The key a client authenticates with: its own with a name, else the
    /// shared one. `None`: no such client, or no shared key.
    pub(crate) fn key_for(&self, name: Option<&str>) -> Option<&Secret> {
        match name {
            Some(n) => self.clients.get(n).map(|(c, _)| &c.key),
            None => self.shared_key.as_ref(),
        }
    }

    /// Whether a client of the shared key may hold `domain`; one the
    /// server picked for it always.
    pub(crate) fn shared_allows(&self, domain: &str, requested: bool) -> bool {
        !requested || self.shared_domains.as_deref().is_none_or(|a| opennotr_config::domain_allowed(a, domain))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Credential> {
        self.clients.get(name).map(|(c, _)| c)
    }

    /// Names whose entry differs between `self` and `next` (changed or
    /// gone): their sessions must close.
    pub(crate) fn changed_names(&self, next: &Creds) -> Vec<String> {
        self.clients
            .iter()
            .filter(|(name, (c, _))| next.clients.get(*name).is_none_or(|(n, _)| n != c))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Warns about each weak key (short, or a sample from the docs), naming
/// where it is and never showing it.
pub(crate) fn warn_weak(keys: &[WeakKey]) {
    for w in keys {
        warn!(
            field = w.field,
            client = w.client.as_deref().unwrap_or(""),
            "{w}: whoever guesses it gets in; set a long random one (e.g. `openssl rand -hex 24`)"
        );
    }
}

/// A refused handshake, registration or forward.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) at: SystemTime,
    pub(crate) remote: String,
    pub(crate) client: Option<String>,
    pub(crate) code: String,
    pub(crate) message: String,
}

/// The last [`Refusals::KEEP`] refusals, and counts by reason since start.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    inner: Mutex<(VecDeque<Refusal>, BTreeMap<String, u64>)>,
}

impl Refusals {
    const KEEP: usize = 100;

    pub(crate) fn record(&self, r: Refusal) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g.1.entry(r.code.clone()).or_default() += 1;
        if g.0.len() == Self::KEEP {
            g.0.pop_back();
        }
        g.0.push_front(r);
    }

    /// Newest first.
    pub(crate) fn recent(&self) -> Vec<Refusal> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.iter().cloned().collect()
    }

    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}
