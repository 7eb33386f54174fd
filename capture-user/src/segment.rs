//! Ring-buffer events decoded into TCP segments (pure; no kernel access).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};
use capture_common::{
    EventHeader, DIR_CLIENT_TO_SERVER, DIR_SERVER_TO_CLIENT, EVENT_HEADER_SIZE, EVENT_VERSION,
    FAMILY_IPV4, FAMILY_IPV6, HOOK_TLS, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::flow::{Direction, FlowKey};

/// One chunk of a TCP segment's payload (or a bare SYN/FIN/RST), as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub flow: FlowKey,
    pub direction: Direction,
    /// Sequence number of the first byte of `data` (chunk offset already applied).
    pub seq: u32,
    /// Sequence number of the segment's first payload byte (flags refer to the whole segment).
    pub segment_seq: u32,
    /// Payload bytes of the whole segment; `data` may be one chunk of it.
    pub segment_len: u32,
    pub flags: u8,
    pub ts_ns: u64,
    pub ifindex: u32,
    /// TLS plaintext from the uprobes (`HOOK_TLS`): `seq` is synthetic (a
    /// per-connection start plus the plaintext offset), `ifindex` is 0.
    pub tls: bool,
    pub data: Bytes,
}

impl Segment {
    pub fn syn(&self) -> bool {
        self.flags & TCP_SYN != 0
    }
    pub fn fin(&self) -> bool {
        self.flags & TCP_FIN != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & TCP_RST != 0
    }
    /// True for the chunk that ends the segment: FIN/RST apply after it.
    pub fn is_last_chunk(&self) -> bool {
        self.seq.wrapping_sub(self.segment_seq) as u64 + self.data.len() as u64
            >= self.segment_len as u64
    }
    /// Sequence number right after the segment's payload (where a FIN sits).
    pub fn end_seq(&self) -> u32 {
        self.segment_seq.wrapping_add(self.segment_len)
    }
}

/// Why an event could not be decoded. Each is counted by the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than the {EVENT_HEADER_SIZE}-byte header")]
    Short(usize),
    #[error("event layout version {0}, expected {EVENT_VERSION}: kernel object and agent differ")]
    Version(u8),
    #[error("event says {declared} payload bytes but carries {actual}")]
    Length { declared: usize, actual: usize },
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown direction {0}")]
    Direction(u8),
}

/// Decodes one ring-buffer event. Copies the payload (the ring slot is released after this).
pub fn decode(event: &[u8]) -> Result<Segment, DecodeError> {
    decode_with(event, Bytes::copy_from_slice)
}

/// Decodes one ring-buffer event, copying its payload to the end of `arena` (one
/// allocation shared by a batch of events instead of one per event). The returned
/// segment's bytes keep that allocation alive: whatever holds them longer than the
/// batch (the reassembler's out-of-order data) copies them.
pub fn decode_into(event: &[u8], arena: &mut BytesMut) -> Result<Segment, DecodeError> {
    decode_with(event, |payload| {
        arena.extend_from_slice(payload);
        arena.split().freeze()
    })
}

fn decode_with(event: &[u8], copy: impl FnOnce(&[u8]) -> Bytes) -> Result<Segment, DecodeError> {
    if event.len() < EVENT_HEADER_SIZE {
        return Err(DecodeError::Short(event.len()));
    }
    // SAFETY: length checked; EventHeader is plain repr(C) data valid for any bytes.
    let hdr: EventHeader = unsafe { std::ptr::read_unaligned(event.as_ptr() as *const EventHeader) };
    if hdr.version != EVENT_VERSION {
        return Err(DecodeError::Version(hdr.version));
    }
    let payload = &event[EVENT_HEADER_SIZE..];
    if payload.len() < hdr.chunk_len as usize {
        return Err(DecodeError::Length { declared: hdr.chunk_len as usize, actual: payload.len() });
    }
    let payload = &payload[..hdr.chunk_len as usize];
    let (src, dst) = match hdr.family {
        FAMILY_IPV4 => (ipv4(&hdr.saddr), ipv4(&hdr.daddr)),
        FAMILY_IPV6 => (IpAddr::V6(Ipv6Addr::from(hdr.saddr)), IpAddr::V6(Ipv6Addr::from(hdr.daddr))),
        other => return Err(DecodeError::Family(other)),
    };
    // The kernel decided the direction from the watched port, whichever hook saw it.
    let (direction, flow) = match hdr.direction {
        DIR_CLIENT_TO_SERVER => (Direction::ClientToServer, FlowKey::new(src, hdr.sport, dst, hdr.dport)),
        DIR_SERVER_TO_CLIENT => (Direction::ServerToClient, FlowKey::new(dst, hdr.dport, src, hdr.sport)),
        other => return Err(DecodeError::Direction(other)),
    };
    Ok(Segment {
        flow,
        direction,
        seq: hdr.seq.wrapping_add(hdr.chunk_offset),
        segment_seq: hdr.seq,
        segment_len: hdr.payload_len,
        flags: hdr.tcp_flags,
        ts_ns: hdr.ts_ns,
        ifindex: hdr.ifindex,
        tls: hdr.hook == HOOK_TLS,
        data: copy(payload),
    })
}

fn ipv4(a: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// Encodes an event the way the kernel program does. For tests and benchmarks that
/// replay recorded segments through the pipeline without a kernel.
pub fn encode(hdr: &EventHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(EVENT_HEADER_SIZE + payload.len());
    // SAFETY: EventHeader is repr(C) plain data; we copy its bytes.
    let raw = unsafe {
        std::slice::from_raw_parts(hdr as *const EventHeader as *const u8, EVENT_HEADER_SIZE)
    };
    out.extend_from_slice(raw);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture_common::{HOOK_EGRESS, HOOK_INGRESS};

    fn header(direction: u8, family: u8) -> EventHeader {
        let mut h = EventHeader {
            version: EVENT_VERSION,
            direction,
            family,
            sport: 40000,
            dport: 8080,
            seq: 1000,
            payload_len: 10,
            chunk_offset: 4,
            chunk_len: 6,
            tcp_flags: TCP_FIN,
            ts_ns: 7,
            ..Default::default()
        };
        h.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        h.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        h
    }

    #[test]
    fn client_to_server_event_names_source_as_client() {
        let seg = decode(&encode(&header(DIR_CLIENT_TO_SERVER, FAMILY_IPV4), b"abcdef")).unwrap();
        assert_eq!(seg.direction, Direction::ClientToServer);
        assert_eq!(seg.flow.client.to_string(), "10.0.0.1:40000");
        assert_eq!(seg.flow.server.to_string(), "10.0.0.2:8080");
        assert_eq!(seg.seq, 1004);
        assert_eq!(&seg.data[..], b"abcdef");
        assert!(seg.is_last_chunk());
        assert_eq!(seg.end_seq(), 1010);
    }

    #[test]
    fn server_to_client_event_names_destination_as_client() {
        let mut h = header(DIR_SERVER_TO_CLIENT, FAMILY_IPV4);
        h.sport = 8080;
        h.dport = 40000;
        h.saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        h.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let seg = decode(&encode(&h, b"abcdef")).unwrap();
        assert_eq!(seg.direction, Direction::ServerToClient);
        assert_eq!(seg.flow.client.to_string(), "10.0.0.1:40000");
    }

    /// On the host side of a pod's veth requests leave on egress and responses arrive
    /// on ingress: the hook must not change who is the client.
    #[test]
    fn the_hook_does_not_change_the_direction_or_the_flow() {
        for hook in [HOOK_INGRESS, HOOK_EGRESS] {
            let mut req = header(DIR_CLIENT_TO_SERVER, FAMILY_IPV4);
            req.hook = hook;
            let mut resp = header(DIR_SERVER_TO_CLIENT, FAMILY_IPV4);
            resp.hook = hook;
            (resp.sport, resp.dport, resp.saddr, resp.daddr) = (req.dport, req.sport, req.daddr, req.saddr);
            let req = decode(&encode(&req, b"abcdef")).unwrap();
            let resp = decode(&encode(&resp, b"abcdef")).unwrap();
            assert_eq!(req.direction, Direction::ClientToServer);
            assert_eq!(resp.direction, Direction::ServerToClient);
            assert_eq!(req.flow, resp.flow, "hook {hook}: both directions map to one connection");
            assert_eq!(req.flow.server.port(), 8080);
        }
    }

    #[test]
    fn first_chunk_of_large_segment_is_not_last() {
        let mut h = header(DIR_CLIENT_TO_SERVER, FAMILY_IPV6);
        h.chunk_offset = 0;
        h.payload_len = 100;
        let seg = decode(&encode(&h, b"abcdef")).unwrap();
        assert!(!seg.is_last_chunk());
        assert!(seg.flow.client.is_ipv6());
    }

    /// Segments decoded into one arena each keep exactly their own bytes, also after
    /// the arena moved on to a new allocation.
    #[test]
    fn arena_decoded_segments_keep_their_own_bytes() {
        let mut arena = BytesMut::with_capacity(8);
        let h = header(DIR_CLIENT_TO_SERVER, FAMILY_IPV4);
        let segs: Vec<Segment> = [b"abcdef", b"ghijkl", b"mnopqr"]
            .iter()
            .map(|p| decode_into(&encode(&h, *p), &mut arena).unwrap())
            .collect();
        let data: Vec<&[u8]> = segs.iter().map(|s| &s.data[..]).collect();
        assert_eq!(data, [b"abcdef", b"ghijkl", b"mnopqr"]);
        assert_eq!(segs[0], decode(&encode(&h, b"abcdef")).unwrap());
        assert!(arena.is_empty());
    }

    #[test]
    fn bad_events_are_errors_not_panics() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let mut h = header(DIR_CLIENT_TO_SERVER, FAMILY_IPV4);
        h.version = 99;
        assert_eq!(decode(&encode(&h, b"abcdef")), Err(DecodeError::Version(99)));
        let h = header(DIR_CLIENT_TO_SERVER, FAMILY_IPV4);
        assert_eq!(
            decode(&encode(&h, b"abc")),
            Err(DecodeError::Length { declared: 6, actual: 3 })
        );
        let h = header(DIR_CLIENT_TO_SERVER, 9);
        assert_eq!(decode(&encode(&h, b"abcdef")), Err(DecodeError::Family(9)));
        let h = header(5, FAMILY_IPV4);
        assert_eq!(decode(&encode(&h, b"abcdef")), Err(DecodeError::Direction(5)));
    }
}
