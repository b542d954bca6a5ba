//! Relaxed Extended JSON values that keep the key order of the BSON they came from.
//!
//! `serde_json::Value` (without `preserve_order`) sorts object keys, which would change the
//! meaning of a `$sort` stage or a compound index spec; this type keeps them as sent.

use bson::{spec::BinarySubtype, RawBsonRef, RawDocument};
use serde::{ser::SerializeMap, ser::SerializeSeq, Serialize, Serializer};

/// Nesting deeper than this is cut (rendered as null): no input can exhaust the stack.
pub const MAX_DEPTH: usize = 128;

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn obj(pairs: Vec<(&str, Json)>) -> Json {
        Json::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// A BSON value as Relaxed Extended JSON (v2).
    pub fn from_bson(v: RawBsonRef<'_>) -> Json {
        Self::from_bson_depth(v, 0)
    }

    /// A BSON document as Relaxed Extended JSON (v2).
    pub fn from_doc(d: &RawDocument) -> Json {
        Self::from_bson_depth(RawBsonRef::Document(d), 0)
    }

    fn from_bson_depth(v: RawBsonRef<'_>, depth: usize) -> Json {
        if depth > MAX_DEPTH {
            return Json::Null;
        }
        match v {
            RawBsonRef::Double(f) if f.is_finite() => Json::Float(f),
            RawBsonRef::Double(f) => {
                let s = if f.is_nan() {
                    "NaN"
                } else if f > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                };
                Json::obj(vec![("$numberDouble", Json::Str(s.into()))])
            }
            RawBsonRef::String(s) => Json::Str(s.to_owned()),
            RawBsonRef::Array(a) => Json::Array(
                a.into_iter()
                    .map_while(|e| e.ok())
                    .map(|e| Self::from_bson_depth(e, depth + 1))
                    .collect(),
            ),
            RawBsonRef::Document(d) => Json::Object(
                d.into_iter()
                    .map_while(|e| e.ok())
                    .map(|(k, e)| (k.as_str().to_owned(), Self::from_bson_depth(e, depth + 1)))
                    .collect(),
            ),
            RawBsonRef::Boolean(b) => Json::Bool(b),
            RawBsonRef::Null => Json::Null,
            RawBsonRef::RegularExpression(r) => Json::obj(vec![(
                "$regularExpression",
                Json::obj(vec![
                    ("pattern", Json::Str(r.pattern.as_str().to_owned())),
                    ("options", Json::Str(r.options.as_str().to_owned())),
                ]),
            )]),
            RawBsonRef::JavaScriptCode(c) => Json::obj(vec![("$code", Json::Str(c.to_owned()))]),
            RawBsonRef::JavaScriptCodeWithScope(c) => Json::obj(vec![
                ("$code", Json::Str(c.code.to_owned())),
                (
                    "$scope",
                    Self::from_bson_depth(RawBsonRef::Document(c.scope), depth + 1),
                ),
            ]),
            RawBsonRef::Int32(i) => Json::Int(i as i64),
            RawBsonRef::Int64(i) => Json::Int(i),
            RawBsonRef::Timestamp(t) => Json::obj(vec![(
                "$timestamp",
                Json::obj(vec![
                    ("t", Json::Int(t.time as i64)),
                    ("i", Json::Int(t.increment as i64)),
                ]),
            )]),
            RawBsonRef::Binary(b) => {
                let sub: u8 = b.subtype.into();
                let sub = if b.subtype == BinarySubtype::Generic {
                    "00".to_owned()
                } else {
                    format!("{sub:02x}")
                };
                Json::obj(vec![(
                    "$binary",
                    Json::obj(vec![
                        ("base64", Json::Str(base64(b.bytes))),
                        ("subType", Json::Str(sub)),
                    ]),
                )])
            }
            RawBsonRef::ObjectId(o) => Json::obj(vec![("$oid", Json::Str(o.to_hex()))]),
            RawBsonRef::DateTime(d) => {
                let ms = d.timestamp_millis();
                // Relaxed form for years 1970..=9999, canonical otherwise.
                if (0..=253_402_300_799_999).contains(&ms) {
                    match d.try_to_rfc3339_string() {
                        Ok(s) => Json::obj(vec![("$date", Json::Str(s))]),
                        Err(_) => Json::obj(vec![(
                            "$date",
                            Json::obj(vec![("$numberLong", Json::Str(ms.to_string()))]),
                        )]),
                    }
                } else {
                    Json::obj(vec![(
                        "$date",
                        Json::obj(vec![("$numberLong", Json::Str(ms.to_string()))]),
                    )])
                }
            }
            RawBsonRef::Symbol(s) => Json::obj(vec![("$symbol", Json::Str(s.to_owned()))]),
            RawBsonRef::Decimal128(d) => {
                Json::obj(vec![("$numberDecimal", Json::Str(d.to_string()))])
            }
            RawBsonRef::Undefined => Json::obj(vec![("$undefined", Json::Bool(true))]),
            RawBsonRef::MaxKey => Json::obj(vec![("$maxKey", Json::Int(1))]),
            RawBsonRef::MinKey => Json::obj(vec![("$minKey", Json::Int(1))]),
            RawBsonRef::DbPointer(_) => Json::obj(vec![("$dbPointer", Json::Object(Vec::new()))]),
        }
    }

    /// The privacy mask (pymongowatch's sample `mask` filter): strings become "x" times their
    /// length, numbers 0, anything else null; object keys and array shapes are kept.
    pub fn masked(&self) -> Json {
        match self {
            Json::Str(s) => Json::Str("x".repeat(s.chars().count())),
            Json::Int(_) => Json::Int(0),
            Json::Float(_) => Json::Int(0),
            Json::Null | Json::Bool(_) => Json::Null,
            Json::Array(a) => Json::Array(a.iter().map(Json::masked).collect()),
            Json::Object(o) => {
                Json::Object(o.iter().map(|(k, v)| (k.clone(), v.masked())).collect())
            }
        }
    }

    /// Compact JSON text.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The value of `key` when this is an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(o) => o.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Int(i) => s.serialize_i64(*i),
            Json::Float(f) => s.serialize_f64(*f),
            Json::Str(x) => s.serialize_str(x),
            Json::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Json::Object(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use bson::{oid::ObjectId, rawdoc};

    use super::*;

    #[test]
    fn keeps_key_order_and_relaxed_forms() {
        let oid = ObjectId::from_bytes([1; 12]);
        let d =
            rawdoc! { "z": 1, "a": "s", "id": oid, "f": 1.5, "l": 5_i64, "n": bson::RawBson::Null };
        assert_eq!(
            Json::from_doc(&d).to_json_string(),
            r#"{"z":1,"a":"s","id":{"$oid":"010101010101010101010101"},"f":1.5,"l":5,"n":null}"#
        );
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn mask_keeps_shape() {
        let d = rawdoc! { "name": "bob", "age": 42, "tags": ["ab", 1.5, true], "x": { "$gt": 3 } };
        assert_eq!(
            Json::from_doc(&d).masked().to_json_string(),
            r#"{"name":"xxx","age":0,"tags":["xx",0,null],"x":{"$gt":0}}"#
        );
    }

    #[test]
    fn deep_nesting_is_cut_not_overflowed() {
        let mut d = rawdoc! { "v": 1 };
        for _ in 0..300 {
            d = rawdoc! { "a": d };
        }
        let j = Json::from_doc(&d);
        // Levels 0..=MAX_DEPTH are kept; the one below becomes null, whatever it held.
        let levels = MAX_DEPTH + 1;
        assert_eq!(
            j.to_json_string(),
            format!("{}null{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
        );
    }
}
