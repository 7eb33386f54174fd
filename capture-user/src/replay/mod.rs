//! `capture replay`: sends captured requests to candidate targets and compares
//! their responses with production's.
//!
//! Exchanges are dispatched by captured connection to a fixed number of lanes
//! (`--concurrency`), so requests of one connection replay in order on one keep-alive
//! connection per target (a bounded number open at once, idle ones closed:
//! [`target::Pool`]), and concurrency is bounded by the lanes. A few threads serve the
//! lanes with one event loop each (`event_loop`); with an `https://` target each lane
//! is a blocking worker thread ([`target::Connections`]). Each request waits for its
//! scheduled time ([`schedule`]). Nothing is sent twice ([`target`]); requests the
//! capture cut or found ambiguous are not sent; nothing is sent to the captured
//! production server ([`safety`]).

mod event_loop;
pub mod input;
#[cfg(feature = "kafka")]
pub mod kafka_input;
#[cfg(feature = "kafka")]
mod reorder;
pub mod request;
pub mod safety;
pub mod schedule;
pub mod target;
pub mod tls;

use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::compare::{self, CompareSettings, ErrorKind, Failure, Outcome, OutcomeLog, Report, Response};
use crate::http::message;
use crate::metrics::replay::ReplayMetrics;
use input::Exchange;
use request::RewriteOptions;
use safety::ProductionCheck;
pub use schedule::Pacing;
use schedule::Schedule;
use target::{ConnectionStats, Connections, KeepAlive, SendError, Target};

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
    pub compare: Option<CompareSettings>,
    pub production: ProductionCheck,
    /// Keep-alive connections to the targets: `max_open` over all workers.
    pub keep_alive: KeepAlive,
    /// Threads of the event-driven sender (0: one per core, at most `concurrency`).
    pub threads: usize,
}

impl ReplayConfig {
    /// Whether a target or the baseline is `https://`: those are sent by the blocking
    /// sender, a thread per unit of concurrency (TLS is not in the event loop yet).
    fn uses_tls(&self) -> bool {
        self.targets.iter().chain(&self.baseline).any(|t| t.tls.is_some())
    }

    /// Whether the event-driven sender serves this replay: plain http:// targets and no
    /// pacing (`--speed max`). Paced replays keep a thread per lane, whose sleeps hold
    /// the captured gaps to about a millisecond; the event loop was seen starting a
    /// new connection's first request up to ~20 ms late (follow-up).
    fn event_driven(&self) -> bool {
        !self.uses_tls() && self.pacing == Pacing::Max
    }

    /// Threads sending requests: the event-driven sender's, or one per unit of
    /// concurrency for the blocking sender.
    fn sender_threads(&self) -> usize {
        let lanes = self.concurrency.max(1);
        if !self.event_driven() {
            return lanes;
        }
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        threads.clamp(1, lanes)
    }

    /// The longest a healthy replay goes without an event (a request sent, answered or
    /// skipped): one pacing gap plus connecting and exchanging with every target, with
    /// room to spare. `/healthz` fails after that long without one.
    pub fn longest_silence(&self) -> Duration {
        let gap = match self.pacing {
            Pacing::Original { .. } => self.max_wait,
            Pacing::Rate(rate) => Duration::from_secs_f64((1.0 / rate).min(1e6)),
            Pacing::Max => Duration::ZERO,
        };
        let targets = (self.targets.len() + usize::from(self.baseline.is_some())) as u32;
        gap + self.timeout * 2 * targets + Duration::from_secs(60)
    }
}

/// Methods replayed without explicit opt-in: they must not have side effects.
pub const SAFE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];

/// Pacing gaps shortened by `--max-wait` that are logged one by one; the rest are counted.
const LOGGED_CAPPED_GAPS: u64 = 3;

/// Events a worker gathers before it wakes the collector (see [`Outbox`]).
const EVENT_BATCH: usize = 64;

/// How often the collector takes the events gathered so far, woken or not.
const EVENT_POLL: Duration = Duration::from_millis(50);

/// Events a worker holds at most before it waits for the collector.
const EVENTS_HELD: usize = 64 * EVENT_BATCH;

/// Jobs handed to a worker at once under `--speed max` (one hand-off, and one wake-up
/// of a waiting reader, per batch); paced replays hand over each job when read, so
/// that none waits for others to be read.
const JOB_BATCH: usize = 32;

/// Jobs queued per worker, at most (bounds memory and how far reading runs ahead).
const JOBS_QUEUED: usize = 256;

/// How often a worker without requests closes its idle target connections.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

/// Why a captured request is not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Cut at capture (longer than the agent's --max-message-size).
    RequestCut,
    /// Not a request the HTTP parser accepts.
    Unreplayable(String),
    /// The body is shorter than its Content-Length or chunked framing says.
    BodyIncomplete,
    /// The capture (or the same rule here) found its framing ambiguous: the reason.
    Ambiguous(String),
    /// Its method is not among those allowed.
    MethodNotAllowed(String),
}

impl SkipReason {
    /// Stable label for metrics (one of `metrics::replay::SKIP_REASONS`).
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::RequestCut => "request_cut",
            SkipReason::Unreplayable(_) => "unreplayable",
            SkipReason::BodyIncomplete => "body_incomplete",
            SkipReason::Ambiguous(_) => "ambiguous",
            SkipReason::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::RequestCut => f.write_str("request cut at capture (longer than the agent's --max-message-size): not sent"),
            SkipReason::Unreplayable(e) => write!(f, "unreplayable request: {e}"),
            SkipReason::BodyIncomplete => f.write_str("request body incomplete (shorter than its Content-Length or chunked framing): not sent"),
            SkipReason::Ambiguous(reason) => {
                write!(f, "request framing ambiguous at capture ({reason}): not sent (--replay-ambiguous sends it)")
            }
            SkipReason::MethodNotAllowed(method) => write!(f, "method {method} not allowed (use --allow-method)"),
        }
    }
}

struct Job {
    exchange: Exchange,
    at: Instant,
    /// See [`lane_of`].
    lane: usize,
}

/// What the workers tell the collector.
enum Event {
    /// A captured request goes to the targets; production's latency from the capture.
    Sent { production_latency_ns: Option<u64> },
    Outcome(Box<Outcome>),
    /// A request not sent: its record id, method and path (when readable), and why.
    Skipped { id: String, request_line: Option<(String, String)>, reason: SkipReason },
    /// One request sent to the baseline: its failure if it failed, else its latency.
    Baseline { target: String, error: Option<Failure>, latency: Option<Duration> },
    Counter(&'static str, u64),
}

/// Where outcomes go: the report, the per-request JSON lines if asked for, and the
/// live metrics if served.
pub struct Results {
    pub report: Report,
    pub log: Option<OutcomeLog>,
    pub metrics: Option<Arc<ReplayMetrics>>,
}

/// A worker's (or the reader's) events on their way to the collector. They are
/// appended to a list of its own, which the collector empties when woken (once per
/// [`EVENT_BATCH`] events) or every [`EVENT_POLL`]: one hand-off per batch, and
/// events of a worker blocked in a slow exchange still reach the report and the live
/// metrics.
struct Outbox {
    pending: Arc<Mutex<Vec<Event>>>,
    wake: SyncSender<()>,
    /// The collector is gone.
    closed: bool,
}

impl Outbox {
    /// Adds an event; false when the collector is gone.
    fn send(&mut self, event: Event) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push(event);
        let queued = pending.len();
        drop(pending);
        if queued.is_multiple_of(EVENT_BATCH) {
            self.closed |= matches!(self.wake.try_send(()), Err(TrySendError::Disconnected(_)));
            // The collector is behind: wait for it rather than hold ever more.
            while !self.closed && self.pending.lock().unwrap_or_else(|e| e.into_inner()).len() >= EVENTS_HELD {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        !self.closed
    }
}

impl Results {
    fn take(&mut self, event: Event) {
        match event {
            Event::Sent { production_latency_ns } => {
                self.count("replay_requests_sent", 1);
                if let Some(m) = &self.metrics {
                    m.production_latency(production_latency_ns);
                }
            }
            Event::Outcome(outcome) => {
                if let Some(log) = &mut self.log {
                    log.outcome(&outcome);
                }
                if let Some(m) = &self.metrics {
                    m.outcome(&outcome);
                }
                self.report.add(*outcome);
            }
            Event::Skipped { id, request_line, reason } => {
                let message = reason.to_string();
                if let Some(log) = &mut self.log {
                    log.skipped(&id, request_line.as_ref().map(|(m, p)| (m.as_str(), p.as_str())), &message);
                }
                if let Some(m) = &self.metrics {
                    m.skipped(reason.label());
                }
                self.report.count_skipped(&message);
            }
            Event::Baseline { target, error, latency } => {
                if let Some(m) = &self.metrics {
                    m.baseline(error.as_ref(), latency);
                }
                self.report.add_baseline(&target, error.as_ref());
            }
            Event::Counter(name, n) => self.count(name, n),
        }
    }

    /// Adds `n` to a report counter (and its metric).
    fn count(&mut self, name: &str, n: u64) {
        self.report.add_counter(name, n);
        if let Some(m) = &self.metrics {
            m.counter(name, n);
        }
    }
}

/// Replays `exchanges` (in capture order, read as they come), adding every outcome to
/// `results`.
pub fn run(exchanges: impl IntoIterator<Item = Exchange>, config: &ReplayConfig, mut results: Results) -> Results {
    let lanes = config.concurrency.max(1);
    // Each lane keeps its share of the open connections.
    let keep_alive = KeepAlive { max_open: (config.keep_alive.max_open / lanes).max(1), ..config.keep_alive };
    let config = Arc::new(config.clone());
    let batch = if config.pacing == Pacing::Max { JOB_BATCH } else { 1 };
    let (wake, woken) = sync_channel::<()>(1);
    let prepared = if !config.event_driven() {
        None
    } else {
        match (0..config.sender_threads()).map(|_| event_loop::EventLoop::prepare()).collect::<std::io::Result<Vec<_>>>() {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("cannot create an epoll instance ({e}): replaying with a blocking thread per lane");
                None
            }
        }
    };
    let threads = if prepared.is_some() { config.sender_threads() } else { lanes };
    // Each thread's events, and the reader's (last).
    let lists: Vec<Arc<Mutex<Vec<Event>>>> = (0..=threads).map(|_| Arc::default()).collect();
    let outbox = |i: usize| Outbox { pending: lists[i].clone(), wake: wake.clone(), closed: false };
    let mut senders: Vec<JobSender> = Vec::new();
    let mut handles = Vec::new();
    if let Some(prepared) = prepared {
        // The event-driven sender: each thread serves every `threads`-th lane.
        for (i, (poll, waker)) in prepared.into_iter().enumerate() {
            let (tx, rx) = sync_channel::<Vec<Job>>(JOBS_QUEUED / batch);
            let its_lanes = (lanes - i).div_ceil(threads);
            let sender = event_loop::EventLoop::new(poll, its_lanes, threads, config.clone(), keep_alive, outbox(i));
            senders.push(JobSender { tx, waker: Some(waker) });
            handles.push(std::thread::spawn(move || sender.run(rx)));
        }
    } else {
        // https:// targets, paced replays (or no epoll instance): a blocking worker thread per lane.
        for i in 0..lanes {
            let (tx, rx) = sync_channel::<Vec<Job>>(JOBS_QUEUED / batch);
            senders.push(JobSender { tx, waker: None });
            let (cfg, out) = (config.clone(), outbox(i));
            handles.push(std::thread::spawn(move || worker(rx, &cfg, keep_alive, out)));
        }
    }
    let workers = threads;
    let mut counters = outbox(workers);
    drop(wake);
    let collector = std::thread::spawn(move || {
        loop {
            // Disconnected: every worker and the reader are done.
            let done = matches!(woken.recv_timeout(EVENT_POLL), Err(RecvTimeoutError::Disconnected));
            for list in &lists {
                let events = std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner()));
                for event in events {
                    results.take(event);
                }
            }
            if done {
                return results;
            }
        }
    });
    let start = Instant::now() + Duration::from_millis(50);
    let mut schedule = Schedule::new(config.pacing, config.max_wait);
    let mut without_server = 0u64;
    // Jobs read but not yet handed to their worker.
    let mut pending: Vec<Vec<Job>> = (0..workers).map(|_| Vec::with_capacity(batch)).collect();
    for exchange in exchanges {
        let (offset, capped) = schedule.next(&exchange.id, exchange.ts_ns);
        if capped.is_some() {
            counters.send(Event::Counter("replay_gaps_capped", 1));
        }
        if exchange.server.is_none() {
            without_server += 1;
            counters.send(Event::Counter("replay_requests_without_server_address", 1));
        }
        if let Some(gap) = capped.filter(|_| schedule.capped <= LOGGED_CAPPED_GAPS) {
            log::warn!(
                "pacing: the {:?} gap before request {} was shortened to --max-wait {:?}{}",
                gap.wanted,
                gap.id,
                config.max_wait,
                if schedule.capped == LOGGED_CAPPED_GAPS { " (further ones are only counted: replay_gaps_capped)" } else { "" }
            );
        }
        let lane = lane_of(&exchange.connection, lanes);
        let slot = lane % workers;
        pending[slot].push(Job { exchange, at: start + offset, lane });
        if pending[slot].len() >= batch && !hand_over(&senders, &mut pending, slot) {
            break;
        }
    }
    for slot in 0..workers {
        if !pending[slot].is_empty() && senders[slot].send(std::mem::take(&mut pending[slot])).is_err() {
            break;
        }
    }
    if without_server > 0 && !config.production.allow {
        log::warn!(
            "{without_server} request(s) carry no captured server address (GoReplay files): the production-server check could not run for them"
        );
    }
    drop(counters);
    for sender in senders {
        sender.close();
    }
    for h in handles {
        let _ = h.join();
    }
    collector.join().unwrap_or_else(|_| Results { report: Report::new("replay (report lost: collector panicked)".into()), log: None, metrics: None })
}

/// Hands worker `slot` its pending jobs; if its queue is full, first hands the other
/// workers theirs (so none idles with jobs read for it), then waits. False when the
/// worker is gone.
fn hand_over(senders: &[JobSender], pending: &mut [Vec<Job>], slot: usize) -> bool {
    let jobs = std::mem::take(&mut pending[slot]);
    let jobs = match senders[slot].try_send(jobs) {
        Ok(()) => return true,
        Err(TrySendError::Disconnected(_)) => return false,
        Err(TrySendError::Full(jobs)) => jobs,
    };
    for (other, sender) in senders.iter().enumerate() {
        if other != slot && !pending[other].is_empty() {
            if let Err(TrySendError::Full(back) | TrySendError::Disconnected(back)) = sender.try_send(std::mem::take(&mut pending[other])) {
                pending[other] = back;
            }
        }
    }
    senders[slot].send(jobs).is_ok()
}

/// Jobs on their way to a sender thread; wakes an event-driven one when it gets some.
struct JobSender {
    tx: SyncSender<Vec<Job>>,
    waker: Option<Arc<mio::Waker>>,
}

impl JobSender {
    fn try_send(&self, jobs: Vec<Job>) -> Result<(), TrySendError<Vec<Job>>> {
        self.tx.try_send(jobs)?;
        self.wake();
        Ok(())
    }

    fn send(&self, jobs: Vec<Job>) -> Result<(), std::sync::mpsc::SendError<Vec<Job>>> {
        self.tx.send(jobs)?;
        self.wake();
        Ok(())
    }

    /// No more jobs: the thread finishes those it has.
    fn close(self) {
        let JobSender { tx, waker } = self;
        drop(tx);
        if let Some(waker) = waker {
            let _ = waker.wake();
        }
    }

    fn wake(&self) {
        if let Some(waker) = &self.waker {
            // Fails only if the thread is gone: then it needs no jobs.
            let _ = waker.wake();
        }
    }
}

/// The lane of a captured connection: all its requests go to one lane, in order.
fn lane_of(connection: &str, workers: usize) -> usize {
    // FNV-1a: stable, cheap, good enough to spread connections.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in connection.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (h % workers as u64) as usize
}

/// Why a captured request is not sent, if it is not.
#[cfg(test)]
fn skip_reason(ex: &Exchange, config: &ReplayConfig) -> Option<SkipReason> {
    checked(ex, config).err().map(|(reason, _)| reason)
}

/// The captured request parsed, if it is to be sent; else why not (with the request
/// when it parses). The one parse of the request: the plan is built from it.
fn checked<'a>(ex: &'a Exchange, config: &ReplayConfig) -> Result<message::Request<'a>, (SkipReason, Option<message::Request<'a>>)> {
    if ex.request_cut.is_some() {
        return Err((SkipReason::RequestCut, None));
    }
    let req = match message::parse_request(&ex.request) {
        Ok(r) => r,
        Err(e) => return Err((SkipReason::Unreplayable(e.to_string()), None)),
    };
    if !req.body_complete() {
        return Err((SkipReason::BodyIncomplete, Some(req)));
    }
    // The capture's flag, or the same rule applied here (files from other tools).
    let found = match req.head.framing {
        message::BodyFraming::Ambiguous(token) => Some(token),
        _ => None,
    };
    if let Some(reason) = ex.request_ambiguous.as_deref().or(found).filter(|_| !config.replay_ambiguous) {
        return Err((SkipReason::Ambiguous(reason.to_string()), Some(req)));
    }
    if !config.allow_methods.iter().any(|m| m == req.method) {
        return Err((SkipReason::MethodNotAllowed(req.method.to_string()), Some(req)));
    }
    Ok(req)
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

fn worker(rx: Receiver<Vec<Job>>, config: &ReplayConfig, keep_alive: KeepAlive, mut out: Outbox) {
    let mut conns = Connections::new(keep_alive);
    let mut reported = ConnectionStats::default();
    loop {
        let jobs = match rx.recv_timeout(IDLE_SWEEP) {
            Ok(jobs) => jobs,
            Err(RecvTimeoutError::Timeout) => {
                conns.close_idle(Instant::now());
                report_connections(conns.stats(), &mut reported, &mut out);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        for job in &jobs {
            if !replay_one(job, config, &mut conns, &mut out) {
                return;
            }
            report_connections(conns.stats(), &mut reported, &mut out);
        }
    }
    conns.close_all();
    report_connections(conns.stats(), &mut reported, &mut out);
}

/// Sends the connection counters that changed since the last report.
fn report_connections(stats: &ConnectionStats, reported: &mut ConnectionStats, out: &mut Outbox) {
    if stats == reported {
        return;
    }
    for ((name, now), (_, before)) in stats.fields().into_iter().zip(reported.fields()) {
        if now > before {
            out.send(Event::Counter(name, now - before));
        }
    }
    *reported = *stats;
}

/// A captured request about to be sent: to whom, what, and what to compare with.
struct Plan {
    method: String,
    path: String,
    production: Result<Response, String>,
    /// In sending order: the baseline first (when there is a production response to
    /// compare it with), then each target.
    sends: Vec<Send>,
    /// Sends answered (or failed) so far.
    done: usize,
    /// The baseline's differences from production (noise), or why it has none.
    noise: Option<Result<Vec<compare::Difference>, Failure>>,
}

/// One request of a [`Plan`].
struct Send {
    /// 0: the baseline; i + 1: target i (its keep-alive connections are its own).
    index: usize,
    /// The bytes to send, or why it is refused (the captured production server).
    request: Result<Vec<u8>, Failure>,
}

impl ReplayConfig {
    /// The target of a [`Send::index`].
    fn target(&self, index: usize) -> &Target {
        match index {
            0 => self.baseline.as_ref().expect("index 0 is the baseline"),
            i => &self.targets[i - 1],
        }
    }
}

/// The request of `ex` parsed, if it is to be sent; else reports it as skipped.
fn admitted<'a>(ex: &'a Exchange, config: &ReplayConfig, out: &mut Outbox) -> Option<message::Request<'a>> {
    let (reason, req) = match checked(ex, config) {
        Ok(req) => return Some(req),
        Err(skip) => skip,
    };
    let req = req.or_else(|| message::parse_request(&ex.request).ok());
    let request_line = req.map(|r| (r.method.to_string(), path_of(r.target).to_string()));
    out.send(Event::Skipped { id: ex.id.clone(), request_line, reason });
    None
}

/// A request-target's path (without its query).
fn path_of(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

impl Plan {
    /// What to send for `ex` (its request `req` as [`admitted`] parsed it), once its
    /// time has come; counts it as sent.
    fn new(ex: &Exchange, req: &message::Request<'_>, config: &ReplayConfig, out: &mut Outbox) -> Plan {
        let path = path_of(req.target).to_string();
        let production = production_response(ex, req.method, config);
        let production_latency_ns = ex.response.as_ref().and_then(|r| r.latency_ns);
        out.send(Event::Sent { production_latency_ns });
        // The request for `target`, unless it is the captured production server (refused unless allowed).
        let request = |target: &Target, out: &mut Outbox| {
            if let Some(server) = ex.server.as_deref().and_then(|s| config.production.production_match(&target.addrs, s)) {
                if !config.production.allow {
                    return Err(Failure::new(ErrorKind::RefusedProduction, format!("refused: it is the captured production server {server} (--allow-production overrides)")));
                }
                out.send(Event::Counter("replay_sent_to_production", 1));
            }
            Ok(request::rewrite(req, &target.url, &config.rewrite))
        };
        let mut sends = Vec::with_capacity(config.targets.len() + 1);
        if let (Some(b), Ok(_)) = (&config.baseline, &production) {
            sends.push(Send { index: 0, request: request(b, out) });
        }
        for (i, target) in config.targets.iter().enumerate() {
            sends.push(Send { index: i + 1, request: request(target, out) });
        }
        Plan { method: req.method.to_string(), path, production, sends, done: 0, noise: None }
    }

    /// The next request to send, if any is left.
    fn next(&self) -> Option<&Send> {
        self.sends.get(self.done)
    }

    /// Reports the answer to the next send: the baseline's, or a target's outcome.
    fn answered(&mut self, ex: &Exchange, answer: Result<target::Answer, Failure>, config: &ReplayConfig, out: &mut Outbox) {
        let index = self.sends[self.done].index;
        self.done += 1;
        let method = self.method.as_str();
        if index == 0 {
            let (Some(b), Ok(prod)) = (&config.baseline, &self.production) else { unreachable!("sent only to compare with production") };
            let latency = answer.as_ref().ok().map(|a| a.latency);
            let response = answer.and_then(|a| candidate_response(&a));
            let error = response.as_ref().err().cloned();
            let latency = latency.filter(|_| error.is_none());
            out.send(Event::Baseline { target: b.name.clone(), error, latency });
            let cfg = config.compare.as_ref().expect("production compared only with --compare");
            self.noise = Some(response.map(|b| compare::compare(prod, &b, cfg)));
            return;
        }
        let target = config.target(index);
        let production = &self.production;
        let mut o = Outcome::new(&ex.id, method, &self.path, &target.name);
        o.production_status = production.as_ref().ok().map(|p| p.status);
        o.production_latency_ms = ex.response.as_ref().and_then(|r| r.latency_ns).map(|n| n as f64 / 1e6);
        match answer {
            Ok(answer) => {
                o.candidate_latency_ms = Some(answer.latency.as_secs_f64() * 1e3);
                match production {
                    // Nothing to compare with: the status (and that the response parses)
                    // is all that is needed, without building its header list.
                    Err(reason) => match candidate_status(&answer) {
                        Err(e) => o.error = Some(e),
                        Ok(status) => {
                            o.candidate_status = Some(status);
                            o.not_compared = Some(reason.clone());
                        }
                    },
                    Ok(prod) => match candidate_response(&answer) {
                        Err(e) => o.error = Some(e),
                        Ok(cand) => {
                            o.candidate_status = Some(cand.status);
                            let cfg = config.compare.as_ref().expect("production compared only with --compare");
                            let diffs = compare::compare(prod, &cand, cfg);
                            o.compared_body_bytes = compare::compared_body_bytes(prod, &cand).map(|n| n as u64);
                            match &self.noise {
                                Some(Ok(noise)) => (o.differences, o.noise) = compare::split_noise(diffs, noise),
                                Some(Err(e)) => {
                                    o.differences = diffs;
                                    o.baseline_error = Some(e.clone());
                                }
                                None => o.differences = diffs,
                            }
                        }
                    },
                }
            }
            Err(e) => o.error = Some(e),
        }
        out.send(Event::Outcome(Box::new(o)));
    }
}

/// Replays one exchange to the baseline and every target, blocking. False when the
/// collector is gone.
fn replay_one(job: &Job, config: &ReplayConfig, conns: &mut Connections, out: &mut Outbox) -> bool {
    let ex = &job.exchange;
    let Some(req) = admitted(ex, config, out) else {
        return !out.closed;
    };
    let now = Instant::now();
    if job.at > now {
        std::thread::sleep(job.at - now);
    }
    let mut plan = Plan::new(ex, &req, config, out);
    while let Some(send) = plan.next() {
        let answer = match &send.request {
            Ok(bytes) => conns.send(send.index, config.target(send.index), &ex.connection, bytes, config.timeout).map_err(|e| failure(&e)),
            Err(refused) => Err(refused.clone()),
        };
        plan.answered(ex, answer, config, out);
    }
    !out.closed
}

/// The report's kind of a failed exchange.
fn failure(e: &SendError) -> Failure {
    let kind = match e {
        SendError::Connect(_) => ErrorKind::Connect,
        SendError::WriteTimeout(_) => ErrorKind::WriteTimeout,
        SendError::Write(_) => ErrorKind::Write,
        SendError::ReadTimeout(_) => ErrorKind::ReadTimeout,
        SendError::Read(_) => ErrorKind::Read,
        SendError::Closed => ErrorKind::Closed,
        SendError::Handshake(_) => ErrorKind::Tls,
    };
    Failure::new(kind, e.to_string())
}

/// The status of a target's answer, which must parse like one to compare
/// ([`candidate_response`]) but is not kept. The framer framed its body already; only
/// a chunked one is decoded again here (a malformed chunk is a bad response).
fn candidate_status(answer: &target::Answer) -> Result<u16, Failure> {
    let bad = |e: &dyn std::fmt::Display| Failure::new(ErrorKind::BadResponse, format!("response unparseable: {e}"));
    let (status, head) = answer.head.as_ref().map_err(|e| bad(e))?;
    if head.framing == message::BodyFraming::Chunked {
        head.body(&answer.bytes).map_err(|e| bad(&e))?;
    }
    Ok(*status)
}

/// A target's answer as a response to compare.
fn candidate_response(answer: &target::Answer) -> Result<Response, Failure> {
    let bad = |e: &dyn std::fmt::Display| Failure::new(ErrorKind::BadResponse, format!("response unparseable: {e}"));
    let (status, head) = answer.head.as_ref().map_err(|e| bad(e))?;
    let mut response = compare::from_head(&answer.bytes, *status, head).map_err(|e| bad(&e))?;
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
            compare: Some(CompareSettings::default()),
            production: ProductionCheck { local: safety::LocalAddresses::new(vec![]), allow: false },
            keep_alive: KeepAlive::default(),
            threads: 0,
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
        let skip = |ex: &Exchange, cfg: &ReplayConfig| skip_reason(ex, cfg).map(|r| (r.label(), r.to_string()));
        let cut = Exchange { request_cut: Some(3_000_000), ..exchange("POST / HTTP/1.1\r\nContent-Length: 3000000\r\n\r\nabc") };
        let (label, message) = skip(&cut, &cfg).unwrap();
        assert!(label == "request_cut" && message.starts_with("request cut at capture"), "{message}");
        // A GoReplay file has no flag: the body shorter than its Content-Length says it.
        cfg.allow_methods.push("POST".into());
        let short = exchange("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        let (label, message) = skip(&short, &cfg).unwrap();
        assert!(label == "body_incomplete" && message.starts_with("request body incomplete"), "{message}");
        let ambiguous = Exchange { request_ambiguous: Some("content_length_and_chunked".into()), ..get.clone() };
        assert_eq!(
            skip(&ambiguous, &cfg),
            Some(("ambiguous", "request framing ambiguous at capture (content_length_and_chunked): not sent (--replay-ambiguous sends it)".into()))
        );
        cfg.replay_ambiguous = true;
        assert_eq!(skip_reason(&ambiguous, &cfg), None);
        assert_eq!(
            skip(&exchange("DELETE / HTTP/1.1\r\n\r\n"), &cfg),
            Some(("method_not_allowed", "method DELETE not allowed (use --allow-method)".into()))
        );
        let (label, message) = skip(&exchange("\x16\x03 junk\r\n\r\n"), &cfg).unwrap();
        assert!(label == "unreplayable" && message.starts_with("unreplayable request"), "{message}");
        for reason in [SkipReason::RequestCut, SkipReason::BodyIncomplete] {
            assert!(crate::metrics::replay::SKIP_REASONS.contains(&reason.label()));
        }
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
