//! The plain-text summary for the terminal: totals, risk, reasons, errors, then
//! differences by endpoint and by field, and latency percentiles per endpoint.

use std::fmt::Write as _;

use super::latency::LatencySummary;
use super::view::{pct, ReportView};

/// Milliseconds for display: "-" when unknown.
pub(super) fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

pub fn render(v: &ReportView) -> String {
    let mut out = String::new();
    let t = &v.totals;
    let _ = writeln!(out, "{}", v.title);
    if !v.targets.is_empty() {
        let _ = writeln!(out, "candidate: {}", v.targets.join(", "));
    }
    let _ = writeln!(
        out,
        "replayed {}  equal {}  different {} ({:.1}%)  partly compared {}  not compared {}  errors {}  skipped {}",
        t.replayed,
        t.equal,
        t.different,
        pct(t.different, t.replayed),
        t.partial,
        t.not_compared,
        t.errors,
        t.skipped
    );
    if t.different > 0 {
        let _ = writeln!(out, "  risk of the differences: high {}  medium {}  low {}", v.risk.high, v.risk.medium, v.risk.low);
    }
    for error in &v.run_errors {
        let _ = writeln!(out, "  RUN ERROR: {error}");
    }
    if t.noise_only > 0 {
        let _ = writeln!(out, "  {} equal only after removing noise", t.noise_only);
    }
    if t.unverified > 0 {
        let _ = writeln!(out, "  {} different without a noise check: the baseline failed for them", t.unverified);
    }
    if let Some(min) = v.partial_min_bytes {
        let _ = writeln!(
            out,
            "  partly compared {}: a body was cut (at capture or past the replayer's limit); equal in the first {min}+ body bytes, not comparable past them",
            t.partial
        );
    }
    for (reason, n) in &v.not_compared {
        let _ = writeln!(out, "  not compared {n}: {reason}");
    }
    for (reason, n) in &v.skipped {
        let _ = writeln!(out, "  skipped {n}: {reason}");
    }
    for e in &v.errors {
        let _ = writeln!(out, "  error {}: {} {}: {} ({})", e.count, e.role.as_str(), e.target, e.kind, e.example);
    }
    for t in &v.per_target {
        let _ = writeln!(out, "  {} {}: {} request(s), {} error(s)", t.role.as_str(), t.target, t.requests, t.errors);
    }
    if let Some(k) = &v.kafka {
        let _ = writeln!(out, "  kafka {}: {} record(s) consumed in {} partition(s), {} more than once", k.topic, k.records(), k.partitions.len(), k.duplicate_records);
    }
    if !v.counters.is_empty() {
        let counters: Vec<String> = v.counters.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "  counters {}", counters.join(" "));
    }

    let w = v.endpoints.iter().map(|e| e.endpoint.chars().count()).max().unwrap_or(0).max(8);
    if !v.endpoints.is_empty() {
        let _ = writeln!(out, "\nDifferences by endpoint");
        let _ = writeln!(
            out,
            "  {:<w$}  {:>8}  {:>8}  {:>9}  {:>6}  {:>12}  {:>6}  {:>14}",
            "ENDPOINT", "REQUESTS", "EQUAL", "DIFFERENT", "PARTLY", "NOT COMPARED", "ERRORS", "RISK H/M/L"
        );
        for e in &v.endpoints {
            let risk = format!("{}/{}/{}", e.risk.high, e.risk.medium, e.risk.low);
            let _ = writeln!(
                out,
                "  {:<w$}  {:>8}  {:>8}  {:>9}  {:>6}  {:>12}  {:>6}  {:>14}   {:.1}% different",
                e.endpoint, e.requests, e.equal, e.different, e.partial, e.not_compared, e.errors, risk, e.different_pct
            );
        }
    }

    if !v.fields.is_empty() {
        let fw = v.fields.iter().map(|f| f.key.to_string().chars().count()).max().unwrap_or(0).max(5);
        let _ = writeln!(out, "\nDifferences by field (requests; noise counted separately)");
        let _ = writeln!(out, "  {:<fw$}  {:>8}  {:>6}  {:>6}  {:>6}  {:>8}", "FIELD", "REAL", "HIGH", "MEDIUM", "LOW", "NOISE");
        for f in &v.fields {
            let _ = writeln!(out, "  {:<fw$}  {:>8}  {:>6}  {:>6}  {:>6}  {:>8}", f.key.to_string(), f.real, f.risk.high, f.risk.medium, f.risk.low, f.noise);
        }
        if v.fields_dropped > 0 {
            let _ = writeln!(out, "  ({} more field differences past the keys tracked)", v.fields_dropped);
        }
    }

    if !v.endpoints.is_empty() {
        let _ = writeln!(out, "\nLatency ms, production / candidate (percentiles within 1%)");
        let _ = writeln!(out, "  {:<w$}  {:>17}  {:>17}  {:>17}  {:>17}", "ENDPOINT", "P50", "P90", "P99", "MAX");
        let mut rows: Vec<(&str, &LatencySummary, &LatencySummary)> =
            v.endpoints.iter().map(|e| (e.endpoint.as_str(), &e.production_latency_ms, &e.candidate_latency_ms)).collect();
        if v.endpoints.len() > 1 {
            rows.push(("(all)", &v.latency_ms.production, &v.latency_ms.candidate));
        }
        for (name, p, c) in rows {
            let pair = |a: Option<f64>, b: Option<f64>| format!("{} / {}", ms(a), ms(b));
            let _ = writeln!(out, "  {:<w$}  {:>17}  {:>17}  {:>17}  {:>17}", name, pair(p.p50, c.p50), pair(p.p90, c.p90), pair(p.p99, c.p99), pair(p.max, c.max));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::view::tests::sample;
    use super::*;

    #[test]
    fn summary_lines() {
        let text = render(&sample().view());
        assert!(text.contains("replayed 5  equal 2  different 2 (40.0%)  partly compared 0  not compared 0  errors 1  skipped 3"), "{text}");
        assert!(text.contains("risk of the differences: high 1  medium 1  low 0"), "{text}");
        assert!(text.contains("GET /api/users/{id}"), "{text}");
        assert!(text.contains("json:$.items[*].name"), "{text}");
        assert!(text.contains("skipped 2: method DELETE not allowed"), "{text}");
        assert!(text.contains("error 1: candidate http://127.0.0.1:8081: connect (connect: connection refused)"), "{text}");
        assert!(text.contains("candidate http://127.0.0.1:8081: 5 request(s), 1 error(s)"), "{text}");
    }
}
