//! `opennotrd --demo`: server, client and a sample service in one process,
//! on loopback, with a fresh random key. Nothing to install or configure.

use std::sync::Arc;

use opennotr_client::{Client, Event};
use opennotr_server::{builtin_plugins, Server, ServerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

const SERVER_YAML: &str = r#"
server:
  listen: "127.0.0.1:0"
  authKey: "KEY"
  domain: "demo.notr.test"
  publicIP: "127.0.0.1"
dns:
  listen: "127.0.0.1:0"
dhcp:
  cidr: "100.64.242.1/24"
plugin:
  tcp: '{"PortMin": 20000, "PortMax": 29999, "bind": "127.0.0.1"}'
  udp: '{"PortMin": 30000, "PortMax": 39999, "bind": "127.0.0.1"}'
admin:
  listen: "127.0.0.1:0"
  token: "TOKEN"
"#;

/// A tiny HTTP service standing in for something behind NAT.
async fn sample_http(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut got = 0;
            while got < buf.len() {
                match s.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let body = "hello from a service behind opennotr\n";
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

async fn sample_udp_echo(sock: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
        let _ = sock.send_to(&buf[..n], peer).await;
    }
}

pub(crate) async fn run(shutdown: CancellationToken) -> Result<(), ServerError> {
    let key = hex::encode(rand::random::<[u8; 16]>());
    // The demo's own throwaway token, printed for its user (never logged).
    let token = hex::encode(rand::random::<[u8; 16]>());
    let cfg = opennotr_config::parse_server(&SERVER_YAML.replace("KEY", &key).replace("TOKEN", &token))
        .map_err(|e| ServerError::Config { key: "demo".into(), message: e.to_string() })?;
    let server = Server::bind(cfg, &builtin_plugins()).await?;
    let server_addr = server.local_addr();
    let dns_port = server.dns_addr().map(|a| a.port()).unwrap_or_default();
    let admin = server.admin_addr();

    let bind_err = |addr: std::net::SocketAddr| move |source| ServerError::Bind { addr, source };
    let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let http = TcpListener::bind(loopback).await.map_err(bind_err(loopback))?;
    let udp = UdpSocket::bind(loopback).await.map_err(bind_err(loopback))?;
    let http_port = http.local_addr().map_err(bind_err(loopback))?.port();
    let udp_port = udp.local_addr().map_err(bind_err(loopback))?.port();
    tokio::spawn(sample_http(http));
    tokio::spawn(sample_udp_echo(udp));

    let client_yaml = format!(
        "serverAddr: \"{server_addr}\"\nkey: \"{key}\"\nforwards:\n  - protocol: tcp\n    ports:\n      0: {http_port}\n  - protocol: udp\n    ports:\n      0: {udp_port}\n"
    );
    let client_cfg = opennotr_config::parse_client(&client_yaml)
        .map_err(|e| ServerError::Config { key: "demo".into(), message: e.to_string() })?;
    let client = Client::new(
        client_cfg,
        Arc::new(move |e: &Event| {
            if let Event::Connected(reg) = e {
                for line in reg.lines() {
                    println!("{line}");
                }
                for f in &reg.forwards {
                    match (f.request.protocol.as_str(), f.public_port) {
                        ("tcp", Some(p)) => println!("try:  curl http://127.0.0.1:{p}/"),
                        ("udp", Some(p)) => println!("try:  echo hello | nc -u -w1 127.0.0.1 {p}"),
                        _ => {}
                    }
                }
                println!("try:  dig @127.0.0.1 -p {dns_port} {} +short", reg.domain);
                if let Some(a) = admin {
                    println!("open: http://{a}/#token={token}  (dashboard)");
                    println!("try:  curl -H 'Authorization: Bearer {token}' http://{a}/api/v1/sessions");
                }
                println!("Ctrl-C stops the demo.");
            }
        }),
    );
    let client_stop = shutdown.child_token();
    let client_task = {
        let stop = client_stop.clone();
        tokio::spawn(async move { client.run(stop).await })
    };
    let r = server.run(shutdown).await;
    client_stop.cancel();
    let _ = client_task.await;
    r
}
