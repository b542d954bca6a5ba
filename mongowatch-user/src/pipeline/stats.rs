//! One summary of every layer's counters: what `--stats` prints at exit and
//! `--stats-interval` every few seconds, and what metrics are made from.

use serde::Serialize;

use std::collections::BTreeMap;

use super::{audit::AuditStats, outputs::OutputStats};
use crate::{
    capture::{
        probes::{KernelCounters, KernelMaps},
        tls::TlsStats,
    },
    stream::TableStats,
    wire::WireStats,
};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// The kernel programs' counters (events and bytes lost to a full ring, copy failures,
    /// bytes not copied, sockets classified as not MongoDB), summed over the CPUs.
    pub kernel: KernelCounters,
    /// Entries in the kernel's socket maps: MongoDB connections, and the other sockets.
    pub kernel_maps: KernelMaps,
    /// Reading the ring and following the watched processes.
    pub capture: CaptureStats,
    /// The connection table: events, bytes, connections, gaps, messages, TLS.
    pub stream: TableStats,
    /// The TLS library hooks: files attached, failures, scans.
    pub tls: TlsStats,
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
    /// The capture path in use (`sock-tracepoints`, `fentry`, `kprobes`, `syscalls`).
    pub path: &'static str,
    /// Ring buffer records read, and those that did not parse (dropped, each logged).
    pub ring_records: u64,
    pub malformed_records: u64,
    /// Bytes in the ring written by the kernel and not read yet, now: a ring that stays near
    /// full (`ring_size_bytes`) is about to lose events.
    pub ring_pending_bytes: u64,
    /// Watched now; children followed since the start; watched processes that ended.
    pub watched_processes: u64,
    pub processes_followed: u64,
    pub processes_exited: u64,
    /// The fullest the kernel ring was when a drain began (bytes waiting, headers included),
    /// and its size: how close the run came to losing events.
    pub ring_high_water_bytes: u64,
    pub ring_size_bytes: u64,
    /// Bytes still in the ring when the final drain at exit ran out of time: lost, never
    /// decoded.
    pub ring_bytes_left_at_exit: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MessageStats {
    pub written: u64,
    /// Lines that could not be written (the output failed).
    pub unwritten: u64,
}
