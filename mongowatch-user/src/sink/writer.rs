//! What every output kind is to the pipeline: a writer of records. The line formats over
//! stdout or a file ([`super::Sink`]) are one; the export layer's OTLP exporter is another.

use super::{Sink, SinkError};
use crate::record::Record;

/// One output's writer. The pipeline gives each output its own worker thread and bounded
/// queue, and calls these from that thread only: a writer may block (a slow disk, a peer
/// that is down) without holding back capture or the other outputs.
///
/// An error is final: it is said once on stderr, and the output's later records are counted
/// as failed, not written. A writer whose failures can heal (a network peer that comes back)
/// retries inside `write`/`flush` instead of returning them.
pub trait RecordWriter: Send {
    /// Writes one record (already filtered and masked for this output).
    fn write(&mut self, r: &Record) -> Result<(), SinkError>;
    /// Called whenever the output's queue runs empty: push out what is buffered.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Called once after the last record, at exit.
    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}

impl RecordWriter for Sink {
    fn write(&mut self, r: &Record) -> Result<(), SinkError> {
        Sink::write(self, r)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Sink::flush(self)
    }
}
