//! Automatic certificates (ACME) of the embedded `https` gateway, against
//! Let's Encrypt's test CA **pebble** (Debian package `pebble`) with real
//! validation: pebble resolves every name to 127.0.0.1 through
//! `pebble-challtestsrv`'s DNS, and connects for HTTP-01 to the gateway's
//! `http` port (pebble's `httpPort`) or for TLS-ALPN-01 to its https port
//! (`tlsPort`). Visited with real `curl` trusting pebble's root.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opennotr_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::process::{Child, Command};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A custom domain the policy allows (`acme.domains`).
const CUSTOM: &str = "shop.custom.test";
/// A domain outside the policy.
const OUTSIDE: &str = "outside.example";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("opennotr-gateway-acme-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn path(&self, rel: &str) -> String {
        self.0.join(rel).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port free right now (for the configs of pebble, which must
/// know where to connect before our listeners exist).
fn free_port() -> u16 {
    let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = t.local_addr().unwrap().port();
    // The DNS server needs the UDP port as well.
    if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
        return free_port();
    }
    port
}

/// pebble and its DNS (pebble-challtestsrv), killed when dropped.
struct Pebble {
    _dns: Child,
    pebble: Child,
    /// pebble's config file and the DNS server it asks.
    config: String,
    dns_port: u16,
    /// pebble's management API (its roots).
    mgmt_port: u16,
    /// The ACME directory URL.
    directory: String,
    /// The CA of pebble's own TLS certificate (for `acme.caRoots`).
    tls_ca: String,
    /// pebble's issuing root (PEM file), which curl trusts.
    root: String,
}

async fn curl_get(args: &[&str]) -> (i32, String, String) {
    let out = within(
        Duration::from_secs(30),
        "curl",
        Command::new(opennotr_tests::tools::need("curl"))
            .args(["-sS", "--noproxy", "*", "--max-time", "10"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run curl (is curl installed?)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1.
    async fn start(dir: &Scratch, http_port: u16, tls_port: u16) -> Pebble {
        // pebble's own TLS: a CA and a non-CA leaf for 127.0.0.1/localhost
        // (webpki rejects a CA certificate as a server's).
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "pebble TLS test CA");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.is_ca = IsCa::ExplicitNoCa;
        let leaf = p.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.0.join("pebble-tls-ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.0.join("pebble-tls.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.0.join("pebble-tls.key"), key.serialize_pem()).unwrap();

        let (dns_port, mgmt_port, acme_port, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.path("pebble-tls.pem"),
            "privateKey": dir.path("pebble-tls.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.0.join("pebble.json"), config.to_string()).unwrap();
        let dns = Command::new(opennotr_tests::tools::need("pebble-challtestsrv"))
            .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run pebble-challtestsrv (Debian package pebble)");
        let config = dir.path("pebble.json");
        let tls_ca = dir.path("pebble-tls-ca.pem");
        let mut pebble = Pebble {
            _dns: dns,
            pebble: spawn_pebble(&config, dns_port),
            config,
            dns_port,
            mgmt_port,
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            tls_ca,
            root: dir.path("pebble-root.pem"),
        };
        pebble.fetch_root().await;
        pebble
    }

    /// Waits until the management API gives pebble's (current) root and
    /// stores it in `root` (bounded polling).
    async fn fetch_root(&mut self) {
        let roots = format!("https://127.0.0.1:{}/roots/0", self.mgmt_port);
        let root_pem = within(Duration::from_secs(20), "pebble to start", async {
            loop {
                let (code, out, _) = curl_get(&["--cacert", &self.tls_ca, &roots]).await;
                if code == 0 && out.contains("BEGIN CERTIFICATE") {
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        std::fs::write(&self.root, root_pem).unwrap();
    }

    /// Stops pebble and starts it again on the same ports (the directory
    /// URL is in the gateway's config): it keeps no state, so it forgets
    /// every account and has a new root.
    async fn restart(&mut self) {
        self.pebble.kill().await.expect("kill pebble");
        self.pebble = spawn_pebble(&self.config, self.dns_port);
        self.fetch_root().await;
    }
}

fn spawn_pebble(config: &str, dns_port: u16) -> Child {
    Command::new(opennotr_tests::tools::need("pebble"))
        .args(["-config", config, "-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run pebble (Debian package pebble)")
}

/// An HTTP/1.1 service answering its name.
async fn http_service(name: &'static str) -> Service {
    tcp_service(move |s| async move {
        let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
            Ok::<_, Infallible>(
                Response::new(Full::new(Bytes::from(format!("service={name}"))).boxed()) as Response<Body>
            )
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(s), svc)
            .await;
    })
    .await
}

fn https_fwd(local: u16) -> Fwd {
    Fwd { protocol: "https".into(), public: 0, local }
}

/// `https://domain:port/` trusting only pebble's root: (curl exit code, body, stderr).
async fn curl_https(root: &str, domain: &str, port: u16) -> (i32, String, String) {
    let resolve = format!("{domain}:{port}:127.0.0.1");
    curl_get(&["--cacert", root, "--resolve", &resolve, &format!("https://{domain}:{port}/")]).await
}

/// Polls until curl trusts what the gateway serves for `domain` (bounded).
async fn until_trusted(root: &str, domain: &str, port: u16) -> String {
    within(Duration::from_secs(40), &format!("a pebble certificate for {domain}"), async {
        loop {
            let (code, body, _) = curl_https(root, domain, port).await;
            if code == 0 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

/// The leaf certificate (PEM) served for `servername`, or "" when the
/// handshake fails.
async fn served_leaf(port: u16, servername: &str) -> String {
    let out = within(
        Duration::from_secs(20),
        "openssl s_client",
        Command::new(opennotr_tests::tools::need("openssl"))
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", servername])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run openssl");
    first_pem(&String::from_utf8_lossy(&out.stdout))
}

fn first_pem(text: &str) -> String {
    let (Some(a), Some(b)) = (text.find("-----BEGIN CERTIFICATE-----"), text.find("-----END CERTIFICATE-----")) else {
        return String::new();
    };
    text[a..b].to_string()
}

async fn acme_server(
    pebble: &Pebble,
    dir: &Scratch,
    http_port: u16,
    https_listen: &str,
    challenge: &str,
    renew_before_days: u32,
) -> TestServer {
    let acme = serde_json::json!({
        "directory": pebble.directory,
        "email": "admin@example.com",
        "storage": dir.path("acme"),
        "zone": ZONE,
        "domains": [CUSTOM],
        "challenge": challenge,
        "caRoots": pebble.tls_ca,
        "renewBefore": renew_before_days,
    });
    let https = serde_json::json!({"listen": https_listen, "acme": acme});
    let spec = ServerSpec::default()
        .plugin("http", &format!(r#"{{"listen": "127.0.0.1:{http_port}"}}"#))
        .plugin("https", &https.to_string());
    TestServer::start(&spec).await
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificates_are_issued_stored_and_reloaded() {
    run_test(async {
        let dir = Scratch::new("http01");
        let http_port = free_port();
        let pebble = Pebble::start(&dir, http_port, free_port()).await;
        let server = acme_server(&pebble, &dir, http_port, "127.0.0.1:0", "http-01", 7).await;
        let svc = http_service("A").await;
        let other = http_service("B").await;
        let web = format!("web.{ZONE}");
        let mut a = TestClient::start(&ClientSpec::new(server.addr).domain(&web).forward(https_fwd(svc.addr.port())));
        let mut b =
            TestClient::start(&ClientSpec::new(server.addr).domain(OUTSIDE).forward(https_fwd(other.addr.port())));
        let port = public_port(&a.connected().await, 0);
        // The forward is up before any certificate exists (no waiting on ACME).
        assert_eq!(public_port(&b.connected().await, 0), port);

        // Issued on connect, validated over HTTP-01, trusted via pebble's root.
        assert_eq!(until_trusted(&pebble.root, &web, port).await, "service=A");
        let stored = std::fs::read_to_string(dir.0.join(format!("acme/certs/{web}.pem"))).unwrap();
        let leaf = served_leaf(port, &web).await;
        assert!(!leaf.is_empty() && leaf == first_pem(&stored), "the stored certificate is served");
        assert!(dir.0.join(format!("acme/certs/{web}.key")).is_file());

        // Outside the policy: no certificate (no default one here either).
        let (code, _, err) = curl_https(&pebble.root, OUTSIDE, port).await;
        assert_ne!(code, 0, "no certificate may be served for {OUTSIDE}: {err}");
        assert!(!dir.0.join(format!("acme/certs/{OUTSIDE}.pem")).exists());

        // A restarted server loads it from storage: the same certificate,
        // served at once, without a new order.
        a.stop().await;
        b.stop().await;
        server.stop().await;
        let server = acme_server(&pebble, &dir, http_port, "127.0.0.1:0", "http-01", 7).await;
        let mut a = TestClient::start(&ClientSpec::new(server.addr).domain(&web).forward(https_fwd(svc.addr.port())));
        let port = public_port(&a.connected().await, 0);
        let (code, body, err) = curl_https(&pebble.root, &web, port).await;
        assert_eq!((code, body.as_str()), (0, "service=A"), "{err}");
        assert_eq!(served_leaf(port, &web).await, leaf, "the stored certificate, not a new one");
        assert_eq!(std::fs::read_to_string(dir.0.join(format!("acme/certs/{web}.pem"))).unwrap(), stored);
        a.stop().await;
        server.stop().await;

        // Renewal: with renewBefore longer than pebble's validity (5 years)
        // the stored certificate is due; it keeps being served while a new
        // one is ordered, which then replaces it on disk and on the wire.
        let server = acme_server(&pebble, &dir, http_port, "127.0.0.1:0", "http-01", 3650).await;
        let mut a = TestClient::start(&ClientSpec::new(server.addr).domain(&web).forward(https_fwd(svc.addr.port())));
        let port = public_port(&a.connected().await, 0);
        let renewed = within(Duration::from_secs(30), "the renewed certificate", async {
            loop {
                let now = served_leaf(port, &web).await;
                if !now.is_empty() && now != leaf {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        let (code, body, err) = curl_https(&pebble.root, &web, port).await;
        assert_eq!((code, body.as_str()), (0, "service=A"), "{err}");
        let stored = std::fs::read_to_string(dir.0.join(format!("acme/certs/{web}.pem"))).unwrap();
        assert_eq!(first_pem(&stored), renewed);
        a.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificates_for_custom_domains() {
    run_test(async {
        let dir = Scratch::new("alpn");
        let (http_port, https_port) = (free_port(), free_port());
        let pebble = Pebble::start(&dir, http_port, https_port).await;
        let server = acme_server(&pebble, &dir, http_port, &format!("127.0.0.1:{https_port}"), "tls-alpn-01", 7).await;
        let svc = http_service("C").await;
        let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(CUSTOM).forward(https_fwd(svc.addr.port())));
        assert_eq!(public_port(&c.connected().await, 0), https_port);
        assert_eq!(until_trusted(&pebble.root, CUSTOM, https_port).await, "service=C");
        assert!(dir.0.join(format!("acme/certs/{CUSTOM}.pem")).is_file());
        c.stop().await;
        server.stop().await;
    })
    .await;
}

/// pebble restarted while the server runs: the CA no longer knows the
/// stored account. The next order registers a new account, stores it and
/// gets its certificate, trusted via the new pebble's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ca_forgot_is_registered_again() {
    run_test(async {
        let dir = Scratch::new("forgotten");
        let http_port = free_port();
        let mut pebble = Pebble::start(&dir, http_port, free_port()).await;
        let server = acme_server(&pebble, &dir, http_port, "127.0.0.1:0", "http-01", 7).await;
        let svc = http_service("A").await;
        let first = format!("first.{ZONE}");
        let mut a = TestClient::start(&ClientSpec::new(server.addr).domain(&first).forward(https_fwd(svc.addr.port())));
        let port = public_port(&a.connected().await, 0);
        assert_eq!(until_trusted(&pebble.root, &first, port).await, "service=A");
        let account = || {
            let files: Vec<_> = std::fs::read_dir(dir.0.join("acme"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("account-"))
                .collect();
            assert_eq!(files.len(), 1, "one stored account");
            std::fs::read_to_string(files[0].path()).unwrap()
        };
        let before = account();

        pebble.restart().await;
        let second = format!("second.{ZONE}");
        let other = http_service("B").await;
        let mut b =
            TestClient::start(&ClientSpec::new(server.addr).domain(&second).forward(https_fwd(other.addr.port())));
        assert_eq!(public_port(&b.connected().await, 0), port);
        assert_eq!(until_trusted(&pebble.root, &second, port).await, "service=B");
        assert_ne!(account(), before, "the new account is stored in place of the forgotten one");
        a.stop().await;
        b.stop().await;
        server.stop().await;
    })
    .await;
}
