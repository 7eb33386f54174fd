//! Field-by-field JSON comparison and the `$.a.b[0]` path syntax.

use serde_json::Value;

use super::diff::{show, Difference};

/// One step in a JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
    /// `[*]` in an ignore pattern: any index.
    AnyIndex,
    /// `.*` in an ignore pattern: any key.
    AnyKey,
}

/// A parsed `ignore_fields` entry.
#[derive(Clone, Debug)]
pub(crate) struct Pattern(Vec<Seg>);

impl Pattern {
    /// Parses `$.meta.generated_at`, `$.items[*].id`, `$["odd key"]`.
    /// Returns `None` for anything else so a typo never ignores everything.
    pub(crate) fn parse(text: &str) -> Option<Pattern> {
        let mut rest = text.trim().strip_prefix('$')?;
        let mut segs = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if name.is_empty() {
                    return None;
                }
                segs.push(if name == "*" {
                    Seg::AnyKey
                } else {
                    Seg::Key(name.to_string())
                });
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']')?;
                let inner = &after[..end];
                segs.push(if inner == "*" {
                    Seg::AnyIndex
                } else if let Ok(i) = inner.parse() {
                    Seg::Index(i)
                } else if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
                    Seg::Key(serde_json::from_str(inner).ok()?)
                } else {
                    return None;
                });
                rest = &after[end + 1..];
            } else {
                return None;
            }
        }
        Some(Pattern(segs))
    }

    fn matches(&self, path: &[Seg]) -> bool {
        self.0.len() == path.len()
            && self.0.iter().zip(path).all(|(p, s)| match (p, s) {
                (Seg::AnyIndex, Seg::Index(_)) | (Seg::AnyKey, Seg::Key(_)) => true,
                _ => p == s,
            })
    }
}

/// Renders a path; keys that are not plain identifiers use `["..."]`.
fn render(path: &[Seg]) -> String {
    let mut out = String::from("$");
    for seg in path {
        match seg {
            Seg::Key(k) if is_plain(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Key(k) => {
                out.push('[');
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(']');
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::AnyIndex => out.push_str("[*]"),
            Seg::AnyKey => out.push_str(".*"),
        }
    }
    out
}

fn is_plain(key: &str) -> bool {
    !key.is_empty()
        && key != "*"
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$')
}

/// Replaces array indices with `[*]` so `$.items[3].price` and
/// `$.items[7].price` group together. Quoted keys are left alone.
pub(crate) fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.char_indices().peekable();
    let mut in_string = false;
    let mut escaped = false;
    while let Some((i, c)) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            continue;
        }
        if c == '[' {
            let rest = &path[i + 1..];
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 && rest[digits..].starts_with(']') {
                out.push_str("[*]");
                for _ in 0..=digits {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Numbers compare by value so `1` equals `1.0`; integers exactly when both
/// sides are integers so large ids don't collide through f64 rounding.
fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Compact JSON of a value, truncated for display.
fn compact(v: &Value) -> String {
    show(&serde_json::to_string(v).unwrap_or_default())
}

/// Appends one [`Difference::JsonField`] per differing leaf (or per subtree
/// missing on one side / of a different type).
pub(crate) fn diff_json(
    production: &Value,
    candidate: &Value,
    ignore: &[Pattern],
    out: &mut Vec<Difference>,
) {
    let mut path = Vec::new();
    walk(Some(production), Some(candidate), &mut path, ignore, out);
}

fn walk(
    p: Option<&Value>,
    c: Option<&Value>,
    path: &mut Vec<Seg>,
    ignore: &[Pattern],
    out: &mut Vec<Difference>,
) {
    if ignore.iter().any(|pat| pat.matches(path)) {
        return;
    }
    match (p, c) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            // serde_json's Map is sorted by key, so output order is stable.
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(Seg::Key(k.clone()));
                walk(a.get(k), b.get(k), path, ignore, out);
                path.pop();
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                path.push(Seg::Index(i));
                walk(a.get(i), b.get(i), path, ignore, out);
                path.pop();
            }
        }
        (Some(Value::Number(a)), Some(Value::Number(b))) if numbers_equal(a, b) => {}
        (Some(a), Some(b)) if a == b => {}
        (None, None) => {}
        _ => out.push(Difference::JsonField {
            path: render(path),
            production: p.map(compact),
            candidate: c.map(compact),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_parsing_and_matching() {
        let p = Pattern::parse("$.items[*].id").unwrap();
        let path = vec![
            Seg::Key("items".into()),
            Seg::Index(4),
            Seg::Key("id".into()),
        ];
        assert!(p.matches(&path));
        assert!(!Pattern::parse("$.items[3].id").unwrap().matches(&path));
        assert!(Pattern::parse("$.items[4].id").unwrap().matches(&path));
        assert!(Pattern::parse("$.*[*].id").unwrap().matches(&path));
        assert!(Pattern::parse("$[\"items\"][*][\"id\"]")
            .unwrap()
            .matches(&path));
        assert!(Pattern::parse("items.id").is_none());
        assert!(Pattern::parse("$..id").is_none());
        assert!(Pattern::parse("$.a[x]").is_none());
    }

    #[test]
    fn paths_render_and_normalise() {
        let path = vec![
            Seg::Key("items".into()),
            Seg::Index(12),
            Seg::Key("a b".into()),
        ];
        assert_eq!(render(&path), "$.items[12][\"a b\"]");
        assert_eq!(
            normalise_path("$.items[12].price[0]"),
            "$.items[*].price[*]"
        );
        assert_eq!(normalise_path("$[\"x[1]\"][2]"), "$[\"x[1]\"][*]");
    }
}
