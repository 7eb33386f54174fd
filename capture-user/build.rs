//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! A missing object is not a build error: pure code and its tests build without
//! the BPF toolchain. The agent then refuses to start with a message saying how
//! to build the object.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../capture-ebpf/target/bpfel-unknown-none/release/capture-ebpf");
    let src = std::env::var_os("CAPTURE_EBPF_OBJECT").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-env-changed=CAPTURE_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("capture-ebpf.o");
    match std::fs::read(&src) {
        Ok(bytes) => std::fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found: the agent will not start until `cargo xtask build-ebpf` has run",
                src.display()
            );
            std::fs::write(&out, b"").unwrap();
        }
    }
}
