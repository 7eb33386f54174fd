//! Traffic controls at the source, end to end: sampling in the kernel, filters and rate
//! limits with real clients against nginx, a filtered upload skipped in the kernel, and
//! redaction before any output (file and Kafka), with replay of redacted records.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use capture_tests::*;

const PORT: u16 = 18095;
const CANDIDATE_PORT: u16 = 18096;
const KAFKA_PORT: u16 = 19096;
const TOPIC: &str = "capture.redacted";

/// The central interval `[lo, hi]` of Binomial(n, p) that holds at least `1 - alpha`
/// of the probability: P(X < lo) <= alpha/2 and P(X > hi) <= alpha/2.
fn binomial_interval(n: u64, p: f64, alpha: f64) -> (u64, u64) {
    let mut pmf = (1.0 - p).powf(n as f64);
    let (mut cdf, mut lo) = (0.0, None);
    for k in 0..=n {
        cdf += pmf;
        if lo.is_none() && cdf > alpha / 2.0 {
            lo = Some(k);
        }
        if cdf >= 1.0 - alpha / 2.0 {
            return (lo.unwrap_or(k), k);
        }
        pmf *= (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p);
    }
    (lo.unwrap_or(0), n)
}

#[test]
fn binomial_interval_matches_the_normal_approximation() {
    // Binomial(2000, 0.1): mean 200, sd 13.4; 99.9 % two-sided is about +-3.29 sd.
    let (lo, hi) = binomial_interval(2000, 0.1, 0.001);
    assert!((154..=160).contains(&lo) && (242..=248).contains(&hi), "[{lo}, {hi}]");
    // Binomial(10, 0.5): P(X = 0) = 1/1024, P(X <= 1) = 11/1024.
    assert_eq!(binomial_interval(10, 0.5, 0.001), (0, 10));
    assert_eq!(binomial_interval(10, 0.5, 0.01), (1, 9));
}

#[test]
fn sampling_keeps_a_binomial_share_of_2000_connections_each_one_whole() {
    if !kernel_tests_enabled("sampling_keeps_a_binomial_share_of_2000_connections_each_one_whole") {
        return;
    }
    assert!(have("ab"), "ab is required: cargo xtask test installs it");
    let net = NetPair::new();
    let dir = TempDir::new("sample");
    let server = RecordServer::start(&net.server_ns, &net.server_v4, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--sample", "10"]);
    agent.wait_log("capture: sampling: keeping 10% of connections");
    let retrans_before = tcp_retransmissions(&net.client_ns) + tcp_retransmissions(&net.server_ns);
    // One connection per request (HTTP/1.0, no keep-alive).
    sh(&format!("ip netns exec {} ab -q -n 2000 -c 20 http://{}:{PORT}/ > /dev/null", net.client_ns, net.server_v4));
    server.wait_connections(2000);
    let s = summary(&agent.stop());
    let retrans = tcp_retransmissions(&net.client_ns) + tcp_retransmissions(&net.server_ns) - retrans_before;
    assert_no_kernel_loss(&s);

    let sent = server.connections();
    let n = sent.len() as u64;
    assert!(n >= 2000, "the server saw {n} connections");
    let captured = agent.streams();
    let k = captured.len() as u64;
    // Every captured connection is complete: both directions byte for byte.
    let mut captured_bytes = 0;
    for (client, (got, gaps)) in &captured {
        let want = sent.get(client).unwrap_or_else(|| panic!("captured {client}, which the server never saw"));
        assert_eq!(*gaps, 0, "{client}: gaps");
        assert_eq!(got, want, "{client}: rebuilt streams differ from what was sent");
        captured_bytes += want.c2s_bytes + want.s2c_bytes;
    }
    let (lo, hi) = binomial_interval(n, 0.1, 0.001);
    eprintln!(
        "sampling: kept {k} of {n} connections ({:.2} %); 99.9 % binomial interval for p = 0.1: [{lo}, {hi}]; \
         kernel_sampled_out_connections={} kernel_sampled_out_bytes={} kernel_bytes_emitted={}",
        100.0 * k as f64 / n as f64,
        s["kernel_sampled_out_connections"],
        s["kernel_sampled_out_bytes"],
        s["kernel_bytes_emitted"]
    );
    assert!((lo..=hi).contains(&k), "kept {k} of {n}: outside [{lo}, {hi}]");
    // The kernel left the others out before the ring: one hook saw each segment here.
    assert_eq!(s["kernel_sampled_out_connections"], n - k);
    assert_eq!(s["kernel_bytes_seen"], s["kernel_bytes_emitted"] + s["kernel_sampled_out_bytes"]);
    let left_out: u64 = sent.iter().filter(|(c, _)| !captured.contains_key(*c)).map(|(_, d)| d.c2s_bytes + d.s2c_bytes).sum();
    if retrans == 0 {
        assert_eq!(s["kernel_sampled_out_bytes"], left_out);
        assert_eq!(s["kernel_bytes_emitted"], captured_bytes);
    } else {
        assert!(s["kernel_sampled_out_bytes"] >= left_out && s["kernel_bytes_emitted"] >= captured_bytes, "{retrans} retransmissions");
    }
    assert_eq!(s["connections_opened"], k, "userspace saw only the sampled connections");
    assert_eq!(s["http_requests"], k);
    assert_eq!(parse_gor(&agent.records()).len() as u64, 2 * k);
}

/// Requests in the records as "METHOD target" -> count; every one answered.
fn kept_requests(records: &[GorRecord]) -> BTreeMap<String, usize> {
    let responses: HashMap<&str, &GorRecord> = records.iter().filter(|r| r.ty == b'2').map(|r| (r.id.as_str(), r)).collect();
    let mut out = BTreeMap::new();
    for r in records.iter().filter(|r| r.ty == b'1') {
        assert!(responses.contains_key(r.id.as_str()), "{}: no response recorded", r.start_line());
        let line = r.start_line();
        let key = line.rsplit_once(' ').map(|(a, _)| a.to_string()).unwrap_or(line);
        *out.entry(key).or_default() += 1;
    }
    assert_eq!(responses.len(), out.values().sum::<usize>(), "a response whose request was dropped was recorded");
    out
}

#[test]
fn filters_keep_exactly_the_allowed_exchanges_of_curl_and_ab_against_nginx() {
    if !kernel_tests_enabled("filters_keep_exactly_the_allowed_exchanges_of_curl_and_ab_against_nginx") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("filters");
    let nginx = Nginx::start(&net.server_ns, PORT, &dir);
    let filters = ["--allow-method", "GET,HEAD", "--deny-path", "^/health", "--deny-header", "X-Debug: ^1$"];
    let mut extra = vec!["--no-stream-log"];
    extra.extend(filters);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &extra);
    let url = format!("http://{}:{PORT}", net.server_v4);
    // One curl, one keep-alive connection, decisions per exchange.
    let quiet = "-s -o /dev/null";
    sh(&format!(
        "ip netns exec {} curl {quiet} {url}/index.html --next {quiet} -X POST -d x {url}/index.html \
         --next {quiet} {url}/health --next {quiet} -H 'X-Debug: 1' {url}/index.html \
         --next {quiet} -I {url}/64k.bin --next {quiet} {url}/64k.bin",
        net.client_ns
    ));
    sh(&format!("ip netns exec {} ab -q -k -n 300 -c 4 {url}/index.html > /dev/null", net.client_ns));
    sh(&format!("ip netns exec {} ab -q -k -n 200 -c 4 {url}/health > /dev/null", net.client_ns));
    sh(&format!("ip netns exec {} ab -q -k -n 100 -c 2 -H 'X-Debug: 1' {url}/index.html > /dev/null", net.client_ns));
    let s = summary(&agent.stop());
    assert_no_kernel_loss(&s);
    let records = parse_gor(&agent.records());
    let kept = kept_requests(&records);
    let want: BTreeMap<String, usize> =
        [("GET /index.html", 301), ("HEAD /64k.bin", 1), ("GET /64k.bin", 1)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(kept, want, "exactly the allowed exchanges");
    // The kept 64 KiB download is whole.
    let download = records.iter().find(|r| r.ty == b'2' && r.payload.len() > 65536).expect("the 64 KiB response");
    assert!(download.payload.ends_with(&std::fs::read(nginx.www.join("64k.bin")).unwrap()));
    let dropped = s["filter_dropped_method"] + s["filter_dropped_path"] + s["filter_dropped_header"];
    assert_eq!((s["filter_dropped_method"], s["filter_dropped_path"], s["filter_dropped_header"]), (1, 201, 101));
    assert_eq!(s["exchanges_kept"], 303);
    assert_eq!((s["http_dropped_requests"], s["http_dropped_responses"]), (dropped, dropped));
    assert_eq!(nginx.requests_logged() as u64, s["exchanges_kept"] + dropped, "kept + dropped = what nginx served");
    for key in ["http_resyncs", "http_lost_to_gap", "stream_gaps", "http_unpaired_responses"] {
        assert_eq!(s[key], 0, "{key}");
    }
}

#[test]
fn rate_limits_drop_whole_exchanges_and_what_is_kept_fits_the_bucket() {
    if !kernel_tests_enabled("rate_limits_drop_whole_exchanges_and_what_is_kept_fits_the_bucket") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("rate");
    let nginx = Nginx::start(&net.server_ns, PORT, &dir);
    let url = format!("http://{}:{PORT}", net.server_v4);

    // --rate 50: a burst of 50, then 50 per second of the requests' own (kernel) time.
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log", "--rate", "50"]);
    sh(&format!("ip netns exec {} ab -q -k -n 1000 -c 10 {url}/index.html > /dev/null", net.client_ns));
    let s = summary(&agent.stop());
    let records = parse_gor(&agent.records());
    let kept = kept_requests(&records).values().sum::<usize>() as u64;
    let logged = nginx.requests_logged() as u64;
    eprintln!("--rate 50: kept {kept}, dropped {}, nginx served {logged}", s["ratelimit_dropped_rate"]);
    assert_eq!(kept + s["ratelimit_dropped_rate"], logged, "kept + dropped = what nginx served");
    assert_eq!(s["exchanges_kept"], kept);
    assert!(kept >= 50, "the first second's burst is kept");
    assert!(s["ratelimit_dropped_rate"] > 0, "ab sends far faster than 50/s");
    let mut times: Vec<u64> = records.iter().filter(|r| r.ty == b'1').map(|r| r.ts_ns).collect();
    times.sort();
    for i in 0..times.len() {
        for j in i..times.len() {
            let allowed = 50.0 + 50.0 * (times[j] - times[i]) as f64 / 1e9 + 1.0;
            assert!((j - i + 1) as f64 <= allowed, "{} requests kept within {} ns", j - i + 1, times[j] - times[i]);
        }
    }

    // --max-bytes-per-sec: counts record bytes; a download is kept whole or not at all.
    std::fs::write(&nginx.access_log, "").unwrap();
    let dir2 = TempDir::new("bytes");
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir2, &["--no-stream-log", "--max-bytes-per-sec", "200KB"]);
    sh(&format!("ip netns exec {} ab -q -k -n 200 -c 1 {url}/64k.bin > /dev/null", net.client_ns));
    let s = summary(&agent.stop());
    let records = parse_gor(&agent.records());
    let kept = kept_requests(&records).values().sum::<usize>() as u64;
    let logged = nginx.requests_logged() as u64;
    eprintln!("--max-bytes-per-sec 200KB: kept {kept}, dropped {}, nginx served {logged}", s["ratelimit_dropped_bytes"]);
    assert_eq!(kept + s["ratelimit_dropped_bytes"], logged);
    assert!(kept >= 1 && s["ratelimit_dropped_bytes"] > 0);
    for r in records.iter().filter(|r| r.ty == b'2') {
        assert_eq!(r.payload.len() - r.payload.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4, 65536, "whole");
    }
    // Record bytes (what the limit counts: bytes written minus the file separators)
    // within the kept requests' time span: one second's budget, the rate over the span,
    // and at most one exchange admitted on the last credit.
    let record_bytes = s["output0_bytes_written"] - SEPARATOR.len() as u64 * records.len() as u64;
    let times: Vec<u64> = records.iter().filter(|r| r.ty == b'1').map(|r| r.ts_ns).collect();
    let span = (times.iter().max().unwrap() - times.iter().min().unwrap()) as f64 / 1e9;
    let largest = 70_000.0;
    assert!(record_bytes as f64 <= 200_000.0 + 200_000.0 * span + largest, "{record_bytes} record bytes in {span} s");
}

#[test]
fn a_filtered_5_mb_upload_is_skipped_in_the_kernel_and_the_next_request_is_exact() {
    if !kernel_tests_enabled("a_filtered_5_mb_upload_is_skipped_in_the_kernel_and_the_next_request_is_exact") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("skip");
    let _server = RecordServer::start(&net.server_ns, &net.server_v4, PORT, &dir);
    let mut agent = Agent::start_logging(
        &net.server_ns,
        &net.server_if,
        &[PORT],
        &dir,
        &["--no-stream-log", "--deny-path", "^/upload"],
        "info,capture::skip=debug",
    );
    let host = &net.server_v4;
    let head = format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5000000\r\n\r\n");
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let next = format!("GET /after HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for (name, bytes) in [("head", head.as_bytes()), ("body", &body[..]), ("next", next.as_bytes())] {
        std::fs::write(dir.path(name), bytes).unwrap();
    }
    let mut client = Command::new("ip")
        .args(["netns", "exec", &net.client_ns, "python3"])
        .arg(peers_dir().join("step_client.py"))
        .args([host.as_str(), &PORT.to_string()])
        .args(["head", "body", "next", "sent", "received"].map(|n| dir.path(n)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "head sent");
    // The agent saw the head, dropped the exchange and told the kernel: only now does
    // the body go out (a real client's body would race with this, see README).
    agent.wait_log("kernel skip");
    writeln!(client.stdin.take().unwrap(), "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    assert!(client.wait().unwrap().success());
    let s = summary(&agent.stop());
    assert_no_kernel_loss(&s);

    let received = std::fs::read(dir.path("received")).unwrap();
    let second = received.windows(9).rposition(|w| w == b"HTTP/1.1 ").unwrap();
    let records = parse_gor(&agent.records());
    let payloads: Vec<&[u8]> = records.iter().map(|r| &r.payload[..]).collect();
    assert_eq!(payloads, [next.as_bytes(), &received[second..]], "only the next exchange, byte for byte");
    eprintln!(
        "skip: kernel_skipped_bytes={} kernel_skipped_segments={} kernel_bytes_emitted={} stream_skip_bytes={} stream_skipped_bytes_arrived={}",
        s["kernel_skipped_bytes"], s["kernel_skipped_segments"], s["kernel_bytes_emitted"], s["stream_skip_bytes"], s["stream_skipped_bytes_arrived"]
    );
    assert!(s["kernel_skipped_bytes"] >= 5_000_000, "every body byte was left in the kernel");
    assert!(s["kernel_bytes_emitted"] < 4096, "a few KiB reached the ring: {}", s["kernel_bytes_emitted"]);
    assert_eq!(s["stream_skip_bytes"], 5_000_000);
    assert_eq!((s["stream_skips"], s["skip_kernel_ranges"], s["filter_dropped_path"]), (1, 1, 1));
    for key in ["stream_gaps", "http_lost_to_gap", "http_resyncs"] {
        assert_eq!(s[key], 0, "{key}");
    }
}

/// The secret server of `peers/secret_server.py`, with its request log.
struct SecretServer {
    _proc: Proc,
    log: std::path::PathBuf,
}

impl SecretServer {
    fn start(ns: &str, addr: &str, port: u16, dir: &TempDir, name: &str) -> SecretServer {
        let log = dir.path(&format!("{name}.jsonl"));
        let script = peers_dir().join("secret_server.py");
        let proc = Proc::start_in(ns, name, &format!("python3 -u {} {addr} {port} {}", script.display(), log.display()), "ready");
        SecretServer { _proc: proc, log }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// The token the agent writes for `value` under `key`, computed independently (Python).
fn token(key: &str, value: &str) -> String {
    let script = "import hashlib, hmac, sys; print('redacted-' + hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest()[:32])";
    let out = Command::new("python3").args(["-c", script, key, value]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn redaction_leaves_no_secret_in_the_file_or_kafka_and_replay_still_sets_headers() {
    if !kafka_tests_enabled("redaction_leaves_no_secret_in_the_file_or_kafka_and_replay_still_sets_headers") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("redact");
    let broker = Broker::start(&net.server_ns, KAFKA_PORT, &dir);
    broker.create_topic(TOPIC, 1);
    let prod = SecretServer::start(&net.server_ns, &net.server_v4, PORT, &dir, "prod");
    let candidate = SecretServer::start(&net.server_ns, &net.server_v4, CANDIDATE_PORT, &dir, "candidate");
    let key = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path("redact.key"), format!("{key}\n")).unwrap();
    let kafka = format!("kafka://{}/{TOPIC}", broker.bootstrap());
    let key_file = dir.path("redact.key").display().to_string();
    let mut agent = Agent::start(
        &net.server_ns,
        &net.server_if,
        &[PORT],
        &dir,
        &["--no-stream-log", "--output", &kafka, "--redact-key-file", &key_file, "--redact-query", "sig", "--redact-json-field", "$.profile.ssn"],
    );
    let url = format!("http://{}:{PORT}", net.server_v4);
    let curl = |args: &str| sh(&format!("ip netns exec {} curl -sS -o /dev/null {args}", net.client_ns));
    curl(&format!("-H 'Authorization: Bearer AUTH-SECRET-1' -b 'sid=SID-SECRET-2; theme=dark' '{url}/account?sig=SIG-SECRET-3&page=2'"));
    let json = r#"{"user":"ada","password":"PW-SECRET-4","profile":{"ssn":"SSN-SECRET-5","password":"PW-SECRET-4"}}"#;
    curl(&format!("-b 'sid=SID-SECRET-2' -H 'Content-Type: application/json' --data '{json}' {url}/login"));
    curl(&format!("--data 'user=ada&password=PW-SECRET-4' {url}/form"));
    let log = agent.stop();
    assert!(log.contains("key from --redact-key-file"), "{log}");
    let s = summary(&log);
    let file = agent.records();
    let records = parse_gor(&file);
    assert_eq!(records.len(), 6);
    let messages = broker.consume(TOPIC, records.len(), 10.0, &dir);
    let in_topic = records_of(&messages);
    assert_eq!(in_topic.len(), records.len());

    // The secrets were on the wire (the server got them) but are nowhere in the outputs.
    let served = prod.requests();
    assert_eq!(served[0]["headers"]["authorization"], "Bearer AUTH-SECRET-1");
    let secrets = ["AUTH-SECRET-1", "SID-SECRET-2", "SIG-SECRET-3", "PW-SECRET-4", "SSN-SECRET-5"];
    for secret in secrets {
        assert!(!contains(&file, secret), "{secret} in the .gor file");
        for m in &messages {
            assert!(!contains(&m.value, secret) && !contains(m.key.as_bytes(), secret), "{secret} in a Kafka value");
            for (name, value) in &m.headers {
                assert!(!value.contains(secret), "{secret} in Kafka header {name}");
            }
        }
    }
    let t = |v: &str| token(key, v);
    let text: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    // Request 1: scheme and cookie names stay; equal secrets give equal tokens, also in
    // the response's Set-Cookie and in the next connection's Cookie.
    assert!(text[0].starts_with(&format!("GET /account?sig={}&page=2 HTTP/1.1\r\n", t("SIG-SECRET-3"))), "{}", text[0]);
    assert!(text[0].contains(&format!("Authorization: Bearer {}\r\n", t("AUTH-SECRET-1"))));
    assert!(text[0].contains(&format!("Cookie: sid={}; theme={}\r\n", t("SID-SECRET-2"), t("dark"))));
    assert!(text[1].contains(&format!("Set-Cookie: sid={}; Path=/; HttpOnly\r\n", t("SID-SECRET-2"))));
    assert!(text[2].contains(&format!("Cookie: sid={}\r\n", t("SID-SECRET-2"))));
    // The JSON request: tokens in place, still JSON, Content-Length of the new body.
    let (head, body) = text[2].split_once("\r\n\r\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["password"], t("PW-SECRET-4"));
    assert_eq!(v["profile"]["password"], t("PW-SECRET-4"));
    assert_eq!(v["profile"]["ssn"], t("SSN-SECRET-5"));
    assert_eq!(v["user"], "ada");
    assert!(format!("{head}\r\n").contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{head}");
    let (_, echoed) = text[3].split_once("\r\n\r\n").unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(echoed).unwrap()["password"], t("PW-SECRET-4"));
    assert!(text[4].ends_with(&format!("user=ada&password={}", t("PW-SECRET-4"))));
    // Flagged in the file and in Kafka.
    let flagged = records.iter().filter(|r| r.meta.get("redacted").map(String::as_str) == Some("1")).count();
    assert_eq!(flagged, 5, "all but the form's plain `ok` response");
    assert_eq!(s["redact_records"], 5);
    let in_kafka = in_topic.iter().filter(|r| r.meta.get("redacted").map(String::as_str) == Some("1")).count();
    assert_eq!(in_kafka, 5);
    let first = in_topic.iter().find(|r| r.ty == b'1').unwrap();
    assert_eq!(first.meta["target"], format!("/account?sig={}&page=2", t("SIG-SECRET-3")));

    // Replay of the redacted file still works, and --set-header swaps in test credentials.
    let out = Command::new("ip")
        .args(["netns", "exec", &net.client_ns])
        .arg(capture_bin())
        .args(["replay", "--input"])
        .arg(&agent.output)
        .args(["--target", &format!("http://{}:{CANDIDATE_PORT}", net.server_v4), "--allow-method", "POST"])
        .args(["--set-header", "Authorization: Bearer REPLAY-TOKEN"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let replayed = candidate.requests();
    assert_eq!(replayed.len(), 3, "{text}");
    for r in &replayed {
        assert_eq!(r["headers"]["authorization"], "Bearer REPLAY-TOKEN", "{r}");
    }
    let login = replayed.iter().find(|r| r["target"] == "/login").unwrap();
    let body: serde_json::Value = serde_json::from_str(login["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["password"], t("PW-SECRET-4"), "the candidate got the redacted JSON, framed right");
    assert_eq!(login["headers"]["cookie"], format!("sid={}", t("SID-SECRET-2")));
}

/// Stops an nginx (master and worker) also when a test fails.
struct StoppedNginx(std::process::Child);

impl Drop for StoppedNginx {
    fn drop(&mut self) {
        stop_gracefully(&mut self.0);
    }
}

/// Starts nginx serving `hello.txt` over TLS on PORT in namespace `ns`, its files in
/// `dir`; returns it and its access log.
fn start_tls_nginx(ns: &str, dir: &TempDir) -> (StoppedNginx, std::path::PathBuf) {
    let (cert, key, www) = (dir.path("cert.pem"), dir.path("key.pem"), dir.path("www"));
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=capture-test -keyout {} -out {} 2>/dev/null",
        key.display(),
        cert.display()
    ));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello over TLS\n").unwrap();
    let access_log = dir.path("access.log");
    let conf = dir.path("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log {log}; server {{ listen {PORT} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; root {www}; }} }}\n",
            pid = dir.path("nginx.pid").display(),
            err = dir.path("error.log").display(),
            log = access_log.display(),
            cert = cert.display(),
            key = key.display(),
            www = www.display(),
        ),
    )
    .unwrap();
    let nginx = StoppedNginx(Command::new("ip").args(["netns", "exec", ns, "nginx", "-c"]).arg(&conf).stdout(Stdio::null()).spawn().unwrap());
    wait_tcp(ns, "127.0.0.1", PORT);
    (nginx, access_log)
}

/// With `--tls-lib`, the uprobes follow the classifiers' sampling verdict: a connection's
/// plaintext is captured whole or not at all. Regression: the uprobes also kept (by the
/// hash alone) connections of a server on the same port in another network namespace,
/// whose traffic no watched interface carries (e.g. a concurrent test's nginx), so more
/// plaintext connections were kept than the classifiers kept.
#[test]
fn tls_plaintext_follows_the_sampling_verdict() {
    let test = "tls_plaintext_follows_the_sampling_verdict";
    if !kernel_tests_enabled(test) {
        return;
    }
    const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    for tool in ["nginx", "openssl"] {
        assert!(have(tool), "{test}: {tool} missing (cargo xtask test installs it)");
    }
    assert!(std::path::Path::new(LIBSSL).exists(), "{test}: {LIBSSL} missing (Debian's libssl3)");
    let net = NetPair::new();
    let dir = TempDir::new("tls-sample");
    let (nginx, access_log) = start_tls_nginx(&net.server_ns, &dir);
    // The same server on the same port elsewhere: probed (it listens on a watched port),
    // but no watched interface carries its traffic.
    let elsewhere = NetPair::new();
    let elsewhere_dir = TempDir::new("tls-sample-elsewhere");
    let (elsewhere_nginx, elsewhere_log) = start_tls_nginx(&elsewhere.server_ns, &elsewhere_dir);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log", "--sample", "50", "--tls-lib", LIBSSL]);
    let (n, m) = (200, 20);
    let curls = |net: &NetPair, count: u64| {
        format!(
            "ip netns exec {} sh -c 'for i in $(seq {count}); do curl -sk -o /dev/null https://{}:{PORT}/hello.txt; done'",
            net.client_ns, net.server_v4
        )
    };
    sh(&format!("{} & {}; wait", curls(&elsewhere, m), curls(&net, n)));
    let s = summary(&agent.stop());
    drop(nginx);
    drop(elsewhere_nginx);
    let served = |log: &std::path::Path| std::fs::read_to_string(log).unwrap().lines().count() as u64;
    assert_eq!(served(&access_log), n);
    assert_eq!(served(&elsewhere_log), m);
    let records = parse_gor(&agent.records());
    let conns = by_connection(&records);
    let client = |r: &GorRecord| r.meta.get("client").cloned().unwrap_or_default();
    let elsewhere_kept = conns.values().filter(|recs| client(&recs[0]).starts_with(&format!("{}:", elsewhere.client_v4))).count();
    let k = conns.len() as u64;
    let (lo, hi) = binomial_interval(n, 0.5, 0.001);
    eprintln!(
        "TLS sampling: kept {k} of {n} connections ({elsewhere_kept} of them from the unwatched namespace); interval [{lo}, {hi}]; \
         kernel_tls_connections={} kernel_tls_sampled_out_calls={} kernel_tls_unwatched_calls={} kernel_sampled_out_connections={} tls_processes={}",
        s["kernel_tls_connections"], s["kernel_tls_sampled_out_calls"], s["kernel_tls_unwatched_calls"], s["kernel_sampled_out_connections"], s["tls_processes"]
    );
    assert_eq!(elsewhere_kept, 0, "no plaintext of a server whose traffic no watched interface carries");
    for (id, recs) in &conns {
        let kinds: Vec<u8> = recs.iter().map(|r| r.ty).collect();
        assert_eq!(kinds, [b'1', b'2'], "connection {id}: one whole exchange");
        assert!(recs.iter().all(|r| r.meta.get("tls").map(String::as_str) == Some("1")), "connection {id}: plaintext");
        assert!(recs[1].payload.ends_with(b"hello over TLS\n"));
    }
    assert!((lo..=hi).contains(&k), "kept {k} of {n}");
    // The left-out connections' SSL calls were seen by the probes and not emitted, and
    // their TCP segments stopped at the classifiers.
    assert!(s["kernel_tls_sampled_out_calls"] >= 2 * (n - k), "a read and a write per left-out connection");
    // The other server's calls were seen and not emitted (unwatched or sampled out).
    assert!(s["kernel_tls_sampled_out_calls"] + s["kernel_tls_unwatched_calls"] >= 2 * (n - k + m));
    assert_eq!(s["kernel_sampled_out_connections"], n - k);
    assert_eq!(s["http_requests"], k, "only the kept connections' plaintext was framed");
    assert!(s["tls_ciphertext_connections"] <= k, "a left-out connection's ciphertext never reached userspace");
}
