//! `forwards[i].proxyProtocol`.

use opennotr_config::{parse_client, ClientConfig, ConfigError, ProxyProtocol};

fn client(forwards: &str) -> Result<ClientConfig, ConfigError> {
    parse_client(&format!("serverAddr: \"127.0.0.1:10100\"\nkey: \"k\"\nforwards:\n{forwards}"))
}

fn err(forwards: &str) -> (String, String) {
    match client(forwards).expect_err("should fail") {
        ConfigError::Invalid { key, message } => (key, message),
        e => panic!("{e}"),
    }
}

#[test]
fn versions_per_forward() {
    let cfg = client(
        "  - {protocol: tcp, ports: {0: 80}, proxyProtocol: v1}\n\
         \x20 - {protocol: tcp, ports: {0: 81}, proxyProtocol: v2}\n\
         \x20 - {protocol: udp, ports: {0: 53}, proxyProtocol: v2}\n\
         \x20 - {protocol: tls, ports: {0: 443}, proxyProtocol: v2}\n\
         \x20 - {protocol: tcp, ports: {0: 82}}\n",
    )
    .unwrap();
    let got: Vec<_> = cfg.forwards.iter().map(|f| f.proxy_protocol).collect();
    use ProxyProtocol::*;
    assert_eq!(got, [Some(V1), Some(V2), Some(V2), Some(V2), None]);
}

#[test]
fn refused_where_it_cannot_be_true() {
    let (key, m) = err("  - {protocol: tcp, ports: {0: 80}, proxyProtocol: v3}\n");
    assert_eq!((key.as_str(), m.as_str()), ("forwards[0].proxyProtocol", "`v3` is neither v1 nor v2"));
    let (key, m) = err("  - {protocol: tcp, ports: {0: 80}}\n  - {protocol: udp, ports: {0: 53}, proxyProtocol: v1}\n");
    assert_eq!(key, "forwards[1].proxyProtocol");
    assert!(m.contains("v2"), "{m}");
    for http in ["http", "https", "h2c"] {
        let (key, m) = err(&format!("  - {{protocol: {http}, ports: {{0: 80}}, proxyProtocol: v1}}\n"));
        assert_eq!(key, "forwards[0].proxyProtocol");
        assert!(m.contains("X-Forwarded-For") && m.contains("X-Real-IP"), "{m}");
    }
    let (key, m) = err("  - {protocol: greeting, ports: {0: 80}, proxyProtocol: v2}\n");
    assert_eq!(key, "forwards[0].proxyProtocol");
    assert!(m.contains("tcp, udp and tls"), "{m}");
}

#[test]
fn forwards_sharing_a_service_agree() {
    // The client finds the header by what it dials: one service, one header.
    let (key, m) = err("  - {protocol: tcp, ports: {0: 80}, proxyProtocol: v1}\n\
         \x20 - {protocol: tcp, ports: {8081: 81, 8080: 80}, proxyProtocol: v2}\n");
    assert_eq!(key, "forwards[1].proxyProtocol");
    assert!(m.contains("forwards[0]") && m.contains("127.0.0.1:80"), "{m}");
    // An http forward dials the same TCP service and sends no header.
    let (key, _) =
        err("  - {protocol: http, ports: {0: 8080}}\n  - {protocol: tcp, ports: {0: 8080}, proxyProtocol: v2}\n");
    assert_eq!(key, "forwards[1].proxyProtocol");
    // The same port over UDP is another service; the same setting is fine.
    assert!(client(
        "  - {protocol: tcp, ports: {0: 53}}\n\
         \x20 - {protocol: udp, ports: {0: 53}, proxyProtocol: v2}\n\
         \x20 - {protocol: tcp, ports: {1053: 53}}\n"
    )
    .is_ok());
}
