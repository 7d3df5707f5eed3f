//! The plugin API of `opennotrd`.
//!
//! Every protocol a client can ask for (`tcp`, `udp`, and later `http`,
//! `https`, `h2c`, ...) is a plugin, including the built-in ones. The life
//! cycle is the original opennotr's:
//!
//! 1. **setup** — once at start, [`PluginFactory::setup`] gets the JSON
//!    under `plugin.<name>` in the server config and returns the plugin, or
//!    a [`PluginError::Config`] that stops the server before it binds.
//! 2. **run_proxy** — for each forward of each client session,
//!    [`Plugin::run_proxy`] gets the forward's [`ForwardMeta`] and a
//!    [`ForwardContext`] whose [`Tunnel`] opens streams to that client, and
//!    returns the public [`Endpoint`] (or a reason it cannot run, which the
//!    client prints; the client's other forwards still run).
//! 3. **stop_proxy** — when the session ends, [`Plugin::stop_proxy`] must
//!    release everything the forward holds (listeners, flows, tasks) before
//!    it returns, so a reconnecting client can take its port back at once.
//!
//! Between 1 and 2, once the server has bound everything and before it
//! admits a client (or when a reload set the plugin up anew),
//! [`Plugin::start`] tells each plugin about the server ([`ServerInfo`]);
//! background work belongs there rather than in setup, which also runs for
//! a server that then fails to bind.
//!
//! `docs/plugins.md` walks through writing one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

pub use async_trait::async_trait;
pub use ipnet::Ipv4Net;
pub use opennotr_proto::message::StreamProtocol;
pub use opennotr_transport::TunnelStream;
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// What a plugin knows about one forward.
#[derive(Debug, Clone)]
pub struct ForwardMeta {
    /// Unique (per server run) id of this forward.
    pub id: u64,
    /// Plugin name the client asked for.
    pub protocol: String,
    /// Public port the client asked for; 0 = the plugin chooses.
    pub public_port: u16,
    /// The client's virtual IP.
    pub vip: Ipv4Addr,
    /// Host the client dials for this forward.
    pub local_ip: IpAddr,
    /// Port the client dials for this forward.
    pub local_port: u16,
    /// The client's domain.
    pub domain: String,
    /// The forward's `rawConfig` from the client's file, untouched.
    pub raw_config: Option<String>,
    /// The client's id (stable across its reconnects).
    pub client_id: String,
}

impl ForwardMeta {
    /// The address the client dials for this forward.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip, self.local_port)
    }
}

/// Where visitors reach a forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The public port, if the plugin has one of its own.
    pub public_port: Option<u16>,
    /// How to reach it, e.g. `tcp://open.notr.tech:10022`.
    pub url: String,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The client's session is gone.
    #[error("client session closed")]
    SessionClosed,
    /// The client refused or could not reach the target.
    #[error("client refused the stream: {0}")]
    Refused(String),
    /// The client did not open the stream in time.
    #[error("client did not open the stream in time")]
    Timeout,
    /// The client has as many open streams as it may.
    #[error("too many streams for this client")]
    TooManyStreams,
}

/// Who a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visitor {
    /// The visitor's address.
    pub peer: SocketAddr,
    /// The server address the visitor reached (the public port's socket),
    /// where the plugin knows it.
    pub local: Option<SocketAddr>,
}

impl Visitor {
    /// A visitor from `peer`, the server address it reached unknown.
    pub fn new(peer: SocketAddr) -> Visitor {
        Visitor { peer, local: None }
    }

    /// The same, having reached `local` on the server (`None`: unknown,
    /// as when the socket's address could not be read).
    pub fn reached(mut self, local: Option<SocketAddr>) -> Visitor {
        self.local = local;
        self
    }
}

/// A handle to one client session, for opening streams to it.
#[async_trait]
pub trait Tunnel: Send + Sync + fmt::Debug {
    /// Asks the client to connect to `target` (one of its declared targets)
    /// and returns the stream carrying that connection. `visitor` is who
    /// the stream is for, for the client's logs and for the PROXY protocol
    /// header a forward may ask the client to send its service.
    async fn open_stream(
        &self,
        protocol: StreamProtocol,
        target: SocketAddr,
        visitor: Option<Visitor>,
    ) -> Result<TunnelStream, OpenError>;

    /// Whether the client takes [`StreamProtocol::Mux`] streams (many
    /// connections to one target inside one stream).
    fn multiplexes(&self) -> bool {
        false
    }
}

/// Limits the server imposes on a forward.
#[derive(Debug, Clone)]
pub struct ForwardLimits {
    /// Concurrent UDP flows (remote peers) per forward.
    pub max_udp_flows: usize,
}

/// Everything `run_proxy` gets besides the metadata.
#[derive(Debug, Clone)]
pub struct ForwardContext {
    /// Opens streams to the client.
    pub tunnel: Arc<dyn Tunnel>,
    /// Cancelled when the forward must stop accepting (stop_proxy, session
    /// end, server shutdown).
    pub stop: CancellationToken,
    /// Cancelled when the session is gone: in-flight connections must end.
    pub kill: CancellationToken,
    /// Spawn per-connection tasks here, so shutdown can wait for them to drain.
    pub tracker: TaskTracker,
    /// Limits to enforce.
    pub limits: ForwardLimits,
    /// Who may reach the forward, when the server restricts it. The tunnel
    /// already refuses a stream for a visitor the rules do not admit; a
    /// plugin that serves many visitors on one stream (the HTTP gateway)
    /// or wants to drop a visitor before any work checks here itself.
    pub access: Option<Arc<dyn Access>>,
}

/// Why a forward's access rules refused a visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Its source is in a `deny` list.
    Denied,
    /// An `allow` list does not have its source.
    NotAllowed,
    /// Its request has no credentials, or wrong ones.
    Unauthorized,
    /// Too many passwords are being checked at once; it may try again.
    Busy,
}

impl Refusal {
    /// The label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Busy => "busy",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Denied => "the visitor's address is denied",
            Refusal::NotAllowed => "the visitor's address is not allowed",
            Refusal::Unauthorized => "missing or wrong credentials",
            Refusal::Busy => "too many password checks at once",
        })
    }
}

/// A forward's access rules as the server enforces them: the server's own
/// for the client and the forward's, both of which a visitor must pass.
/// Every refusal is counted by the implementation.
#[async_trait]
pub trait Access: Send + Sync + fmt::Debug {
    /// Whether a visitor from `peer` may reach the forward (an IPv4-mapped
    /// IPv6 address is matched as IPv4). Cheap: no allocation, no lock.
    fn admit(&self, peer: IpAddr) -> Result<(), Refusal>;

    /// The realm to name in `WWW-Authenticate` when requests must carry
    /// HTTP basic auth credentials; `None`: they need none.
    fn basic_auth_realm(&self) -> Option<&str>;

    /// Checks the value of a request's `Authorization` header (`None`: it
    /// has none). Password checks are expensive and bounded: over the
    /// bound this answers [`Refusal::Busy`] rather than waiting long.
    async fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), Refusal>;
}

/// Why a plugin could not set up or run a forward.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The plugin's configuration is invalid; `key` is a dotted path such
    /// as `plugin.tcp.PortMin`.
    #[error("{key}: {message}")]
    Config {
        /// The key at fault.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// This forward cannot run; the reason is shown to the client.
    #[error("{0}")]
    Refused(String),
}

/// What a plugin may know about the server that runs it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The pool client VIPs are taken from (`dhcp.cidr`). Every
    /// [`ForwardMeta::vip`] lies in it.
    pub vip_pool: Ipv4Net,
    /// The server's shutdown, for connections a plugin serves that belong
    /// to no one session (a port many sessions share).
    pub lifecycle: Lifecycle,
    /// The other nodes of the cluster this server is a node of: where the
    /// names they serve are reached. `None` on a single server.
    pub elsewhere: Option<Arc<dyn Elsewhere>>,
}

impl ServerInfo {
    /// The server whose VIPs come from `vip_pool` (with a lifecycle of its
    /// own that never ends; see [`ServerInfo::with_lifecycle`]).
    pub fn new(vip_pool: Ipv4Net) -> ServerInfo {
        ServerInfo { vip_pool: vip_pool.trunc(), lifecycle: Lifecycle::default(), elsewhere: None }
    }

    /// The same, as a node of a cluster whose other nodes `elsewhere` reaches.
    pub fn with_elsewhere(mut self, elsewhere: Option<Arc<dyn Elsewhere>>) -> ServerInfo {
        self.elsewhere = elsewhere;
        self
    }

    /// The same, shutting down with `lifecycle`.
    pub fn with_lifecycle(mut self, lifecycle: Lifecycle) -> ServerInfo {
        self.lifecycle = lifecycle;
        self
    }
}

/// A visitor's connection carried between the nodes of a cluster.
pub trait Carried: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Carried for T {}

/// Which shared port of the node serving a name a carried connection
/// enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CarriedPort {
    /// The `http` gateway port: the visitor's bytes from its first request.
    Http,
    /// The TLS gateway port (`https` and `tls`): the visitor's TLS from its
    /// ClientHello.
    Tls,
    /// The `h2c` gateway port: the visitor's HTTP/2 from its preface.
    H2c,
}

/// The other nodes of a cluster, as a plugin serving names on a shared
/// port sees them (the gateway): which node serves a name, and a
/// connection into that node's port. The server implements it with its
/// node links (docs/cluster.md).
#[async_trait]
pub trait Elsewhere: Send + Sync + fmt::Debug {
    /// The node that serves `domain` (a whole name, lowercase), when it is
    /// another node than this one.
    fn node_of(&self, domain: &str) -> Option<String>;

    /// A connection into `node`'s port `port` for `visitor`, who reached
    /// this node at `reached`.
    async fn carry(
        &self,
        node: &str,
        port: CarriedPort,
        visitor: SocketAddr,
        reached: Option<SocketAddr>,
    ) -> std::io::Result<Box<dyn Carried>>;
}

/// The server's shutdown tree, as a plugin's own connections see it: when
/// the server stops, `draining` is cancelled (stop accepting, finish what
/// is in flight, close idle connections), the server waits for the tasks
/// on `tracker` for `server.shutdownGrace`, then cancels `kill` (end
/// everything now).
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// Cancelled when the server starts shutting down.
    pub draining: CancellationToken,
    /// Cancelled when the grace period is over.
    pub kill: CancellationToken,
    /// Connection tasks go here, so shutdown waits for them.
    pub tracker: TaskTracker,
}

/// A protocol plugin, as set up from its config.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// Called once per plugin instance when it starts serving (the server
    /// starts, or a reload set it up anew), before any
    /// [`run_proxy`](Plugin::run_proxy) on it. It must not block: work it
    /// starts runs in the background (a task ended by the plugin's drop).
    /// The default does nothing.
    fn start(&self, _server: &ServerInfo) {}

    /// Starts forwarding for one forward of a session.
    async fn run_proxy(&self, meta: &ForwardMeta, ctx: ForwardContext) -> Result<Endpoint, PluginError>;
    /// Stops the forward and frees all it holds before returning.
    async fn stop_proxy(&self, meta: &ForwardMeta);
    /// Whether `run_proxy(meta)` would succeed now, taking nothing
    /// (`opennotr check`): a port is at most bound and dropped at once.
    /// Default: yes, the plugin has nothing to check beforehand.
    async fn check_proxy(&self, _meta: &ForwardMeta) -> Result<(), PluginError> {
        Ok(())
    }
    /// Appends the plugin's own metrics, in Prometheus' text format, to a
    /// scrape of the server's `/metrics` (bytes and streams per forward are
    /// counted by the server already).
    fn metrics(&self, _out: &mut String) {}

    /// Serves `io`, a visitor's connection another node of the cluster
    /// carried here ([`Elsewhere::carry`]) for this plugin's port, as if
    /// `visitor` had come to this node (at `reached` on the other one).
    /// `Err` gives the connection back, untouched: the plugin takes no
    /// such connections (the default), or its port is not open.
    async fn serve_carried(
        &self,
        io: Box<dyn Carried>,
        _visitor: SocketAddr,
        _reached: Option<SocketAddr>,
    ) -> Result<(), Box<dyn Carried>> {
        Err(io)
    }
}

/// Creates a plugin from its configuration.
pub trait PluginFactory: Send + Sync + 'static {
    /// The protocol name clients use (`forwards[].protocol`).
    fn name(&self) -> &'static str;
    /// Validates `config` (the JSON under `plugin.<name>`; `{}` when the
    /// server config has no entry) and returns the plugin.
    fn setup(&self, config: &serde_json::Value) -> Result<Arc<dyn Plugin>, PluginError>;
}

/// The plugins a server can run, by name. Cloning shares the factories
/// (the server keeps a copy to set plugins up again on reload).
#[derive(Default, Clone)]
pub struct Registry {
    factories: BTreeMap<&'static str, Arc<dyn PluginFactory>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a plugin; a later one of the same name replaces the earlier.
    pub fn register(&mut self, factory: impl PluginFactory) -> &mut Self {
        self.factories.insert(factory.name(), Arc::new(factory));
        self
    }

    /// Whether a plugin of this name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Names of the registered plugins.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }

    /// Sets up the plugin `name` with `config`.
    pub fn setup(&self, name: &str, config: &serde_json::Value) -> Option<Result<Arc<dyn Plugin>, PluginError>> {
        self.factories.get(name).map(|f| f.setup(config))
    }
}
