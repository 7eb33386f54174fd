//! Start-line / header parsing helpers. Heads are parsed with httparse; only the
//! body-framing decision (RFC 9112 section 6) is ours.

use super::view::{self, HeadSpans};

/// Why a head (or body framing) was rejected; each maps to one stats counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    InvalidHead,
    HeadTooLarge,
    BadContentLength,
    BadChunk,
}

/// Why a request's body framing is ambiguous (RFC 9112 section 6.3): a server may read
/// such a request differently, or (nginx) reject it and close the connection, so the
/// request is recorded flagged and nothing after it on that connection is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ambiguity {
    /// Both Content-Length and Transfer-Encoding.
    ContentLengthAndTransferEncoding,
    /// Content-Length values that differ (several headers or a list).
    ConflictingContentLength,
    /// The same Content-Length value more than once (RFC 9110 allows it; nginx rejects it).
    RepeatedContentLength,
    /// A Content-Length that is not a decimal number of at most 19 digits.
    InvalidContentLength,
    /// Transfer-Encoding other than one `chunked` (nginx: 501, or 400 when repeated).
    UnsupportedTransferEncoding,
    /// A chunk-size line that is not hex, or more than 16 hex digits (overflow).
    InvalidChunkSize,
    /// Chunk data not followed by CRLF, or a trailer section longer than a head may be.
    InvalidChunk,
}

impl Ambiguity {
    /// The `ambiguous=` token of the record and the counter suffix.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Ambiguity::ContentLengthAndTransferEncoding => "content_length_and_transfer_encoding",
            Ambiguity::ConflictingContentLength => "conflicting_content_length",
            Ambiguity::RepeatedContentLength => "repeated_content_length",
            Ambiguity::InvalidContentLength => "invalid_content_length",
            Ambiguity::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Ambiguity::InvalidChunkSize => "invalid_chunk_size",
            Ambiguity::InvalidChunk => "invalid_chunk",
        }
    }
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
    /// An interim 1xx response head: the final head follows in the same message.
    Interim,
}

/// Answer of a cheap check on the first bytes of a would-be message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prefix {
    Yes,
    NeedMore,
    No,
}

pub(crate) struct RequestHead {
    pub method: String,
    pub target: String,
    /// The body's framing, or why it cannot be known.
    pub framing: Result<Framing, Ambiguity>,
    /// Where the start line and header fields are (handed on, so nothing parses again).
    pub spans: HeadSpans,
}

pub(crate) struct ResponseHead {
    pub status: u16,
    /// Where the start line and header fields are (handed on, so nothing parses again).
    pub spans: HeadSpans,
    pub te_chunked: bool,
    pub te_present: bool,
    pub content_length: Option<u64>,
}

/// Header array sizes tried in turn: most heads fit the first, a few need more.
const HEADER_COUNTS: [usize; 3] = [64, 512, 8192];

/// Longest method token we accept when looking for a request start (real methods are short).
const MAX_METHOD_LEN: usize = 32;

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Can `s` start a request line (`TOKEN SP`)? Cheap: looks at most 33 bytes.
pub(crate) fn request_prefix(s: &[u8]) -> Prefix {
    for (i, &b) in s.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        if b == b' ' {
            return if i > 0 { Prefix::Yes } else { Prefix::No };
        }
        if !is_tchar(b) {
            return Prefix::No;
        }
    }
    if s.len() > MAX_METHOD_LEN {
        Prefix::No
    } else {
        Prefix::NeedMore
    }
}

/// Can `s` start a status line (`HTTP/1.`)?
pub(crate) fn response_prefix(s: &[u8]) -> Prefix {
    const P: &[u8] = b"HTTP/1.";
    let n = s.len().min(P.len());
    if s[..n] != P[..n] {
        Prefix::No
    } else if n == P.len() {
        Prefix::Yes
    } else {
        Prefix::NeedMore
    }
}

/// Resync candidate test for requests: `TOKEN SP` and httparse does not reject what is there.
pub(crate) fn request_candidate(s: &[u8], max_head: usize) -> Prefix {
    match request_prefix(s) {
        Prefix::Yes => {}
        other => return other,
    }
    let s = &s[..s.len().min(max_head)];
    let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNTS[0]];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(s) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Prefix::Yes,
        Err(_) => Prefix::No,
    }
}

/// Finds the end of a head in `s` (index just past the empty line), searching from `from`.
/// `start` is where the start line begins (after any leading empty lines). Only looks back
/// two bytes, so resuming from where the last search stopped is linear overall.
pub(crate) fn find_head_end(s: &[u8], start: usize, from: usize) -> Option<usize> {
    let from = from.max(start);
    // memchr: a head's lines are scanned many bytes at a time (hot path).
    for i in memchr::memchr_iter(b'\n', s.get(from..)?).map(|i| i + from) {
        if (i > start && s[i - 1] == b'\n') || (i > start + 1 && s[i - 1] == b'\r' && s[i - 2] == b'\n') {
            return Some(i + 1);
        }
    }
    None
}

/// Runs an httparse parse with growing header arrays (TooManyHeaders -> retry bigger).
/// The first try uses an array on the stack: every head is parsed this way on the hot
/// path, and a zeroed heap vector per head cost ~3 % of the agent's CPU.
pub(crate) fn with_headers<'b, T>(
    mut f: impl FnMut(&mut [httparse::Header<'b>]) -> Result<Option<T>, httparse::Error>,
) -> Result<T, ParseError> {
    let verdict = |r: Result<Option<T>, httparse::Error>| match r {
        Ok(Some(v)) => Some(Ok(v)),
        Ok(None) => Some(Err(ParseError::InvalidHead)),
        Err(httparse::Error::TooManyHeaders) => None,
        Err(_) => Some(Err(ParseError::InvalidHead)),
    };
    let mut first = [httparse::EMPTY_HEADER; HEADER_COUNTS[0]];
    if let Some(done) = verdict(f(&mut first)) {
        return done;
    }
    for &n in &HEADER_COUNTS[1..] {
        let mut headers = vec![httparse::EMPTY_HEADER; n];
        if let Some(done) = verdict(f(&mut headers)) {
            return done;
        }
    }
    Err(ParseError::InvalidHead)
}

/// What the length-related headers say.
struct LengthHeaders {
    te_present: bool,
    te_chunked: bool,
    content_length: Option<u64>,
}

/// `headers`: (name, value) of each field.
fn length_headers<'h>(headers: impl Iterator<Item = (&'h [u8], &'h [u8])>) -> Result<LengthHeaders, ParseError> {
    let mut te_present = false;
    let mut te_chunked = false;
    let mut cl: Option<u64> = None;
    let mut cl_bad = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_present = true;
            // The last coding of the last Transfer-Encoding header decides (RFC 9112 6.3).
            let v = String::from_utf8_lossy(value);
            if let Some(last) = v.split(',').map(str::trim).rfind(|c| !c.is_empty()) {
                te_chunked = last.eq_ignore_ascii_case("chunked");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // A list of identical values ("5, 5") is tolerated; anything else is invalid.
            for part in value.split(|&b| b == b',') {
                match parse_decimal(trim_ows(part)) {
                    Some(n) if cl.is_none() || cl == Some(n) => cl = Some(n),
                    _ => cl_bad = true,
                }
            }
        }
    }
    // Chunked wins over Content-Length, so a broken Content-Length is ignored then.
    if cl_bad && !te_chunked {
        return Err(ParseError::BadContentLength);
    }
    Ok(LengthHeaders {
        te_present,
        te_chunked,
        content_length: cl,
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Spans of a head parsed from `s` (`len` bytes long): as [`super::view::head_spans`]
/// gives them for the same bytes when `s` starts with the start line.
fn spans_of(s: &[u8], len: usize, headers: &[httparse::Header<'_>]) -> HeadSpans {
    let line_end = memchr::memchr(b'\n', s).unwrap_or(len);
    HeadSpans {
        start_line: view::start_line_span(s, line_end),
        headers: view::field_spans(headers, s.as_ptr() as usize).collect(),
        len,
    }
}

/// Parses a complete request head (`s` ends with the empty line).
pub(crate) fn parse_request(s: &[u8]) -> Result<(usize, RequestHead), ParseError> {
    with_headers(|headers| {
        let mut req = httparse::Request::new(headers);
        match req.parse(s)? {
            httparse::Status::Complete(n) => Ok(Some((
                n,
                RequestHead {
                    method: req.method.unwrap_or("").to_string(),
                    target: req.path.unwrap_or("").to_string(),
                    framing: request_framing(req.headers),
                    spans: spans_of(s, n, req.headers),
                },
            ))),
            httparse::Status::Partial => Ok(None),
        }
    })
}

/// Body framing of a request, as strict as nginx: exactly one `Transfer-Encoding:
/// chunked` and no Content-Length, or one valid Content-Length, or neither.
fn request_framing(headers: &[httparse::Header<'_>]) -> Result<Framing, Ambiguity> {
    let mut te: Option<&[u8]> = None;
    let mut te_headers = 0;
    let mut cl: Option<u64> = None;
    let (mut cl_values, mut cl_invalid, mut cl_conflict) = (0, false, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_headers += 1;
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                cl_values += 1;
                match parse_decimal(trim_ows(part)) {
                    Some(n) => {
                        cl_conflict |= cl.is_some_and(|c| c != n);
                        cl = Some(n);
                    }
                    None => cl_invalid = true,
                }
            }
        }
    }
    if te_headers > 0 {
        if cl_values > 0 {
            return Err(Ambiguity::ContentLengthAndTransferEncoding);
        }
        let chunked = te_headers == 1 && te.is_some_and(|v| trim_ows(v).eq_ignore_ascii_case(b"chunked"));
        return if chunked { Ok(Framing::Chunked) } else { Err(Ambiguity::UnsupportedTransferEncoding) };
    }
    if cl_invalid {
        Err(Ambiguity::InvalidContentLength)
    } else if cl_conflict {
        Err(Ambiguity::ConflictingContentLength)
    } else if cl_values > 1 {
        Err(Ambiguity::RepeatedContentLength)
    } else {
        Ok(match cl {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        })
    }
}

/// Whether `line` (without its line ending) is a request line we frame:
/// `method SP request-target SP HTTP/1.x`. Checked on the first line of a
/// connection, so other protocols (an SSH banner with a comment, SMTP, Redis
/// inline commands, HTTP/2's preface) are not taken for an unfinished request.
pub(crate) fn request_line_ok(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let method_ok = !method.is_empty() && method.len() <= MAX_METHOD_LEN && method.iter().all(|&b| is_tchar(b));
    let target_ok = !target.is_empty() && target.iter().all(|&b| b > b' ' && b != 0x7f);
    let version_ok = version.len() == 8 && version.starts_with(b"HTTP/1.") && version[7].is_ascii_digit();
    method_ok && target_ok && version_ok
}

/// Parses a complete response head (`s` ends with the empty line).
pub(crate) fn parse_response(s: &[u8]) -> Result<(usize, ResponseHead), ParseError> {
    let (len, status, lh, spans) = with_headers(|headers| {
        let mut resp = httparse::Response::new(headers);
        match resp.parse(s)? {
            httparse::Status::Complete(n) => {
                let lh = length_headers(resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
                Ok(Some((n, resp.code.unwrap_or(0), lh, spans_of(s, n, resp.headers))))
            }
            httparse::Status::Partial => Ok(None),
        }
    })?;
    let lh = lh?;
    Ok((
        len,
        ResponseHead {
            status,
            spans,
            te_chunked: lh.te_chunked,
            te_present: lh.te_present,
            content_length: lh.content_length,
        },
    ))
}

/// The length headers of a response head the framer parsed (`spans` into `raw`,
/// with its `status`), read again from its spans without parsing it again; the
/// returned head's own `spans` are left empty (the caller has them).
pub(crate) fn framed_response_head(raw: &[u8], status: u16, spans: &HeadSpans) -> Result<ResponseHead, ParseError> {
    let lh = length_headers(spans.headers.iter().map(|f| (&raw[f.name.clone()], &raw[f.value.clone()])))?;
    Ok(ResponseHead { status, spans: HeadSpans::default(), te_chunked: lh.te_chunked, te_present: lh.te_present, content_length: lh.content_length })
}

impl ResponseHead {
    /// Body framing of a final response (RFC 9112 6.3), given its request's method.
    pub(crate) fn framing(&self, request_method: Option<&str>) -> Framing {
        let no_body = request_method == Some("HEAD")
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
            || (request_method == Some("CONNECT") && (200..300).contains(&self.status));
        if no_body {
            Framing::None
        } else if self.te_chunked {
            Framing::Chunked
        } else if self.te_present {
            Framing::Close
        } else {
            match self.content_length {
                Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        }
    }
}

/// Parses a chunk-size line (without its line ending): hex size, then optional
/// whitespace and `;extensions`.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = trim_ows(&line[digits..]);
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    let mut n = 0u64;
    for &b in &line[..digits] {
        n = (n << 4) | u64::from((b as char).to_digit(16)?);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(request_prefix(b"GET / HTTP/1.1"), Prefix::Yes);
        assert_eq!(request_prefix(b"GE"), Prefix::NeedMore);
        assert_eq!(request_prefix(b"\x16\x03\x01"), Prefix::No);
        assert_eq!(request_prefix(b"SSH-2.0-OpenSSH_8.9\r\n"), Prefix::No);
        assert_eq!(request_prefix(b" GET"), Prefix::No);
        assert_eq!(response_prefix(b"HTTP/1.1 200"), Prefix::Yes);
        assert_eq!(response_prefix(b"HTT"), Prefix::NeedMore);
        assert_eq!(response_prefix(b"HTTP/2 200"), Prefix::No);
    }

    #[test]
    fn head_end() {
        let s = b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest";
        assert_eq!(find_head_end(s, 0, 0), Some(s.len() - 4));
        assert_eq!(find_head_end(b"\r\n\r\nGET / HTTP/1.1\n\n", 4, 0), Some(20));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0, 0), None);
    }

    /// Issue 10, finding 3: each shape nginx 1.22 rejects (400, or 501, then closes)
    /// is ambiguous; what it accepts is framed.
    #[test]
    fn request_framing_is_as_strict_as_nginx() {
        let framing = |headers: &str| parse_request(format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes()).unwrap().1.framing;
        use Ambiguity::*;
        assert_eq!(framing("Content-Length: 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(framing("Transfer-Encoding:  Chunked \r\n"), Ok(Framing::Chunked));
        assert_eq!(framing(""), Ok(Framing::None));
        assert_eq!(framing("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), Err(ContentLengthAndTransferEncoding));
        assert_eq!(framing("Transfer-Encoding: chunked\r\nContent-Length: x\r\n"), Err(ContentLengthAndTransferEncoding));
        assert_eq!(framing("Content-Length: 0\r\nContent-Length: 5\r\n"), Err(ConflictingContentLength));
        assert_eq!(framing("Content-Length: 5, 6\r\n"), Err(ConflictingContentLength));
        assert_eq!(framing("Content-Length: 5\r\nContent-Length: 5\r\n"), Err(RepeatedContentLength));
        assert_eq!(framing("Content-Length: 5, 5\r\n"), Err(RepeatedContentLength));
        assert_eq!(framing("Content-Length: 5x\r\n"), Err(InvalidContentLength));
        assert_eq!(framing("Content-Length: 99999999999999999999\r\n"), Err(InvalidContentLength));
        assert_eq!(framing("Transfer-Encoding: gzip, chunked\r\n"), Err(UnsupportedTransferEncoding));
        assert_eq!(framing("Transfer-Encoding: identity\r\n"), Err(UnsupportedTransferEncoding));
        assert_eq!(framing("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), Err(UnsupportedTransferEncoding));
    }

    /// Responses are framed as a client reads them: chunked wins over Content-Length.
    #[test]
    fn response_length_rules() {
        let (_, h) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing(Some("GET")), Framing::Chunked);
        let bad = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(bad.err(), Some(ParseError::BadContentLength));
    }

    #[test]
    fn request_lines() {
        assert!(request_line_ok(b"GET /a?b=c HTTP/1.1"));
        assert!(request_line_ok(b"OPTIONS * HTTP/1.0"));
        for bad in [
            &b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"[..],
            b"SSH-2.0-OpenSSH_9.2p1",
            b"EHLO mail.example.com",
            b"SET key value",
            b"PRI * HTTP/2.0",
            b"GET /a HTTP/1.1 extra",
            b"GET  HTTP/1.1",
            b"GET /a\x01 HTTP/1.1",
        ] {
            assert!(!request_line_ok(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"5;name=value"), Some(5));
        assert_eq!(parse_chunk_size(b"5 ; x"), Some(5));
        assert_eq!(parse_chunk_size(b"x"), None);
        assert_eq!(parse_chunk_size(b"5x"), None);
        assert_eq!(parse_chunk_size(b"11111111111111111"), None);
    }

    #[test]
    fn many_headers() {
        let mut h = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..1000 {
            h.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&h).unwrap().0, h.len());
    }
}
