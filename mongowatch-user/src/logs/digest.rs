//! `mongowatch digest`: the report a DBA makes with pt-mongodb-query-digest, from an audit log
//! instead of the profiler. Operations (the last record of each WatchID, so a cursor written
//! at each timeout counts once) are grouped by query shape: the operation, the namespace and
//! the Filter with its values replaced as `--mask` does (strings by `x` times their length,
//! numbers by 0, the rest by null; a log written with `--mask` gives the same shapes). Each
//! shape gets its count, total and p50/p95/p99 Duration, documents matched and bytes, ranked
//! by total Duration.

use std::collections::HashMap;

use serde::Serialize;

use super::{Entry, Log};
use crate::record::Json;

/// One query shape's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Shape {
    pub rank: usize,
    pub operation: String,
    #[serde(rename = "DB")]
    pub db: String,
    pub collection: Option<String>,
    /// The masked Filter (null when the operations had none).
    pub filter: Option<Json>,
    pub count: u64,
    /// Seconds, summed over the shape's operations.
    pub total_duration: f64,
    #[serde(rename = "P50Duration")]
    pub p50: f64,
    #[serde(rename = "P95Duration")]
    pub p95: f64,
    #[serde(rename = "P99Duration")]
    pub p99: f64,
    /// Summed over the operations that report it; null when none does (inserts).
    pub matched_count: Option<i64>,
    pub request_bytes: u64,
    pub reply_bytes: u64,
}

impl Shape {
    pub fn namespace(&self) -> String {
        match &self.collection {
            Some(c) => format!("{}.{c}", self.db),
            None => self.db.clone(),
        }
    }
}

/// The value at rank ceil(p * n) of `sorted` (nearest rank): always one of the values seen.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The shapes of the operations in `log`, ranked by total Duration (then count, then name).
pub fn digest(log: &Log) -> Vec<Shape> {
    let mut last: HashMap<&str, &Entry> = HashMap::new();
    let mut order = Vec::new();
    for e in &log.entries {
        if last.insert(&e.fields.watch_id, e).is_none() {
            order.push(e.fields.watch_id.as_str());
        }
    }
    struct Acc {
        shape: Shape,
        durations: Vec<f64>,
    }
    let mut groups: HashMap<String, Acc> = HashMap::new();
    for id in order {
        let f = &last[id].fields;
        let filter = f.filter.as_ref().map(Json::masked);
        let operation = f.operation.clone().unwrap_or_default();
        let db = f.db.clone().unwrap_or_default();
        let key = format!(
            "{operation}\u{0}{db}\u{0}{}\u{0}{}",
            f.collection.as_deref().unwrap_or("\u{1}"),
            filter.as_ref().map_or(String::new(), Json::to_json_string)
        );
        let acc = groups.entry(key).or_insert_with(|| Acc {
            shape: Shape {
                rank: 0,
                operation,
                db,
                collection: f.collection.clone(),
                filter,
                count: 0,
                total_duration: 0.0,
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
                matched_count: None,
                request_bytes: 0,
                reply_bytes: 0,
            },
            durations: Vec::new(),
        });
        let s = &mut acc.shape;
        s.count += 1;
        let d = f
            .duration
            .filter(|d| d.is_finite() && *d >= 0.0)
            .unwrap_or(0.0);
        acc.durations.push(d);
        if let Some(m) = f.matched {
            s.matched_count = Some(s.matched_count.unwrap_or(0).saturating_add(m));
        }
        s.request_bytes = s.request_bytes.saturating_add(f.request_bytes.unwrap_or(0));
        s.reply_bytes = s.reply_bytes.saturating_add(f.reply_bytes.unwrap_or(0));
    }
    let mut shapes: Vec<Shape> = groups
        .into_values()
        .map(|mut acc| {
            acc.durations.sort_by(f64::total_cmp);
            let s = &mut acc.shape;
            s.total_duration = acc.durations.iter().sum();
            s.p50 = percentile(&acc.durations, 0.50);
            s.p95 = percentile(&acc.durations, 0.95);
            s.p99 = percentile(&acc.durations, 0.99);
            acc.shape
        })
        .collect();
    shapes.sort_by(|a, b| {
        b.total_duration
            .total_cmp(&a.total_duration)
            .then(b.count.cmp(&a.count))
            .then_with(|| a.namespace().cmp(&b.namespace()))
            .then_with(|| a.operation.cmp(&b.operation))
            .then_with(|| {
                let f = |s: &Shape| s.filter.as_ref().map(Json::to_json_string);
                f(a).cmp(&f(b))
            })
    });
    for (i, s) in shapes.iter_mut().enumerate() {
        s.rank = i + 1;
    }
    shapes
}

/// The shapes as an aligned text table, one row per shape; durations in seconds.
pub fn table(shapes: &[Shape]) -> String {
    let head = [
        "Rank",
        "Count",
        "Total",
        "p50",
        "p95",
        "p99",
        "Matched",
        "Bytes",
        "Operation",
        "Namespace",
        "Filter",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| (*h).to_owned()).collect()];
    for s in shapes {
        rows.push(vec![
            s.rank.to_string(),
            s.count.to_string(),
            format!("{:.6}", s.total_duration),
            format!("{:.6}", s.p50),
            format!("{:.6}", s.p95),
            format!("{:.6}", s.p99),
            s.matched_count.map_or("-".to_owned(), |m| m.to_string()),
            s.request_bytes.saturating_add(s.reply_bytes).to_string(),
            s.operation.clone(),
            s.namespace(),
            s.filter
                .as_ref()
                .map_or("-".to_owned(), Json::to_json_string),
        ]);
    }
    let mut widths = vec![0; head.len()];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // Figures right-aligned, names left-aligned; the last column is not padded.
            if i < 8 {
                line.push_str(&format!("{c:>w$}"));
            } else if i + 1 < r.len() {
                line.push_str(&format!("{c:<w$}"));
            } else {
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The shapes as JSON Lines, one object per shape, in rank order.
pub fn json_lines(shapes: &[Shape]) -> String {
    shapes
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default() + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::read_log;

    /// Five operations: three finds of one shape (one written at a timeout, then final), one
    /// find of another shape, one insert.
    const LOG: &str = concat!(
        r#"{"WatchID":"w1","DB":"shop","Collection":"orders","Operation":"find","Filter":{"status":"open","n":{"$gt":5}},"Duration":0.010,"MatchedCount":10,"RequestBytes":100,"ReplyBytes":1000}"#,
        "\n",
        r#"{"WatchID":"w2","DB":"shop","Collection":"orders","Operation":"find","Filter":{"status":"done","n":{"$gt":7}},"Duration":0.030,"MatchedCount":30,"RequestBytes":100,"ReplyBytes":3000}"#,
        "\n",
        r#"{"WatchID":"w3","DB":"shop","Collection":"orders","Operation":"find","Filter":{"status":"gone","n":{"$gt":1}},"Duration":0.001,"MatchedCount":100,"RequestBytes":100,"ReplyBytes":16000,"State":"timeout"}"#,
        "\n",
        r#"{"WatchID":"w4","DB":"shop","Collection":"orders","Operation":"find","Filter":{"status":"open"},"Duration":0.005,"MatchedCount":1,"RequestBytes":90,"ReplyBytes":500}"#,
        "\n",
        r#"{"WatchID":"w5","DB":"shop","Collection":"orders","Operation":"insert","Filter":null,"Duration":0.002,"MatchedCount":null,"RequestBytes":300,"ReplyBytes":50}"#,
        "\n",
        r#"{"WatchID":"w3","DB":"shop","Collection":"orders","Operation":"find","Filter":{"status":"gone","n":{"$gt":1}},"Duration":0.020,"MatchedCount":200,"RequestBytes":200,"ReplyBytes":32000,"State":"final"}"#,
        "\n",
    );

    #[test]
    fn the_expected_table() {
        let shapes = digest(&read_log("d.jsonl", LOG.as_bytes()).unwrap());
        assert_eq!(
            table(&shapes),
            "\
Rank  Count     Total       p50       p95       p99  Matched  Bytes  Operation  Namespace    Filter
   1      3  0.060000  0.020000  0.030000  0.030000      240  36400  find       shop.orders  {\"status\":\"xxxx\",\"n\":{\"$gt\":0}}
   2      1  0.005000  0.005000  0.005000  0.005000        1    590  find       shop.orders  {\"status\":\"xxxx\"}
   3      1  0.002000  0.002000  0.002000  0.002000        -    350  insert     shop.orders  -
"
        );
        let j: Vec<serde_json::Value> = json_lines(&shapes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(j.len(), 3);
        assert_eq!(j[0]["Count"], 3);
        assert_eq!(j[0]["P95Duration"], 0.03);
        assert_eq!(j[0]["Filter"]["n"]["$gt"], 0);
        assert_eq!(j[2]["MatchedCount"], serde_json::Value::Null);
        assert_eq!(
            (j[2]["RequestBytes"].clone(), j[2]["ReplyBytes"].clone()),
            (300.into(), 50.into())
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            (
                percentile(&v, 0.5),
                percentile(&v, 0.95),
                percentile(&v, 0.99)
            ),
            (50.0, 95.0, 99.0)
        );
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
