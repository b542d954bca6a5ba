//! The watched processes, as the daemon knows them: each by pid and start time, so that a pid
//! the kernel gives to a new process after a watched one exited (with its exit event lost) is
//! not taken for the watched one. The kernel's bitmap mirrors this set (see `pipeline`).

use std::collections::HashMap;

use super::procfs;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Process {
    comm: String,
    /// Clock ticks since boot (`/proc/PID/stat`); `None` when /proc could not tell.
    start: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Processes {
    procs: HashMap<u32, Process>,
    /// Bumped whenever the set gains or loses a process.
    version: u64,
}

impl Processes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts watching `pid` (named on the command line, or a child the kernel reported), with
    /// its name and start time from /proc. False when it was watched already.
    pub fn add(&mut self, pid: u32) -> bool {
        self.insert(pid, procfs::comm(pid), procfs::start_time(pid))
    }

    /// Like [`Processes::add`] with what the caller knows (tests, or an event that carried it).
    pub fn insert(&mut self, pid: u32, comm: Option<String>, start: Option<u64>) -> bool {
        if self.procs.contains_key(&pid) {
            return false;
        }
        let comm = comm.unwrap_or_default();
        self.procs.insert(pid, Process { comm, start });
        self.version += 1;
        true
    }

    /// Stops watching `pid`; false when it was not watched.
    pub fn remove(&mut self, pid: u32) -> bool {
        let removed = self.procs.remove(&pid).is_some();
        if removed {
            self.version += 1;
        }
        removed
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    pub fn comm(&self, pid: u32) -> Option<&str> {
        self.procs.get(&pid).map(|p| p.comm.as_str())
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Changes whenever a process is added or removed, so an owner that mirrors the set
    /// elsewhere (the kernel's watched bitmap) only has to look when it moved.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Watched processes that are gone although no exit event said so: not alive any more, or
    /// their pid now belongs to a process that started at another time.
    pub fn gone(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(pid, p)| match procfs::alive_since(**pid) {
                None => true,
                Some(now) => p.start.is_some_and(|s| now.start != Some(s)),
            })
            .map(|(pid, _)| *pid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_the_watched_process() {
        let me = std::process::id();
        let start = procfs::start_time(me).unwrap();
        let mut p = Processes::new();
        assert!(p.insert(me, Some("me".into()), Some(start)));
        assert!(!p.insert(me, None, None), "already watched");
        assert!(p.gone().is_empty(), "the same process");
        // The same pid with another start time: a different process now has it.
        let mut q = Processes::new();
        q.insert(me, Some("old".into()), Some(start + 1));
        assert_eq!(q.gone(), vec![me]);
    }

    #[test]
    fn the_version_moves_with_the_set() {
        let mut p = Processes::new();
        let v0 = p.version();
        p.insert(1, None, None);
        assert_ne!(p.version(), v0);
        let v1 = p.version();
        assert!(!p.remove(2));
        assert_eq!(p.version(), v1, "nothing removed");
        assert!(p.remove(1));
        assert_ne!(p.version(), v1);
        assert!(p.is_empty());
    }
}
