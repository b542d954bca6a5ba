//! Properties over random command/reply sequences: no input panics and only a `timeout` record
//! is ever followed by another of its WatchID; and, over random cursor sessions whose outcome a
//! small model predicts, every operation seen ends with exactly one last record, with the
//! model's state, round trips and counts: none is lost, split or invented.

mod ops_support;

use std::collections::{BTreeMap, HashMap};

use bson::{RawBson, RawDocumentBuf};
use mongowatch::{config::AuditConfig, ops::Input};
use ops_support::*;
use proptest::prelude::*;

const NAMES: &[&str] = &[
    "find",
    "aggregate",
    "getMore",
    "killCursors",
    "insert",
    "update",
    "delete",
    "findAndModify",
    "count",
    "distinct",
    "bulkWrite",
    "hello",
    "saslStart",
    "explain",
    "listIndexes",
];
const KEYS: &[&str] = &[
    "filter",
    "query",
    "pipeline",
    "cursor",
    "cursors",
    "updates",
    "deletes",
    "collection",
    "remove",
    "n",
    "nModified",
    "upserted",
    "ok",
    "writeErrors",
    "lastErrorObject",
    "values",
    "id",
    "firstBatch",
    "nextBatch",
    "client",
    "payload",
    "mechanism",
];

fn value() -> impl Strategy<Value = RawBson> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(RawBson::Int32),
        (0i64..4).prop_map(RawBson::Int64),
        any::<bool>().prop_map(RawBson::Boolean),
        any::<f64>().prop_map(RawBson::Double),
        "[a-z]{0,4}".prop_map(RawBson::String),
        Just(RawBson::Null),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| {
                let mut a = bson::RawArrayBuf::new();
                for x in v {
                    a.push(x);
                }
                RawBson::Array(a)
            }),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|v| {
                let mut d = RawDocumentBuf::new();
                for (k, x) in v {
                    d.append(bson::raw::CString::try_from(k).unwrap(), x);
                }
                RawBson::Document(d)
            }),
        ]
    })
}

fn doc(first: Option<&'static str>) -> impl Strategy<Value = RawDocumentBuf> {
    (
        value(),
        prop::collection::vec((prop::sample::select(KEYS), value()), 0..5),
    )
        .prop_map(move |(v0, rest)| {
            let mut d = RawDocumentBuf::new();
            if let Some(f) = first {
                d.append(bson::raw::CString::try_from(f).unwrap(), v0);
            }
            for (k, x) in rest {
                d.append(bson::raw::CString::try_from(k).unwrap(), x);
            }
            d.append(bson::raw::CString::try_from("$db").unwrap(), "d");
            d
        })
}

#[derive(Debug, Clone)]
enum Step {
    Trip {
        conn: u64,
        req: RawDocumentBuf,
        rep: RawDocumentBuf,
    },
    OneWay {
        conn: u64,
        req: RawDocumentBuf,
    },
    Close {
        conn: u64,
    },
    Tick {
        secs: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let req = prop::sample::select(NAMES).prop_flat_map(|n| doc(Some(n)));
    prop_oneof![
        6 => (0u64..3, req.clone(), doc(None)).prop_map(|(conn, req, rep)| Step::Trip { conn, req, rep }),
        1 => (0u64..3, req).prop_map(|(conn, req)| Step::OneWay { conn, req }),
        1 => (0u64..3).prop_map(|conn| Step::Close { conn }),
        1 => (0u64..30).prop_map(|secs| Step::Tick { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_sequences_never_panic_and_end_cleanly(steps in prop::collection::vec(step(), 1..40)) {
        let mut h = Harness::new(AuditConfig { delay_secs: 1.0, ..AuditConfig::default() });
        let mut t = T0;
        for s in steps {
            t += 50 * MS;
            let input = match s {
                Step::Trip { conn: c, req, rep } => round_trip(&conn(c, 9), msg(req), t, reply(rep), MS),
                Step::OneWay { conn: c, req } => one_way(&conn(c, 9), msg_one_way(req, vec![]), t),
                Step::Close { conn: c } => Input::ConnClosed { conn: conn(c, 9), ts_ns: t },
                Step::Tick { secs } => { t += secs * SEC; Input::Tick { now_ns: t } }
            };
            h.auditor.handle(input).unwrap();
        }
        h.auditor.shutdown(t + SEC).unwrap();
        // Only a timeout record is followed by another of its WatchID (none is repeated without
        // news; that none is lost is the model's property below).
        let mut last: HashMap<String, serde_json::Value> = HashMap::new();
        for r in h.records() {
            let id = r["WatchID"].as_str().unwrap().to_owned();
            if let Some(prev) = last.get(&id) {
                prop_assert_eq!(prev["State"].as_str(), Some("timeout"), "only a timeout record is followed by another");
            }
            last.insert(id, r);
        }
        let s = h.auditor.stats();
        prop_assert_eq!(s.records_written as usize, h.records().len());
    }
}

/// A step of a cursor session on one of three pooled connections of one process.
#[derive(Debug, Clone)]
enum Act {
    /// An insert, answered: one final record.
    Insert {
        conn: u64,
    },
    /// A heartbeat: no record.
    Hello {
        conn: u64,
    },
    /// A find returning `n` documents and cursor `id` (0: exhausted at once).
    Find {
        conn: u64,
        id: i64,
        n: i32,
    },
    /// A getMore on cursor `id` returning `n` documents; `more`: the cursor stays open.
    GetMore {
        conn: u64,
        id: i64,
        n: i32,
        more: bool,
    },
    Kill {
        conn: u64,
        id: i64,
    },
    Close {
        conn: u64,
    },
    Tick {
        secs: u64,
    },
}

fn act() -> impl Strategy<Value = Act> {
    let c = 0u64..3;
    let id = 0i64..4;
    prop_oneof![
        2 => c.clone().prop_map(|conn| Act::Insert { conn }),
        1 => c.clone().prop_map(|conn| Act::Hello { conn }),
        3 => (c.clone(), id.clone(), 0i32..4).prop_map(|(conn, id, n)| Act::Find { conn, id, n }),
        4 => (c.clone(), 1i64..4, 0i32..4, any::<bool>())
            .prop_map(|(conn, id, n, more)| Act::GetMore { conn, id, n, more }),
        1 => (c.clone(), 1i64..4).prop_map(|(conn, id)| Act::Kill { conn, id }),
        1 => c.prop_map(|conn| Act::Close { conn }),
        1 => (0u64..30).prop_map(|secs| Act::Tick { secs }),
    ]
}

/// What the model expects of one operation's last record.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    operation: &'static str,
    state: &'static str,
    iteration: u64,
    matched: Option<i64>,
}

fn docs(n: i32) -> bson::RawArrayBuf {
    let mut a = bson::RawArrayBuf::new();
    for i in 0..n {
        a.push(bson::rawdoc! { "i": i });
    }
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn every_operation_ends_in_exactly_one_last_record(acts in prop::collection::vec(act(), 1..40)) {
        use bson::rawdoc;
        let mut h = Harness::new(AuditConfig { delay_secs: 1.0, ..AuditConfig::default() });
        // The model: operations in the order they started, open cursors by id, live connections.
        let mut ops: Vec<Expected> = Vec::new();
        let mut open: HashMap<i64, usize> = HashMap::new();
        let mut live: Vec<u64> = Vec::new();
        let mut t = T0;
        for a in acts {
            t += 50 * MS;
            let mut seen = |c: u64| if !live.contains(&c) { live.push(c) };
            let input = match a {
                Act::Insert { conn: c } => {
                    seen(c);
                    ops.push(Expected { operation: "insert", state: "final", iteration: 1, matched: None });
                    round_trip(&conn(c, 9), msg(rawdoc! { "insert": "c", "$db": "d" }), t,
                        reply(rawdoc! { "n": 1, "ok": 1.0 }), MS)
                }
                Act::Hello { conn: c } => {
                    seen(c);
                    round_trip(&conn(c, 9), msg(rawdoc! { "hello": 1, "$db": "admin" }), t,
                        reply(rawdoc! { "isWritablePrimary": true, "ok": 1.0 }), MS)
                }
                Act::Find { conn: c, id, n } => {
                    seen(c);
                    // A cursor id still open is reused: its old operation ended unseen.
                    if let Some(old) = (id != 0).then(|| open.remove(&id)).flatten() {
                        ops[old].state = "timeout";
                    }
                    let state = if id == 0 { "final" } else { "open" };
                    ops.push(Expected { operation: "find", state, iteration: 1, matched: Some(n.into()) });
                    if id != 0 {
                        open.insert(id, ops.len() - 1);
                    }
                    round_trip(&conn(c, 9), msg(rawdoc! { "find": "c", "filter": {}, "$db": "d" }), t,
                        reply(rawdoc! { "cursor": { "firstBatch": docs(n), "id": id, "ns": "d.c" }, "ok": 1.0 }), MS)
                }
                Act::GetMore { conn: c, id, n, more } => {
                    seen(c);
                    match open.get(&id).copied() {
                        Some(i) => {
                            ops[i].iteration += 1;
                            ops[i].matched = Some(ops[i].matched.unwrap_or(0) + i64::from(n));
                            if !more {
                                ops[i].state = "final";
                                open.remove(&id);
                            }
                        }
                        None => {
                            // Its opening command was not seen: a getMore record of its own, which
                            // carries the cursor on when the cursor stays open.
                            let state = if more { "open" } else { "final" };
                            ops.push(Expected { operation: "getMore", state, iteration: 1, matched: Some(n.into()) });
                            if more {
                                open.insert(id, ops.len() - 1);
                            }
                        }
                    }
                    let next = if more { id } else { 0 };
                    round_trip(&conn(c, 9), msg(rawdoc! { "getMore": id, "collection": "c", "$db": "d" }), t,
                        reply(rawdoc! { "cursor": { "nextBatch": docs(n), "id": next, "ns": "d.c" }, "ok": 1.0 }), MS)
                }
                Act::Kill { conn: c, id } => {
                    seen(c);
                    match open.remove(&id) {
                        Some(i) => ops[i].state = "final",
                        None => ops.push(Expected { operation: "killCursors", state: "final", iteration: 1, matched: None }),
                    }
                    round_trip(&conn(c, 9), msg(rawdoc! { "killCursors": "c", "cursors": [id], "$db": "d" }), t,
                        reply(rawdoc! { "cursorsKilled": [id], "ok": 1.0 }), MS)
                }
                Act::Close { conn: c } => {
                    live.retain(|l| *l != c);
                    // Cursors outlive a connection while another of the process to the same
                    // server is open: a getMore may come on that one.
                    if live.is_empty() {
                        for (_, i) in open.drain() {
                            ops[i].state = "closed";
                        }
                    }
                    Input::ConnClosed { conn: conn(c, 9), ts_ns: t }
                }
                Act::Tick { secs } => {
                    t += secs * SEC;
                    Input::Tick { now_ns: t }
                }
            };
            h.auditor.handle(input).unwrap();
        }
        h.auditor.shutdown(t + SEC).unwrap();
        // Still open at shutdown: written as timed out.
        for (_, i) in open.drain() {
            ops[i].state = "timeout";
        }

        let mut last: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for r in h.records() {
            last.insert(r["WatchID"].as_str().unwrap().to_owned(), r);
        }
        // Operations start 50 ms apart: StartTime orders them as the model does.
        let mut got: Vec<serde_json::Value> = last.into_values().collect();
        got.sort_by(|a, b| a["StartTime"].as_str().cmp(&b["StartTime"].as_str()));
        let got: Vec<Expected> = got
            .iter()
            .map(|r| Expected {
                operation: match r["Operation"].as_str().unwrap() {
                    "insert" => "insert",
                    "find" => "find",
                    "getMore" => "getMore",
                    "killCursors" => "killCursors",
                    other => panic!("unexpected operation {other}: {r}"),
                },
                state: match r["State"].as_str().unwrap() {
                    "final" => "final",
                    "timeout" => "timeout",
                    "closed" => "closed",
                    other => panic!("unexpected state {other}: {r}"),
                },
                iteration: r["Iteration"].as_u64().unwrap(),
                matched: r["MatchedCount"].as_i64(),
            })
            .collect();
        prop_assert_eq!(got, ops);
    }
}
