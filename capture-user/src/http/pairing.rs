//! Request/response pairing of one connection, and what a loss does to it.
//!
//! While nothing was lost, pairing is exact: HTTP/1.x answers requests in order, so a
//! final response takes the oldest request whose head was seen (a FIFO).
//!
//! After a loss (a stream gap outside a known-length body, a message dropped for a
//! parse error, a stream whose start was never seen) the number of messages lost in
//! either direction is unknown, so the FIFO may be shifted. Pairing is then
//! *uncertain*: a response is paired only when its request is certain by time:
//! - `settled_ns`: the end of the last final response, or the first byte of a
//!   response after a loss in the response direction. A client that does not
//!   pipeline has nothing outstanding once a response ended.
//! - A response starting at `t` is paired when exactly one request `q` started in
//!   `(settled_ns, t)`: a server cannot answer a request before its first byte
//!   arrived, and a client that does not pipeline sends the next request only after
//!   the previous response. A request-direction loss just before `q` could hide an
//!   older request still waiting, so it must have been answered already: by a
//!   response that found no request to take after the loss began (`orphan_ns`).
//! - Once no loss is pending in either direction, such a pair makes pairing exact
//!   again (`pairing_resumed`). Other responses are written unpaired, and requests
//!   that can no longer be matched are dropped (`unmatched_requests`).
//! - A client seen pipelining (a request sent before the previous response started,
//!   two requests in one window, or a loss that hides a request next to `q`) is never
//!   paired again after a loss: timing cannot tell its responses apart. If a loss took
//!   every request that showed the pipelining, nothing can tell; clients rarely
//!   pipeline (browsers, curl, wrk and ab do not).

use std::collections::VecDeque;

use super::HttpStats;

/// A request whose head was parsed, waiting for its response.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub exchange: u64,
    /// Moved to the response message when it pairs (empty afterwards).
    pub method: String,
    pub target: String,
    pub start_ns: u64,
    /// Set when the request is complete.
    pub end_ns: Option<u64>,
    /// The request record was emitted (complete and undamaged).
    pub emitted: bool,
    /// The judge dropped this exchange: its response is not kept either.
    pub dropped: bool,
}

#[derive(Debug)]
pub(crate) struct Pairing {
    pub pending: VecDeque<Pending>,
    /// The request paired with the response in progress (popped from `pending`).
    pub answering: Option<Pending>,
    /// The FIFO is exact (no loss since the last certain pair).
    certain: bool,
    /// The client was seen sending a request before the previous response started.
    pipelining: bool,
    /// Requests that started at or before this time are answered (see module doc).
    settled_ns: u64,
    /// A response-direction loss whose end is not placed yet: the next response's
    /// first byte settles everything before it.
    response_loss_open: bool,
    /// Time span that holds every request-direction loss not yet settled: (the last
    /// byte seen before it, the first request start after it or None while open).
    request_loss: Option<(u64, Option<u64>)>,
    /// Start of the latest final response that found no request to take.
    orphan_ns: Option<u64>,
}

impl Default for Pairing {
    fn default() -> Self {
        Pairing {
            pending: VecDeque::new(),
            answering: None,
            certain: true,
            pipelining: false,
            settled_ns: 0,
            response_loss_open: false,
            request_loss: None,
            orphan_ns: None,
        }
    }
}

impl Pairing {
    /// A request head was parsed.
    pub fn request_started(&mut self, p: Pending) {
        if let Some((_, until @ None)) = &mut self.request_loss {
            *until = Some(p.start_ns);
        }
        self.pending.push_back(p);
    }

    /// The request of `exchange` ended (emitted or not).
    pub fn request_done(&mut self, exchange: u64, end_ns: u64, emitted: bool) {
        let entry = self
            .pending
            .iter_mut()
            .rev()
            .find(|p| p.exchange == exchange)
            .or(self.answering.as_mut().filter(|p| p.exchange == exchange));
        if let Some(p) = entry {
            p.end_ns = Some(end_ns);
            p.emitted = emitted;
        }
    }

    /// Messages may have been lost in the request direction after a byte seen at
    /// `last_ns` (0: at the start of the stream).
    pub fn request_loss(&mut self, last_ns: u64, stats: &mut HttpStats) {
        self.become_uncertain(stats);
        self.request_loss = Some(match self.request_loss {
            Some((from, _)) => (from.min(last_ns), None),
            None => (last_ns, None),
        });
    }

    /// Messages may have been lost in the response direction.
    pub fn response_loss(&mut self, stats: &mut HttpStats) {
        self.become_uncertain(stats);
        self.response_loss_open = true;
    }

    fn become_uncertain(&mut self, stats: &mut HttpStats) {
        if self.certain {
            self.certain = false;
            stats.pairing_losses += 1;
        }
    }

    /// A final response head whose message started at `start_ns` was parsed: the
    /// request it answers, if that is certain. Sets `answering`.
    pub fn take_for_response(&mut self, start_ns: u64, stats: &mut HttpStats) -> Option<&mut Pending> {
        if self.response_loss_open {
            self.response_loss_open = false;
            self.settle(start_ns, stats);
        }
        self.answering = if self.certain {
            let req = self.pending.pop_front();
            if req.is_some() && self.pending.front().is_some_and(|next| next.start_ns < start_ns) {
                self.pipelining = true;
            }
            req
        } else {
            self.take_by_time(start_ns, stats)
        };
        if self.answering.is_none() {
            self.orphan_ns = Some(start_ns);
        }
        self.answering.as_mut()
    }

    /// Uncertain pairing: the one request started in (settled_ns, start_ns), if no
    /// loss may hide an older one (see the module doc).
    fn take_by_time(&mut self, start_ns: u64, stats: &mut HttpStats) -> Option<Pending> {
        let settled = self.settled_ns;
        let in_window = |p: &Pending| p.start_ns > settled && p.start_ns < start_ns;
        let candidates = self.pending.iter().filter(|p| in_window(p)).count();
        if candidates >= 2 {
            self.pipelining = true;
        }
        if candidates != 1 || self.pipelining {
            return None;
        }
        let index = self.pending.iter().position(in_window).expect("one candidate");
        let q_start = self.pending[index].start_ns;
        if let Some((from, until)) = self.request_loss {
            let in_window = from < start_ns && until.is_none_or(|u| u > settled);
            let answered = self.orphan_ns.is_some_and(|o| o > from);
            if in_window && from < q_start && !answered {
                // A request lost before `q` would still be waiting with it.
                self.pipelining = true;
                return None;
            }
            if until.is_some_and(|u| u <= q_start) {
                // Everything lost lies before `q`, which is answered now.
                self.request_loss = None;
            }
        }
        stats.unmatched_requests += index as u64;
        self.pending.drain(..index);
        if self.request_loss.is_none() && !self.response_loss_open {
            self.certain = true;
            stats.pairing_resumed += 1;
        }
        self.pending.pop_front()
    }

    /// The final response in progress ended at `end_ns` (whether emitted or not).
    pub fn response_done(&mut self, end_ns: u64, stats: &mut HttpStats) {
        self.answering = None;
        self.settle(end_ns, stats);
    }

    /// The response in progress was lost: its request is gone with it.
    pub fn response_lost(&mut self) {
        self.answering = None;
    }

    /// Everything that started at or before `ns` is answered. While uncertain, those
    /// requests can no longer be matched: drop them.
    fn settle(&mut self, ns: u64, stats: &mut HttpStats) {
        self.settled_ns = self.settled_ns.max(ns);
        if self.certain {
            return;
        }
        let settled = self.settled_ns;
        let before = self.pending.len();
        self.pending.retain(|p| p.start_ns > settled);
        stats.unmatched_requests += (before - self.pending.len()) as u64;
        if self.request_loss.is_some_and(|(_, until)| until.is_some_and(|u| u <= settled)) {
            self.request_loss = None;
        }
    }

    /// The connection ended: requests emitted and never answered.
    pub fn close(&mut self, stats: &mut HttpStats) {
        stats.unanswered_requests += self.pending.iter().filter(|p| p.emitted).count() as u64;
        self.pending.clear();
        self.answering = None;
    }

    /// The connection is no longer framed.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.answering = None;
    }
}
