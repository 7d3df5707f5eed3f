//! Access control per forward: allow and deny lists of sources, and HTTP
//! basic auth, enforced by the server (docs/access-control.md).
//!
//! A forward's [`Policy`] stacks the server's rules for its client
//! (`clients[i]`, or `access` for shared-key clients) and the rules the
//! client sent with the forward; a visitor must pass both, so a client can
//! only narrow what the server lets in. Plugins get it in
//! [`ForwardContext::access`](opennotr_plugin::ForwardContext), and their
//! tunnel ([`AccessTunnel`]) refuses streams for visitors it does not
//! admit, so nothing of a refused visitor reaches the client.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opennotr_config::{Access as Rules, Credential};
use opennotr_plugin::{async_trait, Access, OpenError, Refusal, StreamProtocol, Tunnel, TunnelStream, Visitor};
use opennotr_proto::message::ForwardRequest;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::session::Session;
use crate::Shared;

/// How long a request waits for a password check before it is told to come
/// back later (503): a flood of wrong passwords gets quick refusals rather
/// than a queue that grows as fast as it comes.
const VERIFY_WAIT: Duration = Duration::from_secs(1);
/// How long a verified `Authorization` value is trusted without hashing
/// again, so a browser does not pay a hash per request.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Verified values remembered per forward.
const CACHE_ENTRIES: usize = 1024;

/// The reasons counted, in the order of [`Counts`].
const REASONS: [Refusal; 4] = [Refusal::Denied, Refusal::NotAllowed, Refusal::Unauthorized, Refusal::Busy];

/// Refusals of one protocol by reason: a refused datagram costs an atomic
/// increment, no lock and no allocation.
#[derive(Debug, Default)]
struct Counts([AtomicU64; 4]);

impl Counts {
    fn add(&self, r: Refusal) {
        if let Some(i) = REASONS.iter().position(|x| *x == r) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What every forward's policy shares: the refusal counters for
/// `/metrics`, and the bound on password checks running at once.
#[derive(Debug)]
pub(crate) struct Guard {
    by_protocol: Mutex<BTreeMap<String, Arc<Counts>>>,
    /// The virtual LAN's, looked up once.
    vip: Arc<Counts>,
    verifications: Arc<Semaphore>,
}

impl Default for Guard {
    fn default() -> Self {
        // One check per core at most (up to 4): the cores left serve traffic.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let vip = Arc::new(Counts::default());
        Guard {
            by_protocol: Mutex::new(BTreeMap::from([("vip".to_string(), vip.clone())])),
            vip,
            verifications: Arc::new(Semaphore::new(cores)),
        }
    }
}

impl Guard {
    /// The counters of `protocol` (the forward's plugin), made on first use.
    fn counts(&self, protocol: &str) -> Arc<Counts> {
        let mut m = self.by_protocol.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(protocol.to_string()).or_default().clone()
    }

    /// Appends `opennotr_visitors_refused_total` to a scrape.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP opennotr_visitors_refused_total Visitors refused by access rules, by forward protocol and \
             reason.\n# TYPE opennotr_visitors_refused_total counter"
        );
        for (protocol, counts) in self.by_protocol.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (r, n) in REASONS.iter().zip(&counts.0) {
                let (reason, n) = (r.name(), n.load(Ordering::Relaxed));
                let _ =
                    writeln!(out, "opennotr_visitors_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}} {n}");
            }
        }
    }
}

/// The server's rules for a session's client (`None`: its credential is
/// gone, and so will its session be).
fn server_rules<'a>(creds: &'a crate::creds::Creds, client: Option<&str>) -> Option<&'a Rules> {
    match client {
        Some(name) => creds.get(name).map(|c| &c.access),
        None => Some(&creds.shared_access),
    }
}

/// The policy of one requested forward: `Ok(None)` when nothing restricts
/// it, `Err` (shown to the client) when the client's rules are invalid.
/// The rules a client sent with its forward, parsed and bounded as the
/// server's own (a client is not trusted to send valid CIDRs or cheap
/// hashes).
pub(crate) fn client_rules(req: &ForwardRequest) -> Result<Rules, String> {
    let Some(a) = &req.access else { return Ok(Rules::default()) };
    let users: Vec<(String, String)> = a.basic_auth.iter().map(|u| (u.user.clone(), u.hash.clone())).collect();
    let rules = opennotr_config::access::parse("access", &a.allow, &a.deny, &users)
        .map_err(|e| format!("invalid access rules: {e}"))?;
    opennotr_config::access::for_protocol("access", &req.protocol, &rules)
        .map_err(|e| format!("invalid access rules: {e}"))?;
    Ok(rules)
}

/// `client` and `domain` are the session's.
pub(crate) fn for_forward(
    shared: &Shared,
    client: Option<&str>,
    domain: &str,
    cred: Option<&Credential>,
    req: &ForwardRequest,
) -> Result<Option<Arc<Policy>>, String> {
    let own = client_rules(req)?;
    if shared.plugin(&req.protocol).is_none() {
        // The forward is refused for that next; a policy now would make
        // `/metrics` counters for the client's made-up protocol name, one
        // per name, forever, with the name unescaped in a label.
        return Ok(None);
    }
    let creds = shared.creds();
    let mut server = match cred {
        Some(c) => c.access.clone(),
        None => server_rules(&creds, client).cloned().unwrap_or_default(),
    };
    if !opennotr_config::access::HTTP_PROTOCOLS.contains(&req.protocol.as_str()) {
        // The server's users guard the client's HTTP forwards; its other
        // forwards have no requests to ask credentials in.
        server.basic_auth.clear();
    }
    Ok(Policy::new(&req.protocol, domain, [server, own], &shared.access))
}

/// Checks a visitor of the virtual LAN (`protocol` at the VIP's `port`):
/// the server's rules for the client, and those of every forward whose
/// local port the VIP exports there. Counted as protocol `vip`.
pub(crate) fn admit_vip(shared: &Shared, session: &Session, protocol: StreamProtocol, port: u16, peer: IpAddr) -> bool {
    let creds = shared.creds();
    let server = server_rules(&creds, session.client.as_deref());
    let verdict = session.with_forwards(|fs| {
        let policies = fs
            .iter()
            .filter(|f| f.meta.local_port == port && (f.meta.protocol == "udp") == (protocol == StreamProtocol::Udp))
            .filter_map(|f| f.access.as_deref());
        vip_verdict(server, policies, peer)
    });
    match verdict {
        Ok(()) => true,
        Err(r) => {
            shared.access.vip.add(r);
            false
        }
    }
}

/// The server's rules, then those of each forward exported at the port.
/// A forward that asks for basic auth refuses every VIP visitor: the VIP
/// carries its service's bytes, with no request to ask credentials in, so
/// letting them through would skip the password its URL demands.
fn vip_verdict<'a>(
    server: Option<&Rules>,
    mut forwards: impl Iterator<Item = &'a Policy>,
    peer: IpAddr,
) -> Result<(), Refusal> {
    server.map_or(Ok(()), |s| check(s, peer))?;
    forwards.try_for_each(|p| {
        if p.needs_auth() {
            return Err(Refusal::Unauthorized);
        }
        p.layers.iter().try_for_each(|l| check(l, peer))
    })
}

/// Deny before allow: a source in a deny list is refused even when an
/// allow list has it.
fn check(rules: &Rules, peer: IpAddr) -> Result<(), Refusal> {
    let peer = peer.to_canonical();
    if rules.deny.iter().any(|n| n.contains(&peer)) {
        return Err(Refusal::Denied);
    }
    if !rules.allow.is_empty() && !rules.allow.iter().any(|n| n.contains(&peer)) {
        return Err(Refusal::NotAllowed);
    }
    Ok(())
}

/// Whether two forwards let in the same visitors by the same rules
/// (`None`: no rules).
pub(crate) fn same_rules(a: Option<&Policy>, b: Option<&Policy>) -> bool {
    a.map(|p| &p.layers) == b.map(|p| &p.layers)
}

/// A forward's rules as enforced.
pub(crate) struct Policy {
    protocol: String,
    realm: String,
    /// The server's, then the forward's; each must pass. None is empty.
    layers: Vec<Rules>,
    /// Whether each layer is the server's (else the client's), for the
    /// admin API.
    server_layer: Vec<bool>,
    guard: Arc<Guard>,
    refused: Arc<Counts>,
    /// This forward's own refusals, for the admin API.
    own: Counts,
    /// SHA-256 of `Authorization` values verified lately → when they stop
    /// being trusted. Only successes: a wrong password costs a hash each
    /// time, under the bound of [`Guard::verifications`].
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("protocol", &self.protocol).field("layers", &self.layers).finish_non_exhaustive()
    }
}

impl Policy {
    pub(crate) fn new(protocol: &str, realm: &str, layers: [Rules; 2], guard: &Arc<Guard>) -> Option<Arc<Policy>> {
        let (layers, server_layer): (Vec<Rules>, Vec<bool>) =
            layers.into_iter().zip([true, false]).filter(|(l, _)| !l.is_empty()).unzip();
        (!layers.is_empty()).then(|| {
            Arc::new(Policy {
                protocol: protocol.to_string(),
                realm: realm.to_string(),
                layers,
                server_layer,
                guard: guard.clone(),
                refused: guard.counts(protocol),
                own: Counts::default(),
                verified: Mutex::default(),
            })
        })
    }

    fn needs_auth(&self) -> bool {
        self.layers.iter().any(|l| !l.basic_auth.is_empty())
    }

    fn refuse(&self, r: Refusal) -> Refusal {
        self.refused.add(r);
        self.own.add(r);
        r
    }

    /// The server's rules and the client's (`None`: none), as enforced.
    pub(crate) fn layers(&self) -> (Option<&Rules>, Option<&Rules>) {
        let pick = |server: bool| self.layers.iter().zip(&self.server_layer).find(|(_, s)| **s == server);
        (pick(true).map(|(l, _)| l), pick(false).map(|(l, _)| l))
    }

    /// This forward's refusals so far: denied, not allowed, unauthorized,
    /// busy (the order of [`REASONS`]).
    pub(crate) fn refused(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.own.0[i].load(Ordering::Relaxed))
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        match v.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                v.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember(&self, key: [u8; 32]) {
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            v.retain(|_, until| *until > now);
            if v.len() >= CACHE_ENTRIES {
                // Full of live entries: start over rather than grow; the
                // cost is one hash per visitor again.
                v.clear();
            }
        }
        v.insert(key, Instant::now() + CACHE_TTL);
    }

    /// Checks `user:password` against every layer with users; each such
    /// layer must have the user with a matching hash.
    async fn verify(&self, user: &str, password: &[u8]) -> Result<(), Refusal> {
        for layer in &self.layers {
            if layer.basic_auth.is_empty() {
                continue;
            }
            let Some(entry) = layer.basic_auth.iter().find(|b| b.user == user) else {
                return Err(Refusal::Unauthorized);
            };
            let permit = match tokio::time::timeout(VERIFY_WAIT, self.guard.verifications.clone().acquire_owned()).await
            {
                Ok(Ok(p)) => p,
                _ => return Err(Refusal::Busy),
            };
            let (hash, password) = (entry.hash.clone(), password.to_vec());
            let ok = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                verify_hash(&hash, &password)
            })
            .await
            .unwrap_or(false);
            if !ok {
                return Err(Refusal::Unauthorized);
            }
        }
        Ok(())
    }
}

/// Whether `password` matches `hash` (argon2id in PHC form, or bcrypt; the
/// config checked which and bounded its cost).
fn verify_hash(hash: &str, password: &[u8]) -> bool {
    use argon2::PasswordVerifier as _;
    if hash.starts_with("$argon2") {
        return argon2::PasswordHash::new(hash)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(password, &h).is_ok());
    }
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[async_trait]
impl Access for Policy {
    fn admit(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.layers.iter().try_for_each(|l| check(l, peer)).map_err(|r| self.refuse(r))
    }

    fn basic_auth_realm(&self) -> Option<&str> {
        self.needs_auth().then_some(self.realm.as_str())
    }

    async fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        if !self.needs_auth() {
            return Ok(());
        }
        let Some(value) = authorization else { return Err(self.refuse(Refusal::Unauthorized)) };
        let Some((user, password)) = opennotr_config::access::basic_credentials(value) else {
            return Err(self.refuse(Refusal::Unauthorized));
        };
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, value).as_ref());
        if self.cached(&key) {
            return Ok(());
        }
        self.verify(&user, &password).await.map_err(|r| self.refuse(r))?;
        self.remember(key);
        Ok(())
    }
}

/// A forward's tunnel that opens no stream for a visitor its policy does
/// not admit: whatever the plugin, a refused visitor never reaches the
/// client.
#[derive(Debug)]
pub(crate) struct AccessTunnel {
    pub(crate) inner: Arc<dyn Tunnel>,
    pub(crate) policy: Arc<Policy>,
}

#[async_trait]
impl Tunnel for AccessTunnel {
    async fn open_stream(
        &self,
        protocol: StreamProtocol,
        target: SocketAddr,
        visitor: Option<Visitor>,
    ) -> Result<TunnelStream, OpenError> {
        if let Some(v) = visitor {
            self.policy.admit(v.peer.ip()).map_err(|r| OpenError::Refused(r.to_string()))?;
        }
        self.inner.open_stream(protocol, target, visitor).await
    }

    fn multiplexes(&self) -> bool {
        self.inner.multiplexes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        opennotr_config::access::parse("t", &s(allow), &s(deny), &[]).unwrap()
    }

    #[test]
    fn deny_wins_and_mapped_addresses_match_as_ipv4() {
        let guard = Arc::new(Guard::default());
        let p = Policy::new("tcp", "a.example", [rules(&["127.0.0.0/8"], &["127.0.0.3"]), Rules::default()], &guard)
            .unwrap();
        assert_eq!(p.admit("127.0.0.2".parse().unwrap()), Ok(()));
        assert_eq!(p.admit("::ffff:127.0.0.2".parse().unwrap()), Ok(()));
        assert_eq!(p.admit("127.0.0.3".parse().unwrap()), Err(Refusal::Denied));
        assert_eq!(p.admit("::ffff:127.0.0.3".parse().unwrap()), Err(Refusal::Denied));
        assert_eq!(p.admit("10.0.0.1".parse().unwrap()), Err(Refusal::NotAllowed));
        // The admin API sees whose rules they are, and this forward's refusals.
        assert_eq!(p.layers(), (Some(&rules(&["127.0.0.0/8"], &["127.0.0.3"])), None));
        assert_eq!(p.refused(), [2, 1, 0, 0]);
        let own = Policy::new("tcp", "a", [Rules::default(), rules(&[], &["10.0.0.0/8"])], &guard).unwrap();
        assert_eq!(own.layers(), (None, Some(&rules(&[], &["10.0.0.0/8"]))));
        assert_eq!(own.refused(), [0; 4], "another forward's count");
        // The forward's own layer narrows the server's.
        let p = Policy::new("tcp", "a", [rules(&["127.0.0.0/8"], &[]), rules(&["10.0.0.0/8"], &[])], &guard).unwrap();
        assert_eq!(p.admit("127.0.0.2".parse().unwrap()), Err(Refusal::NotAllowed));
        assert_eq!(p.admit("10.0.0.1".parse().unwrap()), Err(Refusal::NotAllowed));
        let mut out = String::new();
        guard.write_metrics(&mut out);
        assert!(out.contains("opennotr_visitors_refused_total{protocol=\"tcp\",reason=\"denied\"} 2"), "{out}");
        assert!(Policy::new("tcp", "a", [Rules::default(), Rules::default()], &guard).is_none());
    }

    #[test]
    fn the_vip_refuses_visitors_of_a_forward_that_asks_for_basic_auth() {
        let guard = Arc::new(Guard::default());
        let users = [("u".to_string(), bcrypt::hash("p", 4).unwrap())];
        let auth = opennotr_config::access::parse("t", &[], &[], &users).unwrap();
        let http = Policy::new("http", "a.example", [auth, Rules::default()], &guard).unwrap();
        let cidr = Policy::new("tcp", "a.example", [rules(&["127.0.0.0/8"], &[]), Rules::default()], &guard).unwrap();
        let peer = "127.0.0.2".parse().unwrap();
        assert_eq!(vip_verdict(None, [&*cidr].into_iter(), peer), Ok(()));
        assert_eq!(vip_verdict(None, [&*http].into_iter(), peer), Err(Refusal::Unauthorized));
        assert_eq!(vip_verdict(None, [&*cidr, &*http].into_iter(), peer), Err(Refusal::Unauthorized));
        assert_eq!(vip_verdict(Some(&rules(&[], &["127.0.0.2"])), [&*cidr].into_iter(), peer), Err(Refusal::Denied));
        assert_eq!(vip_verdict(None, std::iter::empty(), peer), Ok(()));
    }

    /// A client's made-up protocol name never becomes a metrics label:
    /// each would be a counter kept forever, and the name is not escaped.
    #[tokio::test]
    async fn a_forward_of_an_unknown_protocol_makes_no_counters() {
        let server = crate::test_server().await;
        let shared = server.shared.clone();
        let req = |protocol: &str| ForwardRequest {
            protocol: protocol.into(),
            public_port: 0,
            local_ip: [127, 0, 0, 1].into(),
            local_port: 22,
            raw_config: None,
            group: None,
            access: Some(opennotr_proto::message::AccessRules {
                allow: vec!["10.0.0.0/8".into()],
                ..Default::default()
            }),
            bandwidth: None,
        };
        assert!(for_forward(&shared, None, "a.z.test", None, &req("tcp")).unwrap().is_some());
        for i in 0..100 {
            let name = format!("x{i}\"}} 1\nopennotr_forged{{a=\"");
            assert!(for_forward(&shared, None, "a.z.test", None, &req(&name)).unwrap().is_none());
        }
        let mut out = String::new();
        shared.access.write_metrics(&mut out);
        assert!(out.contains("protocol=\"tcp\""), "{out}");
        assert!(!out.contains("forged") && out.lines().count() < 20, "{out}");
    }
}
