//! Skipping what is not kept, down to the kernel.
//!
//! When a message keeps no more bytes (its exchange was dropped by a filter or a rate
//! limit, or it is full at `--max-message-size`) and the rest of its body has a known
//! length, the pipeline skips exactly that length in the reassembler (framing stays
//! exact: the next message starts where it should) and registers the sequence range
//! with a [`SkipSink`]: the kernel's `FLOW_SKIPS` map, so the kernel stops copying those
//! bytes into the ring. Correctness never depends on the kernel: bytes of a skipped
//! range that were copied anyway (before the kernel learned of it) are dropped by the
//! reassembler and counted `stream_skipped_bytes_arrived`.

use std::collections::HashSet;
use std::net::IpAddr;

use capture_common::{FlowTuple, SkipRange, FAMILY_IPV4, FAMILY_IPV6, MAX_SKIP_LEN};
use log::{debug, warn};

use crate::flow::{Direction, FlowKey};

/// Smaller remainders are not worth a map update: the framer drops them as they come.
pub const MIN_SKIP_BYTES: u64 = 64 * 1024;

/// Where skip ranges go (the kernel map; a recorder in tests).
pub trait SkipSink: Send {
    /// Do not copy the payload of `tuple` in `range`.
    fn skip(&mut self, tuple: &FlowTuple, range: SkipRange) -> Result<(), String>;
    /// The connection is gone: drop whatever was registered for `tuple`.
    fn forget(&mut self, tuple: &FlowTuple);
}

/// The kernel's key for one direction of a connection: the packet's 4-tuple.
pub fn flow_tuple(flow: &FlowKey, dir: Direction) -> FlowTuple {
    let (src, dst) = match dir {
        Direction::ClientToServer => (flow.client, flow.server),
        Direction::ServerToClient => (flow.server, flow.client),
    };
    let mut t = FlowTuple { sport: src.port(), dport: dst.port(), ..FlowTuple::default() };
    for (ip, out) in [(src.ip(), &mut t.saddr), (dst.ip(), &mut t.daddr)] {
        match ip {
            IpAddr::V4(v4) => {
                t.family = FAMILY_IPV4;
                out[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                t.family = FAMILY_IPV6;
                out.copy_from_slice(&v6.octets());
            }
        }
    }
    t
}

/// Skip ranges registered, for the summary and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkipStats {
    /// Ranges handed to the kernel.
    pub kernel_skips: u64,
    /// Their total length.
    pub kernel_skip_bytes: u64,
    /// Map updates that failed (the bytes are then copied and dropped in userspace).
    pub kernel_skip_errors: u64,
}

impl SkipStats {
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("skip_kernel_ranges", self.kernel_skips),
            ("skip_kernel_range_bytes", self.kernel_skip_bytes),
            ("skip_kernel_errors", self.kernel_skip_errors),
        ]
    }
}

/// Registers skip ranges and forgets them when their connection closes.
pub struct Skipper {
    sink: Box<dyn SkipSink>,
    /// Connections with something registered.
    registered: HashSet<FlowKey, foldhash::fast::RandomState>,
    pub stats: SkipStats,
    error_logged: bool,
}

impl Skipper {
    pub fn new(sink: Box<dyn SkipSink>) -> Self {
        Skipper { sink, registered: HashSet::default(), stats: SkipStats::default(), error_logged: false }
    }

    /// The bytes of `flow`'s direction `dir` in `[from_seq, until_seq)` are not wanted.
    /// A range longer than [`MAX_SKIP_LEN`] is registered in part (the rest is copied
    /// and dropped in userspace).
    pub fn register(&mut self, flow: FlowKey, dir: Direction, from_seq: u32, until_seq: u32) {
        let len = until_seq.wrapping_sub(from_seq).min(MAX_SKIP_LEN);
        let range = SkipRange { from_seq, until_seq: from_seq.wrapping_add(len) };
        match self.sink.skip(&flow_tuple(&flow, dir), range) {
            Ok(()) => {
                debug!("kernel skip {dir:?} of {flow}: {len} bytes, seq {from_seq}..{}", range.until_seq);
                self.registered.insert(flow);
                self.stats.kernel_skips += 1;
                self.stats.kernel_skip_bytes += len as u64;
            }
            Err(e) => {
                self.stats.kernel_skip_errors += 1;
                if !self.error_logged {
                    warn!("registering a kernel skip failed (the bytes are copied and dropped here instead): {e}");
                    self.error_logged = true;
                }
            }
        }
    }

    /// The connection closed: its registered ranges are dropped.
    pub fn on_close(&mut self, flow: &FlowKey) {
        if self.registered.remove(flow) {
            for dir in [Direction::ClientToServer, Direction::ServerToClient] {
                self.sink.forget(&flow_tuple(flow, dir));
            }
        }
    }
}

#[cfg(test)]
mod pipeline_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A range written (`Some`) or a direction forgotten (`None`).
    pub(crate) type SkipCall = (FlowTuple, Option<SkipRange>);

    /// Records what would go to the kernel.
    #[derive(Clone, Default)]
    pub(crate) struct RecordingSink(pub Arc<Mutex<Vec<SkipCall>>>);

    impl SkipSink for RecordingSink {
        fn skip(&mut self, tuple: &FlowTuple, range: SkipRange) -> Result<(), String> {
            self.0.lock().unwrap().push((*tuple, Some(range)));
            Ok(())
        }
        fn forget(&mut self, tuple: &FlowTuple) {
            self.0.lock().unwrap().push((*tuple, None));
        }
    }

    #[test]
    fn tuples_are_the_packets_4_tuple_of_each_direction_as_the_kernel_decodes_it() {
        use capture_common::{EventHeader, DIR_SERVER_TO_CLIENT, EVENT_HEADER_SIZE, EVENT_VERSION};
        for (client, server) in [("10.0.0.2:40000", "10.0.0.1:8080"), ("[fd00::2]:40000", "[fd00::1]:8080")] {
            let flow = FlowKey { client: client.parse().unwrap(), server: server.parse().unwrap() };
            let t = flow_tuple(&flow, Direction::ServerToClient);
            // The event the kernel writes for a response segment with this 4-tuple.
            let hdr = EventHeader {
                saddr: t.saddr,
                daddr: t.daddr,
                sport: t.sport,
                dport: t.dport,
                family: t.family,
                direction: DIR_SERVER_TO_CLIENT,
                version: EVENT_VERSION,
                ..EventHeader::default()
            };
            let bytes = unsafe { std::slice::from_raw_parts(&hdr as *const EventHeader as *const u8, EVENT_HEADER_SIZE) };
            let seg = crate::segment::decode(bytes).unwrap();
            assert_eq!(seg.flow, flow);
            let c2s = flow_tuple(&flow, Direction::ClientToServer);
            assert_eq!((c2s.saddr, c2s.sport, c2s.daddr, c2s.dport), (t.daddr, t.dport, t.saddr, t.sport));
        }
    }

    #[test]
    fn the_reassembler_drops_held_and_late_bytes_of_a_skip_and_goes_on_after_it() {
        use crate::reassembly::{StreamChunk, StreamLimits, StreamReassembler};
        use bytes::Bytes;
        let mut r = StreamReassembler::new(StreamLimits::default());
        let mut out = Vec::new();
        let isn = u32::MAX - 5; // the range crosses the 32-bit wrap
        r.on_syn(isn);
        let at = |off: u32| isn.wrapping_add(1).wrapping_add(off);
        r.on_data(at(0), Bytes::from_static(b"head"), 1, &mut out);
        // Held out of order: inside the range, straddling its end, and after it.
        r.on_data(at(10), Bytes::from_static(b"xxxxx"), 2, &mut out);
        r.on_data(at(18), Bytes::from_static(b"yyNEXT"), 3, &mut out);
        r.on_data(at(30), Bytes::from_static(b"later"), 4, &mut out);
        out.clear();
        assert_eq!(r.skip(16, &mut out), Some((at(4), at(20))));
        assert_eq!(
            out,
            [StreamChunk::Skip { len: 16 }, StreamChunk::Data { bytes: Bytes::from_static(b"NEXT"), ts_ns: 3 }]
        );
        assert_eq!(r.buffered_bytes(), 5, "only `later` is still held");
        // A late copy of skipped bytes, and a retransmission of delivered ones.
        out.clear();
        r.on_data(at(4), Bytes::from_static(b"zzzz"), 5, &mut out);
        r.on_data(at(0), Bytes::from_static(b"he"), 6, &mut out);
        assert!(out.is_empty());
        r.on_data(at(24), Bytes::from_static(b"abcdef"), 7, &mut out);
        assert_eq!(out.len(), 2, "the hole before `later` filled: both handed on");
        let s = r.stats();
        assert_eq!((s.skips, s.skip_bytes, s.skipped_bytes_arrived, s.duplicate_bytes), (1, 16, 5 + 2 + 4, 2));
        assert_eq!(s.gaps, 0);
        // Nothing to skip before the stream has a start, or for 0 bytes.
        assert_eq!(StreamReassembler::new(StreamLimits::default()).skip(5, &mut out), None);
        assert_eq!(r.skip(0, &mut out), None);
    }

    #[test]
    fn long_ranges_are_capped_and_closing_forgets_both_directions_once() {
        let sink = RecordingSink::default();
        let mut skipper = Skipper::new(Box::new(sink.clone()));
        let flow = FlowKey { client: "10.0.0.2:1".parse().unwrap(), server: "10.0.0.1:80".parse().unwrap() };
        skipper.register(flow, Direction::ClientToServer, u32::MAX - 10, 5);
        skipper.register(flow, Direction::ClientToServer, 100, 100u32.wrapping_add(3 << 30));
        skipper.on_close(&flow);
        skipper.on_close(&flow);
        let calls = sink.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0].1, Some(SkipRange { from_seq: u32::MAX - 10, until_seq: 5 }));
        assert_eq!(calls[1].1, Some(SkipRange { from_seq: 100, until_seq: 100 + MAX_SKIP_LEN }));
        assert!(calls[2].1.is_none() && calls[3].1.is_none());
        assert_eq!(skipper.stats.kernel_skips, 2);
        assert_eq!(skipper.stats.kernel_skip_bytes, 16 + MAX_SKIP_LEN as u64);
    }
}
