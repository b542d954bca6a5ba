//! `cargo xtask bench`: the benchmarks that need root, real servers and real drivers. Their
//! figures are ratios or totals measured in one run, never timed assertions.
//!
//! - `capture`, `audit`: bench-capture and bench-audit (tests/src/bin).
//! - `replay`: the replay load generator, bench-replay; arguments after `--` go to it
//!   (`cargo xtask bench replay -- --find-knee --mix small`).
//! - `scale`: bench-scale, the scale of watching (many processes, connections, open cursors,
//!   timeouts firing): the daemon's RSS and CPU, and a new process's time to its first record.
//! - `tls`: bench-tls, what reading TLS plaintext costs a watched pymongo app and an unwatched
//!   process on the same libssl.
//! - `compare`: bench-compare, pymongo plain / CommandListener / pymongowatch / mongowatch side
//!   by side. pymongowatch needs pymongo <= 4.8, so it runs in a venv of its own,
//!   `<cache>/venv-compare` (tests/requirements-compare.txt), which this command installs.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{
    ebpf,
    util::{self, run},
};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which benchmarks: capture (cost ratios), audit (load), replay (load generator), scale
    /// (scale of watching), compare (side by side), tls (TLS capture's cost), or all.
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
    /// Passed to the benchmark binary after `--` (one benchmark only).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Capture,
    Audit,
    Replay,
    Scale,
    Compare,
    Tls,
    All,
}

pub fn run_bench(workspace: &Path, args: &BenchArgs) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmarks load eBPF programs and need root: run `sudo -E cargo xtask bench`");
    }
    let cargo = || {
        let mut cmd = util::cargo();
        cmd.current_dir(workspace)
            .env("MONGOWATCH_REQUIRE_EBPF", "1");
        cmd
    };
    // Release builds: the daemon as users run it.
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "mongowatch-user",
        "--bin",
        "mongowatch",
    ]))?;
    let bin = util::target_dir(workspace)?.join("release/mongowatch");
    let mut bins = Vec::new();
    if matches!(args.which, Which::Capture | Which::All) {
        bins.push("bench-capture");
    }
    if matches!(args.which, Which::Audit | Which::All) {
        bins.push("bench-audit");
    }
    if matches!(args.which, Which::Replay | Which::All) {
        bins.push("bench-replay");
    }
    if matches!(args.which, Which::Scale | Which::All) {
        bins.push("bench-scale");
    }
    if matches!(args.which, Which::Compare | Which::All) {
        compare_venv(workspace)?;
        bins.push("bench-compare");
    }
    if matches!(args.which, Which::Tls | Which::All) {
        bins.push("bench-tls");
    }
    if !args.args.is_empty() && bins.len() != 1 {
        bail!("arguments after `--` go to one benchmark: name it (e.g. `bench replay -- ...`)");
    }
    for name in bins {
        run(cargo()
            .args([
                "run",
                "--release",
                "-p",
                "mongowatch-tests",
                "--bin",
                name,
                "--",
            ])
            .args(&args.args)
            .env("MONGOWATCH_BIN", &bin))?;
    }
    Ok(())
}

/// `<cache>/venv-compare` with tests/requirements-compare.txt (pymongo 4.8 and pymongowatch),
/// made or brought up to date; a stamp of the requirements says when it already is.
fn compare_venv(workspace: &Path) -> Result<()> {
    let requirements = workspace.join("tests/requirements-compare.txt");
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = ebpf::cache_dir(workspace).join("venv-compare");
    let python = venv.join("bin/python");
    let stamp = venv.join(".mongowatch-requirements.txt");
    let works = util::output(Command::new(&python).args(["-c", "import sys"])).is_some();
    if works && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    if !works {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let _ = fs::remove_file(&stamp);
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(&requirements)
        .env("PIP_NO_INPUT", "1"))?;
    fs::write(&stamp, &wanted)?;
    Ok(())
}
