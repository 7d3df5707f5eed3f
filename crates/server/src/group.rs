//! Load-balanced groups: forwards of several sessions that serve one
//! public port (tcp, udp) or one domain (the gateway's plugins) together.
//!
//! A group runs ONE plugin forward, started when its first member arrives,
//! with a [`GroupTunnel`] that picks a member per stream and stop/kill
//! tokens of its own: members come and go under it, and the port (or
//! route) lives until the last member leaves. A member's session sees its
//! forward as a [`MemberHandle`], whose `stop_proxy` (run by the session's
//! clean-up like any forward's) takes it out of the group.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opennotr_plugin::{
    async_trait, Endpoint, ForwardContext, ForwardLimits, ForwardMeta, OpenError, Plugin, PluginError, StreamProtocol,
    Tunnel, TunnelStream, Visitor,
};
use opennotr_proto::message::{Balance, ForwardRequest, GroupRequest};
use opennotr_transport::Counters;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::session::SessionId;
use crate::Shared;

/// At most one log line a member's health changes make in this time: a
/// client may send `forward_health` as fast as it can write.
const HEALTH_LOG_EVERY: Duration = Duration::from_secs(1);
/// Most members one stream is offered to before the visitor is refused:
/// each may take the session's connect timeout.
const MAX_TRIES: usize = 4;

/// Whether `protocol` routes by domain (the gateway's plugins) rather
/// than owning a port of its own.
fn routes_by_domain(protocol: &str) -> bool {
    !matches!(protocol, "tcp" | "udp")
}

/// Compares two digests in time independent of where they differ.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks what a client sent as its forward's group.
fn check_request(g: &GroupRequest) -> Result<(), String> {
    opennotr_config::check_group_name(&g.name)?;
    if g.key.len() != 64 || !g.key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("the group key digest is not 64 lowercase hex digits".into());
    }
    if g.balance == Balance::Unknown {
        return Err("unknown balance policy (this server has round_robin and least_conn)".into());
    }
    Ok(())
}

/// One member: a forward of a live session.
struct Member {
    /// The member's own forward id (its [`ForwardMeta::id`]).
    forward: u64,
    session: SessionId,
    /// Its index in the session's `register`, as `forward_health` names it.
    index: u32,
    tunnel: Arc<dyn Tunnel>,
    /// Its session's end.
    kill: CancellationToken,
    /// What the member's client dials: each member declares its own.
    target: SocketAddr,
    /// Its forward's counters: `open` is what least_conn compares.
    counters: Arc<Counters>,
    healthy: bool,
    /// When a change of its health was last logged, and the changes
    /// since that were not.
    health_logged: Option<(std::time::Instant, u64)>,
}

/// The members of one group, shared with its tunnel.
struct Members {
    balance: Balance,
    list: Mutex<Vec<Member>>,
    /// Round robin's position.
    next: AtomicUsize,
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The healthy members to offer a new stream, best first, at most
    /// [`MAX_TRIES`].
    fn candidates(&self) -> Vec<(Arc<dyn Tunnel>, SocketAddr, CancellationToken)> {
        let list = self.lock();
        // A member whose session has ended is out from that moment, though
        // its clean-up has yet to reach its forward.
        let healthy: Vec<&Member> = list.iter().filter(|m| m.healthy && !m.kill.is_cancelled()).collect();
        if healthy.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
        let mut order: Vec<&Member> = healthy[start..].iter().chain(&healthy[..start]).copied().collect();
        if self.balance == Balance::LeastConn {
            // Stable: among equals, round robin's order decides.
            order.sort_by_key(|m| m.counters.open.load(Ordering::Relaxed));
        }
        order.into_iter().take(MAX_TRIES).map(|m| (m.tunnel.clone(), m.target, m.kill.clone())).collect()
    }
}

/// The group's [`Tunnel`]: each stream goes to one member, chosen by the
/// group's policy; a member that fails to open it (its session ended but
/// is not yet out, its service refused) passes the stream to the next.
pub(crate) struct GroupTunnel {
    name: String,
    members: Arc<Members>,
}

impl std::fmt::Debug for GroupTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupTunnel").field("name", &self.name).finish_non_exhaustive()
    }
}

#[async_trait]
impl Tunnel for GroupTunnel {
    /// Never: a multiplexed stream would pin every connection of a gateway
    /// route to one member; a stream per connection spreads them.
    fn multiplexes(&self) -> bool {
        false
    }

    async fn open_stream(
        &self,
        protocol: StreamProtocol,
        _target: SocketAddr,
        visitor: Option<Visitor>,
    ) -> Result<TunnelStream, OpenError> {
        let candidates = self.members.candidates();
        if candidates.is_empty() {
            return Err(OpenError::Refused(format!("group {} has no healthy member", self.name)));
        }
        let mut last = OpenError::SessionClosed;
        for (tunnel, target, kill) in candidates {
            match tunnel.open_stream(protocol, target, visitor).await {
                Ok(s) => return Ok(end_with_session(s, kill)),
                Err(e) => {
                    debug!(group = %self.name, %target, error = %e, "member did not open the stream; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// Makes a member's stream end with the member's session, as a stream of
/// a forward of its own does: the plugin relays it under the group's kill
/// signal, which outlives any one member. A TCP data channel is shut down
/// (through a duplicate of its descriptor, held only while the stream
/// lives); a QUIC stream ends with its connection, which the session's end
/// closes.
#[cfg(unix)]
fn end_with_session(stream: TunnelStream, kill: CancellationToken) -> TunnelStream {
    let Some(tcp) = stream.channel().tcp() else { return stream };
    let Ok(fd) = std::os::fd::AsFd::as_fd(tcp).try_clone_to_owned() else { return stream };
    let socket = std::net::TcpStream::from(fd);
    let (gone, done) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = kill.cancelled() => { let _ = socket.shutdown(std::net::Shutdown::Both); }
            _ = done => {}
        }
    });
    stream.guarded(Box::new(gone))
}

#[cfg(not(unix))]
fn end_with_session(stream: TunnelStream, _kill: CancellationToken) -> TunnelStream {
    stream
}

impl Group {
    /// Whether a forward asking for `req` (public port `public_port`, on a
    /// session holding `domain`) may join this running group.
    fn admits(
        &self,
        req: &GroupRequest,
        public_port: u16,
        domain: &str,
        access: Option<&crate::access::Policy>,
    ) -> Result<(), String> {
        if !same_key(&self.key, &req.key) {
            return Err(format!("wrong key for group {}", self.name));
        }
        if self.members.balance != req.balance {
            return Err(format!("group {} balances {}, not {}", self.name, self.members.balance, req.balance));
        }
        if public_port != 0 && self.endpoint.public_port != Some(public_port) {
            return Err(format!(
                "group {} serves public port {}; ask for it or for 0 to join",
                self.name,
                self.endpoint.public_port.map_or_else(|| "none".into(), |p| p.to_string())
            ));
        }
        // A member serves the group's domain, so it must hold it
        // (admitted under its credential, or by sharing the group).
        if routes_by_domain(&self.protocol) && !self.meta.domain.eq_ignore_ascii_case(domain) {
            return Err(format!(
                "group {} serves domain {}; register with that domain to join",
                self.name, self.meta.domain
            ));
        }
        // The gateway checks one policy per request, the group's, and pools
        // the streams it opens to members: a member's own rules would be
        // met only by the visitor whose request opened the stream.
        if routes_by_domain(&self.protocol) && !crate::access::same_rules(self.access.as_deref(), access) {
            return Err(format!(
                "group {} has other access rules (allow, deny, basicAuth, the server's for the client); its \
                 members on the gateway must all have the same",
                self.name
            ));
        }
        Ok(())
    }
}

/// One running group.
struct Group {
    protocol: String,
    name: String,
    key: String,
    /// The plugin and the forward it runs for the group.
    plugin: Arc<dyn Plugin>,
    meta: ForwardMeta,
    endpoint: Endpoint,
    stop: CancellationToken,
    kill: CancellationToken,
    members: Arc<Members>,
    /// Its first member's rules, which its plugin forward enforces.
    access: Option<Arc<crate::access::Policy>>,
}

impl Group {
    fn add(&self, j: &Join<'_>) {
        self.members.lock().push(Member {
            forward: j.meta.id,
            session: j.session,
            index: j.index,
            tunnel: j.tunnel.clone(),
            kill: j.kill.clone(),
            target: j.meta.target(),
            counters: j.counters.clone(),
            healthy: true,
            health_logged: None,
        });
    }
}

/// Every group of the server, by (protocol, name).
#[derive(Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<(String, String), Arc<Group>>>,
    /// The group of each member, by its session and `register` index:
    /// `forward_health` finds it without a walk over every group.
    by_member: Mutex<HashMap<(SessionId, u32), Arc<Group>>>,
    /// Joins and leaves, one at a time: the first member's start and the
    /// last one's stop must not interleave with another join of the group.
    steps: tokio::sync::Mutex<()>,
}

/// What a member is asked to join with.
pub(crate) struct Join<'a> {
    pub(crate) session: SessionId,
    pub(crate) index: u32,
    pub(crate) group: &'a GroupRequest,
    /// The member's forward, as the session would run it alone.
    pub(crate) meta: &'a ForwardMeta,
    pub(crate) tunnel: Arc<dyn Tunnel>,
    /// Cancelled when the member's session ends.
    pub(crate) kill: CancellationToken,
    pub(crate) counters: Arc<Counters>,
    /// The port the member's client held last time, tried first when the
    /// group starts.
    pub(crate) leased_port: Option<u16>,
    /// The member's access rules. Its `tunnel` applies them to the streams
    /// sent to it; the first member's also guard the group's plugin forward
    /// (the gateway checks them per request, before a member is chosen).
    pub(crate) access: Option<Arc<crate::access::Policy>>,
}

impl Groups {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Group>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn by_member(&self) -> std::sync::MutexGuard<'_, HashMap<(SessionId, u32), Arc<Group>>> {
        self.by_member.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member, starting the group's forward if it is the first.
    /// Returns the group's endpoint and the handle the session keeps as
    /// the forward's plugin, or why the member may not join.
    pub(crate) async fn join(
        self: &Arc<Self>,
        shared: &Shared,
        plugin: &Arc<dyn Plugin>,
        j: Join<'_>,
    ) -> Result<(Endpoint, Arc<dyn Plugin>), String> {
        check_request(j.group)?;
        let _step = self.steps.lock().await;
        let key = (j.meta.protocol.clone(), j.group.name.clone());
        let existing = self.map().get(&key).cloned();
        let group = match existing {
            Some(g) => {
                g.admits(j.group, j.meta.public_port, &j.meta.domain, j.access.as_deref())?;
                g
            }
            None => {
                // As `check_alone`: a member that shares the domain through
                // one group may not route another scheme of it to itself
                // alone by starting a group of its own.
                let shared_with = routes_by_domain(&j.meta.protocol)
                    && shared.state().sessions.values().any(|s| s.id != j.session && s.domain == j.meta.domain);
                if shared_with {
                    return Err(format!(
                        "domain {} is shared by a load-balanced group; a {} forward on it must join a running group",
                        j.meta.domain, j.meta.protocol
                    ));
                }
                let g = self.start(shared, plugin, &j).await?;
                self.map().insert(key, g.clone());
                g
            }
        };
        group.add(&j);
        self.by_member().insert((j.session, j.index), group.clone());
        info!(group = %group.name, protocol = %group.protocol, target = %j.meta.target(), "member joined the group");
        let handle: Arc<dyn Plugin> = Arc::new(MemberHandle { groups: self.clone(), group: group.clone() });
        Ok((group.endpoint.clone(), handle))
    }

    /// Starts the group's forward for its first member.
    async fn start(&self, shared: &Shared, plugin: &Arc<dyn Plugin>, j: &Join<'_>) -> Result<Arc<Group>, String> {
        let members =
            Arc::new(Members { balance: j.group.balance, list: Mutex::new(Vec::new()), next: AtomicUsize::new(0) });
        let tunnel: Arc<dyn Tunnel> = Arc::new(GroupTunnel { name: j.group.name.clone(), members: members.clone() });
        let mut meta = j.meta.clone();
        // Its own id: the member's forward may leave before the group stops.
        meta.id = shared.next_forward.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        meta.client_id = format!("group:{}", j.group.name);
        let (stop, kill) = (shared.draining.child_token(), shared.kill.child_token());
        let limits = shared.limits();
        let ports = j.leased_port.filter(|_| j.meta.public_port == 0).into_iter().chain([j.meta.public_port]);
        let endpoint = crate::session::run_proxy_on(&**plugin, &mut meta, ports, || ForwardContext {
            tunnel: tunnel.clone(),
            stop: stop.clone(),
            kill: kill.clone(),
            tracker: shared.streams.clone(),
            limits: ForwardLimits { max_udp_flows: limits.max_udp_flows_per_forward },
            access: j.access.clone().map(|a| a as Arc<dyn opennotr_plugin::Access>),
        })
        .await?;
        info!(group = %j.group.name, protocol = %meta.protocol, url = %endpoint.url, balance = %j.group.balance, "group started");
        Ok(Arc::new(Group {
            protocol: meta.protocol.clone(),
            name: j.group.name.clone(),
            key: j.group.key.clone(),
            plugin: plugin.clone(),
            meta,
            endpoint,
            stop,
            kill,
            members,
            access: j.access.clone(),
        }))
    }

    /// Takes the member whose forward is `forward` out of `group`; stops
    /// the group when it was the last.
    async fn leave(self: &Arc<Self>, group: &Arc<Group>, forward: u64) {
        // Out at once, before any wait: a session's clean-up gives each
        // forward a deadline, and a member still listed past it would be
        // offered streams, and hold its group (port, route) up, for ever.
        let left = {
            let mut list = group.members.lock();
            if let Some(m) = list.iter().find(|m| m.forward == forward) {
                self.by_member().remove(&(m.session, m.index));
            }
            list.retain(|m| m.forward != forward);
            list.len()
        };
        info!(group = %group.name, members = left, "member left the group");
        if left > 0 {
            return;
        }
        // On a task of its own: the group stops even if the caller stops
        // waiting (joins and leaves of every group take turns).
        let (groups, group) = (self.clone(), group.clone());
        let _ = tokio::spawn(async move { groups.stop_if_empty(&group).await }).await;
    }

    /// Stops `group` if it still has no member and runs.
    async fn stop_if_empty(&self, group: &Arc<Group>) {
        let _step = self.steps.lock().await;
        // A member may have joined since, or another leave stopped it.
        if !group.members.lock().is_empty() || group.stop.is_cancelled() {
            return;
        }
        let key = (group.protocol.clone(), group.name.clone());
        {
            let mut map = self.map();
            if map.get(&key).is_some_and(|g| Arc::ptr_eq(g, group)) {
                map.remove(&key);
            }
        }
        group.stop.cancel();
        if tokio::time::timeout(crate::session::PLUGIN_STEP_TIMEOUT, group.plugin.stop_proxy(&group.meta))
            .await
            .is_err()
        {
            warn!(group = %group.name, "plugin did not stop the group's forward in time");
        }
        group.kill.cancel();
        info!(group = %group.name, protocol = %group.protocol, "group stopped: its last member left");
    }

    /// A member's health check changed its verdict (`forward_health`).
    /// Returns whether `session` has a member at `index`.
    pub(crate) fn health(&self, session: SessionId, index: u32, healthy: bool) -> bool {
        let Some(g) = self.by_member().get(&(session, index)).cloned() else { return false };
        let mut list = g.members.lock();
        let Some(m) = list.iter_mut().find(|m| m.session == session && m.index == index) else { return false };
        if m.healthy != healthy {
            let now = std::time::Instant::now();
            match &mut m.health_logged {
                Some((at, quiet)) if now.duration_since(*at) < HEALTH_LOG_EVERY => *quiet += 1,
                logged => {
                    let unlogged = logged.map_or(0, |(_, quiet)| quiet);
                    *logged = Some((now, 0));
                    info!(group = %g.name, target = %m.target, healthy, unlogged, "member health changed");
                }
            }
        }
        m.healthy = healthy;
        true
    }

    /// Whether a live group of a domain-routed protocol serves `domain`
    /// and `forward` asks to join it with the right key.
    /// What `join` would answer `req` now, taking nothing (`opennotr
    /// check`): `Ok(true)` if it would join a running group (whose port it
    /// then shares, so no plugin need say the port is free), `Ok(false)` if
    /// it would start one. `access` is the member's policy; `domain_held`,
    /// whether live sessions hold `domain` (a new gateway group may not
    /// start on it, as in `join`).
    pub(crate) fn would_join(
        &self,
        protocol: &str,
        req: &GroupRequest,
        public_port: u16,
        domain: &str,
        access: Option<&crate::access::Policy>,
        domain_held: bool,
    ) -> Result<bool, String> {
        check_request(req)?;
        match self.map().get(&(protocol.to_string(), req.name.clone())).cloned() {
            Some(g) => g.admits(req, public_port, domain, access).map(|()| true),
            None if domain_held && routes_by_domain(protocol) => Err(format!(
                "domain {domain} is shared by a load-balanced group; a {protocol} forward on it must join a running group"
            )),
            None => Ok(false),
        }
    }

    /// The public port of the running group `name` of `protocol`, if it
    /// runs and has one.
    pub(crate) fn public_port(&self, protocol: &str, name: &str) -> Option<u16> {
        self.map().get(&(protocol.to_string(), name.to_string())).and_then(|g| g.endpoint.public_port)
    }

    fn admits_domain(&self, domain: &str, forward: &ForwardRequest) -> bool {
        let Some(group) = &forward.group else { return false };
        let Some(g) = self.map().get(&(forward.protocol.clone(), group.name.clone())).cloned() else { return false };
        routes_by_domain(&g.protocol) && g.meta.domain.eq_ignore_ascii_case(domain) && same_key(&g.key, &group.key)
    }

    /// Every live group for the admin API, by protocol then name; never
    /// its key. `client_of` gives a member session's credential name and
    /// client id.
    pub(crate) fn views(
        &self,
        client_of: impl Fn(&SessionId) -> (Option<String>, String),
    ) -> Vec<opennotr_admin::GroupView> {
        let mut groups: Vec<Arc<Group>> = self.map().values().cloned().collect();
        groups.sort_by(|a, b| (&a.protocol, &a.name).cmp(&(&b.protocol, &b.name)));
        groups
            .iter()
            .map(|g| {
                let members = g
                    .members
                    .lock()
                    .iter()
                    .map(|m| {
                        let (client, client_id) = client_of(&m.session);
                        opennotr_admin::GroupMemberView {
                            client,
                            client_id,
                            session: hex::encode(m.session),
                            target: m.target,
                            healthy: m.healthy,
                            open_streams: m.counters.open.load(Ordering::Relaxed),
                        }
                    })
                    .collect();
                opennotr_admin::GroupView {
                    protocol: g.protocol.clone(),
                    name: g.name.clone(),
                    balance: g.members.balance.to_string(),
                    url: g.endpoint.url.clone(),
                    public_port: g.endpoint.public_port,
                    members,
                }
            })
            .collect()
    }

    /// The group whose member is the forward `forward` of `session`, for
    /// the admin API's view of that forward.
    pub(crate) fn of_forward(&self, session: SessionId, forward: u64) -> Option<opennotr_admin::ForwardGroupView> {
        // Copied out first: `leave` takes a group's member list, then this
        // map; holding the map while taking a list would invert that.
        let groups: Vec<Arc<Group>> =
            self.by_member().iter().filter(|((s, _), _)| *s == session).map(|(_, g)| g.clone()).collect();
        groups.iter().find_map(|g| {
            let list = g.members.lock();
            let healthy = list.iter().find(|m| m.session == session && m.forward == forward).map(|m| m.healthy)?;
            Some(opennotr_admin::ForwardGroupView {
                name: g.name.clone(),
                balance: g.members.balance.to_string(),
                healthy,
            })
        })
    }

    /// `opennotr_group_members` for `/metrics`.
    pub(crate) fn metrics(&self, out: &mut String) {
        out.push_str(
            "# HELP opennotr_group_members Members of load-balanced groups, by health.\n\
             # TYPE opennotr_group_members gauge\n",
        );
        let mut groups: Vec<Arc<Group>> = self.map().values().cloned().collect();
        groups.sort_by(|a, b| (&a.protocol, &a.name).cmp(&(&b.protocol, &b.name)));
        for g in groups {
            // One look at the list: a member leaving between two would
            // make `all - healthy` underflow.
            let (healthy, all) = {
                let list = g.members.lock();
                (list.iter().filter(|m| m.healthy).count(), list.len())
            };
            for (state, n) in [("healthy", healthy), ("unhealthy", all - healthy)] {
                // Names are letters, digits, '_', '-' and '.': nothing to escape.
                let _ = writeln!(
                    out,
                    "opennotr_group_members{{protocol=\"{}\",group=\"{}\",state=\"{state}\"}} {n}",
                    g.protocol, g.name
                );
            }
        }
    }
}

/// Whether a client registering `forwards` may hold `domain` although live
/// sessions hold it: one of its forwards joins, with the group's key, a
/// group of a domain-routed protocol that serves that domain. Anyone else
/// is refused `domain_taken` as before; the key is what a stranger lacks.
pub(crate) fn shares_domain(shared: &Shared, domain: &str, forwards: &[ForwardRequest]) -> bool {
    forwards.iter().any(|f| shared.groups.admits_domain(domain, f))
}

/// Refuses a forward outside any group of a domain-routed protocol on a
/// domain that other sessions hold too: a shared domain is served only by
/// its groups, so that a member cannot route a scheme of the domain the
/// group does not serve to itself alone.
pub(crate) fn check_alone(shared: &Shared, session: &crate::session::Session, protocol: &str) -> Result<(), String> {
    if !routes_by_domain(protocol) {
        return Ok(());
    }
    let shared_with = shared.state().sessions.values().any(|s| s.id != session.id && s.domain == session.domain);
    match shared_with {
        true => Err(format!(
            "domain {} is shared by a load-balanced group; a {protocol} forward on it must join a group",
            session.domain
        )),
        false => Ok(()),
    }
}

/// What a member's session holds as its forward's plugin: stopping the
/// forward takes the member out of its group.
struct MemberHandle {
    groups: Arc<Groups>,
    group: Arc<Group>,
}

#[async_trait]
impl Plugin for MemberHandle {
    async fn run_proxy(&self, _meta: &ForwardMeta, _ctx: ForwardContext) -> Result<Endpoint, PluginError> {
        Err(PluginError::Refused("a group member runs through its group".into()))
    }

    async fn stop_proxy(&self, meta: &ForwardMeta) {
        self.groups.leave(&self.group, meta.id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opennotr_transport::Channel;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::net::{TcpListener, TcpStream};

    /// A member's tunnel: records that it was asked, and opens a loopback
    /// stream unless it fails.
    #[derive(Debug)]
    struct Fake {
        id: u8,
        fail: bool,
        asked: Arc<Mutex<Vec<u8>>>,
    }

    #[async_trait]
    impl Tunnel for Fake {
        async fn open_stream(
            &self,
            _: StreamProtocol,
            _: SocketAddr,
            _: Option<Visitor>,
        ) -> Result<TunnelStream, OpenError> {
            self.asked.lock().unwrap().push(self.id);
            if self.fail {
                return Err(OpenError::SessionClosed);
            }
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            Ok(TunnelStream::new(Channel::Plain(s), None))
        }
    }

    fn member(id: u8, fail: bool, asked: &Arc<Mutex<Vec<u8>>>) -> Member {
        Member {
            forward: id.into(),
            session: [id; 16],
            index: 0,
            tunnel: Arc::new(Fake { id, fail, asked: asked.clone() }),
            kill: CancellationToken::new(),
            target: SocketAddr::from(([127, 0, 0, 1], u16::from(id))),
            counters: Arc::default(),
            healthy: true,
            health_logged: None,
        }
    }

    fn members(balance: Balance, list: Vec<Member>) -> Arc<Members> {
        Arc::new(Members { balance, list: Mutex::new(list), next: AtomicUsize::new(0) })
    }

    /// Which member `candidates` offers a stream to first.
    fn first(m: &Members) -> u16 {
        m.candidates()[0].1.port()
    }

    #[test]
    fn round_robin_takes_turns_over_healthy_members() {
        let asked = Arc::default();
        let m = members(Balance::RoundRobin, (1..=3).map(|i| member(i, false, &asked)).collect());
        assert_eq!((0..6).map(|_| first(&m)).collect::<Vec<_>>(), [1, 2, 3, 1, 2, 3]);
        m.lock()[1].healthy = false;
        let picks: Vec<u16> = (0..4).map(|_| first(&m)).collect();
        assert!(!picks.contains(&2) && picks.contains(&1) && picks.contains(&3), "{picks:?}");
        // Every healthy member is offered, the first choice first.
        assert_eq!(m.candidates().len(), 2);
        for x in m.lock().iter_mut() {
            x.healthy = false;
        }
        assert!(m.candidates().is_empty());
    }

    #[test]
    fn a_member_whose_session_ended_gets_no_stream() {
        let asked = Arc::default();
        let m = members(Balance::RoundRobin, (1..=3).map(|i| member(i, false, &asked)).collect());
        m.lock()[0].kill.cancel();
        m.lock()[2].kill.cancel();
        for _ in 0..4 {
            let ports: Vec<u16> = m.candidates().iter().map(|c| c.1.port()).collect();
            assert_eq!(ports, [2]);
        }
    }

    #[test]
    fn least_conn_picks_the_member_with_fewest_open_streams() {
        let asked = Arc::default();
        let m = members(Balance::LeastConn, (1..=3).map(|i| member(i, false, &asked)).collect());
        for (i, open) in [5, 1, 3].into_iter().enumerate() {
            m.lock()[i].counters.open.store(open, Ordering::Relaxed);
        }
        for _ in 0..4 {
            assert_eq!(first(&m), 2);
        }
        let order: Vec<u16> = m.candidates().iter().map(|c| c.1.port()).collect();
        assert_eq!(order, [2, 3, 1]);
        // Ties go round.
        m.lock()[0].counters.open.store(1, Ordering::Relaxed);
        let picks: Vec<u16> = (0..4).map(|_| first(&m)).collect();
        assert!(picks.contains(&1) && picks.contains(&2) && !picks.contains(&3), "{picks:?}");
    }

    #[tokio::test]
    async fn a_failed_open_passes_to_the_next_member() {
        let asked: Arc<Mutex<Vec<u8>>> = Arc::default();
        let m = members(Balance::RoundRobin, vec![member(1, true, &asked), member(2, false, &asked)]);
        let t = GroupTunnel { name: "g".into(), members: m.clone() };
        let any = SocketAddr::from(([127, 0, 0, 1], 9));
        for _ in 0..4 {
            t.open_stream(StreamProtocol::Tcp, any, None).await.expect("the live member opens it");
        }
        let asked = std::mem::take(&mut *asked.lock().unwrap());
        assert_eq!(asked.iter().filter(|&&i| i == 2).count(), 4, "{asked:?}");
        assert_eq!(asked.iter().filter(|&&i| i == 1).count(), 2, "the dead one is tried in its turn: {asked:?}");
        m.lock()[1].healthy = false;
        assert!(matches!(t.open_stream(StreamProtocol::Tcp, any, None).await, Err(OpenError::SessionClosed)));
        m.lock()[0].healthy = false;
        match t.open_stream(StreamProtocol::Tcp, any, None).await {
            Err(OpenError::Refused(m)) => assert!(m.contains("no healthy member"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!t.multiplexes());
    }

    /// A tunnel that opens loopback streams and keeps the far ends.
    #[derive(Debug, Default)]
    struct Pairs(Mutex<Vec<TcpStream>>);

    #[async_trait]
    impl Tunnel for Pairs {
        async fn open_stream(
            &self,
            _: StreamProtocol,
            _: SocketAddr,
            _: Option<Visitor>,
        ) -> Result<TunnelStream, OpenError> {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let far = l.accept().await.unwrap().0;
            self.0.lock().unwrap().push(far);
            Ok(TunnelStream::new(Channel::Plain(s), None))
        }
    }

    #[tokio::test]
    async fn a_members_streams_end_with_its_session() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pairs = Arc::new(Pairs::default());
        let mut m = member(1, false, &Arc::default());
        m.tunnel = pairs.clone();
        let kill = m.kill.clone();
        let t = GroupTunnel { name: "g".into(), members: members(Balance::RoundRobin, vec![m]) };
        let any = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut kept = t.open_stream(StreamProtocol::Tcp, any, None).await.unwrap();
        let dropped = t.open_stream(StreamProtocol::Tcp, any, None).await.unwrap();
        let (mut far_kept, mut far_dropped) = {
            let mut p = pairs.0.lock().unwrap();
            let dropped = p.pop().unwrap();
            (p.pop().unwrap(), dropped)
        };
        // A stream that ends on its own closes at once: nothing holds its
        // socket open.
        drop(dropped);
        let mut buf = [0u8; 8];
        assert_eq!(far_dropped.read(&mut buf).await.unwrap(), 0);
        // While the session lives the stream carries bytes; when it ends,
        // both ends see it closed.
        far_kept.write_all(b"hi").await.unwrap();
        assert_eq!(kept.read(&mut buf).await.unwrap(), 2);
        kill.cancel();
        let wait = std::time::Duration::from_secs(30);
        assert_eq!(tokio::time::timeout(wait, kept.read(&mut buf)).await.expect("the stream ends").unwrap_or(0), 0);
        let far = tokio::time::timeout(wait, far_kept.read(&mut buf)).await.expect("the client's end closes");
        assert_eq!(far.unwrap_or(0), 0);
    }

    #[test]
    fn requests_are_checked_and_keys_compared_whole() {
        let ok = GroupRequest {
            name: "web-1.a_b".into(),
            key: GroupRequest::digest("web", "k"),
            balance: Balance::RoundRobin,
        };
        assert!(check_request(&ok).is_ok());
        for bad in [
            GroupRequest { name: String::new(), ..ok.clone() },
            GroupRequest { name: "a b".into(), ..ok.clone() },
            GroupRequest { name: "x".repeat(64), ..ok.clone() },
            GroupRequest { key: "ab".into(), ..ok.clone() },
            GroupRequest { key: ok.key.to_uppercase(), ..ok.clone() },
            GroupRequest { balance: Balance::Unknown, ..ok.clone() },
        ] {
            assert!(check_request(&bad).is_err(), "{bad:?}");
        }
        assert!(same_key(&ok.key, &GroupRequest::digest("web", "k")));
        assert!(!same_key(&ok.key, &GroupRequest::digest("web", "K")));
        assert!(!same_key(&ok.key, &GroupRequest::digest("web2", "k")), "the name is in the digest");
        assert!(!same_key(&ok.key, &ok.key[..63]));
    }

    /// The group `web` (key `k`, round robin) the registry tests join.
    fn web() -> GroupRequest {
        GroupRequest { name: "web".into(), key: GroupRequest::digest("web", "k"), balance: Balance::RoundRobin }
    }

    /// Member `id` (session `[id; 16]`, forward 0 of it) of `group`, on a
    /// fake tunnel that records the streams it is asked for in `asked`.
    fn joining<'a>(id: u64, group: &'a GroupRequest, meta: &'a ForwardMeta, asked: Arc<Mutex<Vec<u8>>>) -> Join<'a> {
        Join {
            session: [id as u8; 16],
            index: 0,
            group,
            meta,
            tunnel: Arc::new(Fake { id: id as u8, fail: false, asked }),
            kill: CancellationToken::new(),
            counters: Arc::default(),
            leased_port: None,
            access: None,
        }
    }

    fn meta(id: u64, public_port: u16) -> ForwardMeta {
        ForwardMeta {
            id,
            protocol: "tcp".into(),
            public_port,
            vip: Ipv4Addr::new(100, 64, 242, 2),
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 8000 + id as u16,
            domain: "x.z.test".into(),
            raw_config: None,
            client_id: format!("c{id}"),
        }
    }

    /// A member whose session's clean-up stops waiting (its deadline
    /// passed while other groups' joins held the turn) is out of its group
    /// all the same, and the group stops once it may.
    #[tokio::test]
    async fn a_member_leaves_even_when_its_clean_up_stops_waiting() {
        let server = crate::test_server().await;
        let shared = server.shared.clone();
        let (group, meta) = (web(), meta(1, 0));
        let j = joining(1, &group, &meta, Arc::default());
        let (ep, handle) = shared.groups.join(&shared, &shared.plugin("tcp").unwrap(), j).await.unwrap();
        let port = ep.public_port.unwrap();
        let turn = shared.groups.steps.lock().await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), handle.stop_proxy(&meta)).await;
        assert!(gave_up.is_err(), "the turn is held: the clean-up gives up");
        assert!(shared.groups.by_member().is_empty(), "the member is out at once");
        assert!(!shared.groups.health([1; 16], 0, false));
        drop(turn);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !shared.groups.map().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the group never stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "the group's port stayed open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A writer the test's log lines go to.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A client flapping its health as fast as it can write gets a log
    /// line a second, not one per message.
    #[tokio::test]
    async fn health_flapping_does_not_flood_the_log() {
        let server = crate::test_server().await;
        let shared = server.shared.clone();
        let (group, meta) = (web(), meta(1, 0));
        let j = joining(1, &group, &meta, Arc::default());
        shared.groups.join(&shared, &shared.plugin("tcp").unwrap(), j).await.unwrap();
        let out = Captured::default();
        let writer = out.clone();
        let subscriber =
            tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                assert!(shared.groups.health([1; 16], 0, i % 2 == 1));
            }
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines = text.matches("member health changed").count();
        assert!((1..=2).contains(&lines), "{lines} lines:\n{text}");
        let g = shared.groups.map().values().next().unwrap().clone();
        assert!(g.members.lock()[0].healthy, "every verdict is applied; the last was healthy");
    }

    /// The gateway checks the group's rules per request and pools streams
    /// to members: a member with other rules than the group's would be
    /// reached by visitors its own rules refuse, so it is not let in.
    #[tokio::test]
    async fn a_gateway_group_admits_only_members_with_its_access_rules() {
        let server = crate::test_server().await;
        let shared = server.shared.clone();
        // The tcp plugin stands in for the gateway's: what is judged is the
        // forward's protocol.
        let plugin = shared.plugin("tcp").unwrap();
        let group = web();
        let guard = Arc::new(crate::access::Guard::default());
        let rules = |allow: &str| {
            let a = opennotr_config::access::parse("t", &[allow.to_string()], &[], &[]).unwrap();
            crate::access::Policy::new("http", "x.z.test", [a, opennotr_config::Access::default()], &guard)
        };
        let join = |id: u64, protocol: &str, access: Option<Arc<crate::access::Policy>>| {
            let (groups, shared, plugin, group) =
                (shared.groups.clone(), shared.clone(), plugin.clone(), group.clone());
            let mut meta = meta(id, 0);
            meta.protocol = protocol.into();
            async move {
                let j = Join { access, ..joining(id, &group, &meta, Arc::default()) };
                groups.join(&shared, &plugin, j).await.map(|_| ())
            }
        };
        join(1, "http", rules("10.0.0.0/8")).await.unwrap();
        assert!(join(2, "http", rules("10.0.0.0/8")).await.is_ok(), "the same rules join");
        for other in [None, rules("192.168.0.0/16")] {
            let e = join(3, "http", other).await.unwrap_err();
            assert!(e.contains("other access rules"), "{e}");
        }
        // A port's group: each stream is the member's own, checked by its tunnel.
        join(4, "tcp", rules("10.0.0.0/8")).await.unwrap();
        assert!(join(5, "tcp", None).await.is_ok());
    }

    #[tokio::test]
    async fn the_registry_runs_one_forward_per_group_until_its_last_member_leaves() {
        let server = crate::test_server().await;
        let shared = server.shared.clone();
        let plugin = shared.plugin("tcp").unwrap();
        let asked = Arc::default();
        let key = GroupRequest::digest("web", "k");
        let group = GroupRequest { name: "web".into(), key: key.clone(), balance: Balance::RoundRobin };
        let join = |id: u64, port: u16, group: &GroupRequest| {
            let (groups, shared, plugin, group, asked) =
                (shared.groups.clone(), shared.clone(), plugin.clone(), group.clone(), Arc::clone(&asked));
            async move {
                let meta = meta(id, port);
                let j = joining(id, &group, &meta, asked);
                groups.join(&shared, &plugin, j).await
            }
        };
        let (ep, first) = join(1, 0, &group).await.unwrap();
        let port = ep.public_port.unwrap();
        let (ep2, second) = join(2, 0, &group).await.unwrap();
        assert_eq!(ep2, ep, "a later member gets the group's endpoint");
        assert_eq!(join(3, port, &group).await.unwrap().0, ep, "asking for the group's port joins");
        let other = if port == 65535 { 1 } else { port + 1 };
        assert!(join(4, other, &group).await.err().unwrap().contains("serves public port"));
        let wrong = GroupRequest { key: GroupRequest::digest("web", "guess"), ..group.clone() };
        assert!(join(5, 0, &wrong).await.err().unwrap().contains("wrong key"));
        let lc = GroupRequest { balance: Balance::LeastConn, ..group.clone() };
        assert!(join(6, 0, &lc).await.err().unwrap().contains("balances round_robin"));
        assert_eq!(shared.groups.map().len(), 1, "one group");

        assert!(shared.groups.health([2; 16], 0, false));
        assert!(!shared.groups.health([9; 16], 0, false), "no such member");
        let mut text = String::new();
        shared.groups.metrics(&mut text);
        assert!(text.contains("opennotr_group_members{protocol=\"tcp\",group=\"web\",state=\"healthy\"} 2"), "{text}");
        assert!(text.contains("state=\"unhealthy\"} 1"), "{text}");
        // The admin API's views: the group and each member, never the key.
        let views = shared.groups.views(|id| (None, format!("c{}", id[0])));
        assert_eq!(views.len(), 1);
        let (g, members) = (&views[0], &views[0].members);
        assert_eq!((g.protocol.as_str(), g.name.as_str(), g.balance.as_str()), ("tcp", "web", "round_robin"));
        assert_eq!((g.public_port, g.url.as_str()), (Some(port), ep.url.as_str()));
        let seen: Vec<(&str, u16, bool)> =
            members.iter().map(|m| (m.client_id.as_str(), m.target.port(), m.healthy)).collect();
        assert_eq!(seen, [("c1", 8001, true), ("c2", 8002, false), ("c3", 8003, true)]);
        assert_eq!(members[1].session, hex::encode([2u8; 16]));
        assert!(!format!("{views:?}").contains(&key), "the key digest is never shown");
        let mine = shared.groups.of_forward([2; 16], 2).expect("a member");
        assert_eq!((mine.name.as_str(), mine.healthy), ("web", false));
        assert!(shared.groups.of_forward([2; 16], 1).is_none(), "another session's forward");
        assert!(shared.groups.of_forward([9; 16], 9).is_none());

        // A visitor reaches a member through the group's one port.
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // Members leave; the port stays while one is left.
        first.stop_proxy(&meta(1, 0)).await;
        second.stop_proxy(&meta(2, 0)).await;
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok());
        let third = shared.groups.map().values().next().unwrap().clone();
        MemberHandle { groups: shared.groups.clone(), group: third }.stop_proxy(&meta(3, 0)).await;
        assert!(shared.groups.map().is_empty());
        assert!(shared.groups.by_member().is_empty());
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the port is free");
        // A new group may take the name, with another key.
        let again = GroupRequest { key: GroupRequest::digest("web", "new"), ..group };
        assert!(join(7, port, &again).await.is_ok());
    }
}
