//! The daemon loop's promises, as root with the real eBPF programs: an output that can no
//! longer be written stops mongowatch once, loudly, with a non-zero exit; forensic mode honours
//! the output options; SIGTERM is handled even while a flood of events keeps the ring full.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use mongowatch_tests::{
    bench, paths, process::ChildGuard, skip_unless, GatedPython, Mongowatch, Need, Server,
    ServerKind,
};

/// Inserts small documents for up to 60 s (stopped earlier by the test).
const INSERT_LOOP: &str = r#"
import pymongo
c = pymongo.MongoClient(sys.argv[1]).t.c
end = time.time() + 60
i = 0
while time.time() < end:
    c.insert_one({"i": i, "pad": "x" * 200})
    i += 1
"#;

/// Waits until `path` holds `needle`.
fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if Instant::now() >= deadline {
            bail!(
                "{needle:?} not in {} after {timeout:?}:\n{text}",
                path.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `mongowatch --pid N | head -2`: once `head` has gone, the next write fails; mongowatch says
/// so once (not once per record), stops while the app still runs, and exits 1 with the count
/// of records it could not write.
#[test]
fn a_closed_pipe_stops_it_once_with_an_error() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let mut app = GatedPython::spawn("insert loop", INSERT_LOOP, &[&server.uri()])?;
    let dir = tempfile::tempdir()?;
    let (err, rc) = (dir.path().join("stderr"), dir.path().join("rc"));
    let script = format!(
        "'{bin}' --pid {pid} 2>'{err}' | head -2 >/dev/null; echo ${{PIPESTATUS[0]}} >'{rc}'",
        bin = paths::mongowatch_bin().display(),
        pid = app.pid(),
        err = err.display(),
        rc = rc.display(),
    );
    let mut pipe = ChildGuard::spawn(
        "mongowatch | head -2",
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null()),
    )?;
    wait_for_text(&err, "watching", Duration::from_secs(60))?;
    app.release()?;
    pipe.wait_exit(Duration::from_secs(30))
        .context("mongowatch did not stop after its pipe closed")?;
    ensure!(
        app.app.is_running(),
        "the app ended first: mongowatch should stop on the closed pipe, not on the app's exit"
    );
    let status = fs::read_to_string(&rc)?;
    let stderr = fs::read_to_string(&err)?;
    ensure!(
        status.trim() == "1",
        "exit status {status:?}; stderr:\n{stderr}"
    );
    let said = stderr.lines().filter(|l| l.contains("Broken pipe")).count();
    ensure!(
        (1..=2).contains(&said),
        "the broken pipe is said once (and in the exit message), not {said} times:\n{stderr}"
    );
    ensure!(
        stderr.contains("records could not be written"),
        "the exit message counts what was lost:\n{stderr}"
    );
    Ok(())
}

/// `-o FILE` on a filesystem that fills up: a clear error, a stop and exit 1.
#[test]
fn a_full_disk_stops_it_with_an_error() -> Result<()> {
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
        let app = GatedPython::spawn("insert loop", INSERT_LOOP, &[&server.uri()])?;
        let out = small.join("audit.jsonl");
        let mut mw = Mongowatch::watch_pid(app.pid(), &["-o", out.to_str().unwrap()])?;
        mw.wait_for_stderr("watching", Duration::from_secs(60))?;
        app.release()?;
        let status = mw
            .wait_exit(Duration::from_secs(60))
            .context("mongowatch did not stop on a full disk")?;
        let stderr = mw.stderr();
        ensure!(
            status.code() == Some(1),
            "exit {status:?}; stderr:\n{stderr}"
        );
        ensure!(
            stderr.contains("No space left on device")
                && stderr.contains("records could not be written"),
            "{stderr}"
        );
        ensure!(
            fs::metadata(&out)?.len() > 0,
            "records were written until the disk was full"
        );
        Ok(())
    })();
    let _ = Command::new("umount").arg(&small).status();
    result
}

/// `--messages -o FILE --rotate-size`: the lines go to the file (rotated), not to stdout; the
/// same output from a config file; the options that shape records are refused.
#[test]
fn forensic_mode_honours_the_output_options() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo);
    let server = Server::start(ServerKind::SecantusPy)?;
    let app_code = r#"
import pymongo
c = pymongo.MongoClient(sys.argv[1]).t.c
for i in range(200):
    c.insert_one({"i": i, "pad": "x" * 100})
"#;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("messages.jsonl");
    let config = dir.path().join("mongowatch.toml");
    fs::write(
        &config,
        format!("output = {:?}\n", dir.path().join("from-config.jsonl")),
    )?;
    for (args, file) in [
        (
            vec![
                "--messages",
                "-o",
                out.to_str().unwrap(),
                "--rotate-size",
                "16K",
            ],
            out.clone(),
        ),
        (
            vec!["--messages", "--config", config.to_str().unwrap()],
            dir.path().join("from-config.jsonl"),
        ),
    ] {
        let mut app = GatedPython::spawn("python app", app_code, &[&server.uri()])?;
        let mut mw = Mongowatch::watch_pid(app.pid(), &args)?;
        mw.wait_for_stderr("watching", Duration::from_secs(60))?;
        app.release()?;
        app.app
            .wait_timeout(Duration::from_secs(120))?
            .context("the app did not finish")?;
        mw.wait_exit(Duration::from_secs(60))?;
        ensure!(mw.stdout().is_empty(), "{args:?}: stdout gets nothing");
        let mut lines = fs::read_to_string(&file)?;
        if args.contains(&"--rotate-size") {
            ensure!(
                fs::metadata(&file)?.len() < 32 << 10,
                "the file was rotated at 16K"
            );
            lines.push_str(&fs::read_to_string(format!("{}.1", file.display()))?);
        }
        let inserts = lines
            .lines()
            .map(serde_json::from_str::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|l| l["Command"] == "insert")
            .count();
        ensure!(
            inserts > 0,
            "{args:?}: insert messages in {}",
            file.display()
        );
    }
    Ok(())
}

#[test]
fn forensic_mode_refuses_the_options_that_shape_records() -> Result<()> {
    skip_unless!(Ok(()); Need::MongowatchBin);
    let me = std::process::id().to_string();
    let out = Command::new(paths::mongowatch_bin())
        .args(["--pid", &me, "--messages", "--format", "text"])
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "exit {:?}: {err}", out.status);
    ensure!(err.contains("cannot be used with"), "{err}");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mongowatch.toml");
    fs::write(&config, "format = \"csv\"\n")?;
    let out = Command::new(paths::mongowatch_bin())
        .args([
            "--pid",
            &me,
            "--messages",
            "--config",
            config.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}: {err}", out.status);
    ensure!(err.contains("`format` shapes audit records"), "{err}");
    Ok(())
}

/// Writes well-formed OP_MSG inserts as fast as it can into a socketpair whose other end a
/// thread reads and discards: every byte is MongoDB to the kernel, so the ring stays full.
const FLOOD: &str = r#"
import socket, struct, threading, bson
a, b = socket.socketpair()
def drain():
    while b.recv(1 << 20):
        pass
threading.Thread(target=drain, daemon=True).start()
body = bson.encode({"insert": "c", "$db": "flood", "documents": [{"pad": "x" * 16000}]})
msg = struct.pack("<iiiiI", 16 + 4 + 1 + len(body), 1, 0, 2013, 0) + b"\x00" + body
batch = msg * 64
end = time.time() + 60
while time.time() < end:
    a.sendall(batch)
"#;

/// SIGTERM while a flood keeps the ring full: the loop drains in bounded batches, so the
/// signal is handled and mongowatch exits 0 while the flood goes on.
#[test]
fn sigterm_under_a_flood_is_handled() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::Pymongo);
    let mut app = GatedPython::spawn("flood", FLOOD, &[])?;
    let mut mw = Mongowatch::watch_pid(app.pid(), &["--messages", "-o", "/dev/null", "--stats"])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    app.release()?;
    // Let the flood run until the daemon is behind.
    thread::sleep(Duration::from_secs(5));
    ensure!(app.app.is_running(), "the flood runs for 60 s");
    let sent = Instant::now();
    // SAFETY: kill(2) on mongowatch's own pid.
    unsafe { libc::kill(mw.pid() as i32, libc::SIGTERM) };
    let status = mw
        .wait_exit(Duration::from_secs(15))
        .context("SIGTERM was not handled under the flood")?;
    let took = sent.elapsed();
    ensure!(status.success(), "exit {status:?}:\n{}", mw.stderr());
    ensure!(
        app.app.is_running(),
        "mongowatch stopped before the flood did"
    );
    let stats = mw.stats()?;
    ensure!(
        stats["messages"]["written"].as_u64() > Some(0),
        "messages were written during the flood: {stats}"
    );
    eprintln!("SIGTERM under a flood: exited after {took:?}; {stats}");
    Ok(())
}

/// The nice value of each thread of `pid` (field 19 of /proc/PID/task/TID/stat).
fn thread_nice_values(pid: u32) -> Result<Vec<i32>> {
    let mut nice = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("stat");
        let stat = match fs::read_to_string(&path) {
            Ok(s) => s,
            // A short-lived thread that ended since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| path.display().to_string()),
        };
        let fields = bench::stat_fields(&stat).context("stat")?;
        nice.push(fields.get(16).context("nice field")?.parse()?);
    }
    Ok(nice)
}

/// Like auditd, the daemon lowers its nice value by `--priority-boost` (4 by default) before
/// it starts any thread, so every thread (the capture loop, the output's writer) has it and a
/// machine whose CPUs are all busy still gives it a CPU first; `--priority-boost 0` leaves it
/// as it was started.
#[test]
fn every_thread_of_the_daemon_runs_with_the_priority_boost() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin);
    let app = ChildGuard::spawn("sleep", Command::new("sleep").arg("60"))?;
    // SAFETY: getpriority on the calling thread, whose nice value mongowatch starts with.
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    for (extra, boost) in [(None, 4), (Some("0"), 0), (Some("7"), 7)] {
        let mut args = vec!["-o", "/dev/null"];
        if let Some(n) = extra {
            args.extend(["--priority-boost", n]);
        }
        let mut mw = Mongowatch::watch_pid(app.pid(), &args)?;
        mw.wait_for_stderr("watching", Duration::from_secs(60))?;
        let nice = thread_nice_values(mw.pid())?;
        let want = (own - boost).max(-20);
        ensure!(
            nice.len() >= 2 && nice.iter().all(|&n| n == want),
            "--priority-boost {extra:?}: threads' nice values {nice:?}, want {want} for each"
        );
        ensure!(mw.stop()?.success(), "{}", mw.stderr());
    }
    Ok(())
}
