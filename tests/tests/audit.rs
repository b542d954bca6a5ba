//! Issue 4's acceptance, end to end and as root: mongowatch's audit records checked against the
//! drivers' own command monitoring.
//!
//! Each test runs a workload of `tests/workloads/audit_*` (pymongo with a `CommandListener`,
//! the Node driver and mongosh with `monitorCommands`), which writes every command and reply
//! as relaxed Extended JSON: the oracle. [`mongowatch_tests::oracle_ops`] groups the oracle's
//! events into operations by the contract's rules (a cursor-producing command + its getMores +
//! the killCursors that closes it = one; anything else = one), derives the fields each record
//! must carry, and matches the records one to one (cursor operations by CursorId, the others
//! in order per Operation; see that module) — every operation exactly once, nothing extra,
//! with equal DB, Collection, Operation, Filter, counts, Iteration, State, CursorId and Error.
//!
//! Beyond that:
//! - a cursor left open longer than `--timeout 2` must give a `timeout` record, then, once the
//!   workload reads it further and closes it, a last record with the same WatchID, a higher
//!   Iteration and State `final`;
//! - pymongo: a cursor whose getMore goes out on another pooled connection than its find is
//!   still one record, and an exhaust cursor (one getMore, a stream of replies) is one record
//!   with an Iteration per reply;
//! - a second process (the "victim"), watched with a second `--pid`, opens a cursor and is
//!   SIGKILLed: its cursor's record must say `closed`;
//! - with secantusd-rs and `compressors=zlib|zstd|snappy` (Node: zlib and snappy), every
//!   record names the compressor
//!   (pymongo's snappy needs the `python-snappy` package in the venv; zstd `backports.zstd`);
//! - every record carries the workload's AppName and the server's address;
//! - no handshake or heartbeat is a record.
//!
//! mongosh probes the server (on admin) before a script can subscribe to its events, so its
//! test asks mongowatch for the workload's database only (`--db`) and filters the oracle alike.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use mongowatch_tests::{
    oracle_ops::{self, match_records, Matched, ProcessOracle, NOT_RECORDED},
    paths, skip_unless, ChildGuard, Driver, GatedPython, Mongowatch, Need, Server, ServerKind,
};
use serde_json::{json, Value};

/// mongowatch's idle timeout in these tests, and how long the held cursor stays idle.
const TIMEOUT_S: u64 = 2;
const HOLD_S: f64 = 5.0;
const DB: &str = "mongowatch_audit";

/// A workload process of this suite and its files.
struct AuditProcess {
    guard: ChildGuard,
    oracle: PathBuf,
    ready: PathBuf,
    stderr: PathBuf,
}

impl AuditProcess {
    fn spawn(
        driver: Driver,
        uri: &str,
        role: &str,
        dir: &Path,
        start_file: &Path,
    ) -> Result<AuditProcess> {
        let script = match driver {
            Driver::Pymongo => paths::workloads_dir().join("audit_pymongo.py"),
            Driver::Node => paths::workloads_dir().join("audit_node.js"),
        };
        let oracle = dir.join(format!("{role}.oracle.jsonl"));
        let ready = dir.join(format!("{role}.ready"));
        let stderr = dir.join(format!("{role}.stderr"));
        let hold = if role == "victim" { 120.0 } else { HOLD_S };
        let mut cmd = driver.command(&script);
        cmd.current_dir(dir)
            .arg("--uri")
            .arg(uri)
            .arg("--out")
            .arg(&oracle)
            .arg("--db")
            .arg(DB)
            .arg("--role")
            .arg(role)
            .arg("--hold")
            .arg(hold.to_string())
            .arg("--ready-file")
            .arg(&ready)
            .arg("--start-file")
            .arg(start_file)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join(format!("{role}.stdout")))?)
            .stderr(fs::File::create(&stderr)?);
        let guard = ChildGuard::spawn(format!("{} {role} workload", driver.name()), &mut cmd)?;
        Ok(AuditProcess {
            guard,
            oracle,
            ready,
            stderr,
        })
    }

    fn pid(&self) -> u32 {
        self.guard.pid()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn ops(&self) -> Result<Vec<oracle_ops::ExpectedOp>> {
        oracle_ops::group_operations(&oracle_ops::read_events(&self.oracle)?)
    }
}

fn wait_file(path: &Path, who: &mut AuditProcess, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Some(status) = who.guard.try_wait()? {
            bail!(
                "{} exited with {status} before {}; stderr:\n{}",
                who.guard.name(),
                path.display(),
                who.stderr()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The held cursor: find {grp: {$in: [0, 1]}} with batchSize 5, read 5, idle HOLD_S, read 5
/// more (one getMore), closed. Its WatchID must have a `timeout` record (Iteration 1, 5 docs)
/// before the final one (Iteration 2, 10 docs).
fn check_held_cursor(matched: &[Matched]) -> Result<()> {
    let held = matched
        .iter()
        .find(|m| {
            m.op.operation == "find"
                && oracle_ops::json_eq(&m.op.filter, &json!({"grp": {"$in": [0, 1]}}))
        })
        .context("the held cursor's find is not among the matched operations")?;
    let recs = &held.chain.records;
    ensure!(
        recs.len() >= 2,
        "the cursor held open {HOLD_S}s (> --timeout {TIMEOUT_S}) has no timeout record \
         before its last: {recs:?}"
    );
    let first = &recs[0];
    ensure!(
        first["State"] == "timeout" && first["Iteration"] == 1 && first["MatchedCount"] == 5,
        "the held cursor's first record should be a timeout after one batch of 5: {first}"
    );
    let last = held.chain.last();
    ensure!(
        last["State"] == "final" && last["Iteration"] == 2 && last["MatchedCount"] == 10,
        "the held cursor's last record should be final after 2 batches of 5: {last}"
    );
    ensure!(
        held.op.commands == ["find", "getMore", "killCursors"],
        "the held cursor's commands: {:?}",
        held.op.commands
    );
    Ok(())
}

/// pymongo's cursor continued on another pooled connection, and its exhaust cursor (see
/// `audit_pymongo.py`). Matching has already checked each is one record chain with the
/// oracle's Iteration, counts and State; here the oracle must show that the scenario happened.
fn check_moved_and_exhaust_cursors(matched: &[Matched]) -> Result<()> {
    let find = |filter: Value| {
        matched
            .iter()
            .find(|m| m.op.operation == "find" && oracle_ops::json_eq(&m.op.filter, &filter))
            .with_context(|| format!("no find {filter} among the matched operations"))
    };
    let moved = find(json!({"grp": {"$in": [6, 7]}}))?;
    let conns = &moved.op.connections;
    ensure!(
        moved.op.commands == ["find", "getMore", "killCursors"]
            && conns.len() == 3
            && !conns[0].is_null()
            && conns[0] != conns[1],
        "the moved cursor's getMore did not go out on another connection than its find: \
         commands {:?} on connections {conns:?}",
        moved.op.commands
    );
    ensure!(
        moved.chain.records.len() == 1 && moved.chain.last()["Iteration"] == 2,
        "the moved cursor should be one record of 2 batches: {:?}",
        moved.chain.records
    );
    let exhaust = find(json!({"grp": 8}))?;
    let get_mores = exhaust
        .op
        .commands
        .iter()
        .filter(|c| *c == "getMore")
        .count();
    ensure!(
        get_mores >= 3 && exhaust.chain.last()["Iteration"] == 1 + get_mores as i64,
        "the exhaust cursor should be one record of 1 + {get_mores} batches: {:?}",
        exhaust.chain.records
    );
    Ok(())
}

/// The workload covers what the acceptance lists (so the test cannot pass on a thin oracle).
fn check_coverage(matched: &[Matched], records: &[Value]) -> Result<()> {
    let ops: Vec<&str> = matched.iter().map(|m| m.op.operation.as_str()).collect();
    for want in [
        "insert",
        "update",
        "delete",
        "find",
        "aggregate",
        "distinct",
        "findAndModify",
        "createIndexes",
        "drop",
        "count",
        "listIndexes",
        "mongowatchNoSuchCommand",
    ] {
        ensure!(ops.contains(&want), "no {want} operation was checked");
    }
    let has = |f: &dyn Fn(&Matched) -> bool| matched.iter().any(f);
    ensure!(
        has(
            &|m| m.op.commands.last().map(String::as_str) == Some("killCursors")
                && m.op.commands.len() >= 3
        ),
        "no cursor closed half-read (find, getMore, killCursors)"
    );
    ensure!(
        has(&|m| m.op.commands.iter().filter(|c| *c == "getMore").count() >= 2),
        "no cursor read to its end through several getMores"
    );
    ensure!(
        has(&|m| m.op.operation == "aggregate" && m.op.iteration >= 3),
        "no aggregate cursor read through getMores"
    );
    ensure!(
        has(&|m| m.op.error.as_ref().and_then(|e| e.code) == Some(11000)),
        "no duplicate-key error"
    );
    ensure!(
        has(&|m| m.op.error.as_ref().and_then(|e| e.code) == Some(59)),
        "no unknown-command error"
    );
    ensure!(
        has(&|m| m.op.upserted == Some(1) && m.op.operation == "update"),
        "no upsert"
    );
    ensure!(
        has(&|m| m.op.operation == "insert" && m.op.command["writeConcern"]["w"] == 0),
        "no unacknowledged (w:0) write"
    );
    for r in records {
        let op = r["Operation"].as_str().unwrap_or("");
        ensure!(
            !NOT_RECORDED.contains(&op),
            "a handshake/heartbeat became a record: {r}"
        );
    }
    Ok(())
}

/// The driver suite: a main workload and a victim SIGKILLed mid-cursor, both watched.
fn driver_suite(driver: Driver, kind: ServerKind, compressor: Option<&str>) -> Result<()> {
    let server = Server::start(kind)?;
    let uri = match compressor {
        Some(c) => format!("{}&compressors={c}", server.uri()),
        None => server.uri(),
    };
    driver_suite_on(driver, &server, &uri, compressor, None)
}

/// The driver suite against `server` reached by `uri`; every record must name `compressor`
/// (null for none) and `user` (null for none) as its Compression and User.
fn driver_suite_on(
    driver: Driver,
    server: &Server,
    uri: &str,
    compressor: Option<&str>,
    user: Option<&str>,
) -> Result<()> {
    let kind = server.kind();
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-audit-")
        .tempdir()?;
    let start = dir.path().join("start");
    let mut main = AuditProcess::spawn(driver, uri, "main", dir.path(), &start)?;
    let mut victim = AuditProcess::spawn(driver, uri, "victim", dir.path(), &start)?;
    let mut mw = Mongowatch::watch_pid(
        main.pid(),
        &[
            "--pid",
            &victim.pid().to_string(),
            "--timeout",
            &TIMEOUT_S.to_string(),
            "--stats",
        ],
    )?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    fs::write(&start, b"")?;
    // The victim: killed as soon as its cursor is open (well inside the idle timeout).
    let ready = victim.ready.clone();
    wait_file(&ready, &mut victim, Duration::from_secs(120))?;
    victim.guard.signal(libc::SIGKILL)?;
    let vstatus = victim
        .guard
        .wait_exit(Duration::from_secs(30))
        .context("the victim did not die")?;
    ensure!(!vstatus.success(), "the victim exited by itself: {vstatus}");
    let status = main
        .guard
        .wait_exit(Duration::from_secs(240))
        .with_context(|| main.stderr())?;
    ensure!(
        status.success(),
        "the main workload failed: {}",
        main.stderr()
    );
    let mstatus = mw.wait_exit(Duration::from_secs(60))?;
    ensure!(mstatus.success(), "mongowatch failed: {}", mw.stderr());
    let recs = mw.records()?;
    let st = mw.stats()?;
    let processes = [
        ProcessOracle {
            pid: main.pid(),
            ops: main.ops()?,
            killed: false,
        },
        ProcessOracle {
            pid: victim.pid(),
            ops: victim.ops()?,
            killed: true,
        },
    ];
    // Without a compressor every record must say null; with one, its name.
    let matched = match_records(&processes, &recs, Some(compressor))
        .with_context(|| format!("mongowatch stats: {st}"))?;
    check_held_cursor(&matched)?;
    check_coverage(&matched, &recs)?;
    if driver == Driver::Pymongo {
        check_moved_and_exhaust_cursors(&matched)?;
    }
    // Identity: the handshake's appname, the server's address, the authenticated user.
    let app_name = match driver {
        Driver::Pymongo => "mongowatch-audit-pymongo",
        Driver::Node => "mongowatch-audit-node",
    };
    let server_addr = server.addr().to_string();
    let user = json!(user);
    for r in &recs {
        ensure!(
            r["AppName"] == app_name && r["Server"] == server_addr.as_str() && r["User"] == user,
            "a record without AppName {app_name}, Server {server_addr} and User {user}: {r}"
        );
    }
    // The victim's open cursor: closed, one batch of 8.
    let vpid = victim.pid() as u64;
    let vfind = matched
        .iter()
        .find(|m| m.chain.last()["Pid"] == vpid && m.op.operation == "find")
        .context("the victim's find was not matched")?;
    let last = vfind.chain.last();
    ensure!(
        last["State"] == "closed" && last["Iteration"] == 1 && last["MatchedCount"] == 8,
        "the killed client's cursor: {last}"
    );
    ensure!(st["kernel"]["ring_full_events"] == 0, "events lost: {st}");
    eprintln!(
        "{} on {}{}: {}; {} records; stats {st}",
        driver.name(),
        kind.name(),
        compressor.map(|c| format!(" with {c}")).unwrap_or_default(),
        oracle_ops::describe_matches(&matched),
        recs.len()
    );
    Ok(())
}

#[test]
fn pymongo_records_match_the_command_listener() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    driver_suite(Driver::Pymongo, ServerKind::SecantusPy, None)
}

#[test]
fn node_records_match_monitor_commands() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::NodeDriver);
    driver_suite(Driver::Node, ServerKind::SecantusPy, None)
}

/// The user the authentication tests make, and its password.
const AUTH_USER: &str = "mw-dba";
const AUTH_PASSWORD: &str = "Pw-7f3e91c2-never-logged";

/// A secantusd-py that requires SCRAM-SHA-256 (`--auth`), with [`AUTH_USER`]: the user is made
/// before `--auth` (the server has no localhost exception), then the server is restarted with
/// it. Returns the server and a URI that logs in as that user.
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

/// Through SCRAM-SHA-256 logins, every record names the user, and no password or SASL
/// conversation reaches the records or mongowatch's diagnostics.
fn authenticated_suite(driver: Driver) -> Result<()> {
    let (server, uri) = server_with_auth()?;
    // Without credentials the server refuses: the login is real.
    let refused = Command::new(paths::venv_python())
        .args([
            "-c",
            "import sys, pymongo\n\
             pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000).t.t.find_one()\n",
        ])
        .arg(server.uri())
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        !refused.status.success(),
        "the --auth server answered a find without a login"
    );
    driver_suite_on(driver, &server, &uri, None, Some(AUTH_USER))
}

#[test]
fn pymongo_records_name_the_authenticated_user() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    authenticated_suite(Driver::Pymongo)
}

#[test]
fn node_records_name_the_authenticated_user() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo,
                 Need::NodeDriver);
    authenticated_suite(Driver::Node)
}

/// `--messages --message-bytes` over a login, a createUser and an updateUser: every message
/// keeps its line, the ones that carry credentials have `"Redacted": "credentials"` instead of
/// bytes, and no password or SCRAM message is anywhere in the output.
#[test]
fn forensic_bytes_never_carry_credentials() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    // The server lives to the end of the test.
    let (_server, uri) = server_with_auth()?;
    let (second, third) = ("Pw-second-5b0d", "Pw-third-a41c");
    let (wrapped, undecodable) = ("Pw-wrapped-93c1", "Pw-badcrc-07e2");
    // Then, on raw sockets: a createUser wrapped in an OP_QUERY `$query` (as legacy drivers
    // and mongos send commands), and a PLAIN saslStart whose OP_MSG checksum is wrong (it
    // cannot be decoded, so it cannot be shown free of credentials).
    let code = format!(
        r#"
import socket, struct, bson
from pymongo import MongoClient
c = MongoClient(sys.argv[1], appname="forensic-auth")
c.admin.command("createUser", "mw-second", pwd={second:?}, roles=["root"])
c.admin.command("updateUser", "mw-second", pwd={third:?})
c.forensic.t.insert_one({{"visible": "plain data"}})
host, port = c.address
c.close()

def exchange(msg):
    s = socket.create_connection((host, port))
    s.settimeout(5)
    s.sendall(msg)
    try:
        s.recv(1 << 16)
    except OSError:
        pass
    s.close()

query = bson.encode({{"$query": {{"createUser": "mw-wrapped", "pwd": {wrapped:?}, "roles": []}},
                      "$readPreference": {{"mode": "primary"}}}})
body = struct.pack("<i", 0) + b"admin.$cmd\0" + struct.pack("<ii", 0, -1) + query
exchange(struct.pack("<iiii", 16 + len(body), 7001, 0, 2004) + body)
sasl = bson.encode({{"saslStart": 1, "mechanism": "PLAIN",
                     "payload": bson.Binary(b"\0mw-second\0" + {undecodable:?}.encode()),
                     "$db": "admin"}})
body = struct.pack("<I", 1) + b"\0" + sasl + struct.pack("<I", 0)
exchange(struct.pack("<iiii", 16 + len(body), 7002, 0, 2013) + body)
"#
    );
    let mut login = GatedPython::spawn("python login app", &code, &[&uri])?;
    let mut mw = Mongowatch::watch_pid(login.pid(), &["--messages", "--message-bytes"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    login.release()?;
    let status = login.app.wait_exit(Duration::from_secs(60))?;
    ensure!(status.success(), "the login app failed: {status}");
    ensure!(
        mw.wait_exit(Duration::from_secs(30))?.success(),
        "mongowatch failed: {}",
        mw.stderr()
    );
    let lines = mw.records()?;
    let everything = format!("{}{}", mw.stdout(), mw.stderr());
    let mut wire = Vec::new();
    for l in &lines {
        if let Some(b) = l["Bytes"].as_str() {
            wire.extend(base64::engine::general_purpose::STANDARD.decode(b)?);
        }
    }
    let wire = String::from_utf8_lossy(&wire);
    for secret in [AUTH_PASSWORD, second, third, wrapped, undecodable, "n,,n="] {
        ensure!(
            !everything.contains(secret) && !wire.contains(secret),
            "{secret:?} reached mongowatch's output"
        );
    }
    let command = |name: &'static str| lines.iter().filter(move |l| l["Command"] == name);
    let redacted = |l: &&Value| l["Redacted"] == "credentials" && l.get("Bytes").is_none();
    for name in ["saslContinue", "createUser", "updateUser"] {
        ensure!(
            command(name).count() >= 1 && command(name).all(|l| redacted(&l)),
            "{name} lines should all be there, redacted: {lines:?}"
        );
    }
    // The answers of the SCRAM conversation are redacted too, the user's data is not.
    ensure!(
        lines
            .iter()
            .filter(|l| l["Direction"] == "reply")
            .any(|l| redacted(&l)),
        "no reply was redacted: {lines:?}"
    );
    let by_id = |id: i64| {
        lines
            .iter()
            .find(|l| l["RequestID"] == id && l["ResponseTo"] == 0)
    };
    ensure!(
        by_id(7001).is_some_and(|l| redacted(&l) && l["Command"] == "createUser"),
        "the wrapped createUser should be there, redacted: {lines:?}"
    );
    ensure!(
        by_id(7002).is_some_and(|l| l["Redacted"] == "undecoded" && l.get("Bytes").is_none()),
        "the saslStart with a bad checksum should be there, without bytes: {lines:?}"
    );
    let insert: Vec<&Value> = command("insert").collect();
    ensure!(
        insert.len() == 1 && insert[0]["Bytes"].is_string() && wire.contains("plain data"),
        "the insert should keep its bytes: {insert:?}"
    );
    Ok(())
}

fn compressed(compressor: &str) -> Result<()> {
    driver_suite(Driver::Pymongo, ServerKind::SecantusRs, Some(compressor))
}

#[test]
fn pymongo_zlib_records() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusRs, Need::Pymongo);
    compressed("zlib")
}

/// pymongo gets zstd from backports.zstd on Python < 3.14.
#[test]
fn pymongo_zstd_records() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusRs, Need::Pymongo,
        Need::PyModule("backports.zstd"));
    compressed("zstd")
}

/// pymongo needs python-snappy for snappy.
#[test]
fn pymongo_snappy_records() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusRs, Need::Pymongo,
        Need::PyModule("snappy"));
    compressed("snappy")
}

/// The Node driver with zlib (built into Node).
#[test]
fn node_zlib_records() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusRs, Need::NodeDriver);
    driver_suite(Driver::Node, ServerKind::SecantusRs, Some("zlib"))
}

/// The Node driver with snappy (the `snappy` package of tests/node). Its zstd needs
/// `@mongodb-js/zstd`, a native build this machine cannot fetch: pymongo covers zstd.
#[test]
fn node_snappy_records() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusRs, Need::NodeDriver);
    driver_suite(Driver::Node, ServerKind::SecantusRs, Some("snappy"))
}

/// mongosh running a script file: its records match the shell's own command monitoring.
/// mongosh probes the server on admin before the script runs (and before the script can
/// subscribe to the events), so mongowatch is asked for the workload's database only.
#[test]
fn mongosh_script_records_match_monitor_commands() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Mongosh);
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-audit-mongosh-")
        .tempdir()?;
    let start = dir.path().join("start");
    let oracle = dir.path().join("mongosh.oracle.jsonl");
    // A small shell wrapper holds mongosh back until mongowatch watches its PID: `exec` keeps
    // that PID for mongosh (and node under it).
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(
            "i=0; while [ ! -e \"$START\" ] && [ $i -lt 12000 ]; do sleep 0.01; i=$((i+1)); done; \
             exec \"$MONGOSH\" \"$URI\" --quiet --file \"$SCRIPT\"",
        )
        .env("START", &start)
        .env("MONGOSH", paths::mongosh())
        .env("URI", format!("{}&monitorCommands=true", server.uri()))
        .env("SCRIPT", paths::workloads_dir().join("audit_mongosh.js"))
        .env("AUDIT_OUT", &oracle)
        .env("AUDIT_DB", DB)
        .env("NODE_PATH", paths::node_modules())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.path().join("stdout"))?)
        .stderr(fs::File::create(dir.path().join("stderr"))?);
    let mut shell = ChildGuard::spawn("mongosh", &mut cmd)?;
    let pid = shell.pid();
    let mut mw = Mongowatch::watch_pid(pid, &["--db", DB, "--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    fs::write(&start, b"")?;
    let status = shell.wait_exit(Duration::from_secs(180))?;
    let out = fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
    ensure!(
        status.success(),
        "mongosh failed: {out}\n{}",
        fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
    );
    let summary: Value = out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("mongosh printed no summary")?;
    ensure!(
        summary["pid"] == pid,
        "mongosh ran under pid {} not {pid}",
        summary["pid"]
    );
    mw.wait_exit(Duration::from_secs(60))?;
    let recs = mw.records()?;
    let mut ops = oracle_ops::group_operations(&oracle_ops::read_events(&oracle)?)?;
    // The same filter on the oracle's side: a startup probe of the shell's (getParameter on
    // admin) can still be in flight when the script subscribes, and so be in the oracle.
    ops.retain(|o| o.db == DB);
    let processes = [ProcessOracle {
        pid,
        ops,
        killed: false,
    }];
    let matched = match_records(&processes, &recs, Some(None))?;
    for want in [
        "insert",
        "find",
        "aggregate",
        "distinct",
        "update",
        "delete",
        "findAndModify",
    ] {
        ensure!(
            matched.iter().any(|m| m.op.operation == want),
            "no {want} from mongosh was checked"
        );
    }
    ensure!(
        matched
            .iter()
            .any(|m| m.op.operation == "find" && m.chain.last()["Iteration"] == 3),
        "mongosh's find with batchSize 7 over 20 documents should take 3 round trips"
    );
    for r in &recs {
        ensure!(
            r["Driver"].as_str().is_some_and(|d| d.contains("mongosh")),
            "a mongosh record without the shell's driver name: {r}"
        );
    }
    eprintln!(
        "mongosh: {}; {} records",
        oracle_ops::describe_matches(&matched),
        recs.len()
    );
    Ok(())
}
