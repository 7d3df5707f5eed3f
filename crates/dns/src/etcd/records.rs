//! What the records look like, and which writes make etcd equal to the
//! live names. Pure functions: no I/O here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::Names;

/// The value field that marks a record as written by an opennotrd; its
/// value is the publisher's owner string. CoreDNS ignores unknown fields.
pub(crate) const OWNER_FIELD: &str = "opennotr";

/// A key-value pair as etcd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
    pub mod_revision: i64,
}

/// What a conditional write expects to find at its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No key.
    Absent,
    /// The key, last modified at this revision (one of ours).
    ModRevision(i64),
}

/// The SkyDNS value of one record, fields in this order.
#[derive(Serialize)]
struct Value<'a> {
    host: String,
    ttl: u32,
    opennotr: &'a str,
}

/// How the records of one publisher look.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Starts with `/`, does not end with it.
    prefix: String,
    /// One value per public address, in order.
    values: Vec<Vec<u8>>,
    owner: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str, public: &[IpAddr], record_ttl: u32, owner: &str) -> Layout {
        let trimmed = prefix.trim().trim_end_matches('/');
        let prefix = if trimmed.starts_with('/') { trimmed.to_owned() } else { format!("/{trimmed}") };
        let values = public.iter().map(|ip| record_value(*ip, record_ttl, owner)).collect();
        Layout { prefix, values, owner: owner.to_owned() }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether there is anything to publish (at least one public address).
    pub(crate) fn has_addresses(&self) -> bool {
        !self.values.is_empty()
    }

    /// The records of one domain: the domain's key with one address, one
    /// sub-key `x1`, `x2`, ... per address with several (as SkyDNS does).
    /// Nothing for a name that is not a plain DNS name.
    pub(crate) fn records(&self, domain: &str) -> Vec<(String, Vec<u8>)> {
        let Some(key) = domain_key(&self.prefix, domain) else { return Vec::new() };
        match self.values.as_slice() {
            [one] => vec![(key, one.clone())],
            many => many.iter().enumerate().map(|(i, v)| (format!("{key}/x{}", i + 1), v.clone())).collect(),
        }
    }

    /// Every record the live names call for. Only the client domains are
    /// published; the VIPs are not.
    pub(crate) fn desired(&self, names: &Names) -> BTreeMap<String, Vec<u8>> {
        names.keys().flat_map(|domain| self.records(domain)).collect()
    }

    /// Whether a value was written by a publisher with our owner string.
    pub(crate) fn is_ours(&self, value: &[u8]) -> bool {
        owner_of(value).is_some_and(|o| o == self.owner)
    }

    /// The key range holding every record below the prefix: `prefix/` up
    /// to (excluding) `prefix0` (`0` follows `/`).
    pub(crate) fn range(&self) -> (Vec<u8>, Vec<u8>) {
        (format!("{}/", self.prefix).into_bytes(), format!("{}0", self.prefix).into_bytes())
    }
}

/// `prefix` followed by the domain's labels in reverse order:
/// `abc.open.notr.tech` under `/skydns` is `/skydns/tech/notr/open/abc`.
/// `None` for what is not a DNS name made of letters, digits, `-` and `_`
/// (a `/` or `*` would change what CoreDNS reads).
pub(crate) fn domain_key(prefix: &str, domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() || domain.len() > 253 {
        return None;
    }
    let mut key = prefix.to_owned();
    for label in domain.rsplit('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return None;
        }
        key.push('/');
        key.push_str(&label.to_ascii_lowercase());
    }
    Some(key)
}

/// `{"host":"<ip>","ttl":<ttl>,"opennotr":"<owner>"}`.
pub(crate) fn record_value(ip: IpAddr, ttl: u32, owner: &str) -> Vec<u8> {
    let v = Value { host: ip.to_string(), ttl, opennotr: owner };
    // Serializing a struct of strings and an integer cannot fail.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The owner field of a record's value, if it is a JSON object with one.
pub(crate) fn owner_of(value: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    v.get(OWNER_FIELD)?.as_str().map(str::to_owned)
}

/// What to do after listing the prefix (at start and after reconnecting).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Our records that are as desired already: key and mod revision.
    pub(crate) keep: Vec<(String, i64)>,
    /// Records to write, with what is expected at the key.
    pub(crate) put: Vec<(String, Vec<u8>, Expect)>,
    /// Our records no longer desired (stale): key and mod revision.
    pub(crate) delete: Vec<(String, i64)>,
}

/// Compares a listing of the prefix with the desired records. Only records
/// whose owner field is ours are kept, rewritten or deleted; a record of
/// anyone else is left alone (a desired key it holds is attempted as
/// `Absent`, which etcd refuses, so it is never overwritten).
pub(crate) fn plan(layout: &Layout, listing: &[Kv], desired: &BTreeMap<String, Vec<u8>>, lease: i64) -> Plan {
    let ours: BTreeMap<&str, &Kv> = listing
        .iter()
        .filter(|kv| layout.is_ours(&kv.value))
        .filter_map(|kv| std::str::from_utf8(&kv.key).ok().map(|k| (k, kv)))
        .collect();
    let mut plan = Plan::default();
    for (key, kv) in &ours {
        if !desired.contains_key(*key) {
            plan.delete.push(((*key).to_owned(), kv.mod_revision));
        }
    }
    for (key, value) in desired {
        match ours.get(key.as_str()) {
            Some(kv) if kv.value == *value && kv.lease == lease => plan.keep.push((key.clone(), kv.mod_revision)),
            Some(kv) => plan.put.push((key.clone(), value.clone(), Expect::ModRevision(kv.mod_revision))),
            None => plan.put.push((key.clone(), value.clone(), Expect::Absent)),
        }
    }
    plan
}

/// Records to create: key and value.
pub(crate) type Creates = Vec<(String, Vec<u8>)>;
/// Records to delete: key and the mod revision we wrote them at.
pub(crate) type Deletes = Vec<(String, i64)>;

/// Writes that turn `published` (our records in etcd: key and mod
/// revision) into `desired`.
pub(crate) fn diff(published: &BTreeMap<String, i64>, desired: &BTreeMap<String, Vec<u8>>) -> (Creates, Deletes) {
    let puts =
        desired.iter().filter(|(k, _)| !published.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let deletes = published.iter().filter(|(k, _)| !desired.contains_key(*k)).map(|(k, r)| (k.clone(), *r)).collect();
    (puts, deletes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const OWNER: &str = "opennotrd open.notr.tech 0.0.0.0:10100";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn layout(public: &[&str]) -> Layout {
        let public: Vec<IpAddr> = public.iter().map(|s| ip(s)).collect();
        Layout::new("/skydns", &public, 60, OWNER)
    }

    fn names(domains: &[&str]) -> Names {
        domains.iter().enumerate().map(|(i, d)| (d.to_string(), Ipv4Addr::new(100, 64, 0, i as u8 + 2))).collect()
    }

    fn kv(key: &str, value: &[u8], lease: i64, rev: i64) -> Kv {
        Kv { key: key.as_bytes().to_vec(), value: value.to_vec(), lease, mod_revision: rev }
    }

    #[test]
    fn etcd_key_is_the_prefix_and_the_reversed_labels() {
        assert_eq!(domain_key("/skydns", "abc.open.notr.tech").as_deref(), Some("/skydns/tech/notr/open/abc"));
        assert_eq!(domain_key("/skydns", "abc.open.notr.tech.").as_deref(), Some("/skydns/tech/notr/open/abc"));
        assert_eq!(domain_key("/dns/x", "Cloud.Example.COM").as_deref(), Some("/dns/x/com/example/cloud"));
        assert_eq!(domain_key("/skydns", "a").as_deref(), Some("/skydns/a"));
        for bad in ["", ".", "a..b", "a/b.c", "*.a.b", "a b.c", "x.\u{e9}.c", &"a".repeat(64)] {
            assert_eq!(domain_key("/skydns", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn etcd_layout_normalizes_the_prefix() {
        let public = [ip("1.2.3.4")];
        assert_eq!(Layout::new("/skydns/", &public, 1, OWNER).prefix(), "/skydns");
        assert_eq!(Layout::new("skydns", &public, 1, OWNER).prefix(), "/skydns");
        let (start, end) = layout(&["1.2.3.4"]).range();
        assert_eq!(start, b"/skydns/");
        assert_eq!(end, b"/skydns0");
    }

    #[test]
    fn etcd_value_is_skydns_json_with_the_owner() {
        let v = record_value(ip("127.0.0.2"), 60, OWNER);
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            r#"{"host":"127.0.0.2","ttl":60,"opennotr":"opennotrd open.notr.tech 0.0.0.0:10100"}"#
        );
        let v6 = record_value(IpAddr::V6(Ipv6Addr::LOCALHOST), 5, "o \"quoted\"");
        let parsed: serde_json::Value = serde_json::from_slice(&v6).unwrap();
        assert_eq!(parsed["host"], "::1");
        assert_eq!(parsed["ttl"], 5);
        assert_eq!(owner_of(&v6).as_deref(), Some("o \"quoted\""));
    }

    #[test]
    fn etcd_ownership_is_read_from_the_value() {
        let l = layout(&["1.2.3.4"]);
        assert!(l.is_ours(&record_value(ip("9.9.9.9"), 1, OWNER)));
        assert!(!l.is_ours(&record_value(ip("1.2.3.4"), 60, "opennotrd other 0.0.0.0:10100")));
        assert!(!l.is_ours(br#"{"host":"1.2.3.4"}"#));
        assert!(!l.is_ours(br#"{"opennotr":5}"#));
        assert!(!l.is_ours(b"not json"));
        assert!(!l.is_ours(b"[1,2]"));
        assert!(!l.is_ours(b""));
    }

    #[test]
    fn etcd_one_address_is_one_record_per_domain() {
        let l = layout(&["127.0.0.2"]);
        let d = l.desired(&names(&["abc.open.notr.tech", "cloud.example.com"]));
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/skydns/com/example/cloud", "/skydns/tech/notr/open/abc"]);
        assert_eq!(d["/skydns/tech/notr/open/abc"], record_value(ip("127.0.0.2"), 60, OWNER));
    }

    #[test]
    fn etcd_several_addresses_are_sub_keys() {
        let l = layout(&["192.0.2.1", "2001:db8::1"]);
        let d = l.desired(&names(&["abc.open.notr.tech"]));
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/skydns/tech/notr/open/abc/x1", "/skydns/tech/notr/open/abc/x2"]);
        assert_eq!(d["/skydns/tech/notr/open/abc/x2"], record_value(ip("2001:db8::1"), 60, OWNER));
        // No address, nothing to publish; a bad name, nothing either.
        assert!(layout(&[]).desired(&names(&["abc.open.notr.tech"])).is_empty());
        assert!(!layout(&[]).has_addresses());
        assert!(l.desired(&names(&["a/b.open.notr.tech"])).is_empty());
    }

    #[test]
    fn etcd_plan_touches_only_our_records() {
        let l = layout(&["127.0.0.2"]);
        let lease = 77;
        let desired = l.desired(&names(&["keep.z", "rewrite.z", "relocate.z", "new.z", "taken.z"]));
        let ours = |host: &str| record_value(ip(host), 60, OWNER);
        let listing = vec![
            kv("/skydns/z/keep", &ours("127.0.0.2"), lease, 10),
            // Right value, other lease (an earlier run's): rewritten.
            kv("/skydns/z/relocate", &ours("127.0.0.2"), 5, 11),
            // Other address (config changed): rewritten.
            kv("/skydns/z/rewrite", &ours("10.0.0.1"), lease, 12),
            // Stale (domain gone): deleted.
            kv("/skydns/z/stale", &ours("127.0.0.2"), 5, 13),
            // Someone else's: never touched, not even when we want the key.
            kv("/skydns/z/foreign", br#"{"host":"10.1.1.1"}"#, 0, 14),
            kv("/skydns/z/taken", br#"{"host":"10.1.1.1","opennotr":"another server"}"#, 0, 15),
            kv("/skydns/z/garbage", b"\xff\x00", 0, 16),
        ];
        let p = plan(&l, &listing, &desired, lease);
        assert_eq!(p.keep, vec![("/skydns/z/keep".to_string(), 10)]);
        assert_eq!(p.delete, vec![("/skydns/z/stale".to_string(), 13)]);
        let puts: Vec<(&str, Expect)> = p.put.iter().map(|(k, _, e)| (k.as_str(), *e)).collect();
        assert_eq!(
            puts,
            vec![
                ("/skydns/z/new", Expect::Absent),
                ("/skydns/z/relocate", Expect::ModRevision(11)),
                ("/skydns/z/rewrite", Expect::ModRevision(12)),
                ("/skydns/z/taken", Expect::Absent),
            ]
        );
        assert!(p.put.iter().all(|(k, v, _)| desired[k] == *v));
    }

    #[test]
    fn etcd_plan_of_an_empty_prefix_puts_everything() {
        let l = layout(&["127.0.0.2"]);
        let desired = l.desired(&names(&["a.z", "b.z"]));
        let p = plan(&l, &[], &desired, 1);
        assert_eq!(p.put.len(), 2);
        assert!(p.keep.is_empty() && p.delete.is_empty());
        assert_eq!(plan(&l, &[], &BTreeMap::new(), 1), Plan::default());
    }

    #[test]
    fn etcd_diff_creates_new_and_deletes_gone_records() {
        let l = layout(&["127.0.0.2"]);
        let published: BTreeMap<String, i64> =
            [("/skydns/z/a".to_string(), 3), ("/skydns/z/b".to_string(), 4)].into_iter().collect();
        let desired = l.desired(&names(&["b.z", "c.z"]));
        let (puts, deletes) = diff(&published, &desired);
        assert_eq!(puts, vec![("/skydns/z/c".to_string(), desired["/skydns/z/c"].clone())]);
        assert_eq!(deletes, vec![("/skydns/z/a".to_string(), 3)]);
        let (puts, deletes) = diff(&published, &l.desired(&names(&["a.z", "b.z"])));
        assert!(puts.is_empty() && deletes.is_empty());
    }
}
