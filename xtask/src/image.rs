//! The container image (`deploy/Containerfile`), built with podman without any
//! registry: the builder stage starts from a Debian base made here with mmdebstrap,
//! and reuses this machine's Rust toolchains (bind-mounted read-only) and cargo
//! registry; the target directories are podman cache mounts, so rebuilds are
//! incremental.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::{ensure_packages, output, run};

/// Debian packages that build and run images (runc: crun refuses this machine's hybrid cgroups).
pub const CONTAINER_PACKAGES: &[(&str, &str)] =
    &[("podman", "podman"), ("buildah", "buildah"), ("runc", "runc"), ("mmdebstrap", "mmdebstrap"), ("newuidmap", "uidmap")];

/// The builder stage's base; bump the tag when its package list changes.
pub const BUILD_BASE: &str = "localhost/capture-build-base:bookworm-2";
/// What the builder needs besides the Rust toolchains: C and C++ compilers and make for
/// librdkafka, OpenSSL headers, certificates for crates.io, binutils' strip.
const BUILD_BASE_PACKAGES: &str = "ca-certificates,gcc,g++,libc6-dev,make,pkg-config,libssl-dev,binutils";

/// The image the manifests in deploy/ run.
pub fn image_tag() -> String {
    format!("localhost/capture:{}", env!("CARGO_PKG_VERSION"))
}

/// The containers.conf podman needs on machines like the CI's (see the file).
pub fn containers_conf(root: &Path) -> PathBuf {
    root.join("xtask/containers.conf")
}

fn podman(root: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", containers_conf(root));
    cmd
}

/// Builds `tag` from deploy/Containerfile, making the builder base first if missing.
pub fn build_image(root: &Path, tag: &str) -> Result<()> {
    ensure_packages(CONTAINER_PACKAGES, true)?;
    let exists = podman(root).args(["image", "exists", BUILD_BASE]).status().map(|s| s.success()).unwrap_or(false);
    if !exists {
        make_build_base(root)?;
    }
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let rustup = std::env::var_os("RUSTUP_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".rustup"));
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cargo"));
    let mut build = podman(root);
    build
        .current_dir(root)
        .args(["build", "--network", "host", "--file", "deploy/Containerfile", "--tag", tag])
        .arg(format!("--build-arg=BUILD_BASE={BUILD_BASE}"))
        // The toolchains (stable, nightly + rust-src, bpf-linker) and the crate
        // registry of this machine: nothing to download or compile twice.
        .arg(format!("--volume={}:/root/.rustup:ro", rustup.display()))
        .arg(format!("--volume={}:/root/.cargo", cargo_home.display()));
    // Crate downloads trust what this machine trusts (e.g. a proxy's own CA).
    let host_ca = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    if host_ca.is_file() {
        build
            .arg(format!("--volume={}:/run/host-ca-certificates.crt:ro", host_ca.display()))
            .arg("--build-arg=CARGO_HTTP_CAINFO=/run/host-ca-certificates.crt");
    }
    let started = Instant::now();
    eprintln!("xtask: building {tag} from deploy/Containerfile");
    run(build.arg(".")).context("building the container image")?;
    let size = output(podman(root).args(["image", "inspect", "--format", "{{.Size}}", tag])).unwrap_or_default();
    eprintln!("xtask: built {tag} ({} MB) in {:.0} s", size.parse::<u64>().unwrap_or(0) / 1_000_000, started.elapsed().as_secs_f64());
    Ok(())
}

/// A minimal Debian rootfs of this machine's release with the build packages,
/// imported as [`BUILD_BASE`] (no registry needed).
fn make_build_base(root: &Path) -> Result<()> {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let suite = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .context("/etc/os-release names no VERSION_CODENAME (a Debian release is needed)")?;
    let mirror = debian_mirror().context("no Debian mirror found in /etc/apt/sources.list*")?;
    let tar = root.join("target/build-base.tar");
    std::fs::create_dir_all(root.join("target"))?;
    let started = Instant::now();
    eprintln!("xtask: making {BUILD_BASE} with mmdebstrap ({suite} from {mirror})");
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase", &format!("--include={BUILD_BASE_PACKAGES}"), &suite])
        .arg(&tar)
        .arg(&mirror))
    .context("mmdebstrap")?;
    let imported = run(podman(root).arg("import").arg(&tar).arg(BUILD_BASE));
    let _ = std::fs::remove_file(&tar);
    imported.context("importing the builder base")?;
    eprintln!("xtask: {BUILD_BASE} made in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The first Debian mirror URL in the apt sources (one-line or deb822 format).
fn debian_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let url = match line.strip_prefix("URIs:") {
                Some(uris) => uris.split_whitespace().next(),
                None if line.starts_with("deb ") => line.split_whitespace().find(|w| w.contains("://")),
                None => None,
            };
            // The main archive, not security or backports mirrors.
            if let Some(url) = url.filter(|u| !u.contains("security")) {
                return Some(url.to_string());
            }
        }
    }
    None
}

