//! Replay inputs: records from `.gor` files (ours or GoReplay's) or Kafka values,
//! continuation records rejoined into whole messages, paired into exchanges (a request
//! and, when captured, its production response) with the flags the capture set.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::record::{parse_value, split_file, ParsedRecord, TYPE_REQUEST, TYPE_RESPONSE};

/// One captured request and what production answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub id: String,
    /// Requests with the same key were on one captured connection and replay in order.
    pub connection: String,
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
    }
}

/// Connection key of a record id: ours are run (16) + connection (8) + exchange (8)
/// hex digits; any other id (GoReplay's random 24-digit ids) stands alone.
pub fn connection_of(id: &str) -> String {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..24].to_string()
    } else {
        id.to_string()
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

/// Pairs records as they come: a request opens an exchange, its response (same id) completes it.
#[derive(Default)]
pub struct Pairer {
    exchanges: Vec<Exchange>,
    by_id: HashMap<String, usize>,
    parts: PendingParts,
    pub stats: InputStats,
}

impl Pairer {
    /// A pairer that goes on with continuation records left waiting by an earlier batch.
    pub fn with_parts(parts: PendingParts) -> Pairer {
        Pairer { parts, ..Pairer::default() }
    }

    /// Counts a Kafka message that has no value.
    pub fn add_null(&mut self) {
        self.stats.records += 1;
        self.stats.null_values += 1;
    }

    pub fn add_value(&mut self, value: &[u8], server: Option<String>) {
        self.add_value_from(value, server, None);
    }

    /// Adds a record value read from Kafka partition and offset `origin`.
    pub fn add_value_from(&mut self, value: &[u8], server: Option<String>, origin: Option<(i32, i64)>) {
        self.stats.records += 1;
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
                self.by_id.insert(rec.id.clone(), self.exchanges.len());
                self.exchanges.push(Exchange {
                    connection: connection_of(&rec.id),
                    id: rec.id,
                    ts_ns: rec.ts_ns,
                    request: rec.payload,
                    request_cut: cut,
                    request_ambiguous: rec.meta.ambiguous,
                    response: None,
                    server,
                });
            }
            TYPE_RESPONSE => match self.by_id.get(&rec.id) {
                Some(&i) => {
                    self.exchanges[i].response = Some(CapturedResponse {
                        bytes: rec.payload,
                        latency_ns: (rec.latency_ns >= 0).then_some(rec.latency_ns as u64),
                        cut,
                        ambiguous: rec.meta.ambiguous,
                        unpaired: rec.meta.unpaired,
                    });
                }
                None => self.stats.responses_without_request += 1,
            },
            _ => self.stats.ignored_records += 1,
        }
    }

    /// Exchanges in request time order (stable for equal times: capture order); the
    /// continuation records still waiting are counted incomplete.
    pub fn finish(self) -> (Vec<Exchange>, InputStats) {
        let (exchanges, mut stats, parts) = self.finish_batch();
        stats.parts_incomplete += parts.waiting_records();
        (exchanges, stats)
    }

    /// Like [`Pairer::finish`], but hands back the continuation records still waiting,
    /// for the next batch of a live input.
    pub fn finish_batch(mut self) -> (Vec<Exchange>, InputStats, PendingParts) {
        self.exchanges.sort_by_key(|e| e.ts_ns);
        (self.exchanges, self.stats, self.parts)
    }
}

/// Reads `.gor` files into exchanges.
pub fn read_gor_files(paths: &[&Path]) -> std::io::Result<(Vec<Exchange>, InputStats)> {
    let mut pairer = Pairer::default();
    for path in paths {
        let data = std::fs::read(path)?;
        for value in split_file(&data) {
            match value {
                Ok(value) => pairer.add_value(value, None),
                // Torn or forged (its length and separator disagree): never replayed.
                Err(_) => {
                    pairer.stats.records += 1;
                    pairer.stats.bad_records += 1;
                }
            }
        }
    }
    Ok(pairer.finish())
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
        let (ex, stats) = read_gor_files(&[&dir]).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let ids: Vec<&str> = ex.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [format!("{a}1").as_str(), "8e9f0000000000000000beef", &format!("{a}0")]);
        let resp = ex[2].response.as_ref().unwrap();
        assert_eq!((resp.bytes.as_slice(), resp.latency_ns), (&b"HTTP/1.1 200 OK\r\n\r\n"[..], Some(40)));
        assert_eq!(ex[0].connection, ex[2].connection);
        assert_eq!(ex[1].connection, "8e9f0000000000000000beef");
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
    fn waiting_parts_carry_over_to_the_next_batch() {
        let id = "00000000000000010000000700000000";
        let mut p = Pairer::default();
        p.add_value_from(&part(id, b'1', 1, 2, "GET / HTTP/1.1\r\n"), None, Some((2, 40)));
        let (ex, stats, parts) = p.finish_batch();
        assert!(ex.is_empty() && stats.parts_incomplete == 0);
        assert_eq!(parts.earliest_offsets(), HashMap::from([(2, 40)]), "a consumer group commits no further");
        let mut p = Pairer::with_parts(parts);
        p.add_value(&part(id, b'1', 2, 2, "\r\n"), None);
        let (ex, stats) = p.finish();
        assert_eq!(ex[0].request, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!((stats.parts_joined, stats.parts_incomplete), (2, 0));
    }
}
