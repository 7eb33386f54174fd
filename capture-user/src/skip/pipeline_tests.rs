//! Skips through the whole pipeline, with the kernel's copy rule
//! (`capture_common::copy_window`) simulated in front of it: the kernel learns of a
//! registered range only after a few more segments (the ring and the reader lag), so
//! part of a skipped range still arrives and must be dropped exactly.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use capture_common::{copy_window, FlowTuple, SkipRange, TCP_ACK, TCP_FIN, TCP_SYN};
use proptest::prelude::*;

use super::tests::RecordingSink;
use super::{flow_tuple, Skipper};
use crate::connections::TableLimits;
use crate::filter::{parse_regex, Filters};
use crate::flow::{Direction, FlowKey};
use crate::http::{HttpConfig, MessageKind};
use crate::pipeline::{Pipeline, PipelineStats};
use crate::policy::ExchangePolicy;
use crate::record::{Record, RecordContext};
use crate::segment::Segment;
use crate::sink::{RecordSink, SinkError, SinkStats};

/// Keeps every record written.
#[derive(Clone, Default)]
struct MemorySink(Arc<Mutex<Vec<Record>>>);

impl RecordSink for MemorySink {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        self.0.lock().unwrap().push(record.clone());
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn stats(&self) -> SinkStats {
        SinkStats::default()
    }
}

const DIRS: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

/// A connection fed through the simulated kernel into a pipeline that drops `/drop*`.
struct Sim {
    pipeline: Pipeline,
    skips: RecordingSink,
    records: MemorySink,
    flow: FlowKey,
    isn: [u32; 2],
    /// Stream bytes sent per direction.
    sent: [u64; 2],
    /// Payload bytes the kernel copied per direction.
    copied: [u64; 2],
    /// The range the kernel applies per direction.
    known: [Option<SkipRange>; 2],
    /// Ranges registered but not yet seen by the kernel: (direction, range, segments to wait).
    lagging: VecDeque<(usize, SkipRange, usize)>,
    seen_calls: usize,
    lag: usize,
    ts: u64,
}

impl Sim {
    fn new(max_message: usize, isn: [u32; 2], lag: usize, skipper: bool) -> Sim {
        let filters = Filters { deny_paths: vec![parse_regex("^/drop").unwrap()], ..Filters::default() };
        let records = MemorySink::default();
        let skips = RecordingSink::default();
        let http = HttpConfig { max_message_bytes: max_message, ..HttpConfig::default() };
        let mut pipeline = Pipeline::new(TableLimits::default(), http, RecordContext::new("sim".into()), vec![Box::new(records.clone())])
            .with_policy(ExchangePolicy::new(filters, None, None));
        if skipper {
            pipeline = pipeline.with_skipper(Skipper::new(Box::new(skips.clone())));
        }
        let flow = FlowKey::new([10, 0, 0, 2].into(), 40000, [10, 0, 0, 1].into(), 8080);
        let mut sim = Sim {
            pipeline,
            skips,
            records,
            flow,
            isn,
            sent: [0; 2],
            copied: [0; 2],
            known: [None; 2],
            lagging: VecDeque::new(),
            seen_calls: 0,
            lag,
            ts: 1,
        };
        sim.control(Direction::ClientToServer, TCP_SYN, isn[0]);
        sim.control(Direction::ServerToClient, TCP_SYN | TCP_ACK, isn[1]);
        sim
    }

    fn segment(&mut self, dir: Direction, seq: u32, segment_seq: u32, segment_len: u32, flags: u8, data: &[u8]) {
        self.ts += 1_000;
        self.pipeline.on_segment(Segment {
            flow: self.flow,
            direction: dir,
            seq,
            segment_seq,
            segment_len,
            flags,
            ts_ns: self.ts,
            ifindex: 1,
            tls: false,
            data: Bytes::copy_from_slice(data),
        });
        // Ranges registered meanwhile reach the kernel `lag` segments later.
        let calls = self.skips.0.lock().unwrap().clone();
        for (tuple, range) in &calls[self.seen_calls..] {
            if let Some(range) = range {
                let d = DIRS.iter().position(|d| flow_tuple(&self.flow, *d) == *tuple).expect("a tuple of this flow");
                self.lagging.push_back((d, *range, self.lag));
            }
        }
        self.seen_calls = calls.len();
    }

    fn control(&mut self, dir: Direction, flags: u8, seq: u32) {
        self.segment(dir, seq, seq, 0, flags, b"");
    }

    /// Sends `data` in segments of `mss` bytes through the kernel's copy rule.
    fn send(&mut self, dir: Direction, data: &[u8], mss: usize) {
        let d = dir.index();
        for piece in data.chunks(mss) {
            while self.lagging.front().is_some_and(|e| e.2 == 0) {
                let (dd, range, _) = self.lagging.pop_front().unwrap();
                self.known[dd] = Some(range);
            }
            for entry in self.lagging.iter_mut() {
                entry.2 = entry.2.saturating_sub(1);
            }
            let seq = self.isn[d].wrapping_add(1).wrapping_add(self.sent[d] as u32);
            self.sent[d] += piece.len() as u64;
            let (lo, hi) = copy_window(seq, piece.len() as u32, TCP_ACK, self.known[d].as_ref());
            if lo < hi {
                self.copied[d] += (hi - lo) as u64;
                let part = &piece[lo as usize..hi as usize];
                self.segment(dir, seq.wrapping_add(lo), seq, piece.len() as u32, TCP_ACK, part);
            }
        }
    }

    fn close(&mut self) {
        for dir in DIRS {
            let seq = self.isn[dir.index()].wrapping_add(1).wrapping_add(self.sent[dir.index()] as u32);
            self.control(dir, TCP_FIN | TCP_ACK, seq);
        }
    }

    fn records(&self) -> Vec<Record> {
        self.records.0.lock().unwrap().clone()
    }

    fn stats(&self) -> PipelineStats {
        self.pipeline.stats()
    }

    fn stat(&self, name: &str) -> u64 {
        self.stats().fields().into_iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no counter {name}")).1
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn request(path: &str, body: &[u8], chunked: bool) -> Vec<u8> {
    let mut out = if chunked {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes()
    } else {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes()
    };
    if chunked {
        for chunk in body.chunks(100_000) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(body);
    }
    out
}

fn response(body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

#[test]
fn a_filtered_upload_is_skipped_and_the_next_request_is_exact() {
    let mut sim = Sim::new(1_000_000, [1000, 5000], 2, true);
    let upload = request("/drop/upload", &pattern(5_000_000, 1), false);
    sim.send(Direction::ClientToServer, &upload, 65_000);
    sim.send(Direction::ServerToClient, &response(b"got 5000000"), 65_000);
    let next = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let answer = response(b"hello");
    sim.send(Direction::ClientToServer, &next, 65_000);
    sim.send(Direction::ServerToClient, &answer, 65_000);
    sim.close();

    let records = sim.records();
    let payloads: Vec<&[u8]> = records.iter().map(|r| &r.payload[..]).collect();
    assert_eq!(payloads, [&next[..], &answer[..]], "only the kept exchange, byte for byte");
    assert!(records.iter().all(|r| !r.meta.truncated));
    // One range for the upload's body, from right after the first segment to its end.
    let calls = sim.skips.0.lock().unwrap().clone();
    let head_len = upload.len() - 5_000_000;
    let from = 1001u32 + 65_000;
    let want = SkipRange { from_seq: from, until_seq: 1001 + head_len as u32 + 5_000_000 };
    assert_eq!(calls[0], (flow_tuple(&sim.flow, Direction::ClientToServer), Some(want)));
    // Closing forgets both directions.
    let forgets: Vec<FlowTuple> = calls.iter().filter(|(_, r)| r.is_none()).map(|(t, _)| *t).collect();
    assert_eq!(forgets.len(), 2);
    // The kernel copied the first segment and the two sent before it learned the range.
    assert_eq!(sim.copied[0], 3 * 65_000 + next.len() as u64);
    assert_eq!(sim.stat("stream_skips"), 1);
    assert_eq!(sim.stat("stream_skip_bytes"), 5_000_000 + head_len as u64 - 65_000);
    assert_eq!(sim.stat("stream_skipped_bytes_arrived"), 2 * 65_000);
    assert_eq!(sim.stat("stream_duplicate_bytes"), 0);
    assert_eq!(sim.stat("stream_gaps"), 0);
    assert_eq!(sim.stat("http_lost_to_gap"), 0);
    assert_eq!((sim.stat("http_dropped_requests"), sim.stat("http_dropped_responses")), (1, 1));
    assert_eq!(sim.stat("filter_dropped_path"), 1);
    assert_eq!(sim.stat("skip_kernel_ranges"), 1);
    assert_eq!(sim.stat("connections_closed_fin"), 1);
}

#[test]
fn a_message_past_the_size_cap_is_cut_then_skipped_and_keeps_its_length() {
    let mut sim = Sim::new(100_000, [u32::MAX - 10, 7], 0, true);
    let body = pattern(3_000_000, 2);
    let download = response(&body);
    let req = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    sim.send(Direction::ClientToServer, &req, 1_500);
    sim.send(Direction::ServerToClient, &download, 64_000);
    let (req2, resp2) = (b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), response(b"ok"));
    sim.send(Direction::ClientToServer, &req2, 1_500);
    sim.send(Direction::ServerToClient, &resp2, 64_000);
    let records = sim.records();
    assert_eq!(records.len(), 4);
    let cut = &records[1];
    assert!(cut.meta.truncated);
    assert_eq!(cut.meta.original_len, download.len() as u64);
    assert_eq!(&cut.payload[..], &download[..100_000]);
    assert_eq!(&records[3].payload[..], &resp2[..], "framing exact after the skip");
    // Only two segments of the 3 MB body were copied (lag 0: the next one is skipped).
    assert_eq!(sim.copied[1], 2 * 64_000 + resp2.len() as u64);
    assert_eq!(sim.stat("http_truncated"), 1);
}

#[test]
fn without_a_skipper_dropped_exchanges_are_framed_through_and_still_dropped() {
    let mut sim = Sim::new(1_000_000, [1, 2], 0, false);
    let upload = request("/drop", &pattern(300_000, 3), false);
    sim.send(Direction::ClientToServer, &upload, 10_000);
    sim.send(Direction::ServerToClient, &response(b"x"), 10_000);
    let keep = request("/keep", b"abc", false);
    sim.send(Direction::ClientToServer, &keep, 10_000);
    sim.send(Direction::ServerToClient, &response(b"y"), 10_000);
    let kinds: Vec<(MessageKind, Vec<u8>)> = sim.records().iter().map(|r| (r.kind, r.payload.to_vec())).collect();
    assert_eq!(kinds, [(MessageKind::Request, keep), (MessageKind::Response, response(b"y"))]);
    assert_eq!(sim.copied[0], sim.sent[0], "everything copied");
    assert_eq!(sim.stat("stream_skips"), 0);
}

#[derive(Clone, Debug)]
struct Exchange {
    keep: bool,
    req_body: usize,
    chunked: bool,
    resp_body: usize,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (any::<bool>(), 0usize..300_000, any::<bool>(), 0usize..300_000)
        .prop_map(|(keep, req_body, chunked, resp_body)| Exchange { keep, req_body, chunked, resp_body })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the bodies, segment sizes, kernel lag and size cap: kept exchanges are
    /// recorded exactly (cut at the cap, with their full length), dropped ones never,
    /// and no byte is reported lost.
    #[test]
    fn skips_keep_framing_exact(
        exchanges in proptest::collection::vec(exchange(), 1..5),
        mss in 500usize..70_000,
        lag in 0usize..4,
        cap in prop_oneof![Just(1_000_000usize), Just(30_000usize)],
        isn in any::<(u32, u32)>(),
    ) {
        let mut sim = Sim::new(cap, [isn.0, isn.1], lag, true);
        let mut want = Vec::new();
        for (i, x) in exchanges.iter().enumerate() {
            let path = if x.keep { format!("/keep/{i}") } else { format!("/drop/{i}") };
            let req = request(&path, &pattern(x.req_body, i as u8), x.chunked);
            let resp = response(&pattern(x.resp_body, 100 + i as u8));
            sim.send(Direction::ClientToServer, &req, mss);
            sim.send(Direction::ServerToClient, &resp, mss);
            if x.keep {
                want.push((req.len(), req[..req.len().min(cap)].to_vec()));
                want.push((resp.len(), resp[..resp.len().min(cap)].to_vec()));
            }
        }
        sim.close();
        let got: Vec<(usize, Vec<u8>)> = sim.records().iter().map(|r| (r.meta.original_len as usize, r.payload.to_vec())).collect();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(g.0, w.0);
            prop_assert!(g.1 == w.1, "record bytes differ");
        }
        prop_assert_eq!(sim.stat("stream_gaps"), 0);
        prop_assert_eq!(sim.stat("http_lost_to_gap"), 0);
        prop_assert_eq!(sim.stat("http_resyncs"), 0);
        prop_assert_eq!(sim.stat("http_dropped_requests"), exchanges.iter().filter(|x| !x.keep).count() as u64);
        prop_assert_eq!(sim.stat("connections_closed_fin"), 1);
        // Every byte was delivered, skipped, or dropped as a late arrival of a skip.
        let s = sim.stats().table.streams;
        prop_assert_eq!(s.bytes_delivered + s.skip_bytes, sim.sent[0] + sim.sent[1]);
        prop_assert_eq!(s.skipped_bytes_arrived + s.bytes_delivered, sim.copied[0] + sim.copied[1]);
    }
}
