//! Packages: `man` and `completions` generate the man pages and shell completions from the
//! clap definitions (the binary's hidden `generate` subcommand, so they are never out of step
//! with `--help`); `deb` builds the release binary with its eBPF programs, generates both, and
//! runs cargo-deb (installed into the project cache's tools when missing) with the assets
//! `mongowatch-user/Cargo.toml` lists, then checks the package holds them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{setup::Paths, util};

/// cargo-deb's rust-version is 1.85, within this project's toolchain.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// What the package must hold (the paths `dpkg-deb -c` lists, without the leading `.`).
pub const DEB_CONTENTS: &[&str] = &[
    "/usr/bin/mongowatch",
    "/lib/systemd/system/mongowatch.service",
    "/etc/mongowatch/mongowatch.toml",
    "/etc/default/mongowatch",
    "/usr/share/man/man1/mongowatch.1.gz",
    "/usr/share/man/man1/mongowatch-aggregate.1.gz",
    "/usr/share/man/man1/mongowatch-digest.1.gz",
    "/usr/share/bash-completion/completions/mongowatch",
    "/usr/share/zsh/vendor-completions/_mongowatch",
    "/usr/share/fish/vendor_completions.d/mongowatch.fish",
    "/usr/share/doc/mongowatch/mongowatch.example.toml",
];

/// Where the generated files go: `<workspace>/target/packaging`, the path the cargo-deb
/// assets name (whatever CARGO_TARGET_DIR is).
pub fn packaging_dir(ws: &Path) -> PathBuf {
    ws.join("target/packaging")
}

/// Builds `mongowatch` (`release` or debug; `ebpf`: with its kernel programs required) and
/// returns the binary's path.
fn build(ws: &Path, release: bool, ebpf: bool) -> Result<PathBuf> {
    let mut cmd = util::cargo();
    cmd.current_dir(ws)
        .args(["build", "-p", "mongowatch-user", "--bin", "mongowatch"]);
    if release {
        cmd.arg("--release");
    }
    if ebpf {
        cmd.env("MONGOWATCH_REQUIRE_EBPF", "1");
    }
    util::run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(util::target_dir(ws)?.join(profile).join("mongowatch"))
}

fn generate(bin: &Path, what: &str, dir: &Path) -> Result<()> {
    util::run(Command::new(bin).args(["generate", what]).arg(dir))
}

/// `cargo xtask man`: the man pages into `out` (default `target/packaging/man`).
pub fn man(ws: &Path, out: Option<PathBuf>) -> Result<()> {
    let bin = build(ws, false, false)?;
    generate(
        &bin,
        "man",
        &out.unwrap_or_else(|| packaging_dir(ws).join("man")),
    )
}

/// `cargo xtask completions`: bash, zsh and fish into `out` (default
/// `target/packaging/completions`).
pub fn completions(ws: &Path, out: Option<PathBuf>) -> Result<()> {
    let bin = build(ws, false, false)?;
    generate(
        &bin,
        "completions",
        &out.unwrap_or_else(|| packaging_dir(ws).join("completions")),
    )
}

/// cargo-deb from the project cache's tools, installed there when missing.
fn cargo_deb(ws: &Path) -> Result<PathBuf> {
    let p = Paths::new(ws)?;
    let bin = p.tools.join("bin/cargo-deb");
    let version = util::output(Command::new(&bin).arg("--version"));
    if version.is_some_and(|v| v.contains(CARGO_DEB_VERSION)) {
        return Ok(bin);
    }
    util::run(
        util::cargo()
            .args([
                "install",
                &format!("cargo-deb@{CARGO_DEB_VERSION}"),
                "--locked",
            ])
            .arg("--root")
            .arg(&p.tools)
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    Ok(bin)
}

/// The paths of a `dpkg-deb -c` listing (`./usr/bin/x` -> `/usr/bin/x`).
pub fn listed_paths(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_owned())
        .collect()
}

/// `cargo xtask deb`: the package, in `<target>/debian/`; prints its path.
pub fn deb(ws: &Path) -> Result<()> {
    let deb_tool = cargo_deb(ws)?;
    build(ws, true, true)?;
    let debug_bin = build(ws, false, false)?;
    let dir = packaging_dir(ws);
    generate(&debug_bin, "man", &dir.join("man"))?;
    generate(&debug_bin, "completions", &dir.join("completions"))?;
    let out_dir = util::target_dir(ws)?.join("debian");
    let out = Command::new(&deb_tool)
        .current_dir(ws)
        // The release profile keeps line tables for profiling; the package need not ship them.
        .args([
            "deb",
            "-p",
            "mongowatch-user",
            "--no-build",
            "--strip",
            "--output",
        ])
        .arg(&out_dir)
        .output()
        .context("running cargo-deb")?;
    if !out.status.success() {
        bail!(
            "cargo-deb failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let listing = util::output(Command::new("dpkg-deb").arg("-c").arg(&deb))
        .with_context(|| format!("dpkg-deb -c {}", deb.display()))?;
    let paths = listed_paths(&listing);
    let missing: Vec<&&str> = DEB_CONTENTS
        .iter()
        .filter(|want| !paths.iter().any(|p| p == **want))
        .collect();
    if !missing.is_empty() {
        bail!("{} lacks {missing:?}; it holds:\n{listing}", deb.display());
    }
    println!("{}", deb.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_gives_its_paths() {
        let listing = "\
drwxr-xr-x 0/0               0 2026-11-28 01:40 ./
drwxr-xr-x 0/0               0 2026-11-28 01:40 ./etc/
-rw-r--r-- 0/0             512 2026-11-28 01:40 ./etc/mongowatch/mongowatch.toml
-rwxr-xr-x 0/0        12345678 2026-11-28 01:40 ./usr/bin/mongowatch
";
        assert_eq!(
            listed_paths(listing),
            [
                "",
                "/etc",
                "/etc/mongowatch/mongowatch.toml",
                "/usr/bin/mongowatch"
            ]
        );
    }
}
