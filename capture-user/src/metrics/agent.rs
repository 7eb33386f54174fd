//! The agent's metrics: every counter of the exit summary line, under Prometheus
//! names with labels (interface, output, reason) instead of names glued together,
//! plus histograms of message sizes and capture-to-output delay.
//!
//! Same source of truth as the summary: the pipeline thread publishes its
//! [`PipelineStats`] on every tick, and the kernel's per-CPU counters are read from
//! their map at scrape time. Scraped after traffic stopped, the values equal the
//! summary line's.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capture_common::{Counter, TlsCounter};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{encode_samples, Health, Kind, Sample, Value};
use crate::iface_watch::{InterfaceStats, LinkStats};
use crate::pipeline::{OutputHistograms, PipelineStats};
use crate::usage::{self, ProcessUsage};

/// Reads the kernel counters (summed over CPUs) when called.
pub type KernelCounterSource = Box<dyn Fn() -> Vec<(Counter, u64)> + Send + Sync>;

/// `/healthz` fails when the pipeline thread has not finished a tick (every 250 ms)
/// for this long: it is stuck, or the ring reader stopped feeding it.
pub const STALL_AFTER: Duration = Duration::from_secs(20);

/// The TLS probes' counters (`--tls-lib`), as the exit summary prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsCounters {
    /// The probes' per-CPU counters, summed.
    pub kernel: Vec<(TlsCounter, u64)>,
    /// Library files probed (`tls_libraries`).
    pub libraries: u64,
    /// Libraries found by discovery that could not be probed (`tls_library_errors`).
    pub library_errors: u64,
    /// Processes probed now, `--tls-scope listeners` (`tls_processes`, a gauge).
    pub processes: u64,
    /// Listening processes whose probing failed (`tls_process_errors`).
    pub process_errors: u64,
}

/// What the agent shares with the metrics endpoint.
pub struct AgentMetrics {
    health: Arc<Health>,
    pipeline: Mutex<PipelineStats>,
    /// None without TLS capture.
    tls: Mutex<Option<TlsCounters>>,
    interfaces: Mutex<(LinkStats, Vec<InterfaceStats>)>,
    kernel: Mutex<Option<KernelCounterSource>>,
    histograms: Mutex<Option<OutputHistograms>>,
}

impl fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    pub fn new() -> Arc<AgentMetrics> {
        Arc::new(AgentMetrics {
            health: Arc::new(Health::new(STALL_AFTER)),
            pipeline: Mutex::new(PipelineStats::default()),
            tls: Mutex::new(None),
            interfaces: Mutex::new((LinkStats::default(), Vec::new())),
            kernel: Mutex::new(None),
            histograms: Mutex::new(None),
        })
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Adds the counters and the histograms to `registry`. Without this (no
    /// `--metrics`), the pipeline observes no histograms and pays nothing for them.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let sizes = Family::<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(128.0, 4.0, 9))
        });
        let delay = Histogram::new(DELAY_BUCKETS_SECONDS.iter().copied());
        *self.histograms.lock().unwrap() = Some(OutputHistograms {
            request_size: sizes.get_or_create_owned(&[("type", "request")]),
            response_size: sizes.get_or_create_owned(&[("type", "response")]),
            delay: delay.clone(),
        });
        registry.register(
            "capture_http_message_size_bytes",
            "Wire size of HTTP messages handed to the outputs (before any cut to --max-message-size)",
            sizes,
        );
        registry.register(
            "capture_output_delay_seconds",
            "From the kernel timestamp of a message's last byte to its record being handed to the outputs",
            delay,
        );
        registry.register_collector(Box::new(self.clone()));
    }

    /// Whether [`AgentMetrics::register`] was called (metrics are served).
    pub fn is_served(&self) -> bool {
        self.histograms.lock().unwrap().is_some()
    }

    /// The histograms the pipeline should observe, if metrics are served.
    pub fn histograms(&self) -> Option<OutputHistograms> {
        self.histograms.lock().unwrap().clone()
    }

    /// Where the kernel counters are read from, once the programs are loaded.
    pub fn set_kernel_source(&self, source: KernelCounterSource) {
        *self.kernel.lock().unwrap() = Some(source);
    }

    /// The interface counters, published by the ring reader on each tick (it owns
    /// the attachments).
    pub fn publish_interfaces(&self, links: LinkStats, interfaces: Vec<InterfaceStats>) {
        *self.interfaces.lock().unwrap() = (links, interfaces);
    }

    /// The TLS probe counters, published by the ring reader on each tick (it owns the probes).
    pub fn publish_tls(&self, counters: TlsCounters) {
        *self.tls.lock().unwrap() = Some(counters);
    }

    /// The pipeline thread's latest counters; also counts as progress for `/healthz`.
    pub fn publish(&self, stats: PipelineStats) {
        *self.pipeline.lock().unwrap() = stats;
        self.health.progress();
    }
}

/// Capture-to-output delay buckets: a few ms is normal; close-delimited responses
/// wait for the close, idle connections for --idle-timeout.
const DELAY_BUCKETS_SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

impl Collector for AgentMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let kernel = match &*self.kernel.lock().unwrap() {
            Some(read) => read(),
            None => Counter::ALL.iter().map(|&c| (c, 0)).collect(),
        };
        let tls = self.tls.lock().unwrap().clone();
        let pipeline = self.pipeline.lock().unwrap().clone();
        let (links, interfaces) = self.interfaces.lock().unwrap().clone();
        encode_samples(&samples(&kernel, tls.as_ref(), &links, &interfaces, &pipeline, usage::own()), &mut encoder)
    }
}

/// Counter families: name (without `_total`) and help. Documented in README
/// ("Metrics"); the summary key each one comes from is in [`EXPORTS`].
const FAMILIES: &[(&str, &str)] = &[
    ("capture_http_ambiguous_requests", "Requests whose body framing a server may read differently (RFC 9112 6.3), recorded flagged ambiguous=REASON, by reason"),
    ("capture_kernel_segments_seen", "TCP segments of watched ports (with payload, or SYN/FIN/RST) seen by the TC programs"),
    ("capture_kernel_seen_bytes", "Payload bytes of the segments seen by the TC programs"),
    ("capture_kernel_events_emitted", "Events the TC programs wrote to the ring buffer"),
    ("capture_kernel_emitted_bytes", "Payload bytes the TC programs wrote to the ring buffer"),
    ("capture_kernel_dropped_events", "Events lost in the kernel, by reason: ring_full (raise --ring-size), copy_error"),
    ("capture_kernel_dropped_bytes", "Payload bytes lost in the kernel, by reason: ring_full, truncated (skb payload past what one skb may emit)"),
    ("capture_kernel_truncated_skbs", "skbs whose payload was cut (their lost bytes are capture_kernel_dropped_bytes_total{reason=\"truncated\"})"),
    ("capture_kernel_unsupported_packets", "Packets on watched ports the programs cannot parse (IP fragments), not captured"),
    ("capture_kernel_duplicate_segments", "Segments not emitted because another hook owns their flow direction (seen twice: lo, or a connection crossing two watched interfaces)"),
    ("capture_kernel_duplicate_bytes", "Payload bytes of those duplicate segments"),
    ("capture_kernel_flow_owner_changes", "Times a hook took over a flow direction another hook owned"),
    ("capture_kernel_tls_calls", "SSL_read/SSL_write calls (and their _ex forms) that returned plaintext, seen by the TLS probes"),
    ("capture_kernel_tls_bytes", "Plaintext bytes of those calls"),
    ("capture_kernel_tls_events_emitted", "Plaintext events the TLS probes wrote to the ring buffer"),
    ("capture_kernel_tls_emitted_bytes", "Plaintext bytes the TLS probes wrote to the ring buffer"),
    ("capture_kernel_tls_dropped_events", "Plaintext events lost in the kernel, by reason: ring_full (raise --ring-size), copy_error"),
    ("capture_kernel_tls_dropped_bytes", "Plaintext bytes lost in the kernel, by reason: ring_full, copy_error, truncated (calls longer than the probes copy)"),
    ("capture_kernel_tls_truncated_calls", "Calls longer than the probes copy (their lost bytes are capture_kernel_tls_dropped_bytes_total{reason=\"truncated\"})"),
    ("capture_kernel_tls_unmapped_calls", "Calls whose SSL object could not be tied to a TCP socket (memory BIOs, connections joined mid-way), not captured"),
    ("capture_kernel_tls_unmapped_bytes", "Plaintext bytes of those calls"),
    ("capture_kernel_tls_unwatched_calls", "Calls on sockets whose ports are not watched (other TLS traffic of the host)"),
    ("capture_kernel_tls_client_side_calls", "Calls of TLS clients of a watched port (the server side is captured, not the client)"),
    ("capture_kernel_tls_connections", "TLS connections captured (first call on a server-side socket of a watched port)"),
    ("capture_kernel_tls_connections_closed", "SSL_free of a captured TLS connection"),
    ("capture_kernel_tls_ciphertext_segments", "Ciphertext segments of TLS-captured connections the classifiers did not emit (their plaintext comes from the probes)"),
    ("capture_kernel_tls_ciphertext_bytes", "Payload bytes of those ciphertext segments"),
    ("capture_kernel_tls_unmatched_calls", "Calls whose return probe found no entry (a full call map or a nested call): not captured"),
    ("capture_kernel_tls_sampled_out_calls", "Calls on connections --sample left out, not copied; not a loss"),
    ("capture_kernel_tls_sampled_out_bytes", "Plaintext bytes of those calls"),
    ("capture_tls_library_errors", "libssl files found by --tls-lib auto that could not be probed"),
    ("capture_tls_process_errors", "Processes listening on a watched port whose probing failed (--tls-scope listeners; logged once per process)"),
    ("capture_tls_ciphertext_connections", "TCP-path connections recognised as TLS by their first client bytes (their bytes are not framed as HTTP)"),
    ("capture_tls_ciphertext_bytes", "Ciphertext bytes that reached userspace before the kernel knew the flow was TLS"),
    ("capture_tls_ciphertext_dropped_segments", "TCP-path segments of flows whose plaintext is captured, dropped in userspace"),
    ("capture_connections_reused_without_syn", "Connections closed as reused because a segment could not belong to them (a new connection on the same 4-tuple whose SYN was not seen)"),
    ("capture_stream_unknown_starts", "Streams whose first bytes came without a SYN: an unknown number of bytes before them were never seen"),
    ("capture_stream_unknown_ends", "Directions closed without their FIN (idle, evicted, reused, shutdown): bytes after the last one seen are in no counter"),
    ("capture_interfaces_attached", "Attaches to interfaces (both hooks), over all interfaces"),
    ("capture_interfaces_forgotten", "Interfaces detached because they vanished or were renamed away"),
    ("capture_interfaces_detached", "Detaches from interfaces (forgotten, or at shutdown)"),
    ("capture_interfaces_attach_errors", "Attaches that failed (the interface vanished meanwhile, or the kernel refused), over all interfaces"),
    ("capture_link_events", "Link notifications read from the kernel"),
    ("capture_link_resyncs", "Times the link notification socket overflowed and every interface was listed again"),
    ("capture_interface_attaches", "Attaches to this interface"),
    ("capture_interface_detaches", "Detaches from this interface"),
    ("capture_interface_attach_errors", "Failed attaches to this interface"),
    ("capture_interface_segments_seen", "Segments of watched ports seen on this interface"),
    ("capture_interface_seen_bytes", "Payload bytes of the segments seen on this interface"),
    ("capture_interface_duplicate_segments", "Segments seen on this interface whose flow direction another hook owns (not emitted here)"),
    ("capture_interface_duplicate_bytes", "Payload bytes of those duplicate segments"),
    ("capture_interface_events_emitted", "Events this interface's hooks wrote to the ring buffer"),
    ("capture_interface_emitted_bytes", "Payload bytes this interface's hooks wrote to the ring buffer"),
    ("capture_ring_decode_errors", "Ring buffer events userspace could not decode"),
    ("capture_segments", "Segments received by the connection table"),
    ("capture_connections_opened", "Connections tracked"),
    ("capture_connections_joined_midstream", "Connections first seen without their SYN (open before the agent started)"),
    ("capture_connections_closed", "Connections closed, by reason: fin, reset, idle, reused (port reuse), evicted (--max-connections), shutdown"),
    ("capture_orphan_segments", "Segments of no known connection that could not open one (bare FIN/RST/ACK)"),
    ("capture_stream_hole_timeouts", "Holes in a rebuilt stream not filled in time, reported as gaps"),
    ("capture_stream_memory_pressure_flushes", "Times held out-of-order bytes were given up because all connections together reached the reassembly budget"),
    ("capture_stream_delivered_bytes", "Bytes of rebuilt streams handed to HTTP framing"),
    ("capture_stream_out_of_order_segments", "Segments that arrived out of order"),
    ("capture_stream_duplicate_bytes", "Bytes seen more than once (retransmissions, overlaps)"),
    ("capture_stream_gaps", "Gaps in rebuilt streams: bytes the agent never saw"),
    ("capture_stream_gap_bytes", "Bytes missing in rebuilt streams"),
    ("capture_http_requests", "HTTP requests framed and emitted"),
    ("capture_http_responses", "HTTP responses framed and emitted"),
    ("capture_http_paired_responses", "Responses emitted paired with their request"),
    ("capture_http_unpaired_responses", "Responses emitted without a request to pair with"),
    ("capture_http_unanswered_requests", "Requests whose connection closed before a response"),
    ("capture_http_truncated_messages", "Messages emitted cut short (past --max-message-size or --max-http-buffer), flagged in their record"),
    ("capture_http_truncated_bytes", "Bytes cut from truncated messages"),
    ("capture_http_memory_pressure_truncations", "Messages cut because all connections together held --max-http-buffer"),
    ("capture_http_interim_responses", "Interim 1xx responses (except 101) before a final response"),
    ("capture_http_lost_messages", "Messages not emitted, by reason: gap (damaged by a stream gap), incomplete_at_close (partial when the stream ended)"),
    ("capture_http_resyncs", "Times a direction looked for the next message start after damage"),
    ("capture_http_resync_skipped_bytes", "Bytes skipped while looking for the next message start"),
    ("capture_http_non_http_connections", "Connections on watched ports that do not speak HTTP/1.x (ignored until they close)"),
    ("capture_http_non_http_bytes", "Bytes of those connections"),
    ("capture_http_upgraded_connections", "Connections whose framing stopped at 101 Switching Protocols or a CONNECT tunnel"),
    ("capture_http_parse_errors", "Unparseable message heads or bodies, by reason: invalid_head, head_too_large, bad_content_length, bad_chunk"),
    ("capture_output_records", "Records per output, by result: written (files, stdout) or acknowledged (Kafka), failed after queueing, dropped before queueing"),
    ("capture_output_written_bytes", "Bytes written (files, stdout) or acknowledged (Kafka) per output"),
    ("capture_output_messages_written", "Kafka messages acknowledged per output (a batch-format message carries several records)"),
    ("capture_output_lost_records", "Records per output that failed or were dropped, by reason (buffer_full, too_large, message_timed_out, ...)"),
    ("capture_agent_cpu_seconds", "CPU time of the agent process, by mode: user, system"),
    ("capture_kernel_sampled_out_connections", "Connections --sample left out (their client SYNs), decided in the kernel; not a loss"),
    ("capture_kernel_sampled_out_segments", "Segments of connections --sample left out, not copied"),
    ("capture_kernel_sampled_out_bytes", "Payload bytes of connections --sample left out, not copied"),
    ("capture_kernel_skipped_segments", "Segments whose payload the kernel skipped in part or whole (bodies nobody keeps)"),
    ("capture_kernel_skipped_bytes", "Payload bytes the kernel did not copy because userspace keeps none of them"),
    ("capture_kernel_skip_ranges", "Sequence ranges of unwanted bodies registered in the kernel's skip map"),
    ("capture_kernel_skip_range_bytes", "Total length of those ranges"),
    ("capture_kernel_skip_errors", "Skip map updates that failed (the bytes are copied and dropped in userspace)"),
    ("capture_stream_skips", "Ranges skipped on purpose in rebuilt streams (bodies nobody keeps); not a loss"),
    ("capture_stream_skip_bytes", "Bytes skipped on purpose in rebuilt streams"),
    ("capture_stream_skipped_arrived_bytes", "Bytes of skipped ranges that reached userspace anyway (copied before the kernel knew)"),
    ("capture_exchanges_kept", "Exchanges kept by the filters and rate limits (judged on their request head)"),
    ("capture_exchanges_dropped", "Exchanges dropped whole, by reason: method, path, host, header (filters), unpaired (a response without request while filtering), rate (--rate), bytes (--max-bytes-per-sec)"),
    ("capture_http_dropped_messages", "Messages not written because their exchange was dropped, by type: request, response"),
    ("capture_redacted_records", "Records with at least one secret replaced by a token"),
    ("capture_redacted_values", "Values replaced by tokens"),
    ("capture_redaction_uninspected_bodies", "JSON or form bodies not inspected for secrets, by reason: encoded (a Content-Encoding)"),
    ("capture_redaction_incomplete_json", "JSON bodies cut or invalid: values after that point were not looked for"),
    ("capture_redaction_cut_heads", "Records whose head was cut (--max-message-size below the head): the partial last line was removed"),
];

/// Summary key -> counter family and the label that replaces the glued part of the key.
/// Keys not listed are exported as `capture_<key>_total` (so a new counter is never missing).
const EXPORTS: &[(&str, &str, Option<(&str, &str)>)] = &[
    ("kernel_segments_seen", "capture_kernel_segments_seen", None),
    ("kernel_bytes_seen", "capture_kernel_seen_bytes", None),
    ("kernel_events_emitted", "capture_kernel_events_emitted", None),
    ("kernel_bytes_emitted", "capture_kernel_emitted_bytes", None),
    ("kernel_ring_full_events", "capture_kernel_dropped_events", Some(("reason", "ring_full"))),
    ("kernel_copy_errors", "capture_kernel_dropped_events", Some(("reason", "copy_error"))),
    ("kernel_ring_full_bytes", "capture_kernel_dropped_bytes", Some(("reason", "ring_full"))),
    ("kernel_truncated_bytes", "capture_kernel_dropped_bytes", Some(("reason", "truncated"))),
    ("kernel_truncated_skbs", "capture_kernel_truncated_skbs", None),
    ("kernel_unsupported_packets", "capture_kernel_unsupported_packets", None),
    ("kernel_duplicate_segments", "capture_kernel_duplicate_segments", None),
    ("kernel_duplicate_bytes", "capture_kernel_duplicate_bytes", None),
    ("kernel_flow_owner_changes", "capture_kernel_flow_owner_changes", None),
    ("kernel_tls_calls", "capture_kernel_tls_calls", None),
    ("kernel_tls_bytes", "capture_kernel_tls_bytes", None),
    ("kernel_tls_events_emitted", "capture_kernel_tls_events_emitted", None),
    ("kernel_tls_bytes_emitted", "capture_kernel_tls_emitted_bytes", None),
    ("kernel_tls_ring_full_events", "capture_kernel_tls_dropped_events", Some(("reason", "ring_full"))),
    ("kernel_tls_copy_errors", "capture_kernel_tls_dropped_events", Some(("reason", "copy_error"))),
    ("kernel_tls_ring_full_bytes", "capture_kernel_tls_dropped_bytes", Some(("reason", "ring_full"))),
    ("kernel_tls_copy_error_bytes", "capture_kernel_tls_dropped_bytes", Some(("reason", "copy_error"))),
    ("kernel_tls_truncated_bytes", "capture_kernel_tls_dropped_bytes", Some(("reason", "truncated"))),
    ("kernel_tls_truncated_calls", "capture_kernel_tls_truncated_calls", None),
    ("kernel_tls_unmapped_calls", "capture_kernel_tls_unmapped_calls", None),
    ("kernel_tls_unmapped_bytes", "capture_kernel_tls_unmapped_bytes", None),
    ("kernel_tls_unwatched_calls", "capture_kernel_tls_unwatched_calls", None),
    ("kernel_tls_client_side_calls", "capture_kernel_tls_client_side_calls", None),
    ("kernel_tls_connections", "capture_kernel_tls_connections", None),
    ("kernel_tls_connections_closed", "capture_kernel_tls_connections_closed", None),
    ("kernel_tls_ciphertext_segments", "capture_kernel_tls_ciphertext_segments", None),
    ("kernel_tls_ciphertext_bytes", "capture_kernel_tls_ciphertext_bytes", None),
    ("kernel_tls_calls_unmatched", "capture_kernel_tls_unmatched_calls", None),
    ("kernel_tls_sampled_out_calls", "capture_kernel_tls_sampled_out_calls", None),
    ("kernel_tls_sampled_out_bytes", "capture_kernel_tls_sampled_out_bytes", None),
    ("tls_library_errors", "capture_tls_library_errors", None),
    ("tls_process_errors", "capture_tls_process_errors", None),
    ("tls_ciphertext_connections", "capture_tls_ciphertext_connections", None),
    ("tls_ciphertext_bytes", "capture_tls_ciphertext_bytes", None),
    ("tls_ciphertext_segments_dropped", "capture_tls_ciphertext_dropped_segments", None),
    ("connections_reused_without_syn", "capture_connections_reused_without_syn", None),
    ("stream_unknown_starts", "capture_stream_unknown_starts", None),
    ("stream_unknown_ends", "capture_stream_unknown_ends", None),
    ("interfaces_attached", "capture_interfaces_attached", None),
    ("interfaces_forgotten", "capture_interfaces_forgotten", None),
    ("interfaces_detached", "capture_interfaces_detached", None),
    ("interface_attach_errors", "capture_interfaces_attach_errors", None),
    ("link_events", "capture_link_events", None),
    ("link_resyncs", "capture_link_resyncs", None),
    ("decode_errors", "capture_ring_decode_errors", None),
    ("segments", "capture_segments", None),
    ("connections_opened", "capture_connections_opened", None),
    ("connections_joined_midstream", "capture_connections_joined_midstream", None),
    ("connections_closed_fin", "capture_connections_closed", Some(("reason", "fin"))),
    ("connections_closed_reset", "capture_connections_closed", Some(("reason", "reset"))),
    ("connections_closed_idle", "capture_connections_closed", Some(("reason", "idle"))),
    ("connections_closed_reused", "capture_connections_closed", Some(("reason", "reused"))),
    ("connections_closed_evicted", "capture_connections_closed", Some(("reason", "evicted"))),
    ("connections_closed_shutdown", "capture_connections_closed", Some(("reason", "shutdown"))),
    ("connections_closed_tls", "capture_connections_closed", Some(("reason", "tls"))),
    ("orphan_segments", "capture_orphan_segments", None),
    ("hole_timeouts", "capture_stream_hole_timeouts", None),
    ("memory_pressure_flushes", "capture_stream_memory_pressure_flushes", None),
    ("stream_bytes_delivered", "capture_stream_delivered_bytes", None),
    ("stream_out_of_order_segments", "capture_stream_out_of_order_segments", None),
    ("stream_duplicate_bytes", "capture_stream_duplicate_bytes", None),
    ("stream_gaps", "capture_stream_gaps", None),
    ("stream_gap_bytes", "capture_stream_gap_bytes", None),
    ("http_requests", "capture_http_requests", None),
    ("http_responses", "capture_http_responses", None),
    ("http_paired", "capture_http_paired_responses", None),
    ("http_unpaired_responses", "capture_http_unpaired_responses", None),
    ("http_unanswered_requests", "capture_http_unanswered_requests", None),
    ("http_truncated", "capture_http_truncated_messages", None),
    ("http_truncated_bytes", "capture_http_truncated_bytes", None),
    ("http_memory_pressure_truncations", "capture_http_memory_pressure_truncations", None),
    ("http_interim_responses", "capture_http_interim_responses", None),
    ("http_incomplete_at_close", "capture_http_lost_messages", Some(("reason", "incomplete_at_close"))),
    ("http_lost_to_gap", "capture_http_lost_messages", Some(("reason", "gap"))),
    ("http_resyncs", "capture_http_resyncs", None),
    ("http_resync_skipped_bytes", "capture_http_resync_skipped_bytes", None),
    ("http_non_http_connections", "capture_http_non_http_connections", None),
    ("http_non_http_bytes", "capture_http_non_http_bytes", None),
    ("http_upgraded_connections", "capture_http_upgraded_connections", None),
    ("http_parse_errors_invalid_head", "capture_http_parse_errors", Some(("reason", "invalid_head"))),
    ("http_parse_errors_head_too_large", "capture_http_parse_errors", Some(("reason", "head_too_large"))),
    ("http_parse_errors_bad_content_length", "capture_http_parse_errors", Some(("reason", "bad_content_length"))),
    ("http_parse_errors_bad_chunk", "capture_http_parse_errors", Some(("reason", "bad_chunk"))),
    ("http_ambiguous_content_length_and_transfer_encoding", "capture_http_ambiguous_requests", Some(("reason", "content_length_and_transfer_encoding"))),
    ("http_ambiguous_conflicting_content_length", "capture_http_ambiguous_requests", Some(("reason", "conflicting_content_length"))),
    ("http_ambiguous_repeated_content_length", "capture_http_ambiguous_requests", Some(("reason", "repeated_content_length"))),
    ("http_ambiguous_invalid_content_length", "capture_http_ambiguous_requests", Some(("reason", "invalid_content_length"))),
    ("http_ambiguous_unsupported_transfer_encoding", "capture_http_ambiguous_requests", Some(("reason", "unsupported_transfer_encoding"))),
    ("http_ambiguous_invalid_chunk_size", "capture_http_ambiguous_requests", Some(("reason", "invalid_chunk_size"))),
    ("http_ambiguous_invalid_chunk", "capture_http_ambiguous_requests", Some(("reason", "invalid_chunk"))),
    ("kernel_sampled_out_connections", "capture_kernel_sampled_out_connections", None),
    ("kernel_sampled_out_segments", "capture_kernel_sampled_out_segments", None),
    ("kernel_sampled_out_bytes", "capture_kernel_sampled_out_bytes", None),
    ("kernel_skipped_segments", "capture_kernel_skipped_segments", None),
    ("kernel_skipped_bytes", "capture_kernel_skipped_bytes", None),
    ("skip_kernel_ranges", "capture_kernel_skip_ranges", None),
    ("skip_kernel_range_bytes", "capture_kernel_skip_range_bytes", None),
    ("skip_kernel_errors", "capture_kernel_skip_errors", None),
    ("stream_skips", "capture_stream_skips", None),
    ("stream_skip_bytes", "capture_stream_skip_bytes", None),
    ("stream_skipped_bytes_arrived", "capture_stream_skipped_arrived_bytes", None),
    ("exchanges_kept", "capture_exchanges_kept", None),
    ("filter_dropped_method", "capture_exchanges_dropped", Some(("reason", "method"))),
    ("filter_dropped_path", "capture_exchanges_dropped", Some(("reason", "path"))),
    ("filter_dropped_host", "capture_exchanges_dropped", Some(("reason", "host"))),
    ("filter_dropped_header", "capture_exchanges_dropped", Some(("reason", "header"))),
    ("filter_dropped_unpaired", "capture_exchanges_dropped", Some(("reason", "unpaired"))),
    ("ratelimit_dropped_rate", "capture_exchanges_dropped", Some(("reason", "rate"))),
    ("ratelimit_dropped_bytes", "capture_exchanges_dropped", Some(("reason", "bytes"))),
    ("http_dropped_requests", "capture_http_dropped_messages", Some(("type", "request"))),
    ("http_dropped_responses", "capture_http_dropped_messages", Some(("type", "response"))),
    ("redact_records", "capture_redacted_records", None),
    ("redact_values", "capture_redacted_values", None),
    ("redact_bodies_encoded", "capture_redaction_uninspected_bodies", Some(("reason", "encoded"))),
    ("redact_json_incomplete", "capture_redaction_incomplete_json", None),
    ("redact_heads_cut", "capture_redaction_cut_heads", None),
];

fn counter(name: &'static str, labels: Vec<(&'static str, String)>, value: u64) -> Sample {
    let help = FAMILIES.iter().find(|(n, _)| *n == name).map(|(_, h)| *h).unwrap_or("");
    Sample { name: name.into(), kind: Kind::Counter, help: help.into(), labels, value: Value::Int(value) }
}

/// A summary counter (`key=value`) as a sample: from [`EXPORTS`]; `tls_<key>` of the
/// TLS plaintext connection table as `<key>`'s family renamed `capture_tls_...`; else
/// `capture_<key>`.
fn summary_counter(key: &str, value: u64) -> Sample {
    let exported = |key: &str| EXPORTS.iter().find(|(k, _, _)| *k == key).map(|&(_, name, label)| (name, label));
    let labels = |label: Option<(&'static str, &str)>| label.map(|(k, v)| (k, v.to_string())).into_iter().collect();
    if let Some((name, label)) = exported(key) {
        return counter(name, labels(label), value);
    }
    match key.strip_prefix("tls_").and_then(exported) {
        Some((name, label)) => {
            let base = counter(name, labels(label), value);
            Sample {
                name: format!("capture_tls_{}", name.trim_start_matches("capture_")).into(),
                help: format!("TLS plaintext connections (--tls-lib): {}", base.help).into(),
                ..base
            }
        }
        None => Sample {
            name: format!("capture_{key}").into(),
            kind: Kind::Counter,
            help: format!("Summary counter {key}").into(),
            labels: Vec::new(),
            value: Value::Int(value),
        },
    }
}

/// Is `key` one of the `output<N>_...` summary keys (exported from the sink stats instead)?
fn is_output_key(key: &str) -> bool {
    key.strip_prefix("output").and_then(|rest| rest.split_once('_')).is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Every counter of the summary line (kernel, interfaces, pipeline, outputs,
/// process), as samples. Per-interface series exist while the interface is attached:
/// with pods coming and going, keeping every veth ever seen would grow without
/// bound; the agent-wide counters keep counting what forgotten interfaces saw.
pub fn samples(
    kernel: &[(Counter, u64)],
    tls: Option<&TlsCounters>,
    links: &LinkStats,
    interfaces: &[InterfaceStats],
    pipeline: &PipelineStats,
    usage: ProcessUsage,
) -> Vec<Sample> {
    let mut out: Vec<Sample> = kernel.iter().map(|&(c, v)| summary_counter(c.name(), v)).collect();
    if let Some(tls) = tls {
        out.extend(tls.kernel.iter().map(|&(c, v)| summary_counter(c.name(), v)));
        out.push(Sample {
            name: "capture_tls_libraries".into(),
            kind: Kind::Gauge,
            help: "OpenSSL library files probed (--tls-lib)".into(),
            labels: Vec::new(),
            value: Value::Int(tls.libraries),
        });
        out.push(summary_counter("tls_library_errors", tls.library_errors));
        out.push(Sample {
            name: "capture_tls_processes".into(),
            kind: Kind::Gauge,
            help: "Processes the TLS probes are attached to now (--tls-scope listeners; 0 with all: the probes are per file)".into(),
            labels: Vec::new(),
            value: Value::Int(tls.processes),
        });
        out.push(summary_counter("tls_process_errors", tls.process_errors));
    }
    out.extend(links.fields().into_iter().map(|(k, v)| summary_counter(k, v)));
    for s in interfaces.iter().filter(|s| s.attached) {
        let labels = || vec![("interface", s.name.clone())];
        for (name, help, value) in [
            ("capture_interface_attached", "1 while the interface is attached (its series go away when it is forgotten)", 1),
            ("capture_interface_ifindex", "Kernel index of the interface", s.ifindex as u64),
        ] {
            out.push(Sample { name: name.into(), kind: Kind::Gauge, help: help.into(), labels: labels(), value: Value::Int(value) });
        }
        for (name, value) in [
            ("capture_interface_attaches", s.attaches),
            ("capture_interface_detaches", s.detaches),
            ("capture_interface_attach_errors", s.attach_errors),
            ("capture_interface_segments_seen", s.segments_seen),
            ("capture_interface_seen_bytes", s.bytes_seen),
            ("capture_interface_duplicate_segments", s.segments_duplicate),
            ("capture_interface_duplicate_bytes", s.bytes_duplicate),
            ("capture_interface_events_emitted", s.events_emitted),
            ("capture_interface_emitted_bytes", s.bytes_emitted),
        ] {
            out.push(counter(name, labels(), value));
        }
    }
    for (key, value) in pipeline.fields() {
        if !is_output_key(&key) {
            out.push(summary_counter(&key, value));
        }
    }
    for (output, s) in &pipeline.sinks {
        let labelled = |extra: Option<(&'static str, &str)>| {
            let mut labels = vec![("output", output.clone())];
            labels.extend(extra.map(|(k, v)| (k, v.to_string())));
            labels
        };
        for (result, value) in [("written", s.records_written), ("failed", s.records_failed), ("dropped", s.records_dropped)] {
            out.push(counter("capture_output_records", labelled(Some(("result", result))), value));
        }
        out.push(counter("capture_output_written_bytes", labelled(None), s.bytes_written));
        if s.messages_written > 0 {
            out.push(counter("capture_output_messages_written", labelled(None), s.messages_written));
        }
        out.push(Sample {
            name: "capture_output_pending_records".into(),
            kind: Kind::Gauge,
            help: "Records per output queued and not yet acknowledged (Kafka)".into(),
            labels: labelled(None),
            value: Value::Int(s.records_pending),
        });
        for (reason, value) in &s.reasons {
            out.push(counter("capture_output_lost_records", labelled(Some(("reason", reason))), *value));
        }
    }
    for (mode, ms) in [("user", usage.user_ms), ("system", usage.sys_ms)] {
        let mut cpu = counter("capture_agent_cpu_seconds", vec![("mode", mode.to_string())], 0);
        cpu.value = Value::Float(ms as f64 / 1000.0);
        out.push(cpu);
    }
    out.push(Sample {
        name: "capture_agent_max_resident_memory_bytes".into(),
        kind: Kind::Gauge,
        help: "Peak resident memory of the agent process".into(),
        labels: Vec::new(),
        value: Value::Int(usage.max_rss_kb * 1024),
    });
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::connections::TableStats;
    use crate::http::HttpStats;
    use crate::pipeline::Pipeline;
    use crate::tls_streams::TlsStats;
    use crate::sink::SinkStats;

    /// Distinct link counters and two interfaces: one attached, one forgotten.
    fn distinct_interfaces() -> (LinkStats, Vec<InterfaceStats>) {
        let links = LinkStats {
            link_events: 5001,
            link_resyncs: 5002,
            interfaces_attached: 5003,
            interfaces_forgotten: 5004,
            interfaces_detached: 5005,
            interface_attach_errors: 5006,
        };
        let attached = InterfaceStats {
            name: "veth1".into(),
            ifindex: 6007,
            attached: true,
            attaches: 6008,
            detaches: 6009,
            attach_errors: 6010,
            segments_seen: 6011,
            bytes_seen: 6012,
            segments_duplicate: 6013,
            bytes_duplicate: 6014,
            events_emitted: 6015,
            bytes_emitted: 6016,
        };
        let forgotten = InterfaceStats { name: "veth2".into(), attached: false, segments_seen: 7001, ..InterfaceStats::default() };
        (links, vec![attached, forgotten])
    }

    /// Distinct values from `base` on in every connection table counter.
    fn fill_table(t: &mut TableStats, base: u64) {
        for (i, field) in [
            &mut t.segments, &mut t.connections_opened, &mut t.connections_joined_midstream, &mut t.closed_fin,
            &mut t.closed_reset, &mut t.closed_idle, &mut t.closed_reused, &mut t.closed_evicted,
            &mut t.closed_shutdown, &mut t.orphan_segments, &mut t.hole_timeouts, &mut t.memory_pressure_flushes,
            &mut t.streams.bytes_delivered, &mut t.streams.out_of_order_segments, &mut t.streams.duplicate_bytes,
            &mut t.streams.gaps, &mut t.streams.gap_bytes, &mut t.closed_tls, &mut t.reused_without_syn,
            &mut t.unknown_ends, &mut t.streams.unknown_starts, &mut t.streams.skips, &mut t.streams.skip_bytes,
            &mut t.streams.skipped_bytes_arrived,
        ]
        .into_iter()
        .enumerate()
        {
            *field = base + i as u64;
        }
    }

    /// TLS probe counters with distinct values.
    fn distinct_tls() -> TlsCounters {
        TlsCounters {
            kernel: TlsCounter::ALL.iter().enumerate().map(|(i, &c)| (c, 8000 + i as u64)).collect(),
            libraries: 8100,
            library_errors: 8101,
            processes: 8102,
            process_errors: 8103,
        }
    }

    /// Stats with a distinct non-zero value in every counter, two outputs and drop reasons.
    fn distinct_stats() -> (Vec<(Counter, u64)>, PipelineStats) {
        let kernel = Counter::ALL.iter().enumerate().map(|(i, &c)| (c, 1000 + i as u64)).collect();
        let mut stats = PipelineStats {
            decode_errors: 2000,
            sinks: vec![
                ("file:///x.gor".to_string(), SinkStats::default()),
                (
                    "kafka://k:9092/t".to_string(),
                    SinkStats { reasons: vec![("buffer_full".into(), 0), ("message_timed_out".into(), 0)], ..SinkStats::default() },
                ),
            ],
            ..PipelineStats::default()
        };
        fill_table(&mut stats.table, 2100);
        let mut plaintext = TableStats::default();
        fill_table(&mut plaintext, 8300);
        stats.tls = Some(TlsStats { ciphertext_connections: 8200, ciphertext_bytes: 8201, ciphertext_segments_dropped: 8202, plaintext });
        stats.http = HttpStats {
            requests: 3000,
            responses: 3001,
            paired: 3002,
            unpaired_responses: 3003,
            unanswered_requests: 3004,
            truncated: 3005,
            truncated_bytes: 3006,
            memory_pressure_truncations: 3007,
            interim_responses: 3008,
            incomplete_at_close: 3009,
            lost_to_gap: 3010,
            resyncs: 3011,
            resync_skipped_bytes: 3012,
            non_http_connections: 3013,
            non_http_bytes: 3014,
            upgraded_connections: 3015,
            parse_errors_invalid_head: 3016,
            parse_errors_head_too_large: 3017,
            parse_errors_bad_content_length: 3018,
            parse_errors_bad_chunk: 3019,
            pairing_losses: 3020,
            pairing_resumed: 3021,
            unmatched_requests: 3022,
            framing_error_stops: 3023,
            framing_error_ignored_bytes: 3024,
            ambiguous_content_length_and_transfer_encoding: 3025,
            ambiguous_conflicting_content_length: 3026,
            ambiguous_repeated_content_length: 3027,
            ambiguous_invalid_content_length: 3028,
            ambiguous_unsupported_transfer_encoding: 3029,
            ambiguous_invalid_chunk_size: 3030,
            ambiguous_invalid_chunk: 3031,
            dropped_requests: 3032,
            dropped_responses: 3033,
        };
        let p = &mut stats.policy;
        let r = &mut stats.redaction;
        let k = &mut stats.skips;
        for (i, field) in [
            &mut p.exchanges_kept, &mut p.filter_dropped_method, &mut p.filter_dropped_path, &mut p.filter_dropped_host,
            &mut p.filter_dropped_header, &mut p.filter_dropped_unpaired, &mut p.ratelimit_dropped_rate,
            &mut p.ratelimit_dropped_bytes, &mut r.records, &mut r.values, &mut r.bodies_encoded, &mut r.json_incomplete,
            &mut r.heads_cut, &mut k.kernel_skips, &mut k.kernel_skip_bytes, &mut k.kernel_skip_errors,
        ]
        .into_iter()
        .enumerate()
        {
            *field = 9000 + i as u64;
        }
        for (i, (_, s)) in stats.sinks.iter_mut().enumerate() {
            let base = 4000 + 100 * i as u64;
            (s.records_written, s.bytes_written, s.records_failed, s.records_dropped, s.records_pending) =
                (base + 1, base + 2, base + 3, base + 4, base + 5);
            for (j, (_, v)) in s.reasons.iter_mut().enumerate() {
                *v = base + 10 + j as u64;
            }
        }
        (kernel, stats)
    }

    const USAGE: ProcessUsage = ProcessUsage { user_ms: 1500, sys_ms: 250, max_rss_kb: 2 };

    /// Renders through a real registry and the Prometheus text encoder.
    fn render(kernel: &[(Counter, u64)], tls: Option<&TlsCounters>, stats: &PipelineStats) -> String {
        #[derive(Debug)]
        struct Fixed(Vec<Sample>);
        impl Collector for Fixed {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
                encode_samples(&self.0, &mut encoder)
            }
        }
        let mut registry = Registry::default();
        let (links, interfaces) = distinct_interfaces();
        registry.register_collector(Box::new(Fixed(samples(kernel, tls, &links, &interfaces, stats, USAGE))));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    use super::super::parse_series as series;

    #[test]
    fn every_summary_counter_is_one_series_with_its_value() {
        let (kernel, stats) = distinct_stats();
        let tls = distinct_tls();
        let text = render(&kernel, Some(&tls), &stats);
        let rendered = series(&text);
        let (links, interfaces) = distinct_interfaces();
        // In the summary line's order: kernel, TLS probes, links, pipeline, interfaces.
        let summary: Vec<(String, u64)> = kernel
            .iter()
            .map(|(c, v)| (c.name().to_string(), *v))
            .chain(tls.kernel.iter().map(|(c, v)| (c.name().to_string(), *v)))
            .chain([
                ("tls_libraries".to_string(), tls.libraries),
                ("tls_library_errors".to_string(), tls.library_errors),
                ("tls_processes".to_string(), tls.processes),
                ("tls_process_errors".to_string(), tls.process_errors),
            ])
            .chain(links.fields().into_iter().map(|(k, v)| (k.to_string(), v)))
            .chain(stats.fields())
            .chain(interfaces[0].fields().into_iter().filter(|(k, _)| !k.ends_with(".attached")))
            .collect();
        // Process usage adds three series of its own (cpu user/system, peak memory), the
        // attached interface one (attached=1); the forgotten interface has none.
        assert_eq!(rendered.len(), summary.len() + 4, "one series per summary counter:\n{text}");
        assert!(!text.contains("veth2"), "a forgotten interface has no series:\n{text}");
        let values: Vec<&String> = rendered.values().collect();
        for (key, value) in &summary {
            assert!(*value > 0, "{key} has no distinct value in this test");
            let found = values.iter().filter(|v| ***v == value.to_string()).count();
            assert_eq!(found, 1, "{key}={value} must appear exactly once:\n{text}");
        }
    }

    #[test]
    fn names_and_labels_follow_prometheus_conventions() {
        let (kernel, stats) = distinct_stats();
        let text = render(&kernel, Some(&distinct_tls()), &stats);
        let rendered = series(&text);
        for (series, value) in [
            ("capture_kernel_tls_calls_total", "8000"),
            ("capture_kernel_tls_emitted_bytes_total", "8003"),
            ("capture_kernel_tls_dropped_events_total{reason=\"ring_full\"}", "8004"),
            ("capture_kernel_tls_dropped_bytes_total{reason=\"copy_error\"}", "8007"),
            ("capture_kernel_tls_dropped_bytes_total{reason=\"truncated\"}", "8009"),
            ("capture_kernel_tls_unmatched_calls_total", "8018"),
            ("capture_tls_libraries", "8100"),
            ("capture_tls_library_errors_total", "8101"),
            ("capture_tls_processes", "8102"),
            ("capture_tls_process_errors_total", "8103"),
            ("capture_tls_ciphertext_connections_total", "8200"),
            ("capture_tls_ciphertext_dropped_segments_total", "8202"),
            ("capture_tls_segments_total", "8300"),
            ("capture_tls_connections_closed_total{reason=\"fin\"}", "8303"),
            ("capture_tls_stream_gap_bytes_total", "8316"),
            ("capture_connections_reused_without_syn_total", "2118"),
            ("capture_kernel_segments_seen_total", "1000"),
            ("capture_kernel_seen_bytes_total", "1001"),
            ("capture_kernel_dropped_events_total{reason=\"ring_full\"}", "1004"),
            ("capture_kernel_dropped_bytes_total{reason=\"ring_full\"}", "1005"),
            ("capture_kernel_dropped_events_total{reason=\"copy_error\"}", "1006"),
            ("capture_kernel_truncated_skbs_total", "1007"),
            ("capture_kernel_dropped_bytes_total{reason=\"truncated\"}", "1008"),
            ("capture_ring_decode_errors_total", "2000"),
            ("capture_connections_closed_total{reason=\"fin\"}", "2103"),
            ("capture_connections_closed_total{reason=\"shutdown\"}", "2108"),
            ("capture_stream_gaps_total", "2115"),
            ("capture_http_requests_total", "3000"),
            ("capture_http_paired_responses_total", "3002"),
            ("capture_http_lost_messages_total{reason=\"incomplete_at_close\"}", "3009"),
            ("capture_http_lost_messages_total{reason=\"gap\"}", "3010"),
            ("capture_http_parse_errors_total{reason=\"bad_chunk\"}", "3019"),
            ("capture_output_records_total{output=\"file:///x.gor\",result=\"written\"}", "4001"),
            ("capture_output_written_bytes_total{output=\"file:///x.gor\"}", "4002"),
            ("capture_output_records_total{output=\"kafka://k:9092/t\",result=\"failed\"}", "4103"),
            ("capture_output_records_total{output=\"kafka://k:9092/t\",result=\"dropped\"}", "4104"),
            ("capture_output_pending_records{output=\"kafka://k:9092/t\"}", "4105"),
            ("capture_output_lost_records_total{output=\"kafka://k:9092/t\",reason=\"buffer_full\"}", "4110"),
            ("capture_output_lost_records_total{output=\"kafka://k:9092/t\",reason=\"message_timed_out\"}", "4111"),
            ("capture_agent_cpu_seconds_total{mode=\"user\"}", "1.5"),
            ("capture_agent_cpu_seconds_total{mode=\"system\"}", "0.25"),
            ("capture_agent_max_resident_memory_bytes", "2048"),
            ("capture_interfaces_attached_total", "5003"),
            ("capture_interfaces_forgotten_total", "5004"),
            ("capture_link_events_total", "5001"),
            ("capture_interface_attached{interface=\"veth1\"}", "1"),
            ("capture_interface_ifindex{interface=\"veth1\"}", "6007"),
            ("capture_interface_segments_seen_total{interface=\"veth1\"}", "6011"),
            ("capture_interface_seen_bytes_total{interface=\"veth1\"}", "6012"),
            ("capture_interface_duplicate_segments_total{interface=\"veth1\"}", "6013"),
            ("capture_interface_emitted_bytes_total{interface=\"veth1\"}", "6016"),
        ] {
            assert_eq!(rendered.get(series).map(String::as_str), Some(value), "{series} in:\n{text}");
        }
        // Counters end in _total, gauges do not; each family is typed once and has help.
        let mut typed = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
            assert!(name.starts_with("capture_") && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{line}");
            assert!(typed.insert(name.to_string(), kind.to_string()).is_none(), "{name} typed twice");
        }
        for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(line.splitn(4, ' ').nth(3).is_some_and(|h| h.len() > 10), "help missing: {line}");
        }
        for name in rendered.keys() {
            let family = name.split('{').next().unwrap();
            assert!(typed.contains_key(family), "{family} has no TYPE line");
        }
    }

    #[test]
    fn every_exported_family_has_help() {
        for (key, family, _) in EXPORTS {
            assert!(FAMILIES.iter().any(|(n, h)| n == family && !h.is_empty()), "{family} (from {key}) has no help text");
        }
    }

    #[test]
    fn a_summary_counter_without_a_table_entry_is_still_exported() {
        let sample = summary_counter("http_filtered_requests", 5);
        assert_eq!(sample.name, "capture_http_filtered_requests");
        assert_eq!((sample.kind, sample.value), (Kind::Counter, Value::Int(5)));
    }

    /// Counts records; everything else is a no-op.
    struct CountingSink(u64);

    impl crate::sink::RecordSink for CountingSink {
        fn describe(&self) -> String {
            "test://counting".into()
        }
        fn write(&mut self, _: &crate::record::Record) -> Result<(), crate::sink::SinkError> {
            self.0 += 1;
            Ok(())
        }
        fn flush(&mut self) -> Result<(), crate::sink::SinkError> {
            Ok(())
        }
        fn stats(&self) -> SinkStats {
            SinkStats { records_written: self.0, ..SinkStats::default() }
        }
    }

    /// One connection with one GET and its response, in wire order.
    fn exchange(request: &[u8], response: &[u8], ts_ns: u64) -> Vec<crate::segment::Segment> {
        use crate::flow::{Direction::*, FlowKey};
        use capture_common::{TCP_ACK, TCP_FIN, TCP_SYN};
        let flow = FlowKey::new("10.0.0.1".parse().unwrap(), 40000, "10.0.0.2".parse().unwrap(), 80);
        let seg = |direction, seq: u32, flags, data: &[u8]| crate::segment::Segment {
            flow,
            direction,
            seq,
            segment_seq: seq,
            segment_len: data.len() as u32,
            flags,
            ts_ns,
            ifindex: 1,
            tls: false,
            data: bytes::Bytes::copy_from_slice(data),
        };
        vec![
            seg(ClientToServer, 0, TCP_SYN, b""),
            seg(ServerToClient, 0, TCP_SYN | TCP_ACK, b""),
            seg(ClientToServer, 1, TCP_ACK, request),
            seg(ServerToClient, 1, TCP_ACK, response),
            seg(ClientToServer, 1 + request.len() as u32, TCP_FIN | TCP_ACK, b""),
            seg(ServerToClient, 1 + response.len() as u32, TCP_FIN | TCP_ACK, b""),
        ]
    }

    /// The registered metrics, end to end: a pipeline observing the histograms,
    /// its published snapshot and a kernel counter source, encoded from the registry.
    #[test]
    fn registered_metrics_show_the_published_snapshot_and_histograms() {
        use crate::connections::TableLimits;
        use crate::http::HttpConfig;
        use crate::record::{clock_ns, RecordContext};

        let metrics = AgentMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.set_kernel_source(Box::new(|| Counter::ALL.iter().map(|&c| (c, 7)).collect()));
        let ctx = RecordContext::new("test-node".into());
        let mut pipeline = Pipeline::new(TableLimits::default(), HttpConfig::default(), ctx, vec![Box::new(CountingSink(0))])
            .with_histograms(metrics.histograms().expect("registered"));
        let request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".iter().copied().chain([b'x'; 5000]).collect::<Vec<u8>>();
        // Captured "now" minus 2 s: the delay lands in the (1, 2.5] s bucket.
        let ts = clock_ns(libc::CLOCK_MONOTONIC) - 2_000_000_000;
        for seg in exchange(request, &response, ts) {
            pipeline.on_segment(seg);
        }
        metrics.publish(pipeline.stats());

        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let rendered = series(&text);
        let get = |k: &str| rendered.get(k).map(String::as_str).unwrap_or_else(|| panic!("{k} missing in:\n{text}"));
        assert_eq!(get("capture_http_requests_total"), "1");
        assert_eq!(get("capture_output_records_total{output=\"test://counting\",result=\"written\"}"), "2");
        assert_eq!(get("capture_kernel_segments_seen_total"), "7");
        assert!(!text.contains("capture_kernel_tls_") && !text.contains("capture_tls_"), "no TLS series without TLS capture:\n{text}");
        assert_eq!(get("capture_http_message_size_bytes_count{type=\"request\"}"), "1");
        assert_eq!(get("capture_http_message_size_bytes_sum{type=\"request\"}"), &format!("{}.0", request.len()));
        assert_eq!(get("capture_http_message_size_bytes_bucket{type=\"response\",le=\"2048\"}"), "0");
        assert_eq!(get("capture_http_message_size_bytes_bucket{type=\"response\",le=\"8192\"}"), "1");
        assert_eq!(get("capture_output_delay_seconds_count"), "2");
        assert_eq!(get("capture_output_delay_seconds_bucket{le=\"1\"}"), "0");
        assert_eq!(get("capture_output_delay_seconds_bucket{le=\"2.5\"}"), "2");
        assert!(metrics.health().stalled_for().is_none());
    }

    #[test]
    fn is_output_key_matches_only_numbered_output_keys() {
        assert!(is_output_key("output0_records_written"));
        assert!(is_output_key("output12_buffer_full"));
        assert!(!is_output_key("output_records"));
        assert!(!is_output_key("outputx_records"));
        assert!(!is_output_key("segments"));
    }
}
