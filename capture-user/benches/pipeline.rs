//! Userspace path without the kernel: segments -> reassembly -> HTTP framing ->
//! record encoding, on synthetic recorded segment streams.
//!
//! `cargo bench -p capture-user --bench pipeline` prints MB/s for large bodies and
//! messages/s for small keep-alive exchanges (one core: the pipeline is one thread).

use std::hint::black_box;

use bytes::Bytes;
use capture::connections::TableLimits;
use capture::flow::{Direction, FlowKey};
use capture::http::HttpConfig;
use capture::pipeline::Pipeline;
use capture::record::{Record, RecordContext, RunId};
use capture::redact::{RedactConfig, RedactKey, Redactor};
use capture::segment::Segment;
use capture::sink::{RecordSink, SinkError, SinkStats};
use capture_common::{TCP_ACK, TCP_FIN, TCP_SYN};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Encodes each record (the work a real sink does) and throws it away.
struct NullSink(u64);

impl RecordSink for NullSink {
    fn describe(&self) -> String {
        "null".into()
    }
    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        self.0 += black_box(record.value()).len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn stats(&self) -> SinkStats {
        SinkStats::default()
    }
}

fn seg(port: u16, dir: Direction, seq: u32, flags: u8, data: Bytes) -> Segment {
    Segment {
        flow: FlowKey::new("10.0.0.1".parse().unwrap(), port, "10.0.0.2".parse().unwrap(), 80),
        direction: dir,
        seq,
        segment_seq: seq,
        segment_len: data.len() as u32,
        flags,
        ts_ns: 1,
        ifindex: 1,
        tls: false,
        data,
    }
}

/// One connection carrying `exchanges` (request, response) pairs, each message split
/// into segments of at most `mss` bytes, in wire order.
fn connection(port: u16, exchanges: &[(Vec<u8>, Vec<u8>)], mss: usize) -> Vec<Segment> {
    use Direction::*;
    let mut out = vec![seg(port, ClientToServer, 0, TCP_SYN, Bytes::new()), seg(port, ServerToClient, 0, TCP_SYN | TCP_ACK, Bytes::new())];
    let (mut cseq, mut sseq) = (1u32, 1u32);
    for (req, resp) in exchanges {
        for (data, dir, seq) in [(req, ClientToServer, &mut cseq), (resp, ServerToClient, &mut sseq)] {
            let data = Bytes::from(data.clone());
            for start in (0..data.len()).step_by(mss) {
                let piece = data.slice(start..(start + mss).min(data.len()));
                out.push(seg(port, dir, *seq, TCP_ACK, piece.clone()));
                *seq = seq.wrapping_add(piece.len() as u32);
            }
        }
    }
    out.push(seg(port, ClientToServer, cseq, TCP_FIN | TCP_ACK, Bytes::new()));
    out.push(seg(port, ServerToClient, sseq, TCP_FIN | TCP_ACK, Bytes::new()));
    out
}

fn run(segments: &[Segment]) -> u64 {
    run_with(segments, false)
}

/// `redact`: with the agent's default redaction (as `capture agent` runs).
fn run_with(segments: &[Segment], redact: bool) -> u64 {
    let ctx = RecordContext { run: RunId(1), node: "bench".into(), wall_offset_ns: 0 };
    let mut p = Pipeline::new(TableLimits::default(), HttpConfig::default(), ctx, vec![Box::new(NullSink(0))]);
    if redact {
        let key = RedactKey::new(vec![7; 32]).unwrap();
        p = p.with_redactor(Redactor::new(RedactConfig::new(&[], &[], &[], &[], &[], &[], key)));
    }
    for s in segments {
        p.on_segment(s.clone());
    }
    p.shutdown(2);
    p.stats().http.requests
}

fn bench(c: &mut Criterion) {
    // Large bodies: 8 uploads of 900 KB (under the 1 MB record cap) in 64 KiB GSO-sized segments.
    let body = vec![b'x'; 900_000];
    let mut req = format!("POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(&body);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
    let large: Vec<Segment> = (0..8).flat_map(|i| connection(1000 + i, &[(req.clone(), resp.clone())], 65536)).collect();
    let large_bytes: u64 = large.iter().map(|s| s.data.len() as u64).sum();
    let mut g = c.benchmark_group("large_bodies");
    g.throughput(Throughput::Bytes(large_bytes));
    g.bench_function("reassembly+framing+records", |b| b.iter(|| assert_eq!(run(&large), 8)));
    g.finish();

    // Small keep-alive: 20,000 exchanges of ~100-byte requests and ~150-byte responses.
    let req = b"GET /api/v1/items/42?x=1 HTTP/1.1\r\nHost: service.local\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n".to_vec();
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"id\":42,\"name\":\"example\"}\n".to_vec();
    let small = connection(2000, &vec![(req, resp); 20_000], 1460);
    let mut g = c.benchmark_group("small_keepalive");
    g.throughput(Throughput::Elements(40_000));
    g.bench_function("messages", |b| b.iter(|| assert_eq!(run(&small), 20_000)));
    g.bench_function("messages+redaction", |b| b.iter(|| assert_eq!(run_with(&small, true), 20_000)));
    // The same with a session cookie and a bearer token in every request (two tokens each).
    let req = b"GET /api/v1/items/42?x=1 HTTP/1.1\r\nHost: service.local\r\nAuthorization: Bearer abc.def.ghi\r\nCookie: sid=0123456789abcdef\r\n\r\n".to_vec();
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"id\":42,\"name\":\"example\"}\n".to_vec();
    let secrets = connection(3000, &vec![(req, resp); 20_000], 1460);
    g.bench_function("messages+redaction, secrets", |b| b.iter(|| assert_eq!(run_with(&secrets, true), 20_000)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
