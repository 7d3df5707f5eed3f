//! Writes the seed corpora, `fuzz/corpus/<target>/seed-*`: real inputs
//! made by the code's own encoders, the gateway's request-smuggling
//! corpus, and hand-written edge cases. Run it again after changing an
//! encoder or a target's input layout:
//!
//! ```sh
//! cargo run -p opennotr-fuzz-targets --example seeds
//! ```
//!
//! Inputs that libFuzzer found and kept (`-merge=1`) live beside the
//! seeds under their hash names; this only rewrites `seed-*` files.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use hickory_proto::op::{Edns, Message, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use opennotr_proto::handshake::{ClientHandshake, ServerHandshake};
use opennotr_proto::message::{
    Balance, ForwardRequest, ForwardResult, GroupRequest, RefuseCode, StreamProtocol, VipPort,
};
use opennotr_proto::mux::{self, Kind};
use opennotr_proto::{datagram, frame, ClientMessage, ServerMessage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The gateway's desync corpus (tests/tests/gateway_desync/corpus.rs),
/// read as it is: its cases' bytes become `http_request` seeds.
#[allow(dead_code)]
struct Case {
    id: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

#[allow(dead_code)]
enum Expect {
    Refuse(u16),
    Incomplete,
    Forward(&'static [Fwd]),
    ForwardThen(&'static [Fwd], u16),
}

#[allow(dead_code)]
struct Fwd {
    method: &'static str,
    target: &'static [u8],
    body: &'static [u8],
    absent: &'static [&'static str],
    present: &'static [(&'static str, &'static [u8])],
}

const FWD: Fwd = Fwd { method: "POST", target: b"/", body: b"", absent: &[], present: &[] };

#[path = "../../../tests/tests/gateway_desync/corpus.rs"]
#[allow(clippy::all)]
mod corpus;

/// Where the corpora are.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

/// The seeds of one target.
struct Seeds {
    dir: PathBuf,
    n: usize,
}

impl Seeds {
    /// Starts the target's seeds afresh (found inputs stay).
    fn new(target: &str) -> Seeds {
        let dir = root().join(target);
        std::fs::create_dir_all(&dir).expect("the corpus directory");
        for e in std::fs::read_dir(&dir).expect("the corpus directory") {
            let path = e.expect("an entry").path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                std::fs::remove_file(&path).expect("an old seed");
            }
        }
        Seeds { dir, n: 0 }
    }

    fn add(&mut self, name: &str, bytes: impl AsRef<[u8]>) {
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        write(&self.dir.join(format!("seed-{name}")), bytes.as_ref());
        self.n += 1;
    }

    /// `bytes` behind a control byte.
    fn ctl(&mut self, name: &str, ctl: u8, bytes: impl AsRef<[u8]>) {
        let mut v = vec![ctl];
        v.extend_from_slice(bytes.as_ref());
        self.add(&format!("{name}-{ctl}"), v);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn main() {
    let mut total = 0;
    for (name, make) in [
        ("frame", frames as fn(&mut Seeds)),
        ("message", messages),
        ("handshake", handshakes),
        ("record", records),
        ("datagram", datagrams),
        ("mux_frame", mux_frames),
        ("mux_session", mux_sessions),
        ("mux_state", mux_states),
        ("http_request", http_requests),
        ("http_response", http_responses),
        ("chunked", chunked_bodies),
        ("tls_hello", tls_hellos),
        ("h2c_name", h2c_names),
        ("dns_query", dns_queries),
        ("etcd_reply", etcd_replies),
        ("acme_reply", acme_replies),
        ("quic_framing", quic_framings),
        ("access_rules", access_rules),
    ] {
        let mut s = Seeds::new(name);
        make(&mut s);
        println!("{name}: {} seeds", s.n);
        total += s.n;
    }
    println!("{total} seeds in {}", root().display());
}

fn client_messages() -> Vec<(&'static str, ClientMessage)> {
    let (_, spake) = ClientHandshake::start(b"key", Some("alice"), false);
    let forward = ForwardRequest {
        protocol: "tcp".into(),
        public_port: 10022,
        local_ip: [127, 0, 0, 1].into(),
        local_port: 22,
        raw_config: Some("{\"x\":1}".into()),
        group: None,
        access: None,
        bandwidth: None,
    };
    vec![
        (
            "hello",
            ClientMessage::Hello {
                version: 1,
                spake,
                plaintext: false,
                software: "opennotr 0.1".into(),
                name: Some("alice".into()),
            },
        ),
        ("confirm", ClientMessage::Confirm { mac: vec![0xab; 32] }),
        (
            "register",
            ClientMessage::Register {
                client_id: "c1".into(),
                domain: Some("abc.open.notr.test".into()),
                forwards: vec![forward],
                vip_ports: vec![VipPort { protocol: StreamProtocol::Udp, port: 53, local_ip: [127, 0, 0, 1].into() }],
                mux: true,
                bandwidth: None,
            },
        ),
        (
            "data-hello",
            ClientMessage::DataHello { session: vec![1; 16], stream: 7, nonce: vec![2; 16], mac: vec![3; 32] },
        ),
        (
            "spare-hello",
            ClientMessage::SpareHello { session: vec![1; 16], channel: 2, nonce: vec![2; 16], mac: vec![3; 32] },
        ),
        ("stream-refused", ClientMessage::StreamRefused { stream: 7, reason: "connection refused".into() }),
        ("ping", ClientMessage::Ping { seq: u64::MAX }),
        ("pong", ClientMessage::Pong { seq: 0 }),
        ("forward-health", ClientMessage::ForwardHealth { forward: 3, healthy: false }),
        (
            "register-group",
            ClientMessage::Register {
                client_id: "c2".into(),
                domain: Some("shop.open.notr.test".into()),
                forwards: vec![ForwardRequest {
                    protocol: "http".into(),
                    public_port: 0,
                    local_ip: [127, 0, 0, 1].into(),
                    local_port: 3000,
                    raw_config: None,
                    group: Some(GroupRequest {
                        name: "shop".into(),
                        key: GroupRequest::digest("shop", "key"),
                        balance: Balance::LeastConn,
                    }),
                    access: None,
                    bandwidth: None,
                }],
                vip_ports: vec![],
                mux: true,
                bandwidth: None,
            },
        ),
    ]
}

fn server_messages() -> Vec<(&'static str, ServerMessage)> {
    let (_, hello) = ClientHandshake::start(b"key", None, false);
    let (_, spake, mac) = ServerHandshake::respond(b"key", None, &hello, false).expect("a genuine hello");
    let request = ForwardRequest {
        protocol: "http".into(),
        public_port: 0,
        local_ip: "::1".parse().expect("an address"),
        local_port: 8080,
        raw_config: None,
        group: None,
        access: None,
        bandwidth: None,
    };
    vec![
        ("challenge", ServerMessage::Challenge { version: 1, spake, mac, software: "opennotrd 0.1".into() }),
        ("refused", ServerMessage::Refused { code: RefuseCode::DomainTaken, message: "taken".into() }),
        (
            "registered",
            ServerMessage::Registered {
                session: vec![9; 16],
                vip: Ipv4Addr::new(100, 64, 242, 2),
                domain: "abc.open.notr.test".into(),
                forwards: vec![ForwardResult {
                    request,
                    public_port: Some(80),
                    url: Some("http://abc.open.notr.test".into()),
                    error: None,
                    bandwidth: None,
                }],
                spares: 4,
                bandwidth: None,
            },
        ),
        (
            "connect",
            ServerMessage::Connect {
                stream: 3,
                protocol: StreamProtocol::Mux,
                target: SocketAddr::from(([127, 0, 0, 1], 8080)),
                peer: Some("[2001:db8::1]:4000".parse().expect("an address")),
                local: Some("[2001:db8::2]:443".parse().expect("an address")),
                channel: None,
            },
        ),
        (
            "connect-spare",
            ServerMessage::Connect {
                stream: 4,
                protocol: StreamProtocol::Tcp,
                target: SocketAddr::from(([127, 0, 0, 1], 22)),
                peer: None,
                local: None,
                channel: Some(2),
            },
        ),
        ("ping", ServerMessage::Ping { seq: 1 }),
        ("pong", ServerMessage::Pong { seq: 1 }),
        ("going-away", ServerMessage::GoingAway { reason: "restart".into() }),
    ]
}

fn frames(s: &mut Seeds) {
    let mut conversation = BytesMut::from(&frame::preface()[..]);
    for (_, m) in client_messages() {
        frame::encode_frame(&m.to_bytes(), &mut conversation).expect("a small frame");
    }
    for ctl in [0, 5] {
        s.ctl("client-conversation", ctl, &conversation);
    }
    let mut one = BytesMut::new();
    frame::encode_frame(&server_messages()[0].1.to_bytes(), &mut one).expect("a small frame");
    s.ctl("challenge-frame", 0, &one);
    s.ctl("truncated", 3, &one[..one.len() / 2]);
    s.ctl("empty-frame", 0, [0, 0, 0, 0]);
    s.ctl("cap", 0, (frame::MAX_FRAME_LEN as u32).to_be_bytes());
    s.ctl("cap-plus-one", 0, (frame::MAX_FRAME_LEN as u32 + 1).to_be_bytes());
    s.ctl("all-ones", 1, [0xff; 8]);
    s.ctl("bad-preface", 0, b"GET / HTTP/1.1\r\n\r\n");
    s.ctl("nothing", 0, b"");
}

fn messages(s: &mut Seeds) {
    for (name, m) in client_messages() {
        s.add(&format!("client-{name}"), m.to_bytes());
    }
    for (name, m) in server_messages() {
        s.add(&format!("server-{name}"), m.to_bytes());
    }
    for (name, json) in [
        ("seq-as-string", r#"{"type":"ping","seq":"1"}"#),
        ("seq-negative", r#"{"type":"ping","seq":-1}"#),
        ("seq-float", r#"{"type":"ping","seq":1.0}"#),
        ("bad-hex", r#"{"type":"confirm","mac":"zz"}"#),
        ("odd-hex", r#"{"type":"confirm","mac":"abc"}"#),
        ("unknown-type", r#"{"type":"teleport"}"#),
        ("no-type", r#"{"seq":1}"#),
        ("type-twice", r#"{"type":"ping","type":"pong","seq":1}"#),
        ("unknown-refuse-code", r#"{"type":"refused","code":"quota_exceeded","message":"m"}"#),
        ("bad-vip", r#"{"type":"registered","session":"00","vip":"300.1.1.1","domain":"d","forwards":[]}"#),
        ("forwards-not-list", r#"{"type":"register","client_id":"c","forwards":{}}"#),
        ("deep", &format!("{}{}", "[".repeat(200), "]".repeat(200))),
        ("lone-surrogate", r#"{"type":"going_away","reason":"\ud800"}"#),
        ("not-json", "\u{0}\u{1}\u{2}"),
    ] {
        s.add(name, json);
    }
    s.add("long-hex", format!(r#"{{"type":"confirm","mac":"{}"}}"#, "ab".repeat(300)));
}

fn handshakes(s: &mut Seeds) {
    let input = |flags: u8, name: &[u8], spake: &[u8], mac: &[u8]| {
        let mut v = vec![flags, name.len() as u8];
        v.extend_from_slice(name);
        v.push(spake.len() as u8);
        v.extend_from_slice(spake);
        v.extend_from_slice(mac);
        v
    };
    let (_, a) = ClientHandshake::start(b"fuzz key", None, false);
    let (_, named) = ClientHandshake::start(b"fuzz key", Some("alice"), true);
    s.add("genuine-hello", input(0, b"", &a, &[0; 32]));
    s.add("genuine-hello-named-plaintext", input(3, b"alice", &named, &[1; 32]));
    s.add("genuine-exchange", input(4, b"", &a, &[]));
    s.add("genuine-exchange-named", input(7, b"bob", &named, &[0xff; 31]));
    s.add("junk-spake", input(0, b"", b"junk", &[0; 32]));
    s.add("short-spake", input(0, b"", &a[..20], b""));
    s.add("empty", b"");
}

fn records(s: &mut Seeds) {
    s.ctl("payloads", 0, b"hello\xffworld");
    s.ctl("payloads-end", 2, b"GET / HTTP/1.1\r\n\r\n\xff\xffx");
    s.ctl("payloads-flipped", 6, b"hello\xffworld");
    s.ctl("payloads-flipped-split", 0x6e, b"one\xfftwo\xffthree");
    s.ctl("empty-end", 2, b"");
    s.ctl("raw-too-short", 1, [0, 5, 1, 2, 3, 4, 5]);
    let mut forged = vec![0, 33];
    forged.extend_from_slice(&[0x41; 33]);
    s.ctl("raw-forged", 1, &forged);
    s.ctl("raw-huge-length", 3, [0xff, 0xff, 0, 0]);
}

fn datagrams(s: &mut Seeds) {
    let mut wire = BytesMut::new();
    for d in [&b"query"[..], b"", &[0u8; 1500]] {
        datagram::encode(d, &mut wire).expect("a datagram that fits");
    }
    s.ctl("three", 0, &wire);
    s.ctl("three-split", 9, &wire);
    s.ctl("truncated", 0, &wire[..wire.len() - 1]);
    s.ctl("max-length-header", 0, [0xff, 0xff, 1, 2, 3]);
    s.ctl("one-byte", 0, [7]);
}

fn quic_framings(s: &mut Seeds) {
    use opennotr_proto::message::StreamProtocol;
    use opennotr_proto::quic::{encode_datagram, StreamHeader};
    let v4 = StreamHeader {
        stream: 1,
        protocol: StreamProtocol::Tcp,
        target: "127.0.0.1:8080".parse().expect("an address"),
        peer: Some("203.0.113.7:51000".parse().expect("an address")),
        local: None,
    };
    let v6 = StreamHeader {
        stream: u64::MAX,
        protocol: StreamProtocol::Udp,
        target: "[::1]:53".parse().expect("an address"),
        peer: None,
        local: None,
    };
    s.ctl("header-v4", 0, v4.encode());
    s.ctl("header-v6-no-peer", 2, v6.encode());
    s.ctl("header-mux", 4, StreamHeader { protocol: StreamProtocol::Mux, ..v4 }.encode());
    let reached = Some("198.51.100.1:443".parse().expect("an address"));
    s.ctl("header-v4-local", 0, StreamHeader { local: reached, ..v4 }.encode());
    let reached6 = Some("[2001:db8::2]:53".parse().expect("an address"));
    s.ctl("header-v6-no-peer-local", 6, StreamHeader { local: reached6, ..v6 }.encode());
    let mut zero_local = v4.encode().to_vec();
    zero_local[0] += 1;
    zero_local.push(0);
    s.ctl("header-local-family-0", 0, zero_local);
    let mut trailing = v4.encode().to_vec();
    trailing[0] += 1;
    trailing.push(0);
    s.ctl("header-trailing", 0, trailing);
    s.ctl("header-zero-length", 0, [0]);
    s.ctl("header-too-long", 0, [255, 1, 2]);
    for (name, flow) in [("1", 0), ("2", 300), ("4", 70_000), ("8", 1 << 40)] {
        s.ctl(&format!("datagram-id{name}"), 1, encode_datagram(flow, b"query").expect("a 62-bit id"));
    }
    s.ctl("datagram-long-id", 1, [0x40, 0x05, 9]);
    s.ctl("datagram-truncated-id", 3, [0xc0, 1, 2]);
    s.ctl("datagram-empty-payload", 5, [7]);
}

fn mux_frame_bytes(frames: &[(u32, Kind, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, kind, payload) in frames {
        mux::encode(&mut out, *id, *kind, payload);
    }
    out
}

fn mux_frames(s: &mut Seeds) {
    let mut all = mux_frame_bytes(&[
        (1, Kind::Open, b""),
        (1, Kind::Data, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        (1, Kind::Fin, b""),
        (2, Kind::Reset, b"stream reset by the peer"),
    ]);
    mux::encode_window(&mut all, 1, 65536);
    s.add("every-kind", &all);
    s.add("unknown-kind", [0, 0, 0, 1, 9, 0, 0, 0, 0]);
    s.add("empty-data", [0, 0, 0, 1, 1, 0, 0, 0, 0]);
    s.add("huge-data", [0, 0, 0, 1, 1, 0xff, 0xff, 0xff, 0xff]);
    s.add("open-with-payload", [0, 0, 0, 1, 0, 0, 0, 0, 1, 0]);
    s.add("window-short", [0, 0, 0, 1, 4, 0, 0, 0, 3, 0, 0, 1]);
    s.add("reset-too-long", mux_frame_bytes(&[(1, Kind::Reset, &[b'x'; 1025])]));
    s.add("truncated", &all[..all.len() - 2]);
}

fn mux_sessions(s: &mut Seeds) {
    let open_data_fin = mux_frame_bytes(&[(1, Kind::Open, b""), (1, Kind::Data, b"hello"), (1, Kind::Fin, b"")]);
    for ctl in [0, 2, 4, 6] {
        s.ctl("acceptor-open-data-fin", ctl, &open_data_fin);
    }
    s.ctl("acceptor-open-twice", 0, mux_frame_bytes(&[(1, Kind::Open, b""), (1, Kind::Open, b"")]));
    s.ctl(
        "acceptor-data-after-fin",
        2,
        mux_frame_bytes(&[(1, Kind::Open, b""), (1, Kind::Fin, b""), (1, Kind::Data, b"x")]),
    );
    let mut windows = mux_frame_bytes(&[(1, Kind::Open, b"")]);
    mux::encode_window(&mut windows, 1, u32::MAX);
    mux::encode_window(&mut windows, 1, u32::MAX);
    s.ctl("acceptor-window-overflow", 4, &windows);
    s.ctl("acceptor-reset-unknown", 0, mux_frame_bytes(&[(9, Kind::Reset, b"why")]));
    s.ctl("opener-open-from-acceptor", 1, mux_frame_bytes(&[(1, Kind::Open, b"")]));
    let mut answer = mux_frame_bytes(&[(0, Kind::Data, b"HTTP/1.1 200 OK\r\n\r\n"), (0, Kind::Fin, b"")]);
    mux::encode_window(&mut answer, 0, 4096);
    answer.extend(mux_frame_bytes(&[(3, Kind::Reset, b""), (100, Kind::Data, b"late")]));
    for ctl in [1, 3, 7] {
        s.ctl("opener-answers", ctl, &answer);
    }
    s.ctl("bad-kind", 0, [0, 0, 0, 1, 7, 0, 0, 0, 0]);
}

/// Steps of `mux_state`: an operation, a stream id, two argument bytes.
fn mux_states(s: &mut Seeds) {
    // Peer frames (ops 1 and 2; the third byte picks the kind: 0 OPEN,
    // 1 DATA, 2 FIN, 3 RESET, 4 WINDOW), this side's open (0, opener
    // only), read (3), send (4), FIN (5), reset (6), drop (7).
    let steps = |ops: &[[u8; 4]]| ops.concat();
    // The acceptor: a stream opened, a window's worth of data read back
    // in halves (so the window is granted and grows), then FIN and drop.
    let mut grow = vec![[1, 3, 0, 0]];
    for _ in 0..4 {
        grow.push([1, 3, 1, 0xff]);
    }
    grow.extend([[3, 3, 0x80, 0], [3, 3, 0x80, 0], [1, 3, 2, 0], [7, 3, 0, 0]]);
    s.ctl("acceptor-grow", 1, steps(&grow));
    s.ctl("acceptor-open-twice", 1, steps(&[[1, 5, 0, 0], [1, 5, 0, 0]]));
    s.ctl("acceptor-data-after-fin", 1, steps(&[[1, 5, 0, 0], [1, 5, 2, 0], [1, 5, 1, 4]]));
    s.ctl("acceptor-reset-then-data", 1, steps(&[[1, 2, 0, 0], [1, 2, 3, 9], [1, 2, 1, 1], [3, 2, 0, 1]]));
    s.ctl("acceptor-unknown-streams", 1, steps(&[[1, 9, 1, 1], [1, 9, 2, 0], [1, 9, 3, 0], [1, 9, 4, 7]]));
    let opener = [[0, 0, 0, 0], [0, 0, 0, 0], [4, 0, 0xff, 0xff], [1, 0, 4, 0xff], [4, 0, 0xff, 0xff], [5, 0, 0, 0]];
    s.ctl("opener-send-and-grants", 0, steps(&opener));
    s.ctl("opener-open-from-acceptor", 0, steps(&[[1, 1, 0, 0]]));
    s.ctl(
        "opener-reset-drop-reopen",
        0,
        steps(&[[0, 0, 0, 0], [6, 0, 0, 0], [5, 0, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]]),
    );
}

/// Request edge cases beyond the desync corpus.
const REQUESTS: &[(&str, &[u8])] = &[
    ("get", b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n"),
    ("pipelined", b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nPOST /b HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"),
    ("chunked-then-get", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    ("cl-and-te", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("chunked-twice", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    ("chunked-twice-lines", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("chunk-size-0x", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n0123456789abcdef\r\n0\r\n\r\n"),
    ("chunk-size-negative", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n"),
    ("chunk-size-overflow", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n folded\r\n\r\n"),
    ("bare-lf", b"GET / HTTP/1.1\nHost: a.test\n\n"),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x00b\r\n\r\n"),
    ("absolute-form", b"GET http://App.Example.Test:8080/p?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n"),
    ("options-asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    ("websocket", b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x00"),
    ("h2c-upgrade", b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
    ("http10-keep-alive", b"GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nHost: a.test\r\n\r\n"),
    ("http10-no-host", b"GET / HTTP/1.0\r\n\r\n"),
    ("ipv6-host", b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n"),
    ("trailing-dot-host", b"GET / HTTP/1.1\r\nHost: A.Test.:80\r\n\r\n"),
    ("xff-kept", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nConnection: keep-alive, x-trace\r\nX-Trace: 1\r\n\r\n"),
    ("underscore-alias", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent_Length: 5\r\nContent-Length: 0\r\n\r\n"),
    ("expect-continue", b"PUT /up HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"),
    ("grpc", b"POST /svc/M HTTP/1.1\r\nHost: a.test\r\nContent-Type: application/grpc\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("partial", b"GET / HTTP/1.1\r\nHost: a.te"),
];

fn http_requests(s: &mut Seeds) {
    for case in corpus::cases() {
        // The few cases of megabytes test size limits, not parsing.
        if case.bytes.len() <= 64 * 1024 {
            s.add(&format!("desync-{}", case.id), &case.bytes);
        }
    }
    for (name, bytes) in REQUESTS {
        s.add(name, bytes);
    }
}

fn http_responses(s: &mut Seeds) {
    let responses: &[(&str, u8, &[u8])] = &[
        ("length", 0, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n"),
        (
            "chunked-trailers",
            0,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        ),
        ("cl-and-te", 0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("te-gzip", 0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx"),
        ("differing-lengths", 0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("head-with-length", 1, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        ("head-with-chunked", 1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"),
        ("no-content-with-length", 0, b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        ("not-modified", 0, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n"),
        (
            "switching",
            2,
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        ),
        ("switching-unasked", 0, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        ("continue-then-ok", 0, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ("http10-to-close", 0, b"HTTP/1.0 200 OK\r\n\r\nbody until close"),
        ("http10-keep-alive", 0, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
        (
            "connection-names-fields",
            0,
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop, Content-Length\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("te-http10", 0, b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("status-000", 0, b"HTTP/1.1 000 Zero\r\n\r\n"),
        ("no-reason", 0, b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"),
        ("obs-text-reason", 0, b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 0\r\n\r\n"),
        ("bare-lf", 0, b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
    ];
    for (name, ctl, bytes) in responses {
        s.ctl(name, *ctl, bytes);
    }
}

fn chunked_bodies(s: &mut Seeds) {
    let bodies: &[(&str, &[u8])] = &[
        ("simple", b"5\r\nhello\r\n0\r\n\r\n"),
        ("extensions", b"5;a=b;c=\"d\\\"e\" ; f\r\nhello\r\n0;last\r\n\r\n"),
        ("trailers", b"1\r\nx\r\n0\r\nX-A: 1\r\nX-B:\t2\r\n\r\n"),
        ("uppercase-hex", b"A\r\n0123456789\r\n0\r\n\r\n"),
        ("leading-zeros", b"0005\r\nhello\r\n000\r\n\r\n"),
        ("size-0x", b"0x10\r\n0123456789abcdef\r\n0\r\n\r\n"),
        ("size-negative", b"-1\r\nx\r\n0\r\n\r\n"),
        ("size-overflow", b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
        ("size-u64-max", b"ffffffffffffffff\r\nx"),
        ("bare-lf", b"5\nhello\n0\n\n"),
        ("nul", b"5\r\nhel\x00o\r\n0\r\n\x00\r\n\r\n"),
        ("space-after-size", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("space-before-size", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("data-not-crlf", b"5\r\nhelloXX0\r\n\r\n"),
        ("obs-fold-trailer", b"0\r\nX-A: 1\r\n folded\r\n\r\n"),
        ("unfinished", b"5\r\nhel"),
    ];
    for (name, body) in bodies {
        for ctl in [0, 3] {
            s.ctl(name, ctl, body);
        }
    }
    s.ctl("line-too-long", 0, format!("1;{}\r\nx\r\n0\r\n\r\n", "a".repeat(5000)));
}

/// A rustls client's first flight for `name`.
fn client_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(name.to_string()).expect("a server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("a client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("the hello");
    out
}

fn tls_hellos(s: &mut Seeds) {
    let sni = client_hello("App.Example.Test", &[b"h2", b"http/1.1"]);
    let no_sni = client_hello("192.0.2.1", &[]);
    for ctl in [0, 7] {
        s.ctl("sni", ctl, &sni);
        s.ctl("no-sni", ctl, &no_sni);
    }
    // Cut inside the record, inside the extensions, and one byte short.
    s.ctl("sni-truncated-half", 0, &sni[..sni.len() / 2]);
    s.ctl("sni-truncated-extensions", 0, &sni[..sni.len() - 40]);
    s.ctl("sni-one-short", 5, &sni[..sni.len() - 1]);
    // The record claims more than the hello has.
    let mut long = sni.clone();
    long[3] = 0xff;
    s.ctl("record-length-wrong", 0, &long);
    s.ctl("http", 0, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    s.ctl("alert", 0, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
}

/// An HTTP/2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn h2c_names(s: &mut Seeds) {
    // RFC 7541 C.4.1 (Huffman) and C.3.1 (plain): GET http://www.example.com/.
    let huffman =
        [0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
    let mut plain = vec![0x82, 0x86, 0x84, 0x41, 0x0f];
    plain.extend_from_slice(b"www.example.com");
    let settings = h2_frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let window = h2_frame(0x8, 0, 0, &[0, 0x0f, 0, 1]);
    for ctl in [0, 128, 255] {
        s.ctl("huffman", ctl, [settings.clone(), window.clone(), h2_frame(0x1, 0x5, 1, &huffman)].concat());
        s.ctl("plain", ctl, [settings.clone(), h2_frame(0x1, 0x5, 1, &plain)].concat());
    }
    // Padded with priority, then a CONTINUATION.
    let mut payload = vec![2, 0, 0, 0, 0, 16];
    payload.extend_from_slice(&huffman[..6]);
    payload.extend_from_slice(&[0, 0]);
    let split = [h2_frame(0x1, 0x28, 3, &payload), h2_frame(0x9, 0x4, 3, &huffman[6..])].concat();
    s.ctl("continued", 100, [settings.clone(), split].concat());
    // `host` and a port; a dynamic table entry used; a table size update.
    let mut host = vec![0x82, 0x00, 4];
    host.extend_from_slice(b"host");
    host.push(14);
    host.extend_from_slice(b"A.Example:8080");
    s.ctl("host-port", 0, h2_frame(0x1, 0x4, 1, &host));
    let mut dynamic = vec![0x3f, 0xe1, 0x1f, 0x41, 9];
    dynamic.extend_from_slice(b"b.example");
    dynamic.push(0xbe);
    s.ctl("dynamic", 0, h2_frame(0x1, 0x4, 1, &dynamic));
    s.ctl("eos-in-string", 0, h2_frame(0x1, 0x4, 1, &[0x00, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff]));
    s.ctl("frame-too-large", 0, [0u8, 0x40, 0x01, 0x1, 0x4, 0, 0, 0, 1]);
}

fn query(name: &str, t: RecordType, edns: Option<(u16, u8)>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("a name"), t));
    if let Some((size, version)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size).set_version(version);
        m.set_edns(e);
    }
    m.to_vec().expect("a query")
}

fn dns_queries(s: &mut Seeds) {
    let queries = [
        ("a", query("abc.open.notr.test.", RecordType::A, None)),
        ("aaaa-edns", query("ABC.open.notr.test.", RecordType::AAAA, Some((4096, 0)))),
        ("vip", query("abc.vip.open.notr.test.", RecordType::A, None)),
        ("wildcard", query("www.cloud.example.com.", RecordType::A, Some((1232, 0)))),
        ("apex-any", query("open.notr.test.", RecordType::ANY, Some((512, 0)))),
        ("soa", query("open.notr.test.", RecordType::SOA, None)),
        ("ns", query("open.notr.test.", RecordType::NS, None)),
        ("nxdomain", query("nobody.open.notr.test.", RecordType::A, None)),
        ("refused", query("example.org.", RecordType::A, None)),
        ("edns-version-1", query("abc.open.notr.test.", RecordType::A, Some((1232, 1)))),
        ("ambiguous-vip", query("a-b.vip.open.notr.test.", RecordType::A, None)),
    ];
    for (name, q) in &queries {
        for ctl in [0, 1, 2, 3] {
            s.ctl(name, ctl, q);
        }
    }
    s.ctl("a-tiny-limit", 43, &queries[0].1);
    let mut notify = queries[0].1.clone();
    notify[2] = (notify[2] & 0x87) | (u8::from(OpCode::Notify) << 3);
    s.ctl("notify", 0, &notify);
    let mut response = queries[0].1.clone();
    response[2] |= 0x80;
    s.ctl("a-response", 0, &response);
    let mut many = queries[0].1.clone();
    many[4..6].copy_from_slice(&[0xff, 0xff]);
    s.ctl("huge-qdcount", 0, &many);
    // A question whose name is a compression pointer to itself.
    let mut looped = queries[0].1[..12].to_vec();
    looped[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    s.ctl("pointer-loop", 0, &looped);
    // Two pointers pointing at each other.
    let mut pair = queries[0].1[..12].to_vec();
    pair[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    pair.extend_from_slice(&[0xc0, 0x0e, 0xc0, 0x0c, 0, 1, 0, 1]);
    s.ctl("pointer-pair", 0, &pair);
    let mut label = queries[0].1[..12].to_vec();
    label[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    label.extend_from_slice(&[63]);
    label.extend_from_slice(&[b'a'; 63]);
    label.extend_from_slice(&[0x7f, 0, 0, 1, 0, 1]);
    s.ctl("label-past-end", 0, &label);
    s.ctl("header-only", 0, &queries[0].1[..12]);
    s.ctl("short", 0, &queries[0].1[..5]);
}

fn etcd_replies(s: &mut Seeds) {
    let b64 = |b: &[u8]| {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n =
                u32::from(c[0]) << 16 | u32::from(*c.get(1).unwrap_or(&0)) << 8 | u32::from(*c.get(2).unwrap_or(&0));
            for k in 0..4 {
                out.push(if k <= c.len() { T[(n >> (18 - 6 * k)) as usize & 63] as char } else { '=' });
            }
        }
        out
    };
    let ours = br#"{"host":"192.0.2.1","ttl":60,"opennotr":"fuzz"}"#;
    let theirs = br#"{"host":"192.0.2.9","ttl":60,"opennotr":"other"}"#;
    let listing = format!(
        r#"{{"header":{{"revision":"9"}},"kvs":[{{"key":"{}","value":"{}","lease":"7","mod_revision":"3"}},{{"key":"{}","value":"{}","mod_revision":"4"}},{{"key":"{}","value":"{}","mod_revision":"5"}}],"more":false,"count":"3"}}"#,
        b64(b"/skydns/test/notr/open/abc"),
        b64(ours),
        b64(b"/skydns/test/notr/open/taken"),
        b64(theirs),
        b64(b"/skydns/test/notr/open/gone"),
        b64(ours),
    );
    let replies: Vec<(&str, u8, String)> = vec![
        ("grant", 0, r#"{"header":{"cluster_id":"151","revision":"1"},"ID":"4111120277473784326","TTL":"5"}"#.into()),
        ("keepalive", 0, r#"{"result":{"header":{"revision":"1"},"ID":"12","TTL":"5"}}"#.into()),
        ("keepalive-gone", 0, r#"{"result":{"header":{"revision":"1"},"ID":"12345"}}"#.into()),
        ("lease-not-found", 1, r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#.into()),
        ("stream-error", 0, r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#.into()),
        ("listing", 0, listing),
        ("txn-put", 0, r#"{"header":{"revision":"4"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"4"}}}]}"#.into()),
        ("txn-refused", 0, r#"{"header":{"revision":"4"},"responses":[{"response_range":{"header":{"revision":"4"},"kvs":[{"key":"L3NreWRucy9h","mod_revision":"4","value":"eA=="}],"count":"1"}}]}"#.into()),
        ("wrong-types", 0, r#"{"ID":{"a":1},"TTL":"9999999999999999999999","kvs":[{"key":5}],"header":"x","responses":[5],"succeeded":"yes"}"#.into()),
        ("kvs-not-list", 0, r#"{"kvs":"x"}"#.into()),
        ("key-not-base64", 0, r#"{"kvs":[{"key":"!!!"}]}"#.into()),
        ("result-not-object", 0, r#"{"result":5}"#.into()),
        ("error-number", 2, r#"{"error":5,"code":"x"}"#.into()),
        ("html", 2, "<html><body>502 Bad Gateway\n</body></html>".into()),
        ("not-json", 0, "\u{1}\u{2}\u{3}".into()),
        ("empty", 5, String::new()),
        ("two-messages", 0, r#"{"result":{"TTL":"5"}}{"result":{"TTL":"6"}}"#.into()),
        ("float-ttl", 0, r#"{"TTL":1.5,"ID":-1}"#.into()),
    ];
    for (name, ctl, body) in replies {
        s.ctl(name, ctl, body);
    }
}

fn acme_replies(s: &mut Seeds) {
    let cert = include_bytes!("../data/acme-cert.pem");
    s.ctl("chain", 0, cert);
    let mut chain = cert.to_vec();
    chain.extend_from_slice(cert);
    s.ctl("chain-of-two", 0, &chain);
    s.ctl("chain-garbage", 0, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    s.ctl("chain-empty", 0, b"");
    let der = CertificateDer::from_pem_slice(cert).expect("a PEM certificate");
    s.ctl("der", 1, &der);
    s.ctl("der-truncated", 1, &der[..der.len() / 2]);
    let docs: &[(&str, &str)] = &[
        (
            "problem-account",
            r#"{"type":"urn:ietf:params:acme:error:accountDoesNotExist","detail":"no such account","status":400}"#,
        ),
        ("problem-unauthorized", r#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"x","status":403}"#),
        (
            "problem-other",
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down","status":429,"subproblems":[{"type":"urn:ietf:params:acme:error:dns","detail":"d","identifier":{"type":"dns","value":"a.test"}}]}"#,
        ),
        ("problem-wrong-types", r#"{"type":5,"detail":["x"],"status":"400"}"#),
        (
            "order",
            r#"{"status":"pending","expires":"2030-01-01T00:00:00Z","identifiers":[{"type":"dns","value":"a.test"}],"authorizations":["https://ca.test/authz/1"],"finalize":"https://ca.test/finalize/1"}"#,
        ),
        (
            "order-valid",
            r#"{"status":"valid","authorizations":[],"finalize":"https://ca.test/f","certificate":"https://ca.test/cert/1"}"#,
        ),
        ("order-wrong-types", r#"{"status":7,"authorizations":"x","finalize":null}"#),
        (
            "authorization",
            r#"{"identifier":{"type":"dns","value":"a.test"},"status":"pending","expires":"2030-01-01T00:00:00Z","challenges":[{"type":"http-01","url":"https://ca.test/chall/1","token":"tok","status":"pending"},{"type":"tls-alpn-01","url":"https://ca.test/chall/2","token":"tok2","status":"pending"}]}"#,
        ),
        (
            "authorization-wildcard",
            r#"{"identifier":{"type":"dns","value":"a.test"},"status":"valid","wildcard":true,"challenges":[]}"#,
        ),
        (
            "authorization-unknown-challenge",
            r#"{"identifier":{"type":"ip","value":"192.0.2.1"},"status":"invalid","challenges":[{"type":"new-01","url":"u","token":"t","status":"invalid","error":{"type":"x"}}]}"#,
        ),
    ];
    for (name, json) in docs {
        s.ctl(name, 2, json);
    }
}

fn access_rules(s: &mut Seeds) {
    // Even: Authorization values.
    s.ctl("basic", 0, b"Basic YWxpY2U6czNjcjN0");
    s.ctl("basic-lowercase-spaces", 2, b"basic   YWxpY2U6czNjcjN0");
    s.ctl("basic-colon-in-password", 4, b"Basic YWxpY2U6czpjcjN0");
    s.ctl("basic-no-colon", 6, b"Basic YWxpY2U=");
    s.ctl("bearer", 8, b"Bearer abc");
    s.ctl("argon2id-hash", 10, b"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG");
    s.ctl("bcrypt-hash", 12, b"$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy");
    // Odd: a forward's access rules as a client sends them.
    s.ctl(
        "rules",
        1,
        br#"{"allow":["203.0.113.0/24","2001:db8::/32"],"deny":["203.0.113.66"],"basic_auth":[{"user":"alice","hash":"$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}]}"#,
    );
    s.ctl("rules-costly-argon2", 3, br#"{"basic_auth":[{"user":"a","hash":"$argon2id$v=19$m=4194304,t=99,p=64$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"}]}"#);
    s.ctl("rules-bad-cidr", 5, br#"{"allow":["10.0.0.0/33"]}"#);
}
