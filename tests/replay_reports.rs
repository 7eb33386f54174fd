//! The compare reports people use, end to end with the `capture` binary against HTTP
//! servers on 127.0.0.1 in this process (no root): risk levels and the `--fail-on`
//! gate, JUnit XML, JSON lines and HAR read back by independent parsers (Python's
//! xml.etree and json, haralyzer), Content-Encoding and order-insensitive arrays,
//! reports of halves merged into the report of the whole, and a replay of a million
//! exchanges in bounded memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use capture_tests::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(capture_bin()).args(args).output().expect("running capture");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("capture {args:?}: {:?}\n{stdout}{stderr}", out.status);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs a checker of `peers/` on a file; returns what it printed as JSON.
fn python_check(script: &str, file: &Path) -> serde_json::Value {
    let out = Command::new("python3").arg(peers_dir().join(script)).arg(file).output().unwrap();
    assert!(out.status.success(), "{script} rejected {}:\n{}", file.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn json_body(v: &str) -> Vec<u8> {
    http_response(200, &[("Content-Type", "application/json")], v.as_bytes())
}

/// Production's answer and the candidate's, per path: one change of each kind.
fn kinds() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    vec![
        ("/same", json_body(r#"{"id":1}"#), json_body(r#"{"id":1}"#)),
        ("/status", json_body(r#"{"id":1}"#), http_response(503, &[("Content-Type", "application/json")], br#"{"id":1}"#)),
        ("/removed", json_body(r#"{"id":1,"name":"a"}"#), json_body(r#"{"id":1}"#)),
        ("/type", json_body(r#"{"id":1}"#), json_body(r#"{"id":"1"}"#)),
        ("/value", json_body(r#"{"id":1}"#), json_body(r#"{"id":2}"#)),
        ("/added", json_body(r#"{"id":1}"#), json_body(r#"{"id":1,"new":true}"#)),
    ]
}

/// A `.gor` file of GET requests for `paths` on one captured connection, each with
/// production's response.
fn gor_of(path: &Path, exchanges: &[(&str, Vec<u8>)]) {
    let mut out = Vec::new();
    for (i, (target, response)) in exchanges.iter().enumerate() {
        let id = format!("{:016x}{:08x}{:08x}", 0x13u64, 1, i);
        let ts = 1_764_050_000_000_000_000 + i as u64 * 1_000_000;
        gor_record(&mut out, b'1', &id, ts, 0, format!("GET {target} HTTP/1.1\r\nHost: prod\r\n\r\n").as_bytes());
        gor_record(&mut out, b'2', &id, ts + 500_000, 2_000_000, response);
    }
    std::fs::write(path, out).unwrap();
}

/// The candidate of [`kinds`].
fn candidate() -> HttpServer {
    let answers: BTreeMap<String, Vec<u8>> = kinds().into_iter().map(|(p, _, c)| (p.to_string(), c)).collect();
    HttpServer::start(true, move |r| answers.get(r.target.split('?').next().unwrap()).cloned().unwrap_or_else(|| http_response(404, &[], b"")))
}

/// Issue 13: risk levels on a candidate with one change of each kind (status class,
/// removed field, type change, value change, added field); `--fail-on` exits accordingly.
#[test]
fn risk_levels_and_the_fail_on_gate() {
    if !python_modules_enabled("risk_levels_and_the_fail_on_gate", &["json"]) {
        return;
    }
    let dir = TempDir::new("risk");
    let server = candidate();
    let all = dir.path("all.gor");
    gor_of(&all, &kinds().into_iter().map(|(p, prod, _)| (p, prod)).collect::<Vec<_>>());
    let json = dir.path("r.json");
    let (code, stdout, _) = run(&["replay", "--input", all.to_str().unwrap(), "--target", &server.url, "--compare", "--rate", "1000", "--report-json", json.to_str().unwrap()]);
    assert_eq!(code, 0, "no gate, no failure");
    assert!(stdout.contains("risk of the differences: high 3  medium 1  low 1"), "{stdout}");
    let r = read_json(&json);
    assert_eq!(r["risk"], serde_json::json!({"high": 3, "medium": 1, "low": 1}), "{r}");
    let risk_of = |route: &str| r["endpoints"].as_array().unwrap().iter().find(|e| e["route"] == route).unwrap()["risk"].clone();
    assert_eq!(risk_of("/same"), serde_json::json!({"high": 0, "medium": 0, "low": 0}));
    for (route, level) in [("/status", "high"), ("/removed", "high"), ("/type", "high"), ("/value", "medium"), ("/added", "low")] {
        assert_eq!(risk_of(route)[level], 1, "{route}: {r}");
    }
    let field = |key: &str| r["fields"].as_array().unwrap().iter().find(|f| f["key"] == key).unwrap_or_else(|| panic!("{key}: {r}"))["risk"].clone();
    assert_eq!(field("status"), serde_json::json!({"high": 1, "medium": 0, "low": 0}));
    assert_eq!(field("json:$.name"), serde_json::json!({"high": 1, "medium": 0, "low": 0}));
    assert_eq!(field("json:$.id"), serde_json::json!({"high": 1, "medium": 1, "low": 0}), "a type change and a value change");
    assert_eq!(field("json:$.new"), serde_json::json!({"high": 0, "medium": 0, "low": 1}));
    let example = r["examples"].as_array().unwrap().iter().find(|e| e["path"] == "/type").unwrap();
    assert_eq!((example["differences"][0]["change"].as_str(), example["differences"][0]["risk"].as_str()), (Some("type_changed"), Some("high")));

    // Each file has changes up to one level; each gate level passes or fails on it.
    let subset = |name: &str, paths: &[&str]| {
        let file = dir.path(name);
        gor_of(&file, &kinds().into_iter().filter(|(p, _, _)| paths.contains(p)).map(|(p, prod, _)| (p, prod)).collect::<Vec<_>>());
        file
    };
    let cases = [
        (subset("low.gor", &["/same", "/added"]), [0, 0, 3]),
        (subset("medium.gor", &["/value", "/added"]), [0, 3, 3]),
        (subset("high.gor", &["/removed"]), [3, 3, 3]),
        (subset("status.gor", &["/status", "/same"]), [3, 3, 3]),
        (subset("equal.gor", &["/same"]), [0, 0, 0]),
    ];
    for (file, want) in &cases {
        for (level, want) in ["high", "medium", "low"].iter().zip(want) {
            let (code, _, stderr) = run(&["replay", "--input", file.to_str().unwrap(), "--target", &server.url, "--compare", "--rate", "1000", "--fail-on", level]);
            assert_eq!(code, *want, "{} --fail-on {level}: {stderr}", file.display());
            if code == 3 {
                assert!(stderr.contains(&format!("--fail-on {level}: failing (")), "{stderr}");
            }
        }
    }
    // --fail-on-diff stays: the same as --fail-on low.
    let (code, _, stderr) = run(&["replay", "--input", cases[0].0.to_str().unwrap(), "--target", &server.url, "--compare", "--fail-on-diff"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("--fail-on-diff: failing (1 different at risk low or higher)"), "{stderr}");
    // Bad values and combinations are usage errors naming them.
    let input = all.to_str().unwrap();
    let (code, _, stderr) = run(&["replay", "--input", input, "--target", &server.url, "--fail-on", "severe"]);
    assert!(code == 2 && stderr.contains("severe") && stderr.contains("expected high, medium or low"), "{stderr}");
    let (code, _, stderr) = run(&["replay", "--input", input, "--target", &server.url, "--fail-on", "low", "--fail-on-diff"]);
    assert!(code == 2 && stderr.contains("--fail-on-diff"), "{stderr}");
    let requests_before = server.count.load(std::sync::atomic::Ordering::SeqCst);
    for flag in ["--ignore-field", "--unordered"] {
        let (code, _, stderr) = run(&["replay", "--input", input, "--target", &server.url, "--compare", flag, "items[*]"]);
        assert_eq!(code, 2, "{flag}: a bad pattern is a usage error");
        assert!(stderr.contains("items[*]") && stderr.contains("must start with $"), "{stderr}");
    }
    assert_eq!(server.count.load(std::sync::atomic::Ordering::SeqCst), requests_before, "nothing is sent on a usage error");
}

/// Issue 13: JUnit XML read by Python's xml.etree with the schema's required
/// attributes, JSON lines read line by line, the HTML written; all from one replay.
#[test]
fn junit_and_json_lines_read_by_independent_parsers() {
    if !python_modules_enabled("junit_and_json_lines_read_by_independent_parsers", &["json", "xml.etree.ElementTree"]) {
        return;
    }
    let dir = TempDir::new("junit");
    let server = candidate();
    let input = dir.path("in.gor");
    let mut exchanges: Vec<(&str, Vec<u8>)> = kinds().into_iter().map(|(p, prod, _)| (p, prod)).collect();
    // A path XML must escape, which the candidate does not know (404: high risk).
    exchanges.push(("/q&a'x\"", json_body("{}")));
    gor_of(&input, &exchanges);
    // A request that is not replayed.
    let mut data = std::fs::read(&input).unwrap();
    gor_record(&mut data, b'1', &format!("{:016x}{:08x}{:08x}", 0x13u64, 2, 0), 1_764_050_001_000_000_000, 0, b"DELETE /items/7 HTTP/1.1\r\nHost: prod\r\n\r\n");
    std::fs::write(&input, data).unwrap();
    let (junit, jsonl, html) = (dir.path("r.xml"), dir.path("r.jsonl"), dir.path("r.html"));
    let (code, _, stderr) = run(&[
        "replay", "--input", input.to_str().unwrap(), "--target", &server.url, "--compare", "--rate", "1000", "--fail-on", "medium",
        "--report-junit", junit.to_str().unwrap(), "--report-jsonl", jsonl.to_str().unwrap(), "--report-html", html.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("8 JSON line(s) written"), "{stderr}");

    let x = python_check("check_junit.py", &junit);
    let cases = x["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 7, "one test case per endpoint: {x}");
    let status = |name: &str| cases[name]["status"].as_str().unwrap().to_string();
    for failing in ["GET /status", "GET /removed", "GET /type", "GET /value", "GET /q&a'x\""] {
        assert_eq!(status(failing), "failure", "{failing}: {x}");
    }
    assert_eq!(cases["GET /status"]["type"], "high");
    assert!(cases["GET /value"]["text"].as_str().unwrap().contains("[medium] $.id: 1 -> 2"), "the failure carries example diffs: {x}");
    assert_eq!(status("GET /added"), "passed", "low risk passes --fail-on medium: {x}");
    assert!(cases["GET /added"]["out"].as_str().unwrap().contains("[low] $.new: (missing) -> true"), "{x}");
    assert_eq!(status("GET /same"), "passed");
    assert_eq!(x["suite"]["failures"], "5");

    let lines = python_check("check_jsonl.py", &jsonl);
    let lines = lines.as_array().unwrap();
    assert_eq!(lines.len(), 8, "seven replayed, one skipped");
    let by_path = |p: &str| lines.iter().find(|l| l["path"] == p).unwrap_or_else(|| panic!("{p}: {lines:?}"));
    assert_eq!((by_path("/same")["outcome"].as_str(), by_path("/same")["risk"].as_str()), (Some("equal"), None));
    assert_eq!((by_path("/type")["outcome"].as_str(), by_path("/type")["risk"].as_str()), (Some("different"), Some("high")));
    assert_eq!(by_path("/type")["differences"][0]["path"], "$.id");
    assert_eq!(by_path("/added")["risk"], "low");
    assert_eq!((by_path("/items/7")["outcome"].as_str(), by_path("/items/7")["reason"].as_str()), (Some("skipped"), Some("method DELETE not allowed (use --allow-method)")));
    assert!(lines.iter().all(|l| l["id"].as_str().is_some_and(|id| id.len() == 32)));

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("risk-high") && page.contains("GET /type"));
}

/// Issue 13: `capture export --format har` of a `.gor` file, read by haralyzer and
/// checked against the fields HAR 1.2 requires.
#[test]
fn har_export_read_by_haralyzer() {
    if !python_modules_enabled("har_export_read_by_haralyzer", &["haralyzer"]) {
        return;
    }
    let dir = TempDir::new("har");
    let gz = {
        let mut e = Vec::new();
        // A gzip member (stored, no compression) written by hand: header, one stored
        // deflate block, CRC-32 and length.
        let body = br#"{"items":[1,2,3]}"#;
        e.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        e.push(1);
        e.extend_from_slice(&(body.len() as u16).to_le_bytes());
        e.extend_from_slice(&(!(body.len() as u16)).to_le_bytes());
        e.extend_from_slice(body);
        e.extend_from_slice(&crc32(body).to_le_bytes());
        e.extend_from_slice(&(body.len() as u32).to_le_bytes());
        e
    };
    let mut data = Vec::new();
    let id = |i: u32| format!("{:016x}{:08x}{:08x}", 0x4a7u64, 3, i);
    let t0 = 1_764_050_000_000_000_000u64;
    gor_record(&mut data, b'1', &id(0), t0, 0, b"GET /api/items?page=2&sort=name HTTP/1.1\r\nHost: shop.example\r\nCookie: session=abc\r\n\r\n");
    gor_record(&mut data, b'2', &id(0), t0 + 3_000_000, 3_000_000, &http_response(200, &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &gz));
    gor_record(&mut data, b'1', &id(1), t0 + 10_000_000, 0, b"POST /api/orders HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"item\":42}");
    gor_record(&mut data, b'2', &id(1), t0 + 15_000_000, 5_000_000, &http_response(201, &[("Content-Type", "application/json"), ("Location", "/api/orders/9")], br#"{"id":9}"#));
    gor_record(&mut data, b'1', &id(2), t0 + 20_000_000, 0, b"GET /png HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    gor_record(&mut data, b'2', &id(2), t0 + 21_000_000, 1_000_000, &http_response(200, &[("Content-Type", "image/png")], &[0x89, b'P', b'N', b'G', 0xff, 0x00]));
    gor_record(&mut data, b'1', &id(3), t0 + 30_000_000, 0, b"GET /lost HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    let input = dir.path("in.gor");
    std::fs::write(&input, data).unwrap();
    let har = dir.path("out.har");
    let (code, _, stderr) = run(&["export", "--format", "har", "--input", input.to_str().unwrap(), "--output", har.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("exported 4 exchange(s) (1 without a response"), "{stderr}");
    let entries = python_check("check_har.py", &har);
    let e = entries.as_array().unwrap();
    assert_eq!(e.len(), 4);
    assert_eq!((e[0]["method"].as_str(), e[0]["url"].as_str()), (Some("GET"), Some("http://shop.example/api/items?page=2&sort=name")));
    assert_eq!(e[0]["query"], serde_json::json!([{"name": "page", "value": "2"}, {"name": "sort", "value": "name"}]));
    assert_eq!(e[0]["text"], r#"{"items":[1,2,3]}"#, "gzip undone in content.text");
    assert_eq!((e[0]["wait"].as_f64(), e[0]["server"].as_str()), (Some(3.0), Some("10.0.0.1")));
    assert_eq!(e[0]["start"], "2025-11-25T05:53:20+00:00");
    assert_eq!((e[1]["method"].as_str(), e[1]["post"].as_str(), e[1]["status"].as_u64()), (Some("POST"), Some("{\"item\":42}"), Some(201)));
    assert_eq!((e[2]["encoding"].as_str(), e[2]["text"].as_str()), (Some("base64"), Some("iVBOR/8A")), "binary bodies as base64");
    assert_eq!((e[3]["status"].as_u64(), e[3]["comment"].as_str()), (Some(0), Some("no response captured")));
    // To stdout by default.
    let out = Command::new(capture_bin()).args(["export", "--format", "har", "--input", input.to_str().unwrap()]).stderr(Stdio::null()).output().unwrap();
    let har: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(har["log"]["entries"].as_array().unwrap().len(), 4);
    // A format it does not know is a usage error.
    let (code, _, stderr) = run(&["export", "--format", "csv", "--input", input.to_str().unwrap()]);
    assert!(code == 2 && stderr.contains("csv"), "{stderr}");
}

/// CRC-32 (IEEE) for the hand-made gzip member above.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Issue 13: bodies are compared after undoing Content-Encoding, and `--unordered`
/// compares the arrays it names without regard to order.
#[test]
fn content_encoding_and_unordered_arrays() {
    if !python_modules_enabled("content_encoding_and_unordered_arrays", &["gzip", "zlib"]) {
        return;
    }
    let dir = TempDir::new("encoding");
    let doc = r#"{"items":[{"id":1},{"id":2},{"id":3}],"total":3}"#;
    let shuffled = r#"{"items":[{"id":3},{"id":1},{"id":2}],"total":3}"#;
    // The candidate compresses with Python's gzip and zlib (an independent encoder).
    let encode = |how: &str, text: &str| {
        let code = format!("import sys, gzip, zlib; d = sys.stdin.buffer.read(); sys.stdout.buffer.write({how})");
        let mut child = Command::new("python3").args(["-c", &code]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    let answers: BTreeMap<&'static str, Vec<u8>> = [
        ("/gzip", http_response(200, &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &encode("gzip.compress(d)", shuffled))),
        ("/deflate", http_response(200, &[("Content-Type", "application/json"), ("Content-Encoding", "deflate")], &encode("zlib.compress(d)", doc))),
        ("/changed", http_response(200, &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &encode("gzip.compress(d)", &doc.replace("\"total\":3", "\"total\":4")))),
    ]
    .into_iter()
    .collect();
    let server = HttpServer::start(false, move |r| answers[r.target.as_str()].clone());
    let input = dir.path("in.gor");
    gor_of(&input, &[("/gzip", json_body(doc)), ("/deflate", json_body(doc)), ("/changed", json_body(doc))]);
    let json = dir.path("r.json");
    let base = ["replay", "--input", input.to_str().unwrap(), "--target", &server.url, "--compare", "--rate", "1000", "--ignore-header", "content-encoding", "--report-json", json.to_str().unwrap()];
    let fields = |r: &serde_json::Value| -> BTreeMap<String, u64> { r["fields"].as_array().unwrap().iter().map(|f| (f["key"].as_str().unwrap().to_string(), f["real"].as_u64().unwrap())).collect() };
    let (code, _, _) = run(&base);
    assert_eq!(code, 0);
    let r = read_json(&json);
    assert_eq!(fields(&r), BTreeMap::from([("json:$.items[*].id".to_string(), 1), ("json:$.total".to_string(), 1)]), "decoded and compared as JSON: {r}");
    let mut unordered = base.to_vec();
    unordered.extend(["--unordered", "$.items"]);
    let (code, _, _) = run(&unordered);
    assert_eq!(code, 0);
    let r = read_json(&json);
    assert_eq!(fields(&r), BTreeMap::from([("json:$.total".to_string(), 1)]), "only the real change is left: {r}");
    assert_eq!(r["totals"]["equal"], 2);
}

/// Issue 13 (scale-out, report side): the reports of two replayers over halves of the
/// records merge into the report of one replayer over all of them.
#[test]
fn reports_of_halves_merge_into_the_report_of_the_whole() {
    if !python_modules_enabled("reports_of_halves_merge_into_the_report_of_the_whole", &["json"]) {
        return;
    }
    let dir = TempDir::new("merge");
    let server = candidate();
    let all: Vec<(&str, Vec<u8>)> = kinds().into_iter().flat_map(|(p, prod, _)| std::iter::repeat_n((p, prod), 5)).collect();
    let (whole, a, b) = (dir.path("whole.gor"), dir.path("a.gor"), dir.path("b.gor"));
    gor_of(&whole, &all);
    gor_of(&a, &all[..13]);
    gor_of(&b, &all[13..]);
    let mut reports = Vec::new();
    for (name, input) in [("whole", &whole), ("a", &a), ("b", &b)] {
        let json = dir.path(&format!("{name}.json"));
        let (code, _, _) = run(&["replay", "--input", input.to_str().unwrap(), "--target", &server.url, "--compare", "--rate", "2000", "--report-json", json.to_str().unwrap()]);
        assert_eq!(code, 0);
        reports.push(json);
    }
    let merged = dir.path("merged.json");
    let junit = dir.path("merged.xml");
    let (code, stdout, _) = run(&[
        "report", "merge", reports[1].to_str().unwrap(), reports[2].to_str().unwrap(), "--report-json", merged.to_str().unwrap(),
        "--report-junit", junit.to_str().unwrap(), "--fail-on", "high",
    ]);
    assert_eq!(code, 3, "the merged report fails the gate like the whole");
    assert!(stdout.contains("merged report of 2 replays") && stdout.contains("replayed 30"), "{stdout}");
    let (w, m) = (read_json(&reports[0]), read_json(&merged));
    for key in ["totals", "risk", "fields", "skipped", "not_compared"] {
        assert_eq!(w[key], m[key], "{key}");
    }
    let counts = |r: &serde_json::Value| -> Vec<(String, u64, u64, u64, serde_json::Value)> {
        let mut v: Vec<_> = r["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["endpoint"].as_str().unwrap().to_string(), e["requests"].as_u64().unwrap(), e["different"].as_u64().unwrap(), e["candidate_latency_ms"]["count"].as_u64().unwrap(), e["risk"].clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(counts(&w), counts(&m));
    assert_eq!(w["per_target"][0]["requests"], m["per_target"][0]["requests"]);
    // Merged once more, with the whole: everything counts twice.
    let (code, stdout, _) = run(&["report", "merge", merged.to_str().unwrap(), reports[0].to_str().unwrap()]);
    assert_eq!(code, 0, "no gate asked");
    assert!(stdout.contains("replayed 60"), "{stdout}");
    // Not a report: a runtime error naming the file.
    let (code, _, stderr) = run(&["report", "merge", whole.to_str().unwrap()]);
    assert!(code == 1 && stderr.contains("whole.gor") && stderr.contains("not a capture JSON report"), "{stderr}");
}

/// Issue 13: a replay of a million exchanges from a generated `.gor` file keeps its
/// memory bounded: the peak RSS of the replayer (the kernel's `ru_maxrss`) stays under
/// [`RSS_BOUND_MIB`], whatever the number of exchanges.
#[test]
fn long_replay_keeps_memory_bounded() {
    if !python_modules_enabled("long_replay_keeps_memory_bounded", &["json"]) {
        return;
    }
    const EXCHANGES: usize = 1_000_000;
    const CONNECTIONS: usize = 200;
    /// The bound stated in README.
    const RSS_BOUND_MIB: u64 = 64;
    let dir = TempDir::new("long");
    let server = HttpServer::start(false, |r| {
        let body = format!("{{\"n\":{}}}", &r.target[1..]);
        http_response(200, &[("Content-Type", "application/json")], body.as_bytes())
    });
    let input = dir.path("long.gor");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..EXCHANGES {
            let id = format!("{:016x}{:08x}{:08x}", 0x1e6u64, i % CONNECTIONS, i / CONNECTIONS);
            let ts = 1_764_050_000_000_000_000 + i as u64 * 1000;
            gor_record(&mut out, b'1', &id, ts, 0, format!("GET /{i} HTTP/1.1\r\nHost: prod\r\n\r\n").as_bytes());
            // Every 10,000th answer differs, so the report has examples to keep (and cap).
            let n = if i % 10_000 == 0 { i + 1 } else { i };
            gor_record(&mut out, b'2', &id, ts + 500, 100_000, &http_response(200, &[("Content-Type", "application/json")], format!("{{\"n\":{n}}}").as_bytes()));
        }
        out.flush().unwrap();
    }
    let size_mib = std::fs::metadata(&input).unwrap().len() >> 20;
    let json = dir.path("r.json");
    let start = std::time::Instant::now();
    let child = Command::new(capture_bin())
        .args(["replay", "--input", input.to_str().unwrap(), "--target", &server.url, "--compare", "--rate", "10000000", "--concurrency", "64"])
        .args(["--report-json", json.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Bounded in time: a replay that hangs is killed (and the test fails on its exit).
    let watchdog = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
        while std::time::Instant::now() < deadline {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let (code, peak_kib) = wait_with_peak_rss(child);
    let _ = watchdog.join();
    let elapsed = start.elapsed();
    eprintln!(
        "long replay: {EXCHANGES} exchanges ({size_mib} MiB of .gor) in {:.1} s, peak RSS {:.1} MiB (bound {RSS_BOUND_MIB} MiB)",
        elapsed.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
    assert_eq!(code, Some(0), "the replay finished");
    let r = read_json(&json);
    assert_eq!(r["totals"]["replayed"], EXCHANGES as u64, "{}", r["totals"]);
    assert_eq!(r["totals"]["different"], (EXCHANGES / 10_000) as u64);
    assert_eq!(r["totals"]["equal"], (EXCHANGES - EXCHANGES / 10_000) as u64);
    assert_eq!(r["latency_ms"]["candidate"]["count"], EXCHANGES as u64);
    assert_eq!(server.count.load(std::sync::atomic::Ordering::SeqCst), EXCHANGES, "each request reached the target once");
    assert!(peak_kib < RSS_BOUND_MIB * 1024, "peak RSS {peak_kib} KiB for {EXCHANGES} exchanges ({size_mib} MiB of input)");
}
