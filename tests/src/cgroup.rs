//! A cgroup v2 directory laid out like a kubelet's: what the node-wide selection tests put
//! their "containers" in (real cgroups, so that `bpf_get_current_cgroup_id()` and
//! `/proc/PID/cgroup` see them as on a Kubernetes node).

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

/// A cgroup v2 directory laid out like a kubelet's (systemd driver, containerd), removed (with
/// the parents this test made) when dropped; processes still in it are moved to the root.
pub struct PodCgroup {
    root: PathBuf,
    made: Vec<PathBuf>,
    /// The container's cgroup directory.
    pub scope: PathBuf,
    /// Its 64-hex container id.
    pub container_id: String,
    /// The pod's uid (with dashes).
    pub pod_uid: String,
    /// `/kubepods.slice/...`: the path `/proc/PID/cgroup` shows.
    pub rel: String,
}

impl PodCgroup {
    /// Makes a new pod and container cgroup (unique ids) under the cgroup v2 root.
    pub fn create() -> Result<PodCgroup> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                if right.split_whitespace().next()? != "cgroup2" {
                    return None;
                }
                Some(PathBuf::from(left.split_whitespace().nth(4)?))
            })
            .context("no cgroup2 mount on this machine")?;
        let seed = format!(
            "{:016x}{:08x}",
            (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64)
                // Mixed, so that two cgroups made in a row differ from their first digit (an
                // id prefix must name one of them).
                .wrapping_mul(0x9e37_79b9_7f4a_7c15),
            std::process::id()
        );
        let container_id = format!("{seed}{seed}{}", &seed[..16]);
        anyhow::ensure!(container_id.len() == 64, "container id {container_id}");
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &seed[..8],
            &seed[8..12],
            &seed[12..16],
            &seed[16..20],
            &seed[..12]
        );
        let rel = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
             cri-containerd-{container_id}.scope",
            uid.replace('-', "_")
        );
        let mut made = Vec::new();
        let mut dir = root.clone();
        for part in rel.trim_start_matches('/').split('/') {
            dir = dir.join(part);
            if !dir.exists() {
                fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                made.push(dir.clone());
            }
        }
        Ok(PodCgroup {
            root,
            made,
            scope: dir,
            container_id,
            pod_uid: uid,
            rel,
        })
    }

    /// Moves `pid` into the container.
    pub fn enter(&self, pid: u32) -> Result<()> {
        fs::write(self.scope.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.scope.display()))
    }

    /// Its `cgroup.procs`: a process that writes its pid there enters the container.
    pub fn procs_file(&self) -> PathBuf {
        self.scope.join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = fs::read_to_string(self.procs_file()) {
            for pid in pids.lines() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}
