//! The admin API over real HTTP against an in-memory backend.

#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, ALLOW, AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use hyper::Request;
use hyper_util::rt::TokioIo;
use opennotr_admin::{
    Backend, BackendError, ClientView, ForwardView, NewClient, RefusalView, ReloadReport, SessionView, MAX_BODY,
    OPENAPI_JSON,
};
use serde_json::Value;
use support::{session, Fake, ReloadOutcome, Running, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Keys the tests hand to `POST /api/v1/clients`; none may come back.
const SECRET_KEYS: &[&str] = &["k3y-0f-b0b-never-shown", "sh0rt-k", "987654321", "k3y-0f-carol-never-shown"];

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: impl hyper::header::AsHeaderName) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    /// A JSON error body: `{"error": "..."}` and perhaps `field`.
    fn error(&self) -> String {
        let v = self.json();
        assert_eq!(self.header(CONTENT_TYPE), "application/json", "{self:?}");
        v["error"].as_str().unwrap_or_else(|| panic!("no error message: {}", self.body)).to_string()
    }
}

/// One request on a fresh connection.
async fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header(HOST, addr.to_string());
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a);
    }
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_owned()))).unwrap();
    let res = send.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let reply = Reply { status, headers, body };
    for key in SECRET_KEYS {
        assert!(!reply.body.contains(key), "{method} {path}: the key {key:?} came back: {reply:?}");
        for (name, v) in &reply.headers {
            assert!(!v.as_bytes().windows(key.len()).any(|w| w == key.as_bytes()), "key in header {name}");
        }
    }
    reply
}

const BEARER: &str = "Bearer test-admin-token-5b1e";

async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path, Some(BEARER), None).await
}

fn two_sessions() -> Arc<Fake> {
    let refusal = RefusalView {
        at: 1_700_000_100,
        remote: "198.51.100.7:51000".into(),
        client: None,
        code: "auth".into(),
        message: "bad key".into(),
    };
    Fake::new(
        vec![
            session("a1", Some("alice"), "alpha.relay.test", [100, 64, 242, 2], 20022),
            session("b2", None, "beta.relay.test", [100, 64, 242, 3], 20023),
        ],
        vec![refusal],
    )
}

/// The routes' paths with a known session id and credential name.
fn concrete(template: &str) -> String {
    template.replace("{id}", "a1").replace("{name}", "alice")
}

const PUBLIC: &[&str] = &["/", "/dashboard.js", "/dashboard.css", "/healthz"];

// ------------------------------------------------------------------ auth

#[tokio::test]
async fn every_route_but_health_and_dashboard_files_needs_the_token() {
    let s = Running::start(two_sessions()).await;
    let h = call(s.addr, "GET", "/healthz", None, None).await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok"));

    let wrong =
        ["Bearer wrong-token", "Bearer test-admin-token-5b1", "Bearer test-admin-token-5b1ee", "Basic dGVzdA=="];
    let mut checked = 0;
    for (method, template) in opennotr_admin::routes() {
        let path = concrete(template);
        if PUBLIC.contains(&template) {
            let r = call(s.addr, method, &path, None, None).await;
            assert_eq!(r.status, 200, "{method} {path} without a token: {r:?}");
            continue;
        }
        for auth in std::iter::once(None).chain(wrong.iter().map(|w| Some(*w))) {
            let r = call(s.addr, method, &path, auth, Some("{}")).await;
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {r:?}");
            assert!(r.header(WWW_AUTHENTICATE).starts_with("Bearer"), "{r:?}");
            assert!(!r.error().is_empty());
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} refusals checked");
    // Nothing was changed by the refused requests.
    assert_eq!(s.fake.state.lock().unwrap().sessions.len(), 2);
    assert_eq!(s.fake.state.lock().unwrap().clients.len(), 1);

    // Without the token, the API does not even say which paths exist.
    assert_eq!(call(s.addr, "GET", "/no/such/path", None, None).await.status, 401);
    assert_eq!(call(s.addr, "PUT", "/healthz", None, None).await.status, 401);
    // The scheme is case-insensitive.
    assert_eq!(call(s.addr, "GET", "/api/v1/sessions", Some(&format!("bearer {TOKEN}")), None).await.status, 200);
    s.stop().await;
}

// -------------------------------------------------------------- sessions

#[tokio::test]
async fn sessions_are_listed_shown_and_closed() {
    let s = Running::start(two_sessions()).await;
    let list = get(s.addr, "/api/v1/sessions").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.header(CONTENT_TYPE), "application/json");
    let v = list.json();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let a = arr.iter().find(|x| x["id"] == "a1").unwrap();
    assert_eq!(a["client"], "alice");
    assert_eq!(a["domain"], "alpha.relay.test");
    assert_eq!(a["vip"], "100.64.242.2");
    assert_eq!(a["remote"], "203.0.113.2:60022");
    assert_eq!(a["connected_since"], 1_700_000_000u64);
    assert_eq!(a["plaintext"], false);
    assert!(a["bytes_in"].as_u64().unwrap() > 3000, "the fake adds traffic per poll");
    assert_eq!(a["forwards"][0]["public_port"], 20022);
    assert_eq!(a["forwards"][0]["target"], "127.0.0.1:22");
    assert_eq!(a["forwards"][1]["public_port"], Value::Null);
    let b = arr.iter().find(|x| x["id"] == "b2").unwrap();
    assert_eq!(b["client"], Value::Null);

    let one = get(s.addr, "/api/v1/sessions/b2").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["domain"], "beta.relay.test");
    let missing = get(s.addr, "/api/v1/sessions/ffff").await;
    assert_eq!(missing.status, 404);
    assert!(missing.error().contains("session"));

    let closed = call(s.addr, "DELETE", "/api/v1/sessions/b2", Some(BEARER), None).await;
    assert_eq!((closed.status, closed.body.as_str()), (204, ""));
    assert_eq!(get(s.addr, "/api/v1/sessions/b2").await.status, 404);
    let again = call(s.addr, "DELETE", "/api/v1/sessions/b2", Some(BEARER), None).await;
    assert_eq!(again.status, 404);
    assert!(!again.error().is_empty());
    assert_eq!(get(s.addr, "/api/v1/sessions").await.json().as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn the_cluster_is_shown_and_a_single_server_has_none() {
    let s = Running::start(two_sessions()).await;
    let r = get(s.addr, "/api/v1/cluster").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("not a cluster node"), "{}", r.body);
    s.fake.state.lock().unwrap().cluster = Some(cluster());
    let r = get(s.addr, "/api/v1/cluster").await;
    assert_eq!((r.status, r.header(CONTENT_TYPE)), (200, "application/json"));
    let v = r.json();
    assert_eq!(
        (v["node"].as_str(), v["registered"].as_bool(), v["held_by"].as_str()),
        (Some("node-a"), Some(true), None)
    );
    let names: Vec<&str> = v["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["node-a", "node-b"]);
    assert_eq!(v["nodes"][1]["advertise"], "10.0.0.2:10100");
    assert_eq!(v["domains"], serde_json::json!([{ "domain": "shop.example.com", "node": "node-b" }]));
    assert_eq!(call(s.addr, "GET", "/api/v1/cluster", None, None).await.status, 401);
    s.stop().await;
}

#[tokio::test]
async fn every_nodes_sessions_are_listed_by_node() {
    let s = Running::start(two_sessions()).await;
    let r = get(s.addr, "/api/v1/cluster/sessions").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("not a cluster node"), "{}", r.body);
    s.fake.state.lock().unwrap().cluster = Some(cluster());
    let r = get(s.addr, "/api/v1/cluster/sessions").await;
    assert_eq!((r.status, r.header(CONTENT_TYPE)), (200, "application/json"));
    let v = r.json();
    assert_eq!(v[0]["node"], "node-a");
    assert_eq!((v[0]["error"].clone(), v[0]["sessions"].as_array().unwrap().len()), (Value::Null, 2));
    assert_eq!(v[0]["sessions"][0]["id"], "a1");
    assert_eq!(v[1]["node"], "node-b");
    assert_eq!((v[1]["error"].as_str(), v[1]["sessions"].as_array().unwrap().len()), (Some("no answer in time"), 0));
    assert_eq!(call(s.addr, "GET", "/api/v1/cluster/sessions", None, None).await.status, 401);
    s.stop().await;
}

fn cluster() -> opennotr_admin::ClusterView {
    let node =
        |n: &str, at: &str| opennotr_admin::NodeView { node: n.into(), advertise: at.into(), started: 1_700_000_000 };
    opennotr_admin::ClusterView {
        node: "node-a".into(),
        registered: true,
        error: None,
        held_by: None,
        nodes: vec![node("node-a", "10.0.0.1:10100"), node("node-b", "10.0.0.2:10100")],
        domains: vec![opennotr_admin::ClaimView { domain: "shop.example.com".into(), node: "node-b".into() }],
    }
}

#[tokio::test]
async fn groups_and_access_rules_are_listed_without_secrets() {
    let s = Running::start(two_sessions()).await;
    let v = get(s.addr, "/api/v1/sessions/a1").await.json();
    let tcp = &v["forwards"][0];
    assert_eq!(tcp["group"], serde_json::json!({ "name": "ssh-pool", "balance": "least_conn", "healthy": true }));
    assert_eq!(tcp["access"]["server"]["allow"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(tcp["access"]["client"]["deny"], serde_json::json!(["10.9.0.0/16"]));
    assert_eq!(tcp["access"]["refused"]["not_allowed"], 7);
    let http = &v["forwards"][1];
    assert_eq!(http["group"], Value::Null);
    assert_eq!(http["access"]["server"], Value::Null);
    assert_eq!(http["access"]["client"]["users"], serde_json::json!(["carol"]));

    let r = get(s.addr, "/api/v1/groups").await;
    assert_eq!((r.status, r.header(CONTENT_TYPE)), (200, "application/json"));
    let groups = r.json();
    assert_eq!(groups.as_array().unwrap().len(), 1);
    let g = &groups[0];
    assert_eq!(
        (g["protocol"].as_str(), g["name"].as_str(), g["public_port"].as_u64()),
        (Some("tcp"), Some("ssh-pool"), Some(20500))
    );
    let sessions: Vec<&str> = g["members"].as_array().unwrap().iter().map(|m| m["session"].as_str().unwrap()).collect();
    assert_eq!(sessions, ["a1", "b2"]);
    assert_eq!(g["members"][0]["client"], "alice");
    assert_eq!(call(s.addr, "GET", "/api/v1/groups", None, None).await.status, 401);
    assert_eq!(call(s.addr, "POST", "/api/v1/groups", Some(BEARER), None).await.status, 405, "read-only");

    let c = get(s.addr, "/api/v1/clients").await.json();
    assert_eq!(c[0]["access"], serde_json::json!({ "allow": ["192.0.2.0/24"], "deny": [], "users": ["dave"] }));
    s.stop().await;
}

// --------------------------------------------------------------- clients

#[tokio::test]
async fn clients_are_added_validated_and_removed_without_echoing_keys() {
    let s = Running::start(two_sessions()).await;
    let list = get(s.addr, "/api/v1/clients").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()[0]["name"], "alice");
    assert_eq!(list.json()[0]["source"], "config");

    let post = |body: String| {
        let addr = s.addr;
        async move { call(addr, "POST", "/api/v1/clients", Some(BEARER), Some(&body)).await }
    };

    // Added: 201 and the view, never the key.
    let r = post(r#"{"name":"bob","key":"k3y-0f-b0b-never-shown","domains":["bob.relay.test"],"ports":["8080"],"protocols":["tcp"]}"#.into()).await;
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["name"], "bob");
    assert_eq!(v["source"], "api");
    assert_eq!(v["domains"][0], "bob.relay.test");
    assert!(v.get("key").is_none(), "{v}");
    assert_eq!(
        s.fake.state.lock().unwrap().keys,
        [("bob".to_string(), "k3y-0f-b0b-never-shown".to_string())],
        "the backend got the key"
    );
    // Optional lists may be left out.
    assert_eq!(post(r#"{"name":"carol","key":"k3y-0f-carol-never-shown"}"#.into()).await.status, 201);
    assert_eq!(get(s.addr, "/api/v1/clients").await.json().as_array().unwrap().len(), 3);

    // A name taken: 409.
    let r = post(r#"{"name":"bob","key":"k3y-0f-b0b-never-shown"}"#.into()).await;
    assert_eq!(r.status, 409);
    assert!(r.error().contains("bob"));

    // Malformed JSON, an unknown field, a field of the wrong type, a
    // missing field: 400 before the backend sees anything.
    for (body, names) in [
        (r#"{"name":"dave","key":"#, "JSON"),
        (r#"not json"#, "JSON"),
        (r#"{"name":"dave","key":"k3y-0f-b0b-never-shown","colour":"red"}"#, "colour"),
        (r#"{"name":"dave","key":987654321}"#, "key"),
        (r#"{"name":"dave","key":"k3y-0f-b0b-never-shown","domains":"dave.relay.test"}"#, "domains"),
        (r#"{"name":"dave"}"#, "key"),
        (r#"{"name":"dave","key":"k3y-0f-b0b-never-shown"} {}"#, "JSON"),
        ("", "JSON"),
    ] {
        let r = post(body.into()).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(r.error().contains(names), "{body}: {r:?}");
    }
    // The backend's own validation, naming the field.
    for (body, field) in [
        (r#"{"name":"","key":"k3y-0f-b0b-never-shown"}"#, "name"),
        (r#"{"name":"erin","key":"k3y-0f-b0b-never-shown","domains":["ok.test","bad domain"]}"#, "domains[1]"),
        // The fake quotes the key it rejects; the response must not.
        (r#"{"name":"erin","key":"sh0rt-k"}"#, "key"),
    ] {
        let r = post(body.into()).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.json()["field"], field, "{r:?}");
        assert!(r.error().starts_with(&format!("{field}: ")), "{r:?}");
    }
    assert_eq!(s.fake.state.lock().unwrap().keys.len(), 2, "refused requests reached the backend");

    // Removed: how many sessions went with it.
    let r = call(s.addr, "DELETE", "/api/v1/clients/alice", Some(BEARER), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({ "sessions_closed": 1 }));
    assert_eq!(get(s.addr, "/api/v1/sessions").await.json().as_array().unwrap().len(), 1);
    let r = call(s.addr, "DELETE", "/api/v1/clients/alice", Some(BEARER), None).await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("alice"));
    // Names are percent-decoded.
    s.fake.state.lock().unwrap().clients.push(ClientView {
        name: "team a/ü".into(),
        domains: vec![],
        ports: vec![],
        protocols: vec![],
        sessions: 0,
        source: "api".into(),
        bandwidth: None,
        forward_bandwidth: None,
        access: Default::default(),
    });
    let r = call(s.addr, "DELETE", "/api/v1/clients/team%20a%2F%C3%BC", Some(BEARER), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(call(s.addr, "DELETE", "/api/v1/clients/%zz", Some(BEARER), None).await.status, 400);
    s.stop().await;
}

// ------------------------------------------------------- reload, refusals

#[tokio::test]
async fn reload_reports_what_changed_or_why_not() {
    let s = Running::start(two_sessions()).await;
    let set = |o: ReloadOutcome| s.fake.state.lock().unwrap().reload = o;

    set(ReloadOutcome::Applied(ReloadReport {
        changed: vec!["clients.bob".into()],
        sessions_closed: 2,
        restart_required: vec!["server.listen".into()],
    }));
    let r = call(s.addr, "POST", "/api/v1/reload", Some(BEARER), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({ "changed": ["clients.bob"], "sessions_closed": 2, "restart_required": ["server.listen"] })
    );

    set(ReloadOutcome::Invalid { field: "dhcp.cidr".into(), message: "not a network".into() });
    let r = call(s.addr, "POST", "/api/v1/reload", Some(BEARER), None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "dhcp.cidr: not a network");
    assert_eq!(r.json()["field"], "dhcp.cidr");

    set(ReloadOutcome::Conflict("domain suffix changed while sessions use it".into()));
    let r = call(s.addr, "POST", "/api/v1/reload", Some(BEARER), None).await;
    assert_eq!(r.status, 409);
    assert!(r.error().contains("domain suffix changed"));

    set(ReloadOutcome::Missing("/etc/opennotr/notrd.yaml".into()));
    let r = call(s.addr, "POST", "/api/v1/reload", Some(BEARER), None).await;
    assert_eq!(r.status, 400, "a missing file is no missing route");
    assert!(r.error().contains("/etc/opennotr/notrd.yaml"));
    s.stop().await;
}

#[tokio::test]
async fn refusals_and_metrics() {
    let s = Running::start(two_sessions()).await;
    let r = get(s.addr, "/api/v1/refusals").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!([{ "at": 1_700_000_100u64, "remote": "198.51.100.7:51000", "client": null, "code": "auth", "message": "bad key" }])
    );

    let m = get(s.addr, "/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header(CONTENT_TYPE), "text/plain; version=0.0.4; charset=utf-8");
    assert!(m.body.contains("\nopennotr_sessions 2\n"), "{}", m.body);
    s.stop().await;
}

// ----------------------------------------------------------- HTTP errors

#[tokio::test]
async fn unknown_paths_wrong_methods_and_large_bodies() {
    let s = Running::start(two_sessions()).await;
    for path in ["/nope", "/api/v1/sessions/", "/api/v1/sessions/a1/forwards", "/api/v2/sessions", "/healthz/"] {
        let r = get(s.addr, path).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(r.error().contains("no route"), "{r:?}");
    }
    let r = call(s.addr, "PUT", "/api/v1/clients", Some(BEARER), Some("{}")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header(ALLOW), "GET, POST");
    assert!(!r.error().is_empty());
    let r = call(s.addr, "POST", "/api/v1/sessions/a1", Some(BEARER), None).await;
    assert_eq!((r.status, r.header(ALLOW)), (405, "GET, DELETE"));
    let r = call(s.addr, "GET", "/api/v1/reload", Some(BEARER), None).await;
    assert_eq!((r.status, r.header(ALLOW)), (405, "POST"));

    // A body announced larger than the limit is refused before it is sent.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/clients HTTP/1.1\r\nHost: admin\r\nAuthorization: {BEARER}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    assert!(got.contains("\"error\""), "{got}");

    // Just under the limit is read (and refused as JSON, not as too large).
    let padded = format!("{{\"name\":\"x\",\"key\":\"y\"{}}}", " ".repeat(MAX_BODY - 40));
    assert!(padded.len() <= MAX_BODY);
    let r = call(s.addr, "POST", "/api/v1/clients", Some(BEARER), Some(&padded)).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(s.fake.state.lock().unwrap().keys.is_empty());
    s.stop().await;
}

// --------------------------------------------------------------- OpenAPI

const HTTP_METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let methods: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| HTTP_METHODS.contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        out.insert(path.clone(), methods);
    }
    out
}

#[tokio::test]
async fn openapi_document_and_router_describe_the_same_routes() {
    let s = Running::start(two_sessions()).await;
    let r = get(s.addr, "/api/v1/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header(CONTENT_TYPE), "application/json");
    let doc = r.json();
    assert_eq!(doc, serde_json::from_str::<Value>(OPENAPI_JSON).unwrap());
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    // The router's table, as the document's shape.
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path) in opennotr_admin::routes() {
        served.entry(path.to_string()).or_default().insert(method.to_string());
    }
    assert_eq!(documented(&doc), served, "the OpenAPI document and the route table differ");

    // And the live router answers exactly those: every documented method is
    // routed (whatever the backend then says), any other gets 405 with the
    // documented ones in Allow.
    for (template, methods) in documented(&doc) {
        let path = concrete(&template);
        for m in &methods {
            let r = call(s.addr, m, &path, Some(BEARER), Some("{}")).await;
            assert_ne!(r.status, 405, "{m} {path}: {r:?}");
            assert!(!(r.status == 404 && r.body.contains("no route")), "{m} {path}: {r:?}");
        }
        let other = ["PATCH", "PUT", "POST", "GET"].into_iter().find(|m| !methods.contains(*m)).unwrap();
        let r = call(s.addr, other, &path, Some(BEARER), None).await;
        assert_eq!(r.status, 405, "{other} {path}: {r:?}");
        let allow: BTreeSet<String> = r.header(ALLOW).split(", ").map(String::from).collect();
        assert_eq!(&allow, &methods, "{path}");
    }

    // Security: public operations say so, all others inherit the bearer scheme.
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    for (template, methods) in documented(&doc) {
        for m in methods {
            let op = &doc["paths"][&template][m.to_lowercase()];
            let public = op.get("security") == Some(&serde_json::json!([]));
            assert_eq!(public, PUBLIC.contains(&template.as_str()), "{m} {template}");
            if !public {
                assert!(op["responses"].get("401").is_some(), "{m} {template} documents no 401");
            }
        }
    }
    s.stop().await;
}

/// The field names of a serialised value, and which are always present
/// (all of them: the views have no skipped fields).
fn keys(v: &impl serde::Serialize) -> BTreeSet<String> {
    serde_json::to_value(v).unwrap().as_object().unwrap().keys().cloned().collect()
}

fn schema_keys(doc: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let s = &doc["components"]["schemas"][name];
    let props = s["properties"].as_object().unwrap_or_else(|| panic!("no schema {name}")).keys().cloned().collect();
    let required = s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    (props, required)
}

#[test]
fn openapi_schemas_have_the_views_fields() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let s = session("a1", Some("alice"), "alpha.relay.test", [100, 64, 242, 2], 20022);
    let f: ForwardView = s.forwards[0].clone();
    let c = ClientView {
        name: "a".into(),
        domains: vec![],
        ports: vec![],
        protocols: vec![],
        sessions: 0,
        source: "api".into(),
        bandwidth: None,
        forward_bandwidth: None,
        access: Default::default(),
    };
    let r = RefusalView { at: 0, remote: String::new(), client: None, code: String::new(), message: String::new() };
    for (name, fields) in [
        ("SessionView", keys(&s)),
        ("ForwardView", keys(&f)),
        ("ClientView", keys(&c)),
        ("RefusalView", keys(&r)),
        ("ReloadReport", keys(&ReloadReport::default())),
        ("ForwardGroup", keys(f.group.as_ref().unwrap())),
        ("ForwardAccess", keys(f.access.as_ref().unwrap())),
        ("AccessRules", keys(&c.access)),
        ("GroupView", keys(&support::Fake::new(vec![s.clone()], vec![]).groups()[0])),
        ("ClusterView", keys(&cluster())),
        ("NodeView", keys(&cluster().nodes[0])),
        ("ClaimView", keys(&cluster().domains[0])),
        ("NodeSessions", keys(&opennotr_admin::NodeSessions { node: "a".into(), error: None, sessions: vec![] })),
    ] {
        let (props, required) = schema_keys(&doc, name);
        assert_eq!(props, fields, "{name}: properties");
        assert_eq!(required, fields, "{name}: required");
    }
    let n = NewClient {
        name: "a".into(),
        key: "k".into(),
        domains: vec![],
        ports: vec![],
        protocols: vec![],
        bandwidth: Some("1MB".into()),
        forward_bandwidth: Some("1MB".into()),
    };
    let a = f.access.as_ref().unwrap();
    let refused = &doc["components"]["schemas"]["ForwardAccess"]["properties"]["refused"];
    let props: BTreeSet<String> = refused["properties"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(props, keys(&a.refused), "ForwardAccess.refused");
    let member = &doc["components"]["schemas"]["GroupView"]["properties"]["members"]["items"];
    let props: BTreeSet<String> = member["properties"].as_object().unwrap().keys().cloned().collect();
    let g = support::Fake::new(vec![s.clone()], vec![]).groups().remove(0);
    assert_eq!(props, keys(&g.members[0]), "GroupView.members");
    let (props, required) = schema_keys(&doc, "NewClient");
    assert_eq!(props, keys(&n));
    assert_eq!(required, BTreeSet::from(["name".to_string(), "key".to_string()]));
    // Every $ref points at something that exists.
    let text = OPENAPI_JSON;
    for part in text.split("\"$ref\": \"#/").skip(1) {
        let target = &part[..part.find('"').unwrap()];
        let mut node = &doc;
        for seg in target.split('/') {
            node = &node[seg];
        }
        assert!(!node.is_null(), "dangling $ref #/{target}");
    }
}

// -------------------------------------------------------------- shutdown

/// Delegates to a [`Fake`], except that `metrics` waits until the test lets
/// it go: a request that is in flight for as long as the test wants.
struct Held {
    fake: Arc<Fake>,
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Backend for Held {
    fn sessions(&self) -> Vec<SessionView> {
        self.fake.sessions()
    }
    fn session(&self, id: &str) -> Option<SessionView> {
        self.fake.session(id)
    }
    fn close_session(&self, id: &str) -> bool {
        self.fake.close_session(id)
    }
    fn clients(&self) -> Vec<ClientView> {
        self.fake.clients()
    }
    fn add_client(&self, c: NewClient) -> Result<ClientView, BackendError> {
        self.fake.add_client(c)
    }
    fn remove_client(&self, name: &str) -> Result<usize, BackendError> {
        self.fake.remove_client(name)
    }
    fn reload(&self) -> Result<ReloadReport, BackendError> {
        self.fake.reload()
    }
    fn refusals(&self) -> Vec<RefusalView> {
        self.fake.refusals()
    }
    fn metrics(&self) -> String {
        self.entered.lock().unwrap().send(()).unwrap();
        self.release.lock().unwrap().recv().unwrap();
        self.fake.metrics()
    }
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_then_stops_listening() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let held =
        Arc::new(Held { fake: two_sessions(), entered: Mutex::new(entered_tx), release: Mutex::new(release_rx) });
    let server = opennotr_admin::AdminServer::bind("127.0.0.1:0".parse().unwrap(), TOKEN.into(), held).await.unwrap();
    let addr = server.local_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(server.run(stop.clone()));

    let in_flight = tokio::spawn(async move { get(addr, "/metrics").await });
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap()).await.unwrap();
    stop.cancel();
    release_tx.send(()).unwrap();

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("opennotr_sessions 2"));
    run.await.unwrap();
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still listening after run returned");
}

#[tokio::test]
async fn bind_refuses_an_empty_token() {
    let err = opennotr_admin::AdminServer::bind("127.0.0.1:0".parse().unwrap(), String::new(), two_sessions())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_new_token_takes_over_at_once_on_open_connections_too() {
    let server =
        opennotr_admin::AdminServer::bind("127.0.0.1:0".parse().unwrap(), TOKEN.into(), two_sessions()).await.unwrap();
    let addr = server.local_addr();
    let handle = server.token_handle();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(server.run(stop.clone()));
    assert_eq!(get(addr, "/api/v1/sessions").await.status, 200);

    // A connection opened before the change is judged by the new token too.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    assert!(handle.set("the-new-admin-token-9c2d").unwrap());
    assert!(!handle.set("the-new-admin-token-9c2d").unwrap(), "the same token again changes nothing");
    let req = Request::get("/api/v1/sessions").header(HOST, "x").header(AUTHORIZATION, BEARER);
    let res = send.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(res.status(), 401);

    assert_eq!(get(addr, "/api/v1/sessions").await.status, 401);
    let r = call(addr, "GET", "/api/v1/sessions", Some("Bearer the-new-admin-token-9c2d"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(handle.set("").unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    let r = call(addr, "GET", "/api/v1/sessions", Some("Bearer the-new-admin-token-9c2d"), None).await;
    assert_eq!(r.status, 200, "a refused token leaves the one in force: {r:?}");
    stop.cancel();
    run.await.unwrap();
}
