//! Loads the embedded eBPF object and attaches its classifiers.

use std::collections::BTreeSet;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{tc, LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use capture_common::{MAP_COUNTERS, MAP_EVENTS, MAP_PORTS, MAX_PORTS, PROG_EGRESS, PROG_INGRESS};
use log::{debug, info, warn};

/// The object `cargo xtask build-ebpf` produced, embedded at build time (empty if it was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this agent was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild")]
    NoObject,
    #[error("loading the eBPF object failed (are you root, with CAP_BPF and CAP_NET_ADMIN?): {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel verifier rejected program {program}: {source}")]
    Verify {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to {iface} ({direction}) failed: {source}")]
    Attach {
        program: &'static str,
        iface: String,
        direction: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("no network interface matches {0:?} (see `ip link`)")]
    NoSuchInterface(String),
    #[error("invalid interface pattern {pattern:?}: {source}")]
    BadPattern {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("at most {MAX_PORTS} ports can be watched, got {0}")]
    TooManyPorts(usize),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

/// How the classifiers are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links where the kernel has them (>= 6.6), netlink `clsact` filters otherwise.
    Auto,
    /// TCX links only: owned by this process, gone when it exits, even on SIGKILL.
    Tcx,
    /// Netlink `clsact` filters (the path of kernels before 6.6), also on newer kernels.
    Netlink,
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "tcx" => Ok(AttachMode::Tcx),
            "netlink" => Ok(AttachMode::Netlink),
            _ => Err(format!("{s:?}: expected auto, tcx or netlink")),
        }
    }
}

/// Loaded programs attached to interfaces. Dropping it detaches everything.
pub struct KernelCapture {
    ebpf: Ebpf,
    ports: BpfHashMap<MapData, u16, u8>,
    pub interfaces: Vec<String>,
}

/// Names of interfaces matching each pattern (`eth0`, `veth*`), sorted, deduplicated.
pub fn resolve_interfaces(patterns: &[String]) -> Result<Vec<String>, KernelError> {
    let mut all = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for entry in dir.flatten() {
            all.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    let mut out = BTreeSet::new();
    for pattern in patterns {
        let glob = glob::Pattern::new(pattern)
            .map_err(|source| KernelError::BadPattern { pattern: pattern.clone(), source })?;
        let before = out.len();
        for name in &all {
            if glob.matches(name) {
                out.insert(name.clone());
            }
        }
        if out.len() == before {
            return Err(KernelError::NoSuchInterface(pattern.clone()));
        }
    }
    Ok(out.into_iter().collect())
}

impl KernelCapture {
    /// Loads the object with a ring buffer of `ring_bytes` and attaches ingress and
    /// egress classifiers to every interface.
    pub fn load(interfaces: &[String], ports: &[u16], ring_bytes: u32, mode: AttachMode) -> Result<Self, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
        if ports.len() > MAX_PORTS as usize {
            return Err(KernelError::TooManyPorts(ports.len()));
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(OBJECT)
            .map_err(|e| KernelError::Load(Box::new(e)))?;

        let map = ebpf.take_map(MAP_PORTS).ok_or(KernelError::MissingMap(MAP_PORTS))?;
        let mut port_map: BpfHashMap<MapData, u16, u8> =
            BpfHashMap::try_from(map).map_err(|source| KernelError::Map { name: MAP_PORTS, source: Box::new(source) })?;
        for port in ports {
            port_map
                .insert(port, 1, 0)
                .map_err(|source| KernelError::Map { name: MAP_PORTS, source: Box::new(source) })?;
        }

        for (name, attach) in [(PROG_INGRESS, TcAttachType::Ingress), (PROG_EGRESS, TcAttachType::Egress)] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program compiled into the object")
                .try_into()
                .expect("program is a classifier");
            prog.load().map_err(|source| KernelError::Verify { program: name, source: Box::new(source) })?;
            for iface in interfaces {
                remove_stale(iface, attach, name);
                let direction = if attach == TcAttachType::Ingress { "ingress" } else { "egress" };
                let result = match mode {
                    // aya picks TCX on >= 6.6 and netlink below.
                    AttachMode::Auto => prog.attach(iface, attach).or_else(|e| {
                        // Old kernels without TCX: netlink needs the clsact qdisc first.
                        debug!("attach {name} to {iface}: {e}; adding clsact and retrying");
                        let _ = tc::qdisc_add_clsact(iface);
                        prog.attach(iface, attach)
                    }),
                    AttachMode::Tcx => {
                        prog.attach_with_options(iface, attach, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    }
                    AttachMode::Netlink => {
                        // Fails harmlessly when the interface already has clsact.
                        let _ = tc::qdisc_add_clsact(iface);
                        prog.attach_with_options(iface, attach, TcAttachOptions::Netlink(NlOptions::default()))
                    }
                };
                result.map_err(|source| KernelError::Attach {
                    program: name,
                    iface: iface.clone(),
                    direction,
                    source: Box::new(source),
                })?;
                info!("attached {name} to {iface} ({direction}, {mode:?})");
            }
        }
        Ok(KernelCapture { ebpf, ports: port_map, interfaces: interfaces.to_vec() })
    }

    /// Changes the watched ports without reloading.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), KernelError> {
        let old: Vec<u16> = self.ports.keys().filter_map(Result::ok).collect();
        for port in old.iter().filter(|p| !ports.contains(p)) {
            let _ = self.ports.remove(port);
        }
        for port in ports {
            self.ports
                .insert(port, 1, 0)
                .map_err(|source| KernelError::Map { name: MAP_PORTS, source: Box::new(source) })?;
        }
        Ok(())
    }

    /// Takes the ring buffer for the reader.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self.ebpf.take_map(MAP_EVENTS).ok_or(KernelError::MissingMap(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(|source| KernelError::Map { name: MAP_EVENTS, source: Box::new(source) })
    }

    /// Takes the per-CPU counters.
    pub fn take_counters(&mut self) -> Result<PerCpuArray<MapData, u64>, KernelError> {
        let map = self.ebpf.take_map(MAP_COUNTERS).ok_or(KernelError::MissingMap(MAP_COUNTERS))?;
        PerCpuArray::try_from(map).map_err(|source| KernelError::Map { name: MAP_COUNTERS, source: Box::new(source) })
    }
}

impl Drop for KernelCapture {
    fn drop(&mut self) {
        // TCX links and netlink filters owned by the programs go away with `ebpf`;
        // say so, since users check that nothing is left attached.
        info!("detaching from {}", self.interfaces.join(", "));
    }
}

/// This agent's classifiers attached to `iface` through TCX, as `(direction, program)`.
/// Netlink (clsact) filters are not listed: `tc filter show dev IFACE ingress` shows them.
pub fn attached_programs(iface: &str) -> Result<Vec<(&'static str, String)>, KernelError> {
    let mut out = Vec::new();
    for (attach, direction) in [(TcAttachType::Ingress, "ingress"), (TcAttachType::Egress, "egress")] {
        let (_, programs) = SchedClassifier::query_tcx(iface, attach).map_err(|source| KernelError::Attach {
            program: "(query)",
            iface: iface.to_string(),
            direction,
            source: Box::new(source),
        })?;
        for p in programs {
            let name = p.name_as_str().unwrap_or("").to_string();
            if name == PROG_INGRESS || name == PROG_EGRESS {
                out.push((direction, name));
            }
        }
    }
    Ok(out)
}

/// Removes netlink (clsact) filters a killed earlier run left behind. TCX links
/// die with their owning process, so only the netlink path can leave stale state.
fn remove_stale(iface: &str, attach: TcAttachType, name: &str) {
    match tc::qdisc_detach_program(iface, attach, name) {
        Ok(()) => warn!("removed a stale {name} filter from {iface} left by an earlier run"),
        Err(e) => debug!("no stale {name} on {iface}: {e}"),
    }
}
