//! Which interfaces the agent watches: `--iface` names and globs matched against the
//! links of the agent's network namespace as they appear, are renamed and disappear
//! (pods come and go under a DaemonSet). Pure bookkeeping fed by link events; the
//! kernel side (`kernel::links`) produces the events and performs the actions.

use std::collections::BTreeMap;
use std::fmt;

use capture_common::IfaceCounters;

/// One `--iface` value: a plain name (`eth0`) or a glob (`veth*`, `cali*`).
#[derive(Clone, Debug)]
pub struct InterfacePattern {
    text: String,
    glob: glob::Pattern,
}

impl InterfacePattern {
    /// Whether the value has glob characters. A plain name must exist when the agent
    /// starts; a glob may match nothing yet.
    pub fn is_glob(&self) -> bool {
        self.text.contains(['*', '?', '['])
    }

    pub fn matches(&self, name: &str) -> bool {
        self.glob.matches(name)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for InterfacePattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an interface name or glob is expected, got an empty value".into());
        }
        let glob = glob::Pattern::new(s).map_err(|e| format!("{s:?} is not a valid glob: {e}"))?;
        Ok(InterfacePattern { text: s.to_string(), glob })
    }
}

impl fmt::Display for InterfacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the kernel said about the namespace's links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists with this name: new, changed (up/down, MTU, ...) or renamed.
    Present { ifindex: u32, name: String },
    /// The link was deleted or moved to another network namespace.
    Gone { ifindex: u32 },
    /// Every link that exists now (at start, and after the event socket overflowed:
    /// anything known but absent here is gone).
    Snapshot(Vec<(u32, String)>),
}

/// Why an interface stops being watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForgetReason {
    /// Deleted, or moved to another namespace.
    Gone,
    /// Renamed to a name no pattern matches.
    Renamed,
}

impl fmt::Display for ForgetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForgetReason::Gone => "interface removed",
            ForgetReason::Renamed => "renamed to a name no --iface matches",
        })
    }
}

/// What the caller must do after an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchAction {
    /// Attach both classifiers; report a failure back with [`InterfaceWatch::attach_failed`].
    Attach { ifindex: u32, name: String },
    /// Detach (if the link still exists) and forget the interface.
    Forget { ifindex: u32, name: String, reason: ForgetReason },
    /// A watched interface was renamed and still matches: attachments follow the
    /// ifindex, only the name changes.
    Rename { ifindex: u32, from: String, to: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Attach was asked for (and succeeded unless told otherwise).
    Attached,
    /// Attach failed: not retried while this link lives under a matching name.
    Failed,
}

/// The desired attachments, kept in step with link events.
#[derive(Debug)]
pub struct InterfaceWatch {
    patterns: Vec<InterfacePattern>,
    /// Every link of the namespace, by ifindex.
    links: BTreeMap<u32, String>,
    /// Links whose name matches a pattern.
    watched: BTreeMap<u32, (String, State)>,
}

impl InterfaceWatch {
    pub fn new(patterns: Vec<InterfacePattern>) -> Self {
        InterfaceWatch { patterns, links: BTreeMap::new(), watched: BTreeMap::new() }
    }

    fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    pub fn on_event(&mut self, event: LinkEvent) -> Vec<WatchAction> {
        let mut actions = Vec::new();
        match event {
            LinkEvent::Present { ifindex, name } => self.present(ifindex, name, &mut actions),
            LinkEvent::Gone { ifindex } => self.gone(ifindex, &mut actions),
            LinkEvent::Snapshot(links) => {
                let now: BTreeMap<u32, String> = links.into_iter().collect();
                let vanished: Vec<u32> = self.links.keys().filter(|i| !now.contains_key(i)).copied().collect();
                for ifindex in vanished {
                    self.gone(ifindex, &mut actions);
                }
                for (ifindex, name) in now {
                    self.present(ifindex, name, &mut actions);
                }
            }
        }
        actions
    }

    fn present(&mut self, ifindex: u32, name: String, actions: &mut Vec<WatchAction>) {
        let matches = self.matches(&name);
        self.links.insert(ifindex, name.clone());
        match (self.watched.get_mut(&ifindex), matches) {
            (None, false) => {}
            (None, true) => {
                self.watched.insert(ifindex, (name.clone(), State::Attached));
                actions.push(WatchAction::Attach { ifindex, name });
            }
            (Some((old, _)), true) => {
                if *old != name {
                    let from = std::mem::replace(old, name.clone());
                    actions.push(WatchAction::Rename { ifindex, from, to: name });
                }
            }
            (Some(_), false) => {
                let (old, state) = self.watched.remove(&ifindex).expect("present");
                if state == State::Attached {
                    actions.push(WatchAction::Forget { ifindex, name: old, reason: ForgetReason::Renamed });
                }
            }
        }
    }

    fn gone(&mut self, ifindex: u32, actions: &mut Vec<WatchAction>) {
        self.links.remove(&ifindex);
        if let Some((name, state)) = self.watched.remove(&ifindex) {
            if state == State::Attached {
                actions.push(WatchAction::Forget { ifindex, name, reason: ForgetReason::Gone });
            }
        }
    }

    /// The attach asked for `ifindex` failed: nothing is attached there.
    pub fn attach_failed(&mut self, ifindex: u32) {
        if let Some((_, state)) = self.watched.get_mut(&ifindex) {
            *state = State::Failed;
        }
    }

    /// Interfaces attached now, as (ifindex, name).
    pub fn attached(&self) -> Vec<(u32, String)> {
        self.watched
            .iter()
            .filter(|(_, (_, s))| *s == State::Attached)
            .map(|(i, (n, _))| (*i, n.clone()))
            .collect()
    }

    /// Plain names (no glob characters) that name no link: an error at start.
    pub fn missing_names(&self) -> Vec<&InterfacePattern> {
        self.patterns.iter().filter(|p| !p.is_glob() && !self.links.values().any(|n| p.matches(n))).collect()
    }

    /// Globs that match no link yet.
    pub fn waiting_globs(&self) -> Vec<&InterfacePattern> {
        self.patterns.iter().filter(|p| p.is_glob() && !self.links.values().any(|n| p.matches(n))).collect()
    }
}

/// Counters of one interface over the agent's run, by name (a link deleted and
/// created again under the same name adds up). Renders as `iface[NAME].key=value` in
/// the summary line; the metrics endpoint labels them `iface="NAME"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    /// ifindex of the latest link with this name.
    pub ifindex: u32,
    /// Attached when the stats were taken.
    pub attached: bool,
    /// Successful attaches (both hooks) and detaches (forgotten or at shutdown).
    pub attaches: u64,
    pub detaches: u64,
    /// Attaches that failed (the link vanished meanwhile, or the kernel refused).
    pub attach_errors: u64,
    /// Kernel counters of the interface's two hooks (see [`IfaceCounters`]).
    pub segments_seen: u64,
    pub bytes_seen: u64,
    pub segments_duplicate: u64,
    pub bytes_duplicate: u64,
    pub events_emitted: u64,
    pub bytes_emitted: u64,
}

impl InterfaceStats {
    pub fn add_counters(&mut self, c: &IfaceCounters) {
        self.segments_seen += c.segments_seen;
        self.bytes_seen += c.bytes_seen;
        self.segments_duplicate += c.segments_duplicate;
        self.bytes_duplicate += c.bytes_duplicate;
        self.events_emitted += c.events_emitted;
        self.bytes_emitted += c.bytes_emitted;
    }

    /// `key=value` pairs for the summary line, keys `iface[NAME].field`.
    pub fn fields(&self) -> Vec<(String, u64)> {
        [
            ("ifindex", self.ifindex as u64),
            ("attached", self.attached as u64),
            ("attaches", self.attaches),
            ("detaches", self.detaches),
            ("attach_errors", self.attach_errors),
            ("segments_seen", self.segments_seen),
            ("bytes_seen", self.bytes_seen),
            ("segments_duplicate", self.segments_duplicate),
            ("bytes_duplicate", self.bytes_duplicate),
            ("events_emitted", self.events_emitted),
            ("bytes_emitted", self.bytes_emitted),
        ]
        .into_iter()
        .map(|(k, v)| (format!("iface[{}].{k}", self.name), v))
        .collect()
    }
}

/// Agent-wide counters of interface changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Link notifications read from the kernel.
    pub link_events: u64,
    /// Times the notification socket overflowed and every link was listed again.
    pub link_resyncs: u64,
    pub interfaces_attached: u64,
    /// Detached because the link vanished or was renamed away (not at shutdown).
    pub interfaces_forgotten: u64,
    pub interfaces_detached: u64,
    pub interface_attach_errors: u64,
}

impl LinkStats {
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("interfaces_attached", self.interfaces_attached),
            ("interfaces_forgotten", self.interfaces_forgotten),
            ("interfaces_detached", self.interfaces_detached),
            ("interface_attach_errors", self.interface_attach_errors),
            ("link_events", self.link_events),
            ("link_resyncs", self.link_resyncs),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(patterns: &[&str]) -> InterfaceWatch {
        InterfaceWatch::new(patterns.iter().map(|p| p.parse().unwrap()).collect())
    }

    fn present(ifindex: u32, name: &str) -> LinkEvent {
        LinkEvent::Present { ifindex, name: name.into() }
    }

    fn attach(ifindex: u32, name: &str) -> WatchAction {
        WatchAction::Attach { ifindex, name: name.into() }
    }

    fn forget(ifindex: u32, name: &str, reason: ForgetReason) -> WatchAction {
        WatchAction::Forget { ifindex, name: name.into(), reason }
    }

    #[test]
    fn glob_attaches_matching_links_at_start_and_as_they_appear() {
        let mut w = watch(&["vh*"]);
        let start = w.on_event(LinkEvent::Snapshot(vec![(1, "lo".into()), (2, "eth0".into()), (5, "vh1".into())]));
        assert_eq!(start, [attach(5, "vh1")]);
        assert_eq!(w.on_event(present(7, "vh2")), [attach(7, "vh2")]);
        assert_eq!(w.on_event(present(8, "eth1")), []);
        // Link state changes repeat RTM_NEWLINK: nothing to do.
        assert_eq!(w.on_event(present(7, "vh2")), []);
        assert_eq!(w.attached(), [(5, "vh1".to_string()), (7, "vh2".to_string())]);
    }

    #[test]
    fn a_vanished_interface_is_forgotten_once_and_a_new_one_with_its_name_is_attached() {
        let mut w = watch(&["vh*"]);
        w.on_event(present(5, "vh1"));
        assert_eq!(w.on_event(LinkEvent::Gone { ifindex: 5 }), [forget(5, "vh1", ForgetReason::Gone)]);
        assert_eq!(w.on_event(LinkEvent::Gone { ifindex: 5 }), [], "forgotten once");
        assert_eq!(w.on_event(present(9, "vh1")), [attach(9, "vh1")]);
        assert_eq!(w.attached(), [(9, "vh1".to_string())]);
    }

    #[test]
    fn an_interface_that_appears_and_vanishes_before_the_attach_is_not_retried() {
        let mut w = watch(&["vh*"]);
        assert_eq!(w.on_event(present(5, "vh1")), [attach(5, "vh1")]);
        // The attach ran after the link was gone: it failed, and the deletion follows.
        w.attach_failed(5);
        assert!(w.attached().is_empty());
        assert_eq!(w.on_event(present(5, "vh1")), [], "not retried on a later NEWLINK");
        assert_eq!(w.on_event(LinkEvent::Gone { ifindex: 5 }), [], "nothing attached: nothing to forget");
    }

    #[test]
    fn renames_follow_the_patterns() {
        let mut w = watch(&["vh*"]);
        // CNI plugins create a veth under a temporary name, then rename it.
        assert_eq!(w.on_event(present(5, "tmp123")), []);
        assert_eq!(w.on_event(present(5, "vh1")), [attach(5, "vh1")]);
        assert_eq!(
            w.on_event(present(5, "vh9")),
            [WatchAction::Rename { ifindex: 5, from: "vh1".into(), to: "vh9".into() }]
        );
        assert_eq!(w.on_event(present(5, "other")), [forget(5, "vh9", ForgetReason::Renamed)]);
        assert!(w.attached().is_empty());
    }

    #[test]
    fn a_snapshot_after_an_overflow_catches_up_with_missed_events() {
        let mut w = watch(&["vh*", "eth0"]);
        w.on_event(LinkEvent::Snapshot(vec![(2, "eth0".into()), (5, "vh1".into()), (6, "vh2".into())]));
        // Missed: vh1 deleted, vh3 created, vh2 renamed to vh4.
        let actions = w.on_event(LinkEvent::Snapshot(vec![(2, "eth0".into()), (6, "vh4".into()), (7, "vh3".into())]));
        assert_eq!(
            actions,
            [
                forget(5, "vh1", ForgetReason::Gone),
                WatchAction::Rename { ifindex: 6, from: "vh2".into(), to: "vh4".into() },
                attach(7, "vh3"),
            ]
        );
        assert_eq!(w.attached().len(), 3);
    }

    #[test]
    fn plain_names_must_exist_globs_may_wait() {
        let mut w = watch(&["eth0", "lo", "vh*", "cali*"]);
        w.on_event(LinkEvent::Snapshot(vec![(1, "lo".into()), (4, "vh7".into())]));
        let missing: Vec<&str> = w.missing_names().iter().map(|p| p.as_str()).collect();
        assert_eq!(missing, ["eth0"]);
        let waiting: Vec<&str> = w.waiting_globs().iter().map(|p| p.as_str()).collect();
        assert_eq!(waiting, ["cali*"]);
        w.on_event(present(9, "cali42"));
        assert!(w.waiting_globs().is_empty());
    }

    #[test]
    fn several_patterns_attach_each_link_once() {
        let mut w = watch(&["vh*", "vh1", "*"]);
        assert_eq!(w.on_event(present(5, "vh1")), [attach(5, "vh1")]);
        assert_eq!(w.attached().len(), 1);
    }

    #[test]
    fn bad_patterns_are_usage_errors() {
        let err = "vh[".parse::<InterfacePattern>().unwrap_err();
        assert!(err.contains("\"vh[\" is not a valid glob"), "{err}");
        assert!("".parse::<InterfacePattern>().is_err());
        assert!(!"eth0".parse::<InterfacePattern>().unwrap().is_glob());
        assert!("veth?".parse::<InterfacePattern>().unwrap().is_glob());
    }

    #[test]
    fn interface_stats_render_with_the_name_in_brackets() {
        let mut s = InterfaceStats { name: "vh1".into(), ifindex: 5, attached: true, attaches: 1, ..Default::default() };
        s.add_counters(&IfaceCounters { segments_seen: 3, bytes_seen: 100, events_emitted: 2, bytes_emitted: 60, ..Default::default() });
        let fields = s.fields();
        assert!(fields.contains(&("iface[vh1].segments_seen".to_string(), 3)));
        assert!(fields.contains(&("iface[vh1].bytes_emitted".to_string(), 60)));
        assert!(fields.contains(&("iface[vh1].attached".to_string(), 1)));
    }
}
