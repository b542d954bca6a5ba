//! Framing and pairing tests: chunking, gaps, resync, expiry, roles, exhaust.

use std::sync::Arc;

use bson::rawdoc;

use super::*;
use crate::capture::events::Direction;
use crate::wire::{
    encode, Body, DropReason, Exchange, Header, Message, OpCode, OpReply, PairConfig,
};

fn op_msg(id: i32, response_to: i32, flags: u32, pad: usize) -> Vec<u8> {
    let body = rawdoc! { "find": "c", "filter": { "pad": "x".repeat(pad) }, "$db": "db" };
    let mut msg = Message::op_msg(id, response_to, body.into());
    if let Body::Msg(m) = &mut msg.body {
        m.flags = flags;
    }
    encode(&msg)
}

fn op_reply(id: i32, response_to: i32) -> Vec<u8> {
    encode(&Message {
        header: Header {
            length: 0,
            request_id: id,
            response_to,
            op_code: OpCode::Reply as i32,
        },
        wire_len: 0,
        compressor: None,
        body: Body::Reply(OpReply {
            flags: 8,
            cursor_id: 0,
            starting_from: 0,
            number_returned: 1,
            documents: vec![rawdoc! { "ismaster": true, "ok": 1.0 }.into()],
        }),
    })
}

#[derive(Default)]
struct Seen {
    frames: Vec<RawFrame>,
    gaps: Vec<(u64, u64)>,
    dropped: Vec<(u64, u64, DropReason)>,
}

fn stream_push(s: &mut DirectionStream, seen: &mut Seen, offset: u64, data: &[u8], ts: u64) {
    s.push(offset, data, ts, &mut |ev| record(seen, ev));
}

fn record(seen: &mut Seen, ev: StreamEvent) {
    match ev {
        StreamEvent::Frame(f) => seen.frames.push(f),
        StreamEvent::Gap { offset, len } => seen.gaps.push((offset, len)),
        StreamEvent::Dropped {
            offset,
            len,
            reason,
            ..
        } => seen.dropped.push((offset, len, reason)),
    }
}

fn new_stream() -> DirectionStream {
    DirectionStream::new(StreamConfig::default())
}

#[test]
fn whole_message_in_one_chunk_is_zero_copy_of_the_buffer() {
    let m = op_msg(1, 0, 0, 10);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &m, 100);
    assert_eq!(seen.frames.len(), 1);
    let f = &seen.frames[0];
    assert_eq!(&f.bytes[..], &m[..]);
    assert_eq!((f.offset, f.first_ts_ns, f.last_ts_ns), (0, 100, 100));
    assert_eq!(s.stats().messages, 1);
    assert_eq!(s.stats().resyncs, 0, "the first header is not a resync");
    assert_eq!(s.buffered(), 0);
}

#[test]
fn header_then_body_like_pymongo() {
    let a = op_msg(1, 0, 0, 100);
    let b = op_msg(2, 0, 0, 5);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &a[..16], 10);
    stream_push(&mut s, &mut seen, 16, &a[16..], 20);
    // Then a length prefix alone, then the rest.
    let off = a.len() as u64;
    stream_push(&mut s, &mut seen, off, &b[..4], 30);
    stream_push(&mut s, &mut seen, off + 4, &b[4..], 40);
    assert_eq!(seen.frames.len(), 2);
    assert_eq!(
        (seen.frames[0].first_ts_ns, seen.frames[0].last_ts_ns),
        (10, 20)
    );
    assert_eq!(
        (seen.frames[1].first_ts_ns, seen.frames[1].last_ts_ns),
        (30, 40)
    );
    assert_eq!(seen.frames[1].offset, off);
}

#[test]
fn byte_by_byte_and_many_per_chunk() {
    let msgs: Vec<Vec<u8>> = (0..5)
        .map(|i| op_msg(i + 1, 0, 0, i as usize * 7))
        .collect();
    let all: Vec<u8> = msgs.concat();
    let mut s = new_stream();
    let mut seen = Seen::default();
    for (i, b) in all.iter().enumerate() {
        stream_push(&mut s, &mut seen, i as u64, &[*b], i as u64);
    }
    assert_eq!(seen.frames.len(), 5);
    for (f, m) in seen.frames.iter().zip(&msgs) {
        assert_eq!(&f.bytes[..], &m[..]);
    }
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &all, 1);
    assert_eq!(seen.frames.len(), 5);
    assert_eq!(s.stats().bytes, all.len() as u64);
}

#[test]
fn capture_starting_mid_message_resyncs() {
    let a = op_msg(1, 0, 0, 200);
    let b = op_msg(2, 0, 0, 3);
    let mut s = new_stream();
    let mut seen = Seen::default();
    // The first bytes seen are the last 150 of `a`.
    let tail = &a[a.len() - 150..];
    stream_push(&mut s, &mut seen, 5000, tail, 1);
    stream_push(&mut s, &mut seen, 5150, &b, 2);
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(&seen.frames[0].bytes[..], &b[..]);
    assert_eq!(seen.frames[0].offset, 5150);
    assert_eq!(s.stats().resyncs, 1);
    assert_eq!(s.stats().resync_skipped_bytes, 150);
}

#[test]
fn gap_inside_a_known_message_keeps_sync() {
    let a = op_msg(1, 0, 0, 1000);
    let b = op_msg(2, 0, 0, 10);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &a[..100], 1);
    // 500 bytes of `a` lost, explicitly.
    s.gap(100, 500, &mut |ev| record(&mut seen, ev));
    stream_push(&mut s, &mut seen, 600, &a[600..], 2);
    stream_push(&mut s, &mut seen, a.len() as u64, &b, 3);
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(&seen.frames[0].bytes[..], &b[..]);
    assert_eq!(seen.gaps, vec![(100, 500)]);
    assert_eq!(seen.dropped, vec![(0, 100, DropReason::Gap)]);
    assert_eq!(s.stats().resyncs, 0, "no hunting needed");
    assert_eq!(s.stats().dropped.gap, 1);
}

#[test]
fn implicit_gap_over_a_header_hunts() {
    let a = op_msg(1, 0, 0, 50);
    let b = op_msg(2, 0, 0, 50);
    let c = op_msg(3, 0, 0, 50);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &a, 1);
    // `b`'s first 20 bytes never arrive: the offset jumps.
    let ob = a.len() as u64;
    stream_push(&mut s, &mut seen, ob + 20, &b[20..], 2);
    stream_push(&mut s, &mut seen, ob + b.len() as u64, &c, 3);
    let ids: Vec<i32> = seen
        .frames
        .iter()
        .map(|f| i32::from_le_bytes(f.bytes[4..8].try_into().unwrap()))
        .collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(seen.gaps, vec![(ob, 20)]);
    assert_eq!(s.stats().resyncs, 1);
    assert_eq!(s.stats().gap_bytes, 20);
}

#[test]
fn gap_ending_exactly_at_a_message_end() {
    let a = op_msg(1, 0, 0, 50);
    let b = op_msg(2, 0, 0, 50);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &a[..30], 1);
    s.gap(30, a.len() as u64 - 30, &mut |ev| record(&mut seen, ev));
    stream_push(&mut s, &mut seen, a.len() as u64, &b, 2);
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(s.stats().resyncs, 0);
}

#[test]
fn overlaps_are_trimmed() {
    let a = op_msg(1, 0, 0, 50);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &a[..40], 1);
    stream_push(&mut s, &mut seen, 0, &a[..40], 1); // all seen
    stream_push(&mut s, &mut seen, 30, &a[30..], 2); // 10 seen
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(&seen.frames[0].bytes[..], &a[..]);
    assert_eq!(s.stats().overlap_bytes, 50);
}

#[test]
fn oversize_is_skipped_without_buffering() {
    let big = op_msg(1, 0, 0, 5000);
    let small = op_msg(2, 0, 0, 5);
    let mut s = DirectionStream::new(StreamConfig {
        max_message: 1024,
        ..StreamConfig::default()
    });
    let mut seen = Seen::default();
    let mut off = 0u64;
    for chunk in big.chunks(700).chain(std::iter::once(&small[..])) {
        stream_push(&mut s, &mut seen, off, chunk, 1);
        off += chunk.len() as u64;
        assert!(s.buffered() <= 1024);
    }
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(&seen.frames[0].bytes[..], &small[..]);
    assert_eq!(s.stats().dropped.oversize, 1);
}

#[test]
fn bad_header_in_sync_hunts_for_the_next() {
    let a = op_msg(1, 0, 0, 5);
    let b = op_msg(2, 0, 0, 5);
    let mut junk = vec![0xffu8; 37];
    junk[0..4].copy_from_slice(&7i32.to_le_bytes()); // length 7: impossible
    let mut s = new_stream();
    let mut seen = Seen::default();
    let all = [a.clone(), junk, b.clone()].concat();
    stream_push(&mut s, &mut seen, 0, &all, 1);
    assert_eq!(seen.frames.len(), 2);
    assert_eq!(&seen.frames[1].bytes[..], &b[..]);
    assert_eq!(s.stats().dropped.bad_header, 1);
    assert_eq!(s.stats().resyncs, 1);
}

#[test]
fn flush_drops_the_partial_message() {
    let a = op_msg(1, 0, 0, 50);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &a[..40], 1);
    s.flush(&mut |ev| record(&mut seen, ev));
    assert_eq!(seen.dropped, vec![(0, 40, DropReason::Incomplete)]);
    assert_eq!(s.buffered(), 0);
}

#[test]
fn small_frames_share_blocks_and_large_ones_are_not_reallocated() {
    let msgs: Vec<Vec<u8>> = (0..10).map(|i| op_msg(i + 1, 0, 0, 10)).collect();
    let mut s = new_stream();
    let mut seen = Seen::default();
    let mut off = 0;
    for m in &msgs {
        stream_push(&mut s, &mut seen, off, m, 1);
        off += m.len() as u64;
    }
    // Consecutive frames sit next to each other in one block.
    let p0 = seen.frames[0].bytes.as_ptr() as usize;
    let p1 = seen.frames[1].bytes.as_ptr() as usize;
    assert_eq!(p1 - p0, msgs[0].len());
}

// ---------------------------------------------------------------- Connection

#[derive(Default)]
struct ConnSeen {
    frames: Vec<(Direction, i32, bool)>,
    exchanges: Vec<Exchange>,
}

fn conn_push(
    c: &mut Connection,
    seen: &mut ConnSeen,
    dir: Direction,
    off: u64,
    data: &[u8],
    ts: u64,
) {
    c.push(dir, off, data, ts, &mut |ev| conn_record(seen, ev));
}

fn conn_record(seen: &mut ConnSeen, ev: ConnEvent<'_>) {
    match ev {
        ConnEvent::Frame {
            dir,
            frame,
            message,
        } => seen.frames.push((
            dir,
            i32::from_le_bytes(frame.bytes[4..8].try_into().unwrap()),
            message.is_ok(),
        )),
        ConnEvent::Exchange(x) => seen.exchanges.push(x),
        _ => {}
    }
}

fn ids(x: &Exchange) -> (&'static str, i32, Option<i32>, u32) {
    match x {
        Exchange::RoundTrip {
            request,
            reply,
            exhaust_index,
        } => (
            "rt",
            request.msg.header.request_id,
            Some(reply.msg.header.request_id),
            *exhaust_index,
        ),
        Exchange::OneWay { request } => ("oneway", request.msg.header.request_id, None, 0),
        Exchange::Unanswered { request } => ("unanswered", request.msg.header.request_id, None, 0),
        Exchange::OrphanReply { reply } => ("orphan", reply.msg.header.request_id, None, 0),
    }
}

/// Runs a script of (dir, message) on a fresh connection, each message in one chunk.
fn run(script: &[(Direction, Vec<u8>)], close: bool) -> (Connection, ConnSeen) {
    let mut c = Connection::new(ConnConfig::default());
    let mut seen = ConnSeen::default();
    let (mut eg, mut ing) = (0u64, 0u64);
    for (i, (dir, m)) in script.iter().enumerate() {
        let off = match dir {
            Direction::Egress => &mut eg,
            Direction::Ingress => &mut ing,
        };
        conn_push(&mut c, &mut seen, *dir, *off, m, 1000 + i as u64);
        *off += m.len() as u64;
    }
    if close {
        c.close(9999, &mut |ev| conn_record(&mut seen, ev));
    }
    (c, seen)
}

#[test]
fn client_role_round_trip() {
    let (c, seen) = run(
        &[
            (Direction::Egress, op_msg(1, 0, 0, 0)),
            (Direction::Ingress, op_msg(2, 1, 0, 0)),
        ],
        true,
    );
    assert_eq!(seen.exchanges.len(), 1);
    assert_eq!(ids(&seen.exchanges[0]), ("rt", 1, Some(2), 0));
    let Exchange::RoundTrip { request, reply, .. } = &seen.exchanges[0] else {
        panic!()
    };
    assert_eq!((request.ts_ns, reply.ts_ns), (1000, 1001));
    assert_eq!(c.stats().pairing.round_trips, 1);
    assert_eq!(c.stats().decoded, 2);
}

#[test]
fn server_role_round_trip() {
    // The watched process is the server: requests come in, replies go out.
    let (_, seen) = run(
        &[
            (Direction::Ingress, op_msg(1, 0, 0, 0)),
            (Direction::Egress, op_msg(2, 1, 0, 0)),
        ],
        true,
    );
    assert_eq!(ids(&seen.exchanges[0]), ("rt", 1, Some(2), 0));
    assert_eq!(seen.frames[0].0, Direction::Ingress);
}

#[test]
fn legacy_handshake_pairs_with_op_reply() {
    let q = crate::wire::tests::hex(
        "3a 00 00 00 05 00 00 00 00 00 00 00 d4 07 00 00 04 00 00 00
         61 64 6d 69 6e 2e 24 63 6d 64 00 00 00 00 00 ff ff ff ff
         13 00 00 00 10 69 73 4d 61 73 74 65 72 00 01 00 00 00 00",
    );
    let (_, seen) = run(
        &[
            (Direction::Egress, q.to_vec()),
            (Direction::Ingress, op_reply(6, 5)),
        ],
        true,
    );
    assert_eq!(ids(&seen.exchanges[0]), ("rt", 5, Some(6), 0));
}

#[test]
fn more_to_come_request_is_one_way() {
    let (c, seen) = run(
        &[
            (Direction::Egress, op_msg(1, 0, 2, 0)),
            (Direction::Egress, op_msg(2, 0, 0, 0)),
            (Direction::Ingress, op_msg(3, 2, 0, 0)),
        ],
        true,
    );
    let got: Vec<_> = seen.exchanges.iter().map(ids).collect();
    assert_eq!(got, vec![("oneway", 1, None, 0), ("rt", 2, Some(3), 0)]);
    assert_eq!(c.stats().pairing.unanswered, 0);
}

#[test]
fn exhaust_stream_hands_the_request_on() {
    let (c, seen) = run(
        &[
            (Direction::Egress, op_msg(10, 0, 1 << 16, 0)),
            (Direction::Ingress, op_msg(100, 10, 2, 0)), // moreToCome
            (Direction::Ingress, op_msg(101, 100, 2, 0)), // answers the previous reply
            (Direction::Ingress, op_msg(102, 101, 0, 0)), // last
            (Direction::Egress, op_msg(11, 0, 0, 0)),
            (Direction::Ingress, op_msg(103, 11, 0, 0)),
        ],
        true,
    );
    let got: Vec<_> = seen.exchanges.iter().map(ids).collect();
    assert_eq!(
        got,
        vec![
            ("rt", 10, Some(100), 0),
            ("rt", 10, Some(101), 1),
            ("rt", 10, Some(102), 2),
            ("rt", 11, Some(103), 0)
        ]
    );
    let reqs: Vec<_> = seen.exchanges[..3]
        .iter()
        .map(|x| match x {
            Exchange::RoundTrip { request, .. } => Arc::as_ptr(request),
            _ => panic!(),
        })
        .collect();
    assert!(
        reqs.iter().all(|p| *p == reqs[0]),
        "the same request, shared"
    );
    let s = c.stats().pairing;
    assert_eq!((s.round_trips, s.exhaust_replies, s.unanswered), (4, 2, 0));
}

#[test]
fn exhaust_open_at_close_is_not_unanswered() {
    let (c, seen) = run(
        &[
            (Direction::Egress, op_msg(10, 0, 1 << 16, 0)),
            (Direction::Ingress, op_msg(100, 10, 2, 0)),
        ],
        true,
    );
    assert_eq!(seen.exchanges.len(), 1);
    assert_eq!(c.stats().pairing.exhaust_open_at_close, 1);
    assert_eq!(c.stats().pairing.unanswered, 0);
}

#[test]
fn orphans_and_unanswered() {
    let (c, seen) = run(
        &[
            (Direction::Ingress, op_msg(50, 49, 0, 0)), // capture started after its request
            (Direction::Egress, op_msg(1, 0, 0, 0)),
        ],
        true,
    );
    let got: Vec<_> = seen.exchanges.iter().map(ids).collect();
    assert_eq!(
        got,
        vec![("orphan", 50, None, 0), ("unanswered", 1, None, 0)]
    );
    let s = c.stats().pairing;
    assert_eq!((s.orphan_replies, s.unanswered_closed), (1, 1));
}

#[test]
fn a_later_answer_gives_up_older_requests() {
    let (c, seen) = run(
        &[
            (Direction::Egress, op_msg(1, 0, 0, 0)), // its reply was lost
            (Direction::Egress, op_msg(2, 0, 0, 0)),
            (Direction::Ingress, op_msg(3, 2, 0, 0)),
        ],
        false,
    );
    let got: Vec<_> = seen.exchanges.iter().map(ids).collect();
    assert_eq!(got, vec![("unanswered", 1, None, 0), ("rt", 2, Some(3), 0)]);
    assert_eq!(c.stats().pairing.unanswered_superseded, 1);
}

#[test]
fn a_reply_lost_in_a_gap_resolves_its_request() {
    let req = op_msg(1, 0, 0, 0);
    let rep = op_msg(2, 1, 0, 300);
    let mut c = Connection::new(ConnConfig::default());
    let mut seen = ConnSeen::default();
    conn_push(&mut c, &mut seen, Direction::Egress, 0, &req, 1);
    conn_push(&mut c, &mut seen, Direction::Ingress, 0, &rep[..40], 2);
    c.gap(Direction::Ingress, 40, 100, 3, &mut |ev| {
        conn_record(&mut seen, ev)
    });
    let got: Vec<_> = seen.exchanges.iter().map(ids).collect();
    assert_eq!(got, vec![("unanswered", 1, None, 0)]);
    assert_eq!(c.stats().pairing.unanswered_reply_lost, 1);
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn undecodable_frames_are_reported_and_counted() {
    let mut bad = op_msg(1, 0, 0, 0);
    bad[16] = 4; // unknown required flag bit
                 // In sync (after a good message), the bad one is framed and fails to decode. (At the
                 // start of a capture it would not even pass the header test used for hunting.)
    let (c, seen) = run(
        &[
            (Direction::Egress, op_msg(7, 0, 2, 0)),
            (Direction::Egress, bad),
        ],
        true,
    );
    assert_eq!(
        seen.frames,
        vec![(Direction::Egress, 7, true), (Direction::Egress, 1, false)]
    );
    assert_eq!(seen.exchanges.len(), 1);
    assert_eq!(c.stats().decode_errors.unknown_required_flags, 1);
}

#[test]
fn outstanding_is_bounded() {
    let mut c = Connection::new(ConnConfig {
        pair: PairConfig { max_outstanding: 4 },
        ..ConnConfig::default()
    });
    let mut seen = ConnSeen::default();
    let mut off = 0;
    for id in 1..=10 {
        let m = op_msg(id, 0, 0, 0);
        conn_push(&mut c, &mut seen, Direction::Egress, off, &m, id as u64);
        off += m.len() as u64;
    }
    assert_eq!(c.outstanding(), 4);
    assert_eq!(c.stats().pairing.unanswered_evicted, 6);
    let first: Vec<_> = seen.exchanges.iter().map(ids).map(|x| x.1).collect();
    assert_eq!(first, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn idle_connections_expire() {
    let mut c = Connection::new(ConnConfig {
        idle_timeout_ns: 1_000,
        ..ConnConfig::default()
    });
    let mut seen = ConnSeen::default();
    let m = op_msg(1, 0, 0, 0);
    conn_push(&mut c, &mut seen, Direction::Egress, 0, &m, 5_000);
    conn_push(
        &mut c,
        &mut seen,
        Direction::Ingress,
        0,
        &op_msg(2, 1, 0, 50)[..20],
        5_000,
    );
    assert!(!c.expire(5_500, &mut |ev| conn_record(&mut seen, ev)));
    assert!(c.expire(6_000, &mut |ev| conn_record(&mut seen, ev)));
    assert!(c.is_closed());
    assert_eq!(c.buffered(), 0);
    let s = c.stats();
    assert_eq!(s.stream.dropped.incomplete, 1);
    assert_eq!(s.pairing.unanswered, 1);
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"unanswered\":1"));
}

// ---------------------------------------------------------------- Memory budget

#[test]
fn a_header_alone_does_not_claim_the_declared_length() {
    // 1 MB declared; 64 KiB arrived.
    let m = op_msg(1, 0, 0, 1 << 20);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &m[..64 << 10], 1);
    assert!(s.held() <= 2 * (64 << 10), "held {}", s.held());
    // Growing to the end in pieces still frames the message once, whole.
    let mut off = 64 << 10;
    for chunk in m[off..].chunks(100_000) {
        stream_push(&mut s, &mut seen, off as u64, chunk, 2);
        off += chunk.len();
    }
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(&seen.frames[0].bytes[..], &m[..]);
}

#[test]
fn shedding_drops_the_partial_message_and_keeps_sync() {
    let big = op_msg(1, 0, 0, 200_000);
    let next = op_msg(2, 0, 0, 10);
    let mut s = new_stream();
    let mut seen = Seen::default();
    stream_push(&mut s, &mut seen, 0, &big[..100_000], 1);
    let freed = s.shed(&mut |ev| record(&mut seen, ev));
    assert!(freed >= 100_000, "freed {freed}");
    assert_eq!(s.held(), 0);
    assert_eq!(seen.dropped, vec![(0, 100_000, DropReason::MemoryBudget)]);
    assert_eq!(s.stats().dropped.memory_budget, 1);
    // The rest of the big message is skipped, not buffered; the next one frames at once.
    stream_push(&mut s, &mut seen, 100_000, &big[100_000..], 2);
    assert_eq!(s.held(), 0);
    stream_push(&mut s, &mut seen, big.len() as u64, &next, 3);
    assert_eq!(seen.frames.len(), 1);
    assert_eq!(&seen.frames[0].bytes[..], &next[..]);
    assert_eq!(s.stats().resyncs, 0, "sync was kept");
}

/// Many connections each half-way through a large reply: the budget keeps the total held
/// under its limit by shedding the largest, each shed reply leaves its request unanswered
/// (counted, never silent), and every connection goes on decoding afterwards.
#[test]
fn the_budget_bounds_many_half_received_replies() {
    const CONNS: usize = 40;
    const LIMIT: usize = 2 << 20;
    let mut budget = MemoryBudget::new(LIMIT);
    let mut conns: Vec<Connection> = (0..CONNS)
        .map(|_| Connection::new(ConnConfig::default()))
        .collect();
    let mut seen = ConnSeen::default();
    let req = op_msg(1, 0, 0, 0);
    let rep = op_msg(2, 1, 0, 400_000);
    for (i, c) in conns.iter_mut().enumerate() {
        let before = c.held();
        conn_push(c, &mut seen, Direction::Egress, 0, &req, i as u64);
        budget.charge(before, c.held());
    }
    let mut peak = 0;
    for i in 0..CONNS {
        let before = conns[i].held();
        conn_push(
            &mut conns[i],
            &mut seen,
            Direction::Ingress,
            0,
            &rep[..200_000],
            100 + i as u64,
        );
        budget.charge(before, conns[i].held());
        while let Some(v) = budget.victim(conns.iter().map(|c| c.held()).enumerate()) {
            let freed = conns[v].shed(&mut |ev| conn_record(&mut seen, ev));
            budget.shed(freed);
        }
        let total: usize = conns.iter().map(|c| c.held()).sum();
        assert_eq!(total, budget.used(), "the budget's account is exact");
        assert!(total <= LIMIT, "{total} held over a {LIMIT} budget");
        peak = peak.max(total);
    }
    assert!(
        peak > LIMIT / 2,
        "the budget was used, not just emptied: {peak}"
    );
    let shed = budget.stats().evictions as usize;
    assert!(shed > 0 && shed < CONNS, "{shed} evictions");
    let dropped: u64 = conns
        .iter()
        .map(|c| c.stats().stream.dropped.memory_budget)
        .sum();
    assert_eq!(dropped as usize, shed);
    let unanswered = seen
        .exchanges
        .iter()
        .filter(|x| matches!(x, Exchange::Unanswered { .. }))
        .count();
    assert_eq!(unanswered, shed, "each shed reply resolves its request");
    // The rest of every reply arrives, then a new round trip: every connection pairs it.
    let req2 = op_msg(3, 0, 0, 0);
    let rep2 = op_msg(4, 3, 0, 10);
    for c in conns.iter_mut() {
        conn_push(
            c,
            &mut seen,
            Direction::Ingress,
            200_000,
            &rep[200_000..],
            500,
        );
        conn_push(
            c,
            &mut seen,
            Direction::Egress,
            req.len() as u64,
            &req2,
            501,
        );
        conn_push(
            c,
            &mut seen,
            Direction::Ingress,
            rep.len() as u64,
            &rep2,
            502,
        );
    }
    let round_trips = |id: i32| {
        seen.exchanges
            .iter()
            .filter(|x| ids(x).0 == "rt" && ids(x).1 == id)
            .count()
    };
    assert_eq!(round_trips(1), CONNS - shed);
    assert_eq!(round_trips(3), CONNS);
}

#[test]
fn the_budget_names_no_victim_within_its_limit() {
    let mut b = MemoryBudget::new(100);
    b.charge(0, 60);
    assert_eq!(b.victim([(1, 60)]), None);
    b.charge(0, 60);
    assert!(b.over());
    assert_eq!(b.victim([(1, 60), (2, 70), (3, 0)]), Some(2));
    assert_eq!(b.victim([(3, 0)]), None::<i32>, "nothing to shed");
    b.shed(70);
    assert_eq!(b.used(), 50);
    b.charge(60, 0);
    assert_eq!(b.used(), 0, "never below zero");
    assert_eq!(b.stats().evictions, 1);
    assert_eq!(b.stats().evicted_bytes, 70);
}
