//! The forwards of a one-line client: `tcp 8080 10022:22 udp 5353 http
//! 192.168.1.5:3000`.
//!
//! A word without ':' that starts with a lowercase letter names a protocol
//! (any plugin: `tcp`, `udp`, `http`, `https`, `h2c`, `tls`, ...); every
//! other word is a target of the last protocol named:
//!
//! - `8080`: local port 8080, public port chosen by the server;
//! - `10022:22`: public port 10022, local port 22;
//! - `192.168.1.5:8080`, `localhost:8080`, `[::1]:8080`: another local host;
//! - `10022:192.168.1.5:22`: both.
//!
//! Ports are kept as typed: the config's validation reports a bad one.

use opennotr_config::ForwardArg;

/// Why the words are not forwards: the word at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSyntaxError {
    /// The word at fault.
    pub word: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for ForwardSyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "forward {:?}: {}", self.word, self.message)
    }
}

fn is_protocol(word: &str) -> bool {
    !word.contains(':') && word.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Parses the forward words.
pub fn parse_forwards(words: &[String]) -> Result<Vec<ForwardArg>, ForwardSyntaxError> {
    let mut out = Vec::new();
    let mut protocol: Option<&str> = None;
    let mut targets_of_protocol = 0;
    for w in words {
        let err = |m: &str| ForwardSyntaxError { word: w.clone(), message: m.into() };
        if is_protocol(w) {
            if let (Some(p), 0) = (protocol, targets_of_protocol) {
                return Err(ForwardSyntaxError {
                    word: p.into(),
                    message: "no port after the protocol, e.g. `tcp 8080`".into(),
                });
            }
            protocol = Some(w);
            targets_of_protocol = 0;
            continue;
        }
        let Some(p) = protocol else {
            return Err(err("a protocol comes first, e.g. `tcp 8080` or `udp 5353`"));
        };
        let (rest, local_port) = w.rsplit_once(':').unwrap_or(("", w));
        let (public_port, host) = match rest {
            "" => ("0", None),
            r if r.bytes().all(|b| b.is_ascii_digit()) => (r, None),
            r if r.starts_with('[') => ("0", Some(r)),
            r => match r.split_once(':') {
                Some((public, host)) if public.bytes().all(|b| b.is_ascii_digit()) => (public, Some(host)),
                _ => ("0", Some(r)),
            },
        };
        let local_ip = match host {
            None => None,
            Some("localhost") => Some("127.0.0.1".to_string()),
            Some(h) => {
                let h = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h);
                if h.parse::<std::net::IpAddr>().is_err() {
                    return Err(err(&format!("`{h}` is not an IP address (or localhost)")));
                }
                Some(h.to_string())
            }
        };
        if local_port.is_empty() {
            return Err(err("no local port"));
        }
        targets_of_protocol += 1;
        out.push(ForwardArg {
            arg: format!("{p} {w}"),
            protocol: p.into(),
            public_port: if public_port.is_empty() { "0".into() } else { public_port.into() },
            local_ip,
            local_port: local_port.into(),
        });
    }
    if let (Some(p), 0) = (protocol, targets_of_protocol) {
        return Err(ForwardSyntaxError {
            word: p.into(),
            message: "no port after the protocol, e.g. `tcp 8080`".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (protocol, public port, local IP, local port)
    type Parts = (String, String, Option<String>, String);

    fn parse(s: &str) -> Result<Vec<Parts>, ForwardSyntaxError> {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse_forwards(&words)
            .map(|v| v.into_iter().map(|f| (f.protocol, f.public_port, f.local_ip, f.local_port)).collect())
    }

    fn f(p: &str, public: &str, ip: Option<&str>, local: &str) -> Parts {
        (p.into(), public.into(), ip.map(String::from), local.into())
    }

    #[test]
    fn forms() {
        assert_eq!(
            parse("tcp 8080 10022:22 udp 5353 http 192.168.1.5:3000 tcp 2222:[::1]:22 localhost:9").unwrap(),
            vec![
                f("tcp", "0", None, "8080"),
                f("tcp", "10022", None, "22"),
                f("udp", "0", None, "5353"),
                f("http", "0", Some("192.168.1.5"), "3000"),
                f("tcp", "2222", Some("::1"), "22"),
                f("tcp", "0", Some("127.0.0.1"), "9"),
            ]
        );
        // Bad numbers are left to the config's validation.
        assert_eq!(parse("tcp 70000").unwrap(), vec![f("tcp", "0", None, "70000")]);
    }

    #[test]
    fn errors_name_the_word() {
        assert_eq!(parse("8080").unwrap_err().word, "8080");
        assert_eq!(parse("tcp").unwrap_err().word, "tcp");
        assert_eq!(parse("tcp udp 53").unwrap_err().word, "tcp");
        assert_eq!(parse("tcp host.example:22").unwrap_err().word, "host.example:22");
        assert_eq!(parse("tcp 22:").unwrap_err().word, "22:");
    }
}
