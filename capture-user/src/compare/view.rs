//! The one view of a report that every renderer works from (terminal, JSON, HTML,
//! JUnit), and the JSON report's layout. The JSON report is this view serialised; it
//! carries everything needed to rebuild the model ([`Report::from_view`]), so reports
//! of several replayers merge.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::diff::DiffKey;
use super::latency::{Latencies, LatencySummary};
use super::outcome::{ErrorKind, Outcome};
use super::report::{endpoint_name, EndpointStats, ErrorStats, FieldStats, KafkaCoverage, Report, Role, TargetStats};
use super::risk::{Risk, RiskCounts};

/// Version of the JSON layout; `capture report merge` reads this one.
pub const FORMAT: u32 = 2;

/// The report as renderers see it. Field names are stable; new fields may be added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportView {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    pub title: String,
    /// Candidate base URLs, sorted.
    pub targets: Vec<String>,
    pub totals: Totals,
    /// Different requests by the highest risk of their real differences.
    pub risk: RiskCounts,
    /// Partly compared requests: the fewest body bytes one of them compared.
    pub partial_min_bytes: Option<u64>,
    /// Targets (candidate or baseline) that answered none of their requests.
    pub run_errors: Vec<String>,
    /// Requests and errors per target, candidates and baseline.
    pub per_target: Vec<TargetRow>,
    /// Input and replay counters, e.g. `input_records`, `replay_gaps_capped`.
    pub counters: BTreeMap<String, u64>,
    /// Answered requests not compared, by reason.
    pub not_compared: BTreeMap<String, u64>,
    /// Requests not replayed, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Failures by target and kind, with the first message of each.
    pub errors: Vec<ErrorRow>,
    /// Latency over all endpoints.
    pub latency_ms: LatencyPair,
    /// Endpoints, most different (then most errors, then most requests) first.
    pub endpoints: Vec<EndpointRow>,
    /// Field keys by requests with a real difference, most first.
    pub fields: Vec<FieldRow>,
    /// Requests whose difference keys were past the number of keys tracked.
    pub fields_dropped: u64,
    /// Outcomes with differences, errors or cut bodies: at most 100 per endpoint and
    /// 1000 in all, in the order of `endpoints`.
    pub examples: Vec<Outcome>,
    /// Kafka input: the records consumed, per partition, and how many more than once.
    pub kafka: Option<KafkaCoverage>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Outcomes added (one per request and candidate).
    pub replayed: u64,
    /// Compared in full: no real differences.
    pub equal: u64,
    /// Replayed without error, with real differences.
    pub different: u64,
    /// A body was cut: equal in the part that could be compared, unknown past it.
    pub partial: u64,
    /// Answered, not compared (no --compare, no production response, ...).
    pub not_compared: u64,
    /// The candidate did not answer.
    pub errors: u64,
    /// Equal requests that had noise differences.
    pub noise_only: u64,
    /// Different requests whose baseline failed (noise not removed).
    pub unverified: u64,
    /// Requests not replayed (sum of `skipped`).
    pub skipped: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRow {
    pub target: String,
    pub role: Role,
    pub requests: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRow {
    pub target: String,
    pub role: Role,
    pub kind: ErrorKind,
    pub count: u64,
    /// The first message of this kind at this target.
    pub example: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyPair {
    pub production: LatencySummary,
    pub candidate: LatencySummary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointRow {
    /// "METHOD route", e.g. "GET /api/users/{id}".
    pub endpoint: String,
    pub method: String,
    /// Path with id-like segments replaced by `{id}`.
    pub route: String,
    pub requests: u64,
    pub equal: u64,
    pub different: u64,
    pub partial: u64,
    pub not_compared: u64,
    pub errors: u64,
    /// Different requests by their highest risk.
    pub risk: RiskCounts,
    /// `different / requests * 100`.
    pub different_pct: f64,
    pub production_latency_ms: LatencySummary,
    pub candidate_latency_ms: LatencySummary,
    /// Field key -> requests of this endpoint with that real difference.
    pub fields: BTreeMap<DiffKey, u64>,
    /// Examples beyond those kept.
    pub examples_dropped: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldRow {
    /// See [`DiffKey`].
    pub key: DiffKey,
    /// Requests with this real difference.
    pub real: u64,
    /// The same by the risk of the difference.
    pub risk: RiskCounts,
    /// Requests where this difference was noise.
    pub noise: u64,
}

pub(super) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Builds the view of a report.
pub(super) fn build(r: &Report) -> ReportView {
    let mut eps: Vec<(&String, &EndpointStats)> = r.endpoints.iter().collect();
    eps.sort_by(|a, b| (b.1.different, b.1.errors, b.1.requests).cmp(&(a.1.different, a.1.errors, a.1.requests)).then(a.0.cmp(b.0)));
    let (mut all_production, mut all_candidate) = (Latencies::default(), Latencies::default());
    for (_, e) in &eps {
        all_production.merge(&e.production_latency);
        all_candidate.merge(&e.candidate_latency);
    }
    let endpoints = eps
        .iter()
        .map(|(name, e)| EndpointRow {
            endpoint: name.to_string(),
            method: e.method.clone(),
            route: e.route.clone(),
            requests: e.requests,
            equal: e.equal(),
            different: e.different,
            partial: e.partial,
            not_compared: e.not_compared,
            errors: e.errors,
            risk: e.risk,
            different_pct: pct(e.different, e.requests),
            production_latency_ms: e.production_latency.summary(),
            candidate_latency_ms: e.candidate_latency.summary(),
            fields: e.fields.clone(),
            examples_dropped: e.examples_dropped,
        })
        .collect();
    let mut fields: Vec<FieldRow> = r
        .fields
        .iter()
        .map(|(key, f)| FieldRow { key: key.clone(), real: f.real.at_least(Risk::Low), risk: f.real, noise: f.noise })
        .collect();
    fields.sort_by(|a, b| (b.real, b.noise).cmp(&(a.real, a.noise)).then(a.key.cmp(&b.key)));
    let per_target: Vec<TargetRow> =
        r.target_stats.iter().map(|(url, t)| TargetRow { target: url.clone(), role: t.role, requests: t.requests, errors: t.errors }).collect();
    let errors = r
        .error_kinds
        .iter()
        .map(|((target, kind), e)| ErrorRow {
            target: target.clone(),
            role: r.target_stats.get(target).map_or(Role::Candidate, |t| t.role),
            kind: *kind,
            count: e.count,
            example: e.example.clone(),
        })
        .collect();
    ReportView {
        format: FORMAT,
        title: r.title.clone(),
        targets: r.targets.iter().cloned().collect(),
        totals: Totals {
            replayed: r.total,
            equal: r.equal(),
            different: r.different,
            partial: r.partial,
            not_compared: r.not_compared.values().sum(),
            errors: r.errors,
            noise_only: r.noise_only,
            unverified: r.unverified,
            skipped: r.skipped.values().sum(),
        },
        risk: r.risk,
        partial_min_bytes: r.partial_min_bytes,
        run_errors: run_errors(&per_target),
        per_target,
        counters: r.counters.clone(),
        not_compared: r.not_compared.clone(),
        skipped: r.skipped.clone(),
        errors,
        latency_ms: LatencyPair { production: all_production.summary(), candidate: all_candidate.summary() },
        endpoints,
        fields,
        fields_dropped: r.fields_dropped,
        examples: eps.iter().flat_map(|(_, e)| e.examples.iter().cloned()).collect(),
        kafka: r.kafka.clone(),
    }
}

/// A target (candidate or baseline) that answered none of its requests.
fn run_errors(targets: &[TargetRow]) -> Vec<String> {
    targets
        .iter()
        .filter(|t| t.requests > 0 && t.errors == t.requests)
        .map(|t| {
            let effect = if t.role == Role::Baseline { ": noise was not removed from any difference" } else { "" };
            format!("{} {} answered none of its {} request(s){effect}", t.role.as_str(), t.target, t.requests)
        })
        .collect()
}

impl ReportView {
    /// Why a gate at `fail_on` fails this run (empty: it passes): differences of that
    /// risk or higher, requests a candidate did not answer, and a baseline that
    /// answered none. (`--fail-on-diff` is `--fail-on low`.)
    pub fn gate_failures(&self, fail_on: Risk) -> Vec<String> {
        let mut out = Vec::new();
        let different = self.risk.at_least(fail_on);
        if different > 0 {
            out.push(format!("{different} different at risk {fail_on} or higher"));
        }
        if self.totals.errors > 0 {
            out.push(format!("{} not answered by the candidate", self.totals.errors));
        }
        out.extend(self.run_errors.iter().filter(|e| e.starts_with("baseline")).cloned());
        out
    }

    /// The row of endpoint `name`.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointRow> {
        self.endpoints.iter().find(|e| e.endpoint == name)
    }
}

impl Report {
    /// Rebuilds the model from a view (a JSON report read back), to merge it with others.
    pub fn from_view(view: ReportView) -> Result<Report, String> {
        if view.format != FORMAT {
            return Err(format!("report format {} (this capture reads format {FORMAT})", view.format));
        }
        let mut r = Report::new(view.title);
        r.targets = view.targets.into_iter().collect::<BTreeSet<_>>();
        let t = view.totals;
        (r.total, r.different, r.errors, r.partial, r.noise_only, r.unverified) = (t.replayed, t.different, t.errors, t.partial, t.noise_only, t.unverified);
        r.risk = view.risk;
        r.partial_min_bytes = view.partial_min_bytes;
        r.not_compared = view.not_compared;
        r.skipped = view.skipped;
        r.counters = view.counters;
        r.target_stats = view.per_target.into_iter().map(|t| (t.target, TargetStats { role: t.role, requests: t.requests, errors: t.errors })).collect();
        r.error_kinds = view.errors.into_iter().map(|e| ((e.target, e.kind), ErrorStats { count: e.count, example: e.example })).collect();
        r.fields = view.fields.into_iter().map(|f| (f.key, FieldStats { real: f.risk, noise: f.noise })).collect();
        r.fields_dropped = view.fields_dropped;
        for e in view.endpoints {
            let stats = EndpointStats {
                method: e.method,
                route: e.route,
                requests: e.requests,
                different: e.different,
                errors: e.errors,
                not_compared: e.not_compared,
                partial: e.partial,
                risk: e.risk,
                production_latency: Latencies::decode(&e.production_latency_ms.histogram)?,
                candidate_latency: Latencies::decode(&e.candidate_latency_ms.histogram)?,
                fields: e.fields,
                examples: Vec::new(),
                examples_dropped: e.examples_dropped,
            };
            r.endpoints.insert(e.endpoint, stats);
        }
        for example in view.examples {
            let name = endpoint_name(&example.method, &example.path);
            let name = if r.endpoints.contains_key(&name) { name } else { super::report::OTHER_ENDPOINTS.to_string() };
            if let Some(ep) = r.endpoints.get_mut(&name) {
                ep.examples.push(example);
                r.examples_kept += 1;
            }
        }
        r.kafka = view.kafka;
        Ok(r)
    }

    /// Reads a JSON report (as `--report-json` writes it) back into the model.
    pub fn from_json(text: &str) -> Result<Report, String> {
        let view: ReportView = serde_json::from_str(text).map_err(|e| format!("not a capture JSON report: {e}"))?;
        Report::from_view(view)
    }
}

impl ReportView {
    /// The JSON report.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::compare::diff::{Change, Difference, Location};
    use crate::compare::outcome::Failure;
    use crate::compare::report::{route, MAX_EXAMPLES};

    /// An outcome with the given differences; latency in ms.
    pub(crate) fn outcome(method: &str, path: &str, differences: Vec<Difference>, latency: (f64, f64)) -> Outcome {
        Outcome {
            production_status: Some(200),
            candidate_status: Some(200),
            production_latency_ms: Some(latency.0),
            candidate_latency_ms: Some(latency.1),
            differences,
            ..Outcome::new(&format!("rec-{path}"), method, path, "http://127.0.0.1:8081")
        }
    }

    pub(crate) fn name_change(i: usize, value: &str) -> Difference {
        Difference::new(Location::JsonField { path: format!("$.items[{i}].name").parse().unwrap() }, Change::Changed, Some("\"old\"".into()), Some(value.into()))
    }

    pub(crate) fn status(p: u16, c: u16) -> Difference {
        let change = if p / 100 == c / 100 { Change::Changed } else { Change::ClassChanged };
        Difference::new(Location::Status, change, Some(p.to_string()), Some(c.to_string()))
    }

    fn refused() -> Failure {
        Failure::new(ErrorKind::Connect, "connect: connection refused")
    }

    #[test]
    fn routes_group_ids() {
        assert_eq!(endpoint_name("get", "/api/users/42?x=1"), "GET /api/users/{id}");
        assert_eq!(route("/o/123e4567-e89b-12d3-a456-426614174000/items"), "/o/{id}/items");
        assert_eq!(route("/api/v2/users"), "/api/v2/users");
        assert_eq!(route(""), "/");
    }

    pub(crate) fn sample() -> Report {
        let mut r = Report::new("t".into());
        r.add(outcome("GET", "/api/users", vec![], (1.0, 2.0)));
        r.add(outcome("GET", "/api/users", vec![name_change(0, "\"a\""), name_change(3, "\"b\"")], (1.0, 2.0)));
        r.add(outcome("GET", "/api/users/7", vec![status(200, 500), name_change(1, "1")], (1.0, 2.0)));
        let mut noisy = outcome("GET", "/api/users/8", vec![], (1.0, 2.0));
        noisy.noise = vec![name_change(0, "\"x\"")];
        r.add(noisy);
        let mut failed = outcome("POST", "/api/orders", vec![], (1.0, 0.0));
        failed.error = Some(refused());
        failed.candidate_latency_ms = None;
        r.add(failed);
        r.count_skipped("method DELETE not allowed");
        r.count_skipped("method DELETE not allowed");
        r.count_skipped("method PATCH not allowed");
        r
    }

    #[test]
    fn aggregates_by_endpoint_field_and_risk() {
        let v = sample().view();
        let t = &v.totals;
        assert_eq!((t.replayed, t.equal, t.different, t.errors, t.noise_only, t.skipped), (5, 2, 2, 1, 1, 3));
        assert_eq!(v.risk, RiskCounts { high: 1, medium: 1, low: 0 }, "a request counts at its highest risk");
        assert_eq!(v.skipped["method DELETE not allowed"], 2);
        let users = v.endpoint("GET /api/users").unwrap();
        assert_eq!((users.requests, users.different, users.errors), (2, 1, 0));
        let by_id = v.endpoint("GET /api/users/{id}").unwrap();
        assert_eq!((by_id.requests, by_id.different, by_id.risk.high), (2, 1, 1));
        assert_eq!(by_id.fields[&DiffKey::Status], 1);
        assert_eq!(v.endpoint("POST /api/orders").unwrap().errors, 1);
        assert_eq!(v.endpoints[0].endpoint, "GET /api/users", "most different first, then by name");
        // Two changed elements in one request count once for the key.
        let f = v.fields.iter().find(|f| f.key.to_string() == "json:$.items[*].name").unwrap();
        assert_eq!((f.real, f.noise, f.risk.medium), (2, 1, 2));
        assert_eq!(v.errors, vec![ErrorRow { target: "http://127.0.0.1:8081".into(), role: Role::Candidate, kind: ErrorKind::Connect, count: 1, example: "connect: connection refused".into() }]);
        assert_eq!(v.examples.len(), 3, "the two different requests and the error");
    }

    /// Issue 13: `--fail-on` gates on risk; candidate errors and a dead baseline fail any level.
    #[test]
    fn gate_by_risk_level() {
        let mut r = Report::new("t".into());
        r.add(outcome("GET", "/a", vec![name_change(0, "\"x\"")], (1.0, 1.0)));
        let added = Difference::new(Location::JsonField { path: "$.new".parse().unwrap() }, Change::Added, None, Some("1".into()));
        r.add(outcome("GET", "/b", vec![added], (1.0, 1.0)));
        let v = r.view();
        assert_eq!(v.gate_failures(Risk::High), Vec::<String>::new());
        assert_eq!(v.gate_failures(Risk::Medium), ["1 different at risk medium or higher"]);
        assert_eq!(v.gate_failures(Risk::Low), ["2 different at risk low or higher"]);
        r.add(outcome("GET", "/c", vec![status(200, 404)], (1.0, 1.0)));
        assert_eq!(r.view().gate_failures(Risk::High), ["1 different at risk high or higher"]);
        let mut failed = outcome("GET", "/d", vec![], (1.0, 1.0));
        failed.error = Some(refused());
        let mut dead = Report::new("t".into());
        dead.add(failed);
        assert_eq!(dead.view().gate_failures(Risk::High), ["1 not answered by the candidate"]);
    }

    /// Issue 11, bug 7 ("gates that pass when they should fail"), report side: a
    /// request without a captured response was counted equal, and a dead target left
    /// nothing for --fail-on-diff to fail on.
    #[test]
    fn gates_pass_when_they_should_fail() {
        let mut r = Report::new("t".into());
        let mut unanswered = outcome("GET", "/a", vec![], (1.0, 1.0));
        unanswered.not_compared = Some("no production response captured".into());
        r.add(unanswered);
        let mut cut = outcome("GET", "/big", vec![], (1.0, 1.0));
        cut.compared_body_bytes = Some(1_000_000);
        r.add(cut);
        r.add(outcome("GET", "/b", vec![], (1.0, 1.0)));
        let v = r.view();
        assert_eq!((v.totals.equal, v.totals.not_compared, v.totals.partial), (1, 1, 1), "only the fully compared one is equal");
        assert!(v.gate_failures(Risk::Low).is_empty(), "not compared and partly compared are not failures");

        let mut dead = Report::new("t".into());
        for path in ["/a", "/b"] {
            let mut o = outcome("GET", path, vec![], (1.0, 1.0));
            o.error = Some(refused());
            dead.add(o);
        }
        let v = dead.view();
        assert_eq!(v.gate_failures(Risk::Low), ["2 not answered by the candidate"]);
        assert_eq!(v.run_errors, ["candidate http://127.0.0.1:8081 answered none of its 2 request(s)"]);
        let json: serde_json::Value = serde_json::from_str(&v.to_json()).unwrap();
        assert_eq!(json["per_target"][0]["errors"], 2);
        assert_eq!(json["run_errors"].as_array().unwrap().len(), 1);
    }

    /// Issue 11, bug 2 ("a dead baseline silently turns noise cancellation off"),
    /// report side.
    #[test]
    fn dead_baseline_silently_turns_noise_cancellation_off() {
        let mut r = Report::new("t".into());
        for i in 0..3 {
            r.add_baseline("http://127.0.0.1:9", Some(&refused()));
            let mut o = outcome("GET", "/api/user", vec![name_change(i, "\"x\"")], (1.0, 1.0));
            o.baseline_error = Some(refused());
            r.add(o);
        }
        let v = r.view();
        assert_eq!(v.totals.unverified, 3);
        assert_eq!(v.run_errors, ["baseline http://127.0.0.1:9 answered none of its 3 request(s): noise was not removed from any difference"]);
        assert_eq!(v.gate_failures(Risk::Low).len(), 2);
        assert_eq!(v.errors[0].role, Role::Baseline);
        r.add_baseline("http://127.0.0.1:9", None);
        assert!(r.view().run_errors.is_empty(), "a baseline that answers some requests is not a run error");
    }

    #[test]
    fn examples_and_endpoints_are_capped() {
        let mut r = Report::new("t".into());
        let many: Vec<Difference> = (0..200).map(|i| name_change(i, "1")).collect();
        for _ in 0..(MAX_EXAMPLES + 5) {
            r.add(outcome("GET", "/a", many.clone(), (1.0, 1.0)));
        }
        r.add(outcome("GET", "/b", vec![name_change(0, "1")], (1.0, 1.0)));
        let v = r.view();
        assert_eq!(v.endpoint("GET /a").unwrap().examples_dropped, 5);
        assert_eq!(v.examples.len(), MAX_EXAMPLES + 1);
        assert_eq!((v.examples[0].differences.len(), v.examples[0].differences_dropped), (50, 150));
        for i in 0..(super::super::report::MAX_ENDPOINTS + 10) {
            r.add(outcome("GET", &format!("/e{i}"), vec![], (1.0, 1.0)));
        }
        let v = r.view();
        assert_eq!(v.endpoints.len(), super::super::report::MAX_ENDPOINTS + 1);
        assert!(v.endpoint("(other endpoints)").unwrap().requests >= 10);
    }

    /// Issue 13: the JSON report reads back into the same model, and two reports of
    /// halves of the records merge into the report of all of them.
    #[test]
    fn json_reports_round_trip_and_merge() {
        let whole = sample();
        let v = whole.view();
        let back = Report::from_json(&v.to_json()).unwrap().view();
        assert_eq!(back, v);

        let (mut a, mut b) = (Report::new("t".into()), Report::new("t".into()));
        let mut all = Report::new("t".into());
        for (i, o) in [
            outcome("GET", "/api/users", vec![], (1.0, 2.0)),
            outcome("GET", "/api/users", vec![name_change(1, "2")], (3.0, 2.0)),
            outcome("GET", "/api/users/9", vec![status(200, 503)], (5.0, 9.0)),
            outcome("GET", "/x", vec![], (0.5, 0.7)),
        ]
        .into_iter()
        .enumerate()
        {
            all.add(o.clone());
            if i % 2 == 0 { a.add(o) } else { b.add(o) }
        }
        a.count_skipped("s");
        all.count_skipped("s");
        a.add_kafka_records("t", 0, 0, 10);
        b.add_kafka_records("t", 1, 0, 7);
        all.add_kafka_records("t", 0, 0, 10);
        all.add_kafka_records("t", 1, 0, 7);
        let mut merged = Report::from_json(&a.view().to_json()).unwrap();
        merged.merge(Report::from_json(&b.view().to_json()).unwrap());
        let (m, w) = (merged.view(), all.view());
        assert_eq!((m.totals.clone(), m.risk, m.fields.clone(), m.latency_ms.clone()), (w.totals.clone(), w.risk, w.fields.clone(), w.latency_ms.clone()));
        assert_eq!(m.endpoints, w.endpoints);
        assert_eq!(m.kafka, w.kafka);
        assert!(Report::from_json("{}").unwrap_err().contains("not a capture JSON report"));
    }

    #[test]
    fn kafka_coverage_counts_records_consumed_twice() {
        let mut k = KafkaCoverage::default();
        k.add(0, 0, 10);
        k.add(0, 20, 30);
        k.add(0, 5, 25);
        assert_eq!(k.partitions[&0], vec![(0, 30)]);
        assert_eq!((k.records(), k.duplicate_records), (30, 10));
        let mut other = KafkaCoverage::default();
        other.add(0, 28, 40);
        other.add(1, 0, 3);
        k.merge(&other);
        assert_eq!((k.records(), k.duplicate_records), (43, 12));
    }
}
