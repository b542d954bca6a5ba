//! Node-wide selection: which processes not in the watched bitmap are watched anyway, decided
//! in the kernel at their first socket call (no polling gap): every process (`--all`), those
//! with a selected comm, and those inside a selected cgroup v2 directory or below it. Excluded
//! comms and cgroups win over all three; `EXCLUDED` holds the processes userspace excluded
//! for reasons the kernel cannot check (the executable). Userspace adds each process the kernel
//! selects to the bitmap when its first connection shows up, so its forks and exit are followed.
//!
//! In `--pid` mode (`Config::select` zero) this costs one global read per unwatched socket call.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::bpf_get_current_ancestor_cgroup_id,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap},
    programs::BtfTracePointContext,
};
use mongowatch_common::{
    EventKind, EXCLUDE_CGROUP, EXCLUDE_COMM, EXEC_EVENTS, MAX_CGROUP_LEVEL, MAX_SELECTORS,
    SELECT_ALL, SELECT_CGROUP, SELECT_COMM, SEL_EXCLUDE, SEL_INCLUDE, WATCHED_WORDS,
};

use crate::{emit_lifecycle, is_selected, CONFIG};

#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_SELECTORS, 0);

#[map]
static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_SELECTORS, 0);

#[map]
static EXCLUDED: Array<u64> = Array::with_max_entries(WATCHED_WORDS, 0);

#[inline(always)]
fn select_bits() -> (u32, u32) {
    // SAFETY: plain reads of a global the loader rewrote; volatile so the compiler does not
    // fold the zero initialiser. Only these two fields: the whole Config is not copied.
    unsafe {
        (
            core::ptr::read_volatile(&CONFIG.select),
            core::ptr::read_volatile(&CONFIG.cgroup_levels),
        )
    }
}

/// Is `tgid`, which is not in the watched bitmap, selected by the kernel's own checks?
#[inline(always)]
pub fn selected(tgid: u32) -> bool {
    let (select, levels) = select_bits();
    if select & (SELECT_ALL | SELECT_COMM | SELECT_CGROUP) == 0 {
        return false;
    }
    if EXCLUDED
        .get(tgid >> 6)
        .is_some_and(|word| word & (1u64 << (tgid & 63)) != 0)
    {
        return false;
    }
    let mut chosen = select & SELECT_ALL != 0;
    if select & (SELECT_COMM | EXCLUDE_COMM) != 0 {
        if let Ok(comm) = bpf_get_current_comm() {
            // SAFETY: map lookup by value.
            match unsafe { COMMS.get(&comm) } {
                Some(&SEL_EXCLUDE) => return false,
                Some(&SEL_INCLUDE) => chosen = true,
                _ => {}
            }
        }
    }
    if select & (SELECT_CGROUP | EXCLUDE_CGROUP) != 0 && levels != 0 {
        match cgroup_choice(levels) {
            Some(SEL_EXCLUDE) => return false,
            Some(_) => chosen = true,
            None => {}
        }
    }
    chosen
}

/// What `CGROUPS` says of the current task's ancestors (itself included) at the selected
/// levels: an exclusion at any level wins.
#[inline(always)]
fn cgroup_choice(levels: u32) -> Option<u8> {
    let mut found = None;
    let mut level = 1;
    while level <= MAX_CGROUP_LEVEL {
        if levels & (1 << level) != 0 {
            // SAFETY: helper with a plain integer argument; 0 when the task's cgroup is not
            // that deep.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
            if id == 0 {
                break;
            }
            // SAFETY: map lookup by value.
            match unsafe { CGROUPS.get(&id) } {
                Some(&SEL_EXCLUDE) => return Some(SEL_EXCLUDE),
                Some(&v) => found = Some(v),
                None => {}
            }
        }
        level += 1;
    }
    found
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(_ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    // -- include/trace/events/sched.h. Runs in the task that exec'd, after the new image is in.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The new image may carry its own TLS library (Node's OpenSSL is inside `node`).
    if is_selected(tgid) {
        emit_lifecycle(EventKind::ProcMapped, tgid, |_| {});
    }
    let (select, _) = select_bits();
    if select & EXEC_EVENTS != 0 {
        emit_lifecycle(EventKind::ProcExec, tgid, |_| {});
    }
    0
}
