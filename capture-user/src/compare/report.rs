//! Aggregating replay outcomes into a text, JSON or HTML report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::diff::Difference;

/// One replayed request's outcome, as the replay engine reports it.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Record id from the capture.
    pub id: String,
    pub method: String,
    /// Request target without the query string.
    pub path: String,
    /// Candidate base URL, e.g. `http://127.0.0.1:8081`.
    pub target: String,
    pub production_status: Option<u16>,
    pub candidate_status: Option<u16>,
    /// From the capture.
    pub production_latency_ms: Option<f64>,
    /// Measured by the replayer.
    pub candidate_latency_ms: Option<f64>,
    /// Why the replay failed, e.g. `connect: connection refused`.
    pub error: Option<String>,
    /// Why the candidate's answer was not compared with production's (no --compare,
    /// no production response captured, ...). `None`: it was compared (or failed).
    pub not_compared: Option<String>,
    /// A body was cut (production's at capture, or the candidate's past the replayer's
    /// limit): only this many body bytes could be compared; nothing is known past them.
    pub compared_body_bytes: Option<u64>,
    /// The baseline failed for this request, so its differences could not be checked
    /// for noise (they all count as real).
    pub baseline_error: Option<String>,
    /// Real differences (after noise filtering).
    pub differences: Vec<Difference>,
    /// Differences also seen between two production copies.
    pub noise: Vec<Difference>,
}

impl Outcome {
    /// An outcome of replaying request `id` to `target`, nothing known yet.
    pub fn new(id: &str, method: &str, path: &str, target: &str) -> Outcome {
        Outcome {
            id: id.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            target: target.to_string(),
            production_status: None,
            candidate_status: None,
            production_latency_ms: None,
            candidate_latency_ms: None,
            error: None,
            not_compared: None,
            compared_body_bytes: None,
            baseline_error: None,
            differences: Vec::new(),
            noise: Vec::new(),
        }
    }
}

/// What a target did over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TargetStats {
    /// `candidate` or `baseline`.
    pub role: &'static str,
    /// Requests sent (or attempted) to it.
    pub requests: usize,
    /// Requests it did not answer (refused connection, timeout, bad response, ...).
    pub errors: usize,
}

/// Examples kept per endpoint; the rest are only counted.
pub(super) const MAX_EXAMPLES: usize = 100;
/// Distinct error messages kept; further ones are counted under [`OTHER_ERRORS`].
const MAX_ERROR_KINDS: usize = 50;
const OTHER_ERRORS: &str = "(other errors)";

/// Counters for one endpoint ("GET /api/users/{id}").
#[derive(Debug, Default)]
pub(super) struct EndpointStats {
    pub(super) method: String,
    pub(super) route: String,
    pub(super) requests: usize,
    pub(super) different: usize,
    pub(super) errors: usize,
    pub(super) not_compared: usize,
    /// Compared only up to a cut (equal that far).
    pub(super) partial: usize,
    pub(super) production_latency_ms: Vec<f64>,
    pub(super) candidate_latency_ms: Vec<f64>,
    /// Field key -> requests of this endpoint with that real difference.
    pub(super) fields: BTreeMap<String, usize>,
    pub(super) examples: Vec<Outcome>,
    pub(super) examples_dropped: usize,
}

impl EndpointStats {
    /// Compared in full and equal.
    pub(super) fn equal(&self) -> usize {
        self.requests - self.different - self.errors - self.not_compared - self.partial
    }

    pub(super) fn different_pct(&self) -> f64 {
        pct(self.different, self.requests)
    }
}

/// Requests in which a field key showed up, as a real difference or as noise.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct FieldStats {
    pub(super) real: usize,
    pub(super) noise: usize,
}

/// Aggregates outcomes and renders them. Only counters, latencies and up to
/// [`MAX_EXAMPLES`] outcomes per endpoint are kept, so long replays stay small.
#[derive(Debug, Default)]
pub struct Report {
    pub(super) title: String,
    pub(super) targets: BTreeSet<String>,
    pub(super) total: usize,
    pub(super) different: usize,
    pub(super) errors: usize,
    /// Answered but not compared, by reason (see [`Outcome::not_compared`]).
    pub(super) not_compared: BTreeMap<String, usize>,
    /// Equal as far as a cut body allowed (see [`Outcome::compared_body_bytes`]).
    pub(super) partial: usize,
    /// Smallest number of body bytes a partial comparison covered.
    pub(super) partial_min_bytes: Option<u64>,
    /// Different requests whose baseline failed: their differences were not checked for noise.
    pub(super) unverified: usize,
    /// Requests whose only differences were noise.
    pub(super) noise_only: usize,
    /// Requests and errors per target (candidates and the baseline).
    pub(super) target_stats: BTreeMap<String, TargetStats>,
    /// Input and replay counters (`input_records`, `replay_gaps_capped`, ...), summed over batches.
    pub(super) counters: BTreeMap<String, u64>,
    pub(super) skipped: BTreeMap<String, usize>,
    pub(super) error_kinds: BTreeMap<String, usize>,
    pub(super) endpoints: BTreeMap<String, EndpointStats>,
    pub(super) fields: BTreeMap<String, FieldStats>,
}

impl Report {
    pub fn new(title: String) -> Report {
        Report {
            title,
            ..Report::default()
        }
    }

    /// Counts one outcome. An outcome with an error counts as an error only,
    /// whatever differences it carries; otherwise it is different when it has real
    /// differences, then partial when a cut body was compared only in part, then not
    /// compared when it says so, and equal only when it was compared in full and has
    /// no real differences (noise alone is equal).
    pub fn add(&mut self, outcome: Outcome) {
        self.total += 1;
        self.targets.insert(outcome.target.clone());
        let target = self.target_stats.entry(outcome.target.clone()).or_insert_with(|| TargetStats { role: "candidate", ..TargetStats::default() });
        target.requests += 1;
        target.errors += usize::from(outcome.error.is_some());
        let name = endpoint_name(&outcome.method, &outcome.path);
        let ep = self.endpoints.entry(name).or_insert_with(|| EndpointStats {
            method: outcome.method.to_ascii_uppercase(),
            route: route(&outcome.path),
            ..EndpointStats::default()
        });
        ep.requests += 1;
        for (from, to) in [
            (outcome.production_latency_ms, &mut ep.production_latency_ms),
            (outcome.candidate_latency_ms, &mut ep.candidate_latency_ms),
        ] {
            if let Some(ms) = from.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                to.push(ms);
            }
        }

        // Count each key once per request so one array of 500 changed
        // elements doesn't outweigh 500 requests.
        let real: BTreeSet<String> = outcome.differences.iter().map(Difference::key).collect();
        let noise: BTreeSet<String> = outcome.noise.iter().map(Difference::key).collect();
        for key in &noise {
            self.fields.entry(key.clone()).or_default().noise += 1;
        }

        let interesting = if let Some(error) = &outcome.error {
            self.errors += 1;
            ep.errors += 1;
            count_error_kind(&mut self.error_kinds, error);
            true
        } else if !real.is_empty() {
            self.different += 1;
            ep.different += 1;
            self.unverified += usize::from(outcome.baseline_error.is_some());
            for key in &real {
                self.fields.entry(key.clone()).or_default().real += 1;
                *ep.fields.entry(key.clone()).or_default() += 1;
            }
            true
        } else if let Some(n) = outcome.compared_body_bytes {
            self.partial += 1;
            ep.partial += 1;
            self.partial_min_bytes = Some(self.partial_min_bytes.map_or(n, |m| m.min(n)));
            true
        } else if let Some(reason) = &outcome.not_compared {
            ep.not_compared += 1;
            *self.not_compared.entry(reason.clone()).or_default() += 1;
            false
        } else {
            if !noise.is_empty() {
                self.noise_only += 1;
            }
            false
        };
        if interesting {
            if ep.examples.len() < MAX_EXAMPLES {
                ep.examples.push(outcome);
            } else {
                ep.examples_dropped += 1;
            }
        }
    }

    /// Counts a request the safety filter did not replay, by reason
    /// (e.g. "method not allowed: POST").
    pub fn count_skipped(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }

    /// Counts one request sent to the baseline and whether it failed.
    pub fn add_baseline(&mut self, target: &str, error: Option<&str>) {
        let stats = self.target_stats.entry(target.to_string()).or_insert_with(|| TargetStats { role: "baseline", ..TargetStats::default() });
        stats.requests += 1;
        if let Some(error) = error {
            stats.errors += 1;
            count_error_kind(&mut self.error_kinds, &format!("baseline: {error}"));
        }
    }

    /// Adds `n` to a named input or replay counter.
    pub fn add_counter(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_string()).or_default() += n;
    }

    /// Problems with the run as a whole: a target (candidate or baseline) that answered
    /// none of its requests.
    pub fn run_errors(&self) -> Vec<String> {
        self.target_stats
            .iter()
            .filter(|(_, t)| t.requests > 0 && t.errors == t.requests)
            .map(|(url, t)| {
                let effect = if t.role == "baseline" { ": noise was not removed from any difference" } else { "" };
                format!("{} {url} answered none of its {} request(s){effect}", t.role, t.requests)
            })
            .collect()
    }

    /// Why `--fail-on-diff` fails this run (empty: it passes): differences, requests a
    /// candidate did not answer, and run errors (a dead baseline).
    pub fn gate_failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.different > 0 {
            out.push(format!("{} different", self.different));
        }
        if self.errors > 0 {
            out.push(format!("{} not answered by the candidate", self.errors));
        }
        out.extend(self.run_errors().into_iter().filter(|e| e.starts_with("baseline")));
        out
    }

    /// Outcomes added (skipped requests not included).
    pub fn total(&self) -> usize {
        self.total
    }

    /// Outcomes without error that had real differences.
    pub fn with_differences(&self) -> usize {
        self.different
    }

    /// Outcomes whose replay failed.
    pub fn errors(&self) -> usize {
        self.errors
    }

    /// Compared in full and equal.
    pub(super) fn equal(&self) -> usize {
        self.total - self.different - self.errors - self.partial - self.not_compared_total()
    }

    pub(super) fn not_compared_total(&self) -> usize {
        self.not_compared.values().sum()
    }

    pub(super) fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    /// Endpoints with the most differences (then errors, then requests) first.
    pub(super) fn endpoints_by_interest(&self) -> Vec<(&String, &EndpointStats)> {
        let mut eps: Vec<_> = self.endpoints.iter().collect();
        eps.sort_by(|a, b| {
            (b.1.different, b.1.errors, b.1.requests)
                .cmp(&(a.1.different, a.1.errors, a.1.requests))
                .then(a.0.cmp(b.0))
        });
        eps
    }

    /// Field keys with the most real differences first, then by noise.
    pub(super) fn fields_by_count(&self) -> Vec<(&String, FieldStats)> {
        let mut fields: Vec<_> = self.fields.iter().map(|(k, v)| (k, *v)).collect();
        fields.sort_by(|a, b| {
            (b.1.real, b.1.noise)
                .cmp(&(a.1.real, a.1.noise))
                .then(a.0.cmp(b.0))
        });
        fields
    }

    /// All production (or candidate) latencies across endpoints.
    pub(super) fn all_latencies(&self, candidate: bool) -> Vec<f64> {
        self.endpoints
            .values()
            .flat_map(|e| {
                if candidate {
                    &e.candidate_latency_ms
                } else {
                    &e.production_latency_ms
                }
            })
            .copied()
            .collect()
    }

    /// Plain-text summary for the terminal: totals, differences by endpoint
    /// and by field key, latency percentiles per endpoint.
    pub fn terminal_summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        if !self.targets.is_empty() {
            let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
            let _ = writeln!(out, "candidate: {}", targets.join(", "));
        }
        let _ = writeln!(
            out,
            "replayed {}  equal {}  different {} ({:.1}%)  partly compared {}  not compared {}  errors {}  skipped {}",
            self.total,
            self.equal(),
            self.different,
            pct(self.different, self.total),
            self.partial,
            self.not_compared_total(),
            self.errors,
            self.skipped_total()
        );
        for error in self.run_errors() {
            let _ = writeln!(out, "  RUN ERROR: {error}");
        }
        if self.noise_only > 0 {
            let _ = writeln!(out, "  {} equal only after removing noise", self.noise_only);
        }
        if self.unverified > 0 {
            let _ = writeln!(out, "  {} different without a noise check: the baseline failed for them", self.unverified);
        }
        if let Some(min) = self.partial_min_bytes {
            let _ = writeln!(
                out,
                "  partly compared {}: a body was cut (at capture or past the replayer's limit); equal in the first {min}+ body bytes, not comparable past them",
                self.partial
            );
        }
        for (reason, n) in &self.not_compared {
            let _ = writeln!(out, "  not compared {n}: {reason}");
        }
        for (reason, n) in &self.skipped {
            let _ = writeln!(out, "  skipped {n}: {reason}");
        }
        for (error, n) in &self.error_kinds {
            let _ = writeln!(out, "  error {n}: {error}");
        }
        for (url, t) in &self.target_stats {
            let _ = writeln!(out, "  {} {url}: {} request(s), {} error(s)", t.role, t.requests, t.errors);
        }
        if !self.counters.is_empty() {
            let counters: Vec<String> = self.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "  counters {}", counters.join(" "));
        }

        let eps = self.endpoints_by_interest();
        let w = eps
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(8);
        if !eps.is_empty() {
            let _ = writeln!(out, "\nDifferences by endpoint");
            let _ = writeln!(
                out,
                "  {:<w$}  {:>8}  {:>8}  {:>9}  {:>6}  {:>12}  {:>6}",
                "ENDPOINT", "REQUESTS", "EQUAL", "DIFFERENT", "PARTLY", "NOT COMPARED", "ERRORS"
            );
            for (name, ep) in &eps {
                let _ = writeln!(
                    out,
                    "  {:<w$}  {:>8}  {:>8}  {:>9}  {:>6}  {:>12}  {:>6}   {:.1}% different",
                    name,
                    ep.requests,
                    ep.equal(),
                    ep.different,
                    ep.partial,
                    ep.not_compared,
                    ep.errors,
                    ep.different_pct()
                );
            }
        }

        let fields = self.fields_by_count();
        if !fields.is_empty() {
            let fw = fields
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0)
                .max(5);
            let _ = writeln!(
                out,
                "\nDifferences by field (requests; noise counted separately)"
            );
            let _ = writeln!(out, "  {:<fw$}  {:>8}  {:>8}", "FIELD", "REAL", "NOISE");
            for (key, f) in fields {
                let _ = writeln!(out, "  {:<fw$}  {:>8}  {:>8}", key, f.real, f.noise);
            }
        }

        if !eps.is_empty() {
            let _ = writeln!(
                out,
                "\nLatency ms, production / candidate (nearest-rank percentiles)"
            );
            let _ = writeln!(
                out,
                "  {:<w$}  {:>17}  {:>17}  {:>17}  {:>17}",
                "ENDPOINT", "P50", "P90", "P99", "MAX"
            );
            let mut rows: Vec<(String, Latency, Latency)> = eps
                .iter()
                .map(|(n, e)| {
                    (
                        n.to_string(),
                        Latency::of(&e.production_latency_ms),
                        Latency::of(&e.candidate_latency_ms),
                    )
                })
                .collect();
            if eps.len() > 1 {
                rows.push((
                    "(all)".to_string(),
                    Latency::of(&self.all_latencies(false)),
                    Latency::of(&self.all_latencies(true)),
                ));
            }
            for (name, p, c) in rows {
                let pair = |a: Option<f64>, b: Option<f64>| format!("{} / {}", ms(a), ms(b));
                let _ = writeln!(
                    out,
                    "  {:<w$}  {:>17}  {:>17}  {:>17}  {:>17}",
                    name,
                    pair(p.p50, c.p50),
                    pair(p.p90, c.p90),
                    pair(p.p99, c.p99),
                    pair(p.max, c.max)
                );
            }
        }
        out
    }

    /// Machine-readable report; see [`JsonReport`] for the field names.
    pub fn to_json(&self) -> String {
        let endpoints = self
            .endpoints
            .iter()
            .map(|(name, e)| JsonEndpoint {
                endpoint: name,
                method: &e.method,
                route: &e.route,
                requests: e.requests,
                equal: e.equal(),
                different: e.different,
                partial: e.partial,
                not_compared: e.not_compared,
                errors: e.errors,
                different_pct: e.different_pct(),
                production_latency_ms: Latency::of(&e.production_latency_ms),
                candidate_latency_ms: Latency::of(&e.candidate_latency_ms),
                fields: &e.fields,
                examples_dropped: e.examples_dropped,
            })
            .collect();
        let report = JsonReport {
            title: &self.title,
            targets: self.targets.iter().map(String::as_str).collect(),
            totals: JsonTotals {
                replayed: self.total,
                equal: self.equal(),
                different: self.different,
                partial: self.partial,
                not_compared: self.not_compared_total(),
                errors: self.errors,
                noise_only: self.noise_only,
                unverified: self.unverified,
                skipped: self.skipped_total(),
            },
            run_errors: self.run_errors(),
            per_target: self.target_stats.iter().map(|(url, t)| JsonTarget { target: url, stats: t }).collect(),
            counters: &self.counters,
            not_compared: &self.not_compared,
            skipped: &self.skipped,
            errors: &self.error_kinds,
            latency_ms: JsonLatency {
                production: Latency::of(&self.all_latencies(false)),
                candidate: Latency::of(&self.all_latencies(true)),
            },
            endpoints,
            fields: self
                .fields_by_count()
                .into_iter()
                .map(|(key, f)| JsonField {
                    key,
                    real: f.real,
                    noise: f.noise,
                })
                .collect(),
            examples: self.endpoints.values().flat_map(|e| &e.examples).collect(),
        };
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One self-contained HTML page (inline CSS and SVG, no scripts).
    pub fn to_html(&self) -> String {
        super::html::render(self)
    }
}

/// The JSON report. Field names are stable; new fields may be added.
#[derive(Serialize)]
struct JsonReport<'a> {
    /// Report title as given to [`Report::new`].
    title: &'a str,
    /// Candidate base URLs seen in outcomes, sorted.
    targets: Vec<&'a str>,
    totals: JsonTotals,
    /// Targets (candidate or baseline) that answered none of their requests.
    run_errors: Vec<String>,
    /// Requests and errors per target, candidates and baseline.
    per_target: Vec<JsonTarget<'a>>,
    /// Input and replay counters, e.g. `input_records`, `input_null_values`,
    /// `input_incomplete_parts`, `replay_gaps_capped`, `replay_connections_reopened`.
    counters: &'a BTreeMap<String, u64>,
    /// Answered requests not compared, by reason.
    not_compared: &'a BTreeMap<String, usize>,
    /// Requests not replayed, by reason.
    skipped: &'a BTreeMap<String, usize>,
    /// Failed replays by error message (at most 50 distinct, the rest under "(other errors)").
    errors: &'a BTreeMap<String, usize>,
    /// Latency over all endpoints.
    latency_ms: JsonLatency,
    /// One entry per endpoint, sorted by name.
    endpoints: Vec<JsonEndpoint<'a>>,
    /// Field keys (see [`Difference::key`]) by number of requests, most first.
    fields: Vec<JsonField<'a>>,
    /// Outcomes with differences or errors, at most 100 per endpoint, in
    /// the order added; serialised as [`Outcome`].
    examples: Vec<&'a Outcome>,
}

#[derive(Serialize)]
struct JsonTarget<'a> {
    target: &'a str,
    #[serde(flatten)]
    stats: &'a TargetStats,
}

#[derive(Serialize)]
struct JsonTotals {
    /// Outcomes added.
    replayed: usize,
    /// Compared in full: no real differences.
    equal: usize,
    /// Replayed without error, with real differences.
    different: usize,
    /// A body was cut: equal in the part that could be compared, unknown past it.
    partial: usize,
    /// Answered, not compared (no --compare, no production response, ...).
    not_compared: usize,
    /// Replays that failed.
    errors: usize,
    /// Equal requests that had noise differences.
    noise_only: usize,
    /// Different requests whose baseline failed (noise not removed).
    unverified: usize,
    /// Requests not replayed (sum of `skipped`).
    skipped: usize,
}

#[derive(Serialize)]
struct JsonLatency {
    production: Latency,
    candidate: Latency,
}

#[derive(Serialize)]
struct JsonEndpoint<'a> {
    /// "METHOD route", e.g. "GET /api/users/{id}".
    endpoint: &'a str,
    method: &'a str,
    /// Path with id-like segments replaced by `{id}`.
    route: &'a str,
    requests: usize,
    equal: usize,
    different: usize,
    partial: usize,
    not_compared: usize,
    errors: usize,
    /// `different / requests * 100`.
    different_pct: f64,
    production_latency_ms: Latency,
    candidate_latency_ms: Latency,
    /// Field key -> requests of this endpoint with that real difference.
    fields: &'a BTreeMap<String, usize>,
    /// Examples beyond the 100 kept.
    examples_dropped: usize,
}

#[derive(Serialize)]
struct JsonField<'a> {
    /// See [`Difference::key`].
    key: &'a str,
    /// Requests with this real difference.
    real: usize,
    /// Requests where this difference was noise.
    noise: usize,
}

/// Nearest-rank latency percentiles in milliseconds; `null` without samples.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Latency {
    pub(super) count: usize,
    pub(super) p50: Option<f64>,
    pub(super) p90: Option<f64>,
    pub(super) p99: Option<f64>,
    pub(super) max: Option<f64>,
}

impl Latency {
    pub(super) fn of(samples: &[f64]) -> Latency {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Latency {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied(),
        }
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at
/// least `p`% of samples at or below it. Always an observed value.
pub(super) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub(super) fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Milliseconds for display: "-" when unknown.
pub(super) fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// Counts an error by its message (at most [`MAX_ERROR_KINDS`] distinct ones).
fn count_error_kind(kinds: &mut BTreeMap<String, usize>, error: &str) {
    let kind = truncate(error, 200);
    let key = if kinds.len() < MAX_ERROR_KINDS || kinds.contains_key(&kind) { kind } else { OTHER_ERRORS.to_string() };
    *kinds.entry(key).or_default() += 1;
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// Groups requests by method and route so `/users/1` and `/users/2` count
/// as one endpoint.
pub(super) fn endpoint_name(method: &str, path: &str) -> String {
    format!("{} {}", method.to_ascii_uppercase(), route(path))
}

/// The path without query, with id-like segments (numbers, UUIDs, long hex)
/// replaced by `{id}`.
pub(super) fn route(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return "/".to_string();
    }
    path.split('/')
        .map(|seg| if is_id(seg) { "{id}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_id(seg: &str) -> bool {
    let hex_or_dash = |c: char| c.is_ascii_hexdigit() || c == '-';
    let digits = !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit());
    let uuid = seg.len() == 36 && seg.chars().all(hex_or_dash) && seg.matches('-').count() == 4;
    let long_hex = seg.len() >= 16 && seg.chars().all(|c| c.is_ascii_hexdigit());
    digits || uuid || long_hex
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An outcome with the given differences; latency in ms.
    pub(crate) fn outcome(
        method: &str,
        path: &str,
        differences: Vec<Difference>,
        latency: (f64, f64),
    ) -> Outcome {
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
        Difference::JsonField {
            path: format!("$.items[{i}].name"),
            production: Some("\"old\"".into()),
            candidate: Some(value.into()),
        }
    }

    #[test]
    fn percentiles_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let l = Latency::of(&samples);
        assert_eq!(
            l,
            Latency {
                count: 100,
                p50: Some(50.0),
                p90: Some(90.0),
                p99: Some(99.0),
                max: Some(100.0)
            }
        );
        let l = Latency::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(
            (l.p50, l.p90, l.p99, l.max),
            (Some(2.0), Some(10.0), Some(10.0), Some(10.0))
        );
        assert_eq!(Latency::of(&[]).p50, None);
        assert_eq!(percentile(&[7.0], 1.0), Some(7.0));
    }

    #[test]
    fn routes_group_ids() {
        assert_eq!(
            endpoint_name("get", "/api/users/42?x=1"),
            "GET /api/users/{id}"
        );
        assert_eq!(
            route("/o/123e4567-e89b-12d3-a456-426614174000/items"),
            "/o/{id}/items"
        );
        assert_eq!(route("/api/v2/users"), "/api/v2/users");
        assert_eq!(route(""), "/");
    }

    #[test]
    fn aggregates_by_endpoint_and_field() {
        let mut r = Report::new("t".into());
        let status = Difference::Status {
            production: 200,
            candidate: 500,
        };
        r.add(outcome("GET", "/api/users", vec![], (1.0, 2.0)));
        r.add(outcome(
            "GET",
            "/api/users",
            vec![name_change(0, "\"a\""), name_change(3, "\"b\"")],
            (1.0, 2.0),
        ));
        r.add(outcome(
            "GET",
            "/api/users/7",
            vec![status.clone(), name_change(1, "1")],
            (1.0, 2.0),
        ));
        let mut noisy = outcome("GET", "/api/users/8", vec![], (1.0, 2.0));
        noisy.noise = vec![name_change(0, "\"x\"")];
        r.add(noisy);
        let mut failed = outcome("POST", "/api/orders", vec![], (1.0, 0.0));
        failed.error = Some("connect: connection refused".into());
        failed.candidate_latency_ms = None;
        r.add(failed);
        r.count_skipped("method not allowed: DELETE");
        r.count_skipped("method not allowed: DELETE");
        r.count_skipped("method not allowed: PATCH");

        assert_eq!(
            (r.total(), r.with_differences(), r.errors(), r.equal()),
            (5, 2, 1, 2)
        );
        assert_eq!(r.noise_only, 1);
        assert_eq!(r.skipped_total(), 3);
        assert_eq!(r.skipped["method not allowed: DELETE"], 2);
        let users = &r.endpoints["GET /api/users"];
        assert_eq!((users.requests, users.different, users.errors), (2, 1, 0));
        let by_id = &r.endpoints["GET /api/users/{id}"];
        assert_eq!((by_id.requests, by_id.different), (2, 1));
        assert_eq!(by_id.fields["status"], 1);
        assert_eq!(r.endpoints["POST /api/orders"].errors, 1);
        // Two changed elements in one request count once for the key.
        let f = r.fields["json:$.items[*].name"];
        assert_eq!((f.real, f.noise), (2, 1));
        assert_eq!(r.fields["status"].real, 1);
        assert_eq!(r.error_kinds["connect: connection refused"], 1);
        // Examples: the two different requests and the error.
        let examples: usize = r.endpoints.values().map(|e| e.examples.len()).sum();
        assert_eq!(examples, 3);

        let text = r.terminal_summary();
        assert!(
            text.contains("replayed 5  equal 2  different 2 (40.0%)  partly compared 0  not compared 0  errors 1  skipped 3"),
            "{text}"
        );
        assert!(text.contains("GET /api/users/{id}"), "{text}");
        assert!(text.contains("json:$.items[*].name"), "{text}");
        assert!(
            text.contains("skipped 2: method not allowed: DELETE"),
            "{text}"
        );
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
        assert_eq!((r.equal(), r.not_compared_total(), r.partial), (1, 1, 1), "only the fully compared one is equal");
        assert!(r.gate_failures().is_empty(), "not compared and partly compared are not failures");
        let text = r.terminal_summary();
        assert!(text.contains("equal 1  different 0 (0.0%)  partly compared 1  not compared 1"), "{text}");
        assert!(text.contains("not compared 1: no production response captured"), "{text}");
        assert!(text.contains("equal in the first 1000000+ body bytes, not comparable past them"), "{text}");

        // A dead candidate: every request failed.
        let mut dead = Report::new("t".into());
        for path in ["/a", "/b"] {
            let mut o = outcome("GET", path, vec![], (1.0, 1.0));
            o.error = Some("connect: connection refused".into());
            dead.add(o);
        }
        assert_eq!(dead.gate_failures(), ["2 not answered by the candidate"]);
        assert_eq!(dead.run_errors(), ["candidate http://127.0.0.1:8081 answered none of its 2 request(s)"]);
        let json: serde_json::Value = serde_json::from_str(&dead.to_json()).unwrap();
        assert_eq!(json["per_target"][0]["errors"], 2);
        assert_eq!(json["run_errors"].as_array().unwrap().len(), 1);
    }

    /// Issue 11, bug 2 ("a dead baseline silently turns noise cancellation off"),
    /// report side: baseline errors are counted per target, a baseline that answered
    /// nothing is a run error and fails the gate, and differences it could not check
    /// are marked.
    #[test]
    fn dead_baseline_silently_turns_noise_cancellation_off() {
        let mut r = Report::new("t".into());
        for i in 0..3 {
            r.add_baseline("http://127.0.0.1:9", Some("connect: connection refused"));
            let mut o = outcome("GET", "/api/user", vec![name_change(i, "\"x\"")], (1.0, 1.0));
            o.baseline_error = Some("connect: connection refused".into());
            r.add(o);
        }
        assert_eq!(r.unverified, 3);
        assert_eq!(r.run_errors(), ["baseline http://127.0.0.1:9 answered none of its 3 request(s): noise was not removed from any difference"]);
        assert_eq!(r.gate_failures().len(), 2, "{:?}", r.gate_failures());
        let text = r.terminal_summary();
        assert!(text.contains("RUN ERROR: baseline http://127.0.0.1:9"), "{text}");
        assert!(text.contains("3 different without a noise check"), "{text}");
        assert!(text.contains("baseline http://127.0.0.1:9: 3 request(s), 3 error(s)"), "{text}");
        assert!(text.contains("error 3: baseline: connect: connection refused"), "{text}");
        // A baseline that answers some requests is not a run error.
        r.add_baseline("http://127.0.0.1:9", None);
        assert!(r.run_errors().is_empty());
    }

    #[test]
    fn examples_are_capped_per_endpoint() {
        let mut r = Report::new("t".into());
        for i in 0..(MAX_EXAMPLES + 5) {
            r.add(outcome("GET", "/a", vec![name_change(i, "1")], (1.0, 1.0)));
        }
        r.add(outcome("GET", "/b", vec![name_change(0, "1")], (1.0, 1.0)));
        assert_eq!(r.endpoints["GET /a"].examples.len(), MAX_EXAMPLES);
        assert_eq!(r.endpoints["GET /a"].examples_dropped, 5);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["examples"].as_array().unwrap().len(), MAX_EXAMPLES + 1);
    }

    #[test]
    fn json_parses_back_with_totals() {
        let mut r = Report::new("nightly".into());
        for ms in 1..=10 {
            r.add(outcome(
                "GET",
                "/api/users",
                vec![],
                (f64::from(ms), f64::from(ms) * 2.0),
            ));
        }
        r.add(outcome(
            "GET",
            "/api/users",
            vec![Difference::Status {
                production: 200,
                candidate: 404,
            }],
            (1.0, 1.0),
        ));
        r.count_skipped("method not allowed: POST");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["title"], "nightly");
        assert_eq!(json["totals"]["replayed"], 11);
        assert_eq!(json["totals"]["equal"], 10);
        assert_eq!(json["totals"]["different"], 1);
        assert_eq!(json["totals"]["errors"], 0);
        assert_eq!(json["totals"]["skipped"], 1);
        assert_eq!(json["skipped"]["method not allowed: POST"], 1);
        let ep = &json["endpoints"][0];
        assert_eq!(ep["endpoint"], "GET /api/users");
        assert_eq!(ep["requests"], 11);
        assert_eq!(ep["production_latency_ms"]["max"], 10.0);
        assert_eq!(ep["candidate_latency_ms"]["p50"], 10.0);
        assert_eq!(json["fields"][0]["key"], "status");
        assert_eq!(
            json["examples"][0]["differences"][0]["Status"]["candidate"],
            404
        );
    }
}
