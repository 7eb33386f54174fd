//! Turning a captured request (parsed by [`crate::http::message`]) into the one
//! sent to a target: Host rewrite, marking header, header swaps. The body is
//! forwarded byte for byte.

use std::fmt;

use crate::http::message::Request;

/// A target base URL: `http://host[:port]` or `https://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// `https://`: requests go over TLS (rustls), with the host as SNI.
    pub tls: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// A scheme other than http and https.
    #[error("target {0:?}: only http:// and https:// targets are supported")]
    Scheme(String),
    /// No host, a path, or a bad port.
    #[error("target {0:?}: expected http://host[:port] or https://host[:port]")]
    Bad(String),
}

impl std::str::FromStr for TargetUrl {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, tls, default_port) = match (s.strip_prefix("http://"), s.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false, 80),
            (_, Some(rest)) => (rest, true, 443),
            _ => return Err(if s.contains("://") { TargetError::Scheme(s.into()) } else { TargetError::Bad(s.into()) }),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(TargetError::Bad(s.into()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // [v6]:port or host:port; a bare IPv6 without brackets is not accepted.
            Some((h, p)) if !h.ends_with(':') => (h, p.parse().map_err(|_| TargetError::Bad(s.into()))?),
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(TargetError::Bad(s.into()));
        }
        Ok(TargetUrl { host, port, authority: authority.to_string(), tls })
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", if self.tls { "https" } else { "http" }, self.authority)
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

/// Builds the request for `target` from a captured request: same method, target,
/// version and body; headers rewritten by `opts`. Returns the bytes to send (written
/// into one buffer: this runs once per request and target).
pub fn rewrite(req: &Request<'_>, target: &TargetUrl, opts: &RewriteOptions) -> Vec<u8> {
    let body = &req.raw[req.head.end..];
    let mut out = Vec::with_capacity(req.raw.len() + 64);
    for part in [req.method.as_bytes(), b" ", req.target.as_bytes(), b" HTTP/1.", if req.head.version == 0 { b"0" } else { b"1" }, b"\r\n"] {
        out.extend_from_slice(part);
    }
    let replaced = |name: &str| {
        name.eq_ignore_ascii_case(&opts.mark.0)
            || opts.drop.iter().any(|d| d.eq_ignore_ascii_case(name))
            || opts.set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut saw_host = false;
    for (name, value) in req.headers() {
        if name.eq_ignore_ascii_case("host") {
            saw_host = true;
            if !opts.keep_host && !replaced(name) {
                field(&mut out, b"Host", target.authority.as_bytes());
                continue;
            }
        }
        if replaced(name) {
            continue;
        }
        field(&mut out, name.as_bytes(), value);
    }
    if !saw_host && req.head.version == 1 && !opts.set.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        field(&mut out, b"Host", target.authority.as_bytes());
    }
    for (name, value) in opts.set.iter().chain(std::iter::once(&opts.mark)) {
        field(&mut out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Appends the header line `name: value`.
fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
        let req = crate::http::message::parse_request(raw).unwrap();
        let target: TargetUrl = "http://127.0.0.1:8081".parse().unwrap();
        let out = String::from_utf8(rewrite(&req, &target, &opts())).unwrap();
        assert_eq!(
            out,
            "POST /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nContent-Length: 3\r\nAuthorization: Bearer test\r\nX-Capture-Replay: 1\r\n\r\nabc"
        );
        let mut keep = opts();
        keep.keep_host = true;
        let out = String::from_utf8(rewrite(&req, &target, &keep)).unwrap();
        assert!(out.contains("Host: prod.example\r\n"));
    }

    #[test]
    fn target_urls_are_validated() {
        let t: TargetUrl = "http://candidate:8080/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("candidate", 8080, "candidate:8080"));
        let t: TargetUrl = "http://[::1]:9000".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!("http://x".parse::<TargetUrl>().unwrap().port, 80);
        let t: TargetUrl = "https://candidate.example".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls, t.to_string().as_str()), ("candidate.example", 443, true, "https://candidate.example"));
        assert!(!"http://x".parse::<TargetUrl>().unwrap().tls);
        assert_eq!("ftp://x".parse::<TargetUrl>(), Err(TargetError::Scheme("ftp://x".into())));
        assert!("x:80".parse::<TargetUrl>().is_err());
        assert!("http://x:80/path".parse::<TargetUrl>().is_err());
    }
}
