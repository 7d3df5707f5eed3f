//! The listener: accept loop, one HTTP/1.1 connection task each, graceful
//! shutdown.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use opennotr_transport::{Acceptor, Priority};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::api::{handle, Shared};
use crate::auth::{Token, TokenHandle};
use crate::Backend;

/// Connections served at once; more wait in the listen backlog. An
/// operator, a dashboard or two and a Prometheus scraper need a handful.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The admin HTTP API and dashboard, bound and ready to [`run`](AdminServer::run).
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Binds `listen`. Every request but `/healthz` and the dashboard's
    /// static files must carry `Authorization: Bearer <token>`.
    ///
    /// Fails with `InvalidInput` if `token` is empty.
    pub async fn bind(listen: SocketAddr, token: String, backend: Arc<dyn Backend>) -> std::io::Result<AdminServer> {
        let token = Token::new(&token).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the admin token is empty or no randomness is available",
            )
        })?;
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        Ok(AdminServer { listener, local_addr, shared: Arc::new(Shared { token: TokenHandle::new(token), backend }) })
    }

    /// What replaces the token while the server runs.
    pub fn token_handle(&self) -> TokenHandle {
        self.shared.token.clone()
    }

    /// The bound address (the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets
    /// requests in flight finish for up to 5 s, and drops what is left.
    pub async fn run(self, shutdown: CancellationToken) {
        let AdminServer { listener, local_addr, shared } = self;
        info!(addr = %local_addr, "listening for admin requests");
        let mut acceptor = Acceptor::with_priority(listener, Priority::Admin);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = GracefulShutdown::new();
        let mut conns = JoinSet::new();
        loop {
            let next = async {
                // Never closed, so acquiring only waits.
                let slot = slots.clone().acquire_owned().await.ok()?;
                let (stream, peer) = acceptor.next(&shutdown).await?;
                Some((slot, stream, peer))
            };
            tokio::select! {
                Some(_) = conns.join_next() => continue,
                accepted = next => {
                    let Some((slot, stream, peer)) = accepted else { break };
                    let shared = shared.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(req, peer, shared).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    conns.spawn(
                        async move {
                            if let Err(e) = conn.await {
                                debug!(error = %e, "admin connection ended with an error");
                            }
                            drop(slot);
                        }
                        .instrument(info_span!("admin", %peer)),
                    );
                }
                _ = shutdown.cancelled() => break,
            }
        }
        // Closing the listener first: new connections are refused at once
        // rather than left in the backlog for the grace period.
        drop(acceptor);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
            warn!(open = conns.len(), "admin connections still busy after the grace period; dropping them");
        }
        conns.shutdown().await;
        info!(addr = %local_addr, "admin listener stopped");
    }
}
