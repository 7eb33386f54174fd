//! Per-direction framing state machine.
//!
//! Each direction keeps only the bytes it could not consume yet (a partial head, a
//! partial chunk-size or trailer line, or a would-be message start while resyncing),
//! plus the kept bytes of the message in progress. Body bytes are copied straight into
//! the message (up to the size cap) and never buffered.

use bytes::Bytes;

use super::head::{self, Ambiguity, Framing, ParseError, Prefix};
use super::pairing::{Pairing, Pending};
use super::view::{HeadSpans, RequestHead};
use super::{ExchangeJudge, HttpConfig, HttpMessage, HttpStats, MessageKind};

/// Connection-wide state both directions need.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub pairing: Pairing,
    pub next_exchange: u64,
    pub non_http: bool,
    pub upgraded: bool,
    /// A request head was parsed: from then on, response bytes that are not HTTP are
    /// parse errors, not a sign of another protocol.
    pub saw_request: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a head.
    Head,
    /// Content-Length body.
    Body {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after chunk data.
    ChunkDataEnd,
    Trailers {
        seen: usize,
    },
    /// Response body delimited by connection close.
    CloseDelimited,
    /// Skipping bytes until something that can start a message.
    Resync,
    /// Connection ignored (non-HTTP, upgraded) or closed.
    Stopped,
}

/// The message in progress.
struct Msg {
    bytes: Vec<u8>,
    original_len: u64,
    start_ns: u64,
    end_ns: u64,
    /// Hit by a gap: framing continues but it will not be emitted.
    damaged: bool,
    exchange: u64,
    method: Option<String>,
    target: Option<String>,
    status: Option<u16>,
    /// Response is upgrading the connection: stop after emitting it.
    upgrade: bool,
    /// Request whose body framing is ambiguous: emitted flagged, then the direction stops.
    ambiguous: Option<Ambiguity>,
    /// Bytes this message may keep: the size cap, or less once memory ran short.
    keep: usize,
    /// Kept bytes up to the end of the final head (set when the body starts).
    head_len: usize,
    /// Its exchange was dropped by the judge: framed, but neither kept nor emitted.
    discard: bool,
    /// Spans of its head when the message is exactly one head (no empty lines before
    /// it, no interim 1xx heads) and a body: handed on so redaction does not parse again.
    head: Option<HeadSpans>,
}

impl Msg {
    fn push(&mut self, data: &[u8], ts: u64) {
        self.original_len += data.len() as u64;
        self.end_ns = ts;
        if !self.damaged && !self.discard {
            let room = self.keep.saturating_sub(self.bytes.len());
            self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// A head parsed from `s` (the bytes from where this message or its next head
    /// starts) is about to be pushed: keep its spans if it is the message's only head.
    fn set_head(&mut self, s: &[u8], spans: HeadSpans) {
        let first = self.original_len == 0 && !matches!(s.first(), Some(b'\r' | b'\n'));
        self.head = first.then_some(spans);
    }

    fn damage(&mut self, stats: &mut HttpStats) {
        if !self.damaged {
            self.damaged = true;
            self.bytes = Vec::new();
            // A dropped exchange loses nothing anyone keeps.
            if !self.discard {
                stats.lost_to_gap += 1;
            }
        }
    }
}

pub(crate) struct Framer {
    kind: MessageKind,
    config: HttpConfig,
    /// Unconsumed input; starts at the current message start / resync candidate.
    buf: Vec<u8>,
    /// Timestamp of the chunk holding `buf[0]`.
    buf_ts: u64,
    state: State,
    /// Bytes of `buf` already searched for a head end / line end (avoids rescans).
    scan: usize,
    msg: Option<Msg>,
    /// Resync: `buf[0]` is at the start of a line.
    line_start: bool,
    /// The first message start was judged (or a gap made that impossible); only
    /// before that can a connection be declared non-HTTP.
    decided: bool,
    /// Every byte of this direction since its start was framed exactly (no gap or
    /// resync): a framing error here is the sender's, and the server read the same
    /// bytes. Requests then stop instead of resyncing (nothing after is invented).
    synced: bool,
    /// Stopped after a request framing error: later bytes are counted, not framed.
    stopped_on_error: bool,
    /// Timestamp of the last data seen (where a loss starts, for pairing).
    last_ts: u64,
}

impl Framer {
    pub(crate) fn new(kind: MessageKind, config: HttpConfig) -> Self {
        Framer {
            kind,
            config,
            buf: Vec::new(),
            buf_ts: 0,
            state: State::Head,
            scan: 0,
            msg: None,
            line_start: true,
            decided: false,
            synced: true,
            stopped_on_error: false,
            last_ts: 0,
        }
    }

    /// No SYN anchored this direction: its first bytes may be anywhere in a message.
    /// Look for a message start, and pairing cannot trust what came before.
    pub(crate) fn unknown_start(&mut self, sh: &mut Shared, stats: &mut HttpStats) {
        self.decided = true;
        self.synced = false;
        self.state = State::Resync;
        self.line_start = true;
        self.loss(sh, stats);
    }

    /// Messages of this direction may have been lost here: pairing becomes uncertain.
    fn loss(&mut self, sh: &mut Shared, stats: &mut HttpStats) {
        self.synced = false;
        match self.kind {
            MessageKind::Request => sh.pairing.request_loss(self.last_ts, stats),
            MessageKind::Response => sh.pairing.response_loss(stats),
        }
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buf.len() + self.msg.as_ref().map_or(0, |m| m.bytes.len())
    }

    /// Memory pressure: the message in progress gives back up to `excess` of the bytes
    /// it kept and keeps no more, so it will be emitted cut and flagged truncated. Only
    /// messages past their head are cut, never into the head (a record always holds the
    /// whole head). Returns the bytes given back, or None if there was nothing to cut.
    pub(crate) fn stop_keeping(&mut self, excess: usize) -> Option<usize> {
        let in_body = !matches!(self.state, State::Head | State::Resync | State::Stopped);
        match self.msg.as_mut() {
            Some(m) if in_body && !m.damaged && !m.discard && m.keep > m.head_len => {
                let len = m.bytes.len();
                m.keep = len.saturating_sub(excess).max(m.head_len);
                m.bytes.truncate(m.keep);
                m.bytes.shrink_to_fit();
                Some(len - m.keep)
            }
            _ => None,
        }
    }

    /// Drops everything: the connection is no longer framed.
    pub(crate) fn stop(&mut self) {
        self.state = State::Stopped;
        self.buf = Vec::new();
        self.msg = None;
    }

    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        ts: u64,
        judge: &mut dyn ExchangeJudge,
        sh: &mut Shared,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        if self.state == State::Stopped || data.is_empty() {
            if self.stopped_on_error {
                stats.framing_error_ignored_bytes += data.len() as u64;
            }
            return;
        }
        self.last_ts = ts;
        // Work on the caller's slice directly when nothing is left over (the common case),
        // so large bodies are not copied into our buffer.
        let mut owned = std::mem::take(&mut self.buf);
        let old_len = owned.len();
        if old_len > 0 {
            owned.extend_from_slice(data);
        }
        let input: &[u8] = if old_len > 0 { &owned } else { data };
        let consumed = self.run(input, old_len, ts, judge, sh, stats, out);
        if self.state == State::Stopped {
            return;
        }
        if old_len > 0 {
            if consumed >= old_len {
                self.buf_ts = ts;
            }
            owned.drain(..consumed);
        } else {
            self.buf_ts = ts;
            owned.extend_from_slice(&data[consumed..]);
        }
        // Don't keep a huge allocation around after a big input was consumed.
        let keep = 2 * self.config.max_head_bytes.max(4096);
        if owned.capacity() > keep && owned.len() < keep / 2 {
            owned.shrink_to(keep / 2);
        }
        self.buf = owned;
    }

    /// Timestamp of the byte at `pos` of this call's input.
    fn ts_at(&self, pos: usize, old_len: usize, ts: u64) -> u64 {
        if pos < old_len {
            self.buf_ts
        } else {
            ts
        }
    }

    /// Frames as much of `input` as possible; returns the bytes consumed.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        input: &[u8],
        old_len: usize,
        ts: u64,
        judge: &mut dyn ExchangeJudge,
        sh: &mut Shared,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) -> usize {
        let max_msg = self.config.max_message_bytes;
        let max_head = self.config.max_head_bytes;
        let mut pos = 0;
        loop {
            let avail = &input[pos..];
            match self.state {
                State::Stopped => {
                    if self.stopped_on_error {
                        stats.framing_error_ignored_bytes += (input.len() - pos) as u64;
                    }
                    return input.len();
                }
                State::Head => {
                    if avail.is_empty() {
                        return pos;
                    }
                    if self.msg.is_none() {
                        self.msg = Some(Msg {
                            // Usually the whole message is in this input: one allocation, no regrowth.
                            bytes: Vec::with_capacity(avail.len().min(max_msg).min(1 << 16)),
                            original_len: 0,
                            start_ns: self.ts_at(pos, old_len, ts),
                            end_ns: ts,
                            damaged: false,
                            exchange: 0,
                            method: None,
                            target: None,
                            status: None,
                            upgrade: false,
                            ambiguous: None,
                            keep: max_msg,
                            head_len: 0,
                            discard: false,
                            head: None,
                        });
                    }
                    // Empty lines before a message are allowed; they ride along with it.
                    let ws = avail
                        .iter()
                        .take_while(|&&b| b == b'\r' || b == b'\n')
                        .count();
                    if ws > MAX_LEADING_EMPTY.min(max_head) {
                        // Not a tolerable stray CRLF any more; also keeps the rescans of
                        // this prefix on every call cheap.
                        self.decided = true;
                        pos = self.fail_head(ParseError::InvalidHead, pos, ws, stats, sh);
                        continue;
                    }
                    if ws == avail.len() {
                        return pos;
                    }
                    let prefix = match self.kind {
                        MessageKind::Request => head::request_prefix(&avail[ws..]),
                        MessageKind::Response => head::response_prefix(&avail[ws..]),
                    };
                    if !self.decided && self.other_protocol(prefix, &avail[ws..], sh) {
                        // The very first bytes are not HTTP: ignore the connection.
                        sh.non_http = true;
                        self.stop();
                        return input.len();
                    }
                    if prefix == Prefix::No {
                        self.decided = true;
                        pos = self.fail_head(ParseError::InvalidHead, pos, ws, stats, sh);
                        continue;
                    }
                    let Some(end) = head::find_head_end(avail, ws, self.scan) else {
                        if avail.len() - ws > max_head {
                            self.decided = true;
                            pos = self.fail_head(ParseError::HeadTooLarge, pos, ws, stats, sh);
                            continue;
                        }
                        self.scan = avail.len();
                        return pos;
                    };
                    self.scan = 0;
                    self.decided = true;
                    if end - ws > max_head {
                        pos = self.fail_head(ParseError::HeadTooLarge, pos, ws, stats, sh);
                        continue;
                    }
                    let result = match self.kind {
                        MessageKind::Request => self.request_head(&avail[..end], ts, judge, sh),
                        MessageKind::Response => self.response_head(&avail[..end], ts, judge, sh, stats),
                    };
                    match result {
                        Ok((len, framing)) => {
                            pos += len;
                            self.start_body(framing, sh, stats, out);
                        }
                        Err(e) => pos = self.fail_head(e, pos, ws, stats, sh),
                    }
                }
                State::Body { remaining } | State::ChunkData { remaining } => {
                    if avail.is_empty() {
                        return pos;
                    }
                    let n = (avail.len() as u64).min(remaining) as usize;
                    self.msg_mut().push(&avail[..n], ts);
                    pos += n;
                    self.body_advance(remaining - n as u64, sh, stats, out);
                }
                State::ChunkSize => {
                    let Some(nl) = self.find_newline(avail) else {
                        if avail.len() > max_head {
                            self.fail_body(Ambiguity::InvalidChunkSize, input, pos, sh, stats, out);
                            continue;
                        }
                        return pos;
                    };
                    let line = strip_cr(&avail[..nl]);
                    match head::parse_chunk_size(line) {
                        Some(size) => {
                            self.msg_mut().push(&avail[..=nl], ts);
                            pos += nl + 1;
                            self.state = if size == 0 {
                                State::Trailers { seen: 0 }
                            } else {
                                State::ChunkData { remaining: size }
                            };
                        }
                        None => self.fail_body(Ambiguity::InvalidChunkSize, input, pos, sh, stats, out),
                    }
                }
                State::ChunkDataEnd => {
                    let n = match avail {
                        [] | [b'\r'] => return pos,
                        [b'\n', ..] => 1,
                        [b'\r', b'\n', ..] => 2,
                        _ => 0,
                    };
                    if n == 0 {
                        self.fail_body(Ambiguity::InvalidChunk, input, pos, sh, stats, out);
                        continue;
                    }
                    self.msg_mut().push(&avail[..n], ts);
                    pos += n;
                    self.state = State::ChunkSize;
                }
                State::Trailers { seen } => {
                    let Some(nl) = self.find_newline(avail) else {
                        if seen + avail.len() > max_head {
                            self.fail_body(Ambiguity::InvalidChunk, input, pos, sh, stats, out);
                            continue;
                        }
                        return pos;
                    };
                    self.msg_mut().push(&avail[..=nl], ts);
                    pos += nl + 1;
                    if strip_cr(&avail[..nl]).is_empty() {
                        self.finish(sh, stats, out);
                    } else {
                        self.state = State::Trailers {
                            seen: seen + nl + 1,
                        };
                    }
                }
                State::CloseDelimited => {
                    if !avail.is_empty() {
                        self.msg_mut().push(avail, ts);
                    }
                    return input.len();
                }
                State::Resync => {
                    let mut p = pos;
                    let mut found = false;
                    while p < input.len() {
                        let at_line_start = if p == pos {
                            self.line_start
                        } else {
                            input[p - 1] == b'\n'
                        };
                        if at_line_start {
                            let s = &input[p..];
                            let c = match self.kind {
                                MessageKind::Request => head::request_candidate(s, max_head),
                                MessageKind::Response => head::response_prefix(s),
                            };
                            match c {
                                Prefix::Yes => {
                                    found = true;
                                    break;
                                }
                                Prefix::NeedMore => break,
                                Prefix::No => {}
                            }
                        }
                        p += 1;
                    }
                    stats.resync_skipped_bytes += (p - pos) as u64;
                    if found {
                        self.state = State::Head;
                        self.scan = 0;
                        pos = p;
                        continue;
                    }
                    // Either waiting at a candidate (keep it, it starts a line) or all skipped.
                    self.line_start = p < input.len() || (p > 0 && input[p - 1] == b'\n');
                    return p;
                }
            }
        }
    }

    /// Body or chunk data went on; `remaining` bytes of it are still to come.
    fn body_advance(
        &mut self,
        remaining: u64,
        sh: &mut Shared,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        self.state = match (self.state, remaining) {
            (State::Body { .. }, 0) => return self.finish(sh, stats, out),
            (State::Body { .. }, _) => State::Body { remaining },
            (_, 0) => State::ChunkDataEnd,
            _ => State::ChunkData { remaining },
        };
    }

    fn msg_mut(&mut self) -> &mut Msg {
        self.msg.as_mut().expect("message in progress")
    }

    /// Searches for `\n` in a line state, resuming where the previous call stopped.
    fn find_newline(&mut self, avail: &[u8]) -> Option<usize> {
        let from = self.scan.min(avail.len());
        match avail[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.scan = 0;
                Some(from + i)
            }
            None => {
                self.scan = avail.len();
                None
            }
        }
    }

    /// Whether the first bytes of this direction belong to another protocol: they
    /// cannot start a message, or (requests) the first line is complete and is not a
    /// request line. A server speaking first counts only before any request was seen.
    fn other_protocol(&mut self, prefix: Prefix, s: &[u8], sh: &Shared) -> bool {
        match self.kind {
            MessageKind::Response => prefix == Prefix::No && !sh.saw_request,
            MessageKind::Request if prefix == Prefix::No => true,
            MessageKind::Request => match memchr::memchr(b'\n', s) {
                Some(nl) => {
                    self.decided = true;
                    !head::request_line_ok(strip_cr(&s[..nl]))
                }
                None => s.len() > MAX_FIRST_LINE,
            },
        }
    }

    /// Parses a request head: registers it for pairing and asks the judge whether its
    /// exchange is kept. Returns (head length, framing).
    /// A head whose body framing is ambiguous ends its message: it is emitted flagged
    /// and the direction stops (see [`Framer::finish`]).
    fn request_head(
        &mut self,
        s: &[u8],
        ts: u64,
        judge: &mut dyn ExchangeJudge,
        sh: &mut Shared,
    ) -> Result<(usize, Framing), ParseError> {
        let (len, h) = head::parse_request(s)?;
        let exchange = sh.next_exchange;
        sh.next_exchange += 1;
        sh.saw_request = true;
        let msg = self.msg_mut();
        msg.set_head(s, h.spans);
        msg.push(&s[..len], ts);
        msg.exchange = exchange;
        msg.method = Some(h.method.clone());
        msg.target = Some(h.target.clone());
        let framing = h.framing.unwrap_or_else(|reason| {
            msg.ambiguous = Some(reason);
            Framing::None
        });
        let start_ns = msg.start_ns;
        let view = RequestHead { method: &h.method, target: &h.target, head: &s[..len] };
        let dropped = !judge.keep_request(&view, start_ns);
        if dropped {
            msg.discard = true;
            msg.bytes = Vec::new();
        }
        sh.pairing.request_started(Pending {
            exchange,
            method: h.method,
            target: h.target,
            start_ns,
            end_ns: None,
            emitted: false,
            dropped,
        });
        Ok((len, framing))
    }

    /// Parses a response head. Interim 1xx heads are added to the message, which goes on
    /// waiting for the final head; a final head takes its request, if certain.
    fn response_head(
        &mut self,
        s: &[u8],
        ts: u64,
        judge: &mut dyn ExchangeJudge,
        sh: &mut Shared,
        stats: &mut HttpStats,
    ) -> Result<(usize, Framing), ParseError> {
        let (len, mut h) = head::parse_response(s)?;
        let msg = self.msg.as_mut().expect("message in progress");
        msg.set_head(s, std::mem::take(&mut h.spans));
        msg.push(&s[..len], ts);
        if (100..200).contains(&h.status) && h.status != 101 {
            stats.interim_responses += 1;
            return Ok((len, Framing::Interim));
        }
        msg.status = Some(h.status);
        match sh.pairing.take_for_response(msg.start_ns, stats) {
            Some(req) => {
                // A response follows its request's fate.
                msg.discard = req.dropped;
                msg.exchange = req.exchange;
                // The request's strings move to its response; `answering` keeps the times.
                msg.method = Some(std::mem::take(&mut req.method));
                msg.target = Some(std::mem::take(&mut req.target));
            }
            None => {
                msg.discard = !judge.keep_unpaired_response();
                msg.exchange = sh.next_exchange;
                sh.next_exchange += 1;
            }
        }
        if msg.discard {
            msg.bytes = Vec::new();
        }
        let method = msg.method.as_deref();
        let upgrade = h.status == 101 || (method == Some("CONNECT") && (200..300).contains(&h.status));
        let framing = h.framing(method);
        msg.upgrade = upgrade;
        Ok((len, framing))
    }

    fn start_body(
        &mut self,
        framing: Framing,
        sh: &mut Shared,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        self.scan = 0;
        if let Some(m) = self.msg.as_mut() {
            m.head_len = m.bytes.len();
            if let Framing::Length(n) = framing {
                // Room for the body at once (a 64 KiB body regrew twice, copying
                // itself each time); no more than the 64 KiB a new message gets.
                let body = n.min(m.keep.saturating_sub(m.bytes.len()) as u64).min(1 << 16) as usize;
                if !m.discard && !m.damaged {
                    m.bytes.reserve_exact(body);
                }
            }
        }
        match framing {
            // Not a message end: the same message waits for the final head.
            Framing::Interim => self.state = State::Head,
            Framing::None => {
                self.state = State::Head;
                self.finish(sh, stats, out);
            }
            Framing::Length(n) => self.state = State::Body { remaining: n },
            Framing::Chunked => self.state = State::ChunkSize,
            Framing::Close => self.state = State::CloseDelimited,
        }
    }

    /// The message in progress is complete: emit it (unless damaged) and expect a new
    /// head. A request with ambiguous framing is emitted flagged, then the direction stops.
    fn finish(&mut self, sh: &mut Shared, stats: &mut HttpStats, out: &mut Vec<HttpMessage>) {
        self.state = State::Head;
        self.scan = 0;
        let Some(msg) = self.msg.take() else { return };
        let emitted = !msg.damaged && !msg.discard;
        let paired_req = match self.kind {
            MessageKind::Request => {
                sh.pairing.request_done(msg.exchange, msg.end_ns, emitted);
                None
            }
            MessageKind::Response => {
                let req = sh.pairing.answering.take();
                sh.pairing.response_done(msg.end_ns, stats);
                req
            }
        };
        if let Some(reason) = msg.ambiguous {
            stats.count_ambiguous(reason);
            self.stop_on_error(stats);
        }
        if !emitted {
            if msg.discard {
                match self.kind {
                    MessageKind::Request => stats.dropped_requests += 1,
                    MessageKind::Response => stats.dropped_responses += 1,
                }
                if msg.upgrade {
                    stats.upgraded_connections += 1;
                    sh.upgraded = true;
                    self.stop();
                }
            }
            return;
        }
        let truncated = msg.original_len > msg.bytes.len() as u64;
        if truncated {
            stats.truncated += 1;
            stats.truncated_bytes += msg.original_len - msg.bytes.len() as u64;
        }
        let paired = match self.kind {
            MessageKind::Request => {
                stats.requests += 1;
                true
            }
            MessageKind::Response => {
                stats.responses += 1;
                if paired_req.is_some() {
                    stats.paired += 1;
                } else {
                    stats.unpaired_responses += 1;
                }
                paired_req.is_some()
            }
        };
        out.push(HttpMessage {
            kind: self.kind,
            exchange: msg.exchange,
            paired,
            bytes: Bytes::from(msg.bytes),
            original_len: msg.original_len,
            truncated,
            ambiguous: msg.ambiguous.map(Ambiguity::token),
            start_ns: msg.start_ns,
            end_ns: msg.end_ns,
            request_start_ns: paired_req.as_ref().map(|r| r.start_ns),
            request_end_ns: paired_req.as_ref().and_then(|r| r.end_ns),
            method: msg.method,
            target: msg.target,
            status: msg.status,
            head: msg.head,
        });
        if msg.upgrade {
            stats.upgraded_connections += 1;
            sh.upgraded = true;
            self.stop();
        }
    }

    /// Counts a parse error and drops the message in progress (a response's request
    /// is gone with it).
    fn count_error(&mut self, e: ParseError, stats: &mut HttpStats, sh: &mut Shared) {
        match e {
            ParseError::InvalidHead => stats.parse_errors_invalid_head += 1,
            ParseError::HeadTooLarge => stats.parse_errors_head_too_large += 1,
            ParseError::BadContentLength => stats.parse_errors_bad_content_length += 1,
            ParseError::BadChunk => stats.parse_errors_bad_chunk += 1,
        }
        if self.kind == MessageKind::Response
            && self.msg.as_ref().is_some_and(|m| m.status.is_some())
        {
            sh.pairing.response_lost();
        }
        self.msg = None;
    }

    /// A head starting at `pos + ws` (after `ws` empty-line bytes) was rejected. A
    /// request direction in step with the server stops there: the server rejected the
    /// same bytes (nginx answers 400 and closes), so anything after would be invented.
    /// Otherwise (responses, or after a loss) resync from the head's first byte, which
    /// may not start a message (so we always move forward). Returns the new position.
    fn fail_head(&mut self, e: ParseError, pos: usize, ws: usize, stats: &mut HttpStats, sh: &mut Shared) -> usize {
        self.count_error(e, stats, sh);
        if self.kind == MessageKind::Request && self.synced {
            self.stop_on_error(stats);
            return pos;
        }
        self.loss(sh, stats);
        stats.resync_skipped_bytes += ws as u64;
        self.enter_resync(false, stats);
        pos + ws
    }

    /// A body framing error at `pos`. A request in step with the server is emitted
    /// flagged ambiguous (what was framed of it) and the direction stops; otherwise the
    /// message is dropped and framing resyncs from there.
    fn fail_body(
        &mut self,
        reason: Ambiguity,
        input: &[u8],
        pos: usize,
        sh: &mut Shared,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        if self.kind == MessageKind::Request && self.synced {
            self.msg_mut().ambiguous = Some(reason);
            self.finish(sh, stats, out);
            return;
        }
        self.count_error(ParseError::BadChunk, stats, sh);
        self.loss(sh, stats);
        // The offending line may itself be a new message start (a sender that gave up).
        self.enter_resync(pos == 0 || input[pos - 1] == b'\n', stats);
    }

    /// Stops the request direction after a framing error; later bytes are only counted.
    fn stop_on_error(&mut self, stats: &mut HttpStats) {
        stats.framing_error_stops += 1;
        self.stop();
        self.stopped_on_error = true;
    }

    /// Switches to resync; `line_start` says whether the current position may start a message.
    fn enter_resync(&mut self, line_start: bool, stats: &mut HttpStats) {
        stats.resyncs += 1;
        self.state = State::Resync;
        self.scan = 0;
        self.line_start = line_start;
    }

    /// `len` bytes are missing here. Inside a known-length body (or chunk) the message is
    /// damaged but framing continues exactly; anywhere else the message is lost and we
    /// resync, and pairing can no longer trust its FIFO.
    pub(crate) fn gap(
        &mut self,
        len: u64,
        sh: &mut Shared,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        if self.state == State::Stopped {
            return;
        }
        self.decided = true;
        match self.state {
            State::Body { remaining } | State::ChunkData { remaining } if len <= remaining => {
                let msg = self.msg_mut();
                msg.damage(stats);
                msg.original_len += len;
                self.body_advance(remaining - len, sh, stats, out);
            }
            State::CloseDelimited => {
                let msg = self.msg_mut();
                msg.damage(stats);
                msg.original_len += len;
            }
            State::Resync => {
                stats.resync_skipped_bytes += self.buf.len() as u64;
                self.buf.clear();
                self.line_start = true;
                self.loss(sh, stats);
            }
            _ => {
                let in_progress = self.msg.as_ref().is_some_and(|m| m.original_len > 0)
                    || self.buf.iter().any(|&b| b != b'\r' && b != b'\n');
                if in_progress && !self.msg.as_ref().is_some_and(|m| m.damaged || m.discard) {
                    stats.lost_to_gap += 1;
                }
                if self.kind == MessageKind::Response
                    && self.msg.as_ref().is_some_and(|m| m.status.is_some())
                {
                    sh.pairing.response_lost();
                }
                self.msg = None;
                self.buf.clear();
                self.loss(sh, stats);
                stats.resyncs += 1;
                self.state = State::Resync;
                self.scan = 0;
                self.line_start = true;
            }
        }
    }

    /// Bytes that may be skipped after what was fed: the rest of a length-delimited body
    /// or chunk of a message that keeps no more bytes (dropped, damaged, or full).
    pub(crate) fn skippable(&self) -> Option<u64> {
        let m = self.msg.as_ref()?;
        let keeps_nothing = m.discard || m.damaged || m.bytes.len() >= m.keep;
        match self.state {
            State::Body { remaining } | State::ChunkData { remaining } if keeps_nothing && remaining > 0 => Some(remaining),
            _ => None,
        }
    }

    /// `len` bytes (at most [`Framer::skippable`]) were skipped on purpose: unlike a gap,
    /// the message is not damaged (it keeps what it has) and framing stays exact.
    pub(crate) fn skip(&mut self, len: u64, sh: &mut Shared, stats: &mut HttpStats, out: &mut Vec<HttpMessage>) {
        match self.state {
            State::Body { remaining } | State::ChunkData { remaining } if len <= remaining && self.msg.is_some() => {
                self.msg_mut().original_len += len;
                self.body_advance(remaining - len, sh, stats, out);
            }
            // Not what skippable() allowed: treat as loss.
            _ => self.gap(len, sh, stats, out),
        }
    }

    /// End of stream: a close-delimited response is complete; anything else partial is
    /// counted as incomplete_at_close and dropped.
    pub(crate) fn close(
        &mut self,
        sh: &mut Shared,
        stats: &mut HttpStats,
        out: &mut Vec<HttpMessage>,
    ) {
        match self.state {
            State::Stopped => {}
            State::CloseDelimited => self.finish(sh, stats, out),
            State::Resync => stats.resync_skipped_bytes += self.buf.len() as u64,
            State::Head => {
                let partial = self.msg.as_ref().is_some_and(|m| m.original_len > 0)
                    || self.buf.iter().any(|&b| b != b'\r' && b != b'\n');
                if partial && !self.msg.as_ref().is_some_and(|m| m.damaged || m.discard) {
                    stats.incomplete_at_close += 1;
                }
            }
            _ => {
                if !self.msg.as_ref().is_some_and(|m| m.damaged || m.discard) {
                    stats.incomplete_at_close += 1;
                }
            }
        }
        self.stop();
    }
}

/// Longest first line we wait for before judging a new connection not HTTP (nginx's
/// longest request line is 8 KiB by default).
const MAX_FIRST_LINE: usize = 16 * 1024;

/// Empty-line bytes tolerated before a message (RFC 9112 2.2 asks for at least one line).
const MAX_LEADING_EMPTY: usize = 256;

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
