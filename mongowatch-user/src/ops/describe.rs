//! What a command is about (database, collection, filter) and what its reply says (counts,
//! cursor, error), per the audit record contract.

use bson::{RawBsonRef, RawDocument};

use super::command::{
    array_len, as_i64, first_value, get, get_doc, get_each, get_i64, get_str, split_ns, truthy,
    CommandView,
};
use crate::record::{ErrorInfo, Json, Record};

/// Commands whose first value is the collection name.
const COLLECTION_COMMANDS: &[&str] = &[
    "find",
    "insert",
    "update",
    "delete",
    "aggregate",
    "count",
    "distinct",
    "findAndModify",
    "findandmodify",
    "killCursors",
    "listIndexes",
    "createIndexes",
    "dropIndexes",
    "deleteIndexes",
    "drop",
    "create",
    "collMod",
    "validate",
    "collStats",
    "compact",
    "reIndex",
    "mapReduce",
    "mapreduce",
    "geoNear",
    "geoSearch",
    "convertToCapped",
    "cloneCollectionAsCapped",
    "createSearchIndexes",
    "dropSearchIndex",
    "updateSearchIndex",
    "listSearchIndexes",
    "analyze",
    "planCacheClear",
    "planCacheClearFilters",
    "planCacheListFilters",
    "planCacheSetFilter",
];

/// Commands whose first value is a whole namespace `db.collection`.
const NAMESPACE_COMMANDS: &[&str] = &[
    "renameCollection",
    "shardCollection",
    "dataSize",
    "splitVector",
    "refineCollectionShardKey",
    "reshardCollection",
    "moveCollection",
    "unshardCollection",
    "cleanupOrphaned",
    "analyzeShardKey",
    "configureQueryAnalyzer",
    "split",
    "moveChunk",
    "mergeChunks",
    "clearJumboFlag",
];

/// Handshake, authentication and monitoring commands: not audit records by default.
pub const HEARTBEAT_COMMANDS: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "saslStart",
    "saslContinue",
    "authenticate",
    "getnonce",
    "logout",
    "endSessions",
];

pub fn is_heartbeat(name: &str) -> bool {
    HEARTBEAT_COMMANDS.contains(&name)
}

/// Database, collection and filter of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Described {
    pub db: String,
    pub collection: Option<String>,
    pub filter: Option<Json>,
}

pub fn describe(cmd: &CommandView) -> Described {
    describe_doc(cmd, cmd.raw(), &cmd.name, 0)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// One filter value, or an array of them when several statements carry one.
fn one_or_many(mut v: Vec<Json>) -> Option<Json> {
    match v.len() {
        0 => None,
        1 => v.pop(),
        _ => Some(Json::Array(v)),
    }
}

fn describe_doc(cmd: &CommandView, body: &RawDocument, name: &str, depth: u8) -> Described {
    let mut d = Described {
        db: cmd.db.clone(),
        ..Default::default()
    };
    let first = first_value(body);
    if COLLECTION_COMMANDS.contains(&name) {
        if let Some(RawBsonRef::String(c)) = first {
            d.collection = non_empty(c);
        }
    } else if NAMESPACE_COMMANDS.contains(&name) {
        if let Some(RawBsonRef::String(ns)) = first {
            let (db, coll) = split_ns(ns);
            if !db.is_empty() {
                d.db = db.to_owned();
            }
            d.collection = non_empty(coll);
        }
    }
    let doc_or_empty = |key: &str| match get(body, key) {
        Some(v) => Some(Json::from_bson(v)),
        None => Some(Json::Object(Vec::new())),
    };
    match name {
        "find" => d.filter = doc_or_empty("filter"),
        "count" | "distinct" | "findAndModify" | "findandmodify" => {
            d.filter = doc_or_empty("query")
        }
        "mapReduce" | "mapreduce" => d.filter = get(body, "query").map(Json::from_bson),
        "aggregate" => d.filter = get(body, "pipeline").map(Json::from_bson),
        "update" | "delete" if depth == 0 => {
            let key = if name == "update" {
                "updates"
            } else {
                "deletes"
            };
            d.filter = one_or_many(
                cmd.statements(key)
                    .iter()
                    .filter_map(|s| get(s.0, "q").map(Json::from_bson))
                    .collect(),
            );
        }
        "update" | "delete" => {
            // Inside explain: the statements are in the inner document.
            let key = if name == "update" {
                "updates"
            } else {
                "deletes"
            };
            if let Some(RawBsonRef::Array(a)) = get(body, key) {
                d.filter = one_or_many(
                    a.into_iter()
                        .map_while(|e| e.ok())
                        .filter_map(|e| match e {
                            RawBsonRef::Document(s) => get(s, "q").map(Json::from_bson),
                            _ => None,
                        })
                        .collect(),
                );
            }
        }
        "getMore" => d.collection = get_str(body, "collection").and_then(non_empty),
        "explain" if depth == 0 => {
            if let Some(RawBsonRef::Document(inner)) = first {
                if let Some(inner_name) = super::command::first_key(inner) {
                    let i = describe_doc(cmd, inner, &inner_name, depth + 1);
                    d.collection = i.collection;
                    d.filter = i.filter;
                    d.db = i.db;
                }
            }
        }
        "bulkWrite" => {
            let ns: Vec<String> = cmd
                .statements("nsInfo")
                .iter()
                .filter_map(|s| get_str(s.0, "ns").map(str::to_owned))
                .collect();
            if let [only] = ns.as_slice() {
                let (db, coll) = split_ns(only);
                if !db.is_empty() {
                    d.db = db.to_owned();
                }
                d.collection = non_empty(coll);
            }
            d.filter = one_or_many(
                cmd.statements("ops")
                    .iter()
                    .filter(|s| get(s.0, "update").is_some() || get(s.0, "delete").is_some())
                    .filter_map(|s| get(s.0, "filter").map(Json::from_bson))
                    .collect(),
            );
        }
        _ => {}
    }
    d
}

/// The cursor of a reply: (id, length of firstBatch or nextBatch).
pub fn cursor_of(reply: &RawDocument) -> Option<(i64, Option<i64>)> {
    let c = get_doc(reply, "cursor")?;
    let id = get_i64(c, "id").unwrap_or(0);
    let batch = array_len(get(c, "firstBatch")).or_else(|| array_len(get(c, "nextBatch")));
    Some((id, batch))
}

/// `ok` of a reply; a reply without `ok` (a legacy batch) is a success.
pub fn reply_ok(reply: &RawDocument) -> bool {
    ok_value(get(reply, "ok"))
}

fn ok_value(ok: Option<RawBsonRef<'_>>) -> bool {
    ok.is_none() || truthy(ok)
}

/// What a reply says of its success: `ok`, `n`, `writeErrors`, `writeConcernError`.
struct Outcome<'a> {
    ok: bool,
    n: Option<RawBsonRef<'a>>,
    write_errors: Option<RawBsonRef<'a>>,
    write_concern_error: Option<RawBsonRef<'a>>,
}

impl<'a> Outcome<'a> {
    fn of(reply: &'a RawDocument) -> Self {
        let [ok, n, write_errors, write_concern_error] =
            get_each(reply, ["ok", "n", "writeErrors", "writeConcernError"]);
        Self {
            ok: ok_value(ok),
            n,
            write_errors,
            write_concern_error,
        }
    }
}

fn error_from(d: &RawDocument, write_errors: Option<u64>) -> ErrorInfo {
    ErrorInfo {
        code: get_i64(d, "code"),
        code_name: get_str(d, "codeName").map(str::to_owned),
        errmsg: get_str(d, "errmsg").map(str::to_owned),
        write_errors,
    }
}

/// The first error a reply reports: a command error, write errors, a write concern error,
/// or the failed operations of a bulkWrite.
pub fn error_of(name: &str, reply: &RawDocument) -> Option<ErrorInfo> {
    error_in(name, reply, &Outcome::of(reply))
}

fn error_in(name: &str, reply: &RawDocument, outcome: &Outcome<'_>) -> Option<ErrorInfo> {
    if !outcome.ok {
        return Some(error_from(reply, None));
    }
    if let Some(RawBsonRef::Array(a)) = outcome.write_errors {
        let n = array_len(Some(RawBsonRef::Array(a))).unwrap_or(0);
        if n > 0 {
            let first = a.into_iter().find_map(|e| match e {
                Ok(RawBsonRef::Document(d)) => Some(d),
                _ => None,
            });
            return Some(match first {
                Some(d) => error_from(d, Some(n as u64)),
                None => ErrorInfo {
                    code: None,
                    code_name: None,
                    errmsg: None,
                    write_errors: Some(n as u64),
                },
            });
        }
    }
    if let Some(RawBsonRef::Document(wce)) = outcome.write_concern_error {
        return Some(error_from(wce, None));
    }
    if name == "bulkWrite" {
        let n = get_i64(reply, "nErrors").unwrap_or(0);
        if n > 0 {
            let failed = get_doc(reply, "cursor").and_then(|c| match get(c, "firstBatch") {
                Some(RawBsonRef::Array(a)) => a.into_iter().find_map(|e| match e {
                    Ok(RawBsonRef::Document(d)) if !reply_ok(d) => Some(d),
                    _ => None,
                }),
                _ => None,
            });
            let n = Some(n as u64);
            return Some(match failed {
                Some(d) => error_from(d, n),
                None => ErrorInfo {
                    code: None,
                    code_name: None,
                    errmsg: None,
                    write_errors: n,
                },
            });
        }
    }
    None
}

/// Fills the counts and the error of a new operation's record from its first reply.
/// Cursor batches are counted by the caller.
pub fn apply_reply(rec: &mut Record, cmd: &CommandView, reply: &RawDocument) {
    let name = cmd.name.as_str();
    let outcome = Outcome::of(reply);
    rec.error = error_in(name, reply, &outcome);
    if !outcome.ok {
        return;
    }
    let n = outcome.n.and_then(as_i64);
    match name {
        "count" => rec.matched = n,
        "distinct" => rec.matched = array_len(get(reply, "values")),
        "insert" => rec.inserted = n,
        "update" => {
            let ups = array_len(get(reply, "upserted")).unwrap_or(0);
            rec.upserted = Some(ups);
            rec.matched = n.map(|n| n.saturating_sub(ups));
            rec.modified = get_i64(reply, "nModified");
        }
        "delete" => rec.deleted = n,
        "findAndModify" | "findandmodify" => {
            if let Some(leo) = get_doc(reply, "lastErrorObject") {
                let leo_n = get_i64(leo, "n").unwrap_or(0);
                if truthy(get(cmd.raw(), "remove")) {
                    rec.deleted = Some(leo_n);
                } else {
                    rec.matched = Some(if truthy(get(leo, "updatedExisting")) {
                        leo_n
                    } else {
                        0
                    });
                    rec.upserted = Some(i64::from(get(leo, "upserted").is_some()));
                }
            }
        }
        "bulkWrite" => {
            rec.inserted = get_i64(reply, "nInserted");
            rec.matched = get_i64(reply, "nMatched");
            rec.modified = get_i64(reply, "nModified");
            rec.upserted = get_i64(reply, "nUpserted");
            rec.deleted = get_i64(reply, "nDeleted");
        }
        _ => {}
    }
}

/// The user a SCRAM or PLAIN first message names, or the `user` of an X.509 authenticate.
/// The payload itself is never kept or logged.
pub fn auth_user(doc: &RawDocument) -> Option<String> {
    let mechanism = get_str(doc, "mechanism").unwrap_or("");
    if let Some(RawBsonRef::Binary(b)) = get(doc, "payload") {
        if mechanism.starts_with("SCRAM") {
            return scram_user(b.bytes);
        }
        if mechanism == "PLAIN" {
            return plain_user(b.bytes);
        }
        return None;
    }
    get_str(doc, "user").and_then(non_empty)
}

/// `n,,n=<user>,r=<nonce>` (gs2 header, then the client-first-message-bare).
fn scram_user(payload: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(payload).ok()?;
    let mut parts = s.split(',');
    // gs2-cbind-flag and the optional authzid.
    parts.next()?;
    parts.next()?;
    let name = parts.find_map(|p| p.strip_prefix("n="))?;
    non_empty(&name.replace("=2C", ",").replace("=3D", "="))
}

/// `[authzid] NUL authcid NUL passwd`: the authcid.
fn plain_user(payload: &[u8]) -> Option<String> {
    let mut parts = payload.split(|b| *b == 0);
    parts.next()?;
    let user = parts.next()?;
    parts.next()?;
    non_empty(std::str::from_utf8(user).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_first_message() {
        assert_eq!(scram_user(b"n,,n=alice,r=abc").as_deref(), Some("alice"));
        assert_eq!(
            scram_user(b"n,a=x,n=a=2Cb=3Dc,r=abc").as_deref(),
            Some("a,b=c")
        );
        assert_eq!(scram_user(b"garbage"), None);
        assert_eq!(scram_user(&[0xff, 0xfe]), None);
    }

    #[test]
    fn plain_message() {
        assert_eq!(plain_user(b"\0bob\0secret").as_deref(), Some("bob"));
        assert_eq!(plain_user(b"bob"), None);
    }
}
