//! The HTML report: one self-contained page (inline CSS, charts as inline SVG, no
//! scripts), so it can be opened from a CI artifact or a mail attachment. The page is
//! the template `templates/report.html` (askama, which escapes every value); this
//! module only lays out the numbers: cards, rows, bar and histogram geometry.

use askama::Template;

use super::diff::Difference;
use super::latency::{LatencySummary, BUCKETS_MS};
use super::outcome::Outcome;
use super::risk::RiskCounts;
use super::terminal::ms;
use super::view::{pct, ReportView};

/// Examples shown per endpoint; the JSON report has up to 100.
const HTML_EXAMPLES: usize = 10;
/// Difference rows shown per example.
const HTML_ROWS: usize = 20;
/// Field keys in the bar chart.
const CHART_FIELDS: usize = 20;
/// Endpoints that get their own latency histogram.
const CHART_ENDPOINTS: usize = 8;

const PROD: &str = "#2563eb";
const CAND: &str = "#ea580c";

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    v: &'a ReportView,
    badge_bad: bool,
    badge: String,
    cards: Vec<Card>,
    endpoints: Vec<EndpointLine>,
    fields: FieldChart,
    overall: Histogram,
    endpoint_histograms: Vec<(String, Histogram)>,
    panels: Vec<Panel>,
    groups: Vec<ExampleGroup>,
}

struct Card {
    class: &'static str,
    label: &'static str,
    n: u64,
    extra: String,
}

struct EndpointLine {
    name: String,
    requests: u64,
    different: u64,
    different_pct: String,
    errors: u64,
    risk: RiskCounts,
    p50: (String, String, &'static str),
    p99: (String, String, &'static str),
    top_field: Option<(String, u64)>,
}

struct FieldChart {
    height: String,
    bars: Vec<FieldBar>,
    more: usize,
}

struct FieldBar {
    title: String,
    label: String,
    label_y: String,
    bar_y: String,
    bar_h: String,
    real_w: String,
    noise_x: String,
    noise_w: String,
    count_x: String,
    count: String,
}

struct Histogram {
    empty: bool,
    width: u32,
    height: u32,
    grid: Vec<(String, String, String)>,
    bars: Vec<Bar>,
    labels: Vec<(String, String, String)>,
    axis_y: String,
    right: String,
}

struct Bar {
    x: String,
    y: String,
    w: String,
    h: String,
    colour: &'static str,
    title: String,
}

struct Panel {
    title: &'static str,
    rows: Vec<(String, u64)>,
}

struct ExampleGroup {
    name: String,
    open: bool,
    different: u64,
    errors: u64,
    shown: usize,
    examples: Vec<ExampleLine>,
}

struct ExampleLine {
    method: String,
    path: String,
    production_status: String,
    candidate_status: String,
    status_changed: bool,
    latency: (String, String),
    id: String,
    risk: Option<&'static str>,
    error: Option<String>,
    cut: Option<u64>,
    baseline_error: Option<String>,
    head: bool,
    rows: Vec<DiffRow>,
    more_rows: usize,
    noise: Vec<DiffRow>,
}

struct DiffRow {
    label: String,
    risk: &'static str,
    production: Option<String>,
    candidate: Option<String>,
}

/// Renders the whole page.
pub fn render(v: &ReportView) -> String {
    let t = &v.totals;
    let badge = if t.different > 0 {
        format!("{} {}", t.different, if t.different == 1 { "difference" } else { "differences" })
    } else {
        "No differences".to_string()
    };
    let cards = vec![
        Card { class: "", label: "Replayed", n: t.replayed, extra: "requests".into() },
        Card {
            class: "eq",
            label: "Equal",
            n: t.equal,
            extra: if t.noise_only > 0 { format!("{:.1}% · {} only noise", pct(t.equal, t.replayed), t.noise_only) } else { format!("{:.1}%", pct(t.equal, t.replayed)) },
        },
        Card { class: "diff", label: "Different", n: t.different, extra: format!("{:.1}%", pct(t.different, t.replayed)) },
        Card { class: "high", label: "High risk", n: v.risk.high, extra: format!("medium {} · low {}", v.risk.medium, v.risk.low) },
        Card { class: "", label: "Not compared", n: t.partial + t.not_compared, extra: format!("{} compared in part (cut body)", t.partial) },
        Card { class: "errs", label: "Errors", n: t.errors, extra: format!("{:.1}%", pct(t.errors, t.replayed)) },
        Card { class: "", label: "Skipped", n: t.skipped, extra: "not replayed".into() },
    ];
    let endpoints = v
        .endpoints
        .iter()
        .map(|e| {
            let (p, c) = (&e.production_latency_ms, &e.candidate_latency_ms);
            EndpointLine {
                name: e.endpoint.clone(),
                requests: e.requests,
                different: e.different,
                different_pct: format!("{:.1}", e.different_pct),
                errors: e.errors,
                risk: e.risk,
                p50: (ms(p.p50), ms(c.p50), speed_class(p.p50, c.p50)),
                p99: (ms(p.p99), ms(c.p99), speed_class(p.p99, c.p99)),
                top_field: e.fields.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(k, n)| (k.to_string(), *n)),
            }
        })
        .collect();
    let endpoint_histograms = if v.endpoints.len() > 1 {
        v.endpoints
            .iter()
            .take(CHART_ENDPOINTS)
            .map(|e| (e.endpoint.clone(), histogram(&e.production_latency_ms, &e.candidate_latency_ms, 560, 170)))
            .collect()
    } else {
        Vec::new()
    };
    let sorted = |m: &std::collections::BTreeMap<String, u64>| {
        let mut rows: Vec<(String, u64)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        rows
    };
    let panels = if v.skipped.is_empty() && v.errors.is_empty() && v.not_compared.is_empty() {
        Vec::new()
    } else {
        vec![
            Panel { title: "Skipped", rows: sorted(&v.skipped) },
            Panel { title: "Not compared", rows: sorted(&v.not_compared) },
            Panel {
                title: "Errors",
                rows: v.errors.iter().map(|e| (format!("{} {}: {} ({})", e.role.as_str(), e.target, e.kind, e.example), e.count)).collect(),
            },
            Panel {
                title: "Targets",
                rows: v.per_target.iter().map(|t| (format!("{} {}: {} request(s), errors", t.role.as_str(), t.target, t.requests), t.errors)).collect(),
            },
        ]
    };
    let page = Page {
        v,
        badge_bad: t.different > 0,
        badge,
        cards,
        endpoints,
        fields: field_chart(v),
        overall: histogram(&v.latency_ms.production, &v.latency_ms.candidate, 560, 250),
        endpoint_histograms,
        panels,
        groups: example_groups(v),
    };
    page.render().unwrap_or_else(|e| format!("<!DOCTYPE html><p>report rendering failed: {e}</p>\n"))
}

/// Flags candidate latency 20% (and 1 ms) slower or faster than production.
fn speed_class(p: Option<f64>, c: Option<f64>) -> &'static str {
    match (p, c) {
        (Some(p), Some(c)) if c > p * 1.2 && c - p > 1.0 => "slower",
        (Some(p), Some(c)) if c < p / 1.2 && p - c > 1.0 => "faster",
        _ => "",
    }
}

/// Horizontal bars: requests with each field key, real and noise stacked.
fn field_chart(v: &ReportView) -> FieldChart {
    let shown = &v.fields[..v.fields.len().min(CHART_FIELDS)];
    // Scaled by real differences: noise on every request would otherwise squash the
    // bars that matter. Noise bars are clipped; the label has the count.
    let max = shown.iter().map(|f| f.real).max().filter(|&m| m > 0).unwrap_or_else(|| shown.iter().map(|f| f.noise).max().unwrap_or(1)).max(1);
    let (row, label_w, bar_w) = (24.0, 220.0, 560.0 - 220.0 - 115.0);
    let bars = shown
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let key = f.key.to_string();
            let y = i as f64 * row + 2.0;
            let real_w = bar_w * f.real as f64 / max as f64;
            let noise_w = (bar_w * f.noise as f64 / max as f64).min(bar_w - real_w);
            let label = if key.chars().count() > 32 { format!("{}…", key.chars().take(31).collect::<String>()) } else { key.clone() };
            FieldBar {
                title: format!("{key}: {} real (high {}, medium {}, low {}), {} noise", f.real, f.risk.high, f.risk.medium, f.risk.low, f.noise),
                label,
                label_y: format!("{:.1}", y + row * 0.62),
                bar_y: format!("{:.1}", y + 4.0),
                bar_h: format!("{:.1}", row - 8.0),
                real_w: format!("{real_w:.1}"),
                noise_x: format!("{:.1}", label_w + real_w),
                noise_w: format!("{noise_w:.1}"),
                count_x: format!("{:.1}", label_w + real_w + noise_w + 6.0),
                count: if f.noise > 0 { format!("{} · {} noise", f.real, f.noise) } else { f.real.to_string() },
            }
        })
        .collect();
    FieldChart { height: format!("{:.0}", row * shown.len() as f64 + 4.0), bars, more: v.fields.len() - shown.len() }
}

fn bucket_label(i: usize) -> String {
    let fmt = |v: f64| if v >= 1000.0 { format!("{}s", v / 1000.0) } else { format!("{v}") };
    match i {
        0 => "<1".to_string(),
        i if i == BUCKETS_MS.len() => format!("≥{}", fmt(BUCKETS_MS[i - 1])),
        i => format!("{}–{}", fmt(BUCKETS_MS[i - 1]), fmt(BUCKETS_MS[i])),
    }
}

fn shares(s: &LatencySummary) -> Vec<f64> {
    let n = s.count.max(1) as f64;
    let mut out: Vec<f64> = s.buckets.iter().map(|&c| c as f64 / n).collect();
    out.resize(BUCKETS_MS.len() + 1, 0.0);
    out
}

/// Side-by-side bars per latency bucket, as a share of each side's requests so the
/// two are comparable when counts differ.
fn histogram(prod: &LatencySummary, cand: &LatencySummary, width: u32, height: u32) -> Histogram {
    let (p, c) = (shares(prod), shares(cand));
    let used = |i: &usize| p[*i] > 0.0 || c[*i] > 0.0;
    let first = (0..p.len()).find(used).unwrap_or(0);
    let last = (0..p.len()).rev().find(used).unwrap_or(0);
    let top = p.iter().chain(&c).cloned().fold(0.0, f64::max);
    // Four gridlines at round percentages.
    let step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25].into_iter().find(|step| step * 4.0 >= top).unwrap_or(0.25);
    let axis = step * 4.0;
    let (w, h) = (f64::from(width), f64::from(height));
    let (left, right, top_pad, bottom) = (40.0, 8.0, 10.0, 24.0);
    let (plot_w, plot_h) = (w - left - right, h - top_pad - bottom);
    let buckets: Vec<usize> = (first..=last).collect();
    let slot = plot_w / buckets.len() as f64;
    let bar = (slot * 0.36).min(26.0);
    let grid = (0..=4)
        .map(|k| {
            let frac = f64::from(k) / 4.0;
            let y = top_pad + plot_h * (1.0 - frac);
            (format!("{y:.1}"), format!("{:.1}", y + 4.0), format!("{:.0}%", axis * frac * 100.0))
        })
        .collect();
    let mut bars = Vec::new();
    let mut labels = Vec::new();
    for (slot_i, &b) in buckets.iter().enumerate() {
        let mid = left + slot * slot_i as f64 + slot / 2.0;
        for (share, colour, x, who, n) in [(p[b], PROD, mid - bar - 1.0, "production", prod.count), (c[b], CAND, mid + 1.0, "candidate", cand.count)] {
            let bh = plot_h * share / axis;
            bars.push(Bar {
                x: format!("{x:.1}"),
                y: format!("{:.1}", top_pad + plot_h - bh),
                w: format!("{bar:.1}"),
                h: format!("{bh:.1}"),
                colour,
                title: format!("{who} {} ms: {:.1}% of {n}", bucket_label(b), share * 100.0),
            });
        }
        labels.push((format!("{mid:.1}"), format!("{:.1}", h - 7.0), bucket_label(b)));
    }
    Histogram {
        empty: prod.count == 0 && cand.count == 0,
        width,
        height,
        grid,
        bars,
        labels,
        axis_y: format!("{:.1}", top_pad + plot_h),
        right: format!("{:.1}", w - right),
    }
}

fn example_groups(v: &ReportView) -> Vec<ExampleGroup> {
    let mut groups = Vec::new();
    for e in &v.endpoints {
        let mine: Vec<&Outcome> = v.examples.iter().filter(|o| super::report::endpoint_name(&o.method, &o.path) == e.endpoint).collect();
        if mine.is_empty() {
            continue;
        }
        let shown = mine.len().min(HTML_EXAMPLES);
        groups.push(ExampleGroup {
            name: e.endpoint.clone(),
            open: groups.len() < 3,
            different: e.different,
            errors: e.errors,
            shown,
            examples: mine[..shown].iter().enumerate().map(|(j, o)| example(o, j == 0)).collect(),
        });
    }
    groups
}

fn diff_rows(diffs: &[Difference]) -> Vec<DiffRow> {
    diffs
        .iter()
        .take(HTML_ROWS)
        .map(|d| DiffRow { label: d.label(), risk: d.risk.as_str(), production: d.production.clone(), candidate: d.candidate.clone() })
        .collect()
}

fn example(o: &Outcome, first: bool) -> ExampleLine {
    let status = |s: Option<u16>| s.map_or("-".to_string(), |s| s.to_string());
    ExampleLine {
        method: o.method.clone(),
        path: o.path.clone(),
        production_status: status(o.production_status),
        candidate_status: status(o.candidate_status),
        status_changed: o.production_status != o.candidate_status,
        latency: (ms(o.production_latency_ms), ms(o.candidate_latency_ms)),
        id: o.id.clone(),
        risk: o.risk().map(|r| r.as_str()),
        error: o.error.as_ref().map(|e| format!("{}: {}", e.kind, e.message)),
        cut: o.compared_body_bytes,
        baseline_error: o.baseline_error.as_ref().map(|e| e.message.clone()),
        head: first,
        rows: diff_rows(&o.differences),
        more_rows: o.differences.len().saturating_sub(HTML_ROWS) + o.differences_dropped,
        noise: diff_rows(&o.noise),
    }
}

#[cfg(test)]
mod tests {
    use super::super::view::tests::{name_change, outcome, status};
    use super::super::Report;
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("Replay <nightly>".into());
        for i in 0..20 {
            let ms = f64::from(i) * 3.0 + 1.0;
            r.add(outcome("GET", "/api/users", vec![], (ms, ms * 1.5)));
        }
        r.add(outcome("GET", "/api/users", vec![name_change(2, "\"<script>alert(1)</script>\"")], (4.0, 9.0)));
        r.add(outcome("POST", "/api/orders", vec![status(201, 500)], (30.0, 700.0)));
        r
    }

    #[test]
    fn html_has_endpoints_svg_risk_and_escapes_values() {
        let html = render(&sample().view());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("GET /api/users"));
        assert!(html.contains("POST /api/orders"));
        assert!(html.contains("<svg"));
        assert!(html.contains("risk-high") && html.contains("risk-medium"), "risk shown");
        assert!(!html.contains("<script>alert(1)</script>"));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;") || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "escaped by the template engine");
        assert!(!html.contains("Replay <nightly>"));
        assert!(html.contains("2 differences"));
        // Self-contained: nothing loaded from elsewhere.
        assert!(!html.contains("<script"));
        assert!(!html.contains("src="));
        assert!(!html.contains("href="));
    }

    #[test]
    fn html_of_empty_report_renders() {
        let html = render(&Report::new("empty".into()).view());
        assert!(html.contains("No differences"));
        assert!(html.contains("No requests replayed"));
        assert!(html.contains("No latency samples"));
    }

    #[test]
    fn latency_bucket_labels() {
        assert_eq!(bucket_label(0), "<1");
        assert_eq!(bucket_label(3), "5–10");
        assert_eq!(bucket_label(10), "1s–2s");
        assert_eq!(bucket_label(BUCKETS_MS.len()), "≥10s");
    }

    /// Writes a sample page to look at: `cargo test ... write_sample_html -- --ignored`.
    #[test]
    #[ignore]
    fn write_sample_html() {
        let r = sample();
        std::fs::write("/tmp/sample-report.html", render(&r.view())).unwrap();
        std::fs::write("/tmp/sample-report.txt", super::super::terminal::render(&r.view())).unwrap();
        std::fs::write("/tmp/sample-report.json", r.view().to_json()).unwrap();
    }
}
