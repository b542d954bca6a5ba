//! The audit half of the pipeline: ops inputs -> the ops tracker -> delay queue -> the
//! outputs (each with its filter and sink, [`super::outputs`]). Each of those layers returns
//! values; this is where they are wired together.

use std::{collections::BTreeMap, io::Write};

use serde::Serialize;

use super::outputs::{OutputPlan, OutputStats, Outputs, CLOSE_DEADLINE};
use crate::{
    config::AuditConfig,
    filter::{RateCounter, RateSummary},
    ops::{Emit, Input, OpsStats, Tracker, TrackerConfig},
    queue::{QueueConfig, QueueStats, WatchQueue},
    record::{Record, WatchIds},
    sink::{otlp::OtlpStats, Output, Sink, SinkError},
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
    #[error("starting an output's thread: {0}")]
    Thread(std::io::Error),
    /// Every output has failed; each failure was said when it happened.
    #[error("no output can be written any more ({0})")]
    OutputsFailed(String),
}

/// Counters for a stats line. The record counts are summed over the outputs (each output's
/// own are in [`super::Stats::outputs`]).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AuditStats {
    pub records_written: u64,
    /// Dropped by `--ops`, `--db` or `--filter`.
    pub records_filtered: u64,
    /// `--filter` evaluation errors (those records were kept).
    pub filter_errors: u64,
    /// Records that could not be written.
    pub write_errors: u64,
    /// Records dropped because an output's queue was full.
    pub records_dropped: u64,
    pub rate_summaries: u64,
    pub open_operations: usize,
    pub ops: OpsStats,
    pub queue: QueueStats,
    /// The OTLP exporter's own counters (batches, retries, its queue), when an output is OTLP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpStats>,
}

/// Called with every record as it leaves the delay queue, before any filter (metrics).
pub type RecordTap = Box<dyn FnMut(&Record) + Send>;

pub struct Auditor {
    tracker: Tracker,
    queue: WatchQueue,
    outputs: Outputs,
    rate: Option<RateCounter>,
    rate_out: Box<dyn Write + Send>,
    stats: AuditStats,
    emits: Vec<Emit>,
    /// The records due after an input, kept between inputs (allocated once, not per input).
    ready: Vec<Record>,
    observer: Option<RecordTap>,
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
    /// Opens the configured outputs (stdout, `-o FILE`, or the `[[output]]` tables), each
    /// with its own worker thread; rate summaries go to stderr.
    pub fn new(config: &AuditConfig) -> Result<Self, AuditError> {
        let plans = config
            .output_configs()
            .iter()
            .map(OutputPlan::open)
            .collect::<Result<Vec<_>, _>>()?;
        Self::with_outputs(
            config,
            Outputs::spawn(plans)?,
            Box::new(std::io::stderr()),
            WatchIds::new(WatchIds::unique_for_this_run()),
        )
    }

    /// Like [`Auditor::new`] with one output (the shorthand's format and filter, written to
    /// `out` on the caller's thread), the rate summary output and the WatchID source given
    /// (tests, or a daemon that routes them itself).
    pub fn with_output(
        config: &AuditConfig,
        out: Output,
        rate_out: Box<dyn Write + Send>,
        ids: WatchIds,
    ) -> Result<Self, AuditError> {
        let single = AuditConfig {
            outputs: Vec::new(),
            ..config.clone()
        };
        let cfg = &single.output_configs()[0];
        let sink = Sink::new(config.formatter()?, out);
        let plan = OutputPlan::with_writer(cfg, Box::new(sink))?;
        Self::with_outputs(config, Outputs::inline(vec![plan]), rate_out, ids)
    }

    /// With the outputs given.
    pub fn with_outputs(
        config: &AuditConfig,
        outputs: Outputs,
        rate_out: Box<dyn Write + Send>,
        ids: WatchIds,
    ) -> Result<Self, AuditError> {
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
            queue,
            outputs,
            rate: config.rate.map(RateCounter::new),
            rate_out,
            stats: AuditStats::default(),
            emits: Vec::new(),
            ready: Vec::new(),
            observer: None,
        })
    }

    /// Feeds one input (in time order). Records that are due are handed to the outputs before
    /// it returns. An error means no output can write any more (what they could not write is
    /// counted in `write_errors`).
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
        let mut ready = std::mem::take(&mut self.ready);
        self.queue
            .advance_into(now, |id| tracker.snapshot(id), &mut ready);
        let mut result = self.rate_tick(now);
        let written = self.write_records(&mut ready, now);
        self.ready = ready;
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
        let mut rest = self.queue.flush_all(now, |id| tracker.snapshot(id));
        let mut result = self.write_records(&mut rest, now);
        if let Some(summary) = self.rate.as_mut().and_then(|r| r.flush(now)) {
            result = result.and(self.write_rate(&summary));
        }
        // Closed even after a failure, so what every output holds is written or counted.
        self.outputs.close(CLOSE_DEADLINE);
        result.and(self.outputs_ok())
    }

    /// Sees every record before the filter: what happened, whatever the outputs keep.
    pub fn set_observer(&mut self, tap: RecordTap) {
        self.observer = Some(tap);
    }

    /// Each output's counters, by name.
    pub fn output_stats(&self) -> BTreeMap<String, OutputStats> {
        self.outputs.stats()
    }

    fn outputs_ok(&self) -> Result<(), AuditError> {
        if self.outputs.all_failed() {
            return Err(AuditError::OutputsFailed(
                self.outputs.failure().unwrap_or_default(),
            ));
        }
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> AuditStats {
        let mut s = self.stats.clone();
        for o in self.outputs.stats().values() {
            s.records_written += o.written;
            s.records_filtered += o.filtered;
            s.filter_errors += o.filter_errors;
            s.write_errors += o.failed;
            s.records_dropped += o.dropped;
        }
        s.open_operations = self.tracker.open_operations();
        s.ops = self.tracker.stats().clone();
        s.queue = self.queue.stats().clone();
        s.otlp = self.outputs.otlp_stats();
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

    /// Hands the records to every output (each filters, masks and writes them on its own);
    /// the rate summary counts them all, before any output's filter.
    fn write_records(&mut self, records: &mut Vec<Record>, now: u64) -> Result<(), AuditError> {
        if !records.is_empty() {
            if let Some(observe) = self.observer.as_mut() {
                records.iter().for_each(observe);
            }
            if let Some(rate) = self.rate.as_mut() {
                for r in records.iter() {
                    rate.observe(r, now);
                }
            }
            self.outputs.send(records.drain(..));
        }
        self.outputs_ok()
    }
}
