//! The node-wide selection in the loop: processes the kernel selected by itself (`--all`,
//! `--comm`, `--cgroup`) are checked against the whole selection when their first connection
//! shows up, and processes that exec are checked for the selectors only userspace decides
//! (`--exe`, ANDed tables).

use tracing::debug;

use super::Pipeline;
use crate::capture::{events::Event, select::ProcInfo};

impl Pipeline {
    /// Whether the event goes on. A process the kernel selected but the selection excludes
    /// (an exclude table the kernel cannot decide) is put in the kernel's excluded set, and
    /// what it already sent is dropped.
    pub(super) fn selected(&mut self, event: &Event<'_>) -> bool {
        let tgid = event.header().tgid;
        match event {
            Event::ProcExec { pid, .. } => {
                self.exec(*pid);
                false
            }
            _ if self.excluded.contains(tgid) => false,
            // Unknown to /proc (gone already): the kernel's own check stands.
            Event::ConnOpen { .. }
                if !self.processes.contains(tgid)
                    && self.selection.matches(&mut ProcInfo::of(tgid)) == Some(false) =>
            {
                debug!(pid = tgid, "excluded by the selection");
                self.excluded.add(tgid);
                self.probes.exclude(tgid, true);
                false
            }
            _ => true,
        }
    }

    /// A process exec'd: it may match now (a new executable, a new name).
    fn exec(&mut self, pid: u32) {
        if self.processes.contains(pid) {
            return;
        }
        if self.excluded.remove(pid) {
            self.probes.exclude(pid, false);
        }
        if self.selection.matches(&mut ProcInfo::of(pid)) == Some(true) {
            debug!(pid, "selected at exec");
            if self.processes.add(pid) {
                self.capture.processes_followed += 1;
            }
        }
    }

    /// Excluded processes that are gone leave the kernel's excluded set: their pids will name
    /// other processes.
    pub(super) fn forget_excluded(&mut self) {
        for pid in self.excluded.gone() {
            self.excluded.remove(pid);
            self.probes.exclude(pid, false);
        }
    }
}
