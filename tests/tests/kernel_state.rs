//! The kernel programs' own state under pressure, as root with the real eBPF programs and real
//! applications: many non-MongoDB sockets beside a MongoDB connection, a message gathered from
//! hundreds of iovecs, a process whose main thread exits before its other threads, and a pid
//! reused after a watched process died.

use std::{fs, thread, time::Duration};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{
    skip_unless, ChildGuard, GatedPython, Mongowatch, Need, Server, ServerKind,
};
use serde_json::Value;

/// Runs `code` (gated until mongowatch watches it) under `mongowatch --stats [mw_args]`; returns
/// the audit records, the `--stats` line and mongowatch's stderr.
fn audit_python(
    code: &str,
    args: &[&str],
    mw_args: &[&str],
) -> Result<(Vec<Value>, Value, String)> {
    let mw = GatedPython::run_watched(code, args, mw_args)?;
    Ok((mw.records()?, mw.stats()?, mw.stderr()))
}

/// Defect: the kernel kept every socket of a watched process in one LRU map of 16,384 entries,
/// so an application holding thousands of other sockets evicted its MongoDB connection; the
/// re-created connection then read as a new one and the open cursor was split into a `closed`
/// find and an orphan getMore. Non-MongoDB sockets must not push MongoDB connections out, and
/// a connection the kernel forgot anyway must be picked up where it was.
#[test]
fn thousands_of_other_sockets_do_not_split_a_cursor() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let app = r#"
import resource, socket
from pymongo import MongoClient
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
assert hard == resource.RLIM_INFINITY or hard > 19100, f"RLIMIT_NOFILE hard limit {hard} is below 19,100"
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
c = MongoClient(sys.argv[1], appname="many-sockets")
t = c.lru.t
t.drop()
t.insert_many([{"i": i} for i in range(100)])
cur = t.find({"i": {"$gte": 0}}, batch_size=10)
seen = [next(cur) for _ in range(15)]
def hold_socketpairs(count):
    # All held open, and busy (a byte each way, a few rounds) while the cursor waits, as a
    # server's client sockets are.
    pairs = [socket.socketpair() for _ in range(count)]
    for _ in range(4):
        for a, b in pairs:
            a.send(b"x")
            b.recv(1)
    return pairs
# Two forked helpers (watched too, as children) hold 9,500 socketpairs each, so the pressure
# on a kernel map shared by every watched socket does not hang on how its LRU ages entries.
helpers = []
for _ in range(2):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        held = hold_socketpairs(9500)
        os.write(w, b"1")
        time.sleep(600)
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    helpers.append(pid)
# The app itself: 9,500 socketpairs (19,000 sockets) held open while its cursor is, long
# enough for a few of mongowatch's stats lines to count the kernel's maps.
pairs = hold_socketpairs(9500)
time.sleep(3)
seen += list(cur)
assert len(seen) == 100, len(seen)
c.close()
for pid in helpers:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"#;
    // The busy sockets keep the cursor waiting for seconds: no interim `timeout` record.
    let (records, stats, stderr) = audit_python(
        app,
        &[&server.uri()],
        &["--timeout", "600", "--stats-interval", "1"],
    )?;
    // The kernel's half of the fix: the other sockets fill only the candidates' LRU; the map
    // of MongoDB connections holds the client's few connections. With one map for every socket
    // (the old layout) it filled up with the socketpairs.
    let most = |key: &str| {
        stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["kernel_maps"][key].as_u64())
            .max()
    };
    let (connections, candidates) = (most("connections"), most("candidates"));
    ensure!(
        candidates.is_some_and(|n| n >= 4096),
        "the socketpairs were not seen by the kernel while held (candidates at most \
         {candidates:?}): the test did not load the maps ({stats})"
    );
    ensure!(
        connections.is_some_and(|n| (1..=64).contains(&n)),
        "the map of MongoDB connections held {connections:?} entries at most: only the \
         client's connections belong there ({stats})"
    );
    let finds: Vec<&Value> = records
        .iter()
        .filter(|r| r["Operation"] == "find")
        .collect();
    let get_mores: Vec<&Value> = records
        .iter()
        .filter(|r| r["Operation"] == "getMore")
        .collect();
    ensure!(
        finds.len() == 1 && get_mores.is_empty(),
        "one find, no orphan getMore: finds {finds:?}, getMores {get_mores:?} ({stats})"
    );
    let find = finds[0];
    ensure!(
        find["State"] == "final" && find["MatchedCount"] == 100,
        "the whole cursor in one record: {find}"
    );
    Ok(())
}

/// Defect: a sendmsg of 978 iovecs (how C drivers gather a bulk insert) was copied only up to
/// the kernel program's loop budget; the rest became a gap and the insert vanished. Every byte
/// must be copied, and the gap counters stay at zero.
#[test]
fn a_sendmsg_of_978_iovecs_is_copied_whole() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let app = r#"
import socket
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
docs = [{"_id": i, "i": i, "pad": "p" * 14} for i in range(300)]
msg = op_msg(1, {"insert": "t", "documents": docs, "ordered": True, "$db": "iov"})
# 978 small buffers, as a C driver gathers one document per iovec (and more).
n = 978
step = len(msg) // n
bufs = [msg[i * step:(i + 1) * step] for i in range(n - 1)] + [msg[(n - 1) * step:]]
assert len(bufs) == n and b"".join(bufs) == msg
sent = s.sendmsg(bufs)
assert sent == len(msg), (sent, len(msg))
reply = msg_doc(read_msg(s))
assert reply["n"] == 300, reply
s.close()
"#;
    let addr = server.addr();
    let (records, stats, _) = audit_python(
        app,
        &[&addr.ip().to_string(), &addr.port().to_string()],
        &[],
    )?;
    let insert = records
        .iter()
        .find(|r| r["Operation"] == "insert")
        .with_context(|| format!("no insert record ({stats}): {records:?}"))?;
    ensure!(
        insert["State"] == "final" && insert["InsertedCount"] == 300,
        "{insert}"
    );
    ensure!(
        stats["stream"]["gaps"] == 0 && stats["kernel"]["gap_bytes"] == 0,
        "every byte copied: {stats}"
    );
    Ok(())
}

/// Defect: the main thread's exit was reported as the process's, so the operations its other
/// threads went on doing were not audited. The process lives while any thread runs.
#[test]
fn a_process_outlives_its_main_thread() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let app = r#"
import ctypes, threading
from pymongo import MongoClient
c = MongoClient(sys.argv[1], appname="main-exits")
c.admin.command("ping")
main_tid = threading.get_native_id()
def main_state():
    return open(f"/proc/self/task/{main_tid}/stat").read().rsplit(")", 1)[1].split()[0]
def worker():
    while main_state() not in ("Z", "X"):
        time.sleep(0.01)
    # Longer than mongowatch's liveness tick, so a wrong "dead" has time to show.
    time.sleep(1.0)
    for i in range(10):
        c.thread.t.insert_one({"i": i})
    c.close()
threading.Thread(target=worker).start()
# ctypes releases the GIL for the call, so the worker goes on without the main thread.
ctypes.CDLL(None).pthread_exit(None)
"#;
    let (records, stats, _) = audit_python(app, &[&server.uri()], &[])?;
    let inserts = records
        .iter()
        .filter(|r| r["Operation"] == "insert" && r["DB"] == "thread")
        .count();
    ensure!(
        inserts == 10,
        "the worker's 10 inserts after the main thread exited, got {inserts} ({stats})"
    );
    Ok(())
}

/// The kernel clears a watched process's bit when its thread group is dead: an unrelated
/// process that is later given the same pid is not audited.
#[test]
fn a_reused_pid_is_not_audited() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let child_file = dir.path().join("child");
    let stop_file = dir.path().join("stop");
    // The watched parent forks a child that exits at once, then idles until told to stop.
    let app = format!(
        r#"
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
open({child:?}, "w").write(str(pid))
while not os.path.exists({stop:?}):
    time.sleep(0.05)
"#,
        child = child_file.display().to_string(),
        stop = stop_file.display().to_string()
    );
    let gated = GatedPython::spawn("watched parent", &app, &[])?;
    let mut mw = Mongowatch::watch_pid(gated.pid(), &["--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    gated.release()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let child: u32 = loop {
        if let Some(pid) = fs::read_to_string(&child_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        ensure!(std::time::Instant::now() < deadline, "no child pid");
        thread::sleep(Duration::from_millis(10));
    };
    // An unrelated process (a child of this test, not of the watched one) takes the dead
    // child's pid; other processes on the machine may take it first, so try a few times.
    let unrelated = r#"
from pymongo import MongoClient
c = MongoClient(sys.argv[1], appname="reused-pid")
for i in range(5):
    c.reused.t.insert_one({"i": i})
c.close()
"#;
    let mut reused = false;
    for _ in 0..20 {
        fs::write("/proc/sys/kernel/ns_last_pid", (child - 1).to_string())
            .context("writing ns_last_pid")?;
        let mut cmd = std::process::Command::new(mongowatch_tests::paths::venv_python());
        cmd.arg("-c")
            .arg(format!("import os, sys, time\n{unrelated}"))
            .arg(server.uri())
            .stdin(std::process::Stdio::null());
        let mut p = ChildGuard::spawn("unrelated app", &mut cmd)?;
        let got = p.pid();
        let status = p
            .wait_timeout(Duration::from_secs(60))?
            .context("the unrelated app did not finish")?;
        ensure!(status.success(), "the unrelated app failed");
        if got == child {
            reused = true;
            break;
        }
    }
    ensure!(reused, "could not make pid {child} be reused");
    fs::write(&stop_file, b"")?;
    let mut gated = gated;
    gated
        .app
        .wait_timeout(Duration::from_secs(30))?
        .context("the watched parent did not stop")?;
    mw.wait_exit(Duration::from_secs(60))?;
    let records = mw.records()?;
    let leaked: Vec<&Value> = records.iter().filter(|r| r["DB"] == "reused").collect();
    ensure!(
        leaked.is_empty(),
        "the process that reused pid {child} was audited: {leaked:?}"
    );
    Ok(())
}
