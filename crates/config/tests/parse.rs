//! Behaviour of the parsers beyond the shipped files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use opennotr_config::{parse_client, parse_listen, parse_server, ConfigError, EXIT_USAGE};

const SERVER: &str = "\
server:
  listen: \":10100\"
  authKey: \"server-secret-do-not-print\"
  domain: \"open.notr.test\"
dhcp:
  cidr: \"100.64.242.1/24\"
";

const CLIENT: &str = "\
serverAddr: \"127.0.0.1:10100\"
key: \"client-secret-do-not-print\"
";

fn server_with(extra: &str) -> Result<opennotr_config::ServerConfig, ConfigError> {
    parse_server(&format!("{SERVER}{extra}"))
}

fn client_with(extra: &str) -> Result<opennotr_config::ClientConfig, ConfigError> {
    parse_client(&format!("{CLIENT}{extra}"))
}

fn err_key<T: std::fmt::Debug>(r: Result<T, ConfigError>) -> String {
    r.expect_err("should fail").key().expect("error names a key").to_owned()
}

#[test]
fn exit_code_is_ex_usage() {
    assert_eq!(EXIT_USAGE, 64);
}

#[test]
fn listen_addresses() {
    let ok = |s: &str| parse_listen(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok(":10100"), SocketAddr::from((Ipv4Addr::UNSPECIFIED, 10100)));
    assert_eq!(ok("0.0.0.0:1"), SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1)));
    assert_eq!(ok("127.0.0.1:0"), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    assert_eq!(ok(":0"), SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    assert_eq!(ok("[::]:80"), SocketAddr::from((Ipv6Addr::UNSPECIFIED, 80)));
    assert_eq!(ok("[::1]:65535"), SocketAddr::from((Ipv6Addr::LOCALHOST, 65535)));
    assert_eq!(ok("localhost:80"), SocketAddr::from((Ipv4Addr::LOCALHOST, 80)));
    for bad in [
        "",
        ":",
        "10100",
        ":65536",
        ":-1",
        ":+80",
        ": 80",
        "0.0.0.0",
        "0.0.0.0:",
        "::1:80",
        "[::1]",
        "example.com:80",
        "256.0.0.1:80",
        " :80",
    ] {
        let err = parse_listen(bad).expect_err(bad);
        assert!(!err.is_empty());
    }
}

#[test]
fn durations_are_seconds_integer_or_fractional() {
    let cfg = server_with("").expect("minimal server");
    assert_eq!(cfg.server.handshake_timeout, Duration::from_secs(10));

    let mut cfg_text = SERVER.replace(
        "  domain:",
        "  handshakeTimeout: 0.5\n  keepaliveInterval: 1\n  keepaliveTimeout: 2.25\n  connectTimeout: 3\n  shutdownGrace: 0.001\n  domain:",
    );
    let cfg = parse_server(&cfg_text).expect("durations");
    assert_eq!(cfg.server.handshake_timeout, Duration::from_millis(500));
    assert_eq!(cfg.server.keepalive_interval, Duration::from_secs(1));
    assert_eq!(cfg.server.keepalive_timeout, Duration::from_millis(2250));
    assert_eq!(cfg.server.connect_timeout, Duration::from_secs(3));
    assert_eq!(cfg.server.shutdown_grace, Duration::from_millis(1));

    for bad in ["0", "-1", ".inf", ".nan", "\"5\"", "true", "[1]"] {
        cfg_text = SERVER.replace("  domain:", &format!("  connectTimeout: {bad}\n  domain:"));
        assert_eq!(err_key(parse_server(&cfg_text)), "server.connectTimeout", "{bad}");
    }

    let cfg =
        client_with("handshakeTimeout: 0.5\nreconnectMaxDelay: 60\nkeepaliveInterval: 0.25\nkeepaliveTimeout: 0.75\n")
            .expect("client durations");
    assert_eq!(cfg.handshake_timeout, Duration::from_millis(500));
    assert_eq!(cfg.reconnect_max_delay, Duration::from_secs(60));
    assert_eq!(cfg.keepalive_interval, Duration::from_millis(250));
    assert_eq!(cfg.keepalive_timeout, Duration::from_millis(750));
    assert_eq!(err_key(client_with("reconnectMaxDelay: 0\n")), "reconnectMaxDelay");
    // Only the timeout is given: it is compared with the default interval (5).
    assert_eq!(err_key(client_with("keepaliveTimeout: 4\n")), "keepaliveTimeout");
}

#[test]
fn debug_output_never_shows_keys() {
    let server = server_with("").expect("server");
    let text = format!("{server:?} {server:#?} {:?}", server.server.auth_key);
    assert!(!text.contains("server-secret-do-not-print"), "{text}");
    assert!(text.contains("Secret(***)"));
    assert_eq!(server.server.auth_key.as_ref().map(|k| k.expose()), Some("server-secret-do-not-print"));

    let client = client_with("forwards:\n  - protocol: tcp\n    ports: {0: 8080}\n").expect("client");
    let text = format!("{client:?} {client:#?}");
    assert!(!text.contains("client-secret-do-not-print"), "{text}");
    assert_eq!(client.key.expose(), "client-secret-do-not-print");
}

#[test]
fn errors_do_not_echo_keys() {
    // A key with a bad type is reported by location, not by value.
    let err = parse_server("server:\n  authKey: [\"server-secret-do-not-print\"]\n").expect_err("bad");
    assert!(!err.to_string().contains("server-secret-do-not-print"), "{err}");
}

#[test]
fn empty_document_reports_first_required_key() {
    assert_eq!(err_key(parse_server("")), "server.listen");
    assert_eq!(err_key(parse_server("# nothing\n")), "server.listen");
    assert_eq!(err_key(parse_client("")), "serverAddr");
    assert_eq!(err_key(parse_server("server:\n  listen: \":1\"\n")), "server.authKey");
    assert_eq!(err_key(parse_server("server:\n  listen: \":1\"\n  authKey: k\n")), "server.domain");
    assert_eq!(err_key(parse_server(&SERVER.replace("dhcp:\n  cidr: \"100.64.242.1/24\"\n", ""))), "dhcp.cidr");
    assert_eq!(err_key(parse_client("serverAddr: a:1\n")), "key");
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    let err = server_with("limits:\n  maxClient: 5\n").expect_err("typo");
    assert_eq!(err.key(), Some("limits.maxClient"));
    assert!(err.to_string().contains("did you mean `maxClients`"), "{err}");
    assert!(err.to_string().contains("line 8"), "{err}");

    let err =
        client_with("forwards:\n  - protocol: tcp\n    ports: {0: 1}\n    localIp: ::1\n").expect_err("case typo");
    assert_eq!(err.key(), Some("forwards[0].localIp"));
    assert!(err.to_string().contains("did you mean `localIP`"), "{err}");

    let err = client_with("serveraddr: x\n").expect_err("case typo");
    assert_eq!(err.key(), Some("serveraddr"));
    assert!(err.to_string().contains("did you mean `serverAddr`"), "{err}");

    // Plugin names are free-form, so an unknown name is not an unknown key.
    let cfg = server_with("plugin:\n  my-gateway_2: '{\"x\": 1}'\n").expect("custom plugin");
    assert_eq!(cfg.plugins["my-gateway_2"], serde_json::json!({"x": 1}));
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let err = server_with("limits:\n  maxClients: many\n").expect_err("type");
    assert_eq!(err.key(), Some("limits.maxClients"));
    assert!(err.to_string().contains("(line 8, column 15)"), "{err}");
    assert_eq!(err_key(server_with("resolver:\n  etcdEndpoints: http://x\n")), "resolver.etcdEndpoints");
    assert_eq!(err_key(server_with("tcpforward:\n  readTimeout: 1.5\n")), "tcpforward.readTimeout");
    assert_eq!(err_key(client_with("forwards:\n  - protocol: [tcp]\n")), "forwards[0].protocol");
    assert_eq!(err_key(client_with("forwards:\n  - protocol: tcp\n    ports: [1]\n")), "forwards[0].ports");
    assert_eq!(err_key(parse_server("- a\n")), "(document)");
}

#[test]
fn server_values() {
    let cfg = server_with(
        "plugin:\n  tcp: '{\"PortMin\": 1, \"PortMax\": 2, \"bind\": \"0.0.0.0\"}'\n  udp:\n    sessionTimeout: 30\n  http:\n  h2c: \"\"\n\
         limits:\n  maxClients: 1\n  maxForwardsPerClient: 2\n  maxStreamsPerClient: 3\n  maxUdpFlowsPerForward: 4\n  maxHandshakes: 5\n\
         resolver:\n  etcdEndpoints: [\"http://127.0.0.1:2379\", \"http://10.0.0.1:2379\"]\n",
    )
    .expect("server");
    assert_eq!(cfg.plugins["tcp"], serde_json::json!({"PortMin": 1, "PortMax": 2, "bind": "0.0.0.0"}));
    assert_eq!(cfg.plugins["udp"], serde_json::json!({"sessionTimeout": 30}));
    assert_eq!(cfg.plugins["http"], serde_json::json!({}));
    assert_eq!(cfg.plugins["h2c"], serde_json::json!({}));
    assert_eq!(
        (cfg.limits.max_clients, cfg.limits.max_forwards_per_client, cfg.limits.max_streams_per_client),
        (1, 2, 3)
    );
    assert_eq!((cfg.limits.max_udp_flows_per_forward, cfg.limits.max_handshakes), (4, 5));
    assert_eq!(cfg.etcd_endpoints, ["http://127.0.0.1:2379", "http://10.0.0.1:2379"]);
    assert_eq!(cfg.dhcp.ip, None);
    assert_eq!(cfg.server.tcp_listen, None);

    let cfg = parse_server(&SERVER.replace("open.notr.test", "Open.Notr.TEST.")).expect("domain");
    assert_eq!(cfg.server.domain, "open.notr.test");

    let cfg = parse_server(&SERVER.replace("authKey", "allowPlaintext: true\n  authKey")).expect("flag");
    assert!(cfg.server.allow_plaintext);
    assert_eq!(cfg.server.workers, None);
    assert_eq!(cfg.server.auth_key_domains, None);
    let cfg = parse_server(&SERVER.replace("authKey", "authKeyDomains: [\"*.Apps.example.\", x.example]\n  authKey"))
        .expect("authKeyDomains");
    assert_eq!(
        cfg.server.auth_key_domains.as_deref(),
        Some(&["*.apps.example".to_owned(), "x.example".to_owned()][..])
    );
    let cfg = parse_server(&SERVER.replace("authKey", "authKeyDomains: []\n  authKey")).expect("empty list");
    assert_eq!(cfg.server.auth_key_domains.as_deref(), Some(&[][..]));
    let file = SERVER.replace("authKey", "authKeyDomains: [\"a..b\"]\n  authKey");
    assert_eq!(err_key(parse_server(&file)), "server.authKeyDomains[0]");
    // Without the shared key it would mean nothing: an error, not ignored.
    let file = SERVER.replace("  authKey: \"server-secret-do-not-print\"", "  authKeyDomains: [x.example]");
    let file = format!("{file}clients:\n  - name: a\n    key: k\n");
    assert_eq!(err_key(parse_server(&file)), "server.authKeyDomains");
    let cfg = parse_server(&SERVER.replace("authKey", "workers: 2\n  authKey")).expect("workers");
    assert_eq!(cfg.server.workers, Some(2));
    for bad in ["0", "1025", "-1", "1.5", "two"] {
        let file = SERVER.replace("authKey", &format!("workers: {bad}\n  authKey"));
        assert_eq!(err_key(parse_server(&file)), "server.workers", "{bad}");
    }

    assert_eq!(err_key(server_with("plugin:\n  tcp: 5\n")), "plugin.tcp");
    assert_eq!(err_key(server_with("plugin:\n  tcp: '[1]'\n")), "plugin.tcp");
    assert_eq!(err_key(server_with("plugin:\n  \"t cp\": '{}'\n")), "plugin.t cp");
    assert_eq!(err_key(server_with("resolver:\n  etcdEndpoints: [\"\"]\n")), "resolver.etcdEndpoints[0]");
    assert_eq!(err_key(parse_server(&SERVER.replace("100.64.242.1/24", "100.64.242.1"))), "dhcp.cidr");
    assert_eq!(err_key(parse_server(&SERVER.replace("100.64.242.1/24", "fd00::1/64"))), "dhcp.cidr");
    assert_eq!(err_key(parse_server(&SERVER.replace("100.64.242.1/24", "100.64.242.1/33"))), "dhcp.cidr");
    assert_eq!(err_key(parse_server(&SERVER.replace(":10100", "example.com:10100"))), "server.listen");
    assert_eq!(err_key(parse_server(&SERVER.replace("open.notr.test", ""))), "server.domain");
    assert_eq!(err_key(server_with("  ip: \"not-an-ip\"\n")), "dhcp.ip");
    // The smallest pool allowed: a /30 keeps two usable addresses.
    let cfg = parse_server(&SERVER.replace("100.64.242.1/24", "10.0.0.1/30")).expect("/30");
    assert_eq!(cfg.dhcp.cidr.prefix_len(), 30);
}

#[test]
fn original_head_listener_keys() {
    let cfg = server_with("tcpforward:\n  listen: \":4398\"\n  readTimeout: 10\n  writeTimeout: 10\nudpforward:\n  listen: \"127.0.0.1:4399\"\n  readTimeout: 10\n  writeTimeout: 10\n  sessionTimeout: 30\n")
        .expect("HEAD keys");
    assert_eq!(cfg.server.tcp_listen, Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4398))));
    assert_eq!(cfg.server.udp_listen, Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4399))));

    // Both spellings at once are fine when they agree, an error when not.
    let both = SERVER.replace("  domain:", "  udplisten: \":4399\"\n  domain:");
    let cfg = parse_server(&format!("{both}udpforward:\n  listen: \"0.0.0.0:4399\"\n")).expect("agree");
    assert_eq!(cfg.server.udp_listen, Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4399))));
    assert_eq!(err_key(parse_server(&format!("{both}udpforward:\n  listen: \":4400\"\n"))), "udpforward.listen");
    assert_eq!(err_key(server_with("tcpforward:\n  listen: \"4398\"\n")), "tcpforward.listen");
}

#[test]
fn client_values() {
    let cfg = client_with(
        "domain: \"\"\nplaintext: true\nforwards:\n\
         - protocol: tcp\n  localIP: \"192.168.1.10\"\n  rawConfig: '{\"k\": 1}'\n  ports:\n    \"2222\": \"22\"\n    0: 80\n    0: 81\n\
         - protocol: udp\n  localIP: \"::1\"\n  ports:\n    2222: 53\n",
    );
    // `0` twice in one mapping is a YAML duplicate key; that is reported,
    // with the port map as the key like every port problem.
    assert_eq!(err_key(cfg), "forwards[0].ports");

    let cfg = client_with(
        "domain: \"\"\nplaintext: true\nforwards:\n\
         - protocol: tcp\n  localIP: \"192.168.1.10\"\n  rawConfig: '{\"k\": 1}'\n  ports:\n    \"2222\": \"22\"\n    0: 80\n\
         - protocol: tcp\n  ports:\n    0: 81\n\
         - protocol: udp\n  localIP: \"::1\"\n  ports:\n    2222: 53\n",
    )
    .expect("client");
    assert_eq!(cfg.domain, None);
    assert!(cfg.plaintext);
    assert_eq!(cfg.forwards[0].ports, [(2222, 22), (0, 80)]);
    assert_eq!(cfg.forwards[0].local_ip, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)));
    assert_eq!(cfg.forwards[0].raw_config.as_deref(), Some("{\"k\": 1}"));
    // Public port 0 may repeat; the same number under another protocol is another port.
    assert_eq!(cfg.forwards[1].ports, [(0, 81)]);
    assert_eq!(cfg.forwards[2].ports, [(2222, 53)]);
    assert_eq!(cfg.forwards[2].local_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));

    // Duplicate public port within one forward, written once as a string.
    let err =
        client_with("forwards:\n  - protocol: tcp\n    ports:\n      2222: 22\n      \"2222\": 23\n").expect_err("dup");
    assert_eq!(err.key(), Some("forwards[0].ports"));

    for addr in ["demo.notr.tech:10100", "[2001:db8::1]:10100", "192.0.2.1:1"] {
        let cfg = parse_client(&CLIENT.replace("127.0.0.1:10100", addr)).expect(addr);
        assert_eq!(cfg.servers, [addr]);
    }
    // Several: comma-separated (as --server and OPENNOTR_SERVER give them) or a list.
    let cfg = parse_client(&CLIENT.replace("127.0.0.1:10100", "a.notr.test:1, 192.0.2.1:2")).unwrap();
    assert_eq!(cfg.servers, ["a.notr.test:1", "192.0.2.1:2"]);
    let cfg = parse_client(&CLIENT.replace("\"127.0.0.1:10100\"", "[\"a.notr.test:1\", \"[::1]:2\"]")).unwrap();
    assert_eq!(cfg.servers, ["a.notr.test:1", "[::1]:2"]);
    for bad in ["a.notr.test:1,a.notr.test:1", "a.notr.test:1,", "a.notr.test:1,b"] {
        assert_eq!(err_key(parse_client(&CLIENT.replace("127.0.0.1:10100", bad))), "serverAddr", "{bad}");
    }
    let many = (1..=17).map(|i| format!("192.0.2.{i}:1")).collect::<Vec<_>>().join(",");
    assert_eq!(err_key(parse_client(&CLIENT.replace("127.0.0.1:10100", &many))), "serverAddr");
    for addr in ["demo.notr.tech", "demo.notr.tech:0", "2001:db8::1:10100", "bad_host:1", ""] {
        assert_eq!(err_key(parse_client(&CLIENT.replace("127.0.0.1:10100", addr))), "serverAddr", "{addr}");
    }
    assert_eq!(err_key(client_with("forwards:\n  - protocol: TCP\n    ports: {0: 1}\n")), "forwards[0].protocol");
    assert_eq!(err_key(client_with("forwards:\n  - ports: {0: 1}\n")), "forwards[0].protocol");
    assert_eq!(err_key(client_with("forwards:\n  - protocol: tcp\n")), "forwards[0].ports");
    assert_eq!(err_key(client_with("forwards:\n  - protocol: tcp\n    ports: {0: 65536}\n")), "forwards[0].ports");
    assert_eq!(err_key(client_with("forwards:\n  - protocol: tcp\n    ports: {x: 1}\n")), "forwards[0].ports");
    assert_eq!(err_key(client_with("forwards:\n  - protocol: tcp\n    ports: {1: 1.5}\n")), "forwards[0].ports");
    assert_eq!(err_key(client_with("forwards:\n  - protocol: tcp\n    ports: {1: \" 2\"}\n")), "forwards[0].ports");
    assert_eq!(err_key(client_with("domain: \"a..b\"\n")), "domain");

    assert_eq!(client_with("").expect("default").workers, None);
    assert_eq!(client_with("workers: 1\n").expect("workers").workers, Some(1));
    assert_eq!(err_key(client_with("workers: 0\n")), "workers");
    assert_eq!(err_key(client_with("workers: 100000\n")), "workers");
}

#[test]
fn clients_admin_and_clients_file() {
    let dir = std::env::temp_dir().join(format!("opennotr-config-clients-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("more.yaml"), "- name: carol\n  key: \"c\"\n  ports: [8080, \"9000-9010\"]\n").unwrap();
    let server = "server:\n  listen: \":1\"\n  domain: open.notr.test\ndhcp:\n  cidr: 100.64.0.1/24\n\
                  clients:\n  - name: alice\n    key: \"alice-secret-do-not-print\"\n\
                  clientsFile: more.yaml\nadmin:\n  token: \"0123456789abcdef\"\n";
    let path = dir.join("notrd.yaml");
    std::fs::write(&path, server).unwrap();
    let cfg = opennotr_config::load_server(&path).expect("valid");
    assert!(cfg.server.auth_key.is_none());
    let names: Vec<_> = cfg.clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["alice", "carol"]);
    assert_eq!(cfg.clients[0].domains, ["alice.open.notr.test"]);
    assert!(cfg.clients[1].allows_port(9005) && !cfg.clients[1].allows_port(8081));
    let admin = cfg.admin.as_ref().expect("admin");
    assert_eq!(admin.listen.to_string(), "127.0.0.1:7070");
    // Secrets stay out of Debug output.
    let text = format!("{cfg:?}");
    assert!(!text.contains("alice-secret-do-not-print") && !text.contains("0123456789abcdef"), "{text}");

    // A bad entry in the file names the file's key.
    std::fs::write(dir.join("more.yaml"), "- name: carol\n  key: \"\"\n").unwrap();
    let err = opennotr_config::load_server(&path).expect_err("empty key");
    assert_eq!(err.key(), Some("clientsFile[0].key"), "{err}");
    // The same name in both places is refused.
    std::fs::write(dir.join("more.yaml"), "- name: alice\n  key: \"x\"\n").unwrap();
    let err = opennotr_config::load_server(&path).expect_err("twice");
    assert_eq!(err.key(), Some("clientsFile"), "{err}");
    // So is one of the server's own names, in the file as in the list.
    std::fs::write(
        dir.join("more.yaml"),
        "- name: carol
  key: \"c\"
  domains: [\"*.vip.open.notr.test\"]
",
    )
    .unwrap();
    let err = opennotr_config::load_server(&path).expect_err("reserved");
    assert_eq!(err.key(), Some("clientsFile[0].domains[0]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The names the server answers for itself (the zone's apex, its name
/// server, the VIP names) are refused in every list of claimable domains,
/// naming the entry; the name server is `dns.nameserver` when set.
#[test]
fn lists_of_domains_cannot_name_the_servers_own() {
    let with_keydomains = |list: &str, extra: &str| {
        parse_server(&format!("{}{extra}", SERVER.replace("authKey", &format!("authKeyDomains: {list}\n  authKey"))))
    };
    assert_eq!(err_key(with_keydomains("[a.example, Open.Notr.Test.]", "")), "server.authKeyDomains[1]");
    assert_eq!(err_key(with_keydomains("[ns1.open.notr.test]", "")), "server.authKeyDomains[0]");
    assert_eq!(err_key(with_keydomains("[\"*.vip.open.notr.test\"]", "")), "server.authKeyDomains[0]");
    assert!(with_keydomains("[\"*.open.notr.test\"]", "").is_ok());
    let dns = "dns:\n  listen: \"127.0.0.1:0\"\n  nameserver: ns.example.net\n";
    assert!(with_keydomains("[ns1.open.notr.test]", dns).is_ok());
    assert_eq!(err_key(with_keydomains("[NS.example.net]", dns)), "server.authKeyDomains[0]");
    let client = |domains: &str| format!("{dns}clients:\n  - name: a\n    key: k\n    domains: {domains}\n");
    assert_eq!(err_key(server_with(&client("[ns.example.net]"))), "clients[0].domains[0]");
    assert_eq!(err_key(server_with(&client("[x.vip.open.notr.test]"))), "clients[0].domains[0]");
    // A client named like one gets it by default: it needs a list.
    assert_eq!(err_key(server_with("clients:\n  - name: vip\n    key: k\n")), "clients[0].name");
    let cfg = server_with("clients:\n  - name: vip\n    key: k\n    domains: [vip1.open.notr.test]\n");
    assert_eq!(cfg.expect("listed").clients[0].domains, ["vip1.open.notr.test"]);
}

#[test]
fn quic_keys() {
    let cfg = server_with("").unwrap();
    assert_eq!(cfg.server.quic, None);
    let on = |extra: &str| parse_server(&SERVER.replace("authKey", &format!("{extra}\n  authKey")));
    let q = on("quic: true").unwrap().server.quic.expect("quic on");
    assert_eq!((q.listen, q.cert), (None, None));
    // quicListen alone turns it on.
    let q = on("quicListen: \":4433\"").unwrap().server.quic.expect("quic on");
    assert_eq!(q.listen, Some("0.0.0.0:4433".parse().unwrap()));
    let q = on("quic: true\n  quicCert: c.pem\n  quicKey: c.key").unwrap().server.quic.unwrap();
    assert_eq!(q.cert, Some(("c.pem".into(), "c.key".into())));
    assert_eq!(err_key(on("quic: false\n  quicListen: \":4433\"")), "server.quicListen");
    assert_eq!(err_key(on("quicCert: c.pem\n  quicKey: c.key")), "server.quicCert");
    assert_eq!(err_key(on("quic: true\n  quicCert: c.pem")), "server.quicKey");
    assert_eq!(err_key(on("quic: true\n  quicKey: c.key")), "server.quicCert");
    assert_eq!(err_key(on("quicListen: \"nowhere\"")), "server.quicListen");
    assert_eq!(err_key(on("quic: yes please")), "server.quic");
}

#[test]
fn client_transport() {
    use opennotr_config::Transport;
    assert_eq!(client_with("").unwrap().transport, Transport::Tcp);
    assert_eq!(client_with("transport: quic\n").unwrap().transport, Transport::Quic);
    assert_eq!(client_with("transport: tcp\n").unwrap().transport, Transport::Tcp);
    assert_eq!(err_key(client_with("transport: sctp\n")), "transport");
    assert_eq!(err_key(client_with("transport: quic\nplaintext: true\n")), "plaintext");
    assert!(client_with("transport: quic\nplaintext: false\n").is_ok());
}

#[test]
fn bandwidth_keys() {
    let c = server_with(
        "limits:\n  clientBandwidth: 80Mbit\n  forwardBandwidth: 1000000\n\
         clients:\n  - name: alice\n    key: k\n    bandwidth: 10MB\n    forwardBandwidth: \"512KiB/s\"\n  - name: bob\n    key: k2\n",
    )
    .unwrap();
    assert_eq!((c.limits.client_bandwidth, c.limits.forward_bandwidth), (Some(10_000_000), Some(1_000_000)));
    assert_eq!((c.clients[0].bandwidth, c.clients[0].forward_bandwidth), (Some(10_000_000), Some(524_288)));
    assert_eq!((c.clients[1].bandwidth, c.clients[1].forward_bandwidth), (None, None));
    let d = server_with("").unwrap();
    assert_eq!((d.limits.client_bandwidth, d.limits.forward_bandwidth), (None, None));
    for (extra, key) in [
        ("limits:\n  clientBandwidth: 0\n", "limits.clientBandwidth"),
        ("limits:\n  forwardBandwidth: 10mb\n", "limits.forwardBandwidth"),
        ("clients:\n  - name: a\n    key: k\n    bandwidth: fast\n", "clients[0].bandwidth"),
        ("clients:\n  - name: a\n    key: k\n    forwardBandwidth: [1]\n", "clients[0].forwardBandwidth"),
    ] {
        assert_eq!(err_key(server_with(extra)), key, "{extra}");
    }

    let c = client_with("bandwidth: 2MiB\nforwards:\n  - protocol: tcp\n    ports: {0: 22}\n    bandwidth: 100KB\n")
        .unwrap();
    assert_eq!((c.bandwidth, c.forwards[0].bandwidth), (Some(2_097_152), Some(100_000)));
    assert_eq!(client_with("").unwrap().bandwidth, None);
    assert_eq!(err_key(client_with("bandwidth: -5\n")), "bandwidth");
    let bad =
        "forwards:\n  - protocol: tcp\n    ports: {0: 22}\n  - protocol: udp\n    ports: {0: 53}\n    bandwidth: 1.5\n";
    assert_eq!(err_key(client_with(bad)), "forwards[1].bandwidth");
}

#[test]
fn cluster_section() {
    assert!(server_with("").unwrap().cluster.is_none());
    let key = "  key: 9f86d081884c7d659a2feaa0c55ad015\n";
    let c = server_with(&format!("cluster:\n  node: node-a\n  etcdEndpoints: [\"http://10.0.0.1:2379\"]\n{key}"))
        .unwrap()
        .cluster
        .expect("a cluster section");
    assert_eq!(c.node, "node-a");
    assert_eq!(c.prefix, "/opennotr/cluster");
    assert_eq!(c.lease_ttl, Duration::from_secs(10));
    assert_eq!(c.advertise, None);
    assert_eq!(c.key.expose(), "9f86d081884c7d659a2feaa0c55ad015");
    let c = server_with(&format!(
        "cluster:\n  node: b2\n  etcdEndpoints: [\"10.0.0.1:2379\"]\n  prefix: /relay\n  leaseTtl: 30\n  advertise: \"relay-b.example.com:10100\"\n{key}",
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!((c.prefix.as_str(), c.lease_ttl.as_secs()), ("/relay", 30));
    assert_eq!(c.advertise.as_deref(), Some("relay-b.example.com:10100"));

    let bad = |yaml: &str| err_key(server_with(&format!("cluster:\n{yaml}")));
    let endpoints = "  etcdEndpoints: [\"http://10.0.0.1:2379\"]\n  key: 9f86d081884c7d659a2feaa0c55ad015\n";
    assert_eq!(bad(endpoints), "cluster.node");
    assert_eq!(bad("  node: a\n  etcdEndpoints: [\"http://10.0.0.1:2379\"]\n"), "cluster.key");
    assert_eq!(bad("  node: a\n  etcdEndpoints: [\"http://10.0.0.1:2379\"]\n  key: \"\"\n"), "cluster.key");
    for node in ["Node-A", "-a", "a-", "a_b", "\"\"", &"a".repeat(64)] {
        assert_eq!(bad(&format!("  node: {node}\n{endpoints}")), "cluster.node", "{node}");
    }
    assert_eq!(bad("  node: a\n  key: 9f86d081884c7d659a2feaa0c55ad015\n"), "cluster.etcdEndpoints");
    assert_eq!(
        bad("  node: a\n  etcdEndpoints: [\" \"]\n  key: 9f86d081884c7d659a2feaa0c55ad015\n"),
        "cluster.etcdEndpoints[0]"
    );
    for prefix in ["relay", "/", "/relay/"] {
        assert_eq!(bad(&format!("  node: a\n{endpoints}  prefix: \"{prefix}\"\n")), "cluster.prefix", "{prefix}");
    }
    for ttl in ["1", "301", "0", "-5"] {
        assert_eq!(bad(&format!("  node: a\n{endpoints}  leaseTtl: {ttl}\n")), "cluster.leaseTtl", "{ttl}");
    }
    assert_eq!(bad(&format!("  node: a\n{endpoints}  advertise: \"relay\"\n")), "cluster.advertise");
    assert_eq!(bad(&format!("  node: a\n{endpoints}  nodes: 3\n")), "cluster.nodes");
}
