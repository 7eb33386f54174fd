//! `.gor` files with size-based rotation, holding only whole records.
//!
//! The first file is the configured path; when it reaches the rotation size the
//! next record goes to `name.1.gor`, then `name.2.gor`, ... Files are never
//! renamed, so a reader can follow them while they are written. Files are created
//! new (see [`crate::files`]): an existing capture is never overwritten.
//!
//! Whole records or none: records are collected in a chunk of whole records and
//! written together (large payloads are not copied into it: they are written from
//! their own buffers in the same `writev`). If a write fails part-way (a full disk), the file is cut back
//! to the end of the last record that reached it whole, the records after it are
//! counted failed, and writing goes on with the next record when space frees up.
//! A record is counted written only once it is on the file whole.
//!
//! The writes run on a thread of their own: the pipeline thread lays records out in a
//! chunk and hands whole chunks over (at most [`CHUNKS_IN_FLIGHT`] wait, then the
//! pipeline waits too), so the kernel's copy of the last chunk into the page cache
//! (about half of the agent's CPU with 64 KiB bodies) runs beside the framing of the
//! next records instead of after it. Rotation follows the bytes handed over: a chunk
//! ends where the file reaches the rotation size, and the writer starts the next file
//! before the chunk after it (if the file really is that long: failed writes do not count).

use std::fs::File;
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{RecordSink, SinkError, SinkStats};
use crate::files::{self, FileOptions};
use bytes::Bytes;

use crate::record::{AddrTexts, Record, FILE_SEPARATOR};

/// Bytes copied into a chunk (header lines, small payloads) before it is handed to the
/// writer (at 100 B responses, 64 KiB meant ~400 wake-ups of the writer a second).
const BUFFER_BYTES: usize = 1 << 18;
/// Bytes a chunk puts in the file (large payloads included) before it is handed to the
/// writer: each hand-over wakes the writer thread, and with 64 KiB bodies a wake-up per
/// record cost more CPU than the thread saved.
const CHUNK_BYTES: usize = 1 << 20;
/// Payloads at least this long are written from their own buffer, not copied.
const LARGE_PAYLOAD_BYTES: usize = 4096;
/// Large payloads collected at most before they are written (writev takes up to 1024 slices).
const MAX_LARGE: usize = 256;
/// Chunks handed to the writer thread and not written yet, at most (each about
/// `BUFFER_BYTES` copied or `CHUNK_BYTES` in all, plus one record).
const CHUNKS_IN_FLIGHT: usize = 4;

/// Whole records to write together, and where each one ends in the output (`buf`
/// with the `large` payloads in their places).
struct Chunk {
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// Large payloads and the position in `buf` they go before.
    large: Vec<(usize, Bytes)>,
    large_bytes: usize,
}

impl Chunk {
    fn new() -> Chunk {
        Chunk { buf: Vec::with_capacity(1 << 16), ends: Vec::new(), large: Vec::new(), large_bytes: 0 }
    }

    /// Bytes this chunk puts in the file.
    fn len(&self) -> usize {
        self.buf.len() + self.large_bytes
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.large.clear();
        self.large_bytes = 0;
        if self.buf.capacity() > 2 * BUFFER_BYTES {
            self.buf.shrink_to(BUFFER_BYTES);
        }
    }
}

enum Job {
    Write(Chunk),
    /// Answer once every chunk handed over before this is written.
    Sync(SyncSender<()>),
}

/// What the writer thread reports to the sink.
#[derive(Default)]
struct Shared {
    stats: SinkStats,
    /// The first write error the sink has not returned yet.
    error: Option<SinkError>,
}

pub struct FileSink {
    base: PathBuf,
    rotate_bytes: u64,
    /// Bytes handed to the writer for the current file, as if every write succeeds:
    /// where a chunk must end so that the next record starts the next file.
    file_bytes: u64,
    /// Records being collected.
    chunk: Chunk,
    /// Records handed to the writer (written, failed or still in flight).
    handed: u64,
    addrs: AddrTexts,
    /// `None` once the writer is stopped (on drop).
    jobs: Option<SyncSender<Job>>,
    /// Written chunks come back to be filled again: no allocation per chunk.
    spare: Receiver<Chunk>,
    shared: Arc<Mutex<Shared>>,
    writer: Option<JoinHandle<()>>,
}

/// The writer thread's side: the file being written and where its whole records end.
struct FileWriter {
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
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The writer never panics while holding it; if it did, its counts are still the best we have.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileSink {
    /// Creates the file at `base` (which must not exist yet) and starts its writer thread.
    pub fn create(base: &Path, rotate_bytes: u64, options: FileOptions) -> Result<Self, SinkError> {
        let file = open(base, &options)?;
        let rotate_bytes = rotate_bytes.max(1);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let writer = FileWriter {
            base: base.to_path_buf(),
            rotate_bytes,
            options,
            index: 0,
            current: base.to_path_buf(),
            file,
            committed: 0,
            torn: false,
            shared: shared.clone(),
        };
        let (jobs, jobs_rx) = sync_channel(CHUNKS_IN_FLIGHT);
        let (spare_tx, spare) = sync_channel(CHUNKS_IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("capture-file".into())
            .spawn(move || writer.run(jobs_rx, spare_tx))
            .map_err(|e| SinkError::Io { sink: format!("file://{}", base.display()), source: e })?;
        Ok(FileSink {
            base: base.to_path_buf(),
            rotate_bytes,
            file_bytes: 0,
            chunk: Chunk::new(),
            handed: 0,
            addrs: AddrTexts::default(),
            jobs: Some(jobs),
            spare,
            shared,
            writer: Some(thread),
        })
    }

    /// Hands the records collected to the writer thread (waiting while
    /// `CHUNKS_IN_FLIGHT` chunks are not written yet); returns a write error the
    /// writer met since the last call, if any.
    fn hand_over(&mut self) -> Result<(), SinkError> {
        if !self.chunk.ends.is_empty() {
            let next = self.spare.try_recv().unwrap_or_else(|_| Chunk::new());
            let chunk = std::mem::replace(&mut self.chunk, next);
            let (records, bytes) = (chunk.ends.len() as u64, chunk.len() as u64);
            self.handed += records;
            self.file_bytes += bytes;
            if self.file_bytes >= self.rotate_bytes {
                self.file_bytes = 0;
            }
            let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job::Write(chunk)).is_ok());
            if !sent {
                let mut shared = lock(&self.shared);
                shared.stats.records_failed += records;
                add_reason(&mut shared.stats, "write_error", records);
                shared.error.get_or_insert_with(|| SinkError::Io {
                    sink: format!("file://{}", self.base.display()),
                    source: std::io::Error::other("the file writer thread stopped"),
                });
            }
        }
        match lock(&self.shared).error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until every chunk handed over is written.
    fn wait_written(&mut self) {
        let (done_tx, done) = sync_channel(1);
        if self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job::Sync(done_tx)).is_ok()) {
            let _ = done.recv();
        }
    }
}

impl FileWriter {
    fn run(mut self, jobs: Receiver<Job>, spare: SyncSender<Chunk>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Write(mut chunk) => {
                    self.write_chunk(&chunk);
                    chunk.clear();
                    let _ = spare.try_send(chunk);
                }
                Job::Sync(done) => {
                    let _ = done.send(());
                }
            }
        }
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

    /// Writes a chunk, in the next file once this one reached the rotation size. On an
    /// error, the file is cut back to its last whole record and the records that did
    /// not reach it whole are counted failed.
    fn write_chunk(&mut self, chunk: &Chunk) {
        if chunk.ends.is_empty() {
            return;
        }
        if self.committed >= self.rotate_bytes {
            if let Err(e) = self.open_next() {
                self.report(0, 0, chunk.ends.len() as u64, "write_error", Some(e));
                return;
            }
        }
        let mut result = self.cut_back();
        let total = chunk.len();
        let mut slices = Vec::with_capacity(2 * chunk.large.len() + 1);
        let mut at = 0;
        for (pos, payload) in &chunk.large {
            slices.push(IoSlice::new(&chunk.buf[at..*pos]));
            slices.push(IoSlice::new(payload));
            at = *pos;
        }
        slices.push(IoSlice::new(&chunk.buf[at..]));
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
        let whole = chunk.ends.partition_point(|&end| end <= done);
        let whole_bytes = whole.checked_sub(1).map_or(0, |i| chunk.ends[i]);
        self.committed += whole_bytes as u64;
        if done > whole_bytes {
            self.torn = true;
        }
        let failed = (chunk.ends.len() - whole) as u64;
        match result {
            Ok(()) => self.report(whole as u64, whole_bytes as u64, 0, "", None),
            Err(e) => {
                let reason = if e.raw_os_error() == Some(libc::ENOSPC) { "no_space" } else { "write_error" };
                // Leave only whole records behind; if that fails, the next write tries again.
                let _ = self.cut_back();
                let e = self.error(e);
                self.report(whole as u64, whole_bytes as u64, failed, reason, Some(e));
            }
        }
    }

    fn report(&self, written: u64, bytes: u64, failed: u64, reason: &str, error: Option<SinkError>) {
        let mut shared = lock(&self.shared);
        shared.stats.records_written += written;
        shared.stats.bytes_written += bytes;
        if failed > 0 {
            shared.stats.records_failed += failed;
            add_reason(&mut shared.stats, reason, failed);
        }
        if shared.error.is_none() {
            shared.error = error;
        }
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
        if self.file_bytes + self.chunk.len() as u64 >= self.rotate_bytes {
            result = self.hand_over();
        }
        let chunk = &mut self.chunk;
        record.write_header_line_cached(&mut chunk.buf, &mut self.addrs);
        if record.payload.len() >= LARGE_PAYLOAD_BYTES {
            chunk.large.push((chunk.buf.len(), record.payload.clone()));
            chunk.large_bytes += record.payload.len();
        } else {
            // As `write_gor` writes it, straight into the buffer (no line buffer per record).
            chunk.buf.extend_from_slice(&record.payload);
        }
        chunk.buf.extend_from_slice(FILE_SEPARATOR);
        chunk.ends.push(chunk.len());
        if chunk.buf.len() >= BUFFER_BYTES || chunk.len() >= CHUNK_BYTES || chunk.large.len() >= MAX_LARGE {
            result = result.and(self.hand_over());
        }
        result
    }

    /// Hands what is collected to the writer without waiting for it to be written.
    fn flush(&mut self) -> Result<(), SinkError> {
        self.hand_over()
    }

    /// Hands what is collected over and waits until the writer has written it all.
    fn close(&mut self) -> Result<(), SinkError> {
        let result = self.hand_over();
        self.wait_written();
        result.and(match lock(&self.shared).error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        })
    }

    fn stats(&self) -> SinkStats {
        let mut stats = lock(&self.shared).stats.clone();
        let settled = stats.records_written + stats.records_failed;
        stats.records_pending = self.chunk.ends.len() as u64 + self.handed.saturating_sub(settled);
        stats
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        let _ = self.hand_over();
        // The writer writes what it was handed, then ends when the channel closes.
        self.jobs = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
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
        sink.close().unwrap();
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
