//! The report model: outcomes aggregated with bounded memory (counters, latency
//! histograms, capped maps and examples), mergeable across replayers. Renderers work
//! from its [`ReportView`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::diff::DiffKey;
use super::latency::Latencies;
use super::outcome::{ErrorKind, Failure, Outcome, OutcomeClass};
use super::risk::RiskCounts;
use super::view::{self, ReportView};

/// Examples kept per endpoint; the rest are only counted.
pub const MAX_EXAMPLES: usize = 100;
/// Examples kept over all endpoints.
pub const MAX_EXAMPLES_TOTAL: usize = 1000;
/// Differences kept per example (the rest are counted in `differences_dropped`).
pub const MAX_EXAMPLE_DIFFERENCES: usize = 50;
/// Endpoints tracked one by one; requests of further ones count under [`OTHER_ENDPOINTS`].
pub const MAX_ENDPOINTS: usize = 500;
pub const OTHER_ENDPOINTS: &str = "(other endpoints)";
/// Field keys tracked over the report; further ones are counted in `fields_dropped`.
pub const MAX_FIELDS: usize = 1000;
/// Field keys tracked per endpoint.
pub const MAX_ENDPOINT_FIELDS: usize = 100;
/// Distinct reasons kept in `not_compared` and `skipped`; the rest count under [`OTHER_REASONS`].
pub const MAX_REASONS: usize = 50;
pub const OTHER_REASONS: &str = "(other reasons)";

/// Whether a target is a candidate or the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Candidate,
    Baseline,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Candidate => "candidate",
            Role::Baseline => "baseline",
        }
    }
}

/// What a target did over the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TargetStats {
    pub(super) role: Role,
    /// Requests sent (or attempted) to it.
    pub(super) requests: u64,
    /// Requests it did not answer.
    pub(super) errors: u64,
}

/// Failures of one kind at one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ErrorStats {
    pub(super) count: u64,
    /// The first message of this kind.
    pub(super) example: String,
}

/// Counters for one endpoint ("GET /api/users/{id}").
#[derive(Clone, Debug, Default)]
pub(super) struct EndpointStats {
    pub(super) method: String,
    pub(super) route: String,
    pub(super) requests: u64,
    pub(super) different: u64,
    pub(super) errors: u64,
    pub(super) not_compared: u64,
    /// Compared only up to a cut (equal that far).
    pub(super) partial: u64,
    /// Different requests by their highest risk.
    pub(super) risk: RiskCounts,
    pub(super) production_latency: Latencies,
    pub(super) candidate_latency: Latencies,
    /// Field key -> requests of this endpoint with that real difference.
    pub(super) fields: BTreeMap<DiffKey, u64>,
    pub(super) examples: Vec<Outcome>,
    pub(super) examples_dropped: u64,
}

impl EndpointStats {
    /// Compared in full and equal.
    pub(super) fn equal(&self) -> u64 {
        self.requests - self.different - self.errors - self.not_compared - self.partial
    }
}

/// Requests in which a field key showed up, as a real difference (by risk) or as noise.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct FieldStats {
    pub(super) real: RiskCounts,
    pub(super) noise: u64,
}

/// Which Kafka records a replay consumed, per partition as sorted disjoint half-open
/// offset ranges, and how many it (or the replayers whose reports were merged)
/// consumed more than once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaCoverage {
    pub topic: String,
    /// Partition -> `[from, to)` ranges.
    pub partitions: BTreeMap<i32, Vec<(i64, i64)>>,
    /// Records consumed again after an earlier consumption (at-least-once redelivery).
    pub duplicate_records: u64,
}

impl KafkaCoverage {
    /// Adds records `[from, to)` of `partition`; the part already covered counts as duplicates.
    pub fn add(&mut self, partition: i32, from: i64, to: i64) {
        if to <= from {
            return;
        }
        let ranges = self.partitions.entry(partition).or_default();
        let overlap: i64 = ranges.iter().map(|&(a, b)| (b.min(to) - a.max(from)).max(0)).sum();
        self.duplicate_records += overlap as u64;
        let (mut from, mut to) = (from, to);
        ranges.retain(|&(a, b)| {
            if b < from || a > to {
                return true;
            }
            (from, to) = (from.min(a), to.max(b));
            false
        });
        let at = ranges.partition_point(|&(a, _)| a < from);
        ranges.insert(at, (from, to));
    }

    /// Records covered (each counted once).
    pub fn records(&self) -> u64 {
        self.partitions.values().flatten().map(|(a, b)| (b - a) as u64).sum()
    }

    pub fn merge(&mut self, other: &KafkaCoverage) {
        if self.topic.is_empty() {
            self.topic = other.topic.clone();
        }
        for (&p, ranges) in &other.partitions {
            for &(a, b) in ranges {
                self.add(p, a, b);
            }
        }
        self.duplicate_records += other.duplicate_records;
    }
}

/// Aggregates outcomes. Memory is bounded whatever the number of requests: counters,
/// two latency histograms per endpoint, at most [`MAX_ENDPOINTS`] endpoints,
/// [`MAX_FIELDS`] field keys, [`MAX_REASONS`] reasons, and
/// [`MAX_EXAMPLES_TOTAL`] examples.
#[derive(Debug, Default)]
pub struct Report {
    pub(super) title: String,
    pub(super) targets: BTreeSet<String>,
    pub(super) total: u64,
    pub(super) different: u64,
    pub(super) errors: u64,
    /// Answered but not compared, by reason (see [`Outcome::not_compared`]).
    pub(super) not_compared: BTreeMap<String, u64>,
    /// Equal as far as a cut body allowed (see [`Outcome::compared_body_bytes`]).
    pub(super) partial: u64,
    /// Smallest number of body bytes a partial comparison covered.
    pub(super) partial_min_bytes: Option<u64>,
    /// Different requests whose baseline failed: their differences were not checked for noise.
    pub(super) unverified: u64,
    /// Requests whose only differences were noise.
    pub(super) noise_only: u64,
    /// Different requests by the highest risk of their real differences.
    pub(super) risk: RiskCounts,
    /// Requests and errors per target (candidates and the baseline).
    pub(super) target_stats: BTreeMap<String, TargetStats>,
    /// Failures by target and kind.
    pub(super) error_kinds: BTreeMap<(String, ErrorKind), ErrorStats>,
    /// Input and replay counters (`input_records`, `replay_gaps_capped`, ...), summed over batches.
    pub(super) counters: BTreeMap<String, u64>,
    pub(super) skipped: BTreeMap<String, u64>,
    pub(super) endpoints: BTreeMap<String, EndpointStats>,
    pub(super) fields: BTreeMap<DiffKey, FieldStats>,
    /// Field keys seen past [`MAX_FIELDS`] (requests, not tracked one by one).
    pub(super) fields_dropped: u64,
    pub(super) examples_kept: usize,
    pub(super) kafka: Option<KafkaCoverage>,
}

impl Report {
    pub fn new(title: String) -> Report {
        Report { title, ..Report::default() }
    }

    pub fn set_title(&mut self, title: String) {
        self.title = title;
    }

    /// Counts one outcome (see [`Outcome::class`]).
    pub fn add(&mut self, mut outcome: Outcome) {
        self.total += 1;
        self.targets.insert(outcome.target.clone());
        let target = self.target_stats.entry(outcome.target.clone()).or_insert(TargetStats { role: Role::Candidate, requests: 0, errors: 0 });
        target.requests += 1;
        target.errors += u64::from(outcome.error.is_some());

        let endpoint = self.endpoint(&outcome.method, &outcome.path);
        let ep = self.endpoints.get_mut(&endpoint).expect("endpoint exists");
        ep.requests += 1;
        if let Some(ms) = outcome.production_latency_ms {
            ep.production_latency.record_ms(ms);
        }
        if let Some(ms) = outcome.candidate_latency_ms {
            ep.candidate_latency.record_ms(ms);
        }

        // Count each key once per request so one array of 500 changed
        // elements doesn't outweigh 500 requests.
        let noise: BTreeSet<DiffKey> = outcome.noise.iter().map(|d| d.key()).collect();
        for key in noise {
            if let Some(f) = field_entry(&mut self.fields, &mut self.fields_dropped, key) {
                f.noise += 1;
            }
        }
        let class = outcome.class();
        match class {
            OutcomeClass::Error => {
                self.errors += 1;
                ep.errors += 1;
                if let Some(failure) = &outcome.error {
                    count_failure(&mut self.error_kinds, &outcome.target, failure);
                }
            }
            OutcomeClass::Different => {
                self.different += 1;
                ep.different += 1;
                self.unverified += u64::from(outcome.baseline_error.is_some());
                let risk = outcome.risk().expect("different outcomes have differences");
                self.risk.add(risk, 1);
                ep.risk.add(risk, 1);
                let mut real: BTreeMap<DiffKey, super::Risk> = BTreeMap::new();
                for d in &outcome.differences {
                    let r = real.entry(d.key()).or_insert(d.risk);
                    *r = (*r).max(d.risk);
                }
                for (key, risk) in real {
                    if ep.fields.len() < MAX_ENDPOINT_FIELDS || ep.fields.contains_key(&key) {
                        *ep.fields.entry(key.clone()).or_default() += 1;
                    }
                    if let Some(f) = field_entry(&mut self.fields, &mut self.fields_dropped, key) {
                        f.real.add(risk, 1);
                    }
                }
            }
            OutcomeClass::Partial => {
                self.partial += 1;
                ep.partial += 1;
                self.partial_min_bytes = min_option(self.partial_min_bytes, outcome.compared_body_bytes);
            }
            OutcomeClass::NotCompared => {
                ep.not_compared += 1;
                count_reason(&mut self.not_compared, outcome.not_compared.as_deref().unwrap_or(""), 1);
            }
            OutcomeClass::Equal => self.noise_only += u64::from(!outcome.noise.is_empty()),
        }
        let interesting = matches!(class, OutcomeClass::Error | OutcomeClass::Different | OutcomeClass::Partial);
        if interesting {
            if ep.examples.len() < MAX_EXAMPLES && self.examples_kept < MAX_EXAMPLES_TOTAL {
                if outcome.differences.len() > MAX_EXAMPLE_DIFFERENCES {
                    outcome.differences_dropped += outcome.differences.len() - MAX_EXAMPLE_DIFFERENCES;
                    outcome.differences.truncate(MAX_EXAMPLE_DIFFERENCES);
                }
                outcome.noise.truncate(MAX_EXAMPLE_DIFFERENCES);
                ep.examples.push(outcome);
                self.examples_kept += 1;
            } else {
                ep.examples_dropped += 1;
            }
        }
    }

    /// The endpoint an outcome counts under (created if there is room).
    fn endpoint(&mut self, method: &str, path: &str) -> String {
        let mut name = endpoint_name(method, path);
        if !self.endpoints.contains_key(&name) && self.endpoints.len() >= MAX_ENDPOINTS {
            name = OTHER_ENDPOINTS.to_string();
        }
        self.endpoints.entry(name.clone()).or_insert_with(|| {
            let (method, route) = name.split_once(' ').map_or((String::new(), name.clone()), |(m, r)| (m.to_string(), r.to_string()));
            EndpointStats { method, route, ..EndpointStats::default() }
        });
        name
    }

    /// Counts a request the safety filter did not replay, by reason
    /// (e.g. "method DELETE not allowed").
    pub fn count_skipped(&mut self, reason: &str) {
        count_reason(&mut self.skipped, reason, 1);
    }

    /// Counts one request sent to the baseline and whether it failed.
    pub fn add_baseline(&mut self, target: &str, error: Option<&Failure>) {
        let stats = self.target_stats.entry(target.to_string()).or_insert(TargetStats { role: Role::Baseline, requests: 0, errors: 0 });
        stats.requests += 1;
        if let Some(failure) = error {
            stats.errors += 1;
            count_failure(&mut self.error_kinds, target, failure);
        }
    }

    /// Adds `n` to a named input or replay counter.
    pub fn add_counter(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_string()).or_default() += n;
    }

    /// Kafka records consumed (see [`KafkaCoverage`]).
    pub fn add_kafka_records(&mut self, topic: &str, partition: i32, from: i64, to: i64) {
        let kafka = self.kafka.get_or_insert_with(|| KafkaCoverage { topic: topic.to_string(), ..KafkaCoverage::default() });
        kafka.add(partition, from, to);
    }

    /// Outcomes added (skipped requests not included).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Outcomes without error that had real differences.
    pub fn with_differences(&self) -> u64 {
        self.different
    }

    /// Outcomes whose replay failed.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Compared in full and equal.
    pub fn equal(&self) -> u64 {
        self.total - self.different - self.errors - self.partial - self.not_compared.values().sum::<u64>()
    }

    /// The view every renderer works from.
    pub fn view(&self) -> ReportView {
        view::build(self)
    }

    /// Adds another replayer's report (of other records: nothing is deduplicated, but
    /// Kafka records consumed by both are counted in `duplicate_records`).
    pub fn merge(&mut self, other: Report) {
        self.targets.extend(other.targets);
        self.total += other.total;
        self.different += other.different;
        self.errors += other.errors;
        self.partial += other.partial;
        self.partial_min_bytes = min_option(self.partial_min_bytes, other.partial_min_bytes);
        self.unverified += other.unverified;
        self.noise_only += other.noise_only;
        self.risk.merge(&other.risk);
        for (reason, n) in other.not_compared {
            count_reason(&mut self.not_compared, &reason, n);
        }
        for (reason, n) in other.skipped {
            count_reason(&mut self.skipped, &reason, n);
        }
        for (url, t) in other.target_stats {
            let mine = self.target_stats.entry(url).or_insert(TargetStats { role: t.role, requests: 0, errors: 0 });
            mine.requests += t.requests;
            mine.errors += t.errors;
        }
        for (key, e) in other.error_kinds {
            self.error_kinds.entry(key).and_modify(|mine| mine.count += e.count).or_insert(e);
        }
        for (name, n) in other.counters {
            *self.counters.entry(name).or_default() += n;
        }
        for (key, f) in other.fields {
            if self.fields.len() < MAX_FIELDS || self.fields.contains_key(&key) {
                let mine = self.fields.entry(key).or_default();
                mine.real.merge(&f.real);
                mine.noise += f.noise;
            } else {
                self.fields_dropped += f.real.at_least(super::Risk::Low) + f.noise;
            }
        }
        self.fields_dropped += other.fields_dropped;
        for (name, e) in other.endpoints {
            let name = if self.endpoints.contains_key(&name) || self.endpoints.len() < MAX_ENDPOINTS { name } else { OTHER_ENDPOINTS.to_string() };
            let mine = self.endpoints.entry(name).or_insert_with(|| EndpointStats { method: e.method.clone(), route: e.route.clone(), ..EndpointStats::default() });
            mine.requests += e.requests;
            mine.different += e.different;
            mine.errors += e.errors;
            mine.not_compared += e.not_compared;
            mine.partial += e.partial;
            mine.risk.merge(&e.risk);
            mine.production_latency.merge(&e.production_latency);
            mine.candidate_latency.merge(&e.candidate_latency);
            for (key, n) in e.fields {
                if mine.fields.len() < MAX_ENDPOINT_FIELDS || mine.fields.contains_key(&key) {
                    *mine.fields.entry(key).or_default() += n;
                }
            }
            mine.examples_dropped += e.examples_dropped;
            for example in e.examples {
                if mine.examples.len() < MAX_EXAMPLES && self.examples_kept < MAX_EXAMPLES_TOTAL {
                    mine.examples.push(example);
                    self.examples_kept += 1;
                } else {
                    mine.examples_dropped += 1;
                }
            }
        }
        match (&mut self.kafka, other.kafka) {
            (Some(mine), Some(theirs)) => mine.merge(&theirs),
            (mine @ None, theirs) => *mine = theirs,
            _ => {}
        }
    }
}

/// The stats of field `key`, unless [`MAX_FIELDS`] keys are tracked already (then
/// the request is counted in `dropped`).
fn field_entry<'a>(fields: &'a mut BTreeMap<DiffKey, FieldStats>, dropped: &mut u64, key: DiffKey) -> Option<&'a mut FieldStats> {
    if fields.len() >= MAX_FIELDS && !fields.contains_key(&key) {
        *dropped += 1;
        return None;
    }
    Some(fields.entry(key).or_default())
}

fn min_option(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.into_iter().chain(b).min()
}

fn count_reason(map: &mut BTreeMap<String, u64>, reason: &str, n: u64) {
    let key = if map.len() < MAX_REASONS || map.contains_key(reason) { reason } else { OTHER_REASONS };
    *map.entry(key.to_string()).or_default() += n;
}

fn count_failure(kinds: &mut BTreeMap<(String, ErrorKind), ErrorStats>, target: &str, failure: &Failure) {
    kinds
        .entry((target.to_string(), failure.kind))
        .and_modify(|e| e.count += 1)
        .or_insert_with(|| ErrorStats { count: 1, example: super::diff::show(&failure.message) });
}

/// Groups requests by method and route so `/users/1` and `/users/2` count
/// as one endpoint.
pub fn endpoint_name(method: &str, path: &str) -> String {
    format!("{} {}", method.to_ascii_uppercase(), route(path))
}

/// The path without query, with id-like segments (numbers, UUIDs, long hex)
/// replaced by `{id}`.
pub fn route(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return "/".to_string();
    }
    path.split('/').map(|seg| if is_id(seg) { "{id}" } else { seg }).collect::<Vec<_>>().join("/")
}

fn is_id(seg: &str) -> bool {
    let hex_or_dash = |c: char| c.is_ascii_hexdigit() || c == '-';
    let digits = !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit());
    let uuid = seg.len() == 36 && seg.chars().all(hex_or_dash) && seg.matches('-').count() == 4;
    let long_hex = seg.len() >= 16 && seg.chars().all(|c| c.is_ascii_hexdigit());
    digits || uuid || long_hex
}
