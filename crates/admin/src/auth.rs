//! The bearer token check.

use std::fmt;
use std::sync::{Arc, RwLock};

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
        self.is(presented)
    }

    fn is(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

/// The token of a running [`crate::AdminServer`], replaceable while it
/// runs (a reload of the server's file): every request is checked against
/// the token in force when it arrives.
#[derive(Clone)]
pub struct TokenHandle(Arc<RwLock<Token>>);

impl TokenHandle {
    pub(crate) fn new(token: Token) -> TokenHandle {
        TokenHandle(Arc::new(RwLock::new(token)))
    }

    /// Puts `token` in force. `Ok(false)`: it is the one in force already,
    /// nothing changed. Fails with `InvalidInput` if it is empty (or the
    /// system has no randomness), and then the old token stays.
    pub fn set(&self, token: &str) -> std::io::Result<bool> {
        if self.0.read().unwrap_or_else(|e| e.into_inner()).is(token.as_bytes()) {
            return Ok(false);
        }
        let next = Token::new(token).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the admin token is empty or no randomness is available",
            )
        })?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(true)
    }

    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).admits(headers)
    }
}

impl fmt::Debug for TokenHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHandle(<redacted>)")
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
    fn a_handle_replaces_the_token() {
        let h = TokenHandle::new(Token::new("first-token-0123").unwrap());
        assert!(h.admits(&with_auth("Bearer first-token-0123")));
        assert!(!h.set("first-token-0123").unwrap(), "the same token changes nothing");
        assert!(h.set("second-token-456").unwrap());
        assert!(!h.admits(&with_auth("Bearer first-token-0123")));
        assert!(h.admits(&with_auth("Bearer second-token-456")));
        assert!(h.set("").is_err());
        assert!(h.admits(&with_auth("Bearer second-token-456")), "a refused token leaves the old one");
        assert!(!format!("{h:?}").contains("token-456"));
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
