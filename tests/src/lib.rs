//! Harness for mongowatch's end-to-end tests.
//!
//! - [`paths`]: the project cache that `cargo xtask setup` fills, the servers, drivers and the
//!   `mongowatch` binary under test (`MONGOWATCH_BIN`).
//! - [`Server`]: SecantusDB (`secantusd-py` or `secantusd-rs`) on a free port of 127.0.0.1,
//!   ready once it answers `ping`, stopped by its PID when dropped.
//! - [`RecordingProxy`]: a TCP proxy in the test process that records every byte each way,
//!   and returns the complete MongoDB messages, bytes exact: the wire's ground truth.
//! - [`Workload`]: the pymongo and Node driver workloads, gated so mongowatch can attach to their
//!   PID first, with the drivers' own command monitoring as the oracle ([`OracleEvent`]).
//! - [`reconcile`]: proves the proxy's messages and a driver's oracle agree, one to one.
//! - [`Mongowatch`]: the binary under test, stdout (JSON lines) and stderr captured.
//! - [`ChildGuard`]: every process above is stopped by its own PID on drop, pass or fail.
//! - [`ready`] / [`skip_unless!`]: skip a test (with a printed reason) when what it needs is not
//!   installed, unless `MONGOWATCH_REQUIRE_E2E` is set (as `cargo xtask test` and CI do), in
//!   which case a missing piece fails the test.
//!
//! A capture test, in outline (root; see tests/tests/harness.rs for the harness's own tests):
//!
//! ```no_run
//! use std::time::Duration;
//! use mongowatch_tests::*;
//!
//! # fn main() -> anyhow::Result<()> {
//! skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
//! let server = Server::start(ServerKind::SecantusPy)?;
//! // The proxy is the wire's ground truth; the test process itself is not watched.
//! let proxy = RecordingProxy::start(server.addr())?;
//! let mut app = WorkloadSpec::new(Driver::Pymongo, server.uri_via(proxy.addr()), 10_000)
//!     .gated()
//!     .spawn()?;
//! let mut watch = Mongowatch::watch_pid(app.pid(), &[])?;
//! std::thread::sleep(Duration::from_secs(1)); // or watch.wait_for_stderr("...", ..)
//! app.release()?;
//! let outcome = app.wait(Duration::from_secs(600))?;
//! proxy.wait_all_closed(Duration::from_secs(30))?;
//! watch.wait_exit(Duration::from_secs(30))?; // exits once the watched process has
//! let records = watch.records()?; // mongowatch's JSON lines
//! let account = reconcile(&proxy.connections(), &outcome.oracle)?;
//! assert_eq!(outcome.summary.commands_started as usize, account.reported_requests);
//! // ... compare `records` with `outcome.oracle` (request_id, command_name, durations)
//! // and with the proxy's messages (bytes exact, timestamps).
//! # let _ = records;
//! # Ok(())
//! # }
//! ```

pub mod mongowatch;
pub mod oracle_ops;
pub mod paths;
pub mod process;
pub mod proxy;
pub mod reconcile;
pub mod server;
pub mod wire;
pub mod workload;

pub use mongowatch::Mongowatch;
pub use process::{is_root, monotonic_ns, ChildGuard};
pub use proxy::{Chunk, ConnectionRecord, Direction, RecordingProxy};
pub use reconcile::{reconcile, WireAccount};
pub use server::{Server, ServerKind};
pub use wire::WireMessage;
pub use workload::{
    mongosh_command, read_oracle, Driver, GatedPython, OracleEvent, OracleEventKind, Workload,
    WorkloadOutcome, WorkloadSpec, WorkloadSummary,
};

/// Set (to anything but empty or `0`) by `cargo xtask test`: a test whose installs are missing
/// fails instead of skipping.
pub const REQUIRE_E2E_VAR: &str = "MONGOWATCH_REQUIRE_E2E";

/// Something an end-to-end test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `secantusd-py` in the cache's venv.
    SecantusPy,
    /// `secantusd-rs` in the cache's tools.
    SecantusRs,
    /// pymongo (the cache's venv).
    Pymongo,
    /// The Node `mongodb` driver (the cache's node_modules) and `node`.
    NodeDriver,
    /// mongosh (the cache's node_modules).
    Mongosh,
    /// The `mongowatch` binary ([`paths::mongowatch_bin`]).
    MongowatchBin,
    /// Root (loading eBPF programs).
    Root,
}

impl Need {
    /// `None` if present, else why not.
    pub fn missing(self) -> Option<String> {
        let file = |p: std::path::PathBuf, what: &str| {
            (!p.is_file()).then(|| {
                format!(
                    "{what} not found at {} (run `cargo xtask setup`)",
                    p.display()
                )
            })
        };
        match self {
            Need::SecantusPy => file(paths::secantusd_py(), "secantusd-py"),
            Need::SecantusRs => file(paths::secantusd_rs(), "secantusd-rs"),
            Need::Pymongo => file(paths::venv_python(), "the Python venv"),
            Need::NodeDriver => file(
                paths::node_modules().join("mongodb/package.json"),
                "the Node mongodb driver",
            )
            .or_else(|| {
                let node = paths::node();
                (!node.is_file()).then(|| format!("node not found ({})", node.display()))
            }),
            Need::Mongosh => file(paths::mongosh(), "mongosh"),
            Need::MongowatchBin => {
                file(paths::mongowatch_bin(), "the mongowatch binary").map(|m| {
                    format!(
                        "{m}; or build it: cargo build -p mongowatch-user, or set MONGOWATCH_BIN"
                    )
                })
            }
            Need::Root => (!is_root()).then(|| "not running as root (eBPF needs it)".to_string()),
        }
    }
}

/// Whether `MONGOWATCH_REQUIRE_E2E` is set.
pub fn e2e_required() -> bool {
    std::env::var(REQUIRE_E2E_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// True if everything in `needs` is present. Otherwise: with `MONGOWATCH_REQUIRE_E2E` set,
/// panics with what is missing; without it, prints `SKIP <test>: <reasons>` and returns false.
pub fn ready(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    if e2e_required() {
        panic!(
            "{test}: {} (and {REQUIRE_E2E_VAR} is set)",
            missing.join("; ")
        );
    }
    eprintln!("SKIP {test}: {}", missing.join("; "));
    false
}

/// Returns from the calling test (with `Default::default()`, or the given value) unless
/// [`ready`] says its needs are met: `skip_unless!(Need::SecantusPy, Need::Pymongo);` or, in a
/// test returning `anyhow::Result<()>`, `skip_unless!(Ok(()); Need::SecantusPy);`.
#[macro_export]
macro_rules! skip_unless {
    ($ret:expr; $($need:expr),+ $(,)?) => {
        if !$crate::ready(&format!("{}:{}", file!(), line!()), &[$($need),+]) {
            return $ret;
        }
    };
    ($($need:expr),+ $(,)?) => {
        if !$crate::ready(&format!("{}:{}", file!(), line!()), &[$($need),+]) {
            return Default::default();
        }
    };
}
