//! Types shared by the kernel programs (`capture-ebpf`) and the userspace agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into the ring
//! buffer and userspace reads it back byte for byte. Changing a layout is a
//! breaking change of the kernel/user contract; bump [`EVENT_VERSION`].
#![no_std]

/// Layout version written in every [`EventHeader`]; userspace refuses other versions.
pub const EVENT_VERSION: u8 = 1;

/// Bytes of TCP payload carried by one ring-buffer event at most.
///
/// A power of two: the kernel program masks lengths with `CHUNK_SIZE - 1` so the
/// verifier can prove every copy stays inside the scratch buffer.
pub const CHUNK_SIZE: usize = 16 * 1024;

/// Chunks emitted for one skb at most. GSO/GRO skbs on `lo` and veth reach ~128 KiB
/// (BIG TCP more); anything past `MAX_CHUNKS * CHUNK_SIZE` is counted as truncated.
pub const MAX_CHUNKS: u32 = 32;

/// Size of the per-CPU scratch buffer: one header plus one chunk. Per-CPU map
/// values are limited to 32 KiB by the kernel (`PCPU_MIN_UNIT_SIZE`).
pub const SCRATCH_SIZE: usize = EVENT_HEADER_SIZE + CHUNK_SIZE;

/// Default ring buffer size; userspace can change it at load time.
pub const DEFAULT_RING_BYTES: u32 = 16 * 1024 * 1024;

/// Watched ports at most.
pub const MAX_PORTS: u32 = 64;

/// Address families, as in `EventHeader::family`.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Hook that saw the segment, as in `EventHeader::direction`.
/// Ingress on a watched destination port: client -> server (request bytes).
pub const DIR_INGRESS: u8 = 0;
/// Egress from a watched source port: server -> client (response bytes).
pub const DIR_EGRESS: u8 = 1;

/// TCP flag bits as in the TCP header's 14th byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Header of every ring-buffer event; `chunk_len` payload bytes follow it.
///
/// Addresses are in network byte order (IPv4 in the first four bytes), ports and
/// numbers in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` when the segment passed the hook (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// TCP sequence number of the segment's first payload byte.
    pub seq: u32,
    /// TCP payload bytes in the whole skb (all chunks together).
    pub payload_len: u32,
    /// Offset of this chunk inside the skb's payload.
    pub chunk_offset: u32,
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    /// Payload bytes following this header (0 for SYN/FIN/RST without data).
    pub chunk_len: u16,
    pub family: u8,
    pub direction: u8,
    pub tcp_flags: u8,
    pub version: u8,
    pub _pad: [u8; 6],
}

pub const EVENT_HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();

// The kernel program relies on this exact size (scratch layout); fail the build otherwise.
const _: () = assert!(EVENT_HEADER_SIZE == 72);
const _: () = assert!(SCRATCH_SIZE <= 32 * 1024);

/// Per-CPU scratch buffer: header at offset 0, chunk bytes after it.
#[repr(C, align(8))]
pub struct Scratch {
    pub bytes: [u8; SCRATCH_SIZE],
}

/// Indices into the per-CPU `COUNTERS` array. Append only; never reorder.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Watched TCP segments (with payload or SYN/FIN/RST) seen by a hook.
    SegmentsSeen = 0,
    /// Payload bytes of those segments.
    BytesSeen = 1,
    /// Events written to the ring buffer.
    EventsEmitted = 2,
    /// Payload bytes written to the ring buffer.
    BytesEmitted = 3,
    /// Events lost because the ring buffer was full.
    RingFull = 4,
    /// Payload bytes lost because the ring buffer was full.
    RingFullBytes = 5,
    /// `bpf_skb_load_bytes` failures (event not emitted).
    CopyErrors = 6,
    /// skbs whose payload exceeded `MAX_CHUNKS * CHUNK_SIZE`.
    Truncated = 7,
    /// Payload bytes not copied because of truncation.
    TruncatedBytes = 8,
    /// Packets on a watched port we cannot parse (IPv6 extension headers, IP fragments).
    Unsupported = 9,
}

pub const COUNTER_COUNT: u32 = 10;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::SegmentsSeen,
        Counter::BytesSeen,
        Counter::EventsEmitted,
        Counter::BytesEmitted,
        Counter::RingFull,
        Counter::RingFullBytes,
        Counter::CopyErrors,
        Counter::Truncated,
        Counter::TruncatedBytes,
        Counter::Unsupported,
    ];

    /// Stable snake_case name used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::SegmentsSeen => "kernel_segments_seen",
            Counter::BytesSeen => "kernel_bytes_seen",
            Counter::EventsEmitted => "kernel_events_emitted",
            Counter::BytesEmitted => "kernel_bytes_emitted",
            Counter::RingFull => "kernel_ring_full_events",
            Counter::RingFullBytes => "kernel_ring_full_bytes",
            Counter::CopyErrors => "kernel_copy_errors",
            Counter::Truncated => "kernel_truncated_skbs",
            Counter::TruncatedBytes => "kernel_truncated_bytes",
            Counter::Unsupported => "kernel_unsupported_packets",
        }
    }

    /// Counters that mean bytes were lost in the kernel.
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            Counter::RingFull
                | Counter::RingFullBytes
                | Counter::CopyErrors
                | Counter::Truncated
                | Counter::TruncatedBytes
                | Counter::Unsupported
        )
    }
}

/// Program names, used to attach and to find stale netlink attachments.
pub const PROG_INGRESS: &str = "capture_ingress";
pub const PROG_EGRESS: &str = "capture_egress";
/// Map names.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_PORTS: &str = "PORTS";
pub const MAP_COUNTERS: &str = "COUNTERS";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain repr(C) data with no padding-dependent invariants.
    unsafe impl aya::Pod for super::EventHeader {}
}
