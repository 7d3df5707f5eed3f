//! Helpers shared by the integration tests (`cli.rs`, `vlan.rs`,
//! `openresty.rs`): a temp dir guard, a child-process guard that reads its
//! output line by line, readers of what the binaries print and log, (in
//! [`netns`]) the network-namespace helpers of the root-only tests, and (in
//! [`grpc`] and [`tools`]) the Python gRPC programs and the finder of the
//! programs tests run, shared with the `opennotr-tests` crate.

// Each test crate compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

// `pub` inside: the `opennotr-tests` crate compiles the same file and
// exports them.
#[allow(unreachable_pub)]
pub(crate) mod grpc;
pub(crate) mod netns;
#[allow(unreachable_pub)]
pub(crate) mod tools;

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

pub(crate) const SERVER: &str = env!("CARGO_BIN_EXE_opennotrd");
pub(crate) const CLIENT: &str = env!("CARGO_BIN_EXE_opennotr");

/// Upper bound for any single wait (debug build on a busy 2-core machine).
pub(crate) const WAIT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ temp dirs

/// A directory under the system temp dir, `opennotr-<test crate>-<tag>-…`,
/// removed on drop. The flag: world-readable (see [`TempDir::world_readable`]).
pub(crate) struct TempDir(pub(crate) PathBuf, bool);

impl TempDir {
    /// A directory with the permissions the umask gives.
    pub(crate) fn new(tag: &str) -> Self {
        Self::create(tag, false)
    }

    /// A world-readable directory (0755) whose files `write` makes
    /// world-readable too (0644, folders 0755), whatever the umask: for
    /// children that run as another user.
    pub(crate) fn world_readable(tag: &str) -> Self {
        Self::create(tag, true)
    }

    fn create(tag: &str, world_readable: bool) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let krate = env!("CARGO_CRATE_NAME");
        let p = std::env::temp_dir().join(format!("opennotr-{krate}-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        if world_readable {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        TempDir(p, world_readable)
    }

    /// Writes a file (`name` may contain folders, created as needed).
    pub(crate) fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
            if self.1 {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        std::fs::write(&p, data).unwrap();
        if self.1 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        p
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------------ children

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    Out,
    Err,
}

enum Msg {
    Line(Src, String),
    Eof(Src),
}

/// A running child whose stdout and stderr are read line by line on two
/// threads. Killed (SIGKILL) and reaped on drop.
pub(crate) struct Proc {
    name: String,
    pub(crate) child: Child,
    rx: Receiver<Msg>,
    /// Every line received so far, for assertions and failure messages.
    pub(crate) seen: Vec<(Src, String)>,
    eof: [bool; 2],
}

impl Proc {
    /// Runs `bin args` with `NO_COLOR=1`, named after the binary.
    pub(crate) fn spawn(bin: &str, args: &[&str], cwd: &Path) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.env("NO_COLOR", "1");
        Proc::spawn_cmd(cmd, args, cwd)
    }

    /// Runs `cmd args` with the environment `cmd` has (but `RUST_LOG`),
    /// named after its program.
    pub(crate) fn spawn_cmd(mut cmd: Command, args: &[&str], cwd: &Path) -> Proc {
        let bin = cmd.get_program().to_string_lossy().into_owned();
        cmd.args(args);
        let name = Path::new(&bin).file_name().unwrap().to_string_lossy().into_owned();
        Proc::start(name, cmd, cwd).unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
    }

    /// Runs `cmd` (arguments included, e.g. wrapped in `ip netns exec`) with
    /// `NO_COLOR=1`, under `name` in messages.
    pub(crate) fn spawn_named(name: &str, mut cmd: Command, cwd: &Path) -> Proc {
        cmd.env("NO_COLOR", "1");
        Proc::start(name.into(), cmd, cwd).unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
    }

    fn start(name: String, mut cmd: Command, cwd: &Path) -> std::io::Result<Proc> {
        let mut child = cmd
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (src, pipe) in [(Src::Out, Box::new(out) as Box<dyn Read + Send>), (Src::Err, Box::new(err))] {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(pipe);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                            if tx.send(Msg::Line(src, line)).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tx.send(Msg::Eof(src));
            });
        }
        Ok(Proc { name, child, rx, seen: Vec::new(), eof: [false; 2] })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn transcript(&self) -> String {
        let mut s = String::new();
        for (src, l) in &self.seen {
            s.push_str(match src {
                Src::Out => "  out| ",
                Src::Err => "  err| ",
            });
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Receives one message before `deadline`; false on timeout or when both
    /// pipes are closed.
    fn pump(&mut self, deadline: Instant) -> Option<(Src, String)> {
        loop {
            if self.eof == [true, true] {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Msg::Line(src, l)) => {
                    self.seen.push((src, l.clone()));
                    return Some((src, l));
                }
                Ok(Msg::Eof(src)) => self.eof[src as usize] = true,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits for the next line of `src` that satisfies `pred`; panics with
    /// the transcript on timeout or exit.
    pub(crate) fn expect(&mut self, src: Src, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        while let Some((s, l)) = self.pump(deadline) {
            if s == src && pred(&l) {
                return l;
            }
        }
        let status = self.child.try_wait().ok().flatten();
        panic!(
            "{}: no {src:?} line {what} within {WAIT:?} (exit status: {status:?}); output so far:\n{}",
            self.name,
            self.transcript()
        );
    }

    /// The next stdout line, whatever it is.
    pub(crate) fn next_stdout(&mut self) -> String {
        self.expect(Src::Out, "(any)", |_| true)
    }

    /// Waits for the child to exit (its pipes close first), with a deadline.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while self.pump(deadline).is_some() {}
        if self.eof != [true, true] {
            panic!("{}: still running after {timeout:?}; output so far:\n{}", self.name, self.transcript());
        }
        // Both pipes are closed, so the process has exited or is about to.
        self.child.wait().unwrap()
    }

    pub(crate) fn stderr_text(&self) -> String {
        self.lines(Src::Err).join("\n")
    }

    pub(crate) fn lines(&self, src: Src) -> Vec<String> {
        self.seen.iter().filter(|(s, _)| *s == src).map(|(_, l)| l.clone()).collect()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let st = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- {} (pid {}) output:\n{}", self.name, self.child.id(), self.transcript());
        }
    }
}

// ------------------------------------------------------------------ output of opennotrd / opennotr

/// One GET of `path` for `host` on `addr` with `Connection: close`, and
/// `extra_headers` (each line ending in `\r\n`); the whole answer.
pub(crate) fn http_get(addr: std::net::SocketAddr, host: &str, path: &str, extra_headers: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The `fields` of a JSON log line, if it is one with this message.
pub(crate) fn json_fields(line: &str, message: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    (fields.get("message")?.as_str()? == message).then(|| fields.clone())
}

/// What the client printed after `connect success`.
pub(crate) struct Registration {
    pub(crate) vip: Ipv4Addr,
    pub(crate) domain: String,
    pub(crate) forwards: Vec<String>,
}

/// Reads the client's registration block: `connect success`, `vhost: `,
/// `domain: ` and one line per forward.
pub(crate) fn read_registration(client: &mut Proc, n_forwards: usize) -> Registration {
    client.expect(Src::Out, "`connect success`", |l| l == "connect success");
    let vhost = client.next_stdout();
    let vip =
        vhost.strip_prefix("vhost: ").unwrap_or_else(|| panic!("expected `vhost: `, got {vhost:?}")).parse().unwrap();
    let dline = client.next_stdout();
    let domain = dline.strip_prefix("domain: ").unwrap_or_else(|| panic!("expected `domain: `, got {dline:?}")).into();
    let forwards = (0..n_forwards).map(|_| client.next_stdout()).collect();
    Registration { vip, domain, forwards }
}

/// Parses `<proto>://<domain>:<public> => 127.0.0.1:<local>`.
pub(crate) fn parse_forward(line: &str, proto: &str, domain: &str) -> (u16, u16) {
    let rest = line
        .strip_prefix(&format!("{proto}://{domain}:"))
        .unwrap_or_else(|| panic!("expected a {proto} forward of {domain}, got {line:?}"));
    let (public, local) = rest.split_once(" => ").unwrap_or_else(|| panic!("no ` => ` in {line:?}"));
    let local = local.strip_prefix("127.0.0.1:").unwrap_or_else(|| panic!("local is not 127.0.0.1 in {line:?}"));
    (public.parse().unwrap(), local.parse().unwrap())
}

/// A TCP echo service on `ip` (any 127.0.0.0/8 address is loopback on
/// Linux); its threads live as long as the test process.
pub(crate) fn tcp_echo_on(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let _ = std::io::copy(&mut c, &mut w);
            });
        }
    });
    port
}

/// A TCP echo service on 127.0.0.1.
pub(crate) fn tcp_echo() -> u16 {
    tcp_echo_on("127.0.0.1")
}

/// A UDP echo service on 127.0.0.1.
pub(crate) fn udp_echo() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    port
}
