//! `cargo xtask bench`, replayer table: how fast `capture replay --speed max` sends
//! captured requests to nginx, against wrk on the same nginx with the same concurrency.
//!
//! In a network namespace of its own (loopback only): nginx serves a 100 B file on two
//! ports. The agent captures wrk's traffic to the first one (connections of 100
//! requests each, nginx's `keepalive_requests`) into a `.gor` file and, unless
//! `--no-kafka`, a local tansu topic, until at least `exchanges` were served. Then,
//! interleaved and repeated, against the second port with concurrency C:
//!   wrk -t2 -cC (the baseline),
//!   replay from the .gor file and from Kafka, `--compare` off and on,
//!   GoReplay's replay of the same file if env GOR names its binary,
//!   the same replays by another `capture` binary if env REPLAY_BASE names it (a
//!   before/after comparison within one run).
//! Each run is checked: nginx logged one line per request sent, every one a 200 with
//! the whole 100 B body, the replayer counted no error, and with `--compare` every
//! answer equal to the captured one.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::{median, sh, start_tansu, wait_port, Killed, Namespace};

/// nginx port the agent captures (production).
const CAPTURED_PORT: u16 = 18290;
/// nginx port the replayer and wrk send to (the candidate).
const TARGET_PORT: u16 = 18291;
const KAFKA_PORT: u16 = 19290;
const TOPIC: &str = "replay-bench";
/// Body size of the file nginx serves.
const BODY: usize = 100;
/// Longest the capture phase may run to reach `exchanges`.
const CAPTURE_LIMIT: Duration = Duration::from_secs(90);

pub struct ReplayBenchOptions {
    /// Concurrency: wrk's connections and the replayer's `--concurrency`.
    pub concurrency: u32,
    pub repeats: usize,
    /// Seconds of each wrk baseline run.
    pub duration_s: u64,
    /// Captured exchanges to replay (at least).
    pub exchanges: u64,
    pub kafka: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Wrk,
    /// `base`: by the REPLAY_BASE binary.
    Gor { compare: bool, base: bool },
    Kafka { compare: bool, base: bool },
    GoReplay,
}

impl Variant {
    fn label(self) -> String {
        match self {
            Variant::Wrk => "wrk (baseline)".into(),
            Variant::Gor { compare, base } => format!("replay .gor{}{}", if compare { " --compare" } else { "" }, if base { " (base)" } else { "" }),
            Variant::Kafka { compare, base } => format!("replay Kafka{}{}", if compare { " --compare" } else { "" }, if base { " (base)" } else { "" }),
            Variant::GoReplay => "GoReplay file".into(),
        }
    }
}

/// One measured run.
#[derive(Default, Clone, Debug)]
struct Run {
    /// Requests per second: wrk's, or the replay phase's (from the first request read
    /// to the last answer; a Kafka window streams into it, reading included).
    rps: f64,
    /// Requests sent (wrk: completed), and the whole process's wall time.
    requests: u64,
    wall_s: f64,
    cpu_ms: f64,
    rss_kb: u64,
    /// What the run was checked against, and the problems found.
    problems: Vec<String>,
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// An nginx log in the `status body_bytes msec` format: its lines, the lines that are
/// not a 200 with the whole body, and the seconds from the first to the last request.
fn nginx_log(path: &Path) -> (u64, u64, f64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = format!("200 {BODY}");
    let (mut lines, mut bad, mut first, mut last) = (0u64, 0u64, f64::MAX, 0f64);
    for line in text.lines() {
        lines += 1;
        let (head, msec) = line.rsplit_once(' ').unwrap_or((line, ""));
        bad += u64::from(head != whole);
        if let Ok(t) = msec.parse::<f64>() {
            (first, last) = (first.min(t), last.max(t));
        }
    }
    (lines, bad, (last - first).max(0.0))
}

/// `name N` pairs of a summary line such as `replayed 5  equal 5  different 0 (0.0%) ...`.
fn summary_value(line: &str, name: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok())
}

/// Runs `cmd` under `/usr/bin/time` (the child is the measured process: `ip netns exec`
/// execs it): (stdout, stderr without the time line, wall s, cpu ms, max RSS KiB).
fn timed(cmd: &mut Command) -> Result<(String, String, f64, f64, u64)> {
    let out = cmd.output().context("running a timed command")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stderr.lines().rev().find(|l| l.starts_with("BENCHTIME ")).with_context(|| format!("no time line: {stderr}"))?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() != 4 {
        bail!("bad time line {line:?}");
    }
    let rest = stderr.lines().filter(|l| !l.starts_with("BENCHTIME ")).collect::<Vec<_>>().join("\n");
    Ok((stdout, rest, v[0], (v[1] + v[2]) * 1000.0, v[3] as u64))
}

fn time_cmd(ns: &str) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "BENCHTIME %e %U %S %M", "ip", "netns", "exec", ns]);
    c
}

struct Setup<'a> {
    ns: &'a str,
    bin: &'a Path,
    /// REPLAY_BASE: another binary whose replays are measured too.
    base_bin: Option<&'a Path>,
    gor: &'a Path,
    log: &'a Path,
    concurrency: u32,
    duration_s: u64,
    /// Exchanges in the capture (what one replay sends).
    captured: u64,
}

fn run_variant(v: Variant, s: &Setup) -> Result<Run> {
    std::fs::write(s.log, "")?;
    let url = format!("http://127.0.0.1:{TARGET_PORT}");
    let mut run = Run::default();
    match v {
        Variant::Wrk => {
            let (out, _, wall, cpu_ms, rss) = timed(time_cmd(s.ns).args(["wrk", "-t2", &format!("-c{}", s.concurrency), &format!("-d{}s", s.duration_s)]).arg(format!("{url}/small.txt")))?;
            run.rps = out.lines().find(|l| l.starts_with("Requests/sec:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|x| x.parse().ok()).context("wrk: no Requests/sec")?;
            run.requests = out.lines().find(|l| l.contains("requests in")).and_then(|l| l.split_whitespace().next()).and_then(|x| x.parse().ok()).unwrap_or(0);
            (run.wall_s, run.cpu_ms, run.rss_kb) = (wall, cpu_ms, rss);
            if out.contains("Non-2xx") || out.contains("Socket errors") {
                run.problems.push(format!("wrk: {}", out.lines().filter(|l| l.contains("Non-2xx") || l.contains("Socket errors")).collect::<Vec<_>>().join("; ")));
            }
            std::thread::sleep(Duration::from_millis(200));
            let (logged, bad, _) = nginx_log(s.log);
            // wrk stops counting at its deadline: nginx may have served a few more.
            if logged < run.requests || logged > run.requests + s.concurrency as u64 {
                run.problems.push(format!("nginx logged {logged}, wrk completed {}", run.requests));
            }
            if bad > 0 {
                run.problems.push(format!("{bad} answer(s) not 200 with {BODY} B"));
            }
        }
        Variant::Gor { compare, base } | Variant::Kafka { compare, base } => {
            let mut cmd = time_cmd(s.ns);
            cmd.arg(if base { s.base_bin.expect("base variants only with REPLAY_BASE") } else { s.bin }).args(["replay", "--target", &url, "--speed", "max", "--concurrency", &s.concurrency.to_string()]);
            match v {
                Variant::Gor { .. } => cmd.arg("--input").arg(s.gor),
                _ => cmd.args(["--input", &format!("kafka://127.0.0.1:{KAFKA_PORT}/{TOPIC}"), "--from", "-1h"]),
            };
            if compare {
                cmd.arg("--compare");
            }
            let (out, err, wall, cpu_ms, rss) = timed(&mut cmd)?;
            let totals = out.lines().find(|l| l.starts_with("replayed ")).with_context(|| format!("replay printed no totals: {out}{err}"))?;
            let get = |name: &str| summary_value(totals, name).unwrap_or(u64::MAX);
            let timing = err.lines().find(|l| l.starts_with("capture: replayed ") && l.contains(" s (")).context("replay printed no timing")?;
            let secs: f64 = timing.split(" in ").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|x| x.parse().ok()).context("timing")?;
            run.requests = get("replayed");
            run.rps = run.requests as f64 / secs.max(1e-9);
            (run.wall_s, run.cpu_ms, run.rss_kb) = (wall, cpu_ms, rss);
            if run.requests != s.captured {
                run.problems.push(format!("replayed {} of {} captured", run.requests, s.captured));
            }
            for name in ["errors", "skipped"] {
                if get(name) != 0 {
                    run.problems.push(format!("{name} {}", get(name)));
                }
            }
            if compare && get("equal") != run.requests {
                run.problems.push(format!("equal {} of {}", get("equal"), run.requests));
            }
            let (logged, bad, _) = nginx_log(s.log);
            if logged != run.requests {
                run.problems.push(format!("nginx logged {logged}, replay sent {}", run.requests));
            }
            if bad > 0 {
                run.problems.push(format!("{bad} answer(s) not 200 with {BODY} B"));
            }
        }
        Variant::GoReplay => {
            let gor = std::env::var("GOR").context("GOR")?;
            // `FILE|N%` replays N times faster; no pacing is not an option of its own.
            let bound = (s.captured / 5_000).clamp(30, 60);
            let (_, _, wall, cpu_ms, rss) = timed(
                time_cmd(s.ns)
                    .arg(&gor)
                    .args(["--input-file", &format!("{}|100000000%", s.gor.display()), "--output-http", &url])
                    .args(["--output-http-workers", &s.concurrency.to_string(), "--exit-after", &format!("{bound}s")]),
            )?;
            let (logged, bad, span) = nginx_log(s.log);
            (run.requests, run.wall_s, run.cpu_ms, run.rss_kb) = (logged, wall, cpu_ms, rss);
            // GoReplay says nothing about what it sent: nginx's log is the count, and
            // its first and last request the time (it may idle until --exit-after).
            run.rps = logged as f64 / span.max(1e-3);
            if logged != s.captured {
                run.problems.push(format!("nginx logged {logged} of {} captured", s.captured));
            }
            if bad > 0 {
                run.problems.push(format!("{bad} answer(s) not 200 with {BODY} B"));
            }
        }
    }
    Ok(run)
}

/// Captures wrk's traffic to nginx with the agent until nginx served `exchanges`:
/// returns the exchanges the agent wrote (to the file, and to Kafka when asked).
fn capture(ns: &str, bin: &Path, gor: &Path, captured_log: &Path, opts: &ReplayBenchOptions) -> Result<u64> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(bin).args(["agent", "--iface", "lo", "--port", &CAPTURED_PORT.to_string()]);
    cmd.arg("--output").arg(gor);
    if opts.kafka {
        cmd.args(["--output", &format!("kafka://127.0.0.1:{KAFKA_PORT}/{TOPIC}")]);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).env("RUST_LOG", "warn").spawn().context("starting the agent")?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("capture: ready") => break,
            Some(Ok(_)) => {}
            _ => bail!("the agent exited before it was ready"),
        }
    }
    let agent = Killed(child);
    let started = Instant::now();
    while nginx_log(captured_log).0 < opts.exchanges {
        if started.elapsed() > CAPTURE_LIMIT {
            bail!("nginx served only {} requests in {CAPTURE_LIMIT:?}", nginx_log(captured_log).0);
        }
        sh(&format!("ip netns exec {ns} wrk -t2 -c64 -d2s http://127.0.0.1:{CAPTURED_PORT}/small.txt"))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    let mut summary = String::new();
    for line in lines.map_while(Result::ok) {
        if line.contains("capture: summary") {
            summary = line;
        }
    }
    drop(agent);
    let get = |k: &str| summary.split_whitespace().find_map(|p| p.strip_prefix(&format!("{k}=")).and_then(|v| v.parse::<u64>().ok())).unwrap_or(0);
    let (served, bad, _) = nginx_log(captured_log);
    let exchanges = get("http_responses").min(get("http_requests"));
    eprintln!(
        "bench replay: captured {} requests and {} responses of {served} served ({bad} not 200 with {BODY} B) in {:.1} s; \
         file: {} written, kafka: {} written, {} failed, {} dropped",
        get("http_requests"),
        get("http_responses"),
        started.elapsed().as_secs_f64(),
        get("output0_records_written"),
        get("output1_records_written"),
        get("output1_records_failed"),
        get("output1_records_dropped"),
    );
    if exchanges != served || bad > 0 {
        bail!("the capture is not complete: {exchanges} exchanges of {served} served ({bad} bad); summary: {summary}");
    }
    Ok(exchanges)
}

pub fn bench_replay(root: &Path, opts: &ReplayBenchOptions) -> Result<()> {
    let bin = root.join("target/release/capture");
    let dir = std::env::temp_dir().join(format!("capture-bench-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    let result = bench_in(&bin, &dir, opts);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench_in(bin: &Path, dir: &Path, opts: &ReplayBenchOptions) -> Result<()> {
    std::fs::write(dir.join("www/small.txt"), "x".repeat(BODY))?;
    let ns = Namespace(format!("capreplay{}", std::process::id()));
    sh(&format!("ip netns add {} && ip -n {} link set lo up", ns.0, ns.0))?;
    let (captured_log, target_log) = (dir.join("captured.log"), dir.join("target.log"));
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ log_format sb '$status $body_bytes_sent $msec';\n\
               server {{ listen 127.0.0.1:{CAPTURED_PORT}; root {d}/www; access_log {c} sb; keepalive_requests 100; }}\n\
               server {{ listen 127.0.0.1:{TARGET_PORT}; root {d}/www; access_log {t} sb; keepalive_requests 1000000; }} }}\n",
            d = dir.display(),
            c = captured_log.display(),
            t = target_log.display()
        ),
    )?;
    let _nginx = Killed(Command::new("ip").args(["netns", "exec", &ns.0, "nginx", "-c"]).arg(&conf).stdout(Stdio::null()).spawn()?);
    wait_port(&ns.0, CAPTURED_PORT)?;
    wait_port(&ns.0, TARGET_PORT)?;
    let _broker = if opts.kafka {
        let url = format!("tcp://127.0.0.1:{KAFKA_PORT}");
        let broker = start_tansu(&ns.0, KAFKA_PORT)?;
        sh(&format!("ip netns exec {} tansu topic create {TOPIC} --broker {url} --partitions 3", ns.0))?;
        Some(broker)
    } else {
        None
    };
    let gor = dir.join("captured.gor");
    let captured = capture(&ns.0, bin, &gor, &captured_log, opts)?;
    let base_bin = std::env::var_os("REPLAY_BASE").map(std::path::PathBuf::from);
    let mut variants = vec![Variant::Wrk];
    for base in [false].into_iter().chain(base_bin.is_some().then_some(true)) {
        variants.extend([Variant::Gor { compare: false, base }, Variant::Gor { compare: true, base }]);
        if opts.kafka {
            variants.extend([Variant::Kafka { compare: false, base }, Variant::Kafka { compare: true, base }]);
        }
    }
    if std::env::var_os("GOR").is_some() {
        variants.push(Variant::GoReplay);
    }
    let setup = Setup { ns: &ns.0, bin, base_bin: base_bin.as_deref(), gor: &gor, log: &target_log, concurrency: opts.concurrency, duration_s: opts.duration_s, captured };
    println!(
        "\ncapture bench, replayer: {captured} captured exchanges (100 B responses), concurrency {}, {} repeats interleaved, load before: {}",
        opts.concurrency,
        opts.repeats,
        load()
    );
    let mut results: Vec<(Variant, Vec<Run>)> = variants.iter().map(|&v| (v, Vec::new())).collect();
    for r in 0..opts.repeats {
        for (v, runs) in results.iter_mut() {
            let run = run_variant(*v, &setup)?;
            eprintln!(
                "bench replay: repeat {}/{} {:<24} {:>8.0} req/s, {} requests, {:.2} s, load {}{}",
                r + 1,
                opts.repeats,
                v.label(),
                run.rps,
                run.requests,
                run.wall_s,
                load(),
                if run.problems.is_empty() { String::new() } else { format!(", PROBLEMS: {}", run.problems.join("; ")) }
            );
            runs.push(run);
        }
    }
    let base = median(results[0].1.iter().map(|r| r.rps).collect()).0;
    println!(
        "{:<24} {:>26} {:>7} {:>24} {:>11} {:>11} checked",
        "variant", "requests/s med (min..max)", "vs wrk", "CPU ms/100k req med", "peak RSS MB", "wall s med"
    );
    for (v, runs) in &results {
        let rps = median(runs.iter().map(|r| r.rps).collect());
        let cpu = median(runs.iter().map(|r| r.cpu_ms * 100_000.0 / r.requests.max(1) as f64).collect());
        let rss = median(runs.iter().map(|r| r.rss_kb as f64 / 1024.0).collect());
        let wall = median(runs.iter().map(|r| r.wall_s).collect());
        let problems: Vec<&String> = runs.iter().flat_map(|r| &r.problems).collect();
        let (cpu, rss) = (format!("{:.0}", cpu.0), format!("{:.1}", rss.0));
        println!(
            "{:<24} {:>26} {:>7.3} {:>24} {:>11} {:>11.2} {}",
            v.label(),
            format!("{:.0} ({:.0}..{:.0})", rps.0, rps.1, rps.2),
            rps.0 / base,
            cpu,
            rss,
            wall.0,
            if problems.is_empty() { "ok".to_string() } else { format!("PROBLEMS: {}", problems.iter().map(|p| p.as_str()).collect::<Vec<_>>().join("; ")) }
        );
    }
    println!(
        "(replay requests/s: replayed requests over the replay phase, first request read to last answer; a Kafka window streams \
         into it, so its reading is inside. checked: every replayed request logged by nginx as a 200 with {BODY} B, none counted as an error or \
         skipped, with --compare every answer equal to the captured one; wrk: nginx's log agrees with wrk's count)"
    );
    Ok(())
}
