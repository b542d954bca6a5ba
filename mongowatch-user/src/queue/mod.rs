//! The delay queue: pymongowatch's WatchQueue, natively.
//!
//! An open operation waits here as its WatchID and an idle deadline (`timeout`, re-armed each
//! time the tracker says it changed); its record stays with the tracker, which the caller
//! reads for us when a deadline passes (`snapshot`), so an open operation is held once. The
//! snapshot is then written with `State: "timeout"` and, if the operation goes on, its later
//! records are written again under the same WatchID with the new totals. An ended operation's
//! record (final or closed) is ready at once. Every ready record is held `delay` seconds and records
//! leave in `StartTime` order. Time comes only from the inputs, never the wall clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::record::{Record, State};

#[derive(Copy, Clone, Debug, PartialEq)]
pub struct QueueConfig {
    /// Idle time after which an open operation is written with State `timeout` (ns).
    pub timeout_ns: u64,
    /// How long every record is held before it is written (ns); keeps output in StartTime
    /// order among records that become ready within that time.
    pub delay_ns: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            timeout_ns: 10_000_000_000,
            delay_ns: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct QueueStats {
    /// Timeout records written.
    pub timeouts: u64,
    /// Ready records replaced by a newer record of the same WatchID before they left.
    pub superseded: u64,
    /// Records that left after a record with a later StartTime (the delay was too short).
    pub out_of_order: u64,
}

/// An open operation: `None` once the timeout fired and nothing changed since.
type Open = Option<u64>;

#[derive(Debug)]
struct Ready {
    record: Record,
    due_ns: u64,
}

#[derive(Debug, Default)]
pub struct WatchQueue {
    cfg: QueueConfig,
    now_ns: u64,
    open: HashMap<String, Open>,
    /// Armed deadlines (deadline, WatchID), so a tick costs only what fires.
    deadlines: BTreeSet<(u64, String)>,
    /// Ready records by (StartTime, arrival).
    ready: BTreeMap<(u64, u64), Ready>,
    ready_by_id: HashMap<String, (u64, u64)>,
    seq: u64,
    last_start_out: u64,
    stats: QueueStats,
}

impl WatchQueue {
    pub fn new(cfg: QueueConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Open operations waiting (for more batches or their timeout).
    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    /// Records waiting for their delay.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The latest time seen.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// The tracker says the open operation `watch_id` began or changed at `now_ns`: its idle
    /// deadline starts again.
    pub fn changed(&mut self, watch_id: &str, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        let deadline = self.now_ns.saturating_add(self.cfg.timeout_ns);
        let previous = self.open.insert(watch_id.to_owned(), Some(deadline));
        if let Some(Some(d)) = previous {
            if d != deadline {
                self.deadlines.remove(&(d, watch_id.to_owned()));
            }
        }
        self.deadlines.insert((deadline, watch_id.to_owned()));
    }

    /// The operation is over: its last record is ready (held for the delay).
    pub fn ended(&mut self, record: Record, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        if let Some(Some(d)) = self.open.remove(&record.watch_id) {
            self.deadlines.remove(&(d, record.watch_id.clone()));
        }
        self.push_ready(record);
    }

    fn push_ready(&mut self, record: Record) {
        let mut due_ns = self.now_ns.saturating_add(self.cfg.delay_ns);
        if let Some(key) = self.ready_by_id.remove(&record.watch_id) {
            // The newer record of the same WatchID is the truth: it replaces the waiting one
            // and keeps its place and due time.
            if let Some(old) = self.ready.remove(&key) {
                due_ns = old.due_ns;
                self.stats.superseded += 1;
            }
        }
        self.seq += 1;
        let key = (record.start_ns, self.seq);
        self.ready_by_id.insert(record.watch_id.clone(), key);
        self.ready.insert(key, Ready { record, due_ns });
    }

    /// Time passes: fires idle timeouts and returns the records now due, in StartTime order.
    /// `snapshot` gives an open operation's current record (the tracker's).
    pub fn advance<'a>(
        &mut self,
        now_ns: u64,
        snapshot: impl Fn(&str) -> Option<&'a Record>,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        self.advance_into(now_ns, snapshot, &mut out);
        out
    }

    /// [`WatchQueue::advance`], appending to `out`: the daemon calls this for every input,
    /// and a fresh vector of records each time (a large allocation) was a tenth of its time.
    pub fn advance_into<'a>(
        &mut self,
        now_ns: u64,
        snapshot: impl Fn(&str) -> Option<&'a Record>,
        out: &mut Vec<Record>,
    ) {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        let mut fired: Vec<Record> = Vec::new();
        while let Some(first) = self.deadlines.first() {
            if first.0 > now {
                break;
            }
            let Some((deadline, id)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some(open) = self.open.get_mut(&id) {
                if *open == Some(deadline) {
                    *open = None;
                    // Every open WatchID here is open in the tracker: both hear of the end
                    // in the same call.
                    if let Some(r) = snapshot(&id) {
                        let mut r = r.clone();
                        r.state = State::Timeout;
                        r.end_ns = r.end_ns.max(deadline);
                        fired.push(r);
                    }
                }
            }
        }
        fired.sort_by(|a, b| (a.start_ns, &a.watch_id).cmp(&(b.start_ns, &b.watch_id)));
        for r in fired {
            self.stats.timeouts += 1;
            self.push_ready(r);
        }
        while let Some(entry) = self.ready.first_entry() {
            if entry.get().due_ns > now {
                break;
            }
            let r = entry.remove().record;
            out.push(self.leave(r));
        }
    }

    fn leave(&mut self, r: Record) -> Record {
        self.ready_by_id.remove(&r.watch_id);
        if r.start_ns < self.last_start_out {
            self.stats.out_of_order += 1;
        }
        self.last_start_out = self.last_start_out.max(r.start_ns);
        r
    }

    /// Shutdown: every pending record leaves now, in StartTime order. Open operations with
    /// news since their last record leave with State `timeout` (still open when we stopped).
    pub fn flush_all<'a>(
        &mut self,
        now_ns: u64,
        snapshot: impl Fn(&str) -> Option<&'a Record>,
    ) -> Vec<Record> {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        self.deadlines.clear();
        let mut open: Vec<Record> = self
            .open
            .drain()
            .filter(|(_, deadline)| deadline.is_some())
            .filter_map(|(id, _)| snapshot(&id).cloned())
            .collect();
        open.sort_by(|a, b| (a.start_ns, &a.watch_id).cmp(&(b.start_ns, &b.watch_id)));
        for mut r in open {
            r.state = State::Timeout;
            r.end_ns = r.end_ns.max(now);
            self.stats.timeouts += 1;
            self.push_ready(r);
        }
        let ready = std::mem::take(&mut self.ready);
        ready.into_values().map(|e| self.leave(e.record)).collect()
    }
}
