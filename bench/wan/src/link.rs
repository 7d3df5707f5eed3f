//! The emulated link: a TUN device in each namespace and, per direction, a
//! reader thread that timestamps and judges each packet and a writer thread
//! that releases it into the other namespace when it is due.
//!
//! Two threads per direction instead of one with a timed poll: the tun crate
//! hands out blocking readers without a borrowable descriptor, and a
//! blocking read plus a channel needs no unsafe code. The writer drains
//! whatever is queued each time it wakes, so under load the hand-over is
//! batched.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use nix::errno::Errno;
use tun::{AbstractDevice, Configuration};

use crate::netns::{in_netns, ip};
use crate::shaper::{Shaper, Verdict};
use crate::spec::PerDir;
use crate::Error;

/// One end of the link.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub netns: String,
    pub dev: String,
    pub addr: Ipv4Addr,
    pub peer: Ipv4Addr,
    pub mtu: u16,
    /// Packets the kernel queues on the device for the emulator to read.
    pub txqueuelen: u32,
    /// Prefixes routed into the link from this end (`ip route add … dev`).
    pub routes: Vec<String>,
}

pub struct Tun {
    reader: tun::Reader,
    writer: tun::Writer,
}

/// Creates the TUN device of `ep` inside its namespace, configured and up.
/// The device lives as long as the returned handle: when the emulator
/// exits, the kernel removes both devices and their routes.
pub fn open(ep: &Endpoint) -> Result<Tun, Error> {
    let tun = in_netns(&ep.netns, || {
        let mut cfg = Configuration::default();
        cfg.tun_name(&ep.dev).address(ep.addr).destination(ep.peer).netmask((255, 255, 255, 255)).mtu(ep.mtu);
        let mut dev =
            tun::create(&cfg).map_err(|e| Error::Tun { dev: ep.dev.clone(), netns: ep.netns.clone(), source: e })?;
        debug_assert_eq!(dev.tun_name().ok().as_deref(), Some(ep.dev.as_str()));
        // Router and multicast listener solicitations would cross the link
        // uninvited and blur the counters (so IPv6 goes before the device is
        // up); the benchmarks are IPv4 only.
        // /proc/sys/net shows the namespace of the thread that opens it.
        let knob = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", ep.dev);
        if std::path::Path::new(&knob).exists() {
            std::fs::write(&knob, "1").map_err(|source| Error::Sysctl { path: knob.clone(), source })?;
        }
        dev.enabled(true).map_err(|e| Error::Tun { dev: ep.dev.clone(), netns: ep.netns.clone(), source: e })?;
        let (reader, writer) = dev.split();
        Ok(Tun { reader, writer })
    })?;
    // The TUN default (500) overflows at 1 Gbit/s while the reader thread
    // waits for a core, and those drops would add loss nobody asked for.
    ip(&["-n", &ep.netns, "link", "set", "dev", &ep.dev, "txqueuelen", &ep.txqueuelen.to_string()])?;
    for route in &ep.routes {
        ip(&["-n", &ep.netns, "route", "add", route, "dev", &ep.dev])?;
    }
    Ok(tun)
}

/// Counters of one direction. `received` = `sent` + `lost` + `tail_dropped`
/// + `overflow` + packets still in flight.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    pub sent: AtomicU64,
    pub lost: AtomicU64,
    pub tail_dropped: AtomicU64,
    pub overflow: AtomicU64,
    pub write_errors: AtomicU64,
    in_flight_bytes: AtomicU64,
}

impl Stats {
    /// One JSON object, for the stats lines on stdout.
    pub fn json(&self) -> String {
        format!(
            r#"{{"received":{},"received_bytes":{},"sent":{},"lost":{},"tail_dropped":{},"overflow":{},"write_errors":{},"in_flight_bytes":{}}}"#,
            self.received.load(Relaxed),
            self.received_bytes.load(Relaxed),
            self.sent.load(Relaxed),
            self.lost.load(Relaxed),
            self.tail_dropped.load(Relaxed),
            self.overflow.load(Relaxed),
            self.write_errors.load(Relaxed),
            self.in_flight_bytes.load(Relaxed),
        )
    }
}

struct Packet {
    due: Instant,
    seq: u64,
    data: Vec<u8>,
}

// Ordered so that BinaryHeap (a max-heap) pops the earliest due packet, and
// among equal instants the one that arrived first.
impl Ord for Packet {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Packet {}

/// The running link.
pub struct Link {
    pub stats: PerDir<Arc<Stats>>,
    /// The first fatal error of any thread (a device that vanished).
    pub failed: Receiver<Error>,
}

/// Starts the four threads. `max_in_flight` bounds the bytes held in each
/// direction's delay line, so a misconfigured run cannot eat the memory.
pub fn start(a: Tun, b: Tun, shapers: PerDir<Shaper>, max_in_flight: u64) -> Result<Link, Error> {
    let (fail_tx, failed) = mpsc::channel();
    let stats = PerDir { a_to_b: Arc::new(Stats::default()), b_to_a: Arc::new(Stats::default()) };
    direction("a-to-b", a.reader, b.writer, shapers.a_to_b, stats.a_to_b.clone(), max_in_flight, fail_tx.clone())?;
    direction("b-to-a", b.reader, a.writer, shapers.b_to_a, stats.b_to_a.clone(), max_in_flight, fail_tx)?;
    Ok(Link { stats, failed })
}

fn direction(
    name: &str,
    input: tun::Reader,
    output: tun::Writer,
    shaper: Shaper,
    stats: Arc<Stats>,
    max_in_flight: u64,
    fail: Sender<Error>,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel();
    let s = stats.clone();
    let f = fail.clone();
    thread::Builder::new()
        .name(format!("{name}-in"))
        .spawn(move || {
            if let Err(e) = read_loop(input, shaper, tx, &s, max_in_flight) {
                let _ = f.send(e);
            }
        })
        .map_err(Error::Thread)?;
    thread::Builder::new()
        .name(format!("{name}-out"))
        .spawn(move || {
            if let Err(e) = write_loop(rx, output, &stats) {
                let _ = fail.send(e);
            }
        })
        .map_err(Error::Thread)?;
    Ok(())
}

fn read_loop(
    mut input: tun::Reader,
    mut shaper: Shaper,
    tx: Sender<Packet>,
    stats: &Stats,
    max_in_flight: u64,
) -> Result<(), Error> {
    let mut buf = vec![0u8; 65536];
    let mut seq = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io { what: "reading the TUN device", source: e }),
        };
        let now = Instant::now();
        stats.received.fetch_add(1, Relaxed);
        stats.received_bytes.fetch_add(n as u64, Relaxed);
        match shaper.admit(now, n) {
            Verdict::Lost => {
                stats.lost.fetch_add(1, Relaxed);
            }
            Verdict::TailDrop => {
                stats.tail_dropped.fetch_add(1, Relaxed);
            }
            Verdict::Deliver(due) => {
                if stats.in_flight_bytes.load(Relaxed) + n as u64 > max_in_flight {
                    stats.overflow.fetch_add(1, Relaxed);
                    continue;
                }
                stats.in_flight_bytes.fetch_add(n as u64, Relaxed);
                seq += 1;
                if tx.send(Packet { due, seq, data: buf[..n].to_vec() }).is_err() {
                    return Ok(()); // the writer is gone: shutting down
                }
            }
        }
    }
}

fn write_loop(rx: Receiver<Packet>, mut output: tun::Writer, stats: &Stats) -> Result<(), Error> {
    let mut line: BinaryHeap<Packet> = BinaryHeap::new();
    loop {
        let wait = match line.peek() {
            None => None,
            Some(p) => {
                let now = Instant::now();
                if p.due <= now {
                    let p = line.pop().expect("peeked");
                    stats.in_flight_bytes.fetch_sub(p.data.len() as u64, Relaxed);
                    // A full backlog in the receiving namespace (ENOBUFS) is
                    // a drop, as on a real interface; only a vanished device
                    // is fatal.
                    match output.write(&p.data) {
                        Ok(_) => stats.sent.fetch_add(1, Relaxed),
                        Err(e)
                            if matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::ENODEV | Errno::EBADFD)) =>
                        {
                            return Err(Error::Io { what: "writing the TUN device", source: e })
                        }
                        Err(_) => stats.write_errors.fetch_add(1, Relaxed),
                    };
                    continue;
                }
                Some(p.due - now)
            }
        };
        let got = match wait {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d),
        };
        match got {
            Ok(p) => {
                line.push(p);
                // Whatever else is already queued, without sleeping again.
                while let Ok(p) = rx.try_recv() {
                    line.push(p);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}
