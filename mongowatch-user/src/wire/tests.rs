//! Decoder tests on byte fixtures written out field by field.

use bson::rawdoc;
use bytes::Bytes;

use super::*;

/// Hex with `//` comments and any whitespace.
pub(crate) fn hex(s: &str) -> Bytes {
    let digits: String = s
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| c.is_ascii_hexdigit()))
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd hex digit count");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

/// `{ping: 1, $db: "admin"}`, 30 bytes.
const PING_DOC: &str = "
    1e 00 00 00                     // document length 30
    10 70 69 6e 67 00 01 00 00 00   // int32 'ping' = 1
    02 24 64 62 00                  // string '$db'
    06 00 00 00 61 64 6d 69 6e 00   //   length 6, 'admin\\0'
    00                              // end of document
";

/// `{ok: 1.0}`, 17 bytes.
const OK_DOC: &str = "
    11 00 00 00                     // document length 17
    01 6f 6b 00                     // double 'ok'
    00 00 00 00 00 00 f0 3f         //   1.0
    00                              // end of document
";

fn ping_msg() -> Bytes {
    hex(&format!(
        "
        33 00 00 00   // messageLength 51
        01 00 00 00   // requestID 1
        00 00 00 00   // responseTo 0: a request
        dd 07 00 00   // opCode 2013 OP_MSG
        00 00 00 00   // flagBits: none
        00            // section kind 0 (body)
        {PING_DOC}
    "
    ))
}

fn msg_of(m: &Message) -> &OpMsg {
    match &m.body {
        Body::Msg(m) => m,
        b => panic!("not OP_MSG: {b:?}"),
    }
}

#[test]
fn op_msg_plain() {
    let frame = ping_msg();
    let m = decode(&frame).unwrap();
    assert_eq!(
        m.header,
        Header {
            length: 51,
            request_id: 1,
            response_to: 0,
            op_code: 2013
        }
    );
    assert_eq!(m.wire_len, 51);
    assert_eq!(m.compressor, None);
    assert!(!m.is_reply());
    let b = msg_of(&m);
    assert_eq!(b.flags, 0);
    assert_eq!(b.body.raw().get_i32("ping").unwrap(), 1);
    assert_eq!(b.body.raw().get_str("$db").unwrap(), "admin");
    assert!(b.sequences.is_empty());
    assert_eq!(b.checksum, None);
    // The document is a slice of the frame, not a copy.
    assert_eq!(b.body.bytes().as_ptr(), frame[21..].as_ptr());
    // And encoding gives the same bytes back.
    assert_eq!(encode(&m), frame.to_vec());
}

#[test]
fn op_msg_reply() {
    let frame = hex(&format!(
        "
        26 00 00 00   // messageLength 38
        02 00 00 00   // requestID 2
        01 00 00 00   // responseTo 1: a reply
        dd 07 00 00   // OP_MSG
        00 00 00 00   // flagBits
        00            // kind 0
        {OK_DOC}
    "
    ));
    let m = decode(&frame).unwrap();
    assert!(m.is_reply());
    assert_eq!(msg_of(&m).body.raw().get_f64("ok").unwrap(), 1.0);
}

const CHECKSUMMED: &str = "
    37 00 00 00   // messageLength 55 (51 + 4 checksum bytes)
    01 00 00 00   // requestID 1
    00 00 00 00   // responseTo 0
    dd 07 00 00   // OP_MSG
    01 00 00 00   // flagBits: checksumPresent
    00            // kind 0
";

#[test]
fn op_msg_checksum_good() {
    let frame = hex(&format!(
        "{CHECKSUMMED} {PING_DOC}
        32 7e 69 a8   // CRC-32C of the 51 bytes above"
    ));
    let m = decode(&frame).unwrap();
    let b = msg_of(&m);
    assert_eq!(b.checksum, Some(0xa8697e32));
    assert_eq!(b.body.raw().get_i32("ping").unwrap(), 1);
    assert_eq!(encode(&m), frame.to_vec());
}

#[test]
fn op_msg_checksum_bad() {
    let frame = hex(&format!(
        "{CHECKSUMMED} {PING_DOC}
        32 7e 69 a9   // one bit off"
    ));
    assert_eq!(
        decode(&frame),
        Err(DecodeError::ChecksumMismatch {
            wire: 0xa9697e32,
            computed: 0xa8697e32
        })
    );
}

#[test]
fn op_msg_checksum_missing() {
    // checksumPresent, but the message ends right after a header and flags.
    let frame = hex("
        1a 00 00 00  01 00 00 00  00 00 00 00  dd 07 00 00   // length 26, OP_MSG
        01 00 00 00                                          // checksumPresent
        05 00 00 00 00 00                                    // 6 bytes of nothing useful
    ");
    assert!(decode(&frame).is_err());
}

fn with_flags(flags: &str) -> Bytes {
    hex(&format!(
        "
        33 00 00 00  01 00 00 00  00 00 00 00  dd 07 00 00   // length 51, id 1, request, OP_MSG
        {flags}                                              // flagBits
        00 {PING_DOC}                                        // kind 0
    "
    ))
}

#[test]
fn op_msg_more_to_come() {
    let m = decode(&with_flags("02 00 00 00 // moreToCome")).unwrap();
    assert!(msg_of(&m).more_to_come());
    assert!(!msg_of(&m).exhaust_allowed());
}

#[test]
fn op_msg_exhaust_allowed() {
    let m = decode(&with_flags("00 00 01 00 // exhaustAllowed (bit 16)")).unwrap();
    assert!(msg_of(&m).exhaust_allowed());
}

#[test]
fn op_msg_unknown_required_bit_is_an_error() {
    assert_eq!(
        decode(&with_flags(
            "04 00 00 00 // bit 2: unknown, among the required low 16"
        )),
        Err(DecodeError::UnknownRequiredFlags(4))
    );
    assert_eq!(
        decode(&with_flags("00 80 00 00 // bit 15")),
        Err(DecodeError::UnknownRequiredFlags(0x8000))
    );
}

#[test]
fn op_msg_unknown_high_bit_is_ignored() {
    let m = decode(&with_flags(
        "00 00 10 80 // bits 20 and 31: optional, ignored",
    ))
    .unwrap();
    assert_eq!(msg_of(&m).flags, 0x8010_0000);
}

/// `{insert: "c", $db: "t"}`, 30 bytes.
const INSERT_DOC: &str = "
    1e 00 00 00                           // document length 30
    02 69 6e 73 65 72 74 00               // string 'insert'
    02 00 00 00 63 00                     //   'c'
    02 24 64 62 00                        // string '$db'
    02 00 00 00 74 00                     //   't'
    00
";

/// Kind 1 'documents' with `{_id: 1}`: 29 bytes.
const DOCUMENTS_SEQ: &str = "
    01                                    // section kind 1 (document sequence)
    1c 00 00 00                           // size 28 (includes itself)
    64 6f 63 75 6d 65 6e 74 73 00         // identifier 'documents'
    0e 00 00 00                           // document length 14
    10 5f 69 64 00 01 00 00 00            //   int32 '_id' = 1
    00
";

#[test]
fn op_msg_kind1_before_kind0() {
    let frame = hex(&format!(
        "
        50 00 00 00  07 00 00 00  00 00 00 00  dd 07 00 00   // length 80, id 7, OP_MSG
        00 00 00 00                                          // flagBits
        {DOCUMENTS_SEQ}
        00 {INSERT_DOC}                                      // kind 0 comes second
    "
    ));
    let m = decode(&frame).unwrap();
    let b = msg_of(&m);
    assert_eq!(b.body.raw().get_str("insert").unwrap(), "c");
    assert_eq!(b.sequences.len(), 1);
    assert_eq!(b.sequences[0].identifier, "documents");
    assert_eq!(b.sequences[0].documents.len(), 1);
    assert_eq!(b.sequences[0].documents[0].raw().get_i32("_id").unwrap(), 1);
}

#[test]
fn op_msg_any_identifier_and_several_sequences() {
    // bulkWrite: 'ops' and 'nsInfo', each a sequence, after the body.
    let ops = rawdoc! { "insert": 0, "document": { "x": 1 } };
    let ns = rawdoc! { "ns": "db.c" };
    let m = Message {
        header: Header {
            length: 0,
            request_id: 9,
            response_to: 0,
            op_code: OpCode::Msg as i32,
        },
        wire_len: 0,
        compressor: None,
        body: Body::Msg(OpMsg {
            flags: 0,
            body: rawdoc! { "bulkWrite": 1, "$db": "admin" }.into(),
            sequences: vec![
                Sequence {
                    identifier: "ops".into(),
                    documents: vec![ops.clone().into(), ops.into()],
                },
                Sequence {
                    identifier: "nsInfo".into(),
                    documents: vec![ns.into()],
                },
            ],
            checksum: None,
        }),
    };
    let frame = Bytes::from(encode(&m));
    let d = decode(&frame).unwrap();
    let b = msg_of(&d);
    assert_eq!(b.sequences[0].identifier, "ops");
    assert_eq!(b.sequences[0].documents.len(), 2);
    assert_eq!(b.sequences[1].identifier, "nsInfo");
    assert_eq!(d.body, m.body);
}

#[test]
fn op_msg_two_bodies_is_an_error() {
    let frame = hex(&format!(
        "
        52 00 00 00  01 00 00 00  00 00 00 00  dd 07 00 00   // length 82, OP_MSG
        00 00 00 00                                          // flagBits
        00 {PING_DOC}                                        // kind 0
        00 {PING_DOC}                                        // kind 0 again
    "
    ));
    assert_eq!(decode(&frame), Err(DecodeError::DuplicateBody));
}

#[test]
fn op_msg_no_body_is_an_error() {
    let frame = hex(&format!(
        "
        31 00 00 00  01 00 00 00  00 00 00 00  dd 07 00 00   // length 49, OP_MSG
        00 00 00 00                                          // flagBits
        {DOCUMENTS_SEQ}                                      // a sequence, no kind 0
    "
    ));
    assert_eq!(decode(&frame), Err(DecodeError::MissingBody));
}

#[test]
fn op_msg_unknown_section_kind() {
    let frame = hex(&format!(
        "
        33 00 00 00  01 00 00 00  00 00 00 00  dd 07 00 00   // length 51, OP_MSG
        00 00 00 00                                          // flagBits
        02 {PING_DOC}                                        // kind 2: no such kind
    "
    ));
    assert_eq!(decode(&frame), Err(DecodeError::UnknownSectionKind(2)));
}

#[test]
fn op_msg_sequence_size_lies() {
    for (size, why) in [
        (
            "1d 00 00 00",
            "one byte past the section: runs into the next",
        ),
        ("ff 00 00 00", "past the message"),
        ("04 00 00 00", "no room for the identifier"),
        ("fc ff ff ff", "negative"),
    ] {
        let frame = hex(&format!(
            "
            50 00 00 00  07 00 00 00  00 00 00 00  dd 07 00 00
            00 00 00 00
            01 {size}                                  // size: {why}
            64 6f 63 75 6d 65 6e 74 73 00
            0e 00 00 00 10 5f 69 64 00 01 00 00 00 00
            00 {INSERT_DOC}
        "
        ));
        assert!(decode(&frame).is_err(), "{why}");
    }
}

#[test]
fn op_msg_truncated_and_bad_lengths() {
    let frame = ping_msg();
    // Every prefix is an error (the length field disagrees, or a field is cut).
    for n in 0..frame.len() {
        assert!(decode(&frame.slice(..n)).is_err(), "prefix {n}");
    }
    // Length field one more than the frame.
    let mut v = frame.to_vec();
    v[0] = 0x34;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(DecodeError::BadLength { length: 52, .. })
    ));
    // Document length one too many: runs past the message.
    let mut v = frame.to_vec();
    v[21] = 0x1f;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(DecodeError::BadBson { .. })
    ));
    // Document without its trailing NUL.
    let mut v = frame.to_vec();
    v[50] = 1;
    assert!(matches!(
        decode(&Bytes::from(v)),
        Err(DecodeError::BadBson { .. })
    ));
}

#[test]
fn unknown_opcode() {
    let frame = hex("
        14 00 00 00  01 00 00 00  00 00 00 00  d4 07 00 00   // length 20, opCode 2004... no:
        00 00 00 00
    ");
    // 2004 is OP_QUERY, too short for one.
    assert!(matches!(decode(&frame), Err(DecodeError::BadLength { .. })));
    let frame = hex("
        14 00 00 00  01 00 00 00  00 00 00 00  e8 03 00 00   // opCode 1000: unknown
        00 00 00 00
    ");
    assert_eq!(decode(&frame), Err(DecodeError::UnknownOpCode(1000)));
}

// ---------------------------------------------------------------- legacy opcodes

/// `{isMaster: 1}`, 19 bytes.
const IS_MASTER_DOC: &str = "
    13 00 00 00                                    // document length 19
    10 69 73 4d 61 73 74 65 72 00 01 00 00 00      // int32 'isMaster' = 1
    00
";

#[test]
fn op_query_handshake() {
    let frame = hex(&format!(
        "
        3a 00 00 00                          // messageLength 58
        05 00 00 00                          // requestID 5
        00 00 00 00                          // responseTo 0
        d4 07 00 00                          // opCode 2004 OP_QUERY
        04 00 00 00                          // flags: SlaveOk (bit 2)
        61 64 6d 69 6e 2e 24 63 6d 64 00     // fullCollectionName 'admin.$cmd'
        00 00 00 00                          // numberToSkip 0
        ff ff ff ff                          // numberToReturn -1
        {IS_MASTER_DOC}                      // query
    "
    ));
    let m = decode(&frame).unwrap();
    let Body::Query(q) = &m.body else {
        panic!("{m:?}")
    };
    assert_eq!(q.flags, 4);
    assert_eq!(q.full_collection_name, "admin.$cmd");
    assert_eq!(q.number_to_skip, 0);
    assert_eq!(q.number_to_return, -1);
    assert_eq!(q.query.raw().get_i32("isMaster").unwrap(), 1);
    assert_eq!(q.return_fields_selector, None);
    assert_eq!(encode(&m), frame.to_vec());
}

#[test]
fn op_query_with_selector_and_trailing_junk() {
    let frame = hex(&format!(
        "
        46 00 00 00  05 00 00 00  00 00 00 00  d4 07 00 00   // length 70, OP_QUERY
        00 00 00 00                                          // flags
        61 2e 62 00                                          // 'a.b'
        00 00 00 00  01 00 00 00                             // skip 0, return 1
        {IS_MASTER_DOC}                                      // query
        05 00 00 00 00                                       // returnFieldsSelector {{}}
        00 00 00 00 00 00 00 00 00 00 00 00 00 00            // (padding to fill the length)
    "
    ));
    // 14 bytes after the selector do not form a document.
    assert!(decode(&frame).is_err());
    let ok = hex(&format!(
        "
        38 00 00 00  05 00 00 00  00 00 00 00  d4 07 00 00   // length 56, OP_QUERY
        00 00 00 00  61 2e 62 00  00 00 00 00  01 00 00 00
        {IS_MASTER_DOC}
        05 00 00 00 00                                       // returnFieldsSelector {{}}
    "
    ));
    let m = decode(&ok).unwrap();
    let Body::Query(q) = &m.body else { panic!() };
    assert!(q
        .return_fields_selector
        .as_ref()
        .is_some_and(|d| d.is_empty()));
}

#[test]
fn op_query_bad_cstring() {
    let frame = hex(&format!(
        "
        34 00 00 00  05 00 00 00  00 00 00 00  d4 07 00 00   // length 52
        00 00 00 00
        ff fe 2e 62 00                                       // not UTF-8
        00 00 00 00  01 00 00 00
        {IS_MASTER_DOC}
    "
    ));
    assert_eq!(
        decode(&frame),
        Err(DecodeError::BadCString("fullCollectionName"))
    );
}

#[test]
fn op_reply_flags_are_bits() {
    let frame = hex(&format!(
        "
        35 00 00 00                 // messageLength 53
        06 00 00 00                 // requestID 6
        05 00 00 00                 // responseTo 5
        01 00 00 00                 // opCode 1 OP_REPLY
        0a 00 00 00                 // responseFlags: QueryFailure | AwaitCapable (bits 1, 3)
        00 00 00 00 00 00 00 00     // cursorID 0
        00 00 00 00                 // startingFrom 0
        01 00 00 00                 // numberReturned 1
        {OK_DOC}
    "
    ));
    let m = decode(&frame).unwrap();
    assert!(m.is_reply());
    let Body::Reply(r) = &m.body else { panic!() };
    assert_eq!(
        r.flags & reply_flags::QUERY_FAILURE,
        reply_flags::QUERY_FAILURE
    );
    assert_eq!(
        r.flags & reply_flags::AWAIT_CAPABLE,
        reply_flags::AWAIT_CAPABLE
    );
    assert_eq!(r.flags & reply_flags::CURSOR_NOT_FOUND, 0);
    assert_eq!(r.flags & reply_flags::SHARD_CONFIG_STALE, 0);
    assert_eq!(r.documents.len(), 1);
    assert_eq!(encode(&m), frame.to_vec());
}

#[test]
fn op_reply_count_mismatch() {
    let frame = hex(&format!(
        "
        35 00 00 00  06 00 00 00  05 00 00 00  01 00 00 00   // OP_REPLY, length 53
        00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 00
        02 00 00 00                                          // numberReturned 2, one present
        {OK_DOC}
    "
    ));
    assert!(matches!(
        decode(&frame),
        Err(DecodeError::CountMismatch {
            declared: 2,
            actual: 1,
            ..
        })
    ));
}

#[test]
fn op_get_more() {
    let frame = hex("
        28 00 00 00  08 00 00 00  00 00 00 00  d5 07 00 00   // length 40, id 8, OP_GET_MORE 2005
        00 00 00 00                                          // ZERO
        64 62 2e 63 00                                       // fullCollectionName 'db.c'
        02 00 00 00                                          // numberToReturn 2
        2a 00 00 00 00 00 00 00                              // cursorID 42
        01 02 03                                             // 3 bytes too many
    ");
    assert_eq!(decode(&frame), Err(DecodeError::TrailingBytes(3)));
    let frame = hex("
        25 00 00 00  08 00 00 00  00 00 00 00  d5 07 00 00   // length 37
        00 00 00 00  64 62 2e 63 00  02 00 00 00
        2a 00 00 00 00 00 00 00
    ");
    let m = decode(&frame).unwrap();
    assert_eq!(
        m.body,
        Body::GetMore(OpGetMore {
            full_collection_name: "db.c".into(),
            number_to_return: 2,
            cursor_id: 42
        })
    );
    assert_eq!(encode(&m), frame.to_vec());
}

#[test]
fn op_kill_cursors() {
    let frame = hex("
        28 00 00 00  09 00 00 00  00 00 00 00  d7 07 00 00   // length 40, OP_KILL_CURSORS 2007
        00 00 00 00                                          // ZERO
        02 00 00 00                                          // numberOfCursorIDs 2
        2a 00 00 00 00 00 00 00                              // 42
        ff ff ff ff ff ff ff 7f                              // i64::MAX
    ");
    let m = decode(&frame).unwrap();
    assert_eq!(
        m.body,
        Body::KillCursors(OpKillCursors {
            cursor_ids: vec![42, i64::MAX]
        })
    );
    let mut bad = frame.to_vec();
    bad[20] = 3; // says 3, holds 2
    assert!(matches!(
        decode(&Bytes::from(bad)),
        Err(DecodeError::CountMismatch {
            declared: 3,
            actual: 2,
            ..
        })
    ));
}

#[test]
fn op_insert() {
    let frame = hex("
        2c 00 00 00  0a 00 00 00  00 00 00 00  d2 07 00 00   // length 44, OP_INSERT 2002
        01 00 00 00                                          // flags: ContinueOnError
        64 62 2e 63 00                                       // 'db.c'
        0e 00 00 00 10 5f 69 64 00 01 00 00 00 00            // {_id: 1}
        05 00 00 00 00                                       // {}
    ");
    let m = decode(&frame).unwrap();
    let Body::Insert(i) = &m.body else { panic!() };
    assert_eq!(i.flags, 1);
    assert_eq!(i.full_collection_name, "db.c");
    assert_eq!(i.documents.len(), 2);
    assert_eq!(encode(&m), frame.to_vec());
}

#[test]
fn op_update_and_delete() {
    let upd = hex("
        37 00 00 00  0b 00 00 00  00 00 00 00  d1 07 00 00   // length 55, OP_UPDATE 2001
        00 00 00 00                                          // ZERO
        64 62 2e 63 00                                       // 'db.c'
        02 00 00 00                                          // flags: MultiUpdate
        0e 00 00 00 10 5f 69 64 00 01 00 00 00 00            // selector {_id: 1}
        0c 00 00 00 10 78 00 02 00 00 00 00                  // update {x: 2}
    ");
    let m = decode(&upd).unwrap();
    let Body::Update(u) = &m.body else { panic!() };
    assert_eq!((u.flags, u.full_collection_name.as_str()), (2, "db.c"));
    assert_eq!(u.update.raw().get_i32("x").unwrap(), 2);
    assert_eq!(encode(&m), upd.to_vec());

    let del = hex("
        2b 00 00 00  0c 00 00 00  00 00 00 00  d6 07 00 00   // length 43, OP_DELETE 2006
        00 00 00 00                                          // ZERO
        64 62 2e 63 00                                       // 'db.c'
        01 00 00 00                                          // flags: SingleRemove
        0e 00 00 00 10 5f 69 64 00 01 00 00 00 00            // selector {_id: 1}
    ");
    let m = decode(&del).unwrap();
    let Body::Delete(d) = &m.body else { panic!() };
    assert_eq!(d.flags, 1);
    assert_eq!(d.selector.raw().get_i32("_id").unwrap(), 1);
    assert_eq!(encode(&m), del.to_vec());
}

// ---------------------------------------------------------------- OP_COMPRESSED

#[test]
fn op_compressed_noop() {
    let frame = hex(&format!(
        "
        3c 00 00 00          // messageLength 60
        01 00 00 00          // requestID 1
        00 00 00 00          // responseTo 0
        dc 07 00 00          // opCode 2012 OP_COMPRESSED
        dd 07 00 00          // originalOpcode 2013 OP_MSG
        23 00 00 00          // uncompressedSize 35 (the body after the header)
        00                   // compressorId 0 noop
        00 00 00 00  00 {PING_DOC}   // the OP_MSG body as is
    "
    ));
    let m = decode(&frame).unwrap();
    assert_eq!(m.compressor, Some(Compressor::Noop));
    assert_eq!(m.wire_len, 60);
    // The header is the uncompressed message's.
    assert_eq!(m.header.op_code, OpCode::Msg as i32);
    assert_eq!(m.header.length, 51);
    assert_eq!(m.body, decode(&ping_msg()).unwrap().body);
    // Zero-copy for noop.
    assert_eq!(msg_of(&m).body.bytes().as_ptr(), frame[30..].as_ptr());
}

fn big_find_reply() -> Message {
    let docs: Vec<bson::RawDocumentBuf> = (0..200)
        .map(|i| rawdoc! { "_id": i, "name": format!("user{i}"), "tags": ["a", "b", "c"] })
        .collect();
    let mut batch = bson::RawArrayBuf::new();
    for d in &docs {
        batch.push(d.clone());
    }
    Message {
        header: Header {
            length: 0,
            request_id: 77,
            response_to: 76,
            op_code: OpCode::Msg as i32,
        },
        wire_len: 0,
        compressor: None,
        body: Body::Msg(OpMsg {
            flags: 0,
            body:
                rawdoc! { "cursor": { "firstBatch": batch, "id": 0_i64, "ns": "db.c" }, "ok": 1.0 }
                    .into(),
            sequences: vec![],
            checksum: None,
        }),
    }
}

#[test]
fn op_compressed_each_compressor() {
    let m = big_find_reply();
    let plain = encode(&m);
    for c in [
        Compressor::Noop,
        Compressor::Snappy,
        Compressor::Zlib,
        Compressor::Zstd,
    ] {
        let frame = Bytes::from(encode_compressed(&m, c));
        // Header fields, as written.
        assert_eq!(
            &frame[12..16],
            &2012i32.to_le_bytes(),
            "opCode OP_COMPRESSED"
        );
        assert_eq!(
            &frame[16..20],
            &2013i32.to_le_bytes(),
            "originalOpcode OP_MSG"
        );
        assert_eq!(
            &frame[20..24],
            &((plain.len() - 16) as i32).to_le_bytes(),
            "uncompressedSize"
        );
        assert_eq!(frame[24], c as u8, "compressorId");
        if c != Compressor::Noop {
            assert!(frame.len() < plain.len() / 2, "{c:?} compresses");
        }
        let d = decode(&frame).unwrap();
        assert_eq!(d.compressor, Some(c));
        assert_eq!(d.wire_len as usize, frame.len());
        assert_eq!(d.header.length as usize, plain.len());
        assert_eq!(d.header.request_id, 77);
        assert_eq!(d.header.response_to, 76);
        assert_eq!(d.body, m.body);
    }
}

#[test]
fn op_compressed_legacy_and_checksummed() {
    // A compressed OP_REPLY.
    let frame = hex(&format!(
        "
        35 00 00 00  06 00 00 00  05 00 00 00  01 00 00 00
        00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 00  01 00 00 00
        {OK_DOC}
    "
    ));
    let m = decode(&frame).unwrap();
    let z = Bytes::from(encode_compressed(&m, Compressor::Zstd));
    assert_eq!(decode(&z).unwrap().body, m.body);
    // A compressed OP_MSG with checksumPresent: the CRC covers the uncompressed message.
    let frame = hex(&format!(
        "{CHECKSUMMED} {PING_DOC}
        32 7e 69 a8"
    ));
    let m = decode(&frame).unwrap();
    let s = encode_compressed(&m, Compressor::Snappy);
    assert_eq!(decode(&Bytes::from(s.clone())).unwrap().body, m.body);
    // Flip a byte of the CRC inside the compressed body: snappy keeps literals as is.
    let mut bad = s;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        decode(&Bytes::from(bad)),
        Err(DecodeError::ChecksumMismatch { .. })
    ));
}

#[test]
fn op_compressed_bad_headers() {
    let m = decode(&ping_msg()).unwrap();
    let good = encode_compressed(&m, Compressor::Zlib);
    let with = |at: usize, bytes: &[u8]| {
        let mut v = good.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        decode(&Bytes::from(v))
    };
    assert_eq!(with(24, &[4]), Err(DecodeError::UnknownCompressor(4)));
    assert_eq!(
        with(16, &2012i32.to_le_bytes()),
        Err(DecodeError::BadOriginalOpCode(2012))
    );
    assert_eq!(
        with(16, &7i32.to_le_bytes()),
        Err(DecodeError::BadOriginalOpCode(7))
    );
    assert_eq!(
        with(20, &(-1i32).to_le_bytes()),
        Err(DecodeError::BadUncompressedSize(-1))
    );
    assert_eq!(
        with(20, &48_000_000i32.to_le_bytes()),
        Err(DecodeError::BadUncompressedSize(48_000_000))
    );
    // Declared one byte less than the data: zlib stops one past and says so.
    assert_eq!(
        with(20, &34i32.to_le_bytes()),
        Err(DecodeError::SizeMismatch {
            compressor: Compressor::Zlib,
            declared: 34,
            actual: 35
        })
    );
    // Corrupt data.
    let mut v = good.clone();
    for b in &mut v[27..] {
        *b ^= 0x5a;
    }
    assert!(decode(&Bytes::from(v)).is_err());
}

/// A few KB that inflate to tens of MB, declared small or declared at the limit.
#[test]
fn op_compressed_bombs_cost_nothing() {
    use std::time::{Duration, Instant};
    let zeros = vec![0u8; 40_000_000];
    let zlib = {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&zeros).unwrap();
        e.finish().unwrap()
    };
    let zstd = zstd::bulk::compress(&zeros, 19).unwrap();
    let snappy = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
    let t = Instant::now();
    // Declared 1000, inflates to 40 MB: stops at 1001.
    for (c, data) in [(Compressor::Zlib, &zlib), (Compressor::Zstd, &zstd)] {
        assert_eq!(
            decompress(c, data, 1000),
            Err(DecodeError::SizeMismatch {
                compressor: c,
                declared: 1000,
                actual: 1001
            }),
            "{c:?}"
        );
    }
    assert_eq!(
        decompress(Compressor::Snappy, &snappy, 1000),
        Err(DecodeError::SizeMismatch {
            compressor: Compressor::Snappy,
            declared: 1000,
            actual: 1001
        })
    );
    // Tiny input declaring nearly 48 MB: refused before inflating.
    let tiny_zlib = &zlib[..64];
    assert!(decompress(Compressor::Zlib, tiny_zlib, 47_000_000).is_err());
    let tiny_snappy = {
        let mut v = snappy[..8].to_vec();
        // Rewrite the preamble to claim 47,000,000 bytes.
        let mut n = 47_000_000u32;
        let mut pre = vec![];
        while n >= 0x80 {
            pre.push((n as u8) | 0x80);
            n >>= 7;
        }
        pre.push(n as u8);
        v.splice(0..snappy_preamble_len(&snappy), pre);
        v
    };
    assert!(decompress(Compressor::Snappy, &tiny_snappy, 47_000_000).is_err());
    // Above the message limit: refused outright.
    assert_eq!(
        decompress(Compressor::Zstd, &zstd, 48_000_001),
        Err(DecodeError::BadUncompressedSize(48_000_001))
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

fn snappy_preamble_len(s: &[u8]) -> usize {
    s.iter().position(|b| b & 0x80 == 0).unwrap() + 1
}

#[test]
fn decode_error_kinds_are_counted() {
    let mut c = DecodeErrorCounts::default();
    let e = decode(&with_flags("04 00 00 00")).unwrap_err();
    c.bump(e.kind());
    c.bump(DecodeErrorKind::Decompress);
    assert_eq!(c.unknown_required_flags, 1);
    assert_eq!(c.get(DecodeErrorKind::Decompress), 1);
    assert_eq!(c.total(), 2);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["unknown_required_flags"], 1);
}
