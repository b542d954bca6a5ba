//! The record's JSON line, written straight into a buffer.
//!
//! The `Serialize` derive stays the definition of the form (OTLP and tests use it); this is
//! the same bytes without serde's per-field machinery. At 100,000 records a second the derive
//! escaped all 35 keys of every record and made a string for each time, and that was a sixth
//! of the daemon's CPU. A property test holds the two together: a field added to the record
//! and not here fails it.

use super::{secs, Place, Record};

impl Record {
    /// The record as one JSON line (no newline), appended to `out`: the contract's form, keys
    /// in contract order, byte for byte what `serde_json::to_writer(out, self)` writes.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let r = self;
        out.extend_from_slice(b"{\"WatchID\":");
        push_str(out, &r.watch_id);
        out.extend_from_slice(b",\"StartTime\":\"");
        write_time(r.start_ns, out);
        out.extend_from_slice(b"\",\"EndTime\":\"");
        write_time(r.end_ns, out);
        out.extend_from_slice(b"\",\"Duration\":");
        push_serde(out, &secs(r.duration_ns));
        out.extend_from_slice(b",\"DB\":");
        push_str(out, &r.db);
        out.extend_from_slice(b",\"Collection\":");
        push_opt_str(out, r.collection.as_deref());
        out.extend_from_slice(b",\"Operation\":");
        push_str(out, &r.operation);
        out.extend_from_slice(b",\"Filter\":");
        push_opt_serde(out, r.filter.as_ref());
        for (key, count) in [
            (&b",\"MatchedCount\":"[..], r.matched),
            (b",\"InsertedCount\":", r.inserted),
            (b",\"UpsertedCount\":", r.upserted),
            (b",\"ModifiedCount\":", r.modified),
            (b",\"DeletedCount\":", r.deleted),
        ] {
            out.extend_from_slice(key);
            push_opt_int(out, count);
        }
        out.extend_from_slice(b",\"Iteration\":");
        push_int(out, r.iteration);
        out.extend_from_slice(b",\"State\":\"");
        out.extend_from_slice(r.state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"CursorId\":");
        push_opt_int(out, r.cursor_id);
        out.extend_from_slice(b",\"Error\":");
        push_opt_serde(out, r.error.as_ref());
        out.extend_from_slice(b",\"Pid\":");
        push_int(out, r.pid);
        out.extend_from_slice(b",\"Comm\":");
        push_str(out, &r.comm);
        out.extend_from_slice(b",\"Client\":");
        push_str(out, &r.client);
        out.extend_from_slice(b",\"Server\":");
        push_str(out, &r.server);
        out.extend_from_slice(b",\"User\":");
        push_opt_str(out, r.user.as_deref());
        out.extend_from_slice(b",\"AppName\":");
        push_opt_str(out, r.app_name.as_deref());
        out.extend_from_slice(b",\"Driver\":");
        push_opt_str(out, r.driver.as_deref());
        out.extend_from_slice(b",\"Compression\":");
        push_opt_str(out, r.compression);
        out.extend_from_slice(if r.tls {
            b",\"Tls\":true,\"RequestBytes\":"
        } else {
            b",\"Tls\":false,\"RequestBytes\":"
        });
        push_int(out, r.request_bytes);
        out.extend_from_slice(b",\"ReplyBytes\":");
        push_int(out, r.reply_bytes);
        let Place {
            container_id,
            node,
            side,
            k8s_namespace,
            k8s_pod,
            k8s_pod_uid,
            k8s_container,
        } = &r.place;
        out.extend_from_slice(b",\"ContainerId\":");
        push_opt_str(out, container_id.as_deref());
        out.extend_from_slice(b",\"Node\":");
        push_opt_str(out, node.as_deref());
        out.extend_from_slice(b",\"Side\":\"");
        out.extend_from_slice(side.as_str().as_bytes());
        out.extend_from_slice(b"\",\"K8sNamespace\":");
        push_opt_str(out, k8s_namespace.as_deref());
        out.extend_from_slice(b",\"K8sPod\":");
        push_opt_str(out, k8s_pod.as_deref());
        out.extend_from_slice(b",\"K8sPodUid\":");
        push_opt_str(out, k8s_pod_uid.as_deref());
        out.extend_from_slice(b",\"K8sContainer\":");
        push_opt_str(out, k8s_container.as_deref());
        out.push(b'}');
    }
}

/// RFC 3339 UTC with microseconds (`2026-11-24T15:29:00.123456Z`), appended to `out`.
/// Any u64 of nanoseconds is a year below 2555: four digits always.
pub fn write_time(ns: u64, out: &mut Vec<u8>) {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1_000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut b[0..4], y);
    put_digits(&mut b[5..7], m);
    put_digits(&mut b[8..10], d);
    put_digits(&mut b[11..13], sod / 3600);
    put_digits(&mut b[14..16], sod / 60 % 60);
    put_digits(&mut b[17..19], sod % 60);
    put_digits(&mut b[20..26], micros);
    out.extend_from_slice(&b);
}

/// `v`'s last `to.len()` decimal digits into `to`.
fn put_digits(to: &mut [u8], mut v: u64) {
    for c in to.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// (year, month, day) of a day count since 1970-01-01, in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A JSON string. Most need no escape and are copied as they are; the rest go through
/// serde_json, so escaping has one definition.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        push_serde(out, s);
    }
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_opt_int(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => push_int(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_serde(out: &mut Vec<u8>, v: Option<&impl serde::Serialize>) {
    match v {
        Some(v) => push_serde(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// What serde_json writes for `v`. It cannot fail here (a Vec takes every write; these values
/// have no map with non-string keys); were it to, the value stands as null and the line stays
/// valid JSON.
fn push_serde(out: &mut Vec<u8>, v: &(impl serde::Serialize + ?Sized)) {
    let before = out.len();
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.truncate(before);
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, SecondsFormat};
    use proptest::prelude::*;

    use super::*;
    use crate::record::{ErrorInfo, Json, Side, State};

    fn opt_arc() -> impl Strategy<Value = Option<Arc<str>>> {
        proptest::option::of(any::<String>().prop_map(Arc::from))
    }

    fn json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::Int),
            any::<f64>().prop_map(Json::Float),
            any::<String>().prop_map(Json::Str),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::vec((any::<String>(), inner), 0..4).prop_map(Json::Object),
            ]
        })
    }

    fn record() -> impl Strategy<Value = Record> {
        let times = (any::<String>(), any::<u64>(), any::<u64>(), any::<u64>());
        let op = (
            any::<String>(),
            proptest::option::of(any::<String>()),
            any::<String>(),
            proptest::option::of(json()),
            proptest::array::uniform5(proptest::option::of(any::<i64>())),
            any::<u32>(),
            prop_oneof![
                Just(State::Final),
                Just(State::Closed),
                Just(State::Timeout)
            ],
            proptest::option::of(any::<i64>()),
            proptest::option::of(
                (
                    proptest::option::of(any::<i64>()),
                    proptest::option::of(any::<String>()),
                    proptest::option::of(any::<String>()),
                    proptest::option::of(any::<u64>()),
                )
                    .prop_map(|(code, code_name, errmsg, write_errors)| {
                        ErrorInfo {
                            code,
                            code_name,
                            errmsg,
                            write_errors,
                        }
                    }),
            ),
        );
        let conn = (
            any::<u32>(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
            opt_arc(),
            opt_arc(),
            opt_arc(),
            proptest::option::of(prop_oneof![Just("snappy"), Just("zlib"), Just("zstd")]),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
        );
        let place = (
            opt_arc(),
            opt_arc(),
            any::<bool>(),
            opt_arc(),
            opt_arc(),
            opt_arc(),
            opt_arc(),
        );
        (times, op, conn, place).prop_map(|(t, o, c, p)| Record {
            watch_id: t.0,
            start_ns: t.1,
            end_ns: t.2,
            duration_ns: t.3,
            db: o.0,
            collection: o.1,
            operation: o.2,
            filter: o.3,
            matched: o.4[0],
            inserted: o.4[1],
            upserted: o.4[2],
            modified: o.4[3],
            deleted: o.4[4],
            iteration: o.5,
            state: o.6,
            cursor_id: o.7,
            error: o.8,
            pid: c.0,
            comm: c.1.into(),
            client: c.2.into(),
            server: c.3.into(),
            user: c.4,
            app_name: c.5,
            driver: c.6,
            compression: c.7,
            tls: c.8,
            request_bytes: c.9,
            reply_bytes: c.10,
            place: Place {
                container_id: p.0,
                node: p.1,
                side: if p.2 { Side::Server } else { Side::Client },
                k8s_namespace: p.3,
                k8s_pod: p.4,
                k8s_pod_uid: p.5,
                k8s_container: p.6,
            },
        })
    }

    proptest! {
        /// The fast line is the derive's line, for any record.
        #[test]
        fn the_line_is_what_the_derive_writes(r in record()) {
            let mut fast = Vec::new();
            r.write_json(&mut fast);
            let derived = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(derived).unwrap());
        }

        /// The time is chrono's RFC 3339 form (microseconds, truncated), for any u64 of ns.
        #[test]
        fn the_time_is_chronos(ns in any::<u64>()) {
            let t = DateTime::from_timestamp((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as u32)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            let mut b = Vec::new();
            write_time(ns, &mut b);
            prop_assert_eq!(String::from_utf8(b).unwrap(), t);
        }
    }

    #[test]
    fn times_at_the_edges() {
        for (ns, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00.000000Z"),
            (4_107_542_399_999_999_999, "2100-02-28T23:59:59.999999Z"),
            (u64::MAX, "2554-07-21T23:34:33.709551Z"),
        ] {
            let mut b = Vec::new();
            write_time(ns, &mut b);
            assert_eq!(String::from_utf8(b).unwrap(), want, "{ns}");
        }
    }

    #[test]
    fn a_string_with_escapes_goes_through_serde() {
        let mut b = Vec::new();
        push_str(&mut b, "a\"b\\c\n\u{1}é\u{7f}");
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "\"a\\\"b\\\\c\\n\\u0001é\u{7f}\""
        );
    }
}
