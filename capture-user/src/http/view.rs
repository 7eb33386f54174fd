//! Read-only views of a framed head for the code after the framer (filters decide on
//! request heads, redaction rewrites header values): the start line and every header
//! field with its byte span, parsed with httparse like the framer does.

use std::ops::Range;

/// Header array sizes tried in turn (as the framer does).
const HEADER_COUNTS: [usize; 3] = [64, 512, 8192];

/// A request head as the framer parsed it, handed to an [`super::ExchangeJudge`].
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Request-target as sent (path and query, or an absolute URL).
    pub target: &'a str,
    /// The head's bytes: start line, header fields, the empty line.
    pub head: &'a [u8],
}

impl<'a> RequestHead<'a> {
    /// Every header field, in order (names as sent, values without surrounding spaces).
    pub fn headers(&self) -> Vec<(&'a str, &'a [u8])> {
        let Some(spans) = head_spans(self.head) else { return Vec::new() };
        spans
            .headers
            .iter()
            .map(|h| {
                // httparse checked the name is a token, so it is ASCII.
                let name = std::str::from_utf8(&self.head[h.name.clone()]).unwrap_or("");
                (name, &self.head[h.value.clone()])
            })
            .collect()
    }
}

/// One header field's name and value spans within the head bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldSpan {
    pub name: Range<usize>,
    /// The value without the spaces around it (may be empty).
    pub value: Range<usize>,
}

/// Where the parts of a head are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeadSpans {
    /// The start line without its line ending.
    pub start_line: Range<usize>,
    pub headers: Vec<FieldSpan>,
    /// Length of the whole head, the final empty line included.
    pub len: usize,
}

impl HeadSpans {
    /// Fields whose name equals `name` (case-insensitive).
    pub fn named<'s>(&'s self, bytes: &'s [u8], name: &'s str) -> impl Iterator<Item = &'s FieldSpan> + 's {
        self.headers.iter().filter(move |h| bytes[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// Spans of the complete head at the start of `bytes` (a request or a response), or
/// `None` if there is no complete, well-formed head there.
pub fn head_spans(bytes: &[u8]) -> Option<HeadSpans> {
    let mut spans = HeadSpans::default();
    head_spans_into(bytes, &mut spans).then_some(spans)
}

/// Like [`head_spans`], into `out` (its field list is reused: no allocation per head
/// on a hot path). Returns false, with `out` unspecified, if there is no complete head.
pub fn head_spans_into(bytes: &[u8], out: &mut HeadSpans) -> bool {
    out.headers.clear();
    let Some(line_end) = memchr::memchr(b'\n', bytes) else { return false };
    out.start_line = start_line_span(bytes, line_end);
    let fields = &bytes[line_end + 1..];
    let base = bytes.as_ptr() as usize;
    // Most heads fit the array on the stack; a few need a bigger one.
    let mut small = [httparse::EMPTY_HEADER; HEADER_COUNTS[0]];
    let mut result = parse_fields(fields, &mut small, base, &mut out.headers);
    for &n in &HEADER_COUNTS[1..] {
        if !matches!(result, Err(httparse::Error::TooManyHeaders)) {
            break;
        }
        let mut headers = vec![httparse::EMPTY_HEADER; n];
        result = parse_fields(fields, &mut headers, base, &mut out.headers);
    }
    match result {
        Ok(Some(used)) => {
            out.len = line_end + 1 + used;
            true
        }
        _ => false,
    }
}

/// Header fields of `fields` (bytes after the start line) with spans relative to
/// `base`, appended to `out`; `Ok(None)` if the head is not complete.
fn parse_fields<'b>(
    fields: &'b [u8],
    headers: &mut [httparse::Header<'b>],
    base: usize,
    out: &mut Vec<FieldSpan>,
) -> Result<Option<usize>, httparse::Error> {
    match httparse::parse_headers(fields, headers)? {
        httparse::Status::Complete((used, parsed)) => {
            out.extend(field_spans(parsed, base));
            Ok(Some(used))
        }
        httparse::Status::Partial => Ok(None),
    }
}

/// The start line of a head whose first `\n` is at `line_end`, without its `\r`.
pub(super) fn start_line_span(bytes: &[u8], line_end: usize) -> Range<usize> {
    0..if line_end > 0 && bytes[line_end - 1] == b'\r' { line_end - 1 } else { line_end }
}

/// Spans of parsed header fields, relative to `base` (the address their buffer starts at).
pub(super) fn field_spans<'a>(headers: &'a [httparse::Header<'_>], base: usize) -> impl Iterator<Item = FieldSpan> + 'a {
    let span = move |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    headers.iter().map(move |h| FieldSpan { name: span(h.name.as_bytes()), value: span(h.value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_names_and_trimmed_values() {
        let head = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nCookie:  s=1; t=2 \r\nEmpty:\r\n\r\nBODY";
        let s = head_spans(head).unwrap();
        assert_eq!(&head[s.start_line.clone()], b"GET /a?b=1 HTTP/1.1");
        assert_eq!(s.len, head.len() - 4);
        let fields: Vec<(&[u8], &[u8])> = s.headers.iter().map(|h| (&head[h.name.clone()], &head[h.value.clone()])).collect();
        assert_eq!(fields, [(&b"Host"[..], &b"x"[..]), (b"Cookie", b"s=1; t=2"), (b"Empty", b"")]);
        assert_eq!(s.named(head, "cookie").count(), 1);
        let view = RequestHead { method: "GET", target: "/a?b=1", head };
        assert_eq!(view.headers()[0], ("Host", &b"x"[..]));
    }

    #[test]
    fn bare_lf_heads_and_incomplete_heads() {
        let head = b"HTTP/1.1 200 OK\nSet-Cookie: a=b\n\n";
        let s = head_spans(head).unwrap();
        assert_eq!(&head[s.start_line.clone()], b"HTTP/1.1 200 OK");
        assert_eq!(s.len, head.len());
        assert!(head_spans(b"GET / HTTP/1.1\r\nHost: x\r\n").is_none());
        assert!(head_spans(b"GET / HTTP/1.1").is_none());
    }
}
