//! `bench-compare` (`cargo xtask bench compare`): the same pymongo workload plain, with
//! pymongo's CommandListener, with pymongowatch, and under mongowatch, side by side (root; a
//! benchmark, not a timed test).
//!
//! `tests/workloads/bench_compare.py` runs in the compare venv (`<cache>/venv-compare`, pymongo
//! 4.8 + pymongowatch, tests/requirements-compare.txt; `cargo xtask bench compare` installs it)
//! against a fresh secantusd-rs per run (a server reused across runs slows as its data grows,
//! which would favour whichever side runs first). The four modes alternate in every round, in a
//! rotated order. Reported per mode, medians over the rounds: ops/s and its ratio to plain, the
//! application's own CPU per operation (user + system from the process itself, over its
//! operations only). Under mongowatch also: the daemon's CPU per operation at steady state
//! (from the release of the gated workload to its end, startup excluded), its events lost, and
//! separately its idle CPU per second (watching a sleeping process).
//!
//! `--rounds N` (default 4), `--ops N` (default 3000). Prints a table and one JSON line.

use std::{
    env, fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use mongowatch_tests::{
    bench::{cpu_ticks, machine, median, ticks_per_s},
    is_root, paths, ChildGuard, Mongowatch, Server, ServerKind,
};
use serde_json::{json, Value};

const MODES: [&str; 4] = ["plain", "listener", "pymongowatch", "mongowatch"];

fn python() -> std::path::PathBuf {
    paths::cache_dir().join("venv-compare/bin/python")
}

struct RunResult {
    summary: Value,
    /// Under mongowatch: daemon CPU seconds over the operations, and events lost.
    daemon: Option<(f64, u64)>,
}

fn one_run(mode: &str, ops: u32) -> Result<RunResult> {
    let server = Server::start(ServerKind::SecantusRs)?;
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-bench-compare-")
        .tempdir()?;
    let start = dir.path().join("start");
    let summary_path = dir.path().join("summary.json");
    let py_mode = if mode == "mongowatch" { "plain" } else { mode };
    let mut cmd = Command::new(python());
    cmd.arg(paths::workloads_dir().join("bench_compare.py"))
        .args(["--uri", &server.uri(), "--mode", py_mode])
        .args(["--ops", &ops.to_string()])
        .arg("--summary")
        .arg(&summary_path)
        .arg("--start-file")
        .arg(&start)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("workload.stderr"))?);
    let mut app = ChildGuard::spawn(format!("compare workload ({mode})"), &mut cmd)?;
    let mut mw = None;
    if mode == "mongowatch" {
        let mut m = Mongowatch::watch_pid(app.pid(), &["-o", "/dev/null", "--stats"])?;
        m.wait_for_stderr("watching", Duration::from_secs(120))?;
        mw = Some(m);
    }
    let ticks0 = mw.as_ref().and_then(|m| cpu_ticks(m.pid()));
    fs::write(&start, b"")?;
    // Poll the daemon's CPU until the workload ends: the last reading before it exits is the
    // steady-state total (the daemon's shutdown is not counted).
    let mut ticks = ticks0;
    let deadline = Instant::now() + Duration::from_secs(900);
    while app.is_running() {
        if let Some(m) = &mw {
            ticks = cpu_ticks(m.pid()).or(ticks);
        }
        ensure!(Instant::now() < deadline, "the {mode} run did not end");
        thread::sleep(Duration::from_millis(50));
    }
    let status = app.wait_exit(Duration::from_secs(30))?;
    let err = fs::read_to_string(dir.path().join("workload.stderr")).unwrap_or_default();
    ensure!(status.success(), "the {mode} workload failed: {err}");
    let summary: Value = serde_json::from_str(&fs::read_to_string(&summary_path)?)?;
    let daemon = match mw.as_mut() {
        None => None,
        Some(m) => {
            m.wait_exit(Duration::from_secs(60))?;
            let stats = m.stats()?;
            let lost = stats["kernel"]["ring_full_events"]
                .as_u64()
                .unwrap_or(u64::MAX);
            let cpu = (ticks.unwrap_or(0) - ticks0.unwrap_or(0)) as f64 / ticks_per_s();
            Some((cpu, lost))
        }
    };
    Ok(RunResult { summary, daemon })
}

/// The daemon's CPU per second while it watches a sleeping process for `secs`.
fn idle_cpu_per_sec(secs: f64) -> Result<f64> {
    let idle = ChildGuard::spawn(
        "idle",
        Command::new("sleep").arg("3600").stdin(Stdio::null()),
    )?;
    let mut mw = Mongowatch::watch_pid(idle.pid(), &["-o", "/dev/null"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(120))?;
    // Past startup.
    thread::sleep(Duration::from_secs(1));
    let t0 = cpu_ticks(mw.pid()).context("mongowatch's stat")?;
    let start = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let t1 = cpu_ticks(mw.pid()).context("mongowatch's stat")?;
    let cpu = (t1 - t0) as f64 / ticks_per_s() / start.elapsed().as_secs_f64();
    mw.stop()?;
    Ok(cpu)
}

fn main() -> Result<()> {
    let (mut rounds, mut ops) = (4usize, 3000u32);
    let mut args = env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => rounds = value()?.parse()?,
            "--ops" => ops = value()?.parse()?,
            "-h" | "--help" => {
                println!("bench-compare [--rounds N] [--ops N]");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(
        is_root(),
        "bench-compare loads eBPF programs: run it as root"
    );
    ensure!(
        python().is_file(),
        "{} is missing: `cargo xtask bench compare` installs the compare venv",
        python().display()
    );
    ensure!(
        ServerKind::SecantusRs.is_installed(),
        "secantusd-rs is missing (cargo xtask setup)"
    );
    let machine = machine();
    let mut per_mode: Vec<Vec<RunResult>> = MODES.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..MODES.len() {
            let m = (round + k) % MODES.len();
            let r = one_run(MODES[m], ops)?;
            eprintln!(
                "round {round}: {:<12} {:>8.1} ops/s{}",
                MODES[m],
                r.summary["ops_per_sec"].as_f64().unwrap_or(0.0),
                r.daemon
                    .map(|(cpu, lost)| format!(", daemon {cpu:.2} s CPU, {lost} events lost"))
                    .unwrap_or_default()
            );
            per_mode[m].push(r);
        }
    }
    let idle = idle_cpu_per_sec(10.0)?;

    let f = |r: &RunResult, k: &str| r.summary[k].as_f64().unwrap_or(f64::NAN);
    let plain_rate = median(per_mode[0].iter().map(|r| f(r, "ops_per_sec")).collect());
    let mut table = serde_json::Map::new();
    println!(
        "side by side (medians of {rounds} alternating rounds, {ops} ops each; machine {machine})"
    );
    println!(
        "{:<13} {:>9} {:>9} {:>14} {:>16} {:>10}",
        "mode", "ops/s", "ratio", "app CPU us/op", "daemon CPU us/op", "seen"
    );
    for (m, runs) in per_mode.iter().enumerate() {
        let rate = median(runs.iter().map(|r| f(r, "ops_per_sec")).collect());
        let app_us = median(
            runs.iter()
                .map(|r| 1e6 * (f(r, "user_s") + f(r, "sys_s")) / f(r, "ops"))
                .collect(),
        );
        let daemon_us = median(
            runs.iter()
                .filter_map(|r| r.daemon.map(|(cpu, _)| 1e6 * cpu / f(r, "ops")))
                .collect(),
        );
        let lost: u64 = runs.iter().filter_map(|r| r.daemon.map(|(_, l)| l)).sum();
        let seen = runs
            .first()
            .map(|r| r.summary["seen"].clone())
            .unwrap_or(Value::Null);
        println!(
            "{:<13} {:>9.1} {:>9.3} {:>14.0} {:>16} {:>10}",
            MODES[m],
            rate,
            rate / plain_rate,
            app_us,
            if daemon_us.is_nan() {
                "-".to_string()
            } else {
                format!("{daemon_us:.1}")
            },
            seen
        );
        table.insert(
            MODES[m].to_string(),
            json!({
                "ops_per_sec": rate,
                "ratio_to_plain": rate / plain_rate,
                "app_cpu_us_per_op": app_us,
                "daemon_cpu_us_per_op": if daemon_us.is_nan() { Value::Null } else { json!(daemon_us) },
                "events_lost": if m == 3 { json!(lost) } else { Value::Null },
                "monitor_saw_first_round": seen,
                "pymongo": runs.first().map(|r| r.summary["pymongo"].clone()),
            }),
        );
    }
    println!("mongowatch idle: {:.4} CPU-seconds per second", idle);
    // A monitor that saw nothing measured nothing.
    for m in ["listener", "pymongowatch"] {
        ensure!(
            table[m]["monitor_saw_first_round"].as_u64().unwrap_or(0) > 0,
            "{m} saw no operation: its figures are meaningless"
        );
    }
    println!(
        "{}",
        json!({
            "bench": "compare",
            "measured_under_contention": machine["contended"],
            "machine": machine,
            "rounds": rounds,
            "ops": ops,
            "modes": table,
            "daemon_idle_cpu_s_per_s": idle,
        })
    );
    Ok(())
}
