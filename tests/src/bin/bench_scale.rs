//! `bench-scale` (`cargo xtask bench scale`): the scale of watching (root; a benchmark, not a
//! timed test). Many watched processes, many open connections, many open cursors, idle
//! timeouts firing: what the daemon costs in memory and CPU, and how soon a process that
//! starts while mongowatch runs has its operations audited.
//!
//! - A server process (not watched) answers every `find` with a cursor that stays open (a
//!   fresh non-zero id, one document) and anything else with `{n: 1, ok: 1}`; one thread per
//!   connection, small stacks.
//! - A launcher process, watched with `mongowatch --pid <launcher> --timeout T`, starts
//!   `--processes` clients one every `--spawn-interval-ms` while mongowatch runs (mongowatch
//!   follows a watched process's children). Each client notes when its `main` began, opens
//!   `--conns` connections, sends `--inserts` inserts on the first at once, then `--cursors`
//!   finds on each connection (cursors left open), and holds everything open until the stop
//!   file appears, then exits (its connections close with it).
//! - The run holds until every client is done and `--hold-s` more have passed (the idle
//!   timeouts write their interim `timeout` records), then stops the clients.
//!
//! Checked: every operation is one WatchID of its Operation (inserts `final`, finds `closed` by
//! the exit, each first written `timeout` once it was idle `T` s); a record missing, extra or
//! in another state fails the run unless counted loss explains it (the kernel's counters, or
//! the daemon's: open operations evicted beyond its bound, records an output's full queue
//! dropped). Printed: one
//! JSON line with the daemon's CPU (cores, per second: median while holding (steady) and peak)
//! and RSS (at the end of the hold (steady), VmHWM (peak)), and the time from a client's start
//! to its first audited operation (median, p99, max), with how many of its operations came
//! before that first audited one (0 when nothing is missed at start).

use std::{
    collections::{BTreeMap, HashMap},
    env, fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};
use bson::doc;
use mongowatch_tests::{
    bench::{cpu_ticks, machine, raise_nofile, status_kib, ticks_per_s, wait_for_file},
    is_root,
    replay::read_msg,
    wire::op_msg,
    ChildGuard, Mongowatch, WireMessage,
};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
struct Params {
    processes: usize,
    conns: usize,
    cursors: usize,
    inserts: usize,
    spawn_interval_ms: f64,
    timeout_s: f64,
    hold_s: f64,
    require_no_loss: bool,
    mw_args: Vec<String>,
}

const USAGE: &str = "bench-scale [--processes N] [--conns PER_PROCESS] [--cursors PER_CONN] \
[--inserts PER_PROCESS] [--spawn-interval-ms MS] [--timeout S] [--hold-s S] \
[--require-no-loss] [--mw-arg ARG]...";

fn params(args: &[String]) -> Result<Params> {
    let mut p = Params {
        processes: 1000,
        conns: 10,
        cursors: 10,
        inserts: 5,
        spawn_interval_ms: 5.0,
        timeout_s: 5.0,
        hold_s: 10.0,
        require_no_loss: false,
        mw_args: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--processes" => p.processes = value()?.parse()?,
            "--conns" => p.conns = value()?.parse()?,
            "--cursors" => p.cursors = value()?.parse()?,
            "--inserts" => p.inserts = value()?.parse()?,
            "--spawn-interval-ms" => p.spawn_interval_ms = value()?.parse()?,
            "--timeout" => p.timeout_s = value()?.parse()?,
            "--hold-s" => p.hold_s = value()?.parse()?,
            "--require-no-loss" => p.require_no_loss = true,
            "--mw-arg" => p.mw_args.push(value()?.clone()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    ensure!(
        p.processes >= 1 && p.conns >= 1 && p.inserts >= 1,
        "--processes, --conns and --inserts >= 1"
    );
    ensure!(
        p.hold_s > p.timeout_s,
        "--hold-s must exceed --timeout: the timeouts fire while holding"
    );
    Ok(p)
}

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => server_main(&args[1..]),
        Some("launcher") => launcher_main(&args[1..]),
        Some("client") => client_main(&args[1..]),
        _ => {
            let p = params(&args)?;
            ensure!(is_root(), "bench-scale loads eBPF programs: run it as root");
            let r = run(&p)?;
            println!("{r}");
            ensure!(r["ok"] == true, "the run failed its checks: {r}");
            Ok(())
        }
    }
}

fn take_arg(args: &[String], name: &str) -> Result<String> {
    let i = args
        .iter()
        .position(|a| a == name)
        .with_context(|| format!("{name} is required"))?;
    args.get(i + 1)
        .cloned()
        .with_context(|| format!("{name} needs a value"))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------------------------------------
// Server role.

/// `server --port-file F`: listens on a loopback port, writes it to F, serves until killed.
fn server_main(args: &[String]) -> Result<()> {
    let port_file = take_arg(args, "--port-file")?;
    let nofile = raise_nofile(1 << 20);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let tmp = format!("{port_file}.tmp");
    fs::write(&tmp, l.local_addr()?.port().to_string())?;
    fs::rename(&tmp, &port_file)?;
    eprintln!("bench-scale server: open-file limit {nofile}");
    // Cursor ids: non-zero, distinct over the run, as a server makes them.
    let next_cursor = Arc::new(AtomicI64::new(0x5ca1_0000_0000));
    for s in l.incoming() {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors most likely: the client sees its connect fail and says so.
                eprintln!("bench-scale server: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let ids = next_cursor.clone();
        // Thousands of connections, each mostly idle: small stacks.
        let spawned = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            if let Err(e) = serve(s, &ids) {
                eprintln!("bench-scale server: {e:#}");
            }
        });
        if let Err(e) = spawned {
            eprintln!("bench-scale server: no thread for a connection: {e}");
        }
    }
    Ok(())
}

fn serve(mut s: TcpStream, ids: &AtomicI64) -> Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::new();
    let mut reply_id = 1 << 30;
    while read_msg(&mut s, &mut buf)? {
        let m = WireMessage {
            bytes: buf.clone(),
            first_byte_ns: 0,
            last_byte_ns: 0,
        };
        let request_id = m.request_id();
        let body = m.body().context("a request without a command")?;
        let reply = match body.keys().next().map(String::as_str) {
            Some("find") => doc! {"cursor": {"id": ids.fetch_add(1, Ordering::Relaxed),
            "ns": "bench.scale", "firstBatch": [{"_id": 1, "v": "x"}]}, "ok": 1.0},
            _ => doc! {"n": 1, "ok": 1.0},
        };
        reply_id += 1;
        let mut out = op_msg(reply_id, &reply);
        out[8..12].copy_from_slice(&request_id.to_le_bytes());
        s.write_all(&out)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Launcher role: the watched parent.

/// `launcher --dir D --port P --start-file F <params>`: after F appears, starts the clients
/// one every `--spawn-interval-ms`, then waits for them all.
fn launcher_main(args: &[String]) -> Result<()> {
    let dir = PathBuf::from(take_arg(args, "--dir")?);
    let port = take_arg(args, "--port")?;
    let start = PathBuf::from(take_arg(args, "--start-file")?);
    let p = params(&strip(args, &["--dir", "--port", "--start-file"]))?;
    while !start.exists() {
        thread::sleep(Duration::from_millis(2));
    }
    let exe = env::current_exe()?;
    let t0 = Instant::now();
    let mut children = Vec::new();
    for i in 0..p.processes {
        let due = t0 + Duration::from_secs_f64(i as f64 * p.spawn_interval_ms / 1000.0);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let child = Command::new(&exe)
            .arg("client")
            .args(["--port", &port])
            .arg("--out")
            .arg(dir.join(format!("client-{i}.json")))
            .arg("--stop-file")
            .arg(dir.join("stop"))
            .args(["--conns", &p.conns.to_string()])
            .args(["--cursors", &p.cursors.to_string()])
            .args(["--inserts", &p.inserts.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting client {i}"))?;
        children.push(child);
    }
    let mut failed = 0;
    for mut c in children {
        if !c.wait()?.success() {
            failed += 1;
        }
    }
    ensure!(failed == 0, "{failed} clients failed");
    Ok(())
}

fn strip(args: &[String], names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if names.contains(&a.as_str()) {
            it.next();
        } else {
            out.push(a.clone());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Client role: one watched process.

/// `client --port P --out F --stop-file S --conns N --cursors N --inserts N`.
fn client_main(args: &[String]) -> Result<()> {
    // Taken first: the process's start as near as it can see it.
    let start_ns = now_ns();
    let port: u16 = take_arg(args, "--port")?.parse()?;
    let out = take_arg(args, "--out")?;
    let stop = PathBuf::from(take_arg(args, "--stop-file")?);
    let n = |name: &str| -> Result<usize> { Ok(take_arg(args, name)?.parse()?) };
    let (conns, cursors, inserts) = (n("--conns")?, n("--cursors")?, n("--inserts")?);
    let mut id = 0;
    let mut buf = Vec::new();
    let mut round_trip = |s: &mut TcpStream, cmd: bson::Document| -> Result<u64> {
        id += 1;
        let sent = now_ns();
        s.write_all(&op_msg(id, &cmd))?;
        ensure!(read_msg(s, &mut buf)?, "the server closed");
        Ok(sent)
    };
    let mut socks = Vec::new();
    let mut sent_ns = Vec::new();
    for c in 0..conns {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connection {c} of {conns}"))?;
        s.set_nodelay(true)?;
        if c == 0 {
            for i in 0..inserts {
                // The collection names the insert's place: the first one audited says how
                // many came before it unseen.
                sent_ns.push(round_trip(
                    &mut s,
                    doc! {"insert": format!("scale{i}"), "documents": [{"_id": i as i64}],
                    "$db": "bench"},
                )?);
            }
        }
        socks.push(s);
    }
    for s in &mut socks {
        for _ in 0..cursors {
            round_trip(s, doc! {"find": "scale", "filter": {}, "$db": "bench"})?;
        }
    }
    fs::write(
        &out,
        json!({"pid": std::process::id(), "start_ns": start_ns, "insert_sent_ns": sent_ns})
            .to_string(),
    )?;
    while !stop.exists() {
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run.

/// RFC 3339 UTC with up to nanoseconds (`2026-11-24T15:29:00.123456Z`) -> ns since the epoch.
fn rfc3339_ns(s: &str) -> Option<u64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut ns: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        ns += i64::from(c.to_digit(10)? as u8) * 10i64.pow(8 - i as u32);
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs * 1_000_000_000 + ns).ok()
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

/// One sample of the daemon.
struct Sample {
    t: f64,
    ticks: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn run(p: &Params) -> Result<Value> {
    let machine = machine();
    let nofile = raise_nofile(1 << 16);
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-bench-scale-")
        .tempdir()?;
    let exe = env::current_exe()?;
    let port_file = dir.path().join("port");
    let mut server = ChildGuard::spawn(
        "bench-scale server",
        Command::new(&exe)
            .arg("server")
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("server.stderr"))?),
    )?;
    wait_for_file(&port_file, Duration::from_secs(30), &mut server)?;
    let port = fs::read_to_string(&port_file)?;
    let start = dir.path().join("start");
    let mut args = vec![
        "--processes".to_string(),
        p.processes.to_string(),
        "--conns".into(),
        p.conns.to_string(),
        "--cursors".into(),
        p.cursors.to_string(),
        "--inserts".into(),
        p.inserts.to_string(),
        "--spawn-interval-ms".into(),
        p.spawn_interval_ms.to_string(),
        "--timeout".into(),
        p.timeout_s.to_string(),
        "--hold-s".into(),
        p.hold_s.to_string(),
    ];
    args.extend(["--dir".into(), dir.path().display().to_string()]);
    args.extend(["--port".into(), port.clone()]);
    args.extend(["--start-file".into(), start.display().to_string()]);
    let mut launcher = ChildGuard::spawn(
        "bench-scale launcher",
        Command::new(&exe)
            .arg("launcher")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("clients.stderr"))?),
    )?;
    let records_path = dir.path().join("records.jsonl");
    let mut mw_args = vec![
        "--pid".to_string(),
        launcher.pid().to_string(),
        "--port".into(),
        port.clone(),
        "--timeout".into(),
        p.timeout_s.to_string(),
        "-o".into(),
        records_path.display().to_string(),
        "--stats".into(),
    ];
    mw_args.extend(p.mw_args.iter().cloned());
    let mut mw = Mongowatch::spawn(&mw_args)?;
    mw.wait_for_stderr("watching", Duration::from_secs(120))?;
    let mw_pid = mw.pid();
    let rss_idle_kib = status_kib(mw_pid, "VmRSS").unwrap_or(0);
    let t0 = Instant::now();
    fs::write(&start, b"")?;

    // Sample the daemon until every client has reported, then hold.
    let mut samples: Vec<Sample> = Vec::new();
    let sample = |samples: &mut Vec<Sample>| {
        if let (Some(ticks), Some(rss_kib), Some(hwm_kib)) = (
            cpu_ticks(mw_pid),
            status_kib(mw_pid, "VmRSS"),
            status_kib(mw_pid, "VmHWM"),
        ) {
            samples.push(Sample {
                t: t0.elapsed().as_secs_f64(),
                ticks,
                rss_kib,
                hwm_kib,
            });
        }
    };
    let spawn_s = p.processes as f64 * p.spawn_interval_ms / 1000.0;
    let limit = Duration::from_secs_f64(spawn_s * 10.0 + 600.0);
    let mut reported = 0;
    while reported < p.processes {
        ensure!(launcher.is_running(), "the launcher ended early: {}", {
            fs::read_to_string(dir.path().join("clients.stderr")).unwrap_or_default()
        });
        ensure!(mw.is_running(), "mongowatch ended early: {}", mw.stderr());
        ensure!(
            t0.elapsed() < limit,
            "{reported} of {} clients ready in {limit:?}",
            p.processes
        );
        sample(&mut samples);
        thread::sleep(Duration::from_millis(250));
        reported = (0..p.processes)
            .filter(|i| dir.path().join(format!("client-{i}.json")).exists())
            .count();
    }
    let t_ready = t0.elapsed().as_secs_f64();
    while t0.elapsed().as_secs_f64() < t_ready + p.hold_s {
        sample(&mut samples);
        thread::sleep(Duration::from_millis(250));
    }
    sample(&mut samples);
    let rss_hold_end_kib = samples.last().map_or(0, |s| s.rss_kib);
    let open_fds_server = fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    fs::write(dir.path().join("stop"), b"")?;
    let t_stop = t0.elapsed().as_secs_f64();
    while mw.is_running() {
        sample(&mut samples);
        ensure!(
            t0.elapsed() < limit,
            "mongowatch did not end within {limit:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
    let t_end = t0.elapsed().as_secs_f64();
    let peak_rss_kib = samples.iter().map(|s| s.hwm_kib).max().unwrap_or(0);
    let mw_status = mw.wait_exit(Duration::from_secs(5))?;
    ensure!(mw_status.success(), "mongowatch failed: {}", mw.stderr());
    let launcher_status = launcher.wait_exit(Duration::from_secs(60))?;
    let clients_err = fs::read_to_string(dir.path().join("clients.stderr")).unwrap_or_default();
    ensure!(
        launcher_status.success(),
        "the clients failed: {clients_err}"
    );
    drop(server);

    // CPU per second from the samples: (cores, at time).
    let hz = ticks_per_s();
    let mut per_s: Vec<(f64, f64)> = Vec::new();
    let mut base = 0;
    for i in 1..samples.len() {
        let dt = samples[i].t - samples[base].t;
        if dt >= 1.0 {
            let cores = (samples[i].ticks - samples[base].ticks) as f64 / hz / dt;
            per_s.push((samples[i].t, cores));
            base = i;
        }
    }
    let cores_in = |from: f64, to: f64| -> Vec<f64> {
        let mut v: Vec<f64> = per_s
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|(_, c)| *c)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let all = cores_in(0.0, f64::MAX);
    let spawning = cores_in(0.0, t_ready);
    // Holding: after the last client is ready; the timeouts fire in it, about `timeout_s`
    // after the clients' last operations, so the steady figure is the median.
    let holding = cores_in(t_ready + 1.0, t_stop);
    let after_timeouts = cores_in(t_ready + p.timeout_s + 2.0, t_stop);
    let cpu_total_s = samples
        .last()
        .zip(samples.first())
        .map_or(0.0, |(l, f)| (l.ticks - f.ticks) as f64 / hz);

    // The clients' reports and the records.
    let mut clients: HashMap<u64, (u64, Vec<u64>)> = HashMap::new();
    for i in 0..p.processes {
        let c: Value = serde_json::from_str(&fs::read_to_string(
            dir.path().join(format!("client-{i}.json")),
        )?)?;
        let sent: Vec<u64> = c["insert_sent_ns"]
            .as_array()
            .context("insert_sent_ns")?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        clients.insert(
            c["pid"].as_u64().context("pid")?,
            (c["start_ns"].as_u64().context("start_ns")?, sent),
        );
    }
    // WatchID -> (pid, Operation, states in order, StartTime, insert index).
    type Op = (u64, String, Vec<String>, u64, Option<usize>);
    let mut ops: HashMap<String, Op> = HashMap::new();
    let mut lines = 0u64;
    let f = fs::File::open(&records_path)?;
    for line in BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let r: Value = serde_json::from_str(&line)?;
        let id = r["WatchID"].as_str().context("WatchID")?.to_string();
        let e = ops.entry(id).or_insert_with(|| {
            (
                r["Pid"].as_u64().unwrap_or(0),
                r["Operation"].as_str().unwrap_or("?").to_string(),
                Vec::new(),
                r["StartTime"].as_str().and_then(rfc3339_ns).unwrap_or(0),
                r["Collection"]
                    .as_str()
                    .and_then(|c| c.strip_prefix("scale")?.parse().ok()),
            )
        });
        e.2.push(r["State"].as_str().unwrap_or("?").to_string());
    }
    // Per pid: operations by kind and how their records went.
    // Per pid: inserts, finds, and each insert's (StartTime, index).
    type PidOps = (u64, u64, Vec<(u64, usize)>);
    let mut by_pid: HashMap<u64, PidOps> = HashMap::new();
    let mut shapes: BTreeMap<String, u64> = BTreeMap::new();
    let mut unknown_pid = 0u64;
    for (pid, op, states, start, index) in ops.values() {
        if !clients.contains_key(pid) {
            unknown_pid += 1;
            continue;
        }
        let e = by_pid.entry(*pid).or_default();
        match op.as_str() {
            "insert" => {
                e.0 += 1;
                e.2.push((*start, index.unwrap_or(usize::MAX)));
            }
            "find" => e.1 += 1,
            _ => {}
        }
        *shapes
            .entry(format!("{op}:{}", states.join(",")))
            .or_default() += 1;
    }
    let want_finds = (p.conns * p.cursors) as u64;
    let want_inserts = p.inserts as u64;
    let (mut missing, mut extra) = (0u64, 0u64);
    let mut latency_ms: Vec<f64> = Vec::new();
    let mut missed_at_start: Vec<u64> = Vec::new();
    let mut own_ms: Vec<f64> = Vec::new();
    for (pid, (start_ns, sent)) in &clients {
        let (ins, finds, mut starts) = by_pid.remove(pid).unwrap_or_default();
        missing += want_inserts.saturating_sub(ins) + want_finds.saturating_sub(finds);
        extra += ins.saturating_sub(want_inserts) + finds.saturating_sub(want_finds);
        starts.sort_unstable();
        if let Some((first, _)) = starts.first() {
            latency_ms.push(first.saturating_sub(*start_ns) as f64 / 1e6);
            // The client's own part: from its start to sending its first insert.
            if let Some(s) = sent.first() {
                own_ms.push(s.saturating_sub(*start_ns) as f64 / 1e6);
            }
            // Inserts sent before the first one audited: mongowatch's part.
            let first_seen = starts.iter().map(|(_, i)| *i).min().unwrap_or(0);
            missed_at_start.push(first_seen.min(sent.len()) as u64);
        }
    }
    latency_ms.sort_by(f64::total_cmp);
    own_ms.sort_by(f64::total_cmp);
    missed_at_start.sort_unstable();
    // The expected shapes: an insert written once, final; a find written `timeout` while the
    // clients held (once per idle period) and then `closed` by their exit.
    let finds_timed_out = shapes
        .iter()
        .filter(|(k, _)| k.starts_with("find:timeout") && k.ends_with(",closed"))
        .map(|(_, n)| *n)
        .sum::<u64>();
    let wrong_shape: u64 = shapes
        .iter()
        .filter(|(k, _)| {
            !(k.as_str() == "insert:final"
                || (k.starts_with("find:timeout") && k.ends_with(",closed")))
        })
        .map(|(_, n)| *n)
        .sum();

    let stats = mw.stats()?;
    let k = &stats["kernel"];
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    let loss = num(&k["ring_full_events"])
        + num(&k["lifecycle_lost"])
        + num(&k["gap_events"])
        + num(&k["read_failures"])
        + num(&stats["stream"]["gaps"])
        + num(&stats["capture"]["ring_bytes_left_at_exit"]);
    // The daemon's own counted losses: open operations written `timeout` and forgotten
    // beyond its bound on open operations, records an output's full queue dropped.
    let audit = &stats["audit"];
    let evicted = num(&audit["ops"]["evicted"]);
    let dropped = num(&audit["records_dropped"]);
    let clean = missing == 0 && extra == 0 && wrong_shape == 0 && unknown_pid == 0;
    let counted = loss + evicted + dropped > 0;
    let ok = extra == 0 && unknown_pid == 0 && (clean || (counted && !p.require_no_loss));
    let kept = (!ok).then(|| {
        let _ = fs::copy(mw.stderr_path(), dir.path().join("mongowatch.stderr"));
        dir.keep().display().to_string()
    });
    let med = |v: &[f64]| percentile(v, 0.5);
    Ok(json!({
        "bench": "scale",
        "measured_under_contention": machine["contended"],
        "machine": machine,
        "processes": p.processes,
        "connections": p.processes * p.conns,
        "cursors": p.processes * p.conns * p.cursors,
        "inserts": p.processes * p.inserts,
        "timeout_s": p.timeout_s,
        "spawn_interval_ms": p.spawn_interval_ms,
        "open_file_limit": nofile,
        "server_open_fds": open_fds_server,
        "clients_ready_s": t_ready,
        "daemon_exit_after_stop_s": t_end - t_stop,
        "daemon_cpu_cores_steady": med(&holding),
        "daemon_cpu_cores_steady_after_timeouts": med(&after_timeouts),
        "daemon_cpu_cores_while_spawning": med(&spawning),
        "daemon_cpu_cores_peak_1s": all.last(),
        "daemon_cpu_s_total": cpu_total_s,
        // (seconds since the start, cores) about every second: where the CPU went.
        "daemon_cpu_cores_timeline": per_s
            .iter()
            .map(|(t, c)| [(t * 10.0).round() / 10.0, (c * 100.0).round() / 100.0])
            .collect::<Vec<_>>(),
        "phases_s": {"clients_ready": t_ready, "stop": t_stop, "daemon_exit": t_end},
        "daemon_rss_kib_idle": rss_idle_kib,
        "daemon_rss_kib_steady": rss_hold_end_kib,
        "daemon_rss_kib_peak": peak_rss_kib,
        "start_to_first_record_ms": {
            "median": med(&latency_ms),
            "p99": percentile(&latency_ms, 0.99),
            "max": latency_ms.last(),
            "processes": latency_ms.len(),
        },
        // How much of that was the client itself (start to its first insert sent: a loaded
        // machine, a server accepting thousands of connections).
        "start_to_first_insert_sent_ms": {
            "median": med(&own_ms),
            "p99": percentile(&own_ms, 0.99),
            "max": own_ms.last(),
        },
        "ops_before_first_record": {
            "median": percentile(&missed_at_start.iter().map(|x| *x as f64).collect::<Vec<_>>(), 0.5),
            "max": missed_at_start.last(),
        },
        "record_lines": lines,
        "operations_written": ops.len(),
        "records_missing": missing,
        "records_extra": extra,
        "records_of_unknown_pids": unknown_pid,
        "finds_timed_out_then_closed": finds_timed_out,
        "operations_by_record_states": shapes,
        "records_in_another_state": wrong_shape,
        "loss_counted": loss,
        "operations_evicted": evicted,
        "records_dropped": dropped,
        "daemon_audit": stats["audit"],
        "daemon_capture": stats["capture"],
        "ok": ok,
        "kept_dir": kept,
    }))
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ns;

    #[test]
    fn rfc3339_times_read_as_epoch_ns() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ns("2026-11-24T15:29:00.123456Z"),
            Some(1_795_534_140_123_456_000)
        );
        assert_eq!(
            rfc3339_ns("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(rfc3339_ns("not a time"), None);
    }
}
