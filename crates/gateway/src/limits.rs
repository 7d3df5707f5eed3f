//! Caps on the visitor connections of one gateway listener: in all, and
//! per source (an IPv4 address, or an IPv6 /64, which one host usually
//! has whole), so that one host holding idle or slow connections cannot
//! take every slot from the others.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use opennotr_transport::Source;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener has as many connections as it may.
    Listener,
    /// The connection's source has as many as it may.
    Source,
}

/// The connections of one listener.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    /// The listen address as configured.
    pub(crate) listen: SocketAddr,
    /// Which port it is (`http`, `h2c`, `tls`), for the metrics.
    pub(crate) kind: &'static str,
    /// The address bound (the metrics' label).
    bound: std::sync::OnceLock<SocketAddr>,
    max_total: AtomicUsize,
    max_per_source: AtomicUsize,
    open: AtomicUsize,
    /// Open connections per source; a source leaves with its last one, so
    /// the map holds at most as many entries as there are connections.
    sources: Mutex<HashMap<Source, usize>>,
    refused_listener: AtomicU64,
    refused_source: AtomicU64,
}

/// An admitted connection: its slot is given back when this is dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    limits: Arc<ConnLimits>,
    source: Source,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut sources = self.limits.lock();
        if let Some(n) = sources.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.source);
            }
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnLimits {
    pub(crate) fn new(
        kind: &'static str,
        listen: SocketAddr,
        max_total: usize,
        max_per_source: usize,
    ) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            listen,
            kind,
            bound: std::sync::OnceLock::new(),
            max_total: AtomicUsize::new(max_total),
            max_per_source: AtomicUsize::new(max_per_source),
            open: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
            refused_listener: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, usize>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New caps (a reload); connections over them stay, new ones wait for
    /// room.
    pub(crate) fn set(&self, max_total: usize, max_per_source: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_source.store(max_per_source, Ordering::Relaxed);
    }

    /// Takes a slot for a connection from `ip`.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let source = Source::of(ip);
        let mut sources = self.lock();
        if self.open.load(Ordering::Relaxed) >= self.max_total.load(Ordering::Relaxed) {
            self.refused_listener.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Listener);
        }
        let n = sources.entry(source).or_insert(0);
        if *n >= self.max_per_source.load(Ordering::Relaxed) {
            if *n == 0 {
                sources.remove(&source);
            }
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Source);
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { limits: self.clone(), source })
    }

    pub(crate) fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// The address bound, else the one configured.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.bound.get().copied().unwrap_or(self.listen)
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// (connections open, refused because the listener was full, refused
    /// because their source was).
    pub(crate) fn counts(&self) -> (usize, u64, u64) {
        (self.open(), self.refused_listener.load(Ordering::Relaxed), self.refused_source.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_listener_and_per_source() {
        let l = ConnLimits::new("http", "127.0.0.1:80".parse().unwrap(), 3, 2);
        let a = "192.0.2.1".parse().unwrap();
        let b = "192.0.2.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refused::Source);
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refused::Listener);
        drop(a1);
        let _a3 = l.admit(a).unwrap();
        assert_eq!(l.counts(), (3, 1, 1));
    }

    #[test]
    fn the_source_table_holds_only_open_connections() {
        let l = ConnLimits::new("http", "127.0.0.1:80".parse().unwrap(), 1000, 0);
        for i in 0..100u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            assert!(l.admit(ip).is_err());
        }
        assert!(l.lock().is_empty());
        let l = ConnLimits::new("http", "127.0.0.1:80".parse().unwrap(), 1000, 5);
        let held: Vec<_> = (0..100u32).map(|i| l.admit(IpAddr::from(std::net::Ipv4Addr::from(i))).unwrap()).collect();
        assert_eq!(l.lock().len(), 100);
        drop(held);
        assert!(l.lock().is_empty());
        assert_eq!(l.open(), 0);
    }
}
