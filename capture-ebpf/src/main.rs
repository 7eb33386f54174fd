//! TC classifiers that copy TCP payloads of watched server ports into a ring buffer.
//!
//! Ingress keeps segments whose destination port is watched (client -> server),
//! egress keeps segments whose source port is watched (server -> client). On `lo`
//! each segment passes egress and then ingress once, so this rule sees it exactly once.
//!
//! The programs never change a packet and always return `TC_ACT_UNSPEC` (`TCX_NEXT`),
//! so other classifiers on the same hook still run.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_ktime_get_ns, bpf_ringbuf_output, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use capture_common::{
    Counter, EventHeader, Scratch, CHUNK_SIZE, COUNTER_COUNT, DEFAULT_RING_BYTES, DIR_EGRESS,
    DIR_INGRESS, EVENT_HEADER_SIZE, EVENT_VERSION, FAMILY_IPV4, FAMILY_IPV6, MAX_CHUNKS,
    MAX_PORTS, TCP_FIN, TCP_RST, TCP_SYN,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Watched server ports (host byte order) -> unused flag byte.
#[map(name = "PORTS")]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Every hook we attach to carries an Ethernet header (lo and veth included).
const ETH_HLEN: u32 = 14;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// bpf_ringbuf_output/query flags (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Pending bytes that make the kernel wake the reader.
const WAKEUP_BYTES: u64 = 256 * 1024;
/// IPv6 extension headers walked before giving up (bounded for the verifier).
const MAX_EXT_HEADERS: u32 = 4;

#[classifier]
pub fn capture_ingress(ctx: TcContext) -> i32 {
    capture(&ctx, DIR_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn capture_egress(ctx: TcContext) -> i32 {
    capture(&ctx, DIR_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += n };
    }
}

/// Reads `N` bytes at `offset` of the packet (linear or not).
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, offset: u32) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let ret = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, offset, out.as_mut_ptr() as *mut _, N as u32)
    };
    if ret < 0 {
        None
    } else {
        Some(out)
    }
}

#[inline(always)]
fn capture(ctx: &TcContext, direction: u8) {
    let mut hdr = EventHeader {
        version: EVENT_VERSION,
        direction,
        ..EventHeader::default()
    };
    let skb_len = ctx.skb.len();
    // `__sk_buff.protocol` is the ethertype in network byte order.
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;

    // Offset of the TCP header and the payload length the IP header claims (0: unknown).
    let (l4, ip_payload_end) = if proto == ETH_P_IP {
        let Some(ip) = load::<20>(ctx, ETH_HLEN) else { return };
        if ip[9] != IPPROTO_TCP {
            return;
        }
        let ihl = ((ip[0] & 0x0f) as u32) * 4;
        let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as u32;
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        hdr.family = FAMILY_IPV4;
        hdr.saddr[..4].copy_from_slice(&ip[12..16]);
        hdr.daddr[..4].copy_from_slice(&ip[16..20]);
        // More-fragments flag or a fragment offset: we cannot see the TCP header reliably.
        if frag & 0x3fff != 0 {
            if watched(ctx, ETH_HLEN + ihl, direction) {
                count(Counter::Unsupported, 1);
            }
            return;
        }
        // tot_len is 0 for BIG TCP GSO packets: fall back to skb->len.
        let end = if tot_len == 0 { 0 } else { ETH_HLEN + tot_len };
        (ETH_HLEN + ihl, end)
    } else if proto == ETH_P_IPV6 {
        let Some(ip) = load::<40>(ctx, ETH_HLEN) else { return };
        let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as u32;
        hdr.family = FAMILY_IPV6;
        hdr.saddr.copy_from_slice(&ip[8..24]);
        hdr.daddr.copy_from_slice(&ip[24..40]);
        // Walk extension headers: big skbs on lo carry a Hop-by-Hop jumbo header
        // (payload_len 0) before TCP. See include/net/ipv6.h, ipv6_has_hopopt_jumbo().
        let mut next = ip[6];
        let mut off = ETH_HLEN + 40;
        let mut hops = 0;
        while next != IPPROTO_TCP && hops < MAX_EXT_HEADERS {
            if next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST {
                break;
            }
            let Some(ext) = load::<2>(ctx, off) else { return };
            next = ext[0];
            off += (ext[1] as u32 + 1) * 8;
            hops += 1;
        }
        if next != IPPROTO_TCP {
            // Fragments, AH/ESP or a chain too long to walk: count it if it could be ours.
            if next == NEXTHDR_FRAGMENT && watched(ctx, off + 8, direction) {
                count(Counter::Unsupported, 1);
            }
            return;
        }
        let end = if payload_len == 0 { 0 } else { ETH_HLEN + 40 + payload_len };
        (off, end)
    } else {
        return;
    };

    let Some(tcp) = load::<20>(ctx, l4) else { return };
    hdr.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    hdr.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let port = if direction == DIR_INGRESS { hdr.dport } else { hdr.sport };
    if unsafe { PORTS.get(&port) }.is_none() {
        return;
    }
    hdr.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    hdr.tcp_flags = tcp[13];
    let payload_off = l4 + ((tcp[12] >> 4) as u32) * 4;
    // Ingress skbs from real NICs may still carry Ethernet padding here; the IP
    // length (when set) is the truth.
    let mut end = skb_len;
    if ip_payload_end != 0 && ip_payload_end < end {
        end = ip_payload_end;
    }
    let payload_len = end.saturating_sub(payload_off);
    if payload_len == 0 && hdr.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return; // pure ACK
    }
    hdr.payload_len = payload_len;
    hdr.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    count(Counter::SegmentsSeen, 1);
    count(Counter::BytesSeen, payload_len as u64);

    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
    let scratch = scratch as *mut u8;
    let limit = MAX_CHUNKS * CHUNK_SIZE as u32;
    if payload_len > limit {
        count(Counter::Truncated, 1);
        count(Counter::TruncatedBytes, (payload_len - limit) as u64);
    }

    let mut i: u32 = 0;
    while i < MAX_CHUNKS {
        let offset = i * CHUNK_SIZE as u32;
        // A segment without payload still emits one event (SYN/FIN/RST).
        if offset >= payload_len && !(i == 0 && payload_len == 0) {
            break;
        }
        let remaining = payload_len - offset;
        let want = if remaining > CHUNK_SIZE as u32 { CHUNK_SIZE as u32 } else { remaining };
        hdr.chunk_offset = offset;
        hdr.chunk_len = want as u16;
        unsafe { core::ptr::write(scratch as *mut EventHeader, hdr) };
        let mut size = EVENT_HEADER_SIZE as u64;
        if want > 0 {
            // Keeps the length provably in [1, CHUNK_SIZE] for the verifier.
            let n = ((want - 1) & (CHUNK_SIZE as u32 - 1)) + 1;
            let ret = unsafe {
                bpf_skb_load_bytes(
                    ctx.skb.skb as *const _,
                    payload_off + offset,
                    scratch.add(EVENT_HEADER_SIZE) as *mut _,
                    n,
                )
            };
            if ret < 0 {
                count(Counter::CopyErrors, 1);
                i += 1;
                continue;
            }
            size += n as u64;
        }
        // Wake the reader only when a good batch is waiting; it also polls on a short
        // timer. One wakeup per event costs a context switch each (kernel/bpf/ringbuf.c).
        let wakeup = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
        let ret = unsafe {
            bpf_ringbuf_output(
                &EVENTS as *const _ as *mut _,
                scratch as *mut _,
                size,
                wakeup,
            )
        };
        if ret < 0 {
            count(Counter::RingFull, 1);
            count(Counter::RingFullBytes, want as u64);
        } else {
            count(Counter::EventsEmitted, 1);
            count(Counter::BytesEmitted, want as u64);
        }
        i += 1;
    }
}

/// Whether a fragment's first bytes name a watched port (best effort, for counting).
#[inline(always)]
fn watched(ctx: &TcContext, l4: u32, direction: u8) -> bool {
    let Some(tcp) = load::<4>(ctx, l4) else { return false };
    let port = if direction == DIR_INGRESS {
        u16::from_be_bytes([tcp[2], tcp[3]])
    } else {
        u16::from_be_bytes([tcp[0], tcp[1]])
    };
    unsafe { PORTS.get(&port) }.is_some()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
