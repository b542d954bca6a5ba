//! The scale-of-watching bench (`bench-scale`) still works and loses nothing at a small scale:
//! 20 watched processes started while mongowatch runs, 2 connections each, 5 open cursors per
//! connection, the idle timeout firing once for every cursor before the processes exit. Not a
//! timed test: it checks counts only (every operation one WatchID of the right shape, none of
//! a process's operations missed at its start).

use std::process::Command;

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{skip_unless, Need};
use serde_json::Value;

#[test]
fn scale_smoke_every_process_and_cursor_is_audited() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin);
    let out = Command::new(env!("CARGO_BIN_EXE_bench-scale"))
        .args([
            "--processes",
            "20",
            "--conns",
            "2",
            "--cursors",
            "5",
            "--inserts",
            "3",
            "--spawn-interval-ms",
            "20",
            "--timeout",
            "1",
            "--hold-s",
            "4",
            "--require-no-loss",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().context("no result line")?;
    let r: Value = serde_json::from_str(line).with_context(|| format!("{stdout}\n{stderr}"))?;
    ensure!(out.status.success(), "bench-scale failed: {r}\n{stderr}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["operations_written"], 20 * (3 + 2 * 5), "{r}");
    assert_eq!(r["records_missing"], 0, "{r}");
    assert_eq!(r["records_extra"], 0, "{r}");
    assert_eq!(r["records_in_another_state"], 0, "{r}");
    // Every cursor was written `timeout` while held, then `closed` by its process's exit.
    assert_eq!(r["finds_timed_out_then_closed"], 20 * 2 * 5, "{r}");
    // Every process's first operation was audited.
    assert_eq!(r["start_to_first_record_ms"]["processes"], 20, "{r}");
    assert_eq!(r["ops_before_first_record"]["max"], 0, "{r}");
    assert!(r["daemon_rss_kib_peak"].as_u64().unwrap_or(0) > 0, "{r}");
    Ok(())
}
