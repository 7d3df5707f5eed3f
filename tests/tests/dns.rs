//! The embedded DNS server, asked by the real `dig` (Debian: bind9-dnsutils)
//! over UDP and TCP: client domains, VIP names, custom domains, the apex,
//! and names that vanish with their client.

use std::net::SocketAddr;
use std::time::Duration;

use opennotr_tests::*;

/// dig's full output for `name qtype`.
async fn full(server: SocketAddr, name: &str, qtype: &str) -> String {
    dig(server, &[name, qtype]).await
}

/// The `status:` dig reports.
fn status(out: &str) -> &str {
    out.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or_else(|| panic!("no status in: {out}"))
}

/// Whether dig's header shows the AA flag.
fn authoritative(out: &str) -> bool {
    out.lines().any(|l| l.starts_with(";; flags:") && l.split(';').nth(2).is_some_and(|f| f.contains(" aa")))
}

/// A server with DNS on; its DNS address.
async fn dns_server(dns: DnsSpec) -> (TestServer, SocketAddr) {
    let server = TestServer::start(&ServerSpec { dns: Some(dns), ..Default::default() }).await;
    let addr = server.dns.expect("the DNS server is on");
    assert_ne!(addr.port(), 0);
    (server, addr)
}

/// Polls dig until `name` is NXDOMAIN (or REFUSED, for a custom domain
/// that is no zone of ours any more), failing after [`WAIT`].
async fn wait_gone(dns: SocketAddr, name: &str) -> String {
    within(WAIT, &format!("{name} to vanish from DNS"), async {
        loop {
            let out = full(dns, name, "A").await;
            if matches!(status(&out), "NXDOMAIN" | "REFUSED") {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_domain_and_vip_name_resolve_then_vanish() {
    run_test(async {
        let (server, dns) = dns_server(DnsSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr));
        let reg = client.connected().await;
        assert!(reg.domain.ends_with(&format!(".{ZONE}")), "{}", reg.domain);

        // The domain: the public address, over UDP and TCP.
        assert_eq!(short(dns, &reg.domain, "A", false).await, ["127.0.0.2"]);
        assert_eq!(short(dns, &reg.domain, "A", true).await, ["127.0.0.2"]);
        // Names are case-insensitive.
        assert_eq!(short(dns, &reg.domain.to_uppercase(), "A", false).await, ["127.0.0.2"]);
        let out = full(dns, &reg.domain, "A").await;
        assert_eq!(status(&out), "NOERROR");
        assert!(authoritative(&out), "{out}");
        // No IPv6 public address: NODATA.
        assert_eq!(short(dns, &reg.domain, "AAAA", false).await, Vec::<String>::new());
        assert_eq!(status(&full(dns, &reg.domain, "AAAA").await), "NOERROR");

        // The VIP name: the VIP.
        let label = reg.domain.strip_suffix(&format!(".{ZONE}")).unwrap();
        let vip_name = format!("{label}.vip.{ZONE}");
        assert_eq!(short(dns, &vip_name, "A", false).await, [reg.vip.to_string()]);
        assert_eq!(short(dns, &vip_name, "A", true).await, [reg.vip.to_string()]);

        // Unknown names in the zone: NXDOMAIN, authoritative, with the SOA.
        let out = full(dns, &format!("nobody.{ZONE}"), "A").await;
        assert_eq!(status(&out), "NXDOMAIN");
        assert!(authoritative(&out), "{out}");
        assert!(out.contains("AUTHORITY SECTION") && out.contains("SOA"), "{out}");
        // Names outside: refused (not an open resolver).
        assert_eq!(status(&full(dns, "example.org", "A").await), "REFUSED");

        // The client goes: both names go.
        client.stop().await;
        let out = wait_gone(dns, &reg.domain).await;
        assert_eq!(status(&out), "NXDOMAIN");
        assert_eq!(status(&full(dns, &vip_name, "A").await), "NXDOMAIN");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domain_resolves_while_its_client_is_connected() {
    run_test(async {
        let (server, dns) = dns_server(DnsSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).domain("App.Example.Test"));
        let reg = client.connected().await;
        assert_eq!(reg.domain, "app.example.test");

        assert_eq!(short(dns, "app.example.test", "A", false).await, ["127.0.0.2"]);
        assert_eq!(short(dns, "app.example.test", "A", true).await, ["127.0.0.2"]);
        let out = full(dns, "app.example.test", "A").await;
        assert!(authoritative(&out), "{out}");
        // Its own zone: SOA and NS at the domain, NXDOMAIN below it.
        let soa = short(dns, "app.example.test", "SOA", false).await;
        assert_eq!(soa.len(), 1);
        assert!(soa[0].starts_with(&format!("ns1.{ZONE}. hostmaster.{ZONE}. ")), "{soa:?}");
        assert_eq!(short(dns, "app.example.test", "NS", false).await, [format!("ns1.{ZONE}.")]);
        assert_eq!(status(&full(dns, "www.app.example.test", "A").await), "NXDOMAIN");
        // Its VIP name, in the server's zone.
        assert_eq!(short(dns, &format!("app-example-test.vip.{ZONE}"), "A", false).await, [reg.vip.to_string()]);
        // The parent is no zone of ours.
        assert_eq!(status(&full(dns, "example.test", "A").await), "REFUSED");

        client.stop().await;
        let out = wait_gone(dns, "app.example.test").await;
        assert_eq!(status(&out), "REFUSED");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apex_records_wildcard_and_both_address_families() {
    run_test(async {
        let spec = DnsSpec { public_ips: vec!["127.0.0.2".into(), "::2".into()], wildcard: true, ttl: Some(30) };
        let (server, dns) = dns_server(spec).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr));
        let reg = client.connected().await;

        // The apex: SOA (MNAME ns1.<zone>, minimum = ttl) and NS with glue.
        let soa = short(dns, ZONE, "SOA", false).await;
        assert_eq!(soa.len(), 1);
        let fields: Vec<&str> = soa[0].split_whitespace().collect();
        assert_eq!(fields[..2], [format!("ns1.{ZONE}."), format!("hostmaster.{ZONE}.")]);
        assert_eq!(fields[6], "30", "SOA minimum is dns.ttl: {soa:?}");
        assert_eq!(short(dns, ZONE, "NS", false).await, [format!("ns1.{ZONE}.")]);
        let out = full(dns, ZONE, "NS").await;
        assert!(out.contains("ADDITIONAL SECTION"), "glue expected: {out}");
        assert_eq!(short(dns, &format!("ns1.{ZONE}"), "A", false).await, ["127.0.0.2"]);
        assert_eq!(short(dns, &format!("ns1.{ZONE}"), "AAAA", false).await, ["::2"]);

        // Both families for the domain; the wildcard covers names below it.
        assert_eq!(short(dns, &reg.domain, "AAAA", false).await, ["::2"]);
        let below = format!("www.{}", reg.domain);
        assert_eq!(short(dns, &below, "A", false).await, ["127.0.0.2"]);
        assert_eq!(short(dns, &below, "AAAA", true).await, ["::2"]);
        // TTL as configured.
        let out = full(dns, &reg.domain, "A").await;
        let answer = out.lines().find(|l| l.starts_with(&format!("{}.", reg.domain))).expect("an answer line");
        assert_eq!(answer.split_whitespace().nth(1), Some("30"), "{answer}");
        // ANY: one RRset only.
        let any = short(dns, &reg.domain, "ANY", false).await;
        assert_eq!(any, ["127.0.0.2"]);
        // Beside the domain, no wildcard.
        assert_eq!(status(&full(dns, &format!("other.{ZONE}"), "A").await), "NXDOMAIN");

        client.stop().await;
        wait_gone(dns, &below).await;
        server.stop().await;
    })
    .await;
}
