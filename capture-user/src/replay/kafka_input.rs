//! Kafka as a replay input.
//!
//! Two modes:
//! - **Time window** (`--from`/`--to`, no `--group`): reads every partition from the
//!   first offset at or after `from` (by message timestamp; from the start if the
//!   broker cannot look offsets up by time) up to the end of the window or the
//!   partition's end as of the start, without a consumer group and without committing.
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

use super::input::{Exchange, InputStats, Pairer, PendingParts};

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
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaInputError {
    #[error("kafka://{brokers}/{topic}: {what}: {source}")]
    Kafka {
        brokers: String,
        topic: String,
        what: &'static str,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
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
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.options {
            cfg.set(k, v);
        }
        cfg.create().map_err(self.err("creating the consumer"))
    }
}

/// Adds one Kafka message to the pairer (the captured server address comes from its header).
fn add(pairer: &mut Pairer, msg: &rdkafka::message::BorrowedMessage<'_>) {
    let server = msg.headers().and_then(|h| {
        h.iter().find(|h| h.key == "capture-server").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    });
    match msg.payload() {
        Some(value) => pairer.add_value_from(value, server, Some((msg.partition(), msg.offset()))),
        None => pairer.add_null(),
    }
}

/// Reads the time window; returns exchanges in capture order.
pub fn read_window(input: &KafkaInput) -> Result<(Vec<Exchange>, InputStats), KafkaInputError> {
    let consumer = input.consumer(&format!("capture-replay-window-{}", std::process::id()))?;
    let md = consumer.fetch_metadata(Some(&input.topic), Duration::from_secs(10)).map_err(input.err("reading metadata"))?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == input.topic && t.error().is_none())
        .ok_or_else(|| KafkaInputError::NoTopic(input.brokers.clone(), input.topic.clone()))?;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in topic.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(&input.topic, p.id(), Duration::from_secs(10))
            .map_err(input.err("reading watermarks"))?;
        if high > low {
            ends.insert(p.id(), high);
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
    let mut pairer = Pairer::default();
    let mut done: HashMap<i32, bool> = ends.keys().map(|&p| (p, false)).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    // Past every partition's reported end, keep reading until a quiet second: some
    // brokers under-report the high watermark (tansu 0.6 counts batches).
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if done.values().all(|d| *d) && quiet_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            quiet_since.get_or_insert_with(Instant::now);
            if done.is_empty() {
                break;
            }
            continue;
        };
        quiet_since = None;
        let msg = result.map_err(input.err("consuming"))?;
        let p = msg.partition();
        if msg.offset() + 1 >= ends.get(&p).copied().unwrap_or(0) {
            done.insert(p, true);
        }
        let ts = msg.timestamp().to_millis().unwrap_or(0);
        if input.to_ms.is_some_and(|to| ts > to) {
            done.insert(p, true);
            continue;
        }
        if input.from_ms.is_some_and(|from| ts < from) {
            continue;
        }
        add(&mut pairer, &msg);
    }
    Ok(pairer.finish())
}

/// Group mode: calls `replay` with each batch of exchanges, then commits the batch.
pub fn consume_group(
    input: &KafkaInput,
    group: &str,
    mut replay: impl FnMut(Vec<Exchange>),
) -> Result<InputStats, KafkaInputError> {
    let consumer = input.consumer(group)?;
    consumer.subscribe(&[&input.topic]).map_err(input.err("subscribing"))?;
    let mut total = InputStats::default();
    let mut last_record = Instant::now();
    // Continuation records whose other parts come in a later batch.
    let mut parts = PendingParts::default();
    loop {
        let mut pairer = Pairer::with_parts(std::mem::take(&mut parts));
        let batch_start = Instant::now();
        let mut n = 0;
        // A batch: up to 1 s or 10,000 records; a response is usually close behind its request.
        while batch_start.elapsed() < Duration::from_secs(1) && n < 10_000 {
            let Some(result) = consumer.poll(Duration::from_millis(200)) else { continue };
            let msg = result.map_err(input.err("consuming"))?;
            add(&mut pairer, &msg);
            n += 1;
            last_record = Instant::now();
        }
        let (exchanges, stats, waiting) = pairer.finish_batch();
        parts = waiting;
        total.add(&stats);
        if !exchanges.is_empty() {
            replay(exchanges);
        }
        if n > 0 {
            // Everything polled so far was replayed (at-least-once), except messages
            // whose continuation records are still coming: commit no further than them.
            let waiting = parts.earliest_offsets();
            let committed = consumer.position().and_then(|position| {
                let mut tpl = TopicPartitionList::new();
                for e in position.elements() {
                    if let Offset::Offset(next) = e.offset() {
                        let next = waiting.get(&e.partition()).map_or(next, |&w| w.min(next));
                        tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(next))?;
                    }
                }
                consumer.commit(&tpl, CommitMode::Sync)
            });
            if let Err(e) = committed {
                warn!("kafka://{}/{}: commit failed ({e}); these records may be replayed again", input.brokers, input.topic);
            }
        }
        if last_record.elapsed() >= input.idle {
            info!("kafka://{}/{}: no new record for {:?}, stopping", input.brokers, input.topic, input.idle);
            total.parts_incomplete += parts.waiting_records();
            return Ok(total);
        }
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
