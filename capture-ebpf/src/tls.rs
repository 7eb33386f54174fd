//! TLS plaintext from OpenSSL: uprobes on `SSL_read`, `SSL_write`, `SSL_read_ex`,
//! `SSL_write_ex` (entry and return) and `SSL_free`, plus a raw tracepoint on syscall
//! entry. Plaintext goes into the same ring buffer as the classifiers' segments,
//! marked [`HOOK_TLS`].
//!
//! How plaintext is tied to its TCP connection: while a thread is inside an SSL call,
//! OpenSSL moves the ciphertext on that same thread (through its socket BIO, or the
//! application's own BIO), so the first read/write-family syscall the thread makes
//! during the call names the socket's fd. At the call's return the fd is followed from
//! the current task (task -> files -> fdtable -> file -> socket -> sock) and the
//! 4-tuple read, all at offsets userspace takes from the kernel's BTF. We chose this
//! over reading the fd out of the SSL object because it needs no OpenSSL struct offsets
//! (they differ between versions and builds) and also works with BIOs other than
//! OpenSSL's socket BIO. A call served from OpenSSL's own buffer makes no syscall: it
//! uses the SSL object's mapping from an earlier call (every connection's first call
//! moves ciphertext). A call on an SSL object never seen on a socket is counted as
//! unmapped. A raw tracepoint rather than kprobes or fentry on tcp_sendmsg/tcp_recvmsg:
//! this project's machines have no CONFIG_KPROBES and refuse fentry programs (EPERM),
//! while raw tracepoints load. Syscall numbers and the argument register are x86-64's.
//!
//! Only the server side is captured: the process whose socket's local port is watched.
//! The client side of a watched port is counted and skipped, so a client and a server
//! on one host (both using the probed library) do not record every byte twice.
//!
//! Only connections the classifiers kept a segment of are captured (`TLS_SEEN`): the
//! same interfaces and the same `--sample` verdict as cleartext. Once a connection is
//! mapped, its two packet 4-tuples go into `TLS_FLOWS`; the classifiers then drop its
//! ciphertext early (counted) instead of emitting it.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user},
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_ringbuf_output},
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
    EbpfContext,
};
use capture_common::{
    EventHeader, FlowTuple, TlsScratch, TlsOffsets, TlsCounter, TLS_CHUNK_SIZE, DIR_CLIENT_TO_SERVER,
    DIR_SERVER_TO_CLIENT, EVENT_HEADER_SIZE, EVENT_VERSION, FAMILY_IPV4, FAMILY_IPV6, HOOK_TLS, TCP_ACK,
    TCP_FIN, TCP_SYN, TLS_COUNTER_COUNT, TLS_MAX_CALLS, TLS_MAX_CHUNKS, TLS_MAX_CONNS,
};

use crate::{port_watched, wakeup_flag, EVENTS};

#[map(name = "TLS_COUNTERS")]
static TLS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TLS_COUNTER_COUNT, 0);

/// Kernel field offsets, written by userspace from the kernel's BTF before attaching.
#[map(name = "TLS_CONFIG")]
static TLS_CONFIG: Array<TlsOffsets> = Array::with_max_entries(1, 0);

/// Packet 4-tuples (both directions) of connections whose plaintext the uprobes
/// capture: the classifiers drop their ciphertext. A SYN on a tuple removes it (a new
/// connection on a reused 4-tuple is not known to be TLS yet).
#[map(name = "TLS_FLOWS")]
pub static TLS_FLOWS: LruHashMap<FlowTuple, u8> = LruHashMap::with_max_entries(2 * TLS_MAX_CONNS, 0);

/// Client -> server packet 4-tuples of the connections a classifier kept a segment of
/// (sampled in, on a watched interface). The uprobes capture only these: a server on a
/// watched port whose traffic crosses no watched interface (in another network
/// namespace) is not the agent's, and `--sample` decided nothing about it.
#[map(name = "TLS_SEEN")]
static TLS_SEEN: LruHashMap<FlowTuple, u8> = LruHashMap::with_max_entries(TLS_MAX_CONNS, 0);

/// Per-CPU work space of `map_socket` (two slots).
#[map(name = "TLS_WORK")]
static TLS_WORK: PerCpuArray<TlsConn> = PerCpuArray::with_max_entries(2, 0);

/// Thread (pid_tgid) inside an SSL call -> that call.
#[map(name = "TLS_CALLS")]
static TLS_CALLS: HashMap<u64, SslCall> = HashMap::with_max_entries(TLS_MAX_CALLS, 0);

/// SSL object of a process -> the connection it was last seen on.
#[map(name = "TLS_CONNS")]
static TLS_CONNS: LruHashMap<SslKey, TlsConn> = LruHashMap::with_max_entries(TLS_MAX_CONNS, 0);

/// Separate from the classifiers' scratch: a softirq running a classifier can
/// interrupt a uprobe on the same CPU.
#[map(name = "TLS_SCRATCH")]
static TLS_SCRATCH: PerCpuArray<TlsScratch> = PerCpuArray::with_max_entries(1, 0);

const KIND_READ: u8 = 0;
const KIND_WRITE: u8 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Roles of a mapped SSL object, from which of its socket's ports is watched.
const ROLE_SERVER: u8 = 1;
const ROLE_CLIENT: u8 = 2;
const ROLE_UNWATCHED: u8 = 3;
/// A server-side connection `--sample` leaves out (the classifiers leave out its
/// ciphertext by the same hash).
const ROLE_SAMPLED_OUT: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct SslCall {
    ssl: u64,
    buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the library stores the byte count (0 otherwise).
    len_ptr: u64,
    /// 1 + the fd of the first read/write-family syscall during the call (0: none yet).
    fd1: u64,
    kind: u8,
    _pad: [u8; 7],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SslKey {
    ssl: u64,
    tgid: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TlsConn {
    /// The client -> server packet 4-tuple (server-side sockets: remote -> local).
    c2s: FlowTuple,
    /// Plaintext bytes seen so far per direction (index: DIR_*).
    off: [u64; 2],
    /// Synthetic sequence number of the SYN; data starts at `isn + 1`.
    isn: u32,
    role: u8,
    _pad: [u8; 3],
}

#[inline(always)]
fn count(counter: TlsCounter, n: u64) {
    if let Some(slot) = TLS_COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += n };
    }
}

/// Notes a client -> server segment a classifier kept (see `TLS_SEEN`). Not inlined:
/// the classifiers' stack has no room for more.
#[inline(never)]
pub fn note_seen(c2s: &FlowTuple) {
    if unsafe { TLS_SEEN.get(c2s) }.is_none() {
        // A full LRU evicts its least recently used entry.
        let _ = TLS_SEEN.insert(c2s, &1, 0);
    }
}

/// Counts a ciphertext segment the classifiers dropped (see `TLS_FLOWS`).
#[inline(always)]
pub fn count_ciphertext(bytes: u64) {
    count(TlsCounter::CiphertextSegments, 1);
    count(TlsCounter::CiphertextBytes, bytes);
}

#[inline(always)]
fn enter(ctx: &ProbeContext, kind: u8, ex: bool) {
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return };
    let len_ptr = if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    let call = SslCall { ssl, buf, len_ptr, fd1: 0, kind, _pad: [0; 7] };
    // A full map loses this call; its return probe counts it as unmatched.
    let _ = TLS_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_READ, false);
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_WRITE, false);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_READ, true);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_WRITE, true);
    0
}

/// x86-64 syscalls that move data on an fd: read, write, pread64, pwrite64, readv,
/// writev, sendto, recvfrom, sendmsg, recvmsg, preadv, pwritev, recvmmsg, sendmmsg.
#[inline(always)]
fn is_io_syscall(nr: u64) -> bool {
    matches!(nr, 0 | 1 | 17 | 18 | 19 | 20 | 44 | 45 | 46 | 47 | 295 | 296 | 299 | 307)
}

/// Remembers the fd of the first I/O syscall a thread makes inside an SSL call.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn tls_sys_enter(ctx: RawTracePointContext) -> i32 {
    // Raw tracepoint arguments: (struct pt_regs *regs, long syscall_nr).
    let args = ctx.as_ptr() as *const u64;
    let nr = unsafe { *args.add(1) };
    if !is_io_syscall(nr) {
        return 0;
    }
    let Some(call) = TLS_CALLS.get_ptr_mut(&bpf_get_current_pid_tgid()) else { return 0 };
    if unsafe { (*call).fd1 } != 0 {
        return 0;
    }
    let Some(cfg) = TLS_CONFIG.get(0) else { return 0 };
    let regs = unsafe { *args };
    let mut fd: u64 = 0;
    read_kernel(&mut fd as *mut u64 as *mut u8, 8, regs + cfg.regs_arg0 as u64);
    unsafe { (*call).fd1 = (fd as u32 as u64) + 1 };
    0
}

/// Reads a kernel pointer at `addr` (0 if unreadable).
#[inline(always)]
fn read_ptr(addr: u64) -> u64 {
    let mut v: u64 = 0;
    read_kernel(&mut v as *mut u64 as *mut u8, 8, addr);
    v
}

/// The `struct sock *` behind fd `fd` of the current task, or 0.
#[inline(always)]
fn fd_to_sock(fd: u64) -> u64 {
    let Some(cfg) = TLS_CONFIG.get(0) else { return 0 };
    let task = unsafe { bpf_get_current_task() };
    let files = read_ptr(task + cfg.task_files as u64);
    if files == 0 {
        return 0;
    }
    let fdt = read_ptr(files + cfg.files_fdt as u64);
    if fdt == 0 {
        return 0;
    }
    let mut max_fds: u32 = 0;
    read_kernel(&mut max_fds as *mut u32 as *mut u8, 4, fdt + cfg.fdt_max_fds as u64);
    if fd >= max_fds as u64 {
        return 0;
    }
    let fds = read_ptr(fdt + cfg.fdt_fd as u64);
    let file = if fds == 0 { 0 } else { read_ptr(fds + fd * 8) };
    // Not checked to be a socket: a non-socket's private data fails the family check.
    let socket = if file == 0 { 0 } else { read_ptr(file + cfg.file_private_data as u64) };
    if socket == 0 {
        return 0;
    }
    read_ptr(socket + cfg.socket_sk as u64)
}

/// Copies `size` kernel bytes at `addr` to `dst` (zeroes on failure).
#[inline(always)]
fn read_kernel(dst: *mut u8, size: u32, addr: u64) {
    if unsafe { bpf_probe_read_kernel(dst as *mut c_void, size, addr as *const c_void) } < 0 {
        unsafe { core::ptr::write_bytes(dst, 0, size as usize) };
    }
}

/// Writes the socket's client -> server tuple and our role on it into `conn` (a
/// per-CPU slot: tuples on the stack overflow it). False if the socket is unreadable.
#[inline(always)]
fn socket_tuple(sk: u64, conn: &mut TlsConn) -> bool {
    let Some(cfg) = TLS_CONFIG.get(0) else { return false };
    if cfg.valid == 0 {
        return false;
    }
    let (mut family, mut local_port, mut remote_port) = (0u16, 0u16, 0u16);
    read_kernel(&mut family as *mut u16 as *mut u8, 2, sk + cfg.family as u64);
    read_kernel(&mut local_port as *mut u16 as *mut u8, 2, sk + cfg.num as u64);
    read_kernel(&mut remote_port as *mut u16 as *mut u8, 2, sk + cfg.dport as u64);
    let remote_port = u16::from_be(remote_port);
    let local_watched = port_watched(local_port);
    let remote_watched = port_watched(remote_port);
    // The classifiers' rule: a watched destination port is the server's.
    let t = &mut conn.c2s;
    let (local, remote): (*mut [u8; 16], *mut [u8; 16]) = if local_watched {
        conn.role = ROLE_SERVER;
        (t.sport, t.dport) = (remote_port, local_port);
        (&mut t.daddr, &mut t.saddr)
    } else if remote_watched {
        conn.role = ROLE_CLIENT;
        (t.sport, t.dport) = (local_port, remote_port);
        (&mut t.saddr, &mut t.daddr)
    } else {
        conn.role = ROLE_UNWATCHED;
        *t = FlowTuple::default();
        return true;
    };
    t._pad = [0; 3];
    let (local, remote) = unsafe { (&mut *local, &mut *remote) };
    *local = [0; 16];
    *remote = [0; 16];
    if family == AF_INET6 {
        read_kernel(local.as_mut_ptr(), 16, sk + cfg.v6_rcv_saddr as u64);
        read_kernel(remote.as_mut_ptr(), 16, sk + cfg.v6_daddr as u64);
        if !is_v4_mapped(remote) {
            t.family = FAMILY_IPV6;
            return true;
        }
        // A dual-stack socket talking IPv4 (::ffff:a.b.c.d): the packets are IPv4,
        // and so must the tuple be for the classifiers to match it.
        *local = [0; 16];
        *remote = [0; 16];
    } else if family != AF_INET {
        return false;
    }
    read_kernel(local.as_mut_ptr(), 4, sk + cfg.rcv_saddr as u64);
    read_kernel(remote.as_mut_ptr(), 4, sk + cfg.daddr as u64);
    t.family = FAMILY_IPV4;
    true
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// Writes the header of a plaintext event of `conn` in direction `dir` (packet
/// orientation) into `dst`, field by field (whole-struct temporaries overflow the
/// 512-byte BPF stack).
#[inline(always)]
fn write_header(dst: *mut EventHeader, conn: &TlsConn, dir: u8, flags: u8, len: u64, now: u64) {
    let off = conn.off[(dir & 1) as usize];
    let seq = if flags & TCP_SYN != 0 { conn.isn } else { conn.isn.wrapping_add(1).wrapping_add(off as u32) };
    let t = &conn.c2s;
    let h = unsafe { &mut *dst };
    if dir == DIR_CLIENT_TO_SERVER {
        (h.saddr, h.daddr, h.sport, h.dport) = (t.saddr, t.daddr, t.sport, t.dport);
    } else {
        (h.saddr, h.daddr, h.sport, h.dport) = (t.daddr, t.saddr, t.dport, t.sport);
    }
    h.ts_ns = now;
    h.seq = seq;
    h.payload_len = len as u32;
    h.chunk_offset = 0;
    h.ifindex = 0;
    h.chunk_len = 0;
    h.family = t.family;
    h.direction = dir;
    h.tcp_flags = flags;
    h.version = EVENT_VERSION;
    h.hook = HOOK_TLS;
    h._pad = [0; 3];
}

/// Emits one event without payload (connection start or end).
#[inline(always)]
fn emit_flags(conn: &TlsConn, dir: u8, flags: u8, now: u64) {
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(0) else { return };
    write_header(scratch as *mut EventHeader, conn, dir, flags, 0, now);
    let ret = unsafe {
        bpf_ringbuf_output(&EVENTS as *const _ as *mut _, scratch as *mut c_void, EVENT_HEADER_SIZE as u64, wakeup_flag())
    };
    if ret < 0 {
        count(TlsCounter::RingFull, 1);
    } else {
        count(TlsCounter::EventsEmitted, 1);
    }
}

/// The connection of SSL object `key` on socket `sk`: the cached one if the socket is
/// the same, else a new one (its start emitted, its tuples handed to the classifiers).
#[inline(never)]
fn map_socket(key: &SslKey, sk: u64, now: u64) -> Option<*mut TlsConn> {
    // Slot 0: the connection being mapped; slot 1: its reversed tuple.
    let new = unsafe { &mut *TLS_WORK.get_ptr_mut(0)? };
    let rev = unsafe { &mut *TLS_WORK.get_ptr_mut(1)? };
    if !socket_tuple(sk, new) {
        return None;
    }
    if new.role == ROLE_SERVER {
        let t = &new.c2s;
        if !crate::sampled(&t.saddr, &t.daddr, t.sport, t.dport, t.family) {
            new.role = ROLE_SAMPLED_OUT;
        } else if unsafe { TLS_SEEN.get(t) }.is_none() && unsafe { TLS_FLOWS.get(t) }.is_none() {
            // No watched interface carries it (see `TLS_SEEN`; a captured connection's
            // classifiers stop noting it, but refresh its `TLS_FLOWS` entry instead).
            new.role = ROLE_UNWATCHED;
        }
    }
    if let Some(conn) = TLS_CONNS.get_ptr_mut(key) {
        let c = unsafe { &*conn };
        if c.role == new.role && c.c2s == new.c2s {
            return Some(conn);
        }
        // The SSL object moved to another socket (SSL_clear, or a reused address):
        // the old connection ended.
        if c.role == ROLE_SERVER {
            close(c, now);
        }
    }
    new.off = [0, 0];
    new.isn = now as u32;
    if new.role == ROLE_SERVER {
        count(TlsCounter::Connections, 1);
        let t = &new.c2s;
        let r = &mut rev.c2s;
        (r.saddr, r.daddr, r.sport, r.dport, r.family, r._pad) = (t.daddr, t.saddr, t.dport, t.sport, t.family, [0; 3]);
        let _ = TLS_FLOWS.insert(&new.c2s, &1, 0);
        let _ = TLS_FLOWS.insert(&rev.c2s, &1, 0);
        emit_flags(new, DIR_CLIENT_TO_SERVER, TCP_SYN, now);
        emit_flags(new, DIR_SERVER_TO_CLIENT, TCP_SYN | TCP_ACK, now);
    }
    TLS_CONNS.insert(key, new, 0).ok()?;
    TLS_CONNS.get_ptr_mut(key)
}

/// Emits the end of both directions (after the last plaintext byte of each).
#[inline(always)]
fn close(conn: &TlsConn, now: u64) {
    count(TlsCounter::ConnectionsClosed, 1);
    emit_flags(conn, DIR_CLIENT_TO_SERVER, TCP_FIN | TCP_ACK, now);
    emit_flags(conn, DIR_SERVER_TO_CLIENT, TCP_FIN | TCP_ACK, now);
}

#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        count(TlsCounter::CallsUnmatched, 1);
        return 0;
    };
    let _ = TLS_CALLS.remove(&id);
    let ret: u64 = ctx.ret();
    let ret = ret as i32;
    // SSL_read/SSL_write return the byte count; the _ex forms return 1 and store it.
    let n: u64 = if call.len_ptr != 0 {
        if ret == 1 {
            let mut v: u64 = 0;
            let r = unsafe { bpf_probe_read_user(&mut v as *mut u64 as *mut c_void, 8, call.len_ptr as *const c_void) };
            if r < 0 { 0 } else { v }
        } else {
            0
        }
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let key = SslKey { ssl: call.ssl, tgid: (id >> 32) as u32, _pad: 0 };
    // Map even when nothing was returned (a handshake step, WANT_READ): the earlier
    // the classifiers know the flow, the less ciphertext they emit.
    let sk = if call.fd1 != 0 { fd_to_sock(call.fd1 - 1) } else { 0 };
    let conn = if sk != 0 { map_socket(&key, sk, now) } else { TLS_CONNS.get_ptr_mut(&key) };
    if n == 0 {
        return 0;
    }
    count(TlsCounter::Calls, 1);
    count(TlsCounter::Bytes, n);
    let Some(conn) = conn else {
        count(TlsCounter::Unmapped, 1);
        count(TlsCounter::UnmappedBytes, n);
        return 0;
    };
    let conn = unsafe { &mut *conn };
    match conn.role {
        ROLE_SERVER => {}
        ROLE_CLIENT => {
            count(TlsCounter::ClientSide, 1);
            return 0;
        }
        ROLE_SAMPLED_OUT => {
            count(TlsCounter::SampledOutCalls, 1);
            count(TlsCounter::SampledOutBytes, n);
            return 0;
        }
        _ => {
            count(TlsCounter::NotWatched, 1);
            return 0;
        }
    }
    // The server reads requests and writes responses.
    let dir = if call.kind == KIND_READ { DIR_CLIENT_TO_SERVER } else { DIR_SERVER_TO_CLIENT };
    emit_data(conn, dir, call.buf, n, now);
    // Advance by the whole call even if part of it was lost: userspace sees the gap.
    conn.off[(dir & 1) as usize] += n;
    0
}

/// State of one `bpf_loop` over the chunks of a call.
#[repr(C)]
struct Chunks {
    buf: u64,
    len: u64,
}

/// Copies a call's plaintext into the ring in chunks of TLS_CHUNK_SIZE. The header is
/// written into the scratch buffer once; each chunk rewrites only its two fields.
#[inline(always)]
fn emit_data(conn: &TlsConn, dir: u8, buf: u64, n: u64, now: u64) {
    let limit = TLS_MAX_CHUNKS as u64 * TLS_CHUNK_SIZE as u64;
    if n > limit {
        count(TlsCounter::Truncated, 1);
        count(TlsCounter::TruncatedBytes, n - limit);
    }
    let len = if n > limit { limit } else { n };
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(0) else { return };
    write_header(scratch as *mut EventHeader, conn, dir, 0, n, now);
    let chunks = len.div_ceil(TLS_CHUNK_SIZE as u64) as u32;
    let mut state = Chunks { buf, len };
    unsafe {
        bpf_loop(chunks, emit_chunk as *mut c_void, &mut state as *mut Chunks as *mut c_void, 0);
    }
}

#[inline(never)]
extern "C" fn emit_chunk(index: u64, state: *mut c_void) -> i64 {
    let state = unsafe { &*(state as *const Chunks) };
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(0) else { return 1 };
    let scratch = scratch as *mut u8;
    let offset = index * TLS_CHUNK_SIZE as u64;
    if offset >= state.len {
        return 1;
    }
    let remaining = state.len - offset;
    let want = if remaining > TLS_CHUNK_SIZE as u64 { TLS_CHUNK_SIZE as u64 } else { remaining };
    // Keeps the length provably in [1, TLS_CHUNK_SIZE] for the verifier.
    let n = ((want as u32 - 1) & (TLS_CHUNK_SIZE as u32 - 1)) + 1;
    let event = scratch as *mut EventHeader;
    unsafe {
        (*event).chunk_offset = offset as u32;
        (*event).chunk_len = n;
    }
    let ret = unsafe {
        bpf_probe_read_user(scratch.add(EVENT_HEADER_SIZE) as *mut c_void, n, (state.buf + offset) as *const c_void)
    };
    if ret < 0 {
        count(TlsCounter::CopyErrors, 1);
        count(TlsCounter::CopyErrorBytes, n as u64);
        return 0;
    }
    let size = EVENT_HEADER_SIZE as u64 + n as u64;
    let ret = unsafe { bpf_ringbuf_output(&EVENTS as *const _ as *mut _, scratch as *mut c_void, size, wakeup_flag()) };
    if ret < 0 {
        count(TlsCounter::RingFull, 1);
        count(TlsCounter::RingFullBytes, n as u64);
    } else {
        count(TlsCounter::EventsEmitted, 1);
        count(TlsCounter::BytesEmitted, n as u64);
    }
    0
}

/// `SSL_free`: the connection ends; both directions are closed after their last byte.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let Some(ssl) = ctx.arg::<u64>(0) else { return 0 };
    let key = SslKey { ssl, tgid: (bpf_get_current_pid_tgid() >> 32) as u32, _pad: 0 };
    if let Some(conn) = unsafe { TLS_CONNS.get(&key) } {
        if conn.role == ROLE_SERVER {
            let conn = *conn;
            close(&conn, unsafe { bpf_ktime_get_ns() });
        }
        let _ = TLS_CONNS.remove(&key);
    }
    0
}

