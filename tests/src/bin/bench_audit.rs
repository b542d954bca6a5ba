//! `bench-audit`: mongowatch's audit path under load (root; not a timed test).
//!
//! N pymongo client threads (`tests/workloads/bench_audit.py`, one process, watched with
//! `--pid`) run operations at full speed for a fixed time against SecantusDB, with
//! `mongowatch --pid P -o FILE --stats` attached. At the end:
//! - records written (lines of FILE) must equal the operations performed (the workload's own
//!   counters: each of its operations is one record by the contract);
//! - events lost (the kernel ring's `ring_full_events`, and capture gaps) must be 0;
//! - reported: ops/s, the daemon's CPU (utime+stime from /proc/<pid>/stat over the run, as a
//!   percentage of one core) and its peak RSS (VmHWM from /proc/<pid>/status, polled until it
//!   exits; the high-water mark only grows, so the last reading is the peak). VmHWM includes
//!   the kernel ring buffer's mapping (file-backed pages, most of an idle daemon's RSS), so
//!   the peak of RssAnon (the daemon's own heap, polled every 100 ms) is reported beside it.
//!
//! Parameters (arguments win over the environment):
//!   --clients N    | BENCH_CLIENTS   client threads (default 4)
//!   --seconds S    | BENCH_SECONDS   duration (default 60)
//!   --server rs|py | BENCH_SERVER    secantusd-rs (default when installed: faster) or -py
//!
//! Prints a table, then one JSON line; exits non-zero if records != operations or events
//! were lost.

use std::{
    env, fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use mongowatch_tests::{
    bench::{cpu_ticks, status_kib},
    is_root, paths, ChildGuard, Mongowatch, Server, ServerKind,
};
use serde_json::{json, Value};

struct Params {
    clients: u32,
    seconds: f64,
    server: ServerKind,
}

fn params() -> Result<Params> {
    let mut clients: u32 = env::var("BENCH_CLIENTS")
        .ok()
        .map_or(Ok(4), |v| v.parse())?;
    let mut seconds: f64 = env::var("BENCH_SECONDS")
        .ok()
        .map_or(Ok(60.0), |v| v.parse())?;
    let mut server = env::var("BENCH_SERVER").ok();
    let mut args = env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--clients" => clients = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--server" => server = Some(value()?),
            "-h" | "--help" => {
                println!("bench-audit [--clients N] [--seconds S] [--server rs|py]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(
        clients >= 1 && seconds > 0.0,
        "--clients >= 1 and --seconds > 0"
    );
    let server = match server.as_deref() {
        Some("rs") => ServerKind::SecantusRs,
        Some("py") => ServerKind::SecantusPy,
        None if ServerKind::SecantusRs.is_installed() => ServerKind::SecantusRs,
        None => ServerKind::SecantusPy,
        Some(other) => bail!("--server rs or py, not {other}"),
    };
    Ok(Params {
        clients,
        seconds,
        server,
    })
}

fn count_lines(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        serde_json::from_str::<Value>(line)
            .with_context(|| format!("record {} is not JSON: {line:.200}", i + 1))?;
        n += 1;
    }
    Ok(n)
}

fn main() -> Result<()> {
    let p = params()?;
    ensure!(is_root(), "bench-audit loads eBPF programs: run it as root");
    let server = Server::start(p.server)?;
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-bench-audit-")
        .tempdir()?;
    let start = dir.path().join("start");
    let summary_path = dir.path().join("summary.json");
    let records_path = dir.path().join("records.jsonl");
    let mut cmd = Command::new(paths::venv_python());
    cmd.arg(paths::workloads_dir().join("bench_audit.py"))
        .arg("--uri")
        .arg(server.uri())
        .arg("--clients")
        .arg(p.clients.to_string())
        .arg("--seconds")
        .arg(p.seconds.to_string())
        .arg("--summary")
        .arg(&summary_path)
        .arg("--start-file")
        .arg(&start)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("workload.stderr"))?);
    let mut app = ChildGuard::spawn("bench workload", &mut cmd)?;
    let mut mw = Mongowatch::watch_pid(
        app.pid(),
        &["-o", records_path.to_str().context("temp path")?, "--stats"],
    )?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    let mw_pid = mw.pid();
    let ticks0 = cpu_ticks(mw_pid).context("reading mongowatch's /proc stat")?;
    let t0 = Instant::now();
    fs::write(&start, b"")?;

    // Poll the daemon until it exits (it does once the workload has): CPU and VmHWM.
    let limit = Duration::from_secs_f64(p.seconds + 300.0);
    let (mut ticks, mut hwm, mut anon, mut t_last) = (ticks0, 0u64, 0u64, t0.elapsed());
    while mw.is_running() {
        if let (Some(t), Some(h)) = (cpu_ticks(mw_pid), status_kib(mw_pid, "VmHWM")) {
            ticks = t;
            hwm = hwm.max(h);
            anon = anon.max(status_kib(mw_pid, "RssAnon").unwrap_or(0));
            t_last = t0.elapsed();
        }
        if t0.elapsed() > limit {
            let _ = app.stop();
            bail!("the run did not end within {limit:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let app_status = app
        .wait_exit(Duration::from_secs(30))
        .context("the workload")?;
    let mw_status = mw.wait_exit(Duration::from_secs(5))?;
    let wl_stderr = fs::read_to_string(dir.path().join("workload.stderr")).unwrap_or_default();
    ensure!(app_status.success(), "the workload failed: {wl_stderr}");
    ensure!(mw_status.success(), "mongowatch failed: {}", mw.stderr());
    let summary: Value = serde_json::from_str(&fs::read_to_string(&summary_path)?)?;
    let stats = mw.stats()?;
    let ops = summary["ops"].as_u64().context("ops")?;
    let ops_per_sec = summary["ops_per_sec"].as_f64().unwrap_or(0.0);
    let records = count_lines(&records_path)?;
    let ring_full = stats["kernel"]["ring_full_events"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let gaps = stats["stream"]["gaps"].as_u64().unwrap_or(u64::MAX);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = (ticks - ticks0) as f64 / hz;
    let cpu_pct = 100.0 * cpu_s / t_last.as_secs_f64().max(1e-9);

    println!(
        "bench-audit: {} client threads, {} s, {}",
        p.clients,
        p.seconds,
        p.server.name()
    );
    println!("{:<34} {:>14}", "metric", "value");
    let row = |k: &str, v: String| println!("{k:<34} {v:>14}");
    row("operations (workload counters)", ops.to_string());
    row("records written", records.to_string());
    row("ops/s", format!("{ops_per_sec:.1}"));
    row("events lost (ring full)", ring_full.to_string());
    row("capture gaps", gaps.to_string());
    row("daemon CPU s (utime+stime)", format!("{cpu_s:.2}"));
    row("daemon CPU % of one core", format!("{cpu_pct:.1}"));
    row(
        "daemon peak RSS (VmHWM) MiB",
        format!("{:.1}", hwm as f64 / 1024.0),
    );
    row(
        "daemon peak RssAnon MiB (polled)",
        format!("{:.1}", anon as f64 / 1024.0),
    );
    let ok = records == ops && ring_full == 0 && gaps == 0;
    println!(
        "{}",
        json!({
            "bench": "audit",
            "clients": p.clients,
            "seconds": p.seconds,
            "server": p.server.name(),
            "ops": ops,
            "records": records,
            "ops_per_sec": ops_per_sec,
            "by_kind": summary["by_kind"],
            "events_lost": ring_full,
            "gaps": gaps,
            "daemon_cpu_s": cpu_s,
            "daemon_cpu_pct": cpu_pct,
            "daemon_peak_rss_kib": hwm,
            "daemon_peak_rss_anon_kib": anon,
            "ok": ok,
        })
    );
    ensure!(
        records == ops,
        "mongowatch wrote {records} records for {ops} operations"
    );
    ensure!(ring_full == 0 && gaps == 0, "events lost: {stats}");
    Ok(())
}
