//! Kafka output (rdkafka, bundled librdkafka).
//!
//! Value: the record without the file separator. Key: the connection id, so the
//! default partitioner keeps one connection's records in one partition, in order.
//! Headers carry metadata (see [`HEADERS`]). The message timestamp is the record's
//! first-byte time, so replayers can seek by time.
//!
//! Sending never blocks the pipeline: librdkafka queues records in memory up to
//! `buffer_bytes`. When the queue is full the NEW record is dropped and counted
//! (`buffer_full`): what is already queued is older and closer to delivery. Queued
//! records that the broker has not acknowledged within `message.timeout.ms`
//! (librdkafka default 300 s) fail and are counted by reason. librdkafka reconnects
//! on its own.
//!
//! Continuation records: a record whose payload is larger than `part_size` (kept
//! whole by a raised `--max-message-size`) is sent as N Kafka messages with the same
//! id, key and headers, each carrying `part=I/N` and a slice of the payload, so no
//! single message exceeds the broker's limit. One partition keeps their order; the
//! replayer joins them. The record counts as written once every part is acknowledged,
//! as failed if any part fails, as dropped if a part could not be queued.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{RecordSink, SinkError, SinkStats};
use crate::http::MessageKind;
use crate::record::{push_decimal, push_socket_addr, Record};

/// Header names; stable, documented in README.
pub const HEADERS: &[(&str, &str)] = &[
    ("capture-type", "`request` or `response`"),
    ("capture-connection", "connection id (also the key)"),
    ("capture-client", "client `ip:port`"),
    ("capture-server", "server `ip:port`"),
    ("capture-node", "node name"),
    ("capture-iface", "interface the segment was seen on (empty for TLS plaintext)"),
    ("capture-truncated", "`1` if the message was cut at --max-message-size, else `0`"),
    ("capture-tls", "`1` if captured as TLS plaintext at the TLS library (`--tls-lib`), else `0`"),
    ("capture-original-length", "message length on the wire, bytes"),
    ("capture-redacted", "`1` if secrets in it were replaced by tokens, else `0`"),
    ("capture-start-ns", "wall-clock ns of the first byte"),
    ("capture-end-ns", "wall-clock ns of the last byte"),
    ("capture-request-start-ns", "responses: the request's first byte"),
    ("capture-request-end-ns", "responses: the request's last byte"),
    ("capture-method", "request method (responses: their request's)"),
    ("capture-target", "request target (responses: their request's)"),
    ("capture-status", "responses: final status code"),
    ("capture-part", "`I/N`: continuation record I of N of one message larger than --kafka-part-size"),
];

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka settings from `--kafka-opt key=value`; they override our defaults.
    pub options: Vec<(String, String)>,
    /// Memory for records waiting for the broker.
    pub buffer_bytes: u64,
    /// How long shutdown waits for acknowledgements.
    pub flush_timeout: Duration,
    pub client_id: String,
    /// Largest payload per Kafka message; a larger record is sent as continuation records.
    pub part_size: usize,
}

/// Producer defaults: throughput (batching, linger, zstd) and ordered, durable delivery.
fn defaults(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    vec![
        ("bootstrap.servers", config.brokers.clone()),
        ("client.id", config.client_id.clone()),
        ("acks", "all".into()),
        ("compression.type", "zstd".into()),
        ("linger.ms", "20".into()),
        ("batch.size", "1000000".into()),
        // Room for a 1,000,000-byte message plus record header and Kafka headers;
        // Kafka's default broker limit is 1,048,588.
        ("message.max.bytes", "1048576".into()),
        ("queue.buffering.max.kbytes", (config.buffer_bytes / 1024).max(1).to_string()),
        ("queue.buffering.max.messages", "1000000".into()),
        // One request in flight per broker keeps per-partition order across retries
        // without idempotence (which breaks when a broker loses its producer state).
        ("max.in.flight.requests.per.connection", "1".into()),
    ]
}

/// The parts of one record sent as continuation records, until all are delivered.
#[derive(Debug, Default)]
struct PartSet {
    /// Parts queued and not yet delivered.
    in_flight: u32,
    /// First delivery failure of a part.
    failed: Option<String>,
    /// A part could not be queued: the record was counted dropped already.
    dropped: bool,
}

#[derive(Default)]
struct Delivery {
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    failed: AtomicU64,
    reasons: Mutex<BTreeMap<String, u64>>,
    /// librdkafka error codes already logged (each is logged once, then counted).
    logged: Mutex<BTreeMap<String, u64>>,
    /// Records split into parts, by the delivery opaque of their parts (never 0).
    part_sets: Mutex<HashMap<usize, PartSet>>,
    /// Parts queued and not yet delivered (of every set).
    parts_in_flight: AtomicU64,
    parts_acked: AtomicU64,
}

impl Delivery {
    fn count_reason(&self, reason: &str) {
        *self.reasons.lock().unwrap().entry(reason.to_string()).or_default() += 1;
    }

    /// A record split into `count` parts: all of them are in flight before the first is
    /// sent, since the producer's thread may acknowledge part 1 before part 2 is queued.
    fn begin_parts(&self, set: usize, count: u32) {
        self.part_sets.lock().unwrap().insert(set, PartSet { in_flight: count, ..PartSet::default() });
        self.parts_in_flight.fetch_add(u64::from(count), Ordering::Relaxed);
    }

    /// `unsent` parts of a set could not be queued (the record was counted dropped).
    fn parts_not_sent(&self, set: usize, unsent: u32) {
        self.parts_in_flight.fetch_sub(u64::from(unsent), Ordering::Relaxed);
        let mut sets = self.part_sets.lock().unwrap();
        if let Some(parts) = sets.get_mut(&set) {
            parts.in_flight = parts.in_flight.saturating_sub(unsent);
            parts.dropped = true;
            if parts.in_flight == 0 {
                sets.remove(&set);
            }
        }
    }

    /// One part delivered (or failed, with its reason); the record counts once all its
    /// parts are done.
    fn part_delivered(&self, set: usize, result: Result<(), String>) {
        self.parts_in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut sets = self.part_sets.lock().unwrap();
        let Some(parts) = sets.get_mut(&set) else { return };
        match result {
            Ok(()) => {
                self.parts_acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                parts.failed.get_or_insert(reason);
            }
        }
        parts.in_flight = parts.in_flight.saturating_sub(1);
        if parts.in_flight > 0 {
            return;
        }
        let Some(parts) = sets.remove(&set) else { return };
        drop(sets);
        match (parts.dropped, parts.failed) {
            (true, _) => {}
            (false, Some(reason)) => {
                self.count_reason(&reason);
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            (false, None) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Context {
    sink: String,
    delivery: Arc<Delivery>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let key = error.rdkafka_error_code().map(|c| format!("{c:?}")).unwrap_or_else(|| error.to_string());
        let mut logged = self.delivery.logged.lock().unwrap();
        let n = logged.entry(key).or_default();
        *n += 1;
        if *n == 1 {
            warn!("{}: {error}: {reason} (records stay queued; librdkafka keeps reconnecting; repeats are not logged)", self.sink);
        }
    }
}

impl ProducerContext for Context {
    /// 0 for a whole record; for a part, the key of its record's [`PartSet`].
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, set: usize) {
        let d = &self.delivery;
        if let Ok(msg) = result {
            d.acked_bytes.fetch_add(msg.payload_len() as u64, Ordering::Relaxed);
        }
        if set == 0 {
            match result {
                Ok(_) => d.acked.fetch_add(1, Ordering::Relaxed),
                Err((e, _)) => {
                    d.count_reason(&reason_name(e));
                    d.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            return;
        }
        d.part_delivered(set, result.as_ref().map(|_| ()).map_err(|(e, _)| reason_name(e)));
    }
}

/// snake_case reason for a librdkafka error, for counters.
fn reason_name(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => {
            let name = format!("{code:?}");
            let mut out = String::new();
            for (i, ch) in name.chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(ch.to_ascii_lowercase());
            }
            out
        }
        None => "other".into(),
    }
}

pub struct KafkaSink {
    producer: ThreadedProducer<Context>,
    config: KafkaConfig,
    delivery: Arc<Delivery>,
    dropped: u64,
    /// Drop reasons already logged.
    drop_logged: HashMap<String, ()>,
    iface_names: HashMap<u32, String>,
    /// Reused per record: the value (header line + payload) and the header values.
    value_buf: Vec<u8>,
    header_buf: Vec<u8>,
    /// Opaque of the next record sent as parts (never 0).
    next_part_set: usize,
    records_split: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("--kafka-opt {0:?}: expected key=value (a librdkafka setting)")]
    BadOption(String),
    #[error("kafka://{brokers}/{topic}: creating the producer failed: {source}")]
    Create {
        brokers: String,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
}

/// Splits `key=value`.
pub fn parse_option(s: &str) -> Result<(String, String), KafkaSetupError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(KafkaSetupError::BadOption(s.to_string())),
    }
}

impl KafkaSink {
    /// Creates the producer and checks (for up to 5 s) that a broker answers and the
    /// topic exists. Neither is fatal: the agent captures anyway and records wait in
    /// the buffer, but the user is told at once.
    pub fn create(config: KafkaConfig) -> Result<KafkaSink, KafkaSetupError> {
        let mut client = ClientConfig::new();
        for (k, v) in defaults(&config) {
            client.set(k, v);
        }
        for (k, v) in &config.options {
            client.set(k, v);
        }
        let delivery = Arc::new(Delivery::default());
        let sink = format!("kafka://{}/{}", config.brokers, config.topic);
        let context = Context { sink: sink.clone(), delivery: delivery.clone() };
        let producer: ThreadedProducer<Context> =
            client.create_with_context(context).map_err(|source| KafkaSetupError::Create {
                brokers: config.brokers.clone(),
                topic: config.topic.clone(),
                source: Box::new(source),
            })?;
        match producer.client().fetch_metadata(Some(&config.topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().iter().find(|t| t.name() == config.topic) {
                Some(t) if t.error().is_none() => {
                    info!("{sink}: connected, topic has {} partition(s)", t.partitions().len())
                }
                _ => warn!(
                    "{sink}: topic {:?} does not exist on the brokers; create it (records queue until it does, or until message.timeout.ms)",
                    config.topic
                ),
            },
            Err(e) => warn!(
                "{sink}: no broker answered within 5 s ({e}); capturing anyway: records are queued in memory (up to {} bytes) and sent when a broker answers",
                config.buffer_bytes
            ),
        }
        Ok(KafkaSink {
            producer,
            config,
            delivery,
            dropped: 0,
            drop_logged: HashMap::new(),
            iface_names: HashMap::new(),
            value_buf: Vec::new(),
            header_buf: Vec::new(),
            next_part_set: 1,
            records_split: 0,
        })
    }

    fn iface_name(names: &mut HashMap<u32, String>, ifindex: u32) -> &str {
        names
            .entry(ifindex)
            .or_insert_with(|| {
                let mut buf = [0u8; libc::IF_NAMESIZE];
                // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
                let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr() as *mut libc::c_char) };
                if p.is_null() {
                    ifindex.to_string()
                } else {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    String::from_utf8_lossy(&buf[..end]).into_owned()
                }
            })
    }

    fn drop_record(&mut self, reason: &str, detail: String) {
        self.dropped += 1;
        self.delivery.count_reason(reason);
        if self.drop_logged.insert(reason.to_string(), ()).is_none() {
            warn!("kafka://{}/{}: record dropped ({reason}): {detail} (repeats are only counted)", self.config.brokers, self.config.topic);
        }
    }
}

/// Most headers a record carries: every one in [`HEADERS`].
const MAX_HEADERS: usize = HEADERS.len();

/// A header value written into the shared scratch buffer.
enum Value<'a> {
    Text(&'a [u8]),
    Number(u64),
    Addr(&'a std::net::SocketAddr),
    Flag(bool),
}

/// Builds the metadata headers of a record. Values are written into `scratch`
/// (reused across records; librdkafka copies them), not into one String each, and
/// without the formatter (hot path).
pub fn headers(record: &Record, iface: &str, scratch: &mut Vec<u8>) -> OwnedHeaders {
    let m = &record.meta;
    scratch.clear();
    let mut spans = [("", 0usize, 0usize); MAX_HEADERS];
    let mut n = 0;
    let mut add = |key: &'static str, value: Value<'_>| {
        let start = scratch.len();
        match value {
            Value::Text(t) => scratch.extend_from_slice(t),
            Value::Number(v) => push_decimal(scratch, v),
            Value::Addr(a) => push_socket_addr(scratch, a),
            Value::Flag(f) => scratch.push(if f { b'1' } else { b'0' }),
        }
        spans[n] = (key, start, scratch.len());
        n += 1;
    };
    let kind: &[u8] = match record.kind {
        MessageKind::Request => b"request",
        MessageKind::Response => b"response",
    };
    add("capture-type", Value::Text(kind));
    add("capture-connection", Value::Text(record.connection_id().as_bytes()));
    add("capture-client", Value::Addr(&m.client));
    add("capture-server", Value::Addr(&m.server));
    add("capture-node", Value::Text(m.node.as_bytes()));
    add("capture-iface", Value::Text(iface.as_bytes()));
    add("capture-truncated", Value::Flag(m.truncated));
    add("capture-tls", Value::Flag(m.tls));
    add("capture-original-length", Value::Number(m.original_len));
    add("capture-redacted", Value::Flag(m.redacted));
    add("capture-start-ns", Value::Number(m.start_ns));
    add("capture-end-ns", Value::Number(m.end_ns));
    if let Some(v) = m.request_start_ns {
        add("capture-request-start-ns", Value::Number(v));
    }
    if let Some(v) = m.request_end_ns {
        add("capture-request-end-ns", Value::Number(v));
    }
    if let Some(v) = &m.method {
        add("capture-method", Value::Text(v.as_bytes()));
    }
    if let Some(v) = &m.target {
        add("capture-target", Value::Text(v.as_bytes()));
    }
    if let Some(v) = m.status {
        add("capture-status", Value::Number(v as u64));
    }
    let mut part = Vec::new();
    if let Some((index, count)) = m.part {
        push_decimal(&mut part, index as u64);
        part.push(b'/');
        push_decimal(&mut part, count as u64);
        add("capture-part", Value::Text(&part));
    }
    let mut h = OwnedHeaders::new_with_capacity(n);
    for &(key, start, end) in &spans[..n] {
        h = h.insert(Header { key, value: Some(&scratch[start..end]) });
    }
    h
}

impl KafkaSink {
    /// Queues one Kafka message for `record` with delivery opaque `set` (0: a whole
    /// record). On failure returns the drop reason and its detail.
    fn send(&mut self, record: &Record, set: usize) -> Result<(), (String, String)> {
        // librdkafka copies key, value and headers: build them in reused buffers.
        let value = &mut self.value_buf;
        value.clear();
        record.write_header_line(value);
        value.extend_from_slice(&record.payload);
        // TLS plaintext is read at the library, on no interface.
        let iface = if record.meta.tls { "" } else { Self::iface_name(&mut self.iface_names, record.meta.ifindex) };
        let headers = headers(record, iface, &mut self.header_buf);
        let sent = self.producer.send(
            BaseRecord::with_opaque_to(&self.config.topic, set)
                .key(record.connection_id().as_bytes())
                .payload(&value[..])
                .headers(headers)
                .timestamp((record.ts_ns / 1_000_000) as i64),
        );
        sent.map_err(|(e, _)| match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => (
                "buffer_full".to_string(),
                format!("the send buffer (--kafka-buffer {} bytes) is full: the broker is down or slow", self.config.buffer_bytes),
            ),
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => (
                "too_large".to_string(),
                format!(
                    "a record of {} bytes exceeds message.max.bytes; lower --max-message-size or --kafka-part-size, or raise it with --kafka-opt message.max.bytes=N (and the topic's max.message.bytes)",
                    value.len()
                ),
            ),
            _ => (reason_name(&e), e.to_string()),
        })
    }
}

impl RecordSink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.config.brokers, self.config.topic)
    }

    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        if record.payload.len() <= self.config.part_size {
            if let Err(reason) = self.send(record, 0) {
                self.drop_record(&reason.0, reason.1);
            }
            return Ok(());
        }
        // Continuation records: same id, key and headers, a slice of the payload each.
        let size = self.config.part_size.max(1);
        let count = record.payload.len().div_ceil(size) as u32;
        let set = self.next_part_set;
        self.next_part_set = self.next_part_set.wrapping_add(1).max(1);
        self.records_split += 1;
        self.delivery.begin_parts(set, count);
        let mut part = record.clone();
        for index in 1..=count {
            let start = (index as usize - 1) * size;
            part.payload = record.payload.slice(start..(start + size).min(record.payload.len()));
            part.meta.part = Some((index, count));
            if let Err(reason) = self.send(&part, set) {
                // This part and the ones after it are never sent.
                self.delivery.parts_not_sent(set, count - index + 1);
                // Parts already queued still go out; the replayer counts the set incomplete.
                self.drop_record(&reason.0, format!("{} (part {index} of {count})", reason.1));
                break;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // The producer's own thread sends and polls; nothing to push here.
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        let pending = self.producer.in_flight_count();
        if pending > 0 {
            info!("{}: waiting up to {:?} for {pending} record(s) to be acknowledged", self.describe(), self.config.flush_timeout);
        }
        if let Err(e) = self.producer.flush(self.config.flush_timeout) {
            return Err(SinkError::Kafka {
                sink: self.describe(),
                message: format!(
                    "{} record(s) not acknowledged within --kafka-flush-timeout {:?} ({e}); they are reported as pending",
                    self.producer.in_flight_count(),
                    self.config.flush_timeout
                ),
            });
        }
        Ok(())
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            records_written: self.delivery.acked.load(Ordering::Relaxed),
            bytes_written: self.delivery.acked_bytes.load(Ordering::Relaxed),
            records_failed: self.delivery.failed.load(Ordering::Relaxed),
            records_dropped: self.dropped,
            // Messages in flight, each record's parts counted as one record.
            records_pending: {
                let messages = self.producer.in_flight_count().max(0) as u64;
                let parts = self.delivery.parts_in_flight.load(Ordering::Relaxed);
                let split = self.delivery.part_sets.lock().unwrap().values().filter(|p| !p.dropped).count() as u64;
                messages.saturating_sub(parts) + split
            },
            records_split: self.records_split,
            parts_written: self.delivery.parts_acked.load(Ordering::Relaxed),
            reasons: self.delivery.reasons.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordMeta;
    use rdkafka::message::Headers;

    fn record(kind: MessageKind, request_times: Option<u64>, status: Option<u16>) -> Record {
        Record {
            kind,
            id: "0123456789abcdef0000000200000005".into(),
            ts_ns: 1_000,
            latency_ns: 5,
            payload: bytes::Bytes::from_static(b"x"),
            meta: RecordMeta {
                client: "10.0.0.2:40000".parse().unwrap(),
                server: "[fd00::1]:8080".parse().unwrap(),
                node: "node-a".into(),
                ifindex: 3,
                truncated: true,
                original_len: 1_000_001,
                start_ns: 1_000,
                end_ns: 2_000,
                request_start_ns: request_times,
                request_end_ns: request_times.map(|t| t + 1),
                method: Some("GET".into()),
                target: Some("/a?b=ü".into()),
                status,
                paired: true,
                ambiguous: None,
                redacted: false,
                tls: false,
                part: None,
            },
        }
    }

    fn pairs(h: &OwnedHeaders) -> Vec<(String, String)> {
        h.iter().map(|h| (h.key.to_string(), String::from_utf8(h.value.unwrap().to_vec()).unwrap())).collect()
    }

    /// Header values share one scratch buffer: each must still be exactly its own value,
    /// also when the buffer held a longer record before.
    #[test]
    fn headers_carry_each_value_exactly() {
        let mut scratch = Vec::new();
        let mut tls_record = record(MessageKind::Response, Some(400), Some(200));
        tls_record.meta.tls = true;
        let resp = headers(&tls_record, "eth0", &mut scratch);
        let req = headers(&record(MessageKind::Request, None, None), "lo", &mut scratch);
        let want = |extra: &[(&str, &str)], kind: &str, iface: &str, tls: &str| {
            let mut v: Vec<(String, String)> = [
                ("capture-type", kind),
                ("capture-connection", "0123456789abcdef00000002"),
                ("capture-client", "10.0.0.2:40000"),
                ("capture-server", "[fd00::1]:8080"),
                ("capture-node", "node-a"),
                ("capture-iface", iface),
                ("capture-truncated", "1"),
                ("capture-tls", tls),
                ("capture-original-length", "1000001"),
                ("capture-redacted", "0"),
                ("capture-start-ns", "1000"),
                ("capture-end-ns", "2000"),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            v.extend([("capture-method".into(), "GET".into()), ("capture-target".into(), "/a?b=ü".into())]);
            v
        };
        let mut want_resp = want(&[("capture-request-start-ns", "400"), ("capture-request-end-ns", "401")], "response", "eth0", "1");
        want_resp.push(("capture-status".into(), "200".into()));
        assert_eq!(pairs(&resp), want_resp);
        assert_eq!(pairs(&req), want(&[], "request", "lo", "0"));
    }

    /// A record larger than the part size leaves as continuation records and is
    /// accounted as one record: pending while its parts are, failed once if they fail.
    #[test]
    fn split_records_count_as_one_record() {
        let mut sink = KafkaSink::create(KafkaConfig {
            // Nothing listens there: parts wait, then time out.
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            options: vec![("message.timeout.ms".into(), "1500".into())],
            buffer_bytes: 64 << 20,
            flush_timeout: Duration::from_millis(100),
            client_id: "test".into(),
            part_size: 1000,
        })
        .unwrap();
        let mut big = record(MessageKind::Request, None, None);
        big.payload = bytes::Bytes::from(vec![b'x'; 2500]);
        sink.write(&big).unwrap();
        sink.write(&record(MessageKind::Request, None, None)).unwrap();
        let s = sink.stats();
        assert_eq!((s.records_split, s.records_pending), (1, 2), "3 parts + 1 whole message are 2 records");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while sink.stats().records_pending > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = sink.stats();
        assert_eq!((s.records_failed, s.records_written, s.records_pending, s.parts_written), (2, 0, 0, 0));
        assert_eq!(s.reasons, [("message_timed_out".to_string(), 2)]);
    }

    #[test]
    fn part_header_names_the_part() {
        let mut rec = record(MessageKind::Request, None, None);
        rec.meta.part = Some((2, 3));
        let mut scratch = Vec::new();
        let h = pairs(&headers(&rec, "lo", &mut scratch));
        assert_eq!(h.last().unwrap(), &("capture-part".to_string(), "2/3".to_string()));
        assert!(rec.header_line().ends_with(" part=2/3\n"));
    }

    /// Regression: capture-tls and capture-part both arrived in one merge and a TLS
    /// continuation record carried one header more than the room for them (a panic in
    /// the pipeline thread).
    #[test]
    fn a_tls_continuation_response_carries_every_header() {
        let mut rec = record(MessageKind::Response, Some(400), Some(200));
        rec.meta.tls = true;
        rec.meta.part = Some((1, 2));
        let mut scratch = Vec::new();
        let h = pairs(&headers(&rec, "", &mut scratch));
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        let all: Vec<&str> = HEADERS.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, all);
    }

    #[test]
    fn options_need_key_and_value() {
        assert_eq!(parse_option("security.protocol=SSL").unwrap(), ("security.protocol".into(), "SSL".into()));
        assert_eq!(parse_option("sasl.password=a=b").unwrap(), ("sasl.password".into(), "a=b".into()));
        assert!(parse_option("novalue").is_err());
        assert!(parse_option("=x").is_err());
    }

    #[test]
    fn reason_names_are_snake_case() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(reason_name(&e), "message_timed_out");
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert_eq!(reason_name(&e), "queue_full");
    }

    /// Regression: the producer's thread acknowledged part 1 before part 2 was queued;
    /// the set looked finished (counted acked after one part) and queuing part 2
    /// panicked on the missing set (`expect("present")`).
    #[test]
    fn part_acknowledged_before_the_next_is_queued_does_not_finish_the_record() {
        let d = Delivery::default();
        d.begin_parts(7, 3);
        d.part_delivered(7, Ok(()));
        assert_eq!(d.acked.load(Ordering::Relaxed), 0, "one part of three is not the record");
        assert!(d.part_sets.lock().unwrap().contains_key(&7));
        d.part_delivered(7, Err("msg_timed_out".into()));
        d.part_delivered(7, Ok(()));
        assert_eq!((d.acked.load(Ordering::Relaxed), d.failed.load(Ordering::Relaxed)), (0, 1));
        assert_eq!(d.parts_in_flight.load(Ordering::Relaxed), 0);
        assert!(d.part_sets.lock().unwrap().is_empty());
        // A set whose third part could not be queued: counted dropped by the sink, not
        // acked nor failed here, and gone once the two queued parts are delivered.
        d.begin_parts(8, 4);
        d.part_delivered(8, Ok(()));
        d.parts_not_sent(8, 2);
        d.part_delivered(8, Ok(()));
        assert_eq!((d.acked.load(Ordering::Relaxed), d.failed.load(Ordering::Relaxed)), (0, 1));
        assert!(d.part_sets.lock().unwrap().is_empty());
        assert_eq!(d.parts_in_flight.load(Ordering::Relaxed), 0);
    }
}
