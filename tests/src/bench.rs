//! What the bench binaries (`tests/src/bin/bench_*.rs`) share: reading a process's CPU and
//! memory from /proc, the machine a figure comes from, waiting for a file a child writes, and
//! the alternating rounds and medians their ratios come from.

use std::{fs, path::Path, thread, time::Duration, time::Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use crate::ChildGuard;

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The order of round `round`'s two sides, without (false) and with (true), in ABBA order:
/// a drift of the machine over the run weighs on both sides alike.
pub fn abba(round: usize) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

/// The fields of a /proc stat file (`/proc/PID/stat`, `/proc/PID/task/TID/stat`) after the
/// command, which may hold spaces: `[0]` is field 3 (state), `[n]` field n + 3.
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 2..].split_whitespace().collect())
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&stat)?;
    // utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (for [`cpu_ticks`]).
pub fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// A `kB` field of /proc/<pid>/status.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for `path` to exist while `what` runs.
pub fn wait_for_file(path: &Path, timeout: Duration, what: &mut ChildGuard) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        ensure!(
            what.is_running(),
            "{} exited before writing {}",
            what.name(),
            path.display()
        );
        ensure!(
            Instant::now() < deadline,
            "{} not written in {timeout:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The machine a figure comes from: its CPUs and its 1-minute load average before the run, and
/// whether that load already means contention (half the CPUs busy or more).
pub fn machine() -> Value {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok());
    json!({
        "cpus": cpus,
        "loadavg_1m_before": load,
        "contended": load.is_none_or(|l| l >= 0.5 * cpus as f64),
    })
}

/// Raises this process's open-file limit (soft and, as root, hard) to at least `want`;
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur >= want {
            return l.rlim_cur;
        }
        let hard = l.rlim_max.max(want);
        let n = libc::rlimit {
            rlim_cur: want,
            rlim_max: hard,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &n) != 0 {
            let n = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &n);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}
