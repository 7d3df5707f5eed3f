//! An accept loop that survives transient errors.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::fds::{self, Priority};

const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// A public listener on `addr` (the tcp plugin's ports, the gateway's).
/// `SO_REUSEADDR` only skips the TIME_WAIT of closed connections, so a
/// restarted server binds at once; it does not let two listeners share a
/// port on Linux.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Accepts connections until stopped. A failed accept (out of file
/// descriptors, a connection reset before it was accepted) waits, doubling
/// from 5 ms to 1 s, and tries again: a listener never dies of one error.
///
/// A connection that would eat into the file-descriptor reserve its
/// listener's [`Priority`] must leave free is closed at once.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    backoff: Duration,
    priority: Priority,
}

impl Acceptor {
    /// Accepts visitors on `listener` ([`Priority::Public`]).
    pub fn new(listener: TcpListener) -> Self {
        Self::with_priority(listener, Priority::Public)
    }

    /// Accepts on `listener`, keeping the reserve as `priority` must.
    pub fn with_priority(listener: TcpListener, priority: Priority) -> Self {
        Acceptor { listener, backoff: FIRST_BACKOFF, priority }
    }

    /// The next connection, or `None` once `stop` is cancelled.
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = stop.cancelled() => return None,
            };
            match accepted {
                Ok(conn) => {
                    self.backoff = FIRST_BACKOFF;
                    if !fd_admits(&conn.0, self.priority) {
                        continue;
                    }
                    crate::tune_tcp(&conn.0);
                    return Some(conn);
                }
                Err(e) => {
                    warn!(error = %e, backoff_ms = self.backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff) => {}
                        _ = stop.cancelled() => return None,
                    }
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(unix)]
fn fd_admits(s: &TcpStream, priority: Priority) -> bool {
    use std::os::fd::AsRawFd;
    fds::admit(s.as_raw_fd() as u64, priority)
}

#[cfg(not(unix))]
fn fd_admits(_: &TcpStream, _: Priority) -> bool {
    true
}
