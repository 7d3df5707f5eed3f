//! The TLS port of the embedded gateway: the `https` plugin (TLS terminated
//! with certificates from files, picked by SNI and reloaded when they
//! change) and the `tls` plugin (SNI passthrough), sharing one listener
//! when their `listen` addresses are equal.
//!
//! A [`TlsPort`] is one listen address. The `https` plugin sets its
//! termination (certificates, HTTP settings), the `tls` plugin turns on
//! passthrough; the first forward of either binds it. Each visitor
//! connection: with passthrough on, the ClientHello is read (and kept) and
//! if its SNI names a domain with a live `tls` route, the bytes read so far
//! and the rest of the stream go untouched to that client's service;
//! otherwise TLS is terminated (replaying the bytes read) and the requests
//! are served as `https`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use opennotr_plugin::{
    async_trait, CancellationToken, Carried, CarriedPort, Elsewhere, Endpoint, ForwardContext, ForwardMeta, Lifecycle,
    OpenError, Plugin, PluginError, ServerInfo, StreamProtocol, Visitor,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::acme::{Acme, Challenge, ACME_TLS_ALPN};
use crate::config::{CertFiles, GatewayConfig};
use crate::ctx::{Ctx, Settings};
use crate::gateway::Gateway;
use crate::io::Replay;
use crate::limits::ConnLimits;
use crate::route::{Lookup, Scheme, Upstream};
use crate::serve::{accept_loop, serve_connection, Start};

/// The most ClientHello bytes read before giving up on finding the SNI.
const MAX_HELLO: usize = 64 * 1024;

// ------------------------------------------------------------ certificates

/// Modification time and length of a file: what "changed" means.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[derive(Clone)]
struct Loaded {
    stamps: [Stamp; 2],
    key: Arc<CertifiedKey>,
}

#[derive(Default)]
struct StoreState {
    default: Option<Loaded>,
    /// Lowercase domain (`*.parent` for wildcard files) → certificate.
    by_name: HashMap<String, Loaded>,
}

/// The certificates of an `https` gateway, picked by SNI: the exact name,
/// then `*.<parent>`, then the default one.
pub(crate) struct CertStore {
    files: CertFiles,
    state: RwLock<StoreState>,
    /// Automatic certificates, between the files by name and the default.
    acme: Option<Arc<Acme>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = s.by_name.keys().collect();
        names.sort();
        f.debug_struct("CertStore").field("default", &s.default.is_some()).field("names", &names).finish()
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(ck))
}

/// `<dir>/<name>.pem` + `<dir>/<name>.key` pairs: (domain, cert, key).
/// `_.<parent>` files are the wildcard `*.<parent>`.
fn scan_dir(dir: &Path) -> io::Result<Vec<(String, PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pem")) else {
            continue;
        };
        let key = dir.join(format!("{stem}.key"));
        if !key.is_file() {
            continue;
        }
        let name = stem.to_ascii_lowercase();
        let name = match name.strip_prefix("_.") {
            Some(parent) => format!("*.{parent}"),
            None => name,
        };
        out.push((name, path, key));
    }
    out.sort();
    Ok(out)
}

impl CertStore {
    /// Loads every certificate; any error is a configuration error.
    pub(crate) fn load(files: CertFiles, acme: Option<Arc<Acme>>) -> Result<CertStore, PluginError> {
        let err = |key: &str, message: String| PluginError::Config { key: format!("plugin.https.{key}"), message };
        let mut state = StoreState::default();
        if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
            let stamps = [stamp(cert), stamp(key)];
            state.default = Some(Loaded { stamps, key: load_pair(cert, key).map_err(|e| err("cert", e))? });
        }
        if let Some(dir) = &files.cert_dir {
            for (name, cert, key) in scan_dir(dir).map_err(|e| err("certDir", format!("{}: {e}", dir.display())))? {
                let stamps = [stamp(&cert), stamp(&key)];
                let ck = load_pair(&cert, &key).map_err(|e| err("certDir", e))?;
                state.by_name.insert(name, Loaded { stamps, key: ck });
            }
        }
        Ok(CertStore { files, state: RwLock::new(state), acme })
    }

    /// Reloads the files that changed (and picks up new and removed ones
    /// in the directory). A file that does not load keeps the previous
    /// certificate and is logged.
    pub(crate) fn refresh(&self) {
        let current = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            (s.default.clone(), s.by_name.clone())
        };
        let (mut default, old) = current;
        let mut changed = false;
        if let (Some(cert), Some(key)) = (&self.files.cert, &self.files.key) {
            let stamps = [stamp(cert), stamp(key)];
            if default.as_ref().is_none_or(|l| l.stamps != stamps) {
                match load_pair(cert, key) {
                    Ok(ck) => {
                        info!(cert = %cert.display(), "default certificate reloaded");
                        default = Some(Loaded { stamps, key: ck });
                        changed = true;
                    }
                    Err(e) => warn!(error = %e, "cannot reload the default certificate; keeping the previous one"),
                }
            }
        }
        let mut by_name = HashMap::new();
        if let Some(dir) = &self.files.cert_dir {
            match scan_dir(dir) {
                Ok(pairs) => {
                    for (name, cert, key) in pairs {
                        let stamps = [stamp(&cert), stamp(&key)];
                        match old.get(&name) {
                            Some(l) if l.stamps == stamps => {
                                by_name.insert(name, l.clone());
                            }
                            previous => match load_pair(&cert, &key) {
                                Ok(ck) => {
                                    info!(domain = %name, "certificate loaded");
                                    by_name.insert(name, Loaded { stamps, key: ck });
                                    changed = true;
                                }
                                Err(e) => {
                                    warn!(domain = %name, error = %e, "cannot load a certificate; keeping the previous one");
                                    if let Some(l) = previous {
                                        by_name.insert(name, l.clone());
                                    }
                                }
                            },
                        }
                    }
                    if old.keys().any(|k| !by_name.contains_key(k)) {
                        changed = true;
                    }
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot read the certificate directory");
                    by_name = old;
                }
            }
        } else {
            by_name = old;
        }
        if changed {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            s.default = default;
            s.by_name = by_name;
        }
    }

    /// The certificate for `sni`, if any: a `certDir` file of the exact
    /// name, then a `certDir` wildcard file, then an ACME certificate of
    /// the exact name (ordering one, in the background, when the name has
    /// none yet and the policy allows it), then the default certificate.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(l) = s.by_name.get(&name) {
                return Some(l.key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(l) = s.by_name.get(&format!("*.{parent}")) {
                    return Some(l.key.clone());
                }
            }
            if let Some(acme) = &self.acme {
                if let Some(ck) = acme.cert(&name) {
                    return Some(ck);
                }
                acme.on_first_use(&name);
            }
        }
        s.default.as_ref().map(|l| l.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let (Some(acme), Some(mut alpn)) = (&self.acme, hello.alpn()) {
            if acme.challenge() == Challenge::TlsAlpn01 && alpn.any(|p| p == ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the challenge certificate or nothing.
                let name = hello.server_name()?.trim_end_matches('.').to_ascii_lowercase();
                return acme.alpn_cert(&name);
            }
        }
        let picked = self.pick(hello.server_name());
        if picked.is_none() {
            debug!(sni = ?hello.server_name(), "no certificate for this name");
        }
        picked
    }
}

// ------------------------------------------------------------------ ports

/// What the `https` plugin set on a port.
struct Termination {
    acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<CertStore>,
    settings: Arc<Settings>,
    reload: Duration,
}

/// What the `tls` plugin set on a port.
#[derive(Debug, Clone, Copy)]
struct Passthrough {
    wildcard: bool,
    hello_timeout: Duration,
}

struct PortState {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    term: RwLock<Option<Arc<Termination>>>,
    pass: RwLock<Option<Passthrough>>,
    /// The connection caps each plugin asked for (`https`, `tls`); the
    /// smaller ones apply.
    caps: Mutex<[Option<(usize, usize)>; 2]>,
    limits: Arc<ConnLimits>,
}

impl PortState {
    fn term(&self) -> Option<Arc<Termination>> {
        self.term.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn pass(&self) -> Option<Passthrough> {
        *self.pass.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set_caps(&self, scheme: Scheme, cfg: &GatewayConfig) {
        self.update_caps(scheme, Some((cfg.max_connections, cfg.max_connections_per_ip)));
    }

    /// The caps `scheme`'s plugin asks for (`None`: it is gone); the
    /// smaller of the two plugins' apply.
    fn update_caps(&self, scheme: Scheme, to: Option<(usize, usize)>) {
        let mut caps = self.caps.lock().unwrap_or_else(|e| e.into_inner());
        caps[usize::from(scheme == Scheme::Tls)] = to;
        let (total, per_ip) =
            caps.iter().flatten().fold((usize::MAX, usize::MAX), |(t, p), (a, b)| (t.min(*a), p.min(*b)));
        self.limits.set(total, per_ip);
    }
}

/// The TLS ports of one server, by listen address, shared by its `https`
/// and `tls` plugins.
pub(crate) type TlsPorts = Mutex<HashMap<SocketAddr, std::sync::Weak<TlsPort>>>;

/// One TLS listen address, held by the `https` and/or `tls` plugins on
/// it; the listener stops when the last of them is dropped.
pub(crate) struct TlsPort {
    state: Arc<PortState>,
    bound: tokio::sync::OnceCell<u16>,
    shutdown: CancellationToken,
}

impl Drop for TlsPort {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TlsPort {
    async fn listen(&self, life: Lifecycle) -> Result<u16, PluginError> {
        self.bound
            .get_or_try_init(|| async {
                let addr = self.state.addr;
                let listener = opennotr_transport::listen(addr)
                    .map_err(|e| PluginError::Refused(format!("the gateway cannot listen on {addr}: {e}")))?;
                let port = listener.local_addr().map(|a| a.port()).unwrap_or(addr.port());
                info!(addr = %addr, port, https = self.state.term().is_some(), tls = self.state.pass().is_some(), "TLS gateway listening");
                if let Ok(a) = listener.local_addr() {
                    self.state.limits.set_bound(a);
                }
                if let Some(term) = self.state.term() {
                    if let Some(acme) = &term.store.acme {
                        acme.start_renewal();
                    }
                    tokio::spawn(reload_loop(term.store.clone(), term.reload, self.shutdown.clone()));
                }
                self.state.gateway.add_listener(&self.state.limits);
                let (state, conn_life) = (self.state.clone(), life.clone());
                let serve = move |stream: TcpStream, peer, admitted| {
                    let _ = stream.set_nodelay(true);
                    let at = At { peer, reached: stream.local_addr().ok(), slot: admitted, carried: false };
                    visit(stream, at, state.clone(), conn_life.clone())
                };
                tokio::spawn(accept_loop(
                    listener,
                    self.state.limits.clone(),
                    life,
                    self.shutdown.clone(),
                    "tls",
                    false,
                    serve,
                ));
                Ok(port)
            })
            .await
            .copied()
    }
}

async fn reload_loop(store: Arc<CertStore>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || s.refresh()).await;
    }
}

/// What a peek at a ClientHello makes of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed.
    More,
    /// A whole ClientHello: its SNI, lowercase (`None` when it names none).
    Hello(Option<String>),
    /// Not TLS, or a hello larger than [`MAX_HELLO`].
    NotTls,
}

/// Finds the SNI of a ClientHello in the bytes a visitor sends, however
/// they are split; no I/O, so the passthrough's parsing is fuzzed alone.
#[derive(Default)]
pub struct HelloPeek {
    acceptor: rustls::server::Acceptor,
    read: usize,
}

impl HelloPeek {
    /// Takes the next bytes read from the visitor.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Peek {
        self.read += chunk.len();
        while !chunk.is_empty() {
            if self.acceptor.read_tls(&mut chunk).is_err() {
                return Peek::NotTls;
            }
        }
        match self.acceptor.accept() {
            Ok(Some(accepted)) => Peek::Hello(accepted.client_hello().server_name().map(|n| n.to_ascii_lowercase())),
            Ok(None) if self.read < MAX_HELLO => Peek::More,
            _ => Peek::NotTls,
        }
    }
}

/// Reads the ClientHello, keeping every byte read: the bytes and the SNI
/// (`None` inside when the hello names none). `None` when the visitor is
/// not speaking TLS or is too slow.
async fn read_hello<S: AsyncRead + Unpin>(s: &mut S, timeout: Duration) -> Option<(Vec<u8>, Option<String>)> {
    let mut buf = Vec::with_capacity(2048);
    let mut peek = HelloPeek::default();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            match peek.feed(&chunk[..n]) {
                Peek::More => {}
                Peek::Hello(sni) => return Some(sni),
                Peek::NotTls => return None,
            }
        }
    };
    let sni = tokio::time::timeout(timeout, read).await.ok()??;
    Some((buf, sni))
}

/// Where a visitor's connection on the TLS port comes from.
struct At {
    peer: SocketAddr,
    /// The address it reached (where it came to the cluster).
    reached: Option<SocketAddr>,
    /// Its slot under the port's caps (a connection another node carried
    /// here is counted by the visitor's own address).
    slot: Arc<crate::limits::Admitted>,
    /// Another node carried it here: it is not carried on again.
    carried: bool,
}

/// A visitor's connection on the TLS port: a socket of this node's, or a
/// connection another node carried here.
trait Visiting: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes closing it a reset, where it is a socket of this node's.
    fn reset_on_close(&self) {}
}

impl Visiting for TcpStream {
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl Visiting for Box<dyn opennotr_plugin::Carried> {}

async fn visit<S: Visiting>(mut visitor: S, at: At, state: Arc<PortState>, life: Lifecycle) {
    let term = state.term();
    let pass = state.pass();
    let elsewhere = !at.carried && state.gateway.has_elsewhere();
    let mut prefix = Vec::new();
    // The SNI decides which node serves the connection, and whether it is
    // passed through or terminated here; a node with no `tls` plugin reads
    // it too when it is part of a cluster.
    if pass.is_some() || elsewhere {
        let timeout = pass.map_or_else(
            || term.as_ref().map_or(Duration::from_secs(10), |t| t.settings.header_timeout),
            |p| p.hello_timeout,
        );
        let Some((bytes, sni)) = read_hello(&mut visitor, timeout).await else {
            debug!("no ClientHello; closing");
            return;
        };
        prefix = bytes;
        if let Some(name) = sni {
            // Another node first: it is asked only when no route of this
            // node's is as near the name (an exact name of another node's
            // is not taken by a wildcard route here).
            if elsewhere {
                let wildcard = pass.is_some_and(|p| p.wildcard) || term.as_ref().is_some_and(|t| t.settings.wildcard);
                if let Some((e, node)) = tls_elsewhere(&state.gateway, &name, wildcard) {
                    let io = Replay::new(&prefix[..], visitor);
                    let carried =
                        crate::elsewhere::carry(io, &*e, &node, CarriedPort::Tls, at.peer, at.reached, &life.kill);
                    let ok = carried.await.is_ok();
                    if !ok {
                        debug!(sni = %name, %node, "cannot carry the connection to its node; closing");
                    }
                    state.gateway.count_carried(ok);
                    return;
                }
            }
            if let Some(pass) = pass {
                if let Lookup::Found(up) = state.gateway.lookup(Scheme::Tls, &name, pass.wildcard) {
                    return relay(visitor, prefix, &at, up, &name).await;
                }
            }
            if term.is_none() {
                debug!(sni = %name, "no tls route for this name and no https here; closing");
                return;
            }
        } else if term.is_none() {
            return;
        }
    }
    let Some(term) = term else { return };
    let io = Replay::new(&prefix[..], visitor);
    let tls = match tokio::time::timeout(term.settings.header_timeout, term.acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
        debug!("TLS-ALPN-01 validation handshake done; closing");
        return;
    }
    let start = if tls.get_ref().1.alpn_protocol() == Some(b"h2") { Start::Http2 } else { Start::Http1 };
    let ctx = Ctx::new(state.gateway.clone(), term.settings.clone(), at.peer, life, Some(at.slot));
    let ctx = if at.carried { ctx.carried() } else { ctx };
    serve_connection(tls, ctx, start).await;
}

/// The node serving `name` on the TLS port, when another node does and no
/// route of this node's (`tls`, `https` or `h2c`) takes it first.
fn tls_elsewhere(gateway: &Gateway, name: &str, wildcard: bool) -> Option<(Arc<dyn Elsewhere>, String)> {
    gateway.elsewhere(&[Scheme::Tls, Scheme::Https, Scheme::H2c], name, wildcard)
}

/// The visitor's TLS stream, from its first byte, to the client's service.
async fn relay<S: Visiting>(mut visitor: S, prefix: Vec<u8>, at: &At, up: Upstream, name: &str) {
    if up.access.as_ref().is_some_and(|a| a.admit(at.peer.ip()).is_err()) {
        debug!(sni = %name, "refused by the forward's access rules; reset");
        visitor.reset_on_close();
        return;
    }
    let opened = tokio::select! {
        r = up.tunnel.open_stream(StreamProtocol::Tcp, up.target, Some(Visitor::new(at.peer).reached(at.reached))) => r,
        _ = up.kill.cancelled() => Err(OpenError::SessionClosed),
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            debug!(sni = %name, error = %e, "cannot open a stream to the client; closing");
            return;
        }
    };
    tokio::select! {
        r = async {
            stream.write_all(&prefix).await?;
            tokio::io::copy_bidirectional(&mut visitor, &mut stream).await
        } => match r {
            Ok((up_bytes, down_bytes)) => debug!(sni = %name, up = up_bytes, down = down_bytes, "passthrough closed"),
            Err(e) => debug!(sni = %name, error = %e, "passthrough ended with an error"),
        },
        _ = up.kill.cancelled() => debug!(sni = %name, "session closed; dropping the passthrough"),
    }
}

// ---------------------------------------------------------------- plugins

/// Sets up the embedded `https` or `tls` plugin on the port of `listen`.
/// It takes the port over only when it starts.
pub(crate) fn setup(
    scheme: Scheme,
    gateway: &Arc<Gateway>,
    ports: &TlsPorts,
    listen: SocketAddr,
    cfg: &GatewayConfig,
) -> Result<Arc<dyn Plugin>, PluginError> {
    // Validate before touching the shared port.
    let term = match scheme {
        Scheme::Https => {
            let files = match (&cfg.certs, &cfg.acme) {
                (Some(f), _) => f.clone(),
                (None, Some(_)) => CertFiles { cert: None, key: None, cert_dir: None },
                (None, None) => {
                    return Err(PluginError::Config {
                        key: "plugin.https.cert".into(),
                        message: "the embedded https gateway needs certificates".into(),
                    })
                }
            };
            let acme = match &cfg.acme {
                Some(a) => Some(Acme::new(a.clone(), gateway, cfg.wildcard)?),
                None => None,
            };
            let alpn_challenge = acme.as_ref().is_some_and(|a| a.challenge() == Challenge::TlsAlpn01);
            let store = Arc::new(CertStore::load(files, acme)?);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut sc = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| PluginError::Config { key: "plugin.https".into(), message: e.to_string() })?
                .with_no_client_auth()
                .with_cert_resolver(store.clone());
            sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            if alpn_challenge {
                sc.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
            }
            Some(Arc::new(Termination {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
                store,
                settings: Arc::new(Settings::new(Scheme::Https, cfg)),
                reload: cfg.reload_interval,
            }))
        }
        _ => None,
    };
    let port = {
        let mut ports = ports.lock().unwrap_or_else(|e| e.into_inner());
        ports.retain(|_, w| w.strong_count() > 0);
        match ports.get(&listen).and_then(|w| w.upgrade()) {
            Some(p) => p,
            None => {
                let p = Arc::new(TlsPort {
                    state: Arc::new(PortState {
                        addr: listen,
                        gateway: gateway.clone(),
                        term: RwLock::new(None),
                        pass: RwLock::new(None),
                        caps: Mutex::new([None; 2]),
                        limits: ConnLimits::new("tls", listen, 0, 0),
                    }),
                    bound: tokio::sync::OnceCell::new(),
                    shutdown: CancellationToken::new(),
                });
                ports.insert(listen, Arc::downgrade(&p));
                p
            }
        }
    };
    let pass = Passthrough { wildcard: cfg.wildcard, hello_timeout: cfg.header_timeout };
    Ok(Arc::new(TlsPlugin {
        scheme,
        gateway: gateway.clone(),
        port,
        term,
        pass,
        cfg: cfg.clone(),
        life: OnceLock::new(),
    }))
}

struct TlsPlugin {
    scheme: Scheme,
    gateway: Arc<Gateway>,
    port: Arc<TlsPort>,
    /// `https`: what it terminates with.
    term: Option<Arc<Termination>>,
    /// `tls`: what it passes through.
    pass: Passthrough,
    cfg: GatewayConfig,
    life: OnceLock<Lifecycle>,
}

impl Drop for TlsPlugin {
    fn drop(&mut self) {
        let Some(t) = &self.term else { return };
        t.settings.retire();
        // Still this plugin's: no https plugin serves the port any more
        // (a reload removed it), and its caps go with it.
        let state = &self.port.state;
        let mut term = state.term.write().unwrap_or_else(|e| e.into_inner());
        if term.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, t)) {
            *term = None;
            state.update_caps(self.scheme, None);
        }
    }
}

impl TlsPlugin {
    /// Takes the port over: its termination or passthrough, and caps.
    fn install(&self) {
        let state = &self.port.state;
        match &self.term {
            Some(t) => *state.term.write().unwrap_or_else(|e| e.into_inner()) = Some(t.clone()),
            None => *state.pass.write().unwrap_or_else(|e| e.into_inner()) = Some(self.pass),
        }
        state.set_caps(self.scheme, &self.cfg);
    }
}

#[async_trait]
impl Plugin for TlsPlugin {
    fn start(&self, server: &ServerInfo) {
        let _ = self.life.set(server.lifecycle.clone());
        if let Some(t) = &self.term {
            t.settings.follow(server.lifecycle.draining.clone());
        }
        self.install();
        if let Some(e) = &server.elsewhere {
            self.gateway.set_elsewhere(e.clone());
            // Any node serves any name in a cluster: the port opens now,
            // not with this node's first forward.
            let (port, life) = (self.port.clone(), server.lifecycle.clone());
            tokio::spawn(async move {
                if let Err(e) = port.listen(life).await {
                    warn!(error = %e, "the TLS gateway port of this cluster node cannot open");
                }
            });
        }
    }

    /// Another node's visitor for a name of this node's, on the TLS port
    /// (the `https` and `tls` plugins share it): its SNI decides, here as
    /// for a visitor of this node's, and it is never carried on again.
    async fn serve_carried(
        &self,
        io: Box<dyn Carried>,
        visitor: SocketAddr,
        reached: Option<SocketAddr>,
    ) -> Result<(), Box<dyn Carried>> {
        let Some(life) = self.life.get().cloned().filter(|_| self.port.bound.get().is_some()) else {
            return Err(io);
        };
        self.gateway.count_carried_in();
        // Under this port's caps too, by the visitor's own address.
        let Ok(slot) = self.port.state.limits.admit(visitor.ip()) else {
            debug!(%visitor, "carried visitor connection refused by this port's caps");
            return Ok(());
        };
        let at = At { peer: visitor, reached, slot: Arc::new(slot), carried: true };
        let kill = life.kill.clone();
        tokio::select! {
            _ = visit(io, at, self.port.state.clone(), life) => {}
            _ = kill.cancelled() => {}
        }
        Ok(())
    }

    async fn run_proxy(&self, meta: &ForwardMeta, ctx: ForwardContext) -> Result<Endpoint, PluginError> {
        if self.life.get().is_none() {
            self.install();
        }
        let port = self.port.listen(self.life.get().cloned().unwrap_or_default()).await?;
        let domain = meta.domain.to_ascii_lowercase();
        let up = Upstream::of(meta, &ctx);
        self.gateway.insert(self.scheme, &domain, up).map_err(PluginError::Refused)?;
        if self.scheme == Scheme::Https {
            if let Some(acme) = self.port.state.term().and_then(|t| t.store.acme.clone()) {
                acme.on_connect(&domain);
            }
        }
        let url = match self.scheme {
            Scheme::Https if port == 443 => format!("https://{domain}"),
            Scheme::Https => format!("https://{domain}:{port}"),
            _ => format!("tls://{domain}:{port}"),
        };
        Ok(Endpoint { public_port: Some(port), url })
    }

    async fn stop_proxy(&self, meta: &ForwardMeta) {
        self.gateway.remove(self.scheme, &meta.domain, meta.id);
    }
}
