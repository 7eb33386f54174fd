//! capture: copies live HTTP/1.x traffic off a host for replay.
//!
//! Data flows one way: kernel events -> [`segment`] -> [`reassembly`] ->
//! [`connections`] -> HTTP messages (kept or not by [`policy`]) -> records
//! ([`redact`]ed) -> sinks. [`skip`] tells the kernel which bytes it need not copy.
//! Everything but the [`kernel`] module is pure and testable without root.

pub mod agent;
pub mod btf;
pub mod compare;
pub mod connections;
pub mod files;
pub mod error_chain;
pub mod export;
pub mod content_encoding;
pub mod filter;
pub mod flow;
pub mod iface_watch;
pub mod kernel;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod record;
pub mod redact;
pub mod replay;
pub mod segment;
pub mod sink;
pub mod skip;
pub mod tls_libs;
pub mod tls_listeners;
pub mod tls_streams;
pub mod reassembly;
pub mod http;
pub mod usage;
