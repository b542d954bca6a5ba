//! `--filter` (CEL), `--mask`, `--ops` / `--db` allow-lists and the `--rate` summary.

mod ops_support;

use bson::rawdoc;
use mongowatch::{
    config::AuditConfig,
    filter::{FilterError, RateCounter, RecordFilter, Verdict},
    ops::Input,
    record::{Json, Record, State},
};
use ops_support::*;
use serde_json::json;

fn rec() -> Record {
    Record {
        watch_id: "6763e2c10000000000000001".into(),
        start_ns: T0,
        end_ns: T0 + 20 * MS,
        duration_ns: 15 * MS,
        db: "site".into(),
        collection: Some("news".into()),
        operation: "find".into(),
        filter: Some(Json::Object(vec![
            ("status".into(), Json::Str("open".into())),
            ("n".into(), Json::Int(3)),
        ])),
        matched: Some(250),
        iteration: 3,
        pid: 4242,
        comm: "python3".into(),
        client: "c".into(),
        server: "s".into(),
        request_bytes: 1,
        reply_bytes: 2,
        ..Default::default()
    }
}

fn verdict(expr: &str, r: &Record) -> Verdict {
    RecordFilter::new(Some(expr), None, None, false)
        .unwrap()
        .check(r)
}

#[test]
fn expressions_true_and_false() {
    let r = rec();
    assert_eq!(
        verdict(r#"Collection == "news" && Duration > 0.01"#, &r),
        Verdict::Keep
    );
    assert_eq!(
        verdict(r#"Collection == "news" && Duration > 0.5"#, &r),
        Verdict::Drop
    );
    assert_eq!(
        verdict("MatchedCount >= 250 && Iteration == 3", &r),
        Verdict::Keep
    );
    assert_eq!(verdict("Pid == 4242 && !Tls", &r), Verdict::Keep);
    assert_eq!(verdict(r#"Filter.status == "open""#, &r), Verdict::Keep);
    assert_eq!(verdict("Error == null", &r), Verdict::Keep);
    assert_eq!(verdict("InsertedCount == null", &r), Verdict::Keep);
    assert_eq!(
        verdict(r#"State in ["final", "closed"]"#, &r),
        Verdict::Keep
    );
    assert_eq!(verdict(r#"Operation.startsWith("fi")"#, &r), Verdict::Keep);
    let mut other = rec();
    other.collection = None;
    assert_eq!(verdict(r#"Collection == "news""#, &other), Verdict::Drop);
}

#[test]
fn bad_expressions_fail_at_startup() {
    assert!(matches!(
        RecordFilter::new(Some("Collection == "), None, None, false),
        Err(FilterError::Parse(_))
    ));
    let e = RecordFilter::new(Some("Colection == \"news\""), None, None, false).unwrap_err();
    assert!(matches!(&e, FilterError::UnknownVariable(v) if v == "Colection"));
    assert!(
        e.to_string().contains("Collection"),
        "lists the fields: {e}"
    );
    // Through the config, so the daemon refuses to start.
    let args = mongowatch::config::AuditArgs {
        filter: Some("Duration >".into()),
        ..Default::default()
    };
    assert!(args.resolve().is_err());
}

#[test]
fn runtime_errors_keep_the_record_and_are_counted() {
    let mut f = RecordFilter::new(Some("Filter.missing == 1"), None, None, false).unwrap();
    assert_eq!(f.check(&rec()), Verdict::KeepAfterError);
    assert_eq!(f.check(&rec()), Verdict::KeepAfterError);
    assert_eq!(f.errors(), 2);
    let mut f = RecordFilter::new(Some("MatchedCount"), None, None, false).unwrap();
    assert_eq!(f.check(&rec()), Verdict::KeepAfterError, "not a boolean");
}

#[test]
fn allow_lists() {
    let f = |ops: Option<Vec<&str>>, dbs: Option<Vec<&str>>| {
        RecordFilter::new(
            None,
            ops.map(|v| v.into_iter().map(String::from).collect()),
            dbs.map(|v| v.into_iter().map(String::from).collect()),
            false,
        )
        .unwrap()
        .check(&rec())
    };
    assert_eq!(f(Some(vec!["find", "aggregate"]), None), Verdict::Keep);
    assert_eq!(f(Some(vec!["insert"]), None), Verdict::Drop);
    assert_eq!(f(None, Some(vec!["site"])), Verdict::Keep);
    assert_eq!(f(None, Some(vec!["shop"])), Verdict::Drop);
    assert_eq!(f(Some(vec![]), Some(vec![])), Verdict::Keep, "empty = all");
}

#[test]
fn mask_through_the_auditor_after_filtering_on_real_values() {
    let mut h = Harness::new(AuditConfig {
        mask: true,
        filter: Some(r#"Filter.name == "bob""#.into()),
        ..AuditConfig::default()
    });
    let c = conn(1, 1);
    for (t, name) in [(T0, "bob"), (T0 + MS * 3, "alice")] {
        h.feed(round_trip(
            &c,
            msg(rawdoc! { "count": "users", "query": { "name": name, "age": { "$gt": 30 }, "ok": true, "tags": ["a", 1.5] }, "$db": "d" }),
            t,
            reply(rawdoc! { "n": 1, "ok": 1.0 }),
            MS,
        ));
    }
    let r = h.records();
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0]["Filter"],
        json!({ "name": "xxx", "age": { "$gt": 0 }, "ok": null, "tags": ["x", 0] })
    );
    assert!(h
        .out
        .text()
        .contains(r#""Filter":{"name":"xxx","age":{"$gt":0},"ok":null,"tags":["x",0]}"#));
    let s = h.auditor.stats();
    assert_eq!((s.records_written, s.records_filtered), (1, 1));
}

#[test]
fn ops_and_db_lists_through_the_auditor() {
    let mut h = Harness::new(AuditConfig {
        ops: Some(vec!["insert".into()]),
        db: Some(vec!["keep".into()]),
        ..AuditConfig::default()
    });
    let c = conn(1, 1);
    for (i, (op, db)) in [("insert", "keep"), ("insert", "other"), ("delete", "keep")]
        .into_iter()
        .enumerate()
    {
        let body = match op {
            "insert" => rawdoc! { "insert": "c", "$db": db },
            _ => rawdoc! { "delete": "c", "$db": db },
        };
        h.feed(round_trip(
            &c,
            msg(body),
            T0 + i as u64 * MS * 3,
            reply(rawdoc! { "n": 1, "ok": 1.0 }),
            MS,
        ));
    }
    let r = h.records();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0]["Operation"].clone(), r[0]["DB"].clone()),
        (json!("insert"), json!("keep"))
    );
    assert_eq!(h.auditor.stats().records_filtered, 2);
}

#[test]
fn rate_summary_per_db_collection_operation() {
    let mut rc = RateCounter::new(10.0);
    let mut a = rec();
    rc.observe(&a, T0);
    rc.observe(&a, T0 + SEC);
    a.operation = "count".into();
    rc.observe(&a, T0 + 2 * SEC);
    a.state = State::Timeout;
    rc.observe(&a, T0 + 3 * SEC);
    assert_eq!(rc.tick(T0 + 9 * SEC), None, "period not over");
    let s = rc.tick(T0 + 10 * SEC).unwrap();
    assert_eq!(
        s.to_json_line(),
        r#"{"Kind":"rate","From":"2026-11-24T15:29:00.000000Z","To":"2026-11-24T15:29:10.000000Z","Seconds":10.0,"Rates":[{"DB":"site","Collection":"news","Operation":"count","Count":1,"PerSecond":0.1},{"DB":"site","Collection":"news","Operation":"find","Count":2,"PerSecond":0.2}]}"#
    );
    assert_eq!(rc.tick(T0 + 15 * SEC), None);
    assert_eq!(rc.tick(T0 + 45 * SEC), None, "idle periods write nothing");
    rc.observe(&rec(), T0 + 46 * SEC);
    let s = rc.flush(T0 + 48 * SEC).unwrap();
    assert_eq!(s.seconds, 8.0, "partial period from 40 s");
}

#[test]
fn rate_summary_through_the_auditor_goes_to_its_own_stream() {
    let mut h = Harness::new(AuditConfig {
        rate: Some(1.0),
        ..AuditConfig::default()
    });
    let c = conn(1, 1);
    h.feed(Input::Tick { now_ns: T0 });
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "count": "c", "$db": "d" }),
        T0 + 100 * MS,
        reply(rawdoc! { "n": 1, "ok": 1.0 }),
        MS,
    ));
    h.feed(Input::Tick {
        now_ns: T0 + 1500 * MS,
    });
    assert_eq!(h.records().len(), 1, "records stream holds records only");
    let lines = h.rate.lines();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["Kind"], "rate");
    assert_eq!(v["Rates"][0]["Operation"], "count");
    assert_eq!(h.auditor.stats().rate_summaries, 1);
}

#[test]
fn auditor_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<mongowatch::pipeline::audit::Auditor>();
    send::<RecordFilter>();
}

#[test]
fn macro_variables_are_allowed() {
    let r = rec();
    assert_eq!(
        verdict(r#"Filter.exists(k, k == "status")"#, &r),
        Verdict::Keep
    );
    assert_eq!(
        verdict(r#"Filter.all(k, k == "status")"#, &r),
        Verdict::Drop
    );
}
