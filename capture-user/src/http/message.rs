//! Whole HTTP/1.x messages parsed from their bytes: the replayer (which rewrites a
//! captured request) and the comparer (which reads captured and replayed responses)
//! use this instead of parsers of their own.
//!
//! Heads are parsed with the framer's code ([`super::head`]): the same header limits,
//! the same body-framing rules (RFC 9112 section 6.3), and a response's framing decided
//! by its request's method (a HEAD response has no body whatever its Content-Length
//! says). Header names and values are returned as spans into the raw bytes, so nothing
//! is copied and a rewrite can keep every byte it does not change.

use std::ops::Range;

use super::head::{self, Framing as HeadFraming};
use super::view::{FieldSpan, HeadSpans};

/// Where a header's name and value sit in the raw message bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Range<usize>,
    /// The value without surrounding whitespace.
    pub value: Range<usize>,
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD responses, 1xx/204/304, requests without Content-Length or chunked).
    None,
    /// Exactly this many bytes (Content-Length).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
    /// A request whose body framing a server may read differently (RFC 9112 6.3: both
    /// Content-Length and Transfer-Encoding, conflicting lengths, ...): the reason token.
    /// Its body is taken as the bytes captured, never re-framed.
    Ambiguous(&'static str),
}

/// A parsed head: start line fields are in [`Request`] / [`Response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    pub headers: Vec<HeaderSpan>,
    /// Offset of the first byte of this (final) head in the raw bytes.
    pub start: usize,
    /// Offset just past the empty line that ends the head: the body starts here.
    pub end: usize,
    pub framing: BodyFraming,
}

/// A request: its head, and the raw bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub raw: &'a [u8],
    pub method: &'a str,
    pub target: &'a str,
    pub head: Head,
}

/// A response: its final head (interim 1xx heads before it are skipped), and the raw bytes.
#[derive(Clone, Debug)]
pub struct Response<'a> {
    pub raw: &'a [u8],
    pub status: u16,
    /// Interim (1xx, not 101) responses before the final head.
    pub interim: usize,
    pub head: Head,
}

/// A decoded body (chunked coding removed; trailers dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// False when the raw bytes end before the body does (a message cut at capture):
    /// `bytes` is then the part that was there.
    pub complete: bool,
}

/// Why bytes are not a usable message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The bytes end before the empty line that ends the head.
    #[error("incomplete head (no empty line after the headers)")]
    IncompleteHead,
    /// The start line or a header line is malformed.
    #[error("malformed head")]
    InvalidHead,
    /// Content-Length / Transfer-Encoding do not give a body length the framer accepts.
    #[error("body length cannot be determined (Content-Length / Transfer-Encoding)")]
    BadFraming,
    /// A chunk-size line or the line end after chunk data is malformed.
    #[error("malformed chunked body")]
    BadChunk,
}

/// Header spans of a head parsed at `at` in the raw bytes (the framer's spans are
/// relative to the head's first byte).
fn spans(fields: &[FieldSpan], at: usize) -> Vec<HeaderSpan> {
    fields.iter().map(|f| HeaderSpan { name: f.name.start + at..f.name.end + at, value: f.value.start + at..f.value.end + at }).collect()
}

/// The `x` of a start line's `HTTP/1.x` (the framer checked the version is 1.x).
fn version_of(version: &[u8]) -> u8 {
    match version.last() {
        Some(b'0') => 0,
        _ => 1,
    }
}

fn text(b: &[u8]) -> Result<&str, MessageError> {
    std::str::from_utf8(b).map_err(|_| MessageError::InvalidHead)
}

/// Leading empty lines (CR or LF) at `start`: skipped, as the framer does.
fn empty_lines(raw: &[u8], start: usize) -> usize {
    raw[start..].iter().take_while(|&&b| b == b'\r' || b == b'\n').count()
}

fn framing(f: HeadFraming) -> BodyFraming {
    match f {
        HeadFraming::Length(n) => BodyFraming::Length(n),
        HeadFraming::Chunked => BodyFraming::Chunked,
        HeadFraming::Close => BodyFraming::UntilClose,
        HeadFraming::None | HeadFraming::Interim => BodyFraming::None,
    }
}

fn head_error(e: head::ParseError) -> MessageError {
    match e {
        head::ParseError::BadContentLength => MessageError::BadFraming,
        head::ParseError::BadChunk => MessageError::BadChunk,
        _ => MessageError::InvalidHead,
    }
}

/// Checks that a whole head is there (the framer's own test) before parsing it: where
/// it ends. `start` is where its start line begins (after any empty lines).
fn complete_head(raw: &[u8], start: usize) -> Result<usize, MessageError> {
    head::find_head_end(&raw[start..], 0, 0).map(|end| start + end).ok_or(MessageError::IncompleteHead)
}

/// Parses a request: head, header spans and body framing, by the framer's rules (one
/// parse, the framer's: its spans are the header spans).
pub fn parse_request(raw: &[u8]) -> Result<Request<'_>, MessageError> {
    let start = empty_lines(raw, 0);
    let end = complete_head(raw, start)?;
    let (len, parsed) = head::parse_request(&raw[start..end]).map_err(head_error)?;
    let line = &raw[start..start + parsed.spans.start_line.end];
    // httparse checked `METHOD SP TARGET SP HTTP/1.x` (a target has no spaces).
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(MessageError::InvalidHead);
    };
    let framing = match parsed.framing {
        Ok(f) => framing(f),
        Err(ambiguity) => BodyFraming::Ambiguous(ambiguity.token()),
    };
    Ok(Request {
        raw,
        method: text(method)?,
        target: text(target)?,
        head: Head { version: version_of(version), headers: spans(&parsed.spans.headers, start), start, end: start + len, framing },
    })
}

/// Parses a response whose request had `request_method` (None if unknown): interim
/// 1xx heads are skipped, the final head's framing follows RFC 9112 6.3.
pub fn parse_response<'a>(raw: &'a [u8], request_method: Option<&str>) -> Result<Response<'a>, MessageError> {
    let mut start = 0;
    let mut interim = 0;
    loop {
        start += empty_lines(raw, start);
        let end = complete_head(raw, start)?;
        let (len, parsed) = head::parse_response(&raw[start..end]).map_err(head_error)?;
        if (100..200).contains(&parsed.status) && parsed.status != 101 {
            interim += 1;
            start += len;
            continue;
        }
        let head = final_head(raw, start, &parsed, &parsed.spans, request_method);
        return Ok(Response { raw, status: parsed.status, interim, head });
    }
}

/// The [`Head`] of a final response head at `start` of `raw`: `parsed` says its
/// framing, `at` where its fields are (relative to `start`).
fn final_head(raw: &[u8], start: usize, parsed: &head::ResponseHead, at: &HeadSpans, request_method: Option<&str>) -> Head {
    let framing = if parsed.status == 101 { BodyFraming::None } else { framing(parsed.framing(request_method)) };
    // The status line starts `HTTP/1.x` (the framer's parse checked it).
    let version = version_of(&raw[start..(start + 8).min(raw.len())]);
    Head { version, headers: spans(&at.headers, start), start, end: start + at.len, framing }
}

/// The response the framer framed from `raw` (its `spans`, of a single head at the
/// start of `raw`, and its `status`), to a `request_method` request: built from the
/// framer's parse, not parsed again.
pub fn framed_response<'a>(raw: &'a [u8], status: u16, spans: &HeadSpans, request_method: Option<&str>) -> Result<Response<'a>, MessageError> {
    if spans.len > raw.len() {
        return Err(MessageError::IncompleteHead);
    }
    let parsed = head::framed_response_head(raw, status, spans).map_err(head_error)?;
    Ok(Response { raw, status, interim: 0, head: final_head(raw, 0, &parsed, spans, request_method) })
}

impl Head {
    /// (name, value) of every header, in wire order.
    pub fn headers<'r>(&'r self, raw: &'r [u8]) -> impl Iterator<Item = (&'r str, &'r [u8])> + 'r {
        self.headers.iter().map(move |h| {
            // Names were checked by httparse to be tokens (ASCII).
            (std::str::from_utf8(&raw[h.name.clone()]).unwrap_or(""), &raw[h.value.clone()])
        })
    }

    /// Decodes the body that follows the head in `raw`.
    pub fn body(&self, raw: &[u8]) -> Result<Body, MessageError> {
        let rest = &raw[self.end..];
        match self.framing {
            BodyFraming::None => Ok(Body { bytes: Vec::new(), complete: true }),
            BodyFraming::UntilClose | BodyFraming::Ambiguous(_) => Ok(Body { bytes: rest.to_vec(), complete: true }),
            BodyFraming::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                Ok(Body { bytes: rest[..rest.len().min(n)].to_vec(), complete: rest.len() >= n })
            }
            BodyFraming::Chunked => dechunk(rest),
        }
    }
}

impl Request<'_> {
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.head.headers(self.raw)
    }
    pub fn body(&self) -> Result<Body, MessageError> {
        self.head.body(self.raw)
    }
    /// Whether the whole body is there and well framed (as `body()` says), without
    /// copying it unless it is chunked.
    pub fn body_complete(&self) -> bool {
        match self.head.framing {
            BodyFraming::Length(n) => (self.raw.len() - self.head.end) as u64 >= n,
            BodyFraming::Chunked => self.body().is_ok_and(|b| b.complete),
            BodyFraming::None | BodyFraming::UntilClose | BodyFraming::Ambiguous(_) => true,
        }
    }
}

impl Response<'_> {
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.head.headers(self.raw)
    }
    pub fn body(&self) -> Result<Body, MessageError> {
        self.head.body(self.raw)
    }
}

/// Undoes chunked coding with the framer's chunk-size rules. Bytes that end early give
/// an incomplete body (what was there), not an error.
fn dechunk(mut rest: &[u8]) -> Result<Body, MessageError> {
    let mut bytes = Vec::new();
    let cut = |bytes: Vec<u8>| Ok(Body { bytes, complete: false });
    loop {
        let Some(nl) = memchr::memchr(b'\n', rest) else { return cut(bytes) };
        let size = head::parse_chunk_size(strip_cr(&rest[..nl])).ok_or(MessageError::BadChunk)?;
        rest = &rest[nl + 1..];
        if size == 0 {
            // Trailer lines up to an empty line; a capture that ends right after the
            // last chunk is complete enough.
            while let Some(nl) = memchr::memchr(b'\n', rest) {
                let line = strip_cr(&rest[..nl]);
                rest = &rest[nl + 1..];
                if line.is_empty() {
                    break;
                }
            }
            return Ok(Body { bytes, complete: true });
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if rest.len() < size {
            bytes.extend_from_slice(rest);
            return cut(bytes);
        }
        bytes.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        rest = match rest {
            [] | [b'\r'] => return cut(bytes),
            [b'\r', b'\n', tail @ ..] | [b'\n', tail @ ..] => tail,
            _ => return Err(MessageError::BadChunk),
        };
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_spans_and_body() {
        let raw = b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length:  3 \r\n\r\nabcEXTRA";
        let r = parse_request(raw).unwrap();
        assert_eq!((r.method, r.target, r.head.version), ("POST", "/a?b=1", 1));
        let headers: Vec<(&str, &[u8])> = r.headers().collect();
        assert_eq!(headers, [("Host", &b"x"[..]), ("Content-Length", &b"3"[..])]);
        assert_eq!(r.head.framing, BodyFraming::Length(3));
        assert_eq!(&raw[r.head.end..r.head.end + 3], b"abc");
        assert_eq!(r.body().unwrap(), Body { bytes: b"abc".to_vec(), complete: true });
        let cut = parse_request(&raw[..raw.len() - 6]).unwrap();
        assert_eq!(cut.body().unwrap(), Body { bytes: b"ab".to_vec(), complete: false });
    }

    #[test]
    fn broken_requests_are_errors() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost").unwrap_err(), MessageError::IncompleteHead);
        assert_eq!(parse_request(b"\x16\x03\x01 nonsense\r\n\r\n").unwrap_err(), MessageError::InvalidHead);
        // Ambiguous framing is not an error: the reason is carried and the body is the
        // bytes as captured (the replayer refuses it unless asked).
        let r = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello").unwrap();
        assert_eq!(r.head.framing, BodyFraming::Ambiguous("conflicting_content_length"));
        assert_eq!(r.body().unwrap(), Body { bytes: b"hello".to_vec(), complete: true });
    }

    #[test]
    fn many_headers_parse_like_the_framer() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..1000 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&raw).unwrap().head.headers.len(), 1000);
    }

    #[test]
    fn head_response_has_no_body_by_its_method() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        let r = parse_response(raw, Some("HEAD")).unwrap();
        assert_eq!(r.head.framing, BodyFraming::None);
        assert_eq!(r.body().unwrap(), Body { bytes: vec![], complete: true });
        // The same bytes answering a GET are a body cut short.
        let r = parse_response(raw, Some("GET")).unwrap();
        assert_eq!(r.body().unwrap(), Body { bytes: vec![], complete: false });
    }

    #[test]
    fn interim_responses_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
            HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let r = parse_response(raw, Some("POST")).unwrap();
        assert_eq!((r.status, r.interim), (201, 2));
        assert_eq!(r.headers().map(|(n, _)| n).collect::<Vec<_>>(), ["Content-Length"]);
        assert_eq!(&raw[r.head.start..r.head.start + 12], b"HTTP/1.1 201");
        assert_eq!(r.body().unwrap().bytes, b"ok");
    }

    #[test]
    fn response_framings() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        assert_eq!(parse_response(chunked, None).unwrap().body().unwrap(), Body { bytes: b"Wikipedia".to_vec(), complete: true });
        let cut = &chunked[..chunked.len() - 15];
        assert_eq!(parse_response(cut, None).unwrap().body().unwrap(), Body { bytes: b"Wikiped".to_vec(), complete: false });
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(parse_response(bad, None).unwrap().body(), Err(MessageError::BadChunk));
        let close = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        let r = parse_response(close, Some("GET")).unwrap();
        assert_eq!((r.head.version, r.head.framing), (0, BodyFraming::UntilClose));
        assert_eq!(r.body().unwrap().bytes, b"all of it");
        for status in [204, 304] {
            let raw = format!("HTTP/1.1 {status} X\r\nContent-Length: 9\r\n\r\n");
            assert_eq!(parse_response(raw.as_bytes(), Some("GET")).unwrap().head.framing, BodyFraming::None);
        }
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        let r = parse_response(upgrade, Some("GET")).unwrap();
        assert_eq!((r.status, r.head.framing), (101, BodyFraming::None));
    }
}

#[cfg(test)]
mod framed_tests {
    use super::*;
    use crate::flow::Direction;
    use crate::http::{HttpConfig, HttpConnection, HttpMessage, HttpStats, MessageKind};

    /// The framer's message for `response` to a `method` request.
    fn framed(method: &str, response: &[u8]) -> HttpMessage {
        let mut conn = HttpConnection::new(HttpConfig::default());
        let (mut stats, mut msgs) = (HttpStats::default(), Vec::new());
        conn.on_data(Direction::ClientToServer, format!("{method} / HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(), 0, &mut stats, &mut msgs);
        conn.on_data(Direction::ServerToClient, response, 0, &mut stats, &mut msgs);
        conn.on_close(0, &mut stats, &mut msgs);
        msgs.into_iter().find(|m| m.kind == MessageKind::Response).expect("a response")
    }

    /// The replayer builds an answer's head from the framer's parse instead of parsing
    /// it again: the same head, status and body as a parse of the bytes.
    #[test]
    fn a_framed_response_is_the_parse_of_its_bytes() {
        let cases: [(&str, &[u8]); 5] = [
            ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
            ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
            ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n"),
            ("GET", b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close"),
            ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        ];
        for (method, bytes) in cases {
            let msg = framed(method, bytes);
            let (Some(spans), Some(status)) = (&msg.head, msg.status) else { panic!("one head: spans and status") };
            let once = framed_response(&msg.bytes, status, spans, Some(method)).unwrap();
            let again = parse_response(&msg.bytes, Some(method)).unwrap();
            assert_eq!((once.status, &once.head), (again.status, &again.head), "{}", String::from_utf8_lossy(bytes));
            assert_eq!(once.body(), again.body());
        }
        // A head cut short (spans past the bytes) is not taken for a whole one.
        let spans = head_spans_of(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n");
        assert_eq!(framed_response(b"HTTP/1.1 200 OK\r\nA:", 200, &spans, None).unwrap_err(), MessageError::IncompleteHead);
    }

    fn head_spans_of(bytes: &[u8]) -> HeadSpans {
        crate::http::view::head_spans(bytes).unwrap()
    }

    /// Empty lines before a head are skipped (as the framer does) and the spans still
    /// point at the right bytes.
    #[test]
    fn empty_lines_before_a_head() {
        let raw = b"\r\n\r\nGET /x HTTP/1.0\r\nA: b\r\n\r\n";
        let r = parse_request(raw).unwrap();
        assert_eq!((r.method, r.target, r.head.version, r.head.start), ("GET", "/x", 0, 4));
        assert_eq!(r.headers().collect::<Vec<_>>(), [("A", &b"b"[..])]);
        let raw = b"\r\nHTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 1\r\n\r\nz";
        let r = parse_response(raw, Some("GET")).unwrap();
        assert_eq!((r.status, r.head.start, r.body().unwrap().bytes), (200, 2, b"z".to_vec()));
    }
}
