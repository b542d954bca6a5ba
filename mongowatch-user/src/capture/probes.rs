//! Loading and attaching the kernel programs (the only module that touches the kernel).

use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use mongowatch_common::{
    Config, ConnState, Counters, MAP_CANDIDATES, MAP_CGROUPS, MAP_COMMS, MAP_CONNS, MAP_COUNTERS,
    MAP_EVENTS, MAP_EXCLUDED, MAP_PORTS, MAP_SCRATCH, MAP_WATCHED, MAX_CANDIDATES, MAX_CONNS,
    SCRATCH_SLOTS,
};
use tracing::{info, warn};

use super::{
    btf::{
        kernel_offsets_from, read_btf, socket_path_offsets_from, tracepoint_args, KernelFeatures,
        VMLINUX_BTF,
    },
    ladder::{self, CapturePath},
    select::KernelSelection,
};

/// The object built from `mongowatch-ebpf` (empty when built without the eBPF toolchain).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mongowatch-ebpf.o"));

/// The lifecycle programs every capture path uses, and the tracepoints they attach to. All are
/// BTF tracepoints: they cost a direct call, not a trip through the perf buffer of a classic
/// tracepoint. The data programs depend on the capture path (`ladder`).
const PROGRAMS: &[(&str, &str)] = &[
    ("inet_sock_set_state", "inet_sock_set_state"),
    ("sched_process_fork", "sched_process_fork"),
    ("sched_process_exit", "sched_process_exit"),
    ("sched_process_exec", "sched_process_exec"),
];

/// Totals of the per-CPU counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct KernelCounters {
    pub ring_full_events: u64,
    pub ring_full_bytes: u64,
    pub gap_bytes: u64,
    pub read_failures: u64,
    pub classified_other: u64,
    pub data_events: u64,
    /// Lifecycle events (connection close, fork, exit) lost to a full ring.
    pub lifecycle_lost: u64,
    /// Gap events: calls (or parts) whose bytes could not be copied.
    pub gap_events: u64,
    /// TLS library calls whose plaintext was copied; those whose socket could not be told;
    /// those skipped because the CPU's TLS copy slot was busy.
    pub tls_calls: u64,
    pub tls_unmapped: u64,
    pub tls_busy: u64,
}

/// How full the kernel's socket maps are. Counted by walking their keys: cheap enough for a
/// stats line, not for every tick.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct KernelMaps {
    /// MongoDB connections the kernel follows (`CONNS`, at most `MAX_CONNS`).
    pub connections: u64,
    /// Other sockets: not classified yet, or known not to be MongoDB (`CANDIDATES`, an LRU of
    /// `MAX_CANDIDATES`).
    pub candidates: u64,
}

/// Loaded and attached programs. Dropping it detaches them.
pub struct Probes {
    /// Holds the links (dropping it detaches every program) and the socket maps read by
    /// [`Probes::maps`].
    ebpf: Ebpf,
    /// The kernel's bitmap of watched tgids.
    watched: Array<MapData, u64>,
    /// Processes the kernel's own selection must skip (see `select`).
    excluded: Array<MapData, u64>,
    /// Selected and excluded cgroups; pods' containers come and go.
    cgroups: HashMap<MapData, u64, u8>,
    counters: PerCpuArray<MapData, Counters>,
    path: CapturePath,
    /// The ring buffer's size as the kernel made it.
    ring_size: u32,
}

/// Checks what mongowatch needs before trying to load anything, so a user gets one clear
/// sentence instead of a verifier dump.
pub fn preflight() -> Result<()> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this mongowatch binary was built without its eBPF programs (no eBPF toolchain at \
             build time); run `cargo xtask setup` and build again"
        );
    }
    if !has_bpf_privileges() {
        bail!(
            "mongowatch needs root, or the capabilities CAP_BPF and CAP_PERFMON (run it with sudo)"
        );
    }
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "this kernel exposes no BTF ({VMLINUX_BTF} is missing): mongowatch needs a kernel \
             built with CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)"
        );
    }
    let btf = read_btf(Path::new(VMLINUX_BTF))?;
    check_features(&KernelFeatures::read(&btf), &kernel_release())?;
    Ok(())
}

/// The kernel lacks what the programs need.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this kernel ({release}) is too old for mongowatch: it lacks {}; mongowatch needs Linux \
     {needed} or newer",
    missing.join(", ")
)]
pub struct TooOld {
    pub release: String,
    /// Each missing feature, with the first kernel that has it.
    pub missing: Vec<String>,
    /// The newest of those kernels.
    pub needed: String,
}

/// Decides from what the kernel has whether the programs can load: every missing feature is
/// named with the kernel version that brought it. (The socket tracepoints and `bpf_loop` are
/// not needed: the capture ladder has rungs without them.)
pub fn check_features(have: &KernelFeatures, release: &str) -> Result<(), TooOld> {
    // Newest first: the first missing one is the version to ask for.
    let needs = [
        (have.task_pt_regs, "the bpf_task_pt_regs helper", "5.15"),
        (have.ring_buffer, "BPF ring buffers", "5.8"),
    ];
    let missing: Vec<_> = needs.iter().filter(|(has, ..)| !has).collect();
    let Some((_, _, needed)) = missing.first() else {
        return Ok(());
    };
    Err(TooOld {
        release: release.to_string(),
        missing: missing
            .iter()
            .map(|(_, what, version)| format!("{what} (Linux {version})"))
            .collect(),
        needed: needed.to_string(),
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "release unknown".to_string())
}

fn has_bpf_privileges() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // CapEff from /proc/self/status: CAP_SYS_ADMIN (21), or CAP_BPF (39) + CAP_PERFMON (38).
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(caps) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    caps & (1 << 21) != 0 || (caps & (1 << 39) != 0 && caps & (1 << 38) != 0)
}

/// `sys_exit_mmap`: the kernel reports each file a selected process maps executable
/// (`ProcMapped`), so that its TLS library is hooked before its first call into it.
fn attach_mmap_report(ebpf: &mut Ebpf) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut("sys_exit_mmap")
        .context("program sys_exit_mmap missing from the eBPF object")?
        .try_into()
        .context("program sys_exit_mmap is not a tracepoint")?;
    program
        .load()
        .context("the kernel refused program sys_exit_mmap")?;
    program
        .attach("syscalls", "sys_exit_mmap")
        .context("attaching to tracepoint syscalls/sys_exit_mmap")?;
    Ok(())
}

impl Probes {
    /// Loads the programs with the running kernel's struct offsets and attaches them, on the
    /// best capture path the kernel offers (or `forced`). Returns the probes and the ring
    /// buffer to read events from.
    pub fn load(
        server_ports: &[u16],
        selection: &KernelSelection,
        forced: Option<CapturePath>,
        ring_size: u32,
    ) -> Result<(Self, RingBuf<MapData>)> {
        preflight()?;
        raise_memlock();
        let kernel_btf = read_btf(Path::new(VMLINUX_BTF))?;
        let offer = ladder::probe(&kernel_btf, &KernelFeatures::read(&kernel_btf));
        let candidates = offer.candidates(forced)?;
        let config = Config {
            offsets: kernel_offsets_from(&kernel_btf)?,
            // Recent kernels pass `group_dead` to sched_process_exit; on older ones the
            // program reads `task->signal->live`.
            exit_has_group_dead: u32::from(
                tracepoint_args(&kernel_btf, "sched_process_exit").is_some_and(|n| n >= 2),
            ),
            select: selection.select,
            cgroup_levels: selection.cgroup_levels,
            // Only the rungs below the socket tracepoints read these; a kernel whose layout
            // lacks one can still use the socket tracepoints.
            socket_path: socket_path_offsets_from(&kernel_btf).unwrap_or_else(|e| {
                tracing::debug!("no offsets for the fallback capture paths: {e:#}");
                Default::default()
            }),
        };
        // One scratch entry per possible CPU (the programs index it by the running CPU).
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, e)| anyhow::anyhow!("counting the CPUs ({path}): {e}"))?
            as u32;
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries(MAP_SCRATCH, cpus * SCRATCH_SLOTS)
            .map_max_entries(MAP_EVENTS, ring_size)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                let hint = if e.to_string().contains("ring") {
                    " (ring buffers need Linux 5.8 or newer)"
                } else {
                    ""
                };
                anyhow::anyhow!("loading the eBPF programs failed{hint}: {e}")
            })?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for (name, tracepoint) in PROGRAMS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a BTF tracepoint"))?;
            program
                .load(tracepoint, &btf)
                .with_context(|| format!("the kernel refused program {name}"))?;
            program
                .attach()
                .with_context(|| format!("attaching {name} to tracepoint {tracepoint}"))?;
        }
        // Without it, a library mapped later is found at the next rescan only.
        if let Err(e) = attach_mmap_report(&mut ebpf) {
            warn!(
                "TLS libraries a watched process maps later are found only by the periodic \
                 rescan: {e:#}"
            );
        }
        let mut path = None;
        let mut failures = Vec::new();
        for candidate in candidates {
            if candidate != CapturePath::SockTracepoints && config.socket_path.valid == 0 {
                failures.push(format!(
                    "{candidate}: the kernel's BTF lacks a field it reads"
                ));
                continue;
            }
            match ladder::attach(&mut ebpf, candidate, &btf, &offer) {
                Ok(()) => {
                    path = Some(candidate);
                    break;
                }
                Err(e) => {
                    warn!("capture path {candidate} failed, trying the next: {e:#}");
                    failures.push(format!("{candidate}: {e:#}"));
                }
            }
        }
        let Some(path) = path else {
            bail!(
                "no capture path could be attached ({})",
                failures.join("; ")
            );
        };
        info!(
            capture_path = %path,
            offered = ?offer.paths().iter().map(|p| p.name()).collect::<Vec<_>>(),
            bpf_loop = offer.bpf_loop,
            forced = forced.is_some(),
            "capture path chosen"
        );
        let mut ports: HashMap<_, u16, u8> =
            HashMap::try_from(ebpf.map_mut(MAP_PORTS).context("map PORTS missing")?)?;
        for port in server_ports {
            ports.insert(port, 1, 0)?;
        }
        let mut comms: HashMap<_, [u8; 16], u8> =
            HashMap::try_from(ebpf.map_mut(MAP_COMMS).context("map COMMS missing")?)?;
        for (comm, value) in &selection.comms {
            comms.insert(comm, value, 0)?;
        }
        let mut cgroups: HashMap<MapData, u64, u8> =
            HashMap::try_from(ebpf.take_map(MAP_CGROUPS).context("map CGROUPS missing")?)?;
        for (id, value) in &selection.cgroups {
            cgroups.insert(id, value, 0)?;
        }
        let watched = Array::try_from(ebpf.take_map(MAP_WATCHED).context("map WATCHED missing")?)?;
        let excluded = Array::try_from(
            ebpf.take_map(MAP_EXCLUDED)
                .context("map EXCLUDED missing")?,
        )?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(MAP_COUNTERS)
                .context("map COUNTERS missing")?,
        )?;
        let events = ebpf.take_map(MAP_EVENTS).context("map EVENTS missing")?;
        let ring_size = match &events {
            aya::maps::Map::RingBuf(data) => data.info()?.max_entries(),
            _ => bail!("map EVENTS is not a ring buffer"),
        };
        let ring = RingBuf::try_from(events)?;
        Ok((
            Self {
                ebpf,
                watched,
                excluded,
                cgroups,
                counters,
                path,
                ring_size,
            },
            ring,
        ))
    }

    /// Entries in the socket maps now (see [`KernelMaps`]).
    pub fn maps(&self) -> KernelMaps {
        KernelMaps {
            connections: self.entries(MAP_CONNS, MAX_CONNS),
            candidates: self.entries(MAP_CANDIDATES, MAX_CANDIDATES),
        }
    }

    fn entries(&self, name: &str, max: u32) -> u64 {
        let Some(map) = self.ebpf.map(name) else {
            return 0;
        };
        let Ok(map) = HashMap::<_, u64, ConnState>::try_from(map) else {
            return 0;
        };
        // The kernel changes the map while we walk it, and a walk that loses its place starts
        // over: bound it by the map's size.
        map.keys()
            .take(2 * max as usize)
            .filter(Result::is_ok)
            .count() as u64
    }

    /// The capture path in use.
    pub fn capture_path(&self) -> CapturePath {
        self.path
    }

    /// Bytes of the ring buffer, as the kernel reports the map it made.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// Starts copying the bytes of process `pid` (and, from now on, of its children). Also
    /// called for each child the kernel reports, which repairs a bit a simultaneous fork in the
    /// same word may have lost.
    pub fn watch(&mut self, pid: u32) -> Result<()> {
        self.set_bit(pid, true)
            .with_context(|| format!("adding pid {pid} to the watched set"))
    }

    pub fn unwatch(&mut self, pid: u32) {
        if let Err(e) = self.set_bit(pid, false) {
            tracing::warn!("removing pid {pid} from the watched set: {e}");
        }
    }

    fn set_bit(&mut self, pid: u32, on: bool) -> Result<()> {
        set_bit(&mut self.watched, pid, on)
    }

    /// Selects (`SEL_INCLUDE`) or excludes (`SEL_EXCLUDE`) the processes of cgroup `id` and
    /// below, or forgets it (`None`).
    pub fn set_cgroup(&mut self, id: u64, choice: Option<u8>) {
        let result = match choice {
            Some(v) => self.cgroups.insert(id, v, 0),
            None => self.cgroups.remove(&id),
        };
        if let Err(e) = result {
            tracing::warn!("updating cgroup {id} in the kernel's selection: {e}");
        }
    }

    /// Makes the kernel's own selection (`--all`, `--comm`, `--cgroup`) skip `pid` (`on`), or
    /// no longer (its pid may go to another process).
    pub fn exclude(&mut self, pid: u32, on: bool) {
        if let Err(e) = set_bit(&mut self.excluded, pid, on) {
            tracing::warn!("updating the excluded set for pid {pid}: {e}");
        }
    }

    /// The loaded object, for the TLS library probes (`tls.rs`), attached as libraries turn up.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn counters(&self) -> KernelCounters {
        let mut total = KernelCounters::default();
        if let Ok(per_cpu) = self.counters.get(&0, 0) {
            for c in per_cpu.iter() {
                total.ring_full_events += c.ring_full_events;
                total.ring_full_bytes += c.ring_full_bytes;
                total.gap_bytes += c.gap_bytes;
                total.read_failures += c.read_failures;
                total.classified_other += c.classified_other;
                total.data_events += c.data_events;
                total.lifecycle_lost += c.lifecycle_lost;
                total.gap_events += c.gap_events;
                total.tls_calls += c.tls_calls;
                total.tls_unmapped += c.tls_unmapped;
                total.tls_busy += c.tls_busy;
            }
        }
        total
    }
}

fn set_bit(map: &mut Array<MapData, u64>, pid: u32, on: bool) -> Result<()> {
    let (index, bit) = (pid >> 6, 1u64 << (pid & 63));
    let word = map.get(&index, 0)?;
    let word = if on { word | bit } else { word & !bit };
    map.set(index, word, 0)?;
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so a 64 MiB ring fits.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels with memcg accounting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: KernelFeatures = KernelFeatures {
        sock_length_tracepoints: true,
        bpf_loop: true,
        ring_buffer: true,
        task_pt_regs: true,
    };

    #[test]
    fn a_kernel_with_everything_passes() {
        assert_eq!(check_features(&ALL, "6.18.0"), Ok(()));
    }

    /// 6.1 has no socket tracepoints, 5.15 no bpf_loop: both load (on a lower rung, with the
    /// bounded copy loop on 5.15).
    #[test]
    fn kernels_without_the_socket_tracepoints_or_bpf_loop_pass() {
        let have = KernelFeatures {
            sock_length_tracepoints: false,
            bpf_loop: false,
            ..ALL
        };
        assert_eq!(check_features(&have, "5.15.0-91-generic"), Ok(()));
    }

    #[test]
    fn every_missing_feature_is_named_with_its_kernel() {
        let have = KernelFeatures {
            sock_length_tracepoints: false,
            bpf_loop: false,
            ring_buffer: false,
            task_pt_regs: false,
        };
        let err = check_features(&have, "5.4.0").unwrap_err();
        assert_eq!(
            err.missing,
            vec![
                "the bpf_task_pt_regs helper (Linux 5.15)",
                "BPF ring buffers (Linux 5.8)",
            ]
        );
        assert_eq!(err.needed, "5.15");
        assert_eq!(
            err.to_string(),
            "this kernel (5.4.0) is too old for mongowatch: it lacks the bpf_task_pt_regs \
             helper (Linux 5.15), BPF ring buffers (Linux 5.8); mongowatch needs Linux 5.15 or \
             newer"
        );
    }
}
