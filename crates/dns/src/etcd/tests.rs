//! The publisher against fake gateways: the order of endpoints, what it
//! writes, a clean stop, and endpoints that answer nonsense or nothing.
//! (The real etcd is exercised by `tests/tests/etcd.rs`.)

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;

/// What a fake endpoint answers to a path and a request body.
type Answerer = Arc<dyn Fn(&str, &Value) -> (u16, String) + Send + Sync>;

/// A fake gateway on loopback: records every request (path, JSON body).
struct Fake {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(answer: Answerer) -> Fake {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { continue };
                tokio::spawn(serve_conn(s, answer.clone(), log.clone()));
            }
        });
        Fake { addr, requests, task }
    }

    fn paths(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|(p, _)| p.clone()).collect()
    }

    fn requests(&self) -> Vec<(String, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_conn(mut s: TcpStream, answer: Answerer, log: Arc<Mutex<Vec<(String, Value)>>>) {
    let mut buf = Vec::new();
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        buf.drain(..head_end + len);
        log.lock().unwrap().push((path.clone(), body.clone()));
        let (status, text) = answer(&path, &body);
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Answers like an empty etcd that accepts every write.
fn agreeable() -> Answerer {
    Arc::new(|path: &str, _: &Value| {
        let body = match path {
            "/v3/lease/grant" => json!({"header": {"revision": "1"}, "ID": "7587", "TTL": "5"}),
            "/v3/lease/keepalive" => json!({"result": {"ID": "7587", "TTL": "5"}}),
            "/v3/kv/range" => json!({"header": {"revision": "1"}}),
            "/v3/kv/txn" => json!({"header": {"revision": "9"}, "succeeded": true}),
            "/v3/lease/revoke" => json!({"header": {"revision": "10"}}),
            _ => return (404, "404 page not found".to_string()),
        };
        (200, body.to_string())
    })
}

fn config(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        prefix: "/skydns".into(),
        lease_ttl: Duration::from_secs(30),
        public: vec!["127.0.0.2".parse().unwrap()],
        record_ttl: 60,
        owner: "unit test".into(),
    }
}

/// A port where nothing listens.
async fn closed_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    l.local_addr().unwrap().port()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out: {what}"));
}

fn names(domains: &[&str]) -> Arc<Names> {
    Arc::new(domains.iter().map(|d| (d.to_string(), Ipv4Addr::new(100, 64, 0, 2))).collect())
}

fn put_keys(reqs: &[(String, Value)]) -> Vec<(String, Value, String)> {
    reqs.iter()
        .filter(|(p, _)| p == "/v3/kv/txn")
        .filter_map(|(_, b)| {
            let put = b["success"][0].get("request_put")?;
            let key = String::from_utf8(B64.decode(put["key"].as_str()?).ok()?).ok()?;
            let value: Value = serde_json::from_slice(&B64.decode(put["value"].as_str()?).ok()?).ok()?;
            Some((key, value, put["lease"].as_str()?.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn etcd_publisher_tries_endpoints_in_order_writes_and_revokes() {
    let fake = Fake::start(agreeable()).await;
    let dead = format!("http://127.0.0.1:{}", closed_port().await);
    // The second endpoint, written as host:port.
    let publisher = EtcdPublisher::new(config(vec![dead, fake.addr.to_string()]));
    let (tx, rx) = watch::channel(names(&["abc.open.notr.tech"]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(publisher.run(rx, stop.clone()));

    wait_for("the first record", || put_keys(&fake.requests()).len() == 1).await;
    let paths = fake.paths();
    assert_eq!(paths[..3], ["/v3/lease/grant", "/v3/kv/range", "/v3/kv/txn"], "{paths:?}");
    assert_eq!(fake.requests()[0].1, json!({"TTL": "30"}));
    let range = &fake.requests()[1].1;
    assert_eq!(B64.decode(range["key"].as_str().unwrap()).unwrap(), b"/skydns/");
    assert_eq!(B64.decode(range["range_end"].as_str().unwrap()).unwrap(), b"/skydns0");
    let (key, value, lease) = put_keys(&fake.requests()).remove(0);
    assert_eq!(key, "/skydns/tech/notr/open/abc");
    assert_eq!(value, json!({"host": "127.0.0.2", "ttl": 60, "opennotr": "unit test"}));
    assert_eq!(lease, "7587");

    // A new domain is written; a gone one deleted (compared with the
    // revision the write returned).
    tx.send_replace(names(&["new.open.notr.tech"]));
    wait_for("the delete", || {
        fake.requests().iter().any(|(_, b)| b["success"][0].get("request_delete_range").is_some())
    })
    .await;
    let reqs = fake.requests();
    assert_eq!(put_keys(&reqs).last().unwrap().0, "/skydns/tech/notr/open/new");
    let del = reqs.iter().find(|(_, b)| b["success"][0].get("request_delete_range").is_some()).unwrap();
    assert_eq!(del.1["compare"][0]["mod_revision"], "9");
    assert_eq!(
        B64.decode(del.1["success"][0]["request_delete_range"]["key"].as_str().unwrap()).unwrap(),
        b"/skydns/tech/notr/open/abc"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("run returns at stop").unwrap();
    let last = fake.requests().pop().unwrap();
    assert_eq!(last, ("/v3/lease/revoke".to_string(), json!({"ID": "7587"})));
}

#[tokio::test]
async fn etcd_publisher_survives_nonsense_and_stops_promptly() {
    let answers: Vec<Answerer> = vec![
        Arc::new(|_: &str, _: &Value| (200, "not json at all".into())),
        Arc::new(|_: &str, _: &Value| (200, "[1,2,3]".into())),
        Arc::new(|_: &str, _: &Value| (500, "{}".into())),
        Arc::new(|_: &str, _: &Value| (200, r#"{"ID":{"x":1},"TTL":"many","kvs":7,"result":null}"#.into())),
        Arc::new(|_: &str, _: &Value| (200, r#"{"ID":"0","TTL":"0"}"#.into())),
        // A lease, then a listing that never ends and nonsense writes.
        Arc::new(|path: &str, _: &Value| match path {
            "/v3/lease/grant" => (200, r#"{"ID":"5","TTL":"5"}"#.into()),
            "/v3/kv/range" => (200, r#"{"more":true,"kvs":[{"key":"","value":"!"}]}"#.into()),
            _ => (200, r#"{"succeeded":true,"header":{"revision":"x"}}"#.into()),
        }),
        Arc::new(|path: &str, _: &Value| match path {
            "/v3/lease/grant" => (200, r#"{"ID":"5","TTL":"5"}"#.into()),
            "/v3/kv/range" => (200, r#"{"kvs":[{"key":"L3NreWRucy9h","value":"bm90IGpzb24="}]}"#.into()),
            _ => (200, r#"{"responses":[{"response_range":{"kvs":[{"key":[]}]}}]}"#.into()),
        }),
    ];
    for answer in answers {
        let fake = Fake::start(answer).await;
        let (_tx, rx) = watch::channel(names(&["abc.open.notr.tech"]));
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(EtcdPublisher::new(config(vec![format!("http://{}", fake.addr)])).run(rx, stop.clone()));
        wait_for("a few requests", || fake.paths().len() >= 2).await;
        assert!(!task.is_finished());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("run returns at stop").unwrap();
    }
}

#[tokio::test]
async fn etcd_publisher_stops_promptly_when_etcd_says_nothing() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let (_tx, rx) = watch::channel(names(&["abc.open.notr.tech"]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(EtcdPublisher::new(config(vec![format!("http://{addr}")])).run(rx, stop.clone()));
    tokio::task::yield_now().await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), task).await.expect("run returns at stop").unwrap();
    hold.abort();
}

#[tokio::test]
async fn etcd_publisher_without_usable_endpoints_returns() {
    let (_tx, rx) = watch::channel(names(&[]));
    let run = EtcdPublisher::new(config(vec!["https://127.0.0.1:2379".into()])).run(rx, CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(1), run).await.expect("returns at once");
}

#[tokio::test]
async fn etcd_publisher_revokes_when_the_names_sender_is_gone() {
    let fake = Fake::start(agreeable()).await;
    let (tx, rx) = watch::channel(names(&["abc.open.notr.tech"]));
    let task = tokio::spawn(EtcdPublisher::new(config(vec![fake.addr.to_string()])).run(rx, CancellationToken::new()));
    wait_for("the first record", || put_keys(&fake.requests()).len() == 1).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("run returns").unwrap();
    assert_eq!(fake.paths().last().map(String::as_str), Some("/v3/lease/revoke"));
}

#[tokio::test]
async fn etcd_publisher_gives_up_when_the_server_is_gone_and_etcd_down() {
    let dead = format!("http://127.0.0.1:{}", closed_port().await);
    let (tx, rx) = watch::channel(names(&["abc.open.notr.tech"]));
    drop(tx);
    let run = EtcdPublisher::new(config(vec![dead])).run(rx, CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("returns without a stop");
}
