//! HTTP/1 heads and chunked bodies, as the gateway's rules read them.

use opennotr_gateway::fuzzing::{self as gw, Body};

use crate::{pieces, split_ctl};

/// Most bytes of a request head the gateway reads (`rules::MAX_REQUEST_HEAD`).
const MAX_REQUEST_HEAD: usize = 32 * 1024;
/// Most fields of a head it reads (`rules::MAX_HEADERS`).
const MAX_HEADERS: usize = 100;

/// How many `Content-Length` and `Transfer-Encoding` fields a head has.
fn framing_fields(head: &[u8]) -> (usize, usize) {
    let names = head.split(|b| *b == b'\n').map(|line| line.split(|b| *b == b':').next().unwrap_or_default());
    names.fold((0, 0), |(cl, te), name| {
        (
            cl + usize::from(name.eq_ignore_ascii_case(b"content-length")),
            te + usize::from(name.eq_ignore_ascii_case(b"transfer-encoding")),
        )
    })
}

/// Where a chunked body at the start of `buf` ends, if it does in `buf`.
fn chunked_end(buf: &[u8]) -> Option<usize> {
    gw::Chunked::default().scan(buf).ok().flatten()
}

/// A visitor's connection, request after request, as the direct path and
/// the guard in front of hyper read it: heads by the rules, bodies by the
/// framing the rules decided. For every request taken: the hyper path's
/// rules decide alike; the head the service gets has at most one framing
/// field, and read again by the same rules it frames the body the same
/// way, routes to the same name and targets the same path (so the
/// service cannot read a body boundary other than the gateway's); the
/// route name is lowercase without a trailing dot.
pub fn http_request(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        let Ok(Some(req)) = gw::request(rest) else { return };
        assert!(req.head_len > 0 && req.head_len <= rest.len() && req.head_len <= MAX_REQUEST_HEAD);
        assert_ne!(req.body, Body::Close);
        assert_eq!(req.route, req.route.to_ascii_lowercase());
        // (Empty for a `Host` of dots, which no domain is.)
        assert!(!req.route.ends_with('.'), "{:?}", req.route);
        if let Some(hyper) = &req.hyper {
            assert_eq!(hyper, &Ok((req.body, req.route.clone(), req.upgrade)), "the hyper path decides otherwise");
        }
        let (cl, te) = framing_fields(&req.rewritten);
        assert!(cl + te <= 1, "{}", String::from_utf8_lossy(&req.rewritten));
        match gw::request(&req.rewritten) {
            Ok(Some(again)) => {
                assert_eq!(again.head_len, req.rewritten.len());
                assert_eq!((again.body, &again.route, &again.path), (req.body, &req.route, &req.path));
                assert_eq!(again.upgrade, req.upgrade);
            }
            // Our own fields may take a head at the limits past them.
            Err(431) => {}
            other => panic!("the service's head is refused: {other:?}\n{}", String::from_utf8_lossy(&req.rewritten)),
        }
        at += req.head_len;
        match req.body {
            Body::None => {}
            Body::Length(n) => match usize::try_from(n).ok().filter(|n| *n <= data.len() - at) {
                Some(n) => at += n,
                None => return,
            },
            Body::Chunked => match chunked_end(&data[at..]) {
                Some(end) => at += end,
                None => return,
            },
            Body::Close => unreachable!(),
        }
        if req.close || req.upgrade {
            return;
        }
    }
}

/// A service's connection, response after response, as the direct path
/// reads it (control byte: bit 0, the request was HEAD; bit 1, it asked
/// for an upgrade). For every response taken: the head the visitor gets
/// frames the body the same way when read again, holds one
/// `Content-Length` at most and none beside `Transfer-Encoding` when
/// there is a body, and
/// says `Connection: close` unless the service's connection is reusable.
pub fn http_response(data: &[u8]) {
    let (ctl, data) = split_ctl(data);
    let (head_request, upgrade) = (ctl & 1 != 0, ctl & 2 != 0);
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        let Ok(Some(resp)) = gw::response(rest, head_request, upgrade) else { return };
        assert!(resp.head_len > 0 && resp.head_len <= rest.len());
        assert!((100..=999).contains(&resp.status));
        // The gateway's `Content-Length` and `Connection: close` may take a
        // head of a hundred fields past the hundred its parser reads.
        let fields = resp.rewritten.windows(2).filter(|w| w == b"\r\n").count() - 2;
        if fields <= MAX_HEADERS {
            let again = gw::response(&resp.rewritten, head_request, upgrade)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&resp.rewritten)))
                .expect("a whole head");
            assert_eq!(again.head_len, resp.rewritten.len());
            assert_eq!((again.status, again.body), (resp.status, resp.body));
        }
        // `Transfer-Encoding` goes on as the service sent it; the length
        // is the gateway's own.
        let (cl, te) = framing_fields(&resp.rewritten);
        assert!(cl <= 1, "{}", String::from_utf8_lossy(&resp.rewritten));
        if resp.body != Body::None {
            assert!(cl == 0 || te == 0, "{}", String::from_utf8_lossy(&resp.rewritten));
        }
        let says_close = resp.rewritten.windows(19).any(|w| w.eq_ignore_ascii_case(b"\r\nConnection: close"));
        assert_eq!(says_close, !resp.reusable);
        at += resp.head_len;
        if (100..200).contains(&resp.status) && resp.status != 101 {
            continue;
        }
        if !resp.reusable {
            return;
        }
        match resp.body {
            Body::None => {}
            Body::Length(n) => match usize::try_from(n).ok().filter(|n| *n <= data.len() - at) {
                Some(n) => at += n,
                None => return,
            },
            Body::Chunked => match chunked_end(&data[at..]) {
                Some(end) => at += end,
                None => return,
            },
            Body::Close => unreachable!("a body to the connection's end is not reusable"),
        }
    }
}

/// The strict chunked scanner: its verdict does not depend on how the
/// body is split into reads; it never ends a body past its input; a body
/// ends in CRLF and ends at the same place when scanned alone, and not a
/// byte earlier.
pub fn chunked(data: &[u8]) {
    let (ctl, data) = split_ctl(data);
    let whole = gw::Chunked::default().scan(data);
    let mut split = gw::Chunked::default();
    let mut at = 0;
    let mut verdict = Ok(None);
    for piece in pieces(data, ctl) {
        match split.scan(piece) {
            Ok(None) => at += piece.len(),
            Ok(Some(n)) => {
                assert!(n <= piece.len());
                verdict = Ok(Some(at + n));
                break;
            }
            Err(status) => {
                verdict = Err(status);
                break;
            }
        }
    }
    assert_eq!(verdict, whole, "the verdict depends on how the body was split");
    if let Ok(Some(n)) = whole {
        assert!(n >= 5 && n <= data.len());
        assert!(data[..n].ends_with(b"\r\n"));
        assert_eq!(gw::Chunked::default().scan(&data[..n]), Ok(Some(n)));
        assert_eq!(gw::Chunked::default().scan(&data[..n - 1]), Ok(None));
    }
}
