//! mongowatch: audits the MongoDB operations of chosen processes from the kernel.
//!
//! The modules follow the data: `capture` (kernel events in) -> `stream` (bytes per connection
//! and direction) -> `wire` (frames and messages, paired) -> `ops` (commands, cursors,
//! operations) -> `queue` (the delay queue) -> `sink` (formats and outputs).
//! Everything below `capture` is pure code that needs no root.

pub mod capture;
pub mod config;
pub mod filter;
pub mod forensic;
pub mod ops;
pub mod queue;
pub mod record;
pub mod sink;
pub mod stream;
pub mod wire;
