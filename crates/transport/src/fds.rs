//! File descriptors: the process's limit, raised at start, and the reserve
//! that public listeners leave free, so that when a flood of visitors takes
//! every descriptor it may, the control port and the admin API still
//! answer.
//!
//! The check costs nothing: Unix hands out the lowest free descriptor
//! (POSIX requires it of `accept`), so an accepted socket numbered `n`
//! means descriptors `0..n` are all in use.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

/// Which listener a connection came in on, most easily refused first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Visitors: the tcp plugin, the gateway, the virtual LAN. Refused
    /// once fewer than the whole reserve is free.
    Public,
    /// Clients and their data channels: refused once fewer than half of
    /// the reserve is free.
    Control,
    /// The operator's admin API: never refused by the reserve.
    Admin,
}

/// The soft limit as last read or set; 0 = not read yet.
static LIMIT: AtomicU64 = AtomicU64::new(0);
static RESERVE: AtomicUsize = AtomicUsize::new(128);
static REFUSED_PUBLIC: AtomicU64 = AtomicU64::new(0);
static REFUSED_CONTROL: AtomicU64 = AtomicU64::new(0);
/// Unix seconds of the last warning, so a flood logs once a minute.
static WARNED_AT: AtomicU64 = AtomicU64::new(0);

/// The largest soft limit asked for when the hard limit is unlimited:
/// Linux refuses more than `fs.nr_open` (1 Mi by default).
const UNLIMITED_CAP: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime does
/// at start, and returns (before, after). A relay holds two descriptors
/// per proxied connection; the common default soft limit of 1024 would cap
/// it at a few hundred visitors.
pub fn raise_limit() -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        let target = if hard == RLIM_INFINITY { UNLIMITED_CAP.max(soft) } else { hard };
        if soft < target {
            setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
        }
        let (now, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
        LIMIT.store(now, Ordering::Relaxed);
        Ok((soft, now))
    }
    #[cfg(not(unix))]
    Ok((0, 0))
}

/// The soft limit on open descriptors (`u64::MAX` where there is none).
pub fn limit() -> u64 {
    match LIMIT.load(Ordering::Relaxed) {
        0 => {
            #[cfg(unix)]
            let l = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(u64::MAX);
            #[cfg(not(unix))]
            let l = u64::MAX;
            LIMIT.store(l, Ordering::Relaxed);
            l
        }
        l => l,
    }
}

/// Sets how many descriptors public listeners leave free (`limits.fdReserve`).
/// At most a quarter of the limit is reserved, so a small limit still
/// serves visitors.
pub fn set_reserve(n: usize) {
    RESERVE.store(n, Ordering::Relaxed);
}

/// How many descriptors a listener of `priority` must leave free under
/// `limit` and `reserve`.
fn keep(limit: u64, reserve: u64, priority: Priority) -> u64 {
    let reserve = reserve.min(limit / 4);
    match priority {
        Priority::Public => reserve,
        Priority::Control => reserve / 2,
        Priority::Admin => 0,
    }
}

/// Whether a connection accepted on descriptor `fd` may stay open; counts
/// and (once a minute) logs a refusal.
pub(crate) fn admit(fd: u64, priority: Priority) -> bool {
    let limit = limit();
    let keep = keep(limit, RESERVE.load(Ordering::Relaxed) as u64, priority);
    if fd < limit.saturating_sub(keep) {
        return true;
    }
    let counter = match priority {
        Priority::Public => &REFUSED_PUBLIC,
        Priority::Control => &REFUSED_CONTROL,
        Priority::Admin => return true,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let last = WARNED_AT.load(Ordering::Relaxed);
    if now >= last + 60 && WARNED_AT.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        warn!(
            limit,
            reserve = keep,
            ?priority,
            "out of file descriptors but the reserve: refusing new connections on this kind of listener \
             (raise the process's limit, e.g. LimitNOFILE= in the systemd unit)"
        );
    }
    false
}

/// What `/metrics` shows of descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdStats {
    /// The soft limit.
    pub limit: u64,
    /// Descriptors open now, where the OS tells (`/proc/self/fd`).
    pub open: Option<u64>,
    /// Public connections closed at once to keep the reserve.
    pub refused_public: u64,
    /// Control-port connections closed at once to keep the reserve.
    pub refused_control: u64,
}

/// Descriptors now.
pub fn stats() -> FdStats {
    FdStats {
        limit: limit(),
        // One descriptor is the directory being read.
        open: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count().saturating_sub(1) as u64),
        refused_public: REFUSED_PUBLIC.load(Ordering::Relaxed),
        refused_control: REFUSED_CONTROL.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_kept_by_priority() {
        let free_below = |limit, reserve, p| limit - keep(limit, reserve, p);
        assert_eq!(free_below(1000, 100, Priority::Public), 900);
        assert_eq!(free_below(1000, 100, Priority::Control), 950);
        assert_eq!(free_below(1000, 100, Priority::Admin), 1000);
        // At most a quarter of a small limit is reserved.
        assert_eq!(free_below(100, 128, Priority::Public), 75);
        assert_eq!(free_below(100, 0, Priority::Public), 100);
    }

    #[test]
    fn a_low_descriptor_is_admitted_and_the_limit_is_read() {
        assert!(limit() > 0);
        assert!(admit(3, Priority::Public));
        assert!(stats().limit == limit());
    }
}
