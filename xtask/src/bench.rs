//! `cargo xtask bench`: the benchmarks that need root, real servers and real drivers. Their
//! figures are ratios or totals measured in one run, never timed assertions.

use std::path::Path;

use anyhow::{bail, Result};

use crate::util::{self, run};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which benchmarks: capture (cost ratios), audit (load), or all.
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Capture,
    Audit,
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
    for name in bins {
        run(cargo()
            .args(["run", "--release", "-p", "mongowatch-tests", "--bin", name])
            .env("MONGOWATCH_BIN", &bin))?;
    }
    Ok(())
}
