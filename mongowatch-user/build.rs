//! Builds the kernel programs and embeds them, so the daemon never carries a stale object:
//! cargo re-runs this script whenever a source of the eBPF crate (or the shared types) changes.
//!
//! Without an eBPF toolchain (plain `cargo check` / `clippy` on a laptop) it embeds an empty
//! object and warns; such a binary refuses to capture with a clear error. Set
//! `MONGOWATCH_REQUIRE_EBPF=1` (as `cargo xtask test` and CI do) to make that a build failure,
//! or `MONGOWATCH_SKIP_EBPF=1` to skip the eBPF build on purpose.

#[path = "../xtask/src/ebpf.rs"]
mod ebpf;

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest
        .parent()
        .expect("crate inside the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    let object = out_dir.join("mongowatch-ebpf.o");

    for path in ebpf::sources(&workspace) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for var in [
        "MONGOWATCH_SKIP_EBPF",
        "MONGOWATCH_REQUIRE_EBPF",
        "MONGOWATCH_CACHE",
        "MONGOWATCH_EBPF_ROUTE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rustc-check-cfg=cfg(mongowatch_ebpf_stub)");

    if env::var_os("MONGOWATCH_SKIP_EBPF").is_some() {
        stub(&object, "MONGOWATCH_SKIP_EBPF is set");
        return;
    }
    let target_dir = ebpf_target_dir(&out_dir, &workspace);
    match ebpf::build(&workspace, &target_dir) {
        Ok(built) => {
            fs::copy(&built, &object).expect("copy the eBPF object into OUT_DIR");
        }
        Err(ebpf::BuildError::NoToolchain(why))
            if env::var_os("MONGOWATCH_REQUIRE_EBPF").is_none() =>
        {
            stub(&object, &why);
        }
        Err(e) => panic!("{e}"),
    }
}

/// `<target>/ebpf`, beside the caller's profile directories: a directory of its own, because
/// the outer cargo holds the lock on its own build directory while this script runs.
fn ebpf_target_dir(out_dir: &Path, workspace: &Path) -> PathBuf {
    // OUT_DIR = <target>/<profile>/build/<pkg>-<hash>/out (or <target>/<triple>/<profile>/...)
    out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .map(|t| t.join("ebpf"))
        .unwrap_or_else(|| workspace.join("target/ebpf"))
}

fn stub(object: &Path, why: &str) {
    println!("cargo:warning=mongowatch is built WITHOUT its eBPF programs ({why}); it will refuse to capture. Run `cargo xtask setup`.");
    println!("cargo:rustc-cfg=mongowatch_ebpf_stub");
    fs::write(object, []).expect("write the stub object");
}
