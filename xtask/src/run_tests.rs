//! `cargo xtask test`: the unit tests, then the end-to-end tests against the freshly built
//! `mongowatch` with its real eBPF programs (root).

use std::path::Path;

use anyhow::{bail, Result};

use crate::{
    ebpf,
    util::{self, run},
};

#[derive(clap::Args, Debug, Default)]
pub struct TestArgs {
    /// Not root: run the unit tests and the harness self-tests (tests/tests/harness.rs) only,
    /// and allow a mongowatch built without eBPF programs.
    #[arg(long)]
    pub no_root: bool,
    /// Skip the unit tests (`cargo test --workspace`).
    #[arg(long)]
    pub e2e_only: bool,
    /// Skip the end-to-end tests.
    #[arg(long, conflicts_with = "e2e_only")]
    pub unit_only: bool,
    /// Passed to the end-to-end `cargo test` after `--` (e.g. a test name filter).
    #[arg(last = true)]
    pub e2e_args: Vec<String>,
}

pub fn run_tests(workspace: &Path, args: &TestArgs) -> Result<()> {
    let root = util::is_root();
    if !root && !args.no_root && !args.unit_only {
        bail!(
            "the end-to-end tests load eBPF programs and need root; this is uid {}. Run \
             `sudo -E cargo xtask test`, or `cargo xtask test --no-root` for the unit tests and \
             the harness self-tests only (the capture tests are then NOT run).",
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() }
        );
    }
    // The same value in every cargo call below, so the build script does not rerun between them.
    // With root (the real run) a missing eBPF toolchain must fail the build, not embed a stub.
    let require_ebpf = !args.no_root;
    let cargo = || {
        let mut cmd = util::cargo();
        cmd.current_dir(workspace);
        if require_ebpf {
            cmd.env("MONGOWATCH_REQUIRE_EBPF", "1");
        }
        cmd
    };
    let mut report = util::Report::default();

    if !args.e2e_only {
        report.step("unit tests", || {
            run(cargo().args(["test", "--workspace", "--exclude", "mongowatch-tests"]))?;
            Ok("passed".into())
        })?;
    }
    if args.unit_only {
        report.print("xtask test done");
        return Ok(());
    }

    let target = util::target_dir(workspace)?;
    let bin = target.join("debug/mongowatch");
    report.step("build mongowatch", || {
        run(cargo().args(["build", "-p", "mongowatch-user", "--bin", "mongowatch"]))?;
        if !bin.is_file() {
            bail!("the build succeeded but {} is missing", bin.display());
        }
        Ok(bin.display().to_string())
    })?;

    let cache = ebpf::cache_dir(workspace);
    // --no-root means the no-root subset even when run as root.
    let harness_only = !root || args.no_root;
    let what = if harness_only {
        "harness self-tests"
    } else {
        "end-to-end tests"
    };
    report.step(what, || {
        let mut cmd = cargo();
        cmd.args(["test", "-p", "mongowatch-tests"]);
        if harness_only {
            eprintln!(
                "xtask test: --no-root, so only tests/tests/harness.rs runs; the capture and \
                 audit tests need root and are SKIPPED."
            );
            cmd.args(["--test", "harness"]);
        }
        cmd.arg("--").arg("--test-threads=1").args(&args.e2e_args);
        // The harness finds the cache by the same rule as ebpf::cache_dir (MONGOWATCH_CACHE is
        // inherited when set); it is printed here for the record.
        eprintln!(
            "xtask test: cache {}, mongowatch {}",
            cache.display(),
            bin.display()
        );
        cmd.env("MONGOWATCH_BIN", &bin)
            .env("MONGOWATCH_REQUIRE_E2E", "1");
        run(&mut cmd)?;
        Ok("passed".to_string())
    })?;
    report.print("xtask test done");
    Ok(())
}
