//! Control messages: one enum per direction, JSON in a frame.
//!
//! JSON keeps the control channel easy to read in a capture (it is rare
//! traffic; the data path never goes through it) and lets a newer peer add
//! fields an older one ignores. Binary fields are lowercase hex.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::frame::FrameError;

/// Messages from the client (`opennotr`) to the server (`opennotrd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMessage {
    /// First message of a control connection: the client's SPAKE2 share.
    Hello {
        /// Protocol version the client speaks.
        version: u8,
        /// SPAKE2 message (side A).
        #[serde(with = "hex_bytes")]
        spake: Vec<u8>,
        /// The client asks for an unencrypted tunnel.
        #[serde(default)]
        plaintext: bool,
        /// Software name and version, for logs.
        #[serde(default)]
        software: String,
        /// The client's credential name; absent = the shared `authKey`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Key confirmation: proves the client derived the same key.
    Confirm {
        /// HMAC over the handshake transcript.
        #[serde(with = "hex_bytes")]
        mac: Vec<u8>,
    },
    /// After the handshake: who the client is and what it wants exposed.
    Register {
        /// Random per client process; lets a reconnect take back its VIP,
        /// domain and ports and replace its own stale session.
        client_id: String,
        /// Requested domain; `None` = let the server pick.
        #[serde(default)]
        domain: Option<String>,
        /// Requested forwards, one per public→local port pair.
        #[serde(default)]
        forwards: Vec<ForwardRequest>,
        /// Ports reachable at the client's VIP only (on the server host),
        /// besides the local ports of the forwards.
        #[serde(default)]
        vip_ports: Vec<VipPort>,
        /// The client accepts [`StreamProtocol::Mux`] streams.
        #[serde(default)]
        mux: bool,
        /// Bytes a second each way the client asks its whole session be
        /// limited to; the server may hold it lower (`None`: no wish).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<u64>,
    },
    /// First message of a data connection: claims stream `stream` of a session.
    DataHello {
        /// Session id from [`ServerMessage::Registered`].
        #[serde(with = "hex_bytes")]
        session: Vec<u8>,
        /// The stream the server asked for in [`ServerMessage::Connect`].
        stream: u64,
        /// Fresh random bytes; keys of this channel depend on them.
        #[serde(with = "hex_bytes")]
        nonce: Vec<u8>,
        /// HMAC proving the sender holds the session's keys.
        #[serde(with = "hex_bytes")]
        mac: Vec<u8>,
    },
    /// First message of a spare data channel: an idle channel of a session,
    /// opened ahead of need, that the server hands a stream later by naming
    /// `channel` in [`ServerMessage::Connect`].
    SpareHello {
        /// Session id from [`ServerMessage::Registered`].
        #[serde(with = "hex_bytes")]
        session: Vec<u8>,
        /// The client's id for this channel, unique within the session.
        channel: u64,
        /// Fresh random bytes; keys of this channel depend on them.
        #[serde(with = "hex_bytes")]
        nonce: Vec<u8>,
        /// HMAC proving the sender holds the session's keys.
        #[serde(with = "hex_bytes")]
        mac: Vec<u8>,
    },
    /// The client could not (or would not) open the stream.
    StreamRefused {
        /// Stream id from [`ServerMessage::Connect`].
        stream: u64,
        /// Why, for the server's log and the visitor-facing error.
        reason: String,
    },
    /// Keepalive probe; answered with [`ServerMessage::Pong`].
    Ping {
        /// Echoed back.
        seq: u64,
    },
    /// Answer to [`ServerMessage::Ping`].
    Pong {
        /// The probe's sequence number.
        seq: u64,
    },
    /// The health check of a grouped forward changed its verdict: the
    /// server spreads the group's connections over healthy members only.
    /// Sent only for forwards whose [`ForwardResult`] echoed their `group`
    /// (a server that predates groups echoes none, and would close the
    /// session on a message it does not know).
    ForwardHealth {
        /// The forward's index in `register`'s `forwards`.
        forward: u32,
        /// Whether its local target passes its check.
        healthy: bool,
    },
    /// After the handshake, in place of `register` (`opennotr check`):
    /// would the server accept this domain and these forwards now? The
    /// server answers [`ServerMessage::Checked`] and closes; it takes
    /// nothing (no session, VIP, domain, port or lease). An older server
    /// answers `refused` with `protocol_error`.
    Check {
        /// The domain `register` would ask for; `None` = the server picks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
        /// The forwards `register` would ask for.
        #[serde(default)]
        forwards: Vec<ForwardRequest>,
    },
}

/// Messages from the server to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMessage {
    /// Answer to `hello`: the server's SPAKE2 share and key confirmation.
    Challenge {
        /// Protocol version the server speaks.
        version: u8,
        /// SPAKE2 message (side B).
        #[serde(with = "hex_bytes")]
        spake: Vec<u8>,
        /// HMAC over the transcript, proving the server knows the key.
        #[serde(with = "hex_bytes")]
        mac: Vec<u8>,
        /// Software name and version, for logs.
        #[serde(default)]
        software: String,
    },
    /// The connection is refused; the server closes it after this.
    /// Frozen across protocol versions.
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable explanation, printed by the client.
        message: String,
    },
    /// The session is up.
    Registered {
        /// Session id, quoted by data connections.
        #[serde(with = "hex_bytes")]
        session: Vec<u8>,
        /// The client's virtual IP.
        vip: Ipv4Addr,
        /// The client's domain.
        domain: String,
        /// One result per requested forward, in request order.
        forwards: Vec<ForwardResult>,
        /// How many spare data channels the server keeps for the client
        /// (`spare_hello`); 0 (and servers that predate them) = none.
        #[serde(default)]
        spares: u16,
        /// The session's bandwidth limit in force, bytes a second each way
        /// (`None`: unlimited, or a server that predates limits).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<u64>,
    },
    /// Open stream `stream` to `target` by dialing it and then the server,
    /// or, when `channel` is set, on that spare channel, where the stream's
    /// first bytes may already be waiting.
    Connect {
        /// Stream id to quote in `data_hello` (and `stream_refused`).
        stream: u64,
        /// Transport of the target.
        protocol: StreamProtocol,
        /// Where to connect; must be one of the client's declared targets.
        target: SocketAddr,
        /// The visitor's address, for logs and a PROXY protocol header.
        #[serde(default)]
        peer: Option<SocketAddr>,
        /// The server address the visitor reached, where known: the
        /// destination of a PROXY protocol header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local: Option<SocketAddr>,
        /// The spare channel (its `spare_hello` id) that carries the stream;
        /// absent = dial a data channel for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<u64>,
    },
    /// Keepalive probe; answered with [`ClientMessage::Pong`].
    Ping {
        /// Echoed back.
        seq: u64,
    },
    /// Answer to [`ClientMessage::Ping`].
    Pong {
        /// The probe's sequence number.
        seq: u64,
    },
    /// The server is shutting down; reconnect later.
    GoingAway {
        /// Why.
        reason: String,
    },
    /// Answer to [`ClientMessage::Check`]; the server closes after it.
    Checked {
        /// Why a `register` now would be refused as a whole (maximum of
        /// clients, no free VIP, revoked credential); `None` = it would not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_error: Option<String>,
        /// Why the domain asked for would be refused (not allowed, taken,
        /// invalid); `None` = it would be given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain_error: Option<String>,
        /// One entry per forward asked about, in order: `error` `None` =
        /// it would start. `public_port` and `url` are not set: nothing
        /// was taken.
        #[serde(default)]
        forwards: Vec<ForwardResult>,
    },
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefuseCode {
    /// The peers' keys differ.
    BadKey,
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// The client asked for plaintext and the server does not allow it.
    PlaintextNotAllowed,
    /// The requested domain is held by another live client.
    DomainTaken,
    /// The requested domain is not acceptable.
    DomainInvalid,
    /// No virtual IP is free.
    PoolExhausted,
    /// The server has as many clients as it accepts.
    TooManyClients,
    /// More forwards than the server allows per client.
    TooManyForwards,
    /// A handshake step took too long.
    Timeout,
    /// The peer sent something it should not have.
    ProtocolError,
    /// The server is shutting down.
    ShuttingDown,
    /// The client's credential does not allow the requested domain.
    DomainNotAllowed,
    /// Too many failed handshakes came from the client's address: its
    /// handshakes are refused for a while (the message says how long).
    TooManyFailures,
    /// The server cannot take the client now: it is a node of a cluster
    /// and cannot reach the cluster's state (etcd) to claim the domain.
    /// Retry, here or on another server.
    ClusterUnavailable,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl RefuseCode {
    /// Whether retrying with the same configuration can ever succeed.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            RefuseCode::BadKey
                | RefuseCode::VersionMismatch
                | RefuseCode::PlaintextNotAllowed
                | RefuseCode::DomainInvalid
                | RefuseCode::DomainNotAllowed
                | RefuseCode::TooManyForwards
        )
    }
}

impl std::fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown"))
    }
}

/// Transport of a stream's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamProtocol {
    /// A byte stream, relayed as is.
    Tcp,
    /// Datagrams, framed with [`crate::datagram`].
    Udp,
    /// Many byte streams to the target in one ([`crate::mux`] frames),
    /// each a connection the client makes. Only to clients that said
    /// `mux` in `register`.
    Mux,
}

impl StreamProtocol {
    /// What the client dials for a stream of this protocol: a multiplexed
    /// stream's connections are TCP.
    pub fn dialed(self) -> StreamProtocol {
        match self {
            StreamProtocol::Mux => StreamProtocol::Tcp,
            p => p,
        }
    }
}

/// One requested forward: a public port of a protocol to a local target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// Plugin name (`tcp`, `udp`, ...).
    pub protocol: String,
    /// Requested public port; 0 = the server picks.
    pub public_port: u16,
    /// Host the client dials.
    pub local_ip: IpAddr,
    /// Port the client dials.
    pub local_port: u16,
    /// Opaque per-forward configuration for the plugin.
    #[serde(default)]
    pub raw_config: Option<String>,
    /// The load-balanced group this forward joins; absent = a forward of
    /// its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRequest>,
    /// Who may reach the forward, as the client narrows it (the server
    /// adds its own rules for the client, which these cannot widen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessRules>,
    /// Bytes a second each way the client asks this forward be limited
    /// to; the server may hold it lower (`None`: no wish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
}

/// A forward's load-balanced group: clients naming the same group (and
/// holding its key) serve one public port or domain together.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRequest {
    /// The group's name, shared by its members.
    pub name: String,
    /// [`GroupRequest::digest`] of the name and the group key, lowercase
    /// hex: the key itself never crosses the wire (plaintext tunnels exist)
    /// and never appears in a log.
    pub key: String,
    /// How the group spreads connections; every member must agree.
    #[serde(default)]
    pub balance: Balance,
}

/// Without the digest: it proves membership as the key does, and a
/// message may be logged.
impl std::fmt::Debug for GroupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRequest").field("name", &self.name).field("balance", &self.balance).finish_non_exhaustive()
    }
}

impl GroupRequest {
    /// The digest members prove the group key with: SHA-256 over a label,
    /// the name and the key, so one key gives different digests in
    /// different groups.
    pub fn digest(name: &str, key: &str) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"opennotr group key\0");
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(key.as_bytes());
        hex::encode(ctx.finish().as_ref())
    }
}

/// How a group picks the member for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Balance {
    /// Each healthy member in turn.
    #[default]
    RoundRobin,
    /// The healthy member with the fewest open streams.
    LeastConn,
    /// A policy this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Unknown => "unknown",
        })
    }
}

/// A forward's access rules as the client sends them: text, parsed and
/// bounded by the server (a client is not trusted to send valid CIDRs or
/// cheap hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRules {
    /// CIDRs visitors must come from; empty = any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// CIDRs refused even when allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// HTTP basic auth users (`http`, `https` and `h2c` forwards only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub basic_auth: Vec<BasicAuthUser>,
}

/// One HTTP basic auth user: a name and a password hash (argon2id in PHC
/// form, or bcrypt), never a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuthUser {
    /// The user name.
    pub user: String,
    /// `$argon2id$...` or `$2b$...`.
    pub hash: String,
}

impl std::fmt::Debug for BasicAuthUser {
    // Hashes stay out of logs: a leaked hash is an offline guessing target.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuthUser").field("user", &self.user).finish_non_exhaustive()
    }
}

/// A port the client exposes on its virtual IP only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipPort {
    /// Transport.
    pub protocol: StreamProtocol,
    /// The port at the VIP; the client dials the same port.
    pub port: u16,
    /// Host the client dials.
    pub local_ip: IpAddr,
}

/// What became of one requested forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardResult {
    /// The request this answers.
    pub request: ForwardRequest,
    /// Public port actually listening, when the plugin has one.
    #[serde(default)]
    pub public_port: Option<u16>,
    /// How visitors reach it, e.g. `tcp://open.notr.tech:10022`.
    #[serde(default)]
    pub url: Option<String>,
    /// Why the forward did not start; `None` = it runs.
    #[serde(default)]
    pub error: Option<String>,
    /// The forward's bandwidth limit in force, bytes a second each way
    /// (`None`: unlimited, or a server that predates limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
}

/// The first frame of a stream on a node link (docs/cluster.md): which
/// connection of the cluster the bytes after it are. The node that opened
/// the link sends it; the bytes follow at once, with no answer awaited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeStream {
    /// A visitor's connection for the receiving node's gateway, from its
    /// first byte: it enters the `http` port, or the TLS port.
    Gateway {
        /// `http`, `tls` or `h2c`.
        port: GatewayPort,
        /// The visitor's address.
        visitor: SocketAddr,
        /// Where the visitor reached the cluster (the sending node's
        /// address), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reached: Option<SocketAddr>,
    },
    /// A connection to port `port` of a client's VIP `vip`, which the
    /// receiving node's client holds, from `visitor` on the sending node;
    /// with `udp`, a UDP flow, its datagrams framed as on a tunnel stream
    /// ([`crate::datagram`]).
    Vip {
        /// The client's VIP.
        vip: Ipv4Addr,
        /// The port at the VIP.
        port: u16,
        /// Who connects (on the sending node's host).
        visitor: SocketAddr,
        /// A UDP flow rather than a TCP connection.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        udp: bool,
    },
    /// The receiving node's live sessions, for the sending node's admin
    /// API: it answers with them (JSON) and closes the stream. (A struct
    /// variant: serde refuses unknown fields only in those.)
    Sessions {},
}

/// A gateway port a carried connection enters ([`NodeStream::Gateway`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayPort {
    /// The `http` port.
    Http,
    /// The TLS port (`https` and `tls`).
    Tls,
    /// The `h2c` port.
    H2c,
}

macro_rules! json_codec {
    ($t:ty) => {
        impl $t {
            /// Serialises to a frame body.
            pub fn to_bytes(&self) -> Vec<u8> {
                // Serialising these types cannot fail: no maps with
                // non-string keys, no custom serialisers that error.
                serde_json::to_vec(self).unwrap_or_default()
            }
            /// Parses a frame body.
            pub fn from_bytes(b: &[u8]) -> Result<Self, FrameError> {
                serde_json::from_slice(b).map_err(|e| FrameError::Malformed(e.to_string()))
            }
        }
    };
}
json_codec!(ClientMessage);
json_codec!(ServerMessage);
json_codec!(NodeStream);

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        // Every binary field is at most a few dozen bytes.
        if s.len() > 512 {
            return Err(serde::de::Error::custom("hex field too long"));
        }
        hex::decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn node_stream_headers_are_strict() {
        let h = NodeStream::Gateway {
            port: GatewayPort::Tls,
            visitor: "203.0.113.7:50000".parse().unwrap(),
            reached: Some("198.51.100.1:443".parse().unwrap()),
        };
        assert_eq!(
            String::from_utf8(h.to_bytes()).unwrap(),
            r#"{"to":"gateway","port":"tls","visitor":"203.0.113.7:50000","reached":"198.51.100.1:443"}"#
        );
        assert_eq!(NodeStream::from_bytes(&h.to_bytes()), Ok(h));
        let v = NodeStream::Vip {
            vip: Ipv4Addr::new(100, 64, 0, 2),
            port: 22,
            visitor: "100.64.0.1:4000".parse().unwrap(),
            udp: false,
        };
        assert_eq!(NodeStream::from_bytes(&v.to_bytes()), Ok(v));
        let u = NodeStream::Vip {
            vip: Ipv4Addr::new(100, 64, 0, 2),
            port: 53,
            visitor: "100.64.0.1:4000".parse().unwrap(),
            udp: true,
        };
        assert!(String::from_utf8(u.to_bytes()).unwrap().ends_with(r#","udp":true}"#));
        assert_eq!(NodeStream::from_bytes(&u.to_bytes()), Ok(u));
        assert_eq!((NodeStream::Sessions {}).to_bytes(), br#"{"to":"sessions"}"#);
        assert_eq!(NodeStream::from_bytes(br#"{"to":"sessions"}"#), Ok(NodeStream::Sessions {}));
        for bad in [
            r#"{"to":"gateway","port":"ftp","visitor":"1.2.3.4:5"}"#,
            r#"{"to":"gateway","port":"http"}"#,
            r#"{"to":"gateway","port":"http","visitor":"1.2.3.4:5","extra":1}"#,
            r#"{"to":"vip","vip":"100.64.0.2","port":70000,"visitor":"1.2.3.4:5"}"#,
            r#"{"to":"elsewhere"}"#,
            r#"{"to":"sessions","all":true}"#,
        ] {
            assert!(NodeStream::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    fn arb_forward() -> impl Strategy<Value = ForwardRequest> {
        let group = ("[a-z.]{1,10}", "[0-9a-f]{64}", any::<bool>()).prop_map(|(name, key, lc)| GroupRequest {
            name,
            key,
            balance: if lc { Balance::LeastConn } else { Balance::RoundRobin },
        });
        let access = (
            proptest::collection::vec("[0-9./]{1,18}", 0..3),
            proptest::collection::vec("[0-9a-f:/]{1,20}", 0..3),
            proptest::collection::vec(("[a-z]{1,8}", "\\$2b\\$[./A-Za-z0-9$]{1,20}"), 0..2),
        )
            .prop_map(|(allow, deny, users)| AccessRules {
                allow,
                deny,
                basic_auth: users.into_iter().map(|(user, hash)| BasicAuthUser { user, hash }).collect(),
            });
        (
            "[a-z]{1,8}",
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            proptest::option::of(".{0,20}"),
            proptest::option::of(group),
            proptest::option::of(access),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(protocol, public_port, ip, local_port, raw_config, group, access, bandwidth)| {
                ForwardRequest {
                    protocol,
                    public_port,
                    local_ip: IpAddr::from(ip),
                    local_port,
                    raw_config,
                    group,
                    access,
                    bandwidth,
                }
            })
    }

    fn arb_client() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            (
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<bool>(),
                ".{0,10}",
                proptest::option::of("[a-z]{1,10}")
            )
                .prop_map(|(version, spake, plaintext, software, name)| {
                    ClientMessage::Hello { version, spake, plaintext, software, name }
                }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|mac| ClientMessage::Confirm { mac }),
            (
                ".{0,20}",
                proptest::option::of("[a-z.]{1,20}"),
                proptest::collection::vec(arb_forward(), 0..4),
                any::<bool>()
            )
                .prop_map(|(client_id, domain, forwards, mux)| ClientMessage::Register {
                    client_id,
                    domain,
                    forwards,
                    mux,
                    bandwidth: mux.then_some(1_000_000),
                    vip_ports: vec![VipPort {
                        protocol: StreamProtocol::Udp,
                        port: 53,
                        local_ip: [127, 0, 0, 1].into()
                    }],
                }),
            (
                proptest::collection::vec(any::<u8>(), 16),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 16),
                proptest::collection::vec(any::<u8>(), 32)
            )
                .prop_map(|(session, stream, nonce, mac)| ClientMessage::DataHello {
                    session,
                    stream,
                    nonce,
                    mac
                }),
            (
                proptest::collection::vec(any::<u8>(), 16),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 16),
                proptest::collection::vec(any::<u8>(), 32)
            )
                .prop_map(|(session, channel, nonce, mac)| ClientMessage::SpareHello {
                    session,
                    channel,
                    nonce,
                    mac
                }),
            (any::<u64>(), ".{0,30}").prop_map(|(stream, reason)| ClientMessage::StreamRefused { stream, reason }),
            any::<u64>().prop_map(|seq| ClientMessage::Ping { seq }),
            any::<u64>().prop_map(|seq| ClientMessage::Pong { seq }),
            (any::<u32>(), any::<bool>())
                .prop_map(|(forward, healthy)| ClientMessage::ForwardHealth { forward, healthy }),
            (proptest::option::of("[a-z.]{1,20}"), proptest::collection::vec(arb_forward(), 0..3))
                .prop_map(|(domain, forwards)| ClientMessage::Check { domain, forwards }),
        ]
    }

    fn arb_server() -> impl Strategy<Value = ServerMessage> {
        let addr = (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p)));
        prop_oneof![
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(version, spake, mac)| ServerMessage::Challenge {
                    version,
                    spake,
                    mac,
                    software: String::new()
                }),
            (".{0,30}").prop_map(|message| ServerMessage::Refused { code: RefuseCode::DomainTaken, message }),
            (any::<[u8; 4]>(), "[a-z.]{1,20}", proptest::collection::vec(arb_forward(), 0..3), any::<u16>()).prop_map(
                |(vip, domain, reqs, spares)| {
                    ServerMessage::Registered {
                        session: vec![7; 16],
                        vip: Ipv4Addr::from(vip),
                        domain,
                        forwards: reqs
                            .into_iter()
                            .map(|request| ForwardResult {
                                request,
                                public_port: Some(1),
                                url: None,
                                error: Some("x".into()),
                                bandwidth: Some(spares.into()),
                            })
                            .collect(),
                        spares,
                        bandwidth: (spares % 2 == 1).then_some(spares.into()),
                    }
                }
            ),
            (any::<u64>(), any::<bool>(), addr.clone(), proptest::option::of(addr), proptest::option::of(any::<u64>()))
                .prop_map(|(stream, udp, target, peer, channel)| {
                    ServerMessage::Connect {
                        stream,
                        protocol: if udp { StreamProtocol::Udp } else { StreamProtocol::Tcp },
                        target,
                        peer,
                        local: None,
                        channel,
                    }
                }),
            any::<u64>().prop_map(|seq| ServerMessage::Ping { seq }),
            ".{0,20}".prop_map(|reason| ServerMessage::GoingAway { reason }),
            (
                proptest::option::of(".{0,20}"),
                proptest::option::of(".{0,20}"),
                proptest::collection::vec(arb_forward(), 0..3)
            )
                .prop_map(|(client_error, domain_error, reqs)| ServerMessage::Checked {
                    client_error,
                    domain_error,
                    forwards: reqs
                        .into_iter()
                        .map(|request| ForwardResult {
                            request,
                            public_port: None,
                            url: None,
                            error: None,
                            bandwidth: None
                        })
                        .collect(),
                }),
        ]
    }

    proptest! {
        #[test]
        fn client_messages_round_trip(m in arb_client()) {
            prop_assert_eq!(ClientMessage::from_bytes(&m.to_bytes()).unwrap(), m);
        }

        #[test]
        fn server_messages_round_trip(m in arb_server()) {
            prop_assert_eq!(ServerMessage::from_bytes(&m.to_bytes()).unwrap(), m);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = ClientMessage::from_bytes(&data);
            let _ = ServerMessage::from_bytes(&data);
        }
    }

    #[test]
    fn unknown_refuse_code_from_newer_peer() {
        let m = ServerMessage::from_bytes(br#"{"type":"refused","code":"quota_exceeded","message":"m"}"#).unwrap();
        assert_eq!(m, ServerMessage::Refused { code: RefuseCode::Unknown, message: "m".into() });
        assert_eq!(RefuseCode::BadKey.to_string(), "bad_key");
    }

    #[test]
    fn wire_shape_is_stable() {
        let m = ServerMessage::Refused { code: RefuseCode::VersionMismatch, message: "upgrade".into() };
        assert_eq!(
            String::from_utf8(m.to_bytes()).unwrap(),
            r#"{"type":"refused","code":"version_mismatch","message":"upgrade"}"#
        );
    }

    #[test]
    fn spare_fields_are_compatible_with_older_peers() {
        // An older server's `registered` has no `spares`: none granted.
        let m = ServerMessage::from_bytes(
            br#"{"type":"registered","session":"00","vip":"100.64.0.2","domain":"a.b","forwards":[]}"#,
        )
        .unwrap();
        assert!(matches!(m, ServerMessage::Registered { spares: 0, .. }));
        // A connect without a spare channel keeps the shape older clients parse.
        let c = ServerMessage::Connect {
            stream: 3,
            protocol: StreamProtocol::Tcp,
            target: ([127, 0, 0, 1], 22).into(),
            peer: None,
            local: None,
            channel: None,
        };
        assert_eq!(
            String::from_utf8(c.to_bytes()).unwrap(),
            r#"{"type":"connect","stream":3,"protocol":"tcp","target":"127.0.0.1:22","peer":null}"#
        );
    }

    #[test]
    fn groups_are_compatible_with_older_peers() {
        let old = r#"{"protocol":"tcp","public_port":0,"local_ip":"127.0.0.1","local_port":22,"raw_config":null}"#;
        let f: ForwardRequest = serde_json::from_str(old).unwrap();
        assert_eq!(f.group, None);
        // Without a group, the shape older servers parse.
        assert_eq!(serde_json::to_string(&f).unwrap(), old);
        let key = GroupRequest::digest("web", "k");
        assert_eq!(key.len(), 64);
        let g = format!(r#"{{"name":"web","key":"{key}","balance":"weighted"}}"#);
        let with: ForwardRequest =
            serde_json::from_str(&old.replace("null}", &format!("null,\"group\":{g}}}"))).unwrap();
        let group = with.group.unwrap();
        assert_eq!(group.balance, Balance::Unknown, "a newer peer's policy parses, to be refused by name");
        assert!(!format!("{group:?}").contains(&key), "the digest shows in Debug");
        let m = ClientMessage::ForwardHealth { forward: 2, healthy: false };
        assert_eq!(
            String::from_utf8(m.to_bytes()).unwrap(),
            r#"{"type":"forward_health","forward":2,"healthy":false}"#
        );
        // The key is bound to the name.
        assert_ne!(GroupRequest::digest("web", "k"), GroupRequest::digest("we", "bk"));
    }

    #[test]
    fn bandwidth_fields_are_compatible_with_older_peers() {
        // An older server's `registered`, and an older client's `register`:
        // no limits, and nothing else changes.
        let m = ServerMessage::from_bytes(
            br#"{"type":"registered","session":"00","vip":"100.64.0.2","domain":"a.b","forwards":[{"request":{"protocol":"tcp","public_port":0,"local_ip":"127.0.0.1","local_port":22},"public_port":20001}]}"#,
        )
        .unwrap();
        match m {
            ServerMessage::Registered { bandwidth: None, forwards, .. } => {
                assert_eq!((forwards[0].bandwidth, forwards[0].request.bandwidth), (None, None));
            }
            other => panic!("{other:?}"),
        }
        let r = ClientMessage::from_bytes(br#"{"type":"register","client_id":"c"}"#).unwrap();
        assert!(matches!(r, ClientMessage::Register { bandwidth: None, .. }));
        // Unset, they are left out: what an older peer receives is what it knew.
        let f = ForwardRequest {
            protocol: "tcp".into(),
            public_port: 0,
            local_ip: [127, 0, 0, 1].into(),
            local_port: 22,
            raw_config: None,
            group: None,
            access: None,
            bandwidth: None,
        };
        let r = ClientMessage::Register {
            client_id: "c".into(),
            domain: None,
            forwards: vec![f.clone()],
            vip_ports: vec![],
            mux: false,
            bandwidth: None,
        };
        assert!(!String::from_utf8(r.to_bytes()).unwrap().contains("bandwidth"));
        let r = ClientMessage::Register {
            client_id: "c".into(),
            domain: None,
            forwards: vec![ForwardRequest { bandwidth: Some(300_000), ..f }],
            vip_ports: vec![],
            mux: false,
            bandwidth: Some(5_000_000),
        };
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.contains(r#""bandwidth":300000"#) && text.contains(r#""bandwidth":5000000"#), "{text}");
    }
}
