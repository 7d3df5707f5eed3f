//! 100 MB each way through one forward, checked with SHA-256.

use std::time::Instant;

use opennotr_tests::*;
use ring::digest::{Context, Digest, SHA256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const TOTAL: usize = 100 << 20;
const CHUNK: usize = 256 << 10;

/// Writes `TOTAL` pseudo-random bytes made from `seed`, then half-closes;
/// returns the hash of what was sent.
async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, seed: u64) -> Digest {
    // A block longer than one chunk, sent from a moving offset, so that no
    // two chunks are alike and reordering or duplication changes the hash.
    let block = pattern(seed, CHUNK + 4093);
    let mut h = Context::new(&SHA256);
    let mut sent = 0;
    let mut i = 0usize;
    while sent < TOTAL {
        let off = (i * 4093 / 7) % 4093;
        let n = CHUNK.min(TOTAL - sent);
        let chunk = &block[off..off + n];
        h.update(chunk);
        w.write_all(chunk).await.expect("write");
        sent += n;
        i += 1;
    }
    w.shutdown().await.expect("half-close");
    h.finish()
}

/// Reads until EOF; returns the byte count and hash.
async fn recv_all<R: AsyncRead + Unpin>(r: &mut R) -> (usize, Digest) {
    let mut h = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return (total, h.finish());
        }
        h.update(&buf[..n]);
        total += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_with_checksums() {
    run_test(async {
        let (svc, mut accepted) = tcp_accepting().await;
        let server = TestServer::start(&ServerSpec::default()).await;
        let mut client = TestClient::start(&ClientSpec::new(server.addr).forward(tcp_fwd(0, svc.addr.port())));
        let public = local(public_port(&client.connected().await, 0));

        let started = Instant::now();
        let mut visitor = TcpStream::connect(public).await.unwrap();
        // The service side: receives and hashes, sends its own 100 MB.
        let service = tokio::spawn(async move {
            let s = accepted.recv().await.expect("the client dials the service");
            let (mut r, mut w) = s.into_split();
            let (sent, got) = tokio::join!(send_all(&mut w, 2), recv_all(&mut r));
            (sent, got)
        });
        let (mut v_rd, mut v_wr) = visitor.split();
        let (v_sent, v_got) = tokio::join!(send_all(&mut v_wr, 1), recv_all(&mut v_rd));
        let (s_sent, s_got) = service.await.expect("service task");
        eprintln!("200 MB through the tunnel in {:?}", started.elapsed());

        assert_eq!(s_got.0, TOTAL, "bytes the service received");
        assert_eq!(s_got.1.as_ref(), v_sent.as_ref(), "hash of visitor -> service");
        assert_eq!(v_got.0, TOTAL, "bytes the visitor received");
        assert_eq!(v_got.1.as_ref(), s_sent.as_ref(), "hash of service -> visitor");
    })
    .await
}
