//! The audit acceptance's oracle: a driver's own command monitoring, grouped into
//! application-level operations by the record contract's rules, turned into the fields the
//! audit record must carry, and matched one to one with mongowatch's records.
//!
//! The oracle files are written by `tests/workloads/audit_*` (pymongo's `CommandListener`, the
//! Node driver's and mongosh's `monitorCommands`): one JSON line per command event with the
//! command document (`command`) and the reply (`reply`) as Relaxed Extended JSON, and the
//! cursor ids as decimal strings (`cursor_id` of a reply, `target_cursor_ids` of a getMore or
//! killCursors), which keeps 64-bit ids exact whatever the writer's number type.
//!
//! Grouping ([`group_operations`]): a command whose reply opens a cursor (id != 0), every
//! getMore on that id and the killCursors naming it are ONE operation; the operation ends when
//! a reply says id 0, a getMore fails, or killCursors names the id. Anything else is one
//! operation. Handshakes, heartbeats and session bookkeeping ([`NOT_RECORDED`]) are none.
//!
//! Matching ([`match_records`]) — records carry no request id, so:
//! 1. records are grouped by WatchID; the last record of a WatchID is its truth, and every
//!    earlier one must be a `timeout` record (the contract's rule);
//! 2. per process (`Pid`), an expected operation that opened a cursor takes the record with the
//!    same Operation and that CursorId (ids are random 64-bit numbers: a strong anchor);
//! 3. every other expected operation takes, in the oracle's order, the next unclaimed record of
//!    the same Operation in StartTime order. The workloads issue operations one after another,
//!    so the n-th `update` the driver sent is the n-th `update` record by StartTime;
//! 4. anything left over on either side is a failure (missing or extra record).
//!
//! Then DB, Collection, Operation, Filter (numbers compared by value: Relaxed Extended JSON
//! writes a double 1.0 as `1.0` in Python and `1` in JavaScript), the five counts, Iteration,
//! State, CursorId and Error (code, codeName, errmsg, writeErrors) must be equal.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    fs,
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Commands that are never audit records by default (handshakes, heartbeats, authentication,
/// session bookkeeping), as the contract and mongowatch's documented choices say.
pub const NOT_RECORDED: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "saslStart",
    "saslContinue",
    "authenticate",
    "getnonce",
    "logout",
    "endSessions",
];

/// Reads an audit oracle (JSON lines; a last line cut short by a kill is ignored).
pub fn read_events(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => bail!("{} line {}: {e}: {line:.300}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// The error an audit record must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedError {
    pub code: Option<i64>,
    pub code_name: Option<String>,
    pub errmsg: Option<String>,
    pub write_errors: Option<u64>,
}

/// How an expected operation ended in the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OracleEnd {
    /// A reply was final (no cursor, cursor exhausted, killed or failed).
    Final,
    /// The cursor was still open when the oracle ends.
    Open,
    /// A request got no reply (the process was killed first).
    Unanswered,
}

/// One application-level operation as the oracle saw it, with the fields its record must have.
#[derive(Debug, Clone)]
pub struct ExpectedOp {
    /// Index in the oracle's order of operations.
    pub index: usize,
    /// The wire command names of its commands (`find`, `getMore`, ..., `killCursors`).
    pub commands: Vec<String>,
    pub db: String,
    pub collection: Option<String>,
    pub operation: String,
    pub filter: Value,
    pub matched: Option<i64>,
    pub inserted: Option<i64>,
    pub upserted: Option<i64>,
    pub modified: Option<i64>,
    pub deleted: Option<i64>,
    /// 1 + getMores answered.
    pub iteration: i64,
    pub end: OracleEnd,
    pub cursor_id: Option<i64>,
    pub error: Option<ExpectedError>,
    /// The first command document (for messages and for picking operations in tests).
    pub command: Value,
    /// The connection each command went out on, as the oracle names it (pymongo: the
    /// server's connection id), in the order of `commands`; null where it does not say.
    pub connections: Vec<Value>,
}

impl ExpectedOp {
    /// The State the record must have, given how the oracle saw the operation end and what the
    /// test did to the process (`killed`: the process was SIGKILLed with this operation open).
    pub fn expected_state(&self, killed: bool) -> &'static str {
        match (self.end, killed) {
            (OracleEnd::Final, _) => "final",
            (_, true) => "closed",
            (OracleEnd::Open, false) => "timeout",
            (OracleEnd::Unanswered, false) => "closed",
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "#{} {} {}.{} filter {} (commands {:?})",
            self.index,
            self.operation,
            self.db,
            self.collection.as_deref().unwrap_or("-"),
            short(&self.filter),
            self.commands
        )
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 200 {
        return s;
    }
    let mut i = 200;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    format!("{}...", &s[..i])
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        // Relaxed Extended JSON of an out-of-range Int64, or our string ids.
        Value::String(s) => s.parse().ok(),
        Value::Object(o) => o
            .get("$numberLong")
            .or_else(|| o.get("$numberInt"))
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse().ok()),
        _ => None,
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(_) => true,
    }
}

fn reply_ok(reply: &Value) -> bool {
    match reply.get("ok") {
        None => true,
        v => truthy(v),
    }
}

/// The Filter the contract gives a command.
fn expected_filter(name: &str, cmd: &Value) -> Value {
    let or_empty = |key: &str| {
        cmd.get(key)
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()))
    };
    let qs = |key: &str| {
        let mut v: Vec<Value> = cmd
            .get(key)
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|s| s.get("q").cloned()).collect())
            .unwrap_or_default();
        match v.len() {
            0 => Value::Null,
            1 => v.pop().unwrap(),
            _ => Value::Array(v),
        }
    };
    match name {
        "find" => or_empty("filter"),
        "count" | "distinct" | "findAndModify" | "findandmodify" => or_empty("query"),
        "aggregate" => cmd.get("pipeline").cloned().unwrap_or(Value::Null),
        "update" => qs("updates"),
        "delete" => qs("deletes"),
        _ => Value::Null,
    }
}

fn error_from(d: &Value, write_errors: Option<u64>) -> ExpectedError {
    ExpectedError {
        code: d.get("code").and_then(as_i64),
        code_name: d
            .get("codeName")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        errmsg: d.get("errmsg").and_then(|s| s.as_str()).map(str::to_owned),
        write_errors,
    }
}

/// The first error a reply reports, per the contract.
fn expected_error(reply: &Value) -> Option<ExpectedError> {
    if !reply_ok(reply) {
        return Some(error_from(reply, None));
    }
    if let Some(we) = reply.get("writeErrors").and_then(|a| a.as_array()) {
        if let Some(first) = we.first() {
            return Some(error_from(first, Some(we.len() as u64)));
        }
    }
    reply
        .get("writeConcernError")
        .filter(|w| w.is_object())
        .map(|w| error_from(w, None))
}

/// Groups an oracle's command events into operations (see the module doc).
pub fn group_operations(events: &[Value]) -> Result<Vec<ExpectedOp>> {
    // Each reply event answers the earliest unanswered started event with its request id.
    // Request ids are unique within one driver process except for exhaust streams: pymongo
    // reports every further reply of one as a getMore started and succeeded with request id 0.
    let mut pending: HashMap<i64, VecDeque<usize>> = HashMap::new();
    let mut replies: HashMap<usize, &Value> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let id = e["request_id"]
            .as_i64()
            .with_context(|| format!("an oracle event without request_id: {e}"))?;
        match e["event"].as_str() {
            Some("started") => pending.entry(id).or_default().push_back(i),
            Some("succeeded") | Some("failed") => {
                // A reply whose start the oracle missed (mongosh subscribes to its events
                // while its startup probes are under way) belongs to no operation it knows.
                if let Some(started) = pending.get_mut(&id).and_then(VecDeque::pop_front) {
                    replies.insert(started, e);
                }
            }
            other => bail!("unknown oracle event {other:?}: {e}"),
        }
    }
    let mut ops: Vec<ExpectedOp> = Vec::new();
    // Open cursors: id -> index in `ops`.
    let mut open: HashMap<i64, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if e["event"] != "started" {
            continue;
        }
        let reply_ev = replies.get(&i).copied();
        let c = CommandEv {
            started: e,
            reply_ev,
        };
        let name = c.name().to_string();
        if NOT_RECORDED.contains(&name.as_str()) {
            continue;
        }
        let targets: Vec<i64> = e
            .get("target_cursor_ids")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(as_i64).collect())
            .unwrap_or_default();
        if name == "getMore" {
            if let Some(&i) = targets.first().and_then(|t| open.get(t)) {
                let op = &mut ops[i];
                op.commands.push(name.clone());
                op.connections.push(e["server_connection_id"].clone());
                match c.reply() {
                    None => {
                        op.end = OracleEnd::Unanswered;
                        open.remove(&targets[0]);
                    }
                    Some(r) => {
                        op.iteration += 1;
                        if !reply_ok(r) {
                            if op.error.is_none() {
                                op.error = expected_error(r);
                            }
                            op.end = OracleEnd::Final;
                            open.remove(&targets[0]);
                        } else if let Some((next, batch)) = c.cursor() {
                            op.matched = Some(op.matched.unwrap_or(0) + batch);
                            if next == 0 {
                                op.end = OracleEnd::Final;
                                open.remove(&targets[0]);
                            }
                        }
                    }
                }
                continue;
            }
        }
        if name == "killCursors" {
            let mut any = false;
            for t in &targets {
                if let Some(i) = open.remove(t) {
                    ops[i].commands.push(name.clone());
                    ops[i].connections.push(e["server_connection_id"].clone());
                    ops[i].end = OracleEnd::Final;
                    any = true;
                }
            }
            if any {
                continue;
            }
        }
        // A new operation.
        let cmd = c.cmd().clone();
        let collection = cmd
            .get(&name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let mut op = ExpectedOp {
            index: ops.len(),
            commands: vec![name.clone()],
            db: e["database"].as_str().unwrap_or("").to_string(),
            collection: if name == "getMore" {
                cmd.get("collection")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            } else {
                collection
            },
            operation: name.clone(),
            filter: expected_filter(&name, &cmd),
            matched: None,
            inserted: None,
            upserted: None,
            modified: None,
            deleted: None,
            iteration: 1,
            end: OracleEnd::Final,
            cursor_id: None,
            error: None,
            command: cmd.clone(),
            connections: vec![e["server_connection_id"].clone()],
        };
        match c.reply() {
            None => op.end = OracleEnd::Unanswered,
            Some(r) => {
                op.error = expected_error(r);
                if reply_ok(r) {
                    apply_counts(&mut op, &name, &cmd, r);
                    if let Some((cid, batch)) = c.cursor() {
                        if name != "bulkWrite" {
                            op.matched = Some(batch);
                        }
                        if cid != 0 && name != "getMore" {
                            op.cursor_id = Some(cid);
                            op.end = OracleEnd::Open;
                            open.insert(cid, ops.len());
                        }
                    }
                }
            }
        }
        ops.push(op);
    }
    Ok(ops)
}

struct CommandEv<'a> {
    started: &'a Value,
    reply_ev: Option<&'a Value>,
}

impl CommandEv<'_> {
    fn name(&self) -> &str {
        self.started["command_name"].as_str().unwrap_or("")
    }
    fn cmd(&self) -> &Value {
        &self.started["command"]
    }
    fn reply(&self) -> Option<&Value> {
        self.reply_ev.map(|e| &e["reply"])
    }
    /// (cursor id, batch length) of the reply, if it has a cursor.
    fn cursor(&self) -> Option<(i64, i64)> {
        let ev = self.reply_ev?;
        let id = ev.get("cursor_id").and_then(as_i64)?;
        let batch = ev.get("batch_len").and_then(as_i64).unwrap_or(0);
        Some((id, batch))
    }
}

fn apply_counts(op: &mut ExpectedOp, name: &str, cmd: &Value, r: &Value) {
    let n = r.get("n").and_then(as_i64);
    let len = |v: Option<&Value>| v.and_then(|a| a.as_array()).map(|a| a.len() as i64);
    match name {
        "count" => op.matched = n,
        "distinct" => op.matched = len(r.get("values")),
        "insert" => op.inserted = n,
        "update" => {
            let ups = len(r.get("upserted")).unwrap_or(0);
            op.upserted = Some(ups);
            op.matched = n.map(|n| n - ups);
            op.modified = r.get("nModified").and_then(as_i64);
        }
        "delete" => op.deleted = n,
        "findAndModify" | "findandmodify" => {
            if let Some(leo) = r.get("lastErrorObject") {
                let leo_n = leo.get("n").and_then(as_i64).unwrap_or(0);
                if truthy(cmd.get("remove")) {
                    op.deleted = Some(leo_n);
                } else {
                    op.matched = Some(if truthy(leo.get("updatedExisting")) {
                        leo_n
                    } else {
                        0
                    });
                    op.upserted =
                        Some(i64::from(leo.get("upserted").is_some_and(|u| !u.is_null())));
                }
            }
        }
        "bulkWrite" => {
            op.inserted = r.get("nInserted").and_then(as_i64);
            op.matched = r.get("nMatched").and_then(as_i64);
            op.modified = r.get("nModified").and_then(as_i64);
            op.upserted = r.get("nUpserted").and_then(as_i64);
            op.deleted = r.get("nDeleted").and_then(as_i64);
        }
        _ => {}
    }
}

/// JSON equality with numbers compared by value (1 == 1.0) and object keys in any order.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The last record of each WatchID, and the earlier ones of it.
#[derive(Debug, Clone)]
pub struct RecordChain {
    pub watch_id: String,
    /// Every record of this WatchID in output order; the last is the truth.
    pub records: Vec<Value>,
}

impl RecordChain {
    pub fn last(&self) -> &Value {
        self.records.last().expect("a chain has a record")
    }
}

/// Groups records by WatchID, checking the contract's rule that only the last record of a
/// WatchID may be other than `timeout`.
pub fn chains(records: &[Value]) -> Result<Vec<RecordChain>> {
    let mut order: Vec<String> = Vec::new();
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for r in records {
        let id = r["WatchID"]
            .as_str()
            .with_context(|| format!("a record without WatchID: {r}"))?
            .to_string();
        if !by_id.contains_key(&id) {
            order.push(id.clone());
        }
        by_id.entry(id).or_default().push(r.clone());
    }
    let mut out = Vec::new();
    for id in order {
        let recs = by_id.remove(&id).unwrap();
        for r in &recs[..recs.len() - 1] {
            if r["State"] != "timeout" {
                bail!("WatchID {id}: a record before the last is not a timeout record: {r}");
            }
        }
        out.push(RecordChain {
            watch_id: id,
            records: recs,
        });
    }
    Ok(out)
}

/// An expected operation and the record chain matched to it.
#[derive(Debug, Clone)]
pub struct Matched {
    pub op: ExpectedOp,
    pub chain: RecordChain,
}

/// The expected operations of one process: its pid, its operations, and the operations that
/// were open when the test SIGKILLed it.
pub struct ProcessOracle {
    pub pid: u32,
    pub ops: Vec<ExpectedOp>,
    pub killed: bool,
}

/// Matches every process's expected operations with mongowatch's records (see the module
/// doc) and compares their fields; fails listing every mismatch, missing and extra record.
/// `compression`: `Some(Some(name))` when every record must say `Compression == name`,
/// `Some(None)` when it must be null, `None` to not check it.
pub fn match_records(
    processes: &[ProcessOracle],
    records: &[Value],
    compression: Option<Option<&str>>,
) -> Result<Vec<Matched>> {
    let all = chains(records)?;
    let mut problems: Vec<String> = Vec::new();
    let mut matched = Vec::new();
    let mut by_pid: BTreeMap<u64, Vec<RecordChain>> = BTreeMap::new();
    for c in all {
        let pid = c.last()["Pid"].as_u64().unwrap_or(0);
        by_pid.entry(pid).or_default().push(c);
    }
    for p in processes {
        let mut chains = by_pid.remove(&(p.pid as u64)).unwrap_or_default();
        // StartTime is RFC 3339 with a fixed width: text order is time order.
        chains.sort_by(|a, b| {
            let k = |c: &RecordChain| {
                (
                    c.last()["StartTime"].as_str().unwrap_or("").to_string(),
                    c.watch_id.clone(),
                )
            };
            k(a).cmp(&k(b))
        });
        let mut taken = vec![false; chains.len()];
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        // 1. Cursor operations by (Operation, CursorId).
        let mut rest: Vec<usize> = Vec::new();
        for (oi, op) in p.ops.iter().enumerate() {
            let Some(cid) = op.cursor_id else {
                rest.push(oi);
                continue;
            };
            let found = chains.iter().enumerate().position(|(ci, c)| {
                !taken[ci]
                    && c.last()["Operation"] == op.operation.as_str()
                    && c.last()["CursorId"].as_i64() == Some(cid)
            });
            match found {
                Some(ci) => {
                    taken[ci] = true;
                    pairs.push((oi, ci));
                }
                None => rest.push(oi),
            }
        }
        rest.sort();
        // 2. The others in order, per Operation.
        for oi in rest {
            let op = &p.ops[oi];
            let found = (0..chains.len())
                .find(|&ci| !taken[ci] && chains[ci].last()["Operation"] == op.operation.as_str());
            match found {
                Some(ci) => {
                    taken[ci] = true;
                    pairs.push((oi, ci));
                }
                None => problems.push(format!("pid {}: no record for {}", p.pid, op.summary())),
            }
        }
        pairs.sort();
        for (oi, ci) in pairs {
            let op = &p.ops[oi];
            let chain = &chains[ci];
            let diffs = compare(op, chain.last(), p.killed, compression);
            if !diffs.is_empty() {
                problems.push(format!(
                    "pid {}: {}: {}\n    record: {}",
                    p.pid,
                    op.summary(),
                    diffs.join("; "),
                    chain.last()
                ));
            }
            matched.push(Matched {
                op: op.clone(),
                chain: chain.clone(),
            });
        }
        for (ci, c) in chains.iter().enumerate() {
            if !taken[ci] {
                problems.push(format!(
                    "pid {}: a record no oracle operation accounts for: {}",
                    p.pid,
                    c.last()
                ));
            }
        }
    }
    for (pid, chains) in by_pid {
        for c in chains {
            problems.push(format!(
                "a record of pid {pid}, which the test did not run: {}",
                c.last()
            ));
        }
    }
    if !problems.is_empty() {
        let mut msg = format!(
            "{} problem(s) matching records to the oracle:\n",
            problems.len()
        );
        for p in &problems {
            let _ = writeln!(msg, "  - {p}");
        }
        bail!(msg);
    }
    Ok(matched)
}

/// Differences between an expected operation and the record written for it.
pub fn compare(
    op: &ExpectedOp,
    rec: &Value,
    killed: bool,
    compression: Option<Option<&str>>,
) -> Vec<String> {
    let mut d = Vec::new();
    let mut field = |name: &str, want: Value| {
        let got = rec.get(name).cloned().unwrap_or(Value::Null);
        if !json_eq(&got, &want) {
            d.push(format!(
                "{name}: record {} != expected {}",
                short(&got),
                short(&want)
            ));
        }
    };
    let num = |v: Option<i64>| v.map(Value::from).unwrap_or(Value::Null);
    field("DB", Value::from(op.db.clone()));
    field(
        "Collection",
        op.collection
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null),
    );
    field("Operation", Value::from(op.operation.clone()));
    field("Filter", op.filter.clone());
    field("MatchedCount", num(op.matched));
    field("InsertedCount", num(op.inserted));
    field("UpsertedCount", num(op.upserted));
    field("ModifiedCount", num(op.modified));
    field("DeletedCount", num(op.deleted));
    field("Iteration", Value::from(op.iteration));
    field("State", Value::from(op.expected_state(killed)));
    field("CursorId", num(op.cursor_id));
    let err = match &op.error {
        None => Value::Null,
        Some(e) => {
            let mut m = serde_json::Map::new();
            m.insert("code".into(), num(e.code));
            m.insert(
                "codeName".into(),
                e.code_name.clone().map(Value::from).unwrap_or(Value::Null),
            );
            m.insert(
                "errmsg".into(),
                e.errmsg.clone().map(Value::from).unwrap_or(Value::Null),
            );
            if let Some(n) = e.write_errors {
                m.insert("writeErrors".into(), Value::from(n));
            }
            Value::Object(m)
        }
    };
    field("Error", err);
    if let Some(c) = compression {
        field("Compression", c.map(Value::from).unwrap_or(Value::Null));
    }
    d
}

/// A short account of what was matched, for the test's output.
pub fn describe_matches(matched: &[Matched]) -> String {
    let mut by_op: BTreeMap<String, usize> = BTreeMap::new();
    for m in matched {
        *by_op.entry(m.op.operation.clone()).or_default() += 1;
    }
    let timeouts = matched.iter().filter(|m| m.chain.records.len() > 1).count();
    format!(
        "{} operations matched ({by_op:?}), {timeouts} with a timeout record before the last",
        matched.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: i64, name: &str, command: Value, targets: Option<Vec<&str>>) -> Value {
        let mut v = json!({"event": "started", "request_id": id, "command_name": name,
                           "database": "db", "command": command});
        if let Some(t) = targets {
            v["target_cursor_ids"] = json!(t);
        }
        v
    }

    fn replied(id: i64, name: &str, reply: Value, cursor: Option<(&str, i64)>) -> Value {
        let mut v = json!({"event": "succeeded", "request_id": id, "command_name": name,
                           "reply": reply});
        if let Some((c, n)) = cursor {
            v["cursor_id"] = json!(c);
            v["batch_len"] = json!(n);
        }
        v
    }

    use serde_json::json;

    /// find + getMore + killCursors, an update with an upsert, a heartbeat, an unknown command.
    fn oracle() -> Vec<Value> {
        vec![
            started(
                1,
                "find",
                json!({"find": "c", "filter": {"a": 1}, "batchSize": 2}),
                None,
            ),
            replied(
                1,
                "find",
                json!({"cursor": {"id": 9_007_199_254_740_993_i64}, "ok": 1.0}),
                Some(("9007199254740993", 2)),
            ),
            started(2, "ping", json!({"ping": 1}), None),
            replied(2, "ping", json!({"ok": 1}), None),
            started(
                3,
                "update",
                json!({"update": "c", "updates": [{"q": {"x": 1}, "u": {}},
                                                                  {"q": {"y": 2}, "u": {}}]}),
                None,
            ),
            replied(
                3,
                "update",
                json!({"n": 3, "nModified": 1, "upserted": [{"index": 1}], "ok": 1}),
                None,
            ),
            started(
                4,
                "getMore",
                json!({"getMore": 1, "collection": "c"}),
                Some(vec!["9007199254740993"]),
            ),
            replied(
                4,
                "getMore",
                json!({"ok": 1}),
                Some(("9007199254740993", 2)),
            ),
            started(
                5,
                "killCursors",
                json!({"killCursors": "c", "cursors": [1]}),
                Some(vec!["9007199254740993"]),
            ),
            replied(5, "killCursors", json!({"ok": 1}), None),
            started(6, "nope", json!({"nope": 1}), None),
            json!({"event": "failed", "request_id": 6, "command_name": "nope",
                   "reply": {"ok": 0, "code": 59, "codeName": "CommandNotFound", "errmsg": "no"}}),
        ]
    }

    fn good_records() -> Vec<Value> {
        let base = |id: &str, start: &str| {
            json!({"WatchID": id, "StartTime": start, "DB": "db", "Pid": 7,
                   "InsertedCount": null, "DeletedCount": null, "Compression": null,
                   "UpsertedCount": null, "ModifiedCount": null, "MatchedCount": null,
                   "Error": null, "CursorId": null, "Iteration": 1, "State": "final",
                   "Filter": null})
        };
        let mut find = base("a", "2026-01-01T00:00:00.000001Z");
        find["Operation"] = json!("find");
        find["Collection"] = json!("c");
        find["Filter"] = json!({"a": 1.0});
        find["MatchedCount"] = json!(4);
        find["Iteration"] = json!(2);
        find["CursorId"] = json!(9_007_199_254_740_993_i64);
        let mut update = base("b", "2026-01-01T00:00:00.000002Z");
        update["Operation"] = json!("update");
        update["Collection"] = json!("c");
        update["Filter"] = json!([{"x": 1}, {"y": 2}]);
        update["MatchedCount"] = json!(2);
        update["UpsertedCount"] = json!(1);
        update["ModifiedCount"] = json!(1);
        let mut nope = base("c", "2026-01-01T00:00:00.000003Z");
        nope["Operation"] = json!("nope");
        nope["Collection"] = json!(null);
        nope["Error"] = json!({"code": 59, "codeName": "CommandNotFound", "errmsg": "no"});
        // Output order is not start order.
        vec![update, nope, find]
    }

    fn run(records: &[Value]) -> Result<Vec<Matched>> {
        let ops = group_operations(&oracle())?;
        match_records(
            &[ProcessOracle {
                pid: 7,
                ops,
                killed: false,
            }],
            records,
            Some(None),
        )
    }

    #[test]
    fn groups_a_cursor_into_one_operation() -> Result<()> {
        let ops = group_operations(&oracle())?;
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!(ops[0].commands, ["find", "getMore", "killCursors"]);
        assert_eq!((ops[0].iteration, ops[0].matched), (2, Some(4)));
        assert_eq!(ops[0].cursor_id, Some(9_007_199_254_740_993));
        assert_eq!(ops[0].end, OracleEnd::Final);
        assert_eq!(
            (ops[1].matched, ops[1].upserted, ops[1].modified),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(ops[2].error.as_ref().and_then(|e| e.code), Some(59));
        Ok(())
    }

    /// pymongo reports each further reply of an exhaust stream as a getMore started and
    /// succeeded with request id 0: each is one more batch of the same cursor, paired in order.
    #[test]
    fn exhaust_replies_pair_in_order() -> Result<()> {
        let id = "77";
        let events = vec![
            started(1, "find", json!({"find": "c", "batchSize": 2}), None),
            replied(1, "find", json!({"ok": 1}), Some((id, 2))),
            started(2, "getMore", json!({"getMore": 77}), Some(vec![id])),
            replied(2, "getMore", json!({"ok": 1}), Some((id, 2))),
            started(0, "getMore", json!({"getMore": 77}), Some(vec![id])),
            replied(0, "getMore", json!({"ok": 1}), Some((id, 2))),
            started(0, "getMore", json!({"getMore": 77}), Some(vec![id])),
            replied(0, "getMore", json!({"ok": 1}), Some(("0", 1))),
        ];
        let ops = group_operations(&events)?;
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert_eq!(ops[0].commands, ["find", "getMore", "getMore", "getMore"]);
        assert_eq!((ops[0].iteration, ops[0].matched), (4, Some(7)));
        assert_eq!(ops[0].end, OracleEnd::Final);
        // A reply whose start the oracle missed is no operation.
        let orphan = vec![replied(5, "find", json!({"ok": 1}), None)];
        assert!(group_operations(&orphan)?.is_empty());
        Ok(())
    }

    #[test]
    fn equal_records_match() -> Result<()> {
        let m = run(&good_records())?;
        assert_eq!(m.len(), 3);
        Ok(())
    }

    type Mutation = Box<dyn Fn(&mut Vec<Value>)>;

    #[test]
    fn every_kind_of_difference_fails() {
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "MatchedCount",
                Box::new(|r| r[2]["MatchedCount"] = json!(3)),
            ),
            ("Iteration", Box::new(|r| r[2]["Iteration"] = json!(1))),
            ("State", Box::new(|r| r[2]["State"] = json!("closed"))),
            ("Filter", Box::new(|r| r[0]["Filter"] = json!({"x": 1}))),
            (
                "UpsertedCount",
                Box::new(|r| r[0]["UpsertedCount"] = json!(0)),
            ),
            (
                "Error",
                Box::new(|r| r[1]["Error"]["codeName"] = json!("Other")),
            ),
            (
                "Compression",
                Box::new(|r| r[1]["Compression"] = json!("zlib")),
            ),
            (
                "no record",
                Box::new(|r| {
                    r.remove(1);
                }),
            ),
            (
                "no oracle operation",
                Box::new(|r| {
                    let mut hb = r[1].clone();
                    hb["WatchID"] = json!("d");
                    hb["Operation"] = json!("ping");
                    r.push(hb);
                }),
            ),
            (
                "not a timeout record",
                Box::new(|r| {
                    let early = r[2].clone();
                    r.insert(0, early);
                }),
            ),
        ];
        for (want, mutate) in cases {
            let mut recs = good_records();
            mutate(&mut recs);
            let err = run(&recs).expect_err(want).to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(
            &json!({"a": [1, {"b": 2.0}]}),
            &json!({"a": [1.0, {"b": 2}]})
        ));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": "1"})));
        assert!(!json_eq(&json!([1, 2]), &json!([2, 1])));
    }
}
