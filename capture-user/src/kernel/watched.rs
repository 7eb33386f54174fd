//! The interfaces the agent watches, applied to the kernel: attaches what
//! [`InterfaceWatch`] asks for, forgets what vanished, and keeps each interface's
//! counters ([`InterfaceStats`]) across attaches and detaches.

use std::collections::BTreeMap;

use log::{info, warn};

use super::loader::ifindex_of;
use super::{KernelCapture, KernelError};
use crate::iface_watch::{InterfacePattern, InterfaceStats, InterfaceWatch, LinkEvent, LinkStats, WatchAction};

/// The desired attachments (from link events) applied to the kernel, and each
/// interface's counters.
pub struct WatchedInterfaces {
    pub watch: InterfaceWatch,
    stats: BTreeMap<String, InterfaceStats>,
    pub links: LinkStats,
}

impl WatchedInterfaces {
    pub fn new(patterns: Vec<InterfacePattern>) -> Self {
        WatchedInterfaces { watch: InterfaceWatch::new(patterns), stats: BTreeMap::new(), links: LinkStats::default() }
    }

    fn stats_of(&mut self, name: &str, ifindex: u32) -> &mut InterfaceStats {
        let s = self.stats.entry(name.to_string()).or_insert_with(|| InterfaceStats { name: name.to_string(), ..Default::default() });
        s.ifindex = ifindex;
        s
    }

    /// Applies a link event: attaches, forgets, renames.
    pub fn on_event(&mut self, kernel: &mut KernelCapture, event: LinkEvent) {
        let actions = self.watch.on_event(event);
        // While running, attach failures are logged and counted; capture goes on.
        let _ = self.apply(kernel, actions);
    }

    /// Performs the actions; returns the attach errors of links that still exist
    /// (those on vanished links are expected races).
    pub fn apply(&mut self, kernel: &mut KernelCapture, actions: Vec<WatchAction>) -> Vec<KernelError> {
        let mut persistent = Vec::new();
        for action in actions {
            match action {
                WatchAction::Attach { ifindex, name } => match kernel.attach(ifindex, &name) {
                    Ok(()) => {
                        self.links.interfaces_attached += 1;
                        let s = self.stats_of(&name, ifindex);
                        s.attaches += 1;
                        s.attached = true;
                    }
                    Err(e) => {
                        // Typically the link vanished between its notification and the
                        // attach; its deletion follows. Not retried for this link.
                        warn!("could not attach to {name} (ifindex {ifindex}): {}", crate::error_chain::render(&e));
                        self.watch.attach_failed(ifindex);
                        self.links.interface_attach_errors += 1;
                        self.stats_of(&name, ifindex).attach_errors += 1;
                        if ifindex_of(&name) == ifindex {
                            persistent.push(e);
                        }
                    }
                },
                WatchAction::Forget { ifindex, name, reason } => {
                    self.detach(kernel, ifindex, &name);
                    self.links.interfaces_forgotten += 1;
                    info!("forgot {name} (ifindex {ifindex}): {reason}");
                }
                WatchAction::Rename { ifindex, from, to } => {
                    kernel.rename(ifindex, &to);
                    if let Some(mut s) = self.stats.remove(&from) {
                        s.name = to.clone();
                        let entry = self.stats_of(&to, ifindex);
                        entry.attaches += s.attaches;
                        entry.detaches += s.detaches;
                        entry.attach_errors += s.attach_errors;
                        entry.attached = s.attached;
                    }
                    info!("{from} (ifindex {ifindex}) was renamed {to}: still attached");
                }
            }
        }
        persistent
    }

    /// Reads the interface's final counters, detaches and drops its kernel counters.
    fn detach(&mut self, kernel: &mut KernelCapture, ifindex: u32, name: &str) {
        let counters = kernel.iface_counters(ifindex);
        kernel.detach(ifindex);
        kernel.forget_iface_counters(ifindex);
        self.links.interfaces_detached += 1;
        let s = self.stats_of(name, ifindex);
        s.add_counters(&counters);
        s.detaches += 1;
        s.attached = false;
    }

    /// Every interface watched so far, with the live kernel counters of those still
    /// attached (for a metrics scrape while the agent runs).
    pub fn snapshot(&self, kernel: &KernelCapture) -> Vec<InterfaceStats> {
        let mut out: BTreeMap<String, InterfaceStats> = self.stats.clone();
        for (ifindex, name) in kernel.attached() {
            if let Some(s) = out.get_mut(&name) {
                s.add_counters(&kernel.iface_counters(ifindex));
            }
        }
        out.into_values().collect()
    }

    /// Detaches from everything (shutdown) and returns the run's stats.
    pub fn finish(&mut self, kernel: &mut KernelCapture) -> (LinkStats, Vec<InterfaceStats>) {
        for (ifindex, name) in kernel.attached() {
            self.detach(kernel, ifindex, &name);
            info!("detached from {name}");
        }
        (self.links.clone(), self.stats.values().cloned().collect())
    }
}
