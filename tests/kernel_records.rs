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
/// `wrk_extra` arguments) through a tiny ring, so the agent loses many events.
/// Returns the agent's counters and the checked pairs.
fn ring_overflow(tag: &str, ring_size: &str, wrk_extra: &str) -> (HashMap<String, u64>, PairCheck) {
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
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log", "--ring-size", ring_size]);
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
    let (_, check) = ring_overflow("keepalive", "64KiB", "");
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
    let (_, check) = ring_overflow("close", "16KiB", "-H 'Connection: close'");
    assert_eq!(check.wrong, 0, "responses written paired with another request's exchange");
    assert!(check.paired > 0, "pairing works on new connections");
}

/// A tmpfs of `mb` megabytes mounted on a fresh directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &TempDir, mb: u32) -> Tmpfs {
        let path = dir.path("disk");
        std::fs::create_dir_all(&path).unwrap();
        sh(&format!("mount -t tmpfs -o size={mb}m,mode=0755 capture-test {}", path.display()));
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Scans a `.gor` file the way a reader that trusts `len` does: counts the records
/// that are whole (header, `len` payload bytes, separator) and the torn ones (then
/// resumes at the next line that starts a whole record).
fn scan_records(data: &[u8]) -> (Vec<GorRecord>, usize) {
    let (mut whole, mut torn) = (Vec::new(), 0);
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let record_len = |rest: &[u8]| -> Option<usize> {
            let nl = rest.iter().position(|&b| b == b'\n')?;
            let header = std::str::from_utf8(&rest[..nl]).ok()?;
            let len: usize = header.split(' ').find_map(|t| t.strip_prefix("len="))?.parse().ok()?;
            let end = nl + 1 + len;
            (rest.len() >= end + SEPARATOR.len() && rest[end..].starts_with(SEPARATOR)).then_some(end + SEPARATOR.len())
        };
        match record_len(rest) {
            Some(n) => {
                whole.extend(parse_gor(&rest[..n]));
                pos += n;
            }
            None => {
                torn += 1;
                let next = (1..rest.len()).find(|&i| rest[i - 1] == b'\n' && record_len(&rest[i..]).is_some());
                match next {
                    Some(i) => pos += i,
                    None => break,
                }
            }
        }
    }
    (whole, torn)
}

/// Issue 10, finding 2: on a full disk, record headers were written without their
/// payload, the next record was glued on, and the swallowed records were counted
/// written (160 torn records on a 20 MB tmpfs). Every record on disk must be whole,
/// and written + failed must add up to the records produced, across the recovery
/// when space frees up.
#[test]
fn torn_records_on_a_full_disk_never_reach_the_file() {
    if !kernel_tests_enabled("torn_records_on_a_full_disk_never_reach_the_file") {
        return;
    }
    assert!(have("ab"), "ab is required: cargo xtask test installs it");
    let net = NetPair::new();
    let dir = TempDir::new("fulldisk");
    let nginx = Nginx::start(&net.server_ns, PORT, &dir);
    let body: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(nginx.www.join("10k.bin"), body).unwrap();
    let disk = Tmpfs::mount(&dir, 20);
    let filler = disk.0.join("filler");
    sh(&format!("head -c 12000000 /dev/zero > {}", filler.display()));
    let output = disk.0.join("records.gor");
    let mut agent = Agent::start_to(&net.server_ns, &net.server_if, &[PORT], &dir, &output, &["--no-stream-log"]);
    let ab = |n: u32| sh(&format!("ip netns exec {} ab -q -k -n {n} -c 4 http://{}:{PORT}/10k.bin > /dev/null", net.client_ns, net.server_v4));
    // About 15 MB of records into 8 MB of free space.
    ab(1500);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let freed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    std::fs::remove_file(&filler).unwrap();
    // About 5 MB more, into the 12 MB just freed.
    ab(500);
    let counters = summary(&agent.stop());
    let data = std::fs::read(&output).unwrap();
    let (records, torn) = scan_records(&data);
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    let produced = c("http_requests") + c("http_responses");
    let after_recovery = records.iter().filter(|r| r.ts_ns > freed_at).count();
    eprintln!(
        "full disk: {} whole and {torn} torn records in the file ({} bytes); produced {produced}, \
         output0_records_written={} output0_records_failed={} output0_no_space={} output0_bytes_written={}; {after_recovery} records after space was freed",
        records.len(),
        data.len(),
        c("output0_records_written"),
        c("output0_records_failed"),
        c("output0_no_space"),
        c("output0_bytes_written"),
    );
    assert!(c("output0_records_failed") > 0, "the disk never filled: this test checked nothing");
    assert_eq!(torn, 0, "torn records in the file");
    assert_eq!(records.len() as u64, c("output0_records_written"), "every record counted written is whole on disk");
    assert_eq!(data.len() as u64, c("output0_bytes_written"));
    assert_eq!(c("output0_records_written") + c("output0_records_failed"), produced, "written + failed = produced");
    assert_eq!(c("output0_records_failed"), c("output0_no_space"), "failures are counted by reason");
    assert!(after_recovery > 500, "writing resumed once space was freed ({after_recovery} records)");
}

/// Runs `capture agent` (expected to refuse to start; stopped after 20 s if it does
/// not) and returns (exit code, stderr).
fn agent_refused(args: &str) -> (i32, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec timeout 20 {} agent {args}", capture_bin().display()))
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Issue 10, finding 5: an unprivileged user's symlink made the root agent overwrite a
/// root-owned 0600 file; captures were created 0644; a restart truncated the previous
/// capture; a non-root start created (or truncated) the file before failing.
#[test]
fn unsafe_output_files_are_refused_private_and_never_truncated() {
    if !kernel_tests_enabled("unsafe_output_files_are_refused_private_and_never_truncated") {
        return;
    }
    let dir = TempDir::new("files");
    // The symlink attack: a link to a root-only file where the capture goes.
    let secret = dir.path("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    sh(&format!("chmod 600 {}", secret.display()));
    let link = dir.path("capture.gor");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let (code, err) = agent_refused(&format!("--iface lo --port 18099 --output file://{}", link.display()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&link.display().to_string()) && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");

    // An existing capture is never truncated.
    let previous = dir.path("previous.gor");
    std::fs::write(&previous, "an earlier capture\n").unwrap();
    let (code, err) = agent_refused(&format!("--iface lo --port 18099 --output file://{}", previous.display()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&previous.display().to_string()) && err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read_to_string(&previous).unwrap(), "an earlier capture\n");
    // Nor an existing stream log.
    let (code, err) = agent_refused(&format!(
        "--iface lo --port 18099 --output file://{} --stream-log {}",
        dir.path("new.gor").display(),
        previous.display()
    ));
    assert!(code == 1 && err.contains("--stream-log"), "{err}");
    assert!(!dir.path("new.gor").exists(), "nothing created when the start is refused");

    // A directory others may write to, without the sticky bit, needs consent.
    let shared = dir.path("shared");
    std::fs::create_dir(&shared).unwrap();
    sh(&format!("chmod 777 {}", shared.display()));
    let (code, err) = agent_refused(&format!("--iface lo --port 18099 --output file://{}/x.gor", shared.display()));
    assert!(code == 1 && err.contains("--allow-unsafe-dir"), "{err}");

    // A start that cannot capture (not root) creates nothing, in a directory it could write to.
    let own = dir.path("nobody");
    std::fs::create_dir(&own).unwrap();
    sh(&format!("chown 65534:65534 {d} && chmod 755 {d} && chmod 755 {}", dir.0.display(), d = own.display()));
    let out = own.join("capture.gor");
    let status = std::process::Command::new("timeout")
        .args(["20", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(capture_bin())
        .args(["agent", "--iface", "lo", "--port", "18099", "--output"])
        .arg(format!("file://{}", out.display()))
        .arg("--stream-log")
        .arg(own.join("streams.log"))
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(std::fs::read_dir(&own).unwrap().next().is_none(), "a non-root start created files");
}

/// Outputs and the stream log are private by default; `--file-mode` widens them.
#[test]
fn unsafe_output_files_modes_default_private() {
    if !kernel_tests_enabled("unsafe_output_files_modes_default_private") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("modes");
    let _nginx = Nginx::start(&net.server_ns, PORT, &dir);
    for (extra, want) in [(&[][..], 0o600), (&["--file-mode", "640"][..], 0o640)] {
        let output = dir.path(&format!("out-{want:o}.gor"));
        let mut agent = Agent::start_to(&net.server_ns, &net.server_if, &[PORT], &dir, &output, extra);
        curl_traced(&net, &dir, &format!("m{want:o}"), &format!("http://{}:{PORT}/index.html", net.server_v4));
        agent.stop();
        assert_eq!(mode_of(&output), want, "{}", output.display());
        assert_eq!(mode_of(&agent.stream_log), want, "stream log");
        assert_eq!(parse_gor(&std::fs::read(&output).unwrap()).len(), 2);
    }
}

/// Issue 10, finding 4: a client POST whose body holds the `.gor` separator and a
/// fake record was one request to the agent, but read back from the file it became a
/// forged GET with the attacker's headers (and a forged production response), which
/// replay sent. Read back now, the file holds the one POST and its response, and
/// replaying it sends no forged request.
#[test]
fn forged_separator_in_a_captured_body_is_never_replayed() {
    if !kernel_tests_enabled("forged_separator_in_a_captured_body_is_never_replayed") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("forged");
    let _production = Nginx::start_with(&net.server_ns, PORT, &dir, "location /echo/ { return 200 \"$request_uri\\n\"; }");
    let sep = "\n\u{1F435}\u{1F648}\u{1F649}\n";
    let body = format!(
        "x{sep}1 00000000000000010000000100000009 1 0\nGET /forged?steal=1 HTTP/1.1\r\nHost: a\r\nX-Evil: 1\r\n\r\n\
         {sep}2 00000000000000010000000100000009 1 0\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged{sep}"
    );
    std::fs::write(dir.path("forged-body"), &body).unwrap();
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log"]);
    sh(&format!(
        "ip netns exec {} curl -sf --data-binary @{} http://{}:{PORT}/echo/upload -o /dev/null",
        net.client_ns,
        dir.path("forged-body").display(),
        net.server_v4
    ));
    agent.stop();
    let data = agent.records();
    let records = parse_gor(&data);
    let lines: Vec<String> = records.iter().map(|r| r.start_line()).collect();
    assert_eq!(lines, ["POST /echo/upload HTTP/1.1", "HTTP/1.1 200 OK"], "one POST and its response");
    assert!(records[0].payload.ends_with(body.as_bytes()), "the body is kept whole, separator and all");

    // Replayed by `capture replay` (the library reader) to a second nginx.
    let target_dir = TempDir::new("forged-target");
    let target = Nginx::start_with(&net.server_ns, PORT + 1, &target_dir, "location / { return 200 \"$request_uri\\n\"; }");
    let gor = agent.output.display().to_string();
    let url = format!("http://127.0.0.1:{}", PORT + 1);
    for extra in ["", "--allow-method POST"] {
        let out = sh(&format!("ip netns exec {} {} replay --input {gor} --target {url} {extra} 2>&1", net.server_ns, capture_bin().display()));
        assert!(out.contains("replaying 1 request(s) from 2 record(s) (0 unparseable"), "{out}");
    }
    let log = std::fs::read_to_string(&target.access_log).unwrap();
    assert!(!log.contains("forged"), "a forged request was replayed:\n{log}");
    assert_eq!(log.lines().filter(|l| l.contains("POST /echo/upload")).count(), 1, "the POST once, when allowed:\n{log}");
}

/// Sends each byte string on its own connection with the raw client (one write, read
/// until the server closes) to nginx in the server namespace, through the agent.
/// Returns the records and the agent's counters.
fn raw_connections(tag: &str, payloads: &[&[u8]]) -> (Vec<GorRecord>, HashMap<String, u64>, String) {
    let net = NetPair::new();
    let dir = TempDir::new(tag);
    let nginx = Nginx::start_with(&net.server_ns, PORT, &dir, "location / { return 200 \"$request_uri\\n\"; }");
    let mut agent = Agent::start(&net.server_ns, &net.server_if, &[PORT], &dir, &["--no-stream-log"]);
    let script = peers_dir().join("raw_client.py");
    for (i, payload) in payloads.iter().enumerate() {
        let (req, resp) = (dir.path(&format!("raw-{i}.req")), dir.path(&format!("raw-{i}.resp")));
        std::fs::write(&req, payload).unwrap();
        sh(&format!("ip netns exec {} python3 {} {} {PORT} {} {}", net.client_ns, script.display(), net.server_v4, req.display(), resp.display()));
    }
    let counters = summary(&agent.stop());
    let access_log = std::fs::read_to_string(&nginx.access_log).unwrap_or_default();
    (parse_gor(&agent.records()), counters, access_log)
}

/// Issue 10, finding 3, against nginx: Content-Length with Transfer-Encoding, two
/// Content-Lengths and an overflowing chunk size. nginx answers 400 and closes; the
/// agent wrote the smuggled requests (and paired one with the 400) as if they ran.
#[test]
fn requests_the_server_never_ran_are_not_recorded_against_nginx() {
    if !kernel_tests_enabled("requests_the_server_never_ran_are_not_recorded_against_nginx") {
        return;
    }
    let cases: [(&[u8], &str); 3] = [
        (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled1 HTTP/1.1\r\nHost: x\r\n\r\n", "content_length_and_transfer_encoding"),
        (b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhelloGET /smuggled3 HTTP/1.1\r\nHost: x\r\n\r\n", "conflicting_content_length"),
        (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\nGET /smuggled4 HTTP/1.1\r\nHost: x\r\n\r\n", "invalid_chunk_size"),
    ];
    let payloads: Vec<&[u8]> = cases.iter().map(|c| c.0).collect();
    let (records, counters, access_log) = raw_connections("smuggle", &payloads);
    assert!(!access_log.contains("smuggled"), "nginx ran a smuggled request:\n{access_log}");
    assert!(records.iter().all(|r| !String::from_utf8_lossy(&r.payload).contains("GET /smuggled") || r.meta.contains_key("ambiguous")),
        "a smuggled request was recorded as a request");
    for (conn, (payload, reason)) in by_connection(&records).values().zip(cases) {
        let lines: Vec<String> = conn.iter().map(|r| r.start_line()).collect();
        assert_eq!(conn.len(), 2, "{reason}: {lines:?}");
        let (req, resp) = (&conn[0], &conn[1]);
        assert_eq!(req.meta.get("ambiguous").map(String::as_str), Some(reason));
        assert!(payload.starts_with(&req.payload), "{reason}: the record holds what was framed of the request");
        assert_eq!((resp.start_line().as_str(), resp.id.as_str()), ("HTTP/1.1 400 Bad Request", req.id.as_str()), "{reason}: nginx's 400 answers it");
        assert!(!resp.meta.contains_key("unpaired"));
        assert_eq!(counters[&format!("http_ambiguous_{reason}")], 1);
    }
    assert_eq!(counters["http_framing_error_stops"], 3);
    assert_eq!(counters["http_requests"], 3);
}

/// Issue 10, finding 7: OpenSSH's banner (with its comment) became an incomplete
/// request plus an unpaired 400 instead of a non-HTTP connection; SMTP- and
/// Redis-style first lines likewise must not become requests.
#[test]
fn ssh_banner_and_other_protocols_are_non_http_against_nginx() {
    if !kernel_tests_enabled("ssh_banner_and_other_protocols_are_non_http_against_nginx") {
        return;
    }
    let payloads: [&[u8]; 4] = [
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
        b"SSH-2.0-OpenSSH_9.2p1\r\n",
        b"EHLO client.example.com\r\n",
        b"SET key value\r\n",
    ];
    let (records, counters, _) = raw_connections("ssh", &payloads);
    assert!(records.is_empty(), "records of other protocols: {:?}", records.iter().map(|r| r.start_line()).collect::<Vec<_>>());
    assert_eq!(counters["http_non_http_connections"], 4);
    for key in ["http_incomplete_at_close", "http_unpaired_responses", "http_requests", "http_responses"] {
        assert_eq!(counters[key], 0, "{key}");
    }
}
