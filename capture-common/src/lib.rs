//! Types shared by the kernel programs (`capture-ebpf`) and the userspace agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into the ring
//! buffer and userspace reads it back byte for byte. Changing a layout is a
//! breaking change of the kernel/user contract; bump [`EVENT_VERSION`].
#![cfg_attr(not(test), no_std)]

mod control;
pub use control::{
    connection_hash, copy_window, is_sampled, siphash24_40, SampleConfig, SkipRange, DEFAULT_SKIP_ENTRIES,
    MAX_SKIP_LEN, SAMPLE_ALL,
};

/// Layout version written in every [`EventHeader`]; userspace refuses other versions.
/// 2: `direction` is client->server / server->client (from the watched port), `hook` added.
/// 3: `chunk_len` is a `u32` (chunks of 64 KiB).
pub const EVENT_VERSION: u8 = 3;

/// Bytes of TCP payload carried by one ring-buffer event at most.
///
/// A power of two: the kernel program masks lengths with `CHUNK_SIZE - 1` so the
/// verifier can prove every copy stays inside the scratch buffer. As large as a GSO skb
/// (64 KiB) so most skbs take one event, and so the chunk loop has few iterations: the
/// verifier walks each one, and its time is spent in the agent at every start
/// (16 KiB chunks x 32 took ~0.6 s).
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Chunks emitted for one skb at most. GSO/GRO skbs on `lo` and veth reach ~128 KiB
/// (BIG TCP more); anything past `MAX_CHUNKS * CHUNK_SIZE` is counted as truncated.
pub const MAX_CHUNKS: u32 = 8;

/// Size of one CPU's scratch slot of the TC programs: one header plus one chunk. Larger
/// than a per-CPU map value may be (32 KiB, `PCPU_MIN_UNIT_SIZE`), so the slots live
/// in a plain array with one entry per possible CPU ([`MAP_SCRATCH`]), indexed by the
/// CPU the program runs on (TC programs cannot migrate while they run).
pub const SCRATCH_SIZE: usize = EVENT_HEADER_SIZE + CHUNK_SIZE;

/// Bytes of TLS plaintext carried by one event at most (a power of two, as
/// [`CHUNK_SIZE`]); the TLS probes keep a per-CPU scratch buffer, limited to 32 KiB.
pub const TLS_CHUNK_SIZE: usize = 16 * 1024;

/// Size of the TLS probes' per-CPU scratch buffer: one header plus one chunk.
pub const TLS_SCRATCH_SIZE: usize = EVENT_HEADER_SIZE + TLS_CHUNK_SIZE;

/// Default ring buffer size; userspace can change it at load time.
pub const DEFAULT_RING_BYTES: u32 = 16 * 1024 * 1024;

/// Watched ports at most.
pub const MAX_PORTS: u32 = 64;

/// Entries of the `PORTS` array map: one per port number.
pub const PORT_SLOTS: u32 = 65_536;

/// Address families, as in `EventHeader::family`.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Direction of a segment, as in `EventHeader::direction`. It comes from which port is
/// watched, not from the hook: see [`direction_of`].
/// Destination port watched: client -> server (request bytes).
pub const DIR_CLIENT_TO_SERVER: u8 = 0;
/// Source port watched: server -> client (response bytes).
pub const DIR_SERVER_TO_CLIENT: u8 = 1;

/// TC hook that saw the segment, as in `EventHeader::hook` and [`FlowOwner::hook`].
pub const HOOK_INGRESS: u8 = 0;
pub const HOOK_EGRESS: u8 = 1;

/// A segment's direction from whether its destination and source ports are watched.
///
/// The same rule holds on either hook of any interface: a NIC (requests arrive on
/// ingress), the host-side end of a pod's veth (requests leave on egress), `lo`
/// (every segment passes both). When both ports are watched (a server talking to
/// another watched port), the destination wins: the segment is a request.
pub const fn direction_of(dport_watched: bool, sport_watched: bool) -> Option<u8> {
    if dport_watched {
        Some(DIR_CLIENT_TO_SERVER)
    } else if sport_watched {
        Some(DIR_SERVER_TO_CLIENT)
    } else {
        None
    }
}

/// `EventHeader::hook` of TLS plaintext events: bytes an OpenSSL `SSL_read`/`SSL_write`
/// call returned or took, read by uprobes, not seen on an interface (`ifindex` 0).
/// Their `seq` is synthetic: a per-connection start plus the plaintext offset in that
/// direction, so userspace rebuilds plaintext with the same reassembler as TCP. `SYN`
/// marks a connection's first TLS call seen, `FIN` its `SSL_free`.
pub const HOOK_TLS: u8 = 2;

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
    pub chunk_len: u32,
    pub family: u8,
    /// [`DIR_CLIENT_TO_SERVER`] or [`DIR_SERVER_TO_CLIENT`].
    pub direction: u8,
    pub tcp_flags: u8,
    pub version: u8,
    /// [`HOOK_INGRESS`] or [`HOOK_EGRESS`]: where the segment was seen (diagnostics).
    pub hook: u8,
    pub _pad: [u8; 3],
}

pub const EVENT_HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();

// The kernel program relies on this exact size (scratch layout); fail the build otherwise.
const _: () = assert!(EVENT_HEADER_SIZE == 72);
const _: () = assert!(TLS_SCRATCH_SIZE <= 32 * 1024);
const _: () = assert!(CHUNK_SIZE.is_power_of_two() && TLS_CHUNK_SIZE.is_power_of_two());

/// One CPU's scratch slot of the TC programs: header at offset 0, chunk bytes after it.
#[repr(C, align(8))]
pub struct Scratch {
    pub bytes: [u8; SCRATCH_SIZE],
}

/// The TLS probes' per-CPU scratch buffer: header at offset 0, chunk bytes after it.
#[repr(C, align(8))]
pub struct TlsScratch {
    pub bytes: [u8; TLS_SCRATCH_SIZE],
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
    /// Segments not emitted because another hook owns their flow direction (the same
    /// segment seen a second time: `lo`, or a connection crossing two watched interfaces).
    DuplicateSegments = 10,
    /// Payload bytes of those segments.
    DuplicateBytes = 11,
    /// Times a hook took over a flow direction another hook owned (a new SYN on the
    /// 4-tuple, or the owner saw nothing for [`OWNER_STALE_NS`]).
    OwnerChanges = 12,
    /// Connections left out by `--sample` (client SYNs of unsampled connections).
    SampledOutConnections = 13,
    /// Segments of unsampled connections (not emitted; not a loss).
    SampledOutSegments = 14,
    /// Payload bytes of those segments.
    SampledOutBytes = 15,
    /// Segments whose payload was skipped in part or whole (userspace said it keeps
    /// none of those bytes; not a loss).
    SkippedSegments = 16,
    /// Payload bytes not copied because of a skip.
    SkippedBytes = 17,
}

pub const COUNTER_COUNT: u32 = 18;

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
        Counter::DuplicateSegments,
        Counter::DuplicateBytes,
        Counter::OwnerChanges,
        Counter::SampledOutConnections,
        Counter::SampledOutSegments,
        Counter::SampledOutBytes,
        Counter::SkippedSegments,
        Counter::SkippedBytes,
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
            Counter::DuplicateSegments => "kernel_duplicate_segments",
            Counter::DuplicateBytes => "kernel_duplicate_bytes",
            Counter::OwnerChanges => "kernel_flow_owner_changes",
            Counter::SampledOutConnections => "kernel_sampled_out_connections",
            Counter::SampledOutSegments => "kernel_sampled_out_segments",
            Counter::SampledOutBytes => "kernel_sampled_out_bytes",
            Counter::SkippedSegments => "kernel_skipped_segments",
            Counter::SkippedBytes => "kernel_skipped_bytes",
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
pub const MAP_OWNERS: &str = "OWNERS";
pub const MAP_IFACE_COUNTERS: &str = "IFACE_COUNTERS";
pub const MAP_SKIPS: &str = "FLOW_SKIPS";
/// One `u32`: non-zero once userspace wrote a skip range (the kernel looks skips up only then).
pub const MAP_SKIPS_ACTIVE: &str = "SKIPS_ACTIVE";
/// One `u32`: non-zero once a second interface is attached (the kernel consults
/// `OWNERS` only then: on one interface no flow direction passes two hooks).
pub const MAP_OWNERS_ACTIVE: &str = "OWNERS_ACTIVE";
/// The TC programs' scratch slots; userspace sizes it to the possible CPUs at load time.
pub const MAP_SCRATCH: &str = "SCRATCH";
/// Globals of the kernel program holding the [`SampleConfig`] (u64 each).
pub const GLOBAL_SAMPLE_K0: &str = "SAMPLE_K0";
pub const GLOBAL_SAMPLE_K1: &str = "SAMPLE_K1";
pub const GLOBAL_SAMPLE_THRESHOLD: &str = "SAMPLE_THRESHOLD";
/// Global of the kernel program (u8): non-zero when TLS libraries are probed.
pub const GLOBAL_TLS_ENABLED: &str = "TLS_ENABLED";
/// Global of the kernel program (u8): non-zero when the ring holds several whole
/// scratch slots, so large chunks may take a record of a whole slot.
pub const GLOBAL_DIRECT_ENABLED: &str = "DIRECT_ENABLED";
/// Ring size from which large chunks are loaded straight into the ring.
pub const DIRECT_MIN_RING_BYTES: u32 = 1 << 20;

/// Default entries of the flow-owner map (one per flow direction); userspace sizes it
/// from `--max-connections` at load time. An LRU: a live flow evicted under pressure is
/// claimed again by the next hook that sees it (at worst one repeated segment).
pub const DEFAULT_OWNER_ENTRIES: u32 = 65_536;

/// Interfaces with per-interface counters at once (userspace deletes forgotten ones).
pub const MAX_INTERFACES: u32 = 1024;

/// An owner that saw nothing of its flow direction for this long can be replaced by
/// another hook that does (the owner's interface was deleted, or the route moved).
/// Every hook of one packet's path runs within microseconds of the previous one.
pub const OWNER_STALE_NS: u64 = 1_000_000_000;

/// Key of the flow-owner map: one direction of one connection, as in the packet.
/// Both directions of a connection are separate keys (addresses and ports swap).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    /// Zero: the kernel hashes every byte of the key.
    pub _pad: [u8; 3],
}

/// Value of the flow-owner map: the hook whose segments of this flow direction are
/// emitted. Segments of the direction seen on any other hook are counted as duplicates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOwner {
    /// `bpf_ktime_get_ns()` of the owner's last segment of this direction.
    pub last_ns: u64,
    pub ifindex: u32,
    /// Sequence number of the SYN the owner saw (if `has_isn`): a SYN with another
    /// number on the same 4-tuple is a new connection.
    pub isn: u32,
    pub hook: u8,
    pub has_isn: u8,
    pub _pad: [u8; 6],
}

/// What a hook does with a segment, given the flow direction's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerVerdict {
    /// This hook owns the direction: emit, and refresh `last_ns`.
    Owner,
    /// No owner, a new connection (SYN with a new sequence number), or a stale owner:
    /// this hook becomes the owner and emits.
    Claim,
    /// Another hook owns the direction and is live: the same segment was (or will be)
    /// emitted there. Count it, emit nothing.
    Duplicate,
}

/// The dedup rule, shared by the kernel program and the userspace tests.
///
/// The first hook that sees a flow direction owns it; on one path every packet
/// reaches that hook first, so each segment is emitted once however many watched
/// hooks it crosses (`lo`: egress then ingress; pod A -> pod B on one node: A's veth
/// ingress then B's veth egress). Retransmissions take the same path and are emitted
/// again by the owner (reassembly drops the repeated bytes).
pub fn owner_verdict(owner: Option<&FlowOwner>, ifindex: u32, hook: u8, syn: bool, seq: u32, now_ns: u64) -> OwnerVerdict {
    let Some(o) = owner else { return OwnerVerdict::Claim };
    if syn && (o.has_isn == 0 || o.isn != seq) {
        // Port reuse (or the first SYN after joining mid-stream): whoever sees the new
        // SYN first owns the new connection's direction, even on another path.
        return OwnerVerdict::Claim;
    }
    if o.ifindex == ifindex && o.hook == hook {
        return OwnerVerdict::Owner;
    }
    if now_ns.saturating_sub(o.last_ns) > OWNER_STALE_NS {
        return OwnerVerdict::Claim;
    }
    OwnerVerdict::Duplicate
}

/// The owner value a claiming hook writes.
pub const fn new_owner(ifindex: u32, hook: u8, syn: bool, seq: u32, now_ns: u64) -> FlowOwner {
    FlowOwner { last_ns: now_ns, ifindex, isn: if syn { seq } else { 0 }, hook, has_isn: syn as u8, _pad: [0; 6] }
}

/// Per-interface counters (per CPU in the kernel, keyed by ifindex; both hooks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Watched segments (with payload or SYN/FIN/RST) seen by this interface's hooks.
    pub segments_seen: u64,
    pub bytes_seen: u64,
    /// Of those, segments another hook owned (not emitted here).
    pub segments_duplicate: u64,
    pub bytes_duplicate: u64,
    /// Ring-buffer events written for segments seen here, and their payload bytes.
    pub events_emitted: u64,
    pub bytes_emitted: u64,
}

/// Chunks emitted for one `SSL_read`/`SSL_write` call at most (16 MiB of plaintext);
/// the rest of a larger call is counted as truncated (userspace sees a gap).
pub const TLS_MAX_CHUNKS: u32 = 1024;

/// Threads inside an SSL call at once (entry probe -> return probe).
pub const TLS_MAX_CALLS: u32 = 16_384;

/// TLS connections (SSL objects mapped to a socket) tracked at once; an LRU.
pub const TLS_MAX_CONNS: u32 = 65_536;

/// TLS map and program names.
pub const MAP_TLS_COUNTERS: &str = "TLS_COUNTERS";
pub const MAP_TLS_CONFIG: &str = "TLS_CONFIG";
/// Uprobes at the entry of each SSL call (`kind` in the name), one return probe for all.
pub const PROG_SSL_READ: &str = "ssl_read";
pub const PROG_SSL_WRITE: &str = "ssl_write";
pub const PROG_SSL_READ_EX: &str = "ssl_read_ex";
pub const PROG_SSL_WRITE_EX: &str = "ssl_write_ex";
pub const PROG_SSL_RET: &str = "ssl_ret";
pub const PROG_SSL_FREE: &str = "ssl_free";
/// Raw tracepoint on syscall entry: which file descriptor an SSL call reads or writes.
pub const PROG_SYS_ENTER: &str = "tls_sys_enter";

/// Byte offsets of the kernel fields the TLS probes read, from the kernel's BTF (the
/// programs are built without CO-RE): the fd of a syscall, the way from the current
/// task to that fd's socket, and the socket's addresses and ports (`struct sock`
/// starts with its `struct sock_common`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsOffsets {
    /// `pt_regs.di`: a syscall's first argument (x86-64).
    pub regs_arg0: u32,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`, `fdtable.max_fds`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    /// `file.private_data` (a `struct socket *` for sockets), `socket.sk`.
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `sock_common`: `skc_daddr` (remote IPv4, network order).
    pub daddr: u32,
    /// `skc_rcv_saddr` (local IPv4, network order).
    pub rcv_saddr: u32,
    /// `skc_dport` (remote port, network order).
    pub dport: u32,
    /// `skc_num` (local port, host order).
    pub num: u32,
    /// `skc_family` (AF_INET 2, AF_INET6 10).
    pub family: u32,
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr` (16 bytes each).
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// Non-zero once userspace wrote the offsets (the probes do nothing before).
    pub valid: u32,
}

/// Indices into the per-CPU `TLS_COUNTERS` array (apart from [`Counter`] so the TLS
/// probes and the classifiers evolve separately). Append only; never reorder.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsCounter {
    /// SSL_read/SSL_write calls that returned plaintext.
    Calls = 0,
    /// Plaintext bytes of those calls.
    Bytes = 1,
    /// Plaintext events written to the ring buffer, and their bytes.
    EventsEmitted = 2,
    BytesEmitted = 3,
    /// Plaintext events lost because the ring buffer was full, and their bytes.
    RingFull = 4,
    RingFullBytes = 5,
    /// `bpf_probe_read_user` failures (chunk not emitted), and their bytes.
    CopyErrors = 6,
    CopyErrorBytes = 7,
    /// Calls larger than [`TLS_MAX_CHUNKS`] chunks, and the bytes not copied.
    Truncated = 8,
    TruncatedBytes = 9,
    /// Calls whose SSL object could not be tied to a TCP socket (no read/write syscall
    /// on a socket seen during any call on it yet: a memory BIO, or the first calls of
    /// a connection the agent joined), and their bytes.
    Unmapped = 10,
    UnmappedBytes = 11,
    /// Calls on sockets whose ports are not watched (other TLS traffic of the host).
    NotWatched = 12,
    /// Calls of a TLS client whose server port is watched: the server side is captured,
    /// not the client (a client and server on one host would record each byte twice).
    ClientSide = 13,
    /// TLS connections captured (first call on a server-side socket of a watched port).
    Connections = 14,
    /// `SSL_free` of a captured connection (its end).
    ConnectionsClosed = 15,
    /// Ciphertext segments (and bytes) of TLS-captured connections not emitted by the
    /// classifiers: their plaintext comes from the uprobes.
    CiphertextSegments = 16,
    CiphertextBytes = 17,
    /// A call's return probe found no entry (lost to a full call map or a nested call).
    CallsUnmatched = 18,
    /// Calls (and plaintext bytes) of connections `--sample` leaves out: not emitted,
    /// not a loss.
    SampledOutCalls = 19,
    SampledOutBytes = 20,
}

pub const TLS_COUNTER_COUNT: u32 = 21;

impl TlsCounter {
    pub const ALL: [TlsCounter; TLS_COUNTER_COUNT as usize] = [
        TlsCounter::Calls,
        TlsCounter::Bytes,
        TlsCounter::EventsEmitted,
        TlsCounter::BytesEmitted,
        TlsCounter::RingFull,
        TlsCounter::RingFullBytes,
        TlsCounter::CopyErrors,
        TlsCounter::CopyErrorBytes,
        TlsCounter::Truncated,
        TlsCounter::TruncatedBytes,
        TlsCounter::Unmapped,
        TlsCounter::UnmappedBytes,
        TlsCounter::NotWatched,
        TlsCounter::ClientSide,
        TlsCounter::Connections,
        TlsCounter::ConnectionsClosed,
        TlsCounter::CiphertextSegments,
        TlsCounter::CiphertextBytes,
        TlsCounter::CallsUnmatched,
        TlsCounter::SampledOutCalls,
        TlsCounter::SampledOutBytes,
    ];

    /// Stable snake_case name used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            TlsCounter::Calls => "kernel_tls_calls",
            TlsCounter::Bytes => "kernel_tls_bytes",
            TlsCounter::EventsEmitted => "kernel_tls_events_emitted",
            TlsCounter::BytesEmitted => "kernel_tls_bytes_emitted",
            TlsCounter::RingFull => "kernel_tls_ring_full_events",
            TlsCounter::RingFullBytes => "kernel_tls_ring_full_bytes",
            TlsCounter::CopyErrors => "kernel_tls_copy_errors",
            TlsCounter::CopyErrorBytes => "kernel_tls_copy_error_bytes",
            TlsCounter::Truncated => "kernel_tls_truncated_calls",
            TlsCounter::TruncatedBytes => "kernel_tls_truncated_bytes",
            TlsCounter::Unmapped => "kernel_tls_unmapped_calls",
            TlsCounter::UnmappedBytes => "kernel_tls_unmapped_bytes",
            TlsCounter::NotWatched => "kernel_tls_unwatched_calls",
            TlsCounter::ClientSide => "kernel_tls_client_side_calls",
            TlsCounter::Connections => "kernel_tls_connections",
            TlsCounter::ConnectionsClosed => "kernel_tls_connections_closed",
            TlsCounter::CiphertextSegments => "kernel_tls_ciphertext_segments",
            TlsCounter::CiphertextBytes => "kernel_tls_ciphertext_bytes",
            TlsCounter::CallsUnmatched => "kernel_tls_calls_unmatched",
            TlsCounter::SampledOutCalls => "kernel_tls_sampled_out_calls",
            TlsCounter::SampledOutBytes => "kernel_tls_sampled_out_bytes",
        }
    }

    /// Counters that mean plaintext of a captured connection was lost in the kernel.
    /// (Unmapped calls are not among them: whose they were is unknown, and most are
    /// other programs' TLS, e.g. memory BIOs of Python's asyncio.)
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            TlsCounter::RingFull
                | TlsCounter::RingFullBytes
                | TlsCounter::CopyErrors
                | TlsCounter::CopyErrorBytes
                | TlsCounter::Truncated
                | TlsCounter::TruncatedBytes
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain repr(C) data with no padding-dependent invariants.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above; padding fields are explicit.
    unsafe impl aya::Pod for super::FlowTuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SkipRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsOffsets {}
}

const _: () = assert!(core::mem::size_of::<FlowTuple>() == 40);
const _: () = assert!(core::mem::size_of::<FlowOwner>() == 24);
const _: () = assert!(core::mem::size_of::<SkipRange>() == 8);

#[cfg(test)]
mod tests {
    //! The direction and dedup rules on simulated paths: every segment must be emitted
    //! exactly once whatever watched hooks it crosses.
    use super::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    /// One (ifindex, hook) a packet passes, in order.
    type Hook = (u32, u8);

    /// The owner map and what each hook emitted, run through the shared rule the way
    /// the kernel program does.
    #[derive(Default)]
    struct Node {
        owners: HashMap<FlowTuple, FlowOwner>,
        emitted: Vec<(Hook, u32)>,
        duplicates: u64,
        owner_changes: u64,
    }

    impl Node {
        /// Passes one segment (`seq`, `syn`) of flow direction `tuple` along `path` at `now`.
        fn pass(&mut self, tuple: FlowTuple, path: &[Hook], syn: bool, seq: u32, now: u64) {
            for &(ifindex, hook) in path {
                match owner_verdict(self.owners.get(&tuple), ifindex, hook, syn, seq, now) {
                    OwnerVerdict::Owner => {
                        self.owners.get_mut(&tuple).unwrap().last_ns = now;
                        self.emitted.push(((ifindex, hook), seq));
                    }
                    OwnerVerdict::Claim => {
                        if self.owners.get(&tuple).is_some_and(|o| (o.ifindex, o.hook) != (ifindex, hook)) {
                            self.owner_changes += 1;
                        }
                        self.owners.insert(tuple, new_owner(ifindex, hook, syn, seq, now));
                        self.emitted.push(((ifindex, hook), seq));
                    }
                    OwnerVerdict::Duplicate => self.duplicates += 1,
                }
            }
        }

        /// Sequence numbers emitted, in order.
        fn seqs(&self) -> Vec<u32> {
            self.emitted.iter().map(|(_, s)| *s).collect()
        }
    }

    fn tuple(s: u8, sport: u16, d: u8, dport: u16) -> FlowTuple {
        let mut t = FlowTuple { sport, dport, family: FAMILY_IPV4, ..FlowTuple::default() };
        t.saddr[..4].copy_from_slice(&[10, 0, 0, s]);
        t.daddr[..4].copy_from_slice(&[10, 0, 0, d]);
        t
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn direction_comes_from_the_watched_port_not_the_hook() {
        assert_eq!(direction_of(true, false), Some(DIR_CLIENT_TO_SERVER));
        assert_eq!(direction_of(false, true), Some(DIR_SERVER_TO_CLIENT));
        assert_eq!(direction_of(false, false), None);
        // Both watched (8080 -> 8080): the destination wins, the segment is a request.
        assert_eq!(direction_of(true, true), Some(DIR_CLIENT_TO_SERVER));
    }

    #[test]
    fn loopback_segments_pass_egress_then_ingress_and_are_emitted_once() {
        let lo = 1;
        let path = [(lo, HOOK_EGRESS), (lo, HOOK_INGRESS)];
        let (c2s, s2c) = (tuple(1, 40000, 1, 8080), tuple(1, 8080, 1, 40000));
        let mut node = Node::default();
        node.pass(c2s, &path, true, 100, 0);
        node.pass(s2c, &path, true, 900, MS);
        for i in 0..10 {
            node.pass(c2s, &path, false, 101 + i * 10, (2 + i as u64) * MS);
            node.pass(s2c, &path, false, 901 + i * 10, (2 + i as u64) * MS);
        }
        assert_eq!(node.emitted.len(), 22, "each segment once");
        assert!(node.emitted.iter().all(|(h, _)| *h == (lo, HOOK_EGRESS)), "all at the first hook");
        assert_eq!(node.duplicates, 22);
        assert_eq!(node.owner_changes, 0);
    }

    #[test]
    fn pod_to_pod_on_one_node_is_emitted_once_by_the_first_veth() {
        let (vh_a, vh_b) = (5, 6);
        // Client in pod A, server in pod B: requests enter the node on A's veth
        // (ingress) and leave on B's veth (egress); responses the other way round.
        let request_path = [(vh_a, HOOK_INGRESS), (vh_b, HOOK_EGRESS)];
        let response_path = [(vh_b, HOOK_INGRESS), (vh_a, HOOK_EGRESS)];
        let (c2s, s2c) = (tuple(1, 40000, 2, 8080), tuple(2, 8080, 1, 40000));
        let mut node = Node::default();
        node.pass(c2s, &request_path, true, 1, 0);
        node.pass(s2c, &response_path, true, 7, 0);
        node.pass(c2s, &request_path, false, 2, MS);
        node.pass(s2c, &response_path, false, 8, MS);
        // A retransmission takes the same path: emitted again by the owner only.
        node.pass(c2s, &request_path, false, 2, 3 * MS);
        assert_eq!(node.seqs(), [1, 7, 2, 8, 2]);
        let hooks: Vec<Hook> = node.emitted.iter().map(|(h, _)| *h).collect();
        assert_eq!(hooks, [(vh_a, HOOK_INGRESS), (vh_b, HOOK_INGRESS), (vh_a, HOOK_INGRESS), (vh_b, HOOK_INGRESS), (vh_a, HOOK_INGRESS)]);
        assert_eq!(node.duplicates, 5);
    }

    #[test]
    fn a_new_syn_on_a_reused_4_tuple_is_owned_by_its_own_path() {
        // Connection 1 through pod A's veth; pod A is deleted, a new pod on another
        // veth gets its address and the client port repeats: the new SYN claims the
        // direction at once, no stale window.
        let (vh_a, vh_b, vh_c) = (5, 6, 7);
        let c2s = tuple(1, 40000, 2, 8080);
        let mut node = Node::default();
        node.pass(c2s, &[(vh_a, HOOK_INGRESS), (vh_b, HOOK_EGRESS)], true, 1, 0);
        node.pass(c2s, &[(vh_a, HOOK_INGRESS), (vh_b, HOOK_EGRESS)], false, 2, MS);
        let new_path = [(vh_c, HOOK_INGRESS), (vh_b, HOOK_EGRESS)];
        node.pass(c2s, &new_path, true, 5000, 2 * MS);
        node.pass(c2s, &new_path, true, 5000, 3 * MS); // retransmitted SYN
        node.pass(c2s, &new_path, false, 5001, 4 * MS);
        assert_eq!(node.seqs(), [1, 2, 5000, 5000, 5001]);
        assert!(node.emitted[2..].iter().all(|(h, _)| *h == (vh_c, HOOK_INGRESS)));
        assert_eq!(node.owner_changes, 1);
    }

    #[test]
    fn a_flow_whose_owner_stopped_seeing_it_is_taken_over_after_the_stale_time() {
        // The owner's interface was deleted but the flow goes on through another
        // watched hook (a route moved): that hook takes over once the owner is stale.
        let (nic, vh) = (2, 5);
        let c2s = tuple(1, 40000, 2, 8080);
        let mut node = Node::default();
        node.pass(c2s, &[(nic, HOOK_INGRESS), (vh, HOOK_EGRESS)], false, 1, 0);
        node.pass(c2s, &[(vh, HOOK_EGRESS)], false, 2, OWNER_STALE_NS / 2);
        node.pass(c2s, &[(vh, HOOK_EGRESS)], false, 3, OWNER_STALE_NS + 1);
        node.pass(c2s, &[(vh, HOOK_EGRESS)], false, 4, OWNER_STALE_NS + 2);
        // Segment 2 fell in the window: counted as a duplicate, not emitted.
        assert_eq!(node.seqs(), [1, 3, 4]);
        assert_eq!(node.duplicates, 2);
        assert_eq!(node.owner_changes, 1);
    }

    #[test]
    fn an_owner_evicted_between_two_hooks_costs_one_repeated_segment_then_settles() {
        // LRU eviction (more flows than entries) right after the first hook: the second
        // hook claims and repeats that one segment (same sequence numbers, dropped by
        // reassembly as duplicate bytes); later segments are emitted once again.
        let (vh_a, vh_b) = (5, 6);
        let path = [(vh_a, HOOK_INGRESS), (vh_b, HOOK_EGRESS)];
        let c2s = tuple(1, 40000, 2, 8080);
        let mut node = Node::default();
        node.pass(c2s, &path, false, 1, 0);
        node.pass(c2s, &path[..1], false, 2, MS);
        node.owners.clear(); // evicted
        node.pass(c2s, &path[1..], false, 2, MS);
        for i in 3..10u32 {
            node.pass(c2s, &path, false, i, i as u64 * MS);
        }
        assert_eq!(node.seqs(), [1, 2, 2, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn owner_values_written_on_claim_carry_the_isn_only_for_syns() {
        let o = new_owner(3, HOOK_EGRESS, true, 77, 5);
        assert_eq!((o.ifindex, o.hook, o.has_isn, o.isn, o.last_ns), (3, HOOK_EGRESS, 1, 77, 5));
        let o = new_owner(3, HOOK_INGRESS, false, 77, 5);
        assert_eq!((o.has_isn, o.isn), (0, 0));
        // Same SYN again at the owner: still the owner, not a new claim.
        let o = new_owner(3, HOOK_INGRESS, true, 77, 5);
        assert_eq!(owner_verdict(Some(&o), 3, HOOK_INGRESS, true, 77, 6), OwnerVerdict::Owner);
        assert_eq!(owner_verdict(Some(&o), 4, HOOK_EGRESS, true, 77, 6), OwnerVerdict::Duplicate);
        assert_eq!(owner_verdict(Some(&o), 4, HOOK_EGRESS, true, 78, 6), OwnerVerdict::Claim);
    }
}
