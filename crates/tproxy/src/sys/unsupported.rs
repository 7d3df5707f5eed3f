//! Transparent proxying exists only on Linux.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "transparent proxying (TPROXY) needs Linux")
}

/// Not available here.
pub fn transparent_tcp_listener(_addr: SocketAddr) -> io::Result<TcpListener> {
    Err(unsupported())
}

/// Not available here.
#[derive(Debug)]
pub struct TransparentUdp;

impl TransparentUdp {
    /// Not available here.
    pub fn bind(_addr: SocketAddr) -> io::Result<Self> {
        Err(unsupported())
    }
    /// Not available here.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Err(unsupported())
    }
    /// Not available here.
    pub async fn recv(&self, _buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
        Err(unsupported())
    }
}

/// Not available here.
pub fn reply_socket(_from: SocketAddr) -> io::Result<UdpSocket> {
    Err(unsupported())
}
