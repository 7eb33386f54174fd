//! TCP stream reassembly for one direction of one connection.
//!
//! The kernel hands us segments as they pass the hook: possibly out of order,
//! duplicated, overlapping, retransmitted, or missing. HTTP parsing needs the
//! exact byte stream, so this module rebuilds it and reports bytes it never
//! saw as explicit gaps instead of silently splicing the stream.
//!
//! Internally every byte has a 64-bit absolute offset from the start of the
//! stream. 32-bit sequence numbers are mapped to offsets by their signed
//! distance from the next expected sequence number, which handles wraparound
//! and streams longer than 4 GiB.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Limits for one direction.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Out-of-order bytes held while waiting for a hole to fill. Past this, the reassembler
    /// gives up on the oldest hole: it reports a Gap and moves on.
    pub max_buffered_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_buffered_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What the reassembler hands on, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamChunk {
    /// Bytes that follow the previous chunk directly. ts_ns: timestamp of the segment they came in.
    Data { bytes: Bytes, ts_ns: u64 },
    /// `len` bytes of the stream are missing here (never seen); later Data continues after them.
    Gap { len: u64 },
    /// `len` bytes were skipped on purpose ([`StreamReassembler::skip`]): not a loss;
    /// later Data continues after them.
    Skip { len: u64 },
    /// Comes once, before the first Data, when no SYN anchored the stream (the agent
    /// joined mid-connection or the SYN was lost): an unknown number of bytes before
    /// the first Data were never seen.
    UnknownStart,
}

/// Counters for one direction, for metrics and debugging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// on_data calls with non-empty payload.
    pub segments: u64,
    /// Sum of Data lengths handed on.
    pub bytes_delivered: u64,
    /// Segments that arrived ahead of the expected sequence number.
    pub out_of_order_segments: u64,
    /// Streams whose first bytes came without a SYN before them: an unknown number of
    /// bytes before them were never seen (not in `gap_bytes`).
    pub unknown_starts: u64,
    /// Bytes dropped because already delivered or already buffered (retransmits, overlaps).
    pub duplicate_bytes: u64,
    /// Gap chunks emitted.
    pub gaps: u64,
    /// Their total length.
    pub gap_bytes: u64,
    /// Of those, gaps forced by max_buffered_bytes (the rest come from flush).
    pub forced_gaps: u64,
    /// Skip chunks emitted (ranges the consumer said it does not want).
    pub skips: u64,
    /// Their total length.
    pub skip_bytes: u64,
    /// Bytes of skipped ranges that arrived anyway (copied before the kernel learned of
    /// the skip); dropped here, not counted as duplicates.
    pub skipped_bytes_arrived: u64,
}

/// A segment (or the part of one not already covered) held until its hole fills.
#[derive(Debug)]
struct Held {
    data: Bytes,
    ts_ns: u64,
}

/// Reassembles one direction of one TCP connection.
#[derive(Debug)]
pub struct StreamReassembler {
    limits: StreamLimits,
    /// Sequence number of stream offset 0; `None` until a SYN, data or FIN tells us.
    base_seq: Option<u32>,
    /// Absolute offset of the next byte to hand on.
    next_off: u64,
    /// Out-of-order data keyed by absolute start offset. Entries never overlap each
    /// other and all start after `next_off`, so `buffered` is an exact byte count.
    pending: BTreeMap<u64, Held>,
    buffered: usize,
    /// Absolute offset of the FIN (the stream's length), once seen.
    fin_off: Option<u64>,
    /// The most recent skipped range (absolute offsets): late arrivals inside it are
    /// counted as skipped, not as duplicates.
    skipped: Option<(u64, u64)>,
    /// `base_seq` came from a SYN: offset 0 is the true start of the stream.
    anchored_by_syn: bool,
    stats: StreamStats,
}

/// How far ahead of the next expected byte a segment may start and still belong to
/// this stream. Further is taken as a new connection on the same 4-tuple whose SYN
/// was not seen (a random ISN lands anywhere); a real jump that far would need
/// 64 MiB of one direction lost at once. A stream without a SYN (joined mid-way) has
/// no ISN to check a jump against: there the limit is its hold budget.
const MAX_SEQ_JUMP: i128 = 64 << 20;

impl StreamReassembler {
    pub fn new(limits: StreamLimits) -> Self {
        StreamReassembler {
            limits,
            base_seq: None,
            next_off: 0,
            pending: BTreeMap::new(),
            buffered: 0,
            fin_off: None,
            skipped: None,
            anchored_by_syn: false,
            stats: StreamStats::default(),
        }
    }

    /// Whether `len` payload bytes at `seq` can belong to this stream. False for bytes
    /// after its FIN, before its SYN, or implausibly far ahead: the segment belongs to a
    /// new connection that reuses the 4-tuple and whose SYN was not seen.
    pub fn accepts(&self, seq: u32, len: usize) -> bool {
        if self.base_seq.is_none() || len == 0 {
            return true;
        }
        let start = self.next_off as i128 + self.distance(seq) as i128;
        let after_fin = self.fin_off.is_some_and(|fin| start >= fin as i128);
        // A little slack before the SYN: a keep-alive probe may repeat the byte before.
        let before_syn = self.anchored_by_syn && start < -(1 << 20);
        !(after_fin || before_syn || self.too_far(start))
    }

    /// Whether offset `at` is implausibly far from the next expected byte.
    fn too_far(&self, at: i128) -> bool {
        let limit = if self.anchored_by_syn { MAX_SEQ_JUMP } else { self.limits.max_buffered_bytes as i128 };
        at - self.next_off as i128 > limit || at < -MAX_SEQ_JUMP
    }

    /// A SYN with this sequence number was seen: data starts at isn + 1. Called before any data
    /// normally; if called after data was already delivered, ignore it (count nothing).
    pub fn on_syn(&mut self, isn: u32) {
        // Once anchored, offsets already handed on depend on the anchor; a late or
        // retransmitted SYN must not move it.
        if self.base_seq.is_none() {
            self.base_seq = Some(isn.wrapping_add(1));
            self.anchored_by_syn = true;
        }
    }

    /// Payload bytes starting at sequence number `seq`. Appends zero or more chunks to `out`.
    /// Without a prior SYN, the first segment's seq is the start of the stream.
    pub fn on_data(&mut self, seq: u32, data: Bytes, ts_ns: u64, out: &mut Vec<StreamChunk>) {
        if data.is_empty() {
            return;
        }
        self.stats.segments += 1;
        if self.base_seq.is_none() {
            // Mid-connection capture: the first bytes we see are the start for us.
            self.base_seq = Some(seq);
        }
        if !self.anchored_by_syn && self.stats.segments == 1 {
            self.stats.unknown_starts += 1;
            out.push(StreamChunk::UnknownStart);
        }

        // Work in i128 so no combination of offset, distance and length can overflow.
        let next = self.next_off as i128;
        let start = next + self.distance(seq) as i128;
        let len = data.len() as i128;
        let end = start + len;

        if end <= next {
            // Entirely before what we already handed on: a retransmit (or skipped bytes).
            self.count_stale(start, data.len() as u64);
            return;
        }

        if start <= next {
            // In order, possibly with an already-delivered head to trim.
            let skip = (next - start) as usize;
            self.count_stale(start, skip as u64);
            self.emit_data(data.slice(skip..), ts_ns, out);
            self.drain(out);
            return;
        }

        self.stats.out_of_order_segments += 1;
        self.hold(start as u64, data, ts_ns);
        self.enforce_limit(out);
    }

    /// A FIN was seen whose sequence number is `fin_seq` (= seq of the FIN segment + its payload length).
    pub fn on_fin(&mut self, fin_seq: u32) {
        if self.fin_off.is_some() {
            // Keep the first FIN; retransmitted FINs carry the same number.
            return;
        }
        if self.base_seq.is_none() {
            // No SYN and no data seen: this direction is empty as far as we know.
            self.base_seq = Some(fin_seq);
        }
        let off = self.next_off as i128 + self.distance(fin_seq) as i128;
        // A FIN before offset 0 is nonsense; treat it as an empty stream.
        self.fin_off = Some(off.max(0) as u64);
    }

    /// Whether a FIN at `fin_seq` can end this stream: not another FIN than the one
    /// seen, not before its SYN, not implausibly far ahead (see [`Self::accepts`]).
    pub fn accepts_fin(&self, fin_seq: u32) -> bool {
        if self.base_seq.is_none() {
            return true;
        }
        let at = self.next_off as i128 + self.distance(fin_seq) as i128;
        let other_fin = self.fin_off.is_some_and(|fin| at != fin as i128);
        let before_syn = self.anchored_by_syn && at < -(1 << 20);
        !(other_fin || before_syn || self.too_far(at))
    }

    /// Offset from the stream start of the byte at `seq` (None before anchoring), and
    /// the next expected offset.
    pub fn offsets(&self, seq: u32) -> Option<(i128, u64)> {
        self.base_seq?;
        Some((self.next_off as i128 + self.distance(seq) as i128, self.next_off))
    }

    /// Whether a segment at `seq` would start past the next expected byte (leave a hole).
    pub fn starts_ahead(&self, seq: u32) -> bool {
        self.base_seq.is_some() && self.distance(seq) > 0
    }

    /// Whether a SYN with this ISN fits the stream: it was anchored by that SYN, or not
    /// by a SYN at all.
    pub fn fits_syn(&self, isn: u32) -> bool {
        !self.anchored_by_syn || self.base_seq == Some(isn.wrapping_add(1))
    }

    /// Offset 0 is the stream's true start (a SYN was seen), not its first seen byte.
    pub fn anchored_by_syn(&self) -> bool {
        self.anchored_by_syn
    }

    /// A FIN was seen: the stream's length is known.
    pub fn saw_fin(&self) -> bool {
        self.fin_off.is_some()
    }

    /// True once a FIN was seen and every byte before it was delivered (or reported as a gap).
    pub fn is_finished(&self) -> bool {
        matches!(self.fin_off, Some(fin) if self.next_off >= fin)
    }

    /// Give up on all holes: deliver everything buffered in order, with a Gap for each hole.
    /// Used on connection close / RST, idle timeout, and when a hole is too old. If a FIN was seen
    /// and bytes before the FIN are missing after the last buffered segment, report that as a Gap too.
    pub fn flush(&mut self, out: &mut Vec<StreamChunk>) {
        while let Some(&first) = self.pending.keys().next() {
            self.skip_to(first, false, out);
            self.drain(out);
        }
        if let Some(fin) = self.fin_off {
            if fin > self.next_off {
                self.skip_to(fin, false, out);
            }
        }
    }

    /// The consumer does not want the next `len` bytes (it knows their length from the
    /// framing): hands on a [`StreamChunk::Skip`] at once and drops those bytes, whether
    /// held already or arriving later. Returns the sequence numbers `[from, until)` of
    /// the range, for the kernel to skip too; `None` (nothing done) before the stream
    /// has a starting point or for `len` 0.
    pub fn skip(&mut self, len: u64, out: &mut Vec<StreamChunk>) -> Option<(u32, u32)> {
        let base = self.base_seq?;
        if len == 0 {
            return None;
        }
        let (from, until) = (self.next_off, self.next_off + len);
        while let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            if start >= until {
                break;
            }
            let held = entry.remove();
            self.buffered -= held.data.len();
            let inside = (start + held.data.len() as u64).min(until) - start;
            self.stats.skipped_bytes_arrived += inside;
            if (inside as usize) < held.data.len() {
                // Entries never overlap, so the tail past the range stays alone.
                self.insert_held(until, held.data.slice(inside as usize..), held.ts_ns);
            }
        }
        self.next_off = until;
        self.skipped = Some((from, until));
        self.stats.skips += 1;
        self.stats.skip_bytes += len;
        out.push(StreamChunk::Skip { len });
        self.drain(out);
        // Truncating offsets is intended: sequence numbers are offsets mod 2^32.
        Some((base.wrapping_add(from as u32), base.wrapping_add(until as u32)))
    }

    /// Timestamp (ts_ns as given to on_data) of the oldest segment currently held out of order.
    pub fn oldest_pending_ts(&self) -> Option<u64> {
        // A linear scan: the held set is bounded by max_buffered_bytes and this is
        // only consulted by periodic timeout checks.
        self.pending.values().map(|h| h.ts_ns).min()
    }

    /// Bytes currently held out of order.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Signed distance of `seq` from the next expected sequence number.
    fn distance(&self, seq: u32) -> i32 {
        let base = self.base_seq.unwrap_or(seq);
        // Truncating next_off is intended: sequence numbers are offsets mod 2^32.
        let expected = base.wrapping_add(self.next_off as u32);
        seq.wrapping_sub(expected) as i32
    }

    /// `len` bytes starting at absolute offset `start` (may be negative: before the
    /// stream) were already handed on: those inside the last skipped range are counted
    /// as skipped arrivals, the rest as duplicates.
    fn count_stale(&mut self, start: i128, len: u64) {
        let in_skip = match self.skipped {
            Some((a, b)) => {
                let (lo, hi) = (start.max(a as i128), (start + len as i128).min(b as i128));
                (hi - lo).max(0) as u64
            }
            None => 0,
        };
        self.stats.skipped_bytes_arrived += in_skip;
        self.stats.duplicate_bytes += len - in_skip;
    }

    fn emit_data(&mut self, bytes: Bytes, ts_ns: u64, out: &mut Vec<StreamChunk>) {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len() as u64;
        self.next_off += len;
        self.stats.bytes_delivered += len;
        out.push(StreamChunk::Data { bytes, ts_ns });
    }

    /// Report everything from `next_off` up to `off` as missing.
    fn skip_to(&mut self, off: u64, forced: bool, out: &mut Vec<StreamChunk>) {
        if off <= self.next_off {
            return;
        }
        let len = off - self.next_off;
        self.next_off = off;
        self.stats.gaps += 1;
        self.stats.gap_bytes += len;
        if forced {
            self.stats.forced_gaps += 1;
        }
        out.push(StreamChunk::Gap { len });
    }

    /// Hand on held data that has become contiguous with `next_off`.
    fn drain(&mut self, out: &mut Vec<StreamChunk>) {
        while let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            if start > self.next_off {
                break;
            }
            let held = entry.remove();
            self.buffered -= held.data.len();
            // In-order data may have overtaken part or all of this entry.
            let already = (self.next_off - start).min(held.data.len() as u64) as usize;
            self.count_stale(start as i128, already as u64);
            self.emit_data(held.data.slice(already..), held.ts_ns, out);
        }
    }

    /// Store out-of-order data, keeping only the bytes no held entry covers yet
    /// (first copy wins: TCP retransmits carry identical bytes).
    fn hold(&mut self, mut start: u64, mut data: Bytes, ts_ns: u64) {
        // Trim against the entry that starts at or before us.
        if let Some((&k, prev)) = self.pending.range(..=start).next_back() {
            let prev_end = k + prev.data.len() as u64;
            if prev_end > start {
                let covered = (prev_end - start).min(data.len() as u64) as usize;
                self.stats.duplicate_bytes += covered as u64;
                data = data.slice(covered..);
                start += covered as u64;
            }
        }
        // Walk entries that start inside what is left, keeping the uncovered pieces.
        while !data.is_empty() {
            let end = start + data.len() as u64;
            let next = self
                .pending
                .range(start..end)
                .next()
                .map(|(&k, h)| (k, h.data.len()));
            let Some((k, k_len)) = next else {
                self.insert_held(start, data, ts_ns);
                return;
            };
            if k > start {
                let head = data.split_to((k - start) as usize);
                self.insert_held(start, head, ts_ns);
                start = k;
            }
            let covered = k_len.min(data.len());
            self.stats.duplicate_bytes += covered as u64;
            data = data.slice(covered..);
            start += covered as u64;
        }
    }

    fn insert_held(&mut self, start: u64, data: Bytes, ts_ns: u64) {
        self.buffered += data.len();
        // A copy of its own: the bytes may share the ring reader's batch allocation,
        // which a small piece held for long must not keep alive.
        self.pending.insert(start, Held { data: Bytes::copy_from_slice(&data), ts_ns });
    }

    /// Bound memory: give up on the oldest hole until we hold no more than the limit.
    fn enforce_limit(&mut self, out: &mut Vec<StreamChunk>) {
        while self.buffered > self.limits.max_buffered_bytes {
            let Some(&first) = self.pending.keys().next() else {
                break;
            };
            self.skip_to(first, true, out);
            self.drain(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reassembler() -> StreamReassembler {
        StreamReassembler::new(StreamLimits::default())
    }

    fn feed(r: &mut StreamReassembler, seq: u32, data: &[u8], ts: u64) -> Vec<StreamChunk> {
        let mut out = Vec::new();
        r.on_data(seq, Bytes::copy_from_slice(data), ts, &mut out);
        out
    }

    /// Concatenated Data bytes; panics on a Gap so tests notice unexpected ones.
    fn data_only(chunks: &[StreamChunk]) -> Vec<u8> {
        let mut v = Vec::new();
        for c in chunks {
            match c {
                StreamChunk::Data { bytes, .. } => v.extend_from_slice(bytes),
                StreamChunk::Gap { len } => panic!("unexpected gap of {len}"),
                StreamChunk::Skip { len } => panic!("unexpected skip of {len}"),
                StreamChunk::UnknownStart => panic!("unexpected unknown start"),
            }
        }
        v
    }

    /// Rebuild the stream with `None` for gap bytes.
    fn rebuild(chunks: &[StreamChunk]) -> Vec<Option<u8>> {
        let mut v = Vec::new();
        for c in chunks {
            match c {
                StreamChunk::Data { bytes, .. } => {
                    assert!(!bytes.is_empty(), "empty Data chunk");
                    v.extend(bytes.iter().map(|&b| Some(b)));
                }
                StreamChunk::Gap { len } | StreamChunk::Skip { len } => {
                    assert!(*len > 0, "empty Gap chunk");
                    v.extend(std::iter::repeat_n(None, *len as usize));
                }
                StreamChunk::UnknownStart => assert!(v.is_empty(), "unknown start after data"),
            }
        }
        v
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn in_order_segments_pass_straight_through() {
        let mut r = reassembler();
        r.on_syn(1000);
        let a = feed(&mut r, 1001, b"hello ", 1);
        let b = feed(&mut r, 1007, b"world", 2);
        assert_eq!(
            a,
            vec![StreamChunk::Data {
                bytes: Bytes::from_static(b"hello "),
                ts_ns: 1
            }]
        );
        assert_eq!(
            b,
            vec![StreamChunk::Data {
                bytes: Bytes::from_static(b"world"),
                ts_ns: 2
            }]
        );
        assert_eq!(r.stats().segments, 2);
        assert_eq!(r.stats().bytes_delivered, 11);
        assert_eq!(r.stats().out_of_order_segments, 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn out_of_order_segments_wait_for_hole() {
        let mut r = reassembler();
        r.on_syn(0);
        assert_eq!(data_only(&feed(&mut r, 1, b"ab", 1)), b"ab");
        assert!(feed(&mut r, 7, b"gh", 2).is_empty());
        assert!(feed(&mut r, 5, b"ef", 3).is_empty());
        assert_eq!(r.buffered_bytes(), 4);
        let out = feed(&mut r, 3, b"cd", 4);
        assert_eq!(data_only(&out), b"cdefgh");
        // Held bytes keep the timestamp of the segment they came in.
        let ts: Vec<u64> = out
            .iter()
            .map(|c| match c {
                StreamChunk::Data { ts_ns, .. } => *ts_ns,
                StreamChunk::Gap { .. } | StreamChunk::Skip { .. } | StreamChunk::UnknownStart => unreachable!(),
            })
            .collect();
        assert_eq!(ts, vec![4, 3, 2]);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.stats().out_of_order_segments, 2);
        assert_eq!(r.stats().bytes_delivered, 8);
    }

    #[test]
    fn exact_duplicate_is_dropped() {
        let mut r = reassembler();
        r.on_syn(0);
        feed(&mut r, 1, b"ab", 1);
        // Duplicate of a held segment.
        assert!(feed(&mut r, 5, b"ef", 2).is_empty());
        assert!(feed(&mut r, 5, b"ef", 3).is_empty());
        assert_eq!(r.buffered_bytes(), 2);
        assert_eq!(r.stats().duplicate_bytes, 2);
        assert_eq!(data_only(&feed(&mut r, 3, b"cd", 4)), b"cdef");
        assert_eq!(r.stats().bytes_delivered, 6);
    }

    #[test]
    fn partial_overlap_on_both_sides() {
        let mut r = reassembler();
        r.on_syn(0);
        let s = b"0123456789abcdefghijklmnopqrstuvwxyz";
        // Stream offsets 10..20 held.
        assert!(feed(&mut r, 11, &s[10..20], 1).is_empty());
        // 5..25 overlaps the held segment on both sides.
        assert!(feed(&mut r, 6, &s[5..25], 2).is_empty());
        assert_eq!(r.buffered_bytes(), 20);
        assert_eq!(r.stats().duplicate_bytes, 10);
        // 22..30 overlaps the tail, 3..7 overlaps the head.
        assert!(feed(&mut r, 23, &s[22..30], 3).is_empty());
        assert!(feed(&mut r, 4, &s[3..7], 4).is_empty());
        assert_eq!(r.buffered_bytes(), 27);
        assert_eq!(r.stats().duplicate_bytes, 10 + 3 + 2);
        // 0..5 overlaps the now-held 3..5.
        let out = feed(&mut r, 1, &s[0..5], 5);
        assert_eq!(data_only(&out), &s[0..30]);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.stats().duplicate_bytes, 10 + 3 + 2 + 2);
        assert_eq!(data_only(&feed(&mut r, 31, &s[30..], 6)), &s[30..]);
    }

    #[test]
    fn retransmission_after_delivery_is_dropped() {
        let mut r = reassembler();
        r.on_syn(99);
        feed(&mut r, 100, b"abcdef", 1);
        // Fully old.
        assert!(feed(&mut r, 100, b"abcdef", 2).is_empty());
        assert!(feed(&mut r, 102, b"cd", 3).is_empty());
        assert_eq!(r.stats().duplicate_bytes, 8);
        // Partly old: only the new tail comes out.
        let out = feed(&mut r, 104, b"efgh", 4);
        assert_eq!(data_only(&out), b"gh");
        assert_eq!(r.stats().duplicate_bytes, 10);
        assert_eq!(r.stats().bytes_delivered, 8);
        assert_eq!(r.stats().out_of_order_segments, 0);
    }

    #[test]
    fn wraparound_near_u32_max() {
        let isn = u32::MAX - 10;
        let stream = pattern(100);
        let mut r = reassembler();
        r.on_syn(isn);
        let seq = |off: usize| isn.wrapping_add(1).wrapping_add(off as u32);
        let mut out = Vec::new();
        // Segments straddle the wrap at offset 10; feed them out of order.
        for (a, b) in [(30, 60), (5, 15), (60, 100), (15, 30), (0, 5)] {
            r.on_data(
                seq(a),
                Bytes::copy_from_slice(&stream[a..b]),
                0,
                &mut out,
            );
        }
        assert_eq!(data_only(&out), stream);
        r.on_fin(seq(100));
        assert!(r.is_finished());
    }

    #[test]
    fn syn_then_data() {
        let mut r = reassembler();
        r.on_syn(5000);
        // First data arrives out of order: the SYN tells us where the stream starts.
        assert!(feed(&mut r, 5004, b"def", 1).is_empty());
        assert_eq!(data_only(&feed(&mut r, 5001, b"abc", 2)), b"abcdef");
    }

    #[test]
    fn data_without_syn_starts_the_stream() {
        let mut r = reassembler();
        let first = feed(&mut r, 777, b"xyz", 1);
        assert_eq!(first[0], StreamChunk::UnknownStart, "bytes before the first seen one are unknown");
        assert_eq!(data_only(&first[1..]), b"xyz");
        assert_eq!(r.stats().unknown_starts, 1);
        assert_eq!(data_only(&feed(&mut r, 780, b"!", 2)), b"!");
        // Bytes before the first segment count as old.
        assert!(feed(&mut r, 770, b"1234567", 3).is_empty());
        assert_eq!(r.stats().duplicate_bytes, 7);
    }

    #[test]
    fn syn_after_data_is_ignored() {
        let mut r = reassembler();
        assert_eq!(feed(&mut r, 100, b"ab", 1)[0], StreamChunk::UnknownStart);
        r.on_syn(5);
        assert_eq!(data_only(&feed(&mut r, 102, b"cd", 2)), b"cd");
        assert_eq!(r.stats().bytes_delivered, 4);
    }

    #[test]
    fn fin_then_is_finished() {
        let mut r = reassembler();
        r.on_syn(0);
        feed(&mut r, 1, b"ab", 1);
        feed(&mut r, 5, b"ef", 2);
        r.on_fin(7);
        assert!(!r.is_finished(), "bytes 2..4 still missing");
        feed(&mut r, 3, b"cd", 3);
        assert!(r.is_finished());

        let mut empty = reassembler();
        assert!(!empty.is_finished());
        empty.on_fin(42);
        assert!(empty.is_finished());
    }

    #[test]
    fn flush_reports_hole_as_gap() {
        let mut r = reassembler();
        r.on_syn(0);
        feed(&mut r, 1, b"ab", 1);
        feed(&mut r, 8, b"hi", 2);
        feed(&mut r, 5, b"ef", 3);
        let mut out = Vec::new();
        r.flush(&mut out);
        assert_eq!(
            out,
            vec![
                StreamChunk::Gap { len: 2 },
                StreamChunk::Data {
                    bytes: Bytes::from_static(b"ef"),
                    ts_ns: 3
                },
                StreamChunk::Gap { len: 1 },
                StreamChunk::Data {
                    bytes: Bytes::from_static(b"hi"),
                    ts_ns: 2
                },
            ]
        );
        assert_eq!(r.stats().gaps, 2);
        assert_eq!(r.stats().gap_bytes, 3);
        assert_eq!(r.stats().forced_gaps, 0);
        assert_eq!(r.buffered_bytes(), 0);
        // The stream carries on after the flush; the late hole bytes are now old.
        assert!(feed(&mut r, 3, b"cd", 4).is_empty());
        assert_eq!(data_only(&feed(&mut r, 10, b"jk", 5)), b"jk");
    }

    #[test]
    fn flush_reports_missing_tail_before_fin() {
        let mut r = reassembler();
        r.on_syn(0);
        feed(&mut r, 1, b"ab", 1);
        feed(&mut r, 5, b"ef", 2);
        r.on_fin(11);
        let mut out = Vec::new();
        r.flush(&mut out);
        assert_eq!(rebuild(&out).len(), 8);
        assert_eq!(out.last(), Some(&StreamChunk::Gap { len: 4 }));
        assert_eq!(r.stats().gap_bytes, 6);
        assert!(r.is_finished());
        // A second flush has nothing left to say.
        let mut again = Vec::new();
        r.flush(&mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn forced_gap_when_exceeding_max_buffered_bytes() {
        let mut r = StreamReassembler::new(StreamLimits {
            max_buffered_bytes: 10,
        });
        r.on_syn(0);
        let s = pattern(40);
        feed(&mut r, 1, &s[0..5], 1);
        // Hole at 5..10; hold 10..16 (6 bytes, under the limit).
        assert!(feed(&mut r, 11, &s[10..16], 2).is_empty());
        // Hold 20..26 too: 12 bytes > 10, so the hole at 5..10 is given up.
        let out = feed(&mut r, 21, &s[20..26], 3);
        assert_eq!(out[0], StreamChunk::Gap { len: 5 });
        assert_eq!(
            out[1],
            StreamChunk::Data {
                bytes: Bytes::copy_from_slice(&s[10..16]),
                ts_ns: 2
            }
        );
        assert_eq!(out.len(), 2);
        assert_eq!(r.buffered_bytes(), 6);
        assert_eq!(r.stats().forced_gaps, 1);
        assert_eq!(r.stats().gap_bytes, 5);
        // Filling the remaining hole continues the stream correctly.
        let out = feed(&mut r, 17, &s[16..20], 4);
        assert_eq!(data_only(&out), &s[16..26]);
        // The late bytes of the abandoned hole are old now.
        assert!(feed(&mut r, 6, &s[5..10], 5).is_empty());
        assert_eq!(r.stats().bytes_delivered, 5 + 6 + 10);
    }

    #[test]
    fn oldest_pending_ts_tracks_held_segments() {
        let mut r = reassembler();
        r.on_syn(0);
        assert_eq!(r.oldest_pending_ts(), None);
        feed(&mut r, 1, b"a", 50);
        assert_eq!(r.oldest_pending_ts(), None);
        feed(&mut r, 10, b"j", 300);
        feed(&mut r, 5, b"e", 200);
        assert_eq!(r.oldest_pending_ts(), Some(200));
        feed(&mut r, 2, b"bcd", 400);
        // The ts=200 segment was drained; ts=300 is still held.
        assert_eq!(r.oldest_pending_ts(), Some(300));
        let mut out = Vec::new();
        r.flush(&mut out);
        assert_eq!(r.oldest_pending_ts(), None);
    }

    #[test]
    fn empty_payload_is_noop() {
        let mut r = reassembler();
        let mut out = Vec::new();
        r.on_data(123, Bytes::new(), 1, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.stats(), &StreamStats::default());
        // The empty segment did not anchor the stream.
        assert_eq!(feed(&mut r, 500, b"x", 2)[1..], [StreamChunk::Data { bytes: Bytes::from_static(b"x"), ts_ns: 2 }]);
    }

    #[test]
    fn odd_input_does_not_panic() {
        let mut r = StreamReassembler::new(StreamLimits {
            max_buffered_bytes: 0,
        });
        let mut out = Vec::new();
        r.on_fin(3);
        r.on_data(u32::MAX, Bytes::from(vec![1u8; 100_000]), 0, &mut out);
        r.on_data(1 << 31, Bytes::from_static(b"far"), 0, &mut out);
        r.on_data((1 << 31) - 1, Bytes::from_static(b"far"), 0, &mut out);
        r.on_syn(7);
        r.on_fin(0);
        r.flush(&mut out);
        let total: u64 = rebuild(&out).len() as u64;
        assert_eq!(
            total,
            r.stats().bytes_delivered + r.stats().gap_bytes,
            "every offset accounted once"
        );
    }

    #[test]
    fn stream_longer_than_4gib() {
        // The same 1 MiB buffer is fed repeatedly, so this allocates nothing big.
        const MIB: usize = 1 << 20;
        let chunk = Bytes::from(pattern(MIB));
        let isn = u32::MAX - 100;
        let mut r = reassembler();
        r.on_syn(isn);
        let mut out = Vec::new();
        let mut off: u64 = 0;
        for _ in 0..(5 * 1024) {
            let seq = isn.wrapping_add(1).wrapping_add(off as u32);
            r.on_data(seq, chunk.clone(), 0, &mut out);
            off += MIB as u64;
            out.clear();
        }
        assert_eq!(r.stats().bytes_delivered, 5 << 30);
        // Past 5 GiB, reordering still works.
        let seq = |o: u64| isn.wrapping_add(1).wrapping_add(o as u32);
        r.on_data(seq(off + 3), Bytes::from_static(b"def"), 0, &mut out);
        assert!(out.is_empty());
        r.on_data(seq(off), Bytes::from_static(b"abc"), 0, &mut out);
        assert_eq!(data_only(&out), b"abcdef");
        r.on_fin(seq(off + 6));
        assert!(r.is_finished());
    }

    /// Small deterministic PRNG so the random choices inside one proptest case
    /// come from a single shrinkable seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform-ish in 0..n (n > 0).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = self.below(i + 1);
                v.swap(i, j);
            }
        }
    }

    /// Cut 0..len into consecutive segments of random size.
    fn segment(rng: &mut Rng, len: usize, max_seg: usize) -> Vec<(usize, usize)> {
        let mut segs = Vec::new();
        let mut at = 0;
        while at < len {
            let n = 1 + rng.below(max_seg);
            let end = (at + n).min(len);
            segs.push((at, end));
            at = end;
        }
        segs
    }

    /// Random extra ranges: retransmissions, possibly overlapping segment boundaries.
    fn retransmits(rng: &mut Rng, len: usize, max_seg: usize, count: usize) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        if len == 0 {
            return v;
        }
        for _ in 0..count {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(2 * max_seg)).min(len);
            v.push((a, b));
        }
        v
    }

    fn isn_strategy() -> impl Strategy<Value = u32> {
        prop_oneof![
            any::<u32>(),
            (u32::MAX - 70_000)..=u32::MAX,
            0u32..1000,
        ]
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            prop::collection::vec(any::<u8>(), 0..65536),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn prop_reorder_duplicate_overlap_rebuilds_exactly(
            stream in stream_strategy(),
            isn in isn_strategy(),
            use_syn in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng(seed);
            let max_seg = 1 + rng.below(3000);
            let mut segs = segment(&mut rng, stream.len(), max_seg);
            let extra = rng.below(segs.len() + 1);
            segs.extend(retransmits(&mut rng, stream.len(), max_seg, extra));
            // Exact duplicates of some segments.
            for _ in 0..rng.below(segs.len() + 1) {
                let s = segs[rng.below(segs.len())];
                segs.push(s);
            }
            rng.shuffle(&mut segs);
            let start = isn.wrapping_add(1);
            let mut r = reassembler();
            if use_syn {
                r.on_syn(isn);
            } else if let Some(i) = segs.iter().position(|s| s.0 == 0) {
                // Without a SYN the first segment defines the start of the stream.
                segs.swap(0, i);
            }
            let mut out = Vec::new();
            for &(a, b) in &segs {
                r.on_data(
                    start.wrapping_add(a as u32),
                    Bytes::copy_from_slice(&stream[a..b]),
                    a as u64,
                    &mut out,
                );
            }
            let gap_chunks = out.iter().filter(|c| matches!(c, StreamChunk::Gap { .. })).count();
            prop_assert_eq!(gap_chunks, 0);
            // Without a SYN the start is flagged unknown, once, first.
            if !use_syn && !stream.is_empty() {
                prop_assert_eq!(out.remove(0), StreamChunk::UnknownStart);
            }
            prop_assert_eq!(data_only(&out), stream.clone());
            prop_assert_eq!(r.buffered_bytes(), 0);
            prop_assert_eq!(r.oldest_pending_ts(), None);
            let st = r.stats().clone();
            let fed: usize = segs.iter().map(|(a, b)| b - a).sum();
            prop_assert_eq!(st.bytes_delivered, stream.len() as u64);
            prop_assert_eq!(st.duplicate_bytes, (fed - stream.len()) as u64);
            prop_assert_eq!(st.segments, segs.len() as u64);
            prop_assert_eq!(st.gaps, 0);
            r.on_fin(start.wrapping_add(stream.len() as u32));
            prop_assert!(r.is_finished());
            let mut tail = Vec::new();
            r.flush(&mut tail);
            prop_assert!(tail.is_empty());
        }

        #[test]
        fn prop_holes_then_flush_accounts_every_byte(
            stream in stream_strategy(),
            isn in isn_strategy(),
            seed in any::<u64>(),
            fin_first in any::<bool>(),
        ) {
            let mut rng = Rng(seed);
            let max_seg = 1 + rng.below(3000);
            let mut segs = segment(&mut rng, stream.len(), max_seg);
            let extra = rng.below(segs.len() / 2 + 1);
            segs.extend(retransmits(&mut rng, stream.len(), max_seg, extra));
            // Drop roughly a third.
            segs.retain(|_| rng.below(3) != 0);
            rng.shuffle(&mut segs);

            let mut covered = vec![false; stream.len()];
            for &(a, b) in &segs {
                covered[a..b].iter_mut().for_each(|c| *c = true);
            }

            let start = isn.wrapping_add(1);
            let fin = start.wrapping_add(stream.len() as u32);
            let mut r = reassembler();
            r.on_syn(isn);
            if fin_first {
                r.on_fin(fin);
            }
            let mut out = Vec::new();
            for &(a, b) in &segs {
                r.on_data(
                    start.wrapping_add(a as u32),
                    Bytes::copy_from_slice(&stream[a..b]),
                    0,
                    &mut out,
                );
            }
            if !fin_first {
                r.on_fin(fin);
            }
            r.flush(&mut out);
            prop_assert!(r.is_finished());
            prop_assert_eq!(r.buffered_bytes(), 0);

            let rebuilt = rebuild(&out);
            prop_assert_eq!(rebuilt.len(), stream.len());
            for (i, got) in rebuilt.iter().enumerate() {
                if covered[i] {
                    // With a large limit, every byte we were given must come out.
                    prop_assert_eq!(*got, Some(stream[i]), "offset {}", i);
                } else {
                    prop_assert_eq!(*got, None, "offset {}", i);
                }
            }
            let st = r.stats();
            let missing = covered.iter().filter(|c| !**c).count() as u64;
            prop_assert_eq!(st.gap_bytes, missing);
            prop_assert_eq!(st.bytes_delivered, stream.len() as u64 - missing);
            prop_assert_eq!(st.forced_gaps, 0);
            let gap_chunks = out.iter().filter(|c| matches!(c, StreamChunk::Gap { .. })).count();
            prop_assert_eq!(st.gaps, gap_chunks as u64);
        }

        #[test]
        fn prop_small_limit_bounds_memory_and_accounts_every_byte(
            stream in prop::collection::vec(any::<u8>(), 0..16384),
            isn in isn_strategy(),
            seed in any::<u64>(),
            limit in 0usize..4096,
        ) {
            let mut rng = Rng(seed);
            let max_seg = 1 + rng.below(1500);
            let mut segs = segment(&mut rng, stream.len(), max_seg);
            let extra = rng.below(segs.len() / 2 + 1);
            segs.extend(retransmits(&mut rng, stream.len(), max_seg, extra));
            segs.retain(|_| rng.below(5) != 0);
            rng.shuffle(&mut segs);
            let largest = segs.iter().map(|(a, b)| b - a).max().unwrap_or(0);

            let start = isn.wrapping_add(1);
            let mut r = StreamReassembler::new(StreamLimits { max_buffered_bytes: limit });
            r.on_syn(isn);
            let mut out = Vec::new();
            for &(a, b) in &segs {
                r.on_data(
                    start.wrapping_add(a as u32),
                    Bytes::copy_from_slice(&stream[a..b]),
                    0,
                    &mut out,
                );
                prop_assert!(
                    r.buffered_bytes() <= limit + largest,
                    "buffered {} > limit {} + largest {}", r.buffered_bytes(), limit, largest
                );
            }
            r.on_fin(start.wrapping_add(stream.len() as u32));
            r.flush(&mut out);

            let rebuilt = rebuild(&out);
            prop_assert_eq!(rebuilt.len(), stream.len());
            for (i, got) in rebuilt.iter().enumerate() {
                if let Some(b) = got {
                    prop_assert_eq!(*b, stream[i], "offset {}", i);
                }
            }
            let st = r.stats();
            prop_assert_eq!(st.bytes_delivered + st.gap_bytes, stream.len() as u64);
            prop_assert!(st.forced_gaps <= st.gaps);
        }
    }
}
