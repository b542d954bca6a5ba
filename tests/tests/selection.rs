//! Node-wide selection, end to end and as root: `--all`, `--comm`, `--cgroup` and
//! `--container-id` choose processes nobody gave a pid of, in the kernel, from their first
//! operation; records say which container they came from; a watched server gives every
//! client's operations with `Side: "server"`.
//!
//! Other processes on the machine (other tests, other servers) may be selected too: every
//! check looks at the records of this test's own database and processes, and asserts what the
//! others must not be (the app that was not chosen).

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{
    paths, skip_unless, ChildGuard, GatedPython, Mongowatch, Need, PodCgroup, Server, ServerKind,
};
use serde_json::Value;

/// What every app runs once released: five operations on `sys.argv[2]`, the database, after
/// naming itself `sys.argv[3]` (the kernel's comm) when given.
const APP: &str = "import ctypes, pymongo\n\
if len(sys.argv) > 3:\n    ctypes.CDLL(None).prctl(15, sys.argv[3].encode(), 0, 0, 0)\n\
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=20000, appname='mw-select')\n\
t = c[sys.argv[2]].items\n\
t.insert_one({'n': 1})\n\
t.insert_one({'n': 2})\n\
t.find_one({'n': 1})\n\
t.count_documents({})\n\
t.delete_many({})\n\
c.close()\n";

/// The records APP's operations give, in order.
const APP_OPS: [&str; 5] = ["insert", "insert", "find", "aggregate", "delete"];

const WAIT: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos:x}", std::process::id())
}

/// Starts mongowatch with `args` and waits until its probes are attached.
fn mongowatch(args: &[&str]) -> Result<Mongowatch> {
    let mut all = vec!["--timeout", "2"];
    all.extend_from_slice(args);
    let mut mw = Mongowatch::spawn(&all)?;
    mw.wait_for_stderr("watching", WAIT)?;
    Ok(mw)
}

/// Waits for the app to exit successfully.
fn finish(app: &mut ChildGuard) -> Result<()> {
    let status = app.wait_exit(WAIT)?;
    ensure!(status.success(), "{} failed: {status}", app.name());
    Ok(())
}

/// The Operations of the records of `pid`, by StartTime.
fn ops_of(records: &[Value], pid: u32) -> Vec<String> {
    let mut mine: Vec<&Value> = records.iter().filter(|r| r["Pid"] == pid).collect();
    mine.sort_by_key(|r| r["StartTime"].as_str().unwrap_or("").to_string());
    mine.iter()
        .map(|r| r["Operation"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Stops mongowatch (every pending record is written), then gives its records of `db`.
fn stop_and_read(mut mw: Mongowatch, db: &str) -> Result<Vec<Value>> {
    mw.stop()?;
    Ok(mw
        .records()?
        .into_iter()
        .filter(|r| r["DB"] == db)
        .collect())
}

#[test]
fn all_audits_an_app_started_after_it_from_its_first_operation() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let db = unique("mw_all");
    let mut mw = mongowatch(&["--all"])?;
    // Started after mongowatch, and never named to it.
    let app = GatedPython::spawn("app", APP, &[&server.uri(), &db])?;
    app.release()?;
    let pid = app.pid();
    let mut guard = app.app;
    finish(&mut guard)?;
    // The app's five, and the server's view of them (the server is a process too).
    mw.wait_for_records_of(&db, 2 * APP_OPS.len(), WAIT)?;
    let records = stop_and_read(mw, &db)?;
    ensure!(
        ops_of(&records, pid) == APP_OPS,
        "the app's records: {:?}",
        ops_of(&records, pid)
    );
    for r in records.iter().filter(|r| r["Pid"] == pid) {
        ensure!(r["Side"] == "client", "{r}");
        ensure!(r["Node"].is_string(), "no Node: {r}");
        ensure!(r["ContainerId"].is_null(), "not in a container: {r}");
        ensure!(r["K8sPod"].is_null(), "outside a cluster: {r}");
    }
    ensure!(
        ops_of(&records, server.pid()) == APP_OPS,
        "the server's side: {:?}",
        ops_of(&records, server.pid())
    );
    Ok(())
}

#[test]
fn comm_picks_one_of_two_identical_apps() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let db = unique("mw_comm");
    let tag = format!("{:05}", std::process::id() % 100_000);
    let (name_a, name_b) = (format!("mwsel-a-{tag}"), format!("mwsel-b-{tag}"));
    let a = GatedPython::spawn("app a", APP, &[&server.uri(), &db, &name_a])?;
    let b = GatedPython::spawn("app b", APP, &[&server.uri(), &db, &name_b])?;
    let mw = mongowatch(&["--comm", &name_a])?;
    a.release()?;
    b.release()?;
    let (pid_a, pid_b) = (a.pid(), b.pid());
    let (mut a, mut b) = (a.app, b.app);
    finish(&mut a)?;
    finish(&mut b)?;
    let mut mw = mw;
    mw.wait_for_records_of(&db, APP_OPS.len(), WAIT)?;
    let records = stop_and_read(mw, &db)?;
    ensure!(ops_of(&records, pid_a) == APP_OPS, "{records:?}");
    ensure!(
        records
            .iter()
            .all(|r| r["Pid"] == pid_a && r["Comm"] == name_a.as_str()),
        "a record not of app a ({pid_a}; b is {pid_b}): {records:?}"
    );
    Ok(())
}

/// APP started inside the container: a shell that enters its cgroup, then execs the app.
fn spawn_in(cg: &PodCgroup, name: &str, server: &Server, db: &str) -> Result<ChildGuard> {
    let script = format!(
        "echo $$ > {procs} && exec {python} -c \"$1\" {uri} {db}",
        procs = cg.procs_file().display(),
        python = paths::venv_python().display(),
        uri = server.uri(),
    );
    let code = format!("import os, sys, time\n{APP}");
    ChildGuard::spawn(
        name,
        Command::new("sh")
            .args(["-c", &script, "sh", &code])
            .stdin(Stdio::null()),
    )
}

fn in_cgroup_of(pid: u32, cg: &PodCgroup) -> bool {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|t| t.lines().any(|l| l == format!("0::{}", cg.rel)))
}

#[test]
fn cgroup_and_container_id_select_the_container_and_only_it() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let cg = PodCgroup::create()?;
    let db = unique("mw_cgroup");
    let inside = GatedPython::spawn("app in the container", APP, &[&server.uri(), &db])?;
    let outside = GatedPython::spawn("app outside", APP, &[&server.uri(), &db])?;
    cg.enter(inside.pid())?;
    ensure!(in_cgroup_of(inside.pid(), &cg), "the app did not move");
    let scope = cg.scope.display().to_string();
    let prefix = &cg.container_id[..12];
    let mut by_cgroup = mongowatch(&["--cgroup", &scope])?;
    let mut by_id = mongowatch(&["--container-id", prefix])?;
    inside.release()?;
    outside.release()?;
    let (pid_in, pid_out) = (inside.pid(), outside.pid());
    let (mut i, mut o) = (inside.app, outside.app);
    finish(&mut i)?;
    finish(&mut o)?;
    by_cgroup.wait_for_records_of(&db, APP_OPS.len(), WAIT)?;
    by_id.wait_for_records_of(&db, APP_OPS.len(), WAIT)?;

    // A process started inside the container after mongowatch: a shell that enters the
    // cgroup, then execs the app, which is watched from its first operation.
    let db2 = unique("mw_cgroup_late");
    let mut late = spawn_in(&cg, "late app", &server, &db2)?;
    let pid_late = late.pid();
    finish(&mut late)?;
    by_cgroup.wait_for_records_of(&db2, APP_OPS.len(), WAIT)?;

    by_id.wait_for_records_of(&db2, APP_OPS.len(), WAIT)?;

    for (name, mut mw) in [("--cgroup", by_cgroup), ("--container-id", by_id)] {
        mw.stop()?;
        let all = mw.records()?;
        let of = |d: &str| -> Vec<Value> { all.iter().filter(|r| r["DB"] == d).cloned().collect() };
        let (first, late) = (of(&db), of(&db2));
        ensure!(
            ops_of(&first, pid_in) == APP_OPS,
            "{name}: the container's app: {first:?}"
        );
        ensure!(
            ops_of(&late, pid_late) == APP_OPS,
            "{name}: the app started in the container: {late:?}"
        );
        ensure!(
            first
                .iter()
                .chain(&late)
                .all(|r| r["Pid"] == pid_in || r["Pid"] == pid_late),
            "{name} selected another process (the app outside is {pid_out}): {first:?}"
        );
        for r in first.iter().chain(&late) {
            ensure!(
                r["ContainerId"] == cg.container_id.as_str(),
                "{name}: ContainerId of {r}"
            );
        }
    }
    Ok(())
}

/// A process in a container that does its work and exits before mongowatch reads its first
/// event (a cron job, `kubectl exec`, a one-shot migration) is still placed in its container:
/// the kernel sends the cgroup it opened the connection from, since `/proc/PID/cgroup` is gone
/// by then. mongowatch is stopped (SIGSTOP) while the app runs, so that it is surely gone.
#[test]
fn a_process_gone_before_its_events_are_read_keeps_its_container_id() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let cg = PodCgroup::create()?;
    let db = unique("mw_cgroup_gone");
    let mut mw = mongowatch(&["--cgroup", &cg.scope.display().to_string()])?;
    // SAFETY: plain signal to a child we own.
    ensure!(unsafe { libc::kill(mw.pid() as i32, libc::SIGSTOP) } == 0);
    let run = (|| {
        let mut app = spawn_in(&cg, "short-lived app", &server, &db)?;
        let pid = app.pid();
        finish(&mut app)?;
        ensure!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the app {pid} is still there"
        );
        Ok(pid)
    })();
    // SAFETY: as above; resumed whatever the app did.
    ensure!(unsafe { libc::kill(mw.pid() as i32, libc::SIGCONT) } == 0);
    let pid = run?;
    mw.wait_for_records_of(&db, APP_OPS.len(), WAIT)?;
    mw.stop()?;
    let records: Vec<Value> = mw
        .records()?
        .into_iter()
        .filter(|r| r["DB"] == db)
        .collect();
    ensure!(ops_of(&records, pid) == APP_OPS, "{records:?}");
    for r in &records {
        ensure!(
            r["ContainerId"] == cg.container_id.as_str(),
            "ContainerId of a process gone before it was read: {r}"
        );
    }
    Ok(())
}

const AUTH_USER: &str = "mw-select-dba";
const AUTH_PASSWORD: &str = "Pw-0b7d2e55-never-logged";

/// A secantusd-py with SCRAM (`--auth`) and [`AUTH_USER`] (made before `--auth`: the server has
/// no localhost exception). Returns the server and a URI that logs in as that user.
fn server_with_auth() -> Result<(Server, String)> {
    let mut server = Server::start(ServerKind::SecantusPy)?;
    let code = "import sys, pymongo\n\
        c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=20000)\n\
        c.admin.command('createUser', sys.argv[2], pwd=sys.argv[3], roles=['root'])\n";
    let out = Command::new(paths::venv_python())
        .args(["-c", code])
        .arg(server.uri())
        .args([AUTH_USER, AUTH_PASSWORD])
        .stdin(Stdio::null())
        .output()
        .context("running pymongo to create the user")?;
    ensure!(
        out.status.success(),
        "createUser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart_with_args(&["--auth"])?;
    let uri = format!(
        "mongodb://{AUTH_USER}:{AUTH_PASSWORD}@{}/?directConnection=true&authSource=admin",
        server.addr()
    );
    Ok((server, uri))
}

/// The local address of every TCP connection of `pid` to `server` (from /proc/PID/net/tcp:
/// 127.0.0.1 only, as the tests' servers listen there).
fn client_ports(pid: u32, server_port: u16) -> Vec<u16> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let inode_of_fd = |ino: &str| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                fs::read_link(fd.path())
                    .is_ok_and(|l| l.to_string_lossy() == format!("socket:[{ino}]"))
            })
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
            (port(f.get(2)?)? == server_port && inode_of_fd(f.get(9)?)).then(|| port(f[1]))?
        })
        .collect()
}

#[test]
fn a_watched_server_gives_every_clients_operations_with_user_and_address() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let (server, uri) = server_with_auth()?;
    let db = unique("mw_server");
    // Two clients, each under its own AppName; each says when it is through, then keeps its
    // connections open a while so that their addresses can be read.
    let code = APP
        .replace("appname='mw-select'", "appname=sys.argv[4]")
        .replace(
            "c.close()\n",
            "open(sys.argv[3], 'w').write('ready')\ntime.sleep(5)\nc.close()\n",
        );
    let dir = tempfile::tempdir()?;
    let (ready_a, ready_b) = (dir.path().join("a"), dir.path().join("b"));
    let (ra, rb) = (ready_a.display().to_string(), ready_b.display().to_string());
    let a = GatedPython::spawn("client a", &code, &[&uri, &db, &ra, "mw-client-a"])?;
    let b = GatedPython::spawn("client b", &code, &[&uri, &db, &rb, "mw-client-b"])?;
    // Server-side mode by name: other tests' servers are selected too; this one's pid tells.
    let mut mw = mongowatch(&["--comm", "secantusd-py"])?;
    a.release()?;
    b.release()?;
    let mut ports = Vec::new();
    for (app, ready) in [(&a, &ready_a), (&b, &ready_b)] {
        let deadline = Instant::now() + WAIT;
        while !ready.exists() {
            ensure!(Instant::now() < deadline, "a client never got through");
            std::thread::sleep(Duration::from_millis(10));
        }
        ports.push(client_ports(app.pid(), server.port()));
    }
    let (mut a, mut b) = (a.app, b.app);
    finish(&mut a)?;
    finish(&mut b)?;
    mw.wait_for_records_of(&db, 2 * APP_OPS.len(), WAIT)?;
    let records = stop_and_read(mw, &db)?;
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["Pid"] == server.pid())
        .collect();
    ensure!(mine.len() == 2 * APP_OPS.len(), "{records:?}");
    let mut want = APP_OPS.to_vec();
    want.sort();
    for (ports, app_name) in ports.iter().zip(["mw-client-a", "mw-client-b"]) {
        ensure!(
            !ports.is_empty(),
            "{app_name} had no connection to the server"
        );
        let of_client: Vec<&&Value> = mine.iter().filter(|r| r["AppName"] == app_name).collect();
        let mut ops: Vec<&str> = of_client
            .iter()
            .map(|r| r["Operation"].as_str().unwrap_or("?"))
            .collect();
        ops.sort();
        ensure!(
            ops == want,
            "{app_name}'s operations seen by the server: {ops:?}"
        );
        // Each under the address of one of that client's own connections.
        for r in of_client {
            let port = r["Client"]
                .as_str()
                .and_then(|c| c.strip_prefix("127.0.0.1:"))
                .and_then(|p| p.parse::<u16>().ok());
            ensure!(
                port.is_some_and(|p| ports.contains(&p)),
                "{app_name} ({ports:?}): {r}"
            );
        }
    }
    for r in &mine {
        ensure!(r["Side"] == "server", "{r}");
        ensure!(r["User"] == AUTH_USER, "{r}");
        ensure!(r["Server"] == server.addr().to_string().as_str(), "{r}");
        ensure!(r["Comm"] == "secantusd-py", "{r}");
    }
    let text: String = records.iter().map(|r| r.to_string()).collect();
    ensure!(!text.contains(AUTH_PASSWORD), "a password in the records");
    Ok(())
}
