//! The JSON under `plugin.http` / `plugin.h2c` / `plugin.https` / `plugin.tls`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use opennotr_plugin::PluginError;

/// How a gateway plugin serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Not configured (`{}`): forwards are refused with a reason.
    Off,
    /// The embedded gateway on `listen`.
    Embedded {
        /// Where the shared port listens.
        listen: SocketAddr,
    },
    /// The original's external (OpenResty) gateway, through its admin API.
    External {
        /// The admin API's URL.
        admin_url: String,
        /// `adminSecret`: sent as `Authorization: Bearer <secret>`. `None`
        /// only so the original's files (which have none) still load: the
        /// plugin then refuses its forwards, naming the key.
        secret: Option<opennotr_config::Secret>,
    },
}

/// A gateway plugin's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Embedded, external or off.
    pub mode: Mode,
    /// Requests for any name below a client's domain route to it.
    pub wildcard: bool,
    /// How long a visitor may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a visitor connection may stay without traffic and without
    /// a request in flight.
    pub idle_timeout: Duration,
    /// How long a visitor may take to send a request's body, in all.
    pub body_timeout: Duration,
    /// How long the service may take to start its response, and pause in
    /// it (nginx's `proxy_read_timeout`).
    pub response_timeout: Duration,
    /// How long a visitor may leave a response unread (nginx's
    /// `send_timeout`).
    pub send_timeout: Duration,
    /// Most visitor connections the listener holds at once.
    pub max_connections: usize,
    /// Most visitor connections from one address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// `https` only: where the certificates are (`cert`, `key`, `certDir`).
    pub certs: Option<CertFiles>,
    /// `https` only: how often the certificate files are checked for
    /// changes (`reloadInterval`).
    pub reload_interval: Duration,
    /// `https` only: automatic certificates (`acme`).
    pub acme: Option<crate::acme::AcmeConfig>,
}

/// The certificate files of the embedded `https` gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The default certificate chain (PEM), served when no per-domain one
    /// matches (or the visitor sends no SNI).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// Per-domain certificates: `<domain>.pem` + `<domain>.key`, wildcard
    /// ones as `_.<parent>.pem` + `_.<parent>.key`.
    pub cert_dir: Option<PathBuf>,
}

const KEYS: &[&str] = &[
    "listen",
    "adminUrl",
    "adminSecret",
    "reconcileInterval",
    "wildcard",
    "headerTimeout",
    "idleTimeout",
    "bodyTimeout",
    "responseTimeout",
    "sendTimeout",
    "maxConnections",
    "maxConnectionsPerIp",
];
/// What `https` takes beyond [`KEYS`].
const HTTPS_KEYS: &[&str] = &["cert", "key", "certDir", "reloadInterval", "acme"];
const TLS_KEYS: &[&str] = &["listen", "wildcard", "headerTimeout", "maxConnections", "maxConnectionsPerIp"];

/// Default `maxConnections`: far above what one server's file limit
/// usually allows, so it only matters once that is raised.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `maxConnectionsPerIp`: a browser opens 6 per host; a NAT of a
/// few dozen busy users stays well below.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

impl GatewayConfig {
    /// Parses the config of plugin `name`; errors name `plugin.<name>.<key>`.
    pub fn parse(name: &str, v: &serde_json::Value) -> Result<GatewayConfig, PluginError> {
        let err = |key: &str, message: String| PluginError::Config { key: format!("plugin.{name}.{key}"), message };
        let empty = serde_json::Map::new();
        let obj = match v {
            serde_json::Value::Null => &empty,
            serde_json::Value::Object(o) => o,
            _ => {
                return Err(PluginError::Config {
                    key: format!("plugin.{name}"),
                    message: "expected an object such as {\"listen\": \"0.0.0.0:80\"}".into(),
                })
            }
        };
        let keys: Vec<&str> = match name {
            "https" => KEYS.iter().chain(HTTPS_KEYS).copied().collect(),
            "tls" => TLS_KEYS.to_vec(),
            _ => KEYS.to_vec(),
        };
        for k in obj.keys() {
            if !keys.contains(&k.as_str()) {
                return Err(err(k, format!("unknown key (known: {})", keys.join(", "))));
            }
        }
        let string = |key: &str| -> Result<Option<String>, PluginError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(err(key, format!("expected a string, got {other}"))),
            }
        };
        let seconds = |key: &str, default: u64| -> Result<Duration, PluginError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(Duration::from_secs(default)),
                Some(serde_json::Value::Number(n)) => match n.as_f64() {
                    Some(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
                    _ => Err(err(key, format!("expected seconds in (0, 86400], got {n}"))),
                },
                Some(other) => Err(err(key, format!("expected a number of seconds, got {other}"))),
            }
        };
        let count = |key: &str, default: usize| -> Result<usize, PluginError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(serde_json::Value::Number(n)) => match n.as_u64() {
                    Some(v) if (1..=10_000_000).contains(&v) => Ok(v as usize),
                    _ => Err(err(key, format!("expected a whole number from 1 to 10000000, got {n}"))),
                },
                Some(other) => Err(err(key, format!("expected a whole number, got {other}"))),
            }
        };
        let listen = string("listen")?;
        let admin_url = string("adminUrl")?;
        let mode = match (listen, admin_url) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "adminUrl",
                    "give either listen (embedded gateway) or adminUrl (external), not both".into(),
                ))
            }
            (Some(l), None) => {
                Mode::Embedded { listen: opennotr_config::parse_listen(&l).map_err(|e| err("listen", e))? }
            }
            (None, Some(u)) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(err("adminUrl", format!("{u:?} is not an http(s) URL")));
                }
                Mode::External { admin_url: u, secret: admin_secret(obj).map_err(|m| err("adminSecret", m))? }
            }
            (None, None) => Mode::Off,
        };
        if obj.get("adminSecret").is_some_and(|v| !v.is_null()) && !matches!(mode, Mode::External { .. }) {
            return Err(err("adminSecret", "the external gateway's secret goes with adminUrl".into()));
        }
        let wildcard = match obj.get("wildcard") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => return Err(err("wildcard", format!("expected true or false, got {other}"))),
        };
        let path = |key: &str| -> Result<Option<PathBuf>, PluginError> {
            let Some(p) = string(key)? else { return Ok(None) };
            let p = PathBuf::from(p);
            let meta = std::fs::metadata(&p).map_err(|e| err(key, format!("{}: {e}", p.display())))?;
            if meta.is_dir() != (key == "certDir") {
                let what = if key == "certDir" { "a directory" } else { "a file" };
                return Err(err(key, format!("{} is not {what}", p.display())));
            }
            Ok(Some(p))
        };
        let certs = CertFiles { cert: path("cert")?, key: path("key")?, cert_dir: path("certDir")? };
        let certs = match (&certs.cert, &certs.key) {
            (Some(_), None) => return Err(err("key", "cert needs its key".into())),
            (None, Some(_)) => return Err(err("cert", "key needs its cert".into())),
            (None, None) if certs.cert_dir.is_none() => None,
            _ => Some(certs),
        };
        let acme = match obj.get("acme") {
            None | Some(serde_json::Value::Null) => None,
            Some(a) => Some(crate::acme::AcmeConfig::parse(a)?),
        };
        if acme.is_some() && !matches!(mode, Mode::Embedded { .. }) {
            return Err(err("acme", "automatic certificates are for the embedded gateway (listen)".into()));
        }
        if name == "https" {
            match (&mode, &certs) {
                (Mode::Embedded { .. }, None) if acme.is_none() => return Err(err(
                    "cert",
                    "the embedded https gateway needs certificates: cert and key (a default one), certDir and/or acme"
                        .into(),
                )),
                (Mode::External { .. } | Mode::Off, Some(_)) => {
                    return Err(err("listen", "cert, key and certDir are for the embedded gateway (listen)".into()))
                }
                _ => {}
            }
        }
        Ok(GatewayConfig {
            mode,
            wildcard,
            header_timeout: seconds("headerTimeout", if name == "tls" { 10 } else { 30 })?,
            idle_timeout: seconds("idleTimeout", 120)?,
            body_timeout: seconds("bodyTimeout", 300)?,
            response_timeout: seconds("responseTimeout", 60)?,
            send_timeout: seconds("sendTimeout", 60)?,
            max_connections: count("maxConnections", DEFAULT_MAX_CONNECTIONS)?,
            max_connections_per_ip: count("maxConnectionsPerIp", DEFAULT_MAX_CONNECTIONS_PER_IP)?,
            certs,
            reload_interval: seconds("reloadInterval", 5)?,
            acme,
        })
    }
}

/// Fewest characters of `adminSecret` (the shipped gateway's own minimum).
pub(crate) const MIN_ADMIN_SECRET: usize = 16;

/// `adminSecret`: a header-safe string (visible ASCII, no spaces) of 16
/// characters or more. Messages never repeat the value.
fn admin_secret(obj: &serde_json::Map<String, serde_json::Value>) -> Result<Option<opennotr_config::Secret>, String> {
    let s = match obj.get("adminSecret") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err("expected a string".into()),
    };
    if s.len() < MIN_ADMIN_SECRET || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "expected {MIN_ADMIN_SECRET} or more visible ASCII characters without spaces \
             (the same as the gateway's admin.secret, e.g. from `openssl rand -hex 32`)"
        ));
    }
    Ok(Some(opennotr_config::Secret::new(s.clone())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The key a config error names (also used by `acme`'s tests).
    pub(crate) fn key_of(e: PluginError) -> String {
        match e {
            PluginError::Config { key, .. } => key,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn parses_the_modes() {
        let c =
            GatewayConfig::parse("http", &json!({"listen": "0.0.0.0:80", "wildcard": true, "idleTimeout": 5})).unwrap();
        assert_eq!(c.mode, Mode::Embedded { listen: "0.0.0.0:80".parse().unwrap() });
        assert!(c.wildcard);
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        let secret = "0123456789abcdef0123";
        let c =
            GatewayConfig::parse("h2c", &json!({"adminUrl": "http://127.0.0.1:81/upstreams", "adminSecret": secret}))
                .unwrap();
        let want = Some(opennotr_config::Secret::new(secret));
        assert_eq!(c.mode, Mode::External { admin_url: "http://127.0.0.1:81/upstreams".into(), secret: want });
        assert!(!format!("{c:?}").contains(secret), "{c:?}");
        // The original's files have no secret: they load, and the plugin
        // refuses its forwards naming the key.
        let c = GatewayConfig::parse("h2c", &json!({"adminUrl": "http://127.0.0.1:81/upstreams"})).unwrap();
        assert_eq!(c.mode, Mode::External { admin_url: "http://127.0.0.1:81/upstreams".into(), secret: None });
        assert_eq!(GatewayConfig::parse("http", &json!({})).unwrap().mode, Mode::Off);
        // Go-style addresses, as every other listen key takes them.
        let c = GatewayConfig::parse("http", &json!({"listen": ":8080", "maxConnectionsPerIp": 8})).unwrap();
        assert_eq!(c.mode, Mode::Embedded { listen: "0.0.0.0:8080".parse().unwrap() });
        assert_eq!((c.max_connections, c.max_connections_per_ip), (DEFAULT_MAX_CONNECTIONS, 8));
        assert_eq!(c.response_timeout, Duration::from_secs(60));
        let c = GatewayConfig::parse("tls", &json!({"listen": "localhost:443"})).unwrap();
        assert_eq!(c.mode, Mode::Embedded { listen: "127.0.0.1:443".parse().unwrap() });
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(key_of(GatewayConfig::parse("http", &json!({"lsiten": ":80"})).unwrap_err()), "plugin.http.lsiten");
        assert_eq!(key_of(GatewayConfig::parse("h2c", &json!({"listen": "980"})).unwrap_err()), "plugin.h2c.listen");
        assert_eq!(
            key_of(GatewayConfig::parse("h2c", &json!({"listen": "a.b:980"})).unwrap_err()),
            "plugin.h2c.listen"
        );
        for (key, v) in [("maxConnections", json!(0)), ("maxConnectionsPerIp", json!(1.5)), ("sendTimeout", json!(-1))]
        {
            let mut o = json!({"listen": "0.0.0.0:80"});
            o[key] = v;
            assert_eq!(key_of(GatewayConfig::parse("http", &o).unwrap_err()), format!("plugin.http.{key}"));
        }
        assert_eq!(
            key_of(GatewayConfig::parse("http", &json!({"listen": "0.0.0.0:80", "headerTimeout": 0})).unwrap_err()),
            "plugin.http.headerTimeout"
        );
        assert_eq!(
            key_of(GatewayConfig::parse("http", &json!({"wildcard": "yes"})).unwrap_err()),
            "plugin.http.wildcard"
        );
        assert_eq!(key_of(GatewayConfig::parse("http", &json!("x")).unwrap_err()), "plugin.http");
        assert_eq!(
            key_of(GatewayConfig::parse("http", &json!({"listen": "0.0.0.0:80", "cert": "/x"})).unwrap_err()),
            "plugin.http.cert"
        );
    }

    #[test]
    fn admin_secrets_are_checked_and_never_shown() {
        let url = "http://127.0.0.1:81/upstreams";
        for bad in [
            json!("short-secret"),
            json!("has a space in the middle"),
            json!("bad\u{7f}characters-0123456"),
            json!(12345678901234567_u64),
        ] {
            let e = GatewayConfig::parse("http", &json!({"adminUrl": url, "adminSecret": bad})).unwrap_err();
            let shown = e.to_string();
            assert_eq!(key_of(e), "plugin.http.adminSecret", "{bad}");
            let value = bad.as_str().map(str::to_string).unwrap_or_else(|| bad.to_string());
            assert!(!shown.contains(&value), "{shown}");
        }
        let e = GatewayConfig::parse("http", &json!({"listen": ":80", "adminSecret": "0123456789abcdef"})).unwrap_err();
        assert_eq!(key_of(e), "plugin.http.adminSecret");
    }

    #[test]
    fn https_and_tls_keys() {
        let dir = std::env::temp_dir().join(format!("opennotr-gw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        std::fs::write(&cert, "x").unwrap();
        let c = cert.display().to_string();
        let d = dir.display().to_string();
        let ok = GatewayConfig::parse(
            "https",
            &json!({"listen": "0.0.0.0:443", "cert": c, "key": c, "certDir": d, "reloadInterval": 0.5}),
        )
        .unwrap();
        assert_eq!(ok.certs.unwrap().cert_dir.unwrap(), dir);
        assert_eq!(ok.reload_interval, Duration::from_millis(500));
        let e = |v| key_of(GatewayConfig::parse("https", &v).unwrap_err());
        assert_eq!(e(json!({"listen": "0.0.0.0:443"})), "plugin.https.cert");
        assert_eq!(e(json!({"listen": "0.0.0.0:443", "cert": c})), "plugin.https.key");
        assert_eq!(e(json!({"listen": "0.0.0.0:443", "cert": "/nonexistent/x.pem", "key": c})), "plugin.https.cert");
        assert_eq!(e(json!({"listen": "0.0.0.0:443", "certDir": c})), "plugin.https.certDir");
        assert_eq!(e(json!({"listen": "0.0.0.0:443", "crt": c})), "plugin.https.crt");
        // The original's external mode keeps parsing.
        let ext = GatewayConfig::parse("https", &json!({"adminUrl": "http://127.0.0.1:81/upstreams"})).unwrap();
        assert!(matches!(ext.mode, Mode::External { .. }));
        assert_eq!(
            key_of(GatewayConfig::parse("tls", &json!({"listen": "0.0.0.0:443", "cert": c})).unwrap_err()),
            "plugin.tls.cert"
        );
        assert!(GatewayConfig::parse("tls", &json!({"listen": "0.0.0.0:443"})).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
