//! Who holds what: sessions, domains, VIPs, and the leases that let a
//! reconnecting client take its VIP, domain and ports back.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use opennotr_config::{ReservedNames, ServerConfig};
use opennotr_proto::message::RefuseCode;
use rand::Rng;

use crate::session::{ForwardKey, Session, SessionId};
use crate::vip::VipPool;

/// What a client held last time.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) vip: Ipv4Addr,
    pub(crate) domain: String,
    pub(crate) ports: HashMap<ForwardKey, u16>,
    touched: Instant,
}

pub(crate) struct State {
    pub(crate) sessions: HashMap<SessionId, Arc<Session>>,
    by_client: HashMap<String, SessionId>,
    domains: HashMap<String, SessionId>,
    by_vip: HashMap<Ipv4Addr, SessionId>,
    pub(crate) vips: VipPool,
    leases: HashMap<String, Lease>,
    max_leases: usize,
    max_clients: usize,
    /// The zone and the names in it the server answers for itself.
    reserved: ReservedNames,
}

/// What admission decided.
pub(crate) struct Admission {
    pub(crate) vip: Ipv4Addr,
    pub(crate) domain: String,
    pub(crate) ports: HashMap<ForwardKey, u16>,
}

pub(crate) enum AdmitError {
    Refused(RefuseCode, String),
    /// The client's previous session is still live; close it and retry.
    Replace(Arc<Session>),
}

const LABEL_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

/// 16 characters of base32: 80 random bits, not guessable or enumerable.
fn random_label() -> String {
    let mut rng = rand::rng();
    (0..16).map(|_| LABEL_ALPHABET[rng.random_range(0..LABEL_ALPHABET.len())] as char).collect()
}

/// Lowercases and checks a requested domain.
pub(crate) fn normalize_domain(d: &str) -> Result<String, String> {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 {
        return Err("a domain has 1 to 253 characters".into());
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{d:?} is not a valid domain name"));
        }
    }
    Ok(d)
}

/// Checks the `client_id` a client registers with; `named` when it
/// authenticated with a credential. A named client's id is kept as
/// `"{name}/{client_id}"`, so it only ever matches (and replaces, or takes
/// the lease of) sessions of its own name. A shared-key client's id is kept
/// as sent: one with a '/' could spell a named client's id and take its
/// session or lease, so it is refused (real clients send hex).
pub(crate) fn check_client_id(client_id: &str, named: bool) -> Result<(), String> {
    if client_id.is_empty() || client_id.len() > 128 {
        return Err("bad client id: 1 to 128 bytes".into());
    }
    if !named && client_id.contains('/') {
        return Err("bad client id: a client of the shared key may not use '/' in its id".into());
    }
    Ok(())
}

impl State {
    pub(crate) fn new(cfg: &ServerConfig) -> Self {
        State {
            sessions: HashMap::new(),
            by_client: HashMap::new(),
            domains: HashMap::new(),
            by_vip: HashMap::new(),
            vips: VipPool::new(cfg.dhcp.cidr, cfg.dhcp.ip),
            leases: HashMap::new(),
            max_leases: cfg.limits.max_clients.saturating_mul(4).max(64),
            max_clients: cfg.limits.max_clients,
            reserved: ReservedNames::of(cfg),
        }
    }

    pub(crate) fn set_max_clients(&mut self, max: usize) {
        self.max_clients = max;
        self.max_leases = max.saturating_mul(4).max(64);
    }

    /// Decides VIP and domain for a registering client. Takes nothing if it
    /// refuses. The caller inserts the session with [`State::insert`] under the same lock.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn admit(&mut self, client_id: &str, requested: Option<&str>) -> Result<Admission, AdmitError> {
        self.admit_sharing(client_id, requested, &|_| false, None)
    }

    /// [`State::admit`], where a requested domain that live sessions hold
    /// is admitted too if `shares(domain)`: the client proved it belongs to
    /// the load-balanced group serving it (docs/load-balancing.md). Without
    /// a lease of this server's, `moved` is what the client held on another
    /// node of the cluster (its VIP and domain), to take back here.
    pub(crate) fn admit_sharing(
        &mut self,
        client_id: &str,
        requested: Option<&str>,
        shares: &dyn Fn(&str) -> bool,
        moved: Option<(Ipv4Addr, String)>,
    ) -> Result<Admission, AdmitError> {
        if let Some(old) = self.by_client.get(client_id).and_then(|id| self.sessions.get(id)) {
            return Err(AdmitError::Replace(old.clone()));
        }
        if self.sessions.len() >= self.max_clients {
            return Err(AdmitError::Refused(
                RefuseCode::TooManyClients,
                format!("the server already has its maximum of {} clients", self.max_clients),
            ));
        }
        let own = self.leases.get(client_id).cloned();
        // Another node's VIP of this very client is its own to take back,
        // though the cluster still shows it held (the claim goes as this
        // node claims the client).
        let trusted = own.is_none() && moved.is_some();
        let lease = own.or_else(|| {
            moved.map(|(vip, domain)| Lease { vip, domain, ports: HashMap::new(), touched: Instant::now() })
        });
        let domain = match requested {
            Some(d) => {
                let d = normalize_domain(d).map_err(|m| AdmitError::Refused(RefuseCode::DomainInvalid, m))?;
                if let Some(why) = self.reserved.why(&d) {
                    return Err(AdmitError::Refused(
                        RefuseCode::DomainInvalid,
                        format!("{why}; no client may claim it"),
                    ));
                }
                d
            }
            None => match &lease {
                Some(l) if !self.domains.contains_key(&l.domain) => l.domain.clone(),
                // Only a custom `dns.nameserver` of 16 such characters could
                // be drawn, but never is.
                _ => loop {
                    let d = format!("{}.{}", random_label(), self.reserved.zone());
                    if !self.domains.contains_key(&d) && self.reserved.why(&d).is_none() {
                        break d;
                    }
                },
            },
        };
        if self.domains.contains_key(&domain) && !(requested.is_some() && shares(&domain)) {
            return Err(AdmitError::Refused(
                RefuseCode::DomainTaken,
                format!("domain {domain} is held by another connected client"),
            ));
        }
        let vip = self.vips.allocate_as(lease.as_ref().map(|l| l.vip), trusted).ok_or_else(|| {
            AdmitError::Refused(
                RefuseCode::PoolExhausted,
                format!("no virtual IP is free: all {} addresses of dhcp.cidr are in use", self.vips.capacity()),
            )
        })?;
        let ports = lease.map(|l| l.ports).unwrap_or_default();
        Ok(Admission { vip, domain, ports })
    }

    /// What [`State::admit`] would decide for a new client asking for
    /// `requested`, taking nothing (`opennotr check`): why the client as a
    /// whole would be refused, if it would; and the domain's verdict
    /// (`Ok(None)` = the server would pick one).
    pub(crate) fn would_admit(
        &self,
        requested: Option<&str>,
        shares: &dyn Fn(&str) -> bool,
    ) -> (Option<String>, Result<Option<String>, String>) {
        let client = if self.sessions.len() >= self.max_clients {
            Some(format!("the server already has its maximum of {} clients", self.max_clients))
        } else if self.vips.in_use() >= self.vips.capacity() {
            Some(format!("no virtual IP is free: all {} addresses of dhcp.cidr are in use", self.vips.capacity()))
        } else {
            None
        };
        let domain = requested.map_or(Ok(None), |d| {
            let d = normalize_domain(d)?;
            if let Some(why) = self.reserved.why(&d) {
                return Err(format!("{why}; no client may claim it"));
            }
            if self.domains.contains_key(&d) && !shares(&d) {
                return Err(format!("domain {d} is held by another connected client"));
            }
            Ok(Some(d))
        });
        (client, domain)
    }

    /// The live session holding `vip`.
    pub(crate) fn by_vip(&self, vip: Ipv4Addr) -> Option<Arc<Session>> {
        self.by_vip.get(&vip).and_then(|id| self.sessions.get(id)).cloned()
    }

    /// Each live domain and its holder's VIP (for DNS and etcd); with
    /// `claimed_only`, only the domains whose holder has claimed them in
    /// the cluster.
    pub(crate) fn names(&self, claimed_only: bool) -> opennotr_dns::Names {
        self.domains
            .iter()
            .filter_map(|(d, id)| {
                let s = self.sessions.get(id)?;
                (!claimed_only || s.claimed.get().is_some()).then(|| (d.clone(), s.vip))
            })
            .collect()
    }

    pub(crate) fn insert(&mut self, s: Arc<Session>) {
        self.by_client.insert(s.client_id.clone(), s.id);
        // A domain shared by a group's members keeps its first holder.
        self.domains.entry(s.domain.clone()).or_insert(s.id);
        self.by_vip.insert(s.vip, s.id);
        self.sessions.insert(s.id, s);
    }

    /// Removes a finished session and remembers what it held.
    pub(crate) fn remove(&mut self, s: &Session, ports: HashMap<ForwardKey, u16>) {
        if self.sessions.get(&s.id).is_some_and(|x| x.id == s.id) {
            self.sessions.remove(&s.id);
        }
        if self.by_client.get(&s.client_id) == Some(&s.id) {
            self.by_client.remove(&s.client_id);
        }
        if self.domains.get(&s.domain) == Some(&s.id) {
            // Another member of a group sharing it holds it on.
            match self.sessions.values().find(|x| x.domain == s.domain) {
                Some(next) => self.domains.insert(s.domain.clone(), next.id),
                None => self.domains.remove(&s.domain),
            };
        }
        if self.by_vip.get(&s.vip) == Some(&s.id) {
            self.by_vip.remove(&s.vip);
        }
        self.vips.release(s.vip);
        if self.leases.len() >= self.max_leases && !self.leases.contains_key(&s.client_id) {
            if let Some(oldest) = self.leases.iter().min_by_key(|(_, l)| l.touched).map(|(k, _)| k.clone()) {
                self.leases.remove(&oldest);
            }
        }
        self.leases.insert(
            s.client_id.clone(),
            Lease { vip: s.vip, domain: s.domain.clone(), ports, touched: Instant::now() },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked() {
        assert_eq!(normalize_domain("App.Example.COM.").unwrap(), "app.example.com");
        assert!(normalize_domain("-bad.example").is_err());
        assert!(normalize_domain("a..b").is_err());
        assert!(normalize_domain("sp ace.x").is_err());
    }

    fn state(extra: &str) -> State {
        let yaml = format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  authKey: \"a key for the unit tests\"\n  domain: \"Z.test\"\n\
             dhcp:\n  cidr: \"100.64.242.1/24\"\n{extra}"
        );
        State::new(&opennotr_config::parse_server(&yaml).unwrap())
    }

    fn refusal(st: &mut State, domain: &str) -> Option<(RefuseCode, String)> {
        match st.admit("id", Some(domain)) {
            Ok(_) => None,
            Err(AdmitError::Refused(code, message)) => Some((code, message)),
            Err(AdmitError::Replace(_)) => unreachable!("no session"),
        }
    }

    #[test]
    fn the_servers_own_names_are_refused() {
        let mut st = state("");
        for d in ["z.test", "Z.Test.", "ns1.z.test", "vip.z.test", "abc.vip.z.test"] {
            let (code, message) = refusal(&mut st, d).unwrap_or_else(|| panic!("{d} admitted"));
            assert_eq!(code, RefuseCode::DomainInvalid, "{d}");
            assert!(message.contains("no client may claim it"), "{d}: {message}");
        }
        for d in ["abc.z.test", "ns2.z.test", "vipx.z.test", "cloud.example.com"] {
            assert!(refusal(&mut st, d).is_none(), "{d} refused");
        }
        // A name server of its own: that name, not ns1.<zone>.
        let mut st = state("dns:\n  listen: \"127.0.0.1:0\"\n  nameserver: \"ns.example.net\"\n");
        assert!(refusal(&mut st, "ns.example.net").unwrap().1.contains("dns.nameserver"));
        assert!(refusal(&mut st, "ns1.z.test").is_none());
    }

    #[test]
    fn a_shared_key_client_id_cannot_spell_a_named_one() {
        assert!(check_client_id("5b0e9f", false).is_ok());
        assert!(check_client_id("alice/5b0e9f", false).unwrap_err().contains("'/'"));
        assert!(check_client_id("/x", false).is_err());
        // Under a name anything goes: it is kept as "<name>/<id>".
        assert!(check_client_id("x/y", true).is_ok());
        for named in [false, true] {
            assert!(check_client_id("", named).is_err());
            assert!(check_client_id(&"a".repeat(129), named).is_err());
            assert!(check_client_id(&"a".repeat(128), named).is_ok());
        }
    }

    #[test]
    fn labels_are_random() {
        let a = random_label();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_label());
    }
}
