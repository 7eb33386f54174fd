//! End to end: capture traffic to a "production" server, publish to Kafka, replay
//! to a "candidate" that differs in known ways, and check the report finds exactly
//! those differences; the same from a `.gor` file; safety and pacing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use capture_tests::*;

const PROD_PORT: u16 = 18083;
const BASELINE_PORT: u16 = 18084;
const CANDIDATE_PORT: u16 = 18085;
const KAFKA_PORT: u16 = 19093;
const TOPIC: &str = "capture.replay";

struct App {
    _proc: Proc,
    log: std::path::PathBuf,
}

impl App {
    fn start(ns: &str, addr: &str, port: u16, variant: &str, dir: &TempDir) -> App {
        let log = dir.path(&format!("{variant}.jsonl"));
        let script = peers_dir().join("app_server.py");
        let proc = Proc::start_in(ns, variant, &format!("python3 -u {} {addr} {port} {variant} {}", script.display(), log.display()), "ready");
        App { _proc: proc, log }
    }

    /// (arrival time s, method, path, headers) of every request it received.
    fn requests(&self) -> Vec<(f64, String, String, serde_json::Value)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["t"].as_f64().unwrap(), v["method"].as_str().unwrap().to_string(), v["path"].as_str().unwrap().to_string(), v["headers"].clone())
            })
            .collect()
    }
}

/// Runs `capture replay` in `ns`; returns (exit code, stdout+stderr).
fn replay(ns: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(capture_bin())
        .arg("replay")
        .args(args)
        .output()
        .expect("running capture replay");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("replay {args:?}:\n{text}");
    (out.status.code().unwrap_or(-1), text)
}

/// Real difference counts by field key, from the JSON report.
fn fields(report: &serde_json::Value, which: &str) -> BTreeMap<String, u64> {
    report["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f[which].as_u64().unwrap() > 0)
        .map(|f| (f["key"].as_str().unwrap().to_string(), f[which].as_u64().unwrap()))
        .collect()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks a report of replaying the standard traffic to the candidate.
fn assert_known_differences(report: &serde_json::Value, with_baseline: bool) {
    let real = fields(report, "real");
    let expected: BTreeMap<String, u64> =
        [("status", 1), ("json:$.plan", 2), ("header:x-version", 1)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut real_without_noise = real.clone();
    if !with_baseline {
        // Without a baseline, the timestamp field is a (real-looking) difference too.
        assert_eq!(real_without_noise.remove("json:$.generated_at"), Some(2), "{report}");
    }
    assert_eq!(real_without_noise, expected, "exactly the known differences: {report}");
    if with_baseline {
        assert_eq!(fields(report, "noise").get("json:$.generated_at"), Some(&2), "timestamp discounted as noise: {report}");
    }
    assert_eq!(report["totals"]["replayed"].as_u64(), Some(7), "{report}");
    assert_eq!(report["totals"]["errors"].as_u64(), Some(0), "{report}");
    assert_eq!(report["totals"]["skipped"].as_u64(), Some(1), "the POST is not replayed: {report}");
    // The slower endpoint shows up in latency.
    let slow = report["endpoints"].as_array().unwrap().iter().find(|e| e["route"].as_str() == Some("/api/slow")).expect("slow endpoint");
    let cand = slow["candidate_latency_ms"]["p50"].as_f64().unwrap();
    let prod = slow["production_latency_ms"]["p50"].as_f64().unwrap();
    assert!(cand >= 250.0 && prod < 200.0, "slow endpoint: production {prod} ms, candidate {cand} ms");
}

#[test]
fn capture_kafka_replay_and_compare_find_exactly_the_known_differences() {
    if !kafka_tests_enabled("capture_kafka_replay_and_compare_find_exactly_the_known_differences") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("replay");
    let broker = Broker::start(&net.server_ns, KAFKA_PORT, &dir);
    broker.create_topic(TOPIC, 3);
    let ip = net.server_v4.clone();
    let _prod = App::start(&net.server_ns, &ip, PROD_PORT, "production", &dir);
    let _base = App::start(&net.server_ns, &ip, BASELINE_PORT, "baseline", &dir);
    let cand = App::start(&net.server_ns, &ip, CANDIDATE_PORT, "candidate", &dir);

    // Capture production traffic to Kafka and to a .gor file.
    let kafka = format!("kafka://{}/{TOPIC}", broker.bootstrap());
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PROD_PORT], &dir, &["--no-stream-log", "--output", &kafka]);
    let url = format!("http://{ip}:{PROD_PORT}");
    sh(&format!(
        "ip netns exec {} curl -sf {url}/api/user {url}/api/status {url}/api/slow {url}/api/headers {url}/static -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null",
        net.client_ns
    ));
    sh(&format!("ip netns exec {} curl -sf {url}/api/user?again=1 {url}/static -o /dev/null -o /dev/null", net.client_ns));
    sh(&format!("ip netns exec {} curl -sf -X POST --data '{{\"item\":1}}' {url}/api/order -o /dev/null", net.client_ns));
    let s = summary(&agent.stop());
    assert_eq!(s["http_requests"], 8);
    assert_eq!(s["output1_records_written"], 16);

    // Replay the last 10 minutes from Kafka to the candidate, with a baseline.
    let json = dir.path("report.json");
    let html = dir.path("report.html");
    let (code, out) = replay(
        &net.server_ns,
        &[
            "--input", &format!("kafka://{}/{TOPIC}", broker.bootstrap()), "--from", "-10m",
            "--target", &format!("http://{ip}:{CANDIDATE_PORT}"),
            "--baseline", &format!("http://{ip}:{BASELINE_PORT}"),
            "--compare", "--speed", "10",
            "--report-json", json.to_str().unwrap(), "--report-html", html.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replaying 8 request(s) from 16 record(s)"), "{out}");
    assert_known_differences(&read_json(&json), true);

    // Safety: the candidate never saw the POST; every request was marked and re-hosted.
    let got = cand.requests();
    assert_eq!(got.len(), 7, "{got:?}");

    // Live mode with a consumer group: offsets are committed after replay, so a second
    // replayer in the same group finds nothing left.
    let group_args = |json: &str| {
        vec![
            "--input".to_string(), format!("kafka://{}/{TOPIC}", broker.bootstrap()), "--group".into(), "replayers".into(),
            "--idle-exit".into(), "3".into(), "--target".into(), format!("http://{ip}:{CANDIDATE_PORT}"), "--rate".into(), "200".into(),
            "--compare".into(), "--report-json".into(), json.to_string(),
        ]
    };
    let group_json = dir.path("group.json");
    let args = group_args(group_json.to_str().unwrap());
    let (code, out) = replay(&net.server_ns, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}");
    let first = read_json(&group_json);
    assert_eq!(first["totals"]["replayed"].as_u64(), Some(7), "{first}");
    assert_eq!(fields(&first, "real").get("status"), Some(&1));
    let (code, out) = replay(&net.server_ns, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}");
    assert_eq!(read_json(&group_json)["totals"]["replayed"].as_u64(), Some(0), "committed offsets are not replayed again: {out}");
    assert_eq!(cand.requests().len(), 14);
    for (_, method, path, headers) in &got {
        assert_ne!(method, "POST", "{path}");
        assert_eq!(headers["x-capture-replay"], "1");
        assert_eq!(headers["host"], format!("{ip}:{CANDIDATE_PORT}"));
    }

    // The same from the .gor file, without a baseline, and with POST allowed.
    let (code, out) = replay(
        &net.client_ns,
        &[
            "--input", agent.output.to_str().unwrap(),
            "--target", &format!("http://{ip}:{CANDIDATE_PORT}"),
            "--compare", "--speed", "10", "--report-json", json.to_str().unwrap(), "--fail-on-diff",
        ],
    );
    assert_eq!(code, 3, "--fail-on-diff exits 3 on differences: {out}");
    assert_known_differences(&read_json(&json), false);
    let (code, out) = replay(
        &net.client_ns,
        &["--input", agent.output.to_str().unwrap(), "--target", &format!("http://{ip}:{CANDIDATE_PORT}"), "--rate", "100", "--allow-method", "POST"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(cand.requests().iter().any(|(_, m, p, _)| m == "POST" && p == "/api/order"), "POST replayed once allowed");

    // The HTML report renders, charts included.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("/api/status"));
    if have("chromium") {
        let png = dir.path("report.png");
        let status = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"])
            .arg(format!("--user-data-dir={}", dir.path("chromium").display()))
            .arg(format!("--screenshot={}", png.display()))
            .args(["--window-size=1280,1600"])
            .arg(format!("file://{}", html.display()))
            .status()
            .expect("running chromium");
        assert!(status.success());
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 20_000, "screenshot of the report is {size} bytes");
        if let Some(keep) = std::env::var_os("CAPTURE_REPORT_SCREENSHOT") {
            std::fs::copy(&png, keep).unwrap();
        }
    } else if std::env::var_os("CAPTURE_REQUIRE_KERNEL_TESTS").is_some() {
        panic!("chromium is required to check the HTML report (cargo xtask test installs it)");
    }
}

#[test]
fn replay_keeps_the_captured_pace_at_1x_and_10x() {
    if !kernel_tests_enabled("replay_keeps_the_captured_pace_at_1x_and_10x") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("pacing");
    let ip = net.server_v4.clone();
    let cand = App::start(&net.server_ns, &ip, CANDIDATE_PORT, "candidate", &dir);
    // Six requests 200 ms apart on two captured connections (ids: run + connection + exchange).
    let mut gor = Vec::new();
    for i in 0..6u64 {
        let conn = i % 2;
        let id = format!("{:016x}{:08x}{:08x}", 0xabcu64, conn, i);
        let ts = 1_700_000_000_000_000_000u64 + i * 200_000_000;
        gor.extend_from_slice(format!("1 {id} {ts} 0\nGET /static/{i} HTTP/1.1\r\nHost: prod\r\n\r\n").as_bytes());
        gor.extend_from_slice(SEPARATOR);
    }
    let input = dir.path("paced.gor");
    std::fs::write(&input, gor).unwrap();
    for (speed, gap_ms) in [("1", 200.0), ("10", 20.0)] {
        let before = cand.requests().len();
        let (code, out) = replay(&net.client_ns, &["--input", input.to_str().unwrap(), "--target", &format!("http://{ip}:{CANDIDATE_PORT}"), "--speed", speed]);
        assert_eq!(code, 0, "{out}");
        let got: Vec<f64> = cand.requests()[before..].iter().map(|r| r.0).collect();
        assert_eq!(got.len(), 6);
        let gaps: Vec<f64> = got.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
        eprintln!("speed {speed}: gaps {gaps:?} ms (want {gap_ms})");
        for g in &gaps {
            assert!((g - gap_ms).abs() <= gap_ms * 0.25 + 5.0, "speed {speed}: gap {g:.1} ms, expected {gap_ms} ms ({gaps:?})");
        }
    }
}

#[test]
fn unreachable_target_and_bad_records_are_reported_not_fatal() {
    if !kernel_tests_enabled("unreachable_target_and_bad_records_are_reported_not_fatal") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("unreachable");
    let mut gor = Vec::new();
    for i in 0..3u64 {
        let id = format!("{:016x}{:08x}{:08x}", 0xdefu64, i, 0);
        gor.extend_from_slice(format!("1 {id} {} 0\nGET /x/{i} HTTP/1.1\r\nHost: prod\r\n\r\n", 1_700_000_000_000_000_000u64 + i).as_bytes());
        gor.extend_from_slice(SEPARATOR);
    }
    gor.extend_from_slice(b"this is not a record");
    gor.extend_from_slice(SEPARATOR);
    let input = dir.path("in.gor");
    std::fs::write(&input, gor).unwrap();
    let json = dir.path("r.json");
    // Nothing listens on this port in the fresh namespace.
    let (code, out) = replay(
        &net.client_ns,
        &["--input", input.to_str().unwrap(), "--target", &format!("http://{}:9", net.server_v4), "--timeout", "2", "--report-json", json.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 unparseable"), "{out}");
    let report = read_json(&json);
    assert_eq!(report["totals"]["errors"].as_u64(), Some(3), "{report}");
    assert!(report.to_string().to_lowercase().contains("connection refused"), "{report}");
    // A bad target URL is a usage error naming the value (https:// is supported).
    let (code, out) = replay(&net.client_ns, &["--input", input.to_str().unwrap(), "--target", "ftp://x"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("ftp://x") && out.contains("only http:// and https://"), "{out}");
}
