//! Turning a captured request into the one sent to a target: safety filter, Host
//! rewrite, marking header, header swaps. The body is forwarded byte for byte.

use std::fmt;

/// A target base URL: `http://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target {0:?}: only http:// targets are supported (TLS is not built in yet)")]
    Scheme(String),
    #[error("target {0:?}: expected http://host[:port]")]
    Bad(String),
}

impl std::str::FromStr for TargetUrl {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s.strip_prefix("http://") else {
            return Err(if s.contains("://") { TargetError::Scheme(s.into()) } else { TargetError::Bad(s.into()) });
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(TargetError::Bad(s.into()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // [v6]:port or host:port; a bare IPv6 without brackets is not accepted.
            Some((h, p)) if !h.ends_with(':') => (h, p.parse().map_err(|_| TargetError::Bad(s.into()))?),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(TargetError::Bad(s.into()));
        }
        Ok(TargetUrl { host, port, authority: authority.to_string() })
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// How requests are changed on their way to a target.
#[derive(Clone, Debug)]
pub struct RewriteOptions {
    /// Keep the captured Host header instead of the target's authority.
    pub keep_host: bool,
    /// Header that marks every replayed request (name, value).
    pub mark: (String, String),
    /// Headers set (replacing any captured value), e.g. test credentials.
    pub set: Vec<(String, String)>,
    /// Headers removed (case-insensitive), e.g. production cookies.
    pub drop: Vec<String>,
}

/// The parts of a captured request the replayer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Where the body starts in the raw request.
    pub head_len: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("captured request has an invalid head: {0}")]
    Invalid(String),
    #[error("captured request head is incomplete (truncated record?)")]
    Incomplete,
}

pub fn parse_head(raw: &[u8]) -> Result<RequestHead, RequestError> {
    let mut headers = vec![httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(head_len)) => Ok(RequestHead {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            version: req.version.unwrap_or(1),
            headers: req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
            head_len,
        }),
        Ok(httparse::Status::Partial) => Err(RequestError::Incomplete),
        Err(e) => Err(RequestError::Invalid(e.to_string())),
    }
}

/// Builds the request for `target`: same method, target, version and body; headers
/// rewritten by `opts`. Returns the bytes to send.
pub fn rewrite(raw: &[u8], head: &RequestHead, target: &TargetUrl, opts: &RewriteOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.extend_from_slice(format!("{} {} HTTP/1.{}\r\n", head.method, head.target, head.version).as_bytes());
    let replaced = |name: &str| {
        name.eq_ignore_ascii_case(&opts.mark.0)
            || opts.drop.iter().any(|d| d.eq_ignore_ascii_case(name))
            || opts.set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut saw_host = false;
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("host") {
            saw_host = true;
            if !opts.keep_host && !replaced(name) {
                out.extend_from_slice(format!("Host: {}\r\n", target.authority).as_bytes());
                continue;
            }
        }
        if replaced(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !saw_host && head.version == 1 && !opts.set.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(format!("Host: {}\r\n", target.authority).as_bytes());
    }
    for (name, value) in opts.set.iter().chain(std::iter::once(&opts.mark)) {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&raw[head.head_len..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RewriteOptions {
        RewriteOptions {
            keep_host: false,
            mark: ("X-Capture-Replay".into(), "1".into()),
            set: vec![("Authorization".into(), "Bearer test".into())],
            drop: vec!["cookie".into()],
        }
    }

    #[test]
    fn rewrites_host_marks_and_swaps_credentials_keeping_the_body() {
        let raw = b"POST /a?b=1 HTTP/1.1\r\nHost: prod.example\r\nCookie: s=1\r\nAuthorization: Bearer prod\r\nContent-Length: 3\r\n\r\nabc";
        let head = parse_head(raw).unwrap();
        let target: TargetUrl = "http://127.0.0.1:8081".parse().unwrap();
        let out = String::from_utf8(rewrite(raw, &head, &target, &opts())).unwrap();
        assert_eq!(
            out,
            "POST /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nContent-Length: 3\r\nAuthorization: Bearer test\r\nX-Capture-Replay: 1\r\n\r\nabc"
        );
        let mut keep = opts();
        keep.keep_host = true;
        let out = String::from_utf8(rewrite(raw, &head, &target, &keep)).unwrap();
        assert!(out.contains("Host: prod.example\r\n"));
    }

    #[test]
    fn target_urls_are_validated() {
        let t: TargetUrl = "http://candidate:8080/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("candidate", 8080, "candidate:8080"));
        let t: TargetUrl = "http://[::1]:9000".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!("http://x".parse::<TargetUrl>().unwrap().port, 80);
        assert_eq!("https://x".parse::<TargetUrl>(), Err(TargetError::Scheme("https://x".into())));
        assert!("x:80".parse::<TargetUrl>().is_err());
        assert!("http://x:80/path".parse::<TargetUrl>().is_err());
    }

    #[test]
    fn broken_heads_are_errors() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost"), Err(RequestError::Incomplete));
        assert!(matches!(parse_head(b"\x16\x03\x01 nonsense\r\n\r\n"), Err(RequestError::Invalid(_))));
    }
}
