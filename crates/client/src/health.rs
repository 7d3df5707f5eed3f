//! Health checks of grouped forwards: the client checks its own local
//! targets and tells the server when a verdict changes, so the group's
//! connections go to members that can serve them.

use std::net::SocketAddr;

use opennotr_config::{ClientConfig, GroupBalance, GroupConfig, HealthCheck, HealthKind};
use opennotr_proto::message::{Balance, ClientMessage, ForwardResult, GroupRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The longest status line read from a service under an HTTP check: the
/// status is in its first bytes, and a service is not trusted to end it.
const STATUS_LINE_MAX: usize = 1024;

/// What a forward's `group` puts on the wire: the key only as a digest.
pub(crate) fn group_request(g: &GroupConfig) -> GroupRequest {
    GroupRequest {
        name: g.name.clone(),
        key: GroupRequest::digest(&g.name, g.key.expose()),
        balance: match g.balance {
            GroupBalance::RoundRobin => Balance::RoundRobin,
            GroupBalance::LeastConn => Balance::LeastConn,
        },
    }
}

/// Starts a check for each grouped forward with a `healthCheck` that the
/// server took into its group (its result echoes the group: a server that
/// predates groups does not, and would close the session on
/// `forward_health`). The checks end with `kill`.
pub(crate) fn spawn(
    cfg: &ClientConfig,
    results: &[ForwardResult],
    out: mpsc::Sender<ClientMessage>,
    kill: CancellationToken,
) {
    // The same order as the requests: one per port pair of each forward.
    let checks = cfg
        .forwards
        .iter()
        .flat_map(|f| f.ports.iter().map(move |_| f.group.as_ref().and_then(|g| g.health_check.clone())));
    for (i, (check, result)) in checks.zip(results).enumerate() {
        let (Some(check), None, Some(group)) = (check, &result.error, &result.request.group) else { continue };
        let Ok(forward) = u32::try_from(i) else { break };
        let target = SocketAddr::new(result.request.local_ip, result.request.local_port);
        let name = group.name.clone();
        tokio::spawn(run(forward, name, target, check, out.clone(), kill.clone()));
    }
}

/// Checks `target` every `interval` until `kill`, reporting changes. The
/// member starts healthy; a failed first check takes it out at once,
/// later ones after `failures` in a row.
async fn run(
    forward: u32,
    group: String,
    target: SocketAddr,
    check: HealthCheck,
    out: mpsc::Sender<ClientMessage>,
    kill: CancellationToken,
) {
    let mut healthy = true;
    let mut first = true;
    let (mut failed, mut passed) = (0u32, 0u32);
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = kill.cancelled() => return,
        }
        let result = tokio::select! {
            r = tokio::time::timeout(check.timeout, probe(target, &check.kind)) => {
                r.unwrap_or_else(|_| Err("timed out".into()))
            }
            _ = kill.cancelled() => return,
        };
        let verdict = match &result {
            Ok(()) => {
                (failed, passed) = (0, passed.saturating_add(1));
                healthy || passed >= check.passes
            }
            Err(_) => {
                (failed, passed) = (failed.saturating_add(1), 0);
                healthy && !first && failed < check.failures
            }
        };
        first = false;
        if verdict == healthy {
            continue;
        }
        healthy = verdict;
        match &result {
            Ok(()) => info!(%group, %target, "health check passes; back in the group"),
            Err(e) => warn!(%group, %target, error = %e, "health check fails; out of the group"),
        }
        if out.send(ClientMessage::ForwardHealth { forward, healthy }).await.is_err() {
            return;
        }
    }
}

/// One check of `target`.
async fn probe(target: SocketAddr, kind: &HealthKind) -> Result<(), String> {
    let mut tcp = TcpStream::connect(target).await.map_err(|e| e.to_string())?;
    let HealthKind::Http { path, status } = kind else { return Ok(()) };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: opennotr-health\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < STATUS_LINE_MAX {
        let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = status_code(&buf).ok_or("no HTTP status line in the answer")?;
    let pass = match status {
        Some(want) => code == *want,
        None => (200..300).contains(&code),
    };
    if pass {
        Ok(())
    } else {
        Err(format!("GET {path} answered {code}"))
    }
}

/// The status of `HTTP/1.x NNN ...`.
fn status_code(answer: &[u8]) -> Option<u16> {
    let rest = answer.strip_prefix(b"HTTP/1.")?.get(1..)?.strip_prefix(b" ")?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ' && b != b'\r') {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_strictly() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"SSH-2.0-x\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
