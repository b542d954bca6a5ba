//! Ops layer: commands and replies -> application-level operations (cursors correlated), and
//! the [`Auditor`] that drives ops -> queue -> filter -> sink for the daemon.
mod auditor;
pub mod command;
pub mod describe;
pub mod input;
pub mod json;
pub mod record;
pub mod tracker;

pub use auditor::{AuditError, AuditStats, Auditor};
pub use input::{ConnInfo, Input};
pub use json::Json;
pub use record::{format_time, secs, ErrorInfo, Record, State, WatchIds, FIELDS};
pub use tracker::{Emit, OpsStats, Tracker, TrackerConfig};
