//! Answers to single DNS queries: what the zone holds, and the wire format.
//!
//! The zone is computed, not stored: every name it has follows from the
//! live [`Names`] and the [`ZoneConfig`]. An [`Index`] holds what is worth
//! computing once per snapshot (the VIP names, the custom zones, the SOA
//! serial); [`respond`] turns one query into one answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::{vip_name, Names, RemoteNames, ZoneConfig};

/// The EDNS payload size we advertise, and the largest UDP answer we send
/// (the DNS flag day 2020 value: no IP fragmentation on common paths).
pub(crate) const UDP_PAYLOAD: u16 = 1232;
/// A UDP answer without EDNS in the query (RFC 1035).
pub(crate) const UDP_CLASSIC: usize = 512;
/// The largest message TCP's 2-byte length prefix carries.
pub(crate) const TCP_MAX: usize = 65535;

/// SOA timers (seconds). Nobody transfers this zone (no AXFR), so they
/// matter little; they are the usual values.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 604_800;

/// How large an answer may be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    /// At most this many bytes (the caller knows the transport's limit).
    Fixed(usize),
    /// A UDP answer: the query's EDNS payload size (512 without EDNS, and
    /// at least 512), capped at our [`UDP_PAYLOAD`].
    Udp,
}

/// What is computed once per snapshot of the names.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    /// VIP name (lowercase, no trailing dot) → VIP.
    vips: HashMap<String, Ipv4Addr>,
    /// Apexes of the zones we are authoritative for: `cfg.zone` and the
    /// client domains that are not below it.
    zones: HashSet<String>,
    /// Whether `cfg.nameserver` lies inside `cfg.zone` (it then has
    /// A/AAAA records: glue).
    ns_glue: bool,
    /// SOA serial.
    pub(crate) serial: u32,
    /// VIP names that two domains map to (`a-b.com` and `a.b.com`): not
    /// published, since either answer would be a guess.
    pub(crate) ambiguous: Vec<String>,
    /// Domains other nodes of the cluster serve, with their addresses
    /// (not those in `names`, which are ours).
    remote: HashMap<String, Vec<IpAddr>>,
}

impl Index {
    pub(crate) fn new(names: &Names, remote: &RemoteNames, cfg: &ZoneConfig, serial: u32) -> Index {
        let mut vips = HashMap::with_capacity(names.len());
        let mut ambiguous = BTreeSet::new();
        for (domain, vip) in names {
            let name = vip_name(domain, &cfg.zone);
            if ambiguous.contains(&name) {
                continue;
            }
            if vips.insert(name.clone(), *vip).is_some() {
                vips.remove(&name);
                ambiguous.insert(name);
            }
        }
        // Another node's entry for one of our names is stale (ours win); an
        // entry naming this node among others is the cluster's answer for
        // a name every node serves.
        let ours = |ips: &[IpAddr]| !cfg.public.is_empty() && cfg.public.iter().all(|p| ips.contains(p));
        let remote: HashMap<String, Vec<IpAddr>> = remote
            .iter()
            .filter(|(d, ips)| !ips.is_empty() && (!names.contains_key(*d) || ours(ips)))
            .map(|(d, ips)| (d.clone(), ips.clone()))
            .collect();
        let mut zones: HashSet<String> =
            names.keys().chain(remote.keys()).filter(|d| !within(d, &cfg.zone)).cloned().collect();
        zones.insert(cfg.zone.clone());
        Index {
            vips,
            zones,
            ns_glue: within(&cfg.nameserver, &cfg.zone),
            serial,
            ambiguous: ambiguous.into_iter().collect(),
            remote,
        }
    }

    /// The apex of the zone `name` belongs to (the closest enclosing one).
    fn zone_of<'n>(&self, name: &'n str) -> Option<&'n str> {
        let mut rest = name;
        loop {
            if self.zones.contains(rest) {
                return Some(rest);
            }
            rest = parent(rest)?;
        }
    }
}

/// Whether `name` is `zone` or below it.
fn within(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len() && name.ends_with(zone) && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

/// `name` without its first label; `None` for a single label.
fn parent(name: &str) -> Option<&str> {
    name.split_once('.').map(|(_, p)| p)
}

/// One answer, and what to log about it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) bytes: Vec<u8>,
    /// The question's name (as asked), or empty when there was none.
    pub(crate) name: String,
    pub(crate) qtype: Option<RecordType>,
    pub(crate) rcode: ResponseCode,
}

/// The answer to `query`, or `None` to stay silent.
pub(crate) fn respond(query: &[u8], names: &Names, cfg: &ZoneConfig, index: &Index, limit: Limit) -> Option<Reply> {
    // The header alone: never answer a response (no reflection loops
    // between servers) or something too short to be a message.
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    let req = header.metadata;
    if req.message_type != MessageType::Query {
        return None;
    }
    let mut meta = Metadata::response_from_request(&req);
    meta.authentic_data = false;
    let fixed = match limit {
        Limit::Fixed(n) => n,
        Limit::Udp => UDP_CLASSIC,
    };
    if req.op_code != OpCode::Query {
        meta.response_code = ResponseCode::NotImp;
        return finish(Message::response(0, req.op_code), meta, fixed, None);
    }
    // Exactly one question; checked before parsing, so a header claiming
    // thousands of them costs nothing.
    if header.counts.queries != 1 {
        meta.response_code = ResponseCode::FormErr;
        return finish(Message::response(0, req.op_code), meta, fixed, None);
    }
    let Ok(msg) = Message::from_vec(query) else {
        meta.response_code = ResponseCode::FormErr;
        return finish(Message::response(0, req.op_code), meta, fixed, None);
    };
    let limit = match limit {
        Limit::Fixed(n) => n,
        Limit::Udp => {
            let asked = msg.edns.as_ref().map_or(UDP_CLASSIC, |e| usize::from(e.max_payload()).max(UDP_CLASSIC));
            asked.min(usize::from(UDP_PAYLOAD))
        }
    };
    let mut resp = Message::response(0, OpCode::Query);
    if let Some(edns) = &msg.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(UDP_PAYLOAD).set_version(0);
        resp.set_edns(ours);
        if edns.version() > 0 {
            meta.response_code = ResponseCode::BADVERS;
            return finish(resp, meta, limit, None);
        }
    }
    let [question] = msg.queries.as_slice() else {
        meta.response_code = ResponseCode::FormErr;
        return finish(resp, meta, limit, None);
    };
    resp.add_query(question.clone());
    let outcome = lookup(question, names, cfg, index);
    meta.response_code = outcome.rcode;
    meta.authoritative = outcome.authoritative;
    resp.answers = outcome.answers;
    resp.authorities = outcome.authorities;
    resp.additionals = outcome.additionals;
    finish(resp, meta, limit, Some(question))
}

/// Encodes `resp` with header `meta`; if it is longer than `limit`, drops
/// the records and sets TC (the client asks again over TCP).
fn finish(mut resp: Message, meta: Metadata, limit: usize, question: Option<&Query>) -> Option<Reply> {
    resp.metadata = meta;
    let reply = |bytes: Vec<u8>, resp: &Message| Reply {
        bytes,
        name: question.map(|q| q.name().to_ascii()).unwrap_or_default(),
        qtype: question.map(|q| q.query_type()),
        rcode: resp.metadata.response_code,
    };
    let bytes = resp.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(reply(bytes, &resp));
    }
    resp.metadata.truncation = true;
    resp.answers.clear();
    resp.authorities.clear();
    resp.additionals.clear();
    // Smaller and smaller: the question and OPT, the question, the header.
    for step in 0..3 {
        match step {
            0 => {}
            1 => resp.edns = None,
            _ => resp.queries.clear(),
        }
        let bytes = resp.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(reply(bytes, &resp));
        }
    }
    None
}

/// The sections of an answer.
#[derive(Debug, Default)]
struct Outcome {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Outcome {
    fn refused() -> Outcome {
        Outcome { rcode: ResponseCode::Refused, ..Outcome::default() }
    }
}

/// What a name's A/AAAA records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr<'a> {
    /// The server's public addresses (client domains, the glue of our NS).
    Public,
    /// A VIP (VIP names).
    Vip(Ipv4Addr),
    /// Another node's public addresses (a domain its client holds).
    Node(&'a [IpAddr]),
}

/// `s` as a fully qualified name.
fn fqdn(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// The answer to `q` from our data.
fn lookup(q: &Query, names: &Names, cfg: &ZoneConfig, index: &Index) -> Outcome {
    if q.query_class() != DNSClass::IN {
        return Outcome::refused();
    }
    let qtype = q.query_type();
    // No zone transfers: the data is the clients' list, not for everyone.
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Outcome::refused();
    }
    let lower = q.name().to_lowercase().to_ascii();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    // Not an open resolver: names outside our zones are refused.
    let Some(apex) = index.zone_of(name) else {
        return Outcome::refused();
    };
    let (Some(apex_name), Some(mname), Some(rname)) =
        (fqdn(apex), fqdn(&cfg.nameserver), fqdn(&format!("hostmaster.{}", cfg.zone)))
    else {
        return Outcome { rcode: ResponseCode::ServFail, ..Outcome::default() };
    };
    let soa = Record::from_rdata(
        apex_name.clone(),
        cfg.ttl,
        RData::SOA(SOA::new(mname.clone(), rname, index.serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, cfg.ttl)),
    );
    let is_apex = name == apex;
    let addr = address_of(name, apex, names, cfg, index);
    let owner = q.name().clone();
    let records = |t: RecordType| -> Vec<Record> {
        match t {
            RecordType::A => match addr {
                Some(Addr::Public) => public_records(&owner, cfg, t),
                Some(Addr::Node(ips)) => address_records(&owner, cfg, ips, t),
                Some(Addr::Vip(v)) => vec![Record::from_rdata(owner.clone(), cfg.ttl, RData::A(A(v)))],
                None => Vec::new(),
            },
            RecordType::AAAA => match addr {
                Some(Addr::Public) => public_records(&owner, cfg, t),
                Some(Addr::Node(ips)) => address_records(&owner, cfg, ips, t),
                _ => Vec::new(),
            },
            RecordType::SOA if is_apex => {
                let mut r = soa.clone();
                r.name = owner.clone();
                vec![r]
            }
            RecordType::NS if is_apex => vec![Record::from_rdata(owner.clone(), cfg.ttl, RData::NS(NS(mname.clone())))],
            _ => Vec::new(),
        }
    };
    let mut out = Outcome { authoritative: true, ..Outcome::default() };
    out.answers = match qtype {
        // ANY (RFC 8482): one RRset, never everything there is.
        RecordType::ANY => [RecordType::A, RecordType::AAAA, RecordType::SOA, RecordType::NS]
            .into_iter()
            .map(records)
            .find(|r| !r.is_empty())
            .unwrap_or_default(),
        t => records(t),
    };
    if qtype == RecordType::NS && !out.answers.is_empty() && index.ns_glue {
        out.additionals.extend(public_records(&mname, cfg, RecordType::A));
        out.additionals.extend(public_records(&mname, cfg, RecordType::AAAA));
    }
    if out.answers.is_empty() {
        // NODATA if the name exists (it has other records, or names below
        // it do), NXDOMAIN if not; the SOA lets resolvers cache either.
        if !is_apex && addr.is_none() && !has_descendants(name, names, cfg, index) {
            out.rcode = ResponseCode::NXDomain;
        }
        out.authorities.push(soa);
    }
    out
}

/// The A/AAAA records of `owner` holding the public addresses of family `t`.
fn public_records(owner: &Name, cfg: &ZoneConfig, t: RecordType) -> Vec<Record> {
    address_records(owner, cfg, &cfg.public, t)
}

/// The A/AAAA records of `owner` holding the addresses of family `t` of `ips`.
fn address_records(owner: &Name, cfg: &ZoneConfig, ips: &[IpAddr], t: RecordType) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (ip, t) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(owner.clone(), cfg.ttl, data))
        .collect()
}

/// The addresses of `name` (lowercase, in the zone `apex`), if it has any.
fn address_of<'a>(name: &str, apex: &str, names: &Names, cfg: &ZoneConfig, index: &'a Index) -> Option<Addr<'a>> {
    if let Some(ips) = index.remote.get(name) {
        return Some(Addr::Node(ips));
    }
    if names.contains_key(name) || (index.ns_glue && name == cfg.nameserver) {
        return Some(Addr::Public);
    }
    if let Some(v) = index.vips.get(name) {
        return Some(Addr::Vip(*v));
    }
    if cfg.wildcard {
        // The closest client domain above the name, inside this zone.
        let mut cur = name;
        while cur != apex {
            cur = parent(cur)?;
            if let Some(ips) = index.remote.get(cur) {
                return Some(Addr::Node(ips));
            }
            if names.contains_key(cur) {
                return Some(Addr::Public);
            }
        }
    }
    None
}

/// Whether some name with records lies below `name` (which makes `name` an
/// empty non-terminal: NODATA rather than NXDOMAIN, RFC 8020).
fn has_descendants(name: &str, names: &Names, cfg: &ZoneConfig, index: &Index) -> bool {
    let below = |n: &str| n.len() > name.len() && within(n, name);
    names.keys().any(|n| below(n))
        || index.remote.keys().any(|n| below(n))
        || index.vips.keys().any(|n| below(n))
        || (index.ns_glue && below(&cfg.nameserver))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use hickory_proto::op::Edns;

    use super::*;

    const ZONE: &str = "open.notr.tech";
    const V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

    fn cfg(wildcard: bool) -> ZoneConfig {
        ZoneConfig {
            zone: ZONE.into(),
            public: vec![IpAddr::V4(V4), IpAddr::V6(V6)],
            ttl: 60,
            wildcard,
            nameserver: format!("ns1.{ZONE}"),
        }
    }

    fn names() -> Names {
        [
            ("abc.open.notr.tech", Ipv4Addr::new(100, 64, 242, 2)),
            ("x.y.open.notr.tech", Ipv4Addr::new(100, 64, 242, 3)),
            ("cloud.example.com", Ipv4Addr::new(100, 64, 242, 4)),
        ]
        .into_iter()
        .map(|(d, v)| (d.to_string(), v))
        .collect()
    }

    fn query_bytes(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn ask_with(name: &str, t: RecordType, cfg: &ZoneConfig, names: &Names) -> Message {
        let bytes = crate::answer(&query_bytes(name, t, None), names, cfg, 512).expect("an answer");
        let m = Message::from_vec(&bytes).expect("the answer parses");
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.recursion_desired, "RD is copied");
        assert!(!m.metadata.recursion_available, "no recursion here");
        m
    }

    fn ask(name: &str, t: RecordType) -> Message {
        ask_with(name, t, &cfg(false), &names())
    }

    fn ips(m: &Message) -> Vec<IpAddr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn soa_in_authority(m: &Message, apex: &str) -> SOA {
        assert_eq!(m.authorities.len(), 1, "{m}");
        let r = &m.authorities[0];
        assert_eq!(r.name.to_ascii(), format!("{apex}."));
        match &r.data {
            RData::SOA(s) => s.clone(),
            other => panic!("authority holds {other:?}, not an SOA"),
        }
    }

    /// Domains of other nodes' clients answer with those nodes' addresses;
    /// ours win over a stale remote entry, and answer with every node when
    /// the cluster says every node serves them; a remote custom domain is a zone
    /// of ours; wildcards and empty non-terminals count them.
    #[test]
    fn other_nodes_domains_answer_with_their_addresses() {
        let node_b: Vec<IpAddr> = vec!["198.51.100.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
        let remote: RemoteNames = [
            ("far.open.notr.tech".to_string(), node_b.clone()),
            ("abc.open.notr.tech".to_string(), node_b.clone()),
            ("shop.example.net".to_string(), node_b.clone()),
            ("a.deep.open.notr.tech".to_string(), node_b.clone()),
            // Ours, and served by every node: the cluster's answer.
            ("x.y.open.notr.tech".to_string(), vec![IpAddr::V4(V4), IpAddr::V6(V6), node_b[0], node_b[1]]),
        ]
        .into_iter()
        .collect();
        let names = names();
        let ask = |name: &str, t: RecordType, wildcard: bool| {
            let c = cfg(wildcard);
            let index = Index::new(&names, &remote, &c, 1);
            let reply = respond(&query_bytes(name, t, None), &names, &c, &index, Limit::Fixed(512)).expect("an answer");
            Message::from_vec(&reply.bytes).expect("the answer parses")
        };
        assert_eq!(ips(&ask("far.open.notr.tech", RecordType::A, false)), [node_b[0]]);
        assert_eq!(ips(&ask("far.open.notr.tech", RecordType::AAAA, false)), [node_b[1]]);
        assert_eq!(ips(&ask("abc.open.notr.tech", RecordType::A, false)), [IpAddr::V4(V4)], "ours wins");
        let every = ips(&ask("x.y.open.notr.tech", RecordType::A, false));
        assert_eq!(every, [IpAddr::V4(V4), node_b[0]], "a name every node serves");
        let m = ask("shop.example.net", RecordType::A, false);
        assert!(m.metadata.authoritative && ips(&m) == [node_b[0]], "{m}");
        assert_eq!(ips(&ask("x.far.open.notr.tech", RecordType::A, true)), [node_b[0]], "wildcard");
        let m = ask("x.far.open.notr.tech", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask("deep.open.notr.tech", RecordType::A, false);
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0), "empty non-terminal");
        // No VIP names for them: a VIP is reached on its own node.
        let m = ask("far.vip.open.notr.tech", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn vip_names() {
        assert_eq!(vip_name("abc.open.notr.tech", ZONE), "abc.vip.open.notr.tech");
        assert_eq!(vip_name("a.b.open.notr.tech", ZONE), "a-b.vip.open.notr.tech");
        assert_eq!(vip_name("Cloud.Example.COM", ZONE), "cloud-example-com.vip.open.notr.tech");
        assert_eq!(vip_name("xopen.notr.tech", ZONE), "xopen-notr-tech.vip.open.notr.tech");
        assert_eq!(vip_name("abc.open.notr.tech.", "open.notr.tech."), "abc.vip.open.notr.tech");
    }

    #[test]
    fn client_domain_a_and_aaaa() {
        let m = ask("abc.open.notr.tech.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(ips(&m), vec![IpAddr::V4(V4)]);
        assert_eq!(m.answers[0].ttl, 60);
        let m = ask("abc.open.notr.tech.", RecordType::AAAA);
        assert_eq!(ips(&m), vec![IpAddr::V6(V6)]);
    }

    #[test]
    fn answers_keep_the_question_case() {
        let m = ask("AbC.Open.NOTR.tech.", RecordType::A);
        assert_eq!(ips(&m), vec![IpAddr::V4(V4)]);
        assert_eq!(m.queries[0].name().to_ascii(), "AbC.Open.NOTR.tech.");
        assert_eq!(m.answers[0].name.to_ascii(), "AbC.Open.NOTR.tech.");
    }

    #[test]
    fn other_types_of_a_domain_are_nodata() {
        let m = ask("abc.open.notr.tech.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        soa_in_authority(&m, ZONE);
        // Only one family of public addresses: the other is NODATA too.
        let v4_only = ZoneConfig { public: vec![IpAddr::V4(V4)], ..cfg(false) };
        let m = ask_with("abc.open.notr.tech.", RecordType::AAAA, &v4_only, &names());
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        soa_in_authority(&m, ZONE);
    }

    #[test]
    fn vip_name_resolves_to_the_vip() {
        let m = ask("abc.vip.open.notr.tech.", RecordType::A);
        assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(100, 64, 242, 2))]);
        let m = ask("cloud-example-com.vip.open.notr.tech.", RecordType::A);
        assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(100, 64, 242, 4))]);
        let m = ask("x-y.vip.open.notr.tech.", RecordType::A);
        assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(100, 64, 242, 3))]);
        // A VIP is IPv4: AAAA is NODATA.
        let m = ask("abc.vip.open.notr.tech.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // vip.<zone> has names below it: NODATA, not NXDOMAIN.
        let m = ask("vip.open.notr.tech.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let m = ask("nobody.vip.open.notr.tech.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn ambiguous_vip_names_are_not_published() {
        let mut n = names();
        n.insert("a-b.com".into(), Ipv4Addr::new(100, 64, 242, 9));
        n.insert("a.b.com".into(), Ipv4Addr::new(100, 64, 242, 10));
        let index = Index::new(&n, &RemoteNames::new(), &cfg(false), 1);
        assert_eq!(index.ambiguous, vec!["a-b-com.vip.open.notr.tech".to_string()]);
        let m = ask_with("a-b-com.vip.open.notr.tech.", RecordType::A, &cfg(false), &n);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn wildcard_off_and_on() {
        let m = ask("www.abc.open.notr.tech.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        soa_in_authority(&m, ZONE);

        let on = cfg(true);
        for name in ["www.abc.open.notr.tech.", "a.b.c.abc.open.notr.tech.", "www.cloud.example.com."] {
            let m = ask_with(name, RecordType::A, &on, &names());
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(ips(&m), vec![IpAddr::V4(V4)], "{name}");
            assert_eq!(m.answers[0].name.to_ascii(), name);
        }
        // The wildcard covers names below a domain, not beside it.
        let m = ask_with("other.open.notr.tech.", RecordType::A, &on, &names());
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask_with("open.notr.tech.", RecordType::A, &on, &names());
        assert!(m.answers.is_empty());
    }

    #[test]
    fn apex_soa_and_ns_with_glue() {
        let m = ask("open.notr.tech.", RecordType::SOA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 1);
        let RData::SOA(soa) = &m.answers[0].data else { panic!("not an SOA: {m}") };
        assert_eq!(soa.mname.to_ascii(), "ns1.open.notr.tech.");
        assert_eq!(soa.rname.to_ascii(), "hostmaster.open.notr.tech.");
        assert_eq!(soa.minimum, 60);
        assert!(soa.expire > soa.refresh + soa.retry);

        let m = ask("open.notr.tech.", RecordType::NS);
        assert_eq!(m.answers.len(), 1);
        let RData::NS(ns) = &m.answers[0].data else { panic!("not an NS: {m}") };
        assert_eq!(ns.0.to_ascii(), "ns1.open.notr.tech.");
        // Glue: the in-zone name server's addresses.
        let glue: Vec<_> = m.additionals.iter().map(|r| (r.name.to_ascii(), r.record_type())).collect();
        assert_eq!(
            glue,
            vec![
                ("ns1.open.notr.tech.".to_string(), RecordType::A),
                ("ns1.open.notr.tech.".to_string(), RecordType::AAAA)
            ]
        );
        let m = ask("ns1.open.notr.tech.", RecordType::A);
        assert_eq!(ips(&m), vec![IpAddr::V4(V4)]);

        // A name server outside the zone has no glue and no records here.
        let outside = ZoneConfig { nameserver: "ns.example.net".into(), ..cfg(false) };
        let m = ask_with("open.notr.tech.", RecordType::NS, &outside, &names());
        assert!(m.additionals.is_empty());
        let m = ask_with("ns1.open.notr.tech.", RecordType::A, &outside, &names());
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Apex, other types: NODATA.
        let m = ask("open.notr.tech.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        soa_in_authority(&m, ZONE);
    }

    #[test]
    fn unknown_names_are_nxdomain_with_soa() {
        let m = ask("nobody.open.notr.tech.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        let soa = soa_in_authority(&m, ZONE);
        assert_eq!(soa.minimum, 60);
        assert_eq!(m.authorities[0].ttl, 60);
        // y.<zone> is an empty non-terminal (x.y.<zone> exists): NODATA.
        let m = ask("y.open.notr.tech.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        soa_in_authority(&m, ZONE);
    }

    #[test]
    fn outside_our_zones_is_refused() {
        for name in ["example.com.", "notr.tech.", "tech.", ".", "www.google.com.", "xopen.notr.tech."] {
            let m = ask(name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(!m.metadata.authoritative, "{name}");
            assert!(m.answers.is_empty() && m.authorities.is_empty(), "{name}");
        }
        // A class other than IN.
        let mut q = Query::query(Name::from_ascii("abc.open.notr.tech.").unwrap(), RecordType::A);
        q.set_query_class(DNSClass::CH);
        let mut msg = Message::query();
        msg.add_query(q);
        let out = crate::answer(&msg.to_vec().unwrap(), &names(), &cfg(false), 512).unwrap();
        assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::Refused);
        // No zone transfers.
        let m = ask("open.notr.tech.", RecordType::AXFR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn custom_domain_is_its_own_zone() {
        let m = ask("cloud.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(ips(&m), vec![IpAddr::V4(V4)]);
        let m = ask("cloud.example.com.", RecordType::SOA);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].name.to_ascii(), "cloud.example.com.");
        let m = ask("cloud.example.com.", RecordType::NS);
        assert_eq!(m.answers.len(), 1);
        let m = ask("www.cloud.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        soa_in_authority(&m, "cloud.example.com");
        let m = ask("example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // Gone with its client.
        let mut n = names();
        n.remove("cloud.example.com");
        let m = ask_with("cloud.example.com.", RecordType::A, &cfg(false), &n);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn any_is_answered_with_one_rrset() {
        let m = ask("abc.open.notr.tech.", RecordType::ANY);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(ips(&m), vec![IpAddr::V4(V4)]);
        let m = ask("open.notr.tech.", RecordType::ANY);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        let m = ask("nobody.open.notr.tech.", RecordType::ANY);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn edns_is_echoed_and_limits_udp() {
        let many: Vec<IpAddr> = (1..=60).map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i))).collect();
        let big = ZoneConfig { public: many, ..cfg(false) };
        let n = names();
        let index = Index::new(&n, &RemoteNames::new(), &big, 1);
        let ask_udp = |edns: Option<u16>| {
            let q = query_bytes("abc.open.notr.tech.", RecordType::A, edns);
            let r = respond(&q, &n, &big, &index, Limit::Udp).unwrap();
            (r.bytes.len(), Message::from_vec(&r.bytes).unwrap())
        };
        // 60 A records are about 1 KB: too much for 512 bytes.
        let (len, m) = ask_udp(None);
        assert!(len <= 512);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert!(m.edns.is_none());
        // EDNS 1232: fits; our OPT is in the answer.
        let (len, m) = ask_udp(Some(4096));
        assert!(len <= 1232, "{len}");
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
        assert_eq!(m.edns.as_ref().unwrap().max_payload(), UDP_PAYLOAD);
        // An EDNS size below 512 counts as 512.
        let (len, m) = ask_udp(Some(100));
        assert!(len <= 512 && m.metadata.truncation);
        assert!(m.edns.is_some(), "a truncated answer keeps the OPT record");
        // TCP (fixed limit): everything.
        let q = query_bytes("abc.open.notr.tech.", RecordType::A, None);
        let r = respond(&q, &n, &big, &index, Limit::Fixed(TCP_MAX)).unwrap();
        assert_eq!(Message::from_vec(&r.bytes).unwrap().answers.len(), 60);
    }

    #[test]
    fn a_small_max_len_truncates() {
        let q = query_bytes("abc.open.notr.tech.", RecordType::A, None);
        let full = crate::answer(&q, &names(), &cfg(false), 512).unwrap();
        let short = crate::answer(&q, &names(), &cfg(false), full.len() - 1).unwrap();
        assert!(short.len() < full.len());
        let m = Message::from_vec(&short).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        // Down to the bare header.
        let tiny = crate::answer(&q, &names(), &cfg(false), 12).unwrap();
        assert_eq!(tiny.len(), 12);
        assert!(Message::from_vec(&tiny).unwrap().metadata.truncation);
        assert_eq!(crate::answer(&q, &names(), &cfg(false), 11), None);
    }

    #[test]
    fn edns_version_other_than_0_is_badvers() {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii("abc.open.notr.tech.").unwrap(), RecordType::A));
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let out = crate::answer(&m.to_vec().unwrap(), &names(), &cfg(false), 512).unwrap();
        let r = Message::from_vec(&out).unwrap();
        // 16 is BADVERS in an answer with OPT (hickory reads it as BADSIG,
        // the same number in TSIG).
        assert_eq!(u16::from(r.metadata.response_code), 16);
        assert_eq!(out[3] & 0x0f, 0, "the low bits of 16");
        assert_eq!(r.edns.as_ref().unwrap().version(), 0);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn garbage_truncated_and_responses_get_nothing() {
        let (n, c) = (names(), cfg(false));
        assert_eq!(crate::answer(&[], &n, &c, 512), None);
        assert_eq!(crate::answer(b"hello", &n, &c, 512), None);
        let q = query_bytes("abc.open.notr.tech.", RecordType::A, None);
        // Cut inside the header.
        assert_eq!(crate::answer(&q[..11], &n, &c, 512), None);
        // A response, even a well-formed one: never answered.
        let resp = crate::answer(&q, &n, &c, 512).unwrap();
        assert_eq!(crate::answer(&resp, &n, &c, 512), None);
        let mut flipped = q.clone();
        flipped[2] |= 0x80;
        assert_eq!(crate::answer(&flipped, &n, &c, 512), None);
    }

    #[test]
    fn malformed_queries_get_formerr() {
        let (n, c) = (names(), cfg(false));
        let q = query_bytes("abc.open.notr.tech.", RecordType::A, None);
        // The header parses, the question is cut short.
        let out = crate::answer(&q[..q.len() - 3], &n, &c, 512).unwrap();
        assert_eq!(out.len(), 12);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x1234);
        // No question, two questions.
        let mut none = Message::query();
        none.metadata.id = 7;
        let out = crate::answer(&none.to_vec().unwrap(), &n, &c, 512).unwrap();
        assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::FormErr);
        let mut two = Message::query();
        two.add_query(Query::query(Name::from_ascii("abc.open.notr.tech.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("cloud.example.com.").unwrap(), RecordType::A));
        let out = crate::answer(&two.to_vec().unwrap(), &n, &c, 512).unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn other_opcodes_are_notimp() {
        let mut q = query_bytes("abc.open.notr.tech.", RecordType::A, None);
        q[2] = (q[2] & 0x87) | (4 << 3); // NOTIFY
        let out = crate::answer(&q, &names(), &cfg(false), 512).unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(m.metadata.op_code, OpCode::Notify);
        assert!(!m.metadata.authoritative);
        q[2] = (q[2] & 0x87) | (15 << 3); // unassigned
        let out = crate::answer(&q, &names(), &cfg(false), 512).unwrap();
        assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn answers_never_grow_past_the_query_without_edns_limit() {
        // Every answer fits the 512 bytes a query without EDNS allows.
        let n = names();
        let c = cfg(true);
        let index = Index::new(&n, &RemoteNames::new(), &c, 1);
        for name in ["abc.open.notr.tech.", "open.notr.tech.", "nobody.open.notr.tech.", "example.org."] {
            for t in [RecordType::A, RecordType::AAAA, RecordType::NS, RecordType::SOA, RecordType::ANY] {
                let r = respond(&query_bytes(name, t, None), &n, &c, &index, Limit::Udp).unwrap();
                assert!(r.bytes.len() <= 512);
            }
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let (n, c) = (names(), cfg(true));
                if let Some(out) = crate::answer(&bytes, &n, &c, 512) {
                    prop_assert!(out.len() <= 512);
                    prop_assert!(out.len() >= 12);
                    prop_assert_eq!(out[2] & 0x80, 0x80, "an answer is a response");
                    prop_assert_eq!(bytes[2] & 0x80, 0, "a response was answered");
                }
            }

            #[test]
            fn mutated_queries_never_panic(
                pos in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let (n, c) = (names(), cfg(true));
                let mut q = query_bytes("www.abc.open.notr.tech.", RecordType::A, Some(1232));
                for (i, b) in pos {
                    let i = i.index(q.len());
                    q[i] = b;
                }
                let q = &q[..cut.index(q.len() + 1)];
                if let Some(out) = crate::answer(q, &n, &c, 512) {
                    prop_assert!(out.len() <= 512);
                    prop_assert_eq!(out[2] & 0x80, 0x80);
                }
            }
        }
    }
}
