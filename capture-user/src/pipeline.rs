//! The userspace pipeline after the ring buffer: segments -> connection table ->
//! HTTP framing (exchanges kept or not by the [`ExchangePolicy`]) -> records
//! (redacted) -> sinks. Bodies nobody keeps are skipped, down to the kernel
//! ([`crate::skip`]). Pure: fed by the kernel reader in the agent and by recorded
//! segments in tests and benchmarks.

use std::collections::HashMap;

/// Seeded per process (keys come from the network), much cheaper than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::io::Write;

use log::warn;
use prometheus_client::metrics::histogram::Histogram;
use sha2::{Digest, Sha256};

use crate::error_chain;
use crate::connections::{CloseReason, ConnectionId, ConnectionInfo, ConnectionTable, StreamSink, TableLimits, TableStats};
use crate::flow::{Direction, FlowKey};
use crate::http::{HttpConfig, HttpConnection, HttpMessage, HttpStats, MessageKind};
use crate::policy::{ExchangePolicy, PolicyStats};
use crate::reassembly::StreamChunk;
use crate::record::{clock_ns, Record, RecordContext};
use crate::redact::{RedactStats, Redactor};
use crate::segment::Segment;
use crate::sink::{RecordSink, SinkStats};
use crate::skip::{SkipStats, Skipper, MIN_SKIP_BYTES};
use crate::tls_streams::{TlsStats, TlsStreams};

/// Frames HTTP on every connection and collects the finished messages.
pub struct HttpLayer {
    config: HttpConfig,
    conns: FastMap<ConnectionId, HttpConnection>,
    pub stats: HttpStats,
    /// Messages framed since the caller last took them.
    pub messages: Vec<(ConnectionInfo, HttpMessage)>,
    scratch: Vec<HttpMessage>,
    /// Bytes held by all framers, kept up to date per event (bounded by
    /// `config.max_total_buffered_bytes` plus the partial heads).
    buffered: usize,
    /// Which exchanges are kept.
    pub policy: ExchangePolicy,
    /// Look for bodies to skip (only when something registers skips).
    skips_enabled: bool,
    /// Directions that may have a body to skip since the caller last looked.
    skip_candidates: Vec<(FlowKey, ConnectionId, Direction)>,
}

impl HttpLayer {
    pub fn new(config: HttpConfig) -> Self {
        HttpLayer {
            config,
            conns: FastMap::default(),
            stats: HttpStats::default(),
            messages: Vec::new(),
            scratch: Vec::new(),
            buffered: 0,
            policy: ExchangePolicy::default(),
            skips_enabled: false,
            skip_candidates: Vec::new(),
        }
    }

    /// Bytes of `dir` on connection `id` that may be skipped now (see
    /// [`HttpConnection::skippable`]).
    pub fn skippable(&self, id: ConnectionId, dir: Direction) -> Option<u64> {
        self.conns.get(&id)?.skippable(dir)
    }

    fn collect(&mut self, conn: &ConnectionInfo) {
        for msg in self.scratch.drain(..) {
            self.messages.push((conn.clone(), msg));
        }
    }

    /// Bytes buffered by all HTTP framers.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }
}

impl StreamSink for HttpLayer {
    fn on_open(&mut self, conn: &ConnectionInfo) {
        self.conns.insert(conn.id, HttpConnection::new(self.config));
    }

    fn on_chunk(&mut self, conn: &ConnectionInfo, dir: Direction, chunk: StreamChunk) {
        let Some(http) = self.conns.get_mut(&conn.id) else { return };
        let before = http.buffered_bytes();
        match chunk {
            StreamChunk::Data { bytes, ts_ns } => {
                http.on_data_judged(dir, &bytes, ts_ns, &mut self.policy, &mut self.stats, &mut self.scratch)
            }
            StreamChunk::Gap { len } => http.on_gap(dir, len, &mut self.stats, &mut self.scratch),
            StreamChunk::UnknownStart => http.on_unknown_start(dir, &mut self.stats),
            StreamChunk::Skip { len } => http.on_skip(dir, len, &mut self.stats, &mut self.scratch),
        }
        if self.skips_enabled && http.skippable(dir).is_some_and(|n| n >= MIN_SKIP_BYTES) {
            self.skip_candidates.push((conn.flow, conn.id, dir));
        }
        let mut after = http.buffered_bytes();
        let total = self.buffered + after - before;
        if total > self.config.max_total_buffered_bytes && after > before {
            // The connection that grows past the budget gives back the excess and
            // keeps no more of its messages in progress.
            http.stop_keeping(total - self.config.max_total_buffered_bytes, &mut self.stats);
            after = http.buffered_bytes();
        }
        self.buffered = self.buffered + after - before;
        self.collect(conn);
    }

    fn on_close(&mut self, conn: &ConnectionInfo, _reason: CloseReason, ts_ns: u64) {
        if let Some(mut http) = self.conns.remove(&conn.id) {
            self.buffered -= http.buffered_bytes();
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
            // A skipped range is not in the digest either (the agent keeps every byte
            // when it writes digests, so this does not happen there).
            StreamChunk::Gap { len } | StreamChunk::Skip { len } => state.gap_bytes[dir.index()] += len,
            StreamChunk::UnknownStart => {}
        }
    }

    fn on_close(&mut self, conn: &ConnectionInfo, reason: CloseReason, _ts_ns: u64) {
        self.finish(conn, &format!("{reason:?}").to_lowercase());
    }
}

/// Hands each stream event to the HTTP layer and, if enabled, the digest; tells the
/// skipper when a connection closes.
struct Fanout<'a> {
    http: &'a mut HttpLayer,
    digest: Option<&'a mut StreamDigest>,
    skipper: Option<&'a mut Skipper>,
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
        if let Some(s) = self.skipper.as_deref_mut() {
            s.on_close(&conn.flow);
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
    pub policy: PolicyStats,
    pub redaction: RedactStats,
    pub skips: SkipStats,
    pub sinks: Vec<(String, SinkStats)>,
    /// With TLS capture on.
    pub tls: Option<TlsStats>,
}

impl PipelineStats {
    /// `name=value` pairs in a stable order, for the exit summary and metrics.
    pub fn fields(&self) -> Vec<(String, u64)> {
        let mut out = vec![("decode_errors".to_string(), self.decode_errors)];
        out.extend(self.table.fields().into_iter().map(|(k, v)| (k.to_string(), v)));
        out.extend(self.http.fields().into_iter().map(|(k, v)| (format!("http_{k}"), v)));
        for (k, v) in self.policy.fields().into_iter().chain(self.redaction.fields()).chain(self.skips.fields()) {
            out.push((k.to_string(), v));
        }
        if let Some(tls) = &self.tls {
            out.extend(tls.fields());
        }
        for (i, (_, s)) in self.sinks.iter().enumerate() {
            out.push((format!("output{i}_records_written"), s.records_written));
            out.push((format!("output{i}_bytes_written"), s.bytes_written));
            out.push((format!("output{i}_records_failed"), s.records_failed));
            out.push((format!("output{i}_records_dropped"), s.records_dropped));
            out.push((format!("output{i}_records_pending"), s.records_pending));
            if s.messages_written > 0 {
                out.push((format!("output{i}_messages_written"), s.messages_written));
            }
            if s.records_split > 0 {
                out.push((format!("output{i}_records_split"), s.records_split));
                out.push((format!("output{i}_parts_written"), s.parts_written));
            }
            for (reason, n) in &s.reasons {
                out.push((format!("output{i}_{reason}"), *n));
            }
        }
        out
    }
}

/// Histograms of what is handed to the outputs (shared with the metrics endpoint).
#[derive(Clone, Debug)]
pub struct OutputHistograms {
    /// Wire size of requests and of responses, bytes (before any cut).
    pub request_size: Histogram,
    pub response_size: Histogram,
    /// Kernel timestamp of a message's last byte to its record being handed to the
    /// outputs, seconds.
    pub delay: Histogram,
}

pub struct Pipeline {
    table: ConnectionTable,
    /// TLS plaintext and the ciphertext filter (see `tls_streams`), with TLS capture on.
    tls: Option<TlsStreams>,
    http: HttpLayer,
    digest: Option<StreamDigest>,
    ctx: RecordContext,
    outputs: Vec<Output>,
    histograms: Option<OutputHistograms>,
    redactor: Option<Redactor>,
    skipper: Option<Skipper>,
    pub decode_errors: u64,
}

impl Pipeline {
    pub fn new(limits: TableLimits, http: HttpConfig, ctx: RecordContext, sinks: Vec<Box<dyn RecordSink>>) -> Self {
        Pipeline {
            table: ConnectionTable::new(limits),
            tls: None,
            http: HttpLayer::new(http),
            digest: None,
            ctx,
            outputs: sinks.into_iter().map(|sink| Output { sink, error_logged: false }).collect(),
            histograms: None,
            redactor: None,
            skipper: None,
            decode_errors: 0,
        }
    }

    /// Keeps only the exchanges `policy` keeps.
    pub fn with_policy(mut self, policy: ExchangePolicy) -> Self {
        self.http.policy = policy;
        self
    }

    /// Redacts every record before any output sees it.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// Skips bodies nobody keeps, and registers them with `skipper` (the kernel).
    pub fn with_skipper(mut self, skipper: Skipper) -> Self {
        self.skipper = Some(skipper);
        self.http.skips_enabled = true;
        self
    }

    /// Also observe message sizes and capture-to-output delay (see [`OutputHistograms`]).
    pub fn with_histograms(mut self, histograms: OutputHistograms) -> Self {
        self.histograms = Some(histograms);
        self
    }

    /// Also write per-connection stream digests (see [`StreamDigest`]).
    pub fn with_stream_digest(mut self, out: Box<dyn Write + Send>) -> Self {
        self.digest = Some(StreamDigest::new(out));
        self
    }

    /// Also rebuild TLS plaintext segments (their own connections, same HTTP layer),
    /// and keep TLS ciphertext on the TCP path from the framer.
    pub fn with_tls(mut self, limits: TableLimits) -> Self {
        self.tls = Some(TlsStreams::new(limits, self.table.ids()));
        self
    }

    pub fn on_segment(&mut self, seg: Segment) {
        let mut fan = Fanout { http: &mut self.http, digest: self.digest.as_mut(), skipper: self.skipper.as_mut() };
        match &mut self.tls {
            Some(tls) => tls.on_segment(seg, &mut self.table, &mut fan),
            None => self.table.on_segment(seg, &mut fan),
        }
        self.apply_skips();
        self.emit();
    }

    pub fn on_tick(&mut self, now_ns: u64) {
        let mut fan = Fanout { http: &mut self.http, digest: self.digest.as_mut(), skipper: self.skipper.as_mut() };
        match &mut self.tls {
            Some(tls) => tls.on_tick(now_ns, &mut self.table, &mut fan),
            None => self.table.on_tick(now_ns, &mut fan),
        }
        self.apply_skips();
        self.emit();
        self.flush();
    }

    /// Skips the rest of each body nobody keeps, in the reassembler and the kernel. The
    /// length is asked again here: the framer has seen everything delivered so far, so
    /// it is exactly the bytes after the reassembler's position.
    fn apply_skips(&mut self) {
        let Some(skipper) = self.skipper.as_mut() else { return };
        while let Some((flow, id, dir)) = self.http.skip_candidates.pop() {
            let Some(len) = self.http.skippable(id, dir).filter(|&n| n >= MIN_SKIP_BYTES) else { continue };
            let mut fan = Fanout { http: &mut self.http, digest: self.digest.as_mut(), skipper: None };
            if let Some((from, until)) = self.table.skip(flow, id, dir, len, &mut fan) {
                skipper.register(flow, dir, from, until);
            }
        }
    }

    /// Closes every connection and closes the sinks (each bounded by its own timeout).
    pub fn shutdown(&mut self, now_ns: u64) {
        let mut fan = Fanout { http: &mut self.http, digest: self.digest.as_mut(), skipper: self.skipper.as_mut() };
        match &mut self.tls {
            Some(tls) => tls.close_all(now_ns, &mut self.table, &mut fan),
            None => self.table.close_all(now_ns, &mut fan),
        }
        self.emit();
        for out in &mut self.outputs {
            if let Err(e) = out.sink.close() {
                warn!("{}", error_chain::render(&e));
            }
        }
    }

    fn emit(&mut self) {
        for (conn, mut msg) in self.http.messages.drain(..) {
            let (kind, wire_size, end_ns) = (msg.kind, msg.original_len, msg.end_ns);
            let head = msg.head.take();
            let mut record = Record::from_message(msg, &conn, &self.ctx);
            // Before any output sees it.
            if let Some(r) = self.redactor.as_mut() {
                r.redact_framed(&mut record, head.as_ref());
            }
            if self.http.policy.counts_bytes() {
                let mut line = Vec::with_capacity(128);
                record.write_header_line(&mut line);
                self.http.policy.charge_record((line.len() + record.payload.len()) as u64);
            }
            for out in &mut self.outputs {
                if let Err(e) = out.sink.write(&record) {
                    if !out.error_logged {
                        warn!("{} (further errors of this output are only counted)", error_chain::render(&e));
                        out.error_logged = true;
                    }
                }
            }
            if let Some(h) = &self.histograms {
                let sizes = if kind == MessageKind::Request { &h.request_size } else { &h.response_size };
                sizes.observe(wire_size as f64);
                // Kernel timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns).
                h.delay.observe(clock_ns(libc::CLOCK_MONOTONIC).saturating_sub(end_ns) as f64 / 1e9);
            }
        }
    }

    /// A batch of ring events was processed: outputs send what they held for it.
    pub fn end_batch(&mut self) {
        for out in &mut self.outputs {
            out.sink.end_batch();
        }
    }

    pub fn flush(&mut self) {
        for out in &mut self.outputs {
            if let Err(e) = out.sink.flush() {
                if !out.error_logged {
                    warn!("{}", error_chain::render(&e));
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
            policy: self.http.policy.stats.clone(),
            redaction: self.redactor.as_ref().map(|r| r.stats.clone()).unwrap_or_default(),
            skips: self.skipper.as_ref().map(|s| s.stats.clone()).unwrap_or_default(),
            sinks: self.outputs.iter().map(|o| (o.sink.describe(), o.sink.stats())).collect(),
            tls: self.tls.as_ref().map(TlsStreams::stats),
        }
    }

    pub fn describe_outputs(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.sink.describe()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowKey;

    fn conn(n: u16) -> ConnectionInfo {
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        ConnectionInfo { id: n as u64, flow: FlowKey::new(ip, 40000 + n, ip, 80), ifindex: 1, opened_ns: 0, saw_syn: true, tls: false }
    }

    fn data(layer: &mut HttpLayer, c: &ConnectionInfo, dir: Direction, bytes: &[u8]) {
        layer.on_chunk(c, dir, StreamChunk::Data { bytes: bytes::Bytes::copy_from_slice(bytes), ts_ns: 1 });
    }

    fn check_accounting(layer: &HttpLayer) -> usize {
        let sum: usize = layer.conns.values().map(|h| h.buffered_bytes()).sum();
        assert_eq!(layer.buffered_bytes(), sum, "incremental accounting drifted");
        sum
    }

    /// Two large uploads in flight at once: the framers together never hold more than
    /// the budget; the upload that ran into it is cut exactly where the budget was full
    /// (head kept whole), flagged and counted; the one that fit stays whole.
    #[test]
    fn large_messages_in_flight_stay_within_the_total_budget() {
        let config = HttpConfig { max_message_bytes: 100_000, max_total_buffered_bytes: 50_000, ..HttpConfig::default() };
        let mut layer = HttpLayer::new(config);
        let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n";
        let piece = [b'x'; 1000];
        let (a, b) = (conn(1), conn(2));
        let mut peak = 0;
        for c in [&a, &b] {
            layer.on_open(c);
            data(&mut layer, c, Direction::ClientToServer, head);
        }
        // `a` holds all but its last piece, then `b` sends its whole body.
        for _ in 0..39 {
            data(&mut layer, &a, Direction::ClientToServer, &piece);
            peak = peak.max(check_accounting(&layer));
        }
        for _ in 0..40 {
            data(&mut layer, &b, Direction::ClientToServer, &piece);
            peak = peak.max(check_accounting(&layer));
        }
        data(&mut layer, &a, Direction::ClientToServer, &piece);
        assert!(peak <= 50_000, "framers held {peak} bytes");
        assert_eq!(check_accounting(&layer), 0, "nothing held once the messages are done");

        let msgs: Vec<HttpMessage> = layer.messages.drain(..).map(|(_, m)| m).collect();
        assert_eq!(msgs.len(), 2, "both uploads are emitted");
        let (cut, whole) = (&msgs[0], &msgs[1]);
        assert_eq!(whole.bytes.len(), head.len() + 40_000);
        assert!(!whole.truncated);
        assert!(cut.truncated && cut.bytes.starts_with(head));
        assert_eq!(cut.original_len, (head.len() + 40_000) as u64);
        assert_eq!(cut.bytes.len(), 50_000 - (head.len() + 39_000), "cut where the budget was full");
        assert_eq!((layer.stats.memory_pressure_truncations, layer.stats.truncated), (1, 1));

        // With room again, the next message on the connection that was cut is whole.
        let small = b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n";
        data(&mut layer, &b, Direction::ClientToServer, small);
        let (_, m) = layer.messages.pop().expect("request framed");
        assert!(!m.truncated && &m.bytes[..] == small);
        for c in [&a, &b] {
            layer.on_close(c, CloseReason::Fin, 2);
        }
        assert_eq!(check_accounting(&layer), 0);
    }
}
