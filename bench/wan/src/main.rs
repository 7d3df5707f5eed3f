use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use opennotr_wan::link::{self, Endpoint};
use opennotr_wan::netns::Created;
use opennotr_wan::shaper::{DirectionSpec, QueueLimit, Shaper};
use opennotr_wan::spec::{self, PerDir};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

const ABOUT: &str = "User-space WAN emulator: carries IPv4 between two network namespaces with delay, jitter, loss \
                     and a rate limit";

const LONG_ABOUT: &str = "\
User-space WAN emulator for opennotr's network benchmarks (for kernels without netem).

It creates a TUN device (--dev) in each of two network namespaces, A and B, gives them the \
point-to-point addresses --addr-a and --addr-b, and moves every packet that one side sends \
into the other side after applying, per direction:

  the rate limit (--rate) with a tail-drop queue (--queue), like a router's interface,
  random loss (--loss, seeded by --seed),
  the one-way delay (--delay) plus a uniform jitter (--jitter; packets keep their order unless --reorder).

Every shaping option takes one value for both directions or A/B for a->b and b->a: \
`--delay 25` or `--delay 10/40`.

Namespaces: by default both must exist (`ip netns add NAME`) and are left as they are; with \
--create notr-wan makes them (with lo up) and deletes them when it exits. The TUN devices and \
the routes through them (--route-a, --route-b, or your own `ip route add ... dev wan0`) \
disappear when notr-wan exits.

Output (stdout, one JSON object per line): {\"event\":\"ready\",...} once the devices are up; \
{\"event\":\"stats\",...} with per-direction counters on SIGUSR1, and {\"event\":\"exit\",...} on \
SIGTERM, SIGINT or SIGHUP, after which it exits 0.

Example (25 ms each way, 1 % loss, 100 Mbit/s with a 50 ms queue):
  notr-wan --create --ns-a wan-a --ns-b wan-b --delay 25 --loss 1 --rate 100 --queue 50ms
  ip netns exec wan-b iperf3 -s &
  ip netns exec wan-a iperf3 -c 198.18.0.2

Needs root (setns, /dev/net/tun) and iproute2.";

#[derive(Debug, Parser)]
#[command(name = "notr-wan", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// Network namespace of end A
    #[arg(long, value_name = "NAME")]
    ns_a: String,
    /// Network namespace of end B
    #[arg(long, value_name = "NAME")]
    ns_b: String,
    /// Create both namespaces (they must not exist) and delete them on exit
    #[arg(long)]
    create: bool,
    /// Name of the TUN device made in each namespace
    #[arg(long, default_value = "wan0", value_name = "NAME")]
    dev: String,
    /// Address of A's device (198.18.0.0/15 is reserved for benchmarks)
    #[arg(long, default_value = "198.18.0.1", value_name = "IPV4")]
    addr_a: Ipv4Addr,
    /// Address of B's device
    #[arg(long, default_value = "198.18.0.2", value_name = "IPV4")]
    addr_b: Ipv4Addr,
    /// A prefix that A routes through the link (repeatable), e.g. B's LAN
    #[arg(long, value_name = "CIDR")]
    route_a: Vec<String>,
    /// A prefix that B routes through the link (repeatable)
    #[arg(long, value_name = "CIDR")]
    route_b: Vec<String>,
    /// MTU of both devices
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
    /// Queue length of both devices, in packets. Packets the kernel drops
    /// here (the emulator's threads were off the CPU) count in no counter
    /// of notr-wan, only in `ip -s link`; at 1000 a loaded 2-core machine
    /// lost 1-3 % of a 1 Gbit/s stream there
    #[arg(long, default_value_t = 4096)]
    txqueuelen: u32,
    /// One-way delay in milliseconds
    #[arg(long, default_value = "0", value_name = "MS[/MS]", value_parser = spec::millis)]
    delay: PerDir<Duration>,
    /// Uniform jitter in milliseconds, ± around the delay
    #[arg(long, default_value = "0", value_name = "MS[/MS]", value_parser = spec::millis)]
    jitter: PerDir<Duration>,
    /// Let jitter reorder packets (by default a packet never overtakes the one before it)
    #[arg(long)]
    reorder: bool,
    /// Random loss in percent
    #[arg(long, default_value = "0", value_name = "PCT[/PCT]", value_parser = spec::percent)]
    loss: PerDir<f64>,
    /// Seed of the loss and jitter draws (each direction derives its own)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rate limit in Mbit/s; 0 is unlimited
    #[arg(long, default_value = "0", value_name = "MBIT[/MBIT]", value_parser = spec::rate)]
    rate: PerDir<Option<u64>>,
    /// Queue in front of the rate limit, as time at the rate (50ms) or bytes (64KiB, 1MB, 30000);
    /// packets beyond it are dropped at the tail
    #[arg(long, default_value = "100ms", value_name = "SIZE[/SIZE]", value_parser = spec::queue)]
    queue: PerDir<QueueLimit>,
    /// Most bytes held in one direction's delay line; beyond it packets are dropped
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    max_in_flight_mib: u64,
}

enum Event {
    Signal(i32),
    Failed(opennotr_wan::Error),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One line with the causes, no backtrace: these are operator errors
    // (missing namespace, not root), not bugs.
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notr-wan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.ns_a == args.ns_b {
        bail!("--ns-a and --ns-b must differ (both are {:?})", args.ns_a);
    }
    if args.addr_a == args.addr_b {
        bail!("--addr-a and --addr-b must differ");
    }
    // Signals first, so a SIGTERM during set-up still cleans up.
    let mut signals = Signals::new([SIGUSR1, SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let mut created = Created::default();
    if args.create {
        created.create(&args.ns_a)?;
        created.create(&args.ns_b)?;
    }
    let ends =
        [(&args.ns_a, args.addr_a, args.addr_b, &args.route_a), (&args.ns_b, args.addr_b, args.addr_a, &args.route_b)]
            .map(|(ns, addr, peer, routes)| Endpoint {
                netns: ns.clone(),
                dev: args.dev.clone(),
                addr,
                peer,
                mtu: args.mtu,
                txqueuelen: args.txqueuelen,
                routes: routes.clone(),
            });
    let a = link::open(&ends[0])?;
    let b = link::open(&ends[1])?;
    let spec = |pick: fn(&PerDir<Duration>) -> Duration, d: usize| DirectionSpec {
        delay: pick(&args.delay),
        jitter: pick(&args.jitter),
        loss: if d == 0 { args.loss.a_to_b } else { args.loss.b_to_a },
        rate_bps: if d == 0 { args.rate.a_to_b } else { args.rate.b_to_a },
        queue: if d == 0 { args.queue.a_to_b } else { args.queue.b_to_a },
        reorder: args.reorder,
    };
    let shapers = PerDir {
        a_to_b: Shaper::new(spec(|p| p.a_to_b, 0), args.seed.wrapping_mul(2)),
        b_to_a: Shaper::new(spec(|p| p.b_to_a, 1), args.seed.wrapping_mul(2).wrapping_add(1)),
    };
    let link = link::start(a, b, shapers, args.max_in_flight_mib << 20)?;

    let (events, rx) = mpsc::channel();
    let tx = events.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
    let failed = link.failed;
    std::thread::spawn(move || {
        if let Ok(e) = failed.recv() {
            let _ = events.send(Event::Failed(e));
        }
    });

    let end = |e: &Endpoint| format!(r#"{{"netns":{:?},"dev":{:?},"addr":"{}"}}"#, e.netns, e.dev, e.addr);
    println!(r#"{{"event":"ready","a":{},"b":{}}}"#, end(&ends[0]), end(&ends[1]));
    let stats = |event: &str| {
        println!(r#"{{"event":"{event}","a_to_b":{},"b_to_a":{}}}"#, link.stats.a_to_b.json(), link.stats.b_to_a.json())
    };
    loop {
        match rx.recv() {
            Ok(Event::Signal(SIGUSR1)) => stats("stats"),
            Ok(Event::Signal(_)) | Err(_) => {
                stats("exit");
                break;
            }
            Ok(Event::Failed(e)) => {
                stats("exit");
                return Err(e).context("the link failed");
            }
        }
    }
    created.remove_all();
    Ok(())
}
