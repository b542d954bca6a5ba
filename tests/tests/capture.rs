//! The capture path, end to end and as root: the real eBPF programs watch a real driver
//! talking to a real server through a recording proxy, and `mongowatch --messages` must report
//! exactly the messages the proxy saw cross the wire — none missing, none extra, every byte
//! equal. The proxy runs in this test process, which mongowatch does not watch.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use mongowatch_tests::{
    monotonic_ns, paths, skip_unless, ChildGuard, ConnectionRecord, Direction, Driver, Mongowatch,
    Need, RecordingProxy, Server, ServerKind, WorkloadSpec,
};
use serde_json::Value;

/// The acceptance workload's size.
const OPS: u32 = 10_000;
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(900);

/// One message as mongowatch reported it.
struct Captured {
    pid: u64,
    bytes: Vec<u8>,
}

/// mongowatch's lines grouped by (client address, direction), in output order.
fn captured(lines: &[Value]) -> Result<HashMap<(String, Direction), Vec<Captured>>> {
    let mut by_stream: HashMap<(String, Direction), Vec<Captured>> = HashMap::new();
    for line in lines {
        let client = line["Client"].as_str().context("Client")?.to_string();
        let dir = match line["Flow"].as_str() {
            Some("sent") => Direction::ClientToServer,
            Some("received") => Direction::ServerToClient,
            other => bail!("unexpected Flow {other:?} in {line}"),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line["Bytes"].as_str().context("Bytes (--message-bytes)")?)?;
        ensure!(
            bytes.len() as u64 == line["Length"].as_u64().unwrap_or(0),
            "Length disagrees with the bytes in {line}"
        );
        by_stream.entry((client, dir)).or_default().push(Captured {
            pid: line["Pid"].as_u64().unwrap_or(0),
            bytes,
        });
    }
    Ok(by_stream)
}

/// What a comparison found, for the test's report.
#[derive(Debug, Default)]
struct Match {
    connections: usize,
    messages: usize,
    bytes: usize,
    largest: usize,
}

/// Every message the proxy saw (from `from_ns` on, per connection) is in mongowatch's output
/// for that connection and direction, in order and byte for byte; nothing else is.
///
/// `from_ns`: None means the whole conversation must be there (mongowatch attached before the
/// first connect). Some(t) (attached to a process with open connections): each stream's
/// capture must be a contiguous tail of what the proxy saw, holding at least every message
/// whose first byte crossed the proxy after `t`.
fn compare(
    proxy: &[ConnectionRecord],
    lines: &[Value],
    pid: u32,
    from_ns: Option<u64>,
) -> Result<Match> {
    let mut by_stream = captured(lines)?;
    let mut m = Match::default();
    for conn in proxy {
        let client = conn
            .client_addr
            .context("proxy connection without a peer address")?
            .to_string();
        m.connections += 1;
        for dir in [Direction::ClientToServer, Direction::ServerToClient] {
            let truth = conn.messages(dir);
            let got = by_stream.remove(&(client.clone(), dir)).unwrap_or_default();
            let start = match from_ns {
                None => 0,
                Some(t) => {
                    let must = truth
                        .iter()
                        .position(|w| w.first_byte_ns > t)
                        .unwrap_or(truth.len());
                    // The capture may begin a little before `t` (the probes were attached
                    // already): where it begins is where its first message is in the truth.
                    let begin = got
                        .first()
                        .and_then(|g| truth.iter().position(|w| w.bytes == g.bytes))
                        .unwrap_or(must);
                    ensure!(
                        begin <= must,
                        "{client} {dir:?}: the capture starts at message {begin}, after message \
                         {must}, the first sent after mongowatch attached"
                    );
                    begin
                }
            };
            let want = &truth[start..];
            for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
                ensure!(
                    w.bytes == g.bytes,
                    "{client} {dir:?}: message {} differs (op {} len {} vs captured len {})",
                    start + i,
                    w.op_code(),
                    w.bytes.len(),
                    g.bytes.len()
                );
                ensure!(g.pid == pid as u64, "message attributed to pid {}", g.pid);
                m.bytes += w.bytes.len();
                m.largest = m.largest.max(w.bytes.len());
            }
            ensure!(
                want.len() == got.len(),
                "{client} {dir:?}: the proxy saw {} messages, mongowatch reported {} ({})",
                want.len(),
                got.len(),
                if got.len() < want.len() {
                    "missing"
                } else {
                    "extra"
                }
            );
            m.messages += want.len();
        }
    }
    let extra: Vec<_> = by_stream
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|((c, d), v)| format!("{c} {d:?}: {}", v.len()))
        .collect();
    ensure!(
        extra.is_empty(),
        "mongowatch reported messages on connections the proxy never saw: {extra:?}"
    );
    Ok(m)
}

/// Runs `driver`'s acceptance workload under `mongowatch --messages` and compares; with
/// `path`, on that capture path (`--capture-path`), else on the one mongowatch chooses.
fn byte_exact(driver: Driver, path: Option<&str>) -> Result<()> {
    let server = Server::start(ServerKind::SecantusPy)?;
    let proxy = RecordingProxy::start(server.addr())?;
    let mut workload = WorkloadSpec::new(driver, proxy.uri(), OPS)
        .gated()
        .spawn()?;
    let mut args = vec!["--messages", "--message-bytes", "--stats"];
    if let Some(path) = path {
        args.extend(["--capture-path", path]);
    }
    let mut mw = Mongowatch::watch_pid(workload.pid(), &args)?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    workload.release()?;
    let outcome = workload.wait(WORKLOAD_TIMEOUT)?;
    ensure!(outcome.status.success(), "the workload failed");
    // mongowatch exits by itself once the watched process is gone.
    let status = mw.wait_exit(Duration::from_secs(60))?;
    ensure!(status.success(), "mongowatch failed: {}", mw.stderr());
    proxy.wait_all_closed(Duration::from_secs(10))?;
    let lines = mw.records()?;
    let m = compare(&proxy.connections(), &lines, outcome.summary.pid, None)?;
    let stats = mw.stats()?;
    let used = stats["capture"]["path"].as_str().unwrap_or_default();
    ensure!(!used.is_empty(), "--stats names no capture path: {stats}");
    if let Some(path) = path {
        ensure!(used == path, "asked for capture path {path}, got {used}");
    }
    ensure!(
        mw.stderr().contains(&format!("capture_path={used}")),
        "the startup log names no capture path: {}",
        mw.stderr()
    );
    ensure!(
        stats["kernel"]["ring_full_events"] == 0,
        "events lost: {stats}"
    );
    ensure!(stats["stream"]["gaps"] == 0, "gaps: {stats}");
    ensure!(
        m.largest >= 5 * 1024 * 1024,
        "the workload has a >= 5 MB message; largest seen {}",
        m.largest
    );
    eprintln!(
        "{} on {used}: {} ops at {:.0} ops/s; {} connections, {} messages, {} bytes byte-identical \
         (largest {}); capture stats {stats}",
        driver.name(),
        outcome.summary.ops,
        outcome.summary.ops_per_sec.unwrap_or(0.0),
        m.connections,
        m.messages,
        m.bytes,
        m.largest
    );
    Ok(())
}

/// The byte-exact tests, on mongowatch's own choice (the socket tracepoints on a kernel of the
/// project's kind: 6.3 or newer, no kprobes or fentry) and on the syscall tracepoints forced,
/// the other path such a kernel offers; fentry and kprobes are proven in guests by
/// `cargo xtask kernels`.
macro_rules! byte_exact_tests {
    ($($name:ident: $driver:expr, $need:expr, $path:expr;)*) => {$(
        #[test]
        fn $name() -> Result<()> {
            skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, $need);
            byte_exact($driver, $path)
        }
    )*};
}

byte_exact_tests! {
    pymongo_capture_is_byte_exact: Driver::Pymongo, Need::Pymongo, None;
    node_capture_is_byte_exact: Driver::Node, Need::NodeDriver, None;
    pymongo_capture_is_byte_exact_on_syscalls: Driver::Pymongo, Need::Pymongo, Some("syscalls");
    node_capture_is_byte_exact_on_syscalls: Driver::Node, Need::NodeDriver, Some("syscalls");
}

/// A second process on the same server, not named by --pid, yields nothing.
#[test]
fn unwatched_process_yields_nothing() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let proxy = RecordingProxy::start(server.addr())?;
    // The watched workload goes through the proxy; the other one straight to the server.
    let mut watched = WorkloadSpec::new(Driver::Pymongo, proxy.uri(), 300)
        .gated()
        .db("watched")
        .spawn()?;
    let mut other = WorkloadSpec::new(Driver::Pymongo, server.uri(), 300)
        .gated()
        .db("other")
        .spawn()?;
    let mut mw = Mongowatch::watch_pid(watched.pid(), &["--messages", "--message-bytes"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    other.release()?;
    watched.release()?;
    let w = watched.wait(WORKLOAD_TIMEOUT)?;
    let o = other.wait(WORKLOAD_TIMEOUT)?;
    ensure!(
        w.status.success() && o.status.success(),
        "a workload failed"
    );
    mw.wait_exit(Duration::from_secs(60))?;
    proxy.wait_all_closed(Duration::from_secs(10))?;
    let lines = mw.records()?;
    ensure!(!lines.is_empty(), "the watched workload was not captured");
    for line in &lines {
        ensure!(
            line["Pid"] == w.summary.pid,
            "a message of another process: {line:.300}"
        );
        ensure!(
            line["Server"] != server.addr().to_string(),
            "a message to the server's own port (only the unwatched process talks to it): \
             {line:.300}"
        );
    }
    // And what was captured is exactly the watched process's conversation.
    compare(&proxy.connections(), &lines, w.summary.pid, None)?;
    Ok(())
}

/// Attaching to a process whose connections are already open works from the next message on.
#[test]
fn attach_to_open_connections() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let proxy = RecordingProxy::start(server.addr())?;
    let dir = tempfile::tempdir()?;
    let resume = dir.path().join("resume");
    let mut cmd = Command::new(paths::venv_python());
    cmd.arg(paths::workloads_dir().join("preopened.py"))
        .arg("--uri")
        .arg(proxy.uri())
        .arg("--resume-file")
        .arg(&resume)
        .arg("--ops")
        .arg("200")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut app = ChildGuard::spawn("preopened workload", &mut cmd)?;
    // Let it connect and talk before mongowatch exists.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while proxy
        .connections()
        .iter()
        .map(|c| c.messages(Direction::ClientToServer).len())
        .sum::<usize>()
        < 20
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "the workload never talked"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut mw = Mongowatch::watch_pid(app.pid(), &["--messages", "--message-bytes"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    let attached = monotonic_ns();
    std::fs::write(&resume, b"")?;
    let status = app
        .wait_timeout(Duration::from_secs(120))?
        .context("the workload did not finish")?;
    ensure!(status.success(), "the workload failed");
    mw.wait_exit(Duration::from_secs(60))?;
    proxy.wait_all_closed(Duration::from_secs(10))?;
    let lines = mw.records()?;
    let m = compare(&proxy.connections(), &lines, app.pid(), Some(attached))?;
    ensure!(
        m.messages >= 400,
        "200 operations after the attach should be 400+ messages, got {}",
        m.messages
    );
    Ok(())
}
