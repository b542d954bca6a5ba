//! Throughput of the stream + wire layers over realistic streams, on one core.
//!
//! - `small`: request/reply pairs of small commands (find, insert, update, hello), as
//!   pymongo sends them (request in one write; reply read as header, then body).
//! - `large`: cursor replies of about 4 MB (1 KB documents), read in 64 KiB chunks (Node).
//! - each with and without compression.
//!
//! Throughput is bytes on the wire (and messages, for `small`). Set MONGOWATCH_BENCH_DUMP to a
//! directory to also write each stream as a `.mwrec` recording (see tests/fixtures), e.g. to
//! time tshark on the same bytes with tests/fixtures/mwrec2pcap.py.

use std::hint::black_box;

use bson::{rawdoc, RawArrayBuf, RawDocumentBuf};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mongowatch::{
    capture::events::Direction,
    stream::{ConnConfig, ConnEvent, Connection},
    wire::*,
};

/// One chunk as the capture path would deliver it.
struct Chunk {
    dir: Direction,
    offset: u64,
    data: Vec<u8>,
}

struct Workload {
    chunks: Vec<Chunk>,
    bytes: u64,
    messages: u64,
}

fn op_msg(
    id: i32,
    response_to: i32,
    body: RawDocumentBuf,
    seq: Option<(&str, Vec<Doc>)>,
) -> Message {
    let mut m = Message::op_msg(id, response_to, body.into());
    if let (Body::Msg(msg), Some((identifier, documents))) = (&mut m.body, seq) {
        msg.sequences.push(Sequence {
            identifier: identifier.into(),
            documents,
        });
    }
    m
}

fn wire_bytes(m: &Message, c: Option<Compressor>) -> Vec<u8> {
    match c {
        Some(c) => encode_compressed(m, c),
        None => encode(m),
    }
}

fn cluster_time() -> RawDocumentBuf {
    rawdoc! { "clusterTime": bson::Timestamp { time: 1_700_000_000, increment: 3 }, "signature": { "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0; 20] }, "keyId": 0_i64 } }
}

/// Request/reply pairs of small commands.
fn small(pairs: usize, c: Option<Compressor>) -> Workload {
    let mut w = Workload {
        chunks: vec![],
        bytes: 0,
        messages: 0,
    };
    let (mut eg, mut ing) = (0u64, 0u64);
    for i in 0..pairs {
        let id = (i as i32) * 2 + 1;
        let lsid = rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } };
        let (req, rep) = match i % 4 {
            0 => (
                op_msg(id, 0, rawdoc! { "find": "users", "filter": { "_id": i as i64 }, "limit": 1, "singleBatch": true, "lsid": lsid, "$db": "app" }, None),
                op_msg(id + 1, id, rawdoc! { "cursor": { "firstBatch": [ { "_id": i as i64, "name": "ada", "email": "ada@example.com", "age": 36 } ], "id": 0_i64, "ns": "app.users" }, "ok": 1.0, "$clusterTime": cluster_time(), "operationTime": bson::Timestamp { time: 1_700_000_000, increment: 3 } }, None),
            ),
            1 => (
                op_msg(id, 0, rawdoc! { "insert": "events", "ordered": true, "lsid": lsid, "$db": "app" }, Some(("documents", vec![rawdoc! { "_id": i as i64, "kind": "click", "at": bson::DateTime::from_millis(1_700_000_000_000) }.into()]))),
                op_msg(id + 1, id, rawdoc! { "n": 1, "ok": 1.0 }, None),
            ),
            2 => (
                op_msg(id, 0, rawdoc! { "update": "users", "ordered": true, "lsid": lsid, "$db": "app" }, Some(("updates", vec![rawdoc! { "q": { "_id": i as i64 }, "u": { "$inc": { "visits": 1 } } }.into()]))),
                op_msg(id + 1, id, rawdoc! { "n": 1, "nModified": 1, "ok": 1.0 }, None),
            ),
            _ => (
                op_msg(id, 0, rawdoc! { "hello": 1, "$db": "admin" }, None),
                op_msg(id + 1, id, rawdoc! { "isWritablePrimary": true, "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000, "localTime": bson::DateTime::from_millis(1_700_000_000_000), "minWireVersion": 0, "maxWireVersion": 21, "ok": 1.0 }, None),
            ),
        };
        // Handshake-type commands are never compressed.
        let cc = if i % 4 == 3 { None } else { c };
        let q = wire_bytes(&req, cc);
        let r = wire_bytes(&rep, cc);
        w.bytes += (q.len() + r.len()) as u64;
        w.messages += 2;
        w.chunks.push(Chunk {
            dir: Direction::Egress,
            offset: eg,
            data: q.clone(),
        });
        eg += q.len() as u64;
        // pymongo reads the header, then the body.
        w.chunks.push(Chunk {
            dir: Direction::Ingress,
            offset: ing,
            data: r[..16].to_vec(),
        });
        w.chunks.push(Chunk {
            dir: Direction::Ingress,
            offset: ing + 16,
            data: r[16..].to_vec(),
        });
        ing += r.len() as u64;
    }
    w
}

/// getMore round trips whose replies are ~4 MB batches of 1 KB documents, read in 64 KiB.
fn large(replies: usize, c: Option<Compressor>) -> Workload {
    let mut w = Workload {
        chunks: vec![],
        bytes: 0,
        messages: 0,
    };
    let mut batch = RawArrayBuf::new();
    for i in 0..4000 {
        batch.push(rawdoc! { "_id": i as i64, "name": format!("user{i}"), "payload": "x".repeat(960), "n": i });
    }
    let (mut eg, mut ing) = (0u64, 0u64);
    for k in 0..replies {
        let id = (k as i32) * 2 + 1;
        let req = op_msg(
            id,
            0,
            rawdoc! { "getMore": 42_i64, "collection": "big", "batchSize": 4000, "$db": "app" },
            None,
        );
        let rep = op_msg(
            id + 1,
            id,
            rawdoc! { "cursor": { "nextBatch": batch.clone(), "id": 42_i64, "ns": "app.big" }, "ok": 1.0 },
            None,
        );
        let q = wire_bytes(&req, c);
        let r = wire_bytes(&rep, c);
        w.bytes += (q.len() + r.len()) as u64;
        w.messages += 2;
        w.chunks.push(Chunk {
            dir: Direction::Egress,
            offset: eg,
            data: q.clone(),
        });
        eg += q.len() as u64;
        for piece in r.chunks(64 * 1024) {
            w.chunks.push(Chunk {
                dir: Direction::Ingress,
                offset: ing,
                data: piece.to_vec(),
            });
            ing += piece.len() as u64;
        }
    }
    w
}

/// Frames, decodes and pairs the whole workload; returns what came out (so nothing is
/// optimized away).
fn run(w: &Workload) -> (u64, u64) {
    let mut conn = Connection::new(ConnConfig::default());
    let (mut frames, mut pairs) = (0u64, 0u64);
    let mut on = |ev: ConnEvent<'_>| match ev {
        ConnEvent::Frame { message, .. } => {
            black_box(&message);
            frames += 1;
        }
        ConnEvent::Exchange(x) => {
            black_box(&x);
            pairs += 1;
        }
        _ => {}
    };
    for (i, c) in w.chunks.iter().enumerate() {
        conn.push(c.dir, c.offset, &c.data, i as u64, &mut on);
    }
    conn.close(u64::MAX, &mut on);
    (frames, pairs)
}

fn dump(name: &str, w: &Workload) {
    let Ok(dir) = std::env::var("MONGOWATCH_BENCH_DUMP") else {
        return;
    };
    let mut out = b"MWREC1\n".to_vec();
    for (i, c) in w.chunks.iter().enumerate() {
        out.push(0);
        out.push(if c.dir == Direction::Egress { 0 } else { 1 });
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(1_700_000_000_000_000_000u64 + i as u64 * 1000).to_le_bytes());
        out.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&c.data);
    }
    let _ = std::fs::write(format!("{dir}/{name}.mwrec"), out);
}

fn bench(cr: &mut Criterion) {
    let cases: Vec<(&str, Workload)> = vec![
        ("small/plain", small(20_000, None)),
        ("small/snappy", small(20_000, Some(Compressor::Snappy))),
        ("small/zstd", small(20_000, Some(Compressor::Zstd))),
        ("small/zlib", small(20_000, Some(Compressor::Zlib))),
        ("large/plain", large(16, None)),
        ("large/snappy", large(16, Some(Compressor::Snappy))),
        ("large/zstd", large(16, Some(Compressor::Zstd))),
        ("large/zlib", large(4, Some(Compressor::Zlib))),
    ];
    for (name, w) in &cases {
        dump(&name.replace('/', "_"), w);
        let (frames, pairs) = run(w);
        assert_eq!(frames, w.messages, "{name}: every message framed");
        assert_eq!(pairs * 2, w.messages, "{name}: every request paired");
        let mut g = cr.benchmark_group(*name);
        g.sample_size(10);
        g.throughput(Throughput::Bytes(w.bytes));
        g.bench_function("bytes", |b| b.iter(|| run(black_box(w))));
        if name.starts_with("small") {
            g.throughput(Throughput::Elements(w.messages));
            g.bench_function("messages", |b| b.iter(|| run(black_box(w))));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
