//! Netlink `clsact` qdiscs and `bpf` filters by ifindex: the attach path of kernels
//! before 6.6 (and of `--attach netlink`). Done here rather than through aya so each
//! filter can carry its owner in its name (see `ownership`), and so every operation
//! names the link by ifindex (a name can be reused by a new link meanwhile).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `htons(ETH_P_ALL)`, the protocol of a filter that sees every packet.
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;

/// Which clsact hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> TcHandle {
        let minor = match self {
            Hook::Ingress => TcHandle::MIN_INGRESS,
            Hook::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle { major: TcHandle::CLSACT.major, minor }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// A `bpf` filter on a clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    pub name: String,
}

/// A netlink socket for TC requests (one request at a time).
pub struct TcNetlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl TcNetlink {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors come with the request's header only, not the whole request.
        let _ = socket.set_cap_ack(true);
        Ok(TcNetlink { socket, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// Adds the clsact qdisc unless the link has it.
    pub fn add_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let mut header = TcHeader::default();
        header.index = ifindex as i32;
        header.parent = TcHandle::CLSACT;
        header.handle = TcHandle { major: TcHandle::CLSACT.major, minor: 0 };
        let msg = TcMessage::from_parts(header, vec![TcAttribute::Kind("clsact".into())]);
        match self.request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Adds a direct-action `bpf` filter running `prog` on `hook`; the kernel picks
    /// priority and handle.
    pub fn add_filter(&mut self, ifindex: u32, hook: Hook, prog: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        let mut header = TcHeader::default();
        header.index = ifindex as i32;
        header.parent = hook.parent();
        header.info = ETH_P_ALL_BE;
        let options = vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ];
        let msg = TcMessage::from_parts(header, vec![TcAttribute::Kind("bpf".into()), TcAttribute::Options(options)]);
        self.request(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).map(|_| ())
    }

    /// The named `bpf` filters on `hook` (none when the link has no clsact qdisc).
    pub fn filters(&mut self, ifindex: u32, hook: Hook) -> io::Result<Vec<BpfFilter>> {
        let mut header = TcHeader::default();
        header.index = ifindex as i32;
        header.parent = hook.parent();
        let msg = TcMessage::from_parts(header, vec![]);
        let replies = match self.request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Vec::new()),
            other => other?,
        };
        Ok(replies.iter().filter_map(bpf_filter).collect())
    }

    pub fn delete_filter(&mut self, ifindex: u32, hook: Hook, filter: &BpfFilter) -> io::Result<()> {
        let mut header = TcHeader::default();
        header.index = ifindex as i32;
        header.parent = hook.parent();
        header.handle = filter.handle.into();
        header.info = ((filter.priority as u32) << 16) | ETH_P_ALL_BE;
        let msg = TcMessage::from_parts(header, vec![TcAttribute::Kind("bpf".into())]);
        self.request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK).map(|_| ())
    }

    /// Sends one request and collects the replies until its ACK or the end of the dump.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut replies = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset + 16 <= n.min(self.buf.len()) {
                let len = u32::from_ne_bytes(self.buf[offset..offset + 4].try_into().unwrap()) as usize;
                if len < 16 || offset + len > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink reply"));
                }
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..offset + len])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue; // a late reply to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }
}

/// The filter a dump entry describes, if it is a `bpf` filter with a name.
fn bpf_filter(msg: &RouteNetlinkMessage) -> Option<BpfFilter> {
    let RouteNetlinkMessage::NewTrafficFilter(tc) = msg else { return None };
    let name = tc.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(options) => options.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
            _ => None,
        }),
        _ => None,
    })?;
    Some(BpfFilter { priority: (tc.header.info >> 16) as u16, handle: tc.header.handle.into(), name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    /// A filter as the kernel lists it (built with the same crate, then parsed back).
    #[test]
    fn dump_entries_give_priority_handle_and_name() {
        let mut header = TcHeader::default();
        header.index = 5;
        header.parent = Hook::Egress.parent();
        header.handle = TcHandle { major: 0, minor: 1 };
        header.info = (49152 << 16) | ETH_P_ALL_BE;
        let options = vec![
            TcOption::Bpf(TcFilterBpfOption::ProgId(39)),
            TcOption::Bpf(TcFilterBpfOption::ProgName("capture_egress:12:0123456789abcdef".into())),
        ];
        let msg = TcMessage::from_parts(header, vec![TcAttribute::Kind("bpf".into()), TcAttribute::Options(options)]);
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        let parsed = TcMessage::parse(&bytes[..]).unwrap();
        let filter = bpf_filter(&RouteNetlinkMessage::NewTrafficFilter(parsed)).unwrap();
        assert_eq!(filter, BpfFilter { priority: 49152, handle: 1, name: "capture_egress:12:0123456789abcdef".into() });
        assert_eq!(Hook::Ingress.parent(), TcHandle { major: 0xffff, minor: 0xfff2 });
        assert_eq!(ETH_P_ALL_BE, 0x0300);
    }
}
