//! Sinks: where records are written. Each sink keeps its own accounting.

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod stdout;

use std::io::Write;

use crate::record::{Record, FILE_SEPARATOR};

/// Writes a record as in `.gor` files (header line, payload, separator); returns its size.
pub fn write_gor(out: &mut impl Write, record: &Record) -> std::io::Result<u64> {
    // Header lines are ~120 bytes: room for one without regrowing.
    let mut header = Vec::with_capacity(192);
    record.write_header_line(&mut header);
    out.write_all(&header)?;
    out.write_all(&record.payload)?;
    out.write_all(FILE_SEPARATOR)?;
    Ok((header.len() + record.payload.len() + FILE_SEPARATOR.len()) as u64)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Records written (files, stdout) or acknowledged by the broker (Kafka).
    pub records_written: u64,
    pub bytes_written: u64,
    /// Records accepted but never written/acknowledged (write error, delivery failure).
    pub records_failed: u64,
    /// Records refused before queueing (Kafka: buffer full, too large).
    pub records_dropped: u64,
    /// Records still queued (Kafka: waiting for the broker).
    pub records_pending: u64,
    /// Kafka: records larger than --kafka-part-size, sent as continuation records.
    pub records_split: u64,
    /// Kafka: continuation records acknowledged (parts of the split records).
    pub parts_written: u64,
    /// Kafka: messages acknowledged (a `batch` message carries several records).
    pub messages_written: u64,
    /// Failures and drops by reason, e.g. `("message_timed_out", 3)`.
    pub reasons: Vec<(String, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing to the output failed; the cause is the source.
    #[error("{sink}")]
    Io {
        sink: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{sink}: {message}")]
    Kafka { sink: String, message: String },
    /// An output file could not be created safely; why is the source.
    #[error("{sink}")]
    File {
        sink: String,
        #[source]
        source: crate::files::FileError,
    },
}

pub trait RecordSink: Send {
    /// Human-readable name, e.g. `file:///var/lib/capture/out.gor`.
    fn describe(&self) -> String;
    /// Writes or queues one record. Must not block for long: it runs on the pipeline thread.
    fn write(&mut self, record: &Record) -> Result<(), SinkError>;
    /// The pipeline finished a batch of ring events: records held to be sent together
    /// (Kafka packs) may leave now (each sink bounds how long they wait; a flush sends them).
    fn end_batch(&mut self) {}
    /// Pushes buffered data out without waiting for acknowledgements (periodic).
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Final flush at shutdown; may wait, bounded by the sink's own timeout.
    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
    fn stats(&self) -> SinkStats;
}
