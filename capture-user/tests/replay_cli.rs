//! `capture replay` as a user runs it (the built binary), against small HTTP servers
//! on 127.0.0.1 in this process: exit codes, closed pipes, gates. No root needed.

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
    let mut out = Vec::new();
    let mut record = |ty: u8, i: usize, payload: &[u8]| {
        let id = format!("{:016x}{:08x}{:08x}", 0xc11u64, 1, i);
        let header = format!("{} {id} {} 1000 len={} client=10.0.0.2:4000 server=10.0.0.1:80\n", ty as char, 1_700_000_000_000_000_000u64 + i as u64, payload.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(SEPARATOR);
    };
    for i in 0..n {
        record(b'1', i, format!("GET /{i} HTTP/1.1\r\nHost: prod\r\n\r\n").as_bytes());
        if with_responses {
            let body = format!("{{\"n\":{i}}}");
            record(b'2', i, format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
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

fn serve(mut s: TcpStream, seen: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            seen.fetch_add(1, Ordering::SeqCst);
            let n = head.split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let body = format!("{{\"n\":{n}}}");
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
    for bad in [["--speed", "0"], ["--rate", "0"], ["--timeout", "0"], ["--max-wait", "soon"], ["--concurrency", "0"]] {
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
