//! Redaction: secrets in a record become keyed tokens before any output sees it.
//!
//! What is replaced: the values of sensitive header fields ([`DEFAULT_HEADERS`] plus
//! `--redact-header`, minus `--keep-header`), and of sensitive parameters and fields
//! ([`DEFAULT_FIELDS`] plus `--redact-query` / `--redact-form-field` /
//! `--redact-json-field`, minus `--keep-field`) in the request-target's query, in
//! `Referer` and `Location` URLs, in urlencoded form bodies and in JSON bodies.
//!
//! How: a value becomes `redacted-<32 hex digits>`, the first 128 bits of
//! HMAC-SHA256(key, value). Equal values give equal tokens, so sessions stay
//! correlatable across records; without the key a token reveals nothing and cannot be
//! checked against guesses. Cookie and Set-Cookie keep their cookie names (and
//! attributes), Authorization its scheme. Framing stays valid: when a body's length
//! changes its Content-Length is rewritten, and a chunked body is re-framed as one
//! chunk (extensions and trailers kept).
//!
//! Bodies are inspected by Content-Type (`application/json`, `*+json`,
//! `application/x-www-form-urlencoded`); compressed bodies (a Content-Encoding) are not
//! inspected and are counted.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::view::{head_spans, head_spans_into, HeadSpans};
use crate::record::Record;

/// Header fields redacted unless `--keep-header` names them.
pub const DEFAULT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "x-csrf-token",
    "x-xsrf-token",
];

/// Query parameters, form fields and JSON keys (at any depth) redacted unless
/// `--keep-field` names them.
pub const DEFAULT_FIELDS: &[&str] =
    &["password", "passwd", "client_secret", "access_token", "refresh_token", "id_token", "api_key", "apikey"];

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "redacted-";

/// JSON nesting followed at most; deeper values are not inspected (counted).
const MAX_JSON_DEPTH: usize = 128;

/// The HMAC key.
#[derive(Clone)]
pub struct RedactKey(Vec<u8>);

impl std::fmt::Debug for RedactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedactKey({} bytes)", self.0.len())
    }
}

impl RedactKey {
    /// A key of at least 16 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<RedactKey, String> {
        if bytes.len() < 16 {
            return Err(format!("the key has {} bytes, at least 16 are needed (e.g. `head -c 32 /dev/urandom > key`)", bytes.len()));
        }
        Ok(RedactKey(bytes))
    }

    /// The bytes of `path` (one trailing newline removed); at least 16 bytes.
    pub fn from_file(path: &Path) -> Result<RedactKey, String> {
        let mut bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read the key file: {e}", path.display()))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        RedactKey::new(bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// 32 random bytes from the kernel.
    pub fn random() -> RedactKey {
        let mut bytes = vec![0u8; 32];
        // SAFETY: writes at most bytes.len() bytes into the buffer.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr() as *mut libc::c_void, bytes.len(), 0) };
        assert_eq!(n, 32, "getrandom failed");
        RedactKey(bytes)
    }
}

/// One `--redact-json-field` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonField {
    /// A bare name: that key at any depth (case-insensitive).
    Name(String),
    /// `$.a.b[*].c`: exactly this path from the root.
    Path(Vec<PathSeg>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
    AnyIndex,
    AnyKey,
}

impl JsonField {
    /// `password` (any depth), or `$.user.password`, `$.items[*].token`, `$["odd key"]`,
    /// `$.*.secret`.
    pub fn parse(text: &str) -> Result<JsonField, String> {
        let bad = |why: &str| format!("{text:?}: {why} (expected a key name such as `password`, or a path such as `$.user.password` or `$.items[*].token`)");
        let text = text.trim();
        let Some(mut rest) = text.strip_prefix('$') else {
            if text.is_empty() {
                return Err(bad("empty"));
            }
            return Ok(JsonField::Name(text.to_string()));
        };
        let mut segs = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if name.is_empty() {
                    return Err(bad("empty key"));
                }
                segs.push(if name == "*" { PathSeg::AnyKey } else { PathSeg::Key(name.to_string()) });
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| bad("unclosed `[`"))?;
                let inner = &after[..end];
                segs.push(if inner == "*" {
                    PathSeg::AnyIndex
                } else if let Ok(i) = inner.parse() {
                    PathSeg::Index(i)
                } else if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
                    PathSeg::Key(serde_json::from_str(inner).map_err(|_| bad("bad quoted key"))?)
                } else {
                    return Err(bad("expected [N], [*] or [\"key\"]"));
                });
                rest = &after[end + 1..];
            } else {
                return Err(bad("unexpected text"));
            }
        }
        if segs.is_empty() {
            return Err(bad("the whole document cannot be redacted"));
        }
        Ok(JsonField::Path(segs))
    }

    fn matches(&self, path: &[Step<'_>]) -> bool {
        match self {
            JsonField::Name(n) => matches!(path.last(), Some(Step::Key(k)) if k.eq_ignore_ascii_case(n.as_bytes())),
            JsonField::Path(segs) => {
                segs.len() == path.len()
                    && segs.iter().zip(path).all(|(seg, step)| match (seg, step) {
                        (PathSeg::AnyKey, Step::Key(_)) | (PathSeg::AnyIndex, Step::Index(_)) => true,
                        (PathSeg::Key(a), Step::Key(b)) => a.as_bytes() == &b[..],
                        (PathSeg::Index(a), Step::Index(b)) => a == b,
                        _ => false,
                    })
            }
        }
    }
}

/// What is redacted, from the flags.
#[derive(Clone, Debug)]
pub struct RedactConfig {
    /// Lower case.
    pub headers: Vec<String>,
    /// Lower case.
    pub query_params: Vec<String>,
    /// Lower case.
    pub form_fields: Vec<String>,
    pub json_fields: Vec<JsonField>,
    pub key: RedactKey,
}

impl RedactConfig {
    /// The defaults plus what the flags add, minus what they keep.
    pub fn new(
        redact_headers: &[String],
        keep_headers: &[String],
        query: &[String],
        form: &[String],
        json: &[JsonField],
        keep_fields: &[String],
        key: RedactKey,
    ) -> RedactConfig {
        let lower = |v: &[String]| v.iter().map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>();
        let (keep_headers, keep_fields) = (lower(keep_headers), lower(keep_fields));
        let merge = |defaults: &[&str], extra: &[String], keep: &[String]| {
            let mut out: Vec<String> = defaults.iter().map(|s| s.to_string()).chain(lower(extra)).collect();
            out.retain(|s| !s.is_empty() && !keep.contains(s));
            out.sort();
            out.dedup();
            out
        };
        let mut json_fields: Vec<JsonField> = DEFAULT_FIELDS
            .iter()
            .filter(|f| !keep_fields.iter().any(|k| k == *f))
            .map(|f| JsonField::Name(f.to_string()))
            .collect();
        json_fields.extend(json.iter().cloned());
        RedactConfig {
            headers: merge(DEFAULT_HEADERS, redact_headers, &keep_headers),
            query_params: merge(DEFAULT_FIELDS, query, &keep_fields),
            form_fields: merge(DEFAULT_FIELDS, form, &keep_fields),
            json_fields,
            key,
        }
    }
}

/// Counters (summary line and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedactStats {
    /// Records with at least one value replaced.
    pub records: u64,
    /// Values replaced by tokens.
    pub values: u64,
    /// JSON or form bodies not inspected because they are compressed.
    pub bodies_encoded: u64,
    /// JSON bodies that were cut or invalid: values after that point were not found.
    pub json_incomplete: u64,
    /// Records whose head was cut (`--max-message-size` below the head length): the
    /// partial last line was removed.
    pub heads_cut: u64,
}

impl RedactStats {
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("redact_records", self.records),
            ("redact_values", self.values),
            ("redact_bodies_encoded", self.bodies_encoded),
            ("redact_json_incomplete", self.json_incomplete),
            ("redact_heads_cut", self.heads_cut),
        ]
    }
}

/// A replacement of `range` in some bytes.
type Edit = (Range<usize>, Vec<u8>);

/// Applies non-overlapping edits (any order) to `bytes`.
fn apply(bytes: &[u8], mut edits: Vec<Edit>) -> Vec<u8> {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(bytes.len() + edits.len() * 48);
    let mut pos = 0;
    for (range, with) in edits {
        out.extend_from_slice(&bytes[pos..range.start]);
        out.extend_from_slice(&with);
        pos = range.end;
    }
    out.extend_from_slice(&bytes[pos..]);
    out
}

/// Header names to redact, with a quick length test first (most fields of a head
/// have a length no sensitive name has).
struct HeaderNames {
    names: Vec<String>,
    /// Bit `n` set: some name has length `n` (names of 64 bytes or more set bit 63).
    lengths: u64,
}

impl HeaderNames {
    fn new(names: &[String]) -> Self {
        let lengths = names.iter().fold(0u64, |bits, n| bits | 1 << n.len().min(63));
        HeaderNames { names: names.to_vec(), lengths }
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.lengths & (1 << name.len().min(63)) != 0 && self.names.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
    }
}

pub struct Redactor {
    config: RedactConfig,
    headers: HeaderNames,
    mac: Hmac<Sha256>,
    /// Reused for every head.
    spans: HeadSpans,
    pub stats: RedactStats,
}

impl Redactor {
    pub fn new(config: RedactConfig) -> Redactor {
        let mac = Hmac::<Sha256>::new_from_slice(&config.key.0).expect("HMAC takes keys of any length");
        Redactor { headers: HeaderNames::new(&config.headers), config, mac, spans: HeadSpans::default(), stats: RedactStats::default() }
    }

    /// `redacted-` and the first 128 bits of HMAC-SHA256(key, value) in hex.
    pub fn token(&self, value: &[u8]) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.mac.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut out = Vec::with_capacity(TOKEN_PREFIX.len() + 32);
        out.extend_from_slice(TOKEN_PREFIX.as_bytes());
        for b in &digest[..16] {
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        }
        out
    }

    /// Redacts a record in place and flags it; its metadata's target too.
    pub fn redact(&mut self, record: &mut Record) {
        self.redact_framed(record, None);
    }

    /// Like [`Redactor::redact`], with the spans of the payload's head as the framer
    /// parsed them ([`crate::http::HttpMessage::head`]), so the head is not parsed again.
    pub fn redact_framed(&mut self, record: &mut Record, head: Option<&HeadSpans>) {
        let mut changed = false;
        if let Some(new) = self.redact_payload_framed(&record.payload, head) {
            changed = true;
            let delta = new.len() as i128 - record.payload.len() as i128;
            record.meta.original_len = (record.meta.original_len as i128 + delta).max(new.len() as i128) as u64;
            record.payload = Bytes::from(new);
        }
        if let Some(target) = record.meta.target.as_mut() {
            let mut edits = Vec::new();
            if let Some(q) = memchr::memchr(b'?', target.as_bytes()) {
                self.param_edits(target.as_bytes(), q + 1..target.len(), &self.config.query_params, false, &mut edits);
            }
            if !edits.is_empty() {
                changed = true;
                self.stats.values += edits.len() as u64;
                *target = String::from_utf8_lossy(&apply(target.as_bytes(), edits)).into_owned();
            }
        }
        if changed {
            record.meta.redacted = true;
            self.stats.records += 1;
        }
    }

    /// The payload with its secrets replaced, or `None` if nothing was replaced.
    pub fn redact_payload(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        self.redact_payload_framed(payload, None)
    }

    /// Like [`Redactor::redact_payload`]; `head`: the spans of the head at the start of
    /// `payload` when it is the message's only head (see [`crate::http::HttpMessage::head`]).
    pub fn redact_payload_framed(&mut self, payload: &[u8], head: Option<&HeadSpans>) -> Option<Vec<u8>> {
        let mut spans = std::mem::take(&mut self.spans);
        let out = self.redact_with(payload, &mut spans, head);
        self.spans = spans;
        out
    }

    fn redact_with(&mut self, payload: &[u8], parsed: &mut HeadSpans, framed: Option<&HeadSpans>) -> Option<Vec<u8>> {
        let mut edits = Vec::new();
        let mut pos = 0;
        // A head cut by the size cap is not whole in the payload: parse what is there.
        let mut framed = framed.filter(|f| f.len <= payload.len());
        loop {
            let spans: &HeadSpans = match framed.take() {
                Some(f) => f,
                None => {
                    if !head_spans_into(&payload[pos..], parsed) {
                        return self.redact_cut_head(payload, pos, edits);
                    }
                    parsed
                }
            };
            let head = &payload[pos..pos + spans.len];
            let response = head.starts_with(b"HTTP/");
            if !response {
                self.target_edits(head, spans, pos, &mut edits);
            }
            for field in &spans.headers {
                self.field_edits(head, field.name.clone(), field.value.clone(), pos, &mut edits);
            }
            let interim = response && head.get(9) == Some(&b'1') && !head[9..].starts_with(b"101");
            let head_start = pos;
            pos += spans.len;
            if !interim {
                self.body_edits(payload, head_start, spans, &mut edits);
                break;
            }
        }
        if edits.is_empty() {
            return None;
        }
        // Body edits are one replacement of the whole body; count values separately.
        Some(apply(payload, edits))
    }

    /// The record ends inside a head (cut at a tiny `--max-message-size`): redact the
    /// complete lines, drop the partial last one (it may hold half a secret).
    fn redact_cut_head(&mut self, payload: &[u8], pos: usize, mut edits: Vec<Edit>) -> Option<Vec<u8>> {
        let rest = &payload[pos..];
        let Some(last_lf) = rest.iter().rposition(|&b| b == b'\n') else {
            // Not even a start line: nothing that looks like a header.
            return if edits.is_empty() { None } else { Some(apply(payload, edits)) };
        };
        let mut closed = rest[..=last_lf].to_vec();
        closed.extend_from_slice(b"\r\n");
        if let Some(spans) = head_spans(&closed) {
            if !closed.starts_with(b"HTTP/") {
                self.target_edits(&closed, &spans, pos, &mut edits);
            }
            for field in &spans.headers {
                self.field_edits(&closed, field.name.clone(), field.value.clone(), pos, &mut edits);
            }
        } else {
            // Unparseable: keep only the start line.
            let first_lf = rest.iter().position(|&b| b == b'\n').unwrap_or(last_lf);
            edits.retain(|(r, _)| r.end <= pos + first_lf);
            edits.push((pos + first_lf + 1..payload.len(), Vec::new()));
            self.stats.heads_cut += 1;
            return Some(apply(payload, edits));
        }
        if last_lf + 1 < rest.len() {
            edits.push((pos + last_lf + 1..payload.len(), Vec::new()));
            self.stats.heads_cut += 1;
        }
        if edits.is_empty() {
            None
        } else {
            Some(apply(payload, edits))
        }
    }

    /// Query parameters of the request-target.
    fn target_edits(&mut self, head: &[u8], spans: &HeadSpans, base: usize, edits: &mut Vec<Edit>) {
        let line = &head[spans.start_line.clone()];
        let Some(sp1) = line.iter().position(|&b| b == b' ') else { return };
        let target_end = line.iter().rposition(|&b| b == b' ').filter(|&e| e > sp1).unwrap_or(line.len());
        let target = sp1 + 1..target_end;
        if let Some(q) = line[target.clone()].iter().position(|&b| b == b'?') {
            let mut local = Vec::new();
            self.param_edits(head, target.start + q + 1..target.end, &self.config.query_params, false, &mut local);
            self.stats.values += local.len() as u64;
            edits.extend(local.into_iter().map(|(r, t)| (r.start + base..r.end + base, t)));
        }
    }

    /// One header field of a head starting at `base` in the payload.
    fn field_edits(&mut self, head: &[u8], name: Range<usize>, value: Range<usize>, base: usize, edits: &mut Vec<Edit>) {
        let name = &head[name];
        let mut local: Vec<Edit> = Vec::new();
        if self.headers.contains(name) {
            let v = &head[value.clone()];
            if name.eq_ignore_ascii_case(b"cookie") {
                // `a=1; b=2`: every cookie value, names kept.
                let mut start = value.start;
                for item in v.split(|&b| b == b';') {
                    let end = start + item.len();
                    let lead = item.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
                    let value_start = match item.iter().position(|&b| b == b'=') {
                        Some(eq) => start + eq + 1,
                        None => start + lead,
                    };
                    if value_start < end {
                        local.push((value_start..end, self.token(&head[value_start..end])));
                    }
                    start = end + 1;
                }
            } else if name.eq_ignore_ascii_case(b"set-cookie") {
                // `name=value; Path=/; HttpOnly`: the value only.
                let pair_end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
                let value_start = v[..pair_end].iter().position(|&b| b == b'=').map_or(0, |eq| eq + 1);
                let (from, to) = (value.start + value_start, value.start + pair_end);
                let val = trim_end(&head[from..to]);
                if !val.is_empty() {
                    local.push((from..from + val.len(), self.token(val)));
                }
            } else if name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"proxy-authorization") {
                // `Scheme credentials`: the scheme stays readable.
                let from = match v.iter().position(|&b| b == b' ') {
                    Some(sp) => value.start + sp + v[sp..].iter().take_while(|&&b| b == b' ').count(),
                    None => value.start,
                };
                if from < value.end {
                    local.push((from..value.end, self.token(&head[from..value.end])));
                }
            } else if !v.is_empty() {
                local.push((value.clone(), self.token(v)));
            }
        } else if name.eq_ignore_ascii_case(b"referer") || name.eq_ignore_ascii_case(b"location") {
            if let Some(q) = head[value.clone()].iter().position(|&b| b == b'?') {
                let end = value.start + head[value.clone()].iter().position(|&b| b == b'#').unwrap_or(value.len());
                if value.start + q + 1 < end {
                    self.param_edits(head, value.start + q + 1..end, &self.config.query_params, false, &mut local);
                }
            }
        }
        self.stats.values += local.len() as u64;
        edits.extend(local.into_iter().map(|(r, t)| (r.start + base..r.end + base, t)));
    }

    /// Values of the named parameters in `name=value&...` at `range` of `bytes`
    /// (names compared percent-decoded, case-insensitive; values hashed decoded).
    fn param_edits(&self, bytes: &[u8], range: Range<usize>, names: &[String], plus_is_space: bool, edits: &mut Vec<Edit>) {
        if names.is_empty() {
            return;
        }
        let mut start = range.start;
        for pair in bytes[range.clone()].split(|&b| b == b'&') {
            let end = start + pair.len();
            if let Some(eq) = pair.iter().position(|&b| b == b'=') {
                let name = decode_component(&pair[..eq], plus_is_space);
                if names.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes())) && eq + 1 < pair.len() {
                    let value = decode_component(&pair[eq + 1..], plus_is_space);
                    edits.push((start + eq + 1..end, self.token(&value)));
                }
            }
            start = end + 1;
        }
    }

    /// The body after the final head at `head_start`: JSON and form fields, with
    /// Content-Length rewritten or the chunked body re-framed when its length changes.
    fn body_edits(&mut self, payload: &[u8], head_start: usize, spans: &HeadSpans, edits: &mut Vec<Edit>) {
        let body_start = head_start + spans.len;
        let body = &payload[body_start..];
        if body.is_empty() || (self.config.json_fields.is_empty() && self.config.form_fields.is_empty()) {
            return;
        }
        let head = &payload[head_start..body_start];
        let field = |name: &str| spans.named(head, name).next().map(|f| f.value.clone());
        let content_type = field("content-type").map(|r| media_type(&head[r])).unwrap_or_default();
        let is = |t: &str| content_type.eq_ignore_ascii_case(t.as_bytes());
        let json = is("application/json")
            || is("text/json")
            || content_type.len() >= 5 && content_type[content_type.len() - 5..].eq_ignore_ascii_case(b"+json");
        let form = is("application/x-www-form-urlencoded");
        let inspect_json = json && !self.config.json_fields.is_empty();
        let inspect_form = form && !self.config.form_fields.is_empty();
        if !inspect_json && !inspect_form {
            return;
        }
        if field("content-encoding").is_some_and(|r| !head[r].eq_ignore_ascii_case(b"identity")) {
            self.stats.bodies_encoded += 1;
            return;
        }
        let chunked = spans.named(head, "transfer-encoding").any(|f| {
            let v = &head[f.value.clone()];
            v.split(|&b| b == b',').next_back().is_some_and(|c| trim(c).eq_ignore_ascii_case(b"chunked"))
        });
        let (plain, tail): (Cow<[u8]>, Option<&[u8]>) = if chunked {
            let (data, tail) = dechunk(body);
            (Cow::Owned(data), tail)
        } else {
            (Cow::Borrowed(body), None)
        };
        let mut body_local = Vec::new();
        if json {
            let (found, complete) = json_values(&plain, &self.config.json_fields);
            if !complete {
                self.stats.json_incomplete += 1;
            }
            for (range, is_string) in found {
                let raw = &plain[range.clone()];
                let value: Cow<[u8]> = if is_string {
                    match serde_json::from_slice::<String>(raw) {
                        Ok(s) => Cow::Owned(s.into_bytes()),
                        Err(_) => Cow::Borrowed(&raw[1.min(raw.len())..]),
                    }
                } else {
                    Cow::Borrowed(raw)
                };
                let mut quoted = vec![b'"'];
                quoted.extend_from_slice(&self.token(&value));
                quoted.push(b'"');
                body_local.push((range, quoted));
            }
        } else {
            self.param_edits(&plain, 0..plain.len(), &self.config.form_fields, true, &mut body_local);
        }
        if body_local.is_empty() {
            return;
        }
        self.stats.values += body_local.len() as u64;
        let new_plain = apply(&plain, body_local);
        if chunked {
            let mut framed = format!("{:x}\r\n", new_plain.len()).into_bytes();
            framed.extend_from_slice(&new_plain);
            if let Some(tail) = tail {
                framed.extend_from_slice(b"\r\n");
                framed.extend_from_slice(tail);
            }
            if new_plain.is_empty() {
                framed.clear();
                framed.extend_from_slice(tail.unwrap_or(b""));
            }
            edits.push((body_start..payload.len(), framed));
        } else {
            edits.push((body_start..payload.len(), new_plain.clone()));
            if let Some(cl) = field("content-length") {
                if let Some(old) = std::str::from_utf8(&head[cl.clone()]).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                    let new = old as i128 + new_plain.len() as i128 - plain.len() as i128;
                    edits.push((head_start + cl.start..head_start + cl.end, new.max(0).to_string().into_bytes()));
                }
            }
        }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    trim_end(s)
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `type/subtype` of a Content-Type value (compare it case-insensitively).
fn media_type(v: &[u8]) -> &[u8] {
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    trim(&v[..end])
}

/// Percent-decodes a query or form component (`+` is a space in forms).
fn decode_component(s: &[u8], plus_is_space: bool) -> Cow<'_, [u8]> {
    if plus_is_space && s.contains(&b'+') {
        let spaced: Vec<u8> = s.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        return Cow::Owned(percent_encoding::percent_decode(&spaced).collect());
    }
    percent_encoding::percent_decode(s).into()
}

/// Decodes a chunked body (leniently: a cut body gives the data so far). Returns the
/// data and, if the body is complete, its tail from the last-chunk line on (extensions,
/// trailers, final CRLF).
fn dechunk(body: &[u8]) -> (Vec<u8>, Option<&[u8]>) {
    let mut data = Vec::with_capacity(body.len());
    let mut pos = 0;
    loop {
        let Some(nl) = body[pos..].iter().position(|&b| b == b'\n') else { return (data, None) };
        let line = &body[pos..pos + nl];
        let size_text = line.split(|&b| b == b';').next().map(trim).unwrap_or(b"");
        let size_text = size_text.strip_suffix(b"\r").unwrap_or(size_text);
        let Some(size) = std::str::from_utf8(size_text).ok().and_then(|t| usize::from_str_radix(t.trim(), 16).ok()) else {
            return (data, None);
        };
        if size == 0 {
            return (data, Some(&body[pos..]));
        }
        let start = pos + nl + 1;
        let end = start.saturating_add(size).min(body.len());
        data.extend_from_slice(&body[start..end]);
        if end < start + size {
            return (data, None);
        }
        pos = end;
        // The CRLF after the data.
        for b in [b'\r', b'\n'] {
            if body.get(pos) == Some(&b) {
                pos += 1;
            }
        }
    }
}

/// One step of the path to a JSON value; keys borrow the document unless escaped.
#[derive(Clone, Debug)]
enum Step<'a> {
    Key(Cow<'a, [u8]>),
    Index(usize),
}

/// Spans of the values whose path matches a field (with whether each is a string),
/// in document order, and whether the whole document was walked. Lenient: a document
/// cut in the middle of a matching value gives a span to its end; an invalid or cut
/// document stops the walk there.
fn json_values(body: &[u8], fields: &[JsonField]) -> (Vec<(Range<usize>, bool)>, bool) {
    let mut w = JsonWalk { b: body, i: 0, fields, path: Vec::new(), found: Vec::new() };
    let complete = w.value(0).is_ok();
    (w.found, complete)
}

struct JsonWalk<'a> {
    b: &'a [u8],
    i: usize,
    fields: &'a [JsonField],
    path: Vec<Step<'a>>,
    found: Vec<(Range<usize>, bool)>,
}

/// The walk stopped: the document is cut, invalid or too deep.
struct Stop;

impl<'a> JsonWalk<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> Result<(), Stop> {
        self.ws();
        let c = self.peek().ok_or(Stop)?;
        if !self.path.is_empty() && self.fields.iter().any(|f| f.matches(&self.path)) {
            let start = self.i;
            let done = self.skip_value();
            self.found.push((start..self.i, c == b'"'));
            return done;
        }
        match c {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(|_| ()),
            _ => self.literal(),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Stop> {
        if depth > MAX_JSON_DEPTH {
            return Err(Stop);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(Stop);
            }
            let key = self.string()?;
            let key = decode_key(&self.b[key]);
            self.ws();
            if self.peek() != Some(b':') {
                return Err(Stop);
            }
            self.i += 1;
            self.path.push(Step::Key(key));
            let r = self.value(depth);
            self.path.pop();
            r?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Stop),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Stop> {
        if depth > MAX_JSON_DEPTH {
            return Err(Stop);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.path.push(Step::Index(index));
            let r = self.value(depth);
            self.path.pop();
            r?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Stop),
            }
            index += 1;
        }
    }

    /// A string at `i` (its opening quote); returns its span with the quotes. Cut: Stop
    /// with `i` at the end.
    fn string(&mut self) -> Result<Range<usize>, Stop> {
        let start = self.i;
        self.i += 1;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Ok(start..self.i);
                }
                _ => self.i += 1,
            }
        }
        self.i = self.b.len();
        Err(Stop)
    }

    /// A number or `true`/`false`/`null`: up to the next delimiter.
    fn literal(&mut self) -> Result<(), Stop> {
        let start = self.i;
        while self.i < self.b.len() && !matches!(self.b[self.i], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'{' | b'[' | b':') {
            self.i += 1;
        }
        if self.i == start {
            return Err(Stop);
        }
        Ok(())
    }

    /// Moves past one whole value (the end of the input if it is cut there).
    fn skip_value(&mut self) -> Result<(), Stop> {
        match self.peek().ok_or(Stop)? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut open = 0usize;
                while self.i < self.b.len() {
                    match self.b[self.i] {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => open += 1,
                        b'}' | b']' => {
                            open -= 1;
                            if open == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                Err(Stop)
            }
            _ => self.literal(),
        }
    }
}

/// A key from its quoted bytes: borrowed, or decoded when it has escapes.
fn decode_key(quoted: &[u8]) -> Cow<'_, [u8]> {
    if quoted.contains(&b'\\') {
        if let Ok(s) = serde_json::from_slice::<String>(quoted) {
            return Cow::Owned(s.into_bytes());
        }
    }
    Cow::Borrowed(&quoted[1..quoted.len().saturating_sub(1).max(1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(config(&[], &[], &[], &[], &[]))
    }

    fn config(headers: &[&str], keep: &[&str], query: &[&str], json: &[&str], keep_fields: &[&str]) -> RedactConfig {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let json: Vec<JsonField> = json.iter().map(|j| JsonField::parse(j).unwrap()).collect();
        RedactConfig::new(&s(headers), &s(keep), &s(query), &[], &json, &s(keep_fields), RedactKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap())
    }

    fn tok(r: &Redactor, v: &str) -> String {
        String::from_utf8(r.token(v.as_bytes())).unwrap()
    }

    fn redact(r: &mut Redactor, payload: &str) -> String {
        String::from_utf8(r.redact_payload(payload.as_bytes()).unwrap_or_else(|| payload.as_bytes().to_vec())).unwrap()
    }

    /// The body after the head, and the Content-Length the head declares.
    fn body_and_length(msg: &str) -> (&str, Option<usize>) {
        let (head, body) = msg.split_once("\r\n\r\n").unwrap();
        let cl = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map(|v| v.parse().unwrap());
        (body, cl)
    }

    #[test]
    fn tokens_are_hmac_sha256_of_the_value() {
        let r = redactor();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        mac.update(b"s3cret");
        let want: String = mac.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(tok(&r, "s3cret"), format!("redacted-{want}"));
        assert_ne!(tok(&r, "s3cret"), tok(&r, "s3cret2"));
        let other = Redactor::new(RedactConfig { key: RedactKey::new(b"another key of 16+ bytes".to_vec()).unwrap(), ..config(&[], &[], &[], &[], &[]) });
        assert_ne!(tok(&r, "s3cret"), tok(&other, "s3cret"), "the key decides the token");
    }

    #[test]
    fn default_headers_keep_names_schemes_and_cookie_attributes() {
        let mut r = redactor();
        let req = "GET /a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc.def\r\nCookie: sid=S1; theme=dark;flag\r\nX-Api-Key: K1\r\nAccept: */*\r\n\r\n";
        let out = redact(&mut r, req);
        let want = format!(
            "GET /a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nCookie: sid={}; theme={};{}\r\nX-Api-Key: {}\r\nAccept: */*\r\n\r\n",
            tok(&r, "abc.def"), tok(&r, "S1"), tok(&r, "dark"), tok(&r, "flag"), tok(&r, "K1")
        );
        assert_eq!(out, want);
        let resp = "HTTP/1.1 200 OK\r\nSet-Cookie: sid=S1; Path=/; HttpOnly\r\nContent-Length: 0\r\n\r\n";
        let out = redact(&mut r, resp);
        assert_eq!(out, format!("HTTP/1.1 200 OK\r\nSet-Cookie: sid={}; Path=/; HttpOnly\r\nContent-Length: 0\r\n\r\n", tok(&r, "S1")));
        assert_eq!(r.stats.values, 6);
    }

    #[test]
    fn keep_header_and_redact_header_change_the_list() {
        let mut r = Redactor::new(config(&["X-Session"], &["cookie"], &[], &[], &[]));
        let out = redact(&mut r, "GET / HTTP/1.1\r\nCookie: a=1\r\nx-session: zz\r\n\r\n");
        assert_eq!(out, format!("GET / HTTP/1.1\r\nCookie: a=1\r\nx-session: {}\r\n\r\n", tok(&r, "zz")));
    }

    #[test]
    fn query_parameters_in_the_target_referer_and_location() {
        let mut r = Redactor::new(config(&[], &[], &["sig"], &[], &[]));
        let req = "GET /cb?code=1&access_token=T%2B1&SIG=x&empty= HTTP/1.1\r\nReferer: https://a/b?sig=y#frag\r\n\r\n";
        let out = redact(&mut r, req);
        assert_eq!(
            out,
            format!(
                "GET /cb?code=1&access_token={}&SIG={}&empty= HTTP/1.1\r\nReferer: https://a/b?sig={}#frag\r\n\r\n",
                tok(&r, "T+1"), tok(&r, "x"), tok(&r, "y")
            )
        );
        let resp = "HTTP/1.1 302 Found\r\nLocation: /home?access_token=T%2B1\r\n\r\n";
        assert_eq!(redact(&mut r, resp), format!("HTTP/1.1 302 Found\r\nLocation: /home?access_token={}\r\n\r\n", tok(&r, "T+1")));
    }

    #[test]
    fn json_bodies_get_tokens_and_a_new_content_length() {
        let mut r = Redactor::new(config(&[], &[], &[], &["$.card.number"], &[]));
        let body = r#"{"user":"bob","password":"p\u0077!","card":{"number":4111,"cvc":"1"},"items":[{"Password":"p2"}]}"#;
        let req = format!("POST /login HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let out = redact(&mut r, &req);
        let (got, cl) = body_and_length(&out);
        let want = format!(
            r#"{{"user":"bob","password":"{}","card":{{"number":"{}","cvc":"1"}},"items":[{{"Password":"{}"}}]}}"#,
            tok(&r, "pw!"), tok(&r, "4111"), tok(&r, "p2")
        );
        assert_eq!(got, want);
        assert_eq!(cl, Some(got.len()), "Content-Length follows the body");
        assert!(serde_json::from_str::<serde_json::Value>(got).is_ok());
    }

    #[test]
    fn cut_json_still_hides_a_value_that_runs_to_the_end() {
        let mut r = redactor();
        let req = "POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n{\"a\":[1,2],\"password\":\"abcdefgh";
        let out = redact(&mut r, req);
        assert!(!out.contains("abcdefgh"), "{out}");
        assert!(out.ends_with(&format!("\"password\":\"{}\"", tok(&r, "abcdefgh"))), "{out}");
        assert_eq!(r.stats.json_incomplete, 1);
        let (_, cl) = body_and_length(&out);
        assert_eq!(cl, Some(9999 + tok(&r, "abcdefgh").len() + 2 - 9));
    }

    #[test]
    fn chunked_bodies_are_reframed_as_one_chunk_with_their_trailers() {
        let mut r = redactor();
        let req = "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n\
                   6\r\nuser=b\r\n12;ext=1\r\nob&password=a+b%21\r\n0\r\nX-Trailer: t\r\n\r\n";
        let out = redact(&mut r, req);
        let new_body = format!("user=bob&password={}", tok(&r, "a b!"));
        let want = format!(
            "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{new_body}\r\n0\r\nX-Trailer: t\r\n\r\n",
            new_body.len()
        );
        assert_eq!(out, want);
    }

    #[test]
    fn interim_responses_and_bodies_that_are_not_inspected() {
        let mut r = redactor();
        let resp = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\u{8b}xx";
        let out = redact(&mut r, resp);
        assert!(out.contains(&format!("Set-Cookie: a={}\r\n", tok(&r, "b"))));
        assert!(out.ends_with("Content-Length: 4\r\n\r\n\x1f\u{8b}xx"));
        assert_eq!(r.stats.bodies_encoded, 1);
        // Nothing to redact: no new payload at all.
        assert!(r.redact_payload(b"GET /x?page=2 HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
        let text = b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\npassword=x";
        assert!(r.redact_payload(text).is_none());
    }

    #[test]
    fn a_head_cut_short_loses_its_partial_last_line() {
        let mut r = redactor();
        let out = redact(&mut r, "GET / HTTP/1.1\r\nCookie: sid=S1\r\nAuthorization: Bearer half");
        assert_eq!(out, format!("GET / HTTP/1.1\r\nCookie: sid={}\r\n", tok(&r, "S1")));
        assert_eq!(r.stats.heads_cut, 1);
    }

    #[test]
    fn json_field_flags_parse_or_name_the_bad_value() {
        assert_eq!(JsonField::parse("password").unwrap(), JsonField::Name("password".into()));
        assert_eq!(
            JsonField::parse("$.a[*][\"b c\"][2].*").unwrap(),
            JsonField::Path(vec![PathSeg::Key("a".into()), PathSeg::AnyIndex, PathSeg::Key("b c".into()), PathSeg::Index(2), PathSeg::AnyKey])
        );
        for bad in ["$", "$.", "$.a[", "$a", "$[x]", ""] {
            let e = JsonField::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn key_files_need_sixteen_bytes() {
        let dir = std::env::temp_dir().join(format!("capture-redact-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (short, good) = (dir.join("short"), dir.join("good"));
        std::fs::write(&short, "too short\n").unwrap();
        std::fs::write(&good, "0123456789abcdef\n").unwrap();
        assert!(RedactKey::from_file(&short).unwrap_err().contains("at least 16"));
        assert!(RedactKey::from_file(&dir.join("missing")).unwrap_err().contains("missing"));
        assert_eq!(RedactKey::from_file(&good).unwrap().0, b"0123456789abcdef");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_are_flagged_and_their_target_redacted() {
        use crate::connections::ConnectionInfo;
        use crate::flow::FlowKey;
        use crate::http::{HttpMessage, MessageKind};
        use crate::record::RecordContext;
        let payload = "GET /x?access_token=T HTTP/1.1\r\nHost: h\r\n\r\n";
        let msg = HttpMessage {
            kind: MessageKind::Request,
            exchange: 0,
            paired: true,
            bytes: Bytes::from(payload),
            original_len: payload.len() as u64,
            truncated: false,
            ambiguous: None,
            start_ns: 1,
            end_ns: 2,
            request_start_ns: None,
            request_end_ns: None,
            method: Some("GET".into()),
            target: Some("/x?access_token=T".into()),
            status: None,
            head: None,
        };
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        let conn = ConnectionInfo { id: 1, flow: FlowKey::new(ip, 1, ip, 80), ifindex: 1, opened_ns: 0, saw_syn: true, tls: false };
        let mut record = Record::from_message(msg, &conn, &RecordContext::new("n".into()));
        let mut r = redactor();
        r.redact(&mut record);
        let t = tok(&r, "T");
        assert!(record.meta.redacted);
        assert_eq!(record.meta.target.as_deref(), Some(format!("/x?access_token={t}").as_str()));
        assert_eq!(record.meta.original_len, record.payload.len() as u64);
        assert!(record.header_line().contains(" redacted=1"));
        assert_eq!((r.stats.records, r.stats.values), (1, 2));
    }

    /// Frames `requests` then `responses` on one connection (cut at `max_message_bytes`).
    fn framed(requests: &[u8], responses: &[u8], max_message_bytes: usize) -> Vec<crate::http::HttpMessage> {
        use crate::flow::Direction;
        use crate::http::{HttpConfig, HttpConnection, HttpStats};
        let mut conn = HttpConnection::new(HttpConfig { max_message_bytes, ..HttpConfig::default() });
        let (mut stats, mut out) = (HttpStats::default(), Vec::new());
        conn.on_data(Direction::ClientToServer, requests, 1, &mut stats, &mut out);
        conn.on_data(Direction::ServerToClient, responses, 2, &mut stats, &mut out);
        conn.on_close(3, &mut stats, &mut out);
        out
    }

    #[test]
    fn framer_spans_redact_like_parsing_again() {
        let requests = concat!(
            "GET /a?password=p1&x=1&access_token=t%201 HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=2\r\nCookie: c=3\r\n",
            "Authorization: Bearer  abc\r\nReferer: http://r/?api_key=k#frag\r\nX-Api-Key:\r\nx-api-key: v2\r\n\r\n",
            "POST /f HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 27\r\n\r\n",
            "password=p+2&user=u&apikey=",
            "POST /j HTTP/1.1\r\nContent-Type: application/vnd.x+json; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n",
            "1a;ext=1\r\n{\"a\":{\"password\":\"s\"},\"b\"\r\n3\r\n:[]\r\n1\r\n}\r\n0\r\nTrailer: 1\r\n\r\n",
            "\r\nGET /lead?passwd=z HTTP/1.1\r\nCookie: z=9\r\n\r\n",
            "PUT /bare HTTP/1.1\nCookie: q=1\nContent-Length: 0\n\n",
        );
        let responses = concat!(
            "HTTP/1.1 200 OK\r\nSet-Cookie: s=v; Path=/\r\nSet-Cookie: t=w\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: /next?refresh_token=r&ok=1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"id_token\":\"abcde\"}",
            "HTTP/1.1 200 OK\r\nSet-Cookie: u=1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nSet-Cookie: last=1\r\n\r\n",
        );
        for max in [1_000_000, 60, 25, 8] {
            let msgs = framed(requests.as_bytes(), responses.as_bytes(), max);
            assert_eq!(msgs.len(), 10, "cap {max}");
            let (mut with, mut without) = (redactor(), redactor());
            for m in &msgs {
                if let Some(head) = &m.head {
                    // The framer's spans are the ones parsing the message again gives.
                    if head.len <= m.bytes.len() {
                        assert_eq!(Some(head), crate::http::view::head_spans(&m.bytes).as_ref(), "cap {max}");
                    }
                }
                assert_eq!(with.redact_payload_framed(&m.bytes, m.head.as_ref()), without.redact_payload(&m.bytes), "cap {max}");
            }
            assert_eq!(with.stats, without.stats);
            if max == 1_000_000 {
                assert!(with.stats.values >= 14, "{:?}", with.stats);
            }
        }
        // Spans are handed on only for a message that is exactly one head and its body.
        let msgs = framed(requests.as_bytes(), responses.as_bytes(), 1_000_000);
        let single: Vec<bool> = msgs.iter().map(|m| m.head.is_some()).collect();
        assert_eq!(single, [true, true, true, false, true, true, true, false, true, true]);
    }
}
