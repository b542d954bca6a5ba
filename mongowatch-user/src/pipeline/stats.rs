//! One summary of every layer's counters: what `--stats` prints at exit and
//! `--stats-interval` every few seconds, and what metrics are made from.

use serde::Serialize;

use std::collections::BTreeMap;

use super::{audit::AuditStats, outputs::OutputStats};
use crate::{capture::probes::KernelCounters, stream::TableStats, wire::WireStats};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// The kernel programs' counters (events and bytes lost to a full ring, copy failures,
    /// bytes not copied, sockets classified as not MongoDB), summed over the CPUs.
    pub kernel: KernelCounters,
    /// Reading the ring and following the watched processes.
    pub capture: CaptureStats,
    /// The connection table: events, bytes, connections, gaps, messages, TLS.
    pub stream: TableStats,
    /// Framing (resyncs, drops by reason), decoding (errors by kind) and pairing, summed over
    /// every connection.
    pub wire: WireStats,
    /// Audit mode: operations, the delay queue, the filter and the records written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStats>,
    /// `--messages` mode: the lines written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessageStats>,
    /// Audit mode: each output's records written, filtered, dropped (its queue was full) and
    /// failed, under the output's name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, OutputStats>,
}

impl Stats {
    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureStats {
    /// Ring buffer records read, and those that did not parse (dropped, each logged).
    pub ring_records: u64,
    pub malformed_records: u64,
    /// Watched now; children followed since the start; watched processes that ended.
    pub watched_processes: u64,
    pub processes_followed: u64,
    pub processes_exited: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MessageStats {
    pub written: u64,
    /// Lines that could not be written (the output failed).
    pub unwritten: u64,
}
