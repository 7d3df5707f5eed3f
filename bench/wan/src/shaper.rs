//! What happens to one packet on one direction of the emulated link: the
//! decision alone, with no I/O, so it can be tested without namespaces.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How much a rate-limited direction may hold before it drops new packets
/// at the tail, like a router's interface queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueLimit {
    Bytes(u64),
    Time(Duration),
}

/// The behaviour of one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay is `delay` plus a uniform draw in ±`jitter`
    /// (never below zero).
    pub jitter: Duration,
    /// Probability that a packet is lost, 0.0..=1.0.
    pub loss: f64,
    /// Bottleneck rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    pub queue: QueueLimit,
    /// Whether jitter may deliver packets out of order. Real paths rarely
    /// reorder, and a reordering link makes TCP retransmit, so by default a
    /// packet never leaves before the one in front of it.
    pub reorder: bool,
}

impl Default for DirectionSpec {
    fn default() -> Self {
        DirectionSpec {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            queue: QueueLimit::Time(Duration::from_millis(100)),
            reorder: false,
        }
    }
}

/// The fate of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Random loss.
    Lost,
    /// The rate limiter's queue was full.
    TailDrop,
    /// Leaves the emulator at this instant.
    Deliver(Instant),
}

/// One direction's state: the RNG, when the bottleneck is next free and
/// when the last packet leaves.
#[derive(Debug)]
pub struct Shaper {
    spec: DirectionSpec,
    rng: StdRng,
    link_free: Option<Instant>,
    last_due: Option<Instant>,
}

impl Shaper {
    pub fn new(spec: DirectionSpec, seed: u64) -> Shaper {
        Shaper { spec, rng: StdRng::seed_from_u64(seed), link_free: None, last_due: None }
    }

    pub fn spec(&self) -> &DirectionSpec {
        &self.spec
    }

    /// Decides the fate of a packet of `len` bytes that arrived at `now`.
    /// The order is a router's: the interface queue first (tail drop), then
    /// serialisation at the bottleneck rate, then the wire (random loss,
    /// after the packet has used its share of the rate), then propagation.
    pub fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        let mut depart = now;
        if let Some(rate) = self.spec.rate_bps {
            let backlog = self.link_free.map_or(Duration::ZERO, |free| free.saturating_duration_since(now));
            let serialise = bits_time(len as u64 * 8, rate);
            let limit = match self.spec.queue {
                QueueLimit::Time(t) => t,
                QueueLimit::Bytes(b) => bits_time(b * 8, rate),
            };
            // The packet being serialised counts against the queue too, so a
            // queue smaller than one packet passes one packet at a time.
            if !backlog.is_zero() && backlog + serialise > limit {
                return Verdict::TailDrop;
            }
            depart = now + backlog + serialise;
            self.link_free = Some(depart);
        }
        if self.spec.loss > 0.0 && self.rng.random::<f64>() < self.spec.loss {
            return Verdict::Lost;
        }
        let mut due = depart + self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let j = self.spec.jitter.as_nanos() as i64;
            let offset = self.rng.random_range(-j..=j);
            due = if offset >= 0 {
                due + Duration::from_nanos(offset as u64)
            } else {
                due.checked_sub(Duration::from_nanos(offset.unsigned_abs())).map_or(depart, |d| d.max(depart))
            };
        }
        if !self.spec.reorder {
            if let Some(last) = self.last_due {
                due = due.max(last);
            }
            self.last_due = Some(due);
        }
        Verdict::Deliver(due)
    }
}

fn bits_time(bits: u64, rate_bps: u64) -> Duration {
    Duration::from_nanos((bits as u128 * 1_000_000_000 / rate_bps.max(1) as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_only_delivers_after_the_delay() {
        let mut s = Shaper::new(DirectionSpec { delay: ms(25), ..Default::default() }, 1);
        let t = Instant::now();
        assert_eq!(s.admit(t, 1500), Verdict::Deliver(t + ms(25)));
    }

    #[test]
    fn jitter_without_reorder_keeps_order() {
        let spec = DirectionSpec { delay: ms(20), jitter: ms(10), ..Default::default() };
        let mut s = Shaper::new(spec, 7);
        let t = Instant::now();
        let mut last = t;
        let mut spread = false;
        for i in 0..10_000u64 {
            let now = t + Duration::from_micros(i * 10);
            let Verdict::Deliver(due) = s.admit(now, 100) else { panic!("no loss configured") };
            assert!(due >= last, "packet {i} overtook the one before it");
            assert!(due >= now + ms(10));
            spread |= due - now > ms(21);
            last = due;
        }
        assert!(spread, "jitter never added delay");
    }

    #[test]
    fn jitter_with_reorder_reorders() {
        let spec = DirectionSpec { delay: ms(20), jitter: ms(10), reorder: true, ..Default::default() };
        let mut s = Shaper::new(spec, 7);
        let t = Instant::now();
        let dues: Vec<Instant> = (0..1000u64)
            .map(|i| match s.admit(t + Duration::from_micros(i * 10), 100) {
                Verdict::Deliver(d) => d,
                v => panic!("{v:?}"),
            })
            .collect();
        assert!(dues.windows(2).any(|w| w[1] < w[0]));
    }

    #[test]
    fn rate_serialises_and_tail_drops_beyond_the_queue() {
        // 12 Mbit/s: a 1500-byte packet takes 1 ms; the queue holds 10 ms.
        let spec = DirectionSpec { rate_bps: Some(12_000_000), queue: QueueLimit::Time(ms(10)), ..Default::default() };
        let mut s = Shaper::new(spec, 1);
        let t = Instant::now();
        let verdicts: Vec<Verdict> = (0..20).map(|_| s.admit(t, 1500)).collect();
        for (i, v) in verdicts.iter().take(10).enumerate() {
            assert_eq!(*v, Verdict::Deliver(t + ms(i as u64 + 1)));
        }
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::TailDrop));
        // Once the queue drained, packets pass again.
        assert_eq!(s.admit(t + ms(10), 1500), Verdict::Deliver(t + ms(11)));
    }

    #[test]
    fn queue_in_bytes() {
        let spec = DirectionSpec { rate_bps: Some(12_000_000), queue: QueueLimit::Bytes(3000), ..Default::default() };
        let mut s = Shaper::new(spec, 1);
        let t = Instant::now();
        assert!(matches!(s.admit(t, 1500), Verdict::Deliver(_)));
        assert!(matches!(s.admit(t, 1500), Verdict::Deliver(_)));
        assert_eq!(s.admit(t, 1500), Verdict::TailDrop);
    }

    #[test]
    fn loss_is_seeded_and_near_its_rate() {
        let spec = DirectionSpec { loss: 0.2, ..Default::default() };
        let run = |seed| {
            let mut s = Shaper::new(spec.clone(), seed);
            let t = Instant::now();
            (0..10_000).filter(|_| s.admit(t, 100) == Verdict::Lost).count()
        };
        assert_eq!(run(3), run(3));
        let lost = run(3);
        // Mean 2000, σ = 40: six σ either side.
        assert!((1760..=2240).contains(&lost), "{lost}");
        let all = DirectionSpec { loss: 1.0, ..Default::default() };
        let mut s = Shaper::new(all, 1);
        assert!((0..1000).all(|_| s.admit(Instant::now(), 100) == Verdict::Lost));
    }
}
