//! The bearer token check.

use std::fmt;

use hyper::header::{HeaderMap, AUTHORIZATION};
use ring::hmac;

/// The operator's token, kept only as an HMAC under a key drawn at start.
///
/// Checking a presented token means verifying its HMAC against the stored
/// one, which ring does in constant time and over a fixed-length tag, so
/// neither the token's bytes nor its length leak through response timing.
pub(crate) struct Token {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl Token {
    /// `None` if the token is empty (an empty token would let
    /// `Authorization: Bearer ` in) or the system has no randomness.
    pub(crate) fn new(token: &str) -> Option<Token> {
        if token.is_empty() {
            return None;
        }
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()?;
        let tag = hmac::sign(&key, token.as_bytes());
        Some(Token { key, tag })
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else { return false };
        let Some(presented) = bearer(value.as_bytes()) else { return false };
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The credentials of a `Bearer` authorization value (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Some(&rest[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn admits_only_the_bearer_token() {
        let t = Token::new("s3cret-token").unwrap();
        assert!(t.admits(&with_auth("Bearer s3cret-token")));
        assert!(t.admits(&with_auth("bearer  s3cret-token")));
        assert!(!t.admits(&HeaderMap::new()));
        assert!(!t.admits(&with_auth("Bearer s3cret-toke")));
        assert!(!t.admits(&with_auth("Bearer s3cret-token2")));
        assert!(!t.admits(&with_auth("Basic s3cret-token")));
        assert!(!t.admits(&with_auth("Bearer")));
        assert!(!t.admits(&with_auth("s3cret-token")));
    }

    #[test]
    fn refuses_an_empty_token() {
        assert!(Token::new("").is_none());
    }

    #[test]
    fn debug_hides_the_token() {
        let t = Token::new("s3cret-token").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
