//! `tcp`: a public TCP port per forward; each visitor connection becomes a
//! stream to the client, which dials `localIP:localPort`.

use std::sync::Arc;
use std::time::Duration;

use opennotr_plugin::{
    async_trait, Endpoint, ForwardContext, ForwardMeta, Plugin, PluginError, PluginFactory, StreamProtocol, Visitor,
};
use opennotr_transport::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info_span, Instrument};

use super::{parse_config, PortRules, Running};

/// Creates the `tcp` plugin.
#[derive(Debug)]
pub struct TcpFactory;

impl PluginFactory for TcpFactory {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn setup(&self, config: &serde_json::Value) -> Result<Arc<dyn Plugin>, PluginError> {
        let rules: PortRules = parse_config("tcp", config)?;
        rules.validate("tcp")?;
        if rules.session_timeout.is_some() {
            return Err(PluginError::Config {
                key: "plugin.tcp.sessionTimeout".into(),
                message: "only the udp plugin has sessionTimeout".into(),
            });
        }
        Ok(Arc::new(TcpPlugin { rules, running: Running::default() }))
    }
}

struct TcpPlugin {
    rules: PortRules,
    running: Running,
}

#[async_trait]
impl Plugin for TcpPlugin {
    async fn run_proxy(&self, meta: &ForwardMeta, ctx: ForwardContext) -> Result<Endpoint, PluginError> {
        let listener = self.rules.bind_with(meta.public_port, |a| async move { opennotr_transport::listen(a) }).await?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(meta.public_port);
        Ok(self.running.start(meta, ctx.stop.clone(), port, "tcp", accept_loop(listener, meta.clone(), ctx)))
    }

    async fn stop_proxy(&self, meta: &ForwardMeta) {
        self.running.stop(meta).await;
    }

    /// In range and free now: bound as `run_proxy` would, and dropped at
    /// once (port 0: some port of the range is free).
    async fn check_proxy(&self, meta: &ForwardMeta) -> Result<(), PluginError> {
        self.rules.bind_with(meta.public_port, |a| async move { opennotr_transport::listen(a) }).await.map(drop)
    }
}

async fn accept_loop(listener: TcpListener, meta: ForwardMeta, ctx: ForwardContext) {
    let mut acceptor = Acceptor::new(listener);
    while let Some((visitor, peer)) = acceptor.next(&ctx.stop).await {
        let span = info_span!("visitor", %peer);
        ctx.tracker.spawn(visit(visitor, peer, meta.clone(), ctx.clone()).instrument(span));
    }
}

async fn visit(mut visitor: TcpStream, peer: std::net::SocketAddr, meta: ForwardMeta, ctx: ForwardContext) {
    let opened = tokio::select! {
        s = ctx.tunnel.open_stream(StreamProtocol::Tcp, meta.target(), Some(Visitor::new(peer).reached(visitor.local_addr().ok()))) => s,
        _ = ctx.kill.cancelled() => return,
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "cannot reach the client's service");
            // A reset tells the visitor at once that nothing is there.
            let _ = socket2::SockRef::from(&visitor).set_linger(Some(Duration::ZERO));
            return;
        }
    };
    tokio::select! {
        r = stream.relay_with(&mut visitor) => match r {
            Ok((up, down)) => debug!(up, down, "visitor connection closed"),
            Err(e) => debug!(error = %e, "visitor connection ended with an error"),
        },
        _ = ctx.kill.cancelled() => debug!("session closed; dropping visitor connection"),
    }
}
