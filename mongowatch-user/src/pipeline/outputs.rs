//! Several outputs at once. Each output has its own filter (expression, `ops`, `db`), mask
//! and [`RecordWriter`] (a line format over stdout or a file; the export layer adds OTLP), and
//! in the daemon its own worker thread behind a bounded queue. When an output's queue is full,
//! capture waits for it (up to [`FULL_WAIT`]; the kernel ring holds what comes meanwhile, and
//! what overflows it is counted): an audit tool should not drop a record it has decoded
//! because its own writer was briefly slower, as when the daemon catches up after a burst. An
//! output still full after that is stalled (a dead disk or peer): its records are dropped for
//! it alone, counted and logged, with no more waiting until its queue has drained to half, so
//! it holds back capture and the other outputs for at most [`FULL_WAIT`] at a time. A failed
//! output never takes the others with it (its first failure is said once; its later records
//! are counted as failed).
//!
//! Adding an output kind: a [`crate::config::OutputTarget`] variant, a [`RecordWriter`] for
//! it, and one arm in [`OutputPlan::open`]. The queue, the worker, the filter and the
//! counters come with it.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::{error, warn};

use super::audit::AuditError;
use crate::{
    config::{OutputConfig, OutputTarget},
    filter::{RecordFilter, Verdict},
    record::Record,
    sink::{
        open_output,
        otlp::{OtlpSink, OtlpStats, OtlpStatsSource},
        RecordWriter, Sink, SinkError,
    },
};

/// One output's counters, as `--stats` shows them under the output's name.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OutputStats {
    pub written: u64,
    /// Left out by this output's `filter`, `ops` or `db`.
    pub filtered: u64,
    /// Records on which this output's filter expression failed (they were kept).
    pub filter_errors: u64,
    /// Dropped because this output's queue was full (its writer was slower than the records).
    pub dropped: u64,
    /// Not written because the writer had failed, or still queued when the daemon exited.
    pub failed: u64,
    /// Waiting in the queue now.
    pub queued: u64,
}

#[derive(Default)]
struct Counters {
    /// Taken by the queue, and taken out of it by the worker.
    sent: AtomicU64,
    handled: AtomicU64,
    written: AtomicU64,
    filtered: AtomicU64,
    filter_errors: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// Set by the first write failure; the output writes nothing more.
    dead: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Counters {
    fn stats(&self) -> OutputStats {
        OutputStats {
            written: self.written.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            filter_errors: self.filter_errors.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            failed: self.failed.load(Relaxed),
            queued: self
                .sent
                .load(Relaxed)
                .saturating_sub(self.handled.load(Relaxed)),
        }
    }

    fn dead(&self) -> bool {
        self.dead.load(Relaxed)
    }
}

/// An output ready to start: its name, filter, writer and queue bound.
pub struct OutputPlan {
    pub name: String,
    pub filter: RecordFilter,
    pub writer: Box<dyn RecordWriter>,
    pub queue: usize,
    /// The exporter's own counters, when the writer is OTLP.
    pub otlp: Option<OtlpStatsSource>,
}

impl OutputPlan {
    /// Opens the writer `cfg` names.
    pub fn open(cfg: &OutputConfig) -> Result<Self, AuditError> {
        let mut otlp = None;
        let writer: Box<dyn RecordWriter> = match &cfg.target {
            OutputTarget::Lines { spec, .. } => {
                let formatter = cfg.formatter()?.expect("a Lines target has a formatter");
                Box::new(Sink::new(formatter, open_output(spec)?))
            }
            OutputTarget::Otlp(c) => {
                let sink = OtlpSink::open(c.clone())?;
                otlp = Some(sink.stats_source());
                Box::new(sink)
            }
        };
        let mut plan = Self::with_writer(cfg, writer)?;
        plan.otlp = otlp;
        Ok(plan)
    }

    /// `cfg`'s filter and queue with a writer made elsewhere (tests, or a daemon that routes
    /// records itself).
    pub fn with_writer(
        cfg: &OutputConfig,
        writer: Box<dyn RecordWriter>,
    ) -> Result<Self, AuditError> {
        Ok(Self {
            name: cfg.name.clone(),
            filter: cfg.record_filter()?,
            writer,
            queue: cfg.queue,
            otlp: None,
        })
    }
}

/// What happens to each record of one output: filter, mask, write.
struct Core {
    name: String,
    filter: RecordFilter,
    writer: Box<dyn RecordWriter>,
    counters: Arc<Counters>,
    unflushed: bool,
    /// Records the writer took; of them, those it still holds or lost are not written.
    taken: u64,
    lost_counted: u64,
}

impl Core {
    fn take(&mut self, r: &Record) {
        let c = &self.counters;
        if c.dead() {
            c.failed.fetch_add(1, Relaxed);
            return;
        }
        let verdict = self.filter.check(r);
        c.filter_errors.store(self.filter.errors(), Relaxed);
        if verdict == Verdict::Drop {
            c.filtered.fetch_add(1, Relaxed);
            return;
        }
        let result = if self.filter.masks() {
            let mut masked = r.clone();
            self.filter.mask(&mut masked);
            self.writer.write(&masked)
        } else {
            self.writer.write(r)
        };
        match result {
            Ok(()) => {
                self.taken += 1;
                self.unflushed = true;
            }
            Err(e) => {
                c.failed.fetch_add(1, Relaxed);
                self.die(&e);
            }
        }
        self.count_written();
    }

    /// `written` is what the writer wrote out: not what it holds for its next batch, nor
    /// what a failed batch lost (those are counted as failed, once).
    fn count_written(&mut self) {
        let lost = self.writer.lost();
        if lost > self.lost_counted {
            self.counters
                .failed
                .fetch_add(lost - self.lost_counted, Relaxed);
            self.lost_counted = lost;
        }
        let written = self.taken.saturating_sub(self.writer.held() + lost);
        self.counters.written.store(written, Relaxed);
    }

    fn flush(&mut self) {
        if self.unflushed && !self.counters.dead() {
            self.unflushed = false;
            if let Err(e) = self.writer.flush() {
                self.die(&e);
            }
            self.count_written();
        }
    }

    fn close(&mut self) {
        if !self.counters.dead() {
            if let Err(e) = self.writer.close() {
                self.die(&e);
            }
            self.count_written();
        }
    }

    /// The first failure, said once: the output writes nothing more.
    fn die(&self, e: &SinkError) {
        if !self.counters.dead.swap(true, Relaxed) {
            let what = format!("output `{}`: {e}", self.name);
            error!("{what}; it writes nothing more, and its records are counted as failed");
            *self
                .counters
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(what);
        }
    }
}

fn worker(mut core: Core, rx: Receiver<Arc<Record>>) {
    loop {
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => {
                // Caught up: a natural batch boundary.
                core.flush();
                // Records arrive one at a time as they are decoded: a worker parked in `recv`
                // would be woken (a futex call and a context switch on both sides) for each.
                // Letting them gather for a moment first makes the next batch one wakeup and
                // one write, for at most BATCH_WAIT more latency while they flow.
                thread::sleep(BATCH_WAIT);
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => match rx.recv() {
                        Ok(r) => r,
                        Err(_) => break,
                    },
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        core.take(&r);
        core.counters.handled.fetch_add(1, Relaxed);
    }
    core.flush();
    core.close();
}

enum Route {
    /// Written on the caller's thread (tests: what was handed over is written on return).
    Inline(Box<Core>),
    Worker {
        tx: Option<SyncSender<Arc<Record>>>,
        thread: Option<JoinHandle<()>>,
        queue: usize,
        /// Full for FULL_WAIT: records are dropped for it without waiting until its queue
        /// has drained to half.
        stalled: bool,
    },
}

struct Handle {
    name: String,
    counters: Arc<Counters>,
    otlp: Option<OtlpStatsSource>,
    route: Route,
}

/// Every output of the daemon.
pub struct Outputs {
    handles: Vec<Handle>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.handles.iter().map(|h| &h.name))
            .finish()
    }
}

/// How long capture waits for room in an output's full queue before that output counts as
/// stalled and its records are dropped.
pub const FULL_WAIT: Duration = Duration::from_millis(500);

/// How long an output's worker that ran out of records lets the next ones gather before it
/// waits on its queue (far below any queue's capacity at the rates the daemon can decode).
const BATCH_WAIT: Duration = Duration::from_millis(2);

/// How long the outputs may take at exit to write what is queued.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

fn core(plan: OutputPlan, counters: &Arc<Counters>) -> Core {
    Core {
        name: plan.name,
        filter: plan.filter,
        writer: plan.writer,
        counters: counters.clone(),
        unflushed: false,
        taken: 0,
        lost_counted: 0,
    }
}

impl Outputs {
    /// Starts one worker thread per output.
    pub fn spawn(plans: Vec<OutputPlan>) -> Result<Self, AuditError> {
        let mut handles = Vec::new();
        for plan in plans {
            let counters = Arc::new(Counters::default());
            let (tx, rx) = mpsc::sync_channel(plan.queue.max(1));
            let (name, queue) = (plan.name.clone(), plan.queue.max(1));
            let otlp = plan.otlp.clone();
            let core = core(plan, &counters);
            let thread = thread::Builder::new()
                .name(format!("output {name}"))
                .spawn(move || worker(core, rx))
                .map_err(AuditError::Thread)?;
            handles.push(Handle {
                name,
                counters,
                otlp,
                route: Route::Worker {
                    tx: Some(tx),
                    thread: Some(thread),
                    queue,
                    stalled: false,
                },
            });
        }
        Ok(Self { handles })
    }

    /// Outputs written on the caller's thread, in [`Outputs::send`].
    pub fn inline(plans: Vec<OutputPlan>) -> Self {
        let handles = plans
            .into_iter()
            .map(|plan| {
                let counters = Arc::new(Counters::default());
                Handle {
                    name: plan.name.clone(),
                    otlp: plan.otlp.clone(),
                    route: Route::Inline(Box::new(core(plan, &counters))),
                    counters,
                }
            })
            .collect();
        Self { handles }
    }

    /// Hands records to every output; waits for a full one's queue (see the module's doc).
    pub fn send(&mut self, records: impl IntoIterator<Item = Record>) {
        for r in records {
            let r = Arc::new(r);
            for h in &mut self.handles {
                let c = &h.counters;
                match &mut h.route {
                    Route::Inline(core) => core.take(&r),
                    _ if c.dead() => {
                        c.failed.fetch_add(1, Relaxed);
                    }
                    Route::Worker { tx: None, .. } => {
                        c.failed.fetch_add(1, Relaxed);
                    }
                    Route::Worker {
                        tx: Some(tx),
                        queue,
                        stalled,
                        ..
                    } => {
                        if *stalled && c.stats().queued <= (*queue / 2) as u64 {
                            *stalled = false;
                        }
                        let mut record = r.clone();
                        let mut waiting: Option<Instant> = None;
                        loop {
                            match tx.try_send(record) {
                                Ok(()) => {
                                    c.sent.fetch_add(1, Relaxed);
                                    break;
                                }
                                Err(TrySendError::Full(back)) => {
                                    let since = *waiting.get_or_insert_with(Instant::now);
                                    if !*stalled && since.elapsed() < FULL_WAIT {
                                        record = back;
                                        thread::sleep(Duration::from_micros(200));
                                        continue;
                                    }
                                    *stalled = true;
                                    let n = c.dropped.fetch_add(1, Relaxed) + 1;
                                    if n.is_power_of_two() {
                                        warn!(
                                            "output `{}`: its queue of {queue} records stayed \
                                             full for {FULL_WAIT:?} (its writer is stalled): \
                                             {n} records dropped for it so far",
                                            h.name
                                        );
                                    }
                                    break;
                                }
                                Err(TrySendError::Disconnected(_)) => {
                                    c.failed.fetch_add(1, Relaxed);
                                    if !c.dead.swap(true, Relaxed) {
                                        error!(
                                            "output `{}`: its writer stopped unexpectedly",
                                            h.name
                                        );
                                    }
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        for h in &mut self.handles {
            if let Route::Inline(core) = &mut h.route {
                core.flush();
            }
        }
    }

    /// Whether every output has failed (nothing can be written any more).
    pub fn all_failed(&self) -> bool {
        !self.handles.is_empty() && self.handles.iter().all(|h| h.counters.dead())
    }

    /// The first failure said, in output order.
    pub fn failure(&self) -> Option<String> {
        self.handles.iter().find_map(|h| {
            h.counters
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    /// Each output's counters, by name.
    /// The OTLP exporters' own counters, summed; `None` without an OTLP output.
    pub fn otlp_stats(&self) -> Option<OtlpStats> {
        self.handles.iter().filter_map(|h| h.otlp.as_ref()).fold(
            None,
            |sum: Option<OtlpStats>, s| {
                let mut sum = sum.unwrap_or_default();
                sum.add(&s.snapshot());
                Some(sum)
            },
        )
    }

    pub fn stats(&self) -> BTreeMap<String, OutputStats> {
        self.handles
            .iter()
            .map(|h| (h.name.clone(), h.counters.stats()))
            .collect()
    }

    /// Lets every output write what it holds, within `deadline` in all; what an output
    /// still holds then is counted as failed, and said.
    pub fn close(&mut self, deadline: Duration) {
        for h in &mut self.handles {
            match &mut h.route {
                Route::Inline(core) => {
                    core.flush();
                    core.close();
                }
                // Dropping the sender ends the worker once its queue is empty.
                Route::Worker { tx, .. } => drop(tx.take()),
            }
        }
        let end = Instant::now() + deadline;
        for h in &mut self.handles {
            let Route::Worker { thread, .. } = &mut h.route else {
                continue;
            };
            let Some(t) = thread.take() else { continue };
            while !t.is_finished() && Instant::now() < end {
                thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                if t.join().is_err() {
                    error!("output `{}`: its writer stopped unexpectedly", h.name);
                }
                continue;
            }
            let left = h.counters.stats().queued;
            h.counters.failed.fetch_add(left, Relaxed);
            // Not handled any more: `queued` reads 0 from here on.
            h.counters.handled.fetch_add(left, Relaxed);
            error!(
                "output `{}`: {left} records still queued after {deadline:?} at exit, not written",
                h.name
            );
        }
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        // The workers end on their own once their senders are gone.
        for h in &mut self.handles {
            if let Route::Worker { tx, .. } = &mut h.route {
                drop(tx.take());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Condvar, Mutex},
    };

    use super::*;

    fn rec(i: u32, db: &str) -> Record {
        Record {
            watch_id: format!("{i:024x}"),
            start_ns: 1_795_534_140_000_000_000,
            end_ns: 1_795_534_140_001_000_000,
            duration_ns: 1_000_000,
            db: db.into(),
            collection: Some("c".into()),
            operation: "find".into(),
            matched: Some(1),
            iteration: 1,
            pid: 1,
            comm: "app".into(),
            client: "127.0.0.1:1".into(),
            server: "127.0.0.1:27017".into(),
            request_bytes: 10,
            reply_bytes: 20,
            ..Default::default()
        }
    }

    /// Collects the WatchIDs it is given; `fail_after` makes every later write fail; `gate`
    /// holds every write until opened.
    #[derive(Clone, Default)]
    struct Probe {
        ids: Arc<Mutex<Vec<String>>>,
        fail_after: Option<usize>,
        gate: Option<Arc<(Mutex<bool>, Condvar)>>,
    }

    impl RecordWriter for Probe {
        fn write(&mut self, r: &Record) -> Result<(), SinkError> {
            if let Some(g) = &self.gate {
                let mut open = g.0.lock().unwrap();
                while !*open {
                    open = g.1.wait(open).unwrap();
                }
            }
            let mut ids = self.ids.lock().unwrap();
            if self.fail_after.is_some_and(|n| ids.len() >= n) {
                return Err(SinkError::Write(io::Error::from_raw_os_error(libc::ENOSPC)));
            }
            ids.push(r.watch_id.clone());
            Ok(())
        }

        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn plan(
        name: &str,
        writer: &(impl RecordWriter + Clone + 'static),
        filter: Option<&str>,
        queue: usize,
    ) -> OutputPlan {
        OutputPlan {
            name: name.into(),
            filter: RecordFilter::new(filter, None, None, false).unwrap(),
            writer: Box::new(writer.clone()),
            queue,
            otlp: None,
        }
    }

    #[test]
    fn a_failed_output_loses_nothing_of_the_others() {
        let (a, b) = (Probe::default(), Probe::default());
        let bad = Probe {
            fail_after: Some(3),
            ..Probe::default()
        };
        let mut outs = Outputs::spawn(vec![
            plan("a", &a, None, 1000),
            plan("bad", &bad, None, 1000),
            plan("b", &b, Some(r#"DB == "x""#), 1000),
        ])
        .unwrap();
        for i in 0..100 {
            outs.send(vec![rec(i, if i % 2 == 0 { "x" } else { "y" })]);
        }
        outs.close(CLOSE_DEADLINE);
        assert!(!outs.all_failed());
        assert_eq!(a.ids.lock().unwrap().len(), 100);
        assert_eq!(b.ids.lock().unwrap().len(), 50);
        let stats = outs.stats();
        assert_eq!(stats["a"].written, 100);
        assert_eq!((stats["b"].written, stats["b"].filtered), (50, 50));
        let s = &stats["bad"];
        assert_eq!((s.written, s.failed, s.dropped, s.queued), (3, 97, 0, 0));
        assert!(outs.failure().unwrap().contains("output `bad`"));
    }

    /// An output slower than the records, but not stalled: capture waits for room in its
    /// queue rather than dropping records it decoded.
    #[test]
    fn a_slow_output_is_waited_for_not_dropped() {
        let slow = Batches {
            delay: Duration::from_millis(2),
            ..Batches::default()
        };
        let mut outs = Outputs::spawn(vec![plan("slow", &slow, None, 4)]).unwrap();
        for i in 0..40 {
            outs.send(vec![rec(i, "x")]);
        }
        outs.close(CLOSE_DEADLINE);
        let s = &outs.stats()["slow"];
        assert_eq!((s.written, s.dropped, s.failed), (40, 0, 0));
        assert_eq!(*slow.written.lock().unwrap(), 40);
    }

    /// A stalled output (its writer stuck past FULL_WAIT) has its records dropped, counted.
    #[test]
    fn a_slow_output_drops_its_own_records_only() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let fast = Probe::default();
        let slow = Probe {
            gate: Some(gate.clone()),
            ..Probe::default()
        };
        let mut outs = Outputs::spawn(vec![
            plan("fast", &fast, None, 1000),
            plan("slow", &slow, None, 4),
        ])
        .unwrap();
        for i in 0..50 {
            outs.send(vec![rec(i, "x")]);
        }
        // The stuck writer holds one record and its queue four: after one wait of FULL_WAIT
        // the rest are its drops.
        let dropped = outs.stats()["slow"].dropped;
        assert!((45..=46).contains(&dropped), "{dropped}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        outs.close(CLOSE_DEADLINE);
        let stats = outs.stats();
        assert_eq!(stats["fast"].written, 50);
        assert_eq!(stats["slow"].written + stats["slow"].dropped, 50);
        assert_eq!(stats["slow"].failed, 0);
    }

    /// Counts the records and flushes it is given, taking `delay` over each record.
    #[derive(Clone, Default)]
    struct Batches {
        written: Arc<Mutex<usize>>,
        flushes: Arc<Mutex<usize>>,
        delay: Duration,
    }

    impl RecordWriter for Batches {
        fn write(&mut self, _: &Record) -> Result<(), SinkError> {
            thread::sleep(self.delay);
            *self.written.lock().unwrap() += 1;
            Ok(())
        }

        fn flush(&mut self) -> Result<(), SinkError> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    /// Records handed over one at a time while they flow reach the writer in batches: a flush
    /// (a write(2) for a file) per record cost the daemon more than decoding it.
    #[test]
    fn records_handed_over_one_by_one_are_flushed_in_batches() {
        let b = Batches::default();
        let mut outs = Outputs::spawn(vec![plan("b", &b, None, 10_000)]).unwrap();
        let n = 2000;
        for i in 0..n {
            outs.send(vec![rec(i, "x")]);
        }
        outs.close(CLOSE_DEADLINE);
        assert_eq!(*b.written.lock().unwrap(), n as usize);
        assert_eq!(outs.stats()["b"].written, u64::from(n));
        // One per record before; a handful now (more only when this thread is descheduled
        // for the whole wait while it sends).
        let flushes = *b.flushes.lock().unwrap();
        assert!(
            flushes <= n as usize / 20,
            "{flushes} flushes for {n} records"
        );
    }

    #[test]
    fn a_stuck_output_is_counted_at_exit_not_waited_for() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let stuck = Probe {
            gate: Some(gate.clone()),
            ..Probe::default()
        };
        let mut outs = Outputs::spawn(vec![plan("stuck", &stuck, None, 10)]).unwrap();
        outs.send((0..5).map(|i| rec(i, "x")));
        outs.close(Duration::from_millis(50));
        let s = &outs.stats()["stuck"];
        // One record is in the writer's hands and four in the queue: none written.
        assert_eq!((s.written, s.failed, s.queued), (0, 5, 0));
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    #[test]
    fn every_output_failed_is_all_failed() {
        let bad = Probe {
            fail_after: Some(0),
            ..Probe::default()
        };
        let mut outs = Outputs::inline(vec![plan("bad", &bad, None, 1)]);
        assert!(!outs.all_failed());
        outs.send(vec![rec(1, "x"), rec(2, "x")]);
        assert!(outs.all_failed());
        assert_eq!(outs.stats()["bad"].failed, 2);
    }
}
