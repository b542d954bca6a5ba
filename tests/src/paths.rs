//! Where things are: the workspace, the project cache that `cargo xtask setup` fills, the
//! servers, the drivers, the workloads and the `mongowatch` binary under test.
//!
//! The cache is `$MONGOWATCH_CACHE`, else `<workspace>/.cache` (the same rule as
//! `xtask/src/ebpf.rs::cache_dir`). Its layout:
//!
//! ```text
//! <cache>/tools/bin/{bpf-linker,secantusd-rs}   cargo install --root <cache>/tools
//! <cache>/venv/bin/{python,secantusd-py}        python3 -m venv + tests/requirements.txt
//! <cache>/node/node_modules/{mongodb,mongosh}   npm ci of tests/node/package-lock.json
//! ```

use std::{
    env,
    path::{Path, PathBuf},
};

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// The project cache: `$MONGOWATCH_CACHE`, else `<workspace>/.cache`.
pub fn cache_dir() -> PathBuf {
    match env::var_os("MONGOWATCH_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_dir().join(".cache"),
    }
}

/// `tests/workloads`: the driver workload scripts.
pub fn workloads_dir() -> PathBuf {
    workspace_dir().join("tests/workloads")
}

/// `tests/requirements.txt`: the pinned Python packages of the venv.
pub fn requirements_txt() -> PathBuf {
    workspace_dir().join("tests/requirements.txt")
}

/// `tests/node`: package.json and package-lock.json of the Node drivers.
pub fn node_project_dir() -> PathBuf {
    workspace_dir().join("tests/node")
}

/// The Python venv with SecantusDB and pymongo.
pub fn venv_dir() -> PathBuf {
    cache_dir().join("venv")
}

/// PyOpenSSL and its dependencies, installed apart from the venv (`pip install --target`):
/// a workload that puts it on PYTHONPATH makes pymongo use PyOpenSSL.
pub fn pyopenssl_dir() -> PathBuf {
    cache_dir().join("pyopenssl")
}

/// pymongo 4.8 with PyOpenSSL over cryptography 3.4's OpenSSL 1.1.1
/// (tests/requirements-openssl11.txt), for PYTHONPATH.
pub fn openssl11_dir() -> PathBuf {
    cache_dir().join("openssl11")
}

/// The venv's interpreter (runs the pymongo workloads).
pub fn venv_python() -> PathBuf {
    venv_dir().join("bin/python")
}

/// The Python server (SecantusDB).
pub fn secantusd_py() -> PathBuf {
    venv_dir().join("bin/secantusd-py")
}

/// Binaries installed with `cargo install --root <cache>/tools`.
pub fn tools_bin_dir() -> PathBuf {
    cache_dir().join("tools/bin")
}

/// The Rust server (secantus-mdb), the one with wire compression.
pub fn secantusd_rs() -> PathBuf {
    tools_bin_dir().join("secantusd-rs")
}

/// Where `npm ci` put the Node packages: `<cache>/node`.
pub fn node_prefix() -> PathBuf {
    cache_dir().join("node")
}

/// `<cache>/node/node_modules`: what the Node workloads get as `NODE_PATH`.
pub fn node_modules() -> PathBuf {
    node_prefix().join("node_modules")
}

/// The mongosh shell installed from the npm registry.
pub fn mongosh() -> PathBuf {
    node_modules().join(".bin/mongosh")
}

/// The `node` interpreter: `$MONGOWATCH_NODE`, else the first `node` on PATH.
pub fn node() -> PathBuf {
    if let Some(node) = env::var_os("MONGOWATCH_NODE").filter(|n| !n.is_empty()) {
        return PathBuf::from(node);
    }
    find_in_path("node").unwrap_or_else(|| PathBuf::from("node"))
}

/// Cargo's target directory as seen from here: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// The `mongowatch` binary under test: `$MONGOWATCH_BIN` (set by `cargo xtask test`), else
/// `<target>/debug/mongowatch`.
pub fn mongowatch_bin() -> PathBuf {
    match env::var_os("MONGOWATCH_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => target_dir().join("debug/mongowatch"),
    }
}

/// The first executable called `name` on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Set `MONGOWATCH_KEEP_TEMP=1` to keep the harness's temporary directories (server logs,
/// workload oracles, mongowatch's output) after a test, for a look at a failure.
pub const KEEP_TEMP_VAR: &str = "MONGOWATCH_KEEP_TEMP";

/// A temporary directory named `<prefix>XXXXXX`, removed when dropped unless
/// `MONGOWATCH_KEEP_TEMP` is set (then its path is printed).
pub fn temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context;
    let keep = env::var(KEEP_TEMP_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()
        .with_context(|| format!("creating a temp dir {prefix}*"))?;
    if keep {
        eprintln!("harness: keeping {}", dir.path().display());
    }
    Ok(dir)
}
