//! `bench-replay` (`cargo xtask bench replay`): the replay load generator, with mongowatch
//! watching its clients (root; a benchmark, not a timed test).
//!
//! One server process and `--processes` client processes, each with `--workers` threads, replay
//! sessions (see `mongowatch_tests::replay`: the `.mwrec` fixtures recorded from real drivers,
//! `small` commands, `pipelined` small commands 16 in flight per connection, `large` multi-MB
//! cursor replies) over loopback TCP, unix sockets or both
//! (alternate client processes), at `--rate` messages/s in total (both directions count) or flat
//! out. `mongowatch --pid <each client> -o FILE --stats` watches the clients. At the end:
//! - every operation the replays sent (counted by the harness from the bytes, by the record
//!   contract's rules) must be exactly one record of that Operation, written `final`; each one
//!   missing is counted, and a missing or non-final record is only acceptable when the kernel's
//!   loss counters say events were lost (`loss_explained`); a record too many never is (a
//!   `getMore` record is one only where its opening's reply or request was lost, each
//!   explained by an opening of its own: `explain_get_mores`);
//! - one JSON line: offered and achieved messages/s and bytes/s, records expected/written,
//!   events and bytes lost, gaps, the daemon's CPU (cores: utime+stime over the run, startup
//!   excluded) and peak RSS (VmHWM, and peak RssAnon polled), the ring's high-water mark.
//!
//! `--find-knee` steps the rate up (x`--knee-factor`) from `--rate` until loss appears or the
//! generator cannot offer more, one full run per step, and prints the highest loss-free rate.
//! `--require-no-loss` (the CI smoke test) fails the run on any loss at all.
//!
//! `bench-replay sessions [--mix ...]` lists the sessions, their messages and the operations
//! each replay must become. Internal roles (the same binary): `bench-replay server ...` and
//! `bench-replay client ...`.

// The result line is one `json!` literal; its many fields need more macro depth.
#![recursion_limit = "256"]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    env, fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{atomic::AtomicI32, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use mongowatch_tests::{
    bench::{cpu_ticks, machine, status_kib, ticks_per_s, wait_for_file},
    is_root, paths,
    replay::{self, Pacer, Session, Socket},
    ChildGuard, Mongowatch,
};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
struct Params {
    mix: String,
    transport: String,
    processes: usize,
    workers: usize,
    seconds: f64,
    rate: Option<f64>,
    large_mb: f64,
    find_knee: bool,
    knee_factor: f64,
    require_no_loss: bool,
    /// Extra mongowatch arguments (repeatable `--mw-arg`).
    mw_args: Vec<String>,
    /// Stop mongowatch (SIGSTOP) this long, a third into the run: a daemon that gets no CPU,
    /// as on a machine whose CPUs are all busy, so that the ring fills on purpose.
    stall_daemon: Option<Duration>,
}

const USAGE: &str =
    "bench-replay [--mix fixtures,small,pipelined,large] [--transport tcp|unix|both] \
[--processes N] [--workers N] [--seconds S] [--rate MSGS_PER_S | --flat-out] [--large-mb MB] \
[--find-knee [--knee-factor F]] [--require-no-loss] [--mw-arg ARG]... [--stall-daemon-ms MS]";

fn params(args: &[String]) -> Result<Params> {
    let mut p = Params {
        mix: "fixtures,small,large".into(),
        transport: "both".into(),
        processes: 2,
        workers: 4,
        seconds: 10.0,
        rate: None,
        large_mb: 4.0,
        find_knee: false,
        knee_factor: 2.0,
        require_no_loss: false,
        mw_args: Vec::new(),
        stall_daemon: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--mix" => p.mix = value()?.clone(),
            "--transport" => p.transport = value()?.clone(),
            "--processes" => p.processes = value()?.parse()?,
            "--workers" => p.workers = value()?.parse()?,
            "--seconds" => p.seconds = value()?.parse()?,
            "--rate" => p.rate = Some(value()?.parse()?),
            "--flat-out" => p.rate = None,
            "--large-mb" => p.large_mb = value()?.parse()?,
            "--find-knee" => p.find_knee = true,
            "--knee-factor" => p.knee_factor = value()?.parse()?,
            "--require-no-loss" => p.require_no_loss = true,
            "--mw-arg" => p.mw_args.push(value()?.clone()),
            "--stall-daemon-ms" => p.stall_daemon = Some(Duration::from_millis(value()?.parse()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    ensure!(
        ["tcp", "unix", "both"].contains(&p.transport.as_str()),
        "--transport tcp, unix or both"
    );
    ensure!(
        p.processes >= 1 && p.workers >= 1 && p.seconds > 0.0,
        "--processes, --workers >= 1 and --seconds > 0"
    );
    ensure!(p.knee_factor > 1.0, "--knee-factor > 1");
    Ok(p)
}

fn fixtures_dir() -> PathBuf {
    paths::workspace_dir().join("mongowatch-user/tests/fixtures")
}

fn load_sessions(p: &Params) -> Result<Vec<Session>> {
    replay::sessions(&p.mix, &fixtures_dir(), (p.large_mb * 1048576.0) as usize)
}

/// The arguments both roles need to build the same sessions.
fn session_args(p: &Params) -> Vec<String> {
    vec![
        "--mix".into(),
        p.mix.clone(),
        "--large-mb".into(),
        p.large_mb.to_string(),
        "--workers".into(),
        p.workers.to_string(),
    ]
}

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => server_main(&args[1..]),
        Some("client") => client_main(&args[1..]),
        Some("sessions") => {
            // What each session of the mix holds and must become; needs no root.
            let p = params(&args[1..])?;
            for s in load_sessions(&p)? {
                println!(
                    "{}",
                    json!({"session": s.name, "connections": s.conns.len(),
                    "messages": s.messages, "bytes": s.bytes, "operations": s.expected})
                );
            }
            Ok(())
        }
        _ => {
            let p = params(&args)?;
            ensure!(
                is_root(),
                "bench-replay loads eBPF programs: run it as root"
            );
            if p.find_knee {
                find_knee(&p)
            } else {
                let result = run(&p)?;
                println!("{result}");
                ensure!(result["ok"] == true, "the run failed its checks: {result}");
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server role: listeners per (slot, session, connection), for tcp and unix; a thread per
// accepted connection. Runs until killed.

/// `server --dir D <session args>`: writes D/listeners.json once every listener is up.
fn server_main(args: &[String]) -> Result<()> {
    let (dir, rest) = take_arg(args, "--dir")?;
    let p = params(&rest)?;
    let dir = PathBuf::from(dir);
    let sessions = Arc::new(load_sessions(&p)?);
    // Request ids of the server's messages: far from the clients' (which start at 1).
    let ids = Arc::new(AtomicI32::new(1 << 30));
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for slot in 0..p.workers {
        let (mut t_slot, mut u_slot) = (Vec::new(), Vec::new());
        for (si, s) in sessions.iter().enumerate() {
            let (mut t_s, mut u_s) = (Vec::new(), Vec::new());
            for ci in 0..s.conns.len() {
                let t = TcpListener::bind("127.0.0.1:0")?;
                t_s.push(format!("tcp:{}", t.local_addr()?));
                let path = dir.join(format!("{slot}-{si}-{ci}.sock"));
                let u = UnixListener::bind(&path)?;
                u_s.push(format!("unix:{}", path.display()));
                for l in [Listener::Tcp(t), Listener::Unix(u)] {
                    let (sessions, ids) = (sessions.clone(), ids.clone());
                    thread::spawn(move || accept_loop(l, sessions, si, ci, ids));
                }
            }
            t_slot.push(t_s);
            u_slot.push(u_s);
        }
        tcp.push(t_slot);
        unix.push(u_slot);
    }
    let tmp = dir.join("listeners.json.tmp");
    fs::write(&tmp, json!({"tcp": tcp, "unix": unix}).to_string())?;
    fs::rename(&tmp, dir.join("listeners.json"))?;
    loop {
        thread::park();
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

fn accept_loop(
    l: Listener,
    sessions: Arc<Vec<Session>>,
    si: usize,
    ci: usize,
    ids: Arc<AtomicI32>,
) {
    loop {
        let sock: Box<dyn Socket> = match &l {
            Listener::Tcp(t) => match t.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                Err(e) => {
                    eprintln!("bench-replay server: accept: {e}");
                    continue;
                }
            },
            Listener::Unix(u) => match u.accept() {
                Ok((s, _)) => Box::new(s),
                Err(e) => {
                    eprintln!("bench-replay server: accept: {e}");
                    continue;
                }
            },
        };
        let (sessions, ids) = (sessions.clone(), ids.clone());
        thread::spawn(move || {
            let mut sock = sock;
            let s = &sessions[si];
            if let Err(e) = replay::serve(sock.as_mut(), &s.conns[ci], &ids) {
                // The client reports the failure too (a reply missing or wrong).
                eprintln!("bench-replay server: {} connection {ci}: {e:#}", s.name);
            }
        });
    }
}

fn take_arg(args: &[String], name: &str) -> Result<(String, Vec<String>)> {
    let i = args
        .iter()
        .position(|a| a == name)
        .with_context(|| format!("{name} is required"))?;
    let v = args
        .get(i + 1)
        .with_context(|| format!("{name} needs a value"))?;
    let mut rest = args.to_vec();
    rest.drain(i..i + 2);
    Ok((v.clone(), rest))
}

// ---------------------------------------------------------------------------------------------
// Client role: the watched processes.

/// `client --listeners FILE --kind tcp|unix --start-file F --summary OUT --first-session N
/// <params>`: waits for F, then each worker replays sessions (round robin from N + its index)
/// until `--seconds` have passed, always finishing the session it is in; writes the summary
/// (replays per session, messages, bytes).
fn client_main(args: &[String]) -> Result<()> {
    let (listeners, rest) = take_arg(args, "--listeners")?;
    let (kind, rest) = take_arg(&rest, "--kind")?;
    let (start_file, rest) = take_arg(&rest, "--start-file")?;
    let (summary, rest) = take_arg(&rest, "--summary")?;
    // Where this process's workers start in the session list: processes start at different
    // sessions, so a short run still replays every one.
    let (offset, rest) = take_arg(&rest, "--first-session")?;
    let offset: usize = offset.parse()?;
    let p = params(&rest)?;
    let sessions = Arc::new(load_sessions(&p)?);
    let listeners: Value = serde_json::from_str(&fs::read_to_string(&listeners)?)?;
    let addrs: Vec<Vec<Vec<String>>> = serde_json::from_value(listeners[&kind].clone())?;
    ensure!(
        addrs.len() == p.workers,
        "the listeners file has another --workers"
    );
    while !Path::new(&start_file).exists() {
        thread::sleep(Duration::from_millis(2));
    }
    let t0 = Instant::now();
    let ids = Arc::new(AtomicI32::new(1));
    let worker_rate = p.rate.map(|r| r / p.workers as f64);
    let seconds = Duration::from_secs_f64(p.seconds);
    let handles: Vec<_> = addrs
        .into_iter()
        .enumerate()
        .map(|(w, slot)| {
            let (sessions, ids) = (sessions.clone(), ids.clone());
            thread::spawn(move || -> Result<(Vec<u64>, u64, u64, f64)> {
                let mut done = vec![0u64; sessions.len()];
                let (mut msgs, mut bytes) = (0, 0);
                let mut pacer = Pacer::new(worker_rate);
                let mut buf = Vec::new();
                let mut k = offset + w;
                while t0.elapsed() < seconds {
                    let si = k % sessions.len();
                    let (m, b) =
                        replay::replay(&sessions[si], &slot[si], &ids, &mut pacer, &mut buf)
                            .with_context(|| {
                                format!("worker {w}, session {}", sessions[si].name)
                            })?;
                    done[si] += 1;
                    msgs += m;
                    bytes += b;
                    k += 1;
                }
                Ok((done, msgs, bytes, t0.elapsed().as_secs_f64()))
            })
        })
        .collect();
    let mut done = vec![0u64; sessions.len()];
    let (mut msgs, mut bytes, mut elapsed) = (0, 0, 0f64);
    for h in handles {
        let (d, m, b, e) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        for (t, x) in done.iter_mut().zip(d) {
            *t += x;
        }
        msgs += m;
        bytes += b;
        elapsed = elapsed.max(e);
    }
    let replays: BTreeMap<&str, u64> = sessions
        .iter()
        .zip(&done)
        .map(|(s, n)| (s.name.as_str(), *n))
        .collect();
    fs::write(
        summary,
        json!({"replays": replays, "messages": msgs, "bytes": bytes, "elapsed_s": elapsed})
            .to_string(),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run.

/// What the records file holds. An operation is a WatchID, and its last record its truth
/// (earlier ones can only be `timeout` snapshots, by the contract).
#[derive(Default)]
struct RecordCount {
    /// Lines written.
    total: u64,
    /// Operations (distinct WatchIDs) by Operation, `getMore` records explained by a lost
    /// opening left out (see [`explain_get_mores`]).
    by_op: BTreeMap<String, u64>,
    /// Operations whose last record is not `final`, and a few of them to show.
    not_final: u64,
    not_final_sample: Vec<Value>,
    operations: u64,
    /// `getMore` records explained: by a `closed` opening without a cursor id on the same
    /// connection (its reply was lost), or by a missing opening (its request was lost).
    get_more_by_closed_opening: u64,
    get_more_by_missing_opening: u64,
    /// The others (left in `by_op`, so counted extra), a few to show.
    get_more_unexplained_sample: Vec<Value>,
}

/// An operation's last record, the fields the accounting reads.
struct Op {
    op: String,
    state: String,
    pid: u64,
    client: String,
    start: String,
    cursor_id: Option<i64>,
    record: Value,
}

fn count_records(path: &Path) -> Result<(RecordCount, Vec<Op>)> {
    let mut c = RecordCount::default();
    let mut last: HashMap<String, Op> = HashMap::new();
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Value = serde_json::from_str(&line)
            .with_context(|| format!("record {} is not JSON: {line:.200}", i + 1))?;
        c.total += 1;
        let id = r["WatchID"]
            .as_str()
            .with_context(|| format!("record {} has no WatchID", i + 1))?;
        let s = |k: &str| r[k].as_str().unwrap_or("?").to_string();
        let op = Op {
            op: s("Operation"),
            state: s("State"),
            pid: r["Pid"].as_u64().unwrap_or(0),
            client: s("Client"),
            start: s("StartTime"),
            cursor_id: r["CursorId"].as_i64(),
            record: Value::Null,
        };
        last.insert(id.to_string(), Op { record: r, ..op });
    }
    c.operations = last.len() as u64;
    let mut ops: Vec<Op> = last.into_values().collect();
    ops.sort_by(|a, b| a.start.cmp(&b.start));
    for o in &ops {
        *c.by_op.entry(o.op.clone()).or_default() += 1;
        if o.state != "final" {
            c.not_final += 1;
            if c.not_final_sample.len() < 3 {
                c.not_final_sample.push(o.record.clone());
            }
        }
    }
    Ok((c, ops))
}

/// The record contract writes a getMore as a record of its own when its opening was not
/// seen: its reply was lost (the opening is then written `closed` with no CursorId, so the
/// cursor id was never learnt), or its request was (the opening is missing). Such a record is
/// right only where capture lost bytes; each must be explained by an opening of its own:
/// first a `closed` opening without a cursor id, earlier, on the same connection (`Client`,
/// or either of them `?`: a connection whose ends were not learnt, in the same process);
/// else one of the openings counted missing (`missing_openings`, the cursor-opening
/// operations the replays sent and no record shows). Explained getMores leave `by_op`; the
/// others stay there and count as extra.
fn explain_get_mores(c: &mut RecordCount, ops: &[Op], missing_openings: u64) {
    let mut used: HashSet<usize> = HashSet::new();
    let mut by_missing = 0;
    for g in ops.iter().filter(|o| o.op == "getMore") {
        let opening = (0..ops.len()).find(|&i| {
            let o = &ops[i];
            !used.contains(&i)
                && o.op != "getMore"
                && o.state == "closed"
                && o.cursor_id.is_none()
                && o.pid == g.pid
                // "?": the connection's ends were not learnt (its open event was lost).
                && (o.client == g.client || o.client == "?" || g.client == "?")
                && o.start <= g.start
        });
        if let Some(i) = opening {
            used.insert(i);
            c.get_more_by_closed_opening += 1;
        } else if by_missing < missing_openings {
            by_missing += 1;
        } else {
            if c.get_more_unexplained_sample.len() < 3 {
                c.get_more_unexplained_sample.push(g.record.clone());
            }
            continue;
        }
        if let Some(n) = c.by_op.get_mut("getMore") {
            *n -= 1;
        }
    }
    c.get_more_by_missing_opening = by_missing;
}

/// One full run: server, clients, mongowatch; returns the JSON result.
fn run(p: &Params) -> Result<Value> {
    let machine = machine();
    let sessions = load_sessions(p)?;
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-bench-replay-")
        .tempdir()?;
    let exe = env::current_exe()?;
    let mut server = ChildGuard::spawn(
        "bench-replay server",
        Command::new(&exe)
            .arg("server")
            .arg("--dir")
            .arg(dir.path())
            .args(session_args(p))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("server.stderr"))?),
    )?;
    let listeners = dir.path().join("listeners.json");
    wait_for_file(&listeners, Duration::from_secs(60), &mut server)?;
    let start = dir.path().join("start");
    let mut clients = Vec::new();
    for i in 0..p.processes {
        let kind = match p.transport.as_str() {
            "both" if i % 2 == 1 => "unix",
            "both" => "tcp",
            t => t,
        };
        let mut args = session_args(p);
        args.extend(["--seconds".into(), p.seconds.to_string()]);
        if let Some(r) = p.rate {
            args.extend(["--rate".into(), (r / p.processes as f64).to_string()]);
        }
        clients.push(ChildGuard::spawn(
            format!("bench-replay client {i}"),
            Command::new(&exe)
                .arg("client")
                .arg("--listeners")
                .arg(&listeners)
                .args(["--kind", kind])
                .arg("--start-file")
                .arg(&start)
                .arg("--summary")
                .arg(dir.path().join(format!("client-{i}.json")))
                .args(["--first-session", &(i * p.workers).to_string()])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(
                    dir.path().join(format!("client-{i}.stderr")),
                )?),
        )?);
    }
    let records_path = dir.path().join("records.jsonl");
    let mut mw_args: Vec<String> = Vec::new();
    for c in &clients {
        mw_args.extend(["--pid".into(), c.pid().to_string()]);
    }
    mw_args.extend([
        "-o".into(),
        records_path.display().to_string(),
        "--stats".into(),
    ]);
    mw_args.extend(p.mw_args.iter().cloned());
    let mut mw = Mongowatch::spawn(&mw_args)?;
    mw.wait_for_stderr("watching", Duration::from_secs(120))?;
    let mw_pid = mw.pid();
    let ticks0 = cpu_ticks(mw_pid).context("reading mongowatch's /proc stat")?;
    let t0 = Instant::now();
    fs::write(&start, b"")?;

    let limit = Duration::from_secs_f64(p.seconds * 5.0 + 300.0);
    let (mut ticks, mut hwm, mut anon) = (ticks0, 0u64, 0u64);
    let mut t_clients_done = None;
    // (when it was stopped, for how long) while a stall is under way.
    let mut stall = p.stall_daemon.map(|d| (None, d));
    while mw.is_running() {
        if let Some((stopped, d)) = &mut stall {
            let signal = match stopped {
                None if t0.elapsed().as_secs_f64() >= p.seconds / 3.0 => {
                    *stopped = Some(Instant::now());
                    libc::SIGSTOP
                }
                Some(at) if at.elapsed() >= *d => {
                    stall = None;
                    libc::SIGCONT
                }
                _ => 0,
            };
            // SAFETY: kill(2) on the daemon's pid, which is our child and still running.
            if signal != 0 {
                ensure!(
                    unsafe { libc::kill(mw_pid as i32, signal) } == 0,
                    "signalling mongowatch: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        if let (Some(t), Some(h)) = (cpu_ticks(mw_pid), status_kib(mw_pid, "VmHWM")) {
            ticks = t;
            hwm = hwm.max(h);
            anon = anon.max(status_kib(mw_pid, "RssAnon").unwrap_or(0));
        }
        if t_clients_done.is_none() && clients.iter_mut().all(|c| !c.is_running()) {
            t_clients_done = Some(t0.elapsed());
        }
        ensure!(t0.elapsed() < limit, "the run did not end within {limit:?}");
        thread::sleep(Duration::from_millis(100));
    }
    let drain_after_clients = t_clients_done.map(|t| (t0.elapsed() - t).as_secs_f64());
    let mw_status = mw.wait_exit(Duration::from_secs(5))?;
    ensure!(mw_status.success(), "mongowatch failed: {}", mw.stderr());
    let mut replays: BTreeMap<String, u64> = BTreeMap::new();
    let (mut msgs, mut bytes, mut elapsed) = (0u64, 0u64, 0f64);
    for (i, c) in clients.iter_mut().enumerate() {
        let status = c.wait_exit(Duration::from_secs(30))?;
        let err =
            fs::read_to_string(dir.path().join(format!("client-{i}.stderr"))).unwrap_or_default();
        ensure!(status.success(), "client {i} failed: {err}");
        let s: Value = serde_json::from_str(&fs::read_to_string(
            dir.path().join(format!("client-{i}.json")),
        )?)?;
        for (k, v) in s["replays"].as_object().context("replays")? {
            *replays.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        msgs += s["messages"].as_u64().unwrap_or(0);
        bytes += s["bytes"].as_u64().unwrap_or(0);
        elapsed = elapsed.max(s["elapsed_s"].as_f64().unwrap_or(0.0));
    }
    drop(server);

    // What the replays must have become.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for s in &sessions {
        let n = replays.get(&s.name).copied().unwrap_or(0);
        for (op, k) in &s.expected {
            *expected.entry(op.clone()).or_default() += k * n;
        }
    }
    let stats = mw.stats()?;
    let k = &stats["kernel"];
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    let events_lost = num(&k["ring_full_events"]);
    let bytes_lost = num(&k["ring_full_bytes"]);
    let lifecycle_lost = num(&k["lifecycle_lost"]);
    let gap_events = num(&k["gap_events"]);
    let read_failures = num(&k["read_failures"]);
    let gaps = num(&stats["stream"]["gaps"]);
    let left_at_exit = num(&stats["capture"]["ring_bytes_left_at_exit"]);
    let loss_counted =
        events_lost + lifecycle_lost + gap_events + read_failures + gaps + left_at_exit > 0;
    let (mut got, ops) = count_records(&records_path)?;
    if loss_counted {
        // Cursor-opening operations missing: a getMore of theirs may stand as its own record.
        let missing_openings = expected
            .iter()
            .filter(|(op, _)| op.as_str() != "getMore")
            .map(|(op, e)| e.saturating_sub(got.by_op.get(op).copied().unwrap_or(0)))
            .sum();
        explain_get_mores(&mut got, &ops, missing_openings);
    }
    let mut missing = 0u64;
    let mut extra = 0u64;
    let mut by_op = serde_json::Map::new();
    for op in expected
        .keys()
        .chain(got.by_op.keys())
        .collect::<HashSet<_>>()
    {
        let e = expected.get(op).copied().unwrap_or(0);
        let g = got.by_op.get(op).copied().unwrap_or(0);
        missing += e.saturating_sub(g);
        extra += g.saturating_sub(e);
        if e != g {
            by_op.insert(op.clone(), json!({"expected": e, "written": g}));
        }
    }
    let records_expected: u64 = expected.values().sum();
    // A missing record, or one closed early, is acceptable only where loss was counted.
    let loss_explained = (missing == 0 && got.not_final == 0) || loss_counted;
    let hz = ticks_per_s();
    let cpu_s = (ticks - ticks0) as f64 / hz;
    let elapsed = elapsed.max(1e-9);
    let no_loss = !loss_counted && missing == 0 && got.not_final == 0;
    let ok = extra == 0 && loss_explained && (!p.require_no_loss || no_loss);
    // A failed run keeps its records, mongowatch's stderr and the processes' logs to look at.
    let kept = (!ok).then(|| {
        let _ = fs::copy(mw.stderr_path(), dir.path().join("mongowatch.stderr"));
        dir.keep().display().to_string()
    });
    Ok(json!({
        "bench": "replay",
        "measured_under_contention": machine["contended"],
        "machine": machine,
        "mix": p.mix,
        "transport": p.transport,
        "processes": p.processes,
        "workers_per_process": p.workers,
        "seconds": p.seconds,
        "large_reply_mb": p.large_mb,
        "stall_daemon_ms": p.stall_daemon.map(|d| d.as_millis() as u64),
        "replays": replays,
        "offered_msgs_per_s": p.rate,
        "achieved_msgs_per_s": msgs as f64 / elapsed,
        "achieved_bytes_per_s": bytes as f64 / elapsed,
        "messages": msgs,
        "bytes": bytes,
        "records_expected": records_expected,
        "records_written": got.operations,
        "record_lines": got.total,
        "records_missing": missing,
        "records_extra": extra,
        "records_not_final": got.not_final,
        "get_more_records_explained": {
            "by_closed_opening": got.get_more_by_closed_opening,
            "by_missing_opening": got.get_more_by_missing_opening,
            "unexplained_sample": got.get_more_unexplained_sample,
        },
        "not_final_sample": got.not_final_sample,
        "mismatch_by_operation": by_op,
        "events_lost": events_lost,
        "bytes_lost": bytes_lost,
        "lifecycle_events_lost": lifecycle_lost,
        "gap_events": gap_events,
        "read_failures": read_failures,
        "gaps": gaps,
        "ring_bytes_left_at_exit": left_at_exit,
        "loss_explained": loss_explained,
        "daemon_cpu_cores": cpu_s / elapsed,
        "daemon_cpu_s": cpu_s,
        "daemon_exit_after_clients_s": drain_after_clients,
        "daemon_peak_rss_kib": hwm,
        "daemon_peak_rss_anon_kib": anon,
        "ring_high_water_bytes": stats["capture"]["ring_high_water_bytes"],
        "ring_size_bytes": stats["capture"]["ring_size_bytes"],
        // What the daemon made of the processes and the pairs: where a record went missing.
        "daemon_capture": stats["capture"],
        "daemon_pairing": stats["wire"]["pairing"],
        "daemon_late_connections": stats["stream"]["late_connections"],
        "ok": ok,
        "kept_dir": kept,
    }))
}

/// Steps the rate up until loss appears or the generator falls short of the offered rate.
fn find_knee(p: &Params) -> Result<()> {
    let mut rate = p.rate.unwrap_or(1000.0);
    let mut best: Option<Value> = None;
    let mut first_loss: Option<Value> = None;
    let mut steps = 0;
    loop {
        steps += 1;
        let mut step = p.clone();
        step.rate = Some(rate);
        let r = run(&step)?;
        println!("{r}");
        // Loss, or a record missing or closed early without it (a defect the run also flags):
        // either way this rate is past what is loss-free.
        let lost = [
            "events_lost",
            "records_missing",
            "records_not_final",
            "gaps",
            "records_extra",
        ]
        .iter()
        .map(|k| r[*k].as_u64().unwrap_or(0))
        .sum::<u64>();
        let achieved = r["achieved_msgs_per_s"].as_f64().unwrap_or(0.0);
        if lost > 0 {
            first_loss = Some(r);
            break;
        }
        best = Some(r);
        if achieved < 0.8 * rate || steps >= 12 {
            // The generator (or the machine) cannot offer more: the knee is beyond it.
            break;
        }
        rate *= p.knee_factor;
    }
    let summary = json!({
        "bench": "replay-knee",
        "measured_under_contention": machine()["contended"],
        "mix": p.mix,
        "transport": p.transport,
        "highest_loss_free": best.as_ref().map(|b| json!({
            "offered_msgs_per_s": b["offered_msgs_per_s"],
            "achieved_msgs_per_s": b["achieved_msgs_per_s"],
            "achieved_bytes_per_s": b["achieved_bytes_per_s"],
            "daemon_cpu_cores": b["daemon_cpu_cores"],
            "ring_high_water_bytes": b["ring_high_water_bytes"],
        })),
        "first_loss": first_loss.as_ref().map(|b| json!({
            "offered_msgs_per_s": b["offered_msgs_per_s"],
            "achieved_msgs_per_s": b["achieved_msgs_per_s"],
            "events_lost": b["events_lost"],
            "records_missing": b["records_missing"],
            "records_not_final": b["records_not_final"],
            "loss_explained": b["loss_explained"],
            "daemon_cpu_cores": b["daemon_cpu_cores"],
        })),
        "loss_reached": first_loss.is_some(),
        "ring_size_bytes": best.as_ref().or(first_loss.as_ref()).map(|b| b["ring_size_bytes"].clone()),
    });
    println!("{summary}");
    Ok(())
}
