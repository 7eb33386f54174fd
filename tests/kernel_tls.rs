//! Kernel end-to-end: HTTPS captured as plaintext at OpenSSL (uprobes), without
//! terminating TLS. nginx from apt with a self-signed certificate (openssl CLI) in a
//! server namespace, curl -k and Python's ssl module as clients in a client namespace.
//!
//! Ground truth is what the clients themselves sent and received in plaintext
//! (`curl --trace` without its "SSL data" lines; the Python client's own files) and
//! the local port each client used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use capture_tests::*;

const PORT: u16 = 18443;
const LATE_PORT: u16 = 18444;
/// Debian's OpenSSL 3 (libssl3), which nginx, curl and Python load.
const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

/// nginx serving HTTPS in a namespace: static files, `/post` (answers after reading
/// any body) and `/dav/` (PUT uploads, read whole before the answer). Its access log
/// starts each line with the SNI the client sent.
struct HttpsNginx {
    child: Child,
    access_log: PathBuf,
}

impl HttpsNginx {
    /// `wrap`: a command prefix (e.g. `unshare --mount ...`) to start nginx in;
    /// `cert`: the name of the certificate and key pair in `dir` (`cert` = cert.pem, key.pem).
    fn start(ns: &str, port: u16, dir: &TempDir, name: &str, wrap: &str) -> HttpsNginx {
        Self::start_with(ns, port, dir, name, wrap, &dir.path("www"), "cert")
    }

    fn start_with(ns: &str, port: u16, dir: &TempDir, name: &str, wrap: &str, www: &Path, cert: &str) -> HttpsNginx {
        std::fs::create_dir_all(www.join("dav")).unwrap();
        let access_log = dir.path(&format!("{name}-access.log"));
        let conf = dir.path(&format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {pid};\nerror_log {err} warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  types {{ application/json json; text/plain txt; }}\n  log_format sni '$ssl_server_name $request';\n  access_log {log} sni;\n  client_body_temp_path {tmp};\n  client_max_body_size 100m;\n\
                   server {{\n    listen {port} ssl; listen [::]:{port} ssl;\n\
                     ssl_certificate {cert}; ssl_certificate_key {key};\n    root {www};\n\
                     location = /post {{ return 200 \"posted\\n\"; }}\n\
                     location /dav/ {{ dav_methods PUT; create_full_put_path on; }}\n  }}\n}}\n",
                pid = dir.path(&format!("{name}.pid")).display(),
                err = dir.path(&format!("{name}-error.log")).display(),
                log = access_log.display(),
                tmp = dir.path("body").display(),
                cert = dir.path(&format!("{cert}.pem")).display(),
                key = dir.path(&format!("{}.pem", if cert == "cert" { "key".to_string() } else { format!("{cert}-key") })).display(),
                www = www.display(),
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("exec {wrap} nginx -c {}", conf.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx");
        wait_tcp(ns, "127.0.0.1", port);
        HttpsNginx { child, access_log }
    }
}

impl Drop for HttpsNginx {
    fn drop(&mut self) {
        stop_gracefully(&mut self.child);
    }
}

/// A self-signed certificate made with the openssl CLI.
fn make_certificate(dir: &TempDir) {
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=capture-test -keyout {} -out {} 2>/dev/null",
        dir.path("key.pem").display(),
        dir.path("cert.pem").display()
    ));
}

/// One curl run (one connection) with its plaintext trace and local port.
struct CurlRun {
    name: &'static str,
    sent: Vec<u8>,
    received: Vec<u8>,
    local_port: u16,
}

fn curl(net: &NetPair, dir: &TempDir, name: &'static str, args: &str) -> CurlRun {
    let trace = dir.path(&format!("{name}.trace"));
    let out = sh(&format!(
        "ip netns exec {} curl -sS -k -g --http1.1 --trace {} -o /dev/null -w '%{{local_port}}\\n' {args}",
        net.client_ns,
        trace.display()
    ));
    let (sent, received) = curl_trace(&trace);
    let local_port = out.lines().last().unwrap().trim().parse().unwrap();
    CurlRun { name, sent, received, local_port }
}

/// The captured connection whose requests are exactly `sent`: its responses must be
/// exactly `received`, every request paired, every record flagged TLS and carrying
/// the right 4-tuple.
fn assert_captured(records: &[GorRecord], what: &str, sent: &[u8], received: &[u8], client: &str, server: &str) {
    let conns = by_connection(records);
    let conn = conns.values().find(|recs| concat(recs, b'1') == sent).unwrap_or_else(|| {
        panic!(
            "{what}: no captured connection carries exactly the {} plaintext bytes the client sent; captured: {:?}",
            sent.len(),
            records.iter().map(|r| (r.ty as char, r.start_line(), r.payload.len())).collect::<Vec<_>>()
        )
    });
    assert!(concat(conn, b'2') == received, "{what}: captured responses differ from the {} bytes the client received", received.len());
    let requests: Vec<&GorRecord> = conn.iter().filter(|r| r.ty == b'1').collect();
    let responses: Vec<&GorRecord> = conn.iter().filter(|r| r.ty == b'2').collect();
    assert_eq!(requests.len(), responses.len(), "{what}: every request has one response");
    let mut response_ids: Vec<&str> = responses.iter().map(|r| r.id.as_str()).collect();
    for req in &requests {
        let at = response_ids.iter().position(|id| *id == req.id).unwrap_or_else(|| panic!("{what}: request {} unpaired", req.id));
        response_ids.remove(at);
    }
    for r in conn {
        assert_eq!(r.meta.get("tls").map(String::as_str), Some("1"), "{what}: record not flagged tls=1");
        assert_eq!(r.meta["client"], client, "{what}: client address");
        assert_eq!(r.meta["server"], server, "{what}: server address");
        assert!(r.meta.get("truncated").is_none(), "{what}: record cut");
    }
}

fn write(path: &Path, data: &[u8]) -> PathBuf {
    std::fs::write(path, data).unwrap();
    path.to_path_buf()
}

#[test]
fn https_through_openssl_is_captured_byte_exact_paired_and_without_its_ciphertext() {
    let test = "https_through_openssl_is_captured_byte_exact_paired_and_without_its_ciphertext";
    if !kernel_tests_enabled(test) {
        return;
    }
    for tool in ["nginx", "openssl", "unshare"] {
        assert!(have(tool), "{test}: {tool} missing (cargo xtask test installs it)");
    }
    assert!(Path::new(LIBSSL).exists(), "{test}: {LIBSSL} missing (Debian's libssl3)");
    let net = NetPair::new();
    let dir = TempDir::new("tls");
    make_certificate(&dir);
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello over TLS\n").unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    let upload = write(&dir.path("upload.bin"), &big[..5_000_000 - 17]);
    let body = write(&dir.path("body.bin"), &(0..20_000u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());

    // Started before the agent: found by `--tls-lib auto` in /proc at start.
    let _nginx = HttpsNginx::start(&net.server_ns, PORT, &dir, "nginx", "");
    let mut agent = Agent::start(
        &net.server_ns,
        &net.server_if,
        &[PORT, LATE_PORT],
        &dir,
        &["--tls-lib", "auto", "--max-message-size", "8MB", "--no-stream-log"],
    );
    assert!(agent.log().contains("TLS: probing /proc/"), "the running nginx's libssl was found:\n{}", agent.log());
    // `--tls-scope listeners` (the default): nginx's master and worker, each probed.
    wait_for_probed_processes(&agent, PORT, 2);

    let url = format!("https://{}:{PORT}", net.server_v4);
    let url6 = format!("https://[{}]:{PORT}", net.server_v6);
    let runs = [
        curl(&net, &dir, "get", &format!("{url}/hello.txt")),
        curl(&net, &dir, "keepalive", &format!("{url}/hello.txt {url}/missing {url}/hello.txt -o /dev/null -o /dev/null")),
        curl(&net, &dir, "post", &format!("-X POST --data-binary @{} {url}/post", body.display())),
        curl(&net, &dir, "chunked", &format!("-H 'Transfer-Encoding: chunked' --data-binary @{} {url}/post", body.display())),
        curl(&net, &dir, "download", &format!("{url}/big.bin")),
        // No 100-continue: curl's trace drops the empty line that ends an interim response.
        curl(&net, &dir, "upload", &format!("-H 'Expect:' -T {} {url}/dav/upload.bin", upload.display())),
        curl(&net, &dir, "ipv6", &format!("{url6}/hello.txt")),
    ];
    // Python's ssl module (SSL_read_ex/SSL_write_ex): GET, then POST with a body, one connection.
    let requests = [
        write(&dir.path("py1.req"), format!("GET /hello.txt HTTP/1.1\r\nHost: {}\r\n\r\n", net.server_v4).as_bytes()),
        write(
            &dir.path("py2.req"),
            &[format!("POST /post HTTP/1.1\r\nHost: {}\r\nContent-Length: 20000\r\n\r\n", net.server_v4).as_bytes(), &std::fs::read(&body).unwrap()].concat(),
        ),
    ];
    let (py_sent, py_recv) = (dir.path("py.sent"), dir.path("py.recv"));
    let py_port: u16 = sh(&format!(
        "ip netns exec {} python3 {} {} {PORT} {} {} {} {}",
        net.client_ns,
        peers_dir().join("tls_client.py").display(),
        net.server_v4,
        py_sent.display(),
        py_recv.display(),
        requests[0].display(),
        requests[1].display()
    ))
    .trim()
    .parse()
    .unwrap();

    // A server started after the agent, in a mount namespace of its own with its own
    // copy of libssl (another file): found by the rescan through /proc/PID/root.
    let private_lib = dir.path("libssl.so.3");
    std::fs::copy(LIBSSL, &private_lib).unwrap();
    let wrap = format!("unshare --mount --propagation private sh -c 'mount --bind {} {LIBSSL} && exec \"$0\" \"$@\"'", private_lib.display());
    let _late = HttpsNginx::start(&net.server_ns, LATE_PORT, &dir, "late", &wrap);
    wait_for_probed_processes(&agent, LATE_PORT, 2);
    assert_eq!(agent.log().matches("TLS: probing /proc/").count(), 2, "the late server's libssl copy was found:\n{}", agent.log());
    let late = curl(&net, &dir, "late", &format!("https://{}:{LATE_PORT}/hello.txt", net.server_v4));

    let stderr = agent.stop();
    let counters = summary(&stderr);
    assert_no_kernel_loss(&counters);
    let records = parse_gor(&agent.records());

    let server = format!("{}:{PORT}", net.server_v4);
    for run in &runs {
        let (client, server) = if run.name == "ipv6" {
            (format!("[{}]:{}", net.server_v6.replace("::1", "::2"), run.local_port), format!("[{}]:{PORT}", net.server_v6))
        } else {
            (format!("{}:{}", net.client_v4, run.local_port), server.clone())
        };
        assert_captured(&records, run.name, &run.sent, &run.received, &client, &server);
    }
    let sizes: HashMap<&str, usize> = runs.iter().map(|r| (r.name, r.sent.len() + r.received.len())).collect();
    assert!(sizes["download"] > 5_000_000 && sizes["upload"] > 5_000_000, "the 5 MB transfers happened: {sizes:?}");
    assert_captured(
        &records,
        "python",
        &std::fs::read(&py_sent).unwrap(),
        &std::fs::read(&py_recv).unwrap(),
        &format!("{}:{py_port}", net.client_v4),
        &server,
    );
    assert_captured(
        &records,
        "late server",
        &late.sent,
        &late.received,
        &format!("{}:{}", net.client_v4, late.local_port),
        &format!("{}:{LATE_PORT}", net.server_v4),
    );

    // The ciphertext was not recorded: every record is TLS plaintext, and the TLS
    // connections' first segments (before the kernel knew them) were recognised as TLS.
    let connections = runs.len() as u64 + 2;
    assert!(records.iter().all(|r| r.meta.get("tls").map(String::as_str) == Some("1")), "a record is not TLS plaintext");
    assert_eq!(by_connection(&records).len() as u64, connections);
    assert_eq!(counters["http_non_http_connections"], 0, "ciphertext counted as non-HTTP");
    assert_eq!(counters["tls_ciphertext_connections"], connections);
    assert!(counters["kernel_tls_ciphertext_segments"] > 0, "the classifiers dropped the ciphertext early");
    assert_eq!(counters["kernel_tls_connections"], connections);
    assert_eq!(counters["tls_connections_opened"], connections);
    assert_eq!(counters["connections_closed_tls"], connections);
    // Not kernel_tls_unmapped_calls: other programs on the host using the probed
    // library (memory BIOs, e.g. asyncio) are counted there too.
    for key in [
        "kernel_tls_ring_full_events",
        "kernel_tls_copy_errors",
        "kernel_tls_truncated_calls",
        "kernel_tls_calls_unmatched",
        "tls_stream_gaps",
        "http_lost_to_gap",
        "http_parse_errors_invalid_head",
        "tls_library_errors",
    ] {
        assert_eq!(counters[key], 0, "{key}: {counters:?}");
    }
    // The clients (curl, Python) map the same libssl but listen on no watched port:
    // not probed, so none of their calls reached the probes.
    assert_eq!(counters["kernel_tls_client_side_calls"], 0, "a client process was probed");
    assert_eq!(counters["tls_processes"], 4, "both nginx masters and workers, nothing else");
    assert_eq!(counters["tls_process_errors"], 0);
    assert_eq!(counters["http_requests"], 12);
    assert_eq!(counters["http_paired"], 12);
    assert!(counters["tls_libraries"] >= 2, "the host's libssl and the late server's copy");
}

/// Waits (20 s at most) until the agent's log shows `n` processes listening on `port`
/// probed: a server's traffic is captured only from then on.
fn wait_for_probed_processes(agent: &Agent, port: u16, n: usize) {
    let line = format!("(listens on port {port})");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agent.log().matches(&line).count() < n {
        assert!(std::time::Instant::now() < deadline, "{n} processes listening on {port} were never probed:\n{}", agent.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `--tls-scope all` probes every process mapping the library: the server's HTTPS is
/// captured byte-exact as with the default scope, and the client's own calls now reach
/// the probes too (counted client-side and skipped); no process is probed one by one.
#[test]
fn tls_scope_all_probes_clients_too_and_still_captures_the_server() {
    let test = "tls_scope_all_probes_clients_too_and_still_captures_the_server";
    if !kernel_tests_enabled(test) {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("tls_scope_all");
    make_certificate(&dir);
    std::fs::create_dir_all(dir.path("www")).unwrap();
    std::fs::write(dir.path("www").join("hello.txt"), "hello to every process\n").unwrap();
    let _nginx = HttpsNginx::start(&net.server_ns, PORT, &dir, "nginx", "");
    let mut agent =
        Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--tls-lib", LIBSSL, "--tls-scope", "all", "--no-stream-log"]);
    let run = curl(&net, &dir, "get", &format!("https://{}:{PORT}/hello.txt", net.server_v4));
    let counters = summary(&agent.stop());
    assert_no_kernel_loss(&counters);
    let records = parse_gor(&agent.records());
    let (client, server) = (format!("{}:{}", net.client_v4, run.local_port), format!("{}:{PORT}", net.server_v4));
    assert_captured(&records, "scope all", &run.sent, &run.received, &client, &server);
    assert!(counters["kernel_tls_client_side_calls"] > 0, "curl's own calls reached the probes: {counters:?}");
    assert_eq!(counters["tls_processes"], 0, "probes per file, not per process");
    assert!(!agent.log().contains("TLS: probing process"), "{}", agent.log());
}

/// `/etc/netns/<ns>/hosts`, which `ip netns exec` puts over /etc/hosts in that
/// namespace: a name for the candidate (so the replayer sends it as SNI). Removed on drop.
struct NetnsHosts(PathBuf);

impl NetnsHosts {
    fn new(ns: &str, line: &str) -> NetnsHosts {
        let dir = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{line}\n")).unwrap();
        NetnsHosts(dir)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `capture replay` in `ns`; returns (exit code, output) and the JSON report.
fn replay(ns: &str, dir: &TempDir, name: &str, args: &[&str]) -> (i32, String, serde_json::Value) {
    let json = dir.path(&format!("{name}.json"));
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(capture_bin())
        .arg("replay")
        .args(args)
        .args(["--compare", "--report-json", json.to_str().unwrap()])
        .output()
        .expect("running capture replay");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("replay {name} {args:?}:\n{text}");
    let report = std::fs::read_to_string(&json).map(|t| serde_json::from_str(&t).unwrap()).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), text, report)
}

/// Real difference counts by field key.
fn real_differences(report: &serde_json::Value) -> Vec<(String, u64)> {
    report["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["real"].as_u64().unwrap() > 0)
        .map(|f| (f["key"].as_str().unwrap().to_string(), f["real"].as_u64().unwrap()))
        .collect()
}

/// Captured HTTPS production traffic replayed to an `https://` candidate: with
/// `--insecure` (self-signed) and with `--ca-file` (a CA-signed candidate, checked, SNI
/// from the target's name), `--compare` finds exactly the known difference; without
/// either, the candidate's certificate is refused and nothing is compared.
/// Summary key -> `/metrics` series of every TLS counter, and whether other processes
/// on this host can move it (the probes sit on the host's libssl file, so any program's
/// TLS calls count as calls, unwatched, unmapped or unmatched).
const TLS_SERIES: &[(&str, &str, bool)] = &[
    ("kernel_tls_calls", "capture_kernel_tls_calls_total", true),
    ("kernel_tls_bytes", "capture_kernel_tls_bytes_total", true),
    ("kernel_tls_events_emitted", "capture_kernel_tls_events_emitted_total", false),
    ("kernel_tls_bytes_emitted", "capture_kernel_tls_emitted_bytes_total", false),
    ("kernel_tls_ring_full_events", "capture_kernel_tls_dropped_events_total{reason=\"ring_full\"}", false),
    ("kernel_tls_copy_errors", "capture_kernel_tls_dropped_events_total{reason=\"copy_error\"}", false),
    ("kernel_tls_ring_full_bytes", "capture_kernel_tls_dropped_bytes_total{reason=\"ring_full\"}", false),
    ("kernel_tls_copy_error_bytes", "capture_kernel_tls_dropped_bytes_total{reason=\"copy_error\"}", false),
    ("kernel_tls_truncated_bytes", "capture_kernel_tls_dropped_bytes_total{reason=\"truncated\"}", false),
    ("kernel_tls_truncated_calls", "capture_kernel_tls_truncated_calls_total", false),
    ("kernel_tls_unmapped_calls", "capture_kernel_tls_unmapped_calls_total", true),
    ("kernel_tls_unmapped_bytes", "capture_kernel_tls_unmapped_bytes_total", true),
    ("kernel_tls_unwatched_calls", "capture_kernel_tls_unwatched_calls_total", true),
    ("kernel_tls_client_side_calls", "capture_kernel_tls_client_side_calls_total", true),
    ("kernel_tls_connections", "capture_kernel_tls_connections_total", false),
    ("kernel_tls_connections_closed", "capture_kernel_tls_connections_closed_total", false),
    ("kernel_tls_ciphertext_segments", "capture_kernel_tls_ciphertext_segments_total", false),
    ("kernel_tls_ciphertext_bytes", "capture_kernel_tls_ciphertext_bytes_total", false),
    ("kernel_tls_calls_unmatched", "capture_kernel_tls_unmatched_calls_total", true),
    ("tls_libraries", "capture_tls_libraries", false),
    ("tls_library_errors", "capture_tls_library_errors_total", false),
    ("tls_processes", "capture_tls_processes", false),
    ("tls_process_errors", "capture_tls_process_errors_total", false),
    ("tls_ciphertext_connections", "capture_tls_ciphertext_connections_total", false),
    ("tls_ciphertext_bytes", "capture_tls_ciphertext_bytes_total", false),
    ("tls_ciphertext_segments_dropped", "capture_tls_ciphertext_dropped_segments_total", false),
    ("tls_segments", "capture_tls_segments_total", false),
    ("tls_connections_opened", "capture_tls_connections_opened_total", false),
    ("tls_connections_joined_midstream", "capture_tls_connections_joined_midstream_total", false),
    ("tls_connections_closed_fin", "capture_tls_connections_closed_total{reason=\"fin\"}", false),
    ("tls_connections_closed_reset", "capture_tls_connections_closed_total{reason=\"reset\"}", false),
    ("tls_connections_closed_idle", "capture_tls_connections_closed_total{reason=\"idle\"}", false),
    ("tls_connections_closed_reused", "capture_tls_connections_closed_total{reason=\"reused\"}", false),
    ("tls_connections_closed_evicted", "capture_tls_connections_closed_total{reason=\"evicted\"}", false),
    ("tls_connections_closed_shutdown", "capture_tls_connections_closed_total{reason=\"shutdown\"}", false),
    ("tls_connections_closed_tls", "capture_tls_connections_closed_total{reason=\"tls\"}", false),
    ("tls_connections_reused_without_syn", "capture_tls_connections_reused_without_syn_total", false),
    ("tls_orphan_segments", "capture_tls_orphan_segments_total", false),
    ("tls_hole_timeouts", "capture_tls_stream_hole_timeouts_total", false),
    ("tls_memory_pressure_flushes", "capture_tls_stream_memory_pressure_flushes_total", false),
    ("tls_stream_bytes_delivered", "capture_tls_stream_delivered_bytes_total", false),
    ("tls_stream_out_of_order_segments", "capture_tls_stream_out_of_order_segments_total", false),
    ("tls_stream_duplicate_bytes", "capture_tls_stream_duplicate_bytes_total", false),
    ("tls_stream_gaps", "capture_tls_stream_gaps_total", false),
    ("tls_stream_gap_bytes", "capture_tls_stream_gap_bytes_total", false),
    ("tls_stream_unknown_starts", "capture_tls_stream_unknown_starts_total", false),
    ("tls_stream_unknown_ends", "capture_tls_stream_unknown_ends_total", false),
    ("tls_stream_skips", "capture_tls_stream_skips_total", false),
    ("tls_stream_skip_bytes", "capture_tls_stream_skip_bytes_total", false),
    ("tls_stream_skipped_bytes_arrived", "capture_tls_stream_skipped_arrived_bytes_total", false),
    ("kernel_tls_sampled_out_calls", "capture_kernel_tls_sampled_out_calls_total", false),
    ("kernel_tls_sampled_out_bytes", "capture_kernel_tls_sampled_out_bytes_total", false),
];

/// The agent's `/metrics` once the TLS traffic is over: both requests framed, every
/// captured TLS connection freed, and the counters of this test's traffic the same in
/// two scrapes (the ring reader publishes the TLS counters every 250 ms).
fn tls_metrics_once_settled(ns: &str, addr: &str) -> std::collections::BTreeMap<String, f64> {
    let scrape = || parse_metrics(&http_get(Some(ns), addr, "/metrics").1);
    let ours = |m: &std::collections::BTreeMap<String, f64>| -> Vec<Option<f64>> {
        TLS_SERIES.iter().filter(|(_, _, host)| !host).map(|(_, series, _)| m.get(*series).copied()).collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut previous = scrape();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = scrape();
        let connections = now.get("capture_kernel_tls_connections_total").copied().unwrap_or(0.0);
        let settled = now.get("capture_http_requests_total") == Some(&2.0)
            && connections > 0.0
            && now.get("capture_kernel_tls_connections_closed_total") == Some(&connections)
            && ours(&now) == ours(&previous);
        if settled {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "the TLS counters never settled: {now:?}");
        previous = now;
    }
}

/// A scrape after the traffic shows every TLS summary counter under its name, with the
/// summary's value (counters other programs' TLS can move: at most the summary's).
fn tls_metrics_equal_the_summary(scraped: &std::collections::BTreeMap<String, f64>, counters: &HashMap<String, u64>) {
    let mut summary_keys: Vec<&String> = counters.keys().filter(|k| k.starts_with("kernel_tls_") || k.starts_with("tls_")).collect();
    summary_keys.sort();
    let mut listed: Vec<&str> = TLS_SERIES.iter().map(|(key, _, _)| *key).collect();
    listed.sort();
    assert_eq!(summary_keys, listed, "every TLS summary counter is checked here");
    for (key, series, host) in TLS_SERIES {
        let value = *scraped.get(*series).unwrap_or_else(|| panic!("{series} (summary {key}) missing from /metrics"));
        match host {
            false => assert_eq!(value as u64, counters[*key], "{series} vs summary {key}"),
            true => assert!(value as u64 <= counters[*key], "{series} {value} vs summary {key}={}", counters[*key]),
        }
    }
    assert!(counters["kernel_tls_connections"] >= 2 && counters["tls_libraries"] == 1, "{counters:?}");
    // The production server's master and worker; not the candidate (its port is not watched).
    assert_eq!(counters["tls_processes"], 2, "{counters:?}");
}

#[test]
fn captured_https_replays_to_an_https_candidate_and_compare_finds_the_known_difference() {
    let test = "captured_https_replays_to_an_https_candidate_and_compare_finds_the_known_difference";
    if !kernel_tests_enabled(test) {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("tls_replay");
    make_certificate(&dir);
    // A CA and a candidate certificate it signed, for the candidate's name and address.
    let d = dir.0.display();
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=capture-test-ca -keyout ca-key.pem -out ca.pem 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -subj /CN=candidate.test -keyout cand-key.pem -out cand.csr 2>/dev/null \
         && printf 'subjectAltName=DNS:candidate.test,IP:{ip}\\n' > cand.ext \
         && openssl x509 -req -in cand.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile cand.ext -out cand.pem 2>/dev/null",
        ip = net.server_v4
    ));
    let (prod_www, cand_www) = (dir.path("prod"), dir.path("cand"));
    for (www, plan) in [(&prod_www, "basic"), (&cand_www, "pro")] {
        std::fs::create_dir_all(www).unwrap();
        std::fs::write(www.join("plan.json"), format!("{{\"plan\": \"{plan}\", \"seats\": 3}}\n")).unwrap();
        std::fs::write(www.join("same.txt"), "the same on both\n").unwrap();
    }
    let (prod_port, cand_port) = (18445, 18446);
    let _prod = HttpsNginx::start_with(&net.server_ns, prod_port, &dir, "prod", "", &prod_www, "cert");
    let cand = HttpsNginx::start_with(&net.server_ns, cand_port, &dir, "cand", "", &cand_www, "cand");
    let mut agent =
        Agent::start(&net.server_ns, &net.server_if, &[prod_port], &dir, &["--tls-lib", LIBSSL, "--no-stream-log", "--metrics", "127.0.0.1:0"]);
    let url = format!("https://{}:{prod_port}", net.server_v4);
    curl(&net, &dir, "plan", &format!("-H 'Accept: application/json' {url}/plan.json"));
    curl(&net, &dir, "same", &format!("{url}/same.txt"));
    let scraped = tls_metrics_once_settled(&net.server_ns, &metrics_addr(&agent.log()));
    let counters = summary(&agent.stop());
    assert_eq!(counters["http_requests"], 2, "{counters:?}");
    tls_metrics_equal_the_summary(&scraped, &counters);
    let input = agent.output.to_str().unwrap().to_string();

    let _hosts = NetnsHosts::new(&net.client_ns, &format!("{} candidate.test", net.server_v4));
    let by_ip = format!("https://{}:{cand_port}", net.server_v4);
    let by_name = format!("https://candidate.test:{cand_port}");
    let ca = dir.path("ca.pem");
    let runs: [(&str, Vec<&str>); 2] = [
        ("insecure", vec!["--input", &input, "--target", &by_ip, "--insecure"]),
        ("ca-file", vec!["--input", &input, "--target", &by_name, "--ca-file", ca.to_str().unwrap()]),
    ];
    for (name, args) in &runs {
        let (code, out, report) = replay(&net.client_ns, &dir, name, args);
        assert_eq!(code, 0, "{name}: {out}");
        assert_eq!(report["totals"]["replayed"].as_u64(), Some(2), "{name}: {report}");
        assert_eq!(report["totals"]["errors"].as_u64(), Some(0), "{name}: {report}");
        assert_eq!(real_differences(&report), [("json:$.plan".to_string(), 1)], "{name}: exactly the known difference: {report}");
    }
    // The candidate saw the target's name as SNI in the --ca-file run (none for an IP).
    let log = std::fs::read_to_string(&cand.access_log).unwrap();
    let sni: Vec<&str> = log.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(sni.iter().filter(|s| **s == "candidate.test").count(), 2, "SNI per request: {log}");

    // Verification is on by default: a self-signed candidate is refused, counted, not compared.
    let (code, out, report) = replay(&net.client_ns, &dir, "verified", &["--input", &input, "--target", &by_ip]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["totals"]["errors"].as_u64(), Some(2), "both requests refused at the handshake: {report}");
    assert!(out.contains("tls:"), "the error says it is TLS: {out}");
}
