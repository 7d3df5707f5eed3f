//! An encrypted byte stream over any transport.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use opennotr_proto::handshake::Key;
use opennotr_proto::record::{Opener, RecordKind, Sealer, HEADER_LEN, MAX_PAYLOAD};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const READ_CHUNK: usize = 64 * 1024 + 64;
/// What a read between records takes on the stack (see `poll_read`).
const PROBE: usize = 4096;

/// A stream whose bytes travel as AEAD records (see `opennotr_proto::record`).
///
/// Shutting down the write side sends an authenticated end record, then a
/// TCP FIN; a FIN without that record reads as `UnexpectedEof`, so a
/// truncation by a third party is never mistaken for a clean end.
pub struct SecureStream<T> {
    io: T,
    sealer: Sealer,
    opener: Opener,
    rbuf: BytesMut,
    plain: BytesMut,
    read_eof: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    end_sent: bool,
}

impl<T> std::fmt::Debug for SecureStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream").finish_non_exhaustive()
    }
}

fn invalid<E: std::error::Error + Send + Sync + 'static>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<T> SecureStream<T> {
    /// Wraps `io`; `send` keys what we write, `recv` what we read.
    /// `buffered` holds bytes already read from `io` past the handshake.
    pub fn new(io: T, send: &Key, recv: &Key, buffered: BytesMut) -> Self {
        SecureStream {
            io,
            sealer: Sealer::new(send),
            opener: Opener::new(recv),
            rbuf: buffered,
            plain: BytesMut::new(),
            read_eof: false,
            wbuf: Vec::new(),
            wpos: 0,
            end_sent: false,
        }
    }

    /// The transport underneath.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> SecureStream<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SecureStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                if this.plain.is_empty() {
                    // `plain` shares `rbuf`'s allocation; letting go of it
                    // lets `rbuf` reuse that allocation instead of making a
                    // new one for every record.
                    this.plain = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            if this.rbuf.len() >= HEADER_LEN {
                let len = Opener::body_len([this.rbuf[0], this.rbuf[1]]).map_err(invalid)?;
                if this.rbuf.len() >= HEADER_LEN + len {
                    this.rbuf.advance(HEADER_LEN);
                    let mut rec = this.rbuf.split_to(len);
                    let (kind, range) = this.opener.open(&mut rec).map_err(invalid)?;
                    match kind {
                        RecordKind::Data => {
                            rec.truncate(range.end);
                            rec.advance(range.start);
                            this.plain = rec;
                        }
                        RecordKind::End => this.read_eof = true,
                    }
                    continue;
                }
            }
            let n = if this.rbuf.is_empty() {
                // Between records, where an idle channel waits for minutes:
                // the read goes to the stack and the buffer is let go while
                // nothing arrives, so ten thousand idle control connections
                // and spare channels hold no 64 KiB each. Bulk transfers
                // rarely come here empty-handed, and pay one small copy.
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); PROBE];
                let mut probe = ReadBuf::uninit(&mut probe);
                if Pin::new(&mut this.io).poll_read(cx, &mut probe)?.is_pending() {
                    this.rbuf = BytesMut::new();
                    return Poll::Pending;
                }
                this.rbuf.extend_from_slice(probe.filled());
                probe.filled().len()
            } else {
                this.rbuf.reserve(READ_CHUNK);
                ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rbuf))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection without an end-of-stream record",
                )));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SecureStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if this.end_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(MAX_PAYLOAD);
        this.sealer.seal(RecordKind::Data, &data[..n], &mut this.wbuf);
        // The record is ours now; push what the socket takes without
        // waiting, and let the next write or flush finish the rest.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.end_sent {
            ready!(this.poll_drain(cx))?;
            this.sealer.seal(RecordKind::End, &[], &mut this.wbuf);
            this.end_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (SecureStream<tokio::io::DuplexStream>, SecureStream<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(4096);
        let k1 = Key([1; 32]);
        let k2 = Key([2; 32]);
        (SecureStream::new(a, &k1, &k2, BytesMut::new()), SecureStream::new(b, &k2, &k1, BytesMut::new()))
    }

    #[tokio::test]
    async fn transfers_and_half_closes_both_ways() {
        let (mut a, mut b) = pair();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let d2 = data.clone();
        let w = tokio::spawn(async move {
            a.write_all(&d2).await.unwrap();
            a.shutdown().await.unwrap();
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        b.write_all(b"after half-close").await.unwrap();
        b.shutdown().await.unwrap();
        assert_eq!(w.await.unwrap(), b"after half-close");
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_read_buffer() {
        let (mut a, mut b) = pair();
        let idle = |s: &mut SecureStream<tokio::io::DuplexStream>| {
            let mut buf = [0u8; 64];
            let mut buf = ReadBuf::new(&mut buf);
            let waker = std::task::Waker::noop();
            assert!(Pin::new(&mut *s).poll_read(&mut Context::from_waker(waker), &mut buf).is_pending());
            (s.rbuf.capacity(), s.plain.capacity())
        };
        assert_eq!(idle(&mut b), (0, 0));
        // After a bulk transfer too: the 64 KiB buffer goes once drained.
        let data = vec![5u8; 200_000];
        let d2 = data.clone();
        let w = tokio::spawn(async move { a.write_all(&d2).await.map(|_| a) });
        let mut got = vec![0u8; data.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        let _a = w.await.unwrap().unwrap();
        assert_eq!(idle(&mut b), (0, 0));
    }

    #[tokio::test]
    async fn bare_eof_is_an_error() {
        let (a, b) = tokio::io::duplex(64);
        let k = Key([1; 32]);
        let mut s = SecureStream::new(a, &k, &k, BytesMut::new());
        drop(b);
        let mut v = Vec::new();
        let e = s.read_to_end(&mut v).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn tampering_is_an_error() {
        let (a, mut b) = tokio::io::duplex(4096);
        let k = Key([1; 32]);
        let mut s = SecureStream::new(a, &k, &k, BytesMut::new());
        let mut rec = Vec::new();
        Sealer::new(&k).seal(RecordKind::Data, b"hello", &mut rec);
        rec[4] ^= 0x20;
        b.write_all(&rec).await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
