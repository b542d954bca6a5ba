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
//! - [`replay`]: the replay load generator's sessions, server and client (`bench-replay`).
//! - [`ChildGuard`]: every process above is stopped by its own PID on drop, pass or fail.
//! - [`ready`] / [`skip_unless!`]: the one gate of every end-to-end test. A test names what it
//!   needs ([`Need`]); when something is missing it is SKIPPED, never passed in silence: a
//!   `SKIP <test>: <reason>` line goes straight to stderr (past cargo test's output capture),
//!   and the test binary ends with a count of the tests it skipped. With
//!   `MONGOWATCH_REQUIRE_E2E` set (as `cargo xtask test` and CI do) a missing piece fails the
//!   test instead.
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

pub mod bench;
pub mod cgroup;
pub mod mongowatch;
pub mod oracle_ops;
pub mod paths;
pub mod process;
pub mod proxy;
pub mod reconcile;
pub mod replay;
pub mod server;
pub mod wire;
pub mod workload;

pub use cgroup::PodCgroup;
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
    /// A module the venv's Python can import (e.g. `snappy` for pymongo's snappy compression).
    PyModule(&'static str),
    /// PyOpenSSL apart from the venv ([`paths::pyopenssl_dir`]), which pymongo then uses.
    PyOpenSsl,
    /// pymongo 4.8 with PyOpenSSL over OpenSSL 1.1.1, apart from the venv
    /// ([`paths::openssl11_dir`]).
    OpenSsl11,
    /// The Node `mongodb` driver (the cache's node_modules) and `node`.
    NodeDriver,
    /// mongosh (the cache's node_modules).
    Mongosh,
    /// The `mongowatch` binary ([`paths::mongowatch_bin`]).
    MongowatchBin,
    /// A `mongowatch` binary built with its eBPF programs (not the stub a build without the
    /// eBPF toolchain embeds). Implied by `Root` + `MongowatchBin`: a test that needs both
    /// captures.
    EbpfPrograms,
    /// Root (loading eBPF programs).
    Root,
    /// A program on PATH that `cargo xtask setup` installs from Debian (e.g. `prometheus`).
    Program(&'static str),
}

impl Need {
    /// `None` if present, else why not.
    pub fn missing(self) -> Option<String> {
        // Followed through symlinks: a venv whose interpreter this user cannot reach (one
        // made by root with a Python under /root) is as missing as no venv.
        let file = |p: std::path::PathBuf, what: &str| match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some(format!("{what}: {} is not a file", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "{what} not found at {} (run `cargo xtask setup`)",
                p.display()
            )),
            Err(e) => Some(format!("{what} at {} is not usable: {e}", p.display())),
        };
        match self {
            // A script of the venv: it runs with the venv's interpreter.
            Need::SecantusPy => file(paths::secantusd_py(), "secantusd-py")
                .or_else(|| file(paths::venv_python(), "the Python venv")),
            Need::SecantusRs => file(paths::secantusd_rs(), "secantusd-rs"),
            Need::Pymongo => file(paths::venv_python(), "the Python venv"),
            Need::PyModule(module) => file(paths::venv_python(), "the Python venv").or_else(|| {
                let imports = std::process::Command::new(paths::venv_python())
                    .args(["-c", &format!("import {module}")])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                (!imports).then(|| {
                    format!(
                        "the venv's Python cannot import `{module}` (add it to \
                         tests/requirements.txt, then `cargo xtask setup`)"
                    )
                })
            }),
            Need::PyOpenSsl => file(
                paths::pyopenssl_dir().join("OpenSSL/__init__.py"),
                "PyOpenSSL",
            ),
            Need::OpenSsl11 => file(
                paths::openssl11_dir().join("OpenSSL/__init__.py"),
                "PyOpenSSL over OpenSSL 1.1.1",
            ),
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
            Need::EbpfPrograms => Need::MongowatchBin.missing().or_else(|| {
                let bin = paths::mongowatch_bin();
                match embeds_bpf_object(&bin) {
                    Ok(true) => None,
                    Ok(false) => Some(format!(
                        "{} was built without its eBPF programs (no eBPF toolchain at build \
                         time: run `cargo xtask setup`, then build again)",
                        bin.display()
                    )),
                    Err(e) => Some(format!("cannot read {}: {e}", bin.display())),
                }
            }),
            Need::Root => (!is_root()).then(|| "not running as root (eBPF needs it)".to_string()),
            Need::Program(name) => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let found = std::env::split_paths(&path).any(|d| d.join(name).is_file());
                (!found).then(|| format!("`{name}` not found on PATH (run `cargo xtask setup`)"))
            }
        }
    }
}

/// Whether the file holds an embedded ELF object for the BPF machine (`e_machine` 247): the
/// kernel programs the build script embeds. A build without the eBPF toolchain embeds an empty
/// stub, and the host binary's own ELF header names x86-64 (or another host machine). The
/// answer is kept per path: every capture test of a run asks about the same binary.
pub fn embeds_bpf_object(bin: &std::path::Path) -> std::io::Result<bool> {
    use std::{collections::HashMap, path::PathBuf, sync::Mutex};
    const EM_BPF: u16 = 247;
    static SEEN: Mutex<Option<HashMap<PathBuf, bool>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&known) = seen.get_or_insert_with(HashMap::new).get(bin) {
        return Ok(known);
    }
    let data = std::fs::read(bin)?;
    let found = memchr::memmem::find_iter(&data, b"\x7fELF").any(|at| {
        let h = &data[at..];
        // 64-bit, little-endian, e_machine at offset 18.
        h.len() >= 20 && h[4] == 2 && h[5] == 1 && u16::from_le_bytes([h[18], h[19]]) == EM_BPF
    });
    seen.get_or_insert_with(HashMap::new)
        .insert(bin.to_path_buf(), found);
    Ok(found)
}

/// Whether `MONGOWATCH_REQUIRE_E2E` is set.
pub fn e2e_required() -> bool {
    std::env::var(REQUIRE_E2E_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The needs `needs` amounts to: a test that needs root and the binary captures, so it needs
/// the eBPF programs too.
fn with_implied(needs: &[Need]) -> Vec<Need> {
    let mut all = needs.to_vec();
    if all.contains(&Need::Root)
        && all.contains(&Need::MongowatchBin)
        && !all.contains(&Need::EbpfPrograms)
    {
        all.push(Need::EbpfPrograms);
    }
    all
}

/// The tests this process skipped, for the summary printed at its exit.
static SKIPPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Writes straight to file descriptor 2: `eprintln!` inside a test is captured by cargo test
/// and shown only for failures, which would make a skip invisible.
fn to_real_stderr(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

extern "C" fn print_skip_summary() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if !skipped.is_empty() {
        to_real_stderr(&format!(
            "SKIPPED {} test(s) of this binary, NOT run (cargo test counts them as passed; \
             set {REQUIRE_E2E_VAR}=1 to make that a failure): {}",
            skipped.len(),
            skipped.join(", ")
        ));
    }
}

/// The name of the running test: libtest names each test's thread after it.
fn current_test(fallback: &str) -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => fallback.to_string(),
    }
}

/// Marks the running test skipped for `reason`, loudly. With `MONGOWATCH_REQUIRE_E2E` set it
/// panics instead: where the end-to-end tests are required, whatever stops one fails it.
fn skip(test: &str, reason: &str) {
    let test = current_test(test);
    if e2e_required() {
        panic!("{test} cannot run: {reason} (and {REQUIRE_E2E_VAR} is set)");
    }
    to_real_stderr(&format!("SKIP {test}: {reason}"));
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        // SAFETY: registering a plain extern "C" fn, which only locks and writes to stderr.
        unsafe { libc::atexit(print_skip_summary) };
    }
    skipped.push(test);
}

/// True if everything in `needs` is present. Otherwise, through [`skip`]: with
/// `MONGOWATCH_REQUIRE_E2E` set, panics with what is missing; without it, writes
/// `SKIP <test>: <reasons>` to stderr (uncaptured), counts the skip and returns false.
pub fn ready(test: &str, needs: &[Need]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    for why in with_implied(needs).iter().filter_map(|n| n.missing()) {
        // Two needs can share a cause (secantusd-py and pymongo: the venv).
        if !missing.contains(&why) {
            missing.push(why);
        }
    }
    if missing.is_empty() {
        return true;
    }
    skip(test, &missing.join("; "));
    false
}

/// Returns from the calling test (with `Default::default()`, or the given value) unless
/// [`ready`] says its needs are met: `skip_unless!(Need::SecantusPy, Need::Pymongo);` or, in a
/// test returning `anyhow::Result<()>`, `skip_unless!(Ok(()); Need::SecantusPy);`. This is the
/// only way an end-to-end test may decline to run.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little-endian
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn finds_an_embedded_bpf_object_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let host_only = dir.path().join("stub");
        let mut bytes = elf_header(62); // x86-64: the host binary itself
        bytes.extend_from_slice(&[0u8; 1000]);
        std::fs::write(&host_only, &bytes).unwrap();
        assert!(!embeds_bpf_object(&host_only).unwrap());

        let with_programs = dir.path().join("real");
        bytes.extend_from_slice(&elf_header(247));
        bytes.extend_from_slice(&[0u8; 1000]);
        std::fs::write(&with_programs, &bytes).unwrap();
        assert!(embeds_bpf_object(&with_programs).unwrap());
    }

    #[test]
    fn a_root_test_of_the_binary_needs_its_programs() {
        assert_eq!(
            with_implied(&[Need::Root, Need::MongowatchBin, Need::SecantusPy]),
            [
                Need::Root,
                Need::MongowatchBin,
                Need::SecantusPy,
                Need::EbpfPrograms
            ]
        );
        assert_eq!(with_implied(&[Need::MongowatchBin]), [Need::MongowatchBin]);
    }
}
