//! The sockets: UDP and TCP on one address, answering from the latest
//! snapshot of the names.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::answer::{respond, Index, Limit, Reply, TCP_MAX};
use crate::{DnsServer, Names, RemoteNames, ZoneConfig};

/// A TCP connection silent this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; more are closed at once.
const MAX_TCP: usize = 256;
/// Attempts at finding a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 16;

/// Binds UDP, then TCP on the same address. With port 0, UDP picks the
/// port and TCP takes the same one; if TCP's is taken, both try again.
pub(crate) async fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(listen).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp, addr)),
            Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no port free for both UDP and TCP")))
}

/// A SOA serial from the clock: seconds since 1970 (fits a u32 until 2106).
pub(crate) fn serial_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1)
}

/// The latest names and their index, rebuilt when the names change.
struct Current {
    stats: Arc<crate::DnsStats>,
    cfg: ZoneConfig,
    rx: watch::Receiver<Arc<Names>>,
    remote: Option<watch::Receiver<Arc<RemoteNames>>>,
    cache: Mutex<(Arc<Names>, Arc<RemoteNames>, Arc<Index>)>,
}

impl Current {
    fn new(
        cfg: ZoneConfig,
        rx: watch::Receiver<Arc<Names>>,
        remote: Option<watch::Receiver<Arc<RemoteNames>>>,
        stats: Arc<crate::DnsStats>,
    ) -> Current {
        let names = rx.borrow().clone();
        let others = remote.as_ref().map(|r| r.borrow().clone()).unwrap_or_default();
        let index = Arc::new(index(&names, &others, &cfg, serial_now()));
        Current { stats, cfg, rx, remote, cache: Mutex::new((names, others, index)) }
    }

    fn log(&self, proto: &'static str, peer: SocketAddr, reply: &Reply) {
        self.stats.count(proto, reply.rcode);
        log(proto, peer, reply);
    }

    /// The names as they are now (cheap: an `Arc` clone, unless they changed).
    fn get(&self) -> (Arc<Names>, Arc<Index>) {
        let names = self.rx.borrow().clone();
        let others = match &self.remote {
            Some(r) => r.borrow().clone(),
            None => self.cache.lock().unwrap_or_else(|e| e.into_inner()).1.clone(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&cache.0, &names) || !Arc::ptr_eq(&cache.1, &others) {
            // The serial grows with every change, and follows the clock.
            let serial = serial_now().max(cache.2.serial.wrapping_add(1));
            let fresh = Arc::new(index(&names, &others, &self.cfg, serial));
            *cache = (names, others, fresh);
        }
        (cache.0.clone(), cache.2.clone())
    }

    fn answer(&self, query: &[u8], limit: Limit) -> Option<Reply> {
        let (names, index) = self.get();
        respond(query, &names, &self.cfg, &index, limit)
    }
}

fn index(names: &Names, remote: &RemoteNames, cfg: &ZoneConfig, serial: u32) -> Index {
    let index = Index::new(names, remote, cfg, serial);
    debug!(domains = names.len(), other_nodes = remote.len(), serial, "DNS names updated");
    for name in &index.ambiguous {
        warn!(%name, "two client domains have this VIP name; it is not published");
    }
    index
}

fn log(proto: &str, peer: SocketAddr, reply: &Reply) {
    debug!(
        %peer,
        proto,
        name = %reply.name,
        qtype = %reply.qtype.map(|t| t.to_string()).unwrap_or_default(),
        rcode = %reply.rcode,
        len = reply.bytes.len(),
        "DNS query"
    );
}

pub(crate) async fn run(server: DnsServer, names: watch::Receiver<Arc<Names>>, stop: CancellationToken) {
    let DnsServer { cfg, udp, tcp, addr, stats, remote } = server;
    let current = Arc::new(Current::new(cfg, names, remote, stats));
    let conns = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    let mut buf = vec![0u8; 65535];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = udp.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    let Some(reply) = current.answer(&buf[..n], Limit::Udp) else {
                        debug!(%peer, len = n, "DNS: ignored a UDP packet that is not a query");
                        continue;
                    };
                    current.log("udp", peer, &reply);
                    if let Err(e) = udp.send_to(&reply.bytes, peer).await {
                        debug!(%peer, error = %e, "DNS: cannot send a UDP answer");
                    }
                }
                Err(e) => {
                    // E.g. an ICMP error of an earlier answer; not fatal.
                    debug!(error = %e, "DNS: UDP receive failed");
                    backoff(&stop).await;
                }
            },
            r = tcp.accept() => match r {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (current, stop) = (current.clone(), stop.clone());
                        conns.spawn(async move {
                            serve_tcp(stream, peer, &current, &stop).await;
                            drop(permit);
                        });
                    }
                    Err(_) => debug!(%peer, "DNS: too many TCP connections; closing this one"),
                },
                Err(e) => {
                    // Out of file descriptors, say: wait a little.
                    warn!(error = %e, "DNS: TCP accept failed");
                    backoff(&stop).await;
                }
            },
        }
    }
    conns.close();
    conns.wait().await;
    debug!(%addr, "DNS server stopped");
}

async fn backoff(stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
}

/// Serves one TCP connection: length-prefixed queries one after the other,
/// until the peer closes, is idle for [`TCP_IDLE`], sends something that is
/// not a query, or the server stops.
async fn serve_tcp(mut stream: TcpStream, peer: SocketAddr, current: &Current, stop: &CancellationToken) {
    let _ = stream.set_nodelay(true);
    loop {
        let one = async {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.ok()?;
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut query).await.ok()?;
            let Some(reply) = current.answer(&query, Limit::Fixed(TCP_MAX)) else {
                debug!(%peer, len = query.len(), "DNS: not a query over TCP; closing");
                return None;
            };
            current.log("tcp", peer, &reply);
            let mut out = Vec::with_capacity(2 + reply.bytes.len());
            out.extend_from_slice(&(reply.bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(&reply.bytes);
            stream.write_all(&out).await.ok()
        };
        let done = tokio::select! {
            _ = stop.cancelled() => None,
            r = tokio::time::timeout(TCP_IDLE, one) => r.ok().flatten(),
        };
        if done.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn cfg() -> ZoneConfig {
        ZoneConfig {
            zone: "open.notr.tech".into(),
            public: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
            ttl: 60,
            wildcard: false,
            nameserver: "ns1.open.notr.tech".into(),
        }
    }

    fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    async fn tcp_ask(s: &mut TcpStream, q: &[u8]) -> Option<Message> {
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(q);
        s.write_all(&out).await.ok()?;
        let mut len = [0u8; 2];
        tokio::time::timeout(WAIT, s.read_exact(&mut len)).await.expect("a TCP answer in time").ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.ok()?;
        Some(Message::from_vec(&buf).unwrap())
    }

    async fn udp_ask(s: &UdpSocket, q: &[u8]) -> Message {
        s.send(q).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let n = tokio::time::timeout(WAIT, s.recv(&mut buf)).await.expect("a UDP answer in time").unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    fn a(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn serves_udp_and_tcp_on_one_port_and_follows_the_names() {
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), cfg()).await.unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let names = Names::from([("abc.open.notr.tech".to_string(), Ipv4Addr::new(100, 64, 0, 2))]);
        let (tx, rx) = watch::channel(Arc::new(names));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(rx, stop.clone()));

        // UDP; a response sent to us is never answered (no loops).
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        udp.connect(addr).await.unwrap();
        let mut response = query(1, "abc.open.notr.tech.", RecordType::A);
        response[2] |= 0x80;
        udp.send(&response).await.unwrap();
        let m = udp_ask(&udp, &query(2, "abc.open.notr.tech.", RecordType::A)).await;
        assert_eq!(m.metadata.id, 2, "only the query is answered");
        assert_eq!(a(&m), [Ipv4Addr::new(192, 0, 2, 1)]);
        let serial = |m: &Message| match &m.authorities[0].data {
            RData::SOA(s) => s.serial,
            _ => panic!("no SOA"),
        };
        let before = serial(&udp_ask(&udp, &query(3, "nobody.open.notr.tech.", RecordType::A)).await);

        // TCP: several queries on one connection.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let m = tcp_ask(&mut tcp, &query(4, "abc.open.notr.tech.", RecordType::A)).await.unwrap();
        assert_eq!(m.metadata.id, 4);
        assert_eq!(a(&m), [Ipv4Addr::new(192, 0, 2, 1)]);
        let m = tcp_ask(&mut tcp, &query(5, "abc.vip.open.notr.tech.", RecordType::A)).await.unwrap();
        assert_eq!(m.metadata.id, 5);
        assert_eq!(a(&m), [Ipv4Addr::new(100, 64, 0, 2)]);

        // New names: the next query sees them, and the serial grew.
        tx.send_replace(Arc::new(Names::new()));
        let m = tcp_ask(&mut tcp, &query(6, "abc.open.notr.tech.", RecordType::A)).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(serial(&m) > before);
        let m = udp_ask(&udp, &query(7, "abc.vip.open.notr.tech.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        // Something that is not a query closes the TCP connection.
        assert!(tcp_ask(&mut tcp, &response).await.is_none());

        stop.cancel();
        tokio::time::timeout(WAIT, task).await.expect("run returns after stop").unwrap();
    }

    #[tokio::test]
    async fn an_open_tcp_connection_does_not_hold_up_stop() {
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), cfg()).await.unwrap();
        let addr = server.local_addr();
        let (_tx, rx) = watch::channel(Arc::new(Names::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(rx, stop.clone()));
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // Half a message: the server waits for the rest.
        tcp.write_all(&[0, 40, 1, 2]).await.unwrap();
        let m = {
            let mut other = TcpStream::connect(addr).await.unwrap();
            tcp_ask(&mut other, &query(9, "open.notr.tech.", RecordType::SOA)).await.unwrap()
        };
        assert_eq!(m.answers.len(), 1);
        stop.cancel();
        tokio::time::timeout(WAIT, task).await.expect("run returns after stop").unwrap();
        // The connection was closed by the server.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await.expect("closed in time");
        assert!(n.map(|n| n == 0).unwrap_or(true));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tcp_connections_are_closed() {
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), cfg()).await.unwrap();
        let addr = server.local_addr();
        let (_tx, rx) = watch::channel(Arc::new(Names::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(rx, stop.clone()));
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let m = tcp_ask(&mut tcp, &query(1, "open.notr.tech.", RecordType::NS)).await.unwrap();
        assert_eq!(m.answers.len(), 1);
        // Then silence: the (paused, auto-advancing) clock reaches the idle
        // timeout long before this bound.
        let start = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(TCP_IDLE * 6, tcp.read_to_end(&mut rest)).await.expect("closed when idle");
        assert!(n.map(|n| n == 0).unwrap_or(true));
        assert!(start.elapsed() >= TCP_IDLE);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_fixed_port_binds_both_or_fails() {
        let first = DnsServer::bind("127.0.0.1:0".parse().unwrap(), cfg()).await.unwrap();
        let err = DnsServer::bind(first.local_addr(), cfg()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
