//! A domain shared by a load-balanced group is served only by its running
//! groups: a member may not take another scheme of it for itself, neither
//! with a forward of its own nor by starting a new group.

use opennotr_tests::*;

fn member(server: std::net::SocketAddr, local: u16, extra: &str) -> opennotr_config::ClientConfig {
    opennotr_config::parse_client(&format!(
        "serverAddr: \"{server}\"\nkey: \"{KEY}\"\ndomain: \"site.{ZONE}\"\nforwards:\n  \
         - protocol: http\n    ports:\n      0: {local}\n    group: site\n    groupKey: \"the site key\"\n{extra}"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_member_cannot_start_a_new_group_on_a_shared_domain() {
    run_test(async {
        let spec = ServerSpec::default()
            .plugin("http", r#"{"listen": "127.0.0.1:0"}"#)
            .plugin("h2c", r#"{"listen": "127.0.0.1:0"}"#);
        let mut registry = builtin_plugins();
        opennotr_gateway::register(&mut registry);
        let server = TestServer::start_with(spec.config(), &registry).await;
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = service.local_addr().unwrap().port();

        let mut first = TestClient::start_config(member(server.addr, local, ""));
        let reg = first.connected().await;
        assert_eq!(reg.forwards[0].error, None);

        // The second member shares the domain through the http group, and
        // asks for its h2c scheme in a group nobody else runs.
        let h2c = format!("  - protocol: h2c\n    ports:\n      0: {local}\n    group: mine\n    groupKey: \"any\"\n");
        let mut second = TestClient::start_config(member(server.addr, local, &h2c));
        let reg = second.connected().await;
        assert_eq!(reg.domain, format!("site.{ZONE}"));
        assert_eq!(reg.forwards[0].error, None, "it joins the http group");
        let error = reg.forwards[1].error.clone().expect("the h2c group is refused");
        assert!(error.contains("must join a running group"), "{error}");

        second.stop().await;
        first.stop().await;
        server.stop().await;
    })
    .await;
}
