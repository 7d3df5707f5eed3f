//! DNS queries to the embedded server.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use hickory_proto::op::Message;
use opennotr_dns::{Names, ZoneConfig};

use crate::split_ctl;

fn zone() -> &'static (Names, ZoneConfig) {
    static ZONE: OnceLock<(Names, ZoneConfig)> = OnceLock::new();
    ZONE.get_or_init(|| {
        let names: Names = BTreeMap::from([
            ("abc.open.notr.test".to_string(), Ipv4Addr::new(100, 64, 242, 2)),
            ("a-b.open.notr.test".to_string(), Ipv4Addr::new(100, 64, 242, 3)),
            ("a.b.open.notr.test".to_string(), Ipv4Addr::new(100, 64, 242, 4)),
            ("cloud.example.com".to_string(), Ipv4Addr::new(100, 64, 242, 5)),
        ]);
        let cfg = ZoneConfig {
            zone: "open.notr.test".into(),
            public: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), "2001:db8::1".parse().expect("an address")],
            ttl: 60,
            wildcard: true,
            nameserver: "ns1.open.notr.test".into(),
        };
        (names, cfg)
    })
}

/// `opennotr_dns::answer` (TCP and fixed sizes) and the UDP server's
/// answer: never an answer to a response or to fewer than 12 bytes; an
/// answer is a response with the query's id, fits the transport's limit,
/// and parses as a DNS message whose question, if any, is the query's.
/// Control byte: the size limit (0: as the UDP server; else TCP's 65535,
/// 512, or a small limit that forces truncation).
pub fn dns_query(data: &[u8]) {
    let (ctl, query) = split_ctl(data);
    let (names, cfg) = zone();
    let (out, limit) = match ctl % 4 {
        0 => (opennotr_dns::answer_udp(query, names, cfg), 1232),
        1 => (opennotr_dns::answer(query, names, cfg, 65535), 65535),
        2 => (opennotr_dns::answer(query, names, cfg, 512), 512),
        _ => {
            let limit = usize::from(ctl);
            (opennotr_dns::answer(query, names, cfg, limit), limit)
        }
    };
    let Some(out) = out else { return };
    assert!(query.len() >= 12 && query[2] & 0x80 == 0, "answered a response or a fragment");
    assert!(out.len() >= 12 && out.len() <= limit, "{} bytes for a limit of {limit}", out.len());
    assert_eq!(out[..2], query[..2], "the answer's id is the query's");
    assert_eq!(out[2] & 0x80, 0x80, "an answer is a response");
    let answer = Message::from_vec(&out).unwrap_or_else(|e| panic!("our answer does not parse: {e}"));
    if let Some(q) = answer.queries.first() {
        let asked = Message::from_vec(query).expect("a question was echoed, so the query parsed");
        assert_eq!(Some(q), asked.queries.first());
    }
}
