//! The request corpus: cases of request smuggling and HTTP/1 parser
//! differentials, grouped as in the published research they come from
//! (Http11Probe's suites, the HTTP Garden, Kettle's desync research, the
//! 2025 chunk-extension work); see `tests/tests/gateway_desync.rs`.
//! Each case's expectation is the strict reading of RFC 9112 / RFC 9110
//! that `crates/gateway/src/rules.rs` implements.

use super::{Case, Expect::*, Fwd, FWD};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        // A1: Positive control: a plain POST with CL 5 and a 5-byte body.
        Case { id: "cl-baseline", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // A2: CL value has a leading `+`.
        Case { id: "cl-plus-sign", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: +5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // A3: Negative CL.
        Case { id: "cl-negative", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: -1\r\n\r\n".to_vec(), expect: Refuse(400) },
        // A4: CL `-0`: a signed zero.
        Case { id: "cl-negative-zero", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: -0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // A5: CL written in hex with a `0x` prefix.
        Case { id: "cl-hex-prefix", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 0x5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // A6: CL with a `0o` octal prefix.
        Case { id: "cl-octal-prefix", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 0o5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // A7: Digit separator inside CL (`1_0`). Python's `int()` reads this as 10.
        Case { id: "cl-underscore", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 1_0\r\n\r\nhelloworld".to_vec(), expect: Refuse(400) },
        // A8: Whitespace inside the digits (`1 0`).
        Case { id: "cl-internal-space", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 1 0\r\n\r\nhelloworld".to_vec(), expect: Refuse(400) },
        // A9: A digit followed by a letter (`1Z`). A longest-valid-prefix parser reads 1.
        Case { id: "cl-trailing-garbage", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 1Z\r\n\r\nZ".to_vec(), expect: Refuse(400) },
        // A10: A CL value with no digits at all.
        Case { id: "cl-non-numeric", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: abc\r\n\r\n".to_vec(), expect: Refuse(400) },
        // A11: Empty CL value. Parsers variously read it as 0, as "read until close", or forward it unchanged.
        Case { id: "cl-empty", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: \r\n\r\n".to_vec(), expect: Refuse(400) },
        // A12: An empty CL line followed by a valid one. A front end that takes the first value as 0 forwards the rest as a new request.
        Case { id: "cl-empty-then-valid", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: \r\nContent-Length: 47\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // A13: One CL field holding two different values.
        Case { id: "cl-comma-different", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5, 10\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // A14: One CL field holding the same value twice (`5, 5`). The RFC lets a recipient collapse this; our policy does not.
        Case { id: "cl-comma-same", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // A15: Two CL field lines that disagree (CL.CL).
        Case { id: "cl-dup-lines-differ", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nContent-Length: 10\r\n\r\nhelloworld".to_vec(), expect: Refuse(400) },
        // A16: Two identical CL field lines.
        Case { id: "cl-dup-lines-identical", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // A17: CL `005`. Valid under `1*DIGIT`.
        Case { id: "cl-leading-zeros", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 005\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // A18: CL `010` with a 10-byte body. A C-style `strtol(...,0)` reads octal 8 and leaves 2 bytes on the wire.
        Case { id: "cl-leading-zero-octal-trap", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 010\r\n\r\n0123456789".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"0123456789", ..FWD }]) },
        // A19: CL `00`.
        Case { id: "cl-double-zero", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 00\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"", ..FWD }]) },
        // A20: Two spaces before the CL value.
        Case { id: "cl-ows-double-space", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length:  5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // A21: HTAB as the OWS before the CL value.
        Case { id: "cl-ows-tab", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length:\t5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // A22: Trailing space after the CL value.
        Case { id: "cl-ows-trailing-space", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5 \r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // A23: A 20-digit CL, larger than u64::MAX.
        Case { id: "cl-overflow", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(), expect: Refuse(400) },
        // A24: CL = 2^64 + 5. A parser that wraps on overflow reads 5.
        Case { id: "cl-u64-wrap", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 18446744073709551621\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // A25: `Content-Length : 5`. Some servers strip the space and see CL. Others see an unknown header.
        Case { id: "cl-space-before-colon", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length : 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // A26: `Content_Length` alongside the real CL. The underscore name is a valid token, but CGI/WSGI-style environments map it to the same variable as `Content-Length`.
        Case { id: "cl-underscore-name", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 11\r\nContent_Length: 99\r\n\r\nhello world".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello world", absent: &["content_length"], ..FWD }]) },
        // A27: A huge CL with no body sent.
        // Here: no body size limit: the body streams under bodyTimeout; the visitor sends none and half-closes.
        Case { id: "cl-huge-no-body", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 999999999\r\n\r\n".to_vec(), expect: Incomplete },
        // A28: CL 10, but only 5 bytes arrive before the client half-closes.
        Case { id: "cl-undersend", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 10\r\n\r\nhello".to_vec(), expect: Incomplete },
        // A29: GET with a CL body. Some hops drop the body but keep the CL header, or the reverse.
        Case { id: "get-with-cl-body", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"hello", ..FWD }]) },
        // A30: HEAD request that carries a body.
        Case { id: "head-with-cl-body", bytes: b"HEAD / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "HEAD", target: b"/", body: b"hello", ..FWD }]) },
        // A31: Client-side / CL.0 desync: a POST to a route that many servers answer without reading the body (a static file or a redirect). The body is a request prefix.
        Case { id: "cl0-route-ignores-body", bytes: b"POST /static/app.css HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 32\r\n\r\nGET /admin HTTP/1.1\r\nX-Ignore: x".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/static/app.css", body: b"GET /admin HTTP/1.1\r\nX-Ignore: x", ..FWD }]) },
        // B1: Positive control: a single-chunk body.
        Case { id: "te-chunked-baseline", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // B2: CL.TE: CL covers the whole body, but the chunked body ends after `0\r\n\r\n`. A CL-framing hop forwards everything, and a TE-framing hop then sees `GET /admin` as the next request.
        Case { id: "clte-classic", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 52\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B3: TE.CL: CL covers only the first chunk-size line. The chunk data is a complete request whose own `Content-Length: 7` soaks up the trailing `\r\n0\r\n\r\n`.
        Case { id: "tecl-classic", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n42\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 7\r\n\r\n\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B4: TE.TE: a second TE field line with a different name case and a bogus value. Hops that keep only the first or only the last TE line disagree.
        Case { id: "tete-chunked-plus-x", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 52\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B5: Two `Transfer-Encoding: chunked` lines and no CL. Tornado treated this as "no body", while Pound forwarded it as a single chunked.
        Case { id: "te-dual-chunked-lines", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nZ\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B6: `chunked, chunked` in one field.
        Case { id: "te-list-chunked-twice", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B7: `chunked, gzip`: chunked is not the last coding.
        Case { id: "te-chunked-not-final", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B8: `gzip, chunked`: the framing can be determined, but gzip is not supported.
        Case { id: "te-gzip-chunked", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(501) },
        // B9: An unknown coding and no CL. FastHTTP treated every unknown coding as chunked.
        // Here: RFC 9112 §6.3: a request whose final coding is not chunked MUST get 400 (501 is for an unknown coding before chunked).
        Case { id: "te-unknown-no-cl", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B10: `xchunked` plus CL. A hop that substring-matches `chunked` and one that ignores unknown codings disagree.
        Case { id: "te-xchunked", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B11: `chunk`, aimed at lazy prefix matching.
        // Here: RFC 9112 §6.3: final coding not chunked: 400.
        Case { id: "te-truncated-chunk", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunk\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B12: `identity` plus CL. The coding was removed from the registry in RFC 7230, and some servers still map it to "no coding".
        Case { id: "te-identity", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B13: `Chunked` (capital C) plus CL.
        Case { id: "te-case-value", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: Chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B14: An all-uppercase field name, `TRANSFER-ENCODING`, plus CL.
        Case { id: "te-case-name", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTRANSFER-ENCODING: chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B15: `Transfer-Encoding : chunked` plus CL.
        Case { id: "te-space-before-colon", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B16: `Transfer-Encoding:\tchunked` with no CL. HTAB is legal OWS, so this *is* chunked.
        Case { id: "te-tab-ows", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // B17: `chunked ` (a trailing SP) plus CL.
        Case { id: "te-trailing-space", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked \r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B18: `"chunked"` in quotes, with no CL.
        Case { id: "te-quoted", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: \"chunked\"\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B19: `'chunked'` with no CL. `'` is a tchar, so this is a *well-formed unknown* coding.
        // Here: RFC 9112 §6.3: 'chunked' (quoted) is not chunked, so the final coding is not chunked: 400.
        Case { id: "te-apostrophes", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: 'chunked'\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B20: `, chunked`: an empty list member first. Gunicorn, Mongoose and Passenger treated `,chunked` as a coding distinct from `chunked`, while Azure CDN, nghttpx, relayd, OLS and Pound forwarded it unchanged.
        Case { id: "te-leading-comma", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: , chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B21: `chunked,`: an empty list member last.
        Case { id: "te-trailing-comma", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B22: An empty TE value plus CL.
        Case { id: "te-empty-value", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: \r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B23: A VT (0x0B) before `chunked`.
        Case { id: "te-vertical-tab", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: \x0bchunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B24: An FF (0x0C) before `chunked`.
        Case { id: "te-form-feed", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: \x0cchunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B25: `chunked\x00`. C-string code truncates at the NUL and sees `chunked`.
        Case { id: "te-nul-suffix", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\x00\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B26: `chunked\r\r\n`: a bare CR after the value.
        Case { id: "te-bare-cr-suffix", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B27: `\xa0chunked\xa0`. Tornado and Bun strip obs-text from the ends of values and see `chunked`.
        Case { id: "te-nbsp", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: \xa0chunked\xa0\r\n\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B28: `ch\x96nked`: a high byte in the middle of the coding.
        Case { id: "te-high-byte-in-value", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: ch\x96nked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B29: A TE value folded onto the next line.
        Case { id: "te-obs-fold-value", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B30: The TE line is indented, so a folding parser treats it as a continuation of `X-Pad`.
        Case { id: "te-hidden-by-fold", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nX-Pad: x\r\n Transfer-Encoding: chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B31: The line before TE ends in a bare LF (`X-Pad: x\nTransfer-Encoding: chunked`).
        Case { id: "te-after-bare-lf", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nX-Pad: x\nTransfer-Encoding: chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B32: The line before TE ends in a bare CR (`X-Pad: x\rTransfer-Encoding: chunked`).
        Case { id: "te-after-bare-cr", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nX-Pad: x\rTransfer-Encoding: chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B33: `Transfer_Encoding: chunked` plus CL. This is a valid token name and is *not* TE, but Uvicorn treated it as chunked in the Http11Probe snapshot.
        Case { id: "te-name-underscore", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", absent: &["transfer_encoding"], ..FWD }]) },
        // B34: `Transfer Encoding: chunked`: SP inside the name.
        Case { id: "te-name-space", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B35: `Transfer-Encoding x: chunked`: junk between the name and the colon.
        Case { id: "te-name-junk-before-colon", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding x: chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B36: `Transf\x82r-Encoding`: a high byte in the name.
        Case { id: "te-name-high-byte", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransf\x82r-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B37: The name is continued across a line break (`Transfer-\r\nEncoding: chunked`). Passenger joined the two lines.
        Case { id: "te-name-split-across-lines", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-\r\nEncoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B38: `Transfer-%45ncoding`: `%` is a tchar, so this is a valid but *different* field name.
        Case { id: "te-name-percent", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-%45ncoding: chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", present: &[("transfer-%45ncoding", b"chunked")], ..FWD }]) },
        // B39: `Content-Encoding: chunked` is not a transfer coding.
        Case { id: "te-swapped-for-content-encoding", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", present: &[("content-encoding", b"chunked")], ..FWD }]) },
        // B40: `chunked;ext=val`: parameters on the chunked coding.
        Case { id: "te-chunked-with-params", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked;ext=val\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // B41: TE on an HTTP/1.0 request, with CL as well.
        Case { id: "te-http10", bytes: b"POST / HTTP/1.0\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // B42: `Connection: Transfer-Encoding`, so the front end deletes TE as hop-by-hop and the back end frames by CL.
        Case { id: "te-connection-nominated", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C1: Positive control: two chunks.
        Case { id: "chunked-multi-baseline", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello world", ..FWD }]) },
        // C2: Positive control: an uppercase hex size (`A` = 10).
        Case { id: "chunk-size-uppercase-hex", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\nA\r\nhelloworld\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"helloworld", ..FWD }]) },
        // C3: Positive control: only the last-chunk.
        Case { id: "chunked-empty", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"", ..FWD }]) },
        // C4: A token=token chunk extension.
        Case { id: "chunk-ext-valid", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // C5: A quoted-string extension value containing `;`.
        Case { id: "chunk-ext-quoted", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x;y\"\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // C6: BWS around `;` and `=`, which the grammar allows.
        Case { id: "chunk-ext-bws", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a = b\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // C7: A `;` with no extension name.
        Case { id: "chunk-ext-bare-semicolon", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C8: A non-tchar (`[`) in the extension name.
        Case { id: "chunk-ext-invalid-token", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;bad[=x\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C9: A NUL inside the extension.
        Case { id: "chunk-ext-nul", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;\x00ext\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C10: **TERM.EXT**: a bare LF inside the extension. A front end that ends the size line at LF reads a 2-byte chunk `xx` and then one 0x47-byte chunk that hides everything up to the final `0\r\n\r\n`. A back end that keeps scanning to CRLF reads `2;\nxx` as the size line, takes `47` as the data, and then finds `0\r\n\r\n` followed by a smuggled `GET /admin` whose CL 7 soaks up the leftover `\r\n0\r\n\r\n`.
        Case { id: "chunk-ext-lf-term-ext", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n2;\nxx\r\n47\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 7\r\n\r\n\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C11: **EXT.TERM**: the same bytes with the roles swapped. The front end treats `\n` as part of the extension, so request 1 is complete after `44\r\n0\r\n\r\n` and a second `POST` (CL 54) follows. The back end ends the size line at LF, reads chunk `0x44` over the start of request 2, and then sees `GET /admin`.
        Case { id: "chunk-ext-lf-ext-term", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n2;\nxx\r\n44\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 54\r\n\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C12: A bare CR inside the extension (`5;a\rX`).
        Case { id: "chunk-ext-bare-cr", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rX\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C13: `\r\r` in the size-line whitespace. llhttp ended the line at `\rX`, while ATS, Akamai and Google's classic ALB forwarded the byte.
        Case { id: "chunk-ext-cr-cr", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\r;a\r\nxx\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C14: A 64 KiB extension value.
        Case { id: "chunk-ext-oversized", bytes: [&b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext="[..], &[b'a'; 65_536][..], &b"\r\nhello\r\n0\r\n\r\n"[..]].concat(), expect: Refuse(400) },
        // C15: The size line ends in a bare LF.
        Case { id: "chunk-size-lf-only", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C16: The size line ends in a bare CR.
        Case { id: "chunk-size-bare-cr", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C17: The chunk data ends in a bare LF instead of CRLF (one side of **TERM.SPILL/SPILL.TERM**).
        Case { id: "chunk-data-lf-term", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C18: Chunk data longer than the declared size (two extra bytes before CRLF).
        Case { id: "chunk-data-spill", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C19: No CRLF after the chunk data; the next size line follows at once.
        Case { id: "chunk-data-missing-crlf", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C20: Two arbitrary bytes (`XY`) where the CRLF after the data should be. A "skip two bytes" parser accepts them.
        Case { id: "chunk-data-any-two-bytes", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C21: `0x5`. `strtol(...,16)` and Python `int(...,16)` accept the prefix.
        Case { id: "chunk-size-hex-prefix", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C22: `+5`.
        Case { id: "chunk-size-plus", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C23: `-1`.
        Case { id: "chunk-size-negative", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C24: `0_44`: a prefix parser reads 0 (end of body), and Python `int(..., 16)` reads 0x44 = 68 data bytes, which hide a request.
        Case { id: "chunk-size-underscore-smuggle", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0_44\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 7\r\n\r\n\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C25: Leading SP before the size.
        Case { id: "chunk-size-leading-ws", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C26: Trailing SP after the size with no `;`.
        Case { id: "chunk-size-trailing-ws", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C27: A size followed by junk. ATS read the longest hex prefix and forwarded the junk.
        Case { id: "chunk-size-garbage-suffix", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n1these-bytes-are-junk\r\nZ\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C28: A non-hex size line.
        Case { id: "chunk-size-non-hex", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\nZZ\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C29: An empty size line, i.e. an extra CRLF where a size should be. Go, Hyper and Mongoose once read it as 0.
        Case { id: "chunk-size-empty", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C30: An extra CRLF between chunks. OpenLiteSpeed de-chunked this *without* swapping TE for CL, exposing the embedded request.
        Case { id: "chunk-extra-crlf-before-last", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n17\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\n\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C31: A 17-hex-digit size (`FFFFFFFFFFFFFFFF0`).
        Case { id: "chunk-size-overflow", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF0\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C32: A size of 2^64 + 5; a wrapping parser reads 5.
        Case { id: "chunk-size-u64-wrap", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C33: A 21-digit size whose *value* is 5.
        Case { id: "chunk-size-many-leading-zeros", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000005\r\nhello\r\n0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // C34: A chunk, then EOF with no last-chunk.
        Case { id: "chunked-no-last-chunk", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(), expect: Incomplete },
        // C35: The final empty line after the last-chunk is a bare LF.
        Case { id: "last-chunk-bare-lf", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n".to_vec(), expect: Refuse(400) },
        // C36: Positive control: one ordinary trailer field.
        Case { id: "trailer-valid", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // C37: `Content-Length` sent as a trailer.
        Case { id: "trailer-content-length", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // C38: `Host` sent as a trailer.
        Case { id: "trailer-host", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nHost: evil.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // C39: A trailer `X:POST / HTTP/1.1` with no space after the colon. It is valid, but Puma ended the body at `\r\nXX`, and ATS forwards trailers unchanged.
        Case { id: "trailer-looks-like-request", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX:POST / HTTP/1.1\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"", ..FWD }]) },
        // C40: A folded trailer line.
        Case { id: "trailer-obs-fold", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Sum: a\r\n b\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C41: A trailer line with no colon.
        Case { id: "trailer-no-colon", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nNoColonHere\r\n\r\n".to_vec(), expect: Refuse(400) },
        // C42: A bare CR inside a trailer value.
        Case { id: "trailer-bare-cr", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Sum: a\rb\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D1: An HTTP/1.1 request with no Host.
        Case { id: "host-missing", bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D2: Two Host lines with different values.
        Case { id: "host-duplicate-different", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nHost: other.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D3: Two identical Host lines.
        Case { id: "host-duplicate-identical", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D4: An empty Host value.
        Case { id: "host-empty", bytes: b"GET / HTTP/1.1\r\nHost: \r\n\r\n".to_vec(), expect: Refuse(400) },
        // D5: Two authorities in one Host value, separated by a comma.
        Case { id: "host-comma-list", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test, other.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D6: userinfo in Host (`user@host`).
        Case { id: "host-userinfo", bytes: b"GET / HTTP/1.1\r\nHost: user@app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D7: A path in Host.
        Case { id: "host-path", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test/admin\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D8: A non-numeric port.
        Case { id: "host-bad-port", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test:8o8o\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D9: A NUL in Host. A value that is truncated at the NUL routes to a different name than the full value.
        Case { id: "host-nul", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\x00.evil.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D10: `\xff` on both sides of the Host name. Bun stripped them.
        Case { id: "host-high-bytes", bytes: b"GET / HTTP/1.1\r\nHost: \xffapp.example.test\xff\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D11: An IPv6 literal with no closing bracket.
        Case { id: "host-ipv6-unterminated", bytes: b"GET / HTTP/1.1\r\nHost: [::1:8080\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D12: OWS around the Host value.
        Case { id: "host-ows", bytes: b"GET / HTTP/1.1\r\nHost:   app.example.test  \r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", present: &[("host", b"app.example.test")], ..FWD }]) },
        // D13: HTTP/1.0 with no Host.
        Case { id: "host-http10-absent", bytes: b"GET / HTTP/1.0\r\n\r\n".to_vec(), expect: Refuse(400) },
        // D14: The absolute-form target names a different authority from the Host header.
        Case { id: "absolute-form-host-mismatch", bytes: b"GET http://other.example.test/ HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(404) },
        // E1: `Connection: Content-Length`. A hop that honours it strips CL (giving CL.0 / 0.CL); the next hop may still frame by CL.
        Case { id: "connection-nominates-content-length", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // E2: `Connection: Host`, which would strip Host at the next hop.
        Case { id: "connection-nominates-host", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: Host\r\n\r\n".to_vec(), expect: Refuse(400) },
        // E3: `Connection : Content-Length`. This is SKIPHOP: some hops honour the field and others ignore it.
        Case { id: "connection-name-ws-before-colon", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nConnection : Content-Length\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // E4: The client nominates `X-Forwarded-For` as hop-by-hop, hoping the hop after the gateway deletes the value the gateway adds.
        Case { id: "connection-strips-forwarding-header", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close, X-Forwarded-For\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", absent: &["connection"], present: &[("x-forwarded-for", b"127.0.0.1")] }]) },
        // E5: An h2c upgrade through the gateway. If the gateway forwards it and then tunnels the upstream's 101, the client talks HTTP/2 directly to the back end and bypasses gateway rules.
        Case { id: "upgrade-h2c", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", absent: &["upgrade", "http2-settings", "connection"], ..FWD }]) },
        // E6: `Upgrade: websocket` without `Connection: Upgrade`.
        Case { id: "upgrade-without-connection-option", bytes: b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: websocket\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/ws", body: b"", absent: &["upgrade"], ..FWD }]) },
        // E7: An upgrade request over HTTP/1.0.
        Case { id: "upgrade-http10", bytes: b"GET /ws HTTP/1.0\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/ws", body: b"", absent: &["upgrade"], ..FWD }]) },
        // E8: `Expect: 100-continue`, with the body sent without waiting.
        Case { id: "expect-100-immediate-body", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", absent: &["expect"], ..FWD }]) },
        // E9: An unknown expectation.
        Case { id: "expect-unknown", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nExpect: 200-ok\r\n\r\n".to_vec(), expect: Refuse(417) },
        // E10: An obfuscated `100-continue` (`y 100-continue`). One hop sees an expectation and another does not, which Kettle used to build 0.CL desyncs.
        Case { id: "expect-obfuscated", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nExpect: y 100-continue\r\n\r\nhello".to_vec(), expect: Refuse(417) },
        // E11: `Expect: 100-continue` on HTTP/1.0.
        Case { id: "expect-http10", bytes: b"POST / HTTP/1.0\r\nHost: app.example.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"hello", ..FWD }]) },
        // E12: Legacy hop-by-hop fields: `Keep-Alive`, `Proxy-Connection`, `TE`.
        Case { id: "legacy-hop-by-hop", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nProxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nConnection: TE\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", absent: &["proxy-connection", "keep-alive", "connection"], ..FWD }]) },
        // F1: A folded header value.
        Case { id: "obs-fold", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Note: first\r\n second\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F2: Whitespace at the start of the first field line, right after the request line. aiohttp stripped it and saw `Content-Length`.
        Case { id: "ws-before-first-header", bytes: b"GET / HTTP/1.1\r\n\tContent-Length: 1\r\nHost: app.example.test\r\n\r\nX".to_vec(), expect: Refuse(400) },
        // F3: SP between the name and the colon.
        Case { id: "ws-before-colon", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Test : value\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F4: HTAB between `Content-Length` and the colon.
        Case { id: "tab-before-colon", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length\t: 5\r\n\r\nhello".to_vec(), expect: Refuse(400) },
        // F5: HTAB inside the name (`Content\tLength`).
        Case { id: "tab-in-name", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 11\r\nContent\tLength: 99\r\n\r\nhello world".to_vec(), expect: Refuse(400) },
        // F6: A field line that starts with `:`.
        Case { id: "empty-name", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\n: empty-name\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F7: A line consisting of just `:`. Mongoose treated it as the end of the header block.
        Case { id: "empty-name-and-value", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\n:\r\nX-After: chopped\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F8: A field line without a colon.
        Case { id: "no-colon", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nNoColonHere\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F9: `Content-Length 10`: name and value separated only by SP.
        Case { id: "name-value-space-separated", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length 10\r\n\r\n0123456789".to_vec(), expect: Refuse(400) },
        // F10: A non-tchar (`[`) in the name.
        Case { id: "invalid-name-char", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nBad[Name: value\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F11: UTF-8 bytes in the name.
        Case { id: "non-ascii-name", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-T\xc3\xabst: value\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F12: `Content-Length\x85`. Gunicorn stripped `\x85`/`\xa0` from the end of names, and ATS/relayd forwarded such names.
        Case { id: "name-trailing-obs-text", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length\x85: 10\r\n\r\n0123456789".to_vec(), expect: Refuse(400) },
        // F13: A NUL inside a value.
        Case { id: "nul-in-value", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Test: val\x00ue\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F14: A bare CR inside a value, used to hide a second field from a proxy that ends lines at CR.
        Case { id: "bare-cr-in-value", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nVisible: a\rSmuggled: b\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F15: BEL, BS and VT in a value.
        Case { id: "ctl-in-value", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Test: abc\x07\x08\x0bdef\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F16: DEL (0x7F) in a value.
        Case { id: "del-in-value", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Test: a\x7fb\r\n\r\n".to_vec(), expect: Refuse(400) },
        // F17: obs-text at both ends of a value. Waitress stripped `\x85`/`\xa0`, so `\x85admin\xa0` became `admin`.
        Case { id: "obs-text-value-preserved", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-User: \x85admin\xa0\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", present: &[("x-user", b"\x85admin\xa0")], ..FWD }]) },
        // F18: A 100 KB value.
        Case { id: "long-header-value", bytes: [&b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Big: "[..], &[b'B'; 100_000][..], &b"\r\n\r\n"[..]].concat(), expect: Refuse(431) },
        // F19: 10,000 field lines.
        Case { id: "many-headers", bytes: { let mut v = b"GET / HTTP/1.1\r\nHost: app.example.test\r\n".to_vec(); for i in 0..10_000 { v.extend_from_slice(format!("X-H-{i}: v\r\n").as_bytes()); } v.extend_from_slice(b"\r\n"); v }, expect: Refuse(431) },
        // G1: `get` is a valid token, but not the GET method.
        Case { id: "method-lowercase", bytes: b"get / HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "get", target: b"/", body: b"", ..FWD }]) },
        // G2: Separator characters in the method. aiohttp took the longest valid prefix.
        Case { id: "method-invalid-chars", bytes: b"G=\":<>(e),[T];? /get HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G3: Two SPs between the method and the target.
        Case { id: "double-space", bytes: b"GET  / HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G4: HTAB as a separator.
        Case { id: "tab-separator", bytes: b"GET\t/ HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G5: SP after the version.
        Case { id: "trailing-space", bytes: b"GET / HTTP/1.1 \r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G6: No request target.
        Case { id: "missing-target", bytes: b"GET HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G7: A bare LF used as the separator between target and version. aiohttp then read it as an HTTP/0.9 request.
        Case { id: "lf-inside-request-line", bytes: b"GET /\nHTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G8: SP inside the target.
        Case { id: "space-in-target", bytes: b"GET /pa th HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G9: A `#fragment` in the target.
        Case { id: "fragment-in-target", bytes: b"GET /path#frag HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G10: A NUL in the target.
        Case { id: "nul-in-target", bytes: b"GET /\x00test HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G11: Raw UTF-8 in the target.
        Case { id: "non-ascii-target", bytes: b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G12: A backslash in the path. Some servers turn it into `/`.
        Case { id: "backslash-target", bytes: b"GET /admin\\..\\public HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G13: `%0d%0a` in the target is syntactically valid percent-encoding.
        Case { id: "percent-encoded-crlf", bytes: b"GET /x%0d%0aX-Injected:%20true HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/x%0d%0aX-Injected:%20true", body: b"", absent: &["x-injected"], ..FWD }]) },
        // G14: `*` with GET.
        Case { id: "asterisk-with-get", bytes: b"GET * HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G15: Positive control: `OPTIONS *`.
        Case { id: "options-asterisk", bytes: b"OPTIONS * HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "OPTIONS", target: b"*", body: b"", ..FWD }]) },
        // G16: CONNECT in authority-form sent to a reverse proxy.
        // Here: CONNECT is a method this gateway does not serve (it is not a forward proxy): 405, as nginx answers.
        Case { id: "authority-form-connect", bytes: b"CONNECT app.example.test:443 HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(405) },
        // G17: `HTTP/1.2` is well-formed but unsupported.
        Case { id: "version-1-2", bytes: b"GET / HTTP/1.2\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(505) },
        // G18: The HTTP/2 prior-knowledge preface sent to an HTTP/1.1 listener.
        Case { id: "h2-preface", bytes: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), expect: Refuse(505) },
        // G19: `http/1.1` in lowercase.
        Case { id: "version-lowercase", bytes: b"GET / http/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G20: `HTTP/1` with no minor version.
        Case { id: "version-missing-minor", bytes: b"GET / HTTP/1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G21: `HTTP/1.32`. aiohttp took the longest valid prefix, and libevent wrapped `HTTP/4294967295.255`.
        Case { id: "version-multi-digit", bytes: b"GET / HTTP/1.32\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G22: `HTTP/` followed by bare CRs, and `HTTP/ 1.1`.
        Case { id: "version-garbage", bytes: b"GET / HTTP/\r\r1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G23: An HTTP/0.9 request (no version).
        Case { id: "http09", bytes: b"GET /\r\n\r\n".to_vec(), expect: Refuse(400) },
        // G24: A 100 KB target.
        Case { id: "long-target", bytes: [&b"GET /"[..], &[b'A'; 100_000][..], &b" HTTP/1.1\r\nHost: app.example.test\r\n\r\n"[..]].concat(), expect: Refuse(414) },
        // H1: The request line ends in a bare LF.
        Case { id: "bare-lf-request-line", bytes: b"GET / HTTP/1.1\nHost: app.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", ..FWD }]) },
        // H2: Every head line ends in a bare LF. OpenLiteSpeed forwarded the bare LFs unchanged to a back end that did not accept them.
        Case { id: "bare-lf-everywhere", bytes: b"GET / HTTP/1.1\nHost: app.example.test\nConnection: close\n\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", ..FWD }]) },
        // H3: A header `Useless:` ending in LF, then a bare-LF empty line. With LF tolerated this is *two* requests. Gunicorn treated `\n\nGET ...` as whitespace at the start of the header value and saw only one.
        Case { id: "bare-lf-value-then-request", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nUseless:\n\nGET /two HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", ..FWD }, Fwd { method: "GET", target: b"/two", body: b"", ..FWD }]) },
        // H4: Bare CR used as the line terminator.
        Case { id: "cr-only-line-endings", bytes: b"GET / HTTP/1.1\rHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // H5: `\r\n\rZ` after the last header. llhttp took `\r\n\r` plus any byte as the end of the header block.
        // Here: the head of the first request ends at its empty line: it is forwarded; the bare CR then starts a second request, refused.
        Case { id: "crlf-cr-x-header-end", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n\rZGET /evil: HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: ForwardThen(&[Fwd { method: "GET", ..FWD }], 400) },
        // H6: Empty lines before the request line.
        Case { id: "leading-crlf", bytes: b"\r\n\r\nGET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", ..FWD }]) },
        // H7: A line containing only SP between the request line and the first header.
        Case { id: "whitespace-line-before-headers", bytes: b"GET / HTTP/1.1\r\n \r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
        // H8: Two complete requests in one write.
        Case { id: "pipeline-two-requests", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\nGET /two HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", ..FWD }, Fwd { method: "GET", target: b"/two", body: b"", ..FWD }]) },
        // H9: `Content-Length: 0` followed by a stray `X`, then a GET. The stray byte is the start of the *next* request, which is `XGET`, a valid token method.
        Case { id: "cl0-then-stray-byte", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 0\r\n\r\nX".to_vec(), expect: Forward(&[Fwd { method: "POST", target: b"/", body: b"", ..FWD }]) },
        // H10: A valid request with `Connection: close`, followed by junk.
        Case { id: "pipeline-after-close", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\nInvalid\r\n\r\n".to_vec(), expect: Forward(&[Fwd { method: "GET", target: b"/", body: b"", ..FWD }]) },
        // H11: A head that never terminates.
        Case { id: "incomplete-head-then-eof", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Test: value".to_vec(), expect: Incomplete },
        // X1: The smuggling case of the issue: Connection removes Content-Length on the way, the body becomes the next request on the pooled stream.
        Case { id: "issue-connection-names-content-length", bytes: b"GET /a HTTP/1.1\r\nHost: app.example.test\r\nConnection: content-length\r\nContent-Length: 55\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.example.test\r\nX-Pad: ".to_vec(), expect: Refuse(400) },
        // X2: Content-Length: +49, forwarded as written before.
        Case { id: "issue-cl-plus-49", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: +49\r\n\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(), expect: Refuse(400) },
        // X3: Content-Length: 49 followed by U+00A0 (UTF-8).
        Case { id: "issue-cl-49-nbsp", bytes: b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 49\xc2\xa0\r\n\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(), expect: Refuse(400) },
        // X4: Connection: host, which made the gateway strip Host before forwarding.
        Case { id: "issue-connection-host", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: host\r\n\r\n".to_vec(), expect: Refuse(400) },
        // X5: The llhttp form of H5: a bare CR and any byte inside the head taken as its end.
        Case { id: "crlf-cr-x-in-head", bytes: b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\rZGET /evil: HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), expect: Refuse(400) },
    ]
}
