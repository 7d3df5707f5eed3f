use super::*;

fn parse(raw: &[u8]) -> Result<Option<(usize, String)>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = parse_request(raw, &mut req)? else { return Ok(None) };
    let info = check_request(&req)?;
    let mut out = Vec::new();
    write_request_head(&info, req.headers, Visitor { ip: "192.0.2.7", proto: "http" }, &mut out);
    Ok(Some((len, String::from_utf8_lossy(&out).into_owned())))
}

/// The status a request head gets (200: it is taken).
fn status(raw: &str) -> u16 {
    match parse(raw.as_bytes()) {
        Ok(Some(_)) => 200,
        Ok(None) => panic!("incomplete: {raw:?}"),
        Err(r) => r.status,
    }
}

fn req(fields: &str) -> String {
    format!("POST /a HTTP/1.1\r\nHost: app.example.test\r\n{fields}\r\n")
}

#[test]
fn content_length_is_digits_only() {
    assert_eq!(status(&req("Content-Length: 49\r\n")), 200);
    assert_eq!(status(&req("Content-Length:   49  \r\n")), 200, "OWS around the value");
    assert_eq!(status(&req("Content-Length: 49\r\nContent-Length: 49\r\n")), 200, "equal repeats");
    assert_eq!(status(&req("Content-Length: 0\r\n")), 200);
    for v in ["+49", "-1", "4 9", "0x31", "1e2", "49,49", "49, 49", "", "49;", "18446744073709551616", "٤٩"] {
        assert_eq!(status(&req(&format!("Content-Length: {v}\r\n"))), 400, "Content-Length: {v:?}");
    }
    let nbsp = b"POST /a HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 49\xa0\r\n\r\n";
    assert_eq!(parse(nbsp).unwrap_err().status, 400);
    assert_eq!(status(&req("Content-Length: 49\r\nContent-Length: 50\r\n")), 400);
}

#[test]
fn transfer_encoding_is_chunked_once_and_last() {
    assert_eq!(status(&req("Transfer-Encoding: chunked\r\n")), 200);
    assert_eq!(status(&req("Transfer-Encoding: Chunked\r\n")), 200);
    assert_eq!(status(&req("Transfer-Encoding: , chunked\r\n")), 200, "empty list elements are skipped");
    for v in ["chunked, chunked", "gzip", "chunked, gzip", "xchunked", "\"chunked\"", "chunked\x0b", "identity", ""] {
        assert_eq!(status(&req(&format!("Transfer-Encoding: {v}\r\n"))), 400, "Transfer-Encoding: {v:?}");
    }
    assert_eq!(status(&req("Transfer-Encoding: gzip, chunked\r\n")), 501);
    assert_eq!(status(&req("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n")), 501);
    assert_eq!(status(&req("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")), 400);
    assert_eq!(status(&req("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")), 400, "TE and CL");
    assert_eq!(status(&req("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")), 400, "CL and TE");
    assert_eq!(status("POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    assert_eq!(status(&req("Transfer-Encoding : chunked\r\n")), 400, "whitespace before the colon");
    assert_eq!(status(&req("Transfer-Encoding: chunked\r\n chunked\r\n")), 400, "obs-fold");
}

#[test]
fn host_is_exactly_one_valid_authority() {
    assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 400);
    for ok in ["a.example", "a.example:8080", "A.Example.", "192.0.2.1:80", "[2001:db8::1]", "[::1]:443", "a_b.example"]
    {
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n")), 200, "{ok}");
    }
    for bad in [
        "a.example@b.example",
        "a b",
        "a.example:",
        "a.example:99999",
        "a.example:8o",
        "[::1",
        "[zz::]",
        "a/b",
        "a%2eb",
    ] {
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")), 400, "{bad}");
    }
    // HTTP/1.0 without a Host cannot be routed.
    assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.0\r\nHost: a\r\n\r\n"), 200);
}

#[test]
fn connection_cannot_remove_framing_or_routing() {
    for f in ["content-length", "Content-Length", "transfer-encoding", "host", "close, Host"] {
        assert_eq!(status(&req(&format!("Connection: {f}\r\nContent-Length: 0\r\n"))), 400, "{f}");
    }
    let (_, head) =
        parse(req("Connection: keep-alive, X-Private\r\nX-Private: 1\r\nX-Kept: 2\r\n").as_bytes()).unwrap().unwrap();
    assert!(!head.contains("X-Private") && !head.contains("Connection") && head.contains("X-Kept: 2"), "{head}");
    let opts = (0..=MAX_CONNECTION_OPTIONS).map(|i| format!("x{i}")).collect::<Vec<_>>().join(", ");
    assert_eq!(status(&req(&format!("Connection: {opts}\r\n"))), 400);
    assert_eq!(status(&req("Connection: \"close\"\r\n")), 400);
}

#[test]
fn request_line_rules() {
    assert_eq!(status("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"), 405);
    assert_eq!(status("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    assert_eq!(status("GET a HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
    assert_eq!(status("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET / http/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1\r\nHost: a\r\n\r\n"), 400);
    let long_line = format!("GET /{}", "a".repeat(MAX_REQUEST_HEAD));
    assert_eq!(parse(long_line.as_bytes()).unwrap_err().status, 414, "a request line too long to end");
    assert_eq!(status("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET /café HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET /a\\..\\b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET /a?q={\"x\":1}|y HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX_TARGET));
    assert_eq!(status(&long), 414);
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST_HEAD));
    assert_eq!(status(&big), 431);
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")), 431);
    // A long head that is not complete yet is refused before it is whole.
    let partial = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "a".repeat(MAX_REQUEST_HEAD));
    assert_eq!(parse(partial.as_bytes()).unwrap_err().status, 431);
    assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
}

#[test]
fn header_syntax_rules() {
    for raw in [
        &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\rHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo\"st: a\r\n\r\n",
    ] {
        assert_eq!(parse(raw).unwrap_err().status, 400, "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn expectations_and_upgrades() {
    assert_eq!(status(&req("Expect: 100-continue\r\nContent-Length: 1\r\n")), 200);
    assert_eq!(status(&req("Expect: something-else\r\n")), 417);
    assert_eq!(status("GET / HTTP/1.0\r\nHost: a\r\nExpect: whatever\r\n\r\n"), 200, "ignored in HTTP/1.0");
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut h);
    let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    parse_request(raw, &mut r).unwrap();
    let info = check_request(&r).unwrap();
    assert_eq!(info.upgrade, Some(&b"websocket"[..]));
    // Upgrade without Connection: upgrade is just a hop-by-hop field.
    let mut r = httparse::Request::new(&mut h);
    parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", &mut r).unwrap();
    assert_eq!(check_request(&r).unwrap().upgrade, None);
}

#[test]
fn forwarded_head() {
    let raw = "GET /p?q=1 HTTP/1.1\r\nHost: App.Example:8080\r\nX-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 1.1.1.1\r\n\
               TE: trailers, deflate\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nContent-Length: 2\r\nCookie: c=1\r\n\r\nhi";
    let (len, head) = parse(raw.as_bytes()).unwrap().unwrap();
    assert_eq!(len, raw.len() - 2);
    assert_eq!(
        head,
        "GET /p?q=1 HTTP/1.1\r\nHost: App.Example:8080\r\nCookie: c=1\r\nContent-Length: 2\r\nTE: trailers\r\n\
         X-Forwarded-For: 203.0.113.9, 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: App.Example:8080\r\n\
         X-Real-IP: 192.0.2.7\r\n\r\n"
    );
    // Absolute form: the target's authority is the host; Host is replaced.
    let (_, head) = parse(b"GET http://b.example:81/x?y HTTP/1.1\r\nHost: ignored.example\r\n\r\n").unwrap().unwrap();
    assert!(head.starts_with("GET /x?y HTTP/1.1\r\nHost: b.example:81\r\n"), "{head}");
    assert!(!head.contains("ignored"), "{head}");
    let (_, head) = parse(b"GET HTTP://b.example HTTP/1.1\r\nHost: b.example\r\n\r\n").unwrap().unwrap();
    assert!(head.starts_with("GET / HTTP/1.1\r\nHost: b.example\r\n"), "{head}");
    assert_eq!(status("GET http://u@b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"), 400);
    assert_eq!(status("GET ftp://b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"), 400);
}

#[test]
fn managed_fields_cannot_come_in_disguise() {
    // Underscore aliases of framing, routing and forwarding fields go.
    let (_, head) = parse(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 99\r\nTransfer_Encoding: chunked\r\nX_Forwarded_For: 1.2.3.4\r\n\
          X-Custom_Field: kept\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert!(!head.contains("_Length") && !head.contains("_Encoding") && !head.contains("X_Forwarded"), "{head}");
    assert!(head.contains("X-Custom_Field: kept"), "{head}");
    // Connection naming X-Forwarded-For: the visitor's own values go.
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let (_, head) = parse(raw).unwrap().unwrap();
    assert!(head.contains("X-Forwarded-For: 192.0.2.7\r\n") && !head.contains("6.6.6.6"), "{head}");
    // The h2c upgrade is not passed on: a plain request.
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut h);
    parse_request(raw, &mut r).unwrap();
    assert_eq!(check_request(&r).unwrap().upgrade, None);
    let (_, head) = parse(raw).unwrap().unwrap();
    assert!(!head.contains("Upgrade") && !head.contains("HTTP2-Settings") && !head.contains("Connection"), "{head}");
    assert!(!forwards_trailer("Content-Length") && !forwards_trailer("host") && !forwards_trailer("Transfer_Encoding"));
    assert!(forwards_trailer("X-Checksum"));
}

#[test]
fn route_names() {
    assert_eq!(route_name("App.Example.com:8080"), "app.example.com");
    assert_eq!(route_name("app.example.com."), "app.example.com");
    assert_eq!(route_name("[::1]:80"), "::1");
    assert_eq!(route_name("a.b"), "a.b");
}

fn response(raw: &str, head: bool) -> Result<ResponseInfo, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    assert!(matches!(resp.parse(raw.as_bytes()), Ok(httparse::Status::Complete(_))), "{raw:?}");
    check_response(&resp, head, false)
}

#[test]
fn response_framing() {
    let p = |s: &str, head| response(s, head).unwrap();
    let h = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false);
    assert_eq!((h.status, h.framing, h.reusable), (200, Framing::Length(5), true));
    let h = p("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false);
    assert_eq!(h.framing, Framing::Chunked);
    let h = p("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false);
    assert_eq!((h.framing, h.reusable), (Framing::Close, false));
    let h = p("HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!((h.framing, h.reusable), (Framing::Close, false));
    // No body by the rules, yet one declared: a service that writes it
    // anyway, late, would answer the next request; not reused.
    let h = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
    assert_eq!((h.framing, h.reusable), (Framing::Empty, false));
    let h = p("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false);
    assert_eq!((h.framing, h.reusable), (Framing::Empty, false));
    let h = p("HTTP/1.1 204 No Content\r\n\r\n", false);
    assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
    let h = p("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true);
    assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
    assert!(!p("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).reusable);
    assert!(p("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false).reusable);
    assert!(!p("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false).reusable);
    // Both: chunked wins and the connection is never reused.
    let h = p("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false);
    assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        assert_eq!(response(bad, false).unwrap_err().status, 502, "{bad:?}");
    }
}

#[test]
fn response_heads_lose_hop_by_hop_fields() {
    let raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Private, Content-Length\r\nX-Private: 1\r\n\
                Keep-Alive: timeout=5\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\n";
    let mut out = Vec::new();
    write_response_head(raw, &mut out, Framing::Length(2), true);
    assert_eq!(String::from_utf8(out.clone()).unwrap(), "HTTP/1.1 200 OK\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\n");
    write_response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
        &mut out,
        Framing::Chunked,
        false,
    );
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    // A coding before chunked stays named: the body is copied as it came.
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    write_response_head(raw, &mut out, Framing::Chunked, true);
    assert_eq!(String::from_utf8(out.clone()).unwrap(), "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    write_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &mut out, Framing::Empty, true);
    assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "a HEAD's length");
}

fn scan_all(pieces: &[&[u8]]) -> Result<Option<usize>, Reject> {
    let mut c = Chunked::default();
    let mut total = 0;
    for p in pieces {
        if let Some(n) = c.scan(p)? {
            return Ok(Some(total + n));
        }
        total += p.len();
    }
    Ok(None)
}

#[test]
fn chunked_ends_are_found() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
    assert_eq!(scan_all(&[body]), Ok(Some(body.len() - 4)));
    let pieces: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(scan_all(&pieces), Ok(Some(body.len() - 4)));
    let t = b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nX-A: b\r\n\r\n";
    assert_eq!(scan_all(&[t]), Ok(Some(t.len())));
    let ext = b"3 ; a = b ;c=\"q\\\"d\";e\r\nabc\r\n000\r\n\r\n";
    assert_eq!(scan_all(&[ext]), Ok(Some(ext.len())));
    assert_eq!(scan_all(&[b"5\r\nhel"]), Ok(None));
    assert_eq!(scan_all(&[b"0\r\n"]), Ok(None));
}

#[test]
fn chunked_framing_is_strict() {
    for bad in [
        &b"zz\r\n"[..],
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"3\r\nabcX\r\n",
        b"ffffffffffffffffff\r\n",
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"b\nc\"\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"0\r\nX : y\r\n\r\n",
        b"0\r\nX: y\r\n folded\r\n\r\n",
        b"0\r\nX: a\x00b\r\n\r\n",
        b"0\r\nX: y\n\r\n",
        b"0\r\n\n",
        b"\r\n",
    ] {
        assert_eq!(scan_all(&[bad]).unwrap_err().status, 400, "{:?}", String::from_utf8_lossy(bad));
    }
    let mut long = b"5;".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
    assert!(scan_all(&[&long]).is_err());
    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() <= MAX_TRAILERS + 8 {
        trailers.extend_from_slice(b"X-A: 0123456789\r\n");
    }
    assert!(scan_all(&[&trailers]).is_err());
}

#[test]
fn both_paths_rewrite_a_head_alike() {
    // The hyper path's rewrite of a parsed head gives the fields the
    // direct path writes.
    let raw =
        "GET /p HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-P\r\nX-P: 1\r\nX-Forwarded-For: 10.0.0.1\r\n\
               TE: trailers\r\nUpgrade: websocket\r\nCookie: c\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n";
    let (_, direct) = parse(raw.as_bytes()).unwrap().unwrap();
    let mut map = HeaderMap::new();
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut h);
    parse_request(raw.as_bytes(), &mut r).unwrap();
    for f in r.headers.iter() {
        map.append(HeaderName::from_bytes(f.name.as_bytes()).unwrap(), HeaderValue::from_bytes(f.value).unwrap());
    }
    rewrite_parts("GET", "/p", false, &mut map, Visitor { ip: "192.0.2.7", proto: "http" }).unwrap();
    let mut from_map: Vec<String> = map.iter().map(|(n, v)| format!("{}: {}", n, v.to_str().unwrap())).collect();
    let mut from_direct: Vec<String> =
        direct.lines().skip(1).filter(|l| !l.is_empty()).map(|l| l.to_ascii_lowercase()).collect();
    for l in from_map.iter_mut() {
        *l = l.to_ascii_lowercase();
    }
    from_map.sort();
    from_direct.sort();
    assert_eq!(from_map, from_direct);
}

// What visitors and services send is input from the network: the parsers
// must give an answer for any bytes, however they arrive.
proptest::proptest! {
    #[test]
    fn chunked_scan_does_not_depend_on_how_bytes_arrive(
        // Mostly the bytes chunked framing is made of, so that many inputs
        // get past the first byte.
        bytes in proptest::collection::vec(proptest::sample::select(b"0123456789abcdefABCDEF\r\n\r\n; \tx=\":".to_vec()), 0..512),
        cuts in proptest::collection::vec(0usize..512, 0..8),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for c in cuts {
            pieces.push(&bytes[at..c]);
            at = c;
        }
        pieces.push(&bytes[at..]);
        proptest::prop_assert_eq!(scan_all(&pieces), scan_all(&[&bytes]));
    }

    #[test]
    fn any_chunked_body_ends_where_it_ends(
        chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..300), 0..6),
        trailer in proptest::prelude::any::<bool>(),
        next in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
    ) {
        let mut body = Vec::new();
        for c in &chunks {
            body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(if trailer { b"0\r\nX-T: 1\r\n\r\n" as &[u8] } else { b"0\r\n\r\n" });
        let end = body.len();
        body.extend_from_slice(&next);
        proptest::prop_assert_eq!(scan_all(&[&body]), Ok(Some(end)));
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        proptest::prop_assert_eq!(scan_all(&bytewise), Ok(Some(end)));
    }

    #[test]
    fn response_heads_never_panic(
        status in proptest::sample::select(vec!["HTTP/1.1 200 OK", "HTTP/1.0 204 No", "HTTP/1.1 304 X", "HTTP/2 200", "HTTP/1.1 99", "junk"]),
        headers in proptest::collection::vec(proptest::sample::select(vec![
            "Content-Length: 5", "Content-Length: x", "Content-Length: 99999999999999999999999",
            "Content-Length: 5, 5", "Transfer-Encoding: chunked", "Transfer-Encoding: gzip",
            "Connection: close", "Connection: keep-alive, X-A", "Keep-Alive: 1", "X-A: b", ": empty", "Bad Header",
        ]), 0..6),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32),
        head_request in proptest::prelude::any::<bool>(),
    ) {
        let mut bytes = format!("{status}\r\n{}\r\n\r\n", headers.join("\r\n")).into_bytes();
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes.extend_from_slice(&noise);
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        if let Ok(httparse::Status::Complete(_)) = resp.parse(&bytes) {
            if let Ok(h) = check_response(&resp, head_request, false) {
                let mut out = Vec::new();
                write_response_head(&bytes, &mut out, h.framing, h.reusable);
                proptest::prop_assert!(out.ends_with(b"\r\n\r\n"));
            }
        }
    }

    #[test]
    fn request_heads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = parse(&bytes);
    }

    // Heads that get far (the generator of the paths' property test),
    // with a byte changed and cut anywhere: any answer, never a panic.
    #[test]
    fn mutated_heads_never_panic(
        case in crate::path_tests::request(),
        at in proptest::prelude::any::<proptest::sample::Index>(),
        byte in proptest::prelude::any::<u8>(),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        let mut bytes = case;
        let i = at.index(bytes.len());
        bytes[i] = byte;
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = parse(&bytes);
        let _ = Chunked::default().scan(&bytes);
    }
}
