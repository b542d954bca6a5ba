//! The operation tracker: paired exchanges of every connection -> audit record snapshots.
//!
//! A cursor-opening command, its getMores (on any pooled connection of the same process to the
//! same server) and its killCursors are one operation, keyed by (pid, server, cursor id). Each
//! round trip yields an [`Emit`]: an open operation changed (its record stays here), or one
//! ended (its last record goes with it). The delay queue decides when records are written (see
//! `queue`).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    sync::Arc,
};

use bson::RawBsonRef;
use serde::Serialize;

use super::{
    command::{as_i64, first_value, get, get_doc, get_str, truthy, CommandView, ReplyView},
    describe::{apply_reply, auth_user, cursor_of, describe, error_of, is_heartbeat, reply_ok},
    input::Input,
};
use crate::{
    record::{Place, Record, State, WatchIds},
    stream::ConnInfo,
    wire::{Exchange, Timed},
};

#[cfg(test)]
mod tests {
    use super::driver_name;

    #[test]
    fn driver_names() {
        assert_eq!(
            driver_name("PyMongo|c", "4.20.1|").as_deref(),
            Some("PyMongo 4.20.1")
        );
        assert_eq!(
            driver_name("PyMongo|Motor", "4.20.1|3.6.0").as_deref(),
            Some("PyMongo 4.20.1 (Motor 3.6.0)")
        );
        assert_eq!(
            driver_name("nodejs", "7.9.0").as_deref(),
            Some("nodejs 7.9.0")
        );
        assert_eq!(driver_name("", ""), None);
    }
}

#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Keep handshakes, heartbeats and authentication steps as records.
    pub include_heartbeats: bool,
    /// Most operations kept open at once (open cursors); beyond it the least recently active
    /// one is written with State `timeout` and forgotten.
    pub max_open: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            include_heartbeats: false,
            max_open: 65_536,
        }
    }
}

/// What an input did to an operation, for the delay queue.
// Emits live a moment in a reused Vec; boxing the record would cost an allocation per operation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Emit {
    /// An open operation began or took a further batch: its idle deadline starts again. Its
    /// record stays here ([`Tracker::snapshot`]) so that an open operation is held once, not
    /// once here and once in the queue.
    Changed { watch_id: String },
    /// The operation is over (final, closed, or written as timed out and forgotten): its last
    /// record. Nothing more of this WatchID follows from the tracker.
    Ended(Record),
}

impl Emit {
    pub fn watch_id(&self) -> &str {
        match self {
            Emit::Changed { watch_id } => watch_id,
            Emit::Ended(r) => &r.watch_id,
        }
    }
}

/// Counters of the ops layer.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OpsStats {
    pub exchanges: u64,
    /// Handshakes, heartbeats, authentication steps left out.
    pub heartbeats: u64,
    /// Requests that carried no readable command.
    pub unreadable: u64,
    /// Replies whose request was not seen and that matched no open cursor.
    pub orphan_replies: u64,
    /// getMores whose opening command was not seen.
    pub orphan_get_mores: u64,
    /// Requests whose reply never came.
    pub unanswered: u64,
    /// Operations ended by a connection close or process exit.
    pub closed: u64,
    /// Open operations dropped because `max_open` was reached.
    pub evicted: u64,
}

#[derive(Debug, Default)]
struct ConnState {
    pid: u32,
    server: Arc<str>,
    app_name: Option<Arc<str>>,
    driver: Option<Arc<str>>,
    user: Option<Arc<str>>,
    pending_user: Option<Arc<str>>,
    /// Compressors the client offered and the server accepted (first = preferred). Records
    /// report each request's own compressor, which is what actually travelled; this is kept
    /// for diagnostics.
    negotiated: Vec<String>,
}

type CursorKey = (u32, Arc<str>, i64);

#[derive(Debug)]
struct OpenOp {
    rec: Record,
    cursor: CursorKey,
    /// Batches count into MatchedCount (not for bulkWrite result cursors).
    count_batches: bool,
    /// Time of the last reply (exhaust replies measure from it).
    last_ts: u64,
    /// A getMore's reply was lost: the cursor goes on, but the totals miss a batch, so the
    /// operation can no longer end `final` (it ends `closed`).
    reply_lost: bool,
}

/// One round trip's timing and sizes.
#[derive(Copy, Clone, Debug)]
struct Trip {
    req_first: u64,
    req_ts: u64,
    req_bytes: u64,
    reply_ts: Option<u64>,
    reply_bytes: u64,
    exhaust_index: u32,
}

pub struct Tracker {
    cfg: TrackerConfig,
    ids: WatchIds,
    conns: HashMap<u64, ConnState>,
    open: HashMap<u64, OpenOp>,
    /// WatchID -> key in `open`, for [`Tracker::snapshot`].
    by_watch: HashMap<String, u64>,
    cursors: HashMap<CursorKey, u64>,
    /// pid -> its keys in `open`: a process's exit or a connection's close looks at that
    /// process's operations only, not at every open one (with 1,000 processes holding 100,000
    /// cursors, scanning them all for each exit and close took minutes).
    by_pid: HashMap<u32, HashSet<u64>>,
    /// (last activity, key) of open operations, smallest first, for eviction. Lazy: an entry
    /// is checked against `open` when it comes out (the operation may have ended, or been
    /// active since), so activity costs nothing here; finding the least recently active of
    /// 65,536 by a scan took most of the daemon's time once they were all open.
    by_age: BinaryHeap<Reverse<(u64, u64)>>,
    next_key: u64,
    stats: OpsStats,
}

/// `PyMongo 4.20.1` from the handshake's driver metadata. Wrapping libraries append
/// themselves after `|` (`PyMongo|Motor`, `4.20.1|3.6.0`; pymongo's C extension shows as
/// `PyMongo|c` with an empty version): those with a version follow in parentheses.
pub fn driver_name(name: &str, version: &str) -> Option<String> {
    let mut names = name.split('|').map(str::trim);
    let mut versions = version.split('|').map(str::trim);
    let first = format!(
        "{} {}",
        names.next().unwrap_or(""),
        versions.next().unwrap_or("")
    );
    let mut out = first.trim().to_owned();
    let extra: Vec<String> = names
        .zip(versions)
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    if !extra.is_empty() {
        out = format!("{out} ({})", extra.join(", "));
    }
    (!out.is_empty()).then_some(out)
}

fn msg_len(t: &Timed) -> u64 {
    t.msg.header.length.max(0) as u64
}

impl Tracker {
    pub fn new(cfg: TrackerConfig, ids: WatchIds) -> Self {
        Self {
            cfg,
            ids,
            conns: HashMap::new(),
            open: HashMap::new(),
            by_watch: HashMap::new(),
            cursors: HashMap::new(),
            by_pid: HashMap::new(),
            by_age: BinaryHeap::new(),
            next_key: 0,
            stats: OpsStats::default(),
        }
    }

    pub fn stats(&self) -> &OpsStats {
        &self.stats
    }

    /// Operations still open (cursors not exhausted, killed or closed).
    pub fn open_operations(&self) -> usize {
        self.open.len()
    }

    /// The current record of an open operation (what a timeout writes).
    pub fn snapshot(&self, watch_id: &str) -> Option<&Record> {
        self.by_watch
            .get(watch_id)
            .and_then(|k| self.open.get(k))
            .map(|op| &op.rec)
    }

    /// Removes an open operation (its cursor key is the caller's to drop).
    fn take_op(&mut self, op_key: u64) -> Option<OpenOp> {
        let op = self.open.remove(&op_key)?;
        self.by_watch.remove(&op.rec.watch_id);
        if let Some(keys) = self.by_pid.get_mut(&op.cursor.0) {
            keys.remove(&op_key);
            if keys.is_empty() {
                self.by_pid.remove(&op.cursor.0);
            }
        }
        Some(op)
    }

    /// Feeds one input; what it did to operations goes to `out`. `Tick` does nothing here.
    pub fn handle(&mut self, input: &Input, out: &mut Vec<Emit>) {
        match input {
            Input::Exchange { conn, exchange } => {
                self.stats.exchanges += 1;
                match exchange {
                    Exchange::RoundTrip {
                        request,
                        reply,
                        exhaust_index,
                    } => self.step(conn, request, Some(reply), *exhaust_index, out),
                    Exchange::OneWay { request } => self.step(conn, request, None, 0, out),
                    Exchange::Unanswered { request } => {
                        self.stats.unanswered += 1;
                        self.step(conn, request, None, 0, out)
                    }
                    Exchange::OrphanReply { reply } => self.orphan_reply(conn, reply, out),
                }
            }
            Input::ConnClosed { conn, ts_ns } => {
                self.conns.remove(&conn.id);
                let others = self
                    .conns
                    .values()
                    .any(|c| c.pid == conn.pid && c.server == conn.server);
                if !others {
                    let (pid, server) = (conn.pid, conn.server.clone());
                    self.close_where(pid, |k| k.1 == server, *ts_ns, out);
                }
            }
            Input::ProcessExited { pid, ts_ns } => {
                let pid = *pid;
                self.conns.retain(|_, c| c.pid != pid);
                self.close_where(pid, |_| true, *ts_ns, out);
            }
            Input::Tick { .. } => {}
        }
    }

    /// Ends (`closed`) the open operations of `pid` whose cursor key `pred` accepts.
    fn close_where(
        &mut self,
        pid: u32,
        pred: impl Fn(&CursorKey) -> bool,
        ts: u64,
        out: &mut Vec<Emit>,
    ) {
        let Some(of_pid) = self.by_pid.get(&pid) else {
            return;
        };
        let mut keys: Vec<u64> = of_pid
            .iter()
            .copied()
            .filter(|k| self.open.get(k).is_some_and(|op| pred(&op.cursor)))
            .collect();
        keys.sort_unstable();
        for k in keys {
            if let Some(mut op) = self.take_op(k) {
                self.cursors.remove(&op.cursor);
                op.rec.state = State::Closed;
                op.rec.end_ns = op.rec.end_ns.max(ts);
                self.stats.closed += 1;
                out.push(Emit::Ended(op.rec));
            }
        }
    }

    fn conn_state(&mut self, conn: &ConnInfo) -> &mut ConnState {
        self.conns.entry(conn.id).or_insert_with(|| ConnState {
            pid: conn.pid,
            server: conn.server.clone(),
            ..Default::default()
        })
    }

    fn step(
        &mut self,
        conn: &Arc<ConnInfo>,
        req: &Timed,
        reply: Option<&Timed>,
        exhaust_index: u32,
        out: &mut Vec<Emit>,
    ) {
        let Some(cmd) = CommandView::from_message(&req.msg) else {
            self.stats.unreadable += 1;
            return;
        };
        let rep = reply.and_then(|r| ReplyView::from_message(&r.msg, cmd.legacy));
        self.observe_identity(conn, &cmd, rep.as_ref());
        if is_heartbeat(&cmd.name) && !self.cfg.include_heartbeats {
            self.stats.heartbeats += 1;
            return;
        }
        // A further exhaust reply outside a cursor (streaming hello) is a server push: it is
        // timed from its own first byte, not from the request sent long before.
        let req_first = match reply {
            Some(r) if exhaust_index > 0 && cmd.name != "getMore" => r.first_ts_ns,
            _ => req.first_ts_ns,
        };
        let trip = Trip {
            req_first,
            req_ts: req.ts_ns,
            req_bytes: if exhaust_index == 0 { msg_len(req) } else { 0 },
            reply_ts: reply.map(|r| r.ts_ns),
            reply_bytes: reply.map(msg_len).unwrap_or(0),
            exhaust_index,
        };
        match cmd.name.as_str() {
            "getMore" => self.get_more(conn, &cmd, rep.as_ref(), trip, out),
            "killCursors" => self.kill_cursors(conn, &cmd, rep.as_ref(), trip, out),
            _ => self.new_op(conn, &cmd, rep.as_ref(), trip, false, out),
        }
    }

    /// Handshake metadata, compression negotiation and the authenticated user.
    fn observe_identity(&mut self, conn: &ConnInfo, cmd: &CommandView, rep: Option<&ReplyView>) {
        let body = cmd.raw();
        let st = self.conn_state(conn);
        match cmd.name.as_str() {
            "hello" | "isMaster" | "ismaster" => {
                if let Some(client) = get_doc(body, "client") {
                    if let Some(app) = get_doc(client, "application") {
                        st.app_name = get_str(app, "name").map(Arc::from);
                    }
                    if let Some(drv) = get_doc(client, "driver") {
                        st.driver = driver_name(
                            get_str(drv, "name").unwrap_or(""),
                            get_str(drv, "version").unwrap_or(""),
                        )
                        .map(Arc::from);
                    }
                }
                if let Some(spec) = get_doc(body, "speculativeAuthenticate") {
                    st.pending_user = auth_user(spec).map(Arc::from);
                }
                if let Some(r) = rep {
                    if let Some(RawBsonRef::Array(a)) = get(r.raw(), "compression") {
                        st.negotiated = a
                            .into_iter()
                            .filter_map(|v| match v {
                                Ok(RawBsonRef::String(s)) => Some(s.to_owned()),
                                _ => None,
                            })
                            .collect();
                        tracing::debug!(
                            conn = conn.id,
                            pid = conn.pid,
                            negotiated = ?st.negotiated,
                            "compression negotiated"
                        );
                    }
                    if let Some(spec) = get_doc(r.raw(), "speculativeAuthenticate") {
                        // X.509 answers with the user; SCRAM continues with saslContinue.
                        if let Some(u) = get_str(spec, "user") {
                            st.user = Some(u.into());
                            st.pending_user = None;
                        } else if truthy(get(spec, "done")) {
                            st.user = st.pending_user.take();
                        }
                    }
                }
            }
            "saslStart" | "saslContinue" | "authenticate" => {
                if cmd.name != "saslContinue" {
                    st.pending_user = auth_user(body).map(Arc::from);
                }
                // Looked at here only: every command passes through, few are these.
                let reply_ok = rep.map(|r| reply_ok(r.raw()));
                let done = rep.is_some_and(|r| truthy(get(r.raw(), "done")));
                match reply_ok {
                    Some(true) if done || cmd.name == "authenticate" => {
                        let from_reply = rep.and_then(|r| get_str(r.raw(), "user"));
                        st.user = from_reply.map(Arc::from).or(st.pending_user.take());
                    }
                    Some(false) => st.pending_user = None,
                    _ => {}
                }
            }
            "logout" => st.user = None,
            _ => {}
        }
    }

    fn new_record(&mut self, conn: &ConnInfo, cmd: &CommandView, trip: Trip) -> Record {
        let d = describe(cmd);
        let st = self.conns.get(&conn.id);
        let start = trip.req_first;
        let end = trip.reply_ts.unwrap_or(trip.req_ts).max(start);
        Record {
            watch_id: self.ids.next(start),
            start_ns: start,
            end_ns: end,
            duration_ns: trip.reply_ts.map(|t| t.saturating_sub(start)).unwrap_or(0),
            db: d.db,
            collection: d.collection,
            operation: cmd.name.clone(),
            filter: d.filter,
            matched: None,
            inserted: None,
            upserted: None,
            modified: None,
            deleted: None,
            iteration: 1,
            state: State::Final,
            cursor_id: None,
            error: None,
            pid: conn.pid,
            comm: conn.comm.clone(),
            client: conn.client.clone(),
            server: conn.server.clone(),
            user: st.and_then(|s| s.user.clone()),
            app_name: st.and_then(|s| s.app_name.clone()),
            driver: st.and_then(|s| s.driver.clone()),
            compression: cmd.compressor.map(|c| c.name()),
            tls: conn.tls,
            request_bytes: trip.req_bytes,
            reply_bytes: trip.reply_bytes,
            place: Place::new(&conn.origin, conn.side),
        }
    }

    fn new_op(
        &mut self,
        conn: &ConnInfo,
        cmd: &CommandView,
        rep: Option<&ReplyView>,
        trip: Trip,
        orphan_get_more: bool,
        out: &mut Vec<Emit>,
    ) {
        let mut rec = self.new_record(conn, cmd, trip);
        let Some(rep) = rep else {
            // moreToCome: final at once. No reply: the connection ended (or a gap).
            if trip.reply_ts.is_none() && !cmd.more_to_come {
                rec.state = State::Closed;
            }
            out.push(Emit::Ended(rec));
            return;
        };
        if orphan_get_more {
            rec.error = error_of(&cmd.name, rep.raw());
        } else {
            apply_reply(&mut rec, cmd, rep.raw());
        }
        let count_batches = cmd.name != "bulkWrite";
        if let Some((id, batch)) = cursor_of(rep.raw()) {
            if count_batches {
                rec.matched = Some(batch.unwrap_or(0));
            }
            if orphan_get_more {
                rec.cursor_id = first_value(cmd.raw()).and_then(as_i64).filter(|i| *i != 0);
            }
            if id != 0 && reply_ok(rep.raw()) {
                rec.cursor_id = Some(id);
                let key = (conn.pid, conn.server.clone(), id);
                self.open_op(rec, key, count_batches, trip.reply_ts.unwrap_or(0), out);
                return;
            }
        }
        out.push(Emit::Ended(rec));
    }

    fn open_op(
        &mut self,
        rec: Record,
        key: CursorKey,
        count_batches: bool,
        last_ts: u64,
        out: &mut Vec<Emit>,
    ) {
        // A reused id: the old cursor ended unseen (its last getMore or kill was lost).
        // Write what we know of it rather than drop it.
        if let Some(old) = self.cursors.remove(&key) {
            if let Some(mut op) = self.take_op(old) {
                op.rec.state = State::Timeout;
                out.push(Emit::Ended(op.rec));
            }
        }
        if self.open.len() >= self.cfg.max_open.max(1) {
            self.evict_one(out);
        }
        out.push(Emit::Changed {
            watch_id: rec.watch_id.clone(),
        });
        let op_key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        self.by_watch.insert(rec.watch_id.clone(), op_key);
        self.by_pid.entry(key.0).or_default().insert(op_key);
        self.cursors.insert(key.clone(), op_key);
        self.open.insert(
            op_key,
            OpenOp {
                rec,
                cursor: key,
                count_batches,
                last_ts,
                reply_lost: false,
            },
        );
        self.by_age.push(Reverse((last_ts, op_key)));
        // Entries of operations that ended stay until they come out: rebuilt from what is
        // open when they outnumber it, so the heap stays within twice the open operations.
        if self.by_age.len() > 2 * self.open.len() + 64 {
            self.by_age = self
                .open
                .iter()
                .map(|(k, op)| Reverse((op.last_ts, *k)))
                .collect();
        }
    }

    /// Writes the least recently active open operation as timed out.
    fn evict_one(&mut self, out: &mut Vec<Emit>) {
        let mut oldest = None;
        while let Some(Reverse((ts, k))) = self.by_age.pop() {
            match self.open.get(&k) {
                None => {}
                // Active since: back in at its present age.
                Some(op) if op.last_ts != ts => self.by_age.push(Reverse((op.last_ts, k))),
                Some(_) => {
                    oldest = Some(k);
                    break;
                }
            }
        }
        if let Some(k) = oldest {
            if let Some(mut op) = self.take_op(k) {
                self.cursors.remove(&op.cursor);
                self.stats.evicted += 1;
                tracing::warn!(
                    watch_id = %op.rec.watch_id,
                    "too many open operations; writing the oldest as timed out"
                );
                op.rec.state = State::Timeout;
                out.push(Emit::Ended(op.rec));
            }
        }
    }

    fn finish(&mut self, op_key: u64, state: State, out: &mut Vec<Emit>) {
        if let Some(mut op) = self.take_op(op_key) {
            self.cursors.remove(&op.cursor);
            op.rec.state = if op.reply_lost && state == State::Final {
                State::Closed
            } else {
                state
            };
            out.push(Emit::Ended(op.rec));
        }
    }

    /// Adds one round trip's time and bytes to an open operation.
    fn add_trip(op: &mut OpenOp, trip: Trip) {
        op.rec.request_bytes = op.rec.request_bytes.saturating_add(trip.req_bytes);
        op.rec.reply_bytes = op.rec.reply_bytes.saturating_add(trip.reply_bytes);
        match trip.reply_ts {
            Some(ts) => {
                let since = if trip.exhaust_index == 0 {
                    trip.req_first
                } else {
                    op.last_ts
                };
                op.rec.duration_ns = op.rec.duration_ns.saturating_add(ts.saturating_sub(since));
                op.rec.end_ns = op.rec.end_ns.max(ts);
                // Never back in time (replies on two connections may be handled out of
                // order): eviction's heap relies on it.
                op.last_ts = op.last_ts.max(ts);
            }
            None => op.rec.end_ns = op.rec.end_ns.max(trip.req_ts),
        }
    }

    fn get_more(
        &mut self,
        conn: &ConnInfo,
        cmd: &CommandView,
        rep: Option<&ReplyView>,
        trip: Trip,
        out: &mut Vec<Emit>,
    ) {
        let id = first_value(cmd.raw()).and_then(as_i64).unwrap_or(0);
        let key = (conn.pid, conn.server.clone(), id);
        let Some(&op_key) = self.cursors.get(&key) else {
            self.stats.orphan_get_mores += 1;
            if rep.is_none() && id != 0 {
                // Its opening unseen and its own reply lost too: the cursor still goes on
                // (its id is in the request), so its next getMores join this record rather
                // than each making one of its own. Marked: it ends `closed`.
                let mut rec = self.new_record(conn, cmd, trip);
                rec.cursor_id = Some(id);
                self.open_op(rec, key.clone(), true, 0, out);
                if let Some(op) = self.cursors.get(&key).and_then(|k| self.open.get_mut(k)) {
                    op.reply_lost = true;
                }
                return;
            }
            return self.new_op(conn, cmd, rep, trip, true, out);
        };
        let Some(op) = self.open.get_mut(&op_key) else {
            self.cursors.remove(&key);
            return self.new_op(conn, cmd, rep, trip, true, out);
        };
        Self::add_trip(op, trip);
        let Some(rep) = rep else {
            // The reply was lost (capture lost its bytes) or the connection ended before it.
            // Either way the cursor may go on, on this connection or another of the pool:
            // ending the operation here would make its next getMore a record of its own, as
            // if its opening had not been seen. It stays open, marked; a connection close or
            // the process's exit still ends it (`closed`), as does the idle timeout.
            op.reply_lost = true;
            out.push(Emit::Changed {
                watch_id: op.rec.watch_id.clone(),
            });
            return;
        };
        op.rec.iteration = op.rec.iteration.saturating_add(1);
        let raw = rep.raw();
        if !reply_ok(raw) {
            if op.rec.error.is_none() {
                op.rec.error = error_of("getMore", raw);
            }
            return self.finish(op_key, State::Final, out);
        }
        let next_id = cursor_of(raw).map(|(next_id, batch)| {
            if op.count_batches {
                let m = op.rec.matched.unwrap_or(0);
                op.rec.matched = Some(m.saturating_add(batch.unwrap_or(0)));
            }
            next_id
        });
        if next_id == Some(0) {
            self.finish(op_key, State::Final, out);
        } else {
            out.push(Emit::Changed {
                watch_id: op.rec.watch_id.clone(),
            });
        }
    }

    fn kill_cursors(
        &mut self,
        conn: &ConnInfo,
        cmd: &CommandView,
        rep: Option<&ReplyView>,
        trip: Trip,
        out: &mut Vec<Emit>,
    ) {
        let ids: Vec<i64> = match get(cmd.raw(), "cursors") {
            Some(RawBsonRef::Array(a)) => a
                .into_iter()
                .filter_map(|v| v.ok().and_then(as_i64))
                .collect(),
            _ => Vec::new(),
        };
        let mut matched = false;
        for id in ids {
            let key = (conn.pid, conn.server.clone(), id);
            if let Some(op_key) = self.cursors.get(&key).copied() {
                if let Some(op) = self.open.get_mut(&op_key) {
                    Self::add_trip(op, trip);
                    matched = true;
                }
                self.finish(op_key, State::Final, out);
            }
        }
        if !matched {
            self.new_op(conn, cmd, rep, trip, false, out);
        }
    }

    /// A reply without its request: a further batch of a known cursor is still counted.
    fn orphan_reply(&mut self, conn: &ConnInfo, reply: &Timed, out: &mut Vec<Emit>) {
        let Some(rep) = ReplyView::from_message(&reply.msg, None) else {
            self.stats.orphan_replies += 1;
            return;
        };
        let raw = rep.raw();
        let batch = get_doc(raw, "cursor").filter(|c| get(c, "nextBatch").is_some());
        let (Some(_), Some((id, n))) = (batch, cursor_of(raw)) else {
            self.stats.orphan_replies += 1;
            return;
        };
        let key = (conn.pid, conn.server.clone(), id);
        let Some(&op_key) = self.cursors.get(&key) else {
            self.stats.orphan_replies += 1;
            return;
        };
        if let Some(op) = self.open.get_mut(&op_key) {
            op.rec.iteration = op.rec.iteration.saturating_add(1);
            op.rec.reply_bytes = op.rec.reply_bytes.saturating_add(msg_len(reply));
            op.rec.end_ns = op.rec.end_ns.max(reply.ts_ns);
            op.last_ts = op.last_ts.max(reply.ts_ns);
            if op.count_batches {
                let m = op.rec.matched.unwrap_or(0);
                op.rec.matched = Some(m.saturating_add(n.unwrap_or(0)));
            }
            out.push(Emit::Changed {
                watch_id: op.rec.watch_id.clone(),
            });
        }
    }
}
