//! The example plugin of `docs/plugins.md`, compiled and tested.
//!
//! `greeting` works like `tcp`, but first writes a line from its config to
//! every visitor, and appends the forward's `rawConfig` (set per forward in
//! the client's file) to it. It shows the whole life cycle: setup with JSON,
//! run_proxy opening streams through the tunnel, stop_proxy freeing the port.

// --- the plugin (docs/plugins.md shows this part) -------------------------

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opennotr_plugin::{
    async_trait, CancellationToken, Endpoint, ForwardContext, ForwardMeta, Plugin, PluginError, PluginFactory,
    StreamProtocol, Visitor,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

pub struct GreetingFactory;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GreetingConfig {
    greeting: String,
}

impl PluginFactory for GreetingFactory {
    fn name(&self) -> &'static str {
        "greeting"
    }

    // setup: called once at server start with `plugin.greeting` from the
    // server's config. An error here stops the server before it binds.
    fn setup(&self, config: &serde_json::Value) -> Result<Arc<dyn Plugin>, PluginError> {
        let c: GreetingConfig = serde_json::from_value(config.clone())
            .map_err(|e| PluginError::Config { key: "plugin.greeting".into(), message: e.to_string() })?;
        Ok(Arc::new(Greeting { greeting: c.greeting, running: Mutex::new(HashMap::new()) }))
    }
}

struct Greeting {
    greeting: String,
    running: Mutex<HashMap<u64, (CancellationToken, tokio::task::JoinHandle<()>)>>,
}

#[async_trait]
impl Plugin for Greeting {
    // run_proxy: called for each forward of each client session.
    async fn run_proxy(&self, meta: &ForwardMeta, ctx: ForwardContext) -> Result<Endpoint, PluginError> {
        let listener = TcpListener::bind(("127.0.0.1", meta.public_port))
            .await
            .map_err(|e| PluginError::Refused(format!("cannot listen on port {}: {e}", meta.public_port)))?;
        let port = listener.local_addr().map_err(|e| PluginError::Refused(e.to_string()))?.port();
        let line = format!("{} {}\n", self.greeting, meta.raw_config.as_deref().unwrap_or(""));
        let (meta2, stop) = (meta.clone(), ctx.stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let (mut visitor, peer) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = ctx.stop.cancelled() => return,
                };
                let (ctx, meta, line) = (ctx.clone(), meta2.clone(), line.clone());
                // Per-visitor tasks go on the tracker so shutdown can drain them.
                ctx.tracker.clone().spawn(async move {
                    if visitor.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    // The client dials meta.target() (its own localIP:localPort).
                    let Ok(mut stream) =
                        ctx.tunnel.open_stream(StreamProtocol::Tcp, meta.target(), Some(Visitor::new(peer))).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut visitor, &mut stream) => {}
                        _ = ctx.kill.cancelled() => {}
                    }
                });
            }
        });
        self.running.lock().unwrap().insert(meta.id, (stop, task));
        Ok(Endpoint { public_port: Some(port), url: format!("greeting://{}:{port}", meta.domain) })
    }

    // stop_proxy: the session ended; free everything before returning.
    async fn stop_proxy(&self, meta: &ForwardMeta) {
        let entry = self.running.lock().unwrap().remove(&meta.id);
        if let Some((stop, task)) = entry {
            stop.cancel();
            let _ = task.await; // the listener is closed once the task ends
        }
    }
}

// --- registering it, and a test -------------------------------------------

use opennotr_client::{Client, Event};
use opennotr_server::{builtin_plugins, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken as Token;

#[tokio::test]
async fn greeting_plugin_runs_end_to_end() {
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        // A local service behind the client: echoes one line.
        let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service_port = service.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = service.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut line = String::new();
                    BufReader::new(r).read_line(&mut line).await.unwrap();
                    w.write_all(format!("echo: {line}").as_bytes()).await.unwrap();
                });
            }
        });

        let cfg = opennotr_config::parse_server(
            "server:\n  listen: \"127.0.0.1:0\"\n  authKey: k\n  domain: notr.test\n\
             dhcp:\n  cidr: 100.64.0.1/24\nplugin:\n  greeting: '{\"greeting\": \"hello\"}'\n",
        )
        .unwrap();
        let mut registry = builtin_plugins();
        registry.register(GreetingFactory);
        let server = Server::bind(cfg, &registry).await.unwrap();
        let addr = server.local_addr();
        let stop = Token::new();
        let server_task = tokio::spawn(server.run(stop.clone()));

        let client_cfg = opennotr_config::parse_client(&format!(
            "serverAddr: \"{addr}\"\nkey: k\nforwards:\n  - protocol: greeting\n    rawConfig: from-rawConfig\n    ports:\n      0: {service_port}\n"
        ))
        .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = Client::new(client_cfg, Arc::new(move |e: &Event| drop(tx.send(e.clone()))));
        let client_stop = stop.child_token();
        let client_task = tokio::spawn({
            let s = client_stop.clone();
            async move { client.run(s).await }
        });
        let reg = loop {
            if let Some(Event::Connected(r)) = rx.recv().await {
                break r;
            }
        };
        let port = reg.forwards[0].public_port.expect("greeting forward has a port");
        assert_eq!(reg.forwards[0].url.as_deref(), Some(format!("greeting://{}:{port}", reg.domain).as_str()));

        let mut visitor = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        visitor.write_all(b"ping\n").await.unwrap();
        visitor.shutdown().await.unwrap();
        let mut got = String::new();
        visitor.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello from-rawConfig\necho: ping\n");

        stop.cancel();
        client_task.await.unwrap();
        server_task.await.unwrap().unwrap();
    })
    .await
    .expect("test timed out");
}

#[test]
fn bad_config_is_a_config_error() {
    let err = match GreetingFactory.setup(&serde_json::json!({"greting": "typo"})) {
        Err(e) => e,
        Ok(_) => panic!("a typo must be refused"),
    };
    assert!(matches!(err, PluginError::Config { ref key, .. } if key == "plugin.greeting"), "{err}");
}
