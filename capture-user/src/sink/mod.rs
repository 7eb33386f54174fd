//! Sinks: where records are written. Each sink keeps its own accounting.

pub mod file;
pub mod stdout;

use crate::record::Record;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub records_written: u64,
    pub bytes_written: u64,
    pub records_failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {source}")]
    Io {
        sink: String,
        #[source]
        source: std::io::Error,
    },
}

pub trait RecordSink: Send {
    /// Human-readable name, e.g. `file:///var/lib/capture/out.gor`.
    fn describe(&self) -> String;
    fn write(&mut self, record: &Record) -> Result<(), SinkError>;
    fn flush(&mut self) -> Result<(), SinkError>;
    fn stats(&self) -> SinkStats;
}
