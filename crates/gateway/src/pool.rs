//! Connections to clients' services, kept per route for later requests.
//!
//! A route (one forward of one session) has one [`RouteEntry`]: idle
//! HTTP/1.1 connections of the hyper path, idle streams of the direct path,
//! its shared HTTP/2 connection, and the multiplexed connection the direct
//! path opens its streams on. The entry goes when the route's session ends
//! (a task per route waits for it), when the pool is closed (its plugin was
//! replaced), or piece by piece when its connections close or stay unused
//! for [`POOL_IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::{http1, http2};
use opennotr_plugin::{CancellationToken, OpenError, StreamProtocol, TunnelStream, Visitor};
use opennotr_transport::mux::Mux;
use tracing::debug;

use crate::error::GatewayError;
use crate::io::UpStream;
use crate::route::Upstream;

/// Errors of the bodies the hyper path sends and receives.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of a request or response on the hyper path.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Idle connections (or streams) kept per route and kind, at most.
const POOL_MAX_IDLE: usize = 256;
/// How long an idle connection to a client's service is kept.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A route: the same forward of the same session (the tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RouteKey {
    tunnel: usize,
    forward: u64,
    target: SocketAddr,
}

impl RouteKey {
    fn of(up: &Upstream) -> RouteKey {
        RouteKey { tunnel: Arc::as_ptr(&up.tunnel) as *const () as usize, forward: up.forward, target: up.target }
    }
}

struct Idle<T> {
    conn: T,
    since: Instant,
}

struct Muxed {
    mux: Mux,
    last_used: Instant,
}

/// Everything kept for one route.
struct RouteEntry {
    kill: CancellationToken,
    /// Cancelled when the entry goes (its task waiting for the session's
    /// end goes with it).
    gone: CancellationToken,
    /// Idle HTTP/1.1 connections of the hyper path, most recently used last.
    h1: Vec<Idle<http1::SendRequest<Body>>>,
    /// Idle streams of the direct path, most recently used last.
    direct: Vec<Idle<UpStream>>,
    /// The shared HTTP/2 connection (it multiplexes).
    h2: Option<http2::SendRequest<Body>>,
    /// The multiplexed connection the direct path opens streams on.
    mux: Option<Muxed>,
}

impl RouteEntry {
    fn close(&mut self) {
        self.gone.cancel();
        if let Some(m) = self.mux.take() {
            m.mux.close();
        }
    }

    fn is_empty(&self) -> bool {
        self.h1.is_empty() && self.direct.is_empty() && self.h2.is_none() && self.mux.is_none()
    }
}

/// Connections to clients' services (streams through their tunnels) kept
/// for later requests of the same route, so that a keep-alive visitor does
/// not cost a new tunnel stream and connection per request.
pub(crate) struct Pool {
    routes: Mutex<HashMap<RouteKey, RouteEntry>>,
    /// Per route, held while its multiplexed connection is being opened,
    /// so that concurrent first requests make one, not one each (and a
    /// slow client delays only its own routes). Gone once it is open.
    opening: Mutex<HashMap<RouteKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Cancelled by [`Pool::close`]: nothing is kept any more.
    closed: CancellationToken,
    sweeper: std::sync::Once,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("routes", &self.lock().len()).finish_non_exhaustive()
    }
}

enum Muxing {
    Stream(UpStream),
    Full,
    None,
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool {
            routes: Default::default(),
            opening: Default::default(),
            closed: CancellationToken::new(),
            sweeper: std::sync::Once::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RouteKey, RouteEntry>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every kept connection and closes the multiplexed ones; from
    /// now on nothing is kept (the plugin using the pool was replaced).
    pub(crate) fn close(&self) {
        self.closed.cancel();
        for (_, mut e) in self.lock().drain() {
            e.close();
        }
    }

    /// Runs `f` on the route's entry, made (with the task that removes it
    /// when the session ends) if there is none. `None` if the pool is
    /// closed or the session gone.
    fn with_entry<T>(self: &Arc<Self>, up: &Upstream, f: impl FnOnce(&mut RouteEntry) -> T) -> Option<T> {
        if self.closed.is_cancelled() || up.kill.is_cancelled() {
            return None;
        }
        let key = RouteKey::of(up);
        let mut routes = self.lock();
        let entry = routes.entry(key).or_insert_with(|| {
            let gone = CancellationToken::new();
            let (weak, kill, closed, ended) =
                (Arc::downgrade(self), up.kill.clone(), self.closed.clone(), gone.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = kill.cancelled() => {}
                    _ = closed.cancelled() => return,
                    _ = ended.cancelled() => return,
                }
                if let Some(pool) = weak.upgrade() {
                    if let Some(mut e) = pool.lock().remove(&key) {
                        e.close();
                    }
                }
            });
            RouteEntry { kill: up.kill.clone(), gone, h1: Vec::new(), direct: Vec::new(), h2: None, mux: None }
        });
        let out = f(entry);
        drop(routes);
        self.start_sweeper();
        Some(out)
    }

    fn get_entry<T>(&self, up: &Upstream, f: impl FnOnce(&mut RouteEntry) -> Option<T>) -> Option<T> {
        let mut routes = self.lock();
        let e = routes.get_mut(&RouteKey::of(up))?;
        if e.kill.is_cancelled() {
            return None;
        }
        f(e)
    }

    /// An idle HTTP/1.1 connection of the route, ready for a request.
    pub(crate) fn take_h1(&self, up: &Upstream) -> Option<http1::SendRequest<Body>> {
        self.get_entry(up, |e| {
            e.h1.retain(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && !c.conn.is_closed());
            // A connection whose last response body was just read may not
            // have noticed yet that it is free; it stays for a later request.
            let i = e.h1.iter().rposition(|c| c.conn.is_ready())?;
            Some(e.h1.remove(i).conn)
        })
    }

    pub(crate) fn put_h1(self: &Arc<Self>, up: &Upstream, sender: http1::SendRequest<Body>) {
        self.with_entry(up, |e| {
            e.h1.retain(|c| !c.conn.is_closed());
            if e.h1.len() < POOL_MAX_IDLE {
                e.h1.push(Idle { conn: sender, since: Instant::now() });
            }
        });
    }

    /// An idle stream of the route that still looks open.
    pub(crate) fn take_direct(&self, up: &Upstream) -> Option<UpStream> {
        loop {
            let mut idle = self.get_entry(up, |e| e.direct.pop())?;
            if idle.since.elapsed() < POOL_IDLE_TIMEOUT && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
    }

    pub(crate) fn put_direct(self: &Arc<Self>, up: &Upstream, stream: UpStream) {
        self.with_entry(up, |e| {
            if e.direct.len() < POOL_MAX_IDLE {
                e.direct.push(Idle { conn: stream, since: Instant::now() });
            }
        });
    }

    /// The route's shared HTTP/2 connection, if it is still usable.
    pub(crate) fn h2(&self, up: &Upstream) -> Option<http2::SendRequest<Body>> {
        self.get_entry(up, |e| match &e.h2 {
            Some(s) if !s.is_closed() && s.is_ready() => Some(s.clone()),
            _ => {
                e.h2 = None;
                None
            }
        })
    }

    pub(crate) fn put_h2(self: &Arc<Self>, up: &Upstream, sender: http2::SendRequest<Body>) {
        self.with_entry(up, |e| e.h2 = Some(sender));
    }

    /// A new stream to the route's service for the direct path: on the
    /// route's multiplexed connection (made on first use) if the client
    /// takes them, else a tunnel stream of its own.
    pub(crate) async fn upstream(
        self: &Arc<Self>,
        up: &Upstream,
        peer: SocketAddr,
        name: &str,
    ) -> Result<UpStream, GatewayError> {
        let plain = || open_upstream(up, StreamProtocol::Tcp, peer, name);
        if !up.tunnel.multiplexes() || self.closed.is_cancelled() {
            return plain().await.map(UpStream::Plain);
        }
        match self.open_muxed(up) {
            Muxing::Stream(s) => return Ok(s),
            // Beyond the multiplexed connection's streams, the rest get
            // data channels of their own.
            Muxing::Full => return plain().await.map(UpStream::Plain),
            Muxing::None => {}
        }
        let key = RouteKey::of(up);
        let gate = self.opening.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        let _opening = gate.lock().await;
        match self.open_muxed(up) {
            Muxing::Stream(s) => return Ok(s),
            Muxing::Full => return plain().await.map(UpStream::Plain),
            Muxing::None => {}
        }
        let opened = self.open_mux(up, peer, name).await;
        // Whoever waits already holds the gate and then finds the new
        // connection; after a failure the next request tries again.
        self.opening.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        opened
    }

    /// Opens the route's multiplexed connection and a first stream on it.
    async fn open_mux(self: &Arc<Self>, up: &Upstream, peer: SocketAddr, name: &str) -> Result<UpStream, GatewayError> {
        let mut carrier = open_upstream(up, StreamProtocol::Mux, peer, name).await?;
        opennotr_transport::limit_unsent(carrier.channel().tcp(), opennotr_transport::mux::CARRIER_UNSENT);
        let counters = carrier.take_counters();
        let mux = Mux::opener(carrier, counters);
        let stream = mux.open().map_err(|e| GatewayError::ClientGone(format!("{name}: {e}")))?;
        let kept = self.with_entry(up, |e| {
            // A connection left out of the pool would live, with its
            // tasks, until the client closed it.
            if let Some(old) = e.mux.replace(Muxed { mux, last_used: Instant::now() }) {
                old.mux.close();
            }
        });
        if kept.is_none() {
            // The pool closed or the session went meanwhile: the stream
            // serves this request, then the connection ends with it.
            debug!("multiplexed connection opened for a closed pool or a gone session");
        }
        Ok(UpStream::Muxed(stream))
    }

    /// A stream on the route's live multiplexed connection, if it has one
    /// (`Full` when it carries as many streams as it may).
    fn open_muxed(&self, up: &Upstream) -> Muxing {
        self.get_entry(up, |e| {
            let m = e.mux.as_mut()?;
            if m.mux.is_closed() {
                e.mux = None;
                return None;
            }
            m.last_used = Instant::now();
            Some(match m.mux.open() {
                Ok(s) => Muxing::Stream(UpStream::Muxed(s)),
                Err(_) => Muxing::Full,
            })
        })
        .unwrap_or(Muxing::None)
    }

    /// Starts, once, the task that drops expired and closed connections
    /// (it ends with the pool).
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            let weak = Arc::downgrade(self);
            let closed = self.closed.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(POOL_IDLE_TIMEOUT / 4) => {}
                        _ = closed.cancelled() => return,
                    }
                    let Some(pool) = weak.upgrade() else { return };
                    pool.sweep();
                }
            });
        });
    }

    fn sweep(&self) {
        // Gates left by a request dropped while it opened a connection.
        self.opening.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, g| Arc::strong_count(g) > 1);
        self.lock().retain(|_, e| {
            if e.kill.is_cancelled() {
                e.close();
                return false;
            }
            e.h1.retain(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && !c.conn.is_closed());
            e.direct.retain_mut(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && c.conn.is_reusable());
            if e.h2.as_ref().is_some_and(|s| s.is_closed()) {
                e.h2 = None;
            }
            // A multiplexed connection nobody used for the idle timeout
            // is closed; the next request opens a new one.
            if e.mux.as_ref().is_some_and(|m| {
                m.mux.is_closed() || (m.last_used.elapsed() >= POOL_IDLE_TIMEOUT && m.mux.streams() == 0)
            }) {
                if let Some(m) = e.mux.take() {
                    m.mux.close();
                }
            }
            if e.is_empty() {
                e.close();
                return false;
            }
            true
        });
    }

    #[cfg(test)]
    fn has_mux(&self, up: &Upstream) -> bool {
        self.get_entry(up, |e| e.mux.as_ref().map(|_| ())).is_some()
    }
}

/// Opens a stream through the client's tunnel to the forward's target.
pub(crate) async fn open_upstream(
    up: &Upstream,
    protocol: StreamProtocol,
    peer: SocketAddr,
    name: &str,
) -> Result<TunnelStream, GatewayError> {
    let opened = tokio::select! {
        r = up.tunnel.open_stream(protocol, up.target, Some(Visitor::new(peer))) => r,
        _ = up.kill.cancelled() => Err(OpenError::SessionClosed),
    };
    match opened {
        Ok(s) => Ok(s),
        Err(OpenError::Refused(reason)) => Err(GatewayError::ServiceRefused(reason)),
        Err(OpenError::TooManyStreams) => Err(GatewayError::TooManyStreams),
        Err(e) => {
            debug!(error = %e, "cannot open a stream to the client");
            Err(GatewayError::ClientGone(name.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opennotr_plugin::async_trait;

    /// A client that says it takes multiplexed streams (the tests put the
    /// connections in the pool themselves).
    #[derive(Debug, Default)]
    struct MuxTunnel;

    #[async_trait]
    impl opennotr_plugin::Tunnel for MuxTunnel {
        async fn open_stream(
            &self,
            _: StreamProtocol,
            _: SocketAddr,
            _: Option<opennotr_plugin::Visitor>,
        ) -> Result<TunnelStream, OpenError> {
            Err(OpenError::SessionClosed)
        }

        fn multiplexes(&self) -> bool {
            true
        }
    }

    fn route(kill: &CancellationToken) -> Upstream {
        Upstream {
            tunnel: Arc::new(MuxTunnel),
            target: "127.0.0.1:80".parse().unwrap(),
            forward: 1,
            client_id: "c".into(),
            kill: kill.clone(),
            access: None,
        }
    }

    fn mux() -> Mux {
        let (a, _b) = tokio::io::duplex(1024);
        Mux::opener(a, None)
    }

    #[tokio::test]
    async fn closing_the_pool_closes_its_multiplexed_connections() {
        let pool = Arc::new(Pool::new());
        let kill = CancellationToken::new();
        let up = route(&kill);
        let m = mux();
        pool.with_entry(&up, |e| e.mux = Some(Muxed { mux: m.clone(), last_used: Instant::now() })).unwrap();
        assert!(pool.has_mux(&up) && !m.is_closed());
        pool.close();
        assert!(m.is_closed());
        assert!(!pool.has_mux(&up));
        // Nothing is kept afterwards.
        assert!(pool.with_entry(&up, |_| ()).is_none());
    }

    #[tokio::test]
    async fn an_entry_swept_away_takes_its_task_with_it() {
        let pool = Arc::new(Pool::new());
        let kill = CancellationToken::new();
        let up = route(&kill);
        let gone = pool.with_entry(&up, |e| e.gone.clone()).unwrap();
        assert!(!gone.is_cancelled());
        // Empty: the sweep removes it, and its task ends.
        pool.sweep();
        assert!(pool.lock().is_empty());
        assert!(gone.is_cancelled());
    }

    #[tokio::test]
    async fn a_route_goes_with_its_session() {
        let pool = Arc::new(Pool::new());
        let kill = CancellationToken::new();
        let up = route(&kill);
        let m = mux();
        pool.with_entry(&up, |e| e.mux = Some(Muxed { mux: m.clone(), last_used: Instant::now() })).unwrap();
        kill.cancel();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !m.is_closed() || !pool.lock().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the route's entry went with its session");
    }
}
