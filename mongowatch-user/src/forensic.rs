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
    /// Why `Bytes` was left out of a message that carries credentials.
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

/// Whether a message carries credentials or a step of an authentication conversation: a
/// request of [`CREDENTIAL_COMMANDS`], a handshake with `speculativeAuthenticate`, or a reply
/// with a SASL `payload` or a `speculativeAuthenticate` answer. Its bytes are never written.
fn carries_credentials(t: &Timed) -> bool {
    let doc = match &t.msg.body {
        Body::Msg(m) => &m.body,
        Body::Query(q) => &q.query,
        Body::Reply(r) => match r.documents.first() {
            Some(d) => d,
            None => return false,
        },
        _ => return false,
    };
    let reply = t.msg.is_reply();
    doc.raw().iter().flatten().enumerate().any(|(i, (key, _))| {
        key == "speculativeAuthenticate"
            || (reply && key == "payload")
            || (!reply && i == 0 && CREDENTIAL_COMMANDS.contains(&key.as_str()))
    })
}

fn op_name(code: i32) -> String {
    OpCode::from_i32(code)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| code.to_string())
}

fn command_name(t: &Timed) -> Option<String> {
    let doc = match &t.msg.body {
        Body::Msg(m) => &m.body,
        Body::Query(q) => &q.query,
        _ => return None,
    };
    let (key, _) = doc.raw().iter().next()?.ok()?;
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
    let redact = with_bytes && message.is_ok_and(carries_credentials);
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
        bytes: (with_bytes && !redact)
            .then(|| base64::engine::general_purpose::STANDARD.encode(bytes)),
        redacted: redact.then_some("credentials"),
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
        let msg = decode(&bytes).unwrap();
        let t = Timed {
            ts_ns: 1,
            first_ts_ns: 1,
            msg,
        };
        let conn = ConnInfo {
            id: 3,
            pid: 42,
            comm: "app".into(),
            client: "127.0.0.1:5000".into(),
            server: "127.0.0.1:27017".into(),
            tls: false,
        };
        let mut out = Vec::new();
        write_message(
            &mut out,
            &conn,
            Direction::Egress,
            &bytes,
            1_700_000_000_123_456_789,
            Ok(&t),
            true,
        )
        .unwrap();
        (bytes, serde_json::from_slice(&out).unwrap())
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
}
