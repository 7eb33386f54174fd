//! Kafka output (rdkafka, bundled librdkafka).
//!
//! Two value formats ([`KafkaFormat`]):
//! - `batch` (default): a value is one or more whole records of ONE connection in the
//!   `.gor` file format (full header line with `len=`, payload, separator), so the
//!   file reader splits it and a dumped value is a valid `.gor` file. The metadata
//!   is in each record's header line ([`Record::write_full_header_line`]); the only
//!   Kafka header is [`FORMAT_HEADER`]` = `[`FORMAT_BATCH`]. The message timestamp
//!   is its first record's. librdkafka's per-message work and the per-record headers
//!   were most of the agent's CPU on this path; a message now carries many records.
//! - `records`: one record per message, without separator, metadata in headers
//!   ([`HEADERS`]); the message timestamp is the record's first-byte time.
//!
//! Key (both): the connection id, so the default partitioner keeps one connection's
//! records in one partition, in order.
//!
//! Packing (`batch`): each connection's records are appended to its pack; a pack
//! leaves when the next record would make it larger than `batch_bytes`, at the end of
//! the first batch of ring events the pipeline processed ([`RecordSink::end_batch`])
//! [`PACK_WAIT`] after the packs' oldest record, at each flush (the agent's 250 ms
//! tick) and at shutdown. Accounting
//! stays per record: a message of k records acknowledges, fails or drops k records.
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
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{RecordSink, SinkError, SinkStats};
use crate::http::MessageKind;
use crate::record::{push_decimal, push_socket_addr, Record, FILE_SEPARATOR};

/// The Kafka header that names the value format of a `batch` message. A message
/// without it is in the `records` format.
pub const FORMAT_HEADER: &str = "capture-format";
/// Its value for the batch format, version 1.
pub const FORMAT_BATCH: &str = "batch-1";

/// How records become Kafka messages (`--kafka-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KafkaFormat {
    /// Several records of one connection per message, in the file format.
    Batch,
    /// One record per message, metadata in Kafka headers.
    Records,
}

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
    pub format: KafkaFormat,
    /// `batch` format: a pack leaves before it would grow past this many bytes.
    pub batch_bytes: usize,
    /// `batch` format: packs leave at the end of the first batch of captured events
    /// this long after their oldest record ([`PACK_WAIT`]), or at the next flush.
    pub pack_wait: Duration,
}

/// How long the `batch` format's packs gather records across batches of captured
/// events (a batch holds a few ms of traffic). Chosen by measurement (README,
/// Benchmark): at 100 B a pack per connection per batch held ~5 records and
/// librdkafka's per-message work (queueing, delivery reports) dominated; 20 ms gives
/// ~40 per message, as long as librdkafka's own `linger.ms`.
pub const PACK_WAIT: Duration = Duration::from_millis(20);

/// The codec of [`defaults`], chosen by measurement (README, Kafka output): on varied
/// HTTP lz4 sends 46 % of the bytes of none for the least CPU of the codecs; zstd
/// level 1 sends a third less than lz4 for 12-15 % more agent CPU (an option).
pub const DEFAULT_COMPRESSION: &str = "lz4";

/// Producer defaults: throughput (batching, linger, lz4) and ordered, durable delivery.
fn defaults(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    vec![
        ("bootstrap.servers", config.brokers.clone()),
        ("client.id", config.client_id.clone()),
        ("acks", "all".into()),
        ("compression.type", DEFAULT_COMPRESSION.into()),
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

/// Delivery opaque of a message of `records` whole records.
fn records_opaque(records: u64) -> usize {
    (records as usize) << 1
}

/// Delivery opaque of a continuation record of part set `set`.
fn part_opaque(set: usize) -> usize {
    (set << 1) | 1
}

#[derive(Default)]
struct Delivery {
    /// Messages acknowledged (packs, whole records and parts).
    messages_acked: AtomicU64,
    /// Whole records in queued messages, not yet delivered (parts not included).
    records_in_flight: AtomicU64,
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
        self.count_reasons(reason, 1);
    }

    fn count_reasons(&self, reason: &str, n: u64) {
        *self.reasons.lock().unwrap().entry(reason.to_string()).or_default() += n;
    }

    /// A message of `records` whole records was delivered or failed.
    fn records_delivered(&self, records: u64, result: Result<(), String>) {
        self.records_in_flight.fetch_sub(records, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.acked.fetch_add(records, Ordering::Relaxed);
            }
            Err(reason) => {
                self.count_reasons(&reason, records);
                self.failed.fetch_add(records, Ordering::Relaxed);
            }
        }
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
    /// [`records_opaque`] for a message of whole records, [`part_opaque`] for a part.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let d = &self.delivery;
        if let Ok(msg) = result {
            d.acked_bytes.fetch_add(msg.payload_len() as u64, Ordering::Relaxed);
            d.messages_acked.fetch_add(1, Ordering::Relaxed);
        }
        let result = result.as_ref().map(|_| ()).map_err(|(e, _)| reason_name(e));
        if opaque & 1 == 0 {
            d.records_delivered((opaque >> 1) as u64, result);
        } else {
            d.part_delivered(opaque >> 1, result);
        }
    }
}

/// Records of one connection waiting to leave as one message (`batch` format).
#[derive(Debug, Default)]
pub struct Pack {
    /// Whole records in the file format.
    pub value: Vec<u8>,
    pub records: u64,
    /// Wall-clock ns of its first record.
    pub ts_ns: u64,
}

/// The pack being filled, per connection id; a pure structure (no Kafka) so its
/// bounds are unit-tested.
#[derive(Debug)]
pub struct Packs {
    by_conn: HashMap<String, Pack>,
    /// A pack leaves before it would grow past this many bytes.
    limit: usize,
    /// Records in packs not yet handed to the producer.
    buffered: u64,
    /// Emptied values, reused for the next packs.
    spare: Vec<Vec<u8>>,
}

/// Packs that must leave now, in this order (at most two).
pub type Leaving = [Option<(String, Pack)>; 2];

impl Packs {
    pub fn new(limit: usize) -> Packs {
        Packs { by_conn: HashMap::new(), limit, buffered: 0, spare: Vec::new() }
    }

    /// Records held, not yet handed to the producer.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Adds one record (`line` is its full header line) to the pack of `conn`. Returns
    /// what must leave: the pack it no longer fits in, then the record itself if it
    /// fills a pack on its own (a record larger than the limit goes alone).
    pub fn add(&mut self, conn: &str, ts_ns: u64, line: &[u8], payload: &[u8]) -> Leaving {
        let size = line.len() + payload.len() + FILE_SEPARATOR.len();
        let mut leaving: Leaving = [None, None];
        if self.by_conn.get(conn).is_some_and(|p| p.value.len() + size > self.limit) {
            leaving[0] = self.take(conn);
        }
        let pack = match self.by_conn.get_mut(conn) {
            Some(pack) => pack,
            None => {
                let value = self.spare.pop().unwrap_or_default();
                self.by_conn.entry(conn.to_string()).or_insert(Pack { value, records: 0, ts_ns })
            }
        };
        pack.value.extend_from_slice(line);
        pack.value.extend_from_slice(payload);
        pack.value.extend_from_slice(FILE_SEPARATOR);
        pack.records += 1;
        self.buffered += 1;
        if pack.value.len() >= self.limit {
            leaving[1] = self.take(conn);
        }
        leaving
    }

    /// The pack of `conn`, if it holds records.
    pub fn take(&mut self, conn: &str) -> Option<(String, Pack)> {
        let (conn, pack) = self.by_conn.remove_entry(conn)?;
        self.buffered -= pack.records;
        Some((conn, pack))
    }

    /// Every pack (the end of a batch past the wait, a flush, shutdown).
    /// Every pack, oldest first record first: packs of several connections gathered
    /// over the same wait keep capture order in their partition as far as packs can.
    pub fn take_all(&mut self) -> Vec<(String, Pack)> {
        self.buffered = 0;
        let mut all: Vec<(String, Pack)> = self.by_conn.drain().collect();
        all.sort_unstable_by_key(|(_, pack)| pack.ts_ns);
        all
    }

    /// Gives a sent pack's buffer back for reuse (a few are kept).
    pub fn recycle(&mut self, mut value: Vec<u8>) {
        if self.spare.len() < 64 && value.capacity() <= 2 * self.limit {
            value.clear();
            self.spare.push(value);
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
    header_buf: Vec<u8>,
    /// Key of the next record sent as parts.
    next_part_set: usize,
    records_split: u64,
    /// `batch` format: each connection's pack being filled.
    packs: Packs,
    /// Reused per record: its full header line (`batch` format).
    line_buf: Vec<u8>,
    /// `batch` format: when the packs' oldest record was added (`None`: packs empty).
    packs_since: Option<Instant>,
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
            delivery,
            dropped: 0,
            drop_logged: HashMap::new(),
            iface_names: HashMap::new(),
            value_buf: Vec::new(),
            header_buf: Vec::new(),
            next_part_set: 1,
            records_split: 0,
            packs: Packs::new(config.batch_bytes.max(1)),
            line_buf: Vec::new(),
            packs_since: None,
            config,
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
        self.drop_records(reason, detail, 1);
    }

    fn drop_records(&mut self, reason: &str, detail: String, records: u64) {
        self.dropped += records;
        self.delivery.count_reasons(reason, records);
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
    /// Queues one Kafka message with delivery opaque `opaque`. On failure returns the
    /// drop reason and its detail.
    fn send(&self, key: &[u8], value: &[u8], ts_ns: u64, headers: OwnedHeaders, opaque: usize) -> Result<(), (String, String)> {
        let sent = self.producer.send(
            BaseRecord::with_opaque_to(&self.config.topic, opaque)
                .key(key)
                .payload(value)
                .headers(headers)
                .timestamp((ts_ns / 1_000_000) as i64),
        );
        sent.map_err(|(e, _)| match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => (
                "buffer_full".to_string(),
                format!("the send buffer (--kafka-buffer {} bytes) is full: the broker is down or slow", self.config.buffer_bytes),
            ),
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => (
                "too_large".to_string(),
                format!(
                    "a message of {} bytes exceeds message.max.bytes; lower --max-message-size or --kafka-part-size, or raise it with --kafka-opt message.max.bytes=N (and the topic's max.message.bytes)",
                    value.len()
                ),
            ),
            _ => (reason_name(&e), e.to_string()),
        })
    }

    /// Queues one record alone in its message (the `records` format, or a part in
    /// either format) with delivery opaque `opaque`.
    fn send_record(&mut self, record: &Record, opaque: usize) -> Result<(), (String, String)> {
        // librdkafka copies key, value and headers: build them in reused buffers.
        let mut value = std::mem::take(&mut self.value_buf);
        value.clear();
        // TLS plaintext is read at the library, on no interface.
        let iface = if record.meta.tls { "" } else { Self::iface_name(&mut self.iface_names, record.meta.ifindex) };
        let headers = match self.config.format {
            KafkaFormat::Records => {
                record.write_header_line(&mut value);
                value.extend_from_slice(&record.payload);
                headers(record, iface, &mut self.header_buf)
            }
            KafkaFormat::Batch => {
                record.write_full_header_line(&mut value, iface);
                value.extend_from_slice(&record.payload);
                value.extend_from_slice(FILE_SEPARATOR);
                batch_headers()
            }
        };
        let sent = self.send(record.connection_id().as_bytes(), &value, record.ts_ns, headers, opaque);
        self.value_buf = value;
        sent
    }

    /// Queues a pack as one message; its records are dropped if it cannot be queued.
    fn send_pack(&mut self, conn: &str, pack: Pack) {
        let d = &self.delivery;
        // In flight before the send: the producer's thread may deliver it at once.
        d.records_in_flight.fetch_add(pack.records, Ordering::Relaxed);
        if let Err((reason, detail)) = self.send(conn.as_bytes(), &pack.value, pack.ts_ns, batch_headers(), records_opaque(pack.records)) {
            self.delivery.records_in_flight.fetch_sub(pack.records, Ordering::Relaxed);
            self.drop_records(&reason, format!("{detail} ({} records of one connection)", pack.records), pack.records);
        }
        self.packs.recycle(pack.value);
    }

    fn send_all_packs(&mut self) {
        self.packs_since = None;
        for (conn, pack) in self.packs.take_all() {
            self.send_pack(&conn, pack);
        }
    }

    /// `batch` format: appends a record to its connection's pack.
    fn pack(&mut self, record: &Record) {
        let iface = if record.meta.tls { "" } else { Self::iface_name(&mut self.iface_names, record.meta.ifindex) };
        self.line_buf.clear();
        record.write_full_header_line(&mut self.line_buf, iface);
        let leaving = self.packs.add(record.connection_id(), record.ts_ns, &self.line_buf, &record.payload);
        if self.packs_since.is_none() {
            self.packs_since = Some(Instant::now());
        }
        for (conn, pack) in leaving.into_iter().flatten() {
            self.send_pack(&conn, pack);
        }
    }

    /// Sends a record larger than the part size as continuation records: same id, key
    /// and metadata, a slice of the payload each.
    fn send_parts(&mut self, record: &Record) {
        // The connection's earlier records leave first: order per connection.
        if let Some((conn, pack)) = self.packs.take(record.connection_id()) {
            self.send_pack(&conn, pack);
        }
        let size = self.config.part_size.max(1);
        let count = record.payload.len().div_ceil(size) as u32;
        let set = self.next_part_set;
        self.next_part_set = (self.next_part_set + 1) & (usize::MAX >> 1);
        self.records_split += 1;
        self.delivery.begin_parts(set, count);
        let mut part = record.clone();
        for index in 1..=count {
            let start = (index as usize - 1) * size;
            part.payload = record.payload.slice(start..(start + size).min(record.payload.len()));
            part.meta.part = Some((index, count));
            if let Err(reason) = self.send_record(&part, part_opaque(set)) {
                // This part and the ones after it are never sent.
                self.delivery.parts_not_sent(set, count - index + 1);
                // Parts already queued still go out; the replayer counts the set incomplete.
                self.drop_record(&reason.0, format!("{} (part {index} of {count})", reason.1));
                break;
            }
        }
    }
}

/// The only Kafka header of a `batch` message.
fn batch_headers() -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(1).insert(Header { key: FORMAT_HEADER, value: Some(FORMAT_BATCH) })
}

impl RecordSink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.config.brokers, self.config.topic)
    }

    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        if record.payload.len() > self.config.part_size {
            self.send_parts(record);
            return Ok(());
        }
        match self.config.format {
            KafkaFormat::Batch => self.pack(record),
            KafkaFormat::Records => {
                self.delivery.records_in_flight.fetch_add(1, Ordering::Relaxed);
                if let Err(reason) = self.send_record(record, records_opaque(1)) {
                    self.delivery.records_in_flight.fetch_sub(1, Ordering::Relaxed);
                    self.drop_record(&reason.0, reason.1);
                }
            }
        }
        Ok(())
    }

    fn end_batch(&mut self) {
        if self.packs_since.is_some_and(|t| t.elapsed() >= self.config.pack_wait) {
            self.send_all_packs();
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // The producer's own thread sends and polls; only the packs are pushed here.
        self.send_all_packs();
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.send_all_packs();
        let pending = self.producer.in_flight_count();
        if pending > 0 {
            info!("{}: waiting up to {:?} for {pending} message(s) to be acknowledged", self.describe(), self.config.flush_timeout);
        }
        if let Err(e) = self.producer.flush(self.config.flush_timeout) {
            return Err(SinkError::Kafka {
                sink: self.describe(),
                message: format!(
                    "{} message(s) not acknowledged within --kafka-flush-timeout {:?} ({e}); their records are reported as pending",
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
            // Records in packs, in queued messages, and split records (once each).
            records_pending: {
                let queued = self.delivery.records_in_flight.load(Ordering::Relaxed);
                let split = self.delivery.part_sets.lock().unwrap().values().filter(|p| !p.dropped).count() as u64;
                self.packs.buffered() + queued + split
            },
            messages_written: self.delivery.messages_acked.load(Ordering::Relaxed),
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
        let mut sink = unreachable_sink(KafkaFormat::Records, 1000);
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

    /// A sink whose broker never answers: messages wait, then time out.
    fn unreachable_sink(format: KafkaFormat, batch_bytes: usize) -> KafkaSink {
        unreachable_sink_with(format, batch_bytes, ("message.timeout.ms", "1500"))
    }

    fn unreachable_sink_with(format: KafkaFormat, batch_bytes: usize, option: (&str, &str)) -> KafkaSink {
        unreachable_sink_waiting(format, batch_bytes, option, Duration::ZERO)
    }

    fn unreachable_sink_waiting(format: KafkaFormat, batch_bytes: usize, option: (&str, &str), pack_wait: Duration) -> KafkaSink {
        KafkaSink::create(KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            options: vec![(option.0.into(), option.1.into())],
            buffer_bytes: 64 << 20,
            flush_timeout: Duration::from_millis(100),
            client_id: "test".into(),
            part_size: 1000,
            format,
            batch_bytes,
            pack_wait,
        })
        .unwrap()
    }

    fn split(value: &[u8]) -> Vec<crate::record::ParsedRecord> {
        crate::record::split_file(value).into_iter().map(|v| crate::record::parse_value(v.unwrap()).unwrap()).collect()
    }

    /// A pack never grows past its limit with a second record; a record larger than the
    /// limit leaves alone; other connections have their own packs; taking all empties it.
    #[test]
    fn packs_stay_within_their_size_and_keep_connections_apart() {
        let mut packs = Packs::new(200);
        let line = b"1 a 1 0 len=40\n";
        let body = [b'x'; 40];
        assert_eq!(line.len() + body.len() + FILE_SEPARATOR.len(), 69, "2 records fit in 200 bytes, 3 do not");
        let mut left = Vec::new();
        for i in 0..7 {
            left.extend(packs.add("c1", i, line, &body).into_iter().flatten());
            left.extend(packs.add("c2", 100 + i, line, &body).into_iter().flatten());
        }
        let shape: Vec<(&str, u64, u64, usize)> = left.iter().map(|(c, p)| (c.as_str(), p.records, p.ts_ns, p.value.len())).collect();
        assert_eq!(
            shape,
            [("c1", 2, 0, 138), ("c2", 2, 100, 138), ("c1", 2, 2, 138), ("c2", 2, 102, 138), ("c1", 2, 4, 138), ("c2", 2, 104, 138)]
        );
        assert_eq!(split(&left[0].1.value).len(), 2, "a pack is whole records in the file format");
        assert_eq!(packs.buffered(), 2);
        let mut rest: Vec<(String, u64)> = packs.take_all().into_iter().map(|(c, p)| (c, p.records)).collect();
        rest.sort();
        assert_eq!(rest, [("c1".to_string(), 1), ("c2".to_string(), 1)]);
        assert_eq!(packs.buffered(), 0);
        // A record larger than the limit: the pack before it leaves, then it alone.
        packs.add("c1", 1, line, &body);
        let big = [b'y'; 300];
        let [before, alone] = packs.add("c1", 2, b"1 b 2 0 len=300\n", &big);
        assert_eq!(before.unwrap().1.records, 1);
        let alone = alone.unwrap().1;
        assert_eq!((alone.records, alone.ts_ns), (1, 2));
        assert_eq!(split(&alone.value)[0].payload, big);
        assert_eq!(packs.buffered(), 0);
    }

    /// Packs gathered over one wait left in hash order, so a later connection's records
    /// could precede an earlier one's in their partition (kernel_controls saw the third
    /// connection's request first). They leave oldest first record first.
    #[test]
    fn packs_of_several_connections_left_out_of_capture_order() {
        let mut packs = Packs::new(1 << 20);
        let conns: Vec<String> = (0..50).map(|i| format!("conn-{i}")).collect();
        for (i, conn) in conns.iter().enumerate() {
            packs.add(conn, 1000 + i as u64, b"1 a 1 0 len=0\n", b"");
        }
        let order: Vec<String> = packs.take_all().into_iter().map(|(c, _)| c).collect();
        assert_eq!(order, conns);
    }

    /// Every record of a batch-format sink is pending until delivered, then counted
    /// once per record (here failed: nothing listens), however they were packed.
    #[test]
    fn batch_accounting_counts_records_not_messages() {
        let mut sink = unreachable_sink(KafkaFormat::Batch, 700);
        let mut other = record(MessageKind::Request, None, None);
        other.id = "fedcba98765432100000000100000001".into();
        for _ in 0..10 {
            sink.write(&record(MessageKind::Request, None, None)).unwrap();
            sink.write(&other).unwrap();
        }
        let mut big = record(MessageKind::Response, Some(1), Some(200));
        big.payload = bytes::Bytes::from(vec![b'z'; 2500]);
        sink.write(&big).unwrap();
        let s = sink.stats();
        assert_eq!((s.records_pending, s.records_split), (21, 1));
        assert!(sink.packs.buffered() < 20, "full packs left before the batch ended");
        sink.end_batch();
        assert_eq!(sink.packs.buffered(), 0, "the end of a batch sends every pack");
        assert_eq!(sink.stats().records_pending, 21);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while sink.stats().records_pending > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = sink.stats();
        assert_eq!((s.records_failed, s.records_written, s.records_pending, s.messages_written), (21, 0, 0, 0));
        assert_eq!(s.reasons, [("message_timed_out".to_string(), 21)]);
    }

    /// Packs gather records across batches until their oldest waited `pack_wait`; a
    /// flush (the agent's tick, shutdown) sends them whatever their age.
    #[test]
    fn packs_outlive_batches_until_their_wait_or_a_flush() {
        let mut held = unreachable_sink_waiting(KafkaFormat::Batch, 100_000, ("message.timeout.ms", "1500"), Duration::from_secs(3600));
        for _ in 0..3 {
            held.write(&record(MessageKind::Request, None, None)).unwrap();
            held.end_batch();
        }
        assert_eq!(held.packs.buffered(), 3, "batch ends within the wait keep the pack");
        held.flush().unwrap();
        assert_eq!(held.packs.buffered(), 0, "a flush sends every pack");
        assert_eq!(held.stats().records_pending, 3);

        let wait = Duration::from_millis(30);
        let mut timed = unreachable_sink_waiting(KafkaFormat::Batch, 100_000, ("message.timeout.ms", "1500"), wait);
        timed.write(&record(MessageKind::Request, None, None)).unwrap();
        std::thread::sleep(wait);
        timed.write(&record(MessageKind::Request, None, None)).unwrap();
        timed.end_batch();
        assert_eq!(timed.packs.buffered(), 0, "the first batch end after the wait sends the packs");
        timed.write(&record(MessageKind::Request, None, None)).unwrap();
        assert!(timed.packs_since.is_some(), "a new pack starts its own wait");
    }

    /// A pack that cannot be queued drops each of its records, counted by reason.
    #[test]
    fn a_pack_refused_by_a_full_buffer_drops_its_records() {
        let mut sink = unreachable_sink_with(KafkaFormat::Batch, 1000, ("queue.buffering.max.messages", "1"));
        let mut other = record(MessageKind::Request, None, None);
        other.id = "fedcba98765432100000000100000001".into();
        for _ in 0..3 {
            sink.write(&record(MessageKind::Request, None, None)).unwrap();
        }
        for _ in 0..4 {
            sink.write(&other).unwrap();
        }
        sink.end_batch();
        let s = sink.stats();
        // One message fits the queue: one connection's records are pending, the other's dropped.
        assert!(matches!((s.records_pending, s.records_dropped), (3, 4) | (4, 3)), "{s:?}");
        assert_eq!(s.reasons, [("buffer_full".to_string(), s.records_dropped)]);
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
