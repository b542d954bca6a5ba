//! The delay queue: pymongowatch's WatchQueue, natively.
//!
//! The tracker hands over record snapshots. An open operation's latest snapshot waits here with
//! an idle deadline (`timeout`, re-armed by every new snapshot); when the deadline passes, the
//! snapshot is written with `State: "timeout"` and, if the operation goes on, its later
//! snapshots are written again under the same WatchID with the new totals. A terminal snapshot
//! (final or closed) is ready at once. Every ready record is held `delay` seconds and records
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

#[derive(Debug)]
struct Open {
    record: Record,
    /// `None` once the timeout fired and nothing changed since.
    deadline: Option<u64>,
}

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

    /// A snapshot from the tracker at time `now_ns`. `terminal`: the operation is over.
    pub fn update(&mut self, record: Record, terminal: bool, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        let id = record.watch_id.clone();
        let (previous, armed) = if terminal {
            let previous = self.open.remove(&id);
            self.push_ready(record);
            (previous, None)
        } else {
            let deadline = self.now_ns.saturating_add(self.cfg.timeout_ns);
            self.deadlines.insert((deadline, id.clone()));
            let open = Open {
                record,
                deadline: Some(deadline),
            };
            (self.open.insert(id.clone(), open), Some(deadline))
        };
        // Re-armed or ended: the old deadline no longer counts (unless it is the new one).
        if let Some(Open {
            deadline: Some(d), ..
        }) = previous
        {
            if armed != Some(d) {
                self.deadlines.remove(&(d, id));
            }
        }
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
    pub fn advance(&mut self, now_ns: u64) -> Vec<Record> {
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
                if open.deadline == Some(deadline) {
                    open.deadline = None;
                    let mut r = open.record.clone();
                    r.state = State::Timeout;
                    r.end_ns = r.end_ns.max(deadline);
                    fired.push(r);
                }
            }
        }
        fired.sort_by(|a, b| (a.start_ns, &a.watch_id).cmp(&(b.start_ns, &b.watch_id)));
        for r in fired {
            self.stats.timeouts += 1;
            self.push_ready(r);
        }
        let mut out = Vec::new();
        while let Some(entry) = self.ready.first_entry() {
            if entry.get().due_ns > now {
                break;
            }
            let r = entry.remove().record;
            out.push(self.leave(r));
        }
        out
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
    pub fn flush_all(&mut self, now_ns: u64) -> Vec<Record> {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        self.deadlines.clear();
        let mut open: Vec<Open> = self.open.drain().map(|(_, o)| o).collect();
        open.sort_by(|a, b| {
            (a.record.start_ns, &a.record.watch_id).cmp(&(b.record.start_ns, &b.record.watch_id))
        });
        for o in open {
            if o.deadline.is_some() {
                let mut r = o.record;
                r.state = State::Timeout;
                r.end_ns = r.end_ns.max(now);
                self.stats.timeouts += 1;
                self.push_ready(r);
            }
        }
        let ready = std::mem::take(&mut self.ready);
        ready.into_values().map(|e| self.leave(e.record)).collect()
    }
}
