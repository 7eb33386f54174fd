//! Loads the TLS probes of the agent's eBPF object (see `capture-ebpf/src/tls.rs`):
//! a raw tracepoint on syscall entry (which fd an SSL call uses), uprobes on OpenSSL's
//! `SSL_read`, `SSL_write`, `SSL_read_ex`, `SSL_write_ex` (entry and return) and
//! `SSL_free`, attached per library file (`--tls-scope all`) or per process and
//! library file (`--tls-scope listeners`).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
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
use crate::tls_listeners::TlsScope;

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

/// A library file to probe: the path used to attach and the symbols it exports.
struct Library {
    path: PathBuf,
    symbols: Vec<&'static str>,
}

/// The TLS probes: loaded once, attached to each library file once (scope `all`) or
/// to each process and library file (scope `listeners`).
pub struct TlsProbes {
    scope: TlsScope,
    /// Library files probed, by identity.
    libraries: HashMap<FileId, Library>,
    /// Scope `listeners`: the uprobe links of each probed process and library.
    processes: HashMap<(u32, FileId), Vec<(&'static str, UProbeLinkId)>>,
    counters: PerCpuArray<MapData, u64>,
}

/// The programs attached to a symbol: entry and return probe, or `SSL_free`'s.
fn programs_of(symbol: &str) -> &'static [&'static str] {
    match symbol {
        "SSL_read" => &[PROG_SSL_READ, PROG_SSL_RET],
        "SSL_write" => &[PROG_SSL_WRITE, PROG_SSL_RET],
        "SSL_read_ex" => &[PROG_SSL_READ_EX, PROG_SSL_RET],
        "SSL_write_ex" => &[PROG_SSL_WRITE_EX, PROG_SSL_RET],
        _ => &[PROG_SSL_FREE],
    }
}

/// Attaches every program of every symbol of `lib` with `scope`; on failure, detaches
/// what this call attached.
fn attach_all(ebpf: &mut Ebpf, lib: &Library, scope: UProbeScope) -> Result<Vec<(&'static str, UProbeLinkId)>, TlsError> {
    let mut links = Vec::new();
    for symbol in &lib.symbols {
        for &name in programs_of(symbol) {
            let prog: &mut UProbe = program(ebpf, name);
            match prog.attach(*symbol, &lib.path, scope) {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    detach_all(ebpf, links);
                    return Err(TlsError::Program {
                        program: name,
                        what: format!("attaching to {symbol} in {}", lib.path.display()),
                        source: Cause::of(&e),
                    });
                }
            }
        }
    }
    Ok(links)
}

fn detach_all(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (name, link) in links {
        let prog: &mut UProbe = program(ebpf, name);
        // Fails only for a link already gone: nothing left to release.
        let _ = prog.detach(link);
    }
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
    pub fn load(ebpf: &mut Ebpf, scope: TlsScope) -> Result<TlsProbes, TlsError> {
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
        Ok(TlsProbes { scope, libraries: HashMap::new(), processes: HashMap::new(), counters })
    }

    /// Probes the library at `path` (a path through `/proc/PID/root` reaches other
    /// mount namespaces): in every process with scope `all`; with scope `listeners`
    /// the file is checked and remembered, and [`TlsProbes::attach_process`] probes it
    /// in a process. Returns false if that file is probed already.
    pub fn attach_library(&mut self, ebpf: &mut Ebpf, path: &Path) -> Result<bool, TlsError> {
        let id = tls_libs::file_id(path)
            .map_err(|source| TlsLibError::Unreadable { path: path.to_path_buf(), source })?;
        if self.libraries.contains_key(&id) {
            return Ok(false);
        }
        let lib = Library { path: path.to_path_buf(), symbols: tls_libs::check_library(path)? };
        if self.scope == TlsScope::All {
            // Attached for the agent's lifetime: the links live as long as the programs.
            attach_all(ebpf, &lib, UProbeScope::AllProcesses)?;
        }
        info!("TLS: probing {} ({})", path.display(), lib.symbols.join(", "));
        self.libraries.insert(id, lib);
        Ok(true)
    }

    /// Scope `listeners`: probes library `id` (known from [`TlsProbes::attach_library`])
    /// in process `pid` only. Returns false if it is probed there already.
    pub fn attach_process(&mut self, ebpf: &mut Ebpf, pid: u32, id: FileId) -> Result<bool, TlsError> {
        if self.processes.contains_key(&(pid, id)) {
            return Ok(false);
        }
        let (Some(lib), Some(nz)) = (self.libraries.get(&id), NonZeroU32::new(pid)) else { return Ok(false) };
        let links = attach_all(ebpf, lib, UProbeScope::OneProcess(nz))?;
        self.processes.insert((pid, id), links);
        Ok(true)
    }

    /// Drops the probes of processes not in `live` (gone: their links would leak).
    /// Returns how many processes lost their probes.
    pub fn detach_gone(&mut self, ebpf: &mut Ebpf, live: &HashSet<u32>) -> usize {
        let gone: Vec<(u32, FileId)> = self.processes.keys().filter(|(pid, _)| !live.contains(pid)).copied().collect();
        let pids: HashSet<u32> = gone.iter().map(|(pid, _)| *pid).collect();
        for key in gone {
            if let Some(links) = self.processes.remove(&key) {
                detach_all(ebpf, links);
            }
        }
        pids.len()
    }

    /// Processes probed now (scope `listeners`).
    pub fn processes(&self) -> usize {
        self.processes.keys().map(|(pid, _)| *pid).collect::<HashSet<_>>().len()
    }

    /// The probed library's path, for logs.
    pub fn library_path(&self, id: FileId) -> Option<&Path> {
        self.libraries.get(&id).map(|l| l.path.as_path())
    }

    /// Identities of the library files probed so far.
    pub fn library_ids(&self) -> Vec<(FileId, PathBuf)> {
        self.libraries.iter().map(|(id, l)| (*id, l.path.clone())).collect()
    }

    /// Number of library files probed so far.
    pub fn library_count(&self) -> usize {
        self.libraries.len()
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
