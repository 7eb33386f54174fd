//! The container image, run by podman exactly as deploy/agent-daemonset.yaml runs it
//! (host network, capabilities, seccomp profile, read-only root, ConfigMap settings),
//! captures a "pod" on this machine: a network namespace joined to the host by a
//! veth pair, like a pod on a node.

use capture_tests::*;

const PORT: u16 = 18090;

#[test]
fn image_captures_a_pod_with_the_daemonset_settings() {
    if !container_tests_enabled("image_captures_a_pod_with_the_daemonset_settings") {
        return;
    }
    let spec = agent_pod_spec();
    let dir = TempDir::new("container");
    let pod = HostPod::new();
    // The server listens on the host side; the pod is the client, so the host end
    // of the veth sees requests arrive on ingress.
    let server = Proc::start_in_host(
        "record_server",
        &format!("python3 -u {} {} {PORT} {}", peers_dir().join("record_server.py").display(), pod.host_addr, dir.path("server.jsonl").display()),
        "ready",
    );
    let mut agent = Container::run(
        &spec,
        &capture_image(),
        &spec.caps_add,
        Some(&spec.seccomp_profile),
        &[
            ("CAPTURE_IFACE", pod.host_if.clone()),
            ("CAPTURE_PORT", PORT.to_string()),
            ("CAPTURE_OUTPUT", "file:///out/records.gor".into()),
            ("CAPTURE_METRICS", "127.0.0.1:0".into()),
        ],
        &[format!("{}:/out", dir.0.display())],
    );
    let log = agent.log();
    assert!(log.contains("capture: ready"), "the agent did not start in the container:\n{log}");
    let metrics = metrics_addr(&log);
    assert_eq!(http_get(None, &metrics, "/readyz"), (200, "ready\n".into()));

    let url = format!("http://{}:{PORT}", pod.host_addr);
    let mut exchanges = Vec::new();
    for (name, args) in [
        ("get", format!("{url}/hello")),
        ("keepalive", format!("{url}/a {url}/bytes/3000 -o /dev/null")),
        ("post", format!("--data-binary pod-to-host-body {url}/upload")),
    ] {
        let trace = dir.path(&format!("{name}.trace"));
        sh(&format!("ip netns exec {} curl -sS -g --trace {} -o /dev/null {args}", pod.ns, trace.display()));
        exchanges.push((name, curl_trace(&trace)));
    }

    // Every request is recorded before SIGTERM: the metrics say when.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, text) = http_get(None, &metrics, "/metrics");
        let m = parse_metrics(&text);
        let written = m.get("capture_output_records_total{output=\"file:///out/records.gor\",result=\"written\"}").copied().unwrap_or(0.0);
        if written >= 8.0 || std::time::Instant::now() > deadline {
            assert_eq!(m["capture_http_requests_total"], 4.0, "{text}");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(http_get(None, &metrics, "/healthz").0, 200);
    assert!(!attachments_on_host(&pod.host_if).is_empty(), "classifiers attached while the agent runs");

    let (code, log) = agent.stop();
    assert_eq!(code, 0, "SIGTERM (podman stop) ends the agent cleanly:\n{log}");
    let counters = summary(&log);
    assert_no_kernel_loss(&counters);
    assert_eq!((counters["http_requests"], counters["http_responses"], counters["output0_records_written"]), (4, 4, 8));
    assert!(attachments_on_host(&pod.host_if).is_empty(), "nothing left attached after SIGTERM");

    let records = parse_gor(&std::fs::read(dir.path("records.gor")).unwrap());
    let conns = by_connection(&records);
    assert_eq!(conns.len(), 3, "one captured connection per curl");
    for (name, (sent, received)) in &exchanges {
        let conn = conns.values().find(|r| concat(r, b'1') == *sent).unwrap_or_else(|| panic!("{name}: requests not captured byte-exact"));
        assert_eq!(&concat(conn, b'2'), received, "{name}: responses not captured byte-exact");
    }
    drop(server);
}

/// Each capability of the DaemonSet and its seccomp profile is needed: without any
/// one of them the agent cannot start (and says why).
#[test]
fn image_needs_every_capability_and_the_seccomp_profile() {
    if !container_tests_enabled("image_needs_every_capability_and_the_seccomp_profile") {
        return;
    }
    let spec = agent_pod_spec();
    let pod = HostPod::new();
    let env = [("CAPTURE_IFACE", pod.host_if.clone()), ("CAPTURE_PORT", PORT.to_string()), ("CAPTURE_OUTPUT", "stdout".into()), ("CAPTURE_METRICS", "127.0.0.1:0".into())];
    let mut refused = Vec::new();
    for missing in &spec.caps_add {
        let caps: Vec<String> = spec.caps_add.iter().filter(|c| *c != missing).cloned().collect();
        let (code, log) = Container::run(&spec, &capture_image(), &caps, Some(&spec.seccomp_profile), &env, &[]).wait();
        assert_eq!(code, 1, "without CAP_{missing} the agent must fail:\n{log}");
        let error = log.lines().find(|l| l.starts_with("capture: error")).unwrap_or_else(|| panic!("no error line:\n{log}"));
        refused.push(format!("without CAP_{missing}: {error}"));
    }
    let (code, log) = Container::run(&spec, &capture_image(), &spec.caps_add, None, &env, &[]).wait();
    assert_eq!(code, 1, "with the runtime's default seccomp profile the agent must fail:\n{log}");
    refused.push(format!("default seccomp profile: {}", log.lines().find(|l| l.starts_with("capture: error")).unwrap_or("")));
    assert!(attachments_on_host(&pod.host_if).is_empty(), "a failed start leaves nothing attached");
    for line in &refused {
        eprintln!("{line}");
    }
}

/// `capture attachments` for an interface of the host namespace.
fn attachments_on_host(iface: &str) -> Vec<String> {
    let out = std::process::Command::new(capture_bin()).args(["attachments", "--iface", iface]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}
