//! Domains another node of a cluster serves. The server gives the gateway
//! an [`Elsewhere`] (in [`opennotr_plugin::ServerInfo`]): which node serves a name, and a connection to that
//! node's gateway. A visitor's connection for such a name is carried there
//! whole, from its first byte, and the owning node serves it as if the
//! visitor had come to it: its certificates, its access rules, its pool of
//! streams to the client. So nothing about a forward (rules, password
//! hashes, certificates) has to leave the node that holds it, and the
//! connection crosses one hop.
//!
//! What decides where a connection goes is its first request's `Host` on
//! the `http` port, and the ClientHello's SNI on the TLS port (before any
//! TLS is terminated). A connection carried here from another node is not
//! carried again: a later request on it for a name this node does not
//! serve gets this node's answer (404), so no connection loops.

use std::io;
use std::net::SocketAddr;

use opennotr_plugin::{CarriedPort, Elsewhere};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

/// Carries `visitor` (with what was read of it, replayed first) to
/// `node`'s gateway port `port`, and copies both ways until either side
/// closes. `Err`: no connection to the node could be made; nothing was
/// written to the visitor.
pub(crate) async fn carry<S>(
    mut visitor: S,
    elsewhere: &dyn Elsewhere,
    node: &str,
    port: CarriedPort,
    peer: SocketAddr,
    reached: Option<SocketAddr>,
    kill: &opennotr_plugin::CancellationToken,
) -> Result<(), (S, io::Error)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut there = match elsewhere.carry(node, port, peer, reached).await {
        Ok(s) => s,
        Err(e) => return Err((visitor, e)),
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut visitor, &mut there) => match r {
            Ok((up, down)) => debug!(node, up, down, "carried connection closed"),
            Err(e) => debug!(node, error = %e, "carried connection ended with an error"),
        },
        _ = kill.cancelled() => debug!(node, "server stopped; carried connection cut"),
    }
    let _ = there.shutdown().await;
    Ok(())
}
