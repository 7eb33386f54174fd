//! Comparing two responses and Diffy-style noise filtering.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::json::{diff_json, normalise_path, Pattern};
use super::response::Response;

/// What is left out of the comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareConfig {
    /// Lowercase header names never compared.
    pub ignore_headers: Vec<String>,
    /// JSON field paths never compared, e.g. `$.meta.generated_at` or
    /// `$.items[*].id` (`[*]` matches any index, `.*` any key). A pattern
    /// also ignores everything below the field. Malformed patterns match nothing.
    pub ignore_fields: Vec<String>,
}

impl Default for CompareConfig {
    /// Headers that differ between any two servers or any two requests.
    /// content-length is left out because length changes show up in the body.
    fn default() -> Self {
        let ignore_headers = [
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
        CompareConfig {
            ignore_headers: ignore_headers.iter().map(|s| s.to_string()).collect(),
            ignore_fields: Vec::new(),
        }
    }
}

/// One way the candidate's response differs from production's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Difference {
    Status {
        production: u16,
        candidate: u16,
    },
    /// `None` when the header is absent on that side; repeated headers joined with ", ".
    Header {
        name: String,
        production: Option<String>,
        candidate: Option<String>,
    },
    /// JSON bodies: a field that differs, is missing on one side (`None`), or
    /// changed type. Values are compact JSON (strings quoted), truncated to
    /// about 200 characters. `path` like `$.user.name` or `$.items[2].price`.
    JsonField {
        path: String,
        production: Option<String>,
        candidate: Option<String>,
    },
    /// Text bodies: the first differing line (1-based); `None` when that side
    /// has fewer lines.
    TextLine {
        line: usize,
        production: Option<String>,
        candidate: Option<String>,
    },
    /// Other bodies: SHA-256 hex and lengths.
    BinaryBody {
        production_sha256: String,
        candidate_sha256: String,
        production_len: usize,
        candidate_len: usize,
    },
    /// A body that was cut (production's at capture, or the candidate's past the
    /// replayer's limit) differs within the first `compared_bytes` bytes, the part both
    /// sides have: at byte `first_difference` (or one side's body ends there).
    BodyPrefix {
        compared_bytes: usize,
        first_difference: usize,
    },
}

impl Difference {
    /// Stable key used to match the same difference between candidate and
    /// baseline, and to group by field: `status`, `header:content-type`,
    /// `json:$.items[*].price` (indices normalised), `body:text`, `body:binary`.
    pub fn key(&self) -> String {
        match self {
            Difference::Status { .. } => "status".to_string(),
            Difference::Header { name, .. } => format!("header:{name}"),
            Difference::JsonField { path, .. } => format!("json:{}", normalise_path(path)),
            Difference::TextLine { .. } => "body:text".to_string(),
            Difference::BinaryBody { .. } => "body:binary".to_string(),
            Difference::BodyPrefix { .. } => "body:prefix".to_string(),
        }
    }

    /// Production and candidate values as short display strings.
    pub fn values(&self) -> (String, String) {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(missing)".to_string());
        match self {
            Difference::Status {
                production,
                candidate,
            } => (production.to_string(), candidate.to_string()),
            Difference::Header {
                production,
                candidate,
                ..
            }
            | Difference::JsonField {
                production,
                candidate,
                ..
            } => (opt(production), opt(candidate)),
            Difference::TextLine {
                line,
                production,
                candidate,
            } => (
                format!("line {line}: {}", opt(production)),
                format!("line {line}: {}", opt(candidate)),
            ),
            Difference::BinaryBody {
                production_sha256,
                candidate_sha256,
                production_len,
                candidate_len,
            } => (
                format!(
                    "{production_len} bytes, sha256 {}",
                    &production_sha256[..12.min(production_sha256.len())]
                ),
                format!(
                    "{candidate_len} bytes, sha256 {}",
                    &candidate_sha256[..12.min(candidate_sha256.len())]
                ),
            ),
            Difference::BodyPrefix {
                compared_bytes,
                first_difference,
            } => (
                format!("first {compared_bytes} body bytes (cut)"),
                format!("differs at byte {first_difference}"),
            ),
        }
    }
}

/// Longest value kept in a difference, in characters.
const MAX_SHOWN: usize = 200;

/// Truncates `s` to [`MAX_SHOWN`] characters so one huge field can't bloat a report.
pub(crate) fn show(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// All differences between production and candidate: status, headers (sorted
/// by name), then the body compared by content type.
pub fn compare(
    production: &Response,
    candidate: &Response,
    config: &CompareConfig,
) -> Vec<Difference> {
    let mut out = Vec::new();
    if production.status != candidate.status {
        out.push(Difference::Status {
            production: production.status,
            candidate: candidate.status,
        });
    }
    compare_headers(production, candidate, config, &mut out);
    compare_bodies(production, candidate, config, &mut out);
    out
}

fn compare_headers(
    production: &Response,
    candidate: &Response,
    config: &CompareConfig,
    out: &mut Vec<Difference>,
) {
    let ignored: HashSet<String> = config
        .ignore_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    // Names as keys, values in wire order: repeated headers compare as a list.
    let collect = |r: &Response| {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &r.headers {
            let name = name.to_ascii_lowercase();
            if !ignored.contains(&name) {
                map.entry(name).or_default().push(value.clone());
            }
        }
        map
    };
    let p = collect(production);
    let c = collect(candidate);
    let mut names: Vec<&String> = p.keys().chain(c.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let pv = p.get(name).map(|v| v.join(", "));
        let cv = c.get(name).map(|v| v.join(", "));
        if pv != cv {
            out.push(Difference::Header {
                name: name.clone(),
                production: pv.as_deref().map(show),
                candidate: cv.as_deref().map(show),
            });
        }
    }
}

/// How a body is compared.
#[derive(Debug, PartialEq, Eq)]
enum BodyKind {
    Json,
    Text,
    Binary,
}

/// Chooses by production's content type (the candidate's when production has
/// none); a content-type change itself is reported as a header difference.
fn body_kind(production: &Response, candidate: &Response) -> BodyKind {
    let ct = production
        .header("content-type")
        .or_else(|| candidate.header("content-type"))
        .map(|v| v.to_ascii_lowercase());
    let Some(ct) = ct else {
        let utf8 = |b: &[u8]| std::str::from_utf8(b).is_ok();
        return if utf8(&production.body) && utf8(&candidate.body) {
            BodyKind::Text
        } else {
            BodyKind::Binary
        };
    };
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.contains("json") {
        BodyKind::Json
    } else if mime.starts_with("text/")
        || mime == "application/xml"
        || mime.ends_with("+xml")
        || mime == "application/x-www-form-urlencoded"
    {
        BodyKind::Text
    } else {
        BodyKind::Binary
    }
}

/// When a body was cut (either side's `body_complete` is false): how many body bytes
/// could be compared, the length of the shorter cut body. Nothing is known past it,
/// so such a comparison is never "equal", only "equal as far as it goes".
pub fn compared_body_bytes(production: &Response, candidate: &Response) -> Option<usize> {
    [production, candidate]
        .iter()
        .filter(|r| !r.body_complete)
        .map(|r| r.body.len())
        .min()
}

/// Compares the first `n` body bytes: the first offset where they differ, or where
/// one side ends before `n`.
fn prefix_difference(p: &[u8], c: &[u8], n: usize) -> Option<Difference> {
    let (p, c) = (&p[..p.len().min(n)], &c[..c.len().min(n)]);
    let at = p.iter().zip(c).position(|(a, b)| a != b).or_else(|| (p.len() != c.len()).then(|| p.len().min(c.len())))?;
    Some(Difference::BodyPrefix {
        compared_bytes: n,
        first_difference: at,
    })
}

fn compare_bodies(
    production: &Response,
    candidate: &Response,
    config: &CompareConfig,
    out: &mut Vec<Difference>,
) {
    let (p, c) = (&production.body, &candidate.body);
    if let Some(n) = compared_body_bytes(production, candidate) {
        out.extend(prefix_difference(p, c, n));
        return;
    }
    let mut kind = body_kind(production, candidate);
    if kind == BodyKind::Json {
        let parsed = (
            serde_json::from_slice::<serde_json::Value>(p),
            serde_json::from_slice::<serde_json::Value>(c),
        );
        if let (Ok(pj), Ok(cj)) = parsed {
            let patterns: Vec<Pattern> = config
                .ignore_fields
                .iter()
                .filter_map(|f| Pattern::parse(f))
                .collect();
            diff_json(&pj, &cj, &patterns, out);
            return;
        }
        // Invalid JSON on either side: fall back to a line diff if readable.
        let utf8 = std::str::from_utf8(p).is_ok() && std::str::from_utf8(c).is_ok();
        kind = if utf8 {
            BodyKind::Text
        } else {
            BodyKind::Binary
        };
    }
    if p == c {
        return;
    }
    match kind {
        BodyKind::Text => out.push(text_difference(
            &String::from_utf8_lossy(p),
            &String::from_utf8_lossy(c),
        )),
        _ => out.push(Difference::BinaryBody {
            production_sha256: sha256_hex(p),
            candidate_sha256: sha256_hex(c),
            production_len: p.len(),
            candidate_len: c.len(),
        }),
    }
}

/// The first differing line of two texts that are known to differ. Lines
/// are compared without their CR; only if that finds nothing (the texts differ
/// in line endings alone) are the raw lines compared.
fn text_difference(p: &str, c: &str) -> Difference {
    let found = first_line_difference(p, c, true).or_else(|| first_line_difference(p, c, false));
    let (line, production, candidate) = found.unwrap_or((1, None, None));
    Difference::TextLine {
        line,
        production,
        candidate,
    }
}

/// 1-based line number and both sides' text of the first differing line.
fn first_line_difference<'a>(
    p: &'a str,
    c: &'a str,
    strip_cr: bool,
) -> Option<(usize, Option<String>, Option<String>)> {
    let split = |s: &'a str| {
        s.split('\n').map(move |l| {
            if strip_cr {
                l.strip_suffix('\r').unwrap_or(l)
            } else {
                l
            }
        })
    };
    let (mut pl, mut cl) = (split(p), split(c));
    let mut line = 1;
    loop {
        match (pl.next(), cl.next()) {
            (None, None) => return None,
            (a, b) if a != b => return Some((line, a.map(show), b.map(show))),
            _ => line += 1,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Diffy's noise filter. `baseline` holds the differences between production
/// and a second production copy; a candidate difference whose key also shows
/// up there is nondeterminism, not a regression. Returns `(real, noise)`.
pub fn split_noise(
    candidate: Vec<Difference>,
    baseline: &[Difference],
) -> (Vec<Difference>, Vec<Difference>) {
    let noisy: HashSet<String> = baseline.iter().map(Difference::key).collect();
    candidate
        .into_iter()
        .partition(|d| !noisy.contains(&d.key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            body_complete: true,
        }
    }

    fn cut(mut r: Response) -> Response {
        r.body_complete = false;
        r
    }

    /// Issue 11, bug 1 ("false equal on cut messages"): a production response cut at
    /// capture was compared as if its prefix were the whole body and came out equal.
    #[test]
    fn false_equal_on_cut_messages() {
        let png = [("content-type", "image/png")];
        let production = cut(resp(200, &png, "abcdef"));
        // The candidate's body agrees on the captured prefix and differs after it.
        let candidate = resp(200, &png, "abcdefXYZ");
        assert_eq!(cmp(&production, &candidate), vec![]);
        assert_eq!(compared_body_bytes(&production, &candidate), Some(6), "equal only as far as it goes");
        assert_eq!(compared_body_bytes(&resp(200, &png, "a"), &resp(200, &png, "a")), None);
        // A difference inside the prefix is a real difference.
        let d = cmp(&production, &resp(200, &png, "abXdefXYZ"));
        assert_eq!(d, vec![Difference::BodyPrefix { compared_bytes: 6, first_difference: 2 }]);
        assert_eq!(d[0].key(), "body:prefix");
        // A candidate body shorter than the prefix differs where it ends.
        assert_eq!(
            cmp(&production, &resp(200, &png, "abc")),
            vec![Difference::BodyPrefix { compared_bytes: 6, first_difference: 3 }]
        );
        // Cut JSON is not parsed as JSON (it would not parse); its bytes are compared.
        let production = cut(json(r#"{"a":1,"b":"#));
        assert_eq!(cmp(&production, &json(r#"{"a":1,"b":2}"#)), vec![]);
        assert_eq!(compared_body_bytes(&production, &json("{}")), Some(11));
    }

    fn json(body: &str) -> Response {
        resp(
            200,
            &[("content-type", "application/json; charset=utf-8")],
            body,
        )
    }

    fn field(path: &str, p: Option<&str>, c: Option<&str>) -> Difference {
        Difference::JsonField {
            path: path.into(),
            production: p.map(String::from),
            candidate: c.map(String::from),
        }
    }

    fn cmp(p: &Response, c: &Response) -> Vec<Difference> {
        compare(p, c, &CompareConfig::default())
    }

    #[test]
    fn equal_responses_have_no_differences() {
        let a = json(r#"{"a":1,"b":[1,2,{"c":"x"}]}"#);
        assert_eq!(cmp(&a, &a.clone()), vec![]);
        let b = json(r#"{ "b": [1, 2, {"c": "x"}], "a": 1 }"#);
        assert_eq!(cmp(&a, &b), vec![]);
    }

    #[test]
    fn status_change() {
        let d = cmp(&resp(200, &[], ""), &resp(503, &[], ""));
        assert_eq!(
            d,
            vec![Difference::Status {
                production: 200,
                candidate: 503
            }]
        );
        assert_eq!(d[0].key(), "status");
    }

    #[test]
    fn header_change_ignores_date_and_server() {
        let p = resp(
            200,
            &[
                ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("server", "nginx"),
                ("cache-control", "max-age=60"),
                ("x-old", "1"),
            ],
            "",
        );
        let c = resp(
            200,
            &[
                ("date", "Tue, 02 Jan 2024 00:00:00 GMT"),
                ("server", "envoy"),
                ("cache-control", "no-store"),
                ("x-new", "1"),
            ],
            "",
        );
        let d = cmp(&p, &c);
        assert_eq!(
            d,
            vec![
                Difference::Header {
                    name: "cache-control".into(),
                    production: Some("max-age=60".into()),
                    candidate: Some("no-store".into()),
                },
                Difference::Header {
                    name: "x-new".into(),
                    production: None,
                    candidate: Some("1".into()),
                },
                Difference::Header {
                    name: "x-old".into(),
                    production: Some("1".into()),
                    candidate: None,
                },
            ]
        );
        assert_eq!(d[0].key(), "header:cache-control");
    }

    #[test]
    fn json_changed_nested_field() {
        let d = cmp(
            &json(r#"{"user":{"name":"Ann","age":3}}"#),
            &json(r#"{"user":{"name":"Bob","age":3}}"#),
        );
        assert_eq!(
            d,
            vec![field("$.user.name", Some("\"Ann\""), Some("\"Bob\""))]
        );
        assert_eq!(d[0].key(), "json:$.user.name");
    }

    #[test]
    fn json_missing_and_extra_fields() {
        let d = cmp(
            &json(r#"{"a":1,"b":{"x":[1]}}"#),
            &json(r#"{"a":1,"c":true}"#),
        );
        assert_eq!(
            d,
            vec![
                field("$.b", Some(r#"{"x":[1]}"#), None),
                field("$.c", None, Some("true")),
            ]
        );
    }

    #[test]
    fn json_type_change() {
        let d = cmp(&json(r#"{"id":1,"n":null}"#), &json(r#"{"id":"1","n":[]}"#));
        assert_eq!(
            d,
            vec![
                field("$.id", Some("1"), Some("\"1\"")),
                field("$.n", Some("null"), Some("[]")),
            ]
        );
    }

    #[test]
    fn json_array_element_change() {
        let d = cmp(
            &json(r#"{"items":[{"price":1},{"price":2},{"price":3}]}"#),
            &json(r#"{"items":[{"price":1},{"price":2},{"price":4},{"price":5}]}"#),
        );
        assert_eq!(
            d,
            vec![
                field("$.items[2].price", Some("3"), Some("4")),
                field("$.items[3]", None, Some(r#"{"price":5}"#)),
            ]
        );
        assert_eq!(d[0].key(), "json:$.items[*].price");
        assert_eq!(d[1].key(), "json:$.items[*]");
    }

    #[test]
    fn json_ignore_fields_with_wildcard() {
        let config = CompareConfig {
            ignore_fields: vec!["$.items[*].id".into(), "$.meta.generated_at".into()],
            ..CompareConfig::default()
        };
        let p = json(
            r#"{"meta":{"generated_at":1,"v":1},"items":[{"id":1,"n":"a"},{"id":2,"n":"b"}]}"#,
        );
        let c = json(
            r#"{"meta":{"generated_at":2,"v":1},"items":[{"id":7,"n":"a"},{"id":8,"n":"c"}]}"#,
        );
        assert_eq!(
            compare(&p, &c, &config),
            vec![field("$.items[1].n", Some("\"b\""), Some("\"c\""))]
        );
        // Without the config the ids and timestamp are reported.
        assert_eq!(cmp(&p, &c).len(), 4);
    }

    #[test]
    fn json_numbers_compare_by_value() {
        assert_eq!(
            cmp(
                &json(r#"{"a":1,"b":[2.50]}"#),
                &json(r#"{"a":1.0,"b":[2.5]}"#)
            ),
            vec![]
        );
        assert_eq!(cmp(&json("[1]"), &json("[1.5]")).len(), 1);
        // Large integers stay exact.
        assert_eq!(
            cmp(&json("9007199254740993"), &json("9007199254740992")).len(),
            1
        );
    }

    #[test]
    fn json_long_values_are_truncated() {
        let long = "x".repeat(1000);
        let d = cmp(
            &json(&format!(r#"{{"a":"{long}"}}"#)),
            &json(r#"{"a":"y"}"#),
        );
        let Difference::JsonField { production, .. } = &d[0] else {
            panic!("{d:?}")
        };
        assert!(production.as_ref().unwrap().chars().count() <= 201);
    }

    #[test]
    fn invalid_json_falls_back_to_text() {
        let d = cmp(&json(r#"{"a":1}"#), &json("<html>oops</html>"));
        assert_eq!(d[0].key(), "body:text");
    }

    #[test]
    fn text_line_diff_reports_right_line() {
        let html = [("content-type", "text/html")];
        let p = resp(
            200,
            &html,
            "<html>\r\n<h1>Hi</h1>\r\n<p>a</p>\r\n</html>\r\n",
        );
        let c = resp(
            200,
            &html,
            "<html>\r\n<h1>Hi</h1>\r\n<p>b</p>\r\n</html>\r\n",
        );
        assert_eq!(
            cmp(&p, &c),
            vec![Difference::TextLine {
                line: 3,
                production: Some("<p>a</p>".into()),
                candidate: Some("<p>b</p>".into()),
            }]
        );
        // No content type but UTF-8: still text; shorter side shows None.
        let d = cmp(&resp(200, &[], "a\nb"), &resp(200, &[], "a\nb\nc"));
        assert_eq!(
            d,
            vec![Difference::TextLine {
                line: 3,
                production: None,
                candidate: Some("c".into()),
            }]
        );
    }

    #[test]
    fn binary_bodies_compare_by_hash() {
        let png = [("content-type", "image/png")];
        let d = cmp(&resp(200, &png, "abc"), &resp(200, &png, "abcd"));
        assert_eq!(
            d,
            vec![Difference::BinaryBody {
                production_sha256:
                    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                candidate_sha256:
                    "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589".into(),
                production_len: 3,
                candidate_len: 4,
            }]
        );
        assert_eq!(d[0].key(), "body:binary");
        assert_eq!(
            cmp(&resp(200, &png, "abc"), &resp(200, &png, "abc")),
            vec![]
        );
        // Invalid UTF-8 without a content type is binary too.
        let mut p = resp(200, &[], "");
        p.body = vec![0xff, 0xfe];
        assert_eq!(cmp(&p, &resp(200, &[], "x"))[0].key(), "body:binary");
    }

    #[test]
    fn split_noise_uses_baseline_keys() {
        let candidate = vec![
            Difference::Status {
                production: 200,
                candidate: 500,
            },
            field("$.items[3].ts", Some("1"), Some("2")),
            field("$.user.name", Some("\"a\""), Some("\"b\"")),
        ];
        let baseline = vec![field("$.items[0].ts", Some("5"), Some("6"))];
        let (real, noise) = split_noise(candidate.clone(), &baseline);
        assert_eq!(real, vec![candidate[0].clone(), candidate[2].clone()]);
        assert_eq!(noise, vec![candidate[1].clone()]);
    }
}
