//! SkyDNS records in etcd for CoreDNS's `etcd` plugin.
//!
//! Each live client domain is one record (or one per public address) under
//! the prefix, its labels reversed: `abc.open.notr.tech` is
//! `/skydns/tech/notr/open/abc` = `{"host":"<public ip>","ttl":60,
//! "opennotr":"<owner>"}`. All records hang on one lease that this task
//! keeps alive: when opennotrd dies they vanish after the lease TTL, and a
//! clean stop revokes the lease so they vanish at once.
//!
//! The task keeps etcd equal to the latest [`Names`]: it writes what is
//! missing and deletes what is gone. At start and after every reconnection
//! it lists the prefix and deletes our own records (same owner field) that
//! are no longer live, e.g. left by a crashed earlier run. Records of other
//! owners are never written over or deleted: every write is a transaction
//! that checks the key is absent or still the record we wrote.
//!
//! etcd being slow or down never reaches the sessions: it only delays the
//! records. Failures are retried with backoff (0.5 s doubling to 10 s), and
//! logged once per outage; when etcd is back (its lease possibly gone) the
//! lease is renewed or granted anew and everything is published again.
//!
//! etcd is spoken to through its v3 JSON gateway (etcd 3.4 or later).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::Names;

mod gateway;
mod records;

#[doc(hidden)]
pub use gateway::fuzzing;
// The JSON gateway client, shared with the cluster's node registry.
pub use gateway::{endpoint_base, Change, Error, Gateway, Lease, Put, Watch};
use records::Layout;
pub use records::{Expect, Kv};

/// First wait after a failure; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Bound of the lease revocation at a clean stop.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of one conditional write racing with other writers.
const PUT_ATTEMPTS: usize = 3;

/// Where and what to publish.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `resolver.etcdEndpoints`, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// `resolver.etcdPrefix`, e.g. `/skydns`.
    pub prefix: String,
    /// Lease TTL: records vanish this long after opennotrd stops.
    pub lease_ttl: Duration,
    /// The addresses client domains resolve to.
    pub public: Vec<IpAddr>,
    /// TTL written into each record, seconds.
    pub record_ttl: u32,
    /// Identifies this server's records (to find stale ones at start).
    pub owner: String,
}

/// Keeps etcd's records equal to the live names, in the background.
#[derive(Debug)]
pub struct EtcdPublisher {
    cfg: EtcdConfig,
}

impl EtcdPublisher {
    /// A publisher; nothing happens before [`run`](Self::run).
    pub fn new(cfg: EtcdConfig) -> Self {
        EtcdPublisher { cfg }
    }

    /// Publishes until `stop`. Never blocks the caller's sessions: etcd
    /// being slow or down only delays the records (retried, logged).
    ///
    /// At `stop` the lease is revoked (bounded by a short timeout), so the
    /// records vanish at once. If the names' sender goes away (the server
    /// is gone) the same happens.
    pub async fn run(self, mut names: watch::Receiver<Arc<Names>>, stop: CancellationToken) {
        let mut publisher = match Publisher::new(self.cfg) {
            Ok(p) => p,
            Err(reason) => {
                error!(%reason, "not publishing client domains to etcd");
                return;
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            _ = publisher.serve(&mut names) => {}
        }
        publisher.revoke().await;
    }
}

/// The publisher's state between requests. Every field stays meaningful if
/// a request is abandoned half way (at stop).
struct Publisher {
    gw: Gateway,
    layout: Layout,
    /// Requested lease TTL, seconds.
    lease_ttl: i64,
    lease: Option<Lease>,
    /// Our records in etcd, under the current lease: key and mod revision.
    published: BTreeMap<String, i64>,
    /// Desired keys held by another owner's record (warned about once).
    conflicts: BTreeSet<String>,
    /// Since when etcd has been failing (warned once).
    down_since: Option<Instant>,
    /// Whether a session has ever been established (for the first log line).
    started: bool,
    backoff: Duration,
}

impl Publisher {
    fn new(cfg: EtcdConfig) -> Result<Publisher, String> {
        let mut endpoints = Vec::new();
        for e in &cfg.endpoints {
            match gateway::endpoint_base(e) {
                Ok(base) => endpoints.push(base),
                Err(reason) => warn!(%reason, "ignoring etcd endpoint"),
            }
        }
        if endpoints.is_empty() {
            return Err(format!("no usable etcd endpoint in {:?}", cfg.endpoints));
        }
        let layout = Layout::new(&cfg.prefix, &cfg.public, cfg.record_ttl, &cfg.owner);
        if !layout.has_addresses() {
            warn!("no public address: client domains are published to etcd without records");
        }
        let secs = cfg.lease_ttl.as_secs_f64().ceil();
        let lease_ttl = if secs.is_finite() && secs >= 1.0 { secs.min(i64::MAX as f64) as i64 } else { 1 };
        Ok(Publisher {
            gw: Gateway::new(endpoints),
            layout,
            lease_ttl,
            lease: None,
            published: BTreeMap::new(),
            conflicts: BTreeSet::new(),
            down_since: None,
            started: false,
            backoff: BACKOFF_MIN,
        })
    }

    /// Sessions with etcd, one after another, until the names' sender is
    /// gone. A session ends with the first failure; the next one starts
    /// after a backoff.
    async fn serve(&mut self, names: &mut watch::Receiver<Arc<Names>>) {
        loop {
            if names.has_changed().is_err() {
                return; // The server is gone.
            }
            match self.session(names).await {
                Ok(()) => return,
                Err(e) => self.failed(e),
            }
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Makes etcd equal to the names, then follows them and keeps the
    /// lease alive. `Ok` when the names' sender is gone.
    async fn session(&mut self, names: &mut watch::Receiver<Arc<Names>>) -> Result<(), Error> {
        self.gw.rewind();
        let lease = self.establish(names).await?;
        self.recovered();
        let every = Duration::from_millis((lease.ttl.saturating_mul(1000) / 3).clamp(500, 3_600_000) as u64);
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = names.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let snapshot = names.borrow_and_update().clone();
                    let desired = self.layout.desired(&snapshot);
                    self.reconcile(&desired, lease.id).await?;
                }
                _ = tick.tick() => {
                    let ttl = self.gw.keepalive(lease.id).await?;
                    if ttl <= 0 {
                        self.lease = None;
                        return Err(Error::LeaseLost);
                    }
                    debug!(lease = lease.id, ttl, "etcd lease renewed");
                }
            }
        }
    }

    /// Renews the lease we hold or grants a new one, lists the prefix, and
    /// writes and deletes until etcd holds exactly the desired records.
    async fn establish(&mut self, names: &mut watch::Receiver<Arc<Names>>) -> Result<Lease, Error> {
        if let Some(lease) = self.lease {
            let ttl = self.gw.keepalive(lease.id).await?;
            if ttl <= 0 {
                info!(lease = lease.id, "the etcd lease expired meanwhile; granting a new one");
                self.lease = None;
            }
        }
        let lease = match self.lease {
            Some(l) => l,
            None => {
                let l = self.gw.grant(self.lease_ttl).await?;
                debug!(lease = l.id, ttl = l.ttl, "etcd lease granted");
                self.lease = Some(l);
                l
            }
        };
        let (start, end) = self.layout.range();
        let listing = self.gw.list(&start, &end).await?;
        let snapshot = names.borrow_and_update().clone();
        let desired = self.layout.desired(&snapshot);
        let plan = records::plan(&self.layout, &listing, &desired, lease.id);
        self.published = plan.keep.into_iter().collect();
        let stale = plan.delete.len();
        for (key, _, expect) in plan.put {
            self.put(key, &desired, lease.id, expect).await?;
        }
        for (key, rev) in plan.delete {
            debug!(%key, "deleting a stale record of ours");
            self.gw.delete_if(&key, rev).await?;
        }
        if stale > 0 {
            info!(records = stale, "deleted stale etcd records of ours (domains no longer live)");
        }
        self.conflicts.retain(|k| desired.contains_key(k));
        Ok(lease)
    }

    /// Writes the new records and deletes the gone ones.
    async fn reconcile(&mut self, desired: &BTreeMap<String, Vec<u8>>, lease: i64) -> Result<(), Error> {
        let (puts, deletes) = records::diff(&self.published, desired);
        for (key, _) in puts {
            self.put(key, desired, lease, Expect::Absent).await?;
        }
        for (key, rev) in deletes {
            // Refused: it is not the record we wrote any more; leave it.
            let deleted = self.gw.delete_if(&key, rev).await?;
            debug!(%key, deleted, "record of a gone domain");
            self.published.remove(&key);
        }
        self.conflicts.retain(|k| desired.contains_key(k));
        Ok(())
    }

    /// Writes `desired[key]` under `lease` unless another owner's record
    /// holds the key.
    async fn put(
        &mut self,
        key: String,
        desired: &BTreeMap<String, Vec<u8>>,
        lease: i64,
        mut expect: Expect,
    ) -> Result<(), Error> {
        let Some(value) = desired.get(&key) else { return Ok(()) };
        for _ in 0..PUT_ATTEMPTS {
            match self.gw.put_if(&key, value, lease, expect).await? {
                Put::Done(rev) => {
                    debug!(%key, rev, "record written");
                    self.published.insert(key.clone(), rev);
                    self.conflicts.remove(&key);
                    return Ok(());
                }
                Put::Refused(None) => expect = Expect::Absent,
                Put::Refused(Some(kv)) if self.layout.is_ours(&kv.value) => {
                    if kv.value == *value && kv.lease == lease {
                        self.published.insert(key, kv.mod_revision);
                        return Ok(());
                    }
                    expect = Expect::ModRevision(kv.mod_revision);
                }
                Put::Refused(Some(kv)) => {
                    if self.conflicts.insert(key.clone()) {
                        warn!(
                            %key,
                            value = %String::from_utf8_lossy(&kv.value),
                            "a record that opennotrd did not write holds this key; leaving it alone"
                        );
                    }
                    return Ok(());
                }
            }
        }
        debug!(%key, "the key kept changing under us; trying again with the next change");
        Ok(())
    }

    /// Notes a failed session: one warning per outage.
    fn failed(&mut self, e: Error) {
        match (&e, self.down_since) {
            (Error::LeaseLost, _) => {
                warn!("the etcd lease is gone (etcd lost its data, or renewals did not reach it in time); granting a new one and publishing again")
            }
            (_, None) => {
                warn!(error = %e, "etcd unavailable: client domains are published when it is back; retrying in the background");
                self.down_since = Some(Instant::now());
            }
            (_, Some(_)) => debug!(error = %e, "etcd still unavailable"),
        }
    }

    /// Notes an established session.
    fn recovered(&mut self) {
        self.backoff = BACKOFF_MIN;
        let records = self.published.len();
        if let Some(since) = self.down_since.take() {
            info!(
                endpoint = self.gw.endpoint(),
                down_secs = since.elapsed().as_secs(),
                records,
                "etcd is back; client domains published again"
            );
        } else if !self.started {
            info!(
                endpoint = self.gw.endpoint(),
                prefix = self.layout.prefix(),
                records,
                "publishing client domains to etcd"
            );
        }
        self.started = true;
    }

    /// Revokes the lease, if any: our records vanish at once.
    async fn revoke(&mut self) {
        let Some(lease) = self.lease.take() else { return };
        match tokio::time::timeout(REVOKE_TIMEOUT, self.gw.revoke(lease.id)).await {
            Ok(Ok(())) => info!("etcd lease revoked: the records of client domains are removed"),
            Ok(Err(e)) => {
                warn!(error = %e, ttl = lease.ttl, "could not revoke the etcd lease; its records expire with it")
            }
            Err(_) => {
                warn!(ttl = lease.ttl, "etcd did not answer the lease revocation in time; its records expire with it")
            }
        }
    }
}

#[cfg(test)]
mod tests;
