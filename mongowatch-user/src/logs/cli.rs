//! The `aggregate` and `digest` subcommands: reading the files, writing the results.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{aggregate::aggregate, concat, digest, read_log, Log};

/// The subcommands: offline tools over the audit logs mongowatch wrote (and, hidden, the
/// generator of the man pages and completions the packages ship).
#[derive(clap::Subcommand, Debug)]
pub enum Tool {
    /// Keep the last record of each WatchID (a long operation is written at each timeout and
    /// again when final; the last is the truth), in the same format: JSON Lines or CSV.
    Aggregate(AggregateArgs),
    /// Per query shape (Operation, DB.Collection, the Filter with values masked): count,
    /// total and p50/p95/p99 Duration, documents matched and bytes, ranked by total Duration.
    Digest(DigestArgs),
    /// Write the man pages or the shell completions into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    Man,
    Completions,
}

#[derive(clap::Args, Debug)]
pub struct AggregateArgs {
    /// Audit logs (JSON Lines or CSV, as mongowatch writes them); several are read as one,
    /// in the order given (e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Rewrite each FILE in place (each on its own).
    #[arg(short = 'i', long, conflicts_with = "output")]
    pub in_place: bool,
    /// Write to FILE (created with mode 0600) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DigestFormat {
    /// An aligned table, durations in seconds.
    #[default]
    Table,
    /// JSON Lines, one object per shape.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct DigestArgs {
    /// Audit logs (JSON Lines or CSV), read as one.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub format: DigestFormat,
    /// Only the first N shapes.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

fn read(path: &Path) -> Result<Log> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let log = read_log(&path.display().to_string(), &bytes)?;
    // Said, not silent: each line left out, up to a few, then how many.
    for s in log.skipped.iter().take(5) {
        eprintln!("mongowatch: {}:{}: left out: {}", log.name, s.line, s.why);
    }
    if log.skipped.len() > 5 {
        eprintln!(
            "mongowatch: {}: {} lines left out in all",
            log.name,
            log.skipped.len()
        );
    }
    Ok(log)
}

fn read_all(files: &[PathBuf]) -> Result<Log> {
    Ok(concat(
        files.iter().map(|f| read(f)).collect::<Result<Vec<_>>>()?,
    )?)
}

/// Writes `text` to `path`, created with mode 0600 (an audit log stays private).
fn write_new(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `path` by `text` atomically (a temporary file beside it, renamed), keeping its mode.
fn replace(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.aggregate-tmp", name.to_string_lossy()));
    write_new(&tmp, text)?;
    let mode = fs::metadata(path)?.permissions().mode();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        // `| head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

impl Tool {
    /// `command`: the whole command line's definition, which `generate` documents.
    pub fn run(self, command: impl FnOnce() -> clap::Command) -> Result<()> {
        match self {
            Tool::Aggregate(a) => run_aggregate(a),
            Tool::Digest(d) => run_digest(d),
            Tool::Generate { what, dir } => {
                let written = match what {
                    Generated::Man => crate::manual::write_man_pages(command(), &dir),
                    Generated::Completions => crate::manual::write_completions(command(), &dir),
                }
                .with_context(|| format!("writing into {}", dir.display()))?;
                for path in written {
                    println!("{}", path.display());
                }
                Ok(())
            }
        }
    }
}

fn run_aggregate(a: AggregateArgs) -> Result<()> {
    if a.in_place {
        for f in &a.files {
            let log = read(f)?;
            let (text, s) = aggregate(&log);
            replace(f, &text)?;
            eprintln!(
                "mongowatch: {}: {} records, {} after keeping the last of each WatchID",
                f.display(),
                s.records_in,
                s.records_out
            );
        }
        return Ok(());
    }
    let log = read_all(&a.files)?;
    let (text, s) = aggregate(&log);
    match &a.output {
        Some(path) => {
            if a.files.iter().any(|f| same_file(f, path)) {
                bail!("-o {} is one of the inputs (use -i)", path.display());
            }
            write_new(path, &text)?;
        }
        None => stdout(&text)?,
    }
    eprintln!(
        "mongowatch: {} records, {} after keeping the last of each WatchID",
        s.records_in, s.records_out
    );
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn run_digest(d: DigestArgs) -> Result<()> {
    let log = read_all(&d.files)?;
    let mut shapes = digest::digest(&log);
    if let Some(n) = d.limit {
        shapes.truncate(n);
    }
    stdout(&match d.format {
        DigestFormat::Table => digest::table(&shapes),
        DigestFormat::Json => digest::json_lines(&shapes),
    })
}
