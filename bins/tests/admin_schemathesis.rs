//! The admin API against its own OpenAPI document, checked by an
//! OpenAPI-driven fuzzer: a real `opennotrd` started from a file, a real
//! `opennotr` connected to it (so sessions and forwards are there to be
//! listed, fetched and closed), and `schemathesis run` over the live
//! `/api/v1/openapi.json`. Every request it makes is valid against the
//! document (`--mode positive`); the run fails on any schema-valid request
//! refused with a status the document does not allow for it, on any 5xx, and
//! on any response that does not match its documented schema. See
//! docs/admin.md, "The document is checked".

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Instant;

use support::{json_fields, read_registration, Proc, Src, TempDir, CLIENT, SERVER, WAIT};

/// The version `.ci/run` installs; the one the test was made clean with.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const TOKEN: &str = "schemathesis-admin-token-0123456789";
const ALICE_KEY: &str = "alice-key-for-the-schemathesis-run";

/// One request on a fresh connection; the whole answer.
fn request(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// How to run schemathesis 4 here (its script, else Python's module) and
/// its version; or the command that installs it.
fn schemathesis() -> Result<(Vec<String>, String), String> {
    let install = format!("install it with: pip install {SCHEMATHESIS}");
    let candidates = [vec!["schemathesis".to_string()], vec!["python3".into(), "-m".into(), "schemathesis.cli".into()]];
    for argv in candidates {
        let Ok(o) = Command::new(&argv[0]).args(&argv[1..]).arg("--version").output() else { continue };
        if !o.status.success() {
            continue;
        }
        let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
        // The flags and the config file below are those of version 4.
        if !version.contains("version 4.") {
            return Err(format!("{version} is not schemathesis 4; {install}"));
        }
        return Ok((argv, version));
    }
    Err(format!("schemathesis is not installed; {install}"))
}

#[test]
fn schemathesis_finds_nothing_in_the_admin_api() {
    let (argv, version) = schemathesis().unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("schemathesis");
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in echo.incoming().flatten() {
            let mut w = c.try_clone().unwrap();
            let mut r = c;
            thread::spawn(move || std::io::copy(&mut r, &mut w));
        }
    });
    let conf = dir.write(
        "opennotrd.yaml",
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  authKey: \"a-shared-key-for-the-schemathesis-run\"\n  domain: \"open.notr.test\"\n\
             dhcp:\n  cidr: \"100.64.242.1/24\"\n\
             limits:\n  forwardBandwidth: 10MB\n\
             clients:\n  - name: alice\n    key: \"{ALICE_KEY}\"\n    bandwidth: 80Mbit\n\
             \x20   allow: [\"127.0.0.0/8\", \"2001:db8::/32\"]\n    deny: [\"127.0.0.9\"]\n\
             admin:\n  listen: \"127.0.0.1:0\"\n  token: \"{TOKEN}\"\n"
        ),
    );
    let mut server = Proc::spawn(SERVER, &["-c", conf.to_str().unwrap(), "--log-level", "info", "--log-json"], &dir.0);
    let addr_of = |line: &str, msg: &str| -> SocketAddr {
        json_fields(line, msg).unwrap()["addr"].as_str().unwrap().parse().unwrap()
    };
    let l = server.expect(Src::Err, "`listening for clients`", |l| json_fields(l, "listening for clients").is_some());
    let control = addr_of(&l, "listening for clients");
    let l = server.expect(Src::Err, "`admin API listening`", |l| json_fields(l, "admin API listening").is_some());
    let admin = addr_of(&l, "admin API listening");

    let client_conf = dir.write(
        "opennotr.yaml",
        format!(
            "serverAddr: \"{control}\"\nname: alice\nkey: \"{ALICE_KEY}\"\n\
             forwards:\n  - protocol: tcp\n    ports:\n      0: {echo_port}\n\
             \x20   group: shop\n    groupKey: \"the shop's key\"\n    balance: least_conn\n    deny: [\"10.0.0.0/8\"]\n"
        ),
    );
    let mut client = Proc::spawn(CLIENT, &["-c", client_conf.to_str().unwrap()], &dir.0);
    read_registration(&mut client, 1);
    // The run checks every answer against the document: a live group and
    // a forward with rules of both sides make those views non-null.
    let groups = request(admin, "GET", "/api/v1/groups");
    assert!(groups.contains("\"name\":\"shop\"") && groups.contains("\"least_conn\""), "{groups}");
    let sessions = request(admin, "GET", "/api/v1/sessions");
    assert!(
        sessions.contains("\"deny\":[\"10.0.0.0/8\"]") && sessions.contains("\"deny\":[\"127.0.0.9/32\"]"),
        "{sessions}"
    );
    // A single server: /api/v1/cluster answers 404, as documented (its 200
    // is checked against the document by the admin crate's tests).
    let cluster = request(admin, "GET", "/api/v1/cluster");
    assert!(cluster.starts_with("HTTP/1.1 404"), "{cluster}");

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("schemathesis.toml");
    let started = Instant::now();
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("http://{admin}/api/v1/openapi.json"), "--url", &format!("http://{admin}")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--mode", "positive", "--checks", "all", "--seed", "14", "--max-examples", "40"])
        .args(["--workers", "1", "--no-color"])
        .current_dir(&dir.0)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{version} found problems in the admin API (after {:?}):\n{text}\nserver:\n{}",
        started.elapsed(),
        server.transcript()
    );
    eprintln!("{text}");
    // A run that tested nothing would pass too.
    assert!(text.contains("Operations:") && text.contains("16 selected"), "{text}");
    let generated = text
        .split_once(" generated")
        .and_then(|(before, _)| before.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(generated.is_some_and(|n| n >= 100), "too few test cases ({generated:?}):\n{text}");

    // The run closes sessions and adds and removes credentials: the server
    // must still serve, and a reload must bring the file's credentials back.
    let reload = request(admin, "POST", "/api/v1/reload");
    assert!(reload.starts_with("HTTP/1.1 200"), "{reload}");
    let clients = request(admin, "GET", "/api/v1/clients");
    assert!(clients.starts_with("HTTP/1.1 200") && clients.contains("\"name\":\"alice\""), "{clients}");
    let deadline = Instant::now() + WAIT;
    loop {
        let sessions = request(admin, "GET", "/api/v1/sessions");
        if sessions.contains("\"client\":\"alice\"") {
            break;
        }
        assert!(Instant::now() < deadline, "alice did not come back:\n{sessions}\n{}", client.transcript());
        thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(server.child.try_wait().unwrap().is_none(), "server exited\n{}", server.transcript());
}
