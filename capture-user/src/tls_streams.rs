//! TLS on the userspace side: plaintext connections from the uprobes, and the
//! ciphertext the classifiers saw of TLS connections.
//!
//! Plaintext segments ([`Segment::tls`]) carry synthetic sequence numbers (a start per
//! connection plus the plaintext offset per direction), so a second [`ConnectionTable`]
//! rebuilds them exactly like TCP streams, lost events becoming counted gaps, and hands
//! them to the same HTTP layer. It shares connection ids with the TCP table; its
//! connections are marked `tls` (records say `tls=1`).
//!
//! The classifiers emit a TLS connection's first segments (SYN, ClientHello, ...) before
//! the server's first SSL call tells the kernel that the flow is TLS; from then on the
//! kernel drops its ciphertext. Here, with TLS capture on:
//! - a TCP-path connection whose client bytes start with a TLS record is counted as TLS
//!   ciphertext (`tls_ciphertext_connections`/`_bytes`), not as non-HTTP, and none of
//!   its bytes reach the HTTP framer (also when no plaintext is captured for it, e.g. a
//!   server with statically linked TLS);
//! - when a flow's plaintext connection opens, its ciphertext connection is closed
//!   (`connections_closed_tls`);
//! - TCP-path segments of a flow whose plaintext connection is open (emitted while the
//!   kernel's flow map was being updated) are dropped and counted.

use std::collections::{HashMap, HashSet};

use crate::connections::{CloseReason, ConnectionId, ConnectionIds, ConnectionInfo, ConnectionTable, StreamSink, TableLimits, TableStats};
use crate::flow::{Direction, FlowKey};
use crate::reassembly::StreamChunk;
use crate::segment::Segment;

/// TLS counters of the userspace pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// TCP-path connections recognised as TLS by their first client bytes.
    pub ciphertext_connections: u64,
    /// Ciphertext bytes that reached userspace (before the kernel knew the flow).
    pub ciphertext_bytes: u64,
    /// TCP-path segments of flows whose plaintext is captured, dropped here.
    pub ciphertext_segments_dropped: u64,
    /// The plaintext connection table.
    pub plaintext: TableStats,
}

impl TlsStats {
    /// `name=value` pairs, all prefixed `tls_`.
    pub fn fields(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("tls_ciphertext_connections".to_string(), self.ciphertext_connections),
            ("tls_ciphertext_bytes".to_string(), self.ciphertext_bytes),
            ("tls_ciphertext_segments_dropped".to_string(), self.ciphertext_segments_dropped),
        ];
        out.extend(self.plaintext.fields().into_iter().map(|(k, v)| (format!("tls_{k}"), v)));
        out
    }
}

/// Whether the first bytes a client sent are a TLS record header: content type
/// change_cipher_spec/alert/handshake/application_data (20-23) and major version 3.
/// No HTTP message starts with these bytes (methods are tokens).
pub fn starts_with_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(20..=23)) && bytes.get(1).is_none_or(|&v| v == 3)
}

/// Plaintext connections and the TCP-path view of TLS connections.
pub struct TlsStreams {
    table: ConnectionTable,
    /// Flows whose plaintext connection is open.
    live: HashSet<FlowKey>,
    /// TCP-path connections judged by their first client bytes: true = TLS ciphertext.
    judged: HashMap<ConnectionId, bool>,
    /// Plaintext connections opened during the current call (their ciphertext
    /// connections are closed after it).
    opened: Vec<FlowKey>,
    stats: TlsStats,
}

impl TlsStreams {
    /// `ids`: the TCP table's id source (see [`ConnectionTable::ids`]).
    pub fn new(limits: TableLimits, ids: ConnectionIds) -> Self {
        TlsStreams {
            table: ConnectionTable::for_tls(limits, ids),
            live: HashSet::new(),
            judged: HashMap::new(),
            opened: Vec::new(),
            stats: TlsStats::default(),
        }
    }

    /// Routes a segment: plaintext to the TLS table, ciphertext of live TLS flows
    /// nowhere (counted), everything else to the TCP table through the ciphertext filter.
    pub fn on_segment(&mut self, seg: Segment, tcp: &mut ConnectionTable, sink: &mut dyn StreamSink) {
        let ts = seg.ts_ns;
        if seg.tls {
            let mut plain = Plaintext { inner: sink, live: &mut self.live, opened: &mut self.opened };
            self.table.on_segment(seg, &mut plain);
            for flow in std::mem::take(&mut self.opened) {
                let mut filter = Ciphertext { judged: &mut self.judged, stats: &mut self.stats, inner: sink };
                tcp.close(flow, CloseReason::Tls, ts, &mut filter);
            }
            return;
        }
        // A client SYN starts a new connection on the tuple: not known to be TLS yet.
        let new_connection = seg.syn() && seg.direction == Direction::ClientToServer;
        if self.live.contains(&seg.flow) && !new_connection {
            self.stats.ciphertext_segments_dropped += 1;
            self.stats.ciphertext_bytes += seg.data.len() as u64;
            return;
        }
        let mut filter = Ciphertext { judged: &mut self.judged, stats: &mut self.stats, inner: sink };
        tcp.on_segment(seg, &mut filter);
    }

    /// Periodic housekeeping of both tables.
    pub fn on_tick(&mut self, now_ns: u64, tcp: &mut ConnectionTable, sink: &mut dyn StreamSink) {
        let mut filter = Ciphertext { judged: &mut self.judged, stats: &mut self.stats, inner: sink };
        tcp.on_tick(now_ns, &mut filter);
        let mut plain = Plaintext { inner: sink, live: &mut self.live, opened: &mut self.opened };
        self.table.on_tick(now_ns, &mut plain);
        self.opened.clear();
    }

    /// Closes every connection of both tables (agent shutdown).
    pub fn close_all(&mut self, now_ns: u64, tcp: &mut ConnectionTable, sink: &mut dyn StreamSink) {
        let mut filter = Ciphertext { judged: &mut self.judged, stats: &mut self.stats, inner: sink };
        tcp.close_all(now_ns, &mut filter);
        let mut plain = Plaintext { inner: sink, live: &mut self.live, opened: &mut self.opened };
        self.table.close_all(now_ns, &mut plain);
        self.opened.clear();
    }

    pub fn stats(&self) -> TlsStats {
        let mut stats = self.stats.clone();
        stats.plaintext = self.table.stats().clone();
        stats.plaintext.streams = self.table.stream_stats_total();
        stats
    }
}

/// Between the plaintext table and the HTTP layer: keeps track of live plaintext flows.
struct Plaintext<'a> {
    inner: &'a mut dyn StreamSink,
    live: &'a mut HashSet<FlowKey>,
    opened: &'a mut Vec<FlowKey>,
}

impl StreamSink for Plaintext<'_> {
    fn on_open(&mut self, conn: &ConnectionInfo) {
        self.live.insert(conn.flow);
        self.opened.push(conn.flow);
        self.inner.on_open(conn);
    }
    fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
        self.inner.on_chunk(conn, dir, chunk);
    }
    fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, ts_ns: u64) {
        self.live.remove(&conn.flow);
        self.inner.on_close(conn, reason, ts_ns);
    }
}

/// Between the TCP table and the HTTP layer: keeps TLS ciphertext from the framer.
struct Ciphertext<'a> {
    judged: &'a mut HashMap<ConnectionId, bool>,
    stats: &'a mut TlsStats,
    inner: &'a mut dyn StreamSink,
}

impl StreamSink for Ciphertext<'_> {
    fn on_open(&mut self, conn: &ConnectionInfo) {
        self.inner.on_open(conn);
    }
    fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
        let tls = match (self.judged.get(&conn.id), &chunk) {
            (Some(&tls), _) => tls,
            (None, StreamChunk::Data { bytes, .. }) if dir == Direction::ClientToServer => {
                let tls = starts_with_tls_record(bytes);
                self.judged.insert(conn.id, tls);
                self.stats.ciphertext_connections += tls as u64;
                tls
            }
            _ => false,
        };
        if !tls {
            self.inner.on_chunk(conn, dir, chunk);
        } else if let StreamChunk::Data { bytes, .. } = chunk {
            self.stats.ciphertext_bytes += bytes.len() as u64;
        }
    }
    fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, ts_ns: u64) {
        self.judged.remove(&conn.id);
        self.inner.on_close(conn, reason, ts_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use capture_common::{TCP_ACK, TCP_FIN, TCP_SYN};

    /// What reaches the HTTP layer.
    #[derive(Default)]
    struct Recorder {
        opened: Vec<ConnectionInfo>,
        data: HashMap<(ConnectionId, usize), Vec<u8>>,
        gaps: HashMap<(ConnectionId, usize), u64>,
        closed: Vec<(ConnectionId, CloseReason)>,
    }

    impl StreamSink for Recorder {
        fn on_open(&mut self, conn: &ConnectionInfo) {
            self.opened.push(conn.clone());
        }
        fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
            match chunk {
                StreamChunk::Data { bytes, .. } => self.data.entry((conn.id, dir.index())).or_default().extend_from_slice(&bytes),
                StreamChunk::Gap { len } | StreamChunk::Skip { len } => *self.gaps.entry((conn.id, dir.index())).or_default() += len,
                StreamChunk::UnknownStart => {}
            }
        }
        fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, _ts: u64) {
            self.closed.push((conn.id, reason));
        }
    }

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    fn flow() -> FlowKey {
        FlowKey::new("10.0.0.1".parse().unwrap(), 40000, "10.0.0.2".parse().unwrap(), 8443)
    }

    fn seg(tls: bool, dir: Direction, seq: u32, flags: u8, data: &[u8]) -> Segment {
        Segment {
            flow: flow(),
            direction: dir,
            seq,
            segment_seq: seq,
            segment_len: data.len() as u32,
            flags,
            ts_ns: 1,
            ifindex: if tls { 0 } else { 3 },
            tls,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn setup() -> (TlsStreams, ConnectionTable, Recorder) {
        let tcp = ConnectionTable::new(TableLimits::default());
        let tls = TlsStreams::new(TableLimits::default(), tcp.ids());
        (tls, tcp, Recorder::default())
    }

    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];

    /// The classifiers' view (SYN, ClientHello) then the uprobes' plaintext: the
    /// ciphertext never reaches the framer, its connection is closed when the plaintext
    /// one opens, a late ciphertext segment is dropped, and the plaintext is delivered
    /// whole on a connection of its own, marked TLS, ending at SSL_free.
    #[test]
    fn ciphertext_is_kept_from_the_framer_and_plaintext_gets_its_own_connection() {
        let (mut tls, mut tcp, mut r) = setup();
        tls.on_segment(seg(false, C2S, 100, TCP_SYN, b""), &mut tcp, &mut r);
        tls.on_segment(seg(false, S2C, 900, TCP_SYN | TCP_ACK, b""), &mut tcp, &mut r);
        tls.on_segment(seg(false, C2S, 101, TCP_ACK, CLIENT_HELLO), &mut tcp, &mut r);
        tls.on_segment(seg(false, S2C, 901, TCP_ACK, &[0x16, 3, 3, 0, 1, 9]), &mut tcp, &mut r);
        let isn = 7_000;
        tls.on_segment(seg(true, C2S, isn, TCP_SYN, b""), &mut tcp, &mut r);
        tls.on_segment(seg(true, S2C, isn, TCP_SYN | TCP_ACK, b""), &mut tcp, &mut r);
        // Emitted by a classifier while the kernel's flow map was being updated.
        tls.on_segment(seg(false, C2S, 111, TCP_ACK, &[0x17, 3, 3, 0, 2, 1, 2]), &mut tcp, &mut r);
        tls.on_segment(seg(true, C2S, isn + 1, 0, b"GET / HTTP/1.1\r\n"), &mut tcp, &mut r);
        tls.on_segment(seg(true, C2S, isn + 17, 0, b"\r\n"), &mut tcp, &mut r);
        tls.on_segment(seg(true, S2C, isn + 1, 0, b"HTTP/1.1 200 OK\r\n\r\n"), &mut tcp, &mut r);
        tls.on_segment(seg(true, C2S, isn + 19, TCP_FIN | TCP_ACK, b""), &mut tcp, &mut r);
        tls.on_segment(seg(true, S2C, isn + 20, TCP_FIN | TCP_ACK, b""), &mut tcp, &mut r);

        assert_eq!(r.opened.len(), 2);
        let (cipher, plain) = (&r.opened[0], &r.opened[1]);
        assert!(!cipher.tls && plain.tls);
        assert_ne!(cipher.id, plain.id, "the tables share one id source");
        assert!(!r.data.contains_key(&(cipher.id, 0)) && !r.data.contains_key(&(cipher.id, 1)), "no ciphertext reaches the framer");
        assert_eq!(r.data[&(plain.id, 0)], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r.data[&(plain.id, 1)], b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(r.gaps.is_empty());
        assert_eq!(r.closed, [(cipher.id, CloseReason::Tls), (plain.id, CloseReason::Fin)]);
        let stats = tls.stats();
        assert_eq!(stats.ciphertext_connections, 1);
        assert_eq!(stats.ciphertext_bytes, (CLIENT_HELLO.len() + 6 + 7) as u64);
        assert_eq!(stats.ciphertext_segments_dropped, 1);
        assert_eq!((stats.plaintext.connections_opened, stats.plaintext.closed_fin), (1, 1));
        assert_eq!(tcp.stats().closed_tls, 1);
        assert!(tcp.is_empty());
    }

    /// A plaintext event lost in the kernel (ring full) is a gap, not spliced bytes.
    #[test]
    fn a_lost_plaintext_event_is_a_gap() {
        let (mut tls, mut tcp, mut r) = setup();
        tls.on_segment(seg(true, C2S, 0, TCP_SYN, b""), &mut tcp, &mut r);
        tls.on_segment(seg(true, C2S, 1, 0, b"abc"), &mut tcp, &mut r);
        tls.on_segment(seg(true, C2S, 9, 0, b"xyz"), &mut tcp, &mut r);
        tls.close_all(5, &mut tcp, &mut r);
        let id = r.opened[0].id;
        assert_eq!(r.data[&(id, 0)], b"abcxyz");
        assert_eq!(r.gaps[&(id, 0)], 5);
        assert_eq!(tls.stats().plaintext.streams.gap_bytes, 5);
    }

    /// Plain HTTP on the TCP path is untouched, and a new SYN on a flow whose TLS
    /// plaintext is live starts a TCP connection again.
    #[test]
    fn plain_http_passes_and_a_new_syn_is_not_dropped() {
        let (mut tls, mut tcp, mut r) = setup();
        tls.on_segment(seg(false, C2S, 100, TCP_SYN, b""), &mut tcp, &mut r);
        tls.on_segment(seg(false, C2S, 101, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n"), &mut tcp, &mut r);
        let id = r.opened[0].id;
        assert_eq!(r.data[&(id, 0)], b"GET / HTTP/1.1\r\n\r\n");
        tls.on_segment(seg(true, C2S, 50, TCP_SYN, b""), &mut tcp, &mut r);
        assert_eq!(r.closed, [(id, CloseReason::Tls)]);
        tls.on_segment(seg(false, C2S, 5000, TCP_SYN, b""), &mut tcp, &mut r);
        assert_eq!(r.opened.len(), 3, "the SYN opened a TCP connection again");
        assert_eq!(tls.stats().ciphertext_connections, 0);
    }

    #[test]
    fn tls_record_headers_are_recognised() {
        assert!(starts_with_tls_record(CLIENT_HELLO));
        assert!(starts_with_tls_record(&[0x17, 3, 3]));
        assert!(starts_with_tls_record(&[0x16]));
        assert!(!starts_with_tls_record(b"GET / HTTP/1.1"));
        assert!(!starts_with_tls_record(&[0x16, 2]));
        assert!(!starts_with_tls_record(b""));
    }
}
