//! The QUIC transport's own wire format: what opens each stream the server
//! starts, the client's answer, and how a UDP flow's datagrams are tagged.
//!
//! Over QUIC the control connection is the first bidirectional stream (the
//! client opens it and runs the same preface, hello, challenge, confirm and
//! register as over TCP); every other stream is opened by the server, one
//! per visitor stream, and starts with a [`StreamHeader`]. The client
//! answers one status byte ([`STATUS_CONNECTED`], or [`STATUS_REFUSED`]
//! followed by the reason). A UDP flow's datagrams travel as QUIC datagrams
//! prefixed by the flow id ([`encode_datagram`]), or, when one does not fit,
//! on the flow's stream in the usual [`crate::datagram`] framing.
//!
//! Everything here parses input from the network: it never panics and
//! refuses anything malformed or trailing (fuzzed by
//! `crates/fuzz-targets`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::StreamProtocol;

/// The TLS application protocol (ALPN) both ends require.
pub const ALPN: &[u8] = b"opennotr/1";

/// The same protocol whose stream headers may also carry the server
/// address the visitor reached ([`StreamHeader::local`]). Both ends offer
/// it first and [`ALPN`] after it: the server sends that field only when
/// this one was negotiated, so a peer that knows only [`ALPN`] still
/// interoperates.
pub const ALPN_LOCAL: &[u8] = b"opennotr/2";

/// The TLS exporter label (RFC 8446 §7.5) whose output the handshake
/// transcript is bound to, so that a man in the middle who terminates TLS
/// with a certificate of its own fails key confirmation.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-opennotr/1 handshake binding";

/// Length of the exported binding.
pub const BINDING_LEN: usize = 32;

/// Longest header body: stream id, protocol, three IPv6 addresses.
pub const MAX_HEADER_LEN: usize = 8 + 1 + 3 * (1 + 16 + 2);

/// The client's answer: it dialed the target; the stream's bytes follow.
pub const STATUS_CONNECTED: u8 = 0;
/// The client's answer: it refused; the reason (UTF-8, at most
/// [`MAX_REASON_LEN`] bytes) follows until the end of the stream.
pub const STATUS_REFUSED: u8 = 1;
/// Longest refusal reason read from a stream.
pub const MAX_REASON_LEN: usize = 1024;

/// Application error codes on QUIC streams and the connection.
pub mod code {
    /// The connection or stream ended normally.
    pub const DONE: u32 = 0;
    /// The peer broke this format (a malformed header, datagram or frame).
    pub const PROTOCOL: u32 = 1;
    /// The session ended (closed by either side, replaced, shut down).
    pub const SESSION_ENDED: u32 = 2;
    /// The client refused the stream.
    pub const REFUSED: u32 = 3;
    /// The handshake failed or was refused.
    pub const REFUSED_HANDSHAKE: u32 = 4;
}

/// Why bytes are not a valid header or datagram.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuicFormatError {
    /// Fewer bytes than the format needs.
    #[error("truncated")]
    Truncated,
    /// A header's length is outside `1..=MAX_HEADER_LEN`.
    #[error("header length {0} out of range")]
    BadLength(usize),
    /// An unknown protocol code.
    #[error("unknown protocol {0}")]
    BadProtocol(u8),
    /// An unknown address family.
    #[error("unknown address family {0}")]
    BadFamily(u8),
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// The first bytes of every stream the server opens.
///
/// ```text
/// len u8 (of what follows, 1..=MAX_HEADER_LEN)
/// stream u64 big-endian (also the id of a UDP flow's datagrams)
/// protocol u8 (0 tcp, 1 udp, 2 mux)
/// target: family u8 (4 or 6), address (4 or 16 bytes), port u16
/// peer:   family u8 (0 = unknown, 4 or 6), address, port
/// local:  absent, or family u8 (4 or 6), address, port
/// ```
///
/// `local` is sent only on a connection that negotiated [`ALPN_LOCAL`];
/// when unknown it is left out rather than sent as family 0, so every
/// header has one spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// The stream's id in its session.
    pub stream: u64,
    /// What the stream carries.
    pub protocol: StreamProtocol,
    /// What the client dials; it must be one of its declared targets.
    pub target: SocketAddr,
    /// The visitor, for the client's log and a PROXY protocol header.
    pub peer: Option<SocketAddr>,
    /// The server address the visitor reached, where known: the
    /// destination of a PROXY protocol header.
    pub local: Option<SocketAddr>,
}

fn put_addr(out: &mut BytesMut, a: Option<SocketAddr>) {
    match a.map(|a| (a.ip(), a.port())) {
        None => out.put_u8(0),
        Some((IpAddr::V4(ip), port)) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
            out.put_u16(port);
        }
        Some((IpAddr::V6(ip), port)) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
            out.put_u16(port);
        }
    }
}

/// A cursor that fails instead of panicking past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QuicFormatError> {
        if self.0.len() < n {
            return Err(QuicFormatError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, QuicFormatError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], QuicFormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn addr(&mut self, optional: bool) -> Result<Option<SocketAddr>, QuicFormatError> {
        let ip = match self.u8()? {
            0 if optional => return Ok(None),
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            f => return Err(QuicFormatError::BadFamily(f)),
        };
        let port = u16::from_be_bytes(self.array()?);
        Ok(Some(SocketAddr::new(ip, port)))
    }
}

impl StreamHeader {
    /// The header with its length byte.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + MAX_HEADER_LEN);
        out.put_u8(0);
        out.put_u64(self.stream);
        out.put_u8(match self.protocol {
            StreamProtocol::Tcp => 0,
            StreamProtocol::Udp => 1,
            StreamProtocol::Mux => 2,
        });
        put_addr(&mut out, Some(self.target));
        put_addr(&mut out, self.peer);
        if self.local.is_some() {
            put_addr(&mut out, self.local);
        }
        // At most MAX_HEADER_LEN (three IPv6 addresses), so it fits a u8.
        out[0] = (out.len() - 1) as u8;
        out.freeze()
    }

    /// How many body bytes follow a header's first (length) byte; refuses a
    /// length that cannot be a header before anything is read.
    pub fn body_len(first: u8) -> Result<usize, QuicFormatError> {
        match first as usize {
            n @ 1..=MAX_HEADER_LEN => Ok(n),
            n => Err(QuicFormatError::BadLength(n)),
        }
    }

    /// Parses a header body (without its length byte): every field, and
    /// nothing after them.
    pub fn parse(body: &[u8]) -> Result<StreamHeader, QuicFormatError> {
        let mut r = Reader(body);
        let stream = u64::from_be_bytes(r.array()?);
        let protocol = match r.u8()? {
            0 => StreamProtocol::Tcp,
            1 => StreamProtocol::Udp,
            2 => StreamProtocol::Mux,
            p => return Err(QuicFormatError::BadProtocol(p)),
        };
        let target = r.addr(false)?.ok_or(QuicFormatError::Truncated)?;
        let peer = r.addr(true)?;
        let local = if r.0.is_empty() { None } else { r.addr(false)? };
        match r.0.len() {
            0 => Ok(StreamHeader { stream, protocol, target, peer, local }),
            n => Err(QuicFormatError::Trailing(n)),
        }
    }
}

/// Largest flow id: a QUIC variable-length integer holds 62 bits.
pub const MAX_FLOW_ID: u64 = (1 << 62) - 1;

/// Bytes the flow id takes in front of a datagram.
pub fn flow_id_len(flow: u64) -> usize {
    match flow {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// A QUIC datagram of a UDP flow: the flow id as a QUIC variable-length
/// integer (RFC 9000 §16), then the UDP payload. `None` if the id is
/// beyond [`MAX_FLOW_ID`].
pub fn encode_datagram(flow: u64, payload: &[u8]) -> Option<Bytes> {
    if flow > MAX_FLOW_ID {
        return None;
    }
    let n = flow_id_len(flow);
    let mut out = BytesMut::with_capacity(n + payload.len());
    let tag = match n {
        1 => 0x00,
        2 => 0x40,
        4 => 0x80,
        _ => 0xc0,
    };
    let be = flow.to_be_bytes();
    out.put_slice(&be[8 - n..]);
    out[0] |= tag;
    out.put_slice(payload);
    Some(out.freeze())
}

/// Splits a QUIC datagram into its flow id and payload. An empty payload
/// is a valid (empty) UDP datagram; an id spelled longer than needed is
/// accepted, as RFC 9000 allows.
pub fn parse_datagram(mut d: Bytes) -> Result<(u64, Bytes), QuicFormatError> {
    let first = *d.first().ok_or(QuicFormatError::Truncated)?;
    let n = 1usize << (first >> 6);
    if d.len() < n {
        return Err(QuicFormatError::Truncated);
    }
    let mut be = [0u8; 8];
    be[8 - n..].copy_from_slice(&d[..n]);
    be[8 - n] &= 0x3f;
    let flow = u64::from_be_bytes(be);
    let payload = d.split_off(n);
    Ok((flow, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(Ipv4Addr::from(a).into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(Ipv6Addr::from(a).into(), p)),
        ]
    }

    fn protocol() -> impl Strategy<Value = StreamProtocol> {
        prop_oneof![Just(StreamProtocol::Tcp), Just(StreamProtocol::Udp), Just(StreamProtocol::Mux)]
    }

    proptest! {
        #[test]
        fn headers_round_trip(
            stream in any::<u64>(),
            protocol in protocol(),
            target in addr(),
            peer in proptest::option::of(addr()),
            local in proptest::option::of(addr()),
        ) {
            let h = StreamHeader { stream, protocol, target, peer, local };
            let wire = h.encode();
            let n = StreamHeader::body_len(wire[0]).unwrap();
            prop_assert_eq!(n, wire.len() - 1);
            prop_assert_eq!(StreamHeader::parse(&wire[1..]).unwrap(), h);
        }

        #[test]
        fn header_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = StreamHeader::parse(&body);
        }

        #[test]
        fn datagrams_round_trip(flow in 0..=MAX_FLOW_ID, payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let d = encode_datagram(flow, &payload).unwrap();
            prop_assert_eq!(d.len(), flow_id_len(flow) + payload.len());
            let (f, p) = parse_datagram(d).unwrap();
            prop_assert_eq!(f, flow);
            prop_assert_eq!(&p[..], &payload[..]);
        }

        #[test]
        fn datagram_parser_never_panics(d in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse_datagram(Bytes::from(d));
        }
    }

    fn header() -> StreamHeader {
        StreamHeader {
            stream: 7,
            protocol: StreamProtocol::Udp,
            target: "127.0.0.1:53".parse().unwrap(),
            peer: Some("[2001:db8::1]:4000".parse().unwrap()),
            local: None,
        }
    }

    #[test]
    fn header_layout() {
        let wire = header().encode();
        assert_eq!(wire[0] as usize, 8 + 1 + 7 + 19);
        assert_eq!(&wire[1..9], &7u64.to_be_bytes());
        assert_eq!(wire[9], 1);
        assert_eq!(&wire[10..17], &[4, 127, 0, 0, 1, 0, 53]);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let wire = header().encode();
        let body = &wire[1..];
        assert_eq!(StreamHeader::body_len(0), Err(QuicFormatError::BadLength(0)));
        assert_eq!(
            StreamHeader::body_len(MAX_HEADER_LEN as u8 + 1),
            Err(QuicFormatError::BadLength(MAX_HEADER_LEN + 1))
        );
        for cut in 0..body.len() {
            assert!(StreamHeader::parse(&body[..cut]).is_err(), "a header cut at {cut} parsed");
        }
        let mut long = body.to_vec();
        long.extend_from_slice(&[4, 127, 0, 0, 1, 0, 53, 0]);
        assert_eq!(StreamHeader::parse(&long), Err(QuicFormatError::Trailing(1)));
        let mut bad = body.to_vec();
        bad[8] = 3;
        assert_eq!(StreamHeader::parse(&bad), Err(QuicFormatError::BadProtocol(3)));
        let mut bad = body.to_vec();
        bad[9] = 5;
        assert_eq!(StreamHeader::parse(&bad), Err(QuicFormatError::BadFamily(5)));
        // A target is required: family 0 is only for the peer.
        let mut bad = body.to_vec();
        bad[9] = 0;
        assert!(StreamHeader::parse(&bad).is_err());
    }

    #[test]
    fn local_is_optional_and_strict() {
        let reached: SocketAddr = "198.51.100.1:5353".parse().unwrap();
        let with = StreamHeader { local: Some(reached), ..header() }.encode();
        let without = header().encode();
        // What an older server sends still parses, with `local` unknown.
        assert_eq!(StreamHeader::parse(&without[1..]).unwrap().local, None);
        assert_eq!(&with[..without.len()][1..], &without[1..]);
        assert_eq!(&with[without.len()..], &[4, 198, 51, 100, 1, 0x14, 0xe9]);
        assert_eq!(StreamHeader::parse(&with[1..]).unwrap().local, Some(reached));
        // An unknown `local` is left out, never spelled as family 0.
        let mut zero = without[1..].to_vec();
        zero.push(0);
        assert_eq!(StreamHeader::parse(&zero), Err(QuicFormatError::BadFamily(0)));
        for cut in without.len() + 1..with.len() {
            assert!(StreamHeader::parse(&with[1..cut]).is_err(), "a header cut at {cut} parsed");
        }
        let widest = StreamHeader {
            target: "[::1]:1".parse().unwrap(),
            peer: Some("[::2]:2".parse().unwrap()),
            local: Some("[::3]:3".parse().unwrap()),
            ..header()
        };
        assert_eq!(widest.encode().len(), 1 + MAX_HEADER_LEN);
    }

    #[test]
    fn flow_ids_use_rfc9000_encoding() {
        // RFC 9000 appendix A.1's examples.
        assert_eq!(
            &encode_datagram(151_288_809_941_952_652, b"").unwrap()[..],
            &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]
        );
        assert_eq!(&encode_datagram(494_878_333, b"").unwrap()[..], &[0x9d, 0x7f, 0x3e, 0x7d]);
        assert_eq!(&encode_datagram(15_293, b"x").unwrap()[..], &[0x7b, 0xbd, b'x']);
        assert_eq!(parse_datagram(Bytes::from_static(&[0x40, 0x25, 9])).unwrap(), (37, Bytes::from_static(&[9])));
        assert!(encode_datagram(MAX_FLOW_ID + 1, b"").is_none());
        assert_eq!(parse_datagram(Bytes::new()), Err(QuicFormatError::Truncated));
        assert_eq!(parse_datagram(Bytes::from_static(&[0x80, 1])), Err(QuicFormatError::Truncated));
    }
}
