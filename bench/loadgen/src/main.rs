//! `notr-loadgen`: N opennotr client sessions in one process against a real
//! `opennotrd` it starts itself, each with one tcp forward to an echo
//! service of its own; real handshakes, registrations, spare channels and
//! keepalives (the client library, as `opennotr` runs it).
//!
//! It reports what a relay with many clients costs the server: the time for
//! N clients to connect from cold (all started at once), the server's RSS
//! per idle session, the server's CPU while they idle, and a visitor's
//! connect latency (connect, one byte echoed back) with one session and
//! with N. docs/benchmarks.md has the results and the command.
//!
//! Loopback has one source address for every client, where N real clients
//! come from N; the server file it writes raises the per-source handshake
//! cap accordingly (the only limit set for the bench besides `maxClients`),
//! and clients dial 16 loopback destinations so that N×5 connections fit in
//! the ephemeral port range.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use opennotr_client::{Client, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    about = "N opennotr client sessions against a real opennotrd: connect storm, server RSS and CPU per idle session, visitor latency"
)]
struct Args {
    /// The opennotrd binary to start (a release build for numbers that mean something).
    #[arg(long)]
    opennotrd: PathBuf,
    /// Client sessions, one tcp forward each.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    clients: usize,
    /// Loopback destinations the clients spread over (127.0.0.1 ...).
    #[arg(long, default_value_t = 16)]
    dests: u8,
    /// Seconds to let the sessions settle (spare channels, first keepalives) before measuring.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Seconds over which the server's idle CPU is measured.
    #[arg(long, default_value_t = 30)]
    idle: u64,
    /// Visitor connections per latency measurement.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Clients' `spareChannels` (default: the client's default).
    #[arg(long)]
    spare_channels: Option<usize>,
    /// Clients' and server's `keepaliveInterval` seconds (default: 5, the default of both).
    #[arg(long)]
    keepalive: Option<u64>,
    /// How clients reach the server: `tcp` (a control connection, and spare
    /// channels) or `quic` (one QUIC connection each, all on the server's one
    /// UDP socket).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "quic"])]
    transport: String,
    /// Server worker threads (default: one per core).
    #[arg(long)]
    server_workers: Option<usize>,
    /// Seconds to wait for every client to connect.
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run the server as a node of a cluster on this etcd (a URL): every
    /// registration then claims its domain there (docs/cluster.md).
    #[arg(long)]
    etcd: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    raise_nofile(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

/// Descriptors a session costs, on the server and here: over TCP the
/// control connection and the spare channels (on both sides), and on the
/// server the forward's public listener; over QUIC the server's sessions
/// share one UDP socket, and each client here has one.
fn fds_per_session(args: &Args) -> (u64, u64) {
    let spares = args.spare_channels.unwrap_or(4) as u64;
    match args.transport.as_str() {
        "quic" => (1, 1),
        _ => (2 + spares, 1 + spares),
    }
}

/// Raises the open-file limit (the server inherits it) to what the run
/// needs, and says plainly when it cannot: raising the hard limit takes
/// CAP_SYS_RESOURCE, which a container may withhold even from root.
fn raise_nofile(args: &Args) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (server, own) = fds_per_session(args);
    let n = args.clients as u64;
    // Here besides: the echo service's side of each visitor, the runtime's own.
    let want = (n * server + 64).max(n * own + 1024);
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
    let target = want.min(nr_open.unwrap_or(want));
    if target > hard && setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    if hard < want {
        bail!(
            "{n} sessions over {} need about {} descriptors in opennotrd ({server} a session) and {} here, \
             but the open-file limit is {hard} and cannot be raised (raising it takes CAP_SYS_RESOURCE); \
             use fewer sessions, --spare-channels 0, or --transport quic",
            args.transport,
            n * server + 64,
            n * own + 1024,
        );
    }
    Ok(())
}

struct Server {
    child: Child,
    pid: u32,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server(args: &Args, key: &str) -> Result<(Server, u16)> {
    let dir = std::env::temp_dir().join(format!("notr-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let keepalive = args.keepalive.unwrap_or(5);
    let workers = args.server_workers.map(|w| format!("  workers: {w}\n")).unwrap_or_default();
    let n = args.clients;
    let file = format!(
        r#"server:
  listen: "0.0.0.0:{port}"
  authKey: "{key}"
  domain: "load.notr.test"
  publicIP: "127.0.0.1"
  keepaliveInterval: {keepalive}
  keepaliveTimeout: {timeout}
  quic: {quic}
{workers}dhcp:
  cidr: "100.64.0.1/14"
limits:
  maxClients: {max_clients}
  # Every client here comes from 127.0.0.1.
  maxHandshakesPerIp: {max_clients}
plugin:
  tcp:
    PortMin: 10000
    PortMax: 30000
    bind: "127.0.0.1"
{cluster}"#,
        timeout = keepalive * 3,
        quic = args.transport == "quic",
        cluster = args
            .etcd
            .as_ref()
            .map(|e| format!(
                "cluster:\n  node: loadgen\n  etcdEndpoints: [\"{e}\"]\n  prefix: \"/notr-loadgen-{port}\"\n  key: notr-loadgen-cluster-key\n"
            ))
            .unwrap_or_default(),
        max_clients = n + 16,
    );
    let path = dir.join("opennotrd.yaml");
    std::fs::write(&path, file)?;
    let child = Command::new(&args.opennotrd)
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(dir.join("opennotrd.log"))?)
        .stderr(std::fs::File::create(dir.join("opennotrd.err"))?)
        .spawn()
        .with_context(|| format!("starting {}", args.opennotrd.display()))?;
    let pid = child.id();
    Ok((Server { child, pid, dir }, port))
}

async fn wait_listening(server: &mut Server, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = server.child.try_wait()? {
            let err = std::fs::read_to_string(server.dir.join("opennotrd.err")).unwrap_or_default();
            bail!("opennotrd exited with {status}: {err}");
        }
        if Instant::now() > deadline {
            bail!("opennotrd did not listen on {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the clients' events say, counted.
#[derive(Default)]
struct Tally {
    disconnected: AtomicUsize,
    refused: AtomicUsize,
    /// Each client's public port once it has one.
    ports: Mutex<Vec<Option<u16>>>,
    last_reason: Mutex<Option<String>>,
    /// Why attempts failed, counted (retries of the storm).
    reasons: Mutex<std::collections::BTreeMap<String, usize>>,
    changed: tokio::sync::Notify,
}

impl Tally {
    fn failed(&self, reason: &str) {
        *self.last_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        *self.reasons.lock().unwrap_or_else(|p| p.into_inner()).entry(reason.to_string()).or_default() += 1;
    }
}

fn client_config(args: &Args, i: usize, port: u16, key: &str, echo: u16) -> Result<opennotr_config::ClientConfig> {
    let dest = 1 + (i % usize::from(args.dests.max(1))) as u8;
    let mut yaml = format!(
        "serverAddr: \"127.0.0.{dest}:{port}\"\nkey: \"{key}\"\nforwards:\n  - protocol: tcp\n    ports: {{0: {echo}}}\n"
    );
    if args.transport == "quic" {
        yaml.push_str("transport: quic\n");
    }
    if let Some(s) = args.spare_channels {
        yaml.push_str(&format!("spareChannels: {s}\n"));
    }
    if let Some(k) = args.keepalive {
        yaml.push_str(&format!("keepaliveInterval: {k}\nkeepaliveTimeout: {}\n", k * 3));
    }
    Ok(opennotr_config::parse_client(&yaml)?)
}

fn spawn_client(
    args: &Args,
    i: usize,
    port: u16,
    key: &str,
    echo: u16,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> Result<()> {
    let cfg = client_config(args, i, port, key, echo)?;
    let t = tally.clone();
    let events: opennotr_client::EventSink = Arc::new(move |e: &Event| match e {
        Event::Connected(reg) => {
            t.ports.lock().unwrap_or_else(|p| p.into_inner())[i] = reg.forwards.first().and_then(|f| f.public_port);
            t.changed.notify_waiters();
        }
        Event::Disconnected { reason, .. } => {
            t.disconnected.fetch_add(1, Ordering::SeqCst);
            t.ports.lock().unwrap_or_else(|p| p.into_inner())[i] = None;
            t.failed(reason);
        }
        Event::Refused { message, .. } => {
            t.refused.fetch_add(1, Ordering::SeqCst);
            t.failed(message);
        }
        _ => {}
    });
    let client = Client::new(cfg, events);
    let stop = stop.clone();
    tokio::spawn(async move { client.run(stop).await });
    Ok(())
}

async fn wait_connected(
    tally: &Tally,
    n: usize,
    timeout: Duration,
    marks: &mut Vec<(usize, Duration)>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut next_mark = [0.5, 0.9, 0.99].into_iter().map(|f| ((n as f64 * f).ceil() as usize).max(1)).peekable();
    loop {
        let changed = tally.changed.notified();
        let now = connected_sessions(tally);
        while next_mark.peek().is_some_and(|m| now >= *m) {
            marks.push((next_mark.next().unwrap_or(n), start.elapsed()));
        }
        if now >= n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "{now} of {n} clients connected after {timeout:?}; last reason: {:?}",
                tally.last_reason.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
    }
}

/// Sessions up now: clients whose last event was `Connected` (with a
/// public port; a forward the server refused counts as not connected).
fn connected_sessions(tally: &Tally) -> usize {
    tally.ports.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|p| p.is_some()).count()
}

async fn echo_service() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Connect to a public port, send one byte, read it back: what a visitor
/// waits for, the relay's whole path (server, control message or spare
/// channel, client, local dial) included.
async fn visit(port: u16) -> Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(start.elapsed())
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
}

async fn latency(ports: &[u16], samples: usize) -> Result<Latency> {
    // The first visits of a forward warm what a steady state has warm
    // (spare channels in use, the echo service's accept).
    for p in ports.iter().take(20) {
        visit(*p).await?;
    }
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples {
        ms.push(visit(ports[i % ports.len()]).await?.as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Ok(Latency { p50: at(0.5), p90: at(0.9), p99: at(0.99) })
}

fn proc_status_kb(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// utime + stime, in clock ticks (100 a second on Linux).
fn cpu_ticks(pid: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may itself hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

async fn run(args: Args) -> Result<()> {
    let key = hex::encode(rand::random::<[u8; 24]>());
    let (mut server, port) = start_server(&args, &key)?;
    wait_listening(&mut server, port).await?;
    let pid = server.pid;
    let n = args.clients.max(1);
    let echo = echo_service().await?;
    let tally = Arc::new(Tally { ports: Mutex::new(vec![None; n]), ..Tally::default() });
    let stop = CancellationToken::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = proc_status_kb(pid, "VmRSS")?;

    // One session: the baseline.
    spawn_client(&args, 0, port, &key, echo, &tally, &stop)?;
    wait_connected(&tally, 1, Duration::from_secs(30), &mut Vec::new()).await?;
    tokio::time::sleep(Duration::from_secs(args.settle.min(3))).await;
    let port0 = first_port(&tally)?;
    let lat_one = latency(&[port0], args.samples).await?;
    let rss_one = proc_status_kb(pid, "VmRSS")?;
    let fds_one = fds(pid);
    eprintln!("loadgen: 1 session: server RSS {rss_one} kB, visitor p50 {:.3} ms", lat_one.p50);

    // The storm: every other client at once.
    let cpu_before_storm = cpu_ticks(&pid.to_string())?;
    let others = stop.child_token();
    for i in 1..n {
        spawn_client(&args, i, port, &key, echo, &tally, &others)?;
    }
    let mut marks = Vec::new();
    let storm = wait_connected(&tally, n, Duration::from_secs(args.connect_timeout), &mut marks).await?;
    let storm_cpu = (cpu_ticks(&pid.to_string())? - cpu_before_storm) as f64 / 100.0;
    let retries = tally.disconnected.load(Ordering::SeqCst);
    eprintln!("loadgen: {n} sessions connected in {:.2} s ({retries} attempts retried)", storm.as_secs_f64());

    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let rss_settled = proc_status_kb(pid, "VmRSS")?;
    let dropped_before = tally.disconnected.load(Ordering::SeqCst);
    let (srv0, own0, t0) = (cpu_ticks(&pid.to_string())?, cpu_ticks("self")?, Instant::now());
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let (srv1, own1, secs) = (cpu_ticks(&pid.to_string())?, cpu_ticks("self")?, t0.elapsed().as_secs_f64());
    let idle_cpu = (srv1 - srv0) as f64 / 100.0 / secs * 100.0;
    let own_cpu = (own1 - own0) as f64 / 100.0 / secs * 100.0;
    let rss_idle = proc_status_kb(pid, "VmRSS")?;
    let fds_n = fds(pid);
    let dropped = tally.disconnected.load(Ordering::SeqCst) - dropped_before;

    let lat_n_same = latency(&[port0], args.samples).await?;
    let ports: Vec<u16> = {
        let table = tally.ports.lock().unwrap_or_else(|p| p.into_inner());
        let step = (n / args.samples.max(1)).max(1);
        table.iter().step_by(step).flatten().copied().collect()
    };
    let lat_n_spread = latency(&ports, args.samples).await?;
    let rss_peak = proc_status_kb(pid, "VmHWM")?;

    // One session again, once the others are gone: the baseline is taken
    // on both sides of the N-session measurements, so that a drift of the
    // machine's speed between them is not read as the sessions' cost.
    others.cancel();
    let deadline = Instant::now() + Duration::from_secs(120);
    while fds(pid) > fds_one + 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lat_one_after = latency(&[port0], args.samples).await?;
    stop.cancel();
    let baseline = (lat_one.p50 + lat_one_after.p50) / 2.0;

    let per_session = (rss_idle.max(rss_settled) as f64 - rss_one as f64) * 1024.0 / (n.max(2) - 1) as f64;
    let report = serde_json::json!({
        "clients": n,
        "transport": args.transport,
        "cluster_etcd": args.etcd,
        "spare_channels": args.spare_channels,
        "keepalive_s": args.keepalive.unwrap_or(5),
        "connect_storm_s": storm.as_secs_f64(),
        "connect_marks_s": marks.iter().map(|(k, d)| serde_json::json!({"sessions": k, "s": d.as_secs_f64()})).collect::<Vec<_>>(),
        "storm_server_cpu_s": storm_cpu,
        "attempts_retried": retries,
        "retry_reasons": tally.reasons.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "sessions_dropped_while_idle": dropped,
        "server_rss_kb": {"empty": rss_empty, "one": rss_one, "settled": rss_settled, "idle": rss_idle, "peak": rss_peak},
        "server_rss_per_idle_session_bytes": per_session.round(),
        "server_fds": {"one": fds_one, "all": fds_n},
        "server_idle_cpu_pct_of_one_core": idle_cpu,
        "loadgen_idle_cpu_pct_of_one_core": own_cpu,
        "visitor_latency_ms": {
            "one_session": {"p50": lat_one.p50, "p90": lat_one.p90, "p99": lat_one.p99},
            "one_session_after": {"p50": lat_one_after.p50, "p90": lat_one_after.p90, "p99": lat_one_after.p99},
            "all_sessions_same_forward": {"p50": lat_n_same.p50, "p90": lat_n_same.p90, "p99": lat_n_same.p99},
            "all_sessions_spread": {"p50": lat_n_spread.p50, "p90": lat_n_spread.p90, "p99": lat_n_spread.p99},
        },
        // The same forward's p50 with N sessions over its p50 with one
        // (the mean of before and after).
        "visitor_p50_ratio": lat_n_same.p50 / baseline,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    drop(server);
    Ok(())
}

fn first_port(tally: &Tally) -> Result<u16> {
    tally.ports.lock().unwrap_or_else(|p| p.into_inner())[0].context("client 0 has no public port")
}
