//! Relaying between two TCP sockets inside the kernel (`splice(2)` through
//! a pipe), for plaintext channels: the bytes never cross into this
//! process, which saves the two copies per hop that `read`/`write` make,
//! and most of the relay's CPU.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity asked for: as much as a relay buffer, and more in flight
/// per call than the default 64 KiB. The kernel may give less.
const PIPE_SIZE: i32 = 256 * 1024;

/// A relay's two pipes, one per direction: four descriptors while it runs.
/// Made before the relay starts, so that a process out of descriptors can
/// copy instead (which needs none) rather than drop the stream.
#[derive(Debug)]
pub struct Pipes([(OwnedFd, OwnedFd); 2]);

impl Pipes {
    pub fn new() -> io::Result<Self> {
        Ok(Pipes([pipe()?, pipe()?]))
    }
}

/// The pipes for a relay, or `None` (logged) when they cannot be made,
/// most likely for want of descriptors: the caller copies instead.
pub fn pipes_or_copy() -> Option<Pipes> {
    Pipes::new().map_err(|e| tracing::debug!(error = %e, "no pipes for splice; copying instead")).ok()
}

/// Copies both ways between `a` and `b` until both directions are done,
/// with the semantics of [`crate::relay::relay`]: an EOF on one side
/// becomes a half-close of the other. `ab`/`ba` are told each chunk moved
/// `a → b` and `b → a`. Returns the totals.
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    pipes: Pipes,
    ab: impl Fn(u64),
    ba: impl Fn(u64),
) -> io::Result<(u64, u64)> {
    let [pab, pba] = pipes.0;
    let (up, down) = tokio::try_join!(one_way(a, b, pab, ab), one_way(b, a, pba, ba))?;
    Ok((up, down))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // Best effort: the default size only means more calls.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok((r, w))
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    (pipe_r, pipe_w): (OwnedFd, OwnedFd),
    moved: impl Fn(u64),
) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so a would-block can only mean that
        // `src` has nothing: its readiness is cleared for the right reason.
        let n = src
            .async_io(Interest::READABLE, || {
                Ok(splice(src.as_fd(), None, pipe_w.as_fd(), None, PIPE_SIZE as usize, flags)?)
            })
            .await?;
        if n == 0 {
            // Half-close: the other side may still answer.
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            // The pipe holds `left` bytes, so a would-block means `dst` is
            // full.
            let sent = dst
                .async_io(Interest::WRITABLE, || Ok(splice(pipe_r.as_fd(), None, dst.as_fd(), None, left, flags)?))
                .await?;
            left -= sent;
            total += sent as u64;
            moved(sent as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (a, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn moves_both_ways_with_half_close_and_counts() {
        // client <-> (x | relay | y) <-> server
        let (mut client, x) = pair().await;
        let (y, mut server) = pair().await;
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expect = data.clone();
        let relayed = relay(
            &x,
            &y,
            Pipes::new().unwrap(),
            |n| _ = up.fetch_add(n, Ordering::Relaxed),
            |n| _ = down.fetch_add(n, Ordering::Relaxed),
        );
        let ends = async {
            let send = async {
                client.write_all(&data).await.unwrap();
                client.shutdown().await.unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.unwrap();
                back
            };
            let serve = async {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                // Half-closed toward the server; it still answers.
                server.write_all(b"thanks").await.unwrap();
                server.shutdown().await.unwrap();
                got
            };
            tokio::join!(send, serve)
        };
        let (r, (back, got)) = tokio::join!(relayed, ends);
        assert_eq!(r.unwrap(), (3_000_000, 6));
        assert!(got == expect, "the bytes arrived intact and in order");
        assert_eq!(back, b"thanks");
        assert_eq!((up.load(Ordering::Relaxed), down.load(Ordering::Relaxed)), (3_000_000, 6));
    }
}
