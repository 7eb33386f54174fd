//! Kernel end-to-end: HTTP exchanges captured byte-exact and paired, with real
//! clients (curl, ab, wrk, a raw pipelining client) and servers (nginx, python
//! http.server, the recording server).
//!
//! Ground truth is what the peers themselves saw: `curl --trace` hex dumps of the
//! exact bytes sent and received, the raw client's own byte files, and nginx's
//! access log for request counts.

use std::collections::HashMap;

use capture_tests::*;

const PORT: u16 = 18081;

/// Finds the captured connection whose requests are exactly `sent`, and checks that
/// its responses are exactly `received` and every request is paired by id.
fn assert_connection_captured(records: &[GorRecord], sent: &[u8], received: &[u8], what: &str) -> Vec<GorRecord> {
    assert_connection_captured_with(records, sent, Some(received), what)
}

fn assert_connection_captured_with(records: &[GorRecord], sent: &[u8], received: Option<&[u8]>, what: &str) -> Vec<GorRecord> {
    let conns = by_connection(records);
    let conn = conns
        .values()
        .find(|recs| concat(recs, b'1') == sent)
        .unwrap_or_else(|| {
            panic!(
                "{what}: no captured connection carries exactly the {} bytes curl sent; captured request starts: {:?}",
                sent.len(),
                records.iter().filter(|r| r.ty == b'1').map(|r| r.start_line()).collect::<Vec<_>>()
            )
        });
    if let Some(received) = received {
        assert_eq!(
            concat(conn, b'2'),
            received,
            "{what}: captured responses differ from the {} bytes the client received",
            received.len()
        );
    }
    let requests: Vec<&GorRecord> = conn.iter().filter(|r| r.ty == b'1').collect();
    let responses: Vec<&GorRecord> = conn.iter().filter(|r| r.ty == b'2').collect();
    assert_eq!(requests.len(), responses.len(), "{what}: every request has one response");
    for (req, resp) in requests.iter().zip(&responses) {
        assert_eq!(req.id, resp.id, "{what}: request and response share an id, in order");
        assert!(resp.ts_ns >= req.ts_ns, "{what}: response starts after its request");
    }
    conn.clone()
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn curl_exchanges_are_captured_byte_exact_and_paired_on_stdout() {
    if !kernel_tests_enabled("curl_exchanges_are_captured_byte_exact_and_paired_on_stdout") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("http_curl");
    let server = RecordServer::start(&net.server_ns, &net.server_v4, PORT, &dir);
    let mut agent = Agent::start_stdout(&net.server_ns, &net.server_if, &[PORT], &dir, &[]);
    let started = now_ns();
    let url = format!("http://{}:{PORT}", net.server_v4);
    std::fs::write(dir.path("body.bin"), (0..20_000u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>()).unwrap();
    let body = dir.path("body.bin").display().to_string();
    let cases = [
        ("get", format!("{url}/hello")),
        ("keepalive", format!("{url}/a {url}/bytes/70000 {url}/c -o /dev/null -o /dev/null")),
        ("post", format!("-X POST --data-binary @{body} {url}/post")),
        ("chunked", format!("-H 'Transfer-Encoding: chunked' --data-binary @{body} {url}/chunked")),
        ("expect100", format!("-H 'Expect: 100-continue' --data-binary @{body} {url}/upload")),
    ];
    let traces: Vec<(&str, Vec<u8>, Vec<u8>)> =
        cases.iter().map(|(name, args)| { let (s, r) = curl_traced(&net, &dir, name, args); (*name, s, r) }).collect();
    let stderr = agent.stop();
    let counters = summary(&stderr);
    assert_no_kernel_loss(&counters);
    let records = parse_gor(&agent.records());
    // The server's own log is the ground truth for every byte it sent: curl's trace
    // drops the empty line that ends an interim 100 Continue.
    let truth: Vec<StreamDigest> = server.connections().into_values().collect();
    for recs in by_connection(&records).values() {
        let (req, resp) = (concat(recs, b'1'), concat(recs, b'2'));
        assert!(
            truth.iter().any(|t| t.c2s_sha256 == sha256_hex(&req) && t.s2c_sha256 == sha256_hex(&resp)),
            "a captured connection differs from every connection the server logged"
        );
    }
    assert_eq!(by_connection(&records).len(), truth.len());
    for (name, sent, received) in &traces {
        let received = if *name == "expect100" { None } else { Some(&received[..]) };
        let conn = assert_connection_captured_with(&records, sent, received, name);
        for r in &conn {
            assert!(r.ts_ns >= started && r.ts_ns <= now_ns(), "{name}: timestamp {} outside the test", r.ts_ns);
            assert!(r.latency_ns >= 0);
        }
        match *name {
            "keepalive" => assert_eq!(conn.len(), 6),
            "expect100" => {
                let resp = conn.iter().find(|r| r.ty == b'2').unwrap();
                assert_eq!(resp.start_line(), "HTTP/1.1 100 Continue", "interim response leads the response record");
                assert!(String::from_utf8_lossy(&resp.payload).contains("HTTP/1.1 200 OK"));
            }
            "chunked" => {
                let req = conn.iter().find(|r| r.ty == b'1').unwrap();
                assert!(req.payload.ends_with(b"0\r\n\r\n"), "chunked request kept whole");
            }
            _ => {}
        }
    }
    assert_eq!(counters["http_requests"], 7);
    assert_eq!(counters["http_paired"], 7);
    assert_eq!(counters["http_interim_responses"], 1);
    assert_eq!(counters["http_parse_errors_invalid_head"], 0);
    assert_eq!(counters["http_lost_to_gap"], 0);
}

#[test]
fn python_http10_close_delimited_responses_are_captured_whole() {
    if !kernel_tests_enabled("python_http10_close_delimited_responses_are_captured_whole") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("http10");
    let script = peers_dir().join("http10_server.py");
    let _server = Proc::start_in(
        &net.server_ns,
        "http10_server",
        &format!("python3 -u {} {} {PORT}", script.display(), net.server_v4),
        "ready",
    );
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &[]);
    let url = format!("http://{}:{PORT}", net.server_v4);
    let small = curl_traced(&net, &dir, "small", &format!("{url}/11"));
    let large = curl_traced(&net, &dir, "large", &format!("{url}/300000"));
    let http10 = curl_traced(&net, &dir, "http10", &format!("-0 {url}/5"));
    let counters = summary(&agent.stop());
    assert_no_kernel_loss(&counters);
    let records = parse_gor(&agent.records());
    for (name, (sent, received)) in [("small", &small), ("large", &large), ("http10", &http10)] {
        let conn = assert_connection_captured(&records, sent, received, name);
        let resp = conn.iter().find(|r| r.ty == b'2').unwrap();
        assert!(resp.start_line().starts_with("HTTP/1.0 200"), "{name}: {}", resp.start_line());
    }
    assert_eq!(counters["http_responses"], 3);
    assert_eq!(counters["http_incomplete_at_close"], 0);
}

#[test]
fn nginx_keepalive_head_and_304_are_framed_exactly() {
    if !kernel_tests_enabled("nginx_keepalive_head_and_304_are_framed_exactly") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("nginx");
    let nginx = Nginx::start(&net.server_ns, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &[]);
    let url = format!("http://{}:{PORT}", net.server_v4);
    let keepalive = curl_traced(&net, &dir, "keepalive", &format!("{url}/index.html {url}/64k.bin {url}/missing -o /dev/null -o /dev/null"));
    // Two HEADs on one connection: the Content-Length of the first must not eat the second.
    let head = curl_traced(&net, &dir, "head", &format!("-I {url}/64k.bin {url}/index.html"));
    let not_modified = curl_traced(
        &net,
        &dir,
        "304",
        &format!("-H \"If-Modified-Since: $(date -u '+%a, %d %b %Y %H:%M:%S GMT')\" {url}/index.html {url}/index.html -o /dev/null"),
    );
    let counters = summary(&agent.stop());
    assert_no_kernel_loss(&counters);
    let records = parse_gor(&agent.records());
    let conn = assert_connection_captured(&records, &keepalive.0, &keepalive.1, "keepalive");
    let statuses: Vec<String> = conn.iter().filter(|r| r.ty == b'2').map(|r| r.start_line()).collect();
    assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"]);
    let conn = assert_connection_captured(&records, &head.0, &head.1, "head");
    for r in conn.iter().filter(|r| r.ty == b'2') {
        assert!(r.payload.ends_with(b"\r\n\r\n"), "HEAD response has no body");
        assert!(String::from_utf8_lossy(&r.payload).contains("Content-Length:"));
    }
    let conn = assert_connection_captured(&records, &not_modified.0, &not_modified.1, "304");
    let statuses: Vec<String> = conn.iter().filter(|r| r.ty == b'2').map(|r| r.start_line()).collect();
    assert_eq!(statuses, ["HTTP/1.1 304 Not Modified", "HTTP/1.1 304 Not Modified"]);
    assert_eq!(records.iter().filter(|r| r.ty == b'1').count(), nginx.requests_logged());
}

#[test]
fn ab_and_wrk_keepalive_loads_are_captured_completely() {
    if !kernel_tests_enabled("ab_and_wrk_keepalive_loads_are_captured_completely") {
        return;
    }
    for tool in ["ab", "wrk"] {
        assert!(have(tool), "{tool} is required: cargo xtask test installs it");
    }
    let net = NetPair::new();
    let dir = TempDir::new("load");
    let nginx = Nginx::start(&net.server_ns, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log"]);
    let url = format!("http://{}:{PORT}", net.server_v4);
    sh(&format!("ip netns exec {} ab -q -k -n 2000 -c 10 {url}/64k.bin > /dev/null", net.client_ns));
    let wrk = sh(&format!("ip netns exec {} wrk -t 2 -c 20 -d 2s {url}/index.html", net.client_ns));
    let counters = summary(&agent.stop());
    assert_no_kernel_loss(&counters);
    let records = parse_gor(&agent.records());
    let requests = records.iter().filter(|r| r.ty == b'1').count();
    let logged = nginx.requests_logged();
    eprintln!("load: nginx logged {logged} requests, agent captured {requests}; wrk said:\n{wrk}");
    assert!(logged > 2000, "wrk sent requests");
    assert_eq!(requests, logged, "every request nginx served was captured");
    // Every response belongs to a captured request (by id).
    let ids: HashMap<&str, usize> = records.iter().filter(|r| r.ty == b'1').map(|r| (r.id.as_str(), 0)).collect();
    let responses: Vec<&GorRecord> = records.iter().filter(|r| r.ty == b'2').collect();
    assert!(responses.iter().all(|r| ids.contains_key(r.id.as_str())), "unpaired response");
    // wrk stops mid-flight: at most one unanswered request per connection.
    assert!(requests - responses.len() <= 20, "{} requests, {} responses", requests, responses.len());
    for key in ["http_resyncs", "http_lost_to_gap", "http_parse_errors_invalid_head", "http_unpaired_responses", "stream_gaps"] {
        assert_eq!(counters[key], 0, "{key}");
    }
}

#[test]
fn raw_pipelined_requests_in_one_segment_are_split_and_paired() {
    if !kernel_tests_enabled("raw_pipelined_requests_in_one_segment_are_split_and_paired") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("pipeline");
    let _nginx = Nginx::start(&net.server_ns, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &[]);
    let host = &net.server_v4;
    let request = format!(
        "GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n\
         HEAD /64k.bin HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /index.html HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello\
         GET /64k.bin HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    std::fs::write(dir.path("pipeline.req"), &request).unwrap();
    let script = peers_dir().join("raw_client.py");
    sh(&format!(
        "ip netns exec {} python3 {} {host} {PORT} {} {}",
        net.client_ns,
        script.display(),
        dir.path("pipeline.req").display(),
        dir.path("pipeline.resp").display()
    ));
    let received = std::fs::read(dir.path("pipeline.resp")).unwrap();
    let counters = summary(&agent.stop());
    assert_no_kernel_loss(&counters);
    let records = parse_gor(&agent.records());
    let conn = assert_connection_captured(&records, request.as_bytes(), &received, "pipeline");
    let lines: Vec<String> = conn.iter().filter(|r| r.ty == b'1').map(|r| r.start_line()).collect();
    assert_eq!(lines, ["GET /index.html HTTP/1.1", "HEAD /64k.bin HTTP/1.1", "POST /index.html HTTP/1.1", "GET /64k.bin HTTP/1.1"]);
    let statuses: Vec<String> = conn.iter().filter(|r| r.ty == b'2').map(|r| r.start_line()).collect();
    assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 405 Not Allowed", "HTTP/1.1 200 OK"]);
}

#[test]
fn non_http_bytes_on_a_watched_port_are_counted_and_http_still_captured() {
    if !kernel_tests_enabled("non_http_bytes_on_a_watched_port_are_counted_and_http_still_captured") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("nonhttp");
    let _nginx = Nginx::start(&net.server_ns, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &[]);
    // A TLS ClientHello prefix: nginx answers 400 and closes.
    std::fs::write(dir.path("tls.bin"), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-not-http").unwrap();
    let script = peers_dir().join("raw_client.py");
    sh(&format!(
        "ip netns exec {} python3 {} {} {PORT} {} {}",
        net.client_ns,
        script.display(),
        net.server_v4,
        dir.path("tls.bin").display(),
        dir.path("tls.out").display()
    ));
    let ok = curl_traced(&net, &dir, "after", &format!("http://{}:{PORT}/index.html", net.server_v4));
    let counters = summary(&agent.stop());
    assert_no_kernel_loss(&counters);
    assert_eq!(counters["http_non_http_connections"], 1);
    assert!(counters["http_non_http_bytes"] > 0);
    let records = parse_gor(&agent.records());
    assert_connection_captured(&records, &ok.0, &ok.1, "after");
    assert_eq!(records.len(), 2, "nothing recorded for the non-HTTP connection");
}
