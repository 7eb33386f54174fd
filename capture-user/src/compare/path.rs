//! JSON field paths (`$.user.name`, `$.items[2].price`, `$["odd key"]`) and the
//! patterns users give for them (`$.items[*].id`, `$.*.ts`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One step of a concrete path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
    /// Any index: the grouped form of a path (see [`JsonPath::grouped`]).
    AnyIndex,
}

/// Where a value sits in a JSON document. Renders and parses as `$.a.b[0]["c d"]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JsonPath(pub Vec<Segment>);

impl JsonPath {
    /// The same path with array indices replaced by `[*]`, so `$.items[3].price` and
    /// `$.items[7].price` count as one field.
    pub fn grouped(&self) -> JsonPath {
        JsonPath(
            self.0
                .iter()
                .map(|s| match s {
                    Segment::Index(_) => Segment::AnyIndex,
                    other => other.clone(),
                })
                .collect(),
        )
    }
}

/// Why a path or pattern does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {why}; expected a JSON path like $.meta.ts, $.items[*].id or $[\"odd key\"]")]
pub struct PathError {
    pub text: String,
    pub why: &'static str,
}

/// One step of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternSegment {
    Key(String),
    Index(usize),
    /// `[*]`
    AnyIndex,
    /// `.*`
    AnyKey,
}

/// A path pattern from the command line: a path whose steps may be `[*]` (any index)
/// or `.*` (any key). Matches paths of exactly its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<PatternSegment>,
}

impl PathPattern {
    pub fn matches(&self, path: &[Segment]) -> bool {
        self.segments.len() == path.len()
            && self.segments.iter().zip(path).all(|(p, s)| match (p, s) {
                (PatternSegment::AnyIndex, Segment::Index(_) | Segment::AnyIndex) => true,
                (PatternSegment::AnyKey, Segment::Key(_)) => true,
                (PatternSegment::Key(a), Segment::Key(b)) => a == b,
                (PatternSegment::Index(a), Segment::Index(b)) => a == b,
                _ => false,
            })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for PathPattern {
    type Err = PathError;

    fn from_str(text: &str) -> Result<PathPattern, PathError> {
        let segments = parse(text, true)?;
        Ok(PathPattern { text: text.trim().to_string(), segments })
    }
}

impl FromStr for JsonPath {
    type Err = PathError;

    fn from_str(text: &str) -> Result<JsonPath, PathError> {
        let segments = parse(text, true)?
            .into_iter()
            .map(|s| match s {
                PatternSegment::Key(k) => Ok(Segment::Key(k)),
                PatternSegment::Index(i) => Ok(Segment::Index(i)),
                PatternSegment::AnyIndex => Ok(Segment::AnyIndex),
                PatternSegment::AnyKey => Err(PathError { text: text.to_string(), why: "`.*` is a pattern, not a path" }),
            })
            .collect::<Result<_, _>>()?;
        Ok(JsonPath(segments))
    }
}

/// Parses `$`, then `.name`, `.*`, `[n]`, `[*]` or `["quoted name"]` steps.
fn parse(text: &str, wildcards: bool) -> Result<Vec<PatternSegment>, PathError> {
    let err = |why| PathError { text: text.to_string(), why };
    let mut rest = text.trim().strip_prefix('$').ok_or_else(|| err("it must start with $"))?;
    let mut segments = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() {
                return Err(err("an empty name after `.`"));
            }
            segments.push(if name == "*" && wildcards { PatternSegment::AnyKey } else { PatternSegment::Key(name.to_string()) });
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let (segment, used) = bracket(after).ok_or_else(|| err("a `[` step must be [n], [*] or [\"name\"]"))?;
            segments.push(segment);
            rest = &after[used..];
        } else {
            return Err(err("steps are .name, [n], [*] or [\"name\"]"));
        }
    }
    Ok(segments)
}

/// The step inside `[...]` (after the `[`) and the bytes it used, `]` included.
fn bracket(after: &str) -> Option<(PatternSegment, usize)> {
    if let Some(quoted) = after.strip_prefix('"') {
        // A JSON string: find its closing quote, skipping escapes.
        let mut escaped = false;
        let close = quoted.char_indices().find(|&(_, c)| {
            let end = !escaped && c == '"';
            escaped = !escaped && c == '\\';
            end
        })?;
        let literal = &after[..close.0 + 2];
        let key: String = serde_json::from_str(literal).ok()?;
        after[literal.len()..].starts_with(']').then_some((PatternSegment::Key(key), literal.len() + 1))
    } else {
        let end = after.find(']')?;
        let inner = &after[..end];
        let segment = if inner == "*" { PatternSegment::AnyIndex } else { PatternSegment::Index(inner.parse().ok()?) };
        Some((segment, end + 1))
    }
}

fn is_plain(key: &str) -> bool {
    !key.is_empty() && key != "*" && key.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$')
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for segment in &self.0 {
            match segment {
                Segment::Key(k) if is_plain(k) => write!(f, ".{k}")?,
                Segment::Key(k) => write!(f, "[{}]", serde_json::to_string(k).unwrap_or_default())?,
                Segment::Index(i) => write!(f, "[{i}]")?,
                Segment::AnyIndex => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for JsonPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JsonPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonPath, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> JsonPath {
        text.parse().unwrap()
    }

    #[test]
    fn patterns_match_paths_of_their_length() {
        let p = path("$.items[4].id");
        assert!("$.items[*].id".parse::<PathPattern>().unwrap().matches(&p.0));
        assert!(!"$.items[3].id".parse::<PathPattern>().unwrap().matches(&p.0));
        assert!("$.items[4].id".parse::<PathPattern>().unwrap().matches(&p.0));
        assert!("$.*[*].id".parse::<PathPattern>().unwrap().matches(&p.0));
        assert!("$[\"items\"][*][\"id\"]".parse::<PathPattern>().unwrap().matches(&p.0));
        assert!(!"$.items".parse::<PathPattern>().unwrap().matches(&p.0));
        // A grouped path matches a pattern with [*] too.
        assert!("$.items[*].id".parse::<PathPattern>().unwrap().matches(&p.grouped().0));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in ["items.id", "$..id", "$.a[x]", "$[", "$.a[\"b\"", "$a", ""] {
            let e = bad.parse::<PathPattern>().unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains("expected a JSON path"), "{e}");
        }
        assert!("$.*".parse::<JsonPath>().is_err(), "a wildcard is no path");
    }

    #[test]
    fn paths_render_parse_and_group() {
        let p = JsonPath(vec![Segment::Key("items".into()), Segment::Index(12), Segment::Key("a b".into()), Segment::Key("*".into())]);
        assert_eq!(p.to_string(), "$.items[12][\"a b\"][\"*\"]");
        assert_eq!(path(&p.to_string()), p, "a rendered path parses back");
        assert_eq!(p.grouped().to_string(), "$.items[*][\"a b\"][\"*\"]");
        assert_eq!(path("$[\"x[1]\"][2]").grouped().to_string(), "$[\"x[1]\"][*]");
        assert_eq!(path("$[\"q\\\"]\"]").0, vec![Segment::Key("q\"]".into())]);
        assert_eq!(path("$").to_string(), "$");
    }
}
