//! Record formats: JSON Lines (the contract's form), `Key=value` text, CSV and `{Field}`
//! templates.

use serde::Deserialize;

use super::SinkError;
use crate::record::{field_value, FieldValue, Record, FIELDS};

/// Output format of the audit records.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON Lines, one object per record, fields in contract order.
    #[default]
    Json,
    /// `Key=value` pairs on one line (pymongowatch's `{watch}`), over `--fields`.
    Text,
    /// CSV with one header line, columns in contract order (or `--fields`).
    Csv,
    /// `--template` with `{Field}` placeholders.
    Template,
}

/// Fields of the text format when `--fields` is not given.
pub const DEFAULT_TEXT_FIELDS: &[&str] = &[
    "StartTime",
    "Duration",
    "DB",
    "Collection",
    "Operation",
    "Filter",
    "MatchedCount",
    "InsertedCount",
    "UpsertedCount",
    "ModifiedCount",
    "DeletedCount",
    "Iteration",
    "State",
    "Error",
    "Pid",
    "Comm",
    "User",
    "WatchID",
];

/// How the sink renders a field's value in each format.
impl FieldValue<'_> {
    /// Plain rendering (templates): strings as they are, null as `null`.
    pub fn plain(&self) -> String {
        match self {
            FieldValue::Null => "null".into(),
            FieldValue::Str(s) => (*s).to_owned(),
            FieldValue::Owned(s) | FieldValue::Json(s) => s.clone(),
            FieldValue::Int(i) => i.to_string(),
            FieldValue::Float(f) => serde_json::to_string(f).unwrap_or_default(),
            FieldValue::Bool(b) => b.to_string(),
        }
    }

    /// Text rendering, as pymongowatch's `{watch}` renders values: strings in single quotes
    /// (backslash escapes, like Python's `repr`), objects and arrays as compact JSON, numbers
    /// and booleans bare. A line always splits back into its pairs.
    pub fn text(&self) -> String {
        let s = match self {
            FieldValue::Str(s) => *s,
            FieldValue::Owned(s) => s.as_str(),
            other => return other.plain(),
        };
        let mut out = String::with_capacity(s.len() + 2);
        out.push('\'');
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    }

    /// CSV rendering (RFC 4180): null is empty; a value with a comma, quote or line break is
    /// quoted with inner quotes doubled.
    pub fn csv(&self) -> String {
        let s = match self {
            FieldValue::Null => return String::new(),
            other => other.plain(),
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    }
}

fn check_fields(fields: &[String]) -> Result<(), SinkError> {
    for f in fields {
        if !FIELDS.contains(&f.as_str()) {
            return Err(SinkError::UnknownField(f.clone()));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Lit(String),
    Field(String),
    /// `{watch}`: the text line over the default fields.
    Watch,
    /// `{watch.csv}`: the CSV row of every field.
    WatchCsv,
}

#[derive(Clone, Debug)]
enum Kind {
    Json,
    Text(Vec<String>),
    Csv(Vec<String>),
    Template(Vec<Piece>),
}

/// Turns records into output lines.
#[derive(Clone, Debug)]
pub struct Formatter {
    kind: Kind,
}

fn parse_template(t: &str) -> Result<Vec<Piece>, SinkError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err(SinkError::Template(format!("unclosed `{{{name}`")));
                }
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                let name = name.trim();
                let piece = match name {
                    "watch" => Piece::Watch,
                    "watch.csv" => Piece::WatchCsv,
                    _ => {
                        let field = name.strip_prefix("watch.").unwrap_or(name);
                        if !FIELDS.contains(&field) {
                            return Err(SinkError::UnknownField(field.to_owned()));
                        }
                        Piece::Field(field.to_owned())
                    }
                };
                pieces.push(piece);
            }
            '}' => return Err(SinkError::Template("single `}` (write `}}`)".into())),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

fn text_line(r: &Record, fields: &[String]) -> String {
    let mut line = String::new();
    for f in fields {
        match field_value(r, f) {
            None | Some(FieldValue::Null) => continue,
            Some(v) => {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(f);
                line.push('=');
                line.push_str(&v.text());
            }
        }
    }
    line
}

fn csv_line(r: &Record, fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| field_value(r, f).map(|v| v.csv()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(",")
}

impl Formatter {
    /// `fields` chooses the text and CSV columns; `template` is required for
    /// [`Format::Template`]. Unknown field names and bad templates are errors.
    pub fn new(
        format: Format,
        fields: Option<&[String]>,
        template: Option<&str>,
    ) -> Result<Self, SinkError> {
        if let Some(f) = fields {
            check_fields(f)?;
        }
        let all = || FIELDS.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let kind = match format {
            Format::Json => Kind::Json,
            Format::Text => Kind::Text(fields.map(<[String]>::to_vec).unwrap_or_else(|| {
                DEFAULT_TEXT_FIELDS
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            })),
            Format::Csv => Kind::Csv(fields.map(<[String]>::to_vec).unwrap_or_else(all)),
            Format::Template => {
                let t = template.ok_or(SinkError::Template(
                    "--format template needs --template".into(),
                ))?;
                Kind::Template(parse_template(t)?)
            }
        };
        Ok(Self { kind })
    }

    /// The CSV header line (with its newline), for a fresh output.
    pub fn header(&self) -> Option<String> {
        match &self.kind {
            Kind::Csv(fields) => Some(format!("{}\n", fields.join(","))),
            _ => None,
        }
    }

    /// One record as one line, newline included.
    pub fn format(&self, r: &Record) -> String {
        let mut line = match &self.kind {
            Kind::Json => r.to_json_line(),
            Kind::Text(fields) => text_line(r, fields),
            Kind::Csv(fields) => csv_line(r, fields),
            Kind::Template(pieces) => {
                let mut s = String::new();
                for p in pieces {
                    match p {
                        Piece::Lit(l) => s.push_str(l),
                        Piece::Field(f) => {
                            s.push_str(&field_value(r, f).map(|v| v.plain()).unwrap_or_default())
                        }
                        Piece::Watch => s.push_str(&text_line(
                            r,
                            &DEFAULT_TEXT_FIELDS
                                .iter()
                                .map(|s| (*s).to_owned())
                                .collect::<Vec<_>>(),
                        )),
                        Piece::WatchCsv => s.push_str(&csv_line(
                            r,
                            &FIELDS.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                        )),
                    }
                }
                // One record, one line.
                s.replace(['\n', '\r'], " ")
            }
        };
        line.push('\n');
        line
    }

    /// [`Formatter::format`], appended to `out`. JSON is serialized straight into it: the
    /// output's worker formats every record, and a string (grown as it filled) per record was
    /// most of what formatting cost.
    pub fn format_into(&self, r: &Record, out: &mut Vec<u8>) {
        match &self.kind {
            Kind::Json => {
                r.write_json(out);
                out.push(b'\n');
            }
            _ => out.extend_from_slice(self.format(r).as_bytes()),
        }
    }
}
