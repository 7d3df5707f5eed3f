//! What `opennotrd` and `opennotr` share: the original's `-conf` flag,
//! logging set-up and signal handling; and the one-line client's forward
//! syntax ([`forwards`]).

use std::ffi::OsString;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

pub mod forwards;

/// Rewrites the original Go flag `-conf FILE` / `-conf=FILE` to `--config`,
/// so clap handles both spellings.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-conf") => OsString::from("--config"),
            Some(s) if s.starts_with("-conf=") => OsString::from(format!("--config={}", &s[6..])),
            _ => a,
        })
        .collect()
}

/// The key in `path` (`--key-file`): its first line, without the line
/// ending. The error names the flag and the file, never the content.
pub fn read_key_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--key-file {}: {e}", path.display()))?;
    let key = text.lines().next().unwrap_or_default().trim_end_matches('\r');
    if key.is_empty() {
        return Err(format!("--key-file {}: the first line is empty", path.display()));
    }
    Ok(key.to_string())
}

/// Logs to stderr. The level comes from `level` (a flag) or `RUST_LOG`,
/// default `info`; `json` switches to one JSON object per line.
pub fn init_tracing(level: Option<&str>, json: bool) {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The async runtime both programs run on: `workers` threads (the config
/// file's `workers` key), else tokio's default, which reads
/// `TOKIO_WORKER_THREADS` and falls back to one thread per core.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().build()?;
    info!(workers = rt.metrics().num_workers(), "runtime started");
    Ok(rt)
}

/// Raises the soft limit on open files to the hard one and logs both, as
/// Go's runtime does for frp: every proxied connection holds descriptors,
/// and the usual default of 1024 runs out at a few hundred visitors.
pub fn raise_fd_limit() {
    match opennotr_transport::fds::raise_limit() {
        Ok((before, after)) if after > before => info!(from = before, to = after, "raised the open-file limit"),
        Ok((_, after)) => info!(limit = after, "open-file limit"),
        Err(e) => warn!(error = %e, limit = opennotr_transport::fds::limit(), "could not raise the open-file limit"),
    }
}

/// A token cancelled on the first SIGINT or SIGTERM; a second one exits at
/// once with status 130.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // Install the handlers now, not in the task: once the caller logs that
    // it is up, a signal must already be caught.
    let mut signals = Signals::install();
    tokio::spawn(async move {
        signals.recv().await;
        info!("signal received; shutting down (send it again to exit at once)");
        t.cancel();
        signals.recv().await;
        warn!("second signal; exiting now");
        std::process::exit(130);
    });
    token
}

/// Calls `reload` on every SIGHUP. The handler is installed before this
/// returns: SIGHUP's default action would end the process.
#[cfg(unix)]
pub fn on_hangup(reload: impl Fn() + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return warn!("cannot catch SIGHUP; reload through the admin API instead");
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the configuration");
            reload();
        }
    });
}

/// No SIGHUP here; reload through the admin API.
#[cfg(not(unix))]
pub fn on_hangup(_reload: impl Fn() + Send + 'static) {}

#[cfg(unix)]
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(i), Ok(t)) => Signals(Some((i, t))),
            _ => Signals(None),
        }
    }
    async fn recv(&mut self) {
        let Some((int, term)) = &mut self.0 else { return std::future::pending().await };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Signals
    }
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_flag_is_rewritten() {
        let a = normalize_args(["x", "-conf", "f.yaml", "-conf=g.yaml", "-c", "h"].map(OsString::from));
        assert_eq!(a, ["x", "--config", "f.yaml", "--config=g.yaml", "-c", "h"].map(OsString::from));
    }
}
