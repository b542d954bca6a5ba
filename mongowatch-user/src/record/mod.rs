//! The audit record: one application-level operation, as the contract (`audit-record.md`)
//! defines it. Field order here is the contract's column order; serde keeps it in JSON.
//!
//! A leaf: ops builds records, queue holds them, filter and sink read them; this module
//! imports none of them.

mod field;
mod json;
mod line;

use std::sync::Arc;

pub use field::{field_value, FieldValue};
pub use json::{Json, MAX_DEPTH};
use line::write_time;
use serde::{Serialize, Serializer};

/// Every field of the record, in contract order (JSON key order, CSV columns).
pub const FIELDS: &[&str] = &[
    "WatchID",
    "StartTime",
    "EndTime",
    "Duration",
    "DB",
    "Collection",
    "Operation",
    "Filter",
    "MatchedCount",
    "InsertedCount",
    "UpsertedCount",
    "ModifiedCount",
    "DeletedCount",
    "Iteration",
    "State",
    "CursorId",
    "Error",
    "Pid",
    "Comm",
    "Client",
    "Server",
    "User",
    "AppName",
    "Driver",
    "Compression",
    "Tls",
    "RequestBytes",
    "ReplyBytes",
    "ContainerId",
    "Node",
    "Side",
    "K8sNamespace",
    "K8sPod",
    "K8sPodUid",
    "K8sContainer",
];

/// Which end of the connection the watched process is.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// It sent the requests (an application).
    #[default]
    Client,
    /// It received them (a server: every client's operations).
    Server,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// Where a watched process runs: its container, the node, its pod. Shared by every record of
/// its connections, and kept by them after the process (or its pod) ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The 64-hex container id from `/proc/PID/cgroup`.
    pub container_id: Option<Arc<str>>,
    pub node: Option<Arc<str>>,
    /// Set once the pod of `container_id` is known (it may be learnt after the process's first
    /// connection).
    pub k8s: std::sync::OnceLock<K8sMeta>,
}

/// The pod a container belongs to, from the Kubernetes API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sMeta {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub pod_uid: Arc<str>,
    /// The container's name in its pod (`None` for a pod known by uid only).
    pub container: Option<Arc<str>>,
}

/// Why a record was written.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Reply received, cursor exhausted or killed.
    #[default]
    Final,
    /// The idle timeout fired (or the daemon stopped) while the operation was still open.
    Timeout,
    /// The connection or the process ended first.
    Closed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Final => "final",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
        }
    }
}

/// The first error of an operation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorInfo {
    pub code: Option<i64>,
    #[serde(rename = "codeName")]
    pub code_name: Option<String>,
    pub errmsg: Option<String>,
    /// How many write errors the reply listed (only when it listed some).
    #[serde(rename = "writeErrors", skip_serializing_if = "Option::is_none")]
    pub write_errors: Option<u64>,
}

/// One audit record. Times are kept as ns since the Unix epoch and rendered as RFC 3339 UTC
/// with microseconds; `Duration` is kept in ns and rendered in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Record {
    #[serde(rename = "WatchID")]
    pub watch_id: String,
    #[serde(rename = "StartTime", serialize_with = "ser_time")]
    pub start_ns: u64,
    #[serde(rename = "EndTime", serialize_with = "ser_time")]
    pub end_ns: u64,
    #[serde(rename = "Duration", serialize_with = "ser_secs")]
    pub duration_ns: u64,
    #[serde(rename = "DB")]
    pub db: String,
    #[serde(rename = "Collection")]
    pub collection: Option<String>,
    #[serde(rename = "Operation")]
    pub operation: String,
    #[serde(rename = "Filter")]
    pub filter: Option<Json>,
    #[serde(rename = "MatchedCount")]
    pub matched: Option<i64>,
    #[serde(rename = "InsertedCount")]
    pub inserted: Option<i64>,
    #[serde(rename = "UpsertedCount")]
    pub upserted: Option<i64>,
    #[serde(rename = "ModifiedCount")]
    pub modified: Option<i64>,
    #[serde(rename = "DeletedCount")]
    pub deleted: Option<i64>,
    #[serde(rename = "Iteration")]
    pub iteration: u32,
    #[serde(rename = "State")]
    pub state: State,
    #[serde(rename = "CursorId")]
    pub cursor_id: Option<i64>,
    #[serde(rename = "Error")]
    pub error: Option<ErrorInfo>,
    #[serde(rename = "Pid")]
    pub pid: u32,
    #[serde(rename = "Comm")]
    pub comm: Arc<str>,
    #[serde(rename = "Client")]
    pub client: Arc<str>,
    #[serde(rename = "Server")]
    pub server: Arc<str>,
    #[serde(rename = "User")]
    pub user: Option<Arc<str>>,
    #[serde(rename = "AppName")]
    pub app_name: Option<Arc<str>>,
    #[serde(rename = "Driver")]
    pub driver: Option<Arc<str>>,
    #[serde(rename = "Compression")]
    pub compression: Option<&'static str>,
    #[serde(rename = "Tls")]
    pub tls: bool,
    #[serde(rename = "RequestBytes")]
    pub request_bytes: u64,
    #[serde(rename = "ReplyBytes")]
    pub reply_bytes: u64,
    /// Where the record came from: `ContainerId`, `Node`, `Side`, `K8s*` (added fields).
    #[serde(flatten)]
    pub place: Place,
}

/// The record's fields that say where it came from (all added after the first contract).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Place {
    #[serde(rename = "ContainerId")]
    pub container_id: Option<Arc<str>>,
    #[serde(rename = "Node")]
    pub node: Option<Arc<str>>,
    #[serde(rename = "Side")]
    pub side: Side,
    #[serde(rename = "K8sNamespace")]
    pub k8s_namespace: Option<Arc<str>>,
    #[serde(rename = "K8sPod")]
    pub k8s_pod: Option<Arc<str>>,
    #[serde(rename = "K8sPodUid")]
    pub k8s_pod_uid: Option<Arc<str>>,
    #[serde(rename = "K8sContainer")]
    pub k8s_container: Option<Arc<str>>,
}

impl Place {
    pub fn new(origin: &Origin, side: Side) -> Self {
        let k8s = origin.k8s.get();
        Self {
            container_id: origin.container_id.clone(),
            node: origin.node.clone(),
            side,
            k8s_namespace: k8s.map(|k| k.namespace.clone()),
            k8s_pod: k8s.map(|k| k.pod.clone()),
            k8s_pod_uid: k8s.map(|k| k.pod_uid.clone()),
            k8s_container: k8s.and_then(|k| k.container.clone()),
        }
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-24T15:29:00.123456Z`.
pub fn format_time(ns: u64) -> String {
    let mut b = Vec::with_capacity(27);
    write_time(ns, &mut b);
    String::from_utf8(b).unwrap_or_default()
}

/// Seconds as a float, from ns.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn ser_time<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*ns))
}

fn ser_secs<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(secs(*ns))
}

impl Record {
    /// The record as one JSON line (no newline): the contract's form, keys in contract order.
    pub fn to_json_line(&self) -> String {
        let mut b = Vec::with_capacity(512);
        self.write_json(&mut b);
        String::from_utf8(b).unwrap_or_default()
    }
}

/// Makes WatchIDs: ObjectId-like, 4 bytes of seconds (from the operation's start), 5 bytes
/// unique to this daemon run, 3 bytes of counter. Ordered by time, then by creation.
#[derive(Clone, Debug)]
pub struct WatchIds {
    unique: [u8; 5],
    counter: u32,
}

impl WatchIds {
    /// `unique` tells this run apart from others (e.g. from the daemon's pid and start time);
    /// tests pass zeros for stable ids.
    pub fn new(unique: [u8; 5]) -> Self {
        Self { unique, counter: 0 }
    }

    /// Five bytes from the daemon's pid and the wall clock at startup.
    pub fn unique_for_this_run() -> [u8; 5] {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mixed = now ^ ((std::process::id() as u64) << 40) ^ (now >> 29);
        let b = mixed.to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4]]
    }

    pub fn next(&mut self, start_ns: u64) -> String {
        self.counter = (self.counter + 1) & 0x00ff_ffff;
        let secs = (start_ns / 1_000_000_000) as u32;
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&secs.to_be_bytes());
        bytes[4..9].copy_from_slice(&self.unique);
        bytes[9..].copy_from_slice(&self.counter.to_be_bytes()[1..]);
        bson::oid::ObjectId::from_bytes(bytes).to_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_has_micros() {
        assert_eq!(
            format_time(1_795_534_140_123_456_789),
            "2026-11-24T15:29:00.123456Z"
        );
    }

    #[test]
    fn watch_ids_are_time_ordered() {
        let mut ids = WatchIds::new([0; 5]);
        let a = ids.next(1_734_599_361_000_000_000);
        let b = ids.next(1_734_599_361_000_000_000);
        assert_eq!(a, "6763e2c10000000000000001");
        assert!(b > a);
        assert_eq!(a.len(), 24);
    }
}
