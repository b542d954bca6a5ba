//! Project chores: `cargo xtask <command>`.
//!
//! - `setup`: installs what building the eBPF programs and the end-to-end tests need into the
//!   project cache (`$MONGOWATCH_CACHE`, else `<repo>/.cache`); idempotent, non-interactive.
//! - `test`: unit tests, then the end-to-end tests against a freshly built `mongowatch` (root).
//! - `demo`: mongowatch watching a small pymongo application against SecantusDB (root).
//! - `bench`: the capture-cost ratios, the audit load benchmark and the replay load generator
//!   (root).
//! - `build-ebpf`: builds the kernel programs and prints the object's path.
//! - `kernels`: the kernel matrix: Debian's 6.1 and 6.12 kernels booted under qemu, the capture
//!   test run in each on every capture path the kernel offers (root, for apt).
//! - `man`, `completions`: the man pages and shell completions, from the clap definitions.
//! - `deb`: the Debian package (cargo-deb): binary, systemd unit, config, man pages,
//!   completions.
//!
//! `test`, `demo` and `bench` run `setup` first (quick once everything is there), so a fresh
//! machine needs nothing else; `--no-setup` leaves it out. `demo` sets up only what it uses
//! (the eBPF toolchain and the Python venv), `test` and `bench` everything.
mod bench;
mod demo;
mod ebpf;
mod image;
mod kernels;
mod package;
mod run_tests;
mod setup;
mod util;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mongowatch project chores")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel programs (mongowatch-ebpf) and print the object's path.
    BuildEbpf,
    /// Install the eBPF toolchain, the test servers and the drivers (idempotent; root for apt).
    Setup {
        /// Leave out a part (repeatable).
        #[arg(long, value_enum)]
        skip: Vec<setup::Part>,
    },
    /// Run the unit tests, then the end-to-end tests (root).
    Test {
        #[command(flatten)]
        args: run_tests::TestArgs,
        #[command(flatten)]
        setup: SetupFirst,
    },
    /// Watch a small pymongo application with mongowatch; audit records go to stdout (root).
    Demo {
        #[command(flatten)]
        args: demo::DemoArgs,
        #[command(flatten)]
        setup: SetupFirst,
    },
    /// Benchmarks with real servers and drivers: what the capture costs (ratios measured in one
    /// run), the audit load benchmark and the replay load generator (root).
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        #[command(flatten)]
        setup: SetupFirst,
    },
    /// Build the OCI image of the DaemonSet (deploy/) with podman or buildah, FROM scratch.
    Image {
        #[command(flatten)]
        args: image::ImageArgs,
    },
    /// Boot Debian's 6.1 and 6.12 kernels under qemu and run the capture test in each, on every
    /// capture path it offers; one PASS/FAIL line per kernel and path (root).
    Kernels(KernelsCmd),
    /// Generate the man pages (default into target/packaging/man).
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Generate the bash, zsh and fish completions (default into target/packaging/completions).
    Completions {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Build the .deb (cargo-deb, installed into the project cache when missing): the binary
    /// with its eBPF programs, the systemd unit, the default config, man pages, completions.
    Deb {
        #[command(flatten)]
        setup: SetupFirst,
    },
}

#[derive(clap::Args)]
struct KernelsCmd {
    #[command(flatten)]
    args: kernels::KernelsArgs,
    #[command(flatten)]
    setup: SetupFirst,
}

#[derive(clap::Args)]
struct SetupFirst {
    /// Do not run `setup` first.
    #[arg(long)]
    no_setup: bool,
}

impl SetupFirst {
    fn run(&self, ws: &std::path::Path, parts: &[setup::Part]) -> Result<()> {
        if self.no_setup {
            return Ok(());
        }
        setup::run_setup(ws, parts)
    }
}

/// The workspace of the checkout `cargo xtask` runs in. `cargo run` sets CARGO_MANIFEST_DIR for
/// the run too; the compile-time value is only a fallback, because it is the checkout this
/// binary was built in, and cargo reuses a build across checkouts that share a target
/// directory (as `.ci/run` does) when their sources are older than that build.
fn workspace() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> Result<()> {
    let ws = workspace();
    match Cli::parse().command {
        Cmd::BuildEbpf => match ebpf::build(&ws, &ws.join("target/ebpf")) {
            Ok(obj) => println!("{}", obj.display()),
            Err(e) => bail!("{e}"),
        },
        Cmd::Setup { skip } => {
            let parts: Vec<setup::Part> = setup::Part::ALL
                .iter()
                .copied()
                .filter(|p| !skip.contains(p))
                .collect();
            setup::run_setup(&ws, &parts)?
        }
        Cmd::Test { args, setup } => {
            // Without root, setup (apt) cannot run either; the unit tests still can.
            if util::is_root() {
                setup.run(&ws, setup::Part::ALL)?;
            }
            run_tests::run_tests(&ws, &args)?
        }
        Cmd::Demo { args, setup } => {
            demo::require_root()?;
            setup.run(&ws, &demo::setup_parts(&args))?;
            demo::run_demo(&ws, &args)?
        }
        Cmd::Bench { args, setup } => {
            setup.run(&ws, setup::Part::ALL)?;
            bench::run_bench(&ws, &args)?
        }
        Cmd::Kernels(KernelsCmd { args, setup }) => {
            setup.run(&ws, setup::Part::KERNELS)?;
            kernels::run_kernels(&ws, &args)?
        }
        Cmd::Man { out } => package::man(&ws, out)?,
        Cmd::Completions { out } => package::completions(&ws, out)?,
        Cmd::Deb { setup } => {
            // The eBPF toolchain only: the package ships the real kernel programs.
            setup.run(&ws, &[setup::Part::Apt, setup::Part::BpfLinker])?;
            package::deb(&ws)?
        }
        Cmd::Image { args } => image::build_image(&ws, &args)?,
    }
    Ok(())
}
