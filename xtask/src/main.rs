//! Project chores: `cargo xtask <command>`.
mod ebpf;

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
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::BuildEbpf => {
            let ws = workspace();
            match ebpf::build(&ws, &ws.join("target/ebpf")) {
                Ok(obj) => println!("{}", obj.display()),
                Err(e) => bail!("{e}"),
            }
        }
    }
    Ok(())
}
