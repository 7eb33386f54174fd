//! Comparing replayed responses with captured ones, Diffy style.
//!
//! Everything here is pure: the replay engine parses captured and replayed
//! response bytes with [`parse_response`], compares them with [`compare`],
//! filters nondeterminism with [`split_noise`] against a second production
//! copy, and feeds [`Outcome`]s into a [`Report`] that renders text, JSON or
//! a self-contained HTML page.

mod diff;
mod html;
mod json;
mod report;
mod response;

pub use diff::{compare, compared_body_bytes, split_noise, CompareConfig, Difference};
pub use report::{Outcome, Report};
pub use response::{parse_response, ParseError, Response};
