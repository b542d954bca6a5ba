//! Small helpers shared by the xtask commands: running commands loudly, timing steps.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// `cargo`: the one that runs this xtask (`$CARGO`), else the first on PATH.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// Runs `cmd` with inherited stdout/stderr and no stdin, printing it first; fails on a
/// non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", show(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not run {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout (`None` if it could not start or failed).
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line for humans: program and arguments, with the environment it sets.
pub fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .filter(|kv| !kv.starts_with("PATH="))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Records what each step did and how long it took, and prints a table at the end.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, String, Duration)>,
}

impl Report {
    /// Runs `f` as step `name`; `f` returns a one-line account of what it did.
    pub fn step(&mut self, name: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
        eprintln!("==> {name}");
        let start = Instant::now();
        let result = f().with_context(|| format!("step `{name}` failed"));
        let took = start.elapsed();
        match result {
            Ok(what) => {
                eprintln!("<== {name}: {what} ({})", secs(took));
                self.rows.push((name.to_string(), what, took));
                Ok(())
            }
            Err(e) => {
                self.rows.push((name.to_string(), "FAILED".into(), took));
                self.print("so far");
                Err(e)
            }
        }
    }

    pub fn print(&self, title: &str) {
        let total: Duration = self.rows.iter().map(|r| r.2).sum();
        eprintln!("\n{title} ({} in all):", secs(total));
        for (name, what, took) in &self.rows {
            eprintln!("  {name:<16} {took:>8}  {what}", took = secs(*took));
        }
    }
}

/// Cargo's target directory for this workspace (honours CARGO_TARGET_DIR and config).
pub fn target_dir(workspace: &Path) -> Result<PathBuf> {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(workspace.join("Cargo.toml"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", out.status);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Processes (other than this one) whose command line contains every one of `words`.
pub fn processes_matching(words: &[&str]) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            words
                .iter()
                .all(|w| line.contains(w))
                .then_some((pid, line))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_by_its_command_line() {
        let mut child = Command::new("sleep").arg("7.31415").spawn().unwrap();
        // spawn() returns once the child is in execve, which is before the
        // kernel has laid out its new argv: an immediate read of its cmdline
        // can be empty. Look again until it shows, for up to 10 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = processes_matching(&["sleep", "7.31415"]);
            if found.iter().any(|(pid, _)| *pid == child.id())
                || std::time::Instant::now() > deadline
            {
                break found;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.iter().any(|(pid, _)| *pid == child.id()), "{found:?}");
        assert!(processes_matching(&["no-such-process-7.31415-x"]).is_empty());
    }
}
