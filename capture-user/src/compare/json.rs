//! Field-by-field JSON comparison: numbers by value, arrays in order or (for the
//! paths the settings name) as multisets.

use std::collections::HashMap;

use serde_json::Value;

use super::diff::{show, Change, Difference, Location};
use super::path::{JsonPath, Segment};
use super::settings::CompareSettings;

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

/// Appends one [`Location::JsonField`] difference per differing leaf (or per subtree
/// missing on one side / of a different type).
pub(crate) fn diff_json(production: &Value, candidate: &Value, settings: &CompareSettings, out: &mut Vec<Difference>) {
    let mut path = Vec::new();
    walk(Some(production), Some(candidate), &mut path, settings, out);
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn walk(p: Option<&Value>, c: Option<&Value>, path: &mut Vec<Segment>, settings: &CompareSettings, out: &mut Vec<Difference>) {
    if settings.ignores_field(path) {
        return;
    }
    let change = match (p, c) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            // serde_json's Map is sorted by key, so output order is stable.
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(Segment::Key(k.clone()));
                walk(a.get(k), b.get(k), path, settings, out);
                path.pop();
            }
            return;
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if settings.is_unordered(path) => {
            walk_unordered(a, b, path, settings, out);
            return;
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                path.push(Segment::Index(i));
                walk(a.get(i), b.get(i), path, settings, out);
                path.pop();
            }
            return;
        }
        (Some(Value::Number(a)), Some(Value::Number(b))) if numbers_equal(a, b) => return,
        (Some(a), Some(b)) if a == b => return,
        (None, None) => return,
        (Some(a), Some(b)) if same_type(a, b) => Change::Changed,
        (Some(_), Some(_)) => Change::TypeChanged,
        (None, Some(_)) => Change::Added,
        (Some(_), None) => Change::Removed,
    };
    out.push(Difference::new(Location::JsonField { path: JsonPath(path.clone()) }, change, p.map(compact), c.map(compact)));
}

/// Arrays as multisets: equal elements match whatever their positions; the unmatched
/// ones are compared pairwise in order (under production's index), and the rest are
/// removed (production's index) or added (the candidate's index).
fn walk_unordered(a: &[Value], b: &[Value], path: &mut Vec<Segment>, settings: &CompareSettings, out: &mut Vec<Difference>) {
    let mut free: HashMap<String, Vec<usize>> = HashMap::new();
    for (j, v) in b.iter().enumerate().rev() {
        free.entry(canonical(v)).or_default().push(j);
    }
    let mut unmatched_a = Vec::new();
    for (i, v) in a.iter().enumerate() {
        if free.get_mut(&canonical(v)).and_then(Vec::pop).is_none() {
            unmatched_a.push(i);
        }
    }
    let mut unmatched_b: Vec<usize> = free.into_values().flatten().collect();
    unmatched_b.sort_unstable();
    for k in 0..unmatched_a.len().max(unmatched_b.len()) {
        let (i, j) = (unmatched_a.get(k), unmatched_b.get(k));
        path.push(Segment::Index(*i.or(j).expect("one side has an element")));
        walk(i.map(|&i| &a[i]), j.map(|&j| &b[j]), path, settings, out);
        path.pop();
    }
}

/// A text equal for values that compare equal: object keys sorted (serde_json's map
/// is), numbers by value (`1` and `1.0` alike).
fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => out.push_str(&(f as i64).to_string()),
            (_, _, Some(f)) => out.push_str(&format!("{f:?}")),
            _ => out.push_str(&n.to_string()),
        },
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_agree_with_equality() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(canonical(&v(r#"{"b":[1.0,2.5],"a":null}"#)), canonical(&v(r#"{"a":null,"b":[1,2.50]}"#)));
        assert_ne!(canonical(&v("[1,2]")), canonical(&v("[2,1]")));
        assert_ne!(canonical(&v(r#""1""#)), canonical(&v("1")));
    }
}
