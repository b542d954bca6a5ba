//! The Kubernetes manifests of `deploy/` are valid for Kubernetes 1.33 (`kubernetes-validate
//! --strict`: schemas bundled, no cluster), the validator really rejects a wrong one, and the
//! DaemonSet has what a node agent needs (hostPID, NODE_NAME, the probes, the cgroup mount).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{paths, skip_unless, Need};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests() -> Vec<PathBuf> {
    ["namespace.yaml", "rbac.yaml", "daemonset.yaml"]
        .iter()
        .map(|f| deploy_dir().join(f))
        .collect()
}

fn validate(files: &[PathBuf]) -> Result<Output> {
    let bin = paths::venv_python()
        .parent()
        .context("the venv's bin directory")?
        .join("kubernetes-validate");
    Command::new(bin)
        .args(["-k", "1.33.0", "--strict"])
        .args(files)
        .stdin(Stdio::null())
        .output()
        .context("running kubernetes-validate")
}

/// The documents of a YAML file, as JSON (PyYAML, which the validator brings).
fn documents(file: &Path) -> Result<Vec<Value>> {
    let out = Command::new(paths::venv_python())
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_manifests_pass_kubernetes_validate_strict() -> Result<()> {
    skip_unless!(Ok(()); Need::PyModule("kubernetes_validate"));
    let out = validate(&manifests())?;
    ensure!(
        out.status.success(),
        "kubernetes-validate refused deploy/:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same DaemonSet with a wrong type and an unknown field: refused, so the pass above
    // means something.
    let dir = tempfile::tempdir()?;
    let text = std::fs::read_to_string(deploy_dir().join("daemonset.yaml"))?;
    for (what, bad) in [
        (
            "a string hostPID",
            text.replace("hostPID: true", "hostPID: \"yes\""),
        ),
        (
            "an unknown field",
            text.replace("hostPID: true", "hostPID: true\n      hostPIDs: true"),
        ),
    ] {
        ensure!(bad != text, "the manifest changed under the test");
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, bad)?;
        ensure!(!validate(&[file])?.status.success(), "{what} was accepted");
    }
    Ok(())
}

#[test]
fn the_daemonset_is_a_node_agent() -> Result<()> {
    skip_unless!(Ok(()); Need::PyModule("yaml"));
    let ds = documents(&deploy_dir().join("daemonset.yaml"))?.remove(0);
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostPID"] == true);
    ensure!(pod["serviceAccountName"] == "mongowatch");
    ensure!(pod["tolerations"][0]["operator"] == "Exists");
    ensure!(pod["terminationGracePeriodSeconds"].as_u64() >= Some(10));
    let c = &pod["containers"][0];
    let env = c["env"].as_array().context("env")?;
    ensure!(env
        .iter()
        .any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"));
    ensure!(c["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(c["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(c["resources"]["limits"]["memory"].is_string());
    ensure!(c["resources"]["requests"]["cpu"].is_string());
    let cgroup = c["volumeMounts"]
        .as_array()
        .context("mounts")?
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/cgroup")
        .context("no /sys/fs/cgroup mount")?;
    ensure!(cgroup["readOnly"] == true);
    let ns = documents(&deploy_dir().join("namespace.yaml"))?.remove(0);
    ensure!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged");
    let rbac = documents(&deploy_dir().join("rbac.yaml"))?;
    let role = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .context("ClusterRole")?;
    ensure!(role["rules"][0]["resources"] == serde_json::json!(["pods"]));
    ensure!(role["rules"][0]["verbs"] == serde_json::json!(["get", "list", "watch"]));
    Ok(())
}
