//! Scale-out with the real broker: the agent captures traffic of many connections into
//! a Kafka topic of several partitions; three `capture replay` processes in one
//! consumer group share it. Every captured request is replayed at least once,
//! duplicates are counted, each connection's requests reach the candidate in order,
//! and the replayers' merged report equals one replayer's report on the same records.
//! The same window is exported as HAR.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use capture_tests::*;

const PROD_PORT: u16 = 18086;
const CAND_PORT: u16 = 18087;
const KAFKA_PORT: u16 = 19095;
const TOPIC: &str = "capture.scale";
const PARTITIONS: u32 = 4;
const REPLAYERS: usize = 3;
const CONNECTIONS: usize = 40;
const PER_CONNECTION: usize = 5;

/// Waits until every replayer has partitions assigned and no rebalance happened for 2 s.
fn wait_for_settled_group(dir: &TempDir) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last_change = (String::new(), std::time::Instant::now());
    while std::time::Instant::now() < deadline {
        let events: Vec<Vec<String>> = (0..REPLAYERS)
            .map(|i| {
                std::fs::read_to_string(dir.path(&format!("replayer{i}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("] assigned") || l.contains("] revoked"))
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        let state = format!("{events:?}");
        if state != last_change.0 {
            last_change = (state, std::time::Instant::now());
        } else if events.iter().all(|e| e.last().is_some_and(|l| l.contains("] assigned"))) && last_change.1.elapsed() >= std::time::Duration::from_secs(2) {
            eprintln!("consumer group settled: {events:?}");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the consumer group did not settle in 60 s: {}", last_change.0);
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (connection, sequence) of a request path `...?c=C&s=S`.
fn conn_seq(path: &str) -> (usize, usize) {
    let query = path.split_once('?').unwrap().1;
    let value = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap().parse().unwrap();
    (value("c"), value("s"))
}

/// What two reports must agree on: counts, risk, fields and endpoint counts.
fn comparable(r: &serde_json::Value) -> serde_json::Value {
    let mut endpoints: Vec<serde_json::Value> = r["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::json!([e["endpoint"], e["requests"], e["equal"], e["different"], e["not_compared"], e["errors"], e["risk"], e["fields"]]))
        .collect();
    endpoints.sort_by_key(|e| e[0].as_str().unwrap().to_string());
    serde_json::json!({"totals": r["totals"], "risk": r["risk"], "fields": r["fields"], "endpoints": endpoints})
}

#[test]
fn replayers_in_one_consumer_group_share_a_topic_and_their_reports_merge() {
    if !kafka_tests_enabled("replayers_in_one_consumer_group_share_a_topic_and_their_reports_merge")
        || !python_modules_enabled("replayers_in_one_consumer_group_share_a_topic_and_their_reports_merge", &["haralyzer"])
    {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("scale");
    let broker = Broker::start(&net.server_ns, KAFKA_PORT, &dir);
    broker.create_topic(TOPIC, PARTITIONS);
    let ip = net.server_v4.clone();
    let script = peers_dir().join("app_server.py");
    let (prod_log, cand_log) = (dir.path("production.jsonl"), dir.path("candidate.jsonl"));
    let _prod = Proc::start_in(&net.server_ns, "production", &format!("python3 -u {} {ip} {PROD_PORT} production {}", script.display(), prod_log.display()), "ready");
    let _cand = Proc::start_in(&net.server_ns, "candidate", &format!("python3 -u {} {ip} {CAND_PORT} candidate {}", script.display(), cand_log.display()), "ready");

    let kafka = format!("kafka://{}/{TOPIC}", broker.bootstrap());
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PROD_PORT], &dir, &["--no-stream-log", "--output", &kafka]);
    // Three replayers in one consumer group follow the topic; the traffic starts once
    // the group has settled (each replayer holds partitions).
    let target = format!("http://{ip}:{CAND_PORT}");
    let children: Vec<_> = (0..REPLAYERS)
        .map(|i| {
            let json = dir.path(&format!("replayer{i}.json"));
            let log = std::fs::File::create(dir.path(&format!("replayer{i}.log"))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &net.server_ns, "timeout", "180"])
                .arg(capture_bin())
                .args(["replay", "--input", &kafka, "--group", "scale-out", "--idle-exit", "15", "--target", &target, "--compare"])
                .args(["--rate", "40", "--mark-header", &format!("X-Capture-Replay: r{i}"), "--report-json", json.to_str().unwrap()])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .env("RUST_LOG", "info")
                .spawn()
                .unwrap();
            (child, json)
        })
        .collect();
    wait_for_settled_group(&dir);
    // Live traffic: CONNECTIONS keep-alive connections of PER_CONNECTION requests each,
    // at once, captured into the topic while the group follows it.
    let routes = ["/api/user", "/api/status", "/static", "/api/headers", "/api/user"];
    let mut script = String::new();
    for c in 0..CONNECTIONS {
        let urls: Vec<String> = (0..PER_CONNECTION).map(|s| format!("'http://{ip}:{PROD_PORT}{}?c={c}&s={s}'", routes[s % routes.len()])).collect();
        script.push_str(&format!("curl -sf {} {} & ", "-o /dev/null ".repeat(PER_CONNECTION), urls.join(" ")));
    }
    script.push_str("wait");
    sh(&format!("ip netns exec {} sh -c \"{script}\"", net.client_ns));
    let s = summary(&agent.stop());
    let captured = CONNECTIONS * PER_CONNECTION;
    assert_eq!(s["http_requests"] as usize, captured, "{s:?}");
    assert_eq!(s["output1_records_written"] as usize, 2 * captured);
    // Offsets count Kafka messages: in the batch format a message holds several records.
    let messages = s["output1_messages_written"] as usize;

    let mut reports = Vec::new();
    for (i, (mut child, json)) in children.into_iter().enumerate() {
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(dir.path(&format!("replayer{i}.log"))).unwrap();
        eprintln!("replayer {i}:\n{log}");
        assert!(status.success(), "replayer {i}: {status}");
        reports.push(json);
    }

    // At the candidate: every captured request at least once, each connection in order
    // per replayer; duplicates counted.
    let received: Vec<(String, String)> = std::fs::read_to_string(&cand_log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["headers"]["x-capture-replay"].as_str().unwrap_or("-").to_string(), v["path"].as_str().unwrap().to_string())
        })
        .collect();
    let distinct: BTreeSet<(usize, usize)> = received.iter().map(|(_, p)| conn_seq(p)).collect();
    let duplicates = received.len() - distinct.len();
    let mut per_replayer: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last: BTreeMap<(&str, usize), usize> = BTreeMap::new();
    for (replayer, path) in &received {
        *per_replayer.entry(replayer.as_str()).or_default() += 1;
        let (c, s) = conn_seq(path);
        if let Some(prev) = last.insert((replayer.as_str(), c), s) {
            assert!(s > prev, "connection {c} out of order at replayer {replayer}: {prev} then {s}");
        }
    }
    eprintln!("scale-out: {captured} captured, {} replayed ({duplicates} duplicates), per replayer {per_replayer:?}", received.len());
    assert_eq!(distinct.len(), captured, "every captured request replayed at least once");
    assert!(per_replayer.values().filter(|n| **n > 0).count() >= 2, "the group shared the work: {per_replayer:?}");

    // The merged report equals a single replayer's on the same records (a time window).
    let merged = dir.path("merged.json");
    let mut args = vec!["report".to_string(), "merge".into()];
    args.extend(reports.iter().map(|p| p.to_str().unwrap().to_string()));
    args.extend(["--report-json".into(), merged.to_str().unwrap().to_string()]);
    let out = Command::new(capture_bin()).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let single = dir.path("single.json");
    let out = Command::new("ip")
        .args(["netns", "exec", &net.server_ns])
        .arg(capture_bin())
        .args(["replay", "--input", &kafka, "--from", "-10m", "--target", &target, "--compare", "--rate", "200", "--report-json", single.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (m, w) = (read_json(&merged), read_json(&single));
    let kafka_duplicates = m["kafka"]["duplicate_records"].as_u64().unwrap();
    assert_eq!(m["kafka"]["partitions"].as_object().unwrap().len(), PARTITIONS as usize, "{}", m["kafka"]);
    let covered: i64 = m["kafka"]["partitions"].as_object().unwrap().values().flat_map(|r| r.as_array().unwrap()).map(|r| r[1].as_i64().unwrap() - r[0].as_i64().unwrap()).sum();
    assert_eq!(covered as usize, messages, "every message of the topic was replayed by the group: {}", m["kafka"]);
    assert_eq!(m["totals"]["replayed"].as_u64().unwrap() as usize, received.len(), "every replay is in the merged report");
    if duplicates == 0 {
        assert_eq!(kafka_duplicates, 0);
        assert_eq!(comparable(&m), comparable(&w), "merged report of the group vs one replayer");
    } else {
        // Redelivered after a rebalance: counted, and the rest adds up.
        assert!(kafka_duplicates > 0, "duplicates at the candidate show in the report: {}", m["kafka"]);
        assert_eq!(m["totals"]["replayed"].as_u64().unwrap() as usize, w["totals"]["replayed"].as_u64().unwrap() as usize + duplicates);
    }

    // A replayer of another group reads the same records again: merged with the first
    // group's report, every record counts as consumed twice.
    let again = dir.path("again.json");
    let out = Command::new("ip")
        .args(["netns", "exec", &net.server_ns])
        .arg(capture_bin())
        .args(["replay", "--input", &kafka, "--group", "again", "--idle-exit", "3", "--target", &target, "--compare", "--rate", "500", "--report-json", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let twice = dir.path("twice.json");
    let out = Command::new(capture_bin()).args(["report", "merge", merged.to_str().unwrap(), again.to_str().unwrap(), "--report-json", twice.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let t = read_json(&twice);
    assert_eq!(t["kafka"]["duplicate_records"].as_u64().unwrap(), kafka_duplicates + messages as u64, "{}", t["kafka"]);
    assert_eq!(t["totals"]["replayed"].as_u64().unwrap() as usize, received.len() + captured);

    // The same window as HAR, read by haralyzer.
    let har = dir.path("window.har");
    let out = Command::new("ip")
        .args(["netns", "exec", &net.server_ns])
        .arg(capture_bin())
        .args(["export", "--format", "har", "--input", &kafka, "--from", "-10m", "--output", har.to_str().unwrap()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let checked = Command::new("python3").arg(peers_dir().join("check_har.py")).arg(&har).output().unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let entries: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), captured);
    assert!(entries.iter().all(|e| e["status"].as_u64() == Some(200) && e["server"].as_str() == Some(ip.as_str())), "{entries:?}");
    let paths: BTreeSet<(usize, usize)> = entries.iter().map(|e| conn_seq(e["url"].as_str().unwrap())).collect();
    assert_eq!(paths, distinct);
}
