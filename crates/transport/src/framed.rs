//! Control messages over a byte stream, every read and write bounded in time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use opennotr_proto::frame::{self, FrameError, PREFACE_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The most a frame reader reads at once while it holds no buffer.
const FIRST_READ: usize = 1024;

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer was too slow.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The peer sent something that is not a valid frame or message.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Runs `fut` under a deadline, naming the step in the error.
pub async fn timed<T>(
    limit: Duration,
    step: &'static str,
    fut: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| TransportError::Timeout(step))?
}

/// Reads the 5-byte preface.
pub async fn read_preface<R: AsyncRead + Unpin>(r: &mut R) -> Result<[u8; PREFACE_LEN], TransportError> {
    let mut p = [0u8; PREFACE_LEN];
    r.read_exact(&mut p).await.map_err(eof_is_closed)?;
    Ok(p)
}

fn eof_is_closed(e: io::Error) -> TransportError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        TransportError::Closed
    } else {
        TransportError::Io(e)
    }
}

/// Reads exactly one handshake frame and not a byte more, so that whatever
/// follows (the encrypted channel, or stream data) stays in the socket.
/// The peer is not authenticated yet: a length over
/// [`frame::MAX_HANDSHAKE_FRAME_LEN`] fails before anything is allocated.
pub async fn read_frame_exact<R: AsyncRead + Unpin>(r: &mut R) -> Result<bytes::Bytes, TransportError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(eof_is_closed)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > frame::MAX_HANDSHAKE_FRAME_LEN {
        return Err(FrameError::TooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(eof_is_closed)?;
    Ok(body.into())
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), TransportError> {
    let mut buf = BytesMut::with_capacity(4 + body.len());
    frame::encode_frame(body, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads frames; the buffer survives cancellation, so `next` may be used in
/// `select!`.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `io`.
    pub fn new(io: R) -> Self {
        FrameReader { io, buf: BytesMut::new() }
    }

    /// The next frame body. Cancel-safe.
    ///
    /// A reader waiting between frames holds no buffer: the first bytes of
    /// a frame are read on the stack, and the buffer is let go once it is
    /// empty (each frame keeps only its own part), so a session's control
    /// connection costs nothing while it idles.
    pub async fn next(&mut self) -> Result<bytes::Bytes, TransportError> {
        loop {
            if let Some(f) = frame::decode_frame(&mut self.buf)? {
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                return Ok(f);
            }
            let n = if self.buf.is_empty() {
                // In a poll, not across an await: the array is not part of
                // the future every session keeps.
                std::future::poll_fn(|cx| {
                    let mut first = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
                    let mut first = ReadBuf::uninit(&mut first);
                    std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut first))?;
                    self.buf.extend_from_slice(first.filled());
                    std::task::Poll::Ready(Ok::<_, io::Error>(first.filled().len()))
                })
                .await?
            } else {
                self.io.read_buf(&mut self.buf).await?
            };
            if n == 0 {
                return Err(TransportError::Closed);
            }
        }
    }

    /// Gives back the stream and the bytes read past the last frame, for a
    /// switch to another layer (the encrypted channel) on the same stream.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }
}

/// Writes frames.
#[derive(Debug)]
pub struct FrameWriter<W> {
    io: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes frames to `io`.
    pub fn new(io: W) -> Self {
        FrameWriter { io, buf: BytesMut::new() }
    }

    /// Writes one frame and flushes it.
    pub async fn send(&mut self, body: &[u8]) -> Result<(), TransportError> {
        self.buf.clear();
        frame::encode_frame(body, &mut self.buf)?;
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        if self.buf.capacity() > FIRST_READ {
            // One large message (a registration's answer) is no reason to
            // keep its buffer for the session's life.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Half-closes the stream.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.io.shutdown().await?;
        Ok(())
    }

    /// The stream underneath.
    pub fn into_inner(self) -> W {
        self.io
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame writer and the reader of what it writes.
    fn pair() -> (FrameWriter<tokio::io::DuplexStream>, FrameReader<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(64);
        (FrameWriter::new(a), FrameReader::new(b))
    }

    #[tokio::test]
    async fn frames_over_a_stream_and_leftovers_kept() {
        let (mut w, mut r) = pair();
        let sender = tokio::spawn(async move {
            w.send(b"first").await.unwrap();
            w.send(&[7u8; 1000]).await.unwrap();
            w.get_mut().write_all(b"raw tail").await.unwrap();
            w
        });
        assert_eq!(&r.next().await.unwrap()[..], b"first");
        assert_eq!(r.next().await.unwrap().len(), 1000);
        let _w = sender.await.unwrap();
        let (mut io, mut left) = r.into_parts();
        while left.len() < 8 {
            io.read_buf(&mut left).await.unwrap();
        }
        assert_eq!(&left[..], b"raw tail");
    }

    #[tokio::test]
    async fn a_handshake_frame_over_the_cap_fails_before_its_body_arrives() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let len = frame::MAX_HANDSHAKE_FRAME_LEN as u32 + 1;
        a.write_all(&len.to_be_bytes()).await.unwrap();
        let r = read_frame_exact(&mut b).await;
        assert!(matches!(r, Err(TransportError::Frame(FrameError::TooLarge(n))) if n == len as usize));
        let body = vec![1u8; frame::MAX_HANDSHAKE_FRAME_LEN];
        let sender = tokio::spawn(async move {
            a.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
            a.write_all(&body).await.unwrap();
        });
        assert_eq!(read_frame_exact(&mut b).await.unwrap().len(), frame::MAX_HANDSHAKE_FRAME_LEN);
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_reader_between_frames_holds_no_buffer() {
        let (mut w, mut r) = pair();
        let sender = tokio::spawn(async move {
            w.send(&[1u8; 3000]).await.unwrap();
            w.send(b"small").await.unwrap();
            w
        });
        assert_eq!(r.next().await.unwrap().len(), 3000);
        assert_eq!(&r.next().await.unwrap()[..], b"small");
        let w = sender.await.unwrap();
        assert_eq!(r.buf.capacity(), 0);
        assert!(w.buf.capacity() <= FIRST_READ, "a large message's buffer is let go");
        // Waiting for the next frame allocates nothing either.
        let pending = pending_once(r.next());
        assert!(pending);
        assert_eq!(r.buf.capacity(), 0);
    }

    /// Polls `fut` once; true if it is pending.
    fn pending_once<F: Future>(fut: F) -> bool {
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        fut.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_pending()
    }

    #[tokio::test]
    async fn hostile_length_is_rejected() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let mut r = FrameReader::new(b);
        assert!(matches!(r.next().await, Err(TransportError::Frame(FrameError::TooLarge(_)))));
    }

    #[tokio::test]
    async fn slow_peer_times_out() {
        let (_a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b);
        tokio::time::pause();
        let e = timed(Duration::from_secs(10), "reading hello", r.next()).await.unwrap_err();
        assert!(matches!(e, TransportError::Timeout("reading hello")));
    }
}
