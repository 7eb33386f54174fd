//! wrk runs that check what they measured: every answer a 200 with the whole body.
//!
//! wrk 4.1 (Debian) has no fixed-rate mode; a paced run gives each connection a
//! random pause before each request (uniform 0..2×mean ms, so connections do not fire
//! in lockstep), which makes the offered rate about connections × 1000 / mean ms.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The checking script; a paced run appends a `delay()` function.
const CHECKS_LUA: &str = include_str!("checks.lua");

/// Mean pause between a connection's requests in a paced run. 20 ms keeps the rate
/// granularity fine (one connection = 50 requests/s) with a few hundred connections.
pub(crate) const PACED_MEAN_DELAY_MS: u32 = 20;

/// How wrk loads the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    pub connections: u32,
    pub duration_s: u64,
    /// `Some(mean ms)`: pace each connection (fixed-rate run); `None`: as fast as it can.
    pub mean_delay_ms: Option<u32>,
}

impl Load {
    /// Connections that offer about `rate` requests/s with the paced delay.
    pub(crate) fn paced(rate: f64, duration_s: u64) -> Load {
        let connections = (rate * f64::from(PACED_MEAN_DELAY_MS) / 1000.0).round().max(2.0) as u32;
        Load { connections, duration_s, mean_delay_ms: Some(PACED_MEAN_DELAY_MS) }
    }

    /// The rate this load offers when answers take no time.
    pub(crate) fn offered_rate(&self) -> Option<f64> {
        self.mean_delay_ms.map(|d| f64::from(self.connections) * 1000.0 / f64::from(d))
    }
}

/// What one wrk run measured and what its script saw.
#[derive(Default, Clone, Debug)]
pub(crate) struct WrkRun {
    pub rps: f64,
    /// Requests wrk completed (its own count).
    pub completed: u64,
    /// Answers the script saw, and those that were not 200 / not the served size.
    pub responses: u64,
    pub not_200: u64,
    pub wrong_length: u64,
    /// wrk's "Socket errors" line (connect, read, write, timeout), 0 when it has none.
    pub socket_errors: [u64; 4],
    pub p50_us: u64,
    pub p99_us: u64,
}

impl WrkRun {
    /// Why the answers of this run cannot be trusted, if they cannot.
    pub(crate) fn bad_answers(&self) -> Option<String> {
        if self.not_200 == 0 && self.wrong_length == 0 && self.responses > 0 {
            return None;
        }
        Some(format!(
            "wrk saw {} answers: {} not 200, {} with a body other than the served size (socket errors connect/read/write/timeout {:?})",
            self.responses, self.not_200, self.wrong_length, self.socket_errors
        ))
    }
}

/// Runs wrk (2 threads) in namespace `ns` against `url`, whose body is `body_size` bytes.
pub(crate) fn run(ns: &str, url: &str, body_size: usize, load: &Load, dir: &Path) -> Result<WrkRun> {
    let script = dir.join(match load.mean_delay_ms {
        Some(_) => "paced.lua",
        None => "checks.lua",
    });
    let mut text = CHECKS_LUA.to_string();
    if let Some(mean) = load.mean_delay_ms {
        text.push_str(&format!("\nfunction delay()\n  return math.random(0, {})\nend\n", 2 * mean));
    }
    std::fs::write(&script, text)?;
    let out = super::sh(&format!(
        "ip netns exec {ns} wrk -t 2 -c {} -d {}s -s {} {url} -- {body_size}",
        load.connections.max(2),
        load.duration_s,
        script.display()
    ))?;
    parse(&out).with_context(|| format!("reading wrk's output:\n{out}"))
}

fn parse(out: &str) -> Result<WrkRun> {
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
    let mut run = WrkRun { rps, completed, ..WrkRun::default() };
    if let Some(line) = out.lines().find(|l| l.trim_start().starts_with("Socket errors:")) {
        // "  Socket errors: connect 0, read 12, write 0, timeout 0"
        let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|v| v.parse().ok()).collect();
        for (slot, n) in run.socket_errors.iter_mut().zip(numbers) {
            *slot = n;
        }
    }
    let checks = out.lines().find(|l| l.starts_with("capture-bench:")).context("the checking script printed nothing")?;
    let fields = super::kv(checks);
    let get = |k: &str| fields.get(k).copied().with_context(|| format!("no {k} in `{checks}`"));
    run.responses = get("responses")?;
    run.not_200 = get("not_200")?;
    run.wrong_length = get("wrong_length")?;
    run.p50_us = get("p50_us")?;
    run.p99_us = get("p99_us")?;
    if run.responses == 0 {
        bail!("wrk received no answer");
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 5s test @ http://127.0.0.1:18090/100.bin
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  312.00us   9.12ms   88.00%
    Req/Sec    15.10k     1.01k   17.00k    70.00%
  150321 requests in 5.00s, 36.12MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  30064.20
Transfer/sec:      7.22MB
capture-bench: responses=150321 not_200=2 wrong_length=2 p50_us=980 p99_us=2400
";

    #[test]
    fn parse_reads_wrk_and_the_script_line() {
        let run = parse(OUTPUT).unwrap();
        assert_eq!(run.completed, 150321);
        assert!((run.rps - 30064.2).abs() < 1e-6);
        assert_eq!(run.socket_errors, [0, 3, 0, 1]);
        assert_eq!((run.responses, run.not_200, run.wrong_length), (150321, 2, 2));
        assert_eq!((run.p50_us, run.p99_us), (980, 2400));
        assert!(run.bad_answers().unwrap().contains("2 not 200"));
    }

    #[test]
    fn clean_answers_pass_and_a_missing_script_line_fails() {
        let clean = OUTPUT.replace("not_200=2 wrong_length=2", "not_200=0 wrong_length=0");
        assert!(parse(&clean).unwrap().bad_answers().is_none());
        let without: String = OUTPUT.lines().filter(|l| !l.starts_with("capture-bench:")).map(|l| format!("{l}\n")).collect();
        assert!(parse(&without).is_err());
    }

    #[test]
    fn paced_load_offers_about_the_asked_rate() {
        let load = Load::paced(15_000.0, 5);
        assert_eq!(load.connections, 300);
        assert_eq!(load.offered_rate(), Some(15_000.0));
        assert_eq!(Load::paced(10.0, 5).connections, 2);
    }
}
