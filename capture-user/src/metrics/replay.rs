//! The replayer's metrics: what became of each captured request (sent, or skipped by
//! reason), outcomes by class and risk, requests and errors per target role and error
//! kind, the input, pacing and connection counters of the report, and latency
//! histograms per role (production's from the capture, the candidates' and the
//! baseline's as measured by the replayer).
//!
//! The replay's collector thread hands each event it adds to the report to
//! [`ReplayMetrics`] as well, so a scrape shows the run so far (a live consumer-group
//! replay runs for hours) and, once the replay finished, the report's totals.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{encode_samples, Health, Kind, Sample, Value};
use crate::compare::{ErrorKind, Failure, Outcome, OutcomeClass, Risk};

/// Outcome classes, each exported from the start (0 until seen).
const OUTCOMES: [OutcomeClass; 5] =
    [OutcomeClass::Equal, OutcomeClass::Different, OutcomeClass::Partial, OutcomeClass::NotCompared, OutcomeClass::Error];
const RISKS: [Risk; 3] = [Risk::High, Risk::Medium, Risk::Low];
const ERROR_KINDS: [ErrorKind; 9] = [
    ErrorKind::Connect,
    ErrorKind::Tls,
    ErrorKind::WriteTimeout,
    ErrorKind::Write,
    ErrorKind::ReadTimeout,
    ErrorKind::Read,
    ErrorKind::Closed,
    ErrorKind::BadResponse,
    ErrorKind::RefusedProduction,
];

/// Labels of the reasons a request is not sent (`replay::SkipReason::label`).
pub const SKIP_REASONS: [&str; 5] = ["request_cut", "unreplayable", "body_incomplete", "ambiguous", "method_not_allowed"];

/// Report counter -> family (without `_total`), the label that replaces the glued part
/// of its name, and help. Each is exported from the start; a report counter not listed
/// is exported as `capture_<name>_total`.
const COUNTERS: &[(&str, &str, Option<(&str, &str)>, &str)] = &[
    ("replay_requests_sent", "capture_replay_requests_sent", None, "Captured requests replayed, not skipped: each went to every candidate (and the baseline), or was refused there as the production server"),
    ("replay_gaps_capped", "capture_replay_gaps_capped", None, "Pacing gaps shortened to --max-wait"),
    (
        "replay_requests_without_server_address",
        "capture_replay_requests_without_server_address",
        None,
        "Requests without a captured server address (GoReplay files): the production-server check could not run for them",
    ),
    ("replay_sent_to_production", "capture_replay_sent_to_production", None, "Requests sent to the captured production server (--allow-production)"),
    ("replay_connections_opened", "capture_replay_target_connections_opened", None, "Connections opened to the targets"),
    (
        "replay_connections_reopened",
        "capture_replay_target_connections_reopened",
        None,
        "Connections opened again for a captured connection whose earlier one was closed while idle (by the target, or by the replayer: idle or to make room)",
    ),
    ("replay_connections_closed_idle", "capture_replay_target_connections_closed", Some(("reason", "idle")), TARGET_CLOSED_HELP),
    ("replay_connections_closed_evicted", "capture_replay_target_connections_closed", Some(("reason", "evicted")), TARGET_CLOSED_HELP),
    ("replay_connections_closed_by_target", "capture_replay_target_connections_closed", Some(("reason", "by_target")), TARGET_CLOSED_HELP),
    ("replay_connections_closed_after_exchange", "capture_replay_target_connections_closed", Some(("reason", "after_exchange")), TARGET_CLOSED_HELP),
    ("replay_connections_closed_at_end", "capture_replay_target_connections_closed", Some(("reason", "at_end")), TARGET_CLOSED_HELP),
    ("input_records", "capture_replay_input_records", None, "Record values read (each continuation record once)"),
    ("input_bad_records", "capture_replay_input_bad_records", None, "Unparseable, torn or forged records, or continuation records that contradict each other: never replayed"),
    ("input_null_values", "capture_replay_input_null_values", None, "Kafka messages without a value"),
    ("input_parts_joined", "capture_replay_input_parts_joined", None, "Continuation records joined back into whole messages"),
    ("input_parts_incomplete", "capture_replay_input_parts_incomplete", None, "Continuation records of messages whose other parts never arrived: not replayed"),
    ("input_parts_duplicate", "capture_replay_input_parts_duplicate", None, "Continuation records seen twice (producer retries), ignored"),
    ("input_responses_without_request", "capture_replay_input_responses_without_request", None, "Response records without their request"),
    ("input_ignored_records", "capture_replay_input_ignored_records", None, "Records of other types (GoReplay's replayed responses), ignored"),
    ("input_handed_over", "capture_replay_input_handed_over", None, "Kafka records read but left to another replayer of the group after a rebalance"),
    ("input_late", "capture_replay_input_late", None, "Kafka time window: exchanges that arrived after a later one was replayed (past --reorder-window), replayed out of order"),
    (
        "input_reorder_full",
        "capture_replay_input_reorder_full",
        None,
        "Kafka time window: exchanges replayed before --reorder-window passed because the order buffer was full",
    ),
];

const TARGET_CLOSED_HELP: &str = "Connections to the targets closed, by reason: idle (unused for 30 s), evicted (--max-target-connections), \
     by_target (closed by the target while idle), after_exchange (asked by the response, or after a failure), at_end";

/// Latency buckets, seconds: sub-millisecond answers up to the default --timeout and beyond.
const LATENCY_BUCKETS_SECONDS: [f64; 16] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

type LatencyFamily = Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>;

/// What the replay shares with the metrics endpoint.
pub struct ReplayMetrics {
    health: Arc<Health>,
    state: Mutex<State>,
    latency: LatencyFamily,
}

impl fmt::Debug for ReplayMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayMetrics").finish_non_exhaustive()
    }
}

struct State {
    skipped: BTreeMap<&'static str, u64>,
    outcomes: BTreeMap<OutcomeClass, u64>,
    different: BTreeMap<Risk, u64>,
    /// By role (`candidate`, `baseline`).
    target_requests: BTreeMap<&'static str, u64>,
    target_errors: BTreeMap<(&'static str, ErrorKind), u64>,
    /// The report's counters (replay_*), by name.
    counters: BTreeMap<String, u64>,
    /// The input's counters as last published, by name without `input_`.
    input: BTreeMap<&'static str, u64>,
    finished: bool,
}

impl ReplayMetrics {
    /// `stall_after`: the longest a healthy replay goes without an event (see
    /// `ReplayConfig::longest_silence`). Baseline series exist `with_baseline` only.
    pub fn new(stall_after: Duration, with_baseline: bool) -> Arc<ReplayMetrics> {
        let roles: &[&'static str] = if with_baseline { &["candidate", "baseline"] } else { &["candidate"] };
        let state = State {
            skipped: SKIP_REASONS.iter().map(|&r| (r, 0)).collect(),
            outcomes: OUTCOMES.iter().map(|&c| (c, 0)).collect(),
            different: RISKS.iter().map(|&r| (r, 0)).collect(),
            target_requests: roles.iter().map(|&r| (r, 0)).collect(),
            target_errors: roles.iter().flat_map(|&r| ERROR_KINDS.iter().map(move |&k| ((r, k), 0))).collect(),
            counters: COUNTERS.iter().filter(|(name, ..)| name.starts_with("replay_")).map(|(name, ..)| (name.to_string(), 0)).collect(),
            input: COUNTERS.iter().filter_map(|(name, ..)| name.strip_prefix("input_")).map(|name| (name, 0)).collect(),
            finished: false,
        };
        let latency: LatencyFamily = Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS_SECONDS));
        for role in ["production", "candidate"].iter().chain(with_baseline.then_some(&"baseline")) {
            let _ = latency.get_or_create(&[("role", role)]);
        }
        Arc::new(ReplayMetrics { health: Arc::new(Health::new(stall_after)), state: Mutex::new(state), latency })
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "capture_replay_latency_seconds",
            "Request's last byte to response's first byte, by role: production (from the capture, once per request sent), \
             candidate and baseline (measured by the replayer, once per request each)",
            self.latency.clone(),
        );
        registry.register_collector(Box::new(self.clone()));
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.health.progress();
    }

    /// A candidate's outcome for one request.
    pub fn outcome(&self, outcome: &Outcome) {
        if let Some(ms) = outcome.candidate_latency_ms {
            self.observe("candidate", ms / 1e3);
        }
        self.update(|s| {
            let class = outcome.class();
            *s.outcomes.entry(class).or_default() += 1;
            if let (OutcomeClass::Different, Some(risk)) = (class, outcome.risk()) {
                *s.different.entry(risk).or_default() += 1;
            }
            *s.target_requests.entry("candidate").or_default() += 1;
            if let Some(failure) = &outcome.error {
                *s.target_errors.entry(("candidate", failure.kind)).or_default() += 1;
            }
        });
    }

    /// One request sent to the baseline: its failure, or its latency.
    pub fn baseline(&self, error: Option<&Failure>, latency: Option<Duration>) {
        if let Some(latency) = latency {
            self.observe("baseline", latency.as_secs_f64());
        }
        self.update(|s| {
            *s.target_requests.entry("baseline").or_default() += 1;
            if let Some(failure) = error {
                *s.target_errors.entry(("baseline", failure.kind)).or_default() += 1;
            }
        });
    }

    /// A captured request sent to the targets, with production's latency from the capture.
    pub fn production_latency(&self, latency_ns: Option<u64>) {
        if let Some(ns) = latency_ns {
            self.observe("production", ns as f64 / 1e9);
        }
    }

    /// A request not sent, by reason (one of [`SKIP_REASONS`]).
    pub fn skipped(&self, reason: &'static str) {
        self.update(|s| *s.skipped.entry(reason).or_default() += 1);
    }

    /// Adds `n` to the report counter `name`.
    pub fn counter(&self, name: &str, n: u64) {
        self.update(|s| *s.counters.entry(name.to_string()).or_default() += n);
    }

    /// The input's counters so far (`InputStats::fields`: the report's names without `input_`).
    pub fn input(&self, fields: &[(&'static str, u64)]) {
        self.update(|s| s.input.extend(fields.iter().copied()));
    }

    /// The replay is over and its reports are written: the values are final.
    pub fn finish(&self) {
        self.update(|s| s.finished = true);
    }

    fn observe(&self, role: &'static str, seconds: f64) {
        self.latency.get_or_create(&[("role", role)]).observe(seconds);
    }

    fn samples(&self) -> Vec<Sample> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let counter = |name: &'static str, help: &'static str, labels: Vec<(&'static str, String)>, value: u64| Sample {
            name: name.into(),
            kind: Kind::Counter,
            help: help.into(),
            labels,
            value: Value::Int(value),
        };
        let mut out = Vec::new();
        for (&reason, &n) in &s.skipped {
            out.push(counter(
                "capture_replay_requests_skipped",
                "Captured requests not sent, by reason: request_cut (cut at capture), unreplayable, body_incomplete, \
                 ambiguous (framing flagged at capture), method_not_allowed (--allow-method)",
                vec![("reason", reason.to_string())],
                n,
            ));
        }
        for (class, &n) in &s.outcomes {
            out.push(counter(
                "capture_replay_outcomes",
                "Candidate answers by outcome (one per request and candidate): equal, different, partial (compared up to a cut), \
                 not_compared (no --compare, no usable production response), error",
                vec![("outcome", class.as_str().to_string())],
                n,
            ));
        }
        for (risk, &n) in &s.different {
            out.push(counter(
                "capture_replay_different",
                "Different candidate answers by the highest risk of their real differences: high, medium, low",
                vec![("risk", risk.as_str().to_string())],
                n,
            ));
        }
        for (&role, &n) in &s.target_requests {
            out.push(counter("capture_replay_target_requests", "Requests sent (or refused) per target role: candidate, baseline", vec![("role", role.to_string())], n));
        }
        for (&(role, kind), &n) in &s.target_errors {
            out.push(counter(
                "capture_replay_target_errors",
                "Requests a target did not answer, by role and kind (connect, tls, write_timeout, write, read_timeout, read, \
                 closed, bad_response, refused_production)",
                vec![("role", role.to_string()), ("kind", kind.as_str().to_string())],
                n,
            ));
        }
        for (name, &n) in &s.counters {
            out.push(report_counter(name, n));
        }
        for (name, &n) in &s.input {
            out.push(report_counter(&format!("input_{name}"), n));
        }
        let closed: u64 = s.counters.iter().filter(|(k, _)| k.starts_with("replay_connections_closed_")).map(|(_, v)| v).sum();
        let opened = s.counters.get("replay_connections_opened").copied().unwrap_or(0);
        out.push(Sample {
            name: "capture_replay_target_connections_open".into(),
            kind: Kind::Gauge,
            help: "Connections to the targets open now (at most --max-target-connections)".into(),
            labels: Vec::new(),
            value: Value::Int(opened.saturating_sub(closed)),
        });
        out.push(Sample {
            name: "capture_replay_finished".into(),
            kind: Kind::Gauge,
            help: "1 once the replay finished and its reports were written (--metrics-linger keeps serving them)".into(),
            labels: Vec::new(),
            value: Value::Int(u64::from(s.finished)),
        });
        out
    }
}

/// A report counter as a sample: from [`COUNTERS`], or `capture_<name>`.
fn report_counter(name: &str, value: u64) -> Sample {
    match COUNTERS.iter().find(|(n, ..)| *n == name) {
        Some(&(_, family, label, help)) => Sample {
            name: family.into(),
            kind: Kind::Counter,
            help: help.into(),
            labels: label.map(|(k, v)| (k, v.to_string())).into_iter().collect(),
            value: Value::Int(value),
        },
        None => Sample {
            name: format!("capture_{name}").into(),
            kind: Kind::Counter,
            help: format!("Report counter {name}").into(),
            labels: Vec::new(),
            value: Value::Int(value),
        },
    }
}

impl Collector for ReplayMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_samples(&self.samples(), &mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Change, Difference, ErrorKind, Location};

    fn render(metrics: &Arc<ReplayMetrics>) -> BTreeMap<String, String> {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        crate::metrics::parse_series(&text)
    }

    #[test]
    fn events_show_under_their_names_and_labels() {
        let metrics = ReplayMetrics::new(Duration::from_secs(60), true);
        let fresh = render(&metrics);
        assert_eq!(fresh["capture_replay_outcomes_total{outcome=\"equal\"}"], "0", "every outcome exists from the start");
        assert_eq!(fresh["capture_replay_target_errors_total{role=\"baseline\",kind=\"connect\"}"], "0");
        assert_eq!(fresh["capture_replay_input_records_total"], "0");
        assert_eq!(fresh["capture_replay_finished"], "0");

        let mut equal = Outcome::new("1", "GET", "/a", "http://c");
        equal.candidate_latency_ms = Some(2.0);
        let mut different = Outcome::new("2", "GET", "/b", "http://c");
        different.differences = vec![Difference::new(Location::Status, Change::ClassChanged, Some("200".into()), Some("500".into()))];
        let mut failed = Outcome::new("3", "GET", "/c", "http://c");
        failed.error = Some(Failure::new(ErrorKind::ReadTimeout, "timeout"));
        for o in [&equal, &different, &failed] {
            metrics.outcome(o);
            metrics.production_latency(Some(1_500_000));
        }
        metrics.baseline(Some(&Failure::new(ErrorKind::Connect, "refused")), None);
        metrics.baseline(None, Some(Duration::from_millis(3)));
        metrics.skipped("method_not_allowed");
        metrics.counter("replay_requests_sent", 3);
        metrics.counter("replay_connections_opened", 4);
        metrics.counter("replay_connections_closed_evicted", 1);
        metrics.counter("replay_something_new", 2);
        metrics.input(&[("records", 7), ("bad_records", 1)]);
        metrics.finish();

        let m = render(&metrics);
        for (series, value) in [
            ("capture_replay_outcomes_total{outcome=\"equal\"}", "1"),
            ("capture_replay_outcomes_total{outcome=\"different\"}", "1"),
            ("capture_replay_outcomes_total{outcome=\"error\"}", "1"),
            ("capture_replay_different_total{risk=\"high\"}", "1"),
            ("capture_replay_target_requests_total{role=\"candidate\"}", "3"),
            ("capture_replay_target_requests_total{role=\"baseline\"}", "2"),
            ("capture_replay_target_errors_total{role=\"candidate\",kind=\"read_timeout\"}", "1"),
            ("capture_replay_target_errors_total{role=\"baseline\",kind=\"connect\"}", "1"),
            ("capture_replay_requests_skipped_total{reason=\"method_not_allowed\"}", "1"),
            ("capture_replay_requests_sent_total", "3"),
            ("capture_replay_target_connections_opened_total", "4"),
            ("capture_replay_target_connections_closed_total{reason=\"evicted\"}", "1"),
            ("capture_replay_target_connections_open", "3"),
            ("capture_replay_something_new_total", "2"),
            ("capture_replay_input_records_total", "7"),
            ("capture_replay_input_bad_records_total", "1"),
            ("capture_replay_finished", "1"),
            ("capture_replay_latency_seconds_count{role=\"production\"}", "3"),
            ("capture_replay_latency_seconds_count{role=\"candidate\"}", "1"),
            ("capture_replay_latency_seconds_bucket{role=\"candidate\",le=\"0.0025\"}", "1"),
            ("capture_replay_latency_seconds_bucket{role=\"candidate\",le=\"0.001\"}", "0"),
            ("capture_replay_latency_seconds_count{role=\"baseline\"}", "1"),
        ] {
            assert_eq!(m.get(series).map(String::as_str), Some(value), "{series} in {m:#?}");
        }
        for name in m.keys() {
            let family = name.split('{').next().unwrap();
            assert!(family.starts_with("capture_replay_"), "{name}");
        }
    }

    #[test]
    fn without_a_baseline_there_are_no_baseline_series() {
        let m = render(&ReplayMetrics::new(Duration::from_secs(60), false));
        assert!(!m.keys().any(|k| k.contains("baseline")), "{m:#?}");
    }
}
