//! The pool of virtual IPs (`dhcp.cidr`).

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Hands out the host addresses of a CIDR, except the network and broadcast
/// addresses and the server's own (`dhcp.ip`).
///
/// Addresses are handed out round-robin from a cursor rather than lowest
/// first, so an address just released (and remembered by its client for a
/// reconnect) is the last one given to somebody else. Only allocated
/// addresses are stored, so a /8 costs nothing up front.
pub struct VipPool {
    first: u32,
    last: u32,
    reserved: Option<u32>,
    used: HashSet<u32>,
    cursor: u32,
    /// Addresses held elsewhere (by another node of a cluster), not handed
    /// out while they are.
    elsewhere: Option<Box<dyn Fn(Ipv4Addr) -> bool + Send + Sync>>,
}

impl std::fmt::Debug for VipPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VipPool")
            .field("capacity", &self.capacity())
            .field("in_use", &self.in_use())
            .finish_non_exhaustive()
    }
}

impl VipPool {
    /// A pool over `net`, never handing out `server_ip`. Without one, the
    /// address as written in `dhcp.cidr` (`100.64.242.1/24` → `.1`) is the
    /// server's, as in the original.
    pub fn new(net: ipnet::Ipv4Net, server_ip: Option<Ipv4Addr>) -> Self {
        let server_ip = server_ip.or(Some(net.addr()).filter(|a| *a != net.network()));
        let network = u32::from(net.network());
        let broadcast = u32::from(net.broadcast());
        let (first, last) = if net.prefix_len() >= 31 { (network, broadcast) } else { (network + 1, broadcast - 1) };
        VipPool {
            first,
            last,
            reserved: server_ip.map(u32::from),
            used: HashSet::new(),
            cursor: first,
            elsewhere: None,
        }
    }

    /// Never hands out an address for which `held(ip)` says another node
    /// of the cluster holds it.
    pub fn avoid(&mut self, held: impl Fn(Ipv4Addr) -> bool + Send + Sync + 'static) {
        self.elsewhere = Some(Box::new(held));
    }

    /// How many addresses can be handed out in all.
    pub fn capacity(&self) -> usize {
        let n = (self.last - self.first + 1) as usize;
        match self.reserved {
            Some(r) if (self.first..=self.last).contains(&r) => n - 1,
            _ => n,
        }
    }

    /// How many are handed out now.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    fn available(&self, a: u32) -> bool {
        (self.first..=self.last).contains(&a)
            && Some(a) != self.reserved
            && !self.used.contains(&a)
            && !self.elsewhere.as_ref().is_some_and(|held| held(a.into()))
    }

    /// Takes `preferred` if it is free, else the next free address.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.allocate_as(preferred, false)
    }

    /// [`allocate`](Self::allocate); with `ours`, `preferred` is taken even
    /// where another node is said to hold it (it is this client's own,
    /// coming from that node).
    pub fn allocate_as(&mut self, preferred: Option<Ipv4Addr>, ours: bool) -> Option<Ipv4Addr> {
        if let Some(p) = preferred.map(u32::from) {
            let free_here =
                (self.first..=self.last).contains(&p) && Some(p) != self.reserved && !self.used.contains(&p);
            if (ours && free_here) || self.available(p) {
                self.used.insert(p);
                return Some(p.into());
            }
        }
        if self.used.len() >= self.capacity() {
            return None;
        }
        // u64: with a /0 or /1 pool the sum below does not fit in u32.
        let span = u64::from(self.last - self.first) + 1;
        for i in 0..span {
            let a = self.first + ((u64::from(self.cursor - self.first) + i) % span) as u32;
            if self.available(a) {
                self.used.insert(a);
                self.cursor = if a == self.last { self.first } else { a + 1 };
                return Some(a.into());
            }
        }
        None
    }

    /// Gives an address back.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }

    /// Whether `ip` is handed out.
    pub fn is_used(&self, ip: Ipv4Addr) -> bool {
        self.used.contains(&u32::from(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, ip: Option<&str>) -> VipPool {
        VipPool::new(cidr.parse().unwrap(), ip.map(|s| s.parse().unwrap()))
    }

    #[test]
    fn excludes_network_broadcast_and_server() {
        let mut p = pool("100.64.242.1/29", Some("100.64.242.1"));
        assert_eq!(p.capacity(), 5);
        let got: Vec<_> = std::iter::from_fn(|| p.allocate(None)).collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(100, 64, 242, i)).collect();
        assert_eq!(got, want);
        assert_eq!(p.allocate(None), None);
    }

    #[test]
    fn released_address_is_reused_last_but_preferred_on_request() {
        let mut p = pool("10.0.0.0/29", None);
        assert_eq!(p.capacity(), 6);
        let a = p.allocate(None).unwrap();
        let b = p.allocate(None).unwrap();
        p.release(a);
        let c = p.allocate(None).unwrap();
        assert_ne!(c, a);
        assert_ne!(c, b);
        p.release(b);
        assert_eq!(p.allocate(Some(b)), Some(b));
        assert_eq!(p.allocate(Some(b)).map(|x| x != b), Some(true));
    }

    #[test]
    fn written_address_is_the_servers_by_default() {
        let mut p = pool("100.64.242.1/30", None);
        assert_eq!(p.allocate(None), Some(Ipv4Addr::new(100, 64, 242, 2)));
        assert_eq!(p.allocate(None), None);
    }

    #[test]
    fn the_whole_address_space_does_not_overflow() {
        // The scan starts at the last address and wraps past three used
        // ones: offset + step exceeds u32 there.
        let mut p = pool("0.0.0.0/0", None);
        for a in [Ipv4Addr::new(255, 255, 255, 254), Ipv4Addr::new(0, 0, 0, 1), Ipv4Addr::new(0, 0, 0, 2)] {
            assert_eq!(p.allocate(Some(a)), Some(a));
        }
        p.cursor = p.last;
        assert_eq!(p.allocate(None), Some(Ipv4Addr::new(0, 0, 0, 3)));
    }

    #[test]
    fn addresses_held_elsewhere_are_passed_over() {
        let mut p = pool("10.0.0.0/29", None);
        p.avoid(|ip| ip == Ipv4Addr::new(10, 0, 0, 1) || ip == Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(p.allocate(Some(Ipv4Addr::new(10, 0, 0, 3))), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(p.allocate(None), Some(Ipv4Addr::new(10, 0, 0, 4)));
        // A client's own VIP, coming from the node said to hold it.
        assert_eq!(p.allocate_as(Some(Ipv4Addr::new(10, 0, 0, 3)), true), Some(Ipv4Addr::new(10, 0, 0, 3)));
        // Not when it is in use here.
        assert_eq!(p.allocate_as(Some(Ipv4Addr::new(10, 0, 0, 3)), true), Some(Ipv4Addr::new(10, 0, 0, 5)));
    }

    #[test]
    fn large_pool_costs_nothing_up_front() {
        let mut p = pool("10.0.0.0/8", None);
        assert_eq!(p.capacity(), (1 << 24) - 2);
        assert_eq!(p.allocate(None), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(p.in_use(), 1);
    }
}
