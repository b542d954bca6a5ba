//! Pod metadata in the loop: the API client's updates fill the pod index; each container of a
//! selected (or excluded) pod has its cgroup put in the kernel's selection, and its processes
//! that run already are watched; records of a container get its pod's fields, also when the
//! pod becomes known after the process's first connection.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{mpsc::Receiver, Arc, Weak},
};

use tracing::{debug, info, warn};

use super::Pipeline;
use crate::{
    capture::{cgroup, procfs},
    k8s::{Pod, PodIndex, PodUpdate},
    record::Origin,
};

/// Origins waiting for their pod, by container id, bounded: past this, dead ones are pruned.
const PENDING_PRUNE: usize = 4096;

pub(super) struct Pods {
    rx: Receiver<PodUpdate>,
    index: PodIndex,
    /// cgroup v2 mount, where containers' cgroups are found.
    v2: Option<PathBuf>,
    /// Container id -> the cgroup id put in the kernel's selection for it.
    applied: HashMap<String, u64>,
    /// Container id -> the origins waiting to learn its pod.
    pending: HashMap<Arc<str>, Vec<Weak<Origin>>>,
}

impl Pods {
    pub(super) fn new(rx: Receiver<PodUpdate>) -> Self {
        Pods {
            rx,
            index: PodIndex::default(),
            v2: cgroup::v2_mount(),
            applied: HashMap::new(),
            pending: HashMap::new(),
        }
    }
}

impl Pipeline {
    /// Applies what the API client sent since the last call.
    pub(super) fn pod_updates(&mut self) {
        let Some(pods) = &mut self.pods else { return };
        let mut changes = Vec::new();
        while let Ok(update) = pods.rx.try_recv() {
            let first_sync = matches!(update, PodUpdate::Synced(_)) && !pods.index.is_synced();
            changes.push(pods.index.apply(update));
            if first_sync {
                info!(pods = pods.index.len(), "pod metadata synced");
            }
        }
        for (changed, gone) in changes {
            for pod in &gone {
                self.pod_gone(pod);
            }
            for pod in &changed {
                self.pod_changed(pod);
            }
        }
    }

    fn pod_changed(&mut self, pod: &Pod) {
        let choice = self.selection.pod_choice(pod);
        let Some(pods) = &mut self.pods else { return };
        let mut leave = Vec::new();
        for (id, name) in &pod.containers {
            if let Some(waiting) = pods.pending.remove(id.as_str()) {
                for origin in waiting.iter().filter_map(Weak::upgrade) {
                    let _ = origin.k8s.set(pod.meta(Some(name)));
                }
            }
            let Some(choice) = choice else { continue };
            if pods.applied.contains_key(id) {
                continue;
            }
            let Some(v2) = &pods.v2 else { continue };
            match cgroup::find_container(v2, id) {
                Ok(dir) => {
                    debug!(pod = %pod.name, container = %name, cgroup = %dir.path, "pod container selected");
                    self.probes.set_cgroup(dir.id, Some(choice));
                    pods.applied.insert(id.clone(), dir.id);
                    let include = choice == mongowatch_common::SEL_INCLUDE;
                    for pid in procfs::pids() {
                        if cgroup::container_id_of(pid, 0).as_deref() != Some(id.as_str()) {
                            continue;
                        }
                        if include {
                            if self.processes.add(pid) {
                                self.capture.processes_followed += 1;
                            }
                        } else {
                            // Watched already (by --all, say, before the pods were known):
                            // its connections end here and the kernel skips it from now on.
                            if self.processes.contains(pid) {
                                leave.push(pid);
                            }
                            if self.excluded.add(pid) {
                                self.probes.exclude(pid, true);
                            }
                        }
                    }
                }
                Err(e) => warn!("pod {}/{} container {name}: {e}", pod.namespace, pod.name),
            }
        }
        let now = self.conns.clock().now_epoch_ns();
        for pid in leave {
            self.process_exited(pid, now);
        }
    }

    /// A pod ended: its cgroups leave the kernel's selection (their ids may be reused). Its
    /// records keep its fields: each connection holds its origin.
    fn pod_gone(&mut self, pod: &Pod) {
        let Some(pods) = &mut self.pods else { return };
        for (id, _) in &pod.containers {
            if let Some(cg) = pods.applied.remove(id) {
                self.probes.set_cgroup(cg, None);
            }
        }
    }

    /// The pod fields of a new origin: now if its container's pod is known, else when it is.
    pub(super) fn pod_of(&mut self, origin: &Arc<Origin>) {
        let (Some(pods), Some(id)) = (&mut self.pods, &origin.container_id) else {
            return;
        };
        if let Some(meta) = pods.index.container(id) {
            let _ = origin.k8s.set(meta);
            return;
        }
        if pods.pending.len() >= PENDING_PRUNE {
            pods.pending
                .retain(|_, v| v.iter().any(|w| w.strong_count() > 0));
        }
        pods.pending
            .entry(id.clone())
            .or_default()
            .push(Arc::downgrade(origin));
    }
}
