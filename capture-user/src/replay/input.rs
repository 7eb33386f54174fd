//! Replay inputs: records from `.gor` files (ours or GoReplay's) or Kafka values,
//! continuation records rejoined into whole messages, paired into exchanges (a request
//! and, when captured, its production response) with the flags the capture set.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::record::{parse_value, split_next, ParseError, ParsedRecord, Split, TYPE_REQUEST, TYPE_RESPONSE};

/// One captured request and what production answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub id: String,
    /// Requests with the same key were on one captured connection and replay in order
    /// (shared: each request's keep-alive key holds it).
    pub connection: std::sync::Arc<str>,
    /// Wall-clock ns of the request's first byte.
    pub ts_ns: u64,
    pub request: Vec<u8>,
    /// The request was cut at capture: its length on the wire (the record holds less).
    pub request_cut: Option<u64>,
    /// The capture found the request's framing ambiguous (`ambiguous=REASON`).
    pub request_ambiguous: Option<String>,
    pub response: Option<CapturedResponse>,
    /// The captured server `ip:port`: from the Kafka header, or the record's `server=`.
    pub server: Option<String>,
}

/// Production's response as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedResponse {
    pub bytes: Vec<u8>,
    /// Request end to response start, ns (None when the record says -1).
    pub latency_ns: Option<u64>,
    /// Cut at capture: its length on the wire (the record holds less).
    pub cut: Option<u64>,
    /// The capture found its framing ambiguous.
    pub ambiguous: Option<String>,
    /// Not matched to its request with certainty (`unpaired=1`).
    pub unpaired: bool,
}

/// Input records by what became of them; each is counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputStats {
    /// Record values read (each continuation record counts once).
    pub records: u64,
    /// Unparseable, torn or forged (length and separator disagree), or continuation
    /// records that contradict each other: never replayed.
    pub bad_records: u64,
    /// Kafka messages without a value (tombstones).
    pub null_values: u64,
    /// Continuation records (`part=I/N`) rejoined into whole messages.
    pub parts_joined: u64,
    /// Continuation records of messages whose other parts never arrived: not replayed.
    pub parts_incomplete: u64,
    /// Continuation records seen twice (a producer retry): the copy is ignored.
    pub parts_duplicate: u64,
    pub responses_without_request: u64,
    /// GoReplay type 3 (responses of an earlier replay): not production, ignored.
    pub ignored_records: u64,
    /// Kafka records read but not yet replayed when a rebalance gave their partition to
    /// another replayer of the group, which replays them.
    pub handed_over: u64,
    /// Kafka time window: exchanges that arrived after a later one was replayed (longer
    /// than `--reorder-window`, or their partition lagged): replayed at once, out of order.
    pub late: u64,
    /// Kafka time window: exchanges replayed before `--reorder-window` passed because
    /// the order buffer was full.
    pub reorder_full: u64,
}

impl InputStats {
    /// (name, value) pairs with stable snake_case names, for reports.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("records", self.records),
            ("bad_records", self.bad_records),
            ("null_values", self.null_values),
            ("parts_joined", self.parts_joined),
            ("parts_incomplete", self.parts_incomplete),
            ("parts_duplicate", self.parts_duplicate),
            ("responses_without_request", self.responses_without_request),
            ("ignored_records", self.ignored_records),
            ("handed_over", self.handed_over),
            ("late", self.late),
            ("reorder_full", self.reorder_full),
        ]
    }

    pub fn add(&mut self, other: &InputStats) {
        self.records += other.records;
        self.bad_records += other.bad_records;
        self.null_values += other.null_values;
        self.parts_joined += other.parts_joined;
        self.parts_incomplete += other.parts_incomplete;
        self.parts_duplicate += other.parts_duplicate;
        self.responses_without_request += other.responses_without_request;
        self.ignored_records += other.ignored_records;
        self.handed_over += other.handed_over;
        self.late += other.late;
        self.reorder_full += other.reorder_full;
    }
}

/// Connection key of a record id: ours are run (16) + connection (8) + exchange (8)
/// hex digits; any other id (GoReplay's random 24-digit ids) stands alone.
pub fn connection_of(id: &str) -> std::sync::Arc<str> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..24].into()
    } else {
        id.into()
    }
}

/// Continuation records waiting for the rest of their message, by (type, id).
#[derive(Default)]
pub struct PendingParts {
    sets: HashMap<(u8, String), PartSet>,
}

struct PartSet {
    /// The first part's record (header fields and flags of the whole message).
    first: Option<ParsedRecord>,
    count: u32,
    /// Payloads by part index (a map: a forged count allocates nothing).
    parts: BTreeMap<u32, Vec<u8>>,
    /// Kafka (partition, offset) of its first record read, so a consumer group does
    /// not commit past a message it has not replayed yet.
    origin: Option<(i32, i64)>,
}

impl PendingParts {
    /// Continuation records still waiting for their other parts.
    pub fn waiting_records(&self) -> u64 {
        self.sets.values().map(|s| s.parts.len() as u64).sum()
    }

    /// Per Kafka partition, the smallest offset of a waiting continuation record.
    pub fn earliest_offsets(&self) -> HashMap<i32, i64> {
        let mut out: HashMap<i32, i64> = HashMap::new();
        for (partition, offset) in self.sets.values().filter_map(|s| s.origin) {
            let e = out.entry(partition).or_insert(offset);
            *e = (*e).min(offset);
        }
        out
    }

    /// Forgets the parts read from `partitions`; returns how many records.
    fn drop_partitions(&mut self, partitions: &[i32]) -> u64 {
        let mut n = 0;
        self.sets.retain(|_, s| {
            let gone = s.origin.is_some_and(|(p, _)| partitions.contains(&p));
            n += if gone { s.parts.len() as u64 } else { 0 };
            !gone
        });
        n
    }

    /// Adds part `index` of `count`; returns the whole message once every part is there.
    fn add(&mut self, rec: ParsedRecord, index: u32, count: u32, origin: Option<(i32, i64)>, stats: &mut InputStats) -> Option<ParsedRecord> {
        let key = (rec.type_byte, rec.id.clone());
        let set = self.sets.entry(key.clone()).or_insert_with(|| PartSet { first: None, count, parts: BTreeMap::new(), origin });
        if set.count != count {
            // Parts of one message that disagree on their count: the message is unusable.
            let set = self.sets.remove(&key).expect("present");
            stats.bad_records += 1 + set.parts.len() as u64;
            return None;
        }
        if set.parts.contains_key(&index) {
            stats.parts_duplicate += 1;
            return None;
        }
        let mut rec = rec;
        set.parts.insert(index, std::mem::take(&mut rec.payload));
        if index == 1 {
            set.first = Some(rec);
        }
        if set.parts.len() < count as usize {
            return None;
        }
        let set = self.sets.remove(&key).expect("present");
        stats.parts_joined += count as u64;
        let mut whole = set.first.expect("part 1 received");
        whole.payload = set.parts.into_values().flatten().collect();
        whole.meta.len = Some(whole.payload.len());
        whole.meta.part = None;
        Some(whole)
    }
}

/// How long a request waits for its response before it is replayed without one (a
/// streaming input): counted in records read after it (from its own Kafka partition,
/// where its response is), and in bytes held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairingWindow {
    pub records: u64,
    pub bytes: usize,
}

impl Default for PairingWindow {
    /// The agent writes a response right after its request; a GoReplay file does too.
    fn default() -> Self {
        PairingWindow { records: 100_000, bytes: 256 << 20 }
    }
}

/// A request waiting for its response.
struct Slot {
    exchange: Exchange,
    /// Records read when it was added (of its Kafka partition, if read from one).
    read_at: u64,
    /// Batch (live input) in which it was read.
    batch: u64,
    /// Kafka (partition, offset) of its record.
    origin: Option<(i32, i64)>,
}

/// Pairs records as they come: a request opens an exchange, its response (same id)
/// completes it. Exchanges come out in request order as soon as they are complete
/// ([`Pairer::pop_ready`]), so a file of any size is replayed with bounded memory.
#[derive(Default)]
pub struct Pairer {
    /// Requests in the order read, by sequence number.
    slots: BTreeMap<u64, Slot>,
    by_id: HashMap<String, u64>,
    next_seq: u64,
    /// Requests whose response came.
    paired: std::collections::HashSet<u64>,
    parts: PendingParts,
    pub stats: InputStats,
    records_read: u64,
    /// Records read per Kafka partition: a response comes from its request's partition,
    /// so records of other partitions, read side by side, do not count as waiting.
    partition_records_read: HashMap<i32, u64>,
    held_bytes: usize,
    window: PairingWindow,
    batch: u64,
}

impl Pairer {
    pub fn new(window: PairingWindow) -> Pairer {
        Pairer { window, ..Pairer::default() }
    }

    /// Continuation records still waiting for their other parts.
    pub fn waiting_parts(&self) -> u64 {
        self.parts.waiting_records()
    }

    /// Counts a Kafka message that has no value.
    pub fn add_null(&mut self) {
        self.stats.records += 1;
        self.stats.null_values += 1;
    }

    /// Counts bytes that are no record (torn in a batch value, or a format unknown here).
    pub fn add_bad(&mut self) {
        self.stats.records += 1;
        self.stats.bad_records += 1;
    }

    pub fn add_value(&mut self, value: &[u8], server: Option<String>) {
        self.add_value_from(value, server, None);
    }

    /// Adds a record value read from Kafka partition and offset `origin`.
    pub fn add_value_from(&mut self, value: &[u8], server: Option<String>, origin: Option<(i32, i64)>) {
        self.stats.records += 1;
        self.records_read += 1;
        if let Some((partition, _)) = origin {
            *self.partition_records_read.entry(partition).or_default() += 1;
        }
        let Ok(rec) = parse_value(value) else {
            self.stats.bad_records += 1;
            return;
        };
        let rec = match rec.meta.part {
            Some((index, count)) => match self.parts.add(rec, index, count, origin, &mut self.stats) {
                Some(whole) => whole,
                None => return,
            },
            None => rec,
        };
        // The header line's `server=` token (our files) when no Kafka header said it.
        let server = server.or_else(|| rec.meta.server.clone());
        let cut = rec.meta.truncated.then(|| rec.meta.original_len.unwrap_or(0));
        match rec.type_byte {
            TYPE_REQUEST => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.held_bytes += rec.payload.len();
                // A request id seen again (a duplicate record) pairs with the later copy.
                self.by_id.insert(rec.id.clone(), seq);
                let exchange = Exchange {
                    connection: connection_of(&rec.id),
                    id: rec.id,
                    ts_ns: rec.ts_ns,
                    request: rec.payload,
                    request_cut: cut,
                    request_ambiguous: rec.meta.ambiguous,
                    response: None,
                    server,
                };
                let read_at = self.read_so_far(origin);
                self.slots.insert(seq, Slot { exchange, read_at, batch: self.batch, origin });
            }
            TYPE_RESPONSE => match self.by_id.remove(&rec.id).and_then(|seq| self.slots.get_mut(&seq).map(|s| (seq, s))) {
                Some((seq, slot)) => {
                    self.held_bytes += rec.payload.len();
                    slot.exchange.response = Some(CapturedResponse {
                        bytes: rec.payload,
                        latency_ns: (rec.latency_ns >= 0).then_some(rec.latency_ns as u64),
                        cut,
                        ambiguous: rec.meta.ambiguous,
                        unpaired: rec.meta.unpaired,
                    });
                    self.paired.insert(seq);
                }
                None => self.stats.responses_without_request += 1,
            },
            _ => self.stats.ignored_records += 1,
        }
    }

    fn take(&mut self, seq: u64) -> Option<Exchange> {
        let slot = self.slots.remove(&seq)?;
        self.paired.remove(&seq);
        if self.by_id.get(&slot.exchange.id) == Some(&seq) {
            self.by_id.remove(&slot.exchange.id);
        }
        self.held_bytes -= slot.exchange.request.len() + slot.exchange.response.as_ref().map_or(0, |r| r.bytes.len());
        Some(slot.exchange)
    }

    /// Records read so far: of partition `origin`'s, if from Kafka.
    fn read_so_far(&self, origin: Option<(i32, i64)>) -> u64 {
        match origin {
            Some((partition, _)) => self.partition_records_read.get(&partition).copied().unwrap_or(0),
            None => self.records_read,
        }
    }

    /// The oldest request, once its response came or it has waited past the window.
    pub fn pop_ready(&mut self) -> Option<Exchange> {
        let (&seq, slot) = self.slots.first_key_value()?;
        let waited = self.read_so_far(slot.origin) - slot.read_at > self.window.records || self.held_bytes > self.window.bytes;
        if self.paired.contains(&seq) || waited {
            return self.take(seq);
        }
        None
    }

    /// The oldest request whatever its state (the input ended).
    pub fn pop_any(&mut self) -> Option<Exchange> {
        let seq = *self.slots.first_key_value()?.0;
        self.take(seq)
    }

    /// Exchanges in request time order (stable for equal times: capture order); the
    /// continuation records still waiting are counted incomplete.
    pub fn finish(mut self) -> (Vec<Exchange>, InputStats) {
        let mut exchanges: Vec<Exchange> = std::iter::from_fn(|| self.pop_any()).collect();
        exchanges.sort_by_key(|e| e.ts_ns);
        self.stats.parts_incomplete += self.parts.waiting_records();
        (exchanges, self.stats)
    }

    /// Live input, at the end of a batch: the exchanges whose response came, and those
    /// already waiting at the end of the previous batch (their response is not coming),
    /// in request time order. Requests read in this batch still waiting for their
    /// response stay for the next batch.
    pub fn take_batch(&mut self) -> Vec<Exchange> {
        let ready: Vec<u64> = self.slots.iter().filter(|(seq, s)| self.paired.contains(seq) || s.batch < self.batch).map(|(seq, _)| *seq).collect();
        let mut exchanges: Vec<Exchange> = ready.into_iter().filter_map(|seq| self.take(seq)).collect();
        exchanges.sort_by_key(|e| e.ts_ns);
        self.batch += 1;
        exchanges
    }

    /// Live input, at its end: the requests still waiting for a response.
    pub fn take_held(&mut self) -> Vec<Exchange> {
        self.batch += 1;
        self.take_batch()
    }

    /// Live input, at its end: the counts, with continuation records still waiting for
    /// their other parts counted incomplete.
    pub fn finish_live(mut self) -> InputStats {
        self.stats.parts_incomplete += self.parts.waiting_records();
        self.stats
    }

    /// Per Kafka partition, the smallest offset of a record still held: a consumer
    /// group commits no further.
    pub fn earliest_offsets(&self) -> HashMap<i32, i64> {
        let mut out = self.parts.earliest_offsets();
        for (partition, offset) in self.slots.values().filter_map(|s| s.origin) {
            let e = out.entry(partition).or_insert(offset);
            *e = (*e).min(offset);
        }
        out
    }

    /// Forgets the records held from `partitions` (revoked in a rebalance: their new
    /// owner reads them again from the last commit); returns how many.
    pub fn drop_partitions(&mut self, partitions: &[i32]) -> u64 {
        let gone: Vec<u64> = self.slots.iter().filter(|(_, s)| s.origin.is_some_and(|(p, _)| partitions.contains(&p))).map(|(seq, _)| *seq).collect();
        let mut n = gone.len() as u64;
        for seq in gone {
            let response = self.take(seq).is_some_and(|e| e.response.is_some());
            n += u64::from(response);
        }
        n + self.parts.drop_partitions(partitions)
    }
}

/// Reads `.gor` files a piece at a time, record by record.
pub struct GorReader<R> {
    source: R,
    buf: Vec<u8>,
    start: usize,
    at_end: bool,
}

/// Bytes read from a file at once.
const READ_CHUNK: usize = 1 << 20;
/// A record (or a run of bad bytes) longer than this is not held whole: the reader
/// decides on what it has.
const MAX_HELD: usize = 1 << 30;

impl<R: std::io::Read> GorReader<R> {
    pub fn new(source: R) -> GorReader<R> {
        GorReader { source, buf: Vec::new(), start: 0, at_end: false }
    }

    /// The next record value, or the error of bytes that are no record; `None` at the end.
    pub fn next_value(&mut self) -> std::io::Result<Option<Result<&[u8], ParseError>>> {
        loop {
            let rest = &self.buf[self.start..];
            if rest.is_empty() && self.at_end {
                return Ok(None);
            }
            let at_end = self.at_end || rest.len() >= MAX_HELD;
            let step = match split_next(rest, at_end) {
                Split::Record(value, used) => Some((Ok(value.len()), used)),
                Split::Bad(e, used) => Some((Err(e), used)),
                Split::NeedMore => None,
            };
            match step {
                Some((found, used)) => {
                    let from = self.start;
                    self.start += used;
                    return Ok(Some(found.map(|len| &self.buf[from..from + len])));
                }
                None => self.fill()?,
            }
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.drain(..self.start);
        self.start = 0;
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let n = loop {
            match self.source.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(len + n);
        self.at_end = n == 0;
        // Keep the buffer from holding on to a large record's memory.
        if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf.shrink_to(2 * READ_CHUNK);
        }
        Ok(())
    }
}

/// `.gor` files as a stream of exchanges in capture order: memory stays bounded by the
/// pairing window whatever the files' size. After the iteration, [`GorInput::stats`]
/// counts what was read and [`GorInput::error`] says if a file could not be read.
pub struct GorInput {
    files: std::collections::VecDeque<(std::path::PathBuf, GorReader<std::fs::File>)>,
    pairer: Pairer,
    error: Option<std::io::Error>,
}

impl GorInput {
    /// Opens every file first, so a missing one is an error before anything is sent.
    pub fn open(paths: &[&Path], window: PairingWindow) -> std::io::Result<GorInput> {
        let mut files = std::collections::VecDeque::new();
        for path in paths {
            let file = std::fs::File::open(path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            files.push_back((path.to_path_buf(), GorReader::new(file)));
        }
        Ok(GorInput { files, pairer: Pairer::new(window), error: None })
    }

    pub fn stats(&self) -> InputStats {
        let mut stats = self.pairer.stats.clone();
        if self.files.is_empty() {
            stats.parts_incomplete += self.pairer.parts.waiting_records();
        }
        stats
    }

    /// The read error that ended the input early, if any.
    pub fn error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
    }
}

/// An input read from its start to its end (`.gor` files, a Kafka time window): the
/// exchanges in order, its counters so far, and what ended it early.
pub trait WholeInput: Iterator<Item = Exchange> {
    fn stats(&self) -> InputStats;
    /// Why the input ended before its end, if it did.
    fn failure(&self) -> Option<String>;
}

impl WholeInput for GorInput {
    fn stats(&self) -> InputStats {
        GorInput::stats(self)
    }

    fn failure(&self) -> Option<String> {
        self.error().map(|e| e.to_string())
    }
}

impl Iterator for GorInput {
    type Item = Exchange;

    fn next(&mut self) -> Option<Exchange> {
        loop {
            if let Some(exchange) = self.pairer.pop_ready() {
                return Some(exchange);
            }
            let Some((path, reader)) = self.files.front_mut() else {
                return self.pairer.pop_any();
            };
            match reader.next_value() {
                Ok(Some(Ok(value))) => self.pairer.add_value(value, None),
                // Torn or forged (its length and separator disagree): never replayed.
                Ok(Some(Err(_))) => {
                    self.pairer.stats.records += 1;
                    self.pairer.stats.bad_records += 1;
                }
                Ok(None) => {
                    self.files.pop_front();
                }
                Err(e) => {
                    self.error = Some(std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display())));
                    self.files.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FILE_SEPARATOR;

    fn gor(records: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend_from_slice(r.as_bytes());
            out.extend_from_slice(FILE_SEPARATOR);
        }
        out
    }

    #[test]
    fn pairs_requests_with_responses_and_groups_connections() {
        let a = "0000000000000001000000070000000";
        let data = gor(&[
            &format!("1 {a}0 200 5\nGET /a HTTP/1.1\r\n\r\n"),
            &format!("1 {a}1 100 5\nGET /b HTTP/1.1\r\n\r\n"),
            &format!("2 {a}0 300 40\nHTTP/1.1 200 OK\r\n\r\n"),
            "1 8e9f0000000000000000beef 150 -1\nGET /goreplay HTTP/1.1\r\n\r\n",
            "3 8e9f0000000000000000beef 160 -1\nHTTP/1.1 200 OK\r\n\r\n",
            "2 ffff 1 1\nHTTP/1.1 200 OK\r\n\r\n",
            "garbage",
        ]);
        let dir = std::env::temp_dir().join(format!("capture-input-{}", std::process::id()));
        std::fs::write(&dir, data).unwrap();
        let mut input = GorInput::open(&[&dir], PairingWindow::default()).unwrap();
        let ex: Vec<Exchange> = input.by_ref().collect();
        let stats = input.stats();
        std::fs::remove_file(&dir).unwrap();
        // In the order the requests were written; each as soon as its response came.
        let ids: Vec<&str> = ex.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [format!("{a}0").as_str(), &format!("{a}1"), "8e9f0000000000000000beef"]);
        let resp = ex[0].response.as_ref().unwrap();
        assert_eq!((resp.bytes.as_slice(), resp.latency_ns), (&b"HTTP/1.1 200 OK\r\n\r\n"[..], Some(40)));
        assert_eq!(ex[0].connection, ex[1].connection);
        assert_eq!(&*ex[2].connection, "8e9f0000000000000000beef");
        assert_eq!(
            stats,
            InputStats { records: 7, bad_records: 1, responses_without_request: 1, ignored_records: 1, ..InputStats::default() }
        );
    }

    #[test]
    fn capture_flags_reach_the_exchange() {
        let id = "00000000000000010000000700000000";
        let mut p = Pairer::default();
        p.add_value(format!("1 {id} 1 0 len=16 server=10.0.0.1:80 truncated=1 orig_len=5000000\nPOST / HTTP/1.1\n").as_bytes(), None);
        p.add_value(format!("2 {id} 2 7 len=8 ambiguous=content_length_and_chunked unpaired=1\nHTTP/1.1").as_bytes(), None);
        p.add_null();
        let (ex, stats) = p.finish();
        assert_eq!(ex[0].request_cut, Some(5_000_000));
        assert_eq!(ex[0].server.as_deref(), Some("10.0.0.1:80"));
        let resp = ex[0].response.as_ref().unwrap();
        assert_eq!((resp.cut, resp.ambiguous.as_deref(), resp.unpaired), (None, Some("content_length_and_chunked"), true));
        assert_eq!((stats.records, stats.null_values), (3, 1), "a null Kafka value is a record, counted");
    }

    fn part(id: &str, ty: u8, i: u32, n: u32, payload: &str) -> Vec<u8> {
        format!("{} {id} 5 0 len={} part={i}/{n}\n{payload}", ty as char, payload.len()).into_bytes()
    }

    #[test]
    fn continuation_records_are_rejoined() {
        let id = "00000000000000010000000700000000";
        let mut p = Pairer::default();
        // Parts may come in any order; a duplicate (producer retry) is ignored.
        p.add_value(&part(id, b'1', 2, 3, "y"), None);
        p.add_value(&part(id, b'1', 1, 3, "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nx"), None);
        p.add_value(&part(id, b'1', 1, 3, "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nx"), None);
        p.add_value(&part(id, b'1', 3, 3, "z"), None);
        // A response of two parts of which only one arrived.
        p.add_value(&part(id, b'2', 1, 2, "HTTP/1.1 200 OK\r\n"), None);
        // Parts that disagree on their count.
        let other = "00000000000000010000000700000001";
        p.add_value(&part(other, b'1', 1, 2, "GET"), None);
        p.add_value(&part(other, b'1', 2, 3, " /"), None);
        let (ex, stats) = p.finish();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].request, b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz");
        assert!(ex[0].response.is_none());
        assert_eq!(
            stats,
            InputStats { records: 7, parts_joined: 3, parts_duplicate: 1, parts_incomplete: 1, bad_records: 2, ..InputStats::default() }
        );
    }

    #[test]
    fn held_records_carry_over_to_the_next_batch() {
        let id = "00000000000000010000000700000000";
        let other = "00000000000000010000000800000000";
        let mut p = Pairer::default();
        p.add_value_from(&part(id, b'1', 1, 2, "GET / HTTP/1.1\r\n"), None, Some((2, 40)));
        p.add_value_from(format!("1 {other} 9 0\nGET /o HTTP/1.1\r\n\r\n").as_bytes(), None, Some((1, 7)));
        assert!(p.take_batch().is_empty(), "a request read in this batch may still get its response");
        assert_eq!(p.earliest_offsets(), HashMap::from([(2, 40), (1, 7)]), "a consumer group commits no further");
        p.add_value(&part(id, b'1', 2, 2, "\r\n"), None);
        let ex = p.take_batch();
        assert_eq!(ex.len(), 1, "the response of /o did not come in the next batch either: replayed without");
        assert_eq!(ex[0].request, b"GET /o HTTP/1.1\r\n\r\n");
        let ex = p.take_held();
        assert_eq!(ex[0].request, b"GET / HTTP/1.1\r\n\r\n", "the joined request waits for its response until the input ends");
        assert!(p.earliest_offsets().is_empty());
        let stats = p.finish_live();
        assert_eq!((stats.parts_joined, stats.parts_incomplete), (2, 0));
    }

    /// A Kafka window's partitions are read side by side: records of other partitions
    /// between a request and its response (in its own partition) are no wait.
    #[test]
    fn a_request_waits_for_its_response_in_its_own_partition_only() {
        let mut p = Pairer::new(PairingWindow { records: 3, bytes: usize::MAX });
        let id = |n: u32| format!("000000000000000100000007{n:08x}");
        p.add_value_from(format!("1 {} 1 0\nGET /a HTTP/1.1\r\n\r\n", id(0)).as_bytes(), None, Some((1, 0)));
        for n in 1..=5 {
            p.add_value_from(format!("1 {} 2 0\nGET /b HTTP/1.1\r\n\r\n", id(n)).as_bytes(), None, Some((2, n as i64)));
        }
        assert_eq!(p.pop_ready(), None, "5 records of partition 2 are no wait for a request of partition 1");
        p.add_value_from(format!("2 {} 3 7\nHTTP/1.1 200 OK\r\n\r\n", id(0)).as_bytes(), None, Some((1, 1)));
        assert!(p.pop_ready().is_some_and(|e| e.response.is_some()));
        let first_of_2 = p.pop_ready().expect("waited");
        assert_eq!((first_of_2.id, first_of_2.response), (id(1), None), "4 records of its own partition after it: replayed without one");
        assert_eq!(p.pop_ready(), None);
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let mut p = Pairer::default();
        for (i, partition) in [(0, 1), (1, 2), (2, 1)] {
            let id = format!("000000000000000100000007{i:08x}");
            p.add_value_from(format!("1 {id} {i} 0\nGET /{i} HTTP/1.1\r\n\r\n").as_bytes(), None, Some((partition, i as i64)));
        }
        p.add_value_from(&part("00000000000000010000000900000000", b'1', 1, 2, "GET"), None, Some((1, 9)));
        assert_eq!(p.drop_partitions(&[1]), 3);
        assert_eq!(p.take_held().iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [1]);
    }

    /// Issue 13: a `.gor` file is read a piece at a time; records that straddle the
    /// pieces, bad records and a missing final separator come out as from a whole read.
    #[test]
    fn gor_reader_streams_what_split_file_splits() {
        let mut data = Vec::new();
        for i in 0..300 {
            let payload = format!("GET /{i} HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(i * 37 % 5000));
            data.extend_from_slice(format!("1 {:032x} {i} 0 len={}\n", i, payload.len()).as_bytes());
            data.extend_from_slice(payload.as_bytes());
            data.extend_from_slice(FILE_SEPARATOR);
            if i == 100 {
                data.extend_from_slice(b"1 x 1 0 len=999\nshort");
                data.extend_from_slice(FILE_SEPARATOR);
            }
        }
        data.extend_from_slice(b"1 goreplay 5 -1\nGET / HTTP/1.1\r\n\r\n");
        let whole: Vec<Result<Vec<u8>, ParseError>> = crate::record::split_file(&data).into_iter().map(|r| r.map(<[u8]>::to_vec)).collect();
        /// Reads at most 777 bytes at a time.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(777).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut reader = GorReader::new(Trickle(&data));
        let mut streamed = Vec::new();
        while let Some(value) = reader.next_value().unwrap() {
            streamed.push(value.map(<[u8]>::to_vec));
        }
        assert_eq!((streamed.len(), whole.len()), (302, 302));
        let first_difference = streamed.iter().zip(&whole).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "{:?}", first_difference.map(|i| (streamed[i].as_ref().map(|v| String::from_utf8_lossy(&v[..60.min(v.len())]).into_owned()), whole[i].as_ref().map(|v| String::from_utf8_lossy(&v[..60.min(v.len())]).into_owned()))));
    }
}
