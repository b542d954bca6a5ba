//! `[[output]]` tables: several outputs at once, each with its own target, format, filter,
//! allow-lists, mask and rotation. The top-level keys (and the command-line flags) stay the
//! shorthand for a single output; a file with tables sets every output in its tables.

use std::path::PathBuf;

use serde::{de, Deserialize, Deserializer};

use super::{ByteSize, ConfigError};
use crate::{
    filter::RecordFilter,
    sink::{Format, Formatter, OutputSpec},
};

/// Records an output's queue holds while its writer is busy; past it, capture waits for room
/// (up to `pipeline::outputs::FULL_WAIT`), then drops records for that output alone, counted.
pub const DEFAULT_QUEUE: usize = 16_384;

/// The value of the `output` key: a path (the single-output shorthand) or `[[output]]` tables.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputKey {
    Path(PathBuf),
    Tables(Vec<OutputTable>),
}

impl<'de> Deserialize<'de> for OutputKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = OutputKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a file path, or [[output]] tables")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<OutputKey, E> {
                Ok(OutputKey::Path(PathBuf::from(v)))
            }

            // A table's own errors (an unknown key, a bad value) come through with their text.
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OutputKey, A::Error> {
                let mut tables = Vec::new();
                while let Some(t) = seq.next_element::<OutputTable>()? {
                    tables.push(t);
                }
                Ok(OutputKey::Tables(tables))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<OutputKey, A::Error> {
                Err(de::Error::custom(
                    "write outputs as [[output]] (an array of tables), not [output]",
                ))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Where an output writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Appends to `path` (mode 0600), rotated by size when `rotate-size` is set.
    File,
    Stdout,
    /// OTLP logs to an OpenTelemetry Collector (`endpoint`, `protocol`; the OTEL_* variables).
    Otlp,
}

/// One `[[output]]` table, as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct OutputTable {
    /// Names the output in `--stats` and on stderr (default: its path, or "stdout").
    pub name: Option<String>,
    /// "file" or "stdout" (default: "file" when `path` is set, else "stdout").
    pub kind: Option<OutputKind>,
    pub path: Option<PathBuf>,
    pub format: Option<Format>,
    pub fields: Option<Vec<String>>,
    pub template: Option<String>,
    pub rotate_size: Option<ByteSize>,
    pub rotate_keep: Option<usize>,
    pub filter: Option<String>,
    pub mask: Option<bool>,
    pub ops: Option<Vec<String>>,
    pub db: Option<Vec<String>>,
    /// Records held while the writer is busy (default [`DEFAULT_QUEUE`]).
    pub queue: Option<usize>,
    /// `kind = "otlp"`: the collector's URL (else `OTEL_EXPORTER_OTLP_*`) and protocol.
    pub endpoint: Option<String>,
    pub protocol: Option<crate::sink::otlp::Protocol>,
}

/// What an output writes to. The export layer adds its own targets (OTLP) beside `Lines`.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputTarget {
    /// Lines in one of the record formats, to stdout or a file.
    Lines {
        spec: OutputSpec,
        format: Format,
        fields: Option<Vec<String>>,
        template: Option<String>,
    },
    /// One OTLP LogRecord per record.
    Otlp(crate::sink::otlp::OtlpConfig),
}

/// One checked output.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputConfig {
    pub name: String,
    pub target: OutputTarget,
    pub filter: Option<String>,
    pub mask: bool,
    pub ops: Option<Vec<String>>,
    pub db: Option<Vec<String>>,
    pub queue: usize,
}

impl OutputConfig {
    /// The formatter of a `Lines` target.
    pub fn formatter(&self) -> Result<Option<Formatter>, crate::sink::SinkError> {
        match &self.target {
            OutputTarget::Lines {
                format,
                fields,
                template,
                ..
            } => Formatter::new(*format, fields.as_deref(), template.as_deref()).map(Some),
            OutputTarget::Otlp(_) => Ok(None),
        }
    }

    pub fn record_filter(&self) -> Result<RecordFilter, crate::filter::FilterError> {
        RecordFilter::new(
            self.filter.as_deref(),
            self.ops.clone(),
            self.db.clone(),
            self.mask,
        )
    }

    /// Fails at startup, not on the first record.
    fn check(&self) -> Result<(), ConfigError> {
        self.formatter()?;
        self.record_filter()?;
        Ok(())
    }
}

/// `--format` with `--template`: a template implies the template format.
pub(super) fn resolve_format(
    format: Option<Format>,
    template: &Option<String>,
) -> Result<Format, ConfigError> {
    match (format, template) {
        (None, Some(_)) => Ok(Format::Template),
        (Some(f), Some(_)) if f != Format::Template => Err(ConfigError::Invalid(
            "--template needs --format template (or no --format)".into(),
        )),
        (f, _) => Ok(f.unwrap_or_default()),
    }
}

/// The rotation of a file output, checked.
pub(super) fn resolve_spec(
    path: Option<PathBuf>,
    rotate_size: Option<ByteSize>,
    rotate_keep: Option<usize>,
) -> Result<OutputSpec, ConfigError> {
    if path.is_none() && (rotate_size.is_some() || rotate_keep.is_some()) {
        return Err(ConfigError::Invalid(
            "--rotate-size and --rotate-keep need -o FILE".into(),
        ));
    }
    if rotate_size == Some(ByteSize(0)) {
        return Err(ConfigError::Invalid(
            "--rotate-size must be more than 0".into(),
        ));
    }
    if rotate_keep == Some(0) {
        return Err(ConfigError::Invalid(
            "--rotate-keep must be at least 1".into(),
        ));
    }
    Ok(OutputSpec {
        path,
        rotate_size: rotate_size.map(|b| b.0),
        rotate_keep: rotate_keep.unwrap_or(5),
    })
}

impl OutputTable {
    fn resolve(self, index: usize) -> Result<OutputConfig, ConfigError> {
        let at = |msg: String| ConfigError::Invalid(format!("[[output]] #{}: {msg}", index + 1));
        if self.kind == Some(OutputKind::Otlp) {
            return self.resolve_otlp(index);
        }
        if self.endpoint.is_some() || self.protocol.is_some() {
            return Err(at(
                "`endpoint` and `protocol` are for kind = \"otlp\"".into()
            ));
        }
        let kind = match (self.kind, &self.path) {
            (Some(k), _) => k,
            (None, Some(_)) => OutputKind::File,
            (None, None) => OutputKind::Stdout,
        };
        match (kind, &self.path) {
            (OutputKind::File, None) => return Err(at("kind = \"file\" needs a `path`".into())),
            (OutputKind::Stdout, Some(_)) => {
                return Err(at("kind = \"stdout\" takes no `path`".into()))
            }
            _ => {}
        }
        if self.queue == Some(0) {
            return Err(at("`queue` must be at least 1".into()));
        }
        let name = match (&self.name, &self.path) {
            (Some(n), _) if n.trim().is_empty() => return Err(at("`name` is empty".into())),
            (Some(n), _) => n.clone(),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => "stdout".to_owned(),
        };
        let format = resolve_format(self.format, &self.template).map_err(|e| at(e.to_string()))?;
        let spec = resolve_spec(self.path, self.rotate_size, self.rotate_keep)
            .map_err(|e| at(e.to_string().replace("-o FILE", "a `path`")))?;
        let cfg = OutputConfig {
            name,
            target: OutputTarget::Lines {
                spec,
                format,
                fields: self.fields,
                template: self.template,
            },
            filter: self.filter,
            mask: self.mask.unwrap_or(false),
            ops: self.ops,
            db: self.db,
            queue: self.queue.unwrap_or(DEFAULT_QUEUE),
        };
        cfg.check().map_err(|e| at(e.to_string()))?;
        Ok(cfg)
    }

    /// An OTLP output: the record's line-format keys mean nothing to it.
    fn resolve_otlp(self, index: usize) -> Result<OutputConfig, ConfigError> {
        let at = |msg: String| ConfigError::Invalid(format!("[[output]] #{}: {msg}", index + 1));
        let line_keys = [
            ("path", self.path.is_some()),
            ("format", self.format.is_some()),
            ("fields", self.fields.is_some()),
            ("template", self.template.is_some()),
            ("rotate-size", self.rotate_size.is_some()),
            ("rotate-keep", self.rotate_keep.is_some()),
        ];
        if let Some((key, _)) = line_keys.iter().find(|(_, set)| *set) {
            return Err(at(format!("kind = \"otlp\" takes no `{key}`")));
        }
        if self.queue == Some(0) {
            return Err(at("`queue` must be at least 1".into()));
        }
        let otlp =
            crate::sink::otlp::OtlpConfig::resolve(self.endpoint.as_deref(), self.protocol, &|k| {
                std::env::var(k).ok()
            })
            .map_err(|e| at(e.to_string()))?
            .ok_or_else(|| {
                at("kind = \"otlp\" needs an `endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT)".into())
            })?;
        let cfg = OutputConfig {
            name: self.name.unwrap_or_else(|| "otlp".to_owned()),
            target: OutputTarget::Otlp(otlp),
            filter: self.filter,
            mask: self.mask.unwrap_or(false),
            ops: self.ops,
            db: self.db,
            queue: self.queue.unwrap_or(DEFAULT_QUEUE),
        };
        cfg.check().map_err(|e| at(e.to_string()))?;
        Ok(cfg)
    }
}

/// Checks the tables, and that no two outputs share a name, a file, or stdout.
pub fn resolve_tables(tables: Vec<OutputTable>) -> Result<Vec<OutputConfig>, ConfigError> {
    let outputs = tables
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.resolve(i))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in outputs.iter().enumerate() {
        for b in &outputs[..i] {
            if let (OutputTarget::Lines { spec: sa, .. }, OutputTarget::Lines { spec: sb, .. }) =
                (&a.target, &b.target)
            {
                if sa.path == sb.path {
                    return Err(ConfigError::Invalid(format!(
                        "[[output]] `{}` and `{}` both write to {}: their lines would interleave",
                        b.name,
                        a.name,
                        sa.path
                            .as_ref()
                            .map_or("stdout".to_owned(), |p| p.display().to_string())
                    )));
                }
            }
            if a.name == b.name {
                return Err(ConfigError::Invalid(format!(
                    "two [[output]] tables are named `{}` (set `name` to tell them apart)",
                    a.name
                )));
            }
        }
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::AuditArgs;

    fn tables(text: &str) -> Result<Vec<OutputConfig>, String> {
        let args = AuditArgs::from_toml(text, Path::new("t.toml")).map_err(|e| e.to_string())?;
        let cfg = args.resolve().map_err(|e| e.to_string())?;
        Ok(cfg.outputs)
    }

    #[test]
    fn three_tables_each_with_its_own_options() {
        let outs = tables(
            r#"
timeout = 5.0
[[output]]
path = "/var/log/mw/all.jsonl"
rotate-size = "100M"
[[output]]
name = "slow-news"
format = "text"
fields = ["DB", "Collection", "Duration"]
filter = 'Collection == "news" && Duration > 0.01'
ops = ["find"]
db = ["news"]
mask = true
queue = 100
[[output]]
kind = "file"
path = "audit.csv"
format = "csv"
"#,
        )
        .unwrap();
        assert_eq!(outs.len(), 3);
        assert_eq!(outs[0].name, "/var/log/mw/all.jsonl");
        let OutputTarget::Lines { spec, format, .. } = &outs[0].target else {
            panic!("a line output")
        };
        assert_eq!(spec.rotate_size, Some(100 << 20));
        assert_eq!(*format, Format::Json);
        assert_eq!(outs[0].queue, DEFAULT_QUEUE);
        assert_eq!(outs[1].name, "slow-news");
        let OutputTarget::Lines { spec, format, .. } = &outs[1].target else {
            panic!("a line output")
        };
        assert_eq!((spec.path.as_ref(), *format), (None, Format::Text));
        assert!(outs[1].mask);
        assert_eq!(outs[1].queue, 100);
        assert_eq!(outs[1].ops.as_deref(), Some(&["find".to_owned()][..]));
        let OutputTarget::Lines { format, .. } = &outs[2].target else {
            panic!("a line output")
        };
        assert_eq!(*format, Format::Csv);
    }

    #[test]
    fn an_otlp_table_is_an_output_of_its_own() {
        let outs = tables(
            r#"
[[output]]
path = "all.jsonl"
[[output]]
kind = "otlp"
endpoint = "http://127.0.0.1:4317"
protocol = "grpc"
ops = ["find"]
"#,
        )
        .unwrap();
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[1].name, "otlp");
        let OutputTarget::Otlp(c) = &outs[1].target else {
            panic!("an OTLP output: {:?}", outs[1].target)
        };
        assert_eq!(
            (c.endpoint.as_str(), c.protocol),
            ("http://127.0.0.1:4317", crate::sink::otlp::Protocol::Grpc)
        );
        assert_eq!(outs[1].ops, Some(vec!["find".to_owned()]));
        assert!(outs[1].formatter().unwrap().is_none(), "no line format");
        for (text, want) in [
            (
                "[[output]]\nkind = \"otlp\"\nendpoint = \"http://h:4318\"\nformat = \"csv\"\n",
                "#1: kind = \"otlp\" takes no `format`",
            ),
            (
                "[[output]]\nendpoint = \"http://h:4318\"\n",
                "are for kind = \"otlp\"",
            ),
        ] {
            let e = tables(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn bad_tables_are_errors_that_say_which() {
        let cases = [
            ("[[output]]\nformat = \"text\"\nbogus = 1\n", "bogus"),
            (
                "[[output]]\nkind = \"file\"\n",
                "#1: kind = \"file\" needs a `path`",
            ),
            (
                "[[output]]\nkind = \"stdout\"\npath = \"x\"\n",
                "takes no `path`",
            ),
            ("[[output]]\n[[output]]\n", "both write to stdout"),
            (
                "[[output]]\npath = \"a\"\n[[output]]\npath = \"b\"\nname = \"a\"\n",
                "named `a`",
            ),
            (
                "[[output]]\n[[output]]\npath = \"f\"\nfilter = 'Nope == 1'\n",
                "#2: --filter names `Nope`",
            ),
            (
                "[[output]]\nrotate-size = \"1M\"\n",
                "#1: --rotate-size and --rotate-keep need a `path`",
            ),
            ("[[output]]\nfields = [\"Nope\"]\n", "unknown field `Nope`"),
            ("[[output]]\nqueue = 0\n", "`queue` must be at least 1"),
            (
                "[output]\npath = \"x\"\n",
                "[[output]] (an array of tables)",
            ),
            (
                "format = \"csv\"\n[[output]]\npath = \"x\"\n",
                "`format` with [[output]] tables",
            ),
        ];
        for (text, want) in cases {
            let e = tables(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_shorthand_is_one_output() {
        let cfg = AuditArgs::from_toml(
            "output = \"a.jsonl\"\nfilter = 'DB == \"x\"'\n",
            Path::new("t.toml"),
        )
        .unwrap()
        .resolve()
        .unwrap();
        assert!(cfg.outputs.is_empty());
        let outs = cfg.output_configs();
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].name, "a.jsonl");
        assert_eq!(outs[0].filter.as_deref(), Some("DB == \"x\""));
        assert_eq!(AuditConfig::default().output_configs()[0].name, "stdout");
    }

    use crate::config::AuditConfig;
}
