//! A command view of any message: whatever opcode carried a request, the ops layer reads it as
//! `{<name>: ..., $db: ...}` plus kind 1 document sequences, and reads any reply as one reply
//! document. Legacy opcodes are turned into the command they stand for (OP_QUERY on `db.$cmd`
//! is a command, on a collection a `find`; OP_GET_MORE a `getMore`; OP_INSERT an `insert`; ...).

use bson::{
    raw::{cstr, CStr},
    rawdoc, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf,
};

use crate::wire::{reply_flags, Body, Compressor, Doc, Message, OpQuery, OpReply, Sequence};

/// How the OP_REPLY answering a legacy request is to be read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LegacyReply {
    /// The first document is the command's reply (OP_QUERY on `db.$cmd`).
    Command,
    /// The documents are the first batch of a cursor (OP_QUERY on a collection).
    FirstBatch,
    /// The documents are a further batch (OP_GET_MORE).
    NextBatch,
}

/// A request read as a command.
#[derive(Clone, Debug)]
pub struct CommandView {
    /// The command name as sent (first key of the body), e.g. `find`, `getMore`.
    pub name: String,
    /// `$db`, or the database of the legacy namespace.
    pub db: String,
    /// The command document (synthesised for legacy opcodes).
    pub body: Doc,
    /// Kind 1 sequences (for OP_INSERT, the inserted documents as `documents`).
    pub sequences: Vec<Sequence>,
    /// No reply will come (OP_MSG moreToCome, or a legacy write).
    pub more_to_come: bool,
    /// Set for legacy requests: how to read the OP_REPLY.
    pub legacy: Option<LegacyReply>,
    /// Compressor of the request, when it travelled compressed (noop is not compression).
    pub compressor: Option<Compressor>,
}

impl CommandView {
    /// Reads a request message. `None` for a reply or a message with no usable command.
    pub fn from_message(msg: &Message) -> Option<Self> {
        let compressor = msg.compressor.filter(|c| *c != Compressor::Noop);
        let mut view = match &msg.body {
            Body::Msg(m) => {
                let name = first_key(m.body.raw())?;
                let db = get_str(m.body.raw(), "$db").unwrap_or_default().to_owned();
                CommandView {
                    name,
                    db,
                    body: m.body.clone(),
                    sequences: m.sequences.clone(),
                    more_to_come: m.more_to_come(),
                    legacy: None,
                    compressor: None,
                }
            }
            Body::Query(q) => from_query(q)?,
            Body::GetMore(g) => {
                let (db, coll) = split_ns(&g.full_collection_name);
                let body = rawdoc! { "getMore": g.cursor_id, "collection": coll, "$db": db };
                CommandView {
                    name: "getMore".into(),
                    db: db.to_owned(),
                    body: Doc::from(body),
                    sequences: Vec::new(),
                    more_to_come: false,
                    legacy: Some(LegacyReply::NextBatch),
                    compressor: None,
                }
            }
            Body::KillCursors(k) => {
                let mut ids = RawArrayBuf::new();
                for id in &k.cursor_ids {
                    ids.push(*id);
                }
                // OP_KILL_CURSORS names no namespace; the cursor table knows it.
                let body = rawdoc! { "killCursors": "", "cursors": ids };
                CommandView {
                    name: "killCursors".into(),
                    db: String::new(),
                    body: Doc::from(body),
                    sequences: Vec::new(),
                    more_to_come: true,
                    legacy: None,
                    compressor: None,
                }
            }
            Body::Insert(i) => legacy_write(
                cstr!("insert"),
                "documents",
                &i.full_collection_name,
                i.documents.clone(),
            ),
            Body::Update(u) => {
                let stmt = rawdoc! {
                    "q": u.selector.raw().to_owned(),
                    "u": u.update.raw().to_owned(),
                    "upsert": u.flags & 1 != 0,
                    "multi": u.flags & 2 != 0,
                };
                legacy_write(
                    cstr!("update"),
                    "updates",
                    &u.full_collection_name,
                    vec![Doc::from(stmt)],
                )
            }
            Body::Delete(d) => {
                let limit = if d.flags & 1 != 0 { 1 } else { 0 };
                let stmt = rawdoc! { "q": d.selector.raw().to_owned(), "limit": limit };
                legacy_write(
                    cstr!("delete"),
                    "deletes",
                    &d.full_collection_name,
                    vec![Doc::from(stmt)],
                )
            }
            Body::Reply(_) => return None,
        };
        view.compressor = compressor;
        Some(view)
    }

    pub fn raw(&self) -> &RawDocument {
        self.body.raw()
    }

    /// The documents of a statement list: the body's array `key`, or the kind 1 sequence
    /// of that name (drivers send large batches as sequences).
    pub fn statements(&self, key: &str) -> Vec<StatementRef<'_>> {
        if let Some(seq) = self.sequences.iter().find(|s| s.identifier == key) {
            return seq
                .documents
                .iter()
                .map(|d| StatementRef(d.raw()))
                .collect();
        }
        match self.raw().get(key) {
            Ok(Some(RawBsonRef::Array(a))) => a
                .into_iter()
                .filter_map(|v| match v {
                    Ok(RawBsonRef::Document(d)) => Some(StatementRef(d)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One statement document of a write command (`updates`, `deletes`, `ops`, ...).
#[derive(Copy, Clone, Debug)]
pub struct StatementRef<'a>(pub &'a RawDocument);

fn from_query(q: &OpQuery) -> Option<CommandView> {
    let (db, coll) = split_ns(&q.full_collection_name);
    let raw = q.query.raw();
    // mongos-style wrapping: {$query: {...}, $readPreference: ...}
    let inner = match raw.get("$query") {
        Ok(Some(RawBsonRef::Document(d))) => Some(d),
        _ => None,
    };
    if coll == "$cmd" {
        let cmd = inner.unwrap_or(raw);
        let name = first_key(cmd)?;
        let body = match inner {
            Some(d) => Doc::from(d.to_owned()),
            None => q.query.clone(),
        };
        return Some(CommandView {
            name,
            db: db.to_owned(),
            body,
            sequences: Vec::new(),
            more_to_come: false,
            legacy: Some(LegacyReply::Command),
            compressor: None,
        });
    }
    let filter: RawDocumentBuf = match inner {
        Some(d) => d.to_owned(),
        None => raw.to_owned(),
    };
    let body = rawdoc! { "find": coll, "filter": filter, "$db": db };
    Some(CommandView {
        name: "find".into(),
        db: db.to_owned(),
        body: Doc::from(body),
        sequences: Vec::new(),
        more_to_come: false,
        legacy: Some(LegacyReply::FirstBatch),
        compressor: None,
    })
}

/// A reply read as one reply document.
#[derive(Clone, Debug)]
pub struct ReplyView {
    pub body: Doc,
    /// The message says more replies follow (exhaust).
    pub more_to_come: bool,
}

impl ReplyView {
    /// Reads a reply. `legacy` is the request's [`CommandView::legacy`] (how to read OP_REPLY).
    pub fn from_message(msg: &Message, legacy: Option<LegacyReply>) -> Option<Self> {
        match &msg.body {
            Body::Msg(m) => Some(ReplyView {
                body: m.body.clone(),
                more_to_come: m.more_to_come(),
            }),
            Body::Reply(r) => Some(ReplyView {
                body: from_op_reply(r, legacy.unwrap_or(LegacyReply::Command))?,
                more_to_come: false,
            }),
            _ => None,
        }
    }

    pub fn raw(&self) -> &RawDocument {
        self.body.raw()
    }
}

fn from_op_reply(r: &OpReply, legacy: LegacyReply) -> Option<Doc> {
    if r.flags & reply_flags::QUERY_FAILURE != 0 {
        let first = r.documents.first();
        let errmsg = first
            .and_then(|d| get_str(d.raw(), "$err"))
            .unwrap_or("query failure");
        let code = first.and_then(|d| get_i64(d.raw(), "code")).unwrap_or(0);
        return Some(Doc::from(
            rawdoc! { "ok": 0.0, "errmsg": errmsg, "code": code },
        ));
    }
    if r.flags & reply_flags::CURSOR_NOT_FOUND != 0 {
        return Some(Doc::from(rawdoc! {
            "ok": 0.0, "errmsg": "cursor not found", "code": 43, "codeName": "CursorNotFound",
        }));
    }
    match legacy {
        LegacyReply::Command => r.documents.first().cloned(),
        LegacyReply::FirstBatch | LegacyReply::NextBatch => {
            let mut batch = RawArrayBuf::new();
            for d in &r.documents {
                batch.push(d.raw().to_owned());
            }
            let cursor = if legacy == LegacyReply::FirstBatch {
                rawdoc! { "firstBatch": batch, "id": r.cursor_id }
            } else {
                rawdoc! { "nextBatch": batch, "id": r.cursor_id }
            };
            Some(Doc::from(rawdoc! { "cursor": cursor, "ok": 1.0 }))
        }
    }
}

/// A legacy write (OP_INSERT, OP_UPDATE, OP_DELETE) as the command it stands for:
/// `{<name>: coll, $db: db}` with its statements as the `identifier` sequence. It never gets a
/// reply.
fn legacy_write(
    name: &'static CStr,
    identifier: &str,
    full_ns: &str,
    documents: Vec<Doc>,
) -> CommandView {
    let (db, coll) = split_ns(full_ns);
    CommandView {
        name: name.as_str().into(),
        db: db.to_owned(),
        body: Doc::from(rawdoc! { (name): coll, "$db": db }),
        sequences: vec![Sequence {
            identifier: identifier.into(),
            documents,
        }],
        more_to_come: true,
        legacy: None,
        compressor: None,
    }
}

/// `db.coll.name` -> (`db`, `coll.name`). No dot: the whole string is the database.
pub fn split_ns(ns: &str) -> (&str, &str) {
    match ns.split_once('.') {
        Some((db, coll)) => (db, coll),
        None => (ns, ""),
    }
}

/// The first key of a document (a command's name).
pub fn first_key(d: &RawDocument) -> Option<String> {
    match d.into_iter().next() {
        Some(Ok((k, _))) => Some(k.as_str().to_owned()),
        _ => None,
    }
}

/// The value of the first key.
pub fn first_value(d: &RawDocument) -> Option<RawBsonRef<'_>> {
    match d.into_iter().next() {
        Some(Ok((_, v))) => Some(v),
        _ => None,
    }
}

pub fn get<'a>(d: &'a RawDocument, key: &str) -> Option<RawBsonRef<'a>> {
    d.get(key).ok().flatten()
}

/// [`get`] of several keys in one pass over `d`, with `get`'s answers: each key's first
/// value (none if that value does not parse), and none for keys after a malformed element.
/// Every reply is looked at for `ok`, `n` and its errors, and a pass per key was a tenth of the
/// daemon's decoding.
pub fn get_each<'a, const N: usize>(
    d: &'a RawDocument,
    keys: [&str; N],
) -> [Option<RawBsonRef<'a>>; N] {
    let mut found = [None; N];
    let mut seen = [false; N];
    let mut left = N;
    for elem in d.iter_elements() {
        let Ok(elem) = elem else { break };
        let k = elem.key().as_str();
        let Some(i) = keys.iter().position(|want| *want == k) else {
            continue;
        };
        if seen[i] {
            continue;
        }
        seen[i] = true;
        found[i] = elem.value().ok();
        left -= 1;
        if left == 0 {
            break;
        }
    }
    found
}

pub fn get_str<'a>(d: &'a RawDocument, key: &str) -> Option<&'a str> {
    match get(d, key) {
        Some(RawBsonRef::String(s)) => Some(s),
        _ => None,
    }
}

pub fn get_doc<'a>(d: &'a RawDocument, key: &str) -> Option<&'a RawDocument> {
    match get(d, key) {
        Some(RawBsonRef::Document(x)) => Some(x),
        _ => None,
    }
}

/// Any numeric BSON value as i64 (MongoDB sends counts as int32, int64 or double).
pub fn as_i64(v: RawBsonRef<'_>) -> Option<i64> {
    match v {
        RawBsonRef::Int32(i) => Some(i as i64),
        RawBsonRef::Int64(i) => Some(i),
        RawBsonRef::Double(f) if f.is_finite() => Some(f as i64),
        _ => None,
    }
}

pub fn get_i64(d: &RawDocument, key: &str) -> Option<i64> {
    get(d, key).and_then(as_i64)
}

/// BSON truthiness as the server reads `ok`, `upsert`, `remove`: bool, or non-zero number.
pub fn truthy(v: Option<RawBsonRef<'_>>) -> bool {
    match v {
        Some(RawBsonRef::Boolean(b)) => b,
        Some(RawBsonRef::Int32(i)) => i != 0,
        Some(RawBsonRef::Int64(i)) => i != 0,
        Some(RawBsonRef::Double(f)) => f != 0.0,
        _ => false,
    }
}

/// Number of elements of an array, without materialising them (stops at the first bad one).
pub fn array_len(v: Option<RawBsonRef<'_>>) -> Option<i64> {
    match v {
        Some(RawBsonRef::Array(a)) => Some(a.into_iter().take_while(|e| e.is_ok()).count() as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Header, OpDelete, OpInsert, OpUpdate};

    fn view(body: Body) -> CommandView {
        let header = Header {
            length: 0,
            request_id: 1,
            response_to: 0,
            op_code: 0,
        };
        let msg = Message {
            header,
            wire_len: 0,
            compressor: None,
            body,
        };
        CommandView::from_message(&msg).unwrap()
    }

    /// The legacy writes read as the commands they stand for: the command document, the
    /// statements as the command's sequence, and no reply to wait for.
    #[test]
    fn legacy_writes_read_as_their_commands() {
        let cases = [
            (
                view(Body::Insert(OpInsert {
                    flags: 0,
                    full_collection_name: "app.users".into(),
                    documents: vec![rawdoc! { "a": 1 }.into(), rawdoc! { "a": 2 }.into()],
                })),
                "insert",
                "documents",
                vec![rawdoc! { "a": 1 }, rawdoc! { "a": 2 }],
            ),
            (
                view(Body::Update(OpUpdate {
                    full_collection_name: "app.users".into(),
                    flags: 3,
                    selector: rawdoc! { "a": 1 }.into(),
                    update: rawdoc! { "$set": { "b": 2 } }.into(),
                })),
                "update",
                "updates",
                vec![rawdoc! { "q": { "a": 1 }, "u": { "$set": { "b": 2 } },
                "upsert": true, "multi": true }],
            ),
            (
                view(Body::Delete(OpDelete {
                    full_collection_name: "app.users".into(),
                    flags: 1,
                    selector: rawdoc! { "a": 1 }.into(),
                })),
                "delete",
                "deletes",
                vec![rawdoc! { "q": { "a": 1 }, "limit": 1 }],
            ),
        ];
        for (v, name, identifier, statements) in cases {
            assert_eq!((v.name.as_str(), v.db.as_str()), (name, "app"));
            let body = v.raw();
            assert_eq!(first_key(body).as_deref(), Some(name));
            assert_eq!(get_str(body, name), Some("users"));
            assert_eq!(get_str(body, "$db"), Some("app"));
            assert!(v.more_to_come && v.legacy.is_none());
            assert_eq!(v.sequences.len(), 1);
            assert_eq!(v.sequences[0].identifier, identifier);
            let docs: Vec<RawDocumentBuf> = v.sequences[0]
                .documents
                .iter()
                .map(|d| d.raw().to_owned())
                .collect();
            assert_eq!(docs, statements);
        }
    }

    /// One element's bytes: a type, a key (some not UTF-8), and a value that is well formed
    /// for its type or is any bytes at all.
    fn element() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just(b"ok".to_vec()),
            Just(b"n".to_vec()),
            Just(b"writeErrors".to_vec()),
            Just(b"a".to_vec()),
            Just(b"\xff\xfe".to_vec()),
        ];
        let value = prop_oneof![
            any::<i32>().prop_map(|i| (0x10u8, i.to_le_bytes().to_vec())),
            any::<f64>().prop_map(|f| (0x01, f.to_le_bytes().to_vec())),
            any::<bool>().prop_map(|b| (0x08, vec![u8::from(b)])),
            "[a-z]{0,4}".prop_map(|s| {
                let mut v = (s.len() as i32 + 1).to_le_bytes().to_vec();
                v.extend_from_slice(s.as_bytes());
                v.push(0);
                (0x02, v)
            }),
            Just((0x03, vec![5, 0, 0, 0, 0])),
            Just((0x04, vec![5, 0, 0, 0, 0])),
            // Bytes that are no value of the type (too short, a bad length, a bad string).
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..6)),
            Just((0x02, vec![2, 0, 0, 0, 0xff, 0])),
        ];
        (key, value).prop_map(|(k, (t, v))| {
            let mut e = vec![t];
            e.extend_from_slice(&k);
            e.push(0);
            e.extend_from_slice(&v);
            e
        })
    }

    proptest::proptest! {
        /// One pass finds what a `get` per key finds, in well and badly formed documents.
        #[test]
        fn get_each_answers_as_get(elements in proptest::collection::vec(element(), 0..8)) {
            let body: Vec<u8> = elements.concat();
            let mut bytes = ((body.len() + 5) as i32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&body);
            bytes.push(0);
            let d = RawDocument::from_bytes(&bytes).unwrap();
            let keys = ["ok", "n", "writeErrors", "missing"];
            let each = get_each(d, keys);
            for (k, v) in keys.iter().zip(each) {
                proptest::prop_assert_eq!(v, get(d, k), "{}", k);
            }
        }
    }
}
