//! Properties over random command/reply sequences: no input panics, and every operation that
//! was seen ends with exactly one last record per WatchID after shutdown.

mod ops_support;

use std::collections::HashMap;

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
        // The last record of each WatchID is final, closed or timeout; none is lost or repeated
        // without news.
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
