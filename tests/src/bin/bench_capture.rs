//! `cargo xtask bench capture`: what the capture costs, as ratios measured in one run (root).
//!
//! 1. The pymongo acceptance workload's throughput with `mongowatch --pid` attached, divided
//!    by its throughput without (goal >= 0.97), and the events mongowatch lost (goal 0).
//! 2. What processes that are NOT watched pay while mongowatch runs (watching an idle
//!    process): a syscall loop that touches no socket (`dd`, goal 1.00) and socket ping-pongs
//!    over TCP loopback and a unix socket pair (goal >= 0.95).
//!
//! Runs alternate (without and with, in ABBA order) and the medians are compared, so a noisy
//! machine shifts both sides alike. Prints a table and one JSON line. `BENCH_OPS` sets the
//! workload's size (default 2000); `BENCH_ONLY=unwatched` runs part 2 alone. Part 2 runs on
//! each capture path in `BENCH_PATHS` (comma-separated, default `sock-tracepoints,syscalls`:
//! those a 6.3+ kernel without kprobes or fentry offers), side by side in the same rounds;
//! `BENCH_SELECT="--all"` (or `"--cgroup DIR"`, ...) adds a node-wide selection to the
//! mongowatch of part 2, to measure what that selection costs the processes it does not
//! pick (with `--all`: processes whose sockets are not MongoDB).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{
    bench::{abba, median},
    is_root, ChildGuard, Driver, Mongowatch, Server, ServerKind, WorkloadSpec,
};
use serde_json::json;

const ROUNDS: usize = 4;

/// An idle process for mongowatch to watch while the unwatched measurements run.
fn idle_watch(path: &str) -> Result<(ChildGuard, Mongowatch)> {
    let idle = ChildGuard::spawn(
        "idle",
        Command::new("sleep").arg("3600").stdin(Stdio::null()),
    )?;
    let select = std::env::var("BENCH_SELECT").unwrap_or_default();
    let extra: Vec<&str> = ["--capture-path", path]
        .into_iter()
        .chain(select.split_whitespace())
        .collect();
    let mut mw = Mongowatch::watch_pid(idle.pid(), &extra)?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    Ok((idle, mw))
}

/// Seconds `dd` takes to move 2M 64-byte blocks from /dev/zero to /dev/null.
fn dd_secs() -> Result<f64> {
    let start = Instant::now();
    let status = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=64", "count=2000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "dd failed");
    Ok(start.elapsed().as_secs_f64())
}

/// Round trips per second of a one-byte ping-pong between two threads.
fn ping_pong<S: Read + Write + Send + 'static>(a: S, mut b: S, trips: u32) -> Result<f64> {
    let echo = thread::spawn(move || -> std::io::Result<()> {
        let mut a = a;
        let mut buf = [0u8; 1];
        for _ in 0..trips {
            a.read_exact(&mut buf)?;
            a.write_all(&buf)?;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut buf = [7u8; 1];
    for _ in 0..trips {
        b.write_all(&buf)?;
        b.read_exact(&mut buf)?;
    }
    let secs = start.elapsed().as_secs_f64();
    echo.join().expect("echo thread")?;
    Ok(f64::from(trips) / secs)
}

fn tcp_ping_pong(trips: u32) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    ping_pong(server, client, trips)
}

fn unix_ping_pong(trips: u32) -> Result<f64> {
    let (a, b) = UnixStream::pair()?;
    ping_pong(a, b, trips)
}

/// (ops/s, events lost or None without mongowatch) of one run of the pymongo workload, on a
/// server of its own: a server reused across runs slows down as its data grows, which would
/// favour whichever side runs first.
fn pymongo_run(ops: u32, watched: bool) -> Result<(f64, Option<u64>)> {
    let server = Server::start(ServerKind::SecantusPy)?;
    let mut workload = WorkloadSpec::new(Driver::Pymongo, server.uri(), ops)
        .gated()
        .without_oracle()
        .spawn()?;
    let mut mw = None;
    if watched {
        let mut m = Mongowatch::watch_pid(workload.pid(), &["--stats", "-o", "/dev/null"])?;
        m.wait_for_stderr("watching", Duration::from_secs(60))?;
        mw = Some(m);
    }
    workload.release()?;
    let outcome = workload.wait(Duration::from_secs(900))?;
    ensure!(outcome.status.success(), "the workload failed");
    let ops_per_sec = outcome.summary.ops_per_sec.context("no throughput")?;
    let lost = match mw.as_mut() {
        None => None,
        Some(m) => {
            m.wait_exit(Duration::from_secs(60))?;
            let stats = m.stats()?;
            Some(
                stats["kernel"]["ring_full_events"]
                    .as_u64()
                    .unwrap_or(u64::MAX),
            )
        }
    };
    Ok((ops_per_sec, lost))
}

fn main() -> Result<()> {
    ensure!(
        is_root(),
        "the capture benchmark loads eBPF programs: run it as root"
    );
    let ops: u32 = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let trips = 100_000;

    let only_unwatched = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "unwatched");

    // 1. pymongo throughput. ABBA order (without, with, with, without, ...) so a drift of the
    // machine over the run weighs on both sides alike.
    let (mut without, mut with, mut lost) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..if only_unwatched { 0 } else { ROUNDS } {
        for watched in abba(round) {
            let (rate, l) = pymongo_run(ops, watched)?;
            lost += l.unwrap_or(0);
            eprintln!(
                "round {round}: pymongo {rate:.1} ops/s {}",
                if watched {
                    "with mongowatch"
                } else {
                    "without"
                }
            );
            if watched {
                with.push(rate)
            } else {
                without.push(rate)
            }
        }
    }
    let py = if only_unwatched {
        (f64::NAN, f64::NAN)
    } else {
        (median(without), median(with))
    };

    // 2. Unwatched processes, with mongowatch watching something else, on each capture path.
    let paths: Vec<String> = std::env::var("BENCH_PATHS")
        .unwrap_or_else(|_| "sock-tracepoints,syscalls".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let (mut dd0, mut tcp0, mut ux0) = (vec![], vec![], vec![]);
    let mut with: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); paths.len()];
    for round in 0..ROUNDS {
        dd0.push(dd_secs()?);
        tcp0.push(tcp_ping_pong(trips)?);
        ux0.push(unix_ping_pong(trips)?);
        eprintln!(
            "round {round}: without: dd {:.3}s, tcp {:.0} rt/s, unix {:.0} rt/s",
            dd0[round], tcp0[round], ux0[round]
        );
        for (path, (dd1, tcp1, ux1)) in paths.iter().zip(with.iter_mut()) {
            let (_idle, mut mw) = idle_watch(path)?;
            dd1.push(dd_secs()?);
            tcp1.push(tcp_ping_pong(trips)?);
            ux1.push(unix_ping_pong(trips)?);
            mw.stop()?;
            eprintln!(
                "round {round}: {path}: dd {:.3}s, tcp {:.0} rt/s, unix {:.0} rt/s",
                dd1[round], tcp1[round], ux1[round]
            );
        }
    }
    let base = (median(dd0), median(tcp0), median(ux0));

    println!("capture cost (medians of {ROUNDS} alternating rounds)");
    println!(
        "  pymongo workload ({ops} ops): {:.1} ops/s without, {:.1} with -> ratio {:.3} (goal >= 0.97), events lost {lost} (goal 0)",
        py.0, py.1, py.1 / py.0
    );
    println!(
        "  unwatched, without mongowatch: dd (2M x 64 B) {:.3} s, TCP ping-pong {:.0} rt/s, unix ping-pong {:.0} rt/s",
        base.0, base.1, base.2
    );
    let mut per_path = serde_json::Map::new();
    for (path, (dd1, tcp1, ux1)) in paths.iter().zip(with) {
        let (dd, tcp, ux) = (median(dd1), median(tcp1), median(ux1));
        println!(
            "  unwatched, mongowatch on {path:<17} dd ratio {:.3} (goal 1.00), TCP ping-pong {:.3}, unix ping-pong {:.3} (goals >= 0.95)",
            base.0 / dd,
            tcp / base.1,
            ux / base.2
        );
        per_path.insert(
            path.clone(),
            json!({
                "dd_secs": {"without": base.0, "with": dd, "ratio": base.0 / dd},
                "tcp_ping_pong_rt_per_sec": {"without": base.1, "with": tcp, "ratio": tcp / base.1},
                "unix_ping_pong_rt_per_sec": {"without": base.2, "with": ux, "ratio": ux / base.2},
            }),
        );
    }
    println!(
        "{}",
        json!({
            "pymongo_ops_per_sec": {"without": py.0, "with": py.1, "ratio": py.1 / py.0},
            "events_lost": lost,
            "unwatched_by_capture_path": per_path,
        })
    );
    Ok(())
}
