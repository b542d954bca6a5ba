//! Reading audit logs back: the JSON Lines and CSV files mongowatch writes, for the offline
//! tools `mongowatch aggregate` (the last record of each WatchID, as pymongowatch-csv's
//! `aggregate`) and `mongowatch digest` (a per-query-shape report, as pt-mongodb-query-digest
//! makes from the profiler). Each record keeps its original text, so what is written back is
//! byte for byte what was read.

pub mod aggregate;
pub mod cli;
pub mod digest;

use std::{collections::HashMap, fmt};

use serde::{de, Deserialize, Deserializer};

use crate::record::Json;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{name}: not UTF-8 text, so not a mongowatch log")]
    NotText { name: String },
    #[error("{name}: CSV without a WatchID column (header: {header})")]
    NoWatchId { name: String, header: String },
    #[error("{name}: CSV line {line}: a quoted value is not closed")]
    Unclosed { name: String, line: usize },
    #[error("{first} is {a} and {second} is {b}: one format at a time")]
    Mixed {
        first: String,
        a: LogFormat,
        second: String,
        b: LogFormat,
    },
    #[error("{first} and {second} have different CSV columns")]
    Columns { first: String, second: String },
}

/// The format of a log, as mongowatch writes it (`--format json` or `--format csv`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    JsonLines,
    Csv,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::JsonLines => "JSON Lines",
            LogFormat::Csv => "CSV",
        })
    }
}

/// The fields the tools read; the rest of a record is carried in its text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields {
    pub watch_id: String,
    pub operation: Option<String>,
    pub db: Option<String>,
    pub collection: Option<String>,
    pub filter: Option<Json>,
    pub duration: Option<f64>,
    pub matched: Option<i64>,
    pub request_bytes: Option<u64>,
    pub reply_bytes: Option<u64>,
}

/// One audit record: its text (with its line ending) and its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub text: String,
    pub fields: Fields,
}

/// A line that is no audit record (a partial last line, a rate summary, a wire message line),
/// left out and reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub line: usize,
    pub why: String,
}

/// One log file, read.
#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    pub name: String,
    pub format: LogFormat,
    /// CSV: the header line, with its line ending.
    pub header: Option<String>,
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// A JSON value into [`Json`], keeping the key order (`serde_json::Value` would sort it).
impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(i64::try_from(v).map_or(Json::Float(v as f64), Json::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(Json::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Str(v.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = a.next_element()? {
                    v.push(e);
                }
                Ok(Json::Array(v))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut v = Vec::new();
                while let Some((k, e)) = a.next_entry::<String, Json>()? {
                    v.push((k, e));
                }
                Ok(Json::Object(v))
            }
        }
        // serde_json stops at 128 levels: no line can exhaust the stack.
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct JsonRecord {
    #[serde(rename = "WatchID")]
    watch_id: String,
    #[serde(rename = "Operation")]
    operation: Option<String>,
    #[serde(rename = "DB")]
    db: Option<String>,
    #[serde(rename = "Collection")]
    collection: Option<String>,
    #[serde(rename = "Filter")]
    filter: Option<Json>,
    #[serde(rename = "Duration")]
    duration: Option<f64>,
    #[serde(rename = "MatchedCount")]
    matched: Option<i64>,
    #[serde(rename = "RequestBytes")]
    request_bytes: Option<u64>,
    #[serde(rename = "ReplyBytes")]
    reply_bytes: Option<u64>,
}

/// The lines of `text`, each with its line ending, numbered from 1.
fn lines_with_ends(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

fn read_json(name: &str, text: &str) -> Log {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for (n, line) in lines_with_ends(text) {
        if line.trim().is_empty() {
            continue;
        }
        if !line.ends_with('\n') {
            skipped.push(Skipped {
                line: n,
                why: "a partial last line (no newline)".into(),
            });
            continue;
        }
        match serde_json::from_str::<JsonRecord>(line) {
            Ok(r) => entries.push(Entry {
                text: line.to_owned(),
                fields: Fields {
                    watch_id: r.watch_id,
                    operation: r.operation,
                    db: r.db,
                    collection: r.collection,
                    filter: r.filter.filter(|f| *f != Json::Null),
                    duration: r.duration,
                    matched: r.matched,
                    request_bytes: r.request_bytes,
                    reply_bytes: r.reply_bytes,
                },
            }),
            Err(e) => skipped.push(Skipped {
                line: n,
                why: format!("not an audit record: {e}"),
            }),
        }
    }
    Log {
        name: name.to_owned(),
        format: LogFormat::JsonLines,
        header: None,
        entries,
        skipped,
    }
}

/// Splits CSV text (RFC 4180, as the sink writes it) into rows: each row's text (with its
/// line ending), its first line number and its values. A quoted value may hold line breaks.
fn csv_rows(name: &str, text: &str) -> Result<Vec<(String, usize, Vec<String>)>, LogError> {
    let mut rows = Vec::new();
    let (mut start, mut line, mut row_line) = (0, 1, 1);
    let (mut values, mut cur, mut quoted, mut in_quotes) =
        (Vec::new(), String::new(), false, false);
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' if in_quotes => {
                if chars.peek().map(|p| p.1) == Some('"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                }
            }
            '"' if cur.is_empty() && !quoted => {
                in_quotes = true;
                quoted = true;
            }
            '\n' if in_quotes => {
                line += 1;
                cur.push(c);
            }
            ',' if !in_quotes => {
                values.push(std::mem::take(&mut cur));
                quoted = false;
            }
            '\n' => {
                if cur.ends_with('\r') && !quoted {
                    cur.pop();
                }
                values.push(std::mem::take(&mut cur));
                rows.push((
                    text[start..=i].to_owned(),
                    row_line,
                    std::mem::take(&mut values),
                ));
                quoted = false;
                start = i + 1;
                line += 1;
                row_line = line;
            }
            '\r' if quoted && !in_quotes => {}
            c => cur.push(c),
        }
    }
    if in_quotes {
        return Err(LogError::Unclosed {
            name: name.to_owned(),
            line: row_line,
        });
    }
    if start < text.len() {
        values.push(cur);
        rows.push((text[start..].to_owned(), row_line, values));
    }
    Ok(rows)
}

fn read_csv(name: &str, text: &str) -> Result<Log, LogError> {
    let mut rows = csv_rows(name, text)?.into_iter();
    let Some((header_text, _, columns)) = rows.next() else {
        unreachable!("read_csv is called on text with a first line");
    };
    let col: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let Some(&wid) = col.get("WatchID") else {
        return Err(LogError::NoWatchId {
            name: name.to_owned(),
            header: header_text.trim_end().to_owned(),
        });
    };
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for (row_text, n, values) in rows {
        if row_text.trim().is_empty() || row_text == header_text {
            continue;
        }
        let why = if !row_text.ends_with('\n') {
            Some("a partial last line (no newline)".to_owned())
        } else if values.len() != columns.len() {
            Some(format!(
                "{} values for {} columns",
                values.len(),
                columns.len()
            ))
        } else if values[wid].is_empty() {
            Some("no WatchID".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            skipped.push(Skipped { line: n, why });
            continue;
        }
        let get = |name: &str| {
            col.get(name)
                .map(|&i| values[i].as_str())
                .filter(|v| !v.is_empty())
        };
        let filter = match get("Filter").map(serde_json::from_str::<Json>) {
            Some(Err(e)) => {
                skipped.push(Skipped {
                    line: n,
                    why: format!("its Filter is not JSON: {e}"),
                });
                continue;
            }
            Some(Ok(f)) => Some(f),
            None => None,
        };
        entries.push(Entry {
            fields: Fields {
                watch_id: values[wid].clone(),
                operation: get("Operation").map(str::to_owned),
                db: get("DB").map(str::to_owned),
                collection: get("Collection").map(str::to_owned),
                filter,
                duration: get("Duration").and_then(|v| v.parse().ok()),
                matched: get("MatchedCount").and_then(|v| v.parse().ok()),
                request_bytes: get("RequestBytes").and_then(|v| v.parse().ok()),
                reply_bytes: get("ReplyBytes").and_then(|v| v.parse().ok()),
            },
            text: row_text,
        });
    }
    Ok(Log {
        name: name.to_owned(),
        format: LogFormat::Csv,
        header: Some(header_text),
        entries,
        skipped,
    })
}

/// Reads one log: JSON Lines when its first line is an object, else CSV with a header.
pub fn read_log(name: &str, bytes: &[u8]) -> Result<Log, LogError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LogError::NotText {
        name: name.to_owned(),
    })?;
    match text.trim_start().chars().next() {
        None => Ok(Log {
            name: name.to_owned(),
            format: LogFormat::JsonLines,
            header: None,
            entries: Vec::new(),
            skipped: Vec::new(),
        }),
        Some('{') => Ok(read_json(name, text)),
        Some(_) => read_csv(name, text),
    }
}

/// Several logs of one format (e.g. a file and its rotations, oldest first) as one.
pub fn concat(logs: Vec<Log>) -> Result<Log, LogError> {
    let mut it = logs
        .into_iter()
        .filter(|l| !l.entries.is_empty() || l.header.is_some());
    let Some(mut all) = it.next() else {
        return Ok(Log {
            name: String::new(),
            format: LogFormat::JsonLines,
            header: None,
            entries: Vec::new(),
            skipped: Vec::new(),
        });
    };
    for log in it {
        if log.format != all.format {
            return Err(LogError::Mixed {
                first: all.name,
                a: all.format,
                second: log.name,
                b: log.format,
            });
        }
        if log.header.as_deref().map(str::trim_end) != all.header.as_deref().map(str::trim_end) {
            return Err(LogError::Columns {
                first: all.name,
                second: log.name,
            });
        }
        all.entries.extend(log.entries);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_their_text_and_key_order() {
        let text = "{\"WatchID\":\"a\",\"Operation\":\"find\",\"Filter\":{\"z\":1,\"a\":\"x\"},\"Duration\":0.5}\n\
                    {\"Kind\":\"rate\"}\n\
                    {\"WatchID\":\"b\",\"Oper";
        let log = read_log("t.jsonl", text.as_bytes()).unwrap();
        assert_eq!(log.format, LogFormat::JsonLines);
        assert_eq!(log.entries.len(), 1);
        let e = &log.entries[0];
        assert!(e.text.starts_with("{\"WatchID\":\"a\"") && e.text.ends_with("}\n"));
        assert_eq!(
            e.fields.filter.as_ref().unwrap().to_json_string(),
            r#"{"z":1,"a":"x"}"#
        );
        assert_eq!(e.fields.duration, Some(0.5));
        let lines: Vec<usize> = log.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 3]);
        assert!(log.skipped[1].why.contains("partial"));
    }

    #[test]
    fn csv_quoted_values_commas_quotes_and_line_breaks() {
        // An AppName may hold a line break; a Filter is compact JSON (its breaks escaped).
        let text = "WatchID,Filter,AppName,Duration\r\n\
                    a,\"{\"\"k\"\":\"\"x,y\"\"}\",app,0.25\r\n\
                    b,\"{\"\"k\"\":\"\"l1\\nl2\"\"}\",\"two\nlines\",1\n\
                    ,,,\n\
                    c,";
        let log = read_log("t.csv", text.as_bytes()).unwrap();
        assert_eq!(log.format, LogFormat::Csv);
        assert_eq!(
            log.header.as_deref(),
            Some("WatchID,Filter,AppName,Duration\r\n")
        );
        let ids: Vec<&str> = log
            .entries
            .iter()
            .map(|e| e.fields.watch_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            log.entries[0]
                .fields
                .filter
                .as_ref()
                .unwrap()
                .to_json_string(),
            r#"{"k":"x,y"}"#
        );
        assert_eq!(
            log.entries[1].text,
            "b,\"{\"\"k\"\":\"\"l1\\nl2\"\"}\",\"two\nlines\",1\n"
        );
        assert_eq!(
            log.entries[1]
                .fields
                .filter
                .as_ref()
                .unwrap()
                .to_json_string(),
            r#"{"k":"l1\nl2"}"#
        );
        assert_eq!(log.entries[1].fields.duration, Some(1.0));
        let skipped: Vec<usize> = log.skipped.iter().map(|s| s.line).collect();
        assert_eq!(skipped, [5, 6], "{:?}", log.skipped);
    }

    #[test]
    fn bad_logs_are_clear_errors() {
        let e = read_log("x", b"DB,Operation\nd,find\n").unwrap_err();
        assert!(e.to_string().contains("without a WatchID column"), "{e}");
        let e = read_log("x", b"WatchID,Filter\na,\"{\n").unwrap_err();
        assert!(e.to_string().contains("line 2: a quoted value"), "{e}");
        assert!(matches!(
            read_log("x", b"\xff\xfe"),
            Err(LogError::NotText { .. })
        ));
        let j = read_log("a.jsonl", b"{\"WatchID\":\"a\"}\n").unwrap();
        let c = read_log("b.csv", b"WatchID\na\n").unwrap();
        assert!(concat(vec![j, c])
            .unwrap_err()
            .to_string()
            .contains("one format"));
    }
}
