//! Developer and CI tasks: toolchain bootstrap, eBPF build, run, test.
//!
//! Every command installs what a fresh machine lacks before it needs it, and is
//! fast when everything is present.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod bench_replay;
mod image;

#[derive(Parser)]
#[command(name = "xtask", about = "capture build, run and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker, and (as root) the apt
    /// packages the tests use.
    Setup,
    /// Build the eBPF object (nightly + bpf-linker), installing them if missing.
    BuildEbpf,
    /// Build the eBPF object and the `capture` binary (release).
    Build,
    /// Build everything, then run `capture` with the given arguments (needs root for `agent`).
    ///
    /// Example: cargo xtask run -- agent --iface lo --port 8080
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark (root): nginx + wrk with no capture (A), with the agent (B: file, and
    /// Kafka unless --no-kafka; with --controls also file with --sample 10 and file with
    /// every exchange filtered out), with tcpdump (C) and, if the GOR environment variable names a
    /// GoReplay binary, with GoReplay (G), interleaved, per response size; then a
    /// fixed-rate run for latency. Fails if any answer was not a 200 with the whole body.
    Bench {
        /// Seconds of wrk load per run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Times each variant runs (interleaved A B C A B C ...); tables show medians.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        repeats: u64,
        /// wrk connections (the fixed-rate run chooses its own).
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..))]
        connections: u32,
        /// Response sizes in bytes, one table each (1 to 524288).
        #[arg(long, value_delimiter = ',', default_value = "100,1024,65536", value_parser = clap::value_parser!(u64).range(1..=bench::MAX_SIZE))]
        sizes: Vec<u64>,
        /// Sizes (among --sizes) of the fixed-rate latency run: wrk paced at about
        /// half of the no-capture maximum, p50/p99 with and without capture.
        /// Default: 100 if in --sizes (1024 adds about 75 s: `--latency-sizes 100,1024`).
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=bench::MAX_SIZE))]
        latency_sizes: Option<Vec<u64>>,
        /// Skip the fixed-rate latency run.
        #[arg(long)]
        no_latency: bool,
        /// Also run the traffic-control variants: the agent with --sample 10, and with
        /// a filter that drops every exchange.
        #[arg(long)]
        controls: bool,
        /// Skip the Kafka variant (no tansu needed).
        #[arg(long)]
        no_kafka: bool,
        /// Skip the HTTPS variant (nginx TLS, wrk over https, agent with --tls-lib).
        #[arg(long)]
        no_https: bool,
        /// Skip the replayer table (`capture replay --speed max` vs wrk; GoReplay too if env GOR names its binary).
        #[arg(long, conflicts_with = "replay_only")]
        no_replay: bool,
        /// Only the replayer table.
        #[arg(long)]
        replay_only: bool,
        /// Captured exchanges the replayer table replays.
        #[arg(long, default_value_t = 200_000)]
        replay_exchanges: u64,
    },
    /// Build the container image `localhost/capture:<version>` from deploy/Containerfile
    /// with podman (root; makes the Debian builder base with mmdebstrap the first time).
    Image,
    /// Set up, build, then run the whole test suite: unit tests and, as root, the
    /// container image and the kernel end-to-end tests (which fail rather than skip
    /// when CI=true), then each fuzz target for CAPTURE_FUZZ_SECONDS (default 20).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages the end-to-end tests drive as real peers.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("curl", "curl"),
    ("wrk", "wrk"),
    ("ab", "apache2-utils"),
    ("ip", "iproute2"),
    ("tcpdump", "tcpdump"),
    ("python3", "python3"),
    // Self-signed certificates for the HTTPS tests and benchmark.
    ("openssl", "openssl"),
    // Renders the replay HTML report in a test (screenshot).
    ("chromium", "chromium"),

];

/// Validates the Kubernetes manifests in deploy/ offline (Python package).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Debian packages needed to build the agent (rdkafka's TLS support links system OpenSSL).
const BUILD_PACKAGES: &[(&str, &str)] = &[("pkg-config", "pkg-config"), ("make", "make"), ("HEADER:/usr/include/openssl/ssl.h", "libssl-dev")];

/// The Kafka-protocol test broker, built from crates.io (~20 min on 2 cores, once).
const TANSU_VERSION: &str = "0.6.0";
/// The independent Kafka consumer the tests read records back with.
const CONFLUENT_KAFKA_VERSION: &str = "2.16.1";
/// The independent HAR reader the tests read `capture export --format har` back with.
const HARALYZER_VERSION: &str = "2.4.0";

/// bpf-linker release we build against nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup => {
            ensure_packages(BUILD_PACKAGES, true)?;
            ensure_apt_packages()?;
            ensure_kafka_test_tools()?;
            ensure_deploy_tools()?;
            ensure_ebpf_toolchain(&root)?;
        }
        Task::BuildEbpf => build_ebpf(&root)?,
        Task::Build => build_all(&root)?,
        Task::Image => {
            ensure_ebpf_toolchain(&root)?;
            image::build_image(&root, &image::image_tag())?;
        }
        Task::Run { args } => {
            build_all(&root)?;
            let bin = root.join("target/release/capture");
            let status = Command::new(&bin).args(&args).status().with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Bench { duration, repeats, connections, sizes, latency_sizes, no_latency, controls, no_kafka, no_https, no_replay, replay_only, replay_exchanges } => {
            let latency_sizes = match latency_sizes {
                _ if no_latency => vec![],
                Some(given) => given,
                None => [100].into_iter().filter(|s| sizes.contains(s)).collect(),
            };
            if let Some(size) = latency_sizes.iter().find(|s| !sizes.contains(s)) {
                usage_error(&format!("--latency-sizes {size}: the fixed-rate run needs that size in --sizes (its no-capture maximum), or pass --no-latency"));
            }
            // GoReplay is never downloaded: the bench runs it only when given one.
            let goreplay = std::env::var_os("GOR").filter(|g| !g.is_empty()).map(PathBuf::from);
            if let Some(gor) = &goreplay {
                if !gor.is_file() {
                    usage_error(&format!("GOR={}: no such file; GOR names a GoReplay binary to compare with", gor.display()));
                }
            }
            ensure_apt_packages()?;
            if !no_kafka {
                ensure_kafka_test_tools()?;
            }
            build_all(&root)?;
            let as_usize = |v: Vec<u64>| v.into_iter().map(|s| s as usize).collect();
            if !replay_only {
                bench::bench(
                    &root,
                    bench::BenchOptions {
                        duration_s: duration,
                        repeats: repeats as usize,
                        kafka: !no_kafka,
                        connections,
                        https: !no_https,
                        sizes: as_usize(sizes),
                        latency_sizes: as_usize(latency_sizes),
                        goreplay,
                        controls,
                    },
                )?;
            }
            if !no_replay {
                let opts = bench_replay::ReplayBenchOptions { concurrency: connections, repeats: (repeats as usize).max(1), duration_s: duration, exchanges: replay_exchanges, kafka: !no_kafka };
                bench_replay::bench_replay(&root, &opts)?;
            }
        }
        Task::Test { args } => {
            ensure_apt_packages()?;
            ensure_kafka_test_tools()?;
            ensure_deploy_tools()?;
            build_all(&root)?;
            // The container test runs the image the manifests name (root only).
            let image = image::image_tag();
            if is_root() {
                image::build_image(&root, &image)?;
            }
            // Pure tests in parallel; the end-to-end tests one at a time, since they
            // measure timing and load (pacing gaps, zero loss under wrk) on 2 cores.
            run(cargo().current_dir(&root).args(["test", "--release", "--workspace", "--exclude", "capture-tests"]).args(&args))?;
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .args(["test", "--release", "-p", "capture-tests"])
                .env("CAPTURE_BIN", root.join("target/release/capture"))
                .env("CAPTURE_IMAGE", &image)
                .env("RUST_TEST_THREADS", "1")
                .args(&args);
            if std::env::var_os("CI").is_some() {
                // In CI the kernel tests must run: a skip is a failure there.
                cmd.env("CAPTURE_REQUIRE_KERNEL_TESTS", "1");
            }
            run(&mut cmd)?;
            fuzz(&root)?;
        }
    }
    Ok(())
}

/// cargo-fuzz release used for the fuzz targets.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const FUZZ_TARGETS: &[&str] = &["http_segments", "reassembly_segments", "compare_responses", "record_reader", "record_round_trip", "controls"];

/// Runs every fuzz target for CAPTURE_FUZZ_SECONDS (default 20; 0 skips) with
/// libFuzzer; a crash, a panic or a memory blow-up fails the run.
fn fuzz(root: &Path) -> Result<()> {
    let seconds: u64 = std::env::var("CAPTURE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    if seconds == 0 {
        eprintln!("xtask: fuzzing skipped (CAPTURE_FUZZ_SECONDS=0)");
        return Ok(());
    }
    if !have("cargo-fuzz") {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        run(cargo().args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))
            .context("installing cargo-fuzz (needs crates.io)")?;
    }
    for target in FUZZ_TARGETS {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        run(cargo()
            .current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", "-O", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=1024"))
        .with_context(|| format!("fuzz target {target} failed: see fuzz/artifacts/{target}/"))?;
    }
    Ok(())
}

/// A bad flag value: says which and what is expected, exits 2 like clap does.
fn usage_error(message: &str) -> ! {
    use clap::CommandFactory;
    Cli::command().error(clap::error::ErrorKind::ValueValidation, message).exit()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

/// A cargo command clean of the variables the outer `cargo xtask` set, so a
/// nested build picks its own toolchain.
fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for var in ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} {:?} failed with {status}", cmd.get_program(), cmd.get_args().collect::<Vec<_>>());
    }
    Ok(())
}

pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn build_all(root: &Path) -> Result<()> {
    ensure_packages(BUILD_PACKAGES, true)?;
    build_ebpf(root)?;
    run(cargo().current_dir(root).args(["build", "--release", "-p", "capture-user"]))
}

fn build_ebpf(root: &Path) -> Result<()> {
    ensure_ebpf_toolchain(root)?;
    let mut cmd = cargo();
    cmd.current_dir(root.join("capture-ebpf")).args(["+nightly", "build", "--release"]);
    run(&mut cmd).context("building the eBPF object (capture-ebpf)")?;
    let object = root.join("capture-ebpf/target/bpfel-unknown-none/release/capture-ebpf");
    if !object.exists() {
        bail!("eBPF build succeeded but {} is missing", object.display());
    }
    Ok(())
}

/// nightly with rust-src (for -Z build-std=core) and a bpf-linker that links
/// against nightly's own libLLVM (a plain `cargo install bpf-linker` fails: -lLLVM).
fn ensure_ebpf_toolchain(root: &Path) -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("the nightly toolchain is missing: install it with `rustup toolchain install nightly`")?;
    let sysroot = PathBuf::from(sysroot);
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: installing rust-src for nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("installing rust-src for nightly")?;
    }
    let lib_dir = sysroot.join("lib");
    if bpf_linker_ok(&lib_dir) {
        return Ok(());
    }
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM") && n.contains(".so"))
        .with_context(|| format!("no libLLVM*.so in {}: is the nightly toolchain complete?", lib_dir.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major: String = libllvm
        .trim_start_matches("libLLVM")
        .trim_start_matches(['.', '-'])
        .trim_start_matches("so.")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version from {libllvm}");
    }
    let prefix = root.join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib_dir.join(&libllvm), &link)
        .with_context(|| format!("linking {}", link.display()))?;
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} ({libllvm})");
    let mut cmd = cargo();
    cmd.args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix);
    run(&mut cmd).context("installing bpf-linker (needs crates.io)")?;
    if !bpf_linker_ok(&lib_dir) {
        bail!("bpf-linker was installed but does not run; check `LD_LIBRARY_PATH={} bpf-linker --version`", lib_dir.display());
    }
    Ok(())
}

/// bpf-linker loads nightly's libLLVM at run time; rustc (through rustup) puts its
/// lib dir on the library path when it calls the linker, so check it the same way.
fn bpf_linker_ok(nightly_lib: &Path) -> bool {
    output(Command::new("bpf-linker").arg("--version").env("LD_LIBRARY_PATH", nightly_lib)).is_some()
}

/// Python packages the tests read outputs back with: confluent-kafka (Kafka records)
/// and haralyzer (HAR exports).
fn ensure_python_test_packages() -> Result<()> {
    for (module, package) in [("confluent_kafka", format!("confluent-kafka=={CONFLUENT_KAFKA_VERSION}")), ("haralyzer", format!("haralyzer=={HARALYZER_VERSION}"))] {
        let present = Command::new("python3").args(["-c", &format!("import {module}")]).output().map(|o| o.status.success()).unwrap_or(false);
        if present {
            continue;
        }
        eprintln!("xtask: installing python {package}");
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore"]).arg(&package))
            .with_context(|| format!("installing {package} with pip (needs PyPI)"))?;
    }
    Ok(())
}

/// tansu (test broker) and the Python packages the tests read outputs back with.
fn ensure_kafka_test_tools() -> Result<()> {
    if !have("tansu") {
        eprintln!("xtask: installing the tansu {TANSU_VERSION} test broker (about 20 minutes on 2 cores, once per machine)");
        run(cargo().args(["install", "tansu", "--locked", "--features", "dynostore", "--version", TANSU_VERSION]))
            .context("installing tansu (needs crates.io)")?;
    }
    ensure_python_test_packages()
}

/// kubernetes-validate (schemas of Kubernetes 1.25-1.37) for the manifest test.
fn ensure_deploy_tools() -> Result<()> {
    let has = Command::new("python3").args(["-c", "import kubernetes_validate"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !has {
        eprintln!("xtask: installing python kubernetes-validate {KUBERNETES_VALIDATE_VERSION}");
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore"])
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}")))
        .context("installing kubernetes-validate with pip (needs PyPI)")?;
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

/// Installs the test peers with apt when running as root; otherwise says what is missing.
fn ensure_apt_packages() -> Result<()> {
    ensure_packages(APT_PACKAGES, false)?;
    ensure_packages(image::CONTAINER_PACKAGES, false)
}

/// Installs missing packages (a command name, or `HEADER:<path>` for -dev packages).
/// `required`: without root/apt, fail (build needs them) instead of warning (tests skip).
pub(crate) fn ensure_packages(packages: &[(&str, &str)], required: bool) -> Result<()> {
    let present = |probe: &str| match probe.strip_prefix("HEADER:") {
        Some(path) => Path::new(path).exists(),
        None => have(probe),
    };
    let missing: Vec<&str> = packages.iter().filter(|(probe, _)| !present(probe)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !have("apt-get") {
        if required {
            bail!("missing build packages: run `apt-get install {}` as root", missing.join(" "));
        }
        eprintln!("xtask: missing test peers (kernel tests will skip): apt-get install {}", missing.join(" "));
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing.iter().map(OsStr::new))
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {} with apt-get", missing.join(" ")))
}
