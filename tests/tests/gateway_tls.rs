//! The embedded gateway's TLS port (`https` termination, `tls` SNI
//! passthrough, gRPC over TLS): real servers and clients in process,
//! visited with real `curl`, `openssl s_client` and Python's gRPC, with
//! certificates made by `rcgen`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opennotr_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn dom(label: &str) -> String {
    format!("{label}.{ZONE}")
}

/// The per-domain certificate's domain (not under the server's zone).
const CUSTOM: &str = "shop.custom.test";

// ------------------------------------------------------------ certificates

/// A test CA issuing certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for `names`, with subject CN `cn`.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("opennotr-gateway-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("certs")).unwrap();
        Scratch(p)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        // Write then rename, as a deployment tool would: no half-written file.
        let tmp = self.0.join(format!(".{}.tmp", rel.replace('/', "_")));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
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

/// The gateway's PKI on disk: `ca.pem`, the default wildcard certificate
/// for `*.e2e.notr.test` (CN "default wildcard") and a per-domain one for
/// [`CUSTOM`] (CN "custom v1") in `certs/`.
fn gateway_pki(name: &str) -> (Scratch, Ca) {
    let dir = Scratch::new(name);
    let ca = Ca::new("opennotr gateway test CA");
    dir.write("ca.pem", &ca.pem());
    let (c, k) = ca.issue("default wildcard", &[&format!("*.{ZONE}")]);
    dir.write("default.pem", &c);
    dir.write("default-key.pem", &k);
    let (c, k) = ca.issue("custom v1", &[CUSTOM]);
    dir.write(&format!("certs/{CUSTOM}.pem"), &c);
    dir.write(&format!("certs/{CUSTOM}.key"), &k);
    (dir, ca)
}

/// A server whose `https` and `tls` plugins share one loopback port (and
/// `h2c` has its own), with the certificates of `pki`.
async fn tls_server(pki: &Scratch) -> TestServer {
    let https = format!(
        r#"{{"listen": "127.0.0.1:0", "cert": "{}", "key": "{}", "certDir": "{}", "reloadInterval": 0.2}}"#,
        pki.path("default.pem"),
        pki.path("default-key.pem"),
        pki.path("certs")
    );
    let spec = ServerSpec::default()
        .plugin("https", &https)
        .plugin("tls", r#"{"listen": "127.0.0.1:0"}"#)
        .plugin("h2c", r#"{"listen": "127.0.0.1:0"}"#);
    TestServer::start(&spec).await
}

fn fwd(protocol: &str, local: u16) -> Fwd {
    Fwd { protocol: protocol.into(), public: 0, local }
}

// ---------------------------------------------------------------- services

/// An HTTP/1.1 + HTTP/2 service answering its name, the request's version
/// and headers.
async fn http_service(name: &'static str) -> Service {
    tcp_service(move |s| async move {
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
            let mut text = format!("service={name}\nversion={:?}\npath={}\n", req.version(), req.uri().path());
            for (k, v) in req.headers() {
                text += &format!("{k}: {}\n", v.to_str().unwrap_or("?"));
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)).boxed()) as Response<Body>)
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(s), svc)
            .await;
    })
    .await
}

/// The client's own TLS service (its own certificate, from `ca`): answers
/// any HTTP/1.1 request with "own tls service".
async fn own_tls_service(ca: &Ca, name: &str) -> Service {
    let (cert, key) = ca.issue("the client's own service", &[name]);
    let chain =
        rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tcp_service(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(s).await else { return };
            let (r, mut w) = tokio::io::split(tls);
            let mut r = BufReader::new(r);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let body = "own tls service";
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = w.write_all(resp.as_bytes()).await;
            let _ = w.shutdown().await;
        }
    })
    .await
}

// -------------------------------------------------------------- visitors

struct Curl {
    code: i32,
    status: u16,
    body: String,
    stderr: String,
}

/// curl over TLS to `https://domain:port/path`, trusting `ca` and resolving
/// the name to loopback. The body ends with `\n<http_version>`.
async fn curl(ca: &str, domain: &str, port: u16, path: &str, extra: &[&str]) -> Curl {
    let resolve = format!("{domain}:{port}:127.0.0.1");
    let url = format!("https://{domain}:{port}{path}");
    let out = within(
        Duration::from_secs(30),
        "curl",
        Command::new(opennotr_tests::tools::need("curl"))
            .args(["-sS", "--noproxy", "*", "--max-time", "20", "--cacert", ca, "--resolve", &resolve])
            .args(["-w", "\n%{http_version}\n%{http_code}"])
            .args(extra)
            .arg(&url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Curl {
        code: out.status.code().unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn header_of(body: &str, name: &str) -> Option<String> {
    body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
}

/// The subject line `openssl s_client` prints for the certificate served
/// to `servername` (none: no SNI).
async fn served_subject(port: u16, servername: Option<&str>) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(opennotr_tests::tools::need("openssl"));
    cmd.args(["s_client", "-connect", &connect]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = within(
        Duration::from_secs(20),
        "openssl s_client",
        cmd.stdin(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().find(|l| l.starts_with("subject=")).unwrap_or_else(|| panic!("no subject in:\n{text}")).to_string()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_by_sni_with_http1_and_http2() {
    run_test(async {
        let (pki, _ca) = gateway_pki("sni");
        let ca = pki.path("ca.pem");
        let server = tls_server(&pki).await;
        let (sa, sb) = (http_service("A").await, http_service("B").await);
        let da = dom("web");
        let mut a = TestClient::start(&ClientSpec::new(server.addr).domain(&da).forward(fwd("https", sa.addr.port())));
        let mut b =
            TestClient::start(&ClientSpec::new(server.addr).domain(CUSTOM).forward(fwd("https", sb.addr.port())));
        let ra = a.connected().await;
        let port = public_port(&ra, 0);
        assert_eq!(public_port(&b.connected().await, 0), port, "both domains share the https port");
        assert_eq!(ra.forwards[0].url.as_deref(), Some(format!("https://{da}:{port}").as_str()));

        // HTTP/1.1 at the edge and to the service, forwarded headers.
        let r = curl(&ca, &da, port, "/one", &["--http1.1"]).await;
        assert_eq!((r.code, r.status), (0, 200), "{}{}", r.body, r.stderr);
        assert!(r.body.starts_with("service=A\nversion=HTTP/1.1\npath=/one\n"), "{}", r.body);
        assert!(r.body.ends_with("\n1.1"), "{}", r.body);
        assert_eq!(header_of(&r.body, "x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(header_of(&r.body, "x-forwarded-host"), Some(format!("{da}:{port}")));
        assert_eq!(header_of(&r.body, "x-real-ip").as_deref(), Some("127.0.0.1"));

        // HTTP/2 at the edge (ALPN h2), HTTP/1.1 to the service.
        let r = curl(&ca, &da, port, "/two", &["--http2", "-v"]).await;
        assert_eq!((r.code, r.status), (0, 200), "{}{}", r.body, r.stderr);
        assert!(
            r.stderr.contains("ALPN: server accepted h2") || r.stderr.contains("ALPN, server accepted to use h2"),
            "{}",
            r.stderr
        );
        assert!(r.body.ends_with("\n2"), "curl did not speak HTTP/2: {}", r.body);
        assert!(r.body.starts_with("service=A\nversion=HTTP/1.1\npath=/two\n"), "{}", r.body);
        assert_eq!(header_of(&r.body, "host"), Some(format!("{da}:{port}")));

        // The per-domain certificate for its domain (curl verifies it).
        let r = curl(&ca, CUSTOM, port, "/", &[]).await;
        assert_eq!((r.code, r.status), (0, 200), "{}{}", r.body, r.stderr);
        assert!(r.body.starts_with("service=B\n"), "{}", r.body);
        assert!(served_subject(port, Some(CUSTOM)).await.contains("custom v1"));
        assert!(served_subject(port, Some(&da)).await.contains("default wildcard"));
        assert!(served_subject(port, None).await.contains("default wildcard"));

        // A name the default certificate does not cover fails verification.
        let r = curl(&ca, "other.example", port, "/", &[]).await;
        assert_eq!(r.code, 60, "curl should refuse the certificate: {}{}", r.body, r.stderr);

        // Unknown domain under the wildcard: the default certificate, a 404
        // naming it.
        let unknown = dom("nobody");
        let r = curl(&ca, &unknown, port, "/", &[]).await;
        assert_eq!((r.code, r.status), (0, 404), "{}{}", r.body, r.stderr);
        assert!(r.body.contains(&unknown), "{}", r.body);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_when_their_files_change() {
    run_test(async {
        let (pki, ca) = gateway_pki("reload");
        let server = tls_server(&pki).await;
        let svc = http_service("R").await;
        let mut c =
            TestClient::start(&ClientSpec::new(server.addr).domain(CUSTOM).forward(fwd("https", svc.addr.port())));
        let port = public_port(&c.connected().await, 0);
        assert!(served_subject(port, Some(CUSTOM)).await.contains("custom v1"));

        // Replace the per-domain pair and the default pair.
        let (cert, key) = ca.issue("custom v2", &[CUSTOM]);
        pki.write(&format!("certs/{CUSTOM}.key"), &key);
        pki.write(&format!("certs/{CUSTOM}.pem"), &cert);
        let (cert, key) = ca.issue("default v2", &[&format!("*.{ZONE}")]);
        pki.write("default-key.pem", &key);
        pki.write("default.pem", &cert);
        // A new domain's pair appears in the directory.
        let (cert, key) = ca.issue("added", &["new.custom.test"]);
        pki.write("certs/new.custom.test.key", &key);
        pki.write("certs/new.custom.test.pem", &cert);

        within(WAIT, "the new certificates to be served", async {
            loop {
                if served_subject(port, Some(CUSTOM)).await.contains("custom v2")
                    && served_subject(port, Some(&dom("any"))).await.contains("default v2")
                    && served_subject(port, Some("new.custom.test")).await.contains("added")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let r = curl(&pki.path("ca.pem"), CUSTOM, port, "/", &[]).await;
        assert_eq!((r.code, r.status), (0, 200), "{}{}", r.body, r.stderr);

        // A broken file keeps the previous certificate: once a pair added
        // at the same time is served, the broken one has been seen too.
        pki.write(&format!("certs/{CUSTOM}.pem"), "not a certificate");
        let (cert, key) = ca.issue("marker", &["marker.custom.test"]);
        pki.write("certs/marker.custom.test.key", &key);
        pki.write("certs/marker.custom.test.pem", &cert);
        within(WAIT, "the marker certificate to be served", async {
            while !served_subject(port, Some("marker.custom.test")).await.contains("marker") {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(served_subject(port, Some(CUSTOM)).await.contains("custom v2"));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_to_the_clients_own_tls_service() {
    run_test(async {
        let (pki, _ca) = gateway_pki("pass");
        let server = tls_server(&pki).await;
        let own_ca = Scratch::new("pass-own");
        let client_ca = Ca::new("the client's own CA");
        let own_ca_pem = own_ca.write("ca.pem", &client_ca.pem()).display().to_string();
        let dp = dom("pass");
        let own = own_tls_service(&client_ca, &dp).await;
        let web = http_service("W").await;
        let dw = dom("terminated");
        let mut p = TestClient::start(&ClientSpec::new(server.addr).domain(&dp).forward(fwd("tls", own.addr.port())));
        let mut w = TestClient::start(&ClientSpec::new(server.addr).domain(&dw).forward(fwd("https", web.addr.port())));
        let reg = p.connected().await;
        let port = public_port(&reg, 0);
        assert_eq!(reg.forwards[0].url.as_deref(), Some(format!("tls://{dp}:{port}").as_str()));
        assert_eq!(public_port(&w.connected().await, 0), port, "tls and https share the port");

        // The client's own certificate, its own service's answer.
        assert!(served_subject(port, Some(&dp)).await.contains("the client's own service"));
        let r = curl(&own_ca_pem, &dp, port, "/", &[]).await;
        assert_eq!((r.code, r.status), (0, 200), "{}{}", r.body, r.stderr);
        assert!(r.body.starts_with("own tls service"), "{}", r.body);
        // The gateway's CA does not verify it: it is not the gateway's.
        assert_eq!(curl(&pki.path("ca.pem"), &dp, port, "/", &[]).await.code, 60);

        // Other names on the same port are terminated by the gateway.
        let r = curl(&pki.path("ca.pem"), &dw, port, "/", &["--http2"]).await;
        assert_eq!((r.code, r.status), (0, 200), "{}{}", r.body, r.stderr);
        assert!(r.body.starts_with("service=W\n"), "{}", r.body);
        let unknown = dom("unknown");
        assert!(served_subject(port, Some(&unknown)).await.contains("default wildcard"));
        let r = curl(&pki.path("ca.pem"), &unknown, port, "/", &[]).await;
        assert_eq!(r.status, 404, "{}{}", r.body, r.stderr);
        assert!(r.body.contains(&unknown), "{}", r.body);

        // The passthrough client goes: its name is terminated, 503.
        p.stop().await;
        let h = server.handle.clone();
        wait_until("the passthrough session to end", || h.sessions().len() == 1).await;
        let r = curl(&pki.path("ca.pem"), &dp, port, "/", &[]).await;
        assert_eq!(r.status, 503, "{}{}", r.body, r.stderr);
        assert!(r.body.contains("client not connected"), "{}", r.body);
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------- gRPC

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_to_an_h2c_forward() {
    python_with_grpc();
    run_test(async {
        let (pki, _ca) = gateway_pki("grpc");
        let server = tls_server(&pki).await;
        let (mut grpc_server, local_port) = grpc_echo_server().await;

        // gRPC requests on the https port go to the domain's h2c forward,
        // the others to its https forward.
        let d = dom("rpc");
        let web = http_service("web").await;
        let mut c = TestClient::start(
            &ClientSpec::new(server.addr)
                .domain(&d)
                .forward(fwd("h2c", local_port))
                .forward(fwd("https", web.addr.port())),
        );
        let reg = c.connected().await;
        let tls_port = public_port(&reg, 1);
        run_grpc_client(tls_port, &d, Some(&pki.path("ca.pem"))).await;

        // Non-gRPC requests for the same domain go to the https forward.
        let r = curl(&pki.path("ca.pem"), &d, tls_port, "/", &["--http2"]).await;
        assert!(r.body.starts_with("service=web\n"), "{}{}", r.body, r.stderr);
        drop(grpc_server.stdin.take());
        let _ = grpc_server.kill().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_https_config_names_the_key() {
    run_test(async {
        let (pki, _ca) = gateway_pki("badcfg");
        for (json, key) in [
            (
                r#"{"listen": "127.0.0.1:0", "cert": "/nonexistent.pem", "key": "/nonexistent.key"}"#.to_string(),
                "plugin.https.cert",
            ),
            (
                format!(
                    r#"{{"listen": "127.0.0.1:0", "cert": "{}", "key": "{}"}}"#,
                    pki.path("ca.pem"),
                    pki.path("default-key.pem")
                ),
                "plugin.https.cert",
            ),
            (r#"{"listen": "127.0.0.1:0", "certdir": "/tmp"}"#.to_string(), "plugin.https.certdir"),
        ] {
            let cfg = ServerSpec::default().plugin("https", &json).config();
            let err = match Server::bind(cfg, &builtin_plugins()).await {
                Ok(_) => panic!("{json} was accepted"),
                Err(e) => e,
            };
            assert!(matches!(&err, opennotr_server::ServerError::Config { key: k, .. } if k == key), "{json}: {err}");
        }
    })
    .await;
}
