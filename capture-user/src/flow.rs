//! Connection identity: which side is the client, which the server.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

/// Direction of bytes on a TCP connection between a client and a watched server port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client -> server: request bytes.
    ClientToServer,
    /// Server -> client: response bytes.
    ServerToClient,
}

impl Direction {
    /// Index for two-element arrays indexed by direction.
    pub fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }
}

/// A TCP connection seen from the watched server's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Looked up several times per segment: an IPv4 pair as two words instead of
        // the derived field-by-field hashing of both socket addresses.
        match (self.client, self.server) {
            (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                state.write_u64((c.ip().to_bits() as u64) << 32 | s.ip().to_bits() as u64);
                state.write_u32((c.port() as u32) << 16 | s.port() as u32);
            }
            (client, server) => {
                client.hash(state);
                server.hash(state);
            }
        }
    }
}

impl FlowKey {
    pub fn new(client_ip: IpAddr, client_port: u16, server_ip: IpAddr, server_port: u16) -> Self {
        FlowKey {
            client: SocketAddr::new(client_ip, client_port),
            server: SocketAddr::new(server_ip, server_port),
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn flow_keys_differing_in_any_part_are_different_map_keys() {
        let keys: Vec<FlowKey> = [
            ("10.0.0.1:40000", "10.0.0.2:80"),
            ("10.0.0.2:80", "10.0.0.1:40000"),
            ("10.0.0.1:40001", "10.0.0.2:80"),
            ("10.0.0.1:40000", "10.0.0.2:81"),
            ("10.0.0.1:40000", "10.0.0.3:80"),
            ("[::ffff:10.0.0.1]:40000", "10.0.0.2:80"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:80"),
            ("[2001:db8::1%2]:40000", "[2001:db8::2]:80"),
        ]
        .iter()
        .map(|(c, s)| FlowKey { client: c.parse().unwrap(), server: s.parse().unwrap() })
        .collect();
        let map: HashMap<FlowKey, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        assert_eq!(map.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map[&FlowKey { client: k.client, server: k.server }], i);
        }
    }
}
