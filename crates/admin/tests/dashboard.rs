//! The dashboard in a real browser: Debian's headless Chromium renders it
//! against an admin server with a fake backend, and the test reads the
//! resulting DOM and takes a screenshot (target/dashboard.png, kept by CI).

#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use opennotr_admin::RefusalView;
use support::{session, Fake, Running, TOKEN};

const ALPHA: &str = "alpha-7c1f.relay.test";
/// A domain a hostile client might register: it must show as text and
/// never run. `data-pwned` on <body> would mean it ran.
const EVIL: &str = "evil<script>document.body.dataset.pwned='script'</script>\
                    <img src=x onerror=\"document.body.dataset.pwned='img'\">.relay.test";
const EVIL_ESCAPED: &str = "evil&lt;script&gt;document.body.dataset.pwned='script'&lt;/script&gt;\
                            &lt;img src=x onerror=\"document.body.dataset.pwned='img'\"&gt;.relay.test";
const REASON: &str = "key confirmation failed: wrong key <b>bold</b>";
const REASON_ESCAPED: &str = "key confirmation failed: wrong key &lt;b&gt;bold&lt;/b&gt;";

/// Chromium's headless browser: `OPENNOTR_CHROMIUM` if set, else Debian's
/// `chromium`. `None` (the test then returns) only when it is missing and
/// `OPENNOTR_SKIP_BROWSER=1`; missing otherwise fails the test.
fn chromium() -> Option<PathBuf> {
    let found = match std::env::var_os("OPENNOTR_CHROMIUM") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => {
            let on_path = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).map(|d| d.join("chromium")).collect::<Vec<_>>())
                .unwrap_or_default();
            std::iter::once(PathBuf::from("/usr/bin/chromium")).chain(on_path).find(|p| p.is_file())
        }
    };
    if found.is_none() {
        if std::env::var("OPENNOTR_SKIP_BROWSER").as_deref() == Ok("1") {
            println!("skipped: no chromium");
            return None;
        }
        panic!(
            "the dashboard tests need Debian's headless browser: apt-get install chromium \
             (CI installs it); set OPENNOTR_SKIP_BROWSER=1 to skip them"
        );
    }
    found
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("opennotr-admin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs Chromium on `url` with `extra` flags and a fresh profile. Virtual
/// time makes the page's 2 s polls run back to back: the browser's clock
/// only advances when nothing is pending, so 10 s of it is five polls.
async fn browse(bin: &Path, url: &str, extra: &[String]) -> Output {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let profile = TempDir::new(&format!("chromium-{}", RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.0.display()))
    .arg("--virtual-time-budget=10000")
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    // Not a synchronisation: only so that a browser that hangs fails the
    // test instead of blocking CI.
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("chromium did not finish within 5 minutes")
        .expect("running chromium");
    assert!(out.status.success(), "chromium failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test]
async fn dashboard_renders_sessions_refusals_and_charts_in_chromium() {
    let Some(bin) = chromium() else { return };

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut alpha = session("a1", Some("alice"), ALPHA, [100, 64, 242, 2], 20022);
    alpha.connected_since = now - 2 * 3600 - 14 * 60;
    let mut evil = session("e5", None, EVIL, [100, 64, 242, 3], 20023);
    evil.plaintext = true;
    // Its grouped forward fails its health check.
    evil.forwards[0].group.as_mut().unwrap().healthy = false;
    evil.connected_since = now - 9 * 60 - 5;
    let refusal = RefusalView {
        at: now - 42,
        remote: "198.51.100.7:51000".into(),
        client: Some("mallory".into()),
        code: "bad_key".into(),
        message: REASON.into(),
    };
    let fake = Fake::new(vec![alpha, evil], vec![refusal]);
    let node =
        |n: &str, at: &str| opennotr_admin::NodeView { node: n.into(), advertise: at.into(), started: now - 3600 };
    fake.state.lock().unwrap().cluster = Some(opennotr_admin::ClusterView {
        node: "node-a".into(),
        registered: true,
        error: None,
        held_by: None,
        nodes: vec![node("node-a", "10.0.0.1:10100"), node("node-b", "10.0.0.2:10100")],
        domains: vec![opennotr_admin::ClaimView { domain: EVIL.into(), node: "node-b".into() }],
    });
    let server = Running::start(fake).await;
    let url = format!("http://{}/#token={TOKEN}", server.addr);

    let out = browse(&bin, &url, &["--dump-dom".to_string()]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    let context = || format!("DOM:\n{dom}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(dom.contains(ALPHA), "first session's domain missing; {}", context());
    assert!(
        dom.contains(&format!("<td class=\"domain\">{EVIL_ESCAPED}</td>")),
        "hostile domain not shown as text in the sessions table; {}",
        context()
    );
    assert!(!dom.contains("data-pwned"), "the hostile domain's script ran; {}", context());
    assert!(
        dom.contains(&format!("<td class=\"message\">{REASON_ESCAPED}</td>")),
        "refusal reason missing or not escaped; {}",
        context()
    );
    assert!(dom.contains("bad_key") && dom.contains("mallory"), "refusal missing; {}", context());
    assert!(dom.contains("<canvas"), "no traffic chart; {}", context());
    assert!(dom.contains(">:20022<"), "forward's public port missing; {}", context());
    assert!(dom.contains("\"tcp://alpha-7c1f.relay.test:20022\""), "forward's URL missing; {}", context());
    assert!(dom.contains("\"http://alpha-7c1f.relay.test\""), "forward's URL missing; {}", context());
    assert!(dom.contains(">plaintext<"), "plaintext session not marked; {}", context());
    // The credentials list, and that the page left the sign-in form.
    assert!(dom.contains("20000-20100"), "credentials missing; {}", context());
    // Bandwidth limits: the session's, a forward's, a credential's.
    assert!(dom.contains(">≤ 9.5 MiB/s<"), "session limit missing; {}", context());
    assert!(dom.contains(">≤ 977 KiB/s<"), "forward limit missing; {}", context());
    assert!(dom.contains(">9.5 MiB/s client<"), "credential limit missing; {}", context());
    assert!(!dom.contains(TOKEN), "the token is left in the page; {}", context());
    // Groups and access rules: a badge per grouped forward and per forward
    // with rules (with its refusals), the groups' table, the credential's rules.
    assert!(dom.contains(">⇄ ssh-pool<"), "group badge missing; {}", context());
    assert!(dom.contains(">access · 10 refused<"), "access badge missing; {}", context());
    assert!(dom.contains(">access · 2 refused<"), "access badge missing; {}", context());
    assert!(dom.contains("server: allow 10.0.0.0/8\nclient: deny 10.9.0.0/16"), "rules' title missing; {}", context());
    // The cluster: its nodes, this one in bold, the domains each holds
    // (as text, even a hostile one).
    let cluster = dom.split("<table id=\"cluster\">").nth(1).unwrap_or_default();
    assert!(
        cluster.contains("<strong>node-a</strong>") && cluster.contains("10.0.0.2:10100"),
        "cluster table missing; {}",
        context()
    );
    assert!(
        cluster.contains(&format!("<li class=\"mono\">{EVIL_ESCAPED}</li>")),
        "a node's domain missing; {}",
        context()
    );
    assert!(dom.contains("this node: node-a"), "cluster state missing; {}", context());
    // Every node's sessions: this node's, and a node that did not answer.
    let sessions = dom.split("<table id=\"cluster-sessions\">").nth(1).unwrap_or_default();
    assert!(sessions.contains(">alpha-7c1f.relay.test<"), "a node's session missing; {}", context());
    assert!(sessions.contains(">no answer: no answer in time<"), "an unanswering node missing; {}", context());
    let groups = dom.split("<table id=\"groups\">").nth(1).unwrap_or_default();
    assert!(groups.contains("<strong>ssh-pool</strong>"), "groups table missing; {}", context());
    assert!(groups.contains(">least connections<"), "group balance missing; {}", context());
    assert!(groups.contains("tcp://relay.test:20500"), "group endpoint missing; {}", context());
    assert!(groups.contains(">alice<"), "named member missing; {}", context());
    assert!(dom.contains(">⇄ ssh-pool · down<"), "unhealthy member's badge missing; {}", context());
    assert!(groups.contains(">healthy<") && groups.contains(">down<"), "members' health missing; {}", context());
    assert!(
        groups.contains(&format!("{EVIL_ESCAPED} (shared key)")),
        "shared-key member missing or not escaped; {}",
        context()
    );
    assert!(dom.contains("allow 192.0.2.0/24<br>users dave"), "credential's rules missing; {}", context());

    // The screenshot, where CI keeps it as an artifact.
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard.png");
    let _ = std::fs::remove_file(&png);
    browse(&bin, &url, &[format!("--screenshot={}", png.display()), "--window-size=1280,900".to_string()]).await;
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (w, h) =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1280, 900), "screenshot size");
    // A blank or sign-in page compresses to a few KiB; tables and charts do not.
    assert!(bytes.len() > 40_000, "screenshot looks empty: {} bytes", bytes.len());
    server.stop().await;
}

#[tokio::test]
async fn dashboard_asks_again_for_a_rejected_token() {
    let Some(bin) = chromium() else { return };
    let server =
        Running::start(Fake::new(vec![session("a1", Some("alice"), ALPHA, [100, 64, 242, 2], 20022)], vec![])).await;
    let url = format!("http://{}/#token=not-the-token", server.addr);
    let out = browse(&bin, &url, &["--dump-dom".to_string()]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("the server rejected the token"), "no sign-in error shown:\n{dom}");
    assert!(!dom.contains(ALPHA), "data shown without a valid token:\n{dom}");
    assert!(dom.contains("<section id=\"login\" class=\"login\">"), "sign-in form hidden:\n{dom}");
    server.stop().await;
}
