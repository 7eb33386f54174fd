//! What the kernel need not copy: connections left out by sampling, and byte ranges
//! userspace said it will not keep. Pure rules, shared by the kernel program and the
//! userspace tests (like [`crate::owner_verdict`]).

use crate::{TCP_FIN, TCP_RST, TCP_SYN};

/// Sampling settings: three globals of the kernel program set at load time
/// ([`crate::GLOBAL_SAMPLE_K0`], [`crate::GLOBAL_SAMPLE_K1`],
/// [`crate::GLOBAL_SAMPLE_THRESHOLD`]; separate so they load into registers, not the
/// program's small stack).
///
/// A connection is kept when the top 32 bits of the keyed hash of its canonical
/// 4-tuple (client, server) are below `threshold`. The key is random per agent start,
/// so which connections are kept cannot be predicted (or steered) from outside.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleConfig {
    pub k0: u64,
    pub k1: u64,
    /// `[0, 2^32]`; `2^32` (= [`SAMPLE_ALL`]) keeps everything and skips the hash.
    pub threshold: u64,
}

/// Threshold that keeps every connection.
pub const SAMPLE_ALL: u64 = 1 << 32;

impl SampleConfig {
    /// Keeps `percent` (0..=100) of connections with the given key.
    pub fn new(percent: f64, k0: u64, k1: u64) -> SampleConfig {
        let fraction = if percent.is_finite() { (percent / 100.0).clamp(0.0, 1.0) } else { 1.0 };
        // `+ 0.5` rounds (no `f64::round` without std).
        let threshold = (fraction * SAMPLE_ALL as f64 + 0.5) as u64;
        SampleConfig { k0, k1, threshold: threshold.min(SAMPLE_ALL) }
    }

    /// Everything is kept (no hashing at all).
    pub const fn all() -> SampleConfig {
        SampleConfig { k0: 0, k1: 0, threshold: SAMPLE_ALL }
    }
}

/// SipHash-2-4 (Aumasson and Bernstein) of the 40-byte message `words` (little-endian
/// 64-bit words). Straight-line code: the verifier sees no loop.
#[inline(always)]
pub fn siphash24_40(k0: u64, k1: u64, words: &[u64; 5]) -> u64 {
    siphash24_words(k0, k1, words[0], words[1], words[2], words[3], words[4])
}

/// [`siphash24_40`] with the words as values (no array on the BPF stack).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn siphash24_words(k0: u64, k1: u64, w0: u64, w1: u64, w2: u64, w3: u64, w4: u64) -> u64 {
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    macro_rules! round {
        () => {
            v0 = v0.wrapping_add(v1);
            v1 = v1.rotate_left(13);
            v1 ^= v0;
            v0 = v0.rotate_left(32);
            v2 = v2.wrapping_add(v3);
            v3 = v3.rotate_left(16);
            v3 ^= v2;
            v0 = v0.wrapping_add(v3);
            v3 = v3.rotate_left(21);
            v3 ^= v0;
            v2 = v2.wrapping_add(v1);
            v1 = v1.rotate_left(17);
            v1 ^= v2;
            v2 = v2.rotate_left(32);
        };
    }
    macro_rules! compress {
        ($m:expr) => {
            let m = $m;
            v3 ^= m;
            round!();
            round!();
            v0 ^= m;
        };
    }
    compress!(w0);
    compress!(w1);
    compress!(w2);
    compress!(w3);
    compress!(w4);
    // Final block: the message length (40) in the top byte, no tail bytes.
    compress!(40u64 << 56);
    v2 ^= 0xff;
    round!();
    round!();
    round!();
    round!();
    v0 ^ v1 ^ v2 ^ v3
}

/// Keyed hash of a connection's canonical 4-tuple: the client and server side, not
/// the packet's source and destination, so both directions hash alike on any hook.
/// Addresses as in [`crate::EventHeader`] (IPv4 in the first four bytes, rest zero).
#[inline(always)]
pub fn connection_hash(
    k0: u64,
    k1: u64,
    client_addr: &[u8; 16],
    server_addr: &[u8; 16],
    client_port: u16,
    server_port: u16,
    family: u8,
) -> u64 {
    let word = |a: &[u8; 16], i: usize| {
        u64::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]])
    };
    let ports = client_port as u64 | (server_port as u64) << 16 | (family as u64) << 32;
    siphash24_words(k0, k1, word(client_addr, 0), word(client_addr, 8), word(server_addr, 0), word(server_addr, 8), ports)
}

/// Whether a connection with this hash is kept under `threshold` (see [`SampleConfig`]).
#[inline(always)]
pub const fn is_sampled(threshold: u64, hash: u64) -> bool {
    (hash >> 32) < threshold
}

/// Value of the per-flow-direction skip map: the payload bytes with sequence numbers
/// in `[from_seq, until_seq)` are not copied. Userspace writes it when it decided not
/// to keep them (and already stopped expecting them); the kernel only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipRange {
    pub from_seq: u32,
    pub until_seq: u32,
}

/// Longest skip range written at once; keeps every distance in the signed 32-bit
/// range so sequence-number wraparound never turns "after" into "inside".
pub const MAX_SKIP_LEN: u32 = 1 << 30;

/// Default entries of the skip map (flow directions with a skip registered); an LRU,
/// userspace deletes a connection's entries when it closes.
pub const DEFAULT_SKIP_ENTRIES: u32 = 16_384;

/// The part `[lo, hi)` of a segment's payload to copy, given the flow direction's skip
/// range. The skipped part is a prefix, a suffix or all of the payload; a range
/// strictly inside one segment is not worth a second copy window: the segment is copied
/// whole (userspace drops the bytes it does not want). Segments with SYN, FIN or RST are
/// always copied whole, so connection starts and ends are never lost.
#[inline(always)]
pub fn copy_window(seq: u32, payload_len: u32, flags: u8, skip: Option<&SkipRange>) -> (u32, u32) {
    let whole = (0, payload_len);
    let Some(r) = skip else { return whole };
    if payload_len == 0 || flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return whole;
    }
    let len = payload_len as i64;
    let lo = (r.from_seq.wrapping_sub(seq) as i32 as i64).clamp(0, len);
    let hi = (r.until_seq.wrapping_sub(seq) as i32 as i64).clamp(0, len);
    if hi <= lo {
        whole
    } else if lo == 0 {
        (hi as u32, payload_len)
    } else if hi == len {
        (0, lo as u32)
    } else {
        whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[allow(deprecated)]
    fn reference_siphash(k0: u64, k1: u64, msg: &[u8]) -> u64 {
        use core::hash::Hasher;
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write(msg);
        h.finish()
    }

    #[test]
    fn siphash_matches_the_reference_implementation() {
        // The paper's key 00 01 .. 0f and message 00 01 .. 27 (40 bytes).
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..40u8).collect();
        let words: [u64; 5] = core::array::from_fn(|i| u64::from_le_bytes(msg[i * 8..i * 8 + 8].try_into().unwrap()));
        assert_eq!(siphash24_40(k0, k1, &words), reference_siphash(k0, k1, &msg));
        for seed in 0..200u64 {
            let k0 = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let k1 = !seed;
            let msg: Vec<u8> = (0..40u64).map(|i| (i * 31 + seed * 7) as u8).collect();
            let words: [u64; 5] = core::array::from_fn(|i| u64::from_le_bytes(msg[i * 8..i * 8 + 8].try_into().unwrap()));
            assert_eq!(siphash24_40(k0, k1, &words), reference_siphash(k0, k1, &msg));
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn both_directions_and_every_hook_get_the_same_verdict() {
        // The kernel builds the canonical tuple from the packet and its direction; the
        // request (client -> server) and the response (server -> client) of one
        // connection must hash alike.
        let cfg = SampleConfig::new(10.0, 0x0123, 0x4567);
        let (client, server) = (v4([10, 0, 0, 2]), v4([10, 0, 0, 1]));
        let request = connection_hash(cfg.k0, cfg.k1, &client, &server, 40000, 8080, crate::FAMILY_IPV4);
        // Response packet: source is the server; the kernel swaps by direction.
        let (saddr, daddr, sport, dport) = (server, client, 8080, 40000);
        let response = connection_hash(cfg.k0, cfg.k1, &daddr, &saddr, dport, sport, crate::FAMILY_IPV4);
        assert_eq!(request, response);
        // Another client port is another connection (almost surely another hash).
        assert_ne!(request, connection_hash(cfg.k0, cfg.k1, &client, &server, 40001, 8080, crate::FAMILY_IPV4));
    }

    #[test]
    fn the_kept_fraction_follows_the_percentage_and_the_key_decides_which() {
        let (client, server) = (v4([10, 1, 2, 3]), v4([10, 9, 9, 9]));
        let n = 100_000u32;
        let kept = |cfg: &SampleConfig| -> Vec<u16> {
            (0..n)
                .map(|i| (i % 65536) as u16)
                .filter(|&p| is_sampled(cfg.threshold, connection_hash(cfg.k0, cfg.k1, &client, &server, p, 80, crate::FAMILY_IPV4)))
                .collect()
        };
        let a = kept(&SampleConfig::new(10.0, 1, 2));
        // Binomial(100000, 0.1): sd ~95; 6 sd either side.
        assert!((9_430..=10_570).contains(&a.len()), "kept {}", a.len());
        let b = kept(&SampleConfig::new(10.0, 3, 4));
        let common = a.iter().filter(|p| b.contains(p)).count();
        // Independent keys: about 10 % of a's connections are also in b.
        assert!(common < a.len() / 5, "{common} of {} kept by both keys", a.len());
        assert_eq!(kept(&SampleConfig::new(100.0, 1, 2)).len(), n as usize);
        assert_eq!(kept(&SampleConfig::new(0.0, 1, 2)).len(), 0);
        assert_eq!(SampleConfig::new(100.0, 1, 2).threshold, SAMPLE_ALL);
        assert_eq!(SampleConfig::new(0.5, 1, 2).threshold, (0.005 * SAMPLE_ALL as f64).round() as u64);
    }

    /// The bytes of `[seq, seq + len)` that fall into `[from, until)`, the slow way.
    fn overlap_oracle(seq: u32, len: u32, from: u32, until: u32) -> Vec<u32> {
        let span = until.wrapping_sub(from);
        (0..len).filter(|&i| seq.wrapping_add(i).wrapping_sub(from) < span).collect()
    }

    #[test]
    fn copy_window_skips_prefixes_suffixes_and_whole_segments_only() {
        let r = SkipRange { from_seq: 1000, until_seq: 2000 };
        let w = |seq, len, flags| copy_window(seq, len, flags, Some(&r));
        assert_eq!(w(500, 400, 0), (0, 400), "before the range");
        assert_eq!(w(2000, 400, 0), (0, 400), "after the range");
        assert_eq!(w(1200, 300, 0), (300, 300), "inside: nothing copied");
        assert_eq!(w(900, 300, 0), (0, 100), "suffix skipped");
        assert_eq!(w(1900, 300, 0), (100, 300), "prefix skipped");
        assert_eq!(w(900, 1300, 0), (0, 1300), "range strictly inside: copied whole");
        assert_eq!(w(1000, 1000, 0), (1000, 1000), "exactly the range");
        assert_eq!(w(1200, 300, TCP_FIN), (0, 300), "FIN segments are always copied");
        assert_eq!(w(1200, 300, TCP_RST), (0, 300));
        assert_eq!(w(1200, 0, 0), (0, 0));
        assert_eq!(copy_window(1200, 300, 0, None), (0, 300));
        // Across the 32-bit wrap.
        let r = SkipRange { from_seq: u32::MAX - 99, until_seq: 100 };
        assert_eq!(copy_window(u32::MAX - 49, 100, 0, Some(&r)), (100, 100));
        assert_eq!(copy_window(50, 100, 0, Some(&r)), (50, 100));
    }

    #[test]
    fn copy_window_never_copies_less_than_the_bytes_outside_the_range() {
        // Pseudo-random segments around ranges up to MAX_SKIP_LEN, anywhere in sequence
        // space: the copied window plus the bytes inside the range cover the segment, and
        // nothing inside the range is copied unless the segment is copied whole.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3_000 {
            let from = next() as u32;
            let span = match next() % 4 {
                0 => (next() % 4096) as u32 + 1,
                1 => (next() % 200_000) as u32 + 1,
                2 => MAX_SKIP_LEN,
                _ => (next() % MAX_SKIP_LEN as u64) as u32 + 1,
            };
            let until = from.wrapping_add(span);
            let len = (next() % 140_000) as u32 + 1;
            let seq = match next() % 3 {
                0 => from.wrapping_add((next() % 300_000) as u32).wrapping_sub(150_000),
                1 => until.wrapping_add((next() % 300_000) as u32).wrapping_sub(150_000),
                _ => next() as u32,
            };
            let inside = overlap_oracle(seq, len, from, until);
            let (lo, hi) = copy_window(seq, len, 0, Some(&SkipRange { from_seq: from, until_seq: until }));
            assert!(lo <= hi && hi <= len);
            let skipped: Vec<u32> = (0..len).filter(|i| *i < lo || *i >= hi).collect();
            assert!(
                skipped.iter().all(|i| inside.binary_search(i).is_ok()),
                "skipped bytes outside the range: seq {seq} len {len} range {from}..{until} window {lo}..{hi}"
            );
            if (lo, hi) != (0, len) {
                assert_eq!(skipped.len(), inside.len(), "a partial skip leaves no wanted byte behind");
            }
        }
    }
}
