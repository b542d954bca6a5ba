//! The Kubernetes manifests of `deploy/` are valid for Kubernetes 1.33 (`kubernetes-validate
//! --strict`: schemas bundled, no cluster), the validator really rejects a wrong one, and the
//! DaemonSet has what a node agent needs (hostPID, NODE_NAME, the probes, the cgroup mount).
//! Its image, built offline by `cargo xtask image`, run by podman the way the DaemonSet's pod
//! asks (privileged, the host's pids, its hostPath mounts), audits a process of the host.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use mongowatch_tests::{paths, skip_unless, ChildGuard, GatedPython, Need, Server, ServerKind};
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

/// The podman flags that give a container what the DaemonSet's pod asks of its node: the
/// host's pids, privileges, a read-only root, its hostPath mounts, and `NODE_NAME` (the
/// downward API's `spec.nodeName`).
fn podman_flags_of_the_daemonset(node: &str) -> Result<Vec<String>> {
    let ds = documents(&deploy_dir().join("daemonset.yaml"))?.remove(0);
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut flags = Vec::new();
    if pod["hostPID"] == true {
        flags.push("--pid=host".to_string());
    }
    if c["securityContext"]["privileged"] == true {
        flags.push("--privileged".to_string());
    }
    if c["securityContext"]["readOnlyRootFilesystem"] == true {
        flags.push("--read-only".to_string());
    }
    let volumes = pod["volumes"].as_array().context("no volumes")?;
    for m in c["volumeMounts"].as_array().context("no volumeMounts")? {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .with_context(|| format!("no volume for the mount {m}"))?;
        let host = volume["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("not a hostPath volume: {volume}"))?;
        let path = m["mountPath"].as_str().context("mountPath")?;
        let mode = if m["readOnly"] == true { ":ro" } else { "" };
        flags.extend(["-v".to_string(), format!("{host}:{path}{mode}")]);
    }
    ensure!(
        c["env"].as_array().is_some_and(|env| env
            .iter()
            .any(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")),
        "the DaemonSet gives no NODE_NAME"
    );
    flags.extend(["-e".to_string(), format!("NODE_NAME={node}")]);
    Ok(flags)
}

/// An image or a container of the test, removed by podman when dropped, pass or fail.
struct Podman<'a>(&'a [&'a str]);

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(self.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What the host app does once released: five operations on database `sys.argv[2]`.
const APP: &str = "import pymongo\n\
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=20000)\n\
t = c[sys.argv[2]].items\n\
t.insert_one({'n': 1})\n\
t.insert_one({'n': 2})\n\
t.find_one({'n': 1})\n\
t.count_documents({})\n\
t.delete_many({})\n\
c.close()\n";

const APP_OPS: [&str; 5] = ["insert", "insert", "find", "aggregate", "delete"];

#[test]
fn the_image_run_by_podman_like_the_daemonset_audits_a_host_process() -> Result<()> {
    skip_unless!(Ok(());
        Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo, Need::PyModule("yaml"),
        Need::Program("podman"), Need::Program("runc"));
    const WAIT: Duration = Duration::from_secs(60);
    let id = std::process::id();
    let (tag, name) = (
        format!("localhost/mongowatch-test:{id}"),
        format!("mongowatch-test-{id}"),
    );
    let node = format!("node-{id}");
    let flags = podman_flags_of_the_daemonset(&node)?;

    // Built the way a user builds it, packaging the binary under test (the debug build: the
    // release one would cost the tests minutes of compiling).
    let _image = Podman(&["rmi", "--force", &tag]);
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(paths::workspace_dir())
        .args(["xtask", "image", "--tag", &tag, "--binary"])
        .arg(paths::mongowatch_bin())
        .stdin(Stdio::null())
        .output()
        .context("running cargo xtask image")?;
    ensure!(
        out.status.success(),
        "cargo xtask image failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let built = started.elapsed();

    let server = Server::start(ServerKind::SecantusPy)?;
    let db = format!("mw_image_{id}");
    let app = GatedPython::spawn("host app", APP, &[&server.uri(), &db])?;
    let dir = tempfile::tempdir()?;
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let _container = Podman(&["rm", "--force", "--time", "1", &name]);
    let mut run = ChildGuard::spawn(
        "podman run",
        Command::new("podman")
            .args(["run", "--rm", "--name", &name])
            // runc: Debian 12's crun refuses hybrid cgroup hosts. No network: capturing needs
            // none. podman asks for a nofile limit of 1048576 by default, above the hard limit
            // of some runners (setrlimit: operation not permitted): limits any host allows.
            .args(["--runtime", "runc", "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(&flags)
            .arg(&tag)
            // A host pid: the container sees the host's.
            .args(["--pid", &app.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?),
    )?;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let deadline = Instant::now() + WAIT;
    while !read(&stderr).contains("watching") {
        if let Some(status) = run.try_wait()? {
            bail!(
                "the container exited ({status}) before watching:\n{}",
                read(&stderr)
            );
        }
        ensure!(
            Instant::now() < deadline,
            "not watching after {WAIT:?}:\n{}",
            read(&stderr)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let watching = started.elapsed() - built;
    app.release()?;
    let pid = app.pid();
    let mut app = app.app;
    let status = app.wait_exit(WAIT)?;
    ensure!(status.success(), "the host app failed: {status}");
    // mongowatch exits once the process it watches has, and the container with it.
    let status = run.wait_exit(WAIT).with_context(|| read(&stderr))?;
    ensure!(status.success(), "podman run: {status}\n{}", read(&stderr));

    let records: Vec<Value> = read(&stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("stdout not JSON lines:\n{}", read(&stdout)))?;
    let ops: Vec<&str> = records
        .iter()
        .map(|r| r["Operation"].as_str().unwrap_or("?"))
        .collect();
    ensure!(ops == APP_OPS, "{records:?}\nstderr:\n{}", read(&stderr));
    for r in &records {
        ensure!(r["Pid"] == pid, "not the host app's pid ({pid}): {r}");
        ensure!(r["DB"] == db.as_str(), "{r}");
        ensure!(r["Side"] == "client", "{r}");
        ensure!(r["Node"] == node.as_str(), "NODE_NAME not used: {r}");
        ensure!(
            r["ContainerId"].is_null(),
            "the app is not in a container: {r}"
        );
    }
    eprintln!(
        "image built in {:.1} s, container watching {:.1} s later",
        built.as_secs_f64(),
        watching.as_secs_f64()
    );
    Ok(())
}
