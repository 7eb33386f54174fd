//! Comparing two responses, typed differences graded by risk, and Diffy-style noise
//! filtering.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::json::diff_json;
use super::path::JsonPath;
use super::response::Response;
use super::risk::Risk;
use super::settings::CompareSettings;
use crate::content_encoding;

/// Where in the response a difference is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum Location {
    Status,
    Header { name: String },
    /// A JSON field (or element) that differs, is missing on one side, or changed type.
    JsonField { path: JsonPath },
    /// Text bodies: the first differing line (1-based).
    TextLine { line: usize },
    /// Other bodies, compared by SHA-256 (the values show length and hash).
    Body,
    /// A body that was cut (production's at capture, or the candidate's past the
    /// replayer's limit) differs within the first `compared_bytes` bytes, the part both
    /// sides have: at byte `first_difference` (or one side's body ends there).
    BodyPrefix { compared_bytes: usize, first_difference: usize },
    /// One side's body does not decode (its Content-Encoding); the value says why.
    BodyEncoding,
}

/// What kind of change it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only the candidate has it.
    Added,
    /// Only production has it.
    Removed,
    /// Both have it, with different values.
    Changed,
    /// A JSON value of another type (number → string, object → null, ...).
    TypeChanged,
    /// A status of another class (2xx → 5xx).
    ClassChanged,
}

impl Change {
    /// The risk of a change: see [`Risk`].
    pub fn risk(self) -> Risk {
        match self {
            Change::Removed | Change::TypeChanged | Change::ClassChanged => Risk::High,
            Change::Changed => Risk::Medium,
            Change::Added => Risk::Low,
        }
    }
}

/// One way the candidate's response differs from production's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    #[serde(flatten)]
    pub at: Location,
    pub change: Change,
    pub risk: Risk,
    /// Production's value for display (compact JSON, a header value, a line, ...),
    /// at most about 200 characters; `None` when production does not have it.
    pub production: Option<String>,
    pub candidate: Option<String>,
}

impl Difference {
    /// A difference graded by its change.
    pub fn new(at: Location, change: Change, production: Option<String>, candidate: Option<String>) -> Difference {
        Difference { at, change, risk: change.risk(), production, candidate }
    }

    /// Where it is, grouped: the same key for the same field in any request.
    pub fn key(&self) -> DiffKey {
        match &self.at {
            Location::Status => DiffKey::Status,
            Location::Header { name } => DiffKey::Header(name.clone()),
            Location::JsonField { path } => DiffKey::Json(path.grouped()),
            Location::TextLine { .. } => DiffKey::BodyText,
            Location::Body => DiffKey::BodyBinary,
            Location::BodyPrefix { .. } => DiffKey::BodyPrefix,
            Location::BodyEncoding => DiffKey::BodyEncoding,
        }
    }

    /// Where it is in this response, for display: `status`, `header content-type`,
    /// `$.items[2].price`, `body line 3`, ...
    pub fn label(&self) -> String {
        match &self.at {
            Location::Status => "status".to_string(),
            Location::Header { name } => format!("header {name}"),
            Location::JsonField { path } => path.to_string(),
            Location::TextLine { line } => format!("body line {line}"),
            Location::Body => "body (binary)".to_string(),
            Location::BodyPrefix { compared_bytes, first_difference } => {
                format!("body (cut: first {compared_bytes} bytes compared, differs at byte {first_difference})")
            }
            Location::BodyEncoding => "body (Content-Encoding)".to_string(),
        }
    }
}

/// Groups differences by field across requests, and matches a candidate difference
/// with the baseline's. Renders as `status`, `header:content-type`,
/// `json:$.items[*].price` (indices grouped), `body:text`, `body:binary`,
/// `body:prefix`, `body:encoding`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiffKey {
    Status,
    Header(String),
    Json(JsonPath),
    BodyText,
    BodyBinary,
    BodyPrefix,
    BodyEncoding,
}

impl fmt::Display for DiffKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffKey::Status => f.write_str("status"),
            DiffKey::Header(name) => write!(f, "header:{name}"),
            DiffKey::Json(path) => write!(f, "json:{path}"),
            DiffKey::BodyText => f.write_str("body:text"),
            DiffKey::BodyBinary => f.write_str("body:binary"),
            DiffKey::BodyPrefix => f.write_str("body:prefix"),
            DiffKey::BodyEncoding => f.write_str("body:encoding"),
        }
    }
}

impl FromStr for DiffKey {
    type Err = String;

    fn from_str(s: &str) -> Result<DiffKey, String> {
        Ok(match s {
            "status" => DiffKey::Status,
            "body:text" => DiffKey::BodyText,
            "body:binary" => DiffKey::BodyBinary,
            "body:prefix" => DiffKey::BodyPrefix,
            "body:encoding" => DiffKey::BodyEncoding,
            _ => match (s.strip_prefix("header:"), s.strip_prefix("json:")) {
                (Some(name), _) => DiffKey::Header(name.to_string()),
                (_, Some(path)) => DiffKey::Json(path.parse().map_err(|e| format!("{e}"))?),
                _ => return Err(format!("{s:?}: not a difference key")),
            },
        })
    }
}

impl Serialize for DiffKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DiffKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DiffKey, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
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

/// All differences between production and candidate: status, headers (sorted by
/// name), then the body (Content-Encoding undone) compared by content type.
pub fn compare(production: &Response, candidate: &Response, settings: &CompareSettings) -> Vec<Difference> {
    let mut out = Vec::new();
    if production.status != candidate.status {
        let change = if production.status / 100 != candidate.status / 100 { Change::ClassChanged } else { Change::Changed };
        out.push(Difference::new(Location::Status, change, Some(production.status.to_string()), Some(candidate.status.to_string())));
    }
    compare_headers(production, candidate, settings, &mut out);
    compare_bodies(production, candidate, settings, &mut out);
    out
}

fn compare_headers(production: &Response, candidate: &Response, settings: &CompareSettings, out: &mut Vec<Difference>) {
    let (p, c) = (header_fields(production, settings), header_fields(candidate, settings));
    let (mut p, mut c) = (&p[..], &c[..]);
    loop {
        let name = match (p.first(), c.first()) {
            (Some((a, _)), Some((b, _))) => a.min(b).to_string(),
            (Some((a, _)), None) | (None, Some((a, _))) => a.to_string(),
            (None, None) => return,
        };
        let ((pv, p_rest), (cv, c_rest)) = (values_of(p, &name), values_of(c, &name));
        (p, c) = (p_rest, c_rest);
        if pv.len() == cv.len() && pv.iter().zip(cv).all(|(a, b)| a.1 == b.1) {
            continue;
        }
        let joined = |values: &[HeaderField<'_>]| (!values.is_empty()).then(|| values.iter().map(|(_, v)| *v).collect::<Vec<_>>().join(", "));
        let (pv, cv) = (joined(pv), joined(cv));
        let change = match (&pv, &cv) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(_), Some(_)) => Change::Changed,
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
        };
        out.push(Difference::new(Location::Header { name }, change, pv.as_deref().map(show), cv.as_deref().map(show)));
    }
}

/// A header field compared: lowercase name, value.
type HeaderField<'r> = (std::borrow::Cow<'r, str>, &'r str);

/// `r`'s header fields not ignored, sorted by name and in wire order within a name (a
/// stable sort): a repeated header compares as its list of values. Borrowed: most
/// exchanges differ in no header, and then nothing is copied.
fn header_fields<'r>(r: &'r Response, settings: &CompareSettings) -> Vec<HeaderField<'r>> {
    let mut fields: Vec<HeaderField<'r>> = r
        .headers
        .iter()
        .map(|(name, value)| {
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) { name.to_ascii_lowercase().into() } else { std::borrow::Cow::Borrowed(name.as_str()) };
            (name, value.as_str())
        })
        .filter(|(name, _)| !settings.ignores_header(name))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

/// The fields named `name` at the start of sorted `fields`, and the fields after them.
fn values_of<'f, 'r>(fields: &'f [HeaderField<'r>], name: &str) -> (&'f [HeaderField<'r>], &'f [HeaderField<'r>]) {
    fields.split_at(fields.iter().take_while(|(f, _)| f == name).count())
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
fn body_kind(production: &Response, candidate: &Response, p: &[u8], c: &[u8]) -> BodyKind {
    let ct = production.header("content-type").or_else(|| candidate.header("content-type")).map(|v| v.to_ascii_lowercase());
    let Some(ct) = ct else {
        let utf8 = |b: &[u8]| std::str::from_utf8(b).is_ok();
        return if utf8(p) && utf8(c) { BodyKind::Text } else { BodyKind::Binary };
    };
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.contains("json") {
        BodyKind::Json
    } else if mime.starts_with("text/") || mime == "application/xml" || mime.ends_with("+xml") || mime == "application/x-www-form-urlencoded" {
        BodyKind::Text
    } else {
        BodyKind::Binary
    }
}

/// When a body was cut (either side's `body_complete` is false): how many body bytes
/// could be compared, the length of the shorter cut body. Nothing is known past it,
/// so such a comparison is never "equal", only "equal as far as it goes".
pub fn compared_body_bytes(production: &Response, candidate: &Response) -> Option<usize> {
    [production, candidate].iter().filter(|r| !r.body_complete).map(|r| r.body.len()).min()
}

/// Compares the first `n` body bytes: the first offset where they differ, or where
/// one side ends before `n`.
fn prefix_difference(p: &[u8], c: &[u8], n: usize) -> Option<Difference> {
    let (p, c) = (&p[..p.len().min(n)], &c[..c.len().min(n)]);
    let at = p.iter().zip(c).position(|(a, b)| a != b).or_else(|| (p.len() != c.len()).then(|| p.len().min(c.len())))?;
    Some(Difference::new(
        Location::BodyPrefix { compared_bytes: n, first_difference: at },
        Change::Changed,
        Some(format!("first {n} body bytes (cut)")),
        Some(format!("differs at byte {at}")),
    ))
}

fn compare_bodies(production: &Response, candidate: &Response, settings: &CompareSettings, out: &mut Vec<Difference>) {
    // A cut body is compared byte for byte as far as it goes: a cut compressed body
    // would not decode.
    if let Some(n) = compared_body_bytes(production, candidate) {
        out.extend(prefix_difference(&production.body, &candidate.body, n));
        return;
    }
    // The same bytes under the same Content-Encoding are the same body: nothing to
    // decode or parse (the common case of a replay).
    if production.body == candidate.body && production.header("content-encoding") == candidate.header("content-encoding") {
        return;
    }
    let (p, c) = match (decoded_body(production, settings), decoded_body(candidate, settings)) {
        (Ok(p), Ok(c)) => (p, c),
        // Neither side decodes: compare what was sent.
        (Err(_), Err(_)) => (production.body.as_slice().into(), candidate.body.as_slice().into()),
        (Ok(p), Err(e)) => {
            let shown = format!("{} bytes decoded", p.len());
            out.push(Difference::new(Location::BodyEncoding, Change::Removed, Some(shown), Some(show(&e.to_string()))));
            return;
        }
        (Err(e), Ok(c)) => {
            let shown = format!("{} bytes decoded", c.len());
            out.push(Difference::new(Location::BodyEncoding, Change::Added, Some(show(&e.to_string())), Some(shown)));
            return;
        }
    };
    let (p, c) = (&*p, &*c);
    let mut kind = body_kind(production, candidate, p, c);
    if kind == BodyKind::Json {
        let parsed = (serde_json::from_slice::<serde_json::Value>(p), serde_json::from_slice::<serde_json::Value>(c));
        if let (Ok(pj), Ok(cj)) = parsed {
            diff_json(&pj, &cj, settings, out);
            return;
        }
        // Invalid JSON on either side: fall back to a line diff if readable.
        let utf8 = std::str::from_utf8(p).is_ok() && std::str::from_utf8(c).is_ok();
        kind = if utf8 { BodyKind::Text } else { BodyKind::Binary };
    }
    if p == c {
        return;
    }
    match kind {
        BodyKind::Text => out.push(text_difference(&String::from_utf8_lossy(p), &String::from_utf8_lossy(c))),
        _ => {
            let shown = |b: &[u8]| Some(format!("{} bytes, sha256 {}", b.len(), &sha256_hex(b)[..12]));
            out.push(Difference::new(Location::Body, Change::Changed, shown(p), shown(c)));
        }
    }
}

/// The body with its Content-Encoding undone.
fn decoded_body<'a>(r: &'a Response, settings: &CompareSettings) -> Result<std::borrow::Cow<'a, [u8]>, content_encoding::DecodeError> {
    content_encoding::decode(r.header("content-encoding").as_deref(), &r.body, settings.decoded_body_limit)
}

/// The first differing line of two texts that are known to differ. Lines
/// are compared without their CR; only if that finds nothing (the texts differ
/// in line endings alone) are the raw lines compared.
fn text_difference(p: &str, c: &str) -> Difference {
    let found = first_line_difference(p, c, true).or_else(|| first_line_difference(p, c, false));
    let (line, production, candidate) = found.unwrap_or((1, None, None));
    let change = match (&production, &candidate) {
        (None, Some(_)) => Change::Added,
        (Some(_), None) => Change::Removed,
        _ => Change::Changed,
    };
    Difference::new(Location::TextLine { line }, change, production, candidate)
}

/// 1-based line number and both sides' text of the first differing line.
fn first_line_difference<'a>(p: &'a str, c: &'a str, strip_cr: bool) -> Option<(usize, Option<String>, Option<String>)> {
    let split = |s: &'a str| s.split('\n').map(move |l| if strip_cr { l.strip_suffix('\r').unwrap_or(l) } else { l });
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
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Diffy's noise filter. `baseline` holds the differences between production
/// and a second production copy; a candidate difference whose key also shows
/// up there is nondeterminism, not a regression. Returns `(real, noise)`.
pub fn split_noise(candidate: Vec<Difference>, baseline: &[Difference]) -> (Vec<Difference>, Vec<Difference>) {
    let noisy: HashSet<DiffKey> = baseline.iter().map(Difference::key).collect();
    candidate.into_iter().partition(|d| !noisy.contains(&d.key()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::path::Segment;

    fn resp(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.to_vec(),
            body_complete: true,
        }
    }

    fn cut(mut r: Response) -> Response {
        r.body_complete = false;
        r
    }

    fn json(body: &str) -> Response {
        resp(200, &[("content-type", "application/json; charset=utf-8")], body.as_bytes())
    }

    fn field(path: &str, change: Change, p: Option<&str>, c: Option<&str>) -> Difference {
        Difference::new(Location::JsonField { path: path.parse().unwrap() }, change, p.map(String::from), c.map(String::from))
    }

    fn cmp(p: &Response, c: &Response) -> Vec<Difference> {
        compare(p, c, &CompareSettings::default())
    }

    fn with(ignore_fields: &[&str], unordered: &[&str]) -> CompareSettings {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        CompareSettings::new(&[], &s(ignore_fields), &s(unordered)).unwrap()
    }

    /// Issue 11, bug 1 ("false equal on cut messages"): a production response cut at
    /// capture was compared as if its prefix were the whole body and came out equal.
    #[test]
    fn false_equal_on_cut_messages() {
        let png = [("content-type", "image/png")];
        let production = cut(resp(200, &png, b"abcdef"));
        // The candidate's body agrees on the captured prefix and differs after it.
        let candidate = resp(200, &png, b"abcdefXYZ");
        assert_eq!(cmp(&production, &candidate), vec![]);
        assert_eq!(compared_body_bytes(&production, &candidate), Some(6), "equal only as far as it goes");
        assert_eq!(compared_body_bytes(&resp(200, &png, b"a"), &resp(200, &png, b"a")), None);
        // A difference inside the prefix is a real difference.
        let d = cmp(&production, &resp(200, &png, b"abXdefXYZ"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].at, Location::BodyPrefix { compared_bytes: 6, first_difference: 2 });
        assert_eq!((d[0].key().to_string(), d[0].risk), ("body:prefix".to_string(), Risk::Medium));
        // A candidate body shorter than the prefix differs where it ends.
        assert_eq!(cmp(&production, &resp(200, &png, b"abc"))[0].at, Location::BodyPrefix { compared_bytes: 6, first_difference: 3 });
        // Cut JSON is not parsed as JSON (it would not parse); its bytes are compared.
        let production = cut(json(r#"{"a":1,"b":"#));
        assert_eq!(cmp(&production, &json(r#"{"a":1,"b":2}"#)), vec![]);
        assert_eq!(compared_body_bytes(&production, &json("{}")), Some(11));
    }

    #[test]
    fn equal_responses_have_no_differences() {
        let a = json(r#"{"a":1,"b":[1,2,{"c":"x"}]}"#);
        assert_eq!(cmp(&a, &a.clone()), vec![]);
        let b = json(r#"{ "b": [1, 2, {"c": "x"}], "a": 1 }"#);
        assert_eq!(cmp(&a, &b), vec![]);
    }

    /// Issue 13: one change of each kind, each graded.
    #[test]
    fn risk_of_each_kind_of_change() {
        let risk = |p: &Response, c: &Response| cmp(p, c).iter().map(|d| (d.key().to_string(), d.change, d.risk)).collect::<Vec<_>>();
        assert_eq!(risk(&resp(200, &[], b""), &resp(503, &[], b"")), [("status".into(), Change::ClassChanged, Risk::High)]);
        assert_eq!(risk(&resp(200, &[], b""), &resp(201, &[], b"")), [("status".into(), Change::Changed, Risk::Medium)]);
        let base = json(r#"{"id":1,"name":"Ann","tags":["a"]}"#);
        assert_eq!(risk(&base, &json(r#"{"id":1,"tags":["a"]}"#)), [("json:$.name".into(), Change::Removed, Risk::High)]);
        assert_eq!(risk(&base, &json(r#"{"id":"1","name":"Ann","tags":["a"]}"#)), [("json:$.id".into(), Change::TypeChanged, Risk::High)]);
        assert_eq!(risk(&base, &json(r#"{"id":2,"name":"Ann","tags":["a"]}"#)), [("json:$.id".into(), Change::Changed, Risk::Medium)]);
        assert_eq!(risk(&base, &json(r#"{"id":1,"name":"Ann","tags":["a"],"new":true}"#)), [("json:$.new".into(), Change::Added, Risk::Low)]);
        assert_eq!(risk(&base, &json(r#"{"id":1,"name":"Ann","tags":["a","b"]}"#)), [("json:$.tags[*]".into(), Change::Added, Risk::Low)]);
        assert_eq!(risk(&base, &json(r#"{"id":1,"name":null,"tags":["a"]}"#)), [("json:$.name".into(), Change::TypeChanged, Risk::High)]);
        let h = |v: &[(&'static str, &'static str)]| resp(200, v, b"");
        assert_eq!(risk(&h(&[("x-a", "1")]), &h(&[])), [("header:x-a".into(), Change::Removed, Risk::High)]);
        assert_eq!(risk(&h(&[("x-a", "1")]), &h(&[("x-a", "2")])), [("header:x-a".into(), Change::Changed, Risk::Medium)]);
        assert_eq!(risk(&h(&[]), &h(&[("x-a", "2")])), [("header:x-a".into(), Change::Added, Risk::Low)]);
    }

    #[test]
    fn header_change_ignores_date_and_server() {
        let p = resp(200, &[("date", "Mon"), ("server", "nginx"), ("cache-control", "max-age=60"), ("x-old", "1")], b"");
        let c = resp(200, &[("date", "Tue"), ("server", "envoy"), ("cache-control", "no-store"), ("x-new", "1")], b"");
        let d = cmp(&p, &c);
        let header = |name: &str, change, p: Option<&str>, c: Option<&str>| {
            Difference::new(Location::Header { name: name.into() }, change, p.map(String::from), c.map(String::from))
        };
        assert_eq!(
            d,
            vec![
                header("cache-control", Change::Changed, Some("max-age=60"), Some("no-store")),
                header("x-new", Change::Added, None, Some("1")),
                header("x-old", Change::Removed, Some("1"), None),
            ]
        );
        assert_eq!(d[0].key().to_string(), "header:cache-control");
    }

    #[test]
    fn json_changes_with_paths() {
        assert_eq!(
            cmp(&json(r#"{"user":{"name":"Ann","age":3}}"#), &json(r#"{"user":{"name":"Bob","age":3}}"#)),
            vec![field("$.user.name", Change::Changed, Some("\"Ann\""), Some("\"Bob\""))]
        );
        assert_eq!(
            cmp(&json(r#"{"a":1,"b":{"x":[1]}}"#), &json(r#"{"a":1,"c":true}"#)),
            vec![field("$.b", Change::Removed, Some(r#"{"x":[1]}"#), None), field("$.c", Change::Added, None, Some("true"))]
        );
        let d = cmp(
            &json(r#"{"items":[{"price":1},{"price":2},{"price":3}]}"#),
            &json(r#"{"items":[{"price":1},{"price":2},{"price":4},{"price":5}]}"#),
        );
        assert_eq!(
            d,
            vec![field("$.items[2].price", Change::Changed, Some("3"), Some("4")), field("$.items[3]", Change::Added, None, Some(r#"{"price":5}"#))]
        );
        assert_eq!(d[0].key().to_string(), "json:$.items[*].price");
        assert_eq!(d[0].key(), DiffKey::Json(JsonPath(vec![Segment::Key("items".into()), Segment::AnyIndex, Segment::Key("price".into())])));
    }

    #[test]
    fn json_ignore_fields_with_wildcard() {
        let p = json(r#"{"meta":{"generated_at":1,"v":1},"items":[{"id":1,"n":"a"},{"id":2,"n":"b"}]}"#);
        let c = json(r#"{"meta":{"generated_at":2,"v":1},"items":[{"id":7,"n":"a"},{"id":8,"n":"c"}]}"#);
        assert_eq!(
            compare(&p, &c, &with(&["$.items[*].id", "$.meta.generated_at"], &[])),
            vec![field("$.items[1].n", Change::Changed, Some("\"b\""), Some("\"c\""))]
        );
        assert_eq!(cmp(&p, &c).len(), 4, "without the settings the ids and timestamp are reported");
    }

    /// Issue 13: `--unordered '$.items'` compares an array as a multiset.
    #[test]
    fn unordered_arrays_ignore_order_not_content() {
        let p = json(r#"{"items":[{"id":1,"n":"a"},{"id":2,"n":"b"},{"id":3,"n":"c"}],"order":[1,2]}"#);
        let shuffled = json(r#"{"items":[{"n":"c","id":3},{"id":1,"n":"a"},{"id":2,"n":"b"}],"order":[1,2]}"#);
        let unordered = with(&[], &["$.items"]);
        assert_eq!(compare(&p, &shuffled, &unordered), vec![]);
        assert_eq!(cmp(&p, &shuffled).len(), 6, "ordered by default");
        // Order still matters elsewhere.
        let reordered = json(r#"{"items":[{"id":1,"n":"a"},{"id":2,"n":"b"},{"id":3,"n":"c"}],"order":[2,1]}"#);
        assert_eq!(compare(&p, &reordered, &unordered).len(), 2);
        // A changed element is compared with the unmatched one, under production's index.
        let changed = json(r#"{"items":[{"id":3,"n":"c"},{"id":2,"n":"B"},{"id":1,"n":"a"}],"order":[1,2]}"#);
        assert_eq!(compare(&p, &changed, &unordered), vec![field("$.items[1].n", Change::Changed, Some("\"b\""), Some("\"B\""))]);
        // Missing and extra elements; duplicates count.
        let p = json(r#"{"items":[1,1,2]}"#);
        assert_eq!(compare(&p, &json(r#"{"items":[2,1]}"#), &unordered), vec![field("$.items[1]", Change::Removed, Some("1"), None)]);
        assert_eq!(compare(&p, &json(r#"{"items":[1.0,2,1,5]}"#), &unordered), vec![field("$.items[3]", Change::Added, None, Some("5"))]);
        // Wildcards in the pattern.
        let nested = with(&[], &["$.groups[*].tags"]);
        assert_eq!(compare(&json(r#"{"groups":[{"tags":["x","y"]}]}"#), &json(r#"{"groups":[{"tags":["y","x"]}]}"#), &nested), vec![]);
    }

    #[test]
    fn json_numbers_compare_by_value() {
        assert_eq!(cmp(&json(r#"{"a":1,"b":[2.50]}"#), &json(r#"{"a":1.0,"b":[2.5]}"#)), vec![]);
        assert_eq!(cmp(&json("[1]"), &json("[1.5]")).len(), 1);
        // Large integers stay exact.
        assert_eq!(cmp(&json("9007199254740993"), &json("9007199254740992")).len(), 1);
    }

    #[test]
    fn json_long_values_are_truncated() {
        let long = "x".repeat(1000);
        let d = cmp(&json(&format!(r#"{{"a":"{long}"}}"#)), &json(r#"{"a":"y"}"#));
        assert!(d[0].production.as_ref().unwrap().chars().count() <= 201);
    }

    #[test]
    fn invalid_json_falls_back_to_text() {
        let d = cmp(&json(r#"{"a":1}"#), &json("<html>oops</html>"));
        assert_eq!(d[0].key(), DiffKey::BodyText);
    }

    #[test]
    fn text_line_diff_reports_right_line() {
        let html = [("content-type", "text/html")];
        let p = resp(200, &html, b"<html>\r\n<h1>Hi</h1>\r\n<p>a</p>\r\n</html>\r\n");
        let c = resp(200, &html, b"<html>\r\n<h1>Hi</h1>\r\n<p>b</p>\r\n</html>\r\n");
        assert_eq!(cmp(&p, &c), vec![Difference::new(Location::TextLine { line: 3 }, Change::Changed, Some("<p>a</p>".into()), Some("<p>b</p>".into()))]);
        // No content type but UTF-8: still text; the shorter side shows None.
        let d = cmp(&resp(200, &[], b"a\nb"), &resp(200, &[], b"a\nb\nc"));
        assert_eq!(d, vec![Difference::new(Location::TextLine { line: 3 }, Change::Added, None, Some("c".into()))]);
    }

    #[test]
    fn binary_bodies_compare_by_hash() {
        let png = [("content-type", "image/png")];
        let d = cmp(&resp(200, &png, b"abc"), &resp(200, &png, b"abcd"));
        assert_eq!(
            d,
            vec![Difference::new(Location::Body, Change::Changed, Some("3 bytes, sha256 ba7816bf8f01".into()), Some("4 bytes, sha256 88d4266fd4e6".into()))]
        );
        assert_eq!(d[0].key(), DiffKey::BodyBinary);
        assert_eq!(cmp(&resp(200, &png, b"abc"), &resp(200, &png, b"abc")), vec![]);
        // Invalid UTF-8 without a content type is binary too.
        assert_eq!(cmp(&resp(200, &[], &[0xff, 0xfe]), &resp(200, &[], b"x"))[0].key(), DiffKey::BodyBinary);
    }

    /// Issue 13: bodies are compared after undoing Content-Encoding.
    #[test]
    fn content_encoding_is_undone_before_comparing() {
        use std::io::Write;
        let gzip = |data: &str| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data.as_bytes()).unwrap();
            e.finish().unwrap()
        };
        let brotli = |data: &str| {
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut data.as_bytes(), &mut out, &Default::default()).unwrap();
            out
        };
        let encoded = |coding: &'static str, body: Vec<u8>| resp(200, &[("content-type", "application/json"), ("content-encoding", coding)], &body);
        let body = r#"{"a":1,"b":"same"}"#;
        // The same document, gzip-compressed by production and br-compressed by the candidate.
        let d = cmp(&encoded("gzip", gzip(body)), &encoded("br", brotli(body)));
        assert_eq!(d.iter().map(|d| d.key().to_string()).collect::<Vec<_>>(), ["header:content-encoding"], "{d:?}");
        // A real change inside the compressed body is found as a JSON field.
        let d = cmp(&encoded("gzip", gzip(body)), &encoded("gzip", gzip(r#"{"a":2,"b":"same"}"#)));
        assert_eq!(d, vec![field("$.a", Change::Changed, Some("1"), Some("2"))]);
        // A candidate body that does not decode is high risk.
        let d = cmp(&encoded("gzip", gzip(body)), &encoded("gzip", b"garbage".to_vec()));
        assert_eq!((d[0].key(), d[0].risk), (DiffKey::BodyEncoding, Risk::High));
        assert!(d[0].candidate.as_ref().unwrap().contains("gzip body does not decode"), "{d:?}");
    }

    #[test]
    fn split_noise_uses_baseline_keys() {
        let status = Difference::new(Location::Status, Change::ClassChanged, Some("200".into()), Some("500".into()));
        let candidate = vec![status, field("$.items[3].ts", Change::Changed, Some("1"), Some("2")), field("$.user.name", Change::Changed, Some("\"a\""), Some("\"b\""))];
        let baseline = vec![field("$.items[0].ts", Change::Changed, Some("5"), Some("6"))];
        let (real, noise) = split_noise(candidate.clone(), &baseline);
        assert_eq!(real, vec![candidate[0].clone(), candidate[2].clone()]);
        assert_eq!(noise, vec![candidate[1].clone()]);
    }

    #[test]
    fn differences_and_keys_round_trip_through_json() {
        let d = vec![
            field("$.items[2][\"a b\"]", Change::TypeChanged, Some("1"), Some("\"1\"")),
            Difference::new(Location::BodyPrefix { compared_bytes: 6, first_difference: 2 }, Change::Changed, Some("x".into()), None),
            Difference::new(Location::Status, Change::ClassChanged, Some("200".into()), Some("500".into())),
        ];
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains(r#""at":"json_field","path":"$.items[2][\"a b\"]","change":"type_changed","risk":"high""#), "{text}");
        assert_eq!(serde_json::from_str::<Vec<Difference>>(&text).unwrap(), d);
        for key in ["status", "header:x-a", "json:$.items[*].id", "body:text", "body:binary", "body:prefix", "body:encoding"] {
            assert_eq!(key.parse::<DiffKey>().unwrap().to_string(), key);
        }
        assert!("json:items".parse::<DiffKey>().is_err());
    }
}
