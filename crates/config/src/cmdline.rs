//! Configurations made from command-line values (`opennotr tcp 8080
//! --server …`, `opennotrd --domain … --key-file …`, `opennotrd init`).
//!
//! Both are written as the file they stand for and go through the file's
//! parser: the command line cannot accept what a file would refuse, and no
//! second validator drifts from the first. Errors then name the flag or
//! the argument instead of the file's key.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{ClientConfig, ConfigError, ServerConfig};

/// One forward of the command line, its parts as the user typed them
/// (validation reports a bad port in the file's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardArg {
    /// The argument(s) it came from, e.g. `tcp 10022:22`, for errors.
    pub arg: String,
    /// Plugin name (`tcp`, `udp`, `http`, ...).
    pub protocol: String,
    /// Public port; `0` = the server picks.
    pub public_port: String,
    /// Host the client dials; `None` = 127.0.0.1.
    pub local_ip: Option<String>,
    /// Port the client dials.
    pub local_port: String,
}

/// The client's command-line values.
#[derive(Debug, Clone, Default)]
pub struct ClientArgs {
    /// `--server` / `OPENNOTR_SERVER`.
    pub server: Option<String>,
    /// `--key`, `--key-file` or `OPENNOTR_KEY`.
    pub key: Option<String>,
    /// `--name` / `OPENNOTR_NAME`.
    pub name: Option<String>,
    /// `--domain`.
    pub domain: Option<String>,
    /// `--transport`.
    pub transport: Option<String>,
    /// The forwards, in command-line order.
    pub forwards: Vec<ForwardArg>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileShape<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    server_addr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<&'a str>,
    forwards: Vec<Value>,
}

/// Builds and validates a client configuration from command-line values.
/// An error's key is the flag (`--server`) or the forward argument
/// (`forward "tcp 70000"`) at fault.
pub fn client_from_args(args: &ClientArgs) -> Result<ClientConfig, ConfigError> {
    if args.server.is_none() {
        return Err(ConfigError::invalid("--server", "required (or set OPENNOTR_SERVER)"));
    }
    if args.key.is_none() {
        return Err(ConfigError::invalid("--key-file", "a key is required: set OPENNOTR_KEY or give --key-file FILE"));
    }
    if args.forwards.is_empty() {
        return Err(ConfigError::invalid("FORWARD", "nothing to publish: give e.g. `tcp 8080`"));
    }
    let forwards = args
        .forwards
        .iter()
        .map(|f| {
            let mut ports = Map::new();
            ports.insert(f.public_port.clone(), Value::String(f.local_port.clone()));
            let mut m = Map::new();
            m.insert("protocol".into(), f.protocol.clone().into());
            m.insert("ports".into(), Value::Object(ports));
            if let Some(ip) = &f.local_ip {
                m.insert("localIP".into(), ip.clone().into());
            }
            Value::Object(m)
        })
        .collect();
    let shape = FileShape {
        server_addr: args.server.as_deref(),
        key: args.key.as_deref(),
        name: args.name.as_deref(),
        domain: args.domain.as_deref(),
        transport: args.transport.as_deref(),
        forwards,
    };
    // JSON is YAML: the file parser reads it as it reads any client file.
    let text = serde_json::to_string(&shape).map_err(|e| ConfigError::invalid("arguments", e.to_string()))?;
    crate::parse_client(&text).map_err(|e| match e {
        ConfigError::Invalid { key, message } => ConfigError::Invalid { key: client_flag(&key, args), message },
        other => other,
    })
}

/// The flag or argument a client file key stands for.
fn client_flag(key: &str, args: &ClientArgs) -> String {
    let forward = key
        .strip_prefix("forwards[")
        .and_then(|r| r.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok())
        .and_then(|i| args.forwards.get(i));
    if let Some(f) = forward {
        return format!("forward {:?}", f.arg);
    }
    match key {
        "serverAddr" => "--server".into(),
        "key" => "--key-file".into(),
        "name" => "--name".into(),
        "domain" => "--domain".into(),
        "transport" => "--transport".into(),
        other => other.into(),
    }
}

/// The values of a server configuration written for the user.
#[derive(Debug, Clone)]
pub struct ServerTemplate {
    /// `server.listen`, e.g. `:10100`.
    pub listen: String,
    /// `server.domain`.
    pub domain: String,
    /// `server.authKey`.
    pub key: String,
}

/// The commented server file `opennotrd init` writes, and the one
/// `opennotrd --domain … --key-file …` runs on without writing it: so the
/// defaults of the file-less server are the file's, visible with `init`.
pub fn server_template(t: &ServerTemplate) -> String {
    // JSON strings are YAML double-quoted scalars: any key or domain the
    // user gave is quoted, never YAML syntax.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        r#"# opennotrd configuration, written by `opennotrd init`.
# Reference: docs/configuration.md and docs/cli.md. Durations are seconds.
# Unknown keys are errors: opennotrd exits with code 64 naming the key.

server:
  # Control listener for opennotr clients (":10100" = all IPv4 interfaces).
  listen: {listen}
  # Shared key of all clients, random from the system's CSPRNG. Clients
  # take it from OPENNOTR_KEY or --key-file. Keep this file private (0600).
  authKey: {key}
  # Zone of client domains: a client without --domain gets
  # <random>.<domain>.
  domain: {domain}

dhcp:
  # Virtual IP pool: each client gets one address of it.
  cidr: "100.64.242.1/24"
  ip: "100.64.242.1"

# Plugins clients may name: public TCP and UDP ports are taken from
# PortMin..PortMax when a client asks for public port 0.
plugin:
  tcp:
    PortMin: 10000
    PortMax: 20000
  udp:
    PortMin: 20000
    PortMax: 30000
  # The shared HTTP gateway (docs/gateway.md): `opennotr http 3000` is
  # then reachable at http://<client domain>/.
  # http:
  #   listen: "0.0.0.0:80"

# Embedded authoritative DNS server for the zone (docs/dns.md).
# dns:
#   listen: "0.0.0.0:53"

# Admin API, dashboard and metrics (docs/admin.md).
# admin:
#   listen: "127.0.0.1:7070"
#   token: "a long random string, 16 characters or more"
"#,
        listen = q(&t.listen),
        key = q(&t.key),
        domain = q(&t.domain),
    )
}

/// The server configuration of [`server_template`], validated; errors
/// name the flag (`--domain`, `--listen`, `--key-file`).
pub fn server_from_args(t: &ServerTemplate) -> Result<ServerConfig, ConfigError> {
    crate::parse_server(&server_template(t)).map_err(|e| match e {
        ConfigError::Invalid { key, message } => {
            let flag = match key.as_str() {
                "server.listen" => "--listen",
                "server.domain" => "--domain",
                "server.authKey" => "--key-file",
                _ => return ConfigError::Invalid { key, message },
            };
            ConfigError::Invalid { key: flag.into(), message }
        }
        other => other,
    })
}

/// A new shared key: 40 characters of [A-Za-z0-9] (238 bits) from the
/// thread's CSPRNG (ChaCha, seeded by the operating system).
pub fn random_key() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(arg: &str, protocol: &str, public: &str, ip: Option<&str>, local: &str) -> ForwardArg {
        ForwardArg {
            arg: arg.into(),
            protocol: protocol.into(),
            public_port: public.into(),
            local_ip: ip.map(Into::into),
            local_port: local.into(),
        }
    }

    fn args(forwards: Vec<ForwardArg>) -> ClientArgs {
        ClientArgs {
            server: Some("relay.example.com:10100".into()),
            key: Some("k".repeat(20)),
            forwards,
            ..ClientArgs::default()
        }
    }

    #[test]
    fn client_values_become_the_file_they_stand_for() {
        let a = args(vec![
            fwd("tcp 8080", "tcp", "0", None, "8080"),
            fwd("tcp 10022:192.168.1.5:22", "tcp", "10022", Some("192.168.1.5"), "22"),
            fwd("udp 5353", "udp", "0", None, "5353"),
        ]);
        let c = client_from_args(&a).unwrap();
        assert_eq!(c.servers, ["relay.example.com:10100"]);
        assert_eq!(c.forwards.len(), 3);
        assert_eq!(c.forwards[1].ports, vec![(10022, 22)]);
        assert_eq!(c.forwards[1].local_ip.to_string(), "192.168.1.5");
        assert_eq!(c.forwards[2].protocol, "udp");
        // Several servers, as --server or OPENNOTR_SERVER give them.
        let c = client_from_args(&ClientArgs { server: Some("a.example.com:1,b.example.com:2".into()), ..a }).unwrap();
        assert_eq!(c.servers, ["a.example.com:1", "b.example.com:2"]);
    }

    #[test]
    fn client_errors_name_the_flag_or_argument() {
        let mut a = args(vec![fwd("tcp 70000", "tcp", "0", None, "70000")]);
        assert_eq!(client_from_args(&a).unwrap_err().key(), Some("forward \"tcp 70000\""));
        a.forwards = vec![fwd("tcp 8080", "tcp", "0", None, "8080")];
        a.server = Some("nohost".into());
        assert_eq!(client_from_args(&a).unwrap_err().key(), Some("--server"));
        a.server = None;
        assert_eq!(client_from_args(&a).unwrap_err().key(), Some("--server"));
        a.server = Some("h:1".into());
        a.transport = Some("sctp".into());
        assert_eq!(client_from_args(&a).unwrap_err().key(), Some("--transport"));
        a.transport = None;
        a.key = None;
        assert_eq!(client_from_args(&a).unwrap_err().key(), Some("--key-file"));
    }

    #[test]
    fn the_template_parses_and_quotes_what_it_is_given() {
        let t = ServerTemplate { listen: ":10100".into(), domain: "relay.example.com".into(), key: random_key() };
        let c = server_from_args(&t).unwrap();
        assert_eq!(c.server.domain, "relay.example.com");
        assert_eq!(c.server.auth_key.as_ref().unwrap().expose(), t.key);
        assert!(crate::key_weaknesses(&t.key).is_empty());
        let odd = ServerTemplate { key: "a\"b: c # d\n".into(), ..t.clone() };
        assert_eq!(server_from_args(&odd).unwrap().server.auth_key.unwrap().expose(), "a\"b: c # d\n");
        let bad = ServerTemplate { domain: "no such domain".into(), ..t };
        assert_eq!(server_from_args(&bad).unwrap_err().key(), Some("--domain"));
    }
}
