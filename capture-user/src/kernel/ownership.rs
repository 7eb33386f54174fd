//! Who owns a netlink TC filter. Netlink filters outlive the process that added
//! them, so an agent must tell a killed agent's leftovers (remove them) from a live
//! agent's filters (leave them alone).
//!
//! Each agent holds an abstract unix socket named `capture-agent/<token>` (random
//! token) for its whole life and names its filters `<program>:<pid>:<token>`. The
//! kernel releases the socket when the process dies, even on SIGKILL. A filter is
//! orphaned when connecting to its token's socket is refused. Abstract sockets live in
//! the network namespace, the same one as the interfaces, so the check works across
//! PID namespaces (agents in different containers) and survives PID reuse; the pid in
//! the name is for people reading `tc filter show`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// This agent's claim; filters named with [`OwnerLock::filter_name`] belong to it.
pub struct OwnerLock {
    token: String,
    pid: u32,
    /// Bound for the agent's lifetime: the proof that it is alive.
    _socket: UnixDatagram,
}

impl OwnerLock {
    pub fn acquire() -> io::Result<Self> {
        let mut bytes = [0u8; 8];
        // SAFETY: writes at most bytes.len() bytes into the buffer.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr() as *mut libc::c_void, bytes.len(), 0) };
        if n != bytes.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let socket = UnixDatagram::bind_addr(&socket_addr(&token)?)?;
        Ok(OwnerLock { token, pid: std::process::id(), _socket: socket })
    }

    /// The netlink filter name for `program` owned by this agent.
    pub fn filter_name(&self, program: &str) -> String {
        format!("{program}:{}:{}", self.pid, self.token)
    }

    pub fn owns(&self, owner: &FilterOwner) -> bool {
        owner.token.as_deref() == Some(self.token.as_str())
    }
}

fn socket_addr(token: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("capture-agent/{token}").as_bytes())
}

/// What a capture filter's name says about its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterOwner {
    pub program: String,
    pub pid: Option<u32>,
    /// `None` for names without an owner (agents before ownership was recorded).
    pub token: Option<String>,
}

/// Parses `program:pid:token` (or a bare `program`) for one of `programs`; `None`
/// for filters that are not ours at all.
pub fn parse_filter_name(name: &str, programs: &[&str]) -> Option<FilterOwner> {
    let mut parts = name.split(':');
    let program = parts.next()?;
    if !programs.contains(&program) {
        return None;
    }
    let (pid, token) = (parts.next(), parts.next());
    if parts.next().is_some() {
        return None;
    }
    let token = match token {
        Some(t) if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) => Some(t.to_string()),
        Some(_) => return None,
        None if pid.is_none() => None,
        None => return None,
    };
    let pid = match pid {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some(FilterOwner { program: program.to_string(), pid, token })
}

/// Whether the agent that owns a filter still runs.
#[derive(Debug)]
pub enum Liveness {
    Alive,
    /// Nobody holds the owner's socket: the agent is gone, the filter is a leftover.
    Orphaned,
    /// Cannot tell (no token in the name, or an unexpected error): leave it alone.
    Unknown(String),
}

pub fn liveness(owner: &FilterOwner) -> Liveness {
    let Some(token) = &owner.token else {
        return Liveness::Unknown("the filter name records no owner".into());
    };
    let result = socket_addr(token).and_then(|addr| UnixDatagram::unbound()?.connect_addr(&addr));
    match result {
        Ok(()) => Liveness::Alive,
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Liveness::Orphaned,
        Err(e) => Liveness::Unknown(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAMS: &[&str] = &["capture_ingress", "capture_egress"];

    #[test]
    fn filter_names_round_trip_and_foreign_names_are_not_ours() {
        let lock = OwnerLock::acquire().unwrap();
        let name = lock.filter_name("capture_ingress");
        let owner = parse_filter_name(&name, PROGRAMS).unwrap();
        assert_eq!(owner.program, "capture_ingress");
        assert_eq!(owner.pid, Some(std::process::id()));
        assert!(lock.owns(&owner));
        assert_eq!(parse_filter_name("cilium_ingress:1:0123456789abcdef", PROGRAMS), None);
        assert_eq!(parse_filter_name("capture_ingress:x:0123456789abcdef", PROGRAMS), None);
        assert_eq!(parse_filter_name("capture_ingress:1:short", PROGRAMS), None);
        assert_eq!(parse_filter_name("capture_ingress:1", PROGRAMS), None);
        let legacy = parse_filter_name("capture_egress", PROGRAMS).unwrap();
        assert_eq!((legacy.pid, legacy.token), (None, None));
    }

    #[test]
    fn a_live_owner_is_alive_and_a_dropped_one_is_orphaned() {
        let lock = OwnerLock::acquire().unwrap();
        let owner = parse_filter_name(&lock.filter_name("capture_egress"), PROGRAMS).unwrap();
        assert!(matches!(liveness(&owner), Liveness::Alive));
        drop(lock);
        assert!(matches!(liveness(&owner), Liveness::Orphaned));
        let legacy = parse_filter_name("capture_egress", PROGRAMS).unwrap();
        assert!(matches!(liveness(&legacy), Liveness::Unknown(_)));
    }
}
