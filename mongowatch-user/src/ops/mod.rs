//! Ops layer: commands and replies -> application-level operations (cursors correlated),
//! returned as record snapshots to the pipeline, which drives the queue, filter and sink.
//!
//! Choices the audit record contract leaves open, made here:
//! - Left out unless `include_heartbeats`: `hello`, `isMaster`, `ping`, `saslStart`,
//!   `saslContinue`, `authenticate`, `getnonce`, `logout`, `endSessions` (on any connection:
//!   the monitoring connection cannot be told apart reliably). They still feed the identity.
//! - `Filter` of a find, count, distinct or findAndModify without a filter is `{}` (it matches
//!   everything); commands with no filter have null.
//! - Iteration counts replies: 1 + getMores, and each further exhaust reply counts as one
//!   (it is a getMore the server sent unasked). killCursors adds time and bytes, not an
//!   iteration. An exhaust reply is timed from the previous reply, not the request.
//! - `Compression` is the compressor the request itself travelled with (noop is none); the
//!   negotiated list is only logged.
//! - `User` is set once the authentication conversation succeeds (`done` with `ok: 1`, or an
//!   X.509 reply naming the user); a failed one sets nothing. Payloads are never kept.
//! - A connection close ends the open cursors of that (pid, server) only when no other
//!   connection of the process to that server is still known (a pooled connection may go on
//!   with the getMores).
//! - A request with no reply (the pairer's `Unanswered`) is written with State `closed`. A
//!   getMore with no reply leaves its cursor's operation open (its next getMore still belongs
//!   to it), marked: it ends `closed`, not `final`, its totals missing that batch. So does a
//!   getMore whose opening was not seen and whose reply was lost: its cursor id is in the
//!   request, and its later getMores join it.
//! - At most `max_open` operations stay open; beyond, the least recently active one is written
//!   with State `timeout` and forgotten; a reused cursor id does the same to the stale one.
pub mod command;
pub mod describe;
pub mod input;
pub mod tracker;

pub use input::Input;
pub use tracker::{Emit, OpsStats, Tracker, TrackerConfig};
