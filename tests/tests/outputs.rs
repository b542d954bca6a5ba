//! Several outputs at once (`[[output]]` tables), as root with the real eBPF programs: one
//! output that fails (a file on a full filesystem) is said once and counted, and the others
//! still get every record.

use std::{collections::BTreeSet, fs, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{skip_unless, GatedPython, Mongowatch, Need, Server, ServerKind};

/// Inserts into `outputs_e2e.c`, enough JSON to fill a 64 KiB filesystem several times over.
const INSERTS: &str = r#"
import pymongo
c = pymongo.MongoClient(sys.argv[1]).outputs_e2e.c
for i in range(int(sys.argv[2])):
    c.insert_one({"i": i, "pad": "x" * 200})
"#;

const N: usize = 400;

/// The WatchIDs of the inserts into `outputs_e2e`, from JSON Lines.
fn json_ids(text: &str) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("a JSON line")?;
        if v["DB"] == "outputs_e2e" && v["Operation"] == "insert" {
            ids.insert(v["WatchID"].as_str().context("WatchID")?.to_owned());
        }
    }
    Ok(ids)
}

/// Three outputs: all records as JSON to a file, the inserts as CSV to stdout, and all records
/// as JSON to a file on a 64 KiB tmpfs that fills up. The full one is said once on stderr and
/// counted as failed in `--stats`; the other two get every record; mongowatch goes on to the
/// end of the app and exits 0.
#[test]
fn three_outputs_one_on_a_full_disk() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let dir = tempfile::tempdir()?;
    let small = dir.path().join("small");
    fs::create_dir(&small)?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .status()?;
    ensure!(mounted.success(), "mounting a 64 KiB tmpfs");
    let result = (|| -> Result<()> {
        let all = dir.path().join("all.jsonl");
        let full = small.join("full.jsonl");
        let config = dir.path().join("mongowatch.toml");
        fs::write(
            &config,
            format!(
                r#"
[[output]]
name = "all"
path = {all:?}

[[output]]
format = "csv"
fields = ["WatchID", "DB", "Collection", "Operation", "State"]
ops = ["insert"]

[[output]]
name = "full"
path = {full:?}
"#
            ),
        )?;
        let mut app = GatedPython::spawn("inserts", INSERTS, &[&server.uri(), &N.to_string()])?;
        let mut mw = Mongowatch::watch_pid(
            app.pid(),
            &["--config", config.to_str().unwrap(), "--stats"],
        )?;
        mw.wait_for_stderr("watching", Duration::from_secs(60))?;
        app.release()?;
        app.app
            .wait_timeout(Duration::from_secs(120))?
            .context("the app did not finish")?;
        let status = mw
            .wait_exit(Duration::from_secs(60))
            .context("mongowatch did not exit after the app")?;
        let stderr = mw.stderr();
        ensure!(status.success(), "exit {status:?}; stderr:\n{stderr}");

        let from_file = json_ids(&fs::read_to_string(&all)?)?;
        ensure!(
            from_file.len() == N,
            "the `all` file has {} of the {N} inserts",
            from_file.len()
        );
        let stdout = mw.stdout();
        let mut rows = stdout.lines();
        ensure!(
            rows.next() == Some("WatchID,DB,Collection,Operation,State"),
            "a CSV header first:\n{stdout}"
        );
        let from_stdout: BTreeSet<String> = rows
            .filter(|r| r.contains(",outputs_e2e,c,insert,"))
            .map(|r| r.split(',').next().unwrap_or_default().to_owned())
            .collect();
        ensure!(
            from_stdout == from_file,
            "stdout has {} inserts, the file {}: the same records",
            from_stdout.len(),
            from_file.len()
        );

        let said = stderr
            .lines()
            .filter(|l| l.contains("No space left on device"))
            .count();
        ensure!(
            said == 1,
            "the full disk is said once, not {said}:\n{stderr}"
        );
        ensure!(stderr.contains("output `full`"), "{stderr}");
        let stats = mw.stats()?;
        let outs = &stats["outputs"];
        let (written, failed) = (
            outs["full"]["written"].as_u64().context("full.written")?,
            outs["full"]["failed"].as_u64().context("full.failed")?,
        );
        ensure!(
            written > 0 && failed > 0,
            "the full output wrote some, then failed: {outs}"
        );
        // A record the disk could not hold may have left a partial line, with no newline.
        let lines = fs::read(&full)?.iter().filter(|b| **b == b'\n').count();
        ensure!(
            lines as u64 == written,
            "`written` counts the full file's lines ({lines}): {outs}"
        );
        ensure!(
            outs["all"]["written"].as_u64() == Some(written + failed),
            "every record reached `full` as written or failed, none dropped: {outs}"
        );
        for name in ["all", "stdout"] {
            ensure!(
                outs[name]["failed"] == 0 && outs[name]["dropped"] == 0,
                "{name}: nothing failed or dropped: {outs}"
            );
        }
        eprintln!("three outputs: {outs}");
        Ok(())
    })();
    let _ = Command::new("umount").arg(&small).status();
    result
}
