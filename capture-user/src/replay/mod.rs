//! `capture replay`: sends captured requests to candidate targets and compares
//! their responses with production's.
//!
//! Exchanges are dispatched by captured connection to a fixed pool of workers, so
//! requests of one connection replay in order on one keep-alive connection per
//! target, and concurrency is bounded by the pool. Each request waits for its
//! scheduled time (original pacing divided by `--speed`, or a fixed `--rate`).
//! Nothing is retried.

pub mod input;
#[cfg(feature = "kafka")]
pub mod kafka_input;
pub mod request;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use crate::compare::{self, CompareConfig, Outcome, Report};
use crate::flow::Direction;
use crate::http::{HttpConfig, HttpConnection, HttpMessage, HttpStats, MessageKind};
use input::Exchange;
use request::{RewriteOptions, TargetUrl};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// The captured gaps between requests divided by this factor (1.0 = original timing).
    Original { speed: f64 },
    /// A fixed number of requests per second, in capture order.
    Rate(f64),
}

#[derive(Clone, Debug)]
pub struct ReplayConfig {
    pub targets: Vec<TargetUrl>,
    /// A second copy of production: differences it shows too are noise.
    pub baseline: Option<TargetUrl>,
    pub pacing: Pacing,
    /// Upper-case methods that may be replayed.
    pub allow_methods: Vec<String>,
    pub rewrite: RewriteOptions,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Compare candidate responses with production's (None: replay only).
    pub compare: Option<CompareConfig>,
}

/// Methods replayed without explicit opt-in: they must not have side effects.
pub const SAFE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];

struct Job {
    exchange: Exchange,
    at: Instant,
}

/// Replays `exchanges` (in capture order), adding every outcome to `report`.
pub fn run(exchanges: impl IntoIterator<Item = Exchange>, config: &ReplayConfig, mut report: Report) -> Report {
    let workers = config.concurrency.max(1);
    let (out_tx, out_rx) = sync_channel::<Result<Outcome, String>>(1024);
    let mut senders: Vec<SyncSender<Job>> = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = sync_channel::<Job>(256);
        senders.push(tx);
        let (cfg, out) = (config.clone(), out_tx.clone());
        handles.push(std::thread::spawn(move || worker(rx, cfg, out)));
    }
    drop(out_tx);
    let collector = std::thread::spawn(move || {
        for item in out_rx {
            match item {
                Ok(outcome) => report.add(outcome),
                Err(reason) => report.count_skipped(&reason),
            }
        }
        report
    });
    let start = Instant::now() + Duration::from_millis(50);
    let mut first_ts = None;
    for (i, exchange) in exchanges.into_iter().enumerate() {
        let offset = match config.pacing {
            Pacing::Original { speed } => {
                let first = *first_ts.get_or_insert(exchange.ts_ns);
                let gap = exchange.ts_ns.saturating_sub(first) as f64 / speed.max(1e-9);
                Duration::from_nanos(gap as u64)
            }
            Pacing::Rate(rate) => Duration::from_secs_f64(i as f64 / rate.max(1e-9)),
        };
        let slot = worker_for(&exchange.connection, workers);
        if senders[slot].send(Job { exchange, at: start + offset }).is_err() {
            break;
        }
    }
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

/// A keep-alive connection to one target for one captured connection.
struct TargetConn {
    stream: TcpStream,
    framer: HttpConnection,
}

fn worker(rx: Receiver<Job>, config: ReplayConfig, out: SyncSender<Result<Outcome, String>>) {
    // (captured connection, target) -> open connection.
    let mut conns: HashMap<(String, String), TargetConn> = HashMap::new();
    for job in rx {
        let ex = &job.exchange;
        let head = match request::parse_head(&ex.request) {
            Ok(h) => h,
            Err(e) => {
                let _ = out.send(Err(format!("unreplayable request: {e}")));
                continue;
            }
        };
        if !config.allow_methods.iter().any(|m| m == &head.method) {
            let _ = out.send(Err(format!("method {} not allowed (use --allow-method)", head.method)));
            continue;
        }
        let now = Instant::now();
        if job.at > now {
            std::thread::sleep(job.at - now);
        }
        let path = head.target.split('?').next().unwrap_or("").to_string();
        let production = ex.response.as_deref().and_then(|r| compare::parse_response(r).ok());
        let baseline = match (&config.baseline, &config.compare) {
            (Some(b), Some(_)) => send(&mut conns, ex, &head, b, &config).ok().map(|(resp, _)| resp),
            _ => None,
        };
        for target in &config.targets {
            let mut outcome = Outcome {
                id: ex.id.clone(),
                method: head.method.clone(),
                path: path.clone(),
                target: target.to_string(),
                production_status: production.as_ref().map(|p| p.status),
                candidate_status: None,
                production_latency_ms: ex.production_latency_ns.map(|n| n as f64 / 1e6),
                candidate_latency_ms: None,
                error: None,
                differences: Vec::new(),
                noise: Vec::new(),
            };
            match send(&mut conns, ex, &head, target, &config) {
                Ok((resp, latency)) => {
                    outcome.candidate_latency_ms = Some(latency.as_secs_f64() * 1e3);
                    outcome.candidate_status = resp.as_ref().map(|r| r.status);
                    if let (Some(cfg), Some(prod), Some(cand)) = (&config.compare, &production, &resp) {
                        let diffs = compare::compare(prod, cand, cfg);
                        let base_diffs = baseline.as_ref().and_then(|b| b.as_ref()).map(|b| compare::compare(prod, b, cfg));
                        match base_diffs {
                            Some(base) => (outcome.differences, outcome.noise) = compare::split_noise(diffs, &base),
                            None => outcome.differences = diffs,
                        }
                    }
                }
                Err(e) => outcome.error = Some(e),
            }
            if out.send(Ok(outcome)).is_err() {
                return;
            }
        }
    }
}

/// Sends one request to `target` on the captured connection's keep-alive connection
/// (opened on demand) and reads one response. Latency: request written to first
/// response byte, like the capture's (request end to response start).
fn send(
    conns: &mut HashMap<(String, String), TargetConn>,
    ex: &Exchange,
    head: &request::RequestHead,
    target: &TargetUrl,
    config: &ReplayConfig,
) -> Result<(Option<compare::Response>, Duration), String> {
    let addr = resolve(target)?;
    if let Some(server) = &ex.server {
        if server.parse::<SocketAddr>().ok() == Some(addr) {
            return Err(format!("refused: {target} is the captured production server {server}"));
        }
    }
    let key = (ex.connection.clone(), target.to_string());
    let bytes = request::rewrite(&ex.request, head, target, &config.rewrite);
    // A reused connection may have been closed by the target: retry once on a fresh one
    // only if nothing was read (the request was not processed).
    for attempt in 0..2 {
        if !conns.contains_key(&key) {
            let stream = TcpStream::connect_timeout(&addr, config.timeout).map_err(|e| format!("connect {target}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(config.timeout));
            let framer = HttpConnection::new(HttpConfig { max_message_bytes: 64 << 20, ..HttpConfig::default() });
            conns.insert(key.clone(), TargetConn { stream, framer });
        }
        let conn = conns.get_mut(&key).expect("inserted");
        match exchange_once(conn, &bytes, config.timeout) {
            Ok(r) => {
                if r.2 {
                    conns.remove(&key);
                }
                return Ok((r.0, r.1));
            }
            Err((e, nothing_read)) => {
                conns.remove(&key);
                if !(nothing_read && attempt == 0) {
                    return Err(format!("{target}: {e}"));
                }
            }
        }
    }
    Err(format!("{target}: connection closed"))
}

fn resolve(target: &TargetUrl) -> Result<SocketAddr, String> {
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {target}: no address"))
}

/// Writes the request and frames one response. Returns (response, latency, closed)
/// or (error, whether no byte of a response was read).
#[allow(clippy::type_complexity)]
fn exchange_once(conn: &mut TargetConn, bytes: &[u8], timeout: Duration) -> Result<(Option<compare::Response>, Duration, bool), (String, bool)> {
    let mut stats = HttpStats::default();
    let mut msgs: Vec<HttpMessage> = Vec::new();
    conn.stream.write_all(bytes).map_err(|e| (format!("write: {e}"), true))?;
    let sent = Instant::now();
    conn.framer.on_data(Direction::ClientToServer, bytes, 0, &mut stats, &mut msgs);
    msgs.retain(|m| m.kind == MessageKind::Response);
    let mut first_byte: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = sent + timeout;
    let mut closed = false;
    while msgs.is_empty() {
        if Instant::now() > deadline {
            return Err((format!("timeout after {timeout:?}"), first_byte.is_none()));
        }
        match conn.stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                conn.framer.on_close(0, &mut stats, &mut msgs);
                msgs.retain(|m| m.kind == MessageKind::Response);
                if msgs.is_empty() {
                    return Err(("connection closed before a response".into(), first_byte.is_none()));
                }
            }
            Ok(n) => {
                first_byte.get_or_insert_with(Instant::now);
                conn.framer.on_data(Direction::ServerToClient, &buf[..n], 0, &mut stats, &mut msgs);
                msgs.retain(|m| m.kind == MessageKind::Response);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err((format!("timeout after {timeout:?}"), first_byte.is_none()));
            }
            Err(e) => return Err((format!("read: {e}"), first_byte.is_none())),
        }
    }
    let latency = first_byte.unwrap_or_else(Instant::now) - sent;
    let response = compare::parse_response(&msgs[0].bytes).ok();
    // A close-delimited or `Connection: close` response ends this connection.
    let close_header = response.as_ref().is_some_and(|r| {
        r.headers.iter().any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"))
    });
    Ok((response, latency, closed || close_header))
}
