//! `cargo xtask bench`: capture completeness, server cost and CPU, side by side.
//!
//! In a network namespace it creates (loopback only), nginx serves files of each
//! `--sizes` size to wrk for a fixed time, interleaved and repeated:
//!   A  no capture
//!   B  `capture agent` writing a .gor file (B-kafka: to a local tansu broker, in the
//!      default batch format and in the records format; with
//!      `--controls` also B-sample: `--sample 10`, B-filtered: a filter that drops
//!      every exchange)
//!   C  `tcpdump -w /dev/null` with the same port filter (the libpcap path)
//!   G  GoReplay (`GOR=/path/to/gor`) reading the same port to stdout (/dev/null)
//! and prints medians (min..max) of requests/s, ratios to A, requests and whole
//! responses captured vs served, CPU per 100k requests, peak RSS and drop counters.
//!
//! Every run checks what it measured: wrk's script counts answers that are not a 200
//! with the whole body, nginx's access log says what it sent; either kind of bad
//! answer fails the bench (a benchmark of 403s measures nothing).
//!
//! The HTTPS variant: nginx serves 100 B over TLS (self-signed) to wrk over https,
//! without (A) and with the agent capturing plaintext at OpenSSL (`--tls-lib`, B);
//! wrk uses the same libssl, but with the default `--tls-scope listeners` only nginx's
//! processes are probed (`CAPTURE_TLS_SCOPE=all` in the environment measures the
//! probes on every process instead).
//!
//! The latency run: wrk paced at about half of A's maximum (of this run), without
//! and with capture; wrk's p50/p99 are the price a production request pays.

mod records;
mod wrk;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use records::Captured;
use wrk::{Load, WrkRun};

const PORT: u16 = 18090;
const HTTPS_PORT: u16 = 18091;
/// Debian's OpenSSL 3, which nginx and wrk load.
const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const KAFKA_PORT: u16 = 19190;
/// The HTTPS section serves this size.
const HTTPS_SIZE: usize = 100;
/// Largest `--sizes` value: a response stays below the agent's default
/// `--max-message-size` (1,000,000) and Kafka part size, so it is one whole record.
pub const MAX_SIZE: u64 = 512 * 1024;

pub struct BenchOptions {
    pub duration_s: u64,
    pub repeats: usize,
    pub kafka: bool,
    pub connections: u32,
    /// Also measure HTTPS (nginx TLS, wrk over https) without and with `--tls-lib`.
    pub https: bool,
    /// Response sizes in bytes, one section each.
    pub sizes: Vec<usize>,
    /// Sizes (among `sizes`) of the fixed-rate latency run; empty: no latency run.
    pub latency_sizes: Vec<usize>,
    /// A GoReplay binary to run as a capture variant (the `GOR` environment variable).
    pub goreplay: Option<PathBuf>,
    /// Also the traffic-control variants: `--sample 10` and everything filtered out.
    pub controls: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Variant {
    NoCapture,
    AgentFile,
    /// `--sample 10`: 10 % of the connections, chosen in the kernel.
    AgentSample,
    /// `--deny-path` matching every request: framed, judged, nothing written.
    AgentFiltered,
    AgentKafka,
    /// `--kafka-format records`: one record per message with its metadata headers.
    AgentKafkaRecords,
    Tcpdump,
    GoReplay,
}

impl Variant {
    fn is_agent(self) -> bool {
        matches!(self, Variant::AgentFile | Variant::AgentSample | Variant::AgentFiltered | Variant::AgentKafka | Variant::AgentKafkaRecords)
    }

    fn is_kafka(self) -> bool {
        matches!(self, Variant::AgentKafka | Variant::AgentKafkaRecords)
    }

    fn label(self) -> &'static str {
        match self {
            Variant::NoCapture => "A  no capture",
            Variant::AgentFile => "B  agent -> file",
            Variant::AgentSample => "B  file --sample 10",
            Variant::AgentFiltered => "B  file, all filtered",
            Variant::AgentKafka => "B  agent -> kafka",
            Variant::AgentKafkaRecords => "B  kafka, format records",
            Variant::Tcpdump => "C  tcpdump",
            Variant::GoReplay => "G  goreplay",
        }
    }

    /// Rough seconds a run costs beyond wrk's duration (start, stop, counting), for
    /// the estimate printed at start.
    fn overhead_s(self, size: usize) -> f64 {
        // Measured on the 2-core machine: the agent's start (eBPF load and verifier),
        // and reading back what it wrote, which grows with the body size.
        let per_64k = size as f64 / 65536.0;
        match self {
            Variant::NoCapture => 0.5,
            Variant::Tcpdump => 0.7,
            Variant::GoReplay => 1.7,
            Variant::AgentKafka | Variant::AgentKafkaRecords => 3.0 + 6.0 * per_64k,
            Variant::AgentFile | Variant::AgentSample | Variant::AgentFiltered => 2.5 + 2.0 * per_64k,
        }
    }
}

/// What nginx's access log (`$status $body_bytes_sent` per line) says it answered.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
struct Served {
    requests: u64,
    /// 200 with the whole file.
    whole: u64,
    /// Cut by wrk closing its connections at the deadline: a 200 with fewer bytes, or
    /// 499 (client closed first). At most one per connection.
    cut: u64,
    /// Any other answer; the first few lines are kept for the error message.
    other: u64,
    other_lines: Vec<String>,
}

impl Served {
    fn read(log: &Path, body_size: usize) -> Result<Served> {
        let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
        Ok(Served::parse(&text, body_size))
    }

    fn parse(text: &str, body_size: usize) -> Served {
        let mut served = Served::default();
        for line in text.lines() {
            served.requests += 1;
            let mut fields = line.split_whitespace();
            let status = fields.next().unwrap_or("");
            let bytes: Option<usize> = fields.next().and_then(|b| b.parse().ok());
            match (status, bytes) {
                ("200", Some(b)) if b == body_size => served.whole += 1,
                ("200", Some(b)) if b < body_size => served.cut += 1,
                ("499", _) => served.cut += 1,
                _ => {
                    served.other += 1;
                    if served.other_lines.len() < 3 {
                        served.other_lines.push(line.to_string());
                    }
                }
            }
        }
        served
    }

    /// Why nginx's answers of a run with `connections` connections cannot be trusted.
    fn bad_answers(&self, connections: u32) -> Option<String> {
        if self.other > 0 {
            return Some(format!("nginx logged {} answers other than 200 with the whole body, e.g. {:?}", self.other, self.other_lines));
        }
        if self.cut > u64::from(connections) {
            return Some(format!("nginx cut {} answers short, more than the {connections} wrk can close at its deadline", self.cut));
        }
        if self.whole == 0 {
            return Some("nginx logged no whole answer".into());
        }
        None
    }
}

/// One measured run.
#[derive(Default, Clone)]
struct Run {
    wrk: WrkRun,
    served: Served,
    /// What the capture wrote (agent variants).
    captured: Option<Captured>,
    /// The agent's own count of requests framed and records its output took
    /// (`http_requests`, `output0_records_written`): where a shortfall in `captured` arose.
    agent_requests: u64,
    agent_records_written: u64,
    /// Kafka messages the broker acknowledged (`output0_messages_written`).
    agent_messages_written: u64,
    cpu_ms: u64,
    /// Agent variants: its CPU while wrk ran (without start-up: the verifier's ~0.6 s).
    cpu_under_load_ms: u64,
    rss_kb: u64,
    kernel_drops: u64,
    user_drops: u64,
}

pub(crate) struct Namespace(pub(crate) String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers (SIGKILL would orphan them).
        // (Already gone when the bench reports a process that exited: say nothing then.)
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the bench's temporary directory, also when a check fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn wait_port(ns: &str, port: u16) -> Result<()> {
    let probe = format!("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if Command::new("ip").args(["netns", "exec", ns, "python3", "-c", &probe]).stderr(Stdio::null()).status()?.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on port {port} in {ns}")
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// utime+stime in ms and VmHWM in KiB of a live process.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the command name: state is field 0, utime 11, stime 12 (proc(5)); 100 ticks/s.
    let cpu_ms = (ticks(11) + ticks(12)) * 10;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu_ms, hwm)
}

fn kv(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|p| p.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// GoReplay's capture side as the issue names it: raw input with responses, to stdout.
fn goreplay_args(port: &str) -> Vec<String> {
    vec!["--input-raw".into(), format!(":{port}"), "--input-raw-track-response".into(), "--output-stdout".into()]
}

/// What one section loads: a URL whose body is `body_size` bytes.
struct Target {
    name: String,
    url: String,
    body_size: usize,
    https: bool,
}

impl Target {
    fn http(size: usize) -> Target {
        Target { name: size_name(size), url: format!("http://127.0.0.1:{PORT}/{size}.bin"), body_size: size, https: false }
    }

    fn https(size: usize) -> Target {
        Target {
            name: format!("HTTPS {}", size_name(size)),
            url: format!("https://127.0.0.1:{HTTPS_PORT}/{size}.bin"),
            body_size: size,
            https: true,
        }
    }
}

fn size_name(size: usize) -> String {
    match size {
        s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}

/// The namespace with nginx (and tansu) running, and where runs put their files.
struct Bench<'a> {
    ns: String,
    bin: PathBuf,
    dir: PathBuf,
    access_log: PathBuf,
    opts: &'a BenchOptions,
    runs: u32,
}

impl Bench<'_> {
    fn run(&mut self, variant: Variant, target: &Target, load: &Load) -> Result<Run> {
        self.runs += 1;
        let port = if target.https { HTTPS_PORT } else { PORT }.to_string();
        std::fs::write(&self.access_log, "")?;
        let ns = self.ns.clone();
        let mut run = Run::default();
        match variant {
            Variant::NoCapture => {
                run.wrk = wrk::run(&ns, &target.url, target.body_size, load, &self.dir)?;
            }
            Variant::AgentFile | Variant::AgentSample | Variant::AgentFiltered | Variant::AgentKafka | Variant::AgentKafkaRecords => {
                // A fresh topic or directory per run: what the run wrote is counted alone.
                let out_dir = self.dir.join(format!("run-{}", self.runs));
                std::fs::create_dir_all(&out_dir)?;
                let topic = format!("bench-{}", self.runs);
                let broker = format!("127.0.0.1:{KAFKA_PORT}");
                let output = if variant.is_kafka() {
                    sh(&format!("ip netns exec {ns} tansu topic create {topic} --broker tcp://{broker} --partitions 3"))?;
                    format!("kafka://{broker}/{topic}")
                } else {
                    format!("file://{}", out_dir.join("bench.gor").display())
                };
                let controls: &[&str] = match variant {
                    Variant::AgentSample => &["--sample", "10"],
                    Variant::AgentFiltered => &["--deny-path", "^/"],
                    Variant::AgentKafkaRecords => &["--kafka-format", "records"],
                    _ => &[],
                };
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .arg(&self.bin)
                    .args(["agent", "--iface", "lo", "--port", &port, "--output", &output])
                    .args(if target.https { vec!["--tls-lib", LIBSSL] } else { vec![] })
                    .args(controls)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .env("RUST_LOG", "warn")
                    .spawn()
                    .context("starting the agent")?;
                let pid = child.id();
                let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
                loop {
                    match lines.next() {
                        Some(Ok(l)) if l.contains("capture: ready") => break,
                        Some(Ok(_)) => {}
                        _ => bail!("the agent exited before it was ready"),
                    }
                }
                let child = Killed(child);
                let (cpu_before, _) = proc_usage(pid);
                run.wrk = wrk::run(&ns, &target.url, target.body_size, load, &self.dir)?;
                run.cpu_under_load_ms = proc_usage(pid).0.saturating_sub(cpu_before);
                std::thread::sleep(Duration::from_millis(300));
                signal(pid, "-INT");
                let mut summary = HashMap::new();
                for line in lines.map_while(Result::ok) {
                    if line.contains("capture: summary") {
                        summary = kv(&line);
                    }
                }
                drop(child);
                if summary.is_empty() {
                    bail!("{}: the agent printed no summary line at exit", variant.label());
                }
                let get = |k: &str| summary.get(k).copied().unwrap_or(0);
                run.agent_requests = get("http_requests");
                run.agent_records_written = get("output0_records_written");
                run.agent_messages_written = get("output0_messages_written");
                run.cpu_ms = get("agent_cpu_user_ms") + get("agent_cpu_sys_ms");
                run.rss_kb = get("agent_max_rss_kb");
                run.kernel_drops = get("kernel_ring_full_events")
                    + get("kernel_copy_errors")
                    + get("kernel_truncated_skbs")
                    + get("kernel_tls_ring_full_events")
                    + get("kernel_tls_copy_errors")
                    + get("kernel_tls_truncated_calls");
                run.user_drops =
                    get("stream_gaps") + get("http_lost_to_gap") + get("output0_records_dropped") + get("output0_records_failed");
                run.captured = Some(if variant.is_kafka() {
                    let captured = records::count_kafka(&ns, &broker, &topic, run.agent_records_written, target.body_size)?;
                    sh(&format!("ip netns exec {ns} tansu topic delete {topic} --broker tcp://{broker}"))?;
                    captured
                } else {
                    records::count_dir(&out_dir, target.body_size)?
                });
                std::fs::remove_dir_all(&out_dir)?;
            }
            Variant::Tcpdump => {
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &ns, "tcpdump", "-i", "lo", "-w", "/dev/null", "-s", "0", "tcp", "port", &port])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting tcpdump")?;
                let pid = child.id();
                let mut stderr = BufReader::new(child.stderr.take().unwrap());
                let mut line = String::new();
                stderr.read_line(&mut line)?; // "listening on lo ..."
                let child = Killed(child);
                run.wrk = wrk::run(&ns, &target.url, target.body_size, load, &self.dir)?;
                // `ip netns exec` execs tcpdump, so the pid is tcpdump's.
                (run.cpu_ms, run.rss_kb) = proc_usage(pid);
                signal(pid, "-INT");
                let mut rest = String::new();
                std::io::Read::read_to_string(&mut stderr, &mut rest)?;
                drop(child);
                run.kernel_drops = rest
                    .lines()
                    .find(|l| l.contains("dropped by kernel"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
            Variant::GoReplay => {
                let gor = self.opts.goreplay.as_deref().context("GoReplay variant without GOR")?;
                let log = self.dir.join("goreplay.log");
                let mut child = Killed(
                    Command::new("ip")
                        .args(["netns", "exec", &ns])
                        .arg(gor)
                        .args(goreplay_args(&port))
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(&log)?)
                        .spawn()
                        .with_context(|| format!("starting GoReplay ({})", gor.display()))?,
                );
                let pid = child.0.id();
                // GoReplay says nothing when it is ready: give it a second to open its sockets.
                std::thread::sleep(Duration::from_secs(1));
                let exited = |child: &mut Killed| -> Result<()> {
                    if let Some(status) = child.0.try_wait()? {
                        bail!(
                            "GoReplay ({}) exited ({status}): {}",
                            gor.display(),
                            std::fs::read_to_string(&log).unwrap_or_default().trim()
                        );
                    }
                    Ok(())
                };
                exited(&mut child)?;
                run.wrk = wrk::run(&ns, &target.url, target.body_size, load, &self.dir)?;
                (run.cpu_ms, run.rss_kb) = proc_usage(pid);
                exited(&mut child)?;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        run.served = Served::read(&self.access_log, target.body_size)?;
        let connections = load.connections.max(2);
        if let Some(why) = run.wrk.bad_answers().or_else(|| run.served.bad_answers(connections)) {
            bail!("{}, {}: the answers were not all 200 with the whole {}-byte body: {why}", target.name, variant.label(), target.body_size);
        }
        Ok(run)
    }
}

/// A tansu broker (in memory) listening on `port` inside namespace `ns`, once it accepts.
pub(crate) fn start_tansu(ns: &str, port: u16) -> Result<Killed> {
    let url = format!("tcp://127.0.0.1:{port}");
    let broker = Killed(
        Command::new("ip")
            .args(["netns", "exec", ns, "tansu", "broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu (cargo xtask test installs it; or pass --no-kafka)")?,
    );
    wait_port(ns, port)?;
    Ok(broker)
}

pub(crate) fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (med, v[0], v[n - 1])
}

fn fmt(m: (f64, f64, f64), digits: usize) -> String {
    format!("{:.d$} ({:.d$}..{:.d$})", m.0, m.1, m.2, d = digits)
}

/// Percentage `part` of `whole` per run, as median (min..max).
fn share(runs: &[Run], part: impl Fn(&Run) -> u64, whole: impl Fn(&Run) -> u64) -> String {
    fmt(median(runs.iter().map(|r| 100.0 * part(r).min(whole(r)) as f64 / whole(r).max(1) as f64).collect()), 2)
}

fn print_throughput(name: &str, variants: &[Variant], results: &HashMap<Variant, Vec<Run>>) {
    let base = median(results[&Variant::NoCapture].iter().map(|r| r.wrk.rps).collect()).0;
    println!("\n== {name} response ==");
    println!(
        "{:<22} {:>26} {:>7} {:>22} {:>22} {:>20} {:>18} {:>16} {:>14}",
        "variant",
        "requests/s med (min..max)",
        "ratio",
        "requests capt/served %",
        "whole resp capt/served %",
        "CPU ms per 100k req",
        "under load (agent)",
        "peak RSS MB",
        "drops k/u"
    );
    for &v in variants {
        let runs = &results[&v];
        let rps = median(runs.iter().map(|r| r.wrk.rps).collect());
        let cpu = median(runs.iter().map(|r| r.cpu_ms as f64 * 100_000.0 / r.wrk.completed.max(1) as f64).collect());
        let cpu_loaded = median(runs.iter().map(|r| r.cpu_under_load_ms as f64 * 100_000.0 / r.wrk.completed.max(1) as f64).collect());
        let rss = median(runs.iter().map(|r| r.rss_kb as f64 / 1024.0).collect());
        let captured = |r: &Run| r.captured.unwrap_or_default();
        let kdrops: u64 = runs.iter().map(|r| r.kernel_drops).sum();
        let udrops: u64 = runs.iter().map(|r| r.user_drops).sum();
        let none = || "-".to_string();
        let capture = v != Variant::NoCapture;
        println!(
            "{:<22} {:>26} {:>7.3} {:>22} {:>22} {:>20} {:>18} {:>16} {:>14}",
            v.label(),
            fmt(rps, 0),
            rps.0 / base,
            if v.is_agent() { share(runs, |r| captured(r).requests, |r| r.served.requests) } else { none() },
            if v.is_agent() { share(runs, |r| captured(r).whole_responses, |r| r.served.whole) } else { none() },
            if capture { fmt(cpu, 0) } else { none() },
            if v.is_agent() { fmt(cpu_loaded, 0) } else { none() },
            if capture { fmt(rss, 1) } else { none() },
            if capture { format!("{kdrops}/{udrops}") } else { none() },
        );
    }
    for &v in variants {
        let runs = &results[&v];
        let sum = |f: &dyn Fn(&Run) -> u64| -> u64 { runs.iter().map(f).sum() };
        let checked = format!(
            "wrk completed {}, every answer 200 with the whole body; nginx logged {} ({} whole, {} cut at wrk's deadline)",
            sum(&|r| r.wrk.completed),
            sum(&|r| r.served.requests),
            sum(&|r| r.served.whole),
            sum(&|r| r.served.cut),
        );
        if v.is_agent() {
            let c = |f: fn(&Captured) -> u64| sum(&|r| r.captured.as_ref().map(f).unwrap_or(0));
            println!(
                "{}: captured {} requests, {} responses, {} whole ({} unpaired, {} truncated) (agent: {} requests framed, {} records written{}); {checked}",
                v.label(),
                c(|c| c.requests),
                c(|c| c.responses),
                c(|c| c.whole_responses),
                c(|c| c.unpaired),
                c(|c| c.truncated),
                sum(&|r| r.agent_requests),
                sum(&|r| r.agent_records_written),
                match sum(&|r| r.agent_messages_written) {
                    0 => String::new(),
                    n => format!(" in {n} Kafka messages"),
                },
            );
        } else {
            println!("{}: {checked}", v.label());
        }
    }
}

fn print_latency(name: &str, variants: &[Variant], results: &HashMap<Variant, Vec<(Load, Run)>>) {
    let p99 = |v: Variant| median(results[&v].iter().map(|(_, r)| r.wrk.p99_us as f64).collect());
    let base = p99(Variant::NoCapture).0;
    println!("\n== {name} response, fixed rate (about half of A's maximum) ==");
    println!(
        "{:<22} {:>12} {:>28} {:>24} {:>24} {:>9}",
        "variant", "target rate", "achieved req/s med (min..max)", "p50 ms med (min..max)", "p99 ms med (min..max)", "p99 vs A"
    );
    for &v in variants {
        let runs = &results[&v];
        let target = median(runs.iter().map(|(l, _)| l.offered_rate().unwrap_or(0.0)).collect()).0;
        let achieved = median(runs.iter().map(|(_, r)| r.wrk.rps).collect());
        let p50 = median(runs.iter().map(|(_, r)| r.wrk.p50_us as f64 / 1000.0).collect());
        let p99_ms = p99(v);
        println!(
            "{:<22} {:>12.0} {:>28} {:>24} {:>24} {:>9.2}",
            v.label(),
            target,
            fmt(achieved, 0),
            fmt(p50, 2),
            fmt((p99_ms.0 / 1000.0, p99_ms.1 / 1000.0, p99_ms.2 / 1000.0), 2),
            p99_ms.0 / base.max(1.0)
        );
    }
}

pub fn bench(root: &Path, opts: BenchOptions) -> Result<()> {
    let started = Instant::now();
    let bin = root.join("target/release/capture");
    let dir = TempDir(std::env::temp_dir().join(format!("capture-bench-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("www"))?;
    let mut files: Vec<usize> = opts.sizes.clone();
    files.push(HTTPS_SIZE);
    for size in files {
        std::fs::write(dir.0.join(format!("www/{size}.bin")), (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())?;
    }
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=capture-bench -keyout {d}/key.pem -out {d}/cert.pem 2>/dev/null",
        d = dir.0.display()
    ))?;
    let ns = Namespace(format!("capbench{}", std::process::id()));
    sh(&format!("ip netns add {} && ip -n {} link set lo up", ns.0, ns.0))?;
    let access_log = dir.0.join("access.log");
    let conf = dir.0.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ log_format bench '$status $body_bytes_sent'; access_log {log} bench; keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{PORT}; root {d}/www; }}\n\
               server {{ listen 127.0.0.1:{HTTPS_PORT} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; root {d}/www; }} }}\n",
            d = dir.0.display(),
            log = access_log.display()
        ),
    )?;
    let _nginx = Killed(
        Command::new("ip").args(["netns", "exec", &ns.0, "nginx", "-c"]).arg(&conf).stdout(Stdio::null()).spawn()?,
    );
    wait_port(&ns.0, PORT)?;
    let mut variants = vec![Variant::NoCapture, Variant::AgentFile];
    if opts.controls {
        variants.extend([Variant::AgentSample, Variant::AgentFiltered]);
    }
    variants.push(Variant::Tcpdump);
    let _broker = if opts.kafka {
        let broker = start_tansu(&ns.0, KAFKA_PORT)?;
        variants.insert(variants.len() - 1, Variant::AgentKafkaRecords);
        variants.insert(variants.len() - 1, Variant::AgentKafka);
        Some(broker)
    } else {
        None
    };
    if opts.goreplay.is_some() {
        variants.push(Variant::GoReplay);
    }
    let https_variants = [Variant::NoCapture, Variant::AgentFile];
    // The latency run: without capture, the agent to file (and Kafka), GoReplay if given.
    let latency_variants: Vec<Variant> = variants
        .iter()
        .copied()
        .filter(|v| matches!(v, Variant::NoCapture | Variant::AgentFile | Variant::AgentKafka | Variant::GoReplay))
        .collect();

    let run_s = |v: &Variant, size: usize| opts.duration_s as f64 + v.overhead_s(size);
    let mut expected_s: f64 = opts.sizes.iter().map(|&s| variants.iter().map(|v| run_s(v, s)).sum::<f64>()).sum();
    if opts.https {
        expected_s += https_variants.iter().map(|v| run_s(v, HTTPS_SIZE)).sum::<f64>();
    }
    expected_s += opts.latency_sizes.iter().map(|&s| latency_variants.iter().map(|v| run_s(v, s)).sum::<f64>()).sum::<f64>();
    expected_s *= opts.repeats as f64;
    println!(
        "capture bench: {} core(s), kernel {}, wrk -t2 -c{} -d{}s, sizes {}, {} repeats interleaved ({}){}{}; about {:.0} min",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        sh("uname -r")?.trim(),
        opts.connections,
        opts.duration_s,
        opts.sizes.iter().map(|&s| size_name(s)).collect::<Vec<_>>().join(", "),
        opts.repeats,
        variants.iter().map(|v| v.label().split_whitespace().next().unwrap_or("")).collect::<Vec<_>>().join(" "),
        if opts.https { ", HTTPS 100 B" } else { "" },
        if opts.latency_sizes.is_empty() {
            String::new()
        } else {
            format!(", fixed-rate latency at {}", opts.latency_sizes.iter().map(|&s| size_name(s)).collect::<Vec<_>>().join(", "))
        },
        (expected_s / 60.0).ceil()
    );

    let mut bench = Bench { ns: ns.0.clone(), bin, dir: dir.0.clone(), access_log, opts: &opts, runs: 0 };
    let full_load = Load { connections: opts.connections, duration_s: opts.duration_s, mean_delay_ms: None };
    let mut sections: Vec<(Target, Vec<Variant>)> = opts.sizes.iter().map(|&s| (Target::http(s), variants.clone())).collect();
    if opts.https {
        sections.push((Target::https(HTTPS_SIZE), https_variants.to_vec()));
    }
    // A's median requests/s per size: the latency run offers half of it.
    let mut maximum: HashMap<usize, f64> = HashMap::new();
    for (target, variants) in &sections {
        let mut results: HashMap<Variant, Vec<Run>> = HashMap::new();
        for r in 0..opts.repeats {
            for &v in variants {
                let start = Instant::now();
                let run = bench.run(v, target, &full_load)?;
                eprintln!("bench: {} repeat {}/{}: {} ({:.1} s)", target.name, r + 1, opts.repeats, v.label(), start.elapsed().as_secs_f64());
                results.entry(v).or_default().push(run);
            }
        }
        if !target.https {
            maximum.insert(target.body_size, median(results[&Variant::NoCapture].iter().map(|r| r.wrk.rps).collect()).0);
        }
        print_throughput(&target.name, variants, &results);
    }

    for &size in &opts.latency_sizes {
        let target = Target::http(size);
        let load = Load::paced(maximum[&size] / 2.0, opts.duration_s);
        let mut results: HashMap<Variant, Vec<(Load, Run)>> = HashMap::new();
        for r in 0..opts.repeats {
            for &v in &latency_variants {
                let start = Instant::now();
                let run = bench.run(v, &target, &load)?;
                eprintln!("bench: {} fixed rate repeat {}/{}: {} ({:.1} s)", target.name, r + 1, opts.repeats, v.label(), start.elapsed().as_secs_f64());
                results.entry(v).or_default().push((load, run));
            }
        }
        print_latency(&target.name, &latency_variants, &results);
    }
    println!("\ncapture bench: done in {:.1} min", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_separates_whole_cut_and_bad_answers() {
        let log = "200 100\n200 100\n200 40\n499 0\n";
        let served = Served::parse(log, 100);
        assert_eq!((served.requests, served.whole, served.cut, served.other), (4, 2, 2, 0));
        assert!(served.bad_answers(32).is_none());
        assert!(served.bad_answers(1).unwrap().contains("cut 2 answers"));

        let forbidden = Served::parse("200 100\n403 153\n", 100);
        assert_eq!(forbidden.other, 1);
        assert!(forbidden.bad_answers(32).unwrap().contains("403 153"));
        // A body longer than the file is not the file either.
        assert_eq!(Served::parse("200 101\n", 100).other, 1);
        assert!(Served::parse("", 100).bad_answers(32).is_some());
    }

    #[test]
    fn goreplay_runs_with_raw_input_responses_and_stdout() {
        assert_eq!(goreplay_args("18090"), ["--input-raw", ":18090", "--input-raw-track-response", "--output-stdout"]);
    }

    #[test]
    fn sizes_are_named_as_in_the_issue() {
        assert_eq!(size_name(100), "100 B");
        assert_eq!(size_name(1024), "1 KiB");
        assert_eq!(size_name(65536), "64 KiB");
        assert_eq!(size_name(1000), "1000 B");
    }
}
