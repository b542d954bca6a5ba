//! Sink layer: formats records and writes them to stdout or a file (append, mode 0600,
//! rotation by size); [`otlp`] exports them as OTLP logs; [`messages`] formats the
//! `--messages` lines. Audit records only ever go
//! here, never to the diagnostic log.

mod format;
pub mod messages;
pub mod otlp;
mod writer;

use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use file_rotate::{compression::Compression, suffix::AppendCount, ContentLimit, FileRotate};
pub use format::{Format, Formatter, DEFAULT_TEXT_FIELDS};
pub use writer::RecordWriter;

use crate::record::Record;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("unknown field `{0}` (fields are the audit record's: WatchID, StartTime, DB, ...)")]
    UnknownField(String),
    #[error("bad template: {0}")]
    Template(String),
    #[error("cannot open output {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("--rotate-size must be more than 0 bytes")]
    RotateSize,
    #[error("writing audit records: {0}")]
    Write(#[from] io::Error),
}

/// Where records go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputSpec {
    /// `None`: stdout.
    pub path: Option<PathBuf>,
    /// Rotate when the file passes this many bytes (whole records only).
    pub rotate_size: Option<u64>,
    /// Rotated files kept (`FILE.1` newest ... `FILE.N`).
    pub rotate_keep: usize,
}

/// An opened output and whether it was empty (a CSV header is written only then).
pub struct Output {
    pub writer: Box<dyn Write + Send>,
    pub fresh: bool,
    /// For a rotated file: its size when opened and the rotation size, so the sink knows when
    /// a write starts a new file (which then gets its own CSV header).
    pub rotation: Option<Rotation>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub initial_len: u64,
    pub size: u64,
}

impl Output {
    /// Any writer (tests, or a daemon that routes records itself); `fresh`: write a CSV header.
    pub fn new(writer: Box<dyn Write + Send>, fresh: bool) -> Self {
        Self {
            writer,
            fresh,
            rotation: None,
        }
    }
}

fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    // file-rotate wants read + create + append; mode 0600 keeps the audit log private.
    o.read(true).create(true).append(true).mode(0o600);
    o
}

/// Opens the output: stdout, a file opened for append (created with mode 0600), or a
/// size-rotated file.
pub fn open_output(spec: &OutputSpec) -> Result<Output, SinkError> {
    let Some(path) = &spec.path else {
        return Ok(Output::new(Box::new(io::stdout()), true));
    };
    let open_err = |source| SinkError::Open {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(open_err)?;
    }
    // Open once here so a bad path is a clear startup error, not a panic inside file-rotate.
    let file = open_options().open(path).map_err(open_err)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let fresh = len == 0;
    let rotation = spec.rotate_size.map(|size| Rotation {
        initial_len: len,
        size,
    });
    let writer: Box<dyn Write + Send> = match spec.rotate_size {
        None => Box::new(file),
        Some(0) => return Err(SinkError::RotateSize),
        Some(size) => {
            drop(file);
            let base = if path.parent().is_some_and(|p| p.as_os_str().is_empty()) {
                Path::new(".").join(path)
            } else {
                path.clone()
            };
            Box::new(FileRotate::new(
                base,
                AppendCount::new(spec.rotate_keep.max(1)),
                ContentLimit::BytesSurpassed(usize::try_from(size).unwrap_or(usize::MAX)),
                Compression::None,
                Some(open_options()),
            ))
        }
    };
    Ok(Output {
        writer,
        fresh,
        rotation,
    })
}

/// Formats and writes records.
pub struct Sink {
    out: Box<dyn Write + Send>,
    formatter: Formatter,
    header_pending: bool,
    rotation: Option<Rotation>,
    /// Bytes in the current file (rotated outputs only).
    in_file: u64,
    /// Whole lines not written yet: a write(2) per record cost the daemon more than decoding
    /// it, so lines leave in batches, on `flush` (the output's queue ran empty) or when this
    /// holds [`SINK_BUFFER`] bytes.
    buf: Vec<u8>,
    /// Where each record held in `buf` ends: what a failed write leaves whole is known.
    ends: Vec<usize>,
    /// Records taken that a failed write lost (not the record whose `write` failed).
    lost: u64,
}

/// Bytes of whole lines the sink gathers before it writes them out without waiting for a flush.
pub const SINK_BUFFER: usize = 1 << 16;

impl Sink {
    pub fn new(formatter: Formatter, out: Output) -> Self {
        Self {
            header_pending: out.fresh && formatter.header().is_some(),
            out: out.writer,
            formatter,
            rotation: out.rotation,
            in_file: out.rotation.map_or(0, |r| r.initial_len),
            buf: Vec::with_capacity(SINK_BUFFER),
            ends: Vec::new(),
            lost: 0,
        }
    }

    /// Records taken and not written out yet.
    pub fn held(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Records taken that a failed write lost.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Writes the gathered lines in one write (file-rotate rotates only between writes, so a
    /// batch is never split across files).
    fn write_out(&mut self) -> Result<(), SinkError> {
        let mut done = 0;
        let result = loop {
            if done == self.buf.len() {
                break Ok(());
            }
            match self.out.write(&self.buf[done..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            // The records written whole before the failure are written; the rest are lost.
            let whole = self.ends.iter().filter(|end| **end <= done).count();
            self.lost += (self.ends.len() - whole) as u64;
        }
        // What failed is not retried: the error is final for this output.
        self.buf.clear();
        self.ends.clear();
        Ok(result?)
    }

    pub fn write(&mut self, r: &Record) -> Result<(), SinkError> {
        // file-rotate starts a new file when a write begins past the size (whole writes only):
        // that file gets its own CSV header.
        if let Some(rot) = self.rotation {
            if self.in_file > rot.size {
                self.in_file = 0;
                self.header_pending = self.formatter.header().is_some();
            }
        }
        let before = self.buf.len();
        if self.header_pending {
            if let Some(h) = self.formatter.header() {
                self.buf.extend_from_slice(h.as_bytes());
            }
            self.header_pending = false;
        }
        self.formatter.format_into(r, &mut self.buf);
        self.ends.push(self.buf.len());
        self.in_file = self
            .in_file
            .saturating_add((self.buf.len() - before) as u64);
        // A batch ends with the record that takes a rotated file past its size, so the next
        // write (and the header that goes with it) is the one file-rotate moves to a new file.
        let rotates = self.rotation.is_some_and(|rot| self.in_file > rot.size);
        if rotates || self.buf.len() >= SINK_BUFFER {
            if let Err(e) = self.write_out() {
                // This record is the batch's last, so it was not written whole: its own
                // failure is the error returned, not one of the others lost.
                self.lost -= 1;
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.write_out()?;
        self.out.flush()?;
        Ok(())
    }
}

impl Drop for Sink {
    /// The pipeline flushes before it lets a sink go; this keeps a forgotten flush from losing
    /// the last lines silently.
    fn drop(&mut self) {
        // Not while unwinding: the writer may be what panicked.
        if !self.buf.is_empty() && !std::thread::panicking() {
            if let Err(e) = self.flush() {
                tracing::error!("audit records lost at exit: {e}");
            }
        }
    }
}
