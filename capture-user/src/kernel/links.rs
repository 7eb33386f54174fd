//! Link notifications from the kernel (rtnetlink, `RTMGRP_LINK`): the events that
//! drive [`crate::iface_watch::InterfaceWatch`]. No polling: the socket wakes the
//! agent's reactor when a link appears, changes or disappears.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

use crate::iface_watch::LinkEvent;

/// A socket subscribed to link notifications. Subscribe before listing the links
/// ([`current_links`]) so nothing that happens in between is missed.
pub fn subscribe() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
    socket.set_non_blocking(true)?;
    // Room for a burst (a node starting many pods); an overflow is survived anyway.
    let _ = socket.set_rx_buf_sz(1 << 20);
    Ok(socket)
}

/// Every link of this network namespace now, as (ifindex, name).
pub fn current_links() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = list;
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        Ok(out)
    }
}

/// The subscribed socket on the agent's reactor.
pub struct LinkMonitor {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Must run inside the tokio runtime.
    pub fn new(socket: Socket) -> io::Result<Self> {
        // SAFETY: the socket owns its fd for as long as the AsyncFd owns the socket.
        let fd = unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(LinkMonitor { fd, buf: vec![0; 64 * 1024] })
    }

    /// Waits until notifications are waiting.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every waiting notification into `out`. After an overflow (ENOBUFS: the
    /// kernel dropped notifications) the whole link list is read again as a
    /// [`LinkEvent::Snapshot`]. Returns (notifications read, resynced).
    pub fn read_events(&mut self, out: &mut Vec<LinkEvent>) -> io::Result<(u64, bool)> {
        let (mut count, mut resynced) = (0, false);
        loop {
            match self.fd.get_ref().recv(&mut &mut self.buf[..], 0) {
                Ok(n) => count += parse_link_messages(&self.buf[..n.min(self.buf.len())], out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((count, resynced)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.push(LinkEvent::Snapshot(current_links()?));
                    resynced = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Link events in one datagram of netlink messages; other messages are skipped.
/// Returns how many link notifications it held.
pub fn parse_link_messages(buf: &[u8], out: &mut Vec<LinkEvent>) -> u64 {
    let mut count = 0;
    let mut offset = 0;
    while offset + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().unwrap()) as usize;
        if len < 16 || offset + len > buf.len() {
            break;
        }
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..offset + len]) {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    count += 1;
                    let name = link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    });
                    if let Some(name) = name {
                        out.push(LinkEvent::Present { ifindex: link.header.index, name });
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    count += 1;
                    out.push(LinkEvent::Gone { ifindex: link.header.index });
                }
                _ => {}
            }
        }
        offset += (len + 3) & !3;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::link::LinkMessage;

    fn message(msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        out
    }

    #[test]
    fn new_and_deleted_links_become_events() {
        let mut new = LinkMessage::default();
        new.header.index = 7;
        new.attributes.push(LinkAttribute::IfName("vh1".into()));
        let mut del = LinkMessage::default();
        del.header.index = 7;
        let mut datagram = message(RouteNetlinkMessage::NewLink(new));
        datagram.extend(message(RouteNetlinkMessage::DelLink(del)));
        let mut out = Vec::new();
        assert_eq!(parse_link_messages(&datagram, &mut out), 2);
        assert_eq!(out, [LinkEvent::Present { ifindex: 7, name: "vh1".into() }, LinkEvent::Gone { ifindex: 7 }]);
        // Garbage and truncation are skipped, never a panic.
        assert_eq!(parse_link_messages(&datagram[..datagram.len() - 3], &mut Vec::new()), 1);
        assert_eq!(parse_link_messages(&[0xff; 40], &mut Vec::new()), 0);
    }

    #[test]
    fn the_namespace_has_a_loopback() {
        let links = current_links().unwrap();
        assert!(links.iter().any(|(_, n)| n == "lo"), "{links:?}");
    }
}
