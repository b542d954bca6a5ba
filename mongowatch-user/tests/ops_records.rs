//! Field mappings of the audit record, from real-shaped commands and replies.

mod ops_support;

use bson::{rawdoc, spec::BinarySubtype, Binary};
use mongowatch::{
    config::AuditConfig,
    ops::Input,
    wire::{
        reply_flags, Body, Compressor, Doc, OpCode, OpGetMore, OpInsert, OpKillCursors, OpQuery,
    },
};
use ops_support::*;
use serde_json::{json, Value};

fn one(h: &Harness) -> Value {
    let r = h.records();
    assert_eq!(r.len(), 1, "records: {r:#?}");
    r.into_iter().next().unwrap()
}

fn docs(n: usize) -> bson::RawArrayBuf {
    let mut a = bson::RawArrayBuf::new();
    for i in 0..n {
        a.push(rawdoc! { "_id": i as i32, "status": "open" });
    }
    a
}

#[test]
fn find_with_get_mores_on_pooled_connections_is_one_record() {
    let mut h = Harness::default_config();
    let (c1, c2) = (conn(1, 4242), conn(2, 4242));
    let find = msg(rawdoc! { "find": "orders", "filter": { "status": "open" }, "$db": "shop" });
    let r1 = reply(rawdoc! {
        "cursor": { "firstBatch": docs(101), "id": 77_i64, "ns": "shop.orders" }, "ok": 1.0,
    });
    let gm = |_| msg(rawdoc! { "getMore": 77_i64, "collection": "orders", "$db": "shop" });
    let r2 = reply(rawdoc! {
        "cursor": { "nextBatch": docs(100), "id": 77_i64, "ns": "shop.orders" }, "ok": 1.0,
    });
    let r3 = reply(rawdoc! {
        "cursor": { "nextBatch": docs(49), "id": 0_i64, "ns": "shop.orders" }, "ok": 1.0,
    });
    let bytes_req = len_of(&find) + 2 * len_of(&gm(0));
    let bytes_rep = len_of(&r1) + len_of(&r2) + len_of(&r3);
    h.feed(round_trip(&c1, find, T0, r1, 2 * MS));
    assert!(h.records().is_empty(), "open cursor: nothing written yet");
    h.feed(round_trip(&c2, gm(0), T0 + 10 * MS, r2, MS));
    h.feed(round_trip(&c1, gm(0), T0 + 20 * MS, r3, MS));
    let r = one(&h);
    assert_eq!(r["Operation"], "find");
    assert_eq!(r["DB"], "shop");
    assert_eq!(r["Collection"], "orders");
    assert_eq!(r["Filter"], json!({ "status": "open" }));
    assert_eq!(r["MatchedCount"], 250);
    assert_eq!(r["Iteration"], 3);
    assert_eq!(r["State"], "final");
    assert_eq!(r["CursorId"], 77);
    assert_eq!(r["Duration"], 0.004);
    assert_eq!(r["StartTime"], "2026-11-24T15:29:00.000000Z");
    assert_eq!(r["EndTime"], "2026-11-24T15:29:00.021000Z");
    assert_eq!(r["Client"], "127.0.0.1:51001");
    assert_eq!(r["Server"], "127.0.0.1:27017");
    assert_eq!(r["Pid"], 4242);
    assert_eq!(r["Comm"], "python3");
    assert_eq!(r["RequestBytes"], bytes_req);
    assert_eq!(r["ReplyBytes"], bytes_rep);
    for k in [
        "InsertedCount",
        "UpsertedCount",
        "ModifiedCount",
        "DeletedCount",
        "Error",
        "User",
        "AppName",
        "Driver",
        "Compression",
    ] {
        assert_eq!(r[k], Value::Null, "{k}");
    }
    assert_eq!(r["Tls"], false);
    assert_eq!(r["WatchID"].as_str().unwrap().len(), 24);
}

#[test]
fn find_in_one_batch_has_no_cursor_id() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "find": "news", "$db": "site" }),
        T0,
        reply(rawdoc! { "cursor": { "firstBatch": docs(3), "id": 0_i64, "ns": "site.news" }, "ok": 1 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(
        r["Filter"],
        json!({}),
        "a find without filter matches everything"
    );
    assert_eq!(r["MatchedCount"], 3);
    assert_eq!(r["CursorId"], Value::Null);
    assert_eq!(r["Iteration"], 1);
    assert_eq!(r["Duration"], 0.001);
}

#[test]
fn kill_cursors_closes_the_operation() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "aggregate": "orders", "pipeline": [{ "$match": { "a": 1 } }, { "$sort": { "b": 1, "a": -1 } }], "cursor": {}, "$db": "shop" }),
        T0,
        reply(rawdoc! { "cursor": { "firstBatch": docs(2), "id": 5_i64, "ns": "shop.orders" }, "ok": 1 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "getMore": 5_i64, "collection": "orders", "$db": "shop" }),
        T0 + 5 * MS,
        reply(rawdoc! { "cursor": { "nextBatch": docs(2), "id": 5_i64 }, "ok": 1 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "killCursors": "orders", "cursors": [5_i64], "$db": "shop" }),
        T0 + 9 * MS,
        reply(rawdoc! { "cursorsKilled": [5_i64], "cursorsNotFound": [], "cursorsAlive": [], "cursorsUnknown": [], "ok": 1 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["Operation"], "aggregate");
    // Key order of the pipeline is kept ($sort depends on it).
    assert!(h
        .out
        .text()
        .contains(r#""Filter":[{"$match":{"a":1}},{"$sort":{"b":1,"a":-1}}]"#));
    assert_eq!(r["MatchedCount"], 4);
    assert_eq!(r["Iteration"], 2);
    assert_eq!(r["State"], "final");
    assert_eq!(r["CursorId"], 5);
    assert_eq!(r["Duration"], 0.003);
    assert_eq!(r["EndTime"], "2026-11-24T15:29:00.010000Z");
}

#[test]
fn get_more_without_its_opening_is_its_own_operation() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "getMore": 99_i64, "collection": "logs", "$db": "app" }),
        T0,
        reply(rawdoc! { "cursor": { "nextBatch": docs(7), "id": 0_i64 }, "ok": 1 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["Operation"], "getMore");
    assert_eq!(r["Collection"], "logs");
    assert_eq!(r["DB"], "app");
    assert_eq!(r["MatchedCount"], 7);
    assert_eq!(r["CursorId"], 99);
    assert_eq!(r["Filter"], Value::Null);
    assert_eq!(h.auditor.stats().ops.orphan_get_mores, 1);
}

#[test]
fn insert_with_document_sequence() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg_seq(
            rawdoc! { "insert": "users", "ordered": true, "$db": "app" },
            vec![("documents", vec![rawdoc! { "a": 1 }, rawdoc! { "a": 2 }])],
        ),
        T0,
        reply(rawdoc! { "n": 2, "ok": 1.0 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["Operation"], "insert");
    assert_eq!(r["Collection"], "users");
    assert_eq!(r["InsertedCount"], 2);
    assert_eq!(r["Filter"], Value::Null);
    assert_eq!(r["MatchedCount"], Value::Null);
    assert_eq!(r["DeletedCount"], Value::Null);
}

#[test]
fn update_counts_and_filters() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg_seq(
            rawdoc! { "update": "users", "$db": "app" },
            vec![(
                "updates",
                vec![
                    rawdoc! { "q": { "name": "a" }, "u": { "$set": { "x": 1 } } },
                    rawdoc! { "q": { "name": "b" }, "u": { "$set": { "x": 1 } }, "upsert": true },
                ],
            )],
        ),
        T0,
        reply(
            rawdoc! { "n": 3, "nModified": 1, "upserted": [{ "index": 1, "_id": 10 }], "ok": 1.0 },
        ),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["Filter"], json!([{ "name": "a" }, { "name": "b" }]));
    assert_eq!(r["MatchedCount"], 2);
    assert_eq!(r["UpsertedCount"], 1);
    assert_eq!(r["ModifiedCount"], 1);
    assert_eq!(r["InsertedCount"], Value::Null);
}

#[test]
fn update_statements_in_the_body() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "update": "users", "updates": [{ "q": { "k": 1 }, "u": { "k": 2 } }], "$db": "app" }),
        T0,
        reply(rawdoc! { "n": 1, "nModified": 1, "ok": 1.0 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["Filter"], json!({ "k": 1 }));
    assert_eq!(r["MatchedCount"], 1);
    assert_eq!(r["UpsertedCount"], 0);
}

#[test]
fn delete_counts() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg_seq(
            rawdoc! { "delete": "users", "$db": "app" },
            vec![(
                "deletes",
                vec![rawdoc! { "q": { "age": { "$lt": 18 } }, "limit": 0 }],
            )],
        ),
        T0,
        reply(rawdoc! { "n": 4, "ok": 1.0 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["Operation"], "delete");
    assert_eq!(r["Filter"], json!({ "age": { "$lt": 18 } }));
    assert_eq!(r["DeletedCount"], 4);
    assert_eq!(r["MatchedCount"], Value::Null);
}

#[test]
fn find_and_modify_update_upsert_and_remove() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "findAndModify": "jobs", "query": { "state": "new" }, "update": { "$set": { "state": "run" } }, "$db": "q" }),
        T0,
        reply(rawdoc! { "lastErrorObject": { "n": 1, "updatedExisting": true }, "value": {}, "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "findAndModify": "jobs", "query": { "state": "new" }, "update": { "$set": { "state": "run" } }, "upsert": true, "$db": "q" }),
        T0 + MS * 5,
        reply(rawdoc! { "lastErrorObject": { "n": 1, "updatedExisting": false, "upserted": 3 }, "value": bson::RawBson::Null, "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "findAndModify": "jobs", "query": { "state": "new" }, "remove": true, "$db": "q" }),
        T0 + MS * 9,
        reply(rawdoc! { "lastErrorObject": { "n": 1 }, "value": {}, "ok": 1.0 }),
        MS,
    ));
    let r = h.records();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["Operation"], "findAndModify");
    assert_eq!(r[0]["Filter"], json!({ "state": "new" }));
    assert_eq!(r[0]["MatchedCount"], 1);
    assert_eq!(r[0]["UpsertedCount"], 0);
    assert_eq!(r[0]["DeletedCount"], Value::Null);
    assert_eq!(r[1]["MatchedCount"], 0);
    assert_eq!(r[1]["UpsertedCount"], 1);
    assert_eq!(r[2]["DeletedCount"], 1);
    assert_eq!(r[2]["MatchedCount"], Value::Null);
    assert_eq!(r[2]["UpsertedCount"], Value::Null);
}

#[test]
fn count_distinct_and_db_level_aggregate() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "count": "news", "query": { "lang": "fa" }, "$db": "site" }),
        T0,
        reply(rawdoc! { "n": 42, "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "distinct": "news", "key": "lang", "$db": "site" }),
        T0 + 2 * MS,
        reply(rawdoc! { "values": ["fa", "en", "de"], "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "aggregate": 1, "pipeline": [{ "$currentOp": {} }], "cursor": {}, "$db": "admin" }),
        T0 + 4 * MS,
        reply(rawdoc! { "cursor": { "firstBatch": docs(1), "id": 0_i64, "ns": "admin.$cmd.aggregate" }, "ok": 1.0 }),
        MS,
    ));
    let r = h.records();
    assert_eq!(r[0]["Operation"], "count");
    assert_eq!(r[0]["Filter"], json!({ "lang": "fa" }));
    assert_eq!(r[0]["MatchedCount"], 42);
    assert_eq!(r[1]["Operation"], "distinct");
    assert_eq!(r[1]["Filter"], json!({}));
    assert_eq!(r[1]["MatchedCount"], 3);
    assert_eq!(r[2]["Collection"], Value::Null);
    assert_eq!(r[2]["DB"], "admin");
    assert_eq!(r[2]["MatchedCount"], 1);
}

#[test]
fn bulk_write_with_ops_and_ns_info_sequences() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg_seq(
            rawdoc! { "bulkWrite": 1, "errorsOnly": false, "ordered": true, "$db": "admin" },
            vec![
                (
                    "ops",
                    vec![
                        rawdoc! { "insert": 0, "document": { "a": 1 } },
                        rawdoc! { "update": 0, "filter": { "a": 1 }, "updateMods": { "$set": { "b": 2 } } },
                        rawdoc! { "delete": 0, "filter": { "a": 2 }, "multi": false },
                    ],
                ),
                ("nsInfo", vec![rawdoc! { "ns": "shop.items" }]),
            ],
        ),
        T0,
        reply(rawdoc! {
            "cursor": { "firstBatch": [{ "ok": 1, "idx": 0, "n": 1 }, { "ok": 0, "idx": 1, "code": 11000, "codeName": "DuplicateKey", "errmsg": "E11000 duplicate key" }], "id": 0_i64, "ns": "admin.$cmd.bulkWrite" },
            "nErrors": 1, "nInserted": 1, "nMatched": 0, "nModified": 0, "nUpserted": 0, "nDeleted": 0, "ok": 1.0,
        }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["Operation"], "bulkWrite");
    assert_eq!(r["DB"], "shop");
    assert_eq!(r["Collection"], "items");
    assert_eq!(r["Filter"], json!([{ "a": 1 }, { "a": 2 }]));
    assert_eq!(r["InsertedCount"], 1);
    assert_eq!(r["MatchedCount"], 0);
    assert_eq!(r["DeletedCount"], 0);
    assert_eq!(
        r["Error"],
        json!({ "code": 11000, "codeName": "DuplicateKey", "errmsg": "E11000 duplicate key", "writeErrors": 1 })
    );
}

#[test]
fn index_and_admin_commands() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "createIndexes": "users", "indexes": [{ "key": { "email": 1 }, "name": "email_1" }], "$db": "app" }),
        T0,
        reply(rawdoc! { "numIndexesBefore": 1, "numIndexesAfter": 2, "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "dropDatabase": 1, "$db": "old" }),
        T0 + 2 * MS,
        reply(rawdoc! { "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "renameCollection": "app.a", "to": "app.b", "$db": "admin" }),
        T0 + 4 * MS,
        reply(rawdoc! { "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "createUser": "bob", "pwd": "secret", "roles": [], "$db": "admin" }),
        T0 + 6 * MS,
        reply(rawdoc! { "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "listCollections": 1, "nameOnly": true, "$db": "app" }),
        T0 + 8 * MS,
        reply(rawdoc! { "cursor": { "firstBatch": docs(2), "id": 0_i64, "ns": "app.$cmd.listCollections" }, "ok": 1.0 }),
        MS,
    ));
    let r = h.records();
    assert_eq!(r.len(), 5);
    assert_eq!(
        (r[0]["Operation"].clone(), r[0]["Collection"].clone()),
        (json!("createIndexes"), json!("users"))
    );
    for k in ["MatchedCount", "InsertedCount", "Filter"] {
        assert_eq!(r[0][k], Value::Null);
    }
    assert_eq!(
        (r[1]["DB"].clone(), r[1]["Collection"].clone()),
        (json!("old"), Value::Null)
    );
    assert_eq!(
        (r[2]["DB"].clone(), r[2]["Collection"].clone()),
        (json!("app"), json!("a"))
    );
    assert_eq!(
        r[3]["Collection"],
        Value::Null,
        "createUser names a user, not a collection"
    );
    assert!(!h.out.text().contains("secret"));
    assert_eq!(r[4]["Operation"], "listCollections");
    assert_eq!(r[4]["Collection"], Value::Null);
    assert_eq!(r[4]["MatchedCount"], 2);
}

#[test]
fn errors_command_write_and_write_concern() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "find": "x", "filter": { "$bad": 1 }, "$db": "d" }),
        T0,
        reply(rawdoc! { "ok": 0.0, "errmsg": "unknown top level operator: $bad", "code": 2, "codeName": "BadValue" }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg_seq(
            rawdoc! { "insert": "x", "$db": "d" },
            vec![(
                "documents",
                vec![
                    rawdoc! { "_id": 1 },
                    rawdoc! { "_id": 1 },
                    rawdoc! { "_id": 1 },
                ],
            )],
        ),
        T0 + 2 * MS,
        reply(rawdoc! { "n": 1, "writeErrors": [
            { "index": 1, "code": 11000, "errmsg": "E11000 duplicate key error" },
            { "index": 2, "code": 11000, "errmsg": "E11000 duplicate key error" },
        ], "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "delete": "x", "deletes": [{ "q": {}, "limit": 0 }], "$db": "d" }),
        T0 + 4 * MS,
        reply(rawdoc! { "n": 5, "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out" }, "ok": 1.0 }),
        MS,
    ));
    let r = h.records();
    assert_eq!(
        r[0]["Error"],
        json!({ "code": 2, "codeName": "BadValue", "errmsg": "unknown top level operator: $bad" })
    );
    assert_eq!(r[0]["MatchedCount"], Value::Null);
    assert_eq!(r[0]["State"], "final");
    assert_eq!(r[1]["InsertedCount"], 1);
    assert_eq!(
        r[1]["Error"],
        json!({ "code": 11000, "codeName": null, "errmsg": "E11000 duplicate key error", "writeErrors": 2 })
    );
    assert_eq!(r[2]["DeletedCount"], 5);
    assert_eq!(r[2]["Error"]["codeName"], "WriteConcernFailed");
}

fn sasl(payload: &[u8]) -> bson::RawBson {
    bson::RawBson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: payload.to_vec(),
    })
}

#[test]
fn handshake_and_scram_give_identity_and_stay_out_of_the_log() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! {
            "hello": 1,
            "client": {
                "application": { "name": "billing" },
                "driver": { "name": "PyMongo", "version": "4.20.1" },
                "os": { "type": "Linux" },
            },
            "compression": ["zstd", "snappy"],
            "$db": "admin",
        }),
        T0,
        reply(rawdoc! { "isWritablePrimary": true, "compression": ["zstd"], "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": sasl(b"n,,n=alice,r=SECRETNONCE"), "$db": "admin" }),
        T0 + 2 * MS,
        reply(rawdoc! { "conversationId": 1, "done": false, "payload": sasl(b"r=SECRETNONCEserver,s=salt,i=4096"), "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": sasl(b"c=biws,r=SECRETNONCEserver,p=PROOF"), "$db": "admin" }),
        T0 + 4 * MS,
        reply(rawdoc! { "conversationId": 1, "done": true, "payload": sasl(b"v=SIG"), "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "ping": 1, "$db": "admin" }),
        T0 + 5 * MS,
        reply(rawdoc! { "ok": 1.0 }),
        MS,
    ));
    assert!(
        h.records().is_empty(),
        "handshakes and heartbeats are left out"
    );
    h.feed(round_trip(
        &c,
        compressed(msg(rawdoc! { "count": "n", "$db": "d" }), Compressor::Zstd),
        T0 + 6 * MS,
        reply(rawdoc! { "n": 1, "ok": 1.0 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["AppName"], "billing");
    assert_eq!(r["Driver"], "PyMongo 4.20.1");
    assert_eq!(r["User"], "alice");
    assert_eq!(r["Compression"], "zstd");
    assert_eq!(h.auditor.stats().ops.heartbeats, 4);
    let text = h.out.text();
    assert!(!text.contains("SECRETNONCE") && !text.contains("PROOF"));
}

#[test]
fn failed_authentication_sets_no_user() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-1", "payload": sasl(b"n,,n=mallory,r=x"), "$db": "admin" }),
        T0,
        reply(rawdoc! { "ok": 0.0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed" }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "count": "n", "$db": "d" }),
        T0 + 2 * MS,
        reply(rawdoc! { "n": 1, "ok": 1.0 }),
        MS,
    ));
    assert_eq!(one(&h)["User"], Value::Null);
}

#[test]
fn speculative_authentication_in_hello() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! {
            "hello": 1,
            "speculativeAuthenticate": { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": sasl(b"n,,n=carol,r=abc"), "db": "admin" },
            "$db": "admin",
        }),
        T0,
        reply(rawdoc! { "speculativeAuthenticate": { "conversationId": 1, "done": false, "payload": sasl(b"r=abcdef,s=x,i=1") }, "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": sasl(b"c=biws,p=x"), "$db": "admin" }),
        T0 + 2 * MS,
        reply(rawdoc! { "conversationId": 1, "done": true, "payload": sasl(b"v=x"), "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "count": "n", "$db": "d" }),
        T0 + 4 * MS,
        reply(rawdoc! { "n": 1, "ok": 1.0 }),
        MS,
    ));
    assert_eq!(one(&h)["User"], "carol");
}

#[test]
fn heartbeats_included_on_request() {
    let mut h = Harness::new(AuditConfig {
        include_heartbeats: true,
        ..AuditConfig::default()
    });
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "hello": 1, "$db": "admin" }),
        T0,
        reply(rawdoc! { "ok": 1.0 }),
        MS,
    ));
    assert_eq!(one(&h)["Operation"], "hello");
}

#[test]
fn more_to_come_write_is_final_at_once_and_unanswered_is_closed() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(one_way(
        &c,
        msg_one_way(
            rawdoc! { "insert": "events", "writeConcern": { "w": 0 }, "$db": "log" },
            vec![("documents", vec![rawdoc! { "e": 1 }])],
        ),
        T0,
    ));
    h.feed(unanswered(
        &c,
        msg(rawdoc! { "find": "events", "filter": { "e": 1 }, "$db": "log" }),
        T0 + MS,
    ));
    let r = h.records();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["State"], "final");
    assert_eq!(r[0]["InsertedCount"], Value::Null);
    assert_eq!(r[0]["Duration"], 0.0);
    assert_eq!(r[0]["ReplyBytes"], 0);
    assert_eq!(r[1]["State"], "closed");
    assert_eq!(r[1]["Filter"], json!({ "e": 1 }));
}

#[test]
fn legacy_op_query_find_get_more_and_kill() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    let q = OpQuery {
        flags: 0,
        full_collection_name: "shop.orders".into(),
        number_to_skip: 0,
        number_to_return: 2,
        query: Doc::from(rawdoc! { "$query": { "status": "open" }, "$orderby": { "_id": 1 } }),
        return_fields_selector: None,
    };
    h.feed(round_trip(
        &c,
        legacy(Body::Query(q), OpCode::Query, 100),
        T0,
        op_reply(31, 0, vec![rawdoc! { "_id": 1 }, rawdoc! { "_id": 2 }]),
        MS,
    ));
    let gm = OpGetMore {
        full_collection_name: "shop.orders".into(),
        number_to_return: 2,
        cursor_id: 31,
    };
    h.feed(round_trip(
        &c,
        legacy(Body::GetMore(gm), OpCode::GetMore, 40),
        T0 + 3 * MS,
        op_reply(31, 0, vec![rawdoc! { "_id": 3 }]),
        MS,
    ));
    h.feed(one_way(
        &c,
        legacy(
            Body::KillCursors(OpKillCursors {
                cursor_ids: vec![31],
            }),
            OpCode::KillCursors,
            32,
        ),
        T0 + 6 * MS,
    ));
    let r = one(&h);
    assert_eq!(r["Operation"], "find");
    assert_eq!(r["DB"], "shop");
    assert_eq!(r["Collection"], "orders");
    assert_eq!(r["Filter"], json!({ "status": "open" }));
    assert_eq!(r["MatchedCount"], 3);
    assert_eq!(r["Iteration"], 2);
    assert_eq!(r["CursorId"], 31);
    assert_eq!(r["RequestBytes"], 172);
}

#[test]
fn legacy_command_on_dollar_cmd_and_query_failure() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    let q = |doc| OpQuery {
        flags: 0,
        full_collection_name: "app.$cmd".into(),
        number_to_skip: 0,
        number_to_return: -1,
        query: Doc::from(doc),
        return_fields_selector: None,
    };
    h.feed(round_trip(
        &c,
        legacy(
            Body::Query(q(rawdoc! { "count": "users", "query": { "a": 1 } })),
            OpCode::Query,
            60,
        ),
        T0,
        op_reply(0, 0, vec![rawdoc! { "n": 9, "ok": 1.0 }]),
        MS,
    ));
    h.feed(round_trip(
        &c,
        legacy(
            Body::Query(OpQuery {
                full_collection_name: "app.users".into(),
                ..q(rawdoc! { "a": { "$bad": 1 } })
            }),
            OpCode::Query,
            60,
        ),
        T0 + 2 * MS,
        op_reply(
            0,
            reply_flags::QUERY_FAILURE,
            vec![rawdoc! { "$err": "bad operator", "code": 2 }],
        ),
        MS,
    ));
    h.feed(one_way(
        &c,
        legacy(
            Body::Insert(OpInsert {
                flags: 0,
                full_collection_name: "app.users".into(),
                documents: vec![Doc::from(rawdoc! { "a": 1 })],
            }),
            OpCode::Insert,
            50,
        ),
        T0 + 4 * MS,
    ));
    let r = h.records();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["Operation"], "count");
    assert_eq!(r[0]["DB"], "app");
    assert_eq!(r[0]["MatchedCount"], 9);
    assert_eq!(r[1]["Operation"], "find");
    assert_eq!(r[1]["Error"]["errmsg"], "bad operator");
    assert_eq!(r[2]["Operation"], "insert");
    assert_eq!(r[2]["Collection"], "users");
}

#[test]
fn exhaust_replies_are_batches_of_the_same_operation() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "find": "big", "$db": "d" }),
        T0,
        reply(rawdoc! { "cursor": { "firstBatch": docs(2), "id": 8_i64 }, "ok": 1.0 }),
        MS,
    ));
    let gm = std::sync::Arc::new(mongowatch::wire::Timed {
        ts_ns: T0 + 5 * MS,
        first_ts_ns: T0 + 5 * MS,
        msg: msg(rawdoc! { "getMore": 8_i64, "collection": "big", "$db": "d" }),
    });
    for (i, (n, id)) in [(2, 8_i64), (2, 8), (1, 0)].into_iter().enumerate() {
        h.feed(Input::Exchange {
            conn: c.clone(),
            exchange: mongowatch::wire::Exchange::RoundTrip {
                request: gm.clone(),
                reply: mongowatch::wire::Timed {
                    ts_ns: T0 + (6 + i as u64) * MS,
                    first_ts_ns: T0 + (6 + i as u64) * MS,
                    msg: reply(rawdoc! { "cursor": { "nextBatch": docs(n), "id": id }, "ok": 1.0 }),
                },
                exhaust_index: i as u32,
            },
        });
    }
    let r = one(&h);
    assert_eq!(r["MatchedCount"], 7);
    assert_eq!(r["Iteration"], 4);
    // 1 ms + (6 - 5) ms + 1 ms + 1 ms
    assert_eq!(r["Duration"], 0.004);
}

#[test]
fn malformed_inputs_do_not_panic() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    // Empty body, odd types, a reply without a cursor document, a cursor id of the wrong type.
    h.feed(round_trip(&c, msg(rawdoc! {}), T0, reply(rawdoc! {}), MS));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "find": 5, "filter": "x", "$db": 7 }),
        T0 + MS,
        reply(rawdoc! { "cursor": "nope", "ok": "yes" }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "getMore": "x", "collection": 3 }),
        T0 + 2 * MS,
        reply(rawdoc! { "cursor": { "nextBatch": 5, "id": "x" } }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "killCursors": "x", "cursors": "all" }),
        T0 + 3 * MS,
        reply(rawdoc! { "ok": 1 }),
        MS,
    ));
    h.auditor.shutdown(T0 + SEC).unwrap();
    assert_eq!(h.auditor.stats().ops.unreadable, 1);
    assert_eq!(h.records().len(), 3);
}

#[test]
fn explain_describes_the_inner_command() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "explain": { "find": "orders", "filter": { "a": 5 } }, "verbosity": "queryPlanner", "$db": "shop" }),
        T0,
        reply(rawdoc! { "queryPlanner": {}, "ok": 1.0 }),
        MS,
    ));
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "explain": { "delete": "orders", "deletes": [{ "q": { "b": 1 }, "limit": 1 }] }, "$db": "shop" }),
        T0 + 2 * MS,
        reply(rawdoc! { "queryPlanner": {}, "ok": 1.0 }),
        MS,
    ));
    let r = h.records();
    assert_eq!(r[0]["Operation"], "explain");
    assert_eq!(r[0]["Collection"], "orders");
    assert_eq!(r[0]["Filter"], json!({ "a": 5 }));
    assert_eq!(r[0]["MatchedCount"], Value::Null);
    assert_eq!(r[1]["Filter"], json!({ "b": 1 }));
}

#[test]
fn orphan_reply_of_a_known_cursor_still_counts() {
    let mut h = Harness::default_config();
    let c = conn(1, 1);
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "find": "c", "$db": "d" }),
        T0,
        reply(rawdoc! { "cursor": { "firstBatch": docs(2), "id": 4_i64 }, "ok": 1.0 }),
        MS,
    ));
    // The getMore request was lost in a gap; its reply still names the cursor.
    h.feed(Input::Exchange {
        conn: c.clone(),
        exchange: mongowatch::wire::Exchange::OrphanReply {
            reply: mongowatch::wire::Timed {
                ts_ns: T0 + 5 * MS,
                first_ts_ns: T0 + 5 * MS,
                msg: reply(rawdoc! { "cursor": { "nextBatch": docs(3), "id": 4_i64 }, "ok": 1.0 }),
            },
        },
    });
    // An orphan reply that matches nothing is only counted.
    h.feed(Input::Exchange {
        conn: c.clone(),
        exchange: mongowatch::wire::Exchange::OrphanReply {
            reply: mongowatch::wire::Timed {
                ts_ns: T0 + 6 * MS,
                first_ts_ns: T0 + 6 * MS,
                msg: reply(rawdoc! { "n": 1, "ok": 1.0 }),
            },
        },
    });
    h.feed(round_trip(
        &c,
        msg(rawdoc! { "getMore": 4_i64, "collection": "c", "$db": "d" }),
        T0 + 8 * MS,
        reply(rawdoc! { "cursor": { "nextBatch": docs(1), "id": 0_i64 }, "ok": 1.0 }),
        MS,
    ));
    let r = one(&h);
    assert_eq!(r["MatchedCount"], 6);
    assert_eq!(r["Iteration"], 3);
    assert_eq!(h.auditor.stats().ops.orphan_replies, 1);
}

#[test]
fn tracker_bounds_open_operations_and_handles_reused_cursor_ids() {
    use mongowatch::{
        ops::{Emit, Tracker, TrackerConfig},
        record::{State, WatchIds},
    };
    let mut t = Tracker::new(
        TrackerConfig {
            include_heartbeats: false,
            max_open: 2,
        },
        WatchIds::new([0; 5]),
    );
    let ended = |out: &[Emit]| -> Vec<mongowatch::record::Record> {
        out.iter()
            .filter_map(|e| match e {
                Emit::Ended(r) => Some(r.clone()),
                Emit::Changed { .. } => None,
            })
            .collect()
    };
    let c = conn(1, 1);
    let mut out: Vec<Emit> = Vec::new();
    let open = |id: i64, at: u64| {
        round_trip(
            &c,
            msg(rawdoc! { "find": "c", "$db": "d" }),
            at,
            reply(rawdoc! { "cursor": { "firstBatch": docs(1), "id": id }, "ok": 1.0 }),
            MS,
        )
    };
    t.handle(&open(1, T0), &mut out);
    t.handle(&open(2, T0 + MS * 2), &mut out);
    assert_eq!(t.open_operations(), 2);
    out.clear();
    t.handle(&open(3, T0 + MS * 4), &mut out);
    assert_eq!(t.open_operations(), 2);
    let evicted = ended(&out);
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].state, State::Timeout);
    assert_eq!(
        evicted[0].cursor_id,
        Some(1),
        "the least recently active one"
    );
    assert_eq!(t.stats().evicted, 1);
    out.clear();
    // Cursor id 3 comes back from a new find: the old operation ended unseen.
    t.handle(&open(3, T0 + MS * 6), &mut out);
    let gone = ended(&out);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].cursor_id, Some(3));
    assert!(
        t.snapshot(&gone[0].watch_id).is_none(),
        "an ended operation is not held"
    );
    assert_eq!(t.open_operations(), 2);
}

/// Eviction takes the least recently active operation, not the oldest opened: a getMore makes
/// an old cursor recent. Many operations that ended in between change nothing.
#[test]
fn eviction_takes_the_least_recently_active_operation() {
    use mongowatch::{
        ops::{Emit, Tracker, TrackerConfig},
        record::WatchIds,
    };
    let mut t = Tracker::new(
        TrackerConfig {
            include_heartbeats: false,
            max_open: 3,
        },
        WatchIds::new([0; 5]),
    );
    let c = conn(1, 1);
    let mut out: Vec<Emit> = Vec::new();
    let find = |id: i64, at: u64| {
        round_trip(
            &c,
            msg(rawdoc! { "find": "c", "$db": "d" }),
            at,
            reply(rawdoc! { "cursor": { "firstBatch": docs(1), "id": id }, "ok": 1.0 }),
            MS,
        )
    };
    t.handle(&find(1, T0), &mut out);
    t.handle(&find(2, T0 + MS), &mut out);
    // A thousand finds that end at once, between them.
    for i in 0..1000 {
        t.handle(&find(0, T0 + 2 * MS + i), &mut out);
    }
    t.handle(&find(3, T0 + 3 * MS), &mut out);
    // Cursor 1 is active again, after 2 and 3.
    t.handle(
        &round_trip(
            &c,
            msg(rawdoc! { "getMore": 1_i64, "collection": "c", "$db": "d" }),
            T0 + 5 * MS,
            reply(rawdoc! { "cursor": { "nextBatch": docs(1), "id": 1_i64 }, "ok": 1.0 }),
            MS,
        ),
        &mut out,
    );
    let mut evicted = Vec::new();
    for (id, at) in [(4, 8), (5, 9)] {
        out.clear();
        t.handle(&find(id, T0 + at * MS), &mut out);
        evicted.extend(out.iter().filter_map(|e| match e {
            Emit::Ended(r) => r.cursor_id,
            Emit::Changed { .. } => None,
        }));
    }
    assert_eq!(
        evicted,
        [2, 3],
        "2 and 3 were least recently active; 1 had a getMore"
    );
    assert_eq!(t.open_operations(), 3);
    assert_eq!(t.stats().evicted, 2);
}
