//! `capture replay`: sends captured requests to candidate targets and compares
//! their responses with production's.
//!
//! Exchanges are dispatched by captured connection to a fixed pool of workers, so
//! requests of one connection replay in order on one keep-alive connection per
//! target, and concurrency is bounded by the pool. Each request waits for its
//! scheduled time ([`schedule`]). Nothing is sent twice ([`target`]); requests the
//! capture cut or found ambiguous are not sent; nothing is sent to the captured
//! production server ([`safety`]).

pub mod input;
#[cfg(feature = "kafka")]
pub mod kafka_input;
pub mod request;
pub mod safety;
pub mod schedule;
pub mod target;
pub mod tls;

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::compare::{self, CompareConfig, Outcome, Report, Response};
use crate::http::message;
use input::Exchange;
use request::RewriteOptions;
use safety::ProductionCheck;
pub use schedule::Pacing;
use schedule::Schedule;
use target::{Connections, Target};

#[derive(Clone, Debug)]
pub struct ReplayConfig {
    pub targets: Vec<Target>,
    /// A second copy of production: differences it shows too are noise.
    pub baseline: Option<Target>,
    pub pacing: Pacing,
    /// Longest wait between two requests under `Pacing::Original`.
    pub max_wait: Duration,
    /// Upper-case methods that may be replayed.
    pub allow_methods: Vec<String>,
    /// Also send requests whose framing the capture found ambiguous.
    pub replay_ambiguous: bool,
    pub rewrite: RewriteOptions,
    pub concurrency: usize,
    /// Bound on connecting, and on each exchange (writing the request, reading the response).
    pub timeout: Duration,
    /// Compare candidate responses with production's (None: replay only).
    pub compare: Option<CompareConfig>,
    pub production: ProductionCheck,
}

/// Methods replayed without explicit opt-in: they must not have side effects.
pub const SAFE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];

/// Pacing gaps shortened by `--max-wait` that are logged one by one; the rest are counted.
const LOGGED_CAPPED_GAPS: u64 = 3;

struct Job {
    exchange: Exchange,
    at: Instant,
}

/// What the workers tell the collector.
enum Event {
    Outcome(Box<Outcome>),
    /// A request not sent, by reason.
    Skipped(String),
    /// One request sent to the baseline, and its error if it failed.
    Baseline { target: String, error: Option<String> },
    Counter(&'static str, u64),
}

/// Replays `exchanges` (in capture order), adding every outcome to `report`.
pub fn run(exchanges: impl IntoIterator<Item = Exchange>, config: &ReplayConfig, mut report: Report) -> Report {
    let workers = config.concurrency.max(1);
    let config = Arc::new(config.clone());
    let (out_tx, out_rx) = sync_channel::<Event>(1024);
    let mut senders: Vec<SyncSender<Job>> = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = sync_channel::<Job>(256);
        senders.push(tx);
        let (cfg, out) = (config.clone(), out_tx.clone());
        handles.push(std::thread::spawn(move || worker(rx, &cfg, out)));
    }
    let counters = out_tx.clone();
    drop(out_tx);
    let collector = std::thread::spawn(move || {
        for event in out_rx {
            match event {
                Event::Outcome(outcome) => report.add(*outcome),
                Event::Skipped(reason) => report.count_skipped(&reason),
                Event::Baseline { target, error } => report.add_baseline(&target, error.as_deref()),
                Event::Counter(name, n) => report.add_counter(name, n),
            }
        }
        report
    });
    let start = Instant::now() + Duration::from_millis(50);
    let mut schedule = Schedule::new(config.pacing, config.max_wait);
    let mut without_server = 0u64;
    for exchange in exchanges {
        let (offset, capped) = schedule.next(&exchange.id, exchange.ts_ns);
        if let Some(gap) = capped.filter(|_| schedule.capped <= LOGGED_CAPPED_GAPS) {
            log::warn!(
                "pacing: the {:?} gap before request {} was shortened to --max-wait {:?}{}",
                gap.wanted,
                gap.id,
                config.max_wait,
                if schedule.capped == LOGGED_CAPPED_GAPS { " (further ones are only counted: replay_gaps_capped)" } else { "" }
            );
        }
        without_server += u64::from(exchange.server.is_none());
        let slot = worker_for(&exchange.connection, workers);
        if senders[slot].send(Job { exchange, at: start + offset }).is_err() {
            break;
        }
    }
    if without_server > 0 && !config.production.allow {
        log::warn!(
            "{without_server} request(s) carry no captured server address (GoReplay files): the production-server check could not run for them"
        );
    }
    let _ = counters.send(Event::Counter("replay_gaps_capped", schedule.capped));
    let _ = counters.send(Event::Counter("replay_requests_without_server_address", without_server));
    drop(counters);
    drop(senders);
    for h in handles {
        let _ = h.join();
    }
    collector.join().unwrap_or_else(|_| Report::new("replay (report lost: collector panicked)".into()))
}

fn worker_for(connection: &str, workers: usize) -> usize {
    // FNV-1a: stable, cheap, good enough to spread connections.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in connection.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (h % workers as u64) as usize
}

/// Why a captured request is not sent, if it is not.
fn skip_reason(ex: &Exchange, config: &ReplayConfig) -> Option<String> {
    if ex.request_cut.is_some() {
        return Some("request cut at capture (longer than the agent's --max-message-size): not sent".into());
    }
    let req = match message::parse_request(&ex.request) {
        Ok(r) => r,
        Err(e) => return Some(format!("unreplayable request: {e}")),
    };
    if !req.body().is_ok_and(|b| b.complete) {
        return Some("request body incomplete (shorter than its Content-Length or chunked framing): not sent".into());
    }
    // The capture's flag, or the same rule applied here (files from other tools).
    let found = match req.head.framing {
        message::BodyFraming::Ambiguous(token) => Some(token),
        _ => None,
    };
    if let Some(reason) = ex.request_ambiguous.as_deref().or(found).filter(|_| !config.replay_ambiguous) {
        return Some(format!("request framing ambiguous at capture ({reason}): not sent (--replay-ambiguous sends it)"));
    }
    if !config.allow_methods.iter().any(|m| m == req.method) {
        return Some(format!("method {} not allowed (use --allow-method)", req.method));
    }
    None
}

/// Production's response to compare with, or why there is none.
fn production_response(ex: &Exchange, method: &str, config: &ReplayConfig) -> Result<Response, String> {
    if config.compare.is_none() {
        return Err("replay only (no --compare)".into());
    }
    let Some(captured) = &ex.response else {
        return Err("no production response captured".into());
    };
    if captured.unpaired {
        return Err("production response not matched to its request with certainty (unpaired)".into());
    }
    if let Some(reason) = &captured.ambiguous {
        return Err(format!("production response framing ambiguous at capture ({reason})"));
    }
    let mut response = compare::parse_response(&captured.bytes, Some(method)).map_err(|e| format!("production response unparseable: {e}"))?;
    // Cut at capture: whatever the framing says, the body is not all there.
    response.body_complete &= captured.cut.is_none();
    Ok(response)
}

fn worker(rx: Receiver<Job>, config: &ReplayConfig, out: SyncSender<Event>) {
    let mut conns = Connections::default();
    let mut sent_to_production = 0;
    for job in rx {
        let ex = &job.exchange;
        if let Some(reason) = skip_reason(ex, config) {
            let _ = out.send(Event::Skipped(reason));
            continue;
        }
        let req = message::parse_request(&ex.request).expect("checked by skip_reason");
        let now = Instant::now();
        if job.at > now {
            std::thread::sleep(job.at - now);
        }
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let production = production_response(ex, req.method, config);
        // Whether `target` is the captured production server (refused unless allowed).
        let mut refused = |target: &Target| {
            let server = ex.server.as_deref().and_then(|s| config.production.production_match(&target.addrs, s))?;
            if config.production.allow {
                sent_to_production += 1;
                return None;
            }
            Some(format!("{}: refused: it is the captured production server {server} (--allow-production overrides)", target.url))
        };
        let baseline = match (&config.baseline, &production) {
            (Some(b), Ok(prod)) => {
                let answer = match refused(b) {
                    Some(reason) => Err(reason),
                    None => {
                        let bytes = request::rewrite(&req, &b.url, &config.rewrite);
                        conns.send(0, b, &ex.connection, &bytes, config.timeout).map_err(|e| format!("{}: {e}", b.url))
                    }
                };
                let response = answer.and_then(|a| candidate_response(&a, req.method));
                let _ = out.send(Event::Baseline { target: b.url.to_string(), error: response.as_ref().err().cloned() });
                let cfg = config.compare.as_ref().expect("production compared only with --compare");
                Some(response.map(|b| compare::compare(prod, &b, cfg)))
            }
            _ => None,
        };
        for (i, target) in config.targets.iter().enumerate() {
            let mut o = Outcome::new(&ex.id, req.method, &path, &target.url.to_string());
            o.production_status = production.as_ref().ok().map(|p| p.status);
            o.production_latency_ms = ex.response.as_ref().and_then(|r| r.latency_ns).map(|n| n as f64 / 1e6);
            let answer = match refused(target) {
                Some(reason) => Err(reason),
                None => {
                    let bytes = request::rewrite(&req, &target.url, &config.rewrite);
                    conns.send(i + 1, target, &ex.connection, &bytes, config.timeout).map_err(|e| format!("{}: {e}", target.url))
                }
            };
            match answer {
                Ok(answer) => {
                    o.candidate_latency_ms = Some(answer.latency.as_secs_f64() * 1e3);
                    match (candidate_response(&answer, req.method), &production) {
                        (Err(e), _) => o.error = Some(format!("{}: {e}", target.url)),
                        (Ok(cand), Err(reason)) => {
                            o.candidate_status = Some(cand.status);
                            o.not_compared = Some(reason.clone());
                        }
                        (Ok(cand), Ok(prod)) => {
                            o.candidate_status = Some(cand.status);
                            let cfg = config.compare.as_ref().expect("production compared only with --compare");
                            let diffs = compare::compare(prod, &cand, cfg);
                            o.compared_body_bytes = compare::compared_body_bytes(prod, &cand).map(|n| n as u64);
                            match &baseline {
                                Some(Ok(noise)) => (o.differences, o.noise) = compare::split_noise(diffs, noise),
                                Some(Err(e)) => {
                                    o.differences = diffs;
                                    o.baseline_error = Some(e.clone());
                                }
                                None => o.differences = diffs,
                            }
                        }
                    }
                }
                Err(e) => o.error = Some(e),
            }
            if out.send(Event::Outcome(Box::new(o))).is_err() {
                return;
            }
        }
    }
    let _ = out.send(Event::Counter("replay_connections_reopened", conns.reopened));
    let _ = out.send(Event::Counter("replay_sent_to_production", sent_to_production));
}

/// A target's answer as a response to compare.
fn candidate_response(answer: &target::Answer, method: &str) -> Result<Response, String> {
    let mut response = compare::parse_response(&answer.bytes, Some(method)).map_err(|e| format!("response unparseable: {e}"))?;
    response.body_complete &= !answer.truncated;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use input::CapturedResponse;

    fn config() -> ReplayConfig {
        ReplayConfig {
            targets: vec![],
            baseline: None,
            pacing: Pacing::Rate(100.0),
            max_wait: Duration::from_secs(10),
            allow_methods: SAFE_METHODS.iter().map(|m| m.to_string()).collect(),
            replay_ambiguous: false,
            rewrite: RewriteOptions { keep_host: false, mark: ("X-Capture-Replay".into(), "1".into()), set: vec![], drop: vec![] },
            concurrency: 1,
            timeout: Duration::from_secs(1),
            compare: Some(CompareConfig::default()),
            production: ProductionCheck { local: safety::LocalAddresses::new(vec![]), allow: false },
        }
    }

    fn exchange(request: &str) -> Exchange {
        Exchange {
            id: "x".into(),
            connection: "c".into(),
            ts_ns: 1,
            request: request.as_bytes().to_vec(),
            request_cut: None,
            request_ambiguous: None,
            response: None,
            server: None,
        }
    }

    /// Issue 10, item 3 (replay side) and issue 11, bug 1: a request the capture cut,
    /// or whose framing it found ambiguous, is not sent (unless asked, for ambiguous).
    #[test]
    fn cut_and_ambiguous_requests_are_not_sent() {
        let mut cfg = config();
        let get = exchange("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(skip_reason(&get, &cfg), None);
        let cut = Exchange { request_cut: Some(3_000_000), ..exchange("POST / HTTP/1.1\r\nContent-Length: 3000000\r\n\r\nabc") };
        assert!(skip_reason(&cut, &cfg).unwrap().starts_with("request cut at capture"));
        // A GoReplay file has no flag: the body shorter than its Content-Length says it.
        cfg.allow_methods.push("POST".into());
        let short = exchange("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert!(skip_reason(&short, &cfg).unwrap().starts_with("request body incomplete"));
        let ambiguous = Exchange { request_ambiguous: Some("content_length_and_chunked".into()), ..get.clone() };
        assert_eq!(
            skip_reason(&ambiguous, &cfg).as_deref(),
            Some("request framing ambiguous at capture (content_length_and_chunked): not sent (--replay-ambiguous sends it)")
        );
        cfg.replay_ambiguous = true;
        assert_eq!(skip_reason(&ambiguous, &cfg), None);
        assert_eq!(skip_reason(&exchange("DELETE / HTTP/1.1\r\n\r\n"), &cfg).as_deref(), Some("method DELETE not allowed (use --allow-method)"));
        assert!(skip_reason(&exchange("\x16\x03 junk\r\n\r\n"), &cfg).unwrap().starts_with("unreplayable request"));
    }

    /// Issue 11, bugs 1 and 7: what production answered decides what is compared.
    #[test]
    fn only_a_whole_paired_production_response_is_compared_in_full() {
        let cfg = config();
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let with = |response: Option<CapturedResponse>| Exchange { response, ..exchange("GET / HTTP/1.1\r\n\r\n") };
        let captured = |bytes: &str| CapturedResponse { bytes: bytes.as_bytes().to_vec(), latency_ns: Some(1), cut: None, ambiguous: None, unpaired: false };
        assert!(production_response(&with(Some(captured(ok))), "GET", &cfg).unwrap().body_complete);
        assert_eq!(production_response(&with(None), "GET", &cfg).unwrap_err(), "no production response captured");
        let cut = CapturedResponse { cut: Some(3_000_000), ..captured(ok) };
        assert!(!production_response(&with(Some(cut)), "GET", &cfg).unwrap().body_complete, "the flag wins over the framing");
        let unpaired = CapturedResponse { unpaired: true, ..captured(ok) };
        assert!(production_response(&with(Some(unpaired)), "GET", &cfg).unwrap_err().contains("unpaired"));
        let ambiguous = CapturedResponse { ambiguous: Some("two_content_lengths".into()), ..captured(ok) };
        assert!(production_response(&with(Some(ambiguous)), "GET", &cfg).unwrap_err().contains("ambiguous"));
        let replay_only = ReplayConfig { compare: None, ..config() };
        assert_eq!(production_response(&with(Some(captured(ok))), "GET", &replay_only).unwrap_err(), "replay only (no --compare)");
    }
}
