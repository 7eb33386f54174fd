//! The Kubernetes manifests in deploy/: valid against the Kubernetes schema (offline,
//! kubernetes-validate --strict) and consistent with each other and with the binary.

use std::process::Command;

use capture_tests::*;

/// Oldest Kubernetes release the manifests must be valid for.
const KUBERNETES_VERSION: &str = "1.29.0";

fn validator_available(test: &str) -> bool {
    let ok = Command::new("python3").args(["-c", "import kubernetes_validate, yaml"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        let reason = "python kubernetes-validate is missing (cargo xtask test installs it)";
        if std::env::var_os("CAPTURE_REQUIRE_KERNEL_TESTS").is_some() {
            panic!("{test}: {reason}");
        }
        eprintln!("SKIP {test}: {reason}");
    }
    ok
}

fn manifests() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// (success, output) of kubernetes-validate --strict on `files`.
fn validate(files: &[std::path::PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    if !validator_available("manifests_are_valid_kubernetes_objects") {
        return;
    }
    let files = manifests();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["agent-configmap.yaml", "agent-daemonset.yaml", "namespace.yaml", "replayer-deployment.yaml"] {
        assert!(names.iter().any(|n| n == expected), "deploy/{expected} missing: {names:?}");
    }
    let (ok, output) = validate(&files);
    eprint!("{output}");
    assert!(ok, "kubernetes-validate --strict failed:\n{output}");
    assert_eq!(output.matches(" passed ").count(), files.len(), "every manifest validated:\n{output}");

    // The validator is strict: a misspelt field in the DaemonSet is rejected.
    let dir = TempDir::new("manifests");
    let broken = dir.path("broken-daemonset.yaml");
    let text = std::fs::read_to_string(repo_root().join("deploy/agent-daemonset.yaml")).unwrap();
    std::fs::write(&broken, text.replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:")).unwrap();
    let (ok, output) = validate(&[broken]);
    assert!(!ok && output.contains("readOnlyRootFileSystem"), "a misspelt field must fail validation:\n{output}");
}

#[test]
fn daemonset_configmap_and_binary_agree() {
    if !validator_available("daemonset_configmap_and_binary_agree") {
        return;
    }
    let spec = agent_pod_spec();
    let config: std::collections::HashMap<&str, &str> = spec.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // The image the xtask builds.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(spec.image, format!("localhost/capture:{version}"));

    // Least privilege: host network, read-only root, exactly three capabilities.
    assert!(spec.host_network && spec.read_only_root && spec.no_new_privileges);
    assert_eq!(spec.caps_drop, ["ALL"]);
    let mut caps = spec.caps_add.clone();
    caps.sort();
    assert_eq!(caps, ["BPF", "NET_ADMIN", "PERFMON"]);
    assert_eq!(spec.container["securityContext"]["privileged"], false);

    // The seccomp profile allows bpf/perf_event_open under CAP_BPF/CAP_PERFMON.
    let profile: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec.seccomp_profile).unwrap()).unwrap();
    for (syscall, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        let allowed = profile["syscalls"].as_array().unwrap().iter().any(|rule| {
            rule["action"] == "SCMP_ACT_ALLOW"
                && rule["names"].as_array().unwrap().iter().any(|n| n == syscall)
                && rule["includes"]["caps"].as_array().is_some_and(|c| c.len() == 1 && c[0] == cap)
        });
        assert!(allowed, "{} must allow {syscall} under {cap}", spec.seccomp_profile.display());
    }

    // One metrics port everywhere: the agent's setting, the probes, the scrape annotation.
    let metrics = config["CAPTURE_METRICS"];
    assert!(metrics.ends_with(&format!(":{}", spec.metrics_port)), "CAPTURE_METRICS={metrics} vs containerPort {}", spec.metrics_port);
    assert_eq!(spec.annotations["prometheus.io/scrape"], "true");
    assert_eq!(spec.annotations["prometheus.io/port"], spec.metrics_port.to_string());
    assert_eq!(spec.annotations["prometheus.io/path"], "/metrics");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        assert_eq!(spec.container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(spec.container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }

    // SIGTERM leaves time for the Kafka flush and the final drain.
    let flush: f64 = config["CAPTURE_KAFKA_FLUSH_TIMEOUT"].parse().unwrap();
    assert!(spec.termination_grace_seconds as f64 >= flush + 10.0, "terminationGracePeriodSeconds {} vs flush {flush}", spec.termination_grace_seconds);

    // The node name comes from the downward API into --node-name.
    assert!(spec.args.windows(2).any(|w| w == ["--node-name", "$(NODE_NAME)"]), "{:?}", spec.args);
    let node_env = spec.container["env"].as_array().unwrap().iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME env");
    assert_eq!(node_env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    // Every CAPTURE_* setting of the ConfigMap is one the agent knows, and every flag
    // of the replayer example one the replayer knows.
    if capture_bin().exists() {
        let help = |command: &str| {
            let out = Command::new(capture_bin()).args([command, "--help"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let agent_help = help("agent");
        for key in config.keys().filter(|k| k.starts_with("CAPTURE_")) {
            assert!(agent_help.contains(&format!("[env: {key}=")), "{key} is not a `capture agent` setting");
        }
        let replayer = yaml_documents(&repo_root().join("deploy/replayer-deployment.yaml")).remove(0);
        let args = replayer["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().clone();
        replayer_metrics_port_agrees(&replayer);
        assert_eq!(args[0], "replay");
        let replay_help = help("replay");
        for flag in args.iter().filter_map(|a| a.as_str()?.strip_prefix("--")) {
            let name = flag.split('=').next().unwrap();
            assert!(replay_help.contains(&format!("--{name} ")) || replay_help.contains(&format!("--{name}\n")), "--{name} is not a `capture replay` flag");
        }
    }
}

/// The replayer example: one metrics port for `--metrics`, the container port, the
/// probes and the scrape annotation.
fn replayer_metrics_port_agrees(replayer: &serde_json::Value) {
    let pod = &replayer["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    let addr = args.iter().find_map(|a| a.strip_prefix("--metrics=")).expect("the replayer serves --metrics");
    let port = container["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").expect("a port named metrics");
    let port_number = port["containerPort"].as_u64().unwrap();
    assert!(addr.ends_with(&format!(":{port_number}")), "--metrics={addr} vs containerPort {port_number}");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], port_number.to_string());
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/path"], "/metrics");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
}
