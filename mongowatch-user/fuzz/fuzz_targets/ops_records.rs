//! Untrusted BSON interpreted into audit records: the ops layer, the delay queue and every
//! formatter, on exchanges built from the input.
//!
//! The input is read as a program: byte 0 chooses the configuration, then each step is one
//! input of the ops layer (a round trip, one-way or unanswered request, orphan reply, close,
//! process exit or tick) on one of four connections of two processes. A message is either the
//! fuzzer's bytes as a raw BSON body (well-formed or not), the fuzzer's bytes as a whole wire
//! frame through `wire::decode`, or a valid command or reply built from fuzz-chosen names,
//! fields and values (find, getMore, insert, update, delete, aggregate, killCursors, saslStart,
//! createUser, ..., cursor ids, errors), as OP_MSG or a legacy opcode.
//!
//! Checks: no panic; every record formats in every format (JSON parses back to an object with
//! every field; JSON, text and template output is one line); the tracker never holds more than
//! `max_open` operations and the queue holds exactly the tracker's open ones; every operation
//! the tracker reports is written at least once by the end; no credential the harness planted
//! (SASL payloads, `pwd`), nor its base64, ever reaches a formatted record.
#![no_main]

use std::{collections::HashSet, sync::Arc};

use bson::{
    oid::ObjectId, raw::CStr, spec::BinarySubtype, Binary, DateTime, Decimal128, RawArrayBuf,
    RawBson, RawDocumentBuf, Timestamp,
};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
// The lead moves `ops::Record` to a `record` module: only this import names it.
use mongowatch::{
    ops::{Emit, Input, Tracker, TrackerConfig},
    queue::{QueueConfig, WatchQueue},
    record::{Record, WatchIds, FIELDS},
    sink::{Format, Formatter},
    stream::ConnInfo,
    wire::{
        decode, encode, msg_flags, Body, Compressor, Doc, Exchange, Header, Message, OpCode,
        OpDelete, OpGetMore, OpInsert, OpKillCursors, OpQuery, OpReply, OpUpdate, Sequence, Timed,
    },
};

/// Planted in every credential the harness builds; 12 bytes so its base64 is aligned.
const SECRET: &[u8; 12] = b"Zq7SECRETpw9";
const T0: u64 = 1_795_534_140_000_000_000;
const MS: u64 = 1_000_000;

/// The input, read front to back; zeros once it runs out.
struct Src<'a>(&'a [u8]);

impl<'a> Src<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[usize::from(self.u8()) % from.len()].clone()
    }
    /// A short string: from a pool, or the fuzzer's bytes.
    fn string(&mut self, pool: &[&str]) -> String {
        let i = usize::from(self.u8());
        if i < pool.len() * 4 {
            pool[i % pool.len()].to_owned()
        } else {
            let n = usize::from(self.u8() % 24);
            String::from_utf8_lossy(self.bytes(n)).into_owned()
        }
    }
}

const COMMANDS: &[&str] = &[
    "find",
    "getMore",
    "insert",
    "update",
    "delete",
    "aggregate",
    "killCursors",
    "saslStart",
    "saslContinue",
    "createUser",
    "updateUser",
    "hello",
    "isMaster",
    "authenticate",
    "logout",
    "count",
    "distinct",
    "findAndModify",
    "bulkWrite",
    "explain",
    "mapReduce",
    "renameCollection",
    "listIndexes",
    "endSessions",
    "ping",
    "drop",
];
const KEYS: &[&str] = &[
    "filter",
    "query",
    "pipeline",
    "updates",
    "deletes",
    "documents",
    "cursor",
    "collection",
    "remove",
    "nsInfo",
    "ops",
    "q",
    "u",
    "limit",
    "batchSize",
    "comment",
    "user",
    "mechanism",
    "roles",
    "lsid",
];
const REPLY_KEYS: &[&str] = &[
    "n",
    "nModified",
    "upserted",
    "writeErrors",
    "writeConcernError",
    "code",
    "codeName",
    "errmsg",
    "done",
    "conversationId",
    "user",
    "compression",
    "lastErrorObject",
    "values",
    "nErrors",
    "nInserted",
    "nMatched",
    "nDeleted",
    "$err",
];
const NAMES: &[&str] = &["orders", "users", "", "a.b", "system.users", "$cmd", "x"];
const DBS: &[&str] = &["shop", "admin", "", "$external", "d.b"];
const MECHANISMS: &[&str] = &["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "MONGODB-X509"];
const USERS: &[&str] = &["alice", "a=2Cb", "", "n=x"];

fn key(k: &str) -> &CStr {
    <&CStr>::try_from(k).unwrap_or_else(|_| <&CStr>::try_from("k").unwrap())
}

/// Cursor ids that meet each other, and any other.
fn cursor_id(s: &mut Src) -> RawBson {
    match s.u8() % 10 {
        0 => RawBson::Int64(0),
        1..=3 => RawBson::Int64(77),
        4 => RawBson::Int64(5),
        5 => RawBson::Int32(77),
        6 => RawBson::Double(77.0),
        7 => RawBson::Int64(i64::MIN),
        8 => RawBson::String("77".into()),
        _ => RawBson::Int64(s.u64() as i64),
    }
}

/// Any BSON value the fuzzer likes, nesting bounded.
fn value(s: &mut Src, depth: u8) -> RawBson {
    match s.u8() % 22 {
        0 => RawBson::Int32(s.u32() as i32),
        1 => RawBson::Int64(s.u64() as i64),
        2 => RawBson::Double(f64::from_bits(s.u64())),
        3 => RawBson::Double(s.pick(&[f64::NAN, f64::INFINITY, -0.0, 1e300, 1.0])),
        4 | 5 => RawBson::String(s.string(NAMES)),
        6 => RawBson::Boolean(s.u8() & 1 == 1),
        7 => RawBson::Null,
        8 | 9 if depth < 4 => RawBson::Document(document(s, depth + 1)),
        10 | 11 if depth < 4 => RawBson::Array(array(s, depth + 1)),
        12 => RawBson::Binary(Binary {
            subtype: BinarySubtype::from(s.u8()),
            bytes: {
                let n = usize::from(s.u8() % 16);
                s.bytes(n).to_vec()
            },
        }),
        13 => RawBson::ObjectId(ObjectId::from_bytes(std::array::from_fn(|_| s.u8()))),
        14 => RawBson::DateTime(DateTime::from_millis(s.u64() as i64)),
        15 => RawBson::Timestamp(Timestamp {
            time: s.u32(),
            increment: s.u32(),
        }),
        16 => RawBson::Decimal128(Decimal128::from_bytes(std::array::from_fn(|_| s.u8()))),
        17 => s.pick(&[RawBson::MinKey, RawBson::MaxKey, RawBson::Undefined]),
        18 => RawBson::Symbol(s.string(NAMES)),
        19 => RawBson::JavaScriptCode(s.string(NAMES)),
        20 => cursor_id(s),
        _ => RawBson::Int32(i32::from(s.u8())),
    }
}

fn document(s: &mut Src, depth: u8) -> RawDocumentBuf {
    let mut d = RawDocumentBuf::new();
    for _ in 0..s.u8() % 5 {
        let k = s.string(KEYS);
        d.append(key(&k), value(s, depth));
    }
    d
}

fn array(s: &mut Src, depth: u8) -> RawArrayBuf {
    let mut a = RawArrayBuf::new();
    for _ in 0..s.u8() % 6 {
        a.push(value(s, depth));
    }
    a
}

/// The fuzzer's bytes as a document body: a right length prefix and trailing NUL, anything
/// between (`Doc` checks only those).
fn raw_doc(s: &mut Src) -> Doc {
    let n = usize::from(s.u8());
    let inner = s.bytes(n);
    let mut v = Vec::with_capacity(inner.len() + 5);
    v.extend_from_slice(&((inner.len() + 5) as i32).to_le_bytes());
    v.extend_from_slice(inner);
    v.push(0);
    Doc::new(Bytes::from(v)).expect("length prefix and NUL are right")
}

/// base64 of `SECRET` (the record's rendering of binary data).
fn b64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    b.chunks(3)
        .flat_map(|c| {
            let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
            [18, 12, 6, 0].map(|sh| T[(n >> sh) as usize & 63] as char)
        })
        .collect()
}

/// A SASL payload naming a user and carrying the planted secret, 3-byte aligned so its
/// base64 contains the secret's.
fn sasl_payload(s: &mut Src, mechanism: &str) -> Binary {
    let user = s.string(USERS).replace([',', '\0'], "");
    let mut p = if mechanism == "PLAIN" {
        format!("\0{user}\0").into_bytes()
    } else {
        format!("n,,n={user},r=").into_bytes()
    };
    while p.len() % 3 != 0 {
        p.push(b'x');
    }
    p.extend_from_slice(SECRET);
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: p,
    }
}

fn secret_str() -> String {
    String::from_utf8(SECRET.to_vec()).unwrap()
}

/// A command document: the name, what it is about, fuzz fields, planted credentials, `$db`.
fn command(s: &mut Src) -> RawDocumentBuf {
    let name = s.pick(COMMANDS);
    let mut d = RawDocumentBuf::new();
    match name {
        "getMore" => d.append(key(name), cursor_id(s)),
        "explain" => {
            let mut inner = RawDocumentBuf::new();
            inner.append(key(s.pick(&["find", "update", "delete", "aggregate"])), "c");
            inner.append(key(s.pick(KEYS)), value(s, 1));
            d.append(key(name), inner);
        }
        "renameCollection" => d.append(key(name), RawBson::String(s.string(&["a.b", "a", "."]))),
        "saslStart" | "saslContinue" | "ping" | "hello" | "isMaster" | "logout" => {
            d.append(key(name), 1)
        }
        "authenticate" | "createUser" | "updateUser" => {
            d.append(key(name), RawBson::String(s.string(USERS)))
        }
        _ => d.append(key(name), RawBson::String(s.string(NAMES))),
    }
    match name {
        "saslStart" | "saslContinue" => {
            let mech = s.pick(MECHANISMS);
            d.append(key("mechanism"), mech);
            d.append(key("payload"), sasl_payload(s, mech));
        }
        "createUser" | "updateUser" => {
            d.append(key("pwd"), secret_str());
            d.append(key("digestPassword"), s.u8() & 1 == 1);
        }
        "hello" | "isMaster" => {
            let mut drv = RawDocumentBuf::new();
            drv.append(key("name"), s.string(&["PyMongo|c", "nodejs", "a|b|c"]));
            drv.append(key("version"), s.string(&["4.20.1|", "7.9.0", "1|2"]));
            let mut client = RawDocumentBuf::new();
            client.append(key("driver"), drv);
            d.append(key("client"), client);
            if s.u8() & 1 == 1 {
                let mech = s.pick(MECHANISMS);
                let mut spec = RawDocumentBuf::new();
                spec.append(key("saslStart"), 1);
                spec.append(key("mechanism"), mech);
                spec.append(key("payload"), sasl_payload(s, mech));
                spec.append(key("db"), "admin");
                d.append(key("speculativeAuthenticate"), spec);
            }
        }
        "killCursors" => {
            let mut ids = RawArrayBuf::new();
            for _ in 0..s.u8() % 4 {
                ids.push(cursor_id(s));
            }
            d.append(key("cursors"), ids);
        }
        _ => {}
    }
    for _ in 0..s.u8() % 5 {
        let k = s.string(KEYS);
        d.append(key(&k), value(s, 0));
    }
    if !s.u8().is_multiple_of(8) {
        d.append(key("$db"), s.string(DBS));
    }
    d
}

/// A reply document: cursor, ok, counts, errors, SASL answers, in fuzz-chosen order.
fn reply_doc(s: &mut Src) -> RawDocumentBuf {
    let mut d = RawDocumentBuf::new();
    for _ in 0..s.u8() % 6 {
        match s.u8() % 8 {
            0 | 1 => {
                let mut c = RawDocumentBuf::new();
                let batch = s.pick(&["firstBatch", "nextBatch"]);
                let mut a = RawArrayBuf::new();
                for _ in 0..s.u8() % 8 {
                    a.push(document(s, 2));
                }
                c.append(key(batch), a);
                c.append(key("id"), cursor_id(s));
                c.append(key("ns"), s.string(&["shop.orders", "x"]));
                d.append(key("cursor"), c);
            }
            2 => d.append(
                key("ok"),
                s.pick(&[
                    RawBson::Double(1.0),
                    RawBson::Int32(1),
                    RawBson::Double(0.0),
                    RawBson::Boolean(true),
                    RawBson::String("1".into()),
                ]),
            ),
            3 => {
                let mut e = RawDocumentBuf::new();
                e.append(key("code"), value(s, 2));
                e.append(key("errmsg"), RawBson::String(s.string(NAMES)));
                let mut a = RawArrayBuf::new();
                a.push(e);
                d.append(key(s.pick(&["writeErrors", "writeConcernError"])), a);
            }
            4 => {
                // The server's side of SASL carries secrets too.
                d.append(key("payload"), sasl_payload(s, "SCRAM-SHA-256"));
                let mut spec = RawDocumentBuf::new();
                spec.append(key("done"), s.u8() & 1 == 1);
                spec.append(key("payload"), sasl_payload(s, "SCRAM-SHA-256"));
                d.append(key("speculativeAuthenticate"), spec);
            }
            _ => {
                let k = s.pick(REPLY_KEYS);
                d.append(key(k), value(s, 1));
            }
        }
    }
    d
}

fn sequences(s: &mut Src) -> Vec<Sequence> {
    (0..s.u8() % 3)
        .map(|_| Sequence {
            identifier: s
                .string(&["documents", "updates", "deletes", "ops", "nsInfo"])
                .replace('\0', ""),
            documents: (0..s.u8() % 4)
                .map(|_| {
                    if s.u8().is_multiple_of(4) {
                        raw_doc(s)
                    } else {
                        Doc::from(document(s, 1))
                    }
                })
                .collect(),
        })
        .collect()
}

fn header(op: OpCode, response_to: i32) -> Header {
    Header {
        length: 0,
        request_id: 7,
        response_to,
        op_code: op as i32,
    }
}

fn cstring(s: &mut Src, pool: &[&str]) -> String {
    s.string(pool).replace('\0', "")
}

/// A message, or `None` when the fuzzer's frame does not decode.
fn message(s: &mut Src, reply: bool) -> Option<Message> {
    let response_to: i32 = if reply { 7 } else { 0 };
    let body = match s.u8() % 12 {
        // The fuzzer's bytes as the body.
        0 | 1 => Body::Msg(mongowatch::wire::OpMsg {
            flags: 0,
            body: raw_doc(s),
            sequences: sequences(s),
            checksum: None,
        }),
        // The fuzzer's bytes as a whole frame, through the decoder.
        2 => {
            let op: i32 = s.pick(&[2013, 2004, 1, 2005, 2007, 2002, 2001, 2006, 2012]);
            let n = usize::from(s.u16() % 4096);
            let rest = s.bytes(n);
            let mut f = Vec::with_capacity(16 + rest.len());
            f.extend_from_slice(&((16 + rest.len()) as i32).to_le_bytes());
            f.extend_from_slice(&7i32.to_le_bytes());
            f.extend_from_slice(&response_to.to_le_bytes());
            f.extend_from_slice(&op.to_le_bytes());
            f.extend_from_slice(rest);
            return decode(&Bytes::from(f)).ok();
        }
        3 if reply => Body::Reply(OpReply {
            flags: i32::from(s.u8() & 0xf),
            cursor_id: s.u64() as i64 % 100,
            starting_from: 0,
            number_returned: 0,
            documents: (0..s.u8() % 3).map(|_| Doc::from(reply_doc(s))).collect(),
        }),
        3 => {
            // OP_QUERY: a command on `db.$cmd` (maybe `$query`-wrapped), or a find.
            let coll = cstring(s, &["$cmd", "$cmd", "orders"]);
            let ns = format!("{}.{coll}", cstring(s, DBS));
            // On a collection the query is a find's filter, shown as it is: no command (and
            // no planted credential) there.
            let mut q = if ns.split_once('.').map(|(_, c)| c) == Some("$cmd") {
                command(s)
            } else {
                document(s, 0)
            };
            if s.u8() & 1 == 1 {
                let mut w = RawDocumentBuf::new();
                w.append(key("$query"), q);
                w.append(key("$readPreference"), RawDocumentBuf::new());
                q = w;
            }
            Body::Query(OpQuery {
                flags: 0,
                full_collection_name: ns,
                number_to_skip: 0,
                number_to_return: -1,
                query: Doc::from(q),
                return_fields_selector: None,
            })
        }
        4 if !reply => match s.u8() % 5 {
            0 => Body::GetMore(OpGetMore {
                full_collection_name: cstring(s, &["shop.orders", "x"]),
                number_to_return: 0,
                cursor_id: s.pick(&[77, 5, 0, -1]),
            }),
            1 => Body::KillCursors(OpKillCursors {
                cursor_ids: (0..s.u8() % 3).map(|_| s.pick(&[77, 5, 0])).collect(),
            }),
            2 => Body::Insert(OpInsert {
                flags: 0,
                full_collection_name: cstring(s, &["shop.orders", "x"]),
                documents: (0..s.u8() % 3).map(|_| raw_doc(s)).collect(),
            }),
            3 => Body::Update(OpUpdate {
                full_collection_name: cstring(s, &["shop.orders", "x"]),
                flags: i32::from(s.u8() & 3),
                selector: raw_doc(s),
                update: Doc::from(document(s, 0)),
            }),
            _ => Body::Delete(OpDelete {
                full_collection_name: cstring(s, &["shop.orders", "x"]),
                flags: i32::from(s.u8() & 1),
                selector: raw_doc(s),
            }),
        },
        _ => Body::Msg(mongowatch::wire::OpMsg {
            flags: match s.u8() % 8 {
                0 => msg_flags::MORE_TO_COME,
                1 => msg_flags::EXHAUST_ALLOWED,
                _ => 0,
            },
            body: Doc::from(if reply { reply_doc(s) } else { command(s) }),
            sequences: if reply { Vec::new() } else { sequences(s) },
            checksum: None,
        }),
    };
    let op = match body {
        Body::Msg(_) => OpCode::Msg,
        Body::Reply(_) => OpCode::Reply,
        Body::Query(_) => OpCode::Query,
        Body::GetMore(_) => OpCode::GetMore,
        Body::KillCursors(_) => OpCode::KillCursors,
        Body::Insert(_) => OpCode::Insert,
        Body::Update(_) => OpCode::Update,
        Body::Delete(_) => OpCode::Delete,
    };
    let mut m = Message {
        header: header(op, response_to),
        wire_len: 0,
        compressor: None,
        body,
    };
    let len = encode(&m).len();
    m.header.length = len as i32;
    m.wire_len = len as u32;
    if s.u8().is_multiple_of(8) {
        m.compressor = Compressor::from_u8(s.u8() % 4);
        m.wire_len /= 2;
    }
    Some(m)
}

fn timed(msg: Message, first: u64, last: u64) -> Timed {
    Timed {
        ts_ns: last,
        first_ts_ns: first,
        msg,
    }
}

/// When an input happened (as the daemon's auditor reads it).
fn input_time(input: &Input) -> u64 {
    match input {
        Input::Exchange { exchange, .. } => match exchange {
            Exchange::RoundTrip { reply, .. } | Exchange::OrphanReply { reply } => reply.ts_ns,
            Exchange::OneWay { request } | Exchange::Unanswered { request } => request.ts_ns,
        },
        Input::ConnClosed { ts_ns, .. } | Input::ProcessExited { ts_ns, .. } => *ts_ns,
        Input::Tick { now_ns } => *now_ns,
    }
}

/// Every formatter the sink has: JSON, text, CSV and a template of every field.
fn formatters() -> Vec<(Format, Formatter)> {
    let all: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
    let template: String = FIELDS
        .iter()
        .map(|f| format!("{{{f}}}"))
        .chain(["{watch}".into(), "{watch.csv}".into()])
        .collect::<Vec<_>>()
        .join("\t");
    vec![
        (
            Format::Json,
            Formatter::new(Format::Json, None, None).unwrap(),
        ),
        (
            Format::Text,
            Formatter::new(Format::Text, None, None).unwrap(),
        ),
        (
            Format::Text,
            Formatter::new(Format::Text, Some(&all), None).unwrap(),
        ),
        (
            Format::Csv,
            Formatter::new(Format::Csv, None, None).unwrap(),
        ),
        (
            Format::Template,
            Formatter::new(Format::Template, None, Some(&template)).unwrap(),
        ),
    ]
}

struct Checker<'a> {
    formatters: Vec<(Format, Formatter)>,
    /// The planted secret and its base64.
    secrets: [String; 2],
    /// The input: a secret it holds itself proves nothing when it shows up.
    data: &'a [u8],
    written: HashSet<String>,
}

impl Checker<'_> {
    /// The adapter the record checks go through: one record, every format.
    fn check(&mut self, r: &Record) {
        self.written.insert(r.watch_id.clone());
        for (format, f) in &self.formatters {
            let line = f.format(r);
            let body = line.strip_suffix('\n').expect("a line ends with a newline");
            if *format != Format::Csv {
                // CSV may quote a line break; the others never split a record.
                assert!(
                    !body.contains(['\n', '\r']),
                    "{format:?} line breaks: {line:?}"
                );
            }
            if *format == Format::Json {
                let v: serde_json::Value = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("invalid JSON ({e}): {body}"));
                let o = v.as_object().expect("a record is a JSON object");
                for k in FIELDS {
                    assert!(o.contains_key(*k), "{k} missing: {body}");
                }
                assert_eq!(o.len(), FIELDS.len(), "{body}");
            }
            for sec in &self.secrets {
                // Searched in the input only on a hit: this runs for every record.
                assert!(
                    !line.contains(sec.as_str()) || contains(self.data, sec.as_bytes()),
                    "credential written: {line}"
                );
            }
        }
    }
}

fn conns() -> Vec<Arc<ConnInfo>> {
    (0..4u64)
        .map(|i| {
            Arc::new(ConnInfo {
                id: i + 1,
                pid: if i < 3 { 4242 } else { 5151 },
                comm: "python3".into(),
                client: format!("127.0.0.1:{}", 51000 + i).into(),
                server: if i == 2 {
                    "/tmp/mongodb-27017.sock".into()
                } else {
                    "127.0.0.1:27017".into()
                },
                tls: i == 1,
                side: Default::default(),
                origin: Default::default(),
            })
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut s = Src(data);
    let cfg = s.u8();
    let max_open = usize::from(cfg % 8) + 1;
    let mut tracker = Tracker::new(
        TrackerConfig {
            include_heartbeats: cfg & 0x80 != 0,
            max_open,
        },
        WatchIds::new([0; 5]),
    );
    let mut queue = WatchQueue::new(QueueConfig {
        timeout_ns: u64::from(s.u8()) * 10 * MS,
        delay_ns: u64::from(s.u8() % 16) * MS,
    });
    let mut checker = Checker {
        formatters: formatters(),
        secrets: [secret_str(), b64(SECRET)],
        data,
        written: HashSet::new(),
    };
    let conns = conns();
    let mut reported: HashSet<String> = HashSet::new();
    let mut emits: Vec<Emit> = Vec::new();
    let mut t = T0 + u64::from(s.u16()) * 1_000 * MS;
    for _ in 0..64 {
        if s.is_empty() {
            break;
        }
        let c = conns[usize::from(s.u8() % 4)].clone();
        t = t.saturating_add(u64::from(s.u8()) * MS);
        let rtt = u64::from(s.u8()) * MS / 4;
        let input = match s.u8() % 10 {
            0..=3 => {
                let (Some(req), Some(rep)) = (message(&mut s, false), message(&mut s, true)) else {
                    continue;
                };
                let exhaust_index = if s.u8().is_multiple_of(4) {
                    u32::from(s.u8() % 3)
                } else {
                    0
                };
                Exchange::RoundTrip {
                    request: Arc::new(timed(req, t, t + 10_000)),
                    reply: timed(rep, t + rtt, t + rtt + 5_000),
                    exhaust_index,
                }
                .into_input(c)
            }
            4 => match message(&mut s, false) {
                Some(req) => Exchange::OneWay {
                    request: timed(req, t, t + 10_000),
                }
                .into_input(c),
                None => continue,
            },
            5 => match message(&mut s, false) {
                Some(req) => Exchange::Unanswered {
                    request: timed(req, t, t + 10_000),
                }
                .into_input(c),
                None => continue,
            },
            6 => match message(&mut s, true) {
                Some(rep) => Exchange::OrphanReply {
                    reply: timed(rep, t, t + 5_000),
                }
                .into_input(c),
                None => continue,
            },
            7 => Input::ConnClosed { conn: c, ts_ns: t },
            8 => Input::ProcessExited {
                pid: c.pid,
                ts_ns: t,
            },
            _ => Input::Tick {
                now_ns: t + u64::from(s.u8()) * 100 * MS,
            },
        };
        let now = input_time(&input).max(queue.now_ns());
        emits.clear();
        tracker.handle(&input, &mut emits);
        for e in emits.drain(..) {
            reported.insert(e.watch_id().to_owned());
            match e {
                Emit::Changed { watch_id } => {
                    assert!(
                        tracker.snapshot(&watch_id).is_some(),
                        "a changed operation is held by the tracker"
                    );
                    queue.changed(&watch_id, now);
                }
                Emit::Ended(record) => {
                    assert!(
                        tracker.snapshot(&record.watch_id).is_none(),
                        "an ended operation is not held"
                    );
                    queue.ended(record, now);
                }
            }
        }
        assert!(
            tracker.open_operations() <= max_open,
            "open operations unbounded"
        );
        assert_eq!(
            queue.open_len(),
            tracker.open_operations(),
            "the queue holds the tracker's open operations, no more"
        );
        for r in queue.advance(now, |id| tracker.snapshot(id)) {
            checker.check(&r);
        }
    }
    for r in queue.flush_all(t.saturating_add(3_600_000 * MS), |id| tracker.snapshot(id)) {
        checker.check(&r);
    }
    assert_eq!(queue.open_len() + queue.ready_len(), 0);
    let lost: Vec<_> = reported.difference(&checker.written).collect();
    assert!(lost.is_empty(), "operations never written: {lost:?}");
});

trait IntoInput {
    fn into_input(self, conn: Arc<ConnInfo>) -> Input;
}

impl IntoInput for Exchange {
    fn into_input(self, conn: Arc<ConnInfo>) -> Input {
        Input::Exchange {
            conn,
            exchange: self,
        }
    }
}
