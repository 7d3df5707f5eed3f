//! What the admin API sees and changes: the server's side of
//! [`opennotr_admin::Backend`].

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opennotr_admin::{
    AccessRulesView, Backend, BackendError, ClientView, ForwardAccessView, ForwardView, GroupView, NewClient,
    RefusalView, RefusedView, ReloadReport, SessionView,
};
use opennotr_config::{Credential, CredentialText};
use opennotr_transport::bandwidth::Throttle;
use opennotr_transport::Counters;
use tracing::{info, warn};

use crate::creds::{Creds, Source};
use crate::session::Session;
use crate::{ServerHandle, Shared};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn view(shared: &Shared, s: &Session) -> SessionView {
    let forwards: Vec<ForwardView> = s.with_forwards(|fs| {
        fs.iter()
            .map(|f| ForwardView {
                protocol: f.info.protocol.clone(),
                public_port: f.info.public_port,
                url: f.info.url.clone(),
                target: f.info.target,
                bytes_in: f.counters.bytes_in.load(Ordering::Relaxed),
                bytes_out: f.counters.bytes_out.load(Ordering::Relaxed),
                open_streams: f.counters.open.load(Ordering::Relaxed),
                bandwidth: f.counters.limit.get().map(|t| t.rate()),
                throttled_ms: throttled_ms(f.counters.limit.get()),
                dropped_datagrams: dropped(f.counters.limit.get()).0,
                dropped_bytes: dropped(f.counters.limit.get()).1,
                group: shared.groups.of_forward(s.id, f.meta.id),
                access: f.access.as_deref().map(access_view),
            })
            .collect()
    });
    let vip = &s.vip_counters;
    let sum = |pick: fn(&ForwardView) -> u64, c: &std::sync::atomic::AtomicU64| {
        forwards.iter().map(pick).sum::<u64>() + c.load(Ordering::Relaxed)
    };
    SessionView {
        id: hex::encode(s.id),
        client: s.client.clone(),
        client_id: s.client_id.clone(),
        domain: s.domain.clone(),
        vip: s.vip,
        remote: s.remote(),
        transport: s.transport().into(),
        connected_since: unix(s.connected_at),
        plaintext: s.plaintext,
        bytes_in: sum(|f| f.bytes_in, &vip.bytes_in),
        bytes_out: sum(|f| f.bytes_out, &vip.bytes_out),
        open_streams: sum(|f| f.open_streams, &vip.open),
        forwards,
        bandwidth: s.bandwidth.get().map(|t| t.rate()),
        throttled_ms: throttled_ms(s.bandwidth.get()),
        dropped_datagrams: dropped(s.bandwidth.get()).0,
        dropped_bytes: dropped(s.bandwidth.get()).1,
    }
}

fn client_view(shared: &Shared, c: &Credential, source: Source) -> ClientView {
    let sessions = shared.state().sessions.values().filter(|s| s.client.as_deref() == Some(&c.name)).count();
    ClientView {
        name: c.name.clone(),
        domains: c.domains.clone(),
        ports: c.ports.iter().map(|r| r.to_string()).collect(),
        protocols: c.protocols.clone(),
        sessions,
        source: source.name().into(),
        bandwidth: c.bandwidth,
        forward_bandwidth: c.forward_bandwidth,
        access: rules_view(&c.access),
    }
}

/// Access rules as the admin API shows them: user names, never hashes.
fn rules_view(r: &opennotr_config::Access) -> AccessRulesView {
    AccessRulesView {
        allow: r.allow.iter().map(|n| n.to_string()).collect(),
        deny: r.deny.iter().map(|n| n.to_string()).collect(),
        users: r.basic_auth.iter().map(|u| u.user.clone()).collect(),
    }
}

fn access_view(p: &crate::access::Policy) -> ForwardAccessView {
    let (server, client) = p.layers();
    let [denied, not_allowed, unauthorized, busy] = p.refused();
    ForwardAccessView {
        server: server.map(rules_view),
        client: client.map(rules_view),
        refused: RefusedView { denied, not_allowed, unauthorized, busy },
    }
}

fn throttled_ms(t: Option<&Arc<Throttle>>) -> u64 {
    t.map_or(0, |t| t.throttled_nanos.load(Ordering::Relaxed) / 1_000_000)
}

/// Datagrams and bytes dropped for a limit.
fn dropped(t: Option<&Arc<Throttle>>) -> (u64, u64) {
    t.map_or((0, 0), |t| (t.dropped_datagrams.load(Ordering::Relaxed), t.dropped_bytes.load(Ordering::Relaxed)))
}

/// A bandwidth of the admin API's `NewClient`; errors name `field`.
fn api_bandwidth(field: &str, text: Option<&str>) -> Result<Option<u64>, BackendError> {
    text.map(|t| {
        opennotr_config::parse_bandwidth(t).map_err(|message| BackendError::Invalid { field: field.into(), message })
    })
    .transpose()
}

fn invalid(e: opennotr_config::ConfigError) -> BackendError {
    match e {
        opennotr_config::ConfigError::Invalid { key, message } => {
            BackendError::Invalid { field: key.trim_start_matches('.').to_string(), message }
        }
        other => BackendError::Invalid { field: "config".into(), message: other.to_string() },
    }
}

impl ServerHandle {
    fn find(&self, id: &str) -> Option<Arc<Session>> {
        let id: [u8; 16] = hex::decode(id).ok()?.try_into().ok()?;
        self.shared.state().sessions.get(&id).cloned()
    }

    /// Re-reads the configuration file the server was started with and
    /// applies what can change at run time (credentials, limits, plugins,
    /// `admin.token`); reports the rest
    /// as needing a restart. A file that does not validate changes nothing.
    pub fn reload(&self) -> Result<ReloadReport, BackendError> {
        let path = self.shared.config_path.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(path) = path else {
            return Err(BackendError::Conflict("the server was not started from a file; nothing to reload".into()));
        };
        let next = match opennotr_config::load_server(&path) {
            Ok(c) => c,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "reload refused; the running configuration stays");
                return Err(invalid(e));
            }
        };
        let old = &self.shared.cfg;
        let mut report = ReloadReport::default();

        // Plugins whose config changed are set up anew first: if one fails,
        // the reload is refused before anything changed.
        let unknown = next
            .plugins
            .keys()
            .find(|n| !self.shared.registry.contains(n) && !crate::RESERVED_PLUGINS.contains(&n.as_str()));
        if let Some(name) = unknown {
            let known: Vec<_> = self.shared.registry.names().collect();
            return Err(BackendError::Invalid {
                field: format!("plugin.{name}"),
                message: format!("unknown plugin {name:?} (this server has: {})", known.join(", ")),
            });
        }
        let next_cfgs = crate::plugin_configs(&next, &self.shared.registry);
        let current_cfgs = self.shared.plugin_cfgs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut fresh = Vec::new();
        for (name, conf) in &next_cfgs {
            if current_cfgs.get(name) == Some(conf) {
                continue;
            }
            match self.shared.registry.setup(name, conf) {
                Some(Ok(p)) => fresh.push((name.clone(), p)),
                Some(Err(e)) => {
                    let e = crate::plugin_config_error(name, e);
                    warn!(error = %e, "reload refused; the running configuration stays");
                    return Err(match e {
                        crate::ServerError::Config { key, message } => BackendError::Invalid { field: key, message },
                        other => BackendError::Invalid { field: format!("plugin.{name}"), message: other.to_string() },
                    });
                }
                None => {}
            }
        }

        let current = self.shared.creds();
        let creds = current.reloaded(&next);
        if creds.shared_key != current.shared_key {
            report.changed.push("server.authKey".into());
        }
        if creds.shared_domains != current.shared_domains {
            report.changed.push("server.authKeyDomains".into());
        }
        let names = current.changed_names(&creds);
        let added = creds.clients.keys().filter(|n| !current.clients.contains_key(*n)).count();
        if !names.is_empty() || added > 0 {
            report.changed.push("clients".into());
        }
        // Sections that only a restart applies; compared through their
        // Debug form, which hides secrets but shows every other field.
        let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
        if !same(&self.shared.limits(), &next.limits) {
            report.changed.push("limits".into());
            self.shared.set_limits(next.limits.clone());
        }
        let mut old_server = old.server.clone();
        old_server.auth_key = next.server.auth_key.clone();
        old_server.auth_key_domains = next.server.auth_key_domains.clone();
        let checks: [(&str, bool); 6] = [
            ("server", same(&old_server, &next.server)),
            ("dhcp", same(&old.dhcp, &next.dhcp)),
            ("resolver", old.etcd_endpoints == next.etcd_endpoints && old.etcd_prefix == next.etcd_prefix),
            ("dns", same(&old.dns, &next.dns)),
            ("admin", same(&old.admin.as_ref().map(|a| a.listen), &next.admin.as_ref().map(|a| a.listen))),
            ("cluster", old.cluster == next.cluster),
        ];
        report.restart_required = checks.iter().filter(|(_, same)| !same).map(|(k, _)| k.to_string()).collect();
        // A new admin.token is checked from the next request on, on
        // connections already open too.
        let token_changed = match (&next.admin, self.shared.admin_token.get()) {
            (Some(a), Some(handle)) => handle.set(a.token.expose()).unwrap_or_else(|e| {
                warn!(error = %e, "admin.token not replaced; the old one stays");
                false
            }),
            _ => false,
        };
        if token_changed {
            report.changed.push("admin.token".into());
        }
        // Weak keys this reload brings in; those already in force were
        // warned about when they came.
        let weak: Vec<_> = opennotr_config::weak_keys(&next)
            .into_iter()
            .filter(|w| match (&w.client, w.field) {
                (Some(name), _) => names.contains(name) || !current.clients.contains_key(name),
                (None, "server.authKey") => creds.shared_key != current.shared_key,
                (None, "admin.token") => token_changed,
                _ => false,
            })
            .collect();
        report.sessions_closed = self.shared.set_creds(creds);
        crate::creds::warn_weak(&weak);

        // New plugin instances serve new forwards at once; sessions with a
        // forward on a replaced plugin are closed and come back on the new
        // one (their old forwards stop with them). Other sessions stay.
        if !fresh.is_empty() {
            let changed: Vec<String> = fresh.iter().map(|(n, _)| n.clone()).collect();
            {
                let mut plugins = self.shared.plugins.write().unwrap_or_else(|e| e.into_inner());
                for (name, p) in fresh {
                    p.start(&self.shared.server_info());
                    plugins.insert(name, p);
                }
            }
            *self.shared.plugin_cfgs.lock().unwrap_or_else(|e| e.into_inner()) = next_cfgs;
            for s in live(&self.shared) {
                let uses = s.with_forwards(|fs| fs.iter().any(|f| changed.contains(&f.meta.protocol)));
                if uses && !s.kill.is_cancelled() {
                    s.close("the server's plugin configuration changed; reconnect");
                    report.sessions_closed += 1;
                }
            }
            report.changed.extend(changed.iter().map(|n| format!("plugin.{n}")));
        }
        info!(changed = ?report.changed, restart_required = ?report.restart_required, sessions_closed = report.sessions_closed, "configuration reloaded");
        Ok(report)
    }
}

impl Backend for ServerHandle {
    fn sessions(&self) -> Vec<SessionView> {
        sessions(&self.shared)
    }

    fn session(&self, id: &str) -> Option<SessionView> {
        self.find(id).map(|s| view(&self.shared, &s))
    }

    fn close_session(&self, id: &str) -> bool {
        let Some(s) = self.find(id) else { return false };
        info!(domain = %s.domain, "session closed through the admin API");
        s.close("closed by the server's operator");
        true
    }

    fn clients(&self) -> Vec<ClientView> {
        let creds = self.shared.creds();
        creds.clients.values().map(|(c, src)| client_view(&self.shared, c, *src)).collect()
    }

    fn add_client(&self, c: NewClient) -> Result<ClientView, BackendError> {
        let weak = opennotr_config::key_weaknesses(&c.key);
        let text = CredentialText {
            bandwidth: api_bandwidth("bandwidth", c.bandwidth.as_deref())?,
            forward_bandwidth: api_bandwidth("forward_bandwidth", c.forward_bandwidth.as_deref())?,
            name: c.name,
            key: c.key,
            domains: c.domains,
            ports: c.ports,
            protocols: c.protocols,
        };
        let reserved = opennotr_config::ReservedNames::of(&self.shared.cfg);
        // The server's own names depend on its configuration, which the
        // API's schema cannot know: a collision with them is a conflict,
        // not a malformed request.
        if let Some(e) = reserved.claimed_by("", &text) {
            return Err(match invalid(e) {
                BackendError::Invalid { field, message } => BackendError::Reserved { field, message },
                other => other,
            });
        }
        let cred = opennotr_config::credential("", text, &reserved).map_err(invalid)?;
        let current = self.shared.creds();
        if current.clients.contains_key(&cred.name) {
            return Err(BackendError::Conflict(format!("client {:?} exists; remove it first", cred.name)));
        }
        let mut next: Creds = (*current).clone();
        next.clients.insert(cred.name.clone(), (cred.clone(), Source::Api));
        self.shared.set_creds(next);
        info!(client = %cred.name, "credential added through the admin API");
        if !weak.is_empty() {
            let w = opennotr_config::WeakKey { field: "clients", client: Some(cred.name.clone()), reasons: weak };
            crate::creds::warn_weak(&[w]);
        }
        Ok(client_view(&self.shared, &cred, Source::Api))
    }

    fn remove_client(&self, name: &str) -> Result<usize, BackendError> {
        let current = self.shared.creds();
        if !current.clients.contains_key(name) {
            return Err(BackendError::NotFound(format!("client {name:?}")));
        }
        let mut next: Creds = (*current).clone();
        next.clients.remove(name);
        let closed = self.shared.set_creds(next);
        info!(client = %name, sessions_closed = closed, "credential revoked through the admin API");
        Ok(closed)
    }

    fn reload(&self) -> Result<ReloadReport, BackendError> {
        ServerHandle::reload(self)
    }

    fn refusals(&self) -> Vec<RefusalView> {
        self.shared
            .refusals
            .recent()
            .into_iter()
            .map(|r| RefusalView {
                at: unix(r.at),
                remote: r.remote,
                client: r.client,
                code: r.code,
                message: r.message,
            })
            .collect()
    }

    fn metrics(&self) -> String {
        metrics(&self.shared)
    }

    fn groups(&self) -> Vec<GroupView> {
        let sessions = self.shared.state().sessions.clone();
        self.shared.groups.views(|id| match sessions.get(id) {
            Some(s) => (s.client.clone(), s.client_id.clone()),
            None => (None, String::new()),
        })
    }

    fn cluster(&self) -> Option<opennotr_admin::ClusterView> {
        ServerHandle::cluster(self)
    }

    fn cluster_sessions(&self) -> Option<Vec<opennotr_admin::NodeSessions>> {
        self.shared.cluster.as_ref()?;
        Some(tokio::runtime::Handle::current().block_on(cluster_sessions(&self.shared)))
    }
}

/// Every live node's sessions: this node's own, the others' asked over
/// node links, all at once.
pub(crate) async fn cluster_sessions(shared: &Shared) -> Vec<opennotr_admin::NodeSessions> {
    let (Some(cluster), Some(links)) = (&shared.cluster, &shared.links) else { return Vec::new() };
    let me = cluster.node().to_string();
    let others: Vec<String> = cluster.view().nodes.into_iter().map(|n| n.node).filter(|n| *n != me).collect();
    let mut asked = tokio::task::JoinSet::new();
    for node in others {
        let links = links.clone();
        asked.spawn(async move {
            let (sessions, error) = match links.sessions_of(&node).await {
                Ok(s) => (s, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            opennotr_admin::NodeSessions { node, error, sessions }
        });
    }
    let mut all: Vec<_> = asked.join_all().await;
    all.push(opennotr_admin::NodeSessions { node: me, error: None, sessions: sessions(shared) });
    all.sort_by(|a, b| a.node.cmp(&b.node));
    all
}

/// A Prometheus label value, escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Every live session of `shared`'s server, oldest first.
fn live(shared: &Shared) -> Vec<Arc<Session>> {
    let mut v: Vec<_> = shared.state().sessions.values().cloned().collect();
    v.sort_by_key(|s| s.connected_at);
    v
}

/// Every live session of `shared`'s server, as the API lists them.
pub(crate) fn sessions(shared: &Shared) -> Vec<SessionView> {
    live(shared).iter().map(|s| view(shared, s)).collect()
}

/// `/metrics` of `shared`'s server, as the API answers it.
pub(crate) fn metrics(shared: &Shared) -> String {
    metrics_text(shared, &live(shared))
}

/// The metrics in Prometheus' text format (0.0.4).
fn metrics_text(shared: &Shared, sessions: &[Arc<Session>]) -> String {
    let mut out = String::with_capacity(4096);
    family(&mut out, "opennotr_sessions", "gauge", "Live client sessions.");
    let _ = writeln!(out, "opennotr_sessions {}", sessions.len());

    family(&mut out, "opennotr_handshakes_total", "counter", "Control handshakes by result.");
    for (result, n) in shared.handshakes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(out, "opennotr_handshakes_total{{result=\"{result}\"}} {n}");
    }
    if shared.cfg.server.quic.is_some() {
        let q = &shared.quic_stats;
        family(
            &mut out,
            "opennotr_quic_datagrams_total",
            "counter",
            "UDP datagrams of QUIC sessions, by how they went.",
        );
        for (result, n) in
            [("sent", &q.sent), ("fallback", &q.fallback), ("received", &q.received), ("dropped", &q.dropped)]
        {
            let _ = writeln!(out, "opennotr_quic_datagrams_total{{result=\"{result}\"}} {}", n.load(Ordering::Relaxed));
        }
    }
    let st = &shared.sources.stats;
    family(&mut out, "opennotr_auth_failures_total", "counter", "Failed handshakes (wrong key, garbage, silence).");
    let _ = writeln!(out, "opennotr_auth_failures_total {}", st.failures.load(Ordering::Relaxed));
    family(&mut out, "opennotr_auth_penalties_total", "counter", "Penalties started against a source.");
    let _ = writeln!(out, "opennotr_auth_penalties_total {}", st.penalties.load(Ordering::Relaxed));
    family(&mut out, "opennotr_penalized_sources", "gauge", "Sources whose handshakes are refused now.");
    let _ = writeln!(out, "opennotr_penalized_sources {}", shared.sources.penalized_count());
    family(
        &mut out,
        "opennotr_control_connections_refused_total",
        "counter",
        "Control-port connections closed before their hello, by reason.",
    );
    let refused = [("source", &st.refused_source), ("busy", &st.refused_busy)];
    for (reason, n) in refused {
        let _ = writeln!(
            out,
            "opennotr_control_connections_refused_total{{reason=\"{reason}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    let fds = opennotr_transport::fds::stats();
    family(&mut out, "process_max_fds", "gauge", "The soft limit on open file descriptors.");
    let _ = writeln!(out, "process_max_fds {}", fds.limit);
    if let Some(open) = fds.open {
        family(&mut out, "process_open_fds", "gauge", "Open file descriptors.");
        let _ = writeln!(out, "process_open_fds {open}");
    }
    family(
        &mut out,
        "opennotr_fd_reserve_refusals_total",
        "counter",
        "Connections closed at once to keep file descriptors for the control port and the admin API.",
    );
    for (listener, n) in [("public", fds.refused_public), ("control", fds.refused_control)] {
        let _ = writeln!(out, "opennotr_fd_reserve_refusals_total{{listener=\"{listener}\"}} {n}");
    }
    family(
        &mut out,
        "opennotr_spare_channels",
        "gauge",
        "Idle data channels clients keep open for their next streams.",
    );
    let _ = writeln!(out, "opennotr_spare_channels {}", sessions.iter().map(|s| s.spares.len()).sum::<usize>());
    family(
        &mut out,
        "opennotr_stream_channels_total",
        "counter",
        "Streams by how they got a data channel: a spare opened ahead, or one dialed on demand.",
    );
    let cs = &shared.channel_stats;
    for (via, n) in [("spare", &cs.spare), ("dialed", &cs.dialed)] {
        let _ = writeln!(out, "opennotr_stream_channels_total{{via=\"{via}\"}} {}", n.load(Ordering::Relaxed));
    }
    family(
        &mut out,
        "opennotr_streams_refused_total",
        "counter",
        "Streams the client refused: a target it does not declare, or a service it cannot reach.",
    );
    let _ = writeln!(out, "opennotr_streams_refused_total {}", cs.refused.load(Ordering::Relaxed));
    shared.access.write_metrics(&mut out);
    family(&mut out, "opennotr_refusals_total", "counter", "Refused clients and forwards by reason.");
    for (reason, n) in shared.refusals.counts() {
        let _ = writeln!(out, "opennotr_refusals_total{{reason=\"{}\"}} {n}", esc(&reason));
    }

    // One series per running forward, plus each session's VIP traffic.
    struct Row {
        labels: String,
        udp: bool,
        c: Arc<Counters>,
    }
    let mut rows = Vec::new();
    for s in sessions {
        let client = esc(s.client.as_deref().unwrap_or(""));
        let domain = esc(&s.domain);
        s.with_forwards(|fs| {
            for f in fs {
                let port = f.info.public_port.map(|p| p.to_string()).unwrap_or_default();
                rows.push(Row {
                    labels: format!(
                        "client=\"{client}\",domain=\"{domain}\",protocol=\"{}\",port=\"{port}\"",
                        esc(&f.info.protocol)
                    ),
                    udp: f.info.protocol == "udp",
                    c: f.counters.clone(),
                });
            }
        });
        rows.push(Row {
            labels: format!("client=\"{client}\",domain=\"{domain}\",protocol=\"vip\",port=\"\""),
            udp: false,
            c: s.vip_counters.clone(),
        });
    }
    family(
        &mut out,
        "opennotr_forward_bytes_total",
        "counter",
        "Bytes through a forward: in = from visitors toward the client, out = toward visitors.",
    );
    for r in &rows {
        let (i, o) = (r.c.bytes_in.load(Ordering::Relaxed), r.c.bytes_out.load(Ordering::Relaxed));
        let _ = writeln!(out, "opennotr_forward_bytes_total{{{},direction=\"in\"}} {i}", r.labels);
        let _ = writeln!(out, "opennotr_forward_bytes_total{{{},direction=\"out\"}} {o}", r.labels);
    }
    family(&mut out, "opennotr_forward_streams_open", "gauge", "Visitor connections and UDP flows open now.");
    for r in &rows {
        let _ = writeln!(out, "opennotr_forward_streams_open{{{}}} {}", r.labels, r.c.open.load(Ordering::Relaxed));
    }
    family(&mut out, "opennotr_forward_streams_total", "counter", "Visitor connections and UDP flows opened.");
    for r in &rows {
        let _ = writeln!(out, "opennotr_forward_streams_total{{{}}} {}", r.labels, r.c.opened.load(Ordering::Relaxed));
    }
    let udp = rows.iter().filter(|r| r.udp);
    let (open, total) =
        udp.fold((0, 0), |(o, t), r| (o + r.c.open.load(Ordering::Relaxed), t + r.c.opened.load(Ordering::Relaxed)));
    family(&mut out, "opennotr_udp_flows_open", "gauge", "UDP flows open now, all forwards.");
    let _ = writeln!(out, "opennotr_udp_flows_open {open}");
    family(&mut out, "opennotr_udp_flows_total", "counter", "UDP flows opened by live forwards.");
    let _ = writeln!(out, "opennotr_udp_flows_total {total}");

    crate::bandwidth::metrics(&mut out, sessions);
    if let Some(dns) = &shared.dns_stats {
        family(
            &mut out,
            "opennotr_dns_queries_total",
            "counter",
            "DNS queries answered, by transport and response code.",
        );
        for ((proto, rcode), n) in dns.snapshot() {
            let _ = writeln!(out, "opennotr_dns_queries_total{{transport=\"{proto}\",rcode=\"{}\"}} {n}", esc(&rcode));
        }
    }
    shared.groups.metrics(&mut out);
    for p in shared.plugins().values() {
        p.metrics(&mut out);
    }
    process_metrics(&mut out);
    out
}

/// The standard process metrics, from /proc (Linux only; elsewhere none).
fn process_metrics(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name, which may hold spaces, in parentheses;
    // `rest` starts at field 3 (state): utime is field 14, stime 15,
    // starttime 22.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc counts clock ticks in USER_HZ, which Linux fixes at 100 for
    // user space on every architecture.
    let ticks = 100.0;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
        .unwrap_or(0.0);
    // Sizes from /proc/self/status, in kB, so no page size is assumed.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
    };
    family(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.");
    let _ = writeln!(out, "process_cpu_seconds_total {}", (num(11) + num(12)) / ticks);
    family(out, "process_start_time_seconds", "gauge", "Start time of the process since the epoch, in seconds.");
    let _ = writeln!(out, "process_start_time_seconds {}", boot + num(19) / ticks);
    if let Some(v) = kb("VmSize:") {
        family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
        let _ = writeln!(out, "process_virtual_memory_bytes {}", v * 1024.0);
    }
    if let Some(v) = kb("VmRSS:") {
        family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        let _ = writeln!(out, "process_resident_memory_bytes {}", v * 1024.0);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(out, "process_open_fds", "gauge", "Open file descriptors.");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
}
