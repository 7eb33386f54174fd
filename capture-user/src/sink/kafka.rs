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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
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
use crate::record::Record;

/// Header names; stable, documented in README.
pub const HEADERS: &[(&str, &str)] = &[
    ("capture-type", "`request` or `response`"),
    ("capture-connection", "connection id (also the key)"),
    ("capture-client", "client `ip:port`"),
    ("capture-server", "server `ip:port`"),
    ("capture-node", "node name"),
    ("capture-iface", "interface the segment was seen on"),
    ("capture-truncated", "`1` if the message was cut at --max-message-size, else `0`"),
    ("capture-original-length", "message length on the wire, bytes"),
    ("capture-redacted", "`1` if secrets in it were replaced by tokens, else `0`"),
    ("capture-start-ns", "wall-clock ns of the first byte"),
    ("capture-end-ns", "wall-clock ns of the last byte"),
    ("capture-request-start-ns", "responses: the request's first byte"),
    ("capture-request-end-ns", "responses: the request's last byte"),
    ("capture-method", "request method (responses: their request's)"),
    ("capture-target", "request target (responses: their request's)"),
    ("capture-status", "responses: final status code"),
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

#[derive(Default)]
struct Delivery {
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    failed: AtomicU64,
    reasons: Mutex<BTreeMap<String, u64>>,
    /// librdkafka error codes already logged (each is logged once, then counted).
    logged: Mutex<BTreeMap<String, u64>>,
}

impl Delivery {
    fn count_reason(&self, reason: &str) {
        *self.reasons.lock().unwrap().entry(reason.to_string()).or_default() += 1;
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
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                self.delivery.acked.fetch_add(1, Ordering::Relaxed);
                let len = msg.payload_len() as u64;
                self.delivery.acked_bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.delivery.failed.fetch_add(1, Ordering::Relaxed);
                self.delivery.count_reason(&reason_name(e));
            }
        }
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
    header_buf: String,
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
            header_buf: String::new(),
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

/// Most headers a record carries.
const MAX_HEADERS: usize = 16;

/// Builds the metadata headers of a record. Values are formatted into `scratch`
/// (reused across records; librdkafka copies them), not into one String each.
pub fn headers(record: &Record, iface: &str, scratch: &mut String) -> OwnedHeaders {
    let m = &record.meta;
    scratch.clear();
    let mut spans = [("", 0usize, 0usize); MAX_HEADERS];
    let mut n = 0;
    let mut add = |key: &'static str, value: std::fmt::Arguments<'_>| {
        let start = scratch.len();
        // Writing into a String cannot fail.
        let _ = scratch.write_fmt(value);
        spans[n] = (key, start, scratch.len());
        n += 1;
    };
    let kind = match record.kind {
        MessageKind::Request => "request",
        MessageKind::Response => "response",
    };
    add("capture-type", format_args!("{kind}"));
    add("capture-connection", format_args!("{}", record.connection_id()));
    add("capture-client", format_args!("{}", m.client));
    add("capture-server", format_args!("{}", m.server));
    add("capture-node", format_args!("{}", m.node));
    add("capture-iface", format_args!("{iface}"));
    add("capture-truncated", format_args!("{}", if m.truncated { "1" } else { "0" }));
    add("capture-original-length", format_args!("{}", m.original_len));
    add("capture-redacted", format_args!("{}", if m.redacted { "1" } else { "0" }));
    add("capture-start-ns", format_args!("{}", m.start_ns));
    add("capture-end-ns", format_args!("{}", m.end_ns));
    if let Some(v) = m.request_start_ns {
        add("capture-request-start-ns", format_args!("{v}"));
    }
    if let Some(v) = m.request_end_ns {
        add("capture-request-end-ns", format_args!("{v}"));
    }
    if let Some(v) = &m.method {
        add("capture-method", format_args!("{v}"));
    }
    if let Some(v) = &m.target {
        add("capture-target", format_args!("{v}"));
    }
    if let Some(v) = m.status {
        add("capture-status", format_args!("{v}"));
    }
    let mut h = OwnedHeaders::new_with_capacity(n);
    for &(key, start, end) in &spans[..n] {
        h = h.insert(Header { key, value: Some(&scratch[start..end]) });
    }
    h
}

impl RecordSink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.config.brokers, self.config.topic)
    }

    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        // librdkafka copies key, value and headers: build them in reused buffers.
        let value = &mut self.value_buf;
        value.clear();
        record.write_header_line(value);
        value.extend_from_slice(&record.payload);
        let iface = Self::iface_name(&mut self.iface_names, record.meta.ifindex);
        let headers = headers(record, iface, &mut self.header_buf);
        let sent = self.producer.send(
            BaseRecord::to(&self.config.topic)
                .key(record.connection_id().as_bytes())
                .payload(&value[..])
                .headers(headers)
                .timestamp((record.ts_ns / 1_000_000) as i64),
        );
        match sent {
            Ok(()) => Ok(()),
            Err((e, _)) => {
                let (reason, detail) = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::QueueFull) => (
                        "buffer_full".to_string(),
                        format!("the send buffer (--kafka-buffer {} bytes) is full: the broker is down or slow", self.config.buffer_bytes),
                    ),
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => (
                        "too_large".to_string(),
                        format!(
                            "a record of {} bytes exceeds message.max.bytes; lower --max-message-size or raise it with --kafka-opt message.max.bytes=N (and the topic's max.message.bytes)",
                            value.len()
                        ),
                    ),
                    _ => (reason_name(&e), e.to_string()),
                };
                self.drop_record(&reason, detail);
                Ok(())
            }
        }
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
            records_pending: self.producer.in_flight_count().max(0) as u64,
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
        let mut scratch = String::new();
        let resp = headers(&record(MessageKind::Response, Some(400), Some(200)), "eth0", &mut scratch);
        let req = headers(&record(MessageKind::Request, None, None), "lo", &mut scratch);
        let want = |extra: &[(&str, &str)], kind: &str, iface: &str| {
            let mut v: Vec<(String, String)> = [
                ("capture-type", kind),
                ("capture-connection", "0123456789abcdef00000002"),
                ("capture-client", "10.0.0.2:40000"),
                ("capture-server", "[fd00::1]:8080"),
                ("capture-node", "node-a"),
                ("capture-iface", iface),
                ("capture-truncated", "1"),
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
        let mut want_resp = want(&[("capture-request-start-ns", "400"), ("capture-request-end-ns", "401")], "response", "eth0");
        want_resp.push(("capture-status".into(), "200".into()));
        assert_eq!(pairs(&resp), want_resp);
        assert_eq!(pairs(&req), want(&[], "request", "lo"));
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
}
