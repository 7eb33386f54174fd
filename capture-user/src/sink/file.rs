//! `.gor` files with size-based rotation.
//!
//! The first file is the configured path; when it reaches the rotation size the
//! next record goes to `name.1.gor`, then `name.2.gor`, ... Files are never
//! renamed, so a reader can follow them while they are written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{write_gor, RecordSink, SinkError, SinkStats};
use crate::record::Record;

pub struct FileSink {
    base: PathBuf,
    rotate_bytes: u64,
    index: u32,
    current: PathBuf,
    out: BufWriter<File>,
    current_bytes: u64,
    stats: SinkStats,
}

impl FileSink {
    pub fn create(base: &Path, rotate_bytes: u64) -> Result<Self, SinkError> {
        let out = open(base)?;
        Ok(FileSink {
            base: base.to_path_buf(),
            rotate_bytes: rotate_bytes.max(1),
            index: 0,
            current: base.to_path_buf(),
            out,
            current_bytes: 0,
            stats: SinkStats::default(),
        })
    }

    /// Path of the file being written now.
    pub fn current_path(&self) -> &Path {
        &self.current
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.index += 1;
        let path = rotated_path(&self.base, self.index);
        self.out = open(&path)?;
        self.current = path;
        self.current_bytes = 0;
        Ok(())
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

fn open(path: &Path) -> Result<BufWriter<File>, SinkError> {
    let file = File::create(path)
        .map_err(|source| SinkError::Io { sink: format!("file://{}", path.display()), source })?;
    Ok(BufWriter::with_capacity(1 << 16, file))
}

impl RecordSink for FileSink {
    fn describe(&self) -> String {
        format!("file://{}", self.base.display())
    }

    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        if self.current_bytes >= self.rotate_bytes {
            self.rotate()?;
        }
        match write_gor(&mut self.out, record) {
            Ok(n) => {
                self.current_bytes += n;
                self.stats.records_written += 1;
                self.stats.bytes_written += n;
                Ok(())
            }
            Err(source) => {
                self.stats.records_failed += 1;
                Err(SinkError::Io { sink: format!("file://{}", self.current.display()), source })
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .map_err(|source| SinkError::Io { sink: format!("file://{}", self.current.display()), source })
    }

    fn stats(&self) -> SinkStats {
        self.stats.clone()
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RunId;

    fn record(n: usize) -> Record {
        use crate::connections::ConnectionInfo;
        use crate::http::{HttpMessage, MessageKind};
        use crate::record::{RecordContext, RunId};
        let addr = "127.0.0.1:1".parse().unwrap();
        let conn = ConnectionInfo { id: 1, flow: crate::flow::FlowKey { client: addr, server: addr }, ifindex: 1, opened_ns: 0, saw_syn: true };
        let ctx = RecordContext { run: RunId(7), node: "n".into(), wall_offset_ns: 0 };
        let msg = HttpMessage {
            kind: MessageKind::Request,
            exchange: n as u64,
            paired: true,
            bytes: bytes::Bytes::from(vec![b'x'; 100]),
            original_len: 100,
            truncated: false,
            ambiguous: None,
            start_ns: 1,
            end_ns: 2,
            request_start_ns: None,
            request_end_ns: None,
            method: None,
            target: None,
            status: None,
        };
        Record::from_message(msg, &conn, &ctx)
    }

    #[test]
    fn rotates_at_the_size_limit_and_keeps_every_record() {
        let dir = std::env::temp_dir().join(format!("capture-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("out.gor");
        let mut sink = FileSink::create(&base, 300).unwrap();
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

    #[test]
    fn rotated_names_keep_extension() {
        assert_eq!(rotated_path(Path::new("/x/out.gor"), 2), PathBuf::from("/x/out.2.gor"));
        assert_eq!(rotated_path(Path::new("/x/out"), 1), PathBuf::from("/x/out.1"));
    }
}
