//! The capture test `cargo xtask kernels` runs inside each guest kernel (see xtask/src/kernels.rs).
//!
//! Self-contained (one static binary, no server, no driver): it plays both sides of sessions
//! recorded from real drivers (`mongowatch-user/tests/fixtures/*.mwrec`) over TCP loopback and
//! a unix socket, in one process (two threads) and across two (a fork), plus one large `writev`
//! of 1,024 iovecs, under `mongowatch --messages --message-bytes`, and checks that every
//! message of every connection end was reported byte for byte, none missing, none extra.
//!
//! `mongowatch-guest matrix MONGOWATCH` runs it on mongowatch's own choice of capture path,
//! then on each path the kernel offers, forced, and prints one line per run:
//! `PASS <release> <path> <messages>` or `FAIL <release> <reason>`. `mongowatch-guest play` is
//! the watched application.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;

const PYMONGO: &[u8] = include_bytes!("../../mongowatch-user/tests/fixtures/pymongo_plain.mwrec");
const NODE: &[u8] = include_bytes!("../../mongowatch-user/tests/fixtures/node_plain.mwrec");

const TCP_ADDR: &str = "127.0.0.1:27017";
const UNIX_PATH: &str = "/tmp/mongowatch-guest.sock";
/// The large message (6 MiB: a copy long enough to be interrupted on the way), and the iovecs
/// its `writev` is cut into (the kernel's UIO_MAXIOV).
const LARGE: usize = 6 << 20;
const IOVECS: usize = 1024;

/// Bytes one side writes.
struct Chunk {
    c2s: bool,
    data: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Unix,
}

struct Scenario {
    name: &'static str,
    transport: Transport,
    /// Server in a forked child rather than a thread.
    fork: bool,
    /// Each connection's chunks, played in order.
    conns: Vec<Vec<Chunk>>,
    /// Write chunks of `LARGE` bytes or more with one `writev` of `IOVECS` iovecs.
    writev: bool,
}

/// A recording's connections, each with its data chunks in order (format: see
/// mongowatch-user/tests/mwrec/mod.rs).
fn sessions(b: &[u8]) -> Result<Vec<Vec<Chunk>>> {
    ensure!(b.starts_with(b"MWREC1\n"), "not a recording");
    let mut conns: BTreeMap<u16, Vec<Chunk>> = BTreeMap::new();
    let mut p = 7;
    while p < b.len() {
        ensure!(p + 16 <= b.len(), "a chunk header cut short");
        let len = u32::from_le_bytes(b[p + 12..p + 16].try_into()?) as usize;
        ensure!(p + 16 + len <= b.len(), "a chunk cut short");
        let conn = u16::from_le_bytes([b[p + 2], b[p + 3]]);
        if b[p] == 0 && len > 0 {
            conns.entry(conn).or_default().push(Chunk {
                c2s: b[p + 1] == 0,
                data: b[p + 16..p + 16 + len].to_vec(),
            });
        }
        p += 16 + len;
    }
    Ok(conns.into_values().collect())
}

/// An OP_MSG: header, flag bits, one body section holding `doc`.
fn op_msg(request_id: i32, response_to: i32, doc: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + 1 + doc.len();
    let mut m = Vec::with_capacity(len);
    m.extend((len as i32).to_le_bytes());
    m.extend(request_id.to_le_bytes());
    m.extend(response_to.to_le_bytes());
    m.extend(2013i32.to_le_bytes());
    m.extend(0u32.to_le_bytes());
    m.push(0);
    m.extend(doc);
    m
}

/// `{insert: "big", $db: "test", payload: BinData(0, LARGE bytes)}` and its `{ok: 1.0}` reply.
fn large_exchange() -> Vec<Chunk> {
    let mut body = Vec::new();
    body.push(0x02);
    body.extend(b"insert\0");
    body.extend(4i32.to_le_bytes());
    body.extend(b"big\0");
    body.push(0x02);
    body.extend(b"$db\0");
    body.extend(5i32.to_le_bytes());
    body.extend(b"test\0");
    body.push(0x05);
    body.extend(b"payload\0");
    body.extend((LARGE as i32).to_le_bytes());
    body.push(0);
    body.extend((0..LARGE).map(|i| (i * 7 + i / 4096) as u8));
    let mut doc = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    doc.extend(body);
    doc.push(0);
    let mut ok = 17i32.to_le_bytes().to_vec();
    ok.push(0x01);
    ok.extend(b"ok\0");
    ok.extend(1.0f64.to_le_bytes());
    ok.push(0);
    vec![
        Chunk {
            c2s: true,
            data: op_msg(1, 0, &doc),
        },
        Chunk {
            c2s: false,
            data: op_msg(2, 1, &ok),
        },
    ]
}

fn scenarios() -> Result<Vec<Scenario>> {
    Ok(vec![
        Scenario {
            name: "pymongo over TCP, one process",
            transport: Transport::Tcp,
            fork: false,
            conns: sessions(PYMONGO)?,
            writev: false,
        },
        Scenario {
            name: "node over a unix socket, one process",
            transport: Transport::Unix,
            fork: false,
            conns: sessions(NODE)?,
            writev: false,
        },
        Scenario {
            name: "node over TCP, two processes",
            transport: Transport::Tcp,
            fork: true,
            conns: sessions(NODE)?,
            writev: false,
        },
        Scenario {
            name: "pymongo over a unix socket, two processes",
            transport: Transport::Unix,
            fork: true,
            conns: sessions(PYMONGO)?,
            writev: false,
        },
        Scenario {
            name: "a large writev over TCP, two processes",
            transport: Transport::Tcp,
            fork: true,
            conns: vec![large_exchange()],
            writev: true,
        },
    ])
}

trait Stream: Read + Write + std::os::fd::AsRawFd {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

/// Plays one end of a connection: writes this side's chunks, reads exactly the other's.
fn play_conn(s: &mut dyn Stream, chunks: &[Chunk], client: bool, writev: bool) -> Result<()> {
    for ch in chunks {
        if ch.c2s == client {
            if writev && ch.data.len() >= LARGE {
                write_vectored(s, &ch.data)?;
            } else {
                s.write_all(&ch.data)?;
            }
        } else {
            let mut buf = vec![0; ch.data.len()];
            s.read_exact(&mut buf)?;
            ensure!(buf == ch.data, "the other side's bytes arrived changed");
        }
    }
    Ok(())
}

/// One `writev` call of `IOVECS` iovecs (a blocking socket takes it whole); a short write's
/// rest goes out with plain writes.
fn write_vectored(s: &mut dyn Stream, data: &[u8]) -> Result<()> {
    let piece = data.len().div_ceil(IOVECS);
    let iov: Vec<libc::iovec> = data
        .chunks(piece)
        .map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        })
        .collect();
    // SAFETY: the iovecs point into `data`, alive for the call.
    let n = unsafe { libc::writev(s.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
    ensure!(n >= 0, "writev: {}", std::io::Error::last_os_error());
    s.write_all(&data[n as usize..])?;
    Ok(())
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn bind(t: Transport) -> Result<Self> {
        Ok(match t {
            Transport::Tcp => Listener::Tcp(TcpListener::bind(TCP_ADDR)?),
            Transport::Unix => {
                let _ = std::fs::remove_file(UNIX_PATH);
                Listener::Unix(UnixListener::bind(UNIX_PATH)?)
            }
        })
    }
    fn accept(&self) -> Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => Box::new(l.accept()?.0),
            Listener::Unix(l) => Box::new(l.accept()?.0),
        })
    }
}

fn connect(t: Transport) -> Result<Box<dyn Stream>> {
    Ok(match t {
        Transport::Tcp => Box::new(TcpStream::connect(TCP_ADDR)?),
        Transport::Unix => Box::new(UnixStream::connect(UNIX_PATH)?),
    })
}

fn serve(listener: &Listener, sc: &Scenario) -> Result<()> {
    for conn in &sc.conns {
        let mut s = listener.accept()?;
        play_conn(&mut *s, conn, false, sc.writev)?;
    }
    Ok(())
}

fn run_scenario(sc: &Scenario) -> Result<()> {
    let listener = Listener::bind(sc.transport)?;
    let client = || -> Result<()> {
        for conn in &sc.conns {
            let mut s = connect(sc.transport)?;
            play_conn(&mut *s, conn, true, sc.writev)?;
        }
        Ok(())
    };
    if sc.fork {
        // SAFETY: this process has one thread here; the child only plays and exits.
        let pid = unsafe { libc::fork() };
        ensure!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = match serve(&listener, sc) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{}: server: {e:#}", sc.name);
                    1
                }
            };
            // SAFETY: leaves the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        drop(listener);
        let played = client();
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        played?;
        ensure!(status == 0, "{}: the server process failed", sc.name);
    } else {
        std::thread::scope(|scope| -> Result<()> {
            let server = scope.spawn(|| serve(&listener, sc));
            let played = client();
            server
                .join()
                .map_err(|_| anyhow::anyhow!("server panicked"))??;
            played
        })?;
    }
    Ok(())
}

/// The watched application: waits for a byte on stdin, plays every scenario, says so on
/// stdout and waits for a second byte before it exits (mongowatch stops reading soon after the
/// last watched process exits, and a slow guest may still have events in the ring).
fn play() -> Result<()> {
    let mut gate = [0u8; 1];
    std::io::stdin().read_exact(&mut gate)?;
    for sc in scenarios()? {
        run_scenario(&sc).with_context(|| sc.name)?;
    }
    println!("played");
    std::io::stdout().flush()?;
    std::io::stdin().read_exact(&mut gate)?;
    Ok(())
}

/// What a run found.
struct Outcome {
    path: String,
    messages: usize,
    offered: Vec<String>,
}

const PATHS: [&str; 4] = ["sock-tracepoints", "fentry", "kprobes", "syscalls"];

/// One run under mongowatch; `path` forces a capture path.
fn run_once(mongowatch: &Path, path: Option<&str>, dir: &Path) -> Result<Outcome> {
    let me = std::env::current_exe()?;
    let mut app = Command::new(me)
        .arg("play")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the application")?;
    let label = path.unwrap_or("default");
    let out_path = dir.join(format!("mongowatch-{label}.jsonl"));
    let err_path = dir.join(format!("mongowatch-{label}.log"));
    let mut cmd = Command::new(mongowatch);
    cmd.args(["--pid", &app.id().to_string()])
        .args([
            "--messages",
            "--message-bytes",
            "--stats",
            "--stats-interval",
            "0.5",
        ])
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    if let Some(p) = path {
        cmd.args(["--capture-path", p]);
    }
    let mut mw = cmd.spawn().context("starting mongowatch")?;
    let log = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let start = Instant::now();
    while !log().contains("watching") {
        if let Some(status) = mw.try_wait()? {
            let _ = app.kill();
            bail!(
                "mongowatch exited ({status}) before watching: {}",
                last_line(&log())
            );
        }
        ensure!(
            start.elapsed() < Duration::from_secs(300),
            "mongowatch did not start watching"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut gate = app.stdin.take().context("stdin")?;
    gate.write_all(b"g")?;
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(app.stdout.take().context("stdout")?),
        &mut said,
    )?;
    ensure!(said.trim() == "played", "the application failed");
    // Until mongowatch has read everything: its output and the ring records it has read (its
    // --stats-interval lines) stop changing. It stops reading soon after the last watched
    // process exits, and a slow guest can hold a backlog in the ring for seconds.
    let start = Instant::now();
    let mut last = ((0, String::new()), Instant::now());
    while start.elapsed() < Duration::from_secs(300) {
        let size = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
        let log = log();
        let records = log
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["capture"]["ring_records"].to_string())
            .unwrap_or_default();
        if (size, records.clone()) != last.0 {
            last = ((size, records), Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    gate.write_all(b"g")?;
    drop(gate);
    let status = app.wait()?;
    ensure!(status.success(), "the application failed ({status})");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = mw.try_wait()? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = mw.kill();
            bail!("mongowatch did not exit after the application");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = log();
    ensure!(status.success(), "mongowatch failed: {}", last_line(&log));
    let stats: serde_json::Value = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no --stats line")
        .and_then(|l| Ok(serde_json::from_str(l)?))?;
    let used = stats["capture"]["path"].as_str().unwrap_or("?").to_string();
    if let Some(p) = path {
        ensure!(used == p, "asked for {p}, mongowatch used {used}");
    }
    let offered = offered(&log);
    let lines = std::fs::read_to_string(&out_path)?;
    let messages = compare(&lines).with_context(|| format!("on {used}"))?;
    ensure!(
        stats["stream"]["gaps"] == 0 && stats["kernel"]["ring_full_events"] == 0,
        "gaps or a full ring: {}",
        stats["kernel"]
    );
    Ok(Outcome {
        path: used,
        messages,
        offered,
    })
}

/// The capture paths mongowatch's startup log says the kernel offers.
fn offered(log: &str) -> Vec<String> {
    log.lines()
        .find(|l| l.contains("capture path chosen"))
        .and_then(|l| l.split("offered=[").nth(1))
        .and_then(|l| l.split(']').next())
        .map(|list| {
            PATHS
                .iter()
                .filter(|p| list.contains(&format!("\"{p}\"")))
                .map(|p| p.to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn last_line(log: &str) -> String {
    log.lines().last().unwrap_or("").to_string()
}

/// Every connection end's reported messages, concatenated per direction, must equal what was
/// played: each played connection shows up twice (its client end and its server end, both in
/// watched processes), with the directions swapped. Returns the messages reported.
fn compare(jsonl: &str) -> Result<usize> {
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for sc in scenarios()? {
        for conn in &sc.conns {
            let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
            for ch in conn {
                if ch.c2s { &mut c2s } else { &mut s2c }.extend(&ch.data);
            }
            want.push((c2s.clone(), s2c.clone()));
            want.push((s2c, c2s));
        }
    }
    let mut ends: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let mut messages = 0;
    for line in jsonl.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let bytes = match v["Bytes"].as_str() {
            Some(b) => base64::engine::general_purpose::STANDARD.decode(b)?,
            None => bail!("a message without its bytes ({})", v["Redacted"]),
        };
        let end = ends.entry(v["Conn"].as_u64().context("Conn")?).or_default();
        match v["Flow"].as_str() {
            Some("sent") => end.0.extend(bytes),
            Some("received") => end.1.extend(bytes),
            other => bail!("unexpected Flow {other:?}"),
        }
        messages += 1;
    }
    let mut got: Vec<_> = ends.into_values().collect();
    let unmatched = |a: &[(Vec<u8>, Vec<u8>)], b: &[(Vec<u8>, Vec<u8>)]| -> Vec<String> {
        a.iter()
            .filter(|x| !b.contains(x))
            .map(|x| format!("{}+{}", x.0.len(), x.1.len()))
            .collect()
    };
    ensure!(
        got.len() == want.len(),
        "{} connection ends reported, {} played (sent+received bytes played, not reported: \
         {:?}; reported, not played: {:?})",
        got.len(),
        want.len(),
        unmatched(&want, &got),
        unmatched(&got, &want)
    );
    want.sort();
    got.sort();
    for (w, g) in want.iter().zip(&got) {
        ensure!(
            w == g,
            "a connection end differs: played {}+{} bytes, reported {}+{}",
            w.0.len(),
            w.1.len(),
            g.0.len(),
            g.1.len()
        );
    }
    Ok(messages)
}

fn matrix(mongowatch: &Path) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let dir = std::env::temp_dir();
    let mut ok = true;
    let offered = match run_once(mongowatch, None, &dir) {
        Ok(o) => {
            println!("PASS {release} {}(default) {}", o.path, o.messages);
            o.offered
        }
        Err(e) => {
            println!("FAIL {release} default: {e:#}");
            ok = false;
            let log = std::fs::read_to_string(dir.join("mongowatch-default.log"));
            offered(&log.unwrap_or_default())
        }
    };
    for path in offered {
        match run_once(mongowatch, Some(&path), &dir) {
            Ok(o) => println!("PASS {release} {} {}", o.path, o.messages),
            Err(e) => {
                println!("FAIL {release} {path}: {e:#}");
                ok = false;
            }
        }
    }
    ok
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("play") => match play() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("play: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("matrix") if args.len() == 3 => {
            if matrix(Path::new(&args[2])) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("usage: mongowatch-guest matrix MONGOWATCH | play");
            ExitCode::from(2)
        }
    }
}
