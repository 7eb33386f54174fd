//! `cargo xtask bench`: capture completeness, server cost and CPU, side by side.
//!
//! In a network namespace it creates (loopback only), nginx serves a small and a
//! 64 KiB response to wrk for a fixed time, interleaved and repeated:
//!   A  no capture
//!   B  `capture agent` writing a .gor file (B-kafka: to a local tansu broker;
//!      B-sample: `--sample 10`; B-filtered: a filter that drops every exchange)
//!   C  `tcpdump -w /dev/null` with the same port filter (the libpcap path)
//! and prints medians (min..max) of requests/s, ratios to A, completeness, CPU per
//! 100k requests, peak RSS and drop counters.
//!
//! The HTTPS variant: nginx serves the small response over TLS (self-signed) to wrk
//! over https, without (A) and with the agent capturing plaintext at OpenSSL
//! (`--tls-lib`, B); wrk uses the same libssl, so its own calls hit the probes too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const PORT: u16 = 18090;
const HTTPS_PORT: u16 = 18091;
/// Debian's OpenSSL 3, which nginx and wrk load.
const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const KAFKA_PORT: u16 = 19190;

pub struct BenchOptions {
    pub duration_s: u64,
    pub repeats: usize,
    pub kafka: bool,
    pub connections: u32,
    /// Also measure HTTPS (nginx TLS, wrk over https) without and with `--tls-lib`.
    pub https: bool,
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
    Tcpdump,
}

impl Variant {
    fn is_agent(self) -> bool {
        !matches!(self, Variant::NoCapture | Variant::Tcpdump)
    }

    fn label(self) -> &'static str {
        match self {
            Variant::NoCapture => "A  no capture",
            Variant::AgentFile => "B  agent -> file",
            Variant::AgentSample => "B  file --sample 10",
            Variant::AgentFiltered => "B  file, all filtered",
            Variant::AgentKafka => "B  agent -> kafka",
            Variant::Tcpdump => "C  tcpdump",
        }
    }
}

/// One measured run.
#[derive(Default, Clone)]
struct Run {
    rps: f64,
    completed: u64,
    nginx_logged: u64,
    captured: u64,
    cpu_ms: u64,
    rss_kb: u64,
    kernel_drops: u64,
    user_drops: u64,
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
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

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_port(ns: &str, port: u16) -> Result<()> {
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

fn wrk(ns: &str, url: &str, opts: &BenchOptions) -> Result<(f64, u64)> {
    let out = sh(&format!(
        "ip netns exec {ns} wrk -t 2 -c {} -d {}s {url}",
        opts.connections, opts.duration_s
    ))?;
    let rps = out
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("wrk printed no Requests/sec")?;
    let completed = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("wrk printed no request count")?;
    Ok((rps, completed))
}

fn count_lines(path: &Path) -> u64 {
    std::fs::read_to_string(path).map(|s| s.lines().count() as u64).unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn run_variant(
    variant: Variant,
    ns: &str,
    bin: &Path,
    dir: &Path,
    url: &str,
    access_log: &Path,
    opts: &BenchOptions,
    https: bool,
) -> Result<Run> {
    let port = if https { HTTPS_PORT } else { PORT }.to_string();
    std::fs::write(access_log, "")?;
    let mut run = Run::default();
    match variant {
        Variant::NoCapture => {
            (run.rps, run.completed) = wrk(ns, url, opts)?;
        }
        Variant::AgentFile | Variant::AgentSample | Variant::AgentFiltered | Variant::AgentKafka => {
            let output = if variant == Variant::AgentKafka {
                format!("kafka://127.0.0.1:{KAFKA_PORT}/bench")
            } else {
                format!("file://{}", dir.join("bench.gor").display())
            };
            let controls: &[&str] = match variant {
                Variant::AgentSample => &["--sample", "10"],
                Variant::AgentFiltered => &["--deny-path", "^/"],
                _ => &[],
            };
            let mut child = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(bin)
                .args(["agent", "--iface", "lo", "--port", &port, "--output", &output])
                .args(if https { vec!["--tls-lib", LIBSSL] } else { vec![] })
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
            (run.rps, run.completed) = wrk(ns, url, opts)?;
            std::thread::sleep(Duration::from_millis(300));
            signal(pid, "-INT");
            let mut summary = HashMap::new();
            for line in lines.map_while(Result::ok) {
                if line.contains("capture: summary") {
                    summary = kv(&line);
                }
            }
            drop(child);
            let get = |k: &str| summary.get(k).copied().unwrap_or(0);
            run.captured = get("http_requests");
            run.cpu_ms = get("agent_cpu_user_ms") + get("agent_cpu_sys_ms");
            run.rss_kb = get("agent_max_rss_kb");
            run.kernel_drops = get("kernel_ring_full_events")
                + get("kernel_copy_errors")
                + get("kernel_truncated_skbs")
                + get("kernel_tls_ring_full_events")
                + get("kernel_tls_copy_errors")
                + get("kernel_tls_truncated_calls");
            run.user_drops = get("stream_gaps") + get("http_lost_to_gap") + get("output0_records_dropped") + get("output0_records_failed");
        }
        Variant::Tcpdump => {
            let mut child = Command::new("ip")
                .args(["netns", "exec", ns, "tcpdump", "-i", "lo", "-w", "/dev/null", "-s", "0", "tcp", "port", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting tcpdump")?;
            let pid = child.id();
            let mut stderr = BufReader::new(child.stderr.take().unwrap());
            let mut line = String::new();
            stderr.read_line(&mut line)?; // "listening on lo ..."
            let child = Killed(child);
            (run.rps, run.completed) = wrk(ns, url, opts)?;
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
    }
    std::thread::sleep(Duration::from_millis(200));
    run.nginx_logged = count_lines(access_log);
    Ok(run)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (med, v[0], v[n - 1])
}

fn fmt(m: (f64, f64, f64), digits: usize) -> String {
    format!("{:.d$} ({:.d$}..{:.d$})", m.0, m.1, m.2, d = digits)
}

pub fn bench(root: &Path, opts: BenchOptions) -> Result<()> {
    let bin = root.join("target/release/capture");
    let dir = std::env::temp_dir().join(format!("capture-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/small.txt"), "x".repeat(100))?;
    std::fs::write(dir.join("www/64k.bin"), (0..65536u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>())?;
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=capture-bench -keyout {d}/key.pem -out {d}/cert.pem 2>/dev/null",
        d = dir.display()
    ))?;
    let ns = Namespace(format!("capbench{}", std::process::id()));
    sh(&format!("ip netns add {} && ip -n {} link set lo up", ns.0, ns.0))?;
    let access_log = dir.join("access.log");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log {log}; keepalive_requests 1000000; server {{ listen 127.0.0.1:{PORT}; root {d}/www; }}\n\
               server {{ listen 127.0.0.1:{HTTPS_PORT} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; root {d}/www; }} }}\n",
            d = dir.display(),
            log = access_log.display()
        ),
    )?;
    let _nginx = Killed(
        Command::new("ip").args(["netns", "exec", &ns.0, "nginx", "-c"]).arg(&conf).stdout(Stdio::null()).spawn()?,
    );
    wait_port(&ns.0, PORT)?;
    let mut variants = vec![Variant::NoCapture, Variant::AgentFile, Variant::AgentSample, Variant::AgentFiltered, Variant::Tcpdump];
    let _broker = if opts.kafka {
        let url = format!("tcp://127.0.0.1:{KAFKA_PORT}");
        let broker = Killed(
            Command::new("ip")
                .args(["netns", "exec", &ns.0, "tansu", "broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting tansu (cargo xtask test installs it; or pass --no-kafka)")?,
        );
        wait_port(&ns.0, KAFKA_PORT)?;
        sh(&format!("ip netns exec {} tansu topic create bench --broker {url} --partitions 3", ns.0))?;
        variants.insert(4, Variant::AgentKafka);
        Some(broker)
    } else {
        None
    };

    println!(
        "capture bench: {} core(s), kernel {}, wrk -t2 -c{} -d{}s, {} repeats interleaved ({})",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        sh("uname -r")?.trim(),
        opts.connections,
        opts.duration_s,
        opts.repeats,
        variants.iter().map(|v| v.label().split_whitespace().next().unwrap_or("")).collect::<Vec<_>>().join(" ")
    );
    let mut sections = vec![("small (100 B)", "small.txt", false), ("64 KiB", "64k.bin", false)];
    if opts.https {
        sections.push(("HTTPS small (100 B)", "small.txt", true));
    }
    for (name, path, https) in sections {
        let url = if https { format!("https://127.0.0.1:{HTTPS_PORT}/{path}") } else { format!("http://127.0.0.1:{PORT}/{path}") };
        // HTTPS: without and with the agent (tcpdump and Kafka add nothing new there).
        let variants: Vec<Variant> =
            variants.iter().copied().filter(|v| !https || matches!(v, Variant::NoCapture | Variant::AgentFile)).collect();
        let mut results: HashMap<Variant, Vec<Run>> = HashMap::new();
        for r in 0..opts.repeats {
            for &v in &variants {
                eprintln!("bench: {name} repeat {}/{}: {}", r + 1, opts.repeats, v.label());
                let run = run_variant(v, &ns.0, &bin, &dir, &url, &access_log, &opts, https)?;
                results.entry(v).or_default().push(run);
            }
        }
        let base = median(results[&Variant::NoCapture].iter().map(|r| r.rps).collect()).0;
        println!("\n== {name} response ==");
        println!(
            "{:<20} {:>26} {:>8} {:>26} {:>24} {:>12} {:>12}",
            "variant", "requests/s med (min..max)", "ratio", "captured/completed %", "CPU ms per 100k req", "peak RSS MB", "drops k/u"
        );
        for &v in &variants {
            let runs = &results[&v];
            let rps = median(runs.iter().map(|r| r.rps).collect());
            let cpu = median(runs.iter().map(|r| r.cpu_ms as f64 * 100_000.0 / r.completed.max(1) as f64).collect());
            let rss = median(runs.iter().map(|r| r.rss_kb as f64 / 1024.0).collect());
            let complete = median(
                runs.iter().map(|r| 100.0 * r.captured.min(r.nginx_logged) as f64 / r.nginx_logged.max(1) as f64).collect(),
            );
            let kdrops: u64 = runs.iter().map(|r| r.kernel_drops).sum();
            let udrops: u64 = runs.iter().map(|r| r.user_drops).sum();
            let is_agent = v.is_agent();
            println!(
                "{:<20} {:>26} {:>8.3} {:>26} {:>24} {:>12} {:>12}",
                v.label(),
                fmt(rps, 0),
                rps.0 / base,
                if is_agent { fmt(complete, 2) } else { "-".into() },
                if v == Variant::NoCapture { "-".into() } else { fmt(cpu, 0) },
                if v == Variant::NoCapture { "-".into() } else { fmt(rss, 1) },
                if v == Variant::NoCapture { "-".into() } else { format!("{kdrops}/{udrops}") },
            );
        }
        for &v in &variants {
            if v.is_agent() {
                let runs = &results[&v];
                let captured: u64 = runs.iter().map(|r| r.captured).sum();
                let logged: u64 = runs.iter().map(|r| r.nginx_logged).sum();
                let completed: u64 = runs.iter().map(|r| r.completed).sum();
                println!("{}: captured {captured} requests; nginx logged {logged}; wrk completed {completed}", v.label());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _: PathBuf = dir;
    Ok(())
}
