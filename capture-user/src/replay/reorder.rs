//! Puts a Kafka time window's exchanges in request time order while it is read, in
//! bounded memory.
//!
//! Partitions are read side by side, and the agent writes an exchange's records when
//! its response is complete, so exchanges arrive nearly, not exactly, in request time
//! order. Each one is held until every partition's read position (the latest message
//! time read from it) is past its request time by the reorder window; then it is
//! released, oldest first. An exchange that arrives after a later one was released
//! (it lasted longer than the window, or its partition lagged behind) is released at
//! once, out of order, and counted `late`. When the held exchanges pass the byte
//! limit, the oldest is released before its time and counted `forced`: memory stays
//! bounded whatever the partitions do.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use super::input::Exchange;

/// Bytes counted per held exchange besides its payloads (ids, the struct, the heap).
const EXCHANGE_OVERHEAD: usize = 256;

/// What the order buffer did besides releasing in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Exchanges that arrived after a later one was released: replayed out of order.
    pub late: u64,
    /// Exchanges released before the window passed because the buffer was full.
    pub forced: u64,
}

/// An exchange waiting for its turn, ordered by request time, then arrival.
struct Held {
    ts_ns: u64,
    seq: u64,
    exchange: Exchange,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts_ns, self.seq).cmp(&(other.ts_ns, other.seq))
    }
}

pub struct Reorder {
    window_ns: u64,
    max_bytes: usize,
    held: BinaryHeap<Reverse<Held>>,
    held_bytes: usize,
    next_seq: u64,
    /// Late exchanges, released before anything held.
    late: VecDeque<Exchange>,
    /// Per partition, the latest message time read from it (ns); None before its first.
    positions: HashMap<i32, Option<u64>>,
    /// The latest request time released so far.
    released_ns: Option<u64>,
    /// The input ended: everything held is due.
    ended: bool,
    pub stats: ReorderStats,
}

fn size(e: &Exchange) -> usize {
    e.request.len() + e.response.as_ref().map_or(0, |r| r.bytes.len()) + e.id.len() + e.connection.len() + EXCHANGE_OVERHEAD
}

impl Reorder {
    /// Orders the exchanges read from `partitions`, holding each `window` past its
    /// request time and at most `max_bytes` in all.
    pub fn new(partitions: impl IntoIterator<Item = i32>, window: Duration, max_bytes: usize) -> Reorder {
        Reorder {
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            max_bytes,
            held: BinaryHeap::new(),
            held_bytes: 0,
            next_seq: 0,
            late: VecDeque::new(),
            positions: partitions.into_iter().map(|p| (p, None)).collect(),
            released_ns: None,
            ended: false,
            stats: ReorderStats::default(),
        }
    }

    /// A message of time `ts_ns` was read from `partition`: the ones after it are later
    /// (up to the window).
    pub fn advance(&mut self, partition: i32, ts_ns: u64) {
        if let Some(position) = self.positions.get_mut(&partition) {
            *position = Some(position.map_or(ts_ns, |p| p.max(ts_ns)));
        }
    }

    /// Nothing more will be read: everything held is released, in order.
    pub fn end(&mut self) {
        self.ended = true;
    }

    pub fn push(&mut self, exchange: Exchange) {
        if self.released_ns.is_some_and(|r| exchange.ts_ns < r) {
            self.stats.late += 1;
            self.late.push_back(exchange);
            return;
        }
        self.held_bytes += size(&exchange);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.held.push(Reverse(Held { ts_ns: exchange.ts_ns, seq, exchange }));
    }

    /// Exchanges held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len() + self.late.len()
    }

    /// The time every partition has been read past (None while one has not been read yet).
    fn watermark(&self) -> Option<u64> {
        self.positions.values().try_fold(u64::MAX, |low, p| p.map(|p| low.min(p)))
    }

    /// The next exchange to replay, if one is due: a late one, else the oldest held
    /// once every partition is read past its time plus the window (or the buffer is
    /// full, or the input ended).
    pub fn pop(&mut self) -> Option<Exchange> {
        if let Some(late) = self.late.pop_front() {
            return Some(late);
        }
        let Reverse(oldest) = self.held.peek()?;
        let due = self.ended || self.watermark().is_some_and(|w| oldest.ts_ns.saturating_add(self.window_ns) <= w);
        if !due {
            if self.held_bytes <= self.max_bytes {
                return None;
            }
            self.stats.forced += 1;
        }
        let Reverse(held) = self.held.pop().expect("peeked");
        self.held_bytes -= size(&held.exchange);
        self.released_ns = Some(self.released_ns.map_or(held.ts_ns, |r| r.max(held.ts_ns)));
        Some(held.exchange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ex(ts_s: u64) -> Exchange {
        Exchange {
            id: format!("{ts_s}"),
            connection: "".into(),
            ts_ns: ts_s * S,
            request: vec![b'x'; 100],
            request_cut: None,
            request_ambiguous: None,
            response: None,
            server: None,
        }
    }

    fn drain(r: &mut Reorder) -> Vec<u64> {
        std::iter::from_fn(|| r.pop()).map(|e| e.ts_ns / S).collect()
    }

    /// Exchanges of two partitions, each nearly in order, come out in request time
    /// order as soon as both partitions are read past their time plus the window.
    #[test]
    fn interleaved_partitions_come_out_in_request_time_order() {
        let mut r = Reorder::new([0, 1], Duration::from_secs(2), usize::MAX);
        // Partition 0 read up to 13 s: its exchanges are written when they complete.
        for (t, written) in [(10, 10), (12, 12), (11, 13)] {
            r.push(ex(t));
            r.advance(0, written * S);
        }
        assert_eq!(drain(&mut r), Vec::<u64>::new(), "partition 1 not read yet: nothing is known to come after");
        r.push(ex(9));
        r.advance(1, 11 * S);
        assert_eq!(drain(&mut r), [9], "read past 11 s everywhere: what started before 9 s is complete");
        r.push(ex(14));
        r.advance(1, 16 * S);
        assert_eq!(drain(&mut r), [10, 11], "partition 0 (13 s) holds the rest");
        r.advance(0, 20 * S);
        assert_eq!(drain(&mut r), [12, 14]);
        r.push(ex(17));
        r.end();
        assert_eq!(drain(&mut r), [17]);
        assert_eq!(r.stats, ReorderStats::default());
        assert_eq!(r.len(), 0);
    }

    /// An exchange that arrives after a later one was released is replayed at once,
    /// out of order, and counted.
    #[test]
    fn an_exchange_later_than_the_window_is_replayed_at_once_and_counted() {
        let mut r = Reorder::new([0], Duration::from_secs(1), usize::MAX);
        r.push(ex(10));
        r.push(ex(12));
        r.advance(0, 14 * S);
        assert_eq!(drain(&mut r), [10, 12]);
        r.push(ex(15));
        // A 4 s request that started at 11 s, written at 15 s.
        r.push(ex(11));
        r.advance(0, 15 * S);
        assert_eq!(drain(&mut r), [11], "late: out at once; 15 s waits for its window");
        // Equal to the latest released time is not late.
        r.push(ex(12));
        r.end();
        assert_eq!(drain(&mut r), [12, 15]);
        assert_eq!(r.stats, ReorderStats { late: 1, forced: 0 });
    }

    /// A partition that lags (or is never read) cannot make the buffer grow past its
    /// byte limit: the oldest leave early, still in order, counted.
    #[test]
    fn a_full_buffer_releases_the_oldest_early_and_counts_them() {
        let per = size(&ex(0));
        let mut r = Reorder::new([0, 1], Duration::from_secs(1), 3 * per);
        for t in [5, 3, 4, 1, 2] {
            r.push(ex(t));
            r.advance(0, 100 * S);
        }
        // Partition 1 was never read: only the byte limit releases.
        assert_eq!(drain(&mut r), [1, 2]);
        assert_eq!(r.len(), 3);
        r.push(ex(2));
        assert_eq!(drain(&mut r), [2], "not late (equal time), and the buffer is full again");
        r.push(ex(1));
        assert_eq!(drain(&mut r), [1], "late");
        r.end();
        assert_eq!(drain(&mut r), [3, 4, 5]);
        assert_eq!(r.stats, ReorderStats { late: 1, forced: 3 });
    }

    /// Whatever the arrival order and the window, every exchange comes out exactly
    /// once; in time order except those counted late.
    #[test]
    fn every_exchange_comes_out_once_and_only_late_ones_out_of_order() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..50 {
            let window = Duration::from_millis(rand(3000));
            let max_bytes = if round % 3 == 0 { 20 * size(&ex(0)) } else { usize::MAX };
            let mut r = Reorder::new([0, 1, 2], window, max_bytes);
            let mut sent = Vec::new();
            let mut out = Vec::new();
            for i in 0..500u64 {
                let partition = rand(3) as i32;
                // Written at i ms + up to 3 s of exchange duration before it.
                let written = 10 * S + i * 10_000_000;
                let e = Exchange { ts_ns: written - rand(3 * S), id: format!("{i}"), ..ex(0) };
                sent.push(e.id.clone());
                r.push(e);
                r.advance(partition, written);
                out.extend(std::iter::from_fn(|| r.pop()));
            }
            r.end();
            out.extend(std::iter::from_fn(|| r.pop()));
            let mut ids: Vec<String> = out.iter().map(|e| e.id.clone()).collect();
            ids.sort();
            sent.sort();
            assert_eq!(ids, sent, "round {round}");
            let mut latest = 0;
            let mut out_of_order = 0;
            for e in &out {
                out_of_order += u64::from(e.ts_ns < latest);
                latest = latest.max(e.ts_ns);
            }
            assert!(out_of_order <= r.stats.late, "round {round}: {out_of_order} out of order, {:?}", r.stats);
            assert_eq!(r.len(), 0);
        }
    }
}
