//! Prometheus metrics and health checks over HTTP: `/metrics` (Prometheus text
//! format 0.0.4), `/healthz` (alive and making progress) and `/readyz` (ready).
//!
//! A command fills a `prometheus_client` registry of its own (the agent registers
//! [`agent::AgentMetrics`], the replayer [`replay::ReplayMetrics`]) and hands it with
//! a [`Health`] to [`serve`], which answers on its own thread until the returned
//! [`MetricsServer`] is dropped. Counters kept as plain numbers are exported as
//! [`Sample`]s by a collector at scrape time.

pub mod agent;
pub mod replay;
pub mod server;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry;
pub use server::{serve, MetricsError, MetricsServer};

/// Liveness and readiness of a command, shared with the server thread.
///
/// Alive means the work loop reported progress within `stall_after`; ready means
/// the command said so (the agent: programs attached and outputs initialised).
#[derive(Debug)]
pub struct Health {
    start: Instant,
    ready: AtomicBool,
    /// Milliseconds after `start` of the last progress report.
    progress_ms: AtomicU64,
    stall_after: Duration,
}

impl Health {
    pub fn new(stall_after: Duration) -> Health {
        Health { start: Instant::now(), ready: AtomicBool::new(false), progress_ms: AtomicU64::new(0), stall_after }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Called by the work loop each time it completes a round (the agent: each tick).
    pub fn progress(&self) {
        self.progress_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long there has been no progress, when that is longer than `stall_after`.
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        let since = self.start.elapsed().saturating_sub(last);
        (since > self.stall_after).then_some(since)
    }
}

/// Prometheus type of a [`Sample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Value of a [`Sample`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

/// One exported series.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Family name; counters get `_total` appended when encoded.
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub help: Cow<'static, str>,
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// Encodes samples family by family (all series of a family together, in order of
/// first appearance), as the text format requires.
pub fn encode_samples(samples: &[Sample], encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let mut families: Vec<(&Sample, Vec<&Sample>)> = Vec::new();
    for s in samples {
        match families.iter_mut().find(|(first, _)| first.name == s.name) {
            Some((_, members)) => members.push(s),
            None => families.push((s, vec![s])),
        }
    }
    for (first, members) in families {
        let kind = match first.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        };
        let mut family = encoder.encode_descriptor(&first.name, &first.help, None, kind)?;
        for s in members {
            let mut series = family.encode_family(&s.labels)?;
            match (s.kind, s.value) {
                (Kind::Counter, Value::Int(v)) => series.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                (Kind::Counter, Value::Float(v)) => series.encode_counter::<NoLabelSet, _, f64>(&v, None)?,
                (Kind::Gauge, Value::Int(v)) => series.encode_gauge(&v)?,
                (Kind::Gauge, Value::Float(v)) => series.encode_gauge(&v)?,
            }
        }
    }
    Ok(())
}

/// `name{labels} value` lines of a text exposition, as series -> value (for tests).
#[cfg(test)]
pub(crate) fn parse_series(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_stalled_only_without_recent_progress() {
        let patient = Health::new(Duration::from_secs(3600));
        assert!(!patient.is_ready());
        assert_eq!(patient.stalled_for(), None, "a fresh process counts as making progress");
        patient.progress();
        assert_eq!(patient.stalled_for(), None);
        patient.set_ready(true);
        assert!(patient.is_ready());

        let strict = Health::new(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(strict.stalled_for().is_some_and(|d| d >= Duration::from_millis(5)));
    }
}
