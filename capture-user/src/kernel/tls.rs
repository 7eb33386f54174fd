//! Loads the TLS probes of the agent's eBPF object (see `capture-ebpf/src/tls.rs`):
//! a raw tracepoint on syscall entry (which fd an SSL call uses), uprobes on OpenSSL's
//! `SSL_read`, `SSL_write`, `SSL_read_ex`, `SSL_write_ex` (entry and return) and
//! `SSL_free`, attached per library file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{RawTracePoint, UProbe};
use aya::Ebpf;
use capture_common::{
    TlsCounter, TlsOffsets, MAP_TLS_CONFIG, MAP_TLS_COUNTERS, PROG_SSL_FREE, PROG_SSL_READ, PROG_SSL_READ_EX,
    PROG_SSL_RET, PROG_SSL_WRITE, PROG_SSL_WRITE_EX, PROG_SYS_ENTER,
};
use log::info;

use crate::btf::{self, BtfError};
use crate::error_chain::Cause;
use crate::tls_libs::{self, FileId, TlsLibError};

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The kernel cannot place uprobes.
    #[error("this kernel has no uprobe support ({UPROBE_PMU} is missing: CONFIG_UPROBE_EVENTS): TLS capture is not possible")]
    NoUprobes,
    /// Not x86-64: the probes read syscall numbers and registers of that architecture.
    #[error("TLS capture is built for x86-64 only (syscall numbers and registers)")]
    UnsupportedArch,
    /// No BTF: the probes read kernel structs at offsets taken from it.
    #[error("TLS capture needs the kernel's BTF ({BTF_PATH}: CONFIG_DEBUG_INFO_BTF): {0}")]
    NoBtf(String),
    /// The kernel's BTF lacks what the probes read.
    #[error("reading kernel field offsets from the kernel's BTF")]
    Btf(#[from] BtfError),
    /// A TLS program failed to load or the kernel refused to attach it.
    #[error("TLS probe {program} ({what})")]
    Program {
        program: &'static str,
        what: String,
        #[source]
        source: Cause,
    },
    /// A TLS map could not be opened or written.
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Cause,
    },
    #[error(transparent)]
    Library(#[from] TlsLibError),
}

/// The TLS probes: loaded once, attached to each library file once.
pub struct TlsProbes {
    /// Library files probed, by identity, with the path used to attach.
    libraries: HashMap<FileId, PathBuf>,
    counters: PerCpuArray<MapData, u64>,
}

/// The kernel field offsets the probes read, from the kernel's BTF.
pub fn kernel_offsets(btf_data: &[u8]) -> Result<TlsOffsets, BtfError> {
    let btf = btf::Btf::parse(btf_data)?;
    // `struct sock` starts with its `struct sock_common` (`__sk_common`).
    let base = btf.member_offset("sock", "__sk_common")?;
    let sk = |m: &str| btf.member_offset("sock_common", m).map(|o| base + o);
    Ok(TlsOffsets {
        // x86-64: the first syscall argument is in rdi.
        regs_arg0: btf.member_offset("pt_regs", "di")?,
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdt_fd: btf.member_offset("fdtable", "fd")?,
        fdt_max_fds: btf.member_offset("fdtable", "max_fds")?,
        file_private_data: btf.member_offset("file", "private_data")?,
        socket_sk: btf.member_offset("socket", "sk")?,
        daddr: sk("skc_daddr")?,
        rcv_saddr: sk("skc_rcv_saddr")?,
        dport: sk("skc_dport")?,
        num: sk("skc_num")?,
        family: sk("skc_family")?,
        v6_daddr: sk("skc_v6_daddr")?,
        v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        valid: 1,
    })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> &'a mut T
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    let prog = ebpf.program_mut(name).expect("TLS program compiled into the object");
    match prog.try_into() {
        Ok(p) => p,
        Err(_) => panic!("program {name} has an unexpected type"),
    }
}

impl TlsProbes {
    /// Loads the TLS programs, writes the kernel offsets and attaches the syscall
    /// tracepoint. Libraries are attached with [`TlsProbes::attach_library`].
    pub fn load(ebpf: &mut Ebpf) -> Result<TlsProbes, TlsError> {
        if !Path::new(UPROBE_PMU).exists() {
            return Err(TlsError::NoUprobes);
        }
        if !cfg!(target_arch = "x86_64") {
            return Err(TlsError::UnsupportedArch);
        }
        let data = std::fs::read(BTF_PATH).map_err(|e| TlsError::NoBtf(e.to_string()))?;
        let offsets = kernel_offsets(&data)?;
        let map = ebpf.map_mut(MAP_TLS_CONFIG).expect("TLS_CONFIG in the object");
        let mut config: Array<&mut MapData, TlsOffsets> =
            Array::try_from(map).map_err(|source| TlsError::Map { name: MAP_TLS_CONFIG, source: Cause::of(&source) })?;
        config.set(0, offsets, 0).map_err(|source| TlsError::Map { name: MAP_TLS_CONFIG, source: Cause::of(&source) })?;

        for name in [PROG_SSL_READ, PROG_SSL_WRITE, PROG_SSL_READ_EX, PROG_SSL_WRITE_EX, PROG_SSL_RET, PROG_SSL_FREE] {
            let prog: &mut UProbe = program(ebpf, name);
            prog.load().map_err(|e| TlsError::Program { program: name, what: "loading".into(), source: Cause::of(&e) })?;
        }
        let prog: &mut RawTracePoint = program(ebpf, PROG_SYS_ENTER);
        let err = |what: &str, source| TlsError::Program { program: PROG_SYS_ENTER, what: what.to_string(), source: Cause::of(&source) };
        prog.load().map_err(|e| err("loading", e))?;
        prog.attach("sys_enter").map_err(|e| err("attaching to the raw tracepoint sys_enter", e))?;
        let map = ebpf.take_map(MAP_TLS_COUNTERS).expect("TLS_COUNTERS in the object");
        let counters = PerCpuArray::try_from(map)
            .map_err(|source| TlsError::Map { name: MAP_TLS_COUNTERS, source: Cause::of(&source) })?;
        Ok(TlsProbes { libraries: HashMap::new(), counters })
    }

    /// Probes the library at `path` (a path through `/proc/PID/root` reaches other
    /// mount namespaces). Returns false if that file is probed already.
    pub fn attach_library(&mut self, ebpf: &mut Ebpf, path: &Path) -> Result<bool, TlsError> {
        let id = tls_libs::file_id(path)
            .map_err(|source| TlsLibError::Unreadable { path: path.to_path_buf(), source })?;
        if self.libraries.contains_key(&id) {
            return Ok(false);
        }
        let symbols = tls_libs::check_library(path)?;
        for symbol in &symbols {
            let entry = match *symbol {
                "SSL_read" => Some(PROG_SSL_READ),
                "SSL_write" => Some(PROG_SSL_WRITE),
                "SSL_read_ex" => Some(PROG_SSL_READ_EX),
                "SSL_write_ex" => Some(PROG_SSL_WRITE_EX),
                _ => None,
            };
            let attach = |ebpf: &mut Ebpf, name: &'static str| {
                let prog: &mut UProbe = program(ebpf, name);
                prog.attach(*symbol, path, UProbeScope::AllProcesses).map(|_| ()).map_err(|e| TlsError::Program {
                    program: name,
                    what: format!("attaching to {symbol} in {}", path.display()),
                    source: Cause::of(&e),
                })
            };
            match entry {
                Some(name) => {
                    attach(ebpf, name)?;
                    attach(ebpf, PROG_SSL_RET)?;
                }
                None => attach(ebpf, PROG_SSL_FREE)?,
            }
        }
        info!("TLS: probing {} ({})", path.display(), symbols.join(", "));
        self.libraries.insert(id, path.to_path_buf());
        Ok(true)
    }

    /// Library files probed so far.
    pub fn libraries(&self) -> Vec<PathBuf> {
        self.libraries.values().cloned().collect()
    }

    /// Identities of the library files probed so far.
    pub fn library_ids(&self) -> Vec<(FileId, PathBuf)> {
        self.libraries.iter().map(|(id, p)| (*id, p.clone())).collect()
    }

    /// Sum over CPUs of every TLS counter, in `TlsCounter::ALL` order.
    pub fn counters(&self) -> Vec<(TlsCounter, u64)> {
        TlsCounter::ALL
            .iter()
            .map(|&c| (c, self.counters.get(&(c as u32), 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_offsets() {
        let Ok(data) = std::fs::read(BTF_PATH) else { return };
        let o = kernel_offsets(&data).unwrap();
        assert_eq!(o.regs_arg0, 112, "x86-64 pt_regs.di");
        assert_eq!((o.daddr, o.rcv_saddr, o.dport, o.num, o.family, o.valid), (0, 4, 12, 14, 16, 1));
        assert_eq!(o.v6_rcv_saddr, o.v6_daddr + 16);
    }
}
