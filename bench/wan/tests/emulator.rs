//! End-to-end checks of notr-wan between two namespaces of the test's own.
//! Root only: elsewhere each test prints `skipped: not root` and passes.
//! Timing checks are lower bounds only (a delay line cannot be faster than
//! its delay, but a loaded machine can always be slower), and the tests
//! synchronise on the emulator's counters, never on sleeps.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{setsockopt, sockopt};
use nix::unistd::Pid;
use opennotr_wan::netns::in_netns;

const ADDR_A: &str = "198.18.0.1";
const ADDR_B: &str = "198.18.0.2";
const DEADLINE: Duration = Duration::from_secs(30);

fn root() -> bool {
    // /proc/self belongs to the effective user.
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if !root {
        println!("skipped: not root");
        return false;
    }
    // A container without the TUN device cannot run the emulator at all.
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: no /dev/net/tun");
        return false;
    }
    true
}

/// A namespace of this test, removed when dropped (also when the test fails).
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("wantest-{}-{}-{tag}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let ok = Command::new("ip").args(["netns", "add", &name]).status().expect("ip").success();
        assert!(ok, "ip netns add {name}");
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Dir {
    received: u64,
    sent: u64,
    lost: u64,
    tail_dropped: u64,
    in_flight_bytes: u64,
}

/// A running emulator between the namespaces `a` and `b`. Declared after
/// its namespaces, so it is stopped before they are removed.
struct Wan {
    child: Child,
    out: BufReader<ChildStdout>,
    a: String,
    b: String,
}

impl Wan {
    fn start(a: &Ns, b: &Ns, opts: &[&str]) -> Wan {
        let mut child = Command::new(env!("CARGO_BIN_EXE_notr-wan"))
            .args(["--ns-a", &a.0, "--ns-b", &b.0, "--addr-a", ADDR_A, "--addr-b", ADDR_B])
            .args(opts)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn notr-wan");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read notr-wan");
        assert!(line.contains(r#""event":"ready""#), "notr-wan did not start: {line:?} {:?}", child.try_wait());
        Wan { child, out, a: a.0.clone(), b: b.0.clone() }
    }

    /// The a→b counters, asked for with SIGUSR1.
    fn a_to_b(&mut self) -> Dir {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGUSR1).expect("signal notr-wan");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read notr-wan");
        assert!(line.contains(r#""event":"stats""#), "{line:?}");
        let obj = line.split(r#""a_to_b":"#).nth(1).and_then(|s| s.split('}').next()).expect("a_to_b");
        let field = |k: &str| -> u64 {
            let pat = format!("\"{k}\":");
            let rest = obj.split(&pat).nth(1).unwrap_or_else(|| panic!("{k} in {obj}"));
            rest.split([',', '}']).next().unwrap().parse().unwrap()
        };
        Dir {
            received: field("received"),
            sent: field("sent"),
            lost: field("lost"),
            tail_dropped: field("tail_dropped"),
            in_flight_bytes: field("in_flight_bytes"),
        }
    }

    /// Polls the counters until `done` holds (or fails after DEADLINE).
    fn wait(&mut self, what: &str, done: impl Fn(&Dir) -> bool) -> Dir {
        let start = Instant::now();
        loop {
            let d = self.a_to_b();
            if done(&d) {
                return d;
            }
            assert!(start.elapsed() < DEADLINE, "{what}: still {d:?} after {DEADLINE:?}");
            std::thread::yield_now();
        }
    }

    fn udp_pair(&self) -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = in_netns(&self.b, || {
            let s = UdpSocket::bind((ADDR_B, 0)).expect("bind in b");
            // Room for every datagram of a test, so the receiver's buffer
            // is never what drops them.
            let _ = setsockopt(&s, sockopt::RcvBuf, &(8 << 20));
            Ok(s)
        })
        .expect("enter b");
        let tx = in_netns(&self.a, || Ok(UdpSocket::bind((ADDR_A, 0)).expect("bind in a"))).expect("enter a");
        let to = rx.local_addr().unwrap();
        (tx, rx, to)
    }

    /// Sends `n` numbered datagrams a→b in batches that the TUN device's
    /// queue holds, each batch read by the emulator before the next.
    fn send(&mut self, tx: &UdpSocket, to: SocketAddr, n: u64) -> Dir {
        let base = self.a_to_b().received;
        let mut i = 0;
        while i < n {
            let end = (i + 100).min(n);
            for seq in i..end {
                tx.send_to(&seq.to_be_bytes(), to).expect("send");
            }
            self.wait("batch read by the emulator", |d| d.received >= base + end);
            i = end;
        }
        // Everything judged and, if it passed, written out.
        self.wait("delay line drained", |d| d.in_flight_bytes == 0 && d.sent + d.lost + d.tail_dropped >= base + n)
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Receives `n` datagrams (each within DEADLINE) and returns their numbers.
fn receive(rx: &UdpSocket, n: u64) -> Vec<u64> {
    rx.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    (0..n)
        .map(|_| {
            let len = rx.recv(&mut buf).expect("a datagram the emulator sent");
            u64::from_be_bytes(buf[..len].try_into().expect("8 bytes"))
        })
        .collect()
}

fn connect_time(wan: &Wan) -> Duration {
    let listener = in_netns(&wan.b, || Ok(TcpListener::bind((ADDR_B, 0)).expect("listen in b"))).unwrap();
    let to = listener.local_addr().unwrap();
    in_netns(&wan.a, || {
        let start = Instant::now();
        TcpStream::connect_timeout(&to, DEADLINE).expect("connect through the emulator");
        Ok(start.elapsed())
    })
    .unwrap()
}

#[test]
fn delay_is_a_lower_bound_of_the_round_trip() {
    if !root() {
        return;
    }
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let wan = Wan::start(&a, &b, &["--delay", "25"]);
    // SYN one way, SYN-ACK back: one round trip.
    for _ in 0..3 {
        let t = connect_time(&wan);
        assert!(t >= Duration::from_millis(50), "connect took {t:?} through 2 × 25 ms");
    }
}

#[test]
fn delay_per_direction_and_jitter() {
    if !root() {
        return;
    }
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    // Jitter of 5 ms around 10 and 40: at least 5 + 35.
    let wan = Wan::start(&a, &b, &["--delay", "10/40", "--jitter", "5"]);
    let t = connect_time(&wan);
    assert!(t >= Duration::from_millis(40), "connect took {t:?}");
}

#[test]
fn zero_loss_passes_everything() {
    if !root() {
        return;
    }
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let mut wan = Wan::start(&a, &b, &["--loss", "0"]);
    let (tx, rx, to) = wan.udp_pair();
    let n = 1000;
    let d = wan.send(&tx, to, n);
    assert_eq!((d.lost, d.tail_dropped), (0, 0));
    let mut got = receive(&rx, n);
    got.sort_unstable();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

#[test]
fn full_loss_passes_nothing() {
    if !root() {
        return;
    }
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let mut wan = Wan::start(&a, &b, &["--loss", "100"]);
    let (tx, rx, to) = wan.udp_pair();
    let d = wan.send(&tx, to, 500);
    assert_eq!(d.sent, 0, "{d:?}");
    assert!(d.lost >= 500, "{d:?}");
    rx.set_nonblocking(true).unwrap();
    let err = rx.recv(&mut [0u8; 64]).expect_err("nothing may arrive");
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
}

#[test]
fn seeded_partial_loss_is_near_its_rate() {
    if !root() {
        return;
    }
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let mut wan = Wan::start(&a, &b, &["--loss", "20", "--seed", "42"]);
    let (tx, rx, to) = wan.udp_pair();
    let n = 2000;
    let d = wan.send(&tx, to, n);
    // Binomial(2000, 0.2): mean 400, σ ≈ 17.9; six σ either side.
    assert!((290..=510).contains(&d.lost), "lost {} of {n}", d.lost);
    assert_eq!(d.sent + d.lost, n, "{d:?}");
    let got = receive(&rx, d.sent);
    assert_eq!(got.len() as u64, n - d.lost);
}

#[test]
fn rate_limit_tail_drops_a_burst() {
    if !root() {
        return;
    }
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    // 100 kbit/s with a 2000-byte queue: 100 datagrams of 36 bytes take
    // 288 ms to serialise, so unless the sender spreads them over more than
    // the 160 ms the queue holds, some are dropped at the tail.
    let mut wan = Wan::start(&a, &b, &["--rate", "0.1", "--queue", "2000"]);
    let (tx, _rx, to) = wan.udp_pair();
    let d = wan.send(&tx, to, 100);
    assert!(d.tail_dropped > 0, "{d:?}");
    assert_eq!(d.sent + d.tail_dropped, 100, "{d:?}");
}
