//! Which server to dial. `serverAddr` may list several (the nodes of a
//! cluster, or a standby), and each name may resolve to several addresses.
//! A client tries them in order, starting after the server whose session it
//! last lost, each address under a short deadline of its own, so a node
//! that is down costs seconds, not the whole handshake timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opennotr_transport::{timed, TransportError};

/// The most one address may take to answer when there are others to try:
/// a host that is down answers nothing, and waiting out the handshake
/// timeout on it would keep the client from the live ones.
const PER_ADDRESS: Duration = Duration::from_secs(3);

/// The configured servers, and where the next attempt starts.
#[derive(Debug)]
pub(crate) struct Servers {
    list: Vec<String>,
    start: AtomicUsize,
}

impl Servers {
    pub(crate) fn new(list: Vec<String>) -> Self {
        Servers { list, start: AtomicUsize::new(0) }
    }

    /// The server at `i` of the list.
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.list[i]
    }

    /// The session on server `i` ended: the next attempt starts with the
    /// server after it (the same one when it is the only one).
    pub(crate) fn lost(&self, i: usize) {
        self.start.store((i + 1) % self.list.len().max(1), Ordering::Relaxed);
    }

    /// Every address to try, in order: each server's from its name, the
    /// list turned to begin where the next attempt starts. A name that does
    /// not resolve is passed over; when none does, its error is the answer.
    pub(crate) async fn candidates(&self, limit: Duration) -> Result<Vec<(usize, SocketAddr)>, TransportError> {
        let start = self.start.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let mut last = None;
        // A resolver that hangs on one name must not keep the others waiting.
        let each = if self.list.len() > 1 { limit.min(PER_ADDRESS) } else { limit };
        for k in 0..self.list.len() {
            let i = (start + k) % self.list.len();
            let name = self.list[i].as_str();
            match timed(each, "resolving the server", async { Ok(tokio::net::lookup_host(name).await?) }).await {
                Ok(addrs) => out.extend(addrs.map(|a| (i, a))),
                Err(e) => last = Some(e),
            }
        }
        match (out.is_empty(), last) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(io::Error::other(format!("{} has no address", self.list.join(", "))).into()),
            (false, _) => Ok(out),
        }
    }

    /// The first of `candidates` that `connect` reaches, and its server's
    /// index. One address gets the whole `limit`, as it always did; several
    /// get [`PER_ADDRESS`] each at most. When none answers, the error names
    /// each address and why.
    pub(crate) async fn first<T, F, Fut>(
        &self,
        candidates: &[(usize, SocketAddr)],
        limit: Duration,
        step: &'static str,
        mut connect: F,
    ) -> Result<(usize, SocketAddr, T), TransportError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        if let [(i, addr)] = candidates {
            return timed(limit, step, connect(*addr)).await.map(|t| (*i, *addr, t));
        }
        let each = limit.min(PER_ADDRESS);
        let mut why = Vec::new();
        for &(i, addr) in candidates {
            match timed(each, step, connect(addr)).await {
                Ok(t) => return Ok((i, addr, t)),
                Err(e) => why.push(format!("{} ({addr}): {e}", self.list[i])),
            }
        }
        Err(io::Error::other(format!("no server answered: {}", why.join("; "))).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn tries_in_order_from_after_the_server_lost() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let servers = Servers::new(vec![dead_addr, live.local_addr().unwrap().to_string()]);
        let connect = |a: SocketAddr| async move { Ok(TcpStream::connect(a).await?) };
        let c = servers.candidates(Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
        let (i, _, _) = servers.first(&c, Duration::from_secs(5), "connecting", connect).await.unwrap();
        assert_eq!(i, 1, "the dead one is passed over");
        servers.lost(1);
        let c = servers.candidates(Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1], "after the last, the first");
        servers.lost(0);
        let c = servers.candidates(Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 0]);
    }

    #[tokio::test]
    async fn says_why_each_server_failed() {
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = dead.local_addr().unwrap().to_string();
        drop(dead);
        let dead2 = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let b = dead2.local_addr().unwrap().to_string();
        drop(dead2);
        let servers = Servers::new(vec![a.clone(), b.clone()]);
        let c = servers.candidates(Duration::from_secs(5)).await.unwrap();
        let connect = |a: SocketAddr| async move { Ok(TcpStream::connect(a).await?) };
        let e = servers.first(&c, Duration::from_secs(5), "connecting", connect).await.unwrap_err().to_string();
        assert!(e.starts_with("no server answered") && e.contains(&a) && e.contains(&b), "{e}");
    }
}
