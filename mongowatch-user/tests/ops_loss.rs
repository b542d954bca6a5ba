//! Records when capture loses bytes (docs/audit-record.md, "When capture loses bytes"): wire
//! bytes with a hole, through the stream and wire layers into the Auditor. No record may be
//! wrong: an operation is only missing or marked (`closed`), never split.

mod ops_support;

use bson::{rawdoc, RawDocumentBuf};
use mongowatch::{
    capture::events::Direction,
    ops::Input,
    stream::{ConnConfig, ConnEvent, Connection},
};
use ops_support::{conn, Harness, MS, T0};
use serde_json::Value;

/// An OP_MSG of one kind-0 section, as it travels.
fn op_msg(request_id: i32, response_to: i32, body: &RawDocumentBuf) -> Vec<u8> {
    let doc = body.as_bytes();
    let len = (16 + 4 + 1 + doc.len()) as i32;
    let mut b = Vec::with_capacity(len as usize);
    for v in [len, request_id, response_to, 2013, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.push(0);
    b.extend_from_slice(doc);
    b
}

/// One connection's bytes, each direction at its own offsets; `lost` skips a message's bytes
/// as a full ring does (the next bytes arrive at a later offset).
struct Wire {
    c: Connection,
    off: [u64; 2],
    t: u64,
    inputs: Vec<Input>,
}

impl Wire {
    fn new() -> Wire {
        Wire {
            c: Connection::new(ConnConfig::default()),
            off: [0, 0],
            t: T0,
            inputs: Vec::new(),
        }
    }

    fn send(&mut self, dir: Direction, bytes: &[u8], lost: bool) {
        let i = usize::from(dir == Direction::Ingress);
        self.t += MS;
        if !lost {
            let info = conn(1, 4242);
            let inputs = &mut self.inputs;
            self.c.push(dir, self.off[i], bytes, self.t, &mut |ev| {
                if let ConnEvent::Exchange(x) = ev {
                    inputs.push(Input::Exchange {
                        conn: info.clone(),
                        exchange: x,
                    });
                }
            });
        }
        self.off[i] += bytes.len() as u64;
    }
}

fn batch(n: i32) -> bson::RawArrayBuf {
    let mut a = bson::RawArrayBuf::new();
    for i in 0..n {
        a.push(rawdoc! { "_id": i });
    }
    a
}

/// A find, then two getMores on its cursor; `lose` names the replies lost (0: the find's).
fn cursor_with_lost_replies(lose: &[usize]) -> Vec<Value> {
    let mut w = Wire::new();
    let requests = [
        rawdoc! { "find": "logs", "filter": { "level": "error" }, "$db": "app" },
        rawdoc! { "getMore": 77_i64, "collection": "logs", "$db": "app" },
        rawdoc! { "getMore": 77_i64, "collection": "logs", "$db": "app" },
    ];
    let replies = [
        rawdoc! { "cursor": { "firstBatch": batch(2), "id": 77_i64, "ns": "app.logs" }, "ok": 1 },
        rawdoc! { "cursor": { "nextBatch": batch(3), "id": 77_i64, "ns": "app.logs" }, "ok": 1 },
        rawdoc! { "cursor": { "nextBatch": batch(4), "id": 0_i64, "ns": "app.logs" }, "ok": 1 },
    ];
    for (i, (req, rep)) in requests.iter().zip(&replies).enumerate() {
        let id = 10 + i as i32;
        w.send(Direction::Egress, &op_msg(id, 0, req), false);
        w.send(
            Direction::Ingress,
            &op_msg(100 + id, id, rep),
            lose.contains(&i),
        );
    }
    let mut h = Harness::default_config();
    for i in w.inputs.drain(..) {
        h.feed(i);
    }
    h.feed(Input::ProcessExited {
        pid: 4242,
        ts_ns: w.t + MS,
    });
    h.auditor.shutdown(w.t + 2 * MS).unwrap();
    h.records()
}

/// A lost getMore reply used to end the find there (`closed`) and make the next getMore a
/// record of its own, `getMore`, as if the find had not been seen: one operation in two
/// records. It is one record, `closed` because a batch is missing from its totals.
#[test]
fn a_lost_get_more_reply_leaves_the_operation_whole_and_marked() {
    let recs = cursor_with_lost_replies(&[1]);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let r = &recs[0];
    assert_eq!(r["Operation"], "find");
    assert_eq!(r["State"], "closed", "a batch was lost: not final");
    assert_eq!(r["CursorId"], 77);
    // The batches seen: 2 + 4 (the 3 of the lost reply are missing), in 2 replies.
    assert_eq!(r["MatchedCount"], 6);
    assert_eq!(r["Iteration"], 2);
}

/// The find's own reply lost: its cursor id was never seen, so the getMores cannot be told to
/// belong to it. The find is written `closed`; the getMores are one record of their own,
/// `getMore` (the contract's record of a getMore whose opening was not seen).
#[test]
fn a_lost_find_reply_closes_the_find_and_its_get_mores_are_their_own_record() {
    let recs = cursor_with_lost_replies(&[0]);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["Operation"], "find");
    assert_eq!(recs[0]["State"], "closed");
    assert_eq!(recs[0]["MatchedCount"], Value::Null);
    assert_eq!(recs[1]["Operation"], "getMore");
    assert_eq!(recs[1]["CursorId"], 77);
    assert_eq!(recs[1]["MatchedCount"], 7);
    assert_eq!(recs[1]["State"], "final");
}

/// The find's reply and the first getMore's both lost: the first getMore's cursor id is in
/// its request, so the getMores are still one record (not one each), `closed`.
#[test]
fn get_mores_whose_opening_and_first_reply_were_lost_are_one_record() {
    let recs = cursor_with_lost_replies(&[0, 1]);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["Operation"], "find");
    assert_eq!(recs[0]["State"], "closed");
    assert_eq!(recs[1]["Operation"], "getMore");
    assert_eq!(recs[1]["State"], "closed", "a batch was lost: not final");
    assert_eq!(recs[1]["CursorId"], 77);
    assert_eq!(recs[1]["MatchedCount"], 4);
    assert_eq!(recs[1]["Iteration"], 2);
}

/// Nothing lost: one record, final (the fixture itself is right).
#[test]
fn nothing_lost_is_one_final_record() {
    let recs = cursor_with_lost_replies(&[]);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["State"], "final");
    assert_eq!(recs[0]["MatchedCount"], 9);
    assert_eq!(recs[0]["Iteration"], 3);
}
