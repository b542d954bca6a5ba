//! OTLP logs: one LogRecord per audit record, to an OpenTelemetry Collector (or any OTLP
//! receiver) over gRPC or http/protobuf.
//!
//! Self-contained: [`OtlpSink::open`] takes an [`OtlpConfig`], [`OtlpSink::send`] takes
//! records and never blocks. The records go through a bounded queue to an exporter thread of
//! its own (own runtime), which batches them ([`OtlpConfig::batch_size`] records or
//! [`OtlpConfig::batch_delay`], like the SDKs' batch processor), sends each batch, and retries
//! what the collector could not take now (unreachable, UNAVAILABLE, 429, 502-504) with
//! exponential backoff, holding the batch. Capture never waits on the collector: while it is
//! down the queue fills, and past its bound records are dropped and counted
//! (`dropped_queue_full`), never silently.
//!
//! Built on `opentelemetry-proto`'s generated messages (prost) and gRPC client (tonic), not the
//! OpenTelemetry SDK: the SDK's logs pipeline is a bridge for a logging library's records,
//! with its own batch processor and queue whose drops it does not report to us; mongowatch
//! already has whole records and must count every one it could not deliver, and the body is
//! the whole record as a map, which the SDK's `LogRecord` would have us rebuild field by field
//! anyway. The message mapping is the semantic conventions' (`docs/db/mongodb.md`).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        logs_service_client::LogsServiceClient, ExportLogsServiceRequest, ExportLogsServiceResponse,
    },
    common::v1::{
        any_value::Value as Any, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    },
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use prost::Message;
use serde::Serialize;
use tracing::{info, warn};

use crate::record::{field_value, FieldValue, Json, Record, FIELDS};

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("bad OTLP endpoint `{0}`: {1}")]
    Endpoint(String, String),
    #[error("unknown OTLP protocol `{0}` (use grpc or http/protobuf)")]
    Protocol(String),
    #[error("bad {var}: {why}")]
    Env { var: &'static str, why: String },
    #[error("starting the OTLP exporter: {0}")]
    Start(std::io::Error),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
pub enum Protocol {
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
    #[default]
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = OtlpError;
    fn from_str(s: &str) -> Result<Self, OtlpError> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(OtlpError::Protocol(other.into())),
        }
    }
}

/// Where and how to export.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// gRPC: `http://host:4317`; http/protobuf: the full URL, `http://host:4318/v1/logs`.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`, e.g. an API key).
    pub headers: Vec<(String, String)>,
    /// The resource: service.name, host.name, then `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
    /// Records the queue holds while the collector is slow or away.
    pub queue_size: usize,
    pub batch_size: usize,
    pub batch_delay: Duration,
    /// One export attempt's time limit (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

/// The environment, as a function (tests pass a map).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl OtlpConfig {
    /// The configuration from `--otlp-endpoint`/`--otlp-protocol` (`endpoint`, `protocol`) and
    /// the standard variables: `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base: http/protobuf appends `/v1/logs`),
    /// `..._PROTOCOL`, `..._HEADERS`, `..._TIMEOUT` (each `_LOGS_` one first),
    /// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`. `--otlp-endpoint` is a base like
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (a URL already ending in `/v1/logs` is kept). `None` when
    /// no endpoint is given anywhere, or `OTEL_LOGS_EXPORTER=none`.
    pub fn resolve(
        endpoint: Option<&str>,
        protocol: Option<Protocol>,
        env: Env,
    ) -> Result<Option<Self>, OtlpError> {
        let var = |logs: &'static str, all: &'static str| {
            env(logs)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (logs, v))
                .or_else(|| env(all).filter(|v| !v.trim().is_empty()).map(|v| (all, v)))
        };
        let protocol = match protocol {
            Some(p) => p,
            None => match var(
                "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ) {
                Some((_, p)) => p.parse()?,
                None => Protocol::default(),
            },
        };
        let (base, exact) = match endpoint {
            Some(e) => (e.to_string(), false),
            None => {
                if env("OTEL_LOGS_EXPORTER").is_some_and(|v| v.trim() == "none") {
                    return Ok(None);
                }
                match (
                    env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").filter(|v| !v.trim().is_empty()),
                    env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty()),
                ) {
                    (Some(e), _) => (e, true),
                    (None, Some(e)) => (e, false),
                    (None, None) => return Ok(None),
                }
            }
        };
        let base = base.trim().to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e: http::uri::InvalidUri| OtlpError::Endpoint(base.clone(), e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(OtlpError::Endpoint(
                    base,
                    "https is not supported yet: reach the collector over http (e.g. a node-local \
                     collector or a sidecar)"
                        .into(),
                ))
            }
            _ => {
                return Err(OtlpError::Endpoint(
                    base,
                    "give a URL such as http://collector:4318".into(),
                ))
            }
        }
        let endpoint = match protocol {
            Protocol::HttpProtobuf
                if !exact && !base.trim_end_matches('/').ends_with("/v1/logs") =>
            {
                format!("{}/v1/logs", base.trim_end_matches('/'))
            }
            _ => base,
        };
        let headers = match var(
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            Some((name, h)) => parse_pairs(&h).map_err(|why| OtlpError::Env { var: name, why })?,
            None => Vec::new(),
        };
        let timeout = match var(
            "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            Some((name, ms)) => match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(OtlpError::Env {
                        var: name,
                        why: format!("`{ms}` is not a number of milliseconds > 0"),
                    })
                }
            },
            None => Duration::from_secs(10),
        };
        let mut resource: BTreeMap<String, String> = BTreeMap::new();
        resource.insert("service.name".into(), "mongowatch".into());
        resource.insert("service.version".into(), env!("CARGO_PKG_VERSION").into());
        if let Some(host) = host_name() {
            resource.insert("host.name".into(), host);
        }
        if let Some(attrs) = env("OTEL_RESOURCE_ATTRIBUTES") {
            let pairs = parse_pairs(&attrs).map_err(|why| OtlpError::Env {
                var: "OTEL_RESOURCE_ATTRIBUTES",
                why,
            })?;
            resource.extend(pairs);
        }
        if let Some(name) = env("OTEL_SERVICE_NAME").filter(|n| !n.trim().is_empty()) {
            resource.insert("service.name".into(), name.trim().into());
        }
        Ok(Some(Self {
            endpoint,
            protocol,
            headers,
            resource: resource.into_iter().collect(),
            queue_size: 65_536,
            batch_size: 512,
            batch_delay: Duration::from_secs(1),
            timeout,
            max_backoff: Duration::from_secs(5),
        }))
    }
}

fn host_name() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// `key1=value1,key2=value2`, values percent-decoded (the W3C Baggage form the OTel
/// variables use).
pub fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("`{item}` has no key"));
        }
        out.push((k.to_string(), percent_decode(v.trim())?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

// ---------------------------------------------------------------------------------------------
// The mapping: an audit record as a LogRecord.

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Any {
    Any::StringValue(v.to_string())
}

/// A JSON value as an AnyValue: objects become key-value lists (in their order), integers
/// stay integers, `null` an empty AnyValue.
pub fn json_to_any(v: &serde_json::Value) -> AnyValue {
    use serde_json::Value as J;
    let value = match v {
        J::Null => None,
        J::Bool(b) => Some(Any::BoolValue(*b)),
        J::Number(n) => Some(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Any::IntValue(i),
            // Past i64 (a u64 counter): exact as a string rather than rounded as a double.
            (None, Some(u)) => Any::StringValue(u.to_string()),
            _ => Any::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        }),
        J::String(t) => Some(Any::StringValue(t.clone())),
        J::Array(a) => Some(Any::ArrayValue(ArrayValue {
            values: a.iter().map(json_to_any).collect(),
        })),
        J::Object(o) => Some(Any::KvlistValue(KeyValueList {
            values: o
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(json_to_any(v)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    AnyValue { value }
}

/// A record's own JSON (Filter), keys in the order the application sent them.
fn ordered_json_to_any(j: &Json) -> AnyValue {
    let value = match j {
        Json::Null => None,
        Json::Bool(b) => Some(Any::BoolValue(*b)),
        Json::Int(i) => Some(Any::IntValue(*i)),
        Json::Float(f) => Some(Any::DoubleValue(*f)),
        Json::Str(t) => Some(Any::StringValue(t.clone())),
        Json::Array(a) => Some(Any::ArrayValue(ArrayValue {
            values: a.iter().map(ordered_json_to_any).collect(),
        })),
        Json::Object(o) => Some(Any::KvlistValue(KeyValueList {
            values: o
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(ordered_json_to_any(v)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    AnyValue { value }
}

/// The whole record as a key-value list, keys in the contract's order (serde_json's map sorts
/// them, so the order comes from [`FIELDS`], and Filter from its own ordered form).
pub fn body(r: &Record) -> AnyValue {
    let map = match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    let values = FIELDS
        .iter()
        .map(|&name| KeyValue {
            key: name.to_string(),
            value: Some(match (name, &r.filter) {
                ("Filter", Some(f)) => ordered_json_to_any(f),
                _ => map.get(name).map(json_to_any).unwrap_or_default(),
            }),
            ..Default::default()
        })
        .collect();
    AnyValue {
        value: Some(Any::KvlistValue(KeyValueList { values })),
    }
}

/// Splits `ip:port`, `[v6]:port`; a unix socket path has no port.
fn endpoint_parts(e: &str) -> (String, Option<u16>) {
    if let Some((host, port)) = e.rsplit_once(':') {
        if let Ok(port) = port.parse::<u16>() {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if !host.is_empty() && !host.starts_with('/') {
                return (host.to_string(), Some(port));
            }
        }
    }
    (e.to_string(), None)
}

/// Where the record came from, as OpenTelemetry attributes: the container and pod fields of
/// the record (`ContainerId`, `K8sNamespace`, `K8sPod`, `K8sPodUid`, `K8sContainer`, `Node`)
/// when it has them. Read by field name, so a record without them simply gives none.
pub fn place_attributes(r: &Record) -> Vec<(&'static str, String)> {
    const PLACE: [(&str, &str); 6] = [
        ("ContainerId", "container.id"),
        ("K8sNamespace", "k8s.namespace.name"),
        ("K8sPod", "k8s.pod.name"),
        ("K8sPodUid", "k8s.pod.uid"),
        ("K8sContainer", "k8s.container.name"),
        ("Node", "k8s.node.name"),
    ];
    PLACE
        .iter()
        .filter_map(|(field, key)| match field_value(r, field)? {
            FieldValue::Str(v) if !v.is_empty() => Some((*key, v.to_string())),
            FieldValue::Owned(v) if !v.is_empty() => Some((*key, v)),
            _ => None,
        })
        .collect()
}

/// The semantic conventions' attributes of a record (only those it has).
pub fn attributes(r: &Record) -> Vec<KeyValue> {
    let mut a = vec![
        kv("db.system.name", s("mongodb")),
        kv("db.namespace", s(&r.db)),
    ];
    if let Some(c) = &r.collection {
        a.push(kv("db.collection.name", s(c)));
    }
    a.push(kv("db.operation.name", s(&r.operation)));
    if let Some(e) = &r.error {
        if let Some(code) = e.code {
            a.push(kv("db.response.status_code", s(&code.to_string())));
        }
        let ty = match (&e.code_name, e.code) {
            (Some(n), _) if !n.is_empty() => n.clone(),
            (_, Some(c)) => c.to_string(),
            _ => "_OTHER".into(),
        };
        a.push(kv("error.type", Any::StringValue(ty)));
    }
    if let Some(n) = r.matched {
        a.push(kv("db.response.returned_rows", Any::IntValue(n)));
    }
    let (server, server_port) = endpoint_parts(&r.server);
    if !server.is_empty() {
        a.push(kv("server.address", Any::StringValue(server)));
    }
    if let Some(p) = server_port {
        a.push(kv("server.port", Any::IntValue(p.into())));
    }
    let (client, client_port) = endpoint_parts(&r.client);
    if !client.is_empty() {
        a.push(kv("client.address", Any::StringValue(client)));
    }
    if let Some(p) = client_port {
        a.push(kv("client.port", Any::IntValue(p.into())));
    }
    if let Some(u) = &r.user {
        a.push(kv("user.name", s(u)));
    }
    a.push(kv("process.pid", Any::IntValue(r.pid.into())));
    if !r.comm.is_empty() {
        a.push(kv("process.executable.name", s(&r.comm)));
    }
    for (key, value) in place_attributes(r) {
        a.push(kv(key, Any::StringValue(value)));
    }
    a.push(kv("mongowatch.watch_id", s(&r.watch_id)));
    a.push(kv("mongowatch.state", s(r.state.as_str())));
    a
}

/// One LogRecord: time = StartTime, body = the whole record as a map (the contract's keys and
/// order), the attributes above; ERROR severity when the operation failed.
pub fn log_record(r: &Record, observed_ns: u64) -> LogRecord {
    let (severity, text) = if r.error.is_some() {
        (SeverityNumber::Error, "ERROR")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    LogRecord {
        time_unix_nano: r.start_ns,
        observed_time_unix_nano: observed_ns,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(body(r)),
        attributes: attributes(r),
        event_name: "mongowatch.audit".into(),
        ..Default::default()
    }
}

/// One export request: the resource, mongowatch's scope, the records.
pub fn request(resource: &[(String, String)], records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| kv(k, s(v))).collect(),
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "mongowatch".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The sink and its exporter thread.

/// What the OTLP output did, for `--stats` and `/metrics`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OtlpStats {
    /// Records handed to the exporter.
    pub queued: u64,
    /// Records the receiver accepted.
    pub exported: u64,
    /// Records lost because the queue was full (the collector slow or away too long).
    pub dropped_queue_full: u64,
    /// Records the receiver refused (a partial success, or an error not worth retrying).
    pub rejected: u64,
    /// Records still unsent when the daemon stopped and its grace ran out.
    pub unsent_at_exit: u64,
    pub batches: u64,
    /// Export attempts that failed and were tried again.
    pub retries: u64,
}

impl OtlpStats {
    /// Adds another exporter's counters (several OTLP outputs).
    pub fn add(&mut self, o: &OtlpStats) {
        self.queued += o.queued;
        self.exported += o.exported;
        self.dropped_queue_full += o.dropped_queue_full;
        self.rejected += o.rejected;
        self.unsent_at_exit += o.unsent_at_exit;
        self.batches += o.batches;
        self.retries += o.retries;
    }
}

/// Reads an exporter's counters from another thread than the output worker that owns it.
#[derive(Clone, Debug)]
pub struct OtlpStatsSource(Arc<Counters>);

impl OtlpStatsSource {
    pub fn snapshot(&self) -> OtlpStats {
        self.0.snapshot()
    }
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    rejected: AtomicU64,
    unsent_at_exit: AtomicU64,
    batches: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> OtlpStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OtlpStats {
            queued: g(&self.queued),
            exported: g(&self.exported),
            dropped_queue_full: g(&self.dropped_queue_full),
            rejected: g(&self.rejected),
            unsent_at_exit: g(&self.unsent_at_exit),
            batches: g(&self.batches),
            retries: g(&self.retries),
        }
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// The OTLP output. `send` never blocks; `shutdown` gives the exporter a grace period.
pub struct OtlpSink {
    tx: Option<SyncSender<LogRecord>>,
    counters: Arc<Counters>,
    /// Set at shutdown: past it the exporter stops retrying and counts what is left.
    give_up_at: Arc<Mutex<Option<Instant>>>,
    thread: Option<JoinHandle<()>>,
    endpoint: String,
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl OtlpSink {
    /// Starts the exporter thread. Nothing is sent until records come; an unreachable
    /// collector is retried, not an error here.
    pub fn open(config: OtlpConfig) -> Result<Self, OtlpError> {
        let (tx, rx) = mpsc::sync_channel(config.queue_size.max(1));
        let counters = Arc::new(Counters::default());
        let give_up_at = Arc::new(Mutex::new(None));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OtlpError::Start)?;
        let transport = {
            let _in_runtime = runtime.enter();
            Transport::new(&config)?
        };
        let endpoint = config.endpoint.clone();
        let exporter = Exporter {
            rx,
            counters: counters.clone(),
            give_up_at: give_up_at.clone(),
            transport,
            runtime,
            config,
        };
        let thread = std::thread::Builder::new()
            .name("mongowatch-otlp".into())
            .spawn(move || exporter.run())
            .map_err(OtlpError::Start)?;
        info!(%endpoint, "exporting audit records as OTLP logs");
        Ok(Self {
            tx: Some(tx),
            counters,
            give_up_at,
            thread: Some(thread),
            endpoint,
        })
    }

    /// Queues one record; when the queue is full it is dropped and counted.
    pub fn send(&self, r: &Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(log_record(r, now_ns())) {
            Ok(()) => add(&self.counters.queued, 1),
            Err(TrySendError::Full(_)) => {
                let before = self
                    .counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                // Said at the first drop and then every 10,000: loud, but not a flood.
                if before.is_multiple_of(10_000) {
                    warn!(
                        endpoint = %self.endpoint,
                        dropped = before + 1,
                        "the OTLP queue is full (collector slow or unreachable): records dropped"
                    );
                }
            }
            // The exporter thread ended (it only does at shutdown, or if it panicked).
            Err(TrySendError::Disconnected(_)) => add(&self.counters.unsent_at_exit, 1),
        }
    }

    pub fn stats(&self) -> OtlpStats {
        self.counters.snapshot()
    }

    /// The counters, readable while the sink is owned by its output's worker.
    pub fn stats_source(&self) -> OtlpStatsSource {
        OtlpStatsSource(self.counters.clone())
    }

    /// Sends what is queued, trying for at most `grace`; what is left then is counted as
    /// `unsent_at_exit`.
    pub fn shutdown(&mut self, grace: Duration) {
        *self.give_up_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + grace);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let st = self.stats();
        info!(
            exported = st.exported,
            dropped = st.dropped_queue_full,
            rejected = st.rejected,
            unsent = st.unsent_at_exit,
            "OTLP exporter stopped"
        );
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown(Duration::from_secs(1));
        }
    }
}

/// Why an export failed, and whether trying again may help.
#[derive(Debug)]
struct ExportError {
    retry: bool,
    what: String,
}

enum Transport {
    Http {
        uri: http::Uri,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        timeout: Duration,
    },
    Grpc {
        client: LogsServiceClient<tonic::transport::Channel>,
        headers: tonic::metadata::MetadataMap,
    },
}

impl Transport {
    /// In a runtime context (tonic's lazy channel needs one).
    fn new(c: &OtlpConfig) -> Result<Self, OtlpError> {
        let bad = |why: String| OtlpError::Endpoint(c.endpoint.clone(), why);
        match c.protocol {
            Protocol::HttpProtobuf => {
                let uri: http::Uri = c.endpoint.parse().map_err(|e| bad(format!("{e}")))?;
                let mut headers = Vec::new();
                for (k, v) in &c.headers {
                    let name =
                        http::HeaderName::try_from(k.as_str()).map_err(|e| OtlpError::Env {
                            var: "OTEL_EXPORTER_OTLP_HEADERS",
                            why: format!("{k}: {e}"),
                        })?;
                    let value =
                        http::HeaderValue::try_from(v.as_str()).map_err(|e| OtlpError::Env {
                            var: "OTEL_EXPORTER_OTLP_HEADERS",
                            why: format!("{k}: {e}"),
                        })?;
                    headers.push((name, value));
                }
                Ok(Self::Http {
                    uri,
                    headers,
                    timeout: c.timeout,
                })
            }
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(c.endpoint.clone())
                    .map_err(|e| bad(e.to_string()))?
                    .connect_timeout(c.timeout.min(Duration::from_secs(5)))
                    .timeout(c.timeout)
                    .connect_lazy();
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &c.headers {
                    let env_err = |e: String| OtlpError::Env {
                        var: "OTEL_EXPORTER_OTLP_HEADERS",
                        why: format!("{k}: {e}"),
                    };
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_lowercase().as_bytes())
                        .map_err(|e| env_err(e.to_string()))?;
                    let value =
                        v.parse()
                            .map_err(|e: tonic::metadata::errors::InvalidMetadataValue| {
                                env_err(e.to_string())
                            })?;
                    headers.insert(key, value);
                }
                Ok(Self::Grpc {
                    client: LogsServiceClient::new(channel),
                    headers,
                })
            }
        }
    }

    /// Sends one request; `Ok(rejected)`: the records the receiver refused in a partial
    /// success.
    async fn export(&mut self, req: &ExportLogsServiceRequest) -> Result<u64, ExportError> {
        match self {
            Self::Http {
                uri,
                headers,
                timeout,
            } => {
                let body = Bytes::from(req.encode_to_vec());
                match tokio::time::timeout(*timeout, http_post(uri, headers, body)).await {
                    Ok(r) => r,
                    Err(_) => Err(ExportError {
                        retry: true,
                        what: format!("no answer within {timeout:?}"),
                    }),
                }
            }
            Self::Grpc { client, headers } => {
                let mut request = tonic::Request::new(req.clone());
                for kv in headers.iter() {
                    if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                        request.metadata_mut().insert(k.clone(), v.clone());
                    }
                }
                match client.export(request).await {
                    Ok(resp) => Ok(rejected(&resp.into_inner())),
                    Err(status) => {
                        use tonic::Code;
                        // The OTLP specification's retryable codes.
                        let retry = matches!(
                            status.code(),
                            Code::Cancelled
                                | Code::DeadlineExceeded
                                | Code::Aborted
                                | Code::OutOfRange
                                | Code::Unavailable
                                | Code::DataLoss
                                | Code::ResourceExhausted
                        );
                        Err(ExportError {
                            retry,
                            what: format!("gRPC {:?}: {}", status.code(), status.message()),
                        })
                    }
                }
            }
        }
    }
}

fn rejected(resp: &ExportLogsServiceResponse) -> u64 {
    resp.partial_success
        .as_ref()
        .map_or(0, |p| p.rejected_log_records.max(0) as u64)
}

async fn http_post(
    uri: &http::Uri,
    headers: &[(http::HeaderName, http::HeaderValue)],
    body: Bytes,
) -> Result<u64, ExportError> {
    use http_body_util::{BodyExt, Full};
    let retry = |what: String| ExportError { retry: true, what };
    let host = uri.host().unwrap_or("localhost");
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| retry(format!("connecting to {host}:{port}: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| retry(e.to_string()))?;
    // The connection is driven beside the request, and ends with it (one request each).
    let driver = tokio::spawn(conn);
    let authority = uri.authority().map_or(host.to_string(), |a| a.to_string());
    let mut request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .header(
            http::header::USER_AGENT,
            concat!("mongowatch/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let request = request.body(Full::new(body)).map_err(|e| ExportError {
        retry: false,
        what: e.to_string(),
    })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| retry(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| retry(e.to_string()))?
        .to_bytes();
    driver.abort();
    if status.is_success() {
        // An empty body is a full success; a body that does not decode is taken as one too
        // (the records were accepted; only the partial-success detail is lost).
        return Ok(ExportLogsServiceResponse::decode(body)
            .map(|r| rejected(&r))
            .unwrap_or(0));
    }
    // The OTLP/HTTP specification's retryable statuses.
    let code = status.as_u16();
    Err(ExportError {
        retry: matches!(code, 429 | 502 | 503 | 504),
        what: format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    })
}

struct Exporter {
    rx: mpsc::Receiver<LogRecord>,
    counters: Arc<Counters>,
    give_up_at: Arc<Mutex<Option<Instant>>>,
    transport: Transport,
    runtime: tokio::runtime::Runtime,
    config: OtlpConfig,
}

impl Exporter {
    fn give_up_at(&self) -> Option<Instant> {
        *self.give_up_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(mut self) {
        let mut batch: Vec<LogRecord> = Vec::with_capacity(self.config.batch_size);
        let mut open = true;
        while open {
            // The first record of a batch is waited for; the rest for at most batch_delay.
            match self.rx.recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
            let window_end = Instant::now() + self.config.batch_delay;
            while batch.len() < self.config.batch_size {
                let wait = window_end.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(r) => batch.push(r),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !self.export(std::mem::take(&mut batch)) {
                break;
            }
        }
        // Stopped: whatever is still queued goes out while the grace lasts.
        loop {
            let rest: Vec<LogRecord> = self.rx.try_iter().take(self.config.batch_size).collect();
            if rest.is_empty() {
                break;
            }
            if !self.export(rest) {
                break;
            }
        }
        let left = self.rx.try_iter().count() as u64;
        add(&self.counters.unsent_at_exit, left);
    }

    /// Sends one batch, retrying while it may help; `false` once the shutdown grace is over.
    fn export(&mut self, batch: Vec<LogRecord>) -> bool {
        let n = batch.len() as u64;
        let req = request(&self.config.resource, batch);
        let mut backoff = Duration::from_millis(100);
        let mut outage: Option<Instant> = None;
        loop {
            let result = self.runtime.block_on(self.transport.export(&req));
            match result {
                Ok(rejected) => {
                    let rejected = rejected.min(n);
                    add(&self.counters.exported, n - rejected);
                    add(&self.counters.rejected, rejected);
                    add(&self.counters.batches, 1);
                    if rejected > 0 {
                        warn!(rejected, "the OTLP receiver refused part of a batch");
                    }
                    if let Some(since) = outage {
                        info!(after = ?since.elapsed(), "the OTLP receiver takes records again");
                    }
                    return true;
                }
                Err(e) if e.retry => {
                    add(&self.counters.retries, 1);
                    if outage.is_none() {
                        warn!(endpoint = %self.config.endpoint, "OTLP export failed, retrying: {}", e.what);
                        outage = Some(Instant::now());
                    }
                    let now = Instant::now();
                    if let Some(end) = self.give_up_at() {
                        if now >= end {
                            add(&self.counters.unsent_at_exit, n);
                            warn!(records = n, "OTLP: giving up at exit: {}", e.what);
                            return false;
                        }
                        backoff = backoff.min(end - now);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
                Err(e) => {
                    add(&self.counters.rejected, n);
                    add(&self.counters.batches, 1);
                    warn!(records = n, endpoint = %self.config.endpoint, "OTLP export refused: {}", e.what);
                    return true;
                }
            }
        }
    }
}

/// The OTLP exporter as one of the daemon's outputs: `write` only queues (the exporter thread
/// batches, sends and retries, and counts what it loses), so it never fails or blocks.
impl super::RecordWriter for OtlpSink {
    fn write(&mut self, r: &Record) -> Result<(), super::SinkError> {
        self.send(r);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), super::SinkError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), super::SinkError> {
        // Within the outputs' own exit deadline.
        self.shutdown(Duration::from_secs(4));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ErrorInfo;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn endpoints_and_protocols_follow_the_spec() {
        let none = env(&[]);
        assert_eq!(OtlpConfig::resolve(None, None, &none).unwrap(), None);
        let c = OtlpConfig::resolve(Some("http://c:4318"), None, &none)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.protocol),
            ("http://c:4318/v1/logs", Protocol::HttpProtobuf)
        );
        let c = OtlpConfig::resolve(Some("http://c:4318/v1/logs"), None, &none)
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/logs");
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x=1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.node.name=n1,service.name=audit",
            ),
        ]);
        let c = OtlpConfig::resolve(None, None, &e).unwrap().unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
        assert_eq!(
            c.headers,
            vec![("api-key".into(), "a b".into()), ("x".into(), "1".into())]
        );
        let res: BTreeMap<_, _> = c.resource.into_iter().collect();
        assert_eq!(res["service.name"], "audit");
        assert_eq!(res["k8s.node.name"], "n1");
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:9999/custom"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("OTEL_SERVICE_NAME", "svc"),
        ]);
        let c = OtlpConfig::resolve(None, None, &e).unwrap().unwrap();
        assert_eq!(
            c.endpoint, "http://c:9999/custom",
            "the logs endpoint is used as is"
        );
        assert!(c.resource.contains(&("service.name".into(), "svc".into())));
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_LOGS_EXPORTER", "none"),
        ]);
        assert_eq!(OtlpConfig::resolve(None, None, &e).unwrap(), None);
        assert!(OtlpConfig::resolve(Some("https://c:4318"), None, &none).is_err());
        assert!(OtlpConfig::resolve(Some("c:4318"), None, &none).is_err());
        let e = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert!(OtlpConfig::resolve(Some("http://c:4318"), None, &e).is_err());
        let e = env(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]);
        assert!(OtlpConfig::resolve(Some("http://c:4318"), None, &e).is_err());
    }

    fn record() -> Record {
        Record {
            watch_id: "6763e2c10000000000000001".into(),
            start_ns: 1_795_534_140_123_456_789,
            end_ns: 1_795_534_140_223_456_789,
            duration_ns: 100_000_000,
            db: "shop".into(),
            collection: Some("orders".into()),
            operation: "insert".into(),
            inserted: Some(0),
            iteration: 1,
            error: Some(ErrorInfo {
                code: Some(11000),
                code_name: Some("DuplicateKey".into()),
                errmsg: Some("E11000".into()),
                write_errors: Some(1),
            }),
            pid: 4242,
            comm: "python".into(),
            client: "127.0.0.1:51432".into(),
            server: "[::1]:27017".into(),
            user: Some("app".into()),
            request_bytes: 100,
            reply_bytes: 200,
            ..Default::default()
        }
    }

    fn attr<'a>(l: &'a LogRecord, key: &str) -> Option<&'a Any> {
        l.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_record_maps_to_the_conventions() {
        let l = log_record(&record(), 7);
        assert_eq!(
            (l.time_unix_nano, l.observed_time_unix_nano),
            (1_795_534_140_123_456_789, 7)
        );
        assert_eq!(l.severity_number, SeverityNumber::Error as i32);
        assert_eq!(attr(&l, "db.system.name"), Some(&s("mongodb")));
        assert_eq!(attr(&l, "db.namespace"), Some(&s("shop")));
        assert_eq!(attr(&l, "db.collection.name"), Some(&s("orders")));
        assert_eq!(attr(&l, "db.operation.name"), Some(&s("insert")));
        assert_eq!(attr(&l, "db.response.status_code"), Some(&s("11000")));
        assert_eq!(attr(&l, "error.type"), Some(&s("DuplicateKey")));
        assert_eq!(attr(&l, "server.address"), Some(&s("::1")));
        assert_eq!(attr(&l, "server.port"), Some(&Any::IntValue(27017)));
        assert_eq!(attr(&l, "client.address"), Some(&s("127.0.0.1")));
        assert_eq!(attr(&l, "user.name"), Some(&s("app")));
        assert_eq!(attr(&l, "process.pid"), Some(&Any::IntValue(4242)));
        assert_eq!(attr(&l, "process.executable.name"), Some(&s("python")));
        assert_eq!(
            attr(&l, "db.response.returned_rows"),
            None,
            "no MatchedCount"
        );
        // The body is the whole record, keys in the contract's order.
        let Some(Any::KvlistValue(body)) = l.body.and_then(|b| b.value) else {
            panic!("body is not a map")
        };
        let keys: Vec<&str> = body.values.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, crate::record::FIELDS);
        let get = |k: &str| {
            body.values
                .iter()
                .find(|kv| kv.key == k)
                .unwrap()
                .value
                .clone()
                .unwrap()
        };
        assert_eq!(
            get("StartTime").value,
            Some(s("2026-11-24T15:29:00.123456Z"))
        );
        assert_eq!(get("Collection").value, Some(s("orders")));
        assert_eq!(get("Filter").value, None, "null stays empty");
        assert_eq!(get("Pid").value, Some(Any::IntValue(4242)));
        assert_eq!(get("Duration").value, Some(Any::DoubleValue(0.1)));
        let Some(Any::KvlistValue(err)) = get("Error").value else {
            panic!()
        };
        assert_eq!(err.values[0].key, "code");
        // A filter keeps its key order (a sort or index spec means it).
        let mut r = record();
        r.filter = Some(Json::Object(vec![
            ("z".into(), Json::Int(1)),
            ("a".into(), Json::Int(-1)),
        ]));
        let Some(Any::KvlistValue(whole)) = super::body(&r).value else {
            panic!()
        };
        let Some(Any::KvlistValue(f)) = whole.values[7].value.clone().unwrap().value else {
            panic!("Filter is not a map")
        };
        assert_eq!(
            (f.values[0].key.as_str(), f.values[1].key.as_str()),
            ("z", "a")
        );
    }

    #[test]
    fn a_request_round_trips_through_protobuf() {
        let req = request(
            &[("service.name".into(), "mongowatch".into())],
            vec![log_record(&record(), 1), log_record(&record(), 2)],
        );
        let bytes = req.encode_to_vec();
        let back = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        let rl = &back.resource_logs[0];
        assert_eq!(rl.scope_logs[0].log_records.len(), 2);
        assert_eq!(
            rl.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
    }

    #[test]
    fn pairs() {
        assert_eq!(parse_pairs("").unwrap(), vec![]);
        assert!(parse_pairs("a=%zz").is_err());
        assert!(parse_pairs("=b").is_err());
    }

    /// A collector answering each request in turn with `answers` (status line, body); it
    /// returns how many requests it got.
    fn scripted_collector(
        answers: Vec<(&'static str, Vec<u8>)>,
    ) -> (u16, std::thread::JoinHandle<usize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            for (status, body) in answers {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0;
                let mut line = String::new();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut req = vec![0; len];
                reader.read_exact(&mut req).unwrap();
                let decoded = ExportLogsServiceRequest::decode(req.as_slice()).unwrap();
                assert!(!decoded.resource_logs[0].scope_logs[0]
                    .log_records
                    .is_empty());
                let mut out = stream;
                write!(out, "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
                out.write_all(&body).unwrap();
                served += 1;
            }
            served
        });
        (port, handle)
    }

    fn sink_to(port: u16) -> OtlpSink {
        let mut c = OtlpConfig::resolve(Some(&format!("http://127.0.0.1:{port}")), None, &env(&[]))
            .unwrap()
            .unwrap();
        c.batch_delay = Duration::from_millis(200);
        OtlpSink::open(c).unwrap()
    }

    /// 503 is retried (the batch held), then a partial success: its rejected records are
    /// counted apart from the exported ones.
    #[test]
    fn http_retries_then_counts_a_partial_success() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
        let partial = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 1,
                error_message: "one too old".into(),
            }),
        }
        .encode_to_vec();
        let (port, collector) = scripted_collector(vec![
            ("503 Service Unavailable", vec![]),
            ("200 OK", partial),
        ]);
        let mut sink = sink_to(port);
        for _ in 0..3 {
            sink.send(&record());
        }
        sink.shutdown(Duration::from_secs(10));
        assert_eq!(collector.join().unwrap(), 2);
        let st = sink.stats();
        assert_eq!(
            (st.exported, st.rejected, st.retries, st.batches),
            (2, 1, 1, 1),
            "{st:?}"
        );
        assert_eq!(st.unsent_at_exit, 0);
    }

    /// 400 is not worth retrying: the batch is counted as rejected, once.
    #[test]
    fn http_bad_request_is_rejected_not_retried() {
        let (port, collector) = scripted_collector(vec![("400 Bad Request", b"nope".to_vec())]);
        let mut sink = sink_to(port);
        for _ in 0..3 {
            sink.send(&record());
        }
        sink.shutdown(Duration::from_secs(10));
        assert_eq!(collector.join().unwrap(), 1);
        let st = sink.stats();
        assert_eq!((st.exported, st.rejected, st.retries), (0, 3, 0), "{st:?}");
    }

    /// No receiver at all: the queue bound drops and counts, send never blocks, and what is
    /// left at exit is counted too. Every record is accounted for.
    #[test]
    fn an_unreachable_collector_costs_counted_records_not_time() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = OtlpConfig::resolve(Some(&format!("http://127.0.0.1:{port}")), None, &env(&[]))
            .unwrap()
            .unwrap();
        c.queue_size = 10;
        c.batch_size = 4;
        c.batch_delay = Duration::from_millis(10);
        let mut sink = OtlpSink::open(c).unwrap();
        let started = Instant::now();
        for _ in 0..1000 {
            sink.send(&record());
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "send must not wait"
        );
        sink.shutdown(Duration::from_millis(300));
        let st = sink.stats();
        assert_eq!(st.exported, 0);
        assert!(st.dropped_queue_full >= 1000 - 10 - 4, "{st:?}");
        assert_eq!(st.queued + st.dropped_queue_full, 1000, "{st:?}");
        assert_eq!(st.unsent_at_exit, st.queued, "{st:?}");
        assert!(st.retries >= 1, "{st:?}");
    }
}
