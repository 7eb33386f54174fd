//! The container image, run by podman exactly as deploy/agent-daemonset.yaml runs it
//! (host network, capabilities, seccomp profile, read-only root, ConfigMap settings),
//! captures a "pod" on this machine from the host side of its veth (a network
//! namespace joined to the host by a veth pair, like a pod on a node).

use std::time::{Duration, Instant};

use capture_tests::*;

const PORT: u16 = 18090;

#[test]
fn image_captures_a_pod_with_the_daemonset_settings() {
    if !container_tests_enabled("image_captures_a_pod_with_the_daemonset_settings") {
        return;
    }
    let spec = agent_pod_spec();
    let dir = TempDir::new("container");
    // The pod appears after the agent started, as pods do under a DaemonSet.
    let pod = HostPod::plan();
    let glob = format!("{}*", pod.host_if);
    let mut agent = Container::run(
        &spec,
        &capture_image(),
        &spec.caps_add,
        Some(&spec.seccomp_profile),
        &[
            ("CAPTURE_IFACE", glob.clone()),
            ("CAPTURE_PORT", PORT.to_string()),
            ("CAPTURE_OUTPUT", "file:///out/records.gor".into()),
            ("CAPTURE_METRICS", "127.0.0.1:0".into()),
        ],
        &[format!("{}:/out", dir.0.display())],
    );
    let log = agent.log();
    assert!(log.contains("capture: ready"), "the agent did not start in the container:\n{log}");
    assert!(log.contains(&format!("interfaces matching {glob}")), "{log}");
    let metrics = metrics_addr(&log);
    assert_eq!(http_get(None, &metrics, "/readyz"), (200, "ready\n".into()));

    pod.create();
    let attached = format!("capture_interface_attached{{interface=\"{}\"}}", pod.host_if);
    let deadline = Instant::now() + Duration::from_secs(20);
    while parse_metrics(&http_get(None, &metrics, "/metrics").1).get(&attached) != Some(&1.0) {
        assert!(Instant::now() < deadline, "{} never attached:\n{}", pod.host_if, agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The server is in the pod; the client is on the host, so on the host side of
    // the veth requests leave on egress and responses arrive on ingress.
    let server = RecordServer::start(&pod.ns, &pod.addr, PORT, &dir);
    let url = format!("http://{}:{PORT}", pod.addr);
    let mut exchanges = Vec::new();
    for (name, args) in [
        ("get", format!("{url}/hello")),
        ("keepalive", format!("{url}/a {url}/bytes/3000 -o /dev/null")),
        ("post", format!("--data-binary host-to-pod-body {url}/upload")),
    ] {
        let trace = dir.path(&format!("{name}.trace"));
        sh(&format!("curl -sS -g --trace {} -o /dev/null {args}", trace.display()));
        exchanges.push((name, curl_trace(&trace)));
    }
    server.wait_connections(3);

    // Every record written before SIGTERM: the metrics say when.
    let written = "capture_output_records_total{output=\"file:///out/records.gor\",result=\"written\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let scraped = loop {
        let m = parse_metrics(&http_get(None, &metrics, "/metrics").1);
        if m.get(written) == Some(&8.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "records never all written: {:?}", m.get(written));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(scraped["capture_http_requests_total"], 4.0);
    assert!(scraped[&format!("capture_interface_segments_seen_total{{interface=\"{}\"}}", pod.host_if)] > 0.0);
    assert_eq!(http_get(None, &metrics, "/healthz").0, 200);
    assert_eq!(attachments_on_host(&pod.host_if).len(), 2, "both classifiers attached while the agent runs");

    let (code, log) = agent.stop();
    assert_eq!(code, 0, "SIGTERM (podman stop) ends the agent cleanly:\n{log}");
    let counters = summary(&log);
    assert_no_kernel_loss(&counters);
    assert_eq!((counters["http_requests"], counters["http_responses"], counters["http_paired"], counters["output0_records_written"]), (4, 4, 4, 8));
    assert!(attachments_on_host(&pod.host_if).is_empty(), "nothing left attached after SIGTERM");

    let records = parse_gor(&std::fs::read(dir.path("records.gor")).unwrap());
    let conns = by_connection(&records);
    assert_eq!(conns.len(), 3, "one captured connection per curl");
    for (name, (sent, received)) in &exchanges {
        let conn = conns.values().find(|r| concat(r, b'1') == *sent).unwrap_or_else(|| panic!("{name}: requests not captured byte-exact"));
        assert_eq!(&concat(conn, b'2'), received, "{name}: responses not captured byte-exact");
    }
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
