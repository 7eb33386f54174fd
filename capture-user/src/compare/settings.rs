//! What is left out of a comparison, compiled once at start: a bad pattern is an
//! error for the command line to report, never a pattern that silently matches nothing.

use std::collections::HashSet;

use super::path::{PathError, PathPattern, Segment};

/// Headers that differ between any two servers or any two requests. content-length
/// is left out because length changes show up in the body.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-request-id",
    "x-correlation-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-amzn-trace-id",
    "age",
    "expires",
    "last-modified",
    "etag",
    "set-cookie",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

/// Largest decoded body compared (as the replayer keeps at most 64 MiB of a response).
pub const DECODED_BODY_LIMIT: usize = 64 << 20;

/// Compiled compare settings.
#[derive(Clone, Debug)]
pub struct CompareSettings {
    /// Lowercase header names never compared.
    ignore_headers: HashSet<String>,
    /// JSON fields never compared (nor anything below them).
    ignore_fields: Vec<PathPattern>,
    /// JSON arrays compared as multisets: element order does not matter.
    unordered: Vec<PathPattern>,
    /// Largest body after undoing Content-Encoding.
    pub decoded_body_limit: usize,
}

impl Default for CompareSettings {
    fn default() -> Self {
        CompareSettings {
            ignore_headers: DEFAULT_IGNORED_HEADERS.iter().map(|h| h.to_string()).collect(),
            ignore_fields: Vec::new(),
            unordered: Vec::new(),
            decoded_body_limit: DECODED_BODY_LIMIT,
        }
    }
}

impl CompareSettings {
    /// The defaults plus more ignored headers, ignored JSON fields (`$.meta.ts`,
    /// `$.items[*].id`) and order-insensitive arrays (`$.items`). A pattern that does
    /// not parse is an error naming it.
    pub fn new(ignore_headers: &[String], ignore_fields: &[String], unordered: &[String]) -> Result<CompareSettings, PathError> {
        let mut settings = CompareSettings::default();
        settings.ignore_headers.extend(ignore_headers.iter().map(|h| h.trim().to_ascii_lowercase()));
        settings.ignore_fields = ignore_fields.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
        settings.unordered = unordered.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
        Ok(settings)
    }

    /// The same from patterns already parsed (by the command line).
    pub fn with_patterns(ignore_headers: &[String], ignore_fields: Vec<PathPattern>, unordered: Vec<PathPattern>) -> CompareSettings {
        let mut settings = CompareSettings::default();
        settings.ignore_headers.extend(ignore_headers.iter().map(|h| h.trim().to_ascii_lowercase()));
        settings.ignore_fields = ignore_fields;
        settings.unordered = unordered;
        settings
    }

    pub fn ignores_header(&self, lowercase_name: &str) -> bool {
        self.ignore_headers.contains(lowercase_name)
    }

    pub fn ignores_field(&self, path: &[Segment]) -> bool {
        self.ignore_fields.iter().any(|p| p.matches(path))
    }

    pub fn is_unordered(&self, path: &[Segment]) -> bool {
        self.unordered.iter().any(|p| p.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_once_and_bad_patterns_are_errors() {
        let s = CompareSettings::new(&["X-Trace".into()], &["$.meta.ts".into()], &["$.items".into()]).unwrap();
        assert!(s.ignores_header("x-trace") && s.ignores_header("date") && !s.ignores_header("content-type"));
        assert!(s.ignores_field(&[Segment::Key("meta".into()), Segment::Key("ts".into())]));
        assert!(s.is_unordered(&[Segment::Key("items".into())]));
        let e = CompareSettings::new(&[], &["$.ok".into(), "meta.ts".into()], &[]).unwrap_err();
        assert_eq!(e.text, "meta.ts", "the bad pattern is named");
        assert!(CompareSettings::new(&[], &[], &["$.items[".into()]).is_err());
    }
}
