//! `check` (`opennotr check`): what a `register` with this domain and
//! these forwards would get now, decided by the rules `conn::serve` and
//! `session::start_forwards` apply, and taking nothing: no session, VIP,
//! domain, port, lease or DNS record. Plugins answer through
//! [`Plugin::check_proxy`](opennotr_plugin::Plugin::check_proxy), which at
//! most binds a port and drops it at once.
//!
//! The answer is a snapshot: another client may take the domain or the
//! port a moment later.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use opennotr_plugin::ForwardMeta;
use opennotr_proto::message::{ForwardRequest, ForwardResult, ServerMessage};
use tokio::time::Instant;
use tracing::info;

use crate::Shared;

/// How long a plugin may take to answer for one forward.
const CHECK_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The `checked` answer for a client authenticated as `name` (`None` =
/// the shared key).
pub(crate) async fn answer(
    shared: &Arc<Shared>,
    name: Option<&str>,
    domain: Option<String>,
    forwards: &[ForwardRequest],
) -> ServerMessage {
    let cred = match name {
        None => None,
        Some(n) => match shared.creds().get(n).cloned() {
            Some(c) => Some(c),
            None => {
                return ServerMessage::Checked {
                    client_error: Some("credential revoked".into()),
                    domain_error: None,
                    forwards: Vec::new(),
                }
            }
        },
    };
    let domain = domain.filter(|d| !d.is_empty());
    // The credential's (or the shared key's) rule first, as `serve` does.
    let mut domain_error = match domain.as_deref().map(crate::state::normalize_domain) {
        Some(Err(m)) => Some(m),
        _ => crate::conn::domain_refusal(shared, cred.as_ref(), domain.as_deref()),
    };
    // Without a request, a named client gets its first exact name.
    let asked = domain.or_else(|| cred.as_ref().and_then(|c| c.domains.iter().find(|d| !d.starts_with("*.")).cloned()));
    let shares = |d: &str| crate::group::shares_domain(shared, d, forwards);
    let (client_error, decision) = shared.state().would_admit(asked.as_deref(), &shares);
    let given = match decision {
        Err(m) => {
            domain_error.get_or_insert(m);
            None
        }
        Ok(d) => d,
    };

    let max = shared.limits().max_forwards_per_client;
    // The connection holds a handshake slot until it is answered: the
    // whole check gets one handshake's time, whatever plugins take.
    let deadline = Instant::now() + shared.cfg.server.handshake_timeout;
    let mut results = Vec::with_capacity(forwards.len());
    let mut seen = HashSet::new();
    for (i, req) in forwards.iter().enumerate() {
        let verdict = if i >= max {
            Err(format!("the server allows at most {max} forwards per client"))
        } else {
            let step = check_forward(shared, cred.as_ref(), req, given.as_deref(), &mut seen);
            tokio::time::timeout_at(deadline, step)
                .await
                .unwrap_or_else(|_| Err("not checked: the check ran out of time".into()))
        };
        results.push(ForwardResult {
            request: req.clone(),
            public_port: None,
            url: None,
            error: verdict.err(),
            bandwidth: None,
        });
    }
    let refused = results.iter().filter(|r| r.error.is_some()).count();
    info!(
        client = name.unwrap_or(""),
        forwards = results.len(),
        refused,
        client_refused = client_error.is_some(),
        domain_refused = domain_error.is_some(),
        "answered a check (nothing taken)"
    );
    ServerMessage::Checked { client_error, domain_error, forwards: results }
}

async fn check_forward(
    shared: &Arc<Shared>,
    cred: Option<&opennotr_config::Credential>,
    req: &ForwardRequest,
    domain: Option<&str>,
    seen: &mut HashSet<(String, u16)>,
) -> Result<(), String> {
    if let Some(c) = cred {
        if !c.allows_protocol(&req.protocol) {
            return Err(format!(
                "client {} may not use protocol {:?} (allowed: {})",
                c.name,
                req.protocol,
                c.protocols.join(", ")
            ));
        }
        if !c.allows_port(req.public_port) {
            let ranges: Vec<String> = c.ports.iter().map(|r| r.to_string()).collect();
            return Err(format!(
                "client {} may not use public port {} (allowed: {})",
                c.name,
                req.public_port,
                ranges.join(", ")
            ));
        }
    }
    let Some(plugin) = shared.plugin(&req.protocol) else {
        let all = shared.plugins();
        let have: Vec<_> = all.keys().map(String::as_str).collect();
        return Err(format!(
            "protocol {:?} is not available on this server (it has: {})",
            req.protocol,
            have.join(", ")
        ));
    };
    let domain_name = domain.unwrap_or_default();
    // The rules the forward would run under: its own, parsed and bounded,
    // and the server's for this client.
    let access = crate::access::for_forward(shared, cred.map(|c| c.name.as_str()), domain_name, cred, req)?;
    // A member of a running group shares its port: nothing for the plugin
    // to find free.
    if let Some(g) = &req.group {
        let held = domain.is_some_and(|d| shared.state().sessions.values().any(|s| s.domain == d));
        if shared.groups.would_join(&req.protocol, g, req.public_port, domain_name, access.as_deref(), held)? {
            let port = shared.groups.public_port(&req.protocol, &g.name).unwrap_or(0);
            return match cred {
                Some(c) if !c.allows_port(port) => {
                    Err(format!("client {} may not use public port {port}, group {}'s", c.name, g.name))
                }
                _ => Ok(()),
            };
        }
    }
    // Each port is bound and dropped on its own: the second of two equal
    // requests would find it free, where a registration would not.
    if req.public_port != 0 && !seen.insert((req.protocol.clone(), req.public_port)) {
        return Err(format!("public port {} is asked for twice", req.public_port));
    }
    let meta = ForwardMeta {
        id: 0,
        protocol: req.protocol.clone(),
        public_port: req.public_port,
        vip: Ipv4Addr::UNSPECIFIED,
        local_ip: req.local_ip,
        local_port: req.local_port,
        domain: domain.unwrap_or_default().to_string(),
        raw_config: req.raw_config.clone(),
        client_id: String::new(),
    };
    match tokio::time::timeout(CHECK_STEP_TIMEOUT, plugin.check_proxy(&meta)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the plugin did not answer in time".into()),
    }
}
