//! Prometheus metrics for `/metrics`, in the text format 0.0.4 (what `promtool check metrics`
//! and every Prometheus read), with `prometheus-client`.
//!
//! - `db_client_operation_duration_seconds`: the OpenTelemetry database metric
//!   `db.client.operation.duration` with its semantic-convention buckets, one observation per
//!   operation when it ends, labelled by `db_system_name`, `db_namespace`,
//!   `db_collection_name`, `db_operation_name`, `error_type`, `server_address`, and
//!   `k8s_namespace_name`, `k8s_pod_name` when the record has its pod.
//! - `db_client_response_returned_rows`: documents returned (MatchedCount) per operation.
//! - mongowatch's own health, read from the last [`Stats`] the pipeline published.
//!
//! Label sets are capped ([`MAX_LABEL_SETS`]): past the cap an operation is observed under one
//! overflow series (`otel_metric_overflow="true"`, the OpenTelemetry convention), so totals stay
//! exact, and counted in `mongowatch_metric_label_sets_overflow_total`.

use std::{
    collections::HashSet,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

use crate::{
    pipeline::Stats,
    record::{Record, State},
};

pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The semantic conventions' buckets for `db.client.operation.duration`, in seconds.
pub const DURATION_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// Documents returned per operation.
pub const ROWS_BUCKETS: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
/// Distinct label sets the two operation histograms keep, together.
pub const MAX_LABEL_SETS: usize = 2000;

type Labels = Vec<(&'static str, String)>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn rows_histogram() -> Histogram {
    Histogram::new(ROWS_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    rows: Family<Labels, Histogram, fn() -> Histogram>,
    overflow: Counter,
    seen: Mutex<HashSet<Labels>>,
    max_label_sets: usize,
    stats: std::sync::Arc<StatsCollector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_cap(MAX_LABEL_SETS)
    }

    /// With another cap on label sets (tests).
    pub fn with_cap(max_label_sets: usize) -> Self {
        let mut registry = Registry::default();
        let duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let rows = Family::new_with_constructor(rows_histogram as fn() -> Histogram);
        let overflow = Counter::default();
        registry.register_with_unit(
            "db_client_operation_duration",
            "Duration of database client operations (OpenTelemetry db.client.operation.duration), \
             as the application waited on the server",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "db_client_response_returned_rows",
            "Documents returned (or matched) per operation, from the audit record's MatchedCount",
            rows.clone(),
        );
        registry.register(
            "mongowatch_metric_label_sets_overflow",
            "Operations observed under the overflow series because the label sets reached their cap",
            overflow.clone(),
        );
        let stats = std::sync::Arc::new(StatsCollector::default());
        registry.register_collector(Box::new(stats.clone()));
        Self {
            registry,
            duration,
            rows,
            overflow,
            seen: Mutex::new(HashSet::new()),
            max_label_sets,
            stats,
        }
    }

    /// One operation, from its record. Records written on the idle timeout are skipped: the
    /// operation is observed once, when a later record of its WatchID ends it (final, or
    /// closed with its connection or process).
    pub fn observe(&self, r: &Record) {
        if r.state == State::Timeout {
            return;
        }
        let mut labels = operation_labels(r);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.contains(&labels) {
                if seen.len() >= self.max_label_sets {
                    self.overflow.inc();
                    labels = vec![("otel_metric_overflow", "true".to_string())];
                } else {
                    seen.insert(labels.clone());
                }
            }
        }
        self.duration
            .get_or_create(&labels)
            .observe(r.duration_ns as f64 / 1e9);
        if let Some(n) = r.matched {
            self.rows.get_or_create(&labels).observe(n.max(0) as f64);
        }
    }

    /// The pipeline's counters, now (called on its tick).
    pub fn publish(&self, stats: &Stats) {
        *self.stats.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats.clone());
        self.stats.publishes.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 << 10);
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The semantic-convention labels of one operation (present only when known).
pub fn operation_labels(r: &Record) -> Labels {
    let mut l: Labels = vec![
        ("db_system_name", "mongodb".into()),
        ("db_namespace", r.db.clone()),
    ];
    if let Some(c) = &r.collection {
        l.push(("db_collection_name", c.clone()));
    }
    l.push(("db_operation_name", r.operation.clone()));
    if let Some(e) = error_type(r) {
        l.push(("error_type", e));
    }
    if let Some((host, _)) = server_host_port(&r.server) {
        l.push(("server_address", host.to_string()));
    }
    // The pod, when the record knows it (the same fields the OTLP attributes come from).
    for (key, value) in crate::sink::otlp::place_attributes(r) {
        match key {
            "k8s.namespace.name" => l.push(("k8s_namespace_name", value)),
            "k8s.pod.name" => l.push(("k8s_pod_name", value)),
            _ => {}
        }
    }
    l
}

/// `error.type`: the server's code name, else its code, else `_OTHER`; `None` without error.
pub fn error_type(r: &Record) -> Option<String> {
    let e = r.error.as_ref()?;
    Some(match (&e.code_name, e.code) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(code)) => code.to_string(),
        _ => "_OTHER".into(),
    })
}

/// The host and port of an `ip:port` / `[v6]:port` endpoint; `None` for a unix socket path.
pub fn server_host_port(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty() && !host.starts_with('/')).then_some((host, port))
}

/// mongowatch's own counters, from the last [`Stats`] published.
#[derive(Debug, Default)]
struct StatsCollector {
    last: Mutex<Option<Stats>>,
    publishes: AtomicU64,
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = last.as_ref() else {
            return Ok(());
        };
        let k = &s.kernel;
        counter(
            &mut enc,
            "mongowatch_kernel_events_lost",
            "Kernel events lost to a full ring buffer",
            k.ring_full_events,
        )?;
        counter(
            &mut enc,
            "mongowatch_kernel_bytes_lost",
            "Payload bytes lost to a full ring buffer",
            k.ring_full_bytes,
        )?;
        counter(
            &mut enc,
            "mongowatch_kernel_lifecycle_events_lost",
            "Connection closes, forks and exits lost to a full ring buffer",
            k.lifecycle_lost,
        )?;
        counter(
            &mut enc,
            "mongowatch_kernel_read_failures",
            "Copies from user memory that failed",
            k.read_failures,
        )?;
        counter(
            &mut enc,
            "mongowatch_ring_records",
            "Ring buffer records read",
            s.capture.ring_records,
        )?;
        if s.capture.ring_size_bytes > 0 {
            let fill = ConstGauge::new(
                s.capture.ring_pending_bytes as f64 / s.capture.ring_size_bytes as f64,
            );
            fill.encode(enc.encode_descriptor(
                "mongowatch_ring_fill_ratio",
                "Share of the kernel ring buffer written and not read yet (events are lost at 1)",
                None,
                fill.metric_type(),
            )?)?;
        }
        gauge(
            &mut enc,
            "mongowatch_watched_processes",
            "Processes watched now",
            s.capture.watched_processes as i64,
        )?;
        let st = &s.stream;
        counter(
            &mut enc,
            "mongowatch_connections",
            "Connections seen",
            st.connections,
        )?;
        gauge(
            &mut enc,
            "mongowatch_open_connections",
            "Connections open now",
            st.open_connections as i64,
        )?;
        counter(
            &mut enc,
            "mongowatch_stream_gaps",
            "Gaps in connection streams (bytes not captured)",
            st.gaps,
        )?;
        counter(
            &mut enc,
            "mongowatch_stream_gap_bytes",
            "Bytes missing from connection streams",
            st.gap_bytes,
        )?;
        counter(
            &mut enc,
            "mongowatch_tls_connections",
            "Connections not audited because they use TLS",
            st.tls_connections,
        )?;
        counter(
            &mut enc,
            "mongowatch_messages",
            "Wire messages framed",
            st.messages,
        )?;
        // Decode errors by kind: every kind, read from the counters' own field names, so a new
        // kind shows up here without a change.
        {
            let kinds = serde_json::to_value(&s.wire.decode_errors).unwrap_or_default();
            let family = ConstCounter::new(0u64);
            let mut m = enc.encode_descriptor(
                "mongowatch_wire_decode_errors",
                "Wire messages that failed to decode, by kind",
                None,
                family.metric_type(),
            )?;
            if let Some(map) = kinds.as_object() {
                for (kind, v) in map {
                    let labels = [("kind", kind.as_str())];
                    ConstCounter::new(v.as_u64().unwrap_or(0)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(a) = &s.audit {
            // Each output by its name (stdout, a file's path, an [[output]] table's name).
            let written = ConstCounter::new(a.records_written);
            let mut m = enc.encode_descriptor(
                "mongowatch_records_written",
                "Audit records written, by output",
                None,
                written.metric_type(),
            )?;
            for (name, o) in &s.outputs {
                ConstCounter::new(o.written)
                    .encode(m.encode_family(&[("output", name.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "mongowatch_records_dropped",
                "Audit records not written, by output and reason",
                None,
                written.metric_type(),
            )?;
            for (name, o) in &s.outputs {
                for (reason, v) in [
                    ("filtered", o.filtered),
                    ("queue_full", o.dropped),
                    ("write_error", o.failed),
                ] {
                    ConstCounter::new(v).encode(
                        m.encode_family(&[("output", name.as_str()), ("reason", reason)])?,
                    )?;
                }
            }
            if let Some(o) = &a.otlp {
                let mut m = enc.encode_descriptor(
                    "mongowatch_otlp_records",
                    "What the OTLP exporters did with the records they were given",
                    None,
                    written.metric_type(),
                )?;
                for (state, v) in [
                    ("exported", o.exported),
                    ("queue_full", o.dropped_queue_full),
                    ("rejected", o.rejected),
                    ("unsent_at_exit", o.unsent_at_exit),
                ] {
                    ConstCounter::new(v).encode(m.encode_family(&[("state", state)])?)?;
                }
            }
            gauge(
                &mut enc,
                "mongowatch_open_operations",
                "Operations (cursors) still open",
                a.open_operations as i64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ErrorInfo;

    fn record(op: &str, coll: &str, secs: f64) -> Record {
        Record {
            watch_id: "x".into(),
            start_ns: 1,
            end_ns: 2,
            duration_ns: (secs * 1e9) as u64,
            db: "shop".into(),
            collection: Some(coll.into()),
            operation: op.into(),
            matched: Some(3),
            iteration: 1,
            pid: 7,
            comm: "python".into(),
            client: "127.0.0.1:5000".into(),
            server: "127.0.0.1:27017".into(),
            request_bytes: 10,
            reply_bytes: 20,
            ..Default::default()
        }
    }

    #[test]
    fn histogram_lines_follow_the_conventions() {
        let m = Metrics::new();
        m.observe(&record("find", "orders", 0.003));
        let mut failed = record("insert", "orders", 0.2);
        failed.error = Some(ErrorInfo {
            code: Some(11000),
            code_name: Some("DuplicateKey".into()),
            errmsg: None,
            write_errors: None,
        });
        m.observe(&failed);
        let mut timeout = record("find", "orders", 20.0);
        timeout.state = State::Timeout;
        m.observe(&timeout);
        let text = m.render().unwrap();
        let find =
            "db_system_name=\"mongodb\",db_namespace=\"shop\",db_collection_name=\"orders\",\
                    db_operation_name=\"find\",server_address=\"127.0.0.1\"";
        assert!(
            text.contains("# TYPE db_client_operation_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "db_client_operation_duration_seconds_bucket{{{find},le=\"0.001\"}} 0"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "db_client_operation_duration_seconds_bucket{{{find},le=\"0.005\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "db_client_operation_duration_seconds_count{{{find}}} 1"
            )),
            "{text}"
        );
        assert!(text.contains("error_type=\"DuplicateKey\""), "{text}");
        assert!(
            text.contains(&format!("db_client_response_returned_rows_sum{{{find}}} 3")),
            "{text}"
        );
        // The timeout record is not an end: one find observed, not two.
        assert_eq!(
            text.matches("db_client_operation_duration_seconds_count{")
                .count(),
            2,
            "{text}"
        );
    }

    #[test]
    fn label_sets_are_capped_and_totals_kept() {
        let m = Metrics::with_cap(2);
        for c in ["a", "b", "c", "d", "a"] {
            m.observe(&record("find", c, 0.01));
        }
        let text = m.render().unwrap();
        assert!(
            text.contains("mongowatch_metric_label_sets_overflow_total 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "db_client_operation_duration_seconds_count{otel_metric_overflow=\"true\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("db_collection_name=\"a\",db_operation_name=\"find\",server_address=\"127.0.0.1\"} 2"), "{text}");
    }

    #[test]
    fn stats_become_health_metrics() {
        let m = Metrics::new();
        assert!(
            !m.render().unwrap().contains("mongowatch_stream_gaps"),
            "nothing before the first publish"
        );
        let mut s = Stats::default();
        s.stream.gaps = 4;
        s.kernel.ring_full_events = 9;
        s.wire.decode_errors.bad_bson = 2;
        s.capture.watched_processes = 3;
        s.capture.ring_pending_bytes = 1 << 20;
        s.capture.ring_size_bytes = 4 << 20;
        m.publish(&s);
        let text = m.render().unwrap();
        for line in [
            "mongowatch_stream_gaps_total 4",
            "mongowatch_kernel_events_lost_total 9",
            "mongowatch_wire_decode_errors_total{kind=\"bad_bson\"} 2",
            "mongowatch_wire_decode_errors_total{kind=\"truncated\"} 0",
            "mongowatch_watched_processes 3",
            "mongowatch_ring_fill_ratio 0.25",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            server_host_port("10.0.0.1:27017"),
            Some(("10.0.0.1", 27017))
        );
        assert_eq!(server_host_port("[::1]:27018"), Some(("::1", 27018)));
        assert_eq!(server_host_port("/tmp/mongodb-27017.sock"), None);
    }
}
