//! Where a watched process runs, for its records: its container (from `/proc/PID/cgroup`, or
//! from the cgroup the kernel saw when the process is gone) and the node. Read once per
//! process, at its first connection.

use std::sync::Arc;

use super::Pipeline;
use crate::{capture::cgroup, record::Origin};

/// The node's name: `NODE_NAME` (a DaemonSet sets it from `spec.nodeName`), else the hostname.
pub fn node_name() -> Option<String> {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

impl Pipeline {
    /// Gives the table the origin of `pid`'s connections, once. `cgroup_id` is where the
    /// kernel saw the process open its connection (0: not known), for a process already gone.
    pub(super) fn note_origin(&mut self, pid: u32, cgroup_id: u64) {
        if self.conns.has_origin(pid) {
            return;
        }
        let origin = Arc::new(Origin {
            container_id: cgroup::container_id_of(pid, cgroup_id).map(Arc::from),
            node: self.node.clone(),
            k8s: Default::default(),
        });
        self.pod_of(&origin);
        self.conns.set_origin(pid, origin);
    }
}
