//! Spare data channels: dialed and authenticated ahead of need, so that a
//! visitor's stream starts without a round trip from here to the server.
//!
//! The server hands a spare a stream by naming it in `connect`; the stream's
//! first bytes travel beside that message and may arrive first. A spare is
//! replaced as soon as it is taken. One the server closes unused (or that
//! cannot be opened) is replaced after a pause that doubles, so a server that
//! keeps refusing them is not dialed in a loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opennotr_proto::message::{ClientMessage, StreamProtocol};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use crate::session::Link;
use crate::stream::{self, Hello};
use crate::Allowed;

const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// What the server's `connect` says of a stream on a spare.
#[derive(Debug)]
pub(crate) struct Assignment {
    pub(crate) stream: u64,
    pub(crate) protocol: StreamProtocol,
    pub(crate) target: SocketAddr,
    pub(crate) peer: Option<SocketAddr>,
    /// The server address the visitor reached.
    pub(crate) local: Option<SocketAddr>,
}

/// How a spare's life ended, for the task that keeps their number.
enum End {
    /// A stream took it.
    Used,
    /// It never carried one: not opened, or closed by the server.
    Lost,
}

/// Keeps `want` spares open until `kill`.
pub(crate) async fn keep(
    link: Arc<Link>,
    allowed: Arc<Allowed>,
    out: mpsc::Sender<ClientMessage>,
    kill: CancellationToken,
    want: usize,
) {
    let (ended_tx, mut ended) = mpsc::channel::<End>(want.max(1));
    let (mut live, mut next_id, mut pause) = (0usize, 0u64, Duration::ZERO);
    loop {
        while live < want {
            next_id += 1;
            live += 1;
            let task = one(link.clone(), allowed.clone(), out.clone(), kill.clone(), next_id, ended_tx.clone());
            tokio::spawn(task);
        }
        let end = tokio::select! {
            e = ended.recv() => e,
            _ = kill.cancelled() => return,
        };
        live -= 1;
        match end {
            Some(End::Used) => pause = Duration::ZERO,
            Some(End::Lost) => {
                pause = (pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = kill.cancelled() => return,
                }
            }
            None => return,
        }
    }
}

/// One spare: open it, wait for a stream (or its end), serve the stream.
async fn one(
    link: Arc<Link>,
    allowed: Arc<Allowed>,
    out: mpsc::Sender<ClientMessage>,
    kill: CancellationToken,
    id: u64,
    ended: mpsc::Sender<End>,
) {
    let (tx, rx) = oneshot::channel();
    // Registered before the hello leaves: the server can name it in a
    // `connect` as soon as the hello arrives.
    link.spares.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
    let lost = || {
        link.spares.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        let _ = ended.try_send(End::Lost);
    };
    let chan = tokio::select! {
        c = stream::open_channel(&link, Hello::Spare(id)) => c,
        _ = kill.cancelled() => return,
    };
    let chan = match chan {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "cannot open a spare channel");
            return lost();
        }
    };
    let assigned = tokio::select! {
        a = rx => a.ok(),
        // Spares are TCP; a channel without a socket is never closed here.
        _ = async {
            match chan.tcp() {
                Some(t) => closed_by_server(t, link.timeout).await,
                None => std::future::pending().await,
            }
        } => None,
        _ = kill.cancelled() => return,
    };
    let Some(a) = assigned else {
        debug!(spare = id, "the server closed a spare channel unused, or never named it");
        return lost();
    };
    let _ = ended.try_send(End::Used);
    let span = info_span!("stream", id = a.stream, target = %a.target, peer = ?a.peer, spare = id);
    let visitor = crate::proxy::Visitor { peer: a.peer, local: a.local };
    stream::serve(link, allowed, out, kill, a.stream, a.protocol, a.target, visitor, Some(chan)).instrument(span).await
}

/// Resolves when the server closes `tcp` (or it fails). Bytes arriving
/// first are a stream's, ahead of the `connect` that names this channel:
/// that has `patience` to come, or the spare is given up (a server that
/// never names it holds no channel of ours for good).
async fn closed_by_server(tcp: &TcpStream, patience: Duration) {
    let mut probe = [0u8; 1];
    if let Ok(1..) = tcp.peek(&mut probe).await {
        tokio::time::sleep(patience).await;
    }
}
