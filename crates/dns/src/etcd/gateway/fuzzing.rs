//! Entry point for the fuzz targets (`crates/fuzz-targets`): every way
//! the publisher (and the cluster's watch) reads one etcd answer, as its
//! calls read it. Not an API.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use hyper::StatusCode;

use super::super::records::{owner_of, plan, Expect, Layout};
use super::{changes, first_response, int, kvs, parse_answer, revision, succeeded, Answer};

/// What the calls make of one answer.
#[derive(Debug, Default)]
pub struct Reading {
    /// etcd's refusal (its code), when the answer is one.
    pub etcd_error: Option<i64>,
    /// Why the answer is neither a result nor a refusal, when it is not.
    pub garbage: Option<String>,
    /// What each call read out of a result, or why it could not: the
    /// lease's ID and TTL, the listing's header revision, the pairs, a
    /// txn's revision and the pairs of its refusal.
    pub reads: Vec<Result<i64, String>>,
    /// The pairs listed: key, value, lease, mod revision.
    pub kvs: Vec<(Vec<u8>, Vec<u8>, i64, i64)>,
    /// Keys the reconciliation would delete or overwrite although the
    /// listing shows them held by another owner (never any).
    pub foreign_touched: Vec<Vec<u8>>,
}

/// Reads `body`, answered with `status`, as every call would.
pub fn read(status: u16, body: &[u8]) -> Reading {
    let mut r = Reading::default();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let v = match parse_answer(status, body) {
        Ok(v) => v,
        Err(Answer::Etcd { code, .. }) => {
            r.etcd_error = Some(code);
            return r;
        }
        Err(Answer::Garbage(why)) => {
            r.garbage = Some(why);
            return r;
        }
    };
    r.reads.push(int(&v, "ID"));
    r.reads.push(int(&v, "TTL"));
    r.reads.push(v.get("header").map(|h| int(h, "revision")).unwrap_or(Ok(0)));
    r.reads.push(revision(&v));
    let _ = succeeded(&v);
    // As a watch message (the cluster's watch reads `result`).
    r.reads.push(changes(v.get("result").unwrap_or(&v)).map(|c| c.len() as i64));
    let refusal = first_response(&v, "response_range").and_then(kvs);
    r.reads.push(refusal.map(|k| k.len() as i64));
    let listing = match kvs(&v) {
        Ok(listing) => listing,
        Err(why) => {
            r.reads.push(Err(why));
            return r;
        }
    };
    r.kvs = listing.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.lease, kv.mod_revision)).collect();
    // The listing against what a publisher owning `fuzz` wants: it never
    // deletes or overwrites a record whose value names another owner.
    let layout = Layout::new("/skydns", &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))], 60, "fuzz");
    let names: BTreeMap<String, Ipv4Addr> = listing
        .iter()
        .filter_map(|kv| std::str::from_utf8(&kv.key).ok())
        .filter_map(|k| k.strip_prefix("/skydns/"))
        .map(|k| (k.split('/').rev().collect::<Vec<_>>().join("."), Ipv4Addr::new(100, 64, 0, 2)))
        .collect();
    let desired = layout.desired(&names);
    let p = plan(&layout, &listing, &desired, 7);
    let touched = p.delete.iter().map(|(k, rev)| (k, *rev)).chain(p.put.iter().filter_map(|(k, _, e)| match e {
        Expect::ModRevision(rev) => Some((k, *rev)),
        Expect::Absent => None,
    }));
    for (key, rev) in touched {
        let ours = |kv: &&super::Kv| owner_of(&kv.value).as_deref() == Some("fuzz");
        if !listing.iter().filter(|kv| kv.key == key.as_bytes() && kv.mod_revision == rev).any(|kv| ours(&kv)) {
            r.foreign_touched.push(key.as_bytes().to_vec());
        }
    }
    r
}
