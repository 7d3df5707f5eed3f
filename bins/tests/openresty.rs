//! The external gateway mode (`adminUrl`) against the shipped
//! `deploy/openresty/` config, run by Debian's nginx with the Lua module.
//!
//! Root only (network namespaces, the virtual LAN): not root, the nginx
//! test prints `skipped: needs root` and passes. Root without nginx's Lua
//! module (or curl, python3, openssl): it fails and says what to install.
//!
//! In a fresh "server host" namespace: nginx with the shipped config (ports
//! rewritten, its own prefix), holding mappings a crashed opennotrd left,
//! and opennotrd with the virtual LAN and `plugin.http`/`plugin.h2c`:
//! `{"adminUrl": ...}`; in a "client host" namespace: opennotr with an
//! `http` forward to a small Python service and an `h2c` forward to a
//! Python gRPC service. The stale mappings into the VIP pool go at start,
//! the others stay; the registration, a request, a WebSocket upgrade and
//! gRPC calls (cleartext HTTP/2 and over TLS) go through nginx; the admin
//! API answers only with its secret (nginx does not even start without
//! one) and requests without it change nothing; nginx is
//! restarted and gets the mappings back by reconciliation; the client
//! leaves and the mappings go. A second test (no root needed) points
//! adminUrl at a closed port: the client prints the forward refused with
//! the reason.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::grpc::{python_with_grpc, GRPC_CLIENT, GRPC_ECHO_SERVER};
use support::netns::{check, cmd, in_ns, poll_every, python, root_with, run_bounded, Lan, Out};
use support::tools;
use support::{json_fields, read_registration, Proc, Src, TempDir, CLIENT, SERVER, WAIT};

/// The VIP pool of the server (`.1` is the server's own).
const CIDR: &str = "100.64.242.1/24";
/// The VIP the first client gets.
const FIRST_VIP: &str = "100.64.242.2";

/// Ports inside the private namespaces.
const CONTROL_PORT: u16 = 10100;
const TPROXY_TCP: u16 = 4398;
const TPROXY_UDP: u16 = 4399;
/// nginx's listeners (the shipped 80, 443, 980 and 81, rewritten).
const GW_HTTP: u16 = 18080;
const GW_HTTPS: u16 = 18443;
const GW_H2C: u16 = 18980;
const GW_ADMIN: u16 = 18081;
/// The client's service.
const SERVICE_PORT: u16 = 8000;

const DOMAIN: &str = "app.gw.notr.test";
/// Mappings a crashed opennotrd left: one into its pool (to the VIP and
/// port the next client gets), one of a scheme the new one does not run
/// externally, and another server's (outside the pool).
const STALE: &str = "stale.gw.notr.test";
const STALE_HTTPS: &str = "stale-tls.gw.notr.test";
const FOREIGN: &str = "foreign.gw.notr.test";
/// The admin API's secret: nginx's `admin.secret`, opennotrd's `adminSecret`.
const SECRET: &str = "gateway-admin-secret-5c1f9e";

// ------------------------------------------------------------------ preflight

/// The nginx binary (Debian's is in /usr/sbin, not always on PATH).
fn nginx() -> String {
    tools::need("nginx").display().to_string()
}

fn preflight() -> bool {
    if !root_with(&["nft", "ip", "curl", "python3", "openssl", "nginx"]) {
        return false;
    }
    assert!(
        Path::new("/usr/lib/nginx/modules/ngx_http_lua_module.so").is_file(),
        "nginx's Lua module is missing: apt-get install libnginx-mod-http-lua lua-cjson \
         (or run .ci/install-test-deps as root)"
    );
    true
}

/// Polls `cond` every 100 ms until it holds, for at most `timeout`.
fn poll(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(Duration::from_millis(100), timeout, cond)
}

// ------------------------------------------------------------------ nginx

/// The shipped `deploy/openresty/`.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/openresty")
}

fn replace_once(s: &str, from: &str, to: &str) -> String {
    assert_eq!(s.matches(from).count(), 1, "expected {from:?} once in the shipped nginx.conf");
    s.replacen(from, to, 1)
}

/// The shipped config under `dir/ngx` (the nginx prefix), listeners on the
/// test's ports, a self-signed certificate for the TLS listener.
fn nginx_prefix(dir: &TempDir) -> PathBuf {
    let conf = std::fs::read_to_string(deploy_dir().join("nginx.conf")).unwrap();
    let mut conf = replace_once(&conf, "listen 80;", &format!("listen {GW_HTTP};"));
    conf = replace_once(&conf, "listen 443 ssl", &format!("listen {GW_HTTPS} ssl"));
    conf = replace_once(&conf, "listen 980 http2", &format!("listen {GW_H2C} http2"));
    conf = replace_once(&conf, "listen 127.0.0.1:81;", &format!("listen 127.0.0.1:{GW_ADMIN};"));
    dir.write("ngx/nginx.conf", conf);
    dir.write("ngx/lua/opennotr.lua", std::fs::read(deploy_dir().join("lua/opennotr.lua")).unwrap());
    dir.write("ngx/admin.secret", format!("{SECRET}\n"));
    dir.write("ngx/logs/.keep", "");
    dir.write("ngx/tmp/.keep", "");
    let prefix = dir.path("ngx");
    let (crt, key) = (prefix.join("cert/upstream.crt"), prefix.join("cert/upstream.key"));
    std::fs::create_dir_all(prefix.join("cert")).unwrap();
    check(cmd(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=*.gw.notr.test",
            "-addext",
            "subjectAltName=DNS:*.gw.notr.test",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    ));
    prefix
}

/// `curl` in `ns` with `-m 5`; stdout is the body, a newline and the status.
fn curl(ns: &str, args: &[&str]) -> Out {
    let mut a = vec!["-sS", "-m", "5", "-w", "\n%{http_code}"];
    a.extend_from_slice(args);
    run_bounded(in_ns(ns, "curl", &a), WAIT)
}

/// (status, body) of a curl that got an answer.
fn curl_answer(ns: &str, args: &[&str]) -> (String, String) {
    let out = curl(ns, args);
    assert_eq!(out.code, Some(0), "curl {args:?}: {}", out.show());
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

fn admin_url() -> String {
    format!("http://127.0.0.1:{GW_ADMIN}/upstreams")
}

/// `curl_answer` to the admin API with the secret.
fn admin_answer(ns: &str, args: &[&str]) -> (String, String) {
    let auth = format!("Authorization: Bearer {SECRET}");
    let mut a = vec!["-H", &auth];
    a.extend_from_slice(args);
    curl_answer(ns, &a)
}

/// The gateway's mapping of `scheme://host`: (status, body).
fn mapping_of(ns: &str, scheme: &str, host: &str) -> (String, String) {
    admin_answer(ns, &[&format!("{}?host={host}&scheme={scheme}", admin_url())])
}

/// The gateway's mapping of `DOMAIN` for `http`: (status, body).
fn mapping(ns: &str) -> (String, String) {
    mapping_of(ns, "http", DOMAIN)
}

/// Stores a mapping in the gateway directly, as an earlier opennotrd did.
fn plant(ns: &str, scheme: &str, host: &str, ip: &str) {
    let m = serde_json::json!({"scheme": scheme, "host": host, "ip": ip, "port": SERVICE_PORT.to_string()});
    let (code, body) = admin_answer(ns, &["-X", "POST", "-d", &m.to_string(), &admin_url()]);
    assert_eq!(code, "200", "planting {m}: {body}");
}

/// Runs [`GRPC_CLIENT`] in `ns` against nginx's `port` (TLS when `ca` is
/// given): it prints `grpc ok` or fails.
fn grpc_client(ns: &str, port: u16, ca: Option<&Path>) {
    let port = port.to_string();
    let mut args = vec!["-c", GRPC_CLIENT, &port, DOMAIN];
    if let Some(ca) = ca {
        args.push(ca.to_str().unwrap());
    }
    let out = run_bounded(in_ns(ns, python_with_grpc(), &args), WAIT);
    assert!(out.code == Some(0) && out.stdout.contains("grpc ok"), "gRPC through nginx:{port}: {}", out.show());
}

/// nginx in the foreground; on drop (a failed test) its master is asked to
/// stop its workers too before the guard kills it.
struct Nginx(Proc);

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.0.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.0.pid().to_string()]).status();
            poll(Duration::from_secs(5), || !matches!(self.0.child.try_wait(), Ok(None)));
        }
    }
}

/// nginx in the foreground in `ns`, once its admin API answers.
fn start_nginx(ns: &str, prefix: &Path) -> Nginx {
    let bin = nginx();
    let p = prefix.to_str().unwrap();
    let mut proc =
        Proc::spawn_named("nginx", in_ns(ns, &bin, &["-p", p, "-c", "nginx.conf", "-g", "daemon off;"]), prefix);
    let up = poll(WAIT, || {
        if let Ok(Some(st)) = proc.child.try_wait() {
            let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
            panic!("nginx exited: {st:?}\n{}\n{log}", proc.transcript());
        }
        curl(ns, &["-H", &format!("Authorization: Bearer {SECRET}"), &admin_url()]).stdout.ends_with("200")
    });
    assert!(up, "nginx's admin API did not answer within {WAIT:?}");
    Nginx(proc)
}

/// SIGQUIT (graceful stop): nginx exits 0.
fn stop_nginx(mut n: Nginx) {
    n.0.signal("QUIT");
    let st = n.0.wait_exit(WAIT);
    assert!(st.success(), "nginx after SIGQUIT: {st:?}");
}

// ------------------------------------------------------------------ the client's service

/// Answers GET with a page (and closes), and an `Upgrade: websocket`
/// request with 101, then echoes the raw bytes: enough to prove that the
/// gateway passes upgrades through.
const SERVICE: &str = r#"
import socket, sys, threading
def handle(c):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(4096)
            if not d:
                return
            data += d
        head, rest = data.split(b"\r\n\r\n", 1)
        if b"upgrade: websocket" in head.lower():
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            if rest:
                c.sendall(rest)
            while True:
                d = c.recv(4096)
                if not d:
                    return
                c.sendall(d)
        body = b"hello through the gateway\n"
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// A WebSocket-style upgrade through the gateway, then an echo.
const WS_PROBE: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" % host).encode())
data = b""
while b"\r\n\r\n" not in data:
    d = s.recv(4096)
    if not d:
        break
    data += d
head, rest = data.split(b"\r\n\r\n", 1) if b"\r\n\r\n" in data else (data, b"")
print(head.split(b"\r\n")[0].decode(), flush=True)
s.sendall(b"ping-through-the-gateway")
while len(rest) < 24:
    d = s.recv(4096)
    if not d:
        break
    rest += d
print(rest.decode(errors="replace"), flush=True)
"#;

// ------------------------------------------------------------------ opennotrd / opennotr

fn server_yaml(listen: &str, admin: &str, vlan: bool) -> String {
    let plugin = format!(r#"'{{"adminUrl": "{admin}", "adminSecret": "{SECRET}", "reconcileInterval": 1}}'"#);
    let vlan = if vlan {
        format!("  tcplisten: \"127.0.0.1:{TPROXY_TCP}\"\n  udplisten: \"127.0.0.1:{TPROXY_UDP}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"server:
  listen: "{listen}"
  authKey: "k"
  domain: "gw.notr.test"
{vlan}  shutdownGrace: 0.5
dhcp:
  cidr: "{CIDR}"
plugin:
  http: {plugin}
  h2c: {plugin}
"#
    )
}

/// The client: an `http` forward to the service, and an `h2c` one to a
/// gRPC service if it has a port.
fn client_yaml(server: &str, grpc_port: Option<u16>) -> String {
    let mut y = format!(
        "serverAddr: \"{server}\"\nkey: \"k\"\ndomain: \"{DOMAIN}\"\nforwards:\n  - protocol: http\n    ports:\n      0: {SERVICE_PORT}\n"
    );
    if let Some(p) = grpc_port {
        y += &format!("  - protocol: h2c\n    ports:\n      0: {p}\n");
    }
    y
}

fn start_server(cmd: Command, dir: &TempDir) -> (Proc, String) {
    let mut p = Proc::spawn_named("opennotrd", cmd, &dir.0);
    let line = p.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let addr = json_fields(&line, "listening for clients").unwrap()["addr"].as_str().unwrap().to_string();
    (p, addr)
}

// ------------------------------------------------------------------ tests

#[test]
fn nginx_gateway_routes_to_the_client_and_follows_its_lifecycle() {
    if !preflight() {
        return;
    }
    let t = Instant::now();
    let lan = Lan::on_subnet("og", 250, 1);
    let dir = TempDir::world_readable("openresty");
    let prefix = nginx_prefix(&dir);
    let ns = lan.server.as_str();

    // Without its admin secret, nginx does not start; the error names the
    // file, never a secret.
    let secret_file = prefix.join("admin.secret");
    std::fs::remove_file(&secret_file).unwrap();
    let p = prefix.to_str().unwrap();
    let out = run_bounded(in_ns(ns, &nginx(), &["-p", p, "-c", "nginx.conf", "-g", "daemon off;"]), WAIT);
    assert_ne!(out.code, Some(0), "nginx started without its admin secret: {}", out.show());
    assert!(out.stderr.contains("admin secret (secret_file)"), "{}", out.show());
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();

    let nginx = start_nginx(ns, &prefix);
    // An earlier opennotrd crashed and left these.
    plant(ns, "http", STALE, FIRST_VIP);
    plant(ns, "https", STALE_HTTPS, "100.64.242.40");
    plant(ns, "http", FOREIGN, "100.64.243.9");

    let mut service = Proc::spawn_named(
        "service",
        in_ns(&lan.clients[0], python(), &["-u", "-c", SERVICE, &SERVICE_PORT.to_string()]),
        &dir.0,
    );
    service.expect(Src::Out, "`ready`", |l| l == "ready");
    let mut grpc_service = Proc::spawn_named(
        "grpc service",
        in_ns(&lan.clients[0], python_with_grpc(), &["-u", "-c", GRPC_ECHO_SERVER, "forever"]),
        &dir.0,
    );
    let grpc_port: u16 = grpc_service.next_stdout().trim().parse().expect("the gRPC service's port");

    let conf =
        dir.write("opennotrd.yaml", server_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0)), &admin_url(), true));
    let (server, _) =
        start_server(in_ns(ns, SERVER, &["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"]), &dir);
    assert!(
        server.seen.iter().any(|(_, l)| l.contains("virtual LAN on")),
        "opennotrd did not turn the virtual LAN on:\n{}",
        server.transcript()
    );
    // 0. The stale mappings into the VIP pool go as the server starts; the
    // one outside the pool stays.
    assert!(
        poll(WAIT, || mapping_of(ns, "http", STALE).0 == "404" && mapping_of(ns, "https", STALE_HTTPS).0 == "404"),
        "the stale mappings into the VIP pool are still there"
    );
    assert_eq!(mapping_of(ns, "http", FOREIGN).0, "200", "the mapping outside the pool was removed");

    let cconf =
        dir.write("opennotr.yaml", client_yaml(&format!("{}:{CONTROL_PORT}", lan.server_ip(0)), Some(grpc_port)));
    let mut client = Proc::spawn_named(
        "opennotr",
        in_ns(&lan.clients[0], CLIENT, &["-c", cconf.to_str().unwrap(), "--log-level", "info", "--log-json"]),
        &dir.0,
    );
    let reg = read_registration(&mut client, 2);
    assert_eq!(reg.domain, DOMAIN);
    assert_eq!(reg.vip.to_string(), FIRST_VIP, "the VIP the stale mapping named");
    assert_eq!(reg.forwards[0], format!("http://{DOMAIN} => 127.0.0.1:{SERVICE_PORT}"));
    assert_eq!(reg.forwards[1], format!("h2c://{DOMAIN} => 127.0.0.1:{grpc_port}"));

    // 1. The registration is in the gateway (awaited before the client was told).
    let (code, body) = mapping(ns);
    assert_eq!(code, "200", "GET mapping: {body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["ip"], reg.vip.to_string(), "{m}");
    assert_eq!(m["port"], SERVICE_PORT.to_string(), "{m}");
    assert_eq!(m["scheme"], "http");
    assert_eq!(m["host"], DOMAIN);
    assert_eq!(mapping_of(ns, "h2c", DOMAIN).0, "200");

    // 1b. The admin API wants the secret: without it 401, with another one
    // 403, and neither a POST nor a DELETE changes anything.
    let hijack = serde_json::json!({"scheme": "http", "host": DOMAIN, "ip": "100.64.242.9", "port": "80"}).to_string();
    let one = format!("{}?host={DOMAIN}&scheme=http", admin_url());
    for (auth, want) in [(None, "401"), (Some("Bearer not-the-gateway-secret-00"), "403"), (Some("Basic eDp5"), "401")]
    {
        let header = auth.map(|a| format!("Authorization: {a}")).unwrap_or_default();
        let with = |args: &[&str]| {
            let mut a: Vec<&str> = if auth.is_some() { vec!["-H", &header] } else { vec![] };
            a.extend_from_slice(args);
            curl_answer(ns, &a)
        };
        for args in [vec!["-X", "POST", "-d", &hijack, &admin_url()], vec!["-X", "DELETE", &one], vec![&one]] {
            let (code, body) = with(&args);
            assert_eq!(code, want, "{auth:?} {args:?}: {body}");
            assert!(!body.contains(&reg.vip.to_string()), "{auth:?} {args:?} leaked a mapping: {body}");
        }
    }
    let (code, body) = mapping(ns);
    assert_eq!(code, "200");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["ip"], reg.vip.to_string(), "{body}");

    // 2. A request through nginx reaches the client's service.
    let resolve = format!("{DOMAIN}:{GW_HTTP}:127.0.0.1");
    let url = format!("http://{DOMAIN}:{GW_HTTP}/");
    let (code, body) = curl_answer(ns, &["--resolve", &resolve, &url]);
    assert_eq!((code.as_str(), body.as_str()), ("200", "hello through the gateway\n"));
    // An unknown domain: 404 naming it.
    let (code, body) = curl_answer(
        ns,
        &[
            "--resolve",
            &format!("nobody.gw.notr.test:{GW_HTTP}:127.0.0.1"),
            &format!("http://nobody.gw.notr.test:{GW_HTTP}/"),
        ],
    );
    assert_eq!(code, "404");
    assert!(body.contains("nobody.gw.notr.test"), "{body}");
    // The stale domain no longer reaches the VIP it named, now this client's.
    let (code, _) =
        curl_answer(ns, &["--resolve", &format!("{STALE}:{GW_HTTP}:127.0.0.1"), &format!("http://{STALE}:{GW_HTTP}/")]);
    assert_eq!(code, "404");

    // 3. A WebSocket upgrade passes through, then bytes both ways.
    let ws = check(in_ns(ns, python(), &["-c", WS_PROBE, DOMAIN, &GW_HTTP.to_string()]));
    let mut lines = ws.lines();
    assert_eq!(lines.next(), Some("HTTP/1.1 101 Switching Protocols"), "{ws}");
    assert_eq!(lines.next(), Some("ping-through-the-gateway"), "{ws}");

    // 3b. gRPC, unary and streaming, to the h2c forward: cleartext HTTP/2 on
    // nginx's h2c port, and over TLS on its https port.
    grpc_client(ns, GW_H2C, None);
    grpc_client(ns, GW_HTTPS, Some(&prefix.join("cert/upstream.crt")));
    // Reconciliation passes (every second) went by meanwhile.
    assert_eq!(mapping_of(ns, "http", FOREIGN).0, "200", "the mapping outside the pool stays");

    // 4. nginx restarted (its shared dict is gone): reconciliation pushes
    // the mapping again within the interval (1 s here).
    stop_nginx(nginx);
    let nginx = start_nginx(ns, &prefix);
    let t_restart = Instant::now();
    assert!(
        poll(Duration::from_secs(15), || mapping(ns).0 == "200"),
        "the mapping was not re-pushed after the restart"
    );
    eprintln!("mapping back {:?} after nginx restarted", t_restart.elapsed());
    let (code, body) = curl_answer(ns, &["--resolve", &resolve, &url]);
    assert_eq!((code.as_str(), body.as_str()), ("200", "hello through the gateway\n"));

    // 5. The client leaves: the mappings are deleted, requests fail.
    drop(client);
    assert!(
        poll(WAIT, || mapping(ns).0 == "404" && mapping_of(ns, "h2c", DOMAIN).0 == "404"),
        "the mappings outlived the client"
    );
    let (code, _) = curl_answer(ns, &["--resolve", &resolve, &url]);
    assert_eq!(code, "404");

    let mut server = server;
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
    stop_nginx(nginx);
    drop((service, grpc_service));
    eprintln!("test took {:?}", t.elapsed());
}

/// No root needed: loopback only, ports chosen by the kernel.
#[test]
fn a_failed_registration_refuses_the_forward_with_the_reason() {
    let dir = TempDir::new("openresty-refused");
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("http://127.0.0.1:{closed}/upstreams");
    let conf = dir.write("opennotrd.yaml", server_yaml("127.0.0.1:0", &admin, false));
    let mut server_cmd = Command::new(SERVER);
    server_cmd.args(["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"]);
    let (mut server, addr) = start_server(server_cmd, &dir);
    let cconf = dir.write("opennotr.yaml", client_yaml(&addr, None));
    let mut client_cmd = Command::new(CLIENT);
    client_cmd.args(["-c", cconf.to_str().unwrap(), "--log-level", "info", "--log-json"]);
    let mut client = Proc::spawn_named("opennotr", client_cmd, &dir.0);
    let reg = read_registration(&mut client, 1);
    let line = &reg.forwards[0];
    eprintln!("{line}");
    let prefix = format!("http://{DOMAIN}:0 => 127.0.0.1:{SERVICE_PORT} refused: ");
    assert!(line.starts_with(&prefix), "expected {prefix:?}..., got {line:?}");
    assert!(line.contains("external gateway") && line.contains(&admin), "no reason in {line:?}");
    assert!(line.to_lowercase().contains("refused"), "the connection error is not shown: {line:?}");
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT).code(), Some(0), "{}", server.transcript());
}
