//! The userspace pipeline after the ring buffer: segments -> connection table ->
//! HTTP framing -> records -> sinks. Pure: fed by the kernel reader in the agent
//! and by recorded segments in tests and benchmarks.

use std::collections::HashMap;

/// Seeded per process (keys come from the network), much cheaper than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::io::Write;

use log::warn;
use sha2::{Digest, Sha256};

use crate::connections::{CloseReason, ConnectionId, ConnectionInfo, ConnectionTable, StreamSink, TableLimits, TableStats};
use crate::flow::Direction;
use crate::http::{HttpConfig, HttpConnection, HttpMessage, HttpStats};
use crate::reassembly::StreamChunk;
use crate::record::{Record, RecordContext};
use crate::segment::Segment;
use crate::sink::{RecordSink, SinkStats};

/// Frames HTTP on every connection and collects the finished messages.
pub struct HttpLayer {
    config: HttpConfig,
    conns: FastMap<ConnectionId, HttpConnection>,
    pub stats: HttpStats,
    /// Messages framed since the caller last took them.
    pub messages: Vec<(ConnectionInfo, HttpMessage)>,
    scratch: Vec<HttpMessage>,
}

impl HttpLayer {
    pub fn new(config: HttpConfig) -> Self {
        HttpLayer { config, conns: FastMap::default(), stats: HttpStats::default(), messages: Vec::new(), scratch: Vec::new() }
    }

    fn collect(&mut self, conn: &ConnectionInfo) {
        for msg in self.scratch.drain(..) {
            self.messages.push((conn.clone(), msg));
        }
    }

    /// Bytes buffered by all HTTP framers.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.buffered_bytes()).sum()
    }
}

impl StreamSink for HttpLayer {
    fn on_open(&mut self, conn: &ConnectionInfo) {
        self.conns.insert(conn.id, HttpConnection::new(self.config));
    }

    fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
        let Some(http) = self.conns.get_mut(&conn.id) else { return };
        match chunk {
            StreamChunk::Data { bytes, ts_ns } => http.on_data(dir, &bytes, ts_ns, &mut self.stats, &mut self.scratch),
            StreamChunk::Gap { len } => http.on_gap(dir, len, &mut self.stats, &mut self.scratch),
        }
        self.collect(conn);
    }

    fn on_close(&mut self, conn: &ConnectionInfo, _reason: CloseReason, ts_ns: u64) {
        if let Some(mut http) = self.conns.remove(&conn.id) {
            http.on_close(ts_ns, &mut self.stats, &mut self.scratch);
            self.collect(conn);
        }
    }
}

/// Diagnostics: one line per closed connection with the length and SHA-256 of each
/// rebuilt direction, so tests can compare against what the peers sent.
pub struct StreamDigest {
    out: Box<dyn Write + Send>,
    live: FastMap<ConnectionId, DigestState>,
}

struct DigestState {
    hashes: [Sha256; 2],
    bytes: [u64; 2],
    gap_bytes: [u64; 2],
}

impl StreamDigest {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        StreamDigest { out, live: FastMap::default() }
    }

    fn finish(&mut self, conn: &ConnectionInfo, reason: &str) {
        let Some(state) = self.live.remove(&conn.id) else { return };
        let [h0, h1] = state.hashes;
        let line = format!(
            "conn={} client={} server={} reason={} c2s_bytes={} c2s_gap_bytes={} c2s_sha256={:x} s2c_bytes={} s2c_gap_bytes={} s2c_sha256={:x}\n",
            conn.id, conn.flow.client, conn.flow.server, reason,
            state.bytes[0], state.gap_bytes[0], h0.finalize(),
            state.bytes[1], state.gap_bytes[1], h1.finalize(),
        );
        if let Err(e) = self.out.write_all(line.as_bytes()).and_then(|_| self.out.flush()) {
            warn!("stream log: {e}");
        }
    }
}

impl StreamSink for StreamDigest {
    fn on_open(&mut self, conn: &ConnectionInfo) {
        self.live.insert(
            conn.id,
            DigestState { hashes: [Sha256::new(), Sha256::new()], bytes: [0; 2], gap_bytes: [0; 2] },
        );
    }

    fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
        let Some(state) = self.live.get_mut(&conn.id) else { return };
        match chunk {
            StreamChunk::Data { bytes, .. } => {
                state.hashes[dir.index()].update(&bytes);
                state.bytes[dir.index()] += bytes.len() as u64;
            }
            StreamChunk::Gap { len } => state.gap_bytes[dir.index()] += len,
        }
    }

    fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, _ts_ns: u64) {
        self.finish(conn, &format!("{reason:?}").to_lowercase());
    }
}

/// Hands each stream event to the HTTP layer and, if enabled, the digest.
struct Fanout<'a> {
    http: &'a mut HttpLayer,
    digest: Option<&'a mut StreamDigest>,
}

impl StreamSink for Fanout<'_> {
    fn on_open(&mut self, conn: &ConnectionInfo) {
        self.http.on_open(conn);
        if let Some(d) = self.digest.as_deref_mut() {
            d.on_open(conn);
        }
    }

    fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
        if let Some(d) = self.digest.as_deref_mut() {
            d.on_chunk(conn, dir, chunk.clone());
        }
        self.http.on_chunk(conn, dir, chunk);
    }

    fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, ts_ns: u64) {
        self.http.on_close(conn, reason, ts_ns);
        if let Some(d) = self.digest.as_deref_mut() {
            d.on_close(conn, reason, ts_ns);
        }
    }
}

/// One sink and the first error it reported (logged once, then only counted).
struct Output {
    sink: Box<dyn RecordSink>,
    error_logged: bool,
}

/// Counters of the whole userspace pipeline.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub decode_errors: u64,
    pub table: TableStats,
    pub http: HttpStats,
    pub sinks: Vec<(String, SinkStats)>,
}

impl PipelineStats {
    /// `name=value` pairs in a stable order, for the exit summary and metrics.
    pub fn fields(&self) -> Vec<(String, u64)> {
        let mut out = vec![("decode_errors".to_string(), self.decode_errors)];
        out.extend(self.table.fields().into_iter().map(|(k, v)| (k.to_string(), v)));
        out.extend(self.http.fields().into_iter().map(|(k, v)| (format!("http_{k}"), v)));
        for (i, (_, s)) in self.sinks.iter().enumerate() {
            out.push((format!("output{i}_records_written"), s.records_written));
            out.push((format!("output{i}_bytes_written"), s.bytes_written));
            out.push((format!("output{i}_records_failed"), s.records_failed));
            out.push((format!("output{i}_records_dropped"), s.records_dropped));
            out.push((format!("output{i}_records_pending"), s.records_pending));
            for (reason, n) in &s.reasons {
                out.push((format!("output{i}_{reason}"), *n));
            }
        }
        out
    }
}

pub struct Pipeline {
    table: ConnectionTable,
    http: HttpLayer,
    digest: Option<StreamDigest>,
    ctx: RecordContext,
    outputs: Vec<Output>,
    pub decode_errors: u64,
}

impl Pipeline {
    pub fn new(limits: TableLimits, http: HttpConfig, ctx: RecordContext, sinks: Vec<Box<dyn RecordSink>>) -> Self {
        Pipeline {
            table: ConnectionTable::new(limits),
            http: HttpLayer::new(http),
            digest: None,
            ctx,
            outputs: sinks.into_iter().map(|sink| Output { sink, error_logged: false }).collect(),
            decode_errors: 0,
        }
    }

    /// Also write per-connection stream digests (see [`StreamDigest`]).
    pub fn with_stream_digest(mut self, out: Box<dyn Write + Send>) -> Self {
        self.digest = Some(StreamDigest::new(out));
        self
    }

    pub fn on_segment(&mut self, seg: Segment) {
        let mut fan = Fanout { http: &mut self.http, digest: self.digest.as_mut() };
        self.table.on_segment(seg, &mut fan);
        self.emit();
    }

    pub fn on_tick(&mut self, now_ns: u64) {
        let mut fan = Fanout { http: &mut self.http, digest: self.digest.as_mut() };
        self.table.on_tick(now_ns, &mut fan);
        self.emit();
        self.flush();
    }

    /// Closes every connection and closes the sinks (each bounded by its own timeout).
    pub fn shutdown(&mut self, now_ns: u64) {
        let mut fan = Fanout { http: &mut self.http, digest: self.digest.as_mut() };
        self.table.close_all(now_ns, &mut fan);
        self.emit();
        for out in &mut self.outputs {
            if let Err(e) = out.sink.close() {
                warn!("{e}");
            }
        }
    }

    fn emit(&mut self) {
        for (conn, msg) in self.http.messages.drain(..) {
            let record = Record::from_message(msg, &conn, &self.ctx);
            for out in &mut self.outputs {
                if let Err(e) = out.sink.write(&record) {
                    if !out.error_logged {
                        warn!("{e} (further errors of this output are only counted)");
                        out.error_logged = true;
                    }
                }
            }
        }
    }

    pub fn flush(&mut self) {
        for out in &mut self.outputs {
            if let Err(e) = out.sink.flush() {
                if !out.error_logged {
                    warn!("{e}");
                    out.error_logged = true;
                }
            }
        }
    }

    pub fn stats(&self) -> PipelineStats {
        let mut table = self.table.stats().clone();
        table.streams = self.table.stream_stats_total();
        PipelineStats {
            decode_errors: self.decode_errors,
            table,
            http: self.http.stats.clone(),
            sinks: self.outputs.iter().map(|o| (o.sink.describe(), o.sink.stats())).collect(),
        }
    }

    pub fn describe_outputs(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.sink.describe()).collect()
    }
}
