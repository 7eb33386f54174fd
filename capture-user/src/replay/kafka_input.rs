//! Kafka as a replay input.
//!
//! Two modes:
//! - **Time window** (`--from`/`--to`, no `--group`): reads every partition from the
//!   first offset at or after `from` (by message timestamp; from the start if the
//!   broker cannot look offsets up by time) up to the end of the window or the
//!   partition's end as of the start, without a consumer group and without committing.
//!   Exchanges stream to the replay as they are read, put in request time order by a
//!   bounded buffer ([`WindowInput`], [`super::reorder`]).
//! - **Consumer group** (`--group`): consumes in batches; a batch's offsets are
//!   committed only after all its requests were replayed (at-least-once). Several
//!   replayers with the same group share the partitions. Stops after `idle` without
//!   new records.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::input::{Exchange, InputStats, Pairer, PairingWindow, WholeInput};
use super::reorder::Reorder;
use crate::record::{parse_value, split_file};
use crate::sink::kafka::{FORMAT_BATCH, FORMAT_HEADER};

#[derive(Clone, Debug)]
pub struct KafkaInput {
    pub brokers: String,
    pub topic: String,
    pub group: Option<String>,
    /// Window bounds, wall-clock ms.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub options: Vec<(String, String)>,
    /// Group mode: stop after this long without a new record.
    pub idle: Duration,
    /// Time window: how long past its request time an exchange waits for earlier ones
    /// read from other partitions (see [`super::reorder`]).
    pub reorder_window: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaInputError {
    /// A Kafka client call failed; `what` says which step, the source why.
    #[error("kafka://{brokers}/{topic}: {what}")]
    Kafka {
        brokers: String,
        topic: String,
        what: &'static str,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The topic does not exist on the brokers.
    #[error("kafka://{0}/{1}: topic not found")]
    NoTopic(String, String),
}

impl KafkaInput {
    fn err(&self, what: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> KafkaInputError + '_ {
        move |source| KafkaInputError::Kafka {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            what,
            source: Box::new(source),
        }
    }

    fn consumer(&self, group: &str) -> Result<BaseConsumer, KafkaInputError> {
        self.config(group).create().map_err(self.err("creating the consumer"))
    }

    fn config(&self, group: &str) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.options {
            cfg.set(k, v);
        }
        cfg
    }
}

/// The value of a Kafka header of `msg`.
fn header<'a>(msg: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a [u8]> {
    msg.headers().and_then(|h| h.iter().find(|h| h.key == key).and_then(|h| h.value))
}

/// Whether a record of time `ts_ns` is inside the window (wall-clock ms bounds).
fn in_window(input: &KafkaInput, ts_ms: i64) -> bool {
    !input.from_ms.is_some_and(|from| ts_ms < from) && !input.to_ms.is_some_and(|to| ts_ms > to)
}

/// Adds the records of one Kafka message to the pairer, those `keep` accepts (by
/// their time in ms). A `batch` value is split into its records (each one keeps its
/// own time); a `records` value is one record, whose captured server address comes
/// from its header.
fn add(pairer: &mut Pairer, msg: &rdkafka::message::BorrowedMessage<'_>, keep: impl Fn(i64) -> bool) {
    let Some(value) = msg.payload() else {
        pairer.add_null();
        return;
    };
    let message = MessageView {
        value,
        format: header(msg, FORMAT_HEADER),
        ts_ms: msg.timestamp().to_millis().unwrap_or(0),
        server: header(msg, "capture-server"),
        origin: (msg.partition(), msg.offset()),
    };
    add_records(pairer, &message, keep);
}

/// What [`add_records`] needs of a Kafka message (a struct, so it is tested without a broker).
struct MessageView<'a> {
    value: &'a [u8],
    /// The `capture-format` header.
    format: Option<&'a [u8]>,
    ts_ms: i64,
    /// The `capture-server` header (records format).
    server: Option<&'a [u8]>,
    origin: (i32, i64),
}

fn add_records(pairer: &mut Pairer, m: &MessageView<'_>, keep: impl Fn(i64) -> bool) {
    let origin = Some(m.origin);
    match m.format {
        Some(format) if format == FORMAT_BATCH.as_bytes() => {
            for record in split_file(m.value) {
                match record {
                    Ok(record) => {
                        let ts_ms = parse_value(record).map(|r| (r.ts_ns / 1_000_000) as i64);
                        // A record that does not parse is counted by the pairer.
                        if ts_ms.map_or(true, &keep) {
                            pairer.add_value_from(record, None, origin);
                        }
                    }
                    Err(_) => pairer.add_bad(),
                }
            }
        }
        // A newer format this reader does not know: counted, never replayed as garbage.
        Some(_) => pairer.add_bad(),
        None => {
            if keep(m.ts_ms) {
                let server = m.server.map(|v| String::from_utf8_lossy(v).into_owned());
                pairer.add_value_from(m.value, server, origin);
            }
        }
    }
}

/// How often the input's counters are handed to the caller while reading (group mode).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A time window's exchanges held for ordering, at most (see [`super::reorder`]).
pub const REORDER_MAX_BYTES: usize = 64 << 20;

/// Past every partition's reported end, reading goes on until this long without a
/// message: some brokers under-report the high watermark (tansu 0.6 counts batches).
const QUIET_AT_END: Duration = Duration::from_secs(1);

/// Reading stops after this long without any message even if a partition has not
/// reached its reported end (its last offsets are transaction markers, or deleted).
const QUIET_LIMIT: Duration = Duration::from_secs(10);

/// A time window as a stream of exchanges in request time order (within the reorder
/// window: see [`super::reorder`]), read as they are replayed, so memory stays bounded
/// whatever the window's size. After the iteration, [`WindowInput::stats`] counts what
/// was read and [`WindowInput::error`] says if the broker failed mid-way.
pub struct WindowInput {
    input: KafkaInput,
    consumer: BaseConsumer,
    pairer: Pairer,
    order: Reorder,
    /// Per partition, its end offset as of the start, and whether it was reached.
    ends: HashMap<i32, (i64, bool)>,
    quiet_since: Option<Instant>,
    /// Reading is over (the window read, or an error): what is held is drained.
    read_all: bool,
    error: Option<KafkaInputError>,
}

impl WindowInput {
    /// Looks the window up and assigns its partitions; an error here comes before
    /// anything is replayed.
    pub fn open(input: &KafkaInput) -> Result<WindowInput, KafkaInputError> {
        let consumer = input.consumer(&format!("capture-replay-window-{}", std::process::id()))?;
        let md = consumer.fetch_metadata(Some(&input.topic), Duration::from_secs(10)).map_err(input.err("reading metadata"))?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == input.topic && t.error().is_none())
            .ok_or_else(|| KafkaInputError::NoTopic(input.brokers.clone(), input.topic.clone()))?;
        let mut ends: HashMap<i32, (i64, bool)> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&input.topic, p.id(), Duration::from_secs(10))
                .map_err(input.err("reading watermarks"))?;
            if high > low {
                ends.insert(p.id(), (high, false));
                tpl.add_partition_offset(&input.topic, p.id(), Offset::Offset(low)).map_err(input.err("assigning"))?;
            }
        }
        // Start at the window's first offset when the broker can look it up by time.
        if let Some(from) = input.from_ms {
            let mut query = TopicPartitionList::new();
            for &p in ends.keys() {
                let _ = query.add_partition_offset(&input.topic, p, Offset::Offset(from));
            }
            match consumer.offsets_for_times(query, Duration::from_secs(10)) {
                Ok(found) => {
                    for e in found.elements() {
                        log::debug!("partition {} starts at {:?} for time {from}", e.partition(), e.offset());
                        if let Offset::Offset(o) = e.offset() {
                            let _ = tpl.set_partition_offset(&input.topic, e.partition(), Offset::Offset(o));
                        }
                    }
                }
                Err(e) => warn!("kafka://{}/{}: offsets by time not available ({e}); scanning from the start", input.brokers, input.topic),
            }
        }
        consumer.assign(&tpl).map_err(input.err("assigning partitions"))?;
        let order = Reorder::new(ends.keys().copied(), input.reorder_window, REORDER_MAX_BYTES);
        Ok(WindowInput {
            input: input.clone(),
            consumer,
            pairer: Pairer::new(PairingWindow::default()),
            order,
            read_all: ends.is_empty(),
            ends,
            quiet_since: None,
            error: None,
        })
    }

    /// The input's counters so far (at the end: of the whole window).
    pub fn stats(&self) -> InputStats {
        let mut stats = self.pairer.stats.clone();
        if self.read_all {
            stats.parts_incomplete += self.pairer.waiting_parts();
        }
        stats.late = self.order.stats.late;
        stats.reorder_full = self.order.stats.forced;
        stats
    }

    /// The broker error that ended the input early, if any.
    pub fn error(&self) -> Option<&KafkaInputError> {
        self.error.as_ref()
    }

    /// Polls one message into the pairer; marks the input read when the window is.
    fn read(&mut self) {
        let quiet = self.quiet_since.map_or(Duration::ZERO, |t| t.elapsed());
        let at_ends = self.ends.values().all(|(_, reached)| *reached);
        if (at_ends && quiet >= QUIET_AT_END) || quiet >= QUIET_LIMIT {
            if !at_ends {
                let behind: Vec<i32> = self.ends.iter().filter(|(_, (_, reached))| !reached).map(|(p, _)| *p).collect();
                warn!("kafka://{}/{}: no message for {QUIET_LIMIT:?}, partitions {behind:?} short of their end offset: the window ends here", self.input.brokers, self.input.topic);
            }
            self.read_all = true;
            return;
        }
        let Some(result) = self.consumer.poll(Duration::from_millis(200)) else {
            self.quiet_since.get_or_insert_with(Instant::now);
            return;
        };
        self.quiet_since = None;
        let msg = match result {
            Ok(msg) => msg,
            Err(e) => {
                self.error = Some(self.input.err("consuming")(e));
                self.read_all = true;
                return;
            }
        };
        let p = msg.partition();
        if let Some((end, reached)) = self.ends.get_mut(&p) {
            *reached |= msg.offset() + 1 >= *end;
        }
        // A message's time is its first record's: past the window, so is the rest of
        // the partition (as far as capture order goes); its records are checked one by one.
        let ts = msg.timestamp().to_millis().unwrap_or(0);
        self.order.advance(p, (ts.max(0) as u64).saturating_mul(1_000_000));
        if self.input.to_ms.is_some_and(|to| ts > to) {
            if let Some((_, reached)) = self.ends.get_mut(&p) {
                *reached = true;
            }
            return;
        }
        add(&mut self.pairer, &msg, |ts_ms| in_window(&self.input, ts_ms));
    }
}

impl WholeInput for WindowInput {
    fn stats(&self) -> InputStats {
        WindowInput::stats(self)
    }

    fn failure(&self) -> Option<String> {
        self.error().map(|e| e.to_string())
    }
}

impl Iterator for WindowInput {
    type Item = Exchange;

    fn next(&mut self) -> Option<Exchange> {
        loop {
            if let Some(exchange) = self.order.pop() {
                return Some(exchange);
            }
            if let Some(exchange) = self.pairer.pop_ready() {
                self.order.push(exchange);
                continue;
            }
            if self.read_all {
                // The requests still waiting for a response, then everything held.
                while let Some(exchange) = self.pairer.pop_any() {
                    self.order.push(exchange);
                }
                self.order.end();
                return self.order.pop();
            }
            self.read();
        }
    }
}

/// What group mode hands its caller.
pub enum GroupEvent {
    /// A batch of exchanges to replay.
    Batch(Vec<Exchange>),
    /// Records `[from, to)` of a partition were replayed (all but those handed to
    /// another replayer in a rebalance) and their offsets committed.
    Replayed { partition: i32, from: i64, to: i64 },
    /// The input's counters so far (every [`PROGRESS_EVERY`] while polling).
    Progress(InputStats),
}

/// Group mode: remembers the partitions a rebalance takes away, so records of theirs
/// that were read but not yet replayed are left to their new owner.
#[derive(Default)]
struct GroupContext {
    revoked: std::sync::Mutex<Vec<i32>>,
}

impl rdkafka::ClientContext for GroupContext {}

impl rdkafka::consumer::ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        match rebalance {
            rdkafka::consumer::Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!("kafka: partitions {partitions:?} revoked");
                self.revoked.lock().unwrap_or_else(|e| e.into_inner()).extend(partitions);
            }
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!("kafka: partitions {partitions:?} assigned");
            }
            rdkafka::consumer::Rebalance::Error(e) => warn!("kafka: rebalance error: {e}"),
        }
    }
}

/// Group mode: calls `replay` with each batch of exchanges and the records it was read
/// from, then commits the batch. A request waiting for its response at the end of a
/// batch waits one more batch; the commit goes no further than the records still held.
pub fn consume_group(input: &KafkaInput, group: &str, mut on: impl FnMut(GroupEvent)) -> Result<InputStats, KafkaInputError> {
    let context = GroupContext::default();
    let consumer: BaseConsumer<GroupContext> = input.config(group).create_with_context(context).map_err(input.err("creating the consumer"))?;
    consumer.subscribe(&[&input.topic]).map_err(input.err("subscribing"))?;
    let mut last_record = Instant::now();
    let mut pairer = Pairer::new(PairingWindow::default());
    let mut handed_over = 0;
    // Per partition, the first offset read and not yet reported replayed.
    let mut unreported: HashMap<i32, i64> = HashMap::new();
    let mut reported = Instant::now();
    loop {
        let batch_start = Instant::now();
        let mut n = 0;
        // A batch: up to 1 s or 10,000 records.
        while batch_start.elapsed() < Duration::from_secs(1) && n < 10_000 {
            if reported.elapsed() >= PROGRESS_EVERY {
                on(GroupEvent::Progress(InputStats { handed_over: pairer.stats.handed_over + handed_over, ..pairer.stats.clone() }));
                reported = Instant::now();
            }
            let polled = consumer.poll(Duration::from_millis(200));
            let revoked = std::mem::take(&mut *consumer.context().revoked.lock().unwrap_or_else(|e| e.into_inner()));
            if !revoked.is_empty() {
                // Read, not replayed, not committed: the new owner replays them.
                handed_over += pairer.drop_partitions(&revoked);
                unreported.retain(|p, _| !revoked.contains(p));
            }
            let Some(result) = polled else { continue };
            let msg = result.map_err(input.err("consuming"))?;
            add(&mut pairer, &msg, |_| true);
            unreported.entry(msg.partition()).or_insert(msg.offset());
            n += 1;
            last_record = Instant::now();
        }
        let exchanges = pairer.take_batch();
        if !exchanges.is_empty() {
            on(GroupEvent::Batch(exchanges));
        }
        if n > 0 {
            commit(input, &consumer, &pairer, &mut unreported, &mut on);
        }
        if last_record.elapsed() >= input.idle {
            info!("kafka://{}/{}: no new record for {:?}, stopping", input.brokers, input.topic, input.idle);
            let exchanges = pairer.take_held();
            if !exchanges.is_empty() {
                on(GroupEvent::Batch(exchanges));
                commit(input, &consumer, &pairer, &mut unreported, &mut on);
            }
            let mut stats = pairer.finish_live();
            stats.handed_over += handed_over;
            return Ok(stats);
        }
    }
}

/// Commits what was replayed: everything polled so far (at-least-once), except records
/// still held (requests waiting for a response, parts of a message), and reports the
/// records replayed since the last commit.
fn commit(
    input: &KafkaInput,
    consumer: &BaseConsumer<GroupContext>,
    pairer: &Pairer,
    unreported: &mut HashMap<i32, i64>,
    on: &mut impl FnMut(GroupEvent),
) {
    let held = pairer.earliest_offsets();
    let committed = consumer.position().and_then(|position| {
        let mut tpl = TopicPartitionList::new();
        for e in position.elements() {
            if let Offset::Offset(next) = e.offset() {
                let bound = held.get(&e.partition()).map_or(next, |&w| w.min(next));
                tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(bound))?;
                if let Some(from) = unreported.get(&e.partition()).copied().filter(|&from| from < bound) {
                    on(GroupEvent::Replayed { partition: e.partition(), from, to: bound });
                    if bound < next {
                        unreported.insert(e.partition(), bound);
                    } else {
                        unreported.remove(&e.partition());
                    }
                }
            }
        }
        consumer.commit(&tpl, CommitMode::Sync)
    });
    if let Err(e) = committed {
        warn!("kafka://{}/{}: commit failed ({e}); these records may be replayed again", input.brokers, input.topic);
    }
}

/// Parses `--from`/`--to`: RFC 3339 (`2026-11-25T06:00:00Z`) or relative to now
/// (`-15m`, `-2h`, `-30s`, `now`). Returns wall-clock ms.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel).map_err(|e| format!("{s:?}: {e}"))?;
        return Ok(now_ms - d.as_millis() as i64);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: expected RFC 3339 (2026-11-25T06:00:00Z) or -15m: {e}"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gor(records: &[(u8, &str, u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ty, id, ts_ns, payload) in records {
            out.extend_from_slice(format!("{} {id} {ts_ns} 0 len={}\n", *ty as char, payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(crate::record::FILE_SEPARATOR);
        }
        out
    }

    /// A time window keeps each record of a batch by the record's own time, not the
    /// message's (its first record's).
    #[test]
    fn a_window_filters_batch_records_by_their_own_time() {
        let id = |n: u32| format!("0123456789abcdef00000001{n:08x}");
        let (a, b, c) = (id(1), id(2), id(3));
        let value = gor(&[
            (b'1', &a, 1_000_000_000, b"GET /a HTTP/1.1\r\n\r\n"),
            (b'2', &a, 1_100_000_000, b"HTTP/1.1 200 OK\r\n\r\n"),
            (b'1', &b, 2_000_000_000, b"GET /b HTTP/1.1\r\n\r\n"),
            (b'2', &b, 2_100_000_000, b"HTTP/1.1 200 OK\r\n\r\n"),
            (b'1', &c, 3_000_000_000, b"GET /c HTTP/1.1\r\n\r\n"),
        ]);
        let input = KafkaInput {
            brokers: String::new(),
            topic: String::new(),
            group: None,
            from_ms: Some(1_500),
            to_ms: Some(2_500),
            options: Vec::new(),
            idle: Duration::ZERO,
            reorder_window: Duration::ZERO,
        };
        let mut pairer = Pairer::new(PairingWindow::default());
        let m = MessageView { value: &value, format: Some(FORMAT_BATCH.as_bytes()), ts_ms: 1_000, server: None, origin: (0, 7) };
        add_records(&mut pairer, &m, |ts| in_window(&input, ts));
        let (exchanges, stats) = pairer.finish();
        assert_eq!(exchanges.len(), 1);
        assert_eq!((exchanges[0].id.as_str(), exchanges[0].request.as_slice()), (b.as_str(), &b"GET /b HTTP/1.1\r\n\r\n"[..]));
        assert!(exchanges[0].response.is_some());
        assert_eq!((stats.records, stats.bad_records), (2, 0));
        // Every record of a batch in group mode; a torn one is counted bad.
        let mut pairer = Pairer::new(PairingWindow::default());
        add_records(&mut pairer, &m, |_| true);
        let torn = MessageView { value: &value[..value.len() - 3], ..m };
        add_records(&mut pairer, &torn, |_| true);
        let unknown = MessageView { format: Some(b"batch-9"), ..m };
        add_records(&mut pairer, &unknown, |_| true);
        let stats = pairer.finish().1;
        // 5 records, 4 whole + 1 torn, 1 value of an unknown format.
        assert_eq!((stats.records, stats.bad_records), (5 + 5 + 1, 2), "{stats:?}");
    }

    #[test]
    fn times_parse_absolute_and_relative() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("-15m", now), Ok(now - 900_000));
        assert_eq!(parse_time("-2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("2026-11-25T06:00:00Z", now), Ok(1_795_586_400_000));
        assert!(parse_time("yesterday", now).unwrap_err().contains("yesterday"));
    }
}
