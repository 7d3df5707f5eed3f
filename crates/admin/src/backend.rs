//! What the admin API shows and changes: the [`Backend`] trait the server
//! implements, and the JSON views it hands out.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// What the admin API shows and changes; implemented by the server.
///
/// Every method is called on tokio's blocking pool (`spawn_blocking`), never
/// on a runtime worker: an implementation may take locks, read the
/// configuration file, or wait on async work with
/// `tokio::runtime::Handle::current().block_on(..)`. A panic in a method
/// becomes a 500 for that request only.
pub trait Backend: Send + Sync + 'static {
    /// Every live session.
    fn sessions(&self) -> Vec<SessionView>;
    /// One session by its id (hex), if it is live.
    fn session(&self, id: &str) -> Option<SessionView>;
    /// Closes the session (the client is disconnected); false if unknown.
    fn close_session(&self, id: &str) -> bool;
    /// Every credential, from the configuration file and added through the API.
    fn clients(&self) -> Vec<ClientView>;
    /// Adds a credential. `Invalid` names the field at fault (`name`,
    /// `key`, `domains[1]`, …); `Conflict` if the name is taken; `Reserved`
    /// for a name the server holds itself.
    fn add_client(&self, c: NewClient) -> Result<ClientView, BackendError>;
    /// Removes (revokes) a credential; returns how many sessions were closed.
    fn remove_client(&self, name: &str) -> Result<usize, BackendError>;
    /// Re-reads the configuration file and applies it.
    fn reload(&self) -> Result<ReloadReport, BackendError>;
    /// Recent refusals (handshakes and forwards), newest first.
    fn refusals(&self) -> Vec<RefusalView>;
    /// Prometheus text exposition format (version 0.0.4).
    fn metrics(&self) -> String;
    /// Every live load-balanced group, by protocol then name. A backend
    /// without groups has none.
    fn groups(&self) -> Vec<GroupView> {
        Vec::new()
    }
    /// The cluster this server is a node of; `None` for a single server.
    fn cluster(&self) -> Option<ClusterView> {
        None
    }
    /// Every live node's sessions, asked of each node over its node link
    /// (this node's own from memory); `None` for a single server.
    fn cluster_sessions(&self) -> Option<Vec<NodeSessions>> {
        None
    }
}

/// One node's sessions, as it answered over its node link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSessions {
    /// The node.
    pub node: String,
    /// Why the node's sessions could not be read (it did not answer in
    /// time, or its link failed); `sessions` is empty then.
    pub error: Option<String>,
    /// Its live sessions.
    pub sessions: Vec<SessionView>,
}

/// The cluster as a node last read it from etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's name (`cluster.node`).
    pub node: String,
    /// This node holds its name in etcd now.
    pub registered: bool,
    /// Why the last exchange with etcd failed, while it fails.
    pub error: Option<String>,
    /// Another process holds this node's name, and this one waits for it:
    /// where that one says it is reached (`advertise`).
    pub held_by: Option<String>,
    /// The live nodes, by name.
    pub nodes: Vec<NodeView>,
    /// Every claimed domain in the cluster and the node whose client holds
    /// it, by domain.
    pub domains: Vec<ClaimView>,
}

/// A domain claimed in the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimView {
    /// The domain.
    pub domain: String,
    /// The node whose client holds it.
    pub node: String,
}

/// One live node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Its name.
    pub node: String,
    /// `host:port` where clients and other nodes reach its control port.
    pub advertise: String,
    /// When it registered, seconds since the Unix epoch.
    pub started: u64,
}

/// One live session of a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    /// Session id, hex.
    pub id: String,
    /// The credential's name; `None` when the client used the shared `authKey`.
    pub client: Option<String>,
    /// The client process's random id (the same across its reconnects).
    pub client_id: String,
    /// The domain the session was given.
    pub domain: String,
    /// The virtual IP the session was given.
    pub vip: Ipv4Addr,
    /// The client's address, as the server sees it (over QUIC: where it is
    /// now, after any migration).
    pub remote: SocketAddr,
    /// How the client reaches the server: `tcp` or `quic`.
    pub transport: String,
    /// When the session was registered, in unix seconds.
    pub connected_since: u64,
    /// Whether the session runs without encryption.
    pub plaintext: bool,
    /// The session's running forwards.
    pub forwards: Vec<ForwardView>,
    /// Bytes from visitors toward the client's services.
    pub bytes_in: u64,
    /// Bytes toward visitors.
    pub bytes_out: u64,
    /// Visitor connections and UDP flows open now.
    pub open_streams: u64,
    /// The session's bandwidth limit (the whole client) in force, bytes a second each way (`None`:
    /// unlimited).
    pub bandwidth: Option<u64>,
    /// Milliseconds its streams waited for that limit, summed over streams.
    pub throttled_ms: u64,
    /// UDP datagrams dropped for that limit, and their bytes.
    pub dropped_datagrams: u64,
    pub dropped_bytes: u64,
}

/// One running forward of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardView {
    /// The plugin that runs it: `tcp`, `udp`, `http`, …
    pub protocol: String,
    /// The public port; `None` for forwards routed by domain on a shared port.
    pub public_port: Option<u16>,
    /// Where visitors reach it: `tcp://app.example.com:20022`.
    pub url: String,
    /// What the client connects to.
    pub target: SocketAddr,
    /// Bytes from visitors toward the target.
    pub bytes_in: u64,
    /// Bytes toward visitors.
    pub bytes_out: u64,
    /// Visitor connections and UDP flows open now.
    pub open_streams: u64,
    /// The forward's own bandwidth limit in force, bytes a second each way (`None`:
    /// unlimited).
    pub bandwidth: Option<u64>,
    /// Milliseconds its streams waited for that limit, summed over streams.
    pub throttled_ms: u64,
    /// UDP datagrams dropped for that limit, and their bytes.
    pub dropped_datagrams: u64,
    pub dropped_bytes: u64,
    /// The load-balanced group the forward serves in (`None`: it runs alone).
    #[serde(default)]
    pub group: Option<ForwardGroupView>,
    /// The access rules in force (`None`: everyone may connect).
    #[serde(default)]
    pub access: Option<ForwardAccessView>,
}

/// The group a forward is a member of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardGroupView {
    /// The group's name (never its key, nor the key's digest).
    pub name: String,
    /// `round_robin` or `least_conn`.
    pub balance: String,
    /// Whether this member passes its health check (and so gets streams).
    pub healthy: bool,
}

/// One set of access rules, as enforced: CIDRs, and the basic-auth user
/// names (never their hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRulesView {
    /// Sources that may connect; empty: any.
    pub allow: Vec<String>,
    /// Sources refused, even when allowed.
    pub deny: Vec<String>,
    /// The users HTTP basic auth accepts; empty: none asked.
    pub users: Vec<String>,
}

/// A forward's access rules: a visitor must pass both sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForwardAccessView {
    /// The server's rules for the client (its `clients[i]`, or `access` for
    /// shared-key clients); `None`: none.
    pub server: Option<AccessRulesView>,
    /// The rules the client sent with the forward; `None`: none.
    pub client: Option<AccessRulesView>,
    /// Visitors refused on the forward's public side so far, by reason.
    pub refused: RefusedView,
}

/// Visitors refused, by reason (as `opennotr_visitors_refused_total`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedView {
    /// In a `deny` list.
    pub denied: u64,
    /// Outside an `allow` list.
    pub not_allowed: u64,
    /// Missing or wrong basic-auth credentials.
    pub unauthorized: u64,
    /// Too many password checks at once.
    pub busy: u64,
}

/// A live load-balanced group: one public port or domain that several
/// sessions' forwards serve together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    /// The plugin that runs its forward: `tcp`, `udp`, `http`, …
    pub protocol: String,
    /// The group's name (never its key, nor the key's digest).
    pub name: String,
    /// `round_robin` or `least_conn`.
    pub balance: String,
    /// Where visitors reach it.
    pub url: String,
    /// Its public port; `None` for groups routed by domain on a shared port.
    pub public_port: Option<u16>,
    /// Its members, in the order they joined.
    pub members: Vec<GroupMemberView>,
}

/// One member of a group: a forward of a live session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupMemberView {
    /// The session's credential name; `None` for the shared `authKey`.
    pub client: Option<String>,
    /// The client process's random id (empty for a member whose session
    /// has just ended and is leaving).
    pub client_id: String,
    /// The session's id, hex.
    pub session: String,
    /// What this member's client connects to.
    pub target: SocketAddr,
    /// Whether it passes its health check.
    pub healthy: bool,
    /// Visitor connections and UDP flows it carries now.
    pub open_streams: u64,
}

/// A credential: a named key and what it may use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientView {
    /// The credential's name.
    pub name: String,
    /// Domains and `*.suffix` patterns it may register.
    pub domains: Vec<String>,
    /// Public ports it may use: `"20000-20100"` or `"8080"` (empty: any).
    pub ports: Vec<String>,
    /// Protocols it may forward (empty: any).
    pub protocols: Vec<String>,
    /// How many of its sessions are live.
    pub sessions: usize,
    /// Where it comes from: `"config"` or `"api"`.
    pub source: String,
    /// Its `bandwidth`, bytes a second each way for the whole client
    /// (`None`: the server's `limits.clientBandwidth`).
    pub bandwidth: Option<u64>,
    /// Its `forwardBandwidth`, per forward (`None`: `limits.forwardBandwidth`).
    pub forward_bandwidth: Option<u64>,
    /// Its access rules for every forward of its sessions (empty lists:
    /// none); user names only.
    #[serde(default)]
    pub access: AccessRulesView,
}

/// A credential to add. Its `key` is a secret: `Debug` hides it and the
/// admin API never logs it or puts it in a response.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// The credential's name.
    pub name: String,
    /// The key the client's `key` must match.
    pub key: String,
    /// Domains and `*.suffix` patterns it may register (empty: its
    /// name under the server's domain).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Public ports it may use: `"20000-20100"` or `"8080"` (empty: any).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Protocols it may forward (empty: any).
    #[serde(default)]
    pub protocols: Vec<String>,
    /// Bandwidth for the whole client, as in the file: `"10MB"`.
    #[serde(default)]
    pub bandwidth: Option<String>,
    /// Bandwidth per forward, as in the file.
    #[serde(default)]
    pub forward_bandwidth: Option<String>,
}

impl fmt::Debug for NewClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewClient")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("domains", &self.domains)
            .field("ports", &self.ports)
            .field("protocols", &self.protocols)
            .field("bandwidth", &self.bandwidth)
            .field("forward_bandwidth", &self.forward_bandwidth)
            .finish()
    }
}

/// A handshake or forward the server refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusalView {
    /// When, in unix seconds.
    pub at: u64,
    /// The peer's address.
    pub remote: String,
    /// The credential's name, if the handshake got that far.
    pub client: Option<String>,
    /// The refusal code, as the client was told it.
    pub code: String,
    /// The reason, as the client was told it.
    pub message: String,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The keys or credentials that changed.
    pub changed: Vec<String>,
    /// Sessions closed because their credential was removed or narrowed.
    pub sessions_closed: usize,
    /// Changed keys that only take effect after a restart (listen addresses, …).
    pub restart_required: Vec<String>,
}

/// Why the backend refused a change.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such thing (HTTP 404).
    #[error("not found: {0}")]
    NotFound(String),
    /// A field of the request, or of the configuration file on reload, is
    /// wrong (HTTP 400). `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault: `name`, `domains[1]`, `server.listen`, …
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The change collides with the current state (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A field claims a name the server holds itself (HTTP 409): a rule
    /// of the server's configuration, which no request schema can state.
    #[error("{field}: {message}")]
    Reserved {
        /// The field at fault: `domains[1]`, or `name` for its default domain.
        field: String,
        /// Why the name is the server's.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_client_debug_hides_the_key() {
        let c = NewClient {
            name: "alice".into(),
            key: "hunter2-very-secret".into(),
            domains: vec!["a.example.com".into()],
            ports: vec![],
            protocols: vec![],
            bandwidth: None,
            forward_bandwidth: None,
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice") && shown.contains("<redacted>"), "{shown}");
    }
}
