//! Which bandwidth limits a session and its forwards run under
//! (docs/bandwidth.md): the server's value for the client (its credential's,
//! else `limits.*`) and the client's own wish, whichever is lower. The
//! buckets themselves are `opennotr_transport::bandwidth`.

use std::sync::Arc;

use opennotr_config::{Credential, Limits};
use opennotr_transport::bandwidth::Throttle;

/// The lower of the server's limit and the client's wish (`None` on both
/// sides: unlimited). A wish of 0 is no wish: the client's file cannot say
/// it, and the server does not stop a session for a peer's nonsense.
pub(crate) fn effective(server: Option<u64>, client: Option<u64>) -> Option<u64> {
    let client = client.filter(|c| *c > 0);
    match (server, client) {
        (Some(s), Some(c)) => Some(s.min(c)),
        (s, c) => s.or(c),
    }
}

/// The server's limit for a whole client: its credential's, else
/// `limits.clientBandwidth` (also for clients of the shared key).
pub(crate) fn client_limit(cred: Option<&Credential>, limits: &Limits) -> Option<u64> {
    cred.and_then(|c| c.bandwidth).or(limits.client_bandwidth)
}

/// The server's limit for each forward of a client: its credential's
/// `forwardBandwidth`, else `limits.forwardBandwidth`.
pub(crate) fn forward_limit(cred: Option<&Credential>, limits: &Limits) -> Option<u64> {
    cred.and_then(|c| c.forward_bandwidth).or(limits.forward_bandwidth)
}

/// A throttle for `rate`, if there is one.
pub(crate) fn throttle(rate: Option<u64>) -> Option<Arc<Throttle>> {
    rate.map(|r| Arc::new(Throttle::new(r)))
}

/// The bandwidth metrics: per limited client and forward, the limit, the
/// time its streams were held back and the datagrams it dropped. Nothing
/// while no limit is in force.
pub(crate) fn metrics(out: &mut String, sessions: &[Arc<crate::session::Session>]) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;

    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut rows: Vec<(String, Arc<Throttle>)> = Vec::new();
    for s in sessions {
        let who = format!("client=\"{}\",domain=\"{}\"", esc(s.client.as_deref().unwrap_or("")), esc(&s.domain));
        if let Some(t) = s.bandwidth.get() {
            rows.push((format!("{who},scope=\"client\",protocol=\"\",port=\"\""), t.clone()));
        }
        s.with_forwards(|fs| {
            for f in fs {
                if let Some(t) = f.counters.limit.get() {
                    let port = f.info.public_port.map(|p| p.to_string()).unwrap_or_default();
                    let labels =
                        format!("{who},scope=\"forward\",protocol=\"{}\",port=\"{port}\"", esc(&f.info.protocol));
                    rows.push((labels, t.clone()));
                }
            }
        });
    }
    if rows.is_empty() {
        return;
    }
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(out, "opennotr_bandwidth_limit_bytes", "gauge", "Bandwidth limit in force, bytes a second each way.");
    for (l, t) in &rows {
        let _ = writeln!(out, "opennotr_bandwidth_limit_bytes{{{l}}} {}", t.rate());
    }
    family(
        out,
        "opennotr_bandwidth_throttled_seconds_total",
        "counter",
        "Time streams waited for a bandwidth limit, summed over streams.",
    );
    for (l, t) in &rows {
        let secs = t.throttled_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "opennotr_bandwidth_throttled_seconds_total{{{l}}} {secs}");
    }
    family(
        out,
        "opennotr_bandwidth_dropped_datagrams_total",
        "counter",
        "UDP datagrams dropped for a bandwidth limit.",
    );
    for (l, t) in &rows {
        let _ = writeln!(
            out,
            "opennotr_bandwidth_dropped_datagrams_total{{{l}}} {}",
            t.dropped_datagrams.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_may_only_lower() {
        assert_eq!(effective(None, None), None);
        assert_eq!(effective(Some(1000), None), Some(1000));
        assert_eq!(effective(Some(1000), Some(5000)), Some(1000));
        assert_eq!(effective(Some(1000), Some(10)), Some(10));
        assert_eq!(effective(None, Some(10)), Some(10));
        assert_eq!(effective(Some(1000), Some(0)), Some(1000));
        assert_eq!(effective(None, Some(0)), None);
    }

    #[test]
    fn the_credential_comes_before_the_default() {
        let limits = Limits { client_bandwidth: Some(100), forward_bandwidth: Some(10), ..Limits::default() };
        let mut cred = opennotr_config::credential(
            "clients[0]",
            opennotr_config::CredentialText { name: "a".into(), key: "k".into(), ..Default::default() },
            &opennotr_config::ReservedNames::new("z.test", None),
        )
        .unwrap();
        assert_eq!((client_limit(Some(&cred), &limits), forward_limit(Some(&cred), &limits)), (Some(100), Some(10)));
        assert_eq!((client_limit(None, &limits), forward_limit(None, &limits)), (Some(100), Some(10)));
        cred.bandwidth = Some(7);
        cred.forward_bandwidth = Some(3);
        assert_eq!((client_limit(Some(&cred), &limits), forward_limit(Some(&cred), &limits)), (Some(7), Some(3)));
        assert_eq!(client_limit(None, &Limits::default()), None);
    }
}
