//! One connection to the server: handshake, registration, control loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use opennotr_config::ClientConfig;
use opennotr_proto::handshake::SessionKeys;
use opennotr_proto::message::{ClientMessage, ForwardRequest, ServerMessage, StreamProtocol, VipPort};
use opennotr_transport::hello::HelloError;
use opennotr_transport::{timed, tune_tcp, Channel, FrameReader, FrameWriter, SecureStream, TransportError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::dial::Servers;
use crate::spare::Assignment;
use crate::{Allowed, ClientError, Event, EventSink, Registration};

const SOFTWARE: &str = concat!("opennotr/", env!("CARGO_PKG_VERSION"));

/// What a stream task needs to reach the server again.
pub(crate) struct Link {
    pub(crate) server: SocketAddr,
    pub(crate) session: Vec<u8>,
    pub(crate) keys: SessionKeys,
    pub(crate) plaintext: bool,
    pub(crate) timeout: std::time::Duration,
    /// Spare channels open or being opened, waiting for a stream, by id.
    pub(crate) spares: Mutex<HashMap<u64, oneshot::Sender<Assignment>>>,
}

pub(crate) fn requests(cfg: &ClientConfig) -> Vec<ForwardRequest> {
    cfg.forwards
        .iter()
        .flat_map(|f| {
            f.ports.iter().map(move |&(public, local)| ForwardRequest {
                protocol: f.protocol.clone(),
                public_port: public,
                local_ip: f.local_ip,
                local_port: local,
                raw_config: f.raw_config.clone(),
                group: f.group.as_ref().map(crate::health::group_request),
                access: access_rules(&f.access),
                bandwidth: f.bandwidth,
            })
        })
        .collect()
}

/// A forward's own access rules, as text for the server; `None` when it
/// has none (an older server never sees the field).
fn access_rules(a: &opennotr_config::Access) -> Option<opennotr_proto::message::AccessRules> {
    (!a.is_empty()).then(|| opennotr_proto::message::AccessRules {
        allow: a.allow.iter().map(ToString::to_string).collect(),
        deny: a.deny.iter().map(ToString::to_string).collect(),
        basic_auth: a
            .basic_auth
            .iter()
            .map(|b| opennotr_proto::message::BasicAuthUser { user: b.user.clone(), hash: b.hash.clone() })
            .collect(),
    })
}

fn vip_ports(cfg: &ClientConfig) -> Vec<VipPort> {
    cfg.vip_ports
        .iter()
        .map(|v| VipPort {
            protocol: if v.udp { StreamProtocol::Udp } else { StreamProtocol::Tcp },
            port: v.port,
            local_ip: v.local_ip,
        })
        .collect()
}

fn refused(m: ServerMessage) -> ClientError {
    match m {
        ServerMessage::Refused { code, message } => ClientError::Refused { code, message },
        other => ClientError::Protocol(format!("unexpected message {other:?}")),
    }
}

pub(crate) async fn connect_and_serve(
    cfg: &ClientConfig,
    servers: &Servers,
    client_id: &str,
    allowed: &Arc<Allowed>,
    events: &EventSink,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let limit = cfg.handshake_timeout;
    let candidates = servers.candidates(limit).await?;
    let connect = |a: SocketAddr| async move { Ok(TcpStream::connect(a).await?) };
    let (i, server, mut tcp) = servers.first(&candidates, limit, "connecting to the server", connect).await?;
    if cfg.servers.len() > 1 {
        info!(server = servers.name(i), addr = %server, "connected");
    }
    tune_tcp(&tcp);
    let r = async {
        let keys = handshake(cfg, &mut tcp, cfg.plaintext, None).await?;
        let chan = if cfg.plaintext {
            Channel::Plain(tcp)
        } else {
            Channel::Sealed(Box::new(SecureStream::new(tcp, &keys.control.c2s, &keys.control.s2c, BytesMut::new())))
        };
        serve_session(cfg, client_id, allowed, events, shutdown, (chan, server, keys), None).await
    }
    .await;
    servers.lost(i);
    r
}

/// The client's side of the handshake on either transport
/// ([`opennotr_transport::hello`]) with its key and name; `binding` ties
/// the transcript to the secure channel underneath (QUIC's TLS exporter).
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    cfg: &ClientConfig,
    s: &mut S,
    plaintext: bool,
    binding: Option<&[u8]>,
) -> Result<SessionKeys, ClientError> {
    let who = opennotr_transport::hello::Hello {
        key: cfg.key.expose().as_bytes(),
        name: cfg.name.as_deref(),
        plaintext,
        software: SOFTWARE,
        limit: cfg.handshake_timeout,
    };
    opennotr_transport::hello::hello(s, who, binding).await.map_err(|e| match e {
        HelloError::Refused { code, message } => ClientError::Refused { code, message },
        HelloError::BadKey => ClientError::BadKey,
        HelloError::Protocol(m) => ClientError::Protocol(m),
        HelloError::Transport(t) => ClientError::Transport(t),
    })
}

/// Registration on the control channel, then the control loop until the
/// session ends, over either transport; `quic` takes the streams the
/// server opens on a QUIC connection.
pub(crate) async fn serve_session(
    cfg: &ClientConfig,
    client_id: &str,
    allowed: &Arc<Allowed>,
    events: &EventSink,
    shutdown: &CancellationToken,
    (chan, server, keys): (Channel, SocketAddr, SessionKeys),
    quic: Option<crate::quic::Streams>,
) -> Result<(), ClientError> {
    let limit = cfg.handshake_timeout;
    let (rd, wr) = tokio::io::split(chan);
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    let register = ClientMessage::Register {
        client_id: client_id.to_string(),
        domain: cfg.domain.clone(),
        forwards: requests(cfg),
        vip_ports: vip_ports(cfg),
        mux: cfg.multiplex,
        bandwidth: cfg.bandwidth,
    };
    timed(limit, "sending register", writer.send(&register.to_bytes())).await?;
    let reply = timed(limit, "waiting for registration", reader.next()).await?;
    let (session, reg, granted) = match ServerMessage::from_bytes(&reply).map_err(TransportError::from)? {
        ServerMessage::Registered { session, vip, domain, forwards, spares, bandwidth } => {
            (session, Registration { vip, domain, forwards, bandwidth }, spares)
        }
        other => return Err(refused(other)),
    };
    info!(vip = %reg.vip, domain = %reg.domain, transport = %cfg.transport, bandwidth = ?reg.bandwidth, "connected");
    for f in &reg.forwards {
        if let Some(e) = &f.error {
            warn!(protocol = %f.request.protocol, public_port = f.request.public_port, error = %e, "forward refused by the server");
        } else if let Some(bandwidth) = f.bandwidth {
            info!(protocol = %f.request.protocol, public_port = ?f.public_port, bandwidth, "forward bandwidth limited (bytes a second each way)");
        }
    }
    let reg_forwards = reg.forwards.clone();
    (events)(&Event::Connected(reg));

    let link = Arc::new(Link {
        server,
        session,
        keys,
        plaintext: cfg.plaintext,
        timeout: limit,
        spares: Mutex::new(HashMap::new()),
    });
    let kill = shutdown.child_token();
    let (out, mut outbox) = mpsc::channel::<ClientMessage>(1024);
    // Over QUIC the server opens the streams; there are no data channels.
    let granted = if quic.is_some() { 0 } else { granted };
    if let Some(q) = quic {
        q.spawn(allowed.clone(), out.clone(), kill.clone());
    }
    let keepalive = cfg.keepalive_timeout;
    let write_kill = kill.clone();
    let writer_task = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                m = outbox.recv() => m,
                _ = write_kill.cancelled() => None,
            };
            let Some(m) = m else { break };
            match tokio::time::timeout(keepalive, writer.send(&m.to_bytes())).await {
                Ok(Ok(())) => {}
                _ => {
                    write_kill.cancel();
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer.shutdown()).await;
    });

    crate::health::spawn(cfg, &reg_forwards, out.clone(), kill.clone());
    let spares = cfg.spare_channels.min(granted.into());
    if spares > 0 {
        debug!(spares, "keeping spare data channels");
        tokio::spawn(crate::spare::keep(link.clone(), allowed.clone(), out.clone(), kill.clone(), spares));
    }

    let mut ping = tokio::time::interval(cfg.keepalive_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(keepalive);
    tokio::pin!(deadline);
    let mut seq = 0u64;
    let result = loop {
        tokio::select! {
            frame = reader.next() => {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => break Err(e.into()),
                };
                deadline.as_mut().reset(Instant::now() + keepalive);
                match ServerMessage::from_bytes(&frame) {
                    Ok(ServerMessage::Connect { stream, protocol, target, peer, local, channel: None, .. }) => {
                        let span = info_span!("stream", id = stream, %target, peer = ?peer);
                        let visitor = crate::proxy::Visitor { peer, local };
                        tokio::spawn(
                            crate::stream::serve(link.clone(), allowed.clone(), out.clone(), kill.clone(), stream, protocol, target, visitor, None)
                                .instrument(span),
                        );
                    }
                    Ok(ServerMessage::Connect { stream, protocol, target, peer, local, channel: Some(id), .. }) => {
                        let waiting = link.spares.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        let assignment = crate::spare::Assignment { stream, protocol, target, peer, local };
                        if waiting.map(|tx| tx.send(assignment)).is_none_or(|sent| sent.is_err()) {
                            debug!(stream, spare = id, "the server named a spare channel this client no longer has");
                            let reason = format!("spare channel {id} is gone");
                            let _ = out.try_send(ClientMessage::StreamRefused { stream, reason });
                        }
                    }
                    Ok(ServerMessage::Ping { seq }) => { let _ = out.try_send(ClientMessage::Pong { seq }); }
                    Ok(ServerMessage::Pong { .. }) => {}
                    Ok(ServerMessage::GoingAway { reason }) => break Err(ClientError::GoingAway(reason)),
                    Ok(ServerMessage::Refused { code, message }) => break Err(ClientError::Refused { code, message }),
                    Ok(other) => break Err(ClientError::Protocol(format!("unexpected message {other:?}"))),
                    Err(e) => break Err(ClientError::Protocol(e.to_string())),
                }
            }
            _ = ping.tick() => {
                seq += 1;
                let _ = out.try_send(ClientMessage::Ping { seq });
            }
            _ = &mut deadline => break Err(ClientError::Silent(keepalive)),
            _ = kill.cancelled() => break Ok(()),
        }
    };
    // Every stream of this session ends with it.
    kill.cancel();
    let _ = writer_task.await;
    result
}
