//! Prometheus metrics and health checks over HTTP: `/metrics` (Prometheus text
//! format 0.0.4), `/healthz` (alive and making progress) and `/readyz` (ready).
//!
//! A command fills a `prometheus_client` registry of its own (the agent registers
//! [`agent::AgentMetrics`]; the replayer can register its counters and histograms the
//! same way) and hands it with a [`Health`] to [`serve`], which answers on its own
//! thread until the returned [`MetricsServer`] is dropped.

pub mod agent;
pub mod server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
