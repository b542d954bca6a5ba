//! Which records are written, and how: the `--filter` expression (CEL over the record's
//! fields), the `--ops` and `--db` allow-lists, and the `--mask` privacy option.
//!
//! The expression sees each field under its contract name (`Collection == "news" &&
//! Duration > 0.01`, `Error != null`, `Filter.status == "open"`), with `Filter` unmasked.
//! A runtime evaluation error (e.g. `Filter.status` on a record whose Filter has no `status`)
//! keeps the record: an audit log had better hold one record too many than lose one. The error
//! is counted and logged.

mod rate;

use std::{collections::HashMap, sync::Arc};

use cel_interpreter::{objects::Key, Context, Program, Value};
pub use rate::{RateCounter, RateEntry, RateSummary};

use crate::record::{field_value, format_time, secs, FieldValue, Json, Record, FIELDS};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("bad --filter expression: {0}")]
    Parse(String),
    #[error("--filter names `{0}`, which is no record field (fields: {fields})", fields = FIELDS.join(", "))]
    UnknownVariable(String),
}

/// Outcome of one record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Dropped by an allow-list or the expression.
    Drop,
    /// The expression failed on this record; the record is kept.
    KeepAfterError,
}

/// Names a CEL expression may bind itself (macro variables such as `x` in
/// `Filter.exists(x, ...)`) are allowed when the expression uses a macro.
const MACROS: &[&str] = &["all", "exists", "exists_one", "map", "filter"];

pub struct RecordFilter {
    program: Option<Program>,
    /// The standard functions, built once; each record gets a child scope with its fields.
    root: Context<'static>,
    /// Fields the expression reads (only these are converted per record).
    referenced: Vec<&'static str>,
    ops: Option<Vec<String>>,
    dbs: Option<Vec<String>>,
    mask: bool,
    errors: u64,
}

impl std::fmt::Debug for RecordFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordFilter")
            .field("expression", &self.program.is_some())
            .field("ops", &self.ops)
            .field("dbs", &self.dbs)
            .field("mask", &self.mask)
            .finish()
    }
}

impl RecordFilter {
    /// Compiles the expression once; a syntax error or an unknown field name is an error here,
    /// at startup. Empty allow-lists mean "everything".
    pub fn new(
        expr: Option<&str>,
        ops: Option<Vec<String>>,
        dbs: Option<Vec<String>>,
        mask: bool,
    ) -> Result<Self, FilterError> {
        let mut referenced = Vec::new();
        let program = match expr.map(str::trim).filter(|e| !e.is_empty()) {
            None => None,
            Some(e) => {
                // The CEL parser panics on some malformed input; that is a bad expression too.
                let compiled = std::panic::catch_unwind(|| Program::compile(e))
                    .map_err(|_| FilterError::Parse(format!("cannot parse `{e}`")))?;
                let p = compiled.map_err(|err| FilterError::Parse(err.to_string()))?;
                let refs = p.references();
                // Macros bind their own variables and do not show as functions in the
                // references; spot them in the text.
                let uses_macro = MACROS
                    .iter()
                    .any(|m| refs.has_function(m) || e.contains(&format!(".{m}(")));
                let mut vars = refs.variables();
                vars.sort_unstable();
                for v in vars {
                    match FIELDS.iter().find(|f| **f == v) {
                        Some(f) => referenced.push(*f),
                        None if uses_macro => {}
                        None => return Err(FilterError::UnknownVariable(v.to_owned())),
                    }
                }
                Some(p)
            }
        };
        let non_empty = |v: Option<Vec<String>>| v.filter(|l| !l.is_empty());
        Ok(Self {
            program,
            root: Context::default(),
            referenced,
            ops: non_empty(ops),
            dbs: non_empty(dbs),
            mask,
            errors: 0,
        })
    }

    /// Runtime evaluation errors so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Decides whether `r` is written.
    pub fn check(&mut self, r: &Record) -> Verdict {
        if let Some(ops) = &self.ops {
            if !ops.iter().any(|o| o == &r.operation) {
                return Verdict::Drop;
            }
        }
        if let Some(dbs) = &self.dbs {
            if !dbs.iter().any(|d| d == &r.db) {
                return Verdict::Drop;
            }
        }
        let Some(program) = &self.program else {
            return Verdict::Keep;
        };
        let mut ctx = self.root.new_inner_scope();
        for f in &self.referenced {
            ctx.add_variable_from_value(*f, field_to_cel(r, f));
        }
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&ctx)));
        match result {
            Ok(Ok(Value::Bool(true))) => Verdict::Keep,
            Ok(Ok(Value::Bool(false))) => Verdict::Drop,
            other => {
                self.errors += 1;
                let why = match other {
                    Ok(Ok(v)) => format!("not a boolean: {v:?}"),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "the evaluator failed".to_owned(),
                };
                if self.errors == 1 || self.errors.is_power_of_two() {
                    tracing::warn!(
                        errors = self.errors,
                        watch_id = %r.watch_id,
                        "--filter failed on a record (kept): {why}"
                    );
                }
                Verdict::KeepAfterError
            }
        }
    }

    /// Whether [`RecordFilter::mask`] changes records.
    pub fn masks(&self) -> bool {
        self.mask
    }

    /// Applies `--mask` to the record (its Filter values).
    pub fn mask(&self, r: &mut Record) {
        if self.mask {
            if let Some(f) = &r.filter {
                r.filter = Some(f.masked());
            }
        }
    }
}

fn json_to_cel(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Int(i) => Value::Int(*i),
        Json::Float(f) => Value::Float(*f),
        Json::Str(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Json::Object(o) => {
            let map: HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(cel_interpreter::objects::Map { map: Arc::new(map) })
        }
    }
}

fn field_to_cel(r: &Record, name: &str) -> Value {
    match name {
        "Filter" => r.filter.as_ref().map_or(Value::Null, json_to_cel),
        "Error" => match &r.error {
            None => Value::Null,
            Some(e) => {
                let mut m: HashMap<Key, Value> = HashMap::new();
                let k = |s: &str| Key::String(Arc::new(s.to_owned()));
                m.insert(k("code"), e.code.map_or(Value::Null, Value::Int));
                m.insert(
                    k("codeName"),
                    e.code_name.clone().map_or(Value::Null, Value::from),
                );
                m.insert(
                    k("errmsg"),
                    e.errmsg.clone().map_or(Value::Null, Value::from),
                );
                if let Some(n) = e.write_errors {
                    m.insert(k("writeErrors"), Value::Int(n as i64));
                }
                Value::Map(cel_interpreter::objects::Map { map: Arc::new(m) })
            }
        },
        "StartTime" => Value::from(format_time(r.start_ns)),
        "EndTime" => Value::from(format_time(r.end_ns)),
        "Duration" => Value::Float(secs(r.duration_ns)),
        _ => match field_value(r, name) {
            None | Some(FieldValue::Null) => Value::Null,
            Some(FieldValue::Str(s)) => Value::from(s),
            Some(FieldValue::Owned(s)) | Some(FieldValue::Json(s)) => Value::from(s),
            Some(FieldValue::Int(i)) => Value::Int(i),
            Some(FieldValue::Float(f)) => Value::Float(f),
            Some(FieldValue::Bool(b)) => Value::Bool(b),
        },
    }
}
