//! TC classifiers that copy TCP payloads of watched server ports into a ring buffer.
//!
//! Both hooks keep segments whose destination port is watched (client -> server) or
//! whose source port is watched (server -> client), so any interface works whichever
//! way it faces: a NIC, the host-side end of a pod's veth, `lo`. A segment that
//! crosses several watched hooks (`lo`: egress then ingress; pod A -> pod B: two veths)
//! is emitted once, by the hook that owns its flow direction (`OWNERS`, rule in
//! `capture_common::owner_verdict`); the others count it as a duplicate.
//!
//! What need not be copied is not: connections left out by `--sample` (a keyed hash of
//! the connection's canonical 4-tuple, so every hook and both directions agree; the
//! rule is `capture_common::is_sampled`), and payload ranges userspace registered in
//! `FLOW_SKIPS` (bodies of exchanges it does not keep; rule `capture_common::copy_window`).
//!
//! The programs never change a packet and always return `TC_ACT_UNSPEC` (`TCX_NEXT`),
//! so other classifiers on the same hook still run.
#![no_std]
#![no_main]

mod tls;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_ringbuf_output, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
    Global,
};
use capture_common::{
    connection_hash, copy_window, direction_of, is_sampled, new_owner, owner_verdict, Counter,
    EventHeader, FlowOwner, FlowTuple, IfaceCounters, OwnerVerdict, Scratch,
    SkipRange, CHUNK_SIZE, COUNTER_COUNT, DEFAULT_OWNER_ENTRIES, DEFAULT_RING_BYTES,
    DEFAULT_SKIP_ENTRIES, DIR_CLIENT_TO_SERVER, EVENT_HEADER_SIZE, EVENT_VERSION, FAMILY_IPV4,
    FAMILY_IPV6, HOOK_EGRESS, HOOK_INGRESS, MAX_CHUNKS, MAX_INTERFACES, PORT_SLOTS, SAMPLE_ALL,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// `--sample` (`capture_common::SampleConfig`): set by the loader (`override_global`);
/// the default keeps everything.
#[unsafe(no_mangle)]
static SAMPLE_K0: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static SAMPLE_K1: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static SAMPLE_THRESHOLD: Global<u64> = Global::new(SAMPLE_ALL);

/// Flow direction (the packet's 4-tuple) -> sequence range whose payload is not copied.
/// Written by userspace only; a SYN on the 4-tuple drops the entry (a new connection).
#[map(name = "FLOW_SKIPS")]
static FLOW_SKIPS: LruHashMap<FlowTuple, SkipRange> = LruHashMap::with_max_entries(DEFAULT_SKIP_ENTRIES, 0);

/// Entry 0 non-zero once userspace has written any skip range: until then (no filter,
/// no oversized body) the two `FLOW_SKIPS` lookups per segment (40-byte hashes) are
/// skipped. Userspace sets it before its first insert and never clears it.
#[map(name = "SKIPS_ACTIVE")]
static SKIPS_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Indexed by port (host byte order): non-zero when the port is watched. An array
/// rather than a hash: the verifier inlines array lookups, and every run of the
/// classifiers looks up two ports (a hash lookup each cost ~40 ns here).
#[map(name = "PORTS")]
pub(crate) static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

/// Set by the loader when TLS libraries are probed (`--tls-lib`): without them no
/// flow is ever in `TLS_FLOWS` and its lookup (a hash of 40 bytes) is skipped.
#[unsafe(no_mangle)]
static TLS_ENABLED: Global<u8> = Global::new(0);

/// Set by the loader when the ring is at least `DIRECT_MIN_RING_BYTES`: a record of a
/// whole scratch slot would not fit (or would crowd out everything else) in a tiny ring.
#[unsafe(no_mangle)]
static DIRECT_ENABLED: Global<u8> = Global::new(0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Entry 0 non-zero once a second interface is attached: until then no flow direction
/// can pass two hooks (`lo` is hooked on egress only), so the `OWNERS` lookup (an LRU
/// hash of 40 bytes, ~1/4 of a run) is skipped. Userspace sets it before attaching the
/// second interface and never clears it.
#[map(name = "OWNERS_ACTIVE")]
static OWNERS_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Flow direction (the packet's 4-tuple) -> the hook that emits its segments.
/// LRU: an evicted live flow is claimed again by the next hook that sees it.
#[map(name = "OWNERS")]
static OWNERS: LruHashMap<FlowTuple, FlowOwner> = LruHashMap::with_max_entries(DEFAULT_OWNER_ENTRIES, 0);

/// ifindex -> counters of that interface's two hooks. Userspace deletes the entry of
/// an interface it forgets.
#[map(name = "IFACE_COUNTERS")]
static IFACE_COUNTERS: PerCpuHashMap<u32, IfaceCounters> = PerCpuHashMap::with_max_entries(MAX_INTERFACES, 0);

/// One slot per possible CPU (userspace sets the size at load time), indexed by the
/// CPU the program runs on: a slot is larger than a per-CPU map value may be.
#[map(name = "SCRATCH")]
static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

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
    capture(&ctx, HOOK_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn capture_egress(ctx: TcContext) -> i32 {
    capture(&ctx, HOOK_EGRESS);
    TC_ACT_UNSPEC
}

/// This interface's counters (created on its first watched segment), if the map has room.
#[inline(always)]
fn iface_counters(ifindex: u32) -> Option<*mut IfaceCounters> {
    if let Some(p) = IFACE_COUNTERS.get_ptr_mut(&ifindex) {
        return Some(p);
    }
    // Fails harmlessly if another CPU created it first.
    let _ = IFACE_COUNTERS.insert(&ifindex, &IfaceCounters::default(), BPF_NOEXIST as u64);
    IFACE_COUNTERS.get_ptr_mut(&ifindex)
}

/// Whether `--sample` keeps the connection (canonical 4-tuple: client side, server side).
#[inline(always)]
pub(crate) fn sampled(client: &[u8; 16], server: &[u8; 16], cport: u16, sport: u16, family: u8) -> bool {
    let threshold = SAMPLE_THRESHOLD.load();
    threshold >= SAMPLE_ALL
        || is_sampled(threshold, connection_hash(SAMPLE_K0.load(), SAMPLE_K1.load(), client, server, cport, sport, family))
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
    // Not zeroed first: the helper fills all N bytes or fails (a zeroed buffer costs a
    // byte-by-byte memset call per load, twice per run).
    let mut out = core::mem::MaybeUninit::<[u8; N]>::uninit();
    let ret = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, offset, out.as_mut_ptr() as *mut _, N as u32)
    };
    if ret < 0 {
        None
    } else {
        Some(unsafe { out.assume_init() })
    }
}

#[inline(always)]
fn capture(ctx: &TcContext, hook: u8) {
    let mut hdr = EventHeader {
        version: EVENT_VERSION,
        hook,
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
            if watched(ctx, ETH_HLEN + ihl) {
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
            if next == NEXTHDR_FRAGMENT && watched(ctx, off + 8) {
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
    let dport_watched = port_watched(hdr.dport);
    let sport_watched = port_watched(hdr.sport);
    let Some(direction) = direction_of(dport_watched, sport_watched) else { return };
    hdr.direction = direction;
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
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    hdr.ifindex = ifindex;
    let now = unsafe { bpf_ktime_get_ns() };
    hdr.ts_ns = now;
    count(Counter::SegmentsSeen, 1);
    count(Counter::BytesSeen, payload_len as u64);
    let iface = iface_counters(ifindex);
    if let Some(c) = iface {
        // Per-CPU value: no other writer while this program runs on this CPU.
        unsafe {
            (*c).segments_seen += 1;
            (*c).bytes_seen += payload_len as u64;
        }
    }

    // Sampling: unsampled connections stop here, on every hook and in both directions.
    let to_server = direction == DIR_CLIENT_TO_SERVER;
    let (client, server) = if to_server { (&hdr.saddr, &hdr.daddr) } else { (&hdr.daddr, &hdr.saddr) };
    let (cport, sport) = if to_server { (hdr.sport, hdr.dport) } else { (hdr.dport, hdr.sport) };
    if !sampled(client, server, cport, sport, hdr.family) {
        if to_server && hdr.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            count(Counter::SampledOutConnections, 1);
        }
        count(Counter::SampledOutSegments, 1);
        count(Counter::SampledOutBytes, payload_len as u64);
        return;
    }

    // Emit only at the hook that owns this flow direction.
    let tuple = FlowTuple {
        saddr: hdr.saddr,
        daddr: hdr.daddr,
        sport: hdr.sport,
        dport: hdr.dport,
        family: hdr.family,
        _pad: [0; 3],
    };
    let syn = hdr.tcp_flags & TCP_SYN != 0;
    // No Option<FlowOwner> copies here: LLVM may spill an uninitialised payload, which
    // the verifier rejects (`!read_ok`).
    let owners_active = OWNERS_ACTIVE.get(0).is_some_and(|v| *v != 0);
    match if owners_active { OWNERS.get_ptr_mut(&tuple) } else { None } {
        // A full LRU evicts its least recently used entry; any other failure leaves
        // the flow unowned and the next hook claims it (a repeat that reassembly
        // drops), never a loss.
        None => {
            if owners_active {
                let _ = OWNERS.insert(&tuple, &new_owner(ifindex, hook, syn, hdr.seq, now), 0);
            }
        }
        Some(p) => {
            let owner = unsafe { &mut *p };
            match owner_verdict(Some(owner), ifindex, hook, syn, hdr.seq, now) {
                OwnerVerdict::Owner => owner.last_ns = now,
                OwnerVerdict::Claim => {
                    if owner.ifindex != ifindex || owner.hook != hook {
                        count(Counter::OwnerChanges, 1);
                    }
                    *owner = new_owner(ifindex, hook, syn, hdr.seq, now);
                }
                OwnerVerdict::Duplicate => {
                    count(Counter::DuplicateSegments, 1);
                    count(Counter::DuplicateBytes, payload_len as u64);
                    if let Some(c) = iface {
                        unsafe {
                            (*c).segments_duplicate += 1;
                            (*c).bytes_duplicate += payload_len as u64;
                        }
                    }
                    return;
                }
            }
        }
    }

    // A connection whose plaintext the TLS uprobes capture: its ciphertext is not
    // emitted (a SYN starts a new connection on the tuple, not known to be TLS yet).
    if TLS_ENABLED.load() != 0 {
        if syn {
            let _ = tls::TLS_FLOWS.remove(&tuple);
        } else if unsafe { tls::TLS_FLOWS.get(&tuple) }.is_some() {
            tls::count_ciphertext(payload_len as u64);
            return;
        }
        if hdr.direction == DIR_CLIENT_TO_SERVER {
            tls::note_seen(&tuple);
        }
    }

    // Payload userspace will not keep: copy only the window outside its skip range.
    let skips_active = SKIPS_ACTIVE.get(0).is_some_and(|v| *v != 0);
    if syn && skips_active {
        let _ = FLOW_SKIPS.remove(&tuple);
    }
    let (copy_lo, copy_hi) = if payload_len == 0 {
        (0, 0)
    } else if !skips_active {
        (0, payload_len)
    } else {
        copy_window(hdr.seq, payload_len, hdr.tcp_flags, unsafe { FLOW_SKIPS.get(&tuple) })
    };
    let skipped = payload_len - (copy_hi - copy_lo);
    if skipped > 0 {
        count(Counter::SkippedSegments, 1);
        count(Counter::SkippedBytes, skipped as u64);
        if copy_lo == copy_hi {
            return;
        }
    }

    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        // Only if the map was sized below the possible CPUs: counted, never silent.
        count(Counter::CopyErrors, 1);
        return;
    };
    let scratch = scratch as *mut u8;
    let limit = MAX_CHUNKS * CHUNK_SIZE as u32;
    if copy_hi - copy_lo > limit {
        count(Counter::Truncated, 1);
        count(Counter::TruncatedBytes, (copy_hi - copy_lo - limit) as u64);
    }

    // The header goes into the scratch buffer once; each chunk only rewrites its two
    // fields (a whole-header copy per chunk multiplies the verifier's work).
    unsafe { core::ptr::write(scratch as *mut EventHeader, hdr) };
    let event = scratch as *mut EventHeader;
    let (mut emitted_events, mut emitted_bytes) = (0u64, 0u64);
    let mut i: u32 = 0;
    while i < MAX_CHUNKS {
        let offset = copy_lo + i * CHUNK_SIZE as u32;
        // A segment without payload still emits one event (SYN/FIN/RST).
        if offset >= copy_hi && !(i == 0 && payload_len == 0) {
            break;
        }
        let remaining = copy_hi - offset;
        let want = if remaining > CHUNK_SIZE as u32 { CHUNK_SIZE as u32 } else { remaining };
        // Read back from map memory: the verifier does not track its contents, so the
        // copy length's precision stops here instead of reaching back through every
        // branch that shaped `want` (each distinct range would be walked separately).
        let want = unsafe {
            (*event).chunk_offset = offset;
            (*event).chunk_len = want;
            core::ptr::read_volatile(&(*event).chunk_len)
        };
        if want >= DIRECT_MIN && DIRECT_ENABLED.load() != 0 {
            // Large chunk: straight from the packet into a ring record of a whole slot
            // (one copy instead of two: skb -> scratch -> ring).
            let n = ((want - 1) & (CHUNK_SIZE as u32 - 1)) + 1;
            let Some(mut entry) = EVENTS.reserve::<Scratch>(0) else {
                count(Counter::RingFull, 1);
                count(Counter::RingFullBytes, want as u64);
                i += 1;
                continue;
            };
            let dst = entry.as_mut_ptr() as *mut u8;
            let ret = unsafe {
                core::ptr::write(dst as *mut EventHeader, core::ptr::read(event));
                bpf_skb_load_bytes(ctx.skb.skb as *const _, payload_off + offset, dst.add(EVENT_HEADER_SIZE) as *mut _, n)
            };
            if ret < 0 {
                entry.discard(BPF_RB_NO_WAKEUP);
                count(Counter::CopyErrors, 1);
            } else {
                entry.submit(wakeup_flag());
                count(Counter::EventsEmitted, 1);
                count(Counter::BytesEmitted, want as u64);
                emitted_events += 1;
                emitted_bytes += want as u64;
            }
            i += 1;
            continue;
        }
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
        let ret = unsafe {
            bpf_ringbuf_output(
                &EVENTS as *const _ as *mut _,
                scratch as *mut _,
                size,
                wakeup_flag_for(size),
            )
        };
        if ret < 0 {
            count(Counter::RingFull, 1);
            count(Counter::RingFullBytes, want as u64);
        } else {
            count(Counter::EventsEmitted, 1);
            count(Counter::BytesEmitted, want as u64);
            emitted_events += 1;
            emitted_bytes += want as u64;
        }
        i += 1;
    }
    if let Some(c) = iface {
        unsafe {
            (*c).events_emitted += emitted_events;
            (*c).bytes_emitted += emitted_bytes;
        }
    }
}

/// Wake the reader only when a good batch is waiting; it also polls on a short timer.
/// One wakeup per event costs a context switch each (kernel/bpf/ringbuf.c).
#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }
}

/// Small events this CPU emits between two fill checks: the check reads the ring's
/// positions, cache lines the reader and the other CPUs write (~90 ns of a ~600 ns
/// run at 100 B responses). The reader also polls every few ms, so a later wakeup
/// costs nothing but a few KiB of fill.
const WAKEUP_CHECK_EVERY: u64 = 16;
/// Chunks at least this large are loaded straight into a ring record of a whole
/// scratch slot: saves a copy of the chunk, wastes less than half of the record.
const DIRECT_MIN: u32 = (CHUNK_SIZE / 2) as u32;
/// Events at least this large always check (a 64 KiB chunk fills the ring fast).
const WAKEUP_CHECK_BYTES: u64 = 4096;

#[inline(always)]
fn wakeup_flag_for(size: u64) -> u64 {
    if size < WAKEUP_CHECK_BYTES {
        let emitted = COUNTERS.get_ptr_mut(Counter::EventsEmitted as u32).map_or(0, |p| unsafe { *p });
        if emitted % WAKEUP_CHECK_EVERY != 0 {
            return BPF_RB_NO_WAKEUP;
        }
    }
    wakeup_flag()
}

/// Whether a fragment's first bytes name a watched port (best effort, for counting).
#[inline(always)]
fn watched(ctx: &TcContext, l4: u32) -> bool {
    let Some(tcp) = load::<4>(ctx, l4) else { return false };
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    port_watched(dport) || port_watched(sport)
}

/// Whether `port` (host byte order) is watched.
#[inline(always)]
pub(crate) fn port_watched(port: u16) -> bool {
    PORTS.get(port as u32).is_some_and(|w| *w != 0)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
