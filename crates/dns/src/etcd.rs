//! SkyDNS records in etcd for CoreDNS's `etcd` plugin.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Names;

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
    pub async fn run(self, names: watch::Receiver<Arc<Names>>, stop: CancellationToken) {
        let _ = (names, stop);
        todo!("helper implements {:?}", self.cfg)
    }
}
