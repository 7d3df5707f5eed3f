//! What the control port remembers per source (an IPv4 address, an IPv6
//! /64): its connections not yet authenticated, its live sessions, and its
//! failed handshakes with the penalty they earned.
//!
//! SPAKE2 stops offline guessing of a key, not online guessing: every
//! handshake is one guess. After `limits.authFailures` failures a source's
//! new handshakes are refused for `limits.authPenalty`, doubling with each
//! penalty up to `limits.authPenaltyMax` (as OpenSSH's PerSourcePenalties
//! do), before any cryptography. Data channels are never penalized: they
//! carry a MAC under a session key, and a client behind the same address
//! as a guesser keeps its streams.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opennotr_config::Limits;

/// How long a source must go without failing for its penalties to start
/// again from `limits.authPenalty`.
const FORGET: Duration = Duration::from_secs(24 * 3600);
use opennotr_transport::Source;

/// What the penalty and per-source caps count, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct SourceStats {
    /// Failed handshakes (wrong key, garbage, silence after the challenge).
    pub(crate) failures: AtomicU64,
    /// Penalties started.
    pub(crate) penalties: AtomicU64,
    /// Connections closed at once: their source had as many unauthenticated
    /// connections as it may.
    pub(crate) refused_source: AtomicU64,
    /// Connections closed at once: four times `maxHandshakes` were waiting.
    pub(crate) refused_busy: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Live {
    unauthenticated: usize,
    sessions: usize,
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    /// Failures since the last penalty.
    failures: u32,
    /// Penalties served; the next one lasts `authPenalty · 2^level`.
    level: u32,
    /// Refused until then.
    until: Option<Instant>,
    last_failure: Instant,
}

#[derive(Debug)]
struct Inner {
    /// Sources with a connection or a session; an entry leaves with its
    /// last one, so this holds at most as many entries as connections.
    live: HashMap<Source, Live>,
    /// Sources that failed; at most `limits.penaltySources` entries.
    penalties: HashMap<Source, Penalty>,
    limits: Limits,
}

#[derive(Debug)]
pub(crate) struct Sources {
    inner: Mutex<Inner>,
    pub(crate) stats: SourceStats,
}

/// An unauthenticated connection's place in its source's count.
#[derive(Debug)]
pub(crate) struct Unauthenticated {
    sources: Arc<Sources>,
    source: Source,
    /// Its source had a live session when it came.
    pub(crate) trusted: bool,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.sources.leave(self.source, |l| l.unauthenticated -= 1);
    }
}

/// A live session's mark on its source: while it lasts, the source's data
/// channels are not held to the per-source cap.
#[derive(Debug)]
pub(crate) struct SessionMark {
    sources: Arc<Sources>,
    source: Source,
}

impl Drop for SessionMark {
    fn drop(&mut self) {
        self.sources.leave(self.source, |l| l.sessions -= 1);
    }
}

impl Sources {
    pub(crate) fn new(limits: &Limits) -> Arc<Sources> {
        Arc::new(Sources {
            inner: Mutex::new(Inner { live: HashMap::new(), penalties: HashMap::new(), limits: limits.clone() }),
            stats: SourceStats::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New limits (a reload): they apply to the next connection and the
    /// next failure; penalties already running keep their end.
    pub(crate) fn set_limits(&self, limits: &Limits) {
        self.lock().limits = limits.clone();
    }

    fn leave(&self, source: Source, f: impl FnOnce(&mut Live)) {
        let mut inner = self.lock();
        if let Some(l) = inner.live.get_mut(&source) {
            f(l);
            if l.unauthenticated == 0 && l.sessions == 0 {
                inner.live.remove(&source);
            }
        }
    }

    /// Counts a new connection from `ip` until it authenticates or closes,
    /// or refuses it (`None`): its source has `limits.maxHandshakesPerIp`
    /// unauthenticated connections already. A source with a live session
    /// may have up to `limits.maxHandshakes`: its client's data channels
    /// come in bursts.
    pub(crate) fn unauthenticated(self: &Arc<Self>, ip: IpAddr) -> Option<Unauthenticated> {
        let source = Source::of(ip);
        let mut inner = self.lock();
        let (per_source, overall) = (inner.limits.max_handshakes_per_ip, inner.limits.max_handshakes);
        let live = inner.live.entry(source).or_default();
        let cap = if live.sessions > 0 { overall.max(per_source) } else { per_source };
        if live.unauthenticated >= cap {
            if live.unauthenticated == 0 && live.sessions == 0 {
                inner.live.remove(&source);
            }
            self.stats.refused_source.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        live.unauthenticated += 1;
        Some(Unauthenticated { sources: self.clone(), source, trusted: live.sessions > 0 })
    }

    /// Marks a session of `ip` live until the mark is dropped.
    pub(crate) fn session(self: &Arc<Self>, ip: IpAddr) -> SessionMark {
        let source = Source::of(ip);
        self.lock().live.entry(source).or_default().sessions += 1;
        SessionMark { sources: self.clone(), source }
    }

    /// How long `ip`'s source is still refused, if it is.
    pub(crate) fn penalized(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let inner = self.lock();
        let until = inner.penalties.get(&Source::of(ip))?.until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Counts a failed handshake from `ip`. Returns the source and the
    /// penalty when this failure starts one (to be logged once).
    pub(crate) fn failed(&self, ip: IpAddr) -> Option<(Source, Duration)> {
        self.failed_at(ip, Instant::now())
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) -> Option<(Source, Duration)> {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let source = Source::of(ip);
        let mut inner = self.lock();
        let limits = &inner.limits;
        let (threshold, first, max, room) =
            (limits.auth_failures, limits.auth_penalty, limits.auth_penalty_max, limits.penalty_sources);
        if threshold == 0 {
            return None;
        }
        if !inner.penalties.contains_key(&source) && inner.penalties.len() >= room {
            make_room(&mut inner.penalties, room, now);
        }
        let p =
            inner.penalties.entry(source).or_insert(Penalty { failures: 0, level: 0, until: None, last_failure: now });
        if p.until.is_some_and(|u| u > now) {
            // A handshake that began before the penalty did.
            return None;
        }
        // A source quiet for a day starts over. Not sooner: an attacker
        // who waited out a short forgetting period would get the cheap
        // first penalties again, and more guesses than by keeping on.
        if now.duration_since(p.last_failure) > FORGET.max(max.saturating_mul(2)) {
            p.level = 0;
        }
        p.failures += 1;
        p.last_failure = now;
        if p.failures < threshold {
            return None;
        }
        let penalty = first.saturating_mul(1u32 << p.level.min(20)).min(max);
        p.until = Some(now + penalty);
        p.level = p.level.saturating_add(1);
        p.failures = 0;
        self.stats.penalties.fetch_add(1, Ordering::Relaxed);
        Some((source, penalty))
    }

    /// A successful handshake from `ip`: its failures so far are forgiven
    /// (not its penalty level).
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        if let Some(p) = self.lock().penalties.get_mut(&Source::of(ip)) {
            p.failures = 0;
        }
    }

    /// Sources refused now.
    pub(crate) fn penalized_count(&self) -> usize {
        let now = Instant::now();
        self.lock().penalties.values().filter(|p| p.until.is_some_and(|u| u > now)).count()
    }
}

/// Frees room in a full penalty table: first every source not refused now
/// (they lose failures short of a penalty, and whoever fills the table
/// with fresh sources to do that pays a failed handshake per source),
/// then, if every source is refused, the half whose penalties end first.
fn make_room(penalties: &mut HashMap<Source, Penalty>, room: usize, now: Instant) {
    penalties.retain(|_, p| p.until.is_some_and(|u| u > now));
    if penalties.len() < room {
        return;
    }
    let mut ends: Vec<Instant> = penalties.values().filter_map(|p| p.until).collect();
    let mid = ends.len() / 2;
    let (_, cut, _) = ends.select_nth_unstable(mid);
    let cut = *cut;
    penalties.retain(|_, p| p.until.is_some_and(|u| u > cut));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(failures: u32, per_ip: usize) -> Limits {
        Limits {
            auth_failures: failures,
            max_handshakes_per_ip: per_ip,
            max_handshakes: 10,
            auth_penalty: Duration::from_secs(30),
            auth_penalty_max: Duration::from_secs(100),
            penalty_sources: 4,
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_earn_doubling_penalties_per_source() {
        let s = Sources::new(&limits(3, 4));
        let a = ip("192.0.2.1");
        assert_eq!(s.failed(a), None);
        assert_eq!(s.failed(a), None);
        assert_eq!(s.penalized(a), None);
        assert_eq!(s.failed(a), Some((Source::of(a), Duration::from_secs(30))));
        assert!(s.penalized(a).is_some_and(|d| d <= Duration::from_secs(30) && d > Duration::from_secs(20)));
        // Another source, and another /64 of IPv6, are not affected.
        assert_eq!(s.penalized(ip("192.0.2.2")), None);
        // Failures of handshakes begun before the penalty add nothing.
        assert_eq!(s.failed(a), None);
        // The next penalty doubles, up to the cap.
        s.lock().penalties.get_mut(&Source::of(a)).unwrap().until = Some(Instant::now());
        for _ in 0..2 {
            assert_eq!(s.failed(a), None);
        }
        assert_eq!(s.failed(a), Some((Source::of(a), Duration::from_secs(60))));
        s.lock().penalties.get_mut(&Source::of(a)).unwrap().until = Some(Instant::now());
        for _ in 0..2 {
            s.failed(a);
        }
        assert_eq!(s.failed(a), Some((Source::of(a), Duration::from_secs(100))));
        assert_eq!(s.stats.penalties.load(Ordering::Relaxed), 3);
        assert_eq!(s.penalized_count(), 1);
    }

    #[test]
    fn a_pause_shorter_than_a_day_does_not_reset_the_penalty() {
        let s = Sources::new(&limits(1, 4));
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        let hours = |h: u64| t0 + Duration::from_secs(h * 3600);
        assert_eq!(s.failed_at(a, t0), Some((Source::of(a), Duration::from_secs(30))));
        assert_eq!(s.failed_at(a, hours(2)), Some((Source::of(a), Duration::from_secs(60))), "two hours quiet");
        assert_eq!(s.failed_at(a, hours(20)), Some((Source::of(a), Duration::from_secs(100))), "eighteen");
        assert_eq!(s.failed_at(a, hours(45)), Some((Source::of(a), Duration::from_secs(30))), "a day quiet");
    }

    #[test]
    fn success_forgives_failures_and_zero_turns_penalties_off() {
        let s = Sources::new(&limits(2, 4));
        let a = ip("2001:db8::1");
        s.failed(a);
        s.succeeded(a);
        assert_eq!(s.failed(ip("2001:db8::ffff")), None, "same /64, one failure after the success");
        assert!(s.failed(a).is_some());
        let off = Sources::new(&limits(0, 4));
        for _ in 0..100 {
            assert_eq!(off.failed(a), None);
        }
        assert_eq!(off.penalized(a), None);
    }

    #[test]
    fn the_penalty_table_is_bounded_and_keeps_refused_sources() {
        let s = Sources::new(&limits(1, 4));
        let refused = ip("198.51.100.1");
        assert!(s.failed(refused).is_some());
        for i in 0..1000u32 {
            // A fresh source fails once: with threshold 1, each is refused.
            s.failed(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            assert!(s.lock().penalties.len() <= 4);
        }
        // Half the refused sources are dropped when all are; the last
        // ones to start are kept.
        assert!(s.penalized(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 999))).is_some());
        let s = Sources::new(&limits(3, 4));
        assert!(s.failed(refused).is_none());
        for i in 0..10u32 {
            s.failed(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(s.lock().penalties.len() <= 4);
    }

    #[test]
    fn unauthenticated_connections_are_capped_per_source_unless_it_has_a_session() {
        let s = Sources::new(&limits(3, 2));
        let a = ip("192.0.2.1");
        let c1 = s.unauthenticated(a).unwrap();
        let _c2 = s.unauthenticated(a).unwrap();
        assert!(s.unauthenticated(a).is_none());
        assert!(s.unauthenticated(ip("192.0.2.2")).is_some());
        drop(c1);
        let _c3 = s.unauthenticated(a).unwrap();
        // A source with a live session gets maxHandshakes (10).
        let mark = s.session(a);
        let burst: Vec<_> = (0..8).map(|_| s.unauthenticated(a).unwrap()).collect();
        assert!(s.unauthenticated(a).is_none());
        drop((burst, mark, _c3, _c2));
        assert!(s.lock().live.is_empty(), "entries leave with their last connection");
        assert_eq!(s.stats.refused_source.load(Ordering::Relaxed), 2);
    }
}
