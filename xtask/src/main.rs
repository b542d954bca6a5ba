//! Project chores: `cargo xtask <command>`.
//!
//! - `setup`: installs what building the eBPF programs and the end-to-end tests need into the
//!   project cache (`$MONGOWATCH_CACHE`, else `<repo>/.cache`); idempotent, non-interactive.
//! - `test`: unit tests, then the end-to-end tests against a freshly built `mongowatch` (root).
//! - `demo`: mongowatch watching a small pymongo application against SecantusDB (root).
//! - `build-ebpf`: builds the kernel programs and prints the object's path.
mod demo;
mod ebpf;
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
    Test(run_tests::TestArgs),
    /// Watch a small pymongo application with mongowatch; audit records go to stdout (root).
    Demo(demo::DemoArgs),
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
        Cmd::Setup { skip } => setup::run_setup(&ws, &skip)?,
        Cmd::Test(args) => run_tests::run_tests(&ws, &args)?,
        Cmd::Demo(args) => demo::run_demo(&ws, &args)?,
    }
    Ok(())
}
