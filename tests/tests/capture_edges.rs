//! The capture path's edges, as root with the real eBPF programs: unix domain sockets, IPv6,
//! bytes moved without a user buffer (sendfile: an explicit gap, never garbage), and the clear
//! errors of the command line.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{paths, skip_unless, GatedPython, Mongowatch, Need, Server, ServerKind};
use serde_json::Value;

/// Copies bytes both ways between `a` and `b` until either side closes.
fn pump<A, B>(a: A, b: B)
where
    A: io::Read + io::Write + TryCloneStream + Send + 'static,
    B: io::Read + io::Write + TryCloneStream + Send + 'static,
{
    let (mut a2, mut b2) = (a.try_clone_stream(), b.try_clone_stream());
    let (mut a, mut b) = (a, b);
    thread::spawn(move || {
        let _ = io::copy(&mut a, &mut b2);
        b2.shutdown_stream();
    });
    thread::spawn(move || {
        let _ = io::copy(&mut b, &mut a2);
        a2.shutdown_stream();
    });
}

trait TryCloneStream: Sized {
    fn try_clone_stream(&self) -> Self;
    fn shutdown_stream(&self);
}

impl TryCloneStream for TcpStream {
    fn try_clone_stream(&self) -> Self {
        self.try_clone().expect("clone tcp stream")
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> Self {
        self.try_clone().expect("clone unix stream")
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// A relay in this (unwatched) test process: accepts on a unix socket, forwards to the server.
fn unix_relay(path: &Path, upstream: SocketAddr) -> Result<()> {
    let listener = UnixListener::bind(path)?;
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if let Ok(up) = TcpStream::connect(upstream) {
                pump(conn, up);
            }
        }
    });
    Ok(())
}

/// The same on an IPv6 loopback port.
fn v6_relay(upstream: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind("[::1]:0").context("IPv6 loopback")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if let Ok(up) = TcpStream::connect(upstream) {
                pump(conn, up);
            }
        }
    });
    Ok(addr)
}

/// Runs a small Python program (with pymongo available) under `mongowatch --messages`;
/// returns mongowatch's lines and its `--stats` line.
fn watch_python(code: &str, args: &[&str]) -> Result<(Vec<Value>, Value)> {
    let (lines, stats, _) = watch_python_with(code, args, &["--messages"])?;
    Ok((lines, stats))
}

/// Runs a small Python program under `mongowatch --stats` with `mw_args`; returns mongowatch's
/// output lines, its `--stats` line and its stderr.
fn watch_python_with(
    code: &str,
    args: &[&str],
    mw_args: &[&str],
) -> Result<(Vec<Value>, Value, String)> {
    let mw = GatedPython::run_watched(code, args, mw_args)?;
    let lines: Vec<Value> = mw
        .stdout()
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    Ok((lines, mw.stats()?, mw.stderr()))
}

const PYMONGO_APP: &str = r#"
from pymongo import MongoClient
c = MongoClient(sys.argv[1], appname="edges")
for i in range(20):
    c.edges.t.insert_one({"i": i})
assert c.edges.t.count_documents({}) >= 20
c.close()
"#;

/// The application's requests (inserts and the count's aggregate) to `server`, and how many of
/// them got their reply (matched by responseTo). Monitoring `hello`s are left out: the last one
/// of a monitor is legitimately unanswered when the client closes.
fn requests_and_replies(lines: &[Value], server: &str) -> (usize, usize) {
    let to_server: Vec<&Value> = lines.iter().filter(|l| l["Server"] == server).collect();
    let requests: Vec<i64> = to_server
        .iter()
        .filter(|l| l["Direction"] == "request")
        .filter(|l| matches!(l["Command"].as_str(), Some("insert" | "aggregate")))
        .filter_map(|l| l["RequestID"].as_i64())
        .collect();
    let answered = requests
        .iter()
        .filter(|id| {
            to_server
                .iter()
                .any(|l| l["Direction"] == "reply" && l["ResponseTo"].as_i64() == Some(**id))
        })
        .count();
    (requests.len(), answered)
}

#[test]
fn unix_socket_connections_are_captured() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("mongodb-test.sock");
    unix_relay(&sock, server.addr())?;
    let path = sock.display().to_string();
    // directConnection: otherwise pymongo moves to the TCP address the server advertises.
    let uri = format!(
        "mongodb://{}/?directConnection=true",
        path.replace('/', "%2F")
    );
    let (lines, stats) = watch_python(PYMONGO_APP, &[&uri])?;
    let (requests, replies) = requests_and_replies(&lines, &path);
    // 20 inserts and a count.
    ensure!(requests == 21, "{requests} requests to {path}");
    ensure!(
        replies == requests,
        "{replies} replies for {requests} requests"
    );
    ensure!(stats["stream"]["decode_errors"] == 0, "{stats}");
    Ok(())
}

#[test]
fn ipv6_connections_are_captured() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let relay = v6_relay(server.addr())?;
    let uri = format!("mongodb://{relay}/?directConnection=true");
    let (lines, stats) = watch_python(PYMONGO_APP, &[&uri])?;
    let (requests, replies) = requests_and_replies(&lines, &relay.to_string());
    ensure!(requests == 21, "{requests} requests to {relay}");
    ensure!(
        replies == requests,
        "{replies} replies for {requests} requests"
    );
    ensure!(
        lines.iter().all(|l| l["Client"]
            .as_str()
            .is_some_and(|c| c.starts_with("[::1]:"))),
        "client ends should be [::1]"
    );
    ensure!(stats["stream"]["decode_errors"] == 0, "{stats}");
    Ok(())
}

/// A TLS connection of a process whose TLS mongowatch cannot hook (here a plain TCP relay
/// between a pymongo client and a TLS server: it maps no TLS library, it only moves
/// ciphertext) is said so once per connection, with the reason, and counted; its bytes give no
/// record and no decode error. Both with the server's port among `--port` (the kernel copies by
/// port) and without (the kernel classifies from the first bytes). (TLS that mongowatch can
/// read is tests/tests/tls.rs.)
#[test]
fn unreadable_tls_connections_are_reported_not_garbled() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    let port = server.port().to_string();
    for mw_args in [vec!["--port", port.as_str()], vec![]] {
        let dir = tempfile::tempdir()?;
        let port_file = dir.path().join("relay.port");
        let port_file = port_file.display().to_string();
        let mut relay = GatedPython::spawn("TLS relay", RELAY, &[&port, &port_file, "3"])?;
        let mut mw = Mongowatch::watch_pid(relay.pid(), &[&mw_args[..], &["--stats"]].concat())?;
        mw.wait_for_stderr("watching", Duration::from_secs(60))?;
        relay.release()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let relay_port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
            {
                break p;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the relay never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let uri = server.uri_via(([127, 0, 0, 1], relay_port).into());
        let mut client = GatedPython::spawn("TLS client", PYMONGO_APP, &[&uri])?;
        client.release()?;
        ensure!(
            client.app.wait_exit(Duration::from_secs(120))?.success(),
            "the client failed"
        );
        ensure!(
            relay.app.wait_exit(Duration::from_secs(60))?.success(),
            "the relay failed"
        );
        mw.wait_exit(Duration::from_secs(60))?;
        let records: Vec<Value> = mw
            .stdout()
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let stats = mw.stats()?;
        let stderr = mw.stderr();
        let stream = &stats["stream"];
        ensure!(
            records.is_empty(),
            "records from a TLS connection ({mw_args:?}): {records:?}"
        );
        ensure!(
            stream["tls_connections"].as_u64() >= Some(2)
                && stream["decode_errors"] == 0
                && stream["messages"] == 0,
            "TLS connections should be counted, not decoded ({mw_args:?}): {stats}"
        );
        let warnings = stderr.matches("encrypted with TLS").count() as u64;
        let with_reason = stderr
            .matches("no library defining SSL_write (OpenSSL) is mapped by this process")
            .count() as u64;
        ensure!(
            Some(warnings) == stream["tls_connections"].as_u64() && with_reason == warnings,
            "one warning per TLS connection, with its reason ({mw_args:?}): {stderr}"
        );
    }
    Ok(())
}

/// A TCP relay that never imports `ssl`: argv[1] the server's port, argv[2] the file it writes
/// its own port to, argv[3] the idle seconds after which it stops accepting and exits.
const RELAY: &str = r#"
import socket, threading
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
srv.settimeout(float(sys.argv[3]))
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threads = []
try:
    while True:
        c, _ = srv.accept()
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        for a, b in ((c, s), (s, c)):
            t = threading.Thread(target=pump, args=(a, b))
            t.start()
            threads.append(t)
except socket.timeout:
    pass
for t in threads:
    t.join()
"#;

/// A request sent with sendfile(2) has no user buffer to copy: it must come out as an
/// explicit gap of exactly its length, warned about when it happens (naming the connection,
/// not only in the exit summary), and the stream must go on cleanly after it.
#[test]
fn sendfile_bytes_are_an_explicit_gap() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let app = r#"
import socket, tempfile
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
s.sendall(op_msg(1, {"ping": 1, "$db": "admin"})); read_msg(s)
msg = op_msg(2, {"ping": 1, "$db": "admin"})
with tempfile.TemporaryFile() as f:
    f.write(msg); f.flush()
    assert os.sendfile(s.fileno(), f.fileno(), 0, len(msg)) == len(msg)
read_msg(s)
s.sendall(op_msg(3, {"ping": 1, "$db": "admin"})); read_msg(s)
s.close()
print(len(msg))
"#;
    let addr = server.addr();
    let (lines, stats, stderr) = watch_python_with(
        app,
        &[&addr.ip().to_string(), &addr.port().to_string()],
        &["--messages"],
    )?;
    let requests: Vec<i64> = lines
        .iter()
        .filter(|l| l["Direction"] == "request")
        .filter_map(|l| l["RequestID"].as_i64())
        .collect();
    let replies = lines.iter().filter(|l| l["Direction"] == "reply").count();
    ensure!(
        requests == vec![1, 3],
        "the sendfile'd request (id 2) must be missing, the others present: {requests:?}"
    );
    ensure!(replies == 3, "every reply was read with recv: {replies}");
    ensure!(stats["stream"]["gaps"] == 1, "one gap: {stats}");
    ensure!(
        stats["kernel"]["gap_bytes"].as_u64() == stats["stream"]["gap_bytes"].as_u64()
            && stats["stream"]["gap_bytes"].as_u64().unwrap_or(0) > 16,
        "the gap is the whole message: {stats}"
    );
    ensure!(stats["stream"]["decode_errors"] == 0, "{stats}");
    ensure!(stats["kernel"]["gap_events"] == 1, "one gap event: {stats}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("could not be copied"))
        .with_context(|| format!("no gap warning: {stderr}"))?;
    ensure!(
        warning.contains(&format!("server={addr}")) && warning.contains("pid="),
        "the warning names the connection: {warning}"
    );
    Ok(())
}

fn mongowatch(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(paths::mongowatch_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

#[test]
fn a_pid_that_does_not_exist_is_a_clear_error() -> Result<()> {
    skip_unless!(Ok(()); Need::MongowatchBin);
    let out = mongowatch(&["--pid", "999999999"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}", out.status);
    ensure!(
        err.contains("no running process has pid 999999999"),
        "{err}"
    );
    Ok(())
}

#[test]
fn bad_flags_are_usage_errors() -> Result<()> {
    skip_unless!(Ok(()); Need::MongowatchBin);
    let out = mongowatch(&["--pid", "abc"])?;
    ensure!(out.status.code() == Some(2), "exit {:?}", out.status);
    let out = mongowatch(&[])?;
    ensure!(
        out.status.code() == Some(2),
        "no --pid: exit {:?}",
        out.status
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("--pid"),
        "the usage names --pid"
    );
    let out = mongowatch(&["--pid", "1", "--filter", "Duration >"])?;
    ensure!(
        out.status.code() == Some(1),
        "bad filter: exit {:?}",
        out.status
    );
    Ok(())
}

#[test]
fn without_root_it_says_so() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin);
    // Drop to nobody (and no capabilities) for this one run.
    let bin = paths::mongowatch_bin();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["--pid", &std::process::id().to_string(), "-o", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .context("setpriv (util-linux)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}: {err}", out.status);
    ensure!(
        err.contains("needs root") && err.contains("CAP_BPF"),
        "the error names what is missing: {err}"
    );
    Ok(())
}

/// SIGINT while the application holds a cursor open: mongowatch writes the pending operation
/// (as `timeout`: still open when we stopped), exits 0 and leaves nothing behind.
#[test]
fn sigint_flushes_pending_records() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let ready = dir.path().join("ready");
    let code = format!(
        r#"
from pymongo import MongoClient
c = MongoClient(sys.argv[1], appname="sigint")
t = c.sigint.t
t.drop()
t.insert_many([{{"i": i}} for i in range(30)])
cur = t.find({{"i": {{"$gte": 0}}}}, batch_size=5)
next(cur)
open({ready:?}, "w").close()
time.sleep(60)
"#,
        ready = ready.display().to_string()
    );
    let mut app = GatedPython::spawn("python app", &code, &[&server.uri()])?;
    let mut mw = Mongowatch::watch_pid(app.pid(), &["--timeout", "120"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    app.release()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        ensure!(
            std::time::Instant::now() < deadline,
            "the app never got its cursor"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Let the reply reach mongowatch before the signal.
    thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(mw.pid() as i32, libc::SIGINT) };
    let status = mw.wait_exit(Duration::from_secs(20))?;
    ensure!(status.success(), "exit status {status:?}: {}", mw.stderr());
    let records = mw.records()?;
    let find = records
        .iter()
        .find(|r| r["Operation"] == "find")
        .with_context(|| format!("no find record in {records:?}"))?;
    ensure!(
        find["State"] == "timeout",
        "an open cursor at shutdown: {find}"
    );
    ensure!(find["MatchedCount"] == 5, "one batch of 5 was read: {find}");
    ensure!(find["Iteration"] == 1, "{find}");
    ensure!(find["CursorId"].as_i64().unwrap_or(0) != 0, "{find}");
    let insert = records
        .iter()
        .find(|r| r["Operation"] == "insert")
        .context("no insert record")?;
    ensure!(
        insert["State"] == "final" && insert["InsertedCount"] == 30,
        "{insert}"
    );
    app.app.stop()?;
    Ok(())
}

/// A watched process's children are watched too: a parent that forks and execs a pymongo
/// client, only the parent named with --pid.
#[test]
fn children_are_followed() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let child_pid_file = dir.path().join("child.pid");
    let app = format!(
        r#"
child = """
import os, sys
from pymongo import MongoClient
open({child_pid_file:?}, "w").write(str(os.getpid()))
c = MongoClient(sys.argv[1], appname="child")
for i in range(10):
    c.fork.t.insert_one({{"i": i}})
c.close()
"""
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-c", child, sys.argv[1]])
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#,
        child_pid_file = child_pid_file.display().to_string()
    );
    let (lines, _) = watch_python(&app, &[&server.uri()])?;
    let child: u64 = std::fs::read_to_string(&child_pid_file)?.trim().parse()?;
    let inserts = lines
        .iter()
        .filter(|l| l["Pid"] == child && l["Command"] == "insert")
        .count();
    ensure!(inserts == 10, "the child's 10 inserts, got {inserts}");
    Ok(())
}

/// `--pid` of a parent whose workers already run (a `multiprocessing` pool, gunicorn, Node
/// cluster) watches them too: four pymongo workers connect and work before mongowatch starts,
/// and each one's later operations are all audited, under its own Pid.
#[test]
fn workers_running_before_the_start_are_watched() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    const WORKERS: usize = 4;
    const AFTER: usize = 10;
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let app = format!(
        r#"
import multiprocessing as mp
from pymongo import MongoClient

def work(n, uri, dir):
    c = MongoClient(uri, appname=f"worker-{{n}}")
    t = c.workers.before
    # Busy before mongowatch starts: connected, and an operation done, before saying so.
    t.insert_one({{"w": n}})
    open(os.path.join(dir, f"worker-{{n}}.pid"), "w").write(str(os.getpid()))
    go = os.path.join(dir, "go")
    while not os.path.exists(go):
        t.find_one({{"w": n}})
        time.sleep(0.01)
    for i in range({AFTER}):
        c.workers.after.insert_one({{"w": n, "i": i}})
    c.close()

if __name__ == "__main__":
    mp.set_start_method("fork")
    procs = [mp.Process(target=work, args=(n, sys.argv[1], sys.argv[2])) for n in range({WORKERS})]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    sys.exit(max(p.exitcode for p in procs))
"#
    );
    let dir_arg = dir.path().to_str().context("temp dir path")?;
    let mut parent = GatedPython::spawn("python pool", &app, &[&server.uri(), dir_arg])?;
    parent.release()?;
    let pid_file = |n: usize| dir.path().join(format!("worker-{n}.pid"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(0..WORKERS).all(|n| pid_file(n).exists()) {
        ensure!(
            std::time::Instant::now() < deadline,
            "the workers never started"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let mut mw = Mongowatch::watch_pid(parent.pid(), &["--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    std::fs::write(dir.path().join("go"), b"")?;
    let status = parent
        .app
        .wait_timeout(Duration::from_secs(120))?
        .context("the pool did not finish")?;
    ensure!(status.success(), "the pool failed: {status}");
    ensure!(
        mw.wait_exit(Duration::from_secs(60))?.success(),
        "mongowatch failed: {}",
        mw.stderr()
    );
    let records = mw.records()?;
    for n in 0..WORKERS {
        let pid: u64 = std::fs::read_to_string(pid_file(n))?.trim().parse()?;
        let inserts = records
            .iter()
            .filter(|r| {
                r["Pid"] == pid
                    && r["Operation"] == "insert"
                    && r["Collection"] == "after"
                    && r["State"] == "final"
                    && r["InsertedCount"] == 1
            })
            .count();
        ensure!(
            inserts == AFTER,
            "worker {n} (pid {pid}): {inserts} of its {AFTER} inserts audited; stderr: {}",
            mw.stderr()
        );
    }
    Ok(())
}
