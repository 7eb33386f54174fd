//! Kernel end-to-end: `/metrics` scraped during and after traffic. After the traffic
//! stopped, its values are exactly the summary line's; during it, the agent is alive
//! and ready and the counters only grow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capture_tests::*;

const PORT: u16 = 18091;
const REQUESTS: u64 = 600;

/// Counter and gauge series of the agent (no histograms, no process usage).
fn summary_series(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let histogram = |k: &str| k.contains("_bucket") || k.contains("_sum") || k.contains("_count");
    m.iter().filter(|(k, _)| !histogram(k) && !k.starts_with("capture_agent_")).map(|(k, v)| (k.clone(), *v)).collect()
}

/// What shutdown itself changes: it detaches every interface (attached 1 -> 0,
/// one more detach), so these are compared apart.
fn changed_by_shutdown(key: &str) -> bool {
    key == "interfaces_detached" || key.ends_with(".attached") || key.ends_with(".detaches")
        || key == "capture_interfaces_detached_total"
        || key.starts_with("capture_interface_attached{")
        || key.starts_with("capture_interface_detaches_total{")
}

#[test]
fn metrics_during_and_after_traffic_match_the_summary() {
    if !kernel_tests_enabled("metrics_during_and_after_traffic_match_the_summary") || !have("ab") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("metrics");
    let server = RecordServer::start(&net.server_ns, &net.server_v4, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log", "--metrics", "127.0.0.1:0"]);
    let addr = metrics_addr(&agent.log());
    let scrape = || parse_metrics(&http_get(Some(&net.server_ns), &addr, "/metrics").1);
    let output = format!("file://{}", agent.output.display());
    let written = format!("capture_output_records_total{{output=\"{output}\",result=\"written\"}}");
    assert_eq!(http_get(Some(&net.server_ns), &addr, "/readyz"), (200, "ready\n".into()));

    // In the background: ab on 4 keep-alive connections, and an upload held open for
    // about 2 s by curl's rate limit, so some scrapes surely happen mid-traffic.
    let client = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &net.client_ns])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let url = format!("http://{}:{PORT}", net.server_v4);
    std::fs::write(dir.path("upload.bin"), vec![b'u'; 4000]).unwrap();
    let upload_arg = format!("@{}", dir.path("upload.bin").display());
    let mut upload = client(&["curl", "-sS", "-o", "/dev/null", "-H", "Expect:", "--limit-rate", "2000", "--data-binary", &upload_arg, &format!("{url}/upload")]);
    let mut ab = client(&["ab", "-q", "-k", "-c", "4", "-n", &REQUESTS.to_string(), &format!("{url}/bytes/200")]);
    let mut previous = scrape();
    let mut scrapes_during = 0;
    while upload.try_wait().unwrap().is_none() {
        assert_eq!(http_get(Some(&net.server_ns), &addr, "/healthz").0, 200, "alive under load");
        assert_eq!(http_get(Some(&net.server_ns), &addr, "/readyz").0, 200, "ready under load");
        let now = scrape();
        for (series, value) in summary_series(&previous) {
            if series.ends_with("_total") || series.contains("_total{") {
                assert!(now[&series] >= value, "{series} went down: {value} -> {}", now[&series]);
            }
        }
        previous = now;
        scrapes_during += 1;
    }
    assert!(upload.wait().unwrap().success() && ab.wait().unwrap().success());
    assert!(scrapes_during > 0, "no scrape happened during the upload");
    server.wait_connections(5);

    // Traffic stopped: wait until the pipeline published the last records, then
    // take the scrape that must equal the summary.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let m = scrape();
        if m.get(&written).copied() == Some(2.0 * (REQUESTS + 1) as f64) && m["capture_connections_closed_total{reason=\"fin\"}"] == 5.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "records never all written: {:?}", m.get(&written));
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(summary_series(&scrape()), summary_series(&after), "nothing changes once traffic stopped");

    let counters = summary(&agent.stop());
    assert_no_kernel_loss(&counters);
    let summary_values: Vec<u64> = {
        let mut v: Vec<u64> =
            counters.iter().filter(|(k, _)| !k.starts_with("agent_") && !changed_by_shutdown(k)).map(|(_, v)| *v).collect();
        v.sort();
        v
    };
    let metric_values: Vec<u64> = {
        let mut v: Vec<u64> = summary_series(&after).iter().filter(|(k, _)| !changed_by_shutdown(k)).map(|(_, v)| *v as u64).collect();
        v.sort();
        v
    };
    assert_eq!(metric_values, summary_values, "every summary counter, and nothing else, with the same value");
    // Before shutdown the interface was attached with no detach; the summary has the
    // detach shutdown did.
    let iface = &net.server_if;
    assert_eq!(after[&format!("capture_interface_attached{{interface=\"{iface}\"}}")], 1.0);
    assert_eq!(after[&format!("capture_interface_detaches_total{{interface=\"{iface}\"}}")], 0.0);
    assert_eq!(after["capture_interfaces_detached_total"], 0.0);
    assert_eq!((counters[&format!("iface[{iface}].attached")], counters[&format!("iface[{iface}].detaches")], counters["interfaces_detached"]), (0, 1, 1));
    for (key, series) in [
        ("kernel_segments_seen", "capture_kernel_segments_seen_total"),
        ("kernel_bytes_seen", "capture_kernel_seen_bytes_total"),
        ("kernel_ring_full_events", "capture_kernel_dropped_events_total{reason=\"ring_full\"}"),
        ("segments", "capture_segments_total"),
        ("stream_bytes_delivered", "capture_stream_delivered_bytes_total"),
        ("http_requests", "capture_http_requests_total"),
        ("http_responses", "capture_http_responses_total"),
        ("http_paired", "capture_http_paired_responses_total"),
        ("output0_records_written", written.as_str()),
        ("output0_bytes_written", &format!("capture_output_written_bytes_total{{output=\"{output}\"}}")),
        ("interfaces_attached", "capture_interfaces_attached_total"),
        (&format!("iface[{}].segments_seen", net.server_if), &format!("capture_interface_segments_seen_total{{interface=\"{}\"}}", net.server_if)),
        (&format!("iface[{}].bytes_emitted", net.server_if), &format!("capture_interface_emitted_bytes_total{{interface=\"{}\"}}", net.server_if)),
    ] {
        assert_eq!(after[series] as u64, counters[key], "{series} vs summary {key}");
    }
    assert_eq!(counters["http_requests"], REQUESTS + 1);
    // The histograms saw every message handed to the output.
    assert_eq!(after["capture_http_message_size_bytes_count{type=\"request\"}"] as u64, REQUESTS + 1);
    assert_eq!(after["capture_http_message_size_bytes_count{type=\"response\"}"] as u64, REQUESTS + 1);
    assert_eq!(after["capture_output_delay_seconds_count"] as u64, 2 * (REQUESTS + 1));
    eprintln!(
        "metrics: {scrapes_during} scrapes during {} requests; after: {} series equal to the summary",
        REQUESTS + 1,
        summary_series(&after).len()
    );
}
