//! The JUnit XML report for CI gates: one test case per endpoint. A case fails when
//! its endpoint has differences at the `--fail-on` risk or higher (with example
//! differences in the failure), is in error when a candidate did not answer, and is
//! skipped when nothing of it could be compared. Differences below the threshold are
//! listed in the case's output. Rendered by the template `templates/junit.xml`
//! (askama escapes every value; characters XML cannot carry are replaced).

use askama::Template;

use super::outcome::Outcome;
use super::report::endpoint_name;
use super::risk::Risk;
use super::view::ReportView;

/// Examples listed per failing case.
const EXAMPLES: usize = 5;
/// Difference lines per example.
const LINES: usize = 10;

/// Where and when the replay ran (attributes the JUnit schema requires).
#[derive(Clone, Debug)]
pub struct JunitRun {
    pub hostname: String,
    /// ISO 8601 without a time zone, UTC: `2026-11-25T06:00:00`.
    pub timestamp: String,
    pub fail_on: Risk,
}

#[derive(Template)]
#[template(path = "junit.xml")]
struct Suite {
    name: String,
    hostname: String,
    timestamp: String,
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    time: String,
    properties: Vec<(String, String)>,
    cases: Vec<Case>,
}

struct Case {
    name: String,
    classname: String,
    time: String,
    failure: Option<Problem>,
    error: Option<Problem>,
    skipped: Option<String>,
    output: String,
}

struct Problem {
    kind: String,
    message: String,
    text: String,
}

/// Text XML 1.0 can carry: other control characters become U+FFFD.
fn xml_text(s: &str) -> String {
    s.chars().map(|c| if c < ' ' && !matches!(c, '\t' | '\n' | '\r') || matches!(c, '\u{fffe}' | '\u{ffff}') { '\u{fffd}' } else { c }).collect()
}

fn example_lines(o: &Outcome, at_least: Risk, out: &mut String) {
    let status = |s: Option<u16>| s.map_or("-".to_string(), |s| s.to_string());
    out.push_str(&format!(
        "{} {} (record {}, status {} -> {})\n",
        o.method,
        o.path,
        o.id,
        status(o.production_status),
        status(o.candidate_status)
    ));
    if let Some(e) = &o.error {
        out.push_str(&format!("  error {}: {}\n", e.kind, e.message));
    }
    for d in o.differences.iter().filter(|d| d.risk >= at_least).take(LINES) {
        let side = |v: &Option<String>| v.clone().unwrap_or_else(|| "(missing)".into());
        out.push_str(&format!("  [{}] {}: {} -> {}\n", d.risk, d.label(), side(&d.production), side(&d.candidate)));
    }
}

pub fn render(v: &ReportView, run: &JunitRun) -> String {
    let mut cases = Vec::new();
    // Targets are in the properties; endpoints count over all of them.
    let classname = "capture.replay".to_string();
    for e in &v.endpoints {
        let examples: Vec<&Outcome> = v.examples.iter().filter(|o| endpoint_name(&o.method, &o.path) == e.endpoint).collect();
        let failing = e.risk.at_least(run.fail_on);
        let below = e.different - failing;
        let mut case = Case {
            name: e.endpoint.clone(),
            classname: classname.clone(),
            time: format!("{:.3}", e.candidate_latency_ms.mean.unwrap_or(0.0) * e.candidate_latency_ms.count as f64 / 1000.0),
            failure: None,
            error: None,
            skipped: None,
            output: String::new(),
        };
        if e.errors > 0 {
            let mut text = String::new();
            for o in examples.iter().filter(|o| o.error.is_some()).take(EXAMPLES) {
                example_lines(o, run.fail_on, &mut text);
            }
            let kind = examples.iter().find_map(|o| o.error.as_ref()).map_or("error".to_string(), |f| f.kind.to_string());
            let message = format!("{} of {} request(s) not answered by the candidate; {failing} different at risk {} or higher", e.errors, e.requests, run.fail_on);
            case.error = Some(Problem { kind, message, text });
        } else if failing > 0 {
            let mut text = String::new();
            for o in examples.iter().filter(|o| o.risk().is_some_and(|r| r >= run.fail_on)).take(EXAMPLES) {
                example_lines(o, run.fail_on, &mut text);
            }
            let top = e.fields.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(k, _)| format!("; most often {k}")).unwrap_or_default();
            let message = format!(
                "{failing} of {} request(s) differ at risk {} or higher (high {}, medium {}, low {}){top}",
                e.requests, run.fail_on, e.risk.high, e.risk.medium, e.risk.low
            );
            case.failure = Some(Problem { kind: e.risk.highest().unwrap_or(run.fail_on).to_string(), message, text });
        } else if e.requests > 0 && e.not_compared == e.requests {
            case.skipped = Some(format!("none of {} request(s) compared (no production response, or no --compare)", e.requests));
        }
        if below > 0 {
            case.output.push_str(&format!("{below} request(s) differ below the --fail-on {} threshold\n", run.fail_on));
            for o in examples.iter().filter(|o| o.risk().is_some_and(|r| r < run.fail_on)).take(EXAMPLES) {
                example_lines(o, Risk::Low, &mut case.output);
            }
        }
        cases.push(case);
    }
    if !v.run_errors.is_empty() {
        cases.push(Case {
            name: "run".into(),
            classname: "capture.replay".into(),
            time: "0".into(),
            failure: None,
            error: Some(Problem { kind: "run_error".into(), message: v.run_errors.join("; "), text: v.run_errors.join("\n") }),
            skipped: None,
            output: String::new(),
        });
    }
    for c in &mut cases {
        c.name = xml_text(&c.name);
        c.output = xml_text(&c.output);
        for p in [&mut c.failure, &mut c.error].into_iter().flatten() {
            p.message = xml_text(&p.message);
            p.text = xml_text(&p.text);
        }
    }
    let count = |f: fn(&Case) -> bool| cases.iter().filter(|c| f(c)).count();
    let time: f64 = cases.iter().filter_map(|c| c.time.parse::<f64>().ok()).sum();
    let mut properties = vec![("fail_on".to_string(), run.fail_on.to_string())];
    properties.extend(v.targets.iter().map(|t| ("target".to_string(), xml_text(t))));
    properties.extend([
        ("replayed".to_string(), v.totals.replayed.to_string()),
        ("equal".to_string(), v.totals.equal.to_string()),
        ("different".to_string(), v.totals.different.to_string()),
        ("skipped_requests".to_string(), v.totals.skipped.to_string()),
    ]);
    let suite = Suite {
        name: xml_text(&v.title),
        hostname: xml_text(&run.hostname),
        timestamp: run.timestamp.clone(),
        tests: cases.len(),
        failures: count(|c| c.failure.is_some()),
        errors: count(|c| c.error.is_some()),
        skipped: count(|c| c.skipped.is_some()),
        time: format!("{time:.3}"),
        properties,
        cases,
    };
    suite.render().unwrap_or_else(|e| format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><!-- rendering failed: {e} --><testsuites/>\n"))
}

#[cfg(test)]
mod tests {
    use super::super::outcome::{ErrorKind, Failure};
    use super::super::view::tests::{name_change, outcome, status};
    use super::super::Report;
    use super::*;

    fn run(fail_on: Risk) -> JunitRun {
        JunitRun { hostname: "ci-1".into(), timestamp: "2026-11-25T06:00:00".into(), fail_on }
    }

    #[test]
    fn one_case_per_endpoint_failures_errors_and_escaping() {
        let mut r = Report::new("nightly <replay>".into());
        r.add(outcome("GET", "/a", vec![], (1.0, 2.0)));
        r.add(outcome("GET", "/b", vec![name_change(0, "\"<x>\u{1}\"")], (1.0, 2.0)));
        r.add(outcome("GET", "/c", vec![status(200, 500)], (1.0, 2.0)));
        let mut failed = outcome("GET", "/d", vec![], (1.0, 2.0));
        failed.error = Some(Failure::new(ErrorKind::ReadTimeout, "timeout: no complete response within 1s"));
        r.add(failed);
        let mut bare = outcome("GET", "/e", vec![], (1.0, 2.0));
        bare.not_compared = Some("no production response captured".into());
        r.add(bare);
        let xml = render(&r.view(), &run(Risk::High));
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"), "{xml}");
        assert!(xml.contains("tests=\"5\" failures=\"1\" errors=\"1\" skipped=\"1\""), "{xml}");
        assert!(xml.contains("<failure message=\"1 of 1 request(s) differ at risk high or higher (high 1, medium 0, low 0); most often status\" type=\"high\">"), "{xml}");
        assert!(xml.contains("<error message=\"1 of 1 request(s) not answered by the candidate"), "{xml}");
        assert!(xml.contains("type=\"read_timeout\""), "{xml}");
        assert!(xml.contains("below the --fail-on high threshold"), "the medium change is listed, not failed: {xml}");
        assert!(!xml.contains("<x>") && !xml.contains('\u{1}') && !xml.contains("nightly <replay>"), "escaped: {xml}");
        // At --fail-on medium the /b case fails too.
        assert!(render(&r.view(), &run(Risk::Medium)).contains("failures=\"2\""));
    }
}
