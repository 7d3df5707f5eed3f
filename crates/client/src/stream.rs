//! One stream: dial the local target, open a data channel, relay.

use std::sync::Arc;

use bytes::BytesMut;
use opennotr_proto::datagram;
use opennotr_proto::frame::preface;
use opennotr_proto::message::{ClientMessage, StreamProtocol};
use opennotr_transport::mux::{Mux, MuxStream};
use opennotr_transport::relay::{relay, relay_channel};
use opennotr_transport::{timed, tune_tcp, Channel, SecureStream, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::session::Link;
use crate::Allowed;

/// Datagrams from the local service waiting for the tunnel; beyond this
/// they are dropped rather than blocking the socket.
const UDP_QUEUE: usize = 512;

enum Local {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// Serves `stream`: on `spare` when the server put it on a spare channel,
/// else on a data channel dialed for it once the target answers. A refusal
/// also closes the spare, which is what the visitor then sees.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    link: Arc<Link>,
    allowed: Arc<Allowed>,
    out: mpsc::Sender<ClientMessage>,
    kill: CancellationToken,
    stream: u64,
    protocol: StreamProtocol,
    target: std::net::SocketAddr,
    visitor: crate::proxy::Visitor,
    spare: Option<Channel>,
) {
    let refuse = |reason: String| {
        let out = out.clone();
        async move {
            let _ = out.send(ClientMessage::StreamRefused { stream, reason }).await;
        }
    };
    if !allowed.permits(protocol, target) {
        warn!("server asked for a target this client does not declare; refused");
        return refuse(format!("{target} is not a target declared in the client's config")).await;
    }
    let local = match protocol {
        StreamProtocol::Mux => return serve_mux(&link, stream, target, kill, spare).await,
        StreamProtocol::Tcp => {
            match timed(link.timeout, "connecting to the local service", async {
                Ok(TcpStream::connect(target).await?)
            })
            .await
            {
                Ok(mut s) => {
                    tune_tcp(&s);
                    // Before any byte of the visitor's, whatever path
                    // (relay or splice) carries them next.
                    if let Err(e) = write_header(&mut s, allowed.headers().stream(target, visitor), link.timeout).await
                    {
                        debug!(error = %e, "cannot write the PROXY protocol header");
                        return refuse(format!("cannot write the PROXY protocol header to {target}: {e}")).await;
                    }
                    Local::Tcp(s)
                }
                Err(e) => {
                    debug!(error = %e, "local service unreachable");
                    return refuse(format!("cannot connect to {target}: {e}")).await;
                }
            }
        }
        StreamProtocol::Udp => {
            let bind: std::net::SocketAddr =
                if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
            let sock = match bind_udp(bind) {
                Ok(s) => s,
                Err(e) => return refuse(format!("cannot open a UDP socket: {e}")).await,
            };
            if let Err(e) = sock.connect(target).await {
                return refuse(format!("cannot reach {target}: {e}")).await;
            }
            Local::Udp(sock)
        }
    };
    let chan = match spare {
        Some(c) => c,
        None => match open_channel(&link, Hello::Stream(stream)).await {
            Ok(c) => c,
            Err(e) => return debug!(error = %e, "cannot open a data channel to the server"),
        },
    };
    tokio::select! {
        _ = kill.cancelled() => debug!("session closed; stream dropped"),
        r = async {
            match local {
                Local::Tcp(mut s) => {
                    let mut chan = chan;
                    relay_channel(&mut s, &mut chan).await.map(|(up, down)| debug!(up, down, "stream closed"))
                }
                Local::Udp(sock) => pump_udp(sock, chan, allowed.headers().datagram(target, visitor)).await,
            }
        } => if let Err(e) = r { debug!(error = %e, "stream ended with an error") },
    }
}

/// A multiplexed connection to `target` (the gateway's HTTP traffic): a
/// data channel carrying streams the server opens, each dialed here.
async fn serve_mux(
    link: &Link,
    stream: u64,
    target: std::net::SocketAddr,
    kill: CancellationToken,
    spare: Option<Channel>,
) {
    let chan = match spare {
        Some(c) => c,
        None => match open_channel(link, Hello::Stream(stream)).await {
            Ok(c) => c,
            Err(e) => return debug!(error = %e, "cannot open a data channel to the server"),
        },
    };
    opennotr_transport::limit_unsent(chan.tcp(), opennotr_transport::mux::CARRIER_UNSENT);
    let (mux, mut incoming) = Mux::acceptor(chan);
    let timeout = link.timeout;
    loop {
        let s = tokio::select! {
            _ = kill.cancelled() => break,
            s = incoming.recv() => s,
        };
        let Some(s) = s else { break };
        tokio::spawn(serve_muxed(s, target, timeout, kill.clone()));
    }
    mux.close();
}

/// One stream of a multiplexed connection: dial the target, relay.
async fn serve_muxed(
    mut s: MuxStream,
    target: std::net::SocketAddr,
    timeout: std::time::Duration,
    kill: CancellationToken,
) {
    let connected = timed(timeout, "connecting to the local service", async { Ok(TcpStream::connect(target).await?) });
    let mut local = match connected.await {
        Ok(t) => t,
        Err(e) => {
            debug!(error = %e, "local service unreachable");
            return s.reset(&format!("cannot connect to {target}: {e}"));
        }
    };
    tune_tcp(&local);
    tokio::select! {
        _ = kill.cancelled() => {}
        r = relay(&mut local, &mut s) => match r {
            Ok((up, down)) => debug!(up, down, "multiplexed stream closed"),
            Err(e) => debug!(error = %e, "multiplexed stream ended with an error"),
        },
    }
}

/// A UDP socket with large buffers (capped by the kernel's `rmem_max`), so
/// a burst from the local service is not dropped while the flow's task waits
/// to be scheduled.
pub(crate) fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// What a new channel to the server is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hello {
    /// The stream the server asked for.
    Stream(u64),
    /// A spare channel, by this client's id for it.
    Spare(u64),
}

/// Dials the server and authenticates a data channel (preface and hello);
/// what the channel carries next is sealed with its own keys unless the
/// session is plaintext.
pub(crate) async fn open_channel(link: &Link, what: Hello) -> Result<Channel, TransportError> {
    timed(link.timeout, "opening a data channel", async {
        let mut tcp = TcpStream::connect(link.server).await?;
        tune_tcp(&tcp);
        let nonce: [u8; 16] = rand::random();
        let (session, keys) = (link.session.clone(), &link.keys);
        let hello = match what {
            Hello::Stream(stream) => {
                let mac = keys.data_hello_mac(&session, stream, &nonce);
                ClientMessage::DataHello { session, stream, nonce: nonce.to_vec(), mac }
            }
            Hello::Spare(channel) => {
                opennotr_transport::keep_alive(&tcp, opennotr_transport::SPARE_KEEPALIVE);
                let mac = keys.spare_hello_mac(&session, channel, &nonce);
                ClientMessage::SpareHello { session, channel, nonce: nonce.to_vec(), mac }
            }
        };
        // Preface and hello in one write: one segment, one wake-up on the server.
        let mut first = BytesMut::from(&preface()[..]);
        opennotr_proto::frame::encode_frame(&hello.to_bytes(), &mut first)?;
        tcp.write_all(&first).await?;
        Ok(if link.plaintext {
            Channel::Plain(tcp)
        } else {
            let k = match what {
                Hello::Stream(stream) => link.keys.data_channel_keys(stream, &nonce),
                Hello::Spare(channel) => link.keys.spare_channel_keys(channel, &nonce),
            };
            Channel::Sealed(Box::new(SecureStream::new(tcp, &k.c2s, &k.s2c, BytesMut::new())))
        })
    })
    .await
}

/// Writes a stream's PROXY protocol header, if it has one, to the service
/// just dialed.
pub(crate) async fn write_header(
    local: &mut TcpStream,
    header: Option<Vec<u8>>,
    timeout: std::time::Duration,
) -> Result<(), TransportError> {
    let Some(header) = header else { return Ok(()) };
    timed(timeout, "writing the PROXY protocol header", async { Ok(local.write_all(&header).await?) }).await
}

/// Datagrams both ways between a connected UDP socket and the stream;
/// `prefix` (a PROXY protocol v2 header) goes in front of every datagram
/// to the service, none in front of its replies.
pub(crate) async fn pump_udp(sock: UdpSocket, chan: Channel, prefix: Option<Vec<u8>>) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(chan);
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(UDP_QUEUE);
    let sock = &sock;
    let from_local = async {
        let mut buf = vec![0u8; datagram::MAX_DATAGRAM];
        loop {
            let n = match sock.recv(&mut buf).await {
                Ok(n) => n,
                // The ICMP answer to an earlier send to a closed port: the
                // service is away for now, the flow goes on.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            // Full queue: the tunnel is slower than the service; drop.
            let _ = tx.try_send(bytes::Bytes::copy_from_slice(&buf[..n]));
        }
    };
    let to_server = async {
        let mut batch = BytesMut::with_capacity(64 * 1024);
        while let Some(d) = rx.recv().await {
            batch.clear();
            datagram::encode(&d, &mut batch);
            while batch.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(d) => {
                        datagram::encode(&d, &mut batch);
                    }
                    Err(_) => break,
                }
            }
            wr.write_all(&batch).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let to_local = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let prefix = prefix.unwrap_or_default();
        let mut prefixed = prefix.clone();
        loop {
            if rd.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(());
            }
            while let Some(d) = datagram::decode(&mut buf) {
                // A refused send (nothing listening yet) is the service's
                // problem, not the flow's.
                let _ = if prefix.is_empty() {
                    sock.send(&d).await
                } else {
                    prefixed.truncate(prefix.len());
                    prefixed.extend_from_slice(&d);
                    sock.send(&prefixed).await
                };
            }
            buf.reserve(64 * 1024);
        }
    };
    tokio::select! {
        r = from_local => r,
        r = to_server => r,
        r = to_local => r,
    }
}
