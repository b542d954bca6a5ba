//! The audit half of the pipeline: ops inputs -> the ops tracker -> delay queue -> filter ->
//! sink. Each of those layers returns values; this is where they are wired together.

use std::io::Write;

use serde::Serialize;

use crate::{
    config::AuditConfig,
    filter::{RateCounter, RateSummary, RecordFilter, Verdict},
    ops::{Emit, Input, OpsStats, Tracker, TrackerConfig},
    queue::{QueueConfig, QueueStats, WatchQueue},
    record::{Record, WatchIds},
    sink::{
        open_output,
        otlp::{OtlpSink, OtlpStats},
        Output, Sink, SinkError,
    },
    wire::Exchange,
};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Otlp(#[from] crate::sink::otlp::OtlpError),
}

/// Counters for a stats line.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AuditStats {
    pub records_written: u64,
    /// Dropped by `--ops`, `--db` or `--filter`.
    pub records_filtered: u64,
    /// `--filter` evaluation errors (those records were kept).
    pub filter_errors: u64,
    /// Records that could not be written.
    pub write_errors: u64,
    pub rate_summaries: u64,
    pub open_operations: usize,
    pub ops: OpsStats,
    pub queue: QueueStats,
    /// The OTLP output beside the main one (`--otlp-endpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpStats>,
}

/// How long the OTLP exporter may go on sending at exit.
const OTLP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Called with every record as it leaves the delay queue, before any filter (metrics).
pub type RecordTap = Box<dyn FnMut(&Record) + Send>;

pub struct Auditor {
    tracker: Tracker,
    observer: Option<RecordTap>,
    queue: WatchQueue,
    filter: RecordFilter,
    sink: Sink,
    /// OTLP logs beside `sink`: the same records, after the same filter and mask.
    otlp: Option<OtlpSink>,
    rate: Option<RateCounter>,
    rate_out: Box<dyn Write + Send>,
    stats: AuditStats,
    emits: Vec<Emit>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The time an input happened at.
fn input_time(input: &Input) -> u64 {
    match input {
        Input::Exchange { exchange, .. } => match exchange {
            Exchange::RoundTrip { reply, .. } => reply.ts_ns,
            Exchange::OneWay { request } | Exchange::Unanswered { request } => request.ts_ns,
            Exchange::OrphanReply { reply } => reply.ts_ns,
        },
        Input::ConnClosed { ts_ns, .. } | Input::ProcessExited { ts_ns, .. } => *ts_ns,
        Input::Tick { now_ns } => *now_ns,
    }
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9).round().clamp(0.0, u64::MAX as f64) as u64
}

impl Auditor {
    /// Opens the configured output (stdout or `-o FILE`); rate summaries go to stderr.
    pub fn new(config: &AuditConfig) -> Result<Self, AuditError> {
        let out = open_output(&config.output)?;
        Self::with_output(
            config,
            out,
            Box::new(std::io::stderr()),
            WatchIds::new(WatchIds::unique_for_this_run()),
        )
    }

    /// Like [`Auditor::new`] with the record output, the rate summary output and the WatchID
    /// source given (tests, or a daemon that routes them itself).
    pub fn with_output(
        config: &AuditConfig,
        out: Output,
        rate_out: Box<dyn Write + Send>,
        ids: WatchIds,
    ) -> Result<Self, AuditError> {
        let formatter = config.formatter()?;
        let filter = config.record_filter()?;
        let tracker = Tracker::new(
            TrackerConfig {
                include_heartbeats: config.include_heartbeats,
                ..Default::default()
            },
            ids,
        );
        let queue = WatchQueue::new(QueueConfig {
            timeout_ns: secs_to_ns(config.timeout_secs),
            delay_ns: secs_to_ns(config.delay_secs),
        });
        Ok(Self {
            tracker,
            observer: None,
            queue,
            filter,
            sink: Sink::new(formatter, out),
            otlp: config.otlp.clone().map(OtlpSink::open).transpose()?,
            rate: config.rate.map(RateCounter::new),
            rate_out,
            stats: AuditStats::default(),
            emits: Vec::new(),
        })
    }

    /// Feeds one input (in time order). Records that are due are written before it returns.
    /// An error means records could not be written (they are counted in `write_errors`).
    pub fn handle(&mut self, input: Input) -> Result<(), AuditError> {
        let now = input_time(&input).max(self.queue.now_ns());
        self.emits.clear();
        let mut emits = std::mem::take(&mut self.emits);
        self.tracker.handle(&input, &mut emits);
        for e in emits.drain(..) {
            match e {
                Emit::Changed { watch_id } => self.queue.changed(&watch_id, now),
                Emit::Ended(record) => self.queue.ended(record, now),
            }
        }
        self.emits = emits;
        let tracker = &self.tracker;
        let ready = self.queue.advance(now, |id| tracker.snapshot(id));
        let mut result = self.rate_tick(now);
        let written = self.write_records(ready, now);
        result = result.and(written);
        result
    }

    /// SIGINT/SIGTERM: writes every pending record (open operations as `timeout`) and the last
    /// rate summary, then flushes the output. Call it before feeding synthetic connection
    /// closes for the daemon's own exit: a `ConnClosed` writes open cursors as `closed`, which
    /// says the application's connection ended.
    pub fn shutdown(&mut self, now_ns: u64) -> Result<(), AuditError> {
        let now = now_ns.max(self.queue.now_ns());
        let tracker = &self.tracker;
        let rest = self.queue.flush_all(now, |id| tracker.snapshot(id));
        let mut result = self.write_records(rest, now);
        if let Some(summary) = self.rate.as_mut().and_then(|r| r.flush(now)) {
            result = result.and(self.write_rate(&summary));
        }
        if let Some(otlp) = self.otlp.as_mut() {
            otlp.shutdown(OTLP_GRACE);
        }
        result.and(self.sink.flush().map_err(AuditError::from))
    }

    /// Sees every record before the filter: what happened, whatever the output keeps.
    pub fn set_observer(&mut self, tap: RecordTap) {
        self.observer = Some(tap);
    }

    /// Counters so far.
    pub fn stats(&self) -> AuditStats {
        let mut s = self.stats.clone();
        s.filter_errors = self.filter.errors();
        s.open_operations = self.tracker.open_operations();
        s.ops = self.tracker.stats().clone();
        s.queue = self.queue.stats().clone();
        s.otlp = self.otlp.as_ref().map(OtlpSink::stats);
        s
    }

    fn rate_tick(&mut self, now: u64) -> Result<(), AuditError> {
        match self.rate.as_mut().and_then(|r| r.tick(now)) {
            Some(summary) => self.write_rate(&summary),
            None => Ok(()),
        }
    }

    fn write_rate(&mut self, summary: &RateSummary) -> Result<(), AuditError> {
        self.stats.rate_summaries += 1;
        let line = format!("{}\n", summary.to_json_line());
        self.rate_out
            .write_all(line.as_bytes())
            .and_then(|_| self.rate_out.flush())
            .map_err(|e| AuditError::Sink(SinkError::Write(e)))
    }

    fn write_records(&mut self, records: Vec<Record>, now: u64) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut first_err = None;
        for mut r in records {
            if let Some(observe) = self.observer.as_mut() {
                observe(&r);
            }
            if self.filter.check(&r) == Verdict::Drop {
                self.stats.records_filtered += 1;
                continue;
            }
            if let Some(rate) = self.rate.as_mut() {
                rate.observe(&r, now);
            }
            self.filter.mask(&mut r);
            if let Some(otlp) = &self.otlp {
                otlp.send(&r);
            }
            match self.sink.write(&r) {
                Ok(()) => self.stats.records_written += 1,
                Err(e) => {
                    self.stats.write_errors += 1;
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        if let Err(e) = self.sink.flush() {
            first_err.get_or_insert(e);
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
