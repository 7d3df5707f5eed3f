//! Automatic certificates (ACME) for the embedded `https` gateway.
//!
//! With `plugin.https.acme`, the gateway gets certificates for client
//! domains allowed by the policy (names below `zone`, the server's
//! `server.domain`, and the custom names of `domains`) from an ACME CA
//! (Let's Encrypt, or pebble in tests):
//! - **on connect**: when an `https` forward of an allowed domain starts
//!   (in the background; the forward does not wait);
//! - **on first use**: when a visitor's SNI names an allowed, routed domain
//!   that has no certificate yet (that handshake gets the fallback one);
//! - **renewal**: a background check renews certificates `renewBefore`
//!   days before they expire.
//!
//! Challenges: HTTP-01 (the tokens are answered on the embedded `http`
//! plugin's port, before routing) or TLS-ALPN-01 (the challenge
//! certificate is served on the https port to `acme-tls/1` handshakes).
//! The account key and the certificates are kept in `storage`
//! (`account-<host>.json`, `certs/<domain>.pem` + `.key`) and loaded at
//! start; an account the CA no longer knows is replaced by a new one.
//! Failures are logged with the domain and the reason and retried with a
//! backoff while the domain is still routed; nothing waits on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use opennotr_plugin::{CancellationToken, PluginError};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, info, warn};

use crate::gateway::Gateway;
use crate::route::{Lookup, Scheme};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The first retry delay after a failed issuance; doubled up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often the certificates are checked for renewal.
const RENEW_CHECK: Duration = Duration::from_secs(3600);
/// An account created this recently is not replaced when the CA answers
/// `unauthorized` (which may be about something else than the account):
/// a CA that keeps refusing must not get a new account per retry.
const FRESH_ACCOUNT: Duration = Duration::from_secs(3600);

/// Which challenge proves control of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `http-01`: `http://<domain>/.well-known/acme-challenge/<token>` on
    /// the embedded `http` plugin's port (80 for a public CA).
    Http01,
    /// `tls-alpn-01`: an `acme-tls/1` handshake on the https port (443).
    TlsAlpn01,
}

/// `plugin.https.acme`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// The account's contact address (optional).
    pub email: Option<String>,
    /// Where the account and the certificates are kept.
    pub storage: PathBuf,
    /// The server's domain (`server.domain`): any name below it is allowed.
    pub zone: Option<String>,
    /// Custom names allowed besides: exact names, or `*.<parent>` for any
    /// name below `<parent>`.
    pub domains: Vec<String>,
    /// The challenge type.
    pub challenge: Challenge,
    /// An extra trusted root (PEM) for the ACME server's own TLS (pebble).
    pub ca_roots: Option<PathBuf>,
    /// Renew this long before expiry.
    pub renew_before: Duration,
}

const ACME_KEYS: &[&str] = &["directory", "email", "storage", "zone", "domains", "challenge", "caRoots", "renewBefore"];

fn norm(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl AcmeConfig {
    /// Parses `plugin.https.acme`; errors name `plugin.https.acme.<key>`.
    pub fn parse(v: &serde_json::Value) -> Result<AcmeConfig, PluginError> {
        let err = |key: &str, message: String| PluginError::Config {
            key: if key.is_empty() { "plugin.https.acme".into() } else { format!("plugin.https.acme.{key}") },
            message,
        };
        let obj = v.as_object().ok_or_else(|| {
            err(
                "",
                "expected an object such as {\"directory\": \"...\", \"storage\": \"...\", \"zone\": \"...\"}".into(),
            )
        })?;
        for k in obj.keys() {
            if !ACME_KEYS.contains(&k.as_str()) {
                return Err(err(k, format!("unknown key (known: {})", ACME_KEYS.join(", "))));
            }
        }
        let string = |key: &str| -> Result<Option<String>, PluginError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Some(other) => Err(err(key, format!("expected a non-empty string, got {other}"))),
            }
        };
        let directory = string("directory")?.ok_or_else(|| {
            err(
                "directory",
                "the ACME directory URL is needed, e.g. https://acme-v02.api.letsencrypt.org/directory".into(),
            )
        })?;
        if !directory.starts_with("https://") && !directory.starts_with("http://") {
            return Err(err("directory", format!("{directory:?} is not an http(s) URL")));
        }
        let storage = PathBuf::from(
            string("storage")?
                .ok_or_else(|| err("storage", "a directory for the account and certificates is needed".into()))?,
        );
        let zone = string("zone")?.map(|z| norm(&z));
        let domains = match obj.get("domains") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|d| match d.as_str() {
                    Some(s) if !s.trim().is_empty() && !s.trim().trim_start_matches("*.").contains('*') => Ok(norm(s)),
                    _ => Err(err(
                        "domains",
                        format!("expected domain names such as \"app.example.com\" or \"*.example.org\", got {d}"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(err("domains", format!("expected a list of domain names, got {other}"))),
        };
        if zone.is_none() && domains.is_empty() {
            return Err(err(
                "zone",
                "give zone (the server's domain) and/or domains: which names may get certificates".into(),
            ));
        }
        let challenge = match string("challenge")?.as_deref() {
            None | Some("http-01") => Challenge::Http01,
            Some("tls-alpn-01") => Challenge::TlsAlpn01,
            Some(other) => return Err(err("challenge", format!("{other:?}: expected \"http-01\" or \"tls-alpn-01\""))),
        };
        let ca_roots = string("caRoots")?.map(PathBuf::from);
        if let Some(p) = &ca_roots {
            if !p.is_file() {
                return Err(err("caRoots", format!("{} is not a readable file", p.display())));
            }
        }
        let renew_before = match obj.get("renewBefore") {
            None | Some(serde_json::Value::Null) => Duration::from_secs(30 * 86_400),
            Some(serde_json::Value::Number(n)) => match n.as_f64() {
                Some(d) if d > 0.0 && d <= 3650.0 => Duration::from_secs_f64(d * 86_400.0),
                _ => return Err(err("renewBefore", format!("expected days in (0, 3650], got {n}"))),
            },
            Some(other) => return Err(err("renewBefore", format!("expected a number of days, got {other}"))),
        };
        Ok(AcmeConfig { directory, email: string("email")?, storage, zone, domains, challenge, ca_roots, renew_before })
    }

    /// Whether `domain` (lowercase) may get a certificate.
    pub fn allows(&self, domain: &str) -> bool {
        let domain = norm(domain);
        if domain.is_empty() || domain.contains('*') || !domain.contains('.') {
            return false;
        }
        if let Some(z) = &self.zone {
            if domain.strip_suffix(z.as_str()).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')) {
                return true;
            }
        }
        self.domains.iter().any(|d| match d.strip_prefix("*.") {
            Some(parent) => domain.strip_suffix(parent).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => *d == domain,
        })
    }
}

/// A certificate from the CA.
pub(crate) struct Issued {
    key: Arc<CertifiedKey>,
    pub(crate) not_after: SystemTime,
}

/// The ACME state of one `https` plugin.
pub(crate) struct Acme {
    cfg: AcmeConfig,
    gateway: Weak<Gateway>,
    /// The https plugin's `wildcard` (a name below a routed domain counts
    /// as routed).
    wildcard: bool,
    certs: RwLock<HashMap<String, Issued>>,
    /// TLS-ALPN-01 challenge certificates by domain.
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Domains with an issuance task (running or waiting to retry).
    busy: Mutex<std::collections::HashSet<String>>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// The id of the account this process created last, and when.
    created: Mutex<Option<(String, std::time::Instant)>>,
    renewal_started: std::sync::Once,
    shutdown: CancellationToken,
}

impl Drop for Acme {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn certs_dir(storage: &Path) -> PathBuf {
    storage.join("certs")
}

/// The file stem of a domain's certificate.
fn stem(domain: &str) -> String {
    domain.replace('*', "_")
}

pub(crate) fn parse_pair(chain_pem: &[u8], key_pem: &[u8]) -> Result<Issued, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("no CERTIFICATE in the chain")?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("bad certificate: {e}"))?;
    let not_after =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0));
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad key: {e}"))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| e.to_string())?;
    Ok(Issued { key: Arc::new(ck), not_after })
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        std::io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl Acme {
    /// Loads what `storage` holds (certificates of names the policy still
    /// allows); creates the directory.
    pub(crate) fn new(cfg: AcmeConfig, gateway: &Arc<Gateway>, wildcard: bool) -> Result<Arc<Acme>, PluginError> {
        let dir = certs_dir(&cfg.storage);
        std::fs::create_dir_all(&dir).map_err(|e| PluginError::Config {
            key: "plugin.https.acme.storage".into(),
            message: format!("{}: {e}", dir.display()),
        })?;
        let mut certs = HashMap::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(domain) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pem")) else {
                continue;
            };
            let key_file = dir.join(format!("{domain}.key"));
            let domain = domain.to_ascii_lowercase();
            if !cfg.allows(&domain) {
                debug!(%domain, "stored ACME certificate outside the policy; not served");
                continue;
            }
            let loaded = std::fs::read(&path)
                .and_then(|c| std::fs::read(&key_file).map(|k| (c, k)))
                .map_err(|e| e.to_string())
                .and_then(|(c, k)| parse_pair(&c, &k));
            match loaded {
                Ok(i) => {
                    info!(%domain, "ACME certificate loaded from storage");
                    certs.insert(domain, i);
                }
                Err(e) => {
                    warn!(%domain, error = %e, "cannot load a stored ACME certificate; a new one will be ordered")
                }
            }
        }
        Ok(Arc::new(Acme {
            cfg,
            gateway: Arc::downgrade(gateway),
            wildcard,
            certs: RwLock::new(certs),
            alpn: RwLock::new(HashMap::new()),
            busy: Mutex::new(Default::default()),
            account: tokio::sync::Mutex::new(None),
            created: Mutex::new(None),
            renewal_started: std::sync::Once::new(),
            shutdown: CancellationToken::new(),
        }))
    }

    /// The challenge type.
    pub(crate) fn challenge(&self) -> Challenge {
        self.cfg.challenge
    }

    /// The ACME certificate of `name` (lowercase), if any.
    pub(crate) fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.read().unwrap_or_else(|e| e.into_inner()).get(name).map(|i| i.key.clone())
    }

    /// The TLS-ALPN-01 challenge certificate of `name`, if one is pending.
    pub(crate) fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    fn routed(&self, name: &str) -> bool {
        let Some(g) = self.gateway.upgrade() else { return false };
        [Scheme::Https, Scheme::H2c].iter().any(|s| matches!(g.lookup(*s, name, self.wildcard), Lookup::Found(_)))
    }

    /// A visitor's SNI named `name` and no certificate file or ACME
    /// certificate matched: order one if the policy allows it and the name
    /// is routed.
    pub(crate) fn on_first_use(self: &Arc<Self>, name: &str) {
        if self.cfg.allows(name) && self.routed(name) {
            self.request(name, "first use");
        }
    }

    /// An `https` forward of `domain` started.
    pub(crate) fn on_connect(self: &Arc<Self>, domain: &str) {
        self.start_renewal();
        if !self.cfg.allows(domain) {
            debug!(%domain, "domain outside the ACME policy; no certificate ordered");
            return;
        }
        let due = match self.certs.read().unwrap_or_else(|e| e.into_inner()).get(domain) {
            Some(i) => self.due(i),
            None => true,
        };
        if due {
            self.request(domain, "connect");
        }
    }

    fn due(&self, i: &Issued) -> bool {
        i.not_after.duration_since(SystemTime::now()).map_or(true, |left| left <= self.cfg.renew_before)
    }

    /// Starts an issuance task for `domain` unless one is running.
    fn request(self: &Arc<Self>, domain: &str, why: &'static str) {
        if self.shutdown.is_cancelled() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if !self.busy.lock().unwrap_or_else(|e| e.into_inner()).insert(domain.to_string()) {
            return;
        }
        info!(%domain, trigger = why, "ordering an ACME certificate");
        let me = self.clone();
        let domain = domain.to_string();
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let r = tokio::select! {
                    r = me.issue(&domain) => r,
                    _ = me.shutdown.cancelled() => break,
                };
                match r {
                    Ok(()) => break,
                    Err(e) => {
                        let keep = me.routed(&domain)
                            || me.certs.read().unwrap_or_else(|e| e.into_inner()).contains_key(&domain);
                        if !keep {
                            warn!(%domain, error = %e, "ACME order failed; the domain is no longer routed, giving up");
                            break;
                        }
                        warn!(%domain, error = %e, retry_in = ?backoff, "ACME order failed; retrying later");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = me.shutdown.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            me.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&domain);
        });
    }

    /// Starts the renewal check (once).
    pub(crate) fn start_renewal(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.renewal_started.call_once(|| {
            let weak = Arc::downgrade(self);
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let Some(me) = weak.upgrade() else { return };
                    let due: Vec<String> = {
                        let certs = me.certs.read().unwrap_or_else(|e| e.into_inner());
                        certs.iter().filter(|(_, i)| me.due(i)).map(|(d, _)| d.clone()).collect()
                    };
                    for d in due {
                        me.request(&d, "renewal");
                    }
                    drop(me);
                    tokio::select! {
                        _ = tokio::time::sleep(RENEW_CHECK) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            });
        });
    }

    fn account_file(&self) -> PathBuf {
        let host: String = self
            .cfg
            .directory
            .split("://")
            .nth(1)
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        self.cfg.storage.join(format!("account-{host}.json"))
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, String> {
        match &self.cfg.ca_roots {
            Some(p) => Account::builder_with_root(p),
            None => Account::builder(),
        }
        .map_err(|e| format!("ACME HTTP client: {e}"))
    }

    /// The account: the one in use, else the stored one, else a new one.
    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let file = self.account_file();
        let account = match std::fs::read(&file) {
            Ok(bytes) => {
                let creds: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not ACME account credentials: {e}", file.display()))?;
                self.builder()?.from_credentials(creds).await.map_err(|e| format!("ACME account: {e}"))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create_account().await?,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Registers a new account with the CA and stores its credentials,
    /// replacing any stored ones.
    async fn create_account(&self) -> Result<Account, String> {
        let file = self.account_file();
        let contact = self.cfg.email.as_ref().map(|m| format!("mailto:{m}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, creds) = self
            .builder()?
            .create(
                &NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false },
                self.cfg.directory.clone(),
                None,
            )
            .await
            .map_err(|e| format!("creating the ACME account at {}: {e}", self.cfg.directory))?;
        let json = serde_json::to_vec_pretty(&creds).map_err(|e| e.to_string())?;
        write_private(&file, &json).map_err(|e| format!("{}: {e}", file.display()))?;
        info!(directory = %self.cfg.directory, "ACME account created");
        *self.created.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((account.id().to_string(), std::time::Instant::now()));
        Ok(account)
    }

    /// The CA rejected `rejected` (it forgot it: a reset test CA, a lost
    /// database, a deactivated account): a new account takes its place, in
    /// memory and in storage, unless another order replaced it already.
    async fn reregister(&self, rejected: &Account, why: &instant_acme::Problem) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(current) = &*slot {
            if current.id() != rejected.id() {
                return Ok(current.clone());
            }
        }
        let fresh = self
            .created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(id, at)| id == rejected.id() && at.elapsed() < FRESH_ACCOUNT);
        if fresh && why.r#type.as_deref() != Some(ACCOUNT_DOES_NOT_EXIST) {
            return Err(format!("new order: the CA refuses the account created within the hour: {why}"));
        }
        // The problem names the account's URL at most; the key is never logged.
        warn!(
            directory = %self.cfg.directory,
            problem = why.r#type.as_deref().unwrap_or(""),
            detail = why.detail.as_deref().unwrap_or(""),
            "the ACME CA does not accept the stored account; registering a new one"
        );
        let account = self.create_account().await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    /// One order for `domain`, start to end.
    async fn issue(&self, domain: &str) -> Result<(), String> {
        let gateway = self.gateway.upgrade().ok_or("the gateway is gone")?;
        if self.cfg.challenge == Challenge::Http01 {
            gateway.ensure_http_listener().await?;
        }
        let account = self.account().await?;
        let ids = [Identifier::Dns(domain.to_string())];
        // The first request the account signs: where a CA that lost the
        // account says so. Retried once, with a new account.
        let mut order = match account.new_order(&NewOrder::new(&ids)).await {
            Ok(order) => order,
            Err(instant_acme::Error::Api(problem)) if account_rejected(&problem) => {
                let account = self.reregister(&account, &problem).await?;
                account.new_order(&NewOrder::new(&ids)).await.map_err(|e| format!("new order: {e}"))?
            }
            Err(e) => return Err(format!("new order: {e}")),
        };
        // What to withdraw when this order is over.
        let mut tokens = Vec::new();
        let result = async {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("authorization is {other:?}")),
                }
                let kind = match self.cfg.challenge {
                    Challenge::Http01 => ChallengeType::Http01,
                    Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let mut ch = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| format!("the CA offers no {kind:?} challenge for {domain}"))?;
                let ka = ch.key_authorization();
                match self.cfg.challenge {
                    Challenge::Http01 => {
                        gateway.acme_tokens().insert(ch.token.clone(), ka.as_str().to_string());
                        tokens.push(ch.token.clone());
                    }
                    Challenge::TlsAlpn01 => {
                        let ck = alpn_challenge_cert(domain, ka.digest().as_ref())?;
                        self.alpn.write().unwrap_or_else(|e| e.into_inner()).insert(domain.to_string(), ck);
                    }
                }
                ch.set_ready().await.map_err(|e| format!("challenge ready: {e}"))?;
            }
            let retry = RetryPolicy::new().timeout(Duration::from_secs(90));
            let status = order.poll_ready(&retry).await.map_err(|e| format!("validation: {e}"))?;
            if status != OrderStatus::Ready {
                return Err(format!("the order is {status:?} after validation"));
            }
            let key_pem = order.finalize().await.map_err(|e| format!("finalize: {e}"))?;
            let chain_pem = order.poll_certificate(&retry).await.map_err(|e| format!("certificate: {e}"))?;
            Ok((key_pem, chain_pem))
        }
        .await;
        {
            let mut t = gateway.acme_tokens();
            for tok in &tokens {
                t.remove(tok);
            }
        }
        self.alpn.write().unwrap_or_else(|e| e.into_inner()).remove(domain);
        let (key_pem, chain_pem) = result?;
        let issued = parse_pair(chain_pem.as_bytes(), key_pem.as_bytes())?;
        let dir = certs_dir(&self.cfg.storage);
        let base = stem(domain);
        // The key first: a certificate file is only read with its key.
        write_private(&dir.join(format!("{base}.key")), key_pem.as_bytes())
            .and_then(|()| write_private(&dir.join(format!("{base}.pem")), chain_pem.as_bytes()))
            .map_err(|e| format!("storing the certificate in {}: {e}", dir.display()))?;
        let days = issued.not_after.duration_since(SystemTime::now()).unwrap_or_default().as_secs() / 86_400;
        self.certs.write().unwrap_or_else(|e| e.into_inner()).insert(domain.to_string(), issued);
        info!(%domain, valid_days = days, "ACME certificate issued");
        Ok(())
    }
}

/// Whether a problem answering the account's first signed request means
/// the CA does not accept the account itself (rather than the order).
pub(crate) fn account_rejected(problem: &instant_acme::Problem) -> bool {
    matches!(problem.r#type.as_deref(), Some(ACCOUNT_DOES_NOT_EXIST | "urn:ietf:params:acme:error:unauthorized"))
}

const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// The self-signed TLS-ALPN-01 certificate for `domain` (RFC 8737).
fn alpn_challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
}

/// The HTTP-01 answer for a request path on the `http` plugin's port:
/// `Some` for `/.well-known/acme-challenge/<token>` when the token is
/// pending, before any routing.
pub(crate) fn http01_answer(gateway: &Gateway, scheme: Scheme, path: &str) -> Option<hyper::Response<String>> {
    if scheme != Scheme::Http {
        return None;
    }
    let token = path.strip_prefix("/.well-known/acme-challenge/")?;
    let ka = gateway.acme_tokens().get(token).cloned()?;
    debug!(token, "answering an HTTP-01 challenge");
    hyper::Response::builder()
        .status(hyper::StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(ka)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::key_of;
    use serde_json::json;

    #[test]
    fn parses_and_applies_the_policy() {
        let c = AcmeConfig::parse(&json!({
            "directory": "https://acme.test/dir", "storage": "/tmp/x", "zone": "Notr.Test.",
            "domains": ["app.example.com", "*.other.example"], "challenge": "tls-alpn-01", "renewBefore": 10
        }))
        .unwrap();
        assert_eq!(c.zone.as_deref(), Some("notr.test"));
        assert_eq!(c.challenge, Challenge::TlsAlpn01);
        assert_eq!(c.renew_before, Duration::from_secs(10 * 86_400));
        assert!(c.allows("abc.notr.test"));
        assert!(c.allows("a.b.notr.test"));
        assert!(!c.allows("notr.test"));
        assert!(!c.allows("evilnotr.test"));
        assert!(c.allows("app.example.com"));
        assert!(!c.allows("x.app.example.com"));
        assert!(c.allows("x.other.example"));
        assert!(!c.allows("other.example"));
        assert!(!c.allows("elsewhere.org"));
        let d = AcmeConfig::parse(&json!({"directory": "https://a/d", "storage": "/s", "zone": "z.test"})).unwrap();
        assert_eq!(d.challenge, Challenge::Http01);
        assert_eq!(d.renew_before, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn an_unknown_or_rejected_account_is_told_apart() {
        let problem = |t: &str| -> instant_acme::Problem {
            serde_json::from_value(json!({"type": t, "detail": "x", "status": 400})).unwrap()
        };
        assert!(account_rejected(&problem("urn:ietf:params:acme:error:accountDoesNotExist")));
        assert!(account_rejected(&problem("urn:ietf:params:acme:error:unauthorized")));
        assert!(!account_rejected(&problem("urn:ietf:params:acme:error:rateLimited")));
        assert!(!account_rejected(&problem("urn:ietf:params:acme:error:rejectedIdentifier")));
    }

    #[test]
    fn errors_name_the_key() {
        let e = |v| key_of(AcmeConfig::parse(&v).unwrap_err());
        let base = json!({"directory": "https://a/d", "storage": "/s", "zone": "z.test"});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(e(with("emial", json!("x"))), "plugin.https.acme.emial");
        assert_eq!(e(json!({"storage": "/s", "zone": "z"})), "plugin.https.acme.directory");
        assert_eq!(e(json!({"directory": "https://a/d", "zone": "z"})), "plugin.https.acme.storage");
        assert_eq!(e(json!({"directory": "https://a/d", "storage": "/s"})), "plugin.https.acme.zone");
        assert_eq!(e(with("challenge", json!("dns-01"))), "plugin.https.acme.challenge");
        assert_eq!(e(with("renewBefore", json!(0))), "plugin.https.acme.renewBefore");
        assert_eq!(e(with("caRoots", json!("/nonexistent.pem"))), "plugin.https.acme.caRoots");
        assert_eq!(e(with("domains", json!("a.b"))), "plugin.https.acme.domains");
        assert_eq!(e(json!("x")), "plugin.https.acme");
    }
}
