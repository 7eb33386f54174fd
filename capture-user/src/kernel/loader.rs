//! Loads the embedded eBPF object and attaches its classifiers to interfaces, one
//! interface at a time (interfaces come and go while the agent runs).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use capture_common::{
    IfaceCounters, SampleConfig, GLOBAL_SAMPLE_K0, GLOBAL_SAMPLE_K1, GLOBAL_SAMPLE_THRESHOLD, GLOBAL_TLS_ENABLED, GLOBAL_DIRECT_ENABLED, DIRECT_MIN_RING_BYTES, MAP_COUNTERS, MAP_EVENTS, MAP_IFACE_COUNTERS, MAP_OWNERS, MAP_PORTS, MAP_SCRATCH,
    MAP_OWNERS_ACTIVE, MAP_SKIPS, MAP_SKIPS_ACTIVE, MAX_PORTS, PROG_EGRESS, PROG_INGRESS,
};
use log::{debug, info, warn};

use super::flow_control::KernelSkips;
use super::ownership::{self, Liveness, OwnerLock};
use crate::error_chain::Cause;
use super::tc_netlink::{Hook, TcNetlink};

/// The object `cargo xtask build-ebpf` produced, embedded at build time (empty if it was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture-ebpf.o"));

/// Errors of loading and attaching the classifiers. Each message says what failed;
/// the cause is its `source()` (printed after it by `{:#}`), never repeated in it.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The possible CPUs (`/sys/devices/system/cpu/possible`) could not be read.
    #[error("cannot read the possible CPUs: {0}")]
    Cpus(String),
    /// The binary was built without the eBPF object.
    #[error("this agent was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild")]
    NoObject,
    /// The kernel refused the object (typically its maps: no CAP_BPF).
    #[error("loading the eBPF object failed (are you root, with CAP_BPF and CAP_NET_ADMIN?)")]
    Load(#[source] Cause),
    /// The verifier refused a program (the cause carries its log).
    #[error("the kernel verifier rejected program {program}")]
    Verify {
        program: &'static str,
        #[source]
        source: Cause,
    },
    /// A TCX attach (or query) failed.
    #[error("attaching {program} to {iface} ({direction}) failed")]
    Attach {
        program: &'static str,
        iface: String,
        direction: &'static str,
        #[source]
        source: Cause,
    },
    /// A netlink (clsact filter) request failed at `step`.
    #[error("attaching to {iface} through netlink failed ({step})")]
    Netlink {
        iface: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The interface went away between its notification and the attach.
    #[error("{iface} (ifindex {expected}) vanished while attaching")]
    Vanished { iface: String, expected: u32 },
    /// The name now belongs to another link.
    #[error("{iface} was replaced by another link while attaching (now ifindex {now}, expected {expected})")]
    Replaced { iface: String, expected: u32, now: u32 },
    /// A plain `--iface` name that does not exist.
    #[error("no network interface matches {0:?} (see `ip link`)")]
    NoSuchInterface(String),
    /// An `--iface` glob that does not parse.
    #[error("invalid interface pattern {pattern:?}")]
    BadPattern {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    /// More `--port`s than the kernel's port map holds.
    #[error("at most {MAX_PORTS} ports can be watched, got {0}")]
    TooManyPorts(usize),
    /// The object lacks a map this agent needs (object and agent differ).
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    /// A map could not be opened, read or written.
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Cause,
    },
    /// The rtnetlink link notification socket failed.
    #[error("listening for link changes (rtnetlink) failed")]
    Links(#[source] std::io::Error),
    /// The socket that proves this agent is alive (attachment ownership) failed.
    #[error("creating this agent's ownership socket failed")]
    Ownership(#[source] std::io::Error),
}

impl KernelError {
    fn map(name: &'static str, error: aya::maps::MapError) -> KernelError {
        KernelError::Map { name, source: Cause::of(&error) }
    }
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

/// What is attached to one interface.
enum Attachment {
    /// TCX links, one per hook (closed with the process even on SIGKILL).
    Tcx { name: String, links: Vec<(&'static str, SchedClassifierLinkId)> },
    /// Two netlink filters named with this agent's owner token (removed by us, or by
    /// the next agent once we are gone).
    Netlink { name: String },
}

impl Attachment {
    fn name(&self) -> &str {
        match self {
            Attachment::Tcx { name, .. } | Attachment::Netlink { name } => name,
        }
    }
}

/// Loaded programs and their attachments. Dropping it detaches everything.
pub struct KernelCapture {
    ebpf: Ebpf,
    iface_counters: PerCpuHashMap<MapData, u32, IfaceCounters>,
    /// `Tcx` or `Netlink` (`Auto` resolved at load).
    mode: AttachMode,
    owner: OwnerLock,
    tc: TcNetlink,
    attached: BTreeMap<u32, Attachment>,
    /// `OWNERS_ACTIVE`, set once a second interface is attached.
    owners_active: Array<MapData, u32>,
    owners_activated: bool,
    /// Interfaces on which another live agent's netlink filters were reported.
    shared_reported: BTreeSet<u32>,
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

const HOOKS: [(&str, TcAttachType, Hook); 2] =
    [(PROG_INGRESS, TcAttachType::Ingress, Hook::Ingress), (PROG_EGRESS, TcAttachType::Egress, Hook::Egress)];

/// The loopback device's ifindex in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// The hooks attached on `ifindex`. Every packet on the loopback device passes its
/// egress hook and then its ingress hook, so egress alone sees all of them: the
/// ingress run would only find the flow owned by egress (a duplicate) and cost a
/// program run per packet.
fn hooks_for(ifindex: u32) -> &'static [(&'static str, TcAttachType, Hook)] {
    if ifindex == LOOPBACK_IFINDEX { &HOOKS[1..] } else { &HOOKS }
}

fn hooks_text(ifindex: u32) -> &'static str {
    if ifindex == LOOPBACK_IFINDEX { "egress only (loopback: every packet passes it)" } else { "ingress and egress" }
}

impl KernelCapture {
    /// Loads the object with a ring buffer of `ring_bytes`, a flow-owner map of
    /// `owner_entries` and the `sampling` settings, and loads (verifies) both
    /// classifiers. `tls`: TLS probes will be attached (`--tls-lib`). Nothing is
    /// attached yet.
    pub fn load(
        ports: &[u16],
        ring_bytes: u32,
        owner_entries: u32,
        sampling: SampleConfig,
        tls: bool,
        mode: AttachMode,
    ) -> Result<Self, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
        if ports.len() > MAX_PORTS as usize {
            return Err(KernelError::TooManyPorts(ports.len()));
        }
        let owner = OwnerLock::acquire().map_err(KernelError::Ownership)?;
        let tc = TcNetlink::open().map_err(|source| KernelError::Netlink { iface: "-".into(), step: "socket", source })?;
        // One scratch slot per possible CPU (the programs index it by CPU id).
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| KernelError::Cpus(format!("{what}: {e}")))? as u32;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .map_max_entries(MAP_SCRATCH, cpus)
            .map_max_entries(MAP_OWNERS, owner_entries.max(1024))
            .override_global(GLOBAL_SAMPLE_K0, &sampling.k0, true)
            .override_global(GLOBAL_SAMPLE_K1, &sampling.k1, true)
            .override_global(GLOBAL_SAMPLE_THRESHOLD, &sampling.threshold, true)
            .override_global(GLOBAL_TLS_ENABLED, &u8::from(tls), true)
            .override_global(GLOBAL_DIRECT_ENABLED, &u8::from(ring_bytes >= DIRECT_MIN_RING_BYTES), true)
            .load(OBJECT)
            .map_err(|e| KernelError::Load(Cause::of(&e)))?;

        let map = ebpf.map_mut(MAP_PORTS).ok_or(KernelError::MissingMap(MAP_PORTS))?;
        let mut port_map: Array<&mut MapData, u8> = Array::try_from(map).map_err(|e| KernelError::map(MAP_PORTS, e))?;
        for port in ports {
            port_map.set(u32::from(*port), 1, 0).map_err(|e| KernelError::map(MAP_PORTS, e))?;
        }
        let map = ebpf.take_map(MAP_OWNERS_ACTIVE).ok_or(KernelError::MissingMap(MAP_OWNERS_ACTIVE))?;
        let owners_active = Array::try_from(map).map_err(|e| KernelError::map(MAP_OWNERS_ACTIVE, e))?;
        let map = ebpf.take_map(MAP_IFACE_COUNTERS).ok_or(KernelError::MissingMap(MAP_IFACE_COUNTERS))?;
        let iface_counters = PerCpuHashMap::try_from(map)
            .map_err(|e| KernelError::map(MAP_IFACE_COUNTERS, e))?;

        for (name, _, _) in HOOKS {
            let prog = program_mut(&mut ebpf, name);
            prog.load().map_err(|source| KernelError::Verify { program: name, source: Cause::of(&source) })?;
            // How close the program is to the verifier's limit (1M instructions processed).
            if let Some(n) = prog.info().ok().and_then(|i| i.verified_instruction_count()) {
                debug!("{name}: verified, {n} instructions processed");
            }
        }
        let mode = match mode {
            AttachMode::Auto => {
                let tcx = KernelVersion::current().map(|v| v >= KernelVersion::new(6, 6, 0)).unwrap_or(false);
                if tcx { AttachMode::Tcx } else { AttachMode::Netlink }
            }
            other => other,
        };
        Ok(KernelCapture {
            ebpf,
            iface_counters,
            mode,
            owner,
            tc,
            attached: BTreeMap::new(),
            owners_active,
            owners_activated: false,
            shared_reported: BTreeSet::new(),
        })
    }

    /// The loaded object, for the TLS probes (`kernel::tls`) that live in it too.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// `Tcx` or `Netlink`.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Attaches both classifiers to the link `ifindex` named `name`. First removes
    /// netlink filters of agents that are gone; leaves live agents' filters alone
    /// (with a warning).
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<(), KernelError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        self.remove_orphans(ifindex, name);
        if !self.attached.is_empty() && !self.owners_activated {
            // Before the second interface's hooks run: from its first segment on, a flow
            // crossing both interfaces is emitted by one hook only.
            self.owners_active.set(0, 1, 0).map_err(|e| KernelError::map(MAP_OWNERS_ACTIVE, e))?;
            self.owners_activated = true;
        }
        let attachment = match self.mode {
            AttachMode::Netlink => self.attach_netlink(ifindex, name)?,
            _ => self.attach_tcx(ifindex, name)?,
        };
        info!("attached to {name} (ifindex {ifindex}, {}): {}", self.mode_name(), hooks_text(ifindex));
        self.attached.insert(ifindex, attachment);
        Ok(())
    }

    fn mode_name(&self) -> &'static str {
        if self.mode == AttachMode::Netlink { "netlink" } else { "tcx" }
    }

    fn attach_tcx(&mut self, ifindex: u32, name: &str) -> Result<Attachment, KernelError> {
        let mut links = Vec::new();
        for &(program, attach, hook) in hooks_for(ifindex) {
            let prog = program_mut(&mut self.ebpf, program);
            match prog.attach_with_options(name, attach, TcAttachOptions::TcxOrder(LinkOrder::default())) {
                Ok(id) => links.push((program, id)),
                Err(source) => {
                    for (program, id) in links {
                        let _ = program_mut(&mut self.ebpf, program).detach(id);
                    }
                    let direction = hook.as_str();
                    return Err(KernelError::Attach { program, iface: name.to_string(), direction, source: Cause::of(&source) });
                }
            }
        }
        // aya attaches by name: make sure the name still meant this link.
        let now = ifindex_of(name);
        if now != ifindex {
            for (program, id) in links {
                let _ = program_mut(&mut self.ebpf, program).detach(id);
            }
            let iface = name.to_string();
            return Err(if now == 0 {
                KernelError::Vanished { iface, expected: ifindex }
            } else {
                KernelError::Replaced { iface, expected: ifindex, now }
            });
        }
        Ok(Attachment::Tcx { name: name.to_string(), links })
    }

    fn attach_netlink(&mut self, ifindex: u32, name: &str) -> Result<Attachment, KernelError> {
        let err = |step, source| KernelError::Netlink { iface: name.to_string(), step, source };
        self.tc.add_clsact(ifindex).map_err(|e| err("adding the clsact qdisc", e))?;
        for (i, &(program, _, hook)) in hooks_for(ifindex).iter().enumerate() {
            let filter_name = self.owner.filter_name(program);
            let prog = program_mut(&mut self.ebpf, program);
            let fd = prog.fd().expect("program loaded").as_fd();
            if let Err(e) = self.tc.add_filter(ifindex, hook, fd, &filter_name) {
                if i > 0 {
                    self.delete_own_filters(ifindex, name);
                }
                return Err(err("adding a bpf filter", e));
            }
        }
        Ok(Attachment::Netlink { name: name.to_string() })
    }

    /// Removes capture filters on `ifindex` whose owner is gone (a killed agent's
    /// leftovers); warns once about filters of a live agent and leaves them.
    fn remove_orphans(&mut self, ifindex: u32, name: &str) {
        for (program, _, hook) in HOOKS {
            let filters = match self.tc.filters(ifindex, hook) {
                Ok(f) => f,
                Err(e) => {
                    debug!("listing {} filters of {name}: {e}", hook.as_str());
                    continue;
                }
            };
            for filter in filters {
                let Some(owner) = ownership::parse_filter_name(&filter.name, &[program]) else { continue };
                if self.owner.owns(&owner) {
                    continue;
                }
                let pid = owner.pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into());
                match ownership::liveness(&owner) {
                    Liveness::Orphaned => match self.tc.delete_filter(ifindex, hook, &filter) {
                        Ok(()) => warn!(
                            "removed a stale {program} filter from {name} left by an earlier run (pid {pid}, no longer running)"
                        ),
                        Err(e) => warn!("could not remove the stale {program} filter {} from {name}: {e}", filter.name),
                    },
                    Liveness::Alive => {
                        if self.shared_reported.insert(ifindex) {
                            warn!(
                                "another capture agent (pid {pid}) is attached to {name} and still running: \
                                 leaving its filters; both agents capture this interface"
                            );
                        }
                    }
                    Liveness::Unknown(why) => warn!(
                        "left the {program} filter {:?} on {name} alone: cannot tell whether its agent runs ({why}); \
                         remove it with `tc filter del dev {name} {} pref {}` if it is a leftover",
                        filter.name,
                        hook.as_str(),
                        filter.priority
                    ),
                }
            }
        }
    }

    /// Removes this agent's netlink filters from `ifindex`.
    fn delete_own_filters(&mut self, ifindex: u32, name: &str) {
        for (program, _, hook) in HOOKS {
            let mine = self.owner.filter_name(program);
            match self.tc.filters(ifindex, hook) {
                Ok(filters) => {
                    for f in filters.iter().filter(|f| f.name == mine) {
                        if let Err(e) = self.tc.delete_filter(ifindex, hook, f) {
                            if e.raw_os_error() != Some(libc::ENODEV) {
                                warn!("removing {program} from {name}: {e}");
                            }
                        }
                    }
                }
                // The link is gone, and its filters with it.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => warn!("listing filters of {name} to remove {program}: {e}"),
            }
        }
    }

    /// Detaches from `ifindex` (if attached). A link that is already gone took its
    /// attachments with it; this releases our side. Returns the interface name.
    pub fn detach(&mut self, ifindex: u32) -> Option<String> {
        let attachment = self.attached.remove(&ifindex)?;
        let name = attachment.name().to_string();
        match attachment {
            Attachment::Tcx { links, .. } => {
                for (program, id) in links {
                    if let Err(e) = program_mut(&mut self.ebpf, program).detach(id) {
                        debug!("detaching {program} from {name}: {e}");
                    }
                }
            }
            Attachment::Netlink { .. } => self.delete_own_filters(ifindex, &name),
        }
        self.shared_reported.remove(&ifindex);
        Some(name)
    }

    /// A watched interface was renamed; its attachments follow the ifindex.
    pub fn rename(&mut self, ifindex: u32, to: &str) {
        match self.attached.get_mut(&ifindex) {
            Some(Attachment::Tcx { name, .. }) | Some(Attachment::Netlink { name }) => *name = to.to_string(),
            None => {}
        }
    }

    /// Interfaces attached now, as (ifindex, name).
    pub fn attached(&self) -> Vec<(u32, String)> {
        self.attached.iter().map(|(i, a)| (*i, a.name().to_string())).collect()
    }

    /// The kernel counters of `ifindex` (summed over CPUs; zero if it saw nothing).
    pub fn iface_counters(&self, ifindex: u32) -> IfaceCounters {
        let mut total = IfaceCounters::default();
        if let Ok(values) = self.iface_counters.get(&ifindex, 0) {
            for c in values.iter() {
                total.segments_seen += c.segments_seen;
                total.bytes_seen += c.bytes_seen;
                total.segments_duplicate += c.segments_duplicate;
                total.bytes_duplicate += c.bytes_duplicate;
                total.events_emitted += c.events_emitted;
                total.bytes_emitted += c.bytes_emitted;
            }
        }
        total
    }

    /// Drops the counters of a forgotten interface (its ifindex may be reused).
    pub fn forget_iface_counters(&mut self, ifindex: u32) {
        let _ = self.iface_counters.remove(&ifindex);
    }

    /// Takes the ring buffer for the reader.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self.ebpf.take_map(MAP_EVENTS).ok_or(KernelError::MissingMap(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(|e| KernelError::map(MAP_EVENTS, e))
    }

    /// Takes the skip map for the pipeline.
    pub fn take_skips(&mut self) -> Result<KernelSkips, KernelError> {
        let map = self.ebpf.take_map(MAP_SKIPS).ok_or(KernelError::MissingMap(MAP_SKIPS))?;
        let map = BpfHashMap::try_from(map).map_err(|source| KernelError::Map { name: MAP_SKIPS, source: Cause::of(&source) })?;
        let active = self.ebpf.take_map(MAP_SKIPS_ACTIVE).ok_or(KernelError::MissingMap(MAP_SKIPS_ACTIVE))?;
        let active = Array::try_from(active).map_err(|e| KernelError::map(MAP_SKIPS_ACTIVE, e))?;
        Ok(KernelSkips::new(map, active))
    }

    /// Takes the per-CPU counters.
    pub fn take_counters(&mut self) -> Result<PerCpuArray<MapData, u64>, KernelError> {
        let map = self.ebpf.take_map(MAP_COUNTERS).ok_or(KernelError::MissingMap(MAP_COUNTERS))?;
        PerCpuArray::try_from(map).map_err(|e| KernelError::map(MAP_COUNTERS, e))
    }
}

impl Drop for KernelCapture {
    fn drop(&mut self) {
        // TCX links go away with `ebpf` anyway; netlink filters must be deleted. Say
        // so, since users check that nothing is left attached.
        for (ifindex, name) in self.attached() {
            self.detach(ifindex);
            info!("detached from {name}");
        }
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .expect("program compiled into the object")
        .try_into()
        .expect("program is a classifier")
}

/// ifindex of `name` now (0 if no such link).
pub fn ifindex_of(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
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
            source: Cause::of(&source),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Started without CAP_BPF, the agent said "map error: failed to create map `PORTS`:
    /// map error: failed to create map `PORTS`: failed to create map `PORTS`: ...".
    #[test]
    fn loader_error_messages_repeat_their_cause() {
        let refused = aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name: "PORTS".into(),
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        let message = format!("{:#}", anyhow::Error::from(KernelError::Load(Cause::of(&refused))));
        assert_eq!(
            message,
            "loading the eBPF object failed (are you root, with CAP_BPF and CAP_NET_ADMIN?): \
             map error: failed to create map `PORTS`: Operation not permitted (os error 1)"
        );
        let netlink = KernelError::Netlink { iface: "eth0".into(), step: "add filter", source: std::io::Error::from_raw_os_error(libc::EPERM) };
        assert_eq!(
            format!("{:#}", anyhow::Error::from(netlink)),
            "attaching to eth0 through netlink failed (add filter): Operation not permitted (os error 1)"
        );
    }
}
