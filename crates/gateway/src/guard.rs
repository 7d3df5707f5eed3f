//! The guard in front of hyper's HTTP/1 server. hyper parses the requests
//! of the connections it serves with rules of its own; so that the
//! gateway's rules ([`crate::rules`]) decide for every path, hyper reads a
//! visitor only through a [`Guard`], which passes on a request's bytes
//! once its head passed the rules, then exactly the body the rules frame,
//! then the next head.
//!
//! A head that breaks a rule is never passed on: hyper gets the bytes
//! before it, answers the requests they hold, and then sees the end of the
//! connection; when hyper shuts the connection down, the guard writes the
//! rejection (the same page the direct path writes) after the last
//! response. A chunked body that breaks a rule ends where it broke: hyper's
//! body fails, and the request's handler answers with the rejection the
//! guard recorded ([`GuardShared::take_body_rejection`]).
//!
//! After an upgrade request the guard passes nothing until that request's
//! handler has the service's answer ([`GuardShared::resolve_upgrade`], by
//! the request's number: hyper answers requests in the order the guard
//! passed them): after a `101` the bytes are the upgraded protocol's,
//! passed untouched; otherwise the next head is checked.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::GatewayError;
use crate::io::Activity;
use crate::rules::{self, BodyFraming, Chunked, Reject, MAX_HEADERS};

#[derive(Debug)]
enum State {
    /// The next request's head.
    Head,
    /// This many more body bytes, then the next head (or `then`).
    Body(u64, After),
    Chunked(Box<Chunked>, After),
    /// An upgrade request went through; waiting for the service's answer.
    Upgrade,
    /// The connection was upgraded: every byte passes.
    Passthrough,
    /// The request asked to close the connection: nothing more passes.
    Done,
    /// A head broke a rule: nothing more passes; hyper gets the end of
    /// the connection once it has answered the requests before it.
    Rejected,
    /// A chunked body broke a rule: hyper's body ends early.
    BodyRejected,
    /// The visitor sent its last byte (between requests): hyper gets the
    /// end once it has answered the requests before it. (Given at once,
    /// it would drop the response in flight: a visitor that half-closes
    /// after its request is answered on the direct path too.)
    Ended,
}

/// What follows a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Head,
    Upgrade,
    Done,
}

#[derive(Debug, Default)]
struct Shared {
    /// The upgrade request the guard waits on (its number), and its
    /// answer once the handler has it (upgraded or not).
    waiting: Option<u64>,
    answer: Option<bool>,
    /// The last answer of a request the guard had not reached yet (its
    /// handler finished before hyper read all of it).
    early: Option<(u64, bool)>,
    upgrade_waker: Option<Waker>,
    body_rejection: Option<Reject>,
    head_rejection: Option<Reject>,
    /// The last response runs to the connection's end (HTTP/1.0 without a
    /// length): nothing may follow it.
    unbounded: bool,
}

/// What a connection's request handler and its guard tell each other.
#[derive(Debug)]
pub(crate) struct GuardShared(Mutex<Shared>);

impl GuardShared {
    fn new() -> Arc<GuardShared> {
        Arc::new(GuardShared(Mutex::new(Shared::default())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request numbered `seq` (from 1, in the order hyper got them)
    /// was answered: after a `101` (`upgraded`) or not. An upgrade request
    /// holds the guard until its answer.
    pub(crate) fn resolve_upgrade(&self, seq: u64, upgraded: bool) {
        let mut s = self.lock();
        if s.waiting == Some(seq) {
            s.answer = Some(upgraded);
            if let Some(w) = s.upgrade_waker.take() {
                w.wake();
            }
        } else {
            s.early = Some((seq, upgraded));
        }
    }

    /// The last response runs to the connection's end: a rejection must
    /// not be written after it (it would read as part of that body).
    pub(crate) fn last_response_unbounded(&self) {
        self.lock().unbounded = true;
    }

    /// Why the request body hyper is reading ended early, if the guard
    /// ended it.
    pub(crate) fn take_body_rejection(&self) -> Option<Reject> {
        self.lock().body_rejection.take()
    }

    /// The rule a head broke, if one did (the connection ended for it).
    pub(crate) fn head_rejection(&self) -> Option<Reject> {
        self.lock().head_rejection
    }
}

/// A visitor connection as hyper's HTTP/1 server reads it.
pub(crate) struct Guard<S> {
    inner: S,
    /// Bytes read from `inner` that hyper has not had; the first `ready`
    /// of them passed the rules.
    buf: BytesMut,
    ready: usize,
    /// How much of the head being read was parsed already without an end:
    /// a head ends with a newline, so bytes without one (a visitor
    /// dripping them) are not parsed again.
    head_checked: usize,
    state: State,
    shared: Arc<GuardShared>,
    /// Requests answered (their responses ended), against `released`.
    activity: Arc<Activity>,
    /// Requests passed on to hyper.
    released: u64,
    /// Nothing was written since the last successful flush.
    flushed: bool,
    /// The rejection page, and how much of it is written.
    page: Option<(Vec<u8>, usize)>,
    read_waker: Option<Waker>,
}

impl<S> Guard<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> (Guard<S>, Arc<GuardShared>) {
        let shared = GuardShared::new();
        let guard = Guard {
            inner,
            buf: BytesMut::new(),
            ready: 0,
            head_checked: 0,
            state: State::Head,
            shared: shared.clone(),
            activity,
            released: 0,
            flushed: true,
            page: None,
            read_waker: None,
        };
        (guard, shared)
    }

    /// hyper has answered every request it had and written it out: the
    /// end of the connection no longer cuts a response short.
    fn idle(&self) -> bool {
        self.flushed && self.ready == 0 && self.activity.completed() >= self.released
    }

    fn reject(&mut self, r: Reject) {
        tracing::debug!(status = r.status, reason = r.reason, "request refused");
        self.shared.lock().head_rejection = Some(r);
        let mut page = Vec::new();
        GatewayError::bad_request(r).page().write_http1(&mut page, false);
        self.page = Some((page, 0));
        self.buf.clear();
        self.state = State::Rejected;
    }

    fn after(&mut self, then: After) {
        self.state = match then {
            After::Head => State::Head,
            After::Done => State::Done,
            After::Upgrade => {
                // The request just passed on (`released`) is the upgrade.
                let mut s = self.shared.lock();
                let seq = self.released;
                s.waiting = Some(seq);
                s.answer = s.early.take().filter(|(early, _)| *early == seq).map(|(_, upgraded)| upgraded);
                State::Upgrade
            }
        };
    }

    /// Checks what is buffered beyond `ready`; whether anything changed.
    fn check(&mut self) -> bool {
        let pending = &self.buf[self.ready..];
        match &mut self.state {
            State::Head => {
                let fresh = pending.get(self.head_checked..).unwrap_or_default();
                if pending.is_empty() || (!fresh.contains(&b'\n') && pending.len() < rules::MAX_REQUEST_HEAD) {
                    return false;
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                let parsed = rules::parse_request(pending, &mut req)
                    .and_then(|n| n.map(|n| rules::check_request(&req).map(|info| (n, info))).transpose());
                match parsed {
                    Ok(None) => {
                        self.head_checked = pending.len();
                        false
                    }
                    Err(r) => {
                        self.reject(r);
                        true
                    }
                    Ok(Some((n, info))) => {
                        self.head_checked = 0;
                        let then = if info.close {
                            After::Done
                        } else if info.upgrade.is_some() {
                            After::Upgrade
                        } else {
                            After::Head
                        };
                        let framing = info.framing;
                        self.ready += n;
                        self.released += 1;
                        match framing {
                            BodyFraming::None | BodyFraming::Length(0) => self.after(then),
                            BodyFraming::Length(len) => self.state = State::Body(len, then),
                            BodyFraming::Chunked => self.state = State::Chunked(Box::default(), then),
                        }
                        true
                    }
                }
            }
            State::Body(left, then) => {
                if pending.is_empty() {
                    return false;
                }
                let n = (*left).min(pending.len() as u64);
                *left -= n;
                self.ready += n as usize;
                if *left == 0 {
                    let then = *then;
                    self.after(then);
                }
                true
            }
            State::Chunked(c, then) => {
                if pending.is_empty() {
                    return false;
                }
                match c.scan(pending) {
                    Ok(Some(end)) => {
                        let then = *then;
                        self.ready += end;
                        self.after(then);
                    }
                    Ok(None) => self.ready = self.buf.len(),
                    Err(r) => self.reject_body(r),
                }
                true
            }
            _ => false,
        }
    }

    fn reject_body(&mut self, r: Reject) {
        tracing::debug!(status = r.status, reason = r.reason, "request body refused");
        self.shared.lock().body_rejection = Some(r);
        self.buf.truncate(self.ready);
        self.state = State::BodyRejected;
    }
}

impl<S: AsyncRead + Unpin> Guard<S> {
    /// Body bytes straight into hyper's buffer (no copy through ours),
    /// checked there; what lies past the body is kept for the next head.
    fn read_body(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = out.filled().len();
        if let State::Body(left, _) = self.state {
            // Never more than the body: what follows is the next head.
            let n = if out.remaining() as u64 <= left {
                std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, out))?;
                out.filled().len() - before
            } else {
                let mut tmp = [0u8; 8 * 1024];
                let room = tmp.len().min(left as usize);
                let mut rb = ReadBuf::new(&mut tmp[..room]);
                std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                out.put_slice(rb.filled());
                rb.filled().len()
            };
            if n > 0 {
                if let State::Body(left, then) = &mut self.state {
                    *left -= n as u64;
                    if *left == 0 {
                        let then = *then;
                        self.after(then);
                    }
                }
            }
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, out))?;
        let got = out.filled().len() - before;
        if got == 0 {
            return Poll::Ready(Ok(()));
        }
        let State::Chunked(c, then) = &mut self.state else { return Poll::Ready(Ok(())) };
        match c.scan(&out.filled()[before..]) {
            Ok(None) => {}
            Ok(Some(end)) => {
                let then = *then;
                self.buf.extend_from_slice(&out.filled()[before + end..]);
                out.set_filled(before + end);
                self.after(then);
            }
            Err(r) => {
                // What came before the broken part was passed on already;
                // the rest never is.
                out.set_filled(before);
                self.reject_body(r);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Passthrough => {
                    if !this.buf.is_empty() {
                        this.ready = this.buf.len();
                        continue;
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                State::Upgrade => {
                    let mut s = this.shared.lock();
                    let Some(upgraded) = s.answer.take() else {
                        s.upgrade_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    };
                    s.waiting = None;
                    drop(s);
                    this.state = if upgraded { State::Passthrough } else { State::Head };
                    continue;
                }
                State::BodyRejected => return Poll::Ready(Ok(())),
                State::Rejected | State::Ended if this.idle() => return Poll::Ready(Ok(())),
                State::Rejected | State::Ended | State::Done => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                State::Head | State::Body(..) | State::Chunked(..) => {}
            }
            if this.check() {
                continue;
            }
            if this.buf.is_empty() && matches!(this.state, State::Body(..) | State::Chunked(..)) {
                return this.read_body(cx, out);
            }
            // A head (or the rest of one) into our buffer.
            let mut tmp = [0u8; 8 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // The end: a head cut short is dropped, not passed on.
                this.buf.clear();
                this.state = State::Ended;
                continue;
            }
            this.buf.extend_from_slice(rb.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Any write, even one that waits, means a response is on its way.
        self.flushed = false;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.flushed = false;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.flushed = true;
            // hyper may be waiting to read the end of the connection.
            if self.idle() {
                if let Some(w) = self.read_waker.take() {
                    w.wake();
                }
            }
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.shared.lock().unbounded {
            this.page = None;
        }
        if let Some((page, written)) = &mut this.page {
            while *written < page.len() {
                let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &page[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            this.page = None;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
