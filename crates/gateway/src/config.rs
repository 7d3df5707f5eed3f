//! The JSON under `plugin.http` / `plugin.h2c`.

use std::net::SocketAddr;
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
}

const KEYS: &[&str] = &["listen", "adminUrl", "wildcard", "headerTimeout", "idleTimeout"];

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
        for k in obj.keys() {
            if !KEYS.contains(&k.as_str()) {
                return Err(err(k, format!("unknown key (known: {})", KEYS.join(", "))));
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
        let listen = string("listen")?;
        let admin_url = string("adminUrl")?;
        let mode = match (listen, admin_url) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "adminUrl",
                    "give either listen (embedded gateway) or adminUrl (external), not both".into(),
                ))
            }
            (Some(l), None) => Mode::Embedded {
                listen: l
                    .parse()
                    .map_err(|e| err("listen", format!("{l:?} is not an address such as 0.0.0.0:80: {e}")))?,
            },
            (None, Some(u)) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(err("adminUrl", format!("{u:?} is not an http(s) URL")));
                }
                Mode::External { admin_url: u }
            }
            (None, None) => Mode::Off,
        };
        let wildcard = match obj.get("wildcard") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => return Err(err("wildcard", format!("expected true or false, got {other}"))),
        };
        Ok(GatewayConfig {
            mode,
            wildcard,
            header_timeout: seconds("headerTimeout", 30)?,
            idle_timeout: seconds("idleTimeout", 120)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key_of(e: PluginError) -> String {
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
        let c = GatewayConfig::parse("h2c", &json!({"adminUrl": "http://127.0.0.1:81/upstreams"})).unwrap();
        assert_eq!(c.mode, Mode::External { admin_url: "http://127.0.0.1:81/upstreams".into() });
        assert_eq!(GatewayConfig::parse("http", &json!({})).unwrap().mode, Mode::Off);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(key_of(GatewayConfig::parse("http", &json!({"lsiten": ":80"})).unwrap_err()), "plugin.http.lsiten");
        assert_eq!(key_of(GatewayConfig::parse("h2c", &json!({"listen": ":980"})).unwrap_err()), "plugin.h2c.listen");
        assert_eq!(
            key_of(GatewayConfig::parse("http", &json!({"listen": "0.0.0.0:80", "headerTimeout": 0})).unwrap_err()),
            "plugin.http.headerTimeout"
        );
        assert_eq!(
            key_of(GatewayConfig::parse("http", &json!({"wildcard": "yes"})).unwrap_err()),
            "plugin.http.wildcard"
        );
        assert_eq!(key_of(GatewayConfig::parse("http", &json!("x")).unwrap_err()), "plugin.http");
    }
}
