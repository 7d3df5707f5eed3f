//! Linux TPROXY sockets.
//!
//! With TPROXY the kernel hands a connection or datagram addressed to a VIP
//! to a socket listening elsewhere, provided that socket has IP_TRANSPARENT.
//! For TCP the original destination is the accepted socket's local address;
//! for UDP it comes with each datagram as an IP_RECVORIGDSTADDR control
//! message. Replies to UDP must come *from* the VIP, so they are sent from a
//! socket bound, with IP_TRANSPARENT, to an address this host does not own.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use socket2::{Domain, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};

fn transparent(kind: Type, addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), kind, None)?;
    s.set_reuse_address(true)?;
    // Needs CAP_NET_ADMIN; this is where an unprivileged run learns it.
    s.set_ip_transparent_v4(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A TCP listener that accepts connections TPROXY diverts to it; each
/// accepted socket's `local_addr()` is the original destination.
pub fn transparent_tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = transparent(Type::STREAM, addr)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// A UDP socket that receives datagrams TPROXY diverts to it, with their
/// original destinations.
#[derive(Debug)]
pub struct TransparentUdp {
    sock: UdpSocket,
}

impl TransparentUdp {
    /// Binds `addr` with IP_TRANSPARENT and IP_RECVORIGDSTADDR.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let s = transparent(Type::DGRAM, addr)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        socket::setsockopt(&s.as_fd(), sockopt::Ipv4OrigDstAddr, &true).map_err(io::Error::from)?;
        s.bind(&addr.into())?;
        Ok(TransparentUdp { sock: UdpSocket::from_std(s.into())? })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Receives one datagram: its length, its sender and the address it
    /// was sent to.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
        loop {
            self.sock.readable().await?;
            match self.sock.try_io(Interest::READABLE, || recv_orig(&self.sock, buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

fn recv_orig(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in);
    let msg = socket::recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let from = msg.address.map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())));
    let mut orig = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(sa) = c {
            let ip = std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
            orig = Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sa.sin_port))));
        }
    }
    match (from, orig) {
        (Some(from), Some(orig)) => Ok((msg.bytes, from, orig)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "datagram without sender or original destination")),
    }
}

/// A UDP socket bound to `from` (a VIP and port this host does not own),
/// for sending replies that appear to come from the VIP.
pub fn reply_socket(from: SocketAddr) -> io::Result<UdpSocket> {
    let s = transparent(Type::DGRAM, from)?;
    // Several flows (one per peer) reply from the same VIP:port.
    s.set_reuse_port(true)?;
    s.bind(&from.into())?;
    UdpSocket::from_std(s.into())
}
