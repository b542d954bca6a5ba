//! Building the kernel programs (`mongowatch-ebpf`) for `bpfel-unknown-none`.
//!
//! Shared by `cargo xtask build-ebpf` and by `mongowatch-user/build.rs` (which includes this
//! file with `#[path]`), so the object the daemon embeds is always built by the same rules and
//! from the current sources. std only: a build script cannot use the xtask's dependencies.
//!
//! Two toolchain routes, tried in order:
//! 1. rustup's nightly with `rust-src`: `-Z build-std=core` (the usual aya route on a laptop);
//! 2. Debian's `rustc` (`rustc-web`) with the precompiled `core` for the BPF targets
//!    (`libstd-rust-web-dev-bpf`), driven with `RUSTC_BOOTSTRAP=1` (what `cargo xtask setup`
//!    installs on machines whose rustup cannot download `rust-src`).
//!
//! Both need `bpf-linker`, looked up in the project cache (`<cache>/tools/bin`) then on PATH.

#![allow(dead_code)]

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

pub const TARGET: &str = "bpfel-unknown-none";
pub const CRATE_DIR: &str = "mongowatch-ebpf";
pub const BIN_NAME: &str = "mongowatch-ebpf";
/// Where Debian's libstd-rust-web-dev-bpf puts `core` for the BPF target.
const DEBIAN_SYSROOT_LIB: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// How the eBPF crate gets compiled.
#[derive(Debug, Clone)]
pub enum Toolchain {
    /// rustup nightly with rust-src: `cargo +nightly build -Z build-std=core`.
    Nightly { linker: PathBuf },
    /// Debian's rustc with its precompiled BPF `core`.
    Debian { rustc: PathBuf, linker: PathBuf },
}

/// Why no eBPF object could be built.
#[derive(Debug)]
pub enum BuildError {
    /// No usable toolchain on this machine: `cargo xtask setup` installs one.
    NoToolchain(String),
    /// A toolchain was found and the build itself failed.
    Failed(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::NoToolchain(s) => write!(f, "no eBPF toolchain: {s}"),
            BuildError::Failed(s) => write!(f, "eBPF build failed: {s}"),
        }
    }
}

/// The project cache: `$MONGOWATCH_CACHE`, else `<workspace>/.cache`.
pub fn cache_dir(workspace: &Path) -> PathBuf {
    match env::var_os("MONGOWATCH_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace.join(".cache"),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

pub fn find_linker(workspace: &Path) -> Option<PathBuf> {
    let cached = cache_dir(workspace).join("tools/bin/bpf-linker");
    if cached.is_file() {
        return Some(cached);
    }
    find_in_path("bpf-linker")
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

/// Picks the toolchain route, preferring nightly + rust-src where it exists.
pub fn detect(workspace: &Path) -> Result<Toolchain, BuildError> {
    let linker = find_linker(workspace).ok_or_else(|| {
        BuildError::NoToolchain(
            "bpf-linker not found in the project cache or on PATH (run `cargo xtask setup`)".into(),
        )
    })?;
    if env::var_os("MONGOWATCH_EBPF_ROUTE").as_deref() != Some("debian".as_ref())
        && nightly_has_rust_src()
    {
        return Ok(Toolchain::Nightly { linker });
    }
    let rustc = PathBuf::from(DEBIAN_RUSTC);
    if rustc.is_file() && Path::new(DEBIAN_SYSROOT_LIB).is_dir() {
        return Ok(Toolchain::Debian { rustc, linker });
    }
    Err(BuildError::NoToolchain(format!(
        "neither rustup nightly with rust-src nor Debian's rustc with {DEBIAN_SYSROOT_LIB} \
         (run `cargo xtask setup`)"
    )))
}

/// Variables a parent cargo (a build script's, or xtask's) sets that must not leak into the
/// nested build for another target.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "RUSTDOC",
    "RUSTUP_TOOLCHAIN",
];

/// Builds the kernel programs and returns the path of the object. `target_dir` is a directory
/// of its own (the nested cargo must not share the caller's locked target directory).
pub fn build(workspace: &Path, target_dir: &Path) -> Result<PathBuf, BuildError> {
    let toolchain = detect(workspace)?;
    let manifest = workspace.join(CRATE_DIR).join("Cargo.toml");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd;
    let rustflags = "-C\x1fdebuginfo=2\x1f-C\x1flink-arg=--btf";
    match &toolchain {
        Toolchain::Nightly { linker } => {
            cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"])
                .arg("--ignore-rust-version");
            for var in SCRUBBED_ENV {
                cmd.env_remove(var);
            }
            cmd.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker);
        }
        Toolchain::Debian { rustc, linker } => {
            cmd = Command::new(&cargo);
            cmd.arg("build").arg("--ignore-rust-version");
            for var in SCRUBBED_ENV {
                cmd.env_remove(var);
            }
            cmd.env("RUSTC", rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker);
        }
    }
    cmd.arg("--manifest-path")
        .arg(&manifest)
        .args(["--target", TARGET, "--release", "--bins"])
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("CARGO_TARGET_DIR", target_dir);
    let status = cmd
        .status()
        .map_err(|e| BuildError::Failed(format!("could not run {cmd:?}: {e}")))?;
    if !status.success() {
        return Err(BuildError::Failed(format!(
            "{cmd:?} exited with {status} (toolchain: {toolchain:?})"
        )));
    }
    let object = target_dir.join(TARGET).join("release").join(BIN_NAME);
    if !object.is_file() {
        return Err(BuildError::Failed(format!(
            "the build succeeded but {} is missing",
            object.display()
        )));
    }
    Ok(object)
}

/// Every path whose change must rebuild the kernel programs.
pub fn sources(workspace: &Path) -> Vec<PathBuf> {
    vec![
        workspace.join(CRATE_DIR).join("src"),
        workspace.join(CRATE_DIR).join("Cargo.toml"),
        workspace.join(CRATE_DIR).join("Cargo.lock"),
        workspace.join(CRATE_DIR).join("aya-build"),
        workspace.join("mongowatch-common/src"),
        workspace.join("mongowatch-common/Cargo.toml"),
        workspace.join("xtask/src/ebpf.rs"),
    ]
}
