//! HTTP/1.x framing and request/response pairing over reassembled TCP streams.
//!
//! Each connection has one framer per direction ([`framer`]) and a FIFO of requests
//! whose head was parsed, which responses pair with. Emitted bytes are exactly the
//! wire bytes (never re-serialised), so concatenating all request messages of a
//! well-formed connection gives back the client stream, and likewise for responses.
//!
//! Policies (kept deliberately simple):
//! - **Pairing** ([`pairing`]): a final response takes the oldest request whose head was
//!   parsed, even if that request's body is still arriving (early 413/417). Interim 1xx
//!   responses take nothing; their bytes start the message of the final response. After
//!   a loss that may have shifted that order, a response is paired only when its request
//!   is certain by time, otherwise it is emitted unpaired.
//! - **Gaps**: a gap inside a Content-Length body or a chunk's data damages that message:
//!   it is not emitted (counted `lost_to_gap`), but framing continues at the exact end of
//!   the body. A damaged request keeps its place in the pairing FIFO, so the response
//!   still pairs with the right exchange (and carries that request's method/target).
//!   A gap anywhere else loses the message in progress, resyncs that direction and
//!   makes pairing uncertain.
//! - **Framing errors on requests** (RFC 9112 section 6.3, as strict as nginx): a request
//!   whose body framing is ambiguous (Content-Length with Transfer-Encoding, conflicting
//!   or invalid lengths, bad chunks) is emitted flagged `ambiguous` with what was framed
//!   of it; an invalid or oversized head is dropped. Either way the request direction
//!   stops there: the server rejected the same bytes and closes, so a request framed
//!   after them would be one it never ran. After a loss (our bytes, not the client's)
//!   a request parse error resyncs instead.
//! - **Parse errors on responses**: the message in progress is dropped and the direction
//!   resyncs to the next line that can start a message.
//! - **Close**: a close-delimited response in progress is complete and emitted; any other
//!   partial message is counted `incomplete_at_close` and not emitted. Requests emitted but
//!   never answered are counted `unanswered_requests`.
//! - **Upgrades**: after a 101, or a 2xx to CONNECT, the response is emitted and the whole
//!   connection is ignored until close (the tunnel is not HTTP).
//! - **Non-HTTP**: if the first client bytes cannot start a request line (`TOKEN SP`) or
//!   the first line is complete and is not `METHOD SP TARGET SP HTTP/1.x`, or a server
//!   speaks first with something that is not `HTTP/1.`, the connection is ignored and
//!   all its bytes are counted `non_http_bytes`.

mod framer;
mod head;
pub mod message;
mod pairing;
#[cfg(test)]
mod tests;
pub mod view;

use crate::flow::Direction;
use framer::{Framer, Shared};

/// Decides on each request head whether its exchange is kept (filters, rate limits).
/// A dropped request is not emitted, nor is the response paired with it; their bytes
/// are not kept, and their remaining body can be skipped ([`HttpConnection::skippable`]).
pub trait ExchangeJudge {
    /// `ts_ns`: when the request's first byte was seen.
    fn keep_request(&mut self, request: &view::RequestHead<'_>, ts_ns: u64) -> bool;
    /// A final response with no request to pair with.
    fn keep_unpaired_response(&mut self) -> bool;
}

/// Keeps every exchange.
pub struct KeepAll;

impl ExchangeJudge for KeepAll {
    fn keep_request(&mut self, _: &view::RequestHead<'_>, _: u64) -> bool {
        true
    }
    fn keep_unpaired_response(&mut self) -> bool {
        true
    }
}

/// Limits for framing.
#[derive(Clone, Copy, Debug)]
pub struct HttpConfig {
    /// Bytes kept per message; the rest is framed but not stored (message flagged truncated).
    pub max_message_bytes: usize,
    /// A head (start line + headers) longer than this is a parse error.
    pub max_head_bytes: usize,
    /// Bytes all connections together may hold in messages in progress (used by the
    /// owner of many connections, `pipeline::HttpLayer`). Past it, the message that
    /// grows is cut where it is: emitted flagged truncated, counted
    /// `memory_pressure_truncations`.
    pub max_total_buffered_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_message_bytes: 1_000_000,
            max_head_bytes: 64 * 1024,
            max_total_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

/// One framed HTTP message.
#[derive(Clone, Debug)]
pub struct HttpMessage {
    pub kind: MessageKind,
    /// Index of the exchange within its connection: a request and its response share it.
    /// Requests get 0, 1, 2, ... in order; a response with no request to pair with gets a
    /// fresh index from the same counter (so indices never collide).
    pub exchange: u64,
    /// For responses: whether it was matched with a request. Always true for requests.
    pub paired: bool,
    /// The exact bytes as sent on the wire (for responses: including any interim 1xx
    /// responses that preceded the final one), cut to max_message_bytes.
    pub bytes: bytes::Bytes,
    /// Full length on the wire (>= bytes.len()).
    pub original_len: u64,
    pub truncated: bool,
    /// Requests whose body framing is ambiguous (the server may have read them
    /// differently; nginx rejects them): the reason token. The message holds what was
    /// framed (the head, and the chunks before a bad one).
    pub ambiguous: Option<&'static str>,
    /// Timestamps (ns, as passed to on_data) of the chunk holding the first and the last byte.
    pub start_ns: u64,
    pub end_ns: u64,
    /// For a paired response: its request's start_ns/end_ns (end is None if the request was
    /// not complete when the response ended, e.g. an early 413).
    pub request_start_ns: Option<u64>,
    pub request_end_ns: Option<u64>,
    /// Request method; for a paired response, its request's method.
    pub method: Option<String>,
    /// Request-target; for a paired response, its request's.
    pub target: Option<String>,
    /// Response: final status code.
    pub status: Option<u16>,
    /// Where the start line and header fields of its head are in `bytes`, as the framer
    /// parsed them; `None` when the message has more than one head (interim 1xx
    /// responses) or empty lines before it (later stages then parse it themselves).
    /// May reach past `bytes` when the message was cut inside its head.
    pub head: Option<view::HeadSpans>,
}

macro_rules! stats_struct {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters; the caller aggregates them over all connections and prints/exports them.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct HttpStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl HttpStats {
            /// Adds `other` into `self`.
            pub fn add(&mut self, other: &HttpStats) {
                $(self.$name += other.$name;)*
            }

            /// (name, value) pairs with stable snake_case names, for printing.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }
        }
    };
}

stats_struct! {
    /// Requests emitted.
    requests,
    /// Responses emitted.
    responses,
    /// Responses emitted paired with a request.
    paired,
    /// Responses emitted without a request: none was waiting, or (after a loss) which
    /// one it answers was not certain. Flagged `unpaired=1` in records.
    unpaired_responses,
    /// Emitted requests whose connection closed before a response.
    unanswered_requests,
    /// Times a connection's pairing became uncertain after a loss (gap, dropped
    /// message, stream start not seen).
    pairing_losses,
    /// Times pairing became exact again (a response whose request was certain by time).
    pairing_resumed,
    /// Requests (head seen) whose response could not be matched with certainty after a
    /// loss: no response record shares their id.
    unmatched_requests,
    truncated,
    truncated_bytes,
    /// Messages cut short because all connections together held
    /// `max_total_buffered_bytes` (also counted in `truncated` when emitted).
    memory_pressure_truncations,
    /// 1xx (except 101) before a final response.
    interim_responses,
    /// Partial messages when the stream ended (not emitted).
    incomplete_at_close,
    /// Messages damaged by a stream gap (not emitted).
    lost_to_gap,
    /// Times a direction started looking for the next message start.
    resyncs,
    resync_skipped_bytes,
    non_http_connections,
    non_http_bytes,
    /// 101 Switching Protocols / 2xx to CONNECT: framing stops.
    upgraded_connections,
    parse_errors_invalid_head,
    parse_errors_head_too_large,
    parse_errors_bad_content_length,
    parse_errors_bad_chunk,
    /// Request directions stopped after a framing error (ambiguous framing, invalid or
    /// oversized head) in step with the server.
    framing_error_stops,
    /// Request bytes after such a stop, not framed.
    framing_error_ignored_bytes,
    /// Requests emitted flagged `ambiguous=<reason>`, by reason (RFC 9112 section 6.3).
    ambiguous_content_length_and_transfer_encoding,
    ambiguous_conflicting_content_length,
    ambiguous_repeated_content_length,
    ambiguous_invalid_content_length,
    ambiguous_unsupported_transfer_encoding,
    ambiguous_invalid_chunk_size,
    ambiguous_invalid_chunk,
    /// Requests not kept by the [`ExchangeJudge`] (filters, rate limits).
    dropped_requests,
    /// Responses not kept: their request was dropped, or unpaired ones the judge refused.
    dropped_responses,
}

impl HttpStats {
    fn count_ambiguous(&mut self, reason: head::Ambiguity) {
        use head::Ambiguity::*;
        *match reason {
            ContentLengthAndTransferEncoding => &mut self.ambiguous_content_length_and_transfer_encoding,
            ConflictingContentLength => &mut self.ambiguous_conflicting_content_length,
            RepeatedContentLength => &mut self.ambiguous_repeated_content_length,
            InvalidContentLength => &mut self.ambiguous_invalid_content_length,
            UnsupportedTransferEncoding => &mut self.ambiguous_unsupported_transfer_encoding,
            InvalidChunkSize => &mut self.ambiguous_invalid_chunk_size,
            InvalidChunk => &mut self.ambiguous_invalid_chunk,
        } += 1;
    }
}

/// Framing state of one TCP connection (both directions) plus request/response pairing.
pub struct HttpConnection {
    /// Indexed by [`Direction::index`]: requests, responses.
    framers: [Framer; 2],
    shared: Shared,
    /// Bytes seen per direction before the connection was judged (for non_http_bytes).
    seen_bytes: u64,
    closed: bool,
}

impl HttpConnection {
    pub fn new(config: HttpConfig) -> Self {
        HttpConnection {
            framers: [
                Framer::new(MessageKind::Request, config),
                Framer::new(MessageKind::Response, config),
            ],
            shared: Shared::default(),
            seen_bytes: 0,
            closed: false,
        }
    }

    /// In-order bytes of one direction (the caller's TCP reassembly guarantees order).
    pub fn on_data(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        self.on_data_judged(dir, data, ts_ns, &mut KeepAll, stats, out)
    }

    /// Like [`HttpConnection::on_data`], with `judge` deciding on each request head.
    pub fn on_data_judged(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        judge: &mut dyn ExchangeJudge,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        if self.closed {
            return;
        }
        if self.shared.non_http {
            stats.non_http_bytes += data.len() as u64;
            return;
        }
        if self.shared.upgraded {
            return;
        }
        self.seen_bytes += data.len() as u64;
        self.framers[dir.index()].feed(data, ts_ns, judge, &mut self.shared, stats, out);
        self.after_event(stats);
    }

    /// Bytes of `dir` that may be skipped right after what was fed so far: the rest of a
    /// length-delimited body (or chunk) of a message that keeps no more bytes (dropped
    /// by the judge, damaged, or full at `max_message_bytes`). `None` otherwise.
    pub fn skippable(&self, dir: Direction) -> Option<u64> {
        if self.closed || self.is_ignored() {
            return None;
        }
        self.framers[dir.index()].skippable()
    }

    /// The next `len` bytes of `dir` were skipped on purpose (at most what
    /// [`HttpConnection::skippable`] said): framing goes on exactly after them.
    pub fn on_skip(&mut self, dir: Direction, len: u64, stats: &mut HttpStats, out: &mut Vec<HttpMessage>) {
        if self.frames_missing_bytes(len, stats) {
            self.framers[dir.index()].skip(len, &mut self.shared, stats, out);
            self.after_event(stats);
        }
    }

    /// Bytes that will not arrive (skipped or lost): counted, and true when the
    /// framer must account for them (an HTTP connection still being framed).
    fn frames_missing_bytes(&mut self, len: u64, stats: &mut HttpStats) -> bool {
        if self.closed || self.shared.upgraded {
            return false;
        }
        if self.shared.non_http {
            stats.non_http_bytes += len;
            return false;
        }
        self.seen_bytes += len;
        true
    }

    /// The stream of that direction did not start with a SYN: its first bytes (which
    /// follow) may be anywhere inside a message. Call before its first data.
    pub fn on_unknown_start(&mut self, dir: Direction, stats: &mut HttpStats) {
        if self.closed || self.is_ignored() {
            return;
        }
        self.framers[dir.index()].unknown_start(&mut self.shared, stats);
    }

    /// `len` bytes of that direction's stream are missing at this point.
    pub fn on_gap(
        &mut self,
        dir: Direction,
        len: u64,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        if self.frames_missing_bytes(len, stats) {
            self.framers[dir.index()].gap(len, &mut self.shared, stats, out);
            self.after_event(stats);
        }
    }

    /// The connection ended (FIN both ways, RST, or idle). A close-delimited response in
    /// progress is complete and emitted (its end_ns is that of its last data, not `ts_ns`).
    /// Any other partial message is counted in `incomplete_at_close` and NOT emitted.
    /// Requests that were emitted but never answered are counted in `unanswered_requests`.
    pub fn on_close(&mut self, ts_ns: u64, stats: &mut HttpStats, out: &mut Vec<HttpMessage>) {
        let _ = ts_ns;
        if self.closed {
            return;
        }
        self.closed = true;
        let [req, resp] = &mut self.framers;
        resp.close(&mut self.shared, stats, out);
        req.close(&mut self.shared, stats, out);
        self.shared.pairing.close(stats);
    }

    /// True when the connection was found not to be HTTP (or was upgraded) and is being ignored.
    pub fn is_ignored(&self) -> bool {
        self.shared.non_http || self.shared.upgraded
    }

    /// Bytes currently buffered (for the caller's memory accounting).
    pub fn buffered_bytes(&self) -> usize {
        self.framers.iter().map(Framer::buffered_bytes).sum()
    }

    /// Memory pressure: messages in progress give back up to `excess` kept bytes and
    /// keep no more; they will be emitted cut and flagged truncated.
    pub fn stop_keeping(&mut self, mut excess: usize, stats: &mut HttpStats) {
        for f in &mut self.framers {
            if let Some(freed) = f.stop_keeping(excess) {
                stats.memory_pressure_truncations += 1;
                excess = excess.saturating_sub(freed);
            }
        }
    }

    /// Once the connection is ignored, both directions stop and free their buffers.
    fn after_event(&mut self, stats: &mut HttpStats) {
        if !self.is_ignored() {
            return;
        }
        if self.shared.non_http {
            stats.non_http_connections += 1;
            stats.non_http_bytes += self.seen_bytes;
        }
        for f in &mut self.framers {
            f.stop();
        }
        self.shared.pairing.clear();
    }
}
