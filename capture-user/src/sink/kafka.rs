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
        Ok(KafkaSink { producer, config, delivery, dropped: 0, drop_logged: HashMap::new(), iface_names: HashMap::new() })
    }

    fn iface_name(&mut self, ifindex: u32) -> String {
        self.iface_names
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
            .clone()
    }

    fn drop_record(&mut self, reason: &str, detail: String) {
        self.dropped += 1;
        self.delivery.count_reason(reason);
        if self.drop_logged.insert(reason.to_string(), ()).is_none() {
            warn!("kafka://{}/{}: record dropped ({reason}): {detail} (repeats are only counted)", self.config.brokers, self.config.topic);
        }
    }
}

/// Builds the metadata headers of a record.
pub fn headers(record: &Record, iface: &str) -> OwnedHeaders {
    let m = &record.meta;
    let kind = match record.kind {
        MessageKind::Request => "request",
        MessageKind::Response => "response",
    };
    let mut pairs: Vec<(&str, String)> = vec![
        ("capture-type", kind.into()),
        ("capture-connection", record.connection_id().to_string()),
        ("capture-client", m.client.to_string()),
        ("capture-server", m.server.to_string()),
        ("capture-node", m.node.to_string()),
        ("capture-iface", iface.to_string()),
        ("capture-truncated", if m.truncated { "1" } else { "0" }.into()),
        ("capture-original-length", m.original_len.to_string()),
        ("capture-start-ns", m.start_ns.to_string()),
        ("capture-end-ns", m.end_ns.to_string()),
    ];
    if let Some(v) = m.request_start_ns {
        pairs.push(("capture-request-start-ns", v.to_string()));
    }
    if let Some(v) = m.request_end_ns {
        pairs.push(("capture-request-end-ns", v.to_string()));
    }
    if let Some(v) = &m.method {
        pairs.push(("capture-method", v.clone()));
    }
    if let Some(v) = &m.target {
        pairs.push(("capture-target", v.clone()));
    }
    if let Some(v) = m.status {
        pairs.push(("capture-status", v.to_string()));
    }
    let mut h = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in &pairs {
        h = h.insert(Header { key, value: Some(value.as_str()) });
    }
    h
}

impl RecordSink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.config.brokers, self.config.topic)
    }

    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        let value = record.value();
        let iface = self.iface_name(record.meta.ifindex);
        let headers = headers(record, &iface);
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
