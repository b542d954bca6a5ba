//! `cargo xtask bench`: the benchmarks that need root, real servers and real drivers. Their
//! figures are ratios or totals measured in one run, never timed assertions.
//!
//! - `capture`, `audit`: bench-capture and bench-audit (tests/src/bin).
//! - `replay`: the replay load generator, bench-replay; arguments after `--` go to it
//!   (`cargo xtask bench replay -- --find-knee --mix small`).

use std::path::Path;

use anyhow::{bail, Result};

use crate::util::{self, run};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which benchmarks: capture (cost ratios), audit (load), replay (load generator), or all.
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
