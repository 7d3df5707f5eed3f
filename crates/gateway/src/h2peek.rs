//! The name an HTTP/2 connection asks for first, from its first bytes: the
//! `:authority` (or `host`) of its first HEADERS block. A cluster node
//! reads it on the `h2c` port to carry the connection, whole, to the node
//! that serves the name ([`crate::elsewhere`]); nothing here answers the
//! visitor, and whatever this cannot read goes to the local server, which
//! has the last word on what is valid HTTP/2.
//!
//! No I/O: [`scan`] looks at the bytes read so far (after the preface), so
//! it is tested, and fuzzed, alone. It reads frames (RFC 9113 §4) up to the
//! end of the first HEADERS block (its CONTINUATION frames included) and
//! decodes that block with HPACK (RFC 7541): integers, literals (Huffman
//! coded or not), the static table and the dynamic table the block itself
//! fills. Everything is bounded: at most [`MAX_SCAN`] bytes are looked at,
//! a header block at most [`MAX_BLOCK`], a frame at the default maximum
//! size, a string at the block's size.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Bytes of a connection (after its preface) looked at, at most.
pub(crate) const MAX_SCAN: usize = 64 * 1024;
/// Size of the first header block, at most.
pub(crate) const MAX_BLOCK: usize = 16 * 1024;
/// SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 §6.5.2): no frame of
/// a client may be larger before it learned a larger one, which the server
/// has not sent yet.
const MAX_FRAME: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE's initial value: the dynamic table's bound.
const TABLE_SIZE: usize = 4096;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The first header block is not complete yet.
    More,
    /// The first request's name (lowercase, without a port), if it has one.
    Name(Option<String>),
    /// Not readable as the start of an HTTP/2 connection, or past the
    /// bounds: the local server decides what to do with it.
    Unreadable,
}

/// Reads `bytes`, the connection's first bytes after the preface.
pub fn scan(bytes: &[u8]) -> Scan {
    Scanner::default().scan(bytes)
}

/// [`scan`] as bytes come: each call reads on from where the last one
/// stopped (the bytes given grow; what was read of them is not read
/// again), so a visitor dripping frames costs linear time.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Where the next frame starts.
    at: usize,
    /// The first header block, so far.
    block: Vec<u8>,
    /// Its stream, once its HEADERS frame was read.
    stream: Option<u32>,
}

impl Scanner {
    /// Reads `bytes` (all the connection's bytes so far after the preface,
    /// the ones given before included) on from the last call.
    pub fn scan(&mut self, bytes: &[u8]) -> Scan {
        let bytes = &bytes[..bytes.len().min(MAX_SCAN)];
        loop {
            let Some(head) = bytes.get(self.at..self.at + 9) else {
                return more(bytes);
            };
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if len > MAX_FRAME {
                return Scan::Unreadable;
            }
            let Some(payload) = bytes.get(self.at + 9..self.at + 9 + len) else {
                return more(bytes);
            };
            self.at += 9 + len;
            match (self.stream, kind) {
                (None, HEADERS) if id != 0 => {
                    let Some(fragment) = headers_fragment(payload, flags) else { return Scan::Unreadable };
                    self.block.extend_from_slice(fragment);
                    self.stream = Some(id);
                }
                // Frames before the first HEADERS (SETTINGS, WINDOW_UPDATE,
                // PRIORITY…) say nothing of the name.
                (None, _) => continue,
                (Some(s), CONTINUATION) if id == s => self.block.extend_from_slice(payload),
                // A header block is followed by its CONTINUATION frames only.
                (Some(_), _) => return Scan::Unreadable,
            }
            if self.block.len() > MAX_BLOCK {
                return Scan::Unreadable;
            }
            if flags & END_HEADERS != 0 {
                return match authority(&self.block) {
                    Some(name) => Scan::Name(name),
                    None => Scan::Unreadable,
                };
            }
        }
    }
}

fn more(bytes: &[u8]) -> Scan {
    if bytes.len() >= MAX_SCAN {
        Scan::Unreadable
    } else {
        Scan::More
    }
}

/// The header block fragment of a HEADERS frame's payload: without its
/// padding and priority fields.
fn headers_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// The request's name in a whole header block: `:authority`, else `host`,
/// lowercase and without a port (`Some(None)`: the block names none);
/// `None` when the block does not decode.
fn authority(block: &[u8]) -> Option<Option<String>> {
    let mut table = Table::default();
    let (mut authority, mut host) = (None, None);
    let mut p = block;
    while let Some(&first) = p.first() {
        let (name, value) = if first & 0x80 != 0 {
            // Indexed field.
            let (i, rest) = integer(p, 7)?;
            p = rest;
            table.get(i)?
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update (at most the initial bound, as no
            // larger one was announced).
            let (size, rest) = integer(p, 5)?;
            p = rest;
            table.resize(usize::try_from(size).ok().filter(|s| *s <= TABLE_SIZE)?);
            continue;
        } else {
            // A literal: with incremental indexing (01), without (0000),
            // never indexed (0001).
            let (prefix, indexed) = if first & 0xc0 == 0x40 { (6, true) } else { (4, false) };
            let (i, rest) = integer(p, prefix)?;
            p = rest;
            let name = match i {
                0 => {
                    let (n, rest) = string(p)?;
                    p = rest;
                    n
                }
                i => table.get(i)?.0,
            };
            let (value, rest) = string(p)?;
            p = rest;
            if indexed {
                table.insert(name.clone(), value.clone());
            }
            (name, value)
        };
        match name.as_slice() {
            b":authority" if authority.is_none() => authority = Some(value),
            b"host" if host.is_none() => host = Some(value),
            _ => {}
        }
    }
    let Some(raw) = authority.or(host).filter(|v| !v.is_empty()) else { return Some(None) };
    Some(host_name(&raw))
}

/// The name in an authority (`name[:port]`), lowercase; `None` for one
/// that is not a plain DNS name (an IP literal, user info, odd bytes).
fn host_name(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let name = match text.rsplit_once(':') {
        Some((n, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => n,
        Some(_) => return None,
        None => text,
    };
    // One trailing dot (a fully qualified name) is the same name.
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| !label.is_empty() && label.len() <= 63)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then(|| name.to_ascii_lowercase())
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); what follows.
fn integer(p: &[u8], n: u32) -> Option<(u64, &[u8])> {
    let mask = (1u8 << n) - 1;
    let mut v = u64::from(*p.first()? & mask);
    let mut rest = &p[1..];
    if v < u64::from(mask) {
        return Some((v, rest));
    }
    let mut shift = 0u32;
    loop {
        let b = *rest.first()?;
        rest = &rest[1..];
        // Past 2^32 nothing in a bounded block can be meant.
        if shift > 28 {
            return None;
        }
        v += u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some((v, rest));
        }
    }
}

/// An HPACK string literal (RFC 7541 §5.2); what follows.
fn string(p: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let huffman = *p.first()? & 0x80 != 0;
    let (len, rest) = integer(p, 7)?;
    let len = usize::try_from(len).ok().filter(|l| *l <= rest.len())?;
    let (raw, rest) = rest.split_at(len);
    let s = if huffman { huffman_decode(raw)? } else { raw.to_vec() };
    Some((s, rest))
}

// ------------------------------------------------------- the settings ack

/// The empty SETTINGS frame a node that reads a connection's first request
/// sends first, as the server's preface: some clients (gRPC's) send no
/// request before they have the server's SETTINGS.
pub(crate) const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];

/// Takes out of a visitor's bytes (the preface, then frames) the client's
/// first SETTINGS acknowledgement: it answers [`EMPTY_SETTINGS`], which
/// the server that serves the connection (here, or on the node it is
/// carried to) never sent, and would take for a protocol error. Frames are
/// not looked into past that one; bytes that are not frames pass as they
/// are.
#[derive(Debug)]
pub(crate) struct AckFilter {
    /// Bytes of the preface still to pass.
    preface: usize,
    /// Bytes of the current frame still to pass (its header passed).
    frame_left: usize,
    /// The current frame header's bytes, while incomplete.
    head: Vec<u8>,
    done: bool,
}

impl AckFilter {
    pub(crate) fn new(preface_len: usize) -> AckFilter {
        AckFilter { preface: preface_len, frame_left: 0, head: Vec::with_capacity(9), done: false }
    }

    /// Whether the acknowledgement was taken out (the rest passes as is).
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Bytes held back: the start of a frame header, until it is whole.
    pub(crate) fn held(&self) -> usize {
        self.head.len()
    }

    /// Passes `input` on into `out`, less the acknowledgement.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.done {
                out.extend_from_slice(input);
                return;
            }
            if self.preface > 0 || self.frame_left > 0 {
                let n = input.len().min(self.preface.max(self.frame_left));
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
                if self.preface > 0 {
                    self.preface -= n;
                } else {
                    self.frame_left -= n;
                }
                continue;
            }
            let n = input.len().min(9 - self.head.len());
            self.head.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.head.len() < 9 {
                return;
            }
            let h = std::mem::take(&mut self.head);
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if h == [0, 0, 0, 0x4, 0x1, 0, 0, 0, 0] {
                self.done = true;
                continue;
            }
            out.extend_from_slice(&h);
            if len > MAX_FRAME {
                // Not a client's frame: nothing more to look for.
                self.done = true;
            }
            self.frame_left = len;
        }
    }
}

// -------------------------------------------------------------- tables

/// The static table's names (RFC 7541 Appendix A), index 1 first; the
/// values do not matter here but for their sizes, which no one counts.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// The dynamic table a header block fills (RFC 7541 §4), newest first.
#[derive(Default)]
struct Table {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: Option<usize>,
}

impl Table {
    fn max(&self) -> usize {
        self.max.unwrap_or(TABLE_SIZE)
    }

    /// Entry `i` of the static then the dynamic table: its name and value
    /// (a static entry's value is left empty: only names matter here, and
    /// `:authority` and `host` have none there).
    fn get(&self, i: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        let i = usize::try_from(i).ok()?;
        match i {
            0 => None,
            1..=61 => Some((STATIC_NAMES[i - 1].as_bytes().to_vec(), Vec::new())),
            _ => self.entries.get(i - 62).cloned(),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.size += size;
        self.entries.push_front((name, value));
        self.evict();
        // An entry larger than the table empties it and is not kept.
        if size > self.max() {
            self.entries.clear();
            self.size = 0;
        }
    }

    fn resize(&mut self, max: usize) {
        self.max = Some(max);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max() {
            let Some((n, v)) = self.entries.pop_back() else { break };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

// -------------------------------------------------------------- huffman

/// The code length of each symbol (256: EOS) of HPACK's Huffman code (RFC
/// 7541 Appendix B). The code is canonical: codes go up by one within a
/// length and are shifted left to the next, symbols in order; so the
/// lengths are the whole code.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

/// The canonical code, by length: for each length, its first code and the
/// symbols of that length in order.
struct Code {
    /// (length, first code, symbols), shortest first.
    lengths: Vec<(u8, u32, Vec<u16>)>,
}

fn code() -> &'static Code {
    static CODE: OnceLock<Code> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut by_len: Vec<(u8, u16)> = (0..257u16).map(|s| (HUFFMAN_LENGTHS[usize::from(s)], s)).collect();
        by_len.sort();
        let mut lengths: Vec<(u8, u32, Vec<u16>)> = Vec::new();
        let (mut next, mut prev) = (0u32, by_len[0].0);
        for (len, sym) in by_len {
            if len != prev {
                next <<= len - prev;
                prev = len;
            }
            match lengths.last_mut() {
                Some((l, _, syms)) if *l == len => syms.push(sym),
                _ => lengths.push((len, next, vec![sym])),
            }
            next += 1;
        }
        Code { lengths }
    })
}

/// Decodes a Huffman-coded string; `None` for a code that is not one, an
/// EOS inside it, or padding longer than 7 bits or not all ones (RFC 7541
/// §5.2).
fn huffman_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let code = code();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut acc, mut bits) = (0u32, 0u8);
    for &b in raw {
        for i in (0..8).rev() {
            acc = (acc << 1) | u32::from((b >> i) & 1);
            bits += 1;
            if bits > 30 {
                return None;
            }
            // The symbol of these `bits` bits, if they are a whole code:
            // codes of one length are consecutive from the first.
            let Some((_, first, syms)) = code.lengths.iter().find(|(l, _, _)| *l == bits) else { continue };
            let Some(k) = acc.checked_sub(*first).map(|k| k as usize).filter(|k| *k < syms.len()) else { continue };
            let sym = syms[k];
            if sym == 256 {
                return None;
            }
            out.push(sym as u8);
            (acc, bits) = (0, 0);
        }
    }
    // Padding: the most significant bits of EOS (all ones), under a byte.
    (bits < 8 && acc == (1u32 << bits) - 1).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: its 9-byte header, then `payload`.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 7541 C.4.1: the first request of C.4, Huffman coded.
    const C41: &str = "828684418cf1e3c2e5f23a6ba0ab90f4ff";

    #[test]
    fn the_rfcs_examples_decode() {
        assert_eq!(huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f4ff")).as_deref(), Some(&b"www.example.com"[..]));
        // C.4.2's `no-cache`, C.4.3's `custom-value`.
        assert_eq!(huffman_decode(&hex("a8eb10649cbf")).as_deref(), Some(&b"no-cache"[..]));
        assert_eq!(huffman_decode(&hex("25a849e95bb8e8b4bf")).as_deref(), Some(&b"custom-value"[..]));
        assert_eq!(authority(&hex(C41)), Some(Some("www.example.com".into())));
        // C.3.1: the same request, not Huffman coded.
        assert_eq!(authority(&hex("828684410f7777772e6578616d706c652e636f6d")), Some(Some("www.example.com".into())));
    }

    /// The client's first SETTINGS ack goes, however its bytes are split;
    /// everything else (a later ack too) passes as it came.
    #[test]
    fn the_first_settings_ack_is_taken_out() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let ack = frame(0x4, 0x1, 0, &[]);
        let headers = frame(HEADERS, END_HEADERS, 1, &hex(C41));
        let input = [&preface[..], &settings, &headers, &ack, &ack, &settings].concat();
        let want = [&preface[..], &settings, &headers, &ack, &settings].concat();
        for step in [1, 2, 7, 9, 10, 33, input.len()] {
            let mut f = AckFilter::new(preface.len());
            let mut out = Vec::new();
            for piece in input.chunks(step) {
                f.feed(piece, &mut out);
            }
            assert!(f.done(), "step {step}");
            assert_eq!(out, want, "step {step}");
        }
        // A frame past the bounds ends the search: the rest passes.
        let mut f = AckFilter::new(0);
        let mut out = Vec::new();
        let odd = [&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0][..], &ack].concat();
        f.feed(&odd, &mut out);
        assert_eq!(out, odd);
    }

    /// Every byte, alone and in a run, comes back through the code.
    #[test]
    fn every_symbol_decodes() {
        let encode = |text: &[u8]| {
            let code = code();
            let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
            for &b in text {
                let (len, first, syms) = code.lengths.iter().find(|(_, _, syms)| syms.contains(&u16::from(b))).unwrap();
                let k = syms.iter().position(|s| *s == u16::from(b)).unwrap() as u32;
                acc = (acc << len) | u64::from(first + k);
                bits += u32::from(*len);
                while bits >= 8 {
                    out.push((acc >> (bits - 8)) as u8);
                    bits -= 8;
                }
            }
            if bits > 0 {
                out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
            }
            out
        };
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&encode(&all)).as_deref(), Some(&all[..]));
        for b in 0..=255u8 {
            assert_eq!(huffman_decode(&encode(&[b, b, b])).as_deref(), Some(&[b, b, b][..]), "{b}");
        }
        assert_eq!(encode(b"www.example.com"), hex("f1e3c2e5f23a6ba0ab90f4ff"));
    }

    #[test]
    fn the_first_headers_block_names_the_connection() {
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let window = frame(0x8, 0, 0, &[0, 0x0f, 0, 1]);
        let headers = frame(HEADERS, END_HEADERS | 0x1, 1, &hex(C41));
        let all = [settings.clone(), window, headers.clone()].concat();
        assert_eq!(scan(&all), Scan::Name(Some("www.example.com".into())));
        let mut scanner = Scanner::default();
        for cut in 0..all.len() {
            assert_eq!(scan(&all[..cut]), Scan::More, "cut at {cut}");
            assert_eq!(scanner.scan(&all[..cut]), Scan::More, "cut at {cut}, read on");
        }
        assert_eq!(scanner.scan(&all), Scan::Name(Some("www.example.com".into())));
        // Padded, with priority, and split over a CONTINUATION.
        let block = hex(C41);
        let mut payload = vec![3];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block[..5]);
        payload.extend_from_slice(&[0, 0, 0]);
        let split = [
            settings.clone(),
            frame(HEADERS, PADDED | PRIORITY, 3, &payload),
            frame(CONTINUATION, END_HEADERS, 3, &block[5..]),
        ]
        .concat();
        assert_eq!(scan(&split), Scan::Name(Some("www.example.com".into())));
        // A port goes, case does not matter, `host` serves when there is no
        // :authority, and a block without either names nothing.
        let literal = |name: &str, value: &str| {
            let mut b = vec![0x00, name.len() as u8];
            b.extend_from_slice(name.as_bytes());
            b.push(value.len() as u8);
            b.extend_from_slice(value.as_bytes());
            b
        };
        let named = |block: Vec<u8>| scan(&frame(HEADERS, END_HEADERS, 1, &block));
        assert_eq!(named(literal(":authority", "Shop.Example.com:8443")), Scan::Name(Some("shop.example.com".into())));
        assert_eq!(named([vec![0x82], literal("host", "a.example")].concat()), Scan::Name(Some("a.example".into())));
        assert_eq!(named(vec![0x82, 0x84]), Scan::Name(None));
        // Indexed from the dynamic table the block filled itself.
        let mut b = vec![0x41, 9];
        b.extend_from_slice(b"b.example");
        b.push(0xbe);
        assert_eq!(named(b), Scan::Name(Some("b.example".into())));
    }

    #[test]
    fn what_is_not_a_readable_start_is_left_to_the_server() {
        let h = |flags, stream, block: &[u8]| frame(HEADERS, flags, stream, block);
        for bad in [
            // HEADERS on stream 0 is skipped; then DATA amid nothing.
            [h(END_HEADERS, 1, &hex(C41))[..5].to_vec()].concat(),
            h(END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), // index past 2^28
            h(END_HEADERS, 1, &[0xc0]),                                     // dynamic index 64, empty table
            h(END_HEADERS, 1, &[0x80]),                                     // index 0
            h(END_HEADERS, 1, &[0x3f, 0xe2, 0x1f]),                         // table size 4097
            h(END_HEADERS, 1, &[0x00, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff]), // EOS in a string
            h(END_HEADERS, 1, &[0x00, 0x81, 0x00]),                         // padding of zeros
            h(END_HEADERS, 1, &[0x00, 0x05, b'a']),                         // string past the block
            h(END_HEADERS | PADDED, 1, &[9, 0x82]),                         // padding past the payload
            [h(0, 1, &hex(C41)), frame(0x0, 0, 1, b"data")].concat(),       // no CONTINUATION
            [h(0, 1, &hex(C41)), frame(CONTINUATION, END_HEADERS, 3, &[])].concat(), // another stream's
        ] {
            let got = scan(&bad);
            assert!(matches!(got, Scan::Unreadable | Scan::More), "{bad:02x?}: {got:?}");
        }
        assert_eq!(scan(&frame(HEADERS, END_HEADERS, 1, &[0x80])), Scan::Unreadable);
        let big = [0u8, 0x40, 0x01, HEADERS, END_HEADERS, 0, 0, 0, 1];
        assert_eq!(scan(&big), Scan::Unreadable, "a frame past the default maximum size");
        let settings_forever: Vec<u8> =
            (0..MAX_SCAN / 15 + 1).flat_map(|_| frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])).collect();
        assert_eq!(scan(&settings_forever), Scan::Unreadable, "no HEADERS within the scan's bound");
        assert_eq!(host_name(b"[::1]:443"), None);
        assert_eq!(host_name(b"user@a.example"), None);
        assert_eq!(host_name(b"a.example:"), None);
        assert_eq!(host_name(b"..."), None);
        assert_eq!(host_name(b"a..example"), None);
        assert_eq!(host_name(b"A.Example.:80").as_deref(), Some("a.example"));
    }
}
