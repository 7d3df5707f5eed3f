//! The external gateway mode (`adminUrl`) against an in-process stand-in
//! for the admin API of `deploy/openresty/` (the real nginx runs in
//! `bins/tests/openresty.rs`, as root): what reconciliation does with the
//! mappings it finds there, and the admin secret sent with every request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opennotr_tests::*;

/// The test servers' VIP pool is 100.64.242.0/24 (`ServerSpec`); the first
/// client gets .2.
const FIRST_VIP: &str = "100.64.242.2";
/// The fake admin API's secret, and the plugins' `adminSecret`.
const SECRET: &str = "fake-gateway-admin-secret-01";

fn dom(label: &str) -> String {
    format!("{label}.{ZONE}")
}

// ------------------------------------------------------------ fake admin API

#[derive(Default)]
struct AdminState {
    /// (scheme, host) → the stored JSON.
    mappings: BTreeMap<(String, String), serde_json::Value>,
    /// Every request: method and query (empty for none; `scheme://host`
    /// for a POST).
    calls: Vec<(Method, String)>,
    /// What `GET` without a query answers instead of the list (an older
    /// gateway with only the original's POST and DELETE).
    list_status: Option<StatusCode>,
    /// Requests refused for their `Authorization` (401 or 403), which
    /// change nothing and are not in `calls`.
    denied: Vec<StatusCode>,
}

impl AdminState {
    fn has(&self, scheme: &str, host: &str) -> bool {
        self.mappings.contains_key(&(scheme.to_string(), host.to_string()))
    }

    fn count(&self, method: &Method, query_contains: &str) -> usize {
        self.calls.iter().filter(|(m, q)| m == method && q.contains(query_contains)).count()
    }

    /// POSTs of `scheme://host`.
    fn posts_of(&self, scheme: &str, host: &str) -> usize {
        let key = format!("{scheme}://{host}");
        self.calls.iter().filter(|(m, q)| *m == Method::POST && *q == key).count()
    }
}

/// The admin API's behaviour (the Lua module's, without validation: the
/// secret checked as `Bearer`, 401 without it, 403 with another), on
/// 127.0.0.1 and a free port.
struct FakeAdmin {
    url: String,
    state: Arc<Mutex<AdminState>>,
    _svc: Service,
}

impl FakeAdmin {
    async fn start(list_status: Option<StatusCode>) -> FakeAdmin {
        let state = Arc::new(Mutex::new(AdminState { list_status, ..Default::default() }));
        let shared = state.clone();
        let svc = tcp_service(move |s| {
            let state = shared.clone();
            async move {
                let svc = hyper::service::service_fn(move |req| admin(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            }
        })
        .await;
        FakeAdmin { url: format!("http://{}/upstreams", svc.addr), state, _svc: svc }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AdminState> {
        self.state.lock().unwrap()
    }

    fn plant(&self, scheme: &str, host: &str, ip: &str) {
        let v = serde_json::json!({"scheme": scheme, "host": host, "ip": ip, "port": "8000"});
        self.state().mappings.insert((scheme.into(), host.into()), v);
    }
}

fn query_arg(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).map(str::to_string)
}

async fn admin(state: Arc<Mutex<AdminState>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut st = state.lock().unwrap();
    let answer = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        Ok(r)
    };
    let denied = match auth.as_deref().and_then(|a| a.strip_prefix(b"Bearer ")) {
        None => Some(StatusCode::UNAUTHORIZED),
        Some(s) if s != SECRET.as_bytes() => Some(StatusCode::FORBIDDEN),
        Some(_) => None,
    };
    if let Some(status) = denied {
        st.denied.push(status);
        return answer(status, "wrong admin secret".into());
    }
    let key = (query_arg(&query, "scheme").unwrap_or_default(), query_arg(&query, "host").unwrap_or_default());
    match method {
        Method::POST => {
            let m: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let field = |k: &str| m[k].as_str().unwrap_or("").to_string();
            let (scheme, host) = (field("scheme"), field("host"));
            st.calls.push((Method::POST, format!("{scheme}://{host}")));
            st.mappings.insert((scheme, host), m);
            answer(StatusCode::OK, "OK".into())
        }
        Method::GET if query.is_empty() => {
            st.calls.push((Method::GET, String::new()));
            if let Some(status) = st.list_status {
                return answer(status, "not here".into());
            }
            let all: Vec<_> = st.mappings.values().cloned().collect();
            answer(StatusCode::OK, serde_json::Value::Array(all).to_string())
        }
        Method::GET => {
            st.calls.push((Method::GET, query));
            match st.mappings.get(&key) {
                Some(v) => answer(StatusCode::OK, v.to_string()),
                None => answer(StatusCode::NOT_FOUND, "no mapping".into()),
            }
        }
        Method::DELETE => {
            st.calls.push((Method::DELETE, query));
            st.mappings.remove(&key);
            answer(StatusCode::OK, "OK".into())
        }
        _ => answer(StatusCode::METHOD_NOT_ALLOWED, "methods: GET, POST, DELETE".into()),
    }
}

fn external_spec(admin: &FakeAdmin, schemes: &[&str]) -> ServerSpec {
    external_spec_with(admin, schemes, &format!(r#", "adminSecret": "{SECRET}""#))
}

/// `extra` goes into each plugin's JSON object, e.g. `, "adminSecret": ".."`.
fn external_spec_with(admin: &FakeAdmin, schemes: &[&str], extra: &str) -> ServerSpec {
    let json = format!(r#"{{"adminUrl": "{}", "reconcileInterval": 0.2{extra}}}"#, admin.url);
    schemes.iter().fold(ServerSpec::default(), |spec, s| spec.plugin(s, &json))
}

fn fwd(protocol: &str, local: u16) -> Fwd {
    Fwd { protocol: protocol.into(), public: 0, local }
}

// --------------------------------------------------------------- tests

/// After a crash, the gateway still maps domains to VIPs of this server's
/// pool that no client holds: the restarted server removes them at once,
/// before any client connects (the first client gets exactly such a VIP),
/// and leaves alone what is outside its pool or live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_mappings_into_the_vip_pool_are_removed_at_start() {
    run_test(async {
        let admin = FakeAdmin::start(None).await;
        // Left by the crashed server: its first client's http mapping, and
        // an h2c one (a scheme this server no longer runs externally).
        admin.plant("http", &dom("stale"), FIRST_VIP);
        admin.plant("h2c", &dom("stale-rpc"), "100.64.242.9");
        // Not ours: outside the /24 pool (another opennotrd's), and a
        // hand-made entry that is no IPv4 address.
        admin.plant("http", &dom("foreign"), "100.64.243.7");
        admin.plant("https", "hand.example", "gateway.local");

        let server = TestServer::start(&external_spec(&admin, &["http", "https"])).await;
        wait_until("the stale mappings to go", || {
            let st = admin.state();
            !st.has("http", &dom("stale")) && !st.has("h2c", &dom("stale-rpc"))
        })
        .await;

        // A client takes the first VIP with an http and an https forward.
        let live = dom("live");
        let mut c = TestClient::start(
            &ClientSpec::new(server.addr).domain(&live).forward(fwd("http", 1)).forward(fwd("https", 1)),
        );
        let reg = c.connected().await;
        assert_eq!(reg.vip.to_string(), FIRST_VIP);
        assert!(reg.forwards.iter().all(|f| f.error.is_none()), "{:?}", reg.forwards);
        // A pass of each plugin after the registration (a pass lists and
        // removes first, then re-pushes).
        wait_until("a re-push of each live mapping", || {
            let st = admin.state();
            st.posts_of("http", &live) >= 2 && st.posts_of("https", &live) >= 2
        })
        .await;

        {
            let st = admin.state();
            assert!(st.has("http", &live) && st.has("https", &live), "live mappings stay");
            assert_eq!(st.mappings[&("http".to_string(), live.clone())]["ip"], FIRST_VIP);
            assert!(st.has("http", &dom("foreign")), "a mapping outside the pool stays");
            assert!(st.has("https", "hand.example"), "a mapping that names no IPv4 address stays");
            assert_eq!(st.count(&Method::DELETE, &live), 0, "a live mapping was deleted: {:?}", st.calls);
            // Each stale mapping was deleted once: the h2c one by one plugin only.
            assert_eq!(st.count(&Method::DELETE, "stale-rpc"), 1, "{:?}", st.calls);
            assert_eq!(st.count(&Method::DELETE, &format!("host={}&", dom("stale"))), 1, "{:?}", st.calls);
        }

        c.stop().await;
        server.wait_no_sessions().await;
        wait_until("the client's mappings to go", || {
            let st = admin.state();
            !st.has("http", &live) && !st.has("https", &live)
        })
        .await;
        server.stop().await;
    })
    .await;
}

/// A gateway with only the original's POST and DELETE (the list answers
/// 404): it is asked once, and the live mappings are still re-pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_list_still_gets_its_mappings_re_pushed() {
    run_test(async {
        let admin = FakeAdmin::start(Some(StatusCode::NOT_FOUND)).await;
        admin.plant("http", &dom("stale"), "100.64.242.77");
        let server = TestServer::start(&external_spec(&admin, &["http"])).await;
        let live = dom("live");
        let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(&live).forward(fwd("http", 1)));
        let reg = c.connected().await;
        assert_eq!(reg.forwards[0].error, None);
        wait_until("three re-pushes of the live mapping", || admin.state().posts_of("http", &live) >= 4).await;
        {
            let st = admin.state();
            assert_eq!(st.count(&Method::GET, ""), 1, "the list is asked for once: {:?}", st.calls);
            assert_eq!(st.count(&Method::DELETE, ""), 0, "{:?}", st.calls);
            assert!(st.has("http", &dom("stale")) && st.has("http", &live));
        }
        c.stop().await;
        server.stop().await;
    })
    .await;
}

/// A reload that moves the plugin to another gateway sets it up anew: the
/// new one reconciles at once (the stale mapping planted there goes) and
/// gets the client, which reconnects; the old one removes its mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_set_up_anew_by_a_reload_reconciles_at_once() {
    run_test(async {
        let (old, new) = (FakeAdmin::start(None).await, FakeAdmin::start(None).await);
        new.plant("http", &dom("stale"), "100.64.242.99");
        let dir = std::env::temp_dir().join(format!("opennotr-gw-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notrd.yaml");
        let yaml = external_spec(&old, &["http"]).yaml();
        std::fs::write(&path, &yaml).unwrap();
        let server = TestServer::start_with(opennotr_config::load_server(&path).unwrap(), &builtin_plugins()).await;
        server.handle.set_config_path(path.clone());

        let live = dom("live");
        let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(&live).forward(fwd("http", 1)));
        assert_eq!(c.connected().await.forwards[0].error, None);
        assert!(old.state().has("http", &live));
        assert!(new.state().has("http", &dom("stale")), "not the new gateway's server yet");

        std::fs::write(&path, yaml.replace(&old.url, &new.url)).unwrap();
        let report = server.handle.reload().unwrap_or_else(|e| panic!("reload: {e}"));
        assert!(report.changed.contains(&"plugin.http".to_string()), "{report:?}");
        c.disconnected().await;
        assert_eq!(c.connected().await.forwards[0].error, None);
        wait_until("the new gateway to have the client and no stale mapping", || {
            let st = new.state();
            st.has("http", &live) && !st.has("http", &dom("stale"))
        })
        .await;
        wait_until("the old gateway to lose the client's mapping", || !old.state().has("http", &live)).await;
        c.stop().await;
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// opennotrd sends `adminSecret` with every request. With another secret
/// than the gateway's, the gateway refuses (403) and changes nothing, and
/// the forward is refused saying why. Without `adminSecret` (the original's
/// files have none) the server still starts, nothing at all is sent, and
/// the forward is refused naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_secret_is_sent_and_a_wrong_or_missing_one_refuses_the_forward() {
    run_test(async {
        let admin = FakeAdmin::start(None).await;
        admin.plant("http", &dom("stale"), "100.64.242.77");

        let wrong = external_spec_with(&admin, &["http"], r#", "adminSecret": "not-the-gateways-secret-99""#);
        let server = TestServer::start(&wrong).await;
        let live = dom("live");
        let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(&live).forward(fwd("http", 1)));
        let err = c.connected().await.forwards[0].error.clone().expect("refused");
        assert!(err.contains("403") && err.contains("adminSecret"), "{err}");
        // The reconciliation's listing is refused too: nothing is pruned.
        wait_until("a refused listing", || admin.state().denied.len() >= 2).await;
        {
            let st = admin.state();
            assert!(st.denied.iter().all(|s| *s == StatusCode::FORBIDDEN), "{:?}", st.denied);
            assert!(st.calls.is_empty(), "{:?}", st.calls);
            assert!(st.has("http", &dom("stale")) && !st.has("http", &live));
        }
        c.stop().await;
        server.stop().await;

        let none = external_spec_with(&admin, &["http"], "");
        let server = TestServer::start(&none).await;
        let denied = admin.state().denied.len();
        let mut c = TestClient::start(&ClientSpec::new(server.addr).domain(&live).forward(fwd("http", 1)));
        let err = c.connected().await.forwards[0].error.clone().expect("refused");
        assert!(err.contains("plugin.http.adminSecret is not set"), "{err}");
        c.stop().await;
        server.stop().await;
        let st = admin.state();
        assert_eq!((st.denied.len(), st.calls.len()), (denied, 0), "a request was sent: {:?}", st.calls);
        assert!(st.has("http", &dom("stale")) && !st.has("http", &live));
    })
    .await;
}
