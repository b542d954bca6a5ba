//! Options of the audit pipeline (formats, outputs, filters, the delay queue): clap arguments
//! the main CLI flattens, and the same keys in a TOML config file. The command line wins over
//! the file, the file over the defaults. See `mongowatch.example.toml`.

mod output;

use std::path::{Path, PathBuf};

pub use output::{OutputConfig, OutputKey, OutputKind, OutputTable, OutputTarget, DEFAULT_QUEUE};
use serde::Deserialize;

use crate::{
    capture::select::SelectorTable,
    filter::RecordFilter,
    sink::{Format, Formatter, OutputSpec},
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is the error's source, not part of its text: `{:#}` prints the chain, which
    /// would otherwise say it twice.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
    #[error(transparent)]
    Otlp(#[from] crate::sink::otlp::OtlpError),
}

/// A size in bytes: a number, or a string with a K, M or G suffix (powers of 1024).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let m = match c.to_ascii_uppercase() {
                    'K' => 1u64 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'B' => 1,
                    _ => return Err(format!("bad size `{s}` (use e.g. 1048576, 512K, 100M, 1G)")),
                };
                (&t[..i], m)
            }
            _ => (t, 1),
        };
        let n: u64 = num
            .trim()
            .parse()
            .map_err(|_| format!("bad size `{s}` (use e.g. 1048576, 512K, 100M, 1G)"))?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Audit options. Every one can also be set in the config file under the same name
/// (kebab-case, e.g. `rotate-size = "100M"`).
#[derive(clap::Args, Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuditArgs {
    /// TOML file with any of these options; the command line wins over it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Record format: json (JSON Lines, the default), text, csv, or template.
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Fields of the text and csv formats, comma-separated (e.g. StartTime,DB,Filter).
    #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
    pub fields: Option<Vec<String>>,

    /// Line template with {Field} placeholders (implies --format template),
    /// e.g. "{StartTime} {DB}.{Collection} {Operation} {Duration}s".
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,

    /// Append records to FILE (created with mode 0600) instead of stdout. (In the config
    /// file, `[[output]]` tables set several outputs at once instead.)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    #[serde(skip)]
    pub output: Option<PathBuf>,

    /// The file's `output` key: a path (read into `output`) or `[[output]]` tables.
    #[arg(skip)]
    #[serde(rename = "output")]
    pub file_output: Option<OutputKey>,

    /// Rotate the output file when it passes SIZE bytes (suffixes K, M, G).
    #[arg(long, value_name = "SIZE")]
    pub rotate_size: Option<ByteSize>,

    /// Rotated files to keep (default 5).
    #[arg(long, value_name = "N")]
    pub rotate_keep: Option<usize>,

    /// Write only records for which this CEL expression is true,
    /// e.g. 'Collection == "news" && Duration > 0.01'.
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,

    /// Mask Filter values: strings to "x" times their length, numbers to 0, others to null.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub mask: Option<bool>,

    /// Write only these operations, comma-separated (e.g. find,aggregate,update).
    #[arg(long, value_delimiter = ',', value_name = "OPS")]
    pub ops: Option<Vec<String>>,

    /// Write only operations on these databases, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "DBS")]
    pub db: Option<Vec<String>>,

    /// Every SECS seconds, write a rate summary (per DB/Collection/Operation) to stderr.
    #[arg(long, value_name = "SECS")]
    pub rate: Option<f64>,

    /// Seconds an open operation (cursor) may stay idle before a `timeout` record (default 10).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,

    /// Seconds every record is held so output stays ordered by StartTime (default 0).
    #[arg(long, value_name = "SECS")]
    pub delay: Option<f64>,

    /// Also record handshakes, heartbeats (hello, isMaster, ping) and authentication steps.
    #[arg(id = "include-heartbeats", long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub include_heartbeats: Option<bool>,

    /// Memory all connections' half-received messages may hold together (suffixes K, M, G;
    /// default 256M, at least 1M). Past it, the connection holding the most drops its partial
    /// messages, counted and logged.
    #[arg(long, value_name = "SIZE")]
    pub memory_budget: Option<ByteSize>,

    /// Size of the kernel ring buffer events wait in for the daemon (a power of two from 1M to
    /// 1G; default 64M). It is locked kernel memory; a larger ring rides out longer stalls of
    /// the daemon (a machine whose CPUs are all busy) before events are lost.
    #[arg(long, value_name = "SIZE")]
    pub ring_size: Option<ByteSize>,

    /// Lower mongowatch's nice value by N, 0 to 20 (default 4, like auditd's priority_boost),
    /// so that on a machine whose CPUs are all busy it is scheduled ahead of the processes it
    /// watches and keeps the ring from filling. It uses only the CPU its events need; 0 leaves
    /// it at the priority it was started with.
    #[arg(long, value_name = "N")]
    pub priority_boost: Option<u8>,

    /// Serve /healthz, /readyz and Prometheus /metrics over HTTP on ADDR (e.g. 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Also export every record as an OTLP log record to this collector URL (e.g.
    /// http://localhost:4318); the OTEL_EXPORTER_OTLP_* variables are honoured too.
    #[arg(id = "otlp-endpoint", long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: http/protobuf (the default, port 4318) or grpc (port 4317).
    #[arg(id = "otlp-protocol", long, value_enum, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<crate::sink::otlp::Protocol>,

    /// `[[select]]` tables of the config file (the command line's selection flags are ORed
    /// with them).
    #[arg(skip)]
    pub select: Vec<SelectorTable>,

    /// `[[exclude]]` tables of the config file.
    #[arg(skip)]
    pub exclude: Vec<SelectorTable>,
}

/// The keys of the config file: every option above but `config` (any other key is an error).
pub const FILE_KEYS: &[&str] = &[
    "format",
    "fields",
    "template",
    "output",
    "rotate-size",
    "rotate-keep",
    "filter",
    "mask",
    "ops",
    "db",
    "rate",
    "timeout",
    "delay",
    "include-heartbeats",
    "memory-budget",
    "ring-size",
    "priority-boost",
    "listen",
    "otlp-endpoint",
    "otlp-protocol",
];

/// The tables of the config file besides those keys: `[[select]]` and `[[exclude]]`.
pub const FILE_TABLES: &[&str] = &["select", "exclude"];

impl AuditArgs {
    /// Reads the options from TOML text. A key that is not in [`FILE_KEYS`] is an error (a typo
    /// such as `timout = 5` must not leave the default silently in force); the message names the
    /// key, its line and `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut args: AuditArgs = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if let Some(OutputKey::Path(p)) = &args.file_output {
            args.output = Some(p.clone());
            args.file_output = None;
        }
        Ok(args)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Each option from `self` when set, else from `file`.
    pub fn or(self, file: AuditArgs) -> AuditArgs {
        AuditArgs {
            config: self.config.or(file.config),
            format: self.format.or(file.format),
            fields: self.fields.or(file.fields),
            template: self.template.or(file.template),
            output: self.output.or(file.output),
            file_output: self.file_output.or(file.file_output),
            rotate_size: self.rotate_size.or(file.rotate_size),
            rotate_keep: self.rotate_keep.or(file.rotate_keep),
            filter: self.filter.or(file.filter),
            mask: self.mask.or(file.mask),
            ops: self.ops.or(file.ops),
            db: self.db.or(file.db),
            rate: self.rate.or(file.rate),
            timeout: self.timeout.or(file.timeout),
            delay: self.delay.or(file.delay),
            include_heartbeats: self.include_heartbeats.or(file.include_heartbeats),
            memory_budget: self.memory_budget.or(file.memory_budget),
            ring_size: self.ring_size.or(file.ring_size),
            priority_boost: self.priority_boost.or(file.priority_boost),
            listen: self.listen.or(file.listen),
            otlp_endpoint: self.otlp_endpoint.or(file.otlp_endpoint),
            otlp_protocol: self.otlp_protocol.or(file.otlp_protocol),
            select: [self.select, file.select].concat(),
            exclude: [self.exclude, file.exclude].concat(),
        }
    }

    /// Command line + config file (when `--config` names one), unchecked but for one rule:
    /// with `[[output]]` tables, the options of a single output (on the command line or at the
    /// top of the file) are an error, since they could mean any of the tables.
    pub fn merged(self) -> Result<AuditArgs, ConfigError> {
        let merged = match &self.config {
            Some(path) => {
                let file = AuditArgs::from_file(path)?;
                self.or(file)
            }
            None => self,
        };
        if let Some(key) = merged.single_output_options_set().first() {
            return Err(ConfigError::Invalid(format!(
                "`{key}` with [[output]] tables: set it in each table that needs it"
            )));
        }
        Ok(merged)
    }

    /// With `[[output]]` tables: the single-output options also set, by their file names.
    fn single_output_options_set(&self) -> Vec<&'static str> {
        if !matches!(self.file_output, Some(OutputKey::Tables(_))) {
            return Vec::new();
        }
        let set = [
            ("format", self.format.is_some()),
            ("fields", self.fields.is_some()),
            ("template", self.template.is_some()),
            ("output", self.output.is_some()),
            ("rotate-size", self.rotate_size.is_some()),
            ("rotate-keep", self.rotate_keep.is_some()),
            ("filter", self.filter.is_some()),
            ("mask", self.mask.is_some()),
            ("ops", self.ops.is_some()),
            ("db", self.db.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }

    /// Command line + config file (when `--config` names one) + defaults, checked.
    pub fn resolve(self) -> Result<AuditConfig, ConfigError> {
        AuditConfig::try_from(self.merged()?)
    }

    /// The options set here that shape records (all but the output, its rotation and the
    /// memory budget), by their config-file names.
    pub fn record_options_set(&self) -> Vec<&'static str> {
        let set = [
            self.format.is_some(),
            self.fields.is_some(),
            self.template.is_some(),
            self.filter.is_some(),
            self.mask.is_some(),
            self.ops.is_some(),
            self.db.is_some(),
            self.rate.is_some(),
            self.timeout.is_some(),
            self.delay.is_some(),
            self.include_heartbeats.is_some(),
            self.otlp_endpoint.is_some(),
            self.otlp_protocol.is_some(),
        ];
        let mut keys: Vec<&'static str> = RECORD_OPTIONS
            .iter()
            .zip(set)
            .filter(|(_, on)| *on)
            .map(|(key, _)| *key)
            .collect();
        if matches!(self.file_output, Some(OutputKey::Tables(_))) {
            keys.push("[[output]]");
        }
        keys
    }
}

/// The options that shape records, by their config-file names, in the order of
/// [`AuditArgs::record_options_set`]; they are the clap ids of these options too.
pub const RECORD_OPTIONS: [&str; 13] = [
    "format",
    "fields",
    "template",
    "filter",
    "mask",
    "ops",
    "db",
    "rate",
    "timeout",
    "delay",
    "include-heartbeats",
    "otlp-endpoint",
    "otlp-protocol",
];

/// The checked audit configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditConfig {
    pub format: Format,
    pub fields: Option<Vec<String>>,
    pub template: Option<String>,
    pub output: OutputSpec,
    pub filter: Option<String>,
    pub mask: bool,
    pub ops: Option<Vec<String>>,
    pub db: Option<Vec<String>>,
    /// Rate summary period in seconds.
    pub rate: Option<f64>,
    pub timeout_secs: f64,
    pub delay_secs: f64,
    pub include_heartbeats: bool,
    /// Bytes the stream buffers of all connections may hold together.
    pub memory_budget: usize,
    /// Bytes of the kernel's ring buffer.
    pub ring_size: u32,
    /// How far the daemon lowers its nice value.
    pub priority_boost: u8,
    /// `--listen`: where /healthz, /readyz and /metrics are served.
    pub listen: Option<std::net::SocketAddr>,
    /// OTLP logs beside the output (`--otlp-endpoint` or the OTEL_* variables).
    pub otlp: Option<crate::sink::otlp::OtlpConfig>,
    /// The `[[output]]` tables; empty: the single output the fields above describe.
    pub outputs: Vec<OutputConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            format: Format::Json,
            fields: None,
            template: None,
            output: OutputSpec {
                path: None,
                rotate_size: None,
                rotate_keep: 5,
            },
            filter: None,
            mask: false,
            ops: None,
            db: None,
            rate: None,
            timeout_secs: 10.0,
            delay_secs: 0.0,
            include_heartbeats: false,
            memory_budget: crate::stream::DEFAULT_MEMORY_BUDGET,
            ring_size: mongowatch_common::RING_SIZE,
            priority_boost: DEFAULT_PRIORITY_BOOST,
            listen: None,
            otlp: None,
            outputs: Vec::new(),
        }
    }
}

/// A budget below one large message would shed nearly every large reply.
const MIN_MEMORY_BUDGET: u64 = 1 << 20;

/// The ring's bounds: below a few large messages' worth it loses them whole; above, it is a
/// lot of memory the kernel can never page out.
const RING_SIZE_MIN: u64 = 1 << 20;
const RING_SIZE_MAX: u64 = 1 << 30;

impl AuditArgs {
    /// The memory budget from the command line or file (or the default), checked.
    pub fn memory_budget(&self) -> Result<usize, ConfigError> {
        match self.memory_budget {
            None => Ok(crate::stream::DEFAULT_MEMORY_BUDGET),
            Some(ByteSize(b)) if b >= MIN_MEMORY_BUDGET => {
                Ok(usize::try_from(b).unwrap_or(usize::MAX))
            }
            Some(ByteSize(b)) => Err(ConfigError::Invalid(format!(
                "--memory-budget must be at least 1M, not {b} bytes"
            ))),
        }
    }

    /// The ring buffer's size from the command line or file (or the default), checked: the
    /// kernel takes only a power of two.
    pub fn ring_size(&self) -> Result<u32, ConfigError> {
        match self.ring_size {
            None => Ok(mongowatch_common::RING_SIZE),
            Some(ByteSize(b))
                if b.is_power_of_two() && (RING_SIZE_MIN..=RING_SIZE_MAX).contains(&b) =>
            {
                Ok(b as u32)
            }
            Some(ByteSize(b)) => Err(ConfigError::Invalid(format!(
                "--ring-size must be a power of two from 1M to 1G (e.g. 64M, 256M), not {b} bytes"
            ))),
        }
    }
}

/// auditd's default too: an audit daemon that falls behind loses records.
const DEFAULT_PRIORITY_BOOST: u8 = 4;

fn secs_ok(name: &str, v: f64, zero_ok: bool) -> Result<f64, ConfigError> {
    if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v < 1e9 {
        Ok(v)
    } else {
        Err(ConfigError::Invalid(format!(
            "--{name} must be a number of seconds{}, not {v}",
            if zero_ok { " >= 0" } else { " > 0" }
        )))
    }
}

impl TryFrom<AuditArgs> for AuditConfig {
    type Error = ConfigError;

    fn try_from(a: AuditArgs) -> Result<Self, ConfigError> {
        let d = AuditConfig::default();
        let format = output::resolve_format(a.format, &a.template)?;
        let memory_budget = a.memory_budget()?;
        let ring_size = a.ring_size()?;
        let priority_boost = a.priority_boost.unwrap_or(d.priority_boost);
        if priority_boost > 20 {
            return Err(ConfigError::Invalid(format!(
                "--priority-boost must be 0 to 20, not {priority_boost}"
            )));
        }
        let output = output::resolve_spec(a.output, a.rotate_size, a.rotate_keep)?;
        let outputs = match a.file_output {
            Some(OutputKey::Tables(t)) => output::resolve_tables(t)?,
            _ => Vec::new(),
        };
        let cfg = AuditConfig {
            format,
            fields: a.fields,
            template: a.template,
            output,
            filter: a.filter,
            mask: a.mask.unwrap_or(d.mask),
            ops: a.ops,
            db: a.db,
            rate: a.rate.map(|r| secs_ok("rate", r, false)).transpose()?,
            timeout_secs: secs_ok("timeout", a.timeout.unwrap_or(d.timeout_secs), false)?,
            delay_secs: secs_ok("delay", a.delay.unwrap_or(d.delay_secs), true)?,
            include_heartbeats: a.include_heartbeats.unwrap_or(d.include_heartbeats),
            memory_budget,
            ring_size,
            priority_boost,
            listen: a.listen,
            otlp: crate::sink::otlp::OtlpConfig::resolve(
                a.otlp_endpoint.as_deref(),
                a.otlp_protocol,
                &|k| std::env::var(k).ok(),
            )?,
            outputs,
        };
        // Fail at startup, not on the first record.
        cfg.formatter()?;
        cfg.record_filter()?;
        Ok(cfg)
    }
}

impl AuditConfig {
    /// Every output: the `[[output]]` tables, or the single one the shorthand describes.
    pub fn output_configs(&self) -> Vec<OutputConfig> {
        let mut outputs = if self.outputs.is_empty() {
            vec![self.line_output()]
        } else {
            self.outputs.clone()
        };
        // `--otlp-endpoint` (or the OTEL_* variables) is one more output, with the command
        // line's filter and mask.
        if let Some(otlp) = &self.otlp {
            let line = self.line_output();
            outputs.push(OutputConfig {
                name: "otlp".to_owned(),
                target: OutputTarget::Otlp(otlp.clone()),
                ..line
            });
        }
        outputs
    }

    /// The single output the command line's flags describe.
    fn line_output(&self) -> OutputConfig {
        OutputConfig {
            name: self
                .output
                .path
                .as_ref()
                .map_or("stdout".to_owned(), |p| p.display().to_string()),
            target: OutputTarget::Lines {
                spec: self.output.clone(),
                format: self.format,
                fields: self.fields.clone(),
                template: self.template.clone(),
            },
            filter: self.filter.clone(),
            mask: self.mask,
            ops: self.ops.clone(),
            db: self.db.clone(),
            queue: DEFAULT_QUEUE,
        }
    }

    pub fn formatter(&self) -> Result<Formatter, crate::sink::SinkError> {
        Formatter::new(
            self.format,
            self.fields.as_deref(),
            self.template.as_deref(),
        )
    }

    pub fn record_filter(&self) -> Result<RecordFilter, crate::filter::FilterError> {
        RecordFilter::new(
            self.filter.as_deref(),
            self.ops.clone(),
            self.db.clone(),
            self.mask,
        )
    }
}
