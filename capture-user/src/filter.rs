//! Exchange filters, decided on the request head (GoReplay's `--http-allow-*` /
//! `--http-disallow-*`, with the differences README lists).
//!
//! - `--allow-method`: the method is one of these (exact, after upper-casing the flag).
//! - `--allow-path` / `--deny-path`: a regex on the request-target as sent (path and
//!   query). Kept if any allow pattern matches (when there are some) and no deny
//!   pattern matches.
//! - `--allow-host`: a regex on the Host header (absent: the authority of an
//!   absolute-form target, else empty). Kept if any matches.
//! - `--allow-header` / `--deny-header` `Name: regex`: every allow rule needs a field
//!   of that name whose value matches (an absent header fails it); a deny rule drops
//!   the exchange if any field of that name matches.
//!
//! Regexes are unanchored (`^...$` to anchor), as in GoReplay.

use regex::bytes::Regex;

use crate::http::view::RequestHead;

/// Why a request was filtered out, the first rule it failed (in the order above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterReason {
    Method,
    Path,
    Host,
    Header,
}

/// `Name: regex`.
#[derive(Clone, Debug)]
pub struct HeaderRule {
    /// Lower case.
    pub name: String,
    pub regex: Regex,
}

impl HeaderRule {
    /// Parses `Name: regex` (spaces around the regex are not part of it).
    pub fn parse(s: &str) -> Result<HeaderRule, String> {
        let Some((name, value)) = s.split_once(':') else {
            return Err(format!("{s:?}: expected `Name: regex`"));
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("{s:?}: {name:?} is not a header name (expected `Name: regex`)"));
        }
        Ok(HeaderRule { name: name.to_ascii_lowercase(), regex: parse_regex(value.trim())? })
    }

    fn matches_any(&self, headers: &[(&str, &[u8])]) -> bool {
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(&self.name) && self.regex.is_match(v))
    }
}

/// A regex flag value; the error names it and what is wrong.
pub fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| format!("{s:?} is not a valid regular expression: {e}"))
}

/// A method flag value: an HTTP token, upper-cased.
pub fn parse_method(s: &str) -> Result<String, String> {
    let m = s.trim();
    if m.is_empty() || !m.bytes().all(is_tchar) {
        return Err(format!("{s:?}: expected an HTTP method such as GET or POST"));
    }
    Ok(m.to_ascii_uppercase())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The filters of one agent. Empty lists mean "no rule".
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub allow_methods: Vec<String>,
    pub allow_paths: Vec<Regex>,
    pub deny_paths: Vec<Regex>,
    pub allow_hosts: Vec<Regex>,
    pub allow_headers: Vec<HeaderRule>,
    pub deny_headers: Vec<HeaderRule>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.allow_methods.is_empty()
            && self.allow_paths.is_empty()
            && self.deny_paths.is_empty()
            && self.allow_hosts.is_empty()
            && self.allow_headers.is_empty()
            && self.deny_headers.is_empty()
    }

    /// `Ok` if the exchange is kept, else the first rule it failed.
    pub fn check(&self, req: &RequestHead<'_>) -> Result<(), FilterReason> {
        if !self.allow_methods.is_empty() && !self.allow_methods.iter().any(|m| m == req.method) {
            return Err(FilterReason::Method);
        }
        let target = req.target.as_bytes();
        if !self.allow_paths.is_empty() && !self.allow_paths.iter().any(|r| r.is_match(target)) {
            return Err(FilterReason::Path);
        }
        if self.deny_paths.iter().any(|r| r.is_match(target)) {
            return Err(FilterReason::Path);
        }
        if self.allow_hosts.is_empty() && self.allow_headers.is_empty() && self.deny_headers.is_empty() {
            return Ok(());
        }
        // Header fields are parsed only when a rule needs them.
        let headers = req.headers();
        if !self.allow_hosts.is_empty() {
            let host = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map(|(_, v)| *v)
                .unwrap_or_else(|| absolute_authority(req.target));
            if !self.allow_hosts.iter().any(|r| r.is_match(host)) {
                return Err(FilterReason::Host);
            }
        }
        if !self.allow_headers.iter().all(|rule| rule.matches_any(&headers)) {
            return Err(FilterReason::Header);
        }
        if self.deny_headers.iter().any(|rule| rule.matches_any(&headers)) {
            return Err(FilterReason::Header);
        }
        Ok(())
    }
}

/// `host:port` of an absolute-form target (`http://host:port/path`), else empty.
fn absolute_authority(target: &str) -> &[u8] {
    let Some((_, rest)) = target.split_once("://") else { return b"" };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, target: &'a str, head: &'a [u8]) -> RequestHead<'a> {
        RequestHead { method, target, head }
    }

    const HEAD: &[u8] = b"GET /api/v1/users?id=3 HTTP/1.1\r\nHost: api.example.com:8080\r\nX-Tenant: blue\r\nX-Tenant: red\r\nUser-Agent: curl/8\r\n\r\n";

    fn filters() -> Filters {
        Filters::default()
    }

    #[test]
    fn no_rule_keeps_everything() {
        assert!(filters().is_empty());
        assert_eq!(filters().check(&req("DELETE", "/x", b"DELETE /x HTTP/1.1\r\n\r\n")), Ok(()));
    }

    #[test]
    fn methods_are_exact_and_flags_upper_cased() {
        let f = Filters { allow_methods: vec![parse_method("get").unwrap(), parse_method("HEAD").unwrap()], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Ok(()));
        assert_eq!(f.check(&req("POST", "/", HEAD)), Err(FilterReason::Method));
        // Methods are case-sensitive on the wire: a lower-case "get" is another method.
        assert_eq!(f.check(&req("get", "/", HEAD)), Err(FilterReason::Method));
        assert!(parse_method("GE T").is_err());
        assert!(parse_method("").is_err());
    }

    #[test]
    fn paths_allow_any_and_deny_any_on_the_target_with_its_query() {
        let f = Filters {
            allow_paths: vec![parse_regex("^/api/").unwrap(), parse_regex("^/static/").unwrap()],
            deny_paths: vec![parse_regex("^/api/internal").unwrap(), parse_regex(r"[?&]debug=1").unwrap()],
            ..filters()
        };
        assert_eq!(f.check(&req("GET", "/api/v1/users?id=3", HEAD)), Ok(()));
        assert_eq!(f.check(&req("GET", "/static/a.css", HEAD)), Ok(()));
        assert_eq!(f.check(&req("GET", "/health", HEAD)), Err(FilterReason::Path));
        assert_eq!(f.check(&req("GET", "/api/internal/x", HEAD)), Err(FilterReason::Path));
        assert_eq!(f.check(&req("GET", "/api/v1?debug=1", HEAD)), Err(FilterReason::Path));
        // Unanchored, as in GoReplay.
        let f = Filters { deny_paths: vec![parse_regex("health").unwrap()], ..filters() };
        assert_eq!(f.check(&req("GET", "/ready/healthz", HEAD)), Err(FilterReason::Path));
    }

    #[test]
    fn hosts_match_the_host_header_or_an_absolute_target() {
        let f = Filters { allow_hosts: vec![parse_regex(r"^api\.example\.com(:\d+)?$").unwrap()], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Ok(()));
        let other = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
        assert_eq!(f.check(&req("GET", "/", other)), Err(FilterReason::Host));
        let none = b"GET http://api.example.com/x HTTP/1.1\r\n\r\n";
        assert_eq!(f.check(&req("GET", "http://api.example.com/x", none)), Ok(()));
        let none = b"GET /x HTTP/1.0\r\n\r\n";
        assert_eq!(f.check(&req("GET", "/x", none)), Err(FilterReason::Host));
    }

    #[test]
    fn header_rules_need_a_matching_field_and_deny_on_any_match() {
        let rule = |s| HeaderRule::parse(s).unwrap();
        let f = Filters { allow_headers: vec![rule("x-tenant: ^red$")], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Ok(()), "the second X-Tenant field matches");
        let f = Filters { allow_headers: vec![rule("X-Tenant: ^red$"), rule("User-Agent: ^curl/")], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Ok(()));
        let f = Filters { allow_headers: vec![rule("X-Tenant: ^red$"), rule("User-Agent: ^wrk")], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Err(FilterReason::Header), "every allow rule must hold");
        // Unlike GoReplay, a missing header fails an allow rule.
        let f = Filters { allow_headers: vec![rule("Api-Version: ^1\\.")], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Err(FilterReason::Header));
        let f = Filters { deny_headers: vec![rule("X-Tenant: blue")], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Err(FilterReason::Header));
        let f = Filters { deny_headers: vec![rule("X-Other: .*")], ..filters() };
        assert_eq!(f.check(&req("GET", "/", HEAD)), Ok(()), "deny rules need the header");
    }

    #[test]
    fn bad_rules_name_the_value() {
        let e = parse_regex("a(b").unwrap_err();
        assert!(e.contains("\"a(b\""), "{e}");
        assert!(HeaderRule::parse("no colon").unwrap_err().contains("expected `Name: regex`"));
        assert!(HeaderRule::parse("Bad Name: x").is_err());
        assert!(HeaderRule::parse("X-A: (").unwrap_err().contains("\"(\""));
        assert_eq!(HeaderRule::parse("X-A:  ^v1$ ").unwrap().regex.as_str(), "^v1$");
    }

    #[test]
    fn the_first_failing_rule_is_the_reason() {
        let f = Filters {
            allow_methods: vec!["GET".into()],
            deny_paths: vec![parse_regex("^/health").unwrap()],
            ..filters()
        };
        assert_eq!(f.check(&req("POST", "/health", HEAD)), Err(FilterReason::Method));
        assert_eq!(f.check(&req("GET", "/health", HEAD)), Err(FilterReason::Path));
    }
}
