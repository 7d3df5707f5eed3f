//! What both test files share: an in-memory backend and a started server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opennotr_admin::{
    AccessRulesView, AdminServer, Backend, BackendError, ClientView, ClusterView, ForwardAccessView, ForwardGroupView,
    ForwardView, GroupMemberView, GroupView, NewClient, RefusalView, RefusedView, ReloadReport, SessionView,
};
use tokio_util::sync::CancellationToken;

pub(crate) const TOKEN: &str = "test-admin-token-5b1e";

/// What `reload` answers next.
#[derive(Debug, Clone)]
pub(crate) enum ReloadOutcome {
    Applied(ReloadReport),
    Invalid { field: String, message: String },
    Conflict(String),
    Missing(String),
}

/// An in-memory backend. Each `sessions()` call adds traffic to every
/// session, as live clients would, so the dashboard has rates to draw.
#[derive(Debug)]
pub(crate) struct Fake {
    pub(crate) state: Mutex<State>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) sessions: Vec<SessionView>,
    pub(crate) clients: Vec<ClientView>,
    /// Every key `add_client` was given, by name.
    pub(crate) keys: Vec<(String, String)>,
    pub(crate) refusals: Vec<RefusalView>,
    pub(crate) groups: Vec<GroupView>,
    /// `None`: a single server.
    pub(crate) cluster: Option<ClusterView>,
    pub(crate) reload: ReloadOutcome,
    pub(crate) polls: u64,
}

pub(crate) fn session(id: &str, client: Option<&str>, domain: &str, vip: [u8; 4], port: u16) -> SessionView {
    SessionView {
        id: id.into(),
        client: client.map(Into::into),
        client_id: format!("{id}-client"),
        domain: domain.into(),
        vip: vip.into(),
        remote: SocketAddr::from(([203, 0, 113, vip[3]], 40000 + port)),
        transport: "tcp".into(),
        connected_since: 1_700_000_000,
        plaintext: false,
        forwards: vec![
            ForwardView {
                protocol: "tcp".into(),
                public_port: Some(port),
                url: format!("tcp://{domain}:{port}"),
                target: SocketAddr::from(([127, 0, 0, 1], 22)),
                bytes_in: 1000,
                bytes_out: 5000,
                open_streams: 1,
                bandwidth: Some(1_000_000),
                throttled_ms: 250,
                dropped_datagrams: 0,
                dropped_bytes: 0,
                group: Some(ForwardGroupView { name: "ssh-pool".into(), balance: "least_conn".into(), healthy: true }),
                access: Some(ForwardAccessView {
                    server: Some(AccessRulesView { allow: vec!["10.0.0.0/8".into()], ..Default::default() }),
                    client: Some(AccessRulesView { deny: vec!["10.9.0.0/16".into()], ..Default::default() }),
                    refused: RefusedView { denied: 3, not_allowed: 7, ..Default::default() },
                }),
            },
            ForwardView {
                protocol: "http".into(),
                public_port: None,
                url: format!("http://{domain}"),
                target: SocketAddr::from(([127, 0, 0, 1], 8080)),
                bytes_in: 2000,
                bytes_out: 90000,
                open_streams: 2,
                bandwidth: None,
                throttled_ms: 0,
                dropped_datagrams: 0,
                dropped_bytes: 0,
                group: None,
                access: Some(ForwardAccessView {
                    server: None,
                    client: Some(AccessRulesView { users: vec!["carol".into()], ..Default::default() }),
                    refused: RefusedView { unauthorized: 2, ..Default::default() },
                }),
            },
        ],
        bytes_in: 3000,
        bytes_out: 95000,
        open_streams: 3,
        bandwidth: Some(10_000_000),
        throttled_ms: 0,
        dropped_datagrams: 0,
        dropped_bytes: 0,
    }
}

impl Fake {
    pub(crate) fn new(sessions: Vec<SessionView>, refusals: Vec<RefusalView>) -> Arc<Fake> {
        let clients = vec![ClientView {
            name: "alice".into(),
            domains: vec!["alpha.relay.test".into()],
            ports: vec!["20000-20100".into()],
            protocols: vec!["tcp".into(), "http".into()],
            sessions: 1,
            source: "config".into(),
            bandwidth: Some(10_000_000),
            forward_bandwidth: None,
            access: AccessRulesView { allow: vec!["192.0.2.0/24".into()], deny: vec![], users: vec!["dave".into()] },
        }];
        // Every session's tcp forward serves in one group.
        let groups = vec![GroupView {
            protocol: "tcp".into(),
            name: "ssh-pool".into(),
            balance: "least_conn".into(),
            url: "tcp://relay.test:20500".into(),
            public_port: Some(20500),
            members: sessions
                .iter()
                .map(|s| GroupMemberView {
                    client: s.client.clone(),
                    client_id: s.client_id.clone(),
                    session: s.id.clone(),
                    target: s.forwards[0].target,
                    healthy: s.forwards[0].group.as_ref().is_some_and(|g| g.healthy),
                    open_streams: 1,
                })
                .collect(),
        }];
        Arc::new(Fake {
            state: Mutex::new(State {
                sessions,
                clients,
                keys: Vec::new(),
                refusals,
                groups,
                cluster: None,
                reload: ReloadOutcome::Applied(ReloadReport::default()),
                polls: 0,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Backend for Fake {
    fn sessions(&self) -> Vec<SessionView> {
        let mut st = self.state();
        st.polls += 1;
        let n = st.polls;
        for (i, s) in st.sessions.iter_mut().enumerate() {
            // Uneven, deterministic traffic: a different shape per session.
            let wave = (n * (i as u64 + 3)) % 7;
            s.bytes_in += 20_000 + 15_000 * wave;
            s.bytes_out += 120_000 + 60_000 * ((n + i as u64 * 2) % 5);
        }
        st.sessions.clone()
    }

    fn session(&self, id: &str) -> Option<SessionView> {
        self.state().sessions.iter().find(|s| s.id == id).cloned()
    }

    fn close_session(&self, id: &str) -> bool {
        let mut st = self.state();
        let before = st.sessions.len();
        st.sessions.retain(|s| s.id != id);
        st.sessions.len() != before
    }

    fn clients(&self) -> Vec<ClientView> {
        self.state().clients.clone()
    }

    fn add_client(&self, c: NewClient) -> Result<ClientView, BackendError> {
        let mut st = self.state();
        if c.name.is_empty() {
            return Err(BackendError::Invalid { field: "name".into(), message: "must not be empty".into() });
        }
        if c.key.len() < 8 {
            // A careless backend that quotes what it rejects.
            return Err(BackendError::Invalid {
                field: "key".into(),
                message: format!("{:?} is shorter than 8 characters", c.key),
            });
        }
        if let Some(i) = c.domains.iter().position(|d| d.contains(' ')) {
            return Err(BackendError::Invalid { field: format!("domains[{i}]"), message: "not a domain name".into() });
        }
        if st.clients.iter().any(|x| x.name == c.name) {
            return Err(BackendError::Conflict(format!("a credential named {} exists", c.name)));
        }
        let view = ClientView {
            name: c.name.clone(),
            domains: c.domains,
            ports: c.ports,
            protocols: c.protocols,
            sessions: 0,
            source: "api".into(),
            bandwidth: None,
            forward_bandwidth: None,
            access: AccessRulesView::default(),
        };
        st.keys.push((c.name, c.key));
        st.clients.push(view.clone());
        Ok(view)
    }

    fn remove_client(&self, name: &str) -> Result<usize, BackendError> {
        let mut st = self.state();
        let Some(i) = st.clients.iter().position(|c| c.name == name) else {
            return Err(BackendError::NotFound(format!("credential {name}")));
        };
        st.clients.remove(i);
        let before = st.sessions.len();
        st.sessions.retain(|s| s.client.as_deref() != Some(name));
        Ok(before - st.sessions.len())
    }

    fn reload(&self) -> Result<ReloadReport, BackendError> {
        match self.state().reload.clone() {
            ReloadOutcome::Applied(r) => Ok(r),
            ReloadOutcome::Invalid { field, message } => Err(BackendError::Invalid { field, message }),
            ReloadOutcome::Conflict(m) => Err(BackendError::Conflict(m)),
            ReloadOutcome::Missing(m) => Err(BackendError::NotFound(m)),
        }
    }

    fn refusals(&self) -> Vec<RefusalView> {
        self.state().refusals.clone()
    }

    fn groups(&self) -> Vec<GroupView> {
        self.state().groups.clone()
    }

    fn cluster(&self) -> Option<ClusterView> {
        self.state().cluster.clone()
    }

    /// This node's sessions are the fake's; every other node did not answer.
    fn cluster_sessions(&self) -> Option<Vec<opennotr_admin::NodeSessions>> {
        let st = self.state();
        let c = st.cluster.as_ref()?;
        let of = |node: &opennotr_admin::NodeView| match node.node == c.node {
            true => {
                opennotr_admin::NodeSessions { node: node.node.clone(), error: None, sessions: st.sessions.clone() }
            }
            false => opennotr_admin::NodeSessions {
                node: node.node.clone(),
                error: Some("no answer in time".into()),
                sessions: Vec::new(),
            },
        };
        Some(c.nodes.iter().map(of).collect())
    }

    fn metrics(&self) -> String {
        let n = self.state().sessions.len();
        format!("# HELP opennotr_sessions Live sessions.\n# TYPE opennotr_sessions gauge\nopennotr_sessions {n}\n")
    }
}

/// A running admin server; stopped (and awaited) on [`Running::stop`], or
/// cancelled when dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) fake: Arc<Fake>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub(crate) async fn start(fake: Arc<Fake>) -> Running {
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), TOKEN.into(), fake.clone()).await.unwrap();
        let addr = server.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        Running { addr, fake, stop, task: Some(task) }
    }

    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
