//! Comparing replayed responses with captured ones, Diffy style, and the reports.
//!
//! The model is apart from its renderers: [`compare`] turns two [`Response`]s into
//! typed [`Difference`]s (a [`Location`] such as a [`JsonPath`], a [`Change`] and its
//! [`Risk`]) under [`CompareSettings`] compiled once; [`split_noise`] discounts what a
//! second production copy shows too; a [`Report`] aggregates [`Outcome`]s with bounded
//! memory and merges with other replayers' reports. Every renderer (terminal, JSON,
//! HTML, JUnit) works from the report's [`ReportView`]; [`OutcomeLog`] writes one JSON
//! line per request as it happens.

mod diff;
pub mod html;
mod json;
pub mod jsonl;
pub mod junit;
mod latency;
mod outcome;
mod path;
mod report;
mod response;
mod risk;
mod settings;
pub mod terminal;
mod view;

pub use diff::{compare, compared_body_bytes, split_noise, Change, DiffKey, Difference, Location};
pub use jsonl::OutcomeLog;
pub use junit::JunitRun;
pub use latency::LatencySummary;
pub use outcome::{ErrorKind, Failure, Outcome, OutcomeClass};
pub use path::{JsonPath, PathError, PathPattern, Segment};
pub use report::{endpoint_name, route, KafkaCoverage, Report, Role};
pub use response::{from_head, parse_response, ParseError, Response};
pub use risk::{Risk, RiskCounts};
pub use settings::{CompareSettings, DEFAULT_IGNORED_HEADERS};
pub use view::{EndpointRow, ErrorRow, FieldRow, ReportView, TargetRow, Totals, FORMAT};
