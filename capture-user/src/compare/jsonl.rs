//! Per-request outcomes as JSON lines (`--report-jsonl`), written as they happen, for
//! a log pipeline (Logstash, Loki, ...). One object per line; memory stays flat.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

use super::diff::Difference;
use super::outcome::{Failure, Outcome};
use super::report::endpoint_name;
use super::risk::Risk;

/// Differences written per line; the rest are counted in `differences_dropped`.
const MAX_LINE_DIFFERENCES: usize = 20;

/// One line. Field names are stable; new fields may be added.
#[derive(Serialize)]
struct Line<'a> {
    /// When the replayer recorded it, RFC 3339 UTC.
    time: String,
    /// Record id from the capture.
    id: &'a str,
    /// `equal`, `different`, `partial`, `not_compared`, `error` or `skipped`.
    outcome: &'a str,
    /// Highest risk of the real differences (`different` only).
    risk: Option<Risk>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    endpoint: Option<String>,
    target: Option<&'a str>,
    production_status: Option<u16>,
    candidate_status: Option<u16>,
    production_latency_ms: Option<f64>,
    candidate_latency_ms: Option<f64>,
    error: Option<&'a Failure>,
    /// Why it was not compared (`not_compared`) or not sent (`skipped`).
    reason: Option<&'a str>,
    compared_body_bytes: Option<u64>,
    baseline_error: Option<&'a Failure>,
    differences: &'a [Difference],
    differences_dropped: usize,
    /// Differences discounted as noise.
    noise: usize,
}

/// Writes outcome lines to a file (or any writer). A write error stops the writing
/// and is reported by [`OutcomeLog::finish`]; the replay goes on.
pub struct OutcomeLog {
    out: Box<dyn Write + Send>,
    lines: u64,
    failed: Option<std::io::Error>,
}

impl OutcomeLog {
    pub fn new(out: Box<dyn Write + Send>) -> OutcomeLog {
        OutcomeLog { out, lines: 0, failed: None }
    }

    fn write(&mut self, line: &Line<'_>) {
        if self.failed.is_some() {
            return;
        }
        let mut text = serde_json::to_vec(line).unwrap_or_default();
        text.push(b'\n');
        match self.out.write_all(&text) {
            Ok(()) => self.lines += 1,
            Err(e) => self.failed = Some(e),
        }
    }

    fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    pub fn outcome(&mut self, o: &Outcome) {
        let shown = o.differences.len().min(MAX_LINE_DIFFERENCES);
        let class = o.class();
        self.write(&Line {
            time: Self::now(),
            id: &o.id,
            outcome: class.as_str(),
            risk: o.risk(),
            method: Some(&o.method),
            path: Some(&o.path),
            endpoint: Some(endpoint_name(&o.method, &o.path)),
            target: Some(&o.target),
            production_status: o.production_status,
            candidate_status: o.candidate_status,
            production_latency_ms: o.production_latency_ms,
            candidate_latency_ms: o.candidate_latency_ms,
            error: o.error.as_ref(),
            reason: o.not_compared.as_deref(),
            compared_body_bytes: o.compared_body_bytes,
            baseline_error: o.baseline_error.as_ref(),
            differences: &o.differences[..shown],
            differences_dropped: o.differences.len() - shown + o.differences_dropped,
            noise: o.noise.len(),
        });
    }

    /// A request that was not sent, with its method and path when they were readable.
    pub fn skipped(&mut self, id: &str, request_line: Option<(&str, &str)>, reason: &str) {
        self.write(&Line {
            time: Self::now(),
            id,
            outcome: "skipped",
            risk: None,
            method: request_line.map(|r| r.0),
            path: request_line.map(|r| r.1),
            endpoint: request_line.map(|(m, p)| endpoint_name(m, p)),
            target: None,
            production_status: None,
            candidate_status: None,
            production_latency_ms: None,
            candidate_latency_ms: None,
            error: None,
            reason: Some(reason),
            compared_body_bytes: None,
            baseline_error: None,
            differences: &[],
            differences_dropped: 0,
            noise: 0,
        });
    }

    /// Flushes; returns the number of lines written, or the first write error.
    pub fn finish(mut self) -> Result<u64, std::io::Error> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.out.flush()?;
        Ok(self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::super::view::tests::{outcome, status};
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_json_object_per_line() {
        let buf = Shared::default();
        let mut log = OutcomeLog::new(Box::new(buf.clone()));
        log.outcome(&outcome("GET", "/api/users/7", vec![status(200, 503)], (1.0, 2.0)));
        log.outcome(&outcome("GET", "/x", vec![], (1.0, 2.0)));
        log.skipped("abc", Some(("POST", "/order")), "method POST not allowed");
        assert_eq!(log.finish().unwrap(), 3);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["outcome"], "different");
        assert_eq!(lines[0]["risk"], "high");
        assert_eq!(lines[0]["endpoint"], "GET /api/users/{id}");
        assert_eq!(lines[0]["differences"][0]["at"], "status");
        assert_eq!(lines[1]["outcome"], "equal");
        assert_eq!((lines[2]["outcome"].as_str(), lines[2]["reason"].as_str()), (Some("skipped"), Some("method POST not allowed")));
    }

    #[test]
    fn a_write_error_is_reported_once_at_the_end() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut log = OutcomeLog::new(Box::new(Full));
        log.outcome(&outcome("GET", "/x", vec![], (1.0, 2.0)));
        log.outcome(&outcome("GET", "/x", vec![], (1.0, 2.0)));
        assert_eq!(log.finish().unwrap_err().to_string(), "disk full");
    }
}
