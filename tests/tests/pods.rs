//! Pod metadata and `--k8s-*` selection, end to end and as root, against a stand-in API server
//! (`tests/workloads/fake_kube_api.py`: the pods list and the `watch=1` stream as the real one
//! serves them, over TLS with a throwaway CA, a bearer token and the CA laid out like a
//! service account). The "pods" are real cgroup v2 directories laid out like a kubelet's, with
//! real apps in them.
//!
//! One test in this binary: it sets the in-cluster variables (`KUBERNETES_SERVICE_HOST`, ...)
//! in its own environment, which mongowatch inherits.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{
    paths, skip_unless, ChildGuard, GatedPython, Mongowatch, Need, PodCgroup, Server, ServerKind,
};
use serde_json::{json, Value};

const APP: &str = "import pymongo\n\
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=20000)\n\
t = c[sys.argv[2]].items\n\
t.insert_one({'n': 1})\n\
t.find_one({'n': 1})\n\
t.delete_many({})\n\
c.close()\n";
const APP_OPS: [&str; 3] = ["insert", "find", "delete"];
const WAIT: Duration = Duration::from_secs(60);
const NODE: &str = "mw-node-7";
const TOKEN: &str = "tok-3f9a0c1e-not-a-secret";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A throwaway CA and a server certificate it signed for 127.0.0.1, as a cluster's API server
/// has: the CA goes to the service account directory, the pair to the server.
fn certificates(api: &Path, sa: &Path) -> Result<()> {
    openssl(
        api,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=mw-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    )?;
    openssl(
        api,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    )?;
    fs::write(
        api.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\n\
         basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        api,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    )?;
    fs::copy(api.join("ca.crt"), sa.join("ca.crt"))?;
    fs::write(sa.join("token"), format!("{TOKEN}\n"))?;
    Ok(())
}

/// A pod of this node as the API server describes it, with one running container.
fn pod(cg: &PodCgroup, ns: &str, name: &str, app: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": cg.pod_uid,
                     "resourceVersion": "101", "labels": {"app": app}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "app:1"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "main", "ready": true, "restartCount": 0, "image": "app:1",
             "containerID": format!("containerd://{}", cg.container_id)}]}
    })
}

fn ops(records: &[&Value]) -> Vec<String> {
    let mut r = records.to_vec();
    r.sort_by_key(|r| r["StartTime"].as_str().unwrap_or("").to_string());
    r.iter()
        .map(|r| r["Operation"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn k8s_selectors_and_pod_fields_from_the_api_server() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let (api, sa) = (dir.path().join("api"), dir.path().join("serviceaccount"));
    for d in [&api, &sa, &api.join("pods"), &api.join("events")] {
        fs::create_dir_all(d)?;
    }
    certificates(&api, &sa)?;

    // Two pods at start: one in `shop` labelled app=api, one elsewhere.
    let (shop, other) = (PodCgroup::create()?, PodCgroup::create()?);
    fs::write(
        api.join("pods/1.json"),
        pod(&shop, "shop", "api-0", "api").to_string(),
    )?;
    fs::write(
        api.join("pods/2.json"),
        pod(&other, "batch", "job-0", "job").to_string(),
    )?;
    let mut fake = ChildGuard::spawn(
        "fake API server",
        Command::new(paths::venv_python())
            .arg(paths::workloads_dir().join("fake_kube_api.py"))
            .arg(&api)
            .args([NODE, TOKEN])
            .stdin(Stdio::null()),
    )?;
    let deadline = Instant::now() + WAIT;
    while !api.join("port").exists() {
        ensure!(fake.is_running(), "the fake API server exited");
        ensure!(
            Instant::now() < deadline,
            "the fake API server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = fs::read_to_string(api.join("port"))?;

    // What a pod's environment says; mongowatch inherits it.
    std::env::set_var("KUBERNETES_SERVICE_HOST", "127.0.0.1");
    std::env::set_var("KUBERNETES_SERVICE_PORT", port.trim());
    std::env::set_var("MONGOWATCH_K8S_SA_DIR", &sa);
    std::env::set_var("NODE_NAME", NODE);
    std::env::set_var("MONGOWATCH_LOG", "info,mongowatch::pipeline::pods=debug");

    let db = format!("mw_pods_{}", std::process::id());
    let in_shop = GatedPython::spawn("app in shop", APP, &[&server.uri(), &db])?;
    let in_other = GatedPython::spawn("app in batch", APP, &[&server.uri(), &db])?;
    shop.enter(in_shop.pid())?;
    other.enter(in_other.pid())?;

    let mut by_ns = Mongowatch::spawn(["--k8s-namespace", "shop"])?;
    let mut by_label = Mongowatch::spawn(["--k8s-label", "app=api"])?;
    // Everything but a namespace: the batch app, watched by --all from the start, leaves once
    // its pod is known.
    let mut all_but = Mongowatch::spawn(["--all", "--exclude-k8s-namespace", "batch"])?;
    for mw in [&mut by_ns, &mut by_label] {
        mw.wait_for_stderr("pod metadata synced", WAIT)?;
        mw.wait_for_stderr(&shop.container_id, WAIT)?;
    }
    all_but.wait_for_stderr(&other.container_id, WAIT)?;
    in_shop.release()?;
    in_other.release()?;
    let (pid_shop, pid_other) = (in_shop.pid(), in_other.pid());
    let (mut a, mut b) = (in_shop.app, in_other.app);
    for app in [&mut a, &mut b] {
        ensure!(app.wait_exit(WAIT)?.success(), "{} failed", app.name());
    }
    by_ns.wait_for_records_of(&db, APP_OPS.len(), WAIT)?;
    by_label.wait_for_records_of(&db, APP_OPS.len(), WAIT)?;
    all_but.wait_for_records_of(&db, APP_OPS.len(), WAIT)?;
    all_but.stop()?;
    let seen: Vec<Value> = all_but
        .records()?
        .into_iter()
        .filter(|r| r["DB"] == db.as_str())
        .collect();
    ensure!(
        ops(&seen
            .iter()
            .filter(|r| r["Pid"] == pid_shop)
            .collect::<Vec<_>>())
            == APP_OPS,
        "--all: the shop app: {seen:?}"
    );
    ensure!(
        !seen.iter().any(|r| r["Pid"] == pid_other),
        "--exclude-k8s-namespace batch: the batch app ({pid_other}) was audited: {seen:?}"
    );

    // A pod added while mongowatch runs, and an app started in it: watched from its first
    // operation, with the new pod's fields.
    let late = PodCgroup::create()?;
    fs::write(
        api.join("events/1.json"),
        json!({"type": "ADDED", "object": pod(&late, "shop", "api-1", "api")}).to_string(),
    )?;
    for mw in [&mut by_ns, &mut by_label] {
        mw.wait_for_stderr(&late.container_id, WAIT)?;
    }
    let db2 = format!("{db}_late");
    let script = format!(
        "echo $$ > {procs} && exec {python} -c \"$1\" {uri} {db2}",
        procs = late.procs_file().display(),
        python = paths::venv_python().display(),
        uri = server.uri(),
    );
    let code = format!("import os, sys, time\n{APP}");
    let mut late_app = ChildGuard::spawn(
        "app in the new pod",
        Command::new("sh")
            .args(["-c", &script, "sh", &code])
            .stdin(Stdio::null()),
    )?;
    let pid_late = late_app.pid();
    ensure!(
        late_app.wait_exit(WAIT)?.success(),
        "the new pod's app failed"
    );
    by_ns.wait_for_records_of(&db2, APP_OPS.len(), WAIT)?;
    by_label.wait_for_records_of(&db2, APP_OPS.len(), WAIT)?;

    for (name, mut mw) in [("--k8s-namespace", by_ns), ("--k8s-label", by_label)] {
        mw.stop()?;
        let all = mw.records()?;
        let of = |d: &str, pid: u32| -> Vec<&Value> {
            all.iter()
                .filter(|r| r["DB"] == d && r["Pid"] == pid)
                .collect()
        };
        ensure!(
            ops(&of(&db, pid_shop)) == APP_OPS,
            "{name}: shop's app: {all:?}"
        );
        ensure!(
            ops(&of(&db2, pid_late)) == APP_OPS,
            "{name}: the new pod's app: {all:?}"
        );
        ensure!(
            all.iter()
                .filter(|r| r["DB"] == db.as_str() || r["DB"] == db2.as_str())
                .all(|r| r["Pid"] == pid_shop || r["Pid"] == pid_late),
            "{name} selected a process of no chosen pod ({pid_other} is in batch): {all:?}"
        );
        for (records, cg, pod_name) in [
            (of(&db, pid_shop), &shop, "api-0"),
            (of(&db2, pid_late), &late, "api-1"),
        ] {
            for r in records {
                ensure!(r["K8sNamespace"] == "shop", "{name}: {r}");
                ensure!(r["K8sPod"] == pod_name, "{name}: {r}");
                ensure!(r["K8sPodUid"] == cg.pod_uid.as_str(), "{name}: {r}");
                ensure!(r["K8sContainer"] == "main", "{name}: {r}");
                ensure!(r["ContainerId"] == cg.container_id.as_str(), "{name}: {r}");
                ensure!(r["Node"] == NODE, "{name}: {r}");
            }
        }
        ensure!(
            !mw.stderr().contains(TOKEN),
            "{name}: the token in the diagnostics"
        );
    }
    Ok(())
}
