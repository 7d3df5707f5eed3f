//! Out of file descriptors: visitors take every descriptor they may, and
//! the control port and the admin API still answer.
//!
//! Its own test binary: it lowers the open-file limit of the whole process
//! (server, client, services and visitors all live in it).

use std::net::SocketAddr;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use opennotr_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "fd-reserve-admin-token";

async fn metrics(admin: SocketAddr) -> String {
    admin_metrics(admin, TOKEN).await
}

/// A visitor that got its echo back, or `None` if the server closed it.
async fn visit(public: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(public).await.ok()?;
    s.write_all(b"x").await.ok()?;
    let mut b = [0u8; 1];
    match within(WAIT, "an echo or a close", s.read(&mut b)).await {
        Ok(1) => Some(s),
        _ => None,
    }
}

#[tokio::test]
async fn visitors_leave_the_reserve_to_clients_and_the_admin_api() {
    run_test(async {
        // Descriptors in use now, plus room for the server, a client and
        // a few dozen visitors (each takes about five here: the visitor,
        // its server side, the data channel's two ends, the echo's).
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, open + 400, hard).unwrap();

        let spec = ServerSpec {
            limits: vec![("fdReserve", 64)],
            extra_yaml: format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN:?}\n"),
            ..ServerSpec::default()
        };
        let server = TestServer::start(&spec).await;
        let admin = server.admin.unwrap();
        let (_echo, client, public) = tcp_echo_client(server.addr).await;

        // Visitors until the server starts closing them at once.
        let mut held = Vec::new();
        loop {
            match visit(public).await {
                Some(s) => held.push(s),
                None => break,
            }
            assert!(held.len() < 400, "the reserve never held visitors back");
        }
        assert!(held.len() > 10, "only {} visitors before the reserve", held.len());
        assert!(visit(public).await.is_none(), "still in the reserve");

        // The admin API answers and says why; a second client still gets
        // through the control port (it needs a few of the reserve's
        // descriptors: its socket and the server's).
        let m = metrics(admin).await;
        assert!(m.contains("process_max_fds "), "{m}");
        let refused = metric(&m, "opennotr_fd_reserve_refusals_total{listener=\"public\"}").unwrap();
        assert!(refused >= 2, "{refused}");
        let mut second = TestClient::start(&ClientSpec::new(server.addr));
        second.connected().await;

        // Visitors that leave give their descriptors back.
        drop(held);
        let again = within(WAIT, "a visitor admitted again", async {
            loop {
                if let Some(s) = visit(public).await {
                    return s;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        drop(again);
        second.stop().await;
        client.stop().await;
        server.stop().await;
    })
    .await;
}
