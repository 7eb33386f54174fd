//! Kernel end-to-end: the agent rebuilds every byte of real TCP connections.
//!
//! Ground truth is the recording server (`peers/record_server.py`), which logs the
//! length and SHA-256 of everything it received and sent per connection; real
//! clients (curl, ab) drive it. The agent's stream log must match it exactly, and
//! the kernel counters must show no loss.

use std::collections::HashMap;

use capture_tests::*;

const PORT: u16 = 18080;

/// Runs `clients` (shell commands in the client namespace) against a recording
/// server at `server_addr` while the agent captures on `iface` in the server
/// namespace. Returns (bytes compared, connections compared).
fn capture_and_compare(test: &str, use_loopback: bool, ipv6: bool, clients: &[String], connections: usize) -> (u64, usize, HashMap<String, u64>) {
    let net = NetPair::new();
    let dir = TempDir::new(test);
    let (server_addr, iface, client_ns) = match (use_loopback, ipv6) {
        (true, false) => ("127.0.0.1".to_string(), "lo".to_string(), net.server_ns.clone()),
        (true, true) => ("::1".to_string(), "lo".to_string(), net.server_ns.clone()),
        (false, false) => (net.server_v4.clone(), net.server_if.clone(), net.client_ns.clone()),
        (false, true) => (net.server_v6.clone(), net.server_if.clone(), net.client_ns.clone()),
    };
    let server = RecordServer::start(&net.server_ns, &server_addr, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &iface, &[PORT], &dir, &[]);
    if use_loopback {
        // Every loopback packet passes egress then ingress: egress alone sees them all.
        assert_eq!(attachments(&net.server_ns, "lo"), ["lo egress capture_egress"], "loopback: egress hook only");
    }
    let url_host = if ipv6 { format!("[{server_addr}]") } else { server_addr.clone() };
    for cmd in clients {
        let cmd = cmd.replace("{URL}", &format!("http://{url_host}:{PORT}")).replace("{DIR}", &dir.0.display().to_string());
        sh(&format!("ip netns exec {client_ns} sh -c '{cmd}'"));
    }
    // The server logs a connection when it closes.
    server.wait_connections(connections);
    let stderr = agent.stop();
    let counters = summary(&stderr);
    assert_no_kernel_loss(&counters);
    if use_loopback {
        assert_eq!(counters["kernel_duplicate_segments"], 0, "one hook on lo: no segment seen twice");
    }
    let server_conns = server.connections();
    let agent_conns = agent.streams();
    let bytes = assert_streams_match(&server_conns, &agent_conns);
    eprintln!(
        "{test}: {} connections, {bytes} bytes compared byte-exact; kernel: segments_seen={} events={} ring_full={}",
        server_conns.len(),
        counters["kernel_segments_seen"],
        counters["kernel_events_emitted"],
        counters["kernel_ring_full_events"],
    );
    (bytes, server_conns.len(), counters)
}

#[test]
fn veth_small_requests_are_rebuilt_exactly() {
    if !kernel_tests_enabled("veth_small_requests_are_rebuilt_exactly") {
        return;
    }
    let clients = vec![
        "curl -sf {URL}/hello -o /dev/null".to_string(),
        // Several requests on one keep-alive connection.
        "curl -sf {URL}/a {URL}/b {URL}/bytes/100 -o /dev/null -o /dev/null -o /dev/null".to_string(),
        "curl -sf -X POST --data hello-world {URL}/form -o /dev/null".to_string(),
        "curl -sf -H \"Transfer-Encoding: chunked\" --data-binary abcdefghij {URL}/chunked -o /dev/null".to_string(),
    ];
    let (bytes, conns, _) = capture_and_compare("veth_small", false, false, &clients, 4);
    assert_eq!(conns, 4);
    assert!(bytes > 500);
}

#[test]
fn veth_5mb_upload_and_download_are_rebuilt_exactly() {
    if !kernel_tests_enabled("veth_5mb_upload_and_download_are_rebuilt_exactly") {
        return;
    }
    let clients = vec![
        "head -c 5000000 /dev/urandom > {DIR}/up.bin".to_string(),
        "curl -sf --data-binary @{DIR}/up.bin {URL}/upload -o /dev/null".to_string(),
        "curl -sf {URL}/bytes/5000000 -o /dev/null".to_string(),
    ];
    let (bytes, _, _) = capture_and_compare("veth_5mb", false, false, &clients, 2);
    assert!(bytes > 10_000_000, "{bytes}");
}

#[test]
fn loopback_5mb_upload_and_download_are_rebuilt_exactly() {
    if !kernel_tests_enabled("loopback_5mb_upload_and_download_are_rebuilt_exactly") {
        return;
    }
    // lo carries GSO skbs of up to ~64-128 KiB: several chunks per skb.
    let clients = vec![
        "head -c 5000000 /dev/urandom > {DIR}/up.bin".to_string(),
        "curl -sf --data-binary @{DIR}/up.bin {URL}/upload -o /dev/null".to_string(),
        "curl -sf {URL}/bytes/5000000 -o /dev/null".to_string(),
        "curl -sf {URL}/small -o /dev/null".to_string(),
    ];
    let (bytes, conns, _) = capture_and_compare("lo_5mb", true, false, &clients, 3);
    assert_eq!(conns, 3);
    assert!(bytes > 10_000_000, "{bytes}");
}

#[test]
fn veth_200_concurrent_connections_are_rebuilt_exactly() {
    if !kernel_tests_enabled("veth_200_concurrent_connections_are_rebuilt_exactly") {
        return;
    }
    if !have("ab") {
        panic!("ab (apache2-utils) is required: cargo xtask test installs it");
    }
    // 400 requests, 200 at a time, one connection each.
    let clients = vec!["ab -q -n 400 -c 200 {URL}/bytes/2000 > /dev/null".to_string()];
    let (_, conns, counters) = capture_and_compare("veth_200", false, false, &clients, 400);
    // ab may open a few connections it never sends on; every one was compared above.
    assert!(conns >= 400, "{conns} connections");
    assert_eq!(counters["http_requests"], 400);
    assert_eq!(counters["http_paired"], 400);
}

#[test]
fn veth_ipv6_is_rebuilt_exactly() {
    if !kernel_tests_enabled("veth_ipv6_is_rebuilt_exactly") {
        return;
    }
    let clients = vec![
        "curl -sf -g {URL}/hello -o /dev/null".to_string(),
        "curl -sf -g {URL}/bytes/300000 -o /dev/null".to_string(),
        "curl -sf -g -X POST --data-binary @/etc/services {URL}/post -o /dev/null".to_string(),
    ];
    let (_, conns, _) = capture_and_compare("veth_v6", false, true, &clients, 3);
    assert_eq!(conns, 3);
}

#[test]
fn loopback_ipv6_is_rebuilt_exactly() {
    if !kernel_tests_enabled("loopback_ipv6_is_rebuilt_exactly") {
        return;
    }
    let clients = vec!["curl -sf -g {URL}/bytes/1000000 {URL}/x -o /dev/null -o /dev/null".to_string()];
    let (_, conns, _) = capture_and_compare("lo_v6", true, true, &clients, 1);
    assert_eq!(conns, 1);
}

#[test]
fn agent_detaches_on_exit_and_leaves_nothing_after_sigkill() {
    if !kernel_tests_enabled("agent_detaches_on_exit_and_leaves_nothing_after_sigkill") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("detach");
    let iface = net.server_if.clone();
    let expected = vec![format!("{iface} ingress capture_ingress"), format!("{iface} egress capture_egress")];
    let mut agent = Agent::start(&net.server_ns, &iface, &[PORT], &dir, &["--no-stream-log"]);
    assert_eq!(attachments(&net.server_ns, &iface), expected, "attached while running");
    agent.stop();
    assert!(attachments(&net.server_ns, &iface).is_empty(), "detached after SIGINT");

    let mut agent = Agent::start(&net.server_ns, &iface, &[PORT], &dir, &["--no-stream-log"]);
    agent.kill9();
    assert!(attachments(&net.server_ns, &iface).is_empty(), "nothing left after SIGKILL");
    // A new agent attaches once, and captures.
    let server = RecordServer::start(&net.server_ns, &net.server_v4, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &iface, &[PORT], &dir, &[]);
    assert_eq!(attachments(&net.server_ns, &iface), expected);
    sh(&format!("ip netns exec {} curl -sf http://{}:{PORT}/again -o /dev/null", net.client_ns, net.server_v4));
    server.wait_connections(1);
    agent.stop();
    assert_streams_match(&server.connections(), &agent.streams());
}

/// Kernels before 6.6 have no TCX: the agent attaches netlink clsact filters, which
/// outlive a killed agent. The next agent must remove them (not add a second pair),
/// capture exactly, and leave nothing after SIGINT.
#[test]
fn netlink_filters_capture_and_a_killed_agents_filters_are_removed_by_the_next() {
    if !kernel_tests_enabled("netlink_filters_capture_and_a_killed_agents_filters_are_removed_by_the_next") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("netlink");
    let iface = net.server_if.clone();
    let expected = vec!["ingress capture_ingress".to_string(), "egress capture_egress".to_string()];
    let mut agent = Agent::start(&net.server_ns, &iface, &[PORT], &dir, &["--no-stream-log", "--attach", "netlink"]);
    assert_eq!(netlink_filters(&net.server_ns, &iface), expected, "attached while running");
    assert!(attachments(&net.server_ns, &iface).is_empty(), "no TCX link in netlink mode");
    agent.kill9();
    assert_eq!(netlink_filters(&net.server_ns, &iface), expected, "netlink filters outlive a killed agent");

    let server = RecordServer::start(&net.server_ns, &net.server_v4, PORT, &dir);
    let mut agent = Agent::start(&net.server_ns, &iface, &[PORT], &dir, &["--attach", "netlink"]);
    assert_eq!(netlink_filters(&net.server_ns, &iface), expected, "stale filters replaced, not doubled");
    for i in 0..3 {
        sh(&format!("ip netns exec {} curl -sf http://{}:{PORT}/netlink/{i} -o /dev/null", net.client_ns, net.server_v4));
    }
    server.wait_connections(3);
    let log = agent.stop();
    for name in ["capture_ingress", "capture_egress"] {
        assert!(log.contains(&format!("removed a stale {name} filter from {iface}")), "stale {name} not reported:\n{log}");
    }
    assert!(netlink_filters(&net.server_ns, &iface).is_empty(), "filters removed on SIGINT");
    let bytes = assert_streams_match(&server.connections(), &agent.streams());
    assert!(bytes > 0);
    assert_no_kernel_loss(&summary(&log));
}

/// Regression, "two agents blind each other" (issue 10): in netlink mode a second
/// agent on the same interface used to remove the first one's live filters as
/// "stale"; the first then captured nothing and exited 0 without a warning. Now the
/// second agent warns and leaves them: both capture every byte, and each removes
/// only its own filters.
#[test]
fn two_agents_blind_each_other_no_more_a_live_agents_netlink_filters_are_kept() {
    if !kernel_tests_enabled("two_agents_blind_each_other_no_more_a_live_agents_netlink_filters_are_kept") {
        return;
    }
    let net = NetPair::new();
    let (dir_a, dir_b) = (TempDir::new("two_agents_a"), TempDir::new("two_agents_b"));
    let iface = net.server_if.clone();
    let server = RecordServer::start(&net.server_ns, &net.server_v4, PORT, &dir_a);
    let mut first = Agent::start(&net.server_ns, &iface, &[PORT], &dir_a, &["--attach", "netlink"]);
    let mut second = Agent::start(&net.server_ns, &iface, &[PORT], &dir_b, &["--attach", "netlink"]);
    let warning = format!("another capture agent (pid {}) is attached to {iface} and still running", first.pid());
    assert!(second.log().contains(&warning), "no warning about the live agent:\n{}", second.log());
    assert!(!second.log().contains("removed a stale"), "{}", second.log());
    let pair = ["ingress capture_ingress", "egress capture_egress"];
    let both: Vec<String> = pair.iter().flat_map(|f| [f.to_string(), f.to_string()]).collect();
    let mut filters = netlink_filters(&net.server_ns, &iface);
    filters.sort();
    let mut want = both.clone();
    want.sort();
    assert_eq!(filters, want, "both agents' filters attached");

    let curl = |path: &str| sh(&format!("ip netns exec {} curl -sf http://{}:{PORT}{path} -o /dev/null", net.client_ns, net.server_v4));
    curl("/both/1");
    curl("/bytes/100000");
    server.wait_connections(2);
    let second_log = second.stop_with(15);
    assert_eq!(netlink_filters(&net.server_ns, &iface), pair, "the second agent removed only its own filters");
    assert!(assert_streams_match(&server.connections(), &second.streams()) > 0);
    assert_eq!(summary(&second_log)["http_requests"], 2);

    // The first agent still captures after the second one left.
    curl("/first/after");
    server.wait_connections(3);
    let first_log = first.stop_with(15);
    assert!(netlink_filters(&net.server_ns, &iface).is_empty(), "nothing left");
    let bytes = assert_streams_match(&server.connections(), &first.streams());
    let counters = summary(&first_log);
    assert_eq!(counters["http_requests"], 3, "the first agent saw every request");
    assert_no_kernel_loss(&counters);
    eprintln!("two agents: both captured; the first {bytes} bytes over 3 connections byte-exact");
}
