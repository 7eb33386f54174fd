//! Which OpenSSL libraries the TLS uprobes go on: files named with `--tls-lib PATH`,
//! and with `--tls-lib auto` every `libssl.so*` that running processes have mapped,
//! found in `/proc/*/maps` and opened through `/proc/PID/root` so that processes in
//! other mount namespaces (containers) are covered. Pure apart from reading `/proc`
//! and the library files; nothing here needs root.
//!
//! Uprobes attach to a file (its inode): every process that maps it, now or later, is
//! probed. So a new server process using an already probed library is covered at once;
//! only a library file not seen before (a new container image) needs a new scan.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A `--tls-lib` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsLibSpec {
    /// Find libssl in running processes (and in new ones, by rescanning).
    Auto,
    /// This library file.
    Path(PathBuf),
}

impl std::str::FromStr for TlsLibSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("expected `auto` or the path of a libssl.so file".into()),
            "auto" => Ok(TlsLibSpec::Auto),
            p => Ok(TlsLibSpec::Path(PathBuf::from(p))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsLibError {
    /// The file does not exist or cannot be read.
    #[error("TLS library {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not an ELF shared object we can read symbols from.
    #[error("TLS library {path}: not an ELF file ({detail})")]
    NotElf { path: PathBuf, detail: String },
    /// The functions we probe are not exported: a statically linked or stripped
    /// OpenSSL inside an executable, or another TLS library.
    #[error(
        "TLS library {path}: no exported {missing} (a statically linked or stripped OpenSSL, BoringSSL \
         inside an executable, or not OpenSSL at all: give the path of OpenSSL's libssl.so)"
    )]
    MissingSymbols { path: PathBuf, missing: String },
}

/// Functions probed in a library. The first three are required; the `_ex` forms are
/// probed when present (OpenSSL >= 1.1.1; Python's ssl module uses them).
pub const REQUIRED_SYMBOLS: [&str; 3] = ["SSL_read", "SSL_write", "SSL_free"];
pub const OPTIONAL_SYMBOLS: [&str; 2] = ["SSL_read_ex", "SSL_write_ex"];

/// The probed symbols a library exports (required ones checked), or why it cannot be probed.
pub fn check_library(path: &Path) -> Result<Vec<&'static str>, TlsLibError> {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(path).map_err(|source| TlsLibError::Unreadable { path: path.to_path_buf(), source })?;
    let file = object::File::parse(&*data)
        .map_err(|e| TlsLibError::NotElf { path: path.to_path_buf(), detail: e.to_string() })?;
    let exported: HashSet<&str> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok())
        .collect();
    let missing: Vec<&str> = REQUIRED_SYMBOLS.iter().copied().filter(|s| !exported.contains(s)).collect();
    if !missing.is_empty() {
        return Err(TlsLibError::MissingSymbols { path: path.to_path_buf(), missing: missing.join(", ") });
    }
    Ok(REQUIRED_SYMBOLS.iter().chain(&OPTIONAL_SYMBOLS).copied().filter(|s| exported.contains(s)).collect())
}

/// The file a `/proc/PID/maps` line maps (absolute path, not deleted), if any.
pub fn path_in_maps_line(line: &str) -> Option<&str> {
    // address perms offset dev inode path; the path may contain spaces.
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start().split_once(' ').map(|(_, r)| r)?;
    }
    let path = rest.trim_start();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// The file a `/proc/PID/maps` line maps, if its name is `libssl.so*`.
pub fn libssl_in_maps_line(line: &str) -> Option<&str> {
    let path = path_in_maps_line(line)?;
    path.rsplit('/').next()?.starts_with("libssl.so").then_some(path)
}

/// Identity of a file: uprobes attach per inode, so a file reached by several paths
/// (several processes, mount namespaces) is probed once.
pub type FileId = (u64, u64);

pub fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Finds libssl files mapped by processes under a `/proc`-like directory.
pub struct Discovery {
    proc_dir: PathBuf,
    /// Processes already scanned (their maps are read again only on a full rescan).
    scanned: HashSet<u32>,
    /// Libraries found so far, by file identity.
    known: HashMap<FileId, PathBuf>,
}

impl Discovery {
    pub fn new(proc_dir: impl Into<PathBuf>) -> Discovery {
        Discovery { proc_dir: proc_dir.into(), scanned: HashSet::new(), known: HashMap::new() }
    }

    /// Marks a library as known (e.g. one given with `--tls-lib PATH`).
    pub fn add_known(&mut self, id: FileId, path: PathBuf) {
        self.known.entry(id).or_insert(path);
    }

    /// Scans processes not scanned yet (all of them with `full`) and returns the
    /// libraries not seen before, each once, as a path through `/proc/PID/root` with
    /// the pid that maps it. Processes that vanish meanwhile are skipped.
    pub fn scan(&mut self, full: bool) -> Vec<(u32, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.proc_dir) else { return Vec::new() };
        let pids: Vec<u32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        let live: HashSet<u32> = pids.iter().copied().collect();
        self.scanned.retain(|p| live.contains(p));
        let mut found = Vec::new();
        for pid in pids {
            if !self.scanned.insert(pid) && !full {
                continue;
            }
            let Ok(maps) = std::fs::read_to_string(self.proc_dir.join(format!("{pid}/maps"))) else { continue };
            let mut paths: Vec<&str> = maps.lines().filter_map(libssl_in_maps_line).collect();
            paths.dedup();
            for p in paths {
                // Through the process's root: the same path may name another file in
                // another mount namespace.
                let path = self.proc_dir.join(format!("{pid}/root")).join(p.trim_start_matches('/'));
                let Ok(id) = file_id(&path) else { continue };
                if let std::collections::hash_map::Entry::Vacant(e) = self.known.entry(id) {
                    e.insert(path.clone());
                    found.push((pid, path));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_libssl_only() {
        let l = "7f39cc583000-7f39cc5a1000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3";
        assert_eq!(libssl_in_maps_line(l), Some("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        let l = "7f39cc583000-7f39cc5a1000 r-xp 00000000 fe:01 1234   /opt/my dir/libssl.so.1.1";
        assert_eq!(libssl_in_maps_line(l), Some("/opt/my dir/libssl.so.1.1"));
        for l in [
            "7f39cc583000-7f39cc5a1000 r--p 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3",
            "7f39cc583000-7f39cc5a1000 rw-p 00000000 00:00 0 ",
            "7ffd3c1e1000-7ffd3c202000 rw-p 00000000 00:00 0                          [stack]",
            "7f39cc583000-7f39cc5a1000 r--p 00000000 fe:01 7 /usr/lib/libssl.so.3 (deleted)",
            "garbage",
        ] {
            assert_eq!(libssl_in_maps_line(l), None, "{l}");
        }
    }

    #[test]
    fn specs_parse() {
        assert_eq!("auto".parse(), Ok(TlsLibSpec::Auto));
        assert_eq!("/x/libssl.so.3".parse(), Ok(TlsLibSpec::Path("/x/libssl.so.3".into())));
        assert!("".parse::<TlsLibSpec>().is_err());
    }

    /// A fake /proc: two processes mapping the same library (one file, found once) and
    /// one in "another mount namespace" whose root holds a different file at the same path.
    #[test]
    fn discovery_finds_each_library_file_once_through_each_process_root() {
        let base = std::env::temp_dir().join(format!("capture-tls-libs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let lib = "usr/lib/libssl.so.3";
        let line = |p: &str| format!("7f0000000000-7f0000001000 r-xp 00000000 fe:01 42 /{p}\n");
        let host_lib = base.join("hostroot").join(lib);
        std::fs::create_dir_all(host_lib.parent().unwrap()).unwrap();
        std::fs::write(&host_lib, b"host").unwrap();
        for pid in [10, 11, 12] {
            let dir = base.join(format!("proc/{pid}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("maps"), line(lib)).unwrap();
            if pid == 12 {
                let other = dir.join("root").join(lib);
                std::fs::create_dir_all(other.parent().unwrap()).unwrap();
                std::fs::write(&other, b"container").unwrap();
            } else {
                std::os::unix::fs::symlink(base.join("hostroot"), dir.join("root")).unwrap();
            }
        }
        let mut d = Discovery::new(base.join("proc"));
        let found = d.scan(false);
        let pids: Vec<u32> = found.iter().map(|(p, _)| *p).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(pids.contains(&12));
        assert!(d.scan(false).is_empty(), "nothing new");
        // A new process with a new library file.
        let dir = base.join("proc/13");
        std::fs::create_dir_all(dir.join("root/usr/lib")).unwrap();
        std::fs::write(dir.join("root").join(lib), b"new").unwrap();
        std::fs::write(dir.join("maps"), line(lib)).unwrap();
        let found = d.scan(false);
        assert_eq!(found.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [13]);
        assert!(d.scan(true).is_empty(), "a full rescan finds no file twice");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn library_checks_say_what_is_wrong() {
        let err = check_library(Path::new("/nonexistent/libssl.so.3")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/libssl.so.3"), "{err}");
        // An ELF file without OpenSSL: this test binary.
        let me = std::env::current_exe().unwrap();
        let err = check_library(&me).unwrap_err();
        assert!(matches!(err, TlsLibError::MissingSymbols { .. }), "{err}");
        assert!(err.to_string().contains("SSL_read"), "{err}");
        let not_elf = std::env::temp_dir().join(format!("capture-not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"hello").unwrap();
        assert!(matches!(check_library(&not_elf), Err(TlsLibError::NotElf { .. })));
        let _ = std::fs::remove_file(&not_elf);
        // Debian's OpenSSL 3, where installed.
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if lib.exists() {
            assert_eq!(check_library(lib).unwrap(), ["SSL_read", "SSL_write", "SSL_free", "SSL_read_ex", "SSL_write_ex"]);
        }
    }
}
