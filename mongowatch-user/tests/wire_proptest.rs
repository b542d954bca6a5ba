//! Property: random valid messages, serialized back to back, cut into random chunks with
//! random losses (silent offset jumps and explicit gaps), come out of the stream layer as
//! exactly the messages no loss touched, in order, byte for byte, and decode as they went in.

use bson::{doc, Bson, Document, RawDocumentBuf};
use bytes::Bytes;
use mongowatch::{
    stream::{DirectionStream, StreamConfig, StreamEvent},
    wire::*,
};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        any::<f64>().prop_map(Bson::Double),
        any::<bool>().prop_map(Bson::Boolean),
        ".{0,40}".prop_map(Bson::String),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| {
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes,
            })
        }),
    ]
}

fn owned() -> impl Strategy<Value = Document> {
    prop::collection::vec(("[a-zA-Z_$][a-zA-Z0-9_.]{0,10}", value()), 0..6).prop_map(|kv| {
        let mut d = Document::new();
        for (k, v) in kv {
            d.insert(k, v);
        }
        d
    })
}

fn raw(d: &Document) -> Doc {
    Doc::from(RawDocumentBuf::try_from(d).unwrap())
}

fn document() -> impl Strategy<Value = Doc> {
    owned().prop_map(|d| raw(&d))
}

fn command() -> impl Strategy<Value = Doc> {
    ("[a-z]{1,12}", owned()).prop_map(|(name, rest)| {
        let mut d = doc! { name: 1, "$db": "db" };
        d.extend(rest);
        raw(&d)
    })
}

fn namespace() -> impl Strategy<Value = String> {
    "[a-z]{1,8}\\.[a-z$]{1,8}"
}

/// Bodies as real peers send them (which is what the hunting header test expects).
fn body() -> impl Strategy<Value = (Body, bool)> {
    prop_oneof![
        6 => (
            prop::sample::select(vec![0u32, 2, 1 << 16, 1, 3]),
            command(),
            prop::collection::vec(
                ("[a-zA-Z]{1,10}", prop::collection::vec(document(), 0..4)),
                0..3
            )
        )
            .prop_map(|(flags, body, seqs)| (
                Body::Msg(OpMsg {
                    flags,
                    body,
                    sequences: seqs
                        .into_iter()
                        .map(|(identifier, documents)| Sequence {
                            identifier,
                            documents
                        })
                        .collect(),
                    checksum: None,
                }),
                false
            )),
        1 => (0i32..16, any::<i64>(), prop::collection::vec(document(), 0..4)).prop_map(
            |(flags, cursor_id, documents)| (
                Body::Reply(OpReply {
                    flags,
                    cursor_id,
                    starting_from: 0,
                    number_returned: documents.len() as i32,
                    documents
                }),
                true
            )
        ),
        1 => (namespace(), document(), prop::option::of(document())).prop_map(|(ns, q, f)| (
            Body::Query(OpQuery {
                flags: 4,
                full_collection_name: ns,
                number_to_skip: 0,
                number_to_return: -1,
                query: q,
                return_fields_selector: f
            }),
            false
        )),
        1 => (namespace(), any::<i64>()).prop_map(|(ns, c)| (
            Body::GetMore(OpGetMore {
                full_collection_name: ns,
                number_to_return: 10,
                cursor_id: c
            }),
            false
        )),
        1 => prop::collection::vec(any::<i64>(), 1..4)
            .prop_map(|cursor_ids| (Body::KillCursors(OpKillCursors { cursor_ids }), false)),
        1 => (namespace(), prop::collection::vec(document(), 1..3)).prop_map(|(ns, documents)| (
            Body::Insert(OpInsert {
                flags: 0,
                full_collection_name: ns,
                documents
            }),
            false
        )),
        1 => (namespace(), document(), document()).prop_map(|(ns, s, u)| (
            Body::Update(OpUpdate {
                full_collection_name: ns,
                flags: 2,
                selector: s,
                update: u
            }),
            false
        )),
        1 => (namespace(), document()).prop_map(|(ns, s)| (
            Body::Delete(OpDelete {
                full_collection_name: ns,
                flags: 0,
                selector: s
            }),
            false
        )),
    ]
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        body(),
        1..i32::MAX,
        1..i32::MAX,
        prop::option::weighted(0.25, 0u8..4),
    )
        .prop_map(|((body, is_reply), id, to, compress)| {
            let op_code = match &body {
                Body::Msg(_) => OpCode::Msg,
                Body::Reply(_) => OpCode::Reply,
                Body::Query(_) => OpCode::Query,
                Body::GetMore(_) => OpCode::GetMore,
                Body::KillCursors(_) => OpCode::KillCursors,
                Body::Insert(_) => OpCode::Insert,
                Body::Update(_) => OpCode::Update,
                Body::Delete(_) => OpCode::Delete,
            } as i32;
            let m = Message {
                header: Header {
                    length: 0,
                    request_id: id,
                    response_to: if is_reply { to } else { 0 },
                    op_code,
                },
                wire_len: 0,
                compressor: None,
                body,
            };
            match compress.and_then(Compressor::from_u8) {
                Some(c) => encode_compressed(&m, c),
                None => encode(&m),
            }
        })
}

#[derive(Clone, Copy, Debug)]
enum Fate {
    Deliver,
    /// Lost without a word: the next push jumps ahead.
    Silent,
    /// Lost, and the capture path says so.
    Declared,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![16 => Just(Fate::Deliver), 1 => Just(Fate::Silent), 1 => Just(Fate::Declared)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frames_exactly_the_untouched_messages(
        msgs in prop::collection::vec(message(), 1..24),
        cuts in prop::collection::vec((1usize..400, fate()), 1..200),
        start_lost in any::<bool>(),
    ) {
        let stream: Vec<u8> = msgs.concat();
        let mut bounds = vec![];
        let mut at = 0;
        for m in &msgs {
            bounds.push((at, at + m.len()));
            at += m.len();
        }
        // Cut the stream; the last cut size repeats until the end.
        let mut chunks = vec![];
        let mut off = 0;
        let mut i = 0;
        while off < stream.len() {
            let (n, f) = cuts[i.min(cuts.len() - 1)];
            let n = n.min(stream.len() - off);
            // Optionally, capture starts after the first chunk.
            let f = if i == 0 && start_lost { Fate::Silent } else { f };
            chunks.push((off, n, f));
            off += n;
            i += 1;
        }
        let lost: Vec<(usize, usize)> = chunks
            .iter()
            .filter(|c| !matches!(c.2, Fate::Deliver))
            .map(|&(o, n, _)| (o, o + n))
            .collect();
        let expected: Vec<&[u8]> = bounds
            .iter()
            .filter(|&&(s, e)| !lost.iter().any(|&(ls, le)| ls < e && s < le))
            .map(|&(s, e)| &stream[s..e])
            .collect();

        let mut ds = DirectionStream::new(StreamConfig::default());
        let mut got: Vec<Bytes> = vec![];
        let mut on = |ev: StreamEvent| {
            if let StreamEvent::Frame(f) = ev {
                got.push(f.bytes);
            }
        };
        for &(o, n, f) in &chunks {
            match f {
                Fate::Deliver => ds.push(o as u64, &stream[o..o + n], o as u64, &mut on),
                Fate::Silent => {}
                Fate::Declared => ds.gap(o as u64, n as u64, &mut on),
            }
        }
        let got: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
        prop_assert_eq!(got.len(), expected.len());
        prop_assert!(got == expected);
        for frame in &got {
            let a = decode(&Bytes::copy_from_slice(frame));
            prop_assert!(a.is_ok(), "{:?}", a);
        }
        let st = ds.stats();
        prop_assert_eq!(st.messages as usize, expected.len());
        if lost.is_empty() {
            prop_assert_eq!(st.resyncs, 0);
            prop_assert_eq!(st.bytes as usize, stream.len());
        }
    }

    /// Decoding what was encoded gives the same message back.
    #[test]
    fn encode_decode_round_trip(m in message()) {
        let frame = Bytes::from(m.clone());
        let d = decode(&frame);
        prop_assert!(d.is_ok(), "{:?}", d);
        let d = d.unwrap();
        prop_assert_eq!(d.wire_len as usize, m.len());
        if d.compressor.is_none() {
            prop_assert_eq!(encode(&d), m);
        }
    }

    /// Arbitrary bytes never panic the decoder or the framer.
    #[test]
    fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..2000), cut in 1usize..64) {
        let _ = decode(&Bytes::from(data.clone()));
        let mut ds = DirectionStream::new(StreamConfig::default());
        let mut n = 0;
        for (i, c) in data.chunks(cut).enumerate() {
            ds.push((i * cut) as u64, c, 0, &mut |_| n += 1);
        }
        ds.flush(&mut |_| {});
        prop_assert_eq!(ds.buffered(), 0);
    }
}
