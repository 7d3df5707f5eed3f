//! What an ACME CA answers: the certificate chain an order ends with, and
//! the JSON documents the order flow reads.

use instant_acme::{AuthorizationState, OrderState, Problem};
use opennotr_gateway::fuzzing::{acme_account_rejected, acme_certificate};

use crate::split_ctl;

/// The order's private key: made here, never by the CA (a throwaway key,
/// made for these tests only; `data/acme-cert.pem` is its certificate).
const KEY_PEM: &[u8] = include_bytes!("../data/acme-key.pem");

/// Control byte 0: the input is the chain in PEM, as the CA sends it;
/// 1: it is one certificate's DER, put in PEM (so the X.509 parser gets
/// the bytes); else: a JSON document (problem, order, authorization).
/// Nothing panics; a problem rejects the account exactly for the two
/// types that say so.
pub fn acme_reply(data: &[u8]) {
    let (ctl, body) = split_ctl(data);
    match ctl {
        0 => {
            let _ = acme_certificate(body, KEY_PEM);
        }
        1 => {
            let _ = acme_certificate(&pem(body), KEY_PEM);
        }
        _ => {
            if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
                let expected = matches!(
                    problem.r#type.as_deref(),
                    Some("urn:ietf:params:acme:error:accountDoesNotExist" | "urn:ietf:params:acme:error:unauthorized")
                );
                assert_eq!(acme_account_rejected(&problem), expected);
            }
            let _ = serde_json::from_slice::<OrderState>(body);
            let _ = serde_json::from_slice::<AuthorizationState>(body);
        }
    }
}

/// `der` as a PEM `CERTIFICATE` block.
fn pem(der: &[u8]) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for (i, chunk) in der.chunks(3).enumerate() {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            out.push(if k <= chunk.len() { B64[(n >> (18 - 6 * k)) as usize & 63] } else { b'=' });
        }
        if i % 16 == 15 {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
    out
}
