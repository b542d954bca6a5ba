//! The replay load generator (`bench-replay`) still works and loses nothing at a low rate: a
//! few seconds of every recorded driver session, small commands and 256 KB cursor replies, over
//! TCP and unix sockets from two watched processes, at 1,000 messages/s: low enough for a debug
//! build of the daemon on a busy CI machine. Not a timed test: it checks counts only.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{skip_unless, Need};
use serde_json::Value;

/// Runs bench-replay with `args`; its result line, and whether it succeeded (the line is
/// returned either way: a failed run says why in it).
fn bench_replay(args: &[&str]) -> Result<(Value, bool)> {
    let out = Command::new(env!("CARGO_BIN_EXE_bench-replay"))
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().context("no result line")?;
    let r = serde_json::from_str(line).with_context(|| format!("{stdout}\n{stderr}"))?;
    if !out.status.success() {
        eprintln!("bench-replay failed:\n{stderr}");
    }
    Ok((r, out.status.success()))
}

#[test]
fn replay_smoke_every_operation_is_one_record() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin);
    let sessions = Command::new(env!("CARGO_BIN_EXE_bench-replay"))
        .args([
            "sessions",
            "--mix",
            "fixtures,small,large",
            "--large-mb",
            "1",
        ])
        .output()?;
    ensure!(sessions.status.success(), "{sessions:?}");
    let names: Vec<String> = String::from_utf8(sessions.stdout)?
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["session"].as_str().unwrap_or("").to_string())
        })
        .collect::<Result<_, _>>()?;
    ensure!(names.len() >= 10, "8 fixtures, small and large: {names:?}");

    let (r, ok) = bench_replay(&[
        "--mix",
        "fixtures,small,large",
        "--large-mb",
        "0.25",
        "--transport",
        "both",
        "--processes",
        "2",
        "--workers",
        "5",
        "--seconds",
        "3",
        "--rate",
        "1000",
        "--require-no-loss",
    ])?;
    ensure!(ok, "bench-replay failed: {r}");
    // Every session was replayed, on both transports' processes together.
    for name in &names {
        ensure!(
            r["replays"][name].as_u64().unwrap_or(0) >= 1,
            "{name} was not replayed: {r}"
        );
    }
    let expected = r["records_expected"].as_u64().context("records_expected")?;
    ensure!(expected > 100, "{r}");
    assert_eq!(r["records_written"].as_u64(), Some(expected), "{r}");
    assert_eq!(r["records_missing"], 0, "{r}");
    assert_eq!(r["records_extra"], 0, "{r}");
    assert_eq!(r["records_not_final"], 0, "{r}");
    assert_eq!(r["events_lost"], 0, "{r}");
    assert_eq!(r["gaps"], 0, "{r}");
    // The ring's high-water mark is measured (something was waiting at some drain).
    assert!(r["ring_high_water_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["daemon_peak_rss_kib"].as_u64().unwrap_or(0) > 0, "{r}");
    Ok(())
}

/// A ring too small for what comes while the daemon gets no CPU (stopped for 1.5 s, with a
/// 1 MiB ring, while 256 KB cursor replies flow at about 25 MB/s): events are lost, and each loss is counted; the
/// streams resync, so the operations after the stall are written again; no record is wrong
/// (a missing one or one closed early is explained by the counted loss; none is extra).
#[test]
fn a_full_ring_loses_events_counted_and_no_record_is_wrong() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin);
    let (r, ok) = bench_replay(&[
        "--mix",
        "large",
        "--large-mb",
        "0.25",
        "--transport",
        "both",
        "--processes",
        "2",
        "--workers",
        "2",
        "--seconds",
        "4.5",
        "--rate",
        "200",
        "--stall-daemon-ms",
        "1500",
        "--mw-arg",
        "--ring-size",
        "--mw-arg",
        "1M",
    ])?;
    // The kernel made the ring the size asked for.
    assert_eq!(r["ring_size_bytes"], 1 << 20, "{r}");
    // 1.5 s of replies at about 25 MB/s cannot wait in 1 MiB: loss, counted.
    ensure!(r["events_lost"].as_u64().unwrap_or(0) > 0, "no loss: {r}");
    ensure!(r["bytes_lost"].as_u64().unwrap_or(0) > 1 << 20, "{r}");
    // bench-replay's own verdict: nothing extra, everything missing explained by the loss.
    ensure!(ok && r["ok"] == true, "{r}");
    assert_eq!(r["records_extra"], 0, "{r}");
    assert_eq!(r["loss_explained"], true, "{r}");
    // The streams resynced: the stall took a third of the run, most operations were written.
    let expected = r["records_expected"].as_u64().context("records_expected")?;
    let written = r["records_written"].as_u64().context("records_written")?;
    ensure!(expected > 100 && written * 2 > expected, "{r}");
    Ok(())
}
