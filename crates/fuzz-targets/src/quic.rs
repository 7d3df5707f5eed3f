//! The QUIC transport's framing: the header of a stream the server opens
//! (read by the client), and the flow id in front of a UDP datagram.

use bytes::Bytes;
use opennotr_proto::quic::{encode_datagram, flow_id_len, parse_datagram, StreamHeader, MAX_FLOW_ID, MAX_HEADER_LEN};

/// Control byte even: the input is a stream's first bytes, read as the
/// client reads them (a length byte refused on its own, then exactly that
/// many bytes); a header that parses re-encodes to exactly those bytes.
/// Odd: the input is one QUIC datagram; its flow id fits 62 bits, id and
/// payload account for every byte, and a minimally encoded id re-encodes
/// to the same datagram.
pub fn quic_framing(data: &[u8]) {
    let (ctl, data) = crate::split_ctl(data);
    if ctl % 2 == 0 {
        let Some((&first, rest)) = data.split_first() else { return };
        let Ok(n) = StreamHeader::body_len(first) else {
            assert!(first == 0 || usize::from(first) > MAX_HEADER_LEN);
            return;
        };
        let Some(body) = rest.get(..n) else { return };
        if let Ok(h) = StreamHeader::parse(body) {
            assert_eq!(&h.encode()[..], &data[..=n], "a header re-encodes to its bytes");
        }
    } else {
        match parse_datagram(Bytes::copy_from_slice(data)) {
            Ok((flow, payload)) => {
                assert!(flow <= MAX_FLOW_ID);
                let n = 1usize << (data[0] >> 6);
                assert_eq!(n + payload.len(), data.len());
                assert_eq!(&payload[..], &data[n..]);
                if flow_id_len(flow) == n {
                    assert_eq!(&encode_datagram(flow, &payload).expect("a 62-bit id")[..], data);
                }
            }
            Err(_) => assert!(data.is_empty() || data.len() < 1usize << (data[0] >> 6)),
        }
    }
}
