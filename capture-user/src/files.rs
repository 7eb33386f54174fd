//! Creating output files safely. Captures, stream logs and reports hold production
//! traffic and are written by a privileged process, often into shared places:
//! - the last path component is never followed if it is a symbolic link
//!   (`O_NOFOLLOW`), and a file is only ever created new (`O_EXCL`): a link or file
//!   planted at the path by another user is refused, never written through;
//! - a directory writable by other users without the sticky bit (where they could
//!   swap files) is refused unless explicitly allowed;
//! - files get mode 0600 unless asked otherwise (the umask does not widen or narrow
//!   an explicit mode).
//!
//! Captures are never overwritten ([`create_new`] refuses an existing path); reports
//! are replaced atomically ([`replace`]: a new file renamed over the path, which
//! replaces a link instead of following it).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How output files are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// Permission bits of new files (at most 0o666).
    pub mode: u32,
    /// Write into directories other users may write to without the sticky bit.
    pub allow_unsafe_dir: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { mode: 0o600, allow_unsafe_dir: false }
    }
}

/// Why an output file was not created.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Something already exists at the path; captures are never overwritten.
    #[error("{0}: already exists; captures are never overwritten (move it away or choose another name)")]
    Exists(PathBuf),
    /// The path is a symbolic link; files are not written through links.
    #[error("{0}: is a symbolic link; output files are never written through a link")]
    Symlink(PathBuf),
    /// The file at the path has other hard links: it may be another user's file.
    #[error("{0}: has other hard links; output files are never written into a linked file")]
    HardLinked(PathBuf),
    /// The path is a directory (or another non-file) where a file was expected.
    #[error("{0}: is not a regular file")]
    NotAFile(PathBuf),
    /// Other users may write to the directory and it has no sticky bit.
    #[error(
        "{dir}: other users may write to this directory (mode {mode:04o}, no sticky bit) and could swap files in it; \
         use a directory only root (or you) can write to, or pass --allow-unsafe-dir"
    )]
    UnsafeDir { dir: PathBuf, mode: u32 },
    /// A system call failed (the cause is the source, so `{:#}` says it once).
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io { path: path.to_path_buf(), source }
}

/// Parses a `--file-mode` value: octal permission bits up to 0666 (`600`, `0640`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode & !0o666 == 0 => Ok(mode),
        _ => Err(format!("{s:?}: expected octal permission bits without execute bits, e.g. 600 or 640")),
    }
}

/// The directory a file at `path` goes into.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Refuses a directory other users may write to without the sticky bit.
fn check_dir(path: &Path, options: &FileOptions) -> Result<(), FileError> {
    let dir = parent_dir(path);
    let meta = std::fs::metadata(dir).map_err(io_error(dir))?;
    let mode = meta.permissions().mode() & 0o7777;
    let shared = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if shared && !options.allow_unsafe_dir {
        return Err(FileError::UnsafeDir { dir: dir.to_path_buf(), mode });
    }
    Ok(())
}

/// Checks, without creating anything, that [`create_new`] would be allowed: the
/// directory is safe and nothing exists at the path. For early, clear errors; the
/// creation itself checks again.
pub fn check_new(path: &Path, options: &FileOptions) -> Result<(), FileError> {
    check_dir(path, options)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(FileError::Symlink(path.to_path_buf())),
        Ok(_) => Err(FileError::Exists(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Creates a new file for writing: never through a symbolic link, never over an
/// existing file, with exactly `options.mode`.
pub fn create_new(path: &Path, options: &FileOptions) -> Result<File, FileError> {
    check_dir(path, options)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(options.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => FileError::Symlink(path.to_path_buf()),
                _ => FileError::Exists(path.to_path_buf()),
            },
            _ => io_error(path)(e),
        })?;
    // The umask may have narrowed the mode; an explicit mode is what the user asked for.
    file.set_permissions(std::fs::Permissions::from_mode(options.mode)).map_err(io_error(path))?;
    Ok(file)
}

/// Opens a file that a rerun rewrites and that is written as it goes (a JSON-lines log,
/// an export): created with `options.mode` or truncated, never through a symbolic
/// link, never a file with other hard links (it could be someone else's file), and
/// left with exactly `options.mode`.
pub fn create_or_truncate(path: &Path, options: &FileOptions) -> Result<File, FileError> {
    use std::os::unix::fs::MetadataExt;
    check_dir(path, options)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(options.mode)
        // O_NONBLOCK: a FIFO planted at the path must not block the open (it is then
        // refused as not a file); regular files ignore the flag.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => FileError::Symlink(path.to_path_buf()),
            _ => io_error(path)(e),
        })?;
    // Checked on the open file, so nothing can be swapped in between.
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(FileError::NotAFile(path.to_path_buf()));
    }
    if meta.nlink() > 1 {
        return Err(FileError::HardLinked(path.to_path_buf()));
    }
    file.set_len(0).map_err(io_error(path))?;
    file.set_permissions(std::fs::Permissions::from_mode(options.mode)).map_err(io_error(path))?;
    Ok(file)
}

/// Writes `contents` as the file at `path`, replacing what is there atomically: a new
/// file next to it, renamed over the path (a link at the path is replaced, not
/// followed). For reports, which a rerun rewrites.
pub fn replace(path: &Path, contents: &[u8], options: &FileOptions) -> Result<(), FileError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(FileError::NotAFile(path.to_path_buf()));
    }
    let name = path.file_name().ok_or_else(|| FileError::NotAFile(path.to_path_buf()))?;
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = parent_dir(path).join(format!(".{}.{}.{attempt}.tmp", name.to_string_lossy(), std::process::id()));
        match create_new(&tmp, options) {
            Ok(file) => break (tmp, file),
            Err(FileError::Exists(_) | FileError::Symlink(_)) if attempt < 100 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let written = file.write_all(contents).and_then(|()| file.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path)(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("capture-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Issue 10, finding 5: a symlink planted at the output path made the agent
    /// overwrite the file it pointed to.
    /// A report path that is a symbolic link, or a hard link to another file, is never
    /// written through; an existing report is truncated and made private.
    #[test]
    fn reports_rewritten_in_place_never_follow_links() {
        use std::io::Write;
        let dir = temp_dir("rewrite");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        let link = dir.join("report.jsonl");
        symlink(&victim, &link).unwrap();
        assert!(matches!(create_or_truncate(&link, &FileOptions::default()), Err(FileError::Symlink(_))));
        std::fs::remove_file(&link).unwrap();
        std::fs::hard_link(&victim, &link).unwrap();
        assert!(matches!(create_or_truncate(&link, &FileOptions::default()), Err(FileError::HardLinked(_))));
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, b"an older, longer report").unwrap();
        std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_or_truncate(&link, &FileOptions::default()).unwrap().write_all(b"new").unwrap();
        assert_eq!((std::fs::read(&link).unwrap(), mode(&link)), (b"new".to_vec(), 0o600));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_output_files_symlink_is_refused_and_its_target_untouched() {
        let dir = temp_dir("link");
        let target = dir.join("secret");
        std::fs::write(&target, "root only").unwrap();
        let link = dir.join("out.gor");
        symlink(&target, &link).unwrap();
        let opts = FileOptions::default();
        assert!(matches!(check_new(&link, &opts), Err(FileError::Symlink(_))));
        assert!(matches!(create_new(&link, &opts), Err(FileError::Symlink(_))));
        // A dangling link is refused too (O_EXCL does not create through it).
        let dangling = dir.join("dangling.gor");
        symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(matches!(create_new(&dangling, &opts), Err(FileError::Symlink(_))));
        assert!(!dir.join("nowhere").exists());
        // A report replaced at a link path replaces the link, not its target.
        replace(&link, b"report", &opts).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root only");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "report");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_output_files_existing_capture_is_never_overwritten() {
        let dir = temp_dir("exists");
        let path = dir.join("capture.gor");
        std::fs::write(&path, "previous capture").unwrap();
        let err = create_new(&path, &FileOptions::default()).unwrap_err();
        assert!(matches!(err, FileError::Exists(_)));
        assert!(err.to_string().contains("capture.gor") && err.to_string().contains("never overwritten"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "previous capture");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_output_files_modes_are_private_by_default_and_exact_when_asked() {
        let dir = temp_dir("modes");
        let a = dir.join("a.gor");
        create_new(&a, &FileOptions::default()).unwrap();
        assert_eq!(mode(&a), 0o600);
        let b = dir.join("b.gor");
        create_new(&b, &FileOptions { mode: 0o640, ..FileOptions::default() }).unwrap();
        assert_eq!(mode(&b), 0o640);
        let report = dir.join("report.json");
        replace(&report, b"{}", &FileOptions::default()).unwrap();
        replace(&report, b"{\"again\":1}", &FileOptions::default()).unwrap();
        assert_eq!((mode(&report), std::fs::read_to_string(&report).unwrap()), (0o600, "{\"again\":1}".into()));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3, "no temporary file left");
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("755").is_err() && parse_mode("rw").is_err() && parse_mode("1600").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_output_files_shared_directory_needs_the_sticky_bit_or_consent() {
        let dir = temp_dir("shared");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.join("out.gor");
        let err = create_new(&path, &FileOptions::default()).unwrap_err();
        assert!(matches!(err, FileError::UnsafeDir { mode: 0o777, .. }), "{err}");
        assert!(!path.exists());
        create_new(&path, &FileOptions { allow_unsafe_dir: true, ..FileOptions::default() }).unwrap();
        // With the sticky bit (like /tmp) others cannot remove or rename our files.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        create_new(&dir.join("sticky.gor"), &FileOptions::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
