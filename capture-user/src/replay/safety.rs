//! The production-server refusal: a replay must not send captured requests back to
//! the server that answered them in production (side effects twice).
//!
//! A target is the captured server when its port is the server's port and the
//! addresses are the same host: equal (IPv4-mapped IPv6 taken as IPv4), or both local
//! to this node (the loopback range, the wildcard address, any address of this node's
//! interfaces). Loopback addresses in a capture from another node are taken as local
//! too: when in doubt, refuse (`--allow-production` overrides).

use std::net::{IpAddr, SocketAddr};

/// This node's own addresses, read once at start.
#[derive(Clone, Debug, Default)]
pub struct LocalAddresses(Vec<IpAddr>);

impl LocalAddresses {
    /// The addresses of every interface of this node (network namespace).
    pub fn of_this_node() -> LocalAddresses {
        let mut out = Vec::new();
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list` with a linked list freed by freeifaddrs below.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            log::warn!("getifaddrs failed ({}): only loopback and wildcard addresses count as this node's", std::io::Error::last_os_error());
            return LocalAddresses(out);
        }
        let mut p = list;
        while !p.is_null() {
            // SAFETY: p is a node of the list getifaddrs returned.
            let ifa = unsafe { &*p };
            if !ifa.ifa_addr.is_null() {
                // SAFETY: ifa_addr points to a sockaddr of the family it declares.
                match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                    libc::AF_INET => {
                        let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                        // s_addr holds the address in network order: its bytes as they are in memory.
                        out.push(IpAddr::from(sa.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                        out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = ifa.ifa_next;
        }
        // SAFETY: list came from getifaddrs.
        unsafe { libc::freeifaddrs(list) };
        LocalAddresses(out)
    }

    pub fn new(addresses: Vec<IpAddr>) -> LocalAddresses {
        LocalAddresses(addresses)
    }

    /// Loopback range, wildcard, or an address of this node.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || ip.is_unspecified() || self.0.iter().any(|a| a.to_canonical() == ip)
    }

    /// Whether `target` (a resolved target address) reaches the captured `server`.
    pub fn same_server(&self, target: SocketAddr, server: SocketAddr) -> bool {
        if target.port() != server.port() {
            return false;
        }
        let (t, s) = (target.ip().to_canonical(), server.ip().to_canonical());
        t == s || (self.is_local(t) && self.is_local(s))
    }
}

/// Checks each exchange's captured server against every address of a target.
#[derive(Clone, Debug)]
pub struct ProductionCheck {
    pub local: LocalAddresses,
    /// `--allow-production`: send anyway (counted).
    pub allow: bool,
}

impl ProductionCheck {
    /// The captured server `target_addrs` reach, if any (`server` as in the record).
    pub fn production_match(&self, target_addrs: &[SocketAddr], server: &str) -> Option<SocketAddr> {
        // Another port is another server: the address is parsed only when a port matches.
        let port: u16 = server.rsplit_once(':')?.1.parse().ok()?;
        if !target_addrs.iter().any(|t| t.port() == port) {
            return None;
        }
        let server: SocketAddr = server.parse().ok()?;
        target_addrs.iter().any(|&t| self.local.same_server(t, server)).then_some(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> ProductionCheck {
        ProductionCheck { local: LocalAddresses::new(vec!["10.1.2.3".parse().unwrap(), "fd00::5".parse().unwrap()]), allow: false }
    }

    fn refused(target: &str, server: &str) -> bool {
        check().production_match(&[target.parse().unwrap()], server).is_some()
    }

    /// Issue 11, bug 8 ("the production-server refusal is bypassed"): the check
    /// compared one resolved address with the captured one, so 127.0.0.2 and 0.0.0.0
    /// reached a production server captured as 127.0.0.1 (or as the node's own address).
    #[test]
    fn production_refusal_bypassed_with_127_0_0_2_and_0_0_0_0() {
        for target in ["127.0.0.1:80", "127.0.0.2:80", "0.0.0.0:80", "[::1]:80", "[::]:80", "[::ffff:127.0.0.1]:80", "10.1.2.3:80"] {
            for server in ["127.0.0.1:80", "10.1.2.3:80", "[::1]:80", "[fd00::5]:80"] {
                assert!(refused(target, server), "{target} reaches the captured server {server}");
            }
        }
        // The same address, seen from another node.
        assert!(refused("192.0.2.7:8080", "192.0.2.7:8080"));
        assert!(refused("[::ffff:192.0.2.7]:8080", "192.0.2.7:8080"));
        // Another port, or another host, is another server.
        assert!(!refused("127.0.0.2:81", "127.0.0.1:80"));
        assert!(!refused("192.0.2.8:8080", "192.0.2.7:8080"));
        assert!(!refused("127.0.0.1:8080", "192.0.2.7:8080"));
        // A record without a usable server address cannot be checked.
        assert!(check().production_match(&["127.0.0.1:80".parse().unwrap()], "unknown").is_none());
    }

    #[test]
    fn this_node_has_addresses() {
        let local = LocalAddresses::of_this_node();
        assert!(local.is_local("127.0.0.1".parse().unwrap()));
        assert!(local.0.iter().any(|a| a.is_loopback()), "getifaddrs lists lo: {:?}", local.0);
    }
}
