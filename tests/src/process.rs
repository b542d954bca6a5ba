//! Child processes that are stopped by their own PID when dropped, pass or fail.

use std::{
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// How long a process gets between SIGTERM and SIGKILL by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A spawned child that is sent SIGTERM, then SIGKILL after a grace period, when dropped (or
/// when [`ChildGuard::stop`] is called). Only this child's own PID is ever signalled.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    grace: Duration,
}

impl ChildGuard {
    /// Spawns `cmd`; `name` appears in errors and logs.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Result<ChildGuard> {
        let name = name.into();
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}: {cmd:?}"))?;
        Ok(ChildGuard::adopt(name, child))
    }

    /// Takes charge of an already spawned child.
    pub fn adopt(name: impl Into<String>, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.into(),
            child: Some(child),
            status: None,
            grace: DEFAULT_GRACE,
        }
    }

    /// Sets the time between SIGTERM and SIGKILL when stopping.
    pub fn with_grace(mut self, grace: Duration) -> ChildGuard {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The underlying child (for its stdin/stdout handles).
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// The exit status if the child has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .with_context(|| format!("waiting for {} (pid {})", self.name, child.id()))?;
        self.status = status;
        Ok(status)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit by itself; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the child to exit by itself, and fails if it does not (the
    /// child is then stopped).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match self.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => {
                let pid = self.pid();
                let _ = self.stop();
                anyhow::bail!(
                    "{} (pid {pid}) did not exit within {timeout:?}; stopped it",
                    self.name
                )
            }
        }
    }

    /// Sends `signal` to the child's PID (if it has not been reaped).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) with our own, not yet reaped, child's PID.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err)
                    .with_context(|| format!("kill({pid}, {signal}) for {}", self.name));
            }
        }
        Ok(())
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(self.grace)? {
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        let child = self.child.as_mut().expect("child present until drop");
        let status = child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop() {
                eprintln!(
                    "harness: stopping {} (pid {}): {e:#}",
                    self.name,
                    self.pid()
                );
            }
        }
    }
}

/// Whether this process runs as root (the end-to-end tests that load eBPF programs need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, of Rust's `Instant` and of
/// Python's `time.monotonic_ns()` on Linux, so timestamps from all of them compare directly.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
