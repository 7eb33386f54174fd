//! Replay inputs: records from `.gor` files (ours or GoReplay's) paired into
//! exchanges (a request and, when captured, its production response).

use std::collections::HashMap;
use std::path::Path;

use crate::record::{parse_value, split_file, TYPE_REQUEST, TYPE_RESPONSE};

/// One captured request and what production answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub id: String,
    /// Requests with the same key were on one captured connection and replay in order.
    pub connection: String,
    /// Wall-clock ns of the request's first byte.
    pub ts_ns: u64,
    pub request: Vec<u8>,
    pub response: Option<Vec<u8>>,
    /// From the response record: request end to response start, ns.
    pub production_latency_ns: Option<u64>,
    /// The captured server `ip:port`, when the input carries it (Kafka headers).
    pub server: Option<String>,
}

/// Why input records were skipped; each is counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputStats {
    pub records: u64,
    pub bad_records: u64,
    pub responses_without_request: u64,
    /// GoReplay type 3 (responses of an earlier replay): not production, ignored.
    pub ignored_records: u64,
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

/// Pairs records as they come: a request opens an exchange, its response (same id) completes it.
#[derive(Default)]
pub struct Pairer {
    exchanges: Vec<Exchange>,
    by_id: HashMap<String, usize>,
    pub stats: InputStats,
}

impl Pairer {
    pub fn add_value(&mut self, value: &[u8], server: Option<String>) {
        self.stats.records += 1;
        let Ok(rec) = parse_value(value) else {
            self.stats.bad_records += 1;
            return;
        };
        // The header line's `server=` token (our files) when no Kafka header said it.
        let server = server.or_else(|| rec.meta.server.clone());
        match rec.type_byte {
            TYPE_REQUEST => {
                self.by_id.insert(rec.id.clone(), self.exchanges.len());
                self.exchanges.push(Exchange {
                    connection: connection_of(&rec.id),
                    id: rec.id,
                    ts_ns: rec.ts_ns,
                    request: rec.payload,
                    response: None,
                    production_latency_ns: None,
                    server,
                });
            }
            TYPE_RESPONSE => match self.by_id.get(&rec.id) {
                Some(&i) => {
                    self.exchanges[i].response = Some(rec.payload);
                    self.exchanges[i].production_latency_ns = (rec.latency_ns >= 0).then_some(rec.latency_ns as u64);
                }
                None => self.stats.responses_without_request += 1,
            },
            _ => self.stats.ignored_records += 1,
        }
    }

    /// Exchanges in request time order (stable for equal times: capture order).
    pub fn finish(mut self) -> (Vec<Exchange>, InputStats) {
        self.exchanges.sort_by_key(|e| e.ts_ns);
        (self.exchanges, self.stats)
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
        assert_eq!(ex[2].response.as_deref(), Some(&b"HTTP/1.1 200 OK\r\n\r\n"[..]));
        assert_eq!(ex[2].production_latency_ns, Some(40));
        assert_eq!(ex[0].connection, ex[2].connection);
        assert_eq!(ex[1].connection, "8e9f0000000000000000beef");
        assert_eq!(stats, InputStats { records: 7, bad_records: 1, responses_without_request: 1, ignored_records: 1 });
    }
}
