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

/// Offset of `part` (a subslice of `raw`) in `raw`.
fn offset(raw: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - raw.as_ptr() as usize
}

fn spans(raw: &[u8], headers: &[httparse::Header<'_>]) -> Vec<HeaderSpan> {
    headers
        .iter()
        .map(|h| {
            let name = offset(raw, h.name.as_bytes());
            let value = offset(raw, h.value);
            HeaderSpan { name: name..name + h.name.len(), value: value..value + h.value.len() }
        })
        .collect()
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

/// Checks that a whole head is there (the framer's own test) before parsing it.
fn complete_head(raw: &[u8], start: usize) -> Result<usize, MessageError> {
    let s = &raw[start..];
    let ws = s.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    head::find_head_end(s, ws, 0).map(|end| start + end).ok_or(MessageError::IncompleteHead)
}

/// Parses a request: head, header spans and body framing, by the framer's rules.
pub fn parse_request(raw: &[u8]) -> Result<Request<'_>, MessageError> {
    let end = complete_head(raw, 0)?;
    let (len, parsed) = head::parse_request(&raw[..end]).map_err(head_error)?;
    let (method, target, version, headers, start) = head::with_headers(|storage| {
        let mut req = httparse::Request::new(storage);
        match req.parse(&raw[..end])? {
            httparse::Status::Complete(_) => {
                let method = req.method.unwrap_or("");
                Ok(Some((method, req.path.unwrap_or(""), req.version.unwrap_or(1), spans(raw, req.headers), offset(raw, method.as_bytes()))))
            }
            httparse::Status::Partial => Ok(None),
        }
    })
    .map_err(head_error)?;
    let framing = match parsed.framing {
        Ok(f) => framing(f),
        Err(ambiguity) => BodyFraming::Ambiguous(ambiguity.token()),
    };
    Ok(Request { raw, method, target, head: Head { version, headers, start, end: len, framing } })
}

/// Parses a response whose request had `request_method` (None if unknown): interim
/// 1xx heads are skipped, the final head's framing follows RFC 9112 6.3.
pub fn parse_response<'a>(raw: &'a [u8], request_method: Option<&str>) -> Result<Response<'a>, MessageError> {
    let mut start = 0;
    let mut interim = 0;
    loop {
        let end = complete_head(raw, start)?;
        let (len, parsed) = head::parse_response(&raw[start..end]).map_err(head_error)?;
        let body_framing = parsed.framing(request_method);
        if (100..200).contains(&parsed.status) && parsed.status != 101 {
            interim += 1;
            start += len;
            continue;
        }
        let (version, headers, head_start) = head::with_headers(|storage| {
            let mut resp = httparse::Response::new(storage);
            match resp.parse(&raw[start..end])? {
                httparse::Status::Complete(_) => {
                    // The start line begins after any empty lines httparse skipped.
                    let skipped = raw[start..end].iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                    Ok(Some((resp.version.unwrap_or(1), spans(raw, resp.headers), start + skipped)))
                }
                httparse::Status::Partial => Ok(None),
            }
        })
        .map_err(head_error)?;
        let framing = if parsed.status == 101 { BodyFraming::None } else { framing(body_framing) };
        return Ok(Response {
            raw,
            status: parsed.status,
            interim,
            head: Head { version, headers, start: head_start, end: start + len, framing },
        });
    }
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
