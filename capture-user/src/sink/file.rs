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

    #[test]
    fn rotated_names_keep_extension() {
        assert_eq!(rotated_path(Path::new("/x/out.gor"), 2), PathBuf::from("/x/out.2.gor"));
        assert_eq!(rotated_path(Path::new("/x/out"), 1), PathBuf::from("/x/out.1"));
    }
}
