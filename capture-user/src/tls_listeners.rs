//! Which processes the TLS uprobes go on with `--tls-scope listeners` (the default):
//! those holding a listening TCP socket (IPv4 or IPv6) on a watched port that map a
//! probed library. A uprobe trap costs every process that maps the library, clients
//! included, even when the kernel program then ignores the call; probing only the
//! servers keeps that cost off everyone else.
//!
//! Found from `/proc`: each process's network namespace's `net/tcp{,6}` gives the
//! socket inodes in LISTEN state on watched ports, `/proc/PID/fd` links
//! (`socket:[INODE]`) give the processes holding them, `/proc/PID/maps` the files they
//! map (compared with the probed libraries by file identity, through
//! `/proc/PID/root`). Pure apart from reading `/proc`; nothing here needs root.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use crate::tls_libs::{file_id, path_in_maps_line, FileId};

/// A `--tls-scope` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsScope {
    /// Only processes listening on a watched port (found by rescanning `/proc`).
    #[default]
    Listeners,
    /// Every process that maps a probed library (servers in pid namespaces the agent
    /// cannot see, sockets passed in ways `/proc` does not show).
    All,
}

impl std::str::FromStr for TlsScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "listeners" => Ok(TlsScope::Listeners),
            "all" => Ok(TlsScope::All),
            _ => Err("expected `listeners` (processes listening on a watched port) or `all` (every process)".into()),
        }
    }
}

/// TCP state LISTEN in `/proc/net/tcp{,6}`.
const TCP_LISTEN: &str = "0A";

/// Socket inodes in LISTEN state on one of `ports`, with their port, from the text of
/// `/proc/net/tcp` or `/proc/net/tcp6`. Lines that do not parse are skipped.
pub fn listening_inodes(text: &str, ports: &[u16]) -> HashMap<u64, u16> {
    let mut found = HashMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 || fields[3] != TCP_LISTEN {
            continue;
        }
        let Some(port) = fields[1].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) else { continue };
        let Ok(inode) = fields[9].parse::<u64>() else { continue };
        if ports.contains(&port) && inode != 0 {
            found.insert(inode, port);
        }
    }
    found
}

/// The inode of a `/proc/PID/fd` link target `socket:[INODE]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The file paths a `/proc/PID/maps` text maps, each once.
pub fn mapped_paths(maps: &str) -> BTreeSet<&str> {
    maps.lines().filter_map(path_in_maps_line).collect()
}

/// A process to probe: it listens on watched ports and maps probed libraries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub pid: u32,
    pub ports: Vec<u16>,
    pub libraries: Vec<FileId>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ListenerScanResult {
    /// Processes to probe.
    pub listeners: Vec<Listener>,
    /// Every process present during the scan (probes of others can go).
    pub live: HashSet<u32>,
}

/// Finds listening processes under a `/proc`-like directory.
pub struct ListenerScan {
    proc_dir: PathBuf,
    /// Probed libraries each process maps, with its executable when read: read again
    /// when the process has exec'd since, and on a full scan.
    mapped: HashMap<u32, (PathBuf, Vec<FileId>)>,
}

impl ListenerScan {
    pub fn new(proc_dir: impl Into<PathBuf>) -> ListenerScan {
        ListenerScan { proc_dir: proc_dir.into(), mapped: HashMap::new() }
    }

    /// The processes that listen on one of `ports` and map one of `libraries`. With
    /// `full`, every process's maps are read again (a library loaded late, or one
    /// registered after the process was first seen). Processes that vanish meanwhile
    /// are skipped.
    pub fn scan(&mut self, ports: &[u16], libraries: &HashSet<FileId>, full: bool) -> ListenerScanResult {
        let Ok(dir) = std::fs::read_dir(&self.proc_dir) else { return ListenerScanResult::default() };
        let live: HashSet<u32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        self.mapped.retain(|p, _| live.contains(p));
        if full {
            self.mapped.clear();
        }
        // Only processes mapping a probed library: their fds are read on every scan.
        let mut candidates: Vec<u32> = Vec::new();
        for &pid in &live {
            let Ok(exe) = std::fs::read_link(self.proc_dir.join(format!("{pid}/exe"))) else { continue };
            if self.mapped.get(&pid).is_none_or(|(seen, _)| *seen != exe) {
                self.mapped.insert(pid, (exe, mapped_libraries(&self.proc_dir, pid, libraries)));
            }
            if !self.mapped[&pid].1.is_empty() {
                candidates.push(pid);
            }
        }
        candidates.sort_unstable();
        // Listening sockets per network namespace, read once per scan.
        let mut by_netns: HashMap<String, HashMap<u64, u16>> = HashMap::new();
        let mut listeners = Vec::new();
        for pid in candidates {
            let base = self.proc_dir.join(pid.to_string());
            let Ok(netns) = std::fs::read_link(base.join("ns/net")) else { continue };
            let netns = netns.to_string_lossy().into_owned();
            if !by_netns.contains_key(&netns) {
                let mut inodes = HashMap::new();
                for table in ["net/tcp", "net/tcp6"] {
                    if let Ok(text) = std::fs::read_to_string(base.join(table)) {
                        inodes.extend(listening_inodes(&text, ports));
                    }
                }
                by_netns.insert(netns.clone(), inodes);
            }
            let inodes = &by_netns[&netns];
            if inodes.is_empty() {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(base.join("fd")) else { continue };
            let ports: BTreeSet<u16> = fds
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| socket_inode(link.to_str()?))
                .filter_map(|inode| inodes.get(&inode).copied())
                .collect();
            if !ports.is_empty() {
                listeners.push(Listener { pid, ports: ports.into_iter().collect(), libraries: self.mapped[&pid].1.clone() });
            }
        }
        ListenerScanResult { listeners, live }
    }
}

/// The libraries among `libraries` that process `pid` maps (by identity, through its root).
fn mapped_libraries(proc_dir: &std::path::Path, pid: u32, libraries: &HashSet<FileId>) -> Vec<FileId> {
    let base = proc_dir.join(pid.to_string());
    let Ok(maps) = std::fs::read_to_string(base.join("maps")) else { return Vec::new() };
    let mut found: Vec<FileId> = mapped_paths(&maps)
        .into_iter()
        .filter_map(|p| file_id(&base.join("root").join(p.trim_start_matches('/'))).ok())
        .filter(|id| libraries.contains(id))
        .collect();
    // Several paths (links, mount namespaces) may name one file.
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In the format of this machine's tables: a server on 18443 (IPv4 and IPv6), sshd on 22, a client
    /// connection to 18443 (ESTABLISHED, not LISTEN).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:480B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5532101 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21233 1 0000000000000000 100 0 0 10 0
   2: 0100007F:480B 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 5533870 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:D2A4 0100007F:480B 01 00000000:00000000 00:00000000 00000000     0        0 5533869 1 0000000000000000 20 4 31 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:480B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5532102 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:480C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5532200 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:480B 00000000000000000000000001000000:C350 06 00000000:00000000 03:00000F4A 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn listening_inodes_of_watched_ports_only() {
        assert_eq!(listening_inodes(TCP, &[18443]), HashMap::from([(5532101, 18443)]));
        assert_eq!(listening_inodes(TCP, &[22, 18443]), HashMap::from([(5532101, 18443), (21233, 22)]));
        assert!(listening_inodes(TCP, &[53924]).is_empty(), "an established connection's port is not a listener");
        assert_eq!(listening_inodes(TCP6, &[18443, 18444]), HashMap::from([(5532102, 18443), (5532200, 18444)]));
        assert!(listening_inodes("garbage\n1: x y 0A\n", &[18443]).is_empty());
        assert!(listening_inodes("", &[18443]).is_empty());
    }

    #[test]
    fn socket_links_and_mapped_paths() {
        assert_eq!(socket_inode("socket:[5532101]"), Some(5532101));
        for link in ["pipe:[5532101]", "/dev/null", "socket:[x]", "anon_inode:[eventfd]"] {
            assert_eq!(socket_inode(link), None, "{link}");
        }
        let maps = "55d0c9a00000-55d0c9a2a000 r--p 00000000 fe:01 1311 /usr/sbin/nginx
7f39cc583000-7f39cc5a1000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f39cc5a1000-7f39cc5f1000 r-xp 0001e000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f39cc600000-7f39cc601000 r-xp 00000000 fe:01 77   /opt/my dir/libx.so
7f39cc583000-7f39cc5a1000 r--p 00000000 fe:01 7 /usr/lib/old.so (deleted)
7ffd3c1e1000-7ffd3c202000 rw-p 00000000 00:00 0                          [stack]
7f39cc583000-7f39cc5a1000 rw-p 00000000 00:00 0 
";
        assert_eq!(
            mapped_paths(maps).into_iter().collect::<Vec<_>>(),
            ["/opt/my dir/libx.so", "/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/sbin/nginx"]
        );
    }

    #[test]
    fn scopes_parse() {
        assert_eq!("listeners".parse(), Ok(TlsScope::Listeners));
        assert_eq!("all".parse(), Ok(TlsScope::All));
        assert!("servers".parse::<TlsScope>().unwrap_err().contains("listeners"));
    }

    /// A fake /proc: a server (pid 10) holding the listening socket and mapping the
    /// library, a client (11) mapping it without a listener, a process (12) holding the
    /// listening socket without the library, and a server (13) in another network
    /// namespace listening on its own socket.
    #[test]
    fn scan_finds_listeners_that_map_the_library_in_every_network_namespace() {
        let base = std::env::temp_dir().join(format!("capture-tls-listeners-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/libssl.so.3"), b"lib").unwrap();
        std::fs::write(root.join("lib/libc.so.6"), b"libc").unwrap();
        let lib = file_id(&root.join("lib/libssl.so.3")).unwrap();
        let line = |p: &str| format!("7f0000000000-7f0000001000 r-xp 00000000 fe:01 42 /lib/{p}\n");
        let process = |pid: u32, netns: &str, maps: String, tcp: &str, sockets: &[u64]| {
            let dir = base.join(format!("proc/{pid}"));
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::create_dir_all(dir.join("net")).unwrap();
            std::os::unix::fs::symlink(&root, dir.join("root")).unwrap();
            std::os::unix::fs::symlink("/usr/sbin/server", dir.join("exe")).unwrap();
            std::os::unix::fs::symlink(netns, dir.join("ns/net")).unwrap();
            std::fs::write(dir.join("maps"), maps).unwrap();
            std::fs::write(dir.join("net/tcp"), tcp).unwrap();
            std::fs::write(dir.join("net/tcp6"), TCP6).unwrap();
            std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
            for (i, s) in sockets.iter().enumerate() {
                std::os::unix::fs::symlink(format!("socket:[{s}]"), dir.join(format!("fd/{}", i + 3))).unwrap();
            }
        };
        let both = format!("{}{}", line("libc.so.6"), line("libssl.so.3"));
        process(10, "net:[1]", both.clone(), TCP, &[5532101, 5532102, 99]);
        process(11, "net:[1]", both.clone(), TCP, &[5533869]);
        process(12, "net:[1]", line("libc.so.6"), TCP, &[5532101]);
        let other_ns = TCP.replace("5532101", "7000001");
        process(13, "net:[2]", both, &other_ns, &[7000001]);
        let libraries = HashSet::from([lib]);
        let mut scan = ListenerScan::new(base.join("proc"));
        let found = scan.scan(&[18443], &libraries, false);
        assert_eq!(
            found.listeners,
            [
                Listener { pid: 10, ports: vec![18443], libraries: vec![lib] },
                Listener { pid: 13, ports: vec![18443], libraries: vec![lib] },
            ]
        );
        assert_eq!(found.live, HashSet::from([10, 11, 12, 13]));
        // Not a watched port: nobody.
        assert!(scan.scan(&[22], &libraries, false).listeners.is_empty());
        // A process gone.
        std::fs::remove_dir_all(base.join("proc/13")).unwrap();
        let found = scan.scan(&[18443], &libraries, true);
        assert_eq!(found.listeners.iter().map(|l| l.pid).collect::<Vec<_>>(), [10]);
        assert!(!found.live.contains(&13));
        let _ = std::fs::remove_dir_all(&base);
    }
}
