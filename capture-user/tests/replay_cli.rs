//! `capture replay` as a user runs it (the built binary), against small HTTP servers
//! on 127.0.0.1 in this process: exit codes, closed pipes, gates, connections kept
//! open, live metrics. No root needed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SEPARATOR: &[u8] = "\n\u{1F435}\u{1F648}\u{1F649}\n".as_bytes();

fn capture() -> Command {
    Command::new(env!("CARGO_BIN_EXE_capture"))
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("capture-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `.gor` file as the agent writes it: GET /n requests on one connection, each with
/// production's answer `{"n":N}` when `with_responses`.
fn gor(path: &Path, n: usize, with_responses: bool) {
    gor_connections(path, 1, n, with_responses);
}

/// A `.gor` file of `connections` captured connections, one after the other, each with
/// `per_connection` GET /n requests (n numbers all requests) and, when `with_responses`,
/// production's answer `{"n":N}` to each; 1 ms apart.
fn gor_connections(path: &Path, connections: usize, per_connection: usize, with_responses: bool) {
    let mut out = Vec::new();
    let mut record = |ty: u8, connection: usize, i: usize, n: usize, payload: &[u8]| {
        let id = format!("{:016x}{:08x}{:08x}", 0xc11u64, connection + 1, i);
        let ts = 1_700_000_000_000_000_000u64 + n as u64 * 1_000_000;
        let header = format!("{} {id} {ts} 1000 len={} client=10.0.0.2:4000 server=10.0.0.1:80\n", ty as char, payload.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(SEPARATOR);
    };
    for c in 0..connections {
        for i in 0..per_connection {
            let n = c * per_connection + i;
            record(b'1', c, i, n, format!("GET /{n} HTTP/1.1\r\nHost: prod\r\n\r\n").as_bytes());
            if with_responses {
                let body = format!("{{\"n\":{n}}}");
                record(b'2', c, i, n, format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

/// An HTTP server on 127.0.0.1 answering every GET /n with `{"n":N}`; counts requests.
fn server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(stream, &seen));
        }
    });
    (url, count)
}

/// Connections a [`counting_server`] has open now, the most it had open at once, and
/// how many it accepted.
#[derive(Default)]
struct OpenConnections {
    now: AtomicUsize,
    most: AtomicUsize,
    accepted: AtomicUsize,
}

/// Like [`server`], counting the connections open at once (closed when the replayer
/// closes its end).
fn counting_server() -> (String, Arc<OpenConnections>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let open = Arc::new(OpenConnections::default());
    let counts = open.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
            counts.most.fetch_max(now, Ordering::SeqCst);
            let counts = counts.clone();
            std::thread::spawn(move || {
                serve(stream, &AtomicUsize::new(0));
                counts.now.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, open)
}

fn serve(s: TcpStream, seen: &AtomicUsize) {
    serve_with(s, seen, &|n| format!("{{\"n\":{n}}}"));
}

/// Answers each request with 200 and `body(n)` for GET /n (n: the path without its /).
fn serve_with(mut s: TcpStream, seen: &AtomicUsize, body: &dyn Fn(&str) -> String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            seen.fetch_add(1, Ordering::SeqCst);
            let n = head.split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let body = body(&n);
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A 127.0.0.1 URL where nothing listens.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = capture().arg("replay").args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("replay {args:?}: {:?}\n{stdout}{stderr}", out.status);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Issue 11, bug 4: `--speed 0` exited 1 (README: bad values exit 2), and
/// `capture replay ... | head -1` panicked on the broken pipe (exit 101) without
/// writing the report.
#[test]
fn speed_zero_exits_1_and_a_closed_stdout_panics() {
    let dir = Dir::new("bug4");
    let input = dir.path("in.gor");
    gor(&input, 3, true);
    let (url, count) = server();
    for bad in [["--speed", "0"], ["--rate", "0"], ["--timeout", "0"], ["--max-wait", "soon"], ["--concurrency", "0"], ["--speed", "maximum"]] {
        let (code, _, stderr) = run(&["--input", input.to_str().unwrap(), "--target", &url, bad[0], bad[1]]);
        assert_eq!(code, 2, "{bad:?} is a usage error");
        assert!(stderr.contains(bad[0]) && stderr.contains(&format!("'{}'", bad[1])), "names the flag and the value: {stderr}");
    }
    assert_eq!(count.load(Ordering::SeqCst), 0, "nothing is sent on a usage error");

    // stdout is a pipe whose reader is gone before the summary is written.
    let report = dir.path("report.json");
    let mut child = capture()
        .args(["replay", "--input", input.to_str().unwrap(), "--target", &url, "--rate", "50", "--compare"])
        .arg("--report-json")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "ends quietly: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(json(&report)["totals"]["equal"], 3, "the report is written");
}

/// Issue 11, bug 7: a dead target with --fail-on-diff exited 0, and requests without a
/// captured response were counted "equal".
#[test]
fn gates_pass_when_they_should_fail() {
    let dir = Dir::new("bug7");
    let input = dir.path("in.gor");
    gor(&input, 4, true);
    let report = dir.path("r.json");
    let dead = dead_url();
    let (code, stdout, stderr) =
        run(&["--input", input.to_str().unwrap(), "--target", &dead, "--compare", "--fail-on-diff", "--rate", "100", "--report-json", report.to_str().unwrap()]);
    assert_eq!(code, 3, "a dead target fails the gate");
    assert!(stderr.contains(&format!("candidate {dead} answered none of its 4 request(s)")), "{stderr}");
    assert!(stdout.contains("errors 4"), "{stdout}");
    assert_eq!(json(&report)["totals"]["errors"], 4);

    // Without production responses, nothing is "equal": it is "not compared".
    let bare = dir.path("bare.gor");
    gor(&bare, 4, false);
    let (url, count) = server();
    let (code, stdout, _) =
        run(&["--input", bare.to_str().unwrap(), "--target", &url, "--compare", "--fail-on-diff", "--rate", "100", "--report-json", report.to_str().unwrap()]);
    assert_eq!(code, 0, "not compared is not a failure");
    assert_eq!(count.load(Ordering::SeqCst), 4);
    let r = json(&report);
    assert_eq!((r["totals"]["equal"].as_u64(), r["totals"]["not_compared"].as_u64()), (Some(0), Some(4)), "{r}");
    assert_eq!(r["not_compared"]["no production response captured"], 4);
    assert!(stdout.contains("not compared 4: no production response captured"), "{stdout}");
}

/// Issue 11, bug 2: `--baseline` pointing where nothing listens: exit 0, `errors 0`,
/// nothing on stderr, and noise cancellation silently off.
#[test]
fn dead_baseline_silently_turns_noise_cancellation_off() {
    let dir = Dir::new("bug2");
    let input = dir.path("in.gor");
    gor(&input, 3, true);
    let (url, _) = server();
    let dead = dead_url();
    let report = dir.path("r.json");
    let args = ["--input", input.to_str().unwrap(), "--target", &url, "--baseline", &dead, "--compare", "--rate", "100", "--report-json", report.to_str().unwrap()];
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "without --fail-on-diff the run completes");
    assert!(stderr.contains(&format!("error: baseline {dead} answered none of its 3 request(s)")), "{stderr}");
    assert!(stdout.contains(&format!("baseline {dead}: 3 request(s), 3 error(s)")), "{stdout}");
    let r = json(&report);
    assert_eq!(r["run_errors"].as_array().unwrap().len(), 1, "{r}");
    let baseline = r["per_target"].as_array().unwrap().iter().find(|t| t["role"] == "baseline").unwrap().clone();
    assert_eq!((baseline["requests"].as_u64(), baseline["errors"].as_u64()), (Some(3), Some(3)));
    let mut gated = args.to_vec();
    gated.push("--fail-on-diff");
    let (code, _, stderr) = run(&gated);
    assert_eq!(code, 3, "a dead baseline fails the gate like a dead target");
    assert!(stderr.contains("--fail-on-diff: failing (baseline"), "{stderr}");
}

/// Issue 10, item 3, replay side: a request the capture flagged `ambiguous=` is
/// never sent unless --replay-ambiguous asks for it.
#[test]
fn ambiguous_requests_are_not_sent_unless_asked() {
    let dir = Dir::new("ambiguous");
    let input = dir.path("in.gor");
    let payload = b"GET /smuggled HTTP/1.1\r\nHost: prod\r\n\r\n";
    let mut data = format!(
        "1 {:016x}{:08x}{:08x} 1 0 len={} client=10.0.0.2:4000 server=10.0.0.1:80 ambiguous=content_length_and_chunked\n",
        0xa11u64,
        1,
        0,
        payload.len()
    )
    .into_bytes();
    data.extend_from_slice(payload);
    data.extend_from_slice(SEPARATOR);
    std::fs::write(&input, data).unwrap();
    let (url, count) = server();
    let (code, stdout, _) = run(&["--input", input.to_str().unwrap(), "--target", &url]);
    assert_eq!(code, 0);
    assert!(stdout.contains("skipped 1: request framing ambiguous at capture (content_length_and_chunked)"), "{stdout}");
    assert_eq!(count.load(Ordering::SeqCst), 0);
    let (code, _, _) = run(&["--input", input.to_str().unwrap(), "--target", &url, "--replay-ambiguous"]);
    assert_eq!(code, 0);
    assert_eq!(count.load(Ordering::SeqCst), 1, "sent when asked");
}

/// Issue 9 follow-up: keep-alive connections to the targets were kept per captured
/// connection until the replay ended, so a long replay (a consumer group, millions of
/// captured connections) piled up sockets until it ran out of file descriptors
/// (here: 5,000 captured connections, ~4,870 target connections open at once).
/// Now the replayer's sockets stay within --max-target-connections.
#[test]
fn keep_alive_connections_pile_up_in_a_long_replay() {
    const CONNECTIONS: usize = 5000;
    const LIMIT: usize = 40;
    let dir = Dir::new("pileup");
    let input = dir.path("in.gor");
    gor_connections(&input, CONNECTIONS, 1, true);
    let (url, open) = counting_server();
    let report = dir.path("r.json");
    let mut child = capture()
        .args(["replay", "--input", input.to_str().unwrap(), "--target", &url, "--compare", "--speed", "1000"])
        .args(["--concurrency", "4", "--max-target-connections", &LIMIT.to_string()])
        .arg("--report-json")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The replayer's sockets (all of them connections to the target), sampled while it
    // runs: a socket is closed before another one is opened, so no sample can exceed the
    // limit (a sample may miss a peak, never invent one).
    let fd_dir = format!("/proc/{}/fd", child.id());
    let (mut most_sockets, mut most_fds, mut samples) = (0, 0, 0);
    while child.try_wait().unwrap().is_none() {
        if let Ok(entries) = std::fs::read_dir(&fd_dir) {
            let links: Vec<PathBuf> = entries.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).collect();
            let sockets = links.iter().filter(|l| l.to_string_lossy().starts_with("socket:")).count();
            (most_sockets, most_fds, samples) = (most_sockets.max(sockets), most_fds.max(links.len()), samples + 1);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let r = json(&report);
    assert_eq!((r["totals"]["equal"].as_u64(), r["totals"]["errors"].as_u64()), (Some(CONNECTIONS as u64), Some(0)), "{r}");
    let (most, accepted) = (open.most.load(Ordering::SeqCst), open.accepted.load(Ordering::SeqCst));
    eprintln!(
        "{CONNECTIONS} captured connections: replayer at most {most_sockets} sockets and {most_fds} descriptors ({samples} samples); \
         the server saw at most {most} connections open at once, {accepted} accepted"
    );
    assert_eq!(accepted, CONNECTIONS, "one target connection per captured connection");
    assert!(samples > 0 && most_sockets <= LIMIT, "the replayer had {most_sockets} sockets open (limit {LIMIT})");
    // The server notices a close only when its thread runs: a loose bound.
    assert!(most < CONNECTIONS / 4, "the server had {most} connections open at once");
    let counters = &r["counters"];
    // The report lists the counters that are not 0.
    let counter = |name: &str| counters[name].as_u64().unwrap_or(0);
    assert_eq!((counter("replay_connections_opened"), counter("replay_connections_reopened")), (CONNECTIONS as u64, 0), "{counters}");
    let closed: u64 = ["idle", "evicted", "by_target", "after_exchange", "at_end"]
        .iter()
        .map(|reason| counter(&format!("replay_connections_closed_{reason}")))
        .sum();
    assert_eq!(closed, CONNECTIONS as u64, "every connection closed, for a reason: {counters}");
}

/// `--speed max` (no pacing): every request is sent once, each captured connection's
/// requests in order on one target connection, and every outcome counted.
#[test]
fn speed_max_sends_every_request_once_in_connection_order() {
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: usize = 50;
    let dir = Dir::new("speedmax");
    let input = dir.path("in.gor");
    // 1 ms apart: 1 s of captured time, replayed without waiting.
    gor_connections(&input, CONNECTIONS, PER_CONNECTION, true);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // The paths each target connection received, in order.
    type Paths = Arc<std::sync::Mutex<Vec<usize>>>;
    let seen: Arc<std::sync::Mutex<Vec<Paths>>> = Default::default();
    let all = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
            all.lock().unwrap().push(paths.clone());
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                    if let Some(n) = line.strip_prefix("GET /").and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<usize>().ok()) {
                        paths.lock().unwrap().push(n);
                        let body = format!("{{\"n\":{n}}}");
                        let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if stream.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
            });
        }
    });
    let report = dir.path("r.json");
    let (code, _, stderr) = run(&[
        "--input", input.to_str().unwrap(), "--target", &url, "--compare", "--speed", "max", "--concurrency", "8", "--report-json",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let r = json(&report);
    let total = (CONNECTIONS * PER_CONNECTION) as u64;
    assert_eq!((r["totals"]["equal"].as_u64(), r["totals"]["errors"].as_u64()), (Some(total), Some(0)), "{r}");
    assert_eq!(r["counters"]["replay_requests_sent"].as_u64(), Some(total));
    let per_connection: Vec<Vec<usize>> = seen.lock().unwrap().iter().map(|p| p.lock().unwrap().clone()).collect();
    assert_eq!(per_connection.len(), CONNECTIONS, "one target connection per captured connection");
    let mut every: Vec<usize> = per_connection.concat();
    every.sort_unstable();
    assert_eq!(every, (0..CONNECTIONS * PER_CONNECTION).collect::<Vec<_>>(), "each request exactly once");
    for paths in &per_connection {
        let c = paths[0] / PER_CONNECTION;
        assert_eq!(*paths, (c * PER_CONNECTION..(c + 1) * PER_CONNECTION).collect::<Vec<_>>(), "a captured connection, in order");
    }
}

/// A `.gor` file of records `(type, connection, exchange, payload)`, 1 ms apart, with
/// production's latency 1 ms.
fn write_gor(path: &Path, records: &[(char, u32, u32, String)]) {
    let mut out = Vec::new();
    for (i, (ty, connection, exchange, payload)) in records.iter().enumerate() {
        let ts = 1_700_000_000_000_000_000u64 + i as u64 * 1_000_000;
        let header = format!("{ty} {:016x}{connection:08x}{exchange:08x} {ts} 1000000 len={} client=10.0.0.2:4000 server=10.0.0.1:80\n", 0xe7u64, payload.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(SEPARATOR);
    }
    std::fs::write(path, out).unwrap();
}

/// GET `http://addr/path` with HTTP/1.0: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply.split(' ').nth(1).unwrap().parse().unwrap();
    (status, reply.split_once("\r\n\r\n").unwrap().1.to_string())
}

/// `/metrics` as series -> value.
fn scrape(addr: &str) -> std::collections::BTreeMap<String, f64> {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Polls `done` every 20 ms for up to 20 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Issue 9, item 3 (replayer): `capture replay --metrics` serves live values while a
/// replay runs, and once it finished exactly the totals of its report.
#[test]
fn replay_metrics_are_live_and_end_equal_to_the_report() {
    let dir = Dir::new("metrics");
    let input = dir.path("in.gor");
    let get = |n: &str| format!("GET /{n} HTTP/1.1\r\nHost: prod\r\n\r\n");
    let ok = |n: &str| {
        let body = format!("{{\"n\":{n}}}");
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    // One captured connection: equal, different (the candidate changes /1), skipped
    // (POST), not compared (no production response), the gate (held by the candidate
    // until the test has looked), equal.
    write_gor(
        &input,
        &[
            ('1', 1, 0, get("0")),
            ('2', 1, 0, ok("0")),
            ('1', 1, 1, get("1")),
            ('2', 1, 1, ok("1")),
            ('1', 1, 2, "POST /2 HTTP/1.1\r\nHost: prod\r\nContent-Length: 0\r\n\r\n".into()),
            ('1', 1, 3, get("3")),
            ('1', 1, 4, get("gate")),
            ('2', 1, 4, ok("gate")),
            ('1', 1, 5, get("5")),
            ('2', 1, 5, ok("5")),
        ],
    );
    let (reached, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let candidate = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (reached, open) = (reached.clone(), open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (reached, open) = (reached.clone(), open.clone());
                std::thread::spawn(move || {
                    serve_with(stream, &AtomicUsize::new(0), &|n| {
                        if n == "gate" {
                            reached.store(1, Ordering::SeqCst);
                            while open.load(Ordering::SeqCst) == 0 {
                                std::thread::sleep(std::time::Duration::from_millis(5));
                            }
                        }
                        format!("{{\"n\":{}}}", if n == "1" { "-1" } else { n })
                    })
                });
            }
        });
        url
    };
    let (baseline, _) = server();
    let report = dir.path("r.json");
    let mut child = capture()
        .args(["replay", "--input", input.to_str().unwrap(), "--target", &candidate, "--baseline", &baseline, "--compare"])
        .args(["--concurrency", "1", "--metrics", "127.0.0.1:0", "--metrics-linger", "120"])
        .arg("--report-json")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    {
        let (log, mut stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let text = || log.lock().unwrap().clone();
    wait_until("the metrics address", || text().contains("metrics on http://"));
    let addr = text().split("metrics on http://").nth(1).unwrap().split('/').next().unwrap().to_string();

    // During: the candidate holds the gate request.
    wait_until("the gate request", || reached.load(Ordering::SeqCst) == 1);
    let outcomes = |m: &std::collections::BTreeMap<String, f64>| -> f64 { m.iter().filter(|(k, _)| k.starts_with("capture_replay_outcomes_total")).map(|(_, v)| v).sum() };
    let mut during = scrape(&addr);
    wait_until("the events before the gate", || {
        during = scrape(&addr);
        // The input is read ahead of the replay (its counters are published as it ends).
        outcomes(&during) == 3.0
            && during["capture_replay_target_requests_total{role=\"baseline\"}"] == 3.0
            && during["capture_replay_input_records_total"] == 10.0
    });
    for (series, value) in [
        ("capture_replay_requests_sent_total", 4.0),
        ("capture_replay_requests_skipped_total{reason=\"method_not_allowed\"}", 1.0),
        ("capture_replay_outcomes_total{outcome=\"equal\"}", 1.0),
        ("capture_replay_outcomes_total{outcome=\"different\"}", 1.0),
        ("capture_replay_outcomes_total{outcome=\"not_compared\"}", 1.0),
        ("capture_replay_different_total{risk=\"medium\"}", 1.0),
        ("capture_replay_target_requests_total{role=\"candidate\"}", 3.0),
        ("capture_replay_latency_seconds_count{role=\"production\"}", 3.0),
        ("capture_replay_latency_seconds_count{role=\"candidate\"}", 3.0),
        ("capture_replay_latency_seconds_count{role=\"baseline\"}", 3.0),
        ("capture_replay_input_records_total", 10.0),
        ("capture_replay_target_connections_open", 2.0),
        ("capture_replay_finished", 0.0),
    ] {
        assert_eq!(during.get(series), Some(&value), "{series} during the replay: {during:#?}");
    }
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz"), (200, "ready\n".to_string()));

    // After: the gate opens, the replay ends, the report is written, the process lingers.
    open.store(1, Ordering::SeqCst);
    let mut after = scrape(&addr);
    wait_until("the end of the replay", || {
        after = scrape(&addr);
        after["capture_replay_finished"] == 1.0
    });
    let r = json(&report);
    let totals = &r["totals"];
    let metric = |series: &str| *after.get(series).unwrap_or_else(|| panic!("{series} missing: {after:#?}")) as u64;
    for outcome in ["equal", "different", "partial", "not_compared", "error"] {
        let key = if outcome == "error" { "errors" } else { outcome };
        assert_eq!(Some(metric(&format!("capture_replay_outcomes_total{{outcome=\"{outcome}\"}}"))), totals[key].as_u64(), "{outcome}: {r}");
    }
    assert_eq!(outcomes(&after) as u64, totals["replayed"].as_u64().unwrap());
    for risk in ["high", "medium", "low"] {
        assert_eq!(Some(metric(&format!("capture_replay_different_total{{risk=\"{risk}\"}}"))), r["risk"][risk].as_u64(), "{risk}");
    }
    let skipped: u64 = after.iter().filter(|(k, _)| k.starts_with("capture_replay_requests_skipped_total")).map(|(_, v)| *v as u64).sum();
    assert_eq!(Some(skipped), totals["skipped"].as_u64());
    for role in ["candidate", "baseline"] {
        let rows: Vec<&serde_json::Value> = r["per_target"].as_array().unwrap().iter().filter(|t| t["role"] == role).collect();
        let sum = |field: &str| rows.iter().map(|t| t[field].as_u64().unwrap()).sum::<u64>();
        assert_eq!(metric(&format!("capture_replay_target_requests_total{{role=\"{role}\"}}")), sum("requests"), "{role}");
        let errors: u64 = after.iter().filter(|(k, _)| k.starts_with(&format!("capture_replay_target_errors_total{{role=\"{role}\""))).map(|(_, v)| *v as u64).sum();
        assert_eq!(errors, sum("errors"), "{role}");
    }
    // Every report counter under its metric name (the report lists those not 0).
    let series_of = |name: &str| match name.strip_prefix("replay_connections_closed_") {
        Some(reason) => format!("capture_replay_target_connections_closed_total{{reason=\"{reason}\"}}"),
        None => match name.strip_prefix("replay_connections_") {
            Some(rest) => format!("capture_replay_target_connections_{rest}_total"),
            None => match name.strip_prefix("input_") {
                Some(rest) => format!("capture_replay_input_{rest}_total"),
                None => format!("capture_{name}_total"),
            },
        },
    };
    let counters = r["counters"].as_object().unwrap();
    for (name, value) in counters {
        assert_eq!(Some(metric(&series_of(name))), value.as_u64(), "{name}");
    }
    // And no counter of those families that the report does not have.
    let mapped: Vec<String> = counters.keys().map(|k| series_of(k)).collect();
    let report_families = [
        "capture_replay_input_",
        "capture_replay_target_connections_opened",
        "capture_replay_target_connections_reopened",
        "capture_replay_target_connections_closed",
        "capture_replay_requests_sent",
        "capture_replay_requests_without_server_address",
        "capture_replay_gaps_capped",
        "capture_replay_sent_to_production",
    ];
    for (series, value) in after.iter().filter(|(k, _)| report_families.iter().any(|f| k.starts_with(f))) {
        assert!(mapped.contains(series) || *value == 0.0, "{series}={value} is in no report counter: {counters:?}");
    }
    assert_eq!(metric("capture_replay_target_connections_open"), 0, "all closed at the end");
    assert_eq!(metric("capture_replay_latency_seconds_count{role=\"candidate\"}"), r["latency_ms"]["candidate"]["count"].as_u64().unwrap());
    assert_eq!(metric("capture_replay_latency_seconds_count{role=\"production\"}"), r["latency_ms"]["production"]["count"].as_u64().unwrap());
    assert_eq!(metric("capture_replay_latency_seconds_count{role=\"baseline\"}"), 4, "/3 had no production response to compare");
    assert_eq!((metric("capture_replay_requests_sent_total"), skipped), (5, 1));
    assert_eq!(http_get(&addr, "/readyz").0, 503, "not ready once finished");
    assert_eq!(http_get(&addr, "/healthz").0, 200, "alive while it lingers");

    // SIGTERM ends the linger with the replay's exit code.
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    wait_until("the exit after SIGTERM", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "{}", text());
}
