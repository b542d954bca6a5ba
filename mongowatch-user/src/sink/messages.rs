//! `--messages`: one JSON line per wire message, for forensics and for checking the capture
//! byte for byte.

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use serde::Serialize;

use crate::{
    capture::events::Direction,
    record::format_time,
    stream::ConnInfo,
    wire::{Body, DecodeError, OpCode, Timed},
};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Line<'a> {
    time: String,
    pid: u32,
    conn: u64,
    client: &'a str,
    server: &'a str,
    /// "request" or "reply", from the header (responseTo == 0 is a request).
    direction: &'static str,
    /// Which way the bytes went, seen from the watched process.
    flow: &'static str,
    op_code: String,
    #[serde(rename = "RequestID")]
    request_id: i32,
    response_to: i32,
    /// Bytes on the wire.
    length: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    compressor: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_op_code: Option<&'static str>,
    /// The command name of a request (first key of its body).
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<String>,
    /// Why `Bytes` was left out: "credentials" (the message carries them) or "undecoded" (it
    /// could not be decoded, so it is not shown to be free of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    redacted: Option<&'static str>,
}

/// Commands whose requests carry credentials: SASL conversations (salted proofs; PLAIN's is the
/// password itself), and createUser/updateUser with a cleartext `pwd`.
const CREDENTIAL_COMMANDS: &[&str] = &[
    "saslStart",
    "saslContinue",
    "authenticate",
    "copydbsaslstart",
    "copydbSaslStart",
    "createUser",
    "updateUser",
];

/// Why `--message-bytes` leaves a message's bytes out, if it does. Bytes are written only for a
/// message that was decoded and shown to carry no credentials: one that failed to decode (a bad
/// checksum, a corrupt compressed body) may be a `saslStart` or a `createUser` all the same.
fn redaction(message: Result<&Timed, &DecodeError>) -> Option<&'static str> {
    match message {
        Err(_) => Some("undecoded"),
        Ok(t) => carries_credentials(t).then_some("credentials"),
    }
}

/// Whether a message carries credentials or a step of an authentication conversation: a
/// request of [`CREDENTIAL_COMMANDS`] (bare, or wrapped in OP_QUERY's `$query`), a handshake
/// with `speculativeAuthenticate`, a reply with a SASL `payload` or a `speculativeAuthenticate`
/// answer, or a legacy write to `system.users` (user documents with password hashes). A
/// document that cannot be read to its end is not shown to be clean, so it counts as carrying
/// them.
fn carries_credentials(t: &Timed) -> bool {
    let reply = t.msg.is_reply();
    match &t.msg.body {
        Body::Msg(m) => doc_carries(m.body.raw(), reply, true),
        Body::Query(q) => doc_carries(q.query.raw(), reply, true),
        Body::Reply(r) => r
            .documents
            .iter()
            .any(|d| doc_carries(d.raw(), true, false)),
        Body::Insert(i) => is_users(&i.full_collection_name),
        Body::Update(u) => is_users(&u.full_collection_name),
        Body::Delete(_) | Body::GetMore(_) | Body::KillCursors(_) => false,
    }
}

/// `unwrap`: look inside a leading `$query`/`query` wrapper (once: a nested wrapper is not a
/// command any server runs, and recursing on it would let a message choose our stack depth).
fn doc_carries(doc: &bson::RawDocument, reply: bool, unwrap: bool) -> bool {
    for (i, item) in doc.iter().enumerate() {
        let Ok((key, value)) = item else {
            return true;
        };
        let key = key.as_str();
        if key == "speculativeAuthenticate"
            || (reply && key == "payload")
            || (!reply && i == 0 && CREDENTIAL_COMMANDS.contains(&key))
        {
            return true;
        }
        if !reply && i == 0 && unwrap && (key == "$query" || key == "query") {
            if let Some(inner) = value.as_document() {
                if doc_carries(inner, false, false) {
                    return true;
                }
            }
        }
    }
    false
}

fn is_users(full_collection_name: &str) -> bool {
    full_collection_name.ends_with(".system.users")
}

fn op_name(code: i32) -> String {
    OpCode::from_i32(code)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| code.to_string())
}

fn command_name(t: &Timed) -> Option<String> {
    let (doc, cmd_query) = match &t.msg.body {
        Body::Msg(m) => (&m.body, false),
        Body::Query(q) => (&q.query, q.full_collection_name.ends_with(".$cmd")),
        _ => return None,
    };
    let (key, value) = doc.raw().iter().next()?.ok()?;
    // An OP_QUERY command wrapped with its read preference is named by what it wraps.
    if cmd_query && (key.as_str() == "$query" || key.as_str() == "query") {
        if let Some((inner, _)) = value.as_document().and_then(|d| d.iter().next()?.ok()) {
            return Some(inner.as_str().to_string());
        }
    }
    Some(key.as_str().to_string())
}

/// Writes one message line.
pub fn write_message(
    out: &mut impl Write,
    conn: &ConnInfo,
    dir: Direction,
    bytes: &Bytes,
    first_ts_ns: u64,
    message: Result<&Timed, &DecodeError>,
    with_bytes: bool,
) -> std::io::Result<()> {
    let word = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    };
    let (request_id, response_to, wire_op) = (word(4), word(8), word(12));
    let redacted = if with_bytes { redaction(message) } else { None };
    let (compressor, original, command, error) = match message {
        Ok(t) => (
            t.msg.compressor.map(|c| c.name()),
            t.msg
                .compressor
                .and_then(|_| OpCode::from_i32(t.msg.header.op_code))
                .map(|c| c.name()),
            if t.msg.is_reply() {
                None
            } else {
                command_name(t)
            },
            None,
        ),
        Err(e) => (None, None, None, Some(e.to_string())),
    };
    let is_reply = response_to != 0 || wire_op == OpCode::Reply as i32;
    let line = Line {
        time: format_time(first_ts_ns),
        pid: conn.pid,
        conn: conn.id,
        client: &conn.client,
        server: &conn.server,
        direction: if is_reply { "reply" } else { "request" },
        flow: match dir {
            Direction::Egress => "sent",
            Direction::Ingress => "received",
        },
        op_code: op_name(wire_op),
        request_id,
        response_to,
        length: bytes.len(),
        compressor,
        original_op_code: original,
        command,
        error,
        bytes: (with_bytes && redacted.is_none())
            .then(|| base64::engine::general_purpose::STANDARD.encode(bytes)),
        redacted,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::wire::decode;

    /// The line --messages --message-bytes writes for an OP_MSG with this body.
    fn line_of(request_id: i32, response_to: i32, doc: bson::RawDocumentBuf) -> (Bytes, Value) {
        let bytes = Bytes::from(crate::wire::encode(&crate::wire::Message::op_msg(
            request_id,
            response_to,
            doc.into(),
        )));
        let v = line_of_bytes(&bytes);
        (bytes, v)
    }

    /// The line --messages --message-bytes writes for these wire bytes, decoded or not.
    fn line_of_bytes(bytes: &Bytes) -> Value {
        let decoded = decode(bytes).map(|msg| Timed {
            ts_ns: 1,
            first_ts_ns: 1,
            msg,
        });
        let conn = ConnInfo {
            id: 3,
            pid: 42,
            comm: "app".into(),
            client: "127.0.0.1:5000".into(),
            server: "127.0.0.1:27017".into(),
            tls: false,
            side: Default::default(),
            origin: Default::default(),
        };
        let mut out = Vec::new();
        write_message(
            &mut out,
            &conn,
            Direction::Egress,
            bytes,
            1_700_000_000_123_456_789,
            decoded.as_ref(),
            true,
        )
        .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_request_line() {
        let (bytes, v) = line_of(7, 0, bson::rawdoc! { "find": "orders", "$db": "shop" });
        let len = bytes.len();
        assert_eq!(v["Time"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["Direction"], "request");
        assert_eq!(v["OpCode"], "OP_MSG");
        assert_eq!(v["RequestID"], 7);
        assert_eq!(v["ResponseTo"], 0);
        assert_eq!(v["Length"], len);
        assert_eq!(v["Command"], "find");
        assert_eq!(v["Pid"], 42);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["Bytes"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, bytes.to_vec());
    }

    /// Authentication steps and user management keep their line but never their bytes.
    #[test]
    fn credentials_are_never_written() {
        let payload = bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: b"n,,n=dba,r=secret-nonce".to_vec(),
        };
        let carrying = [
            (
                1,
                0,
                bson::rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256",
                "payload": payload.clone(), "$db": "admin" },
            ),
            (
                2,
                1,
                bson::rawdoc! { "conversationId": 1, "done": false,
                "payload": payload.clone(), "ok": 1.0 },
            ),
            (
                3,
                0,
                bson::rawdoc! { "saslContinue": 1, "conversationId": 1,
                "payload": payload.clone(), "$db": "admin" },
            ),
            (
                4,
                0,
                bson::rawdoc! { "hello": 1, "speculativeAuthenticate":
                { "saslStart": 1, "payload": payload }, "$db": "admin" },
            ),
            (
                5,
                0,
                bson::rawdoc! { "createUser": "dba", "pwd": "s3cret", "roles": [],
                "$db": "admin" },
            ),
            (
                6,
                0,
                bson::rawdoc! { "updateUser": "dba", "pwd": "s3cret2", "$db": "admin" },
            ),
        ];
        for (id, to, doc) in carrying {
            let (bytes, v) = line_of(id, to, doc);
            assert_eq!(v["Redacted"], "credentials", "{v}");
            assert!(v.get("Bytes").is_none(), "{v}");
            assert_eq!(v["Length"], bytes.len());
            let text = v.to_string();
            assert!(
                !text.contains("secret") && !text.contains("s3cret"),
                "{text}"
            );
        }
        // A user's own field named `payload` in a request is just data.
        let (_, v) = line_of(
            9,
            0,
            bson::rawdoc! { "insert": "c", "payload": 1, "$db": "d" },
        );
        assert!(v["Bytes"].is_string() && v.get("Redacted").is_none(), "{v}");
    }

    /// The bytes of an OP_MSG request with this body, with a CRC-32C trailer.
    fn checksummed(doc: bson::RawDocumentBuf) -> Vec<u8> {
        let mut m = crate::wire::Message::op_msg(11, 0, doc.into());
        if let Body::Msg(b) = &mut m.body {
            b.flags |= crate::wire::msg_flags::CHECKSUM_PRESENT;
        }
        crate::wire::encode(&m)
    }

    fn assert_no_bytes(v: &Value, reason: &str, secret: &str) {
        assert_eq!(v["Redacted"], reason, "{v}");
        assert!(v.get("Bytes").is_none(), "{v}");
        assert!(!v.to_string().contains(secret), "{v}");
    }

    /// A message that fails to decode is not shown to be free of credentials: its line stays,
    /// its bytes do not (here a saslStart whose checksum is wrong).
    #[test]
    fn an_undecodable_message_keeps_no_bytes() {
        let mut wire = checksummed(bson::rawdoc! { "saslStart": 1, "mechanism": "PLAIN",
        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic,
                                  bytes: b"\0dba\0plain-s3cret".to_vec() },
        "$db": "admin" });
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        let bytes = Bytes::from(wire);
        let e = decode(&bytes).unwrap_err();
        assert!(
            matches!(e, DecodeError::ChecksumMismatch { .. }),
            "the fixture must fail on its checksum: {e}"
        );
        let v = line_of_bytes(&bytes);
        assert_no_bytes(&v, "undecoded", "plain-s3cret");
        assert!(v["Error"].as_str().unwrap().contains("checksum"), "{v}");
        assert_eq!(v["Length"], bytes.len());
        assert_eq!(v["RequestID"], 11);
    }

    /// A createUser in OP_COMPRESSED whose zlib stream is corrupt: undecodable, so no bytes
    /// (its password is in the clear inside a stored zlib block).
    #[test]
    fn a_corrupt_compressed_body_keeps_no_bytes() {
        let m = crate::wire::Message::op_msg(
            12,
            0,
            bson::rawdoc! { "createUser": "dba", "pwd": "zlib-s3cret", "roles": [],
            "$db": "admin" }
            .into(),
        );
        let mut wire = crate::wire::encode_compressed(&m, crate::wire::Compressor::Zlib);
        // Break the zlib trailer (the Adler-32 of the content): the body inflates, the check
        // fails.
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        let bytes = Bytes::from(wire);
        let e = decode(&bytes).unwrap_err();
        assert!(
            matches!(e, DecodeError::Decompress { .. }),
            "the fixture must fail to inflate: {e}"
        );
        assert_no_bytes(&line_of_bytes(&bytes), "undecoded", "zlib-s3cret");
    }

    /// OP_QUERY on `admin.$cmd` with the command wrapped in `$query` (how legacy drivers and
    /// mongos send a command with a read preference): the wrapped command is what counts.
    #[test]
    fn a_wrapped_op_query_command_is_redacted() {
        let query = |doc: bson::RawDocumentBuf| {
            Bytes::from(crate::wire::encode(&crate::wire::Message {
                header: crate::wire::Header {
                    length: 0,
                    request_id: 13,
                    response_to: 0,
                    op_code: OpCode::Query as i32,
                },
                wire_len: 0,
                compressor: None,
                body: Body::Query(crate::wire::OpQuery {
                    flags: 0,
                    full_collection_name: "admin.$cmd".into(),
                    number_to_skip: 0,
                    number_to_return: -1,
                    query: doc.into(),
                    return_fields_selector: None,
                }),
            }))
        };
        let v = line_of_bytes(&query(bson::rawdoc! { "$query": { "createUser": "dba",
        "pwd": "wrapped-s3cret" } }));
        assert_eq!(
            v["Command"], "createUser",
            "named by the command it wraps: {v}"
        );
        for doc in [
            bson::rawdoc! { "$query": { "createUser": "dba", "pwd": "wrapped-s3cret",
            "roles": [] }, "$readPreference": { "mode": "primary" } },
            bson::rawdoc! { "query": { "updateUser": "dba", "pwd": "wrapped-s3cret" },
            "readPreference": { "mode": "primary" } },
            bson::rawdoc! { "$query": { "saslContinue": 1, "conversationId": 1,
            "payload": "wrapped-s3cret" } },
            bson::rawdoc! { "$query": { "isMaster": 1, "speculativeAuthenticate":
            { "saslStart": 1, "payload": "wrapped-s3cret" } } },
        ] {
            let bytes = query(doc);
            assert!(decode(&bytes).is_ok());
            assert_no_bytes(&line_of_bytes(&bytes), "credentials", "wrapped-s3cret");
        }
        // A wrapped ordinary command keeps its bytes.
        let v = line_of_bytes(&query(bson::rawdoc! { "$query": { "count": "c" },
        "$readPreference": { "mode": "primary" } }));
        assert!(v["Bytes"].is_string() && v.get("Redacted").is_none(), "{v}");
    }

    /// Legacy user management wrote user documents (password hashes) into `system.users`.
    #[test]
    fn a_legacy_write_to_system_users_is_redacted() {
        let bytes = Bytes::from(crate::wire::encode(&crate::wire::Message {
            header: crate::wire::Header {
                length: 0,
                request_id: 14,
                response_to: 0,
                op_code: OpCode::Insert as i32,
            },
            wire_len: 0,
            compressor: None,
            body: Body::Insert(crate::wire::OpInsert {
                flags: 0,
                full_collection_name: "admin.system.users".into(),
                documents: vec![bson::rawdoc! { "user": "dba", "pwd": "legacy-hash" }.into()],
            }),
        }));
        assert!(decode(&bytes).is_ok());
        assert_no_bytes(&line_of_bytes(&bytes), "credentials", "legacy-hash");
    }
}
