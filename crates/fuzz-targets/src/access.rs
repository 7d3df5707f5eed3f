//! Access rules as a client sends them with a forward (the server parses
//! and bounds them, hashes included), and a visitor's `Authorization:
//! Basic` header, read on every request to a forward with basic auth.

use opennotr_config::access::{basic_credentials, check_hash, parse, MAX_AUTHORIZATION, MAX_CIDRS, MAX_USERS};
use opennotr_proto::message::AccessRules;

/// Control byte even: the input is an `Authorization` value; credentials
/// that decode have a user without ':', come from a value within the
/// bound, and encode back to a value that decodes to them. Odd: the input
/// is the JSON of a forward's `access` as a client sends it; rules that
/// parse stay within the server's bounds, and each of their hashes passes
/// the hash check on its own (the check the server's cost bounds rest on).
pub fn access_rules(data: &[u8]) {
    let (ctl, data) = crate::split_ctl(data);
    if ctl % 2 == 0 {
        if let Some((user, password)) = basic_credentials(data) {
            assert!(data.len() <= MAX_AUTHORIZATION);
            assert!(!user.contains(':'), "the user ends at the first ':'");
            let mut plain = user.clone().into_bytes();
            plain.push(b':');
            plain.extend_from_slice(&password);
            let value = format!("Basic {}", base64_encode(&plain));
            if value.len() <= MAX_AUTHORIZATION {
                assert_eq!(basic_credentials(value.as_bytes()), Some((user, password)), "round trip");
            }
        }
        if let Ok(text) = std::str::from_utf8(data) {
            // Whatever the server is handed as a hash: parsed, never panics.
            let _ = check_hash(text);
        }
    } else if let Ok(rules) = serde_json::from_slice::<AccessRules>(data) {
        let users: Vec<(String, String)> = rules.basic_auth.iter().map(|u| (u.user.clone(), u.hash.clone())).collect();
        if let Ok(access) = parse("access", &rules.allow, &rules.deny, &users) {
            assert!(access.allow.len() <= MAX_CIDRS && access.deny.len() <= MAX_CIDRS);
            assert!(access.basic_auth.len() <= MAX_USERS);
            for (_, hash) in &users {
                assert_eq!(check_hash(hash), Ok(()), "an accepted hash passes the check");
            }
        }
    }
}

/// Standard base64 with padding (RFC 4648), without a dependency of its
/// own: the decoder under test must not also be the oracle.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(super::base64_encode(plain.as_bytes()), encoded);
        }
    }
}
