//! The delay queue's rules: final at once, idle timeout then more batches under the same
//! WatchID, delay ordering by StartTime, closed on connection close or process exit, flush on
//! shutdown.

mod ops_support;

use bson::rawdoc;
use mongowatch::{
    config::AuditConfig,
    ops::Input,
    queue::{QueueConfig, WatchQueue},
    record::{Record, State},
};
use ops_support::*;
use serde_json::Value;

fn open_find(h: &mut Harness, c: &std::sync::Arc<mongowatch::stream::ConnInfo>, id: i64, t: u64) {
    h.feed(round_trip(
        c,
        msg(rawdoc! { "find": "c", "filter": { "k": id }, "$db": "d" }),
        t,
        reply(
            rawdoc! { "cursor": { "firstBatch": [{ "a": 1 }, { "a": 2 }], "id": id }, "ok": 1.0 },
        ),
        MS,
    ));
}

fn get_more(
    h: &mut Harness,
    c: &std::sync::Arc<mongowatch::stream::ConnInfo>,
    id: i64,
    next: i64,
    t: u64,
) {
    h.feed(round_trip(
        c,
        msg(rawdoc! { "getMore": id, "collection": "c", "$db": "d" }),
        t,
        reply(rawdoc! { "cursor": { "nextBatch": [{ "a": 3 }], "id": next }, "ok": 1.0 }),
        MS,
    ));
}

fn cfg(timeout: f64, delay: f64) -> AuditConfig {
    AuditConfig {
        timeout_secs: timeout,
        delay_secs: delay,
        ..AuditConfig::default()
    }
}

#[test]
fn final_record_leaves_at_once() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "count": "c", "$db": "d" }),
        T0,
        reply(rawdoc! { "n": 1, "ok": 1.0 }),
        MS,
    ));
    assert_eq!(h.records().len(), 1, "no tick needed for a final record");
}

#[test]
fn timeout_then_more_batches_same_watch_id_higher_iteration() {
    let mut h = Harness::new(cfg(10.0, 0.0));
    let c = conn(1, 1);
    open_find(&mut h, &c, 5, T0);
    h.feed(Input::Tick {
        now_ns: T0 + 5 * SEC,
    });
    assert!(h.records().is_empty(), "not idle long enough");
    h.feed(Input::Tick {
        now_ns: T0 + 11 * SEC,
    });
    let r = h.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["State"], "timeout");
    assert_eq!(r[0]["Iteration"], 1);
    assert_eq!(r[0]["MatchedCount"], 2);
    assert_eq!(r[0]["EndTime"], "2026-11-24T15:29:10.001000Z");
    // Still idle: no second timeout record without news.
    h.feed(Input::Tick {
        now_ns: T0 + 30 * SEC,
    });
    assert_eq!(h.records().len(), 1);
    get_more(&mut h, &c, 5, 0, T0 + 40 * SEC);
    let r = h.records();
    assert_eq!(r.len(), 2);
    assert_eq!(r[1]["WatchID"], r[0]["WatchID"]);
    assert_eq!(r[1]["State"], "final");
    assert_eq!(r[1]["Iteration"], 2);
    assert_eq!(r[1]["MatchedCount"], 3);
    assert_eq!(h.auditor.stats().queue.timeouts, 1);
}

#[test]
fn each_get_more_rearms_the_timeout() {
    let mut h = Harness::new(cfg(10.0, 0.0));
    let c = conn(1, 1);
    open_find(&mut h, &c, 5, T0);
    get_more(&mut h, &c, 5, 5, T0 + 8 * SEC);
    h.feed(Input::Tick {
        now_ns: T0 + 15 * SEC,
    });
    assert!(h.records().is_empty(), "re-armed at 8 s");
    get_more(&mut h, &c, 5, 5, T0 + 17 * SEC);
    h.feed(Input::Tick {
        now_ns: T0 + 28 * SEC,
    });
    let r = h.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["State"], "timeout");
    assert_eq!(r[0]["Iteration"], 3);
    // A second timeout after more batches: a new record of the same WatchID.
    get_more(&mut h, &c, 5, 5, T0 + 30 * SEC);
    h.feed(Input::Tick {
        now_ns: T0 + 41 * SEC,
    });
    let r = h.records();
    assert_eq!(r.len(), 2);
    assert_eq!(r[1]["State"], "timeout");
    assert_eq!(r[1]["Iteration"], 4);
    assert_eq!(r[1]["WatchID"], r[0]["WatchID"]);
}

#[test]
fn delay_orders_output_by_start_time() {
    let c1 = conn(1, 1);
    let c2 = conn(2, 1);
    let scenario = |h: &mut Harness| {
        // Op A starts first but finishes last; op B starts later and finishes at once.
        open_find(h, &c1, 5, T0);
        h.feed(round_trip(
            &c2,
            msg(rawdoc! { "count": "b", "$db": "d" }),
            T0 + 100 * MS,
            reply(rawdoc! { "n": 1, "ok": 1.0 }),
            MS,
        ));
        get_more(h, &c1, 5, 0, T0 + 500 * MS);
    };
    let mut plain = Harness::new(cfg(10.0, 0.0));
    scenario(&mut plain);
    let r = plain.records();
    assert_eq!(
        (r[0]["Operation"].clone(), r[1]["Operation"].clone()),
        ("count".into(), "find".into())
    );

    let mut delayed = Harness::new(cfg(10.0, 2.0));
    scenario(&mut delayed);
    assert!(delayed.records().is_empty(), "held for the delay");
    delayed.feed(Input::Tick {
        now_ns: T0 + 2200 * MS,
    });
    assert!(
        delayed.records().is_empty(),
        "the earlier-started op holds the later one"
    );
    delayed.feed(Input::Tick {
        now_ns: T0 + 3 * SEC,
    });
    let r = delayed.records();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["Operation"], "find");
    assert_eq!(r[1]["Operation"], "count");
    assert_eq!(delayed.auditor.stats().queue.out_of_order, 0);
}

#[test]
fn connection_close_closes_only_when_no_pooled_connection_is_left() {
    let mut h = Harness::default_config();
    let (c1, c2) = (conn(1, 7), conn(2, 7));
    open_find(&mut h, &c1, 5, T0);
    get_more(&mut h, &c2, 5, 5, T0 + 10 * MS);
    h.feed(Input::ConnClosed {
        conn: c1.clone(),
        ts_ns: T0 + 20 * MS,
    });
    assert!(h.records().is_empty(), "the cursor can go on over c2");
    h.feed(Input::ConnClosed {
        conn: c2.clone(),
        ts_ns: T0 + 30 * MS,
    });
    let r = h.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["State"], "closed");
    assert_eq!(r[0]["Iteration"], 2);
    assert_eq!(r[0]["EndTime"], "2026-11-24T15:29:00.030000Z");
}

#[test]
fn process_exit_closes_its_operations_only() {
    let mut h = Harness::default_config();
    let (a, b) = (conn(1, 7), conn(2, 8));
    open_find(&mut h, &a, 5, T0);
    open_find(&mut h, &b, 6, T0 + MS);
    h.feed(Input::ProcessExited {
        pid: 7,
        ts_ns: T0 + SEC,
    });
    let r = h.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["State"], "closed");
    assert_eq!(r[0]["Pid"], 7);
    // After a timeout record, the close writes one more record of the same WatchID.
    h.feed(Input::Tick {
        now_ns: T0 + 20 * SEC,
    });
    h.feed(Input::ProcessExited {
        pid: 8,
        ts_ns: T0 + 21 * SEC,
    });
    let r = h.records();
    assert_eq!(r.len(), 3);
    assert_eq!(
        (r[1]["State"].clone(), r[2]["State"].clone()),
        ("timeout".into(), "closed".into())
    );
    assert_eq!(r[1]["WatchID"], r[2]["WatchID"]);
}

#[test]
fn shutdown_flushes_every_pending_record() {
    let mut h = Harness::new(cfg(10.0, 60.0));
    let c = conn(1, 1);
    open_find(&mut h, &c, 5, T0);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "count": "b", "$db": "d" }),
        T0 + 100 * MS,
        reply(rawdoc! { "n": 1, "ok": 1.0 }),
        MS,
    ));
    assert!(h.records().is_empty());
    h.auditor.shutdown(T0 + SEC).unwrap();
    let r = h.records();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["Operation"], "find");
    assert_eq!(r[0]["State"], "timeout", "still open when we stopped");
    assert_eq!(r[1]["Operation"], "count");
    assert_eq!(r[1]["State"], "final");
    assert_eq!(r[0]["CursorId"], 5);
    assert_eq!(r[0]["Error"], Value::Null);
}

fn rec(id: &str, start: u64) -> Record {
    Record {
        watch_id: id.into(),
        start_ns: start,
        end_ns: start,
        duration_ns: 0,
        db: "d".into(),
        collection: None,
        operation: "find".into(),
        iteration: 1,
        pid: 1,
        comm: "x".into(),
        client: "c".into(),
        server: "s".into(),
        request_bytes: 0,
        reply_bytes: 0,
        ..Default::default()
    }
}

#[test]
fn newer_record_of_a_watch_id_replaces_a_waiting_one() {
    let mut q = WatchQueue::new(QueueConfig {
        timeout_ns: SEC,
        delay_ns: 5 * SEC,
    });
    let open = rec("a", T0);
    let snapshot = |id: &str| (id == "a").then_some(&open);
    q.changed("a", T0);
    assert!(
        q.advance(T0 + 2 * SEC, snapshot).is_empty(),
        "timeout fired but delayed"
    );
    assert_eq!(q.stats().timeouts, 1);
    let mut fin = rec("a", T0);
    fin.iteration = 2;
    q.ended(fin, T0 + 3 * SEC);
    let out = q.advance(T0 + 7 * SEC, snapshot);
    assert_eq!(
        out.len(),
        1,
        "the timeout record was superseded while waiting"
    );
    assert_eq!(out[0].state, State::Final);
    assert_eq!(out[0].iteration, 2);
    assert_eq!(q.stats().superseded, 1);
}

#[test]
fn an_open_operation_is_held_by_the_tracker_only() {
    // The queue keeps a WatchID and a deadline; the record it writes at the timeout is the
    // tracker's as it is then, not a copy taken when the operation last changed.
    let mut q = WatchQueue::new(QueueConfig {
        timeout_ns: SEC,
        delay_ns: 0,
    });
    q.changed("a", T0);
    let mut now = rec("a", T0);
    now.iteration = 7;
    let out = q.advance(T0 + 2 * SEC, |id| (id == "a").then_some(&now));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].state, out[0].iteration), (State::Timeout, 7));
    assert_eq!(q.open_len(), 1, "still open, waiting for news");
    q.changed("a", T0 + 3 * SEC);
    let flushed = q.flush_all(T0 + 3 * SEC, |id| (id == "a").then_some(&now));
    assert_eq!(
        flushed.len(),
        1,
        "news since the timeout: written at shutdown"
    );
    assert_eq!(q.open_len(), 0);
}

#[test]
fn queue_orders_ready_records_by_start_time() {
    let mut q = WatchQueue::new(QueueConfig {
        timeout_ns: SEC,
        delay_ns: SEC,
    });
    q.ended(rec("late", T0 + 5 * MS), T0 + 10 * MS);
    q.ended(rec("early", T0), T0 + 20 * MS);
    assert!(q.advance(T0 + 500 * MS, |_| None).is_empty());
    let out = q.advance(T0 + 2 * SEC, |_| None);
    let ids: Vec<_> = out.iter().map(|r| r.watch_id.as_str()).collect();
    assert_eq!(ids, ["early", "late"]);
    assert_eq!(q.ready_len(), 0);
    assert_eq!(q.open_len(), 0);
}

#[test]
fn extreme_times_do_not_panic() {
    let mut h = Harness::new(AuditConfig {
        rate: Some(1.0),
        delay_secs: 5.0,
        ..AuditConfig::default()
    });
    let c = conn(1, 1);
    open_find(&mut h, &c, 5, u64::MAX - 10 * SEC);
    h.feed(Input::Tick { now_ns: u64::MAX });
    h.feed(Input::Tick { now_ns: 0 });
    get_more(&mut h, &c, 5, 0, 0);
    h.auditor.shutdown(u64::MAX).unwrap();
    // The clock jumping to the end of time and back loses nothing. At u64::MAX the idle
    // deadline (saturated) has passed: a timeout record; the getMore after the jump back still
    // joins the find under its WatchID and exhausts it: the last record is final.
    let recs = h.records();
    let seen: Vec<_> = recs
        .iter()
        .map(|r| {
            (
                r["WatchID"].as_str().unwrap(),
                r["Operation"].as_str().unwrap(),
                r["State"].as_str().unwrap(),
                r["Iteration"].as_u64().unwrap(),
                r["MatchedCount"].as_u64().unwrap(),
                r["CursorId"].as_u64().unwrap(),
            )
        })
        .collect();
    let id = seen[0].0;
    assert_eq!(
        seen,
        [
            (id, "find", "timeout", 1, 2, 5),
            (id, "find", "final", 2, 3, 5)
        ],
        "{recs:#?}"
    );
}
