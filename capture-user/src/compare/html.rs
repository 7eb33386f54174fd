//! The HTML report: one self-contained page, inline CSS, charts as inline SVG.
//! No scripts, so it can be opened from a CI artifact or mail attachment.

use std::fmt::Write as _;

use super::diff::Difference;
use super::report::{ms, pct, Latency, Outcome, Report};

const PROD: &str = "#2563eb";
const CAND: &str = "#ea580c";
const DIFF: &str = "#dc2626";
const NOISE: &str = "#cbd5e1";

/// Examples shown per endpoint; the JSON report has up to 100.
const HTML_EXAMPLES: usize = 10;
/// Difference rows shown per example.
const HTML_ROWS: usize = 20;
/// Field keys in the bar chart.
const CHART_FIELDS: usize = 20;
/// Endpoints that get their own latency histogram.
const CHART_ENDPOINTS: usize = 8;

const CSS: &str = r#"
:root{--prod:#2563eb;--cand:#ea580c;--diff:#dc2626;--ok:#16a34a;--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f5f6f8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:28px 32px 60px}
h1{font-size:26px;margin:0;font-weight:650;letter-spacing:-.01em}
h2{font-size:17px;margin:0 0 14px;font-weight:650}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:13px}
.top{display:flex;align-items:center;gap:16px;flex-wrap:wrap}
.sub{color:var(--muted);margin:6px 0 20px}
.badge{display:inline-block;padding:4px 12px;border-radius:999px;font-weight:650;font-size:14px;color:#fff}
.badge.bad{background:var(--diff)}.badge.good{background:var(--ok)}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:14px;margin-bottom:22px}
.card,.panel{background:#fff;border:1px solid var(--line);border-radius:10px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
.card{padding:14px 18px}
.card .n{font-size:34px;font-weight:700;line-height:1.1;font-variant-numeric:tabular-nums}
.card .l{color:var(--muted);font-size:13px;text-transform:uppercase;letter-spacing:.05em}
.card .p{color:var(--muted);font-size:13px}
.card.diff .n{color:var(--diff)}.card.errs .n{color:#b45309}.card.eq .n{color:var(--ok)}
.panel{padding:18px 20px;margin-bottom:22px;overflow-x:auto}
.two{display:grid;grid-template-columns:1fr 1fr;gap:22px}
.two .panel{margin-bottom:0}.two{margin-bottom:22px}
table{border-collapse:collapse;width:100%}
th,td{padding:7px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:none}
.prod{color:var(--prod)}.cand{color:var(--cand)}
.slower{color:var(--diff);font-weight:600}.faster{color:var(--ok)}
.bar{display:inline-block;vertical-align:middle;width:80px;height:8px;background:#eef0f3;border-radius:4px;margin-right:8px;overflow:hidden}
.bar i{display:block;height:100%;background:var(--diff)}
.legend{display:flex;gap:18px;color:var(--muted);font-size:13px;margin:-6px 0 12px}
.legend span::before{content:"";display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;background:currentColor;vertical-align:-1px}
.hists{display:grid;grid-template-columns:repeat(2,1fr);gap:8px 22px}
.hists h3{font-size:13px;font-weight:600;margin:8px 0 0}
details.ep{margin-bottom:10px;border:1px solid var(--line);border-radius:8px;background:#fff}
details.ep>summary{cursor:pointer;padding:10px 14px;font-weight:600}
details.ep>div{padding:0 14px 6px}
.ex{border-top:1px solid var(--line);padding:12px 0 14px}
.exh{display:flex;gap:14px;flex-wrap:wrap;align-items:baseline;margin-bottom:8px;color:var(--muted);font-size:13px}
.exh .st{color:var(--ink);font-weight:600}
.err{color:#b45309;font-weight:600}
table.d{table-layout:fixed}table.d td{font-size:13px}table.d col.f{width:22%}
table.d td.pv,table.d td.cv{word-break:break-all;white-space:pre-wrap}
table.d td.pv{background:#eff6ff}table.d td.cv{background:#fff7ed}
table.d th.pv{color:var(--prod)}table.d th.cv{color:var(--cand)}
.missing{color:var(--muted);font-style:italic}
.noise summary{color:var(--muted);font-size:13px;cursor:pointer;margin-top:6px}
.muted{color:var(--muted)}
ul.plain{margin:0;padding-left:18px}
"#;

/// Renders the whole page.
pub(super) fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = esc(&r.title);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{CSS}</style></head><body><main>"
    );
    header(&mut h, r);
    endpoints_table(&mut h, r);

    h.push_str("<div class=\"two\"><section class=\"panel\"><h2>Differences by field</h2>");
    h.push_str("<div class=\"legend\"><span style=\"color:#dc2626\">real (requests)</span><span style=\"color:#cbd5e1\">noise</span></div>");
    h.push_str(&field_chart(r));
    h.push_str("</section><section class=\"panel\"><h2>Latency (ms), all endpoints</h2>");
    h.push_str(LEGEND);
    h.push_str(&histogram(
        &r.all_latencies(false),
        &r.all_latencies(true),
        560,
        250,
    ));
    h.push_str("</section></div>");

    let eps = r.endpoints_by_interest();
    if eps.len() > 1 {
        h.push_str("<section class=\"panel\"><h2>Latency (ms) by endpoint</h2>");
        h.push_str(LEGEND);
        h.push_str("<div class=\"hists\">");
        for (name, ep) in eps.iter().take(CHART_ENDPOINTS) {
            let _ = write!(h, "<div><h3><code>{}</code></h3>", esc(name));
            h.push_str(&histogram(
                &ep.production_latency_ms,
                &ep.candidate_latency_ms,
                560,
                170,
            ));
            h.push_str("</div>");
        }
        h.push_str("</div></section>");
    }

    skipped_and_errors(&mut h, r);
    examples(&mut h, r);
    h.push_str("</main></body></html>\n");
    h
}

const LEGEND: &str = "<div class=\"legend\"><span class=\"prod\">production</span><span class=\"cand\">candidate</span></div>";

fn header(h: &mut String, r: &Report) {
    let n = r.with_differences();
    let badge = if n > 0 {
        format!(
            "<span class=\"badge bad\">{n} {}</span>",
            if n == 1 { "difference" } else { "differences" }
        )
    } else {
        "<span class=\"badge good\">No differences</span>".to_string()
    };
    let _ = write!(
        h,
        "<div class=\"top\"><h1>{}</h1>{badge}</div>",
        esc(&r.title)
    );
    let targets: Vec<String> = r.targets.iter().map(|t| esc(t)).collect();
    let _ = write!(
        h,
        "<p class=\"sub\">Candidate {} replayed against captured production responses · \
         {} endpoints · differences after noise filtering</p>",
        if targets.is_empty() {
            "-".to_string()
        } else {
            format!("<code>{}</code>", targets.join("</code>, <code>"))
        },
        r.endpoints.len()
    );
    let total = r.total();
    let card = |class: &str, label: &str, n: usize, extra: String| {
        format!(
            "<div class=\"card {class}\"><div class=\"l\">{label}</div><div class=\"n\">{n}</div><div class=\"p\">{extra}</div></div>"
        )
    };
    h.push_str("<div class=\"cards\">");
    h.push_str(&card("", "Replayed", total, "requests".into()));
    let noise = if r.noise_only > 0 {
        format!(
            "{:.1}% · {} only noise",
            pct(r.equal(), total),
            r.noise_only
        )
    } else {
        format!("{:.1}%", pct(r.equal(), total))
    };
    h.push_str(&card("eq", "Equal", r.equal(), noise));
    h.push_str(&card(
        "diff",
        "Different",
        n,
        format!("{:.1}%", pct(n, total)),
    ));
    h.push_str(&card(
        "",
        "Not compared",
        r.partial + r.not_compared_total(),
        format!("{} compared in part (cut body)", r.partial),
    ));
    h.push_str(&card(
        "errs",
        "Errors",
        r.errors(),
        format!("{:.1}%", pct(r.errors(), total)),
    ));
    h.push_str(&card(
        "",
        "Skipped",
        r.skipped_total(),
        "not replayed".into(),
    ));
    h.push_str("</div>");
    let run_errors = r.run_errors();
    if !run_errors.is_empty() {
        h.push_str("<section class=\"panel\"><h2 class=\"err\">Run errors</h2><ul class=\"plain\">");
        for e in run_errors {
            let _ = write!(h, "<li class=\"err\">{}</li>", esc(&e));
        }
        h.push_str("</ul></section>");
    }
}

fn endpoints_table(h: &mut String, r: &Report) {
    h.push_str(
        "<section class=\"panel\"><h2>Endpoints</h2><table><thead><tr><th>Endpoint</th>\
         <th class=\"num\">Requests</th><th>Different</th><th class=\"num\">Errors</th>\
         <th class=\"num prod\">p50 prod</th><th class=\"num cand\">p50 cand</th>\
         <th class=\"num prod\">p99 prod</th><th class=\"num cand\">p99 cand</th>\
         <th>Top field</th></tr></thead><tbody>",
    );
    for (name, ep) in r.endpoints_by_interest() {
        let p = Latency::of(&ep.production_latency_ms);
        let c = Latency::of(&ep.candidate_latency_ms);
        let d = ep.different_pct();
        let top = ep
            .fields
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(k, n)| format!("<code>{}</code> <span class=\"muted\">×{n}</span>", esc(k)))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td class=\"num\">{}</td>\
             <td><span class=\"bar\"><i style=\"width:{:.1}%\"></i></span>{} <span class=\"muted\">({:.1}%)</span></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num {}\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num {}\">{}</td><td>{}</td></tr>",
            esc(name),
            ep.requests,
            d,
            ep.different,
            d,
            ep.errors,
            ms(p.p50),
            speed_class(p.p50, c.p50),
            ms(c.p50),
            ms(p.p99),
            speed_class(p.p99, c.p99),
            ms(c.p99),
            top
        );
    }
    if r.endpoints.is_empty() {
        h.push_str("<tr><td colspan=\"9\" class=\"muted\">No requests replayed.</td></tr>");
    }
    h.push_str("</tbody></table></section>");
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
fn field_chart(r: &Report) -> String {
    let fields = r.fields_by_count();
    if fields.is_empty() {
        return "<p class=\"muted\">No differences.</p>".to_string();
    }
    let shown = &fields[..fields.len().min(CHART_FIELDS)];
    // Scaled by real differences: noise on every request would otherwise
    // squash the bars that matter. Noise bars are clipped; the label has the count.
    let max = shown
        .iter()
        .map(|(_, f)| f.real)
        .max()
        .filter(|&m| m > 0)
        .unwrap_or_else(|| shown.iter().map(|(_, f)| f.noise).max().unwrap_or(1))
        .max(1);
    let (width, row, label_w, count_w) = (560.0, 24.0, 220.0, 115.0);
    let bar_w = width - label_w - count_w;
    let height = row * shown.len() as f64 + 4.0;
    let mut s = format!(
        "<svg viewBox=\"0 0 {width} {height}\" width=\"100%\" role=\"img\" aria-label=\"Differences by field\" \
         style=\"font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px\">"
    );
    for (i, (key, f)) in shown.iter().enumerate() {
        let y = i as f64 * row + 2.0;
        let real_w = bar_w * f.real as f64 / max as f64;
        let noise_w = (bar_w * f.noise as f64 / max as f64).min(bar_w - real_w);
        let label = if key.chars().count() > 32 {
            format!("{}…", key.chars().take(31).collect::<String>())
        } else {
            key.to_string()
        };
        let _ = write!(
            s,
            "<g><title>{}: {} real, {} noise</title>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#374151\">{}</text>\
             <rect x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"{DIFF}\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"{NOISE}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#6b7280\">{}{}</text></g>",
            esc(key),
            f.real,
            f.noise,
            label_w - 8.0,
            y + row * 0.62,
            esc(&label),
            y + 4.0,
            real_w,
            row - 8.0,
            label_w + real_w,
            y + 4.0,
            noise_w,
            row - 8.0,
            label_w + real_w + noise_w + 6.0,
            y + row * 0.62,
            f.real,
            if f.noise > 0 { format!(" · {} noise", f.noise) } else { String::new() },
        );
    }
    if fields.len() > shown.len() {
        let _ = write!(
            s,
            "</svg><p class=\"muted\">{} more field keys in the JSON report.</p>",
            fields.len() - shown.len()
        );
        return s;
    }
    s.push_str("</svg>");
    s
}

/// Bucket upper bounds in ms (roughly 1-2-5 per decade); the last bucket is open.
const BUCKETS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

fn bucket_label(i: usize) -> String {
    let fmt = |v: f64| {
        if v >= 1000.0 {
            format!("{}s", v / 1000.0)
        } else {
            format!("{v}")
        }
    };
    match i {
        0 => "<1".to_string(),
        i if i == BUCKETS.len() => format!("≥{}", fmt(BUCKETS[i - 1])),
        i => format!("{}–{}", fmt(BUCKETS[i - 1]), fmt(BUCKETS[i])),
    }
}

fn bucket_shares(samples: &[f64]) -> Vec<f64> {
    let mut counts = vec![0usize; BUCKETS.len() + 1];
    for &v in samples {
        let i = BUCKETS.iter().position(|&b| v < b).unwrap_or(BUCKETS.len());
        counts[i] += 1;
    }
    let n = samples.len().max(1) as f64;
    counts.iter().map(|&c| c as f64 / n).collect()
}

/// Side-by-side bars per log-ish latency bucket, as a share of each side's
/// requests so the two are comparable when counts differ.
fn histogram(prod: &[f64], cand: &[f64], width: u32, height: u32) -> String {
    if prod.is_empty() && cand.is_empty() {
        return "<p class=\"muted\">No latency samples.</p>".to_string();
    }
    let (p, c) = (bucket_shares(prod), bucket_shares(cand));
    let used = |i: &usize| p[*i] > 0.0 || c[*i] > 0.0;
    let first = (0..p.len()).find(used).unwrap_or(0);
    let last = (0..p.len()).rev().find(used).unwrap_or(0);
    let buckets: Vec<usize> = (first..=last).collect();
    let top = p.iter().chain(&c).cloned().fold(0.0, f64::max);
    // Four gridlines at round percentages.
    let step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25]
        .into_iter()
        .find(|step| step * 4.0 >= top)
        .unwrap_or(0.25);
    let axis = step * 4.0;

    let (w, h) = (f64::from(width), f64::from(height));
    let (left, right, top_pad, bottom) = (40.0, 8.0, 10.0, 24.0);
    let plot_w = w - left - right;
    let plot_h = h - top_pad - bottom;
    let slot = plot_w / buckets.len() as f64;
    let bar = (slot * 0.36).min(26.0);
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"Latency histogram\" \
         style=\"font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:11px\">"
    );
    for k in 0..=4 {
        let frac = f64::from(k) / 4.0;
        let y = top_pad + plot_h * (1.0 - frac);
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eef0f3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#9ca3af\">{:.0}%</text>",
            w - right,
            left - 6.0,
            y + 4.0,
            axis * frac * 100.0
        );
    }
    for (slot_i, &b) in buckets.iter().enumerate() {
        let x0 = left + slot * slot_i as f64;
        let mid = x0 + slot / 2.0;
        for (share, colour, x, who, n) in [
            (p[b], PROD, mid - bar - 1.0, "production", prod.len()),
            (c[b], CAND, mid + 1.0, "candidate", cand.len()),
        ] {
            let bh = plot_h * share / axis;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" rx=\"2\" fill=\"{colour}\">\
                 <title>{who} {} ms: {:.1}% of {n}</title></rect>",
                top_pad + plot_h - bh,
                esc(&bucket_label(b)),
                share * 100.0
            );
        }
        let _ = write!(
            s,
            "<text x=\"{mid:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#6b7280\">{}</text>",
            h - 7.0,
            esc(&bucket_label(b))
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#d1d5db\"/></svg>",
        w - right,
        top_pad + plot_h,
        top_pad + plot_h,
    );
    s
}

fn skipped_and_errors(h: &mut String, r: &Report) {
    if r.skipped.is_empty() && r.error_kinds.is_empty() && r.not_compared.is_empty() {
        return;
    }
    let targets: std::collections::BTreeMap<String, usize> = r
        .target_stats
        .iter()
        .map(|(url, t)| (format!("{} {url}: {} request(s), errors", t.role, t.requests), t.errors))
        .collect();
    h.push_str("<div class=\"two\">");
    for (title, map) in [
        ("Skipped", &r.skipped),
        ("Not compared", &r.not_compared),
        ("Errors", &r.error_kinds),
        ("Targets", &targets),
    ] {
        let _ = write!(h, "<section class=\"panel\"><h2>{title}</h2>");
        if map.is_empty() {
            h.push_str("<p class=\"muted\">None.</p>");
        } else {
            h.push_str("<table><tbody>");
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (what, n) in rows {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td class=\"num\">{n}</td></tr>",
                    esc(what)
                );
            }
            h.push_str("</tbody></table>");
        }
        h.push_str("</section>");
    }
    h.push_str("</div>");
}

fn examples(h: &mut String, r: &Report) {
    h.push_str("<section><h2>Example differences</h2>");
    let eps: Vec<_> = r
        .endpoints_by_interest()
        .into_iter()
        .filter(|(_, e)| !e.examples.is_empty())
        .collect();
    if eps.is_empty() {
        h.push_str("<p class=\"muted\">Nothing to show: every replayed response matched.</p>");
    }
    for (i, (name, ep)) in eps.iter().enumerate() {
        let shown = ep.examples.len().min(HTML_EXAMPLES);
        let _ = write!(
            h,
            "<details class=\"ep\"{}><summary><code>{}</code> \
             <span class=\"muted\">· {} different · {} errors · showing {} of {}</span></summary><div>",
            if i < 3 { " open" } else { "" },
            esc(name),
            ep.different,
            ep.errors,
            shown,
            ep.different + ep.errors
        );
        for (j, o) in ep.examples[..shown].iter().enumerate() {
            example(h, o, j == 0);
        }
        h.push_str("</div></details>");
    }
    h.push_str("</section>");
}

fn example(h: &mut String, o: &Outcome, first: bool) {
    let status = |s: Option<u16>| s.map_or("-".to_string(), |s| s.to_string());
    let _ = write!(
        h,
        "<div class=\"ex\"><div class=\"exh\"><span class=\"st\">{} {}</span>\
         <span>status {}</span>\
         <span>latency ms <span class=\"prod\">{}</span> / <span class=\"cand\">{}</span></span>\
         <span>record <code>{}</code></span>",
        esc(&o.method),
        esc(&o.path),
        if o.production_status == o.candidate_status {
            status(o.production_status)
        } else {
            format!(
                "<span class=\"prod\">{}</span> → <span class=\"cand\">{}</span>",
                status(o.production_status),
                status(o.candidate_status)
            )
        },
        ms(o.production_latency_ms),
        ms(o.candidate_latency_ms),
        esc(&o.id)
    );
    if let Some(e) = &o.error {
        let _ = write!(h, "<span class=\"err\">error: {}</span>", esc(e));
    }
    if let Some(n) = o.compared_body_bytes {
        let _ = write!(h, "<span>body cut: compared the first {n} bytes only</span>");
    }
    if let Some(e) = &o.baseline_error {
        let _ = write!(h, "<span class=\"err\">baseline failed ({}): noise not removed</span>", esc(e));
    }
    h.push_str("</div>");
    if !o.differences.is_empty() {
        diff_table(h, &o.differences, first);
    }
    if !o.noise.is_empty() {
        let _ = write!(
            h,
            "<details class=\"noise\"><summary>{} noise {}</summary>",
            o.noise.len(),
            if o.noise.len() == 1 {
                "difference"
            } else {
                "differences"
            }
        );
        diff_table(h, &o.noise, true);
        h.push_str("</details>");
    }
    h.push_str("</div>");
}

/// Field, production and candidate side by side; `head` adds column titles.
fn diff_table(h: &mut String, diffs: &[Difference], head: bool) {
    h.push_str("<table class=\"d\"><colgroup><col class=\"f\"><col><col></colgroup>");
    if head {
        h.push_str(
            "<thead><tr><th>Field</th><th class=\"pv\">Production</th>\
             <th class=\"cv\">Candidate</th></tr></thead>",
        );
    }
    h.push_str("<tbody>");
    for d in diffs.iter().take(HTML_ROWS) {
        let (p, c) = side_values(d);
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td class=\"pv\">{p}</td><td class=\"cv\">{c}</td></tr>",
            esc(&label(d))
        );
    }
    if diffs.len() > HTML_ROWS {
        let _ = write!(
            h,
            "<tr><td colspan=\"3\" class=\"muted\">{} more</td></tr>",
            diffs.len() - HTML_ROWS
        );
    }
    h.push_str("</tbody></table>");
}

/// Where the difference is, for the first column.
fn label(d: &Difference) -> String {
    match d {
        Difference::Status { .. } => "status".to_string(),
        Difference::Header { name, .. } => format!("header {name}"),
        Difference::JsonField { path, .. } => path.clone(),
        Difference::TextLine { line, .. } => format!("body line {line}"),
        Difference::BinaryBody { .. } => "body (binary)".to_string(),
        Difference::BodyPrefix { .. } => "body (cut, compared in part)".to_string(),
    }
}

/// Escaped production and candidate cells; a missing side is marked as such.
fn side_values(d: &Difference) -> (String, String) {
    let cell = |v: &Option<String>| match v {
        Some(v) => format!("<code>{}</code>", esc(v)),
        None => "<span class=\"missing\">missing</span>".to_string(),
    };
    match d {
        Difference::Header {
            production,
            candidate,
            ..
        }
        | Difference::JsonField {
            production,
            candidate,
            ..
        }
        | Difference::TextLine {
            production,
            candidate,
            ..
        } => (cell(production), cell(candidate)),
        _ => {
            let (p, c) = d.values();
            (
                format!("<code>{}</code>", esc(&p)),
                format!("<code>{}</code>", esc(&c)),
            )
        }
    }
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::{name_change, outcome};
    use super::super::Response;
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("Replay <nightly>".into());
        for i in 0..20 {
            let ms = f64::from(i) * 3.0 + 1.0;
            r.add(outcome("GET", "/api/users", vec![], (ms, ms * 1.5)));
        }
        r.add(outcome(
            "GET",
            "/api/users",
            vec![name_change(2, "\"<script>alert(1)</script>\"")],
            (4.0, 9.0),
        ));
        r.add(outcome(
            "POST",
            "/api/orders",
            vec![Difference::Status {
                production: 201,
                candidate: 500,
            }],
            (30.0, 700.0),
        ));
        r
    }

    #[test]
    fn html_has_endpoints_svg_and_escapes_values() {
        let html = sample().to_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("GET /api/users"));
        assert!(html.contains("POST /api/orders"));
        assert!(html.contains("<svg"));
        assert!(!html.contains("<script>alert(1)</script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("Replay <nightly>"));
        assert!(html.contains("2 differences"));
        // Self-contained: nothing loaded from elsewhere.
        assert!(!html.contains("<script"));
        assert!(!html.contains("src="));
        assert!(!html.contains("href="));
    }

    #[test]
    fn html_of_empty_report_renders() {
        let html = Report::new("empty".into()).to_html();
        assert!(html.contains("No differences"));
        assert!(html.contains("No requests replayed"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn latency_buckets() {
        assert_eq!(
            bucket_shares(&[0.5, 1.0, 1.5, 20000.0])[..3],
            [0.25, 0.5, 0.0]
        );
        assert_eq!(bucket_shares(&[20000.0])[BUCKETS.len()], 1.0);
        assert_eq!(bucket_label(0), "<1");
        assert_eq!(bucket_label(3), "5–10");
        assert_eq!(bucket_label(10), "1s–2s");
        assert_eq!(bucket_label(BUCKETS.len()), "≥10s");
    }

    /// A realistic report: several endpoints, all kinds of differences,
    /// noise, errors and skipped requests, latencies from a fixed LCG.
    fn sample_report() -> Report {
        use super::super::{compare, parse_response, split_noise, CompareConfig};
        let mut r = Report::new("Replay of checkout-api capture 2024-05-02".into());
        let config = CompareConfig {
            ignore_fields: vec!["$.meta.request_id".into()],
            ..CompareConfig::default()
        };
        let mut seed: u64 = 42;
        let mut rand = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        let json = |status: u16, body: &str| {
            parse_response(
                format!(
                    "HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nDate: x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
                Some("GET"),
            )
            .unwrap()
        };
        let endpoints = [
            ("GET", "/api/users/{}", 400, 12.0),
            ("GET", "/api/products", 250, 35.0),
            ("POST", "/api/cart/items", 120, 60.0),
            ("GET", "/health", 300, 0.6),
            ("GET", "/static/app.js", 80, 4.0),
        ];
        for (method, path, n, base) in endpoints {
            for i in 0..n {
                let path = path.replace("{}", &(1000 + i).to_string());
                let p_ms = base * (0.5 + rand() * 1.5) * if rand() < 0.03 { 8.0 } else { 1.0 };
                let slower = if path.starts_with("/api/products") {
                    1.8
                } else {
                    1.05
                };
                let c_ms = p_ms * slower * (0.8 + rand() * 0.4);
                let prod = json(
                    200,
                    &format!(
                        r#"{{"id":{i},"name":"Ann","price":12.5,"tags":["a","b"],"meta":{{"ts":{i}}}}}"#
                    ),
                );
                let roll = rand();
                let cand_body = if roll < 0.04 {
                    format!(
                        r#"{{"id":{i},"name":"<script>alert(1)</script>","price":12.5,"tags":["a","b"],"meta":{{"ts":{}}}}}"#,
                        i + 1
                    )
                } else if roll < 0.09 {
                    format!(
                        r#"{{"id":"{i}","name":"Ann","price":12.50,"tags":["a","c"],"meta":{{"ts":{}}}}}"#,
                        i + 1
                    )
                } else if roll < 0.11 {
                    format!(
                        r#"{{"id":{i},"name":"Ann","price":13,"tags":["a","b"],"meta":{{"ts":{}}},"discount":0.1}}"#,
                        i + 1
                    )
                } else {
                    format!(
                        r#"{{"id":{i},"name":"Ann","price":12.5,"tags":["a","b"],"meta":{{"ts":{}}}}}"#,
                        i + 1
                    )
                };
                let status = if path.starts_with("/api/cart") && roll > 0.97 {
                    500
                } else {
                    200
                };
                let cand = json(status, &cand_body);
                let prod2 = json(
                    200,
                    &format!(
                        r#"{{"id":{i},"name":"Ann","price":12.5,"tags":["a","b"],"meta":{{"ts":{}}}}}"#,
                        i + 7
                    ),
                );
                let baseline = compare(&prod, &prod2, &config);
                let (differences, noise) = split_noise(compare(&prod, &cand, &config), &baseline);
                let error = (path.starts_with("/api/cart") && rand() < 0.03).then(|| {
                    if rand() < 0.5 {
                        "connect: connection refused"
                    } else {
                        "timeout after 5s"
                    }
                    .to_string()
                });
                r.add(Outcome {
                    production_status: Some(200),
                    candidate_status: if error.is_some() { None } else { Some(status) },
                    production_latency_ms: Some(p_ms),
                    candidate_latency_ms: if error.is_some() { None } else { Some(c_ms) },
                    differences: if error.is_some() { vec![] } else { differences },
                    noise,
                    error,
                    ..Outcome::new(&format!("1a2b{i:04}"), method, &path, "http://127.0.0.1:8081")
                });
            }
        }
        let text = |body: &str| Response {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/html".into()),
                ("cache-control".into(), "max-age=60".into()),
            ],
            body: body.as_bytes().to_vec(),
            body_complete: true,
        };
        let mut cand = text("<html>\n<h1>Shop</h1>\n<p class=\"total\">Total: 12 €</p>\n</html>");
        cand.headers[1].1 = "no-store".into();
        r.add(Outcome {
            production_status: Some(200),
            candidate_status: Some(200),
            production_latency_ms: Some(80.0),
            candidate_latency_ms: Some(95.0),
            differences: compare(
                &text("<html>\n<h1>Shop</h1>\n<p>Total: 12 €</p>\n</html>"),
                &cand,
                &config,
            ),
            ..Outcome::new("9f00", "GET", "/checkout", "http://127.0.0.1:8081")
        });
        for _ in 0..37 {
            r.count_skipped("method not allowed: DELETE");
        }
        for _ in 0..12 {
            r.count_skipped("method not allowed: PUT");
        }
        r
    }

    /// Writes a sample page to look at: `cargo test ... write_sample_html -- --ignored`.
    #[test]
    #[ignore]
    fn write_sample_html() {
        std::fs::write("/tmp/sample-report.html", sample_report().to_html()).unwrap();
        let r = sample_report();
        std::fs::write("/tmp/sample-report.txt", r.terminal_summary()).unwrap();
        std::fs::write("/tmp/sample-report.json", r.to_json()).unwrap();
    }
}
