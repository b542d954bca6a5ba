//! Runs the `mongowatch` binary under test with its stdout (JSON lines) and stderr captured to
//! files, and stops it by its PID when dropped.

use std::{
    ffi::OsStr,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{paths, process::ChildGuard};

/// A running `mongowatch`.
pub struct Mongowatch {
    process: ChildGuard,
    dir: tempfile::TempDir,
}

impl Mongowatch {
    /// Starts [`paths::mongowatch_bin`] with `args`.
    pub fn spawn<I, S>(args: I) -> Result<Mongowatch>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with_env(args, &[])
    }

    /// Like [`Mongowatch::spawn`], with variables added to its environment.
    pub fn spawn_with_env<I, S>(args: I, env: &[(&str, &str)]) -> Result<Mongowatch>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = paths::mongowatch_bin();
        if !bin.is_file() {
            bail!(
                "{} does not exist (`cargo build -p mongowatch-user`, or set MONGOWATCH_BIN)",
                bin.display()
            );
        }
        let dir = paths::temp_dir("mongowatch-run-")?;
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout.jsonl"))?)
            .stderr(File::create(dir.path().join("stderr.txt"))?);
        let process = ChildGuard::spawn("mongowatch", &mut cmd)?;
        Ok(Mongowatch { process, dir })
    }

    /// `mongowatch --pid PID [extra...]`.
    pub fn watch_pid(pid: u32, extra_args: &[&str]) -> Result<Mongowatch> {
        let mut args = vec!["--pid".to_string(), pid.to_string()];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Mongowatch::spawn(args)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.jsonl")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.txt")
    }

    /// A directory for the test's own files (removed with this value).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.stdout_path()).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// The complete JSON lines written to stdout so far (a last line still being written is
    /// left out). Fails on a line that is not JSON.
    pub fn records(&self) -> Result<Vec<serde_json::Value>> {
        let text = self.stdout();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).with_context(|| {
                    format!("mongowatch stdout line {} is not JSON: {line}", i + 1)
                })
            })
            .collect()
    }

    /// The `--stats` summary: the last JSON object line on stderr.
    pub fn stats(&self) -> Result<serde_json::Value> {
        self.stderr()
            .lines()
            .rev()
            .find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .filter(|v| v.is_object())
            })
            .context("no --stats line on mongowatch's stderr")
    }

    /// Waits until stderr contains `needle` (e.g. a readiness message), up to `timeout`.
    /// Fails early if mongowatch exits.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "mongowatch exited with {status} before printing {needle:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "mongowatch did not print {needle:?} within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `n` records have been written, up to `timeout`.
    pub fn wait_for_records(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        self.wait_for_records_where("", |_| true, n, timeout)
    }

    /// Waits until at least `n` records of database `db` have been written, up to `timeout`;
    /// returns those (mongowatch keeps running).
    pub fn wait_for_records_of(
        &mut self,
        db: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        self.wait_for_records_where(&format!(" of {db}"), |r| r["DB"] == db, n, timeout)
    }

    fn wait_for_records_where(
        &mut self,
        what: &str,
        keep: impl Fn(&serde_json::Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records: Vec<_> = self.records()?.into_iter().filter(&keep).collect();
            if records.len() >= n {
                return Ok(records);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} records{what} after {timeout:?}, wanted {n}: {records:?}\nstderr:\n{}",
                    records.len(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Waits for mongowatch to exit by itself (it does once every watched process has exited).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process
            .wait_exit(timeout)
            .with_context(|| format!("stderr:\n{}", self.stderr()))
    }

    /// Stops it (SIGTERM, then SIGKILL after the grace period).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.process.stop()
    }
}
