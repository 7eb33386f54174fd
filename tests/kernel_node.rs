//! Kernel end-to-end: the agent as a node agent (a DaemonSet pod with host network).
//!
//! A simulated node (`SimNode`): the agent runs in the node namespace on
//! `--iface 'vh*,nic*'`; pods are namespaces whose veth's host-side end (`vh...`) is in
//! the node namespace, where requests to a pod leave on egress; one pod is created
//! after the agent is ready, one is deleted while it runs. Ground truth is the
//! recording server in each pod and on the host network (SHA-256 of every byte it
//! received and sent per connection) and the unique path of every request.

use std::collections::{BTreeMap, HashMap};

use capture_tests::*;

const PORT: u16 = 18090;

/// The agent's rebuilt streams, grouped by the server's IP address.
fn streams_by_server(agent: &Agent) -> HashMap<String, HashMap<String, (StreamDigest, u64)>> {
    let text = std::fs::read_to_string(&agent.stream_log).unwrap_or_default();
    let mut out: HashMap<String, HashMap<String, (StreamDigest, u64)>> = HashMap::new();
    for line in text.lines() {
        let f = kv(line);
        let server = f["server"].clone();
        let ip = server[..server.rfind(':').unwrap()].trim_matches(['[', ']']).to_string();
        let gaps: u64 = f["c2s_gap_bytes"].parse::<u64>().unwrap() + f["s2c_gap_bytes"].parse::<u64>().unwrap();
        let digest = StreamDigest {
            c2s_bytes: f["c2s_bytes"].parse().unwrap(),
            c2s_sha256: f["c2s_sha256"].clone(),
            s2c_bytes: f["s2c_bytes"].parse().unwrap(),
            s2c_sha256: f["s2c_sha256"].clone(),
        };
        out.entry(ip).or_default().insert(f["client"].clone(), (digest, gaps));
    }
    out
}

/// Every connection a server saw was rebuilt byte for byte exactly once, and every
/// request path was recorded once, paired with its response.
fn assert_captured_once(agent: &Agent, servers: &[(&RecordServer, Vec<String>)], paths: &[String]) -> (usize, u64) {
    // Exactly once: no connection appears twice in the stream log.
    let conns = agent.stream_connections();
    let mut seen: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for c in &conns {
        *seen.entry(c).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "connections rebuilt more than once: {twice:?}");

    let by_server = streams_by_server(agent);
    let (mut total_conns, mut total_bytes) = (0, 0);
    for (server, ips) in servers {
        let mut captured = HashMap::new();
        for ip in ips {
            captured.extend(by_server.get(ip).cloned().unwrap_or_default());
        }
        let want = server.connections();
        total_bytes += assert_streams_match(&want, &captured);
        assert_eq!(captured.len(), want.len(), "{ips:?}: connections captured vs served");
        total_conns += want.len();
    }
    assert_eq!(conns.len(), total_conns, "every rebuilt connection belongs to a served one");

    let records = parse_gor(&agent.records());
    let requests: Vec<&GorRecord> = records.iter().filter(|r| r.ty == b'1').collect();
    for path in paths {
        let n = requests.iter().filter(|r| r.start_line().split(' ').nth(1) == Some(path.as_str())).count();
        assert_eq!(n, 1, "request {path} recorded {n} times");
    }
    assert_eq!(requests.len(), paths.len(), "no other request recorded");
    for req in &requests {
        let responses = records.iter().filter(|r| r.ty == b'2' && r.id == req.id).count();
        assert_eq!(responses, 1, "{} paired with {responses} responses", req.start_line());
    }
    (total_conns, total_bytes)
}

/// Sums of the per-interface counters in the summary line, for `field`.
fn iface_sum(counters: &HashMap<String, u64>, field: &str) -> u64 {
    counters.iter().filter(|(k, _)| k.starts_with("iface[") && k.ends_with(&format!("].{field}"))).map(|(_, v)| *v).sum()
}

fn iface(counters: &HashMap<String, u64>, name: &str, field: &str) -> u64 {
    *counters.get(&format!("iface[{name}].{field}")).unwrap_or_else(|| panic!("no iface[{name}].{field} in {counters:?}"))
}

/// Curl in `ns` fetching `urls` on one connection; returns the paths it asked for.
fn curl(ns: &str, urls: &[String], extra: &str) -> Vec<String> {
    let outs = urls.iter().map(|_| "-o /dev/null").collect::<Vec<_>>().join(" ");
    sh(&format!("ip netns exec {ns} curl -sf -g {extra} {} {outs}", urls.join(" ")));
    urls.iter().map(|u| format!("/{}", u.splitn(4, '/').nth(3).unwrap())).collect()
}

/// No segment reached userspace twice: the kernel deduplicated what crossed two
/// watched hooks. Only a real TCP retransmission may repeat bytes.
fn assert_no_repeated_bytes(counters: &HashMap<String, u64>, retransmissions: u64) {
    if retransmissions == 0 {
        assert_eq!(counters["stream_duplicate_bytes"], 0, "a segment reached userspace twice");
    } else {
        eprintln!("{retransmissions} TCP retransmission(s): stream_duplicate_bytes={}", counters["stream_duplicate_bytes"]);
    }
}

fn url(host: &str, path: &str) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    format!("http://{host}:{PORT}{path}")
}

fn simulated_node(test: &str, extra: &[&str]) {
    let mut node = SimNode::new();
    let dir = TempDir::new(test);
    let (a, b) = (node.add_pod(0), node.add_pod(1));
    let srv_a = RecordServer::start_named(&a.ns, "::", PORT, &dir, "pod-a");
    let srv_b = RecordServer::start_named(&b.ns, "::", PORT, &dir, "pod-b");
    let srv_host = RecordServer::start_named(&node.node_ns, &node.node_v4, PORT, &dir, "host");
    let mut agent = Agent::start(&node.node_ns, "vh*,nic*", &[PORT], &dir, extra);

    // A pod created after the agent said ready is attached at once.
    let c = node.add_pod(2);
    agent.wait_log(&format!("attached to {} (ifindex", c.host_if));
    let srv_c = RecordServer::start_named(&c.ns, "::", PORT, &dir, "pod-c");

    std::fs::write(dir.path("up.bin"), (0..1_000_000u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let upload = format!("--data-binary @{}", dir.path("up.bin").display());
    let mut paths = Vec::new();
    let nn = node.node_ns.clone();
    // Host -> pod (requests leave the node on the pod veth's egress), IPv4 and IPv6.
    paths.extend(curl(&nn, &[url(&a.v4, "/host-to-pod/a/1"), url(&a.v4, "/bytes/200000")], ""));
    paths.extend(curl(&nn, &[url(&b.v6, "/host-to-pod-v6/b/1")], ""));
    paths.extend(curl(&nn, &[url(&c.v4, "/host-to-pod/c/late")], ""));
    // Pod -> pod on the same node: through A's veth (ingress) then B's (egress).
    paths.extend(curl(&a.ns, &[url(&b.v4, "/pod-to-pod/a-b/1"), url(&b.v4, "/bytes/2000000")], ""));
    paths.extend(curl(&a.ns, &[url(&b.v4, "/pod-to-pod/a-b/upload")], &upload));
    paths.extend(curl(&b.ns, &[url(&a.v6, "/pod-to-pod-v6/b-a/1"), url(&a.v6, "/bytes/300000")], ""));
    paths.extend(curl(&c.ns, &[url(&a.v6, "/pod-to-pod-v6/c-a/upload")], &upload));
    // Outside -> host-network server on the NIC-like interface.
    paths.extend(curl(&node.client_ns, &[url(&node.node_v4, "/nic/1"), url(&node.node_v4, "/bytes/500000")], ""));
    srv_a.wait_connections(3);
    srv_b.wait_connections(2);
    srv_c.wait_connections(1);
    srv_host.wait_connections(1);

    // A pod deleted while the agent runs: its interface is forgotten, once.
    let mut retransmissions = tcp_retransmissions(&a.ns);
    node.delete_pod(0);
    agent.wait_log(&format!("forgot {}", a.host_if));
    assert!(agent.is_running(), "the agent outlives a vanished interface");
    // And it still captures.
    paths.extend(curl(&nn, &[url(&b.v4, "/host-to-pod/b/after-delete")], ""));
    paths.extend(curl(&c.ns, &[url(&b.v6, "/pod-to-pod-v6/c-b/after-delete")], ""));
    srv_b.wait_connections(4);

    let log = agent.stop_with(15);
    let counters = summary(&log);
    retransmissions += [&b.ns, &c.ns, &node.node_ns, &node.client_ns].iter().map(|ns| tcp_retransmissions(ns)).sum::<u64>();
    assert_no_kernel_loss(&counters);
    assert_eq!(log.matches(&format!("forgot {}", a.host_if)).count(), 1, "forgotten once:\n{log}");
    assert_eq!(log.matches(&format!("attached to {} (ifindex", c.host_if)).count(), 1, "attached once");

    let servers = [
        (&srv_a, vec![a.v4.clone(), a.v6.clone()]),
        (&srv_b, vec![b.v4.clone(), b.v6.clone()]),
        (&srv_c, vec![c.v4.clone(), c.v6.clone()]),
        (&srv_host, vec![node.node_v4.clone()]),
    ];
    let (conns, bytes) = assert_captured_once(&agent, &servers, &paths);
    assert_eq!(counters["http_requests"], paths.len() as u64);
    assert_eq!(counters["http_paired"], paths.len() as u64);

    // Pod-to-pod segments crossed two watched veths: the second saw each one as a
    // duplicate in the kernel, so no byte reached userspace twice.
    assert!(counters["kernel_duplicate_segments"] > 0, "{counters:?}");
    assert!(iface(&counters, &b.host_if, "segments_duplicate") > 0);
    assert_no_repeated_bytes(&counters, retransmissions);
    // Per-interface counters add up to the agent-wide ones.
    for (field, total) in [
        ("segments_seen", "kernel_segments_seen"),
        ("bytes_seen", "kernel_bytes_seen"),
        ("segments_duplicate", "kernel_duplicate_segments"),
        ("events_emitted", "kernel_events_emitted"),
        ("bytes_emitted", "kernel_bytes_emitted"),
    ] {
        assert_eq!(iface_sum(&counters, field), counters[total], "sum of iface[*].{field} vs {total}");
    }
    assert_eq!(counters["interfaces_attached"], 4, "nic, pods a, b and c");
    assert_eq!(counters["interfaces_forgotten"], 1);
    assert_eq!(counters["interfaces_detached"], 4);
    assert_eq!(counters["interface_attach_errors"], 0);
    assert_eq!((iface(&counters, &a.host_if, "attaches"), iface(&counters, &a.host_if, "detaches")), (1, 1));
    assert!(iface(&counters, &node.nic, "events_emitted") > 0);
    assert!(iface(&counters, &c.host_if, "events_emitted") > 0);

    // SIGTERM left nothing attached: no TCX link, no netlink filter.
    assert!(attachments(&node.node_ns, "vh*,nic*").is_empty(), "TCX links left");
    for name in [&node.nic, &b.host_if, &c.host_if] {
        assert!(netlink_filters(&node.node_ns, name).is_empty(), "netlink filters left on {name}");
    }
    eprintln!(
        "{test}: {} requests on {conns} connections captured once and paired, {bytes} bytes byte-exact; \
         interfaces attached={} forgotten={}; kernel segments seen={} duplicate={} events={}",
        paths.len(),
        counters["interfaces_attached"],
        counters["interfaces_forgotten"],
        counters["kernel_segments_seen"],
        counters["kernel_duplicate_segments"],
        counters["kernel_events_emitted"],
    );
}

#[test]
fn simulated_node_every_pod_request_is_captured_once_with_tcx() {
    if !kernel_tests_enabled("simulated_node_every_pod_request_is_captured_once_with_tcx") {
        return;
    }
    simulated_node("node_tcx", &["--attach", "tcx"]);
}

/// The same node with netlink `clsact` filters (the path of kernels before 6.6):
/// filters are added and removed as pods come and go.
#[test]
fn simulated_node_every_pod_request_is_captured_once_with_netlink_filters() {
    if !kernel_tests_enabled("simulated_node_every_pod_request_is_captured_once_with_netlink_filters") {
        return;
    }
    simulated_node("node_netlink", &["--attach", "netlink"]);
}

/// IPv6 on the host-side veth path only: host -> pod (requests on the veth's egress)
/// and pod -> pod (two veths), small and large, on a glob that matched nothing at
/// start.
#[test]
fn ipv6_on_the_host_side_veth_path_is_captured_once() {
    if !kernel_tests_enabled("ipv6_on_the_host_side_veth_path_is_captured_once") {
        return;
    }
    let mut node = SimNode::new();
    let dir = TempDir::new("node_v6");
    let mut agent = Agent::start(&node.node_ns, "vh*", &[PORT], &dir, &[]);
    assert!(agent.log().contains("capture: waiting for interfaces matching vh*"), "{}", agent.log());
    let (a, b) = (node.add_pod(0), node.add_pod(1));
    agent.wait_log(&format!("attached to {} (ifindex", a.host_if));
    agent.wait_log(&format!("attached to {} (ifindex", b.host_if));
    let srv_a = RecordServer::start_named(&a.ns, &a.v6, PORT, &dir, "pod-a");
    let srv_b = RecordServer::start_named(&b.ns, &b.v6, PORT, &dir, "pod-b");
    let nn = node.node_ns.clone();
    let mut paths = Vec::new();
    paths.extend(curl(&nn, &[url(&a.v6, "/v6/host-to-a"), url(&a.v6, "/bytes/1000000")], ""));
    paths.extend(curl(&nn, &[url(&b.v6, "/v6/host-to-b")], ""));
    paths.extend(curl(&a.ns, &[url(&b.v6, "/v6/a-to-b"), url(&b.v6, "/bytes/3000000")], ""));
    paths.extend(curl(&b.ns, &[url(&a.v6, "/v6/b-to-a")], "-X POST --data-binary @/etc/services"));
    srv_a.wait_connections(2);
    srv_b.wait_connections(2);
    let log = agent.stop();
    let counters = summary(&log);
    assert_no_kernel_loss(&counters);
    let (conns, bytes) = assert_captured_once(&agent, &[(&srv_a, vec![a.v6.clone()]), (&srv_b, vec![b.v6.clone()])], &paths);
    assert_eq!(counters["http_paired"], paths.len() as u64);
    assert!(counters["kernel_duplicate_segments"] > 0);
    let retransmissions = [&a.ns, &b.ns, &node.node_ns].iter().map(|ns| tcp_retransmissions(ns)).sum();
    assert_no_repeated_bytes(&counters, retransmissions);
    eprintln!("ipv6 host-side veths: {} requests on {conns} connections captured once, {bytes} bytes byte-exact", paths.len());
}

/// Interfaces that appear and vanish quickly (pods crash-looping, a CNI retrying):
/// the agent attaches what it can, counts attaches that lost the race, never exits,
/// leaves nothing behind, and still captures a pod created after the churn.
fn churn(test: &str, extra: &[&str]) {
    let mut node = SimNode::new();
    let dir = TempDir::new(test);
    let mut agent = Agent::start(&node.node_ns, "vh*", &[PORT], &dir, extra);
    // 40 veth pairs, both ends named vh..., each deleted right after its creation.
    sh(&format!(
        "ip netns exec {} sh -c 'for i in $(seq 1 40); do ip link add vhq$i type veth peer name vhr$i && ip link del vhq$i; done'",
        node.node_ns
    ));
    let pod = node.add_pod(0);
    agent.wait_log(&format!("attached to {} (ifindex", pod.host_if));
    let server = RecordServer::start_named(&pod.ns, &pod.v4, PORT, &dir, "pod");
    let paths = curl(&node.node_ns, &[url(&pod.v4, "/after-churn")], "");
    server.wait_connections(1);
    assert!(agent.is_running(), "the agent survived the churn");
    let log = agent.stop_with(15);
    let counters = summary(&log);
    assert_captured_once(&agent, &[(&server, vec![pod.v4.clone()])], &paths);
    // Every link that was attached was detached again (forgotten or at shutdown).
    assert_eq!(counters["interfaces_attached"], counters["interfaces_detached"], "{counters:?}");
    assert!(counters["interfaces_attached"] >= 1);
    assert_eq!(counters["interfaces_attached"] - 1, counters["interfaces_forgotten"]);
    assert!(attachments(&node.node_ns, "vh*").is_empty(), "TCX links left");
    assert!(netlink_filters(&node.node_ns, &pod.host_if).is_empty(), "netlink filters left");
    eprintln!(
        "{test}: 80 links appeared and vanished: attached={} forgotten={} attach_errors={} link_events={} resyncs={}",
        counters["interfaces_attached"],
        counters["interfaces_forgotten"],
        counters["interface_attach_errors"],
        counters["link_events"],
        counters["link_resyncs"],
    );
}

#[test]
fn interfaces_that_appear_and_vanish_quickly_never_stop_the_agent_tcx() {
    if !kernel_tests_enabled("interfaces_that_appear_and_vanish_quickly_never_stop_the_agent_tcx") {
        return;
    }
    churn("churn_tcx", &["--attach", "tcx"]);
}

#[test]
fn interfaces_that_appear_and_vanish_quickly_never_stop_the_agent_netlink() {
    if !kernel_tests_enabled("interfaces_that_appear_and_vanish_quickly_never_stop_the_agent_netlink") {
        return;
    }
    churn("churn_netlink", &["--attach", "netlink"]);
}
