//! Records on standard output, each ended by the `.gor` separator.

use std::io::Write;

use super::{write_gor, RecordSink, SinkError, SinkStats};
use crate::record::Record;

pub struct StdoutSink {
    out: std::io::BufWriter<std::io::Stdout>,
    stats: SinkStats,
}

impl StdoutSink {
    pub fn new() -> Self {
        StdoutSink { out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()), stats: SinkStats::default() }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordSink for StdoutSink {
    fn describe(&self) -> String {
        "stdout".to_string()
    }

    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        match write_gor(&mut self.out, record) {
            Ok(n) => {
                self.stats.records_written += 1;
                self.stats.bytes_written += n;
                Ok(())
            }
            Err(source) => {
                self.stats.records_failed += 1;
                Err(SinkError::Io { sink: self.describe(), source })
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Io { sink: "stdout".into(), source })
    }

    fn stats(&self) -> SinkStats {
        self.stats.clone()
    }
}
