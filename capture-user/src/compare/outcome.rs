//! One replayed request's outcome, as the replay engine reports it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::diff::Difference;
use super::risk::Risk;

/// Why a target gave no answer to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No connection (refused, unreachable): nothing was sent.
    Connect,
    /// The TLS handshake with an `https://` target failed: nothing was sent.
    Tls,
    /// The target did not take the whole request in time.
    WriteTimeout,
    /// Writing the request failed (reset, broken pipe).
    Write,
    /// No complete response in time.
    ReadTimeout,
    /// Reading the response failed (reset).
    Read,
    /// The target closed the connection before a complete response.
    Closed,
    /// The answer is not an HTTP response.
    BadResponse,
    /// Not sent: the target is the captured production server.
    RefusedProduction,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::WriteTimeout => "write_timeout",
            ErrorKind::Write => "write",
            ErrorKind::ReadTimeout => "read_timeout",
            ErrorKind::Read => "read",
            ErrorKind::Closed => "closed",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::RefusedProduction => "refused_production",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A target's failure on one request: its kind, and the message saying what happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: ErrorKind,
    /// e.g. `connect: Connection refused (os error 111)`.
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What became of a replayed request, from the comparison's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// Compared in full, no real difference (noise alone is equal).
    Equal,
    /// At least one real difference.
    Different,
    /// A body was cut: equal as far as it could be compared.
    Partial,
    /// Answered, but nothing to compare with (see [`Outcome::not_compared`]).
    NotCompared,
    /// The target did not answer.
    Error,
}

impl OutcomeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Equal => "equal",
            OutcomeClass::Different => "different",
            OutcomeClass::Partial => "partial",
            OutcomeClass::NotCompared => "not_compared",
            OutcomeClass::Error => "error",
        }
    }
}

/// One replayed request's outcome at one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Why the candidate gave no answer to compare.
    pub error: Option<Failure>,
    /// Why the candidate's answer was not compared with production's (no --compare,
    /// no production response captured, ...). `None`: it was compared (or failed).
    pub not_compared: Option<String>,
    /// A body was cut (production's at capture, or the candidate's past the replayer's
    /// limit): only this many body bytes could be compared; nothing is known past them.
    pub compared_body_bytes: Option<u64>,
    /// The baseline failed for this request, so its differences could not be checked
    /// for noise (they all count as real).
    pub baseline_error: Option<Failure>,
    /// Real differences (after noise filtering).
    pub differences: Vec<Difference>,
    /// Differences also seen between two production copies.
    pub noise: Vec<Difference>,
    /// Differences not kept in a report's example (beyond its cap).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub differences_dropped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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
            differences_dropped: 0,
        }
    }

    /// An error counts as an error only, whatever differences come with it; then
    /// different when there are real differences, then partial when a cut body was
    /// compared only in part, then not compared when it says so, else equal.
    pub fn class(&self) -> OutcomeClass {
        if self.error.is_some() {
            OutcomeClass::Error
        } else if !self.differences.is_empty() {
            OutcomeClass::Different
        } else if self.compared_body_bytes.is_some() {
            OutcomeClass::Partial
        } else if self.not_compared.is_some() {
            OutcomeClass::NotCompared
        } else {
            OutcomeClass::Equal
        }
    }

    /// The highest risk of its real differences (None when it has none).
    pub fn risk(&self) -> Option<Risk> {
        self.differences.iter().map(|d| d.risk).max()
    }
}
