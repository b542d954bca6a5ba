//! The rate summary (`--rate SECS`), like pymongowatch's RateFilter: every period, how many
//! operations each DB / Collection / Operation had, and per second. Each operation counts once,
//! by its last record (`final` or `closed`); `timeout` records are not counted, since the same
//! operation writes another record later.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::record::{format_time, Record, State};

/// One summary line: `{"Kind":"rate","From":...,"To":...,"Seconds":10.0,"Rates":[...]}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateSummary {
    #[serde(rename = "Kind")]
    pub kind: &'static str,
    #[serde(rename = "From")]
    pub from: String,
    #[serde(rename = "To")]
    pub to: String,
    #[serde(rename = "Seconds")]
    pub seconds: f64,
    #[serde(rename = "Rates")]
    pub rates: Vec<RateEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateEntry {
    #[serde(rename = "DB")]
    pub db: String,
    #[serde(rename = "Collection")]
    pub collection: Option<String>,
    #[serde(rename = "Operation")]
    pub operation: String,
    #[serde(rename = "Count")]
    pub count: u64,
    #[serde(rename = "PerSecond")]
    pub per_second: f64,
}

impl RateSummary {
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

type Key = (String, Option<String>, String);

#[derive(Clone, Debug)]
pub struct RateCounter {
    period_ns: u64,
    start_ns: Option<u64>,
    counts: BTreeMap<Key, u64>,
}

impl RateCounter {
    /// `period_secs` must be positive (checked by the config).
    pub fn new(period_secs: f64) -> Self {
        let period_ns = (period_secs * 1e9).max(1.0) as u64;
        Self {
            period_ns,
            start_ns: None,
            counts: BTreeMap::new(),
        }
    }

    /// Counts a written record, seen at `now_ns`.
    pub fn observe(&mut self, r: &Record, now_ns: u64) {
        self.start_ns.get_or_insert(now_ns);
        if r.state == State::Timeout {
            return;
        }
        *self
            .counts
            .entry((r.db.clone(), r.collection.clone(), r.operation.clone()))
            .or_insert(0) += 1;
    }

    fn summary(&mut self, from: u64, to: u64) -> Option<RateSummary> {
        if self.counts.is_empty() {
            return None;
        }
        let seconds = (to.saturating_sub(from)) as f64 / 1e9;
        let rates = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|((db, collection, operation), count)| RateEntry {
                db,
                collection,
                operation,
                count,
                per_second: if seconds > 0.0 {
                    count as f64 / seconds
                } else {
                    count as f64
                },
            })
            .collect();
        Some(RateSummary {
            kind: "rate",
            from: format_time(from),
            to: format_time(to),
            seconds,
            rates,
        })
    }

    /// Time passes: the summary of the period that just ended, if it counted anything.
    pub fn tick(&mut self, now_ns: u64) -> Option<RateSummary> {
        let start = *self.start_ns.get_or_insert(now_ns);
        if now_ns < start.saturating_add(self.period_ns) {
            return None;
        }
        let end = start.saturating_add(self.period_ns);
        let s = self.summary(start, end);
        // Skip whole idle periods.
        let elapsed = (now_ns - start) / self.period_ns;
        self.start_ns = Some(start + elapsed * self.period_ns);
        s
    }

    /// Shutdown: the partial period so far.
    pub fn flush(&mut self, now_ns: u64) -> Option<RateSummary> {
        let start = self.start_ns.unwrap_or(now_ns);
        self.start_ns = Some(now_ns);
        self.summary(start, now_ns.max(start))
    }
}
