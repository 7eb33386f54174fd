//! Parsing captured response bytes into a [`Response`].

/// An HTTP response reduced to what is compared.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, values trimmed, in wire order (repeats kept).
    pub headers: Vec<(String, String)>,
    /// Body after de-chunking; Content-Encoding is left as is.
    pub body: Vec<u8>,
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

/// Why captured bytes are not a usable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no complete response head (status line and headers)")]
    IncompleteHead,
    #[error("malformed response head: {0}")]
    Malformed(String),
    #[error("invalid Content-Length: {0:?}")]
    InvalidContentLength(String),
    #[error("body shorter than Content-Length: expected {expected} bytes, got {got}")]
    TruncatedBody { expected: usize, got: usize },
    #[error("malformed chunked body: {0}")]
    BadChunk(String),
}

/// Headers per response head we accept; real responses stay far below.
const MAX_HEADERS: usize = 256;

/// Parses the exact wire bytes of a response as captured.
///
/// Leading interim 1xx responses (100 Continue, 103 Early Hints, ...) are
/// skipped because the final response is what the client acted on. 101 is
/// final: the connection switches protocol after it. The body is framed by
/// Transfer-Encoding: chunked (de-chunked, trailers dropped), else by
/// Content-Length, else runs to the end of the bytes (close-delimited).
///
/// A response with Content-Length but no body bytes at all is taken as the
/// answer to a HEAD request and gets an empty body; a body that is present but
/// shorter than announced is an error, since comparing half a body would only
/// report noise.
pub fn parse_response(raw: &[u8]) -> Result<Response, ParseError> {
    let mut rest = raw;
    loop {
        let Head {
            status,
            headers,
            len,
        } = parse_head(rest)?;
        rest = &rest[len..];
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let body = if status == 101 || status == 204 || status == 304 {
            Vec::new()
        } else {
            parse_body(&headers, rest)?
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// A parsed status line and headers.
struct Head {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    /// Bytes taken by the head, including the empty line.
    len: usize,
}

fn parse_head(bytes: &[u8]) -> Result<Head, ParseError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut storage);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(ParseError::IncompleteHead),
        Err(e) => return Err(ParseError::Malformed(e.to_string())),
    };
    let status = parsed
        .code
        .ok_or_else(|| ParseError::Malformed("missing status code".into()))?;
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    Ok(Head {
        status,
        headers,
        len,
    })
}

fn parse_body(headers: &[(String, String)], rest: &[u8]) -> Result<Vec<u8>, ParseError> {
    let find = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    // RFC 9112 6.3: chunked as the final transfer coding wins over Content-Length.
    if let Some(te) = find("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        if last.eq_ignore_ascii_case("chunked") {
            return dechunk(rest);
        }
        return Ok(rest.to_vec());
    }
    if let Some(cl) = find("content-length") {
        // Repeated identical values ("10, 10") are allowed by the RFC.
        let first = cl.split(',').next().unwrap_or("").trim();
        let len: usize = first
            .parse()
            .map_err(|_| ParseError::InvalidContentLength(cl.to_string()))?;
        if cl.split(',').any(|v| v.trim() != first) {
            return Err(ParseError::InvalidContentLength(cl.to_string()));
        }
        if rest.is_empty() {
            return Ok(Vec::new());
        }
        if rest.len() < len {
            return Err(ParseError::TruncatedBody {
                expected: len,
                got: rest.len(),
            });
        }
        return Ok(rest[..len].to_vec());
    }
    Ok(rest.to_vec())
}

/// Undoes chunked transfer coding; chunk extensions and trailers are dropped.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ParseError> {
    let mut body = Vec::new();
    loop {
        let (line, after) = split_line(rest)
            .ok_or_else(|| ParseError::BadChunk("chunk size line not terminated".into()))?;
        let line = std::str::from_utf8(line)
            .map_err(|_| ParseError::BadChunk("chunk size line is not ASCII".into()))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ParseError::BadChunk(format!("bad chunk size {size_text:?}")))?;
        rest = after;
        if size == 0 {
            // Trailer section: header lines up to an empty line. A capture
            // that stops right after the last chunk is still complete enough.
            while let Some((line, after)) = split_line(rest) {
                rest = after;
                if line.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if rest.len() < size {
            return Err(ParseError::BadChunk(format!(
                "chunk of {size} bytes has only {} bytes",
                rest.len()
            )));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .ok_or_else(|| ParseError::BadChunk("chunk data not followed by CRLF".into()))?;
    }
}

/// Splits off one line ending in LF (CR before it dropped).
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let line = &bytes[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &bytes[nl + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(
            r.headers[0],
            ("content-type".to_string(), "text/plain".to_string())
        );
        assert_eq!(r.header("content-length").as_deref(), Some("5"));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;name=value\r\nWiki\r\n5\r\npedia\r\nE ; x=\"y\"\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(r.headers.iter().all(|(n, _)| n != "x-trailer"));
    }

    #[test]
    fn chunked_truncated_is_error() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort";
        assert!(matches!(parse_response(raw), Err(ParseError::BadChunk(_))));
    }

    #[test]
    fn interim_continue_then_final() {
        let raw =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
            HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"ok");
        assert!(r.header("link").is_none());
    }

    #[test]
    fn close_delimited_body() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<p>all of it</p>\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.body, b"<p>all of it</p>\n");
    }

    #[test]
    fn head_like_response_has_empty_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        let raw = b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n";
        assert!(parse_response(raw).unwrap().body.is_empty());
    }

    #[test]
    fn truncated_content_length_is_error() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(
            parse_response(raw),
            Err(ParseError::TruncatedBody {
                expected: 10,
                got: 3
            })
        );
    }

    #[test]
    fn garbage_is_error() {
        assert!(matches!(
            parse_response(b"\x00\x01garbage\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert_eq!(parse_response(b""), Err(ParseError::IncompleteHead));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Err(ParseError::IncompleteHead)
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nab"),
            Err(ParseError::InvalidContentLength(_))
        ));
    }
}
