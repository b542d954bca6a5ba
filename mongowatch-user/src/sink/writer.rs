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
    /// Records `write` took that are not written out yet (a writer that writes in batches
    /// holds them until `flush`): not counted as written before they are.
    fn held(&self) -> u64 {
        0
    }
    /// Records `write` took that a later failure lost (a batch that could not be written
    /// whole): counted as failed, not written.
    fn lost(&self) -> u64 {
        0
    }
}

impl RecordWriter for Sink {
    fn write(&mut self, r: &Record) -> Result<(), SinkError> {
        Sink::write(self, r)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Sink::flush(self)
    }

    fn held(&self) -> u64 {
        Sink::held(self)
    }

    fn lost(&self) -> u64 {
        Sink::lost(self)
    }
}
