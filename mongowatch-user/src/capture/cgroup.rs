//! Cgroups: where a process is (its cgroup v2 path, its container), and the cgroup v2
//! directories a selection names (their ids, the kernel's `bpf_get_current_cgroup_id()`, are
//! the directories' inode numbers).
//!
//! Hosts come in three layouts: unified (cgroup v2 at `/sys/fs/cgroup`), hybrid (v1
//! controllers at `/sys/fs/cgroup/<name>`, v2 at `/sys/fs/cgroup/unified`) and legacy v1 only.
//! The v2 mount is found in `/proc/self/mountinfo`; container ids are read from any hierarchy's
//! line of `/proc/PID/cgroup`, so v1-only hosts still get them.

use std::{
    fs,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
};

/// Where the cgroup v2 hierarchy is mounted (`None` on a v1-only host): the first `cgroup2`
/// mount of `mountinfo` text.
pub fn v2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // 36 35 98:0 / /mnt1 rw,noatime master:1 - cgroup2 cgroup2 rw
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This machine's cgroup v2 mount point.
pub fn v2_mount() -> Option<PathBuf> {
    v2_mount_in(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The cgroup v2 path (from the hierarchy's root, starting with `/`) in `/proc/PID/cgroup`
/// text: its `0::` line.
pub fn v2_path_in(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
}

/// The cgroup v2 path of `pid`.
pub fn v2_path(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    v2_path_in(&text).map(str::to_owned)
}

/// The container a cgroup path belongs to: a 64-hex id, as containerd, CRI-O, docker and
/// podman name their cgroups under the systemd driver
/// (`kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`, `libpod-<id>.scope`) and the cgroupfs driver
/// (`/kubepods/besteffort/pod<uid>/<id>`, `/docker/<id>`), or containerd's
/// `...slice:cri-containerd:<id>`. CRI-O's monitor (`crio-conmon-<id>.scope`) is not the
/// container. The innermost match wins (a container nested in another).
pub fn container_id_in_path(path: &str) -> Option<String> {
    path.rsplit('/').find_map(container_id_in_segment)
}

fn container_id_in_segment(seg: &str) -> Option<String> {
    if seg.starts_with("crio-conmon-") {
        return None;
    }
    let seg = seg.rsplit(':').next().unwrap_or(seg);
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| seg.strip_prefix(p))
    .unwrap_or(seg);
    (id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The container id in `/proc/PID/cgroup` text: from the v2 line first, else any v1 line.
pub fn container_id_in(proc_cgroup: &str) -> Option<String> {
    if let Some(id) = v2_path_in(proc_cgroup).and_then(container_id_in_path) {
        return Some(id);
    }
    proc_cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(container_id_in_path)
}

/// The container of `pid`, or where `/proc/PID/cgroup` is gone (the process exited before the
/// daemon got to it), of the cgroup the kernel saw it in, `cgroup_id` (0: not known).
pub fn container_id_of(pid: u32, cgroup_id: u64) -> Option<String> {
    match fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => container_id_in(&text),
        Err(_) if cgroup_id != 0 => container_id_in_path(&path_of_id(&v2_mount()?, cgroup_id)?),
        Err(_) => None,
    }
}

/// The path (from the hierarchy's root, starting with `/`) of the cgroup whose id is `id`:
/// the directory with that inode. A walk of the tree, for the rare process gone too soon.
pub fn path_of_id(mount: &Path, id: u64) -> Option<String> {
    if fs::metadata(mount).ok()?.ino() == id {
        return Some("/".into());
    }
    let mut found = None;
    walk(mount, |e| {
        if e.ino() != id {
            return Walk::Below;
        }
        found = Some(e.path());
        Walk::Stop
    });
    Some(format!("/{}", found?.strip_prefix(mount).ok()?.display()))
}

/// What [`walk`] does after visiting a directory.
enum Walk {
    /// Visit the directories below it too.
    Below,
    /// Not below it.
    Skip,
    /// Nothing more: what was looked for is found.
    Stop,
}

/// Visits the directories below `root`, depth first.
fn walk(root: &Path, mut visit: impl FnMut(&fs::DirEntry) -> Walk) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match visit(&e) {
                Walk::Below => stack.push(e.path()),
                Walk::Skip => {}
                Walk::Stop => return,
            }
        }
    }
}

/// The pod uid in a kubelet cgroup path: `kubepods-<qos>-pod<uid with _>.slice` (systemd
/// driver) or `pod<uid>` (cgroupfs driver), with dashes.
pub fn pod_uid_in_path(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|seg| {
        let seg = seg.strip_suffix(".slice").unwrap_or(seg);
        let uid = seg
            .rsplit_once("-pod")
            .map(|(_, u)| u)
            .or_else(|| seg.strip_prefix("pod"))?;
        let uid = uid.replace('_', "-");
        (uid.len() == 36 && uid.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')).then_some(uid)
    })
}

/// A cgroup v2 directory chosen for selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    /// Its path from the hierarchy's root (`/kubepods.slice/...`), as `/proc/PID/cgroup` says.
    pub path: String,
    /// The kernel's cgroup id: the directory's inode number.
    pub id: u64,
    /// Its depth below the root (the root is 0): the ancestor level the kernel checks.
    pub level: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("this host has no cgroup v2 hierarchy (no cgroup2 mount): --cgroup and --container-id need one")]
    NoV2,
    #[error("{0} is not a cgroup v2 directory (give a path under {1}, or one relative to it)")]
    NotACgroup(String, String),
    #[error("no container with id {0} has a cgroup on this host")]
    NoContainer(String),
    #[error("container id prefix {0} is ambiguous: {1} containers match")]
    Ambiguous(String, usize),
}

/// A `--cgroup` argument: a directory under the v2 mount, or a path relative to its root.
pub fn resolve_dir(mount: &Path, arg: &str) -> Result<CgroupDir, CgroupError> {
    let not = || CgroupError::NotACgroup(arg.to_string(), mount.display().to_string());
    let given = Path::new(arg);
    let full = if given.starts_with(mount) {
        given.to_path_buf()
    } else {
        mount.join(arg.trim_start_matches('/'))
    };
    let full = full.canonicalize().map_err(|_| not())?;
    let rel = full.strip_prefix(mount).map_err(|_| not())?;
    if !full.join("cgroup.procs").exists() {
        return Err(not());
    }
    let meta = fs::metadata(&full).map_err(|_| not())?;
    Ok(CgroupDir {
        path: format!("/{}", rel.display()),
        id: meta.ino(),
        level: rel.components().count() as u32,
    })
}

/// The cgroup of the container whose id is `prefix` or starts with it: the outermost
/// directory of the v2 tree named for that container (one per container).
pub fn find_container(mount: &Path, prefix: &str) -> Result<CgroupDir, CgroupError> {
    let prefix = prefix.to_ascii_lowercase();
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    walk(mount, |e| {
        match container_id_in_segment(&e.file_name().to_string_lossy()) {
            Some(id) if id.starts_with(&prefix) => {
                if !found.iter().any(|(f, _)| *f == id) {
                    found.push((id, e.path()));
                }
                Walk::Skip
            }
            _ => Walk::Below,
        }
    });
    match found.len() {
        0 => Err(CgroupError::NoContainer(prefix)),
        1 => resolve_dir(mount, &found[0].1.display().to_string()),
        n => Err(CgroupError::Ambiguous(prefix, n)),
    }
}

/// Is cgroup `path` the directory `dir` or below it?
pub fn path_within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    dir.is_empty() || path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7e2a1f0c9b8d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f";
    const UID: &str = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn containerd_under_the_systemd_driver() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(container_id_in(&text).as_deref(), Some(ID));
        assert_eq!(
            pod_uid_in_path(v2_path_in(&text).unwrap()).as_deref(),
            Some(UID)
        );
    }

    /// A cgroup id is its directory's inode: found anywhere in the tree, or not at all.
    #[test]
    fn a_cgroup_is_found_by_its_id() {
        let root = tempfile::tempdir().unwrap();
        let deep = root
            .path()
            .join("kubepods.slice/pod-a.slice/cri-containerd-x.scope");
        fs::create_dir_all(&deep).unwrap();
        fs::create_dir_all(root.path().join("system.slice/sshd.service")).unwrap();
        let id = fs::metadata(&deep).unwrap().ino();
        assert_eq!(
            path_of_id(root.path(), id).as_deref(),
            Some("/kubepods.slice/pod-a.slice/cri-containerd-x.scope")
        );
        let top = fs::metadata(root.path()).unwrap().ino();
        assert_eq!(path_of_id(root.path(), top).as_deref(), Some("/"));
        let file = root.path().join("system.slice/cgroup.procs");
        fs::write(&file, "").unwrap();
        let not_a_dir = fs::metadata(&file).unwrap().ino();
        assert_eq!(path_of_id(root.path(), not_a_dir), None);
    }

    #[test]
    fn crio_and_docker_scopes_and_not_conmon() {
        assert_eq!(
            container_id_in_path(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{ID}.scope", UID.replace('-', "_"))).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id_in_path(&format!("/system.slice/docker-{ID}.scope")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id_in_path(&format!("/machine.slice/libpod-{ID}.scope/container")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id_in_path(&format!("/kubepods.slice/crio-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn the_cgroupfs_driver_v1_lines() {
        // A v1-only host: no 0:: line; the memory controller's path names the container.
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        assert_eq!(container_id_in(&text).as_deref(), Some(ID));
        assert_eq!(
            pod_uid_in_path(&format!("/kubepods/besteffort/pod{UID}/{ID}")).as_deref(),
            Some(UID)
        );
        assert_eq!(
            container_id_in(&format!("4:cpu:/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn a_hybrid_host_reads_the_unified_line_first() {
        let other = ID.replace('7', "8");
        let text = format!("1:name=systemd:/docker/{other}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id_in(&text).as_deref(), Some(ID));
    }

    #[test]
    fn containerd_colon_form_and_uppercase() {
        let path = format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod{}.slice:cri-containerd:{}",
            UID.replace('-', "_"),
            ID.to_uppercase()
        );
        assert_eq!(container_id_in_path(&path).as_deref(), Some(ID));
    }

    #[test]
    fn no_container_outside_one() {
        assert_eq!(
            container_id_in("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(container_id_in("0::/\n"), None);
        assert_eq!(container_id_in(""), None);
        // 63 hex digits is not an id.
        assert_eq!(container_id_in_path(&format!("/docker/{}", &ID[1..])), None);
        assert_eq!(pod_uid_in_path("/user.slice"), None);
    }

    #[test]
    fn the_v2_mount_in_all_three_layouts() {
        let hybrid = "25 31 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 25 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 25 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            v2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let legacy = "42 25 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(v2_mount_in(legacy), None);
        let spaced = "30 23 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_mount_in(spaced), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn within_a_directory_means_it_or_below() {
        assert!(path_within("/kubepods.slice/a.scope", "/kubepods.slice"));
        assert!(path_within("/kubepods.slice", "/kubepods.slice/"));
        assert!(!path_within("/kubepods.slice2/a", "/kubepods.slice"));
        assert!(path_within("/anything", "/"));
    }
}
