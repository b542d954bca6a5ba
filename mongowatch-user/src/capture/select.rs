//! Which processes to watch besides the `--pid`s: every process (`--all`), by name
//! (`--comm`), by executable (`--exe`), by cgroup v2 directory (`--cgroup`) or container
//! (`--container-id`), and the `--exclude-*` counterparts; the same as `[[select]]` and
//! `[[exclude]]` tables of the config file. Selectors in one table are ANDed (several values
//! of one selector ORed), tables ORed; on the command line each flag is a table of its own.
//! A process is watched when a select table matches it and no exclude table does.
//!
//! A table of one kind only (`all`, `comm`, or cgroups: `cgroup` and `container-id`) is
//! decided in the kernel at the process's first socket call (see `KernelSelection`); the
//! others (an executable, or selectors ANDed) are decided here, from /proc at startup and at
//! every exec the kernel reports. Children of a watched process are followed either way.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{cgroup, procfs};
use crate::k8s::{Pod, PodSelector};
use mongowatch_common::{
    EXCLUDE_CGROUP, EXCLUDE_COMM, EXEC_EVENTS, MAX_CGROUP_LEVEL, SELECT_ALL, SELECT_CGROUP,
    SELECT_COMM, SEL_EXCLUDE, SEL_INCLUDE,
};

/// One `[[select]]` or `[[exclude]]` table: what a process must all match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SelectorTable {
    /// Every process (a table with only `all = true` selects the whole node).
    pub all: bool,
    /// Process names (the kernel's comm, at most 15 bytes; longer names are cut as the kernel
    /// cuts them).
    pub comm: Vec<String>,
    /// Executable path globs (`*` matches any run of characters, `/` included; `?` one).
    pub exe: Vec<String>,
    /// Cgroup v2 directories: a process inside one or below it.
    pub cgroup: Vec<String>,
    /// Container ids, full or a unique prefix.
    pub container_id: Vec<String>,
    /// Kubernetes namespaces of the pods (resolved through the API server).
    pub k8s_namespace: Vec<String>,
    /// Pod names.
    pub k8s_pod: Vec<String>,
    /// Pod labels `KEY=VALUE`, all of which a pod must carry.
    pub k8s_label: Vec<String>,
}

impl SelectorTable {
    fn is_empty(&self) -> bool {
        !self.all
            && self.comm.is_empty()
            && self.exe.is_empty()
            && self.cgroup.is_empty()
            && self.container_id.is_empty()
            && self.pods_empty()
    }

    fn pods_empty(&self) -> bool {
        self.k8s_namespace.is_empty() && self.k8s_pod.is_empty() && self.k8s_label.is_empty()
    }
}

/// The selection flags of the command line.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectArgs {
    /// Watch every process on the machine (only MongoDB connections are copied).
    #[arg(long)]
    pub all: bool,
    /// Watch processes with this name (the kernel's 15-character comm); repeatable.
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Watch processes whose executable path matches this glob (`*`, `?`); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exe: Vec<String>,
    /// Watch every process inside this cgroup v2 directory or below it (a path under the
    /// cgroup v2 mount, or relative to its root); repeatable.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<String>,
    /// Watch the processes of this container (its id, or a unique prefix); repeatable.
    #[arg(long, value_name = "ID")]
    pub container_id: Vec<String>,
    /// Watch the processes of the pods of this Kubernetes namespace (needs the API server: run
    /// in a pod with a service account that may list and watch pods); repeatable.
    #[arg(long, value_name = "NS")]
    pub k8s_namespace: Vec<String>,
    /// Watch the processes of the pods of this name; repeatable.
    #[arg(long, value_name = "NAME")]
    pub k8s_pod: Vec<String>,
    /// Watch the processes of the pods with this label; repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = label_arg)]
    pub k8s_label: Vec<String>,
    /// Do not watch processes with this name, whatever else selects them; repeatable.
    #[arg(long, value_name = "NAME")]
    pub exclude_comm: Vec<String>,
    /// Do not watch processes whose executable matches this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude_exe: Vec<String>,
    /// Do not watch processes inside this cgroup v2 directory or below it; repeatable.
    #[arg(long, value_name = "PATH")]
    pub exclude_cgroup: Vec<String>,
    /// Do not watch the processes of this container; repeatable.
    #[arg(long, value_name = "ID")]
    pub exclude_container_id: Vec<String>,
    /// Do not watch the processes of the pods of this namespace (kube-system, say); repeatable.
    #[arg(long, value_name = "NS")]
    pub exclude_k8s_namespace: Vec<String>,
    /// Do not watch the processes of the pods of this name (the DaemonSet's own); repeatable.
    #[arg(long, value_name = "NAME")]
    pub exclude_k8s_pod: Vec<String>,
    /// Do not watch the processes of the pods with this label; repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = label_arg)]
    pub exclude_k8s_label: Vec<String>,
}

fn label_arg(s: &str) -> Result<String, String> {
    crate::k8s::parse_label(s).map(|_| s.to_string())
}

impl SelectArgs {
    /// Each flag as a table of its own (flags are ORed).
    pub fn tables(&self) -> (Vec<SelectorTable>, Vec<SelectorTable>) {
        fn split(
            all: bool,
            comm: &[String],
            exe: &[String],
            cgroup: &[String],
            container: &[String],
        ) -> Vec<SelectorTable> {
            let mut t = Vec::new();
            if all {
                t.push(SelectorTable {
                    all: true,
                    ..Default::default()
                });
            }
            t.extend(comm.iter().map(|c| SelectorTable {
                comm: vec![c.clone()],
                ..Default::default()
            }));
            t.extend(exe.iter().map(|c| SelectorTable {
                exe: vec![c.clone()],
                ..Default::default()
            }));
            t.extend(cgroup.iter().map(|c| SelectorTable {
                cgroup: vec![c.clone()],
                ..Default::default()
            }));
            t.extend(container.iter().map(|c| SelectorTable {
                container_id: vec![c.clone()],
                ..Default::default()
            }));
            t
        }
        fn pods(ns: &[String], pod: &[String], label: &[String]) -> Vec<SelectorTable> {
            let mut t: Vec<SelectorTable> = Vec::new();
            t.extend(ns.iter().map(|v| SelectorTable {
                k8s_namespace: vec![v.clone()],
                ..Default::default()
            }));
            t.extend(pod.iter().map(|v| SelectorTable {
                k8s_pod: vec![v.clone()],
                ..Default::default()
            }));
            t.extend(label.iter().map(|v| SelectorTable {
                k8s_label: vec![v.clone()],
                ..Default::default()
            }));
            t
        }
        let mut select = split(
            self.all,
            &self.comm,
            &self.exe,
            &self.cgroup,
            &self.container_id,
        );
        select.extend(pods(&self.k8s_namespace, &self.k8s_pod, &self.k8s_label));
        let mut exclude = split(
            false,
            &self.exclude_comm,
            &self.exclude_exe,
            &self.exclude_cgroup,
            &self.exclude_container_id,
        );
        exclude.extend(pods(
            &self.exclude_k8s_namespace,
            &self.exclude_k8s_pod,
            &self.exclude_k8s_label,
        ));
        (select, exclude)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("an empty [[{0}]] table would match every process; say `all = true` if meant")]
    EmptyTable(&'static str),
    #[error("comm `{0}` is empty")]
    EmptyComm(String),
    #[error("too many selectors for the kernel's maps (at most {0})")]
    TooMany(u32),
    #[error("a table with k8s-namespace, k8s-pod or k8s-label may have no other selector")]
    MixedPods,
    #[error("{0}")]
    Label(String),
}

/// A table with its cgroups resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Table {
    all: bool,
    comm: Vec<String>,
    exe: Vec<String>,
    /// `--cgroup` and `--container-id` both become cgroup directories (ORed together: a
    /// container is a cgroup).
    cgroups: Vec<cgroup::CgroupDir>,
    has_cgroup: bool,
    /// Pods (alone in their table): their containers' cgroups go to the kernel as the pods
    /// become known.
    pods: Option<PodSelector>,
}

impl Table {
    fn resolve(
        t: &SelectorTable,
        v2: Option<&Path>,
        what: &'static str,
    ) -> Result<Self, SelectError> {
        if t.is_empty() {
            return Err(SelectError::EmptyTable(what));
        }
        if let Some(c) = t.comm.iter().find(|c| c.is_empty()) {
            return Err(SelectError::EmptyComm(c.clone()));
        }
        if !t.pods_empty() {
            let only_pods = SelectorTable {
                k8s_namespace: t.k8s_namespace.clone(),
                k8s_pod: t.k8s_pod.clone(),
                k8s_label: t.k8s_label.clone(),
                ..Default::default()
            };
            if *t != only_pods {
                return Err(SelectError::MixedPods);
            }
            let labels = t
                .k8s_label
                .iter()
                .map(|l| crate::k8s::parse_label(l))
                .collect::<Result<_, _>>()
                .map_err(SelectError::Label)?;
            return Ok(Self {
                all: false,
                comm: vec![],
                exe: vec![],
                cgroups: vec![],
                has_cgroup: false,
                pods: Some(PodSelector {
                    namespaces: t.k8s_namespace.clone(),
                    pods: t.k8s_pod.clone(),
                    labels,
                }),
            });
        }
        let mut cgroups = Vec::new();
        if !t.cgroup.is_empty() || !t.container_id.is_empty() {
            let mount = v2.ok_or(cgroup::CgroupError::NoV2)?;
            for c in &t.cgroup {
                cgroups.push(cgroup::resolve_dir(mount, c)?);
            }
            for c in &t.container_id {
                cgroups.push(cgroup::find_container(mount, c)?);
            }
        }
        Ok(Self {
            all: t.all,
            // The kernel keeps 15 bytes of a name.
            comm: t
                .comm
                .iter()
                .map(|c| truncate_comm(c).to_string())
                .collect(),
            exe: t.exe.clone(),
            has_cgroup: !cgroups.is_empty(),
            cgroups,
            pods: None,
        })
    }

    /// The one kind this table selects on, when it has one only: then the kernel decides it.
    fn kernel_kind(&self) -> Option<Kind> {
        if self.pods.is_some() {
            return Some(Kind::Pods);
        }
        let kinds = [!self.comm.is_empty(), !self.exe.is_empty(), self.has_cgroup];
        match kinds {
            [false, false, false] if self.all => Some(Kind::All),
            [true, false, false] => Some(Kind::Comm),
            [false, false, true] => Some(Kind::Cgroup),
            _ => None,
        }
    }

    /// Does the process match? `None` when /proc could not tell (it exited), or for pods
    /// (decided by the kernel's cgroup map, which follows the pod metadata).
    fn matches(&self, p: &mut ProcInfo) -> Option<bool> {
        if self.pods.is_some() {
            return None;
        }
        if !self.comm.is_empty() && !self.comm.iter().any(|c| Some(c.as_str()) == p.comm()) {
            return p.comm().map(|_| false);
        }
        if !self.exe.is_empty() {
            let exe = p.exe()?;
            if !self.exe.iter().any(|g| glob_match(g, exe)) {
                return Some(false);
            }
        }
        if self.has_cgroup {
            let path = p.cgroup()?;
            if !self
                .cgroups
                .iter()
                .any(|c| cgroup::path_within(path, &c.path))
            {
                return Some(false);
            }
        }
        Some(true)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    All,
    Comm,
    Cgroup,
    Pods,
}

fn truncate_comm(c: &str) -> &str {
    let mut end = c.len().min(15);
    while !c.is_char_boundary(end) {
        end -= 1;
    }
    &c[..end]
}

/// What the kernel decides by itself (`Config::select`, `cgroup_levels` and the two maps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSelection {
    pub select: u32,
    pub cgroup_levels: u32,
    /// comm (NUL-padded) -> SEL_INCLUDE / SEL_EXCLUDE.
    pub comms: Vec<([u8; 16], u8)>,
    /// cgroup id -> SEL_INCLUDE / SEL_EXCLUDE.
    pub cgroups: Vec<(u64, u8)>,
}

/// The resolved selection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    select: Vec<Table>,
    exclude: Vec<Table>,
}

impl Selection {
    /// Resolves the tables (cgroup paths and container ids against this host's cgroup v2
    /// tree).
    pub fn new(select: &[SelectorTable], exclude: &[SelectorTable]) -> Result<Self, SelectError> {
        let v2 = cgroup::v2_mount();
        Self::with_v2(select, exclude, v2.as_deref())
    }

    pub fn with_v2(
        select: &[SelectorTable],
        exclude: &[SelectorTable],
        v2: Option<&Path>,
    ) -> Result<Self, SelectError> {
        let resolve = |ts: &[SelectorTable], what| {
            ts.iter()
                .map(|t| Table::resolve(t, v2, what))
                .collect::<Result<Vec<_>, _>>()
        };
        let s = Self {
            select: resolve(select, "select")?,
            exclude: resolve(exclude, "exclude")?,
        };
        let k = s.kernel();
        let n = (k.comms.len() + k.cgroups.len()) as u32;
        if n > mongowatch_common::MAX_SELECTORS {
            return Err(SelectError::TooMany(mongowatch_common::MAX_SELECTORS));
        }
        Ok(s)
    }

    /// Anything beyond `--pid`: the daemon then runs until stopped, not until its processes
    /// exit, since new ones may match.
    pub fn is_node_wide(&self) -> bool {
        !self.select.is_empty()
    }

    /// What the kernel checks itself.
    pub fn kernel(&self) -> KernelSelection {
        let mut k = KernelSelection::default();
        let add = |t: &Table, value: u8, k: &mut KernelSelection| {
            let include = value == SEL_INCLUDE;
            match t.kernel_kind() {
                Some(Kind::All) if include => k.select |= SELECT_ALL,
                Some(Kind::Comm) => {
                    k.select |= if include { SELECT_COMM } else { EXCLUDE_COMM };
                    for c in &t.comm {
                        let mut key = [0u8; 16];
                        key[..c.len()].copy_from_slice(c.as_bytes());
                        k.comms.push((key, value));
                    }
                }
                Some(Kind::Cgroup) => {
                    k.select |= if include {
                        SELECT_CGROUP
                    } else {
                        EXCLUDE_CGROUP
                    };
                    for c in &t.cgroups {
                        k.cgroups.push((c.id, value));
                        if (1..=MAX_CGROUP_LEVEL).contains(&c.level) {
                            k.cgroup_levels |= 1 << c.level;
                        }
                    }
                }
                // The containers' cgroups are added as the pods become known, at whatever
                // depth the runtime makes them: every level is looked at.
                Some(Kind::Pods) => {
                    k.select |= if include {
                        SELECT_CGROUP
                    } else {
                        EXCLUDE_CGROUP
                    };
                    k.cgroup_levels |= ((1u32 << (MAX_CGROUP_LEVEL + 1)) - 1) & !1;
                }
                // Decided here, on exec events and from /proc.
                _ => k.select |= EXEC_EVENTS,
            }
        };
        for t in &self.select {
            add(t, SEL_INCLUDE, &mut k);
        }
        for t in &self.exclude {
            add(t, SEL_EXCLUDE, &mut k);
        }
        // An exclusion is also checked on the processes the kernel selects; that is when the
        // exec events that decide the userspace-only ones are needed.
        if k.select & (SELECT_ALL | SELECT_COMM | SELECT_CGROUP | EXEC_EVENTS) == 0 {
            k.select = 0;
        }
        // An exclusion wins over an include of the same name or cgroup.
        k.comms.sort_by_key(|(c, v)| (*c, std::cmp::Reverse(*v)));
        k.comms.dedup_by_key(|(c, _)| *c);
        k.cgroups.sort_by_key(|(c, v)| (*c, std::cmp::Reverse(*v)));
        k.cgroups.dedup_by_key(|(c, _)| *c);
        k
    }

    /// Whether pods are selected or excluded (the API server is needed).
    pub fn uses_pods(&self) -> bool {
        self.select
            .iter()
            .chain(&self.exclude)
            .any(|t| t.pods.is_some())
    }

    /// What the pod tables say of `pod`: excluded wins over selected; `None`: neither.
    pub fn pod_choice(&self, pod: &Pod) -> Option<u8> {
        let hit = |ts: &[Table]| {
            ts.iter()
                .any(|t| t.pods.as_ref().is_some_and(|s| s.matches(pod)))
        };
        if hit(&self.exclude) {
            Some(SEL_EXCLUDE)
        } else if hit(&self.select) {
            Some(SEL_INCLUDE)
        } else {
            None
        }
    }

    /// Is the process selected and not excluded? `None` when /proc could not tell.
    pub fn matches(&self, p: &mut ProcInfo) -> Option<bool> {
        for t in &self.exclude {
            // An exclusion that cannot be told here (a pod) is the kernel's.
            if t.matches(p) == Some(true) {
                return Some(false);
            }
        }
        let mut unknown = false;
        for t in &self.select {
            match t.matches(p) {
                Some(true) => return Some(true),
                Some(false) => {}
                None => unknown = true,
            }
        }
        if unknown {
            None
        } else {
            Some(false)
        }
    }

    /// The running processes the selection matches, from /proc.
    pub fn scan(&self) -> Vec<u32> {
        if self.select.is_empty() {
            return Vec::new();
        }
        let me = std::process::id();
        procfs::pids()
            .into_iter()
            .filter(|&pid| pid != me && self.matches(&mut ProcInfo::of(pid)) == Some(true))
            .collect()
    }
}

/// What the selectors look at in a process, read from /proc on first use.
#[derive(Debug, Default)]
pub struct ProcInfo {
    pid: u32,
    comm: Option<Option<String>>,
    exe: Option<Option<PathBuf>>,
    exe_text: Option<String>,
    cgroup: Option<Option<String>>,
}

impl ProcInfo {
    pub fn of(pid: u32) -> Self {
        Self {
            pid,
            ..Default::default()
        }
    }

    /// A process described by hand (tests).
    pub fn fixed(comm: Option<&str>, exe: Option<&str>, cgroup: Option<&str>) -> Self {
        Self {
            pid: 0,
            comm: Some(comm.map(str::to_owned)),
            exe: Some(exe.map(PathBuf::from)),
            exe_text: exe.map(str::to_owned),
            cgroup: Some(cgroup.map(str::to_owned)),
        }
    }

    fn comm(&mut self) -> Option<&str> {
        let pid = self.pid;
        self.comm
            .get_or_insert_with(|| procfs::comm(pid))
            .as_deref()
    }

    fn exe(&mut self) -> Option<&str> {
        let pid = self.pid;
        if self.exe.is_none() {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            self.exe_text = exe.as_ref().map(|e| e.to_string_lossy().into_owned());
            self.exe = Some(exe);
        }
        self.exe_text.as_deref()
    }

    fn cgroup(&mut self) -> Option<&str> {
        let pid = self.pid;
        self.cgroup
            .get_or_insert_with(|| cgroup::v2_path(pid))
            .as_deref()
    }
}

/// Shell-style glob: `*` any run of characters (`/` too), `?` one character, the rest literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(f: impl FnOnce(&mut SelectorTable)) -> SelectorTable {
        let mut t = SelectorTable::default();
        f(&mut t);
        t
    }

    #[test]
    fn globs() {
        assert!(glob_match("/usr/bin/python3*", "/usr/bin/python3.13"));
        assert!(glob_match("*/secantusd*", "/opt/venv/bin/secantusd-py"));
        assert!(glob_match("/a/?", "/a/b"));
        assert!(!glob_match("/a/?", "/a/bc"));
        assert!(!glob_match("/usr/bin/node", "/usr/bin/nodejs"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
    }

    #[test]
    fn tables_or_selectors_and_exclusions_win() {
        let sel = Selection::with_v2(
            &[
                t(|t| t.comm = vec!["app".into(), "worker".into()]),
                t(|t| {
                    t.comm = vec!["python3".into()];
                    t.exe = vec!["/srv/*".into()];
                }),
            ],
            &[t(|t| t.exe = vec!["*/debug".into()])],
            None,
        )
        .unwrap();
        let m = |comm, exe| sel.matches(&mut ProcInfo::fixed(Some(comm), Some(exe), None));
        assert_eq!(m("app", "/usr/bin/app"), Some(true));
        assert_eq!(m("worker", "/usr/bin/worker"), Some(true));
        assert_eq!(m("python3", "/srv/shop/python3"), Some(true), "both ANDed");
        assert_eq!(
            m("python3", "/usr/bin/python3"),
            Some(false),
            "exe not matched"
        );
        assert_eq!(m("app", "/opt/debug"), Some(false), "excluded");
        assert_eq!(m("other", "/usr/bin/other"), Some(false));
        // A process gone before /proc was read: unknown, not a silent no.
        let mut gone = ProcInfo::fixed(None, None, None);
        assert_eq!(sel.matches(&mut gone), None);
    }

    #[test]
    fn the_kernel_decides_single_kind_tables() {
        let sel = Selection::with_v2(
            &[
                t(|t| t.all = true),
                t(|t| t.comm = vec!["a-very-long-process-name".into()]),
            ],
            &[t(|t| t.comm = vec!["kubelet".into()])],
            None,
        )
        .unwrap();
        let k = sel.kernel();
        assert_eq!(k.select, SELECT_ALL | SELECT_COMM | EXCLUDE_COMM);
        let mut long = [0u8; 16];
        long[..15].copy_from_slice(b"a-very-long-pro");
        let mut kubelet = [0u8; 16];
        kubelet[..7].copy_from_slice(b"kubelet");
        assert!(k.comms.contains(&(long, SEL_INCLUDE)), "{k:?}");
        assert!(k.comms.contains(&(kubelet, SEL_EXCLUDE)));
        // A table the kernel cannot decide asks for exec events.
        let sel = Selection::with_v2(&[t(|t| t.exe = vec!["/x".into()])], &[], None).unwrap();
        assert_eq!(sel.kernel().select, EXEC_EVENTS);
        // --pid only: nothing for the kernel to check.
        let sel = Selection::with_v2(&[], &[], None).unwrap();
        assert_eq!(sel.kernel(), KernelSelection::default());
        assert!(!sel.is_node_wide());
    }

    #[test]
    fn an_exclusion_beats_an_include_of_the_same_name() {
        let sel = Selection::with_v2(
            &[t(|t| t.comm = vec!["app".into()])],
            &[t(|t| t.comm = vec!["app".into()])],
            None,
        )
        .unwrap();
        let k = sel.kernel();
        assert_eq!(k.comms.len(), 1);
        assert_eq!(k.comms[0].1, SEL_EXCLUDE);
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(matches!(
            Selection::with_v2(&[SelectorTable::default()], &[], None),
            Err(SelectError::EmptyTable("select"))
        ));
        assert!(matches!(
            Selection::with_v2(&[t(|t| t.cgroup = vec!["/x".into()])], &[], None),
            Err(SelectError::Cgroup(cgroup::CgroupError::NoV2))
        ));
    }

    #[test]
    fn cgroups_match_inside_and_below() {
        let table = Table {
            pods: None,
            all: false,
            comm: vec![],
            exe: vec![],
            cgroups: vec![cgroup::CgroupDir {
                path: "/kubepods.slice/pod.slice".into(),
                id: 7,
                level: 2,
            }],
            has_cgroup: true,
        };
        let m = |path| table.matches(&mut ProcInfo::fixed(Some("x"), None, Some(path)));
        assert_eq!(m("/kubepods.slice/pod.slice"), Some(true));
        assert_eq!(m("/kubepods.slice/pod.slice/c.scope"), Some(true));
        assert_eq!(m("/kubepods.slice/other.slice"), Some(false));
        assert_eq!(table.kernel_kind(), Some(Kind::Cgroup));
    }

    #[test]
    fn pod_tables_go_to_the_kernel_at_every_level() {
        let sel = Selection::with_v2(
            &[t(|t| {
                t.k8s_namespace = vec!["shop".into()];
                t.k8s_label = vec!["app=api".into()];
            })],
            &[t(|t| t.k8s_namespace = vec!["kube-system".into()])],
            None,
        )
        .unwrap();
        assert!(sel.uses_pods());
        let k = sel.kernel();
        assert_eq!(k.select, SELECT_CGROUP | EXCLUDE_CGROUP);
        assert_eq!(k.cgroup_levels, 0xfffe);
        let pod = |ns: &str, app: &str| Pod {
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(sel.pod_choice(&pod("shop", "api")), Some(SEL_INCLUDE));
        assert_eq!(sel.pod_choice(&pod("shop", "db")), None, "labels ANDed");
        assert_eq!(
            sel.pod_choice(&pod("kube-system", "api")),
            Some(SEL_EXCLUDE)
        );
        // Mixed with another kind: refused.
        assert!(matches!(
            Selection::with_v2(
                &[t(|t| {
                    t.k8s_pod = vec!["a".into()];
                    t.comm = vec!["x".into()];
                })],
                &[],
                None
            ),
            Err(SelectError::MixedPods)
        ));
        assert!(matches!(
            Selection::with_v2(&[t(|t| t.k8s_label = vec!["nolabel".into()])], &[], None),
            Err(SelectError::Label(_))
        ));
    }

    #[test]
    fn each_flag_is_a_table() {
        let args = SelectArgs {
            comm: vec!["a".into(), "b".into()],
            exclude_comm: vec!["c".into()],
            all: true,
            ..Default::default()
        };
        let (s, e) = args.tables();
        assert_eq!(s.len(), 3);
        assert_eq!(e.len(), 1);
        let args = SelectArgs {
            k8s_label: vec!["app=api".into(), "tier=web".into()],
            exclude_k8s_namespace: vec!["kube-system".into()],
            ..Default::default()
        };
        let (s, e) = args.tables();
        assert_eq!(s.len(), 2, "each label flag its own table");
        assert_eq!(e[0].k8s_namespace, vec!["kube-system"]);
    }
}
