//! Shared helpers for the end-to-end tests: network namespaces with a veth pair,
//! real peer processes, and the `capture agent` under test.
//!
//! Everything a helper creates is removed on drop, so a failing test still cleans
//! up its namespaces (which takes their veths and TC attachments with them).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether kernel tests can run here. Without root they skip with a reason, unless
/// CAPTURE_REQUIRE_KERNEL_TESTS is set (CI), where a skip is a failure.
pub fn kernel_tests_enabled(test: &str) -> bool {
    let root = unsafe { libc_geteuid() } == 0;
    let missing: Vec<&str> = ["ip", "curl", "python3"].into_iter().filter(|b| !have(b)).collect();
    let reason = if !root {
        Some("not root".to_string())
    } else if !missing.is_empty() {
        Some(format!("missing {}", missing.join(", ")))
    } else if !capture_bin().exists() {
        Some(format!("{} not built (run `cargo xtask test`)", capture_bin().display()))
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) => {
            if std::env::var_os("CAPTURE_REQUIRE_KERNEL_TESTS").is_some() {
                panic!("{test}: kernel test cannot run: {reason}");
            }
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn have(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin} >/dev/null")]).status().map(|s| s.success()).unwrap_or(false)
}

pub fn capture_bin() -> PathBuf {
    match std::env::var_os("CAPTURE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/capture"),
    }
}

pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Runs a command to completion, panicking with its output on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    if !out.status.success() {
        panic!("`{cmd}` failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("capture-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CAPTURE_KEEP_TEST_FILES").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Two network namespaces, client and server, joined by a veth pair with IPv4 and
/// IPv6 addresses. Both loopbacks are up.
pub struct NetPair {
    pub client_ns: String,
    pub server_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub server_v4: String,
    pub client_v4: String,
    pub server_v6: String,
}

impl NetPair {
    #[allow(clippy::new_without_default)] // creates kernel state; not a default value
    pub fn new() -> NetPair {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 10000, n);
        let subnet = (std::process::id() as u32 * 7 + n) % 250 + 1;
        let pair = NetPair {
            client_ns: format!("capc{id}"),
            server_ns: format!("caps{id}"),
            server_if: format!("vs{id}"),
            client_if: format!("vc{id}"),
            server_v4: format!("10.213.{subnet}.1"),
            client_v4: format!("10.213.{subnet}.2"),
            server_v6: format!("fd00:213:{subnet:x}::1"),
        };
        let p = &pair;
        sh(&format!("ip netns add {}", p.server_ns));
        sh(&format!("ip netns add {}", p.client_ns));
        sh(&format!(
            "ip link add {si} netns {sn} type veth peer name {ci} netns {cn}",
            si = p.server_if, sn = p.server_ns, ci = p.client_if, cn = p.client_ns
        ));
        for (ns, ifname, v4, v6) in [
            (&p.server_ns, &p.server_if, &p.server_v4, p.server_v6.clone()),
            (&p.client_ns, &p.client_if, &p.client_v4, p.server_v6.replace("::1", "::2")),
        ] {
            sh(&format!("ip -n {ns} link set lo up"));
            sh(&format!("ip -n {ns} addr add {v4}/24 dev {ifname}"));
            sh(&format!("ip -n {ns} addr add {v6}/64 dev {ifname} nodad"));
            sh(&format!("ip -n {ns} link set {ifname} up"));
        }
        pair
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair and every TC program on it.
        let _ = Command::new("ip").args(["netns", "del", &self.server_ns]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.client_ns]).status();
    }
}

/// A "pod" on this machine as a node has them: a namespace holding one end of a
/// veth pair (`eth0`, `addr`), the other end (`host_if`, `host_addr`) in the host
/// namespace. Deleting the namespace on drop deletes both ends.
pub struct HostPod {
    pub ns: String,
    pub host_if: String,
    pub host_addr: String,
    pub addr: String,
}

impl HostPod {
    /// Names and addresses only; [`HostPod::create`] makes it. Names have a fixed
    /// width, so `host_if*` matches this pod's interface and no other.
    pub fn plan() -> HostPod {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:04}x{:02}", std::process::id() % 10000, n % 100);
        let subnet = (std::process::id() * 7 + n) % 250 + 1;
        HostPod {
            ns: format!("capp{id}"),
            host_if: format!("cvh{id}"),
            host_addr: format!("10.215.{subnet}.1"),
            addr: format!("10.215.{subnet}.2"),
        }
    }

    #[allow(clippy::new_without_default)] // creates kernel state; not a default value
    pub fn new() -> HostPod {
        let pod = Self::plan();
        pod.create();
        pod
    }

    pub fn create(&self) {
        sh(&format!("ip netns add {}", self.ns));
        sh(&format!("ip link add {} type veth peer name eth0 netns {}", self.host_if, self.ns));
        sh(&format!("ip addr add {}/24 dev {}", self.host_addr, self.host_if));
        sh(&format!("ip link set {} up", self.host_if));
        sh(&format!("ip -n {ns} link set lo up && ip -n {ns} addr add {}/24 dev eth0 && ip -n {ns} link set eth0 up", self.addr, ns = self.ns));
    }
}

impl Drop for HostPod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).stderr(Stdio::null()).status();
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Starts `cmd` (a shell command) in namespace `ns` and waits for `ready` on its stdout.
    pub fn start_in(ns: &str, name: &str, cmd: &str, ready: &str) -> Proc {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, "sh", "-c", &format!("exec {cmd}")]);
        Self::start(command, name, ready)
    }

    /// Starts `cmd` (a shell command) in this (the host's) namespace; waits for `ready`.
    pub fn start_in_host(name: &str, cmd: &str, ready: &str) -> Proc {
        let mut command = Command::new("sh");
        command.args(["-c", &format!("exec {cmd}")]);
        Self::start(command, name, ready)
    }

    fn start(mut command: Command, name: &str, ready: &str) -> Proc {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(ready) => break,
                Some(Ok(_)) => {}
                _ => panic!("{name} exited before printing {ready:?}"),
            }
            if Instant::now() > deadline {
                panic!("{name} not ready in time");
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Proc { child, name: name.to_string() }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The recording server of `peers/record_server.py` in the server namespace.
pub struct RecordServer {
    _proc: Proc,
    pub log: PathBuf,
}

impl RecordServer {
    pub fn start(ns: &str, addr: &str, port: u16, dir: &TempDir) -> RecordServer {
        Self::start_named(ns, addr, port, dir, &format!("server-{port}"))
    }

    /// Like `start`, with its log at `dir/<name>.jsonl` (several servers in one test).
    pub fn start_named(ns: &str, addr: &str, port: u16, dir: &TempDir, name: &str) -> RecordServer {
        let log = dir.path(&format!("{name}.jsonl"));
        let script = peers_dir().join("record_server.py");
        let proc = Proc::start_in(
            ns,
            "record_server",
            &format!("python3 -u {} {addr} {port} {}", script.display(), log.display()),
            "ready",
        );
        RecordServer { _proc: proc, log }
    }

    /// Waits (up to 20 s) until the server has logged at least `n` closed connections
    /// and no new one for 0.5 s (clients such as ab may open more than they use).
    pub fn wait_connections(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut last, mut since) = (usize::MAX, Instant::now());
        while Instant::now() < deadline {
            let now = self.connections().len();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if now >= n && since.elapsed() >= Duration::from_millis(500) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Per connection (client address): (c2s bytes, c2s sha256, s2c bytes, s2c sha256).
    pub fn connections(&self) -> HashMap<String, StreamDigest> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v = |k: &str| json_field(l, k);
                (
                    v("client"),
                    StreamDigest {
                        c2s_bytes: v("c2s_bytes").parse().unwrap(),
                        c2s_sha256: v("c2s_sha256"),
                        s2c_bytes: v("s2c_bytes").parse().unwrap(),
                        s2c_sha256: v("s2c_sha256"),
                    },
                )
            })
            .collect()
    }
}

/// Byte counts and hashes of both directions of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDigest {
    pub c2s_bytes: u64,
    pub c2s_sha256: String,
    pub s2c_bytes: u64,
    pub s2c_sha256: String,
}

/// Value of `"key": value` in a flat JSON line (strings unquoted). Enough for our own logs.
fn json_field(line: &str, key: &str) -> String {
    let pat = format!("\"{key}\": ");
    let start = line.find(&pat).unwrap_or_else(|| panic!("{key} missing in {line}")) + pat.len();
    let rest = &line[start..];
    if let Some(rest) = rest.strip_prefix('"') {
        rest[..rest.find('"').unwrap()].to_string()
    } else {
        rest[..rest.find([',', '}']).unwrap()].trim().to_string()
    }
}

/// `dir/stem.ext`, or `dir/stem-N.ext` for the first N that does not exist yet.
fn unused(dir: &TempDir, stem: &str, ext: &str) -> PathBuf {
    (0..)
        .map(|n| if n == 0 { dir.path(&format!("{stem}.{ext}")) } else { dir.path(&format!("{stem}-{n}.{ext}")) })
        .find(|p| !p.exists())
        .expect("a free name")
}

/// `capture agent` running in a namespace until stopped.
pub struct Agent {
    child: Option<Child>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    pub stream_log: PathBuf,
    pub output: PathBuf,
}

impl Agent {
    /// Starts the agent in `ns` on `iface` for `ports`, writing records to a file in
    /// `dir` and stream digests to another; waits until it is attached.
    pub fn start(ns: &str, iface: &str, ports: &[u16], dir: &TempDir, extra: &[&str]) -> Agent {
        Self::start_with(ns, iface, ports, dir, extra, false, unused(dir, "records", "gor"))
    }

    /// Like `start`, but with `--output stdout`; stdout is collected into `output`.
    pub fn start_stdout(ns: &str, iface: &str, ports: &[u16], dir: &TempDir, extra: &[&str]) -> Agent {
        Self::start_with(ns, iface, ports, dir, extra, true, unused(dir, "stdout", "gor"))
    }

    /// Like `start`, writing records to the file `output`.
    pub fn start_to(ns: &str, iface: &str, ports: &[u16], dir: &TempDir, output: &Path, extra: &[&str]) -> Agent {
        Self::start_with(ns, iface, ports, dir, extra, false, output.to_path_buf())
    }

    /// Like `start`, with `RUST_LOG` set to `log` (e.g. to see one module's debug lines).
    pub fn start_logging(ns: &str, iface: &str, ports: &[u16], dir: &TempDir, extra: &[&str], log: &str) -> Agent {
        Self::start_with_env(ns, iface, ports, dir, extra, false, unused(dir, "records", "gor"), log)
    }

    fn start_with(ns: &str, iface: &str, ports: &[u16], dir: &TempDir, extra: &[&str], stdout: bool, output: PathBuf) -> Agent {
        Self::start_with_env(ns, iface, ports, dir, extra, stdout, output, "info")
    }

    #[allow(clippy::too_many_arguments)]
    fn start_with_env(
        ns: &str,
        iface: &str,
        ports: &[u16],
        dir: &TempDir,
        extra: &[&str],
        stdout: bool,
        output: PathBuf,
        log: &str,
    ) -> Agent {
        // The agent never overwrites a file: each start in a directory gets new names.
        let stream_log = unused(dir, "streams", "log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(capture_bin()).args(["agent", "--iface", iface]);
        for p in ports {
            cmd.args(["--port", &p.to_string()]);
        }
        // Stream digests hash every byte: only where a test compares streams.
        if !extra.contains(&"--no-stream-log") {
            cmd.arg("--stream-log").arg(&stream_log);
        }
        if stdout {
            cmd.args(["--output", "stdout"]);
            cmd.stdout(std::fs::File::create(&output).unwrap());
        } else {
            cmd.arg("--output").arg(format!("file://{}", output.display()));
            cmd.stdout(Stdio::null());
        }
        cmd.args(extra.iter().filter(|a| **a != "--no-stream-log"));
        cmd.stderr(Stdio::piped()).env("RUST_LOG", log);
        let mut child = cmd.spawn().expect("starting capture agent");
        let (buf, rx) = watch_stderr(child.stderr.take().unwrap(), "agent");
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent did not become ready:\n{}", buf.lock().unwrap());
        }
        Agent { child: Some(child), stderr: buf, stream_log, output }
    }

    /// Stops the agent with SIGINT and returns its stderr (with the summary line).
    pub fn stop(&mut self) -> String {
        self.stop_with(2)
    }

    /// Stops the agent with `signal` (SIGINT 2, SIGTERM 15) and returns its stderr.
    pub fn stop_with(&mut self, signal: i32) -> String {
        // Let the last segments reach the ring and the reader.
        std::thread::sleep(Duration::from_millis(300));
        let mut child = self.child.take().expect("running");
        unsafe { kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let log = self.stderr.lock().unwrap().clone();
                assert!(status.success(), "agent exited with {status}:\n{log}");
                return log;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop on signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the agent wrote on stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until the agent's stderr contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent never logged {needle:?}:\n{}", self.log());
    }

    /// The agent's process id (`ip netns exec` execs the agent).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the agent process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Stream log lines as (client, server) pairs, one per rebuilt connection.
    pub fn stream_connections(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.stream_log).unwrap_or_default();
        text.lines().map(|l| { let f = kv(l); (f["client"].clone(), f["server"].clone()) }).collect()
    }

    /// Kills the agent with SIGKILL (no cleanup of its own).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Per connection (client address): digests of the rebuilt streams.
    pub fn streams(&self) -> HashMap<String, (StreamDigest, u64)> {
        let text = std::fs::read_to_string(&self.stream_log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f = kv(l);
                let gaps: u64 = f["c2s_gap_bytes"].parse::<u64>().unwrap() + f["s2c_gap_bytes"].parse::<u64>().unwrap();
                (
                    f["client"].clone(),
                    (
                        StreamDigest {
                            c2s_bytes: f["c2s_bytes"].parse().unwrap(),
                            c2s_sha256: f["c2s_sha256"].clone(),
                            s2c_bytes: f["s2c_bytes"].parse().unwrap(),
                            s2c_sha256: f["s2c_sha256"].clone(),
                        },
                        gaps,
                    ),
                )
            })
            .collect()
    }

    pub fn records(&self) -> Vec<u8> {
        let mut data = Vec::new();
        std::fs::File::open(&self.output).unwrap().read_to_end(&mut data).unwrap();
        data
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// `key=value` pairs of a line.
pub fn kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The agent's exit summary as counters.
pub fn summary(stderr: &str) -> HashMap<String, u64> {
    let line = stderr.lines().find(|l| l.contains("capture: summary")).expect("summary line");
    kv(line).into_iter().filter_map(|(k, v)| v.parse().ok().map(|v| (k, v))).collect()
}

/// Asserts that the kernel lost nothing.
pub fn assert_no_kernel_loss(s: &HashMap<String, u64>) {
    for key in ["kernel_ring_full_events", "kernel_copy_errors", "kernel_truncated_skbs"] {
        assert_eq!(s.get(key), Some(&0), "{key} must be 0: {s:?}");
    }
    assert_eq!(s.get("decode_errors"), Some(&0));
}

/// Asserts that every connection the server recorded was rebuilt byte for byte.
/// Returns the total bytes compared.
pub fn assert_streams_match(server: &HashMap<String, StreamDigest>, agent: &HashMap<String, (StreamDigest, u64)>) -> u64 {
    assert!(!server.is_empty(), "the server recorded no connection");
    let mut total = 0;
    for (client, want) in server {
        let key = client.replace("::ffff:", "");
        let (got, gaps) = agent
            .get(&key)
            .or_else(|| agent.get(&format!("[{key}]")))
            .or_else(|| {
                // IPv6 socket addresses print as [addr]:port.
                let (ip, port) = key.rsplit_once(':').unwrap();
                agent.get(&format!("[{ip}]:{port}"))
            })
            .unwrap_or_else(|| panic!("connection {client} not captured; captured: {:?}", agent.keys().collect::<Vec<_>>()));
        assert_eq!(*gaps, 0, "{client}: gaps in rebuilt streams");
        assert_eq!(got, want, "{client}: rebuilt streams differ from what was sent");
        total += want.c2s_bytes + want.s2c_bytes;
    }
    total
}

/// A record read back from a `.gor` file, parsed independently of the agent's code.
#[derive(Clone, Debug)]
pub struct GorRecord {
    pub ty: u8,
    pub id: String,
    pub ts_ns: u64,
    pub latency_ns: i64,
    /// The header line's `key=value` tokens (`len`, `client`, `server`, flags).
    pub meta: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl GorRecord {
    /// The connection part of the id: run id (16 hex) + connection number (8 hex).
    pub fn connection(&self) -> &str {
        &self.id[..24]
    }
    pub fn connection_number(&self) -> u64 {
        u64::from_str_radix(&self.id[16..24], 16).unwrap()
    }
    pub fn start_line(&self) -> String {
        let end = self.payload.windows(2).position(|w| w == b"\r\n").unwrap_or(self.payload.len());
        String::from_utf8_lossy(&self.payload[..end]).into_owned()
    }
}

pub const SEPARATOR: &[u8] = "\n\u{1F435}\u{1F648}\u{1F649}\n".as_bytes();

/// An independent reader of the agent's `.gor` files: every record must declare its
/// payload length (`len=`) and be followed by the separator exactly there.
pub fn parse_gor(data: &[u8]) -> Vec<GorRecord> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').expect("header line");
        let header = std::str::from_utf8(&rest[..nl]).unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert!(parts.len() >= 5, "header {header:?}");
        assert_eq!(parts[1].len(), 32, "id {:?}", parts[1]);
        let meta: HashMap<String, String> =
            parts[4..].iter().map(|t| t.split_once('=').expect("key=value token")).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let len: usize = meta.get("len").unwrap_or_else(|| panic!("no len= in {header:?}")).parse().unwrap();
        let payload = rest[nl + 1..nl + 1 + len].to_vec();
        assert!(rest[nl + 1 + len..].starts_with(SEPARATOR), "record {} not followed by the separator", parts[1]);
        rest = &rest[nl + 1 + len + SEPARATOR.len()..];
        out.push(GorRecord {
            ty: parts[0].as_bytes()[0],
            id: parts[1].to_string(),
            ts_ns: parts[2].parse().unwrap(),
            latency_ns: parts[3].parse().unwrap(),
            meta,
            payload,
        });
    }
    out
}

/// Records grouped by connection number, in file order.
pub fn by_connection(records: &[GorRecord]) -> std::collections::BTreeMap<u64, Vec<GorRecord>> {
    let mut map: std::collections::BTreeMap<u64, Vec<GorRecord>> = Default::default();
    for r in records {
        map.entry(r.connection_number()).or_default().push(r.clone());
    }
    map
}

/// Concatenated payloads of one type (b'1' requests, b'2' responses).
pub fn concat(records: &[GorRecord], ty: u8) -> Vec<u8> {
    records.iter().filter(|r| r.ty == ty).flat_map(|r| r.payload.clone()).collect()
}

/// The exact bytes curl sent and received, from a `curl --trace` file (one connection).
pub fn curl_trace(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut sent, mut received) = (Vec::new(), Vec::new());
    let mut target: Option<bool> = None;
    for line in text.lines() {
        if line.starts_with("=> Send SSL data") || line.starts_with("<= Recv SSL data") {
            // HTTPS: TLS records, not the plaintext the other lines carry.
            target = None;
        } else if line.starts_with("=> Send") {
            target = Some(true);
        } else if line.starts_with("<= Recv") {
            target = Some(false);
        } else if line.starts_with("==") {
            target = None;
        } else if let Some(to_sent) = target {
            // "0000: 47 45 54 ... ascii"
            let Some((_, rest)) = line.split_once(": ") else { continue };
            let hex = &rest[..rest.len().min(16 * 3)];
            for byte in hex.split_whitespace() {
                if let Ok(b) = u8::from_str_radix(byte, 16) {
                    if byte.len() == 2 {
                        if to_sent { sent.push(b) } else { received.push(b) }
                    }
                }
            }
        }
    }
    (sent, received)
}

pub fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// nginx serving `dir/www` on a port in a namespace, with its own access log.
pub struct Nginx {
    child: Child,
    pub access_log: PathBuf,
    pub www: PathBuf,
}

impl Nginx {
    pub fn start(ns: &str, port: u16, dir: &TempDir) -> Nginx {
        Self::start_with(ns, port, dir, "")
    }

    /// Like `start`, with more directives inside the `server` block (e.g. locations).
    pub fn start_with(ns: &str, port: u16, dir: &TempDir, server_extra: &str) -> Nginx {
        let www = dir.path("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "hello from nginx\n").unwrap();
        let big: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(www.join("64k.bin"), big).unwrap();
        let access_log = dir.path("access.log");
        let conf = dir.path("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {pid};\nerror_log {err} warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log {log};\n  keepalive_requests 100000;\n  if_modified_since before;\n  client_body_temp_path {tmp};\n\
                   server {{ listen {port}; listen [::]:{port}; root {www}; location /__probe {{ return 204; }} {server_extra} }}\n}}\n",
                pid = dir.path("nginx.pid").display(),
                err = dir.path("error.log").display(),
                log = access_log.display(),
                tmp = dir.path("body").display(),
                www = www.display(),
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "nginx", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx");
        wait_tcp(ns, "127.0.0.1", port);
        Nginx { child, access_log, www }
    }

    /// Requests nginx logged, not counting readiness probes.
    pub fn requests_logged(&self) -> usize {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines().filter(|l| !l.contains("/__probe")).count()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers. SIGKILL would orphan them.
        stop_gracefully(&mut self.child);
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within 5 s.
pub fn stop_gracefully(child: &mut Child) {
    unsafe { kill(child.id() as i32, 15) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until a TCP port accepts connections inside `ns`.
pub fn wait_tcp(ns: &str, host: &str, port: u16) {
    let probe = format!("import socket; socket.create_connection(('{host}', {port}), timeout=1).close()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listening on {host}:{port} in {ns}");
}

/// A tansu Kafka broker (in-memory storage) on 127.0.0.1:port inside a namespace.
pub struct Broker {
    child: Option<Child>,
    ns: String,
    pub port: u16,
    log: PathBuf,
}

impl Broker {
    pub fn start(ns: &str, port: u16, dir: &TempDir) -> Broker {
        let mut b = Broker { child: None, ns: ns.to_string(), port, log: dir.path(&format!("tansu-{port}.log")) };
        b.restart();
        b
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) a broker on the same port; in-memory storage starts empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "tansu", "broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tansu (cargo xtask test installs it)");
        self.child = Some(child);
        wait_tcp(&self.ns, "127.0.0.1", self.port);
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker: down for clients, state kept.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("running");
        // `ip netns exec` execs tansu, so this is tansu's pid.
        unsafe { kill(child.id() as i32, if frozen { 19 } else { 18 }) };
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        sh(&format!(
            "ip netns exec {} tansu topic create {topic} --broker tcp://127.0.0.1:{} --partitions {partitions}",
            self.ns, self.port
        ));
    }

    /// Reads the topic with an independent client (Python confluent-kafka) until
    /// `count` messages arrived or `idle_s` seconds passed without one.
    /// Reads `topic` from the start until messages holding `count` records arrived, or
    /// none for `idle_s` seconds.
    pub fn consume(&self, topic: &str, count: usize, idle_s: f64, dir: &TempDir) -> Vec<KafkaMessage> {
        let out = dir.path(&format!("consumed-{}.jsonl", NEXT.fetch_add(1, Ordering::SeqCst)));
        sh(&format!(
            "ip netns exec {} python3 {} {} {topic} {count} {idle_s} {}",
            self.ns,
            peers_dir().join("kafka_consume.py").display(),
            self.bootstrap(),
            out.display()
        ));
        let text = std::fs::read_to_string(&out).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                KafkaMessage {
                    partition: v["partition"].as_i64().unwrap(),
                    offset: v["offset"].as_i64().unwrap(),
                    key: v["key"].as_str().unwrap().to_string(),
                    timestamp_ms: v["timestamp"].as_i64().unwrap(),
                    headers: v["headers"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect(),
                    value: hex_decode(v["value"].as_str().unwrap()),
                }
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Debug)]
pub struct KafkaMessage {
    pub partition: i64,
    pub offset: i64,
    pub key: String,
    pub timestamp_ms: i64,
    pub headers: HashMap<String, String>,
    pub value: Vec<u8>,
}

impl KafkaMessage {
    /// Whether the value is in the agent's batch format (whole `.gor` records).
    pub fn is_batch(&self) -> bool {
        self.headers.get("capture-format").map(String::as_str) == Some("batch-1")
    }

    /// The records of the value: a batch value split with the tests' own `.gor`
    /// reader; a records-format value is one record without the separator.
    pub fn records(&self) -> Vec<GorRecord> {
        if self.is_batch() {
            return parse_gor(&self.value);
        }
        let mut with_sep = self.value.clone();
        with_sep.extend_from_slice(SEPARATOR);
        parse_gor(&with_sep)
    }

    /// The value's one record (a records-format message, or a batch of one).
    pub fn record(&self) -> GorRecord {
        let mut records = self.records();
        assert_eq!(records.len(), 1, "one record in the message at offset {}", self.offset);
        records.pop().unwrap()
    }
}

/// Records in `messages`, in message order.
pub fn records_of(messages: &[KafkaMessage]) -> Vec<GorRecord> {
    messages.iter().flat_map(KafkaMessage::records).collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Runs curl in the client namespace with `--trace`; returns the exact bytes it sent
/// and received on its (single) connection.
pub fn curl_traced(net: &NetPair, dir: &TempDir, name: &str, args: &str) -> (Vec<u8>, Vec<u8>) {
    let trace = dir.path(&format!("{name}.trace"));
    sh(&format!("ip netns exec {} curl -sS -g --trace {} -o /dev/null {args}", net.client_ns, trace.display()));
    curl_trace(&trace)
}

/// Kernel tests that also need the tansu broker and Python's confluent-kafka.
pub fn kafka_tests_enabled(test: &str) -> bool {
    if !kernel_tests_enabled(test) {
        return false;
    }
    let client = Command::new("python3").args(["-c", "import confluent_kafka"]).status().map(|s| s.success()).unwrap_or(false);
    if have("tansu") && client {
        return true;
    }
    let reason = "missing tansu or python confluent-kafka (cargo xtask test installs both)";
    if std::env::var_os("CAPTURE_REQUIRE_KERNEL_TESTS").is_some() {
        panic!("{test}: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// `capture attachments` in `ns`: lines "iface direction program".
pub fn attachments(ns: &str, iface: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "exec", ns]).arg(capture_bin()).args(["attachments", "--iface", iface]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Netlink (clsact) filters named like our programs on `iface` in `ns`, as
/// "direction program" lines (what `tc filter show` reports; TCX links are not there).
pub fn netlink_filters(ns: &str, iface: &str) -> Vec<String> {
    let mut out = Vec::new();
    for direction in ["ingress", "egress"] {
        let text = sh(&format!("ip netns exec {ns} tc filter show dev {iface} {direction}"));
        for name in ["capture_ingress", "capture_egress"] {
            // One filter prints its name once (`... bpf ... NAME direct-action ...`).
            let n = text.lines().filter(|l| l.split_whitespace().any(|w| w == name)).count();
            out.extend(std::iter::repeat_n(format!("{direction} {name}"), n));
        }
    }
    out
}

/// The address in `capture: metrics on http://ADDR/metrics`, from an agent's stderr.
pub fn metrics_addr(log: &str) -> String {
    let line = log.lines().find(|l| l.contains("capture: metrics on http://")).unwrap_or_else(|| panic!("no metrics line in:\n{log}"));
    line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string()
}

/// GET `http://addr/path` with curl (in namespace `ns`, or this one when None):
/// (status, body).
pub fn http_get(ns: Option<&str>, addr: &str, path: &str) -> (u16, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]).arg(format!("http://{addr}{path}")).output().unwrap();
    assert!(out.status.success(), "GET {addr}{path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// Series of a Prometheus text exposition (`name{labels}` -> value), without comments.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad exposition line {l:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The YAML documents of a file as JSON values (PyYAML, which kernel-validate brings).
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "reading {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What deploy/agent-daemonset.yaml and deploy/agent-configmap.yaml give the agent
/// container; the container test runs the image with exactly these settings.
#[derive(Clone, Debug)]
pub struct AgentPodSpec {
    pub image: String,
    pub host_network: bool,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    pub caps_drop: Vec<String>,
    pub caps_add: Vec<String>,
    /// The Localhost seccomp profile, as shipped in deploy/seccomp/.
    pub seccomp_profile: PathBuf,
    pub args: Vec<String>,
    /// CAPTURE_* settings of the ConfigMap.
    pub config: Vec<(String, String)>,
    pub termination_grace_seconds: u64,
    pub metrics_port: u16,
    pub annotations: serde_json::Value,
    pub container: serde_json::Value,
}

pub fn agent_pod_spec() -> AgentPodSpec {
    let deploy = repo_root().join("deploy");
    let ds = yaml_documents(&deploy.join("agent-daemonset.yaml")).remove(0);
    let cm = yaml_documents(&deploy.join("agent-configmap.yaml")).remove(0);
    let pod = &ds["spec"]["template"]["spec"];
    let container = pod["containers"][0].clone();
    let sc = &container["securityContext"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect()).unwrap_or_default()
    };
    assert_eq!(sc["seccompProfile"]["type"], "Localhost", "the agent runs with the shipped seccomp profile");
    let profile = sc["seccompProfile"]["localhostProfile"].as_str().unwrap();
    AgentPodSpec {
        image: container["image"].as_str().unwrap().to_string(),
        host_network: pod["hostNetwork"] == true,
        read_only_root: sc["readOnlyRootFilesystem"] == true,
        no_new_privileges: sc["allowPrivilegeEscalation"] == false,
        caps_drop: strings(&sc["capabilities"]["drop"]),
        caps_add: strings(&sc["capabilities"]["add"]),
        seccomp_profile: deploy.join("seccomp").join(profile),
        args: strings(&container["args"]),
        config: cm["data"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect(),
        termination_grace_seconds: pod["terminationGracePeriodSeconds"].as_u64().unwrap(),
        metrics_port: container["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").unwrap()["containerPort"].as_u64().unwrap() as u16,
        annotations: ds["spec"]["template"]["metadata"]["annotations"].clone(),
        container,
    }
}

/// podman with the containers.conf CI machines need (xtask/containers.conf).
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", repo_root().join("xtask/containers.conf"));
    cmd
}

/// The image under test: CAPTURE_IMAGE (set by `cargo xtask test`), else the manifests'.
pub fn capture_image() -> String {
    std::env::var("CAPTURE_IMAGE").unwrap_or_else(|_| agent_pod_spec().image)
}

/// Container tests need the image built by `cargo xtask test` (or `cargo xtask image`).
pub fn container_tests_enabled(test: &str) -> bool {
    if !kernel_tests_enabled(test) {
        return false;
    }
    let image = capture_image();
    let present = have("podman") && podman().args(["image", "exists", &image]).status().map(|s| s.success()).unwrap_or(false);
    if present {
        return true;
    }
    let reason = format!("image {image} not built (run `cargo xtask image`)");
    if std::env::var_os("CAPTURE_REQUIRE_KERNEL_TESTS").is_some() {
        panic!("{test}: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// The agent image run by podman like the DaemonSet runs it; removed on drop.
pub struct Container {
    pub name: String,
    child: Option<Child>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Container {
    /// `podman run` of `image` with the pod spec's security settings (capabilities
    /// `caps`, which tests may narrow), its args with `$(NODE_NAME)` = `node`, its
    /// ConfigMap settings with `env` overriding, and `volumes` (`host:container`).
    /// Returns once the agent printed `ready` or exited.
    pub fn run(spec: &AgentPodSpec, image: &str, caps: &[String], seccomp: Option<&Path>, env: &[(&str, String)], volumes: &[String]) -> Container {
        let name = format!("capture-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let mut cmd = podman();
        cmd.args(["run", "--rm", "--name", &name, "--user", "0"]);
        if spec.host_network {
            cmd.args(["--network", "host"]);
        }
        for cap in &spec.caps_drop {
            cmd.args(["--cap-drop", cap]);
        }
        for cap in caps {
            cmd.args(["--cap-add", cap]);
        }
        match seccomp {
            Some(profile) => cmd.arg(format!("--security-opt=seccomp={}", profile.display())),
            None => &mut cmd,
        };
        if spec.no_new_privileges {
            cmd.arg("--security-opt=no-new-privileges");
        }
        if spec.read_only_root {
            // As Kubernetes' readOnlyRootFilesystem: no writable /tmp or /run either.
            cmd.args(["--read-only", "--read-only-tmpfs=false"]);
        }
        for v in volumes {
            cmd.args(["--volume", v]);
        }
        for (k, v) in &spec.config {
            if !env.iter().any(|(key, _)| key == k) {
                cmd.args(["--env", &format!("{k}={v}")]);
            }
        }
        for (k, v) in env {
            cmd.args(["--env", &format!("{k}={v}")]);
        }
        cmd.arg(image);
        cmd.args(spec.args.iter().map(|a| a.replace("$(NODE_NAME)", "test-node")));
        eprintln!("container: {cmd:?}");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting podman");
        let (buf, rx) = watch_stderr(child.stderr.take().unwrap(), "container");
        // Ready, or the reader ended because the container exited.
        let _ = rx.recv_timeout(Duration::from_secs(60));
        Container { name, child: Some(child), stderr: buf }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the container to exit by itself (a failed start): its exit code and stderr.
    pub fn wait(&mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code().unwrap_or(-1), self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("container {} did not exit:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `podman stop` (SIGTERM, as the kubelet sends): exit code and stderr.
    pub fn stop(&mut self) -> (i32, String) {
        sh(&format!("CONTAINERS_CONF={} podman stop --time 30 {}", repo_root().join("xtask/containers.conf").display(), self.name));
        self.wait()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = podman().args(["rm", "--force", "--time", "0", &self.name]).output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// TCP segments retransmitted in namespace `ns` so far (`RetransSegs`, tail loss
/// probes included): a retransmission legitimately reaches the agent twice.
pub fn tcp_retransmissions(ns: &str) -> u64 {
    let text = sh(&format!("ip netns exec {ns} cat /proc/net/snmp"));
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (names, values) = (tcp[0].split_whitespace(), tcp[1].split_whitespace());
    names.zip(values).find(|(n, _)| *n == "RetransSegs").map(|(_, v)| v.parse().unwrap()).unwrap()
}

/// A simulated Kubernetes node: a "node" namespace (where the agent runs, like a
/// DaemonSet pod with host network), a NIC-like veth towards a "client" namespace
/// (outside traffic to host-network servers), and "pods": namespaces joined to the
/// node by a veth pair whose host-side end (`vh...`) stays in the node namespace,
/// routed like a CNI does (pod /32 and /128 routes, the node as gateway).
/// Everything is removed on drop.
pub struct SimNode {
    pub node_ns: String,
    pub client_ns: String,
    /// Node side of the NIC-like veth (`nic...`).
    pub nic: String,
    pub node_v4: String,
    pub node_v6: String,
    id: String,
    subnet: u32,
    pods: Vec<String>,
}

/// One pod of a [`SimNode`].
#[derive(Clone, Debug)]
pub struct SimPod {
    pub ns: String,
    /// Host-side end of the pod's veth, in the node namespace.
    pub host_if: String,
    pub v4: String,
    pub v6: String,
}

impl SimNode {
    #[allow(clippy::new_without_default)] // creates kernel state; not a default value
    pub fn new() -> SimNode {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 10000, n);
        let subnet = (std::process::id() * 7 + n) % 250 + 1;
        let node = SimNode {
            node_ns: format!("capn{id}"),
            client_ns: format!("capk{id}"),
            nic: format!("nic{id}"),
            node_v4: format!("10.216.{subnet}.1"),
            node_v6: format!("fd00:216:{subnet:x}::1"),
            id,
            subnet,
            pods: Vec::new(),
        };
        let (nn, cn) = (&node.node_ns, &node.client_ns);
        for ns in [nn, cn] {
            sh(&format!("ip netns add {ns}"));
            sh(&format!("ip -n {ns} link set lo up"));
            // No duplicate address detection: addresses are usable at once.
            sh(&format!("ip netns exec {ns} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"));
        }
        sh(&format!("ip netns exec {nn} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"));
        sh(&format!("ip -n {nn} link add {} type veth peer name eth0 netns {cn}", node.nic));
        sh(&format!("ip -n {nn} addr add {}/24 dev {}", node.node_v4, node.nic));
        sh(&format!("ip -n {nn} addr add {}/64 dev {} nodad", node.node_v6, node.nic));
        sh(&format!("ip -n {nn} link set {} up", node.nic));
        sh(&format!("ip -n {cn} addr add 10.216.{}.2/24 dev eth0", node.subnet));
        sh(&format!("ip -n {cn} addr add {} dev eth0 nodad", node.node_v6.replace("::1", "::2/64")));
        sh(&format!("ip -n {cn} link set eth0 up"));
        node
    }

    /// Address of the client namespace on the NIC-like link.
    pub fn client_v4(&self) -> String {
        format!("10.216.{}.2", self.subnet)
    }

    /// Creates pod `i`: its namespace, its veth, addresses and routes.
    pub fn add_pod(&mut self, i: u32) -> SimPod {
        let pod = self.pod(i);
        let (nn, pn, hi) = (&self.node_ns, &pod.ns, &pod.host_if);
        sh(&format!("ip netns add {pn}"));
        self.pods.push(pn.clone());
        sh(&format!("ip -n {pn} link set lo up"));
        sh(&format!("ip netns exec {pn} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"));
        sh(&format!("ip -n {nn} link add {hi} type veth peer name eth0 netns {pn}"));
        // The node's gateway address on every pod veth (as Calico-like CNIs do).
        let (gw4, gw6) = (format!("10.217.{}.1", self.subnet), format!("fd00:217:{:x}::1", self.subnet));
        sh(&format!("ip -n {nn} addr add {gw4}/32 dev {hi}"));
        sh(&format!("ip -n {nn} addr add {gw6}/128 dev {hi} nodad"));
        sh(&format!("ip -n {nn} link set {hi} up"));
        sh(&format!("ip -n {nn} route add {}/32 dev {hi}", pod.v4));
        sh(&format!("ip -n {nn} -6 route add {}/128 dev {hi}", pod.v6));
        sh(&format!("ip -n {pn} addr add {}/32 dev eth0", pod.v4));
        sh(&format!("ip -n {pn} addr add {}/128 dev eth0 nodad", pod.v6));
        sh(&format!("ip -n {pn} link set eth0 up"));
        sh(&format!("ip -n {pn} route add {gw4}/32 dev eth0"));
        sh(&format!("ip -n {pn} route add default via {gw4} dev eth0"));
        sh(&format!("ip -n {pn} -6 route add {gw6}/128 dev eth0"));
        sh(&format!("ip -n {pn} -6 route add default via {gw6} dev eth0"));
        pod
    }

    /// Names and addresses pod `i` has (or will have).
    pub fn pod(&self, i: u32) -> SimPod {
        SimPod {
            ns: format!("capp{}x{i}", self.id),
            host_if: format!("vh{}x{i}", self.id),
            v4: format!("10.217.{}.{}", self.subnet, 10 + i),
            v6: format!("fd00:217:{:x}::{:x}", self.subnet, 0x10 + i),
        }
    }

    /// Deletes pod `i` as a CNI does: the veth pair, then the namespace.
    pub fn delete_pod(&mut self, i: u32) {
        let pod = self.pod(i);
        sh(&format!("ip -n {} link del {}", self.node_ns, pod.host_if));
        sh(&format!("ip netns del {}", pod.ns));
        self.pods.retain(|p| *p != pod.ns);
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain([&self.client_ns, &self.node_ns]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Whether the Python modules a test reads its output back with are importable. Without
/// them the test skips with a reason, unless CAPTURE_REQUIRE_KERNEL_TESTS is set (CI),
/// where a skip is a failure (`cargo xtask test` installs them).
pub fn python_modules_enabled(test: &str, modules: &[&str]) -> bool {
    let imports = modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("; ");
    let ok = Command::new("python3").args(["-c", &imports]).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    if ok && capture_bin().exists() {
        return true;
    }
    let reason = if ok { format!("{} not built", capture_bin().display()) } else { format!("python3 cannot import {}", modules.join(", ")) };
    if std::env::var_os("CAPTURE_REQUIRE_KERNEL_TESTS").is_some() {
        panic!("{test}: cannot run: {reason} (cargo xtask test installs them)");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

#[repr(C)]
struct Rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    maxrss_kib: i64,
    rest: [i64; 13],
}

extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
}

/// Waits for `child` and returns its exit code (None when killed by a signal) and its
/// peak resident set size in KiB (the kernel's `ru_maxrss` of exactly that process).
pub fn wait_with_peak_rss(child: Child) -> (Option<i32>, u64) {
    let mut status = 0;
    let mut usage = Rusage { utime: [0; 2], stime: [0; 2], maxrss_kib: 0, rest: [0; 13] };
    // SAFETY: a child of this process, valid pointers to a status word and a struct
    // rusage (x86_64/aarch64 Linux layout).
    let pid = unsafe { wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let code = (status & 0x7f == 0).then_some((status >> 8) & 0xff);
    (code, usage.maxrss_kib as u64)
}

/// A request an [`HttpServer`] received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

type Handler = dyn Fn(&Received) -> Vec<u8> + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 in this process (keep-alive, Content-Length bodies),
/// answering with what `handler` returns (whole response bytes) and logging requests.
pub struct HttpServer {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    pub count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpServer {
    /// `log`: keep every request (not for a million of them; they are counted anyway).
    pub fn start(log: bool, handler: impl Fn(&Received) -> Vec<u8> + Send + Sync + 'static) -> HttpServer {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (r, c) = (received.clone(), count.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, c, h) = (r.clone(), c.clone(), handler.clone());
                std::thread::spawn(move || serve_http(stream, log, &r, &c, &*h));
            }
        });
        HttpServer { url, received, count }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve_http(stream: std::net::TcpStream, log: bool, received: &std::sync::Mutex<Vec<Received>>, count: &std::sync::atomic::AtomicUsize, handler: &Handler) {
    use std::io::Write;
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = Received { method, target, headers, body };
        count.fetch_add(1, Ordering::SeqCst);
        let response = handler(&request);
        if log {
            received.lock().unwrap().push(request);
        }
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

/// A whole HTTP/1.1 response with a Content-Length body.
pub fn http_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", if status < 400 { "OK" } else { "Error" });
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One `.gor` record as the agent writes it (with `len=` and a server address).
pub fn gor_record(out: &mut impl std::io::Write, ty: u8, id: &str, ts_ns: u64, latency_ns: i64, payload: &[u8]) {
    writeln!(out, "{} {id} {ts_ns} {latency_ns} len={} client=10.0.0.2:40000 server=10.0.0.1:80", ty as char, payload.len()).unwrap();
    out.write_all(payload).unwrap();
    out.write_all(SEPARATOR).unwrap();
}

/// Echoes a child's stderr with `prefix`, keeps all of it, and signals its first
/// `capture: ready` line (the channel closes when the stream ends).
fn watch_stderr(
    stderr: std::process::ChildStderr,
    prefix: &'static str,
) -> (std::sync::Arc<std::sync::Mutex<String>>, std::sync::mpsc::Receiver<()>) {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            eprint!("{prefix}: {line}");
            sink.lock().unwrap().push_str(&line);
            if line.contains("capture: ready") {
                let _ = tx.send(());
            }
            line.clear();
        }
    });
    (buf, rx)
}
