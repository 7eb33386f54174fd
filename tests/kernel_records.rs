//! Kernel end-to-end: no record lies (issue 10). Under loss, hostile framing, full
//! disks and forged bodies, what the agent writes is either right or flagged and
//! counted: a response is never paired with another request's exchange, no
//! request the server never ran is invented, no record is torn or forged.

use std::collections::HashMap;

use capture_tests::*;

const PORT: u16 = 18083;

/// The body of a response record (after its head, without the final newline), for
/// servers that echo the path.
fn body(payload: &[u8]) -> &[u8] {
    let body = match payload.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &payload[i + 4..],
        None => b"",
    };
    body.strip_suffix(b"\n").unwrap_or(body)
}

/// The request-target of a request record.
fn target(req: &GorRecord) -> String {
    req.start_line().split(' ').nth(1).unwrap_or_default().to_string()
}

/// What a ring overflow left in the records: pairs checked against nginx's echo.
struct PairCheck {
    paired: usize,
    wrong: usize,
    flagged: usize,
}

/// nginx echoes each request's path in its body; wrk sends unique paths (with
/// `wrk_extra` arguments) through a tiny ring, so the agent loses most events.
/// Returns the agent's counters and the checked pairs.
fn ring_overflow(tag: &str, wrk_extra: &str) -> (HashMap<String, u64>, PairCheck) {
    assert!(have("wrk"), "wrk is required: cargo xtask test installs it");
    let net = NetPair::new();
    let dir = TempDir::new(tag);
    let _nginx = Nginx::start_with(&net.server_ns, PORT, &dir, "location /echo/ { return 200 \"$request_uri\\n\"; }");
    let script = dir.path("unique.lua");
    std::fs::write(
        &script,
        "local threads = 0\n\
         function setup(thread) threads = threads + 1; thread:set(\"tid\", threads) end\n\
         local n = 0\n\
         function request() n = n + 1; return wrk.format(\"GET\", \"/echo/\" .. tid .. \"-\" .. n) end\n",
    )
    .unwrap();
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log", "--ring-size", "64KiB"]);
    let url = format!("http://{}:{PORT}/", net.server_v4);
    let wrk = sh(&format!("ip netns exec {} wrk -t 2 -c 20 -d 3s {wrk_extra} -s {} {url}", net.client_ns, script.display()));
    let counters = summary(&agent.stop());
    let records = parse_gor(&agent.records());

    let requests: HashMap<&str, &GorRecord> = records.iter().filter(|r| r.ty == b'1').map(|r| (r.id.as_str(), r)).collect();
    let mut check = PairCheck { paired: 0, wrong: 0, flagged: 0 };
    let mut without_request = 0;
    for resp in records.iter().filter(|r| r.ty == b'2') {
        if resp.meta.contains_key("unpaired") {
            check.flagged += 1;
            continue;
        }
        let Some(req) = requests.get(resp.id.as_str()) else {
            without_request += 1;
            continue;
        };
        check.paired += 1;
        if body(&resp.payload) != target(req).as_bytes() {
            if check.wrong < 5 {
                eprintln!("wrong pair {}: request {:?}, response body {:?}", resp.id, target(req), String::from_utf8_lossy(body(&resp.payload)));
            }
            check.wrong += 1;
        }
    }
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    eprintln!(
        "{tag}: kernel_ring_full_events={} kernel_ring_full_bytes={} stream_gap_bytes={} stream_unknown_starts={} stream_unknown_ends={} \
         connections_reused_without_syn={}; records: {} requests, {} paired responses ({} wrong), {} flagged unpaired, \
         {without_request} paired without a request record; http_pairing_losses={} http_pairing_resumed={} \
         http_unmatched_requests={}; wrk: {}",
        c("kernel_ring_full_events"),
        c("kernel_ring_full_bytes"),
        c("stream_gap_bytes"),
        c("stream_unknown_starts"),
        c("stream_unknown_ends"),
        c("connections_reused_without_syn"),
        requests.len(),
        check.paired,
        check.wrong,
        check.flagged,
        c("http_pairing_losses"),
        c("http_pairing_resumed"),
        c("http_unmatched_requests"),
        wrk.lines().find(|l| l.contains("requests in")).unwrap_or_default().trim(),
    );
    assert!(c("kernel_ring_full_events") > 0, "the ring never overflowed: this test checked nothing");
    assert_eq!(check.flagged as u64, c("http_unpaired_responses"), "every unpaired response is flagged and counted");
    assert!(
        c("stream_gap_bytes") <= c("kernel_ring_full_bytes") + c("kernel_truncated_bytes"),
        "gaps larger than what the kernel lost are phantom gaps"
    );
    (counters, check)
}

/// Issue 10, finding 1: after the ring overflowed (`--ring-size 64KiB` under wrk with
/// unique paths) 97 % of the written pairs had another request's response (93 % here
/// before the fix). No written pair may be wrong; the others are flagged unpaired.
#[test]
fn mispairing_after_loss_ring_overflow_writes_no_wrong_pair() {
    if !kernel_tests_enabled("mispairing_after_loss_ring_overflow_writes_no_wrong_pair") {
        return;
    }
    let (_, check) = ring_overflow("keepalive", "");
    assert_eq!(check.wrong, 0, "responses written paired with another request's exchange");
    assert!(check.paired > check.flagged, "pairing resumes after losses");
}

/// The same with a new connection per request: SYNs and FINs are lost too, and 4-tuples
/// are reused by connections whose SYN was lost (their bytes were fed to the old
/// connection: a phantom gap of up to 2 GiB, 16 MB in one run before the fix).
#[test]
fn mispairing_after_loss_with_new_connections_writes_no_wrong_pair_and_no_phantom_gap() {
    if !kernel_tests_enabled("mispairing_after_loss_with_new_connections_writes_no_wrong_pair_and_no_phantom_gap") {
        return;
    }
    let (_, check) = ring_overflow("close", "-H 'Connection: close'");
    assert_eq!(check.wrong, 0, "responses written paired with another request's exchange");
    assert!(check.paired > 0, "pairing works on new connections");
}
