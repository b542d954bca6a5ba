//! `cargo xtask demo` builds xtask (and the test harness), then the daemon: two cargo commands,
//! each resolving features for its own graph. Where a crate both use gets different features in
//! each, it and everything above it is compiled twice (about 100 CPU-seconds of a first demo,
//! before workspace-hack). This checks that the two graphs agree on every shared crate.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

/// Each package of the graph (name and version) with the feature sets it is built with.
fn features(package: &str) -> BTreeMap<String, BTreeSet<String>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["tree", "--offline", "--locked", "-p", package])
        .args(["-e", "normal,build", "--prefix", "none", "-f", "{p}|{f}"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let Some((id, feats)) = line.split_once('|') else {
            continue;
        };
        // "name vX.Y.Z (path)": the name and version name the build.
        let id: Vec<&str> = id.split_whitespace().take(2).collect();
        let feats = feats
            .trim_end_matches(" (*)")
            .trim_end_matches(" (proc-macro)");
        graph
            .entry(id.join(" "))
            .or_default()
            .insert(feats.to_owned());
    }
    graph
}

#[test]
fn the_daemon_and_the_tooling_build_their_shared_crates_alike() {
    let tooling = features("xtask");
    let daemon = features("mongowatch-user");
    assert!(
        tooling.keys().any(|k| k.starts_with("serde_json ")),
        "the graph was read: {tooling:?}"
    );
    let shared: Vec<&String> = tooling.keys().filter(|k| daemon.contains_key(*k)).collect();
    assert!(shared.len() > 50, "{} crates shared", shared.len());
    let differ: Vec<String> = shared
        .iter()
        .filter(|k| tooling[**k] != daemon[**k])
        .map(|k| format!("{k}: xtask {:?}, mongowatch {:?}", tooling[*k], daemon[*k]))
        .collect();
    assert!(
        differ.is_empty(),
        "features differ, so these are built twice; add the union to workspace-hack/Cargo.toml:\n{}",
        differ.join("\n")
    );
}
