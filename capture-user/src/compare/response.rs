//! Response bytes (captured or replayed) reduced to what is compared, read with the
//! project's one HTTP parser ([`crate::http::message`]).

use crate::http::message::{self, MessageError};

/// An HTTP response reduced to what is compared.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, values trimmed, in wire order (repeats kept).
    pub headers: Vec<(String, String)>,
    /// Body after de-chunking; Content-Encoding is undone when compared ([`super::compare`]).
    pub body: Vec<u8>,
    /// False when the bytes end before the body does (the message was cut at capture,
    /// or was larger than the replayer keeps): `body` is then only its beginning.
    pub body_complete: bool,
}

impl Response {
    /// All values of header `name` (lowercase) joined with ", ", as HTTP
    /// allows for repeated headers; `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values.join(", "))
        }
    }
}

/// Why bytes are not a usable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Head or body framing rejected by the HTTP parser.
    #[error("{0}")]
    Message(#[from] MessageError),
}

/// Parses the exact wire bytes of a response to a `request_method` request (None
/// when unknown: then a body is expected where the headers announce one).
///
/// Leading interim 1xx responses (100 Continue, 103 Early Hints, ...) are skipped
/// because the final response is what the client acted on; 101 is final. The body
/// follows the framer's rules (a HEAD response has none whatever its Content-Length
/// says); bytes that end early give `body_complete: false`, never an error, so the
/// caller can compare what is there and say so.
pub fn parse_response(raw: &[u8], request_method: Option<&str>) -> Result<Response, ParseError> {
    let parsed = message::parse_response(raw, request_method)?;
    from_head(raw, parsed.status, &parsed.head)
}

/// Like [`parse_response`], from a final `head` already parsed out of `raw` (with its
/// `status`): the replayer parses each answer once, when it is framed.
pub fn from_head(raw: &[u8], status: u16, head: &message::Head) -> Result<Response, ParseError> {
    let body = head.body(raw)?;
    let headers = head
        .headers(raw)
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(value).trim().to_string()))
        .collect();
    Ok(Response { status, headers, body: body.bytes, body_complete: body.complete })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let r = parse_response(raw, Some("GET")).unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.body_complete), (200, &b"hello"[..], true));
        assert_eq!(r.headers[0], ("content-type".to_string(), "text/plain".to_string()));
        assert_eq!(r.header("content-length").as_deref(), Some("5"));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;name=value\r\nWiki\r\n5\r\npedia\r\nE ; x=\"y\"\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let r = parse_response(raw, Some("GET")).unwrap();
        assert_eq!(r.body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(r.body_complete);
        assert!(r.headers.iter().all(|(n, _)| n != "x-trailer"));
    }

    #[test]
    fn interim_continue_then_final() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
            HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let r = parse_response(raw, Some("POST")).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"ok"[..]));
        assert!(r.header("link").is_none());
    }

    #[test]
    fn close_delimited_body() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<p>all of it</p>\n";
        assert_eq!(parse_response(raw, Some("GET")).unwrap().body, b"<p>all of it</p>\n");
    }

    /// The comparer used to guess a HEAD response from an empty body; the request's
    /// method decides now, as in the framer.
    #[test]
    fn head_response_is_known_by_its_request_method() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        let r = parse_response(raw, Some("HEAD")).unwrap();
        assert!(r.body.is_empty() && r.body_complete);
        let r = parse_response(raw, Some("GET")).unwrap();
        assert!(r.body.is_empty() && !r.body_complete, "a GET answer without its body is cut, not empty");
        let raw = b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n";
        assert!(parse_response(raw, Some("GET")).unwrap().body_complete);
    }

    #[test]
    fn cut_bodies_are_marked_not_rejected() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", Some("GET")).unwrap();
        assert_eq!((r.body.as_slice(), r.body_complete), (&b"abc"[..], false));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort", None).unwrap();
        assert_eq!((r.body.as_slice(), r.body_complete), (&b"short"[..], false));
    }

    #[test]
    fn garbage_is_error() {
        assert_eq!(parse_response(b"\x00\x01garbage\r\n\r\n", None), Err(MessageError::InvalidHead.into()));
        assert_eq!(parse_response(b"", None), Err(MessageError::IncompleteHead.into()));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", None), Err(MessageError::IncompleteHead.into()));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nab", None),
            Err(MessageError::BadFraming.into())
        );
    }
}
