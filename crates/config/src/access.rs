//! Access rules of a forward: `allow` and `deny` lists of CIDRs and HTTP
//! `basicAuth` users, as the server sets them (`clients[i]`, or `access`
//! for shared-key clients) and as a client narrows them per forward
//! (`forwards[i]`). The server checks what a client sends with the same
//! functions, so a hostile client is held to the same bounds as a file.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::ConfigError;

/// Most CIDRs in one `allow` or `deny` list.
pub const MAX_CIDRS: usize = 256;
/// Most `basicAuth` users of one rule set.
pub const MAX_USERS: usize = 64;
/// Longest user name.
pub const MAX_USER_LEN: usize = 64;
/// Longest hash; argon2id with long salts is about 100 characters.
pub const MAX_HASH_LEN: usize = 256;
/// Largest argon2 memory cost accepted, in KiB (64 MiB): a hash is
/// verified for every new visitor's credentials, and its parameters must
/// not let whoever wrote it take the server's memory or cores.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 65536;
/// Largest argon2 time cost (passes) accepted.
pub const MAX_ARGON2_TIME: u32 = 10;
/// Largest argon2 parallelism accepted.
pub const MAX_ARGON2_LANES: u32 = 4;
/// Largest bcrypt cost accepted (2^14 rounds: about a second of one core).
pub const MAX_BCRYPT_COST: u32 = 14;

/// How to make a hash, shown when a plaintext password is found.
pub const HASH_HOWTO: &str = "store a hash, not the password: `opennotr hash-password` reads the password on \
     its standard input and prints an argon2id hash (or `htpasswd -nbBC 12 '' 'PASSWORD' | tr -d ':\\n'` for \
     bcrypt); see docs/access-control.md";

/// Who may reach a forward. Empty = everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// `allow`: sources that may connect; empty = any.
    pub allow: Vec<IpNet>,
    /// `deny`: sources refused, even when allowed.
    pub deny: Vec<IpNet>,
    /// `basicAuth`: HTTP users; empty = no credentials asked.
    pub basic_auth: Vec<BasicAuth>,
}

impl Access {
    /// Whether the rules let everyone in.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.basic_auth.is_empty()
    }
}

/// One `basicAuth` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// `user`: the user name (no ':').
    pub user: String,
    /// `hash`: argon2id in PHC form, or bcrypt; checked by [`check_hash`].
    pub hash: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth").field("user", &self.user).finish_non_exhaustive()
    }
}

/// A `basicAuth` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBasicAuth {
    user: Option<String>,
    hash: Option<String>,
    /// Read only to refuse it with a way to make a hash.
    password: Option<serde::de::IgnoredAny>,
}

/// The access keys as written (in `clients[i]`, `forwards[i]`, `access`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAccess {
    pub(crate) allow: Option<Vec<String>>,
    pub(crate) deny: Option<Vec<String>>,
    pub(crate) basic_auth: Option<Vec<RawBasicAuth>>,
}

/// Validates the keys under `at` (`forwards[2]`, `clients[0]`, `access`).
pub(crate) fn validate(
    at: &str,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    users: Option<Vec<RawBasicAuth>>,
) -> Result<Access, ConfigError> {
    let mut pairs = Vec::new();
    for (j, u) in users.unwrap_or_default().into_iter().enumerate() {
        let key = |f: &str| format!("{at}.basicAuth[{j}].{f}");
        if u.password.is_some() {
            return Err(ConfigError::invalid(
                key("password"),
                format!("a plaintext password is refused; {HASH_HOWTO}"),
            ));
        }
        let user = u.user.ok_or_else(|| ConfigError::invalid(key("user"), "required"))?;
        let hash = u.hash.ok_or_else(|| ConfigError::invalid(key("hash"), "required"))?;
        pairs.push((user, hash));
    }
    parse(at, &allow.unwrap_or_default(), &deny.unwrap_or_default(), &pairs)
}

/// Parses rules given as text (from a file, or from a client's forward
/// request); errors name `{at}.allow[j]`, `{at}.basicAuth[j].hash`, ...
pub fn parse(at: &str, allow: &[String], deny: &[String], users: &[(String, String)]) -> Result<Access, ConfigError> {
    let allow = cidrs(&format!("{at}.allow"), allow)?;
    let deny = cidrs(&format!("{at}.deny"), deny)?;
    if users.len() > MAX_USERS {
        return Err(ConfigError::invalid(format!("{at}.basicAuth"), format!("more than {MAX_USERS} users")));
    }
    let mut basic_auth: Vec<BasicAuth> = Vec::with_capacity(users.len());
    for (j, (user, hash)) in users.iter().enumerate() {
        let key = |f: &str| format!("{at}.basicAuth[{j}].{f}");
        if user.is_empty() || user.len() > MAX_USER_LEN || user.contains(':') || user.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                key("user"),
                format!("a user name is 1-{MAX_USER_LEN} characters, without ':' or control characters"),
            ));
        }
        if basic_auth.iter().any(|b| &b.user == user) {
            return Err(ConfigError::invalid(key("user"), format!("{user:?} is listed twice")));
        }
        check_hash(hash).map_err(|m| ConfigError::invalid(key("hash"), m))?;
        basic_auth.push(BasicAuth { user: user.clone(), hash: hash.clone() });
    }
    Ok(Access { allow, deny, basic_auth })
}

/// The protocols basic auth applies to: those whose requests the gateway
/// reads.
pub const HTTP_PROTOCOLS: [&str; 3] = ["http", "https", "h2c"];

/// Refuses `basicAuth` on a forward whose protocol carries no HTTP requests
/// the server reads (`tcp`, `udp`, `tls` passthrough).
pub fn for_protocol(at: &str, protocol: &str, access: &Access) -> Result<(), ConfigError> {
    if !access.basic_auth.is_empty() && !HTTP_PROTOCOLS.contains(&protocol) {
        return Err(ConfigError::invalid(
            format!("{at}.basicAuth"),
            format!("a {protocol} forward cannot ask for basic auth (only http, https and h2c forwards can)"),
        ));
    }
    Ok(())
}

fn cidrs(key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    if list.len() > MAX_CIDRS {
        return Err(ConfigError::invalid(key, format!("more than {MAX_CIDRS} CIDRs")));
    }
    list.iter()
        .enumerate()
        .map(|(j, text)| {
            let shown: String = text.chars().take(64).collect();
            let bad =
                || ConfigError::invalid(format!("{key}[{j}]"), format!("{shown:?} is not a CIDR (e.g. 10.0.0.0/8)"));
            // A bare address is a host route.
            match text.parse::<IpNet>() {
                Ok(n) => Ok(n.trunc()),
                Err(_) => text.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad()),
            }
        })
        .collect()
}

/// Checks that `hash` is an argon2id (PHC form) or bcrypt hash whose cost
/// is within the bounds above. The message never repeats the value: it
/// may be a password written where a hash belongs.
pub fn check_hash(hash: &str) -> Result<(), String> {
    if hash.len() > MAX_HASH_LEN {
        return Err(format!("longer than {MAX_HASH_LEN} characters"));
    }
    if hash.starts_with("$argon2") {
        let phc = argon2::PasswordHash::new(hash).map_err(|e| format!("not a valid argon2 PHC string: {e}"))?;
        if phc.algorithm.as_str() != "argon2id" {
            return Err(format!("{} is not accepted; use argon2id", phc.algorithm));
        }
        // Bounded before argon2 reads them: its own check multiplies p by 8
        // in u32, which overflows (a panic with overflow checks on) for a
        // p no hash would carry.
        for (name, max) in [("m", MAX_ARGON2_MEMORY_KIB), ("t", MAX_ARGON2_TIME), ("p", MAX_ARGON2_LANES)] {
            if let Some(v) = phc.params.get_decimal(name).filter(|v| *v > max) {
                return Err(format!(
                    "argon2 parameter {name}={v} exceeds this server's bounds (m<={MAX_ARGON2_MEMORY_KIB}, \
                     t<={MAX_ARGON2_TIME}, p<={MAX_ARGON2_LANES})"
                ));
            }
        }
        argon2::Params::try_from(&phc).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        if phc.hash.is_none() {
            return Err("the PHC string has no hash".into());
        }
        return Ok(());
    }
    if hash.starts_with("$2") {
        let parts: bcrypt::HashParts = hash.parse().map_err(|e| format!("not a valid bcrypt hash: {e}"))?;
        if parts.get_cost() > MAX_BCRYPT_COST {
            return Err(format!("bcrypt cost {} is above this server's bound {MAX_BCRYPT_COST}", parts.get_cost()));
        }
        return Ok(());
    }
    Err(format!("not an argon2id ($argon2id$...) or bcrypt ($2b$...) hash; {HASH_HOWTO}"))
}

/// An argon2id hash of `password` in PHC form with argon2's default
/// parameters (m=19456 KiB, t=2, p=1), for `opennotr hash-password`.
pub fn hash_password(password: &[u8], salt: &[u8; 16]) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::encode_b64(salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default().hash_password(password, &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Longest `Authorization` value read; a longer one is refused unread.
pub const MAX_AUTHORIZATION: usize = 1024;

/// A visitor's `Authorization` header value, `Basic <base64 of
/// user:password>`, as (user, password); `None` for any other scheme or
/// anything malformed (RFC 7617: the user name has no ':', the password
/// may). Network input: bounded before it is decoded.
pub fn basic_credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    use base64::Engine as _;
    if value.len() > MAX_AUTHORIZATION {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(token.trim_start()).ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGON: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$OjUZxYr7dUa5T+fdk0MQC7UIOPzzcjwcjvD6wiX4pDU";
    const BCRYPT: &str = "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie";

    #[test]
    fn parses_cidrs_and_hashes() {
        let a = parse(
            "forwards[0]",
            &["10.0.0.0/8".into(), "192.0.2.7".into(), "2001:db8::/32".into()],
            &["10.1.0.0/16".into()],
            &[("alice".into(), ARGON.into()), ("bob".into(), BCRYPT.into())],
        )
        .unwrap();
        assert_eq!(a.allow.len(), 3);
        assert_eq!(a.allow[1].to_string(), "192.0.2.7/32");
        assert_eq!(a.basic_auth[1].user, "bob");
        assert!(!format!("{a:?}").contains("$2b$"), "hashes stay out of Debug");
    }

    #[test]
    fn made_hashes_pass_the_check() {
        let h = hash_password(b"pw", &[7; 16]).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        check_hash(&h).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("forwards[2]", &["10.0.0.0/8".into(), "10.0.0.0/33".into()], &[], &[]).unwrap_err();
        assert_eq!(e.to_string(), r#"forwards[2].allow[1]: "10.0.0.0/33" is not a CIDR (e.g. 10.0.0.0/8)"#);
        let e = parse("clients[0]", &[], &[], &[("a:b".into(), ARGON.into())]).unwrap_err();
        assert!(e.to_string().starts_with("clients[0].basicAuth[0].user: "), "{e}");
        let e = parse("access", &[], &[], &[("a".into(), "hunter2".into())]).unwrap_err();
        assert!(e.to_string().starts_with("access.basicAuth[0].hash: not an argon2id"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "the password is not repeated: {e}");
        let slow =
            "$argon2id$v=19$m=1048576,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$OjUZxYr7dUa5T+fdk0MQC7UIOPzzcjwcjvD6wiX4pDU";
        assert!(check_hash(slow).unwrap_err().contains("exceed"));
        // Found by the fuzzer: argon2's own check would overflow on this p.
        assert!(check_hash("$argon2id$v=18$m=18,p=1000000000").unwrap_err().contains("p=1000000000 exceeds"));
        let argon2i = ARGON.replace("argon2id", "argon2i");
        assert!(check_hash(&argon2i).unwrap_err().contains("use argon2id"));
        assert!(check_hash("$2b$20$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie").is_err());
        let many: Vec<String> = (0..=MAX_CIDRS).map(|i| format!("10.0.{}.0/24", i % 256)).collect();
        assert!(parse("x", &many, &[], &[]).unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn parses_basic_credentials_strictly() {
        assert_eq!(basic_credentials(b"Basic YWxpY2U6czNjcjN0"), Some(("alice".into(), b"s3cr3t".to_vec())));
        assert_eq!(basic_credentials(b"basic   YWxpY2U6czNjcjN0"), Some(("alice".into(), b"s3cr3t".to_vec())));
        assert_eq!(basic_credentials(b"Bearer YWxpY2U6czNjcjN0"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic YWxpY2U="), None, "no colon");
        assert_eq!(basic_credentials(&[b'a'; 2000]), None);
    }
}
