//! The shipped example files and the `bad/` fixtures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use opennotr_config::{load_client, load_server, parse_client, parse_server, ConfigError};

fn repo_etc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Client files are the ones with `serverAddr` (the server has no such key).
fn is_client(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with("serverAddr:"))
}

fn parse_either(text: &str) -> Result<(), ConfigError> {
    if is_client(text) {
        parse_client(text).map(drop)
    } else {
        parse_server(text).map(drop)
    }
}

#[test]
fn every_shipped_file_parses() {
    let files = yaml_files(&repo_etc());
    let names: Vec<_> = files.iter().filter_map(|p| p.file_name()?.to_str()).collect();
    for expected in ["notrd.yaml", "config.yaml", "opennotrd.yaml", "opennotr.yaml"] {
        assert!(names.contains(&expected), "etc/{expected} missing, have {names:?}");
    }
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        if let Err(e) = parse_either(&text) {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn original_server_file_means_what_it_says() {
    let cfg = load_server(&repo_etc().join("notrd.yaml")).expect("notrd.yaml parses");
    let s = &cfg.server;
    assert_eq!(s.listen, "0.0.0.0:10100".parse::<SocketAddr>().expect("addr"));
    assert_eq!(s.auth_key.as_ref().map(|k| k.expose()), Some("client server exchange key"));
    assert_eq!(s.domain, "open.notr.tech");
    assert_eq!(s.tcp_listen, Some("0.0.0.0:4398".parse().expect("addr")));
    assert_eq!(s.udp_listen, Some("0.0.0.0:4399".parse().expect("addr")));
    assert_eq!(cfg.dhcp.cidr.to_string(), "100.64.242.1/24");
    assert_eq!(cfg.dhcp.cidr.addr(), Ipv4Addr::new(100, 64, 242, 1));
    assert_eq!(cfg.dhcp.ip, Some(Ipv4Addr::new(100, 64, 242, 1)));

    let names: Vec<&str> = cfg.plugins.keys().map(String::as_str).collect();
    assert_eq!(names, ["h2c", "http", "https", "tcp", "udp"]);
    assert_eq!(cfg.plugins["tcp"], serde_json::json!({"PortMin": 10000, "PortMax": 20000}));
    assert_eq!(cfg.plugins["udp"], serde_json::json!({"PortMin": 20000, "PortMax": 30000}));
    for gateway in ["http", "https", "h2c"] {
        assert_eq!(cfg.plugins[gateway], serde_json::json!({"adminUrl": "http://127.0.0.1:81/upstreams"}));
    }
    assert!(cfg.etcd_endpoints.is_empty());
    // Keys the original did not have take their defaults.
    assert!(!s.allow_plaintext);
    assert_eq!(s.handshake_timeout.as_secs(), 10);
    assert_eq!(s.keepalive_interval.as_secs(), 5);
    assert_eq!(s.keepalive_timeout.as_secs(), 15);
    assert_eq!(s.connect_timeout.as_secs(), 10);
    assert_eq!(s.shutdown_grace.as_secs(), 10);
    assert_eq!(cfg.limits.max_clients, 1024);
    assert_eq!(cfg.limits.max_forwards_per_client, 64);
    assert_eq!(cfg.limits.max_streams_per_client, 4096);
    assert_eq!(cfg.limits.max_udp_flows_per_forward, 1024);
    assert_eq!(cfg.limits.max_handshakes, 256);
}

#[test]
fn original_client_file_means_what_it_says() {
    let cfg = load_client(&repo_etc().join("config.yaml")).expect("config.yaml parses");
    assert_eq!(cfg.servers, ["demo.notr.tech:10100"]);
    assert_eq!(cfg.key.expose(), "client server exchange key");
    assert_eq!(cfg.domain.as_deref(), Some("cloud.dahuizong.com"));
    let got: Vec<(&str, Vec<(u16, u16)>)> =
        cfg.forwards.iter().map(|f| (f.protocol.as_str(), f.ports.clone())).collect();
    assert_eq!(
        got,
        [
            ("tcp", vec![(2222, 2222)]),
            ("udp", vec![(53, 53)]),
            ("http", vec![(0, 8080)]),
            ("https", vec![(0, 8081)]),
            ("h2c", vec![(0, 50052)]),
        ]
    );
    for f in &cfg.forwards {
        assert_eq!(f.local_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(f.raw_config, None);
    }
    assert!(!cfg.plaintext);
    assert_eq!(cfg.keepalive_interval.as_secs(), 5);
    assert_eq!(cfg.keepalive_timeout.as_secs(), 15);
    assert_eq!(cfg.handshake_timeout.as_secs(), 10);
    assert_eq!(cfg.reconnect_max_delay.as_secs(), 30);
}

#[test]
fn commented_examples_pair_up() {
    let server = load_server(&repo_etc().join("opennotrd.yaml")).expect("opennotrd.yaml");
    let client = load_client(&repo_etc().join("opennotr.yaml")).expect("opennotr.yaml");
    assert_eq!(server.server.listen.port(), 10100);
    assert_eq!(server.server.domain, "open.notr.test");
    assert_eq!(client.servers, ["127.0.0.1:10100"]);
    assert_eq!(Some(client.key), server.server.auth_key);
    let got: Vec<(&str, Vec<(u16, u16)>)> =
        client.forwards.iter().map(|f| (f.protocol.as_str(), f.ports.clone())).collect();
    assert_eq!(got, [("tcp", vec![(0, 8080)]), ("udp", vec![(0, 5353)])]);
    // The example spells the tcp plugin as a JSON string and the udp plugin
    // as a YAML mapping; both end up as the same kind of JSON object.
    assert_eq!(server.plugins["tcp"], serde_json::json!({"PortMin": 10000, "PortMax": 20000, "bind": "0.0.0.0"}));
    assert_eq!(
        server.plugins["udp"],
        serde_json::json!({"PortMin": 20000, "PortMax": 30000, "bind": "0.0.0.0", "sessionTimeout": 30})
    );
}

#[test]
fn every_bad_fixture_fails_naming_its_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let files = yaml_files(&dir);
    assert!(files.len() >= 8, "only {} fixtures", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect-key: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect-key: <key>`", file.display()))
            .trim();
        match parse_either(&text) {
            Ok(()) => panic!("{} parsed but should fail at {expected}", file.display()),
            Err(e) => {
                assert_eq!(e.key(), Some(expected), "{}: {e}", file.display());
                // The message leads with the key, as the binaries print it.
                assert!(e.to_string().starts_with(&format!("{expected}: ")), "{e}");
            }
        }
    }
}
