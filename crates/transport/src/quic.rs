//! The QUIC transport underneath a session: endpoint configurations (TLS
//! 1.3 on rustls and ring, like the gateway), a stream as a byte stream,
//! and a UDP flow carried as QUIC datagrams.
//!
//! Over QUIC, TLS encrypts every stream, so nothing is sealed again; what
//! makes it safe for the client to accept any certificate is that the
//! SPAKE2 handshake on the first stream is bound to this TLS connection
//! ([`binding`]): a man in the middle who terminates TLS with a
//! certificate of its own holds a different binding on each side and
//! fails key confirmation (see docs/protocol.md, "QUIC").

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use opennotr_proto::datagram;
use opennotr_proto::quic::{
    encode_datagram, flow_id_len, parse_datagram, ALPN, ALPN_LOCAL, BINDING_LEN, EXPORTER_LABEL,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

pub use quinn;

/// Why a QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// TLS could not be configured (a certificate or key it refuses).
    #[error("TLS: {0}")]
    Tls(String),
    /// The certificate or key file could not be read.
    #[error("{0}")]
    Pem(String),
    /// The TLS exporter failed (the handshake is not complete).
    #[error("cannot export keying material from the QUIC connection")]
    Export,
}

/// Bytes of a stream the peer may send before we read them: what one
/// stream can have in flight, so its speed is at most this per round trip
/// (8 MiB at 50 ms: 1.3 Gbit/s; 1 MiB held it to 150 Mbit/s), and what a
/// stalled one holds, within the session's window.
const STREAM_WINDOW: u32 = 8 << 20;
/// Bytes of all streams of a session the peer may send before we read
/// them, and that we queue to send: what one session can make a side hold.
pub const SESSION_WINDOW: u32 = 32 << 20;
/// The connection window before the client is authenticated: the
/// handshake's frames are at most 4 KiB, so a stranger gets no more.
const PRE_AUTH_WINDOW: u32 = 64 << 10;
/// Streams the server may open to a client at once; the server's own
/// `limits.maxStreamsPerClient` (4096 by default) is below it.
const CLIENT_MAX_STREAMS: u32 = 8192;
/// Datagrams received and not yet read; more are dropped, oldest first.
const DATAGRAM_BUFFER: usize = 1 << 20;
/// The same on the server, where a client that completed TLS but not yet
/// the handshake (nothing reads its datagrams) can fill it: smaller.
const SERVER_DATAGRAM_BUFFER: usize = 256 << 10;
/// Datagrams a flow's reader has not taken yet; more are dropped.
const FLOW_QUEUE: usize = 512;
/// Stream-fallback bytes a flow queues when its stream is full; datagrams
/// beyond are dropped, as UDP would.
const FLOW_PENDING: usize = 256 << 10;

/// Timing of a QUIC connection: the keepalive and when silence ends it.
#[derive(Debug, Clone, Copy)]
pub struct QuicTiming {
    /// How often a keep-alive packet goes out when nothing else does.
    pub keepalive_interval: Duration,
    /// Silence after which the connection is dead.
    pub idle_timeout: Duration,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport(timing: QuicTiming) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(SESSION_WINDOW))
        .send_window(SESSION_WINDOW.into())
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(timing.keepalive_interval))
        .max_idle_timeout(IdleTimeout::try_from(timing.idle_timeout).ok())
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        // Measured at 50 ms with 0.1 % random loss: CUBIC, quinn's default,
        // held a stream to 8 Mbit/s (loss-based control halves its window
        // for every loss), where the kernel's TCP on the same link, with
        // BBR, made 285. BBR models the path instead of reacting to loss.
        .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t
}

/// A self-signed certificate for an endpoint that has none configured:
/// clients do not check it (the handshake is bound to the connection).
pub fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), QuicError> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["opennotr".to_string()]).map_err(|e| QuicError::Tls(e.to_string()))?;
    let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    Ok((vec![ck.cert.der().clone()], key.into()))
}

/// Reads a PEM certificate chain and its private key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), QuicError> {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| QuicError::Pem(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(QuicError::Pem(format!("{}: no certificate in the file", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| QuicError::Pem(format!("{}: {e}", key.display())))?;
    Ok((chain, key))
}

/// The server's endpoint configuration. Before a client authenticates it
/// may open one stream (the control stream) and send
/// [`PRE_AUTH_WINDOW`] bytes; [`authenticated`] raises the window.
/// `max_incoming` bounds connections in their QUIC handshake.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    timing: QuicTiming,
    max_incoming: usize,
) -> Result<quinn::ServerConfig, QuicError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN_LOCAL.to_vec(), ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut t = transport(timing);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .receive_window(VarInt::from_u32(PRE_AUTH_WINDOW))
        .datagram_receive_buffer_size(Some(SERVER_DATAGRAM_BUFFER));
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Packets of a connection attempt not yet accepted: no 0-RTT is
    // taken, so a handshake's worth is all they need.
    let per_incoming = u64::from(PRE_AUTH_WINDOW);
    cfg.transport_config(Arc::new(t))
        .migration(true)
        .max_incoming(max_incoming.max(1))
        .incoming_buffer_size(per_incoming)
        .incoming_buffer_size_total(per_incoming.saturating_mul(max_incoming.max(1) as u64).min(64 << 20));
    Ok(cfg)
}

/// Whether `conn` negotiated [`ALPN_LOCAL`], so that its stream headers
/// may carry the address the visitor reached (both ends offer it first;
/// a peer that knows only `opennotr/1` gets headers without it).
pub fn carries_local(conn: &Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == ALPN_LOCAL)
}

/// The window of an authenticated session (see [`server_config`]).
pub fn authenticated(conn: &Connection) {
    conn.set_receive_window(VarInt::from_u32(SESSION_WINDOW));
}

/// The client's endpoint configuration: it accepts whatever certificate
/// the server shows (the handshake, bound to this connection, is what
/// authenticates the server) and lets the server open its streams.
pub fn client_config(timing: QuicTiming) -> Result<quinn::ClientConfig, QuicError> {
    client_config_offering(timing, vec![ALPN_LOCAL.to_vec(), ALPN.to_vec()])
}

/// [`client_config`] offering `alpn` (tests: a peer of an older version).
fn client_config_offering(timing: QuicTiming, alpn: Vec<Vec<u8>>) -> Result<quinn::ClientConfig, QuicError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = alpn;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut t = transport(timing);
    t.max_concurrent_bidi_streams(VarInt::from_u32(CLIENT_MAX_STREAMS));
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// Accepts any certificate, but still checks that the server signed the
/// handshake with the key of the certificate it showed (so the TLS
/// exporter really is this connection's).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What both ends of one TLS connection export and nobody else can: the
/// handshake's transcript includes it.
pub fn binding(conn: &Connection) -> Result<[u8; BINDING_LEN], QuicError> {
    let mut out = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"").map_err(|_| QuicError::Export)?;
    Ok(out)
}

/// A connection error (or one that converts to it) as a transport error;
/// a close by the peer (or by us) is `ConnectionAborted`.
pub fn io_error(e: impl Into<quinn::ConnectionError>) -> crate::TransportError {
    use quinn::ConnectionError as E;
    let e = e.into();
    crate::TransportError::Io(match e {
        E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::LocallyClosed | E::Reset => {
            io::Error::new(io::ErrorKind::ConnectionAborted, e)
        }
        E::TimedOut => io::Error::new(io::ErrorKind::TimedOut, e),
        other => io::Error::other(other),
    })
}

/// One bidirectional QUIC stream as a byte stream. Shutting down the write
/// side finishes the stream (a half-close); dropping it finishes what was
/// written and stops reading.
#[derive(Debug)]
pub struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    /// The peer's status byte is still to come, ahead of its bytes.
    status_due: bool,
    /// The status said no (or was garbage): every read says so, and
    /// nothing after it is read as stream bytes.
    refused: Option<(io::ErrorKind, &'static str)>,
}

impl QuicStream {
    /// Joins the two halves of a bidirectional stream.
    pub fn new(send: SendStream, recv: RecvStream) -> Self {
        QuicStream { send, recv, status_due: false, refused: None }
    }

    /// Reads the peer's status byte ahead of its first bytes, instead of
    /// waiting for it before writing: `connected` is passed over, a
    /// refusal reads as `ConnectionRefused` (the reason comes on the
    /// control stream), anything else as `InvalidData`.
    pub fn with_status_due(mut self) -> Self {
        self.status_due = true;
        self
    }

    /// Aborts both directions with an application error `code`.
    pub fn reset(&mut self, code: u32) {
        let _ = self.send.reset(VarInt::from_u32(code));
        let _ = self.recv.stop(VarInt::from_u32(code));
    }

    /// The halves, e.g. to read a header before relaying.
    pub fn parts(&mut self) -> (&mut SendStream, &mut RecvStream) {
        (&mut self.send, &mut self.recv)
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.status_due {
            if let Some((kind, why)) = this.refused {
                return Poll::Ready(Err(io::Error::new(kind, why)));
            }
            let mut status = [0u8; 1];
            let mut one = ReadBuf::new(&mut status);
            std::task::ready!(Pin::new(&mut this.recv).poll_read(cx, &mut one))?;
            if one.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            match status[0] {
                opennotr_proto::quic::STATUS_CONNECTED => this.status_due = false,
                other => {
                    let refused = if other == opennotr_proto::quic::STATUS_REFUSED {
                        (io::ErrorKind::ConnectionRefused, "the client refused the stream")
                    } else {
                        (io::ErrorKind::InvalidData, "the client answered an unknown status")
                    };
                    this.refused = Some(refused);
                    return Poll::Ready(Err(io::Error::new(refused.0, refused.1)));
                }
            }
        }
        Pin::new(&mut this.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}

/// How a session's UDP datagrams travelled, for the metrics and tests.
#[derive(Debug, Default)]
pub struct DatagramStats {
    /// Sent as QUIC datagrams.
    pub sent: AtomicU64,
    /// Sent on their flow's stream: larger than the path takes, or the
    /// peer takes no datagrams.
    pub fallback: AtomicU64,
    /// Received as QUIC datagrams for a live flow.
    pub received: AtomicU64,
    /// Received and dropped: malformed, for no live flow, or its queue full.
    pub dropped: AtomicU64,
}

type Flows = Mutex<HashMap<u64, mpsc::Sender<Bytes>>>;

/// One connection's UDP flows: QUIC datagrams in, each to its flow by id.
#[derive(Debug)]
pub struct QuicLink {
    conn: Connection,
    flows: Arc<Flows>,
    stats: Arc<DatagramStats>,
}

impl QuicLink {
    /// Starts reading `conn`'s datagrams (until the connection ends) into
    /// the flows registered with [`QuicLink::flow`], dropping the others:
    /// start it as soon as the connection is up, so that a peer that is not
    /// authenticated yet cannot park datagrams in quinn's buffer. `stats`
    /// may be shared by many connections.
    pub fn new(conn: Connection, stats: Arc<DatagramStats>) -> Arc<Self> {
        let flows: Arc<Flows> = Arc::default();
        let (c, f, s) = (conn.clone(), flows.clone(), stats.clone());
        tokio::spawn(async move {
            while let Ok(d) = c.read_datagram().await {
                let delivered = parse_datagram(d).ok().is_some_and(|(id, payload)| {
                    let tx = f.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
                    // A copy: the payload shares the received packet's buffer
                    // (up to a 64 KiB batch), which a queued datagram would
                    // otherwise keep alive.
                    tx.is_some_and(|tx| tx.try_send(Bytes::copy_from_slice(&payload)).is_ok())
                });
                let counter = if delivered { &s.received } else { &s.dropped };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Arc::new(QuicLink { conn, flows, stats })
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The datagram counters.
    pub fn stats(&self) -> &Arc<DatagramStats> {
        &self.stats
    }

    /// UDP flow `id` on `stream`: from now on, datagrams tagged `id` go to
    /// it. Register it before the peer can send any (the server before
    /// the header, the client before its status byte).
    pub fn flow(self: &Arc<Self>, id: u64, stream: QuicStream) -> QuicFlow {
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        self.flows.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx.clone());
        QuicFlow {
            link: self.clone(),
            id,
            tx,
            stream,
            rx,
            wbuf: BytesMut::new(),
            pending: BytesMut::new(),
            rbuf: BytesMut::new(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

/// A UDP flow that looks like the usual framed stream (u16 length, then
/// the datagram; `opennotr_proto::datagram`) to whoever reads and writes
/// it, so the udp plugin and the client's pump do not change: each
/// datagram written goes out as a QUIC datagram tagged with the flow id
/// when it fits `max_datagram_size`, else on the flow's stream in the same
/// framing; both kinds come out of reads, whole. The stream's end is the
/// flow's end.
#[derive(Debug)]
pub struct QuicFlow {
    link: Arc<QuicLink>,
    id: u64,
    /// Its entry in the link's flows, to remove only its own on drop
    /// should a (misbehaving) peer have reused the id.
    tx: mpsc::Sender<Bytes>,
    stream: QuicStream,
    rx: mpsc::Receiver<Bytes>,
    /// Written bytes not yet a whole frame.
    wbuf: BytesMut,
    /// Frames for the stream that it has not taken yet.
    pending: BytesMut,
    /// Bytes read from the stream, not yet a whole frame.
    rbuf: BytesMut,
    /// Whole frames for the reader.
    out: BytesMut,
    eof: bool,
}

impl Drop for QuicFlow {
    fn drop(&mut self) {
        let mut flows = self.link.flows.lock().unwrap_or_else(|e| e.into_inner());
        if flows.get(&self.id).is_some_and(|tx| tx.same_channel(&self.tx)) {
            flows.remove(&self.id);
        }
    }
}

impl QuicFlow {
    /// The flow's stream, e.g. to write a header before the first datagram.
    pub fn stream_mut(&mut self) -> &mut QuicStream {
        &mut self.stream
    }

    fn send(&mut self, d: Bytes) {
        let stats = &self.link.stats;
        // Until the peer's status byte has come, it may not know the flow
        // yet and would drop a datagram; on the stream, behind the header,
        // it cannot arrive too early.
        let fits = !self.stream.status_due
            && self.link.conn.max_datagram_size().is_some_and(|max| flow_id_len(self.id) + d.len() <= max);
        if fits {
            if let Some(tagged) = encode_datagram(self.id, &d) {
                match self.link.conn.send_datagram(tagged) {
                    Ok(()) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // The connection is gone: the stream says so next.
                    Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
                    // The path shrank meanwhile: the stream takes it.
                    Err(_) => {}
                }
            }
        }
        if self.pending.len() < FLOW_PENDING {
            let _ = datagram::encode(&d, &mut self.pending);
            stats.fallback.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(AsyncWrite::poll_write(Pin::new(&mut self.stream), cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for QuicFlow {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut progress = false;
            while let Poll::Ready(Some(d)) = this.rx.poll_recv(cx) {
                let _ = datagram::encode(&d, &mut this.out);
                progress = true;
                if this.out.len() >= 64 << 10 {
                    break;
                }
            }
            if this.out.len() < 64 << 10 {
                this.rbuf.reserve(16 << 10);
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.stream), cx, &mut this.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        // The flow is over; what is whole is still delivered.
                        this.eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                while let Some(d) = datagram::decode(&mut this.rbuf) {
                    let _ = datagram::encode(&d, &mut this.out);
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncWrite for QuicFlow {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What the stream has not taken yet goes first, so a writer that
        // outpaces a full stream waits here instead of queueing more.
        std::task::ready!(this.poll_drain(cx))?;
        this.wbuf.extend_from_slice(data);
        while let Some(d) = datagram::decode(&mut this.wbuf) {
            this.send(d);
        }
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        AsyncWrite::poll_flush(Pin::new(&mut this.stream), cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        AsyncWrite::poll_shutdown(Pin::new(&mut this.stream), cx)
    }
}

/// A QUIC stream of a session, as [`crate::Channel::Quic`] carries it.
#[derive(Debug)]
pub enum QuicChannel {
    /// A byte stream (the control stream, a TCP stream).
    Stream(QuicStream),
    /// A UDP flow.
    Flow(QuicFlow),
}

impl AsyncRead for QuicChannel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            QuicChannel::Stream(s) => Pin::new(s).poll_read(cx, buf),
            QuicChannel::Flow(f) => Pin::new(f).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for QuicChannel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            QuicChannel::Stream(s) => Pin::new(s).poll_write(cx, data),
            QuicChannel::Flow(f) => Pin::new(f).poll_write(cx, data),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            QuicChannel::Stream(s) => Pin::new(s).poll_flush(cx),
            QuicChannel::Flow(f) => Pin::new(f).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            QuicChannel::Stream(s) => Pin::new(s).poll_shutdown(cx),
            QuicChannel::Flow(f) => Pin::new(f).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMING: QuicTiming =
        QuicTiming { keepalive_interval: Duration::from_secs(5), idle_timeout: Duration::from_secs(15) };

    /// A connected pair; the client takes no QUIC datagrams when
    /// `client_datagrams` is false.
    async fn pair(client_datagrams: bool) -> (quinn::Endpoint, Connection, quinn::Endpoint, Connection) {
        let (chain, key) = self_signed().unwrap();
        let server =
            quinn::Endpoint::server(server_config(chain, key, TIMING, 4).unwrap(), ([127, 0, 0, 1], 0).into()).unwrap();
        let mut client = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
        let mut cfg = client_config(TIMING).unwrap();
        if !client_datagrams {
            let mut t = transport(TIMING);
            t.datagram_receive_buffer_size(None);
            cfg.transport_config(Arc::new(t));
        }
        client.set_default_client_config(cfg);
        let addr = server.local_addr().unwrap();
        let (c, s) = tokio::join!(async { client.connect(addr, "opennotr").unwrap().await.unwrap() }, async {
            server.accept().await.unwrap().await.unwrap()
        });
        (server, s, client, c)
    }

    #[tokio::test]
    async fn stream_headers_carry_local_only_between_peers_that_offer_opennotr_2() {
        let (_se, server, _ce, client) = pair(true).await;
        assert!(carries_local(&server) && carries_local(&client));
        // A client that knows only opennotr/1 still connects, and gets
        // the headers it can read.
        let (chain, key) = self_signed().unwrap();
        let endpoint =
            quinn::Endpoint::server(server_config(chain, key, TIMING, 4).unwrap(), ([127, 0, 0, 1], 0).into()).unwrap();
        let mut old = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
        old.set_default_client_config(client_config_offering(TIMING, vec![ALPN.to_vec()]).unwrap());
        let addr = endpoint.local_addr().unwrap();
        let (c, s) = tokio::join!(async { old.connect(addr, "opennotr").unwrap().await.unwrap() }, async {
            endpoint.accept().await.unwrap().await.unwrap()
        });
        assert!(!carries_local(&s) && !carries_local(&c));
    }

    fn framed(datagrams: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for d in datagrams {
            datagram::encode(d, &mut out).unwrap();
        }
        out.to_vec()
    }

    async fn read_framed(r: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<Bytes> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        while out.len() < n {
            assert!(r.read_buf(&mut buf).await.unwrap() > 0, "the flow ended early");
            while let Some(d) = datagram::decode(&mut buf) {
                out.push(d);
            }
        }
        out
    }

    /// Sends three datagrams each way on a flow (one above any path MTU)
    /// and returns how many went as QUIC datagrams and how many on the
    /// stream, client's then server's; the reader gets each whole, however
    /// the writer split its bytes, and in order on the stream.
    async fn exchange(client_datagrams: bool) -> ((u64, u64), (u64, u64)) {
        let (_se, server, _ce, client) = pair(client_datagrams).await;
        let (cs, ss) = (Arc::new(DatagramStats::default()), Arc::new(DatagramStats::default()));
        let (cl, sl) = (QuicLink::new(client.clone(), cs.clone()), QuicLink::new(server.clone(), ss.clone()));
        // The client opens the stream (servers allow one), as the control
        // stream would be; a flow's stream is any stream.
        let (send, recv) = client.open_bi().await.unwrap();
        let mut cf = cl.flow(9, QuicStream::new(send, recv));
        cf.stream_mut().write_all(b"!").await.unwrap();
        let (send, mut recv) = server.accept_bi().await.unwrap();
        let mut one = [0u8; 1];
        recv.read_exact(&mut one).await.unwrap();
        let mut sf = sl.flow(9, QuicStream::new(send, recv));

        let big = vec![7u8; 3000];
        let wire = framed(&[b"small", &big, b""]);
        for piece in wire.chunks(7) {
            cf.write_all(piece).await.unwrap();
        }
        cf.flush().await.unwrap();
        let mut got: Vec<Vec<u8>> = read_framed(&mut sf, 3).await.into_iter().map(|b| b.to_vec()).collect();
        got.sort();
        let mut want = vec![b"".to_vec(), b"small".to_vec(), big.clone()];
        want.sort();
        assert!(got == want, "got datagrams of {:?} bytes", got.iter().map(Vec::len).collect::<Vec<_>>());

        sf.write_all(&framed(&[b"a", b"bb", &big])).await.unwrap();
        sf.flush().await.unwrap();
        let mut got: Vec<Vec<u8>> = read_framed(&mut cf, 3).await.into_iter().map(|b| b.to_vec()).collect();
        got.sort();
        let mut want = vec![b"a".to_vec(), b"bb".to_vec(), big.clone()];
        want.sort();
        assert!(got == want, "got datagrams of {:?} bytes", got.iter().map(Vec::len).collect::<Vec<_>>());

        // The stream's end is the flow's end.
        sf.shutdown().await.unwrap();
        let mut rest = Vec::new();
        cf.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let count = |s: &DatagramStats| (s.sent.load(Ordering::Relaxed), s.fallback.load(Ordering::Relaxed));
        (count(&cs), count(&ss))
    }

    #[tokio::test]
    async fn small_datagrams_go_as_datagrams_and_large_ones_on_the_stream() {
        assert_eq!(exchange(true).await, ((2, 1), (2, 1)));
    }

    /// A peer that takes no QUIC datagrams gets them all on the stream,
    /// and (quinn's rule) it sends none either.
    #[tokio::test]
    async fn without_datagrams_everything_takes_the_stream() {
        assert_eq!(exchange(false).await, ((0, 3), (0, 3)));
    }

    /// Datagrams for a flow that is gone, or malformed, are dropped.
    #[tokio::test]
    async fn stray_datagrams_are_dropped() {
        let (_se, server, _ce, client) = pair(true).await;
        let ss = Arc::new(DatagramStats::default());
        let _sl = QuicLink::new(server.clone(), ss.clone());
        client.send_datagram(encode_datagram(9, b"for nobody").unwrap()).unwrap();
        client.send_datagram(Bytes::from_static(&[0x80])).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while ss.dropped.load(Ordering::Relaxed) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both dropped");
        assert_eq!(ss.received.load(Ordering::Relaxed), 0);
    }

    /// A refusal ends the stream for good: the bytes after the status (the
    /// client's reason) are never read as the stream's.
    #[tokio::test]
    async fn a_refused_status_is_final() {
        let (_se, server, _ce, client) = pair(true).await;
        let (send, recv) = client.open_bi().await.unwrap();
        let mut theirs = QuicStream::new(send, recv);
        theirs.write_all(&[opennotr_proto::quic::STATUS_REFUSED, b'n', b'o']).await.unwrap();
        theirs.shutdown().await.unwrap();
        let (send, recv) = server.accept_bi().await.unwrap();
        let mut ours = QuicStream::new(send, recv).with_status_due();
        let mut buf = [0u8; 8];
        for _ in 0..2 {
            assert_eq!(ours.read(&mut buf).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        }
    }

    /// A flow that is dropped leaves another flow's entry of the same id.
    #[tokio::test]
    async fn a_flow_removes_only_its_own_entry() {
        // The server opens the streams: it may open many to a client.
        let (_se, server, _ce, _client) = pair(true).await;
        let link = QuicLink::new(server.clone(), Arc::default());
        let (s1, r1) = server.open_bi().await.unwrap();
        let (s2, r2) = server.open_bi().await.unwrap();
        let first = link.flow(5, QuicStream::new(s1, r1));
        let second = link.flow(5, QuicStream::new(s2, r2));
        drop(first);
        let flows = link.flows.lock().unwrap();
        assert!(flows.get(&5).is_some_and(|tx| tx.same_channel(&second.tx)));
    }

    #[tokio::test]
    async fn both_ends_export_the_same_binding() {
        let (_se, server, _ce, client) = pair(true).await;
        assert_eq!(binding(&server).unwrap(), binding(&client).unwrap());
        let (_se2, other, _ce2, _) = pair(true).await;
        assert_ne!(binding(&server).unwrap(), binding(&other).unwrap());
    }
}
