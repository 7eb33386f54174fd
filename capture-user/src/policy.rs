//! Which exchanges are kept: filters first, then the rate limits, decided once on
//! each request head (the response follows its request). Implements the framer's
//! [`ExchangeJudge`]; counts every decision by reason.

use crate::filter::{FilterReason, Filters};
use crate::http::view::RequestHead;
use crate::http::ExchangeJudge;
use crate::ratelimit::TokenBucket;

/// Decisions by reason (summary line and metrics: `filter_dropped_method`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Request heads judged and kept.
    pub exchanges_kept: u64,
    pub filter_dropped_method: u64,
    pub filter_dropped_path: u64,
    pub filter_dropped_host: u64,
    pub filter_dropped_header: u64,
    /// Responses with no request to pair with, dropped because filters or limits are
    /// set (nothing tells whether their exchange would have been kept).
    pub filter_dropped_unpaired: u64,
    /// Dropped by `--rate`.
    pub ratelimit_dropped_rate: u64,
    /// Dropped by `--max-bytes-per-sec`.
    pub ratelimit_dropped_bytes: u64,
}

impl PolicyStats {
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("exchanges_kept", self.exchanges_kept),
            ("filter_dropped_method", self.filter_dropped_method),
            ("filter_dropped_path", self.filter_dropped_path),
            ("filter_dropped_host", self.filter_dropped_host),
            ("filter_dropped_header", self.filter_dropped_header),
            ("filter_dropped_unpaired", self.filter_dropped_unpaired),
            ("ratelimit_dropped_rate", self.ratelimit_dropped_rate),
            ("ratelimit_dropped_bytes", self.ratelimit_dropped_bytes),
        ]
    }
}

/// Filters and rate limits of one agent.
#[derive(Clone, Debug, Default)]
pub struct ExchangePolicy {
    filters: Filters,
    /// `--rate`: exchanges per second.
    rate: Option<TokenBucket>,
    /// `--max-bytes-per-sec`: record bytes per second, charged as records are written.
    bytes: Option<TokenBucket>,
    pub stats: PolicyStats,
}

impl ExchangePolicy {
    pub fn new(filters: Filters, rate: Option<f64>, max_bytes_per_sec: Option<u64>) -> Self {
        ExchangePolicy {
            filters,
            rate: rate.map(TokenBucket::per_second),
            bytes: max_bytes_per_sec.map(|b| TokenBucket::per_second(b as f64)),
            stats: PolicyStats::default(),
        }
    }

    /// Whether anything may be dropped.
    pub fn is_active(&self) -> bool {
        !self.filters.is_empty() || self.rate.is_some() || self.bytes.is_some()
    }

    /// A record of `len` bytes (header line and payload) of a kept exchange was written.
    pub fn charge_record(&mut self, len: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.charge(len as f64);
        }
    }

    /// Whether records are charged at all (their length costs a little to compute).
    pub fn counts_bytes(&self) -> bool {
        self.bytes.is_some()
    }
}

impl ExchangeJudge for ExchangePolicy {
    fn keep_request(&mut self, request: &RequestHead<'_>, ts_ns: u64) -> bool {
        if let Err(reason) = self.filters.check(request) {
            let counter = match reason {
                FilterReason::Method => &mut self.stats.filter_dropped_method,
                FilterReason::Path => &mut self.stats.filter_dropped_path,
                FilterReason::Host => &mut self.stats.filter_dropped_host,
                FilterReason::Header => &mut self.stats.filter_dropped_header,
            };
            *counter += 1;
            return false;
        }
        // The byte budget is checked first: it takes nothing, a rate token would be lost.
        if let Some(b) = self.bytes.as_mut() {
            if !b.has_credit(ts_ns) {
                self.stats.ratelimit_dropped_bytes += 1;
                return false;
            }
        }
        if let Some(r) = self.rate.as_mut() {
            if !r.try_take(ts_ns) {
                self.stats.ratelimit_dropped_rate += 1;
                return false;
            }
        }
        self.stats.exchanges_kept += 1;
        true
    }

    fn keep_unpaired_response(&mut self) -> bool {
        if self.is_active() {
            self.stats.filter_dropped_unpaired += 1;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse_regex;

    fn head(method: &'static str, target: &'static str) -> RequestHead<'static> {
        RequestHead { method, target, head: b"X / HTTP/1.1\r\nHost: h\r\n\r\n" }
    }

    #[test]
    fn filters_then_bytes_then_rate_each_counted() {
        let filters = Filters { deny_paths: vec![parse_regex("^/health").unwrap()], ..Filters::default() };
        let mut p = ExchangePolicy::new(filters, Some(2.0), Some(1000));
        assert!(p.is_active() && p.counts_bytes());
        assert!(!p.keep_request(&head("GET", "/health"), 0));
        assert!(p.keep_request(&head("GET", "/a"), 0));
        p.charge_record(5000);
        // In debt for ~4 s: refused by the byte budget, no rate token taken.
        assert!(!p.keep_request(&head("GET", "/b"), 1_000_000_000));
        assert!(p.keep_request(&head("GET", "/c"), 5_000_000_000));
        assert!(p.keep_request(&head("GET", "/d"), 5_000_000_000));
        assert!(!p.keep_request(&head("GET", "/e"), 5_000_000_000), "2/s, burst 2");
        assert!(!p.keep_unpaired_response());
        let s = &p.stats;
        assert_eq!(
            (s.filter_dropped_path, s.exchanges_kept, s.ratelimit_dropped_bytes, s.ratelimit_dropped_rate, s.filter_dropped_unpaired),
            (1, 3, 1, 1, 1)
        );
    }

    /// Pipelined requests in one segment, some dropped: each response follows its own
    /// request, whatever arrives in which piece.
    #[test]
    fn responses_follow_their_requests_fate_in_the_framer() {
        use crate::flow::Direction;
        use crate::http::{HttpConfig, HttpConnection, HttpStats, MessageKind};
        let filters = Filters { deny_paths: vec![parse_regex("^/drop").unwrap()], ..Filters::default() };
        let mut p = ExchangePolicy::new(filters, None, None);
        let mut conn = HttpConnection::new(HttpConfig::default());
        let (mut stats, mut out) = (HttpStats::default(), Vec::new());
        let reqs = b"GET /a HTTP/1.1\r\n\r\nPOST /drop HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
        for piece in reqs.chunks(7) {
            conn.on_data_judged(Direction::ClientToServer, piece, 1, &mut p, &mut stats, &mut out);
        }
        let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 201 X\r\nContent-Length: 1\r\n\r\nDHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB";
        conn.on_data_judged(Direction::ServerToClient, resps, 2, &mut p, &mut stats, &mut out);
        let got: Vec<(MessageKind, u64, Option<String>)> = out.iter().map(|m| (m.kind, m.exchange, m.target.clone())).collect();
        let (req, resp) = (MessageKind::Request, MessageKind::Response);
        assert_eq!(
            got,
            [(req, 0, Some("/a".into())), (req, 2, Some("/b".into())), (resp, 0, Some("/a".into())), (resp, 2, Some("/b".into()))]
        );
        assert!(out[3].bytes.ends_with(b"B"));
        assert_eq!((stats.dropped_requests, stats.dropped_responses, stats.unanswered_requests), (1, 1, 0));
        // A response with nothing to pair with is dropped while filters are set.
        conn.on_data_judged(Direction::ServerToClient, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3, &mut p, &mut stats, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!((stats.dropped_responses, p.stats.filter_dropped_unpaired), (2, 1));
    }

    #[test]
    fn an_inactive_policy_keeps_everything() {
        let mut p = ExchangePolicy::default();
        assert!(!p.is_active());
        assert!(p.keep_request(&head("DELETE", "/x"), 0));
        assert!(p.keep_unpaired_response());
    }
}
