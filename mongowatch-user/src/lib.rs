//! mongowatch: audits the MongoDB operations of chosen processes from the kernel.
//!
//! The modules follow the data: `capture` (kernel events in, the watched processes) ->
//! `stream` (the connection table; bytes per connection and direction) -> `wire` (frames and
//! messages, paired) -> `ops` (commands, cursors, operations) -> `queue` (the delay queue) ->
//! `sink` (formats and outputs). `record` is the audit record they share, `filter` decides
//! which records are written, `config` reads the options, and `pipeline` owns the daemon loop
//! and drives each layer in turn. `serve` is the `--listen` HTTP listener (health, metrics),
//! fed by the pipeline's hooks. `logs` reads audit logs back (`aggregate`, `digest`).
//! Everything below `capture` is pure code that needs no root.

pub mod capture;
pub mod config;
pub mod filter;
pub mod k8s;
pub mod logs;
pub mod manual;
pub mod ops;
pub mod pipeline;
pub mod queue;
pub mod record;
pub mod serve;
pub mod sink;
pub mod stream;
pub mod wire;
