//! What a session holds outside itself, and its lifecycle: its place in
//! the server's state (VIP, domain, public ports: [`crate::state`]), its
//! exports in the virtual LAN ([`crate::vlan`]) and, on a node of a
//! cluster, its claims in etcd ([`crate::cluster`]). Taken at
//! registration ([`claim`]), given back in one place when the session ends
//! ([`release`]), in the order the cluster needs. This module joins the
//! others, so `session`, `state`, `vlan` and `cluster` need not know each
//! other: `state` and `vlan` know sessions, and sessions know neither.
//!
//! [`Holder`] is the one view of who serves a VIP: a session here, or
//! another node (from the cluster's claims), for the virtual LAN and for
//! node links alike.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use opennotr_plugin::StreamProtocol;
use opennotr_proto::message::RefuseCode;
use tracing::{debug, warn};

use crate::cluster::{client_key, ClaimError, Claimed};
use crate::session::Session;
use crate::Shared;

/// On a node of a cluster, claims what must be unique in it before the
/// session is served, in this order: the client (one session of it in the
/// cluster: a session it left on another node is ended there, which frees
/// its domain and VIP), its domain, and its VIP where the virtual LAN is on
/// (every node's virtual LAN reaches it). `anywhere`: every node's gateway
/// serves all its forwards. `Err`: what to refuse the client with; what
/// was claimed is released by [`release`].
pub(crate) async fn claim(shared: &Shared, session: &Session, anywhere: bool) -> Result<(), (RefuseCode, String)> {
    let Some(c) = &shared.cluster else { return Ok(()) };
    let id = hex::encode(session.id);
    let claimed = async {
        c.claim_client(&session.client_id, &id, session.client.as_deref(), session.vip, &session.domain).await?;
        let _ = session.client_claimed.set(());
        // Its name is published with its forwards, once claimed.
        c.claim(&session.domain, &id, anywhere).await?;
        let _ = session.claimed.set(());
        if shared.vlan.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            let ports: Vec<_> = session.exports.keys().map(|&(p, port)| (crate::vlan::proto(p), port)).collect();
            c.claim_vip(session.vip, &id, &ports).await?;
            let _ = session.vip_claimed.set(());
        }
        Ok::<(), ClaimError>(())
    };
    match claimed.await {
        // Closed while it claimed (replaced, or the node lost its place).
        Ok(()) if session.kill.is_cancelled() => {
            Err((RefuseCode::ClusterUnavailable, "the session was closed while it registered; retry".to_string()))
        }
        Ok(()) => Ok(()),
        Err(e @ ClaimError::Held { what: Claimed::Domain(_), .. }) => Err((RefuseCode::DomainTaken, e.to_string())),
        // A VIP drawn here while another node's claim on it was on its way
        // (the next attempt draws another), or a client another node did
        // not let go of in time.
        Err(e @ ClaimError::Held { .. }) => Err((RefuseCode::ClusterUnavailable, e.to_string())),
        Err(ClaimError::Unavailable { what, why }) => {
            // The details (etcd's endpoints, its errors) are for the log.
            warn!(%what, error = %why, "cannot claim in the cluster");
            let message = format!(
                "this server cannot reach the cluster's state to claim {what}; retry, here or on another server"
            );
            Err((RefuseCode::ClusterUnavailable, message))
        }
    }
}

/// Frees everything the session holds, then marks it finished: its
/// streams and forwards, its exports at its VIP (before the VIP is free: a
/// client that gets it next must not inherit them), its VIP's claim (before
/// the VIP is free here: a session of this node that takes it next claims
/// it anew), its place in the state, its domain's claim, and last its
/// client's (a node waiting to take the client over finds its domain and
/// VIP free once it has the client).
pub(crate) async fn release(shared: &Shared, session: &Arc<Session>) {
    let ports = session.wind_down().await;
    crate::vlan::export(shared, session, false).await;
    let cluster = shared.cluster.as_ref();
    if let (Some(c), Some(())) = (cluster, session.vip_claimed.get()) {
        c.release(&Claimed::Vip(session.vip)).await;
    }
    shared.state().remove(session, ports);
    if let (Some(c), Some(())) = (cluster, session.claimed.get()) {
        c.release(&Claimed::Domain(session.domain.clone())).await;
    }
    if let (Some(c), Some(())) = (cluster, session.client_claimed.get()) {
        c.release(&Claimed::Client(client_key(&session.client_id))).await;
    }
    shared.publish_names();
    session.finished.cancel();
    debug!("session resources released");
}

/// Who serves `VIP:port` (the original destination of a connection or
/// datagram to it) for transport `p`.
pub(crate) enum Holder {
    /// A session of this server: it, and what its client dials there.
    Here(Arc<Session>, SocketAddr),
    /// Another node of the cluster, whose client holds the VIP.
    Node(String),
}

impl Holder {
    /// The holder of `dst`: this server's session holding the VIP (if it
    /// exports the port for `p`), else the node whose client holds it.
    pub(crate) fn of(shared: &Shared, dst: SocketAddr, p: StreamProtocol) -> Option<Holder> {
        let SocketAddr::V4(dst) = dst else { return None };
        if let Some(session) = shared.state().by_vip(*dst.ip()) {
            let target = *session.exports.get(&(p, dst.port()))?;
            return Some(Holder::Here(session, target));
        }
        let routes = shared.cluster.as_ref()?.routes();
        let (node, ports) = routes.vips.get(dst.ip())?;
        let proto = crate::vlan::proto(p);
        ports.iter().any(|&(q, port)| q == proto && port == dst.port()).then(|| Holder::Node(node.clone()))
    }

    /// Only a session of this server (a connection another node carried
    /// here is never carried on).
    pub(crate) fn here(
        shared: &Shared,
        vip: Ipv4Addr,
        port: u16,
        p: StreamProtocol,
    ) -> Option<(Arc<Session>, SocketAddr)> {
        match Holder::of(shared, SocketAddr::from((vip, port)), p)? {
            Holder::Here(s, target) => Some((s, target)),
            Holder::Node(_) => None,
        }
    }
}
