//! `cargo xtask demo`: mongowatch watching a small pymongo application.
//!
//! Starts SecantusDB on a free loopback port, starts `tests/workloads/demo_workload.py`
//! (gated: it connects only once mongowatch logs that it watches it, plus `--attach-secs`), runs
//! `mongowatch --pid <app>` with its audit records (JSON lines) on this stdout, and once the
//! application exits waits for mongowatch to exit by itself, then stops the server by its PID.
//! Narration goes to stderr, so `cargo xtask demo > audit.jsonl` keeps only the records.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use mongowatch_tests::{paths, ChildGuard, Server, ServerKind};

use crate::{
    setup::Part,
    util::{self, run},
};

/// What mongowatch logs (stderr) once it watches the given processes.
const READY_MARKER: &str = "watching";
/// How long loading the eBPF programs may take before the demo goes on regardless.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The server: secantusd-py (default) or secantusd-rs.
    #[arg(long, value_enum, default_value = "py")]
    pub server: DemoServer,
    /// Seconds between mongowatch reporting that it watches the application and letting the
    /// application connect.
    #[arg(long, default_value_t = 1.0)]
    pub attach_secs: f64,
    /// Seconds mongowatch gets to exit by itself after the application has exited.
    #[arg(long, default_value_t = 10.0)]
    pub exit_secs: f64,
    /// Do not build; use this mongowatch binary.
    #[arg(long)]
    pub bin: Option<std::path::PathBuf>,
    /// Extra arguments for mongowatch (after `--`).
    #[arg(last = true)]
    pub mongowatch_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DemoServer {
    Py,
    Rs,
}

/// The setup parts the demo uses: the eBPF toolchain and the venv (secantusd-py, pymongo for
/// the application), and secantusd-rs only when asked for. Not the Node drivers, nor the
/// secantusd-rs build (minutes) that only the tests need.
pub fn setup_parts(args: &DemoArgs) -> Vec<Part> {
    let mut parts = Part::DEMO.to_vec();
    if matches!(args.server, DemoServer::Rs) {
        parts.push(Part::SecantusdRs);
    }
    parts
}

/// The demo loads eBPF programs: say so before anything else (setup included) runs.
pub fn require_root() -> Result<()> {
    if !util::is_root() {
        bail!(
            "mongowatch loads eBPF programs and needs root: run `sudo -E cargo xtask demo` \
             (this is uid {})",
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() }
        );
    }
    Ok(())
}

pub fn run_demo(workspace: &Path, args: &DemoArgs) -> Result<()> {
    require_root()?;
    let kind = match args.server {
        DemoServer::Py => ServerKind::SecantusPy,
        DemoServer::Rs => ServerKind::SecantusRs,
    };
    for (what, path) in [
        (kind.name(), kind.binary()),
        ("the Python venv", paths::venv_python()),
    ] {
        if !path.is_file() {
            bail!(
                "{what} is not installed ({} is missing): run `cargo xtask setup`",
                path.display()
            );
        }
    }

    let mut report = util::Report::default();
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => {
            let bin = util::target_dir(workspace)?.join("debug/mongowatch");
            report.step("build mongowatch", || {
                // stdout is for the audit records.
                run(util::cargo()
                    .current_dir(workspace)
                    .args(["build", "-p", "mongowatch-user", "--bin", "mongowatch"])
                    .env("MONGOWATCH_REQUIRE_EBPF", "1")
                    .stdout(std::io::stderr()))?;
                Ok(bin.display().to_string())
            })?;
            bin
        }
    };
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    report.step("demo", || watch_demo_app(kind, &bin, args))?;
    report.print("demo done");
    Ok(())
}

/// Runs the server, the application and mongowatch; returns what mongowatch did.
fn watch_demo_app(kind: ServerKind, bin: &Path, args: &DemoArgs) -> Result<String> {
    let server = Server::start(kind)?;
    eprintln!(
        "demo: {} listening on {} (pid {})",
        kind.name(),
        server.addr(),
        server.pid()
    );

    let gate_dir = tempfile::tempdir().context("creating the demo's temp dir")?;
    let gate = gate_dir.path().join("start");
    let mut app = ChildGuard::spawn(
        "demo application",
        Command::new(paths::venv_python())
            .arg(paths::workloads_dir().join("demo_workload.py"))
            .arg("--uri")
            .arg(server.uri())
            .arg("--start-file")
            .arg(&gate)
            .args(["--start-delay", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            // stdout is for mongowatch's records.
            .stdout(Stdio::from(std::io::stderr())),
    )?;
    let app_pid = app.pid();
    eprintln!("demo: application started (pid {app_pid}), waiting to connect");

    let mut watch_cmd = Command::new(bin);
    watch_cmd
        .arg("--pid")
        .arg(app_pid.to_string())
        .args(&args.mongowatch_args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("demo: $ {}", util::show(&watch_cmd));
    let mut watcher = ChildGuard::spawn("mongowatch", &mut watch_cmd)?;
    // mongowatch logs READY_MARKER on stderr once its programs are loaded and the pid is
    // watched: pass its stderr through and open the gate then.
    let (ready_tx, ready_rx) = mpsc::channel();
    let stderr = watcher
        .child_mut()
        .stderr
        .take()
        .context("mongowatch's stderr")?;
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if line.contains(READY_MARKER) {
                let _ = ready_tx.send(());
            }
        }
    });
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(()) => {}
        Err(_) => {
            if let Some(status) = watcher.try_wait()? {
                bail!("mongowatch exited with {status} before the application started");
            }
            eprintln!(
                "demo: mongowatch did not log {READY_MARKER:?} within {READY_TIMEOUT:?}; \
                 starting the application anyway"
            );
        }
    }
    thread::sleep(Duration::from_secs_f64(args.attach_secs.max(0.0)));
    std::fs::File::create(&gate).context("opening the application's start gate")?;
    eprintln!("demo: application released; mongowatch's audit records follow on stdout");

    let app_status = app.wait_exit(Duration::from_secs(120))?;
    eprintln!("demo: application exited ({app_status})");
    let exit = Duration::from_secs_f64(args.exit_secs.max(0.0));
    let watch_status = match watcher.wait_timeout(exit)? {
        Some(status) => {
            eprintln!("demo: mongowatch exited by itself ({status})");
            status
        }
        None => {
            eprintln!(
                "demo: mongowatch still running {exit:?} after the application exited; stopping it"
            );
            watcher.stop()?
        }
    };
    let server_pid = server.pid();
    server.stop()?;
    eprintln!("demo: {} (pid {server_pid}) stopped", kind.name());
    if !app_status.success() {
        bail!("the demo application failed: {app_status}");
    }
    if !watch_status.success() {
        bail!("mongowatch failed: {watch_status}");
    }
    Ok(format!(
        "application and mongowatch exited ({watch_status})"
    ))
}
