//! The driver workloads (`tests/workloads/*`) and their oracles.
//!
//! A workload runs N operations through a real driver (pymongo or the Node `mongodb` driver)
//! and records every command from the driver's own command monitoring as JSON lines: the
//! oracle. It waits for a start gate first so that mongowatch can attach to its PID before the
//! driver connects, and reports its throughput at the end.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{paths, process::ChildGuard, Mongowatch};

/// Which driver runs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `tests/workloads/pymongo_workload.py` in the cache's venv.
    Pymongo,
    /// `tests/workloads/node_workload.js` with the cache's `mongodb` package.
    Node,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Pymongo => "pymongo",
            Driver::Node => "node",
        }
    }

    pub fn script(self) -> PathBuf {
        match self {
            Driver::Pymongo => paths::workloads_dir().join("pymongo_workload.py"),
            Driver::Node => paths::workloads_dir().join("node_workload.js"),
        }
    }

    /// Whether `cargo xtask setup` has installed what this driver needs.
    pub fn is_installed(self) -> bool {
        match self {
            Driver::Pymongo => paths::venv_python().is_file(),
            Driver::Node => paths::node_modules().join("mongodb/package.json").is_file(),
        }
    }

    /// A command that runs `script` (a file in `tests/workloads`) with this driver's interpreter
    /// and environment, for workloads of a test's own.
    pub fn command(self, script: &Path) -> Command {
        match self {
            Driver::Pymongo => {
                let mut cmd = Command::new(paths::venv_python());
                cmd.arg(script)
                    .env("PYTHONUNBUFFERED", "1")
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                cmd
            }
            Driver::Node => {
                let mut cmd = Command::new(paths::node());
                cmd.arg(script).env("NODE_PATH", paths::node_modules());
                cmd
            }
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub driver: Driver,
    /// Usually `Server::uri()` or `RecordingProxy::uri()`; may carry options such as
    /// `compressors=zlib`.
    pub uri: String,
    /// Driver operations (the acceptance workload is 10,000).
    pub ops: u32,
    /// Wait for [`Workload::release`] before connecting.
    pub gated: bool,
    /// Sleep this long (after the gate) before connecting.
    pub start_delay: Option<Duration>,
    /// Database name (default `mongowatch_e2e`).
    pub db: Option<String>,
    /// batch_size of the finds that cause getMores (default 50).
    pub batch_size: Option<u32>,
    /// Write the oracle (default true; false for pure throughput runs).
    pub oracle: bool,
}

impl WorkloadSpec {
    pub fn new(driver: Driver, uri: impl Into<String>, ops: u32) -> WorkloadSpec {
        WorkloadSpec {
            driver,
            uri: uri.into(),
            ops,
            gated: false,
            start_delay: None,
            db: None,
            batch_size: None,
            oracle: true,
        }
    }

    /// Make the workload wait for [`Workload::release`] before it connects.
    pub fn gated(mut self) -> WorkloadSpec {
        self.gated = true;
        self
    }

    pub fn start_delay(mut self, delay: Duration) -> WorkloadSpec {
        self.start_delay = Some(delay);
        self
    }

    pub fn db(mut self, db: impl Into<String>) -> WorkloadSpec {
        self.db = Some(db.into());
        self
    }

    pub fn batch_size(mut self, n: u32) -> WorkloadSpec {
        self.batch_size = Some(n);
        self
    }

    pub fn without_oracle(mut self) -> WorkloadSpec {
        self.oracle = false;
        self
    }

    /// Starts the workload (see [`Workload::spawn`]).
    pub fn spawn(&self) -> Result<Workload> {
        Workload::spawn(self)
    }
}

/// The workload's closing report.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkloadSummary {
    pub driver: String,
    pub pid: u32,
    pub ops: u64,
    pub elapsed_s: f64,
    pub ops_per_sec: Option<f64>,
    pub commands_started: u64,
    pub commands_succeeded: u64,
    pub commands_failed: u64,
    pub op_counts: BTreeMap<String, u64>,
}

/// What kind of command monitoring event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OracleEventKind {
    Started,
    Succeeded,
    Failed,
}

/// One command monitoring event from the driver.
#[derive(Debug, Clone, Deserialize)]
pub struct OracleEvent {
    pub event: OracleEventKind,
    /// CLOCK_MONOTONIC ns when the driver published the event.
    pub t_ns: u64,
    /// The wire requestID of the command's message.
    pub request_id: i64,
    pub command_name: String,
    pub database: String,
    /// The server's address as the driver sees it (`host:port`).
    #[serde(default)]
    pub connection: Option<String>,
    /// The server's id for the connection (its `hello` connectionId).
    #[serde(default)]
    pub server_connection_id: Option<i64>,
    /// pymongo only: the operation a command belongs to (a find and its getMores share one).
    #[serde(default)]
    pub operation_id: Option<i64>,
    /// Started: the command's target collection, when its value is a string.
    #[serde(default)]
    pub collection: Option<String>,
    /// Started: the number of `documents` of an insert.
    #[serde(default)]
    pub documents: Option<u64>,
    /// Succeeded/failed: the driver's round-trip time in µs (the Node driver's is ms-grained).
    #[serde(default)]
    pub duration_us: Option<u64>,
    /// Failed: the server's error code.
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub errmsg: Option<String>,
}

/// Reads an oracle file (JSON lines).
pub fn read_oracle(path: &Path) -> Result<Vec<OracleEvent>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: {line}", path.display(), i + 1))
        })
        .collect()
}

/// A finished workload.
#[derive(Debug, Clone)]
pub struct WorkloadOutcome {
    pub summary: WorkloadSummary,
    /// Empty when the spec said `without_oracle`.
    pub oracle: Vec<OracleEvent>,
    pub status: ExitStatus,
}

impl WorkloadOutcome {
    /// The started events, in order.
    pub fn started(&self) -> impl Iterator<Item = &OracleEvent> {
        self.oracle
            .iter()
            .filter(|e| e.event == OracleEventKind::Started)
    }
}

/// A running workload process; stopped by its PID when dropped.
pub struct Workload {
    spec: WorkloadSpec,
    // Field order: the process stops before its directory is removed.
    process: ChildGuard,
    dir: tempfile::TempDir,
}

impl Workload {
    /// Starts the workload process. With `spec.gated` it waits for [`Workload::release`]
    /// before creating its client, so [`Workload::pid`] can be handed to mongowatch first.
    pub fn spawn(spec: &WorkloadSpec) -> Result<Workload> {
        if !spec.driver.is_installed() {
            bail!(
                "the {} driver is not installed (run `cargo xtask setup`)",
                spec.driver.name()
            );
        }
        let dir = paths::temp_dir(&format!("mongowatch-{}-workload-", spec.driver.name()))
            .context("creating the workload's temp dir")?;
        let mut cmd = spec.driver.command(&spec.driver.script());
        cmd.current_dir(dir.path())
            .arg("--uri")
            .arg(&spec.uri)
            .arg("--ops")
            .arg(spec.ops.to_string())
            .arg("--summary")
            .arg(dir.path().join("summary.json"));
        if spec.oracle {
            cmd.arg("--out").arg(dir.path().join("oracle.jsonl"));
        }
        if spec.gated {
            cmd.arg("--start-file").arg(dir.path().join("start"));
        }
        if let Some(delay) = spec.start_delay {
            cmd.arg("--start-delay")
                .arg(format!("{:.3}", delay.as_secs_f64()));
        }
        if let Some(db) = &spec.db {
            cmd.arg("--db").arg(db);
        }
        if let Some(n) = spec.batch_size {
            cmd.arg("--batch-size").arg(n.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout.txt"))?)
            .stderr(File::create(dir.path().join("stderr.txt"))?);
        let name = format!("{} workload", spec.driver.name());
        let process = ChildGuard::spawn(name, &mut cmd)?;
        Ok(Workload {
            spec: spec.clone(),
            process,
            dir,
        })
    }

    /// The workload process's PID (what `mongowatch --pid` watches).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Opens the start gate of a gated workload.
    pub fn release(&self) -> Result<()> {
        let gate = self.dir.path().join("start");
        File::create(&gate).with_context(|| format!("creating {}", gate.display()))?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn oracle_path(&self) -> PathBuf {
        self.dir.path().join("oracle.jsonl")
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// What the workload printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default()
    }

    /// Waits for the workload to finish (stopping it after `timeout`), and reads its summary
    /// and oracle. Fails if it exited unsuccessfully.
    pub fn wait(&mut self, timeout: Duration) -> Result<WorkloadOutcome> {
        let status = self
            .process
            .wait_exit(timeout)
            .with_context(|| self.stderr())?;
        if !status.success() {
            bail!(
                "{} exited with {status}; stderr:\n{}",
                self.process.name(),
                self.stderr()
            );
        }
        let summary_path = self.dir.path().join("summary.json");
        let summary: WorkloadSummary = serde_json::from_str(
            &fs::read_to_string(&summary_path)
                .with_context(|| format!("reading {}", summary_path.display()))?,
        )
        .context("parsing the workload summary")?;
        let oracle = if self.spec.oracle {
            read_oracle(&self.oracle_path())?
        } else {
            Vec::new()
        };
        Ok(WorkloadOutcome {
            summary,
            oracle,
            status,
        })
    }
}

/// `mongosh URI --quiet --eval SCRIPT` from the cache's node_modules (mongosh sends the legacy
/// OP_QUERY handshake and then OP_MSG, like the Node driver it wraps).
pub fn mongosh_command(uri: &str, script: &str) -> Command {
    let mut cmd = Command::new(paths::node());
    cmd.arg(paths::mongosh())
        .arg(uri)
        .args(["--quiet", "--eval", script])
        .env("NODE_PATH", paths::node_modules())
        .stdin(Stdio::null());
    cmd
}

/// Python functions every gated program has, for tests that speak the wire protocol
/// themselves: `op_msg(request_id, doc)` builds an OP_MSG, `read_msg(sock)` reads one whole
/// message (header included), `msg_doc(message)` decodes an OP_MSG's body document.
pub const PY_WIRE_HELPERS: &str = r#"
import struct
def op_msg(rid, doc):
    import bson
    body = struct.pack("<I", 0) + b"\x00" + bson.encode(doc)
    return struct.pack("<iiii", 16 + len(body), rid, 0, 2013) + body
def read_msg(s):
    head = b""
    while len(head) < 16: head += s.recv(16 - len(head))
    n = struct.unpack("<i", head[:4])[0]
    body = b""
    while len(body) < n - 16: body += s.recv(n - 16 - len(body))
    return head + body
def msg_doc(m):
    import bson
    return bson.decode(m[21:])
"#;

/// A small Python program (the cache's venv: pymongo is there) held back until
/// [`GatedPython::release`], so that mongowatch can watch its PID before it connects. It waits
/// for a file of its own temporary directory, then runs `code` with `sys.argv[1:]` = `args`
/// (`os`, `sys` and `time` are imported, and the wire helpers of [`PY_WIRE_HELPERS`] defined).
pub struct GatedPython {
    pub app: ChildGuard,
    start: PathBuf,
    _dir: tempfile::TempDir,
}

impl GatedPython {
    pub fn spawn(name: &str, code: &str, args: &[&str]) -> Result<GatedPython> {
        let dir = tempfile::Builder::new()
            .prefix("mongowatch-app-")
            .tempdir()?;
        let start = dir.path().join("start");
        let gate = format!(
            "import os, sys, time\n{PY_WIRE_HELPERS}\nwhile not os.path.exists({start:?}): \
             time.sleep(0.01)\n",
            start = start.display().to_string()
        );
        let app = ChildGuard::spawn(
            name,
            Command::new(paths::venv_python())
                .arg("-c")
                .arg(gate + code)
                .args(args)
                .stdin(Stdio::null()),
        )?;
        Ok(GatedPython {
            app,
            start,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.app.pid()
    }

    /// Lets the program run.
    pub fn release(&self) -> Result<()> {
        fs::write(&self.start, b"").context("releasing the gated program")
    }

    /// Runs `code` under `mongowatch --stats <mw_args>` from its first line: mongowatch watches
    /// it, the program runs and must succeed, and mongowatch exits with it. The returned
    /// mongowatch has exited: read its records, stdout, stats and stderr.
    pub fn run_watched(code: &str, args: &[&str], mw_args: &[&str]) -> Result<Mongowatch> {
        let mut gated = GatedPython::spawn("python app", code, args)?;
        let mut mw = Mongowatch::watch_pid(gated.pid(), &[mw_args, &["--stats"]].concat())?;
        mw.wait_for_stderr("watching", Duration::from_secs(60))?;
        gated.release()?;
        let status = gated
            .app
            .wait_timeout(Duration::from_secs(180))?
            .context("the app did not finish")?;
        if !status.success() {
            bail!(
                "the app failed ({status}); mongowatch said: {}",
                mw.stderr()
            );
        }
        mw.wait_exit(Duration::from_secs(60))?;
        Ok(mw)
    }
}
