//! Sessions recorded from real drivers (tests/fixtures/README.md) replayed through the stream
//! and wire layers into the Auditor: the records must say what the workload did.

mod mwrec;
mod ops_support;

use std::{collections::BTreeMap, sync::Arc};

use mongowatch::{config::AuditConfig, ops::Input, stream::ConnEvent, stream::ConnInfo};
use mwrec::{read_mwrec, Streams};
use ops_support::Harness;
use serde_json::{json, Value};

/// Replays a recording with the client as the watched process; returns the records.
fn audit(name: &str, cfg: AuditConfig) -> (Vec<Value>, Harness) {
    let json = cfg.format == mongowatch::sink::Format::Json;
    let mut h = Harness::new(cfg);
    let mut streams = Streams::default();
    let mut infos: BTreeMap<u16, Arc<ConnInfo>> = BTreeMap::new();
    let mut last = 0;
    for ch in read_mwrec(name) {
        last = ch.ts_ns;
        let info = infos
            .entry(ch.conn)
            .or_insert_with(|| {
                Arc::new(ConnInfo {
                    id: ch.conn as u64,
                    pid: 4242,
                    comm: "python3".into(),
                    client: format!("127.0.0.1:{}", 40000 + ch.conn).into(),
                    server: "127.0.0.1:27017".into(),
                    tls: false,
                    side: Default::default(),
                    origin: Default::default(),
                })
            })
            .clone();
        let mut inputs = Vec::new();
        streams.feed(&ch, false, 0, &mut |ev| {
            if let ConnEvent::Exchange(x) = ev {
                inputs.push(Input::Exchange {
                    conn: info.clone(),
                    exchange: x,
                });
            }
        });
        if ch.closed {
            inputs.push(Input::ConnClosed {
                conn: info,
                ts_ns: ch.ts_ns,
            });
        }
        for i in inputs {
            h.feed(i);
        }
    }
    h.feed(Input::ProcessExited {
        pid: 4242,
        ts_ns: last + 1,
    });
    h.auditor.shutdown(last + 2).unwrap();
    (if json { h.records() } else { Vec::new() }, h)
}

fn find<'a>(recs: &'a [Value], op: &str, pred: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["Operation"] == op && pred(r))
        .collect()
}

fn check_pymongo(name: &str, compression: Value) {
    let (recs, h) = audit(name, AuditConfig::default());
    if std::env::var_os("SHOW_RECORDS").is_some() {
        for r in &recs {
            eprintln!("{r}");
        }
    }
    for r in &recs {
        assert_eq!(r["Driver"], "PyMongo 4.20.1", "{r}");
        assert_eq!(r["AppName"], "mongowatch-fixture", "{r}");
        assert_eq!(r["DB"], "fixture", "{r}");
        assert!(
            !["hello", "isMaster", "ismaster", "ping", "endSessions"]
                .contains(&r["Operation"].as_str().unwrap()),
            "{r}"
        );
    }
    let people = |r: &Value| r["Collection"] == "people";
    let inserts = find(&recs, "insert", people);
    let counts: Vec<_> = inserts.iter().map(|r| r["InsertedCount"].clone()).collect();
    assert_eq!(
        counts,
        [json!(1), json!(300), json!(1), Value::Null],
        "{inserts:#?}"
    );
    assert_eq!(inserts[3]["State"], "final", "w:0 insert is final at once");
    assert_eq!(inserts[1]["Compression"], compression);

    let finds = find(&recs, "find", people);
    assert_eq!(finds.len(), 2, "{finds:#?}");
    let f = finds[0];
    assert_eq!(f["Filter"], json!({ "n": { "$gte": 10 } }));
    assert_eq!(f["MatchedCount"], 291);
    assert_eq!(f["State"], "final");
    assert!(f["Iteration"].as_u64().unwrap() >= 5, "{f}");
    assert!(f["CursorId"].is_i64(), "{f}");
    let ex = finds[1];
    assert_eq!(ex["Filter"], json!({}));
    assert_eq!(ex["MatchedCount"], 301, "exhaust cursor: {ex}");
    assert_eq!(ex["State"], "final");

    let updates = find(&recs, "update", people);
    assert_eq!(updates[0]["Filter"], json!({ "n": { "$lt": 5 } }));
    assert_eq!(updates[0]["MatchedCount"], 4);
    assert_eq!(updates[0]["ModifiedCount"], 4);
    assert_eq!(updates[0]["UpsertedCount"], 0);
    let deletes = find(&recs, "delete", people);
    assert_eq!(deletes[0]["Filter"], json!({ "_id": 3 }));
    assert_eq!(deletes[0]["DeletedCount"], 1);
    // bulk_write of mixed kinds: one insert, one update, one delete command.
    assert_eq!(updates[1]["Filter"], json!({ "_id": 1 }));
    assert_eq!(deletes[1]["Filter"], json!({ "_id": 2 }));

    let aggs = find(&recs, "aggregate", people);
    assert_eq!(aggs.len(), 2, "aggregate and count_documents");
    assert_eq!(aggs[0]["MatchedCount"], 1);
    assert_eq!(find(&recs, "createIndexes", people).len(), 1);
    let errs = find(&recs, "noSuchCommand", |_| true);
    assert_eq!(errs.len(), 1);
    assert!(errs[0]["Error"]["errmsg"].is_string(), "{}", errs[0]);
    assert_eq!(errs[0]["Collection"], Value::Null);

    let s = h.auditor.stats();
    assert!(s.ops.heartbeats > 0);
    assert_eq!(s.ops.unreadable, 0);
    assert_eq!(s.ops.orphan_get_mores, 0);
    assert_eq!(s.open_operations, 0);
    // Every record is the last of its WatchID: nothing timed out in a clean session.
    assert!(recs.iter().all(|r| r["State"] != "timeout"));
}

#[test]
fn pymongo_plain() {
    check_pymongo("pymongo_plain.mwrec", Value::Null);
}

#[test]
fn pymongo_zlib() {
    check_pymongo("pymongo_zlib.mwrec", json!("zlib"));
}

#[test]
fn pymongo_zstd() {
    check_pymongo("pymongo_zstd.mwrec", json!("zstd"));
}

#[test]
fn pymongo_snappy() {
    check_pymongo("pymongo_snappy.mwrec", json!("snappy"));
}

fn check_node(name: &str, compression: Value) {
    let (recs, h) = audit(name, AuditConfig::default());
    for r in &recs {
        // The legacy OP_QUERY isMaster handshake (answered by OP_REPLY) carries the metadata.
        assert_eq!(r["Driver"], "nodejs 7.9.0", "{r}");
        assert_eq!(r["AppName"], "mongowatch-fixture", "{r}");
        assert_eq!(r["Compression"], compression, "{r}");
    }
    let ops: Vec<&str> = recs
        .iter()
        .map(|r| r["Operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "drop",
            "insert",
            "insert",
            "find",
            "update",
            "delete",
            "aggregate",
            "aggregate",
            "insert",
            "update",
            "delete",
            "insert",
            "noSuchCommand"
        ]
    );
    assert_eq!(recs[2]["InsertedCount"], 200);
    assert_eq!(recs[3]["MatchedCount"], 190);
    assert_eq!(recs[3]["Iteration"], 4);
    assert_eq!(recs[4]["MatchedCount"], 5);
    assert_eq!(recs[11]["InsertedCount"], Value::Null, "w:0");
    assert_eq!(recs[12]["Error"]["codeName"], "CommandNotFound");
    assert_eq!(h.auditor.stats().open_operations, 0);
}

#[test]
fn node_plain() {
    check_node("node_plain.mwrec", Value::Null);
}

#[test]
fn node_zlib() {
    check_node("node_zlib.mwrec", json!("zlib"));
}

#[test]
fn node_snappy() {
    check_node("node_snappy.mwrec", json!("snappy"));
}

#[test]
fn mongosh_zlib() {
    let (recs, _) = audit("mongosh_zlib.mwrec", AuditConfig::default());
    for r in &recs {
        assert_eq!(r["Driver"], "nodejs 7.9.0 (mongosh 2.12.0)", "{r}");
        assert_eq!(r["AppName"], "mongosh 2.12.0", "{r}");
    }
    let shell: Vec<_> = recs
        .iter()
        .filter(|r| r["Collection"] == "shell")
        .map(|r| {
            (
                r["Operation"].as_str().unwrap().to_owned(),
                r["Filter"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shell,
        [
            ("drop".to_owned(), Value::Null),
            ("insert".to_owned(), Value::Null),
            ("find".to_owned(), json!({ "a": { "$gt": 1 } })),
            ("update".to_owned(), json!({ "_id": 1 })),
            (
                "aggregate".to_owned(),
                json!([{ "$match": {} }, { "$group": { "_id": 1, "n": { "$sum": 1 } } }])
            ),
            ("delete".to_owned(), json!({ "a": { "$gte": 2 } })),
        ]
    );
    let del = recs.iter().find(|r| r["Operation"] == "delete").unwrap();
    assert_eq!(del["DeletedCount"], 2);
}

#[test]
fn fixture_through_filters_and_csv() {
    let (recs, h) = audit(
        "pymongo_plain.mwrec",
        AuditConfig {
            filter: Some(r#"Operation == "find" && MatchedCount > 300"#.into()),
            mask: true,
            ..AuditConfig::default()
        },
    );
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["MatchedCount"], 301);
    assert!(h.auditor.stats().records_filtered > 10);
    let (_, h) = audit(
        "pymongo_plain.mwrec",
        AuditConfig {
            format: mongowatch::sink::Format::Csv,
            ..AuditConfig::default()
        },
    );
    let lines = h.out.lines();
    assert!(lines[0].starts_with("WatchID,StartTime,"));
    assert_eq!(
        lines.len() as u64,
        h.auditor.stats().records_written + 1,
        "one header"
    );
}
