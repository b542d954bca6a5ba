//! TLS, end to end and as root: drivers talk to `secantusd-py` over TLS (a throwaway
//! certificate made by the harness with the `openssl` command), and mongowatch reads the
//! plaintext from the OpenSSL copy each process maps (the system libssl for Python's `ssl` and
//! the server, the copy inside `node` for the Node driver).
//!
//! A recording proxy sees only ciphertext here, so the wire's ground truth is the other end:
//! the drivers' own command monitoring for the records, and the server's side of each
//! connection (watched in the same run) for the bytes of `--messages`.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use mongowatch_tests::{
    oracle_ops::{self, match_records, ProcessOracle},
    paths, skip_unless, ChildGuard, Driver, GatedPython, Mongowatch, Need, OracleEventKind, Server,
    ServerKind, WorkloadSpec,
};
use serde_json::Value;

const TIMEOUT_S: u64 = 2;
const HOLD_S: f64 = 3.0;

/// The audit workload (tests/workloads/audit_*), main role only, against `uri`.
struct AuditApp {
    guard: ChildGuard,
    oracle: PathBuf,
    stderr: PathBuf,
}

impl AuditApp {
    /// `overlay`: pymongo through PyOpenSSL (installed apart, put on PYTHONPATH).
    fn spawn(
        driver: Driver,
        uri: &str,
        dir: &Path,
        start: &Path,
        overlay: Option<Overlay>,
    ) -> Result<AuditApp> {
        let script = match driver {
            Driver::Pymongo => paths::workloads_dir().join("audit_pymongo.py"),
            Driver::Node => paths::workloads_dir().join("audit_node.js"),
        };
        let oracle = dir.join("main.oracle.jsonl");
        let stderr = dir.join("main.stderr");
        let mut cmd = driver.command(&script);
        if let Some(overlay) = overlay {
            cmd.env("PYTHONPATH", overlay.dir());
        }
        cmd.current_dir(dir)
            .args(["--uri", uri, "--db", "mongowatch_tls", "--role", "main"])
            .arg("--out")
            .arg(&oracle)
            .args(["--hold", &HOLD_S.to_string()])
            .arg("--ready-file")
            .arg(dir.join("main.ready"))
            .arg("--start-file")
            .arg(start)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("main.stdout"))?)
            .stderr(fs::File::create(&stderr)?);
        let guard = ChildGuard::spawn(format!("{} TLS audit workload", driver.name()), &mut cmd)?;
        Ok(AuditApp {
            guard,
            oracle,
            stderr,
        })
    }
}

/// The records of a TLS driver equal its command monitoring, operation by operation (cursors
/// with getMores on pooled connections, a held cursor, errors), and every one says TLS.
fn audit_over_tls(driver: Driver, overlay: Option<Overlay>) -> Result<()> {
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    let uri = server.uri();
    ensure!(uri.contains("tls=true"), "{uri}");
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-tls-")
        .tempdir()?;
    let start = dir.path().join("start");
    let mut app = AuditApp::spawn(driver, &uri, dir.path(), &start, overlay)?;
    let mut mw = Mongowatch::watch_pid(
        app.guard.pid(),
        &["--timeout", &TIMEOUT_S.to_string(), "--stats"],
    )?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    fs::write(&start, b"")?;
    let status = app
        .guard
        .wait_exit(Duration::from_secs(240))
        .with_context(|| fs::read_to_string(&app.stderr).unwrap_or_default())?;
    ensure!(
        status.success(),
        "the workload failed: {}",
        fs::read_to_string(&app.stderr).unwrap_or_default()
    );
    let mstatus = mw.wait_exit(Duration::from_secs(60))?;
    ensure!(mstatus.success(), "mongowatch failed: {}", mw.stderr());
    let records = mw.records()?;
    let stats = mw.stats()?;
    let oracle = ProcessOracle {
        pid: app.guard.pid(),
        ops: oracle_ops::group_operations(&oracle_ops::read_events(&app.oracle)?)?,
        killed: false,
    };
    let matched = match_records(&[oracle], &records, Some(None))
        .with_context(|| format!("mongowatch stats: {stats}"))?;
    ensure!(matched.len() >= 10, "too few operations: {}", matched.len());
    let server_addr = server.addr().to_string();
    for r in &records {
        ensure!(
            r["Tls"] == true && r["Server"] == server_addr.as_str(),
            "a record without Tls: true and Server {server_addr}: {r}"
        );
    }
    check_tls_stats(&stats)?;
    if let Some(overlay) = overlay {
        // The plaintext came from the OpenSSL copy PyOpenSSL uses (pymongo imports the
        // system one too, for its ssl module).
        ensure!(
            mw.stderr().contains(overlay.library()),
            "{} was not hooked: {}",
            overlay.library(),
            mw.stderr()
        );
    }
    eprintln!(
        "{} over TLS: {}; {} records; stats {stats}",
        driver.name(),
        oracle_ops::describe_matches(&matched),
        records.len()
    );
    Ok(())
}

/// Plaintext came from the TLS library, and nothing was warned about, lost or misread.
fn check_tls_stats(stats: &Value) -> Result<()> {
    let (k, s) = (&stats["kernel"], &stats["stream"]);
    ensure!(
        stats["tls"]["libraries_attached"].as_u64() >= Some(1)
            && k["tls_calls"].as_u64() > Some(0)
            && k["tls_unmapped"] == 0
            && k["tls_busy"] == 0
            && k["ring_full_events"] == 0
            && s["tls_plaintext_connections"].as_u64() >= Some(1)
            && s["tls_connections"] == 0
            && s["decode_errors"] == 0
            && s["gaps"] == 0,
        "TLS capture stats: {stats}"
    );
    Ok(())
}

/// pymongo through PyOpenSSL, installed apart from the venv and put on PYTHONPATH.
#[derive(Clone, Copy)]
enum Overlay {
    /// PyOpenSSL over cryptography's current wheel: OpenSSL 4.0 inside `_rust.abi3.so` (its
    /// `SSL_*` are local symbols, found in `.symtab`).
    PyOpenSsl,
    /// pymongo 4.8 and PyOpenSSL over cryptography 3.4.8: OpenSSL 1.1.1 inside
    /// `_openssl.abi3.so`.
    OpenSsl11,
}

impl Overlay {
    fn dir(self) -> PathBuf {
        match self {
            Overlay::PyOpenSsl => paths::pyopenssl_dir(),
            Overlay::OpenSsl11 => paths::openssl11_dir(),
        }
    }

    /// The file holding the OpenSSL copy that must be hooked.
    fn library(self) -> &'static str {
        match self {
            Overlay::PyOpenSsl => "_rust.abi3.so",
            Overlay::OpenSsl11 => "_openssl.abi3.so",
        }
    }

    /// pymongo takes PyOpenSSL from the overlay, and that PyOpenSSL runs on `openssl`.
    fn check(self, openssl: &str) -> Result<()> {
        let out = Command::new(paths::venv_python())
            .args([
                "-c",
                // pymongo 4.9+ says HAVE_PYSSL; 4.8 makes PyOpenSSL its `_ssl`.
                "import pymongo.ssl_support as s; from OpenSSL import SSL; \
                 assert getattr(s, 'HAVE_PYSSL', s._ssl.__name__ == 'pymongo.pyopenssl_context'); \
                 print(SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode())",
            ])
            .env("PYTHONPATH", self.dir())
            .output()?;
        let version = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && version.starts_with(openssl),
            "pymongo does not take PyOpenSSL over {openssl} from {}: {version} {}",
            self.dir().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

#[test]
fn pymongo_tls_records_match_the_command_listener() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    audit_over_tls(Driver::Pymongo, None)
}

/// The same through PyOpenSSL, whose OpenSSL is the copy inside cryptography's wheel.
#[test]
fn pyopenssl_tls_records_match_the_command_listener() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo, Need::PyOpenSsl);
    Overlay::PyOpenSsl.check("OpenSSL 4.")?;
    audit_over_tls(Driver::Pymongo, Some(Overlay::PyOpenSsl))
}

/// The same on OpenSSL 1.1.1 (no `SSL_write_ex2`; its own `SSL_read_ex`/`SSL_write_ex`).
#[test]
fn openssl_1_1_tls_records_match_the_command_listener() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::OpenSsl11);
    Overlay::OpenSsl11.check("OpenSSL 1.1.1")?;
    audit_over_tls(Driver::Pymongo, Some(Overlay::OpenSsl11))
}

#[test]
fn node_tls_records_match_monitor_commands() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::NodeDriver);
    audit_over_tls(Driver::Node, None)
}

/// One `--messages --message-bytes` line.
struct Line {
    pid: u64,
    client: String,
    sent: bool,
    request_id: i64,
    response_to: i64,
    command: Option<String>,
    bytes: Vec<u8>,
}

fn lines(values: &[Value]) -> Result<Vec<Line>> {
    values
        .iter()
        .map(|v| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["Bytes"].as_str().context("Bytes (--message-bytes)")?)?;
            ensure!(
                bytes.len() as u64 == v["Length"].as_u64().unwrap_or(0),
                "Length disagrees with the bytes in {v:.300}"
            );
            Ok(Line {
                pid: v["Pid"].as_u64().unwrap_or(0),
                client: v["Client"].as_str().unwrap_or("").to_string(),
                sent: v["Flow"] == "sent",
                request_id: v["RequestID"].as_i64().unwrap_or(0),
                response_to: v["ResponseTo"].as_i64().unwrap_or(0),
                command: v["Command"].as_str().map(str::to_string),
                bytes,
            })
        })
        .collect()
}

/// The pymongo workload over TLS (a request and a reply of 5.5 MB, many TLS records each;
/// cursors with getMores), with the client and the TLS server watched in one run:
/// - every command the driver's monitoring saw is a request line with its requestID and
///   name, and every reply it saw is a reply line; the rest are the driver's handshakes and
///   heartbeats;
/// - each connection's messages, as the client sent or received them, are byte for byte
///   those the server received or sent (two processes, two TLS libraries' plaintext).
#[test]
fn tls_messages_match_the_oracle_and_the_server_side() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    let mut app = WorkloadSpec::new(Driver::Pymongo, server.uri(), 120)
        .gated()
        .spawn()?;
    let server_pid = server_pid(&server)?;
    let mut mw = Mongowatch::watch_pid(
        app.pid(),
        &[
            "--pid",
            &server_pid.to_string(),
            "--messages",
            "--message-bytes",
            "--stats",
        ],
    )?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    app.release()?;
    let outcome = app.wait(Duration::from_secs(300))?;
    let client_pid = outcome.summary.pid as u64;
    // The server keeps running: wait until its side of the last reply is out, then stop.
    let expected = outcome.started().count();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = mw
            .records()?
            .iter()
            .filter(|v| v["Pid"] == server_pid && v["Flow"] == "sent")
            .count();
        if got >= expected {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the server side has {got} replies of {expected}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    mw.stop()?;
    let stats = mw.stats()?;
    check_tls_stats(&stats)?;
    let all = lines(&mw.records()?)?;
    ensure!(
        all.iter()
            .all(|l| l.pid == client_pid || l.pid == server_pid as u64),
        "a line of another process"
    );
    let client: Vec<&Line> = all.iter().filter(|l| l.pid == client_pid).collect();

    // The oracle, command by command.
    let requests: HashMap<i64, &Line> = client
        .iter()
        .filter(|l| l.sent)
        .map(|l| (l.request_id, *l))
        .collect();
    let replies: HashSet<i64> = client
        .iter()
        .filter(|l| !l.sent)
        .map(|l| l.response_to)
        .collect();
    let mut oracle_ids = HashSet::new();
    for ev in &outcome.oracle {
        match ev.event {
            OracleEventKind::Started => {
                oracle_ids.insert(ev.request_id);
                let line = requests
                    .get(&ev.request_id)
                    .with_context(|| format!("no request line for {ev:?}"))?;
                ensure!(
                    line.command.as_deref() == Some(ev.command_name.as_str()),
                    "request {} is {:?} on the wire, {} in the oracle",
                    ev.request_id,
                    line.command,
                    ev.command_name
                );
            }
            _ => ensure!(
                replies.contains(&ev.request_id),
                "no reply line for {ev:?}; lines by process and client: {}; stats {stats}",
                by_conn(&all)
            ),
        }
    }
    for l in client.iter().filter(|l| l.sent) {
        ensure!(
            oracle_ids.contains(&l.request_id)
                || matches!(
                    l.command.as_deref(),
                    Some("hello" | "ismaster" | "isMaster" | "endSessions")
                ),
            "a request the driver did not report: {:?} {}",
            l.command,
            l.request_id
        );
    }
    let largest = client.iter().map(|l| l.bytes.len()).max().unwrap_or(0);
    ensure!(
        largest >= 5 << 20,
        "no message of 5 MB or more (largest {largest})"
    );

    // The server's side of every connection, byte for byte.
    let side = |pid: u64, sent: bool| -> HashMap<String, Vec<&[u8]>> {
        let mut m: HashMap<String, Vec<&[u8]>> = HashMap::new();
        for l in all.iter().filter(|l| l.pid == pid && l.sent == sent) {
            m.entry(l.client.clone()).or_default().push(&l.bytes);
        }
        m
    };
    let (client_sent, client_received) = (side(client_pid, true), side(client_pid, false));
    let (server_received, server_sent) = (
        side(server_pid as u64, false),
        side(server_pid as u64, true),
    );
    ensure!(!client_sent.is_empty(), "no client connection");
    for (conn, msgs) in &client_sent {
        ensure!(
            server_received.get(conn) == Some(msgs),
            "connection {conn}: the client's requests differ from the server's"
        );
    }
    for (conn, msgs) in &client_received {
        ensure!(
            server_sent.get(conn) == Some(msgs),
            "connection {conn}: the client's replies differ from the server's"
        );
    }
    eprintln!(
        "{} lines, {} client connections, largest message {largest} bytes; stats {stats}",
        all.len(),
        client_sent.len()
    );
    Ok(())
}

/// Lines, requests and the largest message, by process and client address (for failures).
fn by_conn(all: &[Line]) -> String {
    let mut m: std::collections::BTreeMap<(u64, &str), (usize, usize, usize)> = Default::default();
    for l in all {
        let e = m.entry((l.pid, l.client.as_str())).or_default();
        e.0 += 1;
        e.1 += usize::from(l.sent);
        e.2 = e.2.max(l.bytes.len());
    }
    format!("{m:?}")
}

/// The pid of the server process listening on `server`'s port.
fn server_pid(server: &Server) -> Result<u32> {
    let out = Command::new("ss")
        .args(["-Htlnp", &format!("sport = :{}", server.port())])
        .output()
        .context("running ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("pid=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no listener pid for port {}: {text}", server.port()))
}

/// mongowatch attached after the app opened its TLS connections (handshakes done, pool busy)
/// audits them from the next message: each of the 100 inserts after the attach has a record,
/// marked TLS.
#[test]
fn tls_connections_opened_before_the_attach_are_audited() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let resume = dir.path().join("resume");
    let talked = dir.path().join("talked");
    let code = r#"
import pymongo
client = pymongo.MongoClient(sys.argv[1])
coll = client.mongowatch_tls.preopened
for i in range(20):
    coll.insert_one({"phase": "before", "i": i})
open(sys.argv[3], "w").close()
while not os.path.exists(sys.argv[2]):
    coll.insert_one({"phase": "before", "i": -1})
    time.sleep(0.02)
for i in range(100):
    coll.insert_one({"phase": "after", "i": i})
client.close()
"#;
    let uri = server.uri();
    let app = GatedPython::spawn(
        "preopened TLS app",
        code,
        &[
            &uri,
            &resume.display().to_string(),
            &talked.display().to_string(),
        ],
    )?;
    app.release()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !talked.exists() {
        ensure!(Instant::now() < deadline, "the app never talked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut mw = Mongowatch::watch_pid(app.pid(), &["--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    fs::write(&resume, b"")?;
    mw.wait_exit(Duration::from_secs(120))?;
    let records = mw.records()?;
    let stats = mw.stats()?;
    let inserts = records
        .iter()
        .filter(|r| r["Operation"] == "insert")
        .collect::<Vec<_>>();
    ensure!(
        inserts.len() >= 100,
        "{} insert records, wanted the 100 after the attach at least; stats {stats}",
        inserts.len()
    );
    ensure!(
        records.iter().all(|r| r["Tls"] == true),
        "a record without Tls: true"
    );
    ensure!(
        stats["stream"]["tls_connections"] == 0 && stats["kernel"]["tls_unmapped"] == 0,
        "{stats}"
    );
    Ok(())
}

/// A process that is not watched but uses the same libssl (hooked for the watched one) gives
/// no event: the kernel programs return at once for it.
#[test]
fn unwatched_tls_process_yields_nothing() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    // The app maps libssl when it imports pymongo, after mongowatch has started, and connects
    // at once: the kernel's report of the mapping gets the library hooked before the first
    // TLS call, so all 40 operations are read (a rescan every second would miss the first).
    let code = r#"
import pymongo
client = pymongo.MongoClient(sys.argv[1])
db = client[sys.argv[2]]
for i in range(int(sys.argv[3])):
    db.t.insert_one({"i": i})
    list(db.t.find({"i": i}))
client.close()
"#;
    let uri = server.uri();
    let watched = GatedPython::spawn("watched TLS app", code, &[&uri, "watched", "20"])?;
    let other = GatedPython::spawn("unwatched TLS app", code, &[&uri, "other", "200"])?;
    let mut mw = Mongowatch::watch_pid(watched.pid(), &["--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    other.release()?;
    watched.release()?;
    mw.wait_exit(Duration::from_secs(120))?;
    let mut other = other.app;
    ensure!(
        other.wait_exit(Duration::from_secs(120))?.success(),
        "the unwatched app failed"
    );
    let records = mw.records()?;
    let stats = mw.stats()?;
    // Its first insert included: read from its first TLS message.
    for op in ["insert", "find"] {
        let n = records.iter().filter(|r| r["Operation"] == op).count();
        ensure!(n == 20, "the watched app's 20 {op}s: {n} records; {stats}");
    }
    for r in &records {
        ensure!(
            r["Pid"] == watched.pid() && r["DB"] == "watched" && r["Tls"] == true,
            "a record of the unwatched process, or without Tls: {r}"
        );
    }
    check_tls_stats(&stats)?;
    Ok(())
}

/// The probes are attached for the watched process alone: the kernel writes its breakpoint
/// into that process's copy of `SSL_write`, and another process mapping the same libssl keeps
/// its own code, so it pays nothing for the sharing.
#[test]
fn only_the_watched_process_gets_breakpoints_in_libssl() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::Pymongo);
    // Maps libssl (importing ssl), says where its SSL_write is, then waits.
    let code = "import ctypes, ssl, sys, time\n\
        f = ctypes.CDLL('libssl.so.3').SSL_write\n\
        print(ctypes.cast(f, ctypes.c_void_p).value, flush=True)\n\
        time.sleep(600)\n";
    let spawn = |name: &str| -> Result<(ChildGuard, u64)> {
        let mut child = ChildGuard::spawn(
            name,
            Command::new(paths::venv_python())
                .args(["-c", code])
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        )?;
        let out = child.child_mut().stdout.take().context("stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        let addr = line
            .trim()
            .parse()
            .with_context(|| format!("{name}: {line:?}"))?;
        Ok((child, addr))
    };
    let (watched, at_w) = spawn("watched ssl importer")?;
    let (other, at_o) = spawn("unwatched ssl importer")?;
    let first_byte = |pid: u32, at: u64| -> Result<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8];
        fs::File::open(format!("/proc/{pid}/mem"))?.read_exact_at(&mut b, at)?;
        Ok(b[0])
    };
    let original = first_byte(other.pid(), at_o)?;
    ensure!(
        original != 0xcc,
        "SSL_write starts with int3 before any probe"
    );
    let mut mw = Mongowatch::watch_pid(watched.pid(), &["--stats"])?;
    mw.wait_for_stderr("TLS library hooked", Duration::from_secs(60))?;
    ensure!(
        first_byte(watched.pid(), at_w)? == 0xcc,
        "no breakpoint at the watched process's SSL_write"
    );
    ensure!(
        first_byte(other.pid(), at_o)? == original,
        "the unwatched process's SSL_write was changed"
    );
    drop(watched);
    mw.wait_exit(Duration::from_secs(30))?;
    ensure!(
        first_byte(other.pid(), at_o)? == original,
        "the unwatched process's SSL_write was changed"
    );
    Ok(())
}

/// A TLS app nobody gave a pid of, chosen by the kernel by its name (`--comm`), started after
/// mongowatch and connecting as soon as it has imported pymongo: its library is hooked when it
/// maps it, and the uprobes take it as selected, so every operation is read from the first.
#[test]
fn a_tls_app_selected_by_name_is_read_from_its_first_operation() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    let name = format!("mwtls-{:05}", std::process::id() % 100_000);
    // Named before it maps libssl (importing pymongo), as a program named at exec would be.
    let code = r#"
import ctypes
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)
import pymongo
client = pymongo.MongoClient(sys.argv[1])
t = client.mw_tls_comm.t
for i in range(5):
    t.insert_one({"i": i})
    t.find_one({"i": i})
client.close()
"#;
    let app = GatedPython::spawn("TLS app", code, &[&server.uri(), &name])?;
    let mut mw = Mongowatch::spawn(["--comm", &name, "--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    app.release()?;
    let pid = app.pid();
    let mut app = app.app;
    ensure!(
        app.wait_exit(Duration::from_secs(120))?.success(),
        "the app failed"
    );
    mw.wait_for_records(10, Duration::from_secs(30))?;
    mw.stop()?;
    let records = mw.records()?;
    let stats = mw.stats()?;
    for op in ["insert", "find"] {
        let n = records.iter().filter(|r| r["Operation"] == op).count();
        ensure!(n == 5, "5 {op}s: {n} records; {stats}");
    }
    for r in &records {
        ensure!(
            r["Pid"] == pid && r["Comm"] == name.as_str() && r["Tls"] == true,
            "a record not of the app, or without Tls: {r}"
        );
    }
    check_tls_stats(&stats)?;
    Ok(())
}

/// mongosh (Node's built-in OpenSSL, mapped only once the shell wrapper execs node: reported
/// by the kernel at the exec) running a script over TLS: its records match the shell's own command
/// monitoring, all Tls: true.
#[test]
fn mongosh_tls_records_match_monitor_commands() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Mongosh);
    const DB: &str = "mongowatch_tls_mongosh";
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-tls-mongosh-")
        .tempdir()?;
    let start = dir.path().join("start");
    let oracle = dir.path().join("mongosh.oracle.jsonl");
    // The wrapper holds mongosh back until mongowatch watches its PID; `exec` keeps the PID.
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
    let mut shell = ChildGuard::spawn("mongosh over TLS", &mut cmd)?;
    let pid = shell.pid();
    let mut mw = Mongowatch::watch_pid(pid, &["--db", DB, "--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    fs::write(&start, b"")?;
    let status = shell.wait_exit(Duration::from_secs(180))?;
    ensure!(
        status.success(),
        "mongosh failed: {}",
        fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
    );
    mw.wait_exit(Duration::from_secs(60))?;
    let records = mw.records()?;
    let stats = mw.stats()?;
    let mut ops = oracle_ops::group_operations(&oracle_ops::read_events(&oracle)?)?;
    ops.retain(|o| o.db == DB);
    let oracle = ProcessOracle {
        pid,
        ops,
        killed: false,
    };
    let matched = match_records(&[oracle], &records, Some(None))
        .with_context(|| format!("mongowatch stats: {stats}"))?;
    ensure!(matched.len() >= 5, "too few operations: {}", matched.len());
    for r in &records {
        ensure!(
            r["Tls"] == true && r["Driver"].as_str().is_some_and(|d| d.contains("mongosh")),
            "a record without Tls: true or mongosh's driver name: {r}"
        );
    }
    check_tls_stats(&stats)?;
    eprintln!(
        "mongosh over TLS: {}; {} records",
        oracle_ops::describe_matches(&matched),
        records.len()
    );
    Ok(())
}
