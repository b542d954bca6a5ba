//! Replays sessions recorded from real drivers against a real server (see
//! tests/fixtures/README.md) through the stream and wire layers.

mod mwrec;

use std::collections::BTreeMap;

use mongowatch::{
    capture::events::Direction,
    stream::{ConnConfig, ConnEvent, Connection},
    wire::{Body, Compressor, Exchange, WireStats},
};
use mwrec::{read_mwrec, Streams};

#[derive(Default, Debug)]
struct Summary {
    stats: WireStats,
    /// Opcode names seen (after decompression), by direction from the client's view.
    opcodes: BTreeMap<(&'static str, &'static str), u64>,
    compressors: BTreeMap<&'static str, u64>,
    sequence_ids: BTreeMap<String, u64>,
    commands: BTreeMap<String, u64>,
    /// Every frame's bytes, in order per (conn, dir): for rechunking comparisons.
    frames: Vec<(u16, bool, Vec<u8>)>,
    round_trips: u64,
    one_way: u64,
    exhaust_max: u32,
    other: Vec<String>,
}

/// Replays with the client as the watched process (`server_role = false`) or the server.
/// `rechunk`: re-cut each chunk into pieces of this size (0 = as recorded).
fn replay(name: &str, server_role: bool, rechunk: usize) -> Summary {
    let mut streams = Streams::default();
    let mut s = Summary::default();
    let mut last_ts = 0;
    for ch in &read_mwrec(name) {
        last_ts = ch.ts_ns;
        let conn_id = ch.conn;
        streams.feed(ch, server_role, rechunk, &mut |ev| {
            record(&mut s, conn_id, ev)
        });
    }
    for (id, (c, _, _)) in streams.conns.iter_mut() {
        c.close(last_ts, &mut |ev| record(&mut s, *id, ev));
        s.stats.add(&c.stats());
    }
    s
}

fn record(s: &mut Summary, conn: u16, ev: ConnEvent<'_>) {
    match ev {
        ConnEvent::Frame {
            dir,
            frame,
            message,
        } => {
            s.frames
                .push((conn, dir == Direction::Egress, frame.bytes.to_vec()));
            let Ok(t) = message else {
                s.other.push(format!("decode error: {message:?}"));
                return;
            };
            let op = mongowatch::wire::OpCode::from_i32(t.msg.header.op_code)
                .map(|o| o.name())
                .unwrap_or("?");
            let d = if t.msg.is_reply() { "reply" } else { "request" };
            *s.opcodes.entry((op, d)).or_default() += 1;
            if let Some(c) = t.msg.compressor {
                *s.compressors.entry(c.name()).or_default() += 1;
            }
            if let Body::Query(q) = &t.msg.body {
                if let Some(Ok((k, _))) = q.query.raw().iter().next() {
                    *s.commands.entry(k.to_string()).or_default() += 1;
                }
            }
            if let Body::Msg(m) = &t.msg.body {
                for q in &m.sequences {
                    *s.sequence_ids.entry(q.identifier.clone()).or_default() += 1;
                }
                if !t.msg.is_reply() {
                    if let Some(Ok((k, _))) = m.body.raw().iter().next() {
                        *s.commands.entry(k.to_string()).or_default() += 1;
                    }
                }
            }
        }
        ConnEvent::Exchange(x) => match x {
            Exchange::RoundTrip { exhaust_index, .. } => {
                s.round_trips += 1;
                s.exhaust_max = s.exhaust_max.max(exhaust_index);
            }
            Exchange::OneWay { .. } => s.one_way += 1,
            other => s.other.push(short(&other)),
        },
        other => s
            .other
            .push(format!("{other:?}").chars().take(300).collect()),
    }
}

fn short(x: &Exchange) -> String {
    let (what, t) = match x {
        Exchange::RoundTrip { reply, .. } => ("round trip", reply),
        Exchange::OneWay { request } => ("one way", request),
        Exchange::Unanswered { request } => ("unanswered", request),
        Exchange::OrphanReply { reply } => ("orphan", reply),
    };
    format!(
        "{what}: {:?} flags/body {:.200}",
        t.msg.header,
        format!("{:?}", t.msg.body)
    )
}

/// What every clean recording must satisfy.
fn assert_clean(name: &str, s: &Summary) {
    let st = &s.stats;
    assert!(
        s.other.is_empty(),
        "{name}: unexpected events: {:#?}",
        s.other
    );
    assert_eq!(st.decode_errors.total(), 0, "{name}");
    assert_eq!(st.stream.gaps, 0, "{name}");
    assert_eq!(st.stream.resyncs, 0, "{name}");
    assert_eq!(st.stream.dropped.total(), 0, "{name}");
    assert_eq!(st.pairing.orphan_replies, 0, "{name}");
    assert_eq!(st.pairing.unanswered, 0, "{name}");
    assert_eq!(st.stream.messages, st.decoded, "{name}");
    assert_eq!(
        st.stream.bytes, st.stream.bytes_in,
        "{name}: every byte framed"
    );
    assert_eq!(
        st.pairing.requests,
        st.pairing.round_trips - st.pairing.exhaust_replies + st.pairing.one_way,
        "{name}: every request paired"
    );
    assert!(
        ["hello", "isMaster", "ismaster"]
            .iter()
            .any(|k| s.commands.contains_key(*k)),
        "{name}: {:?}",
        s.commands
    );
}

const ALL: &[&str] = &[
    "pymongo_plain.mwrec",
    "pymongo_zlib.mwrec",
    "pymongo_zstd.mwrec",
    "pymongo_snappy.mwrec",
    "node_plain.mwrec",
    "node_zlib.mwrec",
    "node_snappy.mwrec",
    "mongosh_zlib.mwrec",
];

#[test]
fn every_recording_decodes_and_pairs_cleanly_in_both_roles() {
    for name in ALL {
        let client = replay(name, false, 0);
        assert_clean(name, &client);
        let server = replay(name, true, 0);
        assert_clean(name, &server);
        assert_eq!(client.round_trips, server.round_trips, "{name}");
        assert_eq!(client.one_way, server.one_way, "{name}");
        eprintln!(
            "{name}: {} msgs, {} bytes, {} round trips, {} one-way, exhaust max {}, \
             compressed {:?}, sequences {:?}, ops {:?}",
            client.stats.stream.messages,
            client.stats.stream.bytes,
            client.round_trips,
            client.one_way,
            client.exhaust_max,
            client.compressors,
            client.sequence_ids,
            client.opcodes
        );
    }
}

#[test]
fn rechunking_changes_nothing() {
    for name in ALL {
        let base = replay(name, false, 0);
        for n in [1, 4, 16, 17, 1000] {
            let r = replay(name, false, n);
            assert_clean(name, &r);
            assert_eq!(r.frames, base.frames, "{name} in {n}-byte pieces");
            assert_eq!(r.round_trips, base.round_trips);
        }
    }
}

#[test]
fn pymongo_covers_what_it_should() {
    let s = replay("pymongo_plain.mwrec", false, 0);
    assert!(
        s.sequence_ids.contains_key("documents"),
        "{:?}",
        s.sequence_ids
    );
    assert!(s.one_way >= 1, "the w:0 insert is moreToCome");
    assert!(s.commands.contains_key("getMore"));
    assert!(s.exhaust_max >= 1, "exhaust getMore or streaming hello");
    for (name, c) in [
        ("pymongo_zlib.mwrec", Compressor::Zlib),
        ("pymongo_zstd.mwrec", Compressor::Zstd),
        ("pymongo_snappy.mwrec", Compressor::Snappy),
    ] {
        assert_compressed_with(name, &replay(name, false, 0), c, 10);
    }
}

/// Every compressed message of the recording used `c`, and there were more than `min`.
fn assert_compressed_with(name: &str, s: &Summary, c: Compressor, min: u64) {
    let used: Vec<&str> = s.compressors.keys().copied().collect();
    assert_eq!(used, [c.name()], "{name}: {:?}", s.compressors);
    assert!(s.compressors[c.name()] > min, "{name}: {:?}", s.compressors);
}

#[test]
fn node_and_mongosh_cover_what_they_should() {
    let s = replay("node_plain.mwrec", false, 0);
    assert!(
        s.opcodes.contains_key(&("OP_QUERY", "request")),
        "{:?}",
        s.opcodes
    );
    assert!(s.opcodes.contains_key(&("OP_REPLY", "reply")));
    assert!(s.one_way >= 1);
    for (name, c) in [
        ("node_zlib.mwrec", Compressor::Zlib),
        ("node_snappy.mwrec", Compressor::Snappy),
        ("mongosh_zlib.mwrec", Compressor::Zlib),
    ] {
        assert_compressed_with(name, &replay(name, false, 0), c, 5);
    }
}

#[test]
fn a_replay_cut_by_gaps_recovers() {
    // Drop every 7th recorded chunk (as a lost event would): nothing panics, messages after
    // each loss come back, and the losses are counted.
    for name in ALL {
        let chunks = read_mwrec(name);
        let mut conns: BTreeMap<u16, (Connection, u64, u64)> = BTreeMap::new();
        let mut frames = 0u64;
        for (i, ch) in chunks.iter().enumerate() {
            if ch.closed {
                continue;
            }
            let e = conns
                .entry(ch.conn)
                .or_insert_with(|| (Connection::new(ConnConfig::default()), 0, 0));
            let dir = if ch.client_to_server {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let off = if ch.client_to_server {
                &mut e.1
            } else {
                &mut e.2
            };
            if i % 7 != 3 {
                e.0.push(dir, *off, &ch.data, ch.ts_ns, &mut |ev| {
                    if matches!(ev, ConnEvent::Frame { .. }) {
                        frames += 1
                    }
                });
            }
            *off += ch.data.len() as u64;
        }
        let mut total = WireStats::default();
        for (c, _, _) in conns.values_mut() {
            c.close(0, &mut |_| {});
            total.add(&c.stats());
        }
        assert!(total.stream.gaps > 0, "{name}");
        assert!(
            frames > 0 && total.decoded > total.stream.gaps,
            "{name}: {total:?}"
        );
        eprintln!(
            "{name} with gaps: {} frames, {} gaps, {} resyncs, {} dropped, {} decode errors, {} orphans, {} unanswered",
            total.stream.messages,
            total.stream.gaps,
            total.stream.resyncs,
            total.stream.dropped.total(),
            total.decode_errors.total(),
            total.pairing.orphan_replies,
            total.pairing.unanswered
        );
    }
}
