//! Bandwidth limits: a token bucket per direction, shared by every stream
//! and UDP flow it applies to (one client's, or one forward's).
//!
//! Streams are paced, never dropped: a stream may take more than its
//! bucket holds (one read or write, at most a relay buffer), which leaves
//! the bucket in debt, and its next read or write waits until the debt is
//! paid. So a transfer of N bytes at rate R takes at least
//! `(N - burst - buffer) / R`, whatever the sizes of its reads. UDP
//! datagrams are policed instead: one the bucket cannot pay for at once is
//! dropped (and counted), since holding datagrams back would only add delay
//! to a protocol that expects loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least burst of a bucket: one relay buffer, so one full read is never
/// held back on an idle bucket, and one largest datagram (64 KiB) always fits.
pub const MIN_BURST: u64 = 64 * 1024;

/// The longest single wait a bucket asks for: a rate of 1 byte/s in debt
/// by a whole buffer would otherwise ask for most of a day at once; the
/// caller waits again after it.
const MAX_WAIT: Duration = Duration::from_secs(1);

const NANOS: u128 = 1_000_000_000;

/// A token bucket: `rate` bytes a second, up to `burst` saved while idle.
/// Tokens are bytes; the balance may go below zero (debt, see the module
/// doc). All arithmetic is in 128 bits and saturates: no rate or time gap
/// overflows.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes that may pass now; negative = debt.
    tokens: i128,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// `rate` bytes a second (at least 1), with a burst of a tenth of a
    /// second's worth, but at least [`MIN_BURST`]; it starts full.
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        TokenBucket::with_burst(rate, (rate / 10).max(MIN_BURST), now)
    }

    /// `rate` bytes a second (at least 1) and `burst` bytes (at least 1);
    /// it starts full.
    pub fn with_burst(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        let (rate, burst) = (rate.max(1), burst.max(1));
        TokenBucket { rate, burst, state: Mutex::new(State { tokens: burst as i128, at: now }) }
    }

    /// Bytes a second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The most that may pass at once after an idle time.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn refill(&self, st: &mut State, now: Instant) {
        // A clock that went backwards (another thread's `now`) adds nothing.
        let elapsed = now.saturating_duration_since(st.at).as_nanos();
        if elapsed == 0 {
            return;
        }
        st.at = now;
        let added = elapsed.saturating_mul(self.rate as u128) / NANOS;
        let added = i128::try_from(added).unwrap_or(i128::MAX);
        st.tokens = st.tokens.saturating_add(added).min(self.burst as i128);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until the balance is no longer in debt (zero if it is not).
    pub fn wait(&self, now: Instant) -> Duration {
        let mut st = self.state();
        self.refill(&mut st, now);
        self.until_paid(st.tokens)
    }

    fn until_paid(&self, tokens: i128) -> Duration {
        if tokens >= 0 {
            return Duration::ZERO;
        }
        let debt = tokens.unsigned_abs();
        // Rounded up, so that after the wait the debt is paid.
        let nanos = (debt.saturating_mul(NANOS)).div_ceil(self.rate as u128);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(MAX_WAIT)
    }

    /// Takes `n` bytes whatever the balance (a stream's read or write that
    /// already happened); the balance may go into debt.
    pub fn charge(&self, n: u64, now: Instant) {
        let mut st = self.state();
        self.refill(&mut st, now);
        st.tokens = st.tokens.saturating_sub(n as i128);
    }

    /// Takes `n` bytes if the balance holds them; otherwise takes nothing
    /// and says no (a datagram to drop).
    pub fn try_take(&self, n: u64, now: Instant) -> bool {
        let mut st = self.state();
        self.refill(&mut st, now);
        if st.tokens >= n as i128 {
            st.tokens -= n as i128;
            true
        } else {
            false
        }
    }
}

/// Which way bytes move, seen from the server: `Up` from visitors toward
/// the client's service, `Down` from the service toward visitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Visitors → the client's service (the admin API's `bytes_in`).
    Up,
    /// The client's service → visitors (`bytes_out`).
    Down,
}

/// One limit (a client's or a forward's): the same rate each way, in two
/// separate buckets, and what it held back.
#[derive(Debug)]
pub struct Throttle {
    up: TokenBucket,
    down: TokenBucket,
    /// Nanoseconds streams spent waiting for this limit, summed over streams.
    pub throttled_nanos: AtomicU64,
    /// UDP datagrams dropped for this limit.
    pub dropped_datagrams: AtomicU64,
    /// Bytes of those datagrams.
    pub dropped_bytes: AtomicU64,
}

impl Throttle {
    /// `rate` bytes a second each way.
    pub fn new(rate: u64) -> Throttle {
        let now = Instant::now();
        Throttle {
            up: TokenBucket::new(rate, now),
            down: TokenBucket::new(rate, now),
            throttled_nanos: AtomicU64::new(0),
            dropped_datagrams: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Bytes a second, each way.
    pub fn rate(&self) -> u64 {
        self.up.rate()
    }

    /// The bucket of one direction.
    pub fn bucket(&self, dir: Direction) -> &TokenBucket {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }
}

/// The limits one stream or flow is under (its client's and its
/// forward's): it waits for the slowest and pays every one.
#[derive(Debug, Clone, Default)]
pub struct Throttles(Vec<std::sync::Arc<Throttle>>);

impl Throttles {
    /// Under each of `limits` (`None`s are skipped).
    pub fn new(limits: impl IntoIterator<Item = Option<std::sync::Arc<Throttle>>>) -> Throttles {
        Throttles(limits.into_iter().flatten().collect())
    }

    /// Whether there is no limit at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How long until every bucket of `dir` is out of debt.
    pub fn wait(&self, dir: Direction, now: Instant) -> Duration {
        self.0.iter().map(|t| t.bucket(dir).wait(now)).max().unwrap_or(Duration::ZERO)
    }

    /// Charges `n` bytes to every bucket of `dir`.
    pub fn charge(&self, dir: Direction, n: u64, now: Instant) {
        for t in &self.0 {
            t.bucket(dir).charge(n, now);
        }
    }

    /// Counts a wait of `d` against every limit.
    pub fn waited(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        for t in &self.0 {
            t.throttled_nanos.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Whether a datagram of `n` bytes may pass now: only if every bucket
    /// holds it, and then each pays. One that may not is counted against
    /// the limits that refused it.
    pub fn police(&self, dir: Direction, n: u64, now: Instant) -> bool {
        // Check all before taking from any, so that a datagram one limit
        // drops costs the others nothing. Two flows racing between the
        // check and the take can overdraw by one datagram; that is debt,
        // paid like a stream's.
        let short: Vec<&Throttle> = self.0.iter().filter(|t| !fits(t.bucket(dir), n, now)).map(|t| &**t).collect();
        if short.is_empty() {
            self.charge(dir, n, now);
            return true;
        }
        for t in short {
            t.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
            t.dropped_bytes.fetch_add(n, Ordering::Relaxed);
        }
        false
    }
}

/// Whether `b` holds `n` bytes now, without taking them.
fn fits(b: &TokenBucket, n: u64, now: Instant) -> bool {
    let mut st = b.state();
    b.refill(&mut st, now);
    st.tokens >= n as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_full_and_refills_at_its_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let b = TokenBucket::with_burst(1000, 500, t0);
        assert!(b.try_take(500, t0));
        assert!(!b.try_take(1, t0));
        // 100 ms at 1000 B/s: 100 bytes.
        assert!(!b.try_take(101, t0 + 100 * MS));
        assert!(b.try_take(100, t0 + 100 * MS));
        // A long idle time saves at most the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!(!b.try_take(501, later));
        assert!(b.try_take(500, later));
    }

    #[test]
    fn debt_is_paid_by_waiting_in_proportion() {
        let t0 = Instant::now();
        let b = TokenBucket::with_burst(1000, 1000, t0);
        assert_eq!(b.wait(t0), Duration::ZERO);
        b.charge(1500, t0);
        // 500 bytes of debt at 1000 B/s.
        assert_eq!(b.wait(t0), 500 * MS);
        assert_eq!(b.wait(t0 + 200 * MS), 300 * MS);
        assert_eq!(b.wait(t0 + 500 * MS), Duration::ZERO);
        // A transfer of N bytes in chunks takes at least (N - burst) / rate.
        let b = TokenBucket::with_burst(10_000, 1000, t0);
        let (mut now, mut sent) = (t0, 0u64);
        while sent < 100_000 {
            now += b.wait(now);
            b.charge(4096, now);
            sent += 4096;
        }
        assert!(now - t0 >= Duration::from_secs_f64((100_000.0 - 1000.0 - 4096.0) / 10_000.0), "{:?}", now - t0);
    }

    #[test]
    fn waits_are_rounded_up_and_capped() {
        let t0 = Instant::now();
        let b = TokenBucket::with_burst(3, 1, t0);
        b.charge(2, t0);
        // 1 byte of debt at 3 B/s: 333.33 ms, rounded up.
        assert_eq!(b.wait(t0), Duration::from_nanos(333_333_334));
        let slow = TokenBucket::with_burst(1, 1, t0);
        slow.charge(1 << 20, t0);
        assert_eq!(slow.wait(t0), MAX_WAIT);
    }

    #[test]
    fn huge_rates_and_gaps_do_not_overflow() {
        let t0 = Instant::now();
        let b = TokenBucket::new(u64::MAX, t0);
        assert_eq!(b.burst(), u64::MAX / 10);
        b.charge(u64::MAX, t0);
        b.charge(u64::MAX, t0);
        assert!(b.wait(t0) <= MAX_WAIT);
        let far = t0 + Duration::from_secs(100 * 365 * 86_400);
        assert_eq!(b.wait(far), Duration::ZERO);
        assert!(b.try_take(u64::MAX / 10, far));
        // A rate of zero is one byte a second, not a division by zero.
        let z = TokenBucket::with_burst(0, 0, t0);
        assert_eq!((z.rate(), z.burst()), (1, 1));
        z.charge(2, t0);
        assert_eq!(z.wait(t0), MAX_WAIT);
        // Time going backwards adds nothing.
        let b = TokenBucket::with_burst(1000, 1000, t0 + Duration::from_secs(1));
        assert!(b.try_take(1000, t0));
        assert!(!b.try_take(1, t0));
    }

    #[test]
    fn throttles_wait_for_the_slowest_and_police_all_or_nothing() {
        use std::sync::Arc;
        let (client, forward) = (Arc::new(Throttle::new(1_000_000)), Arc::new(Throttle::new(100_000)));
        let both = Throttles::new([Some(client.clone()), None, Some(forward.clone())]);
        assert!(!both.is_empty() && Throttles::new([None]).is_empty());
        let now = Instant::now();
        // Up and down are separate buckets.
        both.charge(Direction::Up, MIN_BURST + 10_000, now);
        assert!(both.wait(Direction::Up, now) >= Duration::from_millis(100));
        assert_eq!(both.wait(Direction::Down, now), Duration::ZERO);
        assert!(both.police(Direction::Down, 1000, now));
        assert!(!both.police(Direction::Up, 1000, now));
        assert_eq!(forward.dropped_datagrams.load(Ordering::Relaxed), 1);
        assert_eq!(forward.dropped_bytes.load(Ordering::Relaxed), 1000);
        // The client's bucket still has room, but the forward's refused: it
        // is charged nothing, and counts nothing.
        assert_eq!(client.dropped_datagrams.load(Ordering::Relaxed), 0);
        both.waited(Duration::from_millis(5));
        assert_eq!(client.throttled_nanos.load(Ordering::Relaxed), 5_000_000);
    }
}
