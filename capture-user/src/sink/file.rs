//! `.gor` files with size-based rotation, holding only whole records.
//!
//! The first file is the configured path; when it reaches the rotation size the
//! next record goes to `name.1.gor`, then `name.2.gor`, ... Files are never
//! renamed, so a reader can follow them while they are written. Files are created
//! new (see [`crate::files`]): an existing capture is never overwritten.
//!
//! Whole records or none: records are collected in a buffer of whole records and
//! written together (large payloads are not copied into it: they are written from
//! their own buffers in the same `writev`). If a write fails part-way (a full disk), the file is cut back
//! to the end of the last record that reached it whole, the records after it are
//! counted failed, and writing goes on with the next record when space frees up.
//! A record is counted written only once it is on the file whole.

use std::fs::File;
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{RecordSink, SinkError, SinkStats};
use crate::files::{self, FileOptions};
use bytes::Bytes;

use crate::record::{AddrTexts, Record, FILE_SEPARATOR};

/// Bytes of records collected before they are written.
const BUFFER_BYTES: usize = 1 << 16;
/// Payloads at least this long are written from their own buffer, not copied.
const LARGE_PAYLOAD_BYTES: usize = 4096;
/// Large payloads collected at most before they are written (writev takes up to 1024 slices).
const MAX_LARGE: usize = 256;

pub struct FileSink {
    base: PathBuf,
    rotate_bytes: u64,
    options: FileOptions,
    index: u32,
    current: PathBuf,
    file: File,
    /// Bytes of whole records in the current file (where the next write goes).
    committed: u64,
    /// The file may hold a torn tail past `committed` (cutting it back failed).
    torn: bool,
    /// Whole records not written yet, and where each one ends in the output (`buf`
    /// with the `large` payloads in their places).
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// Large payloads not written yet and the position in `buf` they go before.
    large: Vec<(usize, Bytes)>,
    large_bytes: usize,
    stats: SinkStats,
    addrs: AddrTexts,
}

impl FileSink {
    /// Creates the file at `base` (which must not exist yet).
    pub fn create(base: &Path, rotate_bytes: u64, options: FileOptions) -> Result<Self, SinkError> {
        let file = open(base, &options)?;
        Ok(FileSink {
            base: base.to_path_buf(),
            rotate_bytes: rotate_bytes.max(1),
            options,
            index: 0,
            current: base.to_path_buf(),
            file,
            committed: 0,
            torn: false,
            buf: Vec::with_capacity(BUFFER_BYTES),
            ends: Vec::new(),
            large: Vec::new(),
            large_bytes: 0,
            stats: SinkStats::default(),
            addrs: AddrTexts::default(),
        })
    }

    /// Path of the file being written now.
    pub fn current_path(&self) -> &Path {
        &self.current
    }

    /// Starts the next rotated file; a name that already exists is skipped (never
    /// overwritten).
    fn open_next(&mut self) -> Result<(), SinkError> {
        let mut skipped = 0;
        let file = loop {
            self.index += 1;
            let path = rotated_path(&self.base, self.index);
            match files::create_new(&path, &self.options) {
                Ok(file) => {
                    self.current = path;
                    break file;
                }
                Err(files::FileError::Exists(_) | files::FileError::Symlink(_)) if skipped < 1000 => skipped += 1,
                Err(source) => return Err(SinkError::File { sink: format!("file://{}", path.display()), source }),
            }
        };
        self.file = file;
        self.committed = 0;
        self.torn = false;
        Ok(())
    }

    fn error(&self, source: std::io::Error) -> SinkError {
        SinkError::Io { sink: format!("file://{}", self.current.display()), source }
    }

    /// Writes the buffered records. On an error, the file is cut back to its last
    /// whole record and the records that did not reach it whole are counted failed.
    fn write_buffered(&mut self) -> Result<(), SinkError> {
        if self.ends.is_empty() {
            return Ok(());
        }
        let mut result = self.cut_back();
        let total = self.pending_bytes();
        let mut slices = Vec::with_capacity(2 * self.large.len() + 1);
        let mut at = 0;
        for (pos, payload) in &self.large {
            slices.push(IoSlice::new(&self.buf[at..*pos]));
            slices.push(IoSlice::new(payload));
            at = *pos;
        }
        slices.push(IoSlice::new(&self.buf[at..]));
        let mut rest = &mut slices[..];
        let mut done = 0;
        while result.is_ok() && done < total {
            match self.file.write_vectored(rest) {
                Ok(0) => result = Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => result = Err(e),
            }
        }
        drop(slices);
        let whole = self.ends.partition_point(|&end| end <= done);
        let whole_bytes = whole.checked_sub(1).map_or(0, |i| self.ends[i]);
        self.stats.records_written += whole as u64;
        self.stats.bytes_written += whole_bytes as u64;
        self.committed += whole_bytes as u64;
        if done > whole_bytes {
            self.torn = true;
        }
        let failed = (self.ends.len() - whole) as u64;
        self.buf.clear();
        self.ends.clear();
        self.large.clear();
        self.large_bytes = 0;
        if self.buf.capacity() > 4 * BUFFER_BYTES {
            self.buf.shrink_to(BUFFER_BYTES);
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.records_failed += failed;
                let reason = if e.raw_os_error() == Some(libc::ENOSPC) { "no_space" } else { "write_error" };
                add_reason(&mut self.stats, reason, failed);
                // Leave only whole records behind; if that fails, the next write tries again.
                let _ = self.cut_back();
                Err(self.error(e))
            }
        }
    }

    /// Bytes of the records collected and not written yet.
    fn pending_bytes(&self) -> usize {
        self.buf.len() + self.large_bytes
    }

    /// Cuts a torn tail off the file, back to its last whole record.
    fn cut_back(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.committed)?;
            self.file.seek(SeekFrom::Start(self.committed))?;
            self.torn = false;
        }
        Ok(())
    }
}

fn add_reason(stats: &mut SinkStats, reason: &str, n: u64) {
    match stats.reasons.iter_mut().find(|(r, _)| r == reason) {
        Some((_, count)) => *count += n,
        None => stats.reasons.push((reason.to_string(), n)),
    }
}

/// `dir/name.gor` -> `dir/name.<index>.gor`.
pub fn rotated_path(base: &Path, index: u32) -> PathBuf {
    let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}.{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{index}"),
    };
    base.with_file_name(name)
}

fn open(path: &Path, options: &FileOptions) -> Result<File, SinkError> {
    files::create_new(path, options).map_err(|e| SinkError::File { sink: format!("file://{}", path.display()), source: e })
}

impl RecordSink for FileSink {
    fn describe(&self) -> String {
        format!("file://{}", self.base.display())
    }

    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        let mut result = Ok(());
        if self.committed + self.pending_bytes() as u64 >= self.rotate_bytes {
            result = self.write_buffered();
            if self.committed >= self.rotate_bytes {
                if let Err(e) = self.open_next() {
                    self.stats.records_failed += 1;
                    add_reason(&mut self.stats, "write_error", 1);
                    return Err(e);
                }
            }
        }
        if record.payload.len() >= LARGE_PAYLOAD_BYTES {
            record.write_header_line_cached(&mut self.buf, &mut self.addrs);
            self.large.push((self.buf.len(), record.payload.clone()));
            self.large_bytes += record.payload.len();
            self.buf.extend_from_slice(FILE_SEPARATOR);
        } else {
            // As `write_gor` writes it, straight into the buffer (no line buffer per record).
            record.write_header_line_cached(&mut self.buf, &mut self.addrs);
            self.buf.extend_from_slice(&record.payload);
            self.buf.extend_from_slice(FILE_SEPARATOR);
        }
        self.ends.push(self.pending_bytes());
        if self.pending_bytes() >= BUFFER_BYTES || self.large.len() >= MAX_LARGE {
            result = result.and(self.write_buffered());
        }
        result
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.write_buffered()
    }

    fn stats(&self) -> SinkStats {
        let mut stats = self.stats.clone();
        stats.records_pending = self.ends.len() as u64;
        stats
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        let _ = self.write_buffered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RunId;
    use crate::sink::write_gor;

    fn record(n: usize) -> Record {
        record_of(n, 100)
    }

    fn record_of(n: usize, len: usize) -> Record {
        use crate::connections::ConnectionInfo;
        use crate::http::{HttpMessage, MessageKind};
        use crate::record::{RecordContext, RunId};
        let addr = "127.0.0.1:1".parse().unwrap();
        let conn = ConnectionInfo { id: 1, flow: crate::flow::FlowKey { client: addr, server: addr }, ifindex: 1, opened_ns: 0, saw_syn: true, tls: false };
        let ctx = RecordContext { run: RunId(7), node: "n".into(), wall_offset_ns: 0 };
        let msg = HttpMessage {
            kind: MessageKind::Request,
            exchange: n as u64,
            paired: true,
            bytes: bytes::Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
            original_len: len as u64,
            truncated: false,
            ambiguous: None,
            start_ns: 1,
            end_ns: 2,
            request_start_ns: None,
            request_end_ns: None,
            method: None,
            target: None,
            status: None,
            head: None,
        };
        Record::from_message(msg, &conn, &ctx)
    }

    #[test]
    fn rotates_at_the_size_limit_and_keeps_every_record() {
        let dir = std::env::temp_dir().join(format!("capture-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("out.gor");
        let mut sink = FileSink::create(&base, 300, FileOptions::default()).unwrap();
        for n in 0..5 {
            sink.write(&record(n)).unwrap();
        }
        sink.flush().unwrap();
        drop(sink);
        let mut ids = Vec::new();
        for path in [base.clone(), rotated_path(&base, 1), rotated_path(&base, 2)] {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for value in crate::record::split_file(&data) {
                ids.push(crate::record::parse_value(value.unwrap()).unwrap().id);
            }
        }
        assert!(!rotated_path(&base, 3).exists());
        let want: Vec<String> = (0..5).map(|n| RunId(7).record_id(1, n)).collect();
        assert_eq!(ids, want, "every record once, in order, across the rotated files");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Large payloads go out from their own buffers, small ones through the buffer: the
    /// file holds every record byte for byte, in order, as `write_gor` lays it out.
    #[test]
    fn large_and_small_payloads_are_written_byte_exact_in_order() {
        let dir = std::env::temp_dir().join(format!("capture-vectored-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("out.gor");
        let mut sink = FileSink::create(&base, u64::MAX, FileOptions::default()).unwrap();
        let sizes = [100, LARGE_PAYLOAD_BYTES, 70_000, 0, 5_000, 100, 200_000, 1, LARGE_PAYLOAD_BYTES - 1];
        let mut want = Vec::new();
        for (n, len) in sizes.iter().cycle().take(3 * sizes.len() + 300).enumerate() {
            let rec = record_of(n, *len);
            write_gor(&mut want, &rec).unwrap();
            sink.write(&rec).unwrap();
        }
        sink.flush().unwrap();
        let stats = sink.stats();
        drop(sink);
        assert_eq!(std::fs::read(&base).unwrap(), want);
        assert_eq!((stats.records_written, stats.bytes_written), ((3 * sizes.len() + 300) as u64, want.len() as u64));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotated_names_keep_extension() {
        assert_eq!(rotated_path(Path::new("/x/out.gor"), 2), PathBuf::from("/x/out.2.gor"));
        assert_eq!(rotated_path(Path::new("/x/out"), 1), PathBuf::from("/x/out.1"));
    }
}
