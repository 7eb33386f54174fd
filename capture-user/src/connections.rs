//! The table of live TCP connections: routes segments to each direction's
//! reassembler, decides when a connection ends, and bounds memory.
//!
//! Output goes through the [`StreamSink`] seam: in-order stream chunks per
//! connection and direction, plus open/close notices. HTTP framing sits behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Seeded per process (keys come from the network), much cheaper than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use crate::flow::{Direction, FlowKey};
use crate::reassembly::{StreamChunk, StreamLimits, StreamReassembler, StreamStats};
use crate::segment::Segment;

/// Connection number, unique within one agent run (the record layer adds a run id).
pub type ConnectionId = u64;

#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub id: ConnectionId,
    pub flow: FlowKey,
    pub ifindex: u32,
    pub opened_ns: u64,
    /// Whether the connection's SYN was seen (false: joined mid-stream).
    pub saw_syn: bool,
    /// Plaintext read at the TLS library (uprobes), not TCP payload.
    pub tls: bool,
}

/// Hands out connection ids. Tables that feed one HTTP layer (TCP and TLS plaintext)
/// share one, so ids and the record ids made from them never collide.
#[derive(Clone, Debug, Default)]
pub struct ConnectionIds(Arc<AtomicU64>);

impl ConnectionIds {
    fn next(&self) -> ConnectionId {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished with FIN.
    Fin,
    Reset,
    /// No segment for `idle_timeout`.
    Idle,
    /// A new connection (SYN) reused the 4-tuple.
    Reused,
    /// Its plaintext is captured at the TLS library: this (ciphertext) connection ends.
    Tls,
    /// The table was full; the least recently used connection made room.
    Evicted,
    /// The agent is stopping.
    Shutdown,
}

/// Receives reassembled streams. Implemented by the HTTP layer.
pub trait StreamSink {
    fn on_open(&mut self, conn: &ConnectionInfo);
    fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk);
    fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, ts_ns: u64);
}

#[derive(Clone, Copy, Debug)]
pub struct TableLimits {
    pub max_connections: usize,
    pub stream: StreamLimits,
    /// Out-of-order bytes held over all connections; past it, the connection being
    /// fed gives up its holes.
    pub max_total_buffered_bytes: usize,
    /// A connection with no segment for this long is closed.
    pub idle_timeout_ns: u64,
    /// A hole not filled within this long is reported as a gap (retransmissions
    /// normally fill holes within one RTO, ~200 ms).
    pub hole_timeout_ns: u64,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_connections: 65_536,
            stream: StreamLimits::default(),
            max_total_buffered_bytes: 64 * 1024 * 1024,
            idle_timeout_ns: 120_000_000_000,
            hole_timeout_ns: 2_000_000_000,
        }
    }
}

/// Connection-level counters. Stream counters are summed in `streams`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub segments: u64,
    pub connections_opened: u64,
    pub connections_joined_midstream: u64,
    pub closed_fin: u64,
    pub closed_reset: u64,
    pub closed_idle: u64,
    pub closed_reused: u64,
    pub closed_evicted: u64,
    pub closed_shutdown: u64,
    pub closed_tls: u64,
    /// Segments that belonged to no connection and could not open one (bare FIN/RST/ACK).
    pub orphan_segments: u64,
    /// Of `closed_reused`: a segment's sequence number could not belong to the
    /// connection (after its FIN, before its SYN, or far ahead): a new connection on the
    /// same 4-tuple whose SYN was not seen.
    pub reused_without_syn: u64,
    /// Directions closed without their FIN (idle, evicted, reused, shutdown): bytes lost
    /// after the last one seen, if any were sent, are in no stream counter.
    pub unknown_ends: u64,
    pub hole_timeouts: u64,
    pub memory_pressure_flushes: u64,
    /// Stream counters of closed connections.
    pub streams: StreamStats,
}

impl TableStats {
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("segments", self.segments),
            ("connections_opened", self.connections_opened),
            ("connections_joined_midstream", self.connections_joined_midstream),
            ("connections_closed_fin", self.closed_fin),
            ("connections_closed_reset", self.closed_reset),
            ("connections_closed_idle", self.closed_idle),
            ("connections_closed_reused", self.closed_reused),
            ("connections_closed_evicted", self.closed_evicted),
            ("connections_closed_shutdown", self.closed_shutdown),
            ("connections_closed_tls", self.closed_tls),
            ("connections_reused_without_syn", self.reused_without_syn),
            ("orphan_segments", self.orphan_segments),
            ("hole_timeouts", self.hole_timeouts),
            ("memory_pressure_flushes", self.memory_pressure_flushes),
            ("stream_bytes_delivered", self.streams.bytes_delivered),
            ("stream_out_of_order_segments", self.streams.out_of_order_segments),
            ("stream_duplicate_bytes", self.streams.duplicate_bytes),
            ("stream_gaps", self.streams.gaps),
            ("stream_gap_bytes", self.streams.gap_bytes),
            ("stream_skips", self.streams.skips),
            ("stream_skip_bytes", self.streams.skip_bytes),
            ("stream_skipped_bytes_arrived", self.streams.skipped_bytes_arrived),
            ("stream_unknown_starts", self.streams.unknown_starts),
            ("stream_unknown_ends", self.unknown_ends),
        ]
    }
}

fn add_stream_stats(total: &mut StreamStats, s: &StreamStats) {
    total.segments += s.segments;
    total.bytes_delivered += s.bytes_delivered;
    total.out_of_order_segments += s.out_of_order_segments;
    total.duplicate_bytes += s.duplicate_bytes;
    total.gaps += s.gaps;
    total.gap_bytes += s.gap_bytes;
    total.forced_gaps += s.forced_gaps;
    total.skips += s.skips;
    total.skip_bytes += s.skip_bytes;
    total.skipped_bytes_arrived += s.skipped_bytes_arrived;
    total.unknown_starts += s.unknown_starts;
}

struct Connection {
    info: ConnectionInfo,
    streams: [StreamReassembler; 2],
    last_seen_ns: u64,
    /// Client ISN when the SYN was seen, to tell a retransmitted SYN from port reuse.
    client_isn: Option<u32>,
    /// When each direction's offset 0 was seen: its SYN, or its first data when the
    /// SYN was not seen (see [`Connection::jumps_like_a_new_isn`]).
    anchor_ts: [Option<u64>; 2],
}

impl Connection {
    /// The segment belongs to another connection on the same 4-tuple: a server SYN
    /// with another ISN; data or a FIN after this direction's FIN, before its SYN or far
    /// ahead; data that would leave a hole after the other side closed (an HTTP client
    /// sends no new request on a connection the server closed); or a segment that
    /// jumps ahead by as much as the 4-tuple's ISN clock advanced since the SYN.
    fn is_foreign(&self, seg: &Segment) -> bool {
        let stream = &self.streams[seg.direction.index()];
        if seg.syn() && seg.direction == Direction::ServerToClient && !stream.fits_syn(seg.segment_seq) {
            return true;
        }
        // A SYN occupies one sequence number; its payload (TFO) starts after it.
        let first = if seg.syn() { seg.segment_seq.wrapping_add(1) } else { seg.segment_seq };
        if !seg.data.is_empty() {
            let data_seq = if seg.syn() { seg.seq.wrapping_add(1) } else { seg.seq };
            let other_closed = self.streams[1 - seg.direction.index()].saw_fin();
            !stream.accepts(data_seq, seg.data.len())
                || (other_closed && stream.starts_ahead(first))
                || self.jumps_like_a_new_isn(seg, first)
        } else if seg.fin() {
            // A FIN past the last byte seen is normal when the tail was lost; without a
            // SYN to check it against the ISN clock, one after the other side closed is
            // taken as the next connection's.
            let other_closed = self.streams[1 - seg.direction.index()].saw_fin();
            let unanchored = !stream.anchored_by_syn();
            !stream.accepts_fin(if seg.syn() { seg.end_seq().wrapping_add(1) } else { seg.end_seq() })
                || (unanchored && other_closed && stream.starts_ahead(first))
                || self.jumps_like_a_new_isn(seg, first)
        } else {
            false
        }
    }

    /// Linux (RFC 6528) derives a 4-tuple's ISN from a clock that advances by one
    /// every 64 ns: a new connection on the tuple, whose SYN was not seen, starts
    /// about (time since our SYN) / 64 ns ahead of it (for a stream joined without
    /// its SYN, its first seen byte stands in for the SYN). A jump of more than 64 KiB, and
    /// of more than 8 times what the direction carried so far, that lands there is
    /// taken as such a connection. A real loss would need this connection to have sent
    /// about 15.6 MB/s on average since its SYN and then lost far more than it sent.
    fn jumps_like_a_new_isn(&self, seg: &Segment, first: u32) -> bool {
        const SLACK: i128 = 64 << 10;
        let dir = seg.direction.index();
        let (Some(syn_ts), Some((start, next))) = (self.anchor_ts[dir], self.streams[dir].offsets(first)) else {
            return false;
        };
        let clock = |ts: u64| (ts.saturating_sub(syn_ts) / 64) as i128;
        let jump = start - next as i128;
        jump > SLACK.max(8 * next as i128) && start >= clock(self.last_seen_ns) - SLACK && start <= clock(seg.ts_ns) + SLACK
    }
}

pub struct ConnectionTable {
    limits: TableLimits,
    conns: FastMap<FlowKey, Connection>,
    ids: ConnectionIds,
    /// Stamped on every connection's info: this table rebuilds TLS plaintext.
    tls: bool,
    stats: TableStats,
    chunks: Vec<StreamChunk>,
    /// Out-of-order bytes held over all connections, kept by deltas.
    total_buffered: usize,
}

impl ConnectionTable {
    pub fn new(limits: TableLimits) -> Self {
        ConnectionTable {
            limits,
            conns: FastMap::default(),
            ids: ConnectionIds::default(),
            tls: false,
            stats: TableStats::default(),
            chunks: Vec::new(),
            total_buffered: 0,
        }
    }

    /// A table whose connections carry TLS plaintext (marked `tls`), taking ids from
    /// `ids` (shared with the TCP table feeding the same HTTP layer).
    pub fn for_tls(limits: TableLimits, ids: ConnectionIds) -> Self {
        ConnectionTable { ids, tls: true, ..ConnectionTable::new(limits) }
    }

    /// This table's id source, to share with another table (see [`ConnectionIds`]).
    pub fn ids(&self) -> ConnectionIds {
        self.ids.clone()
    }

    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Out-of-order bytes held over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.total_buffered
    }

    pub fn on_segment(&mut self, seg: Segment, sink: &mut dyn StreamSink) {
        /// What the 4-tuple of a segment holds.
        #[derive(PartialEq, Eq)]
        enum Known {
            No,
            Same,
            /// A connection the segment's new client SYN replaces.
            ReusedWithSyn,
            /// A connection the segment cannot belong to.
            Foreign,
        }

        self.stats.segments += 1;
        let client_syn = seg.syn() && seg.direction == Direction::ClientToServer;

        // One lookup decides (this runs for every segment).
        let known = match self.conns.get(&seg.flow) {
            None => Known::No,
            // A client SYN with a new ISN on a known 4-tuple is a new connection.
            Some(conn) if client_syn && conn.client_isn != Some(seg.segment_seq) => Known::ReusedWithSyn,
            // A segment that cannot belong to the connection on this 4-tuple starts a new
            // one whose client SYN was not seen: fed to the old one, its bytes would become
            // a phantom gap (a reused 4-tuple's ISN is only ~16 MB/s ahead on Linux).
            Some(conn) if conn.is_foreign(&seg) => Known::Foreign,
            Some(_) => Known::Same,
        };
        if known == Known::Foreign {
            self.stats.reused_without_syn += 1;
        }
        if matches!(known, Known::ReusedWithSyn | Known::Foreign) {
            self.close(seg.flow, CloseReason::Reused, seg.ts_ns, sink);
        }
        if known != Known::Same {
            if !client_syn && seg.data.is_empty() && !seg.syn() {
                self.stats.orphan_segments += 1;
                return;
            }
            self.open(&seg, sink);
        }
        let Some(conn) = self.conns.get_mut(&seg.flow) else { return };
        conn.last_seen_ns = conn.last_seen_ns.max(seg.ts_ns);
        let dir = seg.direction;
        let stream = &mut conn.streams[dir.index()];
        if stream.offsets(seg.segment_seq).is_none() && (seg.syn() || !seg.data.is_empty()) {
            conn.anchor_ts[dir.index()] = Some(seg.ts_ns);
        }
        if seg.syn() {
            stream.on_syn(seg.segment_seq);
            if client_syn {
                conn.client_isn = Some(seg.segment_seq);
            }
        }
        let last_chunk = seg.is_last_chunk();
        let (syn, fin, rst, end_seq, ts) = (seg.syn(), seg.fin(), seg.rst(), seg.end_seq(), seg.ts_ns);
        // A SYN occupies one sequence number; its payload (TFO) starts after it.
        let data_seq = if syn { seg.seq.wrapping_add(1) } else { seg.seq };
        let before = stream.buffered_bytes();
        if !seg.data.is_empty() {
            stream.on_data(data_seq, seg.data, ts, &mut self.chunks);
        }
        if last_chunk && fin {
            stream.on_fin(if syn { end_seq.wrapping_add(1) } else { end_seq });
        }
        self.total_buffered = self.total_buffered + stream.buffered_bytes() - before;
        if self.total_buffered > self.limits.max_total_buffered_bytes && stream.buffered_bytes() > 0 {
            self.stats.memory_pressure_flushes += 1;
            self.total_buffered -= stream.buffered_bytes();
            stream.flush(&mut self.chunks);
        }
        for chunk in self.chunks.drain(..) {
            sink.on_chunk(&conn.info, dir, chunk);
        }
        if last_chunk && rst {
            self.close(seg.flow, CloseReason::Reset, ts, sink);
        } else if conn.streams[0].is_finished() && conn.streams[1].is_finished() {
            self.close(seg.flow, CloseReason::Fin, ts, sink);
        }
    }

    fn open(&mut self, seg: &Segment, sink: &mut dyn StreamSink) {
        if self.conns.len() >= self.limits.max_connections {
            let oldest = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last_seen_ns)
                .map(|(k, _)| *k);
            if let Some(key) = oldest {
                self.close(key, CloseReason::Evicted, seg.ts_ns, sink);
            }
        }
        let saw_syn = seg.syn();
        let info = ConnectionInfo {
            id: self.ids.next(),
            flow: seg.flow,
            ifindex: seg.ifindex,
            opened_ns: seg.ts_ns,
            saw_syn,
            tls: self.tls,
        };
        self.stats.connections_opened += 1;
        if !saw_syn {
            self.stats.connections_joined_midstream += 1;
        }
        sink.on_open(&info);
        let limits = self.limits.stream;
        self.conns.insert(
            seg.flow,
            Connection {
                info,
                streams: [StreamReassembler::new(limits), StreamReassembler::new(limits)],
                last_seen_ns: seg.ts_ns,
                client_isn: None,
                anchor_ts: [None; 2],
            },
        );
    }

    /// Closes the connection of `key` (if any), delivering what it buffered.
    pub fn close(&mut self, key: FlowKey, reason: CloseReason, ts_ns: u64, sink: &mut dyn StreamSink) {
        let Some(mut conn) = self.conns.remove(&key) else { return };
        if reason != CloseReason::Reset {
            self.stats.unknown_ends += conn.streams.iter().filter(|s| !s.saw_fin()).count() as u64;
        }
        for dir in [Direction::ClientToServer, Direction::ServerToClient] {
            self.total_buffered -= conn.streams[dir.index()].buffered_bytes();
            conn.streams[dir.index()].flush(&mut self.chunks);
            for chunk in self.chunks.drain(..) {
                sink.on_chunk(&conn.info, dir, chunk);
            }
            add_stream_stats(&mut self.stats.streams, conn.streams[dir.index()].stats());
        }
        match reason {
            CloseReason::Fin => self.stats.closed_fin += 1,
            CloseReason::Reset => self.stats.closed_reset += 1,
            CloseReason::Idle => self.stats.closed_idle += 1,
            CloseReason::Reused => self.stats.closed_reused += 1,
            CloseReason::Evicted => self.stats.closed_evicted += 1,
            CloseReason::Shutdown => self.stats.closed_shutdown += 1,
            CloseReason::Tls => self.stats.closed_tls += 1,
        }
        sink.on_close(&conn.info, reason, ts_ns);
    }

    /// The consumer does not want the next `len` bytes of `dir` on connection `id`
    /// (see [`StreamReassembler::skip`]); what follows them is handed on at once if held.
    /// Returns the skipped range's sequence numbers, or `None` if the connection is gone.
    pub fn skip(
        &mut self,
        flow: FlowKey,
        id: ConnectionId,
        dir: Direction,
        len: u64,
        sink: &mut dyn StreamSink,
    ) -> Option<(u32, u32)> {
        let conn = self.conns.get_mut(&flow).filter(|c| c.info.id == id)?;
        let stream = &mut conn.streams[dir.index()];
        let before = stream.buffered_bytes();
        let range = stream.skip(len, &mut self.chunks);
        self.total_buffered = self.total_buffered + stream.buffered_bytes() - before;
        for chunk in self.chunks.drain(..) {
            sink.on_chunk(&conn.info, dir, chunk);
        }
        if conn.streams[0].is_finished() && conn.streams[1].is_finished() {
            let ts = conn.last_seen_ns;
            self.close(flow, CloseReason::Fin, ts, sink);
        }
        range
    }

    /// Periodic housekeeping: closes idle connections and gives up on old holes.
    pub fn on_tick(&mut self, now_ns: u64, sink: &mut dyn StreamSink) {
        let idle: Vec<FlowKey> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) >= self.limits.idle_timeout_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.close(key, CloseReason::Idle, now_ns, sink);
        }
        let hole_timeout = self.limits.hole_timeout_ns;
        let mut finished = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            for dir in [Direction::ClientToServer, Direction::ServerToClient] {
                let stream = &mut conn.streams[dir.index()];
                let stale = stream
                    .oldest_pending_ts()
                    .is_some_and(|ts| now_ns.saturating_sub(ts) >= hole_timeout);
                if stale {
                    self.stats.hole_timeouts += 1;
                    self.total_buffered -= stream.buffered_bytes();
                    stream.flush(&mut self.chunks);
                    for chunk in self.chunks.drain(..) {
                        sink.on_chunk(&conn.info, dir, chunk);
                    }
                }
            }
            if conn.streams[0].is_finished() && conn.streams[1].is_finished() {
                finished.push(*key);
            }
        }
        for key in finished {
            self.close(key, CloseReason::Fin, now_ns, sink);
        }
    }

    /// Closes every connection (agent shutdown), delivering what is buffered.
    pub fn close_all(&mut self, now_ns: u64, sink: &mut dyn StreamSink) {
        let keys: Vec<FlowKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, CloseReason::Shutdown, now_ns, sink);
        }
    }

    /// Stream counters of closed and live connections together.
    pub fn stream_stats_total(&self) -> StreamStats {
        let mut total = self.stats.streams.clone();
        for conn in self.conns.values() {
            add_stream_stats(&mut total, conn.streams[0].stats());
            add_stream_stats(&mut total, conn.streams[1].stats());
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use capture_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

    /// Records what the table hands on.
    #[derive(Default)]
    struct Recorder {
        opened: Vec<ConnectionId>,
        data: HashMap<(ConnectionId, usize), Vec<u8>>,
        gaps: HashMap<(ConnectionId, usize), u64>,
        skips: HashMap<(ConnectionId, usize), u64>,
        unknown_starts: HashMap<(ConnectionId, usize), u64>,
        closed: Vec<(ConnectionId, CloseReason)>,
    }

    impl StreamSink for Recorder {
        fn on_open(&mut self, conn: &ConnectionInfo) {
            self.opened.push(conn.id);
        }
        fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
            match chunk {
                StreamChunk::Data { bytes, .. } => {
                    self.data.entry((conn.id, dir.index())).or_default().extend_from_slice(&bytes)
                }
                StreamChunk::Gap { len } => *self.gaps.entry((conn.id, dir.index())).or_default() += len,
                StreamChunk::Skip { len } => *self.skips.entry((conn.id, dir.index())).or_default() += len,
                StreamChunk::UnknownStart => *self.unknown_starts.entry((conn.id, dir.index())).or_default() += 1,
            }
        }
        fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, _ts: u64) {
            self.closed.push((conn.id, reason));
        }
    }

    fn flow(port: u16) -> FlowKey {
        FlowKey::new("10.0.0.1".parse().unwrap(), port, "10.0.0.2".parse().unwrap(), 80)
    }

    fn seg(port: u16, dir: Direction, seq: u32, flags: u8, data: &'static [u8], ts: u64) -> Segment {
        Segment {
            flow: flow(port),
            direction: dir,
            seq,
            segment_seq: seq,
            segment_len: data.len() as u32,
            flags,
            ts_ns: ts,
            ifindex: 1,
            tls: false,
            data: Bytes::from_static(data),
        }
    }

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    /// SYN, SYN-ACK, request, response, FIN both ways.
    fn full_connection(t: &mut ConnectionTable, r: &mut Recorder, port: u16, isn: u32) {
        t.on_segment(seg(port, C2S, isn, TCP_SYN, b"", 1), r);
        t.on_segment(seg(port, S2C, 5000, TCP_SYN | TCP_ACK, b"", 2), r);
        t.on_segment(seg(port, C2S, isn.wrapping_add(1), TCP_ACK, b"GET / HTTP/1.1\r\n\r\n", 3), r);
        t.on_segment(seg(port, S2C, 5001, TCP_ACK, b"HTTP/1.1 200 OK\r\n\r\n", 4), r);
        t.on_segment(seg(port, C2S, isn.wrapping_add(19), TCP_FIN | TCP_ACK, b"", 5), r);
        t.on_segment(seg(port, S2C, 5020, TCP_FIN | TCP_ACK, b"", 6), r);
    }

    /// Pod A -> pod B on one node: requests are emitted by A's veth, responses by B's
    /// (each direction's owner hook). Direction, not interface, makes the connection.
    #[test]
    fn directions_seen_on_different_interfaces_are_one_connection() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        let on = |mut s: Segment, ifindex: u32| {
            s.ifindex = ifindex;
            s
        };
        t.on_segment(on(seg(7, C2S, 100, TCP_SYN, b"", 1), 5), &mut r);
        t.on_segment(on(seg(7, S2C, 900, TCP_SYN | TCP_ACK, b"", 2), 6), &mut r);
        t.on_segment(on(seg(7, C2S, 101, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n", 3), 5), &mut r);
        t.on_segment(on(seg(7, S2C, 901, TCP_ACK, b"HTTP/1.1 200 OK\r\n\r\n", 4), 6), &mut r);
        t.on_segment(on(seg(7, C2S, 119, TCP_FIN | TCP_ACK, b"", 5), 5), &mut r);
        t.on_segment(on(seg(7, S2C, 920, TCP_FIN | TCP_ACK, b"", 6), 6), &mut r);
        assert_eq!(r.opened, [1]);
        assert_eq!(r.closed, [(1, CloseReason::Fin)]);
        assert_eq!(r.data[&(1, 0)], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r.data[&(1, 1)], b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn fin_both_ways_closes_with_all_bytes_delivered() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        full_connection(&mut t, &mut r, 1000, u32::MAX - 5);
        assert_eq!(r.closed, vec![(1, CloseReason::Fin)]);
        assert_eq!(r.data[&(1, 0)], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r.data[&(1, 1)], b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(r.gaps.is_empty());
        assert!(t.is_empty());
        assert_eq!(t.stats().closed_fin, 1);
    }

    #[test]
    fn fin_before_late_data_waits_for_the_data() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 100, TCP_SYN, b"", 1), &mut r);
        t.on_segment(seg(1, S2C, 900, TCP_SYN | TCP_ACK, b"", 1), &mut r);
        // FIN (seq 104) arrives before the 3 bytes it follows.
        t.on_segment(seg(1, C2S, 104, TCP_FIN, b"", 2), &mut r);
        t.on_segment(seg(1, S2C, 901, TCP_FIN, b"", 2), &mut r);
        assert!(r.closed.is_empty(), "closed before the data came");
        t.on_segment(seg(1, C2S, 101, TCP_ACK, b"abc", 3), &mut r);
        assert_eq!(r.closed, vec![(1, CloseReason::Fin)]);
        assert_eq!(r.data[&(1, 0)], b"abc");
    }

    #[test]
    fn rst_closes_and_flushes_holes_as_gaps() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 0, TCP_SYN, b"", 1), &mut r);
        t.on_segment(seg(1, C2S, 1, 0, b"ab", 2), &mut r);
        t.on_segment(seg(1, C2S, 6, 0, b"xy", 3), &mut r); // hole of 3
        t.on_segment(seg(1, S2C, 77, TCP_RST, b"", 4), &mut r);
        assert_eq!(r.closed, vec![(1, CloseReason::Reset)]);
        assert_eq!(r.data[&(1, 0)], b"abxy");
        assert_eq!(r.gaps[&(1, 0)], 3);
        assert_eq!(t.buffered_bytes(), 0);
    }

    #[test]
    fn new_syn_on_same_tuple_starts_a_new_connection() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 10, TCP_SYN, b"", 1), &mut r);
        t.on_segment(seg(1, C2S, 11, 0, b"one", 2), &mut r);
        // A retransmitted SYN (same ISN) is not a new connection.
        t.on_segment(seg(1, C2S, 10, TCP_SYN, b"", 3), &mut r);
        assert_eq!(r.opened, vec![1]);
        t.on_segment(seg(1, C2S, 5000, TCP_SYN, b"", 4), &mut r);
        t.on_segment(seg(1, C2S, 5001, 0, b"two", 5), &mut r);
        assert_eq!(r.opened, vec![1, 2]);
        assert_eq!(r.closed, vec![(1, CloseReason::Reused)]);
        assert_eq!(r.data[&(2, 0)], b"two");
    }

    #[test]
    fn idle_connections_close_and_old_holes_become_gaps() {
        let limits = TableLimits { idle_timeout_ns: 1_000, hole_timeout_ns: 100, ..TableLimits::default() };
        let mut t = ConnectionTable::new(limits);
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 0, TCP_SYN, b"", 0), &mut r);
        t.on_segment(seg(1, C2S, 1, 0, b"ab", 10), &mut r);
        t.on_segment(seg(1, C2S, 5, 0, b"ef", 20), &mut r);
        t.on_tick(50, &mut r);
        assert!(!r.gaps.contains_key(&(1, 0)), "hole given up too early");
        t.on_tick(200, &mut r);
        assert_eq!(r.gaps[&(1, 0)], 2);
        assert_eq!(r.data[&(1, 0)], b"abef");
        assert_eq!(t.stats().hole_timeouts, 1);
        t.on_tick(2_000, &mut r);
        assert_eq!(r.closed, vec![(1, CloseReason::Idle)]);
    }

    /// Issue 10, finding 1: a 4-tuple reused by a new connection whose SYN was lost
    /// fed the new connection's bytes to the old one: counted as a gap of up to 2 GiB
    /// that never happened (or as duplicates). They start a new connection instead.
    #[test]
    fn new_connection_without_syn_on_a_reused_tuple_is_not_a_phantom_gap() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 1000, TCP_SYN, b"", 1), &mut r);
        t.on_segment(seg(1, S2C, 5000, TCP_SYN | TCP_ACK, b"", 1), &mut r);
        t.on_segment(seg(1, C2S, 1001, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n", 2), &mut r);
        t.on_segment(seg(1, S2C, 5001, TCP_FIN | TCP_ACK, b"HTTP/1.1 200 OK\r\n\r\n", 3), &mut r);
        // The client's FIN and the next connection's SYN were lost: its data comes
        // with other sequence numbers (after the server's FIN, and far ahead).
        t.on_segment(seg(1, C2S, 900_000_000, TCP_ACK, b"GET /new HTTP/1.1\r\n\r\n", 4), &mut r);
        t.on_segment(seg(1, S2C, 77_000, TCP_ACK, b"HTTP/1.1 204 No\r\n\r\n", 5), &mut r);
        assert_eq!(r.closed, vec![(1, CloseReason::Reused)]);
        assert_eq!(r.data[&(2, 0)], b"GET /new HTTP/1.1\r\n\r\n");
        assert_eq!(r.data[&(2, 1)], b"HTTP/1.1 204 No\r\n\r\n");
        assert_eq!((r.unknown_starts[&(2, 0)], r.unknown_starts[&(2, 1)]), (1, 1));
        assert!(r.gaps.is_empty(), "no phantom gap: {:?}", r.gaps);
        t.close_all(6, &mut r);
        assert_eq!(t.stats().reused_without_syn, 1);
        assert_eq!(t.stats().streams.gap_bytes, 0);
        assert_eq!(t.stats().streams.duplicate_bytes, 0);
        assert_eq!(t.stats().streams.unknown_starts, 2);
        assert_eq!(t.stats().unknown_ends, 3, "the old connection's client side, both of the new one's");
        // Linux puts a reused 4-tuple's ISN only ~16 MB/s ahead: after the server closed,
        // a request that would leave a hole is the next connection's.
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        t.on_segment(seg(3, C2S, 1000, TCP_SYN, b"", 1), &mut r);
        t.on_segment(seg(3, C2S, 1001, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n", 2), &mut r);
        t.on_segment(seg(3, S2C, 5000, TCP_SYN | TCP_ACK, b"", 2), &mut r);
        t.on_segment(seg(3, S2C, 5001, TCP_FIN | TCP_ACK, b"HTTP/1.1 200 OK\r\n\r\n", 3), &mut r);
        t.on_segment(seg(3, C2S, 11_834_000, TCP_ACK, b"GET /next HTTP/1.1\r\n\r\n", 4), &mut r);
        assert_eq!(t.stats().reused_without_syn, 1);
        // ... but a FIN past a lost tail is this connection's, even after the other FIN.
        t.on_segment(seg(5, C2S, 1000, TCP_SYN, b"", 5), &mut r);
        t.on_segment(seg(5, S2C, 7000, TCP_SYN | TCP_ACK, b"", 5), &mut r);
        t.on_segment(seg(5, S2C, 7001, TCP_FIN | TCP_ACK, b"", 5), &mut r);
        t.on_segment(seg(5, C2S, 1500, TCP_FIN | TCP_ACK, b"", 5), &mut r);
        assert_eq!(t.stats().reused_without_syn, 1);
        // A FIN (or data) as far ahead as the ISN clock (1 per 64 ns) went since the
        // SYN is the next connection's.
        t.on_segment(seg(6, C2S, 1000, TCP_SYN, b"", 1_000), &mut r);
        t.on_segment(seg(6, C2S, 1001, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n", 2_000), &mut r);
        t.on_segment(seg(6, C2S, 1001 + 3_000_000, TCP_FIN | TCP_ACK, b"", 1_000 + 64 * 3_000_000), &mut r);
        assert_eq!(t.stats().reused_without_syn, 2);
        // Not a connection that carried far more than the jump: a real loss.
        t.on_segment(seg(7, C2S, 1000, TCP_SYN, b"", 1_000), &mut r);
        let mut big = seg(7, C2S, 1001, TCP_ACK, b"", 2_000);
        big.data = Bytes::from(vec![b'x'; 2_000_000]);
        big.segment_len = 2_000_000;
        t.on_segment(big, &mut r);
        t.on_segment(seg(7, C2S, 1001 + 3_000_000, TCP_ACK, b"more", 1_000 + 64 * 3_000_000), &mut r);
        assert_eq!(t.stats().reused_without_syn, 2);
        // A server SYN with another ISN is a new connection too (its client SYN was lost).
        t.on_segment(seg(4, C2S, 1000, TCP_SYN, b"", 6), &mut r);
        t.on_segment(seg(4, S2C, 5000, TCP_SYN | TCP_ACK, b"", 6), &mut r);
        t.on_segment(seg(4, S2C, 5000, TCP_SYN | TCP_ACK, b"", 7), &mut r);
        assert_eq!(t.stats().reused_without_syn, 2, "a retransmitted SYN-ACK is the same connection");
        t.on_segment(seg(4, S2C, 9_000_000, TCP_SYN | TCP_ACK, b"", 8), &mut r);
        assert_eq!(t.stats().reused_without_syn, 3);
        t.close_all(9, &mut r);
        assert_eq!(t.stats().streams.gap_bytes, 499 + 1_000_000, "only the real losses: port 5's tail, port 7's jump");
        // Data before the SYN is another connection's too.
        let mut t = ConnectionTable::new(TableLimits::default());
        t.on_segment(seg(2, C2S, 3_000_000_000, TCP_SYN, b"", 1), &mut r);
        t.on_segment(seg(2, C2S, 1_000_000, TCP_ACK, b"GET", 2), &mut r);
        assert_eq!(t.stats().reused_without_syn, 1);
    }

    #[test]
    fn mid_stream_join_and_orphans_are_counted() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        t.on_segment(seg(1, S2C, 40, TCP_FIN, b"", 1), &mut r);
        assert_eq!(t.stats().orphan_segments, 1);
        assert!(r.opened.is_empty());
        t.on_segment(seg(1, C2S, 1234, TCP_ACK, b"GET", 2), &mut r);
        assert_eq!(t.stats().connections_joined_midstream, 1);
        assert_eq!(r.data[&(1, 0)], b"GET");
    }

    #[test]
    fn full_table_evicts_least_recently_active() {
        let limits = TableLimits { max_connections: 2, ..TableLimits::default() };
        let mut t = ConnectionTable::new(limits);
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 0, TCP_SYN, b"", 10), &mut r);
        t.on_segment(seg(2, C2S, 0, TCP_SYN, b"", 5), &mut r);
        t.on_segment(seg(3, C2S, 0, TCP_SYN, b"", 20), &mut r);
        assert_eq!(r.closed, vec![(2, CloseReason::Evicted)]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn total_memory_budget_forces_gaps_instead_of_growing() {
        let limits = TableLimits { max_total_buffered_bytes: 4, ..TableLimits::default() };
        let mut t = ConnectionTable::new(limits);
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 0, TCP_SYN, b"", 0), &mut r);
        t.on_segment(seg(1, C2S, 10, 0, b"0123456789", 1), &mut r);
        assert_eq!(t.buffered_bytes(), 0);
        assert_eq!(t.stats().memory_pressure_flushes, 1);
        assert_eq!(r.gaps[&(1, 0)], 9);
        assert_eq!(r.data[&(1, 0)], b"0123456789");
    }

    #[test]
    fn large_segment_chunks_apply_fin_after_last_chunk() {
        let mut t = ConnectionTable::new(TableLimits::default());
        let mut r = Recorder::default();
        t.on_segment(seg(1, C2S, 0, TCP_SYN, b"", 0), &mut r);
        t.on_segment(seg(1, S2C, 0, TCP_SYN, b"", 0), &mut r);
        t.on_segment(seg(1, S2C, 1, TCP_FIN, b"", 0), &mut r);
        // One 6-byte segment with FIN, delivered as two chunks (second first).
        let mut second = seg(1, C2S, 4, TCP_FIN, b"def", 1);
        second.segment_seq = 1;
        second.segment_len = 6;
        let mut first = seg(1, C2S, 1, TCP_FIN, b"abc", 1);
        first.segment_len = 6;
        t.on_segment(second, &mut r);
        assert!(r.closed.is_empty());
        t.on_segment(first, &mut r);
        assert_eq!(r.data[&(1, 0)], b"abcdef");
        assert_eq!(r.closed, vec![(1, CloseReason::Fin)]);
    }
}
